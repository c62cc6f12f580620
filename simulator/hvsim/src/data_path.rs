//! The host's side of the data-path send shapes: GPA-direct packets from
//! the guest resolved only through the GPADLs the guest created for that
//! channel, and transfer-page packets into the guest's receive buffer
//! GPADL.
//!
//! The endpoint ([`crate::channel::ChannelEndpoint`]) keeps a copy of its
//! channel's created GPADLs (other than the ring), refreshed by the server
//! before each step. A GPA-direct range whose PFN lies outside every one of
//! them is a rule violation: counted, the packet consumed and not
//! completed, no byte of guest memory read for it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::PAGE_SIZE;
use vmbus_protocol::packet::GpaRanges;

/// A channel's created GPADLs other than its ring: id -> pages in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelGpadls {
    gpadls: BTreeMap<u32, Vec<u64>>,
}

impl ChannelGpadls {
    /// Make the set equal to `current` (the server's created GPADLs of the
    /// channel); pages are copied only for GPADLs not known yet.
    pub fn sync<'a>(&mut self, current: impl Iterator<Item = (u32, &'a [u64])> + Clone) {
        self.gpadls
            .retain(|id, _| current.clone().any(|(current_id, _)| current_id == *id));
        for (id, pages) in current {
            self.gpadls.entry(id).or_insert_with(|| pages.to_vec());
        }
    }

    pub fn insert(&mut self, id: u32, pages: Vec<u64>) {
        self.gpadls.insert(id, pages);
    }

    pub fn remove(&mut self, id: u32) {
        self.gpadls.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.gpadls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gpadls.is_empty()
    }

    pub fn pages(&self, id: u32) -> Option<&[u64]> {
        self.gpadls.get(&id).map(Vec::as_slice)
    }

    /// Whether some GPADL of the channel holds page `pfn`.
    pub fn holds(&self, pfn: u64) -> bool {
        self.gpadls.values().any(|pages| pages.contains(&pfn))
    }
}

/// One GPA range of a guest packet, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRange {
    pub byte_offset: u32,
    pub byte_count: u32,
    pub pfns: Vec<u64>,
}

/// Resolve a GPA-direct packet's ranges through the channel's GPADLs.
/// `Err(pfn)`: the first PFN outside all of them.
pub fn resolve(gpadls: &ChannelGpadls, ranges: &GpaRanges<'_>) -> Result<Vec<ResolvedRange>, u64> {
    let mut resolved = Vec::with_capacity(ranges.len());
    for range in ranges.iter() {
        let pfns: Vec<u64> = range.pfns().collect();
        if let Some(&outside) = pfns.iter().find(|&&pfn| !gpadls.holds(pfn)) {
            return Err(outside);
        }
        resolved.push(ResolvedRange {
            byte_offset: range.byte_offset,
            byte_count: range.byte_count,
            pfns,
        });
    }
    Ok(resolved)
}

/// The bytes the ranges describe, in order (what a device would DMA).
pub fn read_ranges<M: GuestMemory>(memory: &M, ranges: &[ResolvedRange]) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    for range in ranges {
        let mut offset = range.byte_offset as u64;
        let mut left = range.byte_count as u64;
        for &pfn in &range.pfns {
            if left == 0 {
                break;
            }
            let take = (PAGE_SIZE - offset).min(left);
            let start = bytes.len();
            bytes.resize(start + take as usize, 0);
            memory
                .read(pfn.checked_mul(PAGE_SIZE)? + offset, &mut bytes[start..])
                .ok()?;
            left -= take;
            offset = 0;
        }
    }
    Some(bytes)
}

/// Write `data` at byte `offset` of a GPADL's pages (the host filling the
/// guest's receive buffer). `None` if it does not fit the GPADL.
pub fn write_into<M: GuestMemory>(
    memory: &M,
    pages: &[u64],
    offset: u64,
    data: &[u8],
) -> Option<()> {
    let end = offset.checked_add(data.len() as u64)?;
    if end > pages.len() as u64 * PAGE_SIZE {
        return None;
    }
    let mut at = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let page = pages[(at / PAGE_SIZE) as usize];
        let in_page = (PAGE_SIZE - at % PAGE_SIZE).min(rest.len() as u64) as usize;
        memory
            .write(page * PAGE_SIZE + at % PAGE_SIZE, &rest[..in_page])
            .ok()?;
        rest = &rest[in_page..];
        at += in_page as u64;
    }
    Some(())
}

/// The guest's receive buffer as the host knows it: which GPADL, which
/// transfer page set id the packets name, and where the next data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostReceiveBuffer {
    pub gpadl_id: u32,
    pub transfer_page_set_id: u16,
    /// Next free byte (the host hands out sections round-robin).
    pub cursor: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    #[test]
    fn sync_follows_the_server() {
        let mut gpadls = ChannelGpadls::default();
        let a = [1u64, 2];
        let b = [7u64];
        gpadls.sync([(10, &a[..]), (11, &b[..])].into_iter());
        assert!(gpadls.holds(2) && gpadls.holds(7) && !gpadls.holds(3));
        gpadls.sync([(11, &b[..])].into_iter());
        assert_eq!(gpadls.len(), 1);
        assert!(!gpadls.holds(2));
    }

    #[test]
    fn writes_and_reads_cross_pages_in_gpadl_order() {
        let memory = VecMemory::new(16 * 4096);
        // Pages out of order in guest memory, as a GPADL may be.
        let pages = [5u64, 3];
        let data: Vec<u8> = (0..200u8).collect();
        write_into(&memory, &pages, 4000, &data).unwrap();
        let mut first = [0u8; 96];
        memory.read(5 * 4096 + 4000, &mut first).unwrap();
        assert_eq!(&first[..], &data[..96]);
        let range = ResolvedRange {
            byte_offset: 4000,
            byte_count: 200,
            pfns: pages.to_vec(),
        };
        assert_eq!(read_ranges(&memory, &[range]).unwrap(), data);
        assert!(write_into(&memory, &pages, 8192 - 10, &[0; 11]).is_none());
        assert!(write_into(&memory, &pages, u64::MAX, &[0; 2]).is_none());
    }
}
