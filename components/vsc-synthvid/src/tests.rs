//! The session against a scripted host (what it sends, what it refuses),
//! and the component over real rings (`ic_channel::testing`).

use crate::session::*;
use std::string::String;
use std::vec::Vec;
use vmbus_ipc::framebuffer::{Rect, Reply, Request, Resolution};
use vmbus_protocol::synthvid::{
    self as wire, message_type as kind, FeatureChange, PointerPosition, ResolutionResponseHeader,
    ScreenSize, SituationUpdate, VersionRequest, VersionResponse, VramLocation,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const VRAM_GPA: u64 = 0x8000_0000;
const VRAM_BYTES: usize = 3 << 20;

#[derive(Default)]
struct FakeLink {
    sent: Vec<(u32, Vec<u8>)>,
    log: Vec<String>,
    full: bool,
}

impl Link for FakeLink {
    fn send(&mut self, message: &[u8]) -> bool {
        if self.full {
            return false;
        }
        let parsed = wire::parse(message).expect("the driver sends valid messages");
        self.sent.push((parsed.kind, parsed.payload.to_vec()));
        true
    }
    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        self.log.push(std::format!("{line}"));
    }
}

impl FakeLink {
    fn take(&mut self) -> Vec<(u32, Vec<u8>)> {
        core::mem::take(&mut self.sent)
    }
    fn logged(&self, text: &str) -> bool {
        self.log.iter().any(|line| line.contains(text))
    }
}

fn message(message_kind: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = std::vec![0u8; 4096];
    let len = wire::encode(message_kind, parts, &mut out).unwrap();
    out.truncate(len);
    // The ring pads payloads to 8 bytes.
    out.resize(len.next_multiple_of(8), 0);
    out
}

fn version_response(version: u32, accepted: bool) -> Vec<u8> {
    let response = VersionResponse {
        version: version.into(),
        is_accepted: accepted as u8,
        max_video_outputs: 1,
    };
    message(kind::VERSION_RESPONSE, &[response.as_bytes()])
}

fn resolutions(count: u8, sizes: &[(u16, u16)]) -> Vec<u8> {
    let mut header = ResolutionResponseHeader::new_zeroed();
    header.resolution_count = count;
    let mut bytes = Vec::new();
    for &(width, height) in sizes {
        let size = ScreenSize {
            width: width.into(),
            height: height.into(),
        };
        bytes.extend_from_slice(size.as_bytes());
    }
    message(kind::RESOLUTION_RESPONSE, &[header.as_bytes(), &bytes])
}

fn ack(message_kind: u32, context: u64) -> Vec<u8> {
    message(message_kind, &[&context.to_le_bytes()])
}

fn features(dirt: bool) -> Vec<u8> {
    let change = FeatureChange {
        is_dirt_needed: dirt as u8,
        is_pointer_position_needed: 1,
        is_pointer_shape_needed: 1,
        is_situation_needed: 0,
    };
    message(kind::FEATURE_CHANGE, &[change.as_bytes()])
}

/// The context of the last message of `message_kind` the driver sent.
fn context_of(sent: &[(u32, Vec<u8>)], message_kind: u32) -> u64 {
    let (_, payload) = sent
        .iter()
        .rev()
        .find(|(k, _)| *k == message_kind)
        .expect("sent");
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

/// A session started on 3.5 against a host listing `list`, up to the
/// situation ack.
fn ready(vram_bytes: usize, list: &[(u16, u16)]) -> (Session, FakeLink) {
    let mut session = Session::new(Some((VRAM_GPA, vram_bytes)), 10, 0x100);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, true), 1);
    session.on_host_message(&mut link, &resolutions(list.len() as u8, list), 2);
    let context = context_of(&link.sent, kind::VRAM_LOCATION);
    session.on_host_message(&mut link, &ack(kind::VRAM_LOCATION_ACK, context), 3);
    let context = context_of(&link.sent, kind::SITUATION_UPDATE);
    assert!(session.on_host_message(&mut link, &ack(kind::SITUATION_UPDATE_ACK, context), 4));
    assert!(session.is_ready(), "{:?} {:?}", session.phase, link.log);
    (session, link)
}

#[test]
fn the_start_negotiates_3_5_asks_resolutions_and_names_the_vram() {
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 10, 0x100);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    let sent = link.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, kind::VERSION_REQUEST);
    let request = VersionRequest::read_from_bytes(&sent[0].1).unwrap();
    assert_eq!(request.version.get(), wire::VERSION_WIN10);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, true), 1);
    let sent = link.take();
    assert_eq!(sent, [(kind::RESOLUTION_REQUEST, std::vec![64])]);
    let list = [(640, 480), (1024, 768), (1920, 1080)];
    session.on_host_message(&mut link, &resolutions(3, &list), 2);
    let sent = link.take();
    assert_eq!(sent[0].0, kind::VRAM_LOCATION);
    let location = VramLocation::read_from_bytes(&sent[0].1).unwrap();
    assert_eq!(location.is_vram_gpa_specified, 1);
    assert_eq!(location.vram_gpa.get(), VRAM_GPA);
    let context = location.user_context.get();
    // An ack with another context is refused; the session keeps waiting.
    session.on_host_message(&mut link, &ack(kind::VRAM_LOCATION_ACK, context + 1), 3);
    assert_eq!(session.stats.wrong_context, 1);
    assert_eq!(session.stats.refused, 1);
    assert!(link.take().is_empty());
    assert!(link.logged("not ours"));
    session.on_host_message(&mut link, &ack(kind::VRAM_LOCATION_ACK, context), 3);
    let sent = link.take();
    assert_eq!(sent[0].0, kind::SITUATION_UPDATE);
    let update = SituationUpdate::read_from_bytes(&sent[0].1).unwrap();
    assert_eq!(update.video_output_count, 1);
    assert_eq!(update.output.active, 1);
    assert_eq!(update.output.depth_bits, 32);
    assert_eq!(update.output.width.get(), 1024);
    assert_eq!(update.output.height.get(), 768);
    assert_eq!(update.output.pitch.get(), 4096);
    assert_eq!(update.output.vram_offset.get(), 0);
    assert!(session.mode().is_none(), "not ready before the ack");
    let changed = session.on_host_message(
        &mut link,
        &ack(kind::SITUATION_UPDATE_ACK, update.user_context.get()),
        4,
    );
    assert!(changed, "the clients are told");
    let sent = link.take();
    let kinds: Vec<u32> = sent.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [kind::POINTER_SHAPE, kind::POINTER_POSITION]);
    let shape = wire::read_pointer_shape(&wire::Message {
        kind: kind::POINTER_SHAPE,
        payload: &sent[0].1,
    })
    .unwrap();
    assert_eq!(shape.0.is_argb, 1);
    assert_eq!(shape.0.part_index, wire::POINTER_COMPLETE);
    assert_eq!(shape.1.len(), ARROW_WIDTH * ARROW_HEIGHT * 4);
    let position = PointerPosition::read_from_bytes(&sent[1].1).unwrap();
    assert_eq!(position.is_visible, 1);
    let mode = session.mode().unwrap();
    assert_eq!((mode.width, mode.height, mode.stride), (1024, 768, 4096));
    assert_eq!(mode.version, (3, 5));
    assert_eq!(mode.generation, 11);
    assert!(mode.updates_wanted);
    assert_eq!(
        mode.resolutions.as_slice(),
        &[
            Resolution {
                width: 640,
                height: 480
            },
            Resolution {
                width: 1024,
                height: 768
            },
            Resolution {
                width: 1920,
                height: 1080
            }
        ]
    );
    assert!(link.logged("synthvid 3.5: 1024x768x32, stride 4096, 3 host resolutions"));
}

#[test]
fn older_hosts_get_older_versions_newest_first_and_no_resolution_request() {
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    link.take();
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, false), 1);
    let sent = link.take();
    assert_eq!(
        VersionRequest::read_from_bytes(&sent[0].1)
            .unwrap()
            .version
            .get(),
        wire::VERSION_WIN8
    );
    // A response for a version not asked is refused.
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN7, true), 1);
    assert_eq!(session.stats.refused, 1);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN8, true), 1);
    let sent = link.take();
    assert_eq!(
        sent[0].0,
        kind::VRAM_LOCATION,
        "no resolution request on 3.2"
    );
    // A host that accepts nothing: the start fails, nothing more is sent.
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    session.open(&mut link, 0);
    for version in wire::VERSIONS {
        session.on_host_message(&mut link, &version_response(version, false), 1);
    }
    assert_eq!(session.phase, Phase::Failed);
    assert_eq!(link.take().len(), 3, "3.5, 3.2, 3.0");
    assert!(link.logged("accepts no synthvid version"));
}

#[test]
fn the_mode_is_the_largest_listed_that_fits_the_vram() {
    // 2 MiB: 1024x768x4 (3 MiB) does not fit; 800x600 and 1152x864 do not
    // both: 1152*864*4 = 3.98 MB no, 800*600*4 = 1.92 MB yes.
    let (session, _) = ready(2 << 20, &[(640, 480), (800, 600), (1024, 768), (1152, 864)]);
    let mode = session.mode().unwrap();
    assert_eq!((mode.width, mode.height, mode.stride), (800, 600, 3200));
    // No list (3.2 hosts): the preferred mode.
    let (session, _) = ready(VRAM_BYTES, &[]);
    assert_eq!(session.mode().unwrap().width, 1024);
    // Nothing fits: the start fails.
    let mut session = Session::new(Some((VRAM_GPA, 4096)), 0, 1);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, true), 1);
    session.on_host_message(&mut link, &resolutions(1, &[(640, 480)]), 2);
    assert_eq!(session.phase, Phase::Failed);
}

#[test]
fn a_hostile_host_is_refused_counted_and_never_panics_the_driver() {
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, true), 1);
    link.take();
    // A resolution list longer than its field: refused, the start goes on
    // without it (the preferred mode).
    let too_long: Vec<(u16, u16)> = (0..65).map(|i| (640 + i, 480)).collect();
    session.on_host_message(&mut link, &resolutions(65, &too_long), 2);
    assert_eq!(session.stats.refused, 1);
    assert!(link.logged("resolution response: Oversized"));
    assert_eq!(link.take()[0].0, kind::VRAM_LOCATION);
    assert_eq!(session.mode(), None);
    // A count past the field in a message of lawful size: refused too.
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    session.open(&mut link, 0);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, true), 1);
    link.take();
    session.on_host_message(&mut link, &resolutions(65, &too_long[..60]), 2);
    assert_eq!(session.stats.refused, 1);
    assert!(link.logged("resolution response: Count"));
    assert_eq!(link.take()[0].0, kind::VRAM_LOCATION);
    let refused = |session: &Session| session.stats.refused;
    // Garbled headers, a short message, an oversized one, an unknown
    // type, an ack out of turn, a short ack: each refused.
    let mut garbled = features(true);
    garbled[12] = 40;
    let mut oversized = std::vec![0xEE; 2048];
    let len = wire::encode(kind::FEATURE_CHANGE, &[&[0xEE; 2000]], &mut oversized).unwrap();
    oversized.truncate(len);
    let hostile: [Vec<u8>; 7] = [
        garbled,
        std::vec![1, 0, 0],
        oversized,
        message(42, &[&[0; 8]]),
        ack(kind::SITUATION_UPDATE_ACK, 5),
        message(kind::VRAM_LOCATION_ACK, &[&[1, 2, 3]]),
        message(kind::FEATURE_CHANGE, &[&[1]]),
    ];
    for (index, bytes) in hostile.iter().enumerate() {
        let before = refused(&session);
        session.on_host_message(&mut link, bytes, 3);
        assert_eq!(refused(&session), before + 1, "message {index}");
    }
    assert!(link.take().is_empty(), "nothing answered");
    assert!(matches!(session.phase, Phase::Vram { .. }));
    // Arbitrary bytes never panic.
    for len in 0..64usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        session.on_host_message(&mut link, &bytes, 3);
    }
}

#[test]
fn flushes_are_clipped_empty_rects_dropped_and_withheld_while_the_host_wants_none() {
    let (mut session, mut link) = ready(VRAM_BYTES, &[(1024, 768)]);
    link.take();
    let rects = [
        Rect {
            x: 10,
            y: 20,
            width: 30,
            height: 40,
        },
        Rect {
            x: 1000,
            y: 760,
            width: 100,
            height: 100,
        },
        Rect {
            x: 5,
            y: 5,
            width: 0,
            height: 9,
        },
        Rect {
            x: 2000,
            y: 0,
            width: 10,
            height: 10,
        },
    ];
    let reply = session.flush(&mut link, &rects);
    assert_eq!(
        reply,
        Reply::Flushed {
            rects: 2,
            bytes: (30 * 40 + 24 * 8) * 4
        }
    );
    let sent = link.take();
    assert_eq!(sent.len(), 1);
    let (header, sent_rects) = wire::read_dirt(&wire::Message {
        kind: kind::DIRT,
        payload: &sent[0].1,
    })
    .unwrap();
    assert_eq!(header.dirt_count, 2);
    assert_eq!(
        [
            sent_rects[1].x1.get(),
            sent_rects[1].y1.get(),
            sent_rects[1].x2.get(),
            sent_rects[1].y2.get()
        ],
        [1000, 760, 1024, 768]
    );
    // Nothing left after clipping: nothing sent.
    assert_eq!(
        session.flush(&mut link, &rects[2..]),
        Reply::Flushed { rects: 0, bytes: 0 }
    );
    assert!(link.take().is_empty());
    // The host turns updates off: flushes are accepted, not sent.
    let generation = session.generation();
    assert!(session.on_host_message(&mut link, &features(false), 5));
    assert!(!session.mode().unwrap().updates_wanted);
    link.take();
    assert_eq!(
        session.flush(&mut link, &rects[..1]),
        Reply::Flushed { rects: 0, bytes: 0 }
    );
    assert!(link.take().is_empty());
    assert_eq!(session.stats.dirt_withheld, 1);
    // On again: a new generation (the client redraws) and dirt flows.
    assert!(session.on_host_message(&mut link, &features(true), 6));
    assert!(session.generation() > generation + 1);
    assert!(link.logged("the host wants updates again"));
    link.take();
    assert!(matches!(
        session.flush(&mut link, &rects[..1]),
        Reply::Flushed { rects: 1, .. }
    ));
    assert_eq!(link.take()[0].0, kind::DIRT);
}

#[test]
fn client_calls_before_the_start_are_not_ready_and_the_pointer_moves() {
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    let mut link = FakeLink::default();
    assert_eq!(session.serve(&mut link, &Request::Info), Reply::NotReady);
    assert_eq!(
        session.serve(
            &mut link,
            &Request::Flush {
                rects: heapless::Vec::new()
            }
        ),
        Reply::NotReady
    );
    let (mut session, mut link) = ready(VRAM_BYTES, &[]);
    link.take();
    assert_eq!(
        session.serve(
            &mut link,
            &Request::Pointer {
                x: 5000,
                y: 7,
                visible: true
            }
        ),
        Reply::Done
    );
    let sent = link.take();
    let position = PointerPosition::read_from_bytes(&sent[0].1).unwrap();
    assert_eq!(
        (position.image_x.get(), position.image_y.get()),
        (1023, 7),
        "clipped to the screen"
    );
    assert!(matches!(
        session.serve(&mut link, &Request::Info),
        Reply::Info(_)
    ));
    // The channel goes: not ready, and the clients are told.
    assert!(session.close());
    assert_eq!(session.serve(&mut link, &Request::Info), Reply::NotReady);
}

#[test]
fn an_unanswered_request_is_sent_again_with_a_new_context_then_given_up() {
    let mut session = Session::new(Some((VRAM_GPA, VRAM_BYTES)), 0, 1);
    let mut link = FakeLink::default();
    session.open(&mut link, 0);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN8, false), 1);
    // (3.5 refused above is not what was asked: refused; answer properly.)
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN10, false), 1);
    session.on_host_message(&mut link, &version_response(wire::VERSION_WIN8, true), 1);
    let first = context_of(&link.take(), kind::VRAM_LOCATION);
    assert_eq!(session.deadline_ns(), Some(1 + ANSWER_TIMEOUT_NS));
    session.tick(&mut link, ANSWER_TIMEOUT_NS);
    assert!(link.take().is_empty(), "not yet");
    session.tick(&mut link, 1 + ANSWER_TIMEOUT_NS);
    let second = context_of(&link.take(), kind::VRAM_LOCATION);
    assert_ne!(first, second);
    assert_eq!(session.stats.resends, 1);
    // The first context's late ack is not the one waited for now.
    session.on_host_message(&mut link, &ack(kind::VRAM_LOCATION_ACK, first), 2);
    assert_eq!(session.stats.wrong_context, 1);
    let mut now = 1 + ANSWER_TIMEOUT_NS;
    for _ in 0..MAX_ATTEMPTS {
        now += ANSWER_TIMEOUT_NS;
        session.tick(&mut link, now);
    }
    assert_eq!(session.phase, Phase::Failed);
    assert_eq!(session.deadline_ns(), None);
    assert!(link.logged("giving up until the channel opens again"));
}

#[test]
fn the_arrow_is_an_outlined_white_arrow_with_its_tip_at_the_hot_spot() {
    assert_eq!(arrow_pixel(0, 0), 0xff00_0000, "the tip is outline");
    assert_eq!(arrow_pixel(ARROW_WIDTH - 1, 0), 0, "transparent beside it");
    let pixels: Vec<u32> = (0..ARROW_HEIGHT)
        .flat_map(|y| (0..ARROW_WIDTH).map(move |x| arrow_pixel(x, y)))
        .collect();
    let white = pixels.iter().filter(|&&p| p == 0xffff_ffff).count();
    let black = pixels.iter().filter(|&&p| p == 0xff00_0000).count();
    assert!(white > 30 && black > 20, "white {white} black {black}");
    assert!(pixels.iter().all(|&p| p == 0 || p >> 24 == 0xff));
}

mod component {
    //! The component over real rings: the start goes out on the out
    //! ring, the host's answers come in on the in ring.
    use super::*;
    use crate::component::{channels, Video, IDS};
    use component_api::{Channel, ChannelSet, Component, Refusal};
    use env_double::EnvDouble;
    use ic_channel::testing::TestHost;

    fn started() -> (EnvDouble, TestHost, Video) {
        let mut env = EnvDouble::new();
        let host = TestHost::new(&mut env, IDS);
        let vram = env.add_region_address_only(VRAM_BYTES, VRAM_GPA);
        assert_eq!(vram, crate::component::regions::VRAM);
        let driver = Video::init(&mut env);
        (env, host, driver)
    }

    fn host_sent(host: &mut TestHost) -> Vec<(u32, Vec<u8>)> {
        let mut messages = Vec::new();
        while let Some((_, payload)) = host.receive() {
            let message = wire::parse(&payload).expect("valid");
            messages.push((message.kind, message.payload.to_vec()));
        }
        messages
    }

    #[test]
    fn opens_the_channel_and_runs_the_start_over_the_rings() {
        let (mut env, mut host, mut driver) = started();
        assert_eq!(host.bus.borrow().open_requests, 1);
        driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
        let sent = host_sent(&mut host);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, kind::VERSION_REQUEST);
        host.send(&version_response(wire::VERSION_WIN8, true));
        // Not read before synic says so.
        assert!(host_sent(&mut host).is_empty());
        host.send(&version_response(wire::VERSION_WIN10, false));
        host.send(&version_response(wire::VERSION_WIN8, true));
        driver.notified(&mut env, ChannelSet(IDS.synic.bit()));
        let sent = host_sent(&mut host);
        // The stray 3.2 answer came before 3.2 was asked: refused.
        let kinds: Vec<u32> = sent.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [kind::VERSION_REQUEST, kind::VRAM_LOCATION]);
        assert_eq!(driver.session.stats.refused, 1);
        let location = VramLocation::read_from_bytes(&sent[1].1).unwrap();
        assert_eq!(location.vram_gpa.get(), VRAM_GPA);
        host.send(&ack(kind::VRAM_LOCATION_ACK, location.user_context.get()));
        driver.notified(&mut env, ChannelSet(IDS.synic.bit()));
        let sent = host_sent(&mut host);
        assert_eq!(sent[0].0, kind::SITUATION_UPDATE);
        let context = u64::from_le_bytes(sent[0].1[..8].try_into().unwrap());
        host.send(&ack(kind::SITUATION_UPDATE_ACK, context));
        // Garbage between: refused, the ring goes on.
        host.send(&[0xAB; 24]);
        host.send(&features(true));
        driver.notified(&mut env, ChannelSet(IDS.synic.bit()));
        assert!(driver.session.is_ready());
        assert_eq!(driver.session.stats.refused, 2);
        let kinds: Vec<u32> = host_sent(&mut host).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                kind::POINTER_SHAPE,
                kind::POINTER_POSITION,
                kind::POINTER_POSITION
            ]
        );
        assert!(env.console.contains("synthvid 3.2: 1024x768x32"));
        assert!(env.console.contains("refused a host message"));
        // Its one client is the terminal: a call on any other end is not
        // served, and one that does not decode is refused on the
        // terminal's too.
        let mut reply = [0u8; 64];
        for channel in 0..8 {
            let answer = driver.protected(&mut env, Channel(channel), &[0], &mut reply);
            if Channel(channel) == channels::TERMINAL {
                assert!(answer.is_err() && answer != Err(Refusal::NOT_SERVED));
            } else {
                assert_eq!(answer, Err(Refusal::NOT_SERVED), "channel {channel}");
            }
        }
    }
}
