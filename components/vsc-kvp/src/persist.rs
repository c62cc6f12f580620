//! The KVP pools across a restart of the driver. A fault resets the
//! driver's own memory to its image, but not its regions (docs/sel4.md,
//! docs/hosted.md), so the pools are kept, after every change and before
//! it is acknowledged, in the private region `store` (mapped only into
//! `kvp`, not host visible).
//!
//! Layout: two slots of [`SLOT_BYTES`], each a [`HEADER_BYTES`] header and
//! the store's packed entries (`store.rs`). Header, little endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `KVPS` |
//! | 4 | layout version (u16, [`LAYOUT_VERSION`]) |
//! | 6 | reserved, 0 (u16) |
//! | 8 | generation (u64, one more per save) |
//! | 16 | length of the entries (u32, at most `STORE_BYTES`) |
//! | 20 | CRC-32 (IEEE) of bytes 0..20 and then the entries |
//! | 24 | reserved, 0 (8 bytes) |
//!
//! A save writes the slot that does not hold the current state: the
//! entries first, then the header (the commit). A crash in the middle
//! leaves that slot failing its checksum and the other slot, the previous
//! state, intact; so a load finds either the old or the new state.
//!
//! Trusts: nothing in the region. A load copies a slot out and checks it
//! fully (magic, version, reserved bytes, length bound, checksum, then
//! every entry: `store::check_entries`); the newest slot that passes wins,
//! and with none the driver starts empty and says why (never a panic).
//! Writes: the `store` region only.

use crate::store::{Store, STORE_BYTES};
use component_api::{Region, RegionError};
use core::sync::atomic::{fence, Ordering};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const MAGIC: [u8; 4] = *b"KVPS";
pub const LAYOUT_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = size_of::<RawHeader>();
pub const SLOT_BYTES: usize = HEADER_BYTES + STORE_BYTES;
pub const SLOTS: usize = 2;
/// The least region that holds both slots.
pub const REGION_BYTES: usize = SLOTS * SLOT_BYTES;

/// A slot's header as it lies in the region (the table above).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 4],
    version: U16,
    reserved: [u8; 2],
    generation: U64,
    length: U32,
    checksum: U32,
    reserved_tail: [u8; 8],
}

const _: () = assert!(HEADER_BYTES == 32);

/// The header bytes the checksum covers (the checksum's own offset).
const CHECKED_HEADER: usize = core::mem::offset_of!(RawHeader, checksum);

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320).
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut digest = CRC.digest();
    for part in parts {
        digest.update(part);
    }
    digest.finalize()
}

/// A slot's header, parsed and bounds-checked (not yet its checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    generation: u64,
    length: usize,
    checksum: u32,
}

fn encode_header(generation: u64, entries: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = RawHeader::new_zeroed();
    header.magic = MAGIC;
    header.version = LAYOUT_VERSION.into();
    header.generation = generation.into();
    // Bounded: the entries are at most STORE_BYTES.
    header.length = (entries.len() as u32).into();
    header.checksum = crc32(&[&header.as_bytes()[..CHECKED_HEADER], entries]).into();
    let mut bytes = [0u8; HEADER_BYTES];
    bytes.copy_from_slice(header.as_bytes());
    bytes
}

/// `None` for a slot never written (all zero); otherwise the header, or
/// why it is not one.
fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Option<Result<Header, &'static str>> {
    if bytes.iter().all(|&byte| byte == 0) {
        return None;
    }
    let Ok(header) = RawHeader::ref_from_bytes(bytes) else {
        return Some(Err("header of the wrong size"));
    };
    let length = header.length.get() as usize;
    Some(if header.magic != MAGIC {
        Err("bad magic")
    } else if header.version.get() != LAYOUT_VERSION {
        Err("unknown layout version")
    } else if header.reserved != [0; 2] || header.reserved_tail != [0; 8] {
        Err("reserved bytes not zero")
    } else if length > STORE_BYTES {
        Err("length beyond the store")
    } else {
        Ok(Header {
            generation: header.generation.get(),
            length,
            checksum: header.checksum.get(),
        })
    })
}

/// What a load found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Nothing was ever saved: the store starts empty.
    Fresh,
    /// The pools were restored from a slot. `rejected`: the other slot's
    /// problem, if it had one newer than this (a save that did not finish).
    Restored {
        generation: u64,
        pairs: usize,
        rejected: Option<&'static str>,
    },
    /// Something was saved but no slot passed: the store starts empty.
    Rejected { why: &'static str },
}

/// The driver's handle on its `store` region.
pub struct Persistence {
    region: Region,
    /// The newest generation seen or written: each save is one more.
    generation: u64,
    /// The slot that holds the current state, if one does.
    current: Option<usize>,
}

impl Persistence {
    /// Check `region` and restore the newest valid slot into `store`
    /// (which is left empty if none is). `Err` if the region cannot hold
    /// the slots (too small or read-only): nothing is read then.
    pub fn load(region: Region, store: &mut Store) -> Result<(Self, Loaded), &'static str> {
        if region.len() < REGION_BYTES {
            return Err("region too small");
        }
        if !region.writable() {
            return Err("region read-only");
        }
        let mut headers = [None; SLOTS];
        for (slot, header) in headers.iter_mut().enumerate() {
            let mut bytes = [0u8; HEADER_BYTES];
            region
                .read(slot * SLOT_BYTES, &mut bytes)
                .map_err(|_| "region too small")?;
            *header = parse_header(&bytes);
        }
        let mut persistence = Persistence {
            region,
            generation: 0,
            current: None,
        };
        if headers.iter().all(Option::is_none) {
            return Ok((persistence, Loaded::Fresh));
        }
        let mut first_problem = None;
        // Newest first: slots whose header parsed, by generation.
        let mut order: [(usize, Header); SLOTS] = [(
            0,
            Header {
                generation: 0,
                length: 0,
                checksum: 0,
            },
        ); SLOTS];
        let mut candidates = 0;
        for (slot, header) in headers.iter().enumerate() {
            match header {
                Some(Ok(header)) => {
                    order[candidates] = (slot, *header);
                    candidates += 1;
                    persistence.generation = persistence.generation.max(header.generation);
                }
                Some(Err(why)) => {
                    first_problem.get_or_insert(*why);
                }
                None => {}
            }
        }
        let order = &mut order[..candidates];
        order.sort_unstable_by_key(|(_, header)| core::cmp::Reverse(header.generation));
        for &(slot, header) in order.iter() {
            let region = persistence.region;
            let entries_at = slot * SLOT_BYTES + HEADER_BYTES;
            let restored = store.restore_with(header.length, |entries| {
                region
                    .read(entries_at, entries)
                    .map_err(|_| "region too small")?;
                let mut checked = [0u8; CHECKED_HEADER];
                region
                    .read(slot * SLOT_BYTES, &mut checked)
                    .map_err(|_| "region too small")?;
                if crc32(&[&checked, entries]) == header.checksum {
                    Ok(())
                } else {
                    Err("checksum mismatch")
                }
            });
            match restored {
                Ok(()) => {
                    persistence.current = Some(slot);
                    let newer_rejected = headers.iter().enumerate().any(|(other, parsed)| {
                        other != slot
                            && match parsed {
                                Some(Ok(other)) => other.generation > header.generation,
                                Some(Err(_)) => true,
                                None => false,
                            }
                    });
                    let loaded = Loaded::Restored {
                        generation: header.generation,
                        pairs: store.iter().count(),
                        rejected: if newer_rejected { first_problem } else { None },
                    };
                    return Ok((persistence, loaded));
                }
                Err(why) => {
                    first_problem.get_or_insert(why);
                }
            }
        }
        let why = first_problem.unwrap_or("no valid slot");
        Ok((persistence, Loaded::Rejected { why }))
    }

    /// Save `store` into the slot that does not hold the current state:
    /// entries first, then the header that commits them.
    pub fn save(&mut self, store: &Store) -> Result<(), RegionError> {
        let target = match self.current {
            Some(slot) => (slot + 1) % SLOTS,
            None => 0,
        };
        let generation = self.generation.saturating_add(1);
        let entries = store.contents();
        let header = encode_header(generation, entries);
        let at = target * SLOT_BYTES;
        self.region.write(at + HEADER_BYTES, entries)?;
        // The commit must not be seen before the entries it covers.
        fence(Ordering::Release);
        self.region.write(at, &header)?;
        self.current = Some(target);
        self.generation = generation;
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests;
