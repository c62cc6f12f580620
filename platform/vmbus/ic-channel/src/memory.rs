//! A VSC's two rings in the four regions the `[[driver]]` expansion gives
//! it: per ring a one-page control region and a data region, the data
//! mapped twice back to back where the runtime can (seL4: the same frames
//! again; hosted: the memfd range again), so a packet that crosses the end
//! of the data area is one copy. Each ring is a
//! [`vmbus_ring::RegionRingMemory`] over its two regions: every access goes
//! through the regions' bounds-checked copies and atomics.

use component_api::{Env, Region, RegionName};
use core::sync::atomic::AtomicU32;
use vmbus_protocol::packet::control::CONTROL_PAGE_SIZE;
use vmbus_ring::{MemoryError, RegionRingMemory, RingMemory};

/// The VSC's ring regions (its maps `ring_out_control`, `ring_out`,
/// `ring_in_control`, `ring_in`; the ring GPADL describes them in this
/// order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegions {
    pub out_control: RegionName,
    pub out_data: RegionName,
    pub in_control: RegionName,
    pub in_data: RegionName,
}

impl RingRegions {
    pub fn all(&self) -> [RegionName; 4] {
        [
            self.out_control,
            self.out_data,
            self.in_control,
            self.in_data,
        ]
    }
}

/// A ring over its control region and data region.
pub fn ring_memory(control: Region, data: Region) -> Result<RegionRingMemory, MemoryError> {
    if data.len() < CONTROL_PAGE_SIZE {
        return Err(MemoryError);
    }
    RegionRingMemory::new(control, data)
}

/// Which of a channel's two rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSide {
    /// Guest to host: the driver writes it.
    Out,
    /// Host to guest: the driver reads it.
    In,
}

/// One of the driver's rings: a [`RegionRingMemory`] that knows which ring
/// it is, so the test seam ([`probe`]) can name the control word touched.
pub struct ChannelRing {
    memory: RegionRingMemory,
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    side: RingSide,
}

impl RingMemory for ChannelRing {
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        #[cfg(any(test, feature = "testing"))]
        probe::control_access(self.side, offset);
        self.memory.control(offset)
    }
    fn data_len(&self) -> usize {
        self.memory.data_len()
    }
    fn double_mapped(&self) -> bool {
        self.memory.double_mapped()
    }
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        self.memory.read_data(offset, out)
    }
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        self.memory.write_data(offset, data)
    }
}

/// The guest-to-host ("out") ring and the host-to-guest ("in") ring.
pub fn rings(
    env: &dyn Env,
    regions: RingRegions,
) -> Result<(ChannelRing, ChannelRing), MemoryError> {
    Ok((
        ChannelRing {
            memory: ring_memory(
                env.region(regions.out_control),
                env.region(regions.out_data),
            )?,
            side: RingSide::Out,
        },
        ChannelRing {
            memory: ring_memory(env.region(regions.in_control), env.region(regions.in_data))?,
            side: RingSide::In,
        },
    ))
}

/// Test seam (feature `testing`): a hook run on this thread before every
/// control-word access of the driver's rings ([`ChannelRing`]), with the
/// ring and the word's offset in its control page. It lets a test host act
/// at an exact point of the driver's ring protocol (say, write a packet
/// just before the driver publishes its read index). The hook is taken out
/// while it runs, so ring accesses inside it do not re-enter it.
#[cfg(any(test, feature = "testing"))]
pub mod probe {
    use super::RingSide;
    use std::boxed::Box;
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(RingSide, usize)>;

    std::thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Run `hook` before every control-word access on this thread.
    pub fn set(hook: impl FnMut(RingSide, usize) + 'static) {
        HOOK.with(|slot| *slot.borrow_mut() = Some(Box::new(hook)));
    }

    pub fn clear() {
        HOOK.with(|slot| *slot.borrow_mut() = None);
    }

    pub(crate) fn control_access(side: RingSide, offset: usize) {
        let Some(mut hook) = HOOK.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        hook(side, offset);
        HOOK.with(|slot| {
            let mut slot = slot.borrow_mut();
            // A hook the hook installed replaces it.
            if slot.is_none() {
                *slot = Some(hook);
            }
        });
    }
}

/// Zero both rings (control pages and data): what a VSC does before each
/// open request, so nothing of an earlier life (its indices, its packets,
/// what the host wrote) is in the rings the host is about to be given.
/// Only the VSC maps its rings; the bus manager knows them by address only.
pub fn zero_rings(env: &dyn Env, regions: RingRegions) -> Result<(), MemoryError> {
    for name in regions.all() {
        zero_region(env.region(name))?;
    }
    Ok(())
}

/// Zero a region's own bytes (once, even when it is mapped twice).
fn zero_region(region: Region) -> Result<(), MemoryError> {
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
    use env_double::EnvDouble;
    use vmbus_ring::RingMemory;

    #[test]
    fn rings_stay_inside_their_regions() {
        let mut env = EnvDouble::new();
        let regions = RingRegions {
            out_control: env.add_region(4096, true),
            out_data: env.add_region(12288, true),
            in_control: env.add_region(4096, true),
            in_data: env.add_region(8192, true),
        };
        let (out_ring, in_ring) = rings(&env, regions).unwrap();
        assert_eq!(out_ring.data_len(), 12288);
        assert_eq!(in_ring.data_len(), 8192);
        in_ring.write_data(8184, &[7; 8]).unwrap();
        assert_eq!(in_ring.write_data(8185, &[7; 8]), Err(MemoryError));
        assert_eq!(
            out_ring.read_data(usize::MAX, &mut [0; 1]),
            Err(MemoryError)
        );
        assert!(out_ring.control(4094).is_err());
        let mut last = [0u8; 8];
        env.test_view(regions.in_data)
            .read(8184, &mut last)
            .unwrap();
        assert_eq!(last, [7; 8]);
        // A control region smaller than a page is refused.
        let small = env.add_region(2048, true);
        assert!(ring_memory(env.region(small), env.region(regions.in_data)).is_err());
        zero_rings(&env, regions).unwrap();
        env.test_view(regions.in_data)
            .read(8184, &mut last)
            .unwrap();
        assert_eq!(last, [0; 8]);
    }
}
