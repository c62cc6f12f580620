//! The OS-neutral component API.
//!
//! Every component (synic, vmbus, each VSC, each client, the demonstration
//! components) is written against this crate only, in the style of the seL4
//! Microkit: the runtime calls [`Component::init`] once, then
//! [`Component::notified`] for notifications, [`Component::protected`] for
//! protected procedure calls (PPCs) and, for supervisors,
//! [`Component::fault`] when a supervised component faults. The component
//! acts on the world only through [`Env`].
//!
//! No component names a capability, a syscall or a file descriptor. Channel,
//! region, IRQ, IO-port and child identifiers are generated from
//! `system.toml` into each component (see the `sysdesc` crate); this crate
//! only defines their types.
//!
//! Two runtimes implement [`Env`]: the seL4 one (`platform/sel4/sel4-runtime`),
//! where each component is a protection domain, and the hosted one
//! (`platform/hosted/hosted-runtime`), where each component is a Linux process.
#![no_std]
// `unsafe` lives only in the memory layer (`region`) and the deliberate
// faults of the isolation fixtures beside it.
#![deny(unsafe_code)]

pub mod console;
#[allow(unsafe_code)]
pub mod deliberate;
pub mod protocol;
#[allow(unsafe_code)]
pub mod region;

pub use protocol::{
    call, decode_allowed, decode_request, encode_reply, Client, MessageError, Protocol,
};
pub use region::{Region, RegionError};

/// The largest protected-call message or reply, in bytes. On seL4 a message
/// travels in the IPC buffer's message registers (120 words); one word is
/// kept for the length.
pub const MAX_MESSAGE: usize = 952;

/// The number of channel identifiers a component can have (a notification
/// word has 64 bits; two are kept by the runtimes for their own use).
pub const MAX_CHANNELS: usize = 62;

/// A channel end, local to the component that holds it (like a Microkit
/// channel id). Generated from `system.toml`; never written by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(pub u8);

impl Channel {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
    pub const fn bit(self) -> u64 {
        1u64 << self.0
    }
}

/// A set of channels that were notified together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelSet(pub u64);

impl ChannelSet {
    pub const EMPTY: ChannelSet = ChannelSet(0);
    pub const fn contains(self, channel: Channel) -> bool {
        self.0 & channel.bit() != 0
    }
    pub fn insert(&mut self, channel: Channel) {
        self.0 |= channel.bit();
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The channels in ascending order.
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        (0..64u8)
            .filter(move |i| self.0 & (1u64 << i) != 0)
            .map(Channel)
    }
}

/// A region the description maps into this component, by its local index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionName(pub u8);

/// Where a host-visible region lies in guest physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAddress {
    /// Guest physical address of its first byte (page aligned; its frames
    /// are contiguous).
    pub guest_physical: u64,
    /// Bytes (a multiple of the page size).
    pub len: usize,
}

/// An IO-port range granted to this component, by its local index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoPortName(pub u8);

/// A component this component supervises, by its local index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Child(pub u8);

/// An IRQ that is a local-APIC vector with no device behind it (`[[irq]]
/// vector = N`): generated into `ids.rs` as `VECTOR_IRQS`, so code learns
/// from the description whether it holds one and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorIrq {
    /// The holder's IRQ (`irqs::NAME`): ack it, raise it.
    pub irq: Channel,
    /// The vector the hypervisor injects or the kernel raises.
    pub vector: u8,
    /// It signals the same end as this notify channel of the holder
    /// (`notify = ` the channel's other end): raising it stands in for
    /// notifying that channel. `None`: it signals another end, or the
    /// holder itself.
    pub signals_peer_of: Option<Channel>,
}

/// Why a protected call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The channel is not a protected-call channel whose client is us.
    NotACallChannel,
    /// The message is larger than [`MAX_MESSAGE`].
    MessageTooLarge,
    /// The server refused the call (its `protected` returned an error).
    Refused(u16),
    /// The server faulted or was restarted while serving the call.
    ServerFaulted,
    /// Encoding the request or decoding the reply failed.
    Encoding,
    /// The reply carries another protocol's tag.
    WrongProtocol,
    /// The reply is of a version of the protocol we do not speak.
    UnsupportedVersion,
}

/// What a server returns to refuse a protected call. The code reaches the
/// caller as [`CallError::Refused`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub u16);

impl Refusal {
    /// The message could not be decoded.
    pub const MALFORMED: Refusal = Refusal(1);
    /// The component does not serve calls on this channel.
    pub const NOT_SERVED: Refusal = Refusal(2);
    /// The caller is not allowed to ask for this.
    pub const DENIED: Refusal = Refusal(3);
    /// The message is of another protocol than the channel's.
    pub const WRONG_PROTOCOL: Refusal = Refusal(4);
    /// The message is of a protocol version the server does not speak.
    pub const UNSUPPORTED_VERSION: Refusal = Refusal(5);

    /// What the refusal means, for logs.
    pub const fn reason(self) -> &'static str {
        match self.0 {
            1 => "malformed message",
            2 => "not served on this channel",
            3 => "operation denied to this caller",
            4 => "message of another protocol",
            5 => "unsupported protocol version",
            _ => "refused by the server",
        }
    }
}

/// Why a supervised component stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A memory access the component's address space does not allow.
    Memory { address: u64, ip: u64, write: bool },
    /// The component panicked (Rust `panic!`); `code` is runtime-specific.
    Panic,
    /// An instruction or arithmetic fault, or an unknown syscall.
    Instruction { ip: u64 },
    /// The process or thread ended abnormally (hosted: a signal number).
    Crashed { signal: i32 },
    /// The component returned from its entry point or exited.
    Exited { code: i32 },
}

/// Why a supervisor request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorError {
    /// The child is not one this component supervises.
    NotMyChild,
    /// The runtime could not restart it.
    RestartFailed,
}

/// The environment a component acts through. Implemented by each runtime
/// and by test doubles.
pub trait Env {
    /// Signal the peer at the other end of a notify channel. Never blocks.
    fn notify(&mut self, channel: Channel);

    /// Call the server at the other end of a protected-call channel and wait
    /// for its reply, which is copied into `reply`; returns the reply length.
    fn ppcall(
        &mut self,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, CallError>;

    /// Acknowledge the IRQ delivered on `channel` so it can fire again.
    fn irq_ack(&mut self, channel: Channel);

    /// Raise the IRQ delivered on `channel` as if its source had: on seL4
    /// the kernel sends its vector to this core as a local-APIC self-IPI
    /// (kernel patch 0007), so it arrives through the kernel's ordinary
    /// interrupt path and is delivered on `channel` like any other. `false`
    /// when `channel` is not one of this component's IRQs or the runtime
    /// cannot raise IRQs (the default, and the hosted runtime).
    fn irq_raise(&mut self, _channel: Channel) -> bool {
        false
    }

    /// A region the description maps into this component. Panics for a
    /// region granted by address only (`rights = "address"`): nothing of
    /// it is mapped.
    fn region(&self, region: RegionName) -> Region;

    /// The guest physical address and size of a host-visible region the
    /// description grants this component, mapped or by address only
    /// (`rights = "address"`); `None` for a region the host cannot see or
    /// an index the description does not grant. The address comes from the
    /// runtime (the root task, the hosted launcher), never from a peer.
    fn region_address(&self, region: RegionName) -> Option<RegionAddress>;

    /// Read `width` (1, 2 or 4) bytes from `offset` within an IO-port range.
    fn ioport_read(&mut self, port: IoPortName, offset: u16, width: u8) -> u32;

    /// Write `width` (1, 2 or 4) bytes at `offset` within an IO-port range.
    fn ioport_write(&mut self, port: IoPortName, offset: u16, width: u8, value: u32);

    /// Write text to the system console through the path the description
    /// declares for this component. Lines are prefixed with the component's
    /// name by the console.
    fn console(&mut self, text: &str);

    /// Reset a supervised component to its initial image state (data and
    /// bss restored, fresh stack) and start it again from `init`.
    fn restart(&mut self, child: Child) -> Result<(), SupervisorError>;

    /// Keep a supervised component stopped until it is restarted.
    fn stop(&mut self, child: Child) -> Result<(), SupervisorError>;

    /// Ask the runtime to power off the whole system with an exit code
    /// (QEMU exits; the hosted launcher ends all processes). Only a
    /// component the description allows to do so may; others are ignored.
    fn power_off(&mut self, code: u8);

    /// A monotonic time in nanoseconds since the system started (coarse on
    /// seL4: derived from the kernel's timer where available).
    fn now_ns(&mut self) -> u64;

    /// The processor's time-stamp counter now (what RDTSC reads: the
    /// counter Hyper-V's reference TSC page scales to reference time), if
    /// the platform lets a component read it.
    fn time_stamp_counter(&mut self) -> Option<TimeStampCounter> {
        None
    }
}

/// A reading of the time-stamp counter ([`Env::time_stamp_counter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeStampCounter {
    pub ticks: u64,
    /// The counter's rate as the platform knows it (on seL4 the kernel's
    /// measurement at boot, the same that `now_ns` divides by); 0 where it
    /// does not (hosted: a host measures it itself).
    pub ticks_per_second: u64,
}

/// A component: the runtime calls `init` once, then `notified`,
/// `protected` and `fault` as events arrive. Each call runs to completion.
pub trait Component: Sized {
    /// Build the component's state. The component may already notify and
    /// call its peers here.
    fn init(env: &mut dyn Env) -> Self;

    /// One or more notifications (or IRQs) arrived.
    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet);

    /// A protected call arrived on `channel`. Write the reply into `reply`
    /// and return its length, or refuse.
    fn protected(
        &mut self,
        _env: &mut dyn Env,
        _channel: Channel,
        _message: &[u8],
        _reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        Err(Refusal::NOT_SERVED)
    }

    /// A component this one supervises faulted. It is stopped; the
    /// supervisor decides whether to restart it.
    fn fault(&mut self, _env: &mut dyn Env, _child: Child, _fault: Fault) {}
}

/// The id a generated name table (`CHANNEL_NAMES`, `REGION_NAMES`,
/// `IOPORT_NAMES`, `CHILD_NAMES` in a component's `ids.rs`) gives `name`.
pub fn id_named<T: Copy>(table: &[(T, &str)], name: &str) -> Option<T> {
    table
        .iter()
        .find(|(_, listed)| *listed == name)
        .map(|(id, _)| *id)
}

/// The name a generated name table gives `id`; "?" for an id it does not
/// list (for console lines, which must not fail).
pub fn name_of<T: PartialEq>(table: &[(T, &'static str)], id: T) -> &'static str {
    table
        .iter()
        .find(|(listed, _)| *listed == id)
        .map(|(_, name)| *name)
        .unwrap_or("?")
}

/// `core::fmt::Write` adapter that sends formatted text to the console in
/// chunks, so components can use `write!` without an allocator.
pub struct ConsoleWriter<'a> {
    env: &'a mut dyn Env,
    buffer: [u8; 200],
    used: usize,
}

impl<'a> ConsoleWriter<'a> {
    pub fn new(env: &'a mut dyn Env) -> Self {
        ConsoleWriter {
            env,
            buffer: [0; 200],
            used: 0,
        }
    }
    fn flush(&mut self) {
        if self.used > 0 {
            // Only whole UTF-8 characters are ever buffered.
            let text = core::str::from_utf8(&self.buffer[..self.used]).unwrap_or("?");
            self.env.console(text);
            self.used = 0;
        }
    }
}

impl core::fmt::Write for ConsoleWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for ch in s.chars() {
            let mut encoded = [0u8; 4];
            let bytes = ch.encode_utf8(&mut encoded).as_bytes();
            if self.used + bytes.len() > self.buffer.len() {
                self.flush();
            }
            self.buffer[self.used..self.used + bytes.len()].copy_from_slice(bytes);
            self.used += bytes.len();
        }
        Ok(())
    }
}

impl Drop for ConsoleWriter<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Print a line to the console: `println!(env, "x = {}", x)`.
#[macro_export]
macro_rules! println {
    ($env:expr, $($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut writer = $crate::ConsoleWriter::new($env);
        let _ = writeln!(writer, $($arg)*);
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[(Channel, &str)] = &[(Channel(0), "synic"), (Channel(3), "vmbus_event")];

    #[test]
    fn name_tables_are_looked_up_both_ways() {
        assert_eq!(id_named(NAMES, "vmbus_event"), Some(Channel(3)));
        assert_eq!(id_named(NAMES, "vmbus"), None);
        assert_eq!(name_of(NAMES, Channel(0)), "synic");
        assert_eq!(name_of(NAMES, Channel(1)), "?");
    }
}
