//! The key-value pools: one fixed arena of [`STORE_BYTES`] bytes for all
//! pools, entries packed one after another in the order they were last
//! written: `[pool u8][key length u8][value length u16 LE][key][value]`.
//! Keys and values are UTF-8 already bounded by the IPC limits
//! (`vmbus_ipc::kvp::MAX_KEY`, `MAX_VALUE`); a store that would overflow
//! refuses the write and keeps what it had.

use vmbus_ipc::kvp::{MAX_KEY, MAX_VALUE};

/// The arena for every pool together. Small pairs (the usual case) take a
/// few dozen bytes each; at worst six pairs of the largest size fit.
pub const STORE_BYTES: usize = 4096;
/// The pools this store keeps: external, guest, auto, auto-external.
pub const POOLS: u8 = 4;

const ENTRY_HEADER: usize = 4;

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

    fn entry_at(&self, offset: usize) -> Option<Entry<'_>> {
        let header = self.bytes.get(offset..offset + ENTRY_HEADER)?;
        let key_len = header[1] as usize;
        let value_len = u16::from_le_bytes([header[2], header[3]]) as usize;
        let key_start = offset + ENTRY_HEADER;
        let value_start = key_start + key_len;
        let end = value_start + value_len;
        if end > self.used {
            return None;
        }
        // Only whole `&str`s are ever stored, so these never fail; an
        // empty string is the harmless answer if they did.
        Some(Entry {
            pool: header[0],
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
        self.bytes[start] = pool;
        // Bounded above: MAX_KEY < 256, MAX_VALUE < 65536.
        self.bytes[start + 1] = key.len() as u8;
        self.bytes[start + 2..start + 4].copy_from_slice(&(value.len() as u16).to_le_bytes());
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
}
