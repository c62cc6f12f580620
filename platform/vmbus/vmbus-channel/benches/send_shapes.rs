//! Streaming throughput per send shape: a sender thread and a receiver
//! thread move `--mib` MiB in packets of each size, for each shape, through
//! single- and double-mapped rings, next to a memcpy of the same bytes in
//! the same run (interleaved: shape run, memcpy, shape run, memcpy, ...).
//! Medians with [min-max].
//!
//! `cargo bench -p vmbus-channel --bench send_shapes [-- --reps N --mib M]`
//! (`-- --smoke`: one repetition of 1 MiB). Without `--bench` (as `cargo
//! test` runs it) it is a smoke run: a few packets of every shape,
//! checked, nothing timed. With `VMBUS_BENCH_JSON` set the benchmark
//! appends its records (group `channel`: GB/s per shape against packet
//! size, for each mapping, with the memcpy of the same bytes measured
//! beside every shape's runs as the baseline) for `cargo xtask bench`.
//!
//! The shapes, each moving `size` bytes of data per packet:
//! - in-band: the guest's `DataChannel::send_in_band` copies the data into
//!   the ring; the host copies the packet out and validates it.
//! - page buffer / multi-page: the data already lies in a buffer the guest
//!   shared (a `SharedBuffer`); the guest writes a GPA-direct packet (a
//!   64-byte command plus one range per page, or one multi-page range); the
//!   host copies the packet out, validates it, checks every PFN against the
//!   buffer and copies the described bytes out of it (what a device's DMA
//!   does).
//! - transfer pages: the host copies the data into the guest's receive
//!   buffer and writes a transfer-page packet (a 64-byte header, one range);
//!   the guest's `DataChannel::receive` validates the range against the
//!   receive buffer and the guest copies the bytes out. (No completions are
//!   sent back: the receive buffer is reused round-robin.)
//!
//! Signalling as in a channel: the receiver masks interrupts while it
//! drains and unmasks, looks again and sleeps when empty; the sender wakes
//! it only on `Signal(true)`; a full ring makes the sender sleep until the
//! receiver's batch crosses pending_send_sz. "Interrupts/packet" are the
//! sender's signals per packet (each one an interrupt to the receiver),
//! "wakeups/packet" the receiver's pending_send_sz signals per packet.

use bench_record::Record;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vmbus_channel::{ChannelError, DataChannel, ReceiveBuffer, Received, SharedBuffer};
use vmbus_protocol::packet::{
    descriptor_for, parse_packet, PacketKind, PacketType, TransferPageHeader, TransferPageRange,
    PAGE_SIZE,
};
use vmbus_ring::{
    DoubleMappedRingMemory, HeapRingMemory, RingError, RingMemory, RingReader, RingWriter,
};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::IntoBytes;

const RING_DATA: usize = 1 << 20;
/// The guest's data buffer and receive buffer (GPA 0 of their own memory).
const BUFFER_BYTES: usize = 4 << 20;
const COMMAND: [u8; 64] = [0xC3; 64];
const RECEIVE_SET: u16 = 0xCAFE;
const FILL: u8 = 0x5A;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    InBand,
    PageBuffer,
    MultiPage,
    TransferPages,
}

impl Shape {
    const ALL: [Shape; 4] = [
        Shape::InBand,
        Shape::PageBuffer,
        Shape::MultiPage,
        Shape::TransferPages,
    ];
    fn name(self) -> &'static str {
        match self {
            Shape::InBand => "in-band",
            Shape::PageBuffer => "GPA-direct page buffer",
            Shape::MultiPage => "GPA-direct multi-page",
            Shape::TransferPages => "transfer pages",
        }
    }
}

/// One run's memory: both rings, the guest's data buffer and its receive
/// buffer (each a plain shared byte area, its offset standing for the GPA).
struct Memory<M> {
    out_ring: Arc<M>,
    in_ring: Arc<M>,
    data: Arc<HeapRingMemory>,
    receive: Arc<HeapRingMemory>,
}

struct RunResult {
    seconds: f64,
    packets: u64,
    sender_signals: u64,
    receiver_signals: u64,
    timeouts: u64,
}

/// Where the next packet's data goes: sequential, wrapping, so GPA-direct
/// ranges start at every offset inside a page over a run.
fn next_offset(cursor: &mut usize, size: usize) -> usize {
    if *cursor + size > BUFFER_BYTES {
        *cursor = 0;
    }
    let at = *cursor;
    *cursor += size.div_ceil(8) * 8 + 8;
    at
}

fn run<M: RingMemory + Send + Sync + 'static>(
    memory: Memory<M>,
    shape: Shape,
    size: usize,
    packets: u64,
) -> RunResult {
    for ring in [&memory.out_ring, &memory.in_ring] {
        vmbus_ring::reset_control(&**ring).unwrap();
        // Fault the pages in before timing.
        ring.write_data(0, &vec![0u8; ring.data_len()]).unwrap();
    }
    memory
        .data
        .write_data(0, &vec![FILL; BUFFER_BYTES])
        .unwrap();
    memory
        .receive
        .write_data(0, &vec![0; BUFFER_BYTES])
        .unwrap();
    let guest: DataChannel<Arc<M>, (), 1> = DataChannel::new(
        RingWriter::new(memory.out_ring.clone(), true).unwrap(),
        RingReader::new(memory.in_ring.clone()).unwrap(),
    );
    let host_reader = RingReader::new(memory.out_ring.clone()).unwrap();
    let host_writer = RingWriter::new(memory.in_ring.clone(), true).unwrap();
    let (data, receive) = (memory.data.clone(), memory.receive.clone());
    let sender_thread = thread::current();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    if shape == Shape::TransferPages {
        // Host sends, guest receives.
        let receiver = thread::spawn(move || {
            ready_tx.send(thread::current()).unwrap();
            let mut guest = guest;
            guest.set_receive_buffer(Some(ReceiveBuffer {
                buffer: SharedBuffer::new(0, BUFFER_BYTES, 2).unwrap(),
                transfer_page_set_id: RECEIVE_SET,
            }));
            let mut packet = vec![0u8; 256];
            let mut private = vec![0u8; size];
            let (checksum, timeouts) = receive_loop(
                packets,
                &mut guest,
                |guest| match guest.receive(&mut packet) {
                    Ok(Some(Received::TransferPages { ranges, .. })) => {
                        let range = ranges.iter().next().expect("one range");
                        let out = &mut private[..range.len as usize];
                        receive.read_data(range.offset as usize, out).unwrap();
                        Some(out[out.len() - 1] as u64)
                    }
                    Ok(None) => None,
                    other => panic!("{other:?}"),
                },
                |guest| guest.reader(),
                || sender_thread.unpark(),
            );
            (checksum, timeouts, guest.reader().signals())
        });
        let receiver_thread = ready_rx.recv().unwrap();
        let mut host = host_writer;
        let payload = vec![FILL; size];
        let mut cursor = 0;
        let start = Instant::now();
        let sender_timeouts = send_loop(
            packets,
            || {
                // A full ring (the write sets pending_send_sz) retries the
                // same section of the receive buffer.
                let mut retry_at = cursor;
                let at = next_offset(&mut cursor, size);
                memory.receive.write_data(at, &payload).unwrap();
                let mut header = TransferPageHeader {
                    transfer_page_set_id: U16::new(RECEIVE_SET),
                    sender_owns_set: 0,
                    reserved: 0,
                    range_count: U32::new(1),
                }
                .as_bytes()
                .to_vec();
                header.extend_from_slice(
                    TransferPageRange {
                        byte_count: U32::new(size as u32),
                        byte_offset: U32::new(at as u32),
                    }
                    .as_bytes(),
                );
                let descriptor =
                    descriptor_for(PacketType::TransferPages, header.len(), 64, 1, true).unwrap();
                match host.write_parts(&descriptor, &header, &COMMAND) {
                    Ok(signal) => Ok(signal.0),
                    Err(RingError::Full { .. }) => {
                        std::mem::swap(&mut cursor, &mut retry_at);
                        Err(())
                    }
                    Err(other) => panic!("{other:?}"),
                }
            },
            || receiver_thread.unpark(),
        );
        let (checksum, receiver_timeouts, receiver_signals) = receiver.join().unwrap();
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(checksum, packets * FILL as u64);
        return RunResult {
            seconds,
            packets,
            sender_signals: host.signals(),
            receiver_signals,
            timeouts: sender_timeouts + receiver_timeouts,
        };
    }
    // Guest sends, host receives.
    let receiver = thread::spawn(move || {
        ready_tx.send(thread::current()).unwrap();
        let mut host = host_reader;
        let mut packet = vec![0u8; size + 4096];
        let mut private = vec![0u8; size];
        let (checksum, timeouts) = receive_loop(
            packets,
            &mut host,
            |host| {
                let info = host.try_read(&mut packet).unwrap()?;
                let parsed = parse_packet(&packet[..info.len]).unwrap();
                Some(match parsed.kind {
                    PacketKind::InBand => {
                        private[..size].copy_from_slice(&parsed.payload[..size]);
                        private[size - 1] as u64
                    }
                    PacketKind::GpaDirect(ranges) => {
                        let mut at = 0;
                        for range in ranges.iter() {
                            let mut offset = range.byte_offset as usize;
                            let mut left = range.byte_count as usize;
                            for pfn in range.pfns() {
                                let page = pfn as usize * PAGE_SIZE;
                                assert!(page < BUFFER_BYTES, "a PFN outside the buffer");
                                let take = (PAGE_SIZE - offset).min(left);
                                data.read_data(page + offset, &mut private[at..at + take])
                                    .unwrap();
                                at += take;
                                left -= take;
                                offset = 0;
                            }
                        }
                        assert_eq!(at, size);
                        private[size - 1] as u64
                    }
                    other => panic!("{other:?}"),
                })
            },
            |host| host,
            || sender_thread.unpark(),
        );
        (checksum, timeouts, host.signals())
    });
    let receiver_thread = ready_rx.recv().unwrap();
    let mut guest = guest;
    let buffer = SharedBuffer::new(0, BUFFER_BYTES, 1).unwrap();
    let payload = vec![FILL; size];
    let mut cursor = 0;
    let start = Instant::now();
    let sender_timeouts = send_loop(
        packets,
        || {
            let mut retry_at = cursor;
            let at = next_offset(&mut cursor, size);
            let slice = [buffer.slice(at, size).unwrap()];
            let sent = match shape {
                Shape::InBand => guest.send_in_band(&payload, None),
                Shape::PageBuffer => guest.send_page_buffer(&slice, &COMMAND, None),
                Shape::MultiPage => guest.send_multi_page(&slice, &COMMAND, None),
                Shape::TransferPages => unreachable!(),
            };
            match sent {
                Ok(sent) => Ok(sent.signal.0),
                Err(error) if matches!(error.error, ChannelError::Ring(RingError::Full { .. })) => {
                    std::mem::swap(&mut cursor, &mut retry_at);
                    Err(())
                }
                Err(other) => panic!("{other:?}"),
            }
        },
        || receiver_thread.unpark(),
    );
    let (checksum, receiver_timeouts, receiver_signals) = receiver.join().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(checksum, packets * FILL as u64);
    RunResult {
        seconds,
        packets,
        sender_signals: guest.stats().signals_requested,
        receiver_signals,
        timeouts: sender_timeouts + receiver_timeouts,
    }
}

/// The receiver: drain up to 64 packets per batch, publish, wake the sender
/// when the batch says so; when empty unmask, look again and sleep.
/// Returns the checksum of the packets' last bytes and the sleeps that ran
/// into the guard timeout.
fn receive_loop<S, M: RingMemory>(
    packets: u64,
    state: &mut S,
    mut receive_one: impl FnMut(&mut S) -> Option<u64>,
    ring: impl Fn(&mut S) -> &mut RingReader<M>,
    wake_sender: impl Fn(),
) -> (u64, u64) {
    let (mut received, mut checksum, mut timeouts) = (0u64, 0u64, 0u64);
    ring(state).mask_interrupts().unwrap();
    while received < packets {
        let mut batch = 0;
        while batch < 64 {
            match receive_one(state) {
                Some(sum) => {
                    checksum += sum;
                    received += 1;
                    batch += 1;
                }
                None => break,
            }
        }
        if ring(state).finish_batch().unwrap().0 {
            wake_sender();
        }
        if batch == 0 {
            if !ring(state).unmask_interrupts().unwrap() && !sleep_until_signalled() {
                timeouts += 1;
            }
            ring(state).mask_interrupts().unwrap();
        }
    }
    (checksum, timeouts)
}

/// The sender: `send` returns Ok(signal) or Err(()) when the ring is full.
fn send_loop(
    packets: u64,
    mut send: impl FnMut() -> Result<bool, ()>,
    wake_receiver: impl Fn(),
) -> u64 {
    let mut timeouts = 0;
    for _ in 0..packets {
        loop {
            match send() {
                Ok(signal) => {
                    if signal {
                        wake_receiver();
                    }
                    break;
                }
                Err(()) => {
                    if !sleep_until_signalled() {
                        timeouts += 1;
                    }
                }
            }
        }
    }
    timeouts
}

/// Park until unparked; a 50 ms guard against a lost wakeup (a bug in the
/// signalling rules). False if the guard ran out.
fn sleep_until_signalled() -> bool {
    let start = Instant::now();
    thread::park_timeout(Duration::from_millis(50));
    start.elapsed() < Duration::from_millis(45)
}

fn memcpy_run(size: usize, packets: u64) -> f64 {
    let source = vec![FILL; BUFFER_BYTES];
    let mut destination = vec![1u8; BUFFER_BYTES];
    std::hint::black_box(&mut destination);
    let mut cursor = 0;
    let start = Instant::now();
    for _ in 0..packets {
        let at = next_offset(&mut cursor, size);
        destination[at..at + size].copy_from_slice(&source[at..at + size]);
        std::hint::black_box(&mut destination);
    }
    start.elapsed().as_secs_f64()
}

fn memory_for(
    double: bool,
) -> (
    Option<Memory<DoubleMappedRingMemory>>,
    Option<Memory<HeapRingMemory>>,
) {
    let buffers = || {
        (
            Arc::new(HeapRingMemory::new(BUFFER_BYTES)),
            Arc::new(HeapRingMemory::new(BUFFER_BYTES)),
        )
    };
    let (data, receive) = buffers();
    if double {
        (
            Some(Memory {
                out_ring: Arc::new(DoubleMappedRingMemory::new(RING_DATA).unwrap()),
                in_ring: Arc::new(DoubleMappedRingMemory::new(RING_DATA).unwrap()),
                data,
                receive,
            }),
            None,
        )
    } else {
        (
            None,
            Some(Memory {
                out_ring: Arc::new(HeapRingMemory::new(RING_DATA)),
                in_ring: Arc::new(HeapRingMemory::new(RING_DATA)),
                data,
                receive,
            }),
        )
    }
}

fn run_mapped(double: bool, shape: Shape, size: usize, packets: u64) -> RunResult {
    match memory_for(double) {
        (Some(memory), _) => run(memory, shape, size, packets),
        (_, Some(memory)) => run(memory, shape, size, packets),
        _ => unreachable!(),
    }
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let benchmark = std::env::args().any(|a| a == "--bench");
    if !benchmark {
        // Smoke run (cargo test): every shape, both mappings, a few
        // hundred packets across the ring's wrap; the checksums and the
        // host's checks are the test.
        for double in [false, true] {
            for shape in Shape::ALL {
                for size in [100, 4096, 70_000] {
                    let result = run_mapped(double, shape, size, 200);
                    assert_eq!(result.packets, 200);
                }
            }
        }
        println!("send_shapes smoke run: ok");
        return;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    let reps = arg("--reps", if smoke { 1 } else { 5 }).max(1);
    let total = arg("--mib", if smoke { 1 } else { 64 }).max(1) << 20;
    // The memcpy of each (mapping, size), over every shape's repetitions.
    let mut copies: Vec<(bool, usize, Vec<f64>)> = Vec::new();
    let sizes = [1024usize, 4096, 16384, 65536];
    println!(
        "rings of {} KiB, {} MiB per run, {reps} interleaved repetitions (shape, memcpy, ...); medians [min-max]",
        RING_DATA >> 10,
        total >> 20
    );
    println!();
    println!("| shape | mapping | packet | GB/s | packets/s | interrupts/packet | wakeups/packet | memcpy GB/s | shape/memcpy | guard hits |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut lost = 0;
    for shape in Shape::ALL {
        for &size in &sizes {
            for double in [true, false] {
                let packets = (total / size) as u64;
                let mut columns: [Vec<f64>; 6] = Default::default();
                let mut guard_hits = 0;
                for _ in 0..reps {
                    let result = run_mapped(double, shape, size, packets);
                    lost += result.timeouts;
                    guard_hits += result.timeouts;
                    let copy = memcpy_run(size, packets);
                    let bytes = (packets as usize * size) as f64;
                    let gbs = bytes / result.seconds / 1e9;
                    let copy_gbs = bytes / copy / 1e9;
                    columns[0].push(gbs);
                    columns[1].push(packets as f64 / result.seconds / 1e6);
                    columns[2].push(result.sender_signals as f64 / packets as f64);
                    columns[3].push(result.receiver_signals as f64 / packets as f64);
                    columns[4].push(copy_gbs);
                    columns[5].push(gbs / copy_gbs);
                }
                let mapping = if double { "double" } else { "single" };
                Record::new(
                    "channel",
                    shape.name(),
                    &format!("throughput, {mapping}-mapped rings"),
                    "GB/s",
                    true,
                )
                .x(size as f64, "packet size (B)")
                .samples(&columns[0])
                .baseline("memcpy")
                .emit();
                match copies.iter_mut().find(|c| c.0 == double && c.1 == size) {
                    Some(copy) => copy.2.extend_from_slice(&columns[4]),
                    None => copies.push((double, size, columns[4].clone())),
                }
                let cells: Vec<String> = columns
                    .iter_mut()
                    .enumerate()
                    .map(|(i, values)| {
                        let (median, min, max) = stats(values);
                        match i {
                            1 => format!("{median:.2}M [{min:.2}-{max:.2}]"),
                            2 | 3 => format!("{median:.4} [{min:.4}-{max:.4}]"),
                            5 => format!("{median:.3} [{min:.3}-{max:.3}]"),
                            _ => format!("{median:.2} [{min:.2}-{max:.2}]"),
                        }
                    })
                    .collect();
                println!(
                    "| {} | {} | {} KiB | {} | {guard_hits} |",
                    shape.name(),
                    if double { "double" } else { "single" },
                    size / 1024,
                    cells.join(" | ")
                );
            }
        }
    }
    for (double, size, samples) in copies {
        let mapping = if double { "double" } else { "single" };
        Record::new(
            "channel",
            "memcpy",
            &format!("throughput, {mapping}-mapped rings"),
            "GB/s",
            true,
        )
        .x(size as f64, "packet size (B)")
        .samples(&samples)
        .note("the same bytes copied by one thread, measured after each shape's run (every shape's repetitions pooled)")
        .emit();
    }
    println!();
    println!("waits that ran into the 50 ms guard (lost wakeups): {lost}");
}
