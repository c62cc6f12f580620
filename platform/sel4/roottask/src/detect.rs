//! Hypervisor detection at boot: what CPUID reports, and whether the
//! description's platform (`[platform] hypervisor`) can run here.
//!
//! The root task reads CPUID before it builds anything and prints the
//! report (`hyperv_defs::cpuid` parses it). A `"hyper-v"` image needs
//! Hyper-V with the synic, hypercalls, post messages and signal events;
//! elsewhere (QEMU here) it says so and powers off with
//! `HYPERV_ABSENT_CODE`, before a PD exists. A `"simulated"` image runs
//! anywhere: its simulated host serves the hypervisor interface.
//!
//! Trusts: nothing CPUID says (the parser bounds every leaf and cleans the
//! vendor text). Writes: nothing (the caller prints the lines).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hyperv_defs::cpuid::{CpuidRegisters, Detection, PrivilegeNames};
use system_layout::Platform;

/// Whether the system may be built on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Start,
    /// A Hyper-V image on a machine that cannot serve it.
    HyperVAbsent,
}

/// CPUID on the CPU the root task runs on (leaf, subleaf 0).
#[cfg(target_os = "none")]
pub fn cpuid(leaf: u32) -> CpuidRegisters {
    let result = core::arch::x86_64::__cpuid(leaf);
    CpuidRegisters::new(result.eax, result.ebx, result.ecx, result.edx)
}

/// The report lines (without the `[monitor] ` prefix) and the verdict.
pub fn report(detection: &Detection, platform: Platform) -> (Vec<String>, Verdict) {
    let mut lines = alloc::vec![format!("hypervisor: {detection}")];
    if let Some(hyper_v) = detection.hyper_v() {
        lines.push(format!("hyper-v: {}", hyper_v.details()));
    }
    let value = platform.description_value();
    let verdict = match platform {
        Platform::Simulated => {
            lines.push(format!(
                "platform: simulated host (hypervisor = \"{value}\"): the description's simulated host serves the hypervisor interface"
            ));
            Verdict::Start
        }
        Platform::HyperV if detection.serves_vmbus() => {
            lines.push(format!(
                "platform: Hyper-V (hypervisor = \"{value}\"): the kernel path serves the hypervisor interface"
            ));
            Verdict::Start
        }
        Platform::HyperV => {
            let machine = match detection.hyper_v() {
                Some(hyper_v) => format!(
                    "this Hyper-V partition lacks {}",
                    PrivilegeNames(hyper_v.missing_for_vmbus())
                ),
                None => String::from("this machine is not Hyper-V"),
            };
            lines.push(format!(
                "platform: this image is built for Hyper-V (hypervisor = \"{value}\") and {machine} (it needs the synic, hypercalls, post messages and signal events): powering off"
            ));
            Verdict::HyperVAbsent
        }
    };
    (lines, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_tcg() -> Detection {
        Detection::Other {
            vendor: *b"TCGTCGTCGTCG",
            max_leaf: 0x4000_0001,
            interface: Some(0),
        }
    }

    fn hyper_v(features_ebx: u32) -> Detection {
        Detection::probe(|leaf| match leaf {
            1 => CpuidRegisters::new(0, 0, 1 << 31, 0),
            0x4000_0000 => CpuidRegisters::new(0x4000_0006, 0x7263_694d, 0x666f_736f, 0x7648_2074),
            0x4000_0001 => CpuidRegisters::new(0x3123_7648, 0, 0, 0),
            0x4000_0002 => CpuidRegisters::new(19041, 0x000A_0000, 0, 0),
            0x4000_0003 => CpuidRegisters::new(0x2e7f, features_ebx, 0, 0),
            _ => CpuidRegisters::default(),
        })
    }

    #[test]
    fn a_simulated_image_starts_anywhere() {
        for detection in [Detection::NoHypervisor, qemu_tcg(), hyper_v(0x3b_8030)] {
            let (lines, verdict) = report(&detection, Platform::Simulated);
            assert_eq!(verdict, Verdict::Start);
            assert!(lines
                .last()
                .unwrap()
                .starts_with("platform: simulated host"));
        }
    }

    #[test]
    fn a_hyper_v_image_refuses_a_machine_without_hyper_v() {
        let (lines, verdict) = report(&qemu_tcg(), Platform::HyperV);
        assert_eq!(verdict, Verdict::HyperVAbsent);
        assert_eq!(
            lines,
            [
                "hypervisor: \"TCGTCGTCGTCG\" (max leaf 0x40000001), not Hyper-V",
                "platform: this image is built for Hyper-V (hypervisor = \"hyper-v\") and this machine is not Hyper-V (it needs the synic, hypercalls, post messages and signal events): powering off",
            ]
        );
        let (_, verdict) = report(&Detection::NoHypervisor, Platform::HyperV);
        assert_eq!(verdict, Verdict::HyperVAbsent);
    }

    #[test]
    fn a_hyper_v_image_needs_the_vmbus_privileges() {
        let (lines, verdict) = report(&hyper_v(0x3b_8030), Platform::HyperV);
        assert_eq!(verdict, Verdict::Start);
        assert_eq!(
            lines[0],
            "hypervisor: Hyper-V 10.0 build 19041: synic, hypercalls, reference TSC page, post messages, signal events"
        );
        assert!(lines[1].starts_with("hyper-v: max leaf 0x40000006, privileges 0x3b803000002e7f"));
        // No SignalEvents (EBX bit 5): refused, and told why.
        let (lines, verdict) = report(&hyper_v(0x3b_8010), Platform::HyperV);
        assert_eq!(verdict, Verdict::HyperVAbsent);
        assert!(lines[2].contains("this Hyper-V partition lacks signal events (it needs"));
    }
}
