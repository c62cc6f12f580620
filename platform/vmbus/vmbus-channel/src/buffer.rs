//! Buffers the driver shared with the host, and the only ways to name bytes
//! in them: a [`BufferSlice`] (to send) is made from a [`SharedBuffer`] and
//! checked to lie inside it; a transfer-page range (received) is checked
//! against the [`ReceiveBuffer`] before the driver may look at its bytes.

use vmbus_protocol::packet::{TransferPageRange, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferError {
    /// A buffer or slice of zero bytes.
    Empty,
    /// A buffer whose GPA is not page aligned (a GPADL covers whole pages).
    Misaligned { gpa: u64 },
    /// The address arithmetic overflows.
    Overflow,
    /// A slice that does not lie inside its buffer.
    OutOfBounds {
        offset: usize,
        len: usize,
        buffer_len: usize,
    },
    /// A slice longer than a GPA range can say (u32 bytes).
    TooLong { len: usize },
}

/// A host-visible data region the driver made a GPADL over: the region's
/// guest-physical base, its length and the GPADL's id. The driver gets
/// these from the bus manager when the GPADL is created; the library never
/// describes a byte outside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedBuffer {
    gpa: u64,
    len: usize,
    gpadl_id: u32,
}

impl SharedBuffer {
    pub fn new(gpa: u64, len: usize, gpadl_id: u32) -> Result<Self, BufferError> {
        if len == 0 {
            return Err(BufferError::Empty);
        }
        if !gpa.is_multiple_of(PAGE) {
            return Err(BufferError::Misaligned { gpa });
        }
        gpa.checked_add(len as u64).ok_or(BufferError::Overflow)?;
        Ok(Self { gpa, len, gpadl_id })
    }

    pub fn gpa(&self) -> u64 {
        self.gpa
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn gpadl_id(&self) -> u32 {
        self.gpadl_id
    }

    /// Whether `offset..offset + len` lies inside the buffer.
    pub fn contains(&self, offset: usize, len: usize) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.len && len > 0)
    }

    /// `len` bytes at `offset` of the buffer, to describe in a GPA-direct
    /// packet. Refused unless it lies wholly inside the buffer.
    pub fn slice(&self, offset: usize, len: usize) -> Result<BufferSlice, BufferError> {
        if len == 0 {
            return Err(BufferError::Empty);
        }
        if !self.contains(offset, len) {
            return Err(BufferError::OutOfBounds {
                offset,
                len,
                buffer_len: self.len,
            });
        }
        let len = u32::try_from(len).map_err(|_| BufferError::TooLong { len })?;
        Ok(BufferSlice {
            gpa: self.gpa + offset as u64,
            len,
        })
    }
}

/// Bytes inside a [`SharedBuffer`] (only [`SharedBuffer::slice`] makes
/// one): a guest-physical start and a non-zero length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSlice {
    gpa: u64,
    len: u32,
}

impl BufferSlice {
    pub fn gpa(&self) -> u64 {
        self.gpa
    }
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Offset of the first byte inside its page (a GPA range's byte_offset).
    pub fn byte_offset(&self) -> u32 {
        (self.gpa % PAGE) as u32
    }
    pub fn first_pfn(&self) -> u64 {
        self.gpa / PAGE
    }
    /// Pages the slice touches.
    pub fn page_count(&self) -> usize {
        (self.byte_offset() as u64 + self.len as u64).div_ceil(PAGE) as usize
    }
    /// The page frame numbers of those pages, in order.
    pub fn pfns(&self) -> impl Iterator<Item = u64> {
        let first = self.first_pfn();
        (0..self.page_count() as u64).map(move |page| first + page)
    }
    /// The slice cut at page boundaries: `(gpa, len)` per page, as a page
    /// buffer describes it (offset and length inside each page).
    pub fn page_pieces(&self) -> impl Iterator<Item = (u64, u32)> {
        let end = self.gpa + self.len as u64;
        let mut at = self.gpa;
        core::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let page_end = (at / PAGE + 1) * PAGE;
            let piece_end = page_end.min(end);
            let piece = (at, (piece_end - at) as u32);
            at = piece_end;
            Some(piece)
        })
    }
}

/// Why a transfer-page packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// The driver has no receive buffer on this channel.
    NoReceiveBuffer,
    /// The packet names another transfer page set than the receive buffer.
    WrongSet { got: u16, expected: u16 },
    /// A range of zero bytes.
    EmptyRange { index: usize },
    /// A range that reaches outside the receive buffer.
    RangeOutside {
        index: usize,
        offset: u32,
        count: u32,
    },
}

/// The buffer the host writes received data into (a GPADL over the
/// driver's receive region), known to the host as a transfer page set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveBuffer {
    pub buffer: SharedBuffer,
    pub transfer_page_set_id: u16,
}

impl ReceiveBuffer {
    /// Check every range of a transfer-page packet (already copied into
    /// private memory) against the buffer: a range outside it is the mark
    /// of a hostile host, and nothing of the packet may be used.
    pub fn validate<'a>(
        &self,
        transfer_page_set_id: u16,
        ranges: &'a [TransferPageRange],
    ) -> Result<ReceivedRanges<'a>, TransferError> {
        if transfer_page_set_id != self.transfer_page_set_id {
            return Err(TransferError::WrongSet {
                got: transfer_page_set_id,
                expected: self.transfer_page_set_id,
            });
        }
        for (index, range) in ranges.iter().enumerate() {
            let offset = range.byte_offset.get();
            let count = range.byte_count.get();
            if count == 0 {
                return Err(TransferError::EmptyRange { index });
            }
            if !self.buffer.contains(offset as usize, count as usize) {
                return Err(TransferError::RangeOutside {
                    index,
                    offset,
                    count,
                });
            }
        }
        Ok(ReceivedRanges { ranges })
    }
}

/// One validated range of received data: `len` bytes at `offset` of the
/// receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedRange {
    pub offset: u32,
    pub len: u32,
}

/// The ranges of a transfer-page packet, every one inside the receive
/// buffer (made only by [`ReceiveBuffer::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedRanges<'a> {
    ranges: &'a [TransferPageRange],
}

impl<'a> ReceivedRanges<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = ReceivedRange> + 'a {
        self.ranges.iter().map(|range| ReceivedRange {
            offset: range.byte_offset.get(),
            len: range.byte_count.get(),
        })
    }
    /// Bytes in all ranges.
    pub fn total_len(&self) -> u64 {
        self.iter().map(|range| range.len as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::byteorder::little_endian::U32;

    #[test]
    fn slices_stay_inside_their_buffer() {
        let buffer = SharedBuffer::new(0x10_0000, 3 * 4096, 7).unwrap();
        assert_eq!(buffer.gpadl_id(), 7);
        let slice = buffer.slice(4000, 200).unwrap();
        assert_eq!(slice.gpa(), 0x10_0000 + 4000);
        assert_eq!(slice.byte_offset(), 4000);
        assert_eq!(slice.page_count(), 2);
        assert!(slice.pfns().eq([0x100, 0x101]));
        assert!(slice
            .page_pieces()
            .eq([(0x10_0000 + 4000, 96), (0x10_1000, 104)]));
        assert!(buffer.slice(0, 3 * 4096).is_ok());
        assert_eq!(
            buffer.slice(3 * 4096 - 1, 2),
            Err(BufferError::OutOfBounds {
                offset: 3 * 4096 - 1,
                len: 2,
                buffer_len: 3 * 4096
            })
        );
        assert!(buffer.slice(usize::MAX, 2).is_err());
        assert_eq!(buffer.slice(0, 0), Err(BufferError::Empty));
    }

    #[test]
    fn buffers_must_be_page_aligned_and_not_wrap() {
        assert_eq!(
            SharedBuffer::new(0x1001, 4096, 1),
            Err(BufferError::Misaligned { gpa: 0x1001 })
        );
        assert_eq!(SharedBuffer::new(0x1000, 0, 1), Err(BufferError::Empty));
        assert_eq!(
            SharedBuffer::new(u64::MAX - 4095, 8192, 1),
            Err(BufferError::Overflow)
        );
    }

    fn range(offset: u32, count: u32) -> TransferPageRange {
        TransferPageRange {
            byte_count: U32::new(count),
            byte_offset: U32::new(offset),
        }
    }

    #[test]
    fn transfer_ranges_are_checked_against_the_receive_buffer() {
        let receive = ReceiveBuffer {
            buffer: SharedBuffer::new(0x20_0000, 16 * 4096, 3).unwrap(),
            transfer_page_set_id: 0xCAFE,
        };
        let good = [range(0, 1500), range(16 * 4096 - 10, 10)];
        let ranges = receive.validate(0xCAFE, &good).unwrap();
        assert_eq!(ranges.total_len(), 1510);
        assert!(ranges.iter().eq([
            ReceivedRange {
                offset: 0,
                len: 1500
            },
            ReceivedRange {
                offset: 16 * 4096 - 10,
                len: 10
            }
        ]));
        assert_eq!(
            receive.validate(0xBEEF, &good),
            Err(TransferError::WrongSet {
                got: 0xBEEF,
                expected: 0xCAFE
            })
        );
        let outside = [range(0, 10), range(16 * 4096 - 10, 11)];
        assert_eq!(
            receive.validate(0xCAFE, &outside),
            Err(TransferError::RangeOutside {
                index: 1,
                offset: 16 * 4096 - 10,
                count: 11
            })
        );
        let wrapping = [range(u32::MAX, 2)];
        assert!(matches!(
            receive.validate(0xCAFE, &wrapping),
            Err(TransferError::RangeOutside { .. })
        ));
        assert_eq!(
            receive.validate(0xCAFE, &[range(5, 0)]),
            Err(TransferError::EmptyRange { index: 0 })
        );
    }

    proptest! {
        /// Any slice the buffer hands out lies inside it, its PFNs are the
        /// buffer's pages, and its page pieces add up to it without crossing
        /// a page.
        #[test]
        fn slices_describe_only_buffer_pages(
            base_page in 0u64..(1 << 40),
            pages in 1usize..64,
            offset in 0usize..(70 * 4096),
            len in 0usize..(70 * 4096),
        ) {
            let buffer = SharedBuffer::new(base_page * PAGE, pages * 4096, 1).unwrap();
            match buffer.slice(offset, len) {
                Ok(slice) => {
                    prop_assert!(len > 0 && offset + len <= buffer.len());
                    for pfn in slice.pfns() {
                        prop_assert!(pfn >= base_page && pfn < base_page + pages as u64);
                    }
                    prop_assert_eq!(slice.pfns().count(), slice.page_count());
                    let mut total = 0u64;
                    let mut next = slice.gpa();
                    for (gpa, piece) in slice.page_pieces() {
                        prop_assert_eq!(gpa, next);
                        prop_assert!(piece > 0);
                        prop_assert!(gpa % PAGE + piece as u64 <= PAGE);
                        total += piece as u64;
                        next = gpa + piece as u64;
                    }
                    prop_assert_eq!(total, len as u64);
                    prop_assert_eq!(slice.page_pieces().count(), slice.page_count());
                }
                Err(_) => prop_assert!(len == 0 || offset + len > buffer.len()),
            }
        }

        /// Whatever ranges a host sends, accepted ones lie inside the
        /// receive buffer, and any range outside it refuses the packet.
        #[test]
        fn accepted_transfer_ranges_lie_inside(
            buffer_pages in 1usize..32,
            set in any::<u16>(),
            raw in proptest::collection::vec((any::<u32>(), any::<u32>()), 1..8),
            small in any::<bool>(),
        ) {
            let buffer_len = buffer_pages * 4096;
            let receive = ReceiveBuffer {
                buffer: SharedBuffer::new(0x4000_0000, buffer_len, 9).unwrap(),
                transfer_page_set_id: 1,
            };
            // Half the cases stay near the buffer so acceptance is common.
            let ranges: std::vec::Vec<TransferPageRange> = raw
                .iter()
                .map(|&(offset, count)| if small {
                    range(offset % (buffer_len as u32 + 64), count % 4096)
                } else {
                    range(offset, count)
                })
                .collect();
            let all_inside = ranges.iter().all(|r| {
                let (offset, count) = (r.byte_offset.get() as u64, r.byte_count.get() as u64);
                count > 0 && offset + count <= buffer_len as u64
            });
            match receive.validate(set, &ranges) {
                Ok(accepted) => {
                    prop_assert_eq!(set, 1);
                    prop_assert!(all_inside);
                    for r in accepted.iter() {
                        prop_assert!(r.offset as u64 + r.len as u64 <= buffer_len as u64);
                    }
                }
                Err(_) => prop_assert!(set != 1 || !all_inside),
            }
        }
    }
}
