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
        ready_tx.send(thread::current()).unwrap();
        let (checksum, timeouts) = read_stream(
            &mut reader,
            &mut private,
            packets,
            poll,
            || writer_thread.unpark(),
            sleep_until_signalled,
        );
        reader_done.store(true, Ordering::Release);
        (reader.signals(), checksum, timeouts)
    });
    let reader_thread = ready_rx.recv().unwrap();
    let mut writer = RingWriter::new(memory, true).unwrap();
    let payload = vec![0x5Au8; packet];
    let start = Instant::now();
    let writer_timeouts = write_stream(
        &mut writer,
        &payload,
        packets,
        || reader_thread.unpark(),
        sleep_until_signalled,
    );
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

/// The reader's side of a run, whatever carries the signals: drain up to
/// 64 packets per batch into private memory, wake the writer when a batch
/// says so, and when the ring is empty poll for `poll`, then unmask, look
/// once more and `sleep` (false: the sleep timed out). `private` holds a
/// packet (allocated by the caller, outside the timed part). Returns the
/// checksum of the packets' last bytes and the sleeps that timed out.
fn read_stream<M: RingMemory>(
    reader: &mut RingReader<M>,
    private: &mut [u8],
    packets: u64,
    poll: Duration,
    mut wake_writer: impl FnMut(),
    mut sleep: impl FnMut() -> bool,
) -> (u64, u64) {
    let (mut received, mut checksum, mut timeouts) = (0u64, 0u64, 0u64);
    reader.mask_interrupts().unwrap();
    while received < packets {
        let mut batch = 0;
        while let Some(info) = reader.try_read(private).unwrap() {
            checksum = checksum.wrapping_add(private[info.len - 1] as u64);
            received += 1;
            batch += 1;
            if batch == 64 {
                break;
            }
        }
        if reader.finish_batch().unwrap().0 {
            wake_writer();
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
            if !reader.unmask_interrupts().unwrap() && !sleep() {
                timeouts += 1;
            }
            reader.mask_interrupts().unwrap();
        }
    }
    (checksum, timeouts)
}

/// The writer's side of a run: `packets` packets of `payload`, waking the
/// reader when the ring says so and sleeping while it is full. Returns the
/// sleeps that timed out.
fn write_stream<M: RingMemory>(
    writer: &mut RingWriter<M>,
    payload: &[u8],
    packets: u64,
    mut wake_reader: impl FnMut(),
    mut sleep: impl FnMut() -> bool,
) -> u64 {
    let mut timeouts = 0u64;
    for id in 0..packets {
        loop {
            match writer.write_in_band(id, false, payload) {
                Ok(signal) => {
                    if signal.0 {
                        wake_reader();
                    }
                    break;
                }
                Err(RingError::Full { .. }) => {
                    if !sleep() {
                        timeouts += 1;
                    }
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    timeouts
}

/// Park until unparked (a signal); a 50 ms timeout guards against a lost
/// wakeup, which would be a bug in the signalling rules. Returns false if
/// the wait ran into the timeout.
fn sleep_until_signalled() -> bool {
    let start = Instant::now();
    thread::park_timeout(Duration::from_millis(50));
    start.elapsed() < Duration::from_millis(45)
}

/// The same stream between two processes: the reader is a forked child
/// sharing the memfd mapping; signals are bytes on pipes (as the hosted
/// runtime's notifications would be).
mod processes {
    use super::*;
    use std::os::raw::c_int;

    struct Pipe {
        read: c_int,
        write: c_int,
    }

    fn pipe(flags: c_int) -> Pipe {
        let mut fds = [0 as c_int; 2];
        // SAFETY: fds is a valid two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) }, 0);
        Pipe {
            read: fds[0],
            write: fds[1],
        }
    }

    fn notify(fd: c_int) {
        // A full pipe already holds a pending wakeup, so EAGAIN is fine.
        // SAFETY: writes one byte from a valid buffer.
        let _ = unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }

    /// Wait for a wakeup byte (50 ms guard); false if the guard ran out.
    fn wait(fd: c_int) -> bool {
        let mut poll_fd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; reads go into a local buffer.
        unsafe {
            let ready = libc::poll(&mut poll_fd, 1, 50);
            let mut sink = [0u8; 64];
            while libc::read(fd, sink.as_mut_ptr().cast(), sink.len()) > 0 {}
            ready > 0
        }
    }

    pub fn ring_run(packet: usize, total: usize, poll: Duration) -> RunResult {
        let memory = DoubleMappedRingMemory::new(RING_DATA).unwrap();
        vmbus_ring::reset_control(&memory).unwrap();
        memory.write_data(0, &vec![0u8; RING_DATA]).unwrap();
        let packets = (total / packet) as u64;
        let to_reader = pipe(libc::O_NONBLOCK);
        let to_writer = pipe(libc::O_NONBLOCK);
        let results = pipe(0);
        // SAFETY: the benchmark is single-threaded here; the child only
        // uses the shared mapping and the pipes, then _exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            let mut reader = RingReader::new(&memory).unwrap();
            let mut private = vec![0u8; packet + 64];
            notify(to_writer.write); // ready
            let (checksum, timeouts) = read_stream(
                &mut reader,
                &mut private,
                packets,
                poll,
                || notify(to_writer.write),
                || wait(to_reader.read),
            );
            let mut report = [0u8; 24];
            report[..8].copy_from_slice(&reader.signals().to_le_bytes());
            report[8..16].copy_from_slice(&checksum.to_le_bytes());
            report[16..].copy_from_slice(&timeouts.to_le_bytes());
            // SAFETY: writes the report, then leaves without running
            // destructors (the parent owns the mapping).
            unsafe {
                libc::write(results.write, report.as_ptr().cast(), report.len());
                libc::_exit(0);
            }
        }
        wait_ready(to_writer.read);
        let mut writer = RingWriter::new(&memory, true).unwrap();
        let payload = vec![0x5Au8; packet];
        let start = Instant::now();
        let writer_timeouts = write_stream(
            &mut writer,
            &payload,
            packets,
            || notify(to_reader.write),
            || wait(to_writer.read),
        );
        let mut report = [0u8; 24];
        // SAFETY: blocking read of the child's report; then reap the child
        // and close every descriptor.
        unsafe {
            let got = libc::read(results.read, report.as_mut_ptr().cast(), report.len());
            assert_eq!(got, 24, "reader process died");
            libc::waitpid(child, core::ptr::null_mut(), 0);
            for fd in [
                to_reader.read,
                to_reader.write,
                to_writer.read,
                to_writer.write,
                results.read,
                results.write,
            ] {
                libc::close(fd);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let word = |i: usize| u64::from_le_bytes(report[i..i + 8].try_into().unwrap());
        assert_eq!(word(8), packets * 0x5A);
        RunResult {
            seconds,
            packets,
            writer_signals: writer.signals(),
            reader_signals: word(0),
            timeouts: word(16) + writer_timeouts,
        }
    }

    fn wait_ready(fd: c_int) {
        while !wait(fd) {}
    }
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
    for mapping in ["double", "single", "double, 2 processes"] {
        for &packet in &SIZES {
            let mut ring_gbs = Vec::new();
            let mut ring_pps = Vec::new();
            let mut writer_signals = Vec::new();
            let mut reader_signals = Vec::new();
            let mut memcpy_gbs = Vec::new();
            let mut ratios = Vec::new();
            for _ in 0..reps {
                let result = if mapping == "double, 2 processes" {
                    processes::ring_run(packet, total, poll)
                } else if mapping == "double" {
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
