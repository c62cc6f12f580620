//! Property tests: random and mutated bytes to every parser. Each must
//! return a value or an error; a panic (including a failed bounds check)
//! fails the test. Values that are returned are checked for consistency.
#![forbid(unsafe_code)]

use proptest::prelude::*;
use vmbus_protocol::gpadl::{GpadlAssembler, GpadlMessages};
use vmbus_protocol::ic;
use vmbus_protocol::messages::*;
use vmbus_protocol::packet::{self, PacketKind};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion};
use zerocopy::IntoBytes;

fn any_version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V0_13),
        Just(ProtocolVersion::V2_4),
        Just(ProtocolVersion::V4_0),
        Just(ProtocolVersion::V4_1),
        Just(ProtocolVersion::V5_2),
        Just(ProtocolVersion::V5_3),
        Just(ProtocolVersion::V6_0),
        any::<u32>().prop_map(ProtocolVersion),
    ]
}

/// A well-formed message of every known type, to mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut all = vec![
        OfferChannel::empty().as_bytes().to_vec(),
        RescindChannelOffer::empty().as_bytes().to_vec(),
        RequestOffers::empty().as_bytes().to_vec(),
        AllOffersDelivered::empty().as_bytes().to_vec(),
        OpenChannel::empty().as_bytes().to_vec(),
        OpenChannel2::empty().as_bytes().to_vec(),
        OpenChannelResult::empty().as_bytes().to_vec(),
        CloseChannel::empty().as_bytes().to_vec(),
        GpadlCreated::empty().as_bytes().to_vec(),
        GpadlTeardown::empty().as_bytes().to_vec(),
        GpadlTorndown::empty().as_bytes().to_vec(),
        RelIdReleased::empty().as_bytes().to_vec(),
        InitiateContact::empty().as_bytes().to_vec(),
        InitiateContact2::empty().as_bytes().to_vec(),
        VersionResponse::empty().as_bytes().to_vec(),
        VersionResponse2::empty().as_bytes().to_vec(),
        Unload::empty().as_bytes().to_vec(),
        UnloadResponse::empty().as_bytes().to_vec(),
        TlConnectRequest::empty().as_bytes().to_vec(),
        TlConnectRequest2::empty().as_bytes().to_vec(),
        ModifyChannel::empty().as_bytes().to_vec(),
        TlConnectResult::empty().as_bytes().to_vec(),
        ModifyChannelResponse::empty().as_bytes().to_vec(),
        ModifyConnection::empty().as_bytes().to_vec(),
        ModifyConnectionResponse::empty().as_bytes().to_vec(),
        Pause::empty().as_bytes().to_vec(),
        PauseResponse::empty().as_bytes().to_vec(),
        Resume::empty().as_bytes().to_vec(),
    ];
    let pfns: Vec<u64> = (0..60).collect();
    all.extend(
        GpadlMessages::for_pages(1, 2, &pfns)
            .unwrap()
            .map(|m| m.as_bytes().to_vec()),
    );
    all
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, value) in edits {
        if !bytes.is_empty() {
            let len = bytes.len();
            bytes[at % len] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn check_parse(bytes: &[u8], version: ProtocolVersion) {
    let Ok(message) = parse(bytes, version) else {
        return;
    };
    let message_type = peek_type(bytes).unwrap();
    let introduced = message_type.introduced_in().unwrap();
    assert!(
        introduced <= version,
        "{message_type:?} let through at {version}"
    );
    if let ChannelMessage::GpadlHeader(header) = &message {
        assert!(!header.words.is_empty());
        assert!(header.words.len() * 8 <= header.fixed.range_buflen.get() as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_messages(bytes in proptest::collection::vec(any::<u8>(), 0..300), version in any_version()) {
        check_parse(&bytes, version);
    }

    #[test]
    fn messages_with_a_known_type(
        message_type in 0u32..32,
        mut bytes in proptest::collection::vec(any::<u8>(), 8..241),
        version in any_version(),
    ) {
        bytes[..4].copy_from_slice(&message_type.to_le_bytes());
        check_parse(&bytes, version);
    }

    #[test]
    fn mutated_messages(
        index in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        version in any_version(),
    ) {
        let all = valid_messages();
        let original = all[index.index(all.len())].clone();
        check_parse(&mutate(original, &edits, cut), version);
    }

    #[test]
    fn random_packets(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(packet) = packet::parse_packet(&bytes) {
            assert!(packet.payload.len() <= bytes.len());
            if let PacketKind::GpaDirect(ranges) = packet.kind {
                assert!(!ranges.is_empty());
                // Validated ranges iterate completely.
                let mut count = 0;
                for range in ranges.iter() {
                    assert_eq!(
                        Some(range.pfn_count()),
                        packet::pfn_count(range.byte_offset, range.byte_count)
                    );
                    assert_eq!(range.pfns().count(), range.pfn_count());
                    count += 1;
                }
                assert_eq!(count, ranges.len());
            }
        }
    }

    #[test]
    fn packets_with_plausible_descriptors(
        packet_type in prop_oneof![Just(6u16), Just(7), Just(9), Just(11), any::<u16>()],
        offset8 in 0u16..12,
        len8 in 0u16..40,
        flags in 0u16..3,
        range_count in 0u32..6,
        mut rest in proptest::collection::vec(any::<u8>(), 0..320),
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&packet_type.to_le_bytes());
        bytes.extend_from_slice(&offset8.to_le_bytes());
        bytes.extend_from_slice(&len8.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        if rest.len() >= 8 {
            rest[4..8].copy_from_slice(&range_count.to_le_bytes());
        }
        bytes.extend_from_slice(&rest);
        let _ = packet::parse_packet(&bytes).map(|p| p.kind);
    }

    #[test]
    fn random_ic_messages(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(message) = ic::parse_ic_message(&bytes) {
            let _ = ic::parse_negotiate(message.body);
            let _ = ic::read_body::<ic::HeartbeatMessage>(message.body);
            let _ = ic::read_body::<ic::KvpGetSetMessage>(message.body)
                .map(|m| (m.value.key_bytes().map(|k| k.len()), m.value.value_bytes().map(|v| v.len())));
        }
        let mut out = [0u8; 64];
        if let Ok((len, chosen)) = ic::answer_negotiate(&bytes, &ic::versions::FRAMEWORK, &ic::versions::KVP, &mut out) {
            assert_eq!(ic::read_negotiate_response(&out[..len]), Ok(chosen));
        }
        let _ = ic::read_negotiate_response(&bytes);
    }

    #[test]
    fn negotiate_with_random_version_lists(
        framework in proptest::collection::vec((0u16..5, 0u16..3), 0..20),
        message in proptest::collection::vec((0u16..6, 0u16..3), 0..20),
    ) {
        let to_versions = |list: &[(u16, u16)]| -> Vec<ic::IcVersion> {
            list.iter().map(|&(a, b)| ic::IcVersion::new(a, b)).collect()
        };
        let mut body = [0u8; 256];
        let body_len = ic::write_negotiate(&mut body, &to_versions(&framework), &to_versions(&message)).unwrap();
        let header: ic::IcMessageHeader = zerocopy::FromZeros::new_zeroed();
        let mut request = [0u8; 300];
        let len = ic::write_ic_message(&mut request, &header, &body[..body_len]).unwrap();
        let mut out = [0u8; 64];
        match ic::answer_negotiate(&request[..len], &ic::versions::FRAMEWORK, &ic::versions::SHUTDOWN, &mut out) {
            Ok((_, Some(chosen))) => {
                assert!(framework.contains(&(chosen.framework.major.get(), chosen.framework.minor.get())));
                assert!(message.contains(&(chosen.message.major.get(), chosen.message.minor.get())));
            }
            Ok((_, None)) => {
                let common_fw = ic::versions::FRAMEWORK.iter().any(|v| framework.contains(v));
                let common_msg = ic::versions::SHUTDOWN.iter().any(|v| message.contains(v));
                assert!(!(common_fw && common_msg));
            }
            // More than 16 versions of a kind are refused.
            Err(error) => assert_eq!(error, ic::IcError::BadVersionCount),
        }
    }

    #[test]
    fn gpadl_round_trip(pages in 1usize..400, first in any::<u32>()) {
        let pfns: Vec<u64> = (0..pages as u64).map(|i| first as u64 + i).collect();
        let mut assembler: Option<GpadlAssembler<512>> = None;
        for message in GpadlMessages::for_pages(3, 4, &pfns).unwrap() {
            match parse(message.as_bytes(), ProtocolVersion::V5_3).unwrap() {
                ChannelMessage::GpadlHeader(header) => assembler = Some(GpadlAssembler::new(&header).unwrap()),
                ChannelMessage::GpadlBody(body) => { assembler.as_mut().unwrap().add_body(&body).unwrap(); }
                other => panic!("{other:?}"),
            }
        }
        let assembler = assembler.unwrap();
        let ranges = assembler.ranges().unwrap();
        prop_assert_eq!(ranges[0].pfns, &pfns[..]);
    }

    #[test]
    fn gpadl_assembly_of_hostile_messages(
        header_bytes in proptest::collection::vec(any::<u8>(), 20..241),
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 16..241), 0..6),
        range_buflen in any::<u16>(),
        range_count in 0u16..4,
    ) {
        let mut header_bytes = header_bytes;
        header_bytes[..4].copy_from_slice(&8u32.to_le_bytes());
        header_bytes[16..18].copy_from_slice(&range_buflen.to_le_bytes());
        header_bytes[18..20].copy_from_slice(&range_count.to_le_bytes());
        if let Ok(ChannelMessage::GpadlHeader(header)) = parse(&header_bytes, ProtocolVersion::V5_3) {
            if let Ok(mut assembler) = GpadlAssembler::<256>::new(&header) {
                for mut body in bodies {
                    body[..4].copy_from_slice(&9u32.to_le_bytes());
                    body[12..16].copy_from_slice(&header.fixed.gpadl_id.get().to_le_bytes());
                    if let Ok(ChannelMessage::GpadlBody(body)) = parse(&body, ProtocolVersion::V5_3) {
                        let _ = assembler.add_body(&body);
                    }
                }
                if let Ok(ranges) = assembler.ranges() {
                    prop_assert_eq!(ranges.len(), range_count as usize);
                }
            }
        }
    }
}
