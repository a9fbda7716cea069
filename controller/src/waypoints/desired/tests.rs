use gateway_api::apis::standard::gateways::{
    GatewayAddresses, GatewayInfrastructure, GatewayListeners, GatewaySpec,
};

use super::*;
use crate::waypoints::GATEWAY_CLASS;

fn waypoint(name: &str) -> Gateway {
    let mut gw = Gateway::new(
        name,
        GatewaySpec {
            gateway_class_name: GATEWAY_CLASS.into(),
            listeners: vec![GatewayListeners {
                name: "mesh".into(),
                port: HBONE_PORT,
                protocol: HBONE_PROTOCOL.into(),
                ..GatewayListeners::default()
            }],
            ..GatewaySpec::default()
        },
    );
    gw.metadata.namespace = Some("demo".into());
    gw.metadata.uid = Some("uid-1".into());
    gw
}

fn options() -> WaypointOptions {
    WaypointOptions {
        image: "example.test/waypoint:dev".into(),
        controller_address: "http://ctl.test:15010".into(),
        ..WaypointOptions::default()
    }
}

fn pod_spec_of(objects: &DesiredObjects) -> &PodSpec {
    objects
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

#[test]
fn all_three_objects_are_named_like_the_gateway_and_owned_by_it() {
    let objects = desired_objects(&waypoint("wp"), &options()).unwrap();
    for meta in [
        &objects.service_account.metadata,
        &objects.deployment.metadata,
        &objects.service.metadata,
    ] {
        assert_eq!(meta.name.as_deref(), Some("wp"));
        assert_eq!(meta.namespace.as_deref(), Some("demo"));
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            ("gateway.networking.k8s.io/v1", "Gateway", "wp", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_LABEL], MANAGED_VALUE);
        assert_eq!(labels[GATEWAY_NAME_LABEL], "wp");
    }
}

#[test]
fn the_deployment_runs_the_waypoint_as_its_own_identity_outside_the_mesh() {
    let objects = desired_objects(&waypoint("wp"), &options()).unwrap();
    let spec = objects.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector.len(),
        1,
        "a selector cannot change later: keep it minimal"
    );
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(pod_labels[GATEWAY_NAME_LABEL], "wp");
    assert_eq!(pod_labels["ambit.io/dataplane-mode"], "none");
    let pod = pod_spec_of(&objects);
    assert_eq!(pod.service_account_name.as_deref(), Some("wp"));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.test/waypoint:dev"));
    let args = c.args.as_ref().unwrap();
    for want in [
        "--controller=http://ctl.test:15010",
        "--name=wp",
        "--namespace=demo",
        "--trust-domain=cluster.local",
        "--token-file=/var/run/secrets/ambit/tokens/ambit-ca-token",
        "--root-cert=/var/run/secrets/ambit/root/root-cert.pem",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [15008, 15020, 15021]);
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(probe.port, IntOrString::Int(15021));
    let security = c.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert!(c.resources.as_ref().unwrap().requests.is_some());
    // The CA token: projected, for the CA's audience, mounted where --token-file points.
    let volume = &pod.volumes.as_ref().unwrap()[0];
    let token = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("ambit-ca"));
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        (volume.name.as_str(), TOKEN_DIR)
    );
}

#[test]
fn the_service_selects_the_waypoint_pods_on_its_three_ports() {
    let objects = desired_objects(&waypoint("wp"), &options()).unwrap();
    let spec = objects.service.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector.as_ref(),
        objects
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
    );
    let ports: Vec<(i32, Option<IntOrString>)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        ports,
        [15008, 15020, 15021].map(|p| (p, Some(IntOrString::Int(p))))
    );
}

#[test]
fn the_replicas_annotation_is_honoured_and_bad_values_are_refused() {
    let mut gw = waypoint("wp");
    gw.metadata.annotations = Some([(REPLICAS_ANNOTATION.to_string(), "3".to_string())].into());
    let objects = desired_objects(&gw, &options()).unwrap();
    assert_eq!(objects.deployment.spec.unwrap().replicas, Some(3));
    for bad in ["0", "-1", "three", "101"] {
        gw.metadata.annotations = Some([(REPLICAS_ANNOTATION.to_string(), bad.to_string())].into());
        let err = desired_objects(&gw, &options()).unwrap_err();
        assert_eq!(err, InvalidGateway::Replicas { value: bad.into() });
        assert!(err.to_string().contains("from 1 to 100"), "{err}");
    }
}

#[test]
fn gateways_without_the_one_hbone_listener_or_with_addresses_are_refused() {
    let mut gw = waypoint("wp");
    gw.spec.listeners[0].protocol = "HTTP".into();
    let err = desired_objects(&gw, &options()).unwrap_err();
    assert!(
        err.to_string()
            .contains("{name: mesh, port: 15008, protocol: HTTP}"),
        "{err}"
    );
    gw.spec.listeners.clear();
    let err = desired_objects(&gw, &options()).unwrap_err();
    assert!(err.to_string().ends_with("this one has none"), "{err}");
    let mut gw = waypoint("wp");
    gw.spec.addresses = Some(vec![GatewayAddresses {
        value: Some("10.0.0.1".into()),
        ..GatewayAddresses::default()
    }]);
    assert_eq!(
        desired_objects(&gw, &options()),
        Err(InvalidGateway::Addresses)
    );
    let mut gw = waypoint("wp");
    gw.metadata.uid = None;
    assert_eq!(desired_objects(&gw, &options()), Err(InvalidGateway::NoUid));
}

#[test]
fn infrastructure_labels_and_annotations_are_copied_but_never_override_ours() {
    let mut gw = waypoint("wp");
    gw.spec.infrastructure = Some(GatewayInfrastructure {
        labels: Some(
            [
                ("team".to_string(), "payments".to_string()),
                (GATEWAY_NAME_LABEL.to_string(), "hijack".to_string()),
            ]
            .into(),
        ),
        annotations: Some([("owner".to_string(), "ops@example.test".to_string())].into()),
        ..GatewayInfrastructure::default()
    });
    let objects = desired_objects(&gw, &options()).unwrap();
    let labels = objects.service.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "payments");
    assert_eq!(labels[GATEWAY_NAME_LABEL], "wp");
    assert_eq!(
        objects
            .service_account
            .metadata
            .annotations
            .as_ref()
            .unwrap()["owner"],
        "ops@example.test"
    );
    let template = objects.deployment.spec.unwrap().template.metadata.unwrap();
    assert_eq!(template.labels.unwrap()["team"], "payments");
    assert_eq!(template.annotations.unwrap()["owner"], "ops@example.test");
}

#[test]
fn the_default_image_carries_the_controller_version() {
    assert_eq!(
        WaypointOptions::default().image,
        format!("ghcr.io/ambit-mesh/waypoint:{}", env!("CARGO_PKG_VERSION"))
    );
}
