//! The component: the [`Session`] wired to its channel (through the bus
//! manager and synic), its VRAM (held by address only: the GPA goes to
//! the host; the client draws through its own map) and its clients.

use crate::session::{Link, Session};
use component_api::{println, ChannelSet, Component, Env, Refusal};
use ic_channel::memory::ChannelRing;
use ic_channel::{give_up, rings, zero_rings, ChannelIds};
use vmbus_channel::{ChannelError, DataChannel, Received};
use vmbus_ipc::framebuffer::Framebuffer;
use vmbus_ipc::{bus, synic};
use vmbus_ring::{RingReader, RingWriter};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// The in ring's data area: every packet the host can write fits, so none
/// is too long to read (and refuse).
pub const PACKET_BYTES: usize = driver::RING_IN_BYTES - 4096;
/// Rounds of draining per notification.
const ROUNDS: usize = 256;
/// Console lines about ring-level refusals (the first few only).
const RING_REFUSALS_LOGGED: u64 = 8;

type Channel = DataChannel<ChannelRing, u8, 1>;

/// Whether `channel` is a client's call end: the driver's own ends are
/// the `[[driver]]` expansion's (synic, bus manager, console), the rest of
/// its ends are its clients' call and notify ends. (The generated
/// `serve` and `Caller` exist only for a description that gives the
/// driver clients; this works for both.) Clients may use every operation.
fn is_client_call(channel: component_api::Channel) -> bool {
    let own = [
        IDS.synic,
        IDS.synic_call.channel(),
        IDS.vmbus.channel(),
        IDS.vmbus_event,
        channels::CONSOLE.channel(),
    ];
    CHANNEL_NAMES.iter().any(|(end, _)| *end == channel)
        && !own.contains(&channel)
        && !driver::CLIENT_EVENTS.contains(&channel)
}

const ALL_OPERATIONS: u64 = component_api::protocol::caller_mask::<Framebuffer>(&[], &[]);

/// The session's link: the out ring (signalling the host when the ring
/// says so, after the call) and the console.
struct ChannelLink<'a> {
    env: &'a mut dyn Env,
    channel: Option<&'a mut Channel>,
    signal: bool,
}

impl Link for ChannelLink<'_> {
    fn send(&mut self, message: &[u8]) -> bool {
        let Some(channel) = self.channel.as_mut() else {
            return false;
        };
        match channel.send_in_band(message, None) {
            Ok(sent) => {
                self.signal |= sent.signal.0;
                true
            }
            Err(error) => {
                println!(self.env, "send failed: {:?}", error.error);
                false
            }
        }
    }

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        println!(self.env, "{line}");
    }
}

pub struct Video {
    offer_generation: Option<u32>,
    connection_id: u32,
    open_asked: bool,
    channel: Option<Channel>,
    pub session: Session,
    ring_refusals: u64,
    packet: [u8; PACKET_BYTES],
    wakeup: synic::Wakeup,
}

impl Component for Video {
    fn init(env: &mut dyn Env) -> Self {
        let vram = env
            .region_address(regions::VRAM)
            .map(|address| (address.guest_physical, address.len));
        if vram.is_none() {
            println!(env, "the VRAM region has no guest physical address");
        }
        // A restarted driver must not reuse its clients' last generation
        // (nor the host its last contexts): both start from the clock.
        let now = env.now_ns();
        let mut driver = Video {
            offer_generation: None,
            connection_id: 0,
            open_asked: false,
            channel: None,
            session: Session::new(vram, (now / 1_000) as u32, now),
            ring_refusals: 0,
            packet: [0; PACKET_BYTES],
            wakeup: synic::Wakeup::default(),
        };
        driver.on_bus_event(env);
        driver
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(IDS.vmbus_event) {
            self.on_bus_event(env);
        }
        if set.contains(IDS.synic) {
            // Ring data or our wakeup: either way synic holds none now.
            self.wakeup.forget();
            self.poll(env);
        }
        let now = env.now_ns();
        let mut link = ChannelLink {
            env,
            channel: self.channel.as_mut(),
            signal: false,
        };
        self.session.tick(&mut link, now);
        let signal = link.signal;
        self.after(env, signal, false);
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: component_api::Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        let before = self.session.generation();
        let mut link = ChannelLink {
            env,
            channel: self.channel.as_mut(),
            signal: false,
        };
        if !is_client_call(channel) {
            return Err(Refusal::NOT_SERVED);
        }
        let request = component_api::decode_allowed::<Framebuffer>(message, ALL_OPERATIONS)?;
        let answer = self.session.serve(&mut link, &request);
        let result = component_api::encode_reply::<Framebuffer>(reply, &answer);
        let signal = link.signal;
        let changed = self.session.generation() != before;
        self.after(env, signal, changed);
        result
    }
}

impl Video {
    fn on_bus_event(&mut self, env: &mut dyn Env) {
        let info = match IDS.vmbus.call(env, &bus::Request::Query { channel: 0 }) {
            Ok(bus::Reply::Channel(info)) => info,
            other => {
                println!(env, "vmbus answered Query with {other:?}");
                return;
            }
        };
        if self.offer_generation != Some(info.generation) {
            self.detach(env);
            self.offer_generation = Some(info.generation);
            self.open_asked = false;
        }
        self.connection_id = info.connection_id;
        match info.state {
            bus::ChannelState::Offered | bus::ChannelState::Failed { .. } => {
                if !self.open_asked {
                    self.open_asked = true;
                    if zero_rings(env, IDS.rings).is_err() {
                        give_up(env, "the ring regions cannot be zeroed");
                    }
                    let open = bus::Request::Open {
                        channel: 0,
                        user_data: heapless::Vec::new(),
                    };
                    if let Err(error) = IDS.vmbus.call(env, &open) {
                        println!(env, "vmbus Open failed: {error:?}");
                    }
                }
            }
            bus::ChannelState::Open => {
                if self.channel.is_none() {
                    self.attach(env);
                }
            }
            bus::ChannelState::Opening | bus::ChannelState::NotOffered => {}
            other => {
                if self.channel.is_some() {
                    println!(env, "channel {other:?}");
                }
                self.detach(env);
            }
        }
    }

    fn attach(&mut self, env: &mut dyn Env) {
        let Ok((out_ring, in_ring)) = rings(env, IDS.rings) else {
            give_up(env, "the ring regions cannot hold two rings");
        };
        let (Ok(reader), Ok(writer)) = (RingReader::new(in_ring), RingWriter::new(out_ring, true))
        else {
            give_up(env, "ring indices out of range at open");
        };
        self.channel = Some(DataChannel::new(writer, reader));
        let now = env.now_ns();
        let mut link = ChannelLink {
            env,
            channel: self.channel.as_mut(),
            signal: false,
        };
        self.session.open(&mut link, now);
        let signal = link.signal;
        self.after(env, signal, false);
        self.poll(env);
    }

    fn detach(&mut self, env: &mut dyn Env) {
        if self.channel.take().is_some() && self.session.close() {
            self.notify_clients(env);
        }
    }

    fn notify_clients(&self, env: &mut dyn Env) {
        for &client in driver::CLIENT_EVENTS {
            env.notify(client);
        }
    }

    /// After the session acted: signal the host, tell the clients of a
    /// new mode, keep a wakeup for the start's deadline.
    fn after(&mut self, env: &mut dyn Env, signal: bool, changed: bool) {
        if signal {
            self.signal_host(env);
        }
        if changed {
            self.notify_clients(env);
        }
        self.keep_wakeup(env);
    }

    /// Drain the in ring in rounds (mask, drain, publish, unmask, look
    /// again).
    fn poll(&mut self, env: &mut dyn Env) {
        for _ in 0..ROUNDS {
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            if channel.begin_round().is_err() {
                give_up(env, "the in ring's control page is out of reach");
            }
            let before = self.session.generation();
            let signal = self.drain(env);
            let changed = self.session.generation() != before;
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            let end = match channel.end_round() {
                Ok(end) => end,
                Err(_) => give_up(env, "the host broke the in ring"),
            };
            self.after(env, signal || end.signal_host, changed);
            if !end.more {
                return;
            }
        }
    }

    /// Whether to signal the host for what the session sent.
    fn drain(&mut self, env: &mut dyn Env) -> bool {
        let now = env.now_ns();
        let mut signal = false;
        for _ in 0..ROUNDS {
            let Some(channel) = self.channel.as_mut() else {
                return signal;
            };
            let payload = match channel.receive(&mut self.packet) {
                Ok(Some(Received::InBand { payload, .. })) => payload,
                // Completions (we ask for none) and transfer pages (we
                // share no buffer) are refused by the channel already.
                Ok(Some(_)) => {
                    self.ring_refusals += 1;
                    continue;
                }
                Ok(None) => return signal,
                Err(ChannelError::Refused(refusal)) => {
                    self.ring_refusals += 1;
                    if self.ring_refusals <= RING_REFUSALS_LOGGED {
                        println!(env, "refused a host packet: {refusal:?}");
                    }
                    continue;
                }
                Err(error) => {
                    println!(env, "in ring: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            };
            let mut link = ChannelLink {
                env,
                channel: self.channel.as_mut(),
                signal: false,
            };
            self.session.on_host_message(&mut link, payload, now);
            signal |= link.signal;
        }
        signal
    }

    fn signal_host(&mut self, env: &mut dyn Env) {
        let request = synic::Request::SignalHost {
            connection_id: self.connection_id,
        };
        match IDS.synic_call.call(env, &request) {
            Ok(synic::Reply::Done) | Ok(synic::Reply::ChannelClosed) => {}
            other => println!(env, "SignalHost failed: {other:?}"),
        }
    }

    /// Have synic wake us when the start's pending request times out.
    fn keep_wakeup(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        let wanted = self.session.deadline_ns();
        match self
            .wakeup
            .keep(now, wanted, |request| IDS.synic_call.call(env, request))
        {
            None => {}
            Some(Ok(synic::Reply::NoTimer)) => println!(
                env,
                "synic has no timer: unanswered requests are not asked again"
            ),
            Some(other) => println!(env, "synic SetTimeout failed: {other:?}"),
        }
    }
}
