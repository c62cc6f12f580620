//! The simulated host as a component of the seL4 image: guest memory is
//! the set of host-visible regions the description gives the host (each
//! with its guest physical address), `synic`'s hypervisor calls
//! (`vmbus_ipc::hypervisor::Request`) arrive as protected calls, and the
//! synic interrupt leaves as a notification, or, when the description
//! gives the host a vector IRQ for it, through the kernel
//! ([`InterruptPath`]).
//!
//! [`RegionMemory`] is the `GuestMemory` over those regions: an access must
//! lie entirely inside one region; a GPA in no region does not exist (the
//! host answers as Hyper-V does for memory outside the partition).
//! [`HostPd`] is the call and notification handling; the component's
//! `init` builds it from its generated region and channel identifiers.

use crate::sim::Simulator;
use crate::synic::{Exception, APIC_EOI_MSR};
use crate::vmbus::ServerConfig;
use alloc::vec::Vec;
use component_api::{decode_request, encode_reply, Channel, Env, Refusal, Region};
use hv_interface::{GuestMemory, OutOfRange};
use vmbus_ipc::hypervisor::{Hypervisor, Reply, Request};

/// Guest memory made of host-visible regions at their GPAs.
pub struct RegionMemory {
    regions: Vec<(u64, Region)>,
    end: u64,
}

impl RegionMemory {
    /// Regions without a guest physical address are ignored (they are not
    /// host-visible). Overlapping regions are refused.
    pub fn new(regions: &[Region]) -> Result<Self, Region> {
        let mut placed: Vec<(u64, Region)> = Vec::new();
        for region in regions {
            let Some(gpa) = region.guest_physical() else {
                continue;
            };
            let end = gpa.checked_add(region.len() as u64).ok_or(*region)?;
            if placed
                .iter()
                .any(|(other, r)| gpa < other + r.len() as u64 && *other < end)
            {
                return Err(*region);
            }
            placed.push((gpa, *region));
        }
        placed.sort_by_key(|(gpa, _)| *gpa);
        let end = placed
            .iter()
            .map(|(gpa, r)| gpa + r.len() as u64)
            .max()
            .unwrap_or(0);
        Ok(RegionMemory {
            regions: placed,
            end,
        })
    }

    /// The region holding `gpa..gpa+len` and the offset in it.
    fn locate(&self, gpa: u64, len: u64) -> Result<(&Region, usize), OutOfRange> {
        let out = OutOfRange { gpa, len };
        let end = gpa.checked_add(len).ok_or(out)?;
        self.regions
            .iter()
            .find(|(base, region)| gpa >= *base && end <= base + region.len() as u64)
            .map(|(base, region)| (region, (gpa - base) as usize))
            .ok_or(out)
    }

    fn atomic(&self, gpa: u64) -> Result<&core::sync::atomic::AtomicU32, OutOfRange> {
        let (region, offset) = self.locate(gpa, 4)?;
        region
            .atomic_u32(offset)
            .map_err(|_| OutOfRange { gpa, len: 4 })
    }
}

impl GuestMemory for RegionMemory {
    fn size(&self) -> u64 {
        self.end
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        self.locate(gpa, len).is_ok()
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let len = buf.len() as u64;
        let (region, offset) = self.locate(gpa, len)?;
        region
            .read(offset, buf)
            .map_err(|_| OutOfRange { gpa, len })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let len = data.len() as u64;
        let (region, offset) = self.locate(gpa, len)?;
        region
            .write(offset, data)
            .map_err(|_| OutOfRange { gpa, len })
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.load(core::sync::atomic::Ordering::SeqCst))
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        self.atomic(gpa)?
            .store(value, core::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self
            .atomic(gpa)?
            .fetch_or(bits, core::sync::atomic::Ordering::SeqCst))
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self
            .atomic(gpa)?
            .fetch_and(bits, core::sync::atomic::Ordering::SeqCst))
    }
}

/// How the synic interrupt reaches `synic`.
#[derive(Clone, Copy, Debug)]
pub enum InterruptPath {
    /// A notification on this notify channel (`interrupt`).
    Notify(Channel),
    /// The description's vector IRQ (`[[irq]] vector`, `notify` = the end
    /// of synic that `interrupt` reaches): raised with `Env::irq_raise`, on
    /// seL4 the kernel's self-IPI of the handler's vector, which arrives through the
    /// kernel's interrupt entry and is signalled to synic exactly as a
    /// vector Hyper-V injects. Every SINT is kept on `vector`
    /// ([`crate::synic::Synic::set_fixed_vector`]).
    Vector { irq: Channel, vector: u8 },
}

/// How many synic interrupts took which path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStats {
    /// Steps that delivered at least one interrupt (one signal each: the
    /// guest scans its pages on each).
    pub signalled: u64,
    /// Of those, by notification.
    pub notified: u64,
    /// Of those, raised through the kernel.
    pub raised: u64,
    /// Raises the kernel refused (nothing reached synic).
    pub raise_failures: u64,
    /// IRQ acknowledgements: at once after a raise on an auto-EOI vector,
    /// else on the guest's end of interrupt.
    pub acknowledged: u64,
}

/// The simulated host's call and notification handling in a component.
pub struct HostPd<M: GuestMemory> {
    pub sim: Simulator<M>,
    interrupt: InterruptPath,
    stats: InterruptStats,
    /// The reference TSC page's pair (`crate::tsc_clock`).
    tsc_calibration: crate::tsc_clock::TscCalibration,
}

impl<M: GuestMemory> HostPd<M> {
    pub fn new(memory: M, config: ServerConfig, interrupt: Channel) -> Self {
        Self::with_interrupt_path(memory, config, InterruptPath::Notify(interrupt))
    }

    pub fn with_interrupt_path(memory: M, config: ServerConfig, path: InterruptPath) -> Self {
        let mut sim = Simulator::new(memory, config);
        if let InterruptPath::Vector { vector, .. } = path {
            sim.host.synic.set_fixed_vector(Some(vector));
        }
        HostPd {
            sim,
            interrupt: path,
            stats: InterruptStats::default(),
            tsc_calibration: Default::default(),
        }
    }

    /// Read the TSC with the clock and publish a new pair if there is one.
    fn update_tsc_clock(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        let Some(tsc) = env.time_stamp_counter() else {
            return;
        };
        if let Some(clock) = self
            .tsc_calibration
            .observe(tsc.ticks, tsc.ticks_per_second, now)
        {
            self.sim.set_tsc_clock(Some(clock));
        }
    }

    pub fn interrupt_path(&self) -> InterruptPath {
        self.interrupt
    }

    pub fn interrupt_stats(&self) -> InterruptStats {
        self.stats
    }

    fn reply_of(result: Result<u64, Exception>) -> Reply {
        match result {
            Ok(value) => Reply::Value(value),
            Err(Exception::GeneralProtection) => Reply::GeneralProtection,
            Err(Exception::InvalidOpcode) => Reply::InvalidOpcode,
        }
    }

    /// Runs the server and sends the synic interrupt if any was delivered:
    /// one signal however many (the guest scans its SIM/SIEF pages on
    /// each; a notification carries no vector, and a vector raised again
    /// before it is taken is taken once, as in a local APIC).
    pub fn step(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        self.sim.step(now);
        self.update_tsc_clock(env);
        let mut delivered = None;
        while let Some(vector) = self.sim.take_interrupt() {
            delivered = Some(vector);
        }
        let Some(vector) = delivered else {
            return;
        };
        self.stats.signalled += 1;
        match self.interrupt {
            InterruptPath::Notify(channel) => {
                env.notify(channel);
                self.stats.notified += 1;
            }
            InterruptPath::Vector { irq, .. } => {
                if env.irq_raise(irq) {
                    self.stats.raised += 1;
                } else {
                    self.stats.raise_failures += 1;
                }
                if self.sim.host.synic.vector_auto_eoi(vector) {
                    env.irq_ack(irq);
                    self.stats.acknowledged += 1;
                }
            }
        }
    }

    /// One hypervisor call from `synic`.
    pub fn call(
        &mut self,
        env: &mut dyn Env,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        let request = decode_request::<Hypervisor>(message)?;
        // The reference counter reads the clock as of this instruction.
        self.sim.advance_clock(env.now_ns());
        self.update_tsc_clock(env);
        let answer = match request {
            Request::MsrRead { msr } => Self::reply_of(self.sim.msr_read(msr)),
            Request::MsrWrite { msr, value } => match self.sim.msr_write(msr, value) {
                Ok(()) => Reply::Done,
                Err(error) => Self::reply_of(Err(error)),
            },
            Request::Hypercall {
                control,
                input,
                output,
            } => Self::reply_of(self.sim.hypercall(control, input, output)),
            Request::EndOfInterrupt => match self.sim.msr_write(APIC_EOI_MSR, 0) {
                Ok(()) => {
                    if let InterruptPath::Vector { irq, .. } = self.interrupt {
                        env.irq_ack(irq);
                        self.stats.acknowledged += 1;
                    }
                    Reply::Done
                }
                Err(error) => Self::reply_of(Err(error)),
            },
        };
        self.step(env);
        encode_reply::<Hypervisor>(reply, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperv_defs::msr;

    fn region(gpa: u64, pages: usize) -> Region {
        Region::leaked(pages * 4096).with_guest_physical(gpa)
    }

    #[test]
    fn region_memory_has_holes_and_refuses_overlaps() {
        let memory = RegionMemory::new(&[region(0x10_0000, 2), region(0x4000, 1)]).unwrap();
        assert_eq!(memory.size(), 0x10_2000);
        assert!(memory.contains(0x4000, 4096));
        assert!(!memory.contains(0x4000, 4097));
        assert!(!memory.contains(0x5000, 1));
        memory.write(0x10_1ffc, &[1, 2, 3, 4]).unwrap();
        assert_eq!(memory.load_u32(0x10_1ffc).unwrap(), 0x0403_0201);
        assert!(memory.read(0x10_1ffe, &mut [0u8; 4]).is_err());
        assert!(memory.load_u32(0x4002).is_err());
        assert!(RegionMemory::new(&[region(0x4000, 2), region(0x5000, 1)]).is_err());
    }

    #[test]
    fn msr_outside_the_regions_is_refused() {
        let memory = RegionMemory::new(&[region(0x8000, 2)]).unwrap();
        let mut sim = Simulator::new(memory, ServerConfig::default());
        assert!(sim.msr_write(msr::SIMP, 0x8000 | 1).is_ok());
        assert_eq!(
            sim.msr_write(msr::SIEFP, 0x2000 | 1),
            Err(Exception::GeneralProtection)
        );
    }
}
