//! The synthetic keyboard protocol (the keyboard VSC <-> Hyper-V's
//! keyboard VSP) on the channel of class [`CLASS`].
//!
//! Behaviour as the public guest drivers describe it (read for behaviour,
//! not copied): every message is one in-band packet that starts with a
//! 4-byte [`MessageHeader`] (the message type; there is no pipe header on
//! this channel). The guest sends a [`ProtocolRequest`] for version 1.0
//! ([`VERSION_1_0`]: major in the high 16 bits), the host answers with a
//! [`ProtocolResponse`] whose [`PROTOCOL_ACCEPTED`] bit says yes; after
//! that the host sends a [`Keystroke`] per key transition: a set-1 make
//! code (the break bit never set; [`info::BREAK`] says key up), the E0/E1
//! prefixes as flags, or a UTF-16 unit with [`info::UNICODE`]. The guest
//! may tell the host its LED state ([`LedIndicators`]); the host never
//! needs it.

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The keyboard's class GUID (the same as [`crate::guid::class::KEYBOARD`]).
pub const CLASS: uuid::Uuid = crate::guid::class::KEYBOARD;

/// Version 1.0: major in the high 16 bits, minor in the low 16.
pub const VERSION_1_0: u32 = 1 << 16;

/// The largest message either side sends (the guest drivers refuse
/// packets beyond it).
pub const MAX_MESSAGE_SIZE: usize = 256;

pub mod message_type {
    pub const PROTOCOL_REQUEST: u32 = 1;
    pub const PROTOCOL_RESPONSE: u32 = 2;
    pub const EVENT: u32 = 3;
    pub const LED_INDICATORS: u32 = 4;
}

/// [`ProtocolResponse::status`]: the host speaks the version asked for.
pub const PROTOCOL_ACCEPTED: u32 = 1 << 0;

/// [`Keystroke::info`] flags.
pub mod info {
    /// `make_code` is a UTF-16 unit, not a scan code.
    pub const UNICODE: u32 = 1 << 0;
    /// Key up.
    pub const BREAK: u32 = 1 << 1;
    /// The scan code has the 0xE0 prefix.
    pub const E0: u32 = 1 << 2;
    /// The scan code has the 0xE1 prefix (Pause).
    pub const E1: u32 = 1 << 3;
    /// Every flag the protocol defines.
    pub const KNOWN: u32 = UNICODE | BREAK | E0 | E1;
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct MessageHeader {
    pub message_type: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolRequest {
    pub header: MessageHeader,
    pub version: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolResponse {
    pub header: MessageHeader,
    pub status: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Keystroke {
    pub header: MessageHeader,
    pub make_code: U16,
    pub reserved: U16,
    pub info: U32,
}

/// LED state (guest to host): bit 0 scroll lock, 1 num lock, 2 caps lock.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct LedIndicators {
    pub header: MessageHeader,
    pub leds: U16,
    pub reserved: U16,
}

impl ProtocolRequest {
    pub fn new(version: u32) -> Self {
        ProtocolRequest {
            header: MessageHeader {
                message_type: message_type::PROTOCOL_REQUEST.into(),
            },
            version: version.into(),
        }
    }
}

impl ProtocolResponse {
    pub fn new(accepted: bool) -> Self {
        ProtocolResponse {
            header: MessageHeader {
                message_type: message_type::PROTOCOL_RESPONSE.into(),
            },
            status: if accepted { PROTOCOL_ACCEPTED } else { 0 }.into(),
        }
    }

    pub fn accepted(&self) -> bool {
        self.status.get() & PROTOCOL_ACCEPTED != 0
    }
}

impl Keystroke {
    pub fn new(make_code: u16, info: u32) -> Self {
        Keystroke {
            header: MessageHeader {
                message_type: message_type::EVENT.into(),
            },
            make_code: make_code.into(),
            reserved: 0.into(),
            info: info.into(),
        }
    }
}

/// A host message, checked: its type known and its length that of the
/// type. A ring packet's payload is padded to 8 bytes (the wire has no
/// exact length), so up to 7 bytes past the message are padding; more is
/// an oversized message and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage {
    ProtocolResponse(ProtocolResponse),
    Keystroke(Keystroke),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its header or its type's message.
    Short { len: usize },
    /// Longer than its type's message.
    Oversized { len: usize },
    /// A type the host does not send.
    UnknownType(u32),
    /// A keystroke with flags the protocol does not define.
    UnknownFlags(u32),
}

fn exact<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, ParseError> {
    let size = core::mem::size_of::<T>();
    if bytes.len() > size.next_multiple_of(8) {
        return Err(ParseError::Oversized { len: bytes.len() });
    }
    T::read_from_prefix(bytes)
        .map(|(message, _)| message)
        .map_err(|_| ParseError::Short { len: bytes.len() })
}

/// Parse one packet's payload from the host.
pub fn parse_host_message(bytes: &[u8]) -> Result<HostMessage, ParseError> {
    let (header, _) = MessageHeader::read_from_prefix(bytes)
        .map_err(|_| ParseError::Short { len: bytes.len() })?;
    match header.message_type.get() {
        message_type::PROTOCOL_RESPONSE => Ok(HostMessage::ProtocolResponse(exact(bytes)?)),
        message_type::EVENT => {
            let stroke: Keystroke = exact(bytes)?;
            let flags = stroke.info.get();
            if flags & !info::KNOWN != 0 {
                return Err(ParseError::UnknownFlags(flags));
            }
            Ok(HostMessage::Keystroke(stroke))
        }
        other => Err(ParseError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_match_the_wire() {
        assert_eq!(size_of::<MessageHeader>(), 4);
        assert_eq!(size_of::<ProtocolRequest>(), 8);
        assert_eq!(size_of::<ProtocolResponse>(), 8);
        assert_eq!(size_of::<Keystroke>(), 12);
        assert_eq!(size_of::<LedIndicators>(), 8);
        assert_eq!(
            ProtocolRequest::new(VERSION_1_0).as_bytes(),
            &[1, 0, 0, 0, 0, 0, 1, 0]
        );
        assert_eq!(
            Keystroke::new(0x1e, info::BREAK | info::E0).as_bytes(),
            &[3, 0, 0, 0, 0x1e, 0, 0, 0, 6, 0, 0, 0]
        );
        assert_eq!(
            ProtocolResponse::new(true).as_bytes(),
            &[2, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn host_messages_are_checked() {
        let stroke = Keystroke::new(0x2a, info::E1);
        assert_eq!(
            parse_host_message(stroke.as_bytes()),
            Ok(HostMessage::Keystroke(stroke))
        );
        let response = ProtocolResponse::new(false);
        match parse_host_message(response.as_bytes()) {
            Ok(HostMessage::ProtocolResponse(r)) => assert!(!r.accepted()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_host_message(Keystroke::new(1, 0x10).as_bytes()),
            Err(ParseError::UnknownFlags(0x10))
        );
        assert_eq!(
            parse_host_message(&stroke.as_bytes()[..10]),
            Err(ParseError::Short { len: 10 })
        );
        // Padded to 8 bytes as the ring carries it: accepted.
        let mut padded = [0u8; 16];
        padded[..12].copy_from_slice(stroke.as_bytes());
        assert_eq!(
            parse_host_message(&padded),
            Ok(HostMessage::Keystroke(stroke))
        );
        let mut long = [0u8; 17];
        long[..12].copy_from_slice(stroke.as_bytes());
        assert_eq!(
            parse_host_message(&long),
            Err(ParseError::Oversized { len: 17 })
        );
        assert_eq!(
            parse_host_message(&[1, 0]),
            Err(ParseError::Short { len: 2 })
        );
        assert_eq!(
            parse_host_message(ProtocolRequest::new(0).as_bytes()),
            Err(ParseError::UnknownType(1))
        );
    }
}
