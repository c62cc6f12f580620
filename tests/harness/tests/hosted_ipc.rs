//! Component-level IPC tests of the hosted runtime itself, on
//! `tests/systems/hosted_ipc.toml`: the test plays `ht_driver` (and in one
//! test `ht_super`), `ht_echo` and `ht_super` are real processes.
#![forbid(unsafe_code)]

use component_api::{CallError, Fault};
use hostedtest_echo::{commands, STARTS};
use ipc_harness::{Double, Harness, Status, WAIT};

const SYSTEM: &str = "tests/systems/hosted_ipc.toml";
const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;

fn start() -> Harness {
    Harness::builder(SYSTEM)
        .double("ht_driver")
        .start()
        .expect("the test system starts")
}

/// The test plays the supervisor as well as the driver; the echo has
/// answered its first call. Returns the harness, driver and supervisor.
fn start_supervised_by_the_test() -> (Harness, Double, Double) {
    let harness = Harness::builder(SYSTEM)
        .double("ht_driver")
        .double("ht_super")
        .start()
        .expect("starts");
    let mut driver = harness.double("ht_driver");
    let supervisor = harness.double("ht_super");
    assert_eq!(echo_state(&mut driver), (1, 1));
    (harness, driver, supervisor)
}

/// Two little-endian u32 counters, as the echo and the supervisor answer.
fn two_counters(reply: &[u8]) -> (u32, u32) {
    assert_eq!(reply.len(), 8, "two counters");
    (
        u32::from_le_bytes(reply[..4].try_into().unwrap()),
        u32::from_le_bytes(reply[4..].try_into().unwrap()),
    )
}

/// (calls served by this incarnation, starts recorded in shared memory).
fn echo_state(driver: &mut Double) -> (u32, u32) {
    two_counters(&driver.call("echo", commands::STATE).expect("state call"))
}

fn supervisor_counts(driver: &mut Double) -> (u32, u32) {
    two_counters(&driver.call("super", b"counts").expect("supervisor call"))
}

/// Command the echo to fault: the call fails as a fault, and the launcher
/// reports the echo's first fault, which is returned.
fn commanded_fault(harness: &Harness, driver: &mut Double, command: &[u8]) -> Fault {
    assert_eq!(driver.call("echo", command), Err(CallError::ServerFaulted));
    harness.expect_fault("ht_echo", 1)
}

#[test]
fn notifications_and_calls_round_trip_between_processes() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    harness.expect_output("[ht_echo] echo started (start 1)", 0);
    for round in 0..100 {
        driver.notify("ping");
        assert!(
            driver.wait_notified("ping", WAIT),
            "ping {round} not answered"
        );
    }
    assert_eq!(driver.call("echo", b"hello").unwrap(), b"hello");
    assert_eq!(driver.call("echo", b"").unwrap(), b"");
    let big = vec![0xa5u8; component_api::MAX_MESSAGE];
    assert_eq!(driver.call("echo", &big).unwrap(), big);
    let too_big = vec![0u8; component_api::MAX_MESSAGE + 1];
    assert_eq!(
        driver.call("echo", &too_big),
        Err(CallError::MessageTooLarge)
    );
    assert_eq!(
        driver.call("ping", b"x"),
        Err(CallError::NotACallChannel),
        "a notify channel is not a call channel"
    );
    assert_eq!(supervisor_counts(&mut driver), (0, 0));
    // No notification arrives unasked.
    assert!(!driver.wait_notified("ping", std::time::Duration::from_millis(50)));
}

#[test]
fn killing_a_component_mid_call_is_reported_and_it_comes_back_while_others_serve() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    harness.expect_output("echo started (start 1)", 0);
    assert_eq!(echo_state(&mut driver), (1, 1));
    let victim = harness.system().pid("ht_echo").expect("echo runs");

    // Kill the server while our call is in flight: the call must fail
    // with ServerFaulted, not hang.
    let killer = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            // The echo prints this once it is inside our call.
            harness.expect_output("[ht_echo] spinning", 0);
            harness.kill("ht_echo");
        });
        let result = driver.call("echo", commands::SPIN);
        assert_eq!(result, Err(CallError::ServerFaulted));
        killer.join()
    });
    assert!(killer.is_ok());

    assert_eq!(
        harness.expect_fault("ht_echo", 1),
        Fault::Crashed { signal: SIGKILL }
    );
    let line = harness.expect_output("[ht_super] ht_echo faulted: Crashed { signal: 9 }", 0);
    harness.expect_output("[ht_super] restarted ht_echo", line);
    harness.expect_restarts("ht_echo", 1);
    harness.expect_output("echo started (start 2)", 0);

    // The supervisor kept serving; the echo is back with fresh private
    // state and the shared memory it had.
    assert_eq!(supervisor_counts(&mut driver), (1, 1));
    assert_eq!(echo_state(&mut driver), (1, 2));
    let mut starts = [0u8; 4];
    driver.region("shared").read(STARTS, &mut starts).unwrap();
    assert_eq!(u32::from_le_bytes(starts), 2);
    assert_ne!(harness.system().pid("ht_echo"), Some(victim));
    driver.notify("ping");
    assert!(driver.wait_notified("ping", WAIT));
}

#[test]
fn a_panic_is_reported_as_a_panic() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    assert_eq!(
        commanded_fault(&harness, &mut driver, commands::PANIC),
        Fault::Panic
    );
    harness.expect_output("[ht_echo] panic: commanded panic", 0);
    harness.expect_output("[ht_super] restarted ht_echo", 0);
    assert_eq!(driver.call("echo", b"again").unwrap(), b"again");
}

#[test]
fn the_os_enforces_a_read_only_map() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    // The driver's map of the same region is writable.
    driver
        .region("readonly")
        .write(0, b"from the driver")
        .unwrap();
    harness.expect_output("echo started", 0);
    let pid = harness.system().pid("ht_echo").expect("echo runs");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let readonly_maps: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:ht_readonly"))
        .collect();
    assert_eq!(readonly_maps.len(), 1, "{maps}");
    assert!(
        readonly_maps[0].split_whitespace().nth(1) == Some("r--s"),
        "{}",
        readonly_maps[0]
    );

    match commanded_fault(&harness, &mut driver, commands::WRITE_READ_ONLY) {
        Fault::Memory { write, address, ip } => {
            assert!(write, "reported as a write");
            assert_ne!(address, 0);
            assert_ne!(ip, 0);
        }
        other => harness.fail(&format!("expected a memory fault, got {other:?}")),
    }
    harness.expect_output("ht_echo faulted: Memory", 0);
    assert!(
        !harness
            .system()
            .output()
            .iter()
            .any(|l| l.contains("did NOT fault")),
        "the write went through"
    );
    let mut back = [0u8; 15];
    driver.region("readonly").read(0, &mut back).unwrap();
    assert_eq!(&back, b"from the driver");
}

#[test]
fn an_illegal_instruction_is_reported_with_its_address() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    match commanded_fault(&harness, &mut driver, commands::ILLEGAL_INSTRUCTION) {
        Fault::Instruction { ip } => assert_ne!(ip, 0),
        other => harness.fail(&format!("expected an instruction fault, got {other:?}")),
    }
}

#[test]
fn a_double_map_aliases_in_every_process() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    let ring = driver.region("ring");
    assert!(ring.double_mapped());
    assert_eq!(ring.span(), 2 * ring.len());
    // The echo writes across the end of its mapping...
    driver.call("echo", b"ring-write:ABCD").unwrap();
    // ...and we see the bytes at the end and, wrapped, at the start.
    let mut end = [0u8; 2];
    let mut start = [0u8; 2];
    ring.read(ring.len() - 2, &mut end).unwrap();
    ring.read(0, &mut start).unwrap();
    assert_eq!((&end, &start), (b"AB", b"CD"));
    // Our own second half aliases our first.
    ring.write(ring.len() + 100, b"alias").unwrap();
    let mut back = [0u8; 5];
    ring.read(100, &mut back).unwrap();
    assert_eq!(&back, b"alias");
}

#[test]
fn a_region_granted_by_address_only_is_known_but_not_mapped() {
    let harness = start();
    let driver = harness.double("ht_driver");
    let address = driver
        .region_address("visible")
        .expect("a host-visible region granted by address has one");
    assert_eq!(address.len, 8192);
    assert_eq!(address.guest_physical % 4096, 0);
    // A mapped region the host cannot see has none.
    assert_eq!(driver.region_address("shared"), None);
    // Nothing of it is mapped into us: asking for the mapping is a bug.
    let mapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        driver.region("visible");
    }));
    assert!(mapped.is_err(), "an address-only grant must not map");
}

#[test]
fn a_supervisor_played_by_the_test_sees_faults_and_restarts() {
    let (harness, mut driver, mut supervisor) = start_supervised_by_the_test();

    harness.kill("ht_echo");
    let (child, fault) = supervisor.wait_fault(WAIT).expect("fault report");
    assert_eq!(child, supervisor.child("ht_echo"));
    assert_eq!(fault, Fault::Crashed { signal: SIGKILL });
    assert_eq!(harness.system().status("ht_echo"), Some(Status::Faulted));
    // Nobody restarted it: calls fail fast instead of hanging.
    assert_eq!(driver.call("echo", b"x"), Err(CallError::ServerFaulted));

    supervisor.restart("ht_echo").expect("restart");
    assert_eq!(harness.system().status("ht_echo"), Some(Status::Running));
    assert_eq!(echo_state(&mut driver), (1, 2));

    // A crash by signal from the kernel, reported the same way.
    harness.system().kill("ht_echo", SIGSEGV).unwrap();
    let (_, fault) = supervisor.wait_fault(WAIT).expect("second fault report");
    assert_eq!(fault, Fault::Crashed { signal: SIGSEGV });
}

#[test]
fn a_subset_runs_and_an_omitted_server_can_be_started_later() {
    let harness = Harness::builder(SYSTEM)
        .double("ht_driver")
        .omit("ht_echo")
        .start()
        .expect("starts");
    let mut driver = harness.double("ht_driver");
    assert_eq!(driver.call("echo", b"x"), Err(CallError::ServerFaulted));
    assert_eq!(supervisor_counts(&mut driver), (0, 0));
    harness.restart("ht_echo");
    harness.expect_output("echo started", 0);
    assert_eq!(driver.call("echo", b"now").unwrap(), b"now");
}

#[test]
fn an_irq_raised_by_the_test_reaches_the_component() {
    let harness = start();
    let mut driver = harness.double("ht_driver");
    harness.expect_output("echo started", 0);
    harness.raise_irq("ht_echo", "device");
    assert!(
        driver.wait_notified("ping", WAIT),
        "the IRQ was not delivered"
    );
    assert!(!driver.wait_notified("ping", std::time::Duration::from_millis(50)));
}

#[test]
fn a_stopped_child_stays_down_without_a_fault_until_restarted() {
    let (harness, mut driver, mut supervisor) = start_supervised_by_the_test();
    let child = supervisor.child("ht_echo");
    component_api::Env::stop(supervisor.env(), child).expect("stop");
    assert_eq!(harness.system().status("ht_echo"), Some(Status::Stopped));
    assert_eq!(driver.call("echo", b"x"), Err(CallError::ServerFaulted));
    assert!(
        harness.system().faults().is_empty(),
        "a stop is not a fault"
    );
    assert_eq!(
        component_api::Env::stop(supervisor.env(), component_api::Child(7)),
        Err(component_api::SupervisorError::NotMyChild)
    );
    supervisor.restart("ht_echo").expect("restart");
    assert_eq!(echo_state(&mut driver), (1, 2));
}
