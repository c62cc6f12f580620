//! The synthetic video host (the VSP of `vmbus_protocol::synthvid`), as
//! Hyper-V's behaves: it accepts the versions it speaks (3.5, 3.2, 3.0;
//! others answered not accepted), answers a resolution request on 3.5
//! with its list, acknowledges the VRAM location and each situation update
//! with the guest's user context, and after the first situation update
//! sends a feature change asking for dirt, pointer position and pointer
//! shape. It then keeps the guest's mode, pointer and damage (dirt and
//! pointer changes) for [`crate::screen`]'s picture, which it copies out
//! of the VRAM the guest named, within guest memory only.
//!
//! Trusts nothing from the guest: malformed, unknown or out-of-order
//! messages are counted and refused (`refusals` keeps the last few
//! reasons), a mode larger than the host supports is refused, dirt is
//! clipped to the screen. Faults ([`VideoFault`]) make it a hostile host
//! for the guest's driver's tests.

use crate::channel::{ChannelEndpoint, ReceivedPacket};
use crate::screen::{self, Picture, PointerImage};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::synthvid::{
    self as wire, message_type as kind, FeatureChange, PointerPosition, ResolutionRequest,
    ResolutionResponseHeader, ScreenSize, SituationUpdate, SituationUpdateAck, VersionRequest,
    VersionResponse, VramLocation, VramLocationAck,
};
use zerocopy::{FromZeros, IntoBytes};

/// The largest mode the host takes (width, height): Hyper-V's Windows 10
/// host allows up to 7680x4320 with enough VRAM; ours keeps copies small.
pub const MAX_WIDTH: u32 = 2560;
pub const MAX_HEIGHT: u32 = 1600;
/// The resolutions the host offers on 3.5 (its default first).
pub const RESOLUTIONS: [(u16, u16); 6] = [
    (1024, 768),
    (640, 480),
    (800, 600),
    (1152, 864),
    (1280, 720),
    (1920, 1080),
];
/// Reasons kept for the operator (oldest dropped).
const REFUSALS_KEPT: usize = 16;

/// A hostile host, on the operator's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoFault {
    /// The next resolution response claims 65 entries (and carries them):
    /// more than its field holds.
    ResolutionListTooLong,
    /// Now: a message whose headers disagree on its size.
    Garbled,
    /// Now: a message longer than any the host may send.
    Oversized,
    /// Now: a message of a type no host sends.
    UnknownType,
    /// Now: a feature change asking for no updates (`false`) or for every
    /// update again (`true`).
    Updates(bool),
    /// The next VRAM location is acknowledged first with a wrong user
    /// context (then with the right one).
    VramWrongContext,
    /// The next VRAM location is not acknowledged at all (the guest must
    /// ask again).
    VramNoAck,
}

impl VideoFault {
    pub const USAGE: &'static str = "resolution-too-long | garbled | oversized | unknown-type | updates-off | updates-on | vram-wrong-context | vram-no-ack";

    pub fn parse(words: &[&str]) -> Option<VideoFault> {
        Some(match words {
            ["resolution-too-long"] => VideoFault::ResolutionListTooLong,
            ["garbled"] => VideoFault::Garbled,
            ["oversized"] => VideoFault::Oversized,
            ["unknown-type"] => VideoFault::UnknownType,
            ["updates-off"] => VideoFault::Updates(false),
            ["updates-on"] => VideoFault::Updates(true),
            ["vram-wrong-context"] => VideoFault::VramWrongContext,
            ["vram-no-ack"] => VideoFault::VramNoAck,
            _ => return None,
        })
    }
}

/// The mode of the last accepted situation update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Situation {
    pub active: bool,
    pub vram_offset: u32,
    pub depth_bits: u8,
    pub width: u32,
    pub height: u32,
    pub pitch: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VideoStats {
    pub messages: u64,
    pub refused: u64,
    pub versions_refused: u64,
    pub resolution_requests: u64,
    pub vram_locations: u64,
    pub situations: u64,
    pub feature_changes_sent: u64,
    pub dirt_messages: u64,
    pub dirt_rects: u64,
    /// Bytes of VRAM the dirt named (after clipping).
    pub dirt_bytes: u64,
    /// Dirt sent while the host had asked for none (allowed, noted).
    pub dirt_unwanted: u64,
    pub pointer_positions: u64,
    pub pointer_shapes: u64,
    pub faults_injected: u64,
}

/// The host side of one synthetic video device.
#[derive(Debug, Default)]
pub struct VideoHost {
    pub stats: VideoStats,
    pub version: Option<u32>,
    pub vram_gpa: Option<u64>,
    pub situation: Option<Situation>,
    pub pointer_visible: bool,
    pub pointer_at: (i32, i32),
    pub pointer: Option<PointerImage>,
    /// What the host last asked for (dirt wanted).
    pub dirt_wanted: bool,
    /// Why messages were refused, newest last.
    pub refusals: VecDeque<String>,
    damage: Option<(u32, u32, u32, u32)>,
    feature_change_sent: bool,
    next_resolution_too_long: bool,
    next_vram_fault: Option<VideoFault>,
}

impl VideoHost {
    /// A new channel (an open after a close, or a restarted guest):
    /// the protocol starts over; the counters stay.
    /// Faults armed for the start stay armed (a test arms them, then
    /// has the device offered again).
    pub fn channel_opened(&mut self) {
        let stats = self.stats;
        let refusals = core::mem::take(&mut self.refusals);
        *self = VideoHost {
            stats,
            refusals,
            next_resolution_too_long: self.next_resolution_too_long,
            next_vram_fault: self.next_vram_fault,
            ..VideoHost::default()
        };
    }

    fn refuse(&mut self, why: String) {
        self.stats.refused += 1;
        if self.refusals.len() == REFUSALS_KEPT {
            self.refusals.pop_front();
        }
        self.refusals.push_back(why);
    }

    fn send<M: GuestMemory>(
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        message_kind: u32,
        parts: &[&[u8]],
    ) -> bool {
        let mut out = [0u8; 1024];
        match wire::encode(message_kind, parts, &mut out) {
            Some(len) => endpoint.send_in_band(memory, 0, false, &out[..len]),
            None => false,
        }
    }

    /// The guest's packets of the last step; whether to signal it.
    pub fn serve<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        packets: Vec<ReceivedPacket>,
    ) -> bool {
        let mut signal = false;
        for packet in packets {
            self.stats.messages += 1;
            if packet.packet_type != vmbus_protocol::packet::PacketType::InBand.wire() {
                self.refuse(alloc::format!(
                    "packet type {:#x}: synthvid is in-band only",
                    packet.packet_type
                ));
                continue;
            }
            let message = match wire::parse(&packet.payload) {
                Ok(message) => message,
                Err(error) => {
                    self.refuse(alloc::format!("{error:?}"));
                    continue;
                }
            };
            signal |= self.handle(endpoint, memory, &message);
        }
        signal
    }

    fn handle<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        message: &wire::Message<'_>,
    ) -> bool {
        macro_rules! read {
            ($ty:ty) => {
                match wire::read::<$ty>(message) {
                    Ok(value) => value,
                    Err(error) => {
                        self.refuse(alloc::format!("{error:?}"));
                        return false;
                    }
                }
            };
        }
        if message.kind != kind::VERSION_REQUEST && self.version.is_none() {
            self.refuse(alloc::format!(
                "message type {} before a version was agreed",
                message.kind
            ));
            return false;
        }
        match message.kind {
            kind::VERSION_REQUEST => {
                let request = read!(VersionRequest);
                let asked = request.version.get();
                let accepted = wire::VERSIONS.contains(&asked);
                if accepted {
                    self.version = Some(asked);
                } else {
                    self.stats.versions_refused += 1;
                }
                let response = VersionResponse {
                    version: asked.into(),
                    is_accepted: accepted as u8,
                    max_video_outputs: 1,
                };
                Self::send(
                    endpoint,
                    memory,
                    kind::VERSION_RESPONSE,
                    &[response.as_bytes()],
                )
            }
            kind::RESOLUTION_REQUEST => {
                let request = read!(ResolutionRequest);
                if self.version != Some(wire::VERSION_WIN10) {
                    self.refuse("a resolution request before 3.5".into());
                    return false;
                }
                self.stats.resolution_requests += 1;
                let mut header = ResolutionResponseHeader::new_zeroed();
                let mut sizes: Vec<u8> = Vec::new();
                let count = if core::mem::take(&mut self.next_resolution_too_long) {
                    self.stats.faults_injected += 1;
                    wire::MAX_RESOLUTIONS + 1
                } else {
                    RESOLUTIONS
                        .len()
                        .min(request.maximum_resolution_count as usize)
                };
                for index in 0..count {
                    let (width, height) = RESOLUTIONS[index % RESOLUTIONS.len()];
                    let size = ScreenSize {
                        width: width.into(),
                        height: height.into(),
                    };
                    sizes.extend_from_slice(size.as_bytes());
                }
                header.resolution_count = count as u8;
                header.default_resolution_index = 0;
                Self::send(
                    endpoint,
                    memory,
                    kind::RESOLUTION_RESPONSE,
                    &[header.as_bytes(), &sizes],
                )
            }
            kind::VRAM_LOCATION => {
                let location = read!(VramLocation);
                self.stats.vram_locations += 1;
                let gpa = location.vram_gpa.get();
                if location.is_vram_gpa_specified != 0 {
                    if gpa % 4096 != 0 || memory.read(gpa, &mut [0u8; 1]).is_err() {
                        self.refuse(alloc::format!("VRAM at {gpa:#x}: outside guest memory"));
                        return false;
                    }
                    self.vram_gpa = Some(gpa);
                } else {
                    self.vram_gpa = None;
                }
                self.damage_all();
                let context = location.user_context.get();
                let mut signal = false;
                match self.next_vram_fault.take() {
                    Some(VideoFault::VramNoAck) => {
                        self.stats.faults_injected += 1;
                        return false;
                    }
                    Some(_) => {
                        self.stats.faults_injected += 1;
                        let wrong = VramLocationAck {
                            user_context: (context ^ 0x5a5a).into(),
                        };
                        signal |= Self::send(
                            endpoint,
                            memory,
                            kind::VRAM_LOCATION_ACK,
                            &[wrong.as_bytes()],
                        );
                    }
                    None => {}
                }
                let ack = VramLocationAck {
                    user_context: context.into(),
                };
                signal | Self::send(endpoint, memory, kind::VRAM_LOCATION_ACK, &[ack.as_bytes()])
            }
            kind::SITUATION_UPDATE => {
                let update = read!(SituationUpdate);
                let output = update.output;
                let situation = Situation {
                    active: output.active != 0,
                    vram_offset: output.vram_offset.get(),
                    depth_bits: output.depth_bits,
                    width: output.width.get(),
                    height: output.height.get(),
                    pitch: output.pitch.get(),
                };
                let bytes_per_pixel = u32::from(situation.depth_bits / 8);
                if update.video_output_count != 1
                    || !matches!(situation.depth_bits, 32)
                    || situation.width == 0
                    || situation.height == 0
                    || situation.width > MAX_WIDTH
                    || situation.height > MAX_HEIGHT
                    || situation.pitch < situation.width * bytes_per_pixel
                {
                    self.refuse(alloc::format!("situation refused: {situation:?}"));
                    return false;
                }
                self.stats.situations += 1;
                self.situation = Some(situation);
                self.damage_all();
                let ack = SituationUpdateAck {
                    user_context: update.user_context,
                };
                let mut signal = Self::send(
                    endpoint,
                    memory,
                    kind::SITUATION_UPDATE_ACK,
                    &[ack.as_bytes()],
                );
                if !self.feature_change_sent {
                    self.feature_change_sent = true;
                    signal |= self.send_features(endpoint, memory, true);
                }
                signal
            }
            kind::POINTER_POSITION => {
                let position = read!(PointerPosition);
                self.stats.pointer_positions += 1;
                self.damage_pointer();
                self.pointer_visible = position.is_visible != 0;
                self.pointer_at = (position.image_x.get(), position.image_y.get());
                self.damage_pointer();
                false
            }
            kind::POINTER_SHAPE => {
                let (header, pixels) = match wire::read_pointer_shape(message) {
                    Ok(shape) => shape,
                    Err(error) => {
                        self.refuse(alloc::format!("{error:?}"));
                        return false;
                    }
                };
                if header.is_argb == 0 || header.part_index != wire::POINTER_COMPLETE {
                    self.refuse("a pointer shape that is not complete ARGB".into());
                    return false;
                }
                self.stats.pointer_shapes += 1;
                self.damage_pointer();
                self.pointer = Some(PointerImage {
                    width: header.width.get(),
                    height: header.height.get(),
                    hot_x: header.hot_x.get().min(header.width.get()),
                    hot_y: header.hot_y.get().min(header.height.get()),
                    argb: pixels
                        .chunks_exact(4)
                        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                        .collect(),
                });
                self.damage_pointer();
                false
            }
            kind::DIRT => {
                let (header, rects) = match wire::read_dirt(message) {
                    Ok(dirt) => dirt,
                    Err(error) => {
                        self.refuse(alloc::format!("{error:?}"));
                        return false;
                    }
                };
                let Some(situation) = self.situation else {
                    self.refuse("dirt before a situation update".into());
                    return false;
                };
                if header.video_output != 0 {
                    self.refuse(alloc::format!("dirt for output {}", header.video_output));
                    return false;
                }
                self.stats.dirt_messages += 1;
                if !self.dirt_wanted {
                    self.stats.dirt_unwanted += 1;
                }
                for rect in rects {
                    self.stats.dirt_rects += 1;
                    let clipped = screen::clip(
                        i64::from(rect.x1.get()),
                        i64::from(rect.y1.get()),
                        i64::from(rect.x2.get()),
                        i64::from(rect.y2.get()),
                        (situation.width, situation.height),
                    );
                    if let Some((_, _, w, h)) = clipped {
                        self.stats.dirt_bytes += u64::from(w) * u64::from(h) * 4;
                    }
                    self.damage = screen::union(self.damage, clipped);
                }
                false
            }
            other => {
                self.refuse(alloc::format!("message type {other} is not the guest's"));
                false
            }
        }
    }

    fn send_features<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        wanted: bool,
    ) -> bool {
        self.dirt_wanted = wanted;
        self.stats.feature_changes_sent += 1;
        let change = FeatureChange {
            is_dirt_needed: wanted as u8,
            is_pointer_position_needed: wanted as u8,
            is_pointer_shape_needed: wanted as u8,
            is_situation_needed: 0,
        };
        Self::send(endpoint, memory, kind::FEATURE_CHANGE, &[change.as_bytes()])
    }

    /// Injects `fault`: now, or armed for the next message it concerns.
    /// Whether to signal the guest.
    pub fn inject<M: GuestMemory>(
        &mut self,
        endpoint: &mut ChannelEndpoint,
        memory: &M,
        fault: VideoFault,
    ) -> bool {
        match fault {
            VideoFault::ResolutionListTooLong => {
                self.next_resolution_too_long = true;
                false
            }
            VideoFault::VramWrongContext | VideoFault::VramNoAck => {
                self.next_vram_fault = Some(fault);
                false
            }
            VideoFault::Updates(wanted) => {
                self.stats.faults_injected += 1;
                self.send_features(endpoint, memory, wanted)
            }
            VideoFault::Garbled => {
                self.stats.faults_injected += 1;
                let mut out = [0u8; 64];
                let Some(len) = wire::encode(kind::FEATURE_CHANGE, &[&[1, 1, 1, 0]], &mut out)
                else {
                    return false;
                };
                // The synthvid header claims more than the pipe carries.
                out[12] = 40;
                endpoint.send_in_band(memory, 0, false, &out[..len])
            }
            VideoFault::Oversized => {
                self.stats.faults_injected += 1;
                let filler = alloc::vec![0xEE; 2 * wire::MAX_HOST_MESSAGE];
                let mut out = alloc::vec![0u8; filler.len() + wire::HEADERS];
                match wire::encode(kind::FEATURE_CHANGE, &[&filler], &mut out) {
                    Some(len) => endpoint.send_in_band(memory, 0, false, &out[..len]),
                    None => false,
                }
            }
            VideoFault::UnknownType => {
                self.stats.faults_injected += 1;
                Self::send(endpoint, memory, 42, &[&[0; 8]])
            }
        }
    }

    fn screen_size(&self) -> Option<(u32, u32)> {
        self.situation.map(|s| (s.width, s.height))
    }

    fn damage_all(&mut self) {
        if let Some((width, height)) = self.screen_size() {
            self.damage = screen::union(self.damage, Some((0, 0, width, height)));
        }
    }

    fn damage_pointer(&mut self) {
        let (Some(size), Some(image), true) = (
            self.screen_size(),
            self.pointer.as_ref(),
            self.pointer_visible,
        ) else {
            return;
        };
        let area = image.area(self.pointer_at.0, self.pointer_at.1, size);
        self.damage = screen::union(self.damage, area);
    }

    /// The changed area since the last take (x, y, w, h).
    pub fn take_damage(&mut self) -> Option<(u32, u32, u32, u32)> {
        self.damage.take()
    }

    /// The screen as the host shows it, copied from guest memory: `None`
    /// before a VRAM location and a situation, or when the mode's VRAM is
    /// not all guest memory.
    pub fn picture<M: GuestMemory>(&self, memory: &M) -> Option<Picture> {
        let situation = self.situation?;
        let (width, height) = (situation.width, situation.height);
        let mut pixels = alloc::vec![0u32; width as usize * height as usize];
        self.picture_rows(memory, (0, 0, width, height), &mut |y, row| {
            let start = y as usize * width as usize;
            pixels[start..start + row.len()].copy_from_slice(row);
        })?;
        Some(Picture {
            width,
            height,
            pixels,
        })
    }

    /// The rectangle (x, y, w, h) of the picture (clipped to the screen),
    /// handed to `row_out` one row at a time with the row's screen y: the
    /// whole picture never has to be in memory at once (the seL4 host's
    /// heap is 1 MiB, a 1024x768 picture 3 MiB). `None` before the guest
    /// named its VRAM and mode, or when VRAM cannot be read.
    pub fn picture_rows<M: GuestMemory>(
        &self,
        memory: &M,
        rect: (u32, u32, u32, u32),
        row_out: &mut dyn FnMut(u32, &[u32]),
    ) -> Option<()> {
        let situation = self.situation?;
        let base = self.vram_gpa?;
        let (x, y, width, height) = crate::screen::clip(
            i64::from(rect.0),
            i64::from(rect.1),
            i64::from(rect.0) + i64::from(rect.2),
            i64::from(rect.1) + i64::from(rect.3),
            (situation.width, situation.height),
        )?;
        let mut bytes = alloc::vec![0u8; width as usize * 4];
        let mut row = alloc::vec![0u32; width as usize];
        for screen_y in y..y + height {
            if situation.active {
                let gpa = base
                    .checked_add(u64::from(situation.vram_offset))?
                    .checked_add(u64::from(screen_y) * u64::from(situation.pitch))?
                    .checked_add(u64::from(x) * 4)?;
                memory.read(gpa, &mut bytes).ok()?;
                for (pixel, value) in bytes.chunks_exact(4).zip(row.iter_mut()) {
                    *value =
                        u32::from_le_bytes([pixel[0], pixel[1], pixel[2], pixel[3]]) & 0x00ff_ffff;
                }
            }
            if let (true, Some(image)) = (self.pointer_visible, &self.pointer) {
                image.draw_row(&mut row, x, screen_y, self.pointer_at.0, self.pointer_at.1);
            }
            row_out(screen_y, &row);
        }
        Some(())
    }

    /// One line for the operator.
    pub fn report(&self) -> String {
        alloc::format!(
            "version {:?} vram {:?} mode {:?} dirt wanted {} pointer {} at {:?} stats {:?} refusals {:?}",
            self.version.map(wire::version_parts),
            self.vram_gpa,
            self.situation,
            self.dirt_wanted,
            if self.pointer_visible { "visible" } else { "hidden" },
            self.pointer_at,
            self.stats,
            self.refusals
        )
    }
}

#[cfg(test)]
mod tests;
