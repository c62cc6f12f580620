//! The storage host driven by a small guest-side client: the guest writes
//! vstor packets into the channel's out ring with `vmbus-ring` (as
//! storvsc does), the endpoint drains them and the controller answers;
//! the guest reads the completions from the in ring.

use super::*;
use crate::disk::MemoryDisk;
use crate::memory::test_ring::VecRing;
use crate::memory::VecMemory;
use crate::vmbus::DeviceKind;
use vmbus_protocol::packet::PacketKind;
use vmbus_protocol::scsi::{
    self as scsi_wire, opcode, Cdb10, Cdb16, Cdb6, CdbReadCapacity16, CdbReportLuns, CdbUnmap,
    FixedSense, InquiryData, ReadCapacity16Data, UnmapDescriptor, UnmapListHeader,
};
use vmbus_protocol::storage::{data_direction, ScsiRequest};
use vmbus_ring::{GpaRange, RingReader, RingWriter};
use zerocopy::FromBytes;

const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 8;
/// Out ring: page 0 control, 1..=8 data. In ring: page 9 control, 10..=17.
const OUT_PAGES: core::ops::Range<u64> = 0..1 + RING_DATA_PAGES;
const IN_PAGES: core::ops::Range<u64> = 9..10 + RING_DATA_PAGES;
/// The guest's data buffers start here.
const DATA_PAGE: u64 = 32;
const MEMORY_PAGES: u64 = 64;
const RELID: u32 = 7;

/// A guest packet's answer as the guest read it.
#[derive(Debug)]
struct Answer {
    transaction_id: u64,
    completion: bool,
    header: VstorHeader,
    payload: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u32 {
        self.header.status.get()
    }
    fn scsi(&self) -> ScsiRequest {
        let mut request = ScsiRequest::default();
        let len = self.payload.len().min(vstor::SCSI_REQUEST_SIZE);
        request.as_mut_bytes()[..len].copy_from_slice(&self.payload[..len]);
        request
    }
}

struct Rig {
    memory: &'static VecMemory,
    endpoint: ChannelEndpoint,
    controller: StorageController,
    writer: RingWriter<VecRing>,
    reader: RingReader<VecRing>,
    next_id: u64,
    now_ns: u64,
    /// The vstor packet size the guest sends (64 until it negotiated an
    /// older version).
    packet_size: usize,
    version: u16,
}

impl Rig {
    fn new(config: StorageConfig, disks: Vec<MemoryDisk>) -> Rig {
        let memory: &'static VecMemory = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            VecMemory::new((MEMORY_PAGES * PAGE) as usize),
        ));
        let out_pages: Vec<u64> = OUT_PAGES.collect();
        let in_pages: Vec<u64> = IN_PAGES.collect();
        let endpoint =
            ChannelEndpoint::new(DeviceKind::Storage, 1, &out_pages, &in_pages, memory, 0);
        let writer = RingWriter::new(
            VecRing::new(memory, OUT_PAGES.start * PAGE, RING_DATA_PAGES),
            false,
        )
        .unwrap();
        let reader =
            RingReader::new(VecRing::new(memory, IN_PAGES.start * PAGE, RING_DATA_PAGES)).unwrap();
        let mut controller = StorageController::new(config);
        for (lun, disk) in disks.into_iter().enumerate() {
            assert!(controller.attach(lun as u8, alloc::boxed::Box::new(disk)));
        }
        Rig {
            memory,
            endpoint,
            controller,
            writer,
            reader,
            next_id: 1,
            now_ns: 0,
            packet_size: vstor::MAX_PACKET_SIZE,
            version: version::WIN10,
        }
    }

    /// A vstor packet of the guest's size.
    fn packet(&self, op: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = alloc::vec![0u8; self.packet_size];
        let header = VstorHeader {
            operation: op.into(),
            flags: vstor::VSTOR_FLAG_REQUEST_COMPLETION.into(),
            status: 0.into(),
        };
        bytes[..vstor::HEADER_SIZE].copy_from_slice(header.as_bytes());
        let len = payload.len().min(self.packet_size - vstor::HEADER_SIZE);
        bytes[vstor::HEADER_SIZE..vstor::HEADER_SIZE + len].copy_from_slice(&payload[..len]);
        bytes
    }

    /// Writes the packet (in band, or GPA-direct over `range` = (gpa,
    /// len) as one multi-page range) and runs the host; returns its id.
    fn send_raw(&mut self, bytes: &[u8], range: Option<(u64, u32)>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        match range {
            None => {
                let _ = self.writer.write_in_band(id, true, bytes).unwrap();
            }
            Some((gpa, len)) => {
                let first = gpa / PAGE;
                let last = (gpa + len as u64).div_ceil(PAGE);
                let pfns: Vec<u64> = (first..last).collect();
                let _ = self
                    .writer
                    .write_gpa_direct(
                        id,
                        true,
                        &[GpaRange {
                            byte_offset: (gpa % PAGE) as u32,
                            byte_count: len,
                            pfns: &pfns,
                        }],
                        bytes,
                    )
                    .unwrap();
            }
        }
        self.step();
        id
    }

    fn step(&mut self) {
        self.endpoint.step(self.memory, 1, self.now_ns);
        let packets = core::mem::take(&mut self.endpoint.storage_inbox);
        self.controller.serve(
            &mut self.endpoint,
            self.memory,
            RELID,
            true,
            packets,
            self.now_ns,
        );
    }

    /// Everything the host sent since the last look.
    fn answers(&mut self) -> Vec<Answer> {
        let mut answers = Vec::new();
        let mut buffer = alloc::vec![0u8; 512];
        while let Some(packet) = self.reader.read_packet(&mut buffer).unwrap() {
            let (header, rest) = VstorHeader::read_from_prefix(packet.payload).unwrap();
            answers.push(Answer {
                transaction_id: packet.transaction_id,
                completion: packet.kind == PacketKind::Completion,
                header,
                payload: rest.to_vec(),
            });
        }
        let _ = self.reader.finish_batch().unwrap();
        answers
    }

    /// A request and its one completion.
    fn call(&mut self, op: u32, payload: &[u8]) -> Answer {
        let bytes = self.packet(op, payload);
        let id = self.send_raw(&bytes, None);
        self.one_answer(id)
    }

    fn one_answer(&mut self, id: u64) -> Answer {
        let mut answers = self.answers();
        assert_eq!(answers.len(), 1, "{answers:?}");
        let answer = answers.remove(0);
        assert!(answer.completion);
        assert_eq!(answer.transaction_id, id);
        assert_eq!(answer.header.operation.get(), operation::COMPLETE_IO);
        answer
    }

    fn init(&mut self, asks: &[u16]) -> ChannelProperties {
        assert_eq!(
            self.call(operation::BEGIN_INITIALIZATION, &[]).status(),
            status::SUCCESS
        );
        let mut agreed = None;
        for &asked in asks {
            let version = ProtocolVersion {
                major_minor: asked.into(),
                revision: 0.into(),
            };
            let answer = self.call(operation::QUERY_PROTOCOL_VERSION, version.as_bytes());
            if answer.status() == status::SUCCESS {
                agreed = Some(asked);
                break;
            }
            assert_eq!(answer.status(), status::REVISION_MISMATCH);
        }
        let agreed = agreed.expect("a version was accepted");
        self.version = agreed;
        self.packet_size = vstor::packet_size(agreed);
        let answer = self.call(operation::QUERY_PROPERTIES, &[]);
        assert_eq!(answer.status(), status::SUCCESS);
        let (properties, _) = ChannelProperties::read_from_prefix(&answer.payload).unwrap();
        assert_eq!(
            self.call(operation::END_INITIALIZATION, &[]).status(),
            status::SUCCESS
        );
        properties
    }

    /// A SCSI command; data (if any) in guest memory at `gpa`.
    fn scsi(&mut self, lun: u8, cdb: &[u8], direction: u8, data: Option<(u64, u32)>) -> Answer {
        let request = ScsiRequest::new(
            lun,
            cdb,
            direction,
            data.map_or(0, |(_, len)| len),
            self.version,
        );
        let bytes = self.packet(operation::EXECUTE_SRB, request.as_bytes());
        let id = self.send_raw(&bytes, data);
        self.one_answer(id)
    }

    fn fill(&self, gpa: u64, len: usize, seed: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self.memory.write(gpa, &data).unwrap();
        data
    }

    fn read_memory(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut data = alloc::vec![0u8; len];
        self.memory.read(gpa, &mut data).unwrap();
        data
    }
}

fn rig() -> Rig {
    let mut rig = Rig::new(
        StorageConfig::default(),
        alloc::vec![MemoryDisk::new(512, 2048)],
    );
    rig.init(&version::ALL);
    rig
}

fn sense_of(answer: &Answer) -> (u8, scsi_wire::asc::Code) {
    let response = answer.scsi();
    assert_ne!(
        response.srb_status & srb::AUTOSENSE_VALID,
        0,
        "{response:?}"
    );
    FixedSense::parse(response.sense(version::WIN10).unwrap()).unwrap()
}

#[test]
fn versions_are_negotiated_newest_first_and_refused_with_revision_mismatch() {
    let config = StorageConfig {
        newest_version: version::WIN8_1,
        max_sub_channels: 3,
        ..StorageConfig::default()
    };
    let mut rig = Rig::new(config, Vec::new());
    let properties = rig.init(&[0x0601, version::WIN10, version::WIN8_1]);
    assert_eq!(rig.controller.version(), Some(version::WIN8_1));
    assert_eq!(rig.controller.stats.versions_refused, 2);
    assert_eq!(properties.max_channel_count.get(), 3);
    assert_eq!(properties.flags.get(), channel_flags::MULTI_CHANNEL);
    assert_eq!(properties.max_transfer_bytes.get(), 256 * 1024);

    // Win7: no multi-channel, and completions as short as the requests.
    let mut rig = Rig::new(StorageConfig::default(), Vec::new());
    rig.packet_size = vstor::packet_size(version::WIN7);
    let properties = rig.init(&[version::WIN7]);
    assert_eq!(properties.max_channel_count.get(), 0);
    assert_eq!(properties.flags.get(), 0);
    let answer = rig.call(operation::EXECUTE_SRB, &[0; 0x24]);
    assert_eq!(answer.payload.len(), 0x24);
    let two = SubChannelCount { count: 2.into() };
    assert_eq!(
        rig.call(operation::CREATE_SUB_CHANNELS, two.as_bytes())
            .status(),
        status::INVALID_DEVICE_STATE
    );
    assert_eq!(rig.controller.sub_channels_requested, None);
}

#[test]
fn the_initialization_order_is_enforced() {
    let mut rig = Rig::new(StorageConfig::default(), Vec::new());
    assert_eq!(
        rig.call(operation::QUERY_PROPERTIES, &[]).status(),
        status::INVALID_DEVICE_STATE
    );
    assert_eq!(
        rig.call(operation::EXECUTE_SRB, &[0; 0x34]).status(),
        status::INVALID_DEVICE_STATE
    );
    assert_eq!(rig.controller.stats.rule_violations, 2);
    assert_eq!(
        rig.call(operation::BEGIN_INITIALIZATION, &[]).status(),
        status::SUCCESS
    );
    // Properties before a version.
    assert_eq!(
        rig.call(operation::QUERY_PROPERTIES, &[]).status(),
        status::INVALID_DEVICE_STATE
    );
    assert_eq!(rig.controller.version(), None);
    // BEGIN again after a reset (the channel reopened) is fine.
    rig.controller.reset_protocol();
    rig.init(&[version::WIN10]);
    assert_eq!(rig.controller.version(), Some(version::WIN10));
    // After initialization, initialization operations are refused.
    assert_eq!(
        rig.call(operation::BEGIN_INITIALIZATION, &[]).status(),
        status::INVALID_DEVICE_STATE
    );
    // Resets are accepted.
    assert_eq!(
        rig.call(operation::RESET_BUS, &[]).status(),
        status::SUCCESS
    );
}

#[test]
fn sub_channels_are_requested_within_the_advertised_count() {
    let mut rig = Rig::new(
        StorageConfig {
            max_sub_channels: 2,
            ..StorageConfig::default()
        },
        Vec::new(),
    );
    rig.call(operation::BEGIN_INITIALIZATION, &[]);
    let version = ProtocolVersion {
        major_minor: version::WIN10.into(),
        revision: 0.into(),
    };
    rig.call(operation::QUERY_PROTOCOL_VERSION, version.as_bytes());
    rig.call(operation::QUERY_PROPERTIES, &[]);
    let three = SubChannelCount { count: 3.into() };
    assert_eq!(
        rig.call(operation::CREATE_SUB_CHANNELS, three.as_bytes())
            .status(),
        status::INVALID_PARAMETER
    );
    assert_eq!(rig.controller.sub_channels_requested, None);
    let two = SubChannelCount { count: 2.into() };
    assert_eq!(
        rig.call(operation::CREATE_SUB_CHANNELS, two.as_bytes())
            .status(),
        status::SUCCESS
    );
    assert_eq!(rig.controller.sub_channels_requested.take(), Some(2));
    assert_eq!(
        rig.call(operation::END_INITIALIZATION, &[]).status(),
        status::SUCCESS
    );
}

#[test]
fn writes_and_reads_move_data_through_multi_page_ranges() {
    let mut rig = rig();
    // 8 blocks starting mid-page: the range spans two pages and a bit.
    let gpa = DATA_PAGE * PAGE + 1000;
    let len = 8 * 512;
    let data = rig.fill(gpa, len, 7);
    let answer = rig.scsi(
        0,
        Cdb10::write(100, 8).as_bytes(),
        data_direction::WRITE,
        Some((gpa, len as u32)),
    );
    let response = answer.scsi();
    assert_eq!(answer.status(), status::SUCCESS);
    assert_eq!(response.srb_status, srb::SUCCESS);
    assert_eq!(response.data_transfer_length.get(), len as u32);
    // Read it back with READ(16) elsewhere.
    let back = (DATA_PAGE + 8) * PAGE + 8;
    let answer = rig.scsi(
        0,
        Cdb16::read(100, 8).as_bytes(),
        data_direction::READ,
        Some((back, len as u32)),
    );
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    assert_eq!(rig.read_memory(back, len), data);
    let stats = rig.controller.stats;
    assert_eq!((stats.reads, stats.writes), (1, 1));
    assert_eq!((stats.bytes_read, stats.bytes_written), (4096, 4096));
    // Beyond the disk: ILLEGAL REQUEST, LBA OUT OF RANGE.
    let answer = rig.scsi(
        0,
        Cdb10::read(2047, 2).as_bytes(),
        data_direction::READ,
        Some((back, 1024)),
    );
    assert_eq!(
        sense_of(&answer),
        (
            scsi_wire::sense_key::ILLEGAL_REQUEST,
            scsi_wire::asc::LBA_OUT_OF_RANGE
        )
    );
}

#[test]
fn a_range_outside_guest_memory_is_refused_and_counted() {
    let mut rig = rig();
    let outside = MEMORY_PAGES * PAGE - 512;
    let answer = rig.scsi(
        0,
        Cdb10::read(0, 2).as_bytes(),
        data_direction::READ,
        Some((outside, 1024)),
    );
    let response = answer.scsi();
    assert_eq!(response.srb_status, srb::ERROR);
    assert_eq!(response.data_transfer_length.get(), 0);
    assert_eq!(rig.controller.stats.gpa_outside_memory, 1);
    assert_eq!(rig.controller.stats.rule_violations, 1);
    assert_eq!(rig.controller.stats.reads, 0);
    // The page inside memory was not written either.
    assert!(rig.read_memory(outside, 512).iter().all(|&b| b == 0));
}

#[test]
fn the_data_length_must_match_the_range_and_the_cdb() {
    let mut rig = rig();
    let gpa = DATA_PAGE * PAGE;
    // The request says 1024 bytes, its range holds 512.
    let request = ScsiRequest::new(
        0,
        Cdb10::read(0, 2).as_bytes(),
        data_direction::READ,
        1024,
        version::WIN10,
    );
    let bytes = rig.packet(operation::EXECUTE_SRB, request.as_bytes());
    let id = rig.send_raw(&bytes, Some((gpa, 512)));
    assert_eq!(rig.one_answer(id).scsi().srb_status, srb::INVALID_REQUEST);
    // The CDB moves 2 blocks, the buffer holds 3.
    let answer = rig.scsi(
        0,
        Cdb10::read(0, 2).as_bytes(),
        data_direction::READ,
        Some((gpa, 1536)),
    );
    assert_eq!(
        answer.scsi().scsi_status,
        scsi_wire::status::CHECK_CONDITION
    );
    // Data without ranges.
    let request = ScsiRequest::new(0, Cdb10::read(0, 1).as_bytes(), 1, 512, version::WIN10);
    let answer = rig.call(operation::EXECUTE_SRB, request.as_bytes());
    assert_eq!(answer.scsi().srb_status, srb::INVALID_REQUEST);
    assert_eq!(rig.controller.stats.rule_violations, 3);
}

#[test]
fn discovery_commands_answer_like_a_synthetic_disk() {
    let mut rig = rig();
    let gpa = DATA_PAGE * PAGE;
    let answer = rig.scsi(
        0,
        Cdb6::inquiry(None, 96).as_bytes(),
        data_direction::READ,
        Some((gpa, 96)),
    );
    assert_eq!(answer.scsi().data_transfer_length.get(), 36);
    let (inquiry, _) = InquiryData::read_from_prefix(&rig.read_memory(gpa, 36)).unwrap();
    assert_eq!(&inquiry.vendor, b"Msft    ");
    assert_eq!(inquiry.peripheral, 0);
    // VPD 0x00 lists the pages; each listed page is served.
    rig.scsi(
        0,
        Cdb6::inquiry(Some(0), 64).as_bytes(),
        data_direction::READ,
        Some((gpa, 64)),
    );
    let page = rig.read_memory(gpa, 9);
    assert_eq!(&page[..4], &[0, 0, 0, 5]);
    for &code in &page[4..9] {
        let answer = rig.scsi(
            0,
            Cdb6::inquiry(Some(code), 255).as_bytes(),
            data_direction::READ,
            Some((gpa, 255)),
        );
        assert_eq!(answer.scsi().srb_status, srb::SUCCESS, "page {code:#x}");
        assert_eq!(rig.read_memory(gpa, 2)[1], code);
    }
    // An unknown VPD page: ILLEGAL REQUEST.
    let answer = rig.scsi(
        0,
        Cdb6::inquiry(Some(0xC7), 255).as_bytes(),
        data_direction::READ,
        Some((gpa, 255)),
    );
    assert_eq!(sense_of(&answer).0, scsi_wire::sense_key::ILLEGAL_REQUEST);
    // READ CAPACITY 10 and 16.
    rig.scsi(
        0,
        &[opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        data_direction::READ,
        Some((gpa, 8)),
    );
    assert_eq!(rig.read_memory(gpa, 8), [0, 0, 0x07, 0xFF, 0, 0, 2, 0]);
    rig.scsi(
        0,
        CdbReadCapacity16::new(32).as_bytes(),
        data_direction::READ,
        Some((gpa, 32)),
    );
    let (capacity, _) = ReadCapacity16Data::read_from_prefix(&rig.read_memory(gpa, 32)).unwrap();
    assert_eq!(capacity.last_lba.get(), 2047);
    assert_eq!(capacity.block_length.get(), 512);
    // REPORT LUNS, and a LUN that does not exist.
    rig.scsi(
        0,
        CdbReportLuns::new(64).as_bytes(),
        data_direction::READ,
        Some((gpa, 64)),
    );
    assert_eq!(
        rig.read_memory(gpa, 16),
        [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let answer = rig.scsi(
        3,
        Cdb6::inquiry(None, 36).as_bytes(),
        data_direction::READ,
        Some((gpa, 36)),
    );
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    assert_eq!(rig.read_memory(gpa, 1)[0], 0x7F);
    let answer = rig.scsi(3, Cdb6::test_unit_ready().as_bytes(), 2, None);
    assert_eq!(answer.scsi().srb_status, srb::INVALID_LUN);
    assert_eq!(answer.status(), status::DEVICE_DOES_NOT_EXIST);
}

#[test]
fn an_unknown_opcode_is_an_illegal_request_with_autosense() {
    let mut rig = rig();
    let answer = rig.scsi(0, &[0xEE, 0, 0, 0, 0, 0], data_direction::UNKNOWN, None);
    let response = answer.scsi();
    assert_eq!(response.scsi_status, scsi_wire::status::CHECK_CONDITION);
    assert_eq!(
        response.srb_status,
        srb::INVALID_REQUEST | srb::AUTOSENSE_VALID
    );
    assert_eq!(response.sense_info_length, 18);
    assert_eq!(
        sense_of(&answer),
        (
            scsi_wire::sense_key::ILLEGAL_REQUEST,
            scsi_wire::asc::INVALID_COMMAND_OPERATION_CODE
        )
    );
    assert_eq!(rig.controller.stats.check_conditions, 1);
}

#[test]
fn sense_is_cut_to_what_the_guest_offers() {
    let mut rig = rig();
    let mut request = ScsiRequest::new(0, &[0xEE], data_direction::UNKNOWN, 0, version::WIN10);
    request.sense_info_length = 14;
    let answer = rig.call(operation::EXECUTE_SRB, request.as_bytes());
    assert_eq!(answer.scsi().sense_info_length, 14);
    assert_eq!(
        FixedSense::parse(answer.scsi().sense(version::WIN10).unwrap())
            .unwrap()
            .0,
        scsi_wire::sense_key::ILLEGAL_REQUEST
    );
}

#[test]
fn unmap_flush_and_read_only() {
    let mut rig = rig();
    let gpa = DATA_PAGE * PAGE;
    rig.fill(gpa, 4096, 3);
    rig.scsi(
        0,
        Cdb10::write(10, 8).as_bytes(),
        data_direction::WRITE,
        Some((gpa, 4096)),
    );
    let mut list = UnmapListHeader {
        data_length: 22.into(),
        block_descriptor_data_length: 16.into(),
        reserved: [0; 4],
    }
    .as_bytes()
    .to_vec();
    list.extend_from_slice(
        UnmapDescriptor {
            lba: 12.into(),
            blocks: 2.into(),
            reserved: [0; 4],
        }
        .as_bytes(),
    );
    let list_gpa = (DATA_PAGE + 4) * PAGE;
    rig.memory.write(list_gpa, &list).unwrap();
    let answer = rig.scsi(
        0,
        CdbUnmap::new(24).as_bytes(),
        data_direction::WRITE,
        Some((list_gpa, 24)),
    );
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    let back = (DATA_PAGE + 8) * PAGE;
    rig.scsi(
        0,
        Cdb10::read(10, 8).as_bytes(),
        data_direction::READ,
        Some((back, 4096)),
    );
    let data = rig.read_memory(back, 4096);
    assert!(data[1024..2048].iter().all(|&b| b == 0));
    assert_eq!(data[..1024], rig.read_memory(gpa, 1024)[..]);
    let answer = rig.scsi(
        0,
        Cdb10::sync_cache(0, 0).as_bytes(),
        data_direction::UNKNOWN,
        None,
    );
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    assert_eq!(rig.controller.stats.flushes, 1);
    assert_eq!(rig.controller.stats.unmaps, 1);

    let mut rig = Rig::new(
        StorageConfig::default(),
        alloc::vec![MemoryDisk::from_bytes(512, alloc::vec![0; 4096], true)],
    );
    rig.init(&version::ALL);
    let answer = rig.scsi(
        0,
        Cdb10::write(0, 1).as_bytes(),
        data_direction::WRITE,
        Some((gpa, 512)),
    );
    assert_eq!(
        sense_of(&answer),
        (
            scsi_wire::sense_key::DATA_PROTECT,
            scsi_wire::asc::WRITE_PROTECTED
        )
    );
}

#[test]
fn hot_add_and_remove_tell_the_guest_and_raise_unit_attentions() {
    let mut rig = rig();
    assert!(rig
        .controller
        .hot_add(1, alloc::boxed::Box::new(MemoryDisk::new(4096, 16))));
    rig.step();
    let answers = rig.answers();
    assert_eq!(answers.len(), 1);
    assert!(!answers[0].completion);
    assert_eq!(answers[0].header.operation.get(), operation::ENUMERATE_BUS);
    assert_eq!(answers[0].payload.len(), vstor::PAYLOAD_SIZE);
    let tur = Cdb6::test_unit_ready();
    let answer = rig.scsi(1, tur.as_bytes(), data_direction::UNKNOWN, None);
    assert_eq!(
        sense_of(&answer),
        (
            scsi_wire::sense_key::UNIT_ATTENTION,
            scsi_wire::asc::POWER_ON_RESET
        )
    );
    let answer = rig.scsi(0, tur.as_bytes(), data_direction::UNKNOWN, None);
    assert_eq!(
        sense_of(&answer),
        (
            scsi_wire::sense_key::UNIT_ATTENTION,
            scsi_wire::asc::REPORTED_LUNS_DATA_CHANGED
        )
    );
    // Reported once.
    for lun in [0, 1] {
        let answer = rig.scsi(lun, tur.as_bytes(), data_direction::UNKNOWN, None);
        assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    }
    assert_eq!(rig.controller.stats.unit_attentions, 2);
    assert!(rig.controller.hot_remove(1).is_some());
    rig.step();
    assert_eq!(
        rig.answers()[0].header.operation.get(),
        operation::ENUMERATE_BUS
    );
    let answer = rig.scsi(1, tur.as_bytes(), data_direction::UNKNOWN, None);
    assert_eq!(answer.scsi().srb_status, srb::INVALID_LUN);
    // REQUEST SENSE returns (and clears) LUN 0's attention.
    let gpa = DATA_PAGE * PAGE;
    let answer = rig.scsi(
        0,
        Cdb6::request_sense(18).as_bytes(),
        data_direction::READ,
        Some((gpa, 18)),
    );
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    assert_eq!(
        FixedSense::parse(&rig.read_memory(gpa, 18)).unwrap(),
        (
            scsi_wire::sense_key::UNIT_ATTENTION,
            scsi_wire::asc::REPORTED_LUNS_DATA_CHANGED
        )
    );
    let answer = rig.scsi(0, tur.as_bytes(), data_direction::UNKNOWN, None);
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
}

fn read_one(rig: &mut Rig) -> u64 {
    let request = ScsiRequest::new(
        0,
        Cdb10::read(0, 8).as_bytes(),
        data_direction::READ,
        4096,
        version::WIN10,
    );
    let bytes = rig.packet(operation::EXECUTE_SRB, request.as_bytes());
    rig.send_raw(&bytes, Some((DATA_PAGE * PAGE, 4096)))
}

#[test]
fn fault_fail_short_and_withhold_act_on_io_only() {
    let mut rig = rig();
    rig.controller.inject(StorageFault::Fail {
        sense_key: scsi_wire::sense_key::MEDIUM_ERROR,
    });
    // Discovery traffic does not consume it.
    let answer = rig.scsi(0, Cdb6::test_unit_ready().as_bytes(), 2, None);
    assert_eq!(answer.scsi().srb_status, srb::SUCCESS);
    let id = read_one(&mut rig);
    assert_eq!(
        sense_of(&rig.one_answer(id)),
        (
            scsi_wire::sense_key::MEDIUM_ERROR,
            scsi_wire::asc::UNRECOVERED_READ_ERROR
        )
    );
    rig.controller.inject(StorageFault::Short);
    let id = read_one(&mut rig);
    let response = rig.one_answer(id).scsi();
    assert_eq!(response.srb_status, srb::DATA_OVERRUN);
    assert_eq!(response.data_transfer_length.get(), 2048);
    rig.controller.inject(StorageFault::Withhold { count: 2 });
    read_one(&mut rig);
    read_one(&mut rig);
    assert!(rig.answers().is_empty());
    let id = read_one(&mut rig);
    assert_eq!(rig.one_answer(id).scsi().srb_status, srb::SUCCESS);
    assert_eq!(rig.controller.stats.completions_withheld, 2);
}

#[test]
fn fault_delay_holds_the_completion_until_due() {
    let mut rig = rig();
    rig.controller
        .inject(StorageFault::Delay { ms: 30, count: 1 });
    let id = read_one(&mut rig);
    assert!(rig.answers().is_empty());
    rig.now_ns = 29_000_000;
    rig.step();
    assert!(rig.answers().is_empty());
    rig.now_ns = 30_000_000;
    rig.step();
    assert_eq!(rig.one_answer(id).scsi().srb_status, srb::SUCCESS);
    // A closed channel's held completions are dropped.
    rig.controller
        .inject(StorageFault::Delay { ms: 1, count: 1 });
    read_one(&mut rig);
    rig.controller.forget_channel(RELID);
    rig.now_ns += 5_000_000;
    rig.step();
    assert!(rig.answers().is_empty());
}

#[test]
fn fault_corrupt_completions() {
    let mut rig = rig();
    rig.controller
        .inject(StorageFault::Corrupt(Corruption::UnknownTransaction));
    let id = read_one(&mut rig);
    let answers = rig.answers();
    assert_eq!(answers.len(), 1);
    assert_ne!(answers[0].transaction_id, id);

    rig.controller
        .inject(StorageFault::Corrupt(Corruption::Duplicate));
    let id = read_one(&mut rig);
    let answers = rig.answers();
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a.transaction_id == id));

    rig.controller
        .inject(StorageFault::Corrupt(Corruption::TransferBeyondRequest));
    let id = read_one(&mut rig);
    assert_eq!(
        rig.one_answer(id).scsi().data_transfer_length.get(),
        4096 + 4096
    );

    rig.controller
        .inject(StorageFault::Corrupt(Corruption::SenseBeyondField));
    let id = read_one(&mut rig);
    let response = rig.one_answer(id).scsi();
    assert_eq!(response.sense_info_length, 0xFF);
    assert!(response.sense(version::WIN10).is_err());
    assert_eq!(rig.controller.stats.completions_corrupted, 4);
}

#[test]
fn fault_names_parse() {
    assert_eq!(
        StorageFault::parse(&["delay", "5", "3"]),
        Some(StorageFault::Delay { ms: 5, count: 3 })
    );
    assert_eq!(
        StorageFault::parse(&["fail", "not-ready"]),
        Some(StorageFault::Fail {
            sense_key: scsi_wire::sense_key::NOT_READY
        })
    );
    assert_eq!(
        StorageFault::parse(&["corrupt", "sense-beyond"]),
        Some(StorageFault::Corrupt(Corruption::SenseBeyondField))
    );
    assert_eq!(StorageFault::parse(&["fail", "bogus"]), None);
    assert_eq!(StorageFault::parse(&["withhold"]), None);
}

#[test]
fn changing_a_disk_reports_the_capacity_change() {
    let mut rig = rig();
    let old = rig
        .controller
        .change_disk(0, alloc::boxed::Box::new(MemoryDisk::new(512, 4096)))
        .unwrap();
    assert_eq!(old.block_count(), 2048);
    let tur = Cdb6::test_unit_ready();
    let first = rig.scsi(0, tur.as_bytes(), 2, None);
    assert_eq!(sense_of(&first).1, scsi_wire::asc::MEDIUM_MAY_HAVE_CHANGED);
    let second = rig.scsi(0, tur.as_bytes(), 2, None);
    assert_eq!(sense_of(&second).1, scsi_wire::asc::CAPACITY_DATA_CHANGED);
    assert_eq!(
        rig.scsi(0, tur.as_bytes(), 2, None).scsi().srb_status,
        srb::SUCCESS
    );
}

/// Random vstor packets, CDBs and ranges from a hostile guest: the host
/// answers or refuses each, never panics, never touches memory outside.
#[test]
fn hostile_requests_never_panic() {
    let mut rig = rig();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let opcodes = [
        0x00, 0x03, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x35, 0x42, 0x5A, 0x88, 0x8A, 0x91, 0x9E, 0xA0,
        0xEE,
    ];
    for round in 0..3000u64 {
        let mut request = [0u8; 0x34];
        for byte in request.iter_mut() {
            *byte = next() as u8;
        }
        // Mostly plausible requests, sometimes pure noise.
        let plausible = round % 4 != 0;
        let len = match next() % 3 {
            0 => 0,
            1 => 512 * (1 + next() % 16) as u32,
            _ => (next() % 9000) as u32,
        };
        if plausible {
            request[5] = 0; // path
            request[6] = 0; // target
            request[7] = (next() % 3) as u8; // lun
            request[8] = 6 + (next() % 11) as u8; // cdb length
            request[10] = (next() % 3) as u8; // direction
            request[12..16].copy_from_slice(&len.to_le_bytes());
            request[16] = opcodes[(next() % opcodes.len() as u64) as usize];
            // Small LBAs and counts, so some land inside the disk.
            if next() % 2 == 0 {
                request[17..26].fill(0);
                request[24] = (len / 512) as u8;
                request[29] = (len / 512) as u8;
            }
        }
        let op = if round % 7 == 0 {
            (next() % 16) as u32
        } else {
            operation::EXECUTE_SRB
        };
        let mut bytes = rig.packet(op, &request);
        if round % 5 == 0 {
            bytes.truncate((next() % 70) as usize);
        }
        let id = rig.next_id;
        rig.next_id += 1;
        let gpa_direct = (len > 0 || next() % 4 == 0) && !bytes.is_empty();
        if gpa_direct {
            let offset = (next() % 4096) as u32;
            let count = if plausible && len > 0 && next() % 8 != 0 {
                len
            } else {
                1 + (next() % 9000) as u32
            };
            let pages = vmbus_protocol::packet::pfn_count(offset, count).unwrap();
            let pfns: Vec<u64> = (0..pages)
                .map(|_| match next() % 16 {
                    0 => next(),
                    1 => MEMORY_PAGES + next() % 4,
                    _ => DATA_PAGE + next() % 16,
                })
                .collect();
            let _ = rig
                .writer
                .write_gpa_direct(
                    id,
                    next() % 16 != 0,
                    &[GpaRange {
                        byte_offset: offset,
                        byte_count: count,
                        pfns: &pfns,
                    }],
                    &bytes,
                )
                .unwrap();
        } else {
            let _ = rig
                .writer
                .write_in_band(id, next() % 16 != 0, &bytes)
                .unwrap();
        }
        rig.step();
        let _ = rig.answers();
        if round % 500 == 0 {
            rig.controller.reset_protocol();
            rig.init(&version::ALL);
        }
    }
    assert!(rig.endpoint.broken.is_none());
    assert!(rig.controller.stats.rule_violations > 0);
    assert!(rig.controller.stats.requests > 1000);
    let stats = rig.controller.stats;
    assert!(
        stats.check_conditions > 0
            && stats.reads + stats.writes > 0
            && stats.gpa_outside_memory > 0,
        "{stats:?}"
    );
    // Pages no request named (between the rings and the data pages) were
    // never written.
    let unnamed = rig.read_memory(
        IN_PAGES.end * PAGE,
        ((DATA_PAGE - IN_PAGES.end) * PAGE) as usize,
    );
    assert!(unnamed.iter().all(|&b| b == 0));
}
