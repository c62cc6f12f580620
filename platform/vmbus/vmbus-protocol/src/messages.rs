//! VMBus channel (control) messages: the 8-byte header, one zerocopy struct
//! per message (header included, so offsets match the facts sheet), the
//! version that introduced each message, and [`parse`], which copies a
//! received message into a typed [`ChannelMessage`] after checking its type,
//! its size and that the negotiated version allows it.

use crate::guid::WireGuid;
use crate::version::ProtocolVersion;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The largest channel message: the synic message payload (240 bytes).
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Size of [`MessageHeader`].
pub const HEADER_SIZE: usize = 8;

/// The type number in a message header. Open: the host may send numbers this
/// crate does not know; [`parse`] rejects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageType(pub u32);

impl MessageType {
    pub const OFFER_CHANNEL: Self = Self(1);
    pub const RESCIND_CHANNEL_OFFER: Self = Self(2);
    pub const REQUEST_OFFERS: Self = Self(3);
    pub const ALL_OFFERS_DELIVERED: Self = Self(4);
    pub const OPEN_CHANNEL: Self = Self(5);
    pub const OPEN_CHANNEL_RESULT: Self = Self(6);
    pub const CLOSE_CHANNEL: Self = Self(7);
    pub const GPADL_HEADER: Self = Self(8);
    pub const GPADL_BODY: Self = Self(9);
    pub const GPADL_CREATED: Self = Self(10);
    pub const GPADL_TEARDOWN: Self = Self(11);
    pub const GPADL_TORNDOWN: Self = Self(12);
    pub const REL_ID_RELEASED: Self = Self(13);
    pub const INITIATE_CONTACT: Self = Self(14);
    pub const VERSION_RESPONSE: Self = Self(15);
    pub const UNLOAD: Self = Self(16);
    pub const UNLOAD_RESPONSE: Self = Self(17);
    pub const TL_CONNECT_REQUEST: Self = Self(21);
    pub const MODIFY_CHANNEL: Self = Self(22);
    pub const TL_CONNECT_RESULT: Self = Self(23);
    pub const MODIFY_CHANNEL_RESPONSE: Self = Self(24);
    pub const MODIFY_CONNECTION: Self = Self(25);
    pub const MODIFY_CONNECTION_RESPONSE: Self = Self(26);
    pub const PAUSE: Self = Self(27);
    pub const PAUSE_RESPONSE: Self = Self(28);
    pub const RESUME: Self = Self(29);

    /// The protocol version that introduced this message type, or `None`
    /// for numbers this crate does not parse (18-20 are reserved-channel
    /// messages of Windows hosts, not used by guests).
    ///
    /// InitiateContact and VersionResponse are exchanged before any version
    /// is agreed, so they are allowed from the oldest version (0.13).
    pub const fn introduced_in(self) -> Option<ProtocolVersion> {
        Some(match self.0 {
            1..=16 => ProtocolVersion::V0_13,
            17 => ProtocolVersion::V1_1,
            21 => ProtocolVersion::V4_0,
            22 | 23 => ProtocolVersion::V4_1,
            24 => ProtocolVersion::V5_3,
            25..=29 => ProtocolVersion::V6_0,
            _ => return None,
        })
    }
}

/// Every message starts with this: the type and 4 bytes of padding.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C, packed)]
pub struct MessageHeader {
    pub message_type: U32,
    pub padding: U32,
}

impl MessageHeader {
    pub fn new(message_type: MessageType) -> Self {
        Self {
            message_type: U32::new(message_type.0),
            padding: U32::ZERO,
        }
    }
    pub fn message_type(&self) -> MessageType {
        MessageType(self.message_type.get())
    }
}

/// Implemented by every fixed-layout message struct.
pub trait VmbusMessage: FromBytes + IntoBytes + KnownLayout + Immutable + Sized {
    const TYPE: MessageType;
    /// The version from which this layout may be sent.
    const INTRODUCED_IN: ProtocolVersion;
    /// Size on the wire, header included.
    const SIZE: usize = core::mem::size_of::<Self>();

    /// A zeroed message with its header filled in; set the fields, then
    /// send `as_bytes()`.
    fn empty() -> Self {
        let mut message = Self::new_zeroed();
        let header = MessageHeader::new(Self::TYPE);
        message.as_mut_bytes()[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        message
    }
}

macro_rules! message {
    ($(#[$meta:meta])* $name:ident = $ty:ident since $ver:ident {
        $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C, packed)]
        pub struct $name {
            pub header: MessageHeader,
            $($(#[$fmeta])* pub $field: $fty,)*
        }
        impl VmbusMessage for $name {
            const TYPE: MessageType = MessageType::$ty;
            const INTRODUCED_IN: ProtocolVersion = ProtocolVersion::$ver;
        }
    };
}

bitflags::bitflags! {
    /// Offer flag bits (`OfferChannel::chn_flags`, read with
    /// `OfferChannel::flags`).
    ///
    /// 0x2 and 0x4 (issue 10, item 6): Linux's `hyperv.h` names them
    /// `VMBUS_CHANNEL_SERVER_SUPPORTS_TRANSFER_PAGES` and
    /// `..._SUPPORTS_GPADLS`, definitions from the first VMBus that nothing
    /// in Linux reads. Today's Hyper-V hosts use them for confidential
    /// channels: Microsoft's own definitions say so, in the Hyper-V
    /// generation 2 UEFI firmware's VMBus headers (MsvmPkg,
    /// `VMBUS_OFFER_FLAG_CONFIDENTIAL_RING_BUFFER` 0x2 and
    /// `VMBUS_OFFER_FLAG_CONFIDENTIAL_EXTERNAL_MEMORY` 0x4, earlier
    /// `VMBUS_OFFER_FLAG_CONFIDENTIAL_CHANNEL` 0x2) and in OpenVMM's
    /// `vmbus_core` protocol (`OfferFlags::confidential_ring_buffer`,
    /// `confidential_external_memory`). The same headers note that a host
    /// masks out the bits a protocol version does not define, so these two
    /// mean something only with the 6.0 confidential-channels feature
    /// ([`crate::version::feature_flags::CONFIDENTIAL_CHANNELS`]), which we
    /// do not negotiate: an offer to us never needs them, and nothing here
    /// acts on them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct OfferFlags: u16 {
        const ENUMERATE_DEVICE_INTERFACE = 0x1;
        /// 6.0 (confidential channels feature): the ring must be encrypted memory.
        const CONFIDENTIAL_RING_BUFFER = 0x2;
        /// 6.0: other GPADLs and GPA-direct ranges must be encrypted memory.
        const CONFIDENTIAL_EXTERNAL_MEMORY = 0x4;
        /// `user_def` starts with a u32 pipe mode ([`PIPE_MODE_BYTE`]/[`PIPE_MODE_MESSAGE`]).
        const NAMED_PIPE_MODE = 0x10;
        const MONITORED_NOTIFICATION = 0x400;
        const HV_SOCKET = 0x2000;
    }
}
pub const PIPE_MODE_BYTE: u32 = 0;
pub const PIPE_MODE_MESSAGE: u32 = 4;

message! {
    /// 1, host -> guest: a device. 196 bytes.
    OfferChannel = OFFER_CHANNEL since V0_13 {
        interface_type: WireGuid,
        interface_instance: WireGuid,
        reserved1: U64,
        reserved2: U64,
        chn_flags: U16,
        mmio_megabytes: U16,
        user_def: [u8; 120],
        sub_channel_index: U16,
        mmio_megabytes_optional: U16,
        child_relid: U32,
        monitor_id: u8,
        /// Bit 0: the channel may be signalled through the monitor page.
        monitor_allocated: u8,
        /// Bit 0: the channel has its own interrupt (no shared event flag).
        is_dedicated_interrupt: U16,
        connection_id: U32,
    }
}

impl OfferChannel {
    /// The offer flags, unknown bits kept.
    pub fn flags(&self) -> OfferFlags {
        OfferFlags::from_bits_retain(self.chn_flags.get())
    }
    pub fn monitor_allocated(&self) -> bool {
        self.monitor_allocated & 1 != 0
    }
    pub fn is_dedicated_interrupt(&self) -> bool {
        self.is_dedicated_interrupt.get() & 1 != 0
    }
    /// The pipe mode when the offer is a named pipe, else `None`.
    pub fn pipe_mode(&self) -> Option<u32> {
        if !self.flags().contains(OfferFlags::NAMED_PIPE_MODE) {
            return None;
        }
        let mut mode = [0u8; 4];
        mode.copy_from_slice(&self.user_def[..4]);
        Some(u32::from_le_bytes(mode))
    }
}

message! {
    /// 2, host -> guest: the device is gone. 12 bytes.
    RescindChannelOffer = RESCIND_CHANNEL_OFFER since V0_13 { child_relid: U32 }
}
message! {
    /// 3, guest -> host. 8 bytes.
    RequestOffers = REQUEST_OFFERS since V0_13 {}
}
message! {
    /// 4, host -> guest. 8 bytes.
    AllOffersDelivered = ALL_OFFERS_DELIVERED since V0_13 {}
}
message! {
    /// 5, guest -> host. 148 bytes.
    OpenChannel = OPEN_CHANNEL since V0_13 {
        child_relid: U32,
        open_id: U32,
        ring_gpadl_id: U32,
        target_vp: U32,
        /// Page offset of the host->guest ring inside the ring GPADL.
        downstream_ring_page_offset: U32,
        user_data: [u8; 120],
    }
}
message! {
    /// 5 in its 6.0 form (OpenVMM `OpenChannel2`), sent when the guest
    /// specifies signal parameters or interrupt redirection. 156 bytes.
    OpenChannel2 = OPEN_CHANNEL since V6_0 {
        child_relid: U32,
        open_id: U32,
        ring_gpadl_id: U32,
        target_vp: U32,
        downstream_ring_page_offset: U32,
        user_data: [u8; 120],
        connection_id: U32,
        event_flag: U16,
        /// Bit 0: redirect the host->guest interrupt.
        flags: U16,
    }
}
message! {
    /// 6, host -> guest. 20 bytes; status 0 is success.
    OpenChannelResult = OPEN_CHANNEL_RESULT since V0_13 {
        child_relid: U32,
        open_id: U32,
        status: U32,
    }
}
message! {
    /// 7, guest -> host. 12 bytes.
    CloseChannel = CLOSE_CHANNEL since V0_13 { child_relid: U32 }
}
message! {
    /// 8, guest -> host: fixed part (20 bytes), followed by `range_buflen`
    /// bytes of GPA ranges of which at most 27 u64 words fit here (one
    /// range header + 26 PFNs); the rest follows in GpadlBody messages.
    GpadlHeader = GPADL_HEADER since V0_13 {
        child_relid: U32,
        gpadl_id: U32,
        /// Bytes of range data in total (header and bodies).
        range_buflen: U16,
        range_count: U16,
    }
}
message! {
    /// 9, guest -> host: fixed part (16 bytes), followed by up to 28 PFNs.
    GpadlBody = GPADL_BODY since V0_13 {
        /// Not interpreted by hosts (OpenVMM calls it reserved).
        message_number: U32,
        gpadl_id: U32,
    }
}
message! {
    /// 10, host -> guest. 20 bytes; status 0 is success.
    GpadlCreated = GPADL_CREATED since V0_13 {
        child_relid: U32,
        gpadl_id: U32,
        creation_status: U32,
    }
}
message! {
    /// 11, guest -> host. 16 bytes.
    GpadlTeardown = GPADL_TEARDOWN since V0_13 {
        child_relid: U32,
        gpadl_id: U32,
    }
}
message! {
    /// 12, host -> guest: the GPADL's memory may now be reused. 12 bytes.
    GpadlTorndown = GPADL_TORNDOWN since V0_13 { gpadl_id: U32 }
}
message! {
    /// 13, guest -> host: the guest is done with a rescinded relid. 12 bytes.
    RelIdReleased = REL_ID_RELEASED since V0_13 { child_relid: U32 }
}
message! {
    /// 14, guest -> host. 40 bytes.
    InitiateContact = INITIATE_CONTACT since V0_13 {
        version_requested: U32,
        target_vcpu: U32,
        /// Before 5.0: the interrupt page GPA. From 5.0: byte 0 msg_sint,
        /// byte 1 msg_vtl, bytes 4-7 feature flags (6.0).
        interrupt_page_or_target_info: U64,
        monitor_page1: U64,
        monitor_page2: U64,
    }
}

impl InitiateContact {
    /// What a guest sends to ask for `version`: from 5.0 the target-info
    /// word names SINT 2 (VTL 0) and `feature_flags`; before 5.0 it is the
    /// interrupt page GPA. Send it to
    /// [`ProtocolVersion::initiate_contact_connection_id`].
    pub fn request(
        version: ProtocolVersion,
        target_vcpu: u32,
        interrupt_page_gpa: u64,
        monitor_page1_gpa: u64,
        monitor_page2_gpa: u64,
        feature_flags: u32,
    ) -> Self {
        let mut message = Self::empty();
        message.version_requested = version.0.into();
        message.target_vcpu = target_vcpu.into();
        message.interrupt_page_or_target_info = if version.uses_message_sint() {
            Self::target_info(crate::version::VMBUS_MESSAGE_SINT, 0, feature_flags)
        } else {
            interrupt_page_gpa
        }
        .into();
        message.monitor_page1 = monitor_page1_gpa.into();
        message.monitor_page2 = monitor_page2_gpa.into();
        message
    }

    /// The from-5.0 form of the target-info word.
    pub const fn target_info(msg_sint: u8, msg_vtl: u8, feature_flags: u32) -> u64 {
        msg_sint as u64 | (msg_vtl as u64) << 8 | (feature_flags as u64) << 32
    }
    pub fn msg_sint(&self) -> u8 {
        self.interrupt_page_or_target_info.get() as u8
    }
    pub fn msg_vtl(&self) -> u8 {
        (self.interrupt_page_or_target_info.get() >> 8) as u8
    }
    pub fn feature_flags(&self) -> u32 {
        (self.interrupt_page_or_target_info.get() >> 32) as u32
    }
}

message! {
    /// 14 in its 6.0 form with a client ID (OpenVMM `InitiateContact2`). 56 bytes.
    InitiateContact2 = INITIATE_CONTACT since V6_0 {
        version_requested: U32,
        target_vcpu: U32,
        interrupt_page_or_target_info: U64,
        monitor_page1: U64,
        monitor_page2: U64,
        client_id: WireGuid,
    }
}
message! {
    /// 15, host -> guest. 16 bytes.
    VersionResponse = VERSION_RESPONSE since V0_13 {
        /// Non-zero: the requested version is accepted.
        version_supported: u8,
        /// 0 success, 1 low resources, 2 unknown failure.
        connection_state: u8,
        padding: U16,
        /// From 5.0: the connection ID for all later messages.
        msg_conn_id: U32,
    }
}
impl VersionResponse {
    pub fn accepted(&self) -> bool {
        self.version_supported != 0
    }
}

message! {
    /// 15 in its 6.0 form with the host's feature flags. 20 bytes.
    VersionResponse2 = VERSION_RESPONSE since V6_0 {
        version_supported: u8,
        connection_state: u8,
        padding: U16,
        msg_conn_id: U32,
        supported_features: U32,
    }
}
message! {
    /// 16, guest -> host. 8 bytes.
    Unload = UNLOAD since V0_13 {}
}
message! {
    /// 17, host -> guest. 8 bytes.
    UnloadResponse = UNLOAD_RESPONSE since V1_1 {}
}
message! {
    /// 21, guest -> host: hv_sock connect. 40 bytes.
    TlConnectRequest = TL_CONNECT_REQUEST since V4_0 {
        guest_endpoint_id: WireGuid,
        host_service_id: WireGuid,
    }
}
message! {
    /// 21 from 5.2, with the silo ID. 56 bytes.
    TlConnectRequest2 = TL_CONNECT_REQUEST since V5_2 {
        guest_endpoint_id: WireGuid,
        host_service_id: WireGuid,
        silo_id: WireGuid,
    }
}
message! {
    /// 22, guest -> host: move the channel's interrupt. 16 bytes.
    ModifyChannel = MODIFY_CHANNEL since V4_1 {
        child_relid: U32,
        target_vp: U32,
    }
}
message! {
    /// 23, host -> guest: hv_sock connect failed. 44 bytes (OpenVMM's
    /// layout: two GUIDs and an NTSTATUS; the facts sheet groups it with 21).
    TlConnectResult = TL_CONNECT_RESULT since V4_1 {
        endpoint_id: WireGuid,
        service_id: WireGuid,
        status: U32,
    }
}
message! {
    /// 24, host -> guest. 16 bytes.
    ModifyChannelResponse = MODIFY_CHANNEL_RESPONSE since V5_3 {
        child_relid: U32,
        status: U32,
    }
}
message! {
    /// 25 (6.0, modify-connection feature): new monitor pages. 24 bytes.
    ModifyConnection = MODIFY_CONNECTION since V6_0 {
        monitor_page1: U64,
        monitor_page2: U64,
    }
}
message! {
    /// 26 (6.0). 9 bytes.
    ModifyConnectionResponse = MODIFY_CONNECTION_RESPONSE since V6_0 { connection_state: u8 }
}
message! {
    /// 27 (6.0, pause-resume feature). 8 bytes.
    Pause = PAUSE since V6_0 {}
}
message! {
    /// 28 (6.0). 8 bytes.
    PauseResponse = PAUSE_RESPONSE since V6_0 {}
}
message! {
    /// 29 (6.0). 8 bytes.
    Resume = RESUME since V6_0 {}
}

/// Fixed part of GpadlHeader plus the range words it carries.
pub const GPADL_HEADER_MAX_WORDS: usize = (MAX_MESSAGE_SIZE - 20) / 8; // 27
/// PFNs a GpadlHeader carries with one range (27 words minus the range header).
pub const GPADL_HEADER_MAX_PFNS: usize = 26;
/// PFNs a GpadlBody carries.
pub const GPADL_BODY_MAX_PFNS: usize = (MAX_MESSAGE_SIZE - 16) / 8; // 28

/// A GpadlHeader with the range words (range headers and PFNs) it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlHeaderMessage {
    pub fixed: GpadlHeader,
    pub words: heapless::Vec<u64, GPADL_HEADER_MAX_WORDS>,
}

/// A GpadlBody with its PFNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlBodyMessage {
    pub fixed: GpadlBody,
    pub pfns: heapless::Vec<u64, GPADL_BODY_MAX_PFNS>,
}

/// A received message, copied out of the slot and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMessage {
    OfferChannel(OfferChannel),
    RescindChannelOffer(RescindChannelOffer),
    RequestOffers(RequestOffers),
    AllOffersDelivered(AllOffersDelivered),
    OpenChannel(OpenChannel),
    OpenChannel2(OpenChannel2),
    OpenChannelResult(OpenChannelResult),
    CloseChannel(CloseChannel),
    GpadlHeader(GpadlHeaderMessage),
    GpadlBody(GpadlBodyMessage),
    GpadlCreated(GpadlCreated),
    GpadlTeardown(GpadlTeardown),
    GpadlTorndown(GpadlTorndown),
    RelIdReleased(RelIdReleased),
    InitiateContact(InitiateContact),
    InitiateContact2(InitiateContact2),
    VersionResponse(VersionResponse),
    VersionResponse2(VersionResponse2),
    Unload(Unload),
    UnloadResponse(UnloadResponse),
    TlConnectRequest(TlConnectRequest),
    TlConnectRequest2(TlConnectRequest2),
    ModifyChannel(ModifyChannel),
    TlConnectResult(TlConnectResult),
    ModifyChannelResponse(ModifyChannelResponse),
    ModifyConnection(ModifyConnection),
    ModifyConnectionResponse(ModifyConnectionResponse),
    Pause(Pause),
    PauseResponse(PauseResponse),
    Resume(Resume),
}

/// Why a received message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// More than [`MAX_MESSAGE_SIZE`] bytes.
    TooLong { len: usize },
    /// Shorter than its type requires.
    TooShort {
        message_type: u32,
        needed: usize,
        got: usize,
    },
    /// A type number this crate does not parse.
    UnknownMessageType(u32),
    /// A known type that the negotiated version does not have.
    NotInVersion {
        message_type: u32,
        introduced_in: ProtocolVersion,
        negotiated: ProtocolVersion,
    },
    /// A GpadlHeader/GpadlBody whose counts contradict each other.
    BadGpadl(&'static str),
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong { len } => write!(f, "message of {len} bytes exceeds 240"),
            Self::TooShort {
                message_type,
                needed,
                got,
            } => write!(
                f,
                "message type {message_type} needs {needed} bytes, got {got}"
            ),
            Self::UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            Self::NotInVersion {
                message_type,
                introduced_in,
                negotiated,
            } => write!(
                f,
                "message type {message_type} needs protocol {introduced_in}, negotiated {negotiated}"
            ),
            Self::BadGpadl(why) => write!(f, "bad GPADL message: {why}"),
        }
    }
}

fn read_fixed<T: VmbusMessage>(bytes: &[u8]) -> Result<T, ProtocolError> {
    // Trailing bytes are tolerated (the slot's payload_size may round up);
    // only the prefix is copied.
    T::read_from_prefix(bytes)
        .map(|(message, _)| message)
        .map_err(|_| ProtocolError::TooShort {
            message_type: T::TYPE.0,
            needed: T::SIZE,
            got: bytes.len(),
        })
}

/// The type of a message without parsing the rest.
pub fn peek_type(bytes: &[u8]) -> Option<MessageType> {
    MessageHeader::read_from_prefix(bytes)
        .ok()
        .map(|(header, _)| header.message_type())
}

/// Parse a message received when `negotiated` is the agreed version.
///
/// Before a version is agreed, pass the version that was requested in
/// InitiateContact (only InitiateContact and VersionResponse are allowed
/// by every version, so nothing else gets through that the peer could not
/// send). The 6.0 variants (OpenChannel2, InitiateContact2,
/// VersionResponse2, TlConnectRequest2 from 5.2) are chosen by size when the
/// version allows them. Feature-flag gating of the 6.0 messages is left to
/// the caller, who knows the flags that were agreed.
pub fn parse(bytes: &[u8], negotiated: ProtocolVersion) -> Result<ChannelMessage, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ProtocolError::TooLong { len: bytes.len() });
    }
    let header = MessageHeader::read_from_prefix(bytes)
        .map_err(|_| ProtocolError::TooShort {
            message_type: 0,
            needed: HEADER_SIZE,
            got: bytes.len(),
        })?
        .0;
    let message_type = header.message_type();
    let introduced_in = message_type
        .introduced_in()
        .ok_or(ProtocolError::UnknownMessageType(message_type.0))?;
    if negotiated < introduced_in {
        return Err(ProtocolError::NotInVersion {
            message_type: message_type.0,
            introduced_in,
            negotiated,
        });
    }
    let v6 = negotiated >= ProtocolVersion::V6_0;
    use ChannelMessage as M;
    Ok(match message_type {
        MessageType::OFFER_CHANNEL => M::OfferChannel(read_fixed(bytes)?),
        MessageType::RESCIND_CHANNEL_OFFER => M::RescindChannelOffer(read_fixed(bytes)?),
        MessageType::REQUEST_OFFERS => M::RequestOffers(read_fixed(bytes)?),
        MessageType::ALL_OFFERS_DELIVERED => M::AllOffersDelivered(read_fixed(bytes)?),
        MessageType::OPEN_CHANNEL if v6 && bytes.len() >= OpenChannel2::SIZE => {
            M::OpenChannel2(read_fixed(bytes)?)
        }
        MessageType::OPEN_CHANNEL => M::OpenChannel(read_fixed(bytes)?),
        MessageType::OPEN_CHANNEL_RESULT => M::OpenChannelResult(read_fixed(bytes)?),
        MessageType::CLOSE_CHANNEL => M::CloseChannel(read_fixed(bytes)?),
        MessageType::GPADL_HEADER => M::GpadlHeader(parse_gpadl_header(bytes)?),
        MessageType::GPADL_BODY => M::GpadlBody(parse_gpadl_body(bytes)?),
        MessageType::GPADL_CREATED => M::GpadlCreated(read_fixed(bytes)?),
        MessageType::GPADL_TEARDOWN => M::GpadlTeardown(read_fixed(bytes)?),
        MessageType::GPADL_TORNDOWN => M::GpadlTorndown(read_fixed(bytes)?),
        MessageType::REL_ID_RELEASED => M::RelIdReleased(read_fixed(bytes)?),
        // InitiateContact arrives before a version is agreed; its 6.0 form
        // is recognised by size and by the version it requests.
        MessageType::INITIATE_CONTACT if bytes.len() >= InitiateContact2::SIZE => {
            let message: InitiateContact2 = read_fixed(bytes)?;
            if message.version_requested.get() >= ProtocolVersion::V6_0.0 {
                M::InitiateContact2(message)
            } else {
                M::InitiateContact(read_fixed(bytes)?)
            }
        }
        MessageType::INITIATE_CONTACT => M::InitiateContact(read_fixed(bytes)?),
        MessageType::VERSION_RESPONSE if v6 && bytes.len() >= VersionResponse2::SIZE => {
            M::VersionResponse2(read_fixed(bytes)?)
        }
        MessageType::VERSION_RESPONSE => M::VersionResponse(read_fixed(bytes)?),
        MessageType::UNLOAD => M::Unload(read_fixed(bytes)?),
        MessageType::UNLOAD_RESPONSE => M::UnloadResponse(read_fixed(bytes)?),
        MessageType::TL_CONNECT_REQUEST
            if negotiated >= ProtocolVersion::V5_2 && bytes.len() >= TlConnectRequest2::SIZE =>
        {
            M::TlConnectRequest2(read_fixed(bytes)?)
        }
        MessageType::TL_CONNECT_REQUEST => M::TlConnectRequest(read_fixed(bytes)?),
        MessageType::MODIFY_CHANNEL => M::ModifyChannel(read_fixed(bytes)?),
        MessageType::TL_CONNECT_RESULT => M::TlConnectResult(read_fixed(bytes)?),
        MessageType::MODIFY_CHANNEL_RESPONSE => M::ModifyChannelResponse(read_fixed(bytes)?),
        MessageType::MODIFY_CONNECTION => M::ModifyConnection(read_fixed(bytes)?),
        MessageType::MODIFY_CONNECTION_RESPONSE => M::ModifyConnectionResponse(read_fixed(bytes)?),
        MessageType::PAUSE => M::Pause(read_fixed(bytes)?),
        MessageType::PAUSE_RESPONSE => M::PauseResponse(read_fixed(bytes)?),
        MessageType::RESUME => M::Resume(read_fixed(bytes)?),
        other => return Err(ProtocolError::UnknownMessageType(other.0)),
    })
}

fn read_words<const N: usize>(bytes: &[u8]) -> heapless::Vec<u64, N> {
    bytes
        .chunks_exact(8)
        .take(N)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            u64::from_le_bytes(word)
        })
        .collect()
}

fn parse_gpadl_header(bytes: &[u8]) -> Result<GpadlHeaderMessage, ProtocolError> {
    let fixed: GpadlHeader = read_fixed(bytes)?;
    let range_buflen = fixed.range_buflen.get() as usize;
    let range_count = fixed.range_count.get() as usize;
    if range_count == 0 {
        return Err(ProtocolError::BadGpadl("no ranges"));
    }
    if !range_buflen.is_multiple_of(8) || range_buflen < 16 * range_count {
        // Every range is at least its 8-byte header plus one PFN.
        return Err(ProtocolError::BadGpadl(
            "range_buflen too small or unaligned",
        ));
    }
    let carried = (bytes.len() - GpadlHeader::SIZE) / 8;
    let expected = core::cmp::min(range_buflen / 8, GPADL_HEADER_MAX_WORDS);
    if carried < expected {
        return Err(ProtocolError::TooShort {
            message_type: MessageType::GPADL_HEADER.0,
            needed: GpadlHeader::SIZE + expected * 8,
            got: bytes.len(),
        });
    }
    Ok(GpadlHeaderMessage {
        fixed,
        words: read_words(&bytes[GpadlHeader::SIZE..GpadlHeader::SIZE + expected * 8]),
    })
}

fn parse_gpadl_body(bytes: &[u8]) -> Result<GpadlBodyMessage, ProtocolError> {
    let fixed: GpadlBody = read_fixed(bytes)?;
    let pfns: heapless::Vec<u64, GPADL_BODY_MAX_PFNS> = read_words(&bytes[GpadlBody::SIZE..]);
    if pfns.is_empty() {
        return Err(ProtocolError::BadGpadl("body without PFNs"));
    }
    Ok(GpadlBodyMessage { fixed, pfns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    macro_rules! layout {
        ($ty:ty, $size:expr, { $($field:ident @ $offset:expr),* $(,)? }) => {{
            assert_eq!(size_of::<$ty>(), $size, "size of {}", stringify!($ty));
            assert_eq!(core::mem::align_of::<$ty>(), 1, "{} must be packed", stringify!($ty));
            $(assert_eq!(offset_of!($ty, $field), $offset,
                "{}.{}", stringify!($ty), stringify!($field));)*
        }};
    }

    #[test]
    fn header_layout() {
        layout!(MessageHeader, 8, { message_type @ 0, padding @ 4 });
    }

    #[test]
    fn offer_channel_layout() {
        layout!(OfferChannel, 196, {
            header @ 0, interface_type @ 8, interface_instance @ 24, reserved1 @ 40,
            reserved2 @ 48, chn_flags @ 56, mmio_megabytes @ 58, user_def @ 60,
            sub_channel_index @ 180, mmio_megabytes_optional @ 182, child_relid @ 184,
            monitor_id @ 188, monitor_allocated @ 189, is_dedicated_interrupt @ 190,
            connection_id @ 192,
        });
    }

    #[test]
    fn small_message_layouts() {
        layout!(RescindChannelOffer, 12, { header @ 0, child_relid @ 8 });
        layout!(RequestOffers, 8, { header @ 0 });
        layout!(AllOffersDelivered, 8, { header @ 0 });
        layout!(OpenChannelResult, 20, { child_relid @ 8, open_id @ 12, status @ 16 });
        layout!(CloseChannel, 12, { child_relid @ 8 });
        layout!(GpadlCreated, 20, { child_relid @ 8, gpadl_id @ 12, creation_status @ 16 });
        layout!(GpadlTeardown, 16, { child_relid @ 8, gpadl_id @ 12 });
        layout!(GpadlTorndown, 12, { gpadl_id @ 8 });
        layout!(RelIdReleased, 12, { child_relid @ 8 });
        layout!(Unload, 8, { header @ 0 });
        layout!(UnloadResponse, 8, { header @ 0 });
        layout!(ModifyChannel, 16, { child_relid @ 8, target_vp @ 12 });
        layout!(ModifyChannelResponse, 16, { child_relid @ 8, status @ 12 });
        layout!(ModifyConnection, 24, { monitor_page1 @ 8, monitor_page2 @ 16 });
        layout!(ModifyConnectionResponse, 9, { connection_state @ 8 });
        layout!(Pause, 8, { header @ 0 });
        layout!(PauseResponse, 8, { header @ 0 });
        layout!(Resume, 8, { header @ 0 });
    }

    #[test]
    fn open_channel_layouts() {
        layout!(OpenChannel, 148, {
            child_relid @ 8, open_id @ 12, ring_gpadl_id @ 16, target_vp @ 20,
            downstream_ring_page_offset @ 24, user_data @ 28,
        });
        layout!(OpenChannel2, 156, {
            child_relid @ 8, open_id @ 12, ring_gpadl_id @ 16, target_vp @ 20,
            downstream_ring_page_offset @ 24, user_data @ 28, connection_id @ 148,
            event_flag @ 152, flags @ 154,
        });
    }

    #[test]
    fn gpadl_layouts() {
        layout!(GpadlHeader, 20, {
            child_relid @ 8, gpadl_id @ 12, range_buflen @ 16, range_count @ 18,
        });
        layout!(GpadlBody, 16, { message_number @ 8, gpadl_id @ 12 });
        assert_eq!(GPADL_HEADER_MAX_WORDS, 27);
        assert_eq!(GPADL_BODY_MAX_PFNS, 28);
        // One range header and 26 PFNs fit in a header message.
        const { assert!(GpadlHeader::SIZE + 8 + GPADL_HEADER_MAX_PFNS * 8 <= MAX_MESSAGE_SIZE) };
    }

    #[test]
    fn contact_layouts() {
        layout!(InitiateContact, 40, {
            version_requested @ 8, target_vcpu @ 12, interrupt_page_or_target_info @ 16,
            monitor_page1 @ 24, monitor_page2 @ 32,
        });
        layout!(InitiateContact2, 56, { monitor_page2 @ 32, client_id @ 40 });
        layout!(VersionResponse, 16, {
            version_supported @ 8, connection_state @ 9, padding @ 10, msg_conn_id @ 12,
        });
        layout!(VersionResponse2, 20, { msg_conn_id @ 12, supported_features @ 16 });
    }

    #[test]
    fn hv_sock_layouts() {
        layout!(TlConnectRequest, 40, { guest_endpoint_id @ 8, host_service_id @ 24 });
        layout!(TlConnectRequest2, 56, {
            guest_endpoint_id @ 8, host_service_id @ 24, silo_id @ 40,
        });
        layout!(TlConnectResult, 44, { endpoint_id @ 8, service_id @ 24, status @ 40 });
    }

    #[test]
    fn target_info_packs_sint_vtl_and_features() {
        let mut contact = InitiateContact::empty();
        contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0x11).into();
        assert_eq!(contact.msg_sint(), 2);
        assert_eq!(contact.msg_vtl(), 0);
        assert_eq!(contact.feature_flags(), 0x11);
        assert_eq!(contact.as_bytes()[16], 2);
        assert_eq!(contact.as_bytes()[..4], [14, 0, 0, 0]);
    }

    #[test]
    fn initiate_contact_request_follows_the_version_rules() {
        let new = InitiateContact::request(ProtocolVersion::V5_3, 0, 0x1000, 0x2000, 0x3000, 0);
        assert_eq!(new.msg_sint(), 2);
        assert_eq!(new.version_requested.get(), 0x50003);
        assert_eq!(new.monitor_page2.get(), 0x3000);
        let old = InitiateContact::request(ProtocolVersion::V4_1, 0, 0x1000, 0x2000, 0x3000, 0);
        assert_eq!(old.interrupt_page_or_target_info.get(), 0x1000);
        let mut response = VersionResponse::empty();
        assert!(!response.accepted());
        response.version_supported = 1;
        assert!(response.accepted());
    }

    #[test]
    fn parse_round_trips_and_gates_by_version() {
        let mut offer = OfferChannel::empty();
        offer.child_relid = 7.into();
        offer.interface_type = crate::guid::class::SCSI.into();
        let parsed = parse(offer.as_bytes(), ProtocolVersion::V5_3).unwrap();
        assert_eq!(parsed, ChannelMessage::OfferChannel(offer));

        let response = ModifyChannelResponse::empty();
        assert_eq!(
            parse(response.as_bytes(), ProtocolVersion::V5_2),
            Err(ProtocolError::NotInVersion {
                message_type: 24,
                introduced_in: ProtocolVersion::V5_3,
                negotiated: ProtocolVersion::V5_2,
            })
        );
        assert!(parse(response.as_bytes(), ProtocolVersion::V5_3).is_ok());
        assert_eq!(
            parse(Pause::empty().as_bytes(), ProtocolVersion::V5_3),
            Err(ProtocolError::NotInVersion {
                message_type: 27,
                introduced_in: ProtocolVersion::V6_0,
                negotiated: ProtocolVersion::V5_3,
            })
        );
    }

    #[test]
    fn parse_rejects_short_unknown_and_long() {
        let offer = OfferChannel::empty();
        assert_eq!(
            parse(&offer.as_bytes()[..195], ProtocolVersion::V5_3),
            Err(ProtocolError::TooShort {
                message_type: 1,
                needed: 196,
                got: 195
            })
        );
        assert_eq!(
            parse(&[19, 0, 0, 0, 0, 0, 0, 0], ProtocolVersion::V6_0),
            Err(ProtocolError::UnknownMessageType(19))
        );
        assert_eq!(
            parse(&[0u8; 241], ProtocolVersion::V6_0),
            Err(ProtocolError::TooLong { len: 241 })
        );
        assert!(matches!(
            parse(&[1, 0, 0], ProtocolVersion::V6_0),
            Err(ProtocolError::TooShort { .. })
        ));
    }

    #[test]
    fn version_response_and_open_pick_their_6_0_form_by_size_and_version() {
        let response = VersionResponse2::empty();
        assert!(matches!(
            parse(response.as_bytes(), ProtocolVersion::V6_0),
            Ok(ChannelMessage::VersionResponse2(_))
        ));
        assert!(matches!(
            parse(response.as_bytes(), ProtocolVersion::V5_3),
            Ok(ChannelMessage::VersionResponse(_))
        ));
        let open = OpenChannel2::empty();
        assert!(matches!(
            parse(open.as_bytes(), ProtocolVersion::V6_0),
            Ok(ChannelMessage::OpenChannel2(_))
        ));
        assert!(matches!(
            parse(open.as_bytes(), ProtocolVersion::V5_0),
            Ok(ChannelMessage::OpenChannel(_))
        ));
        let tl = TlConnectRequest2::empty();
        assert!(matches!(
            parse(tl.as_bytes(), ProtocolVersion::V5_2),
            Ok(ChannelMessage::TlConnectRequest2(_))
        ));
        assert!(matches!(
            parse(tl.as_bytes(), ProtocolVersion::V5_1),
            Ok(ChannelMessage::TlConnectRequest(_))
        ));
        assert!(matches!(
            parse(tl.as_bytes(), ProtocolVersion::V3_0),
            Err(ProtocolError::NotInVersion { .. })
        ));
    }

    #[test]
    fn pipe_mode_only_for_named_pipes() {
        let mut offer = OfferChannel::empty();
        offer.user_def[..4].copy_from_slice(&PIPE_MODE_MESSAGE.to_le_bytes());
        assert_eq!(offer.pipe_mode(), None);
        offer.chn_flags = OfferFlags::NAMED_PIPE_MODE.bits().into();
        assert_eq!(offer.pipe_mode(), Some(PIPE_MODE_MESSAGE));
    }
}
