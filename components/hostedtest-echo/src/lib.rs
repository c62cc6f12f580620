//! `ht_echo`: the component the hosted runtime's tests exercise.
//!
//! - A notification on `ping` is answered with one on `ping` (the
//!   notification round trip); so is the IRQ `device`, after `irq_ack`.
//! - A protected call on `driver` is echoed back, unless it is one of the
//!   [`commands`]: fault in a chosen way, report private state, write
//!   across the end of the double-mapped `ring`.
//! - A notification on `queue` starts (or resumes) producing into the SPSC
//!   queue in `queue`: message size and count are read from `shared` at
//!   [`PRODUCE_SIZE`] and [`PRODUCE_COUNT`].
//! - Every start adds one to the start counter at [`STARTS`] in `shared`,
//!   so a test sees that shared memory outlives a restart while private
//!   memory does not.
//!
//! Trusts: the test driving it (it exists to misbehave on command).
//! Writes: `shared`, `ring`, `queue`; tries to write `readonly`.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Channel, ChannelSet, Component, Env, Refusal};
use core::sync::atomic::{AtomicU32, Ordering};
use spsc_queue::{Producer, QueueError};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// Protected-call commands.
pub mod commands {
    /// `panic!`.
    pub const PANIC: &[u8] = b"panic";
    /// Write to the read-only `readonly` map (the OS must fault it).
    pub const WRITE_READ_ONLY: &[u8] = b"write-read-only";
    /// Execute an undefined instruction.
    pub const ILLEGAL_INSTRUCTION: &[u8] = b"illegal-instruction";
    /// Print `spinning`, then never reply (so a test can kill the server
    /// mid-call).
    pub const SPIN: &[u8] = b"spin";
    /// Reply with the number of calls served by this incarnation (u32 LE,
    /// private memory) and the start counter in `shared` (u32 LE).
    pub const STATE: &[u8] = b"state";
    /// Prefix: write the rest of the message at `ring.len() - 2` through
    /// the mapping (so it runs across the end into the alias).
    pub const RING_WRITE: &[u8] = b"ring-write:";
}

/// Offsets in `shared`.
pub const STARTS: usize = 0;
pub const PRODUCE_SIZE: usize = 8;
pub const PRODUCE_COUNT: usize = 12;
/// The queue's slot size: enough for the largest benchmark message.
pub const QUEUE_SLOT: usize = 4096 + 8;

/// Private state: reset when the component is restarted.
static CALLS_SERVED: AtomicU32 = AtomicU32::new(0);

pub struct Echo {
    producer: Option<Producer>,
    message: [u8; QUEUE_SLOT],
    size: usize,
    remaining: u32,
}

fn read_u32(env: &mut dyn Env, offset: usize) -> u32 {
    let mut word = [0u8; 4];
    let _ = env.region(regions::SHARED).read(offset, &mut word);
    u32::from_le_bytes(word)
}

impl Echo {
    fn produce(&mut self, env: &mut dyn Env) {
        if self.remaining == 0 {
            let size = read_u32(env, PRODUCE_SIZE) as usize;
            let count = read_u32(env, PRODUCE_COUNT);
            if count == 0 || size == 0 || size > QUEUE_SLOT - 8 {
                return;
            }
            let _ = env.region(regions::SHARED).write(PRODUCE_COUNT, &[0; 4]);
            self.producer = Producer::new(env.region(regions::QUEUE), QUEUE_SLOT).ok();
            self.size = size;
            self.remaining = count;
        }
        let Some(producer) = self.producer.as_mut() else {
            return;
        };
        while self.remaining > 0 {
            self.message[..4].copy_from_slice(&self.remaining.to_le_bytes());
            match producer.push(&self.message[..self.size]) {
                Ok(()) => self.remaining -= 1,
                Err(QueueError::Full) => break,
                Err(_) => {
                    self.remaining = 0;
                    break;
                }
            }
        }
        if producer.consumer_needs_signal() {
            env.notify(channels::QUEUE);
        }
    }
}

impl Component for Echo {
    fn init(env: &mut dyn Env) -> Self {
        let shared = env.region(regions::SHARED);
        let starts = shared
            .atomic_u32(STARTS)
            .map(|w| w.fetch_add(1, Ordering::AcqRel) + 1)
            .unwrap_or(0);
        println!(env, "echo started (start {starts})");
        Echo {
            producer: None,
            message: [0x5a; QUEUE_SLOT],
            size: 0,
            remaining: 0,
        }
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(irqs::DEVICE) {
            env.irq_ack(irqs::DEVICE);
        }
        if channels.contains(channels::PING) || channels.contains(irqs::DEVICE) {
            env.notify(channels::PING);
        }
        if channels.contains(channels::QUEUE) {
            self.produce(env);
        }
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::DRIVER {
            return Err(Refusal::NOT_SERVED);
        }
        let served = CALLS_SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        match message {
            commands::PANIC => panic!("commanded panic"),
            commands::WRITE_READ_ONLY => {
                let readonly = env.region(regions::READONLY);
                if component_api::deliberate::write_read_only(&readonly) {
                    println!(env, "the write to a read-only region did NOT fault");
                } else {
                    println!(env, "my readonly region is writable: nothing to test");
                }
                Err(Refusal::DENIED)
            }
            commands::ILLEGAL_INSTRUCTION => {
                component_api::deliberate::illegal_instruction();
                Err(Refusal::DENIED)
            }
            commands::SPIN => {
                println!(env, "spinning");
                loop {
                    core::hint::spin_loop();
                }
            }
            commands::STATE => {
                let starts = read_u32(env, STARTS);
                reply[..4].copy_from_slice(&served.to_le_bytes());
                reply[4..8].copy_from_slice(&starts.to_le_bytes());
                Ok(8)
            }
            _ if message.starts_with(commands::RING_WRITE) => {
                let data = &message[commands::RING_WRITE.len()..];
                let ring = env.region(regions::RING);
                ring.write(ring.len() - 2, data)
                    .map_err(|_| Refusal::MALFORMED)?;
                Ok(0)
            }
            _ => {
                let len = message.len().min(reply.len());
                reply[..len].copy_from_slice(&message[..len]);
                Ok(len)
            }
        }
    }
}
