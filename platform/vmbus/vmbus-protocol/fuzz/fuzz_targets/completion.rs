//! Completions: a hostile host answers requests with any transaction id,
//! in any order, repeated. The table must match each issued request at most
//! once, refuse every other id, and never reuse an id; completion packets
//! parse with the transaction id of their descriptor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use vmbus_protocol::packet::{descriptor_for, parse_packet, PacketKind, PacketType};
use vmbus_ring::{TransactionError, TransactionTable};
use zerocopy::IntoBytes;

fuzz_target!(|data: &[u8]| {
    let mut table: TransactionTable<u32, 8> = TransactionTable::new();
    let mut outstanding: BTreeMap<u64, u32> = BTreeMap::new();
    let mut issued: BTreeSet<u64> = BTreeSet::new();
    let mut context = 0u32;
    let mut ops = data.chunks_exact(9);
    for op in &mut ops {
        let id = u64::from_le_bytes(op[1..9].try_into().unwrap());
        match op[0] % 4 {
            0 => {
                context += 1;
                match table.begin(context) {
                    Ok(new) => {
                        assert_ne!(new, 0);
                        assert!(issued.insert(new), "id {new} reused");
                        outstanding.insert(new, context);
                    }
                    Err(TransactionError::Full) => assert_eq!(outstanding.len(), 8),
                    Err(error) => panic!("{error:?}"),
                }
            }
            // A completion for an id the input names (mostly unknown).
            1 => assert_eq!(
                table.complete(id).ok(),
                outstanding.remove(&id),
                "completion {id}"
            ),
            // A completion for an issued id (outstanding, or a repeat).
            2 => {
                if let Some(&known) = issued.iter().nth(id as usize % issued.len().max(1)) {
                    assert_eq!(table.complete(known).ok(), outstanding.remove(&known));
                }
            }
            _ => {
                if op[1] == 0 {
                    let drained: BTreeMap<u64, u32> = table.drain().collect();
                    assert_eq!(drained, outstanding);
                    outstanding.clear();
                }
            }
        }
        assert_eq!(table.len(), outstanding.len());
    }
    // The completion packet itself.
    let rest = ops.remainder();
    let id = u64::from_le_bytes({
        let mut word = [0u8; 8];
        word[..rest.len().min(8)].copy_from_slice(&rest[..rest.len().min(8)]);
        word
    });
    let payload = &data[..data.len().min(200)];
    let descriptor = descriptor_for(PacketType::Completion, 0, payload.len(), id, false).unwrap();
    let mut packet = descriptor.as_bytes().to_vec();
    packet.extend_from_slice(payload);
    packet.resize(descriptor.len8.get() as usize * 8, 0);
    let parsed = parse_packet(&packet).unwrap();
    assert_eq!(parsed.kind, PacketKind::Completion);
    assert_eq!(parsed.transaction_id, id);
    assert_eq!(&parsed.payload[..payload.len()], payload);
});
