//! The contract between the root task (which builds each protection domain)
//! and this runtime (which runs inside it): fixed virtual addresses, the
//! capability slots of a PD's CSpace, the badges, the monitor's request
//! labels and the read-only information page. `docs/sel4.md` explains the
//! design; both sides use only these definitions.

/// Where the root task maps the read-only [`PdInfo`] page.
pub const PD_INFO_VADDR: u64 = 0x1000_0000;
/// Where the PD's IPC buffer is mapped (a guard page on each side).
pub const IPC_BUFFER_VADDR: u64 = 0x1000_2000;
/// The top of the PD's stack (exclusive); the stack grows down from here
/// and an unmapped guard page lies below it.
pub const STACK_TOP_VADDR: u64 = 0x2000_0000;
/// The panic handler writes here (never mapped) so that a panic reaches the
/// supervisor as a fault the monitor can tell apart from a wild access.
pub const PANIC_FAULT_VADDR: u64 = 0xdead_0000;
/// Where the regions start (sysdesc's `REGION_VADDR_BASE`): from the stack
/// top up to here the root task maps nothing in any PD.
pub const REGIONS_VADDR: u64 = 0x10_0000_0000;
const _: () = assert!(STACK_TOP_VADDR < PANIC_FAULT_VADDR && PANIC_FAULT_VADDR < REGIONS_VADDR);

/// A PD's CNode: 2^8 slots, resolved with a 56-bit zero guard so that a
/// 64-bit capability pointer is the slot number.
pub const PD_CNODE_BITS: u64 = 8;
pub const PD_CNODE_GUARD_BITS: u64 = 64 - PD_CNODE_BITS;

/// The PD's own endpoint: protected calls arrive on it, and notifications
/// through the notification bound to its TCB.
pub const SLOT_ENDPOINT: u64 = 1;
/// A send-only cap to the monitor's endpoint, badged with the PD index:
/// requests (restart, stop, power off, fault news).
pub const SLOT_MONITOR: u64 = 2;
/// The cap the kernel sends this PD's faults through (to the monitor,
/// badged [`FAULT_BADGE_FLAG`] | PD index). Named in the TCB.
pub const SLOT_FAULT: u64 = 3;
/// The kernel's hypervisor capability (kernel patch 0008: synthetic MSRs
/// and hypercalls), only in the PD the description grants
/// `hypervisor = true`; empty in every other PD.
pub const SLOT_HYPERVISOR: u64 = 4;
/// Channel `c`'s cap: a badged notification (notify channels) or a badged
/// endpoint of the server (protected-call client ends).
pub const SLOT_CHANNEL_BASE: u64 = 16;
/// The IRQ handler cap for the IRQ delivered on channel `c`.
pub const SLOT_IRQ_BASE: u64 = 80;
/// IO-port range `i`'s cap, narrowed to that range.
pub const SLOT_IOPORT_BASE: u64 = 144;

/// Set in the badge of every protected-call endpoint cap (low 6 bits: the
/// server's channel id). Endpoint badges have 28 bits in seL4 5.0, so the
/// flag is bit 27, and notification words never use bit 27 (see
/// [`notification_bit`]): a received badge with this bit is a call, any
/// other is the bound notification's word.
pub const PPC_BADGE_FLAG: u64 = 1 << 27;
/// Notification bit the monitor sets to tell a supervisor that one of its
/// children faulted (the supervisor then asks with [`MonitorRequest::TakeFault`]).
pub const MONITOR_NEWS_BIT: u64 = 1 << 63;

/// The notification-word bit that stands for channel `channel` (0..62):
/// channels 0-26 use bits 0-26, channels 27-61 bits 28-62; bit 27 is never
/// a notification bit, bit 63 is [`MONITOR_NEWS_BIT`].
pub const fn notification_bit(channel: u8) -> u64 {
    if channel < 27 {
        1 << channel
    } else {
        1 << (channel as u32 + 1)
    }
}

/// The channel set (bit c = channel c) a notification word stands for.
pub const fn channels_from_word(word: u64) -> u64 {
    let low = word & ((1 << 27) - 1);
    let high = (word >> 28) & ((1 << 35) - 1);
    low | (high << 27)
}

/// Set in the badge of a fault endpoint cap (the low bits: PD index).
pub const FAULT_BADGE_FLAG: u64 = 1 << 16;

/// Set in the badge of a PD's monitor cap (the low bits: PD index).
pub const REQUEST_BADGE_FLAG: u64 = 1 << 17;
/// The low badge bits that carry the PD index.
pub const PD_INDEX_MASK: u64 = 0xffff;

/// Reply labels of a protected call.
pub const PPC_REPLY_OK: u64 = 0;
pub const PPC_REPLY_REFUSED: u64 = 1;
/// Not sent by a server: the monitor makes a blocked client's call return
/// with this label when the server faulted (or was stopped or restarted)
/// while serving it.
pub const PPC_REPLY_SERVER_FAULTED: u64 = 2;

/// Byte offset in the IPC buffer (`userData`, which the kernel never
/// touches) where the runtime keeps `channel + 1` while `protected` runs
/// and 0 otherwise, so the monitor can tell whose call a faulted server
/// was serving.
pub const IPC_SERVING_OFFSET: usize = 968;

/// Labels of requests to the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum MonitorRequest {
    /// MR0: child index. Reset the child's memory and start it again.
    Restart = 1,
    /// MR0: child index. Keep the child suspended.
    Stop = 2,
    /// MR0: exit code. End the system.
    PowerOff = 3,
    /// Reply MR0: 1 if a fault was pending, MR1: child index, MR2: kind
    /// ([`FaultKind`]), MR3: address; IPC buffer MR4: instruction pointer,
    /// MR5: 1 for a write access.
    TakeFault = 4,
    /// MR0-MR3: a component's name (up to 32 bytes, zero padded). Fault
    /// injection for tests: stop that PD as if it had faulted. Honoured
    /// only in a root task built with `ROOTTASK_FAULT_INJECTION=1` and only
    /// for the description's simulated host (it plays the test's outside
    /// world); denied otherwise.
    InjectFault = 5,
}

impl MonitorRequest {
    pub fn from_label(label: u64) -> Option<Self> {
        match label {
            1 => Some(Self::Restart),
            2 => Some(Self::Stop),
            3 => Some(Self::PowerOff),
            4 => Some(Self::TakeFault),
            5 => Some(Self::InjectFault),
            _ => None,
        }
    }
}

/// Monitor reply labels.
pub const MONITOR_OK: u64 = 0;
pub const MONITOR_DENIED: u64 = 1;
pub const MONITOR_FAILED: u64 = 2;

/// Fault kinds as the monitor reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum FaultKind {
    Memory = 1,
    Panic = 2,
    Instruction = 3,
}

impl FaultKind {
    pub fn from_word(word: u64) -> Option<Self> {
        match word {
            1 => Some(Self::Memory),
            2 => Some(Self::Panic),
            3 => Some(Self::Instruction),
            _ => None,
        }
    }
}

pub const PD_INFO_MAGIC: u64 = 0x5345_4c34_5044_0001; // "SEL4PD" v1
/// Equal to `system_layout::MAX_MAPS_PER_COMPONENT`.
pub const MAX_MAPS: usize = 64;
/// Equal to `system_layout::MAX_IOPORTS_PER_COMPONENT`.
pub const MAX_IOPORTS: usize = 8;
pub const MAX_NAME: usize = 32;

/// One region mapping as the PD sees it.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct MapInfo {
    pub vaddr: u64,
    pub size: u64,
    /// Guest physical address of the first byte if the host may see the
    /// region (frames are contiguous), else 0.
    pub guest_physical: u64,
    pub writable: u8,
    pub double: u8,
    /// 1: nothing is mapped (`rights = "address"`); `vaddr` is 0 and only
    /// `size` and `guest_physical` mean anything.
    pub address_only: u8,
    pub _pad: [u8; 5],
}

/// One IO-port range.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct IoPortInfo {
    pub base: u16,
    pub size: u16,
    pub _pad: [u8; 4],
}

/// The read-only page the root task writes for each PD at
/// [`PD_INFO_VADDR`]. Plain `repr(C)` data: both sides are built for the
/// same target from this definition.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PdInfo {
    pub magic: u64,
    pub pd_index: u64,
    /// TSC ticks per microsecond (the kernel's measurement at boot).
    pub tsc_per_us: u64,
    pub name: [u8; MAX_NAME],
    pub name_len: u64,
    /// Channel ids by kind, one bit each.
    pub notify_channels: u64,
    pub call_client_channels: u64,
    pub call_server_channels: u64,
    pub irq_channels: u64,
    /// The client channel console output goes through, or 0xff.
    pub console_channel: u64,
    pub may_power_off: u64,
    pub num_children: u64,
    pub num_maps: u64,
    pub maps: [MapInfo; MAX_MAPS],
    pub num_ioports: u64,
    pub ioports: [IoPortInfo; MAX_IOPORTS],
}

impl PdInfo {
    pub const fn empty() -> PdInfo {
        PdInfo {
            magic: PD_INFO_MAGIC,
            pd_index: 0,
            tsc_per_us: 0,
            name: [0; MAX_NAME],
            name_len: 0,
            notify_channels: 0,
            call_client_channels: 0,
            call_server_channels: 0,
            irq_channels: 0,
            console_channel: 0xff,
            may_power_off: 0,
            num_children: 0,
            num_maps: 0,
            maps: [MapInfo {
                vaddr: 0,
                size: 0,
                guest_physical: 0,
                writable: 0,
                double: 0,
                address_only: 0,
                _pad: [0; 5],
            }; MAX_MAPS],
            num_ioports: 0,
            ioports: [IoPortInfo {
                base: 0,
                size: 0,
                _pad: [0; 4],
            }; MAX_IOPORTS],
        }
    }

    /// The PD's name (for diagnostics).
    pub fn name(&self) -> &str {
        let len = (self.name_len as usize).min(MAX_NAME);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// The bytes the root task copies into the info page.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: PdInfo is repr(C) plain data without padding holes that
        // matter (all fields are integers or byte arrays).
        unsafe {
            core::slice::from_raw_parts(
                self as *const PdInfo as *const u8,
                core::mem::size_of::<PdInfo>(),
            )
        }
    }
}

// The CSpace layout and the info page must fit what the root task creates.
const _: () = assert!(SLOT_FAULT < SLOT_HYPERVISOR && SLOT_HYPERVISOR < SLOT_CHANNEL_BASE);
const _: () = assert!(SLOT_CHANNEL_BASE + 64 <= SLOT_IRQ_BASE);
const _: () = assert!(SLOT_IRQ_BASE + 64 <= SLOT_IOPORT_BASE);
const _: () = assert!(SLOT_IOPORT_BASE + MAX_IOPORTS as u64 <= 1 << PD_CNODE_BITS);
const _: () = assert!(core::mem::size_of::<PdInfo>() <= 4096);

/// A protected-call message in message registers: MR0 holds the byte
/// length, MR1.. the bytes little-endian. Returns the number of message
/// registers used and writes them through `set` (index, word).
pub fn pack_message(bytes: &[u8], mut set: impl FnMut(usize, u64)) -> usize {
    set(0, bytes.len() as u64);
    let mut used = 1;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        set(used, u64::from_le_bytes(word));
        used += 1;
    }
    used
}

/// The inverse of [`pack_message`]: copies at most `out.len()` bytes and
/// never reads beyond `registers` message registers (the sender is not
/// trusted). Returns the byte count, or None if the length word disagrees
/// with the registers sent or does not fit `out`.
pub fn unpack_message(
    registers: usize,
    out: &mut [u8],
    mut get: impl FnMut(usize) -> u64,
) -> Option<usize> {
    if registers == 0 {
        return None;
    }
    let length = usize::try_from(get(0)).ok()?;
    if length > out.len() || length.div_ceil(8) + 1 > registers {
        return None;
    }
    for (index, chunk) in out[..length].chunks_mut(8).enumerate() {
        let word = get(index + 1).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Some(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_registers() {
        let mut registers = [0u64; 120];
        let text = b"hello, protected call";
        let used = pack_message(text, |i, w| registers[i] = w);
        assert_eq!(used, 1 + text.len().div_ceil(8));
        let mut out = [0u8; 64];
        let length = unpack_message(used, &mut out, |i| registers[i]).unwrap();
        assert_eq!(&out[..length], text);
    }

    #[test]
    fn a_lying_length_word_is_rejected() {
        let registers = [1000u64, 0, 0];
        let mut out = [0u8; 2000];
        assert_eq!(unpack_message(3, &mut out, |i| registers[i]), None);
        let mut small = [0u8; 4];
        let registers = [8u64, 0];
        assert_eq!(unpack_message(2, &mut small, |i| registers[i]), None);
        assert_eq!(unpack_message(0, &mut small, |_| 0), None);
    }

    #[test]
    fn notification_bits_avoid_the_call_flag_and_round_trip() {
        let mut all = 0u64;
        for channel in 0..62u8 {
            let bit = notification_bit(channel);
            assert_eq!(
                bit & (PPC_BADGE_FLAG | MONITOR_NEWS_BIT),
                0,
                "channel {channel}"
            );
            assert_eq!(all & bit, 0, "channel {channel} shares a bit");
            all |= bit;
            assert_eq!(channels_from_word(bit), 1 << channel);
        }
        assert_eq!(channels_from_word(MONITOR_NEWS_BIT | PPC_BADGE_FLAG), 0);
    }

    #[test]
    fn endpoint_badges_fit_in_28_bits() {
        for badge in [
            PPC_BADGE_FLAG | 63,
            FAULT_BADGE_FLAG | PD_INDEX_MASK,
            REQUEST_BADGE_FLAG | PD_INDEX_MASK,
        ] {
            assert!(badge < 1 << 28);
        }
        assert_eq!(FAULT_BADGE_FLAG & PD_INDEX_MASK, 0);
        assert_eq!(REQUEST_BADGE_FLAG & PD_INDEX_MASK, 0);
    }
}
