//! `ambit config` and `ambit status`: what the running local mesh's components hold.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ambit_discovery::dump::ztunnel::ConfigDump;
use anyhow::Context;
use serde::Serialize;

use super::{ConfigArgs, Output, OutputArgs, Section};
use crate::local::RunState;
use crate::local::apps::fetch;
use ambit_controller::push::SyncStatus;

async fn dump(admin: SocketAddr) -> anyhow::Result<ConfigDump> {
    let (status, body) = fetch(&format!("http://{admin}/config_dump"))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "ztunnel admin at {admin} did not answer: {e} (is the mesh running? `ambit up`)"
            )
        })?;
    anyhow::ensure!(status == 200, "ztunnel admin at {admin} answered {status}");
    serde_json::from_str(&body).with_context(|| format!("reading the config dump from {admin}"))
}

/// The dumps to show: one ztunnel's, or every node's of the local mesh.
async fn dumps(args: &ConfigArgs) -> anyhow::Result<Vec<ConfigDump>> {
    if let Some(admin) = args.admin {
        return Ok(vec![dump(admin).await?]);
    }
    let state = RunState::load_current()?;
    let mut out = Vec::new();
    for node in &state.nodes {
        if args.node.as_ref().is_none_or(|n| *n == node.name) {
            out.push(dump(node.admin).await?);
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no node {} in the running mesh (nodes: {})",
        args.node.as_deref().unwrap_or(""),
        state
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(out)
}

fn print<T: Serialize>(
    output: Output,
    rows: &[T],
    table: impl Fn(&T) -> Vec<String>,
    header: &[&str],
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&rows)?),
        Output::Table => {
            let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
            cells.extend(rows.iter().map(table));
            let widths: Vec<usize> = (0..header.len())
                .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap_or(0))
                .collect();
            for row in cells {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
        }
    }
    Ok(())
}

fn expiry(not_after: f64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(not_after.max(0.0));
    let left = at
        .duration_since(SystemTime::now())
        .map(|d| {
            format!(
                "in {}",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_else(|_| "EXPIRED".into());
    format!("{} ({left})", humantime::format_rfc3339_seconds(at))
}

pub async fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let dumps = dumps(&args).await?;
    let output = args.output.output;
    match args.section {
        Section::Workloads => {
            // A workload appears in several nodes' scopes; show it once.
            let mut by_uid = BTreeMap::new();
            for w in dumps.into_iter().flat_map(|d| d.workloads) {
                by_uid
                    .entry((w.namespace.clone(), w.name.clone()))
                    .or_insert(w);
            }
            let rows: Vec<_> = by_uid.into_values().collect();
            print(
                output,
                &rows,
                |w| {
                    vec![
                        w.namespace.clone(),
                        w.name.clone(),
                        w.addresses.join(","),
                        w.node.clone(),
                        w.protocol.clone(),
                        w.identity.clone(),
                    ]
                },
                &[
                    "NAMESPACE",
                    "NAME",
                    "ADDRESSES",
                    "NODE",
                    "PROTOCOL",
                    "IDENTITY",
                ],
            )
        }
        Section::Services => {
            let mut by_name = BTreeMap::new();
            for s in dumps.into_iter().flat_map(|d| d.services) {
                by_name.entry(s.name.clone()).or_insert(s);
            }
            let rows: Vec<_> = by_name.into_values().collect();
            print(
                output,
                &rows,
                |s| {
                    vec![
                        s.name.clone(),
                        s.vips.join(","),
                        s.ports.join(","),
                        s.endpoints.len().to_string(),
                    ]
                },
                &["NAME", "VIPS", "PORTS", "ENDPOINTS"],
            )
        }
        Section::Policies => {
            let mut by_name = BTreeMap::new();
            for p in dumps.into_iter().flat_map(|d| d.policies) {
                by_name.entry(p.name.clone()).or_insert(p);
            }
            let rows: Vec<_> = by_name.into_values().collect();
            print(
                output,
                &rows,
                |p| vec![p.name.clone(), p.action.clone()],
                &["NAME", "ACTION"],
            )
        }
        Section::Certificates => {
            let rows: Vec<_> = dumps
                .into_iter()
                .flat_map(|d| {
                    let node = d.node.clone();
                    d.certificates.into_iter().map(move |c| (node.clone(), c))
                })
                .map(|(node, c)| CertRow {
                    node,
                    identity: c.identity,
                    serial: c.serial,
                    expires: expiry(c.not_after),
                    not_after: c.not_after,
                })
                .collect();
            print(
                output,
                &rows,
                |c| {
                    vec![
                        c.node.clone(),
                        c.identity.clone(),
                        c.serial.clone(),
                        c.expires.clone(),
                    ]
                },
                &["NODE", "IDENTITY", "SERIAL", "EXPIRES"],
            )
        }
        Section::EgressScopes => {
            let rows: Vec<ScopeRow> = dumps
                .into_iter()
                .flat_map(|d| {
                    let node = d.node.clone();
                    d.egress_scopes.into_iter().map(move |s| ScopeRow {
                        node: node.clone(),
                        namespace: s.namespace,
                        declared: s.declared,
                        state: s.invalid.map_or("in force".into(), |why| {
                            format!("unreadable, refusing every mesh destination: {why}")
                        }),
                    })
                })
                .collect();
            print(
                output,
                &rows,
                |r| {
                    vec![
                        r.node.clone(),
                        r.namespace.clone(),
                        r.declared.clone(),
                        r.state.clone(),
                    ]
                },
                &["NODE", "NAMESPACE", "DECLARED", "STATE"],
            )
        }
        Section::Connections => {
            let rows: Vec<_> = dumps.into_iter().flat_map(|d| d.connections).collect();
            print(
                output,
                &rows,
                |c| {
                    vec![
                        format!("{:?}", c.direction).to_lowercase(),
                        c.pod.rsplit('/').next().unwrap_or(&c.pod).to_string(),
                        c.source.to_string(),
                        c.source_identity.clone().unwrap_or_else(|| "-".into()),
                        c.destination.to_string(),
                        c.protocol.clone(),
                        match (&c.error, c.sent) {
                            (Some(e), _) => format!("failed: {e}"),
                            (None, Some(sent)) => {
                                format!("closed ({sent}B out, {}B back)", c.received.unwrap_or(0))
                            }
                            (None, None) => "open".into(),
                        },
                    ]
                },
                &[
                    "DIRECTION",
                    "POD",
                    "SOURCE",
                    "SOURCE IDENTITY",
                    "DESTINATION",
                    "PROTOCOL",
                    "STATE",
                ],
            )
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeRow {
    node: String,
    namespace: String,
    declared: String,
    state: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertRow {
    node: String,
    identity: String,
    serial: String,
    expires: String,
    not_after: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ComponentStatus {
    component: String,
    address: String,
    version: String,
    config_version: String,
    state: String,
}

pub async fn status(args: OutputArgs) -> anyhow::Result<()> {
    let state = RunState::load_current()?;
    let mut rows = Vec::new();
    let controller = fetch(&format!(
        "http://{}/healthz/ready",
        state.controller_metrics
    ))
    .await;
    rows.push(ComponentStatus {
        component: "controller".into(),
        address: state.controller_grpc.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        config_version: "-".into(),
        state: match controller {
            Ok((200, _)) => "ready".into(),
            Ok((code, body)) => format!("not ready ({code}): {}", body.trim()),
            Err(e) => format!("down: {e}"),
        },
    });
    // What the controller wants each proxy to hold, and what each has ACKed.
    let syncz = format!("http://{}/debug/syncz", state.controller_metrics);
    let sync: Vec<SyncStatus> = match fetch(&syncz).await {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => Vec::new(),
    };
    for node in &state.nodes {
        let wanted = sync
            .iter()
            .find(|s| s.kind == "ztunnel" && s.name == node.name);
        // Readiness from its own port (15021), what a kubelet would probe; the rest from the
        // config dump on the admin port (15000).
        let readiness = fetch(&format!("http://{}/healthz/ready", node.readiness)).await;
        let row = match dump(node.admin).await {
            Ok(d) if !matches!(readiness, Ok((200, _))) => ComponentStatus {
                component: format!("ztunnel {}", node.name),
                address: node.admin.to_string(),
                version: d.version,
                config_version: d.config_version,
                state: match &readiness {
                    Ok((code, body)) => format!("not ready ({code}): {}", body.trim()),
                    Err(e) => format!("readiness port {} did not answer: {e}", node.readiness),
                },
            },
            Ok(d) => ComponentStatus {
                component: format!("ztunnel {}", node.name),
                address: node.admin.to_string(),
                version: d.version,
                state: match wanted {
                    _ if !d.synced => "waiting for its first config".into(),
                    None => "not subscribed to the controller (serving its last config)".into(),
                    Some(w) if w.last_nack.is_some() => format!(
                        "refused the controller's last config: {}",
                        w.last_nack.as_deref().unwrap_or_default()
                    ),
                    Some(w) if w.in_sync() && w.desired_version == d.config_version => format!(
                        "in sync with the controller ({} pods captured)",
                        d.pods.len()
                    ),
                    Some(w) if w.desired_version == d.config_version => format!(
                        "applied {}; its acknowledgement has not reached the controller yet",
                        d.config_version
                    ),
                    Some(w) => format!(
                        "behind: holds {}, the controller has {}",
                        d.config_version, w.desired_version
                    ),
                },
                config_version: d.config_version,
            },
            Err(e) => ComponentStatus {
                component: format!("ztunnel {}", node.name),
                address: node.admin.to_string(),
                version: "-".into(),
                config_version: "-".into(),
                state: format!("down: {e}"),
            },
        };
        rows.push(row);
    }
    for w in &state.waypoints {
        let key = w.key();
        let wanted = sync.iter().find(|s| s.kind == "waypoint" && s.name == key);
        let readiness = fetch(&format!("http://{}/healthz/ready", w.readiness)).await;
        let config = match wanted {
            None => "not subscribed to the controller".to_string(),
            Some(s) if s.last_nack.is_some() => format!(
                "refused the controller's last config: {}",
                s.last_nack.as_deref().unwrap_or_default()
            ),
            Some(s) if s.in_sync() => "config acknowledged".to_string(),
            Some(s) => format!(
                "behind: acknowledged {}, the controller has {}",
                s.acked_version.as_deref().unwrap_or("nothing"),
                s.desired_version
            ),
        };
        rows.push(ComponentStatus {
            component: format!("waypoint {key}"),
            address: format!("{} (HBONE {}:15008)", w.admin, w.ipv4),
            version: "-".into(),
            config_version: wanted.map_or("-".into(), |s| s.desired_version.clone()),
            state: match readiness {
                Ok((200, _)) => format!("ready on {}; {config}", w.node),
                Ok((code, body)) => format!("not ready ({code}): {}; {config}", body.trim()),
                Err(e) => format!("down: readiness {} did not answer: {e}", w.readiness),
            },
        });
    }
    print(
        args.output,
        &rows,
        |r| {
            vec![
                r.component.clone(),
                r.address.clone(),
                r.version.clone(),
                r.config_version.clone(),
                r.state.clone(),
            ]
        },
        &["COMPONENT", "ADDRESS", "VERSION", "CONFIG VERSION", "STATE"],
    )
}
