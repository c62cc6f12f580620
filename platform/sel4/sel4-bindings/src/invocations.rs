//! The kernel object invocations we use. Parameter order and packing follow
//! libsel4's generated stubs for 5.0: word parameters go in message
//! registers in XML order (sub-word ones packed into one word), capability
//! parameters go as extra caps.

use crate::{
    call, label, set_cap, set_mr, CPtr, MessageInfo, FAST_MESSAGE_REGISTERS, USER_CONTEXT_WORDS,
};

/// A kernel error code (`seL4_Error`), from the reply's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelError(pub u64);

impl KernelError {
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "InvalidArgument",
            2 => "InvalidCapability",
            3 => "IllegalOperation",
            4 => "RangeError",
            5 => "AlignmentError",
            6 => "FailedLookup",
            7 => "TruncatedMessage",
            8 => "DeleteFirst",
            9 => "RevokeFirst",
            10 => "NotEnoughMemory",
            _ => "unknown",
        }
    }
}

pub type KernelResult<T = ()> = Result<T, KernelError>;

/// Capability rights (`seL4_CapRights`): write, read, grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights(pub u64);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const WRITE: Rights = Rights(1);
    pub const READ: Rights = Rights(2);
    pub const GRANT: Rights = Rights(4);
    pub const READ_WRITE: Rights = Rights(3);
    pub const ALL: Rights = Rights(7);
}

/// `seL4_X86_Default_VMAttributes`.
pub const DEFAULT_VM_ATTRIBUTES: u64 = 0;
/// `seL4_X86_WriteCombining`: the kernel puts write combining in PAT
/// entry 4 at boot; for device memory a CPU writes in bulk (a framebuffer).
pub const WRITE_COMBINING_VM_ATTRIBUTES: u64 = 4;

/// A CNode guard word (`cnode_capdata`, 64-bit): guard size in bits 2-7,
/// guard in bits 8-25.
pub const fn cnode_cap_data(guard: u64, guard_size: u64) -> u64 {
    ((guard & 0x3ffff) << 8) | ((guard_size & 0x3f) << 2)
}

/// An IO port range for minting a narrowed IO port cap (`io_port_capdata`).
pub const fn io_port_cap_data(first: u16, last: u16) -> u64 {
    ((first as u64) << 16) | last as u64
}

/// The x86_64 `seL4_UserContext`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct UserContext {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub tls_base: u64,
}

impl UserContext {
    fn from_words(words: &[u64; USER_CONTEXT_WORDS]) -> UserContext {
        let [rip, rsp, rflags, rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15, tls_base] =
            *words;
        UserContext {
            rip,
            rsp,
            rflags,
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            tls_base,
        }
    }

    fn words(&self) -> [u64; USER_CONTEXT_WORDS] {
        [
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.tls_base,
        ]
    }
}

/// Invoke `cap` with `label`, message words and extra caps; returns the
/// reply's message registers 0-3 or the kernel's error.
pub fn invoke(cap: CPtr, label: u64, words: &[u64], caps: &[CPtr]) -> KernelResult<[u64; 4]> {
    let mut fast = [0u64; 4];
    for (index, &word) in words.iter().enumerate() {
        if index < FAST_MESSAGE_REGISTERS {
            fast[index] = word;
        } else {
            set_mr(index, word);
        }
    }
    for (index, &extra) in caps.iter().enumerate() {
        set_cap(index, extra);
    }
    let info = MessageInfo::new(label, 0, caps.len() as u64, words.len() as u64);
    let reply = call(cap, info, fast);
    match reply.info.label() {
        0 => Ok(reply.mrs),
        error => Err(KernelError(error)),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn untyped_retype(
    untyped: CPtr,
    object_type: u64,
    size_bits: u64,
    root: CPtr,
    node_index: u64,
    node_depth: u64,
    node_offset: u64,
    count: u64,
) -> KernelResult {
    invoke(
        untyped,
        label::UntypedRetype,
        &[
            object_type,
            size_bits,
            node_index,
            node_depth,
            node_offset,
            count,
        ],
        &[root],
    )
    .map(drop)
}

/// `seL4_TCB_Configure` with priority and maximum controlled priority.
#[allow(clippy::too_many_arguments)]
pub fn tcb_configure(
    tcb: CPtr,
    fault_endpoint: CPtr,
    priority: u8,
    max_controlled_priority: u8,
    cspace_root: CPtr,
    cspace_root_data: u64,
    vspace_root: CPtr,
    ipc_buffer_address: u64,
    ipc_buffer_frame: CPtr,
) -> KernelResult {
    let priority_props = priority as u64 | ((max_controlled_priority as u64) << 8);
    invoke(
        tcb,
        label::TCBConfigure,
        &[
            fault_endpoint,
            priority_props,
            cspace_root_data,
            0,
            ipc_buffer_address,
        ],
        &[cspace_root, vspace_root, ipc_buffer_frame],
    )
    .map(drop)
}

/// `seL4_TCB_SetSpace`: a thread's fault endpoint, CSpace and VSpace
/// (a zero `*_data` keeps the cap's guard as it is).
pub fn tcb_set_space(
    tcb: CPtr,
    fault_endpoint: CPtr,
    cspace_root: CPtr,
    cspace_root_data: u64,
    vspace_root: CPtr,
) -> KernelResult {
    invoke(
        tcb,
        label::TCBSetSpace,
        &[fault_endpoint, cspace_root_data, 0],
        &[cspace_root, vspace_root],
    )
    .map(drop)
}

pub fn tcb_write_registers(tcb: CPtr, resume: bool, context: &UserContext) -> KernelResult {
    let mut words = [0u64; 2 + USER_CONTEXT_WORDS];
    words[0] = resume as u64; // arch_flags (bits 8-15) = 0
    words[1] = USER_CONTEXT_WORDS as u64;
    words[2..].copy_from_slice(&context.words());
    invoke(tcb, label::TCBWriteRegisters, &words, &[]).map(drop)
}

/// Read another thread's registers (`rip` is the faulting or trapping
/// instruction: for a thread in a syscall, the `syscall` instruction).
pub fn tcb_read_registers(tcb: CPtr, suspend: bool) -> KernelResult<UserContext> {
    let fast = invoke(
        tcb,
        label::TCBReadRegisters,
        &[suspend as u64, USER_CONTEXT_WORDS as u64],
        &[],
    )?;
    let mut words = [0u64; USER_CONTEXT_WORDS];
    for (index, word) in words.iter_mut().enumerate() {
        *word = if index < FAST_MESSAGE_REGISTERS {
            fast[index]
        } else {
            crate::get_mr(index)
        };
    }
    Ok(UserContext::from_words(&words))
}

pub fn tcb_suspend(tcb: CPtr) -> KernelResult {
    invoke(tcb, label::TCBSuspend, &[], &[]).map(drop)
}

pub fn tcb_resume(tcb: CPtr) -> KernelResult {
    invoke(tcb, label::TCBResume, &[], &[]).map(drop)
}

pub fn tcb_bind_notification(tcb: CPtr, notification: CPtr) -> KernelResult {
    invoke(tcb, label::TCBBindNotification, &[], &[notification]).map(drop)
}

pub fn tcb_unbind_notification(tcb: CPtr) -> KernelResult {
    invoke(tcb, label::TCBUnbindNotification, &[], &[]).map(drop)
}

#[allow(clippy::too_many_arguments)]
pub fn cnode_mint(
    root: CPtr,
    dest_index: u64,
    dest_depth: u8,
    src_root: CPtr,
    src_index: u64,
    src_depth: u8,
    rights: Rights,
    badge: u64,
) -> KernelResult {
    invoke(
        root,
        label::CNodeMint,
        &[
            dest_index,
            dest_depth as u64,
            src_index,
            src_depth as u64,
            rights.0,
            badge,
        ],
        &[src_root],
    )
    .map(drop)
}

pub fn cnode_copy(
    root: CPtr,
    dest_index: u64,
    dest_depth: u8,
    src_root: CPtr,
    src_index: u64,
    src_depth: u8,
    rights: Rights,
) -> KernelResult {
    invoke(
        root,
        label::CNodeCopy,
        &[
            dest_index,
            dest_depth as u64,
            src_index,
            src_depth as u64,
            rights.0,
        ],
        &[src_root],
    )
    .map(drop)
}

pub fn cnode_delete(root: CPtr, index: u64, depth: u8) -> KernelResult {
    invoke(root, label::CNodeDelete, &[index, depth as u64], &[]).map(drop)
}

/// `seL4_IRQControl_GetIOAPIC`: an IRQ handler cap for an IOAPIC pin,
/// delivered at `vector` (the kernel adds its IRQ base 0x30... as index).
#[allow(clippy::too_many_arguments)]
pub fn irq_control_get_ioapic(
    irq_control: CPtr,
    root: CPtr,
    index: u64,
    depth: u64,
    ioapic: u64,
    pin: u64,
    level_triggered: bool,
    active_low: bool,
    vector: u64,
) -> KernelResult {
    invoke(
        irq_control,
        label::X86IRQIssueIRQHandlerIOAPIC,
        &[
            index,
            depth,
            ioapic,
            pin,
            level_triggered as u64,
            active_low as u64,
            vector,
        ],
        &[root],
    )
    .map(drop)
}

/// `seL4_IRQControl_GetMSI`: an MSI-kind IRQ handler cap. The kernel
/// takes `irq` as an index above its first user IRQ: the handler receives
/// vector `irq + 0x30` (`irq_user_min` 16 plus `IRQ_INT_OFFSET` 0x20).
/// Nothing programs a device: the PCI address and handle are recorded
/// only (seL4 5.0 trusts the caller without an IOMMU).
#[allow(clippy::too_many_arguments)]
pub fn irq_control_get_msi(
    irq_control: CPtr,
    root: CPtr,
    index: u64,
    depth: u64,
    pci_bus: u64,
    pci_device: u64,
    pci_function: u64,
    handle: u64,
    irq: u64,
) -> KernelResult {
    invoke(
        irq_control,
        label::X86IRQIssueIRQHandlerMSI,
        &[index, depth, pci_bus, pci_device, pci_function, handle, irq],
        &[root],
    )
    .map(drop)
}

pub fn irq_handler_ack(handler: CPtr) -> KernelResult {
    invoke(handler, label::IRQAckIRQ, &[], &[]).map(drop)
}

/// `X86IRQHandlerRaise` (kernel patch 0007): the kernel sends this IRQ's
/// vector to the current core as a local-APIC self-IPI, so it arrives
/// through the kernel's ordinary interrupt path and signals the handler's
/// notification like the device (or the hypervisor) would.
pub fn irq_handler_raise(handler: CPtr) -> KernelResult {
    invoke(handler, label::X86IRQHandlerRaise, &[], &[]).map(drop)
}

pub fn irq_handler_set_notification(handler: CPtr, notification: CPtr) -> KernelResult {
    invoke(handler, label::IRQSetIRQHandler, &[], &[notification]).map(drop)
}

pub fn page_map(frame: CPtr, vspace: CPtr, vaddr: u64, rights: Rights) -> KernelResult {
    page_map_with_attributes(frame, vspace, vaddr, rights, DEFAULT_VM_ATTRIBUTES)
}

/// [`page_map`] with the caching attributes (`seL4_X86_VMAttributes`).
pub fn page_map_with_attributes(
    frame: CPtr,
    vspace: CPtr,
    vaddr: u64,
    rights: Rights,
    attributes: u64,
) -> KernelResult {
    invoke(
        frame,
        label::X86PageMap,
        &[vaddr, rights.0, attributes],
        &[vspace],
    )
    .map(drop)
}

pub fn page_unmap(frame: CPtr) -> KernelResult {
    invoke(frame, label::X86PageUnmap, &[], &[]).map(drop)
}

pub fn page_get_address(frame: CPtr) -> KernelResult<u64> {
    invoke(frame, label::X86PageGetAddress, &[], &[]).map(|mrs| mrs[0])
}

pub fn page_table_map(table: CPtr, vspace: CPtr, vaddr: u64) -> KernelResult {
    invoke(
        table,
        label::X86PageTableMap,
        &[vaddr, DEFAULT_VM_ATTRIBUTES],
        &[vspace],
    )
    .map(drop)
}

pub fn page_directory_map(directory: CPtr, vspace: CPtr, vaddr: u64) -> KernelResult {
    invoke(
        directory,
        label::X86PageDirectoryMap,
        &[vaddr, DEFAULT_VM_ATTRIBUTES],
        &[vspace],
    )
    .map(drop)
}

pub fn pdpt_map(pdpt: CPtr, pml4: CPtr, vaddr: u64) -> KernelResult {
    invoke(
        pdpt,
        label::X86PDPTMap,
        &[vaddr, DEFAULT_VM_ATTRIBUTES],
        &[pml4],
    )
    .map(drop)
}

pub fn asid_pool_assign(pool: CPtr, vspace: CPtr) -> KernelResult {
    invoke(pool, label::X86ASIDPoolAssign, &[], &[vspace]).map(drop)
}

/// Read 1, 2 or 4 bytes from an IO port the cap covers.
pub fn ioport_in(port_cap: CPtr, port: u16, width: u8) -> KernelResult<u32> {
    let invocation = match width {
        1 => label::X86IOPortIn8,
        2 => label::X86IOPortIn16,
        _ => label::X86IOPortIn32,
    };
    invoke(port_cap, invocation, &[port as u64], &[]).map(|mrs| mrs[0] as u32)
}

/// Write 1, 2 or 4 bytes to an IO port the cap covers.
pub fn ioport_out(port_cap: CPtr, port: u16, width: u8, value: u32) -> KernelResult {
    let invocation = match width {
        1 => label::X86IOPortOut8,
        2 => label::X86IOPortOut16,
        _ => label::X86IOPortOut32,
    };
    invoke(port_cap, invocation, &[port as u64, value as u64], &[]).map(drop)
}

/// `X86HypervisorReadMSR` (kernel patch 0008) on the hypervisor cap: a
/// synthetic MSR (0x40000000..=0x400000FF).
pub fn hypervisor_read_msr(hypervisor: CPtr, msr: u64) -> KernelResult<u64> {
    invoke(hypervisor, label::X86HypervisorReadMSR, &[msr], &[]).map(|mrs| mrs[0])
}

/// `X86HypervisorWriteMSR` (kernel patch 0008). `page_vaddr` names the
/// caller's page whose physical address the kernel puts into a GPA-bearing
/// MSR (SIEFP, SIMP, reference TSC); 0 for the others.
pub fn hypervisor_write_msr(
    hypervisor: CPtr,
    msr: u64,
    value: u64,
    page_vaddr: u64,
) -> KernelResult {
    invoke(
        hypervisor,
        label::X86HypervisorWriteMSR,
        &[msr, value, page_vaddr],
        &[],
    )
    .map(drop)
}

/// `X86HypervisorCall` (kernel patch 0008): a hypercall through the
/// kernel's hypercall page; returns the hypervisor's status word. Slow
/// calls: `input`/`output` are the vaddrs of the caller's page-aligned
/// pages (0: none); fast calls (control bit 16): raw values.
pub fn hypervisor_call(
    hypervisor: CPtr,
    control: u64,
    input: u64,
    output: u64,
) -> KernelResult<u64> {
    invoke(
        hypervisor,
        label::X86HypervisorCall,
        &[control, input, output],
        &[],
    )
    .map(|mrs| mrs[0])
}
