//! What a testbed builds, running things inside it, refusing bad requests, and removing
//! everything when it is dropped.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_testbed::{Error, Leftover, NETNS_DIR, Owner};

#[test]
fn the_topology_follows_the_address_plan() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    let run = tb.run_prefix();
    assert!(run.starts_with(ambit_testbed::PREFIX));
    assert_eq!(tb.namespaces().len(), 1 + 2 + 4);
    for netns in tb.namespaces() {
        assert!(
            netns.name().starts_with(run),
            "{} lacks {run}",
            netns.name()
        );
        assert_eq!(netns.path(), Path::new(NETNS_DIR).join(netns.name()));
        assert!(netns.path().exists());
    }
    let b = tb.node("node-b")?;
    assert_eq!(b.ipv4().to_string(), "10.10.0.2");
    assert_eq!(b.ipv6().to_string(), "fd00:10:10::2");
    assert_eq!(b.pod_cidr_v4().to_string(), "10.244.2.0/24");
    assert_eq!(b.pod_cidr_v6().to_string(), "fd00:10:244:2::/64");
    let server = tb.pod("node-b", "server")?;
    assert_eq!(server.ipv4().to_string(), "10.244.2.2");
    assert_eq!(server.ipv6().to_string(), "fd00:10:244:2::2");
    assert_eq!(server.netns().name(), format!("{run}-node-b-server"));

    // Forwarding is on in nodes only, whatever the host's own setting (a Docker or
    // Kubernetes host forwards, and new namespaces may inherit that), and DAD off everywhere:
    // the settings are per namespace.
    let pod = server.netns();
    for node in tb.nodes() {
        assert_eq!(node.netns().sysctl("net.ipv4.ip_forward")?, "1");
        assert_eq!(node.netns().sysctl("net.ipv6.conf.all.forwarding")?, "1");
    }
    for netns in std::iter::once(tb.fabric()).chain(tb.pods().map(|p| p.netns())) {
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            assert_eq!(netns.sysctl(key)?, "0", "{key} in {}", netns.name());
        }
        assert_eq!(netns.sysctl("net.ipv6.conf.all.disable_ipv6")?, "0");
    }
    let dad = format!("net.ipv6.conf.{}.accept_dad", server.interface());
    assert_eq!(pod.sysctl(&dad)?, "0");

    // The pod's addresses are usable at once: not tentative, so DAD really is off.
    let out =
        pod.output(Command::new("ip").args(["-o", "addr", "show", "dev", server.interface()]))?;
    let text = String::from_utf8(out.stdout)?;
    assert!(out.status.success());
    assert!(text.contains("10.244.2.2/32"), "{text}");
    assert!(text.contains("fd00:10:244:2::2/128"), "{text}");
    // The pod's own address, that is: the kernel's link-local one can show `tentative` for a
    // moment after the link comes up even without DAD (the flag is cleared by a deferred work
    // item, which a loaded machine runs late), and nothing here uses it.
    let own = text.lines().find(|l| l.contains("fd00:10:244:2::2/128"));
    assert!(!own.is_some_and(|l| l.contains("tentative")), "{text}");
    Ok(())
}

#[test]
fn dropping_the_testbed_kills_its_processes_and_removes_everything() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    let run = tb.run_prefix().to_owned();
    let mut sleepers = Vec::new();
    for netns in [
        tb.node("node-a")?.netns(),
        tb.pod("node-b", "client")?.netns(),
    ] {
        sleepers.push(netns.spawn(Command::new("sleep").arg("600"))?);
    }
    let before = common::leftovers_of(&run)?;
    let me = std::process::id();
    assert!(
        before.iter().all(|l| match l {
            Leftover::Netns { owner, .. } | Leftover::RunRecord { owner, .. } =>
                *owner == Owner::Live { pid: me },
            Leftover::RootLink { .. } => false,
        }),
        "{before:?}"
    );

    drop(tb);
    assert_eq!(common::leftovers_of(&run)?, []);
    for sleeper in &mut sleepers {
        let status = sleeper.try_wait()?.expect("the testbed killed it");
        assert_eq!(status.signal(), Some(9));
    }
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let mut run = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tb = common::two_nodes_two_pods().expect("testbed");
        run = Some(tb.run_prefix().to_owned());
        panic!("deliberate panic: the testbed must still be removed");
    }));
    assert!(result.is_err());
    let run = run.expect("the testbed was built");
    assert_eq!(common::leftovers_of(&run)?, []);
    Ok(())
}

#[test]
fn a_spawned_command_runs_in_its_namespace_and_dies_with_its_group() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    let pod = tb.pod("node-a", "client")?;
    // A shell that forks a grandchild: dropping the handle must kill both.
    let mut child = pod.netns().spawn(
        Command::new("sh")
            .args([
                "-c",
                "sleep 600 & echo $!; ip -o -4 addr show dev ambit-eth0; wait",
            ])
            .stdout(Stdio::piped()),
    )?;
    let mut lines = BufReader::new(child.take_stdout().expect("piped")).lines();
    let grandchild: u32 = lines.next().expect("a pid line")?.trim().parse()?;
    let addr_line = lines.next().expect("an address line")?;
    assert!(
        addr_line.contains(&format!("{}/32", pod.ipv4())),
        "{addr_line}"
    );

    drop(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::is_running(grandchild) {
        assert!(
            Instant::now() < deadline,
            "grandchild {grandchild} survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn bad_requests_are_refused_with_errors_that_name_the_culprit() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let mut tb = common::two_nodes_two_pods()?;
    let (v4, v6) = tb.node("node-a")?.pod_addrs(9)?;
    let other_node_v4 = tb.node("node-b")?.pod_addrs(9)?.0;
    let taken = tb.pod("node-a", "client")?.ipv4();

    let err = tb.add_pod("node-c", "x", v4, v6).unwrap_err();
    assert!(matches!(err, Error::UnknownNode { .. }), "{err}");
    assert!(err.to_string().contains("node-a, node-b"), "{err}");

    let err = tb.add_node("node-a").unwrap_err();
    assert!(matches!(err, Error::DuplicateNode { .. }), "{err}");

    let err = tb.add_pod("node-a", "client", v4, v6).unwrap_err();
    assert!(matches!(err, Error::DuplicatePod { .. }), "{err}");

    let err = tb.add_pod("node-a", "x", other_node_v4, v6).unwrap_err();
    assert!(matches!(err, Error::BadPodAddress { .. }), "{err}");
    assert!(err.to_string().contains("10.244.1.0/24"), "{err}");

    let err = tb.add_pod("node-a", "x", taken, v6).unwrap_err();
    assert!(matches!(err, Error::PodAddressInUse { .. }), "{err}");
    assert!(err.to_string().contains("node-a/client"), "{err}");

    let err = tb.add_pod("node-a", "Bad_Name", v4, v6).unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");

    // `<run>-node-a-b-c` could be node-a's pod b-c or node-a-b's pod c.
    tb.add_node("node-a-b")?;
    let (w4, w6) = tb.node("node-a-b")?.pod_addrs(1)?;
    tb.add_pod("node-a", "b-c", v4, v6)?;
    let err = tb.add_pod("node-a-b", "c", w4, w6).unwrap_err();
    assert!(matches!(err, Error::NameClash { .. }), "{err}");

    // A refused request leaves the testbed as it was and still usable.
    assert_eq!(tb.namespaces().len(), 1 + 3 + 5);
    let (x4, x6) = tb.node("node-a-b")?.pod_addrs(2)?;
    tb.add_pod("node-a-b", "d", x4, x6)?;
    let run = tb.run_prefix().to_owned();
    tb.destroy()?;
    assert_eq!(common::leftovers_of(&run)?, []);
    Ok(())
}
