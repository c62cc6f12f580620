//! `ht_super`: supervisor in the hosted runtime's tests. On each fault of
//! a child it prints the fault, counts it and restarts the child. A
//! protected call on `driver` replies with the fault count and the
//! restart count (two u32 LE), so a test can see it kept serving while its
//! child was down.
//!
//! Trusts: fault reports from the runtime. Writes: nothing shared.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{name_of, println, Channel, ChannelSet, Child, Component, Env, Fault, Refusal};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub struct Supervisor {
    faults: u32,
    restarts: u32,
}

fn child_name(child: Child) -> &'static str {
    name_of(CHILD_NAMES, child)
}

impl Component for Supervisor {
    fn init(env: &mut dyn Env) -> Self {
        println!(env, "supervising {} component(s)", CHILD_NAMES.len());
        Supervisor {
            faults: 0,
            restarts: 0,
        }
    }

    fn notified(&mut self, _env: &mut dyn Env, _channels: ChannelSet) {}

    fn protected(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        _message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::DRIVER {
            return Err(Refusal::NOT_SERVED);
        }
        reply[..4].copy_from_slice(&self.faults.to_le_bytes());
        reply[4..8].copy_from_slice(&self.restarts.to_le_bytes());
        Ok(8)
    }

    fn fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        self.faults += 1;
        let name = child_name(child);
        println!(env, "{name} faulted: {fault:?}");
        match env.restart(child) {
            Ok(()) => {
                self.restarts += 1;
                println!(env, "restarted {name}");
            }
            Err(error) => println!(env, "could not restart {name}: {error:?}"),
        }
    }
}
