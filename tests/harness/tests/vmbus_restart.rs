//! The bus manager and synic are restarted too, hosted: each is killed
//! with SIGKILL while heartbeats and time samples flow, the launcher
//! restarts it (`supervisor = "@platform"` in `system.toml`), and every
//! driver serves again. Each test prints how long recovery took.
//!
//! - synic: the restarted synic re-arms the synic without zeroing its
//!   pages (what the host posted meanwhile is in the slot and the event
//!   flags), tells vmbus through the message queue, and vmbus restores its
//!   relid table; no driver or channel is restarted.
//! - vmbus: the restarted vmbus restarts every driver, unloads the old
//!   session (the host releases every GPADL of it), contacts the host,
//!   and the drivers open again; the host holds exactly one GPADL per open
//!   channel afterwards and rejected nothing.
#![forbid(unsafe_code)]

mod vmbus_common;

use std::time::Duration;
use vmbus_common::*;

/// The host's answer to `gpadls`: how many GPADLs it holds.
fn host_gpadls(harness: &ipc_harness::Harness) -> usize {
    let answer = harness.host("gpadls");
    answer
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| harness.fail(&format!("gpadls answered {answer:?}")))
}

/// Heartbeats and time samples are answered after line `from`, and the
/// host hears the guest on every channel (KVP: a SET answered).
fn every_driver_serves(harness: &ipc_harness::Harness, from: usize, key: &str) {
    wait_lines(harness, "hvsim event: heartbeat sequence ", 2, from);
    wait_lines(harness, "hvsim event: time sample ", 2, from);
    assert_eq!(host_kvp_set(harness, 0, key, "1"), 0);
    assert_eq!(host_kvp_get(harness, 0, key), (0, "1".to_string()));
    assert_eq!(harness.host("rejections"), "[]");
}

#[test]
fn a_killed_synic_is_restarted_and_every_channel_serves_on() {
    let harness = start_with_periods();
    let from = harness.system().output().len();
    harness.kill("synic");
    harness.expect_fault("synic", 1);
    harness.expect_restarts("synic", 1);
    let (killed, _) = line_time(&harness, "[launcher] synic faulted", from);
    let (rearmed, _) = line_time(&harness, "[synic] synic re-armed after a restart", from);
    let (restored, after) = line_time(
        &harness,
        "[vmbus] synic restarted: relid table restored (4 bound, 0 opening)",
        from,
    );
    let (heartbeat, _) = line_time(&harness, "hvsim event: heartbeat sequence ", after);
    every_driver_serves(&harness, after, "AfterSynicRestart");
    println!(
        "synic killed -> re-armed {:?}, relid table restored {:?}, next heartbeat answered {:?}",
        rearmed.saturating_sub(killed),
        restored.saturating_sub(killed),
        heartbeat.saturating_sub(killed)
    );
    // Nothing else was restarted; no channel was reopened.
    for name in DRIVERS.iter().chain(&["vmbus", "client", "console"]) {
        assert_eq!(harness.system().restarts(name), 0, "{name} restarted");
    }
    assert_eq!(host_gpadls(&harness), 4);
    // The host's view: no heartbeat interval much beyond its period.
    let beats: Vec<Duration> = host_events(&harness, "heartbeat sequence ")
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let gap = longest_gap(&beats);
    println!("longest interval between answered heartbeats: {gap:?}");
    assert!(gap < PERIOD * 3, "heartbeats stalled for {gap:?}");
}

#[test]
fn a_killed_vmbus_is_restarted_unloads_its_old_session_and_every_driver_serves_again() {
    let harness = start_with_periods();
    assert_eq!(host_gpadls(&harness), 4);
    assert_eq!(host_kvp_set(&harness, 0, "BeforeVmbusKill", "1"), 0);
    let from = harness.system().output().len();
    harness.kill("vmbus");
    harness.expect_fault("vmbus", 1);
    harness.expect_restarts("vmbus", 1);
    let (killed, _) = line_time(&harness, "[launcher] vmbus faulted", from);
    let (unloaded, _) = line_time(&harness, "[vmbus] previous session ended ", from);
    let (all_open, after) = line_time(&harness, "[vmbus] all 4 offered devices open", from);
    let mut negotiated = Duration::ZERO;
    for kind in ["Heartbeat", "Shutdown", "TimeSync", "Kvp"] {
        let (at, _) = line_time(
            &harness,
            &format!("hvsim event: negotiated {kind} relid "),
            from,
        );
        negotiated = negotiated.max(at);
    }
    // Every driver was restarted by the new vmbus (each zeroed its rings
    // before it asked to open).
    for driver in DRIVERS {
        harness.expect_restarts(driver, 1);
    }
    every_driver_serves(&harness, after, "AfterVmbusRestart");
    // KVP's pools outlived both restarts.
    assert_eq!(
        host_kvp_get(&harness, 0, "BeforeVmbusKill"),
        (0, "1".to_string())
    );
    println!(
        "vmbus killed -> old session unloaded {:?}, all 4 open {:?}, every IC negotiated with the host {:?}",
        unloaded.saturating_sub(killed),
        all_open.saturating_sub(killed),
        negotiated.saturating_sub(killed)
    );
    // No GPADL leaked: one per open channel, as before.
    assert_eq!(host_gpadls(&harness), 4);
    assert_eq!(harness.system().restarts("synic"), 0);
}

#[test]
fn a_driver_that_faults_while_vmbus_is_down_serves_again_once_vmbus_is_back() {
    let harness = start_with_periods();
    let from = harness.system().output().len();
    // Kill vmbus and, before the launcher has it back, kvp: nobody hears
    // of kvp's fault then. The restarted vmbus restarts every driver.
    harness.kill("vmbus");
    harness.kill("kvp");
    harness.expect_fault("kvp", 1);
    harness.expect_restarts("vmbus", 1);
    let (_, after) = line_time(&harness, "[vmbus] all 4 offered devices open", from);
    wait_host_negotiated(&harness, "Kvp", from);
    every_driver_serves(&harness, after, "AfterBoth");
    assert_eq!(host_gpadls(&harness), 4);
}
