//! The hosted system against a hypervisor host it is told about: a host
//! program named explicitly (here a copy of the `hvsim` binary under
//! another name) or a host already listening on a socket; and what happens
//! when that host goes away while the guest runs: the system powers off
//! with `HOST_LOST_CODE` and a line that says why, within a bound.
#![forbid(unsafe_code)]

use hosted_runtime::simulated_host::HOST_LOST_CODE;
use ipc_harness::{built_binary, Harness, WAIT};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SYSTEM: &str = "system.toml";

/// How long the guest may take to power off once its host is gone.
const LOSS_BOUND: Duration = Duration::from_secs(5);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hosted-host-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Wait for the power-off that losing the host causes; returns the line
/// that says why.
fn expect_power_off_for_lost_host(harness: &Harness, lost_at: Instant) -> String {
    let code = harness.system().wait_for_power_off(WAIT);
    let took = lost_at.elapsed();
    if code != Some(HOST_LOST_CODE) {
        harness.fail(&format!(
            "powered off with {code:?}, not {HOST_LOST_CODE}, after losing the host"
        ));
    }
    eprintln!("powered off {took:?} after the host went away");
    assert!(
        took < LOSS_BOUND,
        "powering off took {took:?} after the host went away"
    );
    let (_, line) = harness.expect_line("[launcher] the hypervisor host (hvsim) is gone: ", 0);
    assert!(
        line.ends_with(&format!("powering off with code {HOST_LOST_CODE}")),
        "{line}"
    );
    line
}

#[test]
fn a_host_program_named_explicitly_serves_the_system_and_its_death_powers_off() {
    let dir = scratch("program");
    // Another name for the host program, so that running it proves the
    // option was used and not the description's package.
    let program = dir.join("outside-host");
    std::fs::copy(built_binary(SYSTEM, "hvsim").unwrap(), &program).unwrap();
    let harness = Harness::builder(SYSTEM)
        .host_program(&program)
        .host_args(&["--events"])
        .start()
        .expect("the VMBus system starts with the named host");
    harness.expect_output("[vmbus] all 4 offered devices open", 0);
    let pid = harness
        .system()
        .host_pid()
        .expect("the launcher started the host");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        program,
        "the host running is the program named"
    );
    // It is the operator's host too.
    assert!(harness.host("stats").starts_with("version Some("));

    // Kill the host as an outside event would.
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let line = expect_power_off_for_lost_host(&harness, Instant::now());
    assert!(line.contains("killed by signal 9"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_host_already_listening_is_reached_by_its_socket_and_its_exit_powers_off() {
    let dir = scratch("socket");
    let socket = dir.join("host.sock");
    let mut host = Command::new(built_binary(SYSTEM, "hvsim").unwrap())
        .arg("--socket")
        .arg(&socket)
        .arg("--events")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The launcher waits for the socket to appear (within its bound).
    let harness = Harness::builder(SYSTEM)
        .host_socket(&socket)
        .start()
        .expect("the VMBus system reaches the listening host");
    harness.expect_output("[vmbus] all 4 offered devices open", 0);
    assert_eq!(harness.system().host_pid(), None);
    assert!(harness
        .system()
        .host_command("stats", Duration::from_secs(1))
        .is_err());

    host.kill().unwrap();
    let lost_at = Instant::now();
    host.wait().unwrap();
    let line = expect_power_off_for_lost_host(&harness, lost_at);
    assert!(line.contains("the host closed the connection"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_host_program_that_never_listens_fails_the_launch_with_the_reason() {
    let error = match Harness::builder(SYSTEM).host_program("/bin/true").start() {
        Ok(_) => panic!("the system started without a host"),
        Err(error) => error,
    };
    assert!(
        error.contains("the host exited before listening"),
        "{error}"
    );
}
