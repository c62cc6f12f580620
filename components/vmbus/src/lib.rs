//! `vmbus`: the VMBus bus manager.
//!
//! What it does:
//! - Negotiates the protocol version with the host, newest first (5.3 down
//!   to 2.4): InitiateContact goes to connection 4 from 5.0 on (with
//!   `msg_sint` 2) and to connection 1 before; InvalidConnectionId on
//!   connection 4 means an older host, so it tries the next version, as does
//!   a VersionResponse that refuses. Later messages go to the host's
//!   `msg_conn_id` (>= 5.0) or to connection 1.
//! - Requests offers and matches each offer's class (and instance, if the
//!   description pins one) to the classes of each `[[driver]]` (the
//!   generated `drivers::DRIVERS` table); unknown classes and
//!   sub-channels are logged and left alone (released if rescinded).
//! - Runs each VSC's channel: on the VSC's `bus::Request::Open` it builds
//!   the ring GPADL from the VSC's ring region (its row of `DRIVERS`: its
//!   guest physical address and size; GpadlHeader with up to 26 PFNs,
//!   GpadlBody with up to 28), waits for GpadlCreated, sends OpenChannel
//!   (downstream offset: the driver's `ring_out` bytes), waits for
//!   OpenChannelResult, binds
//!   relid -> VSC at synic and notifies the VSC. Close, rescind at any step,
//!   offers while running and Unload (then power-off) use the same
//!   reconciliation: every channel moves towards "open" or "closed" one
//!   confirmed step at a time, so a rescind or fault in the middle of any
//!   step fails the waiters and never frees a ring the host still holds.
//! - Supervises the VSCs: on a VSC's fault it unbinds its relid, closes the
//!   channel, tears the GPADL down, waits for GpadlTorndown, zeroes the
//!   rings and restarts the VSC, which opens again; after 3 faults within
//!   10 s it holds the VSC stopped and says so.
//! - Prints the status view (like Linux `lsvmbus`) once every offered device
//!   is open and after each later change, and serves it row by row
//!   (`bus::Request::Device`).
//!
//! What it trusts: synic (it copies slots out and forwards them whole) and
//! the runtime's fault reports. Nothing from the host: every message is
//! copied out of the queue, parsed by `vmbus-protocol` against the
//! negotiated version and checked against the transaction tables (the
//! outstanding InitiateContact, each channel's GPADL and open id, the
//! GPADL table); unknown or repeated responses are rejected and counted.
//! VSCs are trusted with nothing but their own channel.
//!
//! What it writes: messages to the host (through synic), the `synic`
//! bindings, its VSCs' ring regions (zeroed between lives), the console.
#![no_std]
#![forbid(unsafe_code)]

mod status;

use component_api::{
    println, Channel, ChannelSet, Child, Component, Env, Fault, Refusal, Region, RegionName,
};
use heapless::{Deque, Vec};
use vmbus_ipc::bus::{self, ChannelInfo, ChannelState, DeviceStatus};
use vmbus_ipc::{synic, Guid, MAX_POST_PAYLOAD};
use vmbus_protocol::gpadl::{CreationOutcome, GpadlMessages, GpadlState, GpadlTable};
use vmbus_protocol::messages::{
    CloseChannel, GpadlCreated, InitiateContact, OfferChannel, OpenChannel, RelIdReleased,
    RequestOffers, Unload, MAX_MESSAGE_SIZE,
};
use vmbus_protocol::version::{negotiation_order, VMBUS_MESSAGE_SINT};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

/// The ids generated from the system description (public for tests that
/// wire the component up by hand).
#[allow(clippy::type_complexity)] // the generated DEVICES table
pub mod ids {
    include!(concat!(env!("OUT_DIR"), "/ids.rs"));
}
use ids::*;

/// Offer 6.0 first? Not yet: its feature negotiation is not implemented.
pub const OFFER_6_0: bool = false;
/// The most VSCs one bus manager drives.
pub const MAX_DRIVERS: usize = 16;
/// Offers nobody drives that are remembered (to release them on rescind).
pub const MAX_UNCLAIMED: usize = 32;
/// Faults within [`FAULT_WINDOW_NS`] after which a VSC is held stopped.
pub const FAULTS_TO_HOLD: usize = 3;
pub const FAULT_WINDOW_NS: u64 = 10_000_000_000;
/// The largest ring region the bus manager describes in a GPADL.
pub const MAX_RING_PAGES: usize = 256;
/// Messages waiting for the host to take them (InsufficientBuffers).
const OUTBOX_SIZE: usize = 64;
/// Rejected host messages that are logged (the rest are only counted).
const REJECTIONS_LOGGED: u32 = 32;
/// Tries of InitiateContact while the host's port is full.
const CONTACT_TRIES: usize = 16;
const PAGE: usize = 4096;
const HV_STATUS_INVALID_CONNECTION_ID: u16 = 0x12;
const HV_STATUS_INSUFFICIENT_BUFFERS: u16 = 0x13;
/// OpenChannelResult/GpadlCreated-style status when the guest itself could
/// not proceed (no usable ring region, synic refused the binding).
pub const STATUS_GUEST_FAILURE: u32 = 0xC000_0001;

/// A driver's static wiring: its row of the generated `drivers::DRIVERS`
/// (from its `[[driver]]` stanza).
#[derive(Clone, Copy, Debug)]
struct Wiring {
    id: vmbus_ipc::DriverId,
    name: &'static str,
    /// (class, instance if only that one) GUIDs it drives.
    classes: &'static [(Guid, Option<Guid>)],
    child: Child,
    /// Our call end serving the VSC.
    call: Channel,
    /// Our notify end to the VSC.
    event: Channel,
    /// The VSC's ring region as we map it: out ring, then in ring.
    ring: Option<RegionName>,
    /// Bytes of the guest-to-host ring (the downstream offset).
    ring_out_bytes: usize,
}

/// An offer, copied out and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    relid: u32,
    connection_id: u32,
    class: Guid,
    instance: Guid,
    user_defined: Vec<u8, 120>,
}

/// One offered channel of a driver and how far it is towards open or closed.
#[derive(Clone, Debug)]
struct ChannelRecord {
    offer: Offer,
    /// The VSC wants it open (it asked, and nothing has closed it since).
    want_open: bool,
    user_data: Vec<u8, 120>,
    /// The ring GPADL, from GpadlHeader until GpadlTorndown.
    gpadl: Option<u32>,
    /// OpenChannel sent, result not yet received.
    open_pending: Option<u32>,
    /// The host considers the channel open.
    open: bool,
    /// synic routes its events to the VSC.
    bound: bool,
    /// The last open attempt failed with this status.
    failed: Option<u32>,
    rescinded: bool,
}

struct Driver {
    wiring: Wiring,
    channel: Option<ChannelRecord>,
    /// An offer for this driver that arrived while the previous channel was
    /// still being released.
    next_offer: Option<Offer>,
    /// The last channel ended by rescind (shown until a new offer).
    last_rescinded: bool,
    generation: u32,
    restarts: u32,
    fault_times: Deque<u64, FAULTS_TO_HOLD>,
    /// Faulted: its channel is being closed before the restart.
    recovering: bool,
    /// When the recovery completes, hold it stopped instead of restarting.
    hold_after_recovery: bool,
    held: bool,
    /// When the last fault happened (to report how long reopening took).
    faulted_at_ns: Option<u64>,
    /// A GPADL described the ring since it was last zeroed.
    ring_dirty: bool,
    versions: Option<((u16, u16), (u16, u16))>,
    /// What the VSC was last told (state, generation).
    published: Option<(ChannelState, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// InitiateContact for `order[index]` is outstanding.
    Negotiating {
        index: usize,
    },
    /// RequestOffers sent; offers arriving.
    RequestingOffers,
    /// AllOffersDelivered received.
    Running,
    /// Closing every channel before Unload.
    Unloading {
        unload_sent: bool,
    },
    Unloaded,
    /// Negotiation failed (no common version or the host is unreachable).
    Disconnected,
}

/// What the host sent that was refused, for the log and the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages: u32,
    pub rejected: u32,
    pub posts_deferred: u32,
    pub posts_failed: u32,
    /// Offers without a driver beyond what is remembered.
    pub offers_dropped: u32,
}

pub struct Vmbus {
    phase: Phase,
    version: Option<ProtocolVersion>,
    message_connection: u32,
    queue: Option<spsc_queue::Consumer>,
    drivers: Vec<Driver, MAX_DRIVERS>,
    unclaimed: Vec<Offer, MAX_UNCLAIMED>,
    gpadls: GpadlTable<MAX_DRIVERS>,
    next_open_id: u32,
    outbox: Deque<(u32, Vec<u8, MAX_POST_PAYLOAD>), OUTBOX_SIZE>,
    power_off_code: Option<u8>,
    counters: Counters,
    started_ns: u64,
    all_open_once: bool,
    status_dirty: bool,
    /// The status view has been printed at least once.
    view_printed: bool,
    state_changed_after_all_open: bool,
    /// Drivers whose channel a host message changed: reconciled once the
    /// whole batch of queued messages is read, so a rescind queued behind a
    /// reply is seen before acting on the reply.
    touched: u32,
}

fn uuid(guid: &Guid) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*guid)
}

fn to_payload(bytes: &[u8]) -> Option<Vec<u8, MAX_POST_PAYLOAD>> {
    Vec::from_slice(bytes).ok()
}

/// Why posting failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PostError {
    Hypercall(u16),
    Call(component_api::CallError),
    Unexpected,
}

fn post_now(env: &mut dyn Env, connection_id: u32, bytes: &[u8]) -> Result<(), PostError> {
    let Some(payload) = to_payload(bytes) else {
        return Err(PostError::Unexpected);
    };
    let request = synic::Request::PostMessage {
        connection_id,
        payload,
    };
    match channels::SYNIC_CALL.call(env, &request) {
        Ok(synic::Reply::Done) => Ok(()),
        Ok(synic::Reply::HypercallFailed { status }) => Err(PostError::Hypercall(status)),
        Ok(_) => Err(PostError::Unexpected),
        Err(error) => Err(PostError::Call(error)),
    }
}

impl Vmbus {
    fn build(env: &mut dyn Env) -> Vmbus {
        let mut drivers = Vec::new();
        for row in drivers::DRIVERS {
            let name = row.name;
            let driver = Driver {
                wiring: Wiring {
                    id: row.id,
                    name,
                    classes: row.classes,
                    child: row.child,
                    call: row.caller.channel(),
                    event: row.event,
                    ring: Some(row.ring),
                    ring_out_bytes: row.ring_out_bytes,
                },
                channel: None,
                next_offer: None,
                last_rescinded: false,
                generation: 0,
                restarts: 0,
                fault_times: Deque::new(),
                recovering: false,
                hold_after_recovery: false,
                held: false,
                faulted_at_ns: None,
                ring_dirty: false,
                versions: None,
                published: None,
            };
            if drivers.push(driver).is_err() {
                println!(env, "more than {} drivers: {} ignored", MAX_DRIVERS, name);
            }
        }
        let queue = match spsc_queue::Consumer::new(
            env.region(regions::SYNIC_MESSAGES),
            vmbus_ipc::MESSAGE_QUEUE_SLOT,
        ) {
            Ok(queue) => Some(queue),
            Err(error) => {
                println!(env, "synic_messages cannot hold the queue: {:?}", error);
                None
            }
        };
        let started_ns = env.now_ns();
        Vmbus {
            phase: Phase::Disconnected,
            version: None,
            message_connection: 0,
            queue,
            drivers,
            unclaimed: Vec::new(),
            gpadls: GpadlTable::new(1),
            next_open_id: 1,
            outbox: Deque::new(),
            power_off_code: None,
            counters: Counters::default(),
            started_ns,
            all_open_once: false,
            status_dirty: false,
            touched: 0,
            view_printed: false,
            state_changed_after_all_open: false,
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn reject(&mut self, env: &mut dyn Env, why: core::fmt::Arguments<'_>) {
        self.counters.rejected = self.counters.rejected.wrapping_add(1);
        if self.counters.rejected <= REJECTIONS_LOGGED {
            println!(env, "rejected from host: {}", why);
        } else if self.counters.rejected == REJECTIONS_LOGGED + 1 {
            println!(env, "rejected from host: (further rejections only counted)");
        }
    }

    // ---- posting ----

    /// Queue a message for the host and try to send everything queued.
    fn post(&mut self, env: &mut dyn Env, connection_id: u32, bytes: &[u8]) {
        let Some(payload) = to_payload(bytes) else {
            println!(
                env,
                "a message of {} bytes does not fit a post",
                bytes.len()
            );
            return;
        };
        if self.outbox.push_back((connection_id, payload)).is_err() {
            println!(env, "outbox full: message type {} dropped", bytes[0]);
            self.counters.posts_failed = self.counters.posts_failed.wrapping_add(1);
            return;
        }
        self.flush_outbox(env);
    }

    fn post_control(&mut self, env: &mut dyn Env, bytes: &[u8]) {
        let connection = self.message_connection;
        self.post(env, connection, bytes);
    }

    /// Send queued messages in order; stop at InsufficientBuffers (the host
    /// drains its port and answers, and the next event retries).
    fn flush_outbox(&mut self, env: &mut dyn Env) {
        while let Some((connection_id, payload)) = self.outbox.front() {
            let connection_id = *connection_id;
            let payload = payload.clone();
            match post_now(env, connection_id, &payload) {
                Ok(()) => {}
                Err(PostError::Hypercall(HV_STATUS_INSUFFICIENT_BUFFERS)) => {
                    self.counters.posts_deferred = self.counters.posts_deferred.wrapping_add(1);
                    return;
                }
                Err(error) => {
                    self.counters.posts_failed = self.counters.posts_failed.wrapping_add(1);
                    println!(
                        env,
                        "posting message type {} to connection {} failed: {:?}",
                        payload.first().copied().unwrap_or(0),
                        connection_id,
                        error
                    );
                }
            }
            self.outbox.pop_front();
        }
    }

    // ---- negotiation ----

    /// Offer `order[index]`, falling back past versions whose connection the
    /// host does not have.
    fn negotiate_from(&mut self, env: &mut dyn Env, mut index: usize) {
        let order = negotiation_order(OFFER_6_0);
        let monitor = env.region(regions::MONITOR_PAGES);
        let monitor_gpa = monitor.guest_physical().unwrap_or(0);
        while let Some(&version) = order.get(index) {
            let mut contact = InitiateContact::empty();
            contact.version_requested = version.0.into();
            contact.target_vcpu = 0.into();
            contact.interrupt_page_or_target_info = if version.uses_message_sint() {
                InitiateContact::target_info(VMBUS_MESSAGE_SINT, 0, 0)
            } else {
                // The interrupt page of pre-2.4 signalling; unused from 2.4.
                0
            }
            .into();
            contact.monitor_page1 = monitor_gpa.into();
            contact.monitor_page2 = if monitor_gpa == 0 {
                0
            } else {
                monitor_gpa + PAGE as u64
            }
            .into();
            let connection = version.initiate_contact_connection_id();
            let mut result = post_now(env, connection, contact.as_bytes());
            for _ in 1..CONTACT_TRIES {
                if result != Err(PostError::Hypercall(HV_STATUS_INSUFFICIENT_BUFFERS)) {
                    break;
                }
                result = post_now(env, connection, contact.as_bytes());
            }
            match result {
                Ok(()) => {
                    self.phase = Phase::Negotiating { index };
                    return;
                }
                Err(PostError::Hypercall(HV_STATUS_INVALID_CONNECTION_ID))
                    if version.uses_message_sint() =>
                {
                    println!(
                        env,
                        "VMBus {}: connection {} unknown to the host (older host), trying {}",
                        version,
                        connection,
                        order.get(index + 1).map_or(ProtocolVersion(0), |v| *v)
                    );
                    index += 1;
                }
                Err(error) => {
                    println!(env, "InitiateContact {} failed: {:?}", version, error);
                    self.phase = Phase::Disconnected;
                    return;
                }
            }
        }
        println!(
            env,
            "no VMBus version in common with the host: bus disconnected"
        );
        self.phase = Phase::Disconnected;
    }

    fn on_version_response(&mut self, env: &mut dyn Env, supported: bool, msg_conn_id: u32) {
        let Phase::Negotiating { index } = self.phase else {
            self.reject(env, format_args!("VersionResponse without InitiateContact"));
            return;
        };
        let order = negotiation_order(OFFER_6_0);
        let version = order[index];
        if !supported {
            println!(env, "VMBus {} refused by the host", version);
            self.negotiate_from(env, index + 1);
            return;
        }
        self.version = Some(version);
        self.message_connection = version.message_connection_id(msg_conn_id);
        println!(
            env,
            "VMBus {} negotiated; control messages to connection {}",
            version,
            self.message_connection
        );
        self.phase = Phase::RequestingOffers;
        self.post_control(env, RequestOffers::empty().as_bytes());
        self.status_dirty = true;
    }

    // ---- host messages ----

    fn drain_queue(&mut self, env: &mut dyn Env) {
        let mut slot = [0u8; vmbus_ipc::MESSAGE_QUEUE_SLOT];
        loop {
            let Some(queue) = self.queue.as_mut() else {
                return;
            };
            match queue.pop(&mut slot) {
                Ok(Some(len)) => {
                    let copy = slot;
                    self.on_slot(env, &copy[..len]);
                }
                Ok(None) => match queue.prepare_to_sleep() {
                    Ok(true) | Err(_) => break,
                    Ok(false) => continue,
                },
                Err(error) => {
                    println!(env, "synic message queue corrupt: {:?}", error);
                    break;
                }
            }
        }
        if let Some(queue) = self.queue.as_mut() {
            if queue.producer_needs_signal() {
                env.notify(channels::SYNIC);
            }
        }
        let touched = core::mem::take(&mut self.touched);
        for d in 0..self.drivers.len() {
            if touched & (1 << d) != 0 {
                self.reconcile(env, d);
            }
        }
    }

    fn touch(&mut self, d: usize) {
        self.touched |= 1 << d;
    }

    /// One synic message slot (256 bytes) as synic copied it.
    fn on_slot(&mut self, env: &mut dyn Env, slot: &[u8]) {
        self.counters.messages = self.counters.messages.wrapping_add(1);
        if slot.len() != vmbus_ipc::MESSAGE_SLOT_BYTES {
            self.reject(env, format_args!("slot of {} bytes", slot.len()));
            return;
        }
        let kind = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
        let size = slot[4] as usize;
        if kind != hyperv_defs::message_type::VMBUS || size > MAX_MESSAGE_SIZE {
            self.reject(env, format_args!("slot type {:#x} size {}", kind, size));
            return;
        }
        let payload = &slot[16..16 + size];
        let parse_version = match self.phase {
            Phase::Negotiating { index } => negotiation_order(OFFER_6_0)[index],
            _ => match self.version {
                Some(version) => version,
                None => {
                    self.reject(env, format_args!("message before negotiation"));
                    return;
                }
            },
        };
        match parse(payload, parse_version) {
            Ok(message) => self.on_message(env, message),
            Err(error) => self.reject(env, format_args!("{}", error)),
        }
    }

    fn on_message(&mut self, env: &mut dyn Env, message: ChannelMessage) {
        match message {
            ChannelMessage::VersionResponse(response) => self.on_version_response(
                env,
                response.version_supported != 0,
                response.msg_conn_id.get(),
            ),
            ChannelMessage::VersionResponse2(response) => self.on_version_response(
                env,
                response.version_supported != 0,
                response.msg_conn_id.get(),
            ),
            ChannelMessage::OfferChannel(offer) => self.on_offer(env, &offer),
            ChannelMessage::AllOffersDelivered(_) => {
                if self.phase == Phase::RequestingOffers {
                    self.phase = Phase::Running;
                    let claimed = self.drivers.iter().filter(|d| d.channel.is_some()).count();
                    println!(
                        env,
                        "all offers delivered: {} with a driver, {} left alone",
                        claimed,
                        self.unclaimed.len()
                    );
                    self.status_dirty = true;
                } else {
                    let phase = self.phase;
                    self.reject(env, format_args!("AllOffersDelivered while {:?}", phase));
                }
            }
            ChannelMessage::RescindChannelOffer(rescind) => {
                self.on_rescind(env, rescind.child_relid.get())
            }
            ChannelMessage::GpadlCreated(created) => self.on_gpadl_created(env, &created),
            ChannelMessage::OpenChannelResult(result) => self.on_open_result(
                env,
                result.child_relid.get(),
                result.open_id.get(),
                result.status.get(),
            ),
            ChannelMessage::GpadlTorndown(torndown) => match self.gpadls.on_torndown(&torndown) {
                Ok(_) => {
                    let id = torndown.gpadl_id.get();
                    if let Some(d) = self.driver_with_gpadl(id) {
                        if let Some(channel) = self.drivers[d].channel.as_mut() {
                            channel.gpadl = None;
                        }
                        self.touch(d);
                    }
                }
                Err(error) => self.reject(env, format_args!("GpadlTorndown: {:?}", error)),
            },
            ChannelMessage::UnloadResponse(_) => {
                if self.phase == (Phase::Unloading { unload_sent: true }) {
                    self.phase = Phase::Unloaded;
                    match self.power_off_code {
                        Some(code) => {
                            println!(env, "VMBus unloaded; powering off with code {}", code);
                            env.power_off(code);
                        }
                        None => println!(env, "VMBus unloaded"),
                    }
                } else {
                    self.reject(env, format_args!("UnloadResponse without Unload"));
                }
            }
            other => self.reject(env, format_args!("unexpected {:?}", MessageName(&other))),
        }
    }

    fn relid_in_use(&self, relid: u32) -> bool {
        self.unclaimed.iter().any(|o| o.relid == relid)
            || self.drivers.iter().any(|d| {
                d.channel.as_ref().is_some_and(|c| c.offer.relid == relid)
                    || d.next_offer.as_ref().is_some_and(|o| o.relid == relid)
            })
    }

    fn on_offer(&mut self, env: &mut dyn Env, message: &OfferChannel) {
        if !matches!(
            self.phase,
            Phase::RequestingOffers | Phase::Running | Phase::Unloading { .. }
        ) {
            let phase = self.phase;
            self.reject(env, format_args!("offer while {:?}", phase));
            return;
        }
        let relid = message.child_relid.get();
        // Event flags are numbered by relid: 1..2047.
        if relid == 0 || relid >= hyperv_defs::EVENT_FLAGS_PER_SINT as u32 {
            self.reject(env, format_args!("offer with relid {}", relid));
            return;
        }
        if self.relid_in_use(relid) {
            self.reject(env, format_args!("second offer of relid {}", relid));
            return;
        }
        let offer = Offer {
            relid,
            connection_id: message.connection_id.get(),
            class: *message.interface_type.to_uuid().as_bytes(),
            instance: *message.interface_instance.to_uuid().as_bytes(),
            user_defined: Vec::from_slice(&message.user_def).unwrap_or_default(),
        };
        let class_name =
            vmbus_protocol::guid::class::name_of(uuid(&offer.class)).unwrap_or("unknown class");
        let sub_channel = message.sub_channel_index.get() != 0;
        let candidate = self.drivers.iter().position(|d| {
            d.wiring.classes.iter().any(|(class, instance)| {
                *class == offer.class && instance.is_none_or(|i| i == offer.instance)
            })
        });
        let unloading = matches!(self.phase, Phase::Unloading { .. });
        match candidate {
            Some(d)
                if !sub_channel
                    && !unloading
                    && !self.drivers[d].held
                    && self.drivers[d].next_offer.is_none() =>
            {
                let driver = &mut self.drivers[d];
                println!(
                    env,
                    "offer relid {}: {} {} -> {}",
                    relid,
                    class_name,
                    uuid(&offer.instance),
                    driver.wiring.name
                );
                if driver.channel.is_some() {
                    // The previous channel is still being released (rescinded):
                    // this offer waits for it.
                    if driver.channel.as_ref().is_some_and(|c| c.rescinded) {
                        driver.next_offer = Some(offer);
                    } else {
                        println!(
                            env,
                            "  {} already drives relid {}: offer left alone",
                            driver.wiring.name,
                            driver.channel.as_ref().map_or(0, |c| c.offer.relid)
                        );
                        self.leave_alone(env, offer);
                    }
                    return;
                }
                self.adopt(d, offer);
            }
            _ if self.unclaimed.is_full() => {
                // A host offering without end: no more log lines or memory.
                self.counters.offers_dropped = self.counters.offers_dropped.wrapping_add(1);
            }
            _ => {
                println!(
                    env,
                    "offer relid {}: {} {} (class {}){}: left alone",
                    relid,
                    class_name,
                    uuid(&offer.instance),
                    uuid(&offer.class),
                    if sub_channel {
                        " sub-channel"
                    } else if candidate.is_some() {
                        " driver unavailable"
                    } else {
                        " no driver"
                    }
                );
                self.leave_alone(env, offer);
            }
        }
    }

    fn leave_alone(&mut self, env: &mut dyn Env, offer: Offer) {
        let relid = offer.relid;
        if self.unclaimed.push(offer).is_err() {
            self.counters.offers_dropped = self.counters.offers_dropped.wrapping_add(1);
            println!(
                env,
                "{} offers without a driver: relid {} and later ones forgotten",
                MAX_UNCLAIMED,
                relid
            );
        }
        self.status_dirty = true;
    }

    fn adopt(&mut self, d: usize, offer: Offer) {
        let driver = &mut self.drivers[d];
        driver.channel = Some(ChannelRecord {
            offer,
            want_open: false,
            user_data: Vec::new(),
            gpadl: None,
            open_pending: None,
            open: false,
            bound: false,
            failed: None,
            rescinded: false,
        });
        driver.last_rescinded = false;
        driver.generation = driver.generation.wrapping_add(1);
        driver.versions = None;
        self.status_dirty = true;
    }

    fn driver_with_relid(&self, relid: u32) -> Option<usize> {
        self.drivers
            .iter()
            .position(|d| d.channel.as_ref().is_some_and(|c| c.offer.relid == relid))
    }

    fn driver_with_gpadl(&self, gpadl_id: u32) -> Option<usize> {
        self.drivers.iter().position(|d| {
            d.channel
                .as_ref()
                .is_some_and(|c| c.gpadl == Some(gpadl_id))
        })
    }

    fn on_rescind(&mut self, env: &mut dyn Env, relid: u32) {
        if let Some(position) = self.unclaimed.iter().position(|o| o.relid == relid) {
            self.unclaimed.swap_remove(position);
            println!(env, "relid {} (no driver) rescinded and released", relid);
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            self.status_dirty = true;
            return;
        }
        if let Some(d) = self
            .drivers
            .iter()
            .position(|d| d.next_offer.as_ref().is_some_and(|o| o.relid == relid))
        {
            // Never adopted: nothing to undo.
            self.drivers[d].next_offer = None;
            println!(
                env,
                "relid {} rescinded before {} took it; released",
                relid,
                self.drivers[d].wiring.name
            );
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            return;
        }
        let Some(d) = self.driver_with_relid(relid) else {
            self.reject(env, format_args!("rescind of unknown relid {}", relid));
            return;
        };
        let name = self.drivers[d].wiring.name;
        let Some(channel) = self.drivers[d].channel.as_mut() else {
            return;
        };
        if channel.rescinded {
            self.reject(env, format_args!("second rescind of relid {}", relid));
            return;
        }
        channel.rescinded = true;
        // Fail the waiters: the host answers nothing more for this relid
        // except GpadlTorndown for a GPADL it created.
        if channel.open_pending.take().is_some() {
            println!(env, "relid {} ({}) rescinded while opening", relid, name);
            end_opening(env, relid);
        } else {
            println!(env, "relid {} ({}) rescinded", relid, name);
        }
        if let Some(id) = channel.gpadl {
            if self.gpadls.state(id) == Some(GpadlState::Creating) {
                // The host dropped it with the channel: retire the id so a
                // late GpadlCreated is refused as unknown.
                let mut retire = GpadlCreated::empty();
                retire.child_relid = relid.into();
                retire.gpadl_id = id.into();
                retire.creation_status = STATUS_GUEST_FAILURE.into();
                let _ = self.gpadls.on_created(&retire);
                channel.gpadl = None;
            }
        }
        self.touch(d);
    }

    fn on_gpadl_created(&mut self, env: &mut dyn Env, created: &GpadlCreated) {
        let id = created.gpadl_id.get();
        match self.gpadls.on_created(created) {
            Ok(CreationOutcome::Created) => {
                if let Some(d) = self.driver_with_gpadl(id) {
                    self.touch(d);
                }
            }
            Ok(CreationOutcome::Failed { status }) => {
                if let Some(d) = self.driver_with_gpadl(id) {
                    println!(
                        env,
                        "{}: GPADL refused by the host (status {:#x})",
                        self.drivers[d].wiring.name,
                        status
                    );
                    if let Some(channel) = self.drivers[d].channel.as_mut() {
                        channel.gpadl = None;
                        if channel.want_open {
                            channel.failed = Some(status);
                        }
                    }
                    self.touch(d);
                }
            }
            Err(error) => self.reject(env, format_args!("GpadlCreated: {:?}", error)),
        }
    }

    fn on_open_result(&mut self, env: &mut dyn Env, relid: u32, open_id: u32, status: u32) {
        let d = self.drivers.iter().position(|d| {
            d.channel
                .as_ref()
                .is_some_and(|c| c.offer.relid == relid && c.open_pending == Some(open_id))
        });
        let Some(d) = d else {
            self.reject(
                env,
                format_args!(
                    "OpenChannelResult for relid {} open id {} nobody waits for",
                    relid, open_id
                ),
            );
            return;
        };
        let name = self.drivers[d].wiring.name;
        if let Some(channel) = self.drivers[d].channel.as_mut() {
            channel.open_pending = None;
            if status == 0 {
                channel.open = true;
            } else {
                println!(
                    env,
                    "{}: OpenChannel of relid {} failed (status {:#x})", name, relid, status
                );
                if channel.want_open {
                    channel.failed = Some(status);
                }
                end_opening(env, relid);
            }
        }
        self.touch(d);
    }

    // ---- the channel engine ----

    /// Move driver `d`'s channel one confirmed step at a time towards its
    /// goal (open, or closed and released), until it must wait for the host.
    fn reconcile(&mut self, env: &mut dyn Env, d: usize) {
        for _ in 0..16 {
            match self.step(env, d) {
                Step::Again => continue,
                Step::Wait => break,
            }
        }
        self.maybe_unload(env);
    }

    fn step(&mut self, env: &mut dyn Env, d: usize) -> Step {
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        let recovering = self.drivers[d].recovering;
        let Some(channel) = self.drivers[d].channel.as_ref() else {
            if recovering {
                self.finish_recovery(env, d);
            }
            return Step::Wait;
        };
        let relid = channel.offer.relid;
        let goal_open = channel.want_open
            && channel.failed.is_none()
            && !channel.rescinded
            && !recovering
            && !unloading;
        if goal_open {
            let Some(gpadl_id) = channel.gpadl else {
                return self.create_ring_gpadl(env, d);
            };
            match self.gpadls.state(gpadl_id) {
                Some(GpadlState::Created) => {}
                Some(_) => return Step::Wait,
                None => {
                    self.channel_mut(d).gpadl = None;
                    return Step::Again;
                }
            }
            if !channel.open {
                if channel.open_pending.is_none() {
                    self.send_open(env, d, gpadl_id);
                }
                return Step::Wait;
            }
            if !channel.bound {
                return self.bind(env, d);
            }
            return Step::Wait;
        }
        // Closing: undo in reverse order, each step confirmed.
        if channel.bound {
            let unbind = synic::Request::Unbind { relid };
            if let Err(error) = channels::SYNIC_CALL.call(env, &unbind) {
                println!(env, "unbinding relid {} failed: {:?}", relid, error);
            }
            self.channel_mut(d).bound = false;
            return Step::Again;
        }
        if channel.open_pending.is_some() {
            // The result decides whether there is anything to close.
            return Step::Wait;
        }
        if channel.open {
            if !channel.rescinded {
                let mut close = CloseChannel::empty();
                close.child_relid = relid.into();
                self.post_control(env, close.as_bytes());
            }
            self.channel_mut(d).open = false;
            return Step::Again;
        }
        if let Some(gpadl_id) = channel.gpadl {
            match self.gpadls.state(gpadl_id) {
                Some(GpadlState::Created) => {
                    match self.gpadls.begin_teardown(gpadl_id) {
                        Ok(teardown) => self.post_control(env, teardown.as_bytes()),
                        Err(error) => println!(env, "GPADL {} teardown: {:?}", gpadl_id, error),
                    }
                    return Step::Wait;
                }
                Some(_) => return Step::Wait,
                None => {
                    self.channel_mut(d).gpadl = None;
                    return Step::Again;
                }
            }
        }
        // Quiescent: the host holds nothing of this channel any more.
        if self.drivers[d].ring_dirty {
            self.zero_ring(env, d);
        }
        if self.channel_mut(d).rescinded {
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            println!(env, "relid {} released", relid);
            let driver = &mut self.drivers[d];
            driver.channel = None;
            driver.last_rescinded = true;
            if let Some(offer) = driver.next_offer.take() {
                self.adopt(d, offer);
            }
            return Step::Again;
        }
        if recovering {
            self.finish_recovery(env, d);
            return Step::Again;
        }
        Step::Wait
    }

    fn channel_mut(&mut self, d: usize) -> &mut ChannelRecord {
        self.drivers[d]
            .channel
            .as_mut()
            .expect("only called while the driver has a channel")
    }

    fn create_ring_gpadl(&mut self, env: &mut dyn Env, d: usize) -> Step {
        let wiring = self.drivers[d].wiring;
        let relid = self.channel_mut(d).offer.relid;
        let ring = wiring.ring.map(|r| env.region(r));
        let Some((ring_gpa, ring_len)) = ring.and_then(|r| Some((r.guest_physical()?, r.len())))
        else {
            println!(env, "{}: its ring region is not host visible", wiring.name);
            self.channel_mut(d).failed = Some(STATUS_GUEST_FAILURE);
            return Step::Again;
        };
        let pages = ring_len / PAGE;
        if !ring_gpa.is_multiple_of(PAGE as u64)
            || !ring_len.is_multiple_of(PAGE)
            || !(4..=MAX_RING_PAGES).contains(&pages)
        {
            println!(
                env,
                "{}: ring region of {} bytes at {:#x} unusable", wiring.name, ring_len, ring_gpa
            );
            self.channel_mut(d).failed = Some(STATUS_GUEST_FAILURE);
            return Step::Again;
        }
        let mut pfns: Vec<u64, MAX_RING_PAGES> = Vec::new();
        for page in 0..pages {
            let _ = pfns.push((ring_gpa >> 12) + page as u64);
        }
        let gpadl_id = match self.gpadls.allocate(relid) {
            Ok(id) => id,
            Err(error) => {
                println!(env, "{}: no GPADL id: {:?}", wiring.name, error);
                self.channel_mut(d).failed = Some(STATUS_GUEST_FAILURE);
                return Step::Again;
            }
        };
        let messages = match GpadlMessages::for_pages(relid, gpadl_id, &pfns) {
            Ok(messages) => messages,
            Err(error) => {
                println!(env, "{}: GPADL: {:?}", wiring.name, error);
                self.channel_mut(d).failed = Some(STATUS_GUEST_FAILURE);
                return Step::Again;
            }
        };
        self.channel_mut(d).gpadl = Some(gpadl_id);
        self.drivers[d].ring_dirty = true;
        for message in messages {
            self.post_control(env, message.as_bytes());
        }
        Step::Wait
    }

    fn send_open(&mut self, env: &mut dyn Env, d: usize, gpadl_id: u32) {
        let ring_len = self.drivers[d]
            .wiring
            .ring
            .map_or(0, |r| env.region(r).len());
        let out_bytes = self.drivers[d].wiring.ring_out_bytes.min(ring_len);
        let open_id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1).max(1);
        let channel = self.channel_mut(d);
        let mut open = OpenChannel::empty();
        open.child_relid = channel.offer.relid.into();
        open.open_id = open_id.into();
        open.ring_gpadl_id = gpadl_id.into();
        open.target_vp = 0.into();
        open.downstream_ring_page_offset = ((out_bytes / PAGE) as u32).into();
        open.user_data[..channel.user_data.len()].copy_from_slice(&channel.user_data);
        channel.open_pending = Some(open_id);
        let relid = channel.offer.relid;
        // The host may signal the channel before its OpenResult: synic
        // then knows those events are early, not stray.
        let opening = synic::Request::Opening { relid };
        if let Err(error) = channels::SYNIC_CALL.call(env, &opening) {
            println!(
                env,
                "telling synic relid {} opens failed: {:?}", relid, error
            );
        }
        self.post_control(env, open.as_bytes());
    }

    fn bind(&mut self, env: &mut dyn Env, d: usize) -> Step {
        let name = self.drivers[d].wiring.name;
        let channel = self.channel_mut(d);
        let (relid, connection_id) = (channel.offer.relid, channel.offer.connection_id);
        let request = synic::Request::Bind {
            relid,
            connection_id,
            driver: self.drivers[d].wiring.id,
        };
        match channels::SYNIC_CALL.call(env, &request) {
            Ok(synic::Reply::Done) => {
                self.channel_mut(d).bound = true;
                let now = env.now_ns();
                match self.drivers[d].faulted_at_ns.take() {
                    Some(at) => println!(
                        env,
                        "relid {} ({}) open again {} ms after its fault",
                        relid,
                        name,
                        now.saturating_sub(at) / 1_000_000
                    ),
                    None => println!(env, "relid {} ({}) open", relid, name),
                }
                self.drivers[d].generation = self.drivers[d].generation.wrapping_add(1);
                Step::Wait
            }
            other => {
                println!(
                    env,
                    "synic refused to bind relid {} to {}: {:?}", relid, name, other
                );
                self.channel_mut(d).failed = Some(STATUS_GUEST_FAILURE);
                Step::Again
            }
        }
    }

    fn zero_ring(&mut self, env: &mut dyn Env, d: usize) {
        if let Some(ring) = self.drivers[d].wiring.ring {
            clear(env.region(ring));
        }
        self.drivers[d].ring_dirty = false;
    }

    // ---- supervision ----

    fn on_fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        let Some(d) = self.drivers.iter().position(|d| d.wiring.child == child) else {
            println!(env, "fault of a child that drives nothing: {:?}", fault);
            return;
        };
        let now = env.now_ns();
        let driver = &mut self.drivers[d];
        if driver.held || driver.recovering {
            return;
        }
        if driver.fault_times.is_full() {
            driver.fault_times.pop_front();
        }
        let _ = driver.fault_times.push_back(now);
        let hold = driver.fault_times.is_full()
            && driver
                .fault_times
                .front()
                .is_some_and(|first| now.saturating_sub(*first) <= FAULT_WINDOW_NS);
        driver.recovering = true;
        driver.hold_after_recovery = hold;
        driver.faulted_at_ns = Some(now);
        let relid = driver.channel.as_ref().map(|c| c.offer.relid);
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
        }
        match relid {
            Some(relid) => println!(
                env,
                "{} faulted ({:?}): recovering relid {}", driver.wiring.name, fault, relid
            ),
            None => println!(env, "{} faulted ({:?})", driver.wiring.name, fault),
        }
        self.status_dirty = true;
        self.reconcile(env, d);
    }

    fn finish_recovery(&mut self, env: &mut dyn Env, d: usize) {
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        let driver = &mut self.drivers[d];
        driver.recovering = false;
        // Whatever the old life left in the rings goes (no GPADL holds them).
        if let Some(ring) = driver.wiring.ring {
            clear(env.region(ring));
        }
        driver.ring_dirty = false;
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
            channel.failed = None;
        }
        let name = driver.wiring.name;
        let child = driver.wiring.child;
        if driver.hold_after_recovery {
            driver.held = true;
            driver.faulted_at_ns = None;
            let _ = env.stop(child);
            println!(
                env,
                "{} held stopped: {} faults within {} s",
                name,
                FAULTS_TO_HOLD,
                FAULT_WINDOW_NS / 1_000_000_000
            );
        } else if unloading {
            println!(env, "{} not restarted: the bus is unloading", name);
        } else {
            match env.restart(child) {
                Ok(()) => {
                    let driver = &mut self.drivers[d];
                    driver.restarts = driver.restarts.wrapping_add(1);
                    println!(
                        env,
                        "{} restarted (restart {})", name, self.drivers[d].restarts
                    );
                }
                Err(error) => println!(env, "{} could not be restarted: {:?}", name, error),
            }
        }
        self.status_dirty = true;
    }

    // ---- unload ----

    fn start_unload(&mut self, env: &mut dyn Env, power_off_code: Option<u8>) {
        self.power_off_code = power_off_code;
        match self.phase {
            Phase::RequestingOffers | Phase::Running => {
                println!(env, "unloading VMBus");
                self.phase = Phase::Unloading { unload_sent: false };
                for d in 0..self.drivers.len() {
                    self.reconcile(env, d);
                }
                self.maybe_unload(env);
            }
            Phase::Negotiating { .. } | Phase::Disconnected => {
                // Nothing to unload from the host.
                self.phase = Phase::Unloaded;
                if let Some(code) = power_off_code {
                    println!(env, "VMBus not connected; powering off with code {}", code);
                    env.power_off(code);
                }
            }
            Phase::Unloading { .. } | Phase::Unloaded => {}
        }
    }

    fn maybe_unload(&mut self, env: &mut dyn Env) {
        if self.phase != (Phase::Unloading { unload_sent: false }) {
            return;
        }
        let busy = self.drivers.iter().any(|d| {
            d.channel
                .as_ref()
                .is_some_and(|c| c.open || c.open_pending.is_some() || c.gpadl.is_some() || c.bound)
        });
        if busy || !self.gpadls.is_empty() {
            return;
        }
        self.phase = Phase::Unloading { unload_sent: true };
        self.post_control(env, Unload::empty().as_bytes());
    }

    // ---- what VSCs and clients see ----

    fn presented(&self, d: usize) -> ChannelState {
        let driver = &self.drivers[d];
        if driver.held {
            return ChannelState::Held;
        }
        let Some(channel) = driver.channel.as_ref() else {
            return if driver.last_rescinded {
                ChannelState::Rescinded
            } else {
                ChannelState::NotOffered
            };
        };
        if channel.rescinded {
            return ChannelState::Rescinded;
        }
        let busy = channel.open || channel.open_pending.is_some() || channel.gpadl.is_some();
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        if driver.recovering {
            return ChannelState::Closing;
        }
        if channel.want_open && channel.failed.is_none() && !unloading {
            return if channel.open && channel.bound {
                ChannelState::Open
            } else {
                ChannelState::Opening
            };
        }
        if busy {
            return ChannelState::Closing;
        }
        match channel.failed {
            Some(status) => ChannelState::Failed { status },
            None => ChannelState::Offered,
        }
    }

    fn channel_info(&self, d: usize) -> ChannelInfo {
        let driver = &self.drivers[d];
        let channel = driver.channel.as_ref();
        ChannelInfo {
            state: self.presented(d),
            class: channel.map_or(
                driver
                    .wiring
                    .classes
                    .first()
                    .map_or([0; 16], |(class, _)| *class),
                |c| c.offer.class,
            ),
            instance: channel.map_or([0; 16], |c| c.offer.instance),
            relid: channel.map_or(0, |c| c.offer.relid),
            connection_id: channel.map_or(0, |c| c.offer.connection_id),
            user_defined: channel
                .map(|c| c.offer.user_defined.clone())
                .unwrap_or_default(),
            vmbus_version: self.version.map_or(0, |v| v.0),
            generation: driver.generation,
        }
    }

    fn device_status(&self, index: usize) -> Option<DeviceStatus> {
        if let Some(driver) = self.drivers.get(index) {
            let info = self.channel_info(index);
            let (framework, message) = driver.versions.unwrap_or(((0, 0), (0, 0)));
            return Some(DeviceStatus {
                driver: heapless::String::try_from(driver.wiring.name).unwrap_or_default(),
                class: info.class,
                instance: info.instance,
                relid: info.relid,
                state: info.state,
                vmbus_version: info.vmbus_version,
                framework_version: framework,
                message_version: message,
                restarts: driver.restarts,
            });
        }
        let offer = self.unclaimed.get(index - self.drivers.len())?;
        Some(DeviceStatus {
            driver: heapless::String::try_from("-").unwrap_or_default(),
            class: offer.class,
            instance: offer.instance,
            relid: offer.relid,
            state: ChannelState::Offered,
            vmbus_version: self.version.map_or(0, |v| v.0),
            framework_version: (0, 0),
            message_version: (0, 0),
            restarts: 0,
        })
    }

    fn device_count(&self) -> usize {
        self.drivers.len() + self.unclaimed.len()
    }

    /// Tell each VSC whose view changed, then print the status view if it is
    /// worth printing: once every offered device is open, and after that
    /// whenever something changed and no channel is mid-transition.
    fn publish(&mut self, env: &mut dyn Env) {
        for d in 0..self.drivers.len() {
            let view = (self.presented(d), self.drivers[d].generation);
            if self.drivers[d].published != Some(view) {
                self.drivers[d].published = Some(view);
                env.notify(self.drivers[d].wiring.event);
                self.status_dirty = true;
                if self.all_open_once {
                    self.state_changed_after_all_open = true;
                }
            }
        }
        if !self.status_dirty {
            return;
        }
        let states = || (0..self.drivers.len()).map(|d| self.presented(d));
        let settled = states().all(|s| !matches!(s, ChannelState::Opening | ChannelState::Closing));
        let offered = self.drivers.iter().filter(|d| d.channel.is_some()).count();
        let all_open = self.phase == Phase::Running
            && offered > 0
            && (0..self.drivers.len()).all(|d| {
                self.drivers[d].channel.is_none() || self.presented(d) == ChannelState::Open
            });
        if all_open && !self.all_open_once {
            self.all_open_once = true;
            let elapsed = env.now_ns().saturating_sub(self.started_ns);
            println!(
                env,
                "all {} offered devices open {} ms after vmbus started",
                offered,
                elapsed / 1_000_000
            );
        }
        // The first view waits for the VSCs' version reports (they follow
        // the open within moments) unless a channel changes state first.
        let versions_known = (0..self.drivers.len())
            .all(|d| self.presented(d) != ChannelState::Open || self.drivers[d].versions.is_some());
        let worth_printing =
            self.view_printed || versions_known || self.state_changed_after_all_open;
        if settled && self.all_open_once && worth_printing {
            self.view_printed = true;
            self.status_dirty = false;
            self.print_status(env);
        }
    }

    fn print_status(&self, env: &mut dyn Env) {
        let rows = (0..self.device_count()).filter_map(|i| self.device_status(i));
        status::print(env, self.version, rows);
        if let Ok(synic::Reply::Status(counters)) =
            channels::SYNIC_CALL.call(env, &synic::Request::Status)
        {
            println!(
                env,
                "synic: {} messages in, {} posted, {} channel events ({} before open), {} signals ({} refused, {} after close), {} stray events",
                counters.messages_received,
                counters.messages_posted,
                counters.events_delivered,
                counters.early_events,
                counters.signals_sent,
                counters.signals_refused,
                counters.signals_after_unbind,
                counters.stray_events
            );
        }
        println!(
            env,
            "vmbus: {} host messages, {} rejected", self.counters.messages, self.counters.rejected
        );
    }

    fn serve(&mut self, env: &mut dyn Env, caller: Caller, request: bus::Request) -> bus::Reply {
        let driver = self
            .drivers
            .iter()
            .position(|d| d.wiring.call == caller.channel());
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        match (request, driver) {
            (bus::Request::Device { index }, _) => match self.device_status(index as usize) {
                Some(row) => bus::Reply::Device(row),
                None => bus::Reply::NoSuchDevice,
            },
            (bus::Request::Unload { power_off_code }, _) => {
                self.start_unload(env, power_off_code);
                bus::Reply::Accepted
            }
            (_, None) => bus::Reply::Refused(bus::Refusal::NotADriver),
            (bus::Request::Query, Some(d)) => bus::Reply::Channel(self.channel_info(d)),
            (bus::Request::ReportVersions { framework, message }, Some(d)) => {
                if self.drivers[d].versions != Some((framework, message)) {
                    self.drivers[d].versions = Some((framework, message));
                    println!(
                        env,
                        "{}: framework {}.{}, message {}.{}",
                        self.drivers[d].wiring.name,
                        framework.0,
                        framework.1,
                        message.0,
                        message.1
                    );
                    self.status_dirty = true;
                }
                bus::Reply::Accepted
            }
            (_, Some(_)) if unloading => bus::Reply::Refused(bus::Refusal::Unavailable),
            (bus::Request::Open { user_data }, Some(d)) => {
                match self.presented(d) {
                    ChannelState::Offered | ChannelState::Failed { .. } => {}
                    _ => return bus::Reply::Refused(bus::Refusal::WrongState),
                }
                let channel = self.channel_mut(d);
                channel.want_open = true;
                channel.failed = None;
                channel.user_data = user_data;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
            (bus::Request::Close, Some(d)) => {
                match self.presented(d) {
                    ChannelState::Open | ChannelState::Opening => {}
                    _ => return bus::Reply::Refused(bus::Refusal::WrongState),
                }
                self.channel_mut(d).want_open = false;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
        }
    }

    /// After every event: retry deferred posts, tell VSCs what changed.
    fn finish_event(&mut self, env: &mut dyn Env) {
        self.flush_outbox(env);
        self.publish(env);
    }
}

enum Step {
    Again,
    Wait,
}

/// Zero a region (a VSC's rings between lives).
fn clear(region: Region) {
    let zeros = [0u8; 512];
    let mut offset = 0;
    while offset < region.len() {
        let count = zeros.len().min(region.len() - offset);
        let _ = region.write_bulk(offset, &zeros[..count]);
        offset += count;
    }
}

/// A channel message's name for the log, without its (host-chosen) contents.
struct MessageName<'a>(&'a ChannelMessage);

impl core::fmt::Debug for MessageName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self.0 {
            ChannelMessage::RequestOffers(_) => "RequestOffers",
            ChannelMessage::OpenChannel(_) | ChannelMessage::OpenChannel2(_) => "OpenChannel",
            ChannelMessage::CloseChannel(_) => "CloseChannel",
            ChannelMessage::GpadlHeader(_) => "GpadlHeader",
            ChannelMessage::GpadlBody(_) => "GpadlBody",
            ChannelMessage::GpadlTeardown(_) => "GpadlTeardown",
            ChannelMessage::RelIdReleased(_) => "RelIdReleased",
            ChannelMessage::InitiateContact(_) | ChannelMessage::InitiateContact2(_) => {
                "InitiateContact"
            }
            ChannelMessage::Unload(_) => "Unload",
            ChannelMessage::TlConnectRequest(_) | ChannelMessage::TlConnectRequest2(_) => {
                "TlConnectRequest"
            }
            ChannelMessage::TlConnectResult(_) => "TlConnectResult",
            ChannelMessage::ModifyChannel(_) => "ModifyChannel",
            ChannelMessage::ModifyChannelResponse(_) => "ModifyChannelResponse",
            ChannelMessage::ModifyConnection(_) => "ModifyConnection",
            ChannelMessage::ModifyConnectionResponse(_) => "ModifyConnectionResponse",
            ChannelMessage::Pause(_) => "Pause",
            ChannelMessage::PauseResponse(_) => "PauseResponse",
            ChannelMessage::Resume(_) => "Resume",
            _ => "message",
        };
        f.write_str(name)
    }
}

impl Component for Vmbus {
    fn init(env: &mut dyn Env) -> Self {
        let mut bus = Vmbus::build(env);
        if bus.queue.is_some() {
            bus.negotiate_from(env, 0);
            // The response may already be queued (synic outranks us).
            bus.drain_queue(env);
        }
        bus.finish_event(env);
        bus
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::SYNIC) {
            self.drain_queue(env);
        }
        self.finish_event(env);
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::bus(channel, message, reply, |caller, request| {
            // Host messages may be waiting behind this call: take them
            // first so the answer reflects the latest state.
            self.drain_queue(env);
            let answer = self.serve(env, caller, request);
            self.finish_event(env);
            Ok(answer)
        })
    }

    fn fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        self.on_fault(env, child, fault);
        self.finish_event(env);
    }
}

/// An open that will not be bound (it failed, or the channel was rescinded
/// first): synic stops treating the relid's events as early.
fn end_opening(env: &mut dyn Env, relid: u32) {
    let unbind = synic::Request::Unbind { relid };
    if let Err(error) = channels::SYNIC_CALL.call(env, &unbind) {
        println!(
            env,
            "ending the opening of relid {} failed: {:?}", relid, error
        );
    }
}

#[cfg(test)]
mod tests;
