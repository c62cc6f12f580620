//! The storage system end to end, hosted (tests/systems/storage.toml with
//! the host scenario storage.hvsim): a disk image made by Linux's FAT
//! tools (`mkfs.fat`, `mcopy`) as partition 1 of an MBR disk is given to
//! the simulated host as a file; the storage driver (vsc-storvsc) finds it
//! and serves the partition to the filesystem client (fs-client), which
//! lists it, reads HELLO.TXT, writes GUEST.TXT, flushes and reads it back
//! (storage.expect). After the run, Linux's tools check the image: the
//! filesystem is clean (`fsck.fat -n`) and `mtype` shows what the guest
//! wrote.
#![forbid(unsafe_code)]

use ipc_harness::{expect, workspace_root, Harness};
use linux_tools::{run, tool, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;

const HELLO: &str = "Hello from the host's FAT disk.\nSecond line.\n";
/// fs-client's file and text (components/fs-client).
const GUEST_FILE: &str = "GUEST.TXT";
const GUEST_TEXT: &str = "Written by the seL4 guest's fs-client through the block interface.\n";
/// The partition starts 1 MiB in, as fdisk puts it.
const PARTITION_START: usize = 2048;
const BLOCK: usize = 512;
/// The filesystem: 16 MiB (FAT16).
const FILESYSTEM_KIB: usize = 16384;

/// A disk file: an MBR with partition 1 (FAT16 LBA) at 1 MiB holding a
/// filesystem `mkfs.fat` made, with HELLO.TXT copied in by `mcopy`.
fn make_disk(scratch: &Scratch) -> PathBuf {
    let filesystem = scratch.path("fs.img");
    run(Command::new(tool("mkfs.fat"))
        .args(["-C", "-F", "16", "-n", "HOSTDISK"])
        .arg(&filesystem)
        .arg(FILESYSTEM_KIB.to_string()));
    let hello = scratch.path("hello.txt");
    std::fs::write(&hello, HELLO).unwrap();
    run(Command::new(tool("mcopy"))
        .arg("-i")
        .arg(&filesystem)
        .arg(&hello)
        .arg("::HELLO.TXT"));
    let filesystem = std::fs::read(&filesystem).unwrap();
    let mut disk = vec![0u8; PARTITION_START * BLOCK + filesystem.len()];
    let entry = &mut disk[446..462];
    entry[4] = 0x0E;
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((filesystem.len() / BLOCK) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[PARTITION_START * BLOCK..].copy_from_slice(&filesystem);
    let path = scratch.path("disk.img");
    std::fs::write(&path, disk).unwrap();
    path
}

/// Partition 1 of the disk file as a file of its own (for the tools).
fn partition_of(scratch: &Scratch, disk: &Path) -> PathBuf {
    let bytes = std::fs::read(disk).unwrap();
    let path = scratch.path("partition.img");
    std::fs::write(&path, &bytes[PARTITION_START * BLOCK..]).unwrap();
    path
}

/// Start the storage system on `disk` with the host scenario `scenario`
/// (`tests/systems/NAME.hvsim`).
fn start(disk: &Path, scenario: &str) -> Harness {
    start_system("tests/systems/storage.toml", disk, scenario)
}

/// Start the storage system of `description` on `disk` with the host
/// scenario `scenario`.
fn start_system(description: &str, disk: &Path, scenario: &str) -> Harness {
    let root = workspace_root();
    let script = root
        .join(format!("tests/systems/{scenario}.hvsim"))
        .display()
        .to_string();
    let disk_arg = disk.display().to_string();
    Harness::builder(description)
        .host_args(&["--events", "--script", &script, "--disk", &disk_arg])
        .start()
        .expect("the system starts")
}

/// After the run: the partition is a clean FAT filesystem with the file
/// the guest wrote and the file it only read unchanged.
fn check_with_linux_tools(scratch: &Scratch, disk: &Path) {
    let partition = partition_of(scratch, disk);
    let fsck = Command::new(tool("fsck.fat"))
        .arg("-n")
        .arg(&partition)
        .output()
        .expect("fsck.fat runs");
    assert!(
        fsck.status.success(),
        "fsck.fat -n found problems: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let written = run(Command::new(tool("mtype"))
        .arg("-i")
        .arg(&partition)
        .arg(format!("::{GUEST_FILE}")));
    assert_eq!(written, GUEST_TEXT);
    let hello = run(Command::new(tool("mtype"))
        .arg("-i")
        .arg(&partition)
        .arg("::HELLO.TXT"));
    assert_eq!(hello, HELLO, "the file the guest only read is unchanged");
}

/// Run `scenario` on a fresh disk, check its `.expect` file, the lines
/// in `also` (anywhere in the output, in any order) and the host's
/// account; returns the host's storage report.
fn run_scenario(scenario: &str, also: &[&str]) -> String {
    let scratch = Scratch::new(scenario);
    let disk = make_disk(&scratch);
    let expect_text =
        std::fs::read_to_string(workspace_root().join(format!("tests/systems/{scenario}.expect")))
            .unwrap();
    let expected = expect::parse(&expect_text, expect::Backend::Hosted);
    assert!(!expected.is_empty());
    let report = {
        let harness = start(&disk, scenario);
        for group in expect::by_source(&expected) {
            let mut from = 0;
            for line in group {
                from = harness.expect_output(line, from);
            }
        }
        for line in also {
            harness.expect_output(line, 0);
        }
        let report = harness.host("storage-report");
        println!("host: {report}");
        // The system stops when the harness goes; the client flushed
        // before it reported, so the file holds everything.
        report
    };
    check_with_linux_tools(&scratch, &disk);
    // Requests went over the sub-channels too (where there are any), the
    // FLUSH reached the host, and the guest broke none of the host's rules.
    let on_sub_channels = number_before(&report, " on sub-channels)");
    let requests = number_before(&report, " requests (");
    let offered = number_before(&report, " sub-channels offered");
    assert!(
        offered == 0 || (on_sub_channels > 0 && on_sub_channels < requests),
        "requests not spread over the channels: {report}"
    );
    assert!(number_before(&report, " flushes") > 0, "{report}");
    assert!(
        report.contains("rule violations 0, GPA outside memory 0"),
        "{report}"
    );
    report
}

#[test]
fn the_guest_mounts_reads_and_writes_a_fat_disk_linux_made_and_checks() {
    run_scenario("storage", &[]);
}

/// The same system on an IDE controller (storage-ide.hvsim).
#[test]
fn the_same_driver_serves_an_ide_controller() {
    let report = run_scenario("storage-ide", &[]);
    assert!(report.contains("0 sub-channels offered"), "{report}");
}

/// Every fault of storage-faults.hvsim fired and the driver handled each
/// as its own (refused, retried, continued), and the run still ended as on
/// a good host.
#[test]
fn a_misbehaving_host_is_survived() {
    let report = run_scenario(
        "storage-faults",
        &[
            "[storage] refused a malformed completion",
            "[storage] refused a transfer longer than the request",
            "StaleCompletion",
            "[storage] UNIT ATTENTION: sent again",
            "[storage] the rest of a short transfer: sent again",
            "[storage] NOT READY: sent again",
        ],
    );
    assert!(
        report.contains("faults: 1 delayed, 0 withheld, 3 corrupted, 2 failed, 1 short"),
        "not every fault fired: {report}"
    );
}

/// The number just before `marker` in `text` (`12 requests (` -> 12).
fn number_before(text: &str, marker: &str) -> u64 {
    let end = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text}"));
    let start = text[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    text[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {marker:?} in {text}"))
}

/// The driver killed (SIGKILL) twice while the client works: once when
/// the client has listed the directory (it reads on), once when it has
/// written its blocks and asked for the FLUSH. Each time `vmbus` restarts
/// the driver, it initializes again and publishes the grant under a new
/// generation (the kills are asynchronous to the client: on a busy machine
/// they land later in its run), the client reissues what it had outstanding, and the run
/// ends as without the kills, with a clean filesystem holding the write.
#[test]
fn the_driver_killed_while_serving_comes_back_and_nothing_is_lost() {
    let scratch = Scratch::new("kill");
    let disk = make_disk(&scratch);
    {
        let harness = start(&disk, "storage");
        let mut from = harness.expect_output("[files] fs-client: root directory", 0);
        harness.kill("storage");
        harness.expect_restarts("storage", 1);
        from = harness.expect_output("changed blocks written, flushing", from);
        harness.kill("storage");
        harness.expect_restarts("storage", 2);
        // Served again after the second kill (generation 3; or 2 when, on a
        // busy machine, the second kill hit the first restart before it
        // served).
        from = harness.expect_output("[storage] serving files (generation", from);
        harness.expect_output("[files] fs-client: done", from);
    }
    check_with_linux_tools(&scratch, &disk);
}

/// The controller rescinded with a client request in flight (the host
/// never completes it): the driver answers the client (NOT_READY), nothing
/// waits for good, and when the host offers the controller again the
/// driver initializes and serves the grant under a new generation. The
/// disk is still a clean filesystem.
#[test]
fn a_rescind_with_io_in_flight_is_answered_and_the_disk_comes_back() {
    let scratch = Scratch::new("rescind");
    let disk = make_disk(&scratch);
    let expect_text =
        std::fs::read_to_string(workspace_root().join("tests/systems/storage-rescind.expect"))
            .unwrap();
    let expected = expect::parse(&expect_text, expect::Backend::Hosted);
    {
        let harness = start(&disk, "storage-rescind");
        for group in expect::by_source(&expected) {
            let mut from = 0;
            for line in group {
                from = harness.expect_output(line, from);
            }
        }
        // The client's first request reached the host and is held there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let report = harness.host("storage-report");
            if report.contains("1 withheld") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing withheld: {report}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let answer = harness.host("storage-rescind");
        assert!(answer.starts_with("true"), "{answer}");
        let from = harness.expect_output("[storage] primary channel lost", 0);
        harness.expect_output("[storage] request ", from);
        let answer = harness.host("add-device storage 1");
        println!("add-device: {answer}");
        harness.expect_output("[storage] serving files (generation 2)", from);
    }
    let partition = partition_of(&scratch, &disk);
    let fsck = Command::new(tool("fsck.fat"))
        .arg("-n")
        .arg(&partition)
        .output()
        .expect("fsck.fat runs");
    assert!(
        fsck.status.success(),
        "fsck.fat -n found problems: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Points in the client's run at which the kill loop kills the driver.
const KILL_POINTS: &[&str] = &[
    "[files] fs-client: block device",
    "[files] fs-client: root directory",
    "[files] fs-client: HELLO.TXT:",
    "changed blocks written, flushing",
];

/// The kill test in a loop: each cycle a fresh disk and system, the
/// driver killed at one of [`KILL_POINTS`] in turn (the client reading,
/// writing, flushing), restarted by `vmbus`; every cycle must end with the
/// client done and a clean filesystem holding the write. Prints how many
/// cycles ran.
#[test]
fn kill_loop() {
    const CYCLES: usize = 12;
    let started = std::time::Instant::now();
    for cycle in 0..CYCLES {
        let scratch = Scratch::new(&format!("kill-loop-{cycle}"));
        let disk = make_disk(&scratch);
        {
            let harness = start(&disk, "storage");
            let point = KILL_POINTS[cycle % KILL_POINTS.len()];
            let from = harness.expect_output(point, 0);
            harness.kill("storage");
            harness.expect_restarts("storage", 1);
            harness.expect_output("[files] fs-client: done", from);
        }
        check_with_linux_tools(&scratch, &disk);
    }
    println!(
        "kill loop: {CYCLES} cycles, each killed, restarted and checked, in {:?}",
        started.elapsed()
    );
}

/// The host never completes the client's first request, and nothing else
/// happens in the system (one device, no time samples, no heartbeats): no
/// host signal, bus event or client signal will wake the driver again.
/// Its request timeout (1 s in storage-timeout.toml) must still run out:
/// synic's synthetic timer wakes it, it resets the bus, and the client is
/// answered IO_ERROR and stops with a clear error instead of waiting for
/// good (storage-timeout.expect).
#[test]
fn a_request_the_host_never_completes_times_out_on_synics_timer() {
    let scratch = Scratch::new("timeout");
    let disk = make_disk(&scratch);
    let expect_text =
        std::fs::read_to_string(workspace_root().join("tests/systems/storage-timeout.expect"))
            .unwrap();
    let expected = expect::parse(&expect_text, expect::Backend::Hosted);
    let harness = start_system(
        "tests/systems/storage-timeout.toml",
        &disk,
        "storage-timeout",
    );
    let served = harness.expect_output("[files] fs-client: block device", 0);
    let withheld_at = std::time::Instant::now();
    for group in expect::by_source(&expected) {
        let mut from = 0;
        for line in group {
            from = harness.expect_output(line, from);
        }
    }
    let waited = withheld_at.elapsed();
    // Not before the timeout (the host completed nothing): the timer,
    // not some early wakeup, ended the wait.
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "answered after {waited:?}, before the 1 s timeout"
    );
    println!("the client was answered {waited:?} after it was served");
    harness.expect_output("of files: IoError", served);
    let report = harness.host("storage-report");
    println!("host: {report}");
    assert!(report.contains("1 withheld"), "{report}");
    assert!(
        number_before(&report, " bus resets") >= 1,
        "no bus reset: {report}"
    );
}

/// As above, but synic is killed (SIGKILL) while the request is held by
/// the host and the driver's wakeup is set: the restarted synic has lost
/// every deadline, wakes each driver once, and the driver, finding no
/// channel pending, asks again. The timeout still happens and the client
/// is answered.
#[test]
fn a_restarted_synic_still_times_the_request_out() {
    let scratch = Scratch::new("timeout-synic");
    let disk = make_disk(&scratch);
    let harness = start_system(
        "tests/systems/storage-timeout.toml",
        &disk,
        "storage-timeout",
    );
    let served = harness.expect_output("[files] fs-client: block device", 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let report = harness.host("storage-report");
        if report.contains("1 withheld") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing withheld: {report}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The driver asks for its wakeup right after it sent the request.
    std::thread::sleep(std::time::Duration::from_millis(100));
    harness.kill("synic");
    harness.expect_restarts("synic", 1);
    let from = harness.expect_output("[synic] synic re-armed after a restart", served);
    harness.expect_output(
        "[storage] 1 requests not completed in 1000 ms: resetting the bus",
        served,
    );
    harness.expect_output("[storage] request 1 of files: IoError", served);
    harness.expect_output("[files] fs-client: failed:", from);
}
