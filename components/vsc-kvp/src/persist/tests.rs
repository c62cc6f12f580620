extern crate std;
use super::*;
use component_api::Env;
use env_double::EnvDouble;
use proptest::prelude::*;
use std::vec::Vec;

fn region(env: &mut EnvDouble) -> Region {
    let name = env.add_region(12288, true);
    env.region(name)
}

fn bytes_of(region: Region) -> Vec<u8> {
    let mut bytes = std::vec![0u8; region.len()];
    region.read(0, &mut bytes).unwrap();
    bytes
}

fn load(region: Region) -> (Store, Loaded) {
    let mut store = Store::new();
    let (_, loaded) = Persistence::load(region, &mut store).unwrap();
    (store, loaded)
}

fn pairs(store: &Store) -> Vec<(u8, std::string::String, std::string::String)> {
    store
        .iter()
        .map(|entry| (entry.pool, entry.key.into(), entry.value.into()))
        .collect()
}

#[test]
fn the_header_layout_is_version_1() {
    // Computed independently of this code (Python's zlib.crc32): a store
    // saved by an earlier build must load in this one.
    assert_eq!(
        encode_header(0x0102_0304_0506_0708, b"abc"),
        [
            0x4b, 0x56, 0x50, 0x53, 0x01, 0x00, 0x00, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03,
            0x02, 0x01, 0x03, 0x00, 0x00, 0x00, 0x8b, 0x41, 0x33, 0xd2, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00
        ]
    );
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
}

#[test]
fn a_fresh_region_loads_empty_and_saves_alternate_slots() {
    let mut env = EnvDouble::new();
    let region = region(&mut env);
    let mut store = Store::new();
    let (mut persistence, loaded) = Persistence::load(region, &mut store).unwrap();
    assert_eq!(loaded, Loaded::Fresh);
    store.set(0, "a", "1").unwrap();
    persistence.save(&store).unwrap();
    store.set(1, "b", "2").unwrap();
    persistence.save(&store).unwrap();
    store.set(2, "c", "3").unwrap();
    persistence.save(&store).unwrap();
    assert_eq!(persistence.generation(), 3);
    let bytes = bytes_of(region);
    // Generation 3 went to slot 0 again; slot 1 keeps generation 2.
    assert_eq!(&bytes[8..16], &3u64.to_le_bytes());
    assert_eq!(&bytes[SLOT_BYTES + 8..SLOT_BYTES + 16], &2u64.to_le_bytes());
    let (restored, loaded) = load(region);
    assert_eq!(
        loaded,
        Loaded::Restored {
            generation: 3,
            pairs: 3,
            rejected: None
        }
    );
    assert_eq!(pairs(&restored), pairs(&store));
}

#[test]
fn a_region_too_small_or_read_only_is_refused_without_reading() {
    let mut env = EnvDouble::new();
    let small = env.add_region(4096, true);
    let read_only = env.add_region(12288, false);
    let mut store = Store::new();
    assert_eq!(
        Persistence::load(env.region(small), &mut store).err(),
        Some("region too small")
    );
    assert_eq!(
        Persistence::load(env.region(read_only), &mut store).err(),
        Some("region read-only")
    );
}

/// A save cut short at every point: the load finds the old state, or the
/// new one once every byte the save writes is in place.
#[test]
fn a_torn_save_leaves_the_old_state() {
    let mut env = EnvDouble::new();
    let live = region(&mut env);
    let scratch = region(&mut env);
    let mut store = Store::new();
    let (mut persistence, _) = Persistence::load(live, &mut store).unwrap();
    store.set(0, "first", "1").unwrap();
    persistence.save(&store).unwrap();
    store.set(1, "second", "2").unwrap();
    persistence.save(&store).unwrap();
    let old_pairs = pairs(&store);
    let before = bytes_of(live);

    // The full save of the next state (into slot 0), done on a copy.
    scratch.write(0, &before).unwrap();
    let mut next = Store::new();
    let (mut scratch_persistence, _) = Persistence::load(scratch, &mut next).unwrap();
    next.set(3, "third", "a longer value").unwrap();
    next.delete(0, "first");
    scratch_persistence.save(&next).unwrap();
    let after = bytes_of(scratch);
    let new_pairs = pairs(&next);

    // The order the save writes slot 0's bytes: entries, then header.
    let order: Vec<usize> = (HEADER_BYTES..HEADER_BYTES + next.contents().len())
        .chain(0..HEADER_BYTES)
        .collect();
    let mut saw_old = 0;
    for cut in 0..=order.len() {
        let mut torn = before.clone();
        for &at in &order[..cut] {
            torn[at] = after[at];
        }
        live.write(0, &torn).unwrap();
        let (restored, loaded) = load(live);
        if torn == after {
            assert_eq!(pairs(&restored), new_pairs, "cut {cut}");
        } else {
            assert_eq!(pairs(&restored), old_pairs, "cut {cut}: {loaded:?}");
            assert!(
                matches!(loaded, Loaded::Restored { generation: 2, .. }),
                "cut {cut}: {loaded:?}"
            );
            saw_old += 1;
        }
    }
    // Only the trailing reserved header bytes (zero in both) may be
    // missing from a save that already counts as done.
    assert!(saw_old >= order.len() - 8, "{saw_old}");
}

#[test]
fn a_corrupted_slot_falls_back_and_a_corrupted_store_starts_empty() {
    let mut env = EnvDouble::new();
    let region = region(&mut env);
    let mut store = Store::new();
    let (mut persistence, _) = Persistence::load(region, &mut store).unwrap();
    store.set(0, "kept", "old").unwrap();
    persistence.save(&store).unwrap(); // slot 0, generation 1
    store.set(0, "kept", "new").unwrap();
    persistence.save(&store).unwrap(); // slot 1, generation 2
    let saved = bytes_of(region);

    // One flipped bit in the newest slot's entries: the older slot wins.
    let mut flipped = saved.clone();
    flipped[SLOT_BYTES + HEADER_BYTES + 5] ^= 0x10;
    region.write(0, &flipped).unwrap();
    let (restored, loaded) = load(region);
    assert_eq!(restored.get(0, "kept"), Some("old"));
    assert_eq!(
        loaded,
        Loaded::Restored {
            generation: 1,
            pairs: 1,
            rejected: Some("checksum mismatch")
        }
    );

    // Both slots broken, each in its own way: empty, with the reason.
    let mut broken = saved.clone();
    broken[0] = b'X';
    broken[SLOT_BYTES + 16..SLOT_BYTES + 20]
        .copy_from_slice(&(STORE_BYTES as u32 + 1).to_le_bytes());
    region.write(0, &broken).unwrap();
    let (restored, loaded) = load(region);
    assert_eq!(restored.used(), 0);
    assert_eq!(loaded, Loaded::Rejected { why: "bad magic" });

    // A header with a valid checksum over malformed entries (a bug or a
    // deliberate forgery, not a torn write) is still refused.
    let bad_entries = [9u8, 1, 1, 0, b'k', b'v'];
    let header = encode_header(7, &bad_entries);
    let mut forged = std::vec![0u8; REGION_BYTES];
    forged[..HEADER_BYTES].copy_from_slice(&header);
    forged[HEADER_BYTES..HEADER_BYTES + bad_entries.len()].copy_from_slice(&bad_entries);
    region.write(0, &forged).unwrap();
    let (restored, loaded) = load(region);
    assert_eq!(restored.used(), 0);
    assert_eq!(
        loaded,
        Loaded::Rejected {
            why: "unknown pool"
        }
    );

    // Other versions and non-zero reserved bytes are not this layout.
    for (at, value) in [(4usize, 2u8), (6, 1), (30, 1)] {
        let mut other = saved.clone();
        other[at] = value;
        other[SLOT_BYTES + at] = value;
        region.write(0, &other).unwrap();
        let (restored, loaded) = load(region);
        assert_eq!(restored.used(), 0);
        assert!(matches!(loaded, Loaded::Rejected { .. }), "{loaded:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes in the region (with or without a plausible header)
    /// never panic, and whatever is restored is a well-formed store.
    #[test]
    fn random_regions_are_rejected_or_well_formed(
        noise in proptest::collection::vec(any::<u8>(), REGION_BYTES),
        plausible in any::<bool>(),
        length in 0usize..=STORE_BYTES,
        generation in any::<u64>(),
    ) {
        let mut env = EnvDouble::new();
        let region = region(&mut env);
        let mut bytes = noise;
        if plausible {
            // A correct header over random entries: only the entry check
            // stands between them and the store.
            let header = encode_header(generation, &bytes[HEADER_BYTES..HEADER_BYTES + length]);
            bytes[..HEADER_BYTES].copy_from_slice(&header);
        }
        region.write(0, &bytes).unwrap();
        let mut store = Store::new();
        let (mut persistence, loaded) = Persistence::load(region, &mut store).unwrap();
        match loaded {
            Loaded::Restored { pairs, .. } => {
                prop_assert_eq!(pairs, store.iter().count());
                prop_assert!(crate::store::check_entries(store.contents()).is_ok());
            }
            _ => prop_assert_eq!(store.used(), 0),
        }
        // And the store is usable afterwards: a save and a load round-trip.
        store.set(1, "after", "noise").unwrap_or(());
        persistence.save(&store).unwrap();
        let (reloaded, _) = load(region);
        prop_assert_eq!(pairs(&reloaded), pairs(&store));
    }
}
