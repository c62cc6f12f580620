//! The video host driven by a small guest-side client over real rings in
//! test memory (the guest writes with `vmbus-ring`, as the driver does).

use super::*;
use crate::memory::test_ring::VecRing;
use crate::memory::VecMemory;
use crate::vmbus::DeviceKind;
use vmbus_protocol::synthvid::{PointerShapeHeader, Rect, VideoOutputSituation};
use vmbus_ring::{RingReader, RingWriter};

const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 4;
const OUT_PAGES: core::ops::Range<u64> = 0..1 + RING_DATA_PAGES;
const IN_PAGES: core::ops::Range<u64> = 5..6 + RING_DATA_PAGES;
/// The guest's VRAM: pages 16.. (64x48x4 bytes = 3 pages).
const VRAM_PAGE: u64 = 16;
const MEMORY_PAGES: u64 = 24;

struct Rig {
    memory: &'static VecMemory,
    endpoint: ChannelEndpoint,
    host: VideoHost,
    writer: RingWriter<VecRing>,
    reader: RingReader<VecRing>,
    now_ns: u64,
}

impl Rig {
    fn new() -> Rig {
        let memory: &'static VecMemory = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            VecMemory::new((MEMORY_PAGES * PAGE) as usize),
        ));
        let out_pages: Vec<u64> = OUT_PAGES.collect();
        let in_pages: Vec<u64> = IN_PAGES.collect();
        let endpoint = ChannelEndpoint::new(DeviceKind::Video, 1, &out_pages, &in_pages, memory, 0);
        let writer = RingWriter::new(
            VecRing::new(memory, OUT_PAGES.start * PAGE, RING_DATA_PAGES),
            false,
        )
        .unwrap();
        let reader =
            RingReader::new(VecRing::new(memory, IN_PAGES.start * PAGE, RING_DATA_PAGES)).unwrap();
        Rig {
            memory,
            endpoint,
            host: VideoHost::default(),
            writer,
            reader,
            now_ns: 0,
        }
    }

    /// The guest sends one message; the host steps.
    fn send(&mut self, message_kind: u32, parts: &[&[u8]]) {
        let mut out = [0u8; 2048];
        let len = wire::encode(message_kind, parts, &mut out).unwrap();
        self.send_raw(&out[..len]);
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_in_band(0, false, bytes).unwrap();
        self.now_ns += 1000;
        self.endpoint.step(self.memory, 1, self.now_ns);
        let packets = core::mem::take(&mut self.endpoint.storage_inbox);
        self.host.serve(&mut self.endpoint, self.memory, packets);
    }

    /// The host's messages to the guest since the last look: (kind, payload).
    fn received(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut messages = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(Some(packet)) = self.reader.read_packet(&mut buffer) {
            let message = wire::parse(packet.payload).expect("the host sends valid messages");
            messages.push((message.kind, message.payload.to_vec()));
        }
        let _ = self.reader.finish_batch();
        messages
    }

    fn negotiate(&mut self, version: u32) -> VersionResponse {
        self.send(
            kind::VERSION_REQUEST,
            &[VersionRequest {
                version: version.into(),
            }
            .as_bytes()],
        );
        let (message_kind, payload) = self.received().remove(0);
        assert_eq!(message_kind, kind::VERSION_RESPONSE);
        wire::read(&wire::Message {
            kind: message_kind,
            payload: &payload,
        })
        .unwrap()
    }

    fn vram(&mut self, context: u64) {
        let location = VramLocation {
            user_context: context.into(),
            is_vram_gpa_specified: 1,
            vram_gpa: (VRAM_PAGE * PAGE).into(),
        };
        self.send(kind::VRAM_LOCATION, &[location.as_bytes()]);
    }

    fn situation(&mut self, width: u32, height: u32) {
        let update = SituationUpdate {
            user_context: 7.into(),
            video_output_count: 1,
            output: VideoOutputSituation {
                active: 1,
                vram_offset: 0.into(),
                depth_bits: 32,
                width: width.into(),
                height: height.into(),
                pitch: (width * 4).into(),
            },
        };
        self.send(kind::SITUATION_UPDATE, &[update.as_bytes()]);
    }

    fn started(width: u32, height: u32) -> Rig {
        let mut rig = Rig::new();
        assert_eq!(rig.negotiate(wire::VERSION_WIN10).is_accepted, 1);
        rig.vram(0x1234);
        rig.situation(width, height);
        rig.received();
        rig
    }
}

fn contexts(messages: &[(u32, Vec<u8>)], message_kind: u32) -> Vec<u64> {
    messages
        .iter()
        .filter(|(k, _)| *k == message_kind)
        .map(|(_, payload)| u64::from_le_bytes(payload[..8].try_into().unwrap()))
        .collect()
}

#[test]
fn the_video_class_is_the_protocols() {
    assert_eq!(
        crate::scenario::VIDEO_CLASS,
        vmbus_protocol::synthvid::CLASS.as_u128()
    );
}

#[test]
fn negotiates_like_hyper_v_and_acknowledges_with_the_guests_context() {
    let mut rig = Rig::new();
    // A version the host does not speak is answered, not accepted.
    assert_eq!(rig.negotiate(wire::version(4, 0)).is_accepted, 0);
    assert_eq!(rig.host.stats.versions_refused, 1);
    let response = rig.negotiate(wire::VERSION_WIN10);
    assert_eq!(response.is_accepted, 1);
    assert_eq!(response.max_video_outputs, 1);
    rig.send(
        kind::RESOLUTION_REQUEST,
        &[ResolutionRequest {
            maximum_resolution_count: 64,
        }
        .as_bytes()],
    );
    let messages = rig.received();
    let message = wire::Message {
        kind: messages[0].0,
        payload: &messages[0].1,
    };
    let (header, sizes) = wire::read_resolutions(&message).unwrap();
    assert_eq!(header.resolution_count as usize, RESOLUTIONS.len());
    assert_eq!((sizes[0].width.get(), sizes[0].height.get()), (1024, 768));
    rig.vram(0xfeed);
    assert_eq!(contexts(&rig.received(), kind::VRAM_LOCATION_ACK), [0xfeed]);
    rig.situation(64, 48);
    let messages = rig.received();
    assert_eq!(contexts(&messages, kind::SITUATION_UPDATE_ACK), [7]);
    // Then the host asks for dirt and the pointer.
    let change = messages
        .iter()
        .find(|(k, _)| *k == kind::FEATURE_CHANGE)
        .expect("a feature change after the first situation");
    assert_eq!(&change.1[..4], &[1, 1, 1, 0]);
    assert!(rig.host.dirt_wanted);
    assert_eq!(rig.host.stats.refused, 0, "{:?}", rig.host.refusals);
}

#[test]
fn the_picture_is_vram_with_the_pointer_on_top_and_damage_is_the_dirt() {
    let mut rig = Rig::started(64, 48);
    // The guest draws a red 10x10 square at (5, 5) and a blue pixel at the end.
    let vram = VRAM_PAGE * PAGE;
    for y in 5..15u64 {
        for x in 5..15u64 {
            rig.memory
                .write(vram + (y * 64 + x) * 4, &0x00ff_0000u32.to_le_bytes())
                .unwrap();
        }
    }
    rig.memory
        .write(vram + (47 * 64 + 63) * 4, &0x0000_00ffu32.to_le_bytes())
        .unwrap();
    rig.host.take_damage();
    let rect = Rect {
        x1: 5.into(),
        y1: 5.into(),
        x2: 15.into(),
        y2: 15.into(),
    };
    let offscreen = Rect {
        x1: 60.into(),
        y1: 40.into(),
        x2: 100.into(),
        y2: 100.into(),
    };
    rig.send(
        kind::DIRT,
        &[&[0, 2], rect.as_bytes(), offscreen.as_bytes()],
    );
    assert_eq!(rig.host.stats.dirt_messages, 1);
    assert_eq!(rig.host.stats.dirt_rects, 2);
    // 10x10 and the clipped 4x8, 4 bytes each.
    assert_eq!(rig.host.stats.dirt_bytes, (100 + 32) * 4);
    assert_eq!(rig.host.take_damage(), Some((5, 5, 59, 43)));
    assert_eq!(rig.host.take_damage(), None);
    let picture = rig.host.picture(rig.memory).unwrap();
    assert_eq!((picture.width, picture.height), (64, 48));
    assert_eq!(picture.pixel(5, 5), Some(0x00ff_0000));
    assert_eq!(picture.pixel(4, 5), Some(0));
    assert_eq!(picture.pixel(63, 47), Some(0x0000_00ff));
    // A 2x2 opaque green pointer with its hot spot at (1, 1), at (30, 30).
    let shape = PointerShapeHeader {
        part_index: wire::POINTER_COMPLETE,
        is_argb: 1,
        width: 2.into(),
        height: 2.into(),
        hot_x: 1.into(),
        hot_y: 1.into(),
    };
    let green = 0xff00_ff00u32.to_le_bytes().repeat(4);
    rig.send(kind::POINTER_SHAPE, &[shape.as_bytes(), &green]);
    let position = PointerPosition {
        is_visible: 1,
        video_output: 0,
        image_x: 30.into(),
        image_y: 30.into(),
    };
    rig.send(kind::POINTER_POSITION, &[position.as_bytes()]);
    assert_eq!(rig.host.take_damage(), Some((29, 29, 2, 2)));
    let picture = rig.host.picture(rig.memory).unwrap();
    assert_eq!(picture.pixel(29, 29), Some(0x0000_ff00));
    assert_eq!(picture.pixel(30, 30), Some(0x0000_ff00));
    assert_eq!(picture.pixel(31, 31), Some(0));
}

#[test]
fn a_misbehaving_guest_is_refused_and_counted() {
    let mut rig = Rig::new();
    // Before a version: refused.
    rig.situation(64, 48);
    assert_eq!(rig.host.stats.refused, 1);
    assert_eq!(rig.negotiate(wire::VERSION_WIN8).is_accepted, 1);
    // A resolution request is 3.5's only.
    rig.send(kind::RESOLUTION_REQUEST, &[&[64]]);
    assert_eq!(rig.host.stats.refused, 2);
    // Dirt before a mode, a mode too large, a depth not 32, garbage.
    rig.send(kind::DIRT, &[&[0, 0]]);
    rig.vram(1);
    rig.situation(10_000, 48);
    rig.send_raw(&[1, 0, 0, 0, 200, 0, 0, 0, 10, 0, 0, 0, 200, 0, 0, 0]);
    rig.send(kind::FEATURE_CHANGE, &[&[0; 4]]);
    rig.send(kind::VRAM_LOCATION, &[&[0; 3]]);
    assert_eq!(rig.host.stats.refused, 7, "{:?}", rig.host.refusals);
    assert!(rig.host.situation.is_none());
    // VRAM outside guest memory is refused, not read.
    let location = VramLocation {
        user_context: 2.into(),
        is_vram_gpa_specified: 1,
        vram_gpa: (1u64 << 40).into(),
    };
    rig.send(kind::VRAM_LOCATION, &[location.as_bytes()]);
    assert_eq!(rig.host.stats.refused, 8);
    assert_eq!(rig.host.vram_gpa, Some(VRAM_PAGE * PAGE));
    assert!(rig.endpoint.broken.is_none());
}

#[test]
fn faults_make_a_hostile_host() {
    let mut rig = Rig::new();
    rig.negotiate(wire::VERSION_WIN10);
    // A resolution list longer than its field.
    rig.host.inject(
        &mut rig.endpoint,
        rig.memory,
        VideoFault::ResolutionListTooLong,
    );
    rig.send(kind::RESOLUTION_REQUEST, &[&[64]]);
    let messages = rig.received();
    let message = wire::Message {
        kind: messages[0].0,
        payload: &messages[0].1,
    };
    assert!(matches!(
        wire::read_resolutions(&message),
        Err(wire::WireError::Count { count: 65, .. })
    ));
    // A wrong context first, then the right one; and no answer at all.
    rig.host
        .inject(&mut rig.endpoint, rig.memory, VideoFault::VramWrongContext);
    rig.vram(0x77);
    assert_eq!(
        contexts(&rig.received(), kind::VRAM_LOCATION_ACK),
        [0x77 ^ 0x5a5a, 0x77]
    );
    rig.host
        .inject(&mut rig.endpoint, rig.memory, VideoFault::VramNoAck);
    rig.vram(0x78);
    assert!(rig.received().is_empty());
    rig.vram(0x79);
    assert_eq!(contexts(&rig.received(), kind::VRAM_LOCATION_ACK), [0x79]);
    // Updates off and on again.
    rig.host
        .inject(&mut rig.endpoint, rig.memory, VideoFault::Updates(false));
    assert!(!rig.host.dirt_wanted);
    let messages = rig.received();
    assert_eq!(messages, [(kind::FEATURE_CHANGE, alloc::vec![0, 0, 0, 0])]);
    rig.host
        .inject(&mut rig.endpoint, rig.memory, VideoFault::Updates(true));
    assert!(rig.host.dirt_wanted);
    rig.received();
    // Garbled, oversized and unknown messages reach the guest as such.
    let mut buffer = [0u8; 4096];
    for fault in [
        VideoFault::Garbled,
        VideoFault::Oversized,
        VideoFault::UnknownType,
    ] {
        rig.host.inject(&mut rig.endpoint, rig.memory, fault);
        let packet = rig.reader.read_packet(&mut buffer).unwrap().unwrap();
        let parsed = wire::parse(packet.payload);
        match fault {
            VideoFault::Garbled => assert!(matches!(parsed, Err(wire::WireError::Size { .. }))),
            VideoFault::Oversized => {
                assert!(parsed.unwrap().payload.len() > wire::MAX_HOST_MESSAGE)
            }
            _ => assert_eq!(parsed.unwrap().kind, 42),
        }
    }
}
