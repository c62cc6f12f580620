//! The compiled system description.
//!
//! `tools/sysdesc` parses and validates `system.toml` and lowers it into a
//! [`SystemLayout`]: every name resolved to an index, every channel end
//! given its local id, every mapping given its virtual address. The seL4
//! root task and the hosted launcher consume this form (postcard-encoded)
//! and trust it: validation happened in the tool, with file positions.
//! It needs `alloc` (the root task has a small heap), not `std`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub const LAYOUT_VERSION: u16 = 4;
pub const MAX_COMPONENTS: usize = 32;
// 96: the console devices' drivers (video, keyboard, mouse) bring the VMBus
// system past 64 (each driver's rings are 4 regions).
pub const MAX_REGIONS: usize = 96;
/// Per component (seL4: `sel4_runtime::abi::MAX_MAPS`, the PD info page's
/// table). A VMBus driver's rings alone are 4 maps, and the bus manager and
/// the simulated host hold every driver's.
pub const MAX_MAPS_PER_COMPONENT: usize = 64;
pub const MAX_CHANNELS_PER_COMPONENT: usize = 62;
/// The simulated host in QEMU holds the most: the synic vector, the PIT,
/// the NE2000 and the i8042's keyboard and mouse lines.
pub const MAX_IRQS_PER_COMPONENT: usize = 8;
/// Equal to `sel4_runtime::abi::MAX_IOPORTS`. The simulated host in QEMU
/// holds the PIT, the IDE disk (2), the NE2000, PCI configuration, the
/// Bochs VBE registers and the i8042.
pub const MAX_IOPORTS_PER_COMPONENT: usize = 8;
pub const MAX_NAME: usize = 32;
pub const PAGE_SIZE: u64 = 4096;

pub type Name = String;

/// Faults within [`PLATFORM_FAULT_WINDOW_NS`] after which the platform
/// holds a component it supervises stopped instead of restarting it again.
pub const PLATFORM_FAULTS_TO_HOLD: usize = 3;
pub const PLATFORM_FAULT_WINDOW_NS: u64 = 10_000_000_000;

/// The platform's restart policy for one component: restart, unless this
/// fault (at `now_ns`) is the [`PLATFORM_FAULTS_TO_HOLD`]th within
/// [`PLATFORM_FAULT_WINDOW_NS`]. `recent` holds earlier fault times, oldest
/// first; it is updated.
pub fn platform_should_restart(recent: &mut Vec<u64>, now_ns: u64) -> bool {
    recent.retain(|at| now_ns.saturating_sub(*at) <= PLATFORM_FAULT_WINDOW_NS);
    recent.push(now_ns);
    recent.len() < PLATFORM_FAULTS_TO_HOLD
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemLayout {
    pub version: u16,
    pub components: Vec<ComponentLayout>,
    pub regions: Vec<RegionLayout>,
    /// Which component drives which VMBus device class.
    pub devices: Vec<DeviceLayout>,
    /// What serves the hypervisor interface (`[platform] hypervisor`).
    pub platform: Platform,
}

/// The hypervisor the image is built for (`[platform] hypervisor` in the
/// description).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Platform {
    /// The simulated host (a component with `simulated_host = true`, or
    /// the hosted launcher's host process) serves the hypervisor interface;
    /// any machine will do.
    #[default]
    Simulated,
    /// Microsoft Hyper-V, through the kernel path (the component with
    /// `hypervisor = true`). The seL4 root task powers off on a machine
    /// whose CPUID does not report Hyper-V with the synic and hypercalls.
    HyperV,
}

impl Platform {
    /// The value of `[platform] hypervisor` that selects it.
    pub const fn description_value(self) -> &'static str {
        match self {
            Self::Simulated => "simulated",
            Self::HyperV => "hyper-v",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayout {
    /// The class GUID, in standard (big-endian, RFC 4122) byte order.
    pub class: [u8; 16],
    /// The instance GUID if this driver serves only one instance.
    pub instance: Option<[u8; 16]>,
    /// Index of the driver (VSC) component.
    pub driver: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLayout {
    pub name: Name,
    /// Bytes, a multiple of [`PAGE_SIZE`].
    pub size: u64,
    /// The host (Hyper-V, or the simulated host) may read and write it;
    /// its frames' physical addresses are handed to the host as GPAs.
    pub host_visible: bool,
    /// Device memory: the region is these physical addresses (page
    /// aligned), e.g. a PCI device's BAR, not memory the platform
    /// allocates. Never host visible. The seL4 root task maps it from the
    /// device untyped that covers it; the hosted platform has none.
    pub physical: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentLayout {
    pub name: Name,
    /// The Cargo package (and binary) that implements it.
    pub package: String,
    /// seL4 priority, 1..=254; protected calls only go to higher ones.
    pub priority: u8,
    /// Index of the component that receives this one's faults.
    pub supervisor: Option<u8>,
    /// The platform itself (the seL4 root task's monitor, the hosted
    /// launcher) restarts this component when it faults, holding it stopped
    /// after [`PLATFORM_FAULTS_TO_HOLD`] faults within
    /// [`PLATFORM_FAULT_WINDOW_NS`] (`supervisor = "@platform"`). Never
    /// together with `supervisor`.
    pub platform_supervised: bool,
    /// Indices of the components this one supervises, in `Child` order.
    pub children: Vec<u8>,
    pub stack_pages: u16,
    /// May end the whole system (QEMU exit / hosted launcher exit).
    pub may_power_off: bool,
    pub maps: Vec<MapLayout>,
    /// Indexed by nothing: each end carries its local id.
    pub channels: Vec<ChannelEnd>,
    pub irqs: Vec<IrqLayout>,
    pub ioports: Vec<IoPortLayout>,
    /// Local id of the protected-call channel that console output goes
    /// through (the client end named `console`), if any.
    pub console: Option<u8>,
    /// On seL4 the root task gives it the kernel's hypervisor capability
    /// (synthetic MSRs, hypercalls; kernel patch 0008). At most one
    /// component; the kernel-path server, not synic.
    pub hypervisor: bool,
    /// This component is the simulated Hyper-V host (seL4 image only): it
    /// maps every host-visible region. The hosted launcher does not run it
    /// as a component; the host process on the hypervisor transport stands
    /// in its place.
    pub simulated_host: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLayout {
    /// Local name (the `RegionName` index is this map's position).
    pub name: Name,
    pub region: u8,
    pub writable: bool,
    /// Mapped twice back to back at `vaddr` and `vaddr + size`.
    pub double: bool,
    /// Virtual address on seL4 (page aligned). The hosted runtime ignores it.
    pub vaddr: u64,
    /// Nothing is mapped: the component is told only the (host-visible)
    /// region's guest physical address and size, to describe it to the
    /// host (the bus manager's view of a driver's rings). `writable` and
    /// `double` are false and `vaddr` is 0.
    pub address_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelKind {
    /// Either end may notify the other.
    Notify,
    /// This end calls the other (which has a higher priority).
    CallClient,
    /// This end serves calls from the other.
    CallServer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEnd {
    /// Local channel id (the `Channel` value in code).
    pub id: u8,
    pub name: Name,
    pub kind: ChannelKind,
    /// Component index of the other end.
    pub peer: u8,
    /// The other end's local id.
    pub peer_id: u8,
}

/// The local-APIC vector of the seL4 (pc99) IRQ number 0 that the root
/// task passes when it issues an IRQ handler: the kernel adds its first
/// user IRQ (16) and `IRQ_INT_OFFSET` (0x20). IOAPIC line N is issued as
/// IRQ number N, so it arrives on vector `IRQ_VECTOR_BASE + N`.
pub const IRQ_VECTOR_BASE: u8 = 0x30;
/// The lowest vector an `[[irq]] vector` may take: the first above every
/// IOAPIC line's (`IRQ_VECTOR_BASE` + 24 pins).
pub const MIN_IRQ_VECTOR: u8 = IRQ_VECTOR_BASE + 24;
/// The highest: seL4 pc99's last user vector (`int_irq_user_max`, 155);
/// 156 and up are the kernel's (IOMMU, timer, IPIs).
pub const MAX_IRQ_VECTOR: u8 = 155;

/// Where an IRQ comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IrqSource {
    /// An ISA IRQ line (IOAPIC pin): a device raises it.
    Line(u8),
    /// A local-APIC vector with no device behind it
    /// ([`MIN_IRQ_VECTOR`]..=[`MAX_IRQ_VECTOR`]): the seL4 root task issues
    /// it as an MSI-kind IRQ handler. The hypervisor injects it (the synic
    /// interrupt on Hyper-V), or the holder raises it through the kernel (a
    /// self-IPI, the simulated host).
    Vector(u8),
}

/// The notification end an IRQ signals when it is not its holder's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqTarget {
    /// Component index.
    pub component: u8,
    /// That component's local id of the notify-channel end it arrives on.
    pub end: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqLayout {
    pub name: Name,
    /// The holder's local id of the IRQ: its handler (ack, raise) and, when
    /// `notify` is `None`, the channel it is delivered on.
    pub channel: u8,
    pub source: IrqSource,
    /// Delivered to another component's notify-channel end instead of the
    /// holder (`notify = "component.end"`).
    pub notify: Option<IrqTarget>,
}

impl IrqLayout {
    /// The ISA line, if a device raises this IRQ.
    pub fn line(&self) -> Option<u8> {
        match self.source {
            IrqSource::Line(line) => Some(line),
            IrqSource::Vector(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoPortLayout {
    pub name: Name,
    pub base: u16,
    pub size: u16,
}

impl SystemLayout {
    pub fn component_index(&self, name: &str) -> Option<usize> {
        self.components.iter().position(|c| c.name == name)
    }
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<SystemLayout, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

impl ComponentLayout {
    pub fn channel(&self, id: u8) -> Option<&ChannelEnd> {
        self.channels.iter().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_restarts_until_three_faults_within_ten_seconds() {
        let mut recent = Vec::new();
        assert!(platform_should_restart(&mut recent, 0));
        assert!(platform_should_restart(&mut recent, 1_000_000_000));
        assert!(!platform_should_restart(&mut recent, 2_000_000_000));
        let mut spread = Vec::new();
        for second in [0u64, 6, 12, 18, 24] {
            assert!(platform_should_restart(&mut spread, second * 1_000_000_000));
        }
    }

    #[test]
    fn round_trips_through_postcard() {
        let mut layout = SystemLayout {
            version: LAYOUT_VERSION,
            components: Vec::new(),
            regions: Vec::new(),
            devices: Vec::new(),
            platform: Platform::HyperV,
        };
        layout.regions.push(RegionLayout {
            name: "queue".into(),
            size: 8192,
            host_visible: false,
            physical: None,
        });
        layout.regions.push(RegionLayout {
            name: "vga_lfb".into(),
            size: 0x30_0000,
            host_visible: false,
            physical: Some(0xfd00_0000),
        });
        let bytes = layout.encode().unwrap();
        assert_eq!(SystemLayout::decode(&bytes).unwrap(), layout);
    }
}
