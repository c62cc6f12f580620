//! Ring packets: the 16-byte descriptor, packet types and flags, GPA-direct
//! and transfer-page headers with their ranges, the ring control page, and
//! [`parse_packet`], which validates a packet that was already copied out of
//! the ring into private memory.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const PAGE_SIZE: usize = 4096;

/// Packet types (`PacketDescriptor::packet_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    /// 0x6: data in the packet.
    InBand,
    /// 0x7: data in transfer pages (netvsc receive buffer).
    TransferPages,
    /// 0x9: data in guest pages named by GPA ranges.
    GpaDirect,
    /// 0xB: completion of a request that asked for one.
    Completion,
}

impl PacketType {
    #[inline]
    pub const fn wire(self) -> u16 {
        match self {
            Self::InBand => 0x6,
            Self::TransferPages => 0x7,
            Self::GpaDirect => 0x9,
            Self::Completion => 0xB,
        }
    }
    #[inline]
    pub const fn from_wire(value: u16) -> Option<Self> {
        match value {
            0x6 => Some(Self::InBand),
            0x7 => Some(Self::TransferPages),
            0x9 => Some(Self::GpaDirect),
            0xB => Some(Self::Completion),
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// Descriptor flags. Every flag this crate understands is here; a
    /// packet with any other is refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PacketFlags: u16 {
        /// The receiver must send a completion packet.
        const COMPLETION_REQUESTED = 0x1;
    }
}

/// The first 16 bytes of every packet.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct PacketDescriptor {
    pub packet_type: U16,
    /// Offset of the payload from the start of the packet, in 8-byte units.
    pub offset8: U16,
    /// Length of the packet without the trailer, in 8-byte units.
    pub len8: U16,
    pub flags: U16,
    pub transaction_id: U64,
}

pub const DESCRIPTOR_SIZE: usize = 16;
/// The 8-byte trailer after every packet: the packet's start offset << 32.
pub const TRAILER_SIZE: usize = 8;

/// Header of a GPA-direct packet after the descriptor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct GpaDirectHeader {
    pub reserved: U32,
    pub range_count: U32,
}

/// A GPA range header; `pfn_count(byte_offset, byte_count)` PFNs (u64) follow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct GpaRangeHeader {
    pub byte_count: U32,
    /// Offset of the data inside the first page (< 4096).
    pub byte_offset: U32,
}

/// Header of a transfer-page packet after the descriptor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct TransferPageHeader {
    pub transfer_page_set_id: U16,
    pub sender_owns_set: u8,
    pub reserved: u8,
    pub range_count: U32,
}

/// One range of a transfer-page set.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct TransferPageRange {
    pub byte_count: U32,
    pub byte_offset: U32,
}

/// Pages a range of `byte_count` bytes starting `byte_offset` into its first
/// page spans. `None` on overflow.
pub fn pfn_count(byte_offset: u32, byte_count: u32) -> Option<usize> {
    let end = (byte_offset as u64).checked_add(byte_count as u64)?;
    usize::try_from(end.div_ceil(PAGE_SIZE as u64)).ok()
}

/// Control page offsets of a ring (the first 4 KiB of each ring).
pub mod control {
    pub const WRITE_INDEX: usize = 0x0;
    pub const READ_INDEX: usize = 0x4;
    pub const INTERRUPT_MASK: usize = 0x8;
    pub const PENDING_SEND_SZ: usize = 0xC;
    pub const FEATURE_BITS: usize = 0x40;
    /// feature_bits bit 0: this ring's writer honours pending_send_sz.
    pub const FEATURE_PENDING_SEND_SZ: u32 = 0x1;
    pub const CONTROL_PAGE_SIZE: usize = super::PAGE_SIZE;
}

/// The ring control page as a struct (for layout tests and for tools that
/// dump a ring); live access goes through atomics at [`control`] offsets.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C, packed)]
pub struct RingControlPage {
    pub write_index: U32,
    pub read_index: U32,
    pub interrupt_mask: U32,
    pub pending_send_sz: U32,
    pub reserved1: [u8; 0x30],
    pub feature_bits: U32,
    pub reserved2: [u8; PAGE_SIZE - 0x44],
}

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a descriptor.
    TooShort,
    /// offset8 < 2: the payload would overlap the descriptor.
    OffsetTooSmall,
    /// len8 < offset8.
    LengthBeforeOffset,
    /// len8 * 8 is more than the bytes available.
    LengthBeyondAvailable,
    UnknownType(u16),
    UnknownFlags(u16),
    /// A GPA-direct or transfer-page packet with zero ranges.
    NoRanges,
    /// Ranges do not fit in the header area (offset8 * 8).
    RangesOverflowHeader,
    /// A GPA range with byte_offset >= 4096 or zero bytes.
    BadRange,
}

impl core::fmt::Display for PacketError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// One validated GPA range of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRangeRef<'a> {
    pub byte_count: u32,
    pub byte_offset: u32,
    pfn_bytes: &'a [u8],
}

impl<'a> GpaRangeRef<'a> {
    pub fn pfn_count(&self) -> usize {
        self.pfn_bytes.len() / 8
    }
    pub fn pfns(&self) -> impl Iterator<Item = u64> + 'a {
        self.pfn_bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])))
    }
}

/// Validated GPA ranges; iterate to get [`GpaRangeRef`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRanges<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> GpaRanges<'a> {
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn iter(&self) -> GpaRangeIter<'a> {
        GpaRangeIter {
            remaining: self.count,
            bytes: self.bytes,
        }
    }
}

pub struct GpaRangeIter<'a> {
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for GpaRangeIter<'a> {
    type Item = GpaRangeRef<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        // Already validated by parse_packet; the checks only keep this total.
        let (header, rest) = GpaRangeHeader::read_from_prefix(self.bytes).ok()?;
        let pages = pfn_count(header.byte_offset.get(), header.byte_count.get())?;
        let pfn_len = pages.checked_mul(8)?;
        let pfn_bytes = rest.get(..pfn_len)?;
        self.bytes = &rest[pfn_len..];
        self.remaining -= 1;
        Some(GpaRangeRef {
            byte_count: header.byte_count.get(),
            byte_offset: header.byte_offset.get(),
            pfn_bytes,
        })
    }
}

/// What kind of packet, with its type-specific header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind<'a> {
    InBand,
    Completion,
    GpaDirect(GpaRanges<'a>),
    TransferPages {
        transfer_page_set_id: u16,
        ranges: &'a [TransferPageRange],
    },
}

/// A validated packet borrowing the caller's private copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub transaction_id: u64,
    pub completion_requested: bool,
    pub kind: PacketKind<'a>,
    /// The bytes from offset8 * 8 to len8 * 8 (may include up to 7 bytes of
    /// padding: the wire does not say the exact payload length).
    pub payload: &'a [u8],
}

/// Validate a packet copied out of a ring. `bytes` holds the packet from its
/// descriptor on; it may be longer than `len8 * 8` (the rest is ignored).
#[inline]
pub fn parse_packet(bytes: &[u8]) -> Result<Packet<'_>, PacketError> {
    let (descriptor, _) =
        PacketDescriptor::read_from_prefix(bytes).map_err(|_| PacketError::TooShort)?;
    let offset = descriptor.offset8.get() as usize * 8;
    let len = descriptor.len8.get() as usize * 8;
    if offset < DESCRIPTOR_SIZE {
        return Err(PacketError::OffsetTooSmall);
    }
    if len < offset {
        return Err(PacketError::LengthBeforeOffset);
    }
    if len > bytes.len() {
        return Err(PacketError::LengthBeyondAvailable);
    }
    let raw_flags = descriptor.flags.get();
    let flags = PacketFlags::from_bits(raw_flags).ok_or(PacketError::UnknownFlags(raw_flags))?;
    let packet_type = descriptor.packet_type.get();
    let kind = PacketType::from_wire(packet_type).ok_or(PacketError::UnknownType(packet_type))?;
    let header_area = &bytes[DESCRIPTOR_SIZE..offset];
    let kind = match kind {
        PacketType::InBand => PacketKind::InBand,
        PacketType::Completion => PacketKind::Completion,
        PacketType::GpaDirect => PacketKind::GpaDirect(parse_gpa_ranges(header_area)?),
        PacketType::TransferPages => {
            let (header, rest) = TransferPageHeader::read_from_prefix(header_area)
                .map_err(|_| PacketError::RangesOverflowHeader)?;
            let count = header.range_count.get() as usize;
            if count == 0 {
                return Err(PacketError::NoRanges);
            }
            let range_bytes = count
                .checked_mul(core::mem::size_of::<TransferPageRange>())
                .and_then(|n| rest.get(..n))
                .ok_or(PacketError::RangesOverflowHeader)?;
            let ranges = <[TransferPageRange]>::ref_from_bytes(range_bytes)
                .map_err(|_| PacketError::RangesOverflowHeader)?;
            PacketKind::TransferPages {
                transfer_page_set_id: header.transfer_page_set_id.get(),
                ranges,
            }
        }
    };
    Ok(Packet {
        transaction_id: descriptor.transaction_id.get(),
        completion_requested: flags.contains(PacketFlags::COMPLETION_REQUESTED),
        kind,
        payload: &bytes[offset..len],
    })
}

fn parse_gpa_ranges(header_area: &[u8]) -> Result<GpaRanges<'_>, PacketError> {
    let (header, rest) = GpaDirectHeader::read_from_prefix(header_area)
        .map_err(|_| PacketError::RangesOverflowHeader)?;
    let count = header.range_count.get() as usize;
    if count == 0 {
        return Err(PacketError::NoRanges);
    }
    // Walk every range once so that iteration later cannot fail.
    let mut cursor = rest;
    for _ in 0..count {
        let (range, after) = GpaRangeHeader::read_from_prefix(cursor)
            .map_err(|_| PacketError::RangesOverflowHeader)?;
        if range.byte_offset.get() as usize >= PAGE_SIZE || range.byte_count.get() == 0 {
            return Err(PacketError::BadRange);
        }
        let pfn_len = pfn_count(range.byte_offset.get(), range.byte_count.get())
            .and_then(|pages| pages.checked_mul(8))
            .ok_or(PacketError::BadRange)?;
        cursor = after
            .get(pfn_len..)
            .ok_or(PacketError::RangesOverflowHeader)?;
    }
    Ok(GpaRanges { count, bytes: rest })
}

/// Descriptor for a packet whose type-specific header (after the
/// descriptor) is `extra_header_len` bytes and whose payload is
/// `payload_len` bytes. `None` if it does not fit the 16-bit unit fields.
#[inline]
pub fn descriptor_for(
    packet_type: PacketType,
    extra_header_len: usize,
    payload_len: usize,
    transaction_id: u64,
    completion_requested: bool,
) -> Option<PacketDescriptor> {
    let header_len = DESCRIPTOR_SIZE.checked_add(extra_header_len)?;
    if header_len % 8 != 0 {
        return None;
    }
    let offset8 = u16::try_from(header_len / 8).ok()?;
    let total = header_len.checked_add(payload_len)?.checked_add(7)? / 8;
    let len8 = u16::try_from(total).ok()?;
    Some(PacketDescriptor {
        packet_type: U16::new(packet_type.wire()),
        offset8: U16::new(offset8),
        len8: U16::new(len8),
        flags: U16::new(if completion_requested {
            PacketFlags::COMPLETION_REQUESTED.bits()
        } else {
            0
        }),
        transaction_id: U64::new(transaction_id),
    })
}

/// Bytes a packet occupies in the ring: len8 * 8 plus the trailer.
#[inline]
pub fn ring_footprint(descriptor: &PacketDescriptor) -> usize {
    descriptor.len8.get() as usize * 8 + TRAILER_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<PacketDescriptor>(), 16);
        assert_eq!(offset_of!(PacketDescriptor, packet_type), 0);
        assert_eq!(offset_of!(PacketDescriptor, offset8), 2);
        assert_eq!(offset_of!(PacketDescriptor, len8), 4);
        assert_eq!(offset_of!(PacketDescriptor, flags), 6);
        assert_eq!(offset_of!(PacketDescriptor, transaction_id), 8);
        assert_eq!(size_of::<GpaDirectHeader>(), 8);
        assert_eq!(offset_of!(GpaDirectHeader, reserved), 0);
        assert_eq!(offset_of!(GpaDirectHeader, range_count), 4);
        assert_eq!(size_of::<GpaRangeHeader>(), 8);
        assert_eq!(offset_of!(GpaRangeHeader, byte_count), 0);
        assert_eq!(offset_of!(GpaRangeHeader, byte_offset), 4);
        assert_eq!(size_of::<TransferPageHeader>(), 8);
        assert_eq!(offset_of!(TransferPageHeader, transfer_page_set_id), 0);
        assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 2);
        assert_eq!(offset_of!(TransferPageHeader, reserved), 3);
        assert_eq!(offset_of!(TransferPageHeader, range_count), 4);
        assert_eq!(size_of::<TransferPageRange>(), 8);
        assert_eq!(offset_of!(TransferPageRange, byte_count), 0);
        assert_eq!(offset_of!(TransferPageRange, byte_offset), 4);
    }

    #[test]
    fn control_page_layout() {
        assert_eq!(size_of::<RingControlPage>(), 4096);
        assert_eq!(
            offset_of!(RingControlPage, write_index),
            control::WRITE_INDEX
        );
        assert_eq!(offset_of!(RingControlPage, read_index), control::READ_INDEX);
        assert_eq!(
            offset_of!(RingControlPage, interrupt_mask),
            control::INTERRUPT_MASK
        );
        assert_eq!(
            offset_of!(RingControlPage, pending_send_sz),
            control::PENDING_SEND_SZ
        );
        assert_eq!(offset_of!(RingControlPage, reserved1), 0x10);
        assert_eq!(
            offset_of!(RingControlPage, feature_bits),
            control::FEATURE_BITS
        );
        assert_eq!(offset_of!(RingControlPage, reserved2), 0x44);
    }

    fn in_band(payload: &[u8], flags: u16, packet_type: u16) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        let descriptor = descriptor_for(PacketType::InBand, 0, payload.len(), 42, false).unwrap();
        bytes[..16].copy_from_slice(descriptor.as_bytes());
        bytes[6..8].copy_from_slice(&flags.to_le_bytes());
        bytes[0..2].copy_from_slice(&packet_type.to_le_bytes());
        bytes[16..16 + payload.len()].copy_from_slice(payload);
        bytes
    }

    #[test]
    fn in_band_packet_parses() {
        let bytes = in_band(b"hello", 1, 6);
        let packet = parse_packet(&bytes).unwrap();
        assert_eq!(packet.transaction_id, 42);
        assert!(packet.completion_requested);
        assert_eq!(packet.kind, PacketKind::InBand);
        assert_eq!(packet.payload.len(), 8);
        assert_eq!(&packet.payload[..5], b"hello");
    }

    #[test]
    fn hostile_descriptors_are_refused() {
        assert_eq!(parse_packet(&[0u8; 15]), Err(PacketError::TooShort));
        assert_eq!(
            parse_packet(&in_band(b"x", 2, 6)),
            Err(PacketError::UnknownFlags(2))
        );
        assert_eq!(
            parse_packet(&in_band(b"x", 0, 5)),
            Err(PacketError::UnknownType(5))
        );
        let mut bytes = in_band(b"x", 0, 6);
        bytes[2] = 1; // offset8 = 1
        assert_eq!(parse_packet(&bytes), Err(PacketError::OffsetTooSmall));
        let mut bytes = in_band(b"x", 0, 6);
        bytes[2] = 4; // offset8 = 4 > len8 = 3
        assert_eq!(parse_packet(&bytes), Err(PacketError::LengthBeforeOffset));
        let mut bytes = in_band(b"x", 0, 6);
        bytes[4] = 9; // 72 bytes > 64
        assert_eq!(
            parse_packet(&bytes),
            Err(PacketError::LengthBeyondAvailable)
        );
    }

    fn gpa_direct(ranges: &[(u32, u32, &[u64])], declared: u32) -> heapless::Vec<u8, 256> {
        let mut header: heapless::Vec<u8, 256> = heapless::Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes()).unwrap();
        header.extend_from_slice(&declared.to_le_bytes()).unwrap();
        for (count, offset, pfns) in ranges {
            header.extend_from_slice(&count.to_le_bytes()).unwrap();
            header.extend_from_slice(&offset.to_le_bytes()).unwrap();
            for pfn in *pfns {
                header.extend_from_slice(&pfn.to_le_bytes()).unwrap();
            }
        }
        let descriptor = descriptor_for(PacketType::GpaDirect, header.len(), 8, 7, true).unwrap();
        let mut bytes: heapless::Vec<u8, 256> = heapless::Vec::new();
        bytes.extend_from_slice(descriptor.as_bytes()).unwrap();
        bytes.extend_from_slice(&header).unwrap();
        bytes.extend_from_slice(&[0xAA; 8]).unwrap();
        bytes
    }

    #[test]
    fn gpa_direct_ranges_parse() {
        let bytes = gpa_direct(&[(100, 10, &[5]), (8192, 4000, &[7, 8, 9])], 2);
        let packet = parse_packet(&bytes).unwrap();
        let PacketKind::GpaDirect(ranges) = packet.kind else {
            panic!("not GPA direct: {:?}", packet.kind);
        };
        assert_eq!(ranges.len(), 2);
        let collected: heapless::Vec<GpaRangeRef, 4> = ranges.iter().collect();
        assert_eq!(collected[0].byte_count, 100);
        assert_eq!(collected[0].pfns().collect::<heapless::Vec<u64, 4>>(), [5]);
        assert_eq!(collected[1].pfn_count(), 3);
        assert_eq!(
            collected[1].pfns().collect::<heapless::Vec<u64, 4>>(),
            [7, 8, 9]
        );
        assert_eq!(packet.payload, &[0xAA; 8]);
    }

    #[test]
    fn gpa_direct_without_ranges_or_with_too_many_is_refused() {
        assert_eq!(
            parse_packet(&gpa_direct(&[], 0)),
            Err(PacketError::NoRanges)
        );
        assert_eq!(
            parse_packet(&gpa_direct(&[(100, 10, &[5])], 2)),
            Err(PacketError::RangesOverflowHeader)
        );
        // Three pages claimed, two PFNs present.
        assert_eq!(
            parse_packet(&gpa_direct(&[(8192, 4000, &[7, 8])], 1)),
            Err(PacketError::RangesOverflowHeader)
        );
        assert_eq!(
            parse_packet(&gpa_direct(&[(1, 4096, &[7, 8])], 1)),
            Err(PacketError::BadRange)
        );
    }

    #[test]
    fn pfn_count_spans_pages() {
        assert_eq!(pfn_count(0, 4096), Some(1));
        assert_eq!(pfn_count(1, 4096), Some(2));
        assert_eq!(pfn_count(4095, 2), Some(2));
        assert_eq!(pfn_count(0, 1), Some(1));
    }
}
