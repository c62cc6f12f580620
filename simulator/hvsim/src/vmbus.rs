//! The VMBus server: the host end of the VMBus control protocol.
//!
//! - Version negotiation for 2.4 to 5.3 (a configurable range): before 5.0
//!   InitiateContact and every later message use connection ID 1 and SINT 2;
//!   from 5.0 InitiateContact uses connection ID 4, names the message SINT,
//!   and later messages go to the `msg_conn_id` of the VersionResponse.
//!   Messages on the wrong connection are rejected.
//! - Offers for a configurable set of devices (class and instance GUIDs,
//!   pipe mode, monitor allocation), RequestOffers / AllOffersDelivered,
//!   and offers added while the guest runs.
//! - GPADL creation (header + bodies, assembled and validated: ranges,
//!   PFNs inside guest memory, a limit on the total shared memory) and
//!   teardown.
//! - OpenChannel / OpenChannelResult, CloseChannel, rescind and
//!   RelIdReleased, Unload / UnloadResponse.
//!
//! Every guest message is copied out of the port queue and parsed with
//! `vmbus_protocol::parse` against the negotiated version; a malformed or
//! out-of-state message is rejected (counted, logged in `rejections`, no
//! reply), never trusted. Replies can be delayed and a rescind can be
//! injected at any step of a channel's life (see [`Faults`]).

use crate::channel::network::{NetConfig, NetController};
use crate::channel::storage::{StorageConfig, StorageController};
use crate::channel::synthvid::VideoHost;
use crate::channel::{ChannelEndpoint, ChannelEvent};
use crate::host::{Host, PortKind};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::{MONITOR_BITS_PER_GROUP, MONITOR_ID_MAX, PAGE_SIZE};
use uuid::Uuid;
use vmbus_protocol::gpadl::GpadlAssembler;
use vmbus_protocol::messages::{
    AllOffersDelivered, GpadlCreated, GpadlTorndown, ModifyChannelResponse, OfferChannel,
    OfferFlags, OpenChannelResult, RescindChannelOffer, UnloadResponse, VersionResponse,
    PIPE_MODE_MESSAGE,
};
use vmbus_protocol::version::{
    CONNECTION_ID_INITIATE_CONTACT_V5, CONNECTION_ID_LEGACY, VMBUS_MESSAGE_SINT,
};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion, VmbusMessage, WireGuid};
use zerocopy::IntoBytes;

/// The versions this host can speak, oldest first.
pub const SUPPORTED_VERSIONS: [ProtocolVersion; 8] = [
    ProtocolVersion::V2_4,
    ProtocolVersion::V3_0,
    ProtocolVersion::V4_0,
    ProtocolVersion::V4_1,
    ProtocolVersion::V5_0,
    ProtocolVersion::V5_1,
    ProtocolVersion::V5_2,
    ProtocolVersion::V5_3,
];

/// NTSTATUS STATUS_UNSUCCESSFUL, the failure status of GpadlCreated and
/// OpenChannelResult.
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;

/// NTSTATUS STATUS_QUOTA_EXCEEDED: what Hyper-V answers a GpadlHeader with
/// when the guest's GPADLs would describe more memory than it allows (Linux
/// commit "Drivers: hv: vmbus: check the creation_status in
/// vmbus_establish_gpadl()").
pub const STATUS_QUOTA_EXCEEDED: u32 = 0xC000_0044;

/// NTSTATUS STATUS_INVALID_PARAMETER: a ModifyChannel to a VP that does
/// not exist (the simulator's choice of status).
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;

/// GPADL ids dropped with a rescinded channel whose late bodies are ignored.
const DROPPED_GPADLS_REMEMBERED: usize = 64;

/// Sub-channels a device offers at most on its guest's request (the
/// data-path test device's `CREATE_SUB_CHANNELS`).
pub const MAX_DEVICE_SUB_CHANNELS: u16 = 8;

/// The largest GPADL (in 8-byte words of ranges and PFNs) the host assembles.
pub const MAX_GPADL_WORDS: usize = 8192;

/// Which host-side behaviour serves a device's channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Heartbeat,
    Shutdown,
    TimeSync,
    Kvp,
    /// Any other device: the host drains its ring and checks the packets
    /// but speaks no device protocol.
    Generic,
    /// The data-path test device (`vmbus_protocol::datapath_test`, a class
    /// of our own, test only): the host checks every byte the guest sends
    /// in each send shape and streams in-band and transfer-page packets
    /// back (`channel/datapath.rs`).
    DataPathTest,
    /// A synthetic SCSI controller or IDE-accelerator channel (storvsp's
    /// protocol, `channel/storage.rs`): the device's
    /// `StorageController` serves its LUNs from `hvsim::disk::Disk`s.
    Storage,
    /// A synthetic NIC (netvsp's protocol, `channel/network.rs`): the
    /// device's `NetController` moves frames to and from an
    /// `hvsim::net::NetBackend`.
    Network,
    /// The synthetic keyboard (`channel/keyboard.rs`).
    Keyboard,
    /// The synthetic HID mouse (`channel/mouse.rs`).
    Mouse,
    /// The synthetic video device (synthvid's VSP, `channel/synthvid.rs`):
    /// the device's `VideoHost` keeps the guest's mode, pointer and dirt
    /// and pictures its VRAM (`crate::screen`).
    Video,
}

impl DeviceKind {
    pub fn is_ic(self) -> bool {
        !matches!(
            self,
            DeviceKind::Generic
                | DeviceKind::DataPathTest
                | DeviceKind::Storage
                | DeviceKind::Network
                | DeviceKind::Keyboard
                | DeviceKind::Mouse
                | DeviceKind::Video
        )
    }
}

/// A device the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub class: Uuid,
    pub instance: Uuid,
    pub kind: DeviceKind,
    /// Offer with a monitor ID (monitored notification).
    pub monitored: bool,
    /// Offer as a message-mode pipe (integration components are).
    pub message_pipe: bool,
}

impl DeviceConfig {
    /// An integration component with its class GUID and a fixed instance.
    pub fn ic(kind: DeviceKind, instance: Uuid) -> Self {
        use vmbus_protocol::guid::class;
        let class = match kind {
            DeviceKind::Heartbeat => class::HEARTBEAT,
            DeviceKind::Shutdown => class::SHUTDOWN,
            DeviceKind::TimeSync => class::TIMESYNC,
            DeviceKind::Kvp => class::KVP,
            DeviceKind::Generic => Uuid::nil(),
            DeviceKind::DataPathTest => vmbus_protocol::datapath_test::CLASS,
            DeviceKind::Storage => class::SCSI,
            DeviceKind::Network => class::NIC,
            DeviceKind::Keyboard => class::KEYBOARD,
            DeviceKind::Mouse => class::MOUSE,
            DeviceKind::Video => class::SYNTHETIC_VIDEO,
        };
        DeviceConfig {
            class,
            instance,
            kind,
            monitored: false,
            // synthvid, like the ICs, is a message-mode pipe.
            message_pipe: kind.is_ic() || kind == DeviceKind::Video,
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub min_version: ProtocolVersion,
    pub max_version: ProtocolVersion,
    /// The connection ID returned in VersionResponse for 5.0 and later.
    pub msg_conn_id: u32,
    /// Undrained guest messages a control port holds before
    /// HvPostMessage answers InsufficientBuffers.
    pub port_capacity: usize,
    /// Total bytes all GPADLs may describe at once.
    pub gpadl_memory_limit: u64,
    /// Control messages handled per step (a slow server fills the port).
    pub messages_per_step: usize,
    /// Devices (by instance) offered without a dedicated interrupt: before
    /// 5.0 the guest marks their relid in the interrupt page's send half.
    pub shared_interrupt: Vec<Uuid>,
    /// The latency (100 ns units) written into the second monitor page for
    /// each monitored channel at open: how long the host may take to see
    /// a pending bit (it looks at every step).
    pub monitor_latency: u16,
    /// Virtual processors a channel may target (OpenChannel, ModifyChannel).
    /// Interrupts still reach the one simulated synic whatever the target.
    pub vp_count: u32,
    pub devices: Vec<DeviceConfig>,
    /// How the storage devices' controllers are set up (versions,
    /// sub-channels, transfer size); IDE-class devices get `ide` set.
    pub storage: StorageConfig,
    /// How the network devices' NIC hosts are set up (MAC, MTU,
    /// sub-channels, versions).
    pub network: NetConfig,
    /// How long (ns) the host keeps polling a channel's out ring, its
    /// interrupt_mask set, after it last found data there, as a VMBus
    /// server busy with a channel does (0: never; the host reads a ring
    /// only when signalled). See `ChannelEndpoint::poll_window_ns`.
    pub ring_poll_window_ns: u64,
}

/// The poll window of the hosted simulator (`hvsim` binary): longer than
/// the gap between a streaming guest's batches (it answers a completion
/// within microseconds), short enough that an idle channel sleeps again
/// at once. The seL4 host steps only on calls and 20 Hz ticks, so a
/// window there would leave data waiting for a tick: it does not poll.
pub const HOSTED_RING_POLL_WINDOW_NS: u64 = 1_000_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            min_version: ProtocolVersion::V2_4,
            max_version: ProtocolVersion::V5_3,
            msg_conn_id: CONNECTION_ID_LEGACY,
            port_capacity: 16,
            gpadl_memory_limit: 1280 << 20,
            messages_per_step: usize::MAX,
            vp_count: 1,
            shared_interrupt: Vec::new(),
            monitor_latency: 100,
            devices: Vec::new(),
            storage: StorageConfig::default(),
            network: NetConfig::default(),
            ring_poll_window_ns: 0,
        }
    }
}

/// Where a channel is in its life, as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered (or waiting for RequestOffers).
    Offered,
    /// OpenChannel accepted; the result may be delayed.
    Open,
    /// RescindChannelOffer sent; waiting for RelIdReleased.
    Rescinded,
}

/// A step of a channel's life at which a rescind can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescindPoint {
    /// Right after the offer is sent.
    AfterOffer,
    /// When a GpadlHeader for the channel arrives (before GpadlCreated).
    OnGpadlHeader,
    /// Right after GpadlCreated is sent.
    AfterGpadlCreated,
    /// When OpenChannel arrives, before the result is sent.
    OnOpen,
    /// Right after OpenChannelResult is sent.
    AfterOpenResult,
    /// When CloseChannel arrives.
    OnClose,
}

/// Faults the test or operator can inject into the control path.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Hold every reply this long (ns) before sending it.
    pub reply_delay_ns: u64,
    /// Rescind a channel (by instance GUID) when it reaches a step.
    pub rescind_at: Vec<(Uuid, RescindPoint)>,
    /// Stop handling guest control messages (they stay in the port queue).
    pub paused: bool,
}

/// What the server counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub messages_handled: u64,
    pub messages_rejected: u64,
    pub offers_sent: u64,
    pub rescinds_sent: u64,
    pub gpadls_created: u64,
    pub gpadls_refused: u64,
    pub gpadls_torn_down: u64,
    /// GPADLs refused because the total would exceed the memory limit
    /// (also counted in `gpadls_refused`).
    pub gpadls_over_limit: u64,
    /// GpadlBody messages for a GPADL dropped with its rescinded channel
    /// (the guest posted them before it saw the rescind): ignored.
    pub bodies_after_rescind: u64,
    pub opens_refused: u64,
    /// ModifyChannel messages that moved a channel to a valid VP.
    pub channels_retargeted: u64,
    /// Pending bits of monitored channels taken as signals.
    pub monitor_signals: u64,
    /// HvSignalEvent for a monitored channel: allowed (Linux's low-latency
    /// channels do it), counted.
    pub hypercall_signals_on_monitored: u64,
    /// Interrupt-page send-half bits taken for channels without a
    /// dedicated interrupt (before 5.0).
    pub interrupt_page_marks: u64,
    /// What Hyper-V's rules forbid that is not a malformed message (those
    /// are `messages_rejected`): a GPADL still held at Unload or at
    /// RelIdReleased (leaked). Each is logged in `violations`.
    pub rule_violations: u64,
}

impl Channel {
    fn dedicated_interrupt(&self, config: &ServerConfig) -> bool {
        !config.shared_interrupt.contains(&self.device.instance)
    }
}

struct Channel {
    relid: u32,
    device: DeviceConfig,
    state: ChannelState,
    offered: bool,
    monitor_id: Option<u8>,
    connection_id: u32,
    endpoint: Option<ChannelEndpoint>,
    /// The VP its interrupts target (OpenChannel, then ModifyChannel).
    target_vp: u32,
    /// 0 for a primary channel; a sub-channel shares its primary's class
    /// and instance.
    sub_channel_index: u16,
}

struct Gpadl {
    relid: u32,
    assembler: Option<Box<GpadlAssembler<MAX_GPADL_WORDS>>>,
    /// Pages of a created single-range GPADL, in order.
    pages: Vec<u64>,
    bytes: u64,
    /// Used as the ring of an open channel.
    in_use: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Connection {
    version: ProtocolVersion,
    message_sint: u8,
    message_connection: u32,
    monitor_pages: (u64, u64),
    /// The interrupt page a pre-5.0 InitiateContact named.
    interrupt_page: Option<u64>,
}

struct Delayed {
    due_ns: u64,
    sint: u8,
    bytes: Vec<u8>,
}

/// The VMBus server.
pub struct Server {
    pub config: ServerConfig,
    pub faults: Faults,
    pub stats: ServerStats,
    /// Why messages were rejected, newest last (bounded).
    pub rejections: VecDeque<String>,
    /// Why rules were violated, newest last (bounded).
    pub violations: VecDeque<String>,
    connection: Option<Connection>,
    /// GPADLs being assembled when their channel was rescinded.
    dropped_gpadls: VecDeque<u32>,
    offers_requested: bool,
    channels: BTreeMap<u32, Channel>,
    gpadls: BTreeMap<u32, Gpadl>,
    delayed: VecDeque<Delayed>,
    now_ns: u64,
    next_relid: u32,
    /// The storage devices' controllers by instance (one for a primary
    /// and its sub-channels; they outlive a rescind, as the disks do).
    pub storage: BTreeMap<Uuid, StorageController>,
    /// The network devices' NIC hosts by instance (one for a primary and
    /// its sub-channels; they outlive a rescind, as the backend does).
    pub network: BTreeMap<Uuid, NetController>,
    /// The synthetic video devices' hosts by instance.
    pub video: BTreeMap<Uuid, VideoHost>,
}

/// Event connection IDs: one per channel, above the control IDs.
const EVENT_CONNECTION_BASE: u32 = 0x1_0000;

fn parse_version(value: u32) -> ProtocolVersion {
    ProtocolVersion(value)
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            faults: Faults::default(),
            stats: ServerStats::default(),
            rejections: VecDeque::new(),
            violations: VecDeque::new(),
            dropped_gpadls: VecDeque::new(),
            connection: None,
            offers_requested: false,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            delayed: VecDeque::new(),
            now_ns: 0,
            next_relid: 1,
            storage: BTreeMap::new(),
            network: BTreeMap::new(),
            video: BTreeMap::new(),
        }
    }

    /// Opens the control ports and creates the configured devices' channels.
    pub fn attach<M: GuestMemory>(&mut self, host: &mut Host<M>) {
        let capacity = self.config.port_capacity;
        host.open_port(CONNECTION_ID_LEGACY, PortKind::Message { capacity });
        if self.config.max_version >= ProtocolVersion::V5_0 {
            host.open_port(
                CONNECTION_ID_INITIATE_CONTACT_V5,
                PortKind::Message { capacity },
            );
        }
        for device in self.config.devices.clone() {
            self.create_channel(device);
        }
    }

    /// The negotiated version, if connected.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.connection.map(|c| c.version)
    }

    pub fn channel_state(&self, relid: u32) -> Option<ChannelState> {
        self.channels.get(&relid).map(|c| c.state)
    }

    /// The device a channel (offered, open or rescinded) was created for.
    pub fn device(&self, relid: u32) -> Option<&DeviceConfig> {
        self.channels.get(&relid).map(|c| &c.device)
    }

    /// The relid of the (unrescinded) channel with this instance GUID.
    pub fn relid_of(&self, instance: Uuid) -> Option<u32> {
        self.channels
            .values()
            .find(|c| c.device.instance == instance && c.state != ChannelState::Rescinded)
            .map(|c| c.relid)
    }

    pub fn gpadl_count(&self) -> usize {
        self.gpadls.len()
    }

    /// Bytes currently shared through created GPADLs.
    pub fn gpadl_bytes(&self) -> u64 {
        self.gpadls.values().map(|g| g.bytes).sum()
    }

    pub fn endpoint(&self, relid: u32) -> Option<&ChannelEndpoint> {
        self.channels.get(&relid)?.endpoint.as_ref()
    }

    pub fn endpoint_mut(&mut self, relid: u32) -> Option<&mut ChannelEndpoint> {
        self.channels.get_mut(&relid)?.endpoint.as_mut()
    }

    /// The first storage device (lowest instance) with a controller: its
    /// instance and the relid of its primary channel if it is offered
    /// (not rescinded).
    pub fn storage_primary(&self) -> Option<(Uuid, Option<u32>)> {
        let instance = *self.storage.keys().next()?;
        let relid = self
            .channels
            .values()
            .find(|c| {
                c.device.instance == instance
                    && c.sub_channel_index == 0
                    && c.state != ChannelState::Rescinded
            })
            .map(|c| c.relid);
        Some((instance, relid))
    }

    /// A storage channel's endpoint with its device's controller.
    pub fn storage_channel(
        &mut self,
        relid: u32,
    ) -> Option<(&mut StorageController, &mut ChannelEndpoint)> {
        let channel = self.channels.get_mut(&relid)?;
        let controller = self.storage.get_mut(&channel.device.instance)?;
        Some((controller, channel.endpoint.as_mut()?))
    }

    /// The first network device (lowest instance) with a NIC host: its
    /// instance and the relid of its primary channel if it is offered
    /// (not rescinded).
    pub fn network_primary(&self) -> Option<(Uuid, Option<u32>)> {
        let instance = *self.network.keys().next()?;
        let relid = self
            .channels
            .values()
            .find(|c| {
                c.device.instance == instance
                    && c.sub_channel_index == 0
                    && c.state != ChannelState::Rescinded
            })
            .map(|c| c.relid);
        Some((instance, relid))
    }

    /// Channels (offered, open or rescinded and not yet released) of the
    /// device with this instance GUID.
    pub fn channels_of(&self, instance: Uuid) -> usize {
        self.channels
            .values()
            .filter(|c| c.device.instance == instance)
            .count()
    }

    /// A network channel's endpoint with its device's NIC host.
    pub fn network_channel(
        &mut self,
        relid: u32,
    ) -> Option<(&mut NetController, &mut ChannelEndpoint)> {
        let channel = self.channels.get_mut(&relid)?;
        let controller = self.network.get_mut(&channel.device.instance)?;
        Some((controller, channel.endpoint.as_mut()?))
    }

    /// A video channel's endpoint with its device's host.
    pub fn video_channel(&mut self, relid: u32) -> Option<(&mut VideoHost, &mut ChannelEndpoint)> {
        let channel = self.channels.get_mut(&relid)?;
        let video = self.video.get_mut(&channel.device.instance)?;
        Some((video, channel.endpoint.as_mut()?))
    }

    /// Each open channel's relid, device kind and counters, in relid order.
    pub fn channel_stats(&self) -> Vec<(u32, DeviceKind, crate::channel::ChannelStats)> {
        self.channels
            .values()
            .filter_map(|c| {
                let endpoint = c.endpoint.as_ref()?;
                Some((c.relid, endpoint.kind, endpoint.stats))
            })
            .collect()
    }

    /// The signal accounting of every open channel, one entry each
    /// (`relid R KIND: packets P signals S called-for C late L
    /// unnecessary U`).
    pub fn signal_report(&self) -> Vec<String> {
        self.channel_stats()
            .into_iter()
            .map(|(relid, kind, stats)| {
                alloc::format!("relid {relid} {kind:?}: {}", stats.signal_report())
            })
            .collect()
    }

    /// Relids of open channels.
    pub fn open_channels(&self) -> Vec<u32> {
        self.channels
            .values()
            .filter(|c| c.endpoint.is_some())
            .map(|c| c.relid)
            .collect()
    }

    fn reject(&mut self, why: String) {
        self.stats.messages_rejected += 1;
        if self.rejections.len() == 64 {
            self.rejections.pop_front();
        }
        self.rejections.push_back(why);
    }

    fn violation(&mut self, why: String) {
        self.stats.rule_violations += 1;
        if self.violations.len() == 64 {
            self.violations.pop_front();
        }
        self.violations.push_back(why);
    }

    /// Each GPADL still held for `relid` (any relid if `None`) is a leak.
    fn count_leaked_gpadls(&mut self, relid: Option<u32>, when: &str) {
        let leaked: Vec<(u32, u32, u64)> = self
            .gpadls
            .iter()
            .filter(|(_, g)| relid.is_none_or(|r| g.relid == r))
            .map(|(id, g)| (*id, g.relid, g.bytes))
            .collect();
        for (id, relid, bytes) in leaked {
            self.violation(alloc::format!(
                "GPADL {id:#x} of relid {relid} ({bytes} bytes) still held at {when}"
            ));
        }
    }

    fn drop_gpadl_being_created(&mut self, id: u32) {
        if self.dropped_gpadls.len() == DROPPED_GPADLS_REMEMBERED {
            self.dropped_gpadls.pop_front();
        }
        self.dropped_gpadls.push_back(id);
    }

    fn allocate_relid(&mut self) -> u32 {
        // Relids 1..2047 (event flag bits); reuse freed ones.
        let mut relid = self.next_relid;
        for _ in 0..2047 {
            if !self.channels.contains_key(&relid) {
                self.next_relid = if relid >= 2047 { 1 } else { relid + 1 };
                return relid;
            }
            relid = if relid >= 2047 { 1 } else { relid + 1 };
        }
        0
    }

    fn allocate_monitor_id(&self) -> Option<u8> {
        (0..=MONITOR_ID_MAX).find(|id| !self.channels.values().any(|c| c.monitor_id == Some(*id)))
    }

    fn create_channel(&mut self, device: DeviceConfig) -> u32 {
        if device.kind == DeviceKind::Storage {
            let config = StorageConfig {
                ide: device.class == vmbus_protocol::guid::class::IDE,
                ..self.config.storage
            };
            self.storage
                .entry(device.instance)
                .or_insert_with(|| StorageController::new(config));
        }
        if device.kind == DeviceKind::Network {
            let config = self.config.network;
            self.network
                .entry(device.instance)
                .or_insert_with(|| NetController::new(config));
        }
        if device.kind == DeviceKind::Video {
            self.video.entry(device.instance).or_default();
        }
        let relid = self.allocate_relid();
        let monitor_id = if device.monitored {
            self.allocate_monitor_id()
        } else {
            None
        };
        self.channels.insert(
            relid,
            Channel {
                relid,
                device,
                state: ChannelState::Offered,
                offered: false,
                monitor_id,
                connection_id: EVENT_CONNECTION_BASE + relid,
                endpoint: None,
                target_vp: 0,
                sub_channel_index: 0,
            },
        );
        relid
    }

    /// The device offers `count` sub-channels of the open primary `primary`
    /// (test hook: on Hyper-V the guest asks in the device's own protocol,
    /// e.g. storvsc's operation 13). Returns their relids; none if the
    /// primary is not open.
    pub fn offer_sub_channels<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        primary: u32,
        count: u16,
    ) -> Vec<u32> {
        let Some(channel) = self.channels.get(&primary) else {
            return Vec::new();
        };
        if channel.state != ChannelState::Open || channel.sub_channel_index != 0 {
            return Vec::new();
        }
        let device = channel.device.clone();
        let taken = self
            .channels
            .values()
            .filter(|c| c.device.instance == device.instance && c.sub_channel_index != 0)
            .map(|c| c.sub_channel_index)
            .max()
            .unwrap_or(0);
        let mut relids = Vec::new();
        for index in 1..=count {
            relids.push(self.offer_sub_channel(host, device.clone(), taken + index));
        }
        relids
    }

    /// Fault injection: an offer of sub-channel `index` of `device`,
    /// whether or not a primary of that instance exists.
    pub fn offer_sub_channel<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        device: DeviceConfig,
        index: u16,
    ) -> u32 {
        let relid = self.create_channel(device);
        if let Some(channel) = self.channels.get_mut(&relid) {
            channel.sub_channel_index = index;
        }
        if self.offers_requested {
            self.send_offer(host, relid);
        }
        relid
    }

    /// The primary of sub-channel `relid` (None for a primary or unknown).
    pub fn primary_of(&self, relid: u32) -> Option<u32> {
        let channel = self.channels.get(&relid)?;
        if channel.sub_channel_index == 0 {
            return None;
        }
        self.channels
            .values()
            .find(|c| {
                c.device.instance == channel.device.instance
                    && c.sub_channel_index == 0
                    && c.state != ChannelState::Rescinded
            })
            .map(|c| c.relid)
    }

    /// The sub-channels of the primary `relid` (by instance), with their index.
    pub fn sub_channels(&self, relid: u32) -> Vec<(u32, u16)> {
        let Some(primary) = self.channels.get(&relid) else {
            return Vec::new();
        };
        self.channels
            .values()
            .filter(|c| c.device.instance == primary.device.instance && c.sub_channel_index != 0)
            .map(|c| (c.relid, c.sub_channel_index))
            .collect()
    }

    /// Adds a device while the guest runs: offered at once if the guest
    /// has asked for offers, else at its next RequestOffers.
    pub fn add_device<M: GuestMemory>(&mut self, host: &mut Host<M>, device: DeviceConfig) -> u32 {
        let relid = self.create_channel(device);
        if self.offers_requested {
            self.send_offer(host, relid);
        }
        relid
    }

    /// The SINT channel events and control messages go to.
    pub fn message_sint_for_signals(&self) -> u8 {
        self.message_sint()
    }

    fn message_sint(&self) -> u8 {
        self.connection
            .map_or(VMBUS_MESSAGE_SINT, |c| c.message_sint)
    }

    /// Sends a control message now, or after the configured reply delay.
    fn reply<M: GuestMemory>(&mut self, host: &mut Host<M>, bytes: &[u8]) {
        if self.faults.reply_delay_ns > 0 {
            self.delayed.push_back(Delayed {
                due_ns: self.now_ns + self.faults.reply_delay_ns,
                sint: self.message_sint(),
                bytes: bytes.to_vec(),
            });
        } else {
            host.send_message(self.message_sint(), bytes);
        }
    }

    /// Sends raw bytes as a control message (fault injection: malformed,
    /// unknown or out-of-order messages).
    pub fn send_raw<M: GuestMemory>(&mut self, host: &mut Host<M>, bytes: &[u8]) {
        host.send_message(self.message_sint(), bytes);
    }

    fn rescind_point(&mut self, host_needs: RescindPoint, relid: u32) -> bool {
        let Some(channel) = self.channels.get(&relid) else {
            return false;
        };
        let instance = channel.device.instance;
        if let Some(index) = self
            .faults
            .rescind_at
            .iter()
            .position(|&(i, p)| i == instance && p == host_needs)
        {
            self.faults.rescind_at.remove(index);
            return true;
        }
        false
    }

    fn send_offer<M: GuestMemory>(&mut self, host: &mut Host<M>, relid: u32) {
        let Some(channel) = self.channels.get_mut(&relid) else {
            return;
        };
        if channel.state == ChannelState::Rescinded {
            return;
        }
        let mut offer = OfferChannel::empty();
        offer.interface_type = WireGuid::from_uuid(channel.device.class);
        offer.interface_instance = WireGuid::from_uuid(channel.device.instance);
        let mut flags = OfferFlags::empty();
        if channel.device.message_pipe {
            flags |= OfferFlags::NAMED_PIPE_MODE;
            offer.user_def[..4].copy_from_slice(&PIPE_MODE_MESSAGE.to_le_bytes());
        }
        if channel.device.kind == DeviceKind::Storage
            && channel.device.class == vmbus_protocol::guid::class::IDE
        {
            // As storvsp: the IDE channel and device (0, 0) for old drivers.
            let properties = vmbus_protocol::storage::IdeOfferProperties {
                flags: vmbus_protocol::storage::IDE_OFFER_FLAG_IDE_DEVICE.into(),
                ..Default::default()
            };
            offer.user_def[..24].copy_from_slice(properties.as_bytes());
        }
        if let Some(monitor_id) = channel.monitor_id {
            flags |= OfferFlags::MONITORED_NOTIFICATION;
            offer.monitor_id = monitor_id;
            offer.monitor_allocated = 1;
        }
        offer.chn_flags = flags.bits().into();
        offer.child_relid = relid.into();
        offer.sub_channel_index = channel.sub_channel_index.into();
        let dedicated = !self
            .config
            .shared_interrupt
            .contains(&channel.device.instance);
        offer.is_dedicated_interrupt = (dedicated as u16).into();
        offer.connection_id = channel.connection_id.into();
        channel.offered = true;
        self.stats.offers_sent += 1;
        let bytes = offer.as_bytes().to_vec();
        host.send_message(self.message_sint(), &bytes);
        if self.rescind_point(RescindPoint::AfterOffer, relid) {
            self.rescind(host, relid);
        }
    }

    /// Rescinds a channel: closes it host-side and sends RescindChannelOffer.
    /// The relid stays reserved until the guest sends RelIdReleased.
    pub fn rescind<M: GuestMemory>(&mut self, host: &mut Host<M>, relid: u32) -> bool {
        // A primary's sub-channels are rescinded before it.
        let subs: Vec<u32> = match self.channels.get(&relid) {
            Some(c) if c.sub_channel_index == 0 => self
                .sub_channels(relid)
                .into_iter()
                .map(|(sub, _)| sub)
                .collect(),
            _ => Vec::new(),
        };
        for sub in subs {
            self.rescind(host, sub);
        }
        let Some(channel) = self.channels.get_mut(&relid) else {
            return false;
        };
        if channel.state == ChannelState::Rescinded {
            return false;
        }
        channel.state = ChannelState::Rescinded;
        channel.endpoint = None;
        if let Some(controller) = self.storage.get_mut(&channel.device.instance) {
            // Requests in flight on it are never completed.
            controller.forget_channel(relid);
        }
        if let Some(controller) = self.network.get_mut(&channel.device.instance) {
            controller.forget_channel(relid);
        }
        host.close_port(channel.connection_id);
        let offered = channel.offered;
        for gpadl in self.gpadls.values_mut().filter(|g| g.relid == relid) {
            gpadl.in_use = false;
        }
        // A GPADL still being assembled goes with the channel (the guest
        // retires its id); its bodies may still be on the way.
        let incomplete: Vec<u32> = self
            .gpadls
            .iter()
            .filter(|(_, g)| g.relid == relid && g.assembler.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in incomplete {
            self.gpadls.remove(&id);
            self.drop_gpadl_being_created(id);
        }
        if offered && self.connection.is_some() {
            let mut message = RescindChannelOffer::empty();
            message.child_relid = relid.into();
            self.stats.rescinds_sent += 1;
            host.send_message(self.message_sint(), message.as_bytes());
        } else {
            // Never offered: nothing for the guest to release.
            self.channels.remove(&relid);
        }
        true
    }

    /// Whether some open channel's out ring is being polled: the host
    /// should step again soon even if the guest does not call.
    pub fn polling(&self) -> bool {
        self.channels
            .values()
            .any(|channel| channel.endpoint.as_ref().is_some_and(|e| e.polling()))
    }

    /// Handles queued guest messages, due delayed replies and channel work.
    pub fn step<M: GuestMemory>(&mut self, host: &mut Host<M>, now_ns: u64) {
        self.now_ns = now_ns;
        while let Some(front) = self.delayed.front() {
            if front.due_ns > now_ns {
                break;
            }
            let delayed = self.delayed.pop_front().expect("front exists");
            host.send_message(delayed.sint, &delayed.bytes);
        }
        if !self.faults.paused {
            let mut budget = self.config.messages_per_step;
            let mut ports = alloc::vec![CONNECTION_ID_LEGACY, CONNECTION_ID_INITIATE_CONTACT_V5];
            if let Some(connection) = self.connection {
                if !ports.contains(&connection.message_connection) {
                    ports.push(connection.message_connection);
                }
            }
            'ports: for port in ports {
                while budget > 0 {
                    let Some(bytes) = host.take_posted(port) else {
                        break;
                    };
                    budget -= 1;
                    self.handle(host, port, &bytes);
                    if self.faults.paused {
                        break 'ports;
                    }
                }
            }
        }
        self.step_channels(host, now_ns);
    }

    fn step_channels<M: GuestMemory>(&mut self, host: &mut Host<M>, now_ns: u64) {
        let monitor_page2 = self.connection.map(|c| c.monitor_pages.1);
        let interrupt_page = self.connection.and_then(|c| c.interrupt_page);
        let relids: Vec<u32> = self.open_channels();
        let mut sub_channel_requests = Vec::new();
        let mut storage_sub_channel_requests = Vec::new();
        let mut network_sub_channel_requests = Vec::new();
        for relid in relids {
            // A sub-channel's device is its primary's: GPA-direct packets
            // on it resolve through the primary's GPADLs too (as Hyper-V
            // lets storvsc and netvsc sub-channels use the buffers
            // shared on the primary).
            let primary = self.primary_of(relid);
            let Some(channel) = self.channels.get_mut(&relid) else {
                continue;
            };
            let mut signals = host.take_signals(channel.connection_id);
            if channel.monitor_id.is_some() {
                self.stats.hypercall_signals_on_monitored += signals;
            }
            if let (Some(monitor_id), Some(page)) = (channel.monitor_id, monitor_page2) {
                // The guest's monitor page: test-and-clear our pending bit.
                let group = monitor_id as usize / MONITOR_BITS_PER_GROUP;
                let bit = 1u32 << (monitor_id as usize % MONITOR_BITS_PER_GROUP);
                let gpa = page + hyperv_defs::MonitorPage::pending_offset(group) as u64;
                if let Ok(old) = host.memory.fetch_and_u32(gpa, !bit) {
                    if old & bit != 0 {
                        signals += 1;
                        self.stats.monitor_signals += 1;
                    }
                }
            }
            if let (false, Some(page)) = (channel.dedicated_interrupt(&self.config), interrupt_page)
            {
                let gpa = page + PAGE_SIZE / 2 + (relid as u64 / 32) * 4;
                let bit = 1u32 << (relid % 32);
                if host
                    .memory
                    .fetch_and_u32(gpa, !bit)
                    .is_ok_and(|old| old & bit != 0)
                {
                    self.stats.interrupt_page_marks += 1;
                }
            }
            let Some(endpoint) = channel.endpoint.as_mut() else {
                continue;
            };
            let sint = self
                .connection
                .map_or(VMBUS_MESSAGE_SINT, |c| c.message_sint);
            // GPA-direct packets resolve only through the channel's own
            // created GPADLs (the ring's excluded).
            let ring_gpadl = endpoint.ring_gpadl;
            endpoint.gpadls.sync(
                self.gpadls
                    .iter()
                    .filter(|(id, g)| {
                        (g.relid == relid || Some(g.relid) == primary)
                            && g.assembler.is_none()
                            && **id != ring_gpadl
                    })
                    .map(|(id, g)| (*id, g.pages.as_slice())),
            );
            let event = endpoint.step(&host.memory, signals, now_ns);
            let mut signal = event == ChannelEvent::SignalGuest;
            if let Some(controller) = self.storage.get_mut(&channel.device.instance) {
                let packets = core::mem::take(&mut endpoint.storage_inbox);
                if controller.serve(
                    endpoint,
                    &host.memory,
                    relid,
                    primary.is_none(),
                    packets,
                    now_ns,
                ) {
                    endpoint.stats.signals_to_guest += 1;
                    signal = true;
                }
                if let Some(count) = controller.sub_channels_requested.take() {
                    storage_sub_channel_requests.push((relid, count));
                }
            }
            if let Some(controller) = self.network.get_mut(&channel.device.instance) {
                let packets = core::mem::take(&mut endpoint.storage_inbox);
                if controller.serve(
                    endpoint,
                    &host.memory,
                    relid,
                    channel.sub_channel_index,
                    packets,
                ) {
                    endpoint.stats.signals_to_guest += 1;
                    signal = true;
                }
                if let Some(count) = controller.sub_channels_requested.take() {
                    network_sub_channel_requests.push((relid, count));
                }
            }
            if let Some(video) = self.video.get_mut(&channel.device.instance) {
                let packets = core::mem::take(&mut endpoint.storage_inbox);
                if video.serve(endpoint, &host.memory, packets) {
                    endpoint.stats.signals_to_guest += 1;
                    signal = true;
                }
            }
            if signal {
                host.signal_guest(sint, relid as u16);
            }
            if let Some(count) = endpoint.datapath.sub_channels_requested.take() {
                sub_channel_requests.push((relid, count));
            }
        }
        for (relid, count) in sub_channel_requests {
            // Bounded: at most MAX_DEVICE_SUB_CHANNELS per primary in all.
            let taken = self.sub_channels(relid).len() as u16;
            let count = count.min(MAX_DEVICE_SUB_CHANNELS.saturating_sub(taken));
            if count > 0 && self.primary_of(relid).is_none() {
                self.offer_sub_channels(host, relid, count);
            }
        }
        // Storage: the count is the sub-channels wanted in all (the
        // controller bounded it by what it advertised).
        storage_sub_channel_requests.extend(network_sub_channel_requests);
        for (relid, count) in storage_sub_channel_requests {
            let taken = self.sub_channels(relid).len() as u16;
            let more = count.min(MAX_DEVICE_SUB_CHANNELS).saturating_sub(taken);
            if more > 0 && self.primary_of(relid).is_none() {
                let offered = self.offer_sub_channels(host, relid, more).len() as u64;
                let instance = self.channels.get(&relid).map(|c| c.device.instance);
                if let Some(controller) = instance.and_then(|i| self.storage.get_mut(&i)) {
                    controller.stats.sub_channels_offered += offered;
                }
                if let Some(controller) = instance.and_then(|i| self.network.get_mut(&i)) {
                    controller.stats.sub_channels_offered += offered;
                }
            }
        }
        self.stray_monitor_bits(host);
    }

    /// A pending bit no open monitored channel owns goes nowhere: the
    /// guest signalled a channel that is not monitored (or not open) the
    /// monitored way, and on Hyper-V that channel would stall.
    fn stray_monitor_bits<M: GuestMemory>(&mut self, host: &mut Host<M>) {
        let Some(page) = self.connection.map(|c| c.monitor_pages.1) else {
            return;
        };
        // Only bits no open monitored channel owns are taken here: the
        // guest runs concurrently (hosted), and an owned bit it sets after
        // the channel scan of this step is that channel's signal for the
        // next step. Clearing it lost the signal for good (the ring stayed
        // non-empty, so the guest never signalled again).
        let mut owned = [0u32; hyperv_defs::MONITOR_GROUPS];
        for channel in self.channels.values() {
            if let (Some(id), true) = (channel.monitor_id, channel.endpoint.is_some()) {
                let id = id as usize;
                if let Some(word) = owned.get_mut(id / MONITOR_BITS_PER_GROUP) {
                    *word |= 1 << (id % MONITOR_BITS_PER_GROUP);
                }
            }
        }
        for (group, owned) in owned.iter().enumerate() {
            let gpa = page + hyperv_defs::MonitorPage::pending_offset(group) as u64;
            let Ok(old) = host.memory.fetch_and_u32(gpa, *owned) else {
                continue;
            };
            let stray = old & !owned;
            for bit in 0..MONITOR_BITS_PER_GROUP {
                if stray & (1 << bit) != 0 {
                    let id = group * MONITOR_BITS_PER_GROUP + bit;
                    self.violation(alloc::format!(
                        "monitor pending bit {id} set for no open monitored channel"
                    ));
                }
            }
        }
    }

    /// Monitored channels being opened: the host's half of the second
    /// monitor page (the latency it promises and what the bit stands for).
    fn write_monitor_parameters<M: GuestMemory>(&self, host: &mut Host<M>, relid: u32) {
        let (Some(channel), Some(connection)) = (self.channels.get(&relid), self.connection) else {
            return;
        };
        let Some(id) = channel.monitor_id else {
            return;
        };
        let (group, bit) = (
            id as usize / MONITOR_BITS_PER_GROUP,
            id as usize % MONITOR_BITS_PER_GROUP,
        );
        let page = connection.monitor_pages.1;
        let index = (group * MONITOR_BITS_PER_GROUP + bit) as u64;
        let latency =
            page + core::mem::offset_of!(hyperv_defs::MonitorPage, latency) as u64 + index * 2;
        let parameter =
            page + core::mem::offset_of!(hyperv_defs::MonitorPage, parameter) as u64 + index * 8;
        let _ = host
            .memory
            .write(latency, &self.config.monitor_latency.to_le_bytes());
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&channel.connection_id.to_le_bytes());
        let _ = host.memory.write(parameter, &entry);
    }

    fn handle<M: GuestMemory>(&mut self, host: &mut Host<M>, port: u32, bytes: &[u8]) {
        let version = self
            .connection
            .map_or(self.config.max_version, |c| c.version);
        let message = match parse(bytes, version) {
            Ok(message) => message,
            Err(error) => {
                self.reject(alloc::format!("port {port:#x}: {error}"));
                return;
            }
        };
        self.stats.messages_handled += 1;
        if let ChannelMessage::InitiateContact(contact) = &message {
            self.initiate_contact(host, port, contact);
            return;
        }
        let Some(connection) = self.connection else {
            self.reject(alloc::format!("{message:?} before InitiateContact"));
            return;
        };
        if port != connection.message_connection {
            self.reject(alloc::format!(
                "message on connection {port:#x}, negotiated {:#x}",
                connection.message_connection
            ));
            return;
        }
        match message {
            ChannelMessage::RequestOffers(_) => {
                if self.offers_requested {
                    self.reject("second RequestOffers".into());
                    return;
                }
                self.offers_requested = true;
                let relids: Vec<u32> = self.channels.keys().copied().collect();
                for relid in relids {
                    self.send_offer(host, relid);
                }
                let done = AllOffersDelivered::empty();
                host.send_message(self.message_sint(), done.as_bytes());
            }
            ChannelMessage::GpadlHeader(header) => self.gpadl_header(host, header),
            ChannelMessage::GpadlBody(body) => self.gpadl_body(host, body),
            ChannelMessage::GpadlTeardown(teardown) => {
                let relid = teardown.child_relid.get();
                let id = teardown.gpadl_id.get();
                match self.gpadls.get(&id) {
                    Some(gpadl) if gpadl.relid == relid && gpadl.assembler.is_none() => {
                        if gpadl.in_use {
                            self.reject(alloc::format!(
                                "teardown of GPADL {id:#x} while its channel is open"
                            ));
                            return;
                        }
                        self.gpadls.remove(&id);
                        self.stats.gpadls_torn_down += 1;
                        let mut reply = GpadlTorndown::empty();
                        reply.gpadl_id = id.into();
                        let bytes = reply.as_bytes().to_vec();
                        self.reply(host, &bytes);
                    }
                    _ => self.reject(alloc::format!(
                        "teardown of unknown GPADL {id:#x} (relid {relid})"
                    )),
                }
            }
            ChannelMessage::OpenChannel(open) => self.open_channel(host, &open),
            ChannelMessage::ModifyChannel(modify) => self.modify_channel(host, &modify),
            ChannelMessage::CloseChannel(close) => {
                let relid = close.child_relid.get();
                let open = self
                    .channels
                    .get(&relid)
                    .is_some_and(|c| c.state == ChannelState::Open);
                if !open {
                    self.reject(alloc::format!(
                        "CloseChannel of relid {relid} that is not open"
                    ));
                    return;
                }
                if self.rescind_point(RescindPoint::OnClose, relid) {
                    self.rescind(host, relid);
                    return;
                }
                self.close_channel(host, relid);
            }
            ChannelMessage::RelIdReleased(released) => {
                let relid = released.child_relid.get();
                let rescinded = self
                    .channels
                    .get(&relid)
                    .is_some_and(|c| c.state == ChannelState::Rescinded);
                if !rescinded {
                    self.reject(alloc::format!(
                        "RelIdReleased for relid {relid} that was not rescinded"
                    ));
                    return;
                }
                if self.gpadls.values().any(|g| g.relid == relid) {
                    // The guest must tear its GPADLs down first; the host
                    // drops them now as Hyper-V does on release.
                    self.count_leaked_gpadls(Some(relid), "RelIdReleased");
                    self.gpadls.retain(|_, g| g.relid != relid);
                }
                self.channels.remove(&relid);
            }
            ChannelMessage::Unload(_) => {
                for relid in self.channels.keys().copied().collect::<Vec<_>>() {
                    self.close_channel(host, relid);
                }
                // Rescinded channels are forgotten, and sub-channels (the
                // guest asks for them again); the rest will be offered
                // again after the next InitiateContact/RequestOffers.
                self.channels
                    .retain(|_, c| c.state != ChannelState::Rescinded && c.sub_channel_index == 0);
                for channel in self.channels.values_mut() {
                    channel.offered = false;
                }
                self.count_leaked_gpadls(None, "Unload");
                self.gpadls.clear();
                self.dropped_gpadls.clear();
                self.offers_requested = false;
                let reply = UnloadResponse::empty();
                let bytes = reply.as_bytes().to_vec();
                self.reply(host, &bytes);
                if connection.message_connection != CONNECTION_ID_LEGACY
                    && connection.message_connection != CONNECTION_ID_INITIATE_CONTACT_V5
                {
                    host.close_port(connection.message_connection);
                }
                self.connection = None;
            }
            other => self.reject(alloc::format!("unexpected from guest: {other:?}")),
        }
    }

    fn initiate_contact<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        port: u32,
        contact: &vmbus_protocol::messages::InitiateContact,
    ) {
        let requested = parse_version(contact.version_requested.get());
        let expected_port = requested.initiate_contact_connection_id();
        if port != expected_port {
            self.reject(alloc::format!(
                "InitiateContact {requested} on connection {port}, expected {expected_port}"
            ));
            return;
        }
        if self.connection.is_some() {
            self.reject("InitiateContact while connected (Unload first)".into());
            return;
        }
        let message_sint = if requested.uses_message_sint() {
            contact.msg_sint()
        } else {
            VMBUS_MESSAGE_SINT
        };
        let monitor_pages = (contact.monitor_page1.get(), contact.monitor_page2.get());
        let page_ok = |gpa: u64| {
            gpa != 0 && gpa.is_multiple_of(PAGE_SIZE) && host.memory.contains(gpa, PAGE_SIZE)
        };
        let supported = SUPPORTED_VERSIONS.contains(&requested)
            && requested >= self.config.min_version
            && requested <= self.config.max_version;
        // Before 5.0 the field names the interrupt page (0: none).
        let interrupt_page = (!requested.uses_message_sint())
            .then(|| contact.interrupt_page_or_target_info.get())
            .filter(|gpa| *gpa != 0);
        let valid = message_sint < 16
            && interrupt_page.is_none_or(page_ok)
            && page_ok(monitor_pages.0)
            && page_ok(monitor_pages.1)
            && monitor_pages.0 != monitor_pages.1;
        let mut response = VersionResponse::empty();
        if supported && valid {
            let message_connection = requested.message_connection_id(self.config.msg_conn_id);
            if !host.has_port(message_connection) {
                host.open_port(
                    message_connection,
                    PortKind::Message {
                        capacity: self.config.port_capacity,
                    },
                );
            }
            self.connection = Some(Connection {
                version: requested,
                message_sint,
                message_connection,
                monitor_pages,
                interrupt_page,
            });
            response.version_supported = 1;
            response.msg_conn_id = if requested.uses_message_sint() {
                message_connection.into()
            } else {
                0.into()
            };
        } else if supported {
            self.reject(alloc::format!(
                "InitiateContact {requested}: bad SINT {message_sint} or monitor pages {monitor_pages:x?}"
            ));
        }
        // The response goes to the SINT the guest named.
        let bytes = response.as_bytes().to_vec();
        if self.faults.reply_delay_ns > 0 {
            self.delayed.push_back(Delayed {
                due_ns: self.now_ns + self.faults.reply_delay_ns,
                sint: message_sint,
                bytes,
            });
        } else {
            host.send_message(message_sint, &bytes);
        }
    }

    fn gpadl_created<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        relid: u32,
        id: u32,
        status: u32,
    ) {
        let ok = status == 0;
        let mut reply = GpadlCreated::empty();
        reply.child_relid = relid.into();
        reply.gpadl_id = id.into();
        reply.creation_status = status.into();
        if ok {
            self.stats.gpadls_created += 1;
        } else {
            self.stats.gpadls_refused += 1;
        }
        let bytes = reply.as_bytes().to_vec();
        self.reply(host, &bytes);
        if ok && self.rescind_point(RescindPoint::AfterGpadlCreated, relid) {
            self.rescind(host, relid);
        }
    }

    fn channel_accepts_gpadl(&self, relid: u32) -> bool {
        self.channels
            .get(&relid)
            .is_some_and(|c| c.offered && c.state != ChannelState::Rescinded)
    }

    fn gpadl_header<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        header: vmbus_protocol::messages::GpadlHeaderMessage,
    ) {
        let relid = header.fixed.child_relid.get();
        let id = header.fixed.gpadl_id.get();
        if self.gpadls.contains_key(&id) {
            self.reject(alloc::format!("GPADL id {id:#x} already in use"));
            self.gpadl_created(host, relid, id, STATUS_UNSUCCESSFUL);
            return;
        }
        if !self.channel_accepts_gpadl(relid) {
            self.reject(alloc::format!(
                "GPADL for relid {relid} that is not offered"
            ));
            self.gpadl_created(host, relid, id, STATUS_UNSUCCESSFUL);
            return;
        }
        if self.rescind_point(RescindPoint::OnGpadlHeader, relid) {
            self.drop_gpadl_being_created(id);
            self.rescind(host, relid);
            return;
        }
        let assembler = match GpadlAssembler::<MAX_GPADL_WORDS>::new(&header) {
            Ok(assembler) => Box::new(assembler),
            Err(error) => {
                self.reject(alloc::format!("GPADL {id:#x}: {error:?}"));
                self.gpadl_created(host, relid, id, STATUS_UNSUCCESSFUL);
                return;
            }
        };
        self.gpadls.insert(
            id,
            Gpadl {
                relid,
                assembler: Some(assembler),
                pages: Vec::new(),
                bytes: 0,
                in_use: false,
            },
        );
        self.try_complete_gpadl(host, id);
    }

    fn gpadl_body<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        body: vmbus_protocol::messages::GpadlBodyMessage,
    ) {
        let id = body.fixed.gpadl_id.get();
        if self.dropped_gpadls.contains(&id) {
            self.stats.bodies_after_rescind += 1;
            return;
        }
        let Some(assembler) = self.gpadls.get_mut(&id).and_then(|g| g.assembler.as_mut()) else {
            self.reject(alloc::format!(
                "GpadlBody for GPADL {id:#x} that is not being created"
            ));
            return;
        };
        if let Err(error) = assembler.add_body(&body) {
            let relid = assembler.child_relid;
            self.gpadls.remove(&id);
            self.reject(alloc::format!("GPADL {id:#x} body: {error:?}"));
            self.gpadl_created(host, relid, id, STATUS_UNSUCCESSFUL);
            return;
        }
        self.try_complete_gpadl(host, id);
    }

    fn try_complete_gpadl<M: GuestMemory>(&mut self, host: &mut Host<M>, id: u32) {
        let Some(gpadl) = self.gpadls.get(&id) else {
            return;
        };
        let Some(assembler) = gpadl.assembler.as_ref() else {
            return;
        };
        if !assembler.is_complete() {
            return;
        }
        let relid = gpadl.relid;
        let result: Result<(Vec<u64>, u64), String> = match assembler.ranges() {
            Err(error) => Err(alloc::format!("{error:?}")),
            Ok(ranges) => {
                let mut pages = Vec::new();
                let mut bytes = 0u64;
                let mut problem = None;
                for range in ranges.iter() {
                    bytes += range.byte_count as u64;
                    for &pfn in range.pfns {
                        let in_memory = pfn
                            .checked_mul(PAGE_SIZE)
                            .is_some_and(|gpa| host.memory.contains(gpa, PAGE_SIZE));
                        if !in_memory {
                            problem = Some(alloc::format!("PFN {pfn:#x} outside guest memory"));
                        }
                        pages.push(pfn);
                    }
                }
                match problem {
                    Some(problem) => Err(problem),
                    None => Ok((pages, bytes)),
                }
            }
        };
        if let Ok((_, bytes)) = &result {
            // Not a guest error: the guest asked for more than this host
            // grants, and hears so in the status.
            let total = self.gpadl_bytes() + bytes;
            if total > self.config.gpadl_memory_limit {
                self.gpadls.remove(&id);
                self.stats.gpadls_over_limit += 1;
                self.gpadl_created(host, relid, id, STATUS_QUOTA_EXCEEDED);
                return;
            }
        }
        match result {
            Ok((pages, bytes)) => {
                let gpadl = self.gpadls.get_mut(&id).expect("present");
                gpadl.assembler = None;
                gpadl.pages = pages;
                gpadl.bytes = bytes;
                self.gpadl_created(host, relid, id, 0);
            }
            Err(why) => {
                self.gpadls.remove(&id);
                self.reject(alloc::format!("GPADL {id:#x}: {why}"));
                self.gpadl_created(host, relid, id, STATUS_UNSUCCESSFUL);
            }
        }
    }

    fn open_result<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        relid: u32,
        open_id: u32,
        status: u32,
    ) {
        let mut reply = OpenChannelResult::empty();
        reply.child_relid = relid.into();
        reply.open_id = open_id.into();
        reply.status = status.into();
        let bytes = reply.as_bytes().to_vec();
        self.reply(host, &bytes);
    }

    fn open_channel<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        open: &vmbus_protocol::messages::OpenChannel,
    ) {
        let relid = open.child_relid.get();
        let open_id = open.open_id.get();
        let gpadl_id = open.ring_gpadl_id.get();
        let downstream = open.downstream_ring_page_offset.get();
        let Some(channel) = self.channels.get(&relid) else {
            self.reject(alloc::format!("OpenChannel for unknown relid {relid}"));
            return;
        };
        let state = channel.state;
        if state == ChannelState::Rescinded || !channel.offered {
            self.reject(alloc::format!(
                "OpenChannel for relid {relid} that is not offered"
            ));
            return;
        }
        if self.rescind_point(RescindPoint::OnOpen, relid) {
            self.rescind(host, relid);
            return;
        }
        let failure = if state == ChannelState::Open {
            Some(alloc::format!("relid {relid} is already open"))
        } else if open.target_vp.get() >= self.config.vp_count {
            Some(alloc::format!(
                "target VP {} does not exist",
                open.target_vp.get()
            ))
        } else {
            match self.gpadls.get(&gpadl_id) {
                None => Some(alloc::format!("ring GPADL {gpadl_id:#x} does not exist")),
                Some(g) if g.assembler.is_some() || g.relid != relid => Some(alloc::format!(
                    "ring GPADL {gpadl_id:#x} is not a created GPADL of relid {relid}"
                )),
                Some(g) if g.in_use => {
                    Some(alloc::format!("ring GPADL {gpadl_id:#x} already in use"))
                }
                Some(g) => {
                    let pages = g.pages.len() as u32;
                    if g.bytes != pages as u64 * PAGE_SIZE {
                        Some("ring GPADL is not whole pages".into())
                    } else if downstream < 2 || downstream + 2 > pages {
                        Some(alloc::format!(
                            "downstream offset {downstream} leaves a ring without data pages ({pages} pages)"
                        ))
                    } else {
                        None
                    }
                }
            }
        };
        if let Some(why) = failure {
            self.stats.opens_refused += 1;
            self.reject(alloc::format!("OpenChannel: {why}"));
            self.open_result(host, relid, open_id, STATUS_UNSUCCESSFUL);
            return;
        }
        let gpadl = self.gpadls.get_mut(&gpadl_id).expect("checked");
        gpadl.in_use = true;
        let pages = gpadl.pages.clone();
        let channel = self.channels.get_mut(&relid).expect("checked");
        channel.state = ChannelState::Open;
        channel.target_vp = open.target_vp.get();
        let endpoint = ChannelEndpoint::new(
            channel.device.kind,
            gpadl_id,
            &pages[..downstream as usize],
            &pages[downstream as usize..],
            &host.memory,
            self.now_ns,
        );
        let mut endpoint = endpoint;
        endpoint.poll_window_ns = self.config.ring_poll_window_ns;
        channel.endpoint = Some(endpoint);
        if let Some(controller) = self.storage.get_mut(&channel.device.instance) {
            controller.forget_channel(relid);
            if channel.sub_channel_index == 0 {
                controller.reset_protocol();
            }
        }
        if let Some(controller) = self.network.get_mut(&channel.device.instance) {
            controller.channel_opened(channel.sub_channel_index, relid);
        }
        if let Some(video) = self.video.get_mut(&channel.device.instance) {
            video.channel_opened();
        }
        host.open_port(channel.connection_id, PortKind::Event { flag_count: 1 });
        self.write_monitor_parameters(host, relid);
        self.open_result(host, relid, open_id, 0);
        if self.rescind_point(RescindPoint::AfterOpenResult, relid) {
            self.rescind(host, relid);
        }
    }

    /// ModifyChannel (4.1+): move an open channel's interrupts to another
    /// VP. From 5.3 the host answers ModifyChannelResponse (status 0, or
    /// STATUS_INVALID_PARAMETER for a VP that does not exist); before, it
    /// answers nothing, so a bad target is a rejected message.
    fn modify_channel<M: GuestMemory>(
        &mut self,
        host: &mut Host<M>,
        modify: &vmbus_protocol::messages::ModifyChannel,
    ) {
        let relid = modify.child_relid.get();
        let target_vp = modify.target_vp.get();
        let answers = self
            .connection
            .is_some_and(|c| c.version >= ProtocolVersion::V5_3);
        let open = self
            .channels
            .get(&relid)
            .is_some_and(|c| c.state == ChannelState::Open);
        if !open {
            self.reject(alloc::format!(
                "ModifyChannel of relid {relid} that is not open"
            ));
            return;
        }
        let status = if target_vp < self.config.vp_count {
            let channel = self.channels.get_mut(&relid).expect("checked");
            channel.target_vp = target_vp;
            self.stats.channels_retargeted += 1;
            0
        } else if answers {
            STATUS_INVALID_PARAMETER
        } else {
            self.reject(alloc::format!(
                "ModifyChannel of relid {relid} to VP {target_vp} that does not exist"
            ));
            return;
        };
        if answers {
            let mut response = ModifyChannelResponse::empty();
            response.child_relid = relid.into();
            response.status = status.into();
            let bytes = response.as_bytes().to_vec();
            self.reply(host, &bytes);
        }
    }

    /// The VP a channel's interrupts target.
    pub fn target_vp(&self, relid: u32) -> Option<u32> {
        self.channels.get(&relid).map(|c| c.target_vp)
    }

    fn close_channel<M: GuestMemory>(&mut self, host: &mut Host<M>, relid: u32) {
        let Some(channel) = self.channels.get_mut(&relid) else {
            return;
        };
        if let Some(endpoint) = channel.endpoint.take() {
            if let Some(gpadl) = self.gpadls.get_mut(&endpoint.ring_gpadl) {
                gpadl.in_use = false;
            }
        }
        if let Some(controller) = self.storage.get_mut(&channel.device.instance) {
            controller.forget_channel(relid);
            if channel.sub_channel_index == 0 {
                controller.reset_protocol();
            }
        }
        if let Some(controller) = self.network.get_mut(&channel.device.instance) {
            controller.forget_channel(relid);
        }
        if channel.state == ChannelState::Open {
            channel.state = ChannelState::Offered;
        }
        host.close_port(channel.connection_id);
    }
}
