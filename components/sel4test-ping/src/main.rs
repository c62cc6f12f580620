//! `sel4test-ping`: the pinger of the seL4 bring-up test. Each life it
//! checks that its data and bss are as in the image (a restart must reset
//! them), writes a token into the shared region, notifies the ponger, and
//! on the answer makes a protected call. In its first life it then reads an
//! address it was not granted, so the kernel faults it and its supervisor
//! (the ponger) restarts it; in its second life it reports `done`.
//! On seL4 it also probes its own authority below the component API: the
//! monitor must refuse to let it restart a PD or power off (it supervises
//! none and may not), and a CSpace slot the description did not fill must
//! hold no capability.
//! Trusts: the ponger's replies only as far as comparing them. Writes: the
//! shared region.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

use component_api::{CallError, ChannelSet, Component, Env};
use core::sync::atomic::{AtomicU32, Ordering};

/// In `.data`: 7 in the image.
static DATA_MARK: AtomicU32 = AtomicU32::new(7);
/// In `.bss`: 0 in the image.
static BSS_MARK: AtomicU32 = AtomicU32::new(0);

/// An address no description grants (below the region area, above the
/// fixed PD areas).
#[cfg(target_os = "none")]
const UNGRANTED_ADDRESS: u64 = 0x5000_0000;

/// Shared region layout: word 0 lives, word 1 token, word 2 failures.
pub struct Ping {
    life: u32,
}

impl Component for Ping {
    fn init(env: &mut dyn Env) -> Self {
        let shared = env.region(regions::SHARED);
        let data = DATA_MARK.swap(99, Ordering::Relaxed);
        let bss = BSS_MARK.swap(99, Ordering::Relaxed);
        if data != 7 || bss != 0 {
            shared.atomic_u32(8).unwrap().fetch_add(1, Ordering::SeqCst);
        }
        let life = shared.atomic_u32(0).unwrap().fetch_add(1, Ordering::SeqCst) + 1;
        shared
            .atomic_u32(4)
            .unwrap()
            .store(0xc0ff_ee00 | life, Ordering::SeqCst);
        env.notify(channels::PONG);
        Ping { life }
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if !channels.contains(channels::PONG) {
            return;
        }
        let mut reply = [0u8; 16];
        let ok = matches!(env.ppcall(channels::CALLS, b"ping", &mut reply), Ok(4) if &reply[..4] == b"pong");
        if !ok {
            env.region(regions::SHARED)
                .atomic_u32(8)
                .unwrap()
                .fetch_add(1, Ordering::SeqCst);
        }
        if self.life == 1 {
            if !authority_is_confined() {
                env.region(regions::SHARED)
                    .atomic_u32(8)
                    .unwrap()
                    .fetch_add(1, Ordering::SeqCst);
            }
            // Deliberately reading memory we were not granted: the kernel
            // stops us here and the supervisor sees the fault.
            core::hint::black_box(read_ungranted());
        } else {
            // The crasher panics while serving this call: it must fail,
            // not hang; once the ponger restarted it, it answers again.
            let crashed = matches!(
                env.ppcall(channels::CRASHER, b"crash", &mut reply),
                Err(CallError::ServerFaulted)
            );
            let echoed = matches!(env.ppcall(channels::CRASHER, b"again", &mut reply), Ok(5) if &reply[..5] == b"again");
            if !(crashed && echoed) {
                env.region(regions::SHARED)
                    .atomic_u32(8)
                    .unwrap()
                    .fetch_add(1, Ordering::SeqCst);
            }
            let _ = env.ppcall(channels::CALLS, b"done", &mut reply);
        }
    }
}

/// Ask the monitor directly (not through `Env`, which refuses locally) and
/// invoke an empty slot: every attempt must be refused.
#[cfg(target_os = "none")]
fn authority_is_confined() -> bool {
    use sel4_bindings as sys;
    use sel4_runtime::abi;
    let ask = |request: abi::MonitorRequest, argument: u64| {
        sys::call(
            abi::SLOT_MONITOR,
            sys::MessageInfo::new(request as u64, 0, 0, 1),
            [argument, 0, 0, 0],
        )
        .info
        .label()
    };
    let restart_denied = ask(abi::MonitorRequest::Restart, 0) == abi::MONITOR_DENIED;
    let power_off_denied = ask(abi::MonitorRequest::PowerOff, 0) == abi::MONITOR_DENIED;
    // Channel 40 was never declared: its slot is empty, so the kernel
    // answers the invocation with an error instead of performing it.
    let empty_slot = sys::ioport_out(abi::SLOT_CHANNEL_BASE + 40, 0xf4, 1, 0).is_err()
        && sys::ioport_out(abi::SLOT_IOPORT_BASE, 0xf4, 1, 0).is_err();
    restart_denied && power_off_denied && empty_slot
}

#[cfg(not(target_os = "none"))]
fn authority_is_confined() -> bool {
    true
}

#[cfg(target_os = "none")]
fn read_ungranted() -> Option<u32> {
    sel4_runtime::read_ungranted(UNGRANTED_ADDRESS)
}

#[cfg(not(target_os = "none"))]
fn read_ungranted() -> Option<u32> {
    None
}

#[cfg(target_os = "none")]
sel4_runtime::component_main!(Ping);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sel4test-ping runs only on seL4 (cargo xtask boot-test --system tests/systems/sel4test.toml)");
}
