//! The synthetic storage protocol (storvsc <-> storvsp): the vstor packet
//! that every in-band message on a SCSI or IDE-accelerator channel carries,
//! its payloads, the protocol versions and the SRB status codes.
//!
//! Layout as the public guest drivers and OpenVMM's storvsp have it (read
//! for behaviour, not copied): a 12-byte [`VstorHeader`] (operation,
//! flags, status) followed by a payload union 0x34 bytes long, so a full
//! packet is 64 bytes. Before Windows 8 (version 5.1) the SCSI request
//! lacked its 16-byte Windows 8 extension and the whole packet was 48
//! bytes; [`packet_size`] gives the size for a negotiated version.
//!
//! The guest drives the initialization on the primary channel, each step
//! a request with [`VSTOR_FLAG_REQUEST_COMPLETION`] that the host
//! completes with [`operation::COMPLETE_IO`] and an NTSTATUS:
//! `BEGIN_INITIALIZATION`, `QUERY_PROTOCOL_VERSION` (newest first until
//! one succeeds; the host refuses others with
//! [`status::REVISION_MISMATCH`]), `QUERY_PROPERTIES`, optionally
//! `CREATE_SUB_CHANNELS`, `END_INITIALIZATION`. After that `EXECUTE_SRB`
//! requests (GPA-direct packets whose ranges hold the data) on any
//! channel; the completion carries the SCSI request back with the status,
//! the bytes transferred and, if [`srb::AUTOSENSE_VALID`], sense data in
//! the CDB's place. The host tells the guest to rescan with an unsolicited
//! `ENUMERATE_BUS` (or `REMOVE_DEVICE`) packet.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The storage class GUIDs (the same as [`crate::guid::class`]).
pub const SCSI_CLASS: uuid::Uuid = crate::guid::class::SCSI;
pub const IDE_CLASS: uuid::Uuid = crate::guid::class::IDE;

/// Protocol versions: major in the high byte, minor in the low byte.
pub mod version {
    pub const fn make(major: u8, minor: u8) -> u16 {
        (major as u16) << 8 | minor as u16
    }
    pub const WIN6: u16 = make(2, 0);
    pub const WIN7: u16 = make(4, 2);
    pub const WIN8: u16 = make(5, 1);
    pub const WIN8_1: u16 = make(6, 0);
    pub const WIN10: u16 = make(6, 2);
    /// Every version a Hyper-V host accepts, newest first (the order a
    /// guest asks in).
    pub const ALL: [u16; 5] = [WIN10, WIN8_1, WIN8, WIN7, WIN6];

    pub fn is_known(version: u16) -> bool {
        ALL.contains(&version)
    }
    /// Multi-channel (sub-channels) exists from Windows 8.
    pub fn supports_multi_channel(version: u16) -> bool {
        version >= WIN8
    }
    /// The host tells the guest to rescan (ENUMERATE_BUS) from Windows 7.
    pub fn supports_enumerate_bus(version: u16) -> bool {
        version >= WIN7
    }
}

/// `VstorHeader::operation` values.
pub mod operation {
    pub const COMPLETE_IO: u32 = 1;
    pub const REMOVE_DEVICE: u32 = 2;
    pub const EXECUTE_SRB: u32 = 3;
    pub const RESET_LUN: u32 = 4;
    pub const RESET_ADAPTER: u32 = 5;
    pub const RESET_BUS: u32 = 6;
    pub const BEGIN_INITIALIZATION: u32 = 7;
    pub const END_INITIALIZATION: u32 = 8;
    pub const QUERY_PROTOCOL_VERSION: u32 = 9;
    pub const QUERY_PROPERTIES: u32 = 10;
    pub const ENUMERATE_BUS: u32 = 11;
    /// Virtual Fibre Channel HBA: the port and node WWNs ([`FcWwnPacket`]).
    pub const FCHBA_DATA: u32 = 12;
    pub const CREATE_SUB_CHANNELS: u32 = 13;
    pub const EVENT_NOTIFICATION: u32 = 14;

    /// A short name for logs.
    pub fn name(operation: u32) -> &'static str {
        match operation {
            COMPLETE_IO => "COMPLETE_IO",
            REMOVE_DEVICE => "REMOVE_DEVICE",
            EXECUTE_SRB => "EXECUTE_SRB",
            RESET_LUN => "RESET_LUN",
            RESET_ADAPTER => "RESET_ADAPTER",
            RESET_BUS => "RESET_BUS",
            BEGIN_INITIALIZATION => "BEGIN_INITIALIZATION",
            END_INITIALIZATION => "END_INITIALIZATION",
            QUERY_PROTOCOL_VERSION => "QUERY_PROTOCOL_VERSION",
            QUERY_PROPERTIES => "QUERY_PROPERTIES",
            ENUMERATE_BUS => "ENUMERATE_BUS",
            FCHBA_DATA => "FCHBA_DATA",
            CREATE_SUB_CHANNELS => "CREATE_SUB_CHANNELS",
            EVENT_NOTIFICATION => "EVENT_NOTIFICATION",
            _ => "unknown",
        }
    }
}

/// `VstorHeader::flags`: the sender wants a completion.
pub const VSTOR_FLAG_REQUEST_COMPLETION: u32 = 0x1;

/// NTSTATUS values the host puts in `VstorHeader::status`.
pub mod status {
    pub const SUCCESS: u32 = 0x0000_0000;
    pub const BUFFER_OVERFLOW: u32 = 0x8000_0005;
    pub const DEVICE_BUSY: u32 = 0x8000_0011;
    pub const UNSUCCESSFUL: u32 = 0xC000_0001;
    pub const INVALID_PARAMETER: u32 = 0xC000_000D;
    pub const INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
    /// The answer to a QUERY_PROTOCOL_VERSION the host does not speak.
    pub const REVISION_MISMATCH: u32 = 0xC000_0059;
    pub const DEVICE_NOT_CONNECTED: u32 = 0xC000_009D;
    pub const IO_TIMEOUT: u32 = 0xC000_00B5;
    pub const DEVICE_DOES_NOT_EXIST: u32 = 0xC000_00C0;
    pub const CANCELLED: u32 = 0xC000_0120;
    /// The answer to an operation out of the initialization order.
    pub const INVALID_DEVICE_STATE: u32 = 0xC000_0184;
    pub const IO_DEVICE_ERROR: u32 = 0xC000_0185;
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
    /// The first 12 bytes of every vstor packet.
    VstorHeader {
        operation: U32,
        /// [`VSTOR_FLAG_REQUEST_COMPLETION`] on guest requests.
        flags: U32,
        /// An NTSTATUS ([`status`]) in the host's answers.
        status: U32,
    }
}

/// The CDB area (the union with the sense data) of a SCSI request.
pub const CDB_AREA_SIZE: usize = 0x14;
/// The longest CDB the request carries.
pub const MAX_CDB_SIZE: usize = 0x10;
/// Sense bytes the host may return: 0x14 from Windows 8, 0x12 before.
pub const SENSE_BUFFER_SIZE: usize = 0x14;
pub const SENSE_BUFFER_SIZE_PRE_WIN8: usize = 0x12;

wire! {
    /// `vmscsi_request`: a SCSI command (guest -> host) and its result (in
    /// the completion). 0x34 bytes from Windows 8 (the last 16 are the
    /// [`Win8Extension`]), 0x24 before.
    ScsiRequest {
        /// Bytes of this structure the sender filled in.
        length: U16,
        /// [`srb`] status, with [`srb::AUTOSENSE_VALID`] when sense data
        /// replaced the CDB.
        srb_status: u8,
        /// The SCSI status ([`crate::scsi::status`]).
        scsi_status: u8,
        port_number: u8,
        path_id: u8,
        target_id: u8,
        lun: u8,
        cdb_length: u8,
        /// Guest: the sense bytes it can take ([`sense_buffer_size`]).
        /// Host: the sense bytes it returned.
        sense_info_length: u8,
        /// [`data_direction`].
        data_in: u8,
        reserved: u8,
        /// Guest: bytes its ranges describe. Host: bytes transferred.
        data_transfer_length: U32,
        /// The CDB (guest -> host) or the sense data (host -> guest).
        cdb_or_sense: [u8; CDB_AREA_SIZE],
        win8: Win8Extension,
    }
}

wire! {
    /// The fields Windows 8 (protocol 5.1) added to the SCSI request.
    Win8Extension {
        reserve: U16,
        queue_tag: u8,
        queue_action: u8,
        /// [`srb_flags`].
        srb_flags: U32,
        time_out_value: U32,
        queue_sort_key: U32,
    }
}

pub const SCSI_REQUEST_SIZE: usize = 0x34;
pub const SCSI_REQUEST_SIZE_PRE_WIN8: usize = 0x24;
pub const WIN8_EXTENSION_SIZE: usize = 16;

/// `ScsiRequest::data_in` values.
pub mod data_direction {
    /// Guest memory -> disk (the request's ranges are read by the host).
    pub const WRITE: u8 = 0;
    /// Disk -> guest memory.
    pub const READ: u8 = 1;
    pub const UNKNOWN: u8 = 2;
}

/// `Win8Extension::srb_flags` bits (Windows SRB flags).
pub mod srb_flags {
    pub const QUEUE_ACTION_ENABLE: u32 = 0x0000_0002;
    pub const DISABLE_DISCONNECT: u32 = 0x0000_0004;
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x0000_0008;
    pub const BYPASS_FROZEN_QUEUE: u32 = 0x0000_0010;
    pub const DISABLE_AUTOSENSE: u32 = 0x0000_0020;
    pub const DATA_IN: u32 = 0x0000_0040;
    pub const DATA_OUT: u32 = 0x0000_0080;
    pub const NO_DATA_TRANSFER: u32 = 0;
    pub const UNSPECIFIED_DIRECTION: u32 = DATA_IN | DATA_OUT;
    pub const NO_QUEUE_FREEZE: u32 = 0x0000_0100;
    pub const ADAPTER_CACHE_ENABLE: u32 = 0x0000_0200;
    pub const FREE_SENSE_BUFFER: u32 = 0x0000_0400;
}

/// SRB status codes (`ScsiRequest::srb_status`, low six bits) and the two
/// flag bits above them.
pub mod srb {
    pub const PENDING: u8 = 0x00;
    pub const SUCCESS: u8 = 0x01;
    pub const ABORTED: u8 = 0x02;
    pub const ABORT_FAILED: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const BUSY: u8 = 0x05;
    pub const INVALID_REQUEST: u8 = 0x06;
    pub const INVALID_PATH_ID: u8 = 0x07;
    pub const NO_DEVICE: u8 = 0x08;
    pub const TIMEOUT: u8 = 0x09;
    pub const SELECTION_TIMEOUT: u8 = 0x0A;
    pub const COMMAND_TIMEOUT: u8 = 0x0B;
    pub const MESSAGE_REJECTED: u8 = 0x0D;
    pub const BUS_RESET: u8 = 0x0E;
    pub const PARITY_ERROR: u8 = 0x0F;
    pub const REQUEST_SENSE_FAILED: u8 = 0x10;
    pub const NO_HBA: u8 = 0x11;
    /// Also a short transfer ("underrun"): `data_transfer_length` then
    /// says how much was moved.
    pub const DATA_OVERRUN: u8 = 0x12;
    pub const UNEXPECTED_BUS_FREE: u8 = 0x13;
    pub const PHASE_SEQUENCE_FAILURE: u8 = 0x14;
    pub const BAD_SRB_BLOCK_LENGTH: u8 = 0x15;
    pub const REQUEST_FLUSHED: u8 = 0x16;
    pub const INVALID_LUN: u8 = 0x20;
    pub const INVALID_TARGET_ID: u8 = 0x21;
    pub const BAD_FUNCTION: u8 = 0x22;
    pub const ERROR_RECOVERY: u8 = 0x23;
    pub const NOT_POWERED: u8 = 0x24;
    pub const LINK_DOWN: u8 = 0x25;
    pub const INTERNAL_ERROR: u8 = 0x30;

    pub const QUEUE_FROZEN: u8 = 0x40;
    /// Sense data is in the request's CDB area.
    pub const AUTOSENSE_VALID: u8 = 0x80;

    /// The status without the flag bits.
    pub const fn code(srb_status: u8) -> u8 {
        srb_status & !(QUEUE_FROZEN | AUTOSENSE_VALID)
    }

    /// The NTSTATUS a Hyper-V host puts in the packet header for an SRB
    /// status (what OpenVMM's storvsp does).
    pub const fn nt_status(srb_status: u8) -> u32 {
        use super::status;
        match code(srb_status) {
            SUCCESS => status::SUCCESS,
            BUSY => status::DEVICE_BUSY,
            INVALID_LUN | INVALID_TARGET_ID | NO_DEVICE | NO_HBA => status::DEVICE_DOES_NOT_EXIST,
            COMMAND_TIMEOUT | TIMEOUT => status::IO_TIMEOUT,
            SELECTION_TIMEOUT => status::DEVICE_NOT_CONNECTED,
            BAD_FUNCTION | BAD_SRB_BLOCK_LENGTH => status::INVALID_DEVICE_REQUEST,
            DATA_OVERRUN => status::BUFFER_OVERFLOW,
            REQUEST_FLUSHED => status::UNSUCCESSFUL,
            ABORTED => status::CANCELLED,
            _ => status::IO_DEVICE_ERROR,
        }
    }
}

wire! {
    /// `QUERY_PROTOCOL_VERSION` payload (and its completion's).
    ProtocolVersion {
        major_minor: U16,
        /// Zero.
        revision: U16,
    }
}

wire! {
    /// `QUERY_PROPERTIES` completion payload (24 bytes).
    ChannelProperties {
        /// Not filled in by Hyper-V (the guest reads the negotiated one).
        protocol_version: U16,
        path_id: u8,
        target_id: u8,
        /// Sub-channels the guest may ask for (0 before Windows 8).
        max_channel_count: U16,
        port: U16,
        /// [`channel_flags`].
        flags: U32,
        /// The largest `data_transfer_length` of one request.
        max_transfer_bytes: U32,
        unique_id: U64,
    }
}

/// `ChannelProperties::flags` bits.
pub mod channel_flags {
    /// The host serves sub-channels (CREATE_SUB_CHANNELS).
    pub const MULTI_CHANNEL: u32 = 0x1;
    pub const EMULATED_IDE: u32 = 0x2;
}

wire! {
    /// `FCHBA_DATA` payload: a virtual Fibre Channel HBA's WWNs.
    FcWwnPacket {
        primary_active: u8,
        reserved: [u8; 3],
        primary_port_wwn: [u8; 8],
        primary_node_wwn: [u8; 8],
        secondary_port_wwn: [u8; 8],
        secondary_node_wwn: [u8; 8],
    }
}

wire! {
    /// `CREATE_SUB_CHANNELS` payload.
    SubChannelCount { count: U16 }
}

wire! {
    /// The offer's user-defined bytes of an IDE-accelerator channel (old
    /// Windows drivers read the IDE channel and device from them; newer
    /// ones and Linux use the instance GUID).
    IdeOfferProperties {
        reserved: U16,
        path_id: u8,
        target_id: u8,
        reserved2: U32,
        /// [`IDE_OFFER_FLAG_IDE_DEVICE`].
        flags: U32,
        reserved3: [U32; 3],
    }
}

pub const IDE_OFFER_FLAG_IDE_DEVICE: u32 = 0x2;

/// The payload union's size (the largest member, the SCSI request).
pub const PAYLOAD_SIZE: usize = SCSI_REQUEST_SIZE;
pub const HEADER_SIZE: usize = 12;
/// The full vstor packet: header + payload union.
pub const MAX_PACKET_SIZE: usize = HEADER_SIZE + PAYLOAD_SIZE;

/// Bytes of a vstor packet once `version` is negotiated (64; 48 before
/// Windows 8). Windows guests expect every host packet to be exactly this
/// long; Linux accepts any packet at least this long.
pub const fn packet_size(version: u16) -> usize {
    if version >= version::WIN8 {
        MAX_PACKET_SIZE
    } else {
        MAX_PACKET_SIZE - WIN8_EXTENSION_SIZE
    }
}

/// The SCSI request's size for `version`.
pub const fn scsi_request_size(version: u16) -> usize {
    packet_size(version) - HEADER_SIZE
}

/// Sense bytes a guest offers (and a host returns at most) for `version`.
pub const fn sense_buffer_size(version: u16) -> usize {
    if version >= version::WIN8 {
        SENSE_BUFFER_SIZE
    } else {
        SENSE_BUFFER_SIZE_PRE_WIN8
    }
}

/// Why a received vstor packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VstorError {
    /// Shorter than the header or than its operation's payload.
    Truncated { len: usize, needed: usize },
    /// `sense_info_length` beyond the sense buffer, `cdb_length` beyond
    /// the CDB area.
    FieldTooLong,
}

/// A parsed vstor packet: the header and the payload bytes after it.
#[derive(Clone, Copy, Debug)]
pub struct VstorPacket<'a> {
    pub header: VstorHeader,
    pub payload: &'a [u8],
}

/// Split a vstor packet (the in-band payload of a ring packet, already in
/// private memory) into header and payload.
pub fn parse(bytes: &[u8]) -> Result<VstorPacket<'_>, VstorError> {
    let (header, payload) =
        VstorHeader::read_from_prefix(bytes).map_err(|_| VstorError::Truncated {
            len: bytes.len(),
            needed: HEADER_SIZE,
        })?;
    Ok(VstorPacket { header, payload })
}

impl VstorPacket<'_> {
    pub fn operation(&self) -> u32 {
        self.header.operation.get()
    }

    /// The payload as a SCSI request. A pre-Windows 8 request (0x24 bytes)
    /// is widened with a zero extension; shorter is refused.
    pub fn scsi_request(&self) -> Result<ScsiRequest, VstorError> {
        if self.payload.len() < SCSI_REQUEST_SIZE_PRE_WIN8 {
            return Err(VstorError::Truncated {
                len: self.payload.len(),
                needed: SCSI_REQUEST_SIZE_PRE_WIN8,
            });
        }
        let mut request = ScsiRequest::default();
        let len = self.payload.len().min(SCSI_REQUEST_SIZE);
        request.as_mut_bytes()[..len].copy_from_slice(&self.payload[..len]);
        Ok(request)
    }

    /// Reads a fixed payload `T` from the front of the payload.
    pub fn payload_as<T: FromBytes + KnownLayout + Immutable>(&self) -> Result<T, VstorError> {
        T::read_from_prefix(self.payload)
            .map(|(value, _)| value)
            .map_err(|_| VstorError::Truncated {
                len: self.payload.len(),
                needed: core::mem::size_of::<T>(),
            })
    }
}

impl ScsiRequest {
    /// The CDB, bounded by `cdb_length` (checked).
    pub fn cdb(&self) -> Result<&[u8], VstorError> {
        self.cdb_or_sense
            .get(..self.cdb_length as usize)
            .filter(|cdb| cdb.len() <= MAX_CDB_SIZE)
            .ok_or(VstorError::FieldTooLong)
    }

    /// The sense bytes of a completion, bounded by `sense_info_length` and
    /// by what `version` allows (checked). Empty without autosense.
    pub fn sense(&self, version: u16) -> Result<&[u8], VstorError> {
        if self.srb_status & srb::AUTOSENSE_VALID == 0 {
            return Ok(&[]);
        }
        let len = self.sense_info_length as usize;
        if len > sense_buffer_size(version) {
            return Err(VstorError::FieldTooLong);
        }
        Ok(&self.cdb_or_sense[..len])
    }

    /// A request for `cdb` with `data_transfer_length` bytes moving in
    /// `direction`, sized for `version`.
    pub fn new(
        lun: u8,
        cdb: &[u8],
        direction: u8,
        data_transfer_length: u32,
        version: u16,
    ) -> Self {
        let cdb_len = cdb.len().min(MAX_CDB_SIZE);
        let mut request = Self {
            length: (scsi_request_size(version) as u16).into(),
            lun,
            cdb_length: cdb_len as u8,
            sense_info_length: sense_buffer_size(version) as u8,
            data_in: direction,
            data_transfer_length: data_transfer_length.into(),
            ..Self::default()
        };
        request.cdb_or_sense[..cdb_len].copy_from_slice(&cdb[..cdb_len]);
        if version >= version::WIN8 {
            let flags = match direction {
                data_direction::READ => srb_flags::DATA_IN,
                data_direction::WRITE if data_transfer_length > 0 => srb_flags::DATA_OUT,
                _ => srb_flags::NO_DATA_TRANSFER,
            };
            request.win8.srb_flags = (flags | srb_flags::DISABLE_SYNCH_TRANSFER).into();
        }
        request
    }
}

/// Writes a vstor packet (header + payload, zero-padded or cut to
/// `packet_size(version)`) into `out`; returns the bytes written, or None
/// if `out` is too small.
pub fn write_packet(
    out: &mut [u8],
    version: u16,
    operation: u32,
    flags: u32,
    status: u32,
    payload: &[u8],
) -> Option<usize> {
    let size = packet_size(version);
    let out = out.get_mut(..size)?;
    out.fill(0);
    let header = VstorHeader {
        operation: operation.into(),
        flags: flags.into(),
        status: status.into(),
    };
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    let len = payload.len().min(size - HEADER_SIZE);
    out[HEADER_SIZE..HEADER_SIZE + len].copy_from_slice(&payload[..len]);
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_match_the_drivers() {
        assert_eq!(size_of::<VstorHeader>(), HEADER_SIZE);
        assert_eq!(size_of::<ScsiRequest>(), 0x34);
        assert_eq!(size_of::<Win8Extension>(), WIN8_EXTENSION_SIZE);
        assert_eq!(size_of::<ChannelProperties>(), 24);
        assert_eq!(size_of::<ProtocolVersion>(), 4);
        assert_eq!(size_of::<FcWwnPacket>(), 36);
        assert_eq!(size_of::<SubChannelCount>(), 2);
        assert_eq!(size_of::<IdeOfferProperties>(), 24);
        assert_eq!(offset_of!(IdeOfferProperties, path_id), 2);
        assert_eq!(offset_of!(IdeOfferProperties, target_id), 3);
        assert_eq!(offset_of!(IdeOfferProperties, flags), 8);
        assert_eq!(MAX_PACKET_SIZE, 64);
        assert_eq!(packet_size(version::WIN10), 64);
        assert_eq!(packet_size(version::WIN8), 64);
        assert_eq!(packet_size(version::WIN7), 48);
        assert_eq!(packet_size(version::WIN6), 48);
        assert_eq!(scsi_request_size(version::WIN7), SCSI_REQUEST_SIZE_PRE_WIN8);
        assert_eq!(sense_buffer_size(version::WIN8_1), 0x14);
        assert_eq!(sense_buffer_size(version::WIN7), 0x12);
    }

    #[test]
    fn scsi_request_offsets() {
        assert_eq!(offset_of!(ScsiRequest, srb_status), 2);
        assert_eq!(offset_of!(ScsiRequest, scsi_status), 3);
        assert_eq!(offset_of!(ScsiRequest, port_number), 4);
        assert_eq!(offset_of!(ScsiRequest, path_id), 5);
        assert_eq!(offset_of!(ScsiRequest, target_id), 6);
        assert_eq!(offset_of!(ScsiRequest, lun), 7);
        assert_eq!(offset_of!(ScsiRequest, cdb_length), 8);
        assert_eq!(offset_of!(ScsiRequest, sense_info_length), 9);
        assert_eq!(offset_of!(ScsiRequest, data_in), 10);
        assert_eq!(offset_of!(ScsiRequest, data_transfer_length), 12);
        assert_eq!(offset_of!(ScsiRequest, cdb_or_sense), 16);
        assert_eq!(offset_of!(ScsiRequest, win8), 0x24);
        assert_eq!(offset_of!(Win8Extension, srb_flags), 4);
        assert_eq!(offset_of!(Win8Extension, time_out_value), 8);
        assert_eq!(offset_of!(Win8Extension, queue_sort_key), 12);
    }

    #[test]
    fn properties_offsets() {
        assert_eq!(offset_of!(ChannelProperties, max_channel_count), 4);
        assert_eq!(offset_of!(ChannelProperties, flags), 8);
        assert_eq!(offset_of!(ChannelProperties, max_transfer_bytes), 12);
        assert_eq!(offset_of!(ChannelProperties, unique_id), 16);
    }

    #[test]
    fn versions_are_ordered_newest_first() {
        assert_eq!(version::WIN10, 0x0602);
        assert_eq!(version::WIN8_1, 0x0600);
        assert_eq!(version::WIN8, 0x0501);
        assert_eq!(version::WIN7, 0x0402);
        assert_eq!(version::WIN6, 0x0200);
        assert!(version::ALL.windows(2).all(|pair| pair[0] > pair[1]));
        assert!(!version::is_known(0x0601));
        assert!(version::supports_multi_channel(version::WIN8));
        assert!(!version::supports_multi_channel(version::WIN7));
    }

    #[test]
    fn request_round_trip_through_a_packet() {
        let cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0];
        let request = ScsiRequest::new(3, &cdb, data_direction::READ, 1024, version::WIN10);
        let mut buf = [0xAAu8; 80];
        let len = write_packet(
            &mut buf,
            version::WIN10,
            operation::EXECUTE_SRB,
            VSTOR_FLAG_REQUEST_COMPLETION,
            0,
            request.as_bytes(),
        )
        .unwrap();
        assert_eq!(len, 64);
        // Byte-exact: operation, flags, then the request's lun and CDB.
        assert_eq!(&buf[..8], &[3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(buf[12 + 7], 3);
        assert_eq!(buf[12 + 8], 10);
        assert_eq!(buf[12 + 9], 0x14);
        assert_eq!(&buf[12 + 16..12 + 26], &cdb);
        let packet = parse(&buf[..len]).unwrap();
        assert_eq!(packet.operation(), operation::EXECUTE_SRB);
        let parsed = packet.scsi_request().unwrap();
        assert_eq!(parsed, request);
        assert_eq!(parsed.cdb().unwrap(), &cdb);
        assert_eq!(
            parsed.win8.srb_flags.get(),
            srb_flags::DATA_IN | srb_flags::DISABLE_SYNCH_TRANSFER
        );
    }

    #[test]
    fn pre_win8_packet_is_short_and_widened() {
        let request = ScsiRequest::new(0, &[0; 6], data_direction::UNKNOWN, 0, version::WIN7);
        let mut buf = [0u8; 64];
        let len = write_packet(
            &mut buf,
            version::WIN7,
            operation::EXECUTE_SRB,
            1,
            0,
            request.as_bytes(),
        )
        .unwrap();
        assert_eq!(len, 48);
        let parsed = parse(&buf[..len]).unwrap().scsi_request().unwrap();
        assert_eq!(parsed.length.get(), 0x24);
        assert_eq!(parsed.sense_info_length, 0x12);
        assert_eq!(parsed.win8, Win8Extension::default());
        assert!(parse(&buf[..HEADER_SIZE + 0x23])
            .unwrap()
            .scsi_request()
            .is_err());
        assert!(parse(&buf[..11]).is_err());
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut request = ScsiRequest {
            cdb_length: 17,
            ..Default::default()
        };
        assert_eq!(request.cdb(), Err(VstorError::FieldTooLong));
        request.cdb_length = 16;
        assert_eq!(request.cdb().unwrap().len(), 16);
        request.srb_status = srb::ERROR | srb::AUTOSENSE_VALID;
        request.sense_info_length = 0x14;
        assert_eq!(request.sense(version::WIN8).unwrap().len(), 0x14);
        assert_eq!(request.sense(version::WIN7), Err(VstorError::FieldTooLong));
        request.sense_info_length = 0x15;
        assert_eq!(request.sense(version::WIN10), Err(VstorError::FieldTooLong));
        request.srb_status = srb::SUCCESS;
        assert_eq!(request.sense(version::WIN10).unwrap().len(), 0);
    }

    #[test]
    fn srb_status_maps_to_nt_status() {
        assert_eq!(srb::code(srb::ERROR | srb::AUTOSENSE_VALID), srb::ERROR);
        assert_eq!(srb::nt_status(srb::SUCCESS), status::SUCCESS);
        assert_eq!(
            srb::nt_status(srb::INVALID_LUN),
            status::DEVICE_DOES_NOT_EXIST
        );
        assert_eq!(
            srb::nt_status(srb::ERROR | srb::AUTOSENSE_VALID),
            status::IO_DEVICE_ERROR
        );
    }

    #[test]
    fn class_guids() {
        assert_eq!(
            SCSI_CLASS,
            uuid::uuid!("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f")
        );
        assert_eq!(
            IDE_CLASS,
            uuid::uuid!("32412632-86cb-44a2-9b5c-50d1417354f5")
        );
    }
}
