//! Keeping a local mesh's processes alive, as the kubelet does for a node's ztunnel and the
//! controller's pod. A thread looks at each process every [`TICK`]: one that exited is reaped
//! (no zombies), said so in the live output, and started again with the same arguments, so
//! on the same ports. A restarted ztunnel holds no pods, so once it is ready the supervisor
//! hands it its node's meshed pods again, playing the node agent's part as `ambit up` does at
//! start. A process that keeps dying soon after it starts is started again after a growing
//! pause ([`backoff`]), with the end of its log, rather than in a tight loop.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ambit_proto::node_agent::{self, Reply};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::BENCH_DIRECT_PORT;
use super::apps::fetch;
use super::process::{Process, Spec, describe_exit, log_tail};
use super::state::RunState;

/// How often each process is looked at.
const TICK: Duration = Duration::from_millis(200);
/// A process that ran this long before exiting was not crash-looping: it is started again at
/// once, and its count of quick exits starts over. Ours are ready well within a second.
const STABLE: Duration = Duration::from_secs(5);
/// The longest pause between two starts of a process that keeps exiting.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a restarted process may take to become ready before the output says so.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Between two attempts to hand a pod back to a restarted ztunnel that refused it.
const RETRY_PODS: Duration = Duration::from_secs(2);

/// The pause before starting a process again after its `quick_exits`-th exit in a row within
/// [`STABLE`] of starting: none for the first crash of a process that had been running, then
/// 1 s, 2 s, 4 s… up to [`MAX_BACKOFF`], as the kubelet's CrashLoopBackOff does.
pub fn backoff(quick_exits: u32) -> Duration {
    match quick_exits {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(5)).min(MAX_BACKOFF),
    }
}

/// Something the supervisor did, for the live output: "ztunnel on node-b exited (signal 9);
/// restarted".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// "controller", "ztunnel on node-b".
    pub component: String,
    pub text: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a supervised process is, for what happens once it is ready again.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Controller {
        ready_url: String,
    },
    Ztunnel {
        node: String,
        ready_url: String,
        socket: PathBuf,
    },
    /// `key` is `<namespace>/<name>`.
    Waypoint {
        key: String,
        ready_url: String,
    },
}

impl Role {
    fn ready_url(&self) -> &str {
        match self {
            Role::Controller { ready_url }
            | Role::Ztunnel { ready_url, .. }
            | Role::Waypoint { ready_url, .. } => ready_url,
        }
    }
}

pub(crate) struct Member {
    spec: Spec,
    role: Role,
    process: Option<Process>,
    /// Stopped on purpose through the API: left down until started again.
    held: bool,
    /// Exits within `stable` of starting, in a row.
    quick_exits: u32,
    /// [`STABLE`], shorter in tests.
    stable: Duration,
    /// When to start it again, while it is down.
    restart_at: Option<Instant>,
    /// Since when it has been started again and not yet ready (and, for a ztunnel, not yet
    /// holding its pods again).
    recovering: Option<Instant>,
    said_not_ready: bool,
    next_pod_attempt: Instant,
    /// How it last exited and the pause that followed, for the restart's line.
    last_exit: Option<(String, Duration)>,
    /// Counts starts, so work done outside the lock applies to the start it was done for.
    generation: u64,
}

impl Member {
    pub(crate) fn new(spec: Spec, role: Role, process: Process) -> Self {
        Member {
            spec,
            role,
            process: Some(process),
            held: false,
            quick_exits: 0,
            stable: STABLE,
            restart_at: None,
            recovering: None,
            said_not_ready: false,
            next_pod_attempt: Instant::now(),
            last_exit: None,
            generation: 0,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    fn is_node(&self, wanted: &str) -> bool {
        matches!(&self.role, Role::Ztunnel { node, .. } if node == wanted)
    }

    fn is_waypoint(&self, wanted: &str) -> bool {
        matches!(&self.role, Role::Waypoint { key, .. } if key == wanted)
    }
}

/// The supervised processes and what the supervisor needs to bring them back, shared by the
/// mesh (which stops, kills and adds pods through it) and the supervisor's thread.
pub(crate) struct Shared {
    /// The controller first, then a ztunnel per node in node order, then the waypoints.
    members: Mutex<Vec<Member>>,
    /// Per node, the meshed pods its ztunnel should hold: uid -> network namespace path.
    pods: Mutex<BTreeMap<String, BTreeMap<String, PathBuf>>>,
    state: Mutex<RunState>,
    /// Where the run state is written (state.json, and the CLI's current run), rewritten when
    /// a pid changes so `ambit down` can still find every process after a crash.
    state_files: Vec<PathBuf>,
    events: Mutex<Vec<Event>>,
    sender: mpsc::UnboundedSender<Event>,
    event_log: PathBuf,
}

impl Shared {
    pub(crate) fn new(
        members: Vec<Member>,
        state: RunState,
        state_files: Vec<PathBuf>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let event_log = state.work_dir.join("supervisor.log");
        let shared = Shared {
            members: Mutex::new(members),
            pods: Mutex::new(BTreeMap::new()),
            state: Mutex::new(state),
            state_files,
            events: Mutex::new(Vec::new()),
            sender,
            event_log,
        };
        (Arc::new(shared), receiver)
    }

    pub(crate) fn state(&self) -> RunState {
        self.state.lock().clone()
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    pub(crate) fn pid(&self, index: usize) -> Option<u32> {
        self.members.lock().get(index).and_then(Member::pid)
    }

    pub(crate) fn ztunnel_index(&self, node: &str) -> Option<usize> {
        self.members.lock().iter().position(|m| m.is_node(node))
    }

    /// `key`: `<namespace>/<name>`.
    pub(crate) fn waypoint_index(&self, key: &str) -> Option<usize> {
        self.members.lock().iter().position(|m| m.is_waypoint(key))
    }

    pub(crate) fn add_pod(&self, node: &str, uid: &str, netns: &Path) {
        self.pods
            .lock()
            .entry(node.into())
            .or_default()
            .insert(uid.into(), netns.into());
    }

    pub(crate) fn remove_pod(&self, node: &str, uid: &str) {
        if let Some(pods) = self.pods.lock().get_mut(node) {
            pods.remove(uid);
        }
    }

    /// SIGKILL. `hold`: leave it down until [`Shared::resume`]; otherwise the supervisor
    /// restarts it as after any crash.
    pub(crate) fn kill(&self, index: usize, hold: bool) {
        let mut members = self.members.lock();
        let Some(m) = members.get_mut(index) else {
            return;
        };
        m.held |= hold;
        let role = m.role.clone();
        if hold && let Some(mut p) = m.process.take() {
            let pid = p.pid();
            p.kill();
            m.recovering = None;
            drop(members);
            self.record_pid(&role, pid, None);
        } else if let Some(pid) = m.pid() {
            // Like a crash from outside: the supervisor finds it dead and reaps it.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// SIGTERM and wait up to `grace`; left down. Whether it exited by itself.
    pub(crate) fn stop(&self, index: usize, grace: Duration) -> bool {
        let (process, role) = {
            let mut members = self.members.lock();
            let Some(m) = members.get_mut(index) else {
                return true;
            };
            m.held = true;
            m.recovering = None;
            (m.process.take(), m.role.clone())
        };
        let Some(mut process) = process else {
            return true;
        };
        // Outside the lock: the supervisor keeps looking at the others meanwhile.
        let pid = process.pid();
        let by_itself = process.stop(grace);
        self.record_pid(&role, pid, None);
        by_itself
    }

    /// Lets the supervisor start a held process again (at once).
    pub(crate) fn resume(&self, index: usize) {
        if let Some(m) = self.members.lock().get_mut(index) {
            m.held = false;
            if m.process.is_none() {
                m.restart_at = Some(Instant::now());
                m.last_exit = None;
            }
        }
    }

    /// Stops every process for good: waypoints first, then ztunnels (they drain and release
    /// their pods), then the controller.
    pub(crate) fn stop_all(&self, ztunnel_grace: Duration, controller_grace: Duration) {
        let waypoints: Vec<usize> = {
            let members = self.members.lock();
            (0..members.len())
                .filter(|i| matches!(members[*i].role, Role::Waypoint { .. }))
                .collect()
        };
        let count = self.members.lock().len();
        let rest = (1..count).filter(|i| !waypoints.contains(i));
        for index in waypoints.iter().copied().chain(rest).chain([0]) {
            let grace = if index == 0 {
                controller_grace
            } else {
                ztunnel_grace
            };
            self.stop(index, grace);
        }
    }

    fn say(&self, component: &str, text: String) {
        let event = Event {
            component: component.into(),
            text,
        };
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.event_log)
        {
            let _ = writeln!(log, "{}", event.text);
        }
        self.events.lock().push(event.clone());
        // Nobody listening (a test using the API) is fine: the history above keeps it.
        let _ = self.sender.send(event);
    }

    /// Records a process's exit (`old`) or start (`new`) in the run state and rewrites its
    /// files.
    fn record_pid(&self, role: &Role, old: Option<u32>, new: Option<u32>) {
        let mut state = self.state.lock();
        state.pids.retain(|p| Some(*p) != old);
        state.pids.extend(new);
        if let Role::Ztunnel { node, .. } = role
            && let Some(n) = state.nodes.iter_mut().find(|n| &n.name == node)
            && (new.is_some() || n.pid == old)
        {
            n.pid = new;
        }
        if let Role::Waypoint { key, .. } = role
            && let Some(w) = state.waypoints.iter_mut().find(|w| &w.key() == key)
            && (new.is_some() || w.pid == old)
        {
            w.pid = new;
        }
        let text = serde_json::to_string_pretty(&*state).expect("state serializes");
        for file in &self.state_files {
            let _ = std::fs::write(file, &text);
        }
    }

    /// One look at every process: reap what exited, start what is due. Returns the started
    /// processes still waiting to be ready: (index, generation, role).
    fn check(&self) -> Vec<(usize, u64, Role)> {
        let now = Instant::now();
        let mut said = Vec::new();
        let mut pids = Vec::new();
        let mut recovering = Vec::new();
        {
            let mut members = self.members.lock();
            for (index, m) in members.iter_mut().enumerate() {
                if m.held {
                    continue;
                }
                if let Some(p) = m.process.as_mut()
                    && let Some(status) = p.exited()
                {
                    let uptime = p.uptime();
                    let pid = p.pid();
                    m.process = None;
                    m.recovering = None;
                    m.quick_exits = if uptime < m.stable {
                        m.quick_exits + 1
                    } else {
                        0
                    };
                    let pause = backoff(m.quick_exits);
                    m.restart_at = Some(now + pause);
                    m.last_exit = Some((describe_exit(status), pause));
                    pids.push((m.role.clone(), pid, None));
                    if !pause.is_zero() {
                        said.push((
                            m.spec.name.clone(),
                            format!(
                                "{} exited ({}) {:.1}s after it started, {} time(s) in a row; \
                                 starting it again in {}s; last lines of {}:\n{}",
                                m.spec.name,
                                describe_exit(status),
                                uptime.as_secs_f64(),
                                m.quick_exits,
                                pause.as_secs(),
                                m.spec.log.display(),
                                indent(&log_tail(&m.spec.log)),
                            ),
                        ));
                    }
                }
                if m.process.is_none() && m.restart_at.is_some_and(|at| at <= now) {
                    let why = match &m.last_exit {
                        Some((status, pause)) if pause.is_zero() => {
                            format!("{} exited ({status})", m.spec.name)
                        }
                        Some((status, pause)) => format!(
                            "{} exited ({status}) and was left down {}s",
                            m.spec.name,
                            pause.as_secs()
                        ),
                        None => format!("{} had been stopped on purpose", m.spec.name),
                    };
                    match Process::start(&m.spec, true) {
                        Ok(p) => {
                            pids.push((m.role.clone(), None, p.pid()));
                            m.process = Some(p);
                            m.restart_at = None;
                            m.generation += 1;
                            m.recovering = Some(now);
                            m.said_not_ready = false;
                            m.next_pod_attempt = now;
                            said.push((m.spec.name.clone(), format!("{why}; restarted")));
                        }
                        Err(e) => {
                            m.quick_exits += 1;
                            let pause = backoff(m.quick_exits);
                            m.restart_at = Some(now + pause);
                            said.push((
                                m.spec.name.clone(),
                                format!(
                                    "{why}; could not start it again ({e}); next try in {}s",
                                    pause.as_secs()
                                ),
                            ));
                        }
                    }
                }
                if let Some(since) = m.recovering {
                    if since.elapsed() > READY_WITHIN && !m.said_not_ready {
                        m.said_not_ready = true;
                        said.push((
                            m.spec.name.clone(),
                            format!(
                                "{} is not ready {}s after its restart; last lines of {}:\n{}",
                                m.spec.name,
                                READY_WITHIN.as_secs(),
                                m.spec.log.display(),
                                indent(&log_tail(&m.spec.log)),
                            ),
                        ));
                    }
                    if m.next_pod_attempt <= now {
                        recovering.push((index, m.generation, m.role.clone()));
                    }
                }
            }
        }
        for (role, old, new) in pids {
            self.record_pid(&role, old, new);
        }
        for (component, text) in said {
            self.say(&component, text);
        }
        recovering
    }

    /// Once a restarted process is ready: a ztunnel gets its node's pods back.
    async fn recover(&self, index: usize, generation: u64, role: &Role) {
        let ready = tokio::time::timeout(Duration::from_secs(1), fetch(role.ready_url()))
            .await
            .is_ok_and(|r| r.is_ok_and(|(status, _)| status == 200));
        if !ready {
            return;
        }
        let mut refused = Vec::new();
        let mut handed = 0;
        let (name, text) = match role {
            Role::Controller { .. } => (
                "controller".to_string(),
                "controller is ready again".to_string(),
            ),
            Role::Waypoint { key, .. } => {
                let name = format!("waypoint {key}");
                let text = format!("{name} is ready again");
                (name, text)
            }
            Role::Ztunnel { node, socket, .. } => {
                let pods = self.pods.lock().get(node).cloned().unwrap_or_default();
                for (uid, netns) in pods {
                    let command = node_agent::Command::Add {
                        uid: uid.clone(),
                        netns,
                        exclude_ports: vec![BENCH_DIRECT_PORT],
                        pod_uid: None,
                    };
                    match node_agent::send(socket, &command).await {
                        Ok(Reply::Ok { .. }) => handed += 1,
                        Ok(Reply::Error { error }) => refused.push(format!("{uid}: {error}")),
                        Err(e) => refused.push(format!("{uid}: {e}")),
                    }
                }
                let name = format!("ztunnel on {node}");
                let text = if refused.is_empty() {
                    format!("{name} is ready again and holds its {handed} meshed pod(s) again")
                } else {
                    format!(
                        "{name} refused {} of its pods (trying again in {}s): {}",
                        refused.len(),
                        RETRY_PODS.as_secs(),
                        refused.join("; ")
                    )
                };
                (name, text)
            }
        };
        {
            let mut members = self.members.lock();
            let Some(m) = members.get_mut(index) else {
                return;
            };
            if m.generation != generation || m.process.is_none() {
                return;
            }
            if refused.is_empty() {
                m.recovering = None;
            } else {
                m.next_pod_attempt = Instant::now() + RETRY_PODS;
            }
        }
        self.say(&name, text);
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The supervisor's thread; stopped (and joined) when dropped.
pub(crate) struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// A thread of its own, with a small runtime for the node agent calls: it keeps working
    /// whatever the caller's runtime is busy with (tests block theirs on curl).
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mesh-supervisor".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for (index, generation, role) in shared.check() {
                            runtime.block_on(shared.recover(index, generation, &role));
                        }
                        std::thread::sleep(TICK);
                    }
                })?
        };
        Ok(Supervisor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[path = "supervise_tests.rs"]
mod tests;
