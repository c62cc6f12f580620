//! The synthetic video protocol (synthvid): the Hyper-V framebuffer the
//! VM's console shows, between the guest's video VSC and the host's VSP.
//!
//! Layout as Linux's `hyperv_drm`/`hyperv_fb` drivers and OpenVMM's video
//! device have it (read for behaviour, not copied). Every message on the
//! channel is one in-band packet: an 8-byte [`PipeHeader`] (the channel is
//! a message-mode pipe; type [`PIPE_MSG_DATA`], `size` the bytes after
//! it), an 8-byte [`SynthvidHeader`] (`size` counts itself and the
//! payload), then the payload. All structures are packed, little endian.
//!
//! The guest drives the start: [`VersionRequest`] newest first
//! ([`VERSIONS`]: Windows 10's 3.5, Windows 8's 3.2, Windows 7's 3.0) until
//! the host accepts one; [`ResolutionRequest`] on 3.5 (the host answers its
//! supported resolutions); [`VramLocation`] (the GPA of the guest's VRAM)
//! acknowledged with the same user context; a [`SituationUpdate`] (the
//! mode: resolution, depth, pitch) acknowledged likewise. Then the guest
//! sends [`Dirt`] for changed areas, [`PointerPosition`] and
//! [`PointerShapeHeader`] messages, and the host may send a
//! [`FeatureChange`] at any time saying which updates it wants.
//!
//! [`parse`] takes a packet's payload (the ring pads it to 8 bytes) and
//! checks both headers; the typed readers check each payload's length and
//! counts. Nothing here panics on what the peer sent.

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The synthetic video class GUID (the same as [`crate::guid::class`]).
pub const CLASS: uuid::Uuid = crate::guid::class::SYNTHETIC_VIDEO;

/// The pipe message type of every synthvid message.
pub const PIPE_MSG_DATA: u32 = 1;

/// A version as the wire carries it: minor in the high half.
pub const fn version(major: u16, minor: u16) -> u32 {
    ((minor as u32) << 16) | major as u32
}

/// (major, minor) of a wire version.
pub const fn version_parts(version: u32) -> (u16, u16) {
    ((version & 0xffff) as u16, (version >> 16) as u16)
}

pub const VERSION_WIN7: u32 = version(3, 0);
pub const VERSION_WIN8: u32 = version(3, 2);
pub const VERSION_WIN10: u32 = version(3, 5);
/// The versions a guest offers, newest first.
pub const VERSIONS: [u32; 3] = [VERSION_WIN10, VERSION_WIN8, VERSION_WIN7];

/// Message types (the synthvid header's `kind`).
pub mod message_type {
    pub const ERROR: u32 = 0;
    pub const VERSION_REQUEST: u32 = 1;
    pub const VERSION_RESPONSE: u32 = 2;
    pub const VRAM_LOCATION: u32 = 3;
    pub const VRAM_LOCATION_ACK: u32 = 4;
    pub const SITUATION_UPDATE: u32 = 5;
    pub const SITUATION_UPDATE_ACK: u32 = 6;
    pub const POINTER_POSITION: u32 = 7;
    pub const POINTER_SHAPE: u32 = 8;
    pub const FEATURE_CHANGE: u32 = 9;
    pub const DIRT: u32 = 10;
    pub const RESOLUTION_REQUEST: u32 = 13;
    pub const RESOLUTION_RESPONSE: u32 = 14;
}

/// Both headers: the bytes before every payload.
pub const HEADERS: usize = 16;
/// The EDID block in a resolution response.
pub const EDID_BLOCK_BYTES: usize = 128;
/// Resolutions a resolution response can carry (its field's length).
pub const MAX_RESOLUTIONS: usize = 64;
/// The largest pointer image (pixels each way).
pub const POINTER_MAX_SIDE: u32 = 96;
/// `part_index` of a pointer shape sent in one piece.
pub const POINTER_COMPLETE: u8 = 0xff;
/// Dirt rectangles one message may carry (`dirt_count` is a u8).
pub const MAX_DIRT_RECTS: usize = 255;
/// The largest message a host sends (a resolution response with every
/// entry of its field).
pub const MAX_HOST_MESSAGE: usize =
    HEADERS + core::mem::size_of::<ResolutionResponseHeader>() + MAX_RESOLUTIONS * 4;

macro_rules! wire {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }
    };
}

wire! {
    /// The message-mode pipe's header.
    pub struct PipeHeader {
        pub kind: U32,
        /// Bytes after this header.
        pub size: U32,
    }
}

wire! {
    pub struct SynthvidHeader {
        pub kind: U32,
        /// This header and the payload.
        pub size: U32,
    }
}

wire! {
    pub struct VersionRequest {
        pub version: U32,
    }
}

wire! {
    pub struct VersionResponse {
        pub version: U32,
        pub is_accepted: u8,
        pub max_video_outputs: u8,
    }
}

wire! {
    /// Where the guest's VRAM is; the host acknowledges with the same
    /// `user_context`.
    pub struct VramLocation {
        pub user_context: U64,
        pub is_vram_gpa_specified: u8,
        pub vram_gpa: U64,
    }
}

wire! {
    pub struct VramLocationAck {
        pub user_context: U64,
    }
}

wire! {
    /// One video output's mode.
    pub struct VideoOutputSituation {
        pub active: u8,
        /// Where the output's picture starts in VRAM.
        pub vram_offset: U32,
        pub depth_bits: u8,
        pub width: U32,
        pub height: U32,
        /// Bytes from one row to the next.
        pub pitch: U32,
    }
}

wire! {
    /// The mode (one video output); acknowledged with the same context.
    pub struct SituationUpdate {
        pub user_context: U64,
        pub video_output_count: u8,
        pub output: VideoOutputSituation,
    }
}

wire! {
    pub struct SituationUpdateAck {
        pub user_context: U64,
    }
}

wire! {
    /// The pointer's hot spot on the screen.
    pub struct PointerPosition {
        pub is_visible: u8,
        pub video_output: u8,
        pub image_x: I32,
        pub image_y: I32,
    }
}

wire! {
    /// The pointer image, followed by its pixels (ARGB: width * height
    /// little-endian u32s, alpha in the high byte).
    pub struct PointerShapeHeader {
        pub part_index: u8,
        pub is_argb: u8,
        pub width: U32,
        pub height: U32,
        pub hot_x: U32,
        pub hot_y: U32,
    }
}

wire! {
    /// Which updates the host wants (it may send this at any time; a
    /// longer one, with an EDID after these four bytes, comes from newer
    /// hosts).
    pub struct FeatureChange {
        pub is_dirt_needed: u8,
        pub is_pointer_position_needed: u8,
        pub is_pointer_shape_needed: u8,
        pub is_situation_needed: u8,
    }
}

wire! {
    /// A changed area: x1, y1 inclusive, x2, y2 exclusive.
    pub struct Rect {
        pub x1: I32,
        pub y1: I32,
        pub x2: I32,
        pub y2: I32,
    }
}

wire! {
    /// Followed by `dirt_count` [`Rect`]s.
    pub struct DirtHeader {
        pub video_output: u8,
        pub dirt_count: u8,
    }
}

wire! {
    pub struct ResolutionRequest {
        pub maximum_resolution_count: u8,
    }
}

wire! {
    pub struct ScreenSize {
        pub width: U16,
        pub height: U16,
    }
}

wire! {
    /// Followed by `resolution_count` [`ScreenSize`]s (at most
    /// [`MAX_RESOLUTIONS`]; hosts send only the ones they fill).
    pub struct ResolutionResponseHeader {
        pub edid_block: [u8; EDID_BLOCK_BYTES],
        pub resolution_count: u8,
        pub default_resolution_index: u8,
        pub is_standard: u8,
    }
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than both headers.
    Short { len: usize },
    /// The pipe header's type is not [`PIPE_MSG_DATA`].
    PipeType(u32),
    /// The headers' sizes disagree with each other or with the packet
    /// (beyond the ring's padding to 8 bytes).
    Size {
        pipe: u32,
        synthvid: u32,
        len: usize,
    },
    /// Longer than any message of its kind may be.
    Oversized { kind: u32, len: usize },
    /// The payload is shorter than its type's structure.
    ShortPayload { kind: u32, len: usize },
    /// A count beyond its field or its payload.
    Count { kind: u32, count: usize },
    /// A type this side does not expect.
    UnknownType(u32),
}

/// A checked message: its type and payload (headers and padding off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u32,
    pub payload: &'a [u8],
}

/// Checks both headers of a packet's payload: the pipe type, the sizes
/// (the synthvid size equals the pipe size, and the packet holds it with
/// at most 7 bytes of ring padding after).
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, WireError> {
    let (Ok((pipe, rest)), true) = (PipeHeader::read_from_prefix(bytes), bytes.len() >= HEADERS)
    else {
        return Err(WireError::Short { len: bytes.len() });
    };
    if pipe.kind.get() != PIPE_MSG_DATA {
        return Err(WireError::PipeType(pipe.kind.get()));
    }
    let (header, _) = SynthvidHeader::read_from_prefix(rest)
        .map_err(|_| WireError::Short { len: bytes.len() })?;
    let size = pipe.size.get() as usize;
    let after_pipe = bytes.len() - 8;
    if header.size.get() != pipe.size.get()
        || size < 8
        || size > after_pipe
        || after_pipe - size >= 8
    {
        return Err(WireError::Size {
            pipe: pipe.size.get(),
            synthvid: header.size.get(),
            len: bytes.len(),
        });
    }
    Ok(Message {
        kind: header.kind.get(),
        payload: &bytes[HEADERS..8 + size],
    })
}

/// Writes a message of `kind` with these payload parts into `out`; its
/// length, or `None` if it does not fit.
pub fn encode(kind: u32, parts: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let payload: usize = parts.iter().map(|part| part.len()).sum();
    let total = HEADERS + payload;
    if total > out.len() || total > u32::MAX as usize {
        return None;
    }
    let size = (8 + payload) as u32;
    let pipe = PipeHeader {
        kind: PIPE_MSG_DATA.into(),
        size: size.into(),
    };
    let header = SynthvidHeader {
        kind: kind.into(),
        size: size.into(),
    };
    out[..8].copy_from_slice(pipe.as_bytes());
    out[8..16].copy_from_slice(header.as_bytes());
    let mut at = HEADERS;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Some(total)
}

/// A fixed-size payload of `kind`: longer ones are accepted (newer
/// peers append fields), shorter ones refused.
pub fn read<T: FromBytes>(message: &Message<'_>) -> Result<T, WireError> {
    T::read_from_prefix(message.payload)
        .map(|(value, _)| value)
        .map_err(|_| WireError::ShortPayload {
            kind: message.kind,
            len: message.payload.len(),
        })
}

/// A resolution response: its header and the `resolution_count` sizes,
/// refused when the count exceeds the field ([`MAX_RESOLUTIONS`]), the
/// payload, or the default index is not one of them.
pub fn read_resolutions<'a>(
    message: &Message<'a>,
) -> Result<(ResolutionResponseHeader, &'a [ScreenSize]), WireError> {
    let kind = message.kind;
    let (header, rest) =
        ResolutionResponseHeader::read_from_prefix(message.payload).map_err(|_| {
            WireError::ShortPayload {
                kind,
                len: message.payload.len(),
            }
        })?;
    let count = header.resolution_count as usize;
    if count > MAX_RESOLUTIONS || count * 4 > rest.len() {
        return Err(WireError::Count { kind, count });
    }
    if count > 0 && header.default_resolution_index as usize >= count {
        return Err(WireError::Count {
            kind,
            count: header.default_resolution_index as usize,
        });
    }
    let sizes = <[ScreenSize]>::ref_from_bytes(&rest[..count * 4])
        .map_err(|_| WireError::Count { kind, count })?;
    Ok((header, sizes))
}

/// A dirt message: its output and rectangles, refused when the count
/// exceeds the payload.
pub fn read_dirt<'a>(message: &Message<'a>) -> Result<(DirtHeader, &'a [Rect]), WireError> {
    let kind = message.kind;
    let (header, rest) =
        DirtHeader::read_from_prefix(message.payload).map_err(|_| WireError::ShortPayload {
            kind,
            len: message.payload.len(),
        })?;
    let count = header.dirt_count as usize;
    let bytes = count * core::mem::size_of::<Rect>();
    if bytes > rest.len() {
        return Err(WireError::Count { kind, count });
    }
    let rects =
        <[Rect]>::ref_from_bytes(&rest[..bytes]).map_err(|_| WireError::Count { kind, count })?;
    Ok((header, rects))
}

/// A pointer shape: its header and pixel bytes (ARGB: width * height * 4),
/// refused when the sides exceed [`POINTER_MAX_SIDE`] or the payload.
pub fn read_pointer_shape<'a>(
    message: &Message<'a>,
) -> Result<(PointerShapeHeader, &'a [u8]), WireError> {
    let kind = message.kind;
    let (header, rest) = PointerShapeHeader::read_from_prefix(message.payload).map_err(|_| {
        WireError::ShortPayload {
            kind,
            len: message.payload.len(),
        }
    })?;
    let (width, height) = (header.width.get(), header.height.get());
    if width > POINTER_MAX_SIDE || height > POINTER_MAX_SIDE {
        return Err(WireError::Count {
            kind,
            count: width.max(height) as usize,
        });
    }
    let bytes = (width * height * 4) as usize;
    if bytes > rest.len() {
        return Err(WireError::ShortPayload {
            kind,
            len: message.payload.len(),
        });
    }
    Ok((header, &rest[..bytes]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};
    use zerocopy::FromZeros;

    #[test]
    fn layouts_are_the_packed_wire_layouts() {
        assert_eq!(size_of::<PipeHeader>(), 8);
        assert_eq!(size_of::<SynthvidHeader>(), 8);
        assert_eq!(size_of::<VersionRequest>(), 4);
        assert_eq!(size_of::<VersionResponse>(), 6);
        assert_eq!(offset_of!(VersionResponse, is_accepted), 4);
        assert_eq!(offset_of!(VersionResponse, max_video_outputs), 5);
        assert_eq!(size_of::<VramLocation>(), 17);
        assert_eq!(offset_of!(VramLocation, is_vram_gpa_specified), 8);
        assert_eq!(offset_of!(VramLocation, vram_gpa), 9);
        assert_eq!(size_of::<VramLocationAck>(), 8);
        assert_eq!(size_of::<VideoOutputSituation>(), 18);
        assert_eq!(offset_of!(VideoOutputSituation, vram_offset), 1);
        assert_eq!(offset_of!(VideoOutputSituation, depth_bits), 5);
        assert_eq!(offset_of!(VideoOutputSituation, width), 6);
        assert_eq!(offset_of!(VideoOutputSituation, height), 10);
        assert_eq!(offset_of!(VideoOutputSituation, pitch), 14);
        assert_eq!(size_of::<SituationUpdate>(), 27);
        assert_eq!(offset_of!(SituationUpdate, video_output_count), 8);
        assert_eq!(offset_of!(SituationUpdate, output), 9);
        assert_eq!(size_of::<SituationUpdateAck>(), 8);
        assert_eq!(size_of::<PointerPosition>(), 10);
        assert_eq!(offset_of!(PointerPosition, image_x), 2);
        assert_eq!(offset_of!(PointerPosition, image_y), 6);
        assert_eq!(size_of::<PointerShapeHeader>(), 18);
        assert_eq!(offset_of!(PointerShapeHeader, width), 2);
        assert_eq!(offset_of!(PointerShapeHeader, hot_y), 14);
        assert_eq!(size_of::<FeatureChange>(), 4);
        assert_eq!(size_of::<Rect>(), 16);
        assert_eq!(offset_of!(Rect, x2), 8);
        assert_eq!(size_of::<DirtHeader>(), 2);
        assert_eq!(size_of::<ResolutionRequest>(), 1);
        assert_eq!(size_of::<ScreenSize>(), 4);
        assert_eq!(size_of::<ResolutionResponseHeader>(), 131);
        assert_eq!(offset_of!(ResolutionResponseHeader, resolution_count), 128);
        assert_eq!(offset_of!(ResolutionResponseHeader, is_standard), 130);
        assert_eq!(MAX_HOST_MESSAGE, 16 + 131 + 256);
    }

    #[test]
    fn versions_put_the_minor_in_the_high_half_newest_first() {
        assert_eq!(VERSION_WIN10, 0x0005_0003);
        assert_eq!(VERSION_WIN8, 0x0002_0003);
        assert_eq!(VERSION_WIN7, 0x0000_0003);
        assert_eq!(version_parts(VERSION_WIN10), (3, 5));
        assert!(VERSIONS.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn a_version_request_is_encoded_byte_for_byte() {
        let mut out = [0u8; 64];
        let request = VersionRequest {
            version: VERSION_WIN10.into(),
        };
        let len = encode(
            message_type::VERSION_REQUEST,
            &[request.as_bytes()],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            &out[..len],
            &[1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 12, 0, 0, 0, 3, 0, 5, 0]
        );
        let message = parse(&out[..24]).unwrap(); // with ring padding
        assert_eq!(message.kind, message_type::VERSION_REQUEST);
        assert_eq!(read::<VersionRequest>(&message).unwrap(), request);
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut out = [0u8; 64];
        let len = encode(message_type::FEATURE_CHANGE, &[&[1, 0, 0, 0]], &mut out).unwrap();
        assert!(parse(&out[..len]).is_ok());
        assert_eq!(parse(&out[..10]), Err(WireError::Short { len: 10 }));
        let mut wrong_pipe = out;
        wrong_pipe[0] = 2;
        assert_eq!(parse(&wrong_pipe[..len]), Err(WireError::PipeType(2)));
        let mut disagree = out;
        disagree[12] = 13;
        assert!(matches!(
            parse(&disagree[..len]),
            Err(WireError::Size { .. })
        ));
        // A size past the packet, and one with more than padding after it.
        let mut long = out;
        long[4] = 40;
        long[12] = 40;
        assert!(matches!(parse(&long[..len]), Err(WireError::Size { .. })));
        assert!(matches!(
            parse(&out[..len + 8]),
            Err(WireError::Size { .. })
        ));
        let short = parse(&out[..len]).unwrap();
        let short = Message {
            payload: &short.payload[..2],
            ..short
        };
        assert!(matches!(
            read::<FeatureChange>(&short),
            Err(WireError::ShortPayload { .. })
        ));
    }

    fn resolution_message(count: u8, entries: usize, default: u8) -> ([u8; 1024], usize) {
        let mut header = ResolutionResponseHeader::new_zeroed();
        header.resolution_count = count;
        header.default_resolution_index = default;
        let mut sizes = [0u8; 4 * 80];
        for i in 0..entries {
            let size = ScreenSize {
                width: (640 + i as u16).into(),
                height: 480.into(),
            };
            sizes[i * 4..i * 4 + 4].copy_from_slice(size.as_bytes());
        }
        let mut out = [0u8; 1024];
        let len = encode(
            message_type::RESOLUTION_RESPONSE,
            &[header.as_bytes(), &sizes[..entries * 4]],
            &mut out,
        )
        .unwrap();
        (out, len)
    }

    #[test]
    fn resolution_lists_longer_than_their_field_or_payload_are_refused() {
        let (out, len) = resolution_message(3, 3, 1);
        let message = parse(&out[..len]).unwrap();
        let (header, sizes) = read_resolutions(&message).unwrap();
        assert_eq!(header.default_resolution_index, 1);
        assert_eq!(sizes.len(), 3);
        assert_eq!(sizes[2].width.get(), 642);
        // More entries than the field holds, even if the bytes are there.
        let (out, len) = resolution_message(65, 65, 0);
        let message = parse(&out[..len]).unwrap();
        assert_eq!(
            read_resolutions(&message),
            Err(WireError::Count {
                kind: message_type::RESOLUTION_RESPONSE,
                count: 65
            })
        );
        // A count beyond the bytes sent, and a default that is not listed.
        let (out, len) = resolution_message(4, 3, 0);
        assert!(read_resolutions(&parse(&out[..len]).unwrap()).is_err());
        let (out, len) = resolution_message(3, 3, 3);
        assert!(read_resolutions(&parse(&out[..len]).unwrap()).is_err());
    }

    #[test]
    fn dirt_and_pointer_shapes_check_their_counts() {
        let rect = Rect {
            x1: 1.into(),
            y1: 2.into(),
            x2: 3.into(),
            y2: 4.into(),
        };
        let mut out = [0u8; 256];
        let len = encode(
            message_type::DIRT,
            &[&[0, 2], rect.as_bytes(), rect.as_bytes()],
            &mut out,
        )
        .unwrap();
        let message = parse(&out[..len]).unwrap();
        let (_, rects) = read_dirt(&message).unwrap();
        assert_eq!(rects, &[rect, rect]);
        let len = encode(message_type::DIRT, &[&[0, 3], rect.as_bytes()], &mut out).unwrap();
        assert!(read_dirt(&parse(&out[..len]).unwrap()).is_err());

        let shape = PointerShapeHeader {
            part_index: POINTER_COMPLETE,
            is_argb: 1,
            width: 2.into(),
            height: 2.into(),
            hot_x: 0.into(),
            hot_y: 0.into(),
        };
        let len = encode(
            message_type::POINTER_SHAPE,
            &[shape.as_bytes(), &[0xff; 16]],
            &mut out,
        )
        .unwrap();
        let (_, pixels) = read_pointer_shape(&parse(&out[..len]).unwrap()).unwrap();
        assert_eq!(pixels.len(), 16);
        let huge = PointerShapeHeader {
            width: 97.into(),
            ..shape
        };
        let len = encode(message_type::POINTER_SHAPE, &[huge.as_bytes()], &mut out).unwrap();
        assert!(read_pointer_shape(&parse(&out[..len]).unwrap()).is_err());
    }
}
