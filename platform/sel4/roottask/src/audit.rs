//! The capability audit: what each protection domain may hold, computed
//! from the description alone, and the comparison with what the kernel
//! says it holds (`audit_probe.rs` asks the kernel; this part is plain data
//! so the host tests exercise it).
//!
//! The expected sets are derived here from the description and the ELF
//! segments, not from the code in `system.rs` that grants them, so a
//! mistake in granting is not repeated in the expectation.

use crate::elf::Segment;
use alloc::vec::Vec;
use sel4_bindings::Rights;
use sel4_runtime::abi::*;
use system_layout::{ChannelKind, ComponentLayout, SystemLayout, PAGE_SIZE};

/// What a capability slot holds, as far as the audit can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapKind {
    Endpoint,
    /// An endpoint cap that does not lead where the description says (for
    /// a send cap: the endpoint and badge; for the PD's own: receiving).
    EndpointNotAsGranted,
    Notification,
    /// A notification cap that does not signal the channel's peer with the
    /// channel's badge (another object, another badge, or no write right).
    NotificationNotAsGranted,
    IrqHandler,
    /// A vector IRQ's handler that, raised, does not signal the end the
    /// description names with that end's badge.
    IrqHandlerNotAsGranted,
    /// The kernel's hypervisor capability (kernel patch 0008).
    Hypervisor,
    /// An IO-port cap for exactly ports `first..=last`.
    IoPort {
        first: u16,
        last: u16,
    },
    /// An IO-port cap whose range is not the one the description grants
    /// in this slot (or any IO-port cap where none is granted).
    IoPortOtherRange,
    /// Any other kernel cap type (frame, CNode, TCB, untyped, ...): never
    /// granted to a PD.
    Other(u64),
}

impl core::fmt::Display for CapKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CapKind::Endpoint => write!(f, "endpoint"),
            CapKind::EndpointNotAsGranted => {
                write!(f, "an endpoint that does not lead where granted")
            }
            CapKind::Notification => write!(f, "notification"),
            CapKind::NotificationNotAsGranted => {
                write!(
                    f,
                    "a notification that does not reach the peer with its badge"
                )
            }
            CapKind::IrqHandler => write!(f, "IRQ handler"),
            CapKind::IrqHandlerNotAsGranted => {
                write!(
                    f,
                    "an IRQ handler that, raised, does not signal its end with its badge"
                )
            }
            CapKind::Hypervisor => write!(f, "the hypervisor capability"),
            CapKind::IoPort { first, last } => write!(f, "IO ports {first:#x}-{last:#x}"),
            CapKind::IoPortOtherRange => write!(f, "IO ports of another range"),
            CapKind::Other(kind) => write!(f, "kernel cap type {kind}"),
        }
    }
}

/// A frame mapped into a PD, as the root task's one mapping function
/// recorded it (the frame's physical address from the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub vaddr: u64,
    pub paddr: u64,
    pub rights: Rights,
}

/// A frame the description implies: where, with which rights, and which
/// frame (`Some(paddr)` a page of a region, `None` a frame private to the PD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedFrame {
    pub vaddr: u64,
    pub rights: Rights,
    pub paddr: Option<u64>,
}

/// One difference between what a PD holds and what it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    ExtraCap {
        slot: u64,
        kind: CapKind,
    },
    MissingCap {
        slot: u64,
        kind: CapKind,
    },
    WrongCap {
        slot: u64,
        found: CapKind,
        expected: CapKind,
    },
    ExtraFrame(Mapping),
    MissingFrame(ExpectedFrame),
    WrongFrame {
        found: Mapping,
        expected: ExpectedFrame,
    },
    /// A frame that should be private to one PD is mapped more than once
    /// (in one PD or two) or is a page of a region.
    PrivateFrameShared {
        paddr: u64,
    },
}

fn rights_name(rights: Rights) -> &'static str {
    match rights {
        Rights::READ => "r",
        Rights::READ_WRITE => "rw",
        Rights::WRITE => "w",
        Rights::ALL => "rwg",
        _ => "other rights",
    }
}

impl core::fmt::Display for Finding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Finding::ExtraCap { slot, kind } => write!(f, "extra cap in slot {slot}: {kind}"),
            Finding::MissingCap { slot, kind } => {
                write!(f, "missing cap in slot {slot}: {kind}")
            }
            Finding::WrongCap {
                slot,
                found,
                expected,
            } => write!(
                f,
                "slot {slot} holds {found}, the description grants {expected}"
            ),
            Finding::ExtraFrame(m) => write!(
                f,
                "extra frame at {:#x} ({}, physical {:#x})",
                m.vaddr,
                rights_name(m.rights),
                m.paddr
            ),
            Finding::MissingFrame(e) => {
                write!(
                    f,
                    "missing frame at {:#x} ({})",
                    e.vaddr,
                    rights_name(e.rights)
                )
            }
            Finding::WrongFrame { found, expected } => {
                write!(
                    f,
                    "frame at {:#x} is physical {:#x} {}, the description implies ",
                    found.vaddr,
                    found.paddr,
                    rights_name(found.rights)
                )?;
                match expected.paddr {
                    Some(paddr) => write!(f, "physical {paddr:#x}")?,
                    None => write!(f, "a private frame")?,
                }
                write!(f, " {}", rights_name(expected.rights))
            }
            Finding::PrivateFrameShared { paddr } => write!(
                f,
                "private frame at physical {paddr:#x} is mapped more than once or lies in a region"
            ),
        }
    }
}

/// The caps a PD's CNode holds by the description, sorted by slot. The
/// IO-port ranges are what the kernel will be asked to confirm exactly.
pub fn expected_caps(component: &ComponentLayout) -> Vec<(u64, CapKind)> {
    let mut caps = Vec::new();
    caps.push((SLOT_ENDPOINT, CapKind::Endpoint));
    caps.push((SLOT_MONITOR, CapKind::Endpoint));
    caps.push((SLOT_FAULT, CapKind::Endpoint));
    if component.hypervisor {
        caps.push((SLOT_HYPERVISOR, CapKind::Hypervisor));
    }
    for channel in &component.channels {
        let slot = SLOT_CHANNEL_BASE + u64::from(channel.id);
        match channel.kind {
            ChannelKind::Notify => caps.push((slot, CapKind::Notification)),
            ChannelKind::CallClient => caps.push((slot, CapKind::Endpoint)),
            // The server receives on its own endpoint (SLOT_ENDPOINT).
            ChannelKind::CallServer => {}
        }
    }
    for irq in &component.irqs {
        caps.push((SLOT_IRQ_BASE + u64::from(irq.channel), CapKind::IrqHandler));
    }
    for (index, range) in component.ioports.iter().enumerate() {
        let last = u32::from(range.base) + u32::from(range.size).max(1) - 1;
        caps.push((
            SLOT_IOPORT_BASE + index as u64,
            CapKind::IoPort {
                first: range.base,
                last: last.min(0xffff) as u16,
            },
        ));
    }
    caps.sort_by_key(|&(slot, _)| slot);
    caps
}

/// Pages of the region `region`: its size rounded up, at least one.
pub fn region_pages(layout: &SystemLayout, region: usize) -> u64 {
    layout
        .regions
        .get(region)
        .map_or(0, |r| r.size.div_ceil(PAGE_SIZE).max(1))
}

/// The frames a PD's VSpace holds by the description: its image pages
/// (writable where a writable segment lies), stack, IPC buffer and info
/// page (private frames), and every page of every region it maps (twice
/// for a double map), at the region's physical pages.
/// `region_paddrs[r]` is region `r`'s first physical address (its frames
/// are contiguous) as allocated; a device region's is the description's
/// `physical` instead. Sorted by address; a page two segments share is
/// listed once.
pub fn expected_frames(
    layout: &SystemLayout,
    component: &ComponentLayout,
    segments: &[Segment],
    region_paddrs: &[u64],
) -> Vec<ExpectedFrame> {
    let mut frames: Vec<ExpectedFrame> = Vec::new();
    let private = |vaddr, rights| ExpectedFrame {
        vaddr,
        rights,
        paddr: None,
    };
    for segment in segments.iter().filter(|s| s.mem_size > 0) {
        let first = segment.vaddr / PAGE_SIZE * PAGE_SIZE;
        let end = segment.vaddr + segment.mem_size;
        let mut vaddr = first;
        while vaddr < end {
            let rights = if segment.writable {
                Rights::READ_WRITE
            } else {
                Rights::READ
            };
            match frames.iter_mut().find(|f| f.vaddr == vaddr) {
                Some(frame) if segment.writable => frame.rights = Rights::READ_WRITE,
                Some(_) => {}
                None => frames.push(private(vaddr, rights)),
            }
            vaddr += PAGE_SIZE;
        }
    }
    let stack_pages = u64::from(component.stack_pages.max(1));
    for page in 1..=stack_pages {
        frames.push(private(
            STACK_TOP_VADDR - page * PAGE_SIZE,
            Rights::READ_WRITE,
        ));
    }
    frames.push(private(IPC_BUFFER_VADDR, Rights::READ_WRITE));
    frames.push(private(PD_INFO_VADDR, Rights::READ));
    for map in &component.maps {
        let region = usize::from(map.region);
        let pages = region_pages(layout, region);
        // Device memory must be where the description says, whatever
        // frames the build found for it.
        let described = layout.regions.get(region).and_then(|r| r.physical);
        let Some(base) = described.or_else(|| region_paddrs.get(region).copied()) else {
            continue; // the build refuses such a map before the audit
        };
        let rights = if map.writable {
            Rights::READ_WRITE
        } else {
            Rights::READ
        };
        // An address-only grant: the PD holds no frame of the region.
        let copies = match (map.address_only, map.double) {
            (true, _) => 0,
            (false, true) => 2,
            (false, false) => 1,
        };
        for copy in 0..copies {
            for page in 0..pages {
                frames.push(ExpectedFrame {
                    vaddr: map.vaddr + (copy * pages + page) * PAGE_SIZE,
                    rights,
                    paddr: Some(base + page * PAGE_SIZE),
                });
            }
        }
    }
    frames.sort_by_key(|f| f.vaddr);
    frames
}

/// Compare a PD's caps as found (slot, kind; empty slots left out) with
/// the expected ones. Both sorted by slot.
pub fn compare_caps(expected: &[(u64, CapKind)], found: &[(u64, CapKind)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for &(slot, kind) in found {
        match expected.iter().find(|(s, _)| *s == slot) {
            None => findings.push(Finding::ExtraCap { slot, kind }),
            Some(&(_, wanted)) if wanted != kind => findings.push(Finding::WrongCap {
                slot,
                found: kind,
                expected: wanted,
            }),
            Some(_) => {}
        }
    }
    for &(slot, kind) in expected {
        if !found.iter().any(|(s, _)| *s == slot) {
            findings.push(Finding::MissingCap { slot, kind });
        }
    }
    findings
}

/// Compare a PD's recorded mappings with the expected frames. A private
/// frame matches any physical address here; [`private_frames_unshared`]
/// checks those across the whole system.
pub fn compare_frames(expected: &[ExpectedFrame], found: &[Mapping]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for mapping in found {
        match expected.iter().find(|e| e.vaddr == mapping.vaddr) {
            None => findings.push(Finding::ExtraFrame(*mapping)),
            Some(wanted) => {
                let same_frame = wanted.paddr.is_none_or(|paddr| paddr == mapping.paddr);
                if !same_frame || wanted.rights != mapping.rights {
                    findings.push(Finding::WrongFrame {
                        found: *mapping,
                        expected: *wanted,
                    });
                }
            }
        }
        let mapped_here = found.iter().filter(|m| m.vaddr == mapping.vaddr).count();
        if mapped_here > 1 {
            findings.push(Finding::ExtraFrame(*mapping));
        }
    }
    for wanted in expected {
        if !found.iter().any(|m| m.vaddr == wanted.vaddr) {
            findings.push(Finding::MissingFrame(*wanted));
        }
    }
    findings
}

/// Private frames (physical addresses of every PD's mappings the
/// description calls private) must each be mapped once in the whole
/// system and lie outside every region (`regions`: first physical address
/// and pages).
pub fn private_frames_unshared(mut private: Vec<u64>, regions: &[(u64, u64)]) -> Vec<Finding> {
    private.sort_unstable();
    let mut findings = Vec::new();
    for (index, &paddr) in private.iter().enumerate() {
        let repeated = index > 0 && private[index - 1] == paddr;
        let in_region = regions
            .iter()
            .any(|&(base, pages)| paddr >= base && paddr < base + pages * PAGE_SIZE);
        let reported = findings.contains(&Finding::PrivateFrameShared { paddr });
        if (repeated || in_region) && !reported {
            findings.push(Finding::PrivateFrameShared { paddr });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use system_layout::{ChannelEnd, IoPortLayout, IrqLayout, IrqSource, MapLayout, RegionLayout};

    fn component() -> ComponentLayout {
        ComponentLayout {
            name: "serial".into(),
            package: "serial".into(),
            priority: 100,
            supervisor: None,
            platform_supervised: false,
            children: Vec::new(),
            stack_pages: 2,
            may_power_off: false,
            maps: alloc::vec![
                MapLayout {
                    name: "ring".into(),
                    region: 0,
                    writable: true,
                    double: true,
                    vaddr: 0x10_0000_0000,
                    address_only: false,
                },
                // Known by address only: no frame of it may be held.
                MapLayout {
                    name: "ring_address".into(),
                    region: 0,
                    writable: false,
                    double: false,
                    vaddr: 0,
                    address_only: true,
                },
            ],
            channels: alloc::vec![
                ChannelEnd {
                    id: 0,
                    name: "tx".into(),
                    kind: ChannelKind::Notify,
                    peer: 1,
                    peer_id: 3,
                },
                ChannelEnd {
                    id: 1,
                    name: "call".into(),
                    kind: ChannelKind::CallClient,
                    peer: 1,
                    peer_id: 0,
                },
                ChannelEnd {
                    id: 2,
                    name: "served".into(),
                    kind: ChannelKind::CallServer,
                    peer: 1,
                    peer_id: 1,
                },
            ],
            irqs: alloc::vec![IrqLayout {
                name: "uart".into(),
                channel: 5,
                source: IrqSource::Line(4),
                notify: None,
            }],
            ioports: alloc::vec![IoPortLayout {
                name: "com1".into(),
                base: 0x3f8,
                size: 8,
            }],
            console: None,
            hypervisor: false,
            simulated_host: false,
        }
    }

    fn layout() -> SystemLayout {
        SystemLayout {
            regions: alloc::vec![RegionLayout {
                name: "ring".into(),
                size: 2 * PAGE_SIZE,
                host_visible: false,
                physical: None,
            }],
            version: system_layout::LAYOUT_VERSION,
            components: Vec::new(),
            devices: Vec::new(),
            platform: Default::default(),
        }
    }

    #[test]
    fn expected_caps_follow_the_description() {
        assert_eq!(
            expected_caps(&component()),
            [
                (SLOT_ENDPOINT, CapKind::Endpoint),
                (SLOT_MONITOR, CapKind::Endpoint),
                (SLOT_FAULT, CapKind::Endpoint),
                (SLOT_CHANNEL_BASE, CapKind::Notification),
                (SLOT_CHANNEL_BASE + 1, CapKind::Endpoint),
                (SLOT_IRQ_BASE + 5, CapKind::IrqHandler),
                (
                    SLOT_IOPORT_BASE,
                    CapKind::IoPort {
                        first: 0x3f8,
                        last: 0x3ff
                    }
                ),
            ]
        );
        // Only a PD granted `hypervisor = true` holds the hypervisor cap.
        let mut granted = component();
        granted.hypervisor = true;
        assert_eq!(
            expected_caps(&granted)[3],
            (SLOT_HYPERVISOR, CapKind::Hypervisor)
        );
        assert!(!expected_caps(&component())
            .iter()
            .any(|&(_, kind)| kind == CapKind::Hypervisor));
    }

    #[test]
    fn one_extra_missing_or_wrong_cap_is_found() {
        let expected = expected_caps(&component());
        assert!(compare_caps(&expected, &expected).is_empty());

        let mut extra = expected.clone();
        extra.push((200, CapKind::Other(1)));
        assert_eq!(
            compare_caps(&expected, &extra),
            [Finding::ExtraCap {
                slot: 200,
                kind: CapKind::Other(1)
            }]
        );

        let missing = &expected[1..];
        assert_eq!(
            compare_caps(&expected, missing),
            [Finding::MissingCap {
                slot: SLOT_ENDPOINT,
                kind: CapKind::Endpoint
            }]
        );

        let mut wider = expected.clone();
        wider.last_mut().unwrap().1 = CapKind::IoPortOtherRange;
        assert!(matches!(
            compare_caps(&expected, &wider)[..],
            [Finding::WrongCap {
                found: CapKind::IoPortOtherRange,
                ..
            }]
        ));
    }

    fn segments() -> [Segment; 2] {
        [
            Segment {
                vaddr: 0x40_0000,
                mem_size: 0x1800,
                file_offset: 0,
                file_size: 0x1800,
                writable: false,
            },
            // Shares the page at 0x401000 with the text.
            Segment {
                vaddr: 0x40_1800,
                mem_size: 0x1000,
                file_offset: 0x1800,
                file_size: 0x10,
                writable: true,
            },
        ]
    }

    #[test]
    fn expected_frames_follow_the_description_and_the_image() {
        let frames = expected_frames(&layout(), &component(), &segments(), &[0x80_0000]);
        let summary: Vec<(u64, Rights, Option<u64>)> = frames
            .iter()
            .map(|f| (f.vaddr, f.rights, f.paddr))
            .collect();
        let region = 0x10_0000_0000;
        assert_eq!(
            summary,
            [
                (0x40_0000, Rights::READ, None),
                (0x40_1000, Rights::READ_WRITE, None),
                (0x40_2000, Rights::READ_WRITE, None),
                (PD_INFO_VADDR, Rights::READ, None),
                (IPC_BUFFER_VADDR, Rights::READ_WRITE, None),
                (STACK_TOP_VADDR - 2 * PAGE_SIZE, Rights::READ_WRITE, None),
                (STACK_TOP_VADDR - PAGE_SIZE, Rights::READ_WRITE, None),
                (region, Rights::READ_WRITE, Some(0x80_0000)),
                (region + PAGE_SIZE, Rights::READ_WRITE, Some(0x80_1000)),
                (region + 2 * PAGE_SIZE, Rights::READ_WRITE, Some(0x80_0000)),
                (region + 3 * PAGE_SIZE, Rights::READ_WRITE, Some(0x80_1000)),
            ]
        );
    }

    fn as_mapped(frames: &[ExpectedFrame]) -> Vec<Mapping> {
        frames
            .iter()
            .enumerate()
            .map(|(index, f)| Mapping {
                vaddr: f.vaddr,
                paddr: f.paddr.unwrap_or(0x100_0000 + index as u64 * PAGE_SIZE),
                rights: f.rights,
            })
            .collect()
    }

    #[test]
    fn one_extra_missing_or_wrong_frame_is_found() {
        let expected = expected_frames(&layout(), &component(), &segments(), &[0x80_0000]);
        let mapped = as_mapped(&expected);
        assert!(compare_frames(&expected, &mapped).is_empty());

        let mut extra = mapped.clone();
        let stray = Mapping {
            vaddr: 0x3000_0000,
            paddr: 0x80_0000,
            rights: Rights::READ_WRITE,
        };
        extra.push(stray);
        assert_eq!(
            compare_frames(&expected, &extra),
            [Finding::ExtraFrame(stray)]
        );

        assert_eq!(
            compare_frames(&expected, &mapped[1..]),
            [Finding::MissingFrame(expected[0])]
        );

        let mut writable_text = mapped.clone();
        writable_text[0].rights = Rights::READ_WRITE;
        assert!(matches!(
            compare_frames(&expected, &writable_text)[..],
            [Finding::WrongFrame { .. }]
        ));

        let mut other_region_page = mapped.clone();
        other_region_page.last_mut().unwrap().paddr = 0x80_0000;
        assert!(matches!(
            compare_frames(&expected, &other_region_page)[..],
            [Finding::WrongFrame { .. }]
        ));
    }

    #[test]
    fn device_memory_must_be_at_the_described_physical_address() {
        let mut layout = layout();
        layout.regions[0].physical = Some(0xfd00_0000);
        let mut component = component();
        component.maps[0].double = false;
        // The build's frames (0x80_0000) do not count: the description does.
        let expected = expected_frames(&layout, &component, &segments(), &[0x80_0000]);
        let region = 0x10_0000_0000;
        let device: Vec<_> = expected.iter().filter(|f| f.vaddr >= region).collect();
        assert_eq!(device.len(), 2);
        assert_eq!(device[0].paddr, Some(0xfd00_0000));
        assert_eq!(device[1].paddr, Some(0xfd00_1000));
        let mut mapped = as_mapped(&expected);
        assert!(compare_frames(&expected, &mapped).is_empty());
        // RAM in place of the device's page.
        mapped.last_mut().unwrap().paddr = 0x80_1000;
        assert!(matches!(
            compare_frames(&expected, &mapped)[..],
            [Finding::WrongFrame { .. }]
        ));
    }

    #[test]
    fn a_private_frame_mapped_twice_or_inside_a_region_is_found() {
        assert!(private_frames_unshared(alloc::vec![0x1000, 0x2000], &[(0x8000, 2)]).is_empty());
        assert_eq!(
            private_frames_unshared(alloc::vec![0x2000, 0x1000, 0x2000], &[]),
            [Finding::PrivateFrameShared { paddr: 0x2000 }]
        );
        assert_eq!(
            private_frames_unshared(alloc::vec![0x9000], &[(0x8000, 2)]),
            [Finding::PrivateFrameShared { paddr: 0x9000 }]
        );
    }
}
