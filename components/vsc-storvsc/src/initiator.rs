//! The storage initiator as a plain state machine: no IPC, no rings, no
//! clock of its own. The component feeds it what happened (the primary
//! opened, a completion decoded by [`crate::wire`], a host event, a block
//! request, the time) and takes from it what to send ([`Initiator::pop_send`])
//! and what to answer clients ([`Initiator::pop_event`]). Unit tests drive
//! it directly (`tests.rs`).
//!
//! Every outstanding command lives in a slot; its [`Tag`] (slot and
//! sequence) is the context the channel's transaction table hands back
//! with the completion, so the host never names our memory, and a
//! completion for a slot that has since been abandoned (after a reset) or
//! reused is recognised by its sequence and dropped (counted).

use crate::scsi::{self, sense_key, status, Cdb};
use block_queue::mbr;
use heapless::{Deque, String, Vec};
use storage::srb as srb_status;
use vmbus_protocol::storage;

/// Commands outstanding at most (all channels together). One slot is
/// kept for a bus reset and one for discovery, the rest are the queue
/// depth clients get.
pub const MAX_SLOTS: usize = 64;
pub const QUEUE_DEPTH: usize = MAX_SLOTS - 2;
/// LUNs tracked on the controller.
pub const MAX_LUNS: usize = 8;
/// Block clients the driver serves.
pub const MAX_CLIENTS: usize = 4;
/// Attempts of one command for errors worth retrying (UNIT ATTENTION,
/// NOT READY, ABORTED COMMAND, a malformed or short completion).
pub const MAX_ATTEMPTS: u8 = 5;
/// Attempts while the target says BUSY / TASK SET FULL (it is working, so
/// more patience, but still bounded).
pub const MAX_BUSY_ATTEMPTS: u8 = 32;
/// Timed-out commands abandoned (since start) before the controller is
/// restarted to clear the channels' transaction tables.
pub const MAX_ABANDONED: u64 = (MAX_SLOTS / 4) as u64;
/// Bytes of the driver's private buffer used for one discovery reply.
pub const DISCOVERY_BYTES: u32 = 4096;
/// Where the UNMAP parameter lists live in the private buffer (one per slot).
pub const UNMAP_LISTS_AT: u32 = DISCOVERY_BYTES;
pub const UNMAP_LIST_STRIDE: u32 = 32;
/// The private buffer's size the driver needs.
pub const PRIVATE_BYTES: u32 = UNMAP_LISTS_AT + UNMAP_LIST_STRIDE * MAX_SLOTS as u32;
/// Pages one GPA-direct range may name (vmbus-channel's limit), less one
/// for a range that does not start on a page boundary.
pub const MAX_TRANSFER_PAGES: u32 = 255;

/// vstor protocol versions, newest first: Windows 10 (6.2), 8.1 (6.0),
/// 8 (5.1), 7 (4.2), Server 2008 (2.0).
pub const VERSIONS: [u16; 5] = storage::version::ALL;
/// From Windows 8 the SCSI request has the 16-byte extension, the sense
/// field is 20 bytes (18 before) and sub-channels exist.
pub const VERSION_WIN8: u16 = storage::version::WIN8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Sub-channels the driver can open (its description's `sub_channels`).
    pub sub_channels: u16,
    pub io_timeout_ns: u64,
    pub reset_timeout_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sub_channels: 0,
            io_timeout_ns: 30_000_000_000,
            reset_timeout_ns: 10_000_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub slot: u16,
    pub seq: u16,
}

/// Control operations (sent on the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    BeginInitialization,
    QueryProtocolVersion(u16),
    QueryProperties,
    EndInitialization,
    CreateSubChannels(u16),
    ResetBus,
}

/// Where an SRB's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRef {
    None,
    /// The driver's private (host-visible) buffer; `fill` is written there
    /// before the send (an UNMAP parameter list).
    Private {
        offset: u32,
        len: u32,
        fill: Option<[u8; scsi::UNMAP_LIST_LEN]>,
    },
    /// A client's data region (GPA-direct; the driver never touches it).
    Client {
        client: u8,
        offset: u64,
        len: u32,
    },
}

impl DataRef {
    pub fn len(&self) -> u32 {
        match *self {
            DataRef::None => 0,
            DataRef::Private { len, .. } | DataRef::Client { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Srb {
    pub lun: u8,
    pub cdb: Cdb,
    /// Data moves from the device to memory.
    pub data_in: bool,
    pub data: DataRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Control(Control),
    Srb(Srb),
}

/// QUERY_PROPERTIES' answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub max_channels: u16,
    pub multi_channel: bool,
    pub max_transfer_bytes: u32,
}

/// A completion as [`crate::wire`] decoded it (sizes checked there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Control {
        status: u32,
        properties: Option<Properties>,
    },
    Srb {
        /// The vstor packet's status.
        status: u32,
        srb_status: u8,
        scsi_status: u8,
        /// Bytes the host says it moved.
        transferred: u32,
        /// Valid sense bytes (within the version's field).
        sense: &'a [u8],
    },
}

/// Unsolicited host packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEvent {
    EnumerateBus,
    RemoveDevice,
}

// ---- the block side ----

/// What the block server hands the driver (already checked against the
/// client's grant and translated to disk blocks; see
/// `block_queue::ServerRequest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    Read,
    Write,
    Flush,
    /// UNMAP (issued only when the disk supports it).
    Discard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub op: BlockOp,
    pub id: u32,
    /// The disk's block (the grant's first block already added).
    pub disk_block: u64,
    pub count: u32,
    /// Bytes into the client's data region.
    pub offset: u64,
}

pub use block_queue::Status as BlockStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockResponse {
    pub id: u32,
    pub status: BlockStatus,
    /// Blocks done.
    pub count: u32,
}

/// What the description grants a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lun: u8,
    /// MBR partition 1-4, or the whole disk.
    pub partition: Option<u8>,
    pub read_only: bool,
    /// Bytes of the client's data region.
    pub data_bytes: u64,
}

/// A client's area once discovery resolved its grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub first_block: u64,
    pub blocks: u64,
    pub block_size: u32,
    pub read_only: bool,
}

// ---- what the machine reports ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Respond {
        client: u8,
        response: BlockResponse,
    },
    /// Initialization finished: the version and what the host allows.
    Initialized {
        version: u16,
        properties: Properties,
        sub_channels: u16,
    },
    /// Discovery finished; clients' areas are resolved. `first` only once
    /// per start (bump the info pages' generation then).
    Serving {
        first: bool,
        luns: u8,
    },
    LunFound {
        lun: u8,
        blocks: u64,
        block_size: u32,
        unmap: bool,
    },
    /// A client's grant cannot be served (no such LUN or partition).
    GrantUnusable {
        client: u8,
        why: &'static str,
    },
    Note(Note),
    /// The controller cannot go on (no common version, the host refused
    /// initialization, a reset the host never completed): restart.
    Failed(&'static str),
}

/// Something worth a console line (the component prints the first ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A command is sent again (`attempt` failed so far).
    Retry { why: &'static str, attempt: u8 },
    /// A command failed for good after its attempts.
    GaveUp { why: &'static str },
    /// A host packet refused (hostile or broken host).
    Refused(&'static str),
    /// A completion for a command abandoned or answered already.
    Late,
}

/// What the machine counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub commands_sent: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub resets: u64,
    /// Completions for slots abandoned after a reset (or never ours).
    pub late_completions: u64,
    /// Completions the wire module refused (sense beyond its field, too
    /// short) or that claim more data than asked.
    pub hostile_completions: u64,
    pub short_transfers: u64,
    /// Commands answered with an error after a bus reset while the host
    /// still had them (timed out).
    pub abandoned: u64,
    pub io_errors: u64,
    pub rescans: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Init(InitStep),
    Running,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    Begin,
    Version(usize),
    Properties,
    End,
    SubChannels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    ReportLuns,
    Inquiry,
    VpdList,
    Vpd(u8),
    Capacity16,
    Capacity10,
    Mbr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Init(InitStep),
    Reset,
    Discovery {
        lun: u8,
        probe: Probe,
    },
    Io {
        client: u8,
        request: BlockRequest,
        /// Blocks done before this piece.
        done: u32,
        /// Blocks of this piece.
        piece: u32,
    },
    Flush {
        client: u8,
        id: u32,
    },
    Discard {
        client: u8,
        request: BlockRequest,
        /// Blocks unmapped before this piece.
        done: u32,
        /// Blocks of this piece.
        piece: u32,
    },
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    purpose: Purpose,
    command: Command,
    attempts: u8,
    busy_attempts: u8,
    deadline: Option<u64>,
    timed_out: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Lun {
    pub lun: u8,
    pub blocks: u64,
    pub block_size: u32,
    pub unmap: bool,
    pub max_transfer_blocks: u32,
    /// Blocks one UNMAP may name (VPD 0xB0; 0: no limit given).
    pub max_unmap_blocks: u32,
    pub vpd_83: bool,
    pub vpd_b0: bool,
    pub vpd_b2: bool,
    /// Partitions 1-4 as read from the MBR (when a grant needs them).
    pub partitions: [Option<mbr::Partition>; 4],
    pub mbr_read: bool,
}

#[derive(Clone, Copy, Debug)]
struct Client {
    grant: Grant,
    area: Option<Area>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Discovery {
    candidates: [u8; MAX_LUNS],
    count: u8,
    next: u8,
}

pub struct Initiator {
    config: Config,
    phase: Phase,
    version: Option<u16>,
    properties: Properties,
    sub_channels: u16,
    slots: [Option<Slot>; MAX_SLOTS],
    seqs: [u16; MAX_SLOTS],
    to_send: Deque<Tag, MAX_SLOTS>,
    events: Deque<Event, 128>,
    luns: Vec<Lun, MAX_LUNS>,
    /// LUNs being probed in the current discovery (replaced at its end).
    found: Vec<Lun, MAX_LUNS>,
    clients: Vec<Client, MAX_CLIENTS>,
    discovery: Option<Discovery>,
    rescan_pending: bool,
    serving: bool,
    served_before: bool,
    reset_in_flight: Option<Tag>,
    pub stats: Stats,
    pub ident: String<40>,
}

impl Initiator {
    pub fn new(config: Config, grants: &[Grant]) -> Initiator {
        let mut clients = Vec::new();
        for &grant in grants.iter().take(MAX_CLIENTS) {
            let _ = clients.push(Client { grant, area: None });
        }
        Initiator {
            config,
            phase: Phase::Idle,
            version: None,
            properties: Properties::default(),
            sub_channels: 0,
            slots: [None; MAX_SLOTS],
            seqs: [0; MAX_SLOTS],
            to_send: Deque::new(),
            events: Deque::new(),
            luns: Vec::new(),
            found: Vec::new(),
            clients,
            discovery: None,
            rescan_pending: false,
            serving: false,
            served_before: false,
            reset_in_flight: None,
            stats: Stats::default(),
            ident: String::new(),
        }
    }

    /// The negotiated version (packet sizes follow it), if any yet.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    pub fn sub_channels(&self) -> u16 {
        self.sub_channels
    }

    pub fn is_serving(&self) -> bool {
        self.serving
    }

    pub fn has_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    pub fn luns(&self) -> &[Lun] {
        &self.luns
    }

    pub fn area(&self, client: u8) -> Option<Area> {
        self.clients.get(client as usize)?.area
    }

    pub fn outstanding(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// The primary channel is open: initialize.
    pub fn start(&mut self) {
        self.phase = Phase::Init(InitStep::Begin);
        self.version = None;
        self.serving = false;
        self.issue_init(InitStep::Begin);
    }

    /// The channel is gone (closed, rescinded, torn down): every command
    /// in flight is lost; clients get NOT_READY for theirs (they are
    /// answered, never left hanging).
    pub fn channel_lost(&mut self) {
        for index in 0..MAX_SLOTS {
            if let Some(slot) = self.slots[index].take() {
                self.seqs[index] = self.seqs[index].wrapping_add(1);
                self.fail_purpose(slot.purpose, BlockStatus::NotReady);
            }
        }
        self.to_send.clear();
        self.phase = Phase::Idle;
        self.serving = false;
        self.discovery = None;
        self.reset_in_flight = None;
    }

    /// The command a tag stands for (to decode its completion).
    pub fn command(&self, tag: Tag) -> Option<Command> {
        self.live(tag).map(|slot| slot.command)
    }

    /// Whether commands wait to be sent.
    pub fn has_to_send(&self) -> bool {
        !self.to_send.is_empty()
    }

    pub fn pop_send(&mut self) -> Option<(Tag, Command)> {
        loop {
            let tag = self.to_send.pop_front()?;
            if let Some(slot) = self.live(tag) {
                return Some((tag, slot.command));
            }
        }
    }

    /// A command `pop_send` gave could not be sent now (ring full): it
    /// goes first next time.
    pub fn unsent(&mut self, tag: Tag) {
        let _ = self.to_send.push_front(tag);
    }

    /// The command went out at `now`: its timeout runs from here.
    pub fn sent(&mut self, tag: Tag, now: u64) {
        let timeout = self.config.io_timeout_ns;
        let reset_timeout = self.config.reset_timeout_ns;
        if let Some(slot) = self.live_mut(tag) {
            let limit = if slot.purpose == Purpose::Reset {
                reset_timeout
            } else {
                timeout
            };
            slot.deadline = Some(now.saturating_add(limit));
            self.stats.commands_sent += 1;
        }
    }

    /// A send failed for good (not a full ring): treat as a failed attempt.
    pub fn send_failed(&mut self, tag: Tag) {
        if self.live(tag).is_some() {
            self.attempt_failed(tag, BlockStatus::IoError, "the send failed");
        }
    }

    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn live(&self, tag: Tag) -> Option<&Slot> {
        let index = tag.slot as usize;
        if index < MAX_SLOTS && self.seqs[index] == tag.seq {
            self.slots[index].as_ref()
        } else {
            None
        }
    }

    fn live_mut(&mut self, tag: Tag) -> Option<&mut Slot> {
        let index = tag.slot as usize;
        if index < MAX_SLOTS && self.seqs[index] == tag.seq {
            self.slots[index].as_mut()
        } else {
            None
        }
    }

    fn event(&mut self, event: Event) {
        if self.events.push_back(event).is_err() {
            // Responses must not be lost: the queue is sized for every
            // slot's answer plus notes, so only notes can fall out here.
            if let Event::Respond { .. } = event {
                let _ = self.events.pop_front();
                let _ = self.events.push_back(event);
            }
        }
    }

    /// Take a slot (`reserve`: how many must stay free afterwards).
    fn allocate(&mut self, purpose: Purpose, command: Command, reserve: usize) -> Option<Tag> {
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        if free <= reserve {
            return None;
        }
        let index = self.slots.iter().position(Option::is_none)?;
        self.slots[index] = Some(Slot {
            purpose,
            command,
            attempts: 0,
            busy_attempts: 0,
            deadline: None,
            timed_out: false,
        });
        let tag = Tag {
            slot: index as u16,
            seq: self.seqs[index],
        };
        let _ = self.to_send.push_back(tag);
        Some(tag)
    }

    fn free(&mut self, tag: Tag) -> Option<Slot> {
        let index = tag.slot as usize;
        let slot = self.slots.get_mut(index)?.take();
        self.seqs[index] = self.seqs[index].wrapping_add(1);
        slot
    }

    fn issue_init(&mut self, step: InitStep) {
        let control = match step {
            InitStep::Begin => Control::BeginInitialization,
            InitStep::Version(index) => Control::QueryProtocolVersion(VERSIONS[index]),
            InitStep::Properties => Control::QueryProperties,
            InitStep::End => Control::EndInitialization,
            InitStep::SubChannels => Control::CreateSubChannels(self.sub_channels),
        };
        self.phase = Phase::Init(step);
        if self
            .allocate(Purpose::Init(step), Command::Control(control), 0)
            .is_none()
        {
            self.fail("no slot for initialization");
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.phase = Phase::Failed;
        self.serving = false;
        self.event(Event::Failed(why));
    }

    // ---- completions ----

    /// A completion decoded by the wire module. `private` reads the
    /// driver's private buffer (discovery replies).
    pub fn on_completion(
        &mut self,
        tag: Tag,
        reply: Reply<'_>,
        now: u64,
        private: &mut dyn FnMut(u32, &mut [u8]),
    ) {
        let _ = now;
        let Some(slot) = self.live(tag).copied() else {
            self.stats.late_completions += 1;
            self.event(Event::Note(Note::Late));
            return;
        };
        match (slot.purpose, reply) {
            (Purpose::Init(step), Reply::Control { status, properties }) => {
                self.free(tag);
                self.on_init(step, status, properties);
            }
            (Purpose::Reset, Reply::Control { .. }) => {
                self.free(tag);
                self.on_reset_done();
            }
            (
                _,
                Reply::Srb {
                    status: _,
                    srb_status,
                    scsi_status,
                    transferred,
                    sense,
                },
            ) if matches!(slot.command, Command::Srb(_)) => {
                let Command::Srb(srb) = slot.command else {
                    return;
                };
                if transferred > srb.data.len() {
                    // More than we asked the host to move: it described
                    // bytes outside the request (hostile or broken).
                    self.stats.hostile_completions += 1;
                    self.event(Event::Note(Note::Refused(
                        "a transfer longer than the request",
                    )));
                    self.attempt_failed(tag, BlockStatus::IoError, "a refused completion");
                    return;
                }
                let outcome = classify(srb_status, scsi_status, sense);
                self.on_srb(tag, slot, srb, outcome, transferred, private);
            }
            _ => {
                // A control answer to an SRB or the other way round.
                self.stats.hostile_completions += 1;
                self.event(Event::Note(Note::Refused("an answer of the wrong kind")));
                self.attempt_failed(tag, BlockStatus::IoError, "a refused completion");
            }
        }
    }

    /// A completion the wire module refused (too short, sense beyond its
    /// field): counted; the command counts as a failed attempt.
    pub fn on_malformed(&mut self, tag: Tag) {
        self.stats.hostile_completions += 1;
        if self.live(tag).is_some() {
            self.event(Event::Note(Note::Refused("a malformed completion")));
            self.attempt_failed(tag, BlockStatus::IoError, "a refused completion");
        } else {
            self.stats.late_completions += 1;
            self.event(Event::Note(Note::Late));
        }
    }

    fn on_init(&mut self, step: InitStep, status: u32, properties: Option<Properties>) {
        match step {
            InitStep::Begin if status == 0 => self.issue_init(InitStep::Version(0)),
            InitStep::Version(index) if status == 0 => {
                self.version = Some(VERSIONS[index]);
                self.issue_init(InitStep::Properties);
            }
            InitStep::Version(index) if index + 1 < VERSIONS.len() => {
                self.issue_init(InitStep::Version(index + 1))
            }
            InitStep::Version(_) => self.fail("the host accepts no storage protocol version"),
            InitStep::Properties if status == 0 => {
                let Some(properties) = properties else {
                    self.stats.hostile_completions += 1;
                    self.fail("QUERY_PROPERTIES answered without properties");
                    return;
                };
                self.properties = properties;
                self.issue_init(InitStep::End);
            }
            InitStep::End if status == 0 => {
                let multi = self.version.is_some_and(|v| v >= VERSION_WIN8)
                    && self.properties.multi_channel;
                self.sub_channels = if multi {
                    self.properties.max_channels.min(self.config.sub_channels)
                } else {
                    0
                };
                if self.sub_channels > 0 {
                    self.issue_init(InitStep::SubChannels);
                } else {
                    self.initialized();
                }
            }
            InitStep::SubChannels => {
                if status != 0 {
                    // Not fatal: the primary carries everything.
                    self.sub_channels = 0;
                }
                self.initialized();
            }
            _ => self.fail("the host refused storage initialization"),
        }
    }

    fn initialized(&mut self) {
        self.phase = Phase::Running;
        self.event(Event::Initialized {
            version: self.version.unwrap_or(0),
            properties: self.properties,
            sub_channels: self.sub_channels,
        });
        self.start_discovery();
    }

    fn on_reset_done(&mut self) {
        self.reset_in_flight = None;
        // The host has aborted what it had: what timed out is answered now.
        for index in 0..MAX_SLOTS {
            let Some(slot) = self.slots[index] else {
                continue;
            };
            if slot.timed_out {
                let tag = Tag {
                    slot: index as u16,
                    seq: self.seqs[index],
                };
                self.free(tag);
                self.stats.io_errors += 1;
                self.stats.abandoned += 1;
                self.fail_purpose(slot.purpose, BlockStatus::IoError);
            }
        }
        // Each abandoned command still holds its transaction in the
        // channel's table (the host may complete it late); past this many
        // the tables would fill up: restart, which closes the channel and
        // clears them.
        if self.stats.abandoned > MAX_ABANDONED {
            self.fail("too many commands abandoned after bus resets");
        }
    }

    /// Retry the command in `tag` if it has attempts left, else fail it.
    fn attempt_failed(&mut self, tag: Tag, status: BlockStatus, why: &'static str) {
        let Some(slot) = self.live_mut(tag) else {
            return;
        };
        slot.attempts += 1;
        slot.deadline = None;
        let attempt = slot.attempts;
        if attempt < MAX_ATTEMPTS {
            self.stats.retries += 1;
            let _ = self.to_send.push_back(tag);
            self.event(Event::Note(Note::Retry { why, attempt }));
        } else if let Some(slot) = self.free(tag) {
            self.stats.io_errors += 1;
            self.event(Event::Note(Note::GaveUp { why }));
            self.fail_purpose(slot.purpose, status);
        }
    }

    fn retry_busy(&mut self, tag: Tag) {
        let Some(slot) = self.live_mut(tag) else {
            return;
        };
        slot.busy_attempts += 1;
        slot.deadline = None;
        let attempt = slot.busy_attempts;
        if attempt < MAX_BUSY_ATTEMPTS {
            self.stats.retries += 1;
            let _ = self.to_send.push_back(tag);
            self.event(Event::Note(Note::Retry {
                why: "BUSY",
                attempt,
            }));
        } else if let Some(slot) = self.free(tag) {
            self.stats.io_errors += 1;
            self.event(Event::Note(Note::GaveUp { why: "BUSY" }));
            self.fail_purpose(slot.purpose, BlockStatus::IoError);
        }
    }

    /// A command that will not succeed: answer whoever asked.
    fn fail_purpose(&mut self, purpose: Purpose, status: BlockStatus) {
        match purpose {
            Purpose::Io {
                client,
                request,
                done,
                ..
            } => self.respond(client, request.id, status, done),
            Purpose::Flush { client, id } => self.respond(client, id, status, 0),
            Purpose::Discard {
                client,
                request,
                done,
                ..
            } => self.respond(client, request.id, status, done),
            Purpose::Discovery { lun, probe } => self.probe_failed(lun, probe, None),
            Purpose::Init(_) => self.fail("storage initialization did not complete"),
            Purpose::Reset => self.fail("the host did not complete a bus reset"),
        }
    }

    fn respond(&mut self, client: u8, id: u32, status: BlockStatus, count: u32) {
        self.event(Event::Respond {
            client,
            response: BlockResponse { id, status, count },
        });
    }

    fn on_srb(
        &mut self,
        tag: Tag,
        slot: Slot,
        srb: Srb,
        outcome: Outcome,
        transferred: u32,
        private: &mut dyn FnMut(u32, &mut [u8]),
    ) {
        match outcome {
            Outcome::Retry => return self.attempt_failed(tag, BlockStatus::IoError, "an error"),
            Outcome::RetryNotReady => {
                return self.attempt_failed(tag, BlockStatus::NotReady, "NOT READY")
            }
            Outcome::Busy => return self.retry_busy(tag),
            Outcome::UnitAttention { rescan } => {
                // The device changed (LUNs, capacity) or was reset: the
                // command is retried; a change is looked at by a rescan.
                if rescan {
                    self.request_rescan();
                }
                return self.attempt_failed(tag, BlockStatus::IoError, "UNIT ATTENTION");
            }
            Outcome::Success | Outcome::Fail(_) | Outcome::NoDevice => {}
        }
        if outcome == Outcome::NoDevice {
            self.request_rescan();
        }
        match slot.purpose {
            Purpose::Discovery { lun, probe } => {
                self.free(tag);
                match outcome {
                    Outcome::Success => {
                        let mut data = [0u8; DISCOVERY_BYTES as usize];
                        let len = (transferred as usize).min(data.len());
                        private(0, &mut data[..len]);
                        self.probe_done(lun, probe, &data[..len]);
                    }
                    Outcome::Fail(key) => self.probe_failed(lun, probe, key),
                    _ => self.probe_failed(lun, probe, None),
                }
            }
            Purpose::Io {
                client,
                request,
                done,
                piece,
            } => {
                let block_size = self.area(client).map_or(512, |area| area.block_size.max(1));
                match outcome {
                    Outcome::Success => {
                        let moved = transferred / block_size;
                        if moved < piece {
                            // Residual: the host moved less than asked. Go on
                            // from where it stopped (a failed attempt if no
                            // progress at all).
                            self.stats.short_transfers += 1;
                            if moved == 0 {
                                return self.attempt_failed(
                                    tag,
                                    BlockStatus::IoError,
                                    "a transfer with no progress",
                                );
                            }
                            self.event(Event::Note(Note::Retry {
                                why: "the rest of a short transfer",
                                attempt: slot.attempts,
                            }));
                        }
                        self.free(tag);
                        let done = done + moved.min(piece);
                        if done >= request.count {
                            self.respond(client, request.id, BlockStatus::Ok, done);
                        } else {
                            self.issue_piece(client, request, done);
                        }
                    }
                    outcome => {
                        self.free(tag);
                        self.stats.io_errors += 1;
                        let status = match outcome {
                            Outcome::NoDevice => BlockStatus::NotReady,
                            Outcome::Fail(Some(sense_key::DATA_PROTECT)) => BlockStatus::ReadOnly,
                            _ => BlockStatus::IoError,
                        };
                        self.respond(client, request.id, status, done);
                    }
                }
            }
            Purpose::Discard {
                client,
                request,
                done,
                piece,
            } => {
                self.free(tag);
                match outcome {
                    Outcome::Success => {
                        let done = done + piece;
                        if done >= request.count {
                            self.respond(client, request.id, BlockStatus::Ok, done);
                        } else {
                            self.issue_discard_piece(client, request, done);
                        }
                    }
                    outcome => {
                        self.stats.io_errors += 1;
                        let status = match outcome {
                            Outcome::NoDevice => BlockStatus::NotReady,
                            Outcome::Fail(Some(sense_key::DATA_PROTECT)) => BlockStatus::ReadOnly,
                            _ => BlockStatus::IoError,
                        };
                        self.respond(client, request.id, status, done);
                    }
                }
            }
            Purpose::Flush { client, id } => match outcome {
                Outcome::Success => {
                    self.free(tag);
                    self.respond(client, id, BlockStatus::Ok, 0);
                }
                outcome => {
                    self.free(tag);
                    self.stats.io_errors += 1;
                    let status = if outcome == Outcome::NoDevice {
                        BlockStatus::NotReady
                    } else {
                        BlockStatus::IoError
                    };
                    self.respond(client, id, status, 0);
                }
            },
            Purpose::Init(_) | Purpose::Reset => {
                self.free(tag);
                self.stats.hostile_completions += 1;
            }
        }
        let _ = srb;
    }

    // ---- timeouts ----

    /// The earliest deadline [`Initiator::tick`] would act on (a command
    /// not yet timed out, or the bus reset): when to be woken.
    pub fn next_deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .flatten()
            .filter(|slot| !slot.timed_out)
            .filter_map(|slot| slot.deadline)
            .min()
    }

    /// Check deadlines (the component calls this whenever it runs, and
    /// asks synic to wake it at [`Initiator::next_deadline`]). A command past its deadline is marked; the
    /// first one starts a bus reset; when the reset completes, the marked
    /// commands are answered with an error. A reset past its own deadline
    /// fails the controller (the component restarts, which closes the
    /// channel: the host stops using our memory).
    pub fn tick(&mut self, now: u64) {
        let mut expired = false;
        for index in 0..MAX_SLOTS {
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            let Some(deadline) = slot.deadline else {
                continue;
            };
            if now < deadline || slot.timed_out {
                continue;
            }
            if slot.purpose == Purpose::Reset {
                self.fail("the host did not complete a bus reset");
                return;
            }
            slot.timed_out = true;
            self.stats.timeouts += 1;
            expired = true;
        }
        if expired && self.reset_in_flight.is_none() {
            self.stats.resets += 1;
            self.reset_in_flight =
                self.allocate(Purpose::Reset, Command::Control(Control::ResetBus), 0);
        }
    }

    // ---- discovery ----

    pub fn on_host_event(&mut self, event: HostEvent) {
        match event {
            HostEvent::EnumerateBus | HostEvent::RemoveDevice => self.request_rescan(),
        }
    }

    fn request_rescan(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        if self.discovery.is_some() {
            self.rescan_pending = true;
        } else {
            self.stats.rescans += 1;
            self.start_discovery();
        }
    }

    fn start_discovery(&mut self) {
        self.found.clear();
        self.discovery = Some(Discovery::default());
        self.issue_probe(0, Probe::ReportLuns);
    }

    fn issue_probe(&mut self, lun: u8, probe: Probe) {
        let allocation = DISCOVERY_BYTES;
        let (cdb, len) = match probe {
            Probe::ReportLuns => (Cdb::report_luns(allocation), allocation),
            Probe::Inquiry => (Cdb::inquiry(None, 96), 96),
            Probe::VpdList => (Cdb::inquiry(Some(0), 255), 255),
            Probe::Vpd(page) => (Cdb::inquiry(Some(page), 255), 255),
            Probe::Capacity16 => (Cdb::read_capacity_16(32), 32),
            Probe::Capacity10 => (Cdb::read_capacity_10(), 8),
            Probe::Mbr => {
                let block_size = self
                    .found
                    .iter()
                    .find(|l| l.lun == lun)
                    .map_or(512, |l| l.block_size);
                (
                    Cdb::read_write(false, 0, 1),
                    block_size.min(DISCOVERY_BYTES),
                )
            }
        };
        let srb = Srb {
            lun,
            cdb,
            data_in: true,
            data: DataRef::Private {
                offset: 0,
                len,
                fill: None,
            },
        };
        // Discovery may use the reset's reserve, never the last slot.
        if self
            .allocate(Purpose::Discovery { lun, probe }, Command::Srb(srb), 1)
            .is_none()
        {
            // Every slot busy with I/O: finish discovery with what we have
            // and look again later.
            self.rescan_pending = true;
            self.finish_discovery();
        }
    }

    fn found_mut(&mut self, lun: u8) -> Option<&mut Lun> {
        self.found.iter_mut().find(|l| l.lun == lun)
    }

    fn probe_done(&mut self, lun: u8, probe: Probe, data: &[u8]) {
        match probe {
            Probe::ReportLuns => {
                let luns: Vec<u8, MAX_LUNS> = scsi::parse_report_luns(data);
                let mut discovery = Discovery::default();
                for (index, &lun) in luns.iter().enumerate() {
                    discovery.candidates[index] = lun;
                }
                discovery.count = luns.len() as u8;
                self.discovery = Some(discovery);
                self.next_candidate();
            }
            Probe::Inquiry => match scsi::parse_inquiry(data) {
                Some(inquiry) if inquiry.connected && inquiry.device_type == 0 => {
                    let _ = self.found.push(Lun {
                        lun,
                        block_size: 512,
                        ..Lun::default()
                    });
                    self.issue_probe(lun, Probe::VpdList);
                }
                _ => self.next_candidate(),
            },
            Probe::VpdList => {
                if let (Some(body), Some(state)) = (scsi::vpd_body(data, 0), self.found_mut(lun)) {
                    state.vpd_83 = body.contains(&0x83);
                    state.vpd_b0 = body.contains(&0xB0);
                    state.vpd_b2 = body.contains(&0xB2);
                }
                self.next_vpd(lun, 0);
            }
            Probe::Vpd(page) => {
                if let Some(body) = scsi::vpd_body(data, page) {
                    match page {
                        0x83 if self.ident.is_empty() => {
                            self.ident = scsi::parse_identification(body);
                        }
                        0xB0 => {
                            let limits = scsi::parse_block_limits(body);
                            if let Some(state) = self.found_mut(lun) {
                                state.max_transfer_blocks = limits.max_transfer_blocks;
                                state.max_unmap_blocks = limits.max_unmap_blocks;
                            }
                        }
                        0xB2 => {
                            let unmap = scsi::parse_unmap_supported(body);
                            if let Some(state) = self.found_mut(lun) {
                                state.unmap = unmap;
                            }
                        }
                        _ => {}
                    }
                }
                self.next_vpd(lun, page);
            }
            Probe::Capacity16 | Probe::Capacity10 => {
                let parsed = if probe == Probe::Capacity16 {
                    scsi::parse_capacity_16(data)
                } else {
                    scsi::parse_capacity_10(data)
                };
                match parsed {
                    Some((blocks, size))
                        if size.is_power_of_two() && (512..=4096).contains(&size) =>
                    {
                        if let Some(state) = self.found_mut(lun) {
                            state.blocks = blocks;
                            state.block_size = size;
                        }
                        if probe == Probe::Capacity10 && blocks == 1 << 32 {
                            // READ CAPACITY (10) saturates: the 16 form failed,
                            // so only the first 2^32 blocks are reachable.
                        }
                        let needs_mbr = self
                            .clients
                            .iter()
                            .any(|c| c.grant.lun == lun && c.grant.partition.is_some());
                        if needs_mbr {
                            self.issue_probe(lun, Probe::Mbr);
                        } else {
                            self.lun_done(lun);
                        }
                    }
                    _ if probe == Probe::Capacity16 => self.issue_probe(lun, Probe::Capacity10),
                    _ => {
                        self.found.retain(|l| l.lun != lun);
                        self.next_candidate();
                    }
                }
            }
            Probe::Mbr => {
                if let Some(state) = self.found_mut(lun) {
                    state.mbr_read = true;
                    for number in 1..=4u8 {
                        state.partitions[number as usize - 1] =
                            mbr::partition(data, state.blocks, number).ok();
                    }
                }
                self.lun_done(lun);
            }
        }
    }

    /// A probe that did not succeed (after its retries): `key` is the
    /// sense key if the device said why.
    fn probe_failed(&mut self, lun: u8, probe: Probe, key: Option<u8>) {
        let _ = key;
        match probe {
            // No REPORT LUNS: scan LUNs 0..MAX_LUNS with INQUIRY.
            Probe::ReportLuns => {
                let mut discovery = Discovery::default();
                for (index, candidate) in discovery.candidates.iter_mut().enumerate() {
                    *candidate = index as u8;
                }
                discovery.count = MAX_LUNS as u8;
                self.discovery = Some(discovery);
                self.next_candidate();
            }
            Probe::Inquiry => self.next_candidate(),
            Probe::VpdList => self.next_vpd(lun, 0xFF),
            Probe::Vpd(page) => self.next_vpd(lun, page),
            Probe::Capacity16 => self.issue_probe(lun, Probe::Capacity10),
            Probe::Capacity10 => {
                self.found.retain(|l| l.lun != lun);
                self.next_candidate();
            }
            Probe::Mbr => self.lun_done(lun),
        }
    }

    /// The next VPD page after `after` that the LUN lists, else capacity.
    fn next_vpd(&mut self, lun: u8, after: u8) {
        let state = self.found.iter().find(|l| l.lun == lun).copied();
        let next = state.and_then(|s| {
            [(0x83, s.vpd_83), (0xB0, s.vpd_b0), (0xB2, s.vpd_b2)]
                .into_iter()
                .find(|&(page, listed)| listed && (after == 0 || page > after) && after != 0xFF)
                .map(|(page, _)| page)
        });
        match next {
            Some(page) => self.issue_probe(lun, Probe::Vpd(page)),
            None => self.issue_probe(lun, Probe::Capacity16),
        }
    }

    fn lun_done(&mut self, lun: u8) {
        if let Some(state) = self.found.iter().find(|l| l.lun == lun).copied() {
            self.event(Event::LunFound {
                lun,
                blocks: state.blocks,
                block_size: state.block_size,
                unmap: state.unmap,
            });
        }
        self.next_candidate();
    }

    fn next_candidate(&mut self) {
        let Some(discovery) = self.discovery.as_mut() else {
            return;
        };
        if discovery.next >= discovery.count {
            self.finish_discovery();
            return;
        }
        let lun = discovery.candidates[discovery.next as usize];
        discovery.next += 1;
        self.issue_probe(lun, Probe::Inquiry);
    }

    fn finish_discovery(&mut self) {
        self.discovery = None;
        self.luns = self.found.clone();
        for index in 0..self.clients.len() {
            let grant = self.clients[index].grant;
            let lun = self.luns.iter().find(|l| l.lun == grant.lun).copied();
            let area = match (lun, grant.partition) {
                (None, _) => Err("its LUN is not there"),
                (Some(lun), None) => Ok(Area {
                    first_block: 0,
                    blocks: lun.blocks,
                    block_size: lun.block_size,
                    read_only: grant.read_only,
                }),
                (Some(lun), Some(number)) => match lun
                    .partitions
                    .get(number.wrapping_sub(1) as usize)
                    .copied()
                    .flatten()
                {
                    Some(partition) => Ok(Area {
                        first_block: partition.first_block,
                        blocks: partition.blocks,
                        block_size: lun.block_size,
                        read_only: grant.read_only,
                    }),
                    None => Err("its partition is not in the MBR"),
                },
            };
            match area {
                Ok(area) => self.clients[index].area = Some(area),
                Err(why) => {
                    if self.clients[index].area.take().is_some() || !self.served_before {
                        self.event(Event::GrantUnusable {
                            client: index as u8,
                            why,
                        });
                    }
                }
            }
        }
        self.serving = true;
        let first = !self.served_before;
        self.served_before = true;
        self.event(Event::Serving {
            first,
            luns: self.luns.len() as u8,
        });
        if self.rescan_pending {
            self.rescan_pending = false;
            self.stats.rescans += 1;
            self.start_discovery();
        }
    }

    // ---- block requests ----

    /// Whether a request can be taken now: serving, and a slot free
    /// besides the reset's and discovery's.
    pub fn can_accept(&self) -> bool {
        self.serving && self.slots.iter().filter(|s| s.is_none()).count() > 2
    }

    /// Take a client's request (the block server checked it against the
    /// grant): it is answered through [`Event::Respond`], now if it is
    /// refused.
    pub fn submit(&mut self, client: u8, request: BlockRequest) {
        let Some(state) = self.clients.get(client as usize).copied() else {
            return;
        };
        let (Some(area), true) = (state.area, self.serving) else {
            return self.respond(client, request.id, BlockStatus::NotReady, 0);
        };
        let lun = state.grant.lun;
        let Some(disk) = self.luns.iter().find(|l| l.lun == lun).copied() else {
            return self.respond(client, request.id, BlockStatus::NotReady, 0);
        };
        if request.op == BlockOp::Flush {
            let srb = Srb {
                lun,
                cdb: Cdb::synchronize_cache(),
                data_in: false,
                data: DataRef::None,
            };
            let purpose = Purpose::Flush {
                client,
                id: request.id,
            };
            if self.allocate(purpose, Command::Srb(srb), 2).is_none() {
                self.respond(client, request.id, BlockStatus::IoError, 0);
            }
            return;
        }
        // Checked again here (the disk may have shrunk since the grant was
        // published): never send the host a range outside the area.
        let end = request.disk_block.checked_add(u64::from(request.count));
        let area_end = area.first_block + area.blocks;
        if request.count == 0
            || request.disk_block < area.first_block
            || end.is_none_or(|end| end > area_end.min(disk.blocks))
        {
            return self.respond(client, request.id, BlockStatus::SeekError, 0);
        }
        if request.op != BlockOp::Read && area.read_only {
            return self.respond(client, request.id, BlockStatus::ReadOnly, 0);
        }
        if request.op == BlockOp::Discard {
            if !disk.unmap {
                return self.respond(client, request.id, BlockStatus::NotSupported, 0);
            }
            return self.issue_discard_piece(client, request, 0);
        }
        let bytes = u64::from(request.count) * u64::from(area.block_size);
        let inside = request
            .offset
            .checked_add(bytes)
            .is_some_and(|end| end <= state.grant.data_bytes);
        if !inside {
            return self.respond(client, request.id, BlockStatus::Invalid, 0);
        }
        self.issue_piece(client, request, 0);
    }

    /// Whether a client's DISCARDs can reach its disk (the disk's VPD page
    /// 0xB2 says it takes UNMAP). The info page publishes it.
    pub fn discard_supported(&self, client: u8) -> bool {
        let Some(state) = self.clients.get(client as usize) else {
            return false;
        };
        state.area.is_some()
            && self
                .luns
                .iter()
                .find(|l| l.lun == state.grant.lun)
                .is_some_and(|disk| disk.unmap)
    }

    /// One UNMAP of at most the disk's block-limits maximum, its parameter
    /// list in the private buffer at the slot's own place.
    fn issue_discard_piece(&mut self, client: u8, request: BlockRequest, done: u32) {
        let lun = self.clients[client as usize].grant.lun;
        let Some(disk) = self.luns.iter().find(|l| l.lun == lun).copied() else {
            return self.respond(client, request.id, BlockStatus::NotReady, done);
        };
        let limit = match disk.max_unmap_blocks {
            0 => u32::MAX,
            limit => limit,
        };
        let piece = (request.count - done).min(limit);
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            return self.respond(client, request.id, BlockStatus::IoError, done);
        };
        let list = scsi::unmap_list(request.disk_block + u64::from(done), piece);
        let srb = Srb {
            lun,
            cdb: Cdb::unmap(scsi::UNMAP_LIST_LEN as u16),
            data_in: false,
            data: DataRef::Private {
                offset: UNMAP_LISTS_AT + UNMAP_LIST_STRIDE * index as u32,
                len: scsi::UNMAP_LIST_LEN as u32,
                fill: Some(list),
            },
        };
        let purpose = Purpose::Discard {
            client,
            request,
            done,
            piece,
        };
        if self.allocate(purpose, Command::Srb(srb), 2).is_none() {
            self.respond(client, request.id, BlockStatus::IoError, done);
        }
    }

    /// Blocks one SRB may move for `client`: the host's maximum transfer,
    /// the disk's block limits and the pages one GPA range may name. The
    /// info page publishes it as the clients' maximum transfer.
    pub fn piece_limit(&self, client: u8) -> u32 {
        let Some(area) = self.area(client) else {
            return 1;
        };
        let lun = self.clients[client as usize].grant.lun;
        let block_size = area.block_size.max(1);
        let mut limit = MAX_TRANSFER_PAGES * 4096 / block_size;
        if self.properties.max_transfer_bytes >= block_size {
            limit = limit.min(self.properties.max_transfer_bytes / block_size);
        }
        if let Some(state) = self.luns.iter().find(|l| l.lun == lun) {
            if state.max_transfer_blocks > 0 {
                limit = limit.min(state.max_transfer_blocks);
            }
        }
        limit.max(1)
    }

    fn issue_piece(&mut self, client: u8, request: BlockRequest, done: u32) {
        let Some(area) = self.area(client) else {
            return self.respond(client, request.id, BlockStatus::NotReady, done);
        };
        let lun = self.clients[client as usize].grant.lun;
        let piece = (request.count - done).min(self.piece_limit(client));
        let write = request.op == BlockOp::Write;
        let srb = Srb {
            lun,
            cdb: Cdb::read_write(write, request.disk_block + u64::from(done), piece),
            data_in: !write,
            data: DataRef::Client {
                client,
                offset: request.offset + u64::from(done) * u64::from(area.block_size),
                len: piece * area.block_size,
            },
        };
        let purpose = Purpose::Io {
            client,
            request,
            done,
            piece,
        };
        if self.allocate(purpose, Command::Srb(srb), 2).is_none() {
            self.respond(client, request.id, BlockStatus::IoError, done);
        }
    }
}

/// What a completed SRB means for the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    /// Worth another attempt (counts against [`MAX_ATTEMPTS`]).
    Retry,
    /// NOT READY: another attempt; NOT_READY to the client at the limit.
    RetryNotReady,
    /// BUSY / TASK SET FULL.
    Busy,
    /// The LUN is not there (any more).
    NoDevice,
    /// UNIT ATTENTION: retry; `rescan`: the LUN inventory or capacity
    /// changed.
    UnitAttention {
        rescan: bool,
    },
    /// Will not succeed; the sense key if one came.
    Fail(Option<u8>),
}

fn classify(srb_status_byte: u8, scsi_status: u8, sense: &[u8]) -> Outcome {
    let srb = srb_status::code(srb_status_byte);
    match srb {
        srb_status::SUCCESS | srb_status::DATA_OVERRUN if scsi_status == status::GOOD => {
            Outcome::Success
        }
        srb_status::INVALID_LUN | srb_status::NO_DEVICE | srb_status::SELECTION_TIMEOUT => {
            Outcome::NoDevice
        }
        srb_status::INVALID_REQUEST => Outcome::Fail(None),
        srb_status::ABORTED | srb_status::ERROR | srb_status::SUCCESS => match scsi_status {
            status::BUSY | status::TASK_SET_FULL => Outcome::Busy,
            status::CHECK_CONDITION => match scsi::parse_sense(sense) {
                Some(sense) => match sense.key {
                    sense_key::NO_SENSE | sense_key::RECOVERED_ERROR => {
                        if srb == srb_status::SUCCESS {
                            Outcome::Success
                        } else {
                            Outcome::Retry
                        }
                    }
                    sense_key::UNIT_ATTENTION => Outcome::UnitAttention {
                        rescan: sense.asc == 0x3F || sense.asc == 0x2A,
                    },
                    sense_key::NOT_READY => Outcome::RetryNotReady,
                    sense_key::ABORTED_COMMAND | sense_key::HARDWARE_ERROR => Outcome::Retry,
                    key => Outcome::Fail(Some(key)),
                },
                None => Outcome::Retry,
            },
            status::RESERVATION_CONFLICT => Outcome::Fail(None),
            _ if srb == srb_status::ABORTED => Outcome::Retry,
            _ => Outcome::Retry,
        },
        // PENDING in a completion, or a status we do not know: try again.
        _ => Outcome::Retry,
    }
}

#[cfg(test)]
#[path = "initiator_tests.rs"]
mod tests;
