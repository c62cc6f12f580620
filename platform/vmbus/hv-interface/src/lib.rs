//! The hypervisor boundary as the guest's `synic` component sees it.
//!
//! [`Hypervisor`] is the whole interface: read and write a synthetic MSR,
//! make a hypercall (control word, input GPA or fast value, output GPA or
//! fast value), and take and end the synic interrupt. Two backends sit
//! behind it today: the simulated host as an seL4 component (`hvsim`'s
//! PD, reached over a protected-call channel), and the hosted transport in
//! [`hosted`] (feature `hosted`), where guest physical memory is one shared
//! file (GPA = byte offset) and the operations travel over a Unix socket to
//! a host process. Real Hyper-V needs a kernel extension on seL4 that does
//! not exist yet.
//! [`wire`] is that transport's record format; `docs/hypervisor-transport.md`
//! is its specification.
//!
//! [`GuestMemory`] is how a host (simulated or not) reaches guest physical
//! memory: bounds-checked, by copy, with the few atomic operations the synic
//! and VMBus need. Implementations must never read or write outside the
//! guest's memory; every address they are given comes from the guest and is
//! hostile.
//!
//! Trusts: nothing it receives (records are length- and kind-checked, GPAs
//! bounds-checked). Writes: only the socket and, through `GuestMemory`, the
//! guest memory it was asked to write.
#![no_std]
// `unsafe` lives only in the hosted transport client (the guest memory
// mapping and poll), which is runtime code.
#![deny(unsafe_code)]

#[cfg(feature = "hosted")]
extern crate std;

pub mod wire;

#[cfg(feature = "hosted")]
#[allow(unsafe_code)]
pub mod hosted;

/// What an operation at the boundary can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvError {
    /// The processor raised #GP (unknown or read-only MSR, invalid value).
    GeneralProtection,
    /// The processor raised #UD (hypercall without an enabled hypercall page).
    InvalidOpcode,
    /// The way to the hypervisor is broken (hosted: socket closed, protocol
    /// error). Not recoverable.
    Transport,
}

/// A synic interrupt taken by the guest: the vector that was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    pub vector: u8,
}

/// The narrow interface between the guest's `synic` component and the
/// hypervisor. One virtual processor; calls are synchronous like the
/// instructions they stand for.
pub trait Hypervisor {
    /// RDMSR.
    fn msr_read(&mut self, msr: u32) -> Result<u64, HvError>;
    /// WRMSR.
    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), HvError>;
    /// A call into the hypercall page: RCX = `control`, RDX = `input`,
    /// R8 = `output`; returns RAX (the hypercall result value).
    fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, HvError>;
    /// Waits up to `timeout_ns` (`None`: forever, `Some(0)`: just poll) for
    /// the next synic interrupt. `Ok(None)` on timeout.
    fn wait_interrupt(&mut self, timeout_ns: Option<u64>) -> Result<Option<Interrupt>, HvError>;
    /// Ends the interrupt in service (APIC EOI). Needed only for SINTs
    /// without auto-EOI; lets the same vector be delivered again.
    fn end_of_interrupt(&mut self) -> Result<(), HvError>;
}

/// An access outside guest physical memory (or a misaligned atomic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    pub gpa: u64,
    pub len: u64,
}

/// Guest physical memory as a host reaches it. All accesses are
/// bounds-checked; atomics require natural alignment.
pub trait GuestMemory {
    /// The size of guest physical memory in bytes (GPAs are `0..size`).
    fn size(&self) -> u64;
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange>;
    /// Atomic load of a little-endian u32 at a 4-aligned GPA.
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange>;
    /// Atomic store of a u32 at a 4-aligned GPA.
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange>;
    /// Atomic OR into a u32 at a 4-aligned GPA, returning the old value.
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange>;
    /// Atomic AND into a u32 at a 4-aligned GPA, returning the old value.
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange>;

    /// True if `gpa..gpa+len` lies inside guest memory.
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.size())
    }
}

/// Checks a range against a memory size; shared by implementations.
pub fn check_range(size: u64, gpa: u64, len: u64) -> Result<(), OutOfRange> {
    match gpa.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(OutOfRange { gpa, len }),
    }
}

/// Checks an aligned 4-byte atomic access.
pub fn check_atomic_u32(size: u64, gpa: u64) -> Result<(), OutOfRange> {
    if !gpa.is_multiple_of(4) {
        return Err(OutOfRange { gpa, len: 4 });
    }
    check_range(size, gpa, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert!(check_range(4096, 0, 4096).is_ok());
        assert!(check_range(4096, 1, 4096).is_err());
        assert!(check_range(4096, u64::MAX, 2).is_err());
        assert!(check_atomic_u32(4096, 4092).is_ok());
        assert!(check_atomic_u32(4096, 4094).is_err());
        assert!(check_atomic_u32(4096, 4096).is_err());
    }
}
