//! The SCSI target behind the simulated storage controller: one logical
//! unit per [`Disk`], answering the commands a synthetic disk on Hyper-V
//! answers (SBC/SPC subset, `vmbus_protocol::scsi`), moving data through
//! the request's guest pages ([`GuestBuffer`]).
//!
//! Like a real target it keeps unit attentions per LUN (a LUN added, its
//! medium changed, the LUN inventory changed): the next command other
//! than INQUIRY, REPORT LUNS and REQUEST SENSE is answered with CHECK
//! CONDITION / UNIT ATTENTION and the condition is cleared; REQUEST SENSE
//! returns and clears it too.
//!
//! Every block range is checked against the disk before the disk is
//! called; the data length the guest described must equal what the CDB
//! moves.

use crate::disk::{in_range, Disk, DiskError};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::PAGE_SIZE;
use vmbus_protocol::scsi::{
    self, asc, device_type, opcode, provisioning, sense_key, vpd, BlockLimitsPage, CachingModePage,
    Cdb6, CdbModeSense10, CdbReadCapacity16, CdbReportLuns, CdbUnmap, DesignatorHeader, FixedSense,
    InquiryData, LunListHeader, ModeHeader10, ModeHeader6, ProvisioningPage, ReadCapacity10Data,
    ReadCapacity16Data, VpdHeader,
};
use vmbus_protocol::storage::{data_direction, srb};
use zerocopy::{FromBytes, IntoBytes};

/// A disk the controller serves, as the trait object it keeps.
pub type BoxedDisk = Box<dyn Disk + Send>;

/// UNMAP limits the target reports (block limits VPD) and enforces.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 64;
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 22;

/// Unit attentions a LUN keeps at most (older ones are dropped: the
/// newest says the most).
const MAX_UNIT_ATTENTIONS: usize = 4;

/// What Hyper-V's synthetic disks call themselves.
pub const VENDOR: &str = "Msft";
pub const PRODUCT: &str = "Virtual Disk";
pub const REVISION: &str = "1.0";

/// One logical unit.
pub struct Lun {
    pub disk: BoxedDisk,
    pub serial: String,
    /// The NAA-5 identifier (Microsoft's OUI 00-15-5D and a per-LUN value).
    pub naa: u64,
    unit_attentions: VecDeque<asc::Code>,
}

impl Lun {
    pub fn new(disk: BoxedDisk, serial: String, unique: u64) -> Lun {
        Lun {
            disk,
            serial,
            naa: (5u64 << 60) | (0x0000_155D_u64 << 36) | (unique & 0xF_FFFF_FFFF),
            unit_attentions: VecDeque::new(),
        }
    }

    /// Queue a unit attention (reported on the next command).
    pub fn attention(&mut self, code: asc::Code) {
        if self.unit_attentions.contains(&code) {
            return;
        }
        if self.unit_attentions.len() == MAX_UNIT_ATTENTIONS {
            self.unit_attentions.pop_front();
        }
        self.unit_attentions.push_back(code);
    }

    pub fn pending_attentions(&self) -> usize {
        self.unit_attentions.len()
    }
}

/// The result of one command, as the completion reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    pub srb_status: u8,
    pub scsi_status: u8,
    /// Bytes moved to or from guest memory.
    pub transferred: u32,
    pub sense: Option<FixedSense>,
}

impl ScsiResult {
    pub fn good(transferred: u32) -> Self {
        ScsiResult {
            srb_status: srb::SUCCESS,
            scsi_status: scsi::status::GOOD,
            transferred,
            sense: None,
        }
    }

    /// CHECK CONDITION with sense (as OpenVMM's storvsp reports it: an
    /// illegal request is SRB_STATUS_INVALID_REQUEST, the rest SRB_STATUS_ERROR).
    pub fn check(key: u8, code: asc::Code) -> Self {
        ScsiResult {
            srb_status: if key == sense_key::ILLEGAL_REQUEST {
                srb::INVALID_REQUEST
            } else {
                srb::ERROR
            },
            scsi_status: scsi::status::CHECK_CONDITION,
            transferred: 0,
            sense: Some(FixedSense::new(key, code)),
        }
    }

    /// An SRB-level failure without a SCSI status or sense.
    pub fn srb(srb_status: u8) -> Self {
        ScsiResult {
            srb_status,
            scsi_status: scsi::status::GOOD,
            transferred: 0,
            sense: None,
        }
    }

    fn invalid_cdb() -> Self {
        Self::check(sense_key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
    }

    pub fn is_check_condition(&self) -> bool {
        self.scsi_status == scsi::status::CHECK_CONDITION
    }
}

fn disk_error(error: DiskError, write: bool) -> ScsiResult {
    match error {
        DiskError::OutOfRange => {
            ScsiResult::check(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
        }
        DiskError::Medium if write => ScsiResult::check(sense_key::MEDIUM_ERROR, asc::WRITE_ERROR),
        DiskError::Medium => {
            ScsiResult::check(sense_key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR)
        }
        DiskError::ReadOnly => ScsiResult::check(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED),
        DiskError::NotReady => ScsiResult::check(sense_key::NOT_READY, asc::LUN_NOT_READY),
    }
}

/// Why a request's data buffer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferError {
    /// A page of it is not guest memory the host may see.
    OutsideMemory(u64),
    /// Its ranges do not describe exactly `data_transfer_length` bytes.
    LengthMismatch,
}

/// The guest pages of one request (a GPA-direct packet's multi-page
/// range), checked page by page against the memory the host sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestBuffer {
    /// (GPA, bytes) pieces, each inside one page, in order.
    chunks: Vec<(u64, u32)>,
    pub len: u32,
}

impl GuestBuffer {
    /// No data (a command without a data phase).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The pieces of a range of `byte_count` bytes from `byte_offset` of
    /// the first of `pfns`: every piece must lie in memory the host sees.
    pub fn resolve<M: GuestMemory>(
        memory: &M,
        byte_offset: u32,
        byte_count: u32,
        pfns: &[u64],
    ) -> Result<Self, BufferError> {
        let mut chunks = Vec::new();
        let mut offset = byte_offset as u64;
        let mut left = byte_count as u64;
        for &pfn in pfns {
            if left == 0 {
                break;
            }
            if offset >= PAGE_SIZE {
                return Err(BufferError::LengthMismatch);
            }
            let take = (PAGE_SIZE - offset).min(left);
            let gpa = pfn
                .checked_mul(PAGE_SIZE)
                .and_then(|base| base.checked_add(offset))
                .ok_or(BufferError::OutsideMemory(pfn))?;
            if !memory.contains(gpa, take) {
                return Err(BufferError::OutsideMemory(pfn));
            }
            chunks.push((gpa, take as u32));
            left -= take;
            offset = 0;
        }
        if left != 0 {
            return Err(BufferError::LengthMismatch);
        }
        Ok(GuestBuffer {
            chunks,
            len: byte_count,
        })
    }

    /// The first `len` bytes (what a device reads for a data-out command).
    pub fn read<M: GuestMemory>(&self, memory: &M, len: usize) -> Option<Vec<u8>> {
        let mut bytes = alloc::vec![0u8; len.min(self.len as usize)];
        let mut at = 0;
        for &(gpa, chunk) in &self.chunks {
            if at == bytes.len() {
                break;
            }
            let take = (chunk as usize).min(bytes.len() - at);
            memory.read(gpa, &mut bytes[at..at + take]).ok()?;
            at += take;
        }
        Some(bytes)
    }

    /// Writes `data` from the start (at most the buffer's length); the
    /// bytes written.
    pub fn write<M: GuestMemory>(&self, memory: &M, data: &[u8]) -> Option<u32> {
        let data = &data[..data.len().min(self.len as usize)];
        let mut at = 0;
        for &(gpa, chunk) in &self.chunks {
            if at == data.len() {
                break;
            }
            let take = (chunk as usize).min(data.len() - at);
            memory.write(gpa, &data[at..at + take]).ok()?;
            at += take;
        }
        Some(at as u32)
    }
}

/// What the controller asks of one command.
pub struct Command<'a> {
    /// The LUN addressed (one without a unit answers like a missing LUN).
    pub lun: u8,
    pub cdb: &'a [u8],
    /// `ScsiRequest::data_in`.
    pub direction: u8,
    pub buffer: &'a GuestBuffer,
    /// Fault injection: move only half the blocks of a READ or WRITE.
    pub short: bool,
    /// The controller's largest transfer (block limits VPD).
    pub max_transfer_bytes: u32,
}

/// Whether `op` accesses the medium (the commands fault injection
/// targets).
pub fn is_io(cdb: &[u8]) -> bool {
    matches!(
        cdb.first(),
        Some(
            &(opcode::READ_10
                | opcode::READ_16
                | opcode::WRITE_10
                | opcode::WRITE_16
                | opcode::SYNCHRONIZE_CACHE_10
                | opcode::SYNCHRONIZE_CACHE_16
                | opcode::UNMAP)
        )
    )
}

/// What a command did, for the controller's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read: bool,
    pub write: bool,
    pub flush: bool,
    pub unmap: bool,
    pub unit_attention: bool,
    /// The guest's data length did not match what the CDB moves, or its
    /// direction was wrong: a rule violation (also refused).
    pub violation: bool,
}

/// Runs one command against the LUNs of path 0, target 0.
pub fn execute<M: GuestMemory>(
    luns: &mut BTreeMap<u8, Lun>,
    memory: &M,
    command: &Command<'_>,
    effect: &mut Effect,
) -> ScsiResult {
    let Some(&op) = command.cdb.first() else {
        return ScsiResult::invalid_cdb();
    };
    if op == opcode::REPORT_LUNS {
        return report_luns(luns, memory, command);
    }
    let Some(lun) = luns.get_mut(&command.lun) else {
        return match op {
            // INQUIRY of a LUN that does not exist: "no unit here" (as
            // Hyper-V and OpenVMM answer it), so a scan moves on.
            opcode::INQUIRY => inquiry_absent(memory, command),
            _ => ScsiResult {
                srb_status: srb::INVALID_LUN,
                scsi_status: scsi::status::CHECK_CONDITION,
                transferred: 0,
                sense: None,
            },
        };
    };
    if !matches!(op, opcode::INQUIRY | opcode::REQUEST_SENSE) {
        if let Some(code) = lun.unit_attentions.pop_front() {
            effect.unit_attention = true;
            return ScsiResult::check(sense_key::UNIT_ATTENTION, code);
        }
    }
    match op {
        opcode::TEST_UNIT_READY => ScsiResult::good(0),
        opcode::REQUEST_SENSE => {
            let sense = match lun.unit_attentions.pop_front() {
                Some(code) => {
                    effect.unit_attention = true;
                    FixedSense::new(sense_key::UNIT_ATTENTION, code)
                }
                None => FixedSense::new(sense_key::NO_SENSE, asc::NO_ADDITIONAL_SENSE),
            };
            let allocation = command.cdb.get(4).copied().unwrap_or(0) as usize;
            reply(memory, command, sense.as_bytes(), allocation)
        }
        opcode::INQUIRY => inquiry(lun, memory, command),
        opcode::READ_CAPACITY_10 => {
            let disk = &lun.disk;
            let data = ReadCapacity10Data {
                last_lba: (disk.block_count().saturating_sub(1).min(u32::MAX as u64) as u32).into(),
                block_length: disk.block_size().into(),
            };
            reply(memory, command, data.as_bytes(), usize::MAX)
        }
        opcode::SERVICE_ACTION_IN_16 => {
            let Ok((cdb, _)) = CdbReadCapacity16::read_from_prefix(command.cdb) else {
                return ScsiResult::invalid_cdb();
            };
            if cdb.service_action & 0x1F != scsi::SERVICE_ACTION_READ_CAPACITY_16 {
                return ScsiResult::check(
                    sense_key::ILLEGAL_REQUEST,
                    asc::INVALID_COMMAND_OPERATION_CODE,
                );
            }
            let disk = &lun.disk;
            let data = ReadCapacity16Data {
                last_lba: disk.block_count().saturating_sub(1).into(),
                block_length: disk.block_size().into(),
                provisioning: (scsi::READ_CAPACITY16_LBPME | scsi::READ_CAPACITY16_LBPRZ).into(),
                ..ReadCapacity16Data::default()
            };
            reply(
                memory,
                command,
                data.as_bytes(),
                cdb.allocation_length.get() as usize,
            )
        }
        opcode::READ_10 | opcode::READ_16 | opcode::WRITE_10 | opcode::WRITE_16 => {
            read_write(lun, memory, command, effect)
        }
        opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
            let Some(sync) = scsi::parse_sync_cache(command.cdb) else {
                return ScsiResult::invalid_cdb();
            };
            let count = lun.disk.block_count();
            let blocks = if sync.blocks == 0 {
                count.saturating_sub(sync.lba)
            } else {
                sync.blocks.into()
            };
            if sync.lba > count || !in_range(sync.lba, blocks, count) {
                return ScsiResult::check(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
            }
            effect.flush = true;
            match lun.disk.flush() {
                Ok(()) => ScsiResult::good(0),
                Err(error) => disk_error(error, true),
            }
        }
        opcode::UNMAP => unmap(lun, memory, command, effect),
        opcode::MODE_SENSE_6 | opcode::MODE_SENSE_10 => mode_sense(lun, memory, command),
        opcode::START_STOP_UNIT | opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => ScsiResult::good(0),
        _ => ScsiResult::check(
            sense_key::ILLEGAL_REQUEST,
            asc::INVALID_COMMAND_OPERATION_CODE,
        ),
    }
}

/// Data-in reply: `data` cut to the allocation length and the buffer.
fn reply<M: GuestMemory>(
    memory: &M,
    command: &Command<'_>,
    data: &[u8],
    allocation: usize,
) -> ScsiResult {
    if command.buffer.len > 0 && command.direction != data_direction::READ {
        return ScsiResult::invalid_cdb();
    }
    let len = data.len().min(allocation);
    match command.buffer.write(memory, &data[..len]) {
        Some(written) => ScsiResult::good(written),
        None => ScsiResult::srb(srb::ERROR),
    }
}

fn inquiry_absent<M: GuestMemory>(memory: &M, command: &Command<'_>) -> ScsiResult {
    let Ok((cdb, _)) = Cdb6::read_from_prefix(command.cdb) else {
        return ScsiResult::invalid_cdb();
    };
    if cdb.flags & scsi::INQUIRY_EVPD != 0 || cdb.page_code != 0 {
        return ScsiResult::invalid_cdb();
    }
    let mut data = InquiryData::disk("", "", "");
    data.peripheral = device_type::NO_LUN;
    data.vendor = [0; 8];
    data.product = [0; 16];
    data.revision = [0; 4];
    reply(
        memory,
        command,
        data.as_bytes(),
        cdb.inquiry_allocation_length() as usize,
    )
}

/// The VPD pages the target serves, in order.
const VPD_PAGES: [u8; 5] = [
    vpd::SUPPORTED_PAGES,
    vpd::UNIT_SERIAL_NUMBER,
    vpd::DEVICE_IDENTIFICATION,
    vpd::BLOCK_LIMITS,
    vpd::LOGICAL_BLOCK_PROVISIONING,
];

fn vpd_page(page_code: u8, body: &[u8]) -> Vec<u8> {
    let header = VpdHeader {
        peripheral: device_type::DIRECT_ACCESS,
        page_code,
        page_length: (body.len() as u16).into(),
    };
    let mut page = header.as_bytes().to_vec();
    page.extend_from_slice(body);
    page
}

fn inquiry<M: GuestMemory>(lun: &Lun, memory: &M, command: &Command<'_>) -> ScsiResult {
    let Ok((cdb, _)) = Cdb6::read_from_prefix(command.cdb) else {
        return ScsiResult::invalid_cdb();
    };
    let allocation = cdb.inquiry_allocation_length() as usize;
    if cdb.flags & scsi::INQUIRY_EVPD == 0 {
        if cdb.page_code != 0 {
            return ScsiResult::invalid_cdb();
        }
        let data = InquiryData::disk(VENDOR, PRODUCT, REVISION);
        return reply(memory, command, data.as_bytes(), allocation);
    }
    let page = match cdb.page_code {
        vpd::SUPPORTED_PAGES => vpd_page(vpd::SUPPORTED_PAGES, &VPD_PAGES),
        vpd::UNIT_SERIAL_NUMBER => vpd_page(vpd::UNIT_SERIAL_NUMBER, lun.serial.as_bytes()),
        vpd::DEVICE_IDENTIFICATION => {
            let mut body = Vec::new();
            // NAA (binary), then T10 vendor id (ASCII: vendor + serial).
            let naa = DesignatorHeader {
                code_set: scsi::designator::CODE_SET_BINARY,
                designator_type: scsi::designator::TYPE_NAA,
                reserved: 0,
                length: 8,
            };
            body.extend_from_slice(naa.as_bytes());
            body.extend_from_slice(&lun.naa.to_be_bytes());
            let mut t10 = [b' '; 8];
            scsi::pad_ascii(&mut t10, VENDOR);
            let id_len = 8 + lun.serial.len().min(200);
            let vendor = DesignatorHeader {
                code_set: scsi::designator::CODE_SET_ASCII,
                designator_type: scsi::designator::TYPE_T10_VENDOR,
                reserved: 0,
                length: id_len as u8,
            };
            body.extend_from_slice(vendor.as_bytes());
            body.extend_from_slice(&t10);
            body.extend_from_slice(&lun.serial.as_bytes()[..id_len - 8]);
            vpd_page(vpd::DEVICE_IDENTIFICATION, &body)
        }
        vpd::BLOCK_LIMITS => {
            let block = lun.disk.block_size().max(1);
            let page = BlockLimitsPage {
                header: VpdHeader {
                    peripheral: device_type::DIRECT_ACCESS,
                    page_code: vpd::BLOCK_LIMITS,
                    page_length: ((core::mem::size_of::<BlockLimitsPage>() - 4) as u16).into(),
                },
                optimal_transfer_length_granularity: 1.into(),
                max_transfer_length: (command.max_transfer_bytes / block).into(),
                optimal_transfer_length: (command.max_transfer_bytes / block).into(),
                max_unmap_lba_count: MAX_UNMAP_BLOCKS.into(),
                max_unmap_block_descriptor_count: MAX_UNMAP_DESCRIPTORS.into(),
                optimal_unmap_granularity: 1.into(),
                ..BlockLimitsPage::default()
            };
            page.as_bytes().to_vec()
        }
        vpd::LOGICAL_BLOCK_PROVISIONING => {
            let page = ProvisioningPage {
                header: VpdHeader {
                    peripheral: device_type::DIRECT_ACCESS,
                    page_code: vpd::LOGICAL_BLOCK_PROVISIONING,
                    page_length: 4.into(),
                },
                threshold_exponent: 0,
                flags: provisioning::LBPU | provisioning::LBPRZ_ZEROS,
                provisioning_type: provisioning::TYPE_THIN,
                reserved: 0,
            };
            page.as_bytes().to_vec()
        }
        _ => return ScsiResult::invalid_cdb(),
    };
    reply(memory, command, &page, allocation)
}

fn report_luns<M: GuestMemory>(
    luns: &BTreeMap<u8, Lun>,
    memory: &M,
    command: &Command<'_>,
) -> ScsiResult {
    let Ok((cdb, _)) = CdbReportLuns::read_from_prefix(command.cdb) else {
        return ScsiResult::invalid_cdb();
    };
    let allocation = cdb.allocation_length.get() as usize;
    if allocation < 16 {
        return ScsiResult::invalid_cdb();
    }
    let header = LunListHeader {
        list_length: ((luns.len() * 8) as u32).into(),
        reserved: 0.into(),
    };
    let mut data = header.as_bytes().to_vec();
    for &lun in luns.keys() {
        data.extend_from_slice(&scsi::lun_entry(lun.into()));
    }
    reply(memory, command, &data, allocation)
}

fn read_write<M: GuestMemory>(
    lun: &mut Lun,
    memory: &M,
    command: &Command<'_>,
    effect: &mut Effect,
) -> ScsiResult {
    let Some(io) = scsi::parse_read_write(command.cdb) else {
        return ScsiResult::invalid_cdb();
    };
    let block = lun.disk.block_size() as u64;
    let wanted = u64::from(io.blocks) * block;
    let direction = if io.write {
        data_direction::WRITE
    } else {
        data_direction::READ
    };
    // The guest described exactly the bytes the CDB moves, in the right
    // direction (storvsc does; anything else is a broken request).
    if wanted != u64::from(command.buffer.len) || (wanted > 0 && command.direction != direction) {
        effect.violation = true;
        return ScsiResult::invalid_cdb();
    }
    if !in_range(io.lba, io.blocks.into(), lun.disk.block_count()) {
        return ScsiResult::check(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    }
    if io.write && lun.disk.read_only() {
        return ScsiResult::check(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED);
    }
    if io.blocks == 0 {
        return ScsiResult::good(0);
    }
    let blocks = if command.short {
        io.blocks / 2
    } else {
        io.blocks
    };
    let len = (u64::from(blocks) * block) as usize;
    let result = if io.write {
        effect.write = true;
        let Some(data) = command.buffer.read(memory, len) else {
            return ScsiResult::srb(srb::ERROR);
        };
        match lun.disk.write(io.lba, &data) {
            Ok(()) => {
                effect.bytes_written += len as u64;
                ScsiResult::good(len as u32)
            }
            Err(error) => disk_error(error, true),
        }
    } else {
        effect.read = true;
        let mut data = alloc::vec![0u8; len];
        if let Err(error) = lun.disk.read(io.lba, &mut data) {
            return disk_error(error, false);
        }
        match command.buffer.write(memory, &data) {
            Some(written) => {
                effect.bytes_read += u64::from(written);
                ScsiResult::good(written)
            }
            None => ScsiResult::srb(srb::ERROR),
        }
    };
    if command.short && result.srb_status == srb::SUCCESS {
        // A short transfer: Windows reports an underrun as DATA_OVERRUN
        // with the bytes actually moved.
        return ScsiResult {
            srb_status: srb::DATA_OVERRUN,
            ..result
        };
    }
    result
}

fn unmap<M: GuestMemory>(
    lun: &mut Lun,
    memory: &M,
    command: &Command<'_>,
    effect: &mut Effect,
) -> ScsiResult {
    let Ok((cdb, _)) = CdbUnmap::read_from_prefix(command.cdb) else {
        return ScsiResult::invalid_cdb();
    };
    let list_len = cdb.parameter_list_length.get() as usize;
    if list_len > command.buffer.len as usize
        || (list_len > 0 && command.direction != data_direction::WRITE)
    {
        effect.violation = true;
        return ScsiResult::invalid_cdb();
    }
    if lun.disk.read_only() {
        return ScsiResult::check(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED);
    }
    let Some(list) = command.buffer.read(memory, list_len) else {
        return ScsiResult::srb(srb::ERROR);
    };
    let descriptors = match scsi::parse_unmap_list(&list) {
        Ok(descriptors) => descriptors,
        Err(scsi::UnmapError::ParameterListLength) => {
            return ScsiResult::check(sense_key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR)
        }
        Err(scsi::UnmapError::InvalidField) => {
            return ScsiResult::check(
                sense_key::ILLEGAL_REQUEST,
                asc::INVALID_FIELD_IN_PARAMETER_LIST,
            )
        }
    };
    if descriptors.len() > MAX_UNMAP_DESCRIPTORS as usize
        || descriptors
            .iter()
            .any(|d| d.blocks.get() > MAX_UNMAP_BLOCKS)
    {
        return ScsiResult::check(
            sense_key::ILLEGAL_REQUEST,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
    }
    // All ranges are checked before any is discarded.
    let count = lun.disk.block_count();
    if descriptors
        .iter()
        .any(|d| !in_range(d.lba.get(), d.blocks.get().into(), count))
    {
        return ScsiResult::check(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    }
    effect.unmap = true;
    for descriptor in descriptors {
        if descriptor.blocks.get() == 0 {
            continue;
        }
        if let Err(error) = lun
            .disk
            .discard(descriptor.lba.get(), descriptor.blocks.get().into())
        {
            return disk_error(error, true);
        }
    }
    ScsiResult::good(list_len as u32)
}

fn mode_sense<M: GuestMemory>(lun: &Lun, memory: &M, command: &Command<'_>) -> ScsiResult {
    let six = command.cdb[0] == opcode::MODE_SENSE_6;
    let (page_code, allocation) = if six {
        let Ok((cdb, _)) = Cdb6::read_from_prefix(command.cdb) else {
            return ScsiResult::invalid_cdb();
        };
        (cdb.page_code, cdb.length_low as usize)
    } else {
        let Ok((cdb, _)) = CdbModeSense10::read_from_prefix(command.cdb) else {
            return ScsiResult::invalid_cdb();
        };
        (cdb.page_code, cdb.allocation_length.get() as usize)
    };
    // Current values only (page control 0); the caching page alone.
    if page_code >> 6 != 0 {
        return ScsiResult::invalid_cdb();
    }
    let page = match page_code & 0x3F {
        scsi::mode_page::CACHING | scsi::mode_page::ALL => CachingModePage {
            page_code: scsi::mode_page::CACHING,
            page_length: (core::mem::size_of::<CachingModePage>() - 2) as u8,
            flags: scsi::CACHING_WCE,
            ..CachingModePage::default()
        },
        _ => return ScsiResult::invalid_cdb(),
    };
    let device_specific = scsi::MODE_DEVICE_SPECIFIC_DPOFUA
        | if lun.disk.read_only() {
            scsi::MODE_DEVICE_SPECIFIC_WP
        } else {
            0
        };
    let mut data = if six {
        ModeHeader6 {
            mode_data_length: (3 + core::mem::size_of::<CachingModePage>()) as u8,
            device_specific,
            ..ModeHeader6::default()
        }
        .as_bytes()
        .to_vec()
    } else {
        ModeHeader10 {
            mode_data_length: ((6 + core::mem::size_of::<CachingModePage>()) as u16).into(),
            device_specific,
            ..ModeHeader10::default()
        }
        .as_bytes()
        .to_vec()
    };
    data.extend_from_slice(page.as_bytes());
    reply(memory, command, &data, allocation)
}
