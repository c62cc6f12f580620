//! The capability audit's kernel side: after every PD is built and before
//! any starts, ask the kernel what each PD's CNode holds, compare it and
//! the recorded mappings with what the description grants
//! (`audit.rs`), and refuse to start the system on any difference.
//!
//! CSpace, from the kernel: the root task cannot name a slot inside a PD's
//! CNode with a cap pointer (its own CNode resolves all 64 bits), and
//! copying from an empty slot fails with a kernel error message per slot.
//! So for the audit it switches its own CSpace root (`TCB_SetSpace` on its
//! TCB) to a small audit CNode: slot 0 holds its own CNode with a guard
//! that keeps every root cap pointer as it was, slot `i + 1` holds PD
//! `i`'s CNode, so `(i + 1) << (64 - radix) | slot` names a PD's slot.
//! `seL4_DebugCapIdentify` then gives the type of every one of the 2^8
//! slots (null for empty, no kernel message). IO-port caps are narrowed
//! further: a mint of the granted range from the PD's cap must succeed and
//! a mint of the port just below and just above must fail (the kernel
//! refuses to widen a range), so the cap covers exactly that range. Each
//! refused mint prints one kernel line (`Mutated cap would be invalid`):
//! two per IO-port range. A notify channel's cap is signalled once (from a
//! copy) and the peer's notification, briefly unbound from its thread so
//! the root task may poll it, must show exactly the channel's badge: the
//! right object, badge and write right. Endpoint caps are followed by a
//! probe thread of the root task (same address space, its priority, no
//! IPC buffer): it sends through a copy of a PD's send cap and the root
//! task must receive that message, with the granted badge, on the endpoint
//! the description names (the monitor's or the server's), or it waits on a
//! copy of the PD's own endpoint cap and must receive what the root task
//! sends to that PD's endpoint. Send and notify caps must also lack the
//! read right: the probe thread's poll through the copy must end in a cap
//! fault (delivered quietly to the probe's own fault endpoint) instead of
//! returning. A vector IRQ's handler (no device behind it) is raised once
//! from a copy (kernel patch 0007) and the notification of the end the
//! description names, unbound the same way, must show exactly that end's
//! badge.
//!
//! Frames: seL4 5.0 gives user level no page-table walk, so every mapping
//! into a PD goes through `System::map_into_pd`, which records the
//! address, the rights and the frame's physical address (asked of the
//! kernel). PDs hold no frame, page-table or untyped caps (the CSpace audit
//! checks that), so they cannot map anything themselves.

use crate::audit::{self, CapKind};
use crate::elf::Segment;
use crate::objects::{BuildError, BuildResult, Context, ROOT_DEPTH};
use crate::system::{RegionFrames, System};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use sel4_bindings::{self as sys, cap_type, initial_cap, object_type, CPtr, MessageInfo, Rights};
use sel4_runtime::abi::*;
use system_layout::{ChannelKind, ComponentLayout, IrqSource, SystemLayout};

/// At most this many differences are printed (all are counted).
const MAX_FINDINGS_SHOWN: usize = 24;

/// Audit every PD; `Err(BuildError::AuditFailed)` if anything differs.
pub fn audit(
    system: &mut System,
    layout: &SystemLayout,
    regions: &[RegionFrames],
    root_cnode_bits: u8,
    tsc_per_us: u64,
) -> BuildResult {
    // SAFETY: rdtsc has no memory effects; user mode may use it.
    let started = unsafe { core::arch::x86_64::_rdtsc() };
    let cap_types = kernel_cap_types(system, root_cnode_bits)?;
    let probe = ProbeThread::new(system)?;
    // SAFETY: as above.
    let slots_read = unsafe { core::arch::x86_64::_rdtsc() };
    let scratch = system.allocator.slot()?;
    let region_paddrs: Vec<u64> = regions.iter().map(|r| r.paddr).collect();
    let region_spans: Vec<(u64, u64)> = regions.iter().map(|r| (r.paddr, r.pages)).collect();
    let (mut caps, mut frames, mut differences) = (0, 0, 0);
    let mut private = Vec::new();
    for (pd, component) in layout.components.iter().enumerate() {
        let expected_caps = audit::expected_caps(component);
        let mut found_caps = Vec::new();
        for &(slot, kind) in &cap_types[pd] {
            let kind = classify(
                system,
                component,
                pd,
                slot,
                kind,
                &expected_caps,
                scratch,
                &probe,
            )?;
            found_caps.push((slot, kind));
        }
        let segments: Vec<Segment> = system.pds[pd].parsed.segments.iter().copied().collect();
        let expected_frames = audit::expected_frames(layout, component, &segments, &region_paddrs);
        let mappings = &system.pds[pd].mappings;
        let mut findings = audit::compare_caps(&expected_caps, &found_caps);
        findings.extend(audit::compare_frames(&expected_frames, mappings));
        private.extend(
            mappings
                .iter()
                .filter(|m| {
                    expected_frames
                        .iter()
                        .any(|e| e.vaddr == m.vaddr && e.paddr.is_none())
                })
                .map(|m| m.paddr),
        );
        caps += found_caps.len();
        frames += mappings.len();
        if findings.is_empty() {
            crate::log!(
                "capability audit: {}: {} caps, {} frames: as described",
                component.name,
                found_caps.len(),
                mappings.len()
            );
        }
        for finding in &findings {
            if differences < MAX_FINDINGS_SHOWN {
                crate::log!("capability audit: {}: {finding}", component.name);
            }
            differences += 1;
        }
    }
    for finding in audit::private_frames_unshared(private, &region_spans) {
        if differences < MAX_FINDINGS_SHOWN {
            crate::log!("capability audit: {finding}");
        }
        differences += 1;
    }
    // SAFETY: as above.
    let elapsed = unsafe { core::arch::x86_64::_rdtsc() } - started;
    let micros = elapsed / tsc_per_us.max(1);
    let scan_micros = (slots_read - started) / tsc_per_us.max(1);
    if differences > 0 {
        crate::log!(
            "capability audit: {differences} difference{} from the description: the system is not started",
            if differences == 1 { "" } else { "s" }
        );
        return Err(BuildError::AuditFailed(differences));
    }
    crate::log!(
        "capability audit: {} PDs, {caps} caps, {frames} frames: as the description grants ({}.{:03} ms; {} CNode slots read in {}.{:03} ms)",
        layout.components.len(),
        micros / 1000,
        micros % 1000,
        layout.components.len() << PD_CNODE_BITS,
        scan_micros / 1000,
        scan_micros % 1000
    );
    Ok(())
}

/// What the kernel says a non-empty slot holds; IO-port caps checked
/// against the range the description grants in that slot.
#[allow(clippy::too_many_arguments)]
fn classify(
    system: &System,
    component: &ComponentLayout,
    pd: usize,
    slot: u64,
    kernel_type: u64,
    expected: &[(u64, CapKind)],
    scratch: CPtr,
    probe: &ProbeThread,
) -> BuildResult<CapKind> {
    Ok(match kernel_type {
        cap_type::endpoint_cap => match granted_endpoint(system, component, pd, slot) {
            Some(granted) => {
                if probe.endpoint_leads_to(system, pd, slot, granted, scratch)? {
                    CapKind::Endpoint
                } else {
                    CapKind::EndpointNotAsGranted
                }
            }
            None => CapKind::Endpoint,
        },
        cap_type::notification_cap => {
            let channel = component.channels.iter().find(|c| {
                c.kind == ChannelKind::Notify && SLOT_CHANNEL_BASE + u64::from(c.id) == slot
            });
            match channel {
                Some(channel) => {
                    let peer = usize::from(channel.peer);
                    let badge = notification_bit(channel.peer_id);
                    if notification_reaches(system, pd, slot, peer, badge, scratch, probe)? {
                        CapKind::Notification
                    } else {
                        CapKind::NotificationNotAsGranted
                    }
                }
                // Not granted at all: compare_caps reports it as extra.
                None => CapKind::Notification,
            }
        }
        cap_type::irq_handler_cap => {
            // A vector IRQ (no device) can be raised here without side
            // effects: it must arrive at the end the description names.
            let vector_irq = component.irqs.iter().find(|irq| {
                matches!(irq.source, IrqSource::Vector(_))
                    && SLOT_IRQ_BASE + u64::from(irq.channel) == slot
            });
            match vector_irq {
                Some(irq) => {
                    let (peer, end) = match irq.notify {
                        Some(target) => (usize::from(target.component), target.end),
                        None => (pd, irq.channel),
                    };
                    let badge = notification_bit(end);
                    if raised_irq_reaches(system, pd, slot, peer, badge, scratch)? {
                        CapKind::IrqHandler
                    } else {
                        CapKind::IrqHandlerNotAsGranted
                    }
                }
                None => CapKind::IrqHandler,
            }
        }
        cap_type::hypervisor_cap => CapKind::Hypervisor,
        cap_type::io_port_cap => {
            let granted = expected.iter().find_map(|&(s, kind)| match kind {
                CapKind::IoPort { first, last } if s == slot => Some((first, last)),
                _ => None,
            });
            match granted {
                Some((first, last)) => {
                    let covers = |a, b| io_port_cap_covers(system, pd, slot, scratch, a, b);
                    let exact = covers(first, last)?
                        && (first == 0 || !covers(first - 1, first - 1)?)
                        && (last == u16::MAX || !covers(last + 1, last + 1)?);
                    if exact {
                        CapKind::IoPort { first, last }
                    } else {
                        CapKind::IoPortOtherRange
                    }
                }
                None => CapKind::IoPortOtherRange,
            }
        }
        other => CapKind::Other(other),
    })
}

/// Whether the IO-port cap in the PD's `slot` covers ports `first..=last`:
/// the kernel mints a narrower IO-port cap only from one that covers it.
fn io_port_cap_covers(
    system: &System,
    pd: usize,
    slot: u64,
    scratch: CPtr,
    first: u16,
    last: u16,
) -> BuildResult<bool> {
    let minted = sys::cnode_mint(
        initial_cap::INIT_THREAD_CNODE,
        scratch,
        ROOT_DEPTH,
        system.pds[pd].cnode,
        slot,
        PD_CNODE_BITS as u8,
        Rights::ALL,
        sys::io_port_cap_data(first, last),
    );
    if minted.is_err() {
        return Ok(false);
    }
    sys::cnode_delete(initial_cap::INIT_THREAD_CNODE, scratch, ROOT_DEPTH)
        .context("delete IO-port probe")?;
    Ok(true)
}

/// Whether signalling the notification cap in the PD's `slot` sets
/// exactly `badge` in `peer`'s notification. That notification is bound
/// to the peer's (not yet started) thread, and only that thread may poll a
/// bound notification, so it is unbound for the check and bound again;
/// bits already pending (an early interrupt) are put back. The cap must
/// not let its holder wait on that notification either.
fn notification_reaches(
    system: &System,
    pd: usize,
    slot: u64,
    peer: usize,
    badge: u64,
    scratch: CPtr,
    probe: &ProbeThread,
) -> BuildResult<bool> {
    let Some(target) = system.pds.get(peer) else {
        return Ok(false);
    };
    let (tcb, notification) = (target.tcb, target.notification);
    sys::tcb_unbind_notification(tcb).context("unbind for the audit")?;
    let pending = sys::poll(notification);
    sys::cnode_copy(
        initial_cap::INIT_THREAD_CNODE,
        scratch,
        ROOT_DEPTH,
        system.pds[pd].cnode,
        slot,
        PD_CNODE_BITS as u8,
        Rights::ALL,
    )
    .context("copy a notify cap")?;
    sys::signal(scratch);
    let arrived = sys::poll(notification);
    // While it is unbound: a read right would let the poll return.
    let send_only = probe.cannot_receive(scratch)?;
    let root = initial_cap::INIT_THREAD_CNODE;
    sys::cnode_delete(root, scratch, ROOT_DEPTH).context("delete the notify copy")?;
    if pending != 0 {
        sys::cnode_mint(
            root,
            scratch,
            ROOT_DEPTH,
            root,
            notification,
            ROOT_DEPTH,
            Rights::WRITE,
            pending,
        )
        .context("mint the pending bits")?;
        sys::signal(scratch);
        sys::cnode_delete(root, scratch, ROOT_DEPTH).context("delete the pending bits")?;
    }
    sys::tcb_bind_notification(tcb, notification).context("bind after the audit")?;
    Ok(arrived == badge && send_only)
}

/// Whether raising the IRQ handler in the PD's `slot` (kernel patch 0007:
/// a self-IPI of its vector, taken as soon as the root task is back at
/// user level) sets exactly `badge` in `peer`'s notification, unbound for
/// the check as in [`notification_reaches`]; pending bits are put back.
fn raised_irq_reaches(
    system: &System,
    pd: usize,
    slot: u64,
    peer: usize,
    badge: u64,
    scratch: CPtr,
) -> BuildResult<bool> {
    /// Polls for the interrupt to have been taken (QEMU takes it at once;
    /// bounded, so a handler bound elsewhere ends the wait).
    const POLLS: usize = 1000;
    let Some(target) = system.pds.get(peer) else {
        return Ok(false);
    };
    let (tcb, notification) = (target.tcb, target.notification);
    let root = initial_cap::INIT_THREAD_CNODE;
    sys::tcb_unbind_notification(tcb).context("unbind for the audit")?;
    let pending = sys::poll(notification);
    sys::cnode_copy(
        root,
        scratch,
        ROOT_DEPTH,
        system.pds[pd].cnode,
        slot,
        PD_CNODE_BITS as u8,
        Rights::ALL,
    )
    .context("copy an IRQ handler")?;
    let raised = sys::irq_handler_raise(scratch).is_ok();
    let mut arrived = 0;
    for _ in 0..POLLS {
        if !raised {
            break;
        }
        arrived = sys::poll(notification);
        if arrived != 0 {
            break;
        }
    }
    // An MSI-kind handler masks nothing; the ack keeps the protocol.
    let _ = sys::irq_handler_ack(scratch);
    sys::cnode_delete(root, scratch, ROOT_DEPTH).context("delete the IRQ handler copy")?;
    if pending != 0 {
        sys::cnode_mint(
            root,
            scratch,
            ROOT_DEPTH,
            root,
            notification,
            ROOT_DEPTH,
            Rights::WRITE,
            pending,
        )
        .context("mint the pending bits")?;
        sys::signal(scratch);
        sys::cnode_delete(root, scratch, ROOT_DEPTH).context("delete the pending bits")?;
    }
    sys::tcb_bind_notification(tcb, notification).context("bind after the audit")?;
    Ok(raised && arrived == badge)
}

/// For every PD, the (slot, kernel cap type) of each non-empty slot of its
/// CNode, read with `seL4_DebugCapIdentify` through the audit CSpace.
fn kernel_cap_types(system: &mut System, root_cnode_bits: u8) -> BuildResult<Vec<Vec<(u64, u64)>>> {
    let pds = system.pds.len() as u64;
    // 2^radix slots: the root CNode and one per PD.
    let radix = u64::from(64 - pds.leading_zeros()).max(1);
    let audit_cnode = system
        .allocator
        .object(object_type::seL4_CapTableObject, radix)?;
    let mint_cnode = |index: u64, cnode: CPtr, cnode_bits: u64| {
        sys::cnode_mint(
            audit_cnode,
            index,
            radix as u8,
            initial_cap::INIT_THREAD_CNODE,
            cnode,
            ROOT_DEPTH,
            Rights::ALL,
            sys::cnode_cap_data(0, 64 - radix - cnode_bits),
        )
        .context("mint into the audit CNode")
    };
    mint_cnode(
        0,
        initial_cap::INIT_THREAD_CNODE,
        u64::from(root_cnode_bits),
    )?;
    for pd in 0..system.pds.len() {
        mint_cnode(pd as u64 + 1, system.pds[pd].cnode, PD_CNODE_BITS)?;
    }
    sys::tcb_set_space(
        initial_cap::INIT_THREAD_TCB,
        0,
        audit_cnode,
        0,
        initial_cap::INIT_THREAD_VSPACE,
    )
    .context("enter the audit CSpace")?;
    let mut types = Vec::new();
    for pd in 0..pds {
        let mut held = Vec::new();
        for slot in 0..1u64 << PD_CNODE_BITS {
            let kind = sys::debug_cap_identify(((pd + 1) << (64 - radix)) | slot);
            if kind != cap_type::null_cap {
                held.push((slot, kind));
            }
        }
        types.push(held);
    }
    sys::tcb_set_space(
        initial_cap::INIT_THREAD_TCB,
        0,
        initial_cap::INIT_THREAD_CNODE,
        0,
        initial_cap::INIT_THREAD_VSPACE,
    )
    .context("leave the audit CSpace")?;
    // The audit CNode keeps no authority over the PDs' CNodes.
    for index in 0..=pds {
        sys::cnode_delete(audit_cnode, index, radix as u8).context("empty the audit CNode")?;
    }
    Ok(types)
}

/// Where the description says an endpoint cap of a PD leads.
#[derive(Clone, Copy)]
enum GrantedEndpoint {
    /// The PD receives on this endpoint (its own, slot 1).
    Receive(CPtr),
    /// Messages sent through it arrive on this endpoint with this badge.
    Send(CPtr, u64),
}

fn granted_endpoint(
    system: &System,
    component: &ComponentLayout,
    pd: usize,
    slot: u64,
) -> Option<GrantedEndpoint> {
    let monitor = system.monitor_endpoint;
    match slot {
        SLOT_ENDPOINT => Some(GrantedEndpoint::Receive(system.pds[pd].endpoint)),
        SLOT_MONITOR => Some(GrantedEndpoint::Send(
            monitor,
            REQUEST_BADGE_FLAG | pd as u64,
        )),
        SLOT_FAULT => Some(GrantedEndpoint::Send(monitor, FAULT_BADGE_FLAG | pd as u64)),
        _ => {
            let channel = component.channels.iter().find(|c| {
                c.kind == ChannelKind::CallClient && SLOT_CHANNEL_BASE + u64::from(c.id) == slot
            })?;
            let server = system.pds.get(usize::from(channel.peer))?;
            Some(GrantedEndpoint::Send(
                server.endpoint,
                PPC_BADGE_FLAG | u64::from(channel.peer_id),
            ))
        }
    }
}

/// The label of the probe thread's messages.
const PROBE_LABEL: u64 = 0x5a;
/// The label the probe thread last received (0: none), or
/// [`PROBE_RETURNED`].
static PROBE_RECEIVED: AtomicU64 = AtomicU64::new(0);
/// The probe thread's poll returned (the cap has the read right).
const PROBE_RETURNED: u64 = u64::MAX;
const PROBE_STACK_BYTES: usize = 4096;
/// seL4 starts the root task at the highest priority; the probe thread
/// runs at the same one, so the root task's yield hands it the CPU.
const ROOT_TASK_PRIORITY: u8 = 255;

#[repr(align(16))]
struct ProbeStack {
    _bytes: [u8; PROBE_STACK_BYTES],
}
/// Only the probe thread uses it; the root task takes its address.
static mut PROBE_STACK: ProbeStack = ProbeStack {
    _bytes: [0; PROBE_STACK_BYTES],
};

/// Send one message through `cap` (blocking until someone receives it).
extern "C" fn probe_send(cap: CPtr) -> ! {
    sys::send(cap, MessageInfo::new(PROBE_LABEL, 0, 0, 0), [0; 4]);
    loop {
        sys::yield_now();
    }
}

/// Receive one message on `cap` and record its label.
extern "C" fn probe_receive(cap: CPtr) -> ! {
    let received = sys::recv(cap);
    PROBE_RECEIVED.store(received.info.label(), Ordering::SeqCst);
    loop {
        sys::yield_now();
    }
}

/// Poll through `cap`: returns only if the cap has the read right (else
/// the kernel sends a cap fault to the probe's fault endpoint).
extern "C" fn probe_try_receive(cap: CPtr) -> ! {
    sys::nb_recv(cap);
    PROBE_RECEIVED.store(PROBE_RETURNED, Ordering::SeqCst);
    loop {
        sys::yield_now();
    }
}

/// A thread of the root task (its VSpace and CSpace, no IPC buffer: the
/// probes use register messages only) that uses one copied PD cap.
struct ProbeThread {
    tcb: CPtr,
    /// Where the kernel reports the probe thread's cap faults.
    fault_endpoint: CPtr,
}

impl ProbeThread {
    fn new(system: &mut System) -> BuildResult<ProbeThread> {
        let tcb = system.allocator.object(object_type::seL4_TCBObject, 0)?;
        let fault_endpoint = system
            .allocator
            .object(object_type::seL4_EndpointObject, 0)?;
        sys::tcb_configure(
            tcb,
            fault_endpoint,
            ROOT_TASK_PRIORITY,
            0,
            initial_cap::INIT_THREAD_CNODE,
            0,
            initial_cap::INIT_THREAD_VSPACE,
            0,
            0,
        )
        .context("configure the probe thread")?;
        Ok(ProbeThread {
            tcb,
            fault_endpoint,
        })
    }

    /// Start `entry(cap)` and let it run until it blocks or yields back.
    fn run(&self, entry: extern "C" fn(CPtr) -> !, cap: CPtr) -> BuildResult {
        let stack_top = core::ptr::addr_of!(PROBE_STACK) as u64 + PROBE_STACK_BYTES as u64;
        let context = sys::UserContext {
            rip: entry as usize as u64,
            // As after a call: the return address slot below an aligned top.
            rsp: stack_top - 8,
            rdi: cap,
            rflags: 0x202,
            ..Default::default()
        };
        sys::tcb_write_registers(self.tcb, true, &context).context("start the probe thread")?;
        sys::yield_now();
        Ok(())
    }

    /// Whether the cap at `cap` (a root slot) cannot be received on: the
    /// probe's poll through it faults (a read right would let it return).
    fn cannot_receive(&self, cap: CPtr) -> BuildResult<bool> {
        PROBE_RECEIVED.store(0, Ordering::SeqCst);
        self.run(probe_try_receive, cap)?;
        let returned = PROBE_RECEIVED.load(Ordering::SeqCst) == PROBE_RETURNED;
        let fault = sys::nb_recv(self.fault_endpoint);
        // A faulted probe waits for a reply: suspending it ends that.
        sys::tcb_suspend(self.tcb).context("stop the probe thread")?;
        Ok(!returned && fault.info.label() != 0)
    }

    /// Whether the endpoint cap in the PD's `slot` leads where granted
    /// (and, for a send cap, cannot be received on).
    fn endpoint_leads_to(
        &self,
        system: &System,
        pd: usize,
        slot: u64,
        granted: GrantedEndpoint,
        scratch: CPtr,
    ) -> BuildResult<bool> {
        let root = initial_cap::INIT_THREAD_CNODE;
        sys::cnode_copy(
            root,
            scratch,
            ROOT_DEPTH,
            system.pds[pd].cnode,
            slot,
            PD_CNODE_BITS as u8,
            Rights::ALL,
        )
        .context("copy an endpoint cap")?;
        let leads = match granted {
            GrantedEndpoint::Send(endpoint, badge) => {
                self.run(probe_send, scratch)?;
                let received = sys::nb_recv(endpoint);
                sys::tcb_suspend(self.tcb).context("stop the probe thread")?;
                received.info.label() == PROBE_LABEL
                    && received.badge == badge
                    && self.cannot_receive(scratch)?
            }
            GrantedEndpoint::Receive(endpoint) => {
                PROBE_RECEIVED.store(0, Ordering::SeqCst);
                self.run(probe_receive, scratch)?;
                sys::nb_send(endpoint, MessageInfo::new(PROBE_LABEL, 0, 0, 0), [0; 4]);
                sys::yield_now();
                PROBE_RECEIVED.load(Ordering::SeqCst) == PROBE_LABEL
            }
        };
        // Suspending also withdraws a message still waiting to be sent.
        sys::tcb_suspend(self.tcb).context("stop the probe thread")?;
        sys::cnode_delete(root, scratch, ROOT_DEPTH).context("delete the endpoint copy")?;
        Ok(leads)
    }
}
