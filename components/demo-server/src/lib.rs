//! `server` (demonstration): answers typed protected calls.
//!
//! Serves `protocol::Request` on its `consumer` end: adds numbers, and
//! records the consumer's final tally. Malformed messages are refused, not
//! trusted. Writes: nothing but its replies and console lines.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{encode_reply, println, Channel, ChannelSet, Component, Env, Refusal};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The messages of the server's call interface (postcard-encoded).
pub mod protocol {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        Add { a: u32, b: u32 },
        Record { messages: u32, checksum: u64 },
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Sum(u64),
        Recorded { calls_served: u32 },
    }
}

use protocol::{Reply, Request};

pub struct Server {
    calls_served: u32,
}

impl Component for Server {
    fn init(env: &mut dyn Env) -> Self {
        println!(env, "serving protected calls");
        Server { calls_served: 0 }
    }

    fn notified(&mut self, _env: &mut dyn Env, _channels: ChannelSet) {}

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::CONSUMER {
            return Err(Refusal::NOT_SERVED);
        }
        let request: Request = component_api::decode(message)?;
        self.calls_served += 1;
        let answer = match request {
            Request::Add { a, b } => Reply::Sum(a as u64 + b as u64),
            Request::Record { messages, checksum } => {
                println!(
                    env,
                    "recorded {messages} messages, checksum {checksum:#018x}"
                );
                Reply::Recorded {
                    calls_served: self.calls_served,
                }
            }
        };
        encode_reply(reply, &answer)
    }
}
