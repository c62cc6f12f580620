//! `sel4test-pong`: the ponger and supervisor of the seL4 bring-up test.
//! Answers notifications and protected calls, checks the double mapping of
//! the shared region, restarts the pinger when it faults, and at `done`
//! powers off with code 0 if every check passed (else 3). Prints through
//! its own COM1 IO-port cap.
//! Trusts: nothing the pinger writes beyond comparing it. Writes: COM1.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

use component_api::{Channel, ChannelSet, Child, Component, Env, Fault, Refusal};
use core::fmt::Write as _;
use core::sync::atomic::Ordering;

struct Com1<'a>(&'a mut dyn Env);

impl core::fmt::Write for Com1<'_> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for byte in text.bytes() {
            for _ in 0..10_000 {
                if self.0.ioport_read(ioports::COM1, 5, 1) & 0x20 != 0 {
                    break;
                }
            }
            if byte == b'\n' {
                self.0.ioport_write(ioports::COM1, 0, 1, b'\r' as u32);
            }
            self.0.ioport_write(ioports::COM1, 0, 1, byte as u32);
        }
        Ok(())
    }
}

macro_rules! say {
    ($env:expr, $($arg:tt)*) => {{
        let _ = writeln!(Com1($env), "[ponger] {}", format_args!($($arg)*));
    }};
}

pub struct Pong {
    failures: u32,
    faults_seen: u32,
    calls: u32,
}

impl Component for Pong {
    fn init(env: &mut dyn Env) -> Self {
        say!(env, "up");
        Pong {
            failures: 0,
            faults_seen: 0,
            calls: 0,
        }
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if !channels.contains(channels::PING) {
            return;
        }
        let shared = env.region(regions::SHARED);
        let token = shared.atomic_u32(4).unwrap().load(Ordering::SeqCst);
        // The second mapping aliases the first.
        let alias = shared
            .atomic_u32(4 + shared.len())
            .unwrap()
            .load(Ordering::SeqCst);
        let ok = token >> 8 == 0xc0_ffee && alias == token;
        if !ok {
            self.failures += 1;
        }
        say!(
            env,
            "notified: token {token:#x}, double-mapped alias {}",
            if ok { "ok" } else { "WRONG" }
        );
        env.notify(channels::PING);
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::CALLS {
            return Err(Refusal::NOT_SERVED);
        }
        self.calls += 1;
        match message {
            b"ping" => {
                say!(env, "protected call: ping");
                reply[..4].copy_from_slice(b"pong");
                Ok(4)
            }
            b"done" => {
                let shared = env.region(regions::SHARED);
                let lives = shared.atomic_u32(0).unwrap().load(Ordering::SeqCst);
                let reported = shared.atomic_u32(8).unwrap().load(Ordering::SeqCst);
                let pass =
                    self.failures == 0 && reported == 0 && self.faults_seen == 2 && lives == 2;
                say!(
                    env,
                    "done: lives {lives}, faults {}, calls {}, failures {}+{reported}: {}",
                    self.faults_seen,
                    self.calls,
                    self.failures,
                    if pass { "PASS" } else { "FAIL" }
                );
                env.power_off(if pass { 0 } else { 3 });
                Ok(0)
            }
            _ => Err(Refusal::MALFORMED),
        }
    }

    fn fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        self.faults_seen += 1;
        let expected = match child {
            children::PINGER => matches!(
                fault,
                Fault::Memory {
                    address: 0x5000_0000,
                    write: false,
                    ..
                }
            ),
            children::CRASHER => fault == Fault::Panic,
            _ => false,
        };
        if !expected {
            self.failures += 1;
        }
        say!(
            env,
            "child {} faulted: {fault:?} ({})",
            child.0,
            if expected { "expected" } else { "UNEXPECTED" }
        );
        if env.restart(child).is_err() {
            self.failures += 1;
        }
    }
}

#[cfg(target_os = "none")]
sel4_runtime::component_main!(Pong);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sel4test-pong runs only on seL4 (cargo xtask boot-test --system tests/systems/sel4test.toml)");
}
