//! The real channel loop ([`IcChannel`] with the heartbeat-like [`Echo`]
//! service) against hvsim's host end of a heartbeat channel
//! ([`ChannelEndpoint`]) over the same ring memory:
//!
//! - the soak: each on its own thread, the host sending heartbeat requests
//!   back to back (up to [`WINDOW`] unanswered), both ends signalling each
//!   other only as the ring protocol says, through doorbells that count
//!   signals. A stall is both ends idle with a packet in either ring and
//!   no signal on its way: nobody will ever move again (a lost wakeup).
//!   The host counts it, then rings the driver's doorbell anyway so the
//!   soak goes on and the count means something. `IC_SOAK_SECONDS` sets
//!   the duration (default 2 s, short enough for `cargo test`);
//! - on one thread, stepped by the test ([`Pair`]): both directions filled
//!   to full, and a back-to-back stream counting hvsim's interrupts per
//!   packet.

use crate::channel::IcChannel;
use crate::test_service::{Echo, IDS};
use crate::testing::TestHost;
use component_api::Region;
use hv_interface::GuestMemory;
use hvsim::channel::{ChannelEndpoint, ChannelEvent};
use hvsim::pd::RegionMemory;
use hvsim::vmbus::DeviceKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmbus_ipc::synic;
use vmbus_protocol::packet::control;

/// hvsim's view of the VSC's four ring regions: placed back to back from
/// guest physical address 0 in the ring GPADL's order (out control, out
/// data, in control, in data); the out ring's pages and the in ring's.
fn host_memory(rings: [Region; 4]) -> (RegionMemory, Vec<u64>, Vec<u64>) {
    let page = 4096u64;
    let mut gpa = 0u64;
    let placed: Vec<Region> = rings
        .iter()
        .map(|region| {
            let placed = region.with_guest_physical(gpa);
            gpa += region.len() as u64;
            placed
        })
        .collect();
    let memory = RegionMemory::new(&placed).unwrap();
    let in_start = (rings[0].len() + rings[1].len()) as u64 / page;
    let out_pages = (0..in_start).collect();
    let in_pages = (in_start..gpa / page).collect();
    (memory, out_pages, in_pages)
}

/// Requests the host keeps unanswered at most.
const WINDOW: u64 = 64;

/// Idle checks in a row (each after a wait for a signal) that make a stall.
const IDLE_CHECKS_FOR_A_STALL: u32 = 3;

#[derive(Default)]
struct BellState {
    rung: u64,
    taken: u64,
    waiting: bool,
}

/// One end's interrupt line: rings are counted, none is lost.
#[derive(Default)]
struct Doorbell {
    state: Mutex<BellState>,
    wake: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        self.state.lock().unwrap().rung += 1;
        self.wake.notify_one();
    }

    /// Wait up to `timeout` for rings; returns how many came.
    fn take(&self, timeout: Duration) -> u64 {
        let mut state = self.state.lock().unwrap();
        if state.rung == state.taken {
            state.waiting = true;
            state = self
                .wake
                .wait_timeout_while(state, timeout, |s| s.rung == s.taken)
                .unwrap()
                .0;
            state.waiting = false;
        }
        let new = state.rung - state.taken;
        state.taken = state.rung;
        new
    }

    /// The owner is asleep and no ring is on its way to it.
    fn asleep_with_nothing_pending(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.waiting && state.rung == state.taken
    }

    fn rung(&self) -> u64 {
        self.state.lock().unwrap().rung
    }
}

/// What the soak measured.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
pub struct SoakReport {
    pub stalls: u64,
    pub answered: u64,
    pub host_signals_to_guest: u64,
    pub host_packets_sent: u64,
    pub guest_signals_to_host: u64,
    pub unnecessary_guest_signals: u64,
    pub late_guest_signals: u64,
}

fn ring_has_data(memory: &RegionMemory, control_page: u64) -> bool {
    let write = memory
        .load_u32(control_page + control::WRITE_INDEX as u64)
        .unwrap();
    let read = memory
        .load_u32(control_page + control::READ_INDEX as u64)
        .unwrap();
    write != read
}

/// Run the soak for `duration`.
pub fn soak(duration: Duration) -> SoakReport {
    let guest_bell = Arc::new(Doorbell::default());
    let host_bell = Arc::new(Doorbell::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (ring_sender, ring_receiver) = mpsc::channel::<[Region; 4]>();

    let guest = {
        let (guest_bell, host_bell, stop) = (guest_bell.clone(), host_bell.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut env = env_double::EnvDouble::new();
            let host = TestHost::new(&mut env, IDS);
            // The guest's signals go to hvsim's doorbell.
            env.on_typed_call::<synic::Synic>(IDS.synic_call, move |request| match request {
                synic::Request::SignalHost { .. } => {
                    host_bell.ring();
                    synic::Reply::Done
                }
                _ => synic::Reply::HypercallFailed { status: 0x12 },
            });
            let mut channel = IcChannel::new(IDS);
            let mut echo = Echo::default();
            channel.on_bus_event(&mut env, &mut echo);
            channel.on_bus_event(&mut env, &mut echo);
            assert!(channel.is_open());
            ring_sender.send(host.ring_regions()).unwrap();
            while !stop.load(Ordering::Acquire) {
                if guest_bell.take(Duration::from_millis(5)) > 0 {
                    channel.poll(&mut env, &mut echo);
                }
            }
            channel.stats()
        })
    };

    let (memory, out_pages, in_pages) = host_memory(ring_receiver.recv().unwrap());
    let page = 4096u64;
    let (out_control, in_control) = (out_pages[0] * page, in_pages[0] * page);
    let start = Instant::now();
    let mut endpoint =
        ChannelEndpoint::new(DeviceKind::Heartbeat, 1, &out_pages, &in_pages, &memory, 0);
    // Only the soak's requests: no periodic heartbeat.
    endpoint.ic.heartbeat_interval_ns = u64::MAX / 2;
    // The negotiate request went into the empty in ring.
    guest_bell.ring();
    let mut requested = 1u64;
    let mut stalls = 0u64;
    let mut idle_checks = 0u32;
    while start.elapsed() < duration {
        let signals = host_bell.take(Duration::from_millis(2));
        let now = start.elapsed().as_nanos() as u64;
        let mut signal_guest = endpoint.step(&memory, signals, now) == ChannelEvent::SignalGuest;
        assert!(endpoint.broken.is_none(), "{:?}", endpoint.broken);
        if signal_guest {
            guest_bell.ring();
        }
        // Each request is signalled as soon as it is written, so the
        // driver reads while the host writes the next ones.
        while endpoint.negotiated()
            && requested.saturating_sub(endpoint.stats.packets_received) < WINDOW
        {
            match endpoint.request_heartbeat(&memory) {
                Some(signal) => {
                    requested += 1;
                    if signal {
                        guest_bell.ring();
                    }
                    signal_guest |= signal;
                }
                None => break,
            }
        }
        let idle = signals == 0
            && !signal_guest
            && guest_bell.asleep_with_nothing_pending()
            && (ring_has_data(&memory, in_control) || ring_has_data(&memory, out_control));
        idle_checks = if idle { idle_checks + 1 } else { 0 };
        if idle_checks >= IDLE_CHECKS_FOR_A_STALL {
            stalls += 1;
            idle_checks = 0;
            // Not the protocol: a kick so the soak goes on.
            guest_bell.ring();
        }
    }
    stop.store(true, Ordering::Release);
    let guest_stats = guest.join().unwrap();
    SoakReport {
        stalls,
        answered: endpoint.stats.packets_received,
        host_signals_to_guest: guest_bell.rung() - stalls,
        host_packets_sent: endpoint.stats.packets_sent,
        guest_signals_to_host: u64::from(guest_stats.signals),
        unnecessary_guest_signals: endpoint.stats.unnecessary_signals,
        late_guest_signals: endpoint.stats.late_signals,
    }
}

fn soak_duration() -> Duration {
    let seconds = std::env::var("IC_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

#[test]
fn back_to_back_heartbeats_never_stall() {
    let report = soak(soak_duration());
    println!("soak: {report:?}");
    println!(
        "soak: host interrupts per packet {:.4}",
        report.host_signals_to_guest as f64 / report.host_packets_sent.max(1) as f64
    );
    assert!(report.answered > 100, "too little traffic: {report:?}");
    assert_eq!(report.stalls, 0, "{report:?}");
    assert_eq!(report.unnecessary_guest_signals, 0, "{report:?}");
}

/// The real driver and hvsim's host end on one thread, stepped by the test.
struct Pair {
    env: env_double::EnvDouble,
    _host: TestHost,
    channel: IcChannel,
    echo: Echo,
    memory: RegionMemory,
    endpoint: ChannelEndpoint,
    guest_signals: std::rc::Rc<std::cell::Cell<u64>>,
    host_seen: u64,
    in_control: u64,
    in_size: u32,
}

impl Pair {
    fn new() -> Pair {
        let mut env = env_double::EnvDouble::new();
        let host = TestHost::new(&mut env, IDS);
        let guest_signals = std::rc::Rc::new(std::cell::Cell::new(0));
        let counter = guest_signals.clone();
        env.on_typed_call::<synic::Synic>(IDS.synic_call, move |_| {
            counter.set(counter.get() + 1);
            synic::Reply::Done
        });
        let mut channel = IcChannel::new(IDS);
        let mut echo = Echo::default();
        channel.on_bus_event(&mut env, &mut echo);
        channel.on_bus_event(&mut env, &mut echo);
        let (memory, out_pages, in_pages) = host_memory(host.ring_regions());
        let page = 4096u64;
        let mut endpoint =
            ChannelEndpoint::new(DeviceKind::Heartbeat, 1, &out_pages, &in_pages, &memory, 0);
        endpoint.ic.heartbeat_interval_ns = u64::MAX / 2;
        let mut pair = Pair {
            env,
            _host: host,
            channel,
            echo,
            memory,
            in_control: in_pages[0] * page,
            in_size: ((in_pages.len() - 1) as u64 * page) as u32,
            endpoint,
            guest_signals,
            host_seen: 0,
        };
        pair.guest_poll();
        pair.host_step();
        assert!(pair.endpoint.negotiated());
        pair
    }

    fn guest_poll(&mut self) {
        self.channel.poll(&mut self.env, &mut self.echo);
    }

    /// The host handles the guest's signals since the last step; returns
    /// whether it signalled the guest.
    fn host_step(&mut self) -> bool {
        let signals = self.guest_signals.get() - self.host_seen;
        self.host_seen = self.guest_signals.get();
        let event = self.endpoint.step(&self.memory, signals, 1);
        assert!(self.endpoint.broken.is_none(), "{:?}", self.endpoint.broken);
        event == ChannelEvent::SignalGuest
    }

    fn in_free(&self) -> u32 {
        let load = |offset: usize| {
            self.memory
                .load_u32(self.in_control + offset as u64)
                .unwrap()
        };
        let (write, read) = (load(control::WRITE_INDEX), load(control::READ_INDEX));
        self.in_size - (write + self.in_size - read) % self.in_size
    }

    fn word(&self, gpa: u64) -> u32 {
        self.memory.load_u32(gpa).unwrap()
    }
}

/// Both directions filled to full between the real driver and hvsim, each
/// resumed by exactly one signal from the reader that freed the space.
#[test]
fn full_rings_resume_with_one_signal_each_between_driver_and_hvsim() {
    let mut pair = Pair::new();
    let in_control = pair.in_control;
    assert_eq!(
        pair.word(in_control + control::FEATURE_BITS as u64) & control::FEATURE_PENDING_SEND_SZ,
        control::FEATURE_PENDING_SEND_SZ,
        "hvsim announces pending_send_sz on the ring it writes"
    );

    // Host -> guest: hvsim writes until the in ring is full and waits.
    // (The step that saw the negotiation answered sent one heartbeat.)
    let mut requested = 1u64;
    while pair.endpoint.stats.sends_deferred == 0 {
        assert!(requested < 1000);
        pair.endpoint.request_heartbeat(&pair.memory).unwrap();
        requested += 1;
    }
    assert_ne!(pair.word(in_control + control::PENDING_SEND_SZ as u64), 0);
    let sent = pair.endpoint.stats.packets_sent;
    for _ in 0..5 {
        pair.host_step();
    }
    assert_eq!(
        pair.endpoint.stats.packets_sent, sent,
        "no retry without the signal"
    );
    assert_eq!(pair.endpoint.stats.waits_for_space_signal, 5);
    let signals = pair.guest_signals.get();
    pair.guest_poll();
    assert_eq!(
        pair.guest_signals.get() - signals,
        1,
        "one signal resumes hvsim"
    );
    pair.host_step();
    assert!(pair.endpoint.stats.packets_sent > sent, "hvsim wrote again");
    assert_eq!(pair.word(in_control + control::PENDING_SEND_SZ as u64), 0);
    for _ in 0..4 {
        pair.guest_poll();
        pair.host_step();
    }
    assert_eq!(pair.endpoint.stats.packets_received, requested + 1);

    // Guest -> host: hvsim writes only what fits and does not read, so
    // the driver's out ring fills and an answer waits.
    let footprint = {
        let free = pair.in_free();
        pair.endpoint.request_heartbeat(&pair.memory).unwrap();
        requested += 1;
        free - pair.in_free()
    };
    for _ in 0..10 {
        while pair.in_free() > footprint + 8 {
            pair.endpoint.request_heartbeat(&pair.memory).unwrap();
            requested += 1;
        }
        pair.guest_poll();
        if pair.channel.answer_waiting() {
            break;
        }
    }
    assert!(pair.channel.answer_waiting(), "the out ring never filled");
    assert_ne!(pair.word(control::PENDING_SEND_SZ as u64), 0);
    let space_signals = pair.endpoint.stats.space_signals_to_guest;
    assert!(pair.host_step(), "hvsim signals the space it freed");
    assert_eq!(
        pair.endpoint.stats.space_signals_to_guest - space_signals,
        1,
        "exactly one space signal"
    );
    for _ in 0..8 {
        pair.guest_poll();
        pair.host_step();
    }
    assert!(!pair.channel.answer_waiting());
    assert_eq!(
        pair.endpoint.stats.packets_received,
        requested + 1,
        "every request answered"
    );
    assert_eq!(pair.endpoint.stats.unknown_responses, 0);
    assert_eq!(pair.endpoint.stats.unnecessary_signals, 0);
    assert_eq!(pair.channel.stats().host_faults, 0);
}

/// A back-to-back stream: hvsim writes a request at every step the driver
/// takes on the in ring's control page (as fast as the driver can look),
/// and the driver is notified only when hvsim signals. Counts hvsim's
/// interrupts per packet: masked while the driver drains, unmasked and
/// looked at again before it sleeps, so a stream costs far less than one
/// interrupt per packet, and no packet is lost.
#[test]
fn a_back_to_back_stream_costs_few_interrupts_and_loses_nothing() {
    // A request at every driver step on the control page, every second
    // step, ...: as fast as the driver reads, or a little slower.
    for every in [1, 2, 3, 5] {
        let per_packet = stream(every);
        assert!(per_packet < 0.05, "{per_packet} interrupts per packet");
    }
    // Slower than the driver: it sleeps between packets, so each packet
    // is an empty -> non-empty write and is signalled (at most one each).
    assert!(stream(8) <= 1.0);
}

/// A stream with a request every `every` driver steps; returns hvsim's
/// interrupts per packet. Asserts that nothing is lost.
fn stream(every: u64) -> f64 {
    use crate::memory::{probe, RingSide};
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    const STREAM: u64 = 2000;
    let Pair {
        mut env,
        _host,
        mut channel,
        mut echo,
        memory,
        endpoint,
        guest_signals,
        in_control,
        ..
    } = Pair::new();
    let host = Rc::new(RefCell::new((endpoint, memory)));
    let interrupts = Rc::new(Cell::new(0u64));
    let to_write = Rc::new(Cell::new(STREAM));
    let masked_writes_signalled = Rc::new(Cell::new(0u64));
    // A write that signalled: the driver is notified after its poll.
    let raised = Rc::new(Cell::new(false));
    let steps = Rc::new(Cell::new(0u64));
    {
        let steps = steps.clone();
        let (host, interrupts, to_write) = (host.clone(), interrupts.clone(), to_write.clone());
        let masked_writes_signalled = masked_writes_signalled.clone();
        let raised = raised.clone();
        probe::set(move |side, _offset| {
            if side != RingSide::In || to_write.get() == 0 {
                return;
            }
            steps.set(steps.get() + 1);
            if !steps.get().is_multiple_of(every) {
                return;
            }
            let (endpoint, memory) = &mut *host.borrow_mut();
            let masked = memory
                .load_u32(in_control + control::INTERRUPT_MASK as u64)
                .unwrap()
                != 0;
            if endpoint.request_heartbeat(memory) == Some(true) {
                interrupts.set(interrupts.get() + 1);
                raised.set(true);
                if masked {
                    masked_writes_signalled.set(masked_writes_signalled.get() + 1);
                }
            }
            to_write.set(to_write.get() - 1);
        });
    }
    let mut host_seen = 0;
    let mut polls = 0u64;
    // The periodic heartbeat Pair::new's step wrote (and signalled)
    // starts the stream.
    let mut notified = true;
    for _ in 0..100_000 {
        if notified {
            channel.poll(&mut env, &mut echo);
            polls += 1;
        }
        let signals = guest_signals.get() - host_seen;
        host_seen = guest_signals.get();
        let (endpoint, memory) = &mut *host.borrow_mut();
        notified = endpoint.step(memory, signals, 1) == ChannelEvent::SignalGuest;
        if notified {
            interrupts.set(interrupts.get() + 1);
        }
        notified |= raised.replace(false);
        if !notified && signals == 0 {
            // The driver went idle before its steps reached the host's
            // next write: the host writes now, as a slower host would.
            if to_write.get() == 0 {
                break;
            }
            if endpoint.request_heartbeat(memory) == Some(true) {
                interrupts.set(interrupts.get() + 1);
                notified = true;
            }
            to_write.set(to_write.get() - 1);
        }
    }
    probe::clear();
    let (endpoint, _) = &*host.borrow();
    let sent = endpoint.stats.packets_sent;
    let per_packet = interrupts.get() as f64 / sent as f64;
    println!(
        "stream (a request every {every} driver steps): {sent} packets, {} host interrupts ({per_packet:.4} per packet), {polls} polls, {} drain rounds, {} looks after unmask found data",
        interrupts.get(),
        channel.stats().rounds,
        channel.stats().rechecks_found_data
    );
    assert_eq!(to_write.get(), 0, "the stream was written");
    // Negotiation, the periodic heartbeat and the stream: all answered.
    assert_eq!(
        endpoint.stats.packets_received,
        STREAM + 2,
        "no packet lost"
    );
    assert_eq!(endpoint.stats.unknown_responses, 0);
    assert_eq!(masked_writes_signalled.get(), 0, "hvsim honours the mask");
    per_packet
}
