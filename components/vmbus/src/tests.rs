//! The bus manager against a scripted host: the test plays synic (a fake
//! `synic_call` that records posted messages and bindings) and the host (it
//! pushes message slots into the `synic_messages` queue and notifies).
extern crate std;

use super::*;
use component_api::Region;
use env_double::EnvDouble;
use spsc_queue::Producer;
use std::borrow::ToOwned;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec as StdVec;
use vmbus_protocol::guid::class;
use vmbus_protocol::messages::{
    AllOffersDelivered, GpadlTorndown, OpenChannelResult, RescindChannelOffer, UnloadResponse,
    VersionResponse,
};
use vmbus_protocol::WireGuid;

const MONITOR_GPA: u64 = 0x30_0000;
/// Ring GPAs, in DEVICES order (heartbeat, shutdown, timesync, kvp).
const RING_GPAS: [u64; 4] = [0x40_0000, 0x50_0000, 0x60_0000, 0x70_0000];
const V5_3: ProtocolVersion = ProtocolVersion::V5_3;

#[derive(Default)]
struct FakeSynic {
    posted: StdVec<(u32, StdVec<u8>)>,
    bound: BTreeMap<u32, (u32, String)>,
    /// Each Bind's (monitor id, interrupt page bit), by relid.
    signalling: BTreeMap<u32, (Option<u8>, bool)>,
    /// Each Bind's channel index (0 a primary, K sub-channel K), by relid.
    channel_index: BTreeMap<u32, u8>,
    unbinds: StdVec<u32>,
    /// Relids vmbus announced as opening (before OpenChannel).
    opening: StdVec<u32>,
    /// Connections that answer InvalidConnectionId.
    invalid_connections: StdVec<u32>,
    /// The next this-many posts answer InsufficientBuffers.
    full_posts: usize,
    /// If set: this many more posts are taken, then the port is full.
    port_room: Option<usize>,
    refuse_binds: bool,
    restores: usize,
}

struct Rig {
    env: EnvDouble,
    synic: Rc<RefCell<FakeSynic>>,
    host: Producer,
    rings: [Region; 4],
    bus: Vmbus,
}

fn instance(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn rig_with(kvp_ring: usize, setup: impl FnOnce(&mut FakeSynic)) -> Rig {
    let mut env = EnvDouble::new();
    assert_eq!(env.add_region(8192, true), regions::SYNIC_MESSAGES);
    assert_eq!(
        env.add_region_address_only(12288, MONITOR_GPA),
        regions::MONITOR_PAGES
    );
    assert_eq!(env.add_region(4096, true), regions::VMBUS_SESSION);
    let ring_names = [
        [
            regions::HEARTBEAT_RING_OUT_CONTROL,
            regions::HEARTBEAT_RING_OUT,
            regions::HEARTBEAT_RING_IN_CONTROL,
            regions::HEARTBEAT_RING_IN,
        ],
        [
            regions::SHUTDOWN_RING_OUT_CONTROL,
            regions::SHUTDOWN_RING_OUT,
            regions::SHUTDOWN_RING_IN_CONTROL,
            regions::SHUTDOWN_RING_IN,
        ],
        [
            regions::TIMESYNC_RING_OUT_CONTROL,
            regions::TIMESYNC_RING_OUT,
            regions::TIMESYNC_RING_IN_CONTROL,
            regions::TIMESYNC_RING_IN,
        ],
        [
            regions::KVP_RING_OUT_CONTROL,
            regions::KVP_RING_OUT,
            regions::KVP_RING_IN_CONTROL,
            regions::KVP_RING_IN,
        ],
    ];
    for (i, names) in ring_names.iter().enumerate() {
        let total = if i == 3 { kvp_ring } else { 32768 };
        let out_bytes = ids::drivers::DRIVERS[i].ring_out_bytes;
        // Back to back in guest memory, so the GPADL's PFNs are one run:
        // out control, out data, in control, in data.
        let sizes = [4096, out_bytes - 4096, 4096, total - out_bytes - 4096];
        let mut gpa = RING_GPAS[i];
        for (name, size) in names.iter().zip(sizes) {
            // Known by address only, as the description grants it: any
            // `env.region` of a ring would panic.
            assert_eq!(env.add_region_address_only(size, gpa), *name);
            gpa += size as u64;
        }
    }
    // What the tests look at: each driver's out control page.
    let rings = ring_names.map(|names| env.test_view(names[0]));
    let synic = Rc::new(RefCell::new(FakeSynic::default()));
    setup(&mut synic.borrow_mut());
    let fake = synic.clone();
    env.on_typed_call::<synic::Synic>(
        channels::SYNIC_CALL,
        move |request: synic::Request| -> synic::Reply {
            let mut fake = fake.borrow_mut();
            match request {
                synic::Request::PostMessage {
                    connection_id,
                    payload,
                } => {
                    if fake.invalid_connections.contains(&connection_id) {
                        return synic::Reply::HypercallFailed { status: 0x12 };
                    }
                    if fake.full_posts > 0 {
                        fake.full_posts -= 1;
                        return synic::Reply::HypercallFailed { status: 0x13 };
                    }
                    match fake.port_room {
                        Some(0) => return synic::Reply::HypercallFailed { status: 0x13 },
                        Some(room) => fake.port_room = Some(room - 1),
                        None => {}
                    }
                    fake.posted.push((connection_id, payload.to_vec()));
                    synic::Reply::Done
                }
                synic::Request::Bind {
                    relid,
                    connection_id,
                    driver,
                    channel,
                    monitor_id,
                    interrupt_page_bit,
                } => {
                    fake.channel_index.insert(relid, channel);
                    fake.signalling
                        .insert(relid, (monitor_id, interrupt_page_bit));
                    if fake.refuse_binds {
                        return synic::Reply::HypercallFailed { status: 0xFFFF };
                    }
                    // Named through the table synic has too.
                    let name = ids::drivers::DRIVERS
                        .iter()
                        .find(|row| row.id == driver)
                        .map_or("?", |row| row.name);
                    fake.bound
                        .insert(relid, (connection_id, String::from(name)));
                    synic::Reply::Done
                }
                synic::Request::Unbind { relid } => {
                    fake.bound.remove(&relid);
                    fake.unbinds.push(relid);
                    synic::Reply::Done
                }
                synic::Request::Opening { relid } => {
                    fake.opening.push(relid);
                    synic::Reply::Done
                }
                synic::Request::SignalHost { .. } => synic::Reply::HypercallFailed { status: 5 },
                synic::Request::Pending => synic::Reply::Pending(0),
                synic::Request::SetTimeout { .. } => synic::Reply::Done,
                synic::Request::Status => synic::Reply::Status(Default::default()),
                synic::Request::Restore { bindings, opening } => {
                    fake.bound.clear();
                    fake.opening = opening.to_vec();
                    for binding in bindings {
                        let name = ids::drivers::DRIVERS
                            .iter()
                            .find(|row| row.id == binding.driver)
                            .map_or("?", |row| row.name);
                        fake.bound
                            .insert(binding.relid, (binding.connection_id, String::from(name)));
                    }
                    fake.restores += 1;
                    synic::Reply::Done
                }
            }
        },
    );
    let host = Producer::new(
        env.test_view(regions::SYNIC_MESSAGES),
        vmbus_ipc::MESSAGE_QUEUE_SLOT,
    )
    .unwrap();
    let bus = Vmbus::init(&mut env);
    Rig {
        env,
        synic,
        host,
        rings,
        bus,
    }
}

fn rig() -> Rig {
    rig_with(32768, |_| {})
}

fn slot(payload: &[u8]) -> [u8; 256] {
    let mut slot = [0u8; 256];
    slot[0..4].copy_from_slice(&1u32.to_le_bytes());
    slot[4] = payload.len() as u8;
    slot[16..16 + payload.len()].copy_from_slice(payload);
    slot
}

impl Rig {
    /// The host sends a message: synic queues it and notifies vmbus.
    fn send(&mut self, payload: &[u8]) {
        self.host.push(&slot(payload)).unwrap();
        let mut set = ChannelSet::EMPTY;
        set.insert(channels::SYNIC);
        self.bus.notified(&mut self.env, set);
    }

    /// Messages posted since the last look, parsed as the host would.
    fn posted(&mut self) -> StdVec<(u32, ChannelMessage)> {
        let posted = core::mem::take(&mut self.synic.borrow_mut().posted);
        posted
            .into_iter()
            .map(|(connection, bytes)| (connection, parse(&bytes, V5_3).unwrap()))
            .collect()
    }

    fn request(&mut self, channel: Channel, request: bus::Request) -> bus::Reply {
        self.try_request(channel, request).unwrap()
    }

    fn try_request(
        &mut self,
        channel: Channel,
        request: bus::Request,
    ) -> Result<bus::Reply, Refusal> {
        let message = env_double::encode_request::<bus::Bus>(&request);
        let mut reply = [0u8; 1024];
        let used = self
            .bus
            .protected(&mut self.env, channel, &message, &mut reply)?;
        Ok(env_double::decode_reply::<bus::Bus>(&reply[..used]))
    }

    fn query(&mut self, d: usize) -> ChannelInfo {
        match self.request(
            self.bus.drivers[d].wiring.call,
            bus::Request::Query { channel: 0 },
        ) {
            bus::Reply::Channel(info) => info,
            other => panic!("{other:?}"),
        }
    }

    fn state(&mut self, d: usize) -> ChannelState {
        self.query(d).state
    }

    fn open(&mut self, d: usize) -> bus::Reply {
        let call_end = self.bus.drivers[d].wiring.call;
        self.request(
            call_end,
            bus::Request::Open {
                channel: 0,
                user_data: Vec::new(),
            },
        )
    }

    fn version_response(&mut self, supported: bool, msg_conn_id: u32) {
        let mut response = VersionResponse::empty();
        response.version_supported = supported as u8;
        response.msg_conn_id = msg_conn_id.into();
        self.send(response.as_bytes());
    }

    /// Negotiate 5.3 with messages on connection 4.
    fn connect(&mut self) {
        let posted = self.posted();
        assert!(matches!(
            posted[..],
            [(4, ChannelMessage::InitiateContact(_))]
        ));
        self.version_response(true, 4);
        assert!(matches!(
            self.posted()[..],
            [(4, ChannelMessage::RequestOffers(_))]
        ));
    }

    fn offer(&mut self, relid: u32, class: uuid::Uuid, instance: uuid::Uuid) {
        let mut offer = OfferChannel::empty();
        offer.interface_type = WireGuid::from_uuid(class);
        offer.interface_instance = WireGuid::from_uuid(instance);
        offer.child_relid = relid.into();
        offer.connection_id = (0x1_0000 + relid).into();
        offer.chn_flags = vmbus_protocol::messages::OfferFlags::NAMED_PIPE_MODE
            .bits()
            .into();
        offer.user_def[..4].copy_from_slice(&4u32.to_le_bytes());
        self.send(offer.as_bytes());
    }

    fn all_offers_delivered(&mut self) {
        self.send(AllOffersDelivered::empty().as_bytes());
    }

    /// Connected, the four integration components offered (relids 1-4).
    fn offered() -> Rig {
        let mut rig = rig();
        rig.connect();
        rig.offer_all();
        rig
    }

    fn offer_all(&mut self) {
        self.offer(1, class::HEARTBEAT, instance(1));
        self.offer(2, class::SHUTDOWN, instance(2));
        self.offer(3, class::TIMESYNC, instance(3));
        self.offer(4, class::KVP, instance(4));
        self.all_offers_delivered();
    }

    fn gpadl_created(&mut self, relid: u32, gpadl_id: u32, status: u32) {
        let mut created = GpadlCreated::empty();
        created.child_relid = relid.into();
        created.gpadl_id = gpadl_id.into();
        created.creation_status = status.into();
        self.send(created.as_bytes());
    }

    fn open_result(&mut self, relid: u32, open_id: u32, status: u32) {
        let mut result = OpenChannelResult::empty();
        result.child_relid = relid.into();
        result.open_id = open_id.into();
        result.status = status.into();
        self.send(result.as_bytes());
    }

    fn torndown(&mut self, gpadl_id: u32) {
        let mut torndown = GpadlTorndown::empty();
        torndown.gpadl_id = gpadl_id.into();
        self.send(torndown.as_bytes());
    }

    fn rescind(&mut self, relid: u32) {
        let mut rescind = RescindChannelOffer::empty();
        rescind.child_relid = relid.into();
        self.send(rescind.as_bytes());
    }

    /// VSC `d` opens: returns the GPADL id the host saw.
    fn begin_open(&mut self, d: usize) -> u32 {
        assert_eq!(self.open(d), bus::Reply::Accepted);
        let posted = self.posted();
        match &posted[..] {
            [(4, ChannelMessage::GpadlHeader(header))] => header.fixed.gpadl_id.get(),
            other => panic!("{other:?}"),
        }
    }

    /// GpadlCreated for it: returns the open id of the OpenChannel.
    fn create(&mut self, relid: u32, gpadl_id: u32) -> u32 {
        self.gpadl_created(relid, gpadl_id, 0);
        match &self.posted()[..] {
            [(4, ChannelMessage::OpenChannel(open))] => {
                assert_eq!(open.ring_gpadl_id.get(), gpadl_id);
                open.open_id.get()
            }
            other => panic!("{other:?}"),
        }
    }

    /// VSC `d` (relid d+1) opens all the way; returns its GPADL id.
    fn open_fully(&mut self, d: usize) -> u32 {
        let relid = d as u32 + 1;
        let gpadl = self.begin_open(d);
        let open_id = self.create(relid, gpadl);
        self.open_result(relid, open_id, 0);
        assert_eq!(self.state(d), ChannelState::Open);
        gpadl
    }

    fn rejected(&self) -> u32 {
        self.bus.counters().rejected
    }
}

#[test]
fn the_newest_version_goes_first_to_connection_4_with_sint_2_and_monitor_pages() {
    let mut rig = rig();
    let posted = rig.posted();
    let [(4, ChannelMessage::InitiateContact(contact))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(contact.version_requested.get(), ProtocolVersion::V5_3.0);
    assert_eq!(contact.msg_sint(), 2);
    assert_eq!(contact.monitor_page1.get(), MONITOR_GPA);
    assert_eq!(contact.monitor_page2.get(), MONITOR_GPA + 4096);
    // 5.x: later messages go to the connection the host names.
    rig.version_response(true, 0x99);
    assert!(matches!(
        rig.posted()[..],
        [(0x99, ChannelMessage::RequestOffers(_))]
    ));
    assert!(
        rig.env.console.contains("VMBus 5.3 negotiated"),
        "{}",
        rig.env.console
    );
}

#[test]
fn fallback_5_3_to_4_0_skips_5_x_on_invalid_connection_id() {
    // An older host: connection 4 does not exist, 4.1 is refused, 4.0 taken.
    let mut rig = rig_with(32768, |synic| synic.invalid_connections.push(4));
    let posted = rig.posted();
    let [(1, ChannelMessage::InitiateContact(contact))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(contact.version_requested.get(), ProtocolVersion::V4_1.0);
    assert_eq!(
        contact.interrupt_page_or_target_info.get(),
        MONITOR_GPA + 8192,
        "before 5.0: the interrupt page, not a msg_sint"
    );
    rig.version_response(false, 0);
    let posted = rig.posted();
    let [(1, ChannelMessage::InitiateContact(contact))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(contact.version_requested.get(), ProtocolVersion::V4_0.0);
    // Before 5.0 msg_conn_id means nothing: everything goes to connection 1.
    rig.version_response(true, 0x77);
    assert!(matches!(
        rig.posted()[..],
        [(1, ChannelMessage::RequestOffers(_))]
    ));
    assert_eq!(rig.bus.version, Some(ProtocolVersion::V4_0));
    assert_eq!(rig.query(0).vmbus_version, ProtocolVersion::V4_0.0);
    assert!(
        rig.env.console.contains("older host"),
        "{}",
        rig.env.console
    );
}

#[test]
fn fallback_all_the_way_to_2_4() {
    let mut rig = rig_with(32768, |synic| synic.invalid_connections.push(4));
    for expected in [
        ProtocolVersion::V4_1,
        ProtocolVersion::V4_0,
        ProtocolVersion::V3_0,
        ProtocolVersion::V2_4,
    ] {
        let posted = rig.posted();
        let [(1, ChannelMessage::InitiateContact(contact))] = &posted[..] else {
            panic!("{posted:?}");
        };
        assert_eq!(contact.version_requested.get(), expected.0);
        rig.version_response(expected == ProtocolVersion::V2_4, 0);
    }
    assert_eq!(rig.bus.version, Some(ProtocolVersion::V2_4));
    assert!(matches!(
        rig.posted()[..],
        [(1, ChannelMessage::RequestOffers(_))]
    ));
}

#[test]
fn a_5_x_host_that_refuses_5_3_gets_5_2_on_connection_4() {
    let mut rig = rig();
    rig.posted();
    rig.version_response(false, 0);
    let posted = rig.posted();
    let [(4, ChannelMessage::InitiateContact(contact))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(contact.version_requested.get(), ProtocolVersion::V5_2.0);
}

#[test]
fn no_common_version_disconnects_and_a_stray_response_is_rejected() {
    let mut rig = rig();
    for _ in 0..8 {
        rig.version_response(false, 0);
    }
    assert_eq!(rig.bus.phase, Phase::Disconnected);
    assert!(rig.env.console.contains("no VMBus version in common"));
    let before = rig.rejected();
    rig.version_response(true, 4);
    assert_eq!(rig.rejected(), before + 1);
    assert_eq!(rig.bus.version, None);
}

#[test]
fn a_repeated_version_response_is_rejected() {
    let mut rig = rig();
    rig.connect();
    rig.version_response(true, 4);
    assert_eq!(rig.rejected(), 1);
    assert!(rig.posted().is_empty());
}

#[test]
fn offers_are_matched_to_drivers_and_unknown_classes_left_alone() {
    let mut rig = rig();
    rig.connect();
    rig.env.notified.clear();
    rig.offer(1, class::HEARTBEAT, instance(1));
    rig.offer(9, class::VSS, instance(9));
    rig.all_offers_delivered();
    assert_eq!(rig.env.notifications_on(channels::HEARTBEAT_EVENT), 1);
    assert_eq!(rig.env.notifications_on(channels::KVP_EVENT), 0);
    let info = rig.query(0);
    assert_eq!(info.state, ChannelState::Offered);
    assert_eq!(info.relid, 1);
    assert_eq!(info.connection_id, 0x1_0001);
    assert_eq!(info.class, *class::HEARTBEAT.as_bytes());
    assert_eq!(info.instance, [1; 16]);
    assert_eq!(&info.user_defined[..4], &4u32.to_le_bytes());
    assert_eq!(info.vmbus_version, ProtocolVersion::V5_3.0);
    assert_eq!(rig.state(3), ChannelState::NotOffered);
    assert!(rig.env.console.contains("vss"), "{}", rig.env.console);
    assert!(rig.env.console.contains("no driver"), "{}", rig.env.console);
    // The VSS device is a device row, claimed by nobody (after the four
    // ICs, keyboard, mouse, storage, network and video, system.toml's drivers).
    let client = channels::CLIENT;
    match rig.request(client, bus::Request::Device { index: 9 }) {
        bus::Reply::Device(row) => {
            assert_eq!(row.relid, 9);
            assert_eq!(row.driver.as_str(), "-");
        }
        other => panic!("{other:?}"),
    }
    // Its rescind is answered with RelIdReleased at once.
    rig.rescind(9);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::RelIdReleased(r))] if r.child_relid.get() == 9
    ));
    assert_eq!(
        rig.request(client, bus::Request::Device { index: 9 }),
        bus::Reply::NoSuchDevice
    );
}

#[test]
fn bad_offers_are_rejected() {
    let mut rig = rig();
    // Before negotiation nothing parses.
    rig.offer(1, class::HEARTBEAT, instance(1));
    assert_eq!(rig.rejected(), 1);
    rig.connect();
    rig.offer(0, class::HEARTBEAT, instance(1));
    rig.offer(2048, class::HEARTBEAT, instance(1));
    rig.offer(5, class::HEARTBEAT, instance(1));
    rig.offer(5, class::KVP, instance(2));
    assert_eq!(rig.rejected(), 4);
    assert_eq!(rig.state(3), ChannelState::NotOffered);
    // A second heartbeat (another instance) has no free driver.
    rig.offer(6, class::HEARTBEAT, instance(6));
    assert_eq!(rig.query(0).relid, 5);
    assert!(rig.env.console.contains("already drives relid 5"));
}

#[test]
fn open_builds_the_gpadl_from_the_ring_region_then_opens_and_binds() {
    let mut rig = Rig::offered();
    let generation = rig.query(0).generation;
    assert_eq!(rig.open(0), bus::Reply::Accepted);
    assert_eq!(rig.state(0), ChannelState::Opening);
    let posted = rig.posted();
    let [(4, ChannelMessage::GpadlHeader(header))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(header.fixed.child_relid.get(), 1);
    assert_eq!(header.fixed.range_count.get(), 1);
    assert_eq!(header.fixed.range_buflen.get(), 8 + 8 * 8);
    let range = header.words[0];
    assert_eq!(range as u32, 32768, "byte count");
    assert_eq!(range >> 32, 0, "byte offset");
    let pfns: StdVec<u64> = header.words[1..].to_vec();
    assert_eq!(
        pfns,
        (0..8)
            .map(|i| (RING_GPAS[0] >> 12) + i)
            .collect::<StdVec<_>>()
    );
    let gpadl = header.fixed.gpadl_id.get();
    // Opening twice is refused.
    assert_eq!(rig.open(0), bus::Reply::Refused(bus::Refusal::WrongState));

    rig.gpadl_created(1, gpadl, 0);
    let posted = rig.posted();
    let [(4, ChannelMessage::OpenChannel(open))] = &posted[..] else {
        panic!("{posted:?}");
    };
    assert_eq!(open.child_relid.get(), 1);
    assert_eq!(open.ring_gpadl_id.get(), gpadl);
    assert_eq!(open.downstream_ring_page_offset.get(), 4);
    assert_eq!(open.target_vp.get(), 0);
    assert_eq!(rig.state(0), ChannelState::Opening);
    assert!(
        rig.synic.borrow().bound.is_empty(),
        "not bound before the host opened"
    );
    assert_eq!(
        rig.synic.borrow().opening,
        [1],
        "synic was told before OpenChannel went out"
    );

    rig.env.notified.clear();
    rig.open_result(1, open.open_id.get(), 0);
    assert_eq!(
        rig.synic.borrow().bound.get(&1),
        Some(&(0x1_0001, String::from("heartbeat")))
    );
    let info = rig.query(0);
    assert_eq!(info.state, ChannelState::Open);
    assert_ne!(
        info.generation, generation,
        "a new open is a new generation"
    );
    assert_eq!(rig.env.notifications_on(channels::HEARTBEAT_EVENT), 1);
}

#[test]
fn the_ring_gpadl_lists_the_four_ring_regions_in_hyper_v_order() {
    let rig = Rig::offered();
    let mut env = EnvDouble::new();
    // Scattered in guest memory: only the order of the regions counts.
    let out_control = env.add_region_address_only(4096, 0x90_0000);
    let out_data = env.add_region_address_only(8192, 0x20_0000);
    let in_control = env.add_region_address_only(4096, 0x50_0000);
    let in_data = env.add_region_address_only(12288, 0x30_0000);
    let mut wiring = rig.bus.drivers[0].wiring;
    wiring.rings = [out_control, out_data, in_control, in_data];
    let (pfns, downstream) = Vmbus::ring_pages(&mut env, &wiring.rings).unwrap();
    assert_eq!(
        pfns.as_slice(),
        [0x900, 0x200, 0x201, 0x500, 0x300, 0x301, 0x302]
    );
    assert_eq!(downstream, 3, "the in ring's control page comes after 3");
    // A control region of two pages, a region that is not whole pages or
    // not page aligned: no GPADL.
    let two_pages = env.add_region_address_only(8192, 0x60_0000);
    let ragged = env.add_region_address_only(4104, 0x70_0000);
    let unaligned = env.add_region_address_only(4096, 0x80_0800);
    for (part, bad) in [(2, two_pages), (3, ragged), (0, unaligned)] {
        let mut broken = wiring;
        broken.rings[part] = bad;
        assert!(
            Vmbus::ring_pages(&mut env, &broken.rings).is_none(),
            "{part}"
        );
    }
}

#[test]
fn gpadl_messages_split_at_26_and_28_pfns() {
    // 60 pages: header 26, body 28, body 6.
    let mut rig = rig_with(60 * 4096, |_| {});
    rig.connect();
    rig.offer_all();
    assert_eq!(rig.open(3), bus::Reply::Accepted);
    let posted = rig.posted();
    assert_eq!(posted.len(), 3, "{posted:?}");
    let mut pfns = StdVec::new();
    let mut id = 0;
    for (i, (connection, message)) in posted.iter().enumerate() {
        assert_eq!(*connection, 4);
        match (i, message) {
            (0, ChannelMessage::GpadlHeader(header)) => {
                assert_eq!(header.words.len(), 27);
                assert_eq!(header.fixed.range_buflen.get() as usize, 8 + 60 * 8);
                id = header.fixed.gpadl_id.get();
                pfns.extend_from_slice(&header.words[1..]);
            }
            (1 | 2, ChannelMessage::GpadlBody(body)) => {
                assert_eq!(body.fixed.gpadl_id.get(), id);
                assert_eq!(body.pfns.len(), if i == 1 { 28 } else { 6 });
                pfns.extend_from_slice(&body.pfns);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        pfns,
        (0..60)
            .map(|i| (RING_GPAS[3] >> 12) + i)
            .collect::<StdVec<_>>()
    );
    let open_id = rig.create(4, id);
    rig.open_result(4, open_id, 0);
    assert_eq!(rig.state(3), ChannelState::Open);
}

#[test]
fn unknown_and_repeated_responses_are_rejected() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(0);
    rig.gpadl_created(1, gpadl + 100, 0); // unknown id
    rig.gpadl_created(2, gpadl, 0); // another channel's relid
    assert_eq!(rig.rejected(), 2);
    assert!(rig.posted().is_empty());
    let open_id = rig.create(1, gpadl);
    rig.gpadl_created(1, gpadl, 0); // repeated
    rig.open_result(1, open_id + 1, 0); // nobody waits for it
    rig.open_result(2, open_id, 0); // wrong relid
    assert_eq!(rig.rejected(), 5);
    assert_eq!(rig.state(0), ChannelState::Opening);
    rig.open_result(1, open_id, 0);
    rig.open_result(1, open_id, 0); // repeated
    rig.torndown(gpadl); // never torn down
    assert_eq!(rig.rejected(), 7);
    assert_eq!(rig.state(0), ChannelState::Open);
    rig.send(UnloadResponse::empty().as_bytes());
    rig.all_offers_delivered();
    assert_eq!(rig.rejected(), 9);
    assert!(rig.posted().is_empty());
}

#[test]
fn a_failed_open_tears_the_gpadl_down_then_reports_failure_and_may_retry() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(0);
    let open_id = rig.create(1, gpadl);
    rig.open_result(1, open_id, 0xC000_0001);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::GpadlTeardown(t))] if t.gpadl_id.get() == gpadl
    ));
    // synic stops counting the relid's events as early.
    assert_eq!(rig.synic.borrow().unbinds, [1]);
    assert_eq!(rig.state(0), ChannelState::Closing);
    assert_eq!(rig.open(0), bus::Reply::Refused(bus::Refusal::WrongState));
    rig.torndown(gpadl);
    assert_eq!(
        rig.state(0),
        ChannelState::Failed {
            status: 0xC000_0001
        }
    );
    rig.open_fully(0);
}

#[test]
fn a_refused_gpadl_fails_the_open() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(0);
    rig.gpadl_created(1, gpadl, 0xC000_0001);
    assert!(rig.posted().is_empty(), "nothing to tear down");
    assert_eq!(
        rig.state(0),
        ChannelState::Failed {
            status: 0xC000_0001
        }
    );
}

#[test]
fn close_unbinds_closes_and_waits_for_torndown() {
    let mut rig = Rig::offered();
    let gpadl = rig.open_fully(0);
    rig.rings[0].write(0, &[0xEE; 64]).unwrap();
    let call_end = rig.bus.drivers[0].wiring.call;
    assert_eq!(
        rig.request(call_end, bus::Request::Close { channel: 0 }),
        bus::Reply::Accepted
    );
    assert_eq!(rig.synic.borrow().unbinds, [1]);
    let posted = rig.posted();
    assert!(
        matches!(
            posted[..],
            [
                (4, ChannelMessage::CloseChannel(_)),
                (4, ChannelMessage::GpadlTeardown(_))
            ]
        ),
        "{posted:?}"
    );
    assert_eq!(rig.state(0), ChannelState::Closing);
    let mut byte = [0u8; 1];
    rig.rings[0].read(0, &mut byte).unwrap();
    assert_eq!(byte[0], 0xEE, "the host may still use the ring");
    rig.torndown(gpadl);
    rig.rings[0].read(0, &mut byte).unwrap();
    assert_eq!(byte[0], 0xEE, "the bus manager never writes a ring");
    assert_eq!(rig.state(0), ChannelState::Offered);
    rig.open_fully(0);
}

/// Where in the open sequence a rescind arrives.
#[derive(Clone, Copy, Debug)]
enum At {
    Offered,
    GpadlCreating,
    OpenPending,
    Open,
    Closing,
}

fn rescind_at(at: At) {
    let mut rig = Rig::offered();
    let mut gpadl = None;
    match at {
        At::Offered => {}
        At::GpadlCreating => {
            gpadl = Some(rig.begin_open(0));
        }
        At::OpenPending => {
            let id = rig.begin_open(0);
            rig.create(1, id);
            gpadl = Some(id);
        }
        At::Open => gpadl = Some(rig.open_fully(0)),
        At::Closing => {
            gpadl = Some(rig.open_fully(0));
            let call_end = rig.bus.drivers[0].wiring.call;
            rig.request(call_end, bus::Request::Close { channel: 0 });
            rig.posted();
        }
    }
    rig.env.notified.clear();
    rig.rescind(1);
    assert_eq!(rig.state(0), ChannelState::Rescinded, "{at:?}");
    assert!(
        rig.env.notifications_on(channels::HEARTBEAT_EVENT) >= 1,
        "{at:?}"
    );
    assert!(rig.synic.borrow().bound.is_empty(), "{at:?}");
    let posted = rig.posted();
    let needs_teardown = matches!(at, At::OpenPending | At::Open);
    if needs_teardown {
        // No CloseChannel to a rescinded channel; the GPADL goes first.
        assert!(
            matches!(posted[..], [(4, ChannelMessage::GpadlTeardown(_))]),
            "{at:?}: {posted:?}"
        );
    }
    if needs_teardown || matches!(at, At::Closing) {
        assert!(
            !posted
                .iter()
                .any(|(_, m)| matches!(m, ChannelMessage::RelIdReleased(_))),
            "{at:?}: released while the GPADL is outstanding"
        );
        rig.torndown(gpadl.unwrap());
        let posted = rig.posted();
        assert!(
            matches!(
                posted[..],
                [(4, ChannelMessage::RelIdReleased(r))] if r.child_relid.get() == 1
            ),
            "{at:?}: {posted:?}"
        );
    } else {
        assert!(
            matches!(
                posted[..],
                [(4, ChannelMessage::RelIdReleased(r))] if r.child_relid.get() == 1
            ),
            "{at:?}: {posted:?}"
        );
    }
    // A late answer to a failed waiter is refused.
    let before = rig.rejected();
    match at {
        At::GpadlCreating => rig.gpadl_created(1, gpadl.unwrap(), 0),
        _ => rig.open_result(1, 1, 0),
    }
    assert_eq!(rig.rejected(), before + 1, "{at:?}");
    assert!(rig.posted().is_empty());
    // The driver cannot open a rescinded channel; a re-offer is a new device.
    assert_eq!(rig.open(0), bus::Reply::Refused(bus::Refusal::WrongState));
    let generation = rig.query(0).generation;
    rig.offer(11, class::HEARTBEAT, instance(1));
    let info = rig.query(0);
    assert_eq!((info.state, info.relid), (ChannelState::Offered, 11));
    assert_ne!(info.generation, generation);
    assert_eq!(rig.open(0), bus::Reply::Accepted);
}

#[test]
fn rescind_after_offer() {
    rescind_at(At::Offered);
}
#[test]
fn rescind_during_gpadl_creation() {
    rescind_at(At::GpadlCreating);
}
#[test]
fn rescind_while_the_open_is_pending() {
    rescind_at(At::OpenPending);
}
#[test]
fn rescind_of_an_open_channel() {
    rescind_at(At::Open);
}
#[test]
fn rescind_while_closing() {
    rescind_at(At::Closing);
}

#[test]
fn rescinds_of_unknown_relids_and_repeats_are_rejected() {
    let mut rig = Rig::offered();
    rig.open_fully(0);
    rig.rescind(77);
    rig.rescind(1);
    rig.rescind(1);
    assert_eq!(rig.rejected(), 2);
}

#[test]
fn a_re_offer_during_release_waits_for_the_old_relid() {
    let mut rig = Rig::offered();
    let gpadl = rig.open_fully(0);
    rig.rescind(1);
    rig.posted();
    rig.offer(12, class::HEARTBEAT, instance(1));
    assert_eq!(rig.state(0), ChannelState::Rescinded);
    rig.torndown(gpadl);
    let info = rig.query(0);
    assert_eq!((info.state, info.relid), (ChannelState::Offered, 12));
}

#[test]
fn offers_arriving_while_running_are_adopted() {
    let mut rig = rig();
    rig.connect();
    rig.offer(1, class::HEARTBEAT, instance(1));
    rig.all_offers_delivered();
    rig.open_fully(0);
    assert!(rig.env.console.contains("VMBus 5.3, 1 devices") || rig.env.console.contains("relid"));
    rig.env.notified.clear();
    rig.offer(4, class::KVP, instance(4));
    assert_eq!(rig.env.notifications_on(channels::KVP_EVENT), 1);
    assert_eq!(rig.state(3), ChannelState::Offered);
    rig.open_fully(3);
}

#[test]
fn a_fault_closes_tears_down_waits_and_restarts() {
    let mut rig = Rig::offered();
    let gpadl = rig.open_fully(3);
    rig.rings[3].write(100, &[0xAA; 32]).unwrap();
    rig.env.now_ns = 1_000_000_000;
    rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
    assert_eq!(rig.synic.borrow().unbinds, [4]);
    let posted = rig.posted();
    assert!(
        matches!(
            posted[..],
            [(4, ChannelMessage::CloseChannel(c)), (4, ChannelMessage::GpadlTeardown(t))]
                if c.child_relid.get() == 4 && t.gpadl_id.get() == gpadl
        ),
        "{posted:?}"
    );
    assert!(
        rig.env.restarted.is_empty(),
        "not before the host let go of the rings"
    );
    assert_eq!(rig.state(3), ChannelState::Closing);
    rig.env.now_ns += 5_000_000;
    rig.torndown(gpadl);
    assert_eq!(rig.env.restarted, [children::KVP]);
    let mut bytes = [0u8; 32];
    rig.rings[3].read(100, &mut bytes).unwrap();
    assert_eq!(
        bytes, [0xAA; 32],
        "the bus manager never writes a ring: the restarted VSC zeroes it"
    );
    assert_eq!(rig.state(3), ChannelState::Offered);
    // The restarted VSC opens again.
    rig.env.now_ns += 5_000_000;
    rig.open_fully(3);
    assert!(
        rig.env.console.contains("open again 10 ms after its fault"),
        "{}",
        rig.env.console
    );
    match rig.request(channels::CLIENT, bus::Request::Device { index: 3 }) {
        bus::Reply::Device(row) => {
            assert_eq!(row.restarts, 1);
            assert_eq!(row.state, ChannelState::Open);
        }
        other => panic!("{other:?}"),
    }
    // Other channels were never touched.
    assert!(rig.synic.borrow().unbinds.iter().all(|r| *r == 4));
}

#[test]
fn a_fault_while_the_gpadl_is_being_created_waits_for_it_then_tears_it_down() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(3);
    rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
    assert!(rig.posted().is_empty());
    rig.gpadl_created(4, gpadl, 0);
    // No OpenChannel: straight to teardown.
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::GpadlTeardown(_))]
    ));
    rig.torndown(gpadl);
    assert_eq!(rig.env.restarted, [children::KVP]);
}

#[test]
fn a_fault_while_the_open_is_pending_closes_after_the_result() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(3);
    let open_id = rig.create(4, gpadl);
    rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
    assert!(rig.posted().is_empty());
    rig.open_result(4, open_id, 0);
    assert!(
        rig.synic.borrow().bound.is_empty(),
        "never bound for a dead VSC"
    );
    assert!(matches!(
        rig.posted()[..],
        [
            (4, ChannelMessage::CloseChannel(_)),
            (4, ChannelMessage::GpadlTeardown(_))
        ]
    ));
    rig.torndown(gpadl);
    assert_eq!(rig.env.restarted, [children::KVP]);
}

#[test]
fn a_fault_without_a_channel_restarts_at_once() {
    let mut rig = rig();
    rig.connect();
    rig.bus.fault(
        &mut rig.env,
        children::SHUTDOWN,
        Fault::Crashed { signal: 11 },
    );
    assert_eq!(rig.env.restarted, [children::SHUTDOWN]);
}

#[test]
fn three_faults_within_10_s_hold_the_vsc_stopped() {
    let mut rig = Rig::offered();
    for i in 0..3u64 {
        rig.env.now_ns = 1_000_000_000 + i * 4_000_000_000;
        let gpadl = rig.open_fully(3);
        rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
        rig.posted();
        rig.torndown(gpadl);
    }
    // Faults at 1 s, 5 s, 9 s: the third is within 10 s of the first.
    assert_eq!(rig.env.restarted, [children::KVP, children::KVP]);
    assert_eq!(rig.env.stopped, [children::KVP]);
    assert_eq!(rig.state(3), ChannelState::Held);
    assert!(rig
        .env
        .console
        .contains("kvp held stopped: 3 faults within 10 s"));
    // A held driver takes no new offers of its class.
    rig.rescind(4);
    rig.offer(14, class::KVP, instance(4));
    assert_eq!(rig.state(3), ChannelState::Held);
}

#[test]
fn faults_spread_over_more_than_10_s_keep_restarting() {
    let mut rig = Rig::offered();
    for i in 0..4u64 {
        rig.env.now_ns = i * 6_000_000_000;
        let gpadl = rig.open_fully(3);
        rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
        rig.posted();
        rig.torndown(gpadl);
    }
    assert_eq!(rig.env.restarted.len(), 4);
    assert!(rig.env.stopped.is_empty());
}

#[test]
fn a_driver_with_a_zero_fault_window_is_never_held() {
    let mut rig = Rig::offered();
    let kvp = rig
        .bus
        .drivers
        .iter()
        .position(|d| d.wiring.child == children::KVP)
        .expect("system.toml has kvp");
    rig.bus.drivers[kvp].wiring.fault_window_ns = 0;
    // All at one instant: within any window but the never-held one.
    for _ in 0..5 {
        rig.env.now_ns = 1_000_000_000;
        let gpadl = rig.open_fully(3);
        rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
        rig.posted();
        rig.torndown(gpadl);
    }
    assert_eq!(rig.env.restarted.len(), 5);
    assert!(rig.env.stopped.is_empty());
}

#[test]
fn a_short_fault_window_holds_only_faults_within_it() {
    let mut rig = Rig::offered();
    let kvp = rig
        .bus
        .drivers
        .iter()
        .position(|d| d.wiring.child == children::KVP)
        .expect("system.toml has kvp");
    rig.bus.drivers[kvp].wiring.fault_window_ns = 500_000_000;
    // 300 ms apart: the third is 600 ms after the first, outside.
    for i in 0..3u64 {
        rig.env.now_ns = 1_000_000_000 + i * 300_000_000;
        let gpadl = rig.open_fully(3);
        rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
        rig.posted();
        rig.torndown(gpadl);
    }
    assert!(rig.env.stopped.is_empty());
    // One more at 1.75 s: with those at 1.3 s and 1.6 s, three within 500 ms.
    rig.env.now_ns = 1_750_000_000;
    let gpadl = rig.open_fully(3);
    rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
    rig.posted();
    rig.torndown(gpadl);
    assert_eq!(rig.env.restarted.len(), 3);
    assert_eq!(rig.env.stopped, [children::KVP]);
    assert!(rig
        .env
        .console
        .contains("kvp held stopped: 3 faults within 500 ms"));
}

#[test]
fn unload_closes_every_channel_then_unloads_then_powers_off() {
    let mut rig = Rig::offered();
    let heartbeat = rig.open_fully(0);
    let kvp = rig.open_fully(3);
    // A VSC may not unload the bus (system.toml: `allow.unload`).
    let call_end = rig.bus.drivers[0].wiring.call;
    assert_eq!(
        rig.try_request(
            call_end,
            bus::Request::Unload {
                power_off_code: Some(0)
            }
        ),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        rig.request(
            channels::CLIENT,
            bus::Request::Unload {
                power_off_code: Some(3)
            }
        ),
        bus::Reply::Accepted
    );
    let posted = rig.posted();
    let closes = posted
        .iter()
        .filter(|(_, m)| matches!(m, ChannelMessage::CloseChannel(_)))
        .count();
    let teardowns = posted
        .iter()
        .filter(|(_, m)| matches!(m, ChannelMessage::GpadlTeardown(_)))
        .count();
    assert_eq!((closes, teardowns), (2, 2), "{posted:?}");
    assert!(!posted
        .iter()
        .any(|(_, m)| matches!(m, ChannelMessage::Unload(_))));
    assert_eq!(rig.open(1), bus::Reply::Refused(bus::Refusal::Unavailable));
    rig.torndown(heartbeat);
    assert!(rig.posted().is_empty(), "kvp's GPADL is still out");
    rig.torndown(kvp);
    assert!(matches!(rig.posted()[..], [(4, ChannelMessage::Unload(_))]));
    assert_eq!(rig.env.powered_off, None);
    rig.send(UnloadResponse::empty().as_bytes());
    assert_eq!(rig.env.powered_off, Some(3));
}

#[test]
fn unload_waits_for_a_pending_open() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(0);
    rig.request(
        channels::CLIENT,
        bus::Request::Unload {
            power_off_code: None,
        },
    );
    assert!(rig.posted().is_empty());
    rig.gpadl_created(1, gpadl, 0);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::GpadlTeardown(_))]
    ));
    rig.torndown(gpadl);
    assert!(matches!(rig.posted()[..], [(4, ChannelMessage::Unload(_))]));
    rig.send(UnloadResponse::empty().as_bytes());
    assert_eq!(rig.bus.phase, Phase::Unloaded);
    assert_eq!(rig.env.powered_off, None);
}

#[test]
fn the_status_view_appears_when_all_are_open_and_after_changes() {
    let mut rig = Rig::offered();
    for d in 0..3 {
        rig.open_fully(d);
    }
    assert!(!rig.env.console.contains("VMBus 5.3, 9 devices"));
    rig.open_fully(3);
    assert!(
        rig.env.console.contains("all 4 offered devices open"),
        "{}",
        rig.env.console
    );
    // The table waits for the drivers' version reports.
    assert!(
        !rig.env.console.contains("VMBus 5.3, 9 devices"),
        "{}",
        rig.env.console
    );
    let versions = [
        ((3, 0), (3, 0)),
        ((3, 0), (3, 2)),
        ((3, 0), (4, 0)),
        ((3, 0), (4, 0)),
    ];
    for (d, (framework, message)) in versions.iter().enumerate() {
        let call_end = rig.bus.drivers[d].wiring.call;
        let reply = rig.request(
            call_end,
            bus::Request::ReportVersions {
                framework: *framework,
                message: *message,
            },
        );
        assert_eq!(reply, bus::Reply::Accepted);
        let tables = rig.env.console.matches("VMBus 5.3, 9 devices").count();
        assert_eq!(tables, if d == 3 { 1 } else { 0 }, "{}", rig.env.console);
    }
    assert!(
        rig.env.console.contains(" relid class "),
        "{}",
        rig.env.console
    );
    assert!(rig.env.console.contains("synic: "), "{}", rig.env.console);
    assert!(rig.env.console.contains("vmbus: "), "{}", rig.env.console);
    let kvp_line = rig
        .env
        .console
        .lines()
        .find(|line| line.contains(" kvp ") && line.contains("open"))
        .unwrap_or_else(|| panic!("{}", rig.env.console))
        .to_owned();
    assert!(
        kvp_line.contains("3.0") && kvp_line.contains("4.0"),
        "{kvp_line}"
    );
    assert!(
        kvp_line.contains("04040404-0404-0404-0404-040404040404"),
        "{kvp_line}"
    );
    match rig.request(channels::CLIENT, bus::Request::Device { index: 3 }) {
        bus::Reply::Device(row) => {
            assert_eq!(row.driver.as_str(), "kvp");
            assert_eq!(row.framework_version, (3, 0));
            assert_eq!(row.message_version, (4, 0));
            assert_eq!(row.relid, 4);
            assert_eq!(row.vmbus_version, ProtocolVersion::V5_3.0);
            assert_eq!(row.class, *class::KVP.as_bytes());
        }
        other => panic!("{other:?}"),
    }
    // Rows 4 to 8 are the keyboard's, mouse's, storage's, network's and
    // video's (system.toml's fifth to ninth drivers, no device here).
    for (index, driver) in [
        (4, "keyboard"),
        (5, "mouse"),
        (6, "storage"),
        (7, "network"),
        (8, "video"),
    ] {
        match rig.request(channels::CLIENT, bus::Request::Device { index }) {
            bus::Reply::Device(row) => {
                assert_eq!(row.driver.as_str(), driver);
                assert_eq!(row.state, ChannelState::NotOffered);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        rig.request(channels::CLIENT, bus::Request::Device { index: 9 }),
        bus::Reply::NoSuchDevice
    );
    // A change mid-transition is printed once it settles.
    rig.env.console.clear();
    let gpadl = rig.bus.drivers[0].channel.as_ref().unwrap().gpadl.unwrap();
    rig.bus
        .fault(&mut rig.env, children::HEARTBEAT, Fault::Panic);
    assert!(
        !rig.env.console.contains("VMBus 5.3"),
        "{}",
        rig.env.console
    );
    rig.torndown(gpadl);
    assert!(
        rig.env.console.contains("VMBus 5.3, 9 devices"),
        "{}",
        rig.env.console
    );
    assert!(
        rig.env.console.contains("heartbeat  offered"),
        "{}",
        rig.env.console
    );
}

#[test]
fn without_version_reports_the_view_appears_at_the_next_state_change() {
    let mut rig = Rig::offered();
    for d in 0..4 {
        rig.open_fully(d);
    }
    assert!(!rig.env.console.contains("VMBus 5.3, 9 devices"));
    let call_end = rig.bus.drivers[1].wiring.call;
    rig.request(call_end, bus::Request::Close { channel: 0 });
    let gpadl = rig.bus.drivers[1].channel.as_ref().unwrap().gpadl.unwrap();
    rig.torndown(gpadl);
    assert!(
        rig.env.console.contains("VMBus 5.3, 9 devices"),
        "{}",
        rig.env.console
    );
}

#[test]
fn only_drivers_query_open_and_close() {
    let mut rig = Rig::offered();
    for request in [
        bus::Request::Query { channel: 0 },
        bus::Request::Close { channel: 0 },
        bus::Request::Open {
            channel: 0,
            user_data: Vec::new(),
        },
    ] {
        // Refused by the contract (system.toml: `allow.query` etc.)
        // before the bus manager sees it.
        assert_eq!(
            rig.try_request(channels::CLIENT, request),
            Err(Refusal::DENIED)
        );
    }
    assert_eq!(rig.open(3), bus::Reply::Accepted);
    let call_end = rig.bus.drivers[2].wiring.call;
    assert_eq!(
        rig.request(call_end, bus::Request::Close { channel: 0 }),
        bus::Reply::Refused(bus::Refusal::WrongState)
    );
    let mut reply = [0u8; 16];
    assert_eq!(
        rig.bus
            .protected(&mut rig.env, channels::CLIENT, &[0xFF; 4], &mut reply),
        Err(Refusal::WRONG_PROTOCOL)
    );
}

#[test]
fn a_full_host_port_defers_posts_in_order() {
    let mut rig = Rig::offered();
    // The post and its retry at the end of the same event both find the
    // port full.
    rig.synic.borrow_mut().full_posts = 2;
    assert_eq!(rig.open(0), bus::Reply::Accepted);
    assert!(rig.posted().is_empty());
    assert_eq!(rig.open(1), bus::Reply::Accepted);
    let posted = rig.posted();
    let relids: StdVec<u32> = posted
        .iter()
        .map(|(_, m)| match m {
            ChannelMessage::GpadlHeader(h) => h.fixed.child_relid.get(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(relids, [1, 2], "the deferred message goes first");
    assert_eq!(rig.bus.counters().posts_deferred, 2);
}

#[test]
fn a_binding_synic_refuses_fails_the_open_and_closes() {
    let mut rig = rig_with(32768, |synic| synic.refuse_binds = true);
    rig.connect();
    rig.offer_all();
    let gpadl = rig.begin_open(0);
    let open_id = rig.create(1, gpadl);
    rig.open_result(1, open_id, 0);
    assert!(matches!(
        rig.posted()[..],
        [
            (4, ChannelMessage::CloseChannel(_)),
            (4, ChannelMessage::GpadlTeardown(_))
        ]
    ));
    rig.torndown(gpadl);
    assert_eq!(
        rig.state(0),
        ChannelState::Failed {
            status: STATUS_GUEST_FAILURE
        }
    );
}

#[test]
fn hostile_messages_never_panic() {
    let mut rig = Rig::offered();
    rig.open_fully(0);
    let mut seed = 0x9E37_79B9u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for round in 0..3000 {
        let len = (next() % 241) as usize;
        let mut payload = [0u8; 240];
        for byte in payload.iter_mut().take(len) {
            *byte = next() as u8;
        }
        // Mostly known message types with small relids and ids, so the
        // handlers (not just the parser) see garbage.
        if len >= 4 && round % 2 == 0 {
            payload[0] = (next() % 18) as u8;
            payload[1..4].fill(0);
            if len >= 12 {
                payload[8..12].copy_from_slice(&(next() % 6).to_le_bytes());
            }
            if len >= 16 {
                payload[12..16].copy_from_slice(&(next() % 4).to_le_bytes());
            }
        }
        rig.send(&payload[..len]);
        rig.posted();
        if round % 100 == 0 {
            let d = (next() % 4) as usize;
            rig.open(d);
        }
    }
    // Slots that are not VMBus messages or claim too much.
    let mut bad = slot(&[1, 0, 0, 0]);
    bad[4] = 241;
    rig.host.push(&bad).unwrap();
    bad[0] = 7;
    rig.host.push(&bad).unwrap();
    rig.host.push(&[1, 2, 3]).unwrap();
    let mut set = ChannelSet::EMPTY;
    set.insert(channels::SYNIC);
    rig.bus.notified(&mut rig.env, set);
}

#[test]
fn a_rescind_queued_behind_a_reply_is_seen_before_acting_on_the_reply() {
    let mut rig = Rig::offered();
    let gpadl = rig.begin_open(0);
    // GpadlCreated and the rescind arrive in one batch.
    let mut created = GpadlCreated::empty();
    created.child_relid = 1.into();
    created.gpadl_id = gpadl.into();
    let mut rescind = RescindChannelOffer::empty();
    rescind.child_relid = 1.into();
    rig.host.push(&slot(created.as_bytes())).unwrap();
    rig.host.push(&slot(rescind.as_bytes())).unwrap();
    let mut set = ChannelSet::EMPTY;
    set.insert(channels::SYNIC);
    rig.bus.notified(&mut rig.env, set);
    // No OpenChannel for a rescinded relid: straight to the teardown.
    let posted = rig.posted();
    assert!(
        matches!(posted[..], [(4, ChannelMessage::GpadlTeardown(_))]),
        "{posted:?}"
    );
    rig.torndown(gpadl);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::RelIdReleased(_))]
    ));
}

#[test]
fn a_flood_of_unclaimed_offers_is_bounded() {
    let mut rig = rig();
    rig.connect();
    for relid in 1..200 {
        rig.offer(relid, class::VSS, instance(relid as u8));
    }
    assert_eq!(rig.bus.unclaimed.len(), MAX_UNCLAIMED);
    assert_eq!(
        rig.bus.counters().offers_dropped,
        199 - MAX_UNCLAIMED as u32
    );
    assert!(rig.env.console.lines().count() < MAX_UNCLAIMED + 10);
    // The drivers still get their devices.
    rig.offer(500, class::KVP, instance(4));
    assert_eq!(rig.state(3), ChannelState::Offered);
}

// ---- data buffers ----

const BUFFER_GPA: u64 = 0x80_0000;

impl Rig {
    /// Give VSC `d` data buffers of these sizes (pages), granted by
    /// address only, consecutive from `BUFFER_GPA`.
    fn with_buffers(&mut self, d: usize, pages: &[usize]) {
        let mut gpa = BUFFER_GPA;
        let mut names = StdVec::new();
        for &count in pages {
            names.push(self.env.add_region_address_only(count * PAGE, gpa));
            gpa += (count * PAGE) as u64 + 0x10_0000;
        }
        self.bus.drivers[d].wiring.buffers = std::boxed::Box::leak(names.into_boxed_slice());
    }

    fn buffer(&mut self, d: usize, buffer: u8) -> bus::BufferInfo {
        match self.request(
            self.bus.drivers[d].wiring.call,
            bus::Request::Buffer { buffer },
        ) {
            bus::Reply::Buffer(info) => info,
            other => panic!("{other:?}"),
        }
    }

    fn create_gpadl(&mut self, d: usize, buffer: u8) -> bus::Reply {
        self.request(
            self.bus.drivers[d].wiring.call,
            bus::Request::CreateGpadl { buffer },
        )
    }

    fn teardown_gpadl(&mut self, d: usize, buffer: u8) -> bus::Reply {
        self.request(
            self.bus.drivers[d].wiring.call,
            bus::Request::TeardownGpadl { buffer },
        )
    }

    /// The GPADL messages posted since the last look: (id, PFNs in order).
    fn posted_gpadl(&mut self) -> (u32, u32, StdVec<u64>) {
        let mut id = None;
        let mut relid = 0;
        let mut pfns = StdVec::new();
        for (_, message) in self.posted() {
            match message {
                ChannelMessage::GpadlHeader(header) => {
                    assert!(id.is_none(), "one header");
                    id = Some(header.fixed.gpadl_id.get());
                    relid = header.fixed.child_relid.get();
                    // The range word, then PFNs.
                    pfns.extend(header.words.iter().skip(1));
                }
                ChannelMessage::GpadlBody(body) => {
                    assert_eq!(Some(body.fixed.gpadl_id.get()), id);
                    pfns.extend(body.pfns.iter());
                }
                other => panic!("{other:?}"),
            }
        }
        (id.expect("a header"), relid, pfns)
    }
}

#[test]
fn a_data_buffer_gets_a_gpadl_while_open_and_loses_it_on_close() {
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[64]);
    assert_eq!(
        rig.create_gpadl(3, 0),
        bus::Reply::Refused(bus::Refusal::WrongState),
        "only while the channel is open"
    );
    let ring = rig.open_fully(3);
    assert_eq!(
        rig.create_gpadl(3, 1),
        bus::Reply::Refused(bus::Refusal::NoSuchBuffer)
    );
    assert_eq!(
        rig.buffer(3, 0),
        bus::BufferInfo {
            state: bus::BufferState::Absent,
            bytes: 64 * 4096
        }
    );
    rig.env.notified.clear();
    assert_eq!(rig.create_gpadl(3, 0), bus::Reply::Accepted);
    let (id, relid, pfns) = rig.posted_gpadl();
    assert_eq!(relid, 4);
    assert_ne!(id, ring);
    let expected: StdVec<u64> = (0..64).map(|p| (BUFFER_GPA >> 12) + p).collect();
    assert_eq!(pfns, expected);
    assert_eq!(rig.buffer(3, 0).state, bus::BufferState::Creating);
    assert_eq!(
        rig.create_gpadl(3, 0),
        bus::Reply::Refused(bus::Refusal::WrongState)
    );
    rig.gpadl_created(4, id, 0);
    assert_eq!(
        rig.buffer(3, 0).state,
        bus::BufferState::Created { gpadl_id: id }
    );
    let event = rig.bus.drivers[3].wiring.event;
    assert!(rig.env.notified.contains(&event), "the VSC hears of it");
    // Close: the channel closes, then both GPADLs go together.
    let call_end = rig.bus.drivers[3].wiring.call;
    assert_eq!(
        rig.request(call_end, bus::Request::Close { channel: 0 }),
        bus::Reply::Accepted
    );
    let posted = rig.posted();
    let torn: StdVec<u32> = posted
        .iter()
        .filter_map(|(_, m)| match m {
            ChannelMessage::GpadlTeardown(t) => Some(t.gpadl_id.get()),
            _ => None,
        })
        .collect();
    assert!(matches!(posted[0], (4, ChannelMessage::CloseChannel(_))));
    assert_eq!(torn, [id, ring], "{posted:?}");
    assert_eq!(rig.buffer(3, 0).state, bus::BufferState::TearingDown);
    rig.torndown(ring);
    assert_eq!(
        rig.state(3),
        ChannelState::Closing,
        "the buffer is still out"
    );
    rig.torndown(id);
    assert_eq!(rig.state(3), ChannelState::Offered);
    assert_eq!(rig.buffer(3, 0).state, bus::BufferState::Absent);
    // Reopened, the buffer is not shared until the VSC asks again.
    rig.open_fully(3);
    assert!(rig.posted().is_empty());
    assert_eq!(rig.buffer(3, 0).state, bus::BufferState::Absent);
    assert_eq!(rig.rejected(), 0);
}

#[test]
fn a_vsc_tears_its_buffer_down_and_may_share_it_again() {
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[4, 8]);
    rig.open_fully(3);
    assert_eq!(
        rig.teardown_gpadl(3, 1),
        bus::Reply::Refused(bus::Refusal::WrongState)
    );
    assert_eq!(rig.create_gpadl(3, 1), bus::Reply::Accepted);
    let (id, _, pfns) = rig.posted_gpadl();
    assert_eq!(pfns[0], (BUFFER_GPA + 4 * 4096 + 0x10_0000) >> 12);
    // Torn down while being created: it goes once the host has it.
    assert_eq!(rig.teardown_gpadl(3, 1), bus::Reply::Accepted);
    assert_eq!(rig.buffer(3, 1).state, bus::BufferState::Creating);
    rig.gpadl_created(4, id, 0);
    match &rig.posted()[..] {
        [(4, ChannelMessage::GpadlTeardown(t))] => assert_eq!(t.gpadl_id.get(), id),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.buffer(3, 1).state, bus::BufferState::TearingDown);
    assert_eq!(
        rig.create_gpadl(3, 1),
        bus::Reply::Refused(bus::Refusal::WrongState),
        "not while the host still holds it"
    );
    rig.torndown(id);
    assert_eq!(rig.buffer(3, 1).state, bus::BufferState::Absent);
    assert_eq!(rig.state(3), ChannelState::Open, "the channel stays open");
    assert_eq!(rig.create_gpadl(3, 1), bus::Reply::Accepted);
    let (again, _, _) = rig.posted_gpadl();
    assert_ne!(again, id, "ids are never reused");
    assert_eq!(rig.rejected(), 0);
}

#[test]
fn a_buffer_the_host_refuses_reports_its_status_and_may_be_asked_again() {
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[16]);
    rig.open_fully(3);
    rig.create_gpadl(3, 0);
    let (id, _, _) = rig.posted_gpadl();
    rig.gpadl_created(4, id, 0xC000_009A);
    assert_eq!(
        rig.buffer(3, 0).state,
        bus::BufferState::Failed {
            status: 0xC000_009A
        }
    );
    assert_eq!(rig.state(3), ChannelState::Open);
    rig.gpadl_created(4, id, 0);
    assert_eq!(rig.rejected(), 1, "a second answer for a retired id");
    assert_eq!(rig.create_gpadl(3, 0), bus::Reply::Accepted);
    let (again, _, _) = rig.posted_gpadl();
    rig.gpadl_created(4, again, 0);
    assert_eq!(
        rig.buffer(3, 0).state,
        bus::BufferState::Created { gpadl_id: again }
    );
}

#[test]
fn a_large_buffer_streams_its_bodies_as_the_host_takes_them() {
    // 8190 pages: 1 header + 292 bodies, far more than the outbox holds.
    let pages = vmbus_protocol::gpadl::MAX_SINGLE_RANGE_PFNS;
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[pages]);
    rig.open_fully(3);
    // The port stays full for this request (it is retried once at its end).
    rig.synic.borrow_mut().full_posts = 2;
    rig.create_gpadl(3, 0);
    assert!(rig.posted().is_empty(), "the host's port is full");
    assert_eq!(rig.bus.counters().posts_deferred, 2);
    // The host drains its port; the next event posts the rest in order.
    rig.bus.notified(&mut rig.env, ChannelSet::EMPTY);
    let (id, _, pfns) = rig.posted_gpadl();
    let expected: StdVec<u64> = (0..pages as u64).map(|p| (BUFFER_GPA >> 12) + p).collect();
    assert_eq!(pfns, expected);
    assert_eq!(rig.bus.counters().posts_failed, 0);
    rig.gpadl_created(4, id, 0);
    assert_eq!(
        rig.buffer(3, 0),
        bus::BufferInfo {
            state: bus::BufferState::Created { gpadl_id: id },
            bytes: (pages * 4096) as u64
        }
    );
}

#[test]
fn a_rescind_while_a_buffer_is_created_stops_its_bodies_and_releases_after_teardown() {
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[1000, 4]);
    let ring = rig.open_fully(3);
    rig.create_gpadl(3, 1);
    let (small, _, _) = rig.posted_gpadl();
    rig.gpadl_created(4, small, 0);
    // The big one gets its header and 2 bodies out before the rescind.
    rig.synic.borrow_mut().port_room = Some(3);
    rig.create_gpadl(3, 0);
    let first = rig.posted();
    assert_eq!(first.len(), 3);
    let big = match &first[0] {
        (_, ChannelMessage::GpadlHeader(h)) => h.fixed.gpadl_id.get(),
        other => panic!("{other:?}"),
    };
    rig.synic.borrow_mut().port_room = None;
    rig.rescind(4);
    // The created GPADLs (ring, small buffer) are torn down; the one
    // being created was dropped by the host with the channel.
    let posted = rig.posted();
    let mut torn: StdVec<u32> = posted
        .iter()
        .filter_map(|(_, m)| match m {
            ChannelMessage::GpadlTeardown(t) => Some(t.gpadl_id.get()),
            _ => None,
        })
        .collect();
    torn.sort();
    assert_eq!(torn, [ring, small], "{posted:?}");
    assert!(!posted.iter().any(|(_, m)| matches!(
        m,
        ChannelMessage::GpadlBody(_) | ChannelMessage::CloseChannel(_)
    )));
    rig.gpadl_created(4, big, 0);
    assert_eq!(rig.rejected(), 1, "the dropped GPADL's late answer");
    rig.torndown(ring);
    assert!(
        rig.posted().is_empty(),
        "not released while a buffer is out"
    );
    rig.torndown(small);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::RelIdReleased(_))]
    ));
}

#[test]
fn a_fault_tears_the_buffers_down_before_the_restart() {
    let mut rig = Rig::offered();
    rig.with_buffers(3, &[4]);
    let ring = rig.open_fully(3);
    rig.create_gpadl(3, 0);
    let (id, _, _) = rig.posted_gpadl();
    rig.gpadl_created(4, id, 0);
    rig.bus.fault(&mut rig.env, children::KVP, Fault::Panic);
    let posted = rig.posted();
    assert_eq!(
        posted
            .iter()
            .filter(|(_, m)| matches!(m, ChannelMessage::GpadlTeardown(_)))
            .count(),
        2,
        "{posted:?}"
    );
    rig.torndown(ring);
    assert!(
        rig.env.restarted.is_empty(),
        "the buffer is still the host's"
    );
    rig.torndown(id);
    assert_eq!(rig.env.restarted, [children::KVP]);
    rig.open_fully(3);
    assert_eq!(rig.buffer(3, 0).state, bus::BufferState::Absent);
}

// ---- target VP ----

impl Rig {
    fn retarget(&mut self, d: usize, target_vp: u32) -> bus::Reply {
        self.request(
            self.bus.drivers[d].wiring.call,
            bus::Request::Retarget { target_vp },
        )
    }

    fn interrupt(&mut self, d: usize) -> bus::InterruptInfo {
        match self.request(self.bus.drivers[d].wiring.call, bus::Request::Interrupt) {
            bus::Reply::Interrupt(info) => info,
            other => panic!("{other:?}"),
        }
    }

    fn modify_response(&mut self, relid: u32, status: u32) {
        let mut response = vmbus_protocol::messages::ModifyChannelResponse::empty();
        response.child_relid = relid.into();
        response.status = status.into();
        self.send(response.as_bytes());
    }
}

#[test]
fn retarget_sends_modify_channel_and_5_3_waits_for_the_answer() {
    let mut rig = Rig::offered();
    assert_eq!(
        rig.retarget(3, 1),
        bus::Reply::Refused(bus::Refusal::WrongState),
        "only while open"
    );
    let ring = rig.open_fully(3);
    rig.env.notified.clear();
    assert_eq!(rig.retarget(3, 1), bus::Reply::Accepted);
    match &rig.posted()[..] {
        [(4, ChannelMessage::ModifyChannel(m))] => {
            assert_eq!((m.child_relid.get(), m.target_vp.get()), (4, 1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.interrupt(3),
        bus::InterruptInfo {
            target_vp: 0,
            retargeting: Some(1),
            refused: None
        }
    );
    assert_eq!(
        rig.retarget(3, 2),
        bus::Reply::Refused(bus::Refusal::WrongState),
        "one at a time"
    );
    rig.modify_response(3, 0);
    assert_eq!(rig.rejected(), 1, "an answer for another relid");
    rig.modify_response(4, 0);
    assert_eq!(rig.interrupt(3).target_vp, 1);
    assert!(rig.env.notified.contains(&rig.bus.drivers[3].wiring.event));
    rig.modify_response(4, 0);
    assert_eq!(rig.rejected(), 2, "a repeated answer");
    // A refusal leaves the target where it was.
    rig.retarget(3, 7);
    rig.posted();
    rig.modify_response(4, 0xC000_000D);
    assert_eq!(
        rig.interrupt(3),
        bus::InterruptInfo {
            target_vp: 1,
            retargeting: None,
            refused: Some(0xC000_000D)
        }
    );
    // A reopen opens on the target VP.
    let call_end = rig.bus.drivers[3].wiring.call;
    rig.request(call_end, bus::Request::Close { channel: 0 });
    rig.posted();
    rig.torndown(ring);
    let gpadl = rig.begin_open(3);
    rig.gpadl_created(4, gpadl, 0);
    match &rig.posted()[..] {
        [(4, ChannelMessage::OpenChannel(open))] => assert_eq!(open.target_vp.get(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn before_5_3_a_retarget_is_taken_as_done_and_before_4_1_refused() {
    // 4.1: connection 4 does not exist, 4.1 accepted.
    let mut rig = rig_with(32768, |synic| synic.invalid_connections.push(4));
    rig.posted();
    rig.version_response(true, 0);
    rig.posted();
    rig.offer_all();
    assert_eq!(rig.open(3), bus::Reply::Accepted);
    rig.posted();
    let gpadl = rig.bus.drivers[3].channel.as_ref().unwrap().gpadl.unwrap();
    rig.gpadl_created(4, gpadl, 0);
    let open_id = match &rig.posted()[..] {
        [(1, ChannelMessage::OpenChannel(open))] => open.open_id.get(),
        other => panic!("{other:?}"),
    };
    rig.open_result(4, open_id, 0);
    assert_eq!(rig.retarget(3, 1), bus::Reply::Accepted);
    assert!(matches!(
        rig.posted()[..],
        [(1, ChannelMessage::ModifyChannel(_))]
    ));
    assert_eq!(
        rig.interrupt(3),
        bus::InterruptInfo {
            target_vp: 1,
            retargeting: None,
            refused: None
        }
    );
    // 4.0: no ModifyChannel at all.
    let mut rig = rig_with(32768, |synic| synic.invalid_connections.push(4));
    rig.posted();
    rig.version_response(false, 0);
    rig.posted();
    rig.version_response(true, 0);
    rig.posted();
    rig.offer_all();
    assert_eq!(rig.open(3), bus::Reply::Accepted);
    rig.posted();
    let gpadl = rig.bus.drivers[3].channel.as_ref().unwrap().gpadl.unwrap();
    rig.gpadl_created(4, gpadl, 0);
    let open_id = match &rig.posted()[..] {
        [(1, ChannelMessage::OpenChannel(open))] => open.open_id.get(),
        other => panic!("{other:?}"),
    };
    rig.open_result(4, open_id, 0);
    assert_eq!(rig.state(3), ChannelState::Open);
    assert_eq!(
        rig.retarget(3, 1),
        bus::Reply::Refused(bus::Refusal::Unsupported)
    );
    assert!(rig.posted().is_empty());
}

// ---- monitor pages ----

#[test]
fn an_offers_monitor_id_and_interrupt_mode_reach_synic_at_bind() {
    let mut rig = rig();
    rig.connect();
    // Heartbeat monitored (id 70), with a dedicated interrupt; KVP neither.
    let mut offer = OfferChannel::empty();
    offer.interface_type = WireGuid::from_uuid(class::HEARTBEAT);
    offer.interface_instance = WireGuid::from_uuid(instance(1));
    offer.child_relid = 1.into();
    offer.connection_id = 0x1_0001.into();
    offer.monitor_id = 70;
    offer.monitor_allocated = 1;
    offer.is_dedicated_interrupt = 1.into();
    rig.send(offer.as_bytes());
    rig.offer(4, class::KVP, instance(4));
    rig.all_offers_delivered();
    rig.open_fully(0);
    rig.open_fully(3);
    let signalling = rig.synic.borrow().signalling.clone();
    assert_eq!(signalling[&1], (Some(70), false));
    // 5.3: the host was told no interrupt page, so no bit in it.
    assert_eq!(signalling[&4], (None, false));
    // A monitor id beyond the page is a hostile offer.
    let mut bad = OfferChannel::empty();
    bad.child_relid = 9.into();
    bad.monitor_id = 128;
    bad.monitor_allocated = 1;
    rig.send(bad.as_bytes());
    assert_eq!(rig.rejected(), 1);
}

#[test]
fn before_5_0_a_channel_without_a_dedicated_interrupt_marks_the_interrupt_page() {
    let mut rig = rig_with(32768, |synic| synic.invalid_connections.push(4));
    rig.posted();
    rig.version_response(true, 0);
    rig.posted();
    rig.offer_all();
    assert_eq!(rig.open(3), bus::Reply::Accepted);
    rig.posted();
    let gpadl = rig.bus.drivers[3].channel.as_ref().unwrap().gpadl.unwrap();
    rig.gpadl_created(4, gpadl, 0);
    let open_id = match &rig.posted()[..] {
        [(1, ChannelMessage::OpenChannel(open))] => open.open_id.get(),
        other => panic!("{other:?}"),
    };
    rig.open_result(4, open_id, 0);
    assert_eq!(rig.synic.borrow().signalling[&4], (None, true));
}

// ---- sub-channels ----

const SUB_RING_GPA: u64 = 0x100_0000;

impl Rig {
    /// Give KVP (driver 3) `count` sub-channels: four ring regions each
    /// (out control, out data, in control, in data: 1 page each), granted
    /// by address only, sub-channel K's from `SUB_RING_GPA + K MiB`.
    fn with_sub_channels(&mut self, count: usize) {
        let mut rings = StdVec::new();
        for k in 1..=count {
            let base = SUB_RING_GPA + (k as u64) * 0x10_0000;
            let parts: [RegionName; 4] = core::array::from_fn(|part| {
                self.env
                    .add_region_address_only(PAGE, base + (part * PAGE) as u64)
            });
            rings.push(parts);
        }
        self.bus
            .give_sub_rings_for_tests(3, std::boxed::Box::leak(rings.into_boxed_slice()));
    }

    fn sub_offer(&mut self, relid: u32, class: uuid::Uuid, instance: uuid::Uuid, index: u16) {
        let mut offer = OfferChannel::empty();
        offer.interface_type = WireGuid::from_uuid(class);
        offer.interface_instance = WireGuid::from_uuid(instance);
        offer.child_relid = relid.into();
        offer.connection_id = (0x1_0000 + relid).into();
        offer.sub_channel_index = index.into();
        self.send(offer.as_bytes());
    }

    fn kvp_request(&mut self, request: bus::Request) -> bus::Reply {
        let call_end = self.bus.drivers[3].wiring.call;
        self.request(call_end, request)
    }

    fn sub_state(&mut self, channel: u8) -> ChannelState {
        match self.kvp_request(bus::Request::Query { channel }) {
            bus::Reply::Channel(info) => info.state,
            other => panic!("{other:?}"),
        }
    }

    fn open_sub(&mut self, channel: u8) -> bus::Reply {
        self.kvp_request(bus::Request::Open {
            channel,
            user_data: Vec::new(),
        })
    }

    /// KVP's sub-channel `channel` (relid `relid`) opens all the way;
    /// returns its GPADL id.
    fn open_sub_fully(&mut self, channel: u8, relid: u32) -> u32 {
        assert_eq!(self.open_sub(channel), bus::Reply::Accepted);
        let (gpadl, gpadl_relid, pfns) = self.posted_gpadl();
        assert_eq!(gpadl_relid, relid);
        let base = (SUB_RING_GPA + u64::from(channel) * 0x10_0000) >> 12;
        assert_eq!(pfns, [base, base + 1, base + 2, base + 3], "its own rings");
        let open_id = self.create(relid, gpadl);
        self.open_result(relid, open_id, 0);
        assert_eq!(self.sub_state(channel), ChannelState::Open);
        gpadl
    }
}

#[test]
fn sub_channels_open_with_their_own_rings_and_bind_to_the_primarys_driver() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(2);
    assert_eq!(rig.sub_state(1), ChannelState::NotOffered);
    assert_eq!(
        rig.kvp_request(bus::Request::Query { channel: 3 }),
        bus::Reply::Refused(bus::Refusal::NoSuchChannel)
    );
    rig.sub_offer(10, class::KVP, instance(4), 1);
    rig.sub_offer(11, class::KVP, instance(4), 2);
    assert_eq!(rig.sub_state(1), ChannelState::Offered);
    let info = match rig.kvp_request(bus::Request::Query { channel: 2 }) {
        bus::Reply::Channel(info) => info,
        other => panic!("{other:?}"),
    };
    assert_eq!((info.relid, info.connection_id), (11, 0x1_000B));
    // Only while the primary is open.
    assert_eq!(
        rig.open_sub(1),
        bus::Reply::Refused(bus::Refusal::WrongState)
    );
    let primary_gpadl = rig.open_fully(3);
    let first = rig.open_sub_fully(1, 10);
    let second = rig.open_sub_fully(2, 11);
    let gpadls = [primary_gpadl, first, second];
    assert!(gpadls[0] != gpadls[1] && gpadls[1] != gpadls[2] && gpadls[0] != gpadls[2]);
    let bound = rig.synic.borrow().bound.clone();
    assert_eq!(bound.get(&10), Some(&(0x1_000A, String::from("kvp"))));
    assert_eq!(bound.get(&11), Some(&(0x1_000B, String::from("kvp"))));
    let indices = rig.synic.borrow().channel_index.clone();
    assert_eq!(
        (indices.get(&4), indices.get(&10), indices.get(&11)),
        (Some(&0), Some(&1), Some(&2))
    );
    assert_eq!(rig.state(3), ChannelState::Open);
    // The status view lists them under their primary.
    let rows: StdVec<DeviceStatus> = (0..rig.bus.device_count())
        .filter_map(|i| rig.bus.device_status(i))
        .collect();
    let kvp = rows.iter().position(|r| r.relid == 4).unwrap();
    assert_eq!((rows[kvp + 1].relid, rows[kvp + 1].sub_channel), (10, 1));
    assert_eq!((rows[kvp + 2].relid, rows[kvp + 2].sub_channel), (11, 2));
    assert_eq!(rows[kvp + 1].state, ChannelState::Open);
    let mut line = String::new();
    status::format_row(&rows[kvp + 1], &mut line).unwrap();
    assert!(line.contains(" sub 1"), "{line}");
}

#[test]
fn closing_the_primary_closes_its_sub_channels_first() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(1);
    rig.sub_offer(10, class::KVP, instance(4), 1);
    let primary_gpadl = rig.open_fully(3);
    let sub_gpadl = rig.open_sub_fully(1, 10);
    assert_eq!(
        rig.kvp_request(bus::Request::Close { channel: 0 }),
        bus::Reply::Accepted
    );
    let close_of = |posted: &[(u32, ChannelMessage)]| -> StdVec<u32> {
        posted
            .iter()
            .filter_map(|(_, m)| match m {
                ChannelMessage::CloseChannel(c) => Some(c.child_relid.get()),
                _ => None,
            })
            .collect()
    };
    let posted = rig.posted();
    assert_eq!(close_of(&posted), [10], "the sub-channel first: {posted:?}");
    assert_eq!(rig.state(3), ChannelState::Closing);
    rig.torndown(sub_gpadl);
    let posted = rig.posted();
    assert_eq!(close_of(&posted), [4], "then the primary: {posted:?}");
    rig.torndown(primary_gpadl);
    assert_eq!(rig.state(3), ChannelState::Offered);
    assert_eq!(rig.sub_state(1), ChannelState::Offered);
    // Open again: the sub-channel too, with a fresh GPADL.
    rig.open_fully(3);
    rig.open_sub_fully(1, 10);
}

#[test]
fn a_sub_channel_rescinded_while_its_primary_runs_is_released_alone() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(1);
    rig.sub_offer(10, class::KVP, instance(4), 1);
    rig.open_fully(3);
    let sub_gpadl = rig.open_sub_fully(1, 10);
    rig.rescind(10);
    assert_eq!(rig.sub_state(1), ChannelState::Rescinded);
    assert!(rig.synic.borrow().unbinds.contains(&10));
    let posted = rig.posted();
    assert!(
        matches!(posted[..], [(4, ChannelMessage::GpadlTeardown(_))]),
        "no CloseChannel for a rescinded channel: {posted:?}"
    );
    rig.torndown(sub_gpadl);
    let posted = rig.posted();
    assert!(
        matches!(&posted[..], [(4, ChannelMessage::RelIdReleased(r))] if r.child_relid.get() == 10),
        "{posted:?}"
    );
    assert_eq!(rig.sub_state(1), ChannelState::NotOffered);
    assert_eq!(rig.state(3), ChannelState::Open, "the primary runs on");
    // The host may offer the index again.
    rig.sub_offer(12, class::KVP, instance(4), 1);
    rig.open_sub_fully(1, 12);
}

#[test]
fn the_primarys_rescind_takes_its_sub_channels_along() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(1);
    rig.sub_offer(10, class::KVP, instance(4), 1);
    let primary_gpadl = rig.open_fully(3);
    let sub_gpadl = rig.open_sub_fully(1, 10);
    // As Hyper-V does: the sub-channels first, then the primary.
    rig.rescind(10);
    rig.rescind(4);
    let posted = rig.posted();
    let teardowns = posted
        .iter()
        .filter(|(_, m)| matches!(m, ChannelMessage::GpadlTeardown(_)))
        .count();
    assert_eq!(
        teardowns, 1,
        "the primary waits for its sub-channel: {posted:?}"
    );
    rig.torndown(sub_gpadl);
    rig.torndown(primary_gpadl);
    let released: StdVec<u32> = rig
        .posted()
        .iter()
        .filter_map(|(_, m)| match m {
            ChannelMessage::RelIdReleased(r) => Some(r.child_relid.get()),
            _ => None,
        })
        .collect();
    assert_eq!(released, [10, 4]);
    assert!(rig.bus.gpadls.is_empty());
    assert_eq!(rig.state(3), ChannelState::Rescinded);
}

#[test]
fn a_fault_closes_the_sub_channels_and_the_restarted_vsc_reopens_them() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(1);
    rig.sub_offer(10, class::KVP, instance(4), 1);
    let primary_gpadl = rig.open_fully(3);
    let sub_gpadl = rig.open_sub_fully(1, 10);
    let child = rig.bus.drivers[3].wiring.child;
    rig.bus.fault(&mut rig.env, child, Fault::Panic);
    let unbinds = rig.synic.borrow().unbinds.clone();
    assert!(unbinds.contains(&10) && unbinds.contains(&4), "{unbinds:?}");
    rig.posted();
    rig.torndown(sub_gpadl);
    rig.posted();
    rig.torndown(primary_gpadl);
    assert_eq!(rig.bus.drivers[3].restarts, 1);
    assert!(rig.bus.gpadls.is_empty(), "nothing left at the host");
    assert_eq!(rig.sub_state(1), ChannelState::Offered);
    rig.open_fully(3);
    rig.open_sub_fully(1, 10);
}

#[test]
fn sub_channel_offers_without_a_place_are_left_alone_and_counted() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(1);
    // Beyond the driver's one sub-channel.
    rig.sub_offer(10, class::KVP, instance(4), 2);
    // For no primary (an instance nobody was offered).
    rig.sub_offer(11, class::KVP, instance(9), 1);
    // A driver without sub-channels.
    rig.sub_offer(12, class::HEARTBEAT, instance(1), 1);
    assert_eq!(rig.bus.counters().sub_channel_offers_refused, 3);
    assert_eq!(rig.sub_state(1), ChannelState::NotOffered);
    assert_eq!(rig.bus.unclaimed.len(), 3);
    // Released when the host rescinds them.
    rig.rescind(11);
    assert!(matches!(
        rig.posted()[..],
        [(4, ChannelMessage::RelIdReleased(_))]
    ));
    // Taken: the next offer of index 1 of KVP.
    rig.sub_offer(13, class::KVP, instance(4), 1);
    rig.sub_offer(14, class::KVP, instance(4), 1);
    assert_eq!(
        rig.bus.counters().sub_channel_offers_refused,
        4,
        "a second index 1"
    );
    assert_eq!(rig.sub_state(1), ChannelState::Offered);
}

#[test]
fn the_bus_holds_at_most_16_sub_channels_and_refuses_the_rest() {
    let mut rig = Rig::offered();
    rig.with_sub_channels(MAX_SUB_CHANNELS);
    let kvp_rings = rig.bus.drivers[3].wiring.sub_rings;
    for d in 0..3 {
        rig.bus.give_sub_rings_for_tests(d, kvp_rings);
    }
    let mut relid = 100;
    for (class, n) in [(class::HEARTBEAT, 1), (class::SHUTDOWN, 2)] {
        for index in 1..=MAX_SUB_CHANNELS as u16 {
            rig.sub_offer(relid, class, instance(n), index);
            relid += 1;
        }
    }
    assert_eq!(rig.bus.subs.len(), MAX_SUB_CHANNEL_RECORDS);
    assert_eq!(rig.bus.counters().sub_channel_offers_refused, 0);
    rig.sub_offer(200, class::KVP, instance(4), 1);
    assert_eq!(rig.bus.counters().sub_channel_offers_refused, 1);
    assert_eq!(rig.sub_state(1), ChannelState::NotOffered);
    // A released sub-channel makes room.
    rig.rescind(100);
    rig.posted();
    assert_eq!(rig.bus.subs.len(), MAX_SUB_CHANNEL_RECORDS - 1);
    rig.sub_offer(201, class::KVP, instance(4), 1);
    assert_eq!(rig.sub_state(1), ChannelState::Offered);
    assert_eq!(rig.bus.counters().rejected, 0);
}
