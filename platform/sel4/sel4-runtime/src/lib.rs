//! The seL4 side of `component-api`: what runs inside a component's
//! protection domain (PD).
//!
//! `component_main!(MyComponent)` defines the entry point (`_start`, which
//! calls [`run`]), the panic handler and nothing else. [`run`] reads the
//! information page the root task wrote (see [`abi`]), calls
//! `Component::init`, then loops on the PD's endpoint: a badge with
//! [`abi::PPC_BADGE_FLAG`] is a protected call (answered with seL4
//! ReplyRecv), any other is the bound notification's word (channel bits as
//! [`abi::notification_bit`] lays them out, plus [`abi::MONITOR_NEWS_BIT`]
//! when a supervised child faulted).
//!
//! Trusts: the root task's information page and the kernel. Messages from
//! other PDs are copied out of the message registers with bounds checks.
//! Writes: only this PD's memory, its IPC buffer and the invocations the
//! component asks for through [`Env`].
#![no_std]

pub mod abi;
pub mod hypervisor;

use abi::*;
use component_api::{
    CallError, Channel, ChannelSet, Child, Component, Env, Fault, IoPortName, Region,
    RegionAddress, RegionName, SupervisorError, MAX_MESSAGE,
};
use sel4_bindings as sys;

/// The PD's information page.
fn pd_info() -> &'static PdInfo {
    // SAFETY: the root task maps the read-only info page at this address
    // before the PD starts, and never unmaps it.
    unsafe { &*(PD_INFO_VADDR as *const PdInfo) }
}

fn get_register(received: &sys::Received, index: usize) -> u64 {
    if index < sys::FAST_MESSAGE_REGISTERS {
        received.mrs[index]
    } else {
        sys::get_mr(index)
    }
}

/// Put a message into message registers; returns (registers used, the
/// four fast ones).
fn load_message(bytes: &[u8]) -> (usize, [u64; 4]) {
    let mut fast = [0u64; 4];
    let used = pack_message(bytes, |index, word| {
        if index < sys::FAST_MESSAGE_REGISTERS {
            fast[index] = word;
        } else {
            sys::set_mr(index, word);
        }
    });
    (used, fast)
}

/// The [`Env`] of a component running in a seL4 PD.
pub struct Sel4Env {
    info: &'static PdInfo,
}

impl Sel4Env {
    /// This PD's environment, for an object that must reach the runtime
    /// outside the component's calls (a device driver that owns its IO
    /// ports, like hvsim's ATA disk). It is a view of the PD's information
    /// page, so any number of them act alike.
    pub fn current() -> Sel4Env {
        Sel4Env { info: pd_info() }
    }

    fn has(mask: u64, channel: Channel) -> bool {
        channel.index() < 64 && mask & channel.bit() != 0
    }

    fn monitor(&self, request: MonitorRequest, argument: u64) -> sys::Received {
        sys::call(
            SLOT_MONITOR,
            sys::MessageInfo::new(request as u64, 0, 0, 1),
            [argument, 0, 0, 0],
        )
    }

    /// Ask the monitor for the faults of our children, one at a time.
    fn take_fault(&self) -> Option<(Child, Fault)> {
        let reply = self.monitor(MonitorRequest::TakeFault, 0);
        if reply.info.label() != MONITOR_OK || reply.mrs[0] != 1 {
            return None;
        }
        let child = Child(u8::try_from(reply.mrs[1]).ok()?);
        let address = reply.mrs[3];
        let ip = sys::get_mr(4);
        let write = sys::get_mr(5) != 0;
        let fault = match FaultKind::from_word(reply.mrs[2])? {
            FaultKind::Memory => Fault::Memory { address, ip, write },
            FaultKind::Panic => Fault::Panic,
            FaultKind::Instruction => Fault::Instruction { ip },
        };
        Some((child, fault))
    }

    fn ioport(&self, port: IoPortName, offset: u16, width: u8) -> Option<u16> {
        let index = port.0 as usize;
        if index >= (self.info.num_ioports as usize).min(MAX_IOPORTS) || !matches!(width, 1 | 2 | 4)
        {
            return None;
        }
        let range = self.info.ioports[index];
        if u32::from(offset) + u32::from(width) > u32::from(range.size) {
            return None;
        }
        Some(range.base + offset)
    }
}

impl Env for Sel4Env {
    fn notify(&mut self, channel: Channel) {
        if Self::has(self.info.notify_channels, channel) {
            sys::signal(SLOT_CHANNEL_BASE + channel.0 as u64);
        }
    }

    fn ppcall(
        &mut self,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, CallError> {
        if !Self::has(self.info.call_client_channels, channel) {
            return Err(CallError::NotACallChannel);
        }
        if message.len() > MAX_MESSAGE {
            return Err(CallError::MessageTooLarge);
        }
        let (used, fast) = load_message(message);
        let received = sys::call(
            SLOT_CHANNEL_BASE + channel.0 as u64,
            sys::MessageInfo::new(0, 0, 0, used as u64),
            fast,
        );
        match received.info.label() {
            PPC_REPLY_OK => unpack_message(received.info.length(), reply, |i| {
                get_register(&received, i)
            })
            .ok_or(CallError::Encoding),
            PPC_REPLY_REFUSED => Err(CallError::Refused(received.mrs[0] as u16)),
            _ => Err(CallError::ServerFaulted),
        }
    }

    fn irq_ack(&mut self, channel: Channel) {
        if Self::has(self.info.irq_channels, channel) {
            let _ = sys::irq_handler_ack(SLOT_IRQ_BASE + channel.0 as u64);
        }
    }

    fn irq_raise(&mut self, channel: Channel) -> bool {
        Self::has(self.info.irq_channels, channel)
            && sys::irq_handler_raise(SLOT_IRQ_BASE + channel.0 as u64).is_ok()
    }

    fn region(&self, region: RegionName) -> Region {
        let index = region.0 as usize;
        assert!(
            index < (self.info.num_maps as usize).min(MAX_MAPS),
            "region {index} is not mapped into this component"
        );
        let map = self.info.maps[index];
        assert!(
            map.address_only == 0,
            "region {index} is granted by address only: nothing of it is mapped"
        );
        // SAFETY: the root task mapped [vaddr, vaddr + size) (twice when
        // double) with these rights before starting us, for our lifetime,
        // and left the page after it unmapped (sysdesc spaces the maps a
        // page apart).
        let mapped = unsafe {
            Region::new(
                map.vaddr as *mut u8,
                map.size as usize,
                map.writable != 0,
                map.double != 0,
            )
            .with_guard_page()
        };
        if map.guest_physical != 0 {
            mapped.with_guest_physical(map.guest_physical)
        } else {
            mapped
        }
    }

    fn region_address(&self, region: RegionName) -> Option<RegionAddress> {
        let index = region.0 as usize;
        if index >= (self.info.num_maps as usize).min(MAX_MAPS) {
            return None;
        }
        let map = self.info.maps[index];
        // The root task writes 0 for a region the host cannot see.
        (map.guest_physical != 0).then_some(RegionAddress {
            guest_physical: map.guest_physical,
            len: map.size as usize,
        })
    }

    fn ioport_read(&mut self, port: IoPortName, offset: u16, width: u8) -> u32 {
        match self.ioport(port, offset, width) {
            Some(address) => {
                sys::ioport_in(SLOT_IOPORT_BASE + port.0 as u64, address, width).unwrap_or(u32::MAX)
            }
            None => u32::MAX,
        }
    }

    fn ioport_write(&mut self, port: IoPortName, offset: u16, width: u8, value: u32) {
        if let Some(address) = self.ioport(port, offset, width) {
            let _ = sys::ioport_out(SLOT_IOPORT_BASE + port.0 as u64, address, width, value);
        }
    }

    fn console(&mut self, text: &str) {
        let channel = self.info.console_channel;
        if channel >= 64 {
            return; // no console path declared: output is dropped
        }
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let take = rest.len().min(component_api::console::CHUNK);
            let mut message = [0u8; MAX_MESSAGE];
            if let Ok(used) = component_api::console::message(&mut message, &rest[..take]) {
                let mut reply = [0u8; 16];
                let _ = self.ppcall(Channel(channel as u8), &message[..used], &mut reply);
            }
            rest = &rest[take..];
        }
    }

    fn restart(&mut self, child: Child) -> Result<(), SupervisorError> {
        if u64::from(child.0) >= self.info.num_children {
            return Err(SupervisorError::NotMyChild);
        }
        match self
            .monitor(MonitorRequest::Restart, child.0 as u64)
            .info
            .label()
        {
            MONITOR_OK => Ok(()),
            MONITOR_DENIED => Err(SupervisorError::NotMyChild),
            _ => Err(SupervisorError::RestartFailed),
        }
    }

    fn stop(&mut self, child: Child) -> Result<(), SupervisorError> {
        if u64::from(child.0) >= self.info.num_children {
            return Err(SupervisorError::NotMyChild);
        }
        match self
            .monitor(MonitorRequest::Stop, child.0 as u64)
            .info
            .label()
        {
            MONITOR_OK => Ok(()),
            MONITOR_DENIED => Err(SupervisorError::NotMyChild),
            _ => Err(SupervisorError::RestartFailed),
        }
    }

    fn power_off(&mut self, code: u8) {
        if self.info.may_power_off != 0 {
            self.monitor(MonitorRequest::PowerOff, code as u64);
        }
    }

    fn now_ns(&mut self) -> u64 {
        // SAFETY: rdtsc has no memory effects; user mode may use it.
        let ticks = unsafe { core::arch::x86_64::_rdtsc() };
        let per_us = self.info.tsc_per_us.max(1);
        ((ticks as u128 * 1000) / per_us as u128) as u64
    }

    fn time_stamp_counter(&mut self) -> Option<component_api::TimeStampCounter> {
        // SAFETY: rdtsc has no memory effects; user mode may use it.
        let ticks = unsafe { core::arch::x86_64::_rdtsc() };
        Some(component_api::TimeStampCounter {
            ticks,
            ticks_per_second: self.info.tsc_per_us.saturating_mul(1_000_000),
        })
    }
}

/// Serve a protected call that arrived with `received`; returns the reply
/// tag and fast registers (the rest are already in the IPC buffer).
fn serve_call<C: Component>(
    component: &mut C,
    env: &mut Sel4Env,
    received: &sys::Received,
) -> (sys::MessageInfo, [u64; 4]) {
    let channel = Channel((received.badge & 0x3f) as u8);
    let mut message = [0u8; MAX_MESSAGE];
    let Some(length) = unpack_message(received.info.length(), &mut message, |i| {
        get_register(received, i)
    }) else {
        return (
            sys::MessageInfo::new(PPC_REPLY_REFUSED, 0, 0, 1),
            [1, 0, 0, 0],
        );
    };
    if !Sel4Env::has(env.info.call_server_channels, channel) {
        return (
            sys::MessageInfo::new(PPC_REPLY_REFUSED, 0, 0, 1),
            [2, 0, 0, 0],
        );
    }
    let mut reply = [0u8; MAX_MESSAGE];
    match component.protected(env, channel, &message[..length], &mut reply) {
        Ok(used) => {
            let (registers, fast) = load_message(&reply[..used.min(MAX_MESSAGE)]);
            (
                sys::MessageInfo::new(PPC_REPLY_OK, 0, 0, registers as u64),
                fast,
            )
        }
        Err(refusal) => (
            sys::MessageInfo::new(PPC_REPLY_REFUSED, 0, 0, 1),
            [refusal.0 as u64, 0, 0, 0],
        ),
    }
}

/// Record which call `protected` is serving (see [`abi::IPC_SERVING_OFFSET`]).
fn set_serving(marker: u64) {
    // SAFETY: the IPC buffer is mapped read-write for this PD's lifetime and
    // `userData` lies within it.
    unsafe { ((IPC_BUFFER_VADDR as usize + IPC_SERVING_OFFSET) as *mut u64).write_volatile(marker) }
}

/// The event loop. Called by `_start` (see [`component_main!`]).
pub fn run<C: Component>() -> ! {
    sys::set_ipc_buffer(IPC_BUFFER_VADDR as usize);
    let info = pd_info();
    if info.magic != PD_INFO_MAGIC {
        // Not started by our root task: nothing sensible to do.
        panic!("no PD information page");
    }
    let mut env = Sel4Env { info };
    let mut component = C::init(&mut env);
    let mut pending_reply: Option<(sys::MessageInfo, [u64; 4])> = None;
    loop {
        let received = match pending_reply.take() {
            Some((tag, fast)) => sys::reply_recv(SLOT_ENDPOINT, tag, fast),
            None => sys::recv(SLOT_ENDPOINT),
        };
        if received.badge & PPC_BADGE_FLAG != 0 {
            set_serving((received.badge & 0x3f) + 1);
            pending_reply = Some(serve_call(&mut component, &mut env, &received));
            set_serving(0);
            continue;
        }
        let word = received.badge;
        if word & MONITOR_NEWS_BIT != 0 {
            while let Some((child, fault)) = env.take_fault() {
                component.fault(&mut env, child, fault);
            }
        }
        let channels = ChannelSet(channels_from_word(word));
        if !channels.is_empty() {
            component.notified(&mut env, channels);
        }
    }
}

/// The panic handler's body: print the message through the console path,
/// then fault on purpose so the monitor tells the supervisor.
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut env = Sel4Env { info: pd_info() };
    if env.info.magic == PD_INFO_MAGIC {
        component_api::println!(&mut env, "panic: {}", info.message());
    }
    loop {
        // SAFETY: deliberately faulting; PANIC_FAULT_VADDR is never mapped.
        unsafe { (PANIC_FAULT_VADDR as *mut u64).write_volatile(0) };
    }
}

/// Read a word at `address` on purpose, for the bring-up test that checks
/// the kernel stops a PD reading memory it was not granted: the read faults
/// and does not return. `None` (nothing read) unless `address` lies where
/// the root task maps nothing in any PD (between the stack top and the
/// regions).
pub fn read_ungranted(address: u64) -> Option<u32> {
    if !(STACK_TOP_VADDR..REGIONS_VADDR - 4).contains(&address) {
        return None;
    }
    // SAFETY: nothing is mapped at `address` in this PD (checked above), so
    // no memory of the program is read: the access faults.
    Some(unsafe { (address as *const u32).read_volatile() })
}

/// Fault injection for tests: ask the monitor to stop the component
/// `name` as if it had faulted (its supervisor, or the platform, then
/// recovers it). Only the simulated host of a root task built for fault
/// injection may; `false` if the monitor refused.
pub fn inject_fault(name: &str) -> bool {
    let mut words = [0u64; 4];
    if name.len() > 32 {
        return false;
    }
    for (i, byte) in name.bytes().enumerate() {
        words[i / 8] |= u64::from(byte) << (8 * (i % 8));
    }
    let reply = sys::call(
        SLOT_MONITOR,
        sys::MessageInfo::new(MonitorRequest::InjectFault as u64, 0, 0, 4),
        words,
    );
    reply.info.label() == MONITOR_OK
}

/// Define the PD's entry point and panic handler for a component type.
///
/// ```ignore
/// #[cfg(target_os = "none")]
/// sel4_runtime::component_main!(my_crate::MyComponent);
/// ```
#[macro_export]
macro_rules! component_main {
    ($component:ty) => {
        // The root task starts the thread with rsp at the stack top
        // (16-byte aligned); `call` leaves it as the ABI expects.
        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "call {main}",
            "ud2",
            main = sym __sel4_runtime_main,
        );

        extern "C" fn __sel4_runtime_main() -> ! {
            $crate::run::<$component>()
        }

        #[panic_handler]
        fn __sel4_runtime_panic(info: &core::panic::PanicInfo) -> ! {
            $crate::panic(info)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_may_be_mapped_is_not_read() {
        for address in [
            0,
            0x40_0000,
            PD_INFO_VADDR,
            IPC_BUFFER_VADDR,
            STACK_TOP_VADDR - 4,
            REGIONS_VADDR - 4,
            REGIONS_VADDR,
            u64::MAX,
        ] {
            assert_eq!(read_ungranted(address), None, "{address:#x}");
        }
    }
}
