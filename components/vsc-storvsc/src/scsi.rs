//! The few SCSI facts the initiator needs beyond the wire formats: CDB
//! builders and the reading of sense data and of the discovery replies.
//! Every reply is bounded by the bytes the host says it transferred and by
//! its own length fields; nothing here indexes past a slice.

/// Operation codes (SPC/SBC).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const INQUIRY: u8 = 0x12;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const UNMAP: u8 = 0x42;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const READ_CAPACITY_16_ACTION: u8 = 0x10;
    pub const REPORT_LUNS: u8 = 0xA0;
}

/// SCSI status (SAM).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Sense keys (SPC).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
}

/// A CDB: at most 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cdb {
    pub bytes: [u8; 16],
    pub len: u8,
}

impl Cdb {
    fn new(len: u8) -> Cdb {
        Cdb {
            bytes: [0; 16],
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    pub fn test_unit_ready() -> Cdb {
        Cdb::new(6)
    }

    pub fn inquiry(vpd_page: Option<u8>, allocation: u16) -> Cdb {
        let mut cdb = Cdb::new(6);
        cdb.bytes[0] = opcode::INQUIRY;
        if let Some(page) = vpd_page {
            cdb.bytes[1] = 1;
            cdb.bytes[2] = page;
        }
        cdb.bytes[3..5].copy_from_slice(&allocation.to_be_bytes());
        cdb
    }

    pub fn report_luns(allocation: u32) -> Cdb {
        let mut cdb = Cdb::new(12);
        cdb.bytes[0] = opcode::REPORT_LUNS;
        cdb.bytes[6..10].copy_from_slice(&allocation.to_be_bytes());
        cdb
    }

    pub fn read_capacity_10() -> Cdb {
        let mut cdb = Cdb::new(10);
        cdb.bytes[0] = opcode::READ_CAPACITY_10;
        cdb
    }

    pub fn read_capacity_16(allocation: u32) -> Cdb {
        let mut cdb = Cdb::new(16);
        cdb.bytes[0] = opcode::SERVICE_ACTION_IN_16;
        cdb.bytes[1] = opcode::READ_CAPACITY_16_ACTION;
        cdb.bytes[10..14].copy_from_slice(&allocation.to_be_bytes());
        cdb
    }

    /// READ or WRITE: the 10-byte form while the LBA fits 32 bits and the
    /// count 16 bits, the 16-byte form beyond (as sd does).
    pub fn read_write(write: bool, lba: u64, blocks: u32) -> Cdb {
        if lba
            .checked_add(u64::from(blocks))
            .is_some_and(|end| end <= u64::from(u32::MAX))
            && blocks <= u32::from(u16::MAX)
        {
            let mut cdb = Cdb::new(10);
            cdb.bytes[0] = if write {
                opcode::WRITE_10
            } else {
                opcode::READ_10
            };
            cdb.bytes[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb.bytes[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
            cdb
        } else {
            let mut cdb = Cdb::new(16);
            cdb.bytes[0] = if write {
                opcode::WRITE_16
            } else {
                opcode::READ_16
            };
            cdb.bytes[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb.bytes[10..14].copy_from_slice(&blocks.to_be_bytes());
            cdb
        }
    }

    /// SYNCHRONIZE CACHE (10) of the whole medium (LBA 0, 0 blocks).
    pub fn synchronize_cache() -> Cdb {
        let mut cdb = Cdb::new(10);
        cdb.bytes[0] = opcode::SYNCHRONIZE_CACHE_10;
        cdb
    }

    /// UNMAP with a parameter list of `list_len` bytes.
    pub fn unmap(list_len: u16) -> Cdb {
        let mut cdb = Cdb::new(10);
        cdb.bytes[0] = opcode::UNMAP;
        cdb.bytes[7..9].copy_from_slice(&list_len.to_be_bytes());
        cdb
    }
}

/// UNMAP parameter list with one block descriptor (SBC-3 5.28): 8-byte
/// header, one 16-byte descriptor.
pub const UNMAP_LIST_LEN: usize = 24;

pub fn unmap_list(lba: u64, blocks: u32) -> [u8; UNMAP_LIST_LEN] {
    let mut list = [0u8; UNMAP_LIST_LEN];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&lba.to_be_bytes());
    list[16..20].copy_from_slice(&blocks.to_be_bytes());
    list
}

/// The part of sense data the initiator acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

/// Fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; `None` for
/// anything else or too short to hold the key.
pub fn parse_sense(bytes: &[u8]) -> Option<Sense> {
    let code = bytes.first()? & 0x7F;
    match code {
        0x70 | 0x71 => Some(Sense {
            key: bytes.get(2)? & 0x0F,
            asc: bytes.get(12).copied().unwrap_or(0),
            ascq: bytes.get(13).copied().unwrap_or(0),
        }),
        0x72 | 0x73 => Some(Sense {
            key: bytes.get(1)? & 0x0F,
            asc: bytes.get(2).copied().unwrap_or(0),
            ascq: bytes.get(3).copied().unwrap_or(0),
        }),
        _ => None,
    }
}

/// Standard INQUIRY: a connected direct-access block device?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inquiry {
    pub connected: bool,
    pub device_type: u8,
}

pub fn parse_inquiry(data: &[u8]) -> Option<Inquiry> {
    let first = *data.first()?;
    if data.len() < 5 {
        return None;
    }
    Some(Inquiry {
        connected: first >> 5 == 0,
        device_type: first & 0x1F,
    })
}

/// The 4-byte VPD page header: the page's bytes after it, bounded by what
/// came.
pub fn vpd_body(data: &[u8], page: u8) -> Option<&[u8]> {
    if data.len() < 4 || data[1] != page {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    data.get(4..4 + len.min(data.len() - 4))
}

/// Block limits (VPD 0xB0): maximum transfer length in blocks (0: none
/// given) and whether an UNMAP descriptor count is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    pub max_transfer_blocks: u32,
    pub max_unmap_blocks: u32,
}

pub fn parse_block_limits(body: &[u8]) -> BlockLimits {
    let word = |at: usize| {
        body.get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Offsets in the page minus its 4-byte header.
    BlockLimits {
        max_transfer_blocks: word(4),
        max_unmap_blocks: word(16),
    }
}

/// Logical block provisioning (VPD 0xB2): LBPU (UNMAP supported).
pub fn parse_unmap_supported(body: &[u8]) -> bool {
    body.get(1).is_some_and(|flags| flags & 0x80 != 0)
}

/// Device identification (VPD 0x83): the first designator, as printable
/// ASCII (hex for binary designators), at most `N` characters.
pub fn parse_identification<const N: usize>(body: &[u8]) -> heapless::String<N> {
    let mut text = heapless::String::new();
    if body.len() < 4 {
        return text;
    }
    let code_set = body[0] & 0x0F;
    let len = body[3] as usize;
    let designator = &body[4..(4 + len).min(body.len())];
    if code_set == 2 || code_set == 3 {
        for &byte in designator {
            let ch = if (0x20..0x7F).contains(&byte) {
                byte as char
            } else {
                '.'
            };
            if text.push(ch).is_err() {
                break;
            }
        }
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &byte in designator {
            if text.push(HEX[(byte >> 4) as usize] as char).is_err()
                || text.push(HEX[(byte & 0xF) as usize] as char).is_err()
            {
                break;
            }
        }
    }
    text
}

/// READ CAPACITY: (blocks, block size).
pub fn parse_capacity_16(data: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let size = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, size))
}

pub fn parse_capacity_10(data: &[u8]) -> Option<(u64, u32)> {
    let last = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?);
    let size = u32::from_be_bytes(data.get(4..8)?.try_into().ok()?);
    Some((u64::from(last) + 1, size))
}

/// REPORT LUNS: the LUN numbers of the peripheral (0b00) and flat (0b01)
/// addressing forms that fit a byte; others are skipped.
pub fn parse_report_luns<const N: usize>(data: &[u8]) -> heapless::Vec<u8, N> {
    let mut luns = heapless::Vec::new();
    let Some(len) = data.get(0..4) else {
        return luns;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let list = &data[8.min(data.len())..];
    for entry in list[..len.min(list.len())].chunks_exact(8) {
        let method = entry[0] >> 6;
        let lun = u16::from(entry[0] & 0x3F) << 8 | u16::from(entry[1]);
        if (method == 0 || method == 1) && lun < 256 && !luns.contains(&(lun as u8)) {
            let _ = luns.push(lun as u8);
        }
    }
    luns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_picks_the_short_form_while_it_fits() {
        let cdb = Cdb::read_write(false, 0x1234_5678, 8);
        assert_eq!(
            cdb.as_slice(),
            &[0x28, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 8, 0]
        );
        let cdb = Cdb::read_write(true, 0x1_0000_0000, 1);
        assert_eq!(cdb.len, 16);
        assert_eq!(cdb.bytes[0], 0x8A);
        assert_eq!(&cdb.bytes[2..10], &0x1_0000_0000u64.to_be_bytes());
        assert_eq!(&cdb.bytes[10..14], &1u32.to_be_bytes());
        assert_eq!(Cdb::read_write(false, 0, 70_000).len, 16);
        // The last blocks below 2^32 still fit the short form; one past not.
        assert_eq!(Cdb::read_write(false, u64::from(u32::MAX) - 1, 1).len, 10);
        assert_eq!(Cdb::read_write(false, u64::from(u32::MAX), 1).len, 16);
    }

    #[test]
    fn sense_in_both_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x29;
        assert_eq!(
            parse_sense(&fixed),
            Some(Sense {
                key: 6,
                asc: 0x29,
                ascq: 0
            })
        );
        assert_eq!(
            parse_sense(&[0x72, 0x03, 0x11, 0x00]),
            Some(Sense {
                key: 3,
                asc: 0x11,
                ascq: 0
            })
        );
        assert_eq!(parse_sense(&[0x70, 0]), None);
        assert_eq!(parse_sense(&[0x00; 18]), None);
        assert_eq!(parse_sense(&[]), None);
    }

    #[test]
    fn report_luns_is_bounded_by_its_length_and_the_data() {
        let mut data = [0u8; 8 + 3 * 8];
        data[3] = 24;
        data[9] = 0; // LUN 0
        data[17] = 3; // LUN 3
        data[24] = 0x40; // flat addressing
        data[25] = 5;
        let luns: heapless::Vec<u8, 8> = parse_report_luns(&data);
        assert_eq!(luns.as_slice(), &[0, 3, 5]);
        // A length beyond the data: only what came.
        data[3] = 200;
        let luns: heapless::Vec<u8, 8> = parse_report_luns(&data[..16]);
        assert_eq!(luns.as_slice(), &[0]);
    }

    #[test]
    fn capacities_and_vpd() {
        let mut cap16 = [0u8; 32];
        cap16[0..8].copy_from_slice(&99u64.to_be_bytes());
        cap16[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(parse_capacity_16(&cap16), Some((100, 512)));
        assert_eq!(parse_capacity_16(&cap16[..10]), None);
        assert_eq!(parse_capacity_16(&[0xFF; 12]), None);
        assert_eq!(
            parse_capacity_10(&[0, 0, 0, 9, 0, 0, 2, 0]),
            Some((10, 512))
        );
        let page = [0, 0xB2, 0, 4, 0, 0x80, 0, 0];
        assert!(parse_unmap_supported(vpd_body(&page, 0xB2).unwrap()));
        assert_eq!(vpd_body(&page, 0xB0), None);
        let ident = [0, 0x83, 0, 8, 0x02, 0x01, 0, 4, b'd', b'i', b's', b'k'];
        let id: heapless::String<16> = parse_identification(vpd_body(&ident, 0x83).unwrap());
        assert_eq!(id.as_str(), "disk");
    }
}
