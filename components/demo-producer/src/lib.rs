//! `producer` (demonstration): streams numbered messages to `consumer`
//! through an SPSC queue in the shared region `queue`, notifying only when
//! the consumer asked for it (signal suppression), and checks that its
//! double-mapped region `mirror` aliases (the mechanism ring buffers use).
//!
//! Trusts: nothing the consumer writes (the queue validates its index).
//! Writes: the queue's slots and tail, the `mirror` region.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, ChannelSet, Component, Env};
use spsc_queue::{Producer as QueueProducer, QueueError};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The stream both ends agree on.
pub mod stream {
    /// Messages in the whole demonstration.
    pub const MESSAGES: u32 = 2000;
    /// Queue slot size, the same on both sides.
    pub const SLOT_SIZE: usize = 64;
    /// Bytes in each message: its sequence number, then a pattern.
    pub const MESSAGE_LEN: usize = 48;

    /// Message `sequence`: the number, then bytes derived from it.
    pub fn message(sequence: u32) -> [u8; MESSAGE_LEN] {
        let mut bytes = [0u8; MESSAGE_LEN];
        bytes[..4].copy_from_slice(&sequence.to_le_bytes());
        for (i, byte) in bytes[4..].iter_mut().enumerate() {
            *byte = (sequence as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        bytes
    }

    /// FNV-1a, folded over every message in order.
    pub fn checksum(state: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(state, |hash, byte| {
            (hash ^ *byte as u64).wrapping_mul(0x100_0000_01b3)
        })
    }
    pub const CHECKSUM_START: u64 = 0xcbf2_9ce4_8422_2325;
}

pub struct Producer {
    queue: Option<QueueProducer>,
    next: u32,
    signals_sent: u32,
    checksum: u64,
}

impl Producer {
    fn pump(&mut self, env: &mut dyn Env) {
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        while self.next < stream::MESSAGES {
            let message = stream::message(self.next);
            match queue.push(&message) {
                Ok(()) => {
                    self.checksum = stream::checksum(self.checksum, &message);
                    self.next += 1;
                }
                Err(QueueError::Full) => break,
                Err(error) => {
                    println!(env, "queue error {error:?}; stopping");
                    self.queue = None;
                    return;
                }
            }
        }
        if queue.consumer_needs_signal() {
            env.notify(channels::CONSUMER);
            self.signals_sent += 1;
        }
        if self.next == stream::MESSAGES {
            println!(
                env,
                "sent {} messages with {} notifications, checksum {:#018x}",
                self.next,
                self.signals_sent,
                self.checksum
            );
            self.next += 1; // report once
        }
    }
}

fn mirror_aliases(env: &mut dyn Env) -> bool {
    let mirror = env.region(regions::MIRROR);
    if !mirror.double_mapped() {
        return false;
    }
    let pattern = *b"mirror!";
    let last = mirror.len() - 3;
    // Written across the end of the first mapping...
    if mirror.write(last, &pattern).is_err() {
        return false;
    }
    // ...it must read back whole through the second one, and wrap to the start.
    let mut across = [0u8; 7];
    let mut start = [0u8; 4];
    mirror.read(last, &mut across).is_ok()
        && mirror.read(0, &mut start).is_ok()
        && across == pattern
        && start == pattern[3..]
}

impl Component for Producer {
    fn init(env: &mut dyn Env) -> Self {
        let aliases = mirror_aliases(env);
        println!(
            env,
            "double-mapped region aliases: {}",
            if aliases { "yes" } else { "NO" }
        );
        let queue = QueueProducer::new(env.region(regions::QUEUE), stream::SLOT_SIZE);
        if let Err(error) = &queue {
            println!(env, "cannot use the queue: {error:?}");
        }
        let mut producer = Producer {
            queue: queue.ok(),
            next: 0,
            signals_sent: 0,
            checksum: stream::CHECKSUM_START,
        };
        if let Some(queue) = &producer.queue {
            println!(
                env,
                "streaming {} messages, queue capacity {}",
                stream::MESSAGES,
                queue.capacity()
            );
        }
        producer.pump(env);
        producer
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::CONSUMER) {
            self.pump(env);
        }
    }
}
