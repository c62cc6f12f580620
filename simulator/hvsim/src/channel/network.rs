//! The NIC host (what Hyper-V's netvsp does for a synthetic NIC), over
//! `vmbus_protocol::nvsp` and `vmbus_protocol::rndis`, with the frames
//! going to and coming from a [`NetBackend`](crate::net::NetBackend).
//!
//! One [`NetController`] per device instance, shared by its primary
//! channel and its sub-channels: the server keeps it and hands it each
//! channel's packets after the channel's step ([`NetController::serve`]).
//!
//! Behaviour follows OpenVMM's netvsp (Hyper-V's, by its authors) and what
//! Linux's netvsc expects of a host:
//! - on the primary, in order: INIT (one version the host speaks, up to
//!   [`NetConfig::newest_version`]; otherwise FAILURE and the guest tries
//!   the next), SEND_NDIS_CONFIG (from version 2), SEND_NDIS_VERSION, then
//!   SEND_RECEIVE_BUFFER (the host cuts the buffer into sections of
//!   [`receive_section_size`] and says so in the completion) and
//!   SEND_SEND_BUFFER (sections of [`SEND_SECTION_SIZE`]); anything out of
//!   order is refused (FAILURE) and counted as a rule violation;
//! - RNDIS control (INITIALIZE, QUERY, SET, RESET, KEEPALIVE, HALT) on the
//!   primary only; every answer goes up through the receive buffer as a
//!   transfer-page packet of channel type CONTROL, as Hyper-V sends them;
//! - data: the guest's SEND_RNDIS_PACKET names a send-buffer section, or
//!   carries the RNDIS bytes in GPA-direct ranges (no GPADL needed, as on
//!   Hyper-V; every page must lie in the memory the host sees), or both
//!   (section first); one or more PACKET messages, each frame handed to
//!   the backend; then SEND_RNDIS_PACKET_COMPLETE;
//! - receive: frames from the backend pass the guest's packet filter, go
//!   up on the channel RSS picks ([`rss`]), one frame per receive-buffer
//!   section, up to [`MAX_RANGES_PER_RECEIVE`] sections per transfer-page
//!   packet; a section is reused only after the guest completed the packet
//!   that named it;
//! - sub-channels on SUBCHANNEL (from version 5; a count in all, at most
//!   [`NetConfig::max_sub_channels`]), then the send indirection table;
//! - link state: INDICATE_STATUS media connect/disconnect; while the link
//!   is down nothing goes up and what the guest sends is dropped (counted);
//! - offload: the TX checksum the guest asks for in per-packet info is
//!   filled in before the frame leaves (IPv4 header, TCP, UDP).
//!
//! Trusts nothing from the guest: every NVSP and RNDIS length, offset,
//! section index, GPADL and page is checked; a violation is counted,
//! logged in [`NetController::violations`] and refused, never a panic.
//! Fault injection ([`NetFault`]) makes the host hostile on purpose.

use super::scsi_target::GuestBuffer;
use super::{ChannelEndpoint, ReceivedPacket};
use crate::data_path;
use crate::net::{BoxedNetBackend, MemoryNet};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::PAGE_SIZE;
use vmbus_protocol::nvsp::{self, message_type as nvsp_type};
use vmbus_protocol::packet::PacketType;
use vmbus_protocol::rndis::{self, message_type as rndis_type, oid};
use zerocopy::{FromBytes, IntoBytes};

pub mod rss;

/// How the NIC is set up (scenario, command line, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    /// The largest Ethernet payload (1500); frames are at most MTU + 14
    /// (+ 4 with a VLAN tag).
    pub mtu: u32,
    /// Sub-channels the guest may ask for (0: one channel only).
    pub max_sub_channels: u16,
    /// The newest NVSP version the host accepts (older known ones too).
    pub newest_version: u32,
    /// What GEN_LINK_SPEED reports, in units of 100 bit/s.
    pub link_speed_100bps: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            // Microsoft's OUI, as Hyper-V's dynamic MACs.
            mac: [0x00, 0x15, 0x5d, 0x00, 0x00, 0x01],
            mtu: 1500,
            max_sub_channels: 4,
            newest_version: nvsp::version::V61,
            link_speed_100bps: 100_000_000,
        }
    }
}

/// The size of a send-buffer section (Hyper-V's).
pub const SEND_SECTION_SIZE: u32 = 6144;
/// Sections one transfer-page packet names at most.
pub const MAX_RANGES_PER_RECEIVE: usize = 64;
/// The MTUs the host accepts in its configuration.
pub const MTU_RANGE: core::ops::RangeInclusive<u32> = 576..=9000;
/// RNDIS messages in one guest packet the host reads at most.
const MAX_RNDIS_PER_PACKET: usize = 64;
/// Control answers waiting for a free section at most (a guest that
/// floods control messages and never completes loses the extra ones).
const MAX_QUEUED_CONTROL: usize = 32;
/// Frames waiting per channel for a free section at most.
const MAX_QUEUED_FRAMES: usize = 512;
/// Frames taken from the backend per step at most (they wait in the
/// host's heap until written out in the same step: in the image that heap
/// is 1 MiB).
const FRAMES_PER_STEP: usize = 64;
/// Violations kept for the operator (oldest dropped).
const VIOLATIONS_KEPT: usize = 32;
/// Packets of revoked receive buffers remembered at most.
const MAX_RETIRED: usize = 16 * 1024;
/// Channels (primary + sub-channels) the per-channel counters cover.
pub const MAX_CHANNELS: usize = 1 + crate::vmbus::MAX_DEVICE_SUB_CHANNELS as usize;

/// The receive-buffer section size the host chooses for `mtu`: a frame
/// with a VLAN tag, the RNDIS header and the per-packet info the host
/// sends, rounded up to 64 bytes (1728 for 1500, Hyper-V's value).
pub fn receive_section_size(mtu: u32) -> u32 {
    (mtu + 228).div_ceil(64) * 64
}

/// Ways the host misbehaves on purpose (fault injection). The receive
/// faults act on the next frame that goes up; the others at the next
/// step once the protocol is up (or on the next guest send).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// A transfer-page range that runs past the end of the receive buffer.
    RangeOutside,
    /// A range that does not start at a section boundary.
    RangeMisaligned,
    /// A frame written into a section the guest has not completed yet.
    SectionInUse,
    /// A frame longer than the MTU allows (well-formed RNDIS around it).
    FrameTooLong,
    /// An RNDIS packet whose data length runs past its message length.
    RndisLength,
    /// A transfer-page packet naming another transfer page set.
    BadPageSet,
    /// A SEND_RNDIS_PACKET_COMPLETE for a transaction the guest never used.
    UnknownCompletion,
    /// The next send of the guest completed twice.
    DuplicateCompletion,
    /// Never complete the next `count` guest sends (the frames still go).
    WithholdTx { count: u32 },
    /// A send indirection table naming channels that do not exist.
    BadSendTable,
    /// An RNDIS QUERY completion for a request the guest never made.
    UnsolicitedControl,
    /// An INDICATE_STATUS whose status buffer lies outside the message.
    BadIndicateStatus,
    /// An NVSP message of a type no version defines.
    UnknownNvsp,
    /// An NVSP message cut short: a SEND_INDIRECTION_TABLE without its
    /// count and offset (the ring pads every packet to 8 bytes, so a
    /// message shorter than the 4-byte header cannot reach a guest).
    ShortNvsp,
}

impl NetFault {
    /// The fault by its name in scenarios and operator commands.
    pub fn parse(words: &[&str]) -> Option<NetFault> {
        Some(match words {
            ["range-outside"] => NetFault::RangeOutside,
            ["range-misaligned"] => NetFault::RangeMisaligned,
            ["section-in-use"] => NetFault::SectionInUse,
            ["frame-too-long"] => NetFault::FrameTooLong,
            ["rndis-length"] => NetFault::RndisLength,
            ["bad-page-set"] => NetFault::BadPageSet,
            ["unknown-completion"] => NetFault::UnknownCompletion,
            ["duplicate-completion"] => NetFault::DuplicateCompletion,
            ["withhold-tx", count] => NetFault::WithholdTx {
                count: count.parse().ok()?,
            },
            ["bad-send-table"] => NetFault::BadSendTable,
            ["unsolicited-control"] => NetFault::UnsolicitedControl,
            ["bad-indicate-status"] => NetFault::BadIndicateStatus,
            ["unknown-nvsp"] => NetFault::UnknownNvsp,
            ["short-nvsp"] => NetFault::ShortNvsp,
            _ => return None,
        })
    }

    /// The usage text of [`NetFault::parse`].
    pub const USAGE: &'static str = "range-outside | range-misaligned | section-in-use | frame-too-long | rndis-length | bad-page-set | unknown-completion | duplicate-completion | withhold-tx COUNT | bad-send-table | unsolicited-control | bad-indicate-status | unknown-nvsp | short-nvsp";

    fn on_receive(self) -> bool {
        matches!(
            self,
            NetFault::RangeOutside
                | NetFault::RangeMisaligned
                | NetFault::SectionInUse
                | NetFault::FrameTooLong
                | NetFault::RndisLength
                | NetFault::BadPageSet
        )
    }

    fn on_send(self) -> bool {
        matches!(
            self,
            NetFault::DuplicateCompletion | NetFault::WithholdTx { .. }
        )
    }
}

/// What the host saw on a NIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// NVSP messages handled, versions refused.
    pub nvsp_messages: u64,
    pub versions_refused: u64,
    /// RNDIS control requests, by kind.
    pub rndis_requests: u64,
    pub oid_queries: u64,
    pub oid_sets: u64,
    pub oids_not_supported: u64,
    pub keepalives: u64,
    pub resets: u64,
    pub halts: u64,
    /// Control answers dropped (queue full).
    pub control_dropped: u64,
    /// Guest sends (NVSP SEND_RNDIS_PACKET) and the frames in them.
    pub tx_packets: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_from_send_buffer: u64,
    pub tx_gpa_direct: u64,
    /// Frames dropped: link down, or refused (too long, malformed).
    pub tx_dropped_link_down: u64,
    pub tx_refused: u64,
    pub tx_checksums_filled: u64,
    /// Frames that went up, their bytes, per channel index.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_frames_by_channel: [u64; MAX_CHANNELS],
    /// Transfer-page packets sent and completed by the guest.
    pub rx_packets: u64,
    pub rx_completions: u64,
    pub rx_completion_errors: u64,
    /// Frames not sent up: the packet filter, the link down, too long for
    /// a section, no receive buffer, the queue full.
    pub rx_dropped_filtered: u64,
    pub rx_dropped_link_down: u64,
    pub rx_dropped_too_long: u64,
    pub rx_dropped_no_buffer: u64,
    pub rx_dropped_queue_full: u64,
    /// Frames hashed by RSS.
    pub rx_hashed: u64,
    /// Guest completions for nothing outstanding.
    pub unknown_completions: u64,
    /// Rule violations (also logged).
    pub rule_violations: u64,
    pub gpa_outside_memory: u64,
    pub link_changes_sent: u64,
    pub send_tables_sent: u64,
    pub sub_channels_offered: u64,
    pub faults_injected: u64,
}

/// The guest's receive buffer as the host uses it.
struct ReceiveBuffer {
    gpadl_id: u32,
    /// The guest's id for it (the transfer page set id).
    id: u16,
    pages: Vec<u64>,
    section_size: u32,
    sections: u32,
    /// Free sections, oldest freed first (so a reuse is visible).
    free: VecDeque<u32>,
    in_use: Vec<bool>,
}

impl ReceiveBuffer {
    fn len(&self) -> u64 {
        self.pages.len() as u64 * PAGE_SIZE
    }

    fn take(&mut self) -> Option<u32> {
        let section = self.free.pop_front()?;
        self.in_use[section as usize] = true;
        Some(section)
    }

    fn release(&mut self, section: u32) -> bool {
        match self.in_use.get_mut(section as usize) {
            Some(used) if *used => {
                *used = false;
                self.free.push_back(section);
                true
            }
            _ => false,
        }
    }
}

struct SendBuffer {
    gpadl_id: u32,
    id: u16,
    pages: Vec<u64>,
    sections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RndisState {
    Uninitialized,
    Initialized,
    Halted,
}

/// Where the NVSP handshake on the primary stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Protocol {
    version: Option<u32>,
    ndis_version: Option<(u32, u32)>,
    /// The MTU the guest announced (NDIS_CONFIG minus the Ethernet header).
    guest_mtu: Option<u32>,
}

/// A transfer-page packet the guest has not completed yet.
struct Outstanding {
    sections: Vec<u32>,
}

/// A frame or control message waiting to go up.
struct Upward {
    control: bool,
    bytes: Vec<u8>,
    /// RSS hash (value) for the per-packet info.
    hash: Option<u32>,
}

/// The NIC host of one device instance.
pub struct NetController {
    pub config: NetConfig,
    backend: BoxedNetBackend,
    protocol: Protocol,
    receive: Option<ReceiveBuffer>,
    send: Option<SendBuffer>,
    rndis: RndisState,
    packet_filter: u32,
    /// TX checksum offload the guest enabled (TCP_OFFLOAD_PARAMETERS).
    pub tx_checksum_enabled: bool,
    rss: rss::RssState,
    link_up: bool,
    /// The link changed while RNDIS was not up, or the answer is queued.
    link_notice_pending: bool,
    /// Open channels: index (0 primary, K sub-channel K) -> relid.
    channels: BTreeMap<u16, u32>,
    /// Per channel index: what waits to go up.
    upward: BTreeMap<u16, VecDeque<Upward>>,
    outstanding: BTreeMap<(u32, u64), Outstanding>,
    /// Packets that named a receive buffer revoked since (their
    /// completions are expected, their sections are gone).
    retired: BTreeSet<(u32, u64)>,
    next_transaction: u64,
    faults: VecDeque<NetFault>,
    withhold_tx: u32,
    /// The guest asked for sub-channels: the server makes the device's
    /// sub-channels this many in all and clears it.
    pub sub_channels_requested: Option<u16>,
    /// Sub-channels granted; the send table goes out once they are.
    sub_channels_granted: u16,
    send_table_pending: bool,
    pub stats: NetStats,
    /// Why rules were violated, newest last (bounded).
    pub violations: VecDeque<String>,
}

/// Little-endian u32 at `at` (callers check the length first).
fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl NetController {
    pub fn new(config: NetConfig) -> Self {
        NetController {
            config: NetConfig {
                mtu: config.mtu.clamp(*MTU_RANGE.start(), *MTU_RANGE.end()),
                max_sub_channels: config
                    .max_sub_channels
                    .min(crate::vmbus::MAX_DEVICE_SUB_CHANNELS),
                ..config
            },
            backend: Box::new(MemoryNet::discarding()),
            protocol: Protocol::default(),
            receive: None,
            send: None,
            rndis: RndisState::Uninitialized,
            packet_filter: 0,
            tx_checksum_enabled: false,
            rss: rss::RssState::default(),
            link_up: true,
            link_notice_pending: false,
            channels: BTreeMap::new(),
            upward: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            retired: BTreeSet::new(),
            next_transaction: 1,
            faults: VecDeque::new(),
            withhold_tx: 0,
            sub_channels_requested: None,
            sub_channels_granted: 0,
            send_table_pending: false,
            stats: NetStats::default(),
            violations: VecDeque::new(),
        }
    }

    /// Where the frames go from now on (the old backend is dropped).
    pub fn set_backend(&mut self, backend: BoxedNetBackend) {
        self.backend = backend;
    }

    /// The negotiated NVSP version.
    pub fn version(&self) -> Option<u32> {
        self.protocol.version
    }

    /// Whether the data path is up: a receive buffer, RNDIS initialized
    /// and a packet filter set.
    pub fn ready(&self) -> bool {
        self.receive.is_some() && self.rndis == RndisState::Initialized && self.packet_filter != 0
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Receive sections the guest holds now.
    pub fn sections_in_use(&self) -> usize {
        self.receive
            .as_ref()
            .map_or(0, |r| r.in_use.iter().filter(|&&used| used).count())
    }

    /// (section size, section count) of the receive buffer, if any.
    pub fn receive_sections(&self) -> Option<(u32, u32)> {
        self.receive.as_ref().map(|r| (r.section_size, r.sections))
    }

    /// The channel index -> relid of the open channels.
    pub fn open_channels(&self) -> Vec<(u16, u32)> {
        self.channels.iter().map(|(&i, &r)| (i, r)).collect()
    }

    pub fn rss_table(&self) -> &[u32] {
        &self.rss.table
    }

    /// Operator: the cable in or out. The guest hears of it by
    /// INDICATE_STATUS once RNDIS is up.
    pub fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.link_notice_pending = true;
        }
    }

    pub fn inject(&mut self, fault: NetFault) {
        if self.faults.len() < 64 {
            self.faults.push_back(fault);
        }
    }

    /// Faults armed and not yet done.
    pub fn faults_pending(&self) -> usize {
        self.faults.len() + self.withhold_tx as usize
    }

    /// The primary channel (re)opened: everything starts again (the old
    /// buffers' GPADLs belong to the closed channel).
    pub fn reset_protocol(&mut self) {
        self.protocol = Protocol::default();
        self.receive = None;
        self.send = None;
        self.rndis = RndisState::Uninitialized;
        self.packet_filter = 0;
        self.tx_checksum_enabled = false;
        self.rss = rss::RssState::default();
        self.upward.clear();
        self.outstanding.clear();
        self.retired.clear();
        self.sub_channels_requested = None;
        self.sub_channels_granted = 0;
        self.send_table_pending = false;
        self.withhold_tx = 0;
        // A fresh guest asks for the media state itself.
        self.link_notice_pending = false;
    }

    /// A channel of the device opened as `index` (0: the primary).
    pub fn channel_opened(&mut self, index: u16, relid: u32) {
        self.forget_channel(relid);
        if index == 0 {
            self.reset_protocol();
        }
        self.channels.insert(index, relid);
    }

    /// A channel closed or was rescinded: what it held goes nowhere, its
    /// sections are free again (the guest cannot complete them any more).
    pub fn forget_channel(&mut self, relid: u32) {
        let Some(index) = self
            .channels
            .iter()
            .find(|(_, &r)| r == relid)
            .map(|(&i, _)| i)
        else {
            return;
        };
        self.channels.remove(&index);
        if index == 0 {
            self.reset_protocol();
            return;
        }
        self.upward.remove(&index);
        let held: Vec<(u32, u64)> = self
            .outstanding
            .keys()
            .filter(|(r, _)| *r == relid)
            .copied()
            .collect();
        for key in held {
            if let (Some(packet), Some(receive)) =
                (self.outstanding.remove(&key), self.receive.as_mut())
            {
                for section in packet.sections {
                    receive.release(section);
                }
            }
        }
    }

    fn violation(&mut self, why: String) {
        self.stats.rule_violations += 1;
        if self.violations.len() == VIOLATIONS_KEPT {
            self.violations.pop_front();
        }
        self.violations.push_back(why);
    }

    /// One line of totals (the script and operator `net-report`).
    pub fn report(&self) -> String {
        let s = &self.stats;
        let version = self
            .version()
            .map_or(String::from("none"), |v| format!("{v:#x}"));
        let channels = self.channels.len();
        let by_channel: Vec<String> = s.rx_frames_by_channel[..channels.clamp(1, MAX_CHANNELS)]
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        format!(
            "version {version}, link {}, {} channels; tx {} frames {} bytes ({} packets: {} send-buffer, {} GPA-direct), {} dropped link down, {} refused; \
             rx {} frames {} bytes in {} packets (by channel {}), {} completed, dropped {} filtered {} link down {} too long {} no buffer {} queue full; \
             control {} requests ({} queries, {} sets, {} not supported); unknown completions {}; rule violations {}, GPA outside memory {}; \
             {} link notices, {} send tables, {} sub-channels offered, {} faults injected",
            if self.link_up { "up" } else { "down" },
            channels,
            s.tx_frames,
            s.tx_bytes,
            s.tx_packets,
            s.tx_from_send_buffer,
            s.tx_gpa_direct,
            s.tx_dropped_link_down,
            s.tx_refused,
            s.rx_frames,
            s.rx_bytes,
            s.rx_packets,
            by_channel.join("/"),
            s.rx_completions,
            s.rx_dropped_filtered,
            s.rx_dropped_link_down,
            s.rx_dropped_too_long,
            s.rx_dropped_no_buffer,
            s.rx_dropped_queue_full,
            s.rndis_requests,
            s.oid_queries,
            s.oid_sets,
            s.oids_not_supported,
            s.unknown_completions,
            s.rule_violations,
            s.gpa_outside_memory,
            s.link_changes_sent,
            s.send_tables_sent,
            s.sub_channels_offered,
            s.faults_injected,
        )
    }

    /// The NVSP message size for the negotiated version.
    fn message_size(&self) -> usize {
        nvsp::message_size(self.protocol.version.unwrap_or(nvsp::version::V1))
    }

    fn nvsp_bytes(&self, message_type: u32, payload: &[u8]) -> Vec<u8> {
        let size = self.message_size().max(nvsp::HEADER_SIZE + payload.len());
        let mut bytes = alloc::vec![0u8; size];
        let _ = nvsp::write_message_sized(&mut bytes, size, message_type, payload);
        bytes
    }

    fn complete<M: GuestMemory>(
        &self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        packet: &ReceivedPacket,
        message_type: u32,
        payload: &[u8],
    ) -> bool {
        if !packet.completion_requested {
            return false;
        }
        let bytes = self.nvsp_bytes(message_type, payload);
        endpoint.send_completion(memory, packet.transaction_id, &bytes)
    }

    /// Handles the packets one channel received in its step, moves frames
    /// up and what is due; returns whether to signal the guest.
    pub fn serve<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        index: u16,
        packets: Vec<ReceivedPacket>,
    ) -> bool {
        let mut signal = false;
        for packet in packets {
            signal |= self.handle(endpoint, memory, relid, index, packet);
        }
        // The buffers' GPADLs must stay while the host uses them (checked
        // after the packets: a REVOKE in this batch may precede the
        // teardown the server already handled).
        self.check_buffers(endpoint);
        if index == 0 {
            signal |= self.primary_work(endpoint, memory);
        }
        signal |= self.send_up(endpoint, memory, relid, index);
        signal
    }

    fn check_buffers(&mut self, endpoint: &ChannelEndpoint) {
        if let Some(receive) = &self.receive {
            if endpoint.gpadls.pages(receive.gpadl_id).is_none() {
                let id = receive.gpadl_id;
                self.drop_receive_buffer();
                self.violation(format!(
                    "receive buffer GPADL {id:#x} torn down before REVOKE_RECEIVE_BUFFER"
                ));
            }
        }
        if let Some(send) = &self.send {
            if endpoint.gpadls.pages(send.gpadl_id).is_none() {
                let id = send.gpadl_id;
                self.send = None;
                self.violation(format!(
                    "send buffer GPADL {id:#x} torn down before REVOKE_SEND_BUFFER"
                ));
            }
        }
    }

    fn handle<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        index: u16,
        packet: ReceivedPacket,
    ) -> bool {
        if packet.packet_type == PacketType::Completion.wire() {
            self.guest_completion(endpoint, relid, &packet);
            return false;
        }
        let Ok(message) = nvsp::parse(&packet.payload) else {
            self.violation(format!(
                "relid {relid}: a packet of {} bytes is no NVSP message",
                packet.payload.len()
            ));
            return false;
        };
        self.stats.nvsp_messages += 1;
        let message_type = message.message_type;
        if index != 0 && message_type != nvsp_type::SEND_RNDIS_PACKET {
            self.violation(format!(
                "relid {relid}: {} on a sub-channel",
                nvsp_type::name(message_type)
            ));
            return self.complete(endpoint, memory, &packet, message_type, &[]);
        }
        match message_type {
            nvsp_type::INIT => self.init(endpoint, memory, relid, &packet, &message),
            nvsp_type::SEND_NDIS_CONFIG => {
                match (
                    self.protocol.version,
                    message.payload_as::<nvsp::SendNdisConfig>(),
                ) {
                    (Some(version), Ok(config))
                        if nvsp::version::supports_ndis_config(version)
                            && self.receive.is_none() =>
                    {
                        let mtu = config.mtu.get().saturating_sub(14);
                        if !(*MTU_RANGE.start()..=self.config.mtu).contains(&mtu) {
                            self.violation(format!(
                                "relid {relid}: NDIS_CONFIG MTU {mtu} outside {}..={}",
                                MTU_RANGE.start(),
                                self.config.mtu
                            ));
                        } else {
                            self.protocol.guest_mtu = Some(mtu);
                        }
                    }
                    _ => self.violation(format!(
                        "relid {relid}: SEND_NDIS_CONFIG out of order or truncated"
                    )),
                }
                false
            }
            nvsp_type::SEND_NDIS_VERSION => {
                match (
                    self.protocol.version,
                    message.payload_as::<nvsp::SendNdisVersion>(),
                ) {
                    (Some(_), Ok(ndis)) if self.receive.is_none() => {
                        let version =
                            (ndis.ndis_major_version.get(), ndis.ndis_minor_version.get());
                        if version.0 != 6 {
                            self.violation(format!(
                                "relid {relid}: NDIS version {}.{} (6.x expected)",
                                version.0, version.1
                            ));
                        } else {
                            self.protocol.ndis_version = Some(version);
                        }
                    }
                    _ => self.violation(format!(
                        "relid {relid}: SEND_NDIS_VERSION out of order or truncated"
                    )),
                }
                false
            }
            nvsp_type::SEND_RECEIVE_BUFFER => {
                self.receive_buffer(endpoint, memory, relid, &packet, &message)
            }
            nvsp_type::SEND_SEND_BUFFER => {
                self.send_buffer(endpoint, memory, relid, &packet, &message)
            }
            nvsp_type::REVOKE_RECEIVE_BUFFER => {
                let id = message
                    .payload_as::<nvsp::RevokeBuffer>()
                    .map(|r| r.id.get());
                match (&self.receive, id) {
                    (Some(receive), Ok(id)) if receive.id == id => self.drop_receive_buffer(),
                    _ => self.violation(format!(
                        "relid {relid}: REVOKE_RECEIVE_BUFFER of a buffer the host does not hold"
                    )),
                }
                false
            }
            nvsp_type::REVOKE_SEND_BUFFER => {
                let id = message
                    .payload_as::<nvsp::RevokeBuffer>()
                    .map(|r| r.id.get());
                match (&self.send, id) {
                    (Some(send), Ok(id)) if send.id == id => self.send = None,
                    _ => self.violation(format!(
                        "relid {relid}: REVOKE_SEND_BUFFER of a buffer the host does not hold"
                    )),
                }
                false
            }
            nvsp_type::SEND_RNDIS_PACKET => {
                self.rndis_packet(endpoint, memory, relid, index, &packet, &message)
            }
            nvsp_type::SUBCHANNEL => self.subchannel(endpoint, memory, relid, &packet, &message),
            nvsp_type::SWITCH_DATA_PATH
                if self
                    .protocol
                    .version
                    .is_some_and(|v| v >= nvsp::version::V4) =>
            {
                // No VF here: the data path stays synthetic.
                let payload = nvsp::SwitchDataPath {
                    active_data_path: nvsp::data_path::SYNTHETIC.into(),
                };
                self.complete(endpoint, memory, &packet, message_type, payload.as_bytes())
            }
            nvsp_type::OID_QUERY_EX | nvsp_type::PD_API | nvsp_type::PD_POST_BATCH => {
                // Defined, but this host does not offer them (as a host
                // without the feature): refused, not a violation.
                let status = nvsp::SendRndisPacketComplete {
                    status: nvsp::status::FAILURE.into(),
                };
                self.complete(endpoint, memory, &packet, message_type, status.as_bytes())
            }
            other => {
                self.violation(format!(
                    "relid {relid}: NVSP message {} ({other}) a guest does not send",
                    nvsp_type::name(other)
                ));
                false
            }
        }
    }

    fn init<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> bool {
        let Ok(init) = message.payload_as::<nvsp::Init>() else {
            self.violation(format!("relid {relid}: INIT truncated"));
            return false;
        };
        let (min, max) = (
            init.min_protocol_version.get(),
            init.max_protocol_version.get(),
        );
        let chosen = if self.protocol.version.is_some() {
            self.violation(format!("relid {relid}: INIT after the version was agreed"));
            None
        } else {
            [nvsp::version::V1]
                .iter()
                .chain(nvsp::version::NEWEST_FIRST.iter())
                .copied()
                .filter(|&v| v >= min && v <= max && v <= self.config.newest_version)
                .max()
        };
        let status = match chosen {
            Some(version) => {
                self.protocol.version = Some(version);
                nvsp::status::SUCCESS
            }
            None => {
                self.stats.versions_refused += 1;
                nvsp::status::FAILURE
            }
        };
        let complete = nvsp::InitComplete {
            negotiated_protocol_version: chosen.unwrap_or(0).into(),
            maximum_mdl_chain_length: 34.into(),
            status: status.into(),
        };
        self.complete(
            endpoint,
            memory,
            packet,
            nvsp_type::INIT_COMPLETE,
            complete.as_bytes(),
        )
    }

    /// A buffer GPADL of this device: its pages, or why not.
    fn buffer_pages(endpoint: &ChannelEndpoint, gpadl: u32) -> Result<Vec<u64>, String> {
        endpoint
            .gpadls
            .pages(gpadl)
            .map(<[u64]>::to_vec)
            .ok_or_else(|| format!("GPADL {gpadl:#x} is not one of the channel's"))
    }

    fn receive_buffer<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> bool {
        let refuse = |this: &mut Self, endpoint: &mut ChannelEndpoint, why: String| {
            this.violation(format!("relid {relid}: SEND_RECEIVE_BUFFER: {why}"));
            let size = this.message_size();
            let mut bytes = alloc::vec![0u8; size.max(64)];
            let len = nvsp::write_receive_buffer_complete(
                &mut bytes,
                this.protocol.version.unwrap_or(0),
                nvsp::status::FAILURE,
                &[],
            )
            .unwrap_or(0);
            packet.completion_requested
                && endpoint.send_completion(memory, packet.transaction_id, &bytes[..len])
        };
        let Ok(request) = message.payload_as::<nvsp::SendBuffer>() else {
            return refuse(self, endpoint, "truncated".into());
        };
        if self.protocol.version.is_none() || self.protocol.ndis_version.is_none() {
            return refuse(self, endpoint, "before INIT and SEND_NDIS_VERSION".into());
        }
        if self.receive.is_some() {
            return refuse(self, endpoint, "a receive buffer is already there".into());
        }
        let gpadl = request.gpadl_handle.get();
        let pages = match Self::buffer_pages(endpoint, gpadl) {
            Ok(pages) => pages,
            Err(why) => return refuse(self, endpoint, why),
        };
        let mtu = self.protocol.guest_mtu.unwrap_or(self.config.mtu);
        let section_size = receive_section_size(mtu);
        let sections = (pages.len() as u64 * PAGE_SIZE / section_size as u64) as u32;
        if sections < 2 {
            return refuse(
                self,
                endpoint,
                format!("{} pages hold fewer than 2 sections", pages.len()),
            );
        }
        self.receive = Some(ReceiveBuffer {
            gpadl_id: gpadl,
            id: request.id.get(),
            pages,
            section_size,
            sections,
            free: (0..sections).collect(),
            in_use: alloc::vec![false; sections as usize],
        });
        // The generic fault commands (`transfer-outside`) aim at it too.
        endpoint.receive_buffer = Some(data_path::HostReceiveBuffer {
            gpadl_id: gpadl,
            transfer_page_set_id: request.id.get(),
            cursor: 0,
        });
        let section = nvsp::ReceiveBufferSection {
            offset: 0.into(),
            sub_allocation_size: section_size.into(),
            num_sub_allocations: sections.into(),
            end_offset: (sections * section_size).into(),
        };
        let mut bytes = alloc::vec![0u8; 64];
        let len = nvsp::write_receive_buffer_complete(
            &mut bytes,
            self.protocol.version.unwrap_or(0),
            nvsp::status::SUCCESS,
            &[section],
        )
        .unwrap_or(0);
        packet.completion_requested
            && endpoint.send_completion(memory, packet.transaction_id, &bytes[..len])
    }

    fn send_buffer<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> bool {
        let answer = |this: &Self, endpoint: &mut ChannelEndpoint, status: u32| {
            let complete = nvsp::SendSendBufferComplete {
                status: status.into(),
                section_size: if status == nvsp::status::SUCCESS {
                    SEND_SECTION_SIZE.into()
                } else {
                    0.into()
                },
            };
            this.complete(
                endpoint,
                memory,
                packet,
                nvsp_type::SEND_SEND_BUFFER_COMPLETE,
                complete.as_bytes(),
            )
        };
        let why = match message.payload_as::<nvsp::SendBuffer>() {
            Err(_) => Err(String::from("truncated")),
            Ok(_) if self.receive.is_none() => Err(String::from("before the receive buffer")),
            Ok(_) if self.send.is_some() => Err(String::from("a send buffer is already there")),
            Ok(request) => {
                Self::buffer_pages(endpoint, request.gpadl_handle.get()).and_then(|pages| {
                    let sections =
                        (pages.len() as u64 * PAGE_SIZE / SEND_SECTION_SIZE as u64) as u32;
                    if sections == 0 {
                        return Err(format!("{} pages hold no section", pages.len()));
                    }
                    self.send = Some(SendBuffer {
                        gpadl_id: request.gpadl_handle.get(),
                        id: request.id.get(),
                        pages,
                        sections,
                    });
                    Ok(())
                })
            }
        };
        match why {
            Ok(()) => answer(self, endpoint, nvsp::status::SUCCESS),
            Err(why) => {
                self.violation(format!("relid {relid}: SEND_SEND_BUFFER: {why}"));
                answer(self, endpoint, nvsp::status::FAILURE)
            }
        }
    }

    fn subchannel<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> bool {
        let request = message.payload_as::<nvsp::SubchannelRequest>();
        let granted = match request {
            Ok(request)
                if self
                    .protocol
                    .version
                    .is_some_and(nvsp::version::supports_subchannels)
                    && self.rndis == RndisState::Initialized
                    && request.operation.get() == nvsp::SUBCHANNEL_ALLOCATE
                    && (1..=u32::from(self.config.max_sub_channels))
                        .contains(&request.num_subchannels.get()) =>
            {
                Some(request.num_subchannels.get() as u16)
            }
            _ => None,
        };
        let complete = match granted {
            Some(count) => {
                self.sub_channels_requested = Some(count);
                self.sub_channels_granted = count;
                self.send_table_pending = true;
                nvsp::SubchannelComplete {
                    status: nvsp::status::SUCCESS.into(),
                    num_subchannels: u32::from(count).into(),
                }
            }
            None => {
                self.violation(format!(
                    "relid {relid}: SUBCHANNEL refused (version, RNDIS state, operation or a count beyond {})",
                    self.config.max_sub_channels
                ));
                nvsp::SubchannelComplete {
                    status: nvsp::status::FAILURE.into(),
                    num_subchannels: 0.into(),
                }
            }
        };
        self.complete(
            endpoint,
            memory,
            packet,
            nvsp_type::SUBCHANNEL,
            complete.as_bytes(),
        )
    }

    /// The receive buffer goes: what is queued for it is dropped; packets
    /// the guest still holds may be completed later without blame.
    fn drop_receive_buffer(&mut self) {
        self.receive = None;
        self.upward.clear();
        let held = core::mem::take(&mut self.outstanding);
        self.retired.extend(held.into_keys());
        // A guest that keeps giving and revoking buffers without
        // completing must not grow this without bound.
        while self.retired.len() > MAX_RETIRED {
            self.retired.pop_first();
        }
    }

    /// The guest completed a transfer-page packet: its sections are free.
    fn guest_completion(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        relid: u32,
        packet: &ReceivedPacket,
    ) {
        let Some(outstanding) = self.outstanding.remove(&(relid, packet.transaction_id)) else {
            if self.retired.remove(&(relid, packet.transaction_id)) {
                // Sent into a receive buffer revoked since: nothing to free.
                return;
            }
            self.stats.unknown_completions += 1;
            endpoint.stats.unknown_responses += 1;
            self.violation(format!(
                "relid {relid}: a completion (transaction {:#x}) for nothing the host sent",
                packet.transaction_id
            ));
            return;
        };
        self.stats.rx_completions += 1;
        let ok = nvsp::parse(&packet.payload).is_ok_and(|m| {
            m.message_type == nvsp_type::SEND_RNDIS_PACKET_COMPLETE
                && m.payload_as::<nvsp::SendRndisPacketComplete>()
                    .is_ok_and(|c| c.status.get() == nvsp::status::SUCCESS)
        });
        if !ok {
            self.stats.rx_completion_errors += 1;
        }
        if let Some(receive) = self.receive.as_mut() {
            for section in outstanding.sections {
                receive.release(section);
            }
        }
    }

    /// The RNDIS bytes of a guest send: the send-buffer section, then the
    /// GPA-direct ranges.
    fn gather<M: GuestMemory>(
        &mut self,
        memory: &M,
        packet: &ReceivedPacket,
        request: &nvsp::SendRndisPacket,
    ) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        let index = request.send_buffer_section_index.get();
        if index != nvsp::NO_SEND_BUFFER_SECTION {
            let Some(send) = &self.send else {
                return Err(format!("section {index} without a send buffer"));
            };
            let size = request.send_buffer_section_size.get();
            if index >= send.sections || size > SEND_SECTION_SIZE {
                return Err(format!(
                    "section {index} ({size} bytes) outside the {} sections of {SEND_SECTION_SIZE}",
                    send.sections
                ));
            }
            bytes.resize(size as usize, 0);
            let offset = u64::from(index) * u64::from(SEND_SECTION_SIZE);
            data_path::read_ranges(
                memory,
                &[data_path::ResolvedRange {
                    byte_offset: (offset % PAGE_SIZE) as u32,
                    byte_count: size,
                    pfns: send.pages[(offset / PAGE_SIZE) as usize..].to_vec(),
                }],
            )
            .map(|data| bytes = data)
            .ok_or_else(|| String::from("send buffer unreadable"))?;
            self.stats.tx_from_send_buffer += 1;
        }
        if packet.packet_type == PacketType::GpaDirect.wire() {
            for range in &packet.ranges {
                if bytes.len() + range.byte_count as usize > 256 * 1024 {
                    return Err(String::from("more than 256 KiB of ranges"));
                }
                let buffer =
                    GuestBuffer::resolve(memory, range.byte_offset, range.byte_count, &range.pfns)
                        .map_err(|error| match error {
                            super::scsi_target::BufferError::OutsideMemory(pfn) => {
                                self.stats.gpa_outside_memory += 1;
                                format!("page {pfn:#x} is not memory the host may see")
                            }
                            super::scsi_target::BufferError::LengthMismatch => {
                                String::from("a range's pages do not hold its bytes")
                            }
                        })?;
                let data = buffer
                    .read(memory, range.byte_count as usize)
                    .ok_or_else(|| String::from("range unreadable"))?;
                bytes.extend_from_slice(&data);
            }
            self.stats.tx_gpa_direct += 1;
        } else if index == nvsp::NO_SEND_BUFFER_SECTION {
            return Err(String::from("neither a section nor GPA ranges"));
        }
        Ok(bytes)
    }

    fn rndis_packet<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        index: u16,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> bool {
        let status = self.rndis_packet_status(memory, relid, index, packet, message);
        let complete = nvsp::SendRndisPacketComplete {
            status: status.into(),
        };
        if self.withhold_tx > 0 {
            self.withhold_tx -= 1;
            return false;
        }
        let mut duplicate = false;
        if let Some(fault) = self.faults.front().copied().filter(|f| f.on_send()) {
            self.faults.pop_front();
            self.stats.faults_injected += 1;
            match fault {
                NetFault::WithholdTx { count } => {
                    self.withhold_tx = count.saturating_sub(1);
                    return false;
                }
                _ => duplicate = true,
            }
        }
        let mut signal = self.complete(
            endpoint,
            memory,
            packet,
            nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
            complete.as_bytes(),
        );
        if duplicate {
            signal |= self.complete(
                endpoint,
                memory,
                packet,
                nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
                complete.as_bytes(),
            );
        }
        signal
    }

    /// Handles one SEND_RNDIS_PACKET; the NVSP status of its completion.
    fn rndis_packet_status<M: GuestMemory>(
        &mut self,
        memory: &M,
        relid: u32,
        index: u16,
        packet: &ReceivedPacket,
        message: &nvsp::Message<'_>,
    ) -> u32 {
        let Ok(request) = message.payload_as::<nvsp::SendRndisPacket>() else {
            self.violation(format!("relid {relid}: SEND_RNDIS_PACKET truncated"));
            return nvsp::status::FAILURE;
        };
        if self.receive.is_none() {
            self.violation(format!(
                "relid {relid}: SEND_RNDIS_PACKET before the receive buffer"
            ));
            return nvsp::status::FAILURE;
        }
        self.stats.tx_packets += 1;
        let bytes = match self.gather(memory, packet, &request) {
            Ok(bytes) => bytes,
            Err(why) => {
                self.violation(format!("relid {relid}: SEND_RNDIS_PACKET: {why}"));
                return nvsp::status::INVALID_RNDIS_PACKET;
            }
        };
        let mut rest = bytes.as_slice();
        let mut count = 0;
        let mut status = nvsp::status::SUCCESS;
        while !rest.is_empty() {
            if count == MAX_RNDIS_PER_PACKET {
                self.violation(format!(
                    "relid {relid}: more than {MAX_RNDIS_PER_PACKET} RNDIS messages in one packet"
                ));
                return nvsp::status::INVALID_RNDIS_PACKET;
            }
            // Zero padding after the last message of a batch.
            if count > 0 && rest.len() < rndis::HEADER_SIZE && rest.iter().all(|&b| b == 0) {
                break;
            }
            let message = match rndis::parse(rest) {
                Ok(message) => message,
                Err(error) => {
                    self.violation(format!("relid {relid}: RNDIS message: {error:?}"));
                    return nvsp::status::INVALID_RNDIS_PACKET;
                }
            };
            let len = rndis::HEADER_SIZE + message.body.len();
            count += 1;
            if message.message_type == rndis_type::PACKET {
                if !self.transmit(relid, &message) {
                    status = nvsp::status::INVALID_RNDIS_PACKET;
                }
            } else if index != 0 {
                self.violation(format!(
                    "relid {relid}: RNDIS {} on a sub-channel",
                    rndis_type::name(message.message_type)
                ));
                return nvsp::status::INVALID_RNDIS_PACKET;
            } else if count > 1 {
                self.violation(format!(
                    "relid {relid}: RNDIS {} batched with other messages",
                    rndis_type::name(message.message_type)
                ));
                return nvsp::status::INVALID_RNDIS_PACKET;
            } else {
                self.control(relid, &message);
            }
            rest = &rest[len..];
        }
        status
    }

    /// One data packet: the frame to the backend. False if refused.
    fn transmit(&mut self, relid: u32, message: &rndis::Message<'_>) -> bool {
        let data = match message.packet() {
            Ok(data) => data,
            Err(error) => {
                self.stats.tx_refused += 1;
                self.violation(format!("relid {relid}: RNDIS packet: {error:?}"));
                return false;
            }
        };
        let limit = self.config.mtu as usize + 18;
        if data.data.len() < 14 || data.data.len() > limit {
            self.stats.tx_refused += 1;
            self.violation(format!(
                "relid {relid}: a frame of {} bytes (14 to {limit})",
                data.data.len()
            ));
            return false;
        }
        let checksum = match data.ppi_u32(rndis::ppi::TCP_IP_CHECKSUM) {
            Ok(flags) => flags,
            Err(error) => {
                self.stats.tx_refused += 1;
                self.violation(format!("relid {relid}: per-packet info: {error:?}"));
                return false;
            }
        };
        if !self.link_up {
            self.stats.tx_dropped_link_down += 1;
            return true;
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += data.data.len() as u64;
        match checksum.filter(|&flags| flags != 0) {
            Some(flags) => {
                let mut frame = data.data.to_vec();
                if offload::fill_checksums(&mut frame, flags) {
                    self.stats.tx_checksums_filled += 1;
                }
                self.backend.transmit(&frame);
            }
            None => self.backend.transmit(data.data),
        }
        true
    }

    /// One control request: its answer is queued for the receive buffer.
    fn control(&mut self, relid: u32, message: &rndis::Message<'_>) {
        self.stats.rndis_requests += 1;
        let mut out = alloc::vec![0u8; 256];
        let len = match message.message_type {
            rndis_type::INITIALIZE => match message.fixed::<rndis::InitializeRequest>() {
                Ok(request) if request.major_version.get() == rndis::MAJOR_VERSION => {
                    self.rndis = RndisState::Initialized;
                    let complete = rndis::InitializeComplete {
                        request_id: request.request_id,
                        status: rndis::status::SUCCESS.into(),
                        major_version: rndis::MAJOR_VERSION.into(),
                        minor_version: rndis::MINOR_VERSION.into(),
                        device_flags: rndis::DF_CONNECTIONLESS.into(),
                        medium: rndis::MEDIUM_802_3.into(),
                        max_packets_per_message: 8.into(),
                        max_transfer_size: (SEND_SECTION_SIZE * 8).into(),
                        packet_alignment_factor: 3.into(),
                        af_list_offset: 0.into(),
                        af_list_size: 0.into(),
                    };
                    rndis::write_message(
                        &mut out,
                        rndis_type::INITIALIZE_COMPLETE,
                        complete.as_bytes(),
                        &[],
                    )
                }
                Ok(request) => {
                    self.violation(format!(
                        "relid {relid}: RNDIS INITIALIZE for version {}",
                        request.major_version.get()
                    ));
                    let complete = rndis::InitializeComplete {
                        request_id: request.request_id,
                        status: rndis::status::NOT_SUPPORTED.into(),
                        ..Default::default()
                    };
                    rndis::write_message(
                        &mut out,
                        rndis_type::INITIALIZE_COMPLETE,
                        complete.as_bytes(),
                        &[],
                    )
                }
                Err(error) => {
                    self.violation(format!("relid {relid}: RNDIS INITIALIZE: {error:?}"));
                    None
                }
            },
            rndis_type::QUERY => match message.oid_request() {
                Ok((request, _)) => {
                    self.stats.oid_queries += 1;
                    let (status, info) = self.query(request.oid.get());
                    rndis::write_query_complete(&mut out, request.request_id.get(), status, &info)
                }
                Err(error) => {
                    self.violation(format!("relid {relid}: RNDIS QUERY: {error:?}"));
                    None
                }
            },
            rndis_type::SET => match message.oid_request() {
                Ok((request, info)) => {
                    self.stats.oid_sets += 1;
                    let status = self.set(relid, request.oid.get(), info);
                    rndis::write_status_complete(
                        &mut out,
                        rndis_type::SET_COMPLETE,
                        request.request_id.get(),
                        status,
                    )
                }
                Err(error) => {
                    self.violation(format!("relid {relid}: RNDIS SET: {error:?}"));
                    None
                }
            },
            rndis_type::KEEPALIVE => match message.request_id() {
                Ok(id) => {
                    self.stats.keepalives += 1;
                    rndis::write_status_complete(
                        &mut out,
                        rndis_type::KEEPALIVE_COMPLETE,
                        id,
                        rndis::status::SUCCESS,
                    )
                }
                Err(error) => {
                    self.violation(format!("relid {relid}: RNDIS KEEPALIVE: {error:?}"));
                    None
                }
            },
            rndis_type::RESET => {
                self.stats.resets += 1;
                let complete = rndis::ResetComplete {
                    status: rndis::status::SUCCESS.into(),
                    addressing_reset: 0.into(),
                };
                rndis::write_message(
                    &mut out,
                    rndis_type::RESET_COMPLETE,
                    complete.as_bytes(),
                    &[],
                )
            }
            rndis_type::HALT => {
                // No answer; nothing goes up until the next INITIALIZE.
                self.stats.halts += 1;
                self.rndis = RndisState::Halted;
                self.packet_filter = 0;
                None
            }
            other => {
                self.violation(format!(
                    "relid {relid}: RNDIS {} ({other:#x}) a guest does not send",
                    rndis_type::name(other)
                ));
                None
            }
        };
        if let Some(len) = len {
            out.truncate(len);
            self.queue_control(out);
        }
    }

    fn queue_control(&mut self, bytes: Vec<u8>) {
        let queue = self.upward.entry(0).or_default();
        if queue.iter().filter(|u| u.control).count() >= MAX_QUEUED_CONTROL {
            self.stats.control_dropped += 1;
            return;
        }
        // Control answers go before queued frames.
        let at = queue.iter().take_while(|u| u.control).count();
        queue.insert(
            at,
            Upward {
                control: true,
                bytes,
                hash: None,
            },
        );
    }

    /// A QUERY's status and information buffer.
    fn query(&mut self, oid: u32) -> (u32, Vec<u8>) {
        let u32_info = |value: u32| (rndis::status::SUCCESS, value.to_le_bytes().to_vec());
        match oid {
            oid::IEEE_802_3_PERMANENT_ADDRESS | oid::IEEE_802_3_CURRENT_ADDRESS => {
                (rndis::status::SUCCESS, self.config.mac.to_vec())
            }
            oid::GEN_MAXIMUM_FRAME_SIZE => u32_info(self.config.mtu),
            oid::GEN_MAXIMUM_TOTAL_SIZE => u32_info(self.config.mtu + 14),
            oid::GEN_LINK_SPEED => u32_info(self.config.link_speed_100bps),
            oid::GEN_MEDIA_CONNECT_STATUS => u32_info(if self.link_up {
                rndis::media_state::CONNECTED
            } else {
                rndis::media_state::DISCONNECTED
            }),
            oid::GEN_CURRENT_PACKET_FILTER => u32_info(self.packet_filter),
            oid::GEN_MEDIA_SUPPORTED | oid::GEN_MEDIA_IN_USE => u32_info(rndis::MEDIUM_802_3),
            oid::IEEE_802_3_MAXIMUM_LIST_SIZE => u32_info(32),
            oid::GEN_MAC_OPTIONS => u32_info(0),
            oid::GEN_VENDOR_ID => u32_info(0x0015_5d00),
            oid::GEN_VENDOR_DESCRIPTION => {
                (rndis::status::SUCCESS, b"hvsim synthetic NIC\0".to_vec())
            }
            oid::GEN_RECEIVE_SCALE_CAPABILITIES
                if self
                    .protocol
                    .version
                    .is_some_and(nvsp::version::supports_subchannels)
                    && self.config.max_sub_channels > 0 =>
            {
                let queues = 1 + u32::from(self.config.max_sub_channels);
                let capabilities = rndis::RssCapabilities {
                    header: rndis::NdisObjectHeader {
                        object_type: rndis::object_type::RSS_CAPABILITIES,
                        revision: 2,
                        size: (rndis::RSS_CAPABILITIES_SIZE_REVISION_2 as u16).into(),
                    },
                    capabilities_flags: 0.into(),
                    number_of_interrupt_messages: queues.into(),
                    number_of_receive_queues: queues.into(),
                    number_of_indirection_table_entries: (rndis::RSS_INDIRECTION_ENTRIES as u16)
                        .into(),
                    padding: 0.into(),
                };
                (rndis::status::SUCCESS, capabilities.as_bytes().to_vec())
            }
            _ => {
                self.stats.oids_not_supported += 1;
                (rndis::status::NOT_SUPPORTED, Vec::new())
            }
        }
    }

    /// A SET's status.
    fn set(&mut self, relid: u32, oid: u32, info: &[u8]) -> u32 {
        if self.rndis != RndisState::Initialized {
            self.violation(format!(
                "relid {relid}: RNDIS SET {oid:#x} before INITIALIZE"
            ));
            return rndis::status::ADAPTER_NOT_READY;
        }
        match oid {
            oid::GEN_CURRENT_PACKET_FILTER => match le32(info, 0) {
                Some(filter) => {
                    self.packet_filter = filter;
                    rndis::status::SUCCESS
                }
                None => rndis::status::INVALID_LENGTH,
            },
            oid::IEEE_802_3_MULTICAST_LIST => rndis::status::SUCCESS,
            oid::TCP_OFFLOAD_PARAMETERS => {
                // Revision 1 is the shortest form; the fields the host
                // acts on (IPv4 checksums) are in it.
                if info.len()
                    < rndis::OFFLOAD_PARAMETERS_SIZE_REVISION_1
                        .min(rndis::OFFLOAD_PARAMETERS_SIZE_VERSION_4)
                {
                    return rndis::status::INVALID_LENGTH;
                }
                let mut full = [0u8; core::mem::size_of::<rndis::NdisOffloadParameters>()];
                let take = info.len().min(full.len());
                full[..take].copy_from_slice(&info[..take]);
                let Ok(parameters) = rndis::NdisOffloadParameters::read_from_bytes(&full[..])
                else {
                    return rndis::status::INVALID_DATA;
                };
                use rndis::offload_checksum as c;
                let tx = |value: u8| matches!(value, c::TX_ENABLED_RX_DISABLED | c::TX_RX_ENABLED);
                if parameters.ipv4_checksum != c::NO_CHANGE
                    || parameters.tcp4_checksum != c::NO_CHANGE
                {
                    self.tx_checksum_enabled =
                        tx(parameters.ipv4_checksum) || tx(parameters.tcp4_checksum);
                }
                rndis::status::SUCCESS
            }
            oid::GEN_RECEIVE_SCALE_PARAMETERS => self.set_rss(relid, info),
            _ => {
                self.stats.oids_not_supported += 1;
                rndis::status::NOT_SUPPORTED
            }
        }
    }

    fn set_rss(&mut self, relid: u32, info: &[u8]) -> u32 {
        let Ok((parameters, _)) = rndis::RssParameters::read_from_prefix(info) else {
            self.violation(format!("relid {relid}: RSS parameters truncated"));
            return rndis::status::INVALID_LENGTH;
        };
        if parameters.header.object_type != rndis::object_type::RSS_PARAMETERS {
            self.violation(format!(
                "relid {relid}: RSS parameters of another object type"
            ));
            return rndis::status::INVALID_DATA;
        }
        if parameters.flags.get() & rndis::rss_flags::DISABLE_RSS != 0 {
            self.rss = rss::RssState::default();
            return rndis::status::SUCCESS;
        }
        let slice = |offset: u32, len: usize| {
            let offset = offset as usize;
            info.get(offset..offset.checked_add(len)?)
        };
        let table_bytes = parameters.indirection_table_size.get() as usize;
        let entries = table_bytes / 4;
        let channels = 1 + u32::from(self.config.max_sub_channels);
        let table: Option<Vec<u32>> = slice(parameters.indirection_table_offset.get(), table_bytes)
            .filter(|_| {
                table_bytes.is_multiple_of(4)
                    && entries.is_power_of_two()
                    && entries <= rndis::RSS_INDIRECTION_ENTRIES
            })
            .map(|bytes| {
                bytes
                    .chunks_exact(4)
                    .map(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]))
                    .collect()
            });
        let key_len = parameters.hash_secret_key_size.get() as usize;
        let key = slice(parameters.hash_secret_key_offset.get(), key_len)
            .filter(|_| key_len == rndis::RSS_HASH_KEY_SIZE);
        let hash = parameters.hash_information.get();
        match (table, key) {
            (Some(table), Some(key))
                if table.iter().all(|&entry| entry < channels)
                    && hash & rss::HASH_FUNCTION_MASK == rss::HASH_FUNCTION_TOEPLITZ =>
            {
                self.rss = rss::RssState {
                    key: key.to_vec(),
                    table,
                    hash_types: hash & !rss::HASH_FUNCTION_MASK,
                };
                rndis::status::SUCCESS
            }
            _ => {
                self.violation(format!(
                    "relid {relid}: RSS parameters: table of {table_bytes} bytes, key of {key_len}, hash {hash:#x} (entries below {channels}, a 40-byte key, Toeplitz)"
                ));
                rndis::status::INVALID_DATA
            }
        }
    }

    /// The primary's own work each step: the backend, link notices, the
    /// send table, immediate faults.
    fn primary_work<M: GuestMemory>(&mut self, endpoint: &mut ChannelEndpoint, memory: &M) -> bool {
        let mut signal = false;
        self.backend.poll();
        if self.link_notice_pending && self.rndis == RndisState::Initialized {
            self.link_notice_pending = false;
            let status = if self.link_up {
                rndis::status::MEDIA_CONNECT
            } else {
                rndis::status::MEDIA_DISCONNECT
            };
            let mut out = alloc::vec![0u8; 64];
            if let Some(len) = rndis::write_indicate_status(&mut out, status, &[]) {
                out.truncate(len);
                self.stats.link_changes_sent += 1;
                self.queue_control(out);
            }
        }
        if self.send_table_pending && self.channels.len() > usize::from(self.sub_channels_granted) {
            self.send_table_pending = false;
            let channels = 1 + u32::from(self.sub_channels_granted);
            let table: Vec<u32> = (0..nvsp::SEND_TABLE_ENTRIES as u32)
                .map(|entry| entry % channels)
                .collect();
            signal |= self.send_in_band_table(endpoint, memory, &table);
        }
        signal |= self.immediate_fault(endpoint, memory);
        self.pull_frames();
        signal
    }

    fn send_in_band_table<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        table: &[u32],
    ) -> bool {
        let mut bytes = alloc::vec![0u8; nvsp::SEND_TABLE_OFFSET + 4 * nvsp::SEND_TABLE_ENTRIES];
        let Some(len) = nvsp::write_send_table(&mut bytes, table) else {
            return false;
        };
        self.stats.send_tables_sent += 1;
        endpoint.send_in_band(memory, 0, false, &bytes[..len])
    }

    /// A fault that needs no guest traffic, once the protocol is up.
    fn immediate_fault<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
    ) -> bool {
        let Some(fault) = self.faults.front().copied() else {
            return false;
        };
        if fault.on_receive() || fault.on_send() || self.receive.is_none() {
            return false;
        }
        self.faults.pop_front();
        self.stats.faults_injected += 1;
        match fault {
            NetFault::UnknownCompletion => {
                let complete = nvsp::SendRndisPacketComplete {
                    status: nvsp::status::SUCCESS.into(),
                };
                let bytes =
                    self.nvsp_bytes(nvsp_type::SEND_RNDIS_PACKET_COMPLETE, complete.as_bytes());
                endpoint.send_completion(
                    memory,
                    0xBAD0_0000_0000_0000 | self.stats.tx_packets,
                    &bytes,
                )
            }
            NetFault::BadSendTable => {
                let table: Vec<u32> = (0..nvsp::SEND_TABLE_ENTRIES as u32)
                    .map(|entry| MAX_CHANNELS as u32 + entry)
                    .collect();
                self.send_in_band_table(endpoint, memory, &table)
            }
            NetFault::UnsolicitedControl => {
                let mut out = alloc::vec![0u8; 64];
                if let Some(len) = rndis::write_query_complete(
                    &mut out,
                    0xBAD0_0001,
                    rndis::status::SUCCESS,
                    &0u32.to_le_bytes(),
                ) {
                    out.truncate(len);
                    self.queue_control(out);
                }
                false
            }
            NetFault::BadIndicateStatus => {
                let mut out = alloc::vec![0u8; 64];
                if let Some(len) =
                    rndis::write_indicate_status(&mut out, rndis::status::MEDIA_CONNECT, &[])
                {
                    out.truncate(len);
                    // The status buffer: 64 bytes at offset 0x100, past the end.
                    out[BODY + 4..BODY + 8].copy_from_slice(&64u32.to_le_bytes());
                    out[BODY + 8..BODY + 12].copy_from_slice(&0x100u32.to_le_bytes());
                    self.queue_control(out);
                }
                false
            }
            NetFault::UnknownNvsp => {
                let bytes = self.nvsp_bytes(99, &[]);
                endpoint.send_in_band(memory, 0, false, &bytes)
            }
            NetFault::ShortNvsp => endpoint.send_in_band(
                memory,
                0,
                false,
                &nvsp_type::SEND_INDIRECTION_TABLE.to_le_bytes(),
            ),
            _ => false,
        }
    }

    /// Frames from the backend into the channels' queues, as many as
    /// there are sections for.
    fn pull_frames(&mut self) {
        let Some(receive) = &self.receive else {
            // Without a receive buffer the backend's frames are dropped
            // (a NIC nobody listens on).
            let mut buf = alloc::vec![0u8; 16 * 1024];
            let mut drained = 0;
            while drained < FRAMES_PER_STEP && self.backend.receive(&mut buf).is_some() {
                drained += 1;
                self.stats.rx_dropped_no_buffer += 1;
            }
            return;
        };
        let queued: usize = self.upward.values().map(VecDeque::len).sum();
        let mut budget = receive
            .free
            .len()
            .saturating_sub(queued)
            .min(FRAMES_PER_STEP);
        let mut buf = alloc::vec![0u8; 16 * 1024];
        let limit = self.config.mtu as usize + 18;
        while budget > 0 {
            let Some(len) = self.backend.receive(&mut buf) else {
                break;
            };
            budget -= 1;
            let frame = &buf[..len];
            if !self.link_up {
                self.stats.rx_dropped_link_down += 1;
                continue;
            }
            if self.rndis != RndisState::Initialized || !self.passes_filter(frame) {
                self.stats.rx_dropped_filtered += 1;
                continue;
            }
            if len > limit || len < 14 {
                self.stats.rx_dropped_too_long += 1;
                continue;
            }
            let (mut channel, mut hash) = (0u16, None);
            if let Some((entry, value, _)) = self.rss.channel_for(frame) {
                self.stats.rx_hashed += 1;
                hash = Some(value);
                if self.channels.contains_key(&(entry as u16)) {
                    channel = entry as u16;
                }
            }
            let queue = self.upward.entry(channel).or_default();
            if queue.len() >= MAX_QUEUED_FRAMES {
                self.stats.rx_dropped_queue_full += 1;
                continue;
            }
            queue.push_back(Upward {
                control: false,
                bytes: frame.to_vec(),
                hash,
            });
        }
    }

    fn passes_filter(&self, frame: &[u8]) -> bool {
        use rndis::packet_filter as f;
        let filter = self.packet_filter;
        if filter & f::PROMISCUOUS != 0 {
            return true;
        }
        let destination = &frame[..6.min(frame.len())];
        if destination == self.config.mac {
            return filter & f::DIRECTED != 0;
        }
        if destination == [0xFF; 6] {
            return filter & f::BROADCAST != 0;
        }
        if destination.first().is_some_and(|b| b & 1 != 0) {
            return filter & (f::MULTICAST | f::ALL_MULTICAST) != 0;
        }
        false
    }

    /// Sends what waits for channel `index` up, one section per message,
    /// while there are free sections.
    fn send_up<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        index: u16,
    ) -> bool {
        let mut signal = false;
        // Bounded: each round takes at least one message off the queue or stops.
        for _ in 0..MAX_QUEUED_FRAMES + MAX_QUEUED_CONTROL {
            let Some(queue) = self.upward.get_mut(&index) else {
                break;
            };
            if queue.is_empty() || self.receive.as_ref().is_none_or(|r| r.free.is_empty()) {
                break;
            }
            // A control answer goes alone (channel type CONTROL); frames batch.
            let control = queue.front().is_some_and(|u| u.control);
            let free = self.receive.as_ref().map_or(0, |r| r.free.len());
            let take = if control {
                1
            } else {
                queue
                    .iter()
                    .take_while(|u| !u.control)
                    .count()
                    .min(MAX_RANGES_PER_RECEIVE)
                    .min(free)
            };
            let batch: Vec<Upward> = queue.drain(..take).collect();
            signal |= self.send_batch(endpoint, memory, relid, index, control, batch);
        }
        signal
    }

    fn send_batch<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        index: u16,
        control: bool,
        batch: Vec<Upward>,
    ) -> bool {
        let Some(mut receive) = self.receive.take() else {
            return false;
        };
        let fault = if control {
            None
        } else {
            self.faults.front().copied().filter(|f| f.on_receive())
        };
        if fault.is_some() {
            self.faults.pop_front();
            self.stats.faults_injected += 1;
        }
        let section_size = receive.section_size;
        let held = self
            .outstanding
            .values()
            .flat_map(|o| o.sections.iter())
            .next()
            .copied();
        let mut ranges = Vec::with_capacity(batch.len());
        let mut sections = Vec::with_capacity(batch.len());
        for (position, upward) in batch.iter().enumerate() {
            let first = position == 0;
            let message = if control {
                upward.bytes.clone()
            } else {
                let mut frame = upward.bytes.clone();
                if first && fault == Some(NetFault::FrameTooLong) {
                    // Longer than the MTU allows, still inside the section.
                    let longest = section_size as usize - 128;
                    frame.resize(longest.max(self.config.mtu as usize + 64), 0);
                }
                match Self::packet_message(&frame, upward.hash) {
                    Some(message) => message,
                    None => continue,
                }
            };
            let Some(section) = receive.take() else {
                break;
            };
            sections.push(section);
            let mut message = message;
            message.truncate(section_size as usize);
            if first && fault == Some(NetFault::RndisLength) && message.len() >= 16 {
                // data_length past message_length.
                let data_length = le32(&message, 12).unwrap_or(0) + 512;
                message[12..16].copy_from_slice(&data_length.to_le_bytes());
            }
            let mut offset = section * section_size;
            match fault {
                Some(NetFault::RangeMisaligned) if first => offset += 8,
                Some(NetFault::SectionInUse) if first => {
                    // Into a section the guest still holds (or, with none
                    // held, the one the next range names too).
                    offset = held.unwrap_or(section) * section_size;
                    if held.is_none() {
                        ranges.push((offset, message.len() as u32));
                    }
                }
                _ => {}
            }
            let room = receive.len().saturating_sub(u64::from(offset)) as usize;
            let written = &message[..message.len().min(room)];
            if data_path::write_into(memory, &receive.pages, u64::from(offset), written).is_none() {
                self.host_problem(format!("relid {relid}: receive buffer unwritable"));
            }
            let mut count = message.len() as u32;
            if first && fault == Some(NetFault::RangeOutside) {
                offset = (receive.len() - 8) as u32;
                count = 64;
            }
            ranges.push((offset, count));
            if !control {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += upward.bytes.len() as u64;
                self.stats.rx_frames_by_channel[(index as usize).min(MAX_CHANNELS - 1)] += 1;
            }
        }
        let set_id = if fault == Some(NetFault::BadPageSet) {
            receive.id.wrapping_add(1)
        } else {
            receive.id
        };
        self.receive = Some(receive);
        if ranges.is_empty() {
            return false;
        }
        let transaction_id = self.next_transaction;
        self.next_transaction += 1;
        // Bounded: every outstanding packet holds at least one section.
        self.outstanding
            .insert((relid, transaction_id), Outstanding { sections });
        let request = nvsp::SendRndisPacket {
            channel_type: if control {
                nvsp::channel_type::CONTROL
            } else {
                nvsp::channel_type::DATA
            }
            .into(),
            send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
            send_buffer_section_size: 0.into(),
        };
        let payload = self.nvsp_bytes(nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
        self.stats.rx_packets += 1;
        endpoint.send_transfer_page_packet(memory, transaction_id, set_id, &ranges, &payload)
    }

    /// An RNDIS data packet around `frame`, with the RSS hash if any.
    fn packet_message(frame: &[u8], hash: Option<u32>) -> Option<Vec<u8>> {
        let hash_bytes = hash.map(u32::to_le_bytes);
        let mut ppis: Vec<(u32, &[u8])> = Vec::new();
        if let Some(hash) = &hash_bytes {
            ppis.push((rndis::ppi::HASH_VALUE, hash));
        }
        let mut message = alloc::vec![0u8; 128];
        let len = rndis::write_packet_header(&mut message, frame.len(), &ppis)?;
        message.truncate(len);
        message.extend_from_slice(frame);
        Some(message)
    }

    /// A host-side failure that is not the guest's fault (logged, not a
    /// rule violation of the guest).
    fn host_problem(&mut self, why: String) {
        if self.violations.len() == VIOLATIONS_KEPT {
            self.violations.pop_front();
        }
        self.violations.push_back(why);
    }
}

/// Where an RNDIS message's body starts.
const BODY: usize = rndis::HEADER_SIZE;

/// Filling in the checksums a guest left to the NIC.
pub mod offload {
    use vmbus_protocol::rndis::checksum_tx as flags;

    fn sum(data: &[u8], mut acc: u32) -> u32 {
        let mut chunks = data.chunks_exact(2);
        for pair in &mut chunks {
            acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u32::from(*last) << 8;
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xFFFF {
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// Fills the IPv4 header, TCP and UDP checksums `request` (the
    /// TCP_IP_CHECKSUM per-packet info) asks for. False if the frame is
    /// not what the request says (left as it is).
    pub fn fill_checksums(frame: &mut [u8], request: u32) -> bool {
        if request & flags::IS_IPV4 == 0 || frame.len() < 34 {
            return false;
        }
        if u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 {
            return false;
        }
        let header_len = usize::from(frame[14] & 0x0F) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        if header_len < 20 || total < header_len || 14 + total > frame.len() {
            return false;
        }
        let (ip_start, l4_start, end) = (14, 14 + header_len, 14 + total);
        if request & flags::IP_HEADER_CHECKSUM != 0 {
            frame[ip_start + 10..ip_start + 12].fill(0);
            let checksum = fold(sum(&frame[ip_start..l4_start], 0));
            frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
        }
        let protocol = frame[ip_start + 9];
        let at = match (protocol, request) {
            (6, r) if r & flags::TCP_CHECKSUM != 0 => 16,
            (17, r) if r & flags::UDP_CHECKSUM != 0 => 6,
            _ => return true,
        };
        if l4_start + at + 2 > end {
            return false;
        }
        frame[l4_start + at..l4_start + at + 2].fill(0);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&frame[ip_start + 12..ip_start + 20]);
        pseudo[9] = protocol;
        pseudo[10..12].copy_from_slice(&((end - l4_start) as u16).to_be_bytes());
        let mut checksum = fold(sum(&frame[l4_start..end], sum(&pseudo, 0)));
        if protocol == 17 && checksum == 0 {
            checksum = 0xFFFF;
        }
        frame[l4_start + at..l4_start + at + 2].copy_from_slice(&checksum.to_be_bytes());
        true
    }
}

#[cfg(test)]
mod tests;
