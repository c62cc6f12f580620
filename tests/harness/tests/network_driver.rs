//! The NIC driver (`network`, components/vsc-netvsc) as a process among
//! the others, hosted (tests/systems/network.toml with the host scenario
//! network.hvsim, the NIC's in-memory backend): it starts with the host,
//! opens its sub-channels and serves `web`; the host pulls the cable and
//! plugs it in; the driver killed (SIGKILL) is restarted by `vmbus`, starts over with the
//! host (new GPADLs, sub-channels) and serves `web` under a new
//! generation; the host saw no rule broken; the NIC rescinded, the client
//! sees the link down, and offered again it is served once more. docs/network.md.

use ipc_harness::{workspace_root, Harness};

fn start() -> Harness {
    let script = workspace_root()
        .join("tests/systems/network.hvsim")
        .display()
        .to_string();
    Harness::builder("tests/systems/network.toml")
        .host_args(&["--events", "--script", &script])
        .start()
        .expect("the system starts")
}

/// The number after `label` in the host's report.
fn count_after(report: &str, label: &str) -> u64 {
    let at = report
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {report}"));
    report[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {report}"))
}

#[test]
fn the_driver_serves_survives_the_host_and_restarts() {
    let harness = start();
    let mut at = harness.expect_output("[network] NVSP 6.1", 0);
    at = harness.expect_output("[network] the host offers 2 sub-channels", at);
    harness.expect_output("[network] sub-channel 2 open", at);
    at = harness.expect_output("[network] NIC 00:15:5d:00:00:01, MTU 1500, link up", at);
    at = harness.expect_output("[network] serving web (generation 1)", at);
    harness.expect_output("[web] web: link up", 0);

    harness.host("net-link down");
    at = harness.expect_output("[network] link down", at);
    harness.host("net-link up");
    at = harness.expect_output("[network] link up", at);

    let report = harness.host("net-report");
    println!("host before the kill: {report}");

    harness.kill("network");
    harness.expect_restarts("network", 1);
    at = harness.expect_output("[network] NVSP 6.1", at);
    harness.expect_output("[network] sub-channel 2 open", at);
    harness.expect_output("[network] serving web (generation 2)", at);
    let report = harness.host("net-report");
    println!("host after the restart: {report}");
    assert_eq!(count_after(&report, "rule violations"), 0, "{report}");
    assert!(report.contains("link up"), "{report}");

    // The NIC rescinded: the driver lets go and the client sees the link
    // down at once; offered again (once vmbus has released it): served
    // under a new generation.
    let web_at = harness.expect_output("[web] web: the NIC driver restarted (generation 2)", 0);
    harness.host("net-rescind");
    at = harness.expect_output("[network] primary channel lost", at);
    let web_at = harness.expect_output("[web] web: link down", web_at);
    let mut offered = false;
    for _ in 0..100 {
        if harness.host("net-offer-again").starts_with("relid") {
            offered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(offered, "the host never had the NIC back to offer");
    harness.expect_output("[network] serving web (generation 3)", at);
    harness.expect_output("[web] web: link up", web_at);
}
