//! [`AtaDisk`]: a [`Disk`] on an ATA hard disk reached by programmed I/O
//! (PIO) through the legacy IDE ports, polled (no interrupt). In the seL4
//! image this is the disk QEMU emulates on its primary IDE channel
//! (`-drive ...,if=ide,index=0`, ports 0x1F0-0x1F7 and control 0x3F6);
//! the port access itself is the only seL4-specific part
//! ([`AtaPorts`], implemented by the component over `Env::ioport_*`), so
//! the protocol is unit-tested here against a fake device.
//!
//! What it does: IDENTIFY DEVICE (model, serial, LBA48, sector count),
//! READ/WRITE SECTORS EXT (LBA48) or READ/WRITE SECTORS (LBA28) when the
//! disk has no LBA48, FLUSH CACHE (EXT), discard as writing zeros (ATA's
//! TRIM is a DMA command; a PIO disk has no cheaper way to read back
//! zeros). Every wait for the device is bounded ([`Timeouts`]); a device
//! that stays busy, reports ERR/DF, or asks for data when it should not is
//! a [`DiskError`], counted in [`AtaCounters`], and followed by a software
//! reset so the next request starts from a known state. Data moves 4 bytes
//! per port access (32-bit PIO, which QEMU's IDE emulation and most real
//! controllers accept), halving the port accesses of 16-bit PIO.
//!
//! Trusts: nothing the device reports beyond what it must (IDENTIFY's
//! sector count is capped at what the commands can address, the model and
//! serial strings are reduced to printable ASCII).

use crate::disk::{in_range, Disk, DiskError};
use alloc::string::String;
use alloc::vec;

/// The command-block registers, as offsets from the base port (0x1F0).
pub mod reg {
    pub const DATA: u16 = 0;
    pub const ERROR: u16 = 1;
    pub const FEATURES: u16 = 1;
    pub const SECTOR_COUNT: u16 = 2;
    pub const LBA_LOW: u16 = 3;
    pub const LBA_MID: u16 = 4;
    pub const LBA_HIGH: u16 = 5;
    pub const DEVICE: u16 = 6;
    pub const STATUS: u16 = 7;
    pub const COMMAND: u16 = 7;
}

/// Status register bits.
pub mod status {
    pub const ERR: u8 = 0x01;
    pub const DRQ: u8 = 0x08;
    pub const DF: u8 = 0x20;
    pub const DRDY: u8 = 0x40;
    pub const BSY: u8 = 0x80;
}

/// Device-control register bits (control port, 0x3F6).
pub mod control {
    /// Interrupts off: this driver polls.
    pub const NIEN: u8 = 0x02;
    pub const SRST: u8 = 0x04;
}

/// The commands this driver issues.
pub mod command {
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const FLUSH_CACHE: u8 = 0xE7;
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
}

/// Device register: the LBA bit and the obsolete bits that must be set;
/// the master drive (bit 4 clear).
const DEVICE_LBA: u8 = 0xE0;

pub const SECTOR_SIZE: usize = 512;
/// Sectors per command: the most an LBA28 command can carry (256, written
/// as 0) is also a reasonable slice for LBA48.
const MAX_SECTORS_PER_COMMAND: usize = 256;
/// Less than any port access takes (an I/O exit to the emulator, or an
/// ISA bus cycle on hardware): the poll count bound of a wait.
const MIN_POLL_NS: u64 = 100;
/// The sectors LBA28 can address.
const LBA28_LIMIT: u64 = 1 << 28;
/// The sectors LBA48 can address.
const LBA48_LIMIT: u64 = 1 << 48;

/// The port access an [`AtaDisk`] needs: the command block (base + 0..8),
/// the control block (one port) and a clock for timeouts.
pub trait AtaPorts {
    fn read_register(&mut self, offset: u16) -> u8;
    fn write_register(&mut self, offset: u16, value: u8);
    /// 4 bytes from the data register (32-bit PIO), little-endian.
    fn read_data(&mut self) -> u32;
    fn write_data(&mut self, value: u32);
    /// The alternate status: the status without acknowledging anything.
    fn read_alternate_status(&mut self) -> u8;
    fn write_device_control(&mut self, value: u8);
    /// A monotonic clock in nanoseconds.
    fn now_ns(&mut self) -> u64;
}

/// How long the device may take, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A read, a write or IDENTIFY (each data block, and the completion).
    pub command_ns: u64,
    /// FLUSH CACHE: the whole write cache to the medium.
    pub flush_ns: u64,
    /// Busy after a software reset.
    pub reset_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            command_ns: 10_000_000_000,
            flush_ns: 30_000_000_000,
            reset_ns: 10_000_000_000,
        }
    }
}

/// Why the probe found no usable disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Nothing answers on the channel (the bus floats: status reads 0xFF,
    /// or the device never leaves reset).
    NoController,
    /// The channel answers but there is no master device.
    NoDevice,
    /// A packet device (ATAPI: a CD-ROM) or a SATA signature, not an ATA
    /// hard disk.
    NotAtaDisk,
    /// IDENTIFY failed (error, or no data in time).
    IdentifyFailed,
    /// A device that reports no LBA, or logical sectors other than 512 bytes.
    Unsupported,
}

/// What IDENTIFY DEVICE told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub model: String,
    pub serial: String,
    pub firmware: String,
    pub lba48: bool,
    /// Addressable sectors (LBA48's count when it has LBA48).
    pub sectors: u64,
    pub flush: bool,
    pub flush_ext: bool,
}

/// Errors seen, by kind (for the console and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtaCounters {
    /// The device stayed busy, or brought no data, past its timeout.
    pub timeouts: u64,
    /// The device reported ERR or DF.
    pub device_errors: u64,
    /// Software resets after an error or timeout.
    pub resets: u64,
}

/// An ATA disk on one IDE channel's master position.
pub struct AtaDisk<P: AtaPorts> {
    ports: P,
    identity: Identity,
    timeouts: Timeouts,
    counters: AtaCounters,
}

/// Printable ASCII from an IDENTIFY string (words hold their two
/// characters high byte first), trailing spaces removed.
fn identify_string(words: &[u16]) -> String {
    let mut text = String::new();
    for word in words {
        for byte in [(word >> 8) as u8, *word as u8] {
            text.push(if (0x20..0x7f).contains(&byte) {
                byte as char
            } else {
                '?'
            });
        }
    }
    String::from(text.trim())
}

impl Identity {
    /// The identity from IDENTIFY DEVICE's 256 words, or why it is not a
    /// disk this driver can serve.
    pub fn parse(words: &[u16; 256]) -> Result<Identity, ProbeError> {
        const LBA_SUPPORTED: u16 = 1 << 9; // word 49
        const LBA48_SUPPORTED: u16 = 1 << 10; // word 83
        const FLUSH_SUPPORTED: u16 = 1 << 12; // word 83
        const FLUSH_EXT_SUPPORTED: u16 = 1 << 13; // word 83
        const VALID_83: u16 = 0x4000; // word 83 bits 15:14 = 01: words 82-84 valid
        const LOGICAL_LARGER_THAN_512: u16 = 1 << 12; // word 106
                                                      // Word 0 bit 15: a packet (ATAPI) device.
        if words[0] & 0x8000 != 0 {
            return Err(ProbeError::NotAtaDisk);
        }
        if words[49] & LBA_SUPPORTED == 0 {
            return Err(ProbeError::Unsupported);
        }
        // Word 106 valid when bits 15:14 are 01.
        if words[106] & 0xC000 == 0x4000 && words[106] & LOGICAL_LARGER_THAN_512 != 0 {
            return Err(ProbeError::Unsupported);
        }
        let features_valid = words[83] & 0xC000 == VALID_83;
        let lba48 = features_valid && words[83] & LBA48_SUPPORTED != 0;
        let lba28_sectors = u64::from(words[60]) | u64::from(words[61]) << 16;
        let sectors = if lba48 {
            let count = (0..4).fold(0u64, |count, i| {
                count | u64::from(words[100 + i]) << (16 * i)
            });
            count.min(LBA48_LIMIT)
        } else {
            lba28_sectors.min(LBA28_LIMIT)
        };
        Ok(Identity {
            serial: identify_string(&words[10..20]),
            firmware: identify_string(&words[23..27]),
            model: identify_string(&words[27..47]),
            lba48,
            sectors,
            flush: features_valid && words[83] & FLUSH_SUPPORTED != 0,
            flush_ext: features_valid && words[83] & FLUSH_EXT_SUPPORTED != 0,
        })
    }
}

/// What a wait for the device ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    /// BSY clear, DRQ set: data to move.
    Data,
    /// BSY clear, DRQ clear: command done.
    Done,
}

impl<P: AtaPorts> AtaDisk<P> {
    /// Find and identify the master disk on the channel behind `ports`.
    /// Turns the channel's interrupt off (the driver polls).
    pub fn probe(ports: P) -> Result<AtaDisk<P>, ProbeError> {
        AtaDisk::probe_with(ports, Timeouts::default())
    }

    pub fn probe_with(mut ports: P, timeouts: Timeouts) -> Result<AtaDisk<P>, ProbeError> {
        ports.write_device_control(control::NIEN);
        ports.write_register(reg::DEVICE, DEVICE_LBA);
        settle(&mut ports);
        let first = ports.read_register(reg::STATUS);
        if first == 0xFF {
            return Err(ProbeError::NoController);
        }
        let mut disk = AtaDisk {
            ports,
            identity: Identity {
                model: String::new(),
                serial: String::new(),
                firmware: String::new(),
                lba48: false,
                sectors: 0,
                flush: false,
                flush_ext: false,
            },
            timeouts,
            counters: AtaCounters::default(),
        };
        if disk.wait_not_busy(timeouts.reset_ns).is_err() {
            return Err(ProbeError::NoController);
        }
        for register in [reg::SECTOR_COUNT, reg::LBA_LOW, reg::LBA_MID, reg::LBA_HIGH] {
            disk.ports.write_register(register, 0);
        }
        disk.ports
            .write_register(reg::COMMAND, command::IDENTIFY_DEVICE);
        settle(&mut disk.ports);
        if disk.ports.read_register(reg::STATUS) == 0 {
            return Err(ProbeError::NoDevice);
        }
        if disk.wait_not_busy(timeouts.command_ns).is_err() {
            return Err(ProbeError::IdentifyFailed);
        }
        // An ATAPI or SATA device aborts IDENTIFY DEVICE and leaves its
        // signature in the LBA mid/high registers.
        if disk.ports.read_register(reg::LBA_MID) != 0
            || disk.ports.read_register(reg::LBA_HIGH) != 0
        {
            return Err(ProbeError::NotAtaDisk);
        }
        match disk.wait_data(timeouts.command_ns) {
            Ok(Waited::Data) => {}
            _ => return Err(ProbeError::IdentifyFailed),
        }
        let mut words = [0u16; 256];
        for pair in words.chunks_exact_mut(2) {
            let data = disk.ports.read_data();
            pair[0] = data as u16;
            pair[1] = (data >> 16) as u16;
        }
        disk.identity = Identity::parse(&words)?;
        if disk.identity.sectors == 0 {
            return Err(ProbeError::Unsupported);
        }
        Ok(disk)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn counters(&self) -> AtaCounters {
        self.counters
    }

    /// Poll (through the alternate status, which acknowledges nothing)
    /// until BSY clears; then the device's error bits decide.
    /// Bounded twice: by the clock, and by a count of polls (a port
    /// access takes far more than [`MIN_POLL_NS`]) should the clock stand
    /// still.
    fn wait_not_busy(&mut self, timeout_ns: u64) -> Result<u8, DiskError> {
        let start = self.ports.now_ns();
        let max_polls = timeout_ns / MIN_POLL_NS;
        let mut polls = 0u64;
        loop {
            let status = self.ports.read_alternate_status();
            if status & status::BSY == 0 {
                return Ok(status);
            }
            polls += 1;
            if polls > max_polls || self.ports.now_ns().saturating_sub(start) > timeout_ns {
                self.counters.timeouts += 1;
                return Err(DiskError::NotReady);
            }
        }
    }

    /// Wait for the device to finish its current step: data to move
    /// (DRQ), the command done, or an error.
    fn wait_data(&mut self, timeout_ns: u64) -> Result<Waited, DiskError> {
        let status = self.wait_not_busy(timeout_ns)?;
        if status & (status::ERR | status::DF) != 0 {
            // The status register (not the alternate) acknowledges it.
            let _ = self.ports.read_register(reg::STATUS);
            let _ = self.ports.read_register(reg::ERROR);
            self.counters.device_errors += 1;
            return Err(DiskError::Medium);
        }
        Ok(if status & status::DRQ != 0 {
            Waited::Data
        } else {
            Waited::Done
        })
    }

    /// After an error or timeout: software reset, so the next command
    /// meets an idle device rather than a half-done transfer.
    fn recover(&mut self) {
        self.counters.resets += 1;
        self.ports
            .write_device_control(control::NIEN | control::SRST);
        settle(&mut self.ports);
        self.ports.write_device_control(control::NIEN);
        settle(&mut self.ports);
        let _ = self.wait_not_busy(self.timeouts.reset_ns);
        self.ports.write_register(reg::DEVICE, DEVICE_LBA);
        settle(&mut self.ports);
    }

    /// Load the task file for `count` (1..=256) sectors at `lba` and issue
    /// the read or write command.
    fn issue(&mut self, write: bool, lba: u64, count: usize) -> Result<(), DiskError> {
        let status = self.wait_not_busy(self.timeouts.command_ns)?;
        if status & status::DRQ != 0 {
            // Left over from a transfer that did not finish.
            return Err(DiskError::Medium);
        }
        let count_field = (count % 256) as u8; // 256 is written as 0
        if self.identity.lba48 {
            self.ports.write_register(reg::DEVICE, 0x40);
            // High-order bytes first (they go to the "previous" registers).
            self.ports
                .write_register(reg::SECTOR_COUNT, (count >> 8) as u8);
            self.ports.write_register(reg::LBA_LOW, (lba >> 24) as u8);
            self.ports.write_register(reg::LBA_MID, (lba >> 32) as u8);
            self.ports.write_register(reg::LBA_HIGH, (lba >> 40) as u8);
        } else {
            self.ports
                .write_register(reg::DEVICE, DEVICE_LBA | ((lba >> 24) as u8 & 0x0F));
        }
        self.ports.write_register(reg::SECTOR_COUNT, count_field);
        self.ports.write_register(reg::LBA_LOW, lba as u8);
        self.ports.write_register(reg::LBA_MID, (lba >> 8) as u8);
        self.ports.write_register(reg::LBA_HIGH, (lba >> 16) as u8);
        let code = match (write, self.identity.lba48) {
            (false, true) => command::READ_SECTORS_EXT,
            (false, false) => command::READ_SECTORS,
            (true, true) => command::WRITE_SECTORS_EXT,
            (true, false) => command::WRITE_SECTORS,
        };
        self.ports.write_register(reg::COMMAND, code);
        settle(&mut self.ports);
        Ok(())
    }

    fn read_chunk(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.issue(false, lba, buf.len() / SECTOR_SIZE)?;
        for sector in buf.chunks_exact_mut(SECTOR_SIZE) {
            if self.wait_data(self.timeouts.command_ns)? != Waited::Data {
                // Done before every sector came: the device cut it short.
                self.counters.device_errors += 1;
                return Err(DiskError::Medium);
            }
            for bytes in sector.chunks_exact_mut(4) {
                bytes.copy_from_slice(&self.ports.read_data().to_le_bytes());
            }
        }
        // Acknowledge the completion; a device still wanting to send is
        // out of step with us.
        match self.wait_data(self.timeouts.command_ns)? {
            Waited::Done => {
                let _ = self.ports.read_register(reg::STATUS);
                Ok(())
            }
            Waited::Data => Err(DiskError::Medium),
        }
    }

    fn write_chunk(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.issue(true, lba, buf.len() / SECTOR_SIZE)?;
        for sector in buf.chunks_exact(SECTOR_SIZE) {
            if self.wait_data(self.timeouts.command_ns)? != Waited::Data {
                self.counters.device_errors += 1;
                return Err(DiskError::Medium);
            }
            for bytes in sector.chunks_exact(4) {
                let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                self.ports.write_data(word);
            }
            settle(&mut self.ports);
        }
        match self.wait_data(self.timeouts.command_ns)? {
            Waited::Done => {
                let _ = self.ports.read_register(reg::STATUS);
                Ok(())
            }
            Waited::Data => Err(DiskError::Medium),
        }
    }

    fn check(&self, lba: u64, len: usize) -> Result<(), DiskError> {
        if !len.is_multiple_of(SECTOR_SIZE)
            || !in_range(lba, (len / SECTOR_SIZE) as u64, self.identity.sectors)
        {
            return Err(DiskError::OutOfRange);
        }
        Ok(())
    }

    /// `result`, after resetting the device if it failed (not for a
    /// request refused before it reached the device).
    fn recovered<T>(&mut self, result: Result<T, DiskError>) -> Result<T, DiskError> {
        if result.is_err() {
            self.recover();
        }
        result
    }
}

/// The 400 ns a device may take to put up a valid status after a command
/// or device selection: four reads of the alternate status.
fn settle<P: AtaPorts>(ports: &mut P) {
    for _ in 0..4 {
        let _ = ports.read_alternate_status();
    }
}

impl<P: AtaPorts> Disk for AtaDisk<P> {
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    fn block_count(&self) -> u64 {
        self.identity.sectors
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        let mut lba = lba;
        for chunk in buf.chunks_mut(MAX_SECTORS_PER_COMMAND * SECTOR_SIZE) {
            let result = self.read_chunk(lba, chunk);
            self.recovered(result)?;
            lba += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        let mut lba = lba;
        for chunk in buf.chunks(MAX_SECTORS_PER_COMMAND * SECTOR_SIZE) {
            let result = self.write_chunk(lba, chunk);
            self.recovered(result)?;
            lba += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// FLUSH CACHE EXT (FLUSH CACHE without LBA48). A disk that reports
    /// neither has no write cache to flush (ATA-5 and older write through).
    fn flush(&mut self) -> Result<(), DiskError> {
        let code = if self.identity.lba48 && self.identity.flush_ext {
            command::FLUSH_CACHE_EXT
        } else if self.identity.flush {
            command::FLUSH_CACHE
        } else {
            return Ok(());
        };
        let result = (|| {
            self.wait_not_busy(self.timeouts.command_ns)?;
            self.ports.write_register(reg::DEVICE, DEVICE_LBA);
            self.ports.write_register(reg::COMMAND, code);
            settle(&mut self.ports);
            match self.wait_data(self.timeouts.flush_ns)? {
                Waited::Done => {
                    let _ = self.ports.read_register(reg::STATUS);
                    Ok(())
                }
                Waited::Data => Err(DiskError::Medium),
            }
        })();
        self.recovered(result)
    }

    /// Writes zeros: ATA's DATA SET MANAGEMENT (TRIM) is a DMA command,
    /// and only zeros on the medium guarantee they read back as zeros.
    fn discard(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        if !in_range(lba, blocks, self.identity.sectors) {
            return Err(DiskError::OutOfRange);
        }
        let zeros = vec![0u8; MAX_SECTORS_PER_COMMAND * SECTOR_SIZE];
        let mut done = 0u64;
        while done < blocks {
            let count = (blocks - done).min(MAX_SECTORS_PER_COMMAND as u64) as usize;
            self.write(lba + done, &zeros[..count * SECTOR_SIZE])?;
            done += count as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
