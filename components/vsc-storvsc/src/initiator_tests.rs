//! The initiator against a scripted host: every command it sends is
//! answered (or not) by `Host`, which keeps LUNs, a private buffer and a
//! queue of faults to inject.

use super::*;
use std::collections::VecDeque;
use std::vec;
use std::vec::Vec as StdVec;

#[derive(Clone, Debug)]
struct Disk {
    lun: u8,
    blocks: u64,
    block_size: u32,
    unmap: bool,
    /// VPD 0xB0's maximum UNMAP LBA count (0: none given).
    max_unmap_blocks: u32,
    /// READ CAPACITY (16) refused with ILLEGAL REQUEST.
    no_capacity_16: bool,
    block0: StdVec<u8>,
}

impl Disk {
    fn new(lun: u8, blocks: u64) -> Disk {
        Disk {
            lun,
            blocks,
            block_size: 512,
            unmap: false,
            max_unmap_blocks: 0,
            no_capacity_16: false,
            block0: vec![0; 512],
        }
    }
}

/// How the host answers one SRB (instead of executing it).
#[derive(Clone, Debug)]
enum Fault {
    Sense {
        srb: u8,
        key: u8,
        asc: u8,
    },
    Busy,
    /// Succeed but move only this many bytes.
    Short(u32),
    /// Succeed and claim this many bytes moved.
    Claim(u32),
    /// Never complete.
    Lose,
}

struct Host {
    versions: StdVec<u16>,
    properties: Properties,
    disks: StdVec<Disk>,
    report_luns: bool,
    private: StdVec<u8>,
    faults: VecDeque<(u8, Fault)>,
    /// Every command in the order it was sent.
    log: StdVec<Command>,
    /// Commands taken and not answered (lost, or held by the test).
    held: StdVec<(Tag, Command)>,
    /// Answer RESET_BUS.
    answer_reset: bool,
    now: u64,
}

fn sense_bytes(key: u8, asc: u8) -> [u8; 18] {
    let mut sense = [0u8; 18];
    sense[0] = 0x70;
    sense[2] = key;
    sense[7] = 10;
    sense[12] = asc;
    sense
}

impl Host {
    fn new() -> Host {
        Host {
            versions: vec![VERSIONS[0]],
            properties: Properties {
                max_channels: 4,
                multi_channel: true,
                max_transfer_bytes: 0x20_0000,
            },
            disks: vec![Disk::new(0, 2048)],
            report_luns: true,
            private: vec![0; PRIVATE_BYTES as usize],
            faults: VecDeque::new(),
            log: StdVec::new(),
            held: StdVec::new(),
            answer_reset: true,
            now: 0,
        }
    }

    fn disk(&self, lun: u8) -> Option<&Disk> {
        self.disks.iter().find(|d| d.lun == lun)
    }

    /// Send and answer until the initiator has nothing more to send.
    fn run(&mut self, initiator: &mut Initiator) {
        for _ in 0..10_000 {
            let Some((tag, command)) = initiator.pop_send() else {
                return;
            };
            initiator.sent(tag, self.now);
            self.log.push(command);
            self.answer(initiator, tag, command);
        }
        panic!("the initiator never stops sending");
    }

    fn answer(&mut self, initiator: &mut Initiator, tag: Tag, command: Command) {
        match command {
            Command::Control(control) => {
                let status = match control {
                    Control::QueryProtocolVersion(v) if !self.versions.contains(&v) => {
                        storage::status::REVISION_MISMATCH
                    }
                    Control::ResetBus if !self.answer_reset => {
                        self.held.push((tag, command));
                        return;
                    }
                    _ => 0,
                };
                let properties = (control == Control::QueryProperties).then_some(self.properties);
                let reply = Reply::Control { status, properties };
                let private = self.private.clone();
                initiator.on_completion(tag, reply, self.now, &mut |at, out| {
                    out.copy_from_slice(&private[at as usize..at as usize + out.len()])
                });
            }
            Command::Srb(srb) => self.answer_srb(initiator, tag, command, srb),
        }
    }

    fn answer_srb(&mut self, initiator: &mut Initiator, tag: Tag, command: Command, srb: Srb) {
        let fault = match self.faults.front() {
            Some((opcode, _)) if *opcode == srb.cdb.opcode() => {
                self.faults.pop_front().map(|(_, fault)| fault)
            }
            _ => None,
        };
        let (mut srb_status, mut scsi_status, mut transferred, mut sense) = self.execute(&srb);
        match fault {
            None => {}
            Some(Fault::Lose) => {
                self.held.push((tag, command));
                return;
            }
            Some(Fault::Sense { srb, key, asc }) => {
                srb_status = srb | storage::srb::AUTOSENSE_VALID;
                scsi_status = status::CHECK_CONDITION;
                transferred = 0;
                sense = Some(sense_bytes(key, asc));
            }
            Some(Fault::Busy) => {
                srb_status = storage::srb::ERROR;
                scsi_status = status::BUSY;
                transferred = 0;
            }
            Some(Fault::Short(bytes)) => transferred = bytes,
            Some(Fault::Claim(bytes)) => transferred = bytes,
        }
        let sense_slice: &[u8] = sense.as_ref().map_or(&[], |s| &s[..]);
        let reply = Reply::Srb {
            status: 0,
            srb_status,
            scsi_status,
            transferred,
            sense: sense_slice,
        };
        let private = self.private.clone();
        initiator.on_completion(tag, reply, self.now, &mut |at, out| {
            out.copy_from_slice(&private[at as usize..at as usize + out.len()])
        });
    }

    /// Execute an SRB against the disks: (srb status, scsi status, bytes
    /// moved, sense).
    fn execute(&mut self, srb: &Srb) -> (u8, u8, u32, Option<[u8; 18]>) {
        let check = |key: u8, asc: u8| {
            (
                storage::srb::ERROR | storage::srb::AUTOSENSE_VALID,
                status::CHECK_CONDITION,
                0,
                Some(sense_bytes(key, asc)),
            )
        };
        let cdb = srb.cdb.bytes;
        let opcode = cdb[0];
        if opcode == scsi::opcode::REPORT_LUNS {
            if !self.report_luns {
                return check(sense_key::ILLEGAL_REQUEST, 0x20);
            }
            let mut data = vec![0u8; 8];
            data[0..4].copy_from_slice(&((self.disks.len() * 8) as u32).to_be_bytes());
            for disk in &self.disks {
                let mut entry = [0u8; 8];
                entry[1] = disk.lun;
                data.extend_from_slice(&entry);
            }
            return self.reply_data(srb, &data);
        }
        let Some(disk) = self.disk(srb.lun).cloned() else {
            if opcode == scsi::opcode::INQUIRY && cdb[1] == 0 {
                // Peripheral qualifier 3: no device at this LUN.
                return self.reply_data(srb, &[0x7F, 0, 5, 0x02, 31, 0, 0, 0]);
            }
            return (storage::srb::INVALID_LUN, 0, 0, None);
        };
        match opcode {
            scsi::opcode::INQUIRY if cdb[1] & 1 == 0 => {
                let mut data = vec![0u8; 36];
                data[4] = 31;
                self.reply_data(srb, &data)
            }
            scsi::opcode::INQUIRY => match cdb[2] {
                0x00 => self.reply_data(srb, &[0, 0, 0, 4, 0x00, 0x83, 0xB0, 0xB2]),
                0x83 => self.reply_data(
                    srb,
                    &[0, 0x83, 0, 8, 0x02, 0x01, 0, 4, b'v', b'd', b'0', b'1'],
                ),
                0xB0 => {
                    let mut page = vec![0u8; 64];
                    page[1] = 0xB0;
                    page[3] = 60;
                    page[8..12].copy_from_slice(&0u32.to_be_bytes());
                    page[20..24].copy_from_slice(&disk.max_unmap_blocks.to_be_bytes());
                    self.reply_data(srb, &page)
                }
                0xB2 => {
                    let flags = if disk.unmap { 0x80 } else { 0 };
                    self.reply_data(srb, &[0, 0xB2, 0, 4, 0, flags, 0, 0])
                }
                _ => check(sense_key::ILLEGAL_REQUEST, 0x24),
            },
            scsi::opcode::SERVICE_ACTION_IN_16 => {
                if disk.no_capacity_16 {
                    return check(sense_key::ILLEGAL_REQUEST, 0x20);
                }
                let mut data = [0u8; 32];
                data[0..8].copy_from_slice(&(disk.blocks - 1).to_be_bytes());
                data[8..12].copy_from_slice(&disk.block_size.to_be_bytes());
                self.reply_data(srb, &data)
            }
            scsi::opcode::READ_CAPACITY_10 => {
                let mut data = [0u8; 8];
                data[0..4].copy_from_slice(&((disk.blocks - 1) as u32).to_be_bytes());
                data[4..8].copy_from_slice(&disk.block_size.to_be_bytes());
                self.reply_data(srb, &data)
            }
            scsi::opcode::READ_10 | scsi::opcode::READ_16 => {
                if let DataRef::Private { .. } = srb.data {
                    let block0 = disk.block0.clone();
                    return self.reply_data(srb, &block0);
                }
                (storage::srb::SUCCESS, 0, srb.data.len(), None)
            }
            _ => (storage::srb::SUCCESS, 0, srb.data.len(), None),
        }
    }

    fn reply_data(&mut self, srb: &Srb, data: &[u8]) -> (u8, u8, u32, Option<[u8; 18]>) {
        let DataRef::Private { offset, len, .. } = srb.data else {
            panic!("discovery data not in the private buffer: {srb:?}");
        };
        let moved = data.len().min(len as usize);
        self.private[offset as usize..offset as usize + moved].copy_from_slice(&data[..moved]);
        (storage::srb::SUCCESS, 0, moved as u32, None)
    }
}

fn events(initiator: &mut Initiator) -> StdVec<Event> {
    core::iter::from_fn(|| initiator.pop_event()).collect()
}

fn responses(initiator: &mut Initiator) -> StdVec<(u8, BlockResponse)> {
    events(initiator)
        .into_iter()
        .filter_map(|e| match e {
            Event::Respond { client, response } => Some((client, response)),
            _ => None,
        })
        .collect()
}

fn whole_disk() -> Grant {
    Grant {
        lun: 0,
        partition: None,
        read_only: false,
        data_bytes: 1 << 20,
    }
}

fn config() -> Config {
    Config {
        sub_channels: 2,
        io_timeout_ns: 1_000,
        reset_timeout_ns: 500,
    }
}

/// Initialized and discovered against `host`.
fn ready(host: &mut Host, grants: &[Grant]) -> Initiator {
    let mut initiator = Initiator::new(config(), grants);
    initiator.start();
    host.run(&mut initiator);
    assert!(initiator.is_serving(), "{:?}", events(&mut initiator));
    initiator
}

fn controls(host: &Host) -> StdVec<Control> {
    host.log
        .iter()
        .filter_map(|c| match c {
            Command::Control(control) => Some(*control),
            _ => None,
        })
        .collect()
}

fn srbs(host: &Host) -> StdVec<Srb> {
    host.log
        .iter()
        .filter_map(|c| match c {
            Command::Srb(srb) => Some(*srb),
            _ => None,
        })
        .collect()
}

fn read(id: u32, disk_block: u64, count: u32) -> BlockRequest {
    BlockRequest {
        op: BlockOp::Read,
        id,
        disk_block,
        count,
        offset: 0,
    }
}

#[test]
fn negotiates_newest_first_then_initializes_and_asks_for_sub_channels() {
    let mut host = Host::new();
    host.versions = vec![storage::version::WIN8];
    let mut initiator = ready(&mut host, &[whole_disk()]);
    assert_eq!(
        controls(&host),
        vec![
            Control::BeginInitialization,
            Control::QueryProtocolVersion(0x0602),
            Control::QueryProtocolVersion(0x0600),
            Control::QueryProtocolVersion(0x0501),
            Control::QueryProperties,
            Control::EndInitialization,
            Control::CreateSubChannels(2),
        ]
    );
    assert_eq!(initiator.version(), Some(0x0501));
    assert_eq!(initiator.sub_channels(), 2);
    assert!(events(&mut initiator).contains(&Event::Initialized {
        version: 0x0501,
        properties: host.properties,
        sub_channels: 2
    }));
}

#[test]
fn no_sub_channels_before_windows_8_or_without_the_flag() {
    let mut host = Host::new();
    host.versions = vec![storage::version::WIN7];
    let initiator = ready(&mut host, &[whole_disk()]);
    assert_eq!(initiator.version(), Some(0x0402));
    assert_eq!(initiator.sub_channels(), 0);
    assert!(!controls(&host).contains(&Control::CreateSubChannels(2)));

    let mut host = Host::new();
    host.properties.multi_channel = false;
    let initiator = ready(&mut host, &[whole_disk()]);
    assert_eq!(initiator.sub_channels(), 0);

    // The host allows fewer than we can open: its number.
    let mut host = Host::new();
    host.properties.max_channels = 1;
    let initiator = ready(&mut host, &[whole_disk()]);
    assert_eq!(initiator.sub_channels(), 1);
}

#[test]
fn no_common_version_fails_the_controller() {
    let mut host = Host::new();
    host.versions = vec![0x0100];
    let mut initiator = Initiator::new(config(), &[whole_disk()]);
    initiator.start();
    host.run(&mut initiator);
    assert!(initiator.has_failed());
    assert_eq!(controls(&host).len(), 1 + VERSIONS.len());
    assert!(events(&mut initiator).contains(&Event::Failed(
        "the host accepts no storage protocol version"
    )));
}

#[test]
fn discovery_reports_luns_reads_vpd_and_falls_back_to_read_capacity_10() {
    let mut host = Host::new();
    let mut second = Disk::new(2, 1 << 20);
    second.block_size = 4096;
    second.unmap = true;
    second.no_capacity_16 = true;
    host.disks.push(second);
    let mut initiator = ready(&mut host, &[whole_disk()]);
    let luns = initiator.luns();
    assert_eq!(luns.len(), 2);
    assert_eq!(
        (luns[0].lun, luns[0].blocks, luns[0].block_size),
        (0, 2048, 512)
    );
    assert_eq!(
        (luns[1].lun, luns[1].blocks, luns[1].block_size),
        (2, 1 << 20, 4096)
    );
    assert!(luns[1].unmap && !luns[0].unmap);
    assert_eq!(initiator.ident.as_str(), "vd01");
    let opcodes: StdVec<(u8, u8)> = srbs(&host)
        .iter()
        .map(|s| (s.lun, s.cdb.opcode()))
        .collect();
    assert_eq!(opcodes[0], (0, scsi::opcode::REPORT_LUNS));
    assert!(opcodes.contains(&(2, scsi::opcode::SERVICE_ACTION_IN_16)));
    assert!(opcodes.contains(&(2, scsi::opcode::READ_CAPACITY_10)));
    assert!(!opcodes.contains(&(0, scsi::opcode::READ_CAPACITY_10)));
    let events = events(&mut initiator);
    assert!(events.contains(&Event::Serving {
        first: true,
        luns: 2
    }));
    assert_eq!(
        initiator.area(0),
        Some(Area {
            first_block: 0,
            blocks: 2048,
            block_size: 512,
            read_only: false
        })
    );
}

#[test]
fn without_report_luns_the_luns_are_scanned() {
    let mut host = Host::new();
    host.report_luns = false;
    host.disks = vec![Disk::new(3, 100)];
    let grant = Grant {
        lun: 3,
        ..whole_disk()
    };
    let initiator = ready(&mut host, &[grant]);
    assert_eq!(initiator.luns().len(), 1);
    assert_eq!(initiator.luns()[0].lun, 3);
    let inquiries = srbs(&host)
        .iter()
        .filter(|s| s.cdb.opcode() == scsi::opcode::INQUIRY && s.cdb.bytes[1] == 0)
        .count();
    assert_eq!(inquiries, MAX_LUNS);
    assert_eq!(initiator.area(0).map(|a| a.blocks), Some(100));
}

#[test]
fn a_partition_grant_is_resolved_from_the_mbr() {
    let mut host = Host::new();
    let block0 = &mut host.disks[0].block0;
    block0[446 + 16 + 4] = 0x0C;
    block0[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&100u32.to_le_bytes());
    block0[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&900u32.to_le_bytes());
    block0[510] = 0x55;
    block0[511] = 0xAA;
    let part2 = Grant {
        partition: Some(2),
        ..whole_disk()
    };
    let part1 = Grant {
        partition: Some(1),
        ..whole_disk()
    };
    let mut initiator = ready(&mut host, &[part2, part1]);
    assert_eq!(
        initiator.area(0),
        Some(Area {
            first_block: 100,
            blocks: 900,
            block_size: 512,
            read_only: false
        })
    );
    assert_eq!(initiator.area(1), None);
    assert!(events(&mut initiator).contains(&Event::GrantUnusable {
        client: 1,
        why: "its partition is not in the MBR"
    }));
}

#[test]
fn reads_and_writes_name_the_clients_data_and_pick_the_cdb_size() {
    let mut host = Host::new();
    host.disks[0].blocks = 1 << 34;
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.log.clear();
    initiator.submit(
        0,
        BlockRequest {
            offset: 4096,
            ..read(7, 10, 8)
        },
    );
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Write,
            id: 8,
            disk_block: 1 << 33,
            count: 2,
            offset: 0,
        },
    );
    host.run(&mut initiator);
    let sent = srbs(&host);
    assert_eq!(
        sent[0].cdb.as_slice(),
        Cdb::read_write(false, 10, 8).as_slice()
    );
    assert!(sent[0].data_in);
    assert_eq!(
        sent[0].data,
        DataRef::Client {
            client: 0,
            offset: 4096,
            len: 4096
        }
    );
    assert_eq!(sent[1].cdb.opcode(), scsi::opcode::WRITE_16);
    assert!(!sent[1].data_in);
    assert_eq!(
        responses(&mut initiator),
        vec![
            (
                0,
                BlockResponse {
                    id: 7,
                    status: BlockStatus::Ok,
                    count: 8
                }
            ),
            (
                0,
                BlockResponse {
                    id: 8,
                    status: BlockStatus::Ok,
                    count: 2
                }
            ),
        ]
    );
    assert_eq!(initiator.outstanding(), 0);
}

#[test]
fn a_request_beyond_the_host_maximum_goes_in_pieces() {
    let mut host = Host::new();
    host.properties.max_transfer_bytes = 8 * 512;
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.log.clear();
    initiator.submit(0, read(1, 0, 20));
    host.run(&mut initiator);
    let pieces: StdVec<(Cdb, DataRef)> = srbs(&host).iter().map(|s| (s.cdb, s.data)).collect();
    assert_eq!(pieces.len(), 3);
    assert_eq!(pieces[2].0, Cdb::read_write(false, 16, 4));
    assert_eq!(
        pieces[2].1,
        DataRef::Client {
            client: 0,
            offset: 16 * 512,
            len: 4 * 512
        }
    );
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::Ok,
                count: 20
            }
        )]
    );
}

#[test]
fn unit_attention_is_retried_and_not_ready_retried_up_to_the_limit() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    let ua = Fault::Sense {
        srb: storage::srb::ERROR,
        key: sense_key::UNIT_ATTENTION,
        asc: 0x29,
    };
    host.faults.push_back((scsi::opcode::READ_10, ua));
    initiator.submit(0, read(1, 0, 1));
    host.run(&mut initiator);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::Ok,
                count: 1
            }
        )]
    );
    assert_eq!(initiator.stats.retries, 1);

    let not_ready = Fault::Sense {
        srb: storage::srb::ERROR,
        key: sense_key::NOT_READY,
        asc: 0x04,
    };
    for _ in 0..MAX_ATTEMPTS {
        host.faults
            .push_back((scsi::opcode::READ_10, not_ready.clone()));
    }
    host.log.clear();
    initiator.submit(0, read(2, 0, 1));
    host.run(&mut initiator);
    assert_eq!(srbs(&host).len(), MAX_ATTEMPTS as usize);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 2,
                status: BlockStatus::NotReady,
                count: 0
            }
        )]
    );
}

#[test]
fn medium_error_and_illegal_request_fail_at_once() {
    for key in [sense_key::MEDIUM_ERROR, sense_key::ILLEGAL_REQUEST] {
        let mut host = Host::new();
        let mut initiator = ready(&mut host, &[whole_disk()]);
        host.faults.push_back((
            scsi::opcode::WRITE_10,
            Fault::Sense {
                srb: storage::srb::ERROR,
                key,
                asc: 0x11,
            },
        ));
        host.log.clear();
        initiator.submit(
            0,
            BlockRequest {
                op: BlockOp::Write,
                ..read(5, 0, 4)
            },
        );
        host.run(&mut initiator);
        assert_eq!(srbs(&host).len(), 1, "no retry for sense key {key}");
        assert_eq!(
            responses(&mut initiator),
            vec![(
                0,
                BlockResponse {
                    id: 5,
                    status: BlockStatus::IoError,
                    count: 0
                }
            )]
        );
    }
}

#[test]
fn busy_is_retried_with_its_own_patience() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    for _ in 0..(MAX_ATTEMPTS + 3) {
        host.faults.push_back((scsi::opcode::READ_10, Fault::Busy));
    }
    initiator.submit(0, read(1, 0, 1));
    host.run(&mut initiator);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::Ok,
                count: 1
            }
        )]
    );
}

#[test]
fn a_short_transfer_goes_on_from_where_the_host_stopped() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.faults
        .push_back((scsi::opcode::READ_10, Fault::Short(3 * 512 + 100)));
    host.log.clear();
    initiator.submit(0, read(1, 40, 8));
    host.run(&mut initiator);
    let sent = srbs(&host);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].cdb, Cdb::read_write(false, 43, 5));
    assert_eq!(
        sent[1].data,
        DataRef::Client {
            client: 0,
            offset: 3 * 512,
            len: 5 * 512
        }
    );
    assert_eq!(initiator.stats.short_transfers, 1);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::Ok,
                count: 8
            }
        )]
    );
}

#[test]
fn a_hostile_host_is_refused_and_counted_without_harm() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    // More bytes than asked: refused, the read retried.
    host.faults
        .push_back((scsi::opcode::READ_10, Fault::Claim(4097)));
    initiator.submit(0, read(1, 0, 8));
    host.run(&mut initiator);
    assert_eq!(initiator.stats.hostile_completions, 1);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::Ok,
                count: 8
            }
        )]
    );
    // A completion for a slot not in use, and one with a stale sequence.
    let mut nothing = |_: u32, _: &mut [u8]| {};
    let ok = Reply::Srb {
        status: 0,
        srb_status: 1,
        scsi_status: 0,
        transferred: 0,
        sense: &[],
    };
    initiator.on_completion(Tag { slot: 5, seq: 0 }, ok, 0, &mut nothing);
    initiator.on_completion(Tag { slot: 9999, seq: 0 }, ok, 0, &mut nothing);
    assert_eq!(initiator.stats.late_completions, 2);
    // A malformed completion (the wire module refused it): a failed
    // attempt, retried.
    initiator.submit(0, read(2, 0, 1));
    let (tag, _) = initiator.pop_send().unwrap();
    initiator.sent(tag, 0);
    initiator.on_malformed(tag);
    assert_eq!(initiator.stats.hostile_completions, 2);
    // Its retry answered, then the same tag again: a duplicate.
    host.run(&mut initiator);
    initiator.on_completion(tag, ok, 0, &mut nothing);
    assert_eq!(initiator.stats.late_completions, 3);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 2,
                status: BlockStatus::Ok,
                count: 1
            }
        )]
    );
    // A control answer to an SRB.
    initiator.submit(0, read(3, 0, 1));
    let (tag, _) = initiator.pop_send().unwrap();
    initiator.on_completion(
        tag,
        Reply::Control {
            status: 0,
            properties: None,
        },
        0,
        &mut nothing,
    );
    assert_eq!(initiator.stats.hostile_completions, 3);
    host.run(&mut initiator);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 3,
                status: BlockStatus::Ok,
                count: 1
            }
        )]
    );
}

#[test]
fn a_request_never_completed_resets_the_bus_and_fails_clearly() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
    host.log.clear();
    assert_eq!(initiator.next_deadline(), None, "nothing outstanding");
    initiator.submit(0, read(1, 0, 1));
    host.run(&mut initiator);
    assert!(responses(&mut initiator).is_empty());
    // The component asks synic to wake it then.
    assert_eq!(initiator.next_deadline(), Some(1_000));
    initiator.tick(999);
    assert_eq!(initiator.pop_send(), None);
    initiator.tick(1_000);
    assert_eq!(initiator.stats.timeouts, 1);
    host.run(&mut initiator);
    assert_eq!(controls(&host), vec![Control::ResetBus]);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::IoError,
                count: 0
            }
        )]
    );
    assert_eq!(initiator.next_deadline(), None, "all answered");
    // A new read takes the freed slot (the host holds it too) ...
    host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
    initiator.submit(0, read(2, 0, 1));
    host.run(&mut initiator);
    let (tag, _) = host.held.remove(0);
    assert_eq!(host.held[0].0.slot, tag.slot, "the slot is reused");
    // ... and then the host completes the lost read after all: refused as
    // late, and not taken for the new read.
    let mut nothing = |_: u32, _: &mut [u8]| {};
    let ok = Reply::Srb {
        status: 0,
        srb_status: 1,
        scsi_status: 0,
        transferred: 512,
        sense: &[],
    };
    initiator.on_completion(tag, ok, 0, &mut nothing);
    assert_eq!(initiator.stats.late_completions, 1);
    assert!(responses(&mut initiator).is_empty());
    assert!(!initiator.has_failed());
}

#[test]
fn a_reset_the_host_never_completes_fails_the_controller() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
    host.answer_reset = false;
    initiator.submit(0, read(1, 0, 1));
    host.run(&mut initiator);
    host.now = 1_000;
    initiator.tick(1_000);
    host.run(&mut initiator);
    // Timed out, it waits no more; the reset it started is what to wake for.
    assert_eq!(initiator.next_deadline(), Some(1_500));
    initiator.tick(1_499);
    assert!(!initiator.has_failed());
    initiator.tick(1_500);
    assert!(initiator.has_failed());
    assert!(
        events(&mut initiator).contains(&Event::Failed("the host did not complete a bus reset"))
    );
}

#[test]
fn flush_is_answered_only_after_synchronize_cache_completes() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.faults
        .push_back((scsi::opcode::SYNCHRONIZE_CACHE_10, Fault::Lose));
    host.log.clear();
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Flush,
            ..read(9, 0, 0)
        },
    );
    host.run(&mut initiator);
    assert_eq!(
        srbs(&host)[0].cdb.opcode(),
        scsi::opcode::SYNCHRONIZE_CACHE_10
    );
    assert!(responses(&mut initiator).is_empty());
    let (tag, _) = host.held.pop().unwrap();
    let mut nothing = |_: u32, _: &mut [u8]| {};
    let ok = Reply::Srb {
        status: 0,
        srb_status: 1,
        scsi_status: 0,
        transferred: 0,
        sense: &[],
    };
    initiator.on_completion(tag, ok, 0, &mut nothing);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 9,
                status: BlockStatus::Ok,
                count: 0
            }
        )]
    );
}

#[test]
fn requests_outside_the_area_or_writes_to_a_read_only_grant_never_reach_the_host() {
    let mut host = Host::new();
    let read_only = Grant {
        read_only: true,
        ..whole_disk()
    };
    let mut initiator = ready(&mut host, &[read_only]);
    host.log.clear();
    initiator.submit(0, read(1, 2040, 9));
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Write,
            ..read(2, 0, 1)
        },
    );
    initiator.submit(
        0,
        BlockRequest {
            offset: (1 << 20) - 512,
            ..read(3, 0, 2)
        },
    );
    host.run(&mut initiator);
    assert!(host.log.is_empty());
    let statuses: StdVec<BlockStatus> = responses(&mut initiator)
        .iter()
        .map(|(_, r)| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            BlockStatus::SeekError,
            BlockStatus::ReadOnly,
            BlockStatus::Invalid
        ]
    );
}

#[test]
fn unmap_only_where_supported() {
    let mut host = Host::new();
    host.disks[0].unmap = true;
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.log.clear();
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Discard,
            ..read(4, 100, 50)
        },
    );
    host.run(&mut initiator);
    let sent = srbs(&host);
    assert_eq!(sent[0].cdb.opcode(), scsi::opcode::UNMAP);
    let DataRef::Private {
        fill: Some(list), ..
    } = sent[0].data
    else {
        panic!("{:?}", sent[0].data);
    };
    assert_eq!(&list[8..16], &100u64.to_be_bytes());
    assert_eq!(&list[16..20], &50u32.to_be_bytes());
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 4,
                status: BlockStatus::Ok,
                count: 50
            }
        )]
    );
    assert!(initiator.discard_supported(0));

    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    assert!(!initiator.discard_supported(0));
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Discard,
            ..read(4, 100, 50)
        },
    );
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 4,
                status: BlockStatus::NotSupported,
                count: 0
            }
        )]
    );
    assert!(srbs(&host)
        .iter()
        .all(|srb| srb.cdb.opcode() != scsi::opcode::UNMAP));
}

fn unmapped_ranges(host: &Host) -> StdVec<(u64, u32)> {
    srbs(host)
        .iter()
        .filter(|srb| srb.cdb.opcode() == scsi::opcode::UNMAP)
        .map(|srb| match srb.data {
            DataRef::Private {
                fill: Some(list), ..
            } => (
                u64::from_be_bytes(list[8..16].try_into().unwrap()),
                u32::from_be_bytes(list[16..20].try_into().unwrap()),
            ),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_discard_is_split_by_the_block_limits_maximum() {
    let mut host = Host::new();
    host.disks[0].unmap = true;
    host.disks[0].max_unmap_blocks = 20;
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.log.clear();
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Discard,
            ..read(4, 100, 50)
        },
    );
    host.run(&mut initiator);
    assert_eq!(
        unmapped_ranges(&host),
        vec![(100, 20), (120, 20), (140, 10)]
    );
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 4,
                status: BlockStatus::Ok,
                count: 50
            }
        )]
    );

    // A piece that fails ends the request with the blocks done before it.
    let mut host = Host::new();
    host.disks[0].unmap = true;
    host.disks[0].max_unmap_blocks = 20;
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.log.clear();
    initiator.submit(
        0,
        BlockRequest {
            op: BlockOp::Discard,
            ..read(5, 100, 50)
        },
    );
    // The first piece is answered, the second fails.
    let (tag, command) = initiator.pop_send().unwrap();
    initiator.sent(tag, host.now);
    host.log.push(command);
    host.answer(&mut initiator, tag, command);
    host.faults.push_back((
        scsi::opcode::UNMAP,
        Fault::Sense {
            srb: storage::srb::ERROR,
            key: sense_key::MEDIUM_ERROR,
            asc: 0x11,
        },
    ));
    host.run(&mut initiator);
    assert_eq!(unmapped_ranges(&host), vec![(100, 20), (120, 20)]);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 5,
                status: BlockStatus::IoError,
                count: 20
            }
        )]
    );
}

#[test]
fn host_events_and_a_lost_lun_rescan_the_bus() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    events(&mut initiator);
    host.log.clear();
    host.disks.push(Disk::new(1, 64));
    initiator.on_host_event(HostEvent::EnumerateBus);
    host.run(&mut initiator);
    assert_eq!(srbs(&host)[0].cdb.opcode(), scsi::opcode::REPORT_LUNS);
    assert_eq!(initiator.luns().len(), 2);
    assert!(events(&mut initiator).contains(&Event::Serving {
        first: false,
        luns: 2
    }));

    // The LUN is gone: the read fails NOT_READY and the bus is rescanned.
    host.disks.retain(|d| d.lun != 0);
    host.log.clear();
    initiator.submit(0, read(1, 0, 1));
    host.run(&mut initiator);
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 1,
                status: BlockStatus::NotReady,
                count: 0
            }
        )]
    );
    assert_eq!(initiator.luns().len(), 1);
    assert_eq!(initiator.area(0), None);
    initiator.submit(0, read(2, 0, 1));
    assert_eq!(
        responses(&mut initiator),
        vec![(
            0,
            BlockResponse {
                id: 2,
                status: BlockStatus::NotReady,
                count: 0
            }
        )]
    );
}

#[test]
fn a_lost_channel_answers_every_request_in_flight() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
    host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
    initiator.submit(0, read(1, 0, 1));
    initiator.submit(0, read(2, 1, 1));
    host.run(&mut initiator);
    initiator.channel_lost();
    let mut answered: StdVec<u32> = responses(&mut initiator)
        .iter()
        .map(|(_, r)| {
            assert_eq!(r.status, BlockStatus::NotReady);
            r.id
        })
        .collect();
    answered.sort();
    assert_eq!(answered, vec![1, 2]);
    assert_eq!(initiator.outstanding(), 0);
    assert!(!initiator.is_serving());
    // Initialization starts over on the next open.
    host.log.clear();
    initiator.start();
    host.run(&mut initiator);
    assert!(initiator.is_serving());
    assert!(events(&mut initiator).contains(&Event::Serving {
        first: false,
        luns: 1
    }));
}

#[test]
fn the_queue_depth_is_bounded_by_the_slots() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    let mut taken = 0;
    while initiator.can_accept() {
        initiator.submit(0, read(taken, 0, 1));
        taken += 1;
        assert!(taken <= MAX_SLOTS as u32);
    }
    assert_eq!(taken as usize, QUEUE_DEPTH);
    host.run(&mut initiator);
    assert_eq!(responses(&mut initiator).len(), QUEUE_DEPTH);
    assert!(initiator.can_accept());
}

#[test]
fn too_many_abandoned_commands_restart_the_controller() {
    let mut host = Host::new();
    let mut initiator = ready(&mut host, &[whole_disk()]);
    let mut now = 0;
    for id in 0..=MAX_ABANDONED as u32 {
        assert!(!initiator.has_failed(), "failed after {id} abandoned");
        host.faults.push_back((scsi::opcode::READ_10, Fault::Lose));
        host.now = now;
        initiator.submit(0, read(id, 0, 1));
        host.run(&mut initiator);
        now += 1_000;
        host.now = now;
        initiator.tick(now);
        host.run(&mut initiator);
    }
    assert_eq!(initiator.stats.abandoned, MAX_ABANDONED + 1);
    assert!(initiator.has_failed());
    assert!(events(&mut initiator).contains(&Event::Failed(
        "too many commands abandoned after bus resets"
    )));
}
