//! The contenders this crate brings: the cross-core copy limit and our ring.

use crate::{backoff, stamp, stamp_of, Contender, DATA_LEN, READ_BATCH, READ_BATCH_BYTES};
use std::hint::spin_loop;
use std::sync::atomic::Ordering;
use vmbus_ring::{DoubleMappedRingMemory, RingError, RingMemory, RingReader, RingWriter};

/// The physical limit: the writer copies each payload into the shared data
/// area, the reader copies it out into private memory, with no packet
/// format and no per-packet indices. The only synchronisation is two slot
/// counters on separate cache lines of the control page: the data area is
/// cut into 16 KiB slots; the writer fills a slot (with whole packets, or
/// with a 16 KiB piece of a larger packet) and publishes "slots written"
/// (Release), the reader waits for it (Acquire), copies the slot out and
/// publishes "slots read". Each side keeps the other's counter and reloads
/// it only when it has to wait, so synchronisation costs one cache-line
/// transfer per 16 KiB and the time is the cross-core data transfer
/// itself. It waits with a bare `spin_loop` (no [`backoff`]): a limit must
/// not be slowed by a polling policy, and it waits rarely.
pub struct CrossCoreCopy;

pub(crate) const CROSS_CORE_COPY_NOTE: &str = "cross-core copy: writer copies payloads into the shared data area, reader copies them out; no packet format, synchronised by two slot counters on separate cache lines, published once per 16 KiB slot (packets above 16 KiB are copied in 16 KiB pieces), each reloaded only when its reader must wait";

const SLOTS_WRITTEN: usize = 0x0;
const SLOTS_READ: usize = 0x80;
const SLOT_BYTES: usize = 16 * 1024;
const SLOT_COUNT: u32 = (DATA_LEN / SLOT_BYTES) as u32;

/// How a stream of `size`-byte packets is cut into copies: `piece` bytes
/// per copy (a packet, or a slot-sized piece of one), `per_packet` copies
/// per packet, `per_slot` copies per slot.
struct Cut {
    piece: usize,
    per_packet: u64,
    per_slot: u64,
}

fn cut(size: usize) -> Cut {
    let piece = size.min(SLOT_BYTES);
    Cut {
        piece,
        per_packet: size.div_ceil(piece) as u64,
        per_slot: (SLOT_BYTES / piece) as u64,
    }
}

impl Contender for CrossCoreCopy {
    fn name(&self) -> &'static str {
        "cross-core copy"
    }

    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let cut = cut(size);
        let written = memory.control(SLOTS_WRITTEN).expect("control word");
        let read = memory.control(SLOTS_READ).expect("control word");
        let mut payload = vec![0x5Au8; size];
        let copies = packets * cut.per_packet;
        let (mut slot, mut read_seen, mut done) = (0u32, 0u32, 0u64);
        while done < copies {
            while slot.wrapping_sub(read_seen) >= SLOT_COUNT {
                spin_loop();
                read_seen = read.load(Ordering::Acquire);
            }
            let base = (slot % SLOT_COUNT) as usize * SLOT_BYTES;
            let count = cut.per_slot.min(copies - done);
            for k in 0..count {
                let copy = done + k;
                let part = (copy % cut.per_packet) as usize * cut.piece;
                if part == 0 {
                    stamp(&mut payload, copy / cut.per_packet);
                }
                let end = (part + cut.piece).min(size);
                memory
                    .write_data(base + k as usize * cut.piece, &payload[part..end])
                    .expect("in bounds");
            }
            done += count;
            slot = slot.wrapping_add(1);
            written.store(slot, Ordering::Release);
        }
        0
    }

    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let cut = cut(size);
        let written = memory.control(SLOTS_WRITTEN).expect("control word");
        let read = memory.control(SLOTS_READ).expect("control word");
        let mut private = vec![0u8; size];
        let copies = packets * cut.per_packet;
        let (mut slot, mut written_seen, mut done, mut sum) = (0u32, 0u32, 0u64, 0u64);
        while done < copies {
            while written_seen == slot {
                spin_loop();
                written_seen = written.load(Ordering::Acquire);
            }
            let base = (slot % SLOT_COUNT) as usize * SLOT_BYTES;
            let count = cut.per_slot.min(copies - done);
            for k in 0..count {
                let copy = done + k;
                let part = (copy % cut.per_packet) as usize * cut.piece;
                let end = (part + cut.piece).min(size);
                memory
                    .read_data(base + k as usize * cut.piece, &mut private[part..end])
                    .expect("in bounds");
                if end == size {
                    sum = sum.wrapping_add(stamp_of(&private));
                }
            }
            done += count;
            slot = slot.wrapping_add(1);
            read.store(slot, Ordering::Release);
        }
        sum
    }
}

/// Our ring (`vmbus_ring`), flow control on as in every channel: the
/// writer publishes the write index per packet and spins on a full ring;
/// the reader drains up to [`READ_BATCH`] packets (and
/// [`READ_BATCH_BYTES`]) per `finish_batch`.
pub struct Ours;

/// Where the payload starts in an in-band packet (after the descriptor).
const PAYLOAD_OFFSET: usize = 16;

fn write_one(
    writer: &mut RingWriter<&DoubleMappedRingMemory>,
    index: u64,
    payload: &[u8],
) -> Result<(), RingError> {
    loop {
        match writer.write_in_band(index, false, payload) {
            Ok(_signal) => return Ok(()),
            // As every contender's writer: wait, then look again.
            Err(RingError::Full { needed, .. }) => loop {
                backoff();
                if writer.free_space()? > needed {
                    break;
                }
            },
            Err(other) => return Err(other),
        }
    }
}

impl Contender for Ours {
    fn name(&self) -> &'static str {
        "ours"
    }

    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let mut writer = RingWriter::new(memory, true).expect("ring writer");
        let mut payload = vec![0x5Au8; size];
        for index in 0..packets {
            stamp(&mut payload, index);
            write_one(&mut writer, index, &payload).expect("write");
        }
        writer.signals()
    }

    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        read_ours(memory, size, packets)
    }
}

/// Our ring with the batch API: the writer publishes its write index (one
/// fence, one signal decision) once per this many packets (and at least
/// once per [`READ_BATCH_BYTES`]), and before it waits on a full ring. The reader is the same as for [`Ours`].
pub struct OursPublishingEvery(pub u64);

impl Contender for OursPublishingEvery {
    fn name(&self) -> &'static str {
        match self.0 {
            16 => "ours, publish per 16",
            _ => "ours, batched publish",
        }
    }

    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let mut writer = RingWriter::new(memory, true).expect("ring writer");
        let mut payload = vec![0x5Au8; size];
        let mut index = 0;
        while index < packets {
            writer.begin_batch();
            let end = (index + self.0).min(packets);
            let mut batch_bytes = 0;
            while index < end && batch_bytes < READ_BATCH_BYTES {
                batch_bytes += size;
                stamp(&mut payload, index);
                match writer.write_in_band(index, false, &payload) {
                    Ok(_) => index += 1,
                    Err(RingError::Full { needed, .. }) => {
                        // Publish what the reader must read to make space.
                        let _ = writer.publish().expect("publish");
                        loop {
                            backoff();
                            if writer.free_space().expect("read index") > needed {
                                break;
                            }
                        }
                        writer.begin_batch();
                    }
                    Err(other) => panic!("write: {other:?}"),
                }
            }
            let _ = writer.publish().expect("publish");
        }
        writer.signals()
    }

    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        read_ours(memory, size, packets)
    }
}

fn read_ours(memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
    let mut reader = RingReader::new(memory).expect("ring reader");
    let mut private = vec![0u8; size + 64];
    let (mut received, mut sum) = (0u64, 0u64);
    while received < packets {
        let (mut batch, mut batch_bytes) = (0, 0);
        while batch < READ_BATCH && batch_bytes < READ_BATCH_BYTES && received < packets {
            match reader.try_read(&mut private).expect("read") {
                Some(info) => {
                    sum = sum.wrapping_add(stamp_of(&private[PAYLOAD_OFFSET..]));
                    received += 1;
                    batch += 1;
                    // Payload bytes, as every contender counts its batch.
                    batch_bytes += info.len - PAYLOAD_OFFSET;
                }
                None => break,
            }
        }
        // The signal (writer waiting for space) needs no action: it spins.
        let _ = reader.finish_batch().expect("publish");
        if batch == 0 {
            backoff();
        }
    }
    sum
}
