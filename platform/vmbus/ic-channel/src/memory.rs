//! A VSC's two rings in the four regions the `[[driver]]` expansion gives
//! it: per ring a one-page control region and a data region, the data
//! mapped twice back to back where the runtime can (seL4: the same frames
//! again; hosted: the memfd range again), so a packet that crosses the end
//! of the data area is one copy. Each ring is a
//! [`vmbus_ring::RegionRingMemory`] over its two regions: every access goes
//! through the regions' bounds-checked copies and atomics.

use component_api::{Env, Region, RegionName};
use vmbus_protocol::packet::control::CONTROL_PAGE_SIZE;
use vmbus_ring::{MemoryError, RegionRingMemory};

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

/// The guest-to-host ("out") ring and the host-to-guest ("in") ring.
pub fn rings(
    env: &dyn Env,
    regions: RingRegions,
) -> Result<(RegionRingMemory, RegionRingMemory), MemoryError> {
    Ok((
        ring_memory(
            env.region(regions.out_control),
            env.region(regions.out_data),
        )?,
        ring_memory(env.region(regions.in_control), env.region(regions.in_data))?,
    ))
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
