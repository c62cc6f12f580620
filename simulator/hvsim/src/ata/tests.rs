//! [`AtaDisk`] against a fake ATA device that follows the task-file
//! protocol (LBA28 and LBA48 register loading, DRQ per sector, a write
//! cache that only FLUSH CACHE empties) and can be told to misbehave.

use super::*;
use std::collections::HashMap;
use std::vec::Vec;

const ABRT: u8 = 0x04;
const UNC: u8 = 0x40;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Transfer {
    Idle,
    Identify,
    Read { lba: u64, remaining: u64 },
    Write { lba: u64, remaining: u64 },
}

/// A master ATA disk (sparse: any size) on an otherwise empty channel.
struct FakeDevice {
    sectors: u64,
    lba48: bool,
    /// Sectors on the medium and in the write cache.
    medium: HashMap<u64, Vec<u8>>,
    cache: HashMap<u64, Vec<u8>>,
    /// [current, previous] of each LBA48 register pair.
    count: [u8; 2],
    lba: [[u8; 2]; 3],
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    buffer: Vec<u8>,
    position: usize,
    transfer: Transfer,
    /// Every command with its LBA and count.
    commands: Vec<(u8, u64, u64)>,
    clock_ns: u64,
    // Misbehaviour.
    absent: bool,
    atapi: bool,
    no_master: bool,
    stuck_busy: bool,
    /// The clock does not advance.
    frozen_clock: bool,
    failing_sector: Option<u64>,
    /// Alternate-status reads that still show BSY after each command.
    busy_polls: u32,
    busy_left: u32,
}

impl FakeDevice {
    fn new(sectors: u64, lba48: bool) -> FakeDevice {
        FakeDevice {
            sectors,
            lba48,
            medium: HashMap::new(),
            cache: HashMap::new(),
            count: [0; 2],
            lba: [[0; 2]; 3],
            device: 0,
            status: status::DRDY,
            error: 0,
            control: 0,
            buffer: Vec::new(),
            position: 0,
            transfer: Transfer::Idle,
            commands: Vec::new(),
            clock_ns: 0,
            absent: false,
            atapi: false,
            no_master: false,
            stuck_busy: false,
            frozen_clock: false,
            failing_sector: None,
            busy_polls: 0,
            busy_left: 0,
        }
    }

    fn sector(&self, lba: u64) -> Vec<u8> {
        self.cache
            .get(&lba)
            .or_else(|| self.medium.get(&lba))
            .cloned()
            .unwrap_or_else(|| vec![0; SECTOR_SIZE])
    }

    fn identify_words(&self) -> [u16; 256] {
        let mut words = [0u16; 256];
        let put = |words: &mut [u16; 256], at: usize, text: &str| {
            for (i, pair) in text.as_bytes().chunks(2).enumerate() {
                words[at + i] = u16::from(pair[0]) << 8 | u16::from(*pair.get(1).unwrap_or(&b' '));
            }
        };
        put(&mut words, 10, "QM00001             ");
        put(&mut words, 23, "2.5+    ");
        put(&mut words, 27, "FAKE HARDDISK                           ");
        words[49] = 1 << 9;
        let lba28 = self.sectors.min(LBA28_LIMIT - 1);
        words[60] = lba28 as u16;
        words[61] = (lba28 >> 16) as u16;
        words[83] = 0x4000 | 1 << 12 | if self.lba48 { 1 << 10 | 1 << 13 } else { 0 };
        for i in 0..4 {
            words[100 + i] = (self.sectors >> (16 * i)) as u16;
        }
        words
    }

    fn fail(&mut self, error: u8) {
        self.status = status::DRDY | status::ERR;
        self.error = error;
        self.transfer = Transfer::Idle;
    }

    fn load_sector_for_read(&mut self) {
        if let Transfer::Read { lba, .. } = self.transfer {
            if Some(lba) == self.failing_sector {
                return self.fail(UNC);
            }
            self.buffer = self.sector(lba);
            self.position = 0;
            self.status = status::DRDY | status::DRQ;
        }
    }

    fn execute(&mut self, code: u8) {
        let ext = matches!(
            code,
            command::READ_SECTORS_EXT | command::WRITE_SECTORS_EXT | command::FLUSH_CACHE_EXT
        );
        let (lba, count) = if ext {
            let lba = (0..3).fold(0u64, |lba, i| {
                lba | u64::from(self.lba[i][0]) << (8 * i)
                    | u64::from(self.lba[i][1]) << (24 + 8 * i)
            });
            let count = u64::from(self.count[0]) | u64::from(self.count[1]) << 8;
            (lba, if count == 0 { 65536 } else { count })
        } else {
            let lba = (0..3).fold(u64::from(self.device & 0x0F) << 24, |lba, i| {
                lba | u64::from(self.lba[i][0]) << (8 * i)
            });
            let count = u64::from(self.count[0]);
            (lba, if count == 0 { 256 } else { count })
        };
        self.commands.push((code, lba, count));
        self.busy_left = self.busy_polls;
        self.error = 0;
        if ext && !self.lba48 {
            return self.fail(ABRT);
        }
        match code {
            command::IDENTIFY_DEVICE if self.atapi => {
                self.lba[1][0] = 0x14;
                self.lba[2][0] = 0xEB;
                self.fail(ABRT);
            }
            command::IDENTIFY_DEVICE => {
                self.buffer = self
                    .identify_words()
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                self.position = 0;
                self.transfer = Transfer::Identify;
                self.status = status::DRDY | status::DRQ;
            }
            command::READ_SECTORS
            | command::READ_SECTORS_EXT
            | command::WRITE_SECTORS
            | command::WRITE_SECTORS_EXT => {
                if lba + count > self.sectors {
                    return self.fail(0x10); // IDNF
                }
                let write = matches!(code, command::WRITE_SECTORS | command::WRITE_SECTORS_EXT);
                if write {
                    self.transfer = Transfer::Write {
                        lba,
                        remaining: count,
                    };
                    self.buffer.clear();
                    self.status = status::DRDY | status::DRQ;
                } else {
                    self.transfer = Transfer::Read {
                        lba,
                        remaining: count,
                    };
                    self.load_sector_for_read();
                }
            }
            command::FLUSH_CACHE | command::FLUSH_CACHE_EXT => {
                let cache = std::mem::take(&mut self.cache);
                self.medium.extend(cache);
                self.status = status::DRDY;
            }
            _ => self.fail(ABRT),
        }
    }

    fn status_now(&mut self) -> u8 {
        if !self.frozen_clock {
            self.clock_ns += 1_000;
        }
        if self.absent {
            return 0xFF;
        }
        if self.no_master {
            return 0;
        }
        if self.stuck_busy {
            return status::BSY;
        }
        if self.busy_left > 0 {
            self.busy_left -= 1;
            return status::BSY;
        }
        self.status
    }
}

impl AtaPorts for FakeDevice {
    fn read_register(&mut self, offset: u16) -> u8 {
        match offset {
            reg::ERROR => self.error,
            reg::SECTOR_COUNT => self.count[0],
            reg::LBA_LOW | reg::LBA_MID | reg::LBA_HIGH => self.lba[(offset - 3) as usize][0],
            reg::DEVICE => self.device,
            reg::STATUS => self.status_now(),
            _ => 0xFF,
        }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        match offset {
            reg::SECTOR_COUNT => self.count = [value, self.count[0]],
            reg::LBA_LOW | reg::LBA_MID | reg::LBA_HIGH => {
                let pair = &mut self.lba[(offset - 3) as usize];
                *pair = [value, pair[0]];
            }
            reg::DEVICE => self.device = value,
            reg::COMMAND => self.execute(value),
            _ => {}
        }
    }

    fn read_data(&mut self) -> u32 {
        if self.status & status::DRQ == 0 || self.position + 4 > self.buffer.len() {
            return 0xFFFF_FFFF;
        }
        let b = &self.buffer[self.position..self.position + 4];
        let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.position += 4;
        if self.position == self.buffer.len() {
            match self.transfer {
                Transfer::Identify => {
                    self.transfer = Transfer::Idle;
                    self.status = status::DRDY;
                }
                Transfer::Read { lba, remaining } if remaining > 1 => {
                    self.transfer = Transfer::Read {
                        lba: lba + 1,
                        remaining: remaining - 1,
                    };
                    self.load_sector_for_read();
                }
                _ => {
                    self.transfer = Transfer::Idle;
                    self.status = status::DRDY;
                }
            }
        }
        word
    }

    fn write_data(&mut self, value: u32) {
        let Transfer::Write { lba, remaining } = self.transfer else {
            return;
        };
        self.buffer.extend_from_slice(&value.to_le_bytes());
        if self.buffer.len() < SECTOR_SIZE {
            return;
        }
        if Some(lba) == self.failing_sector {
            return self.fail(UNC);
        }
        let sector = std::mem::take(&mut self.buffer);
        self.cache.insert(lba, sector);
        if remaining > 1 {
            self.transfer = Transfer::Write {
                lba: lba + 1,
                remaining: remaining - 1,
            };
        } else {
            self.transfer = Transfer::Idle;
            self.status = status::DRDY;
        }
    }

    fn read_alternate_status(&mut self) -> u8 {
        self.status_now()
    }

    fn write_device_control(&mut self, value: u8) {
        if self.control & control::SRST != 0 && value & control::SRST == 0 {
            // Reset released: idle, registers cleared.
            self.transfer = Transfer::Idle;
            self.status = status::DRDY;
            self.error = 0;
            self.buffer.clear();
        }
        self.control = value;
    }

    fn now_ns(&mut self) -> u64 {
        self.clock_ns
    }
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        command_ns: 50_000_000,
        flush_ns: 50_000_000,
        reset_ns: 50_000_000,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn identify_reports_model_size_and_lba48() {
    let disk = AtaDisk::probe(FakeDevice::new(131072, true)).unwrap();
    let identity = disk.identity();
    assert_eq!(identity.model, "FAKE HARDDISK");
    assert_eq!(identity.serial, "QM00001");
    assert_eq!(identity.firmware, "2.5+");
    assert!(identity.lba48 && identity.flush_ext);
    assert_eq!(disk.block_count(), 131072);
    assert_eq!(disk.block_size(), 512);
    assert_eq!(disk.ports.control & control::NIEN, control::NIEN);
}

#[test]
fn lba48_reads_and_writes_beyond_lba28_in_commands_of_256_sectors() {
    let sectors = 1u64 << 36;
    let mut disk = AtaDisk::probe(FakeDevice::new(sectors, true)).unwrap();
    let lba = 0x1_2345_6789u64;
    let data = pattern(600 * SECTOR_SIZE, 3);
    disk.write(lba, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read(lba, &mut back).unwrap();
    assert!(back == data);
    let io: Vec<_> = disk.ports.commands[1..].to_vec();
    assert_eq!(
        io,
        vec![
            (command::WRITE_SECTORS_EXT, lba, 256),
            (command::WRITE_SECTORS_EXT, lba + 256, 256),
            (command::WRITE_SECTORS_EXT, lba + 512, 88),
            (command::READ_SECTORS_EXT, lba, 256),
            (command::READ_SECTORS_EXT, lba + 256, 256),
            (command::READ_SECTORS_EXT, lba + 512, 88),
        ]
    );
    // The last sector, at the very end of the disk.
    disk.write(sectors - 1, &data[..SECTOR_SIZE]).unwrap();
    assert_eq!(disk.counters(), AtaCounters::default());
}

#[test]
fn without_lba48_it_uses_lba28_commands() {
    let mut disk = AtaDisk::probe(FakeDevice::new(0x0123_4567, false)).unwrap();
    assert!(!disk.identity().lba48);
    let data = pattern(3 * SECTOR_SIZE, 9);
    disk.write(0x0123_0000, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read(0x0123_0000, &mut back).unwrap();
    assert!(back == data);
    disk.flush().unwrap();
    let io: Vec<_> = disk.ports.commands[1..3].to_vec();
    assert_eq!(
        io,
        vec![
            (command::WRITE_SECTORS, 0x0123_0000, 3),
            (command::READ_SECTORS, 0x0123_0000, 3),
        ]
    );
    assert_eq!(disk.ports.commands[3].0, command::FLUSH_CACHE);
}

#[test]
fn writes_reach_the_medium_only_with_flush() {
    let mut disk = AtaDisk::probe(FakeDevice::new(1024, true)).unwrap();
    let data = pattern(2 * SECTOR_SIZE, 1);
    disk.write(10, &data).unwrap();
    assert!(disk.ports.medium.is_empty());
    disk.flush().unwrap();
    assert_eq!(disk.ports.medium.get(&11).unwrap()[..], data[SECTOR_SIZE..]);
    assert_eq!(
        disk.ports.commands.last().unwrap().0,
        command::FLUSH_CACHE_EXT
    );
}

#[test]
fn a_device_error_is_reported_counted_and_reset() {
    let mut device = FakeDevice::new(1024, true);
    device.failing_sector = Some(5);
    let mut disk = AtaDisk::probe_with(device, short_timeouts()).unwrap();
    let mut buf = vec![0u8; 8 * SECTOR_SIZE];
    assert_eq!(disk.read(2, &mut buf), Err(DiskError::Medium));
    assert_eq!(disk.write(4, &buf), Err(DiskError::Medium));
    let counters = disk.counters();
    assert_eq!((counters.device_errors, counters.resets), (2, 2));
    // The device works again for the sectors that are fine.
    disk.write(100, &buf).unwrap();
    disk.read(100, &mut buf).unwrap();
}

#[test]
fn a_busy_device_is_waited_for() {
    let mut device = FakeDevice::new(64, true);
    device.busy_polls = 50;
    let mut disk = AtaDisk::probe_with(device, short_timeouts()).unwrap();
    let data = pattern(4 * SECTOR_SIZE, 7);
    disk.write(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read(0, &mut back).unwrap();
    assert!(back == data);
    disk.flush().unwrap();
    assert_eq!(disk.counters(), AtaCounters::default());
}

#[test]
fn a_device_that_stays_busy_times_out() {
    let mut disk = AtaDisk::probe_with(FakeDevice::new(64, true), short_timeouts()).unwrap();
    disk.ports.stuck_busy = true;
    let started = disk.ports.clock_ns;
    let mut buf = vec![0u8; SECTOR_SIZE];
    assert_eq!(disk.read(0, &mut buf), Err(DiskError::NotReady));
    assert_eq!(disk.write(0, &buf), Err(DiskError::NotReady));
    assert_eq!(disk.flush(), Err(DiskError::NotReady));
    let counters = disk.counters();
    assert_eq!(counters.resets, 3);
    // Each request: its own wait and the reset's, both bounded.
    assert!(counters.timeouts >= 3);
    assert!(disk.ports.clock_ns - started < 7 * 50_000_000 + 1_000_000);
    disk.ports.stuck_busy = false;
    disk.read(0, &mut buf).unwrap();
}

#[test]
fn a_stuck_device_times_out_even_if_the_clock_stands_still() {
    let mut disk = AtaDisk::probe_with(FakeDevice::new(64, true), short_timeouts()).unwrap();
    disk.ports.stuck_busy = true;
    disk.ports.frozen_clock = true;
    let mut buf = vec![0u8; SECTOR_SIZE];
    assert_eq!(disk.read(0, &mut buf), Err(DiskError::NotReady));
    assert!(disk.counters().timeouts >= 1);
}

#[test]
fn probe_tells_what_is_on_the_channel() {
    let mut absent = FakeDevice::new(64, true);
    absent.absent = true;
    assert_eq!(
        AtaDisk::probe_with(absent, short_timeouts()).err(),
        Some(ProbeError::NoController)
    );
    let mut empty = FakeDevice::new(64, true);
    empty.no_master = true;
    assert_eq!(
        AtaDisk::probe_with(empty, short_timeouts()).err(),
        Some(ProbeError::NoDevice)
    );
    let mut cdrom = FakeDevice::new(64, true);
    cdrom.atapi = true;
    assert_eq!(
        AtaDisk::probe_with(cdrom, short_timeouts()).err(),
        Some(ProbeError::NotAtaDisk)
    );
    let mut stuck = FakeDevice::new(64, true);
    stuck.stuck_busy = true;
    assert_eq!(
        AtaDisk::probe_with(stuck, short_timeouts()).err(),
        Some(ProbeError::NoController)
    );
}

#[test]
fn requests_outside_the_disk_never_reach_the_device() {
    let mut disk = AtaDisk::probe(FakeDevice::new(64, true)).unwrap();
    let issued = disk.ports.commands.len();
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    assert_eq!(disk.read(63, &mut buf), Err(DiskError::OutOfRange));
    assert_eq!(disk.write(u64::MAX, &buf), Err(DiskError::OutOfRange));
    assert_eq!(disk.read(0, &mut buf[..100]), Err(DiskError::OutOfRange));
    assert_eq!(disk.discard(60, 5), Err(DiskError::OutOfRange));
    assert_eq!(disk.ports.commands.len(), issued);
    assert_eq!(disk.counters(), AtaCounters::default());
}

#[test]
fn discard_writes_zeros() {
    let mut disk = AtaDisk::probe(FakeDevice::new(1024, true)).unwrap();
    let data = pattern(300 * SECTOR_SIZE, 5);
    disk.write(0, &data).unwrap();
    disk.discard(1, 298).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read(0, &mut back).unwrap();
    assert_eq!(back[..SECTOR_SIZE], data[..SECTOR_SIZE]);
    assert!(back[SECTOR_SIZE..299 * SECTOR_SIZE].iter().all(|&b| b == 0));
    assert_eq!(back[299 * SECTOR_SIZE..], data[299 * SECTOR_SIZE..]);
}

#[test]
fn identify_strings_are_printable_and_sizes_capped() {
    let mut words = FakeDevice::new(64, true).identify_words();
    words[27] = 0x0041; // "\0A"
    for i in 0..4 {
        words[100 + i] = 0xFFFF;
    }
    let identity = Identity::parse(&words).unwrap();
    assert!(identity.model.starts_with("?AKE"), "{}", identity.model);
    assert_eq!(identity.sectors, LBA48_LIMIT);
    words[0] = 0x8580;
    assert_eq!(Identity::parse(&words), Err(ProbeError::NotAtaDisk));
    words[0] = 0;
    words[49] = 0;
    assert_eq!(Identity::parse(&words), Err(ProbeError::Unsupported));
}
