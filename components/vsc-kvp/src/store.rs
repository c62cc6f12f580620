//! The key-value pools: one fixed arena of [`STORE_BYTES`] bytes for all
//! pools, entries packed one after another in the order they were last
//! written: `[pool u8][key length u8][value length u16 LE][key][value]`.
//! Keys and values are UTF-8 already bounded by the IPC limits
//! (`vmbus_ipc::kvp::MAX_KEY`, `MAX_VALUE`); a store that would overflow
//! refuses the write and keeps what it had.
//!
//! The same bytes are what [`crate::persist`] keeps across a restart:
//! [`Store::contents`] to save, [`Store::restore_with`] to load, which takes
//! them only if [`check_entries`] accepts every entry.

use vmbus_ipc::kvp::{MAX_KEY, MAX_VALUE};
use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The arena for every pool together. Small pairs (the usual case) take a
/// few dozen bytes each; at worst six pairs of the largest size fit.
pub const STORE_BYTES: usize = 4096;
/// The pools this store keeps: external, guest, auto, auto-external.
pub const POOLS: u8 = 4;

/// The header before each entry's key and value.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EntryHeader {
    pool: u8,
    key_len: u8,
    value_len: U16,
}

const ENTRY_HEADER: usize = size_of::<EntryHeader>();
const _: () = assert!(ENTRY_HEADER == 4);

/// The entry header at `offset`, if `bytes` holds a whole one there.
fn entry_header(bytes: &[u8], offset: usize) -> Option<&EntryHeader> {
    EntryHeader::ref_from_prefix(bytes.get(offset..)?)
        .ok()
        .map(|(header, _)| header)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    UnknownPool,
    /// Empty key, or a key or value beyond the IPC limits.
    BadSize,
    Full,
}

pub struct Store {
    bytes: [u8; STORE_BYTES],
    used: usize,
}

/// One stored pair, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub pool: u8,
    pub key: &'a str,
    pub value: &'a str,
    offset: usize,
    len: usize,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub const fn new() -> Self {
        Store {
            bytes: [0; STORE_BYTES],
            used: 0,
        }
    }

    pub fn used(&self) -> usize {
        self.used
    }

    /// The packed entries (what [`crate::persist`] saves).
    pub fn contents(&self) -> &[u8] {
        &self.bytes[..self.used]
    }

    /// Replace the pairs with `len` bytes that `fill` copies in (it may
    /// refuse them: a checksum that does not match, say), kept only if
    /// they are a well-formed store ([`check_entries`]). On any error the
    /// store is left empty. Fills in place: no second 4 KiB on the stack.
    pub fn restore_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), &'static str>,
    ) -> Result<(), &'static str> {
        self.used = 0;
        let Some(bytes) = self.bytes.get_mut(..len) else {
            return Err("length beyond the store");
        };
        let checked = fill(bytes).and_then(|()| check_entries(bytes));
        match checked {
            Ok(()) => self.used = len,
            Err(_) => self.bytes.fill(0),
        }
        checked
    }

    fn entry_at(&self, offset: usize) -> Option<Entry<'_>> {
        let header = entry_header(&self.bytes, offset)?;
        let key_len = header.key_len as usize;
        let value_len = header.value_len.get() as usize;
        let key_start = offset + ENTRY_HEADER;
        let value_start = key_start + key_len;
        let end = value_start + value_len;
        if end > self.used {
            return None;
        }
        // Only whole `&str`s are ever stored, so these never fail; an
        // empty string is the harmless answer if they did.
        Some(Entry {
            pool: header.pool,
            key: core::str::from_utf8(&self.bytes[key_start..value_start]).unwrap_or(""),
            value: core::str::from_utf8(&self.bytes[value_start..end]).unwrap_or(""),
            offset,
            len: end - offset,
        })
    }

    /// Every pair, in the order they were last written.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut offset = 0;
        core::iter::from_fn(move || {
            let entry = self.entry_at(offset)?;
            offset += entry.len;
            Some(entry)
        })
    }

    fn find(&self, pool: u8, key: &str) -> Option<Entry<'_>> {
        self.iter()
            .find(|entry| entry.pool == pool && entry.key == key)
    }

    pub fn get(&self, pool: u8, key: &str) -> Option<&str> {
        self.find(pool, key).map(|entry| entry.value)
    }

    /// The `index`th pair of `pool`.
    pub fn nth(&self, pool: u8, index: usize) -> Option<(&str, &str)> {
        self.iter()
            .filter(|entry| entry.pool == pool)
            .nth(index)
            .map(|entry| (entry.key, entry.value))
    }

    pub fn count(&self, pool: u8) -> usize {
        self.iter().filter(|entry| entry.pool == pool).count()
    }

    fn remove(&mut self, offset: usize, len: usize) {
        self.bytes.copy_within(offset + len..self.used, offset);
        self.used -= len;
    }

    /// Write a pair (replacing the key's old value, which moves it last).
    pub fn set(&mut self, pool: u8, key: &str, value: &str) -> Result<(), StoreError> {
        if pool >= POOLS {
            return Err(StoreError::UnknownPool);
        }
        if key.is_empty() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(StoreError::BadSize);
        }
        let needed = ENTRY_HEADER + key.len() + value.len();
        let old = self.find(pool, key).map(|entry| (entry.offset, entry.len));
        let freed = old.map_or(0, |(_, len)| len);
        if self.used - freed + needed > STORE_BYTES {
            return Err(StoreError::Full);
        }
        if let Some((offset, len)) = old {
            self.remove(offset, len);
        }
        let start = self.used;
        let header = EntryHeader {
            pool,
            // Bounded above: MAX_KEY < 256, MAX_VALUE < 65536.
            key_len: key.len() as u8,
            value_len: (value.len() as u16).into(),
        };
        self.bytes[start..start + ENTRY_HEADER].copy_from_slice(header.as_bytes());
        let key_start = start + ENTRY_HEADER;
        self.bytes[key_start..key_start + key.len()].copy_from_slice(key.as_bytes());
        let value_start = key_start + key.len();
        self.bytes[value_start..value_start + value.len()].copy_from_slice(value.as_bytes());
        self.used += needed;
        Ok(())
    }

    /// Remove a pair; whether it was there.
    pub fn delete(&mut self, pool: u8, key: &str) -> bool {
        match self.find(pool, key).map(|entry| (entry.offset, entry.len)) {
            Some((offset, len)) => {
                self.remove(offset, len);
                true
            }
            None => false,
        }
    }
}

/// Whether `bytes` are packed entries as [`Store::set`] writes them: each
/// header and string within `bytes`, the last entry ending exactly at the
/// end, every pool known, keys non-empty and within `MAX_KEY`, values
/// within `MAX_VALUE`, both UTF-8, and no key twice in a pool.
pub fn check_entries(bytes: &[u8]) -> Result<(), &'static str> {
    let mut offset = 0;
    while offset < bytes.len() {
        let header = entry_header(bytes, offset).ok_or("entry header beyond the end")?;
        let (pool, key_len) = (header.pool, header.key_len as usize);
        let value_len = header.value_len.get() as usize;
        if pool >= POOLS {
            return Err("unknown pool");
        }
        if key_len == 0 || key_len > MAX_KEY || value_len > MAX_VALUE {
            return Err("key or value size out of bounds");
        }
        let key_start = offset + ENTRY_HEADER;
        let value_start = key_start + key_len;
        let end = value_start + value_len;
        let key = bytes
            .get(key_start..value_start)
            .ok_or("key beyond the end")?;
        let value = bytes.get(value_start..end).ok_or("value beyond the end")?;
        let key = core::str::from_utf8(key).map_err(|_| "key not UTF-8")?;
        core::str::from_utf8(value).map_err(|_| "value not UTF-8")?;
        if key_seen_before(&bytes[..offset], pool, key) {
            return Err("a key twice in a pool");
        }
        offset = end;
    }
    Ok(())
}

/// Whether `earlier` (entries already checked) holds `pool`'s `key`.
fn key_seen_before(earlier: &[u8], pool: u8, key: &str) -> bool {
    let mut offset = 0;
    while let Some(header) = entry_header(earlier, offset) {
        let key_len = header.key_len as usize;
        let value_len = header.value_len.get() as usize;
        let key_start = offset + ENTRY_HEADER;
        if header.pool == pool
            && earlier.get(key_start..key_start + key_len) == Some(key.as_bytes())
        {
            return true;
        }
        offset = key_start + key_len + value_len;
    }
    false
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    #[test]
    fn set_get_replace_delete_enumerate() {
        let mut store = Store::new();
        store.set(0, "a", "1").unwrap();
        store.set(1, "a", "guest").unwrap();
        store.set(0, "b", "2").unwrap();
        assert_eq!(store.get(0, "a"), Some("1"));
        assert_eq!(store.get(1, "a"), Some("guest"));
        assert_eq!(store.get(2, "a"), None);
        store.set(0, "a", "longer value").unwrap();
        assert_eq!(store.nth(0, 0), Some(("b", "2")));
        assert_eq!(store.nth(0, 1), Some(("a", "longer value")));
        assert_eq!(store.nth(0, 2), None);
        assert!(store.delete(0, "b"));
        assert!(!store.delete(0, "b"));
        assert_eq!(store.count(0), 1);
        assert_eq!(store.get(1, "a"), Some("guest"));
        assert_eq!(store.used(), 2 * ENTRY_HEADER + 1 + 12 + 1 + 5);
    }

    #[test]
    fn bounds_are_refused_and_a_full_store_keeps_its_pairs() {
        let mut store = Store::new();
        assert_eq!(store.set(4, "k", "v"), Err(StoreError::UnknownPool));
        assert_eq!(store.set(0, "", "v"), Err(StoreError::BadSize));
        let long_key: String = "k".repeat(MAX_KEY + 1);
        assert_eq!(store.set(0, &long_key, "v"), Err(StoreError::BadSize));
        let value: String = "v".repeat(MAX_VALUE);
        let keys: Vec<String> = (0..20).map(|i| std::format!("key{i}")).collect();
        let mut stored = 0;
        for key in &keys {
            match store.set(1, key, &value) {
                Ok(()) => stored += 1,
                Err(error) => {
                    assert_eq!(error, StoreError::Full);
                    break;
                }
            }
        }
        assert_eq!(stored, STORE_BYTES / (ENTRY_HEADER + 4 + MAX_VALUE));
        assert_eq!(store.count(1), stored);
        // Replacing a pair with one of the same size still fits.
        store.set(1, "key0", &value).unwrap();
        assert_eq!(store.nth(1, stored - 1), Some(("key0", value.as_str())));
    }

    #[test]
    fn restore_takes_a_stores_own_bytes_and_refuses_malformed_ones() {
        let mut store = Store::new();
        store.set(0, "a", "1").unwrap();
        store.set(2, "b", "ü").unwrap();
        let saved: Vec<u8> = store.contents().to_vec();
        let mut restored = Store::new();
        restored
            .restore_with(saved.len(), |bytes| {
                bytes.copy_from_slice(&saved);
                Ok(())
            })
            .unwrap();
        assert_eq!(restored.get(0, "a"), Some("1"));
        assert_eq!(restored.get(2, "b"), Some("ü"));
        assert_eq!(restored.used(), store.used());

        let entry = |pool: u8, key: &[u8], value: &[u8]| -> Vec<u8> {
            let mut bytes = std::vec![pool, key.len() as u8];
            bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(value);
            bytes
        };
        let twice = [entry(1, b"k", b"1"), entry(1, b"k", b"2")].concat();
        let cases: [(&[u8], &str); 8] = [
            (&entry(4, b"k", b"v"), "unknown pool"),
            (&entry(0, b"", b"v"), "key or value size out of bounds"),
            (
                &entry(0, &[b'k'; MAX_KEY + 1], b"v"),
                "key or value size out of bounds",
            ),
            (&entry(0, b"k", &[0xff]), "value not UTF-8"),
            (&entry(0, &[0xc3], b"v"), "key not UTF-8"),
            (&entry(0, b"k", b"v")[..5], "value beyond the end"),
            (&[0, 1], "entry header beyond the end"),
            (&twice, "a key twice in a pool"),
        ];
        for (bytes, why) in cases {
            let mut store = Store::new();
            store.set(0, "old", "pair").unwrap();
            let result = store.restore_with(bytes.len(), |out| {
                out.copy_from_slice(bytes);
                Ok(())
            });
            assert_eq!(result, Err(why));
            assert_eq!(store.used(), 0, "{why}: left empty");
            assert_eq!(store.iter().count(), 0);
        }
        // Another key in another pool is fine; a refusal by `fill` stands.
        let other_pool = [entry(1, b"k", b"1"), entry(0, b"k", b"2")].concat();
        assert_eq!(check_entries(&other_pool), Ok(()));
        let mut store = Store::new();
        assert_eq!(store.restore_with(4, |_| Err("checksum")), Err("checksum"));
        assert_eq!(
            store.restore_with(STORE_BYTES + 1, |_| Ok(())),
            Err("length beyond the store")
        );
    }
}
