//! The storage host (what Hyper-V's storvsp does for a synthetic SCSI or
//! IDE-accelerator controller), over `vmbus_protocol::storage`: version
//! negotiation and the initialization order on the primary channel,
//! channel properties, sub-channels on request, and `EXECUTE_SRB` on every
//! channel against the LUNs of [`scsi_target`](super::scsi_target).
//!
//! One [`StorageController`] per device instance, shared by its primary
//! channel and its sub-channels: the server keeps it and hands it each
//! channel's vstor packets after the channel's step
//! ([`StorageController::serve`]).
//!
//! Data: a request's data lies in the guest pages its GPA-direct packet
//! names (one multi-page range). As on Hyper-V, those pages need no GPADL
//! (the host may access the guest's memory); here they must lie in the
//! memory the host sees (the host-visible regions), each page checked
//! before a byte moves. A page outside it refuses the request
//! (SRB_STATUS_ERROR) and counts a rule violation.
//!
//! Behaviour follows OpenVMM's storvsp (Hyper-V's, by its authors):
//! - init: BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION (a version the
//!   host does not speak: REVISION_MISMATCH, the guest tries the next),
//!   QUERY_PROPERTIES, [CREATE_SUB_CHANNELS], END_INITIALIZATION; anything
//!   else in between is answered INVALID_DEVICE_STATE;
//! - completions are as long as the request that asked (Windows guests
//!   check that), a SCSI completion carries the request back with the
//!   SRB and SCSI status, the bytes moved and sense in the CDB's place;
//! - a LUN added or removed: ENUMERATE_BUS on the primary (from Win7), so
//!   the guest rescans.
//!
//! Fault injection ([`StorageFault`]) acts on the next I/O requests
//! (READ/WRITE/SYNCHRONIZE CACHE/UNMAP), so a guest's discovery traffic
//! does not consume it.

use super::scsi_target::{self, BoxedDisk, Command, Effect, GuestBuffer, Lun, ScsiResult};
use super::{ChannelEndpoint, ReceivedPacket};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::packet::PacketType;
use vmbus_protocol::scsi::{self, asc, sense_key};
use vmbus_protocol::storage::{
    self as vstor, channel_flags, operation, srb, status, version, ChannelProperties,
    ProtocolVersion, ScsiRequest, SubChannelCount, VstorHeader,
};
use zerocopy::IntoBytes;

/// How a controller is set up (scenario, command line, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// The newest protocol version the host accepts (older known ones
    /// too): `version::WIN10` on a current Hyper-V.
    pub newest_version: u16,
    /// Sub-channels the guest may ask for (0: no multi-channel).
    pub max_sub_channels: u16,
    pub max_transfer_bytes: u32,
    /// An IDE-accelerator channel: one disk, no sub-channels.
    pub ide: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            newest_version: version::WIN10,
            max_sub_channels: 4,
            max_transfer_bytes: 256 * 1024,
            ide: false,
        }
    }
}

/// The largest transfer a configuration may set (bounds the host's copy
/// of one request's data).
pub const MAX_TRANSFER_LIMIT: u32 = 8 << 20;

/// Ways to corrupt a completion (fault injection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Completed under a transaction id the guest never used (the request
    /// itself is never completed).
    UnknownTransaction,
    /// Completed twice.
    Duplicate,
    /// `data_transfer_length` beyond what the request asked for.
    TransferBeyondRequest,
    /// `sense_info_length` beyond the sense field (with autosense).
    SenseBeyondField,
}

/// One fault for the next I/O request(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFault {
    /// Complete the next `count` requests `ms` milliseconds late (the I/O
    /// itself is done when the request arrives).
    Delay {
        ms: u64,
        count: u32,
    },
    /// Never complete the next `count` requests (and do not execute them).
    Withhold {
        count: u32,
    },
    /// Fail the next request with CHECK CONDITION and this sense key
    /// (NOT READY, MEDIUM ERROR, ILLEGAL REQUEST, UNIT ATTENTION, ...).
    Fail {
        sense_key: u8,
    },
    /// Move only half the blocks of the next READ or WRITE and report
    /// the residual (SRB_STATUS_DATA_OVERRUN with the bytes moved).
    Short,
    Corrupt(Corruption),
}

impl StorageFault {
    /// The fault by its name in scripts and operator commands:
    /// `delay MS [COUNT]`, `withhold COUNT`, `fail KEY`, `short`,
    /// `corrupt unknown-id|duplicate|transfer-beyond|sense-beyond`.
    pub fn parse(words: &[&str]) -> Option<StorageFault> {
        let number = |text: &str| text.parse::<u64>().ok();
        Some(match words {
            ["delay", ms] => StorageFault::Delay {
                ms: number(ms)?,
                count: 1,
            },
            ["delay", ms, count] => StorageFault::Delay {
                ms: number(ms)?,
                count: u32::try_from(number(count)?).ok()?,
            },
            ["withhold", count] => StorageFault::Withhold {
                count: u32::try_from(number(count)?).ok()?,
            },
            ["fail", key] => StorageFault::Fail {
                sense_key: match *key {
                    "not-ready" => sense_key::NOT_READY,
                    "medium-error" => sense_key::MEDIUM_ERROR,
                    "hardware-error" => sense_key::HARDWARE_ERROR,
                    "illegal-request" => sense_key::ILLEGAL_REQUEST,
                    "unit-attention" => sense_key::UNIT_ATTENTION,
                    "data-protect" => sense_key::DATA_PROTECT,
                    "aborted-command" => sense_key::ABORTED_COMMAND,
                    _ => return None,
                },
            },
            ["short"] => StorageFault::Short,
            ["corrupt", kind] => StorageFault::Corrupt(match *kind {
                "unknown-id" => Corruption::UnknownTransaction,
                "duplicate" => Corruption::Duplicate,
                "transfer-beyond" => Corruption::TransferBeyondRequest,
                "sense-beyond" => Corruption::SenseBeyondField,
                _ => return None,
            }),
            _ => return None,
        })
    }

    /// The usage text of [`StorageFault::parse`].
    pub const USAGE: &'static str = "delay MS [COUNT] | withhold COUNT | fail not-ready|medium-error|hardware-error|illegal-request|unit-attention|data-protect|aborted-command | short | corrupt unknown-id|duplicate|transfer-beyond|sense-beyond";
}

/// The sense a `Fail` fault reports for a key (a typical code for it).
fn fault_sense(key: u8, write: bool) -> asc::Code {
    match key {
        sense_key::NOT_READY => asc::LUN_BECOMING_READY,
        sense_key::MEDIUM_ERROR if write => asc::WRITE_ERROR,
        sense_key::MEDIUM_ERROR => asc::UNRECOVERED_READ_ERROR,
        sense_key::HARDWARE_ERROR => asc::INTERNAL_TARGET_FAILURE,
        sense_key::ILLEGAL_REQUEST => asc::INVALID_FIELD_IN_CDB,
        sense_key::UNIT_ATTENTION => asc::POWER_ON_RESET,
        sense_key::DATA_PROTECT => asc::WRITE_PROTECTED,
        _ => asc::NO_ADDITIONAL_SENSE,
    }
}

/// What the host saw on a controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Initialization packets handled and versions refused.
    pub init_packets: u64,
    pub versions_refused: u64,
    /// EXECUTE_SRB requests, and those that came on sub-channels.
    pub requests: u64,
    pub requests_on_sub_channels: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub unmaps: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests completed with CHECK CONDITION, and other SRB failures.
    pub check_conditions: u64,
    pub srb_errors: u64,
    pub unit_attentions: u64,
    /// Rule violations (also logged): out-of-order operations, a data
    /// range outside the memory the host sees, lengths that do not match,
    /// packets without a transaction, completions from the guest.
    pub rule_violations: u64,
    pub gpa_outside_memory: u64,
    pub resets: u64,
    pub enumerate_bus_sent: u64,
    pub sub_channels_offered: u64,
    /// Fault injection done.
    pub completions_delayed: u64,
    pub completions_withheld: u64,
    pub completions_corrupted: u64,
    pub failures_injected: u64,
    pub short_transfers: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolState {
    Begin,
    QueryVersion,
    QueryProperties {
        version: u16,
    },
    EndInitialization {
        version: u16,
        sub_channels: Option<u16>,
    },
    Ready {
        version: u16,
    },
}

/// A completion held back (delay fault).
struct Pending {
    relid: u32,
    due_ns: u64,
    transaction_id: u64,
    payload: Vec<u8>,
}

/// LUNs a controller has at most (Hyper-V's 64 per SCSI controller).
pub const MAX_LUNS: u8 = 64;

/// Completions held at most (a delay fault on a busy guest).
const MAX_PENDING: usize = 1024;
/// Violations kept for the operator (oldest dropped).
const VIOLATIONS_KEPT: usize = 32;

/// The storage controller of one device instance.
pub struct StorageController {
    pub config: StorageConfig,
    luns: BTreeMap<u8, Lun>,
    state: ProtocolState,
    pub stats: StorageStats,
    /// Why rules were violated, newest last (bounded).
    pub violations: VecDeque<String>,
    faults: VecDeque<StorageFault>,
    /// Delay fault still running: (ms, requests left).
    delay: Option<(u64, u32)>,
    withhold: u32,
    pending: Vec<Pending>,
    /// The guest asked for sub-channels: the server makes the device's
    /// sub-channels this many in all (as Hyper-V: a count, not an
    /// increment) and clears it.
    pub sub_channels_requested: Option<u16>,
    /// The LUN set changed: tell the guest (ENUMERATE_BUS) once ready.
    rescan_pending: bool,
    next_unique: u64,
}

impl StorageController {
    pub fn new(config: StorageConfig) -> Self {
        StorageController {
            config: StorageConfig {
                max_transfer_bytes: config.max_transfer_bytes.clamp(4096, MAX_TRANSFER_LIMIT),
                max_sub_channels: if config.ide {
                    0
                } else {
                    config
                        .max_sub_channels
                        .min(crate::vmbus::MAX_DEVICE_SUB_CHANNELS)
                },
                ..config
            },
            luns: BTreeMap::new(),
            state: ProtocolState::Begin,
            stats: StorageStats::default(),
            violations: VecDeque::new(),
            faults: VecDeque::new(),
            delay: None,
            withhold: 0,
            pending: Vec::new(),
            sub_channels_requested: None,
            rescan_pending: false,
            next_unique: 1,
        }
    }

    /// The negotiated version once initialization ended.
    pub fn version(&self) -> Option<u16> {
        match self.state {
            ProtocolState::Ready { version } => Some(version),
            _ => None,
        }
    }

    pub fn luns(&self) -> Vec<u8> {
        self.luns.keys().copied().collect()
    }

    pub fn lun(&self, lun: u8) -> Option<&Lun> {
        self.luns.get(&lun)
    }

    pub fn lun_mut(&mut self, lun: u8) -> Option<&mut Lun> {
        self.luns.get_mut(&lun)
    }

    fn new_lun(&mut self, lun: u8, disk: BoxedDisk) -> Lun {
        let unique = self.next_unique;
        self.next_unique += 1;
        Lun::new(disk, format!("HVSIM{lun:03}{unique:08X}"), unique)
    }

    /// A disk present from the start (no unit attention, no rescan).
    /// False if the LUN is taken (or the IDE controller has its disk).
    pub fn attach(&mut self, lun: u8, disk: BoxedDisk) -> bool {
        if lun >= MAX_LUNS || self.luns.contains_key(&lun) || (self.config.ide && lun != 0) {
            return false;
        }
        let unit = self.new_lun(lun, disk);
        self.luns.insert(lun, unit);
        true
    }

    /// Hot add: the new LUN reports POWER ON/RESET, the others REPORTED
    /// LUNS DATA HAS CHANGED, and the guest is told to rescan.
    pub fn hot_add(&mut self, lun: u8, disk: BoxedDisk) -> bool {
        if !self.attach(lun, disk) {
            return false;
        }
        for (&number, unit) in self.luns.iter_mut() {
            unit.attention(if number == lun {
                asc::POWER_ON_RESET
            } else {
                asc::REPORTED_LUNS_DATA_CHANGED
            });
        }
        self.rescan_pending = true;
        true
    }

    /// Hot remove: the remaining LUNs report REPORTED LUNS DATA HAS
    /// CHANGED and the guest is told to rescan. The disk is returned.
    pub fn hot_remove(&mut self, lun: u8) -> Option<BoxedDisk> {
        let unit = self.luns.remove(&lun)?;
        for unit in self.luns.values_mut() {
            unit.attention(asc::REPORTED_LUNS_DATA_CHANGED);
        }
        self.rescan_pending = true;
        Some(unit.disk)
    }

    /// Replace a LUN's disk (the medium changed): the LUN reports MEDIUM
    /// MAY HAVE CHANGED, or CAPACITY DATA HAS CHANGED if only its size
    /// differs from the old one's.
    pub fn change_disk(&mut self, lun: u8, disk: BoxedDisk) -> Option<BoxedDisk> {
        let unit = self.luns.get_mut(&lun)?;
        let old = core::mem::replace(&mut unit.disk, disk);
        unit.attention(asc::MEDIUM_MAY_HAVE_CHANGED);
        if old.block_count() != unit.disk.block_count() {
            unit.attention(asc::CAPACITY_DATA_CHANGED);
        }
        Some(old)
    }

    pub fn inject(&mut self, fault: StorageFault) {
        if self.faults.len() < 64 {
            self.faults.push_back(fault);
        }
    }

    /// The primary channel (re)opened: initialization starts again and
    /// held completions of the old channels are dropped.
    pub fn reset_protocol(&mut self) {
        self.state = ProtocolState::Begin;
        self.pending.clear();
        self.sub_channels_requested = None;
    }

    /// Completions held for channels that closed go nowhere.
    pub fn forget_channel(&mut self, relid: u32) {
        self.pending.retain(|pending| pending.relid != relid);
    }

    pub fn pending_completions(&self) -> usize {
        self.pending.len()
    }

    fn violation(&mut self, why: String) {
        self.stats.rule_violations += 1;
        if self.violations.len() == VIOLATIONS_KEPT {
            self.violations.pop_front();
        }
        self.violations.push_back(why);
    }

    /// One line of totals (the script and operator `report`).
    pub fn report(&self) -> String {
        let s = &self.stats;
        let version = self
            .version()
            .map_or(String::from("none"), |v| format!("{v:#06x}"));
        format!(
            "version {version}, {} LUNs; {} requests ({} on sub-channels): {} reads {} bytes, {} writes {} bytes, {} flushes, {} unmaps; \
             {} check conditions, {} SRB errors, {} unit attentions; rule violations {}, GPA outside memory {}; \
             faults: {} delayed, {} withheld, {} corrupted, {} failed, {} short; {} ENUMERATE_BUS sent, {} sub-channels offered, {} bus resets",
            self.luns.len(),
            s.requests,
            s.requests_on_sub_channels,
            s.reads,
            s.bytes_read,
            s.writes,
            s.bytes_written,
            s.flushes,
            s.unmaps,
            s.check_conditions,
            s.srb_errors,
            s.unit_attentions,
            s.rule_violations,
            s.gpa_outside_memory,
            s.completions_delayed,
            s.completions_withheld,
            s.completions_corrupted,
            s.failures_injected,
            s.short_transfers,
            s.enumerate_bus_sent,
            s.sub_channels_offered,
            s.resets,
        )
    }

    /// Handles the vstor packets one channel received in its step, sends
    /// what is due (held completions, a rescan notice); returns whether
    /// to signal the guest.
    pub fn serve<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        primary: bool,
        packets: Vec<ReceivedPacket>,
        now_ns: u64,
    ) -> bool {
        let mut signal = false;
        for packet in packets {
            signal |= self.handle(endpoint, memory, relid, primary, packet, now_ns);
        }
        // Held completions that are due, in the order they were held.
        let mut index = 0;
        while index < self.pending.len() {
            if self.pending[index].relid == relid && self.pending[index].due_ns <= now_ns {
                let due = self.pending.remove(index);
                signal |= endpoint.send_completion(memory, due.transaction_id, &due.payload);
            } else {
                index += 1;
            }
        }
        if primary && self.rescan_pending {
            if let Some(version) = self.version() {
                self.rescan_pending = false;
                if version::supports_enumerate_bus(version) {
                    signal |= self.send_enumerate(endpoint, memory, operation::ENUMERATE_BUS);
                }
            }
        }
        signal
    }

    /// Sends an unsolicited ENUMERATE_BUS or REMOVE_DEVICE on the primary
    /// (operator: the guest rescans). False before initialization ended.
    pub fn send_enumerate<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        op: u32,
    ) -> bool {
        let Some(version) = self.version() else {
            return false;
        };
        let mut bytes = [0u8; vstor::MAX_PACKET_SIZE];
        let Some(len) = vstor::write_packet(&mut bytes, version, op, 0, status::SUCCESS, &[])
        else {
            return false;
        };
        self.stats.enumerate_bus_sent += 1;
        endpoint.send_in_band(memory, 0, false, &bytes[..len])
    }

    /// A completion of `transaction_id`: the header and `payload`,
    /// zero-padded or cut to `payload_len` (the request's own length).
    fn completion_bytes(status: u32, payload: &[u8], payload_len: usize) -> Vec<u8> {
        let header = VstorHeader {
            operation: operation::COMPLETE_IO.into(),
            flags: 0.into(),
            status: status.into(),
        };
        let mut bytes = header.as_bytes().to_vec();
        let take = payload.len().min(payload_len);
        bytes.extend_from_slice(&payload[..take]);
        bytes.resize(vstor::HEADER_SIZE + payload_len, 0);
        bytes
    }

    fn complete<M: GuestMemory>(
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        packet: &ReceivedPacket,
        status: u32,
        payload: &[u8],
    ) -> bool {
        let payload_len = packet
            .payload
            .len()
            .saturating_sub(vstor::HEADER_SIZE)
            .min(vstor::PAYLOAD_SIZE);
        let bytes = Self::completion_bytes(status, payload, payload_len);
        endpoint.send_completion(memory, packet.transaction_id, &bytes)
    }

    fn handle<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        primary: bool,
        packet: ReceivedPacket,
        now_ns: u64,
    ) -> bool {
        if packet.packet_type == PacketType::Completion.wire() {
            // The host asks for no completions.
            endpoint.stats.unknown_responses += 1;
            self.violation(format!(
                "relid {relid}: a completion (transaction {:#x}) the host never asked for",
                packet.transaction_id
            ));
            return false;
        }
        if !packet.completion_requested {
            self.violation(format!(
                "relid {relid}: a vstor packet without a completion request"
            ));
            return false;
        }
        let Ok(parsed) = vstor::parse(&packet.payload) else {
            self.violation(format!(
                "relid {relid}: a packet of {} bytes is no vstor packet",
                packet.payload.len()
            ));
            return Self::complete(endpoint, memory, &packet, status::INVALID_PARAMETER, &[]);
        };
        let op = parsed.operation();
        if let ProtocolState::Ready { version } = self.state {
            return self.handle_ready(endpoint, memory, relid, primary, &packet, version, now_ns);
        }
        if !primary {
            self.violation(format!(
                "relid {relid}: {} on a sub-channel before initialization ended",
                operation::name(op)
            ));
            return Self::complete(endpoint, memory, &packet, status::INVALID_DEVICE_STATE, &[]);
        }
        self.stats.init_packets += 1;
        let out_of_order = |this: &mut Self| {
            this.violation(format!(
                "relid {relid}: {} out of order ({:?})",
                operation::name(op),
                this.state
            ));
        };
        match (self.state, op) {
            (ProtocolState::Begin, operation::BEGIN_INITIALIZATION) => {
                self.state = ProtocolState::QueryVersion;
                Self::complete(endpoint, memory, &packet, status::SUCCESS, &[])
            }
            (ProtocolState::QueryVersion, operation::QUERY_PROTOCOL_VERSION) => {
                let Ok(asked) = parsed.payload_as::<ProtocolVersion>() else {
                    self.violation(format!("relid {relid}: QUERY_PROTOCOL_VERSION truncated"));
                    return Self::complete(
                        endpoint,
                        memory,
                        &packet,
                        status::INVALID_PARAMETER,
                        &[],
                    );
                };
                let asked_version = asked.major_minor.get();
                let answer = ProtocolVersion {
                    major_minor: asked_version.into(),
                    revision: 0.into(),
                };
                if version::is_known(asked_version) && asked_version <= self.config.newest_version {
                    self.state = ProtocolState::QueryProperties {
                        version: asked_version,
                    };
                    Self::complete(
                        endpoint,
                        memory,
                        &packet,
                        status::SUCCESS,
                        answer.as_bytes(),
                    )
                } else {
                    self.stats.versions_refused += 1;
                    Self::complete(
                        endpoint,
                        memory,
                        &packet,
                        status::REVISION_MISMATCH,
                        answer.as_bytes(),
                    )
                }
            }
            (ProtocolState::QueryProperties { version }, operation::QUERY_PROPERTIES) => {
                let multi =
                    version::supports_multi_channel(version) && self.config.max_sub_channels > 0;
                let properties = ChannelProperties {
                    max_channel_count: (if multi {
                        self.config.max_sub_channels
                    } else {
                        0
                    })
                    .into(),
                    flags: (if multi {
                        channel_flags::MULTI_CHANNEL
                    } else {
                        0
                    } | if self.config.ide {
                        channel_flags::EMULATED_IDE
                    } else {
                        0
                    })
                    .into(),
                    max_transfer_bytes: self.config.max_transfer_bytes.into(),
                    ..ChannelProperties::default()
                };
                self.state = ProtocolState::EndInitialization {
                    version,
                    sub_channels: if multi { None } else { Some(0) },
                };
                Self::complete(
                    endpoint,
                    memory,
                    &packet,
                    status::SUCCESS,
                    properties.as_bytes(),
                )
            }
            (
                ProtocolState::EndInitialization {
                    version,
                    sub_channels: None,
                },
                operation::CREATE_SUB_CHANNELS,
            ) => match self.sub_channel_request(&parsed) {
                Some(count) => {
                    self.state = ProtocolState::EndInitialization {
                        version,
                        sub_channels: Some(count),
                    };
                    Self::complete(endpoint, memory, &packet, status::SUCCESS, &[])
                }
                None => Self::complete(endpoint, memory, &packet, status::INVALID_PARAMETER, &[]),
            },
            (ProtocolState::EndInitialization { version, .. }, operation::END_INITIALIZATION) => {
                self.state = ProtocolState::Ready { version };
                // The guest scans now: no separate rescan notice needed.
                self.rescan_pending = false;
                Self::complete(endpoint, memory, &packet, status::SUCCESS, &[])
            }
            _ => {
                out_of_order(self);
                Self::complete(endpoint, memory, &packet, status::INVALID_DEVICE_STATE, &[])
            }
        }
    }

    /// A CREATE_SUB_CHANNELS count the host accepts (and asks the server
    /// to offer), or None.
    fn sub_channel_request(&mut self, parsed: &vstor::VstorPacket<'_>) -> Option<u16> {
        let count = parsed.payload_as::<SubChannelCount>().ok()?.count.get();
        if count == 0 || count > self.config.max_sub_channels {
            return None;
        }
        self.sub_channels_requested = Some(count);
        Some(count)
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_ready<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        primary: bool,
        packet: &ReceivedPacket,
        version: u16,
        now_ns: u64,
    ) -> bool {
        let Ok(parsed) = vstor::parse(&packet.payload) else {
            return false;
        };
        match parsed.operation() {
            operation::EXECUTE_SRB => {
                self.execute(endpoint, memory, relid, primary, packet, version, now_ns)
            }
            operation::RESET_LUN | operation::RESET_ADAPTER | operation::RESET_BUS => {
                // As on Hyper-V: accepted, nothing to do.
                self.stats.resets += 1;
                Self::complete(endpoint, memory, packet, status::SUCCESS, &[])
            }
            operation::CREATE_SUB_CHANNELS
                if primary
                    && self.config.max_sub_channels > 0
                    && version::supports_multi_channel(version) =>
            {
                let status = match self.sub_channel_request(&parsed) {
                    Some(_) => status::SUCCESS,
                    None => status::INVALID_PARAMETER,
                };
                Self::complete(endpoint, memory, packet, status, &[])
            }
            op => {
                self.violation(format!(
                    "relid {relid}: {} after initialization",
                    operation::name(op)
                ));
                Self::complete(endpoint, memory, packet, status::INVALID_DEVICE_STATE, &[])
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn execute<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        primary: bool,
        packet: &ReceivedPacket,
        version: u16,
        now_ns: u64,
    ) -> bool {
        let parsed = vstor::parse(&packet.payload).expect("parsed before");
        let Ok(request) = parsed.scsi_request() else {
            self.violation(format!("relid {relid}: EXECUTE_SRB without a SCSI request"));
            return Self::complete(endpoint, memory, packet, status::INVALID_PARAMETER, &[]);
        };
        self.stats.requests += 1;
        if !primary {
            self.stats.requests_on_sub_channels += 1;
        }
        let (result, io) = self.run_request(memory, relid, packet, &request);
        self.finish(
            endpoint, memory, relid, packet, &request, result, io, version, now_ns,
        )
    }

    /// Checks the request and its data, applies a `Fail`/`Short`/
    /// `Withhold` fault, and runs the command. None: withheld.
    fn run_request<M: GuestMemory>(
        &mut self,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        request: &ScsiRequest,
    ) -> (Option<ScsiResult>, bool) {
        let Ok(cdb) = request.cdb() else {
            self.violation(format!(
                "relid {relid}: CDB length {} beyond the CDB field",
                request.cdb_length
            ));
            return (Some(ScsiResult::srb(srb::INVALID_REQUEST)), false);
        };
        let cdb: Vec<u8> = cdb.to_vec();
        let io = scsi_target::is_io(&cdb);
        let length = request.data_transfer_length.get();
        if length > self.config.max_transfer_bytes {
            self.violation(format!(
                "relid {relid}: {length} bytes beyond the {} the host allows",
                self.config.max_transfer_bytes
            ));
            return (Some(ScsiResult::srb(srb::INVALID_REQUEST)), io);
        }
        let buffer = match self.buffer(memory, relid, packet, length) {
            Ok(buffer) => buffer,
            Err(result) => return (Some(result), io),
        };
        let mut short = false;
        if io {
            if self.withhold > 0 {
                self.withhold -= 1;
                self.stats.completions_withheld += 1;
                return (None, io);
            }
            match self.faults.front().copied() {
                Some(StorageFault::Withhold { count }) if count > 0 => {
                    self.faults.pop_front();
                    self.withhold = count - 1;
                    self.stats.completions_withheld += 1;
                    return (None, io);
                }
                Some(StorageFault::Fail { sense_key }) => {
                    self.faults.pop_front();
                    self.stats.failures_injected += 1;
                    let write = matches!(
                        cdb[0],
                        vmbus_protocol::scsi::opcode::WRITE_10
                            | vmbus_protocol::scsi::opcode::WRITE_16
                    );
                    return (
                        Some(ScsiResult::check(sense_key, fault_sense(sense_key, write))),
                        io,
                    );
                }
                Some(StorageFault::Short) if scsi::parse_read_write(&cdb).is_some() => {
                    self.faults.pop_front();
                    self.stats.short_transfers += 1;
                    short = true;
                }
                _ => {}
            }
        }
        // Units are at path 0, target 0 only (an IDE channel's one disk
        // answers whatever path and target the guest names, as storvsp
        // forces them there).
        let lun = if (request.path_id != 0 || request.target_id != 0) && !self.config.ide {
            u8::MAX
        } else {
            request.lun
        };
        let command = Command {
            lun,
            cdb: &cdb,
            direction: request.data_in,
            buffer: &buffer,
            short,
            max_transfer_bytes: self.config.max_transfer_bytes,
        };
        let mut effect = Effect::default();
        let result = scsi_target::execute(&mut self.luns, memory, &command, &mut effect);
        let s = &mut self.stats;
        s.reads += u64::from(effect.read);
        s.writes += u64::from(effect.write);
        s.flushes += u64::from(effect.flush);
        s.unmaps += u64::from(effect.unmap);
        s.bytes_read += effect.bytes_read;
        s.bytes_written += effect.bytes_written;
        s.unit_attentions += u64::from(effect.unit_attention);
        if effect.violation {
            self.violation(format!(
                "relid {relid}: opcode {:#04x} with {length} bytes of data (direction {}) that the CDB does not move",
                cdb[0], request.data_in
            ));
        }
        (Some(result), io)
    }

    /// The request's data buffer: none without data, else the single
    /// multi-page range of its GPA-direct packet, exactly `length` bytes,
    /// every page in memory the host sees.
    fn buffer<M: GuestMemory>(
        &mut self,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        length: u32,
    ) -> Result<GuestBuffer, ScsiResult> {
        if packet.packet_type != PacketType::GpaDirect.wire() {
            if length == 0 {
                return Ok(GuestBuffer::empty());
            }
            self.violation(format!(
                "relid {relid}: {length} bytes of data in a packet without GPA ranges"
            ));
            return Err(ScsiResult::srb(srb::INVALID_REQUEST));
        }
        let [range] = packet.ranges.as_slice() else {
            self.violation(format!(
                "relid {relid}: {} GPA ranges (storvsc sends one)",
                packet.ranges.len()
            ));
            return Err(ScsiResult::srb(srb::INVALID_REQUEST));
        };
        if range.byte_count != length {
            self.violation(format!(
                "relid {relid}: data_transfer_length {length} but the range has {} bytes",
                range.byte_count
            ));
            return Err(ScsiResult::srb(srb::INVALID_REQUEST));
        }
        GuestBuffer::resolve(memory, range.byte_offset, range.byte_count, &range.pfns).map_err(
            |error| {
                match error {
                    scsi_target::BufferError::OutsideMemory(pfn) => {
                        self.stats.gpa_outside_memory += 1;
                        self.violation(format!(
                            "relid {relid}: page {pfn:#x} is not memory the host may see"
                        ));
                    }
                    scsi_target::BufferError::LengthMismatch => self.violation(format!(
                        "relid {relid}: the range's pages do not hold its {length} bytes"
                    )),
                }
                ScsiResult::srb(srb::ERROR)
            },
        )
    }

    /// Builds and sends (or holds, or corrupts) the completion.
    #[allow(clippy::too_many_arguments)]
    fn finish<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        relid: u32,
        packet: &ReceivedPacket,
        request: &ScsiRequest,
        result: Option<ScsiResult>,
        io: bool,
        version: u16,
        now_ns: u64,
    ) -> bool {
        let Some(result) = result else {
            return false;
        };
        if result.is_check_condition() {
            self.stats.check_conditions += 1;
        } else if srb::code(result.srb_status) != srb::SUCCESS {
            self.stats.srb_errors += 1;
        }
        let mut response = *request;
        response.srb_status = result.srb_status;
        response.scsi_status = result.scsi_status;
        response.data_transfer_length = result.transferred.into();
        response.sense_info_length = 0;
        if let Some(sense) = result.sense {
            let room = (request.sense_info_length as usize)
                .min(vstor::sense_buffer_size(version))
                .min(sense.as_bytes().len());
            response.cdb_or_sense = [0; vstor::CDB_AREA_SIZE];
            response.cdb_or_sense[..room].copy_from_slice(&sense.as_bytes()[..room]);
            response.sense_info_length = room as u8;
            if room > 0 {
                response.srb_status |= srb::AUTOSENSE_VALID;
            }
        }
        let mut nt_status = srb::nt_status(response.srb_status);
        let mut transaction_id = packet.transaction_id;
        let mut duplicate = false;
        if io {
            if let Some(StorageFault::Corrupt(kind)) = self.faults.front().copied() {
                self.faults.pop_front();
                self.stats.completions_corrupted += 1;
                match kind {
                    Corruption::UnknownTransaction => {
                        transaction_id = 0xBAD5_0000_0000_0000 | (packet.transaction_id & 0xFFFF)
                    }
                    Corruption::Duplicate => duplicate = true,
                    Corruption::TransferBeyondRequest => {
                        response.data_transfer_length =
                            (request.data_transfer_length.get().saturating_add(4096)).into();
                        nt_status = status::SUCCESS;
                        response.srb_status = srb::SUCCESS;
                    }
                    Corruption::SenseBeyondField => {
                        response.srb_status |= srb::AUTOSENSE_VALID;
                        response.sense_info_length = 0xFF;
                    }
                }
            }
        }
        let payload_len = packet
            .payload
            .len()
            .saturating_sub(vstor::HEADER_SIZE)
            .min(vstor::PAYLOAD_SIZE);
        let bytes = Self::completion_bytes(nt_status, response.as_bytes(), payload_len);
        if io {
            let delay = match (self.delay, self.faults.front().copied()) {
                (Some((ms, left)), _) if left > 0 => {
                    self.delay = (left > 1).then_some((ms, left - 1));
                    Some(ms)
                }
                (_, Some(StorageFault::Delay { ms, count })) if count > 0 => {
                    self.faults.pop_front();
                    self.delay = (count > 1).then_some((ms, count - 1));
                    Some(ms)
                }
                _ => None,
            };
            if let Some(ms) = delay {
                if self.pending.len() < MAX_PENDING {
                    self.stats.completions_delayed += 1;
                    self.pending.push(Pending {
                        relid,
                        due_ns: now_ns.saturating_add(ms.saturating_mul(1_000_000)),
                        transaction_id,
                        payload: bytes,
                    });
                    return false;
                }
            }
        }
        let mut signal = endpoint.send_completion(memory, transaction_id, &bytes);
        if duplicate {
            signal |= endpoint.send_completion(memory, transaction_id, &bytes);
        }
        signal
    }
}

#[cfg(test)]
mod tests;
