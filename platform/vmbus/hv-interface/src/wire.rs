//! The hosted hypervisor transport's records (see
//! `docs/hypervisor-transport.md`, which is the specification; this module
//! must agree with it).
//!
//! Every record is an 8-byte header `{kind: u32, length: u32}` followed by
//! `length` body bytes; all integers little-endian. Every kind but `HELLO`
//! has one fixed body length. Reserved fields must be zero.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "HVT1" as a little-endian u32 (bytes `48 56 54 31`).
pub const MAGIC: u32 = u32::from_le_bytes(*b"HVT1");
/// The transport version this crate speaks.
pub const VERSION: u32 = 1;
/// The longest memory-file path a HELLO may carry.
pub const MAX_PATH: usize = 4095;
/// The largest body of any record.
pub const MAX_BODY: usize = HELLO_FIXED + MAX_PATH;

/// Record kinds. Guest-to-host kinds have bit 15 clear, host-to-guest set.
pub mod kind {
    pub const HELLO: u32 = 0x0001;
    pub const MSR_READ: u32 = 0x0002;
    pub const MSR_WRITE: u32 = 0x0003;
    pub const HYPERCALL: u32 = 0x0004;

    pub const HELLO_REPLY: u32 = 0x8001;
    pub const MSR_READ_REPLY: u32 = 0x8002;
    pub const MSR_WRITE_REPLY: u32 = 0x8003;
    pub const HYPERCALL_REPLY: u32 = 0x8004;
    pub const INTERRUPT: u32 = 0x8005;
    pub const PROTOCOL_ERROR: u32 = 0x8006;
}

/// The exception field of a reply.
pub mod exception {
    pub const NONE: u32 = 0;
    /// #UD (vector 6).
    pub const INVALID_OPCODE: u32 = 6;
    /// #GP (vector 13).
    pub const GENERAL_PROTECTION: u32 = 13;
}

/// HELLO_REPLY status values.
pub mod hello_status {
    pub const OK: u32 = 0;
    pub const BAD_MAGIC: u32 = 1;
    pub const UNSUPPORTED_VERSION: u32 = 2;
    pub const BAD_MEMORY_SIZE: u32 = 3;
    pub const MEMORY_FILE_UNUSABLE: u32 = 4;
    pub const BAD_VP_COUNT: u32 = 5;
}

/// PROTOCOL_ERROR codes: why the sender is closing the connection.
pub mod protocol_error {
    pub const UNKNOWN_KIND: u32 = 1;
    pub const BAD_LENGTH: u32 = 2;
    pub const RESERVED_NOT_ZERO: u32 = 3;
    pub const NOT_EXPECTED_NOW: u32 = 4;
    pub const BAD_HELLO: u32 = 5;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    pub kind: u32,
    pub length: u32,
}
pub const HEADER_SIZE: usize = 8;

/// HELLO body before the path bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HelloFixed {
    pub magic: u32,
    pub version: u32,
    pub memory_size: u64,
    pub vp_count: u32,
    pub path_length: u32,
}
pub const HELLO_FIXED: usize = 24;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HelloReply {
    pub magic: u32,
    pub version: u32,
    pub status: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MsrRead {
    pub msr: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MsrWrite {
    pub msr: u32,
    pub reserved: u32,
    pub value: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Hypercall {
    pub control: u64,
    pub input: u64,
    pub output: u64,
}

/// MSR_READ_REPLY and HYPERCALL_REPLY body.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ValueReply {
    pub exception: u32,
    pub reserved: u32,
    pub value: u64,
}

/// MSR_WRITE_REPLY body.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StatusReply {
    pub exception: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InterruptRecord {
    pub vector: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProtocolError {
    pub code: u32,
    pub reserved: u32,
}

/// The fixed body length of a kind, or `None` for HELLO (variable) and
/// unknown kinds.
pub const fn fixed_length(kind: u32) -> Option<usize> {
    match kind {
        kind::MSR_READ => Some(8),
        kind::MSR_WRITE => Some(16),
        kind::HYPERCALL => Some(24),
        kind::HELLO_REPLY => Some(16),
        kind::MSR_READ_REPLY => Some(16),
        kind::MSR_WRITE_REPLY => Some(8),
        kind::HYPERCALL_REPLY => Some(16),
        kind::INTERRUPT => Some(8),
        kind::PROTOCOL_ERROR => Some(8),
        _ => None,
    }
}

/// Why a record header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    UnknownKind(u32),
    BadLength { kind: u32, length: u32 },
}

impl HeaderError {
    pub const fn protocol_error_code(self) -> u32 {
        match self {
            HeaderError::UnknownKind(_) => protocol_error::UNKNOWN_KIND,
            HeaderError::BadLength { .. } => protocol_error::BAD_LENGTH,
        }
    }
}

/// Validates a header's kind and length before its body is read, so that a
/// hostile length never decides how much is buffered.
pub fn check_header(header: Header) -> Result<(), HeaderError> {
    if header.kind == kind::HELLO {
        let length = header.length as usize;
        if length <= HELLO_FIXED || length > HELLO_FIXED + MAX_PATH {
            return Err(HeaderError::BadLength {
                kind: header.kind,
                length: header.length,
            });
        }
        return Ok(());
    }
    match fixed_length(header.kind) {
        Some(length) if length == header.length as usize => Ok(()),
        Some(_) => Err(HeaderError::BadLength {
            kind: header.kind,
            length: header.length,
        }),
        None => Err(HeaderError::UnknownKind(header.kind)),
    }
}

/// Encodes a record with a fixed body into `out`, returning the bytes used.
pub fn encode<T: IntoBytes + Immutable>(kind: u32, body: &T, out: &mut [u8]) -> Option<usize> {
    let body = body.as_bytes();
    let total = HEADER_SIZE + body.len();
    if out.len() < total {
        return None;
    }
    let header = Header {
        kind,
        length: body.len() as u32,
    };
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[HEADER_SIZE..total].copy_from_slice(body);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn body_sizes_match_the_table() {
        assert_eq!(size_of::<Header>(), HEADER_SIZE);
        assert_eq!(size_of::<HelloFixed>(), HELLO_FIXED);
        assert_eq!(size_of::<HelloReply>(), 16);
        assert_eq!(size_of::<MsrRead>(), fixed_length(kind::MSR_READ).unwrap());
        assert_eq!(
            size_of::<MsrWrite>(),
            fixed_length(kind::MSR_WRITE).unwrap()
        );
        assert_eq!(
            size_of::<Hypercall>(),
            fixed_length(kind::HYPERCALL).unwrap()
        );
        assert_eq!(size_of::<ValueReply>(), 16);
        assert_eq!(size_of::<StatusReply>(), 8);
        assert_eq!(size_of::<InterruptRecord>(), 8);
        assert_eq!(size_of::<ProtocolError>(), 8);
        assert_eq!(MAGIC.to_le_bytes(), *b"HVT1");
    }

    #[test]
    fn encoding_is_little_endian_header_then_body() {
        let mut out = [0u8; 32];
        let used = encode(
            kind::MSR_WRITE,
            &MsrWrite {
                msr: 0x4000_0083,
                reserved: 0,
                value: 0x1234_5001,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(used, 24);
        assert_eq!(
            &out[..24],
            &[
                3, 0, 0, 0, 16, 0, 0, 0, 0x83, 0, 0, 0x40, 0, 0, 0, 0, 0x01, 0x50, 0x34, 0x12, 0,
                0, 0, 0
            ]
        );
        assert_eq!(
            encode(
                kind::MSR_WRITE,
                &MsrRead {
                    msr: 0,
                    reserved: 0
                },
                &mut [0u8; 4]
            ),
            None
        );
    }

    #[test]
    fn header_checks() {
        let ok = |kind, length| check_header(Header { kind, length });
        assert_eq!(ok(kind::MSR_READ, 8), Ok(()));
        assert_eq!(
            ok(kind::MSR_READ, 16),
            Err(HeaderError::BadLength {
                kind: 2,
                length: 16
            })
        );
        assert_eq!(ok(0x7777, 8), Err(HeaderError::UnknownKind(0x7777)));
        assert_eq!(ok(kind::HELLO, 25), Ok(()));
        assert!(ok(kind::HELLO, 24).is_err());
        assert!(ok(kind::HELLO, (HELLO_FIXED + MAX_PATH + 1) as u32).is_err());
        assert!(ok(kind::HELLO, u32::MAX).is_err());
    }
}
