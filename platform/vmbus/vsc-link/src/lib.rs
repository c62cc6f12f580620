//! `vsc-link`: the channel of a VSC whose device speaks in-band messages
//! only, one channel, no buffers (the synthetic keyboard and mouse).
//!
//! - Bring-up, as the IC drivers do it (`ic-channel`): on every
//!   `vmbus_event` (and at start) ask the bus manager where the channel
//!   stands (`bus::Request::Query`); when offered, zero the rings and ask
//!   to open; when open, attach to the rings, tell the [`Device`] (which
//!   sends its first request) and poll once; on a new generation, rescind
//!   or close, drop the rings and tell the device.
//! - Data path: [`vmbus_channel::DataChannel`] copies each host packet
//!   out of the in ring and validates it; in-band payloads go to the
//!   device, which may answer one message; completions of our own
//!   requests are matched (and otherwise refused); everything refused is
//!   counted and printed (the first few). The in ring is drained in rounds
//!   (mask, drain, publish, unmask, look again).
//!
//! Trusts: nothing from the host. Gives up (panics, so the bus manager
//! restarts the driver with fresh rings) only when the ring itself is
//! broken (indices out of range, a corrupt descriptor).

#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Env};
use ic_channel::memory::ChannelRing;
use ic_channel::{give_up, rings, zero_rings, ChannelIds};
use vmbus_channel::{ChannelError, DataChannel, Received};
use vmbus_ipc::{bus, synic};
use vmbus_ring::{RingReader, RingWriter};

/// An answer the device sends after a host message (at most this long).
pub const MAX_ANSWER: usize = 64;
pub type Answer = heapless::Vec<u8, MAX_ANSWER>;

/// Requests awaiting a completion at once (the protocol request, an ack).
const OUTSTANDING: usize = 4;
/// Rounds and packets per notification: a host that never stops writing
/// cannot keep the driver from serving its clients.
const ROUNDS: usize = 64;
const PACKETS_PER_ROUND: usize = 256;
/// Refusals printed: the first this many, then one in [`LOG_EVERY`].
const LOGGED: u64 = 16;
const LOG_EVERY: u64 = 256;

/// What the device on the channel does with it.
pub trait Device {
    /// The channel opened (a new session): the first message to send.
    fn opened(&mut self, env: &mut dyn Env) -> Answer;
    /// The channel is gone: forget the session.
    fn closed(&mut self, env: &mut dyn Env);
    /// An in-band message from the host (its payload, padding included):
    /// an answer to send, if any. A refusal is counted and printed by the
    /// device.
    fn message(&mut self, env: &mut dyn Env, payload: &[u8]) -> Option<Answer>;
}

/// What the link counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub opened: u64,
    pub messages: u64,
    /// Packets the channel refused (bad packets, completions we never
    /// asked for, transfer pages, GPA direct from the host).
    pub refused_packets: u64,
    pub completions: u64,
    /// Answers that found the out ring full (dropped: the protocol
    /// messages are small and rare, a full ring is a host that does not
    /// read).
    pub send_failures: u64,
}

pub struct Link<const BUFFER: usize> {
    ids: ChannelIds,
    generation: Option<u32>,
    open_asked: bool,
    connection_id: u32,
    channel: Option<DataChannel<ChannelRing, (), OUTSTANDING>>,
    packet: [u8; BUFFER],
    pub stats: LinkStats,
}

impl<const BUFFER: usize> Link<BUFFER> {
    pub const fn new(ids: ChannelIds) -> Self {
        Link {
            ids,
            generation: None,
            open_asked: false,
            connection_id: 0,
            channel: None,
            packet: [0; BUFFER],
            stats: LinkStats {
                opened: 0,
                messages: 0,
                refused_packets: 0,
                completions: 0,
                send_failures: 0,
            },
        }
    }

    pub fn is_open(&self) -> bool {
        self.channel.is_some()
    }

    /// The bus manager notified us (or we just started).
    pub fn on_bus_event<D: Device>(&mut self, env: &mut dyn Env, device: &mut D) {
        let info = match self
            .ids
            .vmbus
            .call(env, &bus::Request::Query { channel: 0 })
        {
            Ok(bus::Reply::Channel(info)) => info,
            other => {
                println!(env, "vmbus answered Query with {other:?}");
                return;
            }
        };
        if self.generation != Some(info.generation) {
            self.detach(env, device);
            self.generation = Some(info.generation);
            self.open_asked = false;
        }
        self.connection_id = info.connection_id;
        match info.state {
            bus::ChannelState::Offered | bus::ChannelState::Failed { .. } => {
                if let bus::ChannelState::Failed { status } = info.state {
                    println!(env, "open failed with status {status:#x}");
                }
                self.detach(env, device);
                if !self.open_asked {
                    self.open_asked = true;
                    // Only we map the rings; nothing of an earlier life is
                    // shown to the host.
                    if zero_rings(env, self.ids.rings).is_err() {
                        give_up(env, "the ring regions cannot be zeroed");
                    }
                    let open = bus::Request::Open {
                        channel: 0,
                        user_data: heapless::Vec::new(),
                    };
                    match self.ids.vmbus.call(env, &open) {
                        Ok(bus::Reply::Accepted) => {}
                        other => println!(env, "vmbus answered Open with {other:?}"),
                    }
                }
            }
            bus::ChannelState::Open => {
                if self.channel.is_none() {
                    self.attach(env, device);
                    // Data can precede the open notification.
                    self.poll(env, device);
                }
            }
            bus::ChannelState::Opening => {}
            bus::ChannelState::NotOffered
            | bus::ChannelState::Closing
            | bus::ChannelState::Rescinded
            | bus::ChannelState::Held => self.detach(env, device),
        }
    }

    fn attach<D: Device>(&mut self, env: &mut dyn Env, device: &mut D) {
        let Ok((out_ring, in_ring)) = rings(env, self.ids.rings) else {
            give_up(env, "the ring regions cannot hold two rings");
        };
        let (Ok(reader), Ok(writer)) = (RingReader::new(in_ring), RingWriter::new(out_ring, true))
        else {
            give_up(env, "ring indices out of range at open");
        };
        self.channel = Some(DataChannel::new(writer, reader));
        self.stats.opened += 1;
        println!(env, "channel open (connection {})", self.connection_id);
        let first = device.opened(env);
        self.send(env, &first);
    }

    fn detach<D: Device>(&mut self, env: &mut dyn Env, device: &mut D) {
        if let Some(mut channel) = self.channel.take() {
            let _ = channel.fail_outstanding().count();
            println!(env, "channel closed: rings dropped");
            device.closed(env);
        }
    }

    /// Send one in-band message asking for a completion (as the guest
    /// drivers do); signal the host when the ring says so.
    pub fn send(&mut self, env: &mut dyn Env, message: &[u8]) {
        let Some(channel) = self.channel.as_mut() else {
            return;
        };
        match channel.send_in_band(message, Some(())) {
            Ok(sent) => {
                if sent.signal.0 {
                    self.signal_host(env);
                }
            }
            Err(error) => {
                self.stats.send_failures += 1;
                if self.stats.send_failures <= LOGGED {
                    println!(env, "send failed: {:?}", error.error);
                }
            }
        }
    }

    fn signal_host(&mut self, env: &mut dyn Env) {
        let request = synic::Request::SignalHost {
            connection_id: self.connection_id,
        };
        match self.ids.synic_call.call(env, &request) {
            Ok(synic::Reply::Done) | Ok(synic::Reply::ChannelClosed) => {}
            other => println!(env, "SignalHost failed: {other:?}"),
        }
    }

    /// synic notified us: drain the in ring in rounds.
    pub fn poll<D: Device>(&mut self, env: &mut dyn Env, device: &mut D) {
        for _ in 0..ROUNDS {
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            if channel.begin_round().is_err() {
                give_up(env, "the in ring's control page is out of reach");
            }
            self.drain(env, device);
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            let end = match channel.end_round() {
                Ok(end) => end,
                Err(_) => give_up(env, "the host broke the in ring"),
            };
            if end.signal_host {
                self.signal_host(env);
            }
            if !end.more {
                return;
            }
        }
    }

    fn refused(&mut self, env: &mut dyn Env, what: &dyn core::fmt::Debug) {
        self.stats.refused_packets += 1;
        let count = self.stats.refused_packets;
        if count <= LOGGED || count.is_multiple_of(LOG_EVERY) {
            println!(env, "refused host packet {count}: {what:?}");
        }
    }

    fn drain<D: Device>(&mut self, env: &mut dyn Env, device: &mut D) {
        for _ in 0..PACKETS_PER_ROUND {
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            let answer = match channel.receive(&mut self.packet) {
                Ok(None) => return,
                Ok(Some(Received::InBand { payload, .. })) => {
                    self.stats.messages += 1;
                    device.message(env, payload)
                }
                Ok(Some(Received::Completion { .. })) => {
                    self.stats.completions += 1;
                    None
                }
                Ok(Some(Received::TransferPages { .. })) => {
                    // No receive buffer is shared: the channel refuses
                    // these before they get here.
                    self.refused(env, &"transfer pages");
                    None
                }
                Err(ChannelError::Refused(refusal)) => {
                    self.refused(env, &refusal);
                    None
                }
                Err(error) => {
                    println!(env, "in ring: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            };
            if let Some(answer) = answer {
                self.send(env, &answer);
            }
        }
    }
}
