//! The gate as an seL4 protection domain: [`hyperv_gate::Gate`] over the
//! kernel's hypervisor capability (`sel4_runtime::hypervisor`, granted
//! because the description says `hypervisor = true`), its GPA-bearing maps
//! and, when the description gives it an `[[irq]]` with a `vector`, that
//! IRQ. The kernel signals it to `synic.hypervisor_interrupt` itself when
//! the description says `notify = "synic.hypervisor_interrupt"`;
//! otherwise it comes here and is acknowledged and forwarded on
//! `interrupt`. An MSI-kind IRQ is never masked by the seL4 kernel, so the
//! acknowledgement (on synic's end of interrupt) does not gate delivery.

use component_api::{println, Channel, ChannelSet, Component, Env, Refusal, Region};
use hyperv_gate::{CallArg, Gate, GpaMap, KernelError, KernelHypervisor};
use sel4_runtime::hypervisor::{self, HypercallArg, HypervisorError};
use vmbus_ipc::hypervisor::Request;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The most maps a component has (the description's limit).
const MAX_MAPS: usize = 64;

/// The kernel's hypervisor capability, and the IRQ to acknowledge.
struct Sel4Kernel {
    irq: Option<Channel>,
}

fn kernel_error(error: HypervisorError) -> KernelError {
    match error {
        HypervisorError::NotGranted => KernelError::NotGranted,
        HypervisorError::NoHyperV => KernelError::NoHyperV,
        HypervisorError::OutOfRange => KernelError::OutOfRange,
        HypervisorError::BadPage => KernelError::BadPage,
        HypervisorError::Kernel(code) => KernelError::Kernel(code),
    }
}

fn argument(arg: CallArg) -> HypercallArg {
    match arg {
        CallArg::None => HypercallArg::None,
        CallArg::Fast(value) => HypercallArg::Fast(value),
        // An address in this PD's own VSpace, which the kernel translates.
        CallArg::Page(address) => HypercallArg::Page(address as *const u8),
    }
}

impl KernelHypervisor for Sel4Kernel {
    fn read_msr(&mut self, msr: u32) -> Result<u64, KernelError> {
        hypervisor::read_msr(msr).map_err(kernel_error)
    }
    fn write_msr(&mut self, msr: u32, value: u64, page: Option<usize>) -> Result<(), KernelError> {
        hypervisor::write_msr(msr, value, page.map(|address| address as *const u8))
            .map_err(kernel_error)
    }
    fn hypercall(
        &mut self,
        control: u64,
        input: CallArg,
        output: CallArg,
    ) -> Result<u64, KernelError> {
        hypervisor::hypercall(control, argument(input), argument(output)).map_err(kernel_error)
    }
    fn ack_interrupt(&mut self) {
        if let Some(irq) = self.irq {
            sel4_runtime::Sel4Env::current().irq_ack(irq);
        }
    }
}

pub struct HypervGate {
    gate: Gate<Sel4Kernel>,
    irq: Option<Channel>,
    /// Where to pass the IRQ on when it is delivered to this PD.
    forward: Option<Channel>,
}

impl Component for HypervGate {
    fn init(env: &mut dyn Env) -> Self {
        let maps: heapless::Vec<Region, MAX_MAPS> = REGION_NAMES
            .iter()
            .take(MAX_MAPS)
            .map(|(name, _)| env.region(*name))
            .collect();
        let map = match GpaMap::new(&maps) {
            Ok(map) => map,
            Err(error) => panic!("the gate's maps cannot translate: {error:?}"),
        };
        let sint = VECTOR_IRQS.first();
        let irq = sint.map(|v| v.irq);
        // Delivered to this PD (not straight to synic): forwarded.
        let forward = sint
            .filter(|v| v.signals_peer_of.is_none())
            .and_then(|_| component_api::id_named(CHANNEL_NAMES, "interrupt"));
        let gate = Gate::new(Sel4Kernel { irq }, map, sint.map(|v| v.vector));
        match gate.vector() {
            Some(vector) => println!(
                env,
                "hyperv gate: {} pages translated, SINT vector {:#x} by IRQ",
                gate_pages(&maps),
                vector
            ),
            None => println!(
                env,
                "hyperv gate: {} pages translated, SINT vectors unchanged (no [[irq]] vector)",
                gate_pages(&maps)
            ),
        }
        HypervGate { gate, irq, forward }
    }

    /// The IRQ arrived on the gate's own notification: acknowledge it and
    /// tell synic, as hvsim's `interrupt` does.
    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if self.irq.is_some_and(|irq| channels.contains(irq)) {
            self.gate.interrupt();
            if let Some(interrupt) = self.forward {
                env.notify(interrupt);
            }
        }
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
        let refused_before = self.gate.first_kernel_refusal.is_some();
        let length = self.gate.serve(message, reply)?;
        if let (false, Some((request, error))) = (refused_before, self.gate.first_kernel_refusal) {
            let (operation, number) = match request {
                Request::MsrRead { msr } => ("msr_read", u64::from(msr)),
                Request::MsrWrite { msr, .. } => ("msr_write", u64::from(msr)),
                Request::Hypercall { control, .. } => ("hypercall", control & 0xFFFF),
                Request::EndOfInterrupt => ("end_of_interrupt", 0),
            };
            println!(
                env,
                "hyperv gate: the kernel refused {} {:#x}: {:?} (answered GeneralProtection; further refusals are counted)",
                operation,
                number,
                error
            );
        }
        Ok(length)
    }
}

/// Pages of the maps that carry a guest physical address.
fn gate_pages(maps: &[Region]) -> usize {
    maps.iter()
        .filter(|r| r.guest_physical().is_some())
        .map(|r| r.len() / 4096)
        .sum()
}
