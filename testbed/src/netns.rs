//! A named network namespace under /var/run/netns, and running code inside it.
//!
//! Code runs inside a namespace on a fresh thread that calls setns(2) (through `nix`): network
//! namespaces are per thread, so the caller's thread never changes namespace, and the entered
//! thread exits when the closure returns instead of going back to some pool in the wrong
//! namespace. Sockets keep the namespace they were created in, so a listener bound inside
//! [`Netns::run`] can be returned and used from any thread.

use std::fs::{self, File};
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};
use crate::ip;

/// Where iproute2 keeps named namespaces (bind mounts of nsfs files).
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace. Cloning it copies the name, not the namespace; it stays valid
/// until the testbed that created it is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Refers to the namespace `name` under [`NETNS_DIR`], whether or not it exists.
    pub(crate) fn at(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
        }
    }

    /// Refers to a namespace another process's testbed made (a running local mesh, found from
    /// its state file), to run commands in it. It is not owned: nothing removes it on drop.
    pub fn existing(name: &str) -> Self {
        Self::at(name)
    }

    /// Creates the namespace (`ip netns add`); [`Netns::prepare`] makes it usable.
    pub(crate) fn add(name: &str) -> Result<Self> {
        ip::ip(None, &["netns", "add", name])?;
        Ok(Self::at(name))
    }

    /// Brings loopback up and sets every sysctl the testbed relies on, before any interface
    /// is added: a new namespace starts from the host's values or the kernel's defaults
    /// (`net.core.devconf_inherit_init_net` decides which), so nothing may be left to chance.
    /// A Docker or Kubernetes host has `net.ipv4.ip_forward=1`, for one.
    pub(crate) fn prepare(&self) -> Result<()> {
        self.set_sysctls(&[
            // Every pod and node has IPv6 addresses; a host that turned IPv6 off by default
            // must not turn it off here. `all` reaches loopback, `default` later veths.
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            // Only nodes route (wiring turns forwarding on there): a pod or the fabric that
            // forwarded would hide routing mistakes, and pods on a real cluster do not.
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv6.conf.all.forwarding", "0"),
            // Addresses must be usable the moment they are added; nothing else configures
            // addresses in these namespaces, so duplicate detection only costs a 1-2 s wait.
            // Set on `default` before any veth exists so every interface inherits it.
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            // The node proxy redirects and transparently proxies traffic for addresses that
            // are not its own, which strict reverse-path filtering drops.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // Pods answer ARP for their /32 and nodes for the link-local gateway on each pod
            // veth; a host's stricter arp_ignore/arp_announce would break that.
            ("net.ipv4.conf.all.arp_ignore", "0"),
            ("net.ipv4.conf.default.arp_ignore", "0"),
            ("net.ipv4.conf.all.arp_announce", "0"),
            ("net.ipv4.conf.default.arp_announce", "0"),
        ])?;
        self.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace's name, as `ip netns` and `ip -n` know it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: open it and setns(2) to enter the namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread inside this namespace and returns its value; a panic in `f` is
    /// resumed on the caller's thread. Use it to bind sockets or to run a small current-thread
    /// tokio runtime in a pod.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.open()?;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(self.thread_name())
                .spawn_scoped(scope, move || {
                    self.enter(&file)?;
                    Ok(f())
                })
                .map_err(|source| Error::SpawnThread {
                    netns: self.name.clone(),
                    source,
                })?;
            handle
                .join()
                .unwrap_or_else(|payload| panic::resume_unwind(payload))
        })
    }

    /// Starts `f` on a background thread inside this namespace, returning once the thread is
    /// inside it. For servers that outlive the call. The thread keeps the namespace alive until
    /// it returns, even after the testbed is dropped.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<NetnsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let me = self.clone();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(self.thread_name())
            .spawn(move || {
                let entered = me.enter(&file);
                let ok = entered.is_ok();
                // The receiver is gone only if spawn_thread itself unwound: nobody to tell.
                let _ = entered_tx.send(entered);
                ok.then(f)
            })
            .map_err(|source| Error::SpawnThread {
                netns: self.name.clone(),
                source,
            })?;
        match entered_rx.recv() {
            Ok(entered) => entered?,
            // The sender was dropped unsent, so the thread panicked before it could report.
            Err(mpsc::RecvError) => match handle.join() {
                Err(payload) => panic::resume_unwind(payload),
                Ok(_) => unreachable!("namespace thread exited without reporting"),
            },
        }
        Ok(NetnsThread { handle })
    }

    /// Runs `ip -n <this> <args>`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        ip::ip(Some(&self.name), args)
    }

    /// Writes sysctls from a thread inside the namespace: /proc/sys/net shows the settings of
    /// the namespace of the thread that opens the file.
    pub(crate) fn set_sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        self.run(|| {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                fs::write(&path, value).map_err(|source| Error::Sysctl {
                    netns: self.name.clone(),
                    key: (*key).to_owned(),
                    value: (*value).to_owned(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Reads a sysctl as seen inside the namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        self.run(|| {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::read_to_string(&path)
                .map(|value| value.trim().to_owned())
                .map_err(|source| Error::Sysctl {
                    netns: self.name.clone(),
                    key: key.to_owned(),
                    value: "(read)".to_owned(),
                    source,
                })
        })?
    }

    /// Deletes the namespace's name; the namespace itself (and its veths) goes away once no
    /// process or socket holds it any more. Already gone counts as done.
    pub(crate) fn delete(&self) -> Result<()> {
        match ip::ip(None, &["netns", "delete", &self.name]) {
            Err(err) if ip::is_already_gone(&err) || !self.path.exists() => Ok(()),
            other => other.map(drop),
        }
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|source| Error::OpenNetns {
            netns: self.name.clone(),
            path: self.path.clone(),
            source,
        })
    }

    fn enter(&self, file: &File) -> Result<()> {
        setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::EnterNetns {
            netns: self.name.clone(),
            source,
        })
    }

    fn thread_name(&self) -> String {
        // Linux keeps 15 bytes of a thread name; the end of the namespace name is the part
        // that tells pods apart.
        let start = self.name.len().saturating_sub(15);
        self.name.get(start..).unwrap_or(&self.name).to_owned()
    }
}

/// A thread running inside a namespace, from [`Netns::spawn_thread`].
#[derive(Debug)]
pub struct NetnsThread<T> {
    /// `None` only when entering the namespace failed, which spawn_thread already reported.
    handle: JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the closure and returns its value, or its panic payload.
    pub fn join(self) -> thread::Result<T> {
        self.handle
            .join()
            .map(|value| value.expect("spawn_thread returns a handle only once the thread entered"))
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}
