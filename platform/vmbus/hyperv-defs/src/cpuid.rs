//! Hypervisor detection through CPUID (TLFS "Feature and Interface
//! Discovery"): leaf 1 ECX bit 31 says a hypervisor is present; leaf
//! 0x40000000 names it and its highest leaf; a Hyper-V-compatible one
//! answers "Hv#1" at 0x40000001 and then reports its version (0x40000002),
//! the partition's privileges and features (0x40000003), recommendations
//! (0x40000004), limits (0x40000005) and hardware features (0x40000006).
//!
//! Pure parsing: the caller executes CPUID and passes a function from leaf
//! to registers, so the parser runs the same on a host test as in the seL4
//! root task. Every value comes from the hypervisor and is treated as
//! untrusted: a leaf above the reported maximum is never asked for, and a
//! vendor string is shown with non-printable bytes replaced.
//!
//! Bit positions: TLFS `HV_PARTITION_PRIVILEGE_MASK` and the feature
//! discovery chapter, cross-checked against Linux's `hyperv-tlfs.h` /
//! `hvgdk_mini.h` (read for the facts only).

use core::fmt;

/// CPUID leaf 1 ("version and features").
pub const LEAF_VERSION_AND_FEATURES: u32 = 0x1;
/// Leaf 1 ECX bit 31: a hypervisor is present.
pub const HYPERVISOR_PRESENT_ECX: u32 = 1 << 31;
/// Vendor signature (EBX, ECX, EDX) and the highest hypervisor leaf (EAX).
pub const LEAF_VENDOR_AND_MAX: u32 = 0x4000_0000;
/// Interface signature (EAX).
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Build (EAX), major.minor (EBX), service pack (ECX), branch.number (EDX).
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Partition privileges (EAX low half, EBX high half), power management
/// (ECX), miscellaneous features (EDX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations (EAX) and spinlock retries (EBX).
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits: virtual and logical processors, interrupt vectors.
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Hardware features the hypervisor uses (EAX).
pub const LEAF_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// The vendor signature of Microsoft's hypervisor.
pub const VENDOR_MICROSOFT_HV: [u8; 12] = *b"Microsoft Hv";
/// The interface signature "Hv#1" (EAX of [`LEAF_INTERFACE`]).
pub const INTERFACE_HV1: u32 = u32::from_le_bytes(*b"Hv#1");
/// A Hyper-V-compatible hypervisor reports at least this leaf (TLFS; Linux
/// refuses one that reports less).
pub const MIN_HV1_MAX_LEAF: u32 = LEAF_LIMITS;

/// The four registers one CPUID leaf returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegisters {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidRegisters {
    pub const fn new(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        Self { eax, ebx, ecx, edx }
    }
}

bitflags::bitflags! {
    /// `HV_PARTITION_PRIVILEGE_MASK`: leaf 0x40000003 EAX (bits 0-31) and
    /// EBX (bits 32-63). Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PartitionPrivileges: u64 {
        /// HV_X64_MSR_VP_RUNTIME.
        const ACCESS_VP_RUNTIME_MSR = 1 << 0;
        /// HV_X64_MSR_TIME_REF_COUNT (the partition reference counter).
        const ACCESS_PARTITION_REFERENCE_COUNTER = 1 << 1;
        /// The synic MSRs (SCONTROL, SVERSION, SIEFP, SIMP, EOM, SINTx).
        const ACCESS_SYNIC_MSRS = 1 << 2;
        /// The synthetic timer MSRs.
        const ACCESS_SYNTHETIC_TIMER_MSRS = 1 << 3;
        /// The APIC access MSRs (EOI, ICR, TPR) and the VP assist page.
        const ACCESS_APIC_MSRS = 1 << 4;
        /// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL.
        const ACCESS_HYPERCALL_MSRS = 1 << 5;
        /// HV_X64_MSR_VP_INDEX.
        const ACCESS_VP_INDEX = 1 << 6;
        /// HV_X64_MSR_RESET.
        const ACCESS_RESET_MSR = 1 << 7;
        /// The statistics page MSRs.
        const ACCESS_STATS_MSR = 1 << 8;
        /// HV_X64_MSR_REFERENCE_TSC (the reference TSC page).
        const ACCESS_PARTITION_REFERENCE_TSC = 1 << 9;
        /// HV_X64_MSR_GUEST_IDLE.
        const ACCESS_GUEST_IDLE_MSR = 1 << 10;
        /// The TSC and APIC frequency MSRs.
        const ACCESS_FREQUENCY_MSRS = 1 << 11;
        /// The synthetic debugging MSRs.
        const ACCESS_DEBUG_MSRS = 1 << 12;
        /// The reenlightenment controls.
        const ACCESS_REENLIGHTENMENT_CONTROLS = 1 << 13;
        /// HV_X64_MSR_TSC_INVARIANT_CONTROL.
        const ACCESS_TSC_INVARIANT_CONTROLS = 1 << 15;
        /// HvCallCreatePartition (root only).
        const CREATE_PARTITIONS = 1 << 32;
        const ACCESS_PARTITION_ID = 1 << 33;
        const ACCESS_MEMORY_POOL = 1 << 34;
        /// HvCallPostMessage: how the guest sends VMBus messages.
        const POST_MESSAGES = 1 << 36;
        /// HvCallSignalEvent: how the guest signals the host for a channel.
        const SIGNAL_EVENTS = 1 << 37;
        const CREATE_PORT = 1 << 38;
        const CONNECT_PORT = 1 << 39;
        const ACCESS_STATS = 1 << 40;
        const DEBUGGING = 1 << 43;
        const CPU_MANAGEMENT = 1 << 44;
        const ENABLE_EXTENDED_HYPERCALLS = 1 << 52;
        const ISOLATION = 1 << 54;
        const _ = !0;
    }
}

impl PartitionPrivileges {
    /// What a VMBus guest needs: the synic, the hypercall page, and the
    /// two hypercalls VMBus uses.
    pub const VMBUS_GUEST: Self = Self::ACCESS_SYNIC_MSRS
        .union(Self::ACCESS_HYPERCALL_MSRS)
        .union(Self::POST_MESSAGES)
        .union(Self::SIGNAL_EVENTS);

    /// From leaf 0x40000003's EAX (low) and EBX (high).
    pub const fn from_leaf(eax: u32, ebx: u32) -> Self {
        Self::from_bits_retain(((ebx as u64) << 32) | eax as u64)
    }
}

bitflags::bitflags! {
    /// Leaf 0x40000004 EAX: how the hypervisor recommends the guest behave.
    /// Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Recommendations: u32 {
        const HYPERCALL_FOR_ADDRESS_SPACE_SWITCH = 1 << 0;
        const HYPERCALL_FOR_LOCAL_TLB_FLUSH = 1 << 1;
        const HYPERCALL_FOR_REMOTE_TLB_FLUSH = 1 << 2;
        /// Use the APIC MSRs for EOI, ICR and TPR.
        const MSRS_FOR_APIC_ACCESS = 1 << 3;
        /// Reset the system through HV_X64_MSR_RESET.
        const MSR_FOR_SYSTEM_RESET = 1 << 4;
        /// Relax watchdog timeouts: the VP may be descheduled.
        const RELAXED_TIMING = 1 << 5;
        /// Do not use AutoEOI on SINTs.
        const DEPRECATE_AUTO_EOI = 1 << 9;
        const SYNTHETIC_CLUSTER_IPI = 1 << 10;
        const EX_PROCESSOR_MASKS = 1 << 11;
        const ENLIGHTENED_VMCS = 1 << 14;
        const _ = !0;
    }
}

/// The hypervisor's version (leaf 0x40000002).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvVersion {
    pub build: u32,
    pub major: u16,
    pub minor: u16,
    pub service_pack: u32,
    pub service_branch: u8,
    pub service_number: u32,
}

impl HvVersion {
    pub const fn from_leaf(leaf: CpuidRegisters) -> Self {
        Self {
            build: leaf.eax,
            major: (leaf.ebx >> 16) as u16,
            minor: leaf.ebx as u16,
            service_pack: leaf.ecx,
            service_branch: (leaf.edx >> 24) as u8,
            service_number: leaf.edx & 0x00FF_FFFF,
        }
    }
}

/// Implementation limits (leaf 0x40000005); 0 means not reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvLimits {
    pub max_virtual_processors: u32,
    pub max_logical_processors: u32,
    pub max_interrupt_vectors: u32,
}

/// What a Hyper-V-compatible hypervisor ("Hv#1") reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HyperV {
    pub vendor: [u8; 12],
    pub max_leaf: u32,
    pub version: HvVersion,
    pub privileges: PartitionPrivileges,
    /// Leaf 0x40000003 ECX (power management).
    pub power_management: u32,
    /// Leaf 0x40000003 EDX (miscellaneous features).
    pub misc_features: u32,
    pub recommendations: Recommendations,
    /// Leaf 0x40000004 EBX: spinlock retries before notifying the
    /// hypervisor (0xFFFFFFFF: never).
    pub spinlock_retries: u32,
    pub limits: HvLimits,
    /// Leaf 0x40000006 EAX, if the hypervisor reports that leaf.
    pub hardware_features: Option<u32>,
}

impl HyperV {
    pub const fn has(&self, privileges: PartitionPrivileges) -> bool {
        self.privileges.contains(privileges)
    }

    /// The privileges a VMBus guest needs that this partition lacks.
    pub const fn missing_for_vmbus(&self) -> PartitionPrivileges {
        PartitionPrivileges::VMBUS_GUEST.difference(self.privileges)
    }

    /// Synic, hypercalls, post messages and signal events are all granted.
    pub const fn serves_vmbus(&self) -> bool {
        self.missing_for_vmbus().is_empty()
    }

    /// The second report line: the raw values someone checking a new host
    /// compares with the TLFS.
    pub fn details(&self) -> HyperVDetails<'_> {
        HyperVDetails(self)
    }
}

/// What CPUID says about the hypervisor under us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Leaf 1 ECX bit 31 is clear: bare metal, or a hypervisor that hides.
    NoHypervisor,
    /// A hypervisor that is not Hyper-V-compatible (or reports too little
    /// to be used as one).
    Other {
        vendor: [u8; 12],
        max_leaf: u32,
        /// Leaf 0x40000001 EAX, if the hypervisor reports that leaf.
        interface: Option<u32>,
    },
    /// A Hyper-V-compatible hypervisor (Hyper-V itself, or another one
    /// speaking its interface).
    HyperV(HyperV),
}

impl Detection {
    /// Ask `cpuid` (leaf -> registers; subleaf 0) only for the leaves the
    /// hypervisor reports, and parse them.
    pub fn probe(mut cpuid: impl FnMut(u32) -> CpuidRegisters) -> Self {
        if cpuid(LEAF_VERSION_AND_FEATURES).ecx & HYPERVISOR_PRESENT_ECX == 0 {
            return Self::NoHypervisor;
        }
        let vendor_leaf = cpuid(LEAF_VENDOR_AND_MAX);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&vendor_leaf.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&vendor_leaf.ecx.to_le_bytes());
        vendor[8..12].copy_from_slice(&vendor_leaf.edx.to_le_bytes());
        // Some hypervisors (old KVM) report 0 here while answering leaves
        // up to 0x40000001; only a value in the hypervisor range counts.
        let max_leaf = vendor_leaf.eax;
        let reports = |leaf: u32| (LEAF_VENDOR_AND_MAX..=max_leaf).contains(&leaf);
        let interface = reports(LEAF_INTERFACE).then(|| cpuid(LEAF_INTERFACE).eax);
        if interface != Some(INTERFACE_HV1) || max_leaf < MIN_HV1_MAX_LEAF {
            return Self::Other {
                vendor,
                max_leaf,
                interface,
            };
        }
        let features = cpuid(LEAF_FEATURES);
        let recommendations = cpuid(LEAF_RECOMMENDATIONS);
        let limits = cpuid(LEAF_LIMITS);
        Self::HyperV(HyperV {
            vendor,
            max_leaf,
            version: HvVersion::from_leaf(cpuid(LEAF_VERSION)),
            privileges: PartitionPrivileges::from_leaf(features.eax, features.ebx),
            power_management: features.ecx,
            misc_features: features.edx,
            recommendations: Recommendations::from_bits_retain(recommendations.eax),
            spinlock_retries: recommendations.ebx,
            limits: HvLimits {
                max_virtual_processors: limits.eax,
                max_logical_processors: limits.ebx,
                max_interrupt_vectors: limits.ecx,
            },
            hardware_features: reports(LEAF_HARDWARE_FEATURES)
                .then(|| cpuid(LEAF_HARDWARE_FEATURES).eax),
        })
    }

    /// The Hyper-V report, if the hypervisor is Hyper-V-compatible.
    pub const fn hyper_v(&self) -> Option<&HyperV> {
        match self {
            Self::HyperV(hyper_v) => Some(hyper_v),
            _ => None,
        }
    }

    /// A VMBus guest can run here on the kernel path: Hyper-V with the
    /// synic, hypercalls, post messages and signal events.
    pub fn serves_vmbus(&self) -> bool {
        self.hyper_v().is_some_and(HyperV::serves_vmbus)
    }
}

/// A signature in quotes, bytes outside printable ASCII shown as `?` (the
/// hypervisor chooses them).
struct Signature<'a>(&'a [u8]);

impl fmt::Display for Signature<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let end = self
            .0
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        for &byte in &self.0[..end] {
            let shown = if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '?'
            };
            fmt::Write::write_char(f, shown)?;
        }
        f.write_str("\"")
    }
}

/// The capabilities a user of this system cares about, with their names in
/// the report.
const REPORTED: [(PartitionPrivileges, &str); 5] = [
    (PartitionPrivileges::ACCESS_SYNIC_MSRS, "synic"),
    (PartitionPrivileges::ACCESS_HYPERCALL_MSRS, "hypercalls"),
    (
        PartitionPrivileges::ACCESS_PARTITION_REFERENCE_TSC,
        "reference TSC page",
    ),
    (PartitionPrivileges::POST_MESSAGES, "post messages"),
    (PartitionPrivileges::SIGNAL_EVENTS, "signal events"),
];

/// The names, in the report's words, of the reported capabilities among
/// the given privileges ("none" if there are none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivilegeNames(pub PartitionPrivileges);

impl fmt::Display for PrivilegeNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in REPORTED {
            if self.0.contains(flag) {
                f.write_str(if first { "" } else { ", " })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl fmt::Display for HyperV {
    /// `Hyper-V 10.0 build 19041: synic, hypercalls, reference TSC page,
    /// post messages, signal events`, then `; lacks ...` if any is missing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.vendor == VENDOR_MICROSOFT_HV {
            f.write_str("Hyper-V")?;
        } else {
            write!(f, "Hyper-V interface from {}", Signature(&self.vendor))?;
        }
        write!(
            f,
            " {}.{} build {}: ",
            self.version.major, self.version.minor, self.version.build
        )?;
        let reported = REPORTED
            .iter()
            .fold(PartitionPrivileges::empty(), |all, (flag, _)| {
                all.union(*flag)
            });
        write!(f, "{}", PrivilegeNames(self.privileges))?;
        let lacking = reported.difference(self.privileges);
        if !lacking.is_empty() {
            write!(f, "; lacks {}", PrivilegeNames(lacking))?;
        }
        Ok(())
    }
}

/// [`HyperV::details`].
pub struct HyperVDetails<'a>(&'a HyperV);

impl fmt::Display for HyperVDetails<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hv = self.0;
        write!(
            f,
            "max leaf {:#x}, privileges {:#x}, misc features {:#x}, recommendations {:#x}, \
             spinlock retries {:#x}, max VPs {}",
            hv.max_leaf,
            hv.privileges.bits(),
            hv.misc_features,
            hv.recommendations.bits(),
            hv.spinlock_retries,
            hv.limits.max_virtual_processors,
        )?;
        if let Some(hardware) = hv.hardware_features {
            write!(f, ", hardware features {hardware:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHypervisor => f.write_str("none reported by CPUID"),
            Self::Other {
                vendor,
                max_leaf,
                interface,
            } => {
                write!(f, "{} (max leaf {max_leaf:#x}", Signature(vendor))?;
                // The interface matters only when the vendor claims to be
                // Microsoft's (other vendors put features there).
                match interface {
                    Some(interface) if *vendor == VENDOR_MICROSOFT_HV => {
                        write!(f, ", interface {}", Signature(&interface.to_le_bytes()))?
                    }
                    _ => {}
                }
                f.write_str("), not Hyper-V")
            }
            Self::HyperV(hyper_v) => write!(f, "{hyper_v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::cell::RefCell;
    use std::format;
    use std::vec::Vec;

    const HV_PRESENT: CpuidRegisters = CpuidRegisters::new(0, 0, HYPERVISOR_PRESENT_ECX, 0);

    /// A CPU whose CPUID answers from `leaves` (anything else: zeros, as
    /// real CPUs answer some out-of-range leaves), recording what was asked.
    fn cpu(leaves: &[(u32, CpuidRegisters)]) -> (Detection, Vec<u32>) {
        let asked = RefCell::new(Vec::new());
        let detection = Detection::probe(|leaf| {
            asked.borrow_mut().push(leaf);
            leaves
                .iter()
                .find(|(l, _)| *l == leaf)
                .map(|(_, r)| *r)
                .unwrap_or_default()
        });
        (detection, asked.into_inner())
    }

    /// "Microsoft Hv" as EBX, ECX, EDX (SerenityOS's boot log on Hyper-V,
    /// SerenityOS/serenity#8665: 0x7263694d 0x666f736f 0x76482074).
    fn microsoft(max_leaf: u32) -> CpuidRegisters {
        CpuidRegisters::new(max_leaf, 0x7263_694d, 0x666f_736f, 0x7648_2074)
    }

    /// Hyper-V under WSL2 on Windows build 22610 (Linux's boot log in
    /// microsoft/wslg#716: "privilege flags low 0x2e7f, high 0x3b8030,
    /// hints 0x24c2c, misc 0xe4bed7b6", "Hyper-V Host Build:22610-10.0-0-0.1").
    /// That log does not print the maximum leaf; SerenityOS's Hyper-V log
    /// reports 0x40000006.
    fn wsl2_hyper_v() -> Vec<(u32, CpuidRegisters)> {
        std::vec![
            (1, HV_PRESENT),
            (LEAF_VENDOR_AND_MAX, microsoft(0x4000_0006)),
            (LEAF_INTERFACE, CpuidRegisters::new(0x3123_7648, 0, 0, 0)),
            (LEAF_VERSION, CpuidRegisters::new(22610, 0x000A_0000, 0, 1)),
            (
                LEAF_FEATURES,
                CpuidRegisters::new(0x2e7f, 0x3b_8030, 0, 0xe4be_d7b6)
            ),
            (
                LEAF_RECOMMENDATIONS,
                CpuidRegisters::new(0x2_4c2c, 0xffff_ffff, 0, 0)
            ),
            (LEAF_LIMITS, CpuidRegisters::new(240, 64, 0, 0)),
        ]
    }

    #[test]
    fn the_signatures_are_the_tlfs_ones() {
        assert_eq!(INTERFACE_HV1, 0x3123_7648);
        let (detection, _) = cpu(&wsl2_hyper_v());
        assert_eq!(detection.hyper_v().unwrap().vendor, VENDOR_MICROSOFT_HV);
    }

    #[test]
    fn a_real_hyper_v_partition_serves_vmbus() {
        let (detection, asked) = cpu(&wsl2_hyper_v());
        let hv = detection.hyper_v().expect("Hyper-V");
        assert_eq!(
            format!("{detection}"),
            "Hyper-V 10.0 build 22610: synic, hypercalls, reference TSC page, post messages, signal events"
        );
        assert!(detection.serves_vmbus());
        assert_eq!(
            hv.version,
            HvVersion {
                build: 22610,
                major: 10,
                minor: 0,
                service_pack: 0,
                service_branch: 0,
                service_number: 1
            }
        );
        for flag in [
            PartitionPrivileges::ACCESS_VP_RUNTIME_MSR,
            PartitionPrivileges::ACCESS_PARTITION_REFERENCE_COUNTER,
            PartitionPrivileges::ACCESS_SYNTHETIC_TIMER_MSRS,
            PartitionPrivileges::ACCESS_APIC_MSRS,
            PartitionPrivileges::ACCESS_VP_INDEX,
            PartitionPrivileges::ACCESS_FREQUENCY_MSRS,
            PartitionPrivileges::ACCESS_REENLIGHTENMENT_CONTROLS,
        ] {
            assert!(hv.has(flag), "{flag:?}");
        }
        for flag in [
            PartitionPrivileges::ACCESS_RESET_MSR,
            PartitionPrivileges::CREATE_PARTITIONS,
            PartitionPrivileges::CPU_MANAGEMENT,
        ] {
            assert!(!hv.has(flag), "{flag:?}");
        }
        assert!(hv.recommendations.contains(
            Recommendations::HYPERCALL_FOR_REMOTE_TLB_FLUSH
                | Recommendations::MSRS_FOR_APIC_ACCESS
                | Recommendations::RELAXED_TIMING
                | Recommendations::EX_PROCESSOR_MASKS
        ));
        assert!(!hv
            .recommendations
            .contains(Recommendations::DEPRECATE_AUTO_EOI));
        // Unknown bits (17 here) are kept, not dropped.
        assert_eq!(hv.recommendations.bits(), 0x2_4c2c);
        assert_eq!(hv.limits.max_virtual_processors, 240);
        assert_eq!(hv.hardware_features, Some(0));
        assert_eq!(
            format!("{}", hv.details()),
            "max leaf 0x40000006, privileges 0x3b803000002e7f, misc features 0xe4bed7b6, \
             recommendations 0x24c2c, spinlock retries 0xffffffff, max VPs 240, hardware features 0x0"
        );
        assert!(asked
            .iter()
            .all(|leaf| *leaf == 1 || (0x4000_0000..=0x4000_0006).contains(leaf)));
    }

    #[test]
    fn a_partition_without_the_vmbus_privileges_says_what_it_lacks() {
        let mut leaves = wsl2_hyper_v();
        // Synic and SignalEvents withdrawn.
        leaves[4].1 = CpuidRegisters::new(0x2e7f & !(1 << 2), 0x3b_8030 & !(1 << 5), 0, 0);
        let (detection, _) = cpu(&leaves);
        assert!(!detection.serves_vmbus());
        assert_eq!(
            detection.hyper_v().unwrap().missing_for_vmbus(),
            PartitionPrivileges::ACCESS_SYNIC_MSRS | PartitionPrivileges::SIGNAL_EVENTS
        );
        assert_eq!(
            format!("{detection}"),
            "Hyper-V 10.0 build 22610: hypercalls, reference TSC page, post messages; lacks synic, signal events"
        );
    }

    #[test]
    fn qemu_tcg_is_a_hypervisor_but_not_hyper_v() {
        // QEMU's TCG accelerator: "TCGTCGTCGTCG", leaves up to 0x40000001.
        let tcg = *b"TCGTCGTCGTCG";
        let word = |i: usize| u32::from_le_bytes(tcg[i..i + 4].try_into().unwrap());
        let (detection, asked) = cpu(&[
            (1, HV_PRESENT),
            (
                LEAF_VENDOR_AND_MAX,
                CpuidRegisters::new(0x4000_0001, word(0), word(4), word(8)),
            ),
        ]);
        assert_eq!(
            format!("{detection}"),
            "\"TCGTCGTCGTCG\" (max leaf 0x40000001), not Hyper-V"
        );
        assert!(!detection.serves_vmbus());
        assert_eq!(asked, [1, LEAF_VENDOR_AND_MAX, LEAF_INTERFACE]);
    }

    #[test]
    fn kvm_is_not_hyper_v() {
        // KVM: "KVMKVMKVM\0\0\0", leaf 0x40000001 holds KVM's feature bits.
        let (detection, _) = cpu(&[
            (1, HV_PRESENT),
            (
                LEAF_VENDOR_AND_MAX,
                CpuidRegisters::new(0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            ),
            (LEAF_INTERFACE, CpuidRegisters::new(0x0100_7afb, 0, 0, 0)),
        ]);
        assert_eq!(
            format!("{detection}"),
            "\"KVMKVMKVM\" (max leaf 0x40000001), not Hyper-V"
        );
    }

    #[test]
    fn no_hypervisor_bit_means_no_hypervisor_leaf_is_asked() {
        let (detection, asked) = cpu(&[(LEAF_VENDOR_AND_MAX, microsoft(0x4000_0006))]);
        assert_eq!(detection, Detection::NoHypervisor);
        assert_eq!(format!("{detection}"), "none reported by CPUID");
        assert_eq!(asked, [1]);
    }

    #[test]
    fn hostile_answers_are_contained() {
        // "Microsoft Hv" and Hv#1 but too few leaves: not usable as Hyper-V.
        let (detection, asked) = cpu(&[
            (1, HV_PRESENT),
            (LEAF_VENDOR_AND_MAX, microsoft(0x4000_0001)),
            (LEAF_INTERFACE, CpuidRegisters::new(INTERFACE_HV1, 0, 0, 0)),
        ]);
        assert_eq!(
            format!("{detection}"),
            "\"Microsoft Hv\" (max leaf 0x40000001, interface \"Hv#1\"), not Hyper-V"
        );
        assert_eq!(asked, [1, LEAF_VENDOR_AND_MAX, LEAF_INTERFACE]);
        // A wrong interface signature with a Microsoft vendor.
        let (detection, _) = cpu(&[
            (1, HV_PRESENT),
            (LEAF_VENDOR_AND_MAX, microsoft(0x4000_0006)),
            (
                LEAF_INTERFACE,
                CpuidRegisters::new(u32::from_le_bytes(*b"Hv#\x07"), 0, 0, 0),
            ),
        ]);
        assert_eq!(
            format!("{detection}"),
            "\"Microsoft Hv\" (max leaf 0x40000006, interface \"Hv#?\"), not Hyper-V"
        );
        // A maximum leaf of 0 (below the range): nothing more is asked.
        let (detection, asked) = cpu(&[
            (1, HV_PRESENT),
            (LEAF_VENDOR_AND_MAX, microsoft(0)),
            (LEAF_INTERFACE, CpuidRegisters::new(INTERFACE_HV1, 0, 0, 0)),
        ]);
        assert!(matches!(
            detection,
            Detection::Other {
                interface: None,
                ..
            }
        ));
        assert_eq!(asked, [1, LEAF_VENDOR_AND_MAX]);
        // A huge maximum leaf: only the leaves this parser knows are asked.
        let mut leaves = wsl2_hyper_v();
        leaves[1].1 = microsoft(u32::MAX);
        let (detection, asked) = cpu(&leaves);
        assert!(detection.serves_vmbus());
        assert!(asked.iter().all(|leaf| *leaf <= LEAF_HARDWARE_FEATURES));
        // Control bytes in the vendor string are not printed as such.
        let (detection, _) = cpu(&[
            (1, HV_PRESENT),
            (
                LEAF_VENDOR_AND_MAX,
                CpuidRegisters::new(0x4000_0000, 0x0a1b_4142, 0, 0x41),
            ),
        ]);
        assert_eq!(
            format!("{detection}"),
            "\"BA??????A\" (max leaf 0x40000000), not Hyper-V"
        );
    }
}
