//! Integration-component (IC) framing: the pipe header, the icmsg header,
//! the version-negotiation message and the heartbeat, shutdown, timesync and
//! KVP bodies, with a negotiation helper for both sides (the host offers
//! version lists, the guest answers with one framework and one message
//! version or none).

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

macro_rules! wire {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C, packed)]
        pub struct $name { $($(#[$fmeta])* pub $field: $fty,)* }
    };
}

wire! {
    /// The 8-byte header in front of every message-mode pipe payload.
    PipeHeader {
        /// 1 = data.
        packet_type: U32,
        data_size: U32,
    }
}
pub const PIPE_PACKET_DATA: u32 = 1;

wire! {
    /// A version as ICs write it: major then minor, 16 bits each.
    IcVersion { major: U16, minor: U16 }
}

impl IcVersion {
    pub fn new(major: u16, minor: u16) -> Self {
        Self {
            major: major.into(),
            minor: minor.into(),
        }
    }
}

wire! {
    /// The 20-byte IC message header after the pipe header.
    IcMessageHeader {
        framework_version: IcVersion,
        message_type: U16,
        message_version: IcVersion,
        message_size: U16,
        status: U32,
        transaction_id: u8,
        flags: u8,
        reserved: [u8; 2],
    }
}

/// `IcMessageHeader::message_type` values.
pub mod message_type {
    pub const NEGOTIATE: u16 = 0;
    pub const HEARTBEAT: u16 = 1;
    pub const KVP: u16 = 2;
    pub const SHUTDOWN: u16 = 3;
    pub const TIMESYNC: u16 = 4;
    pub const VSS: u16 = 5;
    pub const FCOPY: u16 = 7;
}
bitflags::bitflags! {
    /// `IcMessageHeader::flags` bits; a response carries TRANSACTION | RESPONSE.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct IcFlags: u8 {
        const TRANSACTION = 1;
        const REQUEST = 2;
        const RESPONSE = 4;
    }
}

impl IcMessageHeader {
    /// The flag bits, unknown ones kept.
    pub fn flags(&self) -> IcFlags {
        IcFlags::from_bits_retain(self.flags)
    }
    pub fn set_flags(&mut self, flags: IcFlags) {
        self.flags = flags.bits();
    }
}
pub const STATUS_OK: u32 = 0;
/// HRESULT E_FAIL, what ICs answer when they cannot serve a request.
pub const STATUS_FAIL: u32 = 0x8000_4005;

/// Versions each service speaks, newest first.
pub mod versions {
    /// (major, minor) pairs.
    pub const FRAMEWORK: [(u16, u16); 2] = [(3, 0), (1, 0)];
    pub const HEARTBEAT: [(u16, u16); 2] = [(3, 0), (1, 0)];
    pub const SHUTDOWN: [(u16, u16); 4] = [(3, 2), (3, 1), (3, 0), (1, 0)];
    pub const TIMESYNC: [(u16, u16); 3] = [(4, 0), (3, 0), (1, 0)];
    pub const KVP: [(u16, u16); 3] = [(5, 0), (4, 0), (3, 0)];
}

wire! {
    /// Body of a negotiate message; `framework_count + message_count`
    /// [`IcVersion`]s follow (frameworks first).
    IcNegotiate {
        framework_count: U16,
        message_count: U16,
        reserved: U32,
    }
}

wire! {
    /// Heartbeat body: the guest answers with `sequence + 1`.
    HeartbeatMessage { sequence: U64, reserved: [U32; 8] }
}

wire! {
    /// Shutdown body.
    ShutdownMessage {
        reason_code: U32,
        timeout_seconds: U32,
        /// 0 shut down, 1 force, 2 reboot, 4 hibernate (bits).
        flags: U32,
        display_message: [u8; 2048],
    }
}
pub mod shutdown_flags {
    pub const FORCE: u32 = 1;
    pub const REBOOT: u32 = 2;
    pub const HIBERNATE: u32 = 4;
}

wire! {
    /// Timesync body before 4.0. Times are 100 ns units since 1601.
    TimesyncMessage {
        parent_time: U64,
        child_time: U64,
        round_trip_time: U64,
        flags: u8,
    }
}
wire! {
    /// Timesync body from 4.0 (with the host's reference time).
    TimesyncRefMessage {
        parent_time: U64,
        vm_reference_time: U64,
        flags: u8,
        leap_flags: u8,
        stratum: u8,
        reserved: [u8; 3],
    }
}
pub mod timesync_flags {
    pub const SYNC: u8 = 1;
    pub const SAMPLE: u8 = 2;
}

pub const KVP_KEY_SIZE: usize = 512;
pub const KVP_VALUE_SIZE: usize = 2048;

wire! {
    /// First 4 bytes of every KVP body.
    KvpHeader { operation: u8, pool: u8, padding: U16 }
}
pub mod kvp_operation {
    pub const GET: u8 = 0;
    pub const SET: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const ENUMERATE: u8 = 3;
    pub const GET_IP_INFO: u8 = 4;
    pub const SET_IP_INFO: u8 = 5;
    pub const COUNT: u8 = 6;
}
wire! {
    /// A key/value pair; key and value are UTF-16LE, sizes in bytes.
    KvpValue {
        value_type: U32,
        key_size: U32,
        value_size: U32,
        key: [u8; KVP_KEY_SIZE],
        value: [u8; KVP_VALUE_SIZE],
    }
}
wire! {
    /// Get and set.
    KvpGetSetMessage { header: KvpHeader, value: KvpValue }
}
wire! {
    /// Enumerate: the host asks for pair number `index` of a pool.
    KvpEnumerateMessage { header: KvpHeader, index: U32, value: KvpValue }
}
wire! {
    KvpDeleteMessage { header: KvpHeader, key_size: U32, key: [u8; KVP_KEY_SIZE] }
}

impl KvpValue {
    /// The key bytes, bounded by the host's claimed size.
    pub fn key_bytes(&self) -> Result<&[u8], IcError> {
        let size = self.key_size.get() as usize;
        self.key.get(..size).ok_or(IcError::FieldTooLong)
    }
    pub fn value_bytes(&self) -> Result<&[u8], IcError> {
        let size = self.value_size.get() as usize;
        self.value.get(..size).ok_or(IcError::FieldTooLong)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcError {
    /// Shorter than its headers or body.
    TooShort,
    /// More versions than the body holds, or more than we keep.
    BadVersionCount,
    /// A size field beyond its array.
    FieldTooLong,
    /// The output buffer is too small.
    BufferTooSmall,
}

/// A received IC message: headers copied out, the body borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcMessage<'a> {
    pub pipe: PipeHeader,
    pub header: IcMessageHeader,
    pub body: &'a [u8],
}

pub const IC_HEADERS_SIZE: usize = 8 + 20;

/// Split a ring payload into pipe header, IC header and body.
pub fn parse_ic_message(bytes: &[u8]) -> Result<IcMessage<'_>, IcError> {
    let (pipe, rest) = PipeHeader::read_from_prefix(bytes).map_err(|_| IcError::TooShort)?;
    let (header, body) = IcMessageHeader::read_from_prefix(rest).map_err(|_| IcError::TooShort)?;
    Ok(IcMessage { pipe, header, body })
}

/// Read a fixed body (heartbeat, shutdown, ...) from an IC message body.
pub fn read_body<T: FromBytes>(body: &[u8]) -> Result<T, IcError> {
    T::read_from_prefix(body)
        .map(|(value, _)| value)
        .map_err(|_| IcError::TooShort)
}

/// The most versions of each kind this crate keeps from a negotiate message.
pub const MAX_NEGOTIATE_VERSIONS: usize = 16;

/// The version lists of a negotiate message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiateVersions {
    pub framework: heapless::Vec<IcVersion, MAX_NEGOTIATE_VERSIONS>,
    pub message: heapless::Vec<IcVersion, MAX_NEGOTIATE_VERSIONS>,
}

/// Parse a negotiate body (request from the host, or response from the guest).
pub fn parse_negotiate(body: &[u8]) -> Result<NegotiateVersions, IcError> {
    let (negotiate, rest) = IcNegotiate::read_from_prefix(body).map_err(|_| IcError::TooShort)?;
    let framework_count = negotiate.framework_count.get() as usize;
    let message_count = negotiate.message_count.get() as usize;
    if framework_count > MAX_NEGOTIATE_VERSIONS || message_count > MAX_NEGOTIATE_VERSIONS {
        return Err(IcError::BadVersionCount);
    }
    let (versions, _) =
        <[IcVersion]>::ref_from_prefix_with_elems(rest, framework_count + message_count)
            .map_err(|_| IcError::BadVersionCount)?;
    let (framework, message) = versions.split_at(framework_count);
    Ok(NegotiateVersions {
        // Counts bounded above.
        framework: framework.iter().copied().collect(),
        message: message.iter().copied().collect(),
    })
}

/// Guest side: pick the first of `ours` (newest first) that the host offers.
pub fn select_version(offered: &[IcVersion], ours: &[(u16, u16)]) -> Option<IcVersion> {
    ours.iter()
        .map(|&(major, minor)| IcVersion::new(major, minor))
        .find(|candidate| offered.contains(candidate))
}

/// Write a negotiate body listing `framework` then `message` versions into
/// `out`; returns the bytes written. The host sends its lists; the guest
/// answers with one of each (or none when nothing matched).
pub fn write_negotiate(
    out: &mut [u8],
    framework: &[IcVersion],
    message: &[IcVersion],
) -> Result<usize, IcError> {
    let counts = (
        u16::try_from(framework.len()).map_err(|_| IcError::BadVersionCount)?,
        u16::try_from(message.len()).map_err(|_| IcError::BadVersionCount)?,
    );
    let header = IcNegotiate {
        framework_count: counts.0.into(),
        message_count: counts.1.into(),
        reserved: U32::ZERO,
    };
    let total = 8 + 4 * (framework.len() + message.len());
    let out = out.get_mut(..total).ok_or(IcError::BufferTooSmall)?;
    out[..8].copy_from_slice(header.as_bytes());
    for (slot, version) in out[8..]
        .chunks_exact_mut(4)
        .zip(framework.iter().chain(message))
    {
        slot.copy_from_slice(version.as_bytes());
    }
    Ok(total)
}

/// Write pipe header + IC header + body into `out`; returns the length.
pub fn write_ic_message(
    out: &mut [u8],
    header: &IcMessageHeader,
    body: &[u8],
) -> Result<usize, IcError> {
    let total = IC_HEADERS_SIZE + body.len();
    let out = out.get_mut(..total).ok_or(IcError::BufferTooSmall)?;
    let pipe = PipeHeader {
        packet_type: PIPE_PACKET_DATA.into(),
        data_size: u32::try_from(total - 8)
            .map_err(|_| IcError::BufferTooSmall)?
            .into(),
    };
    out[..8].copy_from_slice(pipe.as_bytes());
    out[8..IC_HEADERS_SIZE].copy_from_slice(header.as_bytes());
    out[IC_HEADERS_SIZE..].copy_from_slice(body);
    Ok(total)
}

/// The outcome of a guest's negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub framework: IcVersion,
    pub message: IcVersion,
}

/// Guest side, whole message: given the host's negotiate request (a full
/// ring payload) and our version lists, write the response into `out` and
/// return its length and the chosen versions (`None`: no common version,
/// the response carries empty lists and STATUS_FAIL).
pub fn answer_negotiate(
    request: &[u8],
    our_framework: &[(u16, u16)],
    our_message: &[(u16, u16)],
    out: &mut [u8],
) -> Result<(usize, Option<Negotiated>), IcError> {
    let message = parse_ic_message(request)?;
    let offered = parse_negotiate(message.body)?;
    let chosen = match (
        select_version(&offered.framework, our_framework),
        select_version(&offered.message, our_message),
    ) {
        (Some(framework), Some(message)) => Some(Negotiated { framework, message }),
        _ => None,
    };
    let mut header = message.header;
    header.set_flags(IcFlags::TRANSACTION | IcFlags::RESPONSE);
    let mut body = [0u8; 16];
    let body_len = match chosen {
        Some(chosen) => {
            header.status = STATUS_OK.into();
            header.framework_version = chosen.framework;
            header.message_version = chosen.message;
            write_negotiate(&mut body, &[chosen.framework], &[chosen.message])?
        }
        None => {
            header.status = STATUS_FAIL.into();
            write_negotiate(&mut body, &[], &[])?
        }
    };
    header.message_size = (body_len as u16).into();
    let len = write_ic_message(out, &header, &body[..body_len])?;
    Ok((len, chosen))
}

/// Host side: read the guest's negotiate response.
pub fn read_negotiate_response(response: &[u8]) -> Result<Option<Negotiated>, IcError> {
    let message = parse_ic_message(response)?;
    let versions = parse_negotiate(message.body)?;
    match (versions.framework.as_slice(), versions.message.as_slice()) {
        ([framework], [message]) => Ok(Some(Negotiated {
            framework: *framework,
            message: *message,
        })),
        ([], []) => Ok(None),
        _ => Err(IcError::BadVersionCount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn framing_layouts() {
        assert_eq!(size_of::<PipeHeader>(), 8);
        assert_eq!(offset_of!(PipeHeader, packet_type), 0);
        assert_eq!(offset_of!(PipeHeader, data_size), 4);
        assert_eq!(size_of::<IcVersion>(), 4);
        assert_eq!(offset_of!(IcVersion, minor), 2);
        assert_eq!(size_of::<IcMessageHeader>(), 20);
        assert_eq!(offset_of!(IcMessageHeader, framework_version), 0);
        assert_eq!(offset_of!(IcMessageHeader, message_type), 4);
        assert_eq!(offset_of!(IcMessageHeader, message_version), 6);
        assert_eq!(offset_of!(IcMessageHeader, message_size), 10);
        assert_eq!(offset_of!(IcMessageHeader, status), 12);
        assert_eq!(offset_of!(IcMessageHeader, transaction_id), 16);
        assert_eq!(offset_of!(IcMessageHeader, flags), 17);
        assert_eq!(offset_of!(IcMessageHeader, reserved), 18);
        assert_eq!(size_of::<IcNegotiate>(), 8);
        assert_eq!(offset_of!(IcNegotiate, message_count), 2);
        assert_eq!(offset_of!(IcNegotiate, reserved), 4);
    }

    #[test]
    fn body_layouts() {
        assert_eq!(size_of::<HeartbeatMessage>(), 40);
        assert_eq!(offset_of!(HeartbeatMessage, reserved), 8);
        assert_eq!(size_of::<ShutdownMessage>(), 2060);
        assert_eq!(offset_of!(ShutdownMessage, timeout_seconds), 4);
        assert_eq!(offset_of!(ShutdownMessage, flags), 8);
        assert_eq!(offset_of!(ShutdownMessage, display_message), 12);
        assert_eq!(size_of::<TimesyncMessage>(), 25);
        assert_eq!(offset_of!(TimesyncMessage, child_time), 8);
        assert_eq!(offset_of!(TimesyncMessage, round_trip_time), 16);
        assert_eq!(offset_of!(TimesyncMessage, flags), 24);
        assert_eq!(size_of::<TimesyncRefMessage>(), 22);
        assert_eq!(offset_of!(TimesyncRefMessage, vm_reference_time), 8);
        assert_eq!(offset_of!(TimesyncRefMessage, flags), 16);
        assert_eq!(offset_of!(TimesyncRefMessage, leap_flags), 17);
        assert_eq!(offset_of!(TimesyncRefMessage, stratum), 18);
        assert_eq!(offset_of!(TimesyncRefMessage, reserved), 19);
        assert_eq!(size_of::<KvpHeader>(), 4);
        assert_eq!(offset_of!(KvpHeader, pool), 1);
        assert_eq!(offset_of!(KvpHeader, padding), 2);
        assert_eq!(size_of::<KvpValue>(), 12 + 512 + 2048);
        assert_eq!(offset_of!(KvpValue, key_size), 4);
        assert_eq!(offset_of!(KvpValue, value_size), 8);
        assert_eq!(offset_of!(KvpValue, key), 12);
        assert_eq!(offset_of!(KvpValue, value), 524);
        assert_eq!(offset_of!(KvpGetSetMessage, value), 4);
        assert_eq!(offset_of!(KvpEnumerateMessage, index), 4);
        assert_eq!(offset_of!(KvpEnumerateMessage, value), 8);
        assert_eq!(offset_of!(KvpDeleteMessage, key_size), 4);
        assert_eq!(offset_of!(KvpDeleteMessage, key), 8);
    }

    fn host_request(framework: &[(u16, u16)], message: &[(u16, u16)]) -> ([u8; 256], usize) {
        let to_versions = |list: &[(u16, u16)]| -> heapless::Vec<IcVersion, 8> {
            list.iter().map(|&(a, b)| IcVersion::new(a, b)).collect()
        };
        let mut body = [0u8; 128];
        let body_len =
            write_negotiate(&mut body, &to_versions(framework), &to_versions(message)).unwrap();
        let header = IcMessageHeader {
            framework_version: IcVersion::new(1, 0),
            message_type: message_type::NEGOTIATE.into(),
            message_version: IcVersion::new(1, 0),
            message_size: (body_len as u16).into(),
            status: 0.into(),
            transaction_id: 9,
            flags: (IcFlags::TRANSACTION | IcFlags::REQUEST).bits(),
            reserved: [0; 2],
        };
        let mut out = [0u8; 256];
        let len = write_ic_message(&mut out, &header, &body[..body_len]).unwrap();
        (out, len)
    }

    #[test]
    fn guest_and_host_agree_on_the_newest_common_versions() {
        let (request, len) = host_request(&[(1, 0), (3, 0)], &[(3, 0), (3, 1), (3, 2)]);
        let mut response = [0u8; 64];
        let (response_len, chosen) = answer_negotiate(
            &request[..len],
            &versions::FRAMEWORK,
            &versions::SHUTDOWN,
            &mut response,
        )
        .unwrap();
        let expected = Negotiated {
            framework: IcVersion::new(3, 0),
            message: IcVersion::new(3, 2),
        };
        assert_eq!(chosen, Some(expected));
        assert_eq!(
            read_negotiate_response(&response[..response_len]),
            Ok(Some(expected))
        );
        let parsed = parse_ic_message(&response[..response_len]).unwrap();
        assert_eq!(
            parsed.header.flags(),
            IcFlags::TRANSACTION | IcFlags::RESPONSE
        );
        assert_eq!(parsed.header.transaction_id, 9);
        assert_eq!(parsed.pipe.data_size.get() as usize, response_len - 8);
    }

    #[test]
    fn no_common_version_answers_fail_with_empty_lists() {
        let (request, len) = host_request(&[(3, 0)], &[(9, 9)]);
        let mut response = [0u8; 64];
        let (response_len, chosen) = answer_negotiate(
            &request[..len],
            &versions::FRAMEWORK,
            &versions::HEARTBEAT,
            &mut response,
        )
        .unwrap();
        assert_eq!(chosen, None);
        assert_eq!(read_negotiate_response(&response[..response_len]), Ok(None));
        let parsed = parse_ic_message(&response[..response_len]).unwrap();
        assert_eq!(parsed.header.status.get(), STATUS_FAIL);
    }

    #[test]
    fn lying_version_counts_are_refused() {
        let mut body = [0u8; 16];
        body[0] = 3; // 3 framework versions, but only 2 fit
        assert_eq!(parse_negotiate(&body), Err(IcError::BadVersionCount));
        body[0] = 200;
        assert_eq!(parse_negotiate(&body), Err(IcError::BadVersionCount));
        assert_eq!(parse_negotiate(&body[..7]), Err(IcError::TooShort));
    }

    #[test]
    fn kvp_sizes_are_bounded() {
        let mut value = KvpValue::new_zeroed_value();
        value.key_size = 513.into();
        assert_eq!(value.key_bytes(), Err(IcError::FieldTooLong));
        value.key_size = 4.into();
        assert_eq!(value.key_bytes().unwrap().len(), 4);
    }

    impl KvpValue {
        fn new_zeroed_value() -> Self {
            zerocopy::FromZeros::new_zeroed()
        }
    }
}
