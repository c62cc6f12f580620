//! The initiator against hvsim's NIC host in one process (see `rig`):
//! the start with each host version, frames both ways compared byte for
//! byte, the send paths, checksum offload, sub-channels and RSS, link
//! changes, keepalive, and every hostile behaviour the host can inject.
//! What the component adds on top (IPC, the net queues) is covered by the
//! hosted end-to-end tests.

mod rig;

use hvsim::channel::network::{NetConfig, NetFault, SEND_SECTION_SIZE};
use rig::{config, frame, Rig};
use vmbus_channel::Refusal;
use vmbus_protocol::nvsp::version;
use vsc_netvsc::initiator::{Config, Event};

fn host() -> NetConfig {
    NetConfig::default()
}

fn started(host: NetConfig, config: Config) -> Rig {
    let mut rig = Rig::new(host, config);
    rig.run();
    assert!(rig.initiator.is_running(), "events: {:?}", rig.events);
    rig
}

#[test]
fn starts_with_the_host_and_opens_sub_channels() {
    let rig = started(host(), config());
    let device = rig.device().unwrap();
    assert_eq!(device.mac, host().mac);
    assert_eq!(device.mtu, 1500);
    assert!(device.link_up);
    assert!(device.checksum_offload);
    assert_eq!(rig.initiator.version(), Some(version::V61));
    assert_eq!(rig.initiator.section_size(), SEND_SECTION_SIZE);
    assert!(rig.controller.ready());
    assert!(rig.events.contains(&Event::SubChannels(2)));
    assert_eq!(rig.lanes(), 3);
    assert_eq!(rig.controller.open_channels().len(), 3);
    let section = rig.initiator.receive_section().unwrap();
    assert!(section.end_offset.get() <= (rig::RECEIVE_PAGES * rig::PAGE) as u32);
}

#[test]
fn older_hosts_are_met_on_their_version() {
    for (newest, subs) in [
        (version::V6, 2),
        (version::V5, 2),
        (version::V4, 0),
        (version::V2, 0),
    ] {
        let rig = started(
            NetConfig {
                newest_version: newest,
                ..host()
            },
            config(),
        );
        assert_eq!(rig.initiator.version(), Some(newest));
        assert_eq!(rig.initiator.sub_channels(), subs, "version {newest:#x}");
    }
    let rig = started(
        NetConfig {
            max_sub_channels: 0,
            ..host()
        },
        config(),
    );
    assert_eq!(rig.initiator.sub_channels(), 0);
}

#[test]
fn frames_go_both_ways_byte_for_byte() {
    let mut rig = started(host(), config());
    let mac = rig.device().unwrap().mac;
    // Host -> guest: short, full-size and odd lengths, in order.
    let lengths = [60usize, 1514, 64, 999, 14 + 46, 1500];
    let sent: Vec<Vec<u8>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| frame(len, mac, i as u32))
        .collect();
    for frame in &sent {
        assert!(rig.net.push_to_guest(frame));
    }
    rig.run();
    let got: Vec<&Vec<u8>> = rig.mem.delivered.iter().map(|(_, f, _)| f).collect();
    assert_eq!(got.len(), sent.len());
    // RSS may spread them over channels; each channel keeps its order.
    for frame in &sent {
        assert!(got.contains(&frame));
    }
    assert_eq!(
        rig.controller.sections_in_use(),
        0,
        "every receive completed"
    );
    // Guest -> host: copied frames and a GPA-direct one.
    let copied_before = rig.controller.stats.tx_from_send_buffer;
    let peer = [0x02, 0, 0, 0, 0, 0x99];
    let out = [
        frame(60, peer, 100),
        frame(1514, peer, 101),
        frame(400, peer, 102),
    ];
    for (token, frame) in out.iter().enumerate() {
        rig.put_frame(token as u32, frame);
        rig.transmit(token as u32, false).unwrap();
    }
    rig.run();
    let mut on_wire = Vec::new();
    while let Some(frame) = rig.net.take_sent() {
        on_wire.push(frame);
    }
    assert_eq!(on_wire.len(), 3);
    for frame in &out {
        assert!(on_wire.contains(frame));
    }
    let mut done = rig.tx_done.clone();
    done.sort();
    assert_eq!(done, [(0, true), (1, true), (2, true)]);
    assert_eq!(rig.controller.stats.tx_from_send_buffer - copied_before, 2);
    assert_eq!(rig.controller.stats.tx_gpa_direct, 1);
    assert_eq!(rig.initiator.tx_in_flight(), 0);
}

/// An IPv4/TCP frame with its checksums zero.
fn tcp_frame(to: [u8; 6]) -> Vec<u8> {
    tcp_frame_of(to, 100)
}

fn tcp_frame_of(to: [u8; 6], payload: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20 + payload];
    frame[..6].copy_from_slice(&to);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x15]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
    let tcp = &mut frame[34..54];
    tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&4000u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    frame
}

fn ones_complement(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn checksum_offload_is_asked_for_and_filled_by_the_host() {
    let mut rig = started(host(), config());
    let peer = [0x02, 0, 0, 0, 0, 0x15];
    // Copied into a section (short) and sent GPA-direct (long).
    for (token, payload) in [(0u32, 100usize), (1, 1400)] {
        let mut frame = tcp_frame_of(peer, payload);
        for (i, byte) in frame[54..].iter_mut().enumerate() {
            *byte = i as u8;
        }
        rig.put_frame(token, &frame);
        rig.transmit(token, true).unwrap();
        rig.run();
        let out = rig.net.take_sent().unwrap();
        assert_eq!(
            rig.controller.stats.tx_checksums_filled,
            u64::from(token) + 1
        );
        // The IP header sums to 0xffff, and so does the TCP segment with
        // its pseudo-header.
        assert_eq!(ones_complement(&out[14..34], 0), 0xffff);
        let segment = &out[34..];
        // Source 10.0.2.15, destination 10.0.2.2, protocol 6, TCP length.
        let pseudo = 0x0a00 + 0x020f + 0x0a00 + 0x0202 + 6 + segment.len() as u32;
        assert_eq!(ones_complement(segment, pseudo), 0xffff, "{payload} bytes");
        assert_eq!(&out[54..], &frame[54..], "the payload is untouched");
    }
    assert_eq!(rig.controller.stats.tx_gpa_direct, 1);
}

#[test]
fn link_changes_reach_the_initiator() {
    let mut rig = started(host(), config());
    rig.controller.set_link(false);
    rig.run();
    assert!(rig.events.contains(&Event::Link(false)));
    assert!(!rig.initiator.device().link_up);
    rig.controller.set_link(true);
    rig.run();
    assert_eq!(rig.events.last(), Some(&Event::Link(true)));
}

#[test]
fn a_quiet_host_gets_keepalives() {
    let mut rig = started(host(), config());
    let keepalive = config().keepalive_ns;
    rig.tick(keepalive);
    rig.tick(2 * keepalive);
    assert_eq!(rig.controller.stats.keepalives, 2);
    assert!(rig.initiator.is_running());
}

#[test]
fn halt_revokes_the_buffers_at_the_host() {
    let mut rig = started(host(), config());
    let mut mem = std::mem::replace(
        &mut rig.mem,
        rig::Memory {
            memory: rig.memory,
            frame_lens: Vec::new(),
            delivered: Vec::new(),
            keep: true,
            delivered_count: 0,
            delivered_bytes: 0,
            client_has_buffers: true,
        },
    );
    rig.initiator.halt(&mut mem);
    rig.mem = mem;
    rig.run();
    assert_eq!(rig.controller.stats.halts, 1);
    assert!(!rig.controller.ready());
}

/// Each receive fault: refused (by the channel or the initiator), counted,
/// the packet completed so the host's section comes back, the device
/// still running and the next frame delivered.
#[test]
fn a_hostile_host_is_refused_and_survived() {
    let mut rig = started(host(), config());
    let mac = rig.device().unwrap().mac;
    for (index, fault) in [
        NetFault::RangeOutside,
        NetFault::BadPageSet,
        NetFault::FrameTooLong,
        NetFault::RndisLength,
        NetFault::RangeMisaligned,
        NetFault::SectionInUse,
    ]
    .into_iter()
    .enumerate()
    {
        let refused_before = rig.initiator.stats.refused;
        let channel_before = rig.channel_refusals.len();
        let delivered_before = rig.mem.delivered.len();
        rig.inject(fault);
        assert!(rig.net.push_to_guest(&frame(200, mac, index as u32)));
        rig.run();
        let good = frame(300, mac, 1000 + index as u32);
        assert!(rig.net.push_to_guest(&good));
        rig.run();
        let refused = rig.initiator.stats.refused - refused_before;
        let by_channel = rig.channel_refusals.len() - channel_before;
        match fault {
            NetFault::RangeMisaligned | NetFault::SectionInUse => {
                // Inside the buffer: the frame is intact and delivered
                // (the host broke only its own bookkeeping).
                assert!(rig.mem.delivered.len() > delivered_before, "{fault:?}");
            }
            _ => {
                assert!(refused + by_channel as u64 >= 1, "{fault:?} refused");
                assert_eq!(
                    rig.mem.delivered.len(),
                    delivered_before + 1,
                    "{fault:?}: only the good frame"
                );
            }
        }
        assert_eq!(&rig.mem.delivered.last().unwrap().1, &good, "{fault:?}");
        assert!(rig.initiator.is_running(), "{fault:?}");
    }
    assert_eq!(rig.controller.faults_pending(), 0, "every fault fired");
    assert!(rig.initiator.stats.refused_frames_too_long >= 1);
    assert!(rig.initiator.stats.refused_rndis >= 1);
    assert!(rig.initiator.stats.refused_receives >= 2);
}

#[test]
fn hostile_completions_and_messages_are_refused() {
    let mut rig = started(host(), config());
    let peer = [0x02, 0, 0, 0, 0, 0x99];
    // A completion for nothing of ours, a duplicate completion.
    rig.inject(NetFault::UnknownCompletion);
    rig.inject(NetFault::DuplicateCompletion);
    for token in 0..3 {
        rig.put_frame(token, &frame(60, peer, token));
        rig.transmit(token, false).unwrap();
        rig.run();
        rig.tick(rig.now_ns + 1);
    }
    assert_eq!(rig.controller.faults_pending(), 0);
    assert_eq!(
        rig.tx_done,
        [(0, true), (1, true), (2, true)],
        "each completed once"
    );
    let unknown = rig
        .channel_refusals
        .iter()
        .filter(|r| {
            matches!(
                r,
                Refusal::UnknownCompletion(_) | Refusal::StaleCompletion(_)
            )
        })
        .count();
    assert!(unknown >= 2, "{:?}", rig.channel_refusals);
    // Control messages the host should not send.
    let before = rig.initiator.stats.refused;
    for fault in [
        NetFault::UnsolicitedControl,
        NetFault::BadIndicateStatus,
        NetFault::UnknownNvsp,
        NetFault::ShortNvsp,
        NetFault::BadSendTable,
    ] {
        rig.inject(fault);
        rig.tick(rig.now_ns + 1);
    }
    assert_eq!(rig.controller.faults_pending(), 0);
    assert!(
        rig.initiator.stats.refused - before >= 4,
        "{:?}",
        rig.initiator.stats
    );
    assert!(rig.initiator.is_running());
    // A bad send table leaves only channels we have.
    assert!(rig.initiator.send_table().iter().all(|&c| c < 3));
    // Withheld completions: the frames stay in flight, nothing is lost.
    rig.inject(NetFault::WithholdTx { count: 2 });
    for token in 1..4 {
        rig.put_frame(token, &frame(60, peer, token));
        rig.transmit(token, false).unwrap();
    }
    rig.run();
    assert_eq!(rig.initiator.tx_in_flight(), 2);
}

/// IPv4/TCP frames of many flows: the host's RSS spreads them over the
/// channels; each receive is completed on the channel it came on (the
/// host's sections all come back, no rule broken).
#[test]
fn rss_spreads_receives_over_the_sub_channels() {
    let mut rig = started(host(), config());
    let mac = rig.device().unwrap().mac;
    for port in 0..64u16 {
        let mut frame = tcp_frame(mac);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x15]);
        frame[34..36].copy_from_slice(&(1000 + port).to_be_bytes());
        frame[36..38].copy_from_slice(&80u16.to_be_bytes());
        assert!(rig.net.push_to_guest(&frame));
    }
    rig.run();
    assert_eq!(rig.mem.delivered.len(), 64);
    let mut lanes: Vec<u8> = rig.mem.delivered.iter().map(|(lane, _, _)| *lane).collect();
    lanes.sort_unstable();
    lanes.dedup();
    assert!(lanes.len() >= 2, "all on {lanes:?}");
    assert_eq!(rig.controller.sections_in_use(), 0);
    assert!(
        rig.controller.violations.is_empty(),
        "{:?}",
        rig.controller.violations
    );
    assert!(rig.controller.stats.rx_hashed >= 64);
}
