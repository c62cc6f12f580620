//! Test support (feature `testing`): a bus manager, synic and host end for
//! a VSC under test, over `env-double`. The bus manager answers `Query`
//! with a scripted [`bus::ChannelInfo`] and moves to `Open` on `Open`;
//! synic records `SignalHost`; the host end writes packets into the VSC's
//! in ring and reads its answers from the out ring with `vmbus-ring`, as
//! the real host would.

use crate::memory::ring_memory;
use crate::{ChannelIds, DriverService, IcDriver};
use component_api::{ChannelSet, Component};
use env_double::EnvDouble;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;
use vmbus_ipc::{bus, synic};
use vmbus_protocol::ic::{self, IcFlags, IcMessageHeader, IcVersion};
use vmbus_protocol::packet::{self, PacketDescriptor};
use vmbus_ring::{RegionRingMemory, RingError, RingReader, RingWriter, Signal};
use zerocopy::IntoBytes;

/// Each ring of the VSC under test: its control page and 12 KiB of data.
pub const RING_BYTES: usize = 16384;
pub const TEST_CONNECTION_ID: u32 = 0x2_0007;

/// What the simulated bus manager saw and will answer.
#[derive(Debug)]
pub struct BusState {
    pub info: bus::ChannelInfo,
    pub open_requests: u32,
    pub reported: Vec<((u16, u16), (u16, u16))>,
    pub unloads: Vec<Option<u8>>,
    /// For each `Open`: whether all four ring regions were zero when it
    /// arrived (the VSC zeroes its rings before it asks; the bus manager
    /// never touches them).
    pub rings_zero_at_open: Vec<bool>,
}

pub struct TestHost {
    pub bus: Rc<RefCell<BusState>>,
    /// Connection ids the VSC asked synic to signal.
    pub signals: Rc<RefCell<Vec<u32>>>,
    /// When set, synic answers `SignalHost` with `ChannelClosed` (the
    /// channel was just rescinded or closed).
    pub channel_closed: Rc<std::cell::Cell<bool>>,
    /// The VSC's ring regions as the host sees them: out control, out
    /// data, in control, in data.
    rings: [component_api::Region; 4],
    writer: Option<RingWriter<RegionRingMemory>>,
    reader: Option<RingReader<RegionRingMemory>>,
    next_transaction: u64,
    /// Times reading the VSC's answers freed enough of the out ring for
    /// the VSC's pending_send_sz: each is a signal the host owes it.
    pub space_signals: u32,
}

fn all_zero(region: component_api::Region) -> bool {
    let mut chunk = [0u8; 512];
    (0..region.len()).step_by(chunk.len()).all(|offset| {
        let count = chunk.len().min(region.len() - offset);
        region.read(offset, &mut chunk[..count]).is_ok() && chunk[..count].iter().all(|b| *b == 0)
    })
}

/// Fill the ring region with a non-zero pattern (an earlier life's rings:
/// indices, packets, what the host wrote).
pub fn scribble(region: component_api::Region) {
    let pattern = [0xA5u8; 512];
    for offset in (0..region.len()).step_by(pattern.len()) {
        let count = pattern.len().min(region.len() - offset);
        region.write(offset, &pattern[..count]).unwrap();
    }
}

pub fn channel_info(state: bus::ChannelState, generation: u32) -> bus::ChannelInfo {
    bus::ChannelInfo {
        state,
        class: [1; 16],
        instance: [2; 16],
        relid: 7,
        connection_id: TEST_CONNECTION_ID,
        user_defined: heapless::Vec::new(),
        vmbus_version: 0x50003,
        generation,
    }
}

impl TestHost {
    /// Give `env` the VSC's four ring regions (they must be the VSC's
    /// first regions; env-double maps nothing twice, so the rings are
    /// single mapped here: the hosted and seL4 tests run them double
    /// mapped) and answer its calls to the bus manager and synic. The
    /// channel starts offered (generation 1).
    pub fn new(env: &mut EnvDouble, ids: ChannelIds) -> Self {
        let sizes = [4096, RING_BYTES - 4096, 4096, RING_BYTES - 4096];
        for (name, size) in ids.rings.all().into_iter().zip(sizes) {
            assert_eq!(
                env.add_region(size, true),
                name,
                "the rings must be the VSC's first regions"
            );
        }
        let rings = ids.rings.all().map(|name| env.test_view(name));
        let bus = Rc::new(RefCell::new(BusState {
            info: channel_info(bus::ChannelState::Offered, 1),
            open_requests: 0,
            reported: Vec::new(),
            unloads: Vec::new(),
            rings_zero_at_open: Vec::new(),
        }));
        let bus_handle = bus.clone();
        let rings_at_open = rings;
        env.on_typed_call::<bus::Bus>(ids.vmbus, move |request: bus::Request| {
            let mut state = bus_handle.borrow_mut();
            match request {
                bus::Request::Query { .. } => bus::Reply::Channel(state.info.clone()),
                bus::Request::Open { .. } => {
                    state.open_requests += 1;
                    state
                        .rings_zero_at_open
                        .push(rings_at_open.into_iter().all(all_zero));
                    state.info.state = bus::ChannelState::Open;
                    bus::Reply::Accepted
                }
                bus::Request::ReportVersions { framework, message } => {
                    state.reported.push((framework, message));
                    bus::Reply::Accepted
                }
                bus::Request::Unload { power_off_code } => {
                    state.unloads.push(power_off_code);
                    bus::Reply::Accepted
                }
                _ => bus::Reply::Refused(bus::Refusal::WrongState),
            }
        });
        let signals = Rc::new(RefCell::new(Vec::new()));
        let signal_handle = signals.clone();
        let channel_closed = Rc::new(std::cell::Cell::new(false));
        let closed_handle = channel_closed.clone();
        env.on_typed_call::<synic::Synic>(ids.synic_call, move |request: synic::Request| {
            match request {
                synic::Request::SignalHost { .. } if closed_handle.get() => {
                    synic::Reply::ChannelClosed
                }
                synic::Request::SignalHost { connection_id } => {
                    signal_handle.borrow_mut().push(connection_id);
                    synic::Reply::Done
                }
                _ => synic::Reply::HypercallFailed { status: 0x12 },
            }
        });
        TestHost {
            bus,
            signals,
            channel_closed,
            rings,
            writer: None,
            reader: None,
            next_transaction: 1,
            space_signals: 0,
        }
    }

    pub fn set_state(&self, state: bus::ChannelState, generation: u32) {
        let mut bus = self.bus.borrow_mut();
        bus.info.state = state;
        bus.info.generation = generation;
    }

    /// Fill every ring region with a non-zero pattern (see [`scribble`]).
    pub fn scribble_rings(&self) {
        self.rings.into_iter().for_each(scribble);
    }

    /// The VSC's four ring regions as the host sees them: out control, out
    /// data, in control, in data.
    pub fn ring_regions(&self) -> [component_api::Region; 4] {
        self.rings
    }

    /// A control word of one of the VSC's rings.
    pub fn control_word(&self, side: crate::memory::RingSide, offset: usize) -> u32 {
        let region = match side {
            crate::memory::RingSide::Out => self.rings[0],
            crate::memory::RingSide::In => self.rings[2],
        };
        let mut word = [0u8; 4];
        region.read(offset, &mut word).unwrap();
        u32::from_le_bytes(word)
    }

    /// Forget the host's ring positions (after the VSC reopened).
    pub fn reattach(&mut self) {
        self.writer = None;
        self.reader = None;
    }

    fn writer(&mut self) -> &mut RingWriter<RegionRingMemory> {
        let [_, _, control, data] = self.rings;
        self.writer.get_or_insert_with(|| {
            // As Hyper-V: pending_send_sz on the ring the host writes.
            RingWriter::new(ring_memory(control, data).unwrap(), true).unwrap()
        })
    }

    fn reader(&mut self) -> &mut RingReader<RegionRingMemory> {
        let [control, data, _, _] = self.rings;
        self.reader
            .get_or_insert_with(|| RingReader::new(ring_memory(control, data).unwrap()).unwrap())
    }

    /// Write an in-band packet to the VSC; returns the transaction id.
    pub fn send(&mut self, payload: &[u8]) -> u64 {
        self.send_signalled(payload).0
    }

    /// [`TestHost::send`], also returning whether the ring protocol says
    /// the host must signal the VSC now (empty -> non-empty, mask clear).
    pub fn send_signalled(&mut self, payload: &[u8]) -> (u64, bool) {
        self.try_send(payload).expect("room in the in ring")
    }

    /// [`TestHost::send_signalled`], or the ring's error (`Full`: the
    /// host's pending_send_sz is now set and it waits for the VSC's signal).
    pub fn try_send(&mut self, payload: &[u8]) -> Result<(u64, bool), RingError> {
        let transaction_id = self.next_transaction;
        let Signal(signal) = self
            .writer()
            .write_in_band(transaction_id, false, payload)?;
        self.next_transaction += 1;
        Ok((transaction_id, signal))
    }

    /// Write a packet with any descriptor (for malformed-packet tests).
    pub fn send_raw(&mut self, descriptor: &PacketDescriptor, extra: &[u8], payload: &[u8]) {
        let _ = self
            .writer()
            .write_parts(descriptor, extra, payload)
            .unwrap();
    }

    /// Write raw bytes into the in ring's control page (hostile indices).
    pub fn poke_in_control(&self, offset: usize, value: u32) {
        self.rings[2].write(offset, &value.to_le_bytes()).unwrap();
    }

    /// Write raw bytes into the in ring's data area (a host rewriting a
    /// packet it already published).
    pub fn poke_in_data(&self, offset: usize, bytes: &[u8]) {
        self.rings[3].write(offset, bytes).unwrap();
    }

    /// The next answer of the VSC: transaction id and payload.
    pub fn receive(&mut self) -> Option<(u64, Vec<u8>)> {
        let mut buffer = vec![0u8; 16384];
        let reader = self.reader();
        let packet = reader.read_packet(&mut buffer).unwrap()?;
        let result = (packet.transaction_id, packet.payload.to_vec());
        if reader.finish_batch().unwrap().0 {
            self.space_signals += 1;
        }
        Some(result)
    }

    /// The next answer, parsed: IC header and body (bounded by the pipe size).
    pub fn receive_ic(&mut self) -> Option<(IcMessageHeader, Vec<u8>)> {
        let (_, payload) = self.receive()?;
        let message = ic::parse_ic_message(&payload).unwrap();
        let end = 8 + message.pipe.data_size.get() as usize;
        Some((message.header, payload[ic::IC_HEADERS_SIZE..end].to_vec()))
    }
}

/// A driver of service `S` started over a fresh [`TestHost`], notified by
/// the bus manager once more so that its channel is open.
pub fn open_driver<S: DriverService>() -> (EnvDouble, TestHost, IcDriver<S>) {
    open_driver_with(|_| {})
}

/// [`open_driver`], with `more` giving the driver's environment what else
/// it needs (its other regions, say) after the ring and before it starts.
pub fn open_driver_with<S: DriverService>(
    more: impl FnOnce(&mut EnvDouble),
) -> (EnvDouble, TestHost, IcDriver<S>) {
    let mut env = EnvDouble::new();
    let host = TestHost::new(&mut env, S::IDS);
    more(&mut env);
    let mut driver = IcDriver::<S>::init(&mut env);
    driver.notified(&mut env, ChannelSet(S::IDS.vmbus_event.bit()));
    assert!(driver.channel.is_open());
    (env, host, driver)
}

/// synic notifies the driver: the host signalled its channel.
pub fn notify_synic<S: DriverService>(driver: &mut IcDriver<S>, env: &mut EnvDouble) {
    driver.notified(env, ChannelSet(S::IDS.synic.bit()));
}

/// The host offers these versions; the driver reads the request and
/// answers. Returns the versions the answer chose.
pub fn negotiate<S: DriverService>(
    driver: &mut IcDriver<S>,
    env: &mut EnvDouble,
    host: &mut TestHost,
    framework: &[(u16, u16)],
    message: &[(u16, u16)],
) -> Option<((u16, u16), (u16, u16))> {
    host.send(&negotiate_request(framework, message));
    notify_synic(driver, env);
    let (_, body) = host.receive_ic().expect("the negotiation is answered");
    negotiated_in(&body)
}

/// An IC request as the host writes it.
pub fn ic_request(message_type: u16, version: (u16, u16), body: &[u8]) -> Vec<u8> {
    let header = IcMessageHeader {
        framework_version: IcVersion::new(3, 0),
        message_type: message_type.into(),
        message_version: IcVersion::new(version.0, version.1),
        message_size: (body.len() as u16).into(),
        status: 0.into(),
        transaction_id: 0,
        flags: (IcFlags::TRANSACTION | IcFlags::REQUEST).bits(),
        reserved: [0; 2],
    };
    let mut out = vec![0u8; ic::IC_HEADERS_SIZE + body.len()];
    let len = ic::write_ic_message(&mut out, &header, body).unwrap();
    out.truncate(len);
    out
}

/// A heartbeat request (message version 3.0) with this sequence number.
pub fn heartbeat(sequence: u64) -> Vec<u8> {
    let body = ic::HeartbeatMessage {
        sequence: sequence.into(),
        reserved: Default::default(),
    };
    ic_request(ic::message_type::HEARTBEAT, (3, 0), &bytes_of(&body))
}

/// A negotiate request offering these versions.
pub fn negotiate_request(framework: &[(u16, u16)], message: &[(u16, u16)]) -> Vec<u8> {
    let to_versions = |list: &[(u16, u16)]| -> Vec<IcVersion> {
        list.iter().map(|&(a, b)| IcVersion::new(a, b)).collect()
    };
    let mut body = vec![0u8; 8 + 4 * (framework.len() + message.len())];
    ic::write_negotiate(&mut body, &to_versions(framework), &to_versions(message)).unwrap();
    ic_request(ic::message_type::NEGOTIATE, (1, 0), &body)
}

/// The versions a host's negotiate answer chose, if any.
pub fn negotiated_in(answer_body: &[u8]) -> Option<((u16, u16), (u16, u16))> {
    let versions = ic::parse_negotiate(answer_body).unwrap();
    match (versions.framework.as_slice(), versions.message.as_slice()) {
        ([f], [m]) => Some((
            (f.major.get(), f.minor.get()),
            (m.major.get(), m.minor.get()),
        )),
        _ => None,
    }
}

/// A descriptor for hostile tests.
pub fn descriptor(packet_type: u16, offset8: u16, len8: u16, flags: u16) -> PacketDescriptor {
    PacketDescriptor {
        packet_type: packet_type.into(),
        offset8: offset8.into(),
        len8: len8.into(),
        flags: flags.into(),
        transaction_id: 99.into(),
    }
}

/// Bytes of a struct, for building bodies.
pub fn bytes_of<T: IntoBytes + zerocopy::Immutable>(value: &T) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// The wire value of the in-band packet type.
pub fn in_band() -> u16 {
    packet::PacketType::InBand.wire()
}
