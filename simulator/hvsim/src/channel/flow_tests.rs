//! The host end's side of the ring protocol, checked against a guest that
//! acts at every point of a host write.

use super::*;
use crate::memory::VecMemory;
use core::cell::{Cell, RefCell};
use hv_interface::OutOfRange;

const PAGE: u64 = PAGE_SIZE;
/// Out ring: pages 0-1, in ring: pages 2-3 (control page + one data page).
const OUT_PAGES: [u64; 2] = [0, 1];
const IN_PAGES: [u64; 2] = [2, 3];
const IN_CONTROL: u64 = 2 * PAGE;
const OUT_CONTROL: u64 = 0;

/// What the guest does at its chosen point.
type GuestAction = alloc::boxed::Box<dyn FnOnce(&VecMemory)>;

/// Guest memory that runs the guest's action once, just before the host's
/// `at`-th load or store of a word in the watched control page.
struct Interleaved {
    inner: VecMemory,
    watched: u64,
    accesses: Cell<u32>,
    at: u32,
    guest: RefCell<Option<GuestAction>>,
}

impl Interleaved {
    fn control_access(&self, gpa: u64) {
        if !(self.watched..self.watched + PAGE).contains(&gpa) {
            return;
        }
        self.accesses.set(self.accesses.get() + 1);
        if self.accesses.get() == self.at {
            if let Some(guest) = self.guest.borrow_mut().take() {
                guest(&self.inner);
            }
        }
    }
}

impl GuestMemory for Interleaved {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.inner.read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.inner.write(gpa, data)
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        self.control_access(gpa);
        self.inner.load_u32(gpa)
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        self.control_access(gpa);
        self.inner.store_u32(gpa, value)
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        self.control_access(gpa);
        self.inner.fetch_or_u32(gpa, bits)
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        self.control_access(gpa);
        self.inner.fetch_and_u32(gpa, bits)
    }
}

/// What the guest saw when it acted.
#[derive(Default)]
struct GuestView {
    acted: Cell<bool>,
    saw_the_packet: Cell<bool>,
}

/// The host has written one packet, which the guest has read but not yet
/// published (with the host's interrupts masked if `masking`). While the
/// host writes a second packet, the guest acts just before the host's
/// `at`-th control-page access: it publishes its read index (and clears
/// its mask), then looks at the write index once more, and sleeps if the
/// ring looks empty. Returns (the guest acted, it saw the packet, the host
/// signalled).
fn second_write_with_the_guest_at(at: u32, masking: bool) -> (bool, bool, bool) {
    let memory = Interleaved {
        inner: VecMemory::new(4 * PAGE as usize),
        watched: IN_CONTROL,
        accesses: Cell::new(0),
        at: u32::MAX,
        guest: RefCell::new(None),
    };
    let mut endpoint =
        ChannelEndpoint::new(DeviceKind::Generic, 1, &OUT_PAGES, &IN_PAGES, &memory, 0);
    assert!(
        endpoint.send_in_band(&memory, 1, false, &[1; 24]),
        "empty -> non-empty"
    );
    let guest_read = memory
        .inner
        .load_u32(IN_CONTROL + control::WRITE_INDEX as u64)
        .unwrap();
    if masking {
        let _ = memory
            .inner
            .store_u32(IN_CONTROL + control::INTERRUPT_MASK as u64, 1);
    }
    let view = alloc::rc::Rc::new(GuestView::default());
    let seen = view.clone();
    let memory = Interleaved {
        at,
        accesses: Cell::new(0),
        ..memory
    };
    *memory.guest.borrow_mut() = Some(alloc::boxed::Box::new(move |inner: &VecMemory| {
        let _ = inner.store_u32(IN_CONTROL + control::READ_INDEX as u64, guest_read);
        if masking {
            let _ = inner.store_u32(IN_CONTROL + control::INTERRUPT_MASK as u64, 0);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let write = inner
            .load_u32(IN_CONTROL + control::WRITE_INDEX as u64)
            .unwrap();
        seen.acted.set(true);
        seen.saw_the_packet.set(write != guest_read);
    }));
    let signalled = endpoint.send_in_band(&memory, 2, false, &[2; 24]);
    (view.acted.get(), view.saw_the_packet.get(), signalled)
}

/// Wherever the guest's publish (and unmask) falls during a host write,
/// either the guest's look after it finds the packet or the host signals:
/// never neither (a lost wakeup).
#[test]
fn a_host_write_never_loses_a_wakeup_wherever_the_guest_publishes() {
    for masking in [false, true] {
        let mut points = 0;
        for at in 1..64 {
            let (acted, saw, signalled) = second_write_with_the_guest_at(at, masking);
            if !acted {
                break;
            }
            points += 1;
            assert!(
                saw || signalled,
                "lost wakeup: guest published before host access {at} (masking {masking})"
            );
        }
        assert!(
            points >= 3,
            "the write touches the control page {points} times"
        );
    }
}

/// The guest writes an in-band packet into the out ring as its writer
/// does; returns whether the rules tell it to signal (the host had read
/// everything up to the packet's start).
fn guest_writes(memory: &VecMemory, transaction_id: u64) -> bool {
    let word = |offset: usize| memory.load_u32(OUT_CONTROL + offset as u64).unwrap();
    let start = word(control::WRITE_INDEX);
    let descriptor = descriptor_for(PacketType::InBand, 0, 8, transaction_id, false).unwrap();
    let mut bytes = descriptor.as_bytes().to_vec();
    bytes.extend_from_slice(&[7; 8]);
    bytes.extend_from_slice(&((start as u64) << 32).to_le_bytes());
    memory.write(PAGE + start as u64, &bytes).unwrap();
    let end = (start + bytes.len() as u32) % PAGE as u32;
    memory
        .store_u32(OUT_CONTROL + control::WRITE_INDEX as u64, end)
        .unwrap();
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    word(control::READ_INDEX) == start
}

/// A guest that writes while the host drains may find the ring empty (the
/// host publishes its read index per packet) and signal for a packet the
/// drain then reads too. Its signal arrives after the fact: late, never
/// counted as unnecessary, wherever in the drain the write falls.
#[test]
fn a_signal_for_a_packet_read_by_a_running_drain_is_late_not_unnecessary() {
    let mut late_seen = 0;
    for at in 1..32 {
        let memory = Interleaved {
            inner: VecMemory::new(4 * PAGE as usize),
            watched: OUT_CONTROL,
            accesses: Cell::new(0),
            at: u32::MAX,
            guest: RefCell::new(None),
        };
        let mut endpoint =
            ChannelEndpoint::new(DeviceKind::Generic, 1, &OUT_PAGES, &IN_PAGES, &memory, 0);
        assert!(guest_writes(&memory.inner, 1));
        let guest_signalled = alloc::rc::Rc::new(Cell::new(None));
        let signalled = guest_signalled.clone();
        let memory = Interleaved {
            at,
            accesses: Cell::new(0),
            ..memory
        };
        *memory.guest.borrow_mut() = Some(alloc::boxed::Box::new(move |inner: &VecMemory| {
            signalled.set(Some(guest_writes(inner, 2)));
        }));
        let _ = endpoint.step(&memory, 1, 0);
        let Some(second_signalled) = guest_signalled.get() else {
            break;
        };
        if second_signalled {
            let _ = endpoint.step(&memory, 1, 0);
        }
        assert_eq!(endpoint.stats.packets_received, 2, "both read (at {at})");
        assert_eq!(endpoint.stats.unnecessary_signals, 0, "at {at}");
        late_seen += endpoint.stats.late_signals;
    }
    assert!(late_seen > 0, "no write fell inside a drain");
}

/// The host's first write that finds the in ring full, with the guest
/// (which has read everything but not yet published) publishing at the
/// host's `at`-th control-page access and then, as a reader does, reading
/// pending_send_sz and signalling if it is set. Returns (the guest acted,
/// the packet was written, the guest signalled).
fn full_write_with_the_guest_at(at: u32) -> (bool, bool, bool) {
    let memory = Interleaved {
        inner: VecMemory::new(4 * PAGE as usize),
        watched: IN_CONTROL,
        accesses: Cell::new(0),
        at: u32::MAX,
        guest: RefCell::new(None),
    };
    let mut endpoint =
        ChannelEndpoint::new(DeviceKind::Generic, 1, &OUT_PAGES, &IN_PAGES, &memory, 0);
    // 16 + 24 bytes + trailer: 48 bytes a packet; stop while the next
    // one does not fit but nothing was deferred yet.
    let word = |offset: usize| memory.inner.load_u32(IN_CONTROL + offset as u64).unwrap();
    let free = |write: u32, read: u32| PAGE as u32 - (write + PAGE as u32 - read) % PAGE as u32;
    while free(word(control::WRITE_INDEX), word(control::READ_INDEX)) > 48 {
        let _ = endpoint.send_in_band(&memory, 1, false, &[1; 24]);
    }
    assert_eq!(endpoint.stats.sends_deferred, 0);
    let guest_read = word(control::WRITE_INDEX);
    let sent = endpoint.stats.packets_sent;
    let signalled = alloc::rc::Rc::new(Cell::new(None));
    let seen = signalled.clone();
    let memory = Interleaved {
        at,
        accesses: Cell::new(0),
        ..memory
    };
    *memory.guest.borrow_mut() = Some(alloc::boxed::Box::new(move |inner: &VecMemory| {
        let _ = inner.store_u32(IN_CONTROL + control::READ_INDEX as u64, guest_read);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let pending = inner
            .load_u32(IN_CONTROL + control::PENDING_SEND_SZ as u64)
            .unwrap();
        seen.set(Some(pending != 0));
    }));
    let _ = endpoint.send_in_band(&memory, 2, false, &[2; 24]);
    let written = endpoint.stats.packets_sent > sent;
    match signalled.get() {
        Some(guest_signalled) => (true, written, guest_signalled),
        None => (false, written, false),
    }
}

/// Wherever the guest frees the space during the host's write to a full
/// ring, either the host writes after all (it looks again after
/// publishing pending_send_sz) or the guest sees pending_send_sz and
/// signals: never a host waiting for a signal that will not come.
#[test]
fn a_full_host_write_never_waits_for_a_signal_that_will_not_come() {
    let mut points = 0;
    for at in 1..32 {
        let (acted, written, signalled) = full_write_with_the_guest_at(at);
        if !acted {
            break;
        }
        points += 1;
        assert!(
            written || signalled,
            "lost wakeup: guest freed space before host access {at}"
        );
    }
    assert!(points >= 2, "{points}");
}

/// A fresh endpoint over plain memory (no interleaving guest).
fn plain_endpoint() -> (VecMemory, ChannelEndpoint) {
    let memory = VecMemory::new(4 * PAGE as usize);
    let endpoint = ChannelEndpoint::new(DeviceKind::Generic, 1, &OUT_PAGES, &IN_PAGES, &memory, 0);
    (memory, endpoint)
}

/// A streaming guest that writes 32 packets and signals once (its first
/// write made the ring non-empty): one signal in 32 packets, all called for.
#[test]
fn a_batch_of_32_packets_with_one_signal_is_one_signal_per_32_packets() {
    let (memory, mut endpoint) = plain_endpoint();
    let mut signals = 0;
    for id in 0..32 {
        if guest_writes(&memory, id) {
            signals += 1;
        }
    }
    assert_eq!(signals, 1, "only the first write found the ring empty");
    let _ = endpoint.step(&memory, signals, 0);
    let stats = endpoint.stats;
    assert_eq!(stats.packets_received, 32);
    assert_eq!(stats.signals, 1);
    assert_eq!(stats.signals_called_for(), 1);
    assert_eq!(stats.unnecessary_signals, 0);
    assert_eq!(stats.signals_per_packet(), Some(1.0 / 32.0));
    assert_eq!(
        stats.signal_report(),
        "packets 32 signals 1 called-for 1 late 0 unnecessary 0"
    );
}

/// A guest that signals after every write, the ring empty or not: the
/// 31 signals for writes into a non-empty ring were not called for.
#[test]
fn a_signal_per_packet_into_a_non_empty_ring_is_unnecessary() {
    let (memory, mut endpoint) = plain_endpoint();
    for id in 0..32 {
        guest_writes(&memory, id);
    }
    let _ = endpoint.step(&memory, 32, 0);
    let stats = endpoint.stats;
    assert_eq!(stats.packets_received, 32);
    assert_eq!(stats.signals, 32);
    assert_eq!(stats.signals_called_for(), 1);
    assert_eq!(stats.unnecessary_signals, 31);
}

/// The host drains between the guest's writes: every write finds the
/// ring empty, every signal is called for (one per packet, none wasted).
#[test]
fn a_signal_per_packet_into_an_empty_ring_is_called_for() {
    let (memory, mut endpoint) = plain_endpoint();
    let before = endpoint.stats;
    for id in 0..32 {
        assert!(guest_writes(&memory, id), "the host drained the ring");
        let _ = endpoint.step(&memory, 1, 0);
    }
    // And a signal with nothing new is not.
    let _ = endpoint.step(&memory, 1, 0);
    let window = endpoint.stats.since(&before);
    assert_eq!(
        window,
        SignalWindow {
            packets: 32,
            signals: 33,
            unnecessary: 1
        }
    );
}

/// The guest's writer rule in full: after publishing, signal only if the
/// ring was empty before the write and the host's interrupt_mask is clear
/// (read after the fence `guest_writes` ends with).
fn guest_writes_and_checks_mask(memory: &VecMemory, transaction_id: u64) -> bool {
    let was_empty = guest_writes(memory, transaction_id);
    let masked = memory
        .load_u32(OUT_CONTROL + control::INTERRUPT_MASK as u64)
        .unwrap();
    was_empty && masked == 0
}

const POLL_WINDOW_NS: u64 = 1_000;

fn polling_endpoint() -> (VecMemory, ChannelEndpoint) {
    let (memory, mut endpoint) = plain_endpoint();
    endpoint.poll_window_ns = POLL_WINDOW_NS;
    (memory, endpoint)
}

/// A host that keeps polling while the guest streams keeps the mask set:
/// the guest signals once for the first write, none for the 96 that follow
/// in batches while the host polls; once the ring stays empty for the
/// window the host clears the mask and sleeps, and the next write signals.
#[test]
fn a_polling_host_keeps_a_streaming_guest_from_signalling() {
    let (memory, mut endpoint) = polling_endpoint();
    assert!(guest_writes_and_checks_mask(&memory, 0));
    let _ = endpoint.step(&memory, 1, 0);
    assert!(endpoint.polling());
    let mut now = 0;
    for batch in 0..12 {
        let mut signals = 0;
        for id in 0..8 {
            if guest_writes_and_checks_mask(&memory, 1 + batch * 8 + id) {
                signals += 1;
            }
        }
        assert_eq!(signals, 0, "the mask is set while the host polls");
        now += POLL_WINDOW_NS / 2;
        let _ = endpoint.step(&memory, 0, now);
    }
    assert_eq!(endpoint.stats.packets_received, 97);
    // Quiet for the window: the host sleeps (after looking once more).
    let _ = endpoint.step(&memory, 0, now + POLL_WINDOW_NS / 2);
    assert!(endpoint.polling(), "the window runs from the last data");
    let _ = endpoint.step(&memory, 0, now + POLL_WINDOW_NS);
    assert!(!endpoint.polling());
    assert_eq!(endpoint.stats.poll_sleeps, 1);
    assert!(guest_writes_and_checks_mask(&memory, 98), "asleep: signal");
    let _ = endpoint.step(&memory, 1, now + 2 * POLL_WINDOW_NS);
    let stats = endpoint.stats;
    assert_eq!(stats.packets_received, 98);
    assert_eq!(stats.signals, 2);
    assert_eq!(stats.unnecessary_signals, 0);
    assert!(stats.signals_per_packet().unwrap() <= 1.0 / 32.0);
    // A signal while the mask is set is not called for.
    let _ = endpoint.step(&memory, 1, now + 2 * POLL_WINDOW_NS);
    assert_eq!(endpoint.stats.unnecessary_signals, 1);
}

/// The end of a poll window, with the guest writing one packet just before
/// the host's `at`-th control-page access of that step and signalling as
/// its rules say (ring empty before, mask clear). However the write falls
/// against the host's clear-mask / fence / look-again sequence, the packet
/// is read (by the look again, or on the guest's signal) and no signal is
/// unnecessary. Without the look again, a write the guest made while it
/// still saw the mask set waits forever for a signal the guest never owed.
#[test]
fn the_end_of_a_poll_window_never_loses_a_wakeup() {
    let mut found_by_the_look_again = 0;
    let mut signalled_after_the_unmask = 0;
    for at in 1..32 {
        let memory = Interleaved {
            inner: VecMemory::new(4 * PAGE as usize),
            watched: OUT_CONTROL,
            accesses: Cell::new(0),
            at: u32::MAX,
            guest: RefCell::new(None),
        };
        let mut endpoint =
            ChannelEndpoint::new(DeviceKind::Generic, 1, &OUT_PAGES, &IN_PAGES, &memory, 0);
        endpoint.poll_window_ns = POLL_WINDOW_NS;
        assert!(guest_writes_and_checks_mask(&memory.inner, 1));
        let _ = endpoint.step(&memory, 1, 0);
        assert!(endpoint.polling());
        let guest_signalled = alloc::rc::Rc::new(Cell::new(None));
        let signalled = guest_signalled.clone();
        let memory = Interleaved {
            at,
            accesses: Cell::new(0),
            ..memory
        };
        *memory.guest.borrow_mut() = Some(alloc::boxed::Box::new(move |inner: &VecMemory| {
            signalled.set(Some(guest_writes_and_checks_mask(inner, 2)));
        }));
        let _ = endpoint.step(&memory, 0, POLL_WINDOW_NS);
        let Some(second_signalled) = guest_signalled.get() else {
            break;
        };
        if endpoint.stats.poll_rechecks_found > 0 {
            found_by_the_look_again += 1;
        }
        // The guest's signal, if it sent one; the host's next step either way.
        let signals = u64::from(second_signalled);
        signalled_after_the_unmask += signals;
        let _ = endpoint.step(&memory, signals, POLL_WINDOW_NS + 1);
        assert_eq!(
            endpoint.stats.packets_received, 2,
            "the second packet is read (guest at access {at})"
        );
        assert_eq!(endpoint.stats.unnecessary_signals, 0, "at {at}");
    }
    assert!(
        found_by_the_look_again > 0,
        "no write fell before the look again"
    );
    assert!(
        signalled_after_the_unmask > 0,
        "no write fell after the unmask"
    );
}
