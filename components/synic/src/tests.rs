//! synic against a fake hypervisor: the test plays the host by writing the
//! SIMP/SIEFP pages and answering the `hypervisor` calls.
extern crate std;

use super::*;
use env_double::EnvDouble;
use heapless::Vec as HVec;
use spsc_queue::Consumer;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::vec::Vec;

const PAGES_GPA: u64 = 0x10_0000;
const HYPERCALL_GPA: u64 = 0x20_0000;

/// The host's side of the fake: MSRs, hypercalls seen, messages waiting
/// for the slot (delivered on EOM like the TLFS says).
#[derive(Default)]
struct FakeHost {
    msrs: BTreeMap<u32, u64>,
    writes: Vec<(u32, u64)>,
    hypercalls: Vec<(u64, u64)>,
    /// Payloads posted with HvPostMessage, read from the input page.
    posted: Vec<(u32, Vec<u8>)>,
    /// Status returned by the next hypercalls.
    status: u16,
    /// Messages waiting for the slot.
    waiting: VecDeque<Vec<u8>>,
    eoms: usize,
    /// MSRs that raise #GP when written.
    faulting: Vec<u32>,
}

struct Rig {
    env: EnvDouble,
    host: Rc<RefCell<FakeHost>>,
    pages: Region,
    queue: Consumer,
    /// The monitor pages and the interrupt page, as the host sees them.
    monitor: Region,
}

const MONITOR_GPA: u64 = 0x9_0000;
const REFERENCE_TSC_GPA: u64 = 0xA_0000;

fn write_slot(pages: Region, payload: &[u8], message_type: u32, pending: bool) {
    let mut slot = [0u8; 256];
    slot[4] = payload.len() as u8;
    slot[5] = if pending { 1 } else { 0 };
    slot[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
    slot[16..16 + payload.len()].copy_from_slice(payload);
    pages.write(SLOT_OFFSET + 4, &slot[4..]).unwrap();
    pages
        .atomic_u32(SLOT_OFFSET)
        .unwrap()
        .store(message_type, Ordering::Release);
}

impl FakeHost {
    /// Host: queue a message; into the slot if free, else mark it pending.
    fn send(&mut self, pages: Region, payload: &[u8]) {
        self.waiting.push_back(payload.to_vec());
        self.rescan(pages);
    }
    fn rescan(&mut self, pages: Region) {
        if self.waiting.is_empty() {
            return;
        }
        let busy = pages
            .atomic_u32(SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire)
            != 0;
        if busy {
            // The documented rule: set MessagePending, then look again.
            pages
                .atomic_u32(SLOT_OFFSET + 4)
                .unwrap()
                .fetch_or(1 << 8, Ordering::SeqCst);
            let still_busy = pages
                .atomic_u32(SLOT_OFFSET)
                .unwrap()
                .load(Ordering::SeqCst)
                != 0;
            if still_busy {
                return;
            }
        }
        let payload = self.waiting.pop_front().unwrap();
        write_slot(
            pages,
            &payload,
            message_type::VMBUS,
            !self.waiting.is_empty(),
        );
    }
}

fn rig_with(setup: impl FnOnce(&mut FakeHost)) -> (Rig, Synic) {
    let mut env = EnvDouble::new();
    let pages_name = env.add_region_with(8192, true, Some(PAGES_GPA));
    let hypercall_name = env.add_region_with(12288, true, Some(HYPERCALL_GPA));
    let queue_name = env.add_region(8192, true);
    let monitor_name = env.add_region_with(12288, true, Some(MONITOR_GPA));
    let reference_tsc_name = env.add_region_address_only(4096, REFERENCE_TSC_GPA);
    assert_eq!(reference_tsc_name, regions::REFERENCE_TSC);
    assert_eq!(pages_name, regions::SYNIC_PAGES);
    assert_eq!(hypercall_name, regions::HYPERCALL_PAGES);
    assert_eq!(queue_name, regions::SYNIC_MESSAGES);
    assert_eq!(monitor_name, regions::MONITOR_PAGES);
    let monitor = env.test_view(monitor_name);
    let pages = env.test_view(pages_name);
    let hypercall_pages = env.test_view(hypercall_name);
    let host = Rc::new(RefCell::new(FakeHost::default()));
    setup(&mut host.borrow_mut());
    let handler_host = host.clone();
    env.on_typed_call::<hypervisor::Hypervisor>(
        channels::HYPERVISOR,
        move |request: hypervisor::Request| -> hypervisor::Reply {
            let mut host = handler_host.borrow_mut();
            match request {
                hypervisor::Request::MsrRead { msr } => {
                    hypervisor::Reply::Value(host.msrs.get(&msr).copied().unwrap_or(0))
                }
                hypervisor::Request::MsrWrite { msr, value } => {
                    if host.faulting.contains(&msr) {
                        return hypervisor::Reply::GeneralProtection;
                    }
                    host.writes.push((msr, value));
                    if msr == msr::EOM {
                        host.eoms += 1;
                        host.rescan(pages);
                    } else {
                        host.msrs.insert(msr, value);
                    }
                    hypervisor::Reply::Done
                }
                hypervisor::Request::Hypercall { control, input, .. } => {
                    host.hypercalls.push((control, input));
                    if HypercallControl(control).code() == call_code::POST_MESSAGE {
                        assert_eq!(input, HYPERCALL_GPA);
                        let mut bytes = [0u8; 256];
                        hypercall_pages.read(0, &mut bytes).unwrap();
                        let connection = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
                        let size = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
                        host.posted
                            .push((connection, bytes[16..16 + size as usize].to_vec()));
                    }
                    hypervisor::Reply::Value(host.status as u64)
                }
                hypervisor::Request::EndOfInterrupt => hypervisor::Reply::Done,
            }
        },
    );
    let queue = Consumer::new(env.test_view(queue_name), vmbus_ipc::MESSAGE_QUEUE_SLOT).unwrap();
    let synic = Synic::init(&mut env);
    (
        Rig {
            env,
            host,
            pages,
            queue,
            monitor,
        },
        synic,
    )
}

fn rig() -> (Rig, Synic) {
    rig_with(|_| {})
}

fn interrupt(rig: &mut Rig, synic: &mut Synic) {
    let mut set = ChannelSet::EMPTY;
    set.insert(channels::HYPERVISOR_INTERRUPT);
    synic.notified(&mut rig.env, set);
}

fn request(
    rig: &mut Rig,
    synic: &mut Synic,
    channel: Channel,
    request: &Request,
) -> Result<Reply, Refusal> {
    let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(request);
    let mut reply = [0u8; 1024];
    let used = synic.protected(&mut rig.env, channel, &message, &mut reply)?;
    Ok(env_double::decode_reply::<vmbus_ipc::synic::Synic>(
        &reply[..used],
    ))
}

fn pop_all(rig: &mut Rig) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = [0u8; vmbus_ipc::MESSAGE_QUEUE_SLOT];
    while let Some(len) = rig.queue.pop(&mut buffer).unwrap() {
        out.push(buffer[..len].to_vec());
    }
    out
}

fn set_flag(rig: &Rig, relid: u32) {
    rig.pages
        .atomic_u32(FLAGS_OFFSET + (relid as usize / 32) * 4)
        .unwrap()
        .fetch_or(1 << (relid % 32), Ordering::AcqRel);
}

/// The id of the driver called `name` in the generated table; an id past
/// the table for any other name.
fn driver_id(name: &str) -> vmbus_ipc::DriverId {
    drivers::DRIVERS
        .iter()
        .find(|row| row.name == name)
        .map_or(vmbus_ipc::DriverId(u8::MAX), |row| row.id)
}

fn bind(
    rig: &mut Rig,
    synic: &mut Synic,
    relid: u32,
    connection_id: u32,
    driver: &str,
) -> Result<Reply, Refusal> {
    request(
        rig,
        synic,
        channels::VMBUS_CALL,
        &Request::Bind {
            relid,
            connection_id,
            driver: driver_id(driver),
            channel: 0,
            monitor_id: None,
            interrupt_page_bit: false,
        },
    )
}

#[test]
fn a_refused_reference_tsc_page_costs_only_the_page() {
    let (rig, synic) = rig_with(|host| {
        host.faulting.push(msr::REFERENCE_TSC);
    });
    assert!(synic.enabled.is_some(), "{}", rig.env.console);
    assert!(synic.timer_ready);
    assert!(rig
        .env
        .console
        .contains("the hypervisor refused the reference TSC page"));
}

#[test]
fn init_enables_the_synic_in_order_with_our_pages() {
    let (rig, synic) = rig_with(|host| {
        // Reserved bits the TLFS says to preserve.
        host.msrs.insert(msr::SIMP, 0x0F0);
        host.msrs
            .insert(msr::SINT0 + 2, SintMsr::RESET.0 | (1 << 20));
    });
    assert!(synic.enabled.is_some(), "{}", rig.env.console);
    let host = rig.host.borrow();
    let order: Vec<u32> = host.writes.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        order,
        [
            msr::GUEST_OS_ID,
            msr::HYPERCALL,
            msr::SIMP,
            msr::SIEFP,
            msr::SINT0 + 2,
            msr::SCONTROL,
            msr::SINT0 + TIMER_SINT as u32,
            msr::STIMER0_CONFIG,
            msr::REFERENCE_TSC,
        ]
    );
    // The reference TSC page at the region's address.
    assert_eq!(host.msrs[&msr::REFERENCE_TSC], REFERENCE_TSC_GPA | 1);
    assert!(rig.env.console.contains("reference TSC page at 0xa0000"));
    let timer_sint = SintMsr(host.msrs[&(msr::SINT0 + TIMER_SINT as u32)]);
    assert!(!timer_sint.masked() && timer_sint.auto_eoi());
    assert_eq!(timer_sint.vector(), TIMER_VECTOR);
    let config = StimerConfig(host.msrs[&msr::STIMER0_CONFIG]);
    assert!(!config.enabled() && config.auto_enable() && !config.periodic());
    assert_eq!(config.sint(), TIMER_SINT);
    assert!(synic.timer_ready);
    assert_ne!(host.msrs[&msr::GUEST_OS_ID], 0);
    assert_eq!(host.msrs[&msr::HYPERCALL], HYPERCALL_GPA + 8192 + 1);
    assert_eq!(host.msrs[&msr::SIMP], PAGES_GPA | 0x0F0 | 1);
    assert_eq!(host.msrs[&msr::SIEFP], (PAGES_GPA + 4096) | 1);
    let sint = SintMsr(host.msrs[&(msr::SINT0 + 2)]);
    assert!(!sint.masked() && sint.auto_eoi() && !sint.polling());
    assert_eq!(sint.vector(), VMBUS_VECTOR);
    assert_eq!(sint.0 & (1 << 20), 1 << 20, "RsvdP bit preserved");
    assert_eq!(host.msrs[&msr::SCONTROL] & 1, 1);
}

#[test]
fn a_faulting_msr_leaves_synic_disabled_and_refusing() {
    let (mut rig, mut synic) = rig_with(|host| host.faulting.push(msr::SIEFP));
    assert!(synic.enabled.is_none());
    assert!(rig.env.console.contains("SIEFP"), "{}", rig.env.console);
    let reply = request(
        &mut rig,
        &mut synic,
        channels::VMBUS_CALL,
        &Request::PostMessage {
            connection_id: 4,
            payload: HVec::from_slice(&[1, 2]).unwrap(),
        },
    );
    assert_eq!(
        reply,
        Ok(Reply::HypercallFailed {
            status: vmbus_ipc::synic::STATUS_NO_HYPERCALL
        })
    );
    interrupt(&mut rig, &mut synic); // must not touch anything
}

#[test]
fn messages_are_copied_out_whole_and_the_slot_freed_without_eom_when_not_pending() {
    let (mut rig, mut synic) = rig();
    let pages = rig.pages;
    rig.host.borrow_mut().send(pages, &[0xAB; 40]);
    interrupt(&mut rig, &mut synic);
    let messages = pop_all(&mut rig);
    assert_eq!(messages.len(), 1);
    let slot = &messages[0];
    assert_eq!(slot.len(), 256, "the whole slot");
    assert_eq!(u32::from_le_bytes(slot[0..4].try_into().unwrap()), 1);
    assert_eq!(slot[4], 40);
    assert_eq!(&slot[16..56], &[0xAB; 40]);
    assert_eq!(
        pages
            .atomic_u32(SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0,
        "slot freed"
    );
    assert_eq!(rig.host.borrow().eoms, 0, "no EOM when nothing is pending");
    assert_eq!(synic.status().messages_received, 1);
}

#[test]
fn eom_only_when_pending_delivers_the_queued_messages_in_order() {
    let (mut rig, mut synic) = rig();
    let pages = rig.pages;
    for i in 0..5u8 {
        rig.host.borrow_mut().send(pages, &[i; 8]);
    }
    interrupt(&mut rig, &mut synic);
    let messages = pop_all(&mut rig);
    assert_eq!(
        messages.iter().map(|m| m[16]).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // Four messages had another behind them; the last did not.
    assert_eq!(rig.host.borrow().eoms, 4);
    assert_eq!(synic.status().eoms, 4);
}

#[test]
fn pending_set_after_the_copy_is_still_seen() {
    // The host marks "pending" while the slot is busy; synic reads the flag
    // after clearing the type, so even a flag set after the copy counts.
    let (mut rig, mut synic) = rig();
    let pages = rig.pages;
    write_slot(pages, &[7; 8], message_type::VMBUS, false);
    rig.host.borrow_mut().waiting.push_back(std::vec![8; 8]);
    pages
        .atomic_u32(SLOT_OFFSET + 4)
        .unwrap()
        .fetch_or(1 << 8, Ordering::AcqRel);
    interrupt(&mut rig, &mut synic);
    assert_eq!(pop_all(&mut rig).len(), 2);
}

#[test]
fn non_vmbus_messages_are_dropped_and_counted() {
    let (mut rig, mut synic) = rig();
    write_slot(rig.pages, &[1; 8], message_type::TIMER_EXPIRED, false);
    interrupt(&mut rig, &mut synic);
    assert!(pop_all(&mut rig).is_empty());
    assert_eq!(synic.status().messages_dropped, 1);
    assert_eq!(
        rig.pages
            .atomic_u32(SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0
    );
}

#[test]
fn a_full_queue_leaves_the_message_in_its_slot_until_vmbus_drains() {
    let (mut rig, mut synic) = rig();
    let pages = rig.pages;
    let capacity = (8192 - 256) / vmbus_ipc::MESSAGE_QUEUE_SLOT.next_multiple_of(8);
    let total = capacity + 3;
    for i in 0..total {
        rig.host.borrow_mut().send(pages, &(i as u32).to_le_bytes());
    }
    interrupt(&mut rig, &mut synic);
    assert_eq!(synic.status().messages_received as usize, capacity);
    assert_ne!(
        pages
            .atomic_u32(SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0,
        "the next message waits in the slot"
    );
    // vmbus drains and, seeing synic waiting, notifies it.
    let first = pop_all(&mut rig);
    assert!(rig.queue.producer_needs_signal());
    let mut set = ChannelSet::EMPTY;
    set.insert(channels::VMBUS);
    synic.notified(&mut rig.env, set);
    let second = pop_all(&mut rig);
    let all: Vec<u32> = first
        .iter()
        .chain(second.iter())
        .map(|m| u32::from_le_bytes(m[16..20].try_into().unwrap()))
        .collect();
    assert_eq!(
        all,
        (0..total as u32).collect::<Vec<_>>(),
        "none lost, in order"
    );
    assert_eq!(synic.status().queue_full_waits, 1);
}

#[test]
fn vmbus_is_notified_only_when_it_asked() {
    let (mut rig, mut synic) = rig();
    let pages = rig.pages;
    rig.host.borrow_mut().send(pages, &[1; 8]);
    interrupt(&mut rig, &mut synic);
    assert_eq!(rig.env.notifications_on(channels::VMBUS), 0);
    pop_all(&mut rig);
    assert!(rig.queue.prepare_to_sleep().unwrap());
    rig.host.borrow_mut().send(pages, &[2; 8]);
    interrupt(&mut rig, &mut synic);
    assert_eq!(rig.env.notifications_on(channels::VMBUS), 1);
}

#[test]
fn events_go_to_the_bound_vsc_before_messages_are_queued() {
    let (mut rig, mut synic) = rig();
    assert_eq!(
        bind(&mut rig, &mut synic, 5, 0x2005, "kvp"),
        Ok(Reply::Done)
    );
    assert_eq!(
        bind(&mut rig, &mut synic, 40, 0x2028, "heartbeat"),
        Ok(Reply::Done)
    );
    let pages = rig.pages;
    set_flag(&rig, 5);
    set_flag(&rig, 40);
    set_flag(&rig, 77); // nobody's
    rig.host.borrow_mut().send(pages, &[9; 8]);
    assert!(rig.queue.prepare_to_sleep().unwrap());
    rig.env.notified.clear();
    interrupt(&mut rig, &mut synic);
    let kvp = rig
        .env
        .notified
        .iter()
        .position(|c| *c == channels::KVP)
        .unwrap();
    let heartbeat = rig
        .env
        .notified
        .iter()
        .position(|c| *c == channels::HEARTBEAT)
        .unwrap();
    let vmbus = rig
        .env
        .notified
        .iter()
        .position(|c| *c == channels::VMBUS)
        .unwrap();
    assert!(kvp < vmbus && heartbeat < vmbus, "{:?}", rig.env.notified);
    let status = synic.status();
    assert_eq!(status.events_delivered, 2);
    assert_eq!(status.stray_events, 1);
    // All bits were consumed.
    for word in 0..EVENT_WORDS {
        assert_eq!(
            pages
                .atomic_u32(FLAGS_OFFSET + word * 4)
                .unwrap()
                .load(Ordering::Acquire),
            0
        );
    }
    // After unbinding, the relid's events are strays.
    assert_eq!(
        request(
            &mut rig,
            &mut synic,
            channels::VMBUS_CALL,
            &Request::Unbind { relid: 5 }
        ),
        Ok(Reply::Done)
    );
    rig.env.notified.clear();
    set_flag(&rig, 5);
    interrupt(&mut rig, &mut synic);
    assert_eq!(rig.env.notifications_on(channels::KVP), 0);
    assert_eq!(synic.status().stray_events, 2);
}

#[test]
fn binding_clears_a_stale_flag_and_lets_the_vsc_look() {
    let (mut rig, mut synic) = rig();
    set_flag(&rig, 9);
    bind(&mut rig, &mut synic, 9, 0x2009, "timesync").unwrap();
    assert_eq!(rig.env.notifications_on(channels::TIMESYNC), 1);
    assert_eq!(
        rig.pages
            .atomic_u32(FLAGS_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0
    );
}

#[test]
fn bind_refuses_what_is_not_a_vsc_and_bad_relids() {
    let (mut rig, mut synic) = rig();
    // The four ICs, storage, network and video (system.toml).
    assert_eq!(drivers::DRIVERS.len(), 7);
    for name in ["vmbus", "hypervisor", "console", "nobody", ""] {
        assert_eq!(
            bind(&mut rig, &mut synic, 3, 1, name),
            Err(Refusal::DENIED),
            "{name}"
        );
    }
    assert_eq!(
        bind(&mut rig, &mut synic, 0, 1, "kvp"),
        Err(Refusal::MALFORMED)
    );
    assert_eq!(
        bind(&mut rig, &mut synic, 2048, 1, "kvp"),
        Err(Refusal::MALFORMED)
    );
    assert_eq!(bind(&mut rig, &mut synic, 2047, 1, "kvp"), Ok(Reply::Done));
    // Only vmbus may bind.
    let from_kvp = request(
        &mut rig,
        &mut synic,
        channels::KVP_CALL,
        &Request::Bind {
            relid: 4,
            connection_id: 4,
            driver: driver_id("kvp"),
            channel: 0,
            monitor_id: None,
            interrupt_page_bit: false,
        },
    );
    assert_eq!(from_kvp, Err(Refusal::DENIED));
    let post_from_kvp = request(
        &mut rig,
        &mut synic,
        channels::KVP_CALL,
        &Request::PostMessage {
            connection_id: 4,
            payload: HVec::new(),
        },
    );
    assert_eq!(post_from_kvp, Err(Refusal::DENIED));
}

#[test]
fn signal_host_only_for_the_callers_own_connection() {
    let (mut rig, mut synic) = rig();
    bind(&mut rig, &mut synic, 5, 0x2005, "kvp").unwrap();
    bind(&mut rig, &mut synic, 6, 0x2006, "heartbeat").unwrap();
    let signal = |connection_id| Request::SignalHost { connection_id };
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal(0x2005)),
        Ok(Reply::Done)
    );
    let (control, input) = rig.host.borrow().hypercalls[0];
    assert_eq!(HypercallControl(control).code(), call_code::SIGNAL_EVENT);
    assert!(HypercallControl(control).fast());
    assert_eq!(SignalEventInput::from_fast(input).connection_id, 0x2005);
    // kvp may not signal heartbeat's connection, nor an unbound one.
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal(0x2006)),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal(0x9999)),
        Err(Refusal::DENIED)
    );
    // vmbus is no VSC: the contract (`allow.signal_host`) refuses it
    // before synic looks, so it is not counted as a refused signal.
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &signal(0x2005)),
        Err(Refusal::DENIED)
    );
    // After unbind (a rescind, a close) kvp may no longer signal: it is
    // told quietly that the channel is closed (it has not heard yet); that
    // is no refusal. Another VSC naming that connection is still refused.
    request(
        &mut rig,
        &mut synic,
        channels::VMBUS_CALL,
        &Request::Unbind { relid: 5 },
    )
    .unwrap();
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal(0x2005)),
        Ok(Reply::ChannelClosed)
    );
    assert_eq!(
        request(
            &mut rig,
            &mut synic,
            channels::HEARTBEAT_CALL,
            &signal(0x2005)
        ),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        rig.host.borrow().hypercalls.len(),
        1,
        "refusals never reach the hypervisor"
    );
    let status = synic.status();
    assert_eq!((status.signals_sent, status.signals_refused), (1, 3));
    assert_eq!(status.signals_after_unbind, 1);
    // Bound again (a reopen): signals go through again.
    bind(&mut rig, &mut synic, 5, 0x2005, "kvp").unwrap();
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal(0x2005)),
        Ok(Reply::Done)
    );
}

#[test]
fn events_before_open_result_are_early_not_stray_and_reach_the_vsc_at_bind() {
    let (mut rig, mut synic) = rig();
    let opening = Request::Opening { relid: 7 };
    // Only vmbus says what is opening.
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &opening),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        request(
            &mut rig,
            &mut synic,
            channels::VMBUS_CALL,
            &Request::Opening { relid: 0 }
        ),
        Err(Refusal::MALFORMED)
    );
    request(&mut rig, &mut synic, channels::VMBUS_CALL, &opening).unwrap();
    // The host signals relid 7 before OpenResult, and relid 9 (nobody's).
    set_flag(&rig, 7);
    set_flag(&rig, 9);
    rig.env.notified.clear();
    interrupt(&mut rig, &mut synic);
    let status = synic.status();
    assert_eq!((status.early_events, status.stray_events), (1, 1));
    assert!(rig.env.notified.is_empty(), "nobody to tell yet");
    // OpenResult came: vmbus binds, and the VSC is told to look.
    bind(&mut rig, &mut synic, 7, 0x2007, "kvp").unwrap();
    assert_eq!(rig.env.notified, [channels::KVP]);
    // Later events are delivered; nothing more is early.
    set_flag(&rig, 7);
    interrupt(&mut rig, &mut synic);
    let status = synic.status();
    assert_eq!(
        (
            status.early_events,
            status.stray_events,
            status.events_delivered
        ),
        (1, 1, 1)
    );
    // After Unbind the relid's events are strays again (no longer opening).
    request(
        &mut rig,
        &mut synic,
        channels::VMBUS_CALL,
        &Request::Unbind { relid: 7 },
    )
    .unwrap();
    set_flag(&rig, 7);
    interrupt(&mut rig, &mut synic);
    assert_eq!(synic.status().stray_events, 2);
}

#[test]
fn post_message_writes_the_input_page_and_reports_the_status() {
    let (mut rig, mut synic) = rig();
    let post = Request::PostMessage {
        connection_id: 4,
        payload: HVec::from_slice(&[14, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &post),
        Ok(Reply::Done)
    );
    {
        let host = rig.host.borrow();
        assert_eq!(host.posted, [(4, std::vec![14, 0, 0, 0, 0, 0, 0, 0])]);
        let (control, _) = host.hypercalls[0];
        assert_eq!(HypercallControl(control).code(), call_code::POST_MESSAGE);
        assert!(!HypercallControl(control).fast());
    }
    rig.host.borrow_mut().status = HvStatus::INVALID_CONNECTION_ID.0;
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &post),
        Ok(Reply::HypercallFailed { status: 0x12 })
    );
    let status = synic.status();
    assert_eq!((status.messages_posted, status.hypercall_failures), (1, 1));
}

#[test]
fn malformed_requests_and_other_protocols_are_refused() {
    let (mut rig, mut synic) = rig();
    let mut reply = [0u8; 64];
    assert_eq!(
        synic.protected(
            &mut rig.env,
            channels::VMBUS_CALL,
            &[0xFF, 0xFF, 0xFF],
            &mut reply
        ),
        Err(Refusal::WRONG_PROTOCOL)
    );
    let mut garbage = env_double::encode_request::<vmbus_ipc::synic::Synic>(&Request::Status);
    garbage.extend_from_slice(&[0xFF]);
    assert_eq!(
        synic.protected(&mut rig.env, channels::VMBUS_CALL, &garbage, &mut reply),
        Err(Refusal::MALFORMED)
    );
    // The bus's `Device { index: 3 }` would read as `Status` untagged.
    let bus_request =
        env_double::encode_request::<vmbus_ipc::bus::Bus>(&vmbus_ipc::bus::Request::Device {
            index: 3,
        });
    assert_eq!(
        synic.protected(&mut rig.env, channels::VMBUS_CALL, &bus_request, &mut reply),
        Err(Refusal::WRONG_PROTOCOL)
    );
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &Request::Status),
        Ok(Reply::Status(synic.status()))
    );
}

#[test]
fn hostile_slot_contents_never_panic() {
    let (mut rig, mut synic) = rig();
    // Oversized payload_size, odd flags, unknown types: copied or dropped.
    let mut seed = 0x1234_5678u32;
    for _ in 0..200 {
        let mut slot = [0u8; 256];
        for byte in slot.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *byte = seed as u8;
        }
        slot[0..4].copy_from_slice(&(seed % 3).to_le_bytes());
        rig.pages.write(SLOT_OFFSET, &slot).unwrap();
        let words = rig.pages.atomic_u32(FLAGS_OFFSET).unwrap();
        words.store(seed, Ordering::Release);
        interrupt(&mut rig, &mut synic);
        pop_all(&mut rig);
    }
}

#[test]
fn the_description_says_who_may_use_each_operation() {
    let (mut rig, mut synic) = rig();
    // system.toml: `allow.bind`, `allow.status` name only vmbus.
    let bind = Request::Bind {
        relid: 5,
        connection_id: 0x2005,
        driver: driver_id("kvp"),
        channel: 0,
        monitor_id: None,
        interrupt_page_bit: false,
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &bind),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        request(
            &mut rig,
            &mut synic,
            channels::HEARTBEAT_CALL,
            &Request::Status
        ),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &bind),
        Ok(Reply::Done)
    );
    // `allow.set_timeout` names the drivers only.
    let timeout = Request::SetTimeout { deadline_ns: 5 };
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &timeout),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &timeout),
        Ok(Reply::Done)
    );
    // Only a channel some component calls us on is served.
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP, &Request::Status),
        Err(Refusal::NOT_SERVED)
    );
    assert_eq!(Caller::on(channels::KVP_CALL), Some(Caller::Kvp));
    assert_eq!(Caller::Kvp.name(), "kvp");
}

/// Guest memory for hvsim's synic: GPAs of the `synic_pages` region map to
/// the region; the rest of the address space exists but is never touched
/// here. Just before hvsim sets MessagePending on SINT2's slot (armed
/// once), the guest component takes its synic interrupt: the worst moment
/// of the race `docs/hypervisor-transport.md` 5.2 closes.
struct RaceMemory {
    pages: Region,
    size: u64,
    guest: RefCell<Option<SharedGuest>>,
    armed: std::cell::Cell<bool>,
}

type OutOfRange = hv_interface::OutOfRange;
/// The guest component and its environment, shared with the memory hook.
type SharedGuest = Rc<RefCell<(EnvDouble, Synic)>>;

impl RaceMemory {
    fn offset(&self, gpa: u64, len: u64) -> Result<usize, OutOfRange> {
        let out = OutOfRange { gpa, len };
        let offset = gpa.checked_sub(PAGES_GPA).ok_or(out)?;
        if offset + len > self.pages.len() as u64 {
            return Err(out);
        }
        Ok(offset as usize)
    }
    fn atomic(&self, gpa: u64) -> Result<&core::sync::atomic::AtomicU32, OutOfRange> {
        let offset = self.offset(gpa, 4)?;
        self.pages
            .atomic_u32(offset)
            .map_err(|_| OutOfRange { gpa, len: 4 })
    }
}

impl hv_interface::GuestMemory for RaceMemory {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let offset = self.offset(gpa, buf.len() as u64)?;
        self.pages
            .read(offset, buf)
            .map_err(|_| OutOfRange { gpa, len: 0 })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let offset = self.offset(gpa, data.len() as u64)?;
        self.pages
            .write(offset, data)
            .map_err(|_| OutOfRange { gpa, len: 0 })
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.load(Ordering::SeqCst))
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        self.atomic(gpa)?.store(value, Ordering::SeqCst);
        Ok(())
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        let slot = PAGES_GPA + SLOT_OFFSET as u64;
        if gpa == slot + 4 && bits & (1 << 8) != 0 && self.armed.replace(false) {
            let guest = self.guest.borrow().clone().expect("the guest is running");
            let mut guest = guest.borrow_mut();
            let (env, synic) = &mut *guest;
            let mut set = ChannelSet::EMPTY;
            set.insert(channels::HYPERVISOR_INTERRUPT);
            synic.notified(env, set);
        }
        Ok(self.atomic(gpa)?.fetch_or(bits, Ordering::SeqCst))
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.fetch_and(bits, Ordering::SeqCst))
    }
}

#[test]
fn against_hvsims_synic_a_slot_drained_in_the_pending_gap_strands_nothing() {
    use hvsim::synic::{QueuedMessage, Synic as HostSynic};
    let mut env = EnvDouble::new();
    let pages_name = env.add_region_with(8192, true, Some(PAGES_GPA));
    env.add_region_with(12288, true, Some(HYPERCALL_GPA));
    let queue_name = env.add_region(8192, true);
    env.add_region_with(12288, true, Some(MONITOR_GPA));
    env.add_region_address_only(4096, REFERENCE_TSC_GPA);
    let mut queue =
        Consumer::new(env.test_view(queue_name), vmbus_ipc::MESSAGE_QUEUE_SLOT).unwrap();
    let memory = Rc::new(RaceMemory {
        pages: env.test_view(pages_name),
        size: HYPERCALL_GPA + 12288,
        guest: RefCell::new(None),
        armed: std::cell::Cell::new(false),
    });
    let host = Rc::new(RefCell::new(HostSynic::new()));
    // The guest's MSR accesses reach hvsim's synic. One made while hvsim
    // is in the middle of a delivery (the vCPU ran in the gap) is applied
    // right after it, as the instruction would be.
    let deferred: Rc<RefCell<Vec<(u32, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let (host, deferred, memory) = (host.clone(), deferred.clone(), memory.clone());
        env.on_typed_call::<vmbus_ipc::hypervisor::Hypervisor>(
            channels::HYPERVISOR,
            move |request: hypervisor::Request| -> hypervisor::Reply {
                let Ok(mut host) = host.try_borrow_mut() else {
                    if let hypervisor::Request::MsrWrite { msr, value } = request {
                        deferred.borrow_mut().push((msr, value));
                    }
                    return hypervisor::Reply::Done;
                };
                match request {
                    hypervisor::Request::MsrRead { msr } => match host.msr_read(msr) {
                        Ok(value) => hypervisor::Reply::Value(value),
                        Err(_) => hypervisor::Reply::GeneralProtection,
                    },
                    hypervisor::Request::MsrWrite { msr, value } => {
                        match host.msr_write(&*memory, msr, value) {
                            Ok(()) => hypervisor::Reply::Done,
                            Err(_) => hypervisor::Reply::GeneralProtection,
                        }
                    }
                    _ => hypervisor::Reply::InvalidOpcode,
                }
            },
        );
    }
    let synic = Synic::init(&mut env);
    assert!(synic.enabled.is_some(), "hvsim's synic accepted the enable");
    let guest = Rc::new(RefCell::new((env, synic)));
    *memory.guest.borrow_mut() = Some(guest.clone());
    let message = |byte: u8| QueuedMessage {
        message_type: message_type::VMBUS,
        origin: 0,
        payload: std::vec![byte; 8],
    };

    host.borrow_mut().post(&*memory, VMBUS_SINT, message(0xA));
    assert_eq!(host.borrow_mut().take_interrupt(), Some(VMBUS_VECTOR));
    // B finds A in the slot; the guest takes A between hvsim's look and its
    // MessagePending write, so it sees no flag and writes no EOM.
    memory.armed.set(true);
    host.borrow_mut().post(&*memory, VMBUS_SINT, message(0xB));
    assert!(!memory.armed.get(), "the guest ran in the gap");
    assert!(deferred.borrow().is_empty(), "no EOM: the flag came later");
    // hvsim looked again after setting the flag and delivered B at once.
    assert_eq!(host.borrow().queued(VMBUS_SINT), 0, "B was stranded");
    assert_eq!(host.borrow().stats.freed_while_marking, 1);
    assert_eq!(host.borrow_mut().take_interrupt(), Some(VMBUS_VECTOR));
    {
        let mut guest = guest.borrow_mut();
        let (env, synic) = &mut *guest;
        let mut set = ChannelSet::EMPTY;
        set.insert(channels::HYPERVISOR_INTERRUPT);
        synic.notified(env, set);
        assert_eq!(synic.status().messages_received, 2);
        assert_eq!(synic.status().eoms, 0);
    }
    let mut buffer = [0u8; vmbus_ipc::MESSAGE_QUEUE_SLOT];
    let mut firsts = Vec::new();
    while let Some(len) = queue.pop(&mut buffer).unwrap() {
        assert_eq!(len, 256);
        firsts.push(buffer[16]);
    }
    assert_eq!(firsts, [0xA, 0xB]);
}

#[test]
fn a_restarted_synic_keeps_the_hosts_message_and_events_and_vmbus_restores_the_table() {
    let (mut rig, mut synic) = rig();
    bind(&mut rig, &mut synic, 5, 0x2005, "kvp").unwrap();
    bind(&mut rig, &mut synic, 6, 0x2006, "heartbeat").unwrap();
    let pages = rig.pages;
    // While synic is down the host posts a message and signals relids 5
    // (bound), 9 (opening when synic stopped) and 77 (nobody's).
    drop(synic);
    rig.host.borrow_mut().send(pages, &[7; 8]);
    set_flag(&rig, 5);
    set_flag(&rig, 9);
    set_flag(&rig, 77);
    let hypercalls_before = rig.host.borrow().hypercalls.len();
    rig.env.notified.clear();
    let mut synic = Synic::init(&mut rig.env);
    assert!(synic.status().restarted);
    // Nothing was zeroed: the news comes first, then the host's message.
    let queued = pop_all(&mut rig);
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!(
        u32::from_le_bytes(queued[0][..4].try_into().unwrap()),
        vmbus_ipc::SYNIC_RESTARTED_MESSAGE_TYPE
    );
    assert_eq!(&queued[1][16..24], &[7; 8]);
    assert!(rig.env.notified.contains(&channels::VMBUS));
    // An interrupt before the restore leaves every flag for the restore.
    interrupt(&mut rig, &mut synic);
    for relid in [5, 9, 77] {
        let word = pages
            .atomic_u32(FLAGS_OFFSET + (relid as usize / 32) * 4)
            .unwrap()
            .load(Ordering::Acquire);
        assert_ne!(word & (1 << (relid % 32)), 0, "relid {relid} lost");
    }
    // A VSC's signal before the restore is deferred to it, not refused.
    let signal = Request::SignalHost {
        connection_id: 0x2005,
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal),
        Ok(Reply::ChannelClosed)
    );
    rig.env.notified.clear();
    let restore = Request::Restore {
        bindings: HVec::from_slice(&[vmbus_ipc::synic::RestoredBinding {
            relid: 5,
            connection_id: 0x2005,
            driver: driver_id("kvp"),
            channel: 0,
            monitor_id: None,
            interrupt_page_bit: false,
        }])
        .unwrap(),
        opening: HVec::from_slice(&[9]).unwrap(),
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &restore),
        Ok(Reply::Done)
    );
    // kvp hears of its event; 9's is early (delivered at its Bind); 77 is
    // a stray; heartbeat (not restored) is gone.
    assert_eq!(rig.env.notifications_on(channels::KVP), 1);
    assert_eq!(rig.env.notifications_on(channels::HEARTBEAT), 0);
    let status = synic.status();
    assert_eq!(
        (status.early_events, status.stray_events, status.restores),
        (1, 1, 1)
    );
    for word in 0..EVENT_WORDS {
        let bits = pages
            .atomic_u32(FLAGS_OFFSET + word * 4)
            .unwrap()
            .load(Ordering::Acquire);
        assert_eq!(bits, 0);
    }
    // The bound connection was signalled once for signals lost meanwhile.
    let signals: Vec<u32> = rig.host.borrow().hypercalls[hypercalls_before..]
        .iter()
        .filter(|(control, _)| HypercallControl(*control).code() == call_code::SIGNAL_EVENT)
        .map(|(_, input)| SignalEventInput::from_fast(*input).connection_id)
        .collect();
    assert_eq!(signals, [0x2005]);
    // From now on kvp signals as before; heartbeat is refused.
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal),
        Ok(Reply::Done)
    );
    let heartbeat_signal = Request::SignalHost {
        connection_id: 0x2006,
    };
    assert_eq!(
        request(
            &mut rig,
            &mut synic,
            channels::HEARTBEAT_CALL,
            &heartbeat_signal
        ),
        Err(Refusal::DENIED)
    );
}

#[test]
fn a_first_start_zeroes_the_pages() {
    // A fresh hypervisor: SIMP/SIEFP not armed; anything in the pages is
    // not the host's and is cleared.
    let (mut rig, synic) = rig_with(|_| {});
    assert!(!synic.status().restarted);
    set_flag(&rig, 5);
    drop(synic);
    // Disarm SIMP as a reset would: the next start is a first start.
    rig.host.borrow_mut().msrs.insert(msr::SIMP, 0);
    let synic = Synic::init(&mut rig.env);
    assert!(!synic.status().restarted);
    let word = rig
        .pages
        .atomic_u32(FLAGS_OFFSET)
        .unwrap()
        .load(Ordering::Acquire);
    assert_eq!(word, 0);
    assert!(pop_all(&mut rig).is_empty());
}

fn bind_with(
    rig: &mut Rig,
    synic: &mut Synic,
    relid: u32,
    connection_id: u32,
    monitor_id: Option<u8>,
    interrupt_page_bit: bool,
) -> Result<Reply, Refusal> {
    request(
        rig,
        synic,
        channels::VMBUS_CALL,
        &Request::Bind {
            relid,
            connection_id,
            driver: driver_id("kvp"),
            channel: 0,
            monitor_id,
            interrupt_page_bit,
        },
    )
}

fn word(region: &Region, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    region.read(offset, &mut bytes).unwrap();
    u32::from_le_bytes(bytes)
}

#[test]
fn a_monitored_channel_is_signalled_through_the_monitor_page_not_a_hypercall() {
    let (mut rig, mut synic) = rig();
    // Monitor id 37: group 1, bit 5.
    bind_with(&mut rig, &mut synic, 5, 0x2005, Some(37), false).unwrap();
    let signal = Request::SignalHost {
        connection_id: 0x2005,
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal),
        Ok(Reply::Done)
    );
    assert!(rig.host.borrow().hypercalls.is_empty(), "no HvSignalEvent");
    let pending_group_1 = MONITOR_PAGE2_OFFSET + hyperv_defs::MonitorPage::pending_offset(1);
    assert_eq!(word(&rig.monitor, pending_group_1), 1 << 5);
    assert_eq!(
        word(&rig.monitor, hyperv_defs::MonitorPage::pending_offset(1)),
        0,
        "the first monitor page is the host's"
    );
    assert_eq!(synic.status().monitor_signals, 1);
    assert_eq!(synic.status().signals_sent, 1);
    // The host took the bit; the next signal sets it again.
    rig.monitor.write(pending_group_1, &[0; 4]).unwrap();
    request(&mut rig, &mut synic, channels::KVP_CALL, &signal).unwrap();
    assert_eq!(word(&rig.monitor, pending_group_1), 1 << 5);
    assert!(rig.host.borrow().hypercalls.is_empty());
    // A monitor id beyond the page's 128 is malformed.
    assert_eq!(
        bind_with(&mut rig, &mut synic, 6, 0x2006, Some(128), false),
        Err(Refusal::MALFORMED)
    );
}

#[test]
fn without_a_dedicated_interrupt_the_relid_is_marked_in_the_interrupt_pages_send_half() {
    let (mut rig, mut synic) = rig();
    bind_with(&mut rig, &mut synic, 40, 0x2028, None, true).unwrap();
    let signal = Request::SignalHost {
        connection_id: 0x2028,
    };
    request(&mut rig, &mut synic, channels::KVP_CALL, &signal).unwrap();
    // Relid 40: word 1, bit 8 of the send half; the receive half untouched.
    assert_eq!(word(&rig.monitor, INTERRUPT_PAGE_SEND_OFFSET + 4), 1 << 8);
    assert_eq!(word(&rig.monitor, 2 * 4096 + 4), 0);
    let (control, input) = rig.host.borrow().hypercalls[0];
    assert_eq!(HypercallControl(control).code(), call_code::SIGNAL_EVENT);
    assert_eq!(SignalEventInput::from_fast(input).connection_id, 0x2028);
    assert_eq!(synic.status().monitor_signals, 0);
}

#[test]
fn a_restored_monitored_channel_is_still_signalled_through_the_monitor_page() {
    let (mut rig, mut synic) = rig();
    bind_with(&mut rig, &mut synic, 5, 0x2005, Some(37), false).unwrap();
    drop(synic);
    let mut synic = Synic::init(&mut rig.env);
    assert!(synic.status().restarted);
    let restore = Request::Restore {
        bindings: HVec::from_slice(&[vmbus_ipc::synic::RestoredBinding {
            relid: 5,
            connection_id: 0x2005,
            driver: driver_id("kvp"),
            channel: 0,
            monitor_id: Some(37),
            interrupt_page_bit: false,
        }])
        .unwrap(),
        opening: HVec::new(),
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::VMBUS_CALL, &restore),
        Ok(Reply::Done)
    );
    let pending_group_1 = MONITOR_PAGE2_OFFSET + hyperv_defs::MonitorPage::pending_offset(1);
    // The restore's own signal, and then the VSC's: both through the
    // monitor page, never a hypercall (Hyper-V counts on the bit).
    rig.monitor.write(pending_group_1, &[0; 4]).unwrap();
    let signal = Request::SignalHost {
        connection_id: 0x2005,
    };
    assert_eq!(
        request(&mut rig, &mut synic, channels::KVP_CALL, &signal),
        Ok(Reply::Done)
    );
    assert_eq!(word(&rig.monitor, pending_group_1), 1 << 5);
    let hypercall_signals = rig
        .host
        .borrow()
        .hypercalls
        .iter()
        .filter(|(control, _)| HypercallControl(*control).code() == call_code::SIGNAL_EVENT)
        .count();
    assert_eq!(
        hypercall_signals, 0,
        "a monitored channel got HvSignalEvent"
    );
}

fn bind_channel(
    rig: &mut Rig,
    synic: &mut Synic,
    relid: u32,
    driver: &str,
    channel: u8,
) -> Result<Reply, Refusal> {
    request(
        rig,
        synic,
        channels::VMBUS_CALL,
        &Request::Bind {
            relid,
            connection_id: 0x2000 + relid,
            driver: driver_id(driver),
            channel,
            monitor_id: None,
            interrupt_page_bit: false,
        },
    )
}

#[test]
fn a_vsc_with_sub_channels_reads_which_of_its_channels_fired() {
    let (mut rig, mut synic) = rig();
    // KVP's primary (relid 5) and sub-channels 1 and 2 (relids 40, 41),
    // heartbeat's primary (relid 6).
    for (relid, driver, channel) in [
        (5, "kvp", 0),
        (40, "kvp", 1),
        (41, "kvp", 2),
        (6, "heartbeat", 0),
    ] {
        assert_eq!(
            bind_channel(&mut rig, &mut synic, relid, driver, channel),
            Ok(Reply::Done)
        );
    }
    let pending = |rig: &mut Rig, synic: &mut Synic, call: Channel| {
        request(rig, synic, call, &Request::Pending)
    };
    assert_eq!(
        pending(&mut rig, &mut synic, channels::KVP_CALL),
        Ok(Reply::Pending(0))
    );
    set_flag(&rig, 41);
    set_flag(&rig, 5);
    set_flag(&rig, 6);
    rig.env.notified.clear();
    interrupt(&mut rig, &mut synic);
    assert_eq!(
        rig.env.notifications_on(channels::KVP),
        1,
        "one notification"
    );
    assert_eq!(
        pending(&mut rig, &mut synic, channels::KVP_CALL),
        Ok(Reply::Pending(0b101)),
        "the primary and sub-channel 2"
    );
    // Read and cleared: each VSC sees only its own channels.
    assert_eq!(
        pending(&mut rig, &mut synic, channels::KVP_CALL),
        Ok(Reply::Pending(0))
    );
    assert_eq!(
        pending(&mut rig, &mut synic, channels::HEARTBEAT_CALL),
        Ok(Reply::Pending(0b1))
    );
    set_flag(&rig, 40);
    interrupt(&mut rig, &mut synic);
    assert_eq!(
        pending(&mut rig, &mut synic, channels::KVP_CALL),
        Ok(Reply::Pending(0b10))
    );
    // Only VSCs ask (the description's `allow.pending`); a channel index
    // beyond the pending word is refused.
    assert_eq!(
        pending(&mut rig, &mut synic, channels::VMBUS_CALL),
        Err(Refusal::DENIED)
    );
    assert_eq!(
        bind_channel(&mut rig, &mut synic, 42, "kvp", MAX_CHANNELS_PER_DRIVER),
        Err(Refusal::MALFORMED)
    );
}

/// The host puts a timer-expired message into the timer SINT's slot.
fn expire_timer(rig: &Rig, pending: bool) {
    let mut slot = [0u8; 256];
    slot[4] = 24;
    slot[5] = u8::from(pending);
    rig.pages.write(TIMER_SLOT_OFFSET + 4, &slot[4..]).unwrap();
    rig.pages
        .atomic_u32(TIMER_SLOT_OFFSET)
        .unwrap()
        .store(message_type::TIMER_EXPIRED, Ordering::Release);
}

fn timer_counts(rig: &Rig) -> Vec<u64> {
    rig.host
        .borrow()
        .writes
        .iter()
        .filter(|(number, _)| *number == msr::STIMER0_COUNT)
        .map(|(_, value)| *value)
        .collect()
}

fn set_timeout(rig: &mut Rig, synic: &mut Synic, call: Channel, deadline_ns: u64) -> Reply {
    request(rig, synic, call, &Request::SetTimeout { deadline_ns }).unwrap()
}

#[test]
fn the_timer_runs_for_the_earliest_deadline_and_wakes_only_the_vscs_due() {
    let (mut rig, mut synic) = rig();
    rig.env.now_ns = 1_000_000;
    rig.host
        .borrow_mut()
        .msrs
        .insert(msr::TIME_REF_COUNT, 5_000);
    // kvp in 2 ms: the count is the host's reference time plus 20_000
    // units of 100 ns.
    assert_eq!(
        set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 3_000_000),
        Reply::Done
    );
    assert_eq!(timer_counts(&rig), [25_000]);
    // heartbeat in 1 ms (rounded up to whole units): earlier, re-programmed.
    set_timeout(&mut rig, &mut synic, channels::HEARTBEAT_CALL, 2_000_050);
    assert_eq!(timer_counts(&rig), [25_000, 15_001]);
    // kvp replaces its deadline by a later one: the earliest is unchanged,
    // so the timer is left alone.
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 4_000_000);
    assert_eq!(timer_counts(&rig).len(), 2);
    // The timer fires; by our clock only heartbeat is due.
    rig.env.now_ns = 2_100_000;
    rig.host
        .borrow_mut()
        .msrs
        .insert(msr::TIME_REF_COUNT, 16_000);
    rig.env.notified.clear();
    expire_timer(&rig, false);
    interrupt(&mut rig, &mut synic);
    assert_eq!(rig.env.notifications_on(channels::HEARTBEAT), 1);
    assert_eq!(rig.env.notifications_on(channels::KVP), 0);
    assert_eq!(
        rig.pages
            .atomic_u32(TIMER_SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0,
        "the slot was freed"
    );
    // Re-programmed for kvp: 16_000 + (4_000_000 - 2_100_000) / 100.
    assert_eq!(timer_counts(&rig).last(), Some(&35_000));
    // kvp cancels: the timer is stopped (count 0).
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 0);
    assert_eq!(timer_counts(&rig).last(), Some(&0));
    // A deadline already passed wakes the VSC at once, without the timer.
    rig.env.notified.clear();
    let programmed = timer_counts(&rig).len();
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 2_000_000);
    assert_eq!(rig.env.notifications_on(channels::KVP), 1);
    assert_eq!(timer_counts(&rig).len(), programmed);
    let status = synic.status();
    assert_eq!((status.timer_messages, status.timeouts_delivered), (1, 2));
    // A timer message while no deadline is due wakes nobody, and the
    // deadline that was cancelled does not come back.
    rig.env.notified.clear();
    expire_timer(&rig, true);
    let eoms = rig.host.borrow().eoms;
    interrupt(&mut rig, &mut synic);
    assert!(rig.env.notified.is_empty(), "{:?}", rig.env.notified);
    assert_eq!(rig.host.borrow().eoms, eoms + 1, "pending: EOM written");
}

#[test]
fn other_messages_in_the_timer_slot_are_dropped_and_never_wake_anyone() {
    let (mut rig, mut synic) = rig();
    rig.env.now_ns = 1_000;
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 10_000);
    rig.env.now_ns = 20_000;
    rig.env.notified.clear();
    // A hostile host: a VMBus-typed message and garbage in the timer slot.
    for kind in [message_type::VMBUS, 0xDEAD_BEEF] {
        rig.pages
            .atomic_u32(TIMER_SLOT_OFFSET)
            .unwrap()
            .store(kind, Ordering::Release);
        interrupt(&mut rig, &mut synic);
    }
    assert_eq!(rig.env.notifications_on(channels::KVP), 0);
    assert_eq!(synic.status().messages_dropped, 2);
    assert_eq!(synic.status().timer_messages, 0);
    assert!(pop_all(&mut rig).is_empty(), "nothing reaches vmbus");
}

#[test]
fn without_a_synthetic_timer_set_timeout_says_so() {
    let (mut rig, mut synic) = rig_with(|host| host.faulting.push(msr::STIMER0_CONFIG));
    assert!(synic.enabled.is_some(), "VMBus works without the timer");
    assert!(!synic.timer_ready);
    assert_eq!(
        set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 10),
        Reply::NoTimer
    );
}

#[test]
fn a_restarted_synic_stops_the_old_timer_and_wakes_every_vsc_to_ask_again() {
    let (mut rig, mut synic) = rig();
    rig.env.now_ns = 1_000;
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 1_000_000);
    drop(synic);
    // The old synic's timer fired while it was down.
    expire_timer(&rig, false);
    rig.env.notified.clear();
    rig.host.borrow_mut().writes.clear();
    let mut synic = Synic::init(&mut rig.env);
    assert!(synic.status().restarted);
    let config = rig
        .host
        .borrow()
        .writes
        .iter()
        .find(|(number, _)| *number == msr::STIMER0_CONFIG)
        .map(|(_, value)| StimerConfig(*value));
    assert!(config.is_some_and(|c| !c.enabled()), "{config:?}");
    assert_eq!(
        rig.pages
            .atomic_u32(TIMER_SLOT_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        0,
        "the stale timer message was taken"
    );
    for row in drivers::DRIVERS {
        assert_eq!(rig.env.notifications_on(row.notify), 1, "{}", row.name);
    }
    // kvp asks again and is programmed again.
    set_timeout(&mut rig, &mut synic, channels::KVP_CALL, 1_000_000);
    assert_eq!(timer_counts(&rig).len(), 1);
}

#[test]
fn against_hvsims_timer_a_vsc_is_woken_at_its_deadline() {
    use hv_interface::GuestMemory;
    use hvsim::memory::VecMemory;
    use hvsim::synic::Synic as HostSynic;
    // Guest memory: the synic pages at PAGES_GPA are the region's bytes.
    let mut env = EnvDouble::new();
    let memory = Rc::new(VecMemory::new(HYPERCALL_GPA as usize + 12288));
    let pages_name = env.add_region_with(8192, true, Some(PAGES_GPA));
    let pages = env.test_view(pages_name);
    assert_eq!(pages_name, regions::SYNIC_PAGES);
    env.add_region_with(12288, true, Some(HYPERCALL_GPA));
    env.add_region(8192, true);
    env.add_region_with(12288, true, Some(MONITOR_GPA));
    env.add_region_address_only(4096, REFERENCE_TSC_GPA);
    let host = Rc::new(RefCell::new(HostSynic::new()));
    // hvsim's synic writes its own memory; the test copies the SIM page
    // between it and the region around each step (one vCPU: no overlap).
    let sync_to_guest = |memory: &VecMemory, pages: &Region| {
        let mut page = [0u8; 4096];
        memory.read(PAGES_GPA, &mut page).unwrap();
        pages.write(0, &page).unwrap();
    };
    let sync_to_host = |memory: &VecMemory, pages: &Region| {
        let mut page = [0u8; 4096];
        pages.read(0, &mut page).unwrap();
        memory.write(PAGES_GPA, &page).unwrap();
    };
    {
        let (host, memory) = (host.clone(), memory.clone());
        env.on_typed_call::<vmbus_ipc::hypervisor::Hypervisor>(
            channels::HYPERVISOR,
            move |request: hypervisor::Request| -> hypervisor::Reply {
                let mut host = host.borrow_mut();
                sync_to_host(&memory, &pages);
                let reply = match request {
                    hypervisor::Request::MsrRead { msr } => match host.msr_read(msr) {
                        Ok(value) => hypervisor::Reply::Value(value),
                        Err(_) => hypervisor::Reply::GeneralProtection,
                    },
                    hypervisor::Request::MsrWrite { msr, value } => {
                        match host.msr_write(&*memory, msr, value) {
                            Ok(()) => hypervisor::Reply::Done,
                            Err(_) => hypervisor::Reply::GeneralProtection,
                        }
                    }
                    _ => hypervisor::Reply::InvalidOpcode,
                };
                sync_to_guest(&memory, &pages);
                reply
            },
        );
    }
    // Both clocks start at 0 and move together (ns).
    let mut synic = Synic::init(&mut env);
    assert!(synic.timer_ready, "{}", env.console);
    let advance = |env: &mut EnvDouble, now: u64| {
        env.now_ns = now;
        sync_to_host(&memory, &pages);
        host.borrow_mut().advance(&*memory, now);
        sync_to_guest(&memory, &pages);
    };
    advance(&mut env, 7_000_000);
    let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(&Request::SetTimeout {
        deadline_ns: 10_000_000,
    });
    let mut reply = [0u8; 64];
    synic
        .protected(&mut env, channels::KVP_CALL, &message, &mut reply)
        .unwrap();
    assert_eq!(host.borrow().next_timer_ns(), Some(10_000_000));
    advance(&mut env, 9_999_900);
    assert_eq!(host.borrow_mut().take_interrupt(), None, "not before");
    advance(&mut env, 10_000_000);
    assert_eq!(host.borrow_mut().take_interrupt(), Some(TIMER_VECTOR));
    env.notified.clear();
    let mut set = ChannelSet::EMPTY;
    set.insert(channels::HYPERVISOR_INTERRUPT);
    synic.notified(&mut env, set);
    assert_eq!(env.notifications_on(channels::KVP), 1);
    assert_eq!(synic.status().timer_messages, 1);
    assert_eq!(
        host.borrow().next_timer_ns(),
        None,
        "one-shot, nothing left"
    );
}
