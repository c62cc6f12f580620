//! The synthvid protocol as a plain state machine, tested without IPC:
//! what the driver sends on an open channel, what it accepts from the
//! host, and the framebuffer service's answers.
//!
//! The start: a version request newest first ([`wire::VERSIONS`]) until
//! the host accepts one; on 3.5 the resolution request (the host's list,
//! checked against its field and payload); the VRAM location (our VRAM's
//! guest physical address) with a fresh user context, waited for until
//! the host acknowledges that very context; the situation update (the
//! mode: 1024x768x32, or the largest the host lists that fits the VRAM;
//! stride width * 4), acknowledged likewise; then the pointer shape (our
//! arrow) and position, and the clients are told the new mode. A request
//! the host leaves unanswered for [`ANSWER_TIMEOUT_NS`] is sent again
//! with a new context, [`MAX_ATTEMPTS`] times in all.
//!
//! Trusts nothing from the host: every message is parsed and checked
//! (headers, sizes, counts, the phase it may come in, the context it
//! echoes); a refused one is counted ([`Stats::refused`]) and logged (the
//! first [`REFUSALS_LOGGED`], then one in [`REFUSAL_LOG_EVERY`]) and
//! changes nothing.

use vmbus_ipc::framebuffer::{self, Mode, Rect, Reply, Resolution, MAX_RECTS, MAX_RESOLUTIONS};
use vmbus_protocol::synthvid::{
    self as wire, message_type as kind, DirtHeader, FeatureChange, PointerPosition,
    PointerShapeHeader, ResolutionRequest, SituationUpdate, SituationUpdateAck, VersionRequest,
    VersionResponse, VideoOutputSituation, VramLocation, VramLocationAck,
};
use zerocopy::IntoBytes;

/// The mode the driver asks for when the host allows it.
pub const PREFERRED: (u16, u16) = (1024, 768);
pub const DEPTH_BITS: u8 = 32;
const BYTES_PER_PIXEL: u32 = 4;
/// How long the host may leave a request of the start unanswered.
pub const ANSWER_TIMEOUT_NS: u64 = 1_000_000_000;
/// Times a request of the start is sent before the driver gives up.
pub const MAX_ATTEMPTS: u32 = 5;
pub const REFUSALS_LOGGED: u64 = 16;
pub const REFUSAL_LOG_EVERY: u64 = 256;
/// The pointer arrow's size.
pub const ARROW_WIDTH: usize = 12;
pub const ARROW_HEIGHT: usize = 19;
/// The largest message the driver sends (the pointer shape).
pub const MAX_SENT: usize =
    wire::HEADERS + core::mem::size_of::<PointerShapeHeader>() + ARROW_WIDTH * ARROW_HEIGHT * 4;

/// The channel the session sends on, and the console.
pub trait Link {
    /// Send one message; `false` if it could not be (ring full or gone).
    fn send(&mut self, message: &[u8]) -> bool;
    fn log(&mut self, line: core::fmt::Arguments<'_>);
}

/// Where the start stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No channel.
    Closed,
    /// Asked for `VERSIONS[index]`.
    Version {
        index: usize,
    },
    Resolutions,
    Vram {
        context: u64,
    },
    Situation {
        context: u64,
    },
    Ready,
    /// The host accepted no version, or never answered: nothing more is
    /// sent until the channel opens again.
    Failed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub refused: u64,
    pub wrong_context: u64,
    pub resends: u64,
    pub send_failures: u64,
    pub dirt_sent: u64,
    pub dirt_rects: u64,
    pub dirt_bytes: u64,
    /// Flushes while the host wanted no dirt (accepted, not sent).
    pub dirt_withheld: u64,
    pub feature_changes: u64,
}

pub struct Session {
    pub phase: Phase,
    pub stats: Stats,
    /// Where our VRAM is (GPA, bytes).
    vram: Option<(u64, usize)>,
    version: Option<u32>,
    resolutions: heapless::Vec<Resolution, MAX_RESOLUTIONS>,
    width: u16,
    height: u16,
    /// The host's last feature change (all wanted until it says).
    dirt_wanted: bool,
    pointer_position_wanted: bool,
    pointer_shape_wanted: bool,
    pointer: (u16, u16, bool),
    generation: u32,
    next_context: u64,
    /// The context of the last situation update the host acknowledged.
    situation_context: u64,
    asked_at_ns: u64,
    attempts: u32,
}

impl Session {
    /// `generation` continues from a number the component keeps (a
    /// restarted driver starts above its clients' last one).
    pub fn new(vram: Option<(u64, usize)>, generation: u32, context_seed: u64) -> Session {
        Session {
            phase: Phase::Closed,
            stats: Stats::default(),
            vram,
            version: None,
            resolutions: heapless::Vec::new(),
            width: 0,
            height: 0,
            dirt_wanted: true,
            pointer_position_wanted: true,
            pointer_shape_wanted: true,
            pointer: (PREFERRED.0 / 2, PREFERRED.1 / 2, true),
            generation,
            next_context: context_seed | 1,
            situation_context: 0,
            asked_at_ns: 0,
            attempts: 0,
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The channel opened: start over from the version request.
    pub fn open(&mut self, link: &mut dyn Link, now_ns: u64) {
        *self = Session {
            stats: self.stats,
            pointer: self.pointer,
            generation: self.generation,
            next_context: self.next_context,
            ..Session::new(self.vram, self.generation, self.next_context)
        };
        if self.vram.is_none() {
            link.log(format_args!("no VRAM region to show: not starting"));
            self.phase = Phase::Failed;
            return;
        }
        self.attempts = 0;
        self.ask_version(link, 0, now_ns);
    }

    /// The channel is gone. Whether the clients must be told (they were
    /// served a mode).
    pub fn close(&mut self) -> bool {
        let was_ready = self.is_ready();
        self.phase = Phase::Closed;
        if was_ready {
            self.generation = self.generation.wrapping_add(1);
        }
        was_ready
    }

    fn context(&mut self) -> u64 {
        let context = self.next_context;
        self.next_context = self.next_context.wrapping_add(2);
        context
    }

    fn send(&mut self, link: &mut dyn Link, message_kind: u32, parts: &[&[u8]]) -> bool {
        let mut out = [0u8; MAX_SENT];
        let sent =
            wire::encode(message_kind, parts, &mut out).is_some_and(|len| link.send(&out[..len]));
        if !sent {
            self.stats.send_failures += 1;
        }
        sent
    }

    fn asked(&mut self, now_ns: u64) {
        self.asked_at_ns = now_ns;
        self.attempts += 1;
    }

    fn ask_version(&mut self, link: &mut dyn Link, index: usize, now_ns: u64) {
        self.phase = Phase::Version { index };
        self.asked(now_ns);
        let request = VersionRequest {
            version: wire::VERSIONS[index].into(),
        };
        self.send(link, kind::VERSION_REQUEST, &[request.as_bytes()]);
    }

    fn ask_resolutions(&mut self, link: &mut dyn Link, now_ns: u64) {
        self.phase = Phase::Resolutions;
        self.asked(now_ns);
        let request = ResolutionRequest {
            maximum_resolution_count: wire::MAX_RESOLUTIONS as u8,
        };
        self.send(link, kind::RESOLUTION_REQUEST, &[request.as_bytes()]);
    }

    fn send_vram(&mut self, link: &mut dyn Link, now_ns: u64) {
        let Some((gpa, _)) = self.vram else {
            return;
        };
        let context = self.context();
        self.phase = Phase::Vram { context };
        self.asked(now_ns);
        let location = VramLocation {
            user_context: context.into(),
            is_vram_gpa_specified: 1,
            vram_gpa: gpa.into(),
        };
        self.send(link, kind::VRAM_LOCATION, &[location.as_bytes()]);
    }

    fn send_situation(&mut self, link: &mut dyn Link, now_ns: u64) {
        let context = self.context();
        self.phase = Phase::Situation { context };
        self.asked(now_ns);
        let update = SituationUpdate {
            user_context: context.into(),
            video_output_count: 1,
            output: VideoOutputSituation {
                active: 1,
                vram_offset: 0.into(),
                depth_bits: DEPTH_BITS,
                width: u32::from(self.width).into(),
                height: u32::from(self.height).into(),
                pitch: self.stride().into(),
            },
        };
        self.send(link, kind::SITUATION_UPDATE, &[update.as_bytes()]);
    }

    fn send_pointer_shape(&mut self, link: &mut dyn Link) {
        let header = PointerShapeHeader {
            part_index: wire::POINTER_COMPLETE,
            is_argb: 1,
            width: (ARROW_WIDTH as u32).into(),
            height: (ARROW_HEIGHT as u32).into(),
            hot_x: 0.into(),
            hot_y: 0.into(),
        };
        let mut pixels = [0u8; ARROW_WIDTH * ARROW_HEIGHT * 4];
        for (index, pixel) in pixels.chunks_exact_mut(4).enumerate() {
            let argb = arrow_pixel(index % ARROW_WIDTH, index / ARROW_WIDTH);
            pixel.copy_from_slice(&argb.to_le_bytes());
        }
        self.send(link, kind::POINTER_SHAPE, &[header.as_bytes(), &pixels]);
    }

    fn send_pointer_position(&mut self, link: &mut dyn Link) {
        let (x, y, visible) = self.pointer;
        let position = PointerPosition {
            is_visible: visible as u8,
            video_output: 0,
            image_x: i32::from(x).into(),
            image_y: i32::from(y).into(),
        };
        self.send(link, kind::POINTER_POSITION, &[position.as_bytes()]);
    }

    fn stride(&self) -> u32 {
        u32::from(self.width) * BYTES_PER_PIXEL
    }

    fn fits_vram(&self, width: u16, height: u16) -> bool {
        let bytes = u64::from(width) * u64::from(height) * u64::from(BYTES_PER_PIXEL);
        width > 0 && height > 0 && self.vram.is_some_and(|(_, len)| bytes <= len as u64)
    }

    /// The mode to ask for: the preferred one if the host lists it (or
    /// lists nothing) and it fits the VRAM, else the largest listed that
    /// fits; `None` if nothing does.
    fn choose_mode(&self) -> Option<(u16, u16)> {
        let listed = |w: u16, h: u16| {
            self.resolutions.is_empty()
                || self
                    .resolutions
                    .iter()
                    .any(|r| r.width == w && r.height == h)
        };
        if listed(PREFERRED.0, PREFERRED.1) && self.fits_vram(PREFERRED.0, PREFERRED.1) {
            return Some(PREFERRED);
        }
        self.resolutions
            .iter()
            .filter(|r| self.fits_vram(r.width, r.height))
            .max_by_key(|r| u32::from(r.width) * u32::from(r.height))
            .map(|r| (r.width, r.height))
    }

    /// An ack must carry the context of the request we are waiting on: a
    /// stale or forged one is refused and counted.
    fn ack_is_ours(&mut self, link: &mut dyn Link, what: &str, got: u64, ours: u64) -> bool {
        if got == ours {
            return true;
        }
        self.stats.wrong_context += 1;
        self.refuse(
            link,
            format_args!("a {what} ack for context {got:#x}, not ours ({ours:#x})"),
        );
        false
    }

    fn refuse(&mut self, link: &mut dyn Link, why: core::fmt::Arguments<'_>) {
        self.stats.refused += 1;
        let count = self.stats.refused;
        if count <= REFUSALS_LOGGED || count.is_multiple_of(REFUSAL_LOG_EVERY) {
            link.log(format_args!(
                "refused a host message ({count} so far): {why}"
            ));
        }
    }

    /// A host packet's payload. Whether the clients must be told of a new
    /// mode ([`Session::generation`] changed).
    pub fn on_host_message(&mut self, link: &mut dyn Link, bytes: &[u8], now_ns: u64) -> bool {
        self.stats.received += 1;
        let message = match wire::parse(bytes) {
            Ok(message) => message,
            Err(error) => {
                self.refuse(link, format_args!("{error:?}"));
                return false;
            }
        };
        let oversized = message.payload.len() + wire::HEADERS > wire::MAX_HOST_MESSAGE;
        if oversized
            && !(message.kind == kind::RESOLUTION_RESPONSE && self.phase == Phase::Resolutions)
        {
            self.refuse(
                link,
                format_args!(
                    "{:?}",
                    wire::WireError::Oversized {
                        kind: message.kind,
                        len: bytes.len()
                    }
                ),
            );
            return false;
        }
        match (message.kind, self.phase) {
            (kind::VERSION_RESPONSE, Phase::Version { index }) => {
                self.on_version(link, &message, index, now_ns);
                false
            }
            (kind::RESOLUTION_RESPONSE, Phase::Resolutions) => {
                self.on_resolutions(link, &message, now_ns);
                false
            }
            (kind::VRAM_LOCATION_ACK, Phase::Vram { context }) => {
                let Ok(ack) = wire::read::<VramLocationAck>(&message) else {
                    self.refuse(link, format_args!("a short VRAM location ack"));
                    return false;
                };
                if !self.ack_is_ours(link, "VRAM location", ack.user_context.get(), context) {
                    return false;
                }
                self.attempts = 0;
                self.send_situation(link, now_ns);
                false
            }
            (kind::SITUATION_UPDATE_ACK, Phase::Situation { context }) => {
                let Ok(ack) = wire::read::<SituationUpdateAck>(&message) else {
                    self.refuse(link, format_args!("a short situation ack"));
                    return false;
                };
                if !self.ack_is_ours(link, "situation", ack.user_context.get(), context) {
                    return false;
                }
                self.situation_context = context;
                self.phase = Phase::Ready;
                self.attempts = 0;
                let (major, minor) = wire::version_parts(self.version.unwrap_or(0));
                link.log(format_args!(
                    "synthvid {major}.{minor}: {}x{}x{DEPTH_BITS}, stride {}, {} host resolutions",
                    self.width,
                    self.height,
                    self.stride(),
                    self.resolutions.len()
                ));
                if self.pointer_shape_wanted {
                    self.send_pointer_shape(link);
                }
                if self.pointer_position_wanted {
                    self.send_pointer_position(link);
                }
                self.generation = self.generation.wrapping_add(1);
                true
            }
            // A repeated ack of the situation in force changes nothing.
            (kind::SITUATION_UPDATE_ACK, Phase::Ready)
                if wire::read::<SituationUpdateAck>(&message)
                    .is_ok_and(|ack| ack.user_context.get() == self.situation_context) =>
            {
                false
            }
            (kind::FEATURE_CHANGE, phase) if !matches!(phase, Phase::Closed | Phase::Failed) => {
                self.on_feature_change(link, &message)
            }
            (kind::ERROR, _) => {
                self.refuse(link, format_args!("the host reports an error"));
                false
            }
            (other, phase) => {
                self.refuse(
                    link,
                    format_args!("message type {other} unexpected while {phase:?}"),
                );
                false
            }
        }
    }

    fn on_version(
        &mut self,
        link: &mut dyn Link,
        message: &wire::Message<'_>,
        index: usize,
        now_ns: u64,
    ) {
        let Ok(response) = wire::read::<VersionResponse>(message) else {
            self.refuse(link, format_args!("a short version response"));
            return;
        };
        let asked = wire::VERSIONS[index];
        if response.version.get() != asked {
            self.refuse(
                link,
                format_args!(
                    "a version response for {:#x}, not the {asked:#x} asked",
                    response.version.get()
                ),
            );
            return;
        }
        self.attempts = 0;
        if response.is_accepted == 0 {
            if index + 1 < wire::VERSIONS.len() {
                self.ask_version(link, index + 1, now_ns);
            } else {
                link.log(format_args!(
                    "the host accepts no synthvid version we speak"
                ));
                self.phase = Phase::Failed;
            }
            return;
        }
        self.version = Some(asked);
        if asked == wire::VERSION_WIN10 {
            self.ask_resolutions(link, now_ns);
        } else {
            self.pick_mode_and_send_vram(link, now_ns);
        }
    }

    fn on_resolutions(&mut self, link: &mut dyn Link, message: &wire::Message<'_>, now_ns: u64) {
        // Longer than the field allows (the checks below look at the
        // count, this at the bytes): refused like a bad count.
        let checked = if message.payload.len() + wire::HEADERS > wire::MAX_HOST_MESSAGE {
            Err(wire::WireError::Oversized {
                kind: message.kind,
                len: message.payload.len() + wire::HEADERS,
            })
        } else {
            wire::read_resolutions(message)
        };
        match checked {
            Ok((_, sizes)) => {
                self.resolutions.clear();
                for size in sizes {
                    let resolution = Resolution {
                        width: size.width.get(),
                        height: size.height.get(),
                    };
                    if resolution.width > 0 && resolution.height > 0 {
                        // Beyond MAX_RESOLUTIONS entries are not kept.
                        let _ = self.resolutions.push(resolution);
                    }
                }
            }
            // Refused, but the start goes on without the list.
            Err(error) => self.refuse(link, format_args!("resolution response: {error:?}")),
        }
        self.attempts = 0;
        self.pick_mode_and_send_vram(link, now_ns);
    }

    fn pick_mode_and_send_vram(&mut self, link: &mut dyn Link, now_ns: u64) {
        let Some((width, height)) = self.choose_mode() else {
            link.log(format_args!(
                "no resolution the host lists fits the VRAM ({:?} bytes)",
                self.vram.map(|(_, len)| len)
            ));
            self.phase = Phase::Failed;
            return;
        };
        self.width = width;
        self.height = height;
        self.send_vram(link, now_ns);
    }

    fn on_feature_change(&mut self, link: &mut dyn Link, message: &wire::Message<'_>) -> bool {
        let Ok(change) = wire::read::<FeatureChange>(message) else {
            self.refuse(link, format_args!("a short feature change"));
            return false;
        };
        self.stats.feature_changes += 1;
        let dirt_before = self.dirt_wanted;
        self.dirt_wanted = change.is_dirt_needed != 0;
        let shape_before = self.pointer_shape_wanted;
        self.pointer_position_wanted = change.is_pointer_position_needed != 0;
        self.pointer_shape_wanted = change.is_pointer_shape_needed != 0;
        if dirt_before != self.dirt_wanted {
            link.log(format_args!(
                "the host wants {}",
                if self.dirt_wanted {
                    "updates again"
                } else {
                    "no updates"
                }
            ));
        }
        if self.phase != Phase::Ready {
            return false;
        }
        // Whatever the host now wants again, it gets at least once.
        if self.pointer_shape_wanted && !shape_before {
            self.send_pointer_shape(link);
        }
        if self.pointer_position_wanted {
            self.send_pointer_position(link);
        }
        if change.is_situation_needed != 0 {
            let update = SituationUpdate {
                user_context: self.situation_context.into(),
                video_output_count: 1,
                output: VideoOutputSituation {
                    active: 1,
                    vram_offset: 0.into(),
                    depth_bits: DEPTH_BITS,
                    width: u32::from(self.width).into(),
                    height: u32::from(self.height).into(),
                    pitch: self.stride().into(),
                },
            };
            self.send(link, kind::SITUATION_UPDATE, &[update.as_bytes()]);
        }
        if self.dirt_wanted && !dirt_before {
            // The client redraws everything for the new generation.
            self.generation = self.generation.wrapping_add(1);
            return true;
        }
        if dirt_before != self.dirt_wanted {
            // The mode's `updates_wanted` changed: the clients may look.
            self.generation = self.generation.wrapping_add(1);
            return true;
        }
        false
    }

    /// Time passed: a request of the start the host left unanswered is
    /// sent again (with a new context), or the start given up.
    pub fn tick(&mut self, link: &mut dyn Link, now_ns: u64) {
        let waiting = matches!(
            self.phase,
            Phase::Version { .. }
                | Phase::Resolutions
                | Phase::Vram { .. }
                | Phase::Situation { .. }
        );
        if !waiting || now_ns < self.asked_at_ns.saturating_add(ANSWER_TIMEOUT_NS) {
            return;
        }
        if self.attempts >= MAX_ATTEMPTS {
            link.log(format_args!(
                "the host left {:?} unanswered {MAX_ATTEMPTS} times: giving up until the channel opens again",
                self.phase
            ));
            self.phase = Phase::Failed;
            return;
        }
        self.stats.resends += 1;
        link.log(format_args!("no answer to {:?}: asking again", self.phase));
        match self.phase {
            Phase::Version { index } => self.ask_version(link, index, now_ns),
            Phase::Resolutions => self.ask_resolutions(link, now_ns),
            Phase::Vram { .. } => self.send_vram(link, now_ns),
            Phase::Situation { .. } => self.send_situation(link, now_ns),
            _ => {}
        }
    }

    /// When [`Session::tick`] wants to run next, if the start waits.
    pub fn deadline_ns(&self) -> Option<u64> {
        matches!(
            self.phase,
            Phase::Version { .. }
                | Phase::Resolutions
                | Phase::Vram { .. }
                | Phase::Situation { .. }
        )
        .then(|| self.asked_at_ns.saturating_add(ANSWER_TIMEOUT_NS))
    }

    /// The mode the clients see.
    pub fn mode(&self) -> Option<Mode> {
        if !self.is_ready() {
            return None;
        }
        Some(Mode {
            generation: self.generation,
            width: self.width,
            height: self.height,
            stride: self.stride(),
            depth_bits: DEPTH_BITS,
            version: wire::version_parts(self.version.unwrap_or(0)),
            updates_wanted: self.dirt_wanted,
            resolutions: self.resolutions.clone(),
        })
    }

    /// A client's flush: its rectangles clipped to the screen (empty ones
    /// dropped), sent as one dirt message when the host wants dirt.
    pub fn flush(&mut self, link: &mut dyn Link, rects: &[Rect]) -> Reply {
        if !self.is_ready() {
            return Reply::NotReady;
        }
        let mut clipped: heapless::Vec<wire::Rect, MAX_RECTS> = heapless::Vec::new();
        let mut bytes: u32 = 0;
        for rect in rects.iter().take(MAX_RECTS) {
            let x1 = rect.x.min(self.width);
            let y1 = rect.y.min(self.height);
            let x2 = rect.x.saturating_add(rect.width).min(self.width);
            let y2 = rect.y.saturating_add(rect.height).min(self.height);
            if x2 <= x1 || y2 <= y1 {
                continue;
            }
            bytes += u32::from(x2 - x1) * u32::from(y2 - y1) * BYTES_PER_PIXEL;
            let _ = clipped.push(wire::Rect {
                x1: i32::from(x1).into(),
                y1: i32::from(y1).into(),
                x2: i32::from(x2).into(),
                y2: i32::from(y2).into(),
            });
        }
        if clipped.is_empty() {
            return Reply::Flushed { rects: 0, bytes: 0 };
        }
        if !self.dirt_wanted {
            self.stats.dirt_withheld += 1;
            return Reply::Flushed { rects: 0, bytes: 0 };
        }
        let header = DirtHeader {
            video_output: 0,
            dirt_count: clipped.len() as u8,
        };
        if !self.send(link, kind::DIRT, &[header.as_bytes(), clipped.as_bytes()]) {
            return Reply::Flushed { rects: 0, bytes: 0 };
        }
        self.stats.dirt_sent += 1;
        self.stats.dirt_rects += clipped.len() as u64;
        self.stats.dirt_bytes += u64::from(bytes);
        Reply::Flushed {
            rects: clipped.len() as u8,
            bytes,
        }
    }

    /// A client moves (or hides) the pointer; clipped to the screen.
    pub fn pointer(&mut self, link: &mut dyn Link, x: u16, y: u16, visible: bool) -> Reply {
        if !self.is_ready() {
            return Reply::NotReady;
        }
        let x = x.min(self.width.saturating_sub(1));
        let y = y.min(self.height.saturating_sub(1));
        self.pointer = (x, y, visible);
        if self.pointer_position_wanted {
            self.send_pointer_position(link);
        }
        Reply::Done
    }

    /// A client call.
    pub fn serve(&mut self, link: &mut dyn Link, request: &framebuffer::Request) -> Reply {
        match request {
            framebuffer::Request::Info => self.mode().map_or(Reply::NotReady, Reply::Info),
            framebuffer::Request::Flush { rects } => self.flush(link, rects),
            framebuffer::Request::Pointer { x, y, visible } => self.pointer(link, *x, *y, *visible),
        }
    }
}

/// Our pointer: a white arrow with a black outline, its tip (the hot
/// spot) at the top left; ARGB, transparent outside.
pub fn arrow_pixel(x: usize, y: usize) -> u32 {
    let inside = |x: isize, y: isize| -> bool {
        if x < 0 || y < 0 || x >= ARROW_WIDTH as isize || y >= ARROW_HEIGHT as isize {
            return false;
        }
        // The head: a triangle whose right edge runs down at 45 degrees
        // to row 11 and back to the axis at row 15; the tail: a bar.
        let head = y <= 15 && x <= y.min(11) && x <= 2 * (15 - y) + 3;
        let tail = (12..=18).contains(&y) && x >= (y - 12) / 2 + 4 && x <= (y - 12) / 2 + 6;
        head || tail
    };
    let (x, y) = (x as isize, y as isize);
    if !inside(x, y) {
        return 0;
    }
    let edge = !inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1);
    if edge {
        0xff00_0000
    } else {
        0xffff_ffff
    }
}
