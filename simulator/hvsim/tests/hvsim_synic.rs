//! The synic and the hypercalls, driven through the hosted transport by a
//! scripted guest: MSR rules, every hypercall status code, message slots
//! with the pending flag and EOM, event flags, interrupt masking and EOI.
#![forbid(unsafe_code)]

mod common;

use common::*;
use hv_interface::hosted::MappedGuestMemory;
use hv_interface::{GuestMemory, HvError, Hypervisor};
use hvsim::host::{Host, PortKind};
use hyperv_defs::{call_code, msr, HvStatus, HypercallControl, HypercallResult, SintMsr};
use std::time::Duration;

type SimHost = Host<MappedGuestMemory>;

const MESSAGE_PORT: u32 = 0x10;
const EVENT_PORT: u32 = 0x20;

fn host_with_ports(name: &str, capacity: usize) -> Harness<SimHost> {
    start(name, move |memory| {
        let mut host = Host::new(memory);
        host.open_port(MESSAGE_PORT, PortKind::Message { capacity });
        host.open_port(EVENT_PORT, PortKind::Event { flag_count: 1 });
        host
    })
}

#[test]
fn msr_rules_over_the_transport() {
    let mut h = host_with_ports("msr", 4);
    assert_eq!(h.guest.msr_read(msr::SVERSION), Ok(1));
    assert_eq!(h.guest.msr_read(msr::SINT0 + 2), Ok(SintMsr::RESET.0));
    assert_eq!(
        h.guest.msr_read(0x4000_00FF),
        Err(HvError::GeneralProtection)
    );
    assert_eq!(
        h.guest.msr_write(msr::SVERSION, 2),
        Err(HvError::GeneralProtection)
    );
    // Vector below 16 with the SINT unmasked is refused.
    assert_eq!(
        h.guest
            .msr_write(msr::SINT0, SintMsr::new(5, false, false).0),
        Err(HvError::GeneralProtection)
    );
    // A SIMP beyond guest memory is refused.
    assert_eq!(
        h.guest.msr_write(msr::SIMP, MEMORY_SIZE | 1),
        Err(HvError::GeneralProtection)
    );
    // No hypercall page without a guest OS ID; hypercalls then fault (#UD).
    h.guest
        .msr_write(msr::HYPERCALL, HYPERCALL_PAGE_GPA | 1)
        .unwrap();
    assert_eq!(h.guest.msr_read(msr::HYPERCALL), Ok(HYPERCALL_PAGE_GPA));
    let control = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
    assert_eq!(
        h.guest.hypercall(control, EVENT_PORT as u64, 0),
        Err(HvError::InvalidOpcode)
    );
    h.enable_synic(true);
    assert_eq!(h.guest.msr_read(msr::HYPERCALL), Ok(HYPERCALL_PAGE_GPA | 1));
    assert_eq!(h.signal(EVENT_PORT, 0), HvStatus::SUCCESS);
    h.finish();
}

#[test]
fn every_hypercall_status_code() {
    let mut h = host_with_ports("status", 2);
    h.enable_synic(true);
    let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    let status = |h: &mut Harness<SimHost>, control: u64, input: u64| {
        HypercallResult(h.guest.hypercall(control, input, 0).unwrap()).status()
    };

    // 0x0002 InvalidHypercallCode.
    assert_eq!(status(&mut h, 0x0099, 0), HvStatus::INVALID_HYPERCALL_CODE);
    // 0x0003 InvalidHypercallInput: rep count on a simple call, reserved
    // control bits, a fast HvPostMessage, reserved bits in a signal input.
    assert_eq!(
        status(&mut h, post | 1 << 32, INPUT_GPA),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        status(&mut h, post | 1 << 30, INPUT_GPA),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        status(&mut h, post | HypercallControl::FAST, INPUT_GPA),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    let fast_signal = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
    assert_eq!(
        status(&mut h, fast_signal, EVENT_PORT as u64 | 1 << 50),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // 0x0004 InvalidAlignment: misaligned, crossing a page, outside memory.
    assert_eq!(
        status(&mut h, post, INPUT_GPA + 4),
        HvStatus::INVALID_ALIGNMENT
    );
    assert_eq!(
        status(&mut h, post, INPUT_GPA + 0xF08),
        HvStatus::INVALID_ALIGNMENT
    );
    assert_eq!(
        status(&mut h, post, MEMORY_SIZE),
        HvStatus::INVALID_ALIGNMENT
    );
    let slow_signal = HypercallControl::simple(call_code::SIGNAL_EVENT, false).0;
    assert_eq!(
        status(&mut h, slow_signal, INPUT_GPA + 2),
        HvStatus::INVALID_ALIGNMENT
    );
    // 0x0005 InvalidParameter: type 0, hypervisor type, payload > 240,
    // flag number beyond the port's flag count.
    assert_eq!(
        h.post_raw(MESSAGE_PORT, 0, 8, &[0; 8]),
        HvStatus::INVALID_PARAMETER
    );
    assert_eq!(
        h.post_raw(MESSAGE_PORT, 0x8000_0001, 8, &[0; 8]),
        HvStatus::INVALID_PARAMETER
    );
    assert_eq!(
        h.post_raw(MESSAGE_PORT, 1, 241, &[0; 8]),
        HvStatus::INVALID_PARAMETER
    );
    assert_eq!(h.signal(EVENT_PORT, 1), HvStatus::INVALID_PARAMETER);
    // 0x0011 InvalidPortId: posting to an event port.
    assert_eq!(h.post(EVENT_PORT, &[1]), HvStatus::INVALID_PORT_ID);
    assert_eq!(h.signal(MESSAGE_PORT, 0), HvStatus::INVALID_PORT_ID);
    // 0x0012 InvalidConnectionId.
    assert_eq!(h.post(0x777, &[1]), HvStatus::INVALID_CONNECTION_ID);
    assert_eq!(h.signal(0x778, 0), HvStatus::INVALID_CONNECTION_ID);
    // 0x0013 InsufficientBuffers: the port holds two undrained messages.
    assert_eq!(h.post(MESSAGE_PORT, &[1]), HvStatus::SUCCESS);
    assert_eq!(h.post(MESSAGE_PORT, &[2; 240]), HvStatus::SUCCESS);
    assert_eq!(h.post(MESSAGE_PORT, &[3]), HvStatus::INSUFFICIENT_BUFFERS);
    assert_eq!(h.with(|host| host.take_posted(MESSAGE_PORT)), Some(vec![1]));
    assert_eq!(h.post(MESSAGE_PORT, &[3]), HvStatus::SUCCESS);
    // 0x0006 AccessDenied: the partition lacks the privilege.
    h.with(|host| {
        host.may_post_messages = false;
        host.may_signal_events = false;
    });
    assert_eq!(h.post(MESSAGE_PORT, &[4]), HvStatus::ACCESS_DENIED);
    assert_eq!(h.signal(EVENT_PORT, 0), HvStatus::ACCESS_DENIED);
    // The privilege is checked before the input is looked at, after the
    // control word.
    assert_eq!(
        h.post_raw(MESSAGE_PORT, 0, 8, &[0; 8]),
        HvStatus::ACCESS_DENIED
    );
    assert_eq!(h.signal(0x778, 5), HvStatus::ACCESS_DENIED);
    let fast_post = HypercallControl::simple(call_code::POST_MESSAGE, true).0;
    assert_eq!(
        HypercallResult(h.guest.hypercall(fast_post, 0, 0).unwrap()).status(),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    let stats = h.with(|host| host.stats);
    assert_eq!(stats.insufficient_buffers, 1);
    assert_eq!(stats.invalid_connection, 2);
    h.finish();
}

#[test]
fn message_slots_pending_flag_and_eom() {
    let mut h = host_with_ports("slots", 4);
    h.enable_synic(true);
    h.with(|host| {
        host.send_message(VMBUS_SINT, &[1; 24]);
        host.send_message(VMBUS_SINT, &[2; 12]);
        host.send_message(VMBUS_SINT, &[3; 4]);
    });
    let interrupt = h.guest.wait_interrupt(Some(2_000_000_000)).unwrap();
    assert_eq!(interrupt.map(|i| i.vector), Some(VECTOR));
    // The first message is in the slot with the pending flag set.
    let slot = SIMP_GPA + VMBUS_SINT as u64 * 256;
    let mut header = [0u8; 16];
    h.memory.read(slot, &mut header).unwrap();
    assert_eq!(u32::from_le_bytes(header[0..4].try_into().unwrap()), 1);
    assert_eq!(header[4], 24);
    assert_eq!(header[5] & 1, 1);
    // Freeing the slot without EOM: the host does not deliver the next one.
    h.memory.store_u32(slot, 0).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.memory.load_u32(slot).unwrap(), 0);
    h.guest.msr_write(msr::EOM, 0).unwrap();
    assert_eq!(h.receive_message(Duration::from_secs(2)), Some(vec![2; 12]));
    assert_eq!(h.receive_message(Duration::from_secs(2)), Some(vec![3; 4]));
    assert_eq!(h.receive_message(Duration::from_millis(30)), None);
    assert_eq!(h.with(|host| host.synic.stats.messages_delivered), 3);
    h.finish();
}

#[test]
fn masked_sint_gets_no_interrupt_and_eoi_gates_the_vector() {
    let mut h = host_with_ports("mask", 4);
    h.enable_synic(false);
    // Masked: the message lands in the slot but no interrupt is raised.
    h.guest
        .msr_write(msr::SINT0 + 2, SintMsr::new(VECTOR, true, false).0)
        .unwrap();
    h.with(|host| host.send_message(VMBUS_SINT, &[9]));
    assert_eq!(h.guest.wait_interrupt(Some(30_000_000)).unwrap(), None);
    assert_eq!(h.with(|host| host.synic.stats.interrupts_lost), 1);
    assert_eq!(h.receive_message(Duration::from_millis(100)), Some(vec![9]));
    // Unmasked without auto-EOI: one interrupt until the guest writes EOI.
    h.guest
        .msr_write(msr::SINT0 + 2, SintMsr::new(VECTOR, false, false).0)
        .unwrap();
    h.with(|host| {
        assert!(host.signal_guest(VMBUS_SINT, 5));
        assert!(host.signal_guest(VMBUS_SINT, 6));
    });
    assert!(h
        .guest
        .wait_interrupt(Some(2_000_000_000))
        .unwrap()
        .is_some());
    assert_eq!(h.guest.wait_interrupt(Some(30_000_000)).unwrap(), None);
    assert!(h.take_event_flag(5));
    assert!(h.take_event_flag(6));
    h.guest.end_of_interrupt().unwrap();
    // The second assertion was held in the IRR and comes now.
    assert!(h
        .guest
        .wait_interrupt(Some(2_000_000_000))
        .unwrap()
        .is_some());
    h.guest.end_of_interrupt().unwrap();
    // An already-set flag raises nothing.
    h.with(|host| {
        host.signal_guest(VMBUS_SINT, 7);
        host.signal_guest(VMBUS_SINT, 7);
    });
    assert!(h
        .guest
        .wait_interrupt(Some(2_000_000_000))
        .unwrap()
        .is_some());
    h.guest.end_of_interrupt().unwrap();
    assert_eq!(h.guest.wait_interrupt(Some(30_000_000)).unwrap(), None);
    assert_eq!(h.with(|host| host.synic.stats.event_flags_already_set), 1);
    h.finish();
}

#[test]
fn guest_signals_reach_the_event_port() {
    let mut h = host_with_ports("signal", 4);
    h.enable_synic(true);
    for _ in 0..3 {
        assert_eq!(h.signal(EVENT_PORT, 0), HvStatus::SUCCESS);
    }
    // Memory-based form.
    h.memory
        .write(INPUT_GPA, &(EVENT_PORT as u64).to_le_bytes())
        .unwrap();
    let control = HypercallControl::simple(call_code::SIGNAL_EVENT, false).0;
    let result = HypercallResult(h.guest.hypercall(control, INPUT_GPA, 0).unwrap());
    assert_eq!(result.status(), HvStatus::SUCCESS);
    assert_eq!(h.with(|host| host.take_signals(EVENT_PORT)), 4);
    // A closed port is an invalid connection.
    h.with(|host| host.close_port(EVENT_PORT));
    assert_eq!(h.signal(EVENT_PORT, 0), HvStatus::INVALID_CONNECTION_ID);
    h.finish();
}
