//! Ring throughput: a writer thread and a reader thread stream packets
//! through one ring (the reader copies each packet into private memory and
//! validates it), next to a plain memcpy of the same bytes in the same run.
//! Runs are interleaved (ring, memcpy, ring, memcpy, ...) because the
//! machine is shared; the table shows medians with min-max.
//!
//! `cargo bench -p vmbus-ring --bench ring_throughput [-- --reps N --mib M --poll-us U]`
//!
//! Signalling is modelled as in a real channel: the reader masks
//! interrupts while it drains and unmasks (then looks again) before it
//! sleeps; the writer wakes it only when the ring reports Signal(true)
//! (empty -> non-empty with the mask clear). A full ring makes the writer
//! sleep until the reader's batch crosses pending_send_sz.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vmbus_ring::{
    DoubleMappedRingMemory, HeapRingMemory, RingError, RingMemory, RingReader, RingWriter,
};

const RING_DATA: usize = 1 << 20;
const SIZES: [usize; 4] = [64, 1024, 4096, 65536];

struct RunResult {
    seconds: f64,
    packets: u64,
    writer_signals: u64,
    reader_signals: u64,
    timeouts: u64,
}

fn ring_run<M: RingMemory + Send + Sync + 'static>(
    memory: Arc<M>,
    packet: usize,
    total: usize,
    poll: Duration,
) -> RunResult {
    vmbus_ring::reset_control(&*memory).unwrap();
    // Fault the pages in before timing (a fresh mapping faults on first touch).
    memory.write_data(0, &vec![0u8; memory.data_len()]).unwrap();
    let packets = (total / packet) as u64;
    let writer_thread = thread::current();
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader_memory = memory.clone();
    let reader_done = done.clone();
    let reader = thread::spawn(move || {
        let mut reader = RingReader::new(reader_memory).unwrap();
        let mut private = vec![0u8; packet + 64];
        let mut received = 0u64;
        let mut checksum = 0u64;
        let mut timeouts = 0u64;
        ready_tx.send(thread::current()).unwrap();
        reader.mask_interrupts().unwrap();
        while received < packets {
            let mut batch = 0;
            while let Some(info) = reader.try_read(&mut private).unwrap() {
                checksum = checksum.wrapping_add(private[info.len - 1] as u64);
                received += 1;
                batch += 1;
                if batch == 64 {
                    break;
                }
            }
            if reader.finish_batch().unwrap().0 {
                writer_thread.unpark();
            }
            if batch == 0 && poll > Duration::ZERO {
                // Poll a little before asking for a signal: while the
                // writer streams, this keeps the mask set and signals away.
                let start = Instant::now();
                while start.elapsed() < poll && !reader.has_data().unwrap() {
                    std::hint::spin_loop();
                }
                if reader.has_data().unwrap() {
                    continue;
                }
            }
            if batch == 0 {
                // Empty: ask for a signal, look once more, then sleep.
                if !reader.unmask_interrupts().unwrap() && !sleep_until_signalled() {
                    timeouts += 1;
                }
                reader.mask_interrupts().unwrap();
            }
        }
        reader_done.store(true, Ordering::Release);
        (reader.signals(), checksum, timeouts)
    });
    let reader_thread = ready_rx.recv().unwrap();
    let mut writer = RingWriter::new(memory, true).unwrap();
    let payload = vec![0x5Au8; packet];
    let mut writer_timeouts = 0u64;
    let start = Instant::now();
    for id in 0..packets {
        loop {
            match writer.write_in_band(id, false, &payload) {
                Ok(signal) => {
                    if signal.0 {
                        reader_thread.unpark();
                    }
                    break;
                }
                Err(RingError::Full { .. }) => {
                    if !sleep_until_signalled() {
                        writer_timeouts += 1;
                    }
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    let (reader_signals, checksum, reader_timeouts) = reader.join().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert!(done.load(Ordering::Acquire));
    assert_eq!(checksum, packets * 0x5A);
    RunResult {
        seconds,
        packets,
        writer_signals: writer.signals(),
        reader_signals,
        timeouts: reader_timeouts + writer_timeouts,
    }
}

/// Park until unparked (a signal); a 50 ms timeout guards against a lost
/// wakeup, which would be a bug in the signalling rules. Returns false if
/// the wait ran into the timeout.
fn sleep_until_signalled() -> bool {
    let start = Instant::now();
    thread::park_timeout(Duration::from_millis(50));
    start.elapsed() < Duration::from_millis(45)
}

/// memcpy of the same bytes in the same packet-sized pieces, through a
/// buffer the size of the ring.
fn memcpy_run(packet: usize, total: usize) -> f64 {
    let source = vec![0x5Au8; RING_DATA];
    let mut destination = vec![0u8; RING_DATA];
    // Fault the destination in before timing, as the ring run does.
    destination.fill(1);
    std::hint::black_box(&mut destination);
    let packets = total / packet;
    let start = Instant::now();
    let mut offset = 0;
    for _ in 0..packets {
        if offset + packet > RING_DATA {
            offset = 0;
        }
        destination[offset..offset + packet].copy_from_slice(&source[offset..offset + packet]);
        std::hint::black_box(&mut destination);
        offset += packet;
    }
    start.elapsed().as_secs_f64()
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
    let reps = arg("--reps", 5);
    let total = arg("--mib", 32) << 20;
    let poll = Duration::from_micros(arg("--poll-us", 0) as u64);
    println!(
        "ring data area {} KiB, {} MiB per run, {} interleaved repetitions (ring, memcpy, ...), reader polls {} us before sleeping; medians [min-max]",
        RING_DATA >> 10,
        total >> 20,
        reps,
        poll.as_micros()
    );
    println!();
    println!("| mapping | packet | ring GB/s | packets/s | writer signals/packet | reader signals/packet | memcpy GB/s | ring/memcpy |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut lost_wakeups = 0u64;
    for mapping in ["double", "single"] {
        for &packet in &SIZES {
            let mut ring_gbs = Vec::new();
            let mut ring_pps = Vec::new();
            let mut writer_signals = Vec::new();
            let mut reader_signals = Vec::new();
            let mut memcpy_gbs = Vec::new();
            let mut ratios = Vec::new();
            for _ in 0..reps {
                let result = if mapping == "double" {
                    ring_run(
                        Arc::new(DoubleMappedRingMemory::new(RING_DATA).unwrap()),
                        packet,
                        total,
                        poll,
                    )
                } else {
                    ring_run(
                        Arc::new(HeapRingMemory::new(RING_DATA)),
                        packet,
                        total,
                        poll,
                    )
                };
                lost_wakeups += result.timeouts;
                let copy_seconds = memcpy_run(packet, total);
                let bytes = (result.packets as usize * packet) as f64;
                let gbs = bytes / result.seconds / 1e9;
                let copy_gbs = bytes / copy_seconds / 1e9;
                ring_gbs.push(gbs);
                ring_pps.push(result.packets as f64 / result.seconds);
                writer_signals.push(result.writer_signals as f64 / result.packets as f64);
                reader_signals.push(result.reader_signals as f64 / result.packets as f64);
                memcpy_gbs.push(copy_gbs);
                ratios.push(gbs / copy_gbs);
            }
            let (g, g0, g1) = stats(&mut ring_gbs);
            let (p, p0, p1) = stats(&mut ring_pps);
            let (w, w0, w1) = stats(&mut writer_signals);
            let (r, r0, r1) = stats(&mut reader_signals);
            let (m, m0, m1) = stats(&mut memcpy_gbs);
            let (q, q0, q1) = stats(&mut ratios);
            let size = if packet >= 1024 {
                format!("{} KiB", packet / 1024)
            } else {
                format!("{packet} B")
            };
            println!(
                "| {mapping} | {size} | {g:.2} [{g0:.2}-{g1:.2}] | {:.2}M [{:.2}-{:.2}] | {w:.4} [{w0:.4}-{w1:.4}] | {r:.4} [{r0:.4}-{r1:.4}] | {m:.2} [{m0:.2}-{m1:.2}] | {q:.3} [{q0:.3}-{q1:.3}] |",
                p / 1e6, p0 / 1e6, p1 / 1e6
            );
        }
    }
    println!();
    println!("waits that ran into the 50 ms guard timeout (lost wakeups): {lost_wakeups}");
}
