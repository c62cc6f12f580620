//! What every component holds, in words: `cargo xtask check` prints it.

use crate::Description;
use std::fmt::Write as _;
use system_layout::{ChannelKind, Platform};

/// The platform the image is for, then for every component: its regions with rights, its channel ends with
/// direction and protocol, IRQs, IO ports, and whether it can reach the
/// hypervisor.
pub fn summary(description: &Description) -> String {
    let layout = &description.layout;
    let contracts = &description.contracts;
    let name_of = |index: u8| layout.components[index as usize].name.as_str();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "platform: hypervisor = \"{}\" ({})",
        layout.platform.description_value(),
        match layout.platform {
            Platform::Simulated => "the simulated host serves the hypervisor interface",
            Platform::HyperV => "for Hyper-V: the root task refuses any other machine",
        }
    );
    for (index, component) in layout.components.iter().enumerate() {
        let mut traits = vec![
            format!("package {}", component.package),
            format!("priority {}", component.priority),
        ];
        if let Some(supervisor) = component.supervisor {
            traits.push(format!("supervised by {}", name_of(supervisor)));
        }
        if component.platform_supervised {
            traits.push("restarted by the platform".to_string());
        }
        if !component.children.is_empty() {
            let children: Vec<&str> = component.children.iter().map(|c| name_of(*c)).collect();
            traits.push(format!("supervises {}", children.join(", ")));
        }
        if component.may_power_off {
            traits.push("may power off".into());
        }
        if let Some(driver) = contracts.drivers.iter().find(|d| d.component == index) {
            traits.push(format!(
                "VMBus driver (ring out {} + in {} bytes{})",
                driver.ring_out,
                driver.ring_in,
                driver
                    .buffers
                    .iter()
                    .map(|b| format!(", buffer of {b}"))
                    .collect::<String>()
            ));
        }
        let _ = writeln!(out, "{} ({})", component.name, traits.join(", "));
        for map in &component.maps {
            let region = &layout.regions[map.region as usize];
            let _ = writeln!(
                out,
                "  region   {:<16} {:<7} {:>8} bytes{}{}{}{}",
                map.name,
                if map.address_only {
                    "address"
                } else if map.writable {
                    "rw"
                } else {
                    "r"
                },
                region.size,
                if map.name != region.name {
                    format!(", region `{}`", region.name)
                } else {
                    String::new()
                },
                if map.double { ", double mapped" } else { "" },
                if region.host_visible {
                    ", host visible"
                } else {
                    ""
                },
                match region.physical {
                    Some(physical) => format!(", device memory at {physical:#x}"),
                    None => String::new(),
                },
            );
        }
        for end in &component.channels {
            let peer = name_of(end.peer);
            let protocol = contracts.protocol_of(index, end.id);
            let what = match end.kind {
                ChannelKind::Notify => format!("notify   <-> {peer}"),
                ChannelKind::CallClient => format!("calls     -> {peer}"),
                ChannelKind::CallServer => format!("serves   <-  {peer}"),
            };
            let protocol = match (end.kind, protocol) {
                (ChannelKind::Notify, _) => String::new(),
                (_, None) => ", raw bytes".into(),
                (ChannelKind::CallServer, Some(p)) => {
                    let denied: Vec<&str> = p
                        .allow
                        .iter()
                        .filter(|(_, callers)| !callers.contains(&(end.peer as usize)))
                        .map(|(op, _)| op.as_str())
                        .collect();
                    if denied.is_empty() {
                        format!(", protocol {}", p.name)
                    } else {
                        format!(", protocol {} except {}", p.name, denied.join(", "))
                    }
                }
                (_, Some(p)) => format!(", protocol {}", p.name),
            };
            let _ = writeln!(out, "  channel  {:<16} {what}{protocol}", end.name);
        }
        for irq in &component.irqs {
            let source = match irq.source {
                system_layout::IrqSource::Line(line) => format!("line {line}"),
                system_layout::IrqSource::Vector(vector) => {
                    format!("vector {vector:#x} (no device; ack and raise)")
                }
            };
            let delivered = irq
                .notify
                .and_then(|target| {
                    let peer = layout.components.get(target.component as usize)?;
                    let end = peer.channel(target.end)?;
                    Some(format!(", signals {}.{}", peer.name, end.name))
                })
                .unwrap_or_default();
            let _ = writeln!(out, "  irq      {:<16} {source}{delivered}", irq.name);
        }
        for port in &component.ioports {
            let _ = writeln!(
                out,
                "  ioports  {:<16} {:#x}..{:#x}",
                port.name,
                port.base,
                port.base as u32 + port.size as u32
            );
        }
        let reach = if component.hypervisor {
            "yes (the kernel's hypervisor capability: synthetic MSRs, hypercalls)"
        } else if component.simulated_host {
            "it is the simulated host (maps every host-visible region)"
        } else {
            "no"
        };
        let _ = writeln!(out, "  hypervisor: {reach}");
    }
    out
}
