//! The block interface between processes, without VMBus: the test plays
//! the block server `ramdisk` of `tests/systems/blk-ramdisk.toml` over a
//! FAT disk image made by `mkfs.fat` and `mcopy`, the real `fs-client`
//! process (`files`) mounts it through its grant (partition 1), lists it,
//! reads HELLO.TXT and writes GUEST.TXT; `fsck.fat -n` and `mtype` check
//! what it wrote. The queues, the info page and the data region are real
//! shared memory between the two processes, the signals real
//! notifications.
#![forbid(unsafe_code)]

use block_queue::server::{BlockServer, Grant, ServerRequest};
use block_queue::Status;
use ipc_harness::Harness;
use linux_tools::{run, tool};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BLOCK: usize = 512;
const PARTITION_START: usize = 2048;
const HELLO: &str = "Hello over the hosted block interface.\n";
const GUEST_TEXT: &str = "Written by the seL4 guest's fs-client through the block interface.\n";

/// An 8 MiB FAT16 partition with HELLO.TXT, behind an MBR.
fn make_disk(dir: &Path) -> Vec<u8> {
    let image = dir.join("part.img");
    run(Command::new(tool("mkfs.fat"))
        .args(["-C", "-F", "16", "-s", "2", "-n", "HOSTED"])
        .arg(&image)
        .arg("8192"));
    let hello = dir.join("hello.txt");
    std::fs::write(&hello, HELLO).unwrap();
    run(Command::new(tool("mcopy"))
        .arg("-i")
        .arg(&image)
        .arg(&hello)
        .arg("::HELLO.TXT"));
    let filesystem = std::fs::read(&image).unwrap();
    let mut disk = vec![0u8; PARTITION_START * BLOCK];
    disk[446 + 4] = 0x0E;
    disk[446 + 8..446 + 12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    disk[446 + 12..446 + 16].copy_from_slice(&((filesystem.len() / BLOCK) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk.extend_from_slice(&filesystem);
    disk
}

#[test]
fn fs_client_mounts_reads_and_writes_a_fat_disk_served_by_another_process() {
    let dir = std::env::temp_dir().join(format!("hosted-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut disk = make_disk(&dir);
    let blocks = (disk.len() / BLOCK) as u64;

    let harness = Harness::builder("tests/systems/blk-ramdisk.toml")
        .double("ramdisk")
        .start()
        .expect("starts");
    let mut ramdisk = harness.double("ramdisk");
    let data = ramdisk.region("files_blk0_data");
    let mut server = BlockServer::new(
        ramdisk.region("files_blk0_requests"),
        ramdisk.region("files_blk0_responses"),
        ramdisk.region("files_blk0_info"),
        data.len(),
    )
    .unwrap();
    let partition = block_queue::mbr::partition(&disk[..BLOCK], blocks, 1).unwrap();
    let grant = Grant {
        first_block: partition.first_block,
        blocks: partition.blocks,
        read_only: false,
    };
    server.serve(grant, 512, 128, "hosted ramdisk").unwrap();
    ramdisk.notify("files_blk0");

    let started = Instant::now();
    let mut served = 0u32;
    let mut flushes = 0u32;
    // Bounded: the client needs a few dozen requests.
    while started.elapsed() < Duration::from_secs(60) {
        while let Some(request) = server.next_request().unwrap() {
            served += 1;
            match request {
                ServerRequest::Read {
                    id,
                    disk_block,
                    count,
                    data_offset,
                    bytes,
                } => {
                    let at = disk_block as usize * BLOCK;
                    data.write(data_offset as usize, &disk[at..at + bytes as usize])
                        .unwrap();
                    server.complete(id, Status::Ok, count).unwrap();
                }
                ServerRequest::Write {
                    id,
                    disk_block,
                    count,
                    data_offset,
                    bytes,
                } => {
                    let at = disk_block as usize * BLOCK;
                    data.read(data_offset as usize, &mut disk[at..at + bytes as usize])
                        .unwrap();
                    server.complete(id, Status::Ok, count).unwrap();
                }
                ServerRequest::Flush { id } => {
                    flushes += 1;
                    server.complete(id, Status::Ok, 0).unwrap();
                }
                ServerRequest::Discard { .. } => unreachable!("served without discard"),
            }
        }
        if server.client_needs_signal() {
            ramdisk.notify("files_blk0");
        }
        let output = harness.system().output();
        if output
            .iter()
            .any(|l| l.contains("fs-client: done") || l.contains("failed"))
        {
            break;
        }
        if server.prepare_to_sleep().unwrap() {
            ramdisk.wait_notified("files_blk0", Duration::from_millis(200));
        }
    }
    let output = harness.system().output();
    if !output.iter().any(|l| l == "[files] fs-client: done") {
        harness.fail("fs-client did not finish");
    }
    for expected in [
        "[files] fs-client: block device `hosted ramdisk`",
        "[files] fs-client:   HELLO.TXT    39",
        "[files] fs-client: | Hello over the hosted block interface.",
        "[files] fs-client: wrote GUEST.TXT (67 bytes) and the disk flushed it",
        "[files] fs-client: read GUEST.TXT back from the disk: 67 bytes, as written",
    ] {
        if !output.iter().any(|l| l.starts_with(expected)) {
            harness.fail(&format!("missing: {expected}"));
        }
    }
    assert_eq!(flushes, 1);
    eprintln!("served {served} requests");

    let image = dir.join("after.img");
    std::fs::write(&image, &disk[PARTITION_START * BLOCK..]).unwrap();
    run(Command::new(tool("fsck.fat")).arg("-n").arg(&image));
    let written = run(Command::new(tool("mtype"))
        .arg("-i")
        .arg(&image)
        .arg("::GUEST.TXT"));
    assert_eq!(written, GUEST_TEXT);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same system with the RAM disk fixture as the server: two real
/// processes, the disk the fixture carries (tests/fixtures/blk-ramdisk).
#[test]
fn fs_client_works_on_the_ram_disk_fixture() {
    let harness = Harness::builder("tests/systems/blk-ramdisk.toml")
        .start()
        .expect("starts");
    let mut at = harness.expect_output(
        "[ramdisk] ramdisk: serving 6144 blocks from block 2048 to files",
        0,
    );
    for expected in [
        "[files] fs-client: root directory, 1 entries:",
        "[files] fs-client:   HELLO.TXT    25",
        "[files] fs-client: | Hello from the RAM disk.",
        "[files] fs-client: wrote GUEST.TXT (67 bytes) and the disk flushed it",
        "[files] fs-client: read GUEST.TXT back from the disk: 67 bytes, as written",
        "[files] fs-client: done",
    ] {
        at = harness.expect_output(expected, at);
    }
    harness.expect_output("[ramdisk] ramdisk: flushed", 0);
    if harness
        .system()
        .output()
        .iter()
        .any(|line| line.contains("failed"))
    {
        harness.fail("a failure was reported");
    }
}
