//! A single-producer, single-consumer queue of variable-length messages in
//! a shared region, in the style of sDDF's queues.
//!
//! Ownership rule: a slot belongs to the producer from the moment the
//! consumer advances `head` past it until the producer advances `tail` past
//! it again, and to the consumer in between. Each side writes only its own
//! index and its own "wake me" flag; everything read from the other side is
//! validated (the peer is another component and may be faulty).
//!
//! Signal suppression with a double check: a side about to sleep sets its
//! flag, issues a full fence and looks at the queue again; the other side
//! signals only if it sees the flag set after publishing its index. So no
//! wake-up is lost and no signal is sent while the peer is busy anyway.
//!
//! Layout (offsets in the region): `tail` u32 at 0 (producer), `head` u32
//! at 64 (consumer), `consumer_wants_signal` u32 at 128,
//! `producer_wants_signal` u32 at 192, slots from 256, each
//! `slot_size` bytes: a u32 length then the payload.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{Region, RegionError};
use core::sync::atomic::{fence, AtomicU32, Ordering};

const TAIL: usize = 0;
const HEAD: usize = 64;
const CONSUMER_WANTS_SIGNAL: usize = 128;
const PRODUCER_WANTS_SIGNAL: usize = 192;
const SLOTS: usize = 256;
const LENGTH_FIELD: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The region cannot hold the header and at least two slots.
    RegionTooSmall,
    /// The message is longer than a slot's payload.
    MessageTooLong,
    /// The queue is full (producer) — try again after a signal.
    Full,
    /// The peer wrote an impossible index or length.
    PeerCorrupted,
    Region(RegionError),
}

impl From<RegionError> for QueueError {
    fn from(error: RegionError) -> Self {
        QueueError::Region(error)
    }
}

struct Shape {
    region: Region,
    slot_size: usize,
    capacity: u32,
}

impl Shape {
    fn new(region: Region, slot_size: usize) -> Result<Shape, QueueError> {
        let slot_size = (slot_size.max(LENGTH_FIELD + 1) + 7) & !7;
        let capacity = region.len().saturating_sub(SLOTS) / slot_size;
        if capacity < 2 {
            return Err(QueueError::RegionTooSmall);
        }
        Ok(Shape {
            region,
            slot_size,
            capacity: capacity.min(u32::MAX as usize / 2) as u32,
        })
    }
    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region
            .atomic_u32(offset)
            .expect("header offsets fit: checked in Shape::new")
    }
    fn slot_offset(&self, index: u32) -> usize {
        SLOTS + (index % self.capacity) as usize * self.slot_size
    }
    fn payload_capacity(&self) -> usize {
        self.slot_size - LENGTH_FIELD
    }
}

/// The producing side.
pub struct Producer {
    shape: Shape,
    /// Our own tail: never re-read from shared memory.
    tail: u32,
}

impl Producer {
    /// `slot_size` must be the same on both sides. The producer resets the
    /// queue: call this before the consumer starts using it.
    pub fn new(region: Region, slot_size: usize) -> Result<Producer, QueueError> {
        let shape = Shape::new(region, slot_size)?;
        let tail = shape.word(TAIL).load(Ordering::Acquire);
        Ok(Producer { shape, tail })
    }

    pub fn capacity(&self) -> u32 {
        self.shape.capacity
    }
    pub fn max_message(&self) -> usize {
        self.shape.payload_capacity()
    }

    /// Slots free right now (the consumer may free more meanwhile): what a
    /// server checks before taking on work whose answers must fit.
    pub fn free(&self) -> Result<u32, QueueError> {
        Ok(self.shape.capacity - self.used()?)
    }

    fn used(&self) -> Result<u32, QueueError> {
        let head = self.shape.word(HEAD).load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.shape.capacity {
            return Err(QueueError::PeerCorrupted);
        }
        Ok(used)
    }

    /// Append a message. On `Full` the producer has asked for a signal when
    /// space frees up (and re-checked, so the signal cannot be missed).
    pub fn push(&mut self, message: &[u8]) -> Result<(), QueueError> {
        if message.len() > self.shape.payload_capacity() {
            return Err(QueueError::MessageTooLong);
        }
        if self.used()? == self.shape.capacity {
            self.shape
                .word(PRODUCER_WANTS_SIGNAL)
                .store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.used()? == self.shape.capacity {
                return Err(QueueError::Full);
            }
            self.shape
                .word(PRODUCER_WANTS_SIGNAL)
                .store(0, Ordering::Relaxed);
        }
        let offset = self.shape.slot_offset(self.tail);
        self.shape
            .region
            .write_bulk(offset + LENGTH_FIELD, message)?;
        self.shape
            .region
            .write_bulk(offset, &(message.len() as u32).to_le_bytes())?;
        self.tail = self.tail.wrapping_add(1);
        self.shape.word(TAIL).store(self.tail, Ordering::Release);
        Ok(())
    }

    /// After a batch of pushes: whether the consumer asked to be signalled.
    /// Clears the request, so call it once and notify if it says so.
    pub fn consumer_needs_signal(&mut self) -> bool {
        fence(Ordering::SeqCst);
        self.shape
            .word(CONSUMER_WANTS_SIGNAL)
            .swap(0, Ordering::AcqRel)
            != 0
    }
}

/// The consuming side.
pub struct Consumer {
    shape: Shape,
    head: u32,
}

impl Consumer {
    pub fn new(region: Region, slot_size: usize) -> Result<Consumer, QueueError> {
        let shape = Shape::new(region, slot_size)?;
        let head = shape.word(HEAD).load(Ordering::Acquire);
        Ok(Consumer { shape, head })
    }

    fn available(&self) -> Result<u32, QueueError> {
        let tail = self.shape.word(TAIL).load(Ordering::Acquire);
        let available = tail.wrapping_sub(self.head);
        if available > self.shape.capacity {
            return Err(QueueError::PeerCorrupted);
        }
        Ok(available)
    }

    /// Copy the next message out into `out`; returns its length, or `None`
    /// if the queue is empty.
    pub fn pop(&mut self, out: &mut [u8]) -> Result<Option<usize>, QueueError> {
        if self.available()? == 0 {
            return Ok(None);
        }
        let offset = self.shape.slot_offset(self.head);
        let mut length = [0u8; LENGTH_FIELD];
        self.shape.region.read_bulk(offset, &mut length)?;
        let length = u32::from_le_bytes(length) as usize;
        if length > self.shape.payload_capacity() || length > out.len() {
            return Err(QueueError::PeerCorrupted);
        }
        self.shape
            .region
            .read_bulk(offset + LENGTH_FIELD, &mut out[..length])?;
        self.head = self.head.wrapping_add(1);
        self.shape.word(HEAD).store(self.head, Ordering::Release);
        Ok(Some(length))
    }

    /// Before sleeping on an empty queue: ask for a signal, then look again.
    /// Returns `true` if it is safe to sleep (still empty), `false` if
    /// messages arrived meanwhile (the request is withdrawn).
    pub fn prepare_to_sleep(&mut self) -> Result<bool, QueueError> {
        self.shape
            .word(CONSUMER_WANTS_SIGNAL)
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.available()? == 0 {
            return Ok(true);
        }
        self.shape
            .word(CONSUMER_WANTS_SIGNAL)
            .store(0, Ordering::Relaxed);
        Ok(false)
    }

    /// After a batch of pops: whether the producer is waiting for space.
    pub fn producer_needs_signal(&mut self) -> bool {
        fence(Ordering::SeqCst);
        self.shape
            .word(PRODUCER_WANTS_SIGNAL)
            .swap(0, Ordering::AcqRel)
            != 0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Set 64-bit word `index` of the region as a (corrupt) peer would.
    fn set_word(region: Region, index: usize, value: u64) {
        region.write(index * 8, &value.to_le_bytes()).unwrap();
    }

    #[test]
    fn messages_arrive_in_order_and_signals_are_suppressed() {
        let memory = Region::leaked(4096);
        let mut producer = Producer::new(memory, 64).unwrap();
        let mut consumer = Consumer::new(memory, 64).unwrap();
        assert_eq!(producer.capacity(), (4096 - 256) / 64);
        // Consumer finds nothing and goes to sleep: exactly one signal needed.
        let mut out = [0u8; 64];
        assert_eq!(consumer.pop(&mut out), Ok(None));
        assert_eq!(consumer.prepare_to_sleep(), Ok(true));
        producer.push(b"one").unwrap();
        producer.push(b"two").unwrap();
        assert!(producer.consumer_needs_signal());
        assert!(!producer.consumer_needs_signal(), "one signal per sleep");
        assert_eq!(consumer.pop(&mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"one");
        assert_eq!(consumer.pop(&mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"two");
        assert_eq!(consumer.pop(&mut out), Ok(None));
    }

    #[test]
    fn a_full_queue_asks_for_space_and_the_consumer_is_told() {
        let memory = Region::leaked(4096);
        let mut producer = Producer::new(memory, 64).unwrap();
        let mut consumer = Consumer::new(memory, 64).unwrap();
        let capacity = producer.capacity();
        for i in 0..capacity {
            producer.push(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(producer.push(b"x"), Err(QueueError::Full));
        assert_eq!(producer.free(), Ok(0));
        let mut out = [0u8; 64];
        assert_eq!(consumer.pop(&mut out), Ok(Some(4)));
        assert!(consumer.producer_needs_signal());
        assert_eq!(producer.free(), Ok(1));
        producer.push(b"x").unwrap();
        assert_eq!(producer.push(b"y"), Err(QueueError::Full));
    }

    #[test]
    fn a_corrupt_peer_index_is_an_error_not_a_crash() {
        let memory = Region::leaked(4096);
        let mut consumer = Consumer::new(memory, 64).unwrap();
        set_word(memory, 0, 1000); // tail far beyond capacity
        let mut out = [0u8; 64];
        assert_eq!(consumer.pop(&mut out), Err(QueueError::PeerCorrupted));
        set_word(memory, 0, 1);
        set_word(memory, 32, 0); // slot 0 length set below
        let mut consumer = Consumer::new(memory, 64).unwrap();
        set_word(memory, 256 / 8, 10_000); // length beyond a slot
        assert_eq!(consumer.pop(&mut out), Err(QueueError::PeerCorrupted));
        assert_eq!(
            Producer::new(memory.subregion(0, 40 * 8).unwrap(), 64).err(),
            Some(QueueError::RegionTooSmall)
        );
    }

    #[test]
    fn two_threads_stream_without_loss() {
        let memory = Region::leaked(8192);
        let shared = memory;
        let mut producer = Producer::new(shared, 32).unwrap();
        let count = 100_000u32;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut consumer = Consumer::new(shared, 32).unwrap();
                let mut expected = 0u32;
                let mut out = [0u8; 32];
                while expected < count {
                    match consumer.pop(&mut out).unwrap() {
                        Some(4) => {
                            assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), expected);
                            expected += 1;
                        }
                        Some(other) => panic!("length {other}"),
                        None => std::hint::spin_loop(),
                    }
                }
            });
            let mut next = 0u32;
            while next < count {
                match producer.push(&next.to_le_bytes()) {
                    Ok(()) => next += 1,
                    Err(QueueError::Full) => std::hint::spin_loop(),
                    Err(other) => panic!("{other:?}"),
                }
            }
        });
    }
}
