//! A hostile guest, in-process: random hypercalls, random and mutated
//! control messages, and random ring contents and indices. The host must
//! answer with errors and counters, never panic, and keep working.
#![forbid(unsafe_code)]

use hv_interface::GuestMemory;
use hvsim::memory::VecMemory;
use hvsim::sim::Simulator;
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use hyperv_defs::{call_code, msr, HypercallControl, SintMsr};
use vmbus_protocol::gpadl::GpadlMessages;
use vmbus_protocol::messages::*;
use vmbus_protocol::{ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

const SIZE: usize = 1 << 20;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn booted() -> Simulator<VecMemory> {
    let config = ServerConfig {
        devices: vec![
            DeviceConfig::ic(DeviceKind::Kvp, uuid::Uuid::from_u128(1)),
            DeviceConfig {
                class: vmbus_protocol::guid::class::SCSI,
                instance: uuid::Uuid::from_u128(2),
                kind: DeviceKind::Generic,
                monitored: true,
                message_pipe: false,
            },
        ],
        ..ServerConfig::default()
    };
    let mut sim = Simulator::new(VecMemory::new(SIZE), config);
    sim.msr_write(msr::GUEST_OS_ID, 1).unwrap();
    sim.msr_write(msr::HYPERCALL, 0x3000 | 1).unwrap();
    sim.msr_write(msr::SIMP, 0x1000 | 1).unwrap();
    sim.msr_write(msr::SIEFP, 0x2000 | 1).unwrap();
    sim.msr_write(msr::SINT0 + 2, SintMsr::new(0x30, false, true).0)
        .unwrap();
    sim.msr_write(msr::SCONTROL, 1).unwrap();
    sim
}

fn post(sim: &mut Simulator<VecMemory>, connection: u32, payload: &[u8]) -> u64 {
    let mut input = [0u8; 256];
    input[0..4].copy_from_slice(&connection.to_le_bytes());
    input[8..12].copy_from_slice(&1u32.to_le_bytes());
    input[12..16].copy_from_slice(&(payload.len().min(240) as u32).to_le_bytes());
    input[16..16 + payload.len().min(240)].copy_from_slice(&payload[..payload.len().min(240)]);
    sim.host.memory.write(0x4000, &input).unwrap();
    let control = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    let result = sim.hypercall(control, 0x4000, 0).unwrap();
    sim.step(0);
    // Keep the slot free so the host keeps delivering.
    sim.host.memory.store_u32(0x1000 + 2 * 256, 0).unwrap();
    sim.msr_write(msr::EOM, 0).unwrap();
    result
}

#[test]
fn random_hypercalls_and_msrs() {
    let mut sim = booted();
    let mut rng = Rng(0x1234_5678);
    for _ in 0..20_000 {
        let control = match rng.below(4) {
            0 => rng.next(),
            1 => call_code::POST_MESSAGE as u64 | (rng.next() & 0xFFFF_0000),
            2 => call_code::SIGNAL_EVENT as u64 | (rng.below(2) << 16),
            _ => call_code::SIGNAL_EVENT as u64 | 1 << 16,
        };
        let input = if rng.below(2) == 0 {
            rng.next()
        } else {
            rng.below(SIZE as u64)
        };
        let mut bytes = [0u8; 16];
        bytes.iter_mut().for_each(|b| *b = rng.next() as u8);
        let _ = sim.host.memory.write(input & !7, &bytes);
        let _ = sim.hypercall(control, input, rng.next());
        let _ = sim.msr_read(0x4000_0000 + rng.below(0x100) as u32);
        sim.step(rng.next());
    }
    // Still a working host.
    assert_eq!(sim.msr_read(msr::SVERSION), Ok(1));
}

#[test]
fn random_and_mutated_control_messages() {
    let mut sim = booted();
    let mut contact = InitiateContact::empty();
    contact.version_requested = ProtocolVersion::V5_3.0.into();
    contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0).into();
    contact.monitor_page1 = 0x5000u64.into();
    contact.monitor_page2 = 0x6000u64.into();
    post(&mut sim, 4, contact.as_bytes());
    assert_eq!(sim.vmbus.version(), Some(ProtocolVersion::V5_3));
    post(&mut sim, 1, RequestOffers::empty().as_bytes());
    let mut templates: Vec<Vec<u8>> = vec![
        OpenChannel::empty().as_bytes().to_vec(),
        CloseChannel::empty().as_bytes().to_vec(),
        GpadlTeardown::empty().as_bytes().to_vec(),
        RelIdReleased::empty().as_bytes().to_vec(),
        Unload::empty().as_bytes().to_vec(),
        contact.as_bytes().to_vec(),
    ];
    let pfns: Vec<u64> = (0x20..0x50).collect();
    for message in GpadlMessages::for_pages(1, 9, &pfns).unwrap() {
        templates.push(message.as_bytes().to_vec());
    }
    let mut rng = Rng(0xDEAD_BEEF);
    for _ in 0..20_000 {
        let mut bytes = templates[rng.below(templates.len() as u64) as usize].clone();
        for _ in 0..rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next() as u8;
        }
        if rng.below(8) == 0 {
            bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
        }
        let connection = [1, 4, rng.next() as u32][rng.below(3) as usize];
        post(&mut sim, connection, &bytes);
    }
    assert!(sim.vmbus.stats.messages_rejected > 0);
    assert!(sim.vmbus.gpadl_bytes() <= sim.vmbus.config.gpadl_memory_limit);
}

#[test]
fn random_ring_contents_and_indices() {
    let mut sim = booted();
    let mut contact = InitiateContact::empty();
    contact.version_requested = ProtocolVersion::V5_3.0.into();
    contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0).into();
    contact.monitor_page1 = 0x5000u64.into();
    contact.monitor_page2 = 0x6000u64.into();
    post(&mut sim, 4, contact.as_bytes());
    post(&mut sim, 1, RequestOffers::empty().as_bytes());
    let mut rng = Rng(42);
    for relid in [1u32, 2] {
        let first = 0x40 + relid as u64 * 8;
        let pfns: Vec<u64> = (first..first + 8).collect();
        for message in GpadlMessages::for_pages(relid, 0x100 + relid, &pfns).unwrap() {
            post(&mut sim, 1, message.as_bytes());
        }
        let mut open = OpenChannel::empty();
        open.child_relid = relid.into();
        open.ring_gpadl_id = (0x100 + relid).into();
        open.downstream_ring_page_offset = 4.into();
        post(&mut sim, 1, open.as_bytes());
        assert!(sim.vmbus.endpoint(relid).is_some(), "relid {relid} open");
    }
    for round in 0..5_000 {
        let relid = 1 + rng.below(2) as u32;
        let base = (0x40 + relid as u64 * 8) * 4096;
        // Scribble on a random ring byte or index, then signal.
        let target = base + rng.below(8 * 4096);
        let _ = sim.host.memory.write(target, &[rng.next() as u8]);
        if rng.below(4) == 0 {
            let control_page = base + [0u64, 4 * 4096][rng.below(2) as usize];
            let _ = sim
                .host
                .memory
                .store_u32(control_page + rng.below(4) * 4, rng.next() as u32);
        }
        let signal = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
        let _ = sim.hypercall(signal, 0x1_0000 + relid as u64, 0);
        if round % 7 == 0 {
            let _ = sim.kvp_set(0, "key", "value");
        }
        sim.step(round);
    }
    // Whatever the guest did, the host is still answering.
    assert_eq!(sim.msr_read(msr::SVERSION), Ok(1));
}
