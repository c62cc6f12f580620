//! The SCSI commands a synthetic disk speaks (SBC/SPC subset): operation
//! codes, CDB building and parsing for the block commands, the data the
//! target returns (INQUIRY and its VPD pages, READ CAPACITY, REPORT LUNS,
//! MODE SENSE headers), the UNMAP parameter list, fixed-format sense data
//! and the status codes. Multi-byte SCSI fields are big-endian.

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Operation codes (the CDB's first byte).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const VERIFY_10: u8 = 0x2F;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is its action 0x10.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
}

/// SERVICE ACTION IN(16) action (low five bits of CDB byte 1).
pub const SERVICE_ACTION_READ_CAPACITY_16: u8 = 0x10;

/// SCSI status codes (`ScsiRequest::scsi_status`).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (low nibble of fixed sense byte 2).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const BLANK_CHECK: u8 = 0x8;
    pub const ABORTED_COMMAND: u8 = 0xB;
}

/// Additional sense code and qualifier pairs.
pub mod asc {
    pub type Code = (u8, u8);
    pub const NO_ADDITIONAL_SENSE: Code = (0x00, 0x00);
    pub const LUN_NOT_READY: Code = (0x04, 0x00);
    pub const LUN_BECOMING_READY: Code = (0x04, 0x01);
    pub const WRITE_ERROR: Code = (0x0C, 0x00);
    pub const UNRECOVERED_READ_ERROR: Code = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Code = (0x1A, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Code = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Code = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Code = (0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Code = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Code = (0x26, 0x00);
    pub const WRITE_PROTECTED: Code = (0x27, 0x00);
    pub const MEDIUM_MAY_HAVE_CHANGED: Code = (0x28, 0x00);
    pub const POWER_ON_RESET: Code = (0x29, 0x00);
    pub const CAPACITY_DATA_CHANGED: Code = (0x2A, 0x09);
    pub const MEDIUM_NOT_PRESENT: Code = (0x3A, 0x00);
    pub const INQUIRY_DATA_CHANGED: Code = (0x3F, 0x03);
    pub const REPORTED_LUNS_DATA_CHANGED: Code = (0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Code = (0x44, 0x00);
}

macro_rules! wire {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C, packed)]
        pub struct $name { $($(#[$fmeta])* pub $field: $fty,)* }
    };
}

wire! {
    /// READ(10), WRITE(10), VERIFY(10), SYNCHRONIZE CACHE(10) (there
    /// `transfer_length` is the number of blocks, 0 = to the end).
    Cdb10 {
        opcode: u8,
        /// Bit 3: FUA. SYNCHRONIZE CACHE: bit 1 IMMED.
        flags: u8,
        lba: U32,
        group: u8,
        transfer_length: U16,
        control: u8,
    }
}

wire! {
    /// READ(16), WRITE(16), VERIFY(16), SYNCHRONIZE CACHE(16).
    Cdb16 {
        opcode: u8,
        flags: u8,
        lba: U64,
        transfer_length: U32,
        group: u8,
        control: u8,
    }
}

/// `Cdb10::flags` / `Cdb16::flags` bit: force unit access.
pub const FUA: u8 = 0x08;

wire! {
    /// A 6-byte CDB: TEST UNIT READY, REQUEST SENSE, INQUIRY, MODE SENSE(6).
    Cdb6 {
        opcode: u8,
        /// INQUIRY: bit 0 EVPD. REQUEST SENSE: bit 0 DESC. MODE SENSE: bit 3 DBD.
        flags: u8,
        /// INQUIRY: the VPD page. MODE SENSE: PC (7..6) and page code.
        page_code: u8,
        /// INQUIRY: allocation length (with `length_low`). Others: reserved
        /// or subpage.
        length_high: u8,
        /// REQUEST SENSE / MODE SENSE(6): the allocation length.
        length_low: u8,
        control: u8,
    }
}

/// INQUIRY `Cdb6::flags` bit.
pub const INQUIRY_EVPD: u8 = 0x01;

impl Cdb6 {
    /// INQUIRY's 16-bit allocation length (bytes 3-4).
    pub fn inquiry_allocation_length(&self) -> u16 {
        u16::from_be_bytes([self.length_high, self.length_low])
    }
    pub fn inquiry(vpd_page: Option<u8>, allocation_length: u16) -> Self {
        let [length_high, length_low] = allocation_length.to_be_bytes();
        Self {
            opcode: opcode::INQUIRY,
            flags: if vpd_page.is_some() { INQUIRY_EVPD } else { 0 },
            page_code: vpd_page.unwrap_or(0),
            length_high,
            length_low,
            control: 0,
        }
    }
    pub fn test_unit_ready() -> Self {
        Self::default()
    }
    pub fn request_sense(allocation_length: u8) -> Self {
        Self {
            opcode: opcode::REQUEST_SENSE,
            length_low: allocation_length,
            ..Self::default()
        }
    }
}

wire! {
    /// READ CAPACITY(16) (SERVICE ACTION IN(16), action 0x10).
    CdbReadCapacity16 {
        opcode: u8,
        service_action: u8,
        lba: U64,
        allocation_length: U32,
        pmi: u8,
        control: u8,
    }
}

wire! {
    /// UNMAP.
    CdbUnmap {
        opcode: u8,
        anchor: u8,
        reserved: [u8; 4],
        group: u8,
        parameter_list_length: U16,
        control: u8,
    }
}

wire! {
    /// REPORT LUNS.
    CdbReportLuns {
        opcode: u8,
        reserved: u8,
        select_report: u8,
        reserved2: [u8; 3],
        allocation_length: U32,
        reserved3: u8,
        control: u8,
    }
}

wire! {
    /// MODE SENSE(10).
    CdbModeSense10 {
        opcode: u8,
        /// Bit 3: DBD.
        flags: u8,
        page_code: u8,
        subpage_code: u8,
        reserved: [u8; 3],
        allocation_length: U16,
        control: u8,
    }
}

/// A data-moving block command, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadWrite {
    pub write: bool,
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
}

/// Parses READ/WRITE 10/16 (None for any other CDB or a short one).
pub fn parse_read_write(cdb: &[u8]) -> Option<ReadWrite> {
    match *cdb.first()? {
        op @ (opcode::READ_10 | opcode::WRITE_10) => {
            let (cdb, _) = Cdb10::read_from_prefix(cdb).ok()?;
            Some(ReadWrite {
                write: op == opcode::WRITE_10,
                lba: cdb.lba.get().into(),
                blocks: cdb.transfer_length.get().into(),
                fua: cdb.flags & FUA != 0,
            })
        }
        op @ (opcode::READ_16 | opcode::WRITE_16) => {
            let (cdb, _) = Cdb16::read_from_prefix(cdb).ok()?;
            Some(ReadWrite {
                write: op == opcode::WRITE_16,
                lba: cdb.lba.get(),
                blocks: cdb.transfer_length.get(),
                fua: cdb.flags & FUA != 0,
            })
        }
        _ => None,
    }
}

/// A SYNCHRONIZE CACHE 10/16, parsed: the range (0 blocks = to the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncCache {
    pub lba: u64,
    pub blocks: u32,
}

pub fn parse_sync_cache(cdb: &[u8]) -> Option<SyncCache> {
    match *cdb.first()? {
        opcode::SYNCHRONIZE_CACHE_10 => {
            let (cdb, _) = Cdb10::read_from_prefix(cdb).ok()?;
            Some(SyncCache {
                lba: cdb.lba.get().into(),
                blocks: cdb.transfer_length.get().into(),
            })
        }
        opcode::SYNCHRONIZE_CACHE_16 => {
            let (cdb, _) = Cdb16::read_from_prefix(cdb).ok()?;
            Some(SyncCache {
                lba: cdb.lba.get(),
                blocks: cdb.transfer_length.get(),
            })
        }
        _ => None,
    }
}

impl Cdb10 {
    pub fn read(lba: u32, blocks: u16) -> Self {
        Self::new(opcode::READ_10, lba, blocks)
    }
    pub fn write(lba: u32, blocks: u16) -> Self {
        Self::new(opcode::WRITE_10, lba, blocks)
    }
    /// Blocks 0 = the whole disk from `lba`.
    pub fn sync_cache(lba: u32, blocks: u16) -> Self {
        Self::new(opcode::SYNCHRONIZE_CACHE_10, lba, blocks)
    }
    pub fn new(opcode: u8, lba: u32, blocks: u16) -> Self {
        Self {
            opcode,
            lba: lba.into(),
            transfer_length: blocks.into(),
            ..Self::default()
        }
    }
}

impl Cdb16 {
    pub fn read(lba: u64, blocks: u32) -> Self {
        Self::new(opcode::READ_16, lba, blocks)
    }
    pub fn write(lba: u64, blocks: u32) -> Self {
        Self::new(opcode::WRITE_16, lba, blocks)
    }
    pub fn sync_cache(lba: u64, blocks: u32) -> Self {
        Self::new(opcode::SYNCHRONIZE_CACHE_16, lba, blocks)
    }
    pub fn new(opcode: u8, lba: u64, blocks: u32) -> Self {
        Self {
            opcode,
            lba: lba.into(),
            transfer_length: blocks.into(),
            ..Self::default()
        }
    }
}

impl CdbReadCapacity16 {
    pub fn new(allocation_length: u32) -> Self {
        Self {
            opcode: opcode::SERVICE_ACTION_IN_16,
            service_action: SERVICE_ACTION_READ_CAPACITY_16,
            allocation_length: allocation_length.into(),
            ..Self::default()
        }
    }
}

impl CdbUnmap {
    pub fn new(parameter_list_length: u16) -> Self {
        Self {
            opcode: opcode::UNMAP,
            parameter_list_length: parameter_list_length.into(),
            ..Self::default()
        }
    }
}

impl CdbReportLuns {
    pub fn new(allocation_length: u32) -> Self {
        Self {
            opcode: opcode::REPORT_LUNS,
            allocation_length: allocation_length.into(),
            ..Self::default()
        }
    }
}

wire! {
    /// The UNMAP parameter list's 8-byte header; block descriptors follow.
    UnmapListHeader {
        /// Bytes after this field (6 + descriptors).
        data_length: U16,
        block_descriptor_data_length: U16,
        reserved: [u8; 4],
    }
}

wire! {
    /// One UNMAP range.
    UnmapDescriptor {
        lba: U64,
        blocks: U32,
        reserved: [u8; 4],
    }
}

/// Why an UNMAP parameter list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// Shorter than its header, or than the lengths it claims.
    ParameterListLength,
    /// A descriptor length that is no multiple of 16.
    InvalidField,
}

/// The descriptors of an UNMAP parameter list (bounds from the list's own
/// lengths, checked against the bytes received).
pub fn parse_unmap_list(list: &[u8]) -> Result<&[UnmapDescriptor], UnmapError> {
    if list.is_empty() {
        return Ok(&[]);
    }
    let (header, rest) =
        UnmapListHeader::ref_from_prefix(list).map_err(|_| UnmapError::ParameterListLength)?;
    let descriptors_len = header.block_descriptor_data_length.get() as usize;
    if !descriptors_len.is_multiple_of(core::mem::size_of::<UnmapDescriptor>()) {
        return Err(UnmapError::InvalidField);
    }
    let bytes = rest
        .get(..descriptors_len)
        .ok_or(UnmapError::ParameterListLength)?;
    <[UnmapDescriptor]>::ref_from_bytes(bytes).map_err(|_| UnmapError::InvalidField)
}

wire! {
    /// Standard INQUIRY data (the 36-byte form).
    InquiryData {
        /// Qualifier (7..5) and device type (4..0).
        peripheral: u8,
        /// Bit 7: removable medium.
        rmb: u8,
        /// 5 = SPC-3, 6 = SPC-4.
        version: u8,
        /// Response data format 2 (3..0), HISUP 0x10.
        response_format: u8,
        /// Bytes after this field (31 for the 36-byte form).
        additional_length: u8,
        /// Byte 5: bit 3 3PC; bits 5..4 TPGS.
        flags5: u8,
        flags6: u8,
        /// Byte 7: CMDQUE 0x02.
        flags7: u8,
        vendor: [u8; 8],
        product: [u8; 16],
        revision: [u8; 4],
    }
}

/// Peripheral device types.
pub mod device_type {
    pub const DIRECT_ACCESS: u8 = 0x00;
    pub const CDROM: u8 = 0x05;
    /// Qualifier 3, type 0x1F: no logical unit at this LUN.
    pub const NO_LUN: u8 = 0x7F;
}

/// INQUIRY versions.
pub const INQUIRY_VERSION_SPC3: u8 = 5;
pub const INQUIRY_RESPONSE_FORMAT: u8 = 2;
pub const INQUIRY_CMDQUE: u8 = 0x02;

impl InquiryData {
    /// A direct-access disk's standard data; strings are space-padded.
    pub fn disk(vendor: &str, product: &str, revision: &str) -> Self {
        let mut data = Self {
            peripheral: device_type::DIRECT_ACCESS,
            version: INQUIRY_VERSION_SPC3,
            response_format: INQUIRY_RESPONSE_FORMAT,
            additional_length: (core::mem::size_of::<Self>() - 5) as u8,
            flags7: INQUIRY_CMDQUE,
            ..Self::default()
        };
        pad_ascii(&mut data.vendor, vendor);
        pad_ascii(&mut data.product, product);
        pad_ascii(&mut data.revision, revision);
        data
    }
}

/// Copies `text` into `field`, space-padded (ASCII, cut to fit).
pub fn pad_ascii(field: &mut [u8], text: &str) {
    field.fill(b' ');
    for (slot, byte) in field.iter_mut().zip(text.bytes()) {
        *slot = if byte.is_ascii_graphic() || byte == b' ' {
            byte
        } else {
            b'?'
        };
    }
}

/// VPD page codes.
pub mod vpd {
    pub const SUPPORTED_PAGES: u8 = 0x00;
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    pub const BLOCK_LIMITS: u8 = 0xB0;
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
}

wire! {
    /// The 4-byte header of every VPD page; `page_length` bytes follow.
    VpdHeader {
        peripheral: u8,
        page_code: u8,
        page_length: U16,
    }
}

wire! {
    /// A designation descriptor's 4-byte header in page 0x83.
    DesignatorHeader {
        /// Protocol identifier (7..4), code set (3..0): 1 binary, 2 ASCII.
        code_set: u8,
        /// PIV (7), association (5..4: 0 = the LUN), designator type
        /// (3..0): 1 T10 vendor id, 2 EUI-64, 3 NAA.
        designator_type: u8,
        reserved: u8,
        length: u8,
    }
}

pub mod designator {
    pub const CODE_SET_BINARY: u8 = 1;
    pub const CODE_SET_ASCII: u8 = 2;
    pub const TYPE_T10_VENDOR: u8 = 1;
    pub const TYPE_EUI64: u8 = 2;
    pub const TYPE_NAA: u8 = 3;
}

wire! {
    /// VPD page 0xB0, block limits (page length 0x3C).
    BlockLimitsPage {
        header: VpdHeader,
        wsnz: u8,
        max_compare_and_write_length: u8,
        optimal_transfer_length_granularity: U16,
        /// Blocks; 0 = no limit reported.
        max_transfer_length: U32,
        optimal_transfer_length: U32,
        max_prefetch_length: U32,
        max_unmap_lba_count: U32,
        max_unmap_block_descriptor_count: U32,
        optimal_unmap_granularity: U32,
        /// Bit 31: UGAVALID.
        unmap_granularity_alignment: U32,
        max_write_same_length: U64,
        reserved: [u8; 20],
    }
}

wire! {
    /// VPD page 0xB2, logical block provisioning (page length 4).
    ProvisioningPage {
        header: VpdHeader,
        threshold_exponent: u8,
        /// [`provisioning`] flag bits.
        flags: u8,
        /// Bits 2..0: provisioning type (0 full, 1 resource, 2 thin).
        provisioning_type: u8,
        reserved: u8,
    }
}

pub mod provisioning {
    /// UNMAP is supported.
    pub const LBPU: u8 = 0x80;
    pub const LBPWS: u8 = 0x40;
    pub const LBPWS10: u8 = 0x20;
    /// Unmapped blocks read as zeros (LBPRZ, 3 bits at 4..2; 1 = zeros).
    pub const LBPRZ_ZEROS: u8 = 0x04;
    pub const TYPE_FULL: u8 = 0;
    pub const TYPE_THIN: u8 = 2;
}

wire! {
    /// READ CAPACITY(10) data.
    ReadCapacity10Data {
        /// The last LBA, 0xFFFF_FFFF if it does not fit (use READ CAPACITY(16)).
        last_lba: U32,
        block_length: U32,
    }
}

wire! {
    /// READ CAPACITY(16) data (32 bytes).
    ReadCapacity16Data {
        last_lba: U64,
        block_length: U32,
        /// P_TYPE, PROT_EN.
        protection: u8,
        /// P_I_EXPONENT (7..4), logical blocks per physical block exponent (3..0).
        exponents: u8,
        /// LBPME 0x8000, LBPRZ 0x4000, lowest aligned LBA (13..0).
        provisioning: U16,
        reserved: [u8; 16],
    }
}

pub const READ_CAPACITY16_LBPME: u16 = 0x8000;
pub const READ_CAPACITY16_LBPRZ: u16 = 0x4000;

wire! {
    /// REPORT LUNS data header; 8-byte LUN entries follow.
    LunListHeader {
        /// Bytes of LUN entries (8 per LUN).
        list_length: U32,
        reserved: U32,
    }
}

/// A LUN's 8-byte REPORT LUNS entry (single level; peripheral addressing
/// below 256, flat addressing up to 16383).
pub fn lun_entry(lun: u16) -> [u8; 8] {
    let mut entry = [0u8; 8];
    if lun < 256 {
        entry[1] = lun as u8;
    } else {
        let [high, low] = (lun & 0x3FFF).to_be_bytes();
        entry[0] = 0x40 | high;
        entry[1] = low;
    }
    entry
}

/// The LUN an 8-byte REPORT LUNS entry names (single level only).
pub fn parse_lun_entry(entry: &[u8; 8]) -> Option<u16> {
    if entry[2..].iter().any(|&byte| byte != 0) {
        return None;
    }
    match entry[0] >> 6 {
        0 if entry[0] == 0 => Some(entry[1].into()),
        1 => Some(u16::from_be_bytes([entry[0] & 0x3F, entry[1]])),
        _ => None,
    }
}

wire! {
    /// MODE SENSE(6) parameter header.
    ModeHeader6 {
        mode_data_length: u8,
        medium_type: u8,
        /// Bit 7: write protected (WP). Bit 4: DPOFUA.
        device_specific: u8,
        block_descriptor_length: u8,
    }
}

wire! {
    /// MODE SENSE(10) parameter header.
    ModeHeader10 {
        mode_data_length: U16,
        medium_type: u8,
        device_specific: u8,
        reserved: U16,
        block_descriptor_length: U16,
    }
}

pub const MODE_DEVICE_SPECIFIC_WP: u8 = 0x80;
pub const MODE_DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;
/// Mode pages.
pub mod mode_page {
    pub const CACHING: u8 = 0x08;
    pub const ALL: u8 = 0x3F;
}

wire! {
    /// The caching mode page (0x08), 20 bytes.
    CachingModePage {
        page_code: u8,
        page_length: u8,
        /// Bit 2: WCE (write cache enabled). Bit 0: RCD.
        flags: u8,
        retention: u8,
        disable_prefetch_transfer_length: U16,
        min_prefetch: U16,
        max_prefetch: U16,
        max_prefetch_ceiling: U16,
        flags2: u8,
        cache_segments: u8,
        cache_segment_size: U16,
        reserved: u8,
        obsolete: [u8; 3],
    }
}

pub const CACHING_WCE: u8 = 0x04;

wire! {
    /// Fixed-format sense data (18 bytes).
    FixedSense {
        /// 0x70 current error (bit 7: information valid).
        response_code: u8,
        obsolete: u8,
        /// Sense key (3..0); FILEMARK, EOM, ILI above.
        flags_key: u8,
        information: U32,
        /// Bytes after this field (10).
        additional_length: u8,
        command_specific: U32,
        asc: u8,
        ascq: u8,
        fru: u8,
        sense_key_specific: [u8; 3],
    }
}

pub const SENSE_RESPONSE_CURRENT: u8 = 0x70;
pub const SENSE_RESPONSE_DEFERRED: u8 = 0x71;
pub const FIXED_SENSE_SIZE: usize = 18;

impl FixedSense {
    pub fn new(key: u8, (asc, ascq): asc::Code) -> Self {
        Self {
            response_code: SENSE_RESPONSE_CURRENT,
            flags_key: key & 0x0F,
            additional_length: (FIXED_SENSE_SIZE - 8) as u8,
            asc,
            ascq,
            ..Self::default()
        }
    }
    pub fn key(&self) -> u8 {
        self.flags_key & 0x0F
    }
    pub fn code(&self) -> asc::Code {
        (self.asc, self.ascq)
    }
    /// Key and code from fixed or descriptor sense bytes (None if too
    /// short or of another response code).
    pub fn parse(bytes: &[u8]) -> Option<(u8, asc::Code)> {
        match bytes.first()? & 0x7F {
            SENSE_RESPONSE_CURRENT | SENSE_RESPONSE_DEFERRED if bytes.len() >= 14 => {
                Some((bytes[2] & 0x0F, (bytes[12], bytes[13])))
            }
            // Descriptor format: key and code in bytes 1-3.
            0x72 | 0x73 if bytes.len() >= 4 => Some((bytes[1] & 0x0F, (bytes[2], bytes[3]))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes() {
        assert_eq!(size_of::<Cdb6>(), 6);
        assert_eq!(size_of::<Cdb10>(), 10);
        assert_eq!(size_of::<Cdb16>(), 16);
        assert_eq!(size_of::<CdbReadCapacity16>(), 16);
        assert_eq!(size_of::<CdbUnmap>(), 10);
        assert_eq!(size_of::<CdbReportLuns>(), 12);
        assert_eq!(size_of::<CdbModeSense10>(), 10);
        assert_eq!(size_of::<UnmapListHeader>(), 8);
        assert_eq!(size_of::<UnmapDescriptor>(), 16);
        assert_eq!(size_of::<InquiryData>(), 36);
        assert_eq!(size_of::<VpdHeader>(), 4);
        assert_eq!(size_of::<BlockLimitsPage>(), 64);
        assert_eq!(size_of::<ProvisioningPage>(), 8);
        assert_eq!(size_of::<ReadCapacity10Data>(), 8);
        assert_eq!(size_of::<ReadCapacity16Data>(), 32);
        assert_eq!(size_of::<LunListHeader>(), 8);
        assert_eq!(size_of::<ModeHeader6>(), 4);
        assert_eq!(size_of::<ModeHeader10>(), 8);
        assert_eq!(size_of::<CachingModePage>(), 20);
        assert_eq!(size_of::<FixedSense>(), FIXED_SENSE_SIZE);
    }

    #[test]
    fn offsets() {
        assert_eq!(offset_of!(Cdb10, lba), 2);
        assert_eq!(offset_of!(Cdb10, transfer_length), 7);
        assert_eq!(offset_of!(Cdb16, lba), 2);
        assert_eq!(offset_of!(Cdb16, transfer_length), 10);
        assert_eq!(offset_of!(CdbReadCapacity16, allocation_length), 10);
        assert_eq!(offset_of!(CdbUnmap, parameter_list_length), 7);
        assert_eq!(offset_of!(CdbReportLuns, allocation_length), 6);
        assert_eq!(offset_of!(InquiryData, vendor), 8);
        assert_eq!(offset_of!(InquiryData, product), 16);
        assert_eq!(offset_of!(InquiryData, revision), 32);
        assert_eq!(offset_of!(BlockLimitsPage, max_transfer_length), 8);
        assert_eq!(offset_of!(BlockLimitsPage, max_unmap_lba_count), 20);
        assert_eq!(
            offset_of!(BlockLimitsPage, max_unmap_block_descriptor_count),
            24
        );
        assert_eq!(offset_of!(BlockLimitsPage, unmap_granularity_alignment), 32);
        assert_eq!(offset_of!(BlockLimitsPage, max_write_same_length), 36);
        assert_eq!(offset_of!(ProvisioningPage, flags), 5);
        assert_eq!(offset_of!(ReadCapacity16Data, block_length), 8);
        assert_eq!(offset_of!(ReadCapacity16Data, provisioning), 14);
        assert_eq!(offset_of!(FixedSense, flags_key), 2);
        assert_eq!(offset_of!(FixedSense, additional_length), 7);
        assert_eq!(offset_of!(FixedSense, asc), 12);
        assert_eq!(offset_of!(FixedSense, ascq), 13);
        assert_eq!(offset_of!(UnmapDescriptor, blocks), 8);
    }

    #[test]
    fn read_write_cdbs_are_big_endian_and_round_trip() {
        let cdb = Cdb10::write(0x0102_0304, 0x0506);
        assert_eq!(cdb.as_bytes(), &[0x2A, 0, 1, 2, 3, 4, 0, 5, 6, 0]);
        assert_eq!(
            parse_read_write(cdb.as_bytes()),
            Some(ReadWrite {
                write: true,
                lba: 0x0102_0304,
                blocks: 0x0506,
                fua: false
            })
        );
        let mut cdb = Cdb16::read(0x1_0000_0000, 8);
        cdb.flags = FUA;
        let bytes = cdb.as_bytes();
        assert_eq!(&bytes[2..10], &[0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&bytes[10..14], &[0, 0, 0, 8]);
        let parsed = parse_read_write(bytes).unwrap();
        assert!(!parsed.write && parsed.fua);
        assert_eq!(parsed.lba, 0x1_0000_0000);
        // Truncated and other commands are refused.
        assert_eq!(parse_read_write(&bytes[..9]), None);
        assert_eq!(parse_read_write(Cdb10::sync_cache(0, 0).as_bytes()), None);
        assert_eq!(
            parse_sync_cache(Cdb16::sync_cache(5, 6).as_bytes()),
            Some(SyncCache { lba: 5, blocks: 6 })
        );
        assert_eq!(
            parse_sync_cache(Cdb10::sync_cache(7, 0).as_bytes()),
            Some(SyncCache { lba: 7, blocks: 0 })
        );
    }

    #[test]
    fn inquiry_cdb_and_data() {
        let cdb = Cdb6::inquiry(Some(vpd::BLOCK_LIMITS), 0x0140);
        assert_eq!(cdb.as_bytes(), &[0x12, 1, 0xB0, 0x01, 0x40, 0]);
        assert_eq!(cdb.inquiry_allocation_length(), 0x140);
        let data = InquiryData::disk("Msft", "Virtual Disk", "1.0");
        assert_eq!(data.additional_length, 31);
        assert_eq!(&data.vendor, b"Msft    ");
        assert_eq!(&data.product, b"Virtual Disk    ");
        assert_eq!(&data.revision, b"1.0 ");
    }

    #[test]
    fn unmap_list_bounds() {
        let mut list = [0u8; 8 + 32];
        let header = UnmapListHeader {
            data_length: 38.into(),
            block_descriptor_data_length: 32.into(),
            reserved: [0; 4],
        };
        list[..8].copy_from_slice(header.as_bytes());
        let first = UnmapDescriptor {
            lba: 10.into(),
            blocks: 4.into(),
            reserved: [0; 4],
        };
        list[8..24].copy_from_slice(first.as_bytes());
        let descriptors = parse_unmap_list(&list).unwrap();
        assert_eq!(descriptors.len(), 2);
        assert_eq!(descriptors[0].lba.get(), 10);
        assert_eq!(descriptors[0].blocks.get(), 4);
        assert_eq!(
            parse_unmap_list(&list[..30]),
            Err(UnmapError::ParameterListLength)
        );
        list[3] = 17;
        assert_eq!(parse_unmap_list(&list), Err(UnmapError::InvalidField));
        assert_eq!(
            parse_unmap_list(&list[..4]),
            Err(UnmapError::ParameterListLength)
        );
        assert_eq!(parse_unmap_list(&[]).unwrap().len(), 0);
    }

    #[test]
    fn lun_entries() {
        assert_eq!(lun_entry(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lun_entry(0x123), [0x41, 0x23, 0, 0, 0, 0, 0, 0]);
        for lun in [0u16, 1, 255, 256, 16383] {
            assert_eq!(parse_lun_entry(&lun_entry(lun)), Some(lun));
        }
        assert_eq!(parse_lun_entry(&[0, 1, 0, 1, 0, 0, 0, 0]), None);
        assert_eq!(parse_lun_entry(&[0x80, 1, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn sense_round_trip() {
        let sense = FixedSense::new(
            sense_key::ILLEGAL_REQUEST,
            asc::INVALID_COMMAND_OPERATION_CODE,
        );
        let bytes = sense.as_bytes();
        assert_eq!(bytes[0], 0x70);
        assert_eq!(bytes[2], 0x05);
        assert_eq!(bytes[7], 10);
        assert_eq!((bytes[12], bytes[13]), (0x20, 0));
        assert_eq!(
            FixedSense::parse(bytes),
            Some((
                sense_key::ILLEGAL_REQUEST,
                asc::INVALID_COMMAND_OPERATION_CODE
            ))
        );
        assert_eq!(FixedSense::parse(&bytes[..13]), None);
        assert_eq!(
            FixedSense::parse(&[0x72, 0x06, 0x29, 0x00]),
            Some((sense_key::UNIT_ATTENTION, asc::POWER_ON_RESET))
        );
    }
}
