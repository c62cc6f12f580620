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

use crate::ps2::{Ps2Event, Scancode};
use crate::vga::{StdVga, VgaPorts};

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

/// What the QEMU console (the host's own display and PS/2 devices in the
/// seL4 image: [`crate::vga`], [`crate::ps2`]) needs from the simulator:
/// the synthetic screen's changes, and a way to hand the synthetic
/// keyboard and mouse what the user typed and moved.
pub trait ConsoleHost {
    /// If the synthetic screen changed since the last call, hand `show`
    /// the changed rectangle of the host's picture one row at a time (x,
    /// y, the row's pixels); whether it changed.
    fn show_screen_damage(&mut self, show: &mut dyn FnMut(u32, u32, &[u32])) -> bool;
    /// One keystroke to the synthetic keyboard; false when it is not open.
    fn type_key(&mut self, key: Scancode) -> bool;
    /// The synthetic mouse's absolute position (0..=0x7fff both axes) and
    /// buttons; false when it is not open.
    fn move_pointer(&mut self, x: u16, y: u16, buttons: u8) -> bool;
}

/// The simulator's video, keyboard and mouse hosts. The picture is read a
/// row at a time (`Simulator::screen_rows`): the seL4 host's heap (1 MiB)
/// does not hold a whole 3 MiB picture.
impl<M: GuestMemory> ConsoleHost for Simulator<M> {
    fn show_screen_damage(&mut self, show: &mut dyn FnMut(u32, u32, &[u32])) -> bool {
        let Some(rect) = self.take_screen_damage() else {
            return false;
        };
        let x = rect.0;
        self.screen_rows(rect, &mut |y, row| show(x, y, row))
            .is_some()
    }
    fn type_key(&mut self, key: Scancode) -> bool {
        Simulator::type_key(
            self,
            crate::keyboard::HostKey {
                code: key.code,
                e0: key.e0,
                e1: key.e1,
                released: key.released,
                unicode: false,
            },
        )
    }
    fn move_pointer(&mut self, x: u16, y: u16, buttons: u8) -> bool {
        Simulator::move_pointer(self, x, y, buttons)
    }
}

/// Copy what changed on the synthetic screen to QEMU's display; the bytes
/// written.
pub fn refresh_display<P: VgaPorts>(host: &mut impl ConsoleHost, vga: &mut StdVga<P>) -> usize {
    let mut written = 0;
    host.show_screen_damage(&mut |x, y, row| written += vga.show_row(x, y, row));
    written
}

/// Hand one event of the host's PS/2 devices to the synthetic keyboard or
/// mouse; whether it took it.
pub fn deliver_input(host: &mut impl ConsoleHost, event: Ps2Event) -> bool {
    match event {
        Ps2Event::Key(key) => host.type_key(key),
        Ps2Event::Pointer { x, y, buttons } => host.move_pointer(x, y, buttons),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vga::Rect;
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

    /// A console host with a screen that changed once, and the input it got.
    #[derive(Default)]
    struct FakeConsole {
        damage: Option<Rect>,
        keys: Vec<Scancode>,
        pointer: Vec<(u16, u16, u8)>,
    }

    impl ConsoleHost for FakeConsole {
        fn show_screen_damage(&mut self, show: &mut dyn FnMut(u32, u32, &[u32])) -> bool {
            let Some(rect) = self.damage.take() else {
                return false;
            };
            let row = alloc::vec![0x00ab_cdefu32; rect.width as usize];
            for y in rect.y..rect.y + rect.height {
                show(rect.x, y, &row);
            }
            true
        }
        fn type_key(&mut self, key: Scancode) -> bool {
            self.keys.push(key);
            true
        }
        fn move_pointer(&mut self, x: u16, y: u16, buttons: u8) -> bool {
            self.pointer.push((x, y, buttons));
            true
        }
    }

    #[test]
    fn the_console_glue_routes_input_and_copies_damage() {
        let mut console = FakeConsole::default();
        let key = Scancode {
            code: 0x1d,
            e0: true,
            e1: false,
            released: true,
        };
        assert!(deliver_input(&mut console, Ps2Event::Key(key)));
        assert!(deliver_input(
            &mut console,
            Ps2Event::Pointer {
                x: 5,
                y: 0x7fff,
                buttons: 2
            }
        ));
        assert_eq!(console.keys, [key]);
        assert_eq!(console.pointer, [(5, 0x7fff, 2)]);
        // Without the synthetic keyboard's channel open nothing is taken.
        let mut sim = Simulator::new(
            RegionMemory::new(&[region(0x8000, 1)]).unwrap(),
            ServerConfig::default(),
        );
        assert!(!deliver_input(&mut sim, Ps2Event::Key(key)));
    }

    #[test]
    fn damage_is_copied_to_the_display_once() {
        let framebuffer = Region::leaked(crate::vga::MODE_BYTES);
        let mut vga = StdVga::attach(crate::vga::Model::new(), framebuffer, 0xfd00_0000).unwrap();
        let mut console = FakeConsole {
            damage: Some(Rect {
                x: 10,
                y: 20,
                width: 3,
                height: 2,
            }),
            ..FakeConsole::default()
        };
        assert_eq!(refresh_display(&mut console, &mut vga), 3 * 2 * 4);
        assert_eq!(refresh_display(&mut console, &mut vga), 0);
        let mut word = [0u8; 4];
        framebuffer
            .read(((21 * 1024 + 12) * 4) as usize, &mut word)
            .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x00ab_cdef);
        framebuffer
            .read(((22 * 1024 + 12) * 4) as usize, &mut word)
            .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0);
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
