//! The contenders this crate brings: the cross-core copy limit and our ring.

use crate::{backoff, stamp, stamp_of, Contender, DATA_LEN, READ_BATCH};
use std::sync::atomic::Ordering;
use vmbus_ring::{DoubleMappedRingMemory, RingError, RingMemory, RingReader, RingWriter};

/// The physical limit: the writer copies each payload into the shared data
/// area, the reader copies it out into private memory, with no packet
/// format and no per-packet indices. The only synchronisation is two block
/// counters on separate cache lines of the control page: the data area is
/// cut into slots of max(16 KiB, one packet); the writer fills a slot with
/// whole packets and publishes "blocks written" (Release), the reader waits
/// for it (Acquire), copies the slot's packets out and publishes "blocks
/// read". Each side keeps the other's counter and reloads it only when it
/// has to wait, so synchronisation costs one cache-line transfer per 16 KiB
/// and the time is the cross-core data transfer itself.
pub struct CrossCoreCopy;

pub(crate) const CROSS_CORE_COPY_NOTE: &str = "cross-core copy: writer copies payloads into the shared data area, reader copies them out; no packet format, synchronised by two block counters on separate cache lines, published once per 16 KiB slot (or per packet above 16 KiB), each reloaded only when its reader must wait";

const BLOCKS_WRITTEN: usize = 0x0;
const BLOCKS_READ: usize = 0x80;
const SLOT_BYTES: usize = 16 * 1024;

struct Slots {
    bytes: usize,
    count: u32,
    packets: u64,
}

fn slots(size: usize) -> Slots {
    let bytes = size.max(SLOT_BYTES);
    Slots {
        bytes,
        count: (DATA_LEN / bytes) as u32,
        packets: (bytes / size) as u64,
    }
}

impl Contender for CrossCoreCopy {
    fn name(&self) -> &'static str {
        "cross-core copy"
    }

    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let slots = slots(size);
        let written = memory.control(BLOCKS_WRITTEN).expect("control word");
        let read = memory.control(BLOCKS_READ).expect("control word");
        let mut payload = vec![0x5Au8; size];
        let (mut block, mut read_seen, mut sent) = (0u32, 0u32, 0u64);
        while sent < packets {
            while block.wrapping_sub(read_seen) >= slots.count {
                backoff();
                read_seen = read.load(Ordering::Acquire);
            }
            let base = (block % slots.count) as usize * slots.bytes;
            let count = slots.packets.min(packets - sent);
            for k in 0..count {
                stamp(&mut payload, sent + k);
                memory
                    .write_data(base + k as usize * size, &payload)
                    .expect("in bounds");
            }
            sent += count;
            block = block.wrapping_add(1);
            written.store(block, Ordering::Release);
        }
        0
    }

    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64 {
        let slots = slots(size);
        let written = memory.control(BLOCKS_WRITTEN).expect("control word");
        let read = memory.control(BLOCKS_READ).expect("control word");
        let mut private = vec![0u8; size];
        let (mut block, mut written_seen, mut received, mut sum) = (0u32, 0u32, 0u64, 0u64);
        while received < packets {
            while written_seen == block {
                backoff();
                written_seen = written.load(Ordering::Acquire);
            }
            let base = (block % slots.count) as usize * slots.bytes;
            let count = slots.packets.min(packets - received);
            for k in 0..count {
                memory
                    .read_data(base + k as usize * size, &mut private)
                    .expect("in bounds");
                sum = sum.wrapping_add(stamp_of(&private));
            }
            received += count;
            block = block.wrapping_add(1);
            read.store(block, Ordering::Release);
        }
        sum
    }
}

/// Our ring (`vmbus_ring`), flow control on as in every channel: the
/// writer publishes the write index per packet and spins on a full ring;
/// the reader drains up to [`READ_BATCH`] packets per `finish_batch`.
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
            Err(RingError::Full { needed, .. }) => {
                while writer.free_space()? <= needed {
                    backoff();
                }
            }
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
/// fence, one signal decision) once per this many packets, and before it
/// waits on a full ring. The reader is the same as for [`Ours`].
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
            while index < end {
                stamp(&mut payload, index);
                match writer.write_in_band(index, false, &payload) {
                    Ok(_) => index += 1,
                    Err(RingError::Full { needed, .. }) => {
                        // Publish what the reader must read to make space.
                        let _ = writer.publish().expect("publish");
                        while writer.free_space().expect("read index") <= needed {
                            backoff();
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
        let mut batch = 0;
        while batch < READ_BATCH && received < packets {
            match reader.try_read(&mut private).expect("read") {
                Some(_) => {
                    sum = sum.wrapping_add(stamp_of(&private[PAYLOAD_OFFSET..]));
                    received += 1;
                    batch += 1;
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
