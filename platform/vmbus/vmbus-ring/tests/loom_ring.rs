//! Model check of the ring's publish-and-signal protocol with `loom`: the
//! real `RingWriter` and `RingReader` (their atomics come from
//! `vmbus_ring::sync`, loom's under `--cfg loom`) on a `LoomRingMemory`,
//! over every interleaving and every value a weak-memory load may return,
//! within a preemption bound.
//!
//! Run it with `cargo xtask test` (which also checks the run time), or:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p vmbus-ring --test loom_ring --release
//! ```
//!
//! Properties:
//! - No lost wakeup: a side that goes to sleep (waits for the peer's
//!   signal, a sticky flag like a seL4 notification) while the peer has done
//!   what it was waiting for must have a signal pending.
//! - No signal the rules forbid: a writer signals only when the reader had
//!   published the consumption of everything before the packet it wrote (a
//!   ghost counter the reader updates before it publishes); a reader
//!   signals a writer waiting for space (pending_send_sz) at most once per
//!   wait, when the free space crosses the size the writer asked for.
//!
//! The read loops are written here against the ring API, mirroring the
//! driver's poll loop in ic-channel. The old loop (read until empty,
//! publish, sleep) must be found to lose a wakeup; the fixed loops (look
//! again after publishing and after unmasking) must pass.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::Arc;
use loom::thread;
use std::cell::Cell;
use std::time::Instant;
use vmbus_ring::sync::Ordering;
use vmbus_ring::{LoomRingMemory, RingError, RingReader, RingWriter, Signal};

/// An in-band packet with this payload: 16 bytes of descriptor, the
/// payload, then the 8-byte trailer: 32 bytes of ring.
const PAYLOAD: [u8; 8] = *b"vmbus-lm";
const FOOTPRINT: usize = 32;
const PREEMPTION_BOUND: usize = 3;

std::thread_local! {
    /// How many executions this test's model explored (for the report).
    /// Per test thread: loom runs every execution on the test's own thread.
    static EXECUTIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_execution() {
    EXECUTIONS.with(|count| count.set(count.get() + 1));
}

fn executions() -> usize {
    EXECUTIONS.with(Cell::get)
}

fn check(name: &str, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTION_BOUND);
    EXECUTIONS.with(|count| count.set(0));
    let started = Instant::now();
    builder.check(move || {
        count_execution();
        model();
    });
    println!(
        "loom {name}: {} executions in {:.2} s, no violation",
        executions(),
        started.elapsed().as_secs_f64()
    );
}

/// Run a model that must fail; return its panic message.
fn expect_violation(name: &str, model: impl Fn() + Sync + Send + 'static) -> String {
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(PREEMPTION_BOUND);
        EXECUTIONS.with(|count| count.set(0));
        builder.check(move || {
            count_execution();
            model();
        });
    }));
    let payload = result.expect_err("loom found no violation in a model that has one");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    println!(
        "loom {name}: violation found after {} executions in {:.2} s: {message}",
        executions(),
        started.elapsed().as_secs_f64()
    );
    message
}

/// A sticky wakeup (an interrupt, a seL4 notification): a signal sent while
/// the other side is awake is not lost, its next wait returns at once. A
/// count of signals the sleeper compares with the count it has seen: the
/// sleeper only loads, so its spinning adds no stores to loom's bounded
/// store history.
#[derive(Default)]
struct Wakeup {
    sent: AtomicUsize,
}

impl Wakeup {
    fn signal(&self) {
        self.sent.fetch_add(1, Ordering::AcqRel);
    }
    fn take(&self, seen: &mut usize) -> bool {
        let sent = self.sent.load(Ordering::Acquire);
        let new = sent > *seen;
        *seen = sent;
        new
    }
    /// Sleep until signalled (true) or until `peer_done` is set with no
    /// signal pending (false: nothing will ever wake us).
    fn sleep(&self, seen: &mut usize, peer_done: &AtomicBool) -> bool {
        loop {
            if self.take(seen) {
                return true;
            }
            if peer_done.load(Ordering::Acquire) {
                // Everything the peer did happened before this load.
                return self.take(seen);
            }
            thread::yield_now();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadLoop {
    /// Before issue 10: read until empty, publish, sleep.
    Old,
    /// Read until empty, publish, look again; sleep only on an empty ring.
    Fixed,
    /// Masked while draining; publish, look again, unmask, look again.
    FixedMasked,
    /// Masked while draining, unmasked before sleeping, but no look after
    /// the unmask: packets written while masked produced no signal.
    MaskedNoRecheck,
}

/// The guest's side of the host-to-guest ring: one wakeup's worth of work.
/// Returns when the loop decides to sleep.
fn poll(
    reader: &mut RingReader<Arc<LoomRingMemory>>,
    received: &mut usize,
    published: &AtomicUsize,
    read_loop: ReadLoop,
) {
    let masked = matches!(read_loop, ReadLoop::FixedMasked | ReadLoop::MaskedNoRecheck);
    let mut buffer = [0u8; 64];
    // Bounded: each pass either reads a packet or ends the poll, and a
    // pass that only re-checks follows a packet the writer wrote.
    loop {
        if masked {
            reader.mask_interrupts().unwrap();
        }
        while let Some(info) = reader.try_read(&mut buffer).unwrap() {
            assert_eq!(&buffer[16..info.len], &PAYLOAD[..], "packet bytes");
            *received += 1;
        }
        // Ghost state before the publication it describes, so a writer
        // that sees the published index also sees this.
        published.fetch_max(*received, Ordering::AcqRel);
        // This host writer does not use flow control: never a signal.
        assert_eq!(reader.finish_batch().unwrap(), Signal(false));
        match read_loop {
            ReadLoop::Old => return,
            ReadLoop::Fixed => {
                if !reader.has_data().unwrap() {
                    return;
                }
            }
            ReadLoop::FixedMasked => {
                if reader.has_data().unwrap() {
                    continue;
                }
                if !reader.unmask_interrupts().unwrap() {
                    return;
                }
            }
            ReadLoop::MaskedNoRecheck => {
                let _ = reader.unmask_interrupts().unwrap();
                return;
            }
        }
    }
}

/// The host writes `packets` packets back to back into a ring that holds
/// them all and signals when the ring says so; the guest polls once (as
/// after open) and then sleeps until signalled. With `batch` > 1 the host
/// publishes once per `batch` packets (`begin_batch`/`publish`).
fn lost_wakeup_model(read_loop: ReadLoop, packets: usize) {
    lost_wakeup_model_batched(read_loop, packets, 1)
}

fn lost_wakeup_model_batched(read_loop: ReadLoop, packets: usize, batch: usize) {
    let memory = Arc::new(LoomRingMemory::new(FOOTPRINT * (packets + 1)));
    let mut writer = RingWriter::new(memory.clone(), false).unwrap();
    let mut reader = RingReader::new(memory).unwrap();
    let wakeup = Arc::new(Wakeup::default());
    let writer_done = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));

    let host = {
        let wakeup = wakeup.clone();
        let writer_done = writer_done.clone();
        let published = published.clone();
        thread::spawn(move || {
            let mut k = 0;
            while k < packets {
                // The first packet this publication makes visible.
                let first = k;
                let Signal(signal) = if batch > 1 {
                    writer.begin_batch();
                    while k < (first + batch).min(packets) {
                        let unpublished = writer.write_in_band(k as u64, false, &PAYLOAD);
                        assert_eq!(unpublished, Ok(Signal(false)), "a write in a batch");
                        k += 1;
                    }
                    writer.publish().unwrap()
                } else {
                    k += 1;
                    writer.write_in_band(first as u64, false, &PAYLOAD).unwrap()
                };
                if signal {
                    // An RMW reads the latest value: what the reader had
                    // published by the time the writer read its index.
                    let consumed = published.fetch_add(0, Ordering::AcqRel);
                    assert!(
                        consumed >= first,
                        "forbidden signal: packet {first} signalled while the reader \
                         had published only {consumed} packets"
                    );
                    wakeup.signal();
                }
            }
            writer_done.store(true, Ordering::Release);
        })
    };

    let mut received = 0;
    let mut seen = 0;
    loop {
        poll(&mut reader, &mut received, &published, read_loop);
        if !wakeup.sleep(&mut seen, &writer_done) {
            break;
        }
    }
    host.join().unwrap();
    assert_eq!(
        received,
        packets,
        "lost wakeup: the reader sleeps for good with {} packets unread",
        packets - received
    );
}

/// The guest writes three packets into a ring that holds two, with
/// pending_send_sz; the host reads two, publishing after each, and signals
/// when `finish_batch` says so. A writer that found the ring full sleeps
/// until signalled. With `at_most_one_signal`, also checks that the space
/// freed crossing the writer's pending_send_sz is signalled at most once.
fn flow_control_model(at_most_one_signal: bool) {
    let memory = Arc::new(LoomRingMemory::new(FOOTPRINT * 3));
    let mut writer = RingWriter::new(memory.clone(), true).unwrap();
    let mut reader = RingReader::new(memory).unwrap();
    let space = Arc::new(Wakeup::default());
    let reader_done = Arc::new(AtomicBool::new(false));
    let reader_signals = Arc::new(AtomicUsize::new(0));

    let host = {
        let space = space.clone();
        let reader_done = reader_done.clone();
        let reader_signals = reader_signals.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 64];
            for _ in 0..2 {
                // The first two packets never wait for space: bounded.
                loop {
                    if reader.try_read(&mut buffer).unwrap().is_some() {
                        break;
                    }
                    thread::yield_now();
                }
                let Signal(signal) = reader.finish_batch().unwrap();
                if signal {
                    reader_signals.fetch_add(1, Ordering::AcqRel);
                    space.signal();
                }
            }
            reader_done.store(true, Ordering::Release);
        })
    };

    let mut waits = 0;
    let mut seen = 0;
    for k in 0..3u64 {
        loop {
            match writer.write_in_band(k, false, &PAYLOAD) {
                // The reader polls; it needs no signal.
                Ok(_) => break,
                Err(RingError::Full { .. }) => {
                    waits += 1;
                    assert!(waits <= 1, "the writer waited twice for one packet's space");
                    if !space.sleep(&mut seen, &reader_done) {
                        panic!(
                            "lost wakeup: the writer sleeps for good waiting for space \
                             the reader has freed ({} bytes free)",
                            writer.free_space().unwrap()
                        );
                    }
                }
                Err(error) => panic!("write: {error:?}"),
            }
        }
    }
    host.join().unwrap();
    let signals = reader_signals.load(Ordering::Acquire);
    // Only the third packet can find the ring full, and the space crosses
    // its pending_send_sz once: a second signal is one the rules forbid.
    assert!(
        !at_most_one_signal || signals <= 1,
        "forbidden signal: {signals} space signals for one wait"
    );
}

#[test]
fn old_read_loop_loses_a_wakeup() {
    let message = expect_violation("old read loop", || lost_wakeup_model(ReadLoop::Old, 2));
    assert!(
        message.contains("lost wakeup"),
        "unexpected failure: {message}"
    );
}

#[test]
fn masked_loop_without_a_look_after_unmask_loses_a_wakeup() {
    let message = expect_violation("masked loop, no re-check after unmask", || {
        lost_wakeup_model(ReadLoop::MaskedNoRecheck, 2)
    });
    assert!(
        message.contains("lost wakeup"),
        "unexpected failure: {message}"
    );
}

#[test]
fn fixed_read_loop_never_loses_a_wakeup() {
    check("fixed read loop, 3 packets", || {
        lost_wakeup_model(ReadLoop::Fixed, 3)
    });
}

#[test]
fn fixed_masked_read_loop_never_loses_a_wakeup() {
    check("fixed masked read loop, 3 packets", || {
        lost_wakeup_model(ReadLoop::FixedMasked, 3)
    });
}

/// The batch API: two packets published at once, then one more; the
/// signal decision is made once per publication, against the batch's
/// first packet.
#[test]
fn batched_writer_never_loses_a_wakeup() {
    check("batched writer (2 + 1), fixed read loop", || {
        lost_wakeup_model_batched(ReadLoop::Fixed, 3, 2)
    });
}

#[test]
fn batched_writer_never_loses_a_wakeup_masked() {
    check("batched writer (2 + 1), fixed masked read loop", || {
        lost_wakeup_model_batched(ReadLoop::FixedMasked, 3, 2)
    });
}

#[test]
fn full_writer_never_stalls() {
    check("pending_send_sz, 3 packets into a 2-packet ring", || {
        flow_control_model(false)
    });
}

/// Found by this model: `finish_batch` loads pending_send_sz before the
/// write index. A writer that set pending_send_sz, then found space on its
/// second look, clears it, writes and publishes; a reader that loaded the
/// stale pending_send_sz and then the new write index sees the space
/// "cross" again and signals a second time, for no wait. Loading the write
/// index first (the Acquire load then also sees the cleared
/// pending_send_sz) makes this pass, as `finish_batch` now does.
#[test]
fn full_writer_is_signalled_at_most_once() {
    check("pending_send_sz, one signal per wait", || {
        flow_control_model(true)
    });
}
