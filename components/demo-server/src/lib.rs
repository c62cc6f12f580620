//! `server` (demonstration): answers typed protected calls.
//!
//! Serves `protocol::Request` on its `consumer` end: adds numbers, and
//! records the consumer's final tally. Malformed messages are refused, not
//! trusted. Writes: nothing but its replies and console lines.
#![no_std]
#![forbid(unsafe_code)]
// The generated ids name the protocol by its path from anywhere,
// `demo_server::protocol::Demo`, this crate included.
extern crate self as demo_server;

use component_api::{println, Channel, ChannelSet, Component, Env, Refusal};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The server's call interface (`protocol = "demo"`).
pub mod protocol {
    use serde::{Deserialize, Serialize};

    pub struct Demo;

    impl component_api::Protocol for Demo {
        const NAME: &'static str = "demo";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["add", "record"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Add { .. } => 0,
                Request::Record { .. } => 1,
            }
        }
    }

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
        // Only the consumer calls us (the generated `serve::demo` refuses
        // every other channel, and messages of another protocol).
        serve::demo(channel, message, reply, |Caller::Consumer, request| {
            self.calls_served += 1;
            Ok(match request {
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
            })
        })
    }
}
