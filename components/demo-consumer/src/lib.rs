//! `consumer` (demonstration): drains the SPSC queue that `producer`
//! fills, checks every message's number and contents, asks to be signalled
//! only when it is about to sleep, and reports the result to `server` by a
//! typed protected call and to `supervisor` by a notification.
//!
//! Trusts: nothing in the queue (lengths, numbers and bytes are checked).
//! Writes: the queue's head and its "signal me" flag.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, CallError, ChannelSet, Component, Env, Refusal};
use demo_producer::stream;
use demo_server::protocol::{Demo, Reply, Request};
use spsc_queue::Consumer as QueueConsumer;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub struct Consumer {
    queue: Option<QueueConsumer>,
    received: u32,
    wrong: u32,
    wakeups: u32,
    checksum: u64,
    finished: bool,
}

impl Consumer {
    fn drain(&mut self, env: &mut dyn Env) {
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        let mut buffer = [0u8; stream::SLOT_SIZE];
        loop {
            loop {
                match queue.pop(&mut buffer) {
                    Ok(Some(length)) => {
                        let expected = stream::message(self.received);
                        if buffer[..length] != expected[..] {
                            self.wrong += 1;
                        }
                        self.checksum = stream::checksum(self.checksum, &buffer[..length]);
                        self.received += 1;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        println!(env, "queue error {error:?}; stopping");
                        self.queue = None;
                        return;
                    }
                }
            }
            if queue.producer_needs_signal() {
                env.notify(channels::PRODUCER);
            }
            if self.received >= stream::MESSAGES {
                break;
            }
            match queue.prepare_to_sleep() {
                Ok(true) => break,
                Ok(false) => continue,
                Err(error) => {
                    println!(env, "queue error {error:?}; stopping");
                    self.queue = None;
                    return;
                }
            }
        }
        if self.received >= stream::MESSAGES && !self.finished {
            self.finished = true;
            self.finish(env);
        }
    }

    fn finish(&mut self, env: &mut dyn Env) {
        println!(
            env,
            "received {} messages ({} wrong) after {} wake-ups, checksum {:#018x}",
            self.received,
            self.wrong,
            self.wakeups,
            self.checksum
        );
        let record = Request::Record {
            messages: self.received,
            checksum: self.checksum,
        };
        match channels::SERVER.call(env, &record) {
            Ok(Reply::Recorded { calls_served }) => {
                println!(
                    env,
                    "server recorded the tally ({calls_served} calls served)"
                )
            }
            other => println!(env, "record call failed: {other:?}"),
        }
        env.notify(channels::SUPERVISOR);
    }
}

impl Component for Consumer {
    fn init(env: &mut dyn Env) -> Self {
        match channels::SERVER.call(env, &Request::Add { a: 40, b: 2 }) {
            Ok(Reply::Sum(sum)) => println!(env, "protected call: 40 + 2 = {sum}"),
            other => println!(env, "protected call failed: {other:?}"),
        }
        // A server must refuse what it cannot decode rather than trust it:
        // a body that does not decode, and a message of another protocol.
        let mut message = [0u8; 16];
        let used =
            component_api::protocol::encode::<Demo, _>(&mut message, &0xffff_ffffu32).unwrap_or(0);
        let mut reply = [0u8; 8];
        match env.ppcall(channels::SERVER.channel(), &message[..used], &mut reply) {
            Err(CallError::Refused(code)) if code == Refusal::MALFORMED.0 => {
                println!(env, "malformed call refused by the server")
            }
            other => println!(env, "malformed call NOT refused: {other:?}"),
        }
        match env.ppcall(channels::SERVER.channel(), &[0xff, 0xff, 0xff], &mut reply) {
            Err(CallError::Refused(code)) if code == Refusal::WRONG_PROTOCOL.0 => {
                println!(env, "call of another protocol refused by the server")
            }
            other => println!(env, "call of another protocol NOT refused: {other:?}"),
        }
        let queue = QueueConsumer::new(env.region(regions::QUEUE), stream::SLOT_SIZE);
        if let Err(error) = &queue {
            println!(env, "cannot use the queue: {error:?}");
        }
        let mut consumer = Consumer {
            queue: queue.ok(),
            received: 0,
            wrong: 0,
            wakeups: 0,
            checksum: stream::CHECKSUM_START,
            finished: false,
        };
        consumer.drain(env);
        consumer
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::PRODUCER) {
            self.wakeups += 1;
            self.drain(env);
        }
    }
}
