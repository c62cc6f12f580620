//! The scripted VMBus guest: control messages over HvPostMessage, replies
//! from the SIMP slot, GPADLs and rings built in the guest memory file, and
//! a guest-side ring reader/writer and IC responder.
#![allow(dead_code)]

use super::*;
use hv_interface::GuestMemory;
use hvsim::sim::Simulator;
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use uuid::Uuid;
use vmbus_protocol::gpadl::GpadlMessages;
use vmbus_protocol::ic;
use vmbus_protocol::messages::*;
use vmbus_protocol::packet::{
    control, descriptor_for, parse_packet, PacketDescriptor, PacketType, DESCRIPTOR_SIZE,
};
use vmbus_protocol::version::{CONNECTION_ID_INITIATE_CONTACT_V5, CONNECTION_ID_LEGACY};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion, VmbusMessage};
use zerocopy::{FromBytes, IntoBytes};

pub type Sim = Simulator<MappedGuestMemory>;
pub type VmbusHarness = Harness<Sim>;

pub const MONITOR1_GPA: u64 = 0x5000;
pub const MONITOR2_GPA: u64 = 0x6000;
/// Each channel's rings: 5 pages out (control + 4) then 5 pages in.
pub const RING_PAGES: u32 = 10;
pub const DOWNSTREAM_OFFSET: u32 = 5;

pub const HEARTBEAT_INSTANCE: Uuid = uuid::uuid!("11111111-2222-3333-4444-000000000001");
pub const SHUTDOWN_INSTANCE: Uuid = uuid::uuid!("11111111-2222-3333-4444-000000000002");
pub const TIMESYNC_INSTANCE: Uuid = uuid::uuid!("11111111-2222-3333-4444-000000000003");
pub const KVP_INSTANCE: Uuid = uuid::uuid!("11111111-2222-3333-4444-000000000004");
pub const DISK_INSTANCE: Uuid = uuid::uuid!("11111111-2222-3333-4444-000000000005");

pub fn default_devices() -> Vec<DeviceConfig> {
    let mut disk = DeviceConfig {
        class: vmbus_protocol::guid::class::SCSI,
        instance: DISK_INSTANCE,
        kind: DeviceKind::Generic,
        monitored: true,
        message_pipe: false,
    };
    disk.monitored = true;
    vec![
        DeviceConfig::ic(DeviceKind::Heartbeat, HEARTBEAT_INSTANCE),
        DeviceConfig::ic(DeviceKind::Shutdown, SHUTDOWN_INSTANCE),
        DeviceConfig::ic(DeviceKind::TimeSync, TIMESYNC_INSTANCE),
        DeviceConfig::ic(DeviceKind::Kvp, KVP_INSTANCE),
        disk,
    ]
}

pub fn start_vmbus(name: &str, config: ServerConfig) -> VmbusHarness {
    let mut h = start(name, move |memory| Simulator::new(memory, config));
    h.enable_synic(true);
    h
}

pub fn config() -> ServerConfig {
    ServerConfig {
        devices: default_devices(),
        ..ServerConfig::default()
    }
}

/// The guest's view of one channel's rings (contiguous in guest memory).
#[derive(Clone, Copy, Debug)]
pub struct GuestRings {
    pub base: u64,
    /// Guest-side private indices.
    pub out_write: u32,
    pub in_read: u32,
}

impl GuestRings {
    pub fn out_control(&self) -> u64 {
        self.base
    }
    pub fn out_data(&self) -> u64 {
        self.base + 4096
    }
    pub fn in_control(&self) -> u64 {
        self.base + DOWNSTREAM_OFFSET as u64 * 4096
    }
    pub fn in_data(&self) -> u64 {
        self.in_control() + 4096
    }
    pub fn data_size(&self) -> u32 {
        (DOWNSTREAM_OFFSET - 1) * 4096
    }
}

impl VmbusHarness {
    pub fn version(&self) -> ProtocolVersion {
        self.with(|s| s.vmbus.version())
            .unwrap_or(ProtocolVersion::V5_3)
    }

    pub fn post_message<T: VmbusMessage>(&mut self, connection: u32, message: &T) -> HvStatus {
        self.post(connection, message.as_bytes())
    }

    /// The connection control messages go to after negotiation.
    pub fn message_connection(&self) -> u32 {
        let version = self.version();
        version.message_connection_id(self.with(|s| s.vmbus.config.msg_conn_id))
    }

    pub fn send<T: VmbusMessage>(&mut self, message: &T) -> HvStatus {
        let connection = self.message_connection();
        self.post_message(connection, message)
    }

    /// Next control message, parsed with the negotiated version.
    pub fn next(&mut self, timeout: Duration) -> Option<ChannelMessage> {
        let version = self.version();
        let bytes = self.receive_message(timeout)?;
        Some(parse(&bytes, version).expect("host sent a well-formed message"))
    }

    pub fn expect(&mut self) -> ChannelMessage {
        self.next(Duration::from_secs(5))
            .expect("a message from the host")
    }

    pub fn expect_none(&mut self, ms: u64) {
        let extra = self.next(Duration::from_millis(ms));
        assert!(extra.is_none(), "unexpected message: {extra:?}");
    }

    pub fn initiate_contact(&mut self, version: ProtocolVersion, connection: u32) -> HvStatus {
        let mut contact = InitiateContact::empty();
        contact.version_requested = version.0.into();
        contact.interrupt_page_or_target_info = if version.uses_message_sint() {
            InitiateContact::target_info(VMBUS_SINT, 0, 0)
        } else {
            0x7000
        }
        .into();
        contact.monitor_page1 = MONITOR1_GPA.into();
        contact.monitor_page2 = MONITOR2_GPA.into();
        self.post_message(connection, &contact)
    }

    /// Negotiates `version` on its proper connection; returns the response.
    pub fn connect(&mut self, version: ProtocolVersion) -> VersionResponse {
        let status = self.initiate_contact(version, version.initiate_contact_connection_id());
        assert_eq!(status, HvStatus::SUCCESS);
        match self.expect() {
            ChannelMessage::VersionResponse(response) => response,
            other => panic!("expected VersionResponse, got {other:?}"),
        }
    }

    /// RequestOffers; returns the offers up to AllOffersDelivered.
    pub fn request_offers(&mut self) -> Vec<OfferChannel> {
        assert_eq!(self.send(&RequestOffers::empty()), HvStatus::SUCCESS);
        let mut offers = Vec::new();
        loop {
            match self.expect() {
                ChannelMessage::OfferChannel(offer) => offers.push(offer),
                ChannelMessage::AllOffersDelivered(_) => return offers,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub fn boot(&mut self) -> Vec<OfferChannel> {
        let response = self.connect(ProtocolVersion::V5_3);
        assert_eq!(response.version_supported, 1);
        self.request_offers()
    }

    /// Sends the GPADL messages for `pages` (whole pages starting at `gpa`).
    pub fn send_gpadl(&mut self, relid: u32, gpadl_id: u32, pfns: &[u64]) {
        for message in GpadlMessages::for_pages(relid, gpadl_id, pfns).unwrap() {
            let connection = self.message_connection();
            assert_eq!(self.post(connection, message.as_bytes()), HvStatus::SUCCESS);
        }
    }

    pub fn create_gpadl(&mut self, relid: u32, gpadl_id: u32, pfns: &[u64]) -> GpadlCreated {
        self.send_gpadl(relid, gpadl_id, pfns);
        match self.expect() {
            ChannelMessage::GpadlCreated(created) => created,
            other => panic!("expected GpadlCreated, got {other:?}"),
        }
    }

    pub fn ring_base(relid: u32) -> u64 {
        0x10_0000 + relid as u64 * RING_PAGES as u64 * 4096
    }

    pub fn ring_pfns(relid: u32) -> Vec<u64> {
        let first = Self::ring_base(relid) / 4096;
        (first..first + RING_PAGES as u64).collect()
    }

    pub fn open_message(relid: u32, gpadl_id: u32) -> OpenChannel {
        let mut open = OpenChannel::empty();
        open.child_relid = relid.into();
        open.open_id = (relid + 100).into();
        open.ring_gpadl_id = gpadl_id.into();
        open.downstream_ring_page_offset = DOWNSTREAM_OFFSET.into();
        open
    }

    /// GPADL + OpenChannel for `relid`; returns the guest's rings.
    pub fn open_channel(&mut self, relid: u32) -> GuestRings {
        let gpadl_id = 0x1000 + relid;
        let base = Self::ring_base(relid);
        self.memory
            .write(base, &vec![0u8; RING_PAGES as usize * 4096])
            .unwrap();
        let created = self.create_gpadl(relid, gpadl_id, &Self::ring_pfns(relid));
        assert_eq!(created.creation_status.get(), 0);
        assert_eq!(
            self.send(&Self::open_message(relid, gpadl_id)),
            HvStatus::SUCCESS
        );
        match self.expect() {
            ChannelMessage::OpenChannelResult(result) => {
                assert_eq!(result.status.get(), 0);
                assert_eq!(result.open_id.get(), relid + 100);
            }
            other => panic!("expected OpenChannelResult, got {other:?}"),
        }
        GuestRings {
            base,
            out_write: 0,
            in_read: 0,
        }
    }

    pub fn close_channel(&mut self, relid: u32) {
        let mut close = CloseChannel::empty();
        close.child_relid = relid.into();
        assert_eq!(self.send(&close), HvStatus::SUCCESS);
    }

    pub fn relid_of(offers: &[OfferChannel], instance: Uuid) -> u32 {
        offers
            .iter()
            .find(|o| o.interface_instance.to_uuid() == instance)
            .map(|o| o.child_relid.get())
            .expect("offered")
    }

    pub fn connection_of(offers: &[OfferChannel], relid: u32) -> u32 {
        offers
            .iter()
            .find(|o| o.child_relid.get() == relid)
            .map(|o| o.connection_id.get())
            .expect("offered")
    }

    /// Writes an in-band packet into the out ring; returns whether the
    /// guest must signal (ring was empty, host's mask clear).
    pub fn write_packet(
        &mut self,
        rings: &mut GuestRings,
        transaction_id: u64,
        payload: &[u8],
        completion: bool,
    ) -> bool {
        let descriptor = descriptor_for(
            PacketType::InBand,
            0,
            payload.len(),
            transaction_id,
            completion,
        )
        .unwrap();
        let mut bytes = descriptor.as_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes.resize(descriptor.len8.get() as usize * 8, 0);
        let start = rings.out_write;
        bytes.extend_from_slice(&((start as u64) << 32).to_le_bytes());
        let size = rings.data_size();
        for (i, byte) in bytes.iter().enumerate() {
            let offset = (start as usize + i) % size as usize;
            self.memory
                .write(rings.out_data() + offset as u64, &[*byte])
                .unwrap();
        }
        let read = self
            .memory
            .load_u32(rings.out_control() + control::READ_INDEX as u64)
            .unwrap();
        rings.out_write = (start + bytes.len() as u32) % size;
        self.memory
            .store_u32(
                rings.out_control() + control::WRITE_INDEX as u64,
                rings.out_write,
            )
            .unwrap();
        let mask = self
            .memory
            .load_u32(rings.out_control() + control::INTERRUPT_MASK as u64)
            .unwrap();
        read == start && mask == 0
    }

    /// Reads one raw packet (descriptor included) from the in ring, checking
    /// the host's write index like a careful guest. Err(text) for a hostile ring.
    pub fn read_raw_packet(&mut self, rings: &mut GuestRings) -> Result<Option<Vec<u8>>, String> {
        let size = rings.data_size();
        let write = self
            .memory
            .load_u32(rings.in_control() + control::WRITE_INDEX as u64)
            .unwrap();
        if write >= size || !write.is_multiple_of(8) {
            return Err(format!("bad write index {write:#x}"));
        }
        if write == rings.in_read {
            return Ok(None);
        }
        let available = (write + size - rings.in_read) % size;
        let mut descriptor = [0u8; DESCRIPTOR_SIZE];
        self.read_ring(rings.in_data(), size, rings.in_read, &mut descriptor);
        let len = PacketDescriptor::read_from_bytes(&descriptor)
            .unwrap()
            .len8
            .get() as u32
            * 8;
        if len < 16 || len + 8 > available {
            return Err(format!("packet of {len} bytes, {available} available"));
        }
        let mut bytes = vec![0u8; len as usize];
        self.read_ring(rings.in_data(), size, rings.in_read, &mut bytes);
        rings.in_read = (rings.in_read + len + 8) % size;
        self.memory
            .store_u32(
                rings.in_control() + control::READ_INDEX as u64,
                rings.in_read,
            )
            .unwrap();
        Ok(Some(bytes))
    }

    fn read_ring(&self, data: u64, size: u32, start: u32, out: &mut [u8]) {
        for (i, byte) in out.iter_mut().enumerate() {
            let offset = (start as usize + i) % size as usize;
            let mut b = [0u8; 1];
            self.memory.read(data + offset as u64, &mut b).unwrap();
            *byte = b[0];
        }
    }

    /// Waits for a packet on the in ring (validated with parse_packet):
    /// returns (transaction id, packet type, payload).
    pub fn wait_packet(
        &mut self,
        rings: &mut GuestRings,
        timeout: Duration,
    ) -> Option<(u64, u16, Vec<u8>)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(bytes) = self.read_raw_packet(rings).expect("well-formed ring") {
                let packet = parse_packet(&bytes).expect("well-formed packet");
                let descriptor = PacketDescriptor::read_from_prefix(&bytes).unwrap().0;
                return Some((
                    packet.transaction_id,
                    descriptor.packet_type.get(),
                    packet.payload.to_vec(),
                ));
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            let _ = self.guest.wait_interrupt(Some(2_000_000));
        }
    }

    /// Answers the host's IC negotiate on `rings`; returns the versions.
    pub fn answer_ic_negotiate(
        &mut self,
        rings: &mut GuestRings,
        service: &[(u16, u16)],
    ) -> ic::Negotiated {
        let (transaction_id, _, payload) = self
            .wait_packet(rings, Duration::from_secs(5))
            .expect("negotiate");
        let mut out = [0u8; 128];
        let (len, chosen) =
            ic::answer_negotiate(&payload, &ic::versions::FRAMEWORK, service, &mut out).unwrap();
        if self.write_packet(rings, transaction_id, &out[..len], false) {
            self.signal_channel(rings);
        }
        chosen.expect("common version")
    }

    /// Answers one IC request with `body` (status OK, response flags);
    /// returns the request's IC header and body.
    pub fn answer_ic(
        &mut self,
        rings: &mut GuestRings,
        reply_body: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> (ic::IcMessageHeader, Vec<u8>) {
        let (transaction_id, _, payload) = self
            .wait_packet(rings, Duration::from_secs(5))
            .expect("IC request");
        let message = ic::parse_ic_message(&payload).unwrap();
        let mut header = message.header;
        header.set_flags(ic::IcFlags::TRANSACTION | ic::IcFlags::RESPONSE);
        header.status = ic::STATUS_OK.into();
        let body = reply_body(message.body);
        header.message_size = (body.len() as u16).into();
        let mut out = vec![0u8; ic::IC_HEADERS_SIZE + body.len()];
        ic::write_ic_message(&mut out, &header, &body).unwrap();
        if self.write_packet(rings, transaction_id, &out, false) {
            self.signal_channel(rings);
        }
        (message.header, message.body.to_vec())
    }

    /// Signals the host for the channel owning `rings` (relid from the base).
    pub fn signal_channel(&mut self, rings: &GuestRings) {
        let relid = ((rings.base - 0x10_0000) / (RING_PAGES as u64 * 4096)) as u32;
        let status = self.signal(0x1_0000 + relid, 0);
        assert_eq!(status, HvStatus::SUCCESS);
    }

    /// Waits until the host has seen what the guest did. The host runs
    /// its server step after every record it handles, before reading the
    /// next; so once the reply to a second round trip arrives, a step has
    /// run after everything the guest did before the first.
    pub fn settle(&mut self) {
        use hv_interface::Hypervisor;
        for _ in 0..2 {
            self.guest.msr_read(hyperv_defs::msr::SVERSION).unwrap();
        }
    }

    pub fn rejected(&mut self) -> u64 {
        self.settle();
        self.with(|s| s.vmbus.stats.messages_rejected)
    }
}

pub fn legacy() -> u32 {
    CONNECTION_ID_LEGACY
}
pub fn v5_contact() -> u32 {
    CONNECTION_ID_INITIATE_CONTACT_V5
}
