//! `keyboard`: the Hyper-V synthetic keyboard driver.
//!
//! The channel (`vsc-link`) opens through `vmbus`; at open the driver asks
//! for protocol 1.0 and the host accepts (or not: then the driver says so
//! and takes no keystrokes). Each keystroke after that (a set-1 make code
//! with E0/E1/break flags, or a UTF-16 unit) is queued, up to
//! [`QUEUE`]; beyond that the oldest stay and new ones are dropped and
//! counted (a client that does not read loses the newest keys, not the
//! order of what it gets). Clients are notified (`driver::CLIENT_EVENTS`)
//! when the queue goes from empty to non-empty, and take up to
//! [`keyboard::MAX_KEYS`] events per `Next`.
//!
//! Trusts: nothing from the host. A keystroke with flags the protocol
//! does not define, a message of an unknown type, short or longer than its
//! type (padding aside), keystrokes before the protocol was accepted:
//! refused, counted in [`KeyboardStats`], printed (the first few).
//! Writes: its rings, the console, its clients' notifications.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Channel, ChannelSet, Component, Env, Refusal};
use ic_channel::ChannelIds;
use vmbus_ipc::keyboard::{self, KeyStroke, Prefix, Reply, Request};
use vmbus_protocol::synthkbd::{self, info, HostMessage, ParseError};
use vsc_link::{Answer, Device, Link};
use zerocopy::IntoBytes;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// Key events held for the clients (a few seconds of fast typing).
pub const QUEUE: usize = 128;
/// The largest packet: the in ring's data area is no larger (the
/// description gives 8 KiB rings: 4 KiB of data), so no packet is ever too
/// large to copy out and refuse.
pub const PACKET_BUFFER: usize = 4096;
/// Refusals printed: the first this many, then one in [`LOG_EVERY`].
const LOGGED: u64 = 16;
const LOG_EVERY: u64 = 256;

/// What the driver refused and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyboardStats {
    pub keys: u64,
    pub refused_unknown_flags: u64,
    pub refused_unknown_type: u64,
    pub refused_short: u64,
    pub refused_oversized: u64,
    /// Keystrokes before the host accepted the protocol.
    pub refused_early: u64,
    pub dropped: u64,
}

impl KeyboardStats {
    pub fn refused(&self) -> u64 {
        self.refused_unknown_flags
            + self.refused_unknown_type
            + self.refused_short
            + self.refused_oversized
            + self.refused_early
    }
}

#[derive(Default)]
pub struct KeyboardDevice {
    /// The host accepted protocol 1.0 in this session.
    pub accepted: bool,
    pub queue: heapless::Deque<KeyStroke, QUEUE>,
    /// Dropped since the last `Next` reply.
    dropped_since_reply: u32,
    pub stats: KeyboardStats,
}

/// The client's event for a host keystroke (flags already checked).
pub fn key_stroke(make_code: u16, flags: u32) -> KeyStroke {
    let prefix = if flags & info::E1 != 0 {
        Prefix::E1
    } else if flags & info::E0 != 0 {
        Prefix::E0
    } else {
        Prefix::None
    };
    KeyStroke {
        code: make_code,
        prefix,
        released: flags & info::BREAK != 0,
        unicode: flags & info::UNICODE != 0,
    }
}

impl KeyboardDevice {
    fn refuse(&mut self, env: &mut dyn Env, error: ParseError) {
        match error {
            ParseError::UnknownFlags(_) => self.stats.refused_unknown_flags += 1,
            ParseError::UnknownType(_) => self.stats.refused_unknown_type += 1,
            ParseError::Short { .. } => self.stats.refused_short += 1,
            ParseError::Oversized { .. } => self.stats.refused_oversized += 1,
        }
        let count = self.stats.refused();
        if count <= LOGGED || count.is_multiple_of(LOG_EVERY) {
            println!(env, "refused host message {count}: {error:?}");
        }
    }

    fn queue_key(&mut self, env: &mut dyn Env, stroke: KeyStroke) {
        self.stats.keys += 1;
        let was_empty = self.queue.is_empty();
        if self.queue.push_back(stroke).is_err() {
            self.stats.dropped += 1;
            self.dropped_since_reply = self.dropped_since_reply.saturating_add(1);
            return;
        }
        if was_empty {
            for event in driver::CLIENT_EVENTS {
                env.notify(*event);
            }
        }
    }

    /// `Next`: the oldest queued events.
    pub fn take_events(&mut self) -> Reply {
        let mut keys = heapless::Vec::new();
        while keys.len() < keyboard::MAX_KEYS {
            let Some(stroke) = self.queue.pop_front() else {
                break;
            };
            // Cannot fail: bounded by the loop.
            let _ = keys.push(stroke);
        }
        let dropped = core::mem::take(&mut self.dropped_since_reply);
        Reply::Keys { keys, dropped }
    }
}

impl Device for KeyboardDevice {
    fn opened(&mut self, _env: &mut dyn Env) -> Answer {
        self.accepted = false;
        let request = synthkbd::ProtocolRequest::new(synthkbd::VERSION_1_0);
        // Fits: 8 bytes.
        Answer::from_slice(request.as_bytes()).unwrap_or_default()
    }

    fn closed(&mut self, _env: &mut dyn Env) {
        self.accepted = false;
    }

    fn message(&mut self, env: &mut dyn Env, payload: &[u8]) -> Option<Answer> {
        match synthkbd::parse_host_message(payload) {
            Ok(HostMessage::ProtocolResponse(response)) => {
                self.accepted = response.accepted();
                if self.accepted {
                    println!(env, "protocol 1.0 accepted");
                } else {
                    println!(
                        env,
                        "the host refused protocol 1.0 (status {:#x}): no keystrokes",
                        response.status.get()
                    );
                }
            }
            Ok(HostMessage::Keystroke(stroke)) if self.accepted => {
                let key = key_stroke(stroke.make_code.get(), stroke.info.get());
                self.queue_key(env, key);
            }
            Ok(HostMessage::Keystroke(_)) => {
                self.stats.refused_early += 1;
                let count = self.stats.refused();
                if count <= LOGGED {
                    println!(
                        env,
                        "refused host message {count}: a keystroke before the protocol"
                    );
                }
            }
            Err(error) => self.refuse(env, error),
        }
        None
    }
}

/// The component.
pub struct Keyboard {
    pub link: Link<PACKET_BUFFER>,
    pub device: KeyboardDevice,
}

impl Component for Keyboard {
    fn init(env: &mut dyn Env) -> Self {
        let mut driver = Keyboard {
            link: Link::new(IDS),
            device: KeyboardDevice::default(),
        };
        // The offer may be there already (we were restarted): ask now.
        driver.link.on_bus_event(env, &mut driver.device);
        driver
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(IDS.vmbus_event) {
            self.link.on_bus_event(env, &mut self.device);
        }
        if set.contains(IDS.synic) {
            self.link.poll(env, &mut self.device);
        }
    }

    fn protected(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::keyboard(channel, message, reply, |_, request| match request {
            Request::Next => Ok(self.device.take_events()),
        })
    }
}

#[cfg(test)]
mod tests;
