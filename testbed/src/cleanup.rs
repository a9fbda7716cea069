//! Run records, leftovers and teardown.
//!
//! Several testbeds run on one host at once (nextest runs tests in parallel processes; e2e,
//! benchmarks and `ambit up` share machines), so "every namespace whose name starts with
//! `ambit-`" is not the same as "leftovers". Each run therefore reserves its prefix by creating
//! `/run/ambit-testbed/<run>` (holding the owner's pid and start time) *before* it creates any
//! namespace, and removes it last. A run whose owner process is gone is a leftover; a run whose
//! owner is alive is in use and left alone; a namespace with no record is an orphan and removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ip;
use crate::names::{self, PREFIX};
use crate::netns::{NETNS_DIR, Netns};
use crate::process;

/// Where run records live.
pub const RUN_DIR: &str = "/run/ambit-testbed";

/// Attempts at finding an unused run id before giving up.
const RESERVE_ATTEMPTS: u32 = 32;

/// Who owns a leftover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The process that created the run is still running: the run is in use.
    Live { pid: u32 },
    /// The process that created the run has exited (crashed, killed, or forgot to drop it).
    Gone { pid: u32 },
    /// No run record names an owner: a namespace from a run that crashed before writing its
    /// record, or one created by something other than this crate.
    Unrecorded,
}

/// Something named `ambit-*` that a testbed run created and that still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A namespace under /var/run/netns.
    Netns { name: String, owner: Owner },
    /// A link in this process's (the host's) namespace. The testbed never creates links there,
    /// so any `ambit-*` link there is a stray.
    RootLink { name: String },
    /// A run record under [`RUN_DIR`].
    RunRecord { run: String, owner: Owner },
}

impl Leftover {
    pub fn name(&self) -> &str {
        match self {
            Self::Netns { name, .. } | Self::RootLink { name } => name,
            Self::RunRecord { run, .. } => run,
        }
    }

    /// The run prefix (`ambit-<id>`) this belongs to, when the name carries one.
    pub fn run(&self) -> Option<&str> {
        names::run_of(self.name())
    }

    /// Whether its run's owner is still running (so it is not a leftover of a crash yet).
    pub fn in_use(&self) -> bool {
        matches!(
            self,
            Self::Netns {
                owner: Owner::Live { .. },
                ..
            } | Self::RunRecord {
                owner: Owner::Live { .. },
                ..
            }
        )
    }
}

/// What [`cleanup_leftovers`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<Leftover>,
    /// Pids killed because they ran inside a removed namespace.
    pub killed: Vec<u32>,
    /// Left alone because their owner is still running.
    pub in_use: Vec<Leftover>,
}

/// Lists every namespace, host link and run record named `ambit-*`, with its owner.
pub fn leftovers() -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    for name in list_dir(Path::new(NETNS_DIR))? {
        let owner = names::run_of(&name).map_or(Owner::Unrecorded, owner_of);
        found.push(Leftover::Netns { name, owner });
    }
    for name in root_links()? {
        found.push(Leftover::RootLink { name });
    }
    for run in list_dir(Path::new(RUN_DIR))? {
        let owner = owner_of(&run);
        found.push(Leftover::RunRecord { run, owner });
    }
    Ok(found)
}

/// Removes every leftover whose owner is gone (or unknown): kills the processes inside its
/// namespaces, deletes the namespaces (which deletes their veths), deletes stray `ambit-*`
/// links in the host namespace and removes run records. Runs whose owner is still alive are
/// reported in [`CleanupReport::in_use`] and left alone. This is `ambit down`.
pub fn cleanup_leftovers() -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    let (in_use, stale): (Vec<_>, Vec<_>) = leftovers()?.into_iter().partition(Leftover::in_use);
    report.in_use = in_use;
    // Namespaces first and records last, so an interrupted cleanup still leaves every
    // remaining namespace with the record that says whose it was.
    let (records, rest): (Vec<_>, Vec<_>) = stale
        .into_iter()
        .partition(|l| matches!(l, Leftover::RunRecord { .. }));
    for leftover in rest.into_iter().chain(records) {
        match &leftover {
            Leftover::Netns { name, .. } => {
                let netns = Netns::at(name);
                report.killed.extend(process::kill_all_in(&netns)?);
                netns.delete()?;
            }
            Leftover::RootLink { name } => match ip::ip(None, &["link", "delete", name]) {
                Err(err) if !ip::is_already_gone(&err) => return Err(err),
                _ => {}
            },
            Leftover::RunRecord { run, .. } => remove_record(&record_path(run))?,
        }
        tracing::info!(name = leftover.name(), "removed testbed leftover");
        report.removed.push(leftover);
    }
    Ok(report)
}

/// Reserves a fresh run prefix by creating its record; returns the prefix and record path.
pub(crate) fn reserve_run() -> Result<(String, PathBuf)> {
    let dir = Path::new(RUN_DIR);
    fs::create_dir_all(dir).map_err(|source| Error::RunRecord {
        action: "create the directory for",
        path: dir.to_owned(),
        source,
    })?;
    let me = std::process::id();
    // The record is written in full under a name list_dir ignores, then hard-linked into
    // place: a concurrent cleanup must never read a half-written record and take a run that is
    // being set up for an orphan.
    let draft = dir.join(format!(".draft-{me}-{}", names::random_run_prefix()));
    let written = fs::write(
        &draft,
        format!("{me} {}\n", start_time(me).unwrap_or_default()),
    );
    written.map_err(|source| Error::RunRecord {
        action: "write",
        path: draft.clone(),
        source,
    })?;
    let reserved = claim_unused_prefix(&draft);
    let _ = fs::remove_file(&draft);
    reserved
}

fn claim_unused_prefix(draft: &Path) -> Result<(String, PathBuf)> {
    for _ in 0..RESERVE_ATTEMPTS {
        let run = names::random_run_prefix();
        // An orphan namespace (no record) may still hold this prefix.
        let taken = list_dir(Path::new(NETNS_DIR))?
            .iter()
            .any(|name| names::run_of(name) == Some(&run));
        if taken {
            continue;
        }
        let path = record_path(&run);
        // link(2) is the atomic reservation: two processes can draw the same id, only one can
        // create the name.
        match fs::hard_link(draft, &path) {
            Ok(()) => return Ok((run, path)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::RunRecord {
                    action: "create",
                    path,
                    source,
                });
            }
        }
    }
    Err(Error::NoFreeRunId {
        attempts: RESERVE_ATTEMPTS,
    })
}

/// Kills what runs in `namespaces`, deletes them (last created first) and then the run record.
/// Carries on past failures so one stuck namespace does not leak the rest; returns the first.
pub(crate) fn teardown(namespaces: &[Netns], record: &Path) -> Result<()> {
    let mut first_err = None;
    // Kill everything before deleting anything: a process in a pod can hold sockets in other
    // namespaces of the run.
    for netns in namespaces.iter().rev() {
        keep_first(&mut first_err, process::kill_all_in(netns).map(drop));
    }
    for netns in namespaces.iter().rev() {
        keep_first(&mut first_err, netns.delete());
    }
    // Keep the record if a namespace survived, so cleanup_leftovers still knows whose it is.
    if first_err.is_none() {
        keep_first(&mut first_err, remove_record(record));
    }
    first_err.map_or(Ok(()), Err)
}

fn keep_first(first: &mut Option<Error>, result: Result<()>) {
    if let Err(err) = result {
        tracing::warn!(%err, "testbed teardown step failed");
        first.get_or_insert(err);
    }
}

fn record_path(run: &str) -> PathBuf {
    Path::new(RUN_DIR).join(run)
}

fn remove_record(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(Error::RunRecord {
            action: "remove",
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn owner_of(run: &str) -> Owner {
    let Ok(record) = fs::read_to_string(record_path(run)) else {
        return Owner::Unrecorded;
    };
    let mut fields = record.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (fields.next(), fields.next()) else {
        return Owner::Unrecorded;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return Owner::Unrecorded;
    };
    // Comparing start times keeps a recycled pid from passing for the owner.
    if start_time(pid) == Some(started) {
        Owner::Live { pid }
    } else {
        Owner::Gone { pid }
    }
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses; fields after it are
    // plain, starting with field 3 (state).
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// `ambit-*` entries of `dir`; a missing directory has none.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ListDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// `ambit-*` links in this process's namespace, from `ip -o link show` lines such as
/// `7: ambit-p0@if2: <BROADCAST,...`.
fn root_links() -> Result<Vec<String>> {
    let out = ip::ip(None, &["-o", "link", "show"])?;
    Ok(parse_link_names(&out)
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

fn parse_link_names(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter_map(|line| {
        let name = line.split(": ").nth(1)?;
        Some(name.split('@').next().unwrap_or(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn link_names_are_parsed() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   7: ambit-p0@if2: <BROADCAST,MULTICAST> mtu 1500\n\
                   8: eth0: <BROADCAST> mtu 1500\n";
        let names: Vec<_> = parse_link_names(out).collect();
        assert_eq!(names, ["lo", "ambit-p0", "eth0"]);
    }

    #[test]
    fn leftovers_know_their_run() {
        let ns = Leftover::Netns {
            name: "ambit-0a1b2c-node-a".into(),
            owner: Owner::Unrecorded,
        };
        assert_eq!(ns.run(), Some("ambit-0a1b2c"));
        let link = Leftover::RootLink {
            name: "ambit-p0".into(),
        };
        assert_eq!(link.run(), None);
    }
}
