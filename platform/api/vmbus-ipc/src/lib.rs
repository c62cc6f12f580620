//! The IPC interfaces of the VMBus components, as postcard-encoded enums.
//!
//! These are the contracts between separately isolated components; each
//! side decodes what it receives and refuses what does not decode. Nothing
//! here comes from the host: host data is parsed by `vmbus-protocol` inside
//! the component that received it, and only validated values cross IPC.
//!
//! - [`hypervisor`]: what `synic` sends to the hypervisor boundary.
//!
//! Who talks to whom (priorities rise in this order, calls go upwards):
//! clients -> VSCs -> vmbus -> synic -> the hypervisor (hvsim in test images).
//! - [`synic`]: served by `synic`; called by `vmbus` (post messages, bind
//!   channels) and by each VSC (signal the host for its own channel).
//! - [`bus`]: served by `vmbus`; called by VSCs (query the offer, open,
//!   close, report versions) and by clients (status view, unload).
//! - [`shutdown`], [`timesync`], [`kvp`]: served by those VSCs; called by
//!   clients.
//! - [`framebuffer`], [`keyboard`], [`mouse`]: served by the console
//!   devices' VSCs (synthetic video, keyboard, mouse); called by the
//!   terminal (docs/console.md).
//!
//! Control messages travel from `synic` to `vmbus` through an SPSC queue
//! (`platform/api/spsc-queue`) in the region `synic_messages`: each queue entry
//! is one whole 256-byte message slot as synic copied it out of the SIMP
//! page, slot size [`MESSAGE_SLOT_BYTES`] + the queue's length word.
#![no_std]
#![forbid(unsafe_code)]
// These enums live briefly on the stack around an encode or decode; boxing
// the large variants would need an allocator for no gain.
#![allow(clippy::large_enum_variant)]

use component_api::Protocol;
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Bytes of one synic message slot (hv_message).
pub const MESSAGE_SLOT_BYTES: usize = 256;
/// The queue slot size for the synic -> vmbus message queue.
pub const MESSAGE_QUEUE_SLOT: usize = 264;
/// The largest payload of a posted message (HvPostMessage).
pub const MAX_POST_PAYLOAD: usize = 240;
/// The message type of the queue entry a restarted `synic` puts first in
/// the queue: "I was restarted; my bindings are gone: restore them". synic
/// queues only VMBus (type 1) slots from the host, so no host message can
/// carry this type.
pub const SYNIC_RESTARTED_MESSAGE_TYPE: u32 = 0x5359_4e52;
/// Component names (the system description's limit).
pub type Name = String<32>;
/// A GUID in standard (RFC 4122, big-endian) byte order.
pub type Guid = [u8; 16];

/// A VMBus driver of the system, by its position among the description's
/// `[[driver]]`s: the bus manager and synic get the same generated table
/// (`drivers::DRIVERS`), so this is how they name a driver to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DriverId(pub u8);

// A VSC's rings are four regions: the guest-to-host ("out") ring's 4 KiB
// control page and data area, then the host-to-guest ("in") ring's; their
// sizes are the driver's `ring_out` and `ring_in` (generated into the bus
// manager's `drivers::DRIVERS` and the driver's `driver` module). The ring
// GPADL lists their pages in that order, and the bus manager passes the
// out ring's pages as the downstream offset.

/// The hypervisor interface as an IPC protocol: what `synic` sends on its
/// `hypervisor` call end. The server is the simulated host's PD in a test
/// image, the hosted runtime's transport client when hosted (it translates
/// these into the records of `docs/hypervisor-transport.md`), or a
/// kernel-extension proxy on real Hyper-V. The synic interrupt arrives as a
/// notification on synic's `hypervisor_interrupt` end.
pub mod hypervisor {
    use super::*;

    /// The hypervisor interface protocol (`protocol = "hypervisor"`).
    pub struct Hypervisor;

    impl Protocol for Hypervisor {
        const NAME: &'static str = "hypervisor";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] =
            &["msr_read", "msr_write", "hypercall", "end_of_interrupt"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::MsrRead { .. } => 0,
                Request::MsrWrite { .. } => 1,
                Request::Hypercall { .. } => 2,
                Request::EndOfInterrupt => 3,
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        MsrRead {
            msr: u32,
        },
        MsrWrite {
            msr: u32,
            value: u64,
        },
        /// RCX = control, RDX = input (GPA or fast value), R8 = output.
        Hypercall {
            control: u64,
            input: u64,
            output: u64,
        },
        /// End of the synic interrupt in service (not needed with auto-EOI).
        EndOfInterrupt,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        /// An MSR's value, or a hypercall's result value (RAX).
        Value(u64),
        Done,
        /// The processor would have raised #GP.
        GeneralProtection,
        /// The processor would have raised #UD.
        InvalidOpcode,
    }
}

pub mod synic {
    use super::*;

    /// What `synic` serves (`protocol = "synic"`).
    pub struct Synic;

    impl Protocol for Synic {
        const NAME: &'static str = "synic";
        // 2: sub-channels (Bind's channel index, Pending). 3: SetTimeout
        // (and the timer counters in Status).
        const VERSION: u16 = 3;
        const OPERATIONS: &'static [&'static str] = &[
            "post_message",
            "bind",
            "unbind",
            "signal_host",
            "status",
            "opening",
            "restore",
            "pending",
            "set_timeout",
        ];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::PostMessage { .. } => 0,
                Request::Bind { .. } => 1,
                Request::Unbind { .. } => 2,
                Request::SignalHost { .. } => 3,
                Request::Status => 4,
                Request::Opening { .. } => 5,
                Request::Restore { .. } => 6,
                Request::Pending => 7,
                Request::SetTimeout { .. } => 8,
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// vmbus: HvPostMessage of a VMBus message (type 1) to `connection_id`.
        PostMessage {
            connection_id: u32,
            payload: Vec<u8, MAX_POST_PAYLOAD>,
        },
        /// vmbus: the events of `relid` go to the VSC `driver`, as events
        /// of its channel `channel` (0 its primary, K its sub-channel K:
        /// the VSC reads which of its channels fired with
        /// [`Request::Pending`]), which it may
        /// then signal `connection_id`: through the monitor page's pending
        /// bit `monitor_id` if the offer allocated one (no hypercall), else
        /// HvSignalEvent; first setting the relid's bit in the interrupt
        /// page's send half if `interrupt_page_bit` (a channel without a
        /// dedicated interrupt, on a version whose InitiateContact named
        /// the interrupt page, as Linux does).
        Bind {
            relid: u32,
            connection_id: u32,
            driver: DriverId,
            channel: u8,
            monitor_id: Option<u8>,
            interrupt_page_bit: bool,
        },
        /// vmbus: forget a relid (rescind, close, restart).
        Unbind { relid: u32 },
        /// A VSC: signal the host for its channel (HvSignalEvent). Refused
        /// unless `connection_id` is bound to this caller; answered
        /// [`Reply::ChannelClosed`] if it was until an `Unbind`.
        SignalHost { connection_id: u32 },
        /// vmbus: an OpenChannel for `relid` goes out now. The host may
        /// signal the channel before its OpenResult arrives (the protocol
        /// allows it): such events are early, not stray, and the VSC is
        /// told at `Bind`. Ends at `Bind` or `Unbind` of the relid (vmbus
        /// sends `Unbind` when the open fails or the offer is rescinded
        /// first).
        Opening { relid: u32 },
        /// vmbus: counters for the status view.
        Status,
        /// vmbus: the whole relid table, replacing synic's: after synic was
        /// restarted (its [`SYNIC_RESTARTED_MESSAGE_TYPE`] entry) every
        /// binding and opening vmbus holds; at the start of a new bus
        /// session (vmbus restarted) none. Bits set in the event page for a
        /// bound relid are cleared and its VSC notified; each bound
        /// connection is signalled once (a VSC's signal may have been lost
        /// while synic was down: a spurious one costs the host a look).
        Restore {
            bindings: Vec<RestoredBinding, MAX_RESTORED>,
            opening: Vec<u32, MAX_RESTORED>,
        },
        /// A VSC: which of its channels had events since it last asked
        /// (bit K: channel K; 0 the primary), cleared by the asking. synic
        /// notifies the VSC once per batch; a bit set before a notification
        /// is read after it.
        Pending,
        /// A VSC: wake me (a notification on the channel synic already
        /// notifies me on) once the clock (`Env::now_ns`, the one all
        /// components share) reaches `deadline_ns`; 0 cancels. One
        /// deadline per VSC: a new call replaces the last. synic runs
        /// synthetic timer 0 for the earliest deadline; a woken VSC finds
        /// no channel pending and checks its own deadlines. The deadline
        /// is forgotten when it wakes the VSC, and when synic restarts: a
        /// restarted synic wakes every VSC once, and a VSC woken with no
        /// channel pending asks again.
        SetTimeout { deadline_ns: u64 },
    }

    /// The most bindings (and openings) one `Restore` carries.
    pub const MAX_RESTORED: usize = 32;

    /// One binding in a [`Request::Restore`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RestoredBinding {
        pub relid: u32,
        pub connection_id: u32,
        pub driver: DriverId,
        /// As in [`Request::Bind`]: the driver's channel index.
        pub channel: u8,
        /// As in [`Request::Bind`]: how the channel is signalled.
        pub monitor_id: Option<u8>,
        pub interrupt_page_bit: bool,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Done,
        /// The hypercall's status code when it was not success (e.g.
        /// InsufficientBuffers 0x13: retry later; InvalidConnectionId 0x12).
        HypercallFailed {
            status: u16,
        },
        Status(Status),
        /// The caller's channels with events since it last asked (bit K:
        /// channel K).
        Pending(u16),
        /// SignalHost for a channel vmbus has just unbound (rescinded,
        /// closed or restarting): nothing was signalled, and that is
        /// expected; the VSC hears about the channel from vmbus.
        ChannelClosed,
        /// SetTimeout: the hypervisor offers no synthetic timer (or synic
        /// is not enabled); nothing will wake the VSC at its deadline.
        NoTimer,
    }

    /// The status of a hypercall the hypervisor interface could not make
    /// (it raised #GP/#UD, or synic is not enabled). Not an `HV_STATUS`.
    pub const STATUS_NO_HYPERCALL: u16 = 0xFFFF;

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Status {
        /// VMBus messages copied out of the SINT2 slot and queued for vmbus.
        pub messages_received: u32,
        pub messages_posted: u32,
        /// Channel events passed on to the VSC bound to the relid.
        pub events_delivered: u32,
        pub signals_sent: u32,
        pub signals_refused: u32,
        pub bound_channels: u8,
        /// Event-flag bits set for relids no VSC is bound to and none
        /// is opening (cleared).
        pub stray_events: u32,
        /// Event-flag bits set for a relid between `Opening` and `Bind`
        /// (cleared; the VSC is notified at `Bind`).
        pub early_events: u32,
        /// SignalHost calls for a channel unbound since (answered
        /// `ChannelClosed`, not counted as refused).
        pub signals_after_unbind: u32,
        /// Slot messages that were not VMBus messages (cleared, not queued).
        pub messages_dropped: u32,
        /// Times a message had to wait in its slot for queue space.
        pub queue_full_waits: u32,
        /// EOM writes (a message was pending behind the one consumed).
        pub eoms: u32,
        /// Hypercalls that returned a failure status.
        pub hypercall_failures: u32,
        /// This synic found the synic already armed at start: it is a
        /// restarted incarnation (its counters start again at zero).
        pub restarted: bool,
        /// `Restore` requests served.
        pub restores: u32,
        /// Of `signals_sent`, those made through a monitor page's pending bit.
        pub monitor_signals: u32,
        /// Timer-expired messages taken from the timer SINT's slot.
        pub timer_messages: u32,
        /// VSCs woken because their `SetTimeout` deadline passed.
        pub timeouts_delivered: u32,
        /// Times synthetic timer 0 was (re)programmed.
        pub timer_programmed: u32,
    }

    /// The wakeup a VSC has asked synic for (`SetTimeout`). It is asked
    /// again only for an earlier deadline: asking for every later one
    /// would be a call per event under load, and an early wakeup costs
    /// only a look and a new ask. Nothing is cancelled: a wakeup with
    /// nothing due is harmless.
    #[derive(Debug, Default)]
    pub struct Wakeup {
        asked: Option<u64>,
        no_timer: bool,
    }

    impl Wakeup {
        /// Synic holds no wakeup for us now (it woke us, or it restarted).
        pub fn forget(&mut self) {
            self.asked = None;
        }

        /// Have synic wake us by `wanted` (none: nothing is due), asking it
        /// through `ask` only if it holds no wakeup by then. Synic's answer
        /// when it did not take the deadline: `NoTimer` once (nothing will
        /// wake us; it is not asked again), or a failure.
        pub fn keep<E>(
            &mut self,
            now_ns: u64,
            wanted: Option<u64>,
            ask: impl FnOnce(&Request) -> Result<Reply, E>,
        ) -> Option<Result<Reply, E>> {
            if self.no_timer {
                return None;
            }
            if self.asked.is_some_and(|at| at <= now_ns) {
                // Passed: synic has woken us for it (or is about to).
                self.asked = None;
            }
            let deadline = wanted?.max(now_ns + 1);
            if self.asked.is_some_and(|at| at <= deadline) {
                return None;
            }
            match ask(&Request::SetTimeout {
                deadline_ns: deadline,
            }) {
                Ok(Reply::Done) => {
                    self.asked = Some(deadline);
                    None
                }
                Ok(Reply::NoTimer) => {
                    self.no_timer = true;
                    Some(Ok(Reply::NoTimer))
                }
                other => Some(other),
            }
        }
    }
}

pub mod bus {
    use super::*;

    /// What the bus manager serves (`protocol = "bus"`).
    pub struct Bus;

    impl Protocol for Bus {
        const NAME: &'static str = "bus";
        // 2: data buffers (create_gpadl, teardown_gpadl, buffer), target
        // VP (retarget, interrupt). 3: sub-channels (query, open and close
        // take a channel index).
        const VERSION: u16 = 3;
        const OPERATIONS: &'static [&'static str] = &[
            "query",
            "open",
            "close",
            "report_versions",
            "device",
            "unload",
            "create_gpadl",
            "teardown_gpadl",
            "buffer",
            "retarget",
            "interrupt",
        ];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Query { .. } => 0,
                Request::Open { .. } => 1,
                Request::Close { .. } => 2,
                Request::ReportVersions { .. } => 3,
                Request::Device { .. } => 4,
                Request::Unload { .. } => 5,
                Request::CreateGpadl { .. } => 6,
                Request::TeardownGpadl { .. } => 7,
                Request::Buffer { .. } => 8,
                Request::Retarget { .. } => 9,
                Request::Interrupt => 10,
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// A VSC: what was I offered, and in what state is my channel
        /// `channel` (0: the primary; K: sub-channel K, which the VSC asks
        /// its device for in the device's own protocol)?
        Query { channel: u8 },
        /// A VSC: open my channel `channel` with its rings (the primary's
        /// `ring_*` regions, sub-channel K's `ring_*K`). A sub-channel
        /// opens only while the primary is open, and closes with it.
        Open {
            channel: u8,
            user_data: Vec<u8, 120>,
        },
        /// A VSC: close my channel `channel` (the primary closes its
        /// sub-channels first).
        Close { channel: u8 },
        /// A VSC: the versions it negotiated with the host, for the status view.
        ReportVersions {
            framework: (u16, u16),
            message: (u16, u16),
        },
        /// Anyone with a call channel: one row of the status view.
        Device { index: u8 },
        /// A client: close every channel, unload the bus, then power off
        /// with `power_off_code` if given.
        Unload { power_off_code: Option<u8> },
        /// A VSC, its channel open: describe its data buffer `buffer` (its
        /// `buffers[buffer]` of the description, mapped as `buffer<N>`) to
        /// the host in a GPADL of the channel. Accepted at once; the VSC is
        /// notified on `vmbus_event` when the host answers, and reads the
        /// outcome with [`Request::Buffer`]. The GPADL lasts until
        /// [`Request::TeardownGpadl`], the channel's close, its rescind or
        /// the VSC's restart.
        CreateGpadl { buffer: u8 },
        /// A VSC: tear the buffer's GPADL down. The memory is the host's
        /// until [`Request::Buffer`] says [`BufferState::Absent`] again.
        TeardownGpadl { buffer: u8 },
        /// A VSC: where its data buffer `buffer` is in its life.
        Buffer { buffer: u8 },
        /// A VSC, its channel open: move the channel's host interrupts to
        /// `target_vp` (ModifyChannel, VMBus 4.1+). From 5.3 the host
        /// answers and the VSC is notified; before, the move is assumed
        /// done (as Linux assumes). A reopen keeps the target.
        Retarget { target_vp: u32 },
        /// A VSC: which VP its channel's interrupts target.
        Interrupt,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InterruptInfo {
        /// The VP the host targets (OpenChannel's, or the last accepted
        /// ModifyChannel's).
        pub target_vp: u32,
        /// A ModifyChannel to this VP waits for its answer.
        pub retargeting: Option<u32>,
        /// The host refused the last ModifyChannel with this status.
        pub refused: Option<u32>,
    }

    /// A VSC's data buffer as the bus manager sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum BufferState {
        /// No GPADL describes it: the VSC may reuse the memory freely.
        Absent,
        /// GpadlHeader (and bodies) sent; waiting for GpadlCreated.
        Creating,
        /// The host holds it as `gpadl_id`, the id the VSC names to the
        /// device in the device's own protocol (e.g. NVSP's receive buffer).
        Created { gpadl_id: u32 },
        /// Teardown asked for (or the channel is closing); the host still
        /// holds the memory.
        TearingDown,
        /// The host refused the GPADL with this status (e.g. its GPADL
        /// memory limit), or the bus manager could not describe the buffer;
        /// `CreateGpadl` may be asked again.
        Failed { status: u32 },
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BufferInfo {
        pub state: BufferState,
        /// The buffer's size in bytes (from the description).
        pub bytes: u64,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ChannelState {
        /// No offer for this driver (yet, or any more).
        NotOffered,
        Offered,
        /// GPADL and OpenChannel in flight.
        Opening,
        Open,
        Closing,
        /// The host rescinded the offer; the VSC must stop using the rings.
        Rescinded,
        /// Open failed with this status; the VSC may try `Open` again.
        Failed {
            status: u32,
        },
        /// Faulted too often: held stopped.
        Held,
    }

    /// The channel index of a VSC's primary channel in `Query`, `Open`
    /// and `Close` (sub-channel K is index K).
    pub const PRIMARY: u8 = 0;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ChannelInfo {
        pub state: ChannelState,
        pub class: Guid,
        pub instance: Guid,
        pub relid: u32,
        /// Where the VSC signals the host (through synic).
        pub connection_id: u32,
        /// The offer's user-defined bytes (pipe mode for integration components).
        pub user_defined: Vec<u8, 120>,
        /// The negotiated VMBus protocol version (major << 16 | minor).
        pub vmbus_version: u32,
        /// Bumps on every new offer or reopen: a VSC that sees it change
        /// must reset its ring state.
        pub generation: u32,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DeviceStatus {
        pub driver: Name,
        /// 0 for a primary channel; K for sub-channel K (its row follows
        /// its primary's).
        pub sub_channel: u16,
        pub class: Guid,
        pub instance: Guid,
        pub relid: u32,
        pub state: ChannelState,
        pub vmbus_version: u32,
        pub framework_version: (u16, u16),
        pub message_version: (u16, u16),
        pub restarts: u32,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Channel(ChannelInfo),
        Accepted,
        Device(DeviceStatus),
        /// `Device { index }` past the last device.
        NoSuchDevice,
        Buffer(BufferInfo),
        Interrupt(InterruptInfo),
        Refused(Refusal),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Refusal {
        /// The request does not fit the channel's state (e.g. Open while open).
        WrongState,
        /// The caller is not a VSC of this bus.
        NotADriver,
        /// The host did not answer or the bus is unloading.
        Unavailable,
        /// The VSC has no data buffer of that index.
        NoSuchBuffer,
        /// The negotiated VMBus version has no such message (ModifyChannel
        /// before 4.1).
        Unsupported,
        /// The VSC has no channel of that index (beyond its description's
        /// `sub_channels`).
        NoSuchChannel,
    }
}

pub mod shutdown {
    use super::*;

    /// What the shutdown VSC serves its clients (`protocol = "shutdown"`).
    pub struct Shutdown;

    impl Protocol for Shutdown {
        const NAME: &'static str = "shutdown";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["pending"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Pending => 0,
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// Client: is a shutdown pending (the VSC notified us)?
        Pending,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Kind {
        PowerOff,
        Reboot,
        Hibernate,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        None,
        Requested {
            kind: Kind,
            force: bool,
            reason: String<64>,
        },
    }
}

pub mod timesync {
    use super::*;

    /// What the time-sync VSC serves its clients (`protocol = "timesync"`).
    pub struct TimeSync;

    impl Protocol for TimeSync {
        const NAME: &'static str = "timesync";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["now"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Now => 0,
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// Client: the current time as the host last told it.
        Now,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        NotSynced,
        Time {
            /// Host time in 100 ns units since 1601-01-01 UTC at the sample,
            /// advanced by the guest time elapsed since.
            now_100ns_since_1601: u64,
            /// Samples and syncs received.
            samples: u32,
            /// Guest monotonic nanoseconds of the last sample.
            last_sample_ns: u64,
        },
    }

    /// 100 ns units between 1601-01-01 and 1970-01-01.
    pub const UNIX_EPOCH_100NS: u64 = 116_444_736_000_000_000;

    /// A UTC calendar time, for printing.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CivilTime {
        pub year: i64,
        pub month: u8,
        pub day: u8,
        pub hour: u8,
        pub minute: u8,
        pub second: u8,
    }

    impl core::fmt::Display for CivilTime {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(
                f,
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                self.year, self.month, self.day, self.hour, self.minute, self.second
            )
        }
    }

    /// The calendar time of a Windows time (100 ns units since 1601-01-01
    /// UTC), proleptic Gregorian, leap seconds ignored.
    pub fn civil_time(time_100ns_since_1601: u64) -> CivilTime {
        let seconds = time_100ns_since_1601 / 10_000_000;
        let days = (seconds / 86_400) as i64;
        let of_day = seconds % 86_400;
        // Days since 1601-01-01 to days since 0000-03-01 (the era-based
        // civil-from-days algorithm counts years from March).
        let z = days + 584_694;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        CivilTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
        }
    }
}

pub mod kvp {
    use super::*;

    /// What the KVP VSC serves its clients (`protocol = "kvp"`).
    pub struct Kvp;

    impl Protocol for Kvp {
        const NAME: &'static str = "kvp";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["get", "set", "delete", "enumerate"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Get { .. } => 0,
                Request::Set { .. } => 1,
                Request::Delete { .. } => 2,
                Request::Enumerate { .. } => 3,
            }
        }
    }

    /// Key and value limits over IPC (UTF-8 bytes). The wire allows 512
    /// bytes of UTF-16 key and 2048 of value; longer pairs are refused.
    pub const MAX_KEY: usize = 128;
    pub const MAX_VALUE: usize = 512;

    /// The KVP pools (Hyper-V's numbering).
    pub const POOL_EXTERNAL: u8 = 0;
    pub const POOL_GUEST: u8 = 1;
    pub const POOL_AUTO: u8 = 2;
    pub const POOL_AUTO_EXTERNAL: u8 = 3;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        Get {
            pool: u8,
            key: String<MAX_KEY>,
        },
        Set {
            pool: u8,
            key: String<MAX_KEY>,
            value: String<MAX_VALUE>,
        },
        Delete {
            pool: u8,
            key: String<MAX_KEY>,
        },
        /// The `index`th pair of a pool, in insertion order.
        Enumerate {
            pool: u8,
            index: u16,
        },
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Value(String<MAX_VALUE>),
        Pair {
            key: String<MAX_KEY>,
            value: String<MAX_VALUE>,
        },
        Done,
        NotFound,
        /// The pool is full or the pool number is unknown.
        Refused,
    }
}

/// The synthetic video driver's service (`protocol = "framebuffer"`): the
/// client draws into the VRAM region (its own `rw` map; the driver holds
/// only its address) and tells the driver which rectangles changed. The
/// driver notifies its clients (`driver::CLIENT_EVENTS`) whenever the mode
/// changes (connected, restarted, resolution, the host asking for updates
/// again): the client then asks [`Request::Info`] and redraws everything.
pub mod framebuffer {
    use super::*;

    pub struct Framebuffer;

    impl Protocol for Framebuffer {
        const NAME: &'static str = "framebuffer";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["info", "flush", "pointer"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Info => 0,
                Request::Flush { .. } => 1,
                Request::Pointer { .. } => 2,
            }
        }
    }

    /// Rectangles one flush may name (more changes: send their union).
    pub const MAX_RECTS: usize = 8;
    /// Resolutions the driver reports from the host's list.
    pub const MAX_RESOLUTIONS: usize = 16;

    /// A screen rectangle in pixels; empty when `width` or `height` is 0.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Rect {
        pub x: u16,
        pub y: u16,
        pub width: u16,
        pub height: u16,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Resolution {
        pub width: u16,
        pub height: u16,
    }

    /// The screen as the driver and the host agreed it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Mode {
        /// Bumped on every change the client must redraw for (a new
        /// connection, a restart of the driver, a new resolution, the host
        /// asking for updates again).
        pub generation: u32,
        pub width: u16,
        pub height: u16,
        /// Bytes from one row to the next in VRAM.
        pub stride: u32,
        /// Bits per pixel (32: XRGB8888, little endian).
        pub depth_bits: u8,
        /// The negotiated synthvid version (major, minor).
        pub version: (u16, u16),
        /// Whether the host wants dirt (its last feature change); a flush
        /// while it does not is accepted and not sent.
        pub updates_wanted: bool,
        /// The host's supported resolutions (Windows 10 hosts), at most
        /// MAX_RESOLUTIONS of them; empty before 3.5.
        pub resolutions: Vec<Resolution, MAX_RESOLUTIONS>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// The current mode, or [`Reply::NotReady`].
        Info,
        /// These rectangles of VRAM changed (sent as one dirt message).
        Flush { rects: Vec<Rect, MAX_RECTS> },
        /// The pointer's hot spot, in screen pixels (sent as a pointer
        /// position; the host draws the pointer).
        Pointer { x: u16, y: u16, visible: bool },
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        /// The channel is not open and configured (yet, or any more).
        NotReady,
        Info(Mode),
        /// Flushed: the rectangles and bytes of VRAM the dirt message
        /// named (0 when the host wants no updates).
        Flushed {
            rects: u8,
            bytes: u32,
        },
        Done,
    }
}

/// A key event as the synthetic keyboard carries it: a scan code set 1
/// make code with its prefix, or a UTF-16 unit when `unicode`.
pub mod keyboard {
    use super::*;

    pub struct Keyboard;

    impl Protocol for Keyboard {
        const NAME: &'static str = "keyboard";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["next"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Next => 0,
            }
        }
    }

    /// Key events one reply carries.
    pub const MAX_KEYS: usize = 32;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Prefix {
        None,
        E0,
        E1,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyStroke {
        /// Set 1 make code (without the break bit), or the UTF-16 unit.
        pub code: u16,
        pub prefix: Prefix,
        /// Break (key up) rather than make.
        pub released: bool,
        /// `code` is a UTF-16 unit the host typed, not a scan code.
        pub unicode: bool,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        /// The oldest queued key events (the driver notifies its clients
        /// when it queues some).
        Next,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Keys {
            keys: Vec<KeyStroke, MAX_KEYS>,
            /// Events dropped since the last reply because the queue was
            /// full.
            dropped: u32,
        },
    }
}

/// Pointer events from the synthetic HID mouse, in absolute coordinates
/// scaled to 0..=[`mouse::AXIS_MAX`] whatever logical range the device's
/// report descriptor gives.
pub mod mouse {
    use super::*;

    pub struct Mouse;

    impl Protocol for Mouse {
        const NAME: &'static str = "mouse";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["next"];
        type Request = Request;
        type Reply = Reply;
        fn operation(request: &Request) -> usize {
            match request {
                Request::Next => 0,
            }
        }
    }

    pub const MAX_EVENTS: usize = 32;
    /// The top of both axes after scaling.
    pub const AXIS_MAX: u16 = 0x7fff;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PointerEvent {
        pub x: u16,
        pub y: u16,
        /// Bit 0 left, 1 right, 2 middle.
        pub buttons: u8,
        pub wheel: i8,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Request {
        Next,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        Events {
            events: Vec<PointerEvent, MAX_EVENTS>,
            dropped: u32,
        },
    }
}

#[cfg(test)]
mod tests {
    use synic::Wakeup;

    /// Keeps `wanted` at `now`; the deadline asked, if synic was asked.
    fn keep(
        wakeup: &mut Wakeup,
        now: u64,
        wanted: Option<u64>,
        answer: synic::Reply,
    ) -> Option<u64> {
        let mut asked = None;
        let _ = wakeup.keep::<()>(now, wanted, |request| {
            let synic::Request::SetTimeout { deadline_ns } = request else {
                panic!("asked {request:?}");
            };
            asked = Some(*deadline_ns);
            Ok(answer.clone())
        });
        asked
    }

    #[test]
    fn a_wakeup_is_asked_again_only_for_an_earlier_deadline_or_once_it_passed() {
        let mut wakeup = Wakeup::default();
        assert_eq!(keep(&mut wakeup, 10, None, synic::Reply::Done), None);
        assert_eq!(
            keep(&mut wakeup, 10, Some(100), synic::Reply::Done),
            Some(100)
        );
        assert_eq!(
            keep(&mut wakeup, 20, Some(150), synic::Reply::Done),
            None,
            "held"
        );
        assert_eq!(
            keep(&mut wakeup, 20, Some(60), synic::Reply::Done),
            Some(60)
        );
        // Passed: asked again for a later one.
        assert_eq!(
            keep(&mut wakeup, 70, Some(150), synic::Reply::Done),
            Some(150)
        );
        // Synic forgot it (woke us, restarted): asked again.
        wakeup.forget();
        assert_eq!(
            keep(&mut wakeup, 80, Some(150), synic::Reply::Done),
            Some(150)
        );
        // A deadline already due is asked for just after now.
        wakeup.forget();
        assert_eq!(
            keep(&mut wakeup, 200, Some(5), synic::Reply::Done),
            Some(201)
        );
    }

    #[test]
    fn without_a_timer_synic_is_not_asked_again_and_a_failure_is_asked_again() {
        let mut failing = Wakeup::default();
        let failed = failing.keep(0, Some(5), |_| Err::<synic::Reply, &str>("refused"));
        assert_eq!(failed, Some(Err("refused")));
        assert_eq!(keep(&mut failing, 0, Some(5), synic::Reply::Done), Some(5));

        let mut wakeup = Wakeup::default();
        let answer = wakeup.keep::<()>(0, Some(5), |_| Ok(synic::Reply::NoTimer));
        assert_eq!(answer, Some(Ok(synic::Reply::NoTimer)));
        assert_eq!(keep(&mut wakeup, 0, Some(1), synic::Reply::Done), None);
    }

    use super::*;

    /// The framed size of a message of `P` (header included).
    fn framed<P: Protocol, T: serde::Serialize>(value: &T) -> Option<usize> {
        let mut buffer = [0u8; component_api::MAX_MESSAGE];
        component_api::protocol::encode::<P, T>(&mut buffer, value).ok()
    }

    #[test]
    fn the_largest_messages_fit_a_protected_call() {
        let set = kvp::Request::Set {
            pool: kvp::POOL_GUEST,
            key: String::try_from("k".repeat(kvp::MAX_KEY).as_str()).unwrap(),
            value: String::try_from("v".repeat(kvp::MAX_VALUE).as_str()).unwrap(),
        };
        assert!(framed::<kvp::Kvp, _>(&set).is_some());
        let post = synic::Request::PostMessage {
            connection_id: 4,
            payload: Vec::from_slice(&[0xff; MAX_POST_PAYLOAD]).unwrap(),
        };
        assert!(framed::<synic::Synic, _>(&post).is_some());
        let info = bus::Reply::Channel(bus::ChannelInfo {
            state: bus::ChannelState::Failed { status: u32::MAX },
            class: [0xff; 16],
            instance: [0xff; 16],
            relid: u32::MAX,
            connection_id: u32::MAX,
            user_defined: Vec::from_slice(&[0xff; 120]).unwrap(),
            vmbus_version: u32::MAX,
            generation: u32::MAX,
        });
        assert!(framed::<bus::Bus, _>(&info).is_some());
        let mode = framebuffer::Reply::Info(framebuffer::Mode {
            generation: u32::MAX,
            width: u16::MAX,
            height: u16::MAX,
            stride: u32::MAX,
            depth_bits: u8::MAX,
            version: (u16::MAX, u16::MAX),
            updates_wanted: true,
            resolutions: Vec::from_slice(
                &[framebuffer::Resolution {
                    width: u16::MAX,
                    height: u16::MAX,
                }; framebuffer::MAX_RESOLUTIONS],
            )
            .unwrap(),
        });
        assert!(framed::<framebuffer::Framebuffer, _>(&mode).is_some());
        let flush = framebuffer::Request::Flush {
            rects: Vec::from_slice(
                &[framebuffer::Rect {
                    x: u16::MAX,
                    y: u16::MAX,
                    width: u16::MAX,
                    height: u16::MAX,
                }; framebuffer::MAX_RECTS],
            )
            .unwrap(),
        };
        assert!(framed::<framebuffer::Framebuffer, _>(&flush).is_some());
        let keys = keyboard::Reply::Keys {
            keys: Vec::from_slice(
                &[keyboard::KeyStroke {
                    code: u16::MAX,
                    prefix: keyboard::Prefix::E1,
                    released: true,
                    unicode: true,
                }; keyboard::MAX_KEYS],
            )
            .unwrap(),
            dropped: u32::MAX,
        };
        assert!(framed::<keyboard::Keyboard, _>(&keys).is_some());
        let events = mouse::Reply::Events {
            events: Vec::from_slice(
                &[mouse::PointerEvent {
                    x: u16::MAX,
                    y: u16::MAX,
                    buttons: u8::MAX,
                    wheel: i8::MIN,
                }; mouse::MAX_EVENTS],
            )
            .unwrap(),
            dropped: u32::MAX,
        };
        assert!(framed::<mouse::Mouse, _>(&events).is_some());
    }

    #[test]
    fn a_request_sent_to_the_wrong_server_is_refused_not_misread() {
        use component_api::{decode_request, protocol::encode, Refusal};
        // Untagged, the bus's `Device { index: 3 }` reads as synic's
        // `Opening { relid: 3 }`: a valid request of another protocol.
        let device = bus::Request::Device { index: 3 };
        let raw = postcard::to_allocvec(&device).unwrap();
        assert_eq!(
            postcard::from_bytes::<synic::Request>(&raw).unwrap(),
            synic::Request::Opening { relid: 3 }
        );
        let mut buffer = [0u8; 64];
        let used = encode::<bus::Bus, _>(&mut buffer, &device).unwrap();
        assert_eq!(
            decode_request::<synic::Synic>(&buffer[..used]),
            Err(Refusal::WRONG_PROTOCOL)
        );
        assert_eq!(decode_request::<bus::Bus>(&buffer[..used]), Ok(device));
    }

    #[test]
    fn every_protocol_has_its_own_tag() {
        let tags = [
            hypervisor::Hypervisor::TAG,
            synic::Synic::TAG,
            bus::Bus::TAG,
            shutdown::Shutdown::TAG,
            timesync::TimeSync::TAG,
            kvp::Kvp::TAG,
        ];
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn windows_times_become_calendar_times() {
        use timesync::{civil_time, CivilTime, UNIX_EPOCH_100NS};
        let at = |year, month, day, hour, minute, second| CivilTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        assert_eq!(civil_time(0), at(1601, 1, 1, 0, 0, 0));
        assert_eq!(civil_time(UNIX_EPOCH_100NS), at(1970, 1, 1, 0, 0, 0));
        // 2000-02-29 12:34:56 UTC = Unix 951827696.
        let leap_day = UNIX_EPOCH_100NS + 951_827_696 * 10_000_000;
        assert_eq!(civil_time(leap_day), at(2000, 2, 29, 12, 34, 56));
        // 2026-11-25 00:00:00 UTC = Unix 1795564800.
        let today = UNIX_EPOCH_100NS + 1_795_564_800 * 10_000_000;
        assert_eq!(civil_time(today), at(2026, 11, 25, 0, 0, 0));
        assert!(civil_time(u64::MAX).year > 60_000);
    }
}
