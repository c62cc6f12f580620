//! Hyper-V Top Level Functional Specification (TLFS) definitions for the
//! hypervisor boundary: synthetic MSR numbers, the bit layouts of the synic
//! registers and of the hypercall MSR, the hypercall control word and result
//! value, `HV_STATUS` codes, the `HvCallPostMessage` / `HvCallSignalEvent`
//! inputs, the 256-byte synic message slot (`HV_MESSAGE`), the SIM and SIEF
//! pages and the VMBus monitor page; and (module [`cpuid`]) the parsing of
//! the hypervisor CPUID leaves that detects Hyper-V.
//!
//! This crate only defines layouts and pure accessors; it performs no I/O,
//! trusts nothing and writes nothing. Structures are `zerocopy` types with
//! explicit little-endian-on-x86 fields (the TLFS is x64 only, so native
//! integers are used; every crate that runs on a big-endian machine would have
//! to convert, which none of ours do). Each structure has a layout test.
//!
//! Sources: the TLFS (hypercall interface, inter-partition communication,
//! virtual interrupts chapters and the `HV_MESSAGE` data type), cross-checked
//! against OpenVMM's `hvdef` crate and Linux's `hyperv-tlfs.h` (read for
//! facts only).
#![no_std]
#![forbid(unsafe_code)]

pub mod cpuid;
pub mod reference_tsc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The size of a guest page as the synic sees it.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Synthetic MSR numbers (TLFS "Synthetic MSRs").
pub mod msr {
    /// Guest OS identity; must be non-zero before the hypercall page can be enabled.
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    /// Hypercall page: enable bit 0, locked bit 1, GPN in bits 12-63.
    pub const HYPERCALL: u32 = 0x4000_0001;
    /// Index of the current virtual processor (read-only).
    pub const VP_INDEX: u32 = 0x4000_0002;
    /// Synic control: enable bit 0.
    pub const SCONTROL: u32 = 0x4000_0080;
    /// Synic version (read-only, 1).
    pub const SVERSION: u32 = 0x4000_0081;
    /// Synic event-flags page: enable bit 0, GPN in bits 12-63.
    pub const SIEFP: u32 = 0x4000_0082;
    /// Synic message page: enable bit 0, GPN in bits 12-63.
    pub const SIMP: u32 = 0x4000_0083;
    /// End of message (write-only; reads return 0).
    pub const EOM: u32 = 0x4000_0084;
    /// SINT0; SINTn is `SINT0 + n` for n in 0..16.
    pub const SINT0: u32 = 0x4000_0090;
    /// SINT15.
    pub const SINT15: u32 = 0x4000_009F;
    /// The partition reference counter: 100 ns units since the partition
    /// was created (read-only).
    pub const TIME_REF_COUNT: u32 = 0x4000_0020;
    /// The reference TSC page (HV_X64_MSR_REFERENCE_TSC): enable bit 0,
    /// bits 11:1 RsvdP, GPN in bits 63:12 ([`super::reference_tsc`]).
    pub const REFERENCE_TSC: u32 = 0x4000_0021;
    /// Synthetic timer 0's configuration ([`super::StimerConfig`]).
    pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
    /// Synthetic timer 0's count: the expiration time (one-shot) or the
    /// period (periodic), in 100 ns reference-time units.
    pub const STIMER0_COUNT: u32 = 0x4000_00B1;

    /// The SINT index of a SINTx MSR number, if it is one.
    pub const fn sint_index(msr: u32) -> Option<u8> {
        if msr >= SINT0 && msr <= SINT15 {
            Some((msr - SINT0) as u8)
        } else {
            None
        }
    }
}

/// The value SVERSION reads as (TLFS: synic version 1).
pub const SYNIC_VERSION: u64 = 1;
/// The number of synthetic interrupt sources per virtual processor.
pub const SINT_COUNT: usize = 16;
/// The first SINT vector that may be unmasked (vectors 0-15 are reserved by x86).
pub const SINT_FIRST_VALID_VECTOR: u8 = 16;

/// The hypercall MSR (TLFS "Establishing the hypercall interface").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HypercallMsr(pub u64);

impl HypercallMsr {
    pub const ENABLE: u64 = 1 << 0;
    pub const LOCKED: u64 = 1 << 1;
    /// Bits 11:2 are RsvdP: ignored on reads, preserved on writes.
    pub const RESERVED_PRESERVE: u64 = 0xFFC;
    pub const GPN_MASK: u64 = !0xFFF;

    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    pub const fn locked(self) -> bool {
        self.0 & Self::LOCKED != 0
    }
    /// The guest physical page number of the hypercall page.
    pub const fn gpn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    pub const fn gpa(self) -> u64 {
        self.0 & Self::GPN_MASK
    }
}

/// SCONTROL: only bit 0 (enable) is defined; the rest is RsvdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScontrolMsr(pub u64);

bitflags::bitflags! {
    /// The defined bits of SCONTROL.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ScontrolFlags: u64 {
        const ENABLE = 1 << 0;
    }
}

impl ScontrolMsr {
    /// The defined bits (RsvdP ones dropped).
    pub const fn flags(self) -> ScontrolFlags {
        ScontrolFlags::from_bits_truncate(self.0)
    }
    pub const fn enabled(self) -> bool {
        self.flags().contains(ScontrolFlags::ENABLE)
    }
}

/// SIMP and SIEFP: enable bit 0, bits 11:1 RsvdP, GPN in bits 63:12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynicPageMsr(pub u64);

impl SynicPageMsr {
    pub const ENABLE: u64 = 1 << 0;
    pub const GPN_MASK: u64 = !0xFFF;
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    pub const fn gpn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    pub const fn gpa(self) -> u64 {
        self.0 & Self::GPN_MASK
    }
    pub const fn new(gpa: u64, enable: bool) -> Self {
        SynicPageMsr((gpa & Self::GPN_MASK) | if enable { Self::ENABLE } else { 0 })
    }
}

/// A SINTx register: vector bits 7:0, masked bit 16, auto-EOI bit 17,
/// polling bit 18; the other bits are RsvdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SintMsr(pub u64);

bitflags::bitflags! {
    /// The flag bits of a SINTx register (its vector is bits 7:0).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SintFlags: u64 {
        const MASKED = 1 << 16;
        const AUTO_EOI = 1 << 17;
        const POLLING = 1 << 18;
    }
}

impl SintMsr {
    pub const VECTOR_MASK: u64 = 0xFF;
    /// The value every SINT has after reset: masked, vector 0.
    pub const RESET: SintMsr = SintMsr(SintFlags::MASKED.bits());

    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }
    /// The flag bits (RsvdP ones dropped).
    pub const fn flags(self) -> SintFlags {
        SintFlags::from_bits_truncate(self.0)
    }
    pub const fn masked(self) -> bool {
        self.flags().contains(SintFlags::MASKED)
    }
    pub const fn auto_eoi(self) -> bool {
        self.flags().contains(SintFlags::AUTO_EOI)
    }
    pub const fn polling(self) -> bool {
        self.flags().contains(SintFlags::POLLING)
    }
    pub const fn new(vector: u8, masked: bool, auto_eoi: bool) -> Self {
        let mut flags = SintFlags::empty();
        if masked {
            flags = flags.union(SintFlags::MASKED);
        }
        if auto_eoi {
            flags = flags.union(SintFlags::AUTO_EOI);
        }
        SintMsr(vector as u64 | flags.bits())
    }
}

/// Hypercall call codes used at the VMBus boundary.
pub mod call_code {
    pub const POST_MESSAGE: u16 = 0x005C;
    pub const SIGNAL_EVENT: u16 = 0x005D;
}

/// The 64-bit hypercall input value (TLFS "Hypercall Inputs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HypercallControl(pub u64);

impl HypercallControl {
    pub const CODE_MASK: u64 = 0xFFFF;
    pub const FAST: u64 = 1 << 16;
    pub const VARIABLE_HEADER_SHIFT: u32 = 17;
    pub const VARIABLE_HEADER_MASK: u64 = 0x3FF << 17;
    pub const REP_COUNT_SHIFT: u32 = 32;
    pub const REP_COUNT_MASK: u64 = 0xFFF << 32;
    pub const REP_START_SHIFT: u32 = 48;
    pub const REP_START_MASK: u64 = 0xFFF << 48;
    /// RsvdZ bits 31:27, 47:44 and 63:60. (Bit 31 is "nested" in newer
    /// TLFS revisions; a non-nested guest must keep it zero.)
    pub const RESERVED_MASK: u64 = (0x1F << 27) | (0xF << 44) | (0xF << 60);

    pub const fn code(self) -> u16 {
        (self.0 & Self::CODE_MASK) as u16
    }
    pub const fn fast(self) -> bool {
        self.0 & Self::FAST != 0
    }
    pub const fn variable_header_qwords(self) -> u16 {
        ((self.0 & Self::VARIABLE_HEADER_MASK) >> Self::VARIABLE_HEADER_SHIFT) as u16
    }
    pub const fn rep_count(self) -> u16 {
        ((self.0 & Self::REP_COUNT_MASK) >> Self::REP_COUNT_SHIFT) as u16
    }
    pub const fn rep_start(self) -> u16 {
        ((self.0 & Self::REP_START_MASK) >> Self::REP_START_SHIFT) as u16
    }
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
    /// A simple (non-rep) call with the given code.
    pub const fn simple(code: u16, fast: bool) -> Self {
        HypercallControl(code as u64 | if fast { Self::FAST } else { 0 })
    }
}

/// The 64-bit hypercall result value (TLFS "Hypercall Outputs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HypercallResult(pub u64);

impl HypercallResult {
    pub const fn status(self) -> HvStatus {
        HvStatus((self.0 & 0xFFFF) as u16)
    }
    pub const fn reps_completed(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }
    pub const fn new(status: HvStatus, reps_completed: u16) -> Self {
        HypercallResult(status.0 as u64 | (((reps_completed as u64) & 0xFFF) << 32))
    }
    pub const fn is_success(self) -> bool {
        self.status().0 == HvStatus::SUCCESS.0
    }
}

/// `HV_STATUS`: a 16-bit hypercall status (an open enum: unknown values are
/// kept, not rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HvStatus(pub u16);

impl HvStatus {
    pub const SUCCESS: HvStatus = HvStatus(0x0000);
    pub const INVALID_HYPERCALL_CODE: HvStatus = HvStatus(0x0002);
    pub const INVALID_HYPERCALL_INPUT: HvStatus = HvStatus(0x0003);
    pub const INVALID_ALIGNMENT: HvStatus = HvStatus(0x0004);
    pub const INVALID_PARAMETER: HvStatus = HvStatus(0x0005);
    pub const ACCESS_DENIED: HvStatus = HvStatus(0x0006);
    pub const INVALID_PARTITION_STATE: HvStatus = HvStatus(0x0007);
    pub const OPERATION_DENIED: HvStatus = HvStatus(0x0008);
    pub const INSUFFICIENT_MEMORY: HvStatus = HvStatus(0x000B);
    pub const INVALID_PORT_ID: HvStatus = HvStatus(0x0011);
    pub const INVALID_CONNECTION_ID: HvStatus = HvStatus(0x0012);
    pub const INSUFFICIENT_BUFFERS: HvStatus = HvStatus(0x0013);
    pub const INVALID_VP_INDEX: HvStatus = HvStatus(0x000E);
    pub const INVALID_SYNIC_STATE: HvStatus = HvStatus(0x0018);

    pub const fn name(self) -> &'static str {
        match self.0 {
            0x0000 => "Success",
            0x0002 => "InvalidHypercallCode",
            0x0003 => "InvalidHypercallInput",
            0x0004 => "InvalidAlignment",
            0x0005 => "InvalidParameter",
            0x0006 => "AccessDenied",
            0x0007 => "InvalidPartitionState",
            0x0008 => "OperationDenied",
            0x000B => "InsufficientMemory",
            0x000E => "InvalidVpIndex",
            0x0011 => "InvalidPortId",
            0x0012 => "InvalidConnectionId",
            0x0013 => "InsufficientBuffers",
            0x0018 => "InvalidSynicState",
            _ => "Unknown",
        }
    }
}

/// `HV_MESSAGE_TYPE` values the boundary uses. Guest-posted types must be
/// non-zero with the top bit clear; the hypervisor's own types have it set.
pub mod message_type {
    pub const NONE: u32 = 0;
    /// The type VMBus channel messages are posted and delivered with.
    pub const VMBUS: u32 = 1;
    /// Types with this bit set are reserved to the hypervisor.
    pub const HYPERVISOR_RESERVED_BIT: u32 = 0x8000_0000;
    pub const TIMER_EXPIRED: u32 = 0x8000_0010;
}

/// The size of a synic message slot.
pub const MESSAGE_SIZE: usize = 256;
/// The largest payload of a synic message.
pub const MESSAGE_MAX_PAYLOAD: usize = 240;

/// `HvCallPostMessage` input (call code 0x5C, memory-based, 256 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostMessageInput {
    pub connection_id: u32,
    pub reserved: u32,
    pub message_type: u32,
    pub payload_size: u32,
    pub payload: [u8; MESSAGE_MAX_PAYLOAD],
}

/// `HvCallSignalEvent` input (call code 0x5D): in memory (8 bytes) or, for
/// the fast form, the whole input in RDX as
/// `connection_id | flag_number << 32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SignalEventInput {
    pub connection_id: u32,
    pub flag_number: u16,
    pub reserved: u16,
}

impl SignalEventInput {
    /// The RDX value of the fast form.
    pub const fn to_fast(self) -> u64 {
        self.connection_id as u64 | (self.flag_number as u64) << 32 | (self.reserved as u64) << 48
    }
    pub const fn from_fast(value: u64) -> Self {
        SignalEventInput {
            connection_id: value as u32,
            flag_number: (value >> 32) as u16,
            reserved: (value >> 48) as u16,
        }
    }
}

/// `HV_CONNECTION_ID`: only the low 24 bits are the ID; the top 8 are RsvdZ.
pub const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;

/// Bits of [`MessageHeader::message_flags`].
pub mod message_flags {
    /// More messages are queued for this SINT: write EOM after emptying the slot.
    pub const MESSAGE_PENDING: u8 = 1 << 0;
}

/// A synthetic timer's configuration register (TLFS "Synthetic Timer
/// Configuration Register"): enable 0, periodic 1, lazy 2, auto-enable 3,
/// APIC vector 11:4 (direct mode only), direct mode 12, SINTx 19:16; bits
/// 15:13 and 63:20 reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StimerConfig(pub u64);

impl StimerConfig {
    pub const ENABLE: u64 = 1 << 0;
    pub const PERIODIC: u64 = 1 << 1;
    pub const LAZY: u64 = 1 << 2;
    pub const AUTO_ENABLE: u64 = 1 << 3;
    pub const APIC_VECTOR_SHIFT: u32 = 4;
    pub const APIC_VECTOR_MASK: u64 = 0xFF << Self::APIC_VECTOR_SHIFT;
    pub const DIRECT_MODE: u64 = 1 << 12;
    pub const SINT_SHIFT: u32 = 16;
    pub const SINT_MASK: u64 = 0xF << Self::SINT_SHIFT;

    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    pub const fn periodic(self) -> bool {
        self.0 & Self::PERIODIC != 0
    }
    pub const fn auto_enable(self) -> bool {
        self.0 & Self::AUTO_ENABLE != 0
    }
    pub const fn direct_mode(self) -> bool {
        self.0 & Self::DIRECT_MODE != 0
    }
    /// The SINT its expiration message goes to (message mode).
    pub const fn sint(self) -> u8 {
        ((self.0 & Self::SINT_MASK) >> Self::SINT_SHIFT) as u8
    }
    /// A one-shot, message-mode configuration for `sint`.
    pub const fn one_shot(sint: u8, enable: bool, auto_enable: bool) -> Self {
        StimerConfig(
            ((sint as u64) << Self::SINT_SHIFT) & Self::SINT_MASK
                | if enable { Self::ENABLE } else { 0 }
                | if auto_enable { Self::AUTO_ENABLE } else { 0 },
        )
    }
}

/// The payload of an `HVMSG_TIMER_EXPIRED` message
/// ([`message_type::TIMER_EXPIRED`]), 24 bytes; times are reference-time
/// (100 ns) values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TimerMessagePayload {
    pub timer_index: u32,
    pub reserved: u32,
    /// When the timer was due.
    pub expiration_time: u64,
    /// When the message was put into the slot.
    pub delivery_time: u64,
}

impl TimerMessagePayload {
    pub const DELIVERY_TIME_OFFSET: usize = 16;
}

/// The 16-byte header of a synic message slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageHeader {
    pub message_type: u32,
    pub payload_size: u8,
    pub message_flags: u8,
    pub reserved: u16,
    /// The sender: a port ID (low 32 bits) for posted messages, a partition
    /// ID for intercepts, zero for timers.
    pub origin: u64,
}

/// `HV_MESSAGE`: one 256-byte message slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessage {
    pub header: MessageHeader,
    pub payload: [u8; MESSAGE_MAX_PAYLOAD],
}

impl HvMessage {
    /// Byte offset of `message_type` within a slot (cleared by the guest to free it).
    pub const MESSAGE_TYPE_OFFSET: usize = 0;
    /// Byte offset of `message_flags` within a slot.
    pub const MESSAGE_FLAGS_OFFSET: usize = 5;
}

/// The SIM page: one slot per SINT.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessagePage {
    pub slots: [HvMessage; SINT_COUNT],
}

/// Event flags per SINT (bits of one 256-byte SIEF area).
pub const EVENT_FLAGS_PER_SINT: usize = 2048;
/// Bytes of one SINT's event-flag area.
pub const EVENT_FLAGS_BYTES: usize = EVENT_FLAGS_PER_SINT / 8;

/// One SINT's area of the SIEF page.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventFlags {
    pub bits: [u8; EVENT_FLAGS_BYTES],
}

/// The SIEF page: one 2048-bit area per SINT.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventFlagsPage {
    pub sints: [EventFlags; SINT_COUNT],
}

impl EventFlagsPage {
    /// Byte offset in the page of the byte holding `flag` of `sint`, and the
    /// bit within that byte. `None` if out of range.
    pub const fn flag_position(sint: u8, flag: u16) -> Option<(usize, u8)> {
        if sint as usize >= SINT_COUNT || flag as usize >= EVENT_FLAGS_PER_SINT {
            return None;
        }
        Some((
            sint as usize * EVENT_FLAGS_BYTES + flag as usize / 8,
            (flag % 8) as u8,
        ))
    }
}

/// A monitor trigger group: one bit per monitored channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorTriggerGroup {
    pub pending: u32,
    pub armed: u32,
}

/// A monitor parameter: which connection and flag a monitor bit stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorParameter {
    pub connection_id: u32,
    pub flag_number: u16,
    pub reserved: u16,
}

/// The number of trigger groups in a monitor page.
pub const MONITOR_GROUPS: usize = 4;
/// Monitored channels per trigger group.
pub const MONITOR_BITS_PER_GROUP: usize = 32;
/// The largest monitor ID (4 groups of 32).
pub const MONITOR_ID_MAX: u8 = (MONITOR_GROUPS * MONITOR_BITS_PER_GROUP - 1) as u8;

/// A monitor (MNF) page, 4096 bytes. VMBus uses two: the first written by the
/// host (host -> guest), the second by the guest (guest -> host).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorPage {
    /// Bits 3:0 enable the trigger groups.
    pub trigger_state: u32,
    pub reserved1: u32,
    pub trigger_group: [MonitorTriggerGroup; MONITOR_GROUPS],
    pub reserved2: [u8; 536],
    pub latency: [[u16; MONITOR_BITS_PER_GROUP]; MONITOR_GROUPS],
    pub reserved3: [u8; 256],
    pub parameter: [[MonitorParameter; MONITOR_BITS_PER_GROUP]; MONITOR_GROUPS],
    pub reserved4: [u8; 1984],
}

impl MonitorPage {
    /// Byte offset of `trigger_group[group].pending`.
    pub const fn pending_offset(group: usize) -> usize {
        8 + group * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn msr_numbers() {
        assert_eq!(msr::GUEST_OS_ID, 0x4000_0000);
        assert_eq!(msr::HYPERCALL, 0x4000_0001);
        assert_eq!(msr::SCONTROL, 0x4000_0080);
        assert_eq!(msr::SIEFP, 0x4000_0082);
        assert_eq!(msr::SIMP, 0x4000_0083);
        assert_eq!(msr::EOM, 0x4000_0084);
        assert_eq!(msr::sint_index(0x4000_0092), Some(2));
        assert_eq!(msr::sint_index(msr::SINT15), Some(15));
        assert_eq!(msr::sint_index(0x4000_00A0), None);
        assert_eq!(msr::sint_index(msr::EOM), None);
    }

    #[test]
    fn sint_register_layout() {
        let sint = SintMsr(0x0003_00F3);
        assert_eq!(sint.vector(), 0xF3);
        assert!(sint.masked());
        assert!(sint.auto_eoi());
        assert!(!sint.polling());
        assert_eq!(SintMsr::new(0x30, false, true).0, 0x2_0030);
        assert_eq!(SintMsr::RESET.0, 0x1_0000);
        assert!(SintMsr(1 << 18).polling());
    }

    #[test]
    fn page_register_layout() {
        let simp = SynicPageMsr(0x1234_5001);
        assert!(simp.enabled());
        assert_eq!(simp.gpn(), 0x12345);
        assert_eq!(simp.gpa(), 0x1234_5000);
        assert_eq!(SynicPageMsr::new(0x7000, true).0, 0x7001);
        let hypercall = HypercallMsr(0x9003);
        assert!(hypercall.enabled() && hypercall.locked());
        assert_eq!(hypercall.gpa(), 0x9000);
        assert!(ScontrolMsr(1).enabled());
    }

    #[test]
    fn hypercall_control_layout() {
        let control = HypercallControl(0x0FFF_0FFF_07FE_005C | HypercallControl::FAST);
        assert_eq!(control.code(), 0x5C);
        assert!(control.fast());
        assert_eq!(control.variable_header_qwords(), 0x3FF);
        assert_eq!(control.rep_count(), 0xFFF);
        assert_eq!(control.rep_start(), 0xFFF);
        assert_eq!(control.reserved_bits(), 0);
        assert_eq!(HypercallControl(1 << 27).reserved_bits(), 1 << 27);
        assert_eq!(HypercallControl(1 << 44).reserved_bits(), 1 << 44);
        assert_eq!(HypercallControl(1 << 63).reserved_bits(), 1 << 63);
        assert_eq!(
            HypercallControl::simple(call_code::SIGNAL_EVENT, true).0,
            0x1_005D
        );
    }

    #[test]
    fn hypercall_result_and_status_codes() {
        let result = HypercallResult::new(HvStatus::INSUFFICIENT_BUFFERS, 3);
        assert_eq!(result.0, 0x3_0000_0013);
        assert_eq!(result.status(), HvStatus::INSUFFICIENT_BUFFERS);
        assert_eq!(result.reps_completed(), 3);
        assert!(HypercallResult(0xFFFF_0000).is_success());
        assert_eq!(HvStatus::INVALID_HYPERCALL_CODE.0, 2);
        assert_eq!(HvStatus::INVALID_HYPERCALL_INPUT.0, 3);
        assert_eq!(HvStatus::INVALID_ALIGNMENT.0, 4);
        assert_eq!(HvStatus::INVALID_PARAMETER.0, 5);
        assert_eq!(HvStatus::ACCESS_DENIED.0, 6);
        assert_eq!(HvStatus::INVALID_PORT_ID.0, 0x11);
        assert_eq!(HvStatus::INVALID_CONNECTION_ID.0, 0x12);
        assert_eq!(HvStatus::INSUFFICIENT_BUFFERS.0, 0x13);
        assert_eq!(
            HvStatus::INVALID_CONNECTION_ID.name(),
            "InvalidConnectionId"
        );
    }

    #[test]
    fn post_message_input_layout() {
        assert_eq!(size_of::<PostMessageInput>(), 256);
        assert_eq!(offset_of!(PostMessageInput, connection_id), 0);
        assert_eq!(offset_of!(PostMessageInput, reserved), 4);
        assert_eq!(offset_of!(PostMessageInput, message_type), 8);
        assert_eq!(offset_of!(PostMessageInput, payload_size), 12);
        assert_eq!(offset_of!(PostMessageInput, payload), 16);
    }

    #[test]
    fn signal_event_input_layout() {
        assert_eq!(size_of::<SignalEventInput>(), 8);
        assert_eq!(offset_of!(SignalEventInput, flag_number), 4);
        assert_eq!(offset_of!(SignalEventInput, reserved), 6);
        let input = SignalEventInput {
            connection_id: 0x12_3456,
            flag_number: 7,
            reserved: 0,
        };
        assert_eq!(input.to_fast(), 0x7_0012_3456);
        assert_eq!(SignalEventInput::from_fast(input.to_fast()), input);
        assert_eq!(input.as_bytes(), &input.to_fast().to_le_bytes());
    }

    #[test]
    fn message_slot_layout() {
        assert_eq!(size_of::<MessageHeader>(), 16);
        assert_eq!(size_of::<HvMessage>(), MESSAGE_SIZE);
        assert_eq!(offset_of!(MessageHeader, message_type), 0);
        assert_eq!(offset_of!(MessageHeader, payload_size), 4);
        assert_eq!(offset_of!(MessageHeader, message_flags), 5);
        assert_eq!(offset_of!(MessageHeader, origin), 8);
        assert_eq!(offset_of!(HvMessage, payload), 16);
        assert_eq!(HvMessage::MESSAGE_FLAGS_OFFSET, 5);
        assert_eq!(size_of::<MessagePage>(), PAGE_SIZE as usize);
    }

    #[test]
    fn event_flags_page_layout() {
        assert_eq!(size_of::<EventFlags>(), 256);
        assert_eq!(size_of::<EventFlagsPage>(), PAGE_SIZE as usize);
        // VMBus uses SINT 2: its area starts at 0x200.
        assert_eq!(EventFlagsPage::flag_position(2, 0), Some((0x200, 0)));
        assert_eq!(EventFlagsPage::flag_position(2, 9), Some((0x201, 1)));
        assert_eq!(EventFlagsPage::flag_position(15, 2047), Some((0xFFF, 7)));
        assert_eq!(EventFlagsPage::flag_position(16, 0), None);
        assert_eq!(EventFlagsPage::flag_position(0, 2048), None);
    }

    #[test]
    fn timer_layouts() {
        assert_eq!(size_of::<TimerMessagePayload>(), 24);
        let payload = TimerMessagePayload {
            timer_index: 1,
            reserved: 0,
            expiration_time: 0x0203,
            delivery_time: 0x0405,
        };
        let bytes = payload.as_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[8], 3);
        assert_eq!(bytes[TimerMessagePayload::DELIVERY_TIME_OFFSET], 5);
        let config = StimerConfig::one_shot(3, true, true);
        assert_eq!(config.0, 0x3_0009);
        assert_eq!(config.sint(), 3);
        assert!(config.enabled() && config.auto_enable() && !config.periodic());
        assert!(StimerConfig(1 << 12).direct_mode());
        assert_eq!(msr::STIMER0_COUNT, msr::STIMER0_CONFIG + 1);
    }

    #[test]
    fn monitor_page_layout() {
        assert_eq!(size_of::<MonitorPage>(), PAGE_SIZE as usize);
        assert_eq!(offset_of!(MonitorPage, trigger_state), 0);
        assert_eq!(offset_of!(MonitorPage, trigger_group), 0x8);
        assert_eq!(offset_of!(MonitorPage, latency), 0x240);
        assert_eq!(offset_of!(MonitorPage, parameter), 0x440);
        assert_eq!(size_of::<MonitorParameter>(), 8);
        assert_eq!(MonitorPage::pending_offset(1), 0x10);
        assert_eq!(MONITOR_ID_MAX, 127);
    }
}
