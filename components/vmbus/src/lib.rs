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
//!   generated `drivers::DRIVERS` table); unknown classes are logged and
//!   left alone (released if rescinded). An offer with a sub-channel index
//!   K belongs to the primary of its class and instance: it goes to that
//!   primary's driver if its description gives it K sub-channels (else it
//!   is left alone and counted), and is opened with its own ring GPADL
//!   (sub-channel K's four ring regions) when the driver asks; it is open
//!   only while its primary is, and closes before it.
//! - Runs each VSC's channel: on the VSC's `bus::Request::Open` it builds
//!   the ring GPADL from the VSC's four ring regions (its row of
//!   `DRIVERS`: their guest physical addresses and sizes, in the order
//!   out control page, out data, in control page, in data; GpadlHeader with
//!   up to 26 PFNs, GpadlBody with up to 28), waits for GpadlCreated, sends
//!   OpenChannel (downstream offset: the out ring's pages), waits for
//!   OpenChannelResult, binds
//!   relid -> VSC at synic and notifies the VSC. Close, rescind at any step,
//!   offers while running and Unload (then power-off) use the same
//!   reconciliation: every channel moves towards "open" or "closed" one
//!   confirmed step at a time, so a rescind or fault in the middle of any
//!   step fails the waiters and never frees a ring the host still holds.
//! - Makes GPADLs over a VSC's data buffers when it asks (`CreateGpadl`,
//!   its `buffers` of the description, known by address only), streams
//!   their messages as the host takes them, and tears them down on the
//!   VSC's request, on close, rescind and fault (`channel_engine`).
//! - Moves a channel's interrupts to another VP on the VSC's request
//!   (ModifyChannel, 4.1+; from 5.3 it waits for ModifyChannelResponse),
//!   and passes each offer's monitor ID and interrupt mode to synic at
//!   Bind (synic signals monitored channels through the monitor page).
//! - Supervises the VSCs: on a VSC's fault it unbinds its relid, closes the
//!   channel, tears the GPADL down, waits for GpadlTorndown and restarts
//!   the VSC, which zeroes its rings and opens again; after 3 faults
//!   within 10 s it holds the VSC stopped and says so.
//! - Prints the status view (like Linux `lsvmbus`) once every offered device
//!   is open and after each later change, and serves it row by row
//!   (`bus::Request::Device`). What the host can trigger at will is rate
//!   limited: after the first views, at most one view per 10 s, and the
//!   lines host messages cause come from a budget (a burst, then a few per
//!   second); what is held back is counted in the view's last line.
//! - Is restarted by the platform (`supervisor = "@platform"`): a restart
//!   restarts every VSC, unloads the session its previous incarnation left
//!   (recorded in its private `vmbus_session` region) and contacts the host
//!   afresh; when synic is restarted it restores synic's relid table.
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
//! bindings, the console. It maps no VSC ring: it knows each ring region
//! only by its guest physical address and size (`rights = "address"`,
//! from the description through the runtime, never from the VSC), and each
//! VSC zeroes its own rings before it asks to open (the bus manager
//! presents a channel as openable only once no GPADL describes them).
//!
//! Where: `negotiation` (contact, versions, Unload), `host_messages`
//! (the synic queue, each host message, our posts), `channel_engine`
//! (each channel's steps towards open or closed), `supervision` (VSC
//! faults and restarts), `service` (the `bus` protocol, what drivers are
//! told, the status rows) and `status` (the table's text); the state and
//! the component's entry points are here.
#![no_std]
#![forbid(unsafe_code)]

mod channel_engine;
mod host_messages;
mod negotiation;
mod service;
pub mod status;
mod supervision;

use channel_engine::*;
use host_messages::*;

use component_api::{
    println, Channel, ChannelSet, Child, Component, Env, Fault, Refusal, RegionAddress, RegionName,
};
use heapless::{Deque, Vec};
use vmbus_ipc::bus::{self, BufferState, ChannelInfo, ChannelState, DeviceStatus};
use vmbus_ipc::{synic, Guid, MAX_POST_PAYLOAD};
use vmbus_protocol::gpadl::{CreationOutcome, GpadlMessages, GpadlState, GpadlTable};
use vmbus_protocol::messages::{
    CloseChannel, GpadlCreated, InitiateContact, ModifyChannel, OfferChannel, OpenChannel,
    RelIdReleased, RequestOffers, Unload, MAX_MESSAGE_SIZE,
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
/// Faults within a driver's fault window (its `fault_window_ms`, by
/// default [`FAULT_WINDOW_NS`]) after which the VSC is held stopped.
pub const FAULTS_TO_HOLD: usize = 3;
pub const FAULT_WINDOW_NS: u64 = 10_000_000_000;
/// The most pages (both rings, control pages included) the bus manager
/// describes in a ring GPADL.
pub const MAX_RING_PAGES: usize = 256;
/// The most data buffers one VSC has GPADLs made over (sysdesc's limit).
pub const MAX_BUFFERS: usize = 4;
/// The most sub-channels one VSC opens (sysdesc's limit).
pub const MAX_SUB_CHANNELS: usize = 8;
/// Sub-channel records of the whole bus (offers beyond are left alone and
/// counted): a few drivers use sub-channels, and every record is state
/// the bus manager's stack carries at init.
pub const MAX_SUB_CHANNEL_RECORDS: usize = 16;
/// Data-buffer GPADLs whose messages are still being posted (a large
/// buffer takes up to 300 messages, more than the outbox holds: they are
/// produced as the host takes them).
const GPADL_SENDS: usize = 8;
/// Messages waiting for the host to take them (InsufficientBuffers).
const OUTBOX_SIZE: usize = 64;
/// Layout of the `monitor_pages` region: the two monitor (MNF) pages,
/// then the interrupt page (receive half, then send half).
pub const INTERRUPT_PAGE_OFFSET: u64 = 2 * PAGE as u64;
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
    /// The VSC's ring regions, known by address only (not mapped), in
    /// the ring GPADL's page order: out control page, out data, in control
    /// page, in data. The downstream offset is where the in control page
    /// lands: the pages of the first two.
    rings: [RegionName; 4],
    /// The VSC's data buffers, known by address only, in buffer order.
    buffers: &'static [RegionName],
    /// Sub-channel K's ring regions at `sub_rings[K - 1]` (like `rings`):
    /// the description's `sub_channels` of them.
    sub_rings: &'static [[RegionName; 4]],
    /// [`FAULTS_TO_HOLD`] faults within this hold the VSC stopped (0:
    /// never held; the description's `fault_window_ms`).
    fault_window_ns: u64,
}

/// A VSC's data buffer and its GPADL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BufferRecord {
    /// The VSC asked for a GPADL (and has not asked to tear it down).
    wanted: bool,
    /// From GpadlHeader until GpadlTorndown (or a failed GpadlCreated).
    gpadl: Option<u32>,
    /// The last creation failed with this status.
    failed: Option<u32>,
}

/// An offer, copied out and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    relid: u32,
    connection_id: u32,
    class: Guid,
    instance: Guid,
    user_defined: Vec<u8, 120>,
    /// The monitor ID the host allocated (signal through the monitor page).
    monitor_id: Option<u8>,
    dedicated_interrupt: bool,
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
    /// GPADLs over the VSC's data buffers, made while the channel is open.
    buffers: [BufferRecord; MAX_BUFFERS],
    /// The VP the host targets (sent in OpenChannel, moved by ModifyChannel).
    target_vp: u32,
    /// ModifyChannel to this VP sent, ModifyChannelResponse (5.3+) not yet
    /// received. Kept across a close: the answer still comes.
    retargeting: Option<u32>,
    /// The host refused the last ModifyChannel with this status.
    retarget_refused: Option<u32>,
}

impl ChannelRecord {
    fn new(offer: Offer) -> ChannelRecord {
        ChannelRecord {
            offer,
            want_open: false,
            user_data: Vec::new(),
            gpadl: None,
            open_pending: None,
            open: false,
            bound: false,
            failed: None,
            rescinded: false,
            buffers: [BufferRecord::default(); MAX_BUFFERS],
            target_vp: 0,
            retargeting: None,
            retarget_refused: None,
        }
    }

    /// The host holds something of it (an open, an open in flight, its
    /// ring GPADL) or synic routes its events.
    fn busy(&self) -> bool {
        self.open || self.open_pending.is_some() || self.gpadl.is_some() || self.bound
    }
}

/// Sub-channel `index` of driver `driver`: an offer of its primary's class
/// and instance with that sub-channel index.
#[derive(Clone, Debug)]
struct SubChannel {
    driver: usize,
    index: usize,
    record: ChannelRecord,
}

struct Driver {
    wiring: Wiring,
    /// The primary channel (its sub-channels are in `Vmbus::subs`).
    channel: Option<ChannelRecord>,
    /// Per sub-channel, bumped on every new offer or open (the VSC resets
    /// its ring state when it changes).
    sub_generations: [u32; MAX_SUB_CHANNELS],
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
    versions: Option<((u16, u16), (u16, u16))>,
    /// What the VSC was last told (state, generation, its buffers, its
    /// sub-channels' states and generations).
    published: Option<Published>,
}

/// What a VSC was last told.
type Published = (
    ChannelState,
    u32,
    [BufferState; MAX_BUFFERS],
    [(ChannelState, u32); MAX_SUB_CHANNELS],
);

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
    /// Times synic came back from a restart (its news in the queue).
    pub synic_restarts: u32,
    /// Sub-channel offers refused a driver (no primary, or an index beyond
    /// the description's `sub_channels`): left alone.
    pub sub_channel_offers_refused: u32,
}

pub struct Vmbus {
    phase: Phase,
    version: Option<ProtocolVersion>,
    message_connection: u32,
    queue: Option<spsc_queue::Consumer>,
    drivers: Vec<Driver, MAX_DRIVERS>,
    unclaimed: Vec<Offer, MAX_UNCLAIMED>,
    /// Every driver's sub-channels, in offer order.
    subs: Vec<SubChannel, MAX_SUB_CHANNEL_RECORDS>,
    gpadls: GpadlTable<{ MAX_DRIVERS * (1 + MAX_BUFFERS) + MAX_SUB_CHANNEL_RECORDS }>,
    /// Data-buffer GPADLs still being posted, oldest first.
    gpadl_sends: Deque<GpadlMessages<'static>, GPADL_SENDS>,
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
    /// The session record kept across our restarts (`vmbus_session`).
    session: supervision::SessionRecord,
    /// Restarted: the previous incarnation's session is being unloaded.
    recovery: Option<supervision::Recovery>,
    /// Console lines the host's messages may still cause (rate limit).
    console_budget: status::ConsoleBudget,
    /// How often the status view was printed or held back (rate limit).
    views: status::ViewLimit,
}

fn uuid(guid: &Guid) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*guid)
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
                    rings: row.rings,
                    buffers: row.buffers,
                    sub_rings: row.sub_rings,
                    fault_window_ns: row.fault_window_ms.saturating_mul(1_000_000),
                },
                channel: None,
                sub_generations: [0; MAX_SUB_CHANNELS],
                next_offer: None,
                last_rescinded: false,
                generation: 0,
                restarts: 0,
                fault_times: Deque::new(),
                recovering: false,
                hold_after_recovery: false,
                held: false,
                faulted_at_ns: None,
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
            subs: Vec::new(),
            gpadls: GpadlTable::new(1),
            gpadl_sends: Deque::new(),
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
            session: Default::default(),
            recovery: None,
            console_budget: status::ConsoleBudget::new(started_ns),
            views: Default::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// For tests that wire the component up by hand (hosted, against the
    /// simulated host): give driver `driver` data buffers that the system
    /// description it was built from does not give it.
    #[doc(hidden)]
    pub fn give_buffers_for_tests(&mut self, driver: usize, buffers: &'static [RegionName]) {
        self.drivers[driver].wiring.buffers = buffers;
    }

    /// For tests that wire the component up by hand: give driver `driver`
    /// sub-channel rings that its description does not give it.
    #[doc(hidden)]
    pub fn give_sub_rings_for_tests(&mut self, driver: usize, rings: &'static [[RegionName; 4]]) {
        self.drivers[driver].wiring.sub_rings = rings;
    }

    fn touch(&mut self, d: usize) {
        self.touched |= 1 << d;
    }

    /// After every event: retry deferred posts, tell VSCs what changed,
    /// record what the host holds of our session.
    fn finish_event(&mut self, env: &mut dyn Env) {
        self.flush_outbox(env);
        self.publish(env);
        if let Some(state) = self.session_state() {
            self.session.write(state);
        }
    }

    /// Read what synic queued. Everything this prints is the host's doing,
    /// so it is rate limited: beyond the budget lines are only counted.
    fn drain_host_messages(&mut self, env: &mut dyn Env) {
        let mut budget = core::mem::take(&mut self.console_budget);
        budget.refill(env.now_ns());
        {
            let mut limited = status::Budgeted::new(env, &mut budget);
            self.drain_queue(&mut limited);
        }
        self.console_budget = budget;
    }
}

impl Component for Vmbus {
    fn init(env: &mut dyn Env) -> Self {
        let mut bus = Vmbus::build(env);
        let (session, previous) = supervision::SessionRecord::begin(env);
        bus.session = session;
        if bus.queue.is_some() {
            bus.start_session(env, previous);
            // The response may already be queued (synic outranks us).
            bus.drain_host_messages(env);
        }
        bus.finish_event(env);
        bus
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::SYNIC) {
            self.drain_host_messages(env);
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
            self.drain_host_messages(env);
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

#[cfg(test)]
mod tests;
