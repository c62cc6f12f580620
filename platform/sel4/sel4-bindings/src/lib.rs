//! seL4 5.0.0 (x86_64, syscall/sysret) bindings: the syscalls and the
//! invocations this project's root task and runtime use.
//!
//! Invocation labels, object-type numbers and syscall numbers are generated
//! by `build.rs` from the kernel's interface XML and headers for the
//! configuration in `platform/sel4/sel4-kernel-source/autoconf.h` (modules
//! [`label`], [`object_type`], [`syscall`]). Message marshalling follows the
//! 5.0 ABI (see `docs/sel4.md`): `rdx` syscall number, `rdi` capability
//! (badge on return), `rsi` message info, `r10`/`r8`/`r9`/`r15` message
//! registers 0-3, the rest and the extra caps in the IPC buffer.
//!
//! Trusts: the kernel. Writes: the calling thread's IPC buffer, whose
//! address must be given once with [`set_ipc_buffer`] before any call that
//! uses more than four message registers or extra capabilities.
#![no_std]

mod bootinfo;
mod invocations;

pub use bootinfo::{BootInfo, SlotRegion, UntypedDesc};
pub use invocations::*;

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

use core::sync::atomic::{AtomicUsize, Ordering};

/// A capability address in the caller's CSpace.
pub type CPtr = u64;

/// Number of message registers in the IPC buffer.
pub const MSG_MAX_LENGTH: usize = 120;
/// Message registers passed in CPU registers.
pub const FAST_MESSAGE_REGISTERS: usize = 4;
/// Byte offset of `caps_or_badges` in the IPC buffer.
const IPC_CAPS_OFFSET: usize = 8 + 8 * MSG_MAX_LENGTH + 8;
/// Words in the x86_64 `seL4_UserContext`.
pub const USER_CONTEXT_WORDS: usize = 19;

/// Initial capabilities of the root task (bootinfo_types.h).
pub mod initial_cap {
    use super::CPtr;
    pub const INIT_THREAD_TCB: CPtr = 1;
    pub const INIT_THREAD_CNODE: CPtr = 2;
    pub const INIT_THREAD_VSPACE: CPtr = 3;
    pub const IRQ_CONTROL: CPtr = 4;
    pub const ASID_CONTROL: CPtr = 5;
    pub const INIT_THREAD_ASID_POOL: CPtr = 6;
    pub const IO_PORT: CPtr = 7;
    pub const BOOT_INFO_FRAME: CPtr = 9;
    pub const INIT_THREAD_IPC_BUFFER: CPtr = 10;
    /// The hypervisor capability (kernel patch 0008).
    pub const X86_HYPERVISOR: CPtr = 12;
}

static IPC_BUFFER: AtomicUsize = AtomicUsize::new(0);

/// Record where this thread's IPC buffer is mapped.
pub fn set_ipc_buffer(address: usize) {
    IPC_BUFFER.store(address, Ordering::Relaxed);
}

fn ipc_word_pointer(byte_offset: usize) -> *mut u64 {
    let base = IPC_BUFFER.load(Ordering::Relaxed);
    assert!(base != 0, "sel4-bindings: IPC buffer not set");
    (base + byte_offset) as *mut u64
}

/// Message register `index` as stored in the IPC buffer (indices >= 4).
pub fn get_mr(index: usize) -> u64 {
    assert!(index < MSG_MAX_LENGTH);
    // SAFETY: the IPC buffer is a mapped page owned by this thread and the
    // index is within its message array.
    unsafe { ipc_word_pointer(8 + 8 * index).read_volatile() }
}

/// Store message register `index` in the IPC buffer (indices >= 4).
pub fn set_mr(index: usize, value: u64) {
    assert!(index < MSG_MAX_LENGTH);
    // SAFETY: as in `get_mr`.
    unsafe { ipc_word_pointer(8 + 8 * index).write_volatile(value) }
}

/// Store an extra capability to send with the next message.
pub fn set_cap(index: usize, cap: CPtr) {
    assert!(index < 3);
    // SAFETY: as in `get_mr`; `caps_or_badges` has three entries.
    unsafe { ipc_word_pointer(IPC_CAPS_OFFSET + 8 * index).write_volatile(cap) }
}

/// The message tag: label, capabilities unwrapped, extra caps, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageInfo(pub u64);

impl MessageInfo {
    pub const fn new(label: u64, caps_unwrapped: u64, extra_caps: u64, length: u64) -> Self {
        MessageInfo(
            (label << 12) | ((caps_unwrapped & 7) << 9) | ((extra_caps & 3) << 7) | (length & 0x7f),
        )
    }
    pub const fn label(self) -> u64 {
        self.0 >> 12
    }
    pub const fn length(self) -> usize {
        (self.0 & 0x7f) as usize
    }
    pub const fn extra_caps(self) -> usize {
        ((self.0 >> 7) & 3) as usize
    }
}

/// What a receiving syscall returns: sender badge, tag, message registers 0-3.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub badge: u64,
    pub info: MessageInfo,
    pub mrs: [u64; 4],
}

/// The raw syscall. The kernel clobbers `rcx`, `r11` and `rsp`; `rsp` is
/// kept in `rbx` across it (LLVM reserves `rbx`, so its value is saved in a
/// scratch register first).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn raw_syscall(number: i64, cap: u64, info: u64, mrs: [u64; 4]) -> Received {
    let badge: u64;
    let out_info: u64;
    let (mut mr0, mut mr1, mut mr2, mut mr3) = (mrs[0], mrs[1], mrs[2], mrs[3]);
    // SAFETY: the seL4 syscall ABI: only the declared registers change.
    unsafe {
        core::arch::asm!(
            "mov {saved_rbx}, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, {saved_rbx}",
            saved_rbx = out(reg) _,
            inout("rdx") number => _,
            inout("rdi") cap => badge,
            inout("rsi") info => out_info,
            inout("r10") mr0,
            inout("r8") mr1,
            inout("r9") mr2,
            inout("r15") mr3,
            out("rcx") _,
            out("r11") _,
        );
    }
    Received {
        badge,
        info: MessageInfo(out_info),
        mrs: [mr0, mr1, mr2, mr3],
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn raw_syscall(_number: i64, _cap: u64, _info: u64, _mrs: [u64; 4]) -> Received {
    panic!("seL4 syscalls exist only on x86_64")
}

/// `seL4_Call`.
pub fn call(dest: CPtr, info: MessageInfo, mrs: [u64; 4]) -> Received {
    raw_syscall(syscall::Call, dest, info.0, mrs)
}

/// `seL4_Send`.
pub fn send(dest: CPtr, info: MessageInfo, mrs: [u64; 4]) {
    raw_syscall(syscall::Send, dest, info.0, mrs);
}

/// `seL4_NBSend`.
pub fn nb_send(dest: CPtr, info: MessageInfo, mrs: [u64; 4]) {
    raw_syscall(syscall::NBSend, dest, info.0, mrs);
}

/// `seL4_Recv`.
pub fn recv(source: CPtr) -> Received {
    raw_syscall(syscall::Recv, source, 0, [0; 4])
}

/// `seL4_Reply` (to the thread's implicit reply capability).
pub fn reply(info: MessageInfo, mrs: [u64; 4]) {
    raw_syscall(syscall::Reply, 0, info.0, mrs);
}

/// `seL4_ReplyRecv`.
pub fn reply_recv(source: CPtr, info: MessageInfo, mrs: [u64; 4]) -> Received {
    raw_syscall(syscall::ReplyRecv, source, info.0, mrs)
}

/// `seL4_Signal`: a send of an empty message to a notification.
pub fn signal(notification: CPtr) {
    send(notification, MessageInfo::new(0, 0, 0, 0), [0; 4]);
}

/// `seL4_Wait`: returns the notification word.
pub fn wait(notification: CPtr) -> u64 {
    recv(notification).badge
}

/// `seL4_Poll` (`NBRecv` on a notification): its word, cleared; 0 when
/// nothing is pending. The caller must hold a cap with the read right, and
/// the notification must not be bound to another thread.
pub fn poll(notification: CPtr) -> u64 {
    nb_recv(notification).badge
}

/// `seL4_NBRecv`: a message if a sender is waiting; otherwise badge 0 and
/// the message tag 0 (the kernel leaves the tag register as passed).
pub fn nb_recv(source: CPtr) -> Received {
    raw_syscall(syscall::NBRecv, source, 0, [0; 4])
}

/// `seL4_Yield`.
pub fn yield_now() {
    raw_syscall(syscall::Yield, 0, 0, [0; 4]);
}

/// `seL4_DebugCapIdentify` (debug kernels only): the type of the cap at
/// `cap` in the caller's CSpace, one of [`cap_type`]; `null_cap` for an
/// empty slot or one the address does not resolve to. Never fails and the
/// kernel prints nothing, so it can probe every slot of a CNode.
pub fn debug_cap_identify(cap: CPtr) -> u64 {
    raw_syscall(syscall::DebugCapIdentify, cap, 0, [0; 4]).badge
}

/// `seL4_DebugPutChar` (debug kernels only; used by the root task before
/// it has its own serial port access).
pub fn debug_put_char(byte: u8) {
    raw_syscall(syscall::DebugPutChar, byte as u64, 0, [0; 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_info_packs_like_libsel4() {
        let info = MessageInfo::new(5, 0, 2, 7);
        assert_eq!(info.0, (5 << 12) | (2 << 7) | 7);
        assert_eq!((info.label(), info.extra_caps(), info.length()), (5, 2, 7));
    }

    #[test]
    fn generated_numbers_match_the_5_0_kernel() {
        // Values from the headers the 5.0.0 kernel build generates for this
        // configuration (no SMP, no hardware debug API, no VT-x/IOMMU),
        // read by compiling a C program against those headers.
        assert_eq!(label::UntypedRetype, 1);
        assert_eq!(label::TCBWriteRegisters, 3);
        assert_eq!(label::TCBConfigure, 5);
        assert_eq!(label::TCBBindNotification, 12);
        assert_eq!(label::CNodeDelete, 15);
        assert_eq!(label::CNodeCopy, 17);
        assert_eq!(label::CNodeMint, 18);
        assert_eq!(label::IRQAckIRQ, 24);
        assert_eq!(label::IRQSetIRQHandler, 25);
        assert_eq!(label::X86PDPTMap, 28);
        assert_eq!(label::X86PageDirectoryMap, 30);
        assert_eq!(label::X86PageTableMap, 33);
        assert_eq!(label::X86PageMap, 37);
        assert_eq!(label::X86PageUnmap, 39);
        assert_eq!(label::X86PageGetAddress, 41);
        assert_eq!(label::X86ASIDPoolAssign, 43);
        assert_eq!(label::X86IOPortIn8, 44);
        assert_eq!(label::X86IOPortOut32, 49);
        assert_eq!(label::X86IRQIssueIRQHandlerIOAPIC, 50);
        assert_eq!(label::X86IRQIssueIRQHandlerMSI, 51);
        // Appended by our kernel patches (0007), after the last 5.0 label.
        assert_eq!(label::X86IRQHandlerRaise, 52);
        assert_eq!(label::X86HypervisorReadMSR, 53);
        assert_eq!(label::X86HypervisorWriteMSR, 54);
        assert_eq!(label::X86HypervisorCall, 55);
        assert_eq!(object_type::seL4_NotificationObject, 3);
        assert_eq!(object_type::seL4_X64_PML4Object, 6);
        assert_eq!(object_type::seL4_X86_4K, 7);
        assert_eq!(object_type::seL4_X86_PageTableObject, 9);
        assert_eq!(syscall::DebugPutChar, -9);
        assert_eq!(syscall::Recv, -5);
        assert_eq!(syscall::DebugCapIdentify, -11);
        assert_eq!(label::TCBSetSpace, 9);
        assert_eq!(label::TCBUnbindNotification, 13);
        assert_eq!(syscall::NBRecv, -8);
        assert_eq!(cap_type::null_cap, 0);
        assert_eq!(cap_type::frame_cap, 1);
        assert_eq!(cap_type::endpoint_cap, 4);
        assert_eq!(cap_type::notification_cap, 6);
        assert_eq!(cap_type::irq_handler_cap, 16);
        assert_eq!(cap_type::io_port_cap, 19);
        // Added by our kernel patch 0008.
        assert_eq!(cap_type::hypervisor_cap, 31);
    }
}
