//! `files`: a client of a block device granted by the description
//! (`[[block]]`, docs/block-interface.md) that uses it as a FAT disk.
//!
//! Once the driver serves the grant it mounts the FAT filesystem (the
//! whole disk with its partition table, or a partition; embedded-sdmmc),
//! lists the root directory, reads [`READ_FILE`] and prints its length,
//! CRC-32 and, if short text, its contents; writes [`WRITE_FILE`] with
//! [`WRITE_TEXT`]; writes every changed block to the disk and then issues
//! FLUSH, and only when the FLUSH is answered reports the write as done;
//! then forgets its cache, reads the file back from the disk, checks it,
//! and prints [`DONE_LINE`].
//!
//! It is driven by notifications only (see `cache` for how a synchronous
//! filesystem library runs in a component that never blocks).
//!
//! Trusts: nothing from the driver beyond the block interface's checks
//! (`block_queue`); the disk's contents are parsed by the FAT library,
//! whose errors end the run with a message. Writes: the console, and the
//! disk through its grant.
#![no_std]
#![forbid(unsafe_code)]

pub mod cache;
pub mod volume;

use block_queue::{BlockClient, Completion, Operation, Status};
use cache::{Cache, Disk, DiskError, Layout, Load, BLOCK};
use component_api::{println, ChannelSet, Component, Env};
use core::cell::RefCell;
use core::ops::ControlFlow;
use embedded_sdmmc::{Mode, RawDirectory, RawVolume, TimeSource, Timestamp, VolumeIdx};
use heapless::Vec;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The file read and reported.
pub const READ_FILE: &str = "HELLO.TXT";
/// The file written.
pub const WRITE_FILE: &str = "GUEST.TXT";
pub const WRITE_TEXT: &str = "Written by the seL4 guest's fs-client through the block interface.\n";
/// The last line of a successful run.
pub const DONE_LINE: &str = "fs-client: done";
/// The power-off code of a failed run. The client powers the system off
/// at the end of its run (0 when done) only where the description lets it
/// (`power_off = true`, the RAM-disk boot test); elsewhere the runtimes
/// ignore the request and the system goes on.
pub const FAILED_CODE: u8 = 3;
/// Requests kept outstanding at most.
pub const OUTSTANDING: usize = 32;
/// Root-directory entries listed at most.
pub const MAX_LISTED: usize = 32;
/// File contents printed at most (longer files: length and CRC only).
pub const MAX_PRINTED: usize = 256;
/// Attempts per step before giving up (each adds at least one block to
/// the cache, so a step needing more blocks than the cache holds ends).
const MAX_ATTEMPTS: u32 = 400;
/// Rounds of one notification's work (each finishes a step or waits).
const MAX_ROUNDS: u32 = 64;

type Volumes<'a> = embedded_sdmmc::VolumeManager<Disk<'a>, FixedTime, 2, 2, 1>;
type FsError = embedded_sdmmc::Error<DiskError>;

/// Files get this time: the guest has no wall clock here.
pub struct FixedTime;

impl TimeSource for FixedTime {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    WaitDevice,
    Probe,
    List,
    Read,
    Write,
    WriteBack,
    Flush,
    Verify,
    Done,
    Failed,
}

/// What a request in flight was for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    Load(Load),
    WriteBack { block: u64, slot: u32 },
    Flush,
}

/// One file as listed.
pub struct Listed {
    pub name: heapless::String<12>,
    pub size: u32,
    pub directory: bool,
}

/// The root directory as listed.
pub struct Listing {
    pub entries: Vec<Listed, MAX_LISTED>,
    /// Entries beyond [`MAX_LISTED`].
    pub more: u32,
}

/// What a successful attempt found.
// One lives at a time, briefly; there is no allocator to box it.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Nothing,
    Probed(Layout),
    /// The disk fails the checks made before the FAT library sees it.
    Refused(&'static str),
    Listed(Listing),
    Read(FileSummary),
    NotOnDisk,
    Wrote(u32),
    ReadBack(FileSummary),
}

/// A file as read: its length, CRC-32 and first bytes.
pub struct FileSummary {
    pub length: u32,
    pub crc: u32,
    pub head: Vec<u8, MAX_PRINTED>,
}

pub struct FsClient {
    client: BlockClient<OUTSTANDING>,
    cache: RefCell<Cache>,
    layout: Layout,
    step: Step,
    attempts: u32,
    in_flight: Vec<(u32, Purpose), OUTSTANDING>,
    flushed: bool,
    /// Bytes of the file written.
    written: u32,
    blocks_written: u32,
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl FsClient {
    pub fn step(&self) -> Step {
        self.step
    }

    fn fail(&mut self, env: &mut dyn Env, what: core::fmt::Arguments<'_>) {
        println!(env, "fs-client: failed: {what}");
        self.step = Step::Failed;
        env.power_off(FAILED_CODE);
    }

    fn submit(&mut self, operation: Operation, purpose: Purpose) -> bool {
        match self.client.submit(operation) {
            Ok(id) => {
                // Room: never more in flight than the client keeps.
                let _ = self.in_flight.push((id, purpose));
                true
            }
            Err(_) => false,
        }
    }

    fn completed(&mut self, env: &mut dyn Env, done: Completion) {
        let Some(position) = self.in_flight.iter().position(|(id, _)| *id == done.id) else {
            return;
        };
        let (_, purpose) = self.in_flight.swap_remove(position);
        let ok = done.status == Status::Ok;
        match purpose {
            Purpose::Load(load) if ok && done.count == load.count => {
                self.cache.borrow_mut().loaded(load)
            }
            Purpose::Load(load) => self.fail(
                env,
                format_args!(
                    "read of blocks {}..{}: {:?}",
                    load.block,
                    load.block + u64::from(load.count),
                    done.status
                ),
            ),
            Purpose::WriteBack { block, slot } if ok && done.count == 1 => {
                self.blocks_written += 1;
                self.cache.borrow_mut().cleaned(block, slot)
            }
            Purpose::WriteBack { block, .. } => self.fail(
                env,
                format_args!("write of block {block}: {:?}", done.status),
            ),
            Purpose::Flush if ok => self.flushed = true,
            Purpose::Flush => self.fail(env, format_args!("flush: {:?}", done.status)),
        }
    }

    /// Read what an attempt missed, or give up.
    fn load(&mut self, env: &mut dyn Env, block: u64) {
        self.attempts += 1;
        if self.attempts > MAX_ATTEMPTS {
            let step = self.step;
            self.fail(
                env,
                format_args!("{step:?} needs more blocks than the cache holds"),
            );
            return;
        }
        let planned = self.cache.borrow_mut().plan_load(block);
        let load = match planned {
            Some(load) => load,
            // Out of room: start over with an empty cache if nothing in it
            // waits to be written.
            None if self.cache.borrow_mut().clear() => {
                let retried = self.cache.borrow_mut().plan_load(block);
                match retried {
                    Some(load) => load,
                    None => return self.fail(env, format_args!("no room to read block {block}")),
                }
            }
            None => return self.fail(env, format_args!("the cache is full of unwritten blocks")),
        };
        let operation = Operation::Read {
            block: load.block,
            count: load.count,
            offset: Cache::offset(load.slot),
        };
        if !self.submit(operation, Purpose::Load(load)) {
            self.fail(env, format_args!("cannot queue a read"));
        }
    }

    /// Run the current step's attempt once; report and move on only if
    /// it needed no block that is not in the cache.
    fn attempt(&mut self, env: &mut dyn Env) {
        self.cache.borrow().take_miss();
        let result = self.attempt_step();
        // A miss anywhere in the attempt makes it a miss, whatever error
        // (or success: a "not found") the library made of it.
        let result = match self.cache.borrow().take_miss() {
            Some(block) => Err(FsError::DeviceError(DiskError::Miss(block))),
            None => result,
        };
        match result {
            Ok(outcome) => {
                self.cache.borrow_mut().commit();
                self.attempts = 0;
                self.report(env, outcome);
            }
            Err(FsError::DeviceError(DiskError::Miss(block))) => {
                self.cache.borrow_mut().abort();
                self.load(env, block);
            }
            Err(error) => {
                self.cache.borrow_mut().abort();
                let step = self.step;
                self.fail(env, format_args!("{step:?}: {error:?}"));
            }
        }
    }

    /// The attempt's work, with no output: an attempt may run many times.
    fn attempt_step(&self) -> Result<Outcome, FsError> {
        if matches!(self.step, Step::Read | Step::Write | Step::Verify) {
            if let Some(why) = self.chain_problem()? {
                return Ok(Outcome::Refused(why));
            }
        }
        match self.step {
            Step::Probe => {
                let cache = self.cache.borrow();
                let capacity = self.layout.capacity;
                let mut block0 = [0u8; BLOCK];
                cache.read(0, &mut block0)?;
                let mut layout = Layout::from_first_block(&block0, capacity);
                if layout.stand_in_table {
                    return match volume::check_boot_sector(&block0, capacity) {
                        Ok(geometry) => {
                            layout.volume = Some((0, geometry));
                            Ok(Outcome::Probed(layout))
                        }
                        Err(why) => Ok(Outcome::Refused(why)),
                    };
                }
                // The library mounts partition 1 of the table.
                let partition = match block_queue::mbr::partition(&block0, capacity, 1) {
                    Ok(partition) => partition,
                    Err(_) => return Ok(Outcome::Refused(
                        "neither a FAT boot sector nor a valid partition table with partition 1",
                    )),
                };
                if !matches!(partition.kind, 0x04 | 0x06 | 0x0B | 0x0C | 0x0E) {
                    return Ok(Outcome::Refused(
                        "partition 1 is not a FAT16 or FAT32 partition",
                    ));
                }
                let mut boot = [0u8; BLOCK];
                cache.read(partition.first_block, &mut boot)?;
                match volume::check_boot_sector(&boot, partition.blocks) {
                    Ok(geometry) => {
                        layout.volume = Some((partition.first_block, geometry));
                        Ok(Outcome::Probed(layout))
                    }
                    Err(why) => Ok(Outcome::Refused(why)),
                }
            }
            Step::List => self.list().map(Outcome::Listed),
            Step::Read => match self.read_file(READ_FILE) {
                Ok(file) => Ok(Outcome::Read(file)),
                Err(FsError::NotFound) => Ok(Outcome::NotOnDisk),
                Err(error) => Err(error),
            },
            Step::Write => self.write_file().map(Outcome::Wrote),
            Step::Verify => self.read_file(WRITE_FILE).map(Outcome::ReadBack),
            _ => Ok(Outcome::Nothing),
        }
    }

    fn report(&mut self, env: &mut dyn Env, outcome: Outcome) {
        match outcome {
            Outcome::Nothing => {}
            Outcome::Probed(layout) => {
                self.layout = layout;
                println!(
                    env,
                    "fs-client: {}",
                    if layout.stand_in_table {
                        "the grant starts with a FAT boot sector (a partition)"
                    } else {
                        "the grant starts with a partition table (a whole disk)"
                    }
                );
                self.step = Step::List;
            }
            Outcome::Refused(why) => {
                self.fail(env, format_args!("the disk is refused: {why}"));
            }
            Outcome::Listed(listing) => {
                println!(
                    env,
                    "fs-client: root directory, {} entries:",
                    listing.entries.len() as u32 + listing.more
                );
                for item in &listing.entries {
                    if item.directory {
                        println!(env, "fs-client:   {:<12} <DIR>", item.name.as_str());
                    } else {
                        println!(env, "fs-client:   {:<12} {}", item.name.as_str(), item.size);
                    }
                }
                if listing.more > 0 {
                    println!(env, "fs-client:   ... and {} more", listing.more);
                }
                self.step = Step::Read;
            }
            Outcome::Read(file) => {
                print_file(env, READ_FILE, &file);
                self.step = Step::Write;
            }
            Outcome::NotOnDisk => {
                println!(env, "fs-client: {READ_FILE} is not on the disk");
                self.step = Step::Write;
            }
            Outcome::Wrote(bytes) => {
                self.written = bytes;
                self.step = Step::WriteBack;
            }
            Outcome::ReadBack(file)
                if file.length as usize == WRITE_TEXT.len()
                    && file.head.as_slice() == WRITE_TEXT.as_bytes() =>
            {
                println!(
                    env,
                    "fs-client: read {WRITE_FILE} back from the disk: {} bytes, as written",
                    file.length
                );
                self.step = Step::Done;
                println!(env, "{DONE_LINE}");
                env.power_off(0);
            }
            Outcome::ReadBack(file) => self.fail(
                env,
                format_args!(
                    "{WRITE_FILE} reads back as {} bytes that are not what was written",
                    file.length
                ),
            ),
        }
    }

    /// A corrupt chain of the file the current step reads or rewrites.
    fn chain_problem(&self) -> Result<Option<volume::Refusal>, FsError> {
        let Some((start, geometry)) = self.layout.volume else {
            return Ok(None);
        };
        let name = if self.step == Step::Read {
            READ_FILE
        } else {
            WRITE_FILE
        };
        let cache = self.cache.borrow();
        volume::chain_problem(&geometry, name, |at| {
            let mut block = [0u8; BLOCK];
            cache.read(start + at, &mut block)?;
            volume::sanitize(&geometry, at, &mut block);
            Ok(block)
        })
        .map_err(FsError::DeviceError)
    }

    fn volumes(&self) -> Volumes<'_> {
        let disk = Disk {
            cache: &self.cache,
            layout: self.layout,
        };
        embedded_sdmmc::VolumeManager::new_with_limits(disk, FixedTime, 1)
    }

    fn open(volumes: &Volumes<'_>) -> Result<(RawVolume, RawDirectory), FsError> {
        let volume = volumes.open_raw_volume(VolumeIdx(0))?;
        let root = volumes.open_root_dir(volume)?;
        Ok((volume, root))
    }

    fn list(&self) -> Result<Listing, FsError> {
        let volumes = self.volumes();
        let (volume, root) = Self::open(&volumes)?;
        let mut listing = Listing {
            entries: Vec::new(),
            more: 0,
        };
        volumes.iterate_dir(root, |entry| {
            if entry.attributes.is_volume() {
                return ControlFlow::Continue(());
            }
            let mut name = heapless::String::new();
            let _ = core::fmt::write(&mut name, format_args!("{}", entry.name));
            let item = Listed {
                name,
                size: entry.size,
                directory: entry.attributes.is_directory(),
            };
            if listing.entries.push(item).is_err() {
                listing.more += 1;
            }
            ControlFlow::Continue(())
        })?;
        volumes.close_dir(root)?;
        volumes.close_volume(volume)?;
        Ok(listing)
    }

    fn read_file(&self, name: &str) -> Result<FileSummary, FsError> {
        let volumes = self.volumes();
        let (volume, root) = Self::open(&volumes)?;
        let file = volumes.open_file_in_dir(root, name, Mode::ReadOnly)?;
        let mut digest = CRC.digest();
        let mut summary = FileSummary {
            length: 0,
            crc: 0,
            head: Vec::new(),
        };
        let mut buffer = [0u8; BLOCK];
        // Bounded by the file's length (at most 4 GiB / 512 rounds).
        for _ in 0..=(u32::MAX as usize / BLOCK) {
            let got = volumes.read(file, &mut buffer)?;
            if got == 0 {
                break;
            }
            digest.update(&buffer[..got]);
            summary.length += got as u32;
            let room = MAX_PRINTED - summary.head.len();
            let _ = summary.head.extend_from_slice(&buffer[..got.min(room)]);
        }
        summary.crc = digest.finalize();
        volumes.close_file(file)?;
        volumes.close_dir(root)?;
        volumes.close_volume(volume)?;
        Ok(summary)
    }

    fn write_file(&self) -> Result<u32, FsError> {
        let volumes = self.volumes();
        let (volume, root) = Self::open(&volumes)?;
        let file = volumes.open_file_in_dir(root, WRITE_FILE, Mode::ReadWriteCreateOrTruncate)?;
        volumes.write(file, WRITE_TEXT.as_bytes())?;
        volumes.close_file(file)?;
        volumes.close_dir(root)?;
        volumes.close_volume(volume)?;
        Ok(WRITE_TEXT.len() as u32)
    }

    /// Queue every changed block; when all are on the disk, flush.
    fn write_back(&mut self, env: &mut dyn Env) {
        let dirty: Vec<(u64, u32), OUTSTANDING> = self
            .cache
            .borrow()
            .dirty()
            .filter(|(block, slot)| {
                !self.in_flight.iter().any(|(_, p)| {
                    matches!(p, Purpose::WriteBack { block: b, slot: s } if b == block && s == slot)
                })
            })
            .take(OUTSTANDING - self.in_flight.len())
            .collect();
        if dirty.is_empty() && self.in_flight.is_empty() {
            println!(
                env,
                "fs-client: {} changed blocks written, flushing", self.blocks_written
            );
            self.step = Step::Flush;
            return;
        }
        for (block, slot) in dirty {
            let operation = Operation::Write {
                block,
                count: 1,
                offset: Cache::offset(slot),
            };
            if !self.submit(operation, Purpose::WriteBack { block, slot }) {
                break;
            }
        }
    }

    /// Do everything possible now; returns when waiting for the driver.
    fn advance(&mut self, env: &mut dyn Env) {
        for _ in 0..MAX_ROUNDS {
            loop {
                match self.client.poll() {
                    Ok(Some(done)) => self.completed(env, done),
                    Ok(None) => break,
                    Err(error) => {
                        self.fail(env, format_args!("block queue: {error:?}"));
                        break;
                    }
                }
            }
            if matches!(self.step, Step::Done | Step::Failed) {
                return;
            }
            match self.step {
                Step::WaitDevice => {
                    let Some(device) = self.client.device() else {
                        return;
                    };
                    println!(
                        env,
                        "fs-client: block device `{}`: {} blocks of {} bytes{}, generation {}",
                        device.ident(),
                        device.capacity,
                        device.block_size,
                        if device.read_only { ", read-only" } else { "" },
                        device.generation
                    );
                    if device.block_size as usize != BLOCK {
                        return self.fail(
                            env,
                            format_args!(
                                "blocks of {} bytes: FAT here needs 512",
                                device.block_size
                            ),
                        );
                    }
                    self.layout.capacity = device.capacity;
                    self.cache = RefCell::new(Cache::new(self.client.data(), device.capacity));
                    self.step = Step::Probe;
                }
                _ if !self.in_flight.is_empty() && self.step != Step::WriteBack => return,
                Step::WriteBack => {
                    let before = self.in_flight.len();
                    self.write_back(env);
                    if self.step == Step::WriteBack && self.in_flight.len() == before {
                        return;
                    }
                }
                Step::Flush if self.flushed => {
                    println!(
                        env,
                        "fs-client: wrote {WRITE_FILE} ({} bytes) and the disk flushed it",
                        self.written
                    );
                    if !self.cache.borrow_mut().clear() {
                        return self
                            .fail(env, format_args!("blocks left unwritten after the flush"));
                    }
                    self.step = Step::Verify;
                }
                Step::Flush => {
                    if !self.submit(Operation::Flush, Purpose::Flush) {
                        return self.fail(env, format_args!("cannot queue the flush"));
                    }
                }
                _ => self.attempt(env),
            }
        }
    }

    fn signal(&mut self, env: &mut dyn Env) {
        if self.client.driver_needs_signal() {
            env.notify(block::GRANTS[0].notify);
        }
    }
}

/// A grant's area, for the console.
struct Area(Option<u8>);

impl core::fmt::Display for Area {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "partition {n}"),
            None => write!(f, "(whole disk)"),
        }
    }
}

fn print_file(env: &mut dyn Env, name: &str, file: &FileSummary) {
    println!(
        env,
        "fs-client: {name}: {} bytes, crc32 {:08x}", file.length, file.crc
    );
    let whole = file.length as usize == file.head.len();
    match core::str::from_utf8(&file.head) {
        Ok(text) if whole && text.chars().all(|c| c == '\n' || !c.is_control()) => {
            for line in text.lines() {
                println!(env, "fs-client: | {line}");
            }
        }
        _ => {}
    }
}

impl Component for FsClient {
    fn init(env: &mut dyn Env) -> Self {
        let grant = block::GRANTS[0];
        let client = BlockClient::new(
            env.region(grant.requests),
            env.region(grant.responses),
            env.region(grant.info),
            env.region(grant.data),
        )
        .expect("the description sizes the block regions for block_queue");
        let data = env.region(grant.data);
        let mut component = FsClient {
            client,
            cache: RefCell::new(Cache::new(data, 0)),
            layout: Layout {
                stand_in_table: false,
                capacity: 0,
                volume: None,
            },
            step: Step::WaitDevice,
            attempts: 0,
            in_flight: Vec::new(),
            flushed: false,
            written: 0,
            blocks_written: 0,
        };
        println!(
            env,
            "fs-client: granted LUN {} {} of `{}`{}",
            grant.lun,
            Area(grant.partition),
            grant.driver,
            if grant.read_only { ", read-only" } else { "" }
        );
        component.run(env);
        component
    }

    fn notified(&mut self, env: &mut dyn Env, _channels: ChannelSet) {
        self.run(env);
    }
}

impl FsClient {
    fn run(&mut self, env: &mut dyn Env) {
        // Bounded: each round either sleeps or found new responses.
        for _ in 0..MAX_ROUNDS {
            self.advance(env);
            self.signal(env);
            if matches!(self.step, Step::Done | Step::Failed) {
                return;
            }
            match self.client.prepare_to_sleep() {
                Ok(true) => return,
                Ok(false) => continue,
                Err(error) => {
                    return self.fail(env, format_args!("block queue: {error:?}"));
                }
            }
        }
    }
}
