//! The fs-client end to end against a block server in this process (the
//! server half of `block_queue` over a disk image in memory), with the
//! disk image made and checked by Linux's own FAT tools: `mkfs.fat` and
//! `mcopy` make it, `fsck.fat -n` and `mtype` check what the client wrote.

use block_queue::server::{BlockServer, Grant, ServerRequest};
use block_queue::Status;
use component_api::{ChannelSet, Component, Region};
use env_double::EnvDouble;
use fs_client::{FsClient, Step, DONE_LINE, READ_FILE, WRITE_FILE, WRITE_TEXT};
use linux_tools::{run, tool, Scratch};
use std::process::Command;

const HELLO: &str = "Hello from the host's FAT disk.\nSecond line.\n";
/// The partition starts 1 MiB in, as fdisk puts it.
const PARTITION_START: u64 = 2048;
const BLOCK: usize = 512;

/// A 16 MiB FAT16 filesystem with HELLO.TXT, a directory and a bigger file.
fn make_filesystem(scratch: &Scratch) -> Vec<u8> {
    make_filesystem_with(scratch, HELLO.as_bytes())
}

fn make_filesystem_with(scratch: &Scratch, hello_contents: &[u8]) -> Vec<u8> {
    let image = scratch.path("fs.img");
    run(Command::new(tool("mkfs.fat"))
        .args(["-C", "-F", "16", "-n", "HOSTDISK"])
        .arg(&image)
        .arg("16384"));
    let hello = scratch.path("hello.txt");
    std::fs::write(&hello, hello_contents).unwrap();
    let big = scratch.path("big.bin");
    std::fs::write(&big, big_contents()).unwrap();
    let mtools = |args: &[&std::ffi::OsStr]| {
        run(Command::new(tool(args[0].to_str().unwrap()))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(&args[1..]))
    };
    let i = std::ffi::OsStr::new("-i");
    mtools(&[
        "mcopy".as_ref(),
        i,
        image.as_os_str(),
        hello.as_os_str(),
        "::HELLO.TXT".as_ref(),
    ]);
    mtools(&["mmd".as_ref(), i, image.as_os_str(), "::DOCS".as_ref()]);
    mtools(&[
        "mcopy".as_ref(),
        i,
        image.as_os_str(),
        big.as_os_str(),
        "::BIG.BIN".as_ref(),
    ]);
    std::fs::read(&image).unwrap()
}

fn big_contents() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `filesystem` as partition 1 of a disk with an MBR.
fn partitioned(filesystem: &[u8]) -> Vec<u8> {
    let mut disk = vec![0u8; PARTITION_START as usize * BLOCK + filesystem.len()];
    let entry = &mut disk[446..462];
    entry[4] = 0x0E; // FAT16 (LBA)
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((filesystem.len() / BLOCK) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[PARTITION_START as usize * BLOCK..].copy_from_slice(filesystem);
    disk
}

/// The driver's part, played by the test.
struct Ramdisk {
    server: BlockServer,
    regions: [Region; 4],
    data: Region,
    grant: Grant,
    disk: Vec<u8>,
    /// Per FLUSH: the console as it was and the disk as it was.
    flushes: Vec<(String, Vec<u8>)>,
    handed_out: usize,
    /// Crash after handing out this many requests (the last one is lost).
    crash_after: Option<usize>,
    restarts: u32,
}

impl Ramdisk {
    fn new(regions: [Region; 4], disk: Vec<u8>, grant: Grant) -> Ramdisk {
        let mut server =
            BlockServer::new(regions[0], regions[1], regions[2], regions[3].len()).unwrap();
        server.serve(grant, 512, 64, "test ramdisk").unwrap();
        Ramdisk {
            server,
            regions,
            data: regions[3],
            grant,
            disk,
            flushes: Vec::new(),
            handed_out: 0,
            crash_after: None,
            restarts: 0,
        }
    }

    fn serve(&mut self, console: &str) {
        while let Some(request) = self.server.next_request().unwrap() {
            self.handed_out += 1;
            if self.crash_after == Some(self.handed_out) {
                // The driver dies with this request taken and unanswered;
                // a new one starts on the same regions.
                self.crash_after = None;
                self.restarts += 1;
                let r = self.regions;
                self.server = BlockServer::new(r[0], r[1], r[2], r[3].len()).unwrap();
                self.server
                    .serve(self.grant, 512, 64, "test ramdisk")
                    .unwrap();
                continue;
            }
            match request {
                ServerRequest::Read {
                    id,
                    disk_block,
                    count,
                    data_offset,
                    bytes,
                } => {
                    let at = disk_block as usize * BLOCK;
                    self.data
                        .write(data_offset as usize, &self.disk[at..at + bytes as usize])
                        .unwrap();
                    self.server.complete(id, Status::Ok, count).unwrap();
                }
                ServerRequest::Write {
                    id,
                    disk_block,
                    count,
                    data_offset,
                    bytes,
                } => {
                    let at = disk_block as usize * BLOCK;
                    self.data
                        .read(
                            data_offset as usize,
                            &mut self.disk[at..at + bytes as usize],
                        )
                        .unwrap();
                    self.server.complete(id, Status::Ok, count).unwrap();
                }
                ServerRequest::Flush { id } => {
                    self.flushes.push((console.to_string(), self.disk.clone()));
                    self.server.complete(id, Status::Ok, 0).unwrap();
                }
                ServerRequest::Discard { .. } => unreachable!("served without discard"),
            }
        }
    }
}

/// Run the client against `disk` granted as `grant` until it is done.
fn run_client(disk: Vec<u8>, grant: Grant, crash_after: Option<usize>) -> (EnvDouble, Ramdisk) {
    let mut env = EnvDouble::new();
    let spec = fs_client::block::GRANTS[0];
    let sizes = [
        block_queue::request_region_bytes(spec.queue),
        block_queue::response_region_bytes(spec.queue),
        block_queue::INFO_BYTES,
        spec.data_bytes,
    ];
    let names = [spec.requests, spec.responses, spec.info, spec.data];
    for (position, _) in fs_client::REGION_NAMES.iter().enumerate() {
        let part = names.iter().position(|n| n.0 as usize == position).unwrap();
        env.add_region(sizes[part], true);
    }
    let regions = names.map(|name| env.test_view(name));
    let mut ramdisk = Ramdisk::new(regions, disk, grant);
    ramdisk.crash_after = crash_after;
    let mut client = FsClient::init(&mut env);
    let mut wake = ChannelSet::EMPTY;
    wake.insert(spec.notify);
    for _ in 0..5000 {
        if matches!(client.step(), Step::Done | Step::Failed) {
            break;
        }
        let console = env.console.clone();
        ramdisk.serve(&console);
        client.notified(&mut env, wake);
    }
    assert_eq!(client.step(), Step::Done, "console:\n{}", env.console);
    (env, ramdisk)
}

fn check_with_linux_tools(scratch: &Scratch, name: &str, filesystem: &[u8]) {
    let image = scratch.path(name);
    std::fs::write(&image, filesystem).unwrap();
    let fsck = run(Command::new(tool("fsck.fat")).arg("-n").arg(&image));
    assert!(!fsck.contains("differences"), "{fsck}");
    let written = run(Command::new(tool("mtype"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&image)
        .arg(format!("::{WRITE_FILE}")));
    assert_eq!(written, WRITE_TEXT);
    let listing = run(Command::new(tool("mdir"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&image)
        .arg("::"));
    for file in ["HELLO.TXT", "BIG.BIN", "DOCS", WRITE_FILE] {
        assert!(listing.contains(file), "{file} missing: {listing}");
    }
}

fn check_console(console: &str) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(HELLO.as_bytes());
    let expected = format!("{READ_FILE}: {} bytes, crc32 {crc:08x}", HELLO.len());
    assert!(console.contains(&expected), "{expected}\n{console}");
    assert!(console.contains("fs-client: | Second line."), "{console}");
    assert!(console.contains("BIG.BIN      100000"), "{console}");
    assert!(console.contains("DOCS         <DIR>"), "{console}");
    assert!(
        console.contains("read GUEST.TXT back from the disk"),
        "{console}"
    );
    assert!(console.trim_end().ends_with(DONE_LINE), "{console}");
    assert!(!console.contains("failed"), "{console}");
}

/// The write is reported only after the FLUSH was answered, and the disk
/// as it was when the FLUSH arrived already holds the complete file.
fn check_flush_order(
    scratch: &Scratch,
    ramdisk: &Ramdisk,
    console: &str,
    range: std::ops::Range<usize>,
) {
    assert_eq!(ramdisk.flushes.len(), 1, "one flush");
    let (console_then, disk_then) = &ramdisk.flushes[0];
    assert!(
        !console_then.contains("the disk flushed it"),
        "{console_then}"
    );
    assert!(console.contains("the disk flushed it"), "{console}");
    check_with_linux_tools(scratch, "at-flush.img", &disk_then[range]);
}

#[test]
fn a_partition_grant_mounts_lists_reads_writes_and_flushes_and_linux_agrees() {
    let scratch = Scratch::new("partition");
    let filesystem = make_filesystem(&scratch);
    let disk = partitioned(&filesystem);
    let blocks = (disk.len() / BLOCK) as u64;
    // The driver's part: resolve `partition = 1` from block 0.
    let partition = block_queue::mbr::partition(&disk[..BLOCK], blocks, 1).unwrap();
    let grant = Grant {
        first_block: partition.first_block,
        blocks: partition.blocks,
        read_only: false,
    };
    let before = disk.clone();
    let (env, ramdisk) = run_client(disk, grant, None);
    check_console(&env.console);
    assert!(
        env.console.contains("starts with a FAT boot sector"),
        "{}",
        env.console
    );
    let start = PARTITION_START as usize * BLOCK;
    assert_eq!(
        ramdisk.disk[..start],
        before[..start],
        "nothing outside the partition changed"
    );
    check_flush_order(&scratch, &ramdisk, &env.console, start..ramdisk.disk.len());
    check_with_linux_tools(&scratch, "after.img", &ramdisk.disk[start..]);
}

#[test]
fn a_whole_disk_grant_uses_the_disks_partition_table() {
    let scratch = Scratch::new("whole");
    let filesystem = make_filesystem(&scratch);
    let disk = partitioned(&filesystem);
    let grant = Grant {
        first_block: 0,
        blocks: (disk.len() / BLOCK) as u64,
        read_only: false,
    };
    let (env, ramdisk) = run_client(disk, grant, None);
    check_console(&env.console);
    assert!(
        env.console.contains("starts with a partition table"),
        "{}",
        env.console
    );
    let start = PARTITION_START as usize * BLOCK;
    check_flush_order(&scratch, &ramdisk, &env.console, start..ramdisk.disk.len());
    check_with_linux_tools(&scratch, "after.img", &ramdisk.disk[start..]);
}

#[test]
fn a_driver_restart_in_the_middle_loses_nothing() {
    let scratch = Scratch::new("restart");
    let filesystem = make_filesystem(&scratch);
    let blocks = (filesystem.len() / BLOCK) as u64;
    // A disk formatted without a table, granted whole. The driver dies
    // once per run, after taking request N, for every N of a whole run:
    // reads, the write-back, the flush and the reads after it.
    let grant = Grant {
        first_block: 0,
        blocks,
        read_only: false,
    };
    let (_, clean) = run_client(filesystem.clone(), grant, None);
    let total = clean.handed_out;
    assert!(total > 8, "{total} requests");
    eprintln!("a whole run takes {total} requests");
    for crash_after in 1..=total {
        let (env, ramdisk) = run_client(filesystem.clone(), grant, Some(crash_after));
        assert_eq!(ramdisk.restarts, 1, "crash after {crash_after}");
        check_console(&env.console);
        assert!(env.console.contains("starts with a FAT boot sector"));
        check_with_linux_tools(&scratch, "after.img", &ramdisk.disk);
    }
}

#[test]
fn a_read_only_grant_reports_the_refused_write() {
    let scratch = Scratch::new("readonly");
    let filesystem = make_filesystem(&scratch);
    let grant = Grant {
        first_block: 0,
        blocks: (filesystem.len() / BLOCK) as u64,
        read_only: true,
    };
    let mut env = EnvDouble::new();
    let spec = fs_client::block::GRANTS[0];
    let sizes = [
        block_queue::request_region_bytes(spec.queue),
        block_queue::response_region_bytes(spec.queue),
        block_queue::INFO_BYTES,
        spec.data_bytes,
    ];
    for size in sizes {
        env.add_region(size, true);
    }
    let regions = [spec.requests, spec.responses, spec.info, spec.data].map(|n| env.test_view(n));
    let mut ramdisk = Ramdisk::new(regions, filesystem.clone(), grant);
    let mut client = FsClient::init(&mut env);
    let mut wake = ChannelSet::EMPTY;
    wake.insert(spec.notify);
    for _ in 0..5000 {
        if matches!(client.step(), Step::Done | Step::Failed) {
            break;
        }
        let console = env.console.clone();
        ramdisk.serve(&console);
        client.notified(&mut env, wake);
    }
    assert_eq!(client.step(), Step::Failed, "{}", env.console);
    assert!(env.console.contains("ReadOnly"), "{}", env.console);
    assert_eq!(ramdisk.disk, filesystem, "nothing written");
}

#[test]
fn the_component_fits_the_stack_its_description_gives_it() {
    // It lives on the stack of its seL4 thread (`stack_pages = 16` in the
    // descriptions: 64 KiB), with the FAT library's state below it.
    let size = std::mem::size_of::<FsClient>();
    assert!(size < 16 * 1024, "{size} bytes");
    eprintln!("FsClient: {size} bytes");
}

/// Run the client on `disk` (whole-disk grant) to its end, Done or Failed.
fn run_to_end(disk: Vec<u8>) -> (Step, String) {
    let mut env = EnvDouble::new();
    let spec = fs_client::block::GRANTS[0];
    for size in [
        block_queue::request_region_bytes(spec.queue),
        block_queue::response_region_bytes(spec.queue),
        block_queue::INFO_BYTES,
        spec.data_bytes,
    ] {
        env.add_region(size, true);
    }
    let regions = [spec.requests, spec.responses, spec.info, spec.data].map(|n| env.test_view(n));
    let blocks = (disk.len() / BLOCK) as u64;
    let grant = Grant {
        first_block: 0,
        blocks,
        read_only: false,
    };
    let mut ramdisk = Ramdisk::new(regions, disk, grant);
    let mut client = FsClient::init(&mut env);
    let mut wake = ChannelSet::EMPTY;
    wake.insert(spec.notify);
    for _ in 0..5000 {
        if matches!(client.step(), Step::Done | Step::Failed) {
            break;
        }
        let console = env.console.clone();
        ramdisk.serve(&console);
        client.notified(&mut env, wake);
    }
    (client.step(), env.console)
}

/// The disk comes from the host: a filesystem with corrupt metadata ends
/// the run with a message (or is read as far as it makes sense), never
/// with a panic or a hang. Per seed, pseudo-random values go into the
/// boot sector's fields, into FAT entries and into the first-cluster
/// fields of root-directory entries, FAT entries also 0 (free: a chain
/// that runs into one would take embedded-sdmmc to cluster 0).
#[test]
fn a_corrupt_filesystem_never_panics_or_hangs_the_client() {
    let scratch = Scratch::new("corrupt");
    // HELLO.TXT over three clusters, so its chain has links to break.
    let filesystem = make_filesystem_with(&scratch, &[b'h'; 6000]);
    let word = |at: usize| u16::from_le_bytes([filesystem[at], filesystem[at + 1]]) as usize;
    let fat_start = word(14);
    let root_start = fat_start + filesystem[16] as usize * word(22);
    let root_entries_used = (0..word(17))
        .take_while(|i| filesystem[root_start * BLOCK + i * 32] != 0)
        .count();
    let hello_cluster = (0..root_entries_used)
        .map(|i| root_start * BLOCK + i * 32)
        .find(|at| &filesystem[*at..*at + 11] == b"HELLO   TXT")
        .map(|at| word(at + 26))
        .expect("HELLO.TXT in the root directory");
    let mut outcomes = [0u32; 2];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Values that matter more often than chance would pick them: cluster
    // 1, just past the last cluster, the largest non-special value, a
    // plausible cluster, anything non-zero.
    let nonzero = |next: &mut dyn FnMut() -> u64| match next() % 5 {
        0 => 1,
        1 => 8200,
        2 => 0xFFF6,
        3 => 2 + (next() % 300) as u16,
        _ => (next() as u16).max(1),
    };
    for seed in 0..300u32 {
        let mut disk = filesystem.clone();
        for _ in 0..(1 + next() % 4) {
            match seed % 3 {
                0 => {
                    let at = (next() % 64) as usize;
                    disk[at] = next() as u8;
                }
                1 => {
                    // A link of HELLO.TXT's chain, or one of the first
                    // 256 FAT entries (the used ones).
                    let entry = if next() % 2 == 0 {
                        hello_cluster + (next() % 3) as usize
                    } else {
                        (next() % 256) as usize
                    };
                    let at = fat_start * BLOCK + entry * 2;
                    let value = if next() % 4 == 0 {
                        0
                    } else {
                        nonzero(&mut next)
                    };
                    disk[at..at + 2].copy_from_slice(&value.to_le_bytes());
                }
                _ => {
                    let entry = (next() % root_entries_used as u64) as usize;
                    let at = root_start * BLOCK + entry * 32 + 26;
                    let value = nonzero(&mut next);
                    disk[at..at + 2].copy_from_slice(&value.to_le_bytes());
                }
            }
        }
        let (step, console) = run_to_end(disk);
        match step {
            Step::Done => outcomes[0] += 1,
            Step::Failed => outcomes[1] += 1,
            other => panic!("seed {seed}: stuck in {other:?}:\n{console}"),
        }
    }
    eprintln!(
        "corrupt disks: {} done, {} failed cleanly",
        outcomes[0], outcomes[1]
    );
    assert!(
        outcomes[1] > 0,
        "no corruption was noticed: the test hits nothing"
    );
}
