//! `hyperv-gate` (PD `hyperv`): the server behind `synic`'s `hypervisor`
//! channel on real Hyper-V, where the simulated host (`hvsim`) serves it in
//! the test images. It answers the same `vmbus_ipc::hypervisor` requests on
//! its `guest` end with the same reply shapes (`Value`, `Done`,
//! `GeneralProtection`), but through the seL4 kernel's hypervisor
//! capability (`sel4_runtime::hypervisor`): the synthetic MSRs and
//! hypercalls only the kernel may execute. `synic` cannot tell which of the
//! two serves it.
//!
//! What it does:
//! - Translates every guest physical address `synic` names into this PD's
//!   own mapping of the same page ([`GpaMap`]): the description maps
//!   `synic`'s GPA-bearing regions (`synic_pages`, `hypercall_pages`, and
//!   the reference TSC page's region when there is one) into this PD too,
//!   each with its guest physical address. The kernel accepts a page for a
//!   GPA-bearing MSR (SIMP, SIEFP, the reference TSC page) or a slow
//!   hypercall only as a virtual address mapped writable in the caller, so
//!   a GPA outside those maps is refused here (`GeneralProtection`,
//!   counted in [`Counters::refused_gpas`]) and never reaches the kernel.
//! - The hypercall MSR belongs to the kernel (a write only enables or
//!   disables the kernel's own hypercall page): a write is checked (its
//!   page must be one of ours), passed on and kept; a read gives back what
//!   `synic` wrote, enabled only while the kernel's page is.
//! - Rewrites the vector `synic` programs into a SINT (and a direct-mode
//!   synthetic timer) to the vector of this PD's `[[irq]] vector = N`, the
//!   one the kernel binds to a notification; reads give `synic` its own
//!   vector back. Auto-EOI is cleared on the way: the seL4 kernel sends the
//!   local APIC its EOI for every interrupt it takes, and a second
//!   (automatic) EOI would end another interrupt in service. Without such
//!   an IRQ the values pass unchanged.
//! - `EndOfInterrupt` (and a write of the APIC EOI MSR) acknowledges that
//!   IRQ to the kernel; the kernel has already sent the APIC its EOI.
//! - Slow hypercalls get their input and output pages translated (page
//!   aligned, as the kernel takes them), fast ones pass their values
//!   untouched.
//!
//! What it trusts: the kernel's answers; the description for which pages
//! may be named. Not `synic`'s requests: every GPA is checked against the
//! maps and every MSR outside what `synic` needs of the APIC is refused.
//! Kernel refusals (no Hyper-V, not granted, a page it rejects) are
//! answered `GeneralProtection`, as the processor would, and counted.
//!
//! What it writes: synthetic MSRs and hypercalls through the kernel (whose
//! pages the hypervisor then writes: SIMP, SIEFP, the hypercall output
//! page), the IRQ acknowledgement, the interrupt notification to `synic`,
//! and console lines.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{decode_request, encode_reply, Refusal, Region};
use hyperv_defs::{msr, HypercallControl, HypercallMsr, SintFlags, SintMsr, StimerConfig};
use vmbus_ipc::hypervisor::{Hypervisor, Reply, Request};

/// HV_X64_MSR_REFERENCE_TSC: enable bit 0, the page's GPN in bits 63:12.
pub const REFERENCE_TSC_MSR: u32 = 0x4000_0021;
/// HV_X64_MSR_APIC_EOI, ICR and TPR: the synthetic APIC access MSRs.
pub const APIC_EOI_MSR: u32 = 0x4000_0070;
pub const APIC_ICR_MSR: u32 = 0x4000_0071;
pub const APIC_TPR_MSR: u32 = 0x4000_0072;
/// HV_X64_MSR_VP_ASSIST_PAGE: carries a GPA the kernel does not check.
pub const VP_ASSIST_PAGE_MSR: u32 = 0x4000_0073;
/// Synthetic timers: config MSRs at 0xB0, 0xB2, 0xB4, 0xB6.
const STIMER_COUNT: usize = 4;
/// The most GPA-bearing maps the gate translates through.
pub const MAX_TRANSLATED_REGIONS: usize = 8;
const PAGE: u64 = hyperv_defs::PAGE_SIZE;

/// Why the kernel refused a hypervisor invocation
/// (`sel4_runtime::hypervisor::HypervisorError`, one to one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// This PD holds no hypervisor capability.
    NotGranted,
    /// CPUID reported no Hyper-V with the needed privileges.
    NoHyperV,
    /// An MSR outside the synthetic range.
    OutOfRange,
    /// The page named is not mapped writable here (or the GPA is not its
    /// physical address).
    BadPage,
    /// Any other kernel error code.
    Kernel(u64),
}

/// A hypercall's input or output (`sel4_runtime::hypervisor::HypercallArg`):
/// nothing, a fast call's register value, or a page of this PD by its
/// virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallArg {
    None,
    Fast(u64),
    Page(usize),
}

/// The kernel's hypervisor capability. The seL4 implementation invokes it;
/// the unit tests use a fake that records what it was asked.
pub trait KernelHypervisor {
    fn read_msr(&mut self, msr: u32) -> Result<u64, KernelError>;
    /// `page`: this PD's virtual address of the page a GPA-bearing MSR's
    /// value names.
    fn write_msr(&mut self, msr: u32, value: u64, page: Option<usize>) -> Result<(), KernelError>;
    /// The hypercall's result (RAX).
    fn hypercall(
        &mut self,
        control: u64,
        input: CallArg,
        output: CallArg,
    ) -> Result<u64, KernelError>;
    /// Acknowledge the synic interrupt's IRQ to the kernel.
    fn ack_interrupt(&mut self);
}

/// Why the maps cannot be translated through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Two regions claim the same guest physical page.
    Overlap,
    /// A region's GPA is not page aligned.
    Misaligned,
    /// More than [`MAX_TRANSLATED_REGIONS`].
    TooMany,
}

/// This PD's GPA-bearing maps: guest physical page -> its own address.
#[derive(Debug, Default)]
pub struct GpaMap {
    regions: heapless::Vec<(u64, Region), MAX_TRANSLATED_REGIONS>,
}

impl GpaMap {
    /// Maps without a guest physical address are skipped: the host cannot
    /// name them.
    pub fn new(regions: &[Region]) -> Result<Self, MapError> {
        let mut map = GpaMap::default();
        for region in regions {
            let Some(gpa) = region.guest_physical() else {
                continue;
            };
            if !gpa.is_multiple_of(PAGE) {
                return Err(MapError::Misaligned);
            }
            let end = gpa
                .checked_add(region.len() as u64)
                .ok_or(MapError::Overlap)?;
            if map
                .regions
                .iter()
                .any(|(other, r)| gpa < other + r.len() as u64 && *other < end)
            {
                return Err(MapError::Overlap);
            }
            map.regions
                .push((gpa, *region))
                .map_err(|_| MapError::TooMany)?;
        }
        Ok(map)
    }

    /// How many regions translate.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// This PD's address of `gpa`, if the whole 4 KiB page holding it lies
    /// in one writable map (the hypervisor may access anything up to the
    /// page's end, and the kernel takes only writable pages).
    pub fn translate(&self, gpa: u64) -> Option<usize> {
        let page = gpa & !(PAGE - 1);
        let page_end = page.checked_add(PAGE)?;
        self.regions
            .iter()
            .find(|(base, region)| {
                region.writable() && page >= *base && page_end <= base + region.len() as u64
            })
            .map(|(base, region)| region.as_ptr() as usize + (gpa - base) as usize)
    }
}

/// What the gate has done, for the console and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub calls: u32,
    /// GPAs outside the maps (or in a read-only map): answered #GP.
    pub refused_gpas: u32,
    /// MSRs the gate does not pass (APIC ICR/TPR, an enabled VP assist
    /// page): answered #GP.
    pub refused_msrs: u32,
    /// Invocations the kernel refused: answered #GP.
    pub kernel_refusals: u32,
    /// SINT and timer writes whose vector was rewritten.
    pub vectors_rewritten: u32,
    /// IRQ acknowledgements (end of interrupt, or a forwarded interrupt).
    pub interrupts_acked: u32,
}

/// What `synic` last wrote into a SINT or a direct-mode timer whose vector
/// the gate rewrote: given back on reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Programmed {
    vector: u8,
    auto_eoi: bool,
}

/// The server: one `vmbus_ipc::hypervisor` request at a time.
pub struct Gate<K: KernelHypervisor> {
    kernel: K,
    map: GpaMap,
    /// The vector of the gate's `[[irq]]`, when the description gives one.
    vector: Option<u8>,
    sints: [Option<Programmed>; hyperv_defs::SINT_COUNT],
    timers: [Option<u8>; STIMER_COUNT],
    /// The hypercall MSR as `synic` wrote it (the kernel owns the real one).
    hypercall_msr: u64,
    /// The request in service, for [`Gate::first_kernel_refusal`].
    current: Option<Request>,
    /// The first request the kernel refused and why (the console says it
    /// once; the rest are counted).
    pub first_kernel_refusal: Option<(Request, KernelError)>,
    pub counters: Counters,
}

impl<K: KernelHypervisor> Gate<K> {
    /// `vector`: the interrupt vector the kernel delivers as this PD's IRQ
    /// (`None`: SINT vectors pass unchanged). A vector below 16 cannot be
    /// a SINT's and is ignored.
    pub fn new(kernel: K, map: GpaMap, vector: Option<u8>) -> Self {
        Gate {
            kernel,
            map,
            vector: vector.filter(|v| *v >= hyperv_defs::SINT_FIRST_VALID_VECTOR),
            sints: [None; hyperv_defs::SINT_COUNT],
            timers: [None; STIMER_COUNT],
            hypercall_msr: 0,
            current: None,
            first_kernel_refusal: None,
            counters: Counters::default(),
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    pub fn vector(&self) -> Option<u8> {
        self.vector
    }

    /// One encoded request from `synic`, answered in `reply`.
    pub fn serve(&mut self, message: &[u8], reply: &mut [u8]) -> Result<usize, Refusal> {
        let request = decode_request::<Hypervisor>(message)?;
        let answer = self.handle(request);
        encode_reply::<Hypervisor>(reply, &answer)
    }

    pub fn handle(&mut self, request: Request) -> Reply {
        self.counters.calls = self.counters.calls.wrapping_add(1);
        self.current = Some(request);
        match request {
            Request::MsrRead { msr } => self.msr_read(msr),
            Request::MsrWrite { msr, value } => self.msr_write(msr, value),
            Request::Hypercall {
                control,
                input,
                output,
            } => self.hypercall(control, input, output),
            Request::EndOfInterrupt => {
                self.end_of_interrupt();
                Reply::Done
            }
        }
    }

    /// The IRQ fired on this PD's own notification: acknowledge it (the
    /// caller then notifies `synic`).
    pub fn interrupt(&mut self) {
        self.end_of_interrupt();
    }

    fn end_of_interrupt(&mut self) {
        if self.vector.is_some() {
            self.kernel.ack_interrupt();
            self.counters.interrupts_acked = self.counters.interrupts_acked.wrapping_add(1);
        }
    }

    fn refused_gpa(&mut self) -> Reply {
        self.counters.refused_gpas = self.counters.refused_gpas.wrapping_add(1);
        Reply::GeneralProtection
    }

    fn refused_msr(&mut self) -> Reply {
        self.counters.refused_msrs = self.counters.refused_msrs.wrapping_add(1);
        Reply::GeneralProtection
    }

    fn kernel_refused(&mut self, error: KernelError) -> Reply {
        self.counters.kernel_refusals = self.counters.kernel_refusals.wrapping_add(1);
        if self.first_kernel_refusal.is_none() {
            self.first_kernel_refusal = self.current.map(|request| (request, error));
        }
        Reply::GeneralProtection
    }

    fn msr_read(&mut self, number: u32) -> Reply {
        if matches!(number, APIC_EOI_MSR | APIC_ICR_MSR | APIC_TPR_MSR) {
            return self.refused_msr();
        }
        let value = match self.kernel.read_msr(number) {
            Ok(value) => value,
            Err(error) => return self.kernel_refused(error),
        };
        let value = if number == msr::HYPERCALL {
            let enabled =
                HypercallMsr(value).enabled() && HypercallMsr(self.hypercall_msr).enabled();
            (self.hypercall_msr & !HypercallMsr::ENABLE) | u64::from(enabled)
        } else if let Some(programmed) =
            msr::sint_index(number).and_then(|i| self.sints[i as usize])
        {
            let ours = SintMsr::VECTOR_MASK | SintFlags::AUTO_EOI.bits();
            (value & !ours)
                | u64::from(programmed.vector)
                | if programmed.auto_eoi {
                    SintFlags::AUTO_EOI.bits()
                } else {
                    0
                }
        } else if let Some(vector) = timer_index(number).and_then(|i| self.timers[i]) {
            (value & !StimerConfig::APIC_VECTOR_MASK)
                | (u64::from(vector) << StimerConfig::APIC_VECTOR_SHIFT)
        } else {
            value
        };
        Reply::Value(value)
    }

    fn msr_write(&mut self, number: u32, value: u64) -> Reply {
        let mut value = value;
        let mut page = None;
        match number {
            APIC_EOI_MSR => {
                self.end_of_interrupt();
                return Reply::Done;
            }
            APIC_ICR_MSR | APIC_TPR_MSR => return self.refused_msr(),
            VP_ASSIST_PAGE_MSR if value & 1 != 0 => return self.refused_msr(),
            msr::HYPERCALL => {
                if HypercallMsr(value).enabled()
                    && self.map.translate(HypercallMsr(value).gpa()).is_none()
                {
                    return self.refused_gpa();
                }
                // The kernel enables or disables its own page; synic's
                // address is kept for its reads.
                return match self.kernel.write_msr(number, value, None) {
                    Ok(()) => {
                        self.hypercall_msr = value;
                        Reply::Done
                    }
                    Err(error) => self.kernel_refused(error),
                };
            }
            msr::SIMP | msr::SIEFP | REFERENCE_TSC_MSR => {
                let gpa = value & !(PAGE - 1);
                page = self.map.translate(gpa);
                // Disabling names no page the hypervisor will touch.
                if value & 1 != 0 && page.is_none() {
                    return self.refused_gpa();
                }
            }
            _ => {
                if let (Some(vector), Some(index)) = (self.vector, msr::sint_index(number)) {
                    let sint = SintMsr(value);
                    self.sints[index as usize] = Some(Programmed {
                        vector: sint.vector(),
                        auto_eoi: sint.auto_eoi(),
                    });
                    value = (value & !(SintMsr::VECTOR_MASK | SintFlags::AUTO_EOI.bits()))
                        | u64::from(vector);
                    self.counters.vectors_rewritten =
                        self.counters.vectors_rewritten.wrapping_add(1);
                } else if let (Some(vector), Some(index)) = (self.vector, timer_index(number)) {
                    if value & StimerConfig::DIRECT_MODE != 0 {
                        let theirs = ((value & StimerConfig::APIC_VECTOR_MASK)
                            >> StimerConfig::APIC_VECTOR_SHIFT)
                            as u8;
                        self.timers[index] = Some(theirs);
                        value = (value & !StimerConfig::APIC_VECTOR_MASK)
                            | (u64::from(vector) << StimerConfig::APIC_VECTOR_SHIFT);
                        self.counters.vectors_rewritten =
                            self.counters.vectors_rewritten.wrapping_add(1);
                    } else {
                        self.timers[index] = None;
                    }
                }
            }
        }
        match self.kernel.write_msr(number, value, page) {
            Ok(()) => Reply::Done,
            Err(error) => self.kernel_refused(error),
        }
    }

    fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Reply {
        let (input, output) = if HypercallControl(control).fast() {
            (CallArg::Fast(input), CallArg::Fast(output))
        } else {
            let (Some(input), Some(output)) = (self.page_arg(input), self.page_arg(output)) else {
                return self.refused_gpa();
            };
            (input, output)
        };
        match self.kernel.hypercall(control, input, output) {
            Ok(result) => Reply::Value(result),
            Err(error) => self.kernel_refused(error),
        }
    }

    /// A slow hypercall's input or output: GPA 0 names no page (calls
    /// without output pass 0, and the root task never hands out physical
    /// page 0); any other GPA must be page aligned (the kernel takes whole
    /// pages: TLFS's 8-byte alignment is not enough) and translate.
    fn page_arg(&self, gpa: u64) -> Option<CallArg> {
        if gpa == 0 {
            return Some(CallArg::None);
        }
        if !gpa.is_multiple_of(PAGE) {
            return None;
        }
        self.map.translate(gpa).map(CallArg::Page)
    }
}

/// Which synthetic timer's config MSR `number` is.
fn timer_index(number: u32) -> Option<usize> {
    let offset = number.checked_sub(msr::STIMER0_CONFIG)? as usize;
    (offset.is_multiple_of(2) && offset / 2 < STIMER_COUNT).then_some(offset / 2)
}

#[cfg(test)]
mod tests;
