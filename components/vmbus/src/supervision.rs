//! Supervision: of the VSCs (a fault unbinds, closes and tears down the
//! channel and, once the host holds nothing of it, restarts the VSC, which
//! zeroes its own rings before it opens again, or holds it after repeated
//! faults), and recovery from restarts of vmbus itself (its session record,
//! Unload of the old session) and of synic (its relid table restored).

use super::*;
use component_api::Region;

impl Vmbus {
    pub(crate) fn on_fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        let Some(d) = self.drivers.iter().position(|d| d.wiring.child == child) else {
            println!(env, "fault of a child that drives nothing: {:?}", fault);
            return;
        };
        let now = env.now_ns();
        let driver = &mut self.drivers[d];
        if driver.held || driver.recovering {
            return;
        }
        if driver.fault_times.is_full() {
            driver.fault_times.pop_front();
        }
        let _ = driver.fault_times.push_back(now);
        let window = driver.wiring.fault_window_ns;
        let hold = window > 0
            && driver.fault_times.is_full()
            && driver
                .fault_times
                .front()
                .is_some_and(|first| now.saturating_sub(*first) <= window);
        driver.recovering = true;
        driver.hold_after_recovery = hold;
        driver.faulted_at_ns = Some(now);
        let relid = driver.channel.as_ref().map(|c| c.offer.relid);
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
        }
        match relid {
            Some(relid) => println!(
                env,
                "{} faulted ({:?}): recovering relid {}", driver.wiring.name, fault, relid
            ),
            None => println!(env, "{} faulted ({:?})", driver.wiring.name, fault),
        }
        self.status_dirty = true;
        self.reconcile(env, d);
    }

    pub(crate) fn finish_recovery(&mut self, env: &mut dyn Env, d: usize) {
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        let driver = &mut self.drivers[d];
        driver.recovering = false;
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
            channel.failed = None;
            // The new instance starts with no buffer shared.
            channel.buffers = [BufferRecord::default(); MAX_BUFFERS];
            channel.target_vp = 0;
            channel.retarget_refused = None;
        }
        let name = driver.wiring.name;
        for sub in self.subs.iter_mut().filter(|s| s.driver == d) {
            sub.record.want_open = false;
            sub.record.failed = None;
        }
        let driver = &mut self.drivers[d];
        let child = driver.wiring.child;
        if driver.hold_after_recovery {
            driver.held = true;
            driver.faulted_at_ns = None;
            let _ = env.stop(child);
            let window_ms = driver.wiring.fault_window_ns / 1_000_000;
            if window_ms.is_multiple_of(1000) {
                println!(
                    env,
                    "{} held stopped: {} faults within {} s",
                    name,
                    FAULTS_TO_HOLD,
                    window_ms / 1000
                );
            } else {
                println!(
                    env,
                    "{} held stopped: {} faults within {} ms", name, FAULTS_TO_HOLD, window_ms
                );
            }
        } else if unloading {
            println!(env, "{} not restarted: the bus is unloading", name);
        } else {
            match env.restart(child) {
                Ok(()) => {
                    let driver = &mut self.drivers[d];
                    driver.restarts = driver.restarts.wrapping_add(1);
                    println!(
                        env,
                        "{} restarted (restart {})", name, self.drivers[d].restarts
                    );
                }
                Err(error) => println!(env, "{} could not be restarted: {:?}", name, error),
            }
        }
        self.status_dirty = true;
    }

    // ---- unload ----
}

// ---- the bus manager's own restart ----
//
// `vmbus` is restarted by the platform (`supervisor = "@platform"`) with
// its memory reset. What it must know then lives in its private region
// `vmbus_session`: whether the host holds a session of ours. If so it
// recovers as a guest kernel does after a crash: Unload (the host then
// releases every GPADL and channel of the old session), then contact,
// offers and opens again. Every driver is restarted first, so each zeroes
// its rings before it asks to open (and a driver fault that happened while
// vmbus was down is covered by that restart).

/// The record's words: magic, starts, state, version, message connection,
/// check (FNV-1a of the five before it).
const SESSION_MAGIC: u32 = 0x5642_5553;
const SESSION_WORDS: usize = 6;
const STATE_NONE: u32 = 0;
const STATE_CONTACT_SENT: u32 = 1;
const STATE_CONNECTED: u32 = 2;
const STATE_UNLOAD_SENT: u32 = 3;

/// What the host holds of our bus session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Nothing: never contacted, unloaded, or no common version.
    None,
    /// InitiateContact for this version went out; its answer may still be
    /// in the queue.
    ContactSent(ProtocolVersion),
    /// Connected: control messages go to `message_connection`.
    Connected {
        version: ProtocolVersion,
        message_connection: u32,
    },
    /// Unload went out: its UnloadResponse ends the session (it may be in
    /// the queue already).
    UnloadSent(ProtocolVersion),
}

/// The `vmbus_session` region: private to vmbus, kept across its restarts.
#[derive(Default)]
pub(crate) struct SessionRecord {
    region: Option<Region>,
    /// How many times vmbus started (this start included).
    pub(crate) starts: u32,
    written: Option<SessionState>,
}

fn check_of(words: &[u32]) -> u32 {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(0x811c_9dc5u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
}

impl SessionRecord {
    /// Read what the previous incarnation left (None: nothing readable)
    /// and count this start.
    pub(crate) fn begin(env: &mut dyn Env) -> (SessionRecord, Option<SessionState>) {
        let region = env.region(regions::VMBUS_SESSION);
        let mut bytes = [0u8; SESSION_WORDS * 4];
        let words: Option<[u32; SESSION_WORDS]> = region.read(0, &mut bytes).ok().map(|()| {
            core::array::from_fn(|i| {
                u32::from_le_bytes([
                    bytes[4 * i],
                    bytes[4 * i + 1],
                    bytes[4 * i + 2],
                    bytes[4 * i + 3],
                ])
            })
        });
        let valid = words.filter(|w| w[0] == SESSION_MAGIC && w[5] == check_of(&w[..5]));
        let previous = valid.and_then(|w| match w[2] {
            STATE_NONE => Some(SessionState::None),
            STATE_CONTACT_SENT => Some(SessionState::ContactSent(ProtocolVersion(w[3]))),
            STATE_CONNECTED => Some(SessionState::Connected {
                version: ProtocolVersion(w[3]),
                message_connection: w[4],
            }),
            STATE_UNLOAD_SENT => Some(SessionState::UnloadSent(ProtocolVersion(w[3]))),
            _ => None,
        });
        let starts = valid.map_or(0, |w| w[1]).wrapping_add(1);
        let mut record = SessionRecord {
            region: Some(region),
            starts,
            written: None,
        };
        // Until this incarnation knows better, the old session stands.
        record.write(previous.unwrap_or(SessionState::None));
        (record, previous)
    }

    pub(crate) fn write(&mut self, state: SessionState) {
        if self.written == Some(state) {
            return;
        }
        let Some(region) = self.region else {
            return;
        };
        let (code, version, connection) = match state {
            SessionState::None => (STATE_NONE, 0, 0),
            SessionState::ContactSent(version) => (STATE_CONTACT_SENT, version.0, 0),
            SessionState::Connected {
                version,
                message_connection,
            } => (STATE_CONNECTED, version.0, message_connection),
            SessionState::UnloadSent(version) => (STATE_UNLOAD_SENT, version.0, 0),
        };
        let mut words = [SESSION_MAGIC, self.starts, code, version, connection, 0];
        words[5] = check_of(&words[..5]);
        let mut bytes = [0u8; SESSION_WORDS * 4];
        for (i, word) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        if region.write(0, &bytes).is_ok() {
            self.written = Some(state);
        }
    }
}

/// A restarted vmbus unloading the session its previous incarnation left.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recovery {
    pub(crate) unload_sent: bool,
    /// Host messages of the old session dropped meanwhile.
    pub(crate) stale: u32,
}

impl Vmbus {
    /// At start: restart the drivers and unload the old session if this is
    /// a restart; else (or then) contact the host.
    pub(crate) fn start_session(&mut self, env: &mut dyn Env, previous: Option<SessionState>) {
        for driver in self.drivers.iter_mut() {
            // A new generation in every incarnation: what a driver saw of
            // the old session is never mistaken for the new one.
            driver.generation = self.session.starts.wrapping_shl(16);
        }
        if self.session.starts > 1 {
            println!(
                env,
                "restarted (start {}): recovering the bus; previous session {:?}",
                self.session.starts,
                previous
            );
            // synic's bindings belong to the old session.
            let restore = synic::Request::Restore {
                bindings: Vec::new(),
                opening: Vec::new(),
            };
            if let Err(error) = channels::SYNIC_CALL.call(env, &restore) {
                println!(env, "clearing synic's relid table failed: {:?}", error);
            }
            for d in 0..self.drivers.len() {
                let (name, child) = (self.drivers[d].wiring.name, self.drivers[d].wiring.child);
                if let Err(error) = env.restart(child) {
                    println!(env, "restarting {} failed: {:?}", name, error);
                }
            }
        }
        match previous {
            Some(SessionState::Connected {
                version,
                message_connection,
            }) => {
                self.version = Some(version);
                self.message_connection = message_connection;
                self.recovery = Some(Recovery {
                    unload_sent: true,
                    stale: 0,
                });
                println!(
                    env,
                    "unloading the previous session (VMBus {}, connection {})",
                    version,
                    message_connection
                );
                self.post_control(env, Unload::empty().as_bytes());
            }
            Some(SessionState::UnloadSent(version)) => {
                self.version = Some(version);
                self.recovery = Some(Recovery {
                    unload_sent: true,
                    stale: 0,
                });
                println!(
                    env,
                    "the previous incarnation sent Unload: waiting for its answer"
                );
            }
            Some(SessionState::ContactSent(version)) => {
                // Its VersionResponse says whether there is a session.
                self.version = Some(version);
                self.recovery = Some(Recovery {
                    unload_sent: false,
                    stale: 0,
                });
                println!(
                    env,
                    "the previous incarnation sent InitiateContact {}: waiting for its answer",
                    version
                );
            }
            Some(SessionState::None) => self.negotiate_from(env, 0),
            None if self.session.starts > 1 => {
                // An unreadable record after a restart: the host may hold
                // a session we cannot name. Contact anyway (a host that
                // refuses says so by not answering; logged at start).
                println!(env, "session record unreadable: contacting the host afresh");
                self.negotiate_from(env, 0)
            }
            None => self.negotiate_from(env, 0),
        }
    }

    /// A host message while the old session is being unloaded: only the
    /// answers that end it count; the rest belong to the old session.
    pub(crate) fn on_message_while_recovering(
        &mut self,
        env: &mut dyn Env,
        message: ChannelMessage,
    ) {
        let Some(mut recovery) = self.recovery else {
            return;
        };
        let answer = match &message {
            ChannelMessage::VersionResponse(r) => {
                Some((r.version_supported != 0, r.msg_conn_id.get()))
            }
            ChannelMessage::VersionResponse2(r) => {
                Some((r.version_supported != 0, r.msg_conn_id.get()))
            }
            _ => None,
        };
        match (message, answer) {
            (_, Some((supported, msg_conn_id))) if !recovery.unload_sent => {
                let version = self.version.unwrap_or(ProtocolVersion(0));
                if supported {
                    self.message_connection = version.message_connection_id(msg_conn_id);
                    recovery.unload_sent = true;
                    self.recovery = Some(recovery);
                    println!(
                        env,
                        "the previous contact was accepted: unloading that session (connection {})",
                        self.message_connection
                    );
                    self.post_control(env, Unload::empty().as_bytes());
                } else {
                    self.end_recovery(env, recovery);
                }
            }
            (ChannelMessage::UnloadResponse(_), _) if recovery.unload_sent => {
                self.end_recovery(env, recovery);
            }
            _ => {
                recovery.stale = recovery.stale.wrapping_add(1);
                self.recovery = Some(recovery);
            }
        }
    }

    fn end_recovery(&mut self, env: &mut dyn Env, recovery: Recovery) {
        self.recovery = None;
        self.version = None;
        self.message_connection = 0;
        self.phase = Phase::Disconnected;
        let elapsed = env.now_ns().saturating_sub(self.started_ns);
        println!(
            env,
            "previous session ended {} ms after vmbus started ({} stale host messages dropped)",
            elapsed / 1_000_000,
            recovery.stale
        );
        self.negotiate_from(env, 0);
    }

    /// What the host holds of our session now, for the record.
    pub(crate) fn session_state(&self) -> Option<SessionState> {
        if let Some(recovery) = self.recovery {
            // The record keeps naming the old session until it is unloaded.
            return recovery
                .unload_sent
                .then_some(SessionState::UnloadSent(self.version?));
        }
        Some(match self.phase {
            Phase::Negotiating { index } => {
                SessionState::ContactSent(negotiation_order(OFFER_6_0)[index])
            }
            Phase::Unloading { unload_sent: true } => {
                SessionState::UnloadSent(self.version.unwrap_or(ProtocolVersion(0)))
            }
            Phase::RequestingOffers | Phase::Running | Phase::Unloading { .. } => {
                SessionState::Connected {
                    version: self.version.unwrap_or(ProtocolVersion(0)),
                    message_connection: self.message_connection,
                }
            }
            Phase::Unloaded | Phase::Disconnected => SessionState::None,
        })
    }

    /// synic was restarted (its news came through the queue, behind every
    /// message the old synic queued): give it back the relid table.
    pub(crate) fn on_synic_restarted(&mut self, env: &mut dyn Env) {
        let mut bindings = Vec::new();
        let mut opening = Vec::new();
        for (d, k) in
            (0..self.drivers.len()).flat_map(|d| (0..=MAX_SUB_CHANNELS).map(move |k| (d, k)))
        {
            let Some(channel) = self.record(d, k) else {
                continue;
            };
            if channel.bound {
                let (monitor_id, interrupt_page_bit) = self.signalling(d, k);
                let _ = bindings.push(synic::RestoredBinding {
                    relid: channel.offer.relid,
                    connection_id: channel.offer.connection_id,
                    driver: self.drivers[d].wiring.id,
                    channel: k as u8,
                    monitor_id,
                    interrupt_page_bit,
                });
            } else if channel.open_pending.is_some() {
                let _ = opening.push(channel.offer.relid);
            }
        }
        let (bound, opened) = (bindings.len(), opening.len());
        let restore = synic::Request::Restore { bindings, opening };
        match channels::SYNIC_CALL.call(env, &restore) {
            Ok(synic::Reply::Done) => println!(
                env,
                "synic restarted: relid table restored ({} bound, {} opening)", bound, opened
            ),
            other => println!(
                env,
                "synic restarted; restoring its table failed: {:?}", other
            ),
        }
        self.counters.synic_restarts = self.counters.synic_restarts.wrapping_add(1);
    }
}
