//! `faulter` (demonstration): faults on command, so that the fault path and
//! the restart with reset state are exercised on every boot.
//!
//! On start it prints a word from its data segment (initially 7) and one
//! from its bss (initially 0), then bumps both: after a restart that reset
//! its memory it must print 7 and 0 again. When `supervisor` notifies it,
//! it reads the command word from its read-only `control` region and:
//! 1 writes to that read-only region, 2 reads the guard page after it (an
//! address no region was granted at), 3 panics.
//!
//! Trusts: the command word (it only selects among the faults above).
//! Writes: nothing shared, by design; it only tries to.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, ChannelSet, Component, Env};
use core::sync::atomic::{AtomicU32, Ordering};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// In the data segment: initialised from the image.
static DATA_WORD: AtomicU32 = AtomicU32::new(7);
/// In bss: zeroed at load.
static BSS_WORD: AtomicU32 = AtomicU32::new(0);

pub const COMMAND_NONE: u32 = 0;
pub const COMMAND_WRITE_READ_ONLY: u32 = 1;
pub const COMMAND_READ_UNGRANTED: u32 = 2;
pub const COMMAND_PANIC: u32 = 3;

pub struct Faulter;

impl Component for Faulter {
    fn init(env: &mut dyn Env) -> Self {
        let data = DATA_WORD.fetch_add(1, Ordering::Relaxed);
        let bss = BSS_WORD.fetch_add(1, Ordering::Relaxed);
        println!(env, "started: data word {data}, bss word {bss}");
        env.notify(channels::SUPERVISOR);
        Faulter
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if !channels.contains(channels::SUPERVISOR) {
            return;
        }
        let control = env.region(regions::CONTROL);
        let mut word = [0u8; 4];
        if control.read(0, &mut word).is_err() {
            return;
        }
        match u32::from_le_bytes(word) {
            COMMAND_WRITE_READ_ONLY => {
                println!(env, "writing to my read-only region");
                if component_api::deliberate::write_read_only(&control) {
                    println!(env, "the write to a read-only region did NOT fault");
                } else {
                    println!(env, "my control region is writable: nothing to test");
                }
            }
            COMMAND_READ_UNGRANTED => {
                println!(env, "reading memory no region was granted at");
                // The guard page after our only region is mapped to
                // nothing, so the OS must fault us.
                match component_api::deliberate::read_after(&control) {
                    Some(value) => {
                        println!(env, "the read of ungranted memory did NOT fault ({value})")
                    }
                    None => println!(env, "my control region has no guard page: nothing to test"),
                }
            }
            COMMAND_PANIC => {
                println!(env, "panicking");
                panic!("commanded panic");
            }
            _ => println!(env, "no command; staying up"),
        }
    }
}
