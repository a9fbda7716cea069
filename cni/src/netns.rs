//! Finding a running pod's network namespace from its IP, for the node agent: a pod already
//! running when its namespace is labelled had its CNI ADD long ago, and the API knows its IP but
//! not its namespace. Candidates are the runtime's pinned namespaces (containerd and CRI-O bind
//! them under /var/run/netns) and every process's `/proc/<pid>/ns/net`, each namespace looked at
//! once; the one holding an interface with the pod's IP is it. As Istio's node agent does.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// Where runtimes pin pod network namespaces.
pub const PINNED_DIR: &str = "/var/run/netns";

/// The path of the network namespace that holds `ip` on one of its interfaces: a pinned one
/// under `pinned_dir` when there is one (it outlives any process), else `/proc/<pid>/ns/net` of
/// a process inside it. The host's own namespace is never an answer.
pub fn find_by_ip(ip: IpAddr, pinned_dir: &Path) -> io::Result<Option<PathBuf>> {
    let candidates = candidates(pinned_dir)?;
    // setns changes the calling thread's namespace: look from a thread of our own, which ends
    // when done, never from a caller's (a runtime worker would stay in the pod's namespace).
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for path in candidates {
                    if holds(&path, ip)? {
                        return Ok(Some(path));
                    }
                }
                Ok(None)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Each distinct namespace once, pinned ones first, without the host's.
fn candidates(pinned_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let id = |path: &Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let mut seen = HashSet::new();
    if let Ok(host) = id(Path::new("/proc/self/ns/net")) {
        seen.insert(host);
    }
    let mut found = Vec::new();
    let mut consider = |path: PathBuf| {
        if let Ok(ns) = id(&path)
            && seen.insert(ns)
        {
            found.push(path);
        }
    };
    if let Ok(pinned) = std::fs::read_dir(pinned_dir) {
        let mut paths: Vec<PathBuf> = pinned.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        paths.into_iter().for_each(&mut consider);
    }
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            consider(entry.path().join("ns/net"));
        }
    }
    Ok(found)
}

/// Enters `path` (on the calling thread, which must be a throwaway one) and looks for `ip`.
fn holds(path: &Path, ip: IpAddr) -> io::Result<bool> {
    // A process may exit, or a pin be removed, between listing and opening: not this one.
    let Ok(ns) = File::open(path) else {
        return Ok(false);
    };
    match nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET) {
        Ok(()) => {}
        // Not a network namespace (a stray file or directory where namespaces are pinned).
        Err(nix::errno::Errno::EINVAL) => return Ok(false),
        // Not allowed to enter (no CAP_SYS_ADMIN): every other namespace would be refused too,
        // and "not found" would hide why.
        Err(e) => {
            return Err(io::Error::other(format!(
                "entering the network namespace {}: {e} (the node agent needs CAP_SYS_ADMIN)",
                path.display()
            )));
        }
    }
    // One namespace that cannot be listed does not end the search.
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Ok(false);
    };
    Ok(addrs.into_iter().any(|a| {
        let Some(addr) = a.address else { return false };
        addr.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())) == Some(ip)
            || addr.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())) == Some(ip)
    }))
}
