//! L4 authorization at the waypoint. Behind a waypoint the destination's ztunnel sees the
//! waypoint's identity, not the client's, so the waypoint is where the policies of the
//! destination workload are enforced on the *client's* identity, address and the target port,
//! exactly as that workload's ztunnel would without a waypoint: adding a waypoint must never
//! skip a policy. L7 fields (methods, paths, hosts) are refused by the policy parser until L7
//! authorization lands, so such a policy fails closed here as it does in ztunnel.

use std::net::SocketAddr;

use ambit_discovery::state::{Decision, PolicySource, ProxyState, Workload};
use ambit_proto::identity::SpiffeId;

/// A refusal, naming the policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub policy: Box<str>,
    pub reason: String,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "denied by authorization policy {}: {}",
            self.policy, self.reason
        )
    }
}

impl std::error::Error for Denied {}

/// May `client` (proven `identity`, at `client_addr`) reach `workload` on `target_port`?
pub fn check(
    state: &ProxyState,
    workload: &Workload,
    identity: &SpiffeId,
    client_addr: SocketAddr,
    target_port: u16,
) -> Result<(), Denied> {
    let source = PolicySource {
        identity: Some(identity),
        ip: client_addr.ip(),
    };
    match state.authorize(workload, &source, target_port) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy, reason } => Err(Denied { policy, reason }),
    }
}
