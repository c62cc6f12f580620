//! OpenVMM's ring as a `ring_bench` contender (series `openvmm`).
//!
//! OpenVMM's `vmbus_ring` is not part of this repository (public code is
//! reference only here): `cargo xtask bench --openvmm DIR` builds this file
//! into a generated crate under `target/ring-compare/` together with the
//! crate at DIR (a clone's `vm/devices/vmbus/vmbus_ring`, built with
//! `default-features = false`), imported as `openvmm_ring`
//! (tools/xtask/src/ring_compare.rs). This file is ours; it only calls
//! OpenVMM's public API.
//!
//! The rules are those of our ring in the same run: the writer publishes its
//! write index per packet (`write` + `commit_write` for every packet) and
//! spins while the ring is full; the reader publishes its read index once
//! per batch of up to `READ_BATCH` packets and `READ_BATCH_BYTES` bytes
//! (`commit_read`) or when the ring looks empty, with the interrupt mask
//! clear, and copies every payload into private memory. Both call the
//! harness's `backoff()` before looking again at a full (writer) or empty
//! (reader) ring, the polling policy every contender shares. Both run over the harness's double-mapped memory,
//! so OpenVMM's `RingMem` here is a thin view of that memory (`SharedRing`).

use openvmm_ring::{
    IncomingRing, OutgoingPacket, OutgoingPacketType, OutgoingRing, ReadError, Ring, RingMem,
    WriteError, CONTROL_WORD_COUNT,
};
use ring_bench::{backoff, stamp, stamp_of, Contender, READ_BATCH, READ_BATCH_BYTES};
use std::cell::Cell;
use std::sync::atomic::AtomicU32;
use vmbus_ring::{DoubleMappedRingMemory, RingMemory};
use zerocopy::IntoBytes;

/// The contender: OpenVMM's `OutgoingRing` writing, its `IncomingRing`
/// reading.
pub struct OpenVmmRing;

/// The size of a VMBus packet descriptor, the only 16-byte aligned read
/// OpenVMM's `parse_packet` makes.
const DESCRIPTOR_LEN: usize = 16;

/// OpenVMM's `RingMem` over our double-mapped ring memory.
///
/// `read_at`/`write_at` are one bulk copy each: OpenVMM allows `addr +
/// len` up to twice the data length, and the double mapping makes that
/// whole span addressable, so no copy is split at the end of the ring.
///
/// The payload's place: with `default-features = false` OpenVMM's
/// `RingRange` has no public offset or reader (those come with its
/// `guestmem` adapters), so `read_aligned` notes where the descriptor it
/// just read says the payload starts (descriptor offset + `data_offset8` *
/// 8, the computation of OpenVMM's `parse_packet`), and the reader copies
/// the payload from there with `read_at`, as OpenVMM's `RingRangeReader`
/// does.
struct SharedRing<'a> {
    memory: &'a DoubleMappedRingMemory,
    last_payload_offset: Cell<usize>,
}

impl<'a> SharedRing<'a> {
    fn new(memory: &'a DoubleMappedRingMemory) -> Self {
        Self {
            memory,
            last_payload_offset: Cell::new(0),
        }
    }
}

impl RingMem for SharedRing<'_> {
    fn control(&self) -> &[AtomicU32; CONTROL_WORD_COUNT] {
        self.memory.control_words()
    }

    fn read_at(&self, addr: usize, data: &mut [u8]) {
        self.memory
            .read_data(addr, data)
            .expect("OpenVMM reads within the double mapping");
    }

    fn read_aligned(&self, addr: usize, data: &mut [u8]) {
        self.read_at(addr, data);
        if data.len() == DESCRIPTOR_LEN {
            let data_offset8 = u16::from_le_bytes([data[2], data[3]]);
            self.last_payload_offset
                .set(addr + usize::from(data_offset8) * 8);
        }
    }

    fn write_at(&self, addr: usize, data: &[u8]) {
        self.memory
            .write_data(addr, data)
            .expect("OpenVMM writes within the double mapping");
    }

    fn len(&self) -> usize {
        self.memory.data_len()
    }
}

impl Contender for OpenVmmRing {
    fn name(&self) -> &'static str {
        "openvmm"
    }

    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        // `RingRange::write_aligned_full` (the payload write available
        // without OpenVMM's guestmem adapters) takes whole 8-byte words.
        assert!(
            size.is_multiple_of(8),
            "the openvmm contender needs payload sizes that are multiples of 8, not {size}"
        );
        let ring = OutgoingRing::new(SharedRing::new(memory)).expect("OpenVMM outgoing ring");
        let mut offset = ring.outgoing().expect("OpenVMM outgoing offset");
        let mut payload = vec![0x5A5A_5A5A_5A5A_5A5Au64; size / 8];
        let mut signals = 0;
        for index in 0..packets {
            stamp(payload.as_mut_slice().as_mut_bytes(), index);
            let packet = OutgoingPacket {
                transaction_id: index,
                size,
                typ: OutgoingPacketType::InBandNoCompletion,
            };
            let range = loop {
                match ring.write(&mut offset, &packet) {
                    Ok(range) => break range,
                    Err(WriteError::Full(_)) => backoff(),
                    Err(error) => panic!("OpenVMM ring write: {error}"),
                }
            };
            range.write_aligned_full(&ring, &payload);
            if ring.commit_write(&mut offset) {
                signals += 1;
            }
        }
        signals
    }

    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let ring = IncomingRing::new(SharedRing::new(memory)).expect("OpenVMM incoming ring");
        // OpenVMM's reader starts masked; the benchmark's rule is unmasked.
        ring.set_interrupt_mask(false);
        let mut offset = ring.incoming().expect("OpenVMM incoming offset");
        let mut private = vec![0u8; size];
        let (mut received, mut sum) = (0u64, 0u64);
        while received < packets {
            let (mut batch, mut batch_bytes) = (0, 0);
            while batch < READ_BATCH && batch_bytes < READ_BATCH_BYTES && received < packets {
                match ring.read(&mut offset) {
                    Ok(packet) => {
                        let len = packet.payload.len();
                        assert_eq!(len, size, "OpenVMM payload length");
                        let memory = ring.mem();
                        memory.read_at(memory.last_payload_offset.get(), &mut private[..len]);
                        sum = sum.wrapping_add(stamp_of(&private));
                        received += 1;
                        batch += 1;
                        batch_bytes += len;
                    }
                    Err(ReadError::Empty) => break,
                    Err(error) => panic!("OpenVMM ring read: {error}"),
                }
            }
            // The signal (writer waiting for space) needs no action: the
            // writer spins.
            let _signal = ring.commit_read(&mut offset);
            if batch == 0 {
                backoff();
            }
        }
        sum
    }
}
