//! The synthetic interrupt controller of the guest's one virtual processor,
//! as the TLFS describes it: the synic MSRs, message delivery into SIM-page
//! slots (a message waits in its SINT's queue while the slot is busy; the
//! queue is rescanned only when a message is queued, on EOM and on APIC
//! EOI), event flags in the SIEF page, and the local-APIC view of the SINT
//! vectors (IRR/ISR, auto-EOI) that decides when an interrupt is delivered.
//!
//! Guest memory is reached only through [`GuestMemory`]; every GPA the guest
//! programmed is range-checked when written to the MSR and again on use.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::reference_tsc::{self, ReferenceTscMsr, TscClock};
use hyperv_defs::{
    message_flags, message_type, msr, EventFlagsPage, HvMessage, HypercallMsr, MessageHeader,
    ScontrolMsr, SintMsr, StimerConfig, SynicPageMsr, TimerMessagePayload, MESSAGE_MAX_PAYLOAD,
    MESSAGE_SIZE, PAGE_SIZE, SINT_COUNT, SINT_FIRST_VALID_VECTOR, SYNIC_VERSION,
};
use zerocopy::IntoBytes;

/// The synthetic MSR through which the guest writes APIC EOI.
pub const APIC_EOI_MSR: u32 = 0x4000_0070;

/// An x86 exception raised by an MSR access or a hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    GeneralProtection,
    InvalidOpcode,
}

/// A message waiting for its SINT's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub message_type: u32,
    pub origin: u64,
    pub payload: Vec<u8>,
}

/// What the synic counted (for tests and the operator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynicStats {
    pub messages_delivered: u64,
    /// A SINT was asserted while masked, disabled or in polling mode.
    pub interrupts_lost: u64,
    pub interrupts_delivered: u64,
    pub eom_writes: u64,
    pub apic_eois: u64,
    /// Event flags set that were already set (no interrupt).
    pub event_flags_already_set: u64,
    /// The guest emptied a busy slot while MessagePending was being set:
    /// the re-check after setting it delivered the message at once.
    pub freed_while_marking: u64,
    /// Synthetic timer 0 expired (a message was queued for it).
    pub timer_expirations: u64,
    /// Timer 0 expired while its previous message still waited for the
    /// slot: no second message (the pending one stands for both).
    pub timer_coalesced: u64,
    /// SINT writes whose vector was replaced by the partition's one vector
    /// ([`Synic::set_fixed_vector`]).
    pub sint_vectors_rewritten: u64,
    /// (scale, offset) pairs written into the reference TSC page.
    pub reference_tsc_updates: u64,
}

/// The reference-time unit: 100 ns.
pub const REFERENCE_TIME_UNIT_NS: u64 = 100;

/// Synthetic timer 0 (the only one: STIMER1-3 are #GP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyntheticTimer {
    pub config: StimerConfig,
    pub count: u64,
    /// The reference time it expires at next, while it runs.
    pub due: Option<u64>,
}

/// The synic of one virtual processor.
pub struct Synic {
    pub guest_os_id: u64,
    pub hypercall: HypercallMsr,
    pub scontrol: ScontrolMsr,
    pub simp: SynicPageMsr,
    pub siefp: SynicPageMsr,
    pub sint: [SintMsr; SINT_COUNT],
    queues: [VecDeque<QueuedMessage>; SINT_COUNT],
    /// Local APIC request and in-service registers, one bit per vector.
    irr: [u64; 4],
    isr: [u64; 4],
    /// Interrupts delivered to the guest, not yet sent over the transport.
    outbox: VecDeque<u8>,
    pub timer: SyntheticTimer,
    /// The partition's reference time (100 ns units since it started), as
    /// the host's clock last told us ([`Synic::advance`]).
    reference_time: u64,
    /// HV_X64_MSR_REFERENCE_TSC as the guest wrote it.
    pub reference_tsc: ReferenceTscMsr,
    /// The reference time as a function of the TSC, as the host knows it
    /// ([`Synic::set_tsc_clock`]); `None`: the page says "use the MSR".
    tsc_clock: Option<TscClock>,
    /// The sequence of the pair last written into the page.
    tsc_sequence: u32,
    pub stats: SynicStats,
    /// The one vector the guest's kernel takes the synic interrupt on (the
    /// description's `[[irq]] vector`), when the host raises it through the
    /// kernel: an unmasked SINT is kept with this vector whatever vector
    /// the guest wrote, as the Hyper-V gate programs it.
    fixed_vector: Option<u8>,
}

impl Default for Synic {
    fn default() -> Self {
        Self::new()
    }
}

fn bit_test(bits: &[u64; 4], vector: u8) -> bool {
    bits[vector as usize / 64] & (1 << (vector % 64)) != 0
}
fn bit_set(bits: &mut [u64; 4], vector: u8, value: bool) {
    let word = &mut bits[vector as usize / 64];
    if value {
        *word |= 1 << (vector % 64);
    } else {
        *word &= !(1 << (vector % 64));
    }
}
fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4)
        .rev()
        .find(|&i| bits[i] != 0)
        .map(|i| (i * 64 + 63 - bits[i].leading_zeros() as usize) as u8)
}

impl Synic {
    pub fn new() -> Self {
        Synic {
            guest_os_id: 0,
            hypercall: HypercallMsr(0),
            scontrol: ScontrolMsr(0),
            simp: SynicPageMsr(0),
            siefp: SynicPageMsr(0),
            sint: [SintMsr::RESET; SINT_COUNT],
            queues: Default::default(),
            irr: [0; 4],
            isr: [0; 4],
            outbox: VecDeque::new(),
            timer: SyntheticTimer::default(),
            reference_time: 0,
            reference_tsc: ReferenceTscMsr(0),
            tsc_clock: None,
            tsc_sequence: reference_tsc::SEQUENCE_INVALID,
            stats: SynicStats::default(),
            fixed_vector: None,
        }
    }

    /// Keep every unmasked SINT on `vector` (`None`: the vector the guest
    /// writes). The guest's vector is still checked as the TLFS says
    /// (below 16 is #GP), then replaced; reading the SINT back gives the
    /// vector that is really delivered.
    pub fn set_fixed_vector(&mut self, vector: Option<u8>) {
        self.fixed_vector = vector.filter(|v| *v >= SINT_FIRST_VALID_VECTOR);
    }

    /// The vector set by [`Synic::set_fixed_vector`].
    pub fn fixed_vector(&self) -> Option<u8> {
        self.fixed_vector
    }

    /// True once the guest can make hypercalls.
    pub fn hypercalls_enabled(&self) -> bool {
        self.hypercall.enabled()
    }

    /// Messages waiting for the slot of `sint`.
    pub fn queued(&self, sint: u8) -> usize {
        self.queues.get(sint as usize).map_or(0, |q| q.len())
    }

    /// The next interrupt vector to send to the guest.
    pub fn take_interrupt(&mut self) -> Option<u8> {
        self.outbox.pop_front()
    }

    pub fn pending_interrupts(&self) -> usize {
        self.outbox.len()
    }

    /// RDMSR.
    pub fn msr_read(&self, number: u32) -> Result<u64, Exception> {
        Ok(match number {
            msr::GUEST_OS_ID => self.guest_os_id,
            msr::HYPERCALL => self.hypercall.0,
            msr::VP_INDEX => 0,
            msr::SCONTROL => self.scontrol.0,
            msr::SVERSION => SYNIC_VERSION,
            msr::SIEFP => self.siefp.0,
            msr::SIMP => self.simp.0,
            msr::EOM => 0,
            msr::TIME_REF_COUNT => self.reference_time,
            msr::REFERENCE_TSC => self.reference_tsc.0,
            msr::STIMER0_CONFIG => self.timer.config.0,
            msr::STIMER0_COUNT => self.timer.count,
            _ => match msr::sint_index(number) {
                Some(index) => self.sint[index as usize].0,
                None => return Err(Exception::GeneralProtection),
            },
        })
    }

    /// WRMSR.
    pub fn msr_write<M: GuestMemory>(
        &mut self,
        memory: &M,
        number: u32,
        value: u64,
    ) -> Result<(), Exception> {
        let page_in_memory = |gpa: u64| memory.contains(gpa, PAGE_SIZE);
        match number {
            msr::GUEST_OS_ID => {
                self.guest_os_id = value;
                if value == 0 {
                    // TLFS: clearing the guest OS ID disables the hypercall page.
                    self.hypercall.0 &= !HypercallMsr::ENABLE;
                }
            }
            msr::HYPERCALL => {
                if self.hypercall.locked() {
                    // Locked until reset: the write has no effect.
                    return Ok(());
                }
                let requested = HypercallMsr(value);
                if requested.enabled() && !page_in_memory(requested.gpa()) {
                    return Err(Exception::GeneralProtection);
                }
                let mut stored = value;
                if self.guest_os_id == 0 {
                    // TLFS: without a guest OS ID the enable bit stays zero.
                    stored &= !HypercallMsr::ENABLE;
                }
                self.hypercall = HypercallMsr(stored);
            }
            msr::VP_INDEX | msr::SVERSION | msr::TIME_REF_COUNT => {
                return Err(Exception::GeneralProtection)
            }
            msr::STIMER0_CONFIG => {
                let config = StimerConfig(value);
                // Direct mode is available only where CPUID says so
                // (HV_STIMER_DIRECT_MODE_AVAILABLE); this host does not
                // offer it, so asking for it is #GP.
                if config.direct_mode() {
                    return Err(Exception::GeneralProtection);
                }
                self.timer.config = config;
                self.start_timer();
                self.advance(memory, self.reference_time * REFERENCE_TIME_UNIT_NS);
            }
            msr::STIMER0_COUNT => {
                self.timer.count = value;
                if value == 0 {
                    // A zero count stops the timer.
                    self.timer.config.0 &= !StimerConfig::ENABLE;
                } else if self.timer.config.auto_enable() {
                    self.timer.config.0 |= StimerConfig::ENABLE;
                }
                self.start_timer();
                self.advance(memory, self.reference_time * REFERENCE_TIME_UNIT_NS);
            }
            // TLFS: queued messages are retried only when another message
            // is queued for the SINT, on EOM and on APIC EOI; enabling the
            // synic or the SIM page is none of these.
            msr::SCONTROL => self.scontrol = ScontrolMsr(value),
            msr::SIEFP => {
                let page = SynicPageMsr(value);
                if page.enabled() && !page_in_memory(page.gpa()) {
                    return Err(Exception::GeneralProtection);
                }
                self.siefp = page;
            }
            msr::SIMP => {
                let page = SynicPageMsr(value);
                if page.enabled() && !page_in_memory(page.gpa()) {
                    return Err(Exception::GeneralProtection);
                }
                self.simp = page;
            }
            msr::REFERENCE_TSC => {
                let page = ReferenceTscMsr(value);
                if page.enabled() && !page_in_memory(page.gpa()) {
                    return Err(Exception::GeneralProtection);
                }
                self.reference_tsc = page;
                self.publish_reference_tsc(memory);
            }
            msr::EOM => {
                self.stats.eom_writes += 1;
                self.rescan_all(memory);
            }
            APIC_EOI_MSR => {
                self.stats.apic_eois += 1;
                if let Some(vector) = highest(&self.isr) {
                    bit_set(&mut self.isr, vector, false);
                }
                // TLFS: an APIC EOI also makes the hypervisor retry delivery.
                self.rescan_all(memory);
                self.deliver_apic();
            }
            _ => match msr::sint_index(number) {
                Some(index) => {
                    let mut sint = SintMsr(value);
                    if !sint.masked() && sint.vector() < SINT_FIRST_VALID_VECTOR {
                        return Err(Exception::GeneralProtection);
                    }
                    if let Some(vector) = self.fixed_vector {
                        if !sint.masked() && sint.vector() != vector {
                            sint = SintMsr((sint.0 & !SintMsr::VECTOR_MASK) | u64::from(vector));
                            self.stats.sint_vectors_rewritten += 1;
                        }
                    }
                    self.sint[index as usize] = sint;
                }
                None => return Err(Exception::GeneralProtection),
            },
        }
        Ok(())
    }

    /// The reference time now (100 ns units).
    pub fn reference_time(&self) -> u64 {
        self.reference_time
    }

    /// The host's relation between the TSC and reference time changed (or
    /// is known for the first time; `None`: not known): the reference TSC
    /// page, if the guest enabled it, is rewritten with a new sequence.
    pub fn set_tsc_clock<M: GuestMemory>(&mut self, memory: &M, clock: Option<TscClock>) {
        if self.tsc_clock == clock {
            return;
        }
        self.tsc_clock = clock;
        self.publish_reference_tsc(memory);
    }

    /// The pair the page holds now, if it is valid.
    pub fn tsc_clock(&self) -> Option<(TscClock, u32)> {
        self.tsc_clock
            .filter(|_| self.reference_tsc.enabled())
            .map(|clock| (clock, self.tsc_sequence))
    }

    /// Write the page as the TLFS orders it: sequence 0 (readers stop
    /// using the old pair), the scale and offset, then the new sequence
    /// (or leave 0 if the host has no pair: the guest reads the MSR). The
    /// GPA was checked when the MSR was written; a write that still fails
    /// leaves the page as it was.
    fn publish_reference_tsc<M: GuestMemory>(&mut self, memory: &M) {
        if !self.reference_tsc.enabled() {
            return;
        }
        let gpa = self.reference_tsc.gpa();
        if memory
            .store_u32(gpa, reference_tsc::SEQUENCE_INVALID)
            .is_err()
        {
            return;
        }
        let Some(clock) = self.tsc_clock else {
            return;
        };
        let page = reference_tsc::ReferenceTscPage {
            tsc_sequence: reference_tsc::SEQUENCE_INVALID,
            reserved: 0,
            tsc_scale: clock.scale,
            tsc_offset: clock.offset,
        };
        let fields = &page.as_bytes()[reference_tsc::SCALE_OFFSET..];
        if memory
            .write(gpa + reference_tsc::SCALE_OFFSET as u64, fields)
            .is_err()
        {
            return;
        }
        self.tsc_sequence = reference_tsc::next_sequence(self.tsc_sequence);
        if memory.store_u32(gpa, self.tsc_sequence).is_ok() {
            self.stats.reference_tsc_updates += 1;
        }
    }

    /// (Re)starts timer 0 from its registers: a one-shot timer expires at
    /// `count` (an absolute reference time, possibly already past: then at
    /// once), a periodic one `count` after now. Enabled with SINTx 0 or a
    /// zero count, it stays disabled (the enable bit reads 0).
    fn start_timer(&mut self) {
        let timer = &mut self.timer;
        if timer.config.enabled() && (timer.config.sint() == 0 || timer.count == 0) {
            timer.config.0 &= !StimerConfig::ENABLE;
        }
        timer.due = if !timer.config.enabled() {
            None
        } else if timer.config.periodic() {
            Some(self.reference_time.saturating_add(timer.count))
        } else {
            Some(timer.count)
        };
    }

    /// The host time (ns) at which timer 0 expires next, if it runs: the
    /// host schedules its next wakeup for it.
    pub fn next_timer_ns(&self) -> Option<u64> {
        self.timer
            .due
            .map(|due| due.saturating_mul(REFERENCE_TIME_UNIT_NS))
    }

    /// The host's clock moved to `now_ns` (ns since the partition
    /// started; never backwards): expire timer 0 if it is due. Its
    /// `HVMSG_TIMER_EXPIRED` message is queued for its SINT like any
    /// message (the same slot rules); a periodic timer that missed periods
    /// expires once for them and goes on from the next period.
    pub fn advance<M: GuestMemory>(&mut self, memory: &M, now_ns: u64) {
        self.reference_time = self.reference_time.max(now_ns / REFERENCE_TIME_UNIT_NS);
        let now = self.reference_time;
        let Some(due) = self.timer.due.filter(|&due| due <= now) else {
            return;
        };
        let config = self.timer.config;
        self.timer.due = if config.periodic() {
            let period = self.timer.count.max(1);
            let missed = (now - due) / period + 1;
            Some(due.saturating_add(missed.saturating_mul(period)))
        } else {
            // A one-shot timer disables itself when it expires.
            self.timer.config.0 &= !StimerConfig::ENABLE;
            None
        };
        self.stats.timer_expirations += 1;
        let sint = config.sint();
        let waiting = self.queues[sint as usize]
            .iter()
            .any(|m| m.message_type == message_type::TIMER_EXPIRED);
        if waiting {
            self.stats.timer_coalesced += 1;
            return;
        }
        let payload = TimerMessagePayload {
            timer_index: 0,
            reserved: 0,
            expiration_time: due,
            // Filled in when the message enters the slot.
            delivery_time: 0,
        };
        self.post(
            memory,
            sint,
            QueuedMessage {
                message_type: message_type::TIMER_EXPIRED,
                origin: 0,
                payload: payload.as_bytes().to_vec(),
            },
        );
    }

    /// Queues a message for `sint` and tries to deliver it (TLFS: queuing a
    /// message rescans that SINT's queue).
    pub fn post<M: GuestMemory>(&mut self, memory: &M, sint: u8, message: QueuedMessage) {
        if sint as usize >= SINT_COUNT || message.payload.len() > MESSAGE_MAX_PAYLOAD {
            return;
        }
        self.queues[sint as usize].push_back(message);
        self.rescan(memory, sint);
    }

    fn slot_gpa(&self, sint: u8) -> u64 {
        self.simp.gpa() + sint as u64 * MESSAGE_SIZE as u64
    }

    fn rescan_all<M: GuestMemory>(&mut self, memory: &M) {
        for sint in 0..SINT_COUNT as u8 {
            self.rescan(memory, sint);
        }
    }

    /// Moves the head of `sint`'s queue into its slot if the slot is free.
    fn rescan<M: GuestMemory>(&mut self, memory: &M, sint: u8) {
        if self.queues[sint as usize].is_empty() || !self.scontrol.enabled() || !self.simp.enabled()
        {
            return;
        }
        let slot = self.slot_gpa(sint);
        let Ok(slot_type) = memory.load_u32(slot) else {
            return;
        };
        if slot_type != 0 {
            // Busy: tell the guest to write EOM after emptying it (the flags
            // byte is byte 1 of the u32 at offset 4), then look at the slot
            // again. The guest clears the type and then reads the flags; we
            // set the flag and then read the type. Both orders are
            // sequentially consistent, so at least one side sees the
            // other's write: either the guest sees the flag and writes EOM,
            // or we see the slot free and deliver now. Without the second
            // look a guest that emptied the slot between our two accesses
            // would not write EOM and the message would wait for the next
            // one (docs/hypervisor-transport.md, "The MessagePending rule").
            let pending = (message_flags::MESSAGE_PENDING as u32) << 8;
            if memory.fetch_or_u32(slot + 4, pending).is_err() {
                return;
            }
            match memory.load_u32(slot) {
                Ok(0) => self.stats.freed_while_marking += 1,
                _ => return,
            }
        }
        let Some(message) = self.queues[sint as usize].pop_front() else {
            return;
        };
        let more = !self.queues[sint as usize].is_empty();
        let mut slot_bytes = HvMessage {
            header: MessageHeader {
                message_type: 0,
                payload_size: message.payload.len() as u8,
                message_flags: if more {
                    message_flags::MESSAGE_PENDING
                } else {
                    0
                },
                reserved: 0,
                origin: message.origin,
            },
            payload: [0; MESSAGE_MAX_PAYLOAD],
        };
        slot_bytes.payload[..message.payload.len()].copy_from_slice(&message.payload);
        if message.message_type == message_type::TIMER_EXPIRED {
            let at = TimerMessagePayload::DELIVERY_TIME_OFFSET;
            if let Some(field) = slot_bytes.payload.get_mut(at..at + 8) {
                field.copy_from_slice(&self.reference_time.to_le_bytes());
            }
        }
        // Write everything but the type, then publish the type last so the
        // guest never sees a half-written message.
        let bytes = slot_bytes.as_bytes();
        if memory.write(slot + 4, &bytes[4..]).is_err()
            || memory.store_u32(slot, message.message_type).is_err()
        {
            return;
        }
        self.stats.messages_delivered += 1;
        self.assert_sint(sint);
    }

    /// Sets `flag` of `sint` in the SIEF page; interrupts only if it was clear.
    /// Returns false if the SIEF page (or the synic) is disabled.
    pub fn signal_event<M: GuestMemory>(&mut self, memory: &M, sint: u8, flag: u16) -> bool {
        if !self.scontrol.enabled() || !self.siefp.enabled() {
            return false;
        }
        let Some((byte, bit)) = EventFlagsPage::flag_position(sint, flag) else {
            return false;
        };
        let word = self.siefp.gpa() + (byte as u64 & !3);
        let mask = 1u32 << ((byte % 4) * 8 + bit as usize);
        match memory.fetch_or_u32(word, mask) {
            Ok(old) if old & mask != 0 => {
                self.stats.event_flags_already_set += 1;
                true
            }
            Ok(_) => {
                self.assert_sint(sint);
                true
            }
            Err(_) => false,
        }
    }

    /// Raises `sint`'s vector in the APIC if the SINT can interrupt.
    pub fn assert_sint(&mut self, sint: u8) {
        let register = self.sint[sint as usize];
        if !self.scontrol.enabled() || register.masked() || register.polling() {
            self.stats.interrupts_lost += 1;
            return;
        }
        bit_set(&mut self.irr, register.vector(), true);
        self.deliver_apic();
    }

    /// Whether `vector` is delivered with auto-EOI (the guest writes no EOI).
    pub fn vector_auto_eoi(&self, vector: u8) -> bool {
        self.sint
            .iter()
            .any(|s| !s.masked() && s.vector() == vector && s.auto_eoi())
    }

    /// Delivers requested vectors whose priority class is above the one in
    /// service (a simplified local APIC: TPR is 0).
    fn deliver_apic(&mut self) {
        while let Some(vector) = highest(&self.irr) {
            if let Some(in_service) = highest(&self.isr) {
                if vector >> 4 <= in_service >> 4 {
                    return;
                }
            }
            bit_set(&mut self.irr, vector, false);
            if !self.vector_auto_eoi(vector) {
                bit_set(&mut self.isr, vector, true);
            }
            self.outbox.push_back(vector);
            self.stats.interrupts_delivered += 1;
        }
    }

    /// True if `vector` is waiting in the IRR (delivered later).
    pub fn interrupt_requested(&self, vector: u8) -> bool {
        bit_test(&self.irr, vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    fn enabled_synic<M: GuestMemory>(memory: &M, auto_eoi: bool) -> Synic {
        let mut synic = Synic::new();
        synic.msr_write(memory, msr::SIMP, 0x1000 | 1).unwrap();
        synic.msr_write(memory, msr::SIEFP, 0x2000 | 1).unwrap();
        synic
            .msr_write(
                memory,
                msr::SINT0 + 2,
                SintMsr::new(0x30, false, auto_eoi).0,
            )
            .unwrap();
        synic.msr_write(memory, msr::SCONTROL, 1).unwrap();
        synic
    }

    fn message(byte: u8) -> QueuedMessage {
        QueuedMessage {
            message_type: 1,
            origin: 0,
            payload: alloc::vec![byte; 8],
        }
    }

    #[test]
    fn a_fixed_vector_replaces_the_guests_and_is_what_is_delivered() {
        let memory = VecMemory::new(0x4000);
        let mut synic = Synic::new();
        synic.set_fixed_vector(Some(0x50));
        synic.msr_write(&memory, msr::SIMP, 0x1000 | 1).unwrap();
        synic.msr_write(&memory, msr::SCONTROL, 1).unwrap();
        // Still checked as written: below 16 is #GP.
        assert_eq!(
            synic.msr_write(&memory, msr::SINT0 + 2, SintMsr::new(0x0f, false, true).0),
            Err(Exception::GeneralProtection)
        );
        synic
            .msr_write(&memory, msr::SINT0 + 2, SintMsr::new(0x30, false, true).0)
            .unwrap();
        let sint = SintMsr(synic.msr_read(msr::SINT0 + 2).unwrap());
        assert_eq!(sint.vector(), 0x50);
        assert!(sint.auto_eoi() && !sint.masked());
        // A masked SINT keeps what was written (it interrupts nobody).
        synic
            .msr_write(&memory, msr::SINT0 + 3, SintMsr::new(0x31, true, false).0)
            .unwrap();
        assert_eq!(
            SintMsr(synic.msr_read(msr::SINT0 + 3).unwrap()).vector(),
            0x31
        );
        assert_eq!(synic.stats.sint_vectors_rewritten, 1);
        synic.post(&memory, 2, message(1));
        assert_eq!(synic.take_interrupt(), Some(0x50));
        assert!(synic.vector_auto_eoi(0x50));
    }

    #[test]
    fn busy_slot_sets_pending_and_eom_delivers_next() {
        let memory = VecMemory::new(0x4000);
        let mut synic = enabled_synic(&memory, true);
        synic.post(&memory, 2, message(0xA));
        synic.post(&memory, 2, message(0xB));
        let slot = 0x1000 + 2 * 256;
        assert_eq!(memory.load_u32(slot).unwrap(), 1);
        let mut header = [0u8; 16];
        memory.read(slot, &mut header).unwrap();
        assert_eq!(header[4], 8);
        assert_eq!(header[5] & message_flags::MESSAGE_PENDING, 1);
        assert_eq!(synic.take_interrupt(), Some(0x30));
        assert_eq!(synic.take_interrupt(), None);
        // Freeing the slot without EOM delivers nothing.
        memory.store_u32(slot, 0).unwrap();
        synic.post(&memory, 3, message(0)); // a different SINT does not rescan SINT 2
        assert_eq!(memory.load_u32(slot).unwrap(), 0);
        // Nor does writing SIMP or SCONTROL (TLFS: only a new message for
        // the SINT, EOM and APIC EOI).
        synic.msr_write(&memory, msr::SIMP, 0x1000 | 1).unwrap();
        synic.msr_write(&memory, msr::SCONTROL, 1).unwrap();
        assert_eq!(memory.load_u32(slot).unwrap(), 0);
        synic.msr_write(&memory, msr::EOM, 0).unwrap();
        assert_eq!(memory.load_u32(slot).unwrap(), 1);
        let mut payload = [0u8; 1];
        memory.read(slot + 16, &mut payload).unwrap();
        assert_eq!(payload[0], 0xB);
        // Two on SINT 2 and the one on SINT 3.
        assert_eq!(synic.stats.messages_delivered, 3);
    }

    /// Guest memory whose guest empties SINT 2's slot at the worst moment:
    /// right before the host sets MessagePending on it (after the host saw
    /// the slot busy). The guest does its documented part: copy the slot,
    /// clear the type, then read the flags (and would write EOM if it saw
    /// MessagePending).
    struct GuestEmptiesSlotWhileMarking {
        memory: VecMemory,
        slot: u64,
        /// What the guest took: the payload's first byte and whether it
        /// saw MessagePending after clearing the type.
        taken: core::cell::RefCell<Option<(u8, bool)>>,
    }

    impl GuestMemory for GuestEmptiesSlotWhileMarking {
        fn size(&self) -> u64 {
            self.memory.size()
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), hv_interface::OutOfRange> {
            self.memory.read(gpa, buf)
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), hv_interface::OutOfRange> {
            self.memory.write(gpa, data)
        }
        fn load_u32(&self, gpa: u64) -> Result<u32, hv_interface::OutOfRange> {
            self.memory.load_u32(gpa)
        }
        fn store_u32(&self, gpa: u64, value: u32) -> Result<(), hv_interface::OutOfRange> {
            self.memory.store_u32(gpa, value)
        }
        fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, hv_interface::OutOfRange> {
            let marking_pending = gpa == self.slot + 4 && bits & (1 << 8) != 0;
            if marking_pending && self.taken.borrow().is_none() {
                let mut payload = [0u8; 1];
                self.memory.read(self.slot + 16, &mut payload)?;
                self.memory.store_u32(self.slot, 0)?;
                let flags = (self.memory.load_u32(self.slot + 4)? >> 8) as u8;
                let saw_pending = flags & message_flags::MESSAGE_PENDING != 0;
                *self.taken.borrow_mut() = Some((payload[0], saw_pending));
            }
            self.memory.fetch_or_u32(gpa, bits)
        }
        fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, hv_interface::OutOfRange> {
            self.memory.fetch_and_u32(gpa, bits)
        }
    }

    #[test]
    fn a_slot_emptied_while_pending_is_set_gets_the_message_at_once() {
        let slot = 0x1000 + 2 * 256;
        let memory = GuestEmptiesSlotWhileMarking {
            memory: VecMemory::new(0x4000),
            slot,
            taken: core::cell::RefCell::new(None),
        };
        let mut synic = enabled_synic(&memory, true);
        synic.post(&memory, 2, message(0xA));
        assert_eq!(synic.take_interrupt(), Some(0x30));
        // The slot is busy with A; posting B finds it busy, and the guest
        // takes A between that look and the MessagePending write.
        synic.post(&memory, 2, message(0xB));
        let taken = *memory.taken.borrow();
        assert_eq!(
            taken,
            Some((0xA, false)),
            "the guest took A before the flag was set, so it writes no EOM"
        );
        // No EOM comes, yet B must not wait for a third message: the host's
        // second look after setting the flag found the slot free.
        assert_eq!(memory.load_u32(slot).unwrap(), 1, "B was stranded");
        let mut payload = [0u8; 1];
        memory.read(slot + 16, &mut payload).unwrap();
        assert_eq!(payload[0], 0xB);
        assert_eq!(synic.queued(2), 0);
        assert_eq!(synic.take_interrupt(), Some(0x30));
        assert_eq!(synic.stats.freed_while_marking, 1);
        assert_eq!(synic.stats.eom_writes, 0);
    }

    #[test]
    fn masked_sint_loses_interrupts_and_invalid_vectors_fault() {
        let memory = VecMemory::new(0x4000);
        let mut synic = enabled_synic(&memory, true);
        synic
            .msr_write(&memory, msr::SINT0 + 2, SintMsr::new(0x30, true, true).0)
            .unwrap();
        synic.post(&memory, 2, message(1));
        assert_eq!(synic.take_interrupt(), None);
        assert_eq!(synic.stats.interrupts_lost, 1);
        assert_eq!(
            synic.msr_write(&memory, msr::SINT0, SintMsr::new(15, false, false).0),
            Err(Exception::GeneralProtection)
        );
        assert!(synic
            .msr_write(&memory, msr::SINT0, SintMsr::new(15, true, false).0)
            .is_ok());
    }

    #[test]
    fn reference_tsc_page_holds_the_hosts_pair_under_a_sequence() {
        use hyperv_defs::reference_tsc::{read_reference_time, PageUnusable};
        let memory = VecMemory::new(0x4000);
        let mut synic = Synic::new();
        let read_page = |memory: &VecMemory, tsc: u64| {
            read_reference_time(
                |at| memory.load_u32(0x2000 + at as u64).unwrap(),
                |at| {
                    let mut bytes = [0u8; 8];
                    memory.read(0x2000 + at as u64, &mut bytes).unwrap();
                    u64::from_le_bytes(bytes)
                },
                || tsc,
            )
        };
        // Outside guest memory: #GP, nothing stored.
        assert_eq!(
            synic.msr_write(&memory, msr::REFERENCE_TSC, 0x10_0000 | 1),
            Err(Exception::GeneralProtection)
        );
        assert_eq!(synic.msr_read(msr::REFERENCE_TSC), Ok(0));
        // Enabled before the host knows its TSC: sequence 0, use the MSR.
        memory.store_u32(0x2000, 77).unwrap();
        synic
            .msr_write(&memory, msr::REFERENCE_TSC, 0x2000 | 1)
            .unwrap();
        assert_eq!(synic.msr_read(msr::REFERENCE_TSC), Ok(0x2001));
        assert_eq!(read_page(&memory, 0), Err(PageUnusable::Invalid));
        // A 1 GHz TSC that reads 3e9 at reference time 1 s.
        let clock = TscClock::calibrated(1_000_000_000, 3_000_000_000, 10_000_000).unwrap();
        synic.set_tsc_clock(&memory, Some(clock));
        assert_eq!(read_page(&memory, 3_000_000_000), Ok((10_000_000, 1)));
        let (later, _) = read_page(&memory, 4_000_000_000).unwrap();
        assert!((19_999_999..=20_000_000).contains(&later), "{later}");
        // A new pair: a new sequence.
        let faster = TscClock::calibrated(2_000_000_000, 3_000_000_000, 10_000_000).unwrap();
        synic.set_tsc_clock(&memory, Some(faster));
        assert_eq!(read_page(&memory, 5_000_000_000).map(|r| r.1), Ok(2));
        assert_eq!(synic.stats.reference_tsc_updates, 2);
        // The same pair again: no rewrite.
        synic.set_tsc_clock(&memory, Some(faster));
        assert_eq!(synic.stats.reference_tsc_updates, 2);
        // Disabled: the host no longer writes the page.
        synic
            .msr_write(&memory, msr::REFERENCE_TSC, 0x2000)
            .unwrap();
        synic.set_tsc_clock(&memory, Some(clock));
        assert_eq!(read_page(&memory, 5_000_000_000).map(|r| r.1), Ok(2));
        assert_eq!(synic.tsc_clock(), None);
    }

    #[test]
    fn without_auto_eoi_the_vector_waits_for_apic_eoi() {
        let memory = VecMemory::new(0x4000);
        let mut synic = enabled_synic(&memory, false);
        assert!(synic.signal_event(&memory, 2, 5));
        assert_eq!(synic.take_interrupt(), Some(0x30));
        assert!(synic.signal_event(&memory, 2, 6));
        assert_eq!(synic.take_interrupt(), None);
        assert!(synic.interrupt_requested(0x30));
        synic.msr_write(&memory, APIC_EOI_MSR, 0).unwrap();
        assert_eq!(synic.take_interrupt(), Some(0x30));
        // Setting an already-set flag does not interrupt.
        synic.msr_write(&memory, APIC_EOI_MSR, 0).unwrap();
        assert!(synic.signal_event(&memory, 2, 6));
        assert_eq!(synic.take_interrupt(), None);
        assert_eq!(synic.stats.event_flags_already_set, 1);
        let mut flags = [0u8; 1];
        memory.read(0x2000 + 0x200, &mut flags).unwrap();
        assert_eq!(flags[0], 0b0110_0000);
    }

    #[test]
    fn msr_rules() {
        let memory = VecMemory::new(0x4000);
        let mut synic = Synic::new();
        // No guest OS ID: the hypercall page stays disabled.
        synic.msr_write(&memory, msr::HYPERCALL, 0x3001).unwrap();
        assert!(!synic.hypercalls_enabled());
        synic.msr_write(&memory, msr::GUEST_OS_ID, 1 << 63).unwrap();
        synic.msr_write(&memory, msr::HYPERCALL, 0x3001).unwrap();
        assert!(synic.hypercalls_enabled());
        synic.msr_write(&memory, msr::GUEST_OS_ID, 0).unwrap();
        assert!(!synic.hypercalls_enabled());
        assert_eq!(
            synic.msr_write(&memory, msr::SIMP, 0x4000 | 1),
            Err(Exception::GeneralProtection)
        );
        assert_eq!(
            synic.msr_write(&memory, msr::SVERSION, 1),
            Err(Exception::GeneralProtection)
        );
        assert_eq!(synic.msr_read(msr::SVERSION), Ok(1));
        assert_eq!(
            synic.msr_read(0x4000_00A0),
            Err(Exception::GeneralProtection)
        );
        assert_eq!(synic.msr_read(msr::SINT0 + 7), Ok(0x10000));
    }

    fn timer_synic(memory: &VecMemory) -> Synic {
        let mut synic = enabled_synic(memory, true);
        synic
            .msr_write(memory, msr::SINT0 + 3, SintMsr::new(0x31, false, true).0)
            .unwrap();
        synic
    }

    /// The timer message in SINT3's slot: (type, payload size, flags, the
    /// payload).
    fn timer_slot(memory: &VecMemory) -> (u32, u8, u8, TimerMessagePayload) {
        let slot = 0x1000 + 3 * 256;
        let mut header = [0u8; 16];
        memory.read(slot, &mut header).unwrap();
        let mut payload = [0u8; 24];
        memory.read(slot + 16, &mut payload).unwrap();
        let payload = zerocopy::FromBytes::read_from_bytes(&payload[..]).unwrap();
        (
            u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            header[4],
            header[5],
            payload,
        )
    }

    #[test]
    fn the_reference_counter_counts_100ns_units_and_is_read_only() {
        let memory = VecMemory::new(0x4000);
        let mut synic = Synic::new();
        assert_eq!(synic.msr_read(msr::TIME_REF_COUNT), Ok(0));
        synic.advance(&memory, 1_234_567);
        assert_eq!(synic.msr_read(msr::TIME_REF_COUNT), Ok(12_345));
        // Never backwards.
        synic.advance(&memory, 1_000);
        assert_eq!(synic.msr_read(msr::TIME_REF_COUNT), Ok(12_345));
        assert_eq!(
            synic.msr_write(&memory, msr::TIME_REF_COUNT, 0),
            Err(Exception::GeneralProtection)
        );
        // STIMER1 and up are not there.
        assert_eq!(
            synic.msr_read(msr::STIMER0_CONFIG + 2),
            Err(Exception::GeneralProtection)
        );
    }

    #[test]
    fn a_one_shot_timer_delivers_its_message_when_due_and_disables_itself() {
        let memory = VecMemory::new(0x4000);
        let mut synic = timer_synic(&memory);
        synic.advance(&memory, 1_000_000); // reference time 10_000
        let config = StimerConfig::one_shot(3, false, true);
        synic
            .msr_write(&memory, msr::STIMER0_CONFIG, config.0)
            .unwrap();
        assert!(!StimerConfig(synic.msr_read(msr::STIMER0_CONFIG).unwrap()).enabled());
        // Auto-enable: a non-zero count starts it.
        synic
            .msr_write(&memory, msr::STIMER0_COUNT, 15_000)
            .unwrap();
        assert!(StimerConfig(synic.msr_read(msr::STIMER0_CONFIG).unwrap()).enabled());
        assert_eq!(synic.next_timer_ns(), Some(1_500_000));
        synic.advance(&memory, 1_499_999);
        assert_eq!(timer_slot(&memory).0, 0, "not due yet");
        assert_eq!(synic.take_interrupt(), None);
        synic.advance(&memory, 1_600_000);
        let (kind, size, flags, payload) = timer_slot(&memory);
        assert_eq!(kind, message_type::TIMER_EXPIRED);
        assert_eq!(size, 24);
        assert_eq!(flags, 0);
        assert_eq!(payload.timer_index, 0);
        assert_eq!(payload.expiration_time, 15_000);
        assert_eq!(payload.delivery_time, 16_000);
        assert_eq!(synic.take_interrupt(), Some(0x31));
        // One-shot: it disabled itself and does not fire again.
        assert!(!StimerConfig(synic.msr_read(msr::STIMER0_CONFIG).unwrap()).enabled());
        assert_eq!(synic.next_timer_ns(), None);
        memory.store_u32(0x1000 + 3 * 256, 0).unwrap();
        synic.advance(&memory, 5_000_000);
        assert_eq!(timer_slot(&memory).0, 0);
        assert_eq!(synic.stats.timer_expirations, 1);
    }

    #[test]
    fn a_timer_message_waits_for_a_busy_slot_and_carries_its_delivery_time() {
        let memory = VecMemory::new(0x4000);
        let mut synic = timer_synic(&memory);
        synic.post(&memory, 3, message(0xA)); // the slot is busy
        synic
            .msr_write(
                &memory,
                msr::STIMER0_CONFIG,
                StimerConfig::one_shot(3, false, true).0,
            )
            .unwrap();
        synic.msr_write(&memory, msr::STIMER0_COUNT, 100).unwrap();
        synic.advance(&memory, 20_000); // reference time 200: due
        let (kind, _, flags, _) = timer_slot(&memory);
        assert_eq!(kind, 1, "the earlier message keeps the slot");
        assert_eq!(flags & message_flags::MESSAGE_PENDING, 1);
        assert_eq!(synic.queued(3), 1);
        // The guest empties the slot and writes EOM later.
        memory.store_u32(0x1000 + 3 * 256, 0).unwrap();
        synic.advance(&memory, 50_000);
        assert_eq!(timer_slot(&memory).0, 0, "no retry without EOM");
        synic.msr_write(&memory, msr::EOM, 0).unwrap();
        let (kind, _, _, payload) = timer_slot(&memory);
        assert_eq!(kind, message_type::TIMER_EXPIRED);
        assert_eq!(payload.expiration_time, 100);
        assert_eq!(payload.delivery_time, 500);
    }

    #[test]
    fn timer_configurations_this_host_refuses_or_ignores() {
        let memory = VecMemory::new(0x4000);
        let mut synic = timer_synic(&memory);
        synic.advance(&memory, 100_000); // reference time 1_000
                                         // Direct mode is not offered: #GP, nothing stored.
        let direct = StimerConfig::one_shot(3, true, false).0 | StimerConfig::DIRECT_MODE;
        assert_eq!(
            synic.msr_write(&memory, msr::STIMER0_CONFIG, direct),
            Err(Exception::GeneralProtection)
        );
        assert_eq!(synic.msr_read(msr::STIMER0_CONFIG), Ok(0));
        // SINTx 0: stays disabled.
        synic.msr_write(&memory, msr::STIMER0_COUNT, 5_000).unwrap();
        synic
            .msr_write(&memory, msr::STIMER0_CONFIG, StimerConfig::ENABLE)
            .unwrap();
        assert_eq!(synic.next_timer_ns(), None);
        // A zero count stops a running timer.
        synic
            .msr_write(
                &memory,
                msr::STIMER0_CONFIG,
                StimerConfig::one_shot(3, true, true).0,
            )
            .unwrap();
        assert_eq!(synic.next_timer_ns(), Some(500_000));
        synic.msr_write(&memory, msr::STIMER0_COUNT, 0).unwrap();
        assert_eq!(synic.next_timer_ns(), None);
        assert!(!StimerConfig(synic.msr_read(msr::STIMER0_CONFIG).unwrap()).enabled());
        // An expiration time already past expires at once.
        synic.msr_write(&memory, msr::STIMER0_COUNT, 10).unwrap();
        assert_eq!(timer_slot(&memory).0, message_type::TIMER_EXPIRED);
        assert_eq!(timer_slot(&memory).3.delivery_time, 1_000);
    }

    #[test]
    fn a_periodic_timer_repeats_and_coalesces_missed_periods() {
        let memory = VecMemory::new(0x4000);
        let mut synic = timer_synic(&memory);
        let periodic = StimerConfig::one_shot(3, false, true).0 | StimerConfig::PERIODIC;
        synic
            .msr_write(&memory, msr::STIMER0_CONFIG, periodic)
            .unwrap();
        synic.msr_write(&memory, msr::STIMER0_COUNT, 1_000).unwrap(); // 100 us
        assert_eq!(synic.next_timer_ns(), Some(100_000));
        synic.advance(&memory, 100_000);
        assert_eq!(timer_slot(&memory).3.expiration_time, 1_000);
        memory.store_u32(0x1000 + 3 * 256, 0).unwrap();
        // 3.5 periods later: one expiration for the missed ones.
        synic.advance(&memory, 450_000);
        assert_eq!(timer_slot(&memory).3.expiration_time, 2_000);
        assert_eq!(synic.next_timer_ns(), Some(500_000));
        // Due again while its message still holds the slot: it is queued
        // once, and a further period adds nothing.
        synic.advance(&memory, 500_000);
        synic.advance(&memory, 600_000);
        assert_eq!(synic.queued(3), 1);
        assert_eq!(synic.stats.timer_coalesced, 1);
        assert_eq!(synic.stats.timer_expirations, 4);
        assert!(StimerConfig(synic.msr_read(msr::STIMER0_CONFIG).unwrap()).enabled());
    }
}
