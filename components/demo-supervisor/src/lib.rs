//! `supervisor` (demonstration): the supervisor of `consumer`, `producer`
//! and `faulter`. It commands the faulter through each fault in turn,
//! restarts it after each (the runtime resets its memory), and when the
//! faulter has survived them all and the consumer has reported the stream
//! complete, it prints the verdict and powers the system off.
//!
//! Trusts: fault reports from the runtime. Writes: the faulter's command
//! word in `faulter_control`.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{name_of, println, ChannelSet, Child, Component, Env, Fault};
use demo_faulter::{COMMAND_NONE, COMMAND_PANIC, COMMAND_READ_UNGRANTED, COMMAND_WRITE_READ_ONLY};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The faults the faulter is taken through, in order.
const SCRIPT: [u32; 3] = [
    COMMAND_WRITE_READ_ONLY,
    COMMAND_READ_UNGRANTED,
    COMMAND_PANIC,
];

pub struct Supervisor {
    faulter_starts: u32,
    faults_seen: u32,
    faulter_done: bool,
    consumer_done: bool,
}

fn child_name(child: Child) -> &'static str {
    name_of(CHILD_NAMES, child)
}

impl Supervisor {
    fn command_faulter(&mut self, env: &mut dyn Env) {
        let step = self.faulter_starts as usize - 1;
        let command = SCRIPT.get(step).copied().unwrap_or(COMMAND_NONE);
        let control = env.region(regions::FAULTER_CONTROL);
        if control.write(0, &command.to_le_bytes()).is_err() {
            println!(env, "cannot write the faulter's command");
            return;
        }
        if command == COMMAND_NONE {
            println!(
                env,
                "faulter survived {} faults with its state reset each time", self.faults_seen
            );
            self.faulter_done = true;
            self.finish_if_done(env);
        } else {
            env.notify(channels::FAULTER);
        }
    }

    fn finish_if_done(&mut self, env: &mut dyn Env) {
        if self.faulter_done && self.consumer_done {
            println!(env, "demonstration complete: all steps passed");
            env.power_off(0);
        }
    }
}

impl Component for Supervisor {
    fn init(env: &mut dyn Env) -> Self {
        let control = env.region(regions::FAULTER_CONTROL);
        let _ = control.write(0, &COMMAND_NONE.to_le_bytes());
        println!(env, "supervising {} components", CHILD_NAMES.len());
        Supervisor {
            faulter_starts: 0,
            faults_seen: 0,
            faulter_done: false,
            consumer_done: false,
        }
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::FAULTER) {
            self.faulter_starts += 1;
            self.command_faulter(env);
        }
        if channels.contains(channels::CONSUMER) && !self.consumer_done {
            self.consumer_done = true;
            println!(env, "consumer reports the stream complete");
            self.finish_if_done(env);
        }
    }

    fn fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        self.faults_seen += 1;
        let name = child_name(child);
        match fault {
            Fault::Memory { address, write, .. } => println!(
                env,
                "{name} faulted: {} at {address:#x}",
                if write { "write" } else { "read" }
            ),
            other => println!(env, "{name} faulted: {other:?}"),
        }
        match env.restart(child) {
            Ok(()) => println!(env, "restarted {name}"),
            Err(error) => println!(env, "could not restart {name}: {error:?}"),
        }
    }
}
