//! GPADLs (guest physical address descriptor lists): building the
//! GpadlHeader + GpadlBody messages that describe a list of pages, assembling
//! them again on the host side, and the guest's bookkeeping of which GPADL
//! ids exist and when their memory may be reused (only after GpadlTorndown).

use crate::messages::{
    GpadlBody, GpadlBodyMessage, GpadlCreated, GpadlHeader, GpadlHeaderMessage, GpadlTeardown,
    GpadlTorndown, VmbusMessage, GPADL_BODY_MAX_PFNS, GPADL_HEADER_MAX_PFNS, MAX_MESSAGE_SIZE,
};
use crate::packet::{pfn_count, PAGE_SIZE};
use zerocopy::IntoBytes;

/// A message ready to post: up to 240 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    bytes: [u8; MAX_MESSAGE_SIZE],
    len: usize,
}

impl OutgoingMessage {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    fn push(&mut self, data: &[u8]) {
        self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }
    fn new() -> Self {
        Self {
            bytes: [0; MAX_MESSAGE_SIZE],
            len: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlError {
    NoPages,
    /// byte_offset/byte_count do not span exactly the PFNs given.
    RangeDoesNotMatchPages,
    /// More pages than the 16-bit range_buflen can describe.
    TooManyPages,
    /// A body for another GPADL, or more words than announced.
    UnexpectedBody,
    /// The assembled ranges contradict range_count/range_buflen.
    MalformedRanges,
    /// More words than the assembler's capacity.
    CapacityExceeded,
}

/// The most PFNs one single-range GPADL can name: range_buflen is a u16
/// holding 8 bytes of range header plus 8 per PFN.
pub const MAX_SINGLE_RANGE_PFNS: usize = (u16::MAX as usize - 8) / 8;

/// The GpadlHeader and GpadlBody messages for one range of pages, produced
/// one at a time (no allocation). A clone resumes where the original is.
#[derive(Clone, Debug)]
pub struct GpadlMessages<'a> {
    child_relid: u32,
    gpadl_id: u32,
    byte_offset: u32,
    byte_count: u32,
    pfns: Pfns<'a>,
    next_pfn: usize,
    header_sent: bool,
    body_number: u32,
}

/// The pages a GPADL names: a list, or a run of consecutive frames (a
/// region of any size, without a list of its PFNs in memory).
#[derive(Clone, Copy, Debug)]
enum Pfns<'a> {
    List(&'a [u64]),
    Consecutive { first: u64, count: usize },
}

impl Pfns<'_> {
    fn len(&self) -> usize {
        match self {
            Pfns::List(list) => list.len(),
            Pfns::Consecutive { count, .. } => *count,
        }
    }
    fn get(&self, index: usize) -> u64 {
        match self {
            Pfns::List(list) => list[index],
            Pfns::Consecutive { first, .. } => first + index as u64,
        }
    }
}

impl GpadlMessages<'static> {
    /// A GPADL of `count` whole consecutive pages from frame `first_pfn`:
    /// a host-visible region known by its guest physical address and size.
    pub fn for_consecutive_pages(
        child_relid: u32,
        gpadl_id: u32,
        first_pfn: u64,
        count: usize,
    ) -> Result<Self, GpadlError> {
        let byte_count = count
            .checked_mul(PAGE_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(GpadlError::TooManyPages)?;
        if first_pfn.checked_add(count as u64).is_none() {
            return Err(GpadlError::RangeDoesNotMatchPages);
        }
        Self::with_pfns(
            child_relid,
            gpadl_id,
            Pfns::Consecutive {
                first: first_pfn,
                count,
            },
            0,
            byte_count,
        )
    }
}

impl<'a> GpadlMessages<'a> {
    /// A GPADL of whole pages (byte_offset 0, every byte of every page), the
    /// form rings and data buffers use.
    pub fn for_pages(child_relid: u32, gpadl_id: u32, pfns: &'a [u64]) -> Result<Self, GpadlError> {
        let byte_count = pfns
            .len()
            .checked_mul(PAGE_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(GpadlError::TooManyPages)?;
        Self::new(child_relid, gpadl_id, pfns, 0, byte_count)
    }

    pub fn new(
        child_relid: u32,
        gpadl_id: u32,
        pfns: &'a [u64],
        byte_offset: u32,
        byte_count: u32,
    ) -> Result<Self, GpadlError> {
        Self::with_pfns(
            child_relid,
            gpadl_id,
            Pfns::List(pfns),
            byte_offset,
            byte_count,
        )
    }

    fn with_pfns(
        child_relid: u32,
        gpadl_id: u32,
        pfns: Pfns<'a>,
        byte_offset: u32,
        byte_count: u32,
    ) -> Result<Self, GpadlError> {
        if pfns.len() == 0 {
            return Err(GpadlError::NoPages);
        }
        if pfns.len() > MAX_SINGLE_RANGE_PFNS {
            return Err(GpadlError::TooManyPages);
        }
        if byte_offset as usize >= PAGE_SIZE
            || byte_count == 0
            || pfn_count(byte_offset, byte_count) != Some(pfns.len())
        {
            return Err(GpadlError::RangeDoesNotMatchPages);
        }
        Ok(Self {
            child_relid,
            gpadl_id,
            byte_offset,
            byte_count,
            pfns,
            next_pfn: 0,
            header_sent: false,
            body_number: 0,
        })
    }

    pub fn gpadl_id(&self) -> u32 {
        self.gpadl_id
    }

    pub fn child_relid(&self) -> u32 {
        self.child_relid
    }

    /// How many messages (header + bodies) this GPADL takes.
    pub fn message_count(&self) -> usize {
        let rest = self.pfns.len().saturating_sub(GPADL_HEADER_MAX_PFNS);
        1 + rest.div_ceil(GPADL_BODY_MAX_PFNS)
    }
}

impl Iterator for GpadlMessages<'_> {
    type Item = OutgoingMessage;

    fn next(&mut self) -> Option<OutgoingMessage> {
        let mut message = OutgoingMessage::new();
        if !self.header_sent {
            self.header_sent = true;
            let mut header = GpadlHeader::empty();
            header.child_relid = self.child_relid.into();
            header.gpadl_id = self.gpadl_id.into();
            // Checked against MAX_SINGLE_RANGE_PFNS in new().
            header.range_buflen = ((8 + 8 * self.pfns.len()) as u16).into();
            header.range_count = 1.into();
            message.push(header.as_bytes());
            message.push(&self.byte_count.to_le_bytes());
            message.push(&self.byte_offset.to_le_bytes());
            let take = self.pfns.len().min(GPADL_HEADER_MAX_PFNS);
            for index in 0..take {
                message.push(&self.pfns.get(index).to_le_bytes());
            }
            self.next_pfn = take;
            return Some(message);
        }
        if self.next_pfn >= self.pfns.len() {
            return None;
        }
        self.body_number += 1;
        let mut body = GpadlBody::empty();
        body.message_number = self.body_number.into();
        body.gpadl_id = self.gpadl_id.into();
        message.push(body.as_bytes());
        let end = (self.next_pfn + GPADL_BODY_MAX_PFNS).min(self.pfns.len());
        for index in self.next_pfn..end {
            message.push(&self.pfns.get(index).to_le_bytes());
        }
        self.next_pfn = end;
        Some(message)
    }
}

/// Host side: collects a GpadlHeader and its bodies into the range words
/// (range headers and PFNs), holding at most `WORDS` words.
#[derive(Clone, Debug)]
pub struct GpadlAssembler<const WORDS: usize> {
    pub child_relid: u32,
    pub gpadl_id: u32,
    range_count: usize,
    expected_words: usize,
    words: heapless::Vec<u64, WORDS>,
}

/// One range of an assembled GPADL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssembledRange<'a> {
    pub byte_count: u32,
    pub byte_offset: u32,
    pub pfns: &'a [u64],
}

impl<const WORDS: usize> GpadlAssembler<WORDS> {
    pub fn new(header: &GpadlHeaderMessage) -> Result<Self, GpadlError> {
        let expected_words = header.fixed.range_buflen.get() as usize / 8;
        if expected_words > WORDS {
            return Err(GpadlError::CapacityExceeded);
        }
        let mut words = heapless::Vec::new();
        words
            .extend_from_slice(&header.words)
            .map_err(|_| GpadlError::CapacityExceeded)?;
        if words.len() > expected_words {
            return Err(GpadlError::MalformedRanges);
        }
        Ok(Self {
            child_relid: header.fixed.child_relid.get(),
            gpadl_id: header.fixed.gpadl_id.get(),
            range_count: header.fixed.range_count.get() as usize,
            expected_words,
            words,
        })
    }

    pub fn is_complete(&self) -> bool {
        self.words.len() == self.expected_words
    }

    /// Add a body; returns whether the GPADL is now complete.
    pub fn add_body(&mut self, body: &GpadlBodyMessage) -> Result<bool, GpadlError> {
        if body.fixed.gpadl_id.get() != self.gpadl_id
            || self.words.len() + body.pfns.len() > self.expected_words
        {
            return Err(GpadlError::UnexpectedBody);
        }
        self.words
            .extend_from_slice(&body.pfns)
            .map_err(|_| GpadlError::CapacityExceeded)?;
        Ok(self.is_complete())
    }

    /// Check the complete word list and return its ranges.
    pub fn ranges(&self) -> Result<heapless::Vec<AssembledRange<'_>, 16>, GpadlError> {
        if !self.is_complete() {
            return Err(GpadlError::MalformedRanges);
        }
        let mut ranges = heapless::Vec::new();
        let mut rest: &[u64] = &self.words;
        for _ in 0..self.range_count {
            let (&range_word, after) = rest.split_first().ok_or(GpadlError::MalformedRanges)?;
            let byte_count = range_word as u32;
            let byte_offset = (range_word >> 32) as u32;
            if byte_count == 0 || byte_offset as usize >= PAGE_SIZE {
                return Err(GpadlError::MalformedRanges);
            }
            let pages = pfn_count(byte_offset, byte_count).ok_or(GpadlError::MalformedRanges)?;
            let pfns = after.get(..pages).ok_or(GpadlError::MalformedRanges)?;
            ranges
                .push(AssembledRange {
                    byte_count,
                    byte_offset,
                    pfns,
                })
                .map_err(|_| GpadlError::CapacityExceeded)?;
            rest = &after[pages..];
        }
        if !rest.is_empty() {
            return Err(GpadlError::MalformedRanges);
        }
        Ok(ranges)
    }
}

/// Where a GPADL is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlState {
    /// Header (and bodies) sent, GpadlCreated not yet received.
    Creating,
    /// The host holds it.
    Created,
    /// GpadlTeardown sent; memory still belongs to the host.
    TearingDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlTableError {
    Full,
    /// The 32-bit id space is used up (ids are never reused).
    IdsExhausted,
    /// A message names an id we do not have (never created, or torn down).
    UnknownGpadl(u32),
    /// A message that does not fit the GPADL's state (e.g. a second
    /// GpadlCreated or a GpadlTorndown without a teardown).
    WrongState {
        gpadl_id: u32,
        state: GpadlState,
    },
    /// GpadlCreated for the right id but another channel.
    RelidMismatch {
        gpadl_id: u32,
    },
}

/// What a GpadlCreated meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreationOutcome {
    Created,
    /// The host refused; its memory may be reused at once, the id is retired.
    Failed {
        status: u32,
    },
}

#[derive(Clone, Copy, Debug)]
struct GpadlEntry {
    gpadl_id: u32,
    child_relid: u32,
    state: GpadlState,
}

/// The guest's table of live GPADLs. Ids come from a counter and are never
/// handed out twice, so a late message about an old GPADL cannot be taken
/// for a new one; an entry (and the memory behind it) is released only by
/// GpadlTorndown or a failed GpadlCreated.
#[derive(Clone, Debug)]
pub struct GpadlTable<const N: usize> {
    entries: heapless::Vec<GpadlEntry, N>,
    next_id: u32,
}

impl<const N: usize> Default for GpadlTable<N> {
    fn default() -> Self {
        Self::new(1)
    }
}

impl<const N: usize> GpadlTable<N> {
    /// `first_id` must be non-zero (0 means "no GPADL" in some messages).
    pub fn new(first_id: u32) -> Self {
        Self {
            entries: heapless::Vec::new(),
            next_id: first_id.max(1),
        }
    }

    /// Reserve a fresh id for a GPADL about to be sent for `child_relid`.
    pub fn allocate(&mut self, child_relid: u32) -> Result<u32, GpadlTableError> {
        if self.entries.is_full() {
            return Err(GpadlTableError::Full);
        }
        let gpadl_id = self.next_id;
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or(GpadlTableError::IdsExhausted)?;
        // Capacity checked above.
        let _ = self.entries.push(GpadlEntry {
            gpadl_id,
            child_relid,
            state: GpadlState::Creating,
        });
        Ok(gpadl_id)
    }

    fn find(&self, gpadl_id: u32) -> Result<usize, GpadlTableError> {
        self.entries
            .iter()
            .position(|entry| entry.gpadl_id == gpadl_id)
            .ok_or(GpadlTableError::UnknownGpadl(gpadl_id))
    }

    pub fn state(&self, gpadl_id: u32) -> Option<GpadlState> {
        self.find(gpadl_id).ok().map(|i| self.entries[i].state)
    }

    /// Whether the memory behind `gpadl_id` may still be touched by the host
    /// (then it must not be freed or reused).
    pub fn memory_in_use(&self, gpadl_id: u32) -> bool {
        self.find(gpadl_id).is_ok()
    }

    pub fn on_created(
        &mut self,
        message: &GpadlCreated,
    ) -> Result<CreationOutcome, GpadlTableError> {
        let gpadl_id = message.gpadl_id.get();
        let index = self.find(gpadl_id)?;
        let entry = self.entries[index];
        if entry.state != GpadlState::Creating {
            return Err(GpadlTableError::WrongState {
                gpadl_id,
                state: entry.state,
            });
        }
        if entry.child_relid != message.child_relid.get() {
            return Err(GpadlTableError::RelidMismatch { gpadl_id });
        }
        let status = message.creation_status.get();
        if status != 0 {
            self.entries.swap_remove(index);
            return Ok(CreationOutcome::Failed { status });
        }
        self.entries[index].state = GpadlState::Created;
        Ok(CreationOutcome::Created)
    }

    /// Give up a GPADL still being created that the host will never answer
    /// (its messages were not all sent, or its channel was rescinded): the
    /// id is retired, so a late GpadlCreated is refused as unknown.
    pub fn abandon(&mut self, gpadl_id: u32) -> Result<(), GpadlTableError> {
        let index = self.find(gpadl_id)?;
        let entry = self.entries[index];
        if entry.state != GpadlState::Creating {
            return Err(GpadlTableError::WrongState {
                gpadl_id,
                state: entry.state,
            });
        }
        self.entries.swap_remove(index);
        Ok(())
    }

    /// Mark a created GPADL as being torn down and return the message to send.
    pub fn begin_teardown(&mut self, gpadl_id: u32) -> Result<GpadlTeardown, GpadlTableError> {
        let index = self.find(gpadl_id)?;
        let entry = self.entries[index];
        if entry.state != GpadlState::Created {
            return Err(GpadlTableError::WrongState {
                gpadl_id,
                state: entry.state,
            });
        }
        self.entries[index].state = GpadlState::TearingDown;
        let mut message = GpadlTeardown::empty();
        message.child_relid = entry.child_relid.into();
        message.gpadl_id = gpadl_id.into();
        Ok(message)
    }

    /// The host has let go: the entry is removed and its memory may be reused.
    /// Returns the channel it belonged to.
    pub fn on_torndown(&mut self, message: &GpadlTorndown) -> Result<u32, GpadlTableError> {
        let gpadl_id = message.gpadl_id.get();
        let index = self.find(gpadl_id)?;
        let entry = self.entries[index];
        if entry.state != GpadlState::TearingDown {
            return Err(GpadlTableError::WrongState {
                gpadl_id,
                state: entry.state,
            });
        }
        self.entries.swap_remove(index);
        Ok(entry.child_relid)
    }

    /// Ids still held for a channel (to tear down on close or rescind).
    pub fn ids_for_channel(
        &self,
        child_relid: u32,
    ) -> impl Iterator<Item = (u32, GpadlState)> + '_ {
        self.entries
            .iter()
            .filter(move |entry| entry.child_relid == child_relid)
            .map(|entry| (entry.gpadl_id, entry.state))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::messages::{parse, ChannelMessage};
    use crate::version::ProtocolVersion;

    fn pfns(n: usize) -> heapless::Vec<u64, 256> {
        (0..n as u64).map(|i| 0x1000 + i * 3).collect()
    }

    fn round_trip(n: usize) -> usize {
        let pages = pfns(n);
        let messages = GpadlMessages::for_pages(5, 77, &pages).unwrap();
        let expected_messages = messages.message_count();
        let mut assembler: Option<GpadlAssembler<512>> = None;
        let mut count = 0;
        for message in messages {
            count += 1;
            assert!(message.as_bytes().len() <= MAX_MESSAGE_SIZE);
            match parse(message.as_bytes(), ProtocolVersion::V5_3).unwrap() {
                ChannelMessage::GpadlHeader(header) => {
                    assert_eq!(count, 1);
                    assert!(header.words.len() <= 1 + GPADL_HEADER_MAX_PFNS);
                    assembler = Some(GpadlAssembler::new(&header).unwrap());
                }
                ChannelMessage::GpadlBody(body) => {
                    assert!(body.pfns.len() <= GPADL_BODY_MAX_PFNS);
                    assembler.as_mut().unwrap().add_body(&body).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(count, expected_messages);
        let assembler = assembler.unwrap();
        let ranges = assembler.ranges().unwrap();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].pfns, &pages[..]);
        assert_eq!(ranges[0].byte_count as usize, n * 4096);
        assert_eq!(assembler.child_relid, 5);
        assert_eq!(assembler.gpadl_id, 77);
        count
    }

    #[test]
    fn header_holds_26_pfns_and_bodies_28() {
        assert_eq!(round_trip(1), 1);
        assert_eq!(round_trip(26), 1);
        assert_eq!(round_trip(27), 2);
        assert_eq!(round_trip(26 + 28), 2);
        assert_eq!(round_trip(26 + 29), 3);
        assert_eq!(round_trip(200), 1 + (200 - 26usize).div_ceil(28));
    }

    #[test]
    fn consecutive_pages_of_the_largest_single_range_round_trip() {
        for count in [1, 27, 1000, MAX_SINGLE_RANGE_PFNS] {
            let messages = GpadlMessages::for_consecutive_pages(9, 3, 0x4_0000, count).unwrap();
            assert_eq!(
                messages.message_count(),
                1 + count.saturating_sub(26).div_ceil(28)
            );
            let mut assembler: Option<std::boxed::Box<GpadlAssembler<8192>>> = None;
            for message in messages {
                match parse(message.as_bytes(), ProtocolVersion::V5_3).unwrap() {
                    ChannelMessage::GpadlHeader(header) => {
                        assembler =
                            Some(std::boxed::Box::new(GpadlAssembler::new(&header).unwrap()))
                    }
                    ChannelMessage::GpadlBody(body) => {
                        assembler.as_mut().unwrap().add_body(&body).unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let assembler = assembler.unwrap();
            let ranges = assembler.ranges().unwrap();
            assert_eq!(ranges[0].byte_count as usize, count * 4096);
            assert!(ranges[0]
                .pfns
                .iter()
                .enumerate()
                .all(|(i, pfn)| *pfn == 0x4_0000 + i as u64));
        }
        assert_eq!(
            GpadlMessages::for_consecutive_pages(1, 1, 0, MAX_SINGLE_RANGE_PFNS + 1).err(),
            Some(GpadlError::TooManyPages)
        );
        assert_eq!(
            GpadlMessages::for_consecutive_pages(1, 1, 0, 0).err(),
            Some(GpadlError::NoPages)
        );
        assert_eq!(
            GpadlMessages::for_consecutive_pages(1, 1, u64::MAX, 2).err(),
            Some(GpadlError::RangeDoesNotMatchPages)
        );
    }

    #[test]
    fn construction_refuses_inconsistent_ranges() {
        assert_eq!(
            GpadlMessages::for_pages(1, 1, &[]).err(),
            Some(GpadlError::NoPages)
        );
        assert_eq!(
            GpadlMessages::new(1, 1, &[1, 2], 0, 4096).err(),
            Some(GpadlError::RangeDoesNotMatchPages)
        );
        assert!(GpadlMessages::new(1, 1, &[1, 2], 100, 4096).is_ok());
    }

    #[test]
    fn assembler_refuses_foreign_and_excess_bodies() {
        let pages = pfns(30);
        let mut messages = GpadlMessages::for_pages(5, 77, &pages).unwrap();
        let header = match parse(messages.next().unwrap().as_bytes(), ProtocolVersion::V5_3) {
            Ok(ChannelMessage::GpadlHeader(header)) => header,
            other => panic!("{other:?}"),
        };
        let mut body = match parse(messages.next().unwrap().as_bytes(), ProtocolVersion::V5_3) {
            Ok(ChannelMessage::GpadlBody(body)) => body,
            other => panic!("{other:?}"),
        };
        let mut assembler: GpadlAssembler<64> = GpadlAssembler::new(&header).unwrap();
        assert!(assembler.ranges().is_err(), "incomplete");
        body.fixed.gpadl_id = 78.into();
        assert_eq!(assembler.add_body(&body), Err(GpadlError::UnexpectedBody));
        body.fixed.gpadl_id = 77.into();
        assert_eq!(assembler.add_body(&body), Ok(true));
        assert_eq!(assembler.add_body(&body), Err(GpadlError::UnexpectedBody));
    }

    fn created(relid: u32, id: u32, status: u32) -> GpadlCreated {
        let mut message = GpadlCreated::empty();
        message.child_relid = relid.into();
        message.gpadl_id = id.into();
        message.creation_status = status.into();
        message
    }

    fn torndown(id: u32) -> GpadlTorndown {
        let mut message = GpadlTorndown::empty();
        message.gpadl_id = id.into();
        message
    }

    #[test]
    fn table_keeps_memory_until_torndown_and_never_reuses_ids() {
        let mut table: GpadlTable<4> = GpadlTable::new(0xE1E10);
        let id = table.allocate(9).unwrap();
        assert_eq!(id, 0xE1E10);
        assert_eq!(
            table.on_created(&created(9, id, 0)),
            Ok(CreationOutcome::Created)
        );
        assert_eq!(
            table.on_created(&created(9, id, 0)),
            Err(GpadlTableError::WrongState {
                gpadl_id: id,
                state: GpadlState::Created
            })
        );
        assert_eq!(
            table.on_torndown(&torndown(id)),
            Err(GpadlTableError::WrongState {
                gpadl_id: id,
                state: GpadlState::Created
            })
        );
        let teardown = table.begin_teardown(id).unwrap();
        assert_eq!(teardown.gpadl_id.get(), id);
        assert!(table.memory_in_use(id));
        assert_eq!(table.on_torndown(&torndown(id)), Ok(9));
        assert!(!table.memory_in_use(id));
        assert_eq!(
            table.on_torndown(&torndown(id)),
            Err(GpadlTableError::UnknownGpadl(id))
        );
        let next = table.allocate(9).unwrap();
        assert_ne!(next, id);
    }

    #[test]
    fn table_rejects_wrong_relid_and_retires_failed_creations() {
        let mut table: GpadlTable<1> = GpadlTable::default();
        let id = table.allocate(3).unwrap();
        assert_eq!(table.allocate(3), Err(GpadlTableError::Full));
        assert_eq!(
            table.on_created(&created(4, id, 0)),
            Err(GpadlTableError::RelidMismatch { gpadl_id: id })
        );
        assert_eq!(
            table.on_created(&created(3, id, 0xC000_0001)),
            Ok(CreationOutcome::Failed {
                status: 0xC000_0001
            })
        );
        assert!(table.is_empty());
        let mut exhausted: GpadlTable<2> = GpadlTable::new(u32::MAX);
        assert_eq!(exhausted.allocate(1), Err(GpadlTableError::IdsExhausted));
    }
}
