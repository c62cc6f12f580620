//! One ring inside a VSC's ring region: a 4 KiB control page followed by
//! the data area, at a byte offset of the region. Every access goes through
//! the region's bounds-checked copies and atomics, so no offset the ring code
//! derives can reach outside this ring's part of the region.

use component_api::Region;
use core::sync::atomic::AtomicU32;
use vmbus_protocol::packet::control::CONTROL_PAGE_SIZE;
use vmbus_ring::{MemoryError, RingMemory};

#[derive(Clone, Copy, Debug)]
pub struct RegionPart {
    region: Region,
    /// Offset of the control page in the region.
    base: usize,
    data_len: usize,
}

impl RegionPart {
    /// The ring whose control page starts at `base` and which spans `len`
    /// bytes (control page included) of `region`.
    pub fn new(region: Region, base: usize, len: usize) -> Result<Self, MemoryError> {
        let end = base.checked_add(len).ok_or(MemoryError)?;
        if len <= CONTROL_PAGE_SIZE || end > region.len() || !base.is_multiple_of(CONTROL_PAGE_SIZE)
        {
            return Err(MemoryError);
        }
        Ok(Self {
            region,
            base,
            data_len: len - CONTROL_PAGE_SIZE,
        })
    }

    fn data_offset(&self, offset: usize, count: usize) -> Result<usize, MemoryError> {
        match offset.checked_add(count) {
            Some(end) if end <= self.data_len => Ok(self.base + CONTROL_PAGE_SIZE + offset),
            _ => Err(MemoryError),
        }
    }
}

impl RingMemory for RegionPart {
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        if offset + 4 > CONTROL_PAGE_SIZE {
            return Err(MemoryError);
        }
        #[cfg(any(test, feature = "testing"))]
        probe::control_access(self.base + offset);
        // The region outlives `self`; the reference is tied to `&self`.
        Ok(self.region.atomic_u32(self.base + offset)?)
    }
    fn data_len(&self) -> usize {
        self.data_len
    }
    fn double_mapped(&self) -> bool {
        false
    }
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let at = self.data_offset(offset, out.len())?;
        Ok(self.region.read_bulk(at, out)?)
    }
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let at = self.data_offset(offset, data.len())?;
        Ok(self.region.write_bulk(at, data)?)
    }
}

/// Test seam (feature `testing`): a hook run on this thread before every
/// control-word access of any [`RegionPart`], with the word's offset in its
/// region. It lets a test host act at an exact point of the driver's ring
/// protocol (say, write a packet just before the driver publishes its read
/// index). The hook is taken out while it runs, so the test host's own ring
/// accesses inside it do not re-enter it.
#[cfg(any(test, feature = "testing"))]
pub mod probe {
    use std::boxed::Box;
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(usize)>;

    std::thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Run `hook` before every control-word access on this thread.
    pub fn set(hook: impl FnMut(usize) + 'static) {
        HOOK.with(|slot| *slot.borrow_mut() = Some(Box::new(hook)));
    }

    pub fn clear() {
        HOOK.with(|slot| *slot.borrow_mut() = None);
    }

    pub(crate) fn control_access(offset: usize) {
        let Some(mut hook) = HOOK.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        hook(offset);
        HOOK.with(|slot| {
            let mut slot = slot.borrow_mut();
            // A hook the hook installed replaces it.
            if slot.is_none() {
                *slot = Some(hook);
            }
        });
    }
}

/// The two rings of a VSC's ring region, split as the bus manager tells the
/// host: the first `out_len` bytes are the guest-to-host ("out") ring, the
/// rest the host-to-guest ("in") ring (the sizes of the driver's
/// `[[driver]]` stanza, generated as `driver::RING_OUT_BYTES`).
pub fn split_rings(
    region: Region,
    out_len: usize,
) -> Result<(RegionPart, RegionPart), MemoryError> {
    let in_len = region.len().checked_sub(out_len).ok_or(MemoryError)?;
    Ok((
        RegionPart::new(region, 0, out_len)?,
        RegionPart::new(region, out_len, in_len)?,
    ))
}

/// Zero the whole ring region (both rings, control pages and data): what
/// a VSC does before each open request, so nothing of an earlier life (its
/// indices, its packets, what the host wrote) is in the rings the host is
/// about to be given. Only the VSC maps its rings; the bus manager knows
/// them by address only.
pub fn zero_rings(region: Region) -> Result<(), MemoryError> {
    let zeros = [0u8; 512];
    let mut offset = 0;
    while offset < region.len() {
        let count = zeros.len().min(region.len() - offset);
        region.write_bulk(offset, &zeros[..count])?;
        offset += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use component_api::Env;
    use env_double::EnvDouble;

    #[test]
    fn parts_stay_inside_their_half() {
        let mut env = EnvDouble::new();
        let name = env.add_region(32768, true);
        let (out_ring, in_ring) = split_rings(env.region(name), 16384).unwrap();
        assert_eq!(out_ring.data_len(), 12288);
        assert_eq!(in_ring.data_len(), 12288);
        in_ring.write_data(12280, &[7; 8]).unwrap();
        assert_eq!(in_ring.write_data(12281, &[7; 8]), Err(MemoryError));
        assert_eq!(
            out_ring.read_data(usize::MAX, &mut [0; 1]),
            Err(MemoryError)
        );
        assert!(out_ring.control(4094).is_err());
        let mut last = [0u8; 8];
        env.test_view(name).read(32760, &mut last).unwrap();
        assert_eq!(last, [7; 8]);
        assert!(RegionPart::new(env.region(name), 16384, 20480).is_err());
    }
}
