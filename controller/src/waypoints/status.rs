//! A waypoint Gateway's status: `Accepted` (is the Gateway something we can deploy?),
//! `Programmed` (is the waypoint running, and where?) and `addresses` (its Service's cluster
//! IPs). Pure; the reconciler writes the result only when it differs from what is there, so a
//! status write (which is itself a Gateway event) does not loop.

use gateway_api::apis::standard::gateways::{Gateway, GatewayStatus, GatewayStatusAddresses};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::{CONTROLLER_NAME, InvalidGateway, NameConflict};

pub const ACCEPTED: &str = "Accepted";
pub const PROGRAMMED: &str = "Programmed";
/// Accepted=False: an object of a name the waypoint needs is someone else's.
pub const NAME_CONFLICT: &str = "NameConflict";

/// What the reconciler found out about a Gateway of our class.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservedState {
    /// The Gateway cannot be deployed as it is; nothing was applied.
    Invalid(InvalidGateway),
    /// Objects of the names the waypoint needs exist and are not this Gateway's; nothing was
    /// applied.
    Conflict(NameConflict),
    /// The objects were applied; this is what the API server answered.
    Applied {
        /// Replicas the Deployment asks for.
        replicas: i32,
        /// Of those, how many are available (ready long enough).
        available: i32,
        /// The Service's cluster IPs; empty until allocated.
        cluster_ips: Vec<String>,
    },
    /// Applying failed; `message` names the object, the cause and the fix.
    Failed { message: String },
}

/// The status `gateway` should have given `observed`, at time `now`. Conditions keep their
/// `lastTransitionTime` while their status stays the same.
pub fn gateway_status(gateway: &Gateway, observed: &ObservedState, now: &Time) -> GatewayStatus {
    let ns = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let current = gateway.status.as_ref();
    let not_deployed = || {
        (
            false,
            "Invalid",
            "not deployed until the Gateway is accepted (see the Accepted condition); a waypoint deployed earlier keeps running".to_string(),
        )
    };
    let (accepted, programmed) = match observed {
        ObservedState::Invalid(invalid) => (
            (false, invalid_reason(invalid), invalid.to_string()),
            not_deployed(),
        ),
        // Not a Gateway API reason: none says "the names are taken".
        ObservedState::Conflict(conflict) => {
            ((false, NAME_CONFLICT, conflict.to_string()), not_deployed())
        }
        ObservedState::Failed { message } => (
            accepted_ok(),
            (false, "Pending", format!("{message}; retrying")),
        ),
        ObservedState::Applied {
            replicas,
            available,
            cluster_ips,
        } => {
            let programmed = if cluster_ips.is_empty() {
                (
                    false,
                    "AddressNotAssigned",
                    format!("Service {ns}/{name} has no cluster IP yet"),
                )
            } else if *available < 1 {
                (
                    false,
                    "Pending",
                    format!(
                        "Deployment {ns}/{name} has 0 of {replicas} replicas available: see `kubectl -n {ns} describe deployment {name}` and its pods' events (image pull, scheduling, readiness on :15021)"
                    ),
                )
            } else {
                (
                    true,
                    "Programmed",
                    format!(
                        "waypoint {ns}/{name} at {}: {available} of {replicas} replicas available",
                        cluster_ips.join(", ")
                    ),
                )
            };
            (accepted_ok(), programmed)
        }
    };
    let addresses = match observed {
        ObservedState::Applied { cluster_ips, .. } => cluster_ips
            .iter()
            .map(|ip| GatewayStatusAddresses {
                r#type: Some("IPAddress".into()),
                value: ip.clone(),
            })
            .collect(),
        // Nothing new is known: keep what was reported.
        ObservedState::Invalid(_) | ObservedState::Conflict(_) | ObservedState::Failed { .. } => {
            current
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
        }
    };
    let conditions = [(ACCEPTED, accepted), (PROGRAMMED, programmed)]
        .into_iter()
        .map(|(type_, (ok, reason, message))| condition(gateway, type_, ok, reason, message, now))
        .collect();
    GatewayStatus {
        addresses: Some(addresses),
        conditions: Some(conditions),
        ..GatewayStatus::default()
    }
}

/// Whether writing `desired` would change the Gateway: our conditions (other types belong to
/// other writers) and the addresses.
pub fn status_differs(gateway: &Gateway, desired: &GatewayStatus) -> bool {
    let current = gateway.status.clone().unwrap_or_default();
    let current_conditions = current.conditions.unwrap_or_default();
    let conditions_differ = desired.conditions.iter().flatten().any(|want| {
        current_conditions
            .iter()
            .find(|c| c.type_ == want.type_)
            .is_none_or(|have| have != want)
    });
    conditions_differ
        || current.addresses.unwrap_or_default() != desired.addresses.clone().unwrap_or_default()
}

fn accepted_ok() -> (bool, &'static str, String) {
    (
        true,
        "Accepted",
        format!("a waypoint, deployed by {CONTROLLER_NAME}"),
    )
}

/// The Gateway API's reason for each way a Gateway can be unacceptable.
fn invalid_reason(invalid: &InvalidGateway) -> &'static str {
    match invalid {
        InvalidGateway::Listeners { .. } => "ListenersNotValid",
        InvalidGateway::Addresses => "UnsupportedAddress",
        InvalidGateway::Replicas { .. } | InvalidGateway::NoUid => "Invalid",
    }
}

fn condition(
    gateway: &Gateway,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: gateway.metadata.generation,
        last_transition_time: since,
    }
}

#[cfg(test)]
mod tests {
    use gateway_api::apis::standard::gateways::GatewaySpec;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn gateway() -> Gateway {
        let mut gw = Gateway::new("wp", GatewaySpec::default());
        gw.metadata.namespace = Some("demo".into());
        gw.metadata.generation = Some(3);
        gw
    }

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn condition_of<'a>(status: &'a GatewayStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    fn running() -> ObservedState {
        ObservedState::Applied {
            replicas: 1,
            available: 1,
            cluster_ips: vec!["10.96.0.20".into()],
        }
    }

    #[test]
    fn a_running_waypoint_is_programmed_at_its_cluster_ip() {
        let status = gateway_status(&gateway(), &running(), &at(100));
        let programmed = condition_of(&status, PROGRAMMED);
        assert_eq!(
            (programmed.status.as_str(), programmed.reason.as_str()),
            ("True", "Programmed")
        );
        assert_eq!(programmed.observed_generation, Some(3));
        assert_eq!(condition_of(&status, ACCEPTED).status, "True");
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].value, "10.96.0.20");
        assert_eq!(addresses[0].r#type.as_deref(), Some("IPAddress"));
    }

    #[test]
    fn waiting_for_pods_or_an_address_says_what_to_look_at() {
        let gw = gateway();
        let pending = ObservedState::Applied {
            replicas: 2,
            available: 0,
            cluster_ips: vec!["10.96.0.20".into()],
        };
        let status = gateway_status(&gw, &pending, &at(1));
        let programmed = condition_of(&status, PROGRAMMED);
        assert_eq!(programmed.reason, "Pending");
        assert!(
            programmed.message.contains("0 of 2"),
            "{}",
            programmed.message
        );
        assert!(
            programmed
                .message
                .contains("kubectl -n demo describe deployment wp")
        );
        let no_ip = ObservedState::Applied {
            replicas: 1,
            available: 1,
            cluster_ips: vec![],
        };
        let status = gateway_status(&gw, &no_ip, &at(1));
        assert_eq!(
            condition_of(&status, PROGRAMMED).reason,
            "AddressNotAssigned"
        );
    }

    #[test]
    fn an_invalid_gateway_is_not_accepted_and_keeps_its_old_address() {
        let mut gw = gateway();
        gw.status = Some(gateway_status(&gw, &running(), &at(1)));
        let invalid = ObservedState::Invalid(InvalidGateway::Listeners {
            found: "none".into(),
        });
        let status = gateway_status(&gw, &invalid, &at(2));
        let accepted = condition_of(&status, ACCEPTED);
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "ListenersNotValid")
        );
        assert!(
            accepted.message.contains("protocol: HBONE"),
            "{}",
            accepted.message
        );
        assert_eq!(accepted.last_transition_time, at(2));
        assert_eq!(condition_of(&status, PROGRAMMED).reason, "Invalid");
        assert_eq!(status.addresses.unwrap()[0].value, "10.96.0.20");
    }

    #[test]
    fn a_name_conflict_is_not_accepted_and_says_which_object_and_the_fix() {
        let conflict = ObservedState::Conflict(NameConflict {
            objects: vec![crate::waypoints::ConflictingObject {
                kind: "Service".into(),
                object: "demo/wp".into(),
                controller: None,
            }],
        });
        let status = gateway_status(&gateway(), &conflict, &at(1));
        let accepted = condition_of(&status, ACCEPTED);
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", NAME_CONFLICT)
        );
        assert!(
            accepted.message.contains("Service demo/wp"),
            "{}",
            accepted.message
        );
        assert!(
            accepted.message.contains("rename the Gateway"),
            "{}",
            accepted.message
        );
        assert_eq!(condition_of(&status, PROGRAMMED).status, "False");
    }

    #[test]
    fn transition_times_move_only_with_the_status_and_equal_status_is_not_rewritten() {
        let mut gw = gateway();
        let first = gateway_status(&gw, &running(), &at(1));
        assert!(status_differs(&gw, &first));
        gw.status = Some(first.clone());
        let again = gateway_status(&gw, &running(), &at(50));
        assert_eq!(again, first, "nothing changed, so nothing to write");
        assert!(!status_differs(&gw, &again));
        let failed = ObservedState::Failed {
            message: "could not apply Deployment demo/wp: forbidden".into(),
        };
        let later = gateway_status(&gw, &failed, &at(60));
        assert!(status_differs(&gw, &later));
        assert_eq!(condition_of(&later, ACCEPTED).last_transition_time, at(1));
        assert_eq!(
            condition_of(&later, PROGRAMMED).last_transition_time,
            at(60)
        );
        assert!(
            condition_of(&later, PROGRAMMED)
                .message
                .ends_with("; retrying")
        );
    }
}
