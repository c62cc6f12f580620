//! `hvsim`: a simulated Hyper-V host that is as strict as the real one.
//!
//! It emulates, behind the hypervisor boundary of `hv-interface`:
//! - the guest's synic ([`synic`]): the synthetic MSRs, SIM-page message
//!   slots with the pending flag and EOM, per-SINT queues, SIEF event flags,
//!   and interrupt delivery only when the synic is enabled and the SINT
//!   unmasked;
//! - the hypercalls HvPostMessage and HvSignalEvent ([`hypercall`],
//!   [`host`]) with Hyper-V's status codes, bounded per-port message queues;
//! - the VMBus server ([`vmbus`]): versions 2.4-5.3, offers, GPADLs,
//!   open/close, rescind, unload, monitor pages;
//! - the host end of each open channel ([`channel`]): rings read and
//!   written like Hyper-V does, unnecessary-signal accounting, and the
//!   heartbeat, shutdown, time sync and KVP hosts;
//! - the data-path shapes ([`data_path`]): GPA-direct packets resolved only
//!   through the channel's GPADLs, transfer-page packets into the guest's
//!   receive buffer;
//! - the storage host ([`channel::storage`], [`channel::scsi_target`]):
//!   storvsp's protocol and a SCSI target over [`disk::Disk`]s (memory,
//!   and hosted [`file_disk::FileDisk`]);
//! - the NIC host ([`channel::network`]): netvsp's NVSP and RNDIS, the
//!   receive and send buffers, sub-channels with RSS, link state, with
//!   the frames going to a [`net::NetBackend`] (memory here; hosted TAP
//!   or user-space networks and the image's NE2000 beside it);
//! - the synthetic video host ([`channel::synthvid`]): synthvid's VSP,
//!   the guest's mode, pointer and dirt, and [`screen`]'s picture of its
//!   VRAM (hosted: a PNG);
//! - [`sim::Simulator`]: all of it as one machine with the operator and
//!   fault-injection API.
//!
//! Trusts nothing from the guest: every GPA is bounds-checked, every guest
//! structure is copied out of guest memory before it is parsed, and guest
//! ring indices are validated before use. Writes only guest memory the
//! guest designated for the host (synic pages, GPADL'd buffers, monitor
//! pages, the pages a storage request names inside host-visible memory,
//! the NIC's receive-buffer sections) and, in the hosted build, the
//! transport socket and the disk files.
//!
//! The core is `no_std` + `alloc` so it can run as an seL4 component; the
//! `hosted` feature adds [`transport`], the host end of the hosted
//! transport, and the `hvsim` binary.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod ata;
pub mod channel;
pub mod data_path;
pub mod disk;
#[cfg(not(target_os = "none"))]
pub mod file_disk;
pub mod host;
#[cfg(not(target_os = "none"))]
pub mod hosted_net;
pub mod hypercall;
pub mod input_step;
/// The synthetic keyboard's host (`Simulator::type_key`'s [`keyboard::HostKey`]).
pub use channel::keyboard;
/// The synthetic mouse's host.
pub use channel::mouse;
pub mod memory;
pub mod ne2000;
pub mod net;
pub mod pd;
pub mod ps2;
pub mod scenario;
pub mod screen;
pub mod script;
pub mod sim;
pub mod synic;
#[cfg(not(target_os = "none"))]
pub mod tap_net;
#[cfg(not(target_os = "none"))]
pub mod transport;
pub mod tsc_clock;
#[cfg(not(target_os = "none"))]
pub mod user_net;
pub mod vga;
pub mod vmbus;

#[cfg(not(target_os = "none"))]
impl<M: hv_interface::GuestMemory> transport::Machine for host::Host<M> {
    fn msr_read(&mut self, msr: u32) -> Result<u64, synic::Exception> {
        host::Host::msr_read(self, msr)
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), synic::Exception> {
        host::Host::msr_write(self, msr, value)
    }
    fn hypercall(
        &mut self,
        control: u64,
        input: u64,
        output: u64,
    ) -> Result<u64, synic::Exception> {
        host::Host::hypercall(self, control, input, output)
    }
    fn take_interrupt(&mut self) -> Option<u8> {
        host::Host::take_interrupt(self)
    }
    fn step(&mut self, now_ns: u64) {
        host::Host::advance_clock(self, now_ns)
    }
    fn advance_clock(&mut self, now_ns: u64) {
        host::Host::advance_clock(self, now_ns)
    }
    fn next_wakeup_ns(&self) -> Option<u64> {
        self.synic.next_timer_ns()
    }
    fn set_tsc_clock(&mut self, clock: hyperv_defs::reference_tsc::TscClock) {
        host::Host::set_tsc_clock(self, Some(clock))
    }
}
