//! The kernel path to Hyper-V (kernel patch 0008): synthetic MSRs and
//! hypercalls through the hypervisor capability the root task puts in
//! [`SLOT_HYPERVISOR`] of the one PD the description grants
//! `hypervisor = true`. Every check is the kernel's (the MSR range, Hyper-V
//! present with the needed privileges, the caller's pages); this module
//! only names its answers. In any other PD the slot is empty and every
//! call returns [`HypervisorError::NotGranted`].
//!
//! Trusts: the kernel. Writes: nothing of its own; a hypercall's output
//! page is written by the hypervisor.

use crate::abi::SLOT_HYPERVISOR;
use sel4_bindings as sys;

/// Why the kernel refused a hypervisor invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorError {
    /// This PD holds no hypervisor capability (kernel: InvalidCapability).
    NotGranted,
    /// CPUID does not report Hyper-V, or not the privilege this MSR or
    /// hypercalls need, or the MSR is one the kernel does not list, or the
    /// hypercall page is not enabled (kernel: IllegalOperation).
    NoHyperV,
    /// The MSR is outside 0x40000000..=0x400000FF (kernel: RangeError).
    OutOfRange,
    /// A page argument is not a page-aligned 4 KiB page mapped in this PD
    /// with the rights needed (kernel: InvalidArgument).
    BadPage,
    /// Any other kernel error code.
    Kernel(u64),
}

impl From<sys::KernelError> for HypervisorError {
    fn from(error: sys::KernelError) -> Self {
        match error.0 {
            1 => HypervisorError::BadPage,
            2 => HypervisorError::NotGranted,
            3 => HypervisorError::NoHyperV,
            4 => HypervisorError::OutOfRange,
            other => HypervisorError::Kernel(other),
        }
    }
}

/// A hypercall's input or output argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallArg {
    /// No input (or output) page: 0.
    None,
    /// A fast hypercall's raw register value (control bit 16 set).
    Fast(u64),
    /// A slow hypercall's page: the page-aligned address of a page mapped
    /// in this PD (readable for input, writable for output); the kernel
    /// gives the hypervisor its physical address.
    Page(*const u8),
}

impl HypercallArg {
    fn word(self) -> u64 {
        match self {
            HypercallArg::None => 0,
            HypercallArg::Fast(value) => value,
            HypercallArg::Page(page) => page as u64,
        }
    }
}

/// Read synthetic MSR `msr`.
pub fn read_msr(msr: u32) -> Result<u64, HypervisorError> {
    Ok(sys::hypervisor_read_msr(SLOT_HYPERVISOR, u64::from(msr))?)
}

/// Write synthetic MSR `msr`. For the MSRs that carry a guest physical
/// address (SIEFP, SIMP, reference TSC) `page` names this PD's writable
/// page the kernel puts in the address bits; the kernel ignores the
/// address bits of `value` for them, and for the HYPERCALL MSR (its own
/// hypercall page).
pub fn write_msr(msr: u32, value: u64, page: Option<*const u8>) -> Result<(), HypervisorError> {
    let page_vaddr = page.map_or(0, |page| page as u64);
    Ok(sys::hypervisor_write_msr(
        SLOT_HYPERVISOR,
        u64::from(msr),
        value,
        page_vaddr,
    )?)
}

/// Make a hypercall; returns the hypervisor's status word (result code in
/// bits 0-15, reps completed in bits 32-43).
pub fn hypercall(
    control: u64,
    input: HypercallArg,
    output: HypercallArg,
) -> Result<u64, HypervisorError> {
    Ok(sys::hypervisor_call(
        SLOT_HYPERVISOR,
        control,
        input.word(),
        output.word(),
    )?)
}

/// Execute RDMSR of `msr` at user level, for the test that shows a PD
/// cannot bypass the capability: RDMSR is privileged, so the CPU raises
/// #GP, the kernel stops the PD and sends its fault to the monitor; the
/// call does not return.
pub fn rdmsr_at_user_level(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDMSR at CPL 3 always faults (#GP) before it reads or writes
    // anything; the asm declares the registers it would write.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nostack));
    }
    u64::from(high) << 32 | u64::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_name_the_refusal() {
        assert_eq!(
            HypervisorError::from(sys::KernelError(2)),
            HypervisorError::NotGranted
        );
        assert_eq!(
            HypervisorError::from(sys::KernelError(3)),
            HypervisorError::NoHyperV
        );
        assert_eq!(
            HypervisorError::from(sys::KernelError(4)),
            HypervisorError::OutOfRange
        );
        assert_eq!(
            HypervisorError::from(sys::KernelError(1)),
            HypervisorError::BadPage
        );
        assert_eq!(
            HypervisorError::from(sys::KernelError(9)),
            HypervisorError::Kernel(9)
        );
    }

    #[test]
    fn arguments_are_words() {
        assert_eq!(HypercallArg::None.word(), 0);
        assert_eq!(HypercallArg::Fast(7).word(), 7);
        assert_eq!(HypercallArg::Page(0x5000 as *const u8).word(), 0x5000);
    }
}
