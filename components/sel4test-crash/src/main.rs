//! `sel4test-crash`: a server of the seL4 bring-up test that panics while
//! serving the call `crash` (so the monitor must fail that call for the
//! client instead of leaving it blocked) and echoes any other message.
//! Trusts: nothing; it only copies the message back. Writes: the reply.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

use component_api::{Channel, ChannelSet, Component, Env, Refusal};

pub struct Crash;

impl Component for Crash {
    fn init(_env: &mut dyn Env) -> Self {
        Crash
    }

    fn notified(&mut self, _env: &mut dyn Env, _channels: ChannelSet) {}

    fn protected(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::CLIENT {
            return Err(Refusal::NOT_SERVED);
        }
        if message == b"crash" {
            panic!("commanded crash while serving a call");
        }
        let length = message.len().min(reply.len());
        reply[..length].copy_from_slice(&message[..length]);
        Ok(length)
    }
}

#[cfg(target_os = "none")]
sel4_runtime::component_main!(Crash);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sel4test-crash runs only on seL4 (cargo xtask boot-test --system tests/systems/sel4test.toml)");
}
