//! The client and server halves against each other over memory regions,
//! and each against a peer writing garbage.

use component_api::Region;
use net_queue::info::FEATURE_TX_CHECKSUM;
use net_queue::{
    data_region_bytes, queue_region_bytes, ClientError, Descriptor, Device, NetClient, NetRegions,
    NetServer, BUFFER_SIZE, INFO_BYTES, TX_CHECKSUM_OFFLOAD,
};
use zerocopy::IntoBytes;

const BUFFERS: u32 = 8;
const SLOT: usize = 32;

const DEVICE: Device = Device {
    mac: [0x00, 0x15, 0x5d, 0xaa, 0xbb, 0xcc],
    mtu: 1500,
    features: FEATURE_TX_CHECKSUM,
    link_up: true,
};

fn regions(buffers: u32) -> NetRegions {
    let queue = queue_region_bytes(buffers as usize);
    NetRegions {
        rx_free: Region::leaked(queue),
        rx_active: Region::leaked(queue),
        tx_free: Region::leaked(queue),
        tx_active: Region::leaked(queue),
        info: Region::leaked(INFO_BYTES),
        data: Region::leaked(data_region_bytes(buffers as usize)),
    }
}

fn pair() -> (NetRegions, NetServer, NetClient) {
    let r = regions(BUFFERS);
    let mut server = NetServer::new(r, BUFFERS).unwrap();
    server.serve(DEVICE).unwrap();
    let mut client = NetClient::new(r, BUFFERS).unwrap();
    assert!(client.info().is_some());
    (r, server, client)
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

/// Push a raw descriptor (or any bytes) as a hostile peer could.
fn push_raw(queue: Region, bytes: &[u8]) {
    let mut producer = spsc_queue::Producer::new(queue, SLOT).unwrap();
    producer.push(bytes).unwrap();
}

fn descriptor(offset: u64, len: u32, generation: u32) -> Descriptor {
    Descriptor {
        offset,
        len,
        flags: 0,
        generation,
        reserved: 0,
    }
}

/// Client's whole view of its buffers adds up: none lost, none twice.
fn assert_all_accounted(client: &NetClient, lent_rx: u32, lent_tx: u32) {
    let (rx_driver, tx_driver) = client.with_driver();
    let _ = rx_driver;
    assert_eq!(tx_driver + client.tx_available() + lent_tx, BUFFERS);
    assert!(rx_driver + lent_rx <= BUFFERS);
}

#[test]
fn frames_flow_both_ways_and_buffers_come_back() {
    let (r, mut server, mut client) = pair();
    let info = client.info().unwrap();
    assert_eq!(info.mac, DEVICE.mac);
    assert_eq!(info.mtu, 1500);
    assert!(client.link_up());
    assert_eq!(client.with_driver(), (BUFFERS, 0), "every rx buffer posted");

    // Receive: the driver fills every posted buffer.
    for tag in 0..BUFFERS as u8 {
        let slot = server.take_rx().unwrap().unwrap();
        assert!(server
            .deliver(slot, &frame(tag, 60 + tag as usize), 0)
            .unwrap());
    }
    assert_eq!(server.take_rx().unwrap(), None, "no buffer left");
    for tag in 0..BUFFERS as u8 {
        let rx = client.receive().unwrap();
        let mut out = [0u8; BUFFER_SIZE];
        let len = client.frame(&rx, &mut out);
        assert_eq!(&out[..len], &frame(tag, 60 + tag as usize)[..]);
        client.release(rx);
    }
    assert_eq!(client.receive(), None);
    assert_eq!(
        client.with_driver(),
        (BUFFERS, 0),
        "released buffers posted again"
    );

    // Transmit.
    for tag in 0..BUFFERS as u8 {
        client
            .send(&frame(100 + tag, 1514), TX_CHECKSUM_OFFLOAD)
            .unwrap();
    }
    assert_eq!(client.alloc_tx(), None, "all with the driver");
    for tag in 0..BUFFERS as u8 {
        let tx = server.next_tx().unwrap().unwrap();
        assert_eq!(tx.flags(), TX_CHECKSUM_OFFLOAD);
        let mut out = [0u8; BUFFER_SIZE];
        let len = server.frame(&tx, &mut out).unwrap();
        assert_eq!(&out[..len], &frame(100 + tag, 1514)[..]);
        assert_eq!(
            tx.offset() as usize,
            (BUFFERS as usize + (tx.offset() as usize / BUFFER_SIZE - BUFFERS as usize))
                * BUFFER_SIZE
        );
        assert!(server.complete_tx(tx, true).unwrap());
    }
    assert_eq!(client.reclaim(), BUFFERS);
    assert_all_accounted(&client, 0, 0);
    assert_eq!(client.counters().rx_frames, 0, "published once per round");
    server.client_needs_signal();
    let counters = client.counters();
    assert_eq!(counters.rx_frames, u64::from(BUFFERS));
    assert_eq!(counters.tx_frames, u64::from(BUFFERS));
    assert_eq!(counters.tx_bytes, 1514 * u64::from(BUFFERS));
    assert_eq!(counters.bad_descriptors + counters.stale_descriptors, 0);
    let _ = r;
}

#[test]
fn a_client_that_never_reclaims_stalls_only_itself() {
    let (r, mut server, mut client) = pair();
    // The tx_free queue holds more than BUFFERS (whole pages): fill it with
    // the client's own sends and never reclaim; the server must never push
    // into a full queue, whatever the client re-sends.
    for round in 0..10 {
        for _ in 0..BUFFERS {
            if client.send(&frame(round, 64), 0).is_err() {
                break;
            }
        }
        while let Some(tx) = server.next_tx().unwrap() {
            server.complete_tx(tx, true).unwrap();
        }
        // A hostile client re-sends buffers still sitting in tx_free.
        for index in 0..BUFFERS {
            let offset = (u64::from(BUFFERS + index)) * BUFFER_SIZE as u64;
            let raw = descriptor(offset, 64, client.info().unwrap().generation);
            let mut producer = spsc_queue::Producer::new(r.tx_active, SLOT).unwrap();
            let _ = producer.push(raw.as_bytes());
        }
        while let Some(tx) = server.next_tx().unwrap() {
            server.complete_tx(tx, true).unwrap();
        }
    }
    assert!(server.tx_held() == 0);
}

#[test]
fn garbage_from_the_client_is_counted_and_dropped() {
    // The test is the (hostile) client: it writes the queues itself.
    let r = regions(BUFFERS);
    let mut server = NetServer::new(r, BUFFERS).unwrap();
    let generation = server.serve(DEVICE).unwrap();
    let tx_base = u64::from(BUFFERS) * BUFFER_SIZE as u64;
    push_raw(r.rx_free, descriptor(0, 0, generation).as_bytes());
    let held = server.take_rx().unwrap().unwrap();
    assert_eq!(held.offset(), 0);
    let bad_rx = [
        descriptor(tx_base, 0, generation),         // a tx buffer
        descriptor(100, 0, generation),             // misaligned
        descriptor(u64::MAX - 2047, 0, generation), // far outside
        descriptor(2 * tx_base, 0, generation),     // past the end
        descriptor(2048, 60, generation),           // "empty" with a length
        descriptor(2048, 0, generation + 7),        // another generation
        descriptor(0, 0, generation),               // held by the server already
    ];
    for raw in bad_rx {
        push_raw(r.rx_free, raw.as_bytes());
    }
    push_raw(r.rx_free, &[0xff; 5]); // a message of the wrong size
    assert_eq!(server.take_rx().unwrap(), None);
    let bad_tx = [
        descriptor(0, 60, generation),                           // an rx buffer
        descriptor(tx_base + 1, 60, generation),                 // misaligned
        descriptor(tx_base, 0, generation),                      // empty frame
        descriptor(tx_base, 13, generation),                     // shorter than a header
        descriptor(tx_base, BUFFER_SIZE as u32 + 1, generation), // longer than a buffer
        descriptor(tx_base, 60, 0),                              // generation 0
    ];
    for raw in bad_tx {
        push_raw(r.tx_active, raw.as_bytes());
    }
    assert_eq!(server.next_tx().unwrap(), None);
    let counters = server.counters();
    assert_eq!(counters.bad_descriptors, 6 + 1 + 5);
    assert_eq!(counters.stale_descriptors, 1 + 1);
    // A good frame after the garbage still goes through.
    r.data.write(tx_base as usize, &frame(1, 60)).unwrap();
    push_raw(r.tx_active, descriptor(tx_base, 60, generation).as_bytes());
    let tx = server.next_tx().unwrap().unwrap();
    assert_eq!(tx.len(), 60);
    let mut out = [0u8; BUFFER_SIZE];
    assert_eq!(server.frame(&tx, &mut out).unwrap(), 60);
    assert_eq!(&out[..60], &frame(1, 60)[..]);
    // A duplicate of a frame the server holds is refused.
    push_raw(
        r.tx_active,
        descriptor(tx.offset(), 60, generation).as_bytes(),
    );
    assert_eq!(server.next_tx().unwrap(), None);
    assert_eq!(server.counters().bad_descriptors, 13);
    // A corrupt index is an error, not a crash.
    r.tx_active.write(0, &u32::MAX.to_ne_bytes()).unwrap();
    assert!(server.next_tx().is_err());
    assert_eq!(server.stats().peer_corrupted, 1);
}

#[test]
fn garbage_from_the_driver_is_counted_and_dropped() {
    let (r, mut server, mut client) = pair();
    let generation = client.info().unwrap().generation;
    let tx_base = u64::from(BUFFERS) * BUFFER_SIZE as u64;
    // The test is the (hostile) driver writing rx_active and tx_free; the
    // server only published the info page.
    let _ = &mut server;
    let bad_rx = [
        descriptor(tx_base, 60, generation),               // a tx buffer
        descriptor(7, 60, generation),                     // misaligned
        descriptor(u64::MAX - 2047, 60, generation),       // far outside
        descriptor(0, BUFFER_SIZE as u32 + 1, generation), // longer than a buffer
        descriptor(0, 5, generation),                      // shorter than a header
        descriptor(0, 60, generation + 1),                 // another generation
    ];
    for raw in bad_rx {
        push_raw(r.rx_active, raw.as_bytes());
    }
    push_raw(r.rx_active, &[1, 2, 3]);
    assert_eq!(client.receive(), None);
    // A frame in a buffer the client never posted / holds itself: first
    // the legitimate delivery, then the same descriptor again.
    r.data.write(0, &frame(9, 60)).unwrap();
    push_raw(r.rx_active, descriptor(0, 60, generation).as_bytes());
    let rx = client.receive().unwrap();
    let mut out = [0u8; BUFFER_SIZE];
    assert_eq!(client.frame(&rx, &mut out), 60);
    assert_eq!(&out[..60], &frame(9, 60)[..]);
    push_raw(r.rx_active, descriptor(0, 60, generation).as_bytes());
    assert_eq!(
        client.receive(),
        None,
        "the buffer is the client's, not the driver's"
    );
    client.release(rx);
    // tx_free naming buffers the driver does not hold.
    push_raw(r.tx_free, descriptor(tx_base, 0, generation).as_bytes());
    push_raw(r.tx_free, descriptor(0, 0, generation).as_bytes());
    assert_eq!(client.reclaim(), 0);
    let stats = client.stats();
    assert_eq!(stats.bad_descriptors, 5 + 1 + 1 + 2);
    assert_eq!(stats.stale_descriptors, 1);
    assert_all_accounted(&client, 0, 0);
    // A corrupt index: counted, no crash, nothing received.
    r.rx_active.write(0, &u32::MAX.to_ne_bytes()).unwrap();
    assert_eq!(client.receive(), None);
    assert!(client.stats().peer_corrupted >= 1);
}

/// A tiny deterministic generator for garbage.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_garbage_in_every_shared_word_never_panics_and_buffers_are_conserved() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let (r, mut server, mut client) = pair();
        let generation = client.info().unwrap().generation;
        client.send(&frame(round as u8, 100), 0).ok();
        // Scribble over the queues and the info page as a broken peer might:
        // indices, lengths, descriptors (some plausible, some not).
        let regions = [r.rx_free, r.rx_active, r.tx_free, r.tx_active, r.info];
        for _ in 0..40 {
            let region = regions[(random.next() % 5) as usize];
            let at = (random.next() as usize % (region.len() / 8)) * 8;
            let value = match random.next() % 4 {
                0 => random.next(),
                1 => random.next() % 64,
                2 => (random.next() % (2 * u64::from(BUFFERS))) * BUFFER_SIZE as u64,
                _ => u64::from(generation) << 32 | (random.next() % 2048),
            };
            region.write(at, &value.to_ne_bytes()).unwrap();
        }
        for _ in 0..4 {
            if let Ok(Some(slot)) = server.take_rx() {
                let _ = server.deliver(slot, &frame(1, 64), 0);
            }
            if let Ok(Some(tx)) = server.next_tx() {
                let _ = server.complete_tx(tx, true);
            }
            let _ = server.client_needs_signal();
            let _ = server.prepare_to_sleep();
            let mut lent = Vec::new();
            while let Some(rx) = client.receive() {
                let mut out = [0u8; BUFFER_SIZE];
                assert!(client.frame(&rx, &mut out) <= BUFFER_SIZE);
                lent.push(rx);
                assert!(lent.len() <= BUFFERS as usize, "a buffer received twice");
            }
            for rx in lent {
                client.release(rx);
            }
            client.reclaim();
            let _ = client.send(&frame(2, 64), 0);
            let _ = client.driver_needs_signal();
            let _ = client.prepare_to_sleep();
            let _ = client.counters();
            let (rx_driver, tx_driver) = client.with_driver();
            assert!(rx_driver <= BUFFERS);
            assert_eq!(tx_driver + client.tx_available(), BUFFERS);
        }
    }
}

#[test]
fn a_driver_restart_gives_every_buffer_back_and_old_descriptors_are_dropped() {
    let (r, mut old, mut client) = pair();
    let first = client.info().unwrap().generation;
    // The old driver holds some rx slots and some tx frames when it dies.
    let _held_slot = old.take_rx().unwrap().unwrap();
    let _other = old.take_rx().unwrap().unwrap();
    for tag in 0..3 {
        client.send(&frame(tag, 80), 0).unwrap();
    }
    let _held_tx = old.next_tx().unwrap().unwrap();
    // One frame sent and completed before the crash, not yet reclaimed.
    let sent = old.next_tx().unwrap().unwrap();
    old.complete_tx(sent, true).unwrap();
    // One frame delivered before the crash and not yet read by the client.
    let delivered = old.take_rx().unwrap().unwrap();
    old.deliver(delivered, &frame(50, 70), 0).unwrap();
    // One more send queued but not taken.
    client.send(&frame(7, 80), 0).unwrap();
    assert_eq!(client.with_driver().1, 4);

    let mut new = NetServer::new(r, BUFFERS).unwrap();
    assert_eq!(client.info(), None, "not serving between new() and serve()");
    assert_eq!(
        client.send(&frame(8, 80), 0),
        Err(ClientError::NotReady),
        "nothing is sent while no driver serves"
    );
    let second = new.serve(DEVICE).unwrap();
    assert_ne!(first, second);
    assert!(client.restart_detected());
    assert!(!client.restart_detected(), "reported once");
    assert_eq!(
        client.with_driver(),
        (BUFFERS, 0),
        "all rx posted again, all tx back"
    );
    assert_eq!(client.tx_available(), BUFFERS);
    assert_eq!(client.stats().reclaimed_at_restart, u64::from(BUFFERS) + 4);
    // The frame the old driver delivered is of the old generation: dropped.
    assert_eq!(client.receive(), None);
    assert_eq!(client.stats().stale_descriptors, 1);
    // So is the old driver's completed send: the buffer is free already.
    assert_eq!(client.reclaim(), 0);
    assert_eq!(client.stats().stale_descriptors, 2);
    let _ = old;
    // The new driver sees exactly the re-posted buffers, none twice, and
    // none of the old generation's queued entries.
    let mut slots = Vec::new();
    while let Some(slot) = new.take_rx().unwrap() {
        assert_eq!(slot.generation(), second);
        slots.push(slot);
    }
    assert_eq!(slots.len(), BUFFERS as usize);
    assert_eq!(
        new.next_tx().unwrap(),
        None,
        "the queued send was of the old generation"
    );
    for (tag, slot) in slots.into_iter().enumerate() {
        new.deliver(slot, &frame(tag as u8, 90), 0).unwrap();
    }
    let mut received = 0;
    while let Some(rx) = client.receive() {
        received += 1;
        client.release(rx);
    }
    assert_eq!(received, BUFFERS);
    client.send(&frame(9, 80), 0).unwrap();
    let tx = new.next_tx().unwrap().unwrap();
    assert_eq!(tx.generation(), second);
    new.complete_tx(tx, true).unwrap();
    assert_eq!(client.reclaim(), 1);
    assert_all_accounted(&client, 0, 0);
}

#[test]
fn many_restarts_in_the_middle_of_traffic_leak_nothing() {
    let r = regions(BUFFERS);
    let mut client = NetClient::new(r, BUFFERS).unwrap();
    let mut random = XorShift(42);
    let mut lent_rx = Vec::new();
    for _ in 0..100 {
        let mut server = NetServer::new(r, BUFFERS).unwrap();
        server.serve(DEVICE).unwrap();
        for _ in 0..(random.next() % 40) {
            match random.next() % 5 {
                0 => {
                    let _ = client.send(&frame(3, 64), 0);
                }
                1 => {
                    if let Some(slot) = server.take_rx().unwrap() {
                        server.deliver(slot, &frame(4, 64), 0).unwrap();
                    }
                }
                2 => {
                    if let Some(tx) = server.next_tx().unwrap() {
                        server
                            .complete_tx(tx, random.next().is_multiple_of(2))
                            .unwrap();
                    }
                }
                3 => {
                    if let Some(rx) = client.receive() {
                        lent_rx.push(rx);
                    }
                }
                _ => {
                    if let Some(rx) = lent_rx.pop() {
                        client.release(rx);
                    }
                    client.reclaim();
                }
            }
        }
        // The driver dies here, holding whatever it holds.
    }
    let mut server = NetServer::new(r, BUFFERS).unwrap();
    server.serve(DEVICE).unwrap();
    assert!(client.restart_detected());
    let lent = lent_rx.len() as u32;
    for rx in lent_rx {
        client.release(rx);
    }
    assert!(lent <= BUFFERS);
    assert_eq!(client.with_driver(), (BUFFERS, 0));
    assert_eq!(client.tx_available(), BUFFERS);
    let mut slots = 0;
    while server.take_rx().unwrap().is_some() {
        slots += 1;
    }
    assert_eq!(
        slots, BUFFERS,
        "the new driver gets each buffer exactly once"
    );
    assert_eq!(server.counters().bad_descriptors, 0);
}

#[test]
fn signals_are_sent_only_to_a_sleeping_peer() {
    let (_r, mut server, mut client) = pair();
    // The driver went to sleep; the client's posts in pair() predate that.
    assert!(server.take_rx().unwrap().is_some());
    while server.take_rx().unwrap().is_some() {}
    assert!(server.prepare_to_sleep().unwrap());
    client.send(&frame(1, 60), 0).unwrap();
    assert!(client.driver_needs_signal());
    assert!(!client.driver_needs_signal(), "one signal per sleep");
    // The client sleeps; the driver completes the frame: one signal.
    assert!(client.prepare_to_sleep());
    let tx = server.next_tx().unwrap().unwrap();
    server.complete_tx(tx, true).unwrap();
    assert!(server.client_needs_signal());
    assert!(!server.client_needs_signal());
    // A busy client (not sleeping) is not signalled.
    client.reclaim();
    client.send(&frame(2, 60), 0).unwrap();
    let tx = server.next_tx().unwrap().unwrap();
    server.complete_tx(tx, true).unwrap();
    assert!(!server.client_needs_signal());
}

#[test]
fn link_state_counters_and_give_back() {
    let (_r, mut server, mut client) = pair();
    assert!(client.link_up());
    server.set_link(false);
    assert!(!client.link_up());
    assert!(!client.restart_detected(), "a link change is no restart");
    server.set_link(true);
    server.counters_mut().rx_no_buffer += 3;
    let slot = server.take_rx().unwrap().unwrap();
    assert!(server.give_back(slot).unwrap());
    server.publish_counters();
    assert_eq!(client.receive(), None, "an unfilled buffer is no frame");
    assert_eq!(client.with_driver(), (BUFFERS, 0), "and it is posted again");
    let counters = client.counters();
    assert_eq!(counters.link_changes, 2);
    assert_eq!(counters.rx_no_buffer, 3);
    assert_eq!(counters.serves, 1);
    server.withdraw();
    assert!(!client.link_up());
    assert_eq!(client.info(), None);
}

#[test]
fn construction_checks_the_regions() {
    let r = regions(BUFFERS);
    assert!(NetServer::new(r, 0).is_err());
    assert!(
        NetServer::new(r, BUFFERS + 1).is_err(),
        "data region too small"
    );
    assert!(NetClient::new(r, BUFFERS * 2).is_err());
    let small = NetRegions {
        rx_free: Region::leaked(64),
        ..r
    };
    assert!(NetClient::new(small, BUFFERS).is_err());
    let tiny_info = NetRegions {
        info: Region::leaked(16),
        ..r
    };
    assert!(NetServer::new(tiny_info, BUFFERS).is_err());
}

#[test]
fn the_client_asks_the_driver_to_wake_it() {
    let (_r, mut server, mut client) = pair();
    assert_eq!(server.client_wake_deadline(), None);
    assert!(!server.wake_due(1_000));
    client.set_wake_deadline(Some(5_000));
    assert_eq!(server.client_wake_deadline(), Some(5_000));
    assert!(!server.wake_due(4_999));
    assert!(server.wake_due(5_000));
    assert!(!server.wake_due(6_000), "once per deadline");
    client.set_wake_deadline(Some(7_000));
    assert!(server.wake_due(8_000));
    client.set_wake_deadline(None);
    assert!(!server.wake_due(u64::MAX));
    // The driver's half of the page is untouched by the client's word.
    assert!(client.info().is_some());
}

#[test]
fn a_deadline_already_served_is_not_owed_again() {
    // The driver times only what it still owes: timing a served deadline
    // again fires at once, over and over, and on seL4 a driver looping on
    // its timer starves the client below it (web stopped answering).
    let (_r, mut server, mut client) = pair();
    assert_eq!(server.client_wake_owed(), None);
    client.set_wake_deadline(Some(5_000));
    assert_eq!(server.client_wake_owed(), Some(5_000));
    assert!(server.wake_due(5_000));
    assert_eq!(server.client_wake_owed(), None, "served, still in the page");
    assert_eq!(server.client_wake_deadline(), Some(5_000));
    client.set_wake_deadline(Some(9_000));
    assert_eq!(server.client_wake_owed(), Some(9_000));
}

#[test]
fn a_client_with_sent_buffers_waiting_can_still_sleep() {
    // Completed transmit buffers in the free queue are no work for the
    // client: prepare_to_sleep takes them back and may say "sleep", so the
    // client's request for a signal stands and the next frame wakes it.
    let (_r, mut server, mut client) = pair();
    while server.take_rx().unwrap().is_some() {}
    client.send(&frame(3, 60), 0).unwrap();
    let tx = server.next_tx().unwrap().unwrap();
    server.complete_tx(tx, true).unwrap();
    let available = client.tx_available();
    assert!(client.prepare_to_sleep(), "nothing to do but sleep");
    assert_eq!(client.tx_available(), available + 1, "the buffer came back");
    let slot = server.take_rx();
    assert!(slot.is_ok());
}
