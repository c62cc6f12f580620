//! Several block clients of one storage driver, each granted only its own
//! area (issue 11, "Several clients ... each granted only its own disk or
//! partition"): tests/systems/storage-multi.toml hosted, the test process
//! playing the three clients over their own regions.
//!
//! LUN 0 is an MBR disk made here: partition 1 a FAT filesystem `mkfs.fat`
//! made, partition 2 a raw area, blocks before, between and after them
//! filled with a background. LUN 1 is a second disk file, granted whole and
//! read-only (the host would take writes to it: only the grant refuses
//! them). Checked:
//!
//! - each client's info page shows its own capacity and read-only flag;
//! - the three run at once (requests of all of them in flight together)
//!   and each reads back only what it wrote (each block stamped with its
//!   client and its block);
//! - the backing files, read directly, hold each write exactly inside its
//!   own partition and nothing changed anywhere else (the FAT is still
//!   clean: `fsck.fat -n`);
//! - a request beyond a grant's capacity gets SEEK_ERROR, a write or a
//!   discard on the read-only grant READ_ONLY;
//! - DISCARD: the info page says the disk takes it (the host's VPD 0xB2),
//!   the discarded blocks read back as zeros through the driver and in the
//!   file, and the host counted UNMAPs.
#![forbid(unsafe_code)]

use block_queue::{BlockClient, Completion, Operation, Status};
use ipc_harness::{workspace_root, Double, Harness};
use linux_tools::{run, tool, Scratch};
use std::process::Command;
use std::time::{Duration, Instant};

const BLOCK: usize = 512;
const QUEUE: usize = 16;
/// LUN 0: partition 1 at 1 MiB (2 MiB, FAT), partition 2 after a gap of
/// 64 blocks (2 MiB), then 1 MiB more of background.
const PART1_START: u64 = 2048;
const PART1_BLOCKS: u64 = 4096;
const PART2_START: u64 = PART1_START + PART1_BLOCKS + 64;
const PART2_BLOCKS: u64 = 4096;
const DISK0_BLOCKS: u64 = PART2_START + PART2_BLOCKS + 2048;
/// LUN 1: 1 MiB.
const DISK1_BLOCKS: u64 = 2048;
/// Where the clients write in their grants: part1 only in the upper half
/// (the FAT's structures and HELLO.TXT are at its start, so the
/// filesystem stays clean), part2 everywhere.
const PART1_WRITTEN: std::ops::Range<u64> = 2048..PART1_BLOCKS;
const PART2_WRITTEN: std::ops::Range<u64> = 0..PART2_BLOCKS;
/// Blocks per request.
const CHUNK: u32 = 8;
/// Discarded in part2 and in part1 (relative to the partition), each in
/// four requests made at once, so several UNMAP parameter lists are in
/// the driver's private buffer together.
const DISCARDED: std::ops::Range<u64> = 1000..1300;
const DISCARDED_PART1: std::ops::Range<u64> = 3000..3100;
const DISCARD_PIECES: u64 = 4;
const BACKGROUND: u8 = 0xEE;
const TIMEOUT: Duration = Duration::from_secs(30);

/// What a client writes to its block `block`: its name and the block,
/// repeated, so a block in the wrong place or of the wrong client shows.
fn stamp(client: &str, block: u64) -> Vec<u8> {
    let text = format!("{client}:{block:08};");
    text.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BLOCK)
        .collect()
}

fn range(blocks: std::ops::Range<u64>) -> std::ops::Range<usize> {
    blocks.start as usize * BLOCK..blocks.end as usize * BLOCK
}

/// LUN 0: an MBR (partition 1 FAT12 LBA, partition 2 Linux), partition 1
/// made by `mkfs.fat` with HELLO.TXT, partition 2 and everything outside
/// the partitions the background.
fn make_disk0(scratch: &Scratch) -> Vec<u8> {
    let filesystem = scratch.path("fat.img");
    run(Command::new(tool("mkfs.fat"))
        .args(["-C", "-n", "PART1"])
        .arg(&filesystem)
        .arg((PART1_BLOCKS as usize * BLOCK / 1024).to_string()));
    let hello = scratch.path("hello.txt");
    std::fs::write(&hello, "partition 1's own file\n").unwrap();
    run(Command::new(tool("mcopy"))
        .arg("-i")
        .arg(&filesystem)
        .arg(&hello)
        .arg("::HELLO.TXT"));
    let filesystem = std::fs::read(&filesystem).unwrap();
    assert_eq!(filesystem.len(), PART1_BLOCKS as usize * BLOCK);
    let mut disk = vec![BACKGROUND; DISK0_BLOCKS as usize * BLOCK];
    disk[..BLOCK].fill(0);
    for (index, (kind, start, blocks)) in [
        (0x0Eu8, PART1_START, PART1_BLOCKS),
        (0x83, PART2_START, PART2_BLOCKS),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = &mut disk[446 + 16 * index..462 + 16 * index];
        entry[4] = kind;
        entry[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&(blocks as u32).to_le_bytes());
    }
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[range(PART1_START..PART1_START + PART1_BLOCKS)].copy_from_slice(&filesystem);
    disk
}

fn make_disk1() -> Vec<u8> {
    (0..DISK1_BLOCKS).flat_map(|b| stamp("lun1", b)).collect()
}

/// One client: the test's side of a grant.
struct Client {
    name: &'static str,
    double: Double,
    queue: BlockClient<QUEUE>,
}

impl Client {
    fn new(harness: &Harness, name: &'static str) -> Client {
        let double = harness.double(name);
        let queue = BlockClient::new(
            double.region("blk0_requests"),
            double.region("blk0_responses"),
            double.region("blk0_info"),
            double.region("blk0_data"),
        )
        .expect("the grant's regions fit the block interface");
        Client {
            name,
            double,
            queue,
        }
    }

    fn wait_serving(&mut self) -> block_queue::DeviceInfo {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(device) = self.queue.device() {
                return device;
            }
            assert!(Instant::now() < deadline, "{} is never served", self.name);
            self.double.wait_notified("blk0", Duration::from_millis(20));
        }
    }

    fn submit(&mut self, operation: Operation) {
        self.queue.submit(operation).unwrap();
        if self.queue.driver_needs_signal() {
            self.double.notify("blk0");
        }
    }

    fn poll(&mut self) -> Option<Completion> {
        let completion = self.queue.poll().unwrap();
        if self.queue.driver_needs_signal() {
            self.double.notify("blk0");
        }
        completion
    }

    /// Submit one request and wait for its answer.
    fn one(&mut self, operation: Operation) -> Completion {
        self.submit(operation);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(done) = self.poll() {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {operation:?} never answered",
                self.name
            );
            self.double.wait_notified("blk0", Duration::from_millis(20));
        }
    }

    fn data(&self, at: usize, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.queue.data().read(at, &mut bytes).unwrap();
        bytes
    }
}

/// What a client does to its grant: writes of its stamp over `blocks`,
/// then reads of them back (checking the stamp), `CHUNK` blocks a request.
struct Job {
    blocks: std::ops::Range<u64>,
    write: bool,
    next: u64,
    /// Which data-region slot each outstanding request uses (by id, FIFO
    /// is not assumed).
    in_flight: Vec<(u32, u64, usize)>,
    free_slots: Vec<usize>,
    done: u64,
    mismatches: Vec<u64>,
}

impl Job {
    fn new(blocks: std::ops::Range<u64>, write: bool) -> Job {
        Job {
            next: blocks.start,
            blocks,
            write,
            in_flight: Vec::new(),
            free_slots: (0..8).collect(),
            done: 0,
            mismatches: Vec::new(),
        }
    }

    fn finished(&self) -> bool {
        self.next >= self.blocks.end && self.in_flight.is_empty()
    }
}

/// Run the clients' jobs at once, round robin: each keeps up to 8
/// requests in flight; returns the most requests that were in flight
/// across all clients together.
fn run_together(
    clients: &mut [Client],
    jobs: &mut [Job],
    expected: &dyn Fn(&str, u64) -> Vec<u8>,
) -> usize {
    let deadline = Instant::now() + TIMEOUT * 2;
    let mut most_in_flight = 0;
    while !jobs.iter().all(Job::finished) {
        assert!(Instant::now() < deadline, "the clients never finish");
        for (client, job) in clients.iter_mut().zip(jobs.iter_mut()) {
            while job.next < job.blocks.end {
                let Some(slot) = job.free_slots.pop() else {
                    break;
                };
                let count = (job.blocks.end - job.next).min(u64::from(CHUNK)) as u32;
                let offset = slot * CHUNK as usize * BLOCK;
                let operation = if job.write {
                    let bytes: Vec<u8> = (job.next..job.next + u64::from(count))
                        .flat_map(|b| stamp(client.name, b))
                        .collect();
                    client.queue.data().write(offset, &bytes).unwrap();
                    Operation::Write {
                        block: job.next,
                        count,
                        offset: offset as u64,
                    }
                } else {
                    Operation::Read {
                        block: job.next,
                        count,
                        offset: offset as u64,
                    }
                };
                let id = client.queue.submit(operation).unwrap();
                job.in_flight.push((id, job.next, slot));
                job.next += u64::from(count);
            }
            if client.queue.driver_needs_signal() {
                client.double.notify("blk0");
            }
        }
        most_in_flight = most_in_flight.max(jobs.iter().map(|j| j.in_flight.len()).sum());
        let mut any = false;
        for (client, job) in clients.iter_mut().zip(jobs.iter_mut()) {
            while let Some(done) = client.poll() {
                any = true;
                let at = job
                    .in_flight
                    .iter()
                    .position(|(id, _, _)| *id == done.id)
                    .expect("a completion of a request in flight");
                let (_, first, slot) = job.in_flight.remove(at);
                assert_eq!(done.status, Status::Ok, "{}: {done:?}", client.name);
                let count = match done.operation {
                    Operation::Read { count, .. } | Operation::Write { count, .. } => count,
                    other => panic!("{other:?}"),
                };
                assert_eq!(done.count, count);
                if !job.write {
                    let bytes = client.data(slot * CHUNK as usize * BLOCK, count as usize * BLOCK);
                    for (index, block) in bytes.chunks(BLOCK).enumerate() {
                        let block_number = first + index as u64;
                        if block != expected(client.name, block_number).as_slice() {
                            job.mismatches.push(block_number);
                        }
                    }
                }
                job.done += u64::from(count);
                job.free_slots.push(slot);
            }
        }
        if !any {
            clients[0]
                .double
                .wait_notified("blk0", Duration::from_millis(1));
        }
    }
    most_in_flight
}

#[test]
fn three_clients_each_see_only_their_own_grant() {
    let scratch = Scratch::new("storage-multi");
    let disk0 = make_disk0(&scratch);
    let disk1 = make_disk1();
    let (path0, path1) = (scratch.path("lun0.img"), scratch.path("lun1.img"));
    std::fs::write(&path0, &disk0).unwrap();
    std::fs::write(&path1, &disk1).unwrap();

    let script = workspace_root()
        .join("tests/systems/storage-multi.hvsim")
        .display()
        .to_string();
    let (arg0, arg1) = (path0.display().to_string(), path1.display().to_string());
    let harness = Harness::builder("tests/systems/storage-multi.toml")
        .double("part1")
        .double("part2")
        .double("whole")
        .host_args(&[
            "--events", "--script", &script, "--disk", &arg0, "--disk", &arg1,
        ])
        .start()
        .expect("the system starts");
    let mut clients = [
        Client::new(&harness, "part1"),
        Client::new(&harness, "part2"),
        Client::new(&harness, "whole"),
    ];

    // Each info page: its own area.
    let infos: Vec<_> = clients.iter_mut().map(Client::wait_serving).collect();
    let shown: Vec<_> = infos
        .iter()
        .map(|i| (i.capacity, i.read_only, i.block_size, i.discard))
        .collect();
    assert_eq!(
        shown,
        [
            (PART1_BLOCKS, false, 512, true),
            (PART2_BLOCKS, false, 512, true),
            // Discarding is a write: a read-only grant has it refused
            // whatever the disk could do.
            (DISK1_BLOCKS, true, 512, true),
        ]
    );

    // Reads land inside the grant: block 0 of each is its area's first
    // block in the files.
    for (index, expected) in [
        &disk0[range(PART1_START..PART1_START + 1)],
        &disk0[range(PART2_START..PART2_START + 1)],
        &disk1[..BLOCK],
    ]
    .into_iter()
    .enumerate()
    {
        let done = clients[index].one(Operation::Read {
            block: 0,
            count: 1,
            offset: 0,
        });
        assert_eq!((done.status, done.count), (Status::Ok, 1));
        assert_eq!(
            clients[index].data(0, BLOCK),
            expected,
            "{}",
            clients[index].name
        );
    }

    // Beyond the capacity: SEEK_ERROR, for reads, writes and discards.
    for (index, capacity) in [PART1_BLOCKS, PART2_BLOCKS, DISK1_BLOCKS]
        .into_iter()
        .enumerate()
    {
        for operation in [
            Operation::Read {
                block: capacity,
                count: 1,
                offset: 0,
            },
            Operation::Write {
                block: capacity - 1,
                count: 2,
                offset: 0,
            },
            Operation::Discard {
                block: capacity - 1,
                count: 2,
            },
        ] {
            let done = clients[index].one(operation);
            assert_eq!(
                (done.status, done.count),
                (Status::SeekError, 0),
                "{}: {operation:?}",
                clients[index].name
            );
        }
    }

    // The read-only grant: READ_ONLY for a write and a discard (the
    // host's disk would take them).
    for operation in [
        Operation::Write {
            block: 0,
            count: 1,
            offset: 0,
        },
        Operation::Discard { block: 0, count: 1 },
    ] {
        let done = clients[2].one(operation);
        assert_eq!(
            (done.status, done.count),
            (Status::ReadOnly, 0),
            "{operation:?}"
        );
    }

    // All three at once: part1 and part2 write their stamps while `whole`
    // reads its disk; then all three read back.
    let own = |client: &str, block: u64| stamp(client, block);
    let lun1 = |_: &str, block: u64| stamp("lun1", block);
    let expected = |client: &str, block: u64| {
        if client == "whole" {
            lun1(client, block)
        } else {
            own(client, block)
        }
    };
    let mut jobs = [
        Job::new(PART1_WRITTEN, true),
        Job::new(PART2_WRITTEN, true),
        Job::new(0..DISK1_BLOCKS, false),
    ];
    let together = run_together(&mut clients, &mut jobs, &expected);
    assert!(
        jobs.iter().all(|j| j.mismatches.is_empty()),
        "{:?}",
        jobs.each_ref().map(|j| &j.mismatches)
    );
    let mut jobs = [
        Job::new(PART1_WRITTEN, false),
        Job::new(PART2_WRITTEN, false),
        Job::new(0..DISK1_BLOCKS, false),
    ];
    let together_reads = run_together(&mut clients, &mut jobs, &expected);
    for (client, job) in clients.iter().zip(&jobs) {
        assert!(
            job.mismatches.is_empty(),
            "{} read blocks that are not its own: {:?}",
            client.name,
            &job.mismatches[..job.mismatches.len().min(8)]
        );
    }
    println!("requests in flight together: up to {together} (writes), {together_reads} (reads)");
    assert!(
        together > 8,
        "the clients never had requests in flight at once"
    );

    // DISCARD on part1 and part2 at once: zeros through the driver.
    for (index, blocks) in [(0, DISCARDED_PART1), (1, DISCARDED)] {
        let piece = (blocks.end - blocks.start) / DISCARD_PIECES;
        for n in 0..DISCARD_PIECES {
            clients[index].submit(Operation::Discard {
                block: blocks.start + n * piece,
                count: piece as u32,
            });
        }
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut answered = Vec::new();
    while answered.len() < 2 * DISCARD_PIECES as usize {
        assert!(
            Instant::now() < deadline,
            "discards unanswered: {answered:?}"
        );
        for client in clients[..2].iter_mut() {
            while let Some(done) = client.poll() {
                answered.push((client.name, done.status, done.count));
            }
        }
        clients[1]
            .double
            .wait_notified("blk0", Duration::from_millis(1));
    }
    for (name, status, count) in &answered {
        assert_eq!(*status, Status::Ok, "{name}: {answered:?}");
        assert!(*count == 25 || *count == 75, "{name}: {answered:?}");
    }
    for (index, blocks) in [(0, DISCARDED_PART1), (1, DISCARDED)] {
        let done = clients[index].one(Operation::Read {
            block: blocks.start,
            count: 8,
            offset: 0,
        });
        assert_eq!(done.status, Status::Ok);
        assert!(
            clients[index].data(0, 8 * BLOCK).iter().all(|&b| b == 0),
            "{}: discarded blocks read back as zeros",
            clients[index].name
        );
    }
    let done = clients[1].one(Operation::Read {
        block: DISCARDED.start - 4,
        count: 8,
        offset: 0,
    });
    assert_eq!(done.status, Status::Ok);
    let back = clients[1].data(0, 8 * BLOCK);
    let before: Vec<u8> = (DISCARDED.start - 4..DISCARDED.start)
        .flat_map(|b| stamp("part2", b))
        .collect();
    assert_eq!(
        back[..4 * BLOCK],
        before[..],
        "the blocks before it are kept"
    );
    assert!(
        back[4 * BLOCK..].iter().all(|&b| b == 0),
        "discarded blocks read back as zeros"
    );
    for client in &mut clients[..2] {
        let done = client.one(Operation::Flush);
        assert_eq!(done.status, Status::Ok);
    }

    // The files, read directly: exactly the writes, each in its partition.
    let mut model0 = disk0.clone();
    for block in PART1_WRITTEN {
        let bytes = if DISCARDED_PART1.contains(&block) {
            vec![0u8; BLOCK]
        } else {
            stamp("part1", block)
        };
        model0[range(PART1_START + block..PART1_START + block + 1)].copy_from_slice(&bytes);
    }
    for block in PART2_WRITTEN {
        let bytes = if DISCARDED.contains(&block) {
            vec![0u8; BLOCK]
        } else {
            stamp("part2", block)
        };
        model0[range(PART2_START + block..PART2_START + block + 1)].copy_from_slice(&bytes);
    }
    let file0 = std::fs::read(&path0).unwrap();
    assert_eq!(file0.len(), model0.len());
    let wrong: Vec<u64> = (0..DISK0_BLOCKS)
        .filter(|&b| file0[range(b..b + 1)] != model0[range(b..b + 1)])
        .collect();
    assert!(
        wrong.is_empty(),
        "{} blocks of LUN 0 differ from the writes put in their partitions, first {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(8)]
    );
    assert!(
        std::fs::read(&path1).unwrap() == disk1,
        "the read-only LUN changed"
    );
    let partition1 = scratch.path("part1.img");
    std::fs::write(
        &partition1,
        &file0[range(PART1_START..PART1_START + PART1_BLOCKS)],
    )
    .unwrap();
    run(Command::new(tool("fsck.fat")).arg("-n").arg(&partition1));
    let hello = run(Command::new(tool("mtype"))
        .arg("-i")
        .arg(&partition1)
        .arg("::HELLO.TXT"));
    assert_eq!(hello, "partition 1's own file\n");

    // The host saw the UNMAP.
    let report = harness.host("storage-report");
    println!("host: {report}");
    let unmaps = report
        .split(" unmaps")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(unmaps, Some(2 * DISCARD_PIECES), "{report}");
    for line in harness.system().output() {
        if line.starts_with("[storage] serving ") {
            println!("{line}");
        }
    }
}
