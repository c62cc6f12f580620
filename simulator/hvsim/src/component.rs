//! The simulated host as an seL4 protection domain.
//!
//! Guest memory is every host-visible region, which the description maps
//! into this component (sysdesc adds those maps for the `simulated_host`),
//! each at the guest physical address the root task reports for it.
//! `synic`'s hypervisor calls arrive on the `guest` call channel and the
//! synic interrupt leaves on the `interrupt` notify channel
//! ([`hvsim::pd::HostPd`]).
//!
//! Time: the host only runs when something happens, so it programs the
//! PC's interval timer (PIT channel 0, IO ports `pit`, ISA IRQ 0 = IOAPIC
//! pin 2, delivered on `timer`) at [`TICK_HZ`] and steps the simulator on
//! each tick as well as on each call: heartbeat requests, time samples,
//! delayed replies and the scenario ([`hvsim::scenario::Scenario`],
//! chosen and embedded by build.rs) advance with guest time. Between ticks it waits, so
//! the kernel idles.
//!
//! Trusts: nothing from the guest (the simulator validates everything).
//! Disk: when the description grants the primary IDE channel's ports
//! (`ide`, `ide_control`), QEMU's IDE disk ([`crate::ide`], polled ATA PIO)
//! is the first storage device's LUN 0; a disk whose block 0 is marked
//! scratch gets the write/read-back test first.
//!
//! Network: when the description grants the NE2000's ports (`ne2000`)
//! and QEMU has one there, hvsim checks at boot that QEMU's gateway
//! answers an ARP request through it ([`crate::nic`]), then it is the NIC
//! host's network (a network device is offered for it); its IRQ (`nic`)
//! steps the host as soon as a frame arrives.
//!
//! Console: when the description grants QEMU's std VGA (its ports and
//! the framebuffer as device memory) and the i8042, the host shows the
//! synthetic screen on QEMU's display and hands what is typed and moved
//! there to the synthetic keyboard and mouse ([`crate::qemu_console`]).
//!
//! Writes: the host-visible regions, the PIT, the IDE disk (what the guest
//! writes to LUN 0, or the scratch test), the NE2000 (the frames the guest
//! sends), QEMU's VGA framebuffer and registers, the i8042's commands, the
//! interrupt notification and console lines.

use alloc::vec::Vec;
use component_api::{println, Channel, ChannelSet, Component, Env, Refusal, Region};
use hvsim::pd::{HostPd, InterruptPath, InterruptStats, RegionMemory};
use hvsim::script::{Script, ScriptRunner};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));
// `fn scenario()`: the host's scenario for the description being built
// (build.rs: the `.hvsim` file, read with serde, checked, written as Rust).
include!(concat!(env!("OUT_DIR"), "/scenario.rs"));

// The simulator's heap (GPADL tables, queued messages, packet copies).
use sel4_heap as _;

/// Timer ticks per second: fine enough for the 1 s heartbeat and time
/// sample periods, coarse enough to leave the CPU idle in between.
pub const TICK_HZ: u32 = 20;
const PIT_INPUT_HZ: u32 = 1_193_182;

/// PIT channel 0, mode 2 (rate generator), lobyte/hibyte: an edge on IRQ 0
/// every 1/`hz` s.
fn start_timer(env: &mut dyn Env, hz: u32) {
    let divisor = (PIT_INPUT_HZ / hz).clamp(1, 0xffff);
    env.ioport_write(ioports::PIT, 3, 1, 0x34);
    env.ioport_write(ioports::PIT, 0, 1, divisor & 0xff);
    env.ioport_write(ioports::PIT, 0, 1, divisor >> 8);
}

pub struct SimulatedHost {
    host: HostPd<RegionMemory>,
    script: ScriptRunner,
    /// The NE2000's interrupt, when the description grants it.
    nic_irq: Option<Channel>,
    /// The guest had VMBus connected at the last look.
    connected: bool,
    /// The synic-interrupt counters as last reported.
    reported: InterruptStats,
    /// QEMU's display and PS/2 devices, as far as granted and present.
    console: crate::qemu_console::QemuConsole,
}

impl SimulatedHost {
    fn run_script(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        for line in self.script.run(&mut self.host.sim, now) {
            println!(env, "{}", line);
        }
        for name in self.script.take_due_crashes() {
            // Fault injection: the monitor stops the PD as if it faulted.
            let done = sel4_runtime::inject_fault(&name);
            println!(
                env,
                "host: fault injection: {} {}",
                name,
                if done {
                    "stopped as if it faulted"
                } else {
                    "refused by the monitor (root task not built for fault injection?)"
                }
            );
        }
        // The script's requests may have raised the interrupt.
        self.host.step(env);
        self.report_interrupts(env);
        self.console.refresh(&mut self.host.sim);
    }

    /// Says how the synic interrupt went: its first raise through the
    /// kernel, the first refused one, and the totals when the guest
    /// unloads VMBus (the boot tests check them).
    fn report_interrupts(&mut self, env: &mut dyn Env) {
        let stats = self.host.interrupt_stats();
        if let InterruptPath::Vector { vector, .. } = self.host.interrupt_path() {
            if self.reported.raised == 0 && stats.raised > 0 {
                println!(
                    env,
                    "host: synic interrupt raised through the kernel: vector {:#x}", vector
                );
            }
            if self.reported.raise_failures == 0 && stats.raise_failures > 0 {
                println!(
                    env,
                    "host: the kernel refused to raise vector {:#x}: synic gets no interrupt",
                    vector
                );
            }
        }
        self.reported = stats;
        let connected = self.host.sim.vmbus.version().is_some();
        if self.connected && !connected {
            let synic = self.host.sim.host.synic.stats;
            let path = match self.host.interrupt_path() {
                InterruptPath::Vector { vector, .. } => alloc::format!("by vector {vector:#x}"),
                InterruptPath::Notify(_) => "by notification".into(),
            };
            // The fixed part first: the boot tests match it.
            println!(
                env,
                "host: synic interrupts {}: {} refused, {} notified; {} raised through the kernel, {} acknowledged; the host's synic delivered {} ({} lost) in {} signals",
                path,
                stats.raise_failures,
                stats.notified,
                stats.raised,
                stats.acknowledged,
                synic.interrupts_delivered,
                synic.interrupts_lost,
                stats.signalled
            );
        }
        self.connected = connected;
    }
}

impl Component for SimulatedHost {
    fn init(env: &mut dyn Env) -> Self {
        let regions: Vec<Region> = REGION_NAMES
            .iter()
            .map(|(name, _)| env.region(*name))
            .collect();
        let memory = match RegionMemory::new(&regions) {
            Ok(memory) => memory,
            Err(_) => panic!("host-visible regions overlap"),
        };
        let visible = regions
            .iter()
            .filter(|r| r.guest_physical().is_some())
            .count();
        // build.rs checked the scenario already.
        let script = match Script::from_scenario(&scenario()) {
            Ok(script) => script,
            Err(invalid) => panic!("the embedded scenario is invalid: {invalid:?}"),
        };
        println!(
            env,
            "simulated Hyper-V host: {} host-visible regions, {} devices, VMBus {}.{} to {}.{}",
            visible,
            script.devices.len(),
            script.min_version.major(),
            script.min_version.minor(),
            script.max_version.major(),
            script.max_version.minor()
        );
        let mut disk = crate::ide::attach(env);
        if let Some(disk) = disk.as_mut() {
            if crate::ide::is_scratch(disk) {
                crate::ide::scratch_test(env, disk);
            }
        }
        let mut nic = crate::nic::attach(env);
        if let Some(nic) = nic.as_mut() {
            crate::nic::arp_check(env, nic);
        }
        let nic_irq = component_api::id_named(IRQ_NAMES, "nic");
        let console = crate::qemu_console::QemuConsole::attach(env, scenario().qemu_console_test);
        start_timer(env, TICK_HZ);
        let mut config = script.server_config();
        // QEMU's IDE disk is the storage device's LUN 0, before the
        // scenario's memory disks (as the hosted host's `--disk` files are);
        // a scenario without a storage device gets a SCSI controller for it,
        // as the hosted host does for `--disk`.
        if disk.is_some() {
            hvsim::script::add_storage_for_disk(&mut config);
        }
        // QEMU's NE2000 is the NIC host's network; a scenario without a
        // network device gets one for it, as the hosted host does for
        // `--net`.
        if nic.is_some() {
            hvsim::script::add_network(&mut config);
        }
        // QEMU's display shows the synthetic screen (and its PS/2 devices
        // type and point): the bring-up run (no scenario) offers the
        // console devices for it; a scenario offers the devices it names.
        if console.has_display() && scenario() == hvsim::scenario::Scenario::default() {
            hvsim::script::add_console_devices(&mut config);
        }
        // A vector IRQ that signals the end our `interrupt` channel reaches
        // (synic's) stands in for that channel: the interrupt then takes
        // the kernel's path, as Hyper-V's does.
        let path = match VECTOR_IRQS
            .iter()
            .find(|irq| irq.signals_peer_of == Some(channels::INTERRUPT))
        {
            Some(irq) => {
                println!(
                    env,
                    "host: synic interrupt by vector {:#x}: raised through the kernel, every SINT kept on it",
                    irq.vector
                );
                InterruptPath::Vector {
                    irq: irq.irq,
                    vector: irq.vector,
                }
            }
            None => InterruptPath::Notify(channels::INTERRUPT),
        };
        let mut host = HostPd::with_interrupt_path(memory, config, path);
        if let Some(disk) = disk {
            match host.sim.storage_attach(alloc::boxed::Box::new(disk)) {
                Some(lun) => println!(env, "host: storage LUN {lun}: disk 0 (QEMU's IDE disk)"),
                None => println!(env, "host: no free storage LUN for disk 0"),
            }
        }
        if let Some(mut nic) = nic {
            // A bridge: the guest's NIC has an address of its own.
            nic.set_promiscuous(true);
            if host.sim.net_set_backend(alloc::boxed::Box::new(nic)) {
                println!(
                    env,
                    "host: network: QEMU's NE2000 (user networking, 10.0.2.0/24)"
                );
            }
        }
        for line in script.attach_memory_disks(&mut host.sim) {
            println!(env, "{}", line);
        }
        SimulatedHost {
            host,
            script: ScriptRunner::new(script),
            nic_irq,
            connected: false,
            reported: InterruptStats::default(),
            console,
        }
    }

    /// A tick (or any notification): run the host.
    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(irqs::TIMER) {
            env.irq_ack(irqs::TIMER);
        }
        self.console.poll_input(env, channels, &mut self.host.sim);
        self.host.step(env);
        if let Some(irq) = self.nic_irq {
            // Acknowledged after the step, in which the NIC host had the
            // NE2000 acknowledge its causes: the line is low again, so the
            // next frame raises a new edge.
            if channels.contains(irq) {
                env.irq_ack(irq);
            }
        }
        self.run_script(env);
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::GUEST {
            return Err(Refusal::NOT_SERVED);
        }
        let length = self.host.call(env, message, reply)?;
        self.run_script(env);
        Ok(length)
    }
}
