//! The synthetic HID protocol (the mouse VSC <-> Hyper-V's synthetic HID
//! VSP) on the channel of class [`CLASS`].
//!
//! Behaviour as the public guest drivers describe it (read for behaviour,
//! not copied): every message is one in-band packet: an 8-byte
//! [`PipeHeader`] (type [`PIPE_MESSAGE_DATA`], the size of what follows),
//! then a [`HidHeader`] (message type, the size of the body after it),
//! then the body. The guest asks for version 2.0 ([`ProtocolRequest`],
//! [`VERSION_2_0`]: major in the high 16 bits); the host answers
//! ([`ProtocolResponse`], `approved` non-zero), then sends the device's
//! [`DeviceInfo`]: vendor/product ([`InputDeviceInfo`]), the 9-byte USB
//! HID class descriptor ([`HidDescriptor`]: `bLength`, then the report
//! descriptor's length `wDescriptorLength`) and the report descriptor
//! right after the class descriptor (at `bLength` from its start). The
//! guest acknowledges with [`DeviceInfoAck`]; then input reports
//! ([`message_type::INPUT_REPORT`]) carry one HID report each, laid out as
//! the report descriptor says.
//!
//! A ring packet's payload is padded to 8 bytes: the pipe header's size
//! says where the message ends.

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The synthetic mouse's class GUID (the same as [`crate::guid::class::MOUSE`]).
pub const CLASS: uuid::Uuid = crate::guid::class::MOUSE;

/// Version 2.0: major in the high 16 bits, minor in the low 16.
pub const VERSION_2_0: u32 = 2 << 16;

/// [`PipeHeader::message_type`] of every message.
pub const PIPE_MESSAGE_DATA: u32 = 1;

/// The largest report descriptor the guest takes (Linux's
/// HID_MAX_DESCRIPTOR_SIZE).
pub const MAX_REPORT_DESCRIPTOR: usize = 4096;
/// The largest input report the guest takes.
pub const MAX_INPUT_REPORT: usize = 64;
/// The largest message the guest reads (a device info with the largest
/// report descriptor, padded).
pub const MAX_MESSAGE_SIZE: usize = PipeHeader::SIZE + DeviceInfo::SIZE + MAX_REPORT_DESCRIPTOR + 8;

pub mod message_type {
    pub const PROTOCOL_REQUEST: u32 = 0;
    pub const PROTOCOL_RESPONSE: u32 = 1;
    pub const INITIAL_DEVICE_INFO: u32 = 2;
    pub const INITIAL_DEVICE_INFO_ACK: u32 = 3;
    pub const INPUT_REPORT: u32 = 4;
}

/// The USB HID class descriptor type and the report descriptor type.
pub const HID_DESCRIPTOR_TYPE: u8 = 0x21;
pub const REPORT_DESCRIPTOR_TYPE: u8 = 0x22;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct PipeHeader {
    pub message_type: U32,
    /// Bytes after this header.
    pub size: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct HidHeader {
    pub message_type: U32,
    /// Bytes of the body after this header.
    pub size: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolRequest {
    pub header: HidHeader,
    pub version: U32,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolResponse {
    pub header: HidHeader,
    pub version: U32,
    pub approved: u8,
}

/// The device's identity (`hv_input_dev_info`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct InputDeviceInfo {
    pub size: U32,
    pub vendor: U16,
    pub product: U16,
    pub version: U16,
    pub reserved: [U16; 11],
}

/// The USB HID class descriptor with one report descriptor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct HidDescriptor {
    pub length: u8,
    pub descriptor_type: u8,
    pub hid_version: U16,
    pub country_code: u8,
    pub descriptor_count: u8,
    pub report_descriptor_type: u8,
    pub report_descriptor_length: U16,
}

/// Followed by the report descriptor, at `hid_descriptor.length` bytes
/// from the class descriptor's start.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct DeviceInfo {
    pub header: HidHeader,
    pub info: InputDeviceInfo,
    pub hid_descriptor: HidDescriptor,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct DeviceInfoAck {
    pub header: HidHeader,
    pub reserved: u8,
}

impl PipeHeader {
    pub const SIZE: usize = core::mem::size_of::<PipeHeader>();
}
impl HidHeader {
    pub const SIZE: usize = core::mem::size_of::<HidHeader>();
    pub fn new(message_type: u32, size: usize) -> Self {
        HidHeader {
            message_type: message_type.into(),
            size: (size as u32).into(),
        }
    }
}
impl DeviceInfo {
    pub const SIZE: usize = core::mem::size_of::<DeviceInfo>();
}
impl HidDescriptor {
    pub const SIZE: usize = core::mem::size_of::<HidDescriptor>();
}

impl ProtocolRequest {
    pub fn new(version: u32) -> Self {
        ProtocolRequest {
            header: HidHeader::new(message_type::PROTOCOL_REQUEST, 4),
            version: version.into(),
        }
    }
}

impl ProtocolResponse {
    pub fn new(version: u32, approved: bool) -> Self {
        ProtocolResponse {
            header: HidHeader::new(message_type::PROTOCOL_RESPONSE, 5),
            version: version.into(),
            approved: u8::from(approved),
        }
    }
}

impl DeviceInfoAck {
    pub fn new() -> Self {
        DeviceInfoAck {
            header: HidHeader::new(message_type::INITIAL_DEVICE_INFO_ACK, 1),
            reserved: 0,
        }
    }
}

impl Default for DeviceInfoAck {
    fn default() -> Self {
        Self::new()
    }
}

#[rustfmt::skip]
/// A report descriptor like the one Hyper-V's synthetic mouse sends: 5 buttons, 3 bits
/// of padding, absolute X and Y in 0..=32767 (16 bits each), a relative
/// wheel in -127..=127 (8 bits): a 6-byte report without an ID.
pub const HYPERV_MOUSE_REPORT_DESCRIPTOR: &[u8] = &[
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x02, // Usage (Mouse)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x01, //   Usage (Pointer)
    0xa1, 0x00, //   Collection (Physical)
    0x05, 0x09, //     Usage Page (Button)
    0x19, 0x01, //     Usage Minimum (1)
    0x29, 0x05, //     Usage Maximum (5)
    0x15, 0x00, //     Logical Minimum (0)
    0x25, 0x01, //     Logical Maximum (1)
    0x95, 0x05, //     Report Count (5)
    0x75, 0x01, //     Report Size (1)
    0x81, 0x02, //     Input (Data, Variable, Absolute)
    0x95, 0x01, //     Report Count (1)
    0x75, 0x03, //     Report Size (3)
    0x81, 0x01, //     Input (Constant)
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x30, //     Usage (X)
    0x09, 0x31, //     Usage (Y)
    0x15, 0x00, //     Logical Minimum (0)
    0x26, 0xff, 0x7f, // Logical Maximum (32767)
    0x75, 0x10, //     Report Size (16)
    0x95, 0x02, //     Report Count (2)
    0x81, 0x02, //     Input (Data, Variable, Absolute)
    0x09, 0x38, //     Usage (Wheel)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x01, //     Report Count (1)
    0x81, 0x06, //     Input (Data, Variable, Relative)
    0xc0, //   End Collection
    0xc0, // End Collection
];

/// `message` behind its pipe header, into `out`; the length written, or
/// `None` if `out` is too small.
pub fn frame(message: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = PipeHeader::SIZE + message.len();
    let out = out.get_mut(..total)?;
    let header = PipeHeader {
        message_type: PIPE_MESSAGE_DATA.into(),
        size: (message.len() as u32).into(),
    };
    out[..PipeHeader::SIZE].copy_from_slice(header.as_bytes());
    out[PipeHeader::SIZE..].copy_from_slice(message);
    Some(total)
}

/// A device info message (without its pipe header) with `report` as the
/// report descriptor, as a host builds it, into `out`: the length written,
/// or `None` if `out` is too small.
pub fn device_info(vendor: u16, product: u16, report: &[u8], out: &mut [u8]) -> Option<usize> {
    let info = DeviceInfo {
        header: HidHeader::new(
            message_type::INITIAL_DEVICE_INFO,
            DeviceInfo::SIZE - HidHeader::SIZE + report.len(),
        ),
        info: InputDeviceInfo {
            size: (core::mem::size_of::<InputDeviceInfo>() as u32).into(),
            vendor: vendor.into(),
            product: product.into(),
            version: 0x0100.into(),
            reserved: [0.into(); 11],
        },
        hid_descriptor: HidDescriptor {
            length: HidDescriptor::SIZE as u8,
            descriptor_type: HID_DESCRIPTOR_TYPE,
            hid_version: 0x0101.into(),
            country_code: 0,
            descriptor_count: 1,
            report_descriptor_type: REPORT_DESCRIPTOR_TYPE,
            report_descriptor_length: (report.len() as u16).into(),
        },
    };
    let total = DeviceInfo::SIZE + report.len();
    let out = out.get_mut(..total)?;
    out[..DeviceInfo::SIZE].copy_from_slice(info.as_bytes());
    out[DeviceInfo::SIZE..].copy_from_slice(report);
    Some(total)
}

/// A host message, checked against its headers' sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage<'a> {
    ProtocolResponse(ProtocolResponse),
    DeviceInfo {
        info: InputDeviceInfo,
        hid_descriptor: HidDescriptor,
        report_descriptor: &'a [u8],
    },
    InputReport(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or than what a header says follows.
    Short { len: usize },
    /// More bytes than the pipe header says, beyond the ring's padding,
    /// or a message larger than the guest takes.
    Oversized { len: usize },
    /// A pipe message that is not data.
    PipeType(u32),
    /// The HID header's size disagrees with the pipe header's.
    SizeMismatch { pipe: u32, hid: u32 },
    /// A type the host does not send.
    UnknownType(u32),
    /// The class descriptor's `bLength` is shorter than the descriptor
    /// or reaches past the message.
    BadDescriptorLength(u8),
    /// Not a HID class descriptor naming one report descriptor.
    BadDescriptor,
    /// The report descriptor's length (`wDescriptorLength`) is zero, too
    /// large, or not what arrived after the class descriptor.
    ReportLength { said: u16, arrived: usize },
}

/// Parse one packet's payload from the host (padding included).
pub fn parse_host_message(bytes: &[u8]) -> Result<HostMessage<'_>, ParseError> {
    let len = bytes.len();
    let (pipe, rest) =
        PipeHeader::read_from_prefix(bytes).map_err(|_| ParseError::Short { len })?;
    if pipe.message_type.get() != PIPE_MESSAGE_DATA {
        return Err(ParseError::PipeType(pipe.message_type.get()));
    }
    let size = pipe.size.get() as usize;
    if size > rest.len() {
        return Err(ParseError::Short { len });
    }
    if rest.len() - size >= 8 || size > MAX_MESSAGE_SIZE {
        return Err(ParseError::Oversized { len });
    }
    let message = &rest[..size];
    let (header, body) =
        HidHeader::read_from_prefix(message).map_err(|_| ParseError::Short { len })?;
    if header.size.get() as usize != body.len() {
        return Err(ParseError::SizeMismatch {
            pipe: pipe.size.get(),
            hid: header.size.get(),
        });
    }
    match header.message_type.get() {
        message_type::PROTOCOL_RESPONSE => {
            if body.len() != 5 {
                return Err(ParseError::Short { len });
            }
            let (response, _) = ProtocolResponse::read_from_prefix(message)
                .map_err(|_| ParseError::Short { len })?;
            Ok(HostMessage::ProtocolResponse(response))
        }
        message_type::INITIAL_DEVICE_INFO => {
            let (info, _) =
                DeviceInfo::read_from_prefix(message).map_err(|_| ParseError::Short { len })?;
            let hid = info.hid_descriptor;
            let descriptor_start = DeviceInfo::SIZE - HidDescriptor::SIZE;
            let after_class = message.len() - descriptor_start;
            let class_len = usize::from(hid.length);
            if class_len < HidDescriptor::SIZE || class_len > after_class {
                return Err(ParseError::BadDescriptorLength(hid.length));
            }
            if hid.descriptor_type != HID_DESCRIPTOR_TYPE
                || hid.descriptor_count == 0
                || hid.report_descriptor_type != REPORT_DESCRIPTOR_TYPE
            {
                return Err(ParseError::BadDescriptor);
            }
            let report = &message[descriptor_start + class_len..];
            let said = hid.report_descriptor_length.get();
            if said == 0
                || usize::from(said) > MAX_REPORT_DESCRIPTOR
                || usize::from(said) != report.len()
            {
                return Err(ParseError::ReportLength {
                    said,
                    arrived: report.len(),
                });
            }
            Ok(HostMessage::DeviceInfo {
                info: info.info,
                hid_descriptor: hid,
                report_descriptor: report,
            })
        }
        message_type::INPUT_REPORT => {
            if body.is_empty() || body.len() > MAX_INPUT_REPORT {
                return Err(ParseError::Oversized { len });
            }
            Ok(HostMessage::InputReport(body))
        }
        other => Err(ParseError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;
    use std::vec::Vec;

    fn device_info(vendor: u16, product: u16, report: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; 256];
        let n = super::device_info(vendor, product, report, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; message.len() + 8];
        let n = frame(message, &mut out).unwrap();
        out.truncate(n);
        // As the ring carries it: padded to 8 bytes.
        out.resize(n.next_multiple_of(8), 0);
        out
    }

    #[test]
    fn layouts_match_the_wire() {
        assert_eq!(size_of::<PipeHeader>(), 8);
        assert_eq!(size_of::<HidHeader>(), 8);
        assert_eq!(size_of::<ProtocolRequest>(), 12);
        assert_eq!(size_of::<ProtocolResponse>(), 13);
        assert_eq!(size_of::<InputDeviceInfo>(), 32);
        assert_eq!(size_of::<HidDescriptor>(), 9);
        assert_eq!(size_of::<DeviceInfo>(), 49);
        assert_eq!(size_of::<DeviceInfoAck>(), 9);
        assert_eq!(
            ProtocolRequest::new(VERSION_2_0).as_bytes(),
            &[0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0]
        );
        assert_eq!(
            DeviceInfoAck::new().as_bytes(),
            &[3, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let mut out = [0u8; 32];
        let n = frame(DeviceInfoAck::new().as_bytes(), &mut out).unwrap();
        assert_eq!(&out[..8], &[1, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(n, 17);
        let info = device_info(0x045e, 0x0621, &[0x05, 0x01, 0xc0]);
        assert_eq!(info.len(), 52);
        // The class descriptor: bLength 9, type 0x21, then the report
        // descriptor's type and length.
        assert_eq!(&info[40..49], &[9, 0x21, 1, 1, 0, 1, 0x22, 3, 0]);
    }

    #[test]
    fn host_messages_parse() {
        let response = framed(ProtocolResponse::new(VERSION_2_0, true).as_bytes());
        match parse_host_message(&response) {
            Ok(HostMessage::ProtocolResponse(r)) => {
                assert_eq!(r.approved, 1);
                assert_eq!(r.version.get(), VERSION_2_0);
            }
            other => panic!("{other:?}"),
        }
        let info = framed(&device_info(1, 2, &[0x05, 0x01, 0xc0]));
        match parse_host_message(&info) {
            Ok(HostMessage::DeviceInfo {
                info,
                report_descriptor,
                ..
            }) => {
                assert_eq!(info.vendor.get(), 1);
                assert_eq!(report_descriptor, &[0x05, 0x01, 0xc0]);
            }
            other => panic!("{other:?}"),
        }
        let mut report = HidHeader::new(message_type::INPUT_REPORT, 3)
            .as_bytes()
            .to_vec();
        report.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            parse_host_message(&framed(&report)),
            Ok(HostMessage::InputReport(&[1, 2, 3]))
        );
    }

    #[test]
    fn disagreeing_lengths_are_refused() {
        // bLength past the message, and shorter than the descriptor.
        let mut info = device_info(1, 2, &[0x05, 0x01, 0xc0]);
        info[40] = 200;
        assert_eq!(
            parse_host_message(&framed(&info)),
            Err(ParseError::BadDescriptorLength(200))
        );
        info[40] = 3;
        assert_eq!(
            parse_host_message(&framed(&info)),
            Err(ParseError::BadDescriptorLength(3))
        );
        // wDescriptorLength more than arrived.
        let mut info = device_info(1, 2, &[0x05, 0x01, 0xc0]);
        info[47] = 40;
        assert_eq!(
            parse_host_message(&framed(&info)),
            Err(ParseError::ReportLength {
                said: 40,
                arrived: 3
            })
        );
        // The HID header's size against the pipe's.
        let mut report = HidHeader::new(message_type::INPUT_REPORT, 9)
            .as_bytes()
            .to_vec();
        report.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            parse_host_message(&framed(&report)),
            Err(ParseError::SizeMismatch { .. })
        ));
        // More than padding after the message.
        let mut response = framed(ProtocolResponse::new(VERSION_2_0, true).as_bytes());
        response.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse_host_message(&response),
            Err(ParseError::Oversized { .. })
        ));
        // A pipe size past the packet.
        let mut short = framed(&report);
        short[4] = 200;
        assert!(matches!(
            parse_host_message(&short),
            Err(ParseError::Short { .. })
        ));
        // An oversized input report.
        let mut big = HidHeader::new(message_type::INPUT_REPORT, 65)
            .as_bytes()
            .to_vec();
        big.extend_from_slice(&[0; 65]);
        assert!(matches!(
            parse_host_message(&framed(&big)),
            Err(ParseError::Oversized { .. })
        ));
        let unknown = HidHeader::new(7, 0);
        assert_eq!(
            parse_host_message(&framed(unknown.as_bytes())),
            Err(ParseError::UnknownType(7))
        );
        assert_eq!(
            parse_host_message(&[1, 0, 0]),
            Err(ParseError::Short { len: 3 })
        );
    }
}
