//! The network VSP protocol (NVSP, netvsc <-> netvsp): the messages every
//! in-band packet on a synthetic NIC's channel carries, the protocol
//! versions, the receive/send buffer handshake and the RSS extras.
//!
//! Layout as the public guest drivers (Linux `hyperv_net.h`, the BSD
//! `if_hvnreg.h`) and OpenVMM's netvsp have it (read for behaviour, not
//! copied): a 4-byte [`MessageHeader`] (the message type) followed by the
//! type's payload. Every sender pads a message to a fixed size: 28 bytes
//! ([`MESSAGE_SIZE_LEGACY`]) up to version 6, 40 ([`MESSAGE_SIZE_V61`])
//! from 6.1; Linux always sends 40 ([`GUEST_MESSAGE_SIZE`]), which every
//! host accepts, and a host that answers INIT before knowing the version
//! sends at least 28. A receiver accepts any message at least as long as
//! the header plus its type's payload.
//!
//! The guest drives the start on the primary channel:
//! 1. [`message_type::INIT`] with min = max = one version, newest first
//!    ([`version::NEWEST_FIRST`]) until the host's INIT_COMPLETE says
//!    [`status::SUCCESS`].
//! 2. From version 2: [`message_type::SEND_NDIS_CONFIG`] (MTU + capability
//!    bits; no answer).
//! 3. [`message_type::SEND_NDIS_VERSION`] (no answer).
//! 4. [`message_type::SEND_RECEIVE_BUFFER`] (a GPADL over the guest's
//!    receive buffer); the completion describes how the host cuts it into
//!    sections ([`ReceiveBufferSection`]).
//! 5. [`message_type::SEND_SEND_BUFFER`] (a GPADL over the send buffer);
//!    the completion gives the section size the guest copies packets into.
//! 6. RNDIS ([`crate::rndis`]) messages in [`message_type::SEND_RNDIS_PACKET`]:
//!    guest -> host in-band (the RNDIS bytes in a send-buffer section
//!    named by index) or GPA-direct (the bytes in the packet's ranges);
//!    host -> guest as transfer-page packets whose ranges lie in the
//!    receive buffer. Each side completes the other's with
//!    [`message_type::SEND_RNDIS_PACKET_COMPLETE`].
//! 7. From version 5: [`message_type::SUBCHANNEL`] asks for sub-channels
//!    (after RNDIS is up); the host sends [`message_type::SEND_INDIRECTION_TABLE`]
//!    (which channel each transmit hash bucket uses).

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The synthetic NIC's class GUID (the same as [`crate::guid::class::NIC`]).
pub const NIC_CLASS: uuid::Uuid = crate::guid::class::NIC;

/// NVSP protocol versions: major in the high 16 bits, minor in the low.
pub mod version {
    pub const fn make(major: u16, minor: u16) -> u32 {
        (major as u32) << 16 | minor as u32
    }
    /// Windows Server 2008 (the first; its major is 0).
    pub const V1: u32 = make(0, 2);
    /// Windows Server 2008 R2: NDIS config.
    pub const V2: u32 = make(3, 2);
    /// Windows Server 2012: SR-IOV data-path switching.
    pub const V4: u32 = make(4, 0);
    /// Windows Server 2012 R2: sub-channels, send indirection table.
    pub const V5: u32 = make(5, 0);
    pub const V6: u32 = make(6, 0);
    /// Larger (40-byte) messages.
    pub const V61: u32 = make(6, 1);
    /// The versions a guest asks for, newest first.
    pub const NEWEST_FIRST: [u32; 5] = [V61, V6, V5, V4, V2];

    pub fn is_known(version: u32) -> bool {
        version == V1 || NEWEST_FIRST.contains(&version)
    }
    /// NDIS_CONFIG (MTU, capabilities) exists from version 2.
    pub fn supports_ndis_config(version: u32) -> bool {
        version >= V2
    }
    /// Sub-channels and the send indirection table exist from version 5.
    pub fn supports_subchannels(version: u32) -> bool {
        version >= V5
    }
    /// The NDIS version a guest announces for `nvsp`: 6.30 above version 4,
    /// 6.1 otherwise (what Linux sends).
    pub fn ndis_version(nvsp: u32) -> (u32, u32) {
        if nvsp > V4 {
            (6, 30)
        } else {
            (6, 1)
        }
    }
}

/// `MessageHeader::message_type` values.
pub mod message_type {
    pub const NONE: u32 = 0;
    pub const INIT: u32 = 1;
    pub const INIT_COMPLETE: u32 = 2;
    // Version 1.
    pub const SEND_NDIS_VERSION: u32 = 100;
    pub const SEND_RECEIVE_BUFFER: u32 = 101;
    pub const SEND_RECEIVE_BUFFER_COMPLETE: u32 = 102;
    pub const REVOKE_RECEIVE_BUFFER: u32 = 103;
    pub const SEND_SEND_BUFFER: u32 = 104;
    pub const SEND_SEND_BUFFER_COMPLETE: u32 = 105;
    pub const REVOKE_SEND_BUFFER: u32 = 106;
    pub const SEND_RNDIS_PACKET: u32 = 107;
    pub const SEND_RNDIS_PACKET_COMPLETE: u32 = 108;
    // Version 2 (109-124 are the retired chimney/VMQ messages).
    pub const SEND_NDIS_CONFIG: u32 = 125;
    // Version 4.
    pub const SEND_VF_ASSOCIATION: u32 = 128;
    pub const SWITCH_DATA_PATH: u32 = 129;
    // Version 5.
    pub const OID_QUERY_EX: u32 = 131;
    pub const OID_QUERY_EX_COMPLETE: u32 = 132;
    /// Both the request and its completion.
    pub const SUBCHANNEL: u32 = 133;
    pub const SEND_INDIRECTION_TABLE: u32 = 134;
    // Version 6.
    pub const PD_API: u32 = 135;
    pub const PD_POST_BATCH: u32 = 136;

    /// A short name for logs.
    pub fn name(message_type: u32) -> &'static str {
        match message_type {
            INIT => "INIT",
            INIT_COMPLETE => "INIT_COMPLETE",
            SEND_NDIS_VERSION => "SEND_NDIS_VERSION",
            SEND_RECEIVE_BUFFER => "SEND_RECEIVE_BUFFER",
            SEND_RECEIVE_BUFFER_COMPLETE => "SEND_RECEIVE_BUFFER_COMPLETE",
            REVOKE_RECEIVE_BUFFER => "REVOKE_RECEIVE_BUFFER",
            SEND_SEND_BUFFER => "SEND_SEND_BUFFER",
            SEND_SEND_BUFFER_COMPLETE => "SEND_SEND_BUFFER_COMPLETE",
            REVOKE_SEND_BUFFER => "REVOKE_SEND_BUFFER",
            SEND_RNDIS_PACKET => "SEND_RNDIS_PACKET",
            SEND_RNDIS_PACKET_COMPLETE => "SEND_RNDIS_PACKET_COMPLETE",
            SEND_NDIS_CONFIG => "SEND_NDIS_CONFIG",
            SEND_VF_ASSOCIATION => "SEND_VF_ASSOCIATION",
            SWITCH_DATA_PATH => "SWITCH_DATA_PATH",
            OID_QUERY_EX => "OID_QUERY_EX",
            OID_QUERY_EX_COMPLETE => "OID_QUERY_EX_COMPLETE",
            SUBCHANNEL => "SUBCHANNEL",
            SEND_INDIRECTION_TABLE => "SEND_INDIRECTION_TABLE",
            PD_API => "PD_API",
            PD_POST_BATCH => "PD_POST_BATCH",
            _ => "unknown",
        }
    }
}

/// NVSP status values (in completions).
pub mod status {
    pub const NONE: u32 = 0;
    pub const SUCCESS: u32 = 1;
    pub const FAILURE: u32 = 2;
    pub const PROTOCOL_TOO_NEW: u32 = 3;
    pub const PROTOCOL_TOO_OLD: u32 = 4;
    pub const INVALID_RNDIS_PACKET: u32 = 5;
    pub const BUSY: u32 = 6;
    pub const PROTOCOL_UNSUPPORTED: u32 = 7;
}

/// `SendNdisConfig::capabilities` bits.
pub mod capability {
    pub const VMQ: u64 = 1 << 0;
    pub const CHIMNEY: u64 = 1 << 1;
    pub const SRIOV: u64 = 1 << 2;
    pub const IEEE_8021Q: u64 = 1 << 3;
    pub const CORRELATION_ID: u64 = 1 << 4;
    pub const TEAMING: u64 = 1 << 5;
    pub const VIRTUAL_SUBNET_ID: u64 = 1 << 6;
    pub const RSC_OVER_VMBUS: u64 = 1 << 7;
}

/// `SendRndisPacket::channel_type`: RNDIS data (PACKET_MSG) or control
/// (everything else).
pub mod channel_type {
    pub const DATA: u32 = 0;
    pub const CONTROL: u32 = 1;
}

/// `SwitchDataPath::active_data_path`.
pub mod data_path {
    pub const SYNTHETIC: u32 = 0;
    pub const VF: u32 = 1;
}

/// `SubchannelRequest::operation`.
pub const SUBCHANNEL_ALLOCATE: u32 = 1;

/// The id the guest gives its receive buffer (the transfer-page set id of
/// the host's receive packets); Linux's value.
pub const RECEIVE_BUFFER_ID: u16 = 0xcafe;
/// The id the guest gives its send buffer.
pub const SEND_BUFFER_ID: u16 = 0;
/// `SendRndisPacket::send_buffer_section_index` when the RNDIS bytes are not
/// in the send buffer (GPA-direct, or a host -> guest packet).
pub const NO_SEND_BUFFER_SECTION: u32 = 0xFFFF_FFFF;
/// Entries in the send indirection table.
pub const SEND_TABLE_ENTRIES: usize = 16;
/// Most packets a host puts into one transfer-page receive (without RSC).
pub const MAX_PACKETS_PER_RECEIVE: usize = 375;

/// Bytes of a message up to version 6 (header + the largest version-1
/// payload, the receive buffer completion with one section).
pub const MESSAGE_SIZE_LEGACY: usize = 0x1c;
/// Bytes of a message from version 6.1.
pub const MESSAGE_SIZE_V61: usize = 0x28;
/// What a guest pads every message to (Linux's `sizeof(struct nvsp_message)`).
pub const GUEST_MESSAGE_SIZE: usize = MESSAGE_SIZE_V61;
pub const HEADER_SIZE: usize = 4;

/// The message size for a negotiated `version`.
pub const fn message_size(version: u32) -> usize {
    if version >= version::V61 {
        MESSAGE_SIZE_V61
    } else {
        MESSAGE_SIZE_LEGACY
    }
}

macro_rules! wire {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C, packed)]
        pub struct $name { $($(#[$fmeta])* pub $field: $fty,)* }
    };
}

wire! {
    /// The first 4 bytes of every message.
    MessageHeader { message_type: U32 }
}

wire! {
    /// INIT: the guest offers one version (min = max).
    Init {
        min_protocol_version: U32,
        max_protocol_version: U32,
    }
}

wire! {
    /// INIT_COMPLETE.
    InitComplete {
        /// Deprecated (Windows Server 2008 put the version here).
        negotiated_protocol_version: U32,
        maximum_mdl_chain_length: U32,
        status: U32,
    }
}

wire! {
    /// SEND_NDIS_VERSION (no answer).
    SendNdisVersion {
        ndis_major_version: U32,
        ndis_minor_version: U32,
    }
}

wire! {
    /// SEND_RECEIVE_BUFFER and SEND_SEND_BUFFER: a GPADL over the buffer.
    SendBuffer {
        gpadl_handle: U32,
        /// [`RECEIVE_BUFFER_ID`] or [`SEND_BUFFER_ID`].
        id: U16,
        reserved: U16,
    }
}

wire! {
    /// One section of the receive buffer as the host cuts it: `num_sub_allocations`
    /// slots of `sub_allocation_size` bytes from `offset`.
    ReceiveBufferSection {
        offset: U32,
        sub_allocation_size: U32,
        num_sub_allocations: U32,
        end_offset: U32,
    }
}

wire! {
    /// SEND_RECEIVE_BUFFER_COMPLETE; `num_sections` sections follow (every
    /// known host sends exactly one).
    SendReceiveBufferComplete {
        status: U32,
        num_sections: U32,
    }
}

wire! {
    /// SEND_SEND_BUFFER_COMPLETE: the host chooses the section size.
    SendSendBufferComplete {
        status: U32,
        section_size: U32,
    }
}

wire! {
    /// REVOKE_RECEIVE_BUFFER and REVOKE_SEND_BUFFER (no answer).
    RevokeBuffer { id: U16 }
}

wire! {
    /// SEND_RNDIS_PACKET.
    SendRndisPacket {
        /// [`channel_type`].
        channel_type: U32,
        /// The send-buffer section holding the RNDIS bytes, or
        /// [`NO_SEND_BUFFER_SECTION`].
        send_buffer_section_index: U32,
        /// Bytes used in that section (0 without one).
        send_buffer_section_size: U32,
    }
}

wire! {
    /// SEND_RNDIS_PACKET_COMPLETE.
    SendRndisPacketComplete { status: U32 }
}

wire! {
    /// SEND_NDIS_CONFIG (no answer).
    SendNdisConfig {
        /// The MTU plus the 14-byte Ethernet header (what Linux sends).
        mtu: U32,
        reserved: U32,
        /// [`capability`] bits.
        capabilities: U64,
    }
}

wire! {
    /// SEND_VF_ASSOCIATION (host -> guest).
    VfAssociation {
        allocated: U32,
        serial_number: U32,
    }
}

wire! {
    /// SWITCH_DATA_PATH.
    SwitchDataPath { active_data_path: U32 }
}

wire! {
    /// SUBCHANNEL request (guest -> host).
    SubchannelRequest {
        /// [`SUBCHANNEL_ALLOCATE`].
        operation: U32,
        num_subchannels: U32,
    }
}

wire! {
    /// SUBCHANNEL completion (host -> guest): the sub-channels the host
    /// will offer.
    SubchannelComplete {
        status: U32,
        num_subchannels: U32,
    }
}

wire! {
    /// SEND_INDIRECTION_TABLE (host -> guest): `count` u32 channel numbers
    /// at `offset` bytes from the start of the message.
    SendIndirectionTable {
        count: U32,
        offset: U32,
    }
}

/// Where the host puts the send table: right after a 40-byte message.
pub const SEND_TABLE_OFFSET: usize = MESSAGE_SIZE_V61;

/// Why a received NVSP message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvspError {
    /// Shorter than the header or than its type's payload.
    Truncated { len: usize, needed: usize },
    /// A count or offset that points outside the message, or a count
    /// beyond what the protocol allows.
    BadCount,
}

/// A parsed message: the type and the payload bytes after the header.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub message_type: u32,
    pub payload: &'a [u8],
    /// The whole message (the send table's offset counts from its start).
    pub bytes: &'a [u8],
}

/// Splits a message (the in-band payload of a ring packet, already in
/// private memory) into type and payload.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, NvspError> {
    let (header, payload) =
        MessageHeader::read_from_prefix(bytes).map_err(|_| NvspError::Truncated {
            len: bytes.len(),
            needed: HEADER_SIZE,
        })?;
    Ok(Message {
        message_type: header.message_type.get(),
        payload,
        bytes,
    })
}

impl<'a> Message<'a> {
    /// Reads a fixed payload `T` from the front of the payload.
    pub fn payload_as<T: FromBytes + KnownLayout + Immutable>(&self) -> Result<T, NvspError> {
        T::read_from_prefix(self.payload)
            .map(|(value, _)| value)
            .map_err(|_| NvspError::Truncated {
                len: self.bytes.len(),
                needed: HEADER_SIZE + core::mem::size_of::<T>(),
            })
    }

    /// The receive-buffer completion's status and sections, at most
    /// `max_sections` of them (checked against the message's length).
    pub fn receive_buffer_sections(
        &self,
        max_sections: usize,
    ) -> Result<(u32, impl Iterator<Item = ReceiveBufferSection> + 'a), NvspError> {
        let complete: SendReceiveBufferComplete = self.payload_as()?;
        let count = complete.num_sections.get() as usize;
        if count > max_sections {
            return Err(NvspError::BadCount);
        }
        let start = core::mem::size_of::<SendReceiveBufferComplete>();
        let needed = count * core::mem::size_of::<ReceiveBufferSection>();
        let table = self
            .payload
            .get(start..start + needed)
            .ok_or(NvspError::Truncated {
                len: self.bytes.len(),
                needed: HEADER_SIZE + start + needed,
            })?;
        let sections = table
            .chunks_exact(core::mem::size_of::<ReceiveBufferSection>())
            .filter_map(|chunk| ReceiveBufferSection::read_from_bytes(chunk).ok());
        Ok((complete.status.get(), sections))
    }

    /// The send indirection table: `count` entries (1..=16) at `offset`
    /// (4-aligned, after the count and offset fields, inside the message).
    /// Up to version 6 some hosts report a wrong offset; as Linux does, the
    /// table is then read at [`SEND_TABLE_OFFSET`].
    pub fn send_table(
        &self,
        version: u32,
    ) -> Result<heapless::Vec<u32, SEND_TABLE_ENTRIES>, NvspError> {
        let header: SendIndirectionTable = self.payload_as()?;
        let count = header.count.get() as usize;
        if count == 0 || count > SEND_TABLE_ENTRIES {
            return Err(NvspError::BadCount);
        }
        let offset = if version <= version::V6 {
            SEND_TABLE_OFFSET
        } else {
            header.offset.get() as usize
        };
        let fields_end = HEADER_SIZE + core::mem::size_of::<SendIndirectionTable>();
        if offset < fields_end || offset % 4 != 0 {
            return Err(NvspError::BadCount);
        }
        let table = self
            .bytes
            .get(offset..offset + count * 4)
            .ok_or(NvspError::Truncated {
                len: self.bytes.len(),
                needed: offset + count * 4,
            })?;
        Ok(table
            .chunks_exact(4)
            .map(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]))
            .collect())
    }
}

/// Writes a message (header + payload, zero-padded to `size`, which must
/// hold both) into `out`; the bytes written, or None if either is too small.
pub fn write_message_sized(
    out: &mut [u8],
    size: usize,
    message_type: u32,
    payload: &[u8],
) -> Option<usize> {
    if HEADER_SIZE + payload.len() > size {
        return None;
    }
    let out = out.get_mut(..size)?;
    out.fill(0);
    out[..HEADER_SIZE].copy_from_slice(&message_type.to_le_bytes());
    out[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
    Some(size)
}

/// Writes a message padded to [`GUEST_MESSAGE_SIZE`].
pub fn write_message(out: &mut [u8], message_type: u32, payload: &[u8]) -> Option<usize> {
    write_message_sized(out, GUEST_MESSAGE_SIZE, message_type, payload)
}

/// Writes a receive-buffer completion with `sections`, padded to at least
/// `message_size(version)`.
pub fn write_receive_buffer_complete(
    out: &mut [u8],
    version: u32,
    status: u32,
    sections: &[ReceiveBufferSection],
) -> Option<usize> {
    let fixed = SendReceiveBufferComplete {
        status: status.into(),
        num_sections: u32::try_from(sections.len()).ok()?.into(),
    };
    let body = HEADER_SIZE
        + core::mem::size_of::<SendReceiveBufferComplete>()
        + core::mem::size_of_val(sections);
    let size = body.max(message_size(version));
    let out = out.get_mut(..size)?;
    out.fill(0);
    out[..HEADER_SIZE].copy_from_slice(&message_type::SEND_RECEIVE_BUFFER_COMPLETE.to_le_bytes());
    let mut at = HEADER_SIZE;
    out[at..at + 8].copy_from_slice(fixed.as_bytes());
    at += 8;
    for section in sections {
        out[at..at + 16].copy_from_slice(section.as_bytes());
        at += 16;
    }
    Some(size)
}

/// Writes a send indirection table message: a 40-byte message with the
/// table right after it ([`SEND_TABLE_OFFSET`]).
pub fn write_send_table(out: &mut [u8], table: &[u32]) -> Option<usize> {
    if table.is_empty() || table.len() > SEND_TABLE_ENTRIES {
        return None;
    }
    let size = SEND_TABLE_OFFSET + table.len() * 4;
    let fixed = SendIndirectionTable {
        count: (table.len() as u32).into(),
        offset: (SEND_TABLE_OFFSET as u32).into(),
    };
    write_message(out, message_type::SEND_INDIRECTION_TABLE, fixed.as_bytes())?;
    let out = out.get_mut(..size)?;
    for (slot, entry) in out[SEND_TABLE_OFFSET..].chunks_exact_mut(4).zip(table) {
        slot.copy_from_slice(&entry.to_le_bytes());
    }
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_match_the_drivers() {
        assert_eq!(size_of::<MessageHeader>(), 4);
        assert_eq!(size_of::<Init>(), 8);
        assert_eq!(size_of::<InitComplete>(), 12);
        assert_eq!(size_of::<SendNdisVersion>(), 8);
        assert_eq!(size_of::<SendBuffer>(), 8);
        assert_eq!(offset_of!(SendBuffer, id), 4);
        assert_eq!(size_of::<ReceiveBufferSection>(), 16);
        assert_eq!(offset_of!(ReceiveBufferSection, sub_allocation_size), 4);
        assert_eq!(offset_of!(ReceiveBufferSection, num_sub_allocations), 8);
        assert_eq!(offset_of!(ReceiveBufferSection, end_offset), 12);
        assert_eq!(size_of::<SendReceiveBufferComplete>(), 8);
        assert_eq!(size_of::<SendSendBufferComplete>(), 8);
        assert_eq!(size_of::<RevokeBuffer>(), 2);
        assert_eq!(size_of::<SendRndisPacket>(), 12);
        assert_eq!(offset_of!(SendRndisPacket, send_buffer_section_index), 4);
        assert_eq!(offset_of!(SendRndisPacket, send_buffer_section_size), 8);
        assert_eq!(size_of::<SendRndisPacketComplete>(), 4);
        assert_eq!(size_of::<SendNdisConfig>(), 16);
        assert_eq!(offset_of!(SendNdisConfig, capabilities), 8);
        assert_eq!(size_of::<SwitchDataPath>(), 4);
        assert_eq!(size_of::<SubchannelRequest>(), 8);
        assert_eq!(size_of::<SubchannelComplete>(), 8);
        assert_eq!(size_of::<SendIndirectionTable>(), 8);
        assert_eq!(size_of::<VfAssociation>(), 8);
        // The legacy message: header + the receive-buffer completion with
        // its one section, the largest version-1 payload.
        assert_eq!(
            MESSAGE_SIZE_LEGACY,
            HEADER_SIZE
                + size_of::<SendReceiveBufferComplete>()
                + size_of::<ReceiveBufferSection>()
        );
        assert_eq!(MESSAGE_SIZE_V61, 40);
        assert_eq!(message_size(version::V6), 28);
        assert_eq!(message_size(version::V61), 40);
    }

    #[test]
    fn versions_and_types_have_the_anchor_values() {
        assert_eq!(version::V1, 2);
        assert_eq!(version::V2, 0x30002);
        assert_eq!(version::V4, 0x40000);
        assert_eq!(version::V5, 0x50000);
        assert_eq!(version::V6, 0x60000);
        assert_eq!(version::V61, 0x60001);
        assert!(version::NEWEST_FIRST
            .windows(2)
            .all(|pair| pair[0] > pair[1]));
        assert!(version::is_known(version::V1));
        assert!(!version::is_known(0x70000));
        assert!(version::supports_subchannels(version::V5));
        assert!(!version::supports_subchannels(version::V4));
        assert_eq!(version::ndis_version(version::V61), (6, 30));
        assert_eq!(version::ndis_version(version::V4), (6, 1));
        assert_eq!(message_type::SEND_RNDIS_PACKET_COMPLETE, 108);
        assert_eq!(message_type::SEND_NDIS_CONFIG, 125);
        assert_eq!(message_type::SWITCH_DATA_PATH, 129);
        assert_eq!(message_type::SUBCHANNEL, 133);
        assert_eq!(message_type::SEND_INDIRECTION_TABLE, 134);
        assert_eq!(message_type::name(107), "SEND_RNDIS_PACKET");
    }

    #[test]
    fn init_is_byte_exact_and_padded() {
        let init = Init {
            min_protocol_version: version::V61.into(),
            max_protocol_version: version::V61.into(),
        };
        let mut buf = [0xAAu8; 64];
        let len = write_message(&mut buf, message_type::INIT, init.as_bytes()).unwrap();
        assert_eq!(len, 40);
        assert_eq!(&buf[..12], &[1, 0, 0, 0, 1, 0, 6, 0, 1, 0, 6, 0]);
        assert!(buf[12..40].iter().all(|&b| b == 0));
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.message_type, message_type::INIT);
        assert_eq!(message.payload_as::<Init>().unwrap(), init);
        assert!(write_message_sized(&mut buf, 8, 1, init.as_bytes()).is_none());
        assert!(parse(&buf[..3]).is_err());
        assert!(parse(&buf[..8])
            .unwrap()
            .payload_as::<InitComplete>()
            .is_err());
    }

    #[test]
    fn receive_buffer_sections_are_bounded() {
        let section = ReceiveBufferSection {
            offset: 0.into(),
            sub_allocation_size: 1728.into(),
            num_sub_allocations: 100.into(),
            end_offset: 172_800.into(),
        };
        let mut buf = [0u8; 64];
        let len = write_receive_buffer_complete(&mut buf, version::V6, status::SUCCESS, &[section])
            .unwrap();
        assert_eq!(len, 28);
        {
            let message = parse(&buf[..len]).unwrap();
            let (status, mut sections) = message.receive_buffer_sections(4).unwrap();
            assert_eq!(status, status::SUCCESS);
            assert_eq!(sections.next(), Some(section));
            assert_eq!(sections.next(), None);
        }
        // A count the message does not hold, or above the caller's limit.
        buf[8] = 2;
        let message = parse(&buf[..len]).unwrap();
        assert!(matches!(
            message.receive_buffer_sections(4),
            Err(NvspError::Truncated { .. })
        ));
        assert!(matches!(
            message.receive_buffer_sections(1),
            Err(NvspError::BadCount)
        ));
    }

    #[test]
    fn send_table_round_trip_and_hostile_offsets() {
        let table: [u32; 16] = core::array::from_fn(|i| (i % 3) as u32);
        let mut buf = [0u8; 128];
        let len = write_send_table(&mut buf, &table).unwrap();
        assert_eq!(len, 40 + 64);
        let message = parse(&buf[..len]).unwrap();
        assert_eq!(message.send_table(version::V61).unwrap().as_slice(), &table);
        assert_eq!(message.send_table(version::V5).unwrap().as_slice(), &table);
        // An offset past the message (6.1 trusts the reported offset).
        buf[8..12].copy_from_slice(&100u32.to_le_bytes());
        let message = parse(&buf[..len]).unwrap();
        assert!(message.send_table(version::V61).is_err());
        // Overlapping the fields, or unaligned.
        buf[8..12].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().send_table(version::V61),
            Err(NvspError::BadCount)
        );
        buf[8..12].copy_from_slice(&42u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().send_table(version::V61),
            Err(NvspError::BadCount)
        );
        // Too many entries, or none.
        buf[4..8].copy_from_slice(&17u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().send_table(version::V5),
            Err(NvspError::BadCount)
        );
        buf[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            parse(&buf[..len]).unwrap().send_table(version::V5),
            Err(NvspError::BadCount)
        );
        assert!(write_send_table(&mut buf, &[0; 17]).is_none());
    }

    #[test]
    fn rndis_packet_message_is_byte_exact() {
        let send = SendRndisPacket {
            channel_type: channel_type::CONTROL.into(),
            send_buffer_section_index: NO_SEND_BUFFER_SECTION.into(),
            send_buffer_section_size: 0.into(),
        };
        let mut buf = [0u8; 40];
        write_message(&mut buf, message_type::SEND_RNDIS_PACKET, send.as_bytes()).unwrap();
        assert_eq!(
            &buf[..16],
            &[107, 0, 0, 0, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        );
    }

    #[test]
    fn class_guid() {
        assert_eq!(
            NIC_CLASS,
            uuid::uuid!("f8615163-df3e-46c5-913f-f2d2f965ed0e")
        );
    }
}
