//! `synic`: the guest's synthetic interrupt controller, as its own component.
//!
//! What it does:
//! - At start it enables the synic through its `hypervisor` call channel
//!   (the `vmbus_ipc::hypervisor` protocol): GUEST_OS_ID, the hypercall page,
//!   SIMP and SIEFP (the guest physical addresses of its `synic_pages`
//!   region: message page at 0, event-flag page at 4096), SINT2 (the VMBus
//!   SINT: unmasked, auto-EOI) and SCONTROL.
//! - It enables the reference TSC page (HV_X64_MSR_REFERENCE_TSC) at the
//!   guest physical address of the `reference_tsc` region (known to it by
//!   address only; `timesync` maps it read-only and reads reference time
//!   from it). A hypervisor that refuses it costs only that: `timesync`
//!   then sees no valid page and relates no samples.
//! - On each synic interrupt (`hypervisor_interrupt`) it first
//!   test-and-clears the SINT2 event flags and notifies the VSC each set
//!   relid is bound to, then copies each pending SINT2 message slot out
//!   whole (256 bytes), frees the slot (type cleared, barrier, EOM only if
//!   the host marked more messages pending) and pushes the copy into the
//!   `synic_messages` queue for `vmbus`. A full queue leaves the message in
//!   its slot until `vmbus` has drained the queue and notified us: nothing
//!   is dropped.
//! - It serves `vmbus_ipc::synic::Request`: `PostMessage`, `Bind`, `Unbind`
//!   and `Status` from `vmbus`, and `SignalHost` from each VSC (who may
//!   ask for what is the description's `allow`, checked by the generated
//!   `serve::synic`); it honours `SignalHost` only for a connection ID that
//!   `vmbus` bound to that same VSC (a `DriverId`: its row of the generated
//!   `drivers::DRIVERS`). A VSC that signals a channel `vmbus` has just
//!   unbound (rescinded or closed: the VSC has not heard yet) is answered
//!   `ChannelClosed` and counted apart, not refused.
//! - A bound channel whose offer allocated a monitor ID is signalled
//!   through the monitor page, as Hyper-V expects: `SignalHost` sets the
//!   pending bit for the ID in the second monitor page's trigger group
//!   (`monitor_pages`, mapped read-write here only; the host scans it
//!   within the latency it wrote there) instead of HvSignalEvent. For a
//!   channel without a dedicated interrupt on a pre-5.0 connection it first
//!   sets the relid's bit in the interrupt page's send half (the third page
//!   of `monitor_pages`, named in InitiateContact), as Linux does.
//! - Events for a relid between `Opening` (vmbus sent OpenChannel) and its
//!   `Bind` (after OpenResult) are early, as the protocol allows: counted
//!   as such and passed on to the VSC at `Bind`. Only events for relids
//!   nobody bound or is opening are strays.
//!
//! - It owns synthetic timer 0 and serves `SetTimeout` to the VSCs: one
//!   deadline per VSC (on the clock all components share, `now_ns`), the
//!   timer programmed one-shot for the earliest. Its HVMSG_TIMER_EXPIRED
//!   messages come on their own SINT ([`TIMER_SINT`]), so a timer message
//!   never waits in a slot behind VMBus messages that wait for room in
//!   vmbus's queue, and SINT2's slot stays VMBus's alone. On one, each VSC
//!   whose deadline passed is notified on the channel synic already
//!   notifies it on, and the timer is programmed for the next deadline.
//!   A restarted synic has forgotten the deadlines: it stops the timer and
//!   wakes every VSC once, and a VSC woken with no channel pending asks
//!   again.
//!
//! What it trusts: `vmbus` for the relid -> VSC table (it is the authority
//! on channels); the hypervisor's replies as far as the call succeeded.
//! Nothing in a message slot is interpreted beyond its type: payloads are
//! parsed by `vmbus`. Event-flag bits that no VSC owns are cleared and
//! counted.
//!
//! What it writes: the SIMP/SIEFP pages (slot type, event flags), the
//! hypercall input page, the monitor pages' pending bits and the interrupt
//! page's send half, the `synic_messages` queue, and synic MSRs through
//! the hypervisor interface. It is the only component that can reach the
//! hypervisor.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, CallError, Channel, ChannelSet, Component, Env, Refusal, Region};
use core::sync::atomic::{fence, Ordering};
use hyperv_defs::reference_tsc::ReferenceTscMsr;
use hyperv_defs::{
    call_code, message_flags, message_type, msr, HvMessage, HvStatus, HypercallControl,
    HypercallMsr, HypercallResult, PostMessageInput, ScontrolFlags, SignalEventInput, SintFlags,
    SintMsr, StimerConfig, SynicPageMsr, EVENT_FLAGS_BYTES, MESSAGE_MAX_PAYLOAD, MESSAGE_SIZE,
    PAGE_SIZE,
};
use spsc_queue::{Producer, QueueError};
use vmbus_ipc::hypervisor;
use vmbus_ipc::synic::{Reply, Request, Status};
use zerocopy::IntoBytes;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The SINT VMBus delivers its messages and channel events on.
pub const VMBUS_SINT: u8 = 2;
/// The interrupt vector we program into SINT2. Any vector >= 16 works; the
/// runtime turns the interrupt into a notification on `hypervisor_interrupt`.
pub const VMBUS_VECTOR: u8 = 0x30;
/// The SINT synthetic timer 0 sends its expiration messages to.
pub const TIMER_SINT: u8 = 3;
/// The vector of [`TIMER_SINT`] (its own: an interrupt is a look at both
/// slots anyway, but a real APIC would tell them apart).
pub const TIMER_VECTOR: u8 = 0x31;
/// Reference time counts 100 ns units.
const REFERENCE_UNIT_NS: u64 = 100;
/// Timer messages handled per interrupt (each frees the slot; a host that
/// floods them waits for the next interrupt).
const TIMER_MESSAGES_PER_INTERRUPT: usize = 4;
/// Our guest OS identity (TLFS "Reporting the guest OS identity"): bit 63
/// marks an open-source OS, OS type 0x7F (not one of the registered ones),
/// version fields zero except the build number 1.
pub const GUEST_OS_ID: u64 = (1 << 63) | (0x7F << 56) | 1;

/// Layout of the `synic_pages` region.
pub const SIMP_OFFSET: usize = 0;
pub const SIEFP_OFFSET: usize = 4096;
/// Layout of the `hypercall_pages` region.
pub const HYPERCALL_INPUT_OFFSET: usize = 0;
pub const HYPERCALL_OUTPUT_OFFSET: usize = 4096;
/// The hypercall page the hypervisor overlays with its calling code (we
/// never execute it: hypercalls go through the hypervisor interface, but the
/// TLFS requires it enabled before any hypercall).
pub const HYPERCALL_CODE_OFFSET: usize = 8192;

/// The most channels bound at once (relids with a VSC).
pub const MAX_BINDINGS: usize = 64;
/// The most VSCs whose pending channels synic keeps (`vmbus::MAX_DRIVERS`).
pub const MAX_DRIVERS: usize = 16;
/// A VSC's channel indices fit its pending word (`Reply::Pending(u16)`).
pub const MAX_CHANNELS_PER_DRIVER: u8 = 16;
/// Event-flag bits of one SINT, by the protocol's relid numbering.
const EVENT_WORDS: usize = EVENT_FLAGS_BYTES / 4;

/// Layout of the `monitor_pages` region (the bus manager names the same
/// addresses in InitiateContact): monitor page 1 (host to guest), monitor
/// page 2 (guest to host: the pending bits we set), the interrupt page.
pub const MONITOR_PAGE2_OFFSET: usize = 4096;
pub const INTERRUPT_PAGE_SEND_OFFSET: usize = 2 * 4096 + 2048;

const SLOT_OFFSET: usize = SIMP_OFFSET + VMBUS_SINT as usize * MESSAGE_SIZE;
const TIMER_SLOT_OFFSET: usize = SIMP_OFFSET + TIMER_SINT as usize * MESSAGE_SIZE;
const FLAGS_OFFSET: usize = SIEFP_OFFSET + VMBUS_SINT as usize * EVENT_FLAGS_BYTES;

/// A relid whose events go to a VSC, and the connection that VSC may signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    relid: u32,
    connection_id: u32,
    /// synic's notify end to the VSC.
    notify: Channel,
    /// The VSC as it calls us.
    caller: Caller,
    /// The VSC's row in `drivers::DRIVERS` (its pending word).
    driver_row: usize,
    /// Which of the VSC's channels this is (0 its primary, K its
    /// sub-channel K): its bit in the VSC's pending word.
    channel: u8,
    /// Signal through this monitor ID's pending bit instead of a hypercall.
    monitor_id: Option<u8>,
    /// Mark the relid in the interrupt page's send half before signalling.
    interrupt_page_bit: bool,
}

/// The synic's resources once it is enabled.
struct Enabled {
    pages: Region,
    hypercall_pages: Region,
    hypercall_input_gpa: u64,
    queue: Producer,
    /// The synic was already armed with our pages at start: this is a
    /// restarted synic, and the pages hold the host's unseen work.
    rearmed: bool,
}

/// A relid vmbus is opening: events before its `Bind` are early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Opening {
    relid: u32,
    /// An event came for it; the VSC is notified at `Bind`.
    event_seen: bool,
}

pub struct Synic {
    enabled: Option<Enabled>,
    /// `monitor_pages`, if mapped writable and large enough.
    monitor_pages: Option<Region>,
    bindings: heapless::Vec<Binding, MAX_BINDINGS>,
    /// Relids between `Opening` and `Bind`/`Unbind`.
    opening: heapless::Vec<Opening, MAX_BINDINGS>,
    /// Bindings removed by `Unbind`, newest last: a VSC that signals its
    /// channel right after a rescind or close is told `ChannelClosed`,
    /// not refused. Bounded: the oldest is forgotten first.
    unbound: heapless::Deque<Binding, MAX_BINDINGS>,
    status: Status,
    /// Per VSC (its row in `drivers::DRIVERS`): which of its channels had
    /// events since it last asked (`Request::Pending`), bit K channel K.
    pending: [u16; MAX_DRIVERS],
    /// The last message could not be queued: it waits in its slot until
    /// vmbus drains the queue.
    waiting_for_queue_space: bool,
    /// Restarted: vmbus has not restored the relid table yet. Event flags
    /// of relids not (yet) known stay set for the restore, and a VSC's
    /// signal is deferred to it.
    awaiting_restore: bool,
    /// Restarted: the [`vmbus_ipc::SYNIC_RESTARTED_MESSAGE_TYPE`] entry
    /// still has to go into the queue, ahead of any message.
    restart_news_pending: bool,
    /// Synthetic timer 0 and its SINT are set up.
    timer_ready: bool,
    /// Per VSC (its row in `drivers::DRIVERS`): the deadline it asked to
    /// be woken at (`SetTimeout`), on the components' clock.
    deadlines: [Option<u64>; MAX_DRIVERS],
    /// The deadline timer 0 is programmed for, if it runs.
    timer_armed: Option<u64>,
}

/// Why a hypervisor request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HvError {
    Call(CallError),
    GeneralProtection,
    InvalidOpcode,
}

fn hypervisor_call(env: &mut dyn Env, request: hypervisor::Request) -> Result<u64, HvError> {
    match channels::HYPERVISOR.call(env, &request) {
        Ok(hypervisor::Reply::Value(value)) => Ok(value),
        Ok(hypervisor::Reply::Done) => Ok(0),
        Ok(hypervisor::Reply::GeneralProtection) => Err(HvError::GeneralProtection),
        Ok(hypervisor::Reply::InvalidOpcode) => Err(HvError::InvalidOpcode),
        Err(error) => Err(HvError::Call(error)),
    }
}

fn msr_read(env: &mut dyn Env, msr: u32) -> Result<u64, HvError> {
    hypervisor_call(env, hypervisor::Request::MsrRead { msr })
}

fn msr_write(env: &mut dyn Env, msr: u32, value: u64) -> Result<(), HvError> {
    hypervisor_call(env, hypervisor::Request::MsrWrite { msr, value }).map(|_| ())
}

/// A hypercall; the hypervisor's status, or the exception it raised
/// (reported as [`vmbus_ipc::synic::STATUS_NO_HYPERCALL`]).
fn hypercall(env: &mut dyn Env, control: HypercallControl, input: u64) -> HvStatus {
    let request = hypervisor::Request::Hypercall {
        control: control.0,
        input,
        output: 0,
    };
    match hypervisor_call(env, request) {
        Ok(rax) => HypercallResult(rax).status(),
        Err(_) => HvStatus(vmbus_ipc::synic::STATUS_NO_HYPERCALL),
    }
}

/// Frees a message slot the way the TLFS asks (type cleared, full barrier,
/// then the pending flag read) and writes EOM if the host has more
/// messages for it. Whether EOM was written.
fn free_slot(env: &mut dyn Env, pages: &Region, slot_offset: usize) -> bool {
    let Ok(type_word) = pages.atomic_u32(slot_offset + HvMessage::MESSAGE_TYPE_OFFSET) else {
        return false;
    };
    type_word.store(message_type::NONE, Ordering::Release);
    fence(Ordering::SeqCst);
    let Ok(flags_word) = pages.atomic_u32(slot_offset + 4) else {
        return false;
    };
    let flags = (flags_word.load(Ordering::Acquire) >> 8) as u8;
    if flags & message_flags::MESSAGE_PENDING == 0 {
        return false;
    }
    if let Err(error) = msr_write(env, msr::EOM, 0) {
        println!(env, "EOM failed: {:?}", error);
    }
    true
}

/// Points timer 0 at [`TIMER_SINT`] (one-shot, message mode, auto-enable:
/// writing a count starts it) and unmasks that SINT. Writing the config
/// with the enable bit clear also stops a timer a previous synic left
/// running. False (after saying why) if the hypervisor has no timer.
fn set_up_timer(env: &mut dyn Env) -> bool {
    let sint_msr = msr::SINT0 + TIMER_SINT as u32;
    let result = msr_read(env, sint_msr).and_then(|old| {
        let ours = SintMsr::VECTOR_MASK | SintFlags::all().bits();
        let value = (old & !ours) | SintMsr::new(TIMER_VECTOR, false, true).0;
        msr_write(env, sint_msr, value)?;
        msr_write(
            env,
            msr::STIMER0_CONFIG,
            StimerConfig::one_shot(TIMER_SINT, false, true).0,
        )?;
        msr_read(env, msr::TIME_REF_COUNT)
    });
    match result {
        Ok(_) => true,
        Err(error) => {
            println!(
                env,
                "no synthetic timer ({:?}): SetTimeout is answered NoTimer", error
            );
            false
        }
    }
}

fn reply_for(status: HvStatus) -> Reply {
    if status == HvStatus::SUCCESS {
        Reply::Done
    } else {
        Reply::HypercallFailed { status: status.0 }
    }
}

/// One register of the enable sequence: its name, number, how the new
/// value is made from the old value and a GPA, and that GPA.
type EnableStep = (&'static str, u32, fn(u64, u64) -> u64, u64);

/// Enable the synic; `None` (after saying why) if the description or the
/// hypervisor does not let us.
fn enable(env: &mut dyn Env) -> Option<Enabled> {
    let pages = env.region(regions::SYNIC_PAGES);
    let hypercall_pages = env.region(regions::HYPERCALL_PAGES);
    let (Some(pages_gpa), Some(hypercall_gpa)) =
        (pages.guest_physical(), hypercall_pages.guest_physical())
    else {
        println!(env, "synic_pages and hypercall_pages must be host visible");
        return None;
    };
    if pages.len() < SIEFP_OFFSET + PAGE_SIZE as usize
        || hypercall_pages.len() < HYPERCALL_CODE_OFFSET + PAGE_SIZE as usize
        || !pages_gpa.is_multiple_of(PAGE_SIZE)
        || !hypercall_gpa.is_multiple_of(PAGE_SIZE)
        || !pages.writable()
        || !hypercall_pages.writable()
    {
        println!(env, "synic_pages or hypercall_pages too small or misplaced");
        return None;
    }
    let queue = match Producer::new(
        env.region(regions::SYNIC_MESSAGES),
        vmbus_ipc::MESSAGE_QUEUE_SLOT,
    ) {
        Ok(queue) => queue,
        Err(error) => {
            println!(env, "synic_messages cannot hold the queue: {:?}", error);
            return None;
        }
    };
    // Restarted? Then the hypervisor still has our pages armed, and what
    // they hold is the host's: a message in the slot, flags of channel
    // events nobody has seen. Only fresh pages are zeroed (no stale message
    // or flag may be mistaken for the host's).
    let mut armed_at = |number: u32, gpa: u64| {
        msr_read(env, number).is_ok_and(|value| {
            let page = SynicPageMsr(value);
            page.enabled() && page.gpa() == gpa
        })
    };
    let rearm = armed_at(msr::SIMP, pages_gpa + SIMP_OFFSET as u64)
        && armed_at(msr::SIEFP, pages_gpa + SIEFP_OFFSET as u64);
    if !rearm {
        let zero = [0u8; 256];
        for offset in (0..2 * PAGE_SIZE as usize).step_by(zero.len()) {
            let _ = pages.write(offset, &zero);
        }
    }

    let steps: [EnableStep; 6] = [
        ("GUEST_OS_ID", msr::GUEST_OS_ID, |_, _| GUEST_OS_ID, 0),
        (
            "HYPERCALL",
            msr::HYPERCALL,
            |old, gpa| (old & HypercallMsr::RESERVED_PRESERVE) | (gpa & HypercallMsr::GPN_MASK) | 1,
            hypercall_gpa + HYPERCALL_CODE_OFFSET as u64,
        ),
        (
            "SIMP",
            msr::SIMP,
            |old, gpa| (old & 0xFFE) | SynicPageMsr::new(gpa, true).0,
            pages_gpa + SIMP_OFFSET as u64,
        ),
        (
            "SIEFP",
            msr::SIEFP,
            |old, gpa| (old & 0xFFE) | SynicPageMsr::new(gpa, true).0,
            pages_gpa + SIEFP_OFFSET as u64,
        ),
        (
            "SINT2",
            msr::SINT0 + VMBUS_SINT as u32,
            |old, _| {
                let ours = SintMsr::VECTOR_MASK | SintFlags::all().bits();
                (old & !ours) | SintMsr::new(VMBUS_VECTOR, false, true).0
            },
            0,
        ),
        (
            "SCONTROL",
            msr::SCONTROL,
            |old, _| old | ScontrolFlags::ENABLE.bits(),
            0,
        ),
    ];
    for (name, number, compose, gpa) in steps {
        // Read first: the reserved bits of these registers are RsvdP.
        let old = if number == msr::GUEST_OS_ID {
            0
        } else {
            match msr_read(env, number) {
                Ok(value) => value,
                Err(error) => {
                    println!(env, "reading {} failed: {:?}", name, error);
                    return None;
                }
            }
        };
        if let Err(error) = msr_write(env, number, compose(old, gpa)) {
            println!(env, "writing {} failed: {:?}", name, error);
            return None;
        }
    }
    match msr_read(env, msr::HYPERCALL) {
        Ok(value) if HypercallMsr(value).enabled() => {}
        other => {
            println!(env, "the hypercall page did not enable: {:?}", other);
            return None;
        }
    }
    println!(
        env,
        "synic {}: SIMP {:#x}, SIEFP {:#x}, SINT{} vector {:#x}",
        if rearm {
            "re-armed after a restart"
        } else {
            "enabled"
        },
        pages_gpa + SIMP_OFFSET as u64,
        pages_gpa + SIEFP_OFFSET as u64,
        VMBUS_SINT,
        VMBUS_VECTOR
    );
    Some(Enabled {
        pages,
        hypercall_pages,
        hypercall_input_gpa: hypercall_gpa + HYPERCALL_INPUT_OFFSET as u64,
        queue,
        rearmed: rearm,
    })
}

/// Enable the reference TSC page at the `reference_tsc` region; says what
/// came of it. Returns whether the hypervisor took it.
fn enable_reference_tsc(env: &mut dyn Env) -> bool {
    let Some(gpa) = env
        .region_address(regions::REFERENCE_TSC)
        .filter(|page| {
            page.guest_physical.is_multiple_of(PAGE_SIZE) && page.len >= PAGE_SIZE as usize
        })
        .map(|page| page.guest_physical)
    else {
        println!(
            env,
            "reference_tsc must be a host-visible page: no reference TSC page"
        );
        return false;
    };
    let enabled = msr_read(env, msr::REFERENCE_TSC).and_then(|old| {
        msr_write(
            env,
            msr::REFERENCE_TSC,
            ReferenceTscMsr::enable_at(old, gpa).0,
        )
    });
    match enabled {
        Ok(()) => {
            println!(env, "reference TSC page at {:#x}", gpa);
            true
        }
        Err(error) => {
            println!(
                env,
                "the hypervisor refused the reference TSC page ({:?}): timesync relates no samples",
                error
            );
            false
        }
    }
}

impl Synic {
    /// The synic's counters (also served as `Request::Status`).
    pub fn status(&self) -> Status {
        let mut status = self.status.clone();
        status.bound_channels = self.bindings.len() as u8;
        status
    }

    /// Test-and-clear every SINT2 event flag; notify each bound VSC whose
    /// relid was set. Whole words are swapped to zero, so no bit is lost
    /// between the test and the clear; bits no VSC owns are counted and
    /// dropped (a stale set bit would otherwise suppress the host's next
    /// interrupt for that relid).
    fn deliver_events(&mut self, env: &mut dyn Env) {
        let Some(enabled) = &self.enabled else {
            return;
        };
        let mut to_notify = ChannelSet::EMPTY;
        for word_index in 0..EVENT_WORDS {
            let Ok(word) = enabled.pages.atomic_u32(FLAGS_OFFSET + word_index * 4) else {
                break;
            };
            let seen = word.load(Ordering::Relaxed);
            if seen == 0 {
                continue;
            }
            let mut bits = if self.awaiting_restore {
                // Take only the bits someone is known for; the rest wait
                // for vmbus's restore.
                let known = (0..32u32)
                    .filter(|bit| seen & (1 << bit) != 0)
                    .filter(|bit| {
                        let relid = word_index as u32 * 32 + bit;
                        self.bindings.iter().any(|b| b.relid == relid)
                            || self.opening.iter().any(|o| o.relid == relid)
                    })
                    .fold(0u32, |mask, bit| mask | (1 << bit));
                word.fetch_and(!known, Ordering::AcqRel) & known
            } else {
                word.swap(0, Ordering::AcqRel)
            };
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let relid = word_index as u32 * 32 + bit;
                if let Some(binding) = self.bindings.iter().find(|b| b.relid == relid) {
                    to_notify.insert(binding.notify);
                    // Set before the notification: the VSC that wakes for
                    // it reads the bit.
                    self.pending[binding.driver_row] |= 1 << binding.channel;
                    self.status.events_delivered = self.status.events_delivered.wrapping_add(1);
                } else if let Some(opening) = self.opening.iter_mut().find(|o| o.relid == relid) {
                    // Before OpenResult: allowed, and the VSC learns of it
                    // at Bind (it also reads its ring when it attaches).
                    opening.event_seen = true;
                    self.status.early_events = self.status.early_events.wrapping_add(1);
                } else {
                    self.status.stray_events = self.status.stray_events.wrapping_add(1);
                }
            }
        }
        for channel in to_notify.iter() {
            env.notify(channel);
        }
    }

    /// Move SINT2 messages from the slot into the queue until the slot is
    /// empty or the queue is full. Bounded by the queue's capacity (a
    /// flooding host fills the queue, then waits for vmbus).
    fn drain_messages(&mut self, env: &mut dyn Env) {
        let Some(enabled) = self.enabled.as_mut() else {
            return;
        };
        let mut pushed = false;
        if self.restart_news_pending {
            let mut news = [0u8; MESSAGE_SIZE];
            news[..4].copy_from_slice(&vmbus_ipc::SYNIC_RESTARTED_MESSAGE_TYPE.to_le_bytes());
            match enabled.queue.push(&news) {
                Ok(()) => {
                    self.restart_news_pending = false;
                    // Whether or not vmbus asked: the news is worth a look.
                    env.notify(channels::VMBUS);
                }
                Err(QueueError::Full) => {
                    // vmbus notifies us when it has made room; the host's
                    // messages wait behind the news.
                    self.waiting_for_queue_space = true;
                    return;
                }
                Err(error) => {
                    println!(
                        env,
                        "message queue unusable ({:?}): restart news dropped", error
                    );
                    self.restart_news_pending = false;
                }
            }
        }
        let limit = enabled.queue.capacity() as usize + 1;
        for _ in 0..limit {
            // Copy out first: the host may not touch a busy slot, but we
            // never parse shared memory in place.
            let mut slot = [0u8; MESSAGE_SIZE];
            if enabled.pages.read(SLOT_OFFSET, &mut slot).is_err() {
                break;
            }
            let kind = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
            if kind == message_type::NONE {
                break;
            }
            if kind == message_type::VMBUS {
                match enabled.queue.push(&slot) {
                    Ok(()) => {
                        pushed = true;
                        self.waiting_for_queue_space = false;
                        self.status.messages_received =
                            self.status.messages_received.wrapping_add(1);
                    }
                    Err(QueueError::Full) => {
                        // Leave it in the slot: vmbus notifies us when it
                        // has made room (the queue recorded our request).
                        if !self.waiting_for_queue_space {
                            self.status.queue_full_waits =
                                self.status.queue_full_waits.wrapping_add(1);
                        }
                        self.waiting_for_queue_space = true;
                        break;
                    }
                    Err(error) => {
                        // The consumer corrupted the queue: drop the message
                        // rather than wedge the host's SINT.
                        println!(env, "message queue unusable ({:?}): message dropped", error);
                        self.status.messages_dropped = self.status.messages_dropped.wrapping_add(1);
                    }
                }
            } else {
                // Not VMBus (e.g. a timer message): nobody here consumes it.
                self.status.messages_dropped = self.status.messages_dropped.wrapping_add(1);
            }
            // Free the slot, then look at the pending flag: reading it after
            // the clear (with a full barrier between) cannot miss a message
            // the host queued while the slot was busy.
            if free_slot(env, &enabled.pages, SLOT_OFFSET) {
                self.status.eoms = self.status.eoms.wrapping_add(1);
            }
        }
        if pushed {
            if let Some(enabled) = self.enabled.as_mut() {
                if enabled.queue.consumer_needs_signal() {
                    env.notify(channels::VMBUS);
                }
            }
        }
    }

    /// Take the timer SINT's messages out of its slot; after a timer
    /// message, wake the VSCs whose deadlines passed and program the
    /// timer for the next one. Only the type is read: which deadlines
    /// passed is decided by our own clock, not by the host's payload.
    fn drain_timer_messages(&mut self, env: &mut dyn Env) {
        let Some(enabled) = &self.enabled else {
            return;
        };
        let pages = enabled.pages;
        let mut expired = false;
        for _ in 0..TIMER_MESSAGES_PER_INTERRUPT {
            let Ok(type_word) = pages.atomic_u32(TIMER_SLOT_OFFSET) else {
                break;
            };
            let kind = type_word.load(Ordering::Acquire);
            if kind == message_type::NONE {
                break;
            }
            if kind == message_type::TIMER_EXPIRED {
                expired = true;
                self.status.timer_messages = self.status.timer_messages.wrapping_add(1);
            } else {
                self.status.messages_dropped = self.status.messages_dropped.wrapping_add(1);
            }
            if free_slot(env, &pages, TIMER_SLOT_OFFSET) {
                self.status.eoms = self.status.eoms.wrapping_add(1);
            }
        }
        if expired {
            // One-shot: the timer stopped when it sent this.
            self.timer_armed = None;
            self.run_timer(env);
        }
    }

    /// Wake each VSC whose deadline has passed (forgetting it), then keep
    /// timer 0 programmed for the earliest deadline left (stopped if none).
    fn run_timer(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        let mut due = ChannelSet::EMPTY;
        for (row, entry) in drivers::DRIVERS.iter().take(MAX_DRIVERS).enumerate() {
            if self.deadlines[row].is_some_and(|deadline| deadline <= now) {
                self.deadlines[row] = None;
                due.insert(entry.notify);
                self.status.timeouts_delivered = self.status.timeouts_delivered.wrapping_add(1);
            }
        }
        for channel in due.iter() {
            env.notify(channel);
        }
        let earliest = self.deadlines.iter().flatten().min().copied();
        if earliest == self.timer_armed || !self.timer_ready {
            return;
        }
        let programmed = match earliest {
            // A zero count stops the timer.
            None => msr_write(env, msr::STIMER0_COUNT, 0),
            Some(deadline) => msr_read(env, msr::TIME_REF_COUNT).and_then(|reference| {
                // The count is an absolute reference time: the host's
                // clock now plus our wait, rounded up so it never fires
                // before the deadline by our clock.
                let wait = deadline.saturating_sub(now).div_ceil(REFERENCE_UNIT_NS);
                let count = reference.saturating_add(wait).max(1);
                msr_write(env, msr::STIMER0_COUNT, count)
            }),
        };
        match programmed {
            Ok(()) => {
                self.timer_armed = earliest;
                self.status.timer_programmed = self.status.timer_programmed.wrapping_add(1);
            }
            Err(error) => {
                self.timer_armed = None;
                println!(env, "programming timer 0 failed: {:?}", error);
            }
        }
    }

    /// The caller's deadline (0: none), replacing its last.
    fn set_timeout(
        &mut self,
        env: &mut dyn Env,
        caller: Caller,
        deadline_ns: u64,
    ) -> Result<Reply, Refusal> {
        let row = drivers::DRIVERS
            .iter()
            .take(MAX_DRIVERS)
            .position(|row| row.caller == caller)
            .ok_or(Refusal::DENIED)?;
        if !self.timer_ready {
            return Ok(Reply::NoTimer);
        }
        self.deadlines[row] = (deadline_ns != 0).then_some(deadline_ns);
        self.run_timer(env);
        Ok(Reply::Done)
    }

    fn post_message(&mut self, env: &mut dyn Env, connection_id: u32, payload: &[u8]) -> Reply {
        let Some(enabled) = &self.enabled else {
            return Reply::HypercallFailed {
                status: vmbus_ipc::synic::STATUS_NO_HYPERCALL,
            };
        };
        let mut input = PostMessageInput {
            connection_id,
            reserved: 0,
            message_type: message_type::VMBUS,
            payload_size: payload.len() as u32,
            payload: [0; MESSAGE_MAX_PAYLOAD],
        };
        // The IPC type bounds the payload at 240 bytes.
        input.payload[..payload.len()].copy_from_slice(payload);
        if enabled
            .hypercall_pages
            .write(HYPERCALL_INPUT_OFFSET, input.as_bytes())
            .is_err()
        {
            return Reply::HypercallFailed {
                status: vmbus_ipc::synic::STATUS_NO_HYPERCALL,
            };
        }
        let status = hypercall(
            env,
            HypercallControl::simple(call_code::POST_MESSAGE, false),
            enabled.hypercall_input_gpa,
        );
        if status == HvStatus::SUCCESS {
            self.status.messages_posted = self.status.messages_posted.wrapping_add(1);
        } else {
            self.status.hypercall_failures = self.status.hypercall_failures.wrapping_add(1);
        }
        reply_for(status)
    }

    fn signal_host(
        &mut self,
        env: &mut dyn Env,
        caller: Caller,
        connection_id: u32,
    ) -> Result<Reply, Refusal> {
        let binding = self
            .bindings
            .iter()
            .find(|b| b.caller == caller && b.connection_id == connection_id)
            .copied();
        let owned = binding.is_some();
        if !owned {
            let just_unbound = self
                .unbound
                .iter()
                .any(|b| b.caller == caller && b.connection_id == connection_id);
            if just_unbound {
                // The VSC has not heard of the rescind or close yet: an
                // expected race, answered without fuss.
                self.status.signals_after_unbind = self.status.signals_after_unbind.wrapping_add(1);
                return Ok(Reply::ChannelClosed);
            }
        }
        if !owned && self.awaiting_restore {
            // Restarted and not yet restored: the restore signals every
            // bound connection once, this one included if it is bound.
            self.status.signals_after_unbind = self.status.signals_after_unbind.wrapping_add(1);
            return Ok(Reply::ChannelClosed);
        }
        let (Some(binding), Some(_)) = (binding, self.enabled.as_ref()) else {
            self.status.signals_refused = self.status.signals_refused.wrapping_add(1);
            return Err(Refusal::DENIED);
        };
        Ok(reply_for(self.signal_binding(env, &binding)))
    }

    /// Signal a bound channel to the host the way Hyper-V expects for it:
    /// the monitor page's pending bit for a monitored channel, otherwise
    /// HvSignalEvent (after marking the interrupt page's send half for a
    /// channel without a dedicated interrupt).
    fn signal_binding(&mut self, env: &mut dyn Env, binding: &Binding) -> HvStatus {
        let connection_id = binding.connection_id;
        if let Some(monitor) = &self.monitor_pages {
            // Bind refused these without monitor pages.
            if binding.interrupt_page_bit {
                let offset = INTERRUPT_PAGE_SEND_OFFSET + (binding.relid as usize / 32) * 4;
                if let Ok(word) = monitor.atomic_u32(offset) {
                    word.fetch_or(1 << (binding.relid % 32), Ordering::SeqCst);
                }
            }
            if let Some(id) = binding.monitor_id {
                let group = id as usize / hyperv_defs::MONITOR_BITS_PER_GROUP;
                let offset = MONITOR_PAGE2_OFFSET + hyperv_defs::MonitorPage::pending_offset(group);
                if let Ok(word) = monitor.atomic_u32(offset) {
                    // SeqCst: the ring's published write index is visible
                    // before the host can see the bit.
                    word.fetch_or(
                        1 << (id as usize % hyperv_defs::MONITOR_BITS_PER_GROUP),
                        Ordering::SeqCst,
                    );
                    self.status.signals_sent = self.status.signals_sent.wrapping_add(1);
                    self.status.monitor_signals = self.status.monitor_signals.wrapping_add(1);
                    return HvStatus::SUCCESS;
                }
            }
        }
        let input = SignalEventInput {
            connection_id,
            flag_number: 0,
            reserved: 0,
        };
        let status = hypercall(
            env,
            HypercallControl::simple(call_code::SIGNAL_EVENT, true),
            input.to_fast(),
        );
        if status == HvStatus::SUCCESS {
            self.status.signals_sent = self.status.signals_sent.wrapping_add(1);
        } else {
            self.status.hypercall_failures = self.status.hypercall_failures.wrapping_add(1);
        }
        status
    }

    fn bind(
        &mut self,
        env: &mut dyn Env,
        relid: u32,
        connection_id: u32,
        (driver, channel): (vmbus_ipc::DriverId, u8),
        (monitor_id, interrupt_page_bit): (Option<u8>, bool),
    ) -> Result<Reply, Refusal> {
        // The driver table is generated from the description, the same one
        // the bus manager has: the id is a row of it or refused.
        let found = drivers::DRIVERS
            .iter()
            .enumerate()
            .find(|(row, entry)| entry.id == driver && *row < MAX_DRIVERS);
        let Some((driver_row, row)) = found else {
            println!(
                env,
                "bind of relid {} to unknown driver {} refused", relid, driver.0
            );
            return Err(Refusal::DENIED);
        };
        let (notify, caller) = (row.notify, row.caller);
        if relid == 0
            || relid as usize >= EVENT_WORDS * 32
            || monitor_id.is_some_and(|id| id > hyperv_defs::MONITOR_ID_MAX)
            || channel >= MAX_CHANNELS_PER_DRIVER
        {
            return Err(Refusal::MALFORMED);
        }
        if (monitor_id.is_some() || interrupt_page_bit) && self.monitor_pages.is_none() {
            println!(env, "bind of relid {} needs the monitor pages", relid);
            return Err(Refusal::DENIED);
        }
        let binding = Binding {
            relid,
            connection_id,
            notify,
            caller,
            driver_row,
            channel,
            monitor_id,
            interrupt_page_bit,
        };
        // vmbus is the authority on channels: a new binding replaces the old.
        if let Some(existing) = self.bindings.iter_mut().find(|b| b.relid == relid) {
            *existing = binding;
        } else if self.bindings.push(binding).is_err() {
            return Err(Refusal::DENIED);
        }
        self.forget_unbound(relid);
        let early = self.end_opening(relid);
        // A bit left set from the relid's previous life would keep the host
        // from interrupting for it again: clear it and let the VSC look.
        let mut look = early;
        if let Some(enabled) = &self.enabled {
            let offset = FLAGS_OFFSET + (relid as usize / 32) * 4;
            if let Ok(word) = enabled.pages.atomic_u32(offset) {
                let mask = 1u32 << (relid % 32);
                look |= word.fetch_and(!mask, Ordering::AcqRel) & mask != 0;
            }
        }
        if look {
            self.pending[driver_row] |= 1 << channel;
            env.notify(notify);
        }
        Ok(Reply::Done)
    }

    /// The caller's channels with events since it last asked, cleared.
    fn take_pending(&mut self, caller: Caller) -> Result<Reply, Refusal> {
        let row = drivers::DRIVERS
            .iter()
            .take(MAX_DRIVERS)
            .position(|row| row.caller == caller)
            .ok_or(Refusal::DENIED)?;
        Ok(Reply::Pending(core::mem::take(&mut self.pending[row])))
    }

    /// Ends the opening of `relid`; whether an event came for it meanwhile.
    fn end_opening(&mut self, relid: u32) -> bool {
        let early = self
            .opening
            .iter()
            .any(|o| o.relid == relid && o.event_seen);
        self.opening.retain(|o| o.relid != relid);
        early
    }

    fn forget_unbound(&mut self, relid: u32) {
        let kept: heapless::Vec<Binding, MAX_BINDINGS> = self
            .unbound
            .iter()
            .filter(|b| b.relid != relid)
            .copied()
            .collect();
        self.unbound.clear();
        for binding in kept {
            let _ = self.unbound.push_back(binding);
        }
    }

    fn unbind(&mut self, relid: u32) {
        self.end_opening(relid);
        self.forget_unbound(relid);
        if let Some(position) = self.bindings.iter().position(|b| b.relid == relid) {
            let binding = self.bindings.swap_remove(position);
            if self.unbound.is_full() {
                self.unbound.pop_front();
            }
            let _ = self.unbound.push_back(binding);
        }
    }

    fn opening(&mut self, relid: u32) -> Result<Reply, Refusal> {
        if relid == 0 || relid as usize >= EVENT_WORDS * 32 {
            return Err(Refusal::MALFORMED);
        }
        if !self.opening.iter().any(|o| o.relid == relid) {
            // Bounded like the bindings: the oldest opening gives way (its
            // events would then count as strays, nothing worse).
            if self.opening.is_full() {
                self.opening.remove(0);
            }
            let _ = self.opening.push(Opening {
                relid,
                event_seen: false,
            });
        }
        Ok(Reply::Done)
    }

    /// Replace the relid table with vmbus's (after our restart, or at the
    /// start of a new bus session).
    fn restore(
        &mut self,
        env: &mut dyn Env,
        bindings: &[vmbus_ipc::synic::RestoredBinding],
        opening: &[u32],
    ) -> Result<Reply, Refusal> {
        let after_restart = self.awaiting_restore;
        self.bindings.clear();
        self.opening.clear();
        self.unbound.clear();
        // A bad entry is refused on its own (and logged by `bind`); the
        // rest of the table is restored all the same.
        let mut refused = 0usize;
        for &relid in opening {
            refused += usize::from(self.opening(relid).is_err());
        }
        for binding in bindings {
            // Clears a flag left set for the relid and notifies its VSC.
            let bound = self.bind(
                env,
                binding.relid,
                binding.connection_id,
                (binding.driver, binding.channel),
                (binding.monitor_id, binding.interrupt_page_bit),
            );
            refused += usize::from(bound.is_err());
        }
        if refused > 0 {
            println!(env, "restore: {} entries refused", refused);
        }
        self.awaiting_restore = false;
        self.status.restores = self.status.restores.wrapping_add(1);
        // What is left set belongs to nobody now (or to an opening).
        self.deliver_events(env);
        if after_restart && self.enabled.is_some() {
            let bindings = self.bindings.clone();
            for binding in &bindings {
                let _ = self.signal_binding(env, binding);
            }
            println!(
                env,
                "relid table restored by vmbus: {} bound, {} opening",
                self.bindings.len(),
                self.opening.len()
            );
        }
        Ok(Reply::Done)
    }

    fn handle(
        &mut self,
        env: &mut dyn Env,
        caller: Caller,
        request: Request,
    ) -> Result<Reply, Refusal> {
        // Who may ask for what was checked before this, in one place
        // (`serve::synic`, from the description's `allow`); which
        // connection a VSC may signal is a binding, checked here.
        match request {
            Request::SignalHost { connection_id } => self.signal_host(env, caller, connection_id),
            Request::PostMessage {
                connection_id,
                payload,
            } => Ok(self.post_message(env, connection_id, &payload)),
            Request::Bind {
                relid,
                connection_id,
                driver,
                channel,
                monitor_id,
                interrupt_page_bit,
            } => self.bind(
                env,
                relid,
                connection_id,
                (driver, channel),
                (monitor_id, interrupt_page_bit),
            ),
            Request::Pending => self.take_pending(caller),
            Request::SetTimeout { deadline_ns } => self.set_timeout(env, caller, deadline_ns),
            Request::Unbind { relid } => {
                self.unbind(relid);
                Ok(Reply::Done)
            }
            Request::Opening { relid } => self.opening(relid),
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Restore { bindings, opening } => self.restore(env, &bindings, &opening),
        }
    }
}

impl Component for Synic {
    fn init(env: &mut dyn Env) -> Self {
        let enabled = enable(env);
        let rearmed = enabled.as_ref().is_some_and(|e| e.rearmed);
        let timer_ready = enabled.is_some() && set_up_timer(env);
        if enabled.is_some() {
            enable_reference_tsc(env);
        }
        let monitor_pages = Some(env.region(regions::MONITOR_PAGES))
            .filter(|r| r.writable() && r.len() >= INTERRUPT_PAGE_SEND_OFFSET + 2048);
        if monitor_pages.is_none() {
            println!(
                env,
                "monitor_pages unusable: monitored channels cannot be signalled"
            );
        }
        let mut synic = Synic {
            enabled,
            monitor_pages,
            bindings: heapless::Vec::new(),
            opening: heapless::Vec::new(),
            unbound: heapless::Deque::new(),
            status: Status::default(),
            pending: [0; MAX_DRIVERS],
            waiting_for_queue_space: false,
            awaiting_restore: rearmed,
            restart_news_pending: rearmed,
            timer_ready,
            deadlines: [None; MAX_DRIVERS],
            timer_armed: None,
        };
        synic.status.restarted = rearmed;
        if rearmed {
            // The old synic may have freed the slot and died before its
            // EOM: an EOM now makes the hypervisor deliver a message it
            // holds back (with nothing pending it does nothing).
            if let Err(error) = msr_write(env, msr::EOM, 0) {
                println!(env, "EOM failed: {:?}", error);
            }
            synic.status.eoms = synic.status.eoms.wrapping_add(1);
            // Events for relids vmbus will restore stay set until then;
            // a message in the slot follows the restart news.
            synic.deliver_events(env);
        }
        // A message may have been delivered the moment SIMP was enabled
        // (or was waiting in the slot when the old synic stopped).
        synic.drain_messages(env);
        // A timer message the old synic left is stale: the timer was
        // stopped above and every VSC is woken below.
        synic.drain_timer_messages(env);
        if rearmed && timer_ready {
            // The deadlines died with the old synic: each VSC, woken with
            // no channel pending, asks again.
            for row in drivers::DRIVERS.iter().take(MAX_DRIVERS) {
                env.notify(row.notify);
            }
        }
        synic
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(channels::HYPERVISOR_INTERRUPT) {
            // Channel events first, so data paths never wait behind the
            // control path.
            self.deliver_events(env);
        }
        // Interrupt (new message) or vmbus made room in the queue: either
        // way the slot is worth a look.
        if channels.contains(channels::HYPERVISOR_INTERRUPT) || channels.contains(channels::VMBUS) {
            self.drain_messages(env);
        }
        if channels.contains(channels::HYPERVISOR_INTERRUPT) {
            self.drain_timer_messages(env);
        }
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::synic(channel, message, reply, |caller, request| {
            self.handle(env, caller, request)
        })
    }
}

#[cfg(test)]
mod tests;
