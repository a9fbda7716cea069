//! Flow events and shapes in the API's terms.

use std::collections::BTreeMap;

use ambit_proto::api::telemetry::{FlowEvent, FlowShape, Party, Protocol};

use super::api::{FlowRecord, ObservedFlow, PartyRecord};
use super::store::{ReporterId, ReporterKind};

fn party(p: Option<Party>) -> PartyRecord {
    let p = p.unwrap_or_default();
    PartyRecord {
        workload: p.workload,
        namespace: p.namespace,
        identity: p.identity,
        address: p.address,
        app: p.app,
        version: p.version,
    }
}

pub fn protocol_name(protocol: i32) -> &'static str {
    match Protocol::try_from(protocol) {
        Ok(Protocol::Tcp) => "tcp",
        Ok(Protocol::Http1) => "http1",
        Ok(Protocol::Http2) => "http2",
        Ok(Protocol::Grpc) => "grpc",
        _ => "unknown",
    }
}

pub fn flow_record(reporter: &ReporterId, e: FlowEvent) -> FlowRecord {
    FlowRecord {
        reporter_kind: reporter.kind.as_str().into(),
        reporter: reporter.name.clone(),
        start_unix_ms: e.start_unix_ms,
        duration_ms: e.duration_us as f64 / 1000.0,
        protocol: protocol_name(e.protocol).into(),
        source: party(e.source),
        destination: party(e.destination),
        destination_service: e.destination_service,
        destination_port: e.destination_port,
        mutual_tls: e.mutual_tls,
        method: e.method,
        authority: e.authority,
        path: e.path,
        status: e.status,
        grpc_status: (e.grpc_status >= 0 && e.protocol == Protocol::Grpc as i32)
            .then_some(e.grpc_status),
        response_flags: e.response_flags,
        route: e.route,
        backend_service: e.backend_service,
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
        attempts: e.attempts,
        failed: e.failed,
        reason: e.reason,
        policy: e.policy,
        would_deny: e.would_deny,
    }
}

/// Either side of `record` is workload `namespace/name`.
pub fn involves_workload(record: &FlowRecord, namespace: &str, name: &str) -> bool {
    [&record.source, &record.destination]
        .iter()
        .any(|p| p.namespace == namespace && p.workload == name)
}

/// The shapes of all reporters merged: the same shape seen by several proxies (two ztunnels
/// never see the same inbound connection, but a restarted proxy's shapes start over) adds up.
pub fn merge_shapes<'a>(
    all: impl IntoIterator<Item = (ReporterKind, &'a [FlowShape])>,
) -> Vec<ObservedFlow> {
    type Key = (String, String, String, String, String, u32, String, String);
    let mut merged: BTreeMap<Key, ObservedFlow> = BTreeMap::new();
    for (kind, shapes) in all {
        for s in shapes {
            let key = (
                kind.as_str().to_string(),
                s.source_identity.clone(),
                s.destination_namespace.clone(),
                s.destination_workload.clone(),
                s.destination_service.clone(),
                s.destination_port,
                s.method.clone(),
                s.path_prefix.clone(),
            );
            let flow = merged.entry(key).or_insert_with(|| ObservedFlow {
                reporter_kind: kind.as_str().into(),
                source_identity: s.source_identity.clone(),
                destination_workload: s.destination_workload.clone(),
                destination_namespace: s.destination_namespace.clone(),
                destination_service: s.destination_service.clone(),
                destination_port: s.destination_port,
                method: s.method.clone(),
                path_prefix: s.path_prefix.clone(),
                count: 0,
                failed: 0,
                first_seen_unix_ms: s.first_seen_unix_ms,
                last_seen_unix_ms: s.last_seen_unix_ms,
            });
            flow.count += s.count;
            flow.failed += s.failed;
            flow.first_seen_unix_ms = flow.first_seen_unix_ms.min(s.first_seen_unix_ms);
            flow.last_seen_unix_ms = flow.last_seen_unix_ms.max(s.last_seen_unix_ms);
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_all_reporters_merge() {
        let shape = |count, first, last| FlowShape {
            source_identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            destination_workload: "reviews-v1".into(),
            destination_namespace: "demo".into(),
            destination_port: 8080,
            count,
            failed: 1,
            first_seen_unix_ms: first,
            last_seen_unix_ms: last,
            ..Default::default()
        };
        let a = [shape(3, 10, 20)];
        let b = [shape(4, 5, 15), FlowShape::default()];
        let merged = merge_shapes([
            (ReporterKind::Ztunnel, &a[..]),
            (ReporterKind::Ztunnel, &b[..]),
        ]);
        assert_eq!(merged.len(), 2);
        let m = merged.iter().find(|f| f.count == 7).unwrap();
        assert_eq!(
            (m.failed, m.first_seen_unix_ms, m.last_seen_unix_ms),
            (2, 5, 20)
        );
        assert_eq!(m.reporter_kind, "ztunnel");
    }

    #[test]
    fn events_become_records() {
        let id = ReporterId {
            kind: ReporterKind::Waypoint,
            name: "demo/waypoint".into(),
        };
        let r = flow_record(
            &id,
            FlowEvent {
                duration_us: 1500,
                protocol: Protocol::Http1.into(),
                grpc_status: -1,
                source: Some(Party {
                    workload: "client".into(),
                    namespace: "demo".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert_eq!((r.duration_ms, r.protocol.as_str()), (1.5, "http1"));
        assert_eq!(r.grpc_status, None);
        assert_eq!(r.reporter_kind, "waypoint");
        assert!(involves_workload(&r, "demo", "client"));
        assert!(!involves_workload(&r, "demo", "reviews-v1"));
    }
}
