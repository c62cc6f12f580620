//! Ring writer and reader.
//!
//! Each side keeps its own index in private memory and only ever stores it
//! to the control page; the peer's index is loaded and validated (below the
//! data size, a multiple of 8) on every load, so a peer that scribbles on
//! either index gets an error, never an out-of-bounds access.
//!
//! Each side also keeps the last peer index it loaded and reloads it only
//! when that value runs out (the writer when the ring looks full, the
//! reader when it looks empty): a stale read index only understates the
//! free space, a stale write index only understates the data, so the cache
//! is always safe, and it saves a cross-core cache-line transfer per packet.
//! The loads the signalling rules need are never served from the cache.

use crate::memory::{MemoryError, RingMemory};
use crate::sync::{fence, AtomicU32, Ordering};
use vmbus_protocol::packet::{
    self, control, descriptor_for, GpaDirectHeader, GpaRangeHeader, Packet, PacketDescriptor,
    PacketError, PacketType, DESCRIPTOR_SIZE, PAGE_SIZE, TRAILER_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    Read,
    Write,
    PendingSendSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The data area is not a non-zero multiple of 8 that fits in a u32.
    BadDataSize,
    /// An index in the control page is out of range or not a multiple of 8:
    /// the peer is broken or hostile; the channel should be torn down.
    CorruptIndex {
        which: IndexKind,
        value: u32,
    },
    /// Not enough free space now; `pending_send_sz` was set when flow
    /// control is on, so the reader will signal when it frees enough.
    Full {
        needed: usize,
        free: usize,
    },
    /// A packet that can never fit this ring.
    TooLarge {
        needed: usize,
    },
    /// The caller's buffer is smaller than the next packet (not consumed).
    BufferTooSmall {
        needed: usize,
    },
    /// The packet claims more bytes than the writer has published.
    Truncated {
        claimed: usize,
        available: usize,
    },
    /// The copied packet failed validation (it has been consumed).
    BadPacket(PacketError),
    /// A GPA range the writer was asked to describe is malformed.
    BadRange,
    Memory,
}

impl From<MemoryError> for RingError {
    fn from(_: MemoryError) -> Self {
        RingError::Memory
    }
}

/// Whether to signal the peer after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Signal(pub bool);

fn data_size<M: RingMemory>(memory: &M) -> Result<u32, RingError> {
    let len = memory.data_len();
    if len == 0 || !len.is_multiple_of(8) || len > u32::MAX as usize {
        return Err(RingError::BadDataSize);
    }
    Ok(len as u32)
}

#[inline(always)]
fn load_index(word: &AtomicU32, size: u32, which: IndexKind) -> Result<u32, RingError> {
    let value = word.load(Ordering::Acquire);
    if value >= size || !value.is_multiple_of(8) {
        return Err(RingError::CorruptIndex { which, value });
    }
    Ok(value)
}

/// Bytes in use from `read` to `write`.
#[inline(always)]
fn used(read: u32, write: u32, size: u32) -> u32 {
    if write >= read {
        write - read
    } else {
        size - read + write
    }
}

/// `index + len` in a ring of `size` bytes. Every caller moves by less than
/// the ring size, so one subtraction does (no division on the hot path).
#[inline(always)]
fn advance(index: u32, len: usize, size: u32) -> u32 {
    let size = size as u64;
    let mut sum = index as u64 + len as u64;
    if sum >= size {
        sum -= size;
        if sum >= size {
            sum %= size;
        }
    }
    sum as u32
}

/// Copy out of the ring at `offset`, wrapping at the end.
#[inline(always)]
fn copy_out<M: RingMemory>(
    memory: &M,
    size: u32,
    offset: u32,
    out: &mut [u8],
) -> Result<(), RingError> {
    let offset = offset as usize;
    let size = size as usize;
    if out.len() > size {
        return Err(RingError::Memory);
    }
    let first = (size - offset).min(out.len());
    if memory.double_mapped() || first == out.len() {
        memory.read_data(offset, out)?;
    } else {
        let (head, tail) = out.split_at_mut(first);
        memory.read_data(offset, head)?;
        memory.read_data(0, tail)?;
    }
    Ok(())
}

#[inline(always)]
fn copy_in<M: RingMemory>(
    memory: &M,
    size: u32,
    offset: u32,
    data: &[u8],
) -> Result<(), RingError> {
    let offset = offset as usize;
    let size = size as usize;
    let first = (size - offset).min(data.len());
    if memory.double_mapped() || first == data.len() {
        memory.write_data(offset, data)?;
    } else {
        memory.write_data(offset, &data[..first])?;
        memory.write_data(0, &data[first..])?;
    }
    Ok(())
}

/// One GPA range to describe in a GPA-direct packet.
#[derive(Clone, Copy, Debug)]
pub struct GpaRange<'a> {
    pub byte_offset: u32,
    pub byte_count: u32,
    pub pfns: &'a [u64],
}

/// The writing end of a ring.
pub struct RingWriter<M: RingMemory> {
    memory: M,
    size: u32,
    write_index: u32,
    /// The reader's index as last loaded (validated); behind or equal to
    /// the real one.
    read_seen: u32,
    flow_control: bool,
    pending_set: bool,
    /// Inside a batch: where its first unpublished packet starts.
    batch_start: Option<u32>,
    signals: u64,
}

impl<M: RingMemory> RingWriter<M> {
    /// Attach to a ring whose control page the owner has initialised
    /// (zeroed before sharing). `flow_control` announces pending_send_sz
    /// support in feature_bits.
    pub fn new(memory: M, flow_control: bool) -> Result<Self, RingError> {
        let size = data_size(&memory)?;
        let write_index = load_index(
            memory.control(control::WRITE_INDEX)?,
            size,
            IndexKind::Write,
        )?;
        let read_seen = load_index(memory.control(control::READ_INDEX)?, size, IndexKind::Read)?;
        let features = memory.control(control::FEATURE_BITS)?;
        if flow_control {
            features.fetch_or(control::FEATURE_PENDING_SEND_SZ, Ordering::Release);
        } else {
            features.fetch_and(!control::FEATURE_PENDING_SEND_SZ, Ordering::Release);
        }
        Ok(Self {
            memory,
            size,
            write_index,
            read_seen,
            flow_control,
            pending_set: false,
            batch_start: None,
            signals: 0,
        })
    }

    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// How many writes asked for a signal so far.
    pub fn signals(&self) -> u64 {
        self.signals
    }

    /// Free bytes now (loads and validates the read index).
    #[inline]
    pub fn free_space(&mut self) -> Result<usize, RingError> {
        self.read_seen = load_index(
            self.memory.control(control::READ_INDEX)?,
            self.size,
            IndexKind::Read,
        )?;
        Ok(self.free_space_seen())
    }

    /// Free bytes by the read index last loaded (a lower bound).
    #[inline(always)]
    fn free_space_seen(&self) -> usize {
        (self.size - used(self.read_seen, self.write_index, self.size)) as usize
    }

    /// The largest packet (len8 * 8 bytes) this ring can ever hold.
    pub fn max_packet_len(&self) -> usize {
        self.size as usize - TRAILER_SIZE - 8
    }

    #[inline]
    pub fn write_in_band(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        payload: &[u8],
    ) -> Result<Signal, RingError> {
        let descriptor = descriptor_for(
            PacketType::InBand,
            0,
            payload.len(),
            transaction_id,
            completion_requested,
        )
        .ok_or(RingError::TooLarge {
            needed: payload.len(),
        })?;
        self.write_parts(&descriptor, &[], payload)
    }

    #[inline]
    pub fn write_completion(
        &mut self,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<Signal, RingError> {
        let descriptor = descriptor_for(
            PacketType::Completion,
            0,
            payload.len(),
            transaction_id,
            false,
        )
        .ok_or(RingError::TooLarge {
            needed: payload.len(),
        })?;
        self.write_parts(&descriptor, &[], payload)
    }

    /// GPA-direct with one single-page range per buffer: each `(gpa, len)`
    /// must lie within one page.
    pub fn write_gpa_direct_buffers(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        buffers: &[(u64, u32)],
        payload: &[u8],
    ) -> Result<Signal, RingError> {
        const MAX_BUFFERS: usize = 64;
        if buffers.len() > MAX_BUFFERS {
            return Err(RingError::BadRange);
        }
        let mut pfns = [0u64; MAX_BUFFERS];
        let mut ranges: heapless::Vec<GpaRange<'_>, MAX_BUFFERS> = heapless::Vec::new();
        for (slot, &(gpa, _)) in pfns.iter_mut().zip(buffers) {
            *slot = gpa / PAGE_SIZE as u64;
        }
        for (i, &(gpa, len)) in buffers.iter().enumerate() {
            let byte_offset = (gpa % PAGE_SIZE as u64) as u32;
            if len == 0 || byte_offset as usize + len as usize > PAGE_SIZE {
                return Err(RingError::BadRange);
            }
            let _ = ranges.push(GpaRange {
                byte_offset,
                byte_count: len,
                pfns: &pfns[i..i + 1],
            });
        }
        self.write_gpa_direct(transaction_id, completion_requested, &ranges, payload)
    }

    /// GPA-direct with any ranges (one multi-page buffer is one range).
    pub fn write_gpa_direct(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        ranges: &[GpaRange<'_>],
        payload: &[u8],
    ) -> Result<Signal, RingError> {
        if ranges.is_empty() {
            return Err(RingError::BadRange);
        }
        let mut header_len = core::mem::size_of::<GpaDirectHeader>();
        for range in ranges {
            if range.byte_count == 0
                || range.byte_offset as usize >= PAGE_SIZE
                || packet::pfn_count(range.byte_offset, range.byte_count) != Some(range.pfns.len())
            {
                return Err(RingError::BadRange);
            }
            header_len += 8 + 8 * range.pfns.len();
        }
        let descriptor = descriptor_for(
            PacketType::GpaDirect,
            header_len,
            payload.len(),
            transaction_id,
            completion_requested,
        )
        .ok_or(RingError::TooLarge { needed: header_len })?;
        let header = GpaDirectHeader {
            reserved: 0.into(),
            range_count: (ranges.len() as u32).into(),
        };
        // The range list is written piece by piece at the right offsets.
        self.write_with(&descriptor, header_len, payload, |writer, mut cursor| {
            writer.put(&mut cursor, header.as_bytes())?;
            for range in ranges {
                let range_header = GpaRangeHeader {
                    byte_count: range.byte_count.into(),
                    byte_offset: range.byte_offset.into(),
                };
                writer.put(&mut cursor, range_header.as_bytes())?;
                for pfn in range.pfns {
                    writer.put(&mut cursor, &pfn.to_le_bytes())?;
                }
            }
            Ok(())
        })
    }

    /// A packet of any type: descriptor, a type-specific header, payload.
    #[inline]
    pub fn write_parts(
        &mut self,
        descriptor: &PacketDescriptor,
        extra_header: &[u8],
        payload: &[u8],
    ) -> Result<Signal, RingError> {
        self.write_with(
            descriptor,
            extra_header.len(),
            payload,
            |writer, mut cursor| writer.put(&mut cursor, extra_header),
        )
    }

    #[inline(always)]
    fn put(&self, cursor: &mut u32, bytes: &[u8]) -> Result<(), RingError> {
        copy_in(&self.memory, self.size, *cursor, bytes)?;
        *cursor = advance(*cursor, bytes.len(), self.size);
        Ok(())
    }

    #[inline]
    fn write_with(
        &mut self,
        descriptor: &PacketDescriptor,
        extra_header_len: usize,
        payload: &[u8],
        write_extra: impl FnOnce(&Self, u32) -> Result<(), RingError>,
    ) -> Result<Signal, RingError> {
        let packet_len = descriptor.len8.get() as usize * 8;
        let footprint = packet_len + TRAILER_SIZE;
        if footprint >= self.size as usize {
            return Err(RingError::TooLarge { needed: footprint });
        }
        // The writer never fills the ring completely: equal indices mean
        // empty. The cached read index first; reload only if it is not
        // enough.
        let mut free = self.free_space_seen();
        if free <= footprint {
            free = self.free_space()?;
        }
        if free <= footprint {
            if !self.flow_control {
                return Err(RingError::Full {
                    needed: footprint,
                    free,
                });
            }
            self.memory
                .control(control::PENDING_SEND_SZ)?
                .store(footprint as u32, Ordering::Release);
            self.pending_set = true;
            // The reader may have freed space before it could see
            // pending_send_sz: look again before giving up.
            fence(Ordering::SeqCst);
            free = self.free_space()?;
            if free <= footprint {
                return Err(RingError::Full {
                    needed: footprint,
                    free,
                });
            }
        }
        if self.pending_set {
            self.memory
                .control(control::PENDING_SEND_SZ)?
                .store(0, Ordering::Release);
            self.pending_set = false;
        }

        let start = self.write_index;
        let mut cursor = start;
        self.put(&mut cursor, descriptor.as_bytes())?;
        write_extra(self, cursor)?;
        cursor = advance(start, DESCRIPTOR_SIZE + extra_header_len, self.size);
        self.put(&mut cursor, payload)?;
        let written = DESCRIPTOR_SIZE + extra_header_len + payload.len();
        let padding = packet_len - written;
        // Padding only when the payload needs it (a copy of a fixed 8
        // bytes is a single store; one of a variable length is a call).
        if padding != 0 {
            self.put(&mut cursor, &[0u8; 8][..padding])?;
        }
        let trailer = (start as u64) << 32;
        self.put(&mut cursor, &trailer.to_le_bytes())?;

        self.write_index = cursor;
        if self.batch_start.is_some() {
            return Ok(Signal(false));
        }
        self.publish_from(start)
    }

    /// Start a batch: the packets written until [`RingWriter::publish`]
    /// are copied into the ring but not published (each write returns
    /// `Signal(false)`), and `publish` makes them visible at once, with one
    /// fence and one signal decision. The protocol allows it: the reader
    /// may sleep only on a ring it found empty at the published index, so
    /// "empty before this write" is "empty before the batch's first
    /// packet". A write that returns `RingError::Full` during a batch
    /// leaves the batch open: call `publish` (and signal if it says so)
    /// before waiting for space, or the reader never sees the packets it
    /// would free space by reading.
    #[inline]
    pub fn begin_batch(&mut self) {
        if self.batch_start.is_none() {
            self.batch_start = Some(self.write_index);
        }
    }

    /// Publish the packets written since [`RingWriter::begin_batch`] and end
    /// the batch; says whether to signal the reader. Without a batch (or an
    /// empty one) there is nothing to publish.
    #[inline]
    pub fn publish(&mut self) -> Result<Signal, RingError> {
        match self.batch_start.take() {
            Some(start) if start != self.write_index => self.publish_from(start),
            _ => Ok(Signal(false)),
        }
    }

    /// Publish the write index for the packets from `start` on, and decide
    /// the signal.
    #[inline]
    fn publish_from(&mut self, start: u32) -> Result<Signal, RingError> {
        // Data before index (Release), then a full fence so the loads of
        // interrupt_mask and read_index below cannot be satisfied before
        // the reader can see the new index.
        self.memory
            .control(control::WRITE_INDEX)?
            .store(self.write_index, Ordering::Release);
        fence(Ordering::SeqCst);
        if self
            .memory
            .control(control::INTERRUPT_MASK)?
            .load(Ordering::Acquire)
            != 0
        {
            return Ok(Signal(false));
        }
        // Signal only on empty -> non-empty: the reader had consumed
        // everything up to where these packets start.
        let read = load_index(
            self.memory.control(control::READ_INDEX)?,
            self.size,
            IndexKind::Read,
        )?;
        self.read_seen = read;
        let signal = read == start;
        if signal {
            self.signals += 1;
        }
        Ok(Signal(signal))
    }
}

/// A packet read by [`RingReader::try_read`]: where it was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadInfo {
    /// Bytes of the caller's buffer used (len8 * 8).
    pub len: usize,
}

/// The reading end of a ring.
pub struct RingReader<M: RingMemory> {
    memory: M,
    size: u32,
    /// Our read position (private; published by `finish_batch`).
    read_index: u32,
    /// The read index last published, i.e. the start of the current batch.
    published: u32,
    /// The writer's index as last loaded (validated); behind or equal to
    /// the real one.
    write_seen: u32,
    signals: u64,
}

impl<M: RingMemory> RingReader<M> {
    pub fn new(memory: M) -> Result<Self, RingError> {
        let size = data_size(&memory)?;
        let read_index = load_index(memory.control(control::READ_INDEX)?, size, IndexKind::Read)?;
        Ok(Self {
            memory,
            size,
            read_index,
            published: read_index,
            write_seen: read_index,
            signals: 0,
        })
    }

    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// How many batches asked for a signal so far.
    pub fn signals(&self) -> u64 {
        self.signals
    }

    #[inline]
    fn write_index(&self) -> Result<u32, RingError> {
        load_index(
            self.memory.control(control::WRITE_INDEX)?,
            self.size,
            IndexKind::Write,
        )
    }

    /// Whether unread data is waiting (beyond this batch's position).
    pub fn has_data(&self) -> Result<bool, RingError> {
        Ok(self.write_index()? != self.read_index)
    }

    /// Copy the next packet into `out` (copy, then validate the copy) and
    /// move the private read position past it. Nothing is published until
    /// [`RingReader::finish_batch`]. `Ok(None)`: the ring is empty.
    ///
    /// A packet that fails validation is consumed and reported, so one bad
    /// packet does not wedge the ring.
    #[inline]
    pub fn try_read(&mut self, out: &mut [u8]) -> Result<Option<ReadInfo>, RingError> {
        if self.write_seen == self.read_index {
            self.write_seen = self.write_index()?;
            if self.write_seen == self.read_index {
                return Ok(None);
            }
        }
        let write = self.write_seen;
        let available = used(self.read_index, write, self.size) as usize;
        let mut first = [0u8; DESCRIPTOR_SIZE];
        if available < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(RingError::Truncated {
                claimed: DESCRIPTOR_SIZE + TRAILER_SIZE,
                available,
            });
        }
        copy_out(&self.memory, self.size, self.read_index, &mut first)?;
        let len8 = u16::from_le_bytes([first[4], first[5]]);
        let packet_len = len8 as usize * 8;
        let footprint = packet_len + TRAILER_SIZE;
        if packet_len < DESCRIPTOR_SIZE {
            // Too short to be a packet at all: the position of the next one
            // cannot be trusted, so this is not skippable.
            return Err(RingError::BadPacket(PacketError::LengthBeforeOffset));
        }
        if footprint > available {
            return Err(RingError::Truncated {
                claimed: footprint,
                available,
            });
        }
        let Some(private) = out.get_mut(..packet_len) else {
            return Err(RingError::BufferTooSmall { needed: packet_len });
        };
        // The descriptor is read once: the bytes validated above are the
        // ones the caller gets, so the length we advance by is the one the
        // copy states without reading (and comparing) the descriptor again.
        let (descriptor, rest) = private.split_at_mut(DESCRIPTOR_SIZE);
        descriptor.copy_from_slice(&first);
        copy_out(
            &self.memory,
            self.size,
            advance(self.read_index, DESCRIPTOR_SIZE, self.size),
            rest,
        )?;
        self.read_index = advance(self.read_index, footprint, self.size);
        packet::parse_packet(private).map_err(RingError::BadPacket)?;
        Ok(Some(ReadInfo { len: packet_len }))
    }

    /// Read and validate in one step, returning the parsed view of the copy.
    pub fn read_packet<'a>(&mut self, out: &'a mut [u8]) -> Result<Option<Packet<'a>>, RingError> {
        match self.try_read(out)? {
            None => Ok(None),
            Some(info) => packet::parse_packet(&out[..info.len])
                .map(Some)
                .map_err(RingError::BadPacket),
        }
    }

    /// Publish the read position once for everything read since the last
    /// call. Returns whether the writer must be signalled: only when it
    /// announced pending_send_sz support, asked for space, and this batch
    /// made free space cross that size.
    #[inline]
    pub fn finish_batch(&mut self) -> Result<Signal, RingError> {
        if self.read_index == self.published {
            return Ok(Signal(false));
        }
        let previous = self.published;
        self.memory
            .control(control::READ_INDEX)?
            .store(self.read_index, Ordering::Release);
        self.published = self.read_index;
        fence(Ordering::SeqCst);
        let features = self
            .memory
            .control(control::FEATURE_BITS)?
            .load(Ordering::Acquire);
        if features & control::FEATURE_PENDING_SEND_SZ == 0 {
            return Ok(Signal(false));
        }
        // The write index first: a writer clears pending_send_sz before it
        // publishes the packet that used the space, so with this Acquire
        // load a published write seen here also means its cleared
        // pending_send_sz is seen below (loading them the other way round
        // signalled a second time for one wait; the loom model found it).
        let write = self.write_index()?;
        self.write_seen = write;
        let pending = self
            .memory
            .control(control::PENDING_SEND_SZ)?
            .load(Ordering::Acquire);
        if pending == 0 {
            return Ok(Signal(false));
        }
        if pending >= self.size {
            return Err(RingError::CorruptIndex {
                which: IndexKind::PendingSendSize,
                value: pending,
            });
        }
        let free_before = self.size - used(previous, write, self.size);
        let free_now = self.size - used(self.read_index, write, self.size);
        // The writer needs strictly more than `pending` free bytes.
        let signal = free_before <= pending && free_now > pending;
        if signal {
            self.signals += 1;
        }
        Ok(Signal(signal))
    }

    /// Ask the writer not to signal (we are polling).
    pub fn mask_interrupts(&self) -> Result<(), RingError> {
        self.memory
            .control(control::INTERRUPT_MASK)?
            .store(1, Ordering::Release);
        Ok(())
    }

    /// Ask the writer to signal again, then look once more: a packet written
    /// while the mask was set produced no signal. Returns true if the caller
    /// must not sleep: data is waiting, or reads are not yet published with
    /// [`RingReader::finish_batch`] (the writer compares against the
    /// published index, so it would never signal a reader asleep on an
    /// unpublished batch).
    pub fn unmask_interrupts(&self) -> Result<bool, RingError> {
        self.memory
            .control(control::INTERRUPT_MASK)?
            .store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(self.read_index != self.published || self.has_data()?)
    }
}

/// Zero a ring's control page indices (the owner does this before sharing).
pub fn reset_control<M: RingMemory>(memory: &M) -> Result<(), RingError> {
    for offset in [
        control::WRITE_INDEX,
        control::READ_INDEX,
        control::INTERRUPT_MASK,
        control::PENDING_SEND_SZ,
        control::FEATURE_BITS,
    ] {
        memory.control(offset)?.store(0, Ordering::Release);
    }
    Ok(())
}

/// Read the descriptor of a packet copied by [`RingReader::try_read`].
pub fn descriptor_of(packet: &[u8]) -> Option<PacketDescriptor> {
    PacketDescriptor::read_from_prefix(packet)
        .ok()
        .map(|(d, _)| d)
}
