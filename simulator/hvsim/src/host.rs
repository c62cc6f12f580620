//! The hypervisor half of the simulated host: the guest's synic plus the
//! connection table that HvPostMessage and HvSignalEvent address. Message
//! ports hold a bounded queue of posted messages (a full queue answers
//! HV_STATUS_INSUFFICIENT_BUFFERS, as a port without free message buffers
//! does); event ports count signals. The VMBus server drains both.

use crate::hypercall::{self, Request};
use crate::synic::{Exception, QueuedMessage, Synic};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::{call_code, message_type, HvStatus, HypercallResult};

/// What a connection ID leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Accepts HvPostMessage; holds at most `capacity` undrained messages.
    Message { capacity: usize },
    /// Accepts HvSignalEvent with flag numbers below `flag_count`.
    Event { flag_count: u16 },
}

struct Port {
    kind: PortKind,
    messages: VecDeque<Vec<u8>>,
    signals: u64,
}

/// Counters for the hypercall layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallStats {
    pub calls: u64,
    pub failures: u64,
    pub insufficient_buffers: u64,
    pub invalid_connection: u64,
}

/// The guest's synic and the host's ports.
pub struct Host<M: GuestMemory> {
    pub memory: M,
    pub synic: Synic,
    ports: BTreeMap<u32, Port>,
    pub stats: HypercallStats,
    /// The status of the most recent hypercall (for tests and logs).
    pub last_status: HvStatus,
    /// The partition's PostMessages privilege (without it HvPostMessage
    /// answers AccessDenied).
    pub may_post_messages: bool,
    /// The partition's SignalEvents privilege.
    pub may_signal_events: bool,
}

impl<M: GuestMemory> Host<M> {
    pub fn new(memory: M) -> Self {
        Host {
            memory,
            synic: Synic::new(),
            ports: BTreeMap::new(),
            stats: HypercallStats::default(),
            last_status: HvStatus::SUCCESS,
            may_post_messages: true,
            may_signal_events: true,
        }
    }

    /// Creates (or replaces) the port behind `connection_id`.
    pub fn open_port(&mut self, connection_id: u32, kind: PortKind) {
        self.ports.insert(
            connection_id,
            Port {
                kind,
                messages: VecDeque::new(),
                signals: 0,
            },
        );
    }

    /// Deletes a port; later calls to it fail with InvalidConnectionId.
    pub fn close_port(&mut self, connection_id: u32) {
        self.ports.remove(&connection_id);
    }

    pub fn has_port(&self, connection_id: u32) -> bool {
        self.ports.contains_key(&connection_id)
    }

    /// The oldest undrained message posted to `connection_id`.
    pub fn take_posted(&mut self, connection_id: u32) -> Option<Vec<u8>> {
        self.ports.get_mut(&connection_id)?.messages.pop_front()
    }

    /// Messages waiting in a port.
    pub fn posted_len(&self, connection_id: u32) -> usize {
        self.ports
            .get(&connection_id)
            .map_or(0, |p| p.messages.len())
    }

    /// Signals received on an event port since the last call.
    pub fn take_signals(&mut self, connection_id: u32) -> u64 {
        self.ports
            .get_mut(&connection_id)
            .map_or(0, |p| core::mem::take(&mut p.signals))
    }

    pub fn msr_read(&mut self, msr: u32) -> Result<u64, Exception> {
        self.synic.msr_read(msr)
    }

    pub fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), Exception> {
        self.synic.msr_write(&self.memory, msr, value)
    }

    /// A hypercall from the guest; returns RAX or the exception raised.
    pub fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, Exception> {
        if !self.synic.hypercalls_enabled() {
            // No hypercall page: the call instruction faults.
            return Err(Exception::InvalidOpcode);
        }
        self.stats.calls += 1;
        let _ = output;
        // The control word first, then the partition's privilege for the
        // call (before its input is even read), then the input, then what
        // the call addresses (docs/hypervisor-transport.md section 5.3).
        let status = match hypercall::check_control(control) {
            Err(status) => status,
            Ok(code) if !self.privileged(code) => HvStatus::ACCESS_DENIED,
            Ok(code) => match hypercall::decode_input(&self.memory, code, control, input) {
                Ok(request) => self.execute(request),
                Err(status) => status,
            },
        };
        if status != HvStatus::SUCCESS {
            self.stats.failures += 1;
            match status {
                HvStatus::INSUFFICIENT_BUFFERS => self.stats.insufficient_buffers += 1,
                HvStatus::INVALID_CONNECTION_ID => self.stats.invalid_connection += 1,
                _ => {}
            }
        }
        self.last_status = status;
        Ok(HypercallResult::new(status, 0).0)
    }

    fn privileged(&self, code: u16) -> bool {
        match code {
            call_code::POST_MESSAGE => self.may_post_messages,
            call_code::SIGNAL_EVENT => self.may_signal_events,
            _ => false,
        }
    }

    fn execute(&mut self, request: Request) -> HvStatus {
        match request {
            Request::PostMessage {
                connection_id,
                payload,
                ..
            } => {
                let Some(port) = self.ports.get_mut(&connection_id) else {
                    return HvStatus::INVALID_CONNECTION_ID;
                };
                let PortKind::Message { capacity } = port.kind else {
                    return HvStatus::INVALID_PORT_ID;
                };
                if port.messages.len() >= capacity {
                    return HvStatus::INSUFFICIENT_BUFFERS;
                }
                port.messages.push_back(payload);
                HvStatus::SUCCESS
            }
            Request::SignalEvent {
                connection_id,
                flag_number,
            } => {
                let Some(port) = self.ports.get_mut(&connection_id) else {
                    return HvStatus::INVALID_CONNECTION_ID;
                };
                let PortKind::Event { flag_count } = port.kind else {
                    return HvStatus::INVALID_PORT_ID;
                };
                if flag_number >= flag_count {
                    return HvStatus::INVALID_PARAMETER;
                }
                port.signals += 1;
                HvStatus::SUCCESS
            }
        }
    }

    /// Sends a VMBus message to the guest on `sint` (queued while the slot
    /// is busy).
    pub fn send_message(&mut self, sint: u8, payload: &[u8]) {
        self.synic.post(
            &self.memory,
            sint,
            QueuedMessage {
                message_type: message_type::VMBUS,
                origin: 0,
                payload: payload.to_vec(),
            },
        );
    }

    /// Sets a guest event flag (a channel interrupt).
    pub fn signal_guest(&mut self, sint: u8, flag: u16) -> bool {
        self.synic.signal_event(&self.memory, sint, flag)
    }

    pub fn take_interrupt(&mut self) -> Option<u8> {
        self.synic.take_interrupt()
    }

    /// The host's clock moved to `now_ns` (ns since the partition started).
    pub fn advance_clock(&mut self, now_ns: u64) {
        self.synic.advance(&self.memory, now_ns);
    }

    /// The host's TSC-to-reference-time pair (the reference TSC page's).
    pub fn set_tsc_clock(&mut self, clock: Option<hyperv_defs::reference_tsc::TscClock>) {
        self.synic.set_tsc_clock(&self.memory, clock);
    }
}
