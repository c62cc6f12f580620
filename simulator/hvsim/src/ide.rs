//! The simulated host's disk in the seL4 image: the ATA disk QEMU emulates
//! on the primary IDE channel, when the description grants this component
//! the channel's ports (`ide`, 0x1F0-0x1F7, and `ide_control`, 0x3F6).
//! The protocol is [`hvsim::ata`]; this is only the port access, through
//! the runtime's IO-port capabilities.

use crate::component::IOPORT_NAMES;
use component_api::{id_named, println, Env, IoPortName};
use hvsim::ata::{AtaDisk, AtaPorts, ProbeError};
use hvsim::disk::Disk;
use sel4_runtime::Sel4Env;

/// The primary channel's command block and control port.
pub struct IdePorts {
    env: Sel4Env,
    command: IoPortName,
    control: IoPortName,
}

impl AtaPorts for IdePorts {
    fn read_register(&mut self, offset: u16) -> u8 {
        self.env.ioport_read(self.command, offset, 1) as u8
    }
    fn write_register(&mut self, offset: u16, value: u8) {
        self.env
            .ioport_write(self.command, offset, 1, u32::from(value));
    }
    fn read_data(&mut self) -> u32 {
        self.env.ioport_read(self.command, 0, 4)
    }
    fn write_data(&mut self, value: u32) {
        self.env.ioport_write(self.command, 0, 4, value);
    }
    fn read_alternate_status(&mut self) -> u8 {
        self.env.ioport_read(self.control, 0, 1) as u8
    }
    fn write_device_control(&mut self, value: u8) {
        self.env.ioport_write(self.control, 0, 1, u32::from(value));
    }
    fn now_ns(&mut self) -> u64 {
        self.env.now_ns()
    }
}

pub type IdeDisk = AtaDisk<IdePorts>;

/// The disk on the primary IDE channel, if the description grants the
/// ports and QEMU has a disk there; says on the console what it found.
pub fn attach(env: &mut dyn Env) -> Option<IdeDisk> {
    let command = id_named(IOPORT_NAMES, "ide")?;
    let control = id_named(IOPORT_NAMES, "ide_control")?;
    let ports = IdePorts {
        env: Sel4Env::current(),
        command,
        control,
    };
    match AtaDisk::probe(ports) {
        Ok(mut disk) => {
            let identity = disk.identity();
            println!(
                env,
                "disk 0: ATA {:?} serial {:?} {} blocks of {}{}",
                identity.model,
                identity.serial,
                disk.block_count(),
                disk.block_size(),
                if identity.lba48 { ", LBA48" } else { ", LBA28" }
            );
            describe_first_block(env, &mut disk);
            Some(disk)
        }
        Err(error) => {
            let why = match error {
                ProbeError::NoController | ProbeError::NoDevice => "no disk",
                ProbeError::NotAtaDisk => "not an ATA hard disk",
                ProbeError::IdentifyFailed => "IDENTIFY failed",
                ProbeError::Unsupported => "a disk this driver cannot use",
            };
            println!(env, "disk 0: primary IDE channel: {why} ({error:?})");
            None
        }
    }
}

/// A FAT boot sector's type and label (FAT12/16 keep them at 54 and 43,
/// FAT32 at 82 and 71).
fn fat_volume(block: &[u8; 512]) -> Option<(&str, &str)> {
    let text = |range: core::ops::Range<usize>| {
        core::str::from_utf8(&block[range])
            .unwrap_or("?")
            .trim_end()
    };
    if block[54..57] == *b"FAT" {
        Some((text(54..62), text(43..54)))
    } else if block[82..87] == *b"FAT32" {
        Some((text(82..90), text(71..82)))
    } else {
        None
    }
}

/// What block 0 holds: the boot signature, and a FAT volume or an MBR's
/// partitions with the first one's FAT volume (the demo disk `cargo xtask
/// run` makes is an MBR with a FAT16 partition 1).
fn describe_first_block(env: &mut dyn Env, disk: &mut IdeDisk) {
    let mut block = [0u8; 512];
    if let Err(error) = disk.read(0, &mut block) {
        println!(env, "disk 0: reading block 0 failed: {error:?}");
        return;
    }
    let signature = u16::from_be_bytes([block[510], block[511]]);
    if let Some((kind, label)) = fat_volume(&block) {
        println!(
            env,
            "disk 0: block 0: signature {signature:04x}, {kind} volume {label:?}"
        );
        return;
    }
    println!(env, "disk 0: block 0: signature {signature:04x}");
    if signature != 0x55aa {
        return;
    }
    for (index, entry) in block[446..510].chunks_exact(16).enumerate() {
        let kind = entry[4];
        let first = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
        let count = u32::from_le_bytes([entry[12], entry[13], entry[14], entry[15]]);
        if kind == 0 || count == 0 {
            continue;
        }
        let mut boot = [0u8; 512];
        let volume = match disk.read(u64::from(first), &mut boot) {
            Ok(()) => fat_volume(&boot),
            Err(_) => None,
        };
        match volume {
            Some((fs, label)) => println!(
                env,
                "disk 0: MBR partition {}: type {kind:#04x}, {count} blocks from {first}, {fs} volume {label:?}",
                index + 1
            ),
            None => println!(
                env,
                "disk 0: MBR partition {}: type {kind:#04x}, {count} blocks from {first}",
                index + 1
            ),
        }
    }
}

/// What block 0 of a disk the host may overwrite starts with
/// (`cargo xtask boot-test` makes one; a user's disk never has it).
pub const SCRATCH_MARK: &[u8] = b"HVSIM ATA SCRATCH DISK";
/// The scratch test's area: 4 MiB from 1 MiB into the disk.
pub const SCRATCH_FIRST_BLOCK: u64 = 2048;
pub const SCRATCH_BLOCKS: u64 = 8192;
const SCRATCH_CHUNK_BLOCKS: u64 = 256;

/// The byte the scratch test writes at `offset` of block `block`; the boot
/// test checks the image file for it after power-off.
pub fn scratch_byte(block: u64, offset: usize) -> u8 {
    (block as u8) ^ (block >> 8) as u8 ^ (offset as u8).wrapping_mul(3) ^ (offset >> 8) as u8
}

fn fill_scratch(first: u64, buf: &mut [u8]) {
    for (index, block) in buf.chunks_exact_mut(512).enumerate() {
        for (offset, byte) in block.iter_mut().enumerate() {
            *byte = scratch_byte(first + index as u64, offset);
        }
    }
}

/// Whether block 0 marks the disk as scratch.
pub fn is_scratch(disk: &mut IdeDisk) -> bool {
    let mut block = [0u8; 512];
    disk.read(0, &mut block).is_ok() && block.starts_with(SCRATCH_MARK)
}

fn mb_per_s(bytes: u64, ns: u64) -> (u64, u64) {
    // MB/s with one decimal, as integers (no floats in the console path).
    let tenths = (bytes * 10_000) / ns.max(1);
    (tenths / 10, tenths % 10)
}

/// On a scratch disk: write the scratch area, flush, read it back and
/// compare; print the PIO throughput. The data stays for the boot test to
/// find in the image file.
pub fn scratch_test(env: &mut dyn Env, disk: &mut IdeDisk) {
    if disk.block_count() < SCRATCH_FIRST_BLOCK + SCRATCH_BLOCKS {
        println!(env, "disk 0: scratch disk too small for the scratch test");
        return;
    }
    let mut buf = alloc::vec![0u8; (SCRATCH_CHUNK_BLOCKS * 512) as usize];
    let bytes = SCRATCH_BLOCKS * 512;
    let started = env.now_ns();
    let mut block = SCRATCH_FIRST_BLOCK;
    while block < SCRATCH_FIRST_BLOCK + SCRATCH_BLOCKS {
        fill_scratch(block, &mut buf);
        if let Err(error) = disk.write(block, &buf) {
            println!(
                env,
                "disk 0: scratch test: write at {block} failed: {error:?}"
            );
            return;
        }
        block += SCRATCH_CHUNK_BLOCKS;
    }
    let written = env.now_ns();
    if let Err(error) = disk.flush() {
        println!(env, "disk 0: scratch test: flush failed: {error:?}");
        return;
    }
    let flushed = env.now_ns();
    let mut expected = alloc::vec![0u8; buf.len()];
    let mut block = SCRATCH_FIRST_BLOCK;
    let mut mismatches = 0u64;
    while block < SCRATCH_FIRST_BLOCK + SCRATCH_BLOCKS {
        if let Err(error) = disk.read(block, &mut buf) {
            println!(
                env,
                "disk 0: scratch test: read at {block} failed: {error:?}"
            );
            return;
        }
        fill_scratch(block, &mut expected);
        if buf != expected {
            mismatches += 1;
        }
        block += SCRATCH_CHUNK_BLOCKS;
    }
    let read = env.now_ns();
    let (write_mb, write_tenth) = mb_per_s(bytes, written - started);
    let (read_mb, read_tenth) = mb_per_s(bytes, read - flushed);
    println!(
        env,
        "disk 0: PIO write {} KiB in {} ms ({}.{} MB/s), flush {} ms, read {} ms ({}.{} MB/s)",
        bytes / 1024,
        (written - started) / 1_000_000,
        write_mb,
        write_tenth,
        (flushed - written) / 1_000_000,
        (read - flushed) / 1_000_000,
        read_mb,
        read_tenth
    );
    if mismatches == 0 {
        println!(
            env,
            "disk 0: scratch test: {} blocks written, flushed and read back intact", SCRATCH_BLOCKS
        );
    } else {
        println!(
            env,
            "disk 0: scratch test FAILED: {mismatches} chunks read back differently"
        );
    }
    let counters = disk.counters();
    println!(
        env,
        "disk 0: errors: {} timeouts, {} device errors, {} resets",
        counters.timeouts,
        counters.device_errors,
        counters.resets
    );
}
