//! The networks behind the simulated NIC: where the frames the guest sends
//! go, and where the frames it receives come from.
//!
//! The NIC host ([`crate::channel::network`]) speaks NVSP/RNDIS with the
//! guest and hands plain Ethernet II frames (no FCS) to a [`NetBackend`].
//! Hosted, a backend is a TAP device or a user-space network on loopback
//! sockets; in the seL4 image, QEMU's NE2000; in unit tests and benchmarks,
//! [`MemoryNet`].
//!
//! A backend is called from the host's poll loop only; it must never block.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;

/// Where the simulated NIC's frames go: a real network (TAP), a user-space
/// network on loopback sockets, QEMU's NE2000, or memory (tests).
pub trait NetBackend {
    /// A frame the guest sent (Ethernet II, no FCS). May drop (counted).
    fn transmit(&mut self, frame: &[u8]);
    /// The next frame for the guest, copied into `buf`; its length.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Called from the host's poll loop: do I/O, return whether anything moved.
    fn poll(&mut self) -> bool {
        false
    }
}

/// A backend as the NIC host keeps it.
pub type BoxedNetBackend = Box<dyn NetBackend + Send>;

impl<B: NetBackend + ?Sized> NetBackend for Box<B> {
    fn transmit(&mut self, frame: &[u8]) {
        (**self).transmit(frame)
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        (**self).receive(buf)
    }
    fn poll(&mut self) -> bool {
        (**self).poll()
    }
}

/// The largest frame [`MemoryNet`] accepts from either side: a VLAN-tagged
/// 9000-byte jumbo frame with its header. Anything longer is not Ethernet.
pub const MEMORY_NET_MAX_FRAME: usize = 9018 + 4;

/// Frames each [`MemoryNet`] queue holds by default before it drops.
pub const MEMORY_NET_DEFAULT_CAPACITY: usize = 1024;

/// What a [`MemoryNet`] does with the frames the guest sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFrames {
    /// Keep them for [`MemoryNetHandle::take_sent`] (tests).
    Keep,
    /// Count them and forget them (`--net none`, a benchmark's sink).
    Discard,
    /// Hand each straight back to the guest (a wire looped back on itself).
    Reflect,
}

/// What a [`MemoryNet`] counted; the NIC host counts its own protocol
/// errors separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryNetCounters {
    /// Frames (and their bytes) the guest sent, kept or not.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Guest frames dropped: the keep queue full, or not a frame (empty or
    /// longer than [`MEMORY_NET_MAX_FRAME`]).
    pub tx_dropped: u64,
    /// Frames (and their bytes) handed to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames for the guest dropped: the queue full when injected, not a
    /// frame, or longer than the buffer the NIC host offered.
    pub rx_dropped: u64,
}

/// A frame repeated for the guest: the benchmark's generator.
struct Generator {
    frame: Vec<u8>,
    remaining: u64,
}

struct Queues {
    capacity: usize,
    guest_frames: GuestFrames,
    to_guest: VecDeque<Vec<u8>>,
    from_guest: VecDeque<Vec<u8>>,
    generator: Option<Generator>,
    counters: MemoryNetCounters,
}

impl Queues {
    fn queue_for_guest(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty()
            || frame.len() > MEMORY_NET_MAX_FRAME
            || self.to_guest.len() >= self.capacity
        {
            self.counters.rx_dropped += 1;
            return false;
        }
        self.to_guest.push_back(frame.to_vec());
        true
    }
}

/// An in-memory network: two bounded queues of frames, one each way, and
/// any number of [`MemoryNetHandle`]s to the other end of the wire.
pub struct MemoryNet {
    queues: Arc<Mutex<Queues>>,
}

/// The far end of a [`MemoryNet`]'s wire, for a test or a benchmark.
/// Cheap to clone; every clone sees the same queues.
#[derive(Clone)]
pub struct MemoryNetHandle {
    queues: Arc<Mutex<Queues>>,
}

impl MemoryNet {
    /// A network that keeps up to `capacity` frames each way.
    pub fn new(capacity: usize, guest_frames: GuestFrames) -> (MemoryNet, MemoryNetHandle) {
        let queues = Arc::new(Mutex::new(Queues {
            capacity,
            guest_frames,
            to_guest: VecDeque::new(),
            from_guest: VecDeque::new(),
            generator: None,
            counters: MemoryNetCounters::default(),
        }));
        (
            MemoryNet {
                queues: queues.clone(),
            },
            MemoryNetHandle { queues },
        )
    }

    /// The default network: nothing attached, what the guest sends is
    /// counted and dropped.
    pub fn discarding() -> MemoryNet {
        MemoryNet::new(MEMORY_NET_DEFAULT_CAPACITY, GuestFrames::Discard).0
    }

    pub fn handle(&self) -> MemoryNetHandle {
        MemoryNetHandle {
            queues: self.queues.clone(),
        }
    }
}

impl NetBackend for MemoryNet {
    fn transmit(&mut self, frame: &[u8]) {
        let mut queues = self.queues.lock();
        if frame.is_empty() || frame.len() > MEMORY_NET_MAX_FRAME {
            queues.counters.tx_dropped += 1;
            return;
        }
        queues.counters.tx_frames += 1;
        queues.counters.tx_bytes += frame.len() as u64;
        match queues.guest_frames {
            GuestFrames::Discard => {}
            GuestFrames::Keep => {
                if queues.from_guest.len() >= queues.capacity {
                    queues.counters.tx_dropped += 1;
                } else {
                    queues.from_guest.push_back(frame.to_vec());
                }
            }
            GuestFrames::Reflect => {
                queues.queue_for_guest(frame);
            }
        }
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut queues = self.queues.lock();
        let queues = &mut *queues;
        // Queued frames first, then the generator's. A frame that does not
        // fit is dropped; the loop is bounded by the queue's length.
        while let Some(frame) = queues.to_guest.pop_front() {
            if frame.len() > buf.len() {
                queues.counters.rx_dropped += 1;
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            queues.counters.rx_frames += 1;
            queues.counters.rx_bytes += frame.len() as u64;
            return Some(frame.len());
        }
        let generator = queues.generator.as_mut()?;
        let len = generator.frame.len();
        if len > buf.len() {
            // The same frame would never fit: drop them all at once.
            queues.counters.rx_dropped += generator.remaining;
            queues.generator = None;
            return None;
        }
        buf[..len].copy_from_slice(&generator.frame);
        generator.remaining -= 1;
        if generator.remaining == 0 {
            queues.generator = None;
        }
        queues.counters.rx_frames += 1;
        queues.counters.rx_bytes += len as u64;
        Some(len)
    }
}

impl MemoryNetHandle {
    /// Queues `frame` for the guest; false (and counted) if the queue is
    /// full or `frame` is not a frame.
    pub fn push_to_guest(&self, frame: &[u8]) -> bool {
        self.queues.lock().queue_for_guest(frame)
    }

    /// The oldest frame the guest sent that was kept ([`GuestFrames::Keep`]).
    pub fn take_sent(&self) -> Option<Vec<u8>> {
        self.queues.lock().from_guest.pop_front()
    }

    /// Frames waiting for the guest (queued, not generated).
    pub fn pending_to_guest(&self) -> usize {
        self.queues.lock().to_guest.len()
    }

    /// Frames the guest sent that wait for [`MemoryNetHandle::take_sent`].
    pub fn pending_from_guest(&self) -> usize {
        self.queues.lock().from_guest.len()
    }

    /// Hands the guest `count` copies of `frame` once the queued frames
    /// are gone (replacing an unfinished generator). False if `frame` is
    /// not a frame.
    pub fn generate(&self, frame: &[u8], count: u64) -> bool {
        if frame.is_empty() || frame.len() > MEMORY_NET_MAX_FRAME {
            return false;
        }
        self.queues.lock().generator = (count > 0).then(|| Generator {
            frame: frame.to_vec(),
            remaining: count,
        });
        true
    }

    /// Generated frames not yet handed to the guest.
    pub fn generator_remaining(&self) -> u64 {
        self.queues
            .lock()
            .generator
            .as_ref()
            .map_or(0, |generator| generator.remaining)
    }

    pub fn set_guest_frames(&self, guest_frames: GuestFrames) {
        self.queues.lock().guest_frames = guest_frames;
    }

    pub fn counters(&self) -> MemoryNetCounters {
        self.queues.lock().counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fill: u8, len: usize) -> Vec<u8> {
        alloc::vec![fill; len]
    }

    #[test]
    fn frames_cross_both_ways_in_order() {
        let (mut net, handle) = MemoryNet::new(8, GuestFrames::Keep);
        net.transmit(&frame(1, 60));
        net.transmit(&frame(2, 1514));
        assert_eq!(handle.take_sent(), Some(frame(1, 60)));
        assert_eq!(handle.take_sent(), Some(frame(2, 1514)));
        assert_eq!(handle.take_sent(), None);

        assert!(handle.push_to_guest(&frame(3, 64)));
        assert!(handle.push_to_guest(&frame(4, 100)));
        let mut buf = [0u8; 1514];
        assert_eq!(net.receive(&mut buf), Some(64));
        assert_eq!(&buf[..64], &frame(3, 64)[..]);
        assert_eq!(net.receive(&mut buf), Some(100));
        assert_eq!(&buf[..100], &frame(4, 100)[..]);
        assert_eq!(net.receive(&mut buf), None);

        let counters = handle.counters();
        assert_eq!((counters.tx_frames, counters.tx_bytes), (2, 1574));
        assert_eq!((counters.rx_frames, counters.rx_bytes), (2, 164));
        assert_eq!((counters.tx_dropped, counters.rx_dropped), (0, 0));
    }

    #[test]
    fn full_queues_and_non_frames_are_dropped_and_counted() {
        let (mut net, handle) = MemoryNet::new(2, GuestFrames::Keep);
        for fill in 0..3 {
            net.transmit(&frame(fill, 60));
        }
        net.transmit(&[]);
        net.transmit(&frame(9, MEMORY_NET_MAX_FRAME + 1));
        assert_eq!(handle.pending_from_guest(), 2);
        assert_eq!(handle.counters().tx_dropped, 3);
        assert_eq!(handle.counters().tx_frames, 3);

        assert!(handle.push_to_guest(&frame(1, 60)));
        assert!(handle.push_to_guest(&frame(2, 60)));
        assert!(!handle.push_to_guest(&frame(3, 60)));
        assert!(!handle.push_to_guest(&[]));
        assert_eq!(handle.counters().rx_dropped, 2);
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_dropped_not_cut() {
        let (mut net, handle) = MemoryNet::new(4, GuestFrames::Keep);
        handle.push_to_guest(&frame(1, 200));
        handle.push_to_guest(&frame(2, 50));
        let mut buf = [0u8; 100];
        assert_eq!(net.receive(&mut buf), Some(50));
        assert_eq!(buf[0], 2);
        assert_eq!(handle.counters().rx_dropped, 1);
    }

    #[test]
    fn the_generator_follows_the_queue_and_stops_at_its_count() {
        let (mut net, handle) = MemoryNet::new(4, GuestFrames::Discard);
        handle.push_to_guest(&frame(1, 60));
        assert!(handle.generate(&frame(7, 1514), 3));
        let mut buf = [0u8; 2048];
        assert_eq!(net.receive(&mut buf), Some(60));
        for _ in 0..3 {
            assert_eq!(net.receive(&mut buf), Some(1514));
            assert_eq!(buf[1513], 7);
        }
        assert_eq!(net.receive(&mut buf), None);
        assert_eq!(handle.generator_remaining(), 0);
        assert_eq!(handle.counters().rx_frames, 4);
    }

    #[test]
    fn discard_counts_and_reflect_loops_back() {
        let (mut net, handle) = MemoryNet::new(4, GuestFrames::Discard);
        net.transmit(&frame(1, 60));
        assert_eq!(handle.take_sent(), None);
        assert_eq!(handle.counters().tx_frames, 1);

        handle.set_guest_frames(GuestFrames::Reflect);
        net.transmit(&frame(5, 70));
        let mut buf = [0u8; 128];
        assert_eq!(net.receive(&mut buf), Some(70));
        assert_eq!(buf[69], 5);
    }

    #[test]
    fn boxed_backends_forward() {
        let (net, handle) = MemoryNet::new(4, GuestFrames::Keep);
        let mut boxed: BoxedNetBackend = Box::new(net);
        boxed.transmit(&frame(1, 60));
        assert!(!boxed.poll());
        assert_eq!(handle.take_sent(), Some(frame(1, 60)));
    }
}
