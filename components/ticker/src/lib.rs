//! `ticker`: the simulated host's clock in the seL4 image.
//!
//! The simulated host (`hvsim`) only runs when something happens, but a
//! Hyper-V host has work of its own (heartbeat requests, time samples). The
//! ticker is the system's lowest-priority PD: it runs only when every other
//! PD waits, and then it watches the clock (`now_ns`, the TSC) and notifies
//! its `tick` channel every [`TICK_NS`]. Because it never blocks, the
//! kernel's idle thread never runs and no device interrupt is needed for
//! time. (A PIT-driven tick in `hvsim` hit a kernel exception about once in
//! six boots under QEMU TCG: a timer interrupt taken while the idle thread
//! ran, on the kernel's own page tables, failed its IDT lookup. See
//! docs/sel4.md, "Known limits".)
//!
//! Hosted, the host process has its own clock, so the ticker only waits.
//!
//! Trusts: nothing. Writes: its tick notifications.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{ChannelSet, Component, Env};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// 20 ticks a second: fine enough for the 1 s heartbeat and time-sample
/// periods, coarse enough to leave the host idle between them.
pub const TICK_NS: u64 = 50_000_000;

pub struct Ticker;

/// When the tick after `now_ns` is due, given the last one was due at
/// `due_ns` (ticks missed while higher priorities ran are not repeated).
pub fn next_due(due_ns: u64, now_ns: u64) -> u64 {
    let next = due_ns.saturating_add(TICK_NS);
    if next > now_ns {
        next
    } else {
        now_ns.saturating_add(TICK_NS)
    }
}

impl Component for Ticker {
    #[cfg(target_os = "none")]
    fn init(env: &mut dyn Env) -> Self {
        let mut due = env.now_ns().saturating_add(TICK_NS);
        loop {
            let now = env.now_ns();
            if now >= due {
                env.notify(channels::TICK);
                due = next_due(due, now);
            }
            core::hint::spin_loop();
        }
    }

    #[cfg(not(target_os = "none"))]
    fn init(_env: &mut dyn Env) -> Self {
        Ticker
    }

    fn notified(&mut self, _env: &mut dyn Env, _channels: ChannelSet) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_keep_their_phase_and_missed_ones_are_not_repeated() {
        assert_eq!(next_due(100, 100), 100 + TICK_NS);
        assert_eq!(next_due(100, 100 + TICK_NS - 1), 100 + TICK_NS);
        // Late by three periods: the next one is a period from now.
        let late = 100 + 3 * TICK_NS;
        assert_eq!(next_due(100, late), late + TICK_NS);
    }
}
