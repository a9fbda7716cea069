//! The node agent's way to a running pod's network namespace: from the pod's IP alone, through
//! the namespace the runtime pinned or, when none is pinned, a process inside it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ambit_cni::netns::{PINNED_DIR, find_by_ip};
use ambit_e2e::can_run;
use ambit_testbed::Testbed;

#[test]
fn a_running_pods_namespace_is_found_from_its_ip() -> anyhow::Result<()> {
    if !can_run("a_running_pods_namespace_is_found_from_its_ip") {
        return Ok(());
    }
    Testbed::preflight()?;
    let mut tb = Testbed::new()?;
    let (v4, v6) = tb.add_node("node-a")?.pod_addrs(1)?;
    let (w4, w6) = tb.node("node-a")?.pod_addrs(2)?;
    let pod = tb.add_pod("node-a", "client", v4, v6)?.netns().clone();
    let other = tb.add_pod("node-a", "server", w4, w6)?.netns().clone();
    let pinned = Path::new(PINNED_DIR);

    for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
        assert_eq!(find_by_ip(ip, pinned)?.as_deref(), Some(pod.path()), "{ip}");
    }
    assert_eq!(
        find_by_ip(w4.into(), pinned)?.as_deref(),
        Some(other.path())
    );
    // An address no namespace holds (the node's routes point at pod addresses, but only the
    // pod holds one).
    let unused: IpAddr = "10.244.1.250".parse()?;
    assert_eq!(find_by_ip(unused, pinned)?, None);

    // Not pinned where we look (a directory holding no namespace, only a stray file and a
    // directory, which are passed over): found through a process inside it.
    let sleeper = pod.spawn(Command::new("sleep").arg("30"))?;
    let elsewhere = std::env::temp_dir().join(format!("ambit-e2e-no-pins-{}", std::process::id()));
    std::fs::create_dir_all(elsewhere.join("a-directory"))?;
    std::fs::write(elsewhere.join("a-file"), b"not a namespace")?;
    let found = find_by_ip(v4.into(), &elsewhere)?;
    std::fs::remove_dir_all(&elsewhere)?;
    assert_eq!(
        found,
        Some(PathBuf::from(format!("/proc/{}/ns/net", sleeper.id())))
    );
    sleeper.kill()?;
    tb.destroy()?;
    Ok(())
}
