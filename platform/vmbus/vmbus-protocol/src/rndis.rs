//! Remote NDIS (RNDIS) as a synthetic NIC speaks it inside NVSP
//! `SEND_RNDIS_PACKET` messages ([`crate::nvsp`]): the message types,
//! requests and completions, status indications, the data packet with its
//! per-packet info, the OIDs, packet filter bits, offload and RSS
//! parameters, and the NDIS status codes.
//!
//! Layout as Linux `rndis.h`/`hyperv_net.h` and OpenVMM's netvsp
//! `rndisprot` have it (read for behaviour, not copied). Every message
//! starts with an 8-byte [`MessageHeader`] (type, total length); the body
//! follows. Every offset inside a message (`data_offset`,
//! `per_packet_info_offset`, `information_buffer_offset`,
//! `status_buffer_offset`) counts from the start of the body (the byte
//! after the header), never from the header.
//!
//! Control requests carry a request id the completion echoes. Data
//! ([`message_type::PACKET`]) carries one Ethernet frame (no FCS) at
//! `data_offset`, optionally preceded by per-packet info ([`PerPacketInfo`]
//! records: checksum offload, hash value).
//!
//! [`parse`] checks the header's length against the bytes it was given;
//! [`Message::packet`], [`Message::info_buffer`] and [`PacketMessage::per_packet_info`]
//! check every offset and length against the message, so a hostile
//! message can only be refused, never read beyond.

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// RNDIS message types; a completion is its request's type | 0x8000_0000.
pub mod message_type {
    pub const PACKET: u32 = 0x0000_0001;
    pub const INITIALIZE: u32 = 0x0000_0002;
    pub const HALT: u32 = 0x0000_0003;
    pub const QUERY: u32 = 0x0000_0004;
    pub const SET: u32 = 0x0000_0005;
    pub const RESET: u32 = 0x0000_0006;
    pub const INDICATE_STATUS: u32 = 0x0000_0007;
    pub const KEEPALIVE: u32 = 0x0000_0008;
    pub const SET_EX: u32 = 0x0000_0009;
    pub const COMPLETION: u32 = 0x8000_0000;
    pub const INITIALIZE_COMPLETE: u32 = INITIALIZE | COMPLETION;
    pub const QUERY_COMPLETE: u32 = QUERY | COMPLETION;
    pub const SET_COMPLETE: u32 = SET | COMPLETION;
    pub const RESET_COMPLETE: u32 = RESET | COMPLETION;
    pub const KEEPALIVE_COMPLETE: u32 = KEEPALIVE | COMPLETION;
    pub const SET_EX_COMPLETE: u32 = SET_EX | COMPLETION;

    /// A short name for logs.
    pub fn name(message_type: u32) -> &'static str {
        match message_type {
            PACKET => "PACKET",
            INITIALIZE => "INITIALIZE",
            HALT => "HALT",
            QUERY => "QUERY",
            SET => "SET",
            RESET => "RESET",
            INDICATE_STATUS => "INDICATE_STATUS",
            KEEPALIVE => "KEEPALIVE",
            SET_EX => "SET_EX",
            INITIALIZE_COMPLETE => "INITIALIZE_COMPLETE",
            QUERY_COMPLETE => "QUERY_COMPLETE",
            SET_COMPLETE => "SET_COMPLETE",
            RESET_COMPLETE => "RESET_COMPLETE",
            KEEPALIVE_COMPLETE => "KEEPALIVE_COMPLETE",
            SET_EX_COMPLETE => "SET_EX_COMPLETE",
            _ => "unknown",
        }
    }
}

/// NDIS status codes: in completions and as the indication in
/// INDICATE_STATUS.
pub mod status {
    pub const SUCCESS: u32 = 0x0000_0000;
    pub const PENDING: u32 = 0x0000_0103;
    pub const NOT_ACCEPTED: u32 = 0x0001_0003;
    pub const ONLINE: u32 = 0x4001_0003;
    pub const RESET_START: u32 = 0x4001_0004;
    pub const RESET_END: u32 = 0x4001_0005;
    /// Indication: the link is up.
    pub const MEDIA_CONNECT: u32 = 0x4001_000B;
    /// Indication: the link is down.
    pub const MEDIA_DISCONNECT: u32 = 0x4001_000C;
    pub const LINK_SPEED_CHANGE: u32 = 0x4001_0013;
    /// Indication: the network changed (the guest renews its address).
    pub const NETWORK_CHANGE: u32 = 0x4001_0018;
    pub const TASK_OFFLOAD_CURRENT_CONFIG: u32 = 0x4002_0006;
    pub const BUFFER_OVERFLOW: u32 = 0x8000_0005;
    pub const FAILURE: u32 = 0xC000_0001;
    pub const RESOURCES: u32 = 0xC000_009A;
    pub const NOT_SUPPORTED: u32 = 0xC000_00BB;
    pub const INVALID_PACKET: u32 = 0xC001_000F;
    pub const ADAPTER_NOT_READY: u32 = 0xC001_0011;
    pub const INVALID_LENGTH: u32 = 0xC001_0014;
    pub const INVALID_DATA: u32 = 0xC001_0015;
    pub const BUFFER_TOO_SHORT: u32 = 0xC001_0016;
    pub const INVALID_OID: u32 = 0xC001_0017;
}

/// Object identifiers for QUERY and SET.
pub mod oid {
    pub const GEN_SUPPORTED_LIST: u32 = 0x0001_0101;
    pub const GEN_HARDWARE_STATUS: u32 = 0x0001_0102;
    pub const GEN_MEDIA_SUPPORTED: u32 = 0x0001_0103;
    pub const GEN_MEDIA_IN_USE: u32 = 0x0001_0104;
    /// u32: the largest frame without the Ethernet header (the MTU).
    pub const GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
    /// u32: in units of 100 bits/s.
    pub const GEN_LINK_SPEED: u32 = 0x0001_0107;
    pub const GEN_VENDOR_ID: u32 = 0x0001_010C;
    pub const GEN_VENDOR_DESCRIPTION: u32 = 0x0001_010D;
    /// u32: [`super::packet_filter`] bits.
    pub const GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
    pub const GEN_MAXIMUM_TOTAL_SIZE: u32 = 0x0001_0111;
    pub const GEN_MAC_OPTIONS: u32 = 0x0001_0113;
    /// u32: [`super::media_state`].
    pub const GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
    pub const GEN_RECEIVE_SCALE_CAPABILITIES: u32 = 0x0001_0203;
    pub const GEN_RECEIVE_SCALE_PARAMETERS: u32 = 0x0001_0204;
    pub const GEN_FRIENDLY_NAME: u32 = 0x0002_0216;
    /// 6 bytes.
    pub const IEEE_802_3_PERMANENT_ADDRESS: u32 = 0x0101_0101;
    /// 6 bytes.
    pub const IEEE_802_3_CURRENT_ADDRESS: u32 = 0x0101_0102;
    pub const IEEE_802_3_MULTICAST_LIST: u32 = 0x0101_0103;
    pub const IEEE_802_3_MAXIMUM_LIST_SIZE: u32 = 0x0101_0104;
    pub const OFFLOAD_ENCAPSULATION: u32 = 0x0101_010A;
    pub const TCP_OFFLOAD_CURRENT_CONFIG: u32 = 0xFC01_020B;
    /// [`super::NdisOffloadParameters`].
    pub const TCP_OFFLOAD_PARAMETERS: u32 = 0xFC01_020C;
    pub const TCP_OFFLOAD_HARDWARE_CAPABILITIES: u32 = 0xFC01_020D;
}

/// `GEN_CURRENT_PACKET_FILTER` bits.
pub mod packet_filter {
    pub const DIRECTED: u32 = 0x0000_0001;
    pub const MULTICAST: u32 = 0x0000_0002;
    pub const ALL_MULTICAST: u32 = 0x0000_0004;
    pub const BROADCAST: u32 = 0x0000_0008;
    pub const SOURCE_ROUTING: u32 = 0x0000_0010;
    pub const PROMISCUOUS: u32 = 0x0000_0020;
    pub const SMT: u32 = 0x0000_0040;
    pub const ALL_LOCAL: u32 = 0x0000_0080;
    pub const GROUP: u32 = 0x0000_1000;
    pub const ALL_FUNCTIONAL: u32 = 0x0000_2000;
    pub const FUNCTIONAL: u32 = 0x0000_4000;
    pub const MAC_FRAME: u32 = 0x0000_8000;
}

/// `GEN_MEDIA_CONNECT_STATUS` values.
pub mod media_state {
    pub const CONNECTED: u32 = 0;
    pub const DISCONNECTED: u32 = 1;
}

/// `InitializeComplete::medium`.
pub const MEDIUM_802_3: u32 = 0;
/// `InitializeComplete::device_flags`.
pub const DF_CONNECTIONLESS: u32 = 0x1;
pub const MAJOR_VERSION: u32 = 1;
pub const MINOR_VERSION: u32 = 0;
/// The `max_transfer_size` a guest announces (Linux's value).
pub const GUEST_MAX_TRANSFER_SIZE: u32 = 0x4000;

/// Per-packet info types (`PerPacketInfo::info_type`).
pub mod ppi {
    /// u32: [`super::checksum_tx`] bits (guest -> host) or
    /// [`super::checksum_rx`] bits (host -> guest).
    pub const TCP_IP_CHECKSUM: u32 = 0;
    pub const IPSEC: u32 = 1;
    pub const TCP_LARGE_SEND: u32 = 2;
    pub const CLASSIFICATION_HANDLE: u32 = 3;
    pub const SG_LIST: u32 = 5;
    pub const IEEE_8021Q: u32 = 6;
    pub const ORIGINAL: u32 = 7;
    /// u32: the RSS hash of the received frame.
    pub const HASH_VALUE: u32 = 8;
    /// Set in `info_type` for the host's private types (e.g. packet id).
    pub const INTERNAL: u32 = 0x8000_0000;
    pub const INTERNAL_PACKET_ID: u32 = INTERNAL | 1;
}

/// Transmit checksum request bits (the `TCP_IP_CHECKSUM` PPI, guest -> host).
pub mod checksum_tx {
    pub const IS_IPV4: u32 = 1 << 0;
    pub const IS_IPV6: u32 = 1 << 1;
    pub const TCP_CHECKSUM: u32 = 1 << 2;
    pub const UDP_CHECKSUM: u32 = 1 << 3;
    pub const IP_HEADER_CHECKSUM: u32 = 1 << 4;
    pub const TCP_HEADER_OFFSET_SHIFT: u32 = 16;
    pub const TCP_HEADER_OFFSET_MASK: u32 = 0x3ff << TCP_HEADER_OFFSET_SHIFT;
}

/// Receive checksum result bits (the `TCP_IP_CHECKSUM` PPI, host -> guest).
pub mod checksum_rx {
    pub const TCP_FAILED: u32 = 1 << 0;
    pub const UDP_FAILED: u32 = 1 << 1;
    pub const IP_FAILED: u32 = 1 << 2;
    pub const TCP_SUCCEEDED: u32 = 1 << 3;
    pub const UDP_SUCCEEDED: u32 = 1 << 4;
    pub const IP_SUCCEEDED: u32 = 1 << 5;
    pub const LOOPBACK: u32 = 1 << 6;
}

/// `NdisObjectHeader::object_type`.
pub mod object_type {
    pub const DEFAULT: u8 = 0x80;
    pub const RSS_CAPABILITIES: u8 = 0x88;
    pub const RSS_PARAMETERS: u8 = 0x89;
    pub const OFFLOAD: u8 = 0xA7;
}

/// Values of the checksum fields of [`NdisOffloadParameters`].
pub mod offload_checksum {
    pub const NO_CHANGE: u8 = 0;
    pub const TX_RX_DISABLED: u8 = 1;
    pub const TX_ENABLED_RX_DISABLED: u8 = 2;
    pub const RX_ENABLED_TX_DISABLED: u8 = 3;
    pub const TX_RX_ENABLED: u8 = 4;
}

/// Values of the LSO/RSC fields of [`NdisOffloadParameters`].
pub mod offload_simple {
    pub const NO_CHANGE: u8 = 0;
    pub const DISABLED: u8 = 1;
    pub const ENABLED: u8 = 2;
}

/// RSS hash function and type bits (`RssParameters::hash_information`).
pub mod rss_hash {
    pub const FUNCTION_TOEPLITZ: u32 = 0x0000_0001;
    pub const IPV4: u32 = 0x0000_0100;
    pub const TCP_IPV4: u32 = 0x0000_0200;
    pub const IPV6: u32 = 0x0000_0400;
    pub const IPV6_EX: u32 = 0x0000_0800;
    pub const TCP_IPV6: u32 = 0x0000_1000;
    pub const TCP_IPV6_EX: u32 = 0x0000_2000;
}

/// `RssParameters::flags`.
pub mod rss_flags {
    pub const BASE_CPU_UNCHANGED: u16 = 0x0001;
    pub const HASH_INFO_UNCHANGED: u16 = 0x0002;
    pub const ITABLE_UNCHANGED: u16 = 0x0004;
    pub const HASH_KEY_UNCHANGED: u16 = 0x0008;
    pub const DISABLE_RSS: u16 = 0x0010;
}

/// Entries in the receive indirection table a guest sets (Linux's ITAB_NUM).
pub const RSS_INDIRECTION_ENTRIES: usize = 128;
/// Bytes of the Toeplitz key.
pub const RSS_HASH_KEY_SIZE: usize = 40;

macro_rules! wire {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C, packed)]
        pub struct $name { $($(#[$fmeta])* pub $field: $fty,)* }
    };
}

wire! {
    /// The first 8 bytes of every RNDIS message.
    MessageHeader {
        message_type: U32,
        /// Bytes of the whole message, header included.
        message_length: U32,
    }
}

wire! {
    InitializeRequest {
        request_id: U32,
        major_version: U32,
        minor_version: U32,
        max_transfer_size: U32,
    }
}

wire! {
    InitializeComplete {
        request_id: U32,
        status: U32,
        major_version: U32,
        minor_version: U32,
        device_flags: U32,
        medium: U32,
        /// Data packets the host accepts in one message.
        max_packets_per_message: U32,
        max_transfer_size: U32,
        /// Log2 of the alignment for packets batched into one message.
        packet_alignment_factor: U32,
        af_list_offset: U32,
        af_list_size: U32,
    }
}

wire! {
    /// HALT (no completion) and KEEPALIVE requests.
    RequestId { request_id: U32 }
}

wire! {
    /// QUERY and SET requests; the information buffer follows.
    OidRequest {
        request_id: U32,
        oid: U32,
        information_buffer_length: U32,
        /// From the start of the body (20 when it follows directly).
        information_buffer_offset: U32,
        device_vc_handle: U32,
    }
}

wire! {
    QueryComplete {
        request_id: U32,
        status: U32,
        information_buffer_length: U32,
        information_buffer_offset: U32,
    }
}

wire! {
    /// SET and KEEPALIVE completions.
    StatusComplete {
        request_id: U32,
        status: U32,
    }
}

wire! {
    ResetRequest { reserved: U32 }
}

wire! {
    ResetComplete {
        status: U32,
        addressing_reset: U32,
    }
}

wire! {
    IndicateStatus {
        /// [`status`]: e.g. MEDIA_CONNECT, MEDIA_DISCONNECT.
        status: U32,
        status_buffer_length: U32,
        status_buffer_offset: U32,
    }
}

wire! {
    /// A data packet's fixed part.
    Packet {
        data_offset: U32,
        data_length: U32,
        oob_data_offset: U32,
        oob_data_length: U32,
        num_oob_data_elements: U32,
        per_packet_info_offset: U32,
        per_packet_info_length: U32,
        vc_handle: U32,
        reserved: U32,
    }
}

wire! {
    /// One per-packet info record; its data at `info_offset` from the
    /// record's start, the record `size` bytes long.
    PerPacketInfo {
        size: U32,
        /// [`ppi`].
        info_type: U32,
        info_offset: U32,
    }
}

wire! {
    NdisObjectHeader {
        object_type: u8,
        revision: u8,
        size: U16,
    }
}

wire! {
    /// `TCP_OFFLOAD_PARAMETERS` (revision 3 layout; revision 1 is the first
    /// 20 bytes, revision 2 the first 24).
    NdisOffloadParameters {
        header: NdisObjectHeader,
        /// [`offload_checksum`] values from here to `udp6_checksum`.
        ipv4_checksum: u8,
        tcp4_checksum: u8,
        udp4_checksum: u8,
        tcp6_checksum: u8,
        udp6_checksum: u8,
        /// [`offload_simple`] values.
        lsov1: u8,
        ipsec_v1: u8,
        lsov2_ipv4: u8,
        lsov2_ipv6: u8,
        tcp_connection_ipv4: u8,
        tcp_connection_ipv6: u8,
        reserved: u8,
        flags: U32,
        ipsec_v2: u8,
        ipsec_v2_ipv4: u8,
        rsc_ipv4: u8,
        rsc_ipv6: u8,
        encapsulated_packet_task_offload: u8,
        encapsulation_types: u8,
        padding: [u8; 2],
    }
}

pub const OFFLOAD_PARAMETERS_REVISION_1: u8 = 1;
pub const OFFLOAD_PARAMETERS_REVISION_2: u8 = 2;
pub const OFFLOAD_PARAMETERS_REVISION_3: u8 = 3;
pub const OFFLOAD_PARAMETERS_SIZE_REVISION_1: usize = 20;
pub const OFFLOAD_PARAMETERS_SIZE_REVISION_2: usize = 24;
/// What Linux calls `VERSION_4_OFFLOAD_SIZE`: the information buffer it
/// sends up to NVSP version 4.
pub const OFFLOAD_PARAMETERS_SIZE_VERSION_4: usize = 22;

wire! {
    /// `GEN_RECEIVE_SCALE_CAPABILITIES` (revision 2 is 18 bytes; the padding
    /// makes the record 4-aligned).
    RssCapabilities {
        header: NdisObjectHeader,
        capabilities_flags: U32,
        number_of_interrupt_messages: U32,
        number_of_receive_queues: U32,
        number_of_indirection_table_entries: U16,
        padding: U16,
    }
}

pub const RSS_CAPABILITIES_SIZE_REVISION_2: usize = 18;

wire! {
    /// `GEN_RECEIVE_SCALE_PARAMETERS` (revision 2, 40 bytes); the
    /// indirection table (u32 entries) and hash key follow at their offsets
    /// from the start of this record.
    RssParameters {
        header: NdisObjectHeader,
        /// [`rss_flags`].
        flags: U16,
        base_cpu_number: U16,
        /// [`rss_hash`].
        hash_information: U32,
        indirection_table_size: U16,
        pad0: U16,
        indirection_table_offset: U32,
        hash_secret_key_size: U16,
        pad1: U16,
        hash_secret_key_offset: U32,
        processor_masks_offset: U32,
        number_of_processor_masks: U32,
        processor_masks_entry_size: U32,
    }
}

pub const RSS_PARAMETERS_REVISION_2: u8 = 2;
pub const RSS_PARAMETERS_SIZE_REVISION_2: usize = 40;

pub const HEADER_SIZE: usize = 8;
pub const PACKET_SIZE: usize = 36;
pub const PPI_HEADER_SIZE: usize = 12;

/// Bytes one PPI record with `data_len` bytes of data takes.
pub const fn ppi_size(data_len: usize) -> usize {
    PPI_HEADER_SIZE + data_len
}

/// Why a received RNDIS message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RndisError {
    /// Shorter than the header or than its type's fixed part.
    Truncated { len: usize, needed: usize },
    /// The header's length disagrees with the bytes there are (longer, or
    /// shorter than a header).
    BadLength {
        message_length: u32,
        available: usize,
    },
    /// An offset/length pair pointing outside the message or into its
    /// fixed part.
    BadOffset,
    /// A per-packet info record whose size or offset is inconsistent.
    BadPerPacketInfo,
}

/// A parsed RNDIS message: its type and the body after the header, cut to
/// the header's length.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub message_type: u32,
    pub body: &'a [u8],
}

/// Parses the RNDIS message at the start of `bytes` (already in private
/// memory). `message_length` must lie in `8..=bytes.len()`; trailing bytes
/// beyond it are ignored (the caller decides whether that is allowed).
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, RndisError> {
    let (header, _) =
        MessageHeader::read_from_prefix(bytes).map_err(|_| RndisError::Truncated {
            len: bytes.len(),
            needed: HEADER_SIZE,
        })?;
    let length = header.message_length.get();
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if !(HEADER_SIZE..=bytes.len()).contains(&len) {
        return Err(RndisError::BadLength {
            message_length: length,
            available: bytes.len(),
        });
    }
    Ok(Message {
        message_type: header.message_type.get(),
        body: &bytes[HEADER_SIZE..len],
    })
}

/// `body[offset..offset + len]`, refused if any of it lies outside the
/// body or inside its first `fixed` bytes (unless `len` is 0).
fn body_range(body: &[u8], fixed: usize, offset: u32, len: u32) -> Result<&[u8], RndisError> {
    if len == 0 {
        return Ok(&[]);
    }
    let offset = offset as usize;
    if offset < fixed {
        return Err(RndisError::BadOffset);
    }
    let end = offset
        .checked_add(len as usize)
        .ok_or(RndisError::BadOffset)?;
    body.get(offset..end).ok_or(RndisError::BadOffset)
}

impl<'a> Message<'a> {
    /// Reads a fixed part `T` from the front of the body.
    pub fn fixed<T: FromBytes + KnownLayout + Immutable>(&self) -> Result<T, RndisError> {
        T::read_from_prefix(self.body)
            .map(|(value, _)| value)
            .map_err(|_| RndisError::Truncated {
                len: HEADER_SIZE + self.body.len(),
                needed: HEADER_SIZE + core::mem::size_of::<T>(),
            })
    }

    /// The request id of a completion (or request); every one but
    /// RESET_COMPLETE and INDICATE_STATUS starts with it.
    pub fn request_id(&self) -> Result<u32, RndisError> {
        self.fixed::<RequestId>().map(|id| id.request_id.get())
    }

    /// The information (or status) buffer `offset`/`len` names, checked to
    /// lie after the fixed part `T` and inside the body.
    pub fn info_buffer<T: FromBytes + KnownLayout + Immutable>(
        &self,
        offset: u32,
        len: u32,
    ) -> Result<&'a [u8], RndisError> {
        self.fixed::<T>()?;
        body_range(self.body, core::mem::size_of::<T>(), offset, len)
    }

    /// A QUERY completion: its request id, status and information buffer.
    pub fn query_complete(&self) -> Result<(QueryComplete, &'a [u8]), RndisError> {
        let complete: QueryComplete = self.fixed()?;
        let info = self.info_buffer::<QueryComplete>(
            complete.information_buffer_offset.get(),
            complete.information_buffer_length.get(),
        )?;
        Ok((complete, info))
    }

    /// An INDICATE_STATUS: the status and its buffer.
    pub fn indicate_status(&self) -> Result<(u32, &'a [u8]), RndisError> {
        let indication: IndicateStatus = self.fixed()?;
        let buffer = self.info_buffer::<IndicateStatus>(
            indication.status_buffer_offset.get(),
            indication.status_buffer_length.get(),
        )?;
        Ok((indication.status.get(), buffer))
    }

    /// A QUERY or SET request: the request and its information buffer.
    pub fn oid_request(&self) -> Result<(OidRequest, &'a [u8]), RndisError> {
        let request: OidRequest = self.fixed()?;
        let info = self.info_buffer::<OidRequest>(
            request.information_buffer_offset.get(),
            request.information_buffer_length.get(),
        )?;
        Ok((request, info))
    }

    /// A data packet: the frame and the per-packet info region, both
    /// checked to lie inside the message after the fixed part.
    pub fn packet(&self) -> Result<PacketMessage<'a>, RndisError> {
        let packet: Packet = self.fixed()?;
        let data = body_range(
            self.body,
            PACKET_SIZE,
            packet.data_offset.get(),
            packet.data_length.get(),
        )?;
        let per_packet_info = body_range(
            self.body,
            PACKET_SIZE,
            packet.per_packet_info_offset.get(),
            packet.per_packet_info_length.get(),
        )?;
        Ok(PacketMessage {
            data,
            per_packet_info,
        })
    }
}

/// A data packet's frame and per-packet info bytes.
#[derive(Clone, Copy, Debug)]
pub struct PacketMessage<'a> {
    pub data: &'a [u8],
    pub per_packet_info: &'a [u8],
}

impl<'a> PacketMessage<'a> {
    /// The per-packet info records as (type, data); a malformed record
    /// ends the walk with an error.
    pub fn per_packet_info(&self) -> PpiIter<'a> {
        PpiIter {
            rest: self.per_packet_info,
            failed: false,
        }
    }

    /// The first record of `info_type` whose data holds at least 4 bytes,
    /// as a u32. Ok(None) if there is none.
    pub fn ppi_u32(&self, info_type: u32) -> Result<Option<u32>, RndisError> {
        for record in self.per_packet_info() {
            let (ty, data) = record?;
            if ty == info_type {
                let bytes: [u8; 4] = data
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(RndisError::BadPerPacketInfo)?;
                return Ok(Some(u32::from_le_bytes(bytes)));
            }
        }
        Ok(None)
    }
}

/// Walks per-packet info records; each step is bounded by the region, so
/// the walk ends after at most `len / 12` records.
pub struct PpiIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for PpiIter<'a> {
    type Item = Result<(u32, &'a [u8]), RndisError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let record = PerPacketInfo::read_from_prefix(self.rest)
            .ok()
            .map(|(record, _)| record)
            .filter(|record| {
                let size = record.size.get() as usize;
                let offset = record.info_offset.get() as usize;
                size >= PPI_HEADER_SIZE
                    && size <= self.rest.len()
                    && (PPI_HEADER_SIZE..=size).contains(&offset)
            });
        let Some(record) = record else {
            self.failed = true;
            return Some(Err(RndisError::BadPerPacketInfo));
        };
        let size = record.size.get() as usize;
        let data = &self.rest[record.info_offset.get() as usize..size];
        self.rest = &self.rest[size..];
        Some(Ok((record.info_type.get(), data)))
    }
}

/// Writes a message: header, `fixed`, then `info`; the bytes written
/// (`message_length`), or None if `out` is too small.
pub fn write_message(
    out: &mut [u8],
    message_type: u32,
    fixed: &[u8],
    info: &[u8],
) -> Option<usize> {
    let len = HEADER_SIZE + fixed.len() + info.len();
    let out = out.get_mut(..len)?;
    let header = MessageHeader {
        message_type: message_type.into(),
        message_length: u32::try_from(len).ok()?.into(),
    };
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[HEADER_SIZE..HEADER_SIZE + fixed.len()].copy_from_slice(fixed);
    out[HEADER_SIZE + fixed.len()..].copy_from_slice(info);
    Some(len)
}

pub fn write_initialize(out: &mut [u8], request_id: u32, max_transfer_size: u32) -> Option<usize> {
    let request = InitializeRequest {
        request_id: request_id.into(),
        major_version: MAJOR_VERSION.into(),
        minor_version: MINOR_VERSION.into(),
        max_transfer_size: max_transfer_size.into(),
    };
    write_message(out, message_type::INITIALIZE, request.as_bytes(), &[])
}

/// A QUERY or SET (`message_type`) for `oid` with `info` right after the
/// request (offset 20).
pub fn write_oid_request(
    out: &mut [u8],
    message_type: u32,
    request_id: u32,
    oid: u32,
    info: &[u8],
) -> Option<usize> {
    let request = OidRequest {
        request_id: request_id.into(),
        oid: oid.into(),
        information_buffer_length: u32::try_from(info.len()).ok()?.into(),
        information_buffer_offset: (core::mem::size_of::<OidRequest>() as u32).into(),
        device_vc_handle: 0.into(),
    };
    write_message(out, message_type, request.as_bytes(), info)
}

/// KEEPALIVE or HALT (`message_type`).
pub fn write_request_id(out: &mut [u8], message_type: u32, request_id: u32) -> Option<usize> {
    let request = RequestId {
        request_id: request_id.into(),
    };
    write_message(out, message_type, request.as_bytes(), &[])
}

pub fn write_reset(out: &mut [u8]) -> Option<usize> {
    write_message(
        out,
        message_type::RESET,
        ResetRequest::default().as_bytes(),
        &[],
    )
}

/// A QUERY completion with `info` right after the fixed part (offset 16).
pub fn write_query_complete(
    out: &mut [u8],
    request_id: u32,
    status: u32,
    info: &[u8],
) -> Option<usize> {
    let complete = QueryComplete {
        request_id: request_id.into(),
        status: status.into(),
        information_buffer_length: u32::try_from(info.len()).ok()?.into(),
        information_buffer_offset: (core::mem::size_of::<QueryComplete>() as u32).into(),
    };
    write_message(out, message_type::QUERY_COMPLETE, complete.as_bytes(), info)
}

/// SET_COMPLETE or KEEPALIVE_COMPLETE (`message_type`).
pub fn write_status_complete(
    out: &mut [u8],
    message_type: u32,
    request_id: u32,
    status: u32,
) -> Option<usize> {
    let complete = StatusComplete {
        request_id: request_id.into(),
        status: status.into(),
    };
    write_message(out, message_type, complete.as_bytes(), &[])
}

/// An INDICATE_STATUS with `buffer` right after the fixed part (offset 12).
pub fn write_indicate_status(out: &mut [u8], status: u32, buffer: &[u8]) -> Option<usize> {
    let indication = IndicateStatus {
        status: status.into(),
        status_buffer_length: u32::try_from(buffer.len()).ok()?.into(),
        status_buffer_offset: if buffer.is_empty() {
            0.into()
        } else {
            (core::mem::size_of::<IndicateStatus>() as u32).into()
        },
    };
    write_message(
        out,
        message_type::INDICATE_STATUS,
        indication.as_bytes(),
        buffer,
    )
}

/// Writes a data packet's header, fixed part and per-packet info records
/// (`(type, data)`) for a frame of `data_len` bytes that the caller puts
/// right after; returns the bytes written (where the frame goes). The
/// header's `message_length` counts the frame.
pub fn write_packet_header(
    out: &mut [u8],
    data_len: usize,
    ppis: &[(u32, &[u8])],
) -> Option<usize> {
    let ppi_len: usize = ppis.iter().map(|(_, data)| ppi_size(data.len())).sum();
    let data_offset = PACKET_SIZE + ppi_len;
    let header_len = HEADER_SIZE + data_offset;
    let total = u32::try_from(header_len.checked_add(data_len)?).ok()?;
    let out = out.get_mut(..header_len)?;
    let header = MessageHeader {
        message_type: message_type::PACKET.into(),
        message_length: total.into(),
    };
    let packet = Packet {
        data_offset: (data_offset as u32).into(),
        data_length: (data_len as u32).into(),
        per_packet_info_offset: if ppi_len == 0 {
            0.into()
        } else {
            (PACKET_SIZE as u32).into()
        },
        per_packet_info_length: (ppi_len as u32).into(),
        ..Packet::default()
    };
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[HEADER_SIZE..HEADER_SIZE + PACKET_SIZE].copy_from_slice(packet.as_bytes());
    let mut at = HEADER_SIZE + PACKET_SIZE;
    for (info_type, data) in ppis {
        let record = PerPacketInfo {
            size: (ppi_size(data.len()) as u32).into(),
            info_type: (*info_type).into(),
            info_offset: (PPI_HEADER_SIZE as u32).into(),
        };
        out[at..at + PPI_HEADER_SIZE].copy_from_slice(record.as_bytes());
        at += PPI_HEADER_SIZE;
        out[at..at + data.len()].copy_from_slice(data);
        at += data.len();
    }
    Some(header_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_match_the_drivers() {
        assert_eq!(size_of::<MessageHeader>(), HEADER_SIZE);
        assert_eq!(size_of::<InitializeRequest>(), 16);
        assert_eq!(size_of::<InitializeComplete>(), 44);
        assert_eq!(offset_of!(InitializeComplete, medium), 20);
        assert_eq!(offset_of!(InitializeComplete, max_packets_per_message), 24);
        assert_eq!(offset_of!(InitializeComplete, packet_alignment_factor), 32);
        assert_eq!(size_of::<OidRequest>(), 20);
        assert_eq!(offset_of!(OidRequest, information_buffer_offset), 12);
        assert_eq!(size_of::<QueryComplete>(), 16);
        assert_eq!(size_of::<StatusComplete>(), 8);
        assert_eq!(size_of::<ResetComplete>(), 8);
        assert_eq!(size_of::<IndicateStatus>(), 12);
        assert_eq!(size_of::<Packet>(), PACKET_SIZE);
        assert_eq!(offset_of!(Packet, per_packet_info_offset), 20);
        assert_eq!(offset_of!(Packet, per_packet_info_length), 24);
        assert_eq!(size_of::<PerPacketInfo>(), PPI_HEADER_SIZE);
        assert_eq!(size_of::<NdisObjectHeader>(), 4);
        assert_eq!(size_of::<NdisOffloadParameters>(), 28);
        assert_eq!(offset_of!(NdisOffloadParameters, ipv4_checksum), 4);
        assert_eq!(offset_of!(NdisOffloadParameters, tcp6_checksum), 7);
        assert_eq!(offset_of!(NdisOffloadParameters, lsov2_ipv4), 11);
        assert_eq!(offset_of!(NdisOffloadParameters, flags), 16);
        assert_eq!(
            offset_of!(NdisOffloadParameters, ipsec_v2),
            OFFLOAD_PARAMETERS_SIZE_REVISION_1
        );
        assert_eq!(
            offset_of!(NdisOffloadParameters, encapsulated_packet_task_offload),
            OFFLOAD_PARAMETERS_SIZE_REVISION_2
        );
        assert_eq!(
            offset_of!(NdisOffloadParameters, rsc_ipv4),
            OFFLOAD_PARAMETERS_SIZE_VERSION_4
        );
        assert_eq!(size_of::<RssCapabilities>(), 20);
        assert_eq!(
            offset_of!(RssCapabilities, padding),
            RSS_CAPABILITIES_SIZE_REVISION_2
        );
        assert_eq!(size_of::<RssParameters>(), RSS_PARAMETERS_SIZE_REVISION_2);
        assert_eq!(offset_of!(RssParameters, hash_information), 8);
        assert_eq!(offset_of!(RssParameters, indirection_table_offset), 16);
        assert_eq!(offset_of!(RssParameters, hash_secret_key_offset), 24);
        assert_eq!(offset_of!(RssParameters, processor_masks_entry_size), 36);
    }

    #[test]
    fn anchor_values() {
        assert_eq!(message_type::INITIALIZE_COMPLETE, 0x8000_0002);
        assert_eq!(message_type::KEEPALIVE_COMPLETE, 0x8000_0008);
        assert_eq!(oid::IEEE_802_3_PERMANENT_ADDRESS, 0x0101_0101);
        assert_eq!(oid::GEN_MEDIA_CONNECT_STATUS, 0x0001_0114);
        assert_eq!(oid::TCP_OFFLOAD_PARAMETERS, 0xFC01_020C);
        assert_eq!(status::MEDIA_CONNECT, 0x4001_000B);
        assert_eq!(status::MEDIA_DISCONNECT, 0x4001_000C);
        assert_eq!(message_type::name(0x8000_0004), "QUERY_COMPLETE");
    }

    #[test]
    fn query_is_byte_exact_and_round_trips() {
        let mut buf = [0u8; 64];
        let len = write_oid_request(
            &mut buf,
            message_type::QUERY,
            7,
            oid::IEEE_802_3_PERMANENT_ADDRESS,
            &[],
        )
        .unwrap();
        assert_eq!(len, 28);
        assert_eq!(
            &buf[..28],
            &[
                4, 0, 0, 0, 28, 0, 0, 0, 7, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0,
                0
            ]
        );
        let mac = [0x00, 0x15, 0x5d, 1, 2, 3];
        let len = write_query_complete(&mut buf, 7, status::SUCCESS, &mac).unwrap();
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.message_type, message_type::QUERY_COMPLETE);
        assert_eq!(message.request_id().unwrap(), 7);
        let (complete, info) = message.query_complete().unwrap();
        assert_eq!(complete.status.get(), status::SUCCESS);
        assert_eq!(info, &mac);
    }

    #[test]
    fn hostile_lengths_and_offsets_are_refused() {
        let mut buf = [0u8; 64];
        let len = write_query_complete(&mut buf, 1, status::SUCCESS, &[1, 2, 3, 4]).unwrap();
        // The header claims more than there is, or less than a header.
        assert!(matches!(
            parse(&buf[..len - 1]),
            Err(RndisError::BadLength { .. })
        ));
        buf[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            parse(&buf[..len]),
            Err(RndisError::BadLength { .. })
        ));
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&buf[..len]),
            Err(RndisError::BadLength { .. })
        ));
        buf[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        // Information buffer past the end, into the fixed part, overflowing.
        buf[16..20].copy_from_slice(&5u32.to_le_bytes());
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.query_complete().unwrap_err(), RndisError::BadOffset);
        buf[16..20].copy_from_slice(&4u32.to_le_bytes());
        buf[20..24].copy_from_slice(&8u32.to_le_bytes());
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.query_complete().unwrap_err(), RndisError::BadOffset);
        buf[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.query_complete().unwrap_err(), RndisError::BadOffset);
        // Too short for the fixed part.
        let len = write_message(&mut buf, message_type::QUERY_COMPLETE, &[0; 8], &[]).unwrap();
        assert!(matches!(
            parse(&buf[..len]).unwrap().query_complete(),
            Err(RndisError::Truncated { .. })
        ));
        assert!(parse(&buf[..7]).is_err());
    }

    #[test]
    fn packet_with_ppis_round_trips() {
        let frame = [0xEEu8; 60];
        let checksum = (checksum_rx::TCP_SUCCEEDED | checksum_rx::IP_SUCCEEDED).to_le_bytes();
        let hash = 0x1234_5678u32.to_le_bytes();
        let mut buf = [0u8; 256];
        let header = write_packet_header(
            &mut buf,
            frame.len(),
            &[(ppi::TCP_IP_CHECKSUM, &checksum), (ppi::HASH_VALUE, &hash)],
        )
        .unwrap();
        assert_eq!(header, 8 + 36 + 16 + 16);
        buf[header..header + frame.len()].copy_from_slice(&frame);
        // Byte-exact: type, length, data offset (from the body), length,
        // PPI offset and length.
        assert_eq!(&buf[..8], &[1, 0, 0, 0, 136, 0, 0, 0]);
        assert_eq!(&buf[8..16], &[68, 0, 0, 0, 60, 0, 0, 0]);
        assert_eq!(&buf[28..36], &[36, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(&buf[44..56], &[16, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0]);
        let message = parse(&buf[..header + frame.len()]).unwrap();
        assert_eq!(message.message_type, message_type::PACKET);
        let packet = message.packet().unwrap();
        assert_eq!(packet.data, &frame);
        assert_eq!(
            packet.ppi_u32(ppi::TCP_IP_CHECKSUM).unwrap(),
            Some(checksum_rx::TCP_SUCCEEDED | checksum_rx::IP_SUCCEEDED)
        );
        assert_eq!(packet.ppi_u32(ppi::HASH_VALUE).unwrap(), Some(0x1234_5678));
        assert_eq!(packet.ppi_u32(ppi::IEEE_8021Q).unwrap(), None);
    }

    #[test]
    fn hostile_packets_are_refused() {
        let mut buf = [0u8; 256];
        let checksum = 0u32.to_le_bytes();
        let header =
            write_packet_header(&mut buf, 60, &[(ppi::TCP_IP_CHECKSUM, &checksum)]).unwrap();
        let len = header + 60;
        let original = buf;
        // Data past the message.
        buf[12..16].copy_from_slice(&61u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().packet().unwrap_err(),
            RndisError::BadOffset
        );
        // Data inside the fixed part.
        buf = original;
        buf[8..12].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().packet().unwrap_err(),
            RndisError::BadOffset
        );
        // A PPI whose size runs past its region, one of size 0 (which
        // would loop forever if it were followed), one whose data offset
        // is beyond its size.
        for (field, value) in [(44usize, 17u32), (44, 0), (52, 17)] {
            buf = original;
            buf[field..field + 4].copy_from_slice(&value.to_le_bytes());
            let message = parse(&buf[..len]).unwrap();
            let packet = message.packet().unwrap();
            let records: heapless::Vec<_, 4> = packet.per_packet_info().collect();
            assert_eq!(records.as_slice(), &[Err(RndisError::BadPerPacketInfo)]);
            assert!(packet.ppi_u32(ppi::TCP_IP_CHECKSUM).is_err());
        }
        // A PPI of 12 bytes (no data) cannot be read as a u32.
        let header = write_packet_header(&mut buf, 0, &[(ppi::HASH_VALUE, &[])]).unwrap();
        let packet_message = parse(&buf[..header]).unwrap();
        let packet = packet_message.packet().unwrap();
        assert_eq!(
            packet.ppi_u32(ppi::HASH_VALUE),
            Err(RndisError::BadPerPacketInfo)
        );
    }

    #[test]
    fn indicate_status_and_initialize() {
        let mut buf = [0u8; 64];
        let len = write_indicate_status(&mut buf, status::MEDIA_DISCONNECT, &[]).unwrap();
        assert_eq!(len, 20);
        let (status, buffer) = parse(&buf[..len]).unwrap().indicate_status().unwrap();
        assert_eq!(status, status::MEDIA_DISCONNECT);
        assert!(buffer.is_empty());
        let len = write_initialize(&mut buf, 1, GUEST_MAX_TRANSFER_SIZE).unwrap();
        assert_eq!(len, 24);
        assert_eq!(
            &buf[..24],
            &[2, 0, 0, 0, 24, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0]
        );
        let len = write_request_id(&mut buf, message_type::KEEPALIVE, 9).unwrap();
        assert_eq!(&buf[..len], &[8, 0, 0, 0, 12, 0, 0, 0, 9, 0, 0, 0]);
        assert!(write_initialize(&mut buf[..23], 1, 0).is_none());
    }
}
