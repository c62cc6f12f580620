//! The initiator and its wire layer against the simulated host's storage
//! controller (hvsim's storvsp), in one process: real rings in shared
//! guest memory, real vstor packets both ways, GPA-direct ranges the host
//! resolves and moves data through, and the host's own fault injection.
//! What the component adds on top (IPC, the block queues) is covered by
//! the hosted end-to-end test (tests/harness, storage).

use hv_interface::GuestMemory;
use hvsim::channel::storage::{Corruption, StorageConfig, StorageController, StorageFault};
use hvsim::channel::ChannelEndpoint;
use hvsim::disk::MemoryDisk;
use hvsim::memory::VecMemory;
use hvsim::vmbus::DeviceKind;
use std::sync::atomic::AtomicU32;
use vmbus_channel::{ChannelError, DataChannel, Received, SharedBuffer};
use vmbus_protocol::scsi::sense_key;
use vmbus_protocol::storage::{version, MAX_PACKET_SIZE};
use vmbus_ring::{MemoryError, RingMemory, RingReader, RingWriter};
use vsc_storvsc::initiator::{
    BlockOp, BlockRequest, BlockResponse, BlockStatus, Command, Config, DataRef, Event, Grant,
    Initiator, Note, Tag, MAX_SLOTS,
};
use vsc_storvsc::wire::{self, Address};

const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 16;
const OUT_CONTROL: u64 = 0;
const IN_CONTROL: u64 = 1 + RING_DATA_PAGES;
/// The driver's private buffer: 2 pages.
const PRIVATE_PAGE: u64 = 40;
/// The client's data region: 64 pages.
const DATA_PAGE: u64 = 48;
const DATA_PAGES: u64 = 64;
const MEMORY_PAGES: u64 = DATA_PAGE + DATA_PAGES;
const RELID: u32 = 9;
const BLOCK: usize = 512;
/// The disk: 8 MiB, partition 1 from block 2048 to the end.
const DISK_BLOCKS: u64 = 16384;
const PARTITION_START: u64 = 2048;

struct GuestRing {
    memory: &'static VecMemory,
    control: u64,
    data: u64,
}

impl RingMemory for GuestRing {
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        self.memory
            .word(self.control + offset as u64)
            .ok_or(MemoryError)
    }
    fn data_len(&self) -> usize {
        (RING_DATA_PAGES * PAGE) as usize
    }
    fn double_mapped(&self) -> bool {
        false
    }
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        self.memory
            .read(self.data + offset as u64, out)
            .map_err(|_| MemoryError)
    }
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        self.memory
            .write(self.data + offset as u64, data)
            .map_err(|_| MemoryError)
    }
}

fn disk_image() -> Vec<u8> {
    let mut disk = vec![0u8; DISK_BLOCKS as usize * BLOCK];
    let entry = &mut disk[446..462];
    entry[4] = 0x0E;
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((DISK_BLOCKS - PARTITION_START) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    for (index, byte) in disk[PARTITION_START as usize * BLOCK..]
        .iter_mut()
        .enumerate()
    {
        *byte = (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    disk
}

struct Rig {
    memory: &'static VecMemory,
    endpoint: ChannelEndpoint,
    controller: StorageController,
    channel: DataChannel<GuestRing, Tag, MAX_SLOTS>,
    initiator: Initiator,
    address: Address,
    private: SharedBuffer,
    data: SharedBuffer,
    now_ns: u64,
    refused: u64,
    responses: Vec<BlockResponse>,
    events: Vec<Event>,
}

impl Rig {
    fn new(config: StorageConfig) -> Rig {
        let memory: &'static VecMemory =
            Box::leak(Box::new(VecMemory::new((MEMORY_PAGES * PAGE) as usize)));
        let out_pages: Vec<u64> = (OUT_CONTROL..IN_CONTROL).collect();
        let in_pages: Vec<u64> = (IN_CONTROL..IN_CONTROL + 1 + RING_DATA_PAGES).collect();
        let endpoint =
            ChannelEndpoint::new(DeviceKind::Storage, 1, &out_pages, &in_pages, memory, 0);
        let writer = RingWriter::new(
            GuestRing {
                memory,
                control: OUT_CONTROL * PAGE,
                data: (OUT_CONTROL + 1) * PAGE,
            },
            true,
        )
        .unwrap();
        let reader = RingReader::new(GuestRing {
            memory,
            control: IN_CONTROL * PAGE,
            data: (IN_CONTROL + 1) * PAGE,
        })
        .unwrap();
        let mut controller = StorageController::new(config);
        assert!(controller.attach(
            0,
            Box::new(MemoryDisk::from_bytes(512, disk_image(), false))
        ));
        let grant = Grant {
            lun: 0,
            partition: Some(1),
            read_only: false,
            data_bytes: DATA_PAGES * PAGE,
        };
        let mut initiator = Initiator::new(
            Config {
                sub_channels: 2,
                io_timeout_ns: 1_000_000_000,
                reset_timeout_ns: 1_000_000_000,
            },
            &[grant],
        );
        initiator.start();
        Rig {
            memory,
            endpoint,
            controller,
            channel: DataChannel::new(writer, reader),
            initiator,
            address: Address::default(),
            private: SharedBuffer::new(PRIVATE_PAGE * PAGE, 2 * PAGE as usize, 1).unwrap(),
            data: SharedBuffer::new(DATA_PAGE * PAGE, (DATA_PAGES * PAGE) as usize, 0).unwrap(),
            now_ns: 0,
            refused: 0,
            responses: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Send everything, let the host run, take every answer; until quiet.
    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some((tag, command)) = self.initiator.pop_send() {
                moved = true;
                self.send(tag, command);
            }
            self.endpoint.step(self.memory, 1, self.now_ns);
            let packets = std::mem::take(&mut self.endpoint.storage_inbox);
            moved |= !packets.is_empty();
            self.controller.serve(
                &mut self.endpoint,
                self.memory,
                RELID,
                true,
                packets,
                self.now_ns,
            );
            moved |= self.receive();
            while let Some(event) = self.initiator.pop_event() {
                moved = true;
                match event {
                    Event::Respond { response, .. } => self.responses.push(response),
                    other => self.events.push(other),
                }
            }
            self.initiator.tick(self.now_ns);
            if !moved && !self.initiator.has_to_send() {
                return;
            }
        }
        panic!("the exchange never settles");
    }

    fn send(&mut self, tag: Tag, command: Command) {
        let mut packet = [0u8; MAX_PACKET_SIZE];
        let len = wire::encode(
            &command,
            self.initiator.version(),
            self.address,
            &mut packet,
        );
        let slice = match command {
            Command::Srb(srb) => match srb.data {
                DataRef::None => None,
                DataRef::Private { offset, len, fill } => {
                    if let Some(bytes) = fill {
                        self.memory
                            .write(self.private.gpa() + u64::from(offset), &bytes)
                            .unwrap();
                    }
                    Some(self.private.slice(offset as usize, len as usize).unwrap())
                }
                DataRef::Client { offset, len, .. } => {
                    Some(self.data.slice(offset as usize, len as usize).unwrap())
                }
            },
            Command::Control(_) => None,
        };
        let sent = match slice {
            Some(slice) => self
                .channel
                .send_multi_page(&[slice], &packet[..len], Some(tag)),
            None => self.channel.send_in_band(&packet[..len], Some(tag)),
        };
        match sent {
            Ok(_) => self.initiator.sent(tag, self.now_ns),
            Err(error) => panic!("send failed: {:?}", error.error),
        }
    }

    fn receive(&mut self) -> bool {
        let mut moved = false;
        let mut buffer = [0u8; 512];
        loop {
            let received = match self.channel.receive(&mut buffer) {
                Ok(Some(received)) => received,
                Ok(None) => break,
                Err(ChannelError::Refused(_)) => {
                    self.refused += 1;
                    moved = true;
                    continue;
                }
                Err(error) => panic!("in ring: {error:?}"),
            };
            moved = true;
            match received {
                Received::Completion {
                    context: tag,
                    payload,
                    ..
                } => {
                    let command = self.initiator.command(tag).expect("a live tag");
                    match wire::decode_completion(payload, &command, self.initiator.version()) {
                        Ok(completion) => {
                            if let wire::Completion::Control {
                                properties: Some((_, address)),
                                ..
                            } = completion
                            {
                                self.address = address;
                            }
                            let memory = self.memory;
                            let base = self.private.gpa();
                            let mut read = |offset: u32, out: &mut [u8]| {
                                memory.read(base + u64::from(offset), out).unwrap()
                            };
                            self.initiator.on_completion(
                                tag,
                                completion.reply(),
                                self.now_ns,
                                &mut read,
                            );
                        }
                        Err(_) => {
                            self.refused += 1;
                            self.initiator.on_malformed(tag);
                        }
                    }
                }
                Received::InBand { payload, .. } => {
                    if let Ok(Some(event)) = wire::decode_host_packet(payload) {
                        self.initiator.on_host_event(event);
                    }
                }
                Received::TransferPages { .. } => self.refused += 1,
            }
        }
        let _ = self.channel.end_round().unwrap();
        moved
    }

    fn data_write(&self, offset: u64, bytes: &[u8]) {
        self.memory.write(self.data.gpa() + offset, bytes).unwrap();
    }

    fn data_read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.memory
            .read(self.data.gpa() + offset, &mut out)
            .unwrap();
        out
    }

    fn request(&mut self, op: BlockOp, id: u32, block: u64, count: u32, offset: u64) {
        self.initiator.submit(
            0,
            BlockRequest {
                op,
                id,
                disk_block: PARTITION_START + block,
                count,
                offset,
            },
        );
        self.run();
    }

    fn last(&mut self) -> BlockResponse {
        self.responses.pop().expect("an answer")
    }
}

fn ready(config: StorageConfig) -> Rig {
    let mut rig = Rig::new(config);
    rig.run();
    assert!(rig.initiator.is_serving(), "{:?}", rig.events);
    rig
}

#[test]
fn initializes_discovers_and_moves_data_through_the_clients_pages() {
    let mut rig = ready(StorageConfig {
        newest_version: version::WIN8_1,
        ..StorageConfig::default()
    });
    // 6.2 refused, 6.0 taken; the host offers 4 sub-channels, we ask 2.
    assert_eq!(rig.initiator.version(), Some(version::WIN8_1));
    assert_eq!(rig.initiator.sub_channels(), 2);
    assert_eq!(rig.controller.sub_channels_requested, Some(2));
    let area = rig.initiator.area(0).unwrap();
    assert_eq!(
        (area.first_block, area.blocks, area.block_size),
        (PARTITION_START, DISK_BLOCKS - PARTITION_START, 512)
    );
    assert_eq!(rig.initiator.luns().len(), 1);

    // What the host put in the client's pages is the disk's partition.
    rig.request(BlockOp::Read, 1, 0, 16, 8192);
    assert_eq!(
        rig.last(),
        BlockResponse {
            id: 1,
            status: BlockStatus::Ok,
            count: 16
        }
    );
    let disk = disk_image();
    let start = PARTITION_START as usize * BLOCK;
    assert_eq!(
        rig.data_read(8192, 16 * BLOCK),
        disk[start..start + 16 * BLOCK]
    );

    // A write from the client's pages, read back into other pages.
    let pattern: Vec<u8> = (0..40 * BLOCK).map(|i| (i % 251) as u8).collect();
    rig.data_write(0, &pattern);
    rig.request(BlockOp::Write, 2, 100, 40, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
    rig.request(BlockOp::Flush, 3, 0, 0, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
    rig.request(BlockOp::Read, 4, 100, 40, 64 * 1024);
    assert_eq!(rig.last().count, 40);
    assert_eq!(rig.data_read(64 * 1024, 40 * BLOCK), pattern);
    assert_eq!(rig.refused, 0);
}

#[test]
fn windows_7_hosts_get_short_packets_and_no_sub_channels() {
    let mut rig = ready(StorageConfig {
        newest_version: version::WIN7,
        ..StorageConfig::default()
    });
    assert_eq!(rig.initiator.version(), Some(version::WIN7));
    assert_eq!(rig.initiator.sub_channels(), 0);
    rig.request(BlockOp::Read, 1, 0, 8, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
    assert_eq!(rig.refused, 0);
}

#[test]
fn sense_keys_short_transfers_and_corrupt_completions_from_the_host() {
    let mut rig = ready(StorageConfig::default());
    rig.controller.inject(StorageFault::Fail {
        sense_key: sense_key::MEDIUM_ERROR,
    });
    rig.request(BlockOp::Read, 1, 0, 4, 0);
    assert_eq!(rig.last().status, BlockStatus::IoError);

    rig.controller.inject(StorageFault::Fail {
        sense_key: sense_key::UNIT_ATTENTION,
    });
    rig.events.clear();
    rig.request(BlockOp::Read, 2, 0, 4, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
    assert!(
        rig.events.contains(&Event::Note(Note::Retry {
            why: "UNIT ATTENTION",
            attempt: 1
        })),
        "{:?}",
        rig.events
    );

    rig.controller.inject(StorageFault::Short);
    rig.request(BlockOp::Read, 3, 0, 8, 0);
    assert_eq!(
        rig.last(),
        BlockResponse {
            id: 3,
            status: BlockStatus::Ok,
            count: 8
        }
    );
    assert_eq!(rig.initiator.stats.short_transfers, 1);

    for (id, corruption) in [
        (4, Corruption::TransferBeyondRequest),
        (5, Corruption::SenseBeyondField),
        (6, Corruption::Duplicate),
    ] {
        let refused = rig.refused + rig.initiator.stats.hostile_completions;
        rig.controller.inject(StorageFault::Corrupt(corruption));
        rig.request(BlockOp::Read, id, 0, 2, 0);
        assert_eq!(
            rig.last(),
            BlockResponse {
                id,
                status: BlockStatus::Ok,
                count: 2
            },
            "{corruption:?}"
        );
        assert!(
            rig.refused + rig.initiator.stats.hostile_completions > refused,
            "{corruption:?} was not refused"
        );
        assert!(rig.responses.is_empty(), "answered twice: {corruption:?}");
    }
}

#[test]
fn a_withheld_request_times_out_and_the_bus_reset_answers_it() {
    let mut rig = ready(StorageConfig::default());
    rig.controller.inject(StorageFault::Withhold { count: 1 });
    rig.request(BlockOp::Read, 1, 0, 4, 0);
    assert!(rig.responses.is_empty());
    rig.now_ns += 1_000_000_000;
    rig.run();
    assert_eq!(rig.initiator.stats.resets, 1);
    assert_eq!(
        rig.last(),
        BlockResponse {
            id: 1,
            status: BlockStatus::IoError,
            count: 0
        }
    );
    assert!(!rig.initiator.has_failed());
    rig.request(BlockOp::Read, 2, 0, 4, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
}

#[test]
fn a_removed_lun_is_rescanned_and_its_client_answered_not_ready() {
    let mut rig = ready(StorageConfig::default());
    assert!(rig.controller.hot_remove(0).is_some());
    rig.run();
    assert_eq!(rig.initiator.luns().len(), 0, "{:?}", rig.events);
    rig.request(BlockOp::Read, 1, 0, 1, 0);
    assert_eq!(rig.last().status, BlockStatus::NotReady);
    assert!(rig.controller.hot_add(
        0,
        Box::new(MemoryDisk::from_bytes(512, disk_image(), false))
    ));
    rig.run();
    assert_eq!(rig.initiator.luns().len(), 1);
    rig.request(BlockOp::Read, 2, 0, 1, 0);
    assert_eq!(rig.last().status, BlockStatus::Ok);
}
