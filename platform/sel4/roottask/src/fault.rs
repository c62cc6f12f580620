//! Fault messages as the kernel sends them to a fault endpoint (seL4 5.0,
//! x86_64), decoded into what the monitor tells a supervisor. Pure: the
//! monitor passes the message in.

use sel4_runtime::abi::{FaultKind, PANIC_FAULT_VADDR};

/// A fault the monitor holds for a supervisor.
#[derive(Clone, Copy, Debug)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub address: u64,
    pub ip: u64,
    pub write: bool,
}

const FAULT_CAP: u64 = 1;
const FAULT_UNKNOWN_SYSCALL: u64 = 2;
const FAULT_USER_EXCEPTION: u64 = 3;
const FAULT_VM: u64 = 5;
/// x86 page-fault error code bit: the access was a write.
const PF_WRITE: u64 = 1 << 1;

/// Decode a fault message: its label (the fault type) and message
/// registers 0-3; `unknown_syscall_ip` reads message register 15, where an
/// unknown-syscall fault keeps the instruction pointer.
pub fn decode_fault(
    label: u64,
    mrs: [u64; 4],
    unknown_syscall_ip: impl FnOnce() -> u64,
) -> FaultRecord {
    match label {
        FAULT_VM => {
            let address = mrs[1];
            let kind = if address & !0xfff == PANIC_FAULT_VADDR {
                FaultKind::Panic
            } else {
                FaultKind::Memory
            };
            FaultRecord {
                kind,
                address,
                ip: mrs[0],
                write: mrs[3] & PF_WRITE != 0,
            }
        }
        FAULT_USER_EXCEPTION | FAULT_CAP => FaultRecord {
            kind: FaultKind::Instruction,
            address: 0,
            ip: mrs[0],
            write: false,
        },
        FAULT_UNKNOWN_SYSCALL => FaultRecord {
            kind: FaultKind::Instruction,
            address: 0,
            ip: unknown_syscall_ip(),
            write: false,
        },
        _ => FaultRecord {
            kind: FaultKind::Instruction,
            address: 0,
            ip: 0,
            write: false,
        },
    }
}

/// The CPU exception vector of a user-exception fault (message register
/// 3 of the 5.0 x86 UserException message), `None` for other faults.
pub fn user_exception(label: u64, mrs: [u64; 4]) -> Option<u64> {
    (label == FAULT_USER_EXCEPTION).then_some(mrs[3])
}

/// The mnemonic of an x86 exception vector, for the monitor's log.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        6 => "#UD",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        19 => "#XM",
        _ => "exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_exceptions_give_their_vector() {
        assert_eq!(
            user_exception(FAULT_USER_EXCEPTION, [0x1000, 0, 0, 13]),
            Some(13)
        );
        assert_eq!(user_exception(FAULT_VM, [0x1000, 0, 0, 13]), None);
        assert_eq!(exception_name(13), "#GP");
    }

    #[test]
    fn vm_faults_give_address_ip_and_direction() {
        let write = decode_fault(FAULT_VM, [0x20_0100, 0x10_0000_0000, 0, 0x7], || 0);
        assert_eq!(write.kind, FaultKind::Memory);
        assert_eq!(
            (write.address, write.ip, write.write),
            (0x10_0000_0000, 0x20_0100, true)
        );
        let read = decode_fault(FAULT_VM, [0x20_0100, 0x5000_0000, 0, 0x4], || 0);
        assert!(!read.write);
    }

    #[test]
    fn the_panic_page_means_a_panic() {
        let panic = decode_fault(FAULT_VM, [0x20_0100, PANIC_FAULT_VADDR, 0, 0x6], || 0);
        assert_eq!(panic.kind, FaultKind::Panic);
    }

    #[test]
    fn other_faults_are_instruction_faults_with_their_ip() {
        let exception = decode_fault(FAULT_USER_EXCEPTION, [0x20_0200, 0, 0, 0], || 0);
        assert_eq!(
            (exception.kind, exception.ip),
            (FaultKind::Instruction, 0x20_0200)
        );
        let syscall = decode_fault(FAULT_UNKNOWN_SYSCALL, [0; 4], || 0x20_0300);
        assert_eq!(
            (syscall.kind, syscall.ip),
            (FaultKind::Instruction, 0x20_0300)
        );
        assert_eq!(decode_fault(99, [1, 2, 3, 4], || 0).ip, 0);
    }
}
