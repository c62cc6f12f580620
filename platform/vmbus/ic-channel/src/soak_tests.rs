//! Soak: the real channel loop ([`IcChannel`] with the heartbeat-like
//! [`Echo`] service, on its own thread) against hvsim's host end of a
//! heartbeat channel ([`ChannelEndpoint`], on the test's thread) over the
//! same ring memory. The host sends heartbeat requests back to back (up to
//! [`WINDOW`] unanswered) and both ends signal each other only as the ring
//! protocol says, through doorbells that count signals.
//!
//! A stall is both ends idle with a packet in either ring and no signal on
//! its way: nobody will ever move again (a lost wakeup). The host counts
//! it, then rings the driver's doorbell anyway so the soak goes on and the
//! count means something.
//!
//! `IC_SOAK_SECONDS` sets the duration (default 2 s, short enough for
//! `cargo test`).

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
    let (ring_sender, ring_receiver) = mpsc::channel::<Region>();

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
            ring_sender.send(host.ring()).unwrap();
            while !stop.load(Ordering::Acquire) {
                if guest_bell.take(Duration::from_millis(5)) > 0 {
                    channel.poll(&mut env, &mut echo);
                }
            }
            channel.stats()
        })
    };

    let ring = ring_receiver.recv().unwrap();
    let memory = RegionMemory::new(&[ring.with_guest_physical(0)]).unwrap();
    let page = 4096u64;
    let out_pages: Vec<u64> = (0..IDS.ring_out_bytes as u64 / page).collect();
    let in_pages: Vec<u64> = (IDS.ring_out_bytes as u64 / page..ring.len() as u64 / page).collect();
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
}
