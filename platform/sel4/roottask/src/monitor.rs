//! The monitor: after building the system the root task serves faults and
//! supervisor requests on its endpoint, forever.
//!
//! - A fault (badge FAULT_BADGE_FLAG | pd) is recorded for the PD, logged,
//!   and the supervisor is signalled with MONITOR_NEWS_BIT; the faulting
//!   thread stays blocked (no reply) until its supervisor restarts it.
//! - A PD described with `supervisor = "@platform"` (synic, vmbus) has the
//!   monitor as its supervisor: it is restarted at once, or held stopped
//!   after 3 faults within 10 s.
//! - A request (badge REQUEST_BADGE_FLAG | pd) is checked against the
//!   description: only a PD's own children may be restarted, stopped or
//!   reported, and only a PD allowed to may power off.

use crate::fault::decode_fault;
use crate::system::System;
use sel4_bindings::{self as sys, MessageInfo};
use sel4_runtime::abi::*;

fn handle_fault(system: &mut System, pd: usize, received: &sys::Received) {
    let fault = decode_fault(received.info.label(), received.mrs, || sys::get_mr(15));
    let name = system.pds[pd].name.clone();
    match fault.kind {
        FaultKind::Memory => crate::log!(
            "{name} faulted: {} at {:#x} (ip {:#x})",
            if fault.write { "write" } else { "read" },
            fault.address,
            fault.ip
        ),
        FaultKind::Panic => crate::log!("{name} panicked"),
        FaultKind::Instruction => {
            match crate::fault::user_exception(received.info.label(), received.mrs) {
                Some(vector) => crate::log!(
                    "{name} faulted: exception {vector} ({}) at {:#x}",
                    crate::fault::exception_name(vector),
                    fault.ip
                ),
                None => crate::log!("{name} faulted: instruction at {:#x}", fault.ip),
            }
        }
    }
    if let Err(error) = system.fail_pending_call_and_log(pd) {
        crate::log!("cannot fail the call {name} was serving: {error}");
    }
    dispatch_fault(system, pd, fault);
}

/// A PD has faulted (it is stopped): its supervisor hears of it, or the
/// monitor restarts it (`supervisor = "@platform"`).
fn dispatch_fault(system: &mut System, pd: usize, fault: crate::fault::FaultRecord) {
    let name = system.pds[pd].name.clone();
    system.pds[pd].pending_fault = Some(fault);
    match system.pds[pd].supervisor {
        Some(supervisor) => sys::signal(system.pds[supervisor].news),
        None if system.pds[pd].platform_supervised => restart_for_the_platform(system, pd),
        None => crate::log!("{name} has no supervisor: it stays stopped"),
    }
}

/// `supervisor = "@platform"`: the monitor is the supervisor. Restart the
/// PD (memory reset to its image), or hold it stopped after
/// `PLATFORM_FAULTS_TO_HOLD` faults within `PLATFORM_FAULT_WINDOW_NS`.
fn restart_for_the_platform(system: &mut System, pd: usize) {
    let name = system.pds[pd].name.clone();
    // SAFETY: rdtsc has no memory effects; user mode may use it.
    let started = unsafe { core::arch::x86_64::_rdtsc() };
    let now_ns = started / system.tsc_per_us.max(1) * 1000;
    system.pds[pd].pending_fault = None;
    if !system_layout::platform_should_restart(&mut system.pds[pd].platform_faults, now_ns) {
        crate::log!(
            "{name} held stopped: {} faults within {} s",
            system_layout::PLATFORM_FAULTS_TO_HOLD,
            system_layout::PLATFORM_FAULT_WINDOW_NS / 1_000_000_000
        );
        return;
    }
    match system.restart(pd) {
        Ok(()) => {
            // SAFETY: as above.
            let done = unsafe { core::arch::x86_64::_rdtsc() };
            crate::log!(
                "restarted {name} (memory reset, {} us)",
                (done - started) / system.tsc_per_us.max(1)
            );
        }
        Err(error) => crate::log!("restart of {name} failed: {error}"),
    }
}

/// The PD index of `requester`'s child number `child`.
fn child_of(system: &System, requester: usize, child: u64) -> Option<usize> {
    system.pds[requester]
        .children
        .get(usize::try_from(child).ok()?)
        .copied()
}

fn handle_request(
    system: &mut System,
    pd: usize,
    received: &sys::Received,
) -> (MessageInfo, [u64; 4]) {
    let ok = (MessageInfo::new(MONITOR_OK, 0, 0, 0), [0; 4]);
    let denied = (MessageInfo::new(MONITOR_DENIED, 0, 0, 0), [0; 4]);
    let failed = (MessageInfo::new(MONITOR_FAILED, 0, 0, 0), [0; 4]);
    match MonitorRequest::from_label(received.info.label()) {
        Some(MonitorRequest::Restart) => match child_of(system, pd, received.mrs[0]) {
            Some(child) => match system.restart(child) {
                Ok(()) => {
                    crate::log!(
                        "{} restarted {} (memory reset)",
                        system.pds[pd].name,
                        system.pds[child].name
                    );
                    ok
                }
                Err(error) => {
                    crate::log!("restart of {} failed: {error}", system.pds[child].name);
                    failed
                }
            },
            None => denied,
        },
        Some(MonitorRequest::Stop) => match child_of(system, pd, received.mrs[0]) {
            Some(child) => match system.stop(child) {
                Ok(()) => ok,
                Err(_) => failed,
            },
            None => denied,
        },
        Some(MonitorRequest::PowerOff) => {
            if system.pds[pd].may_power_off {
                let code = received.mrs[0] as u8;
                crate::log!("{} powers off (code {code})", system.pds[pd].name);
                crate::boot::power_off(code)
            }
            crate::log!("{} may not power off: ignored", system.pds[pd].name);
            denied
        }
        Some(MonitorRequest::TakeFault) => {
            let children = system.pds[pd].children.clone();
            for (index, &child) in children.iter().enumerate() {
                if let Some(fault) = system.pds[child].pending_fault.take() {
                    sys::set_mr(4, fault.ip);
                    sys::set_mr(5, fault.write as u64);
                    return (
                        MessageInfo::new(MONITOR_OK, 0, 0, 6),
                        [1, index as u64, fault.kind as u64, fault.address],
                    );
                }
            }
            (MessageInfo::new(MONITOR_OK, 0, 0, 1), [0; 4])
        }
        Some(MonitorRequest::InjectFault) => {
            if !(cfg!(roottask_fault_injection) && system.pds[pd].simulated_host) {
                return denied;
            }
            let mut bytes = [0u8; 32];
            for (i, word) in received.mrs.iter().enumerate() {
                bytes[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
            }
            let length = bytes.iter().position(|b| *b == 0).unwrap_or(32);
            let name = core::str::from_utf8(&bytes[..length]).unwrap_or("");
            let Some(target) = system.pds.iter().position(|p| p.name == name) else {
                return denied;
            };
            if target == pd {
                return denied;
            }
            crate::log!(
                "fault injection: {name} stopped as if it had faulted ({} asked)",
                system.pds[pd].name
            );
            if sys::tcb_suspend(system.pds[target].tcb).is_err() {
                return failed;
            }
            if let Err(error) = system.fail_pending_call_and_log(target) {
                crate::log!("cannot fail the call {name} was serving: {error}");
            }
            let fault = crate::fault::FaultRecord {
                kind: FaultKind::Instruction,
                address: 0,
                ip: 0,
                write: false,
            };
            dispatch_fault(system, target, fault);
            ok
        }
        None => denied,
    }
}

pub fn serve(mut system: System) -> ! {
    let endpoint = system.monitor_endpoint;
    let mut pending_reply: Option<(MessageInfo, [u64; 4])> = None;
    loop {
        let received = match pending_reply.take() {
            Some((tag, fast)) => sys::reply_recv(endpoint, tag, fast),
            None => sys::recv(endpoint),
        };
        let pd = (received.badge & PD_INDEX_MASK) as usize;
        if pd >= system.pds.len() {
            continue;
        }
        if received.badge & FAULT_BADGE_FLAG != 0 {
            handle_fault(&mut system, pd, &received);
        } else if received.badge & REQUEST_BADGE_FLAG != 0 {
            pending_reply = Some(handle_request(&mut system, pd, &received));
        }
    }
}
