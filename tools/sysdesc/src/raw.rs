//! The description as written, every value with its span. Unknown keys,
//! wrong types and missing keys are rejected here by serde.

use crate::{Diagnostic, Source};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type Text = Spanned<String>;
pub type Number = Spanned<i64>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystem {
    pub version: Number,
    pub platform: Option<Spanned<RawPlatform>>,
    #[serde(default)]
    pub component: Vec<Spanned<RawComponent>>,
    #[serde(default)]
    pub region: Vec<Spanned<RawRegion>>,
    #[serde(default)]
    pub map: Vec<Spanned<RawMap>>,
    #[serde(default)]
    pub channel: Vec<Spanned<RawChannel>>,
    #[serde(default)]
    pub irq: Vec<Spanned<RawIrq>>,
    #[serde(default)]
    pub ioport: Vec<Spanned<RawIoPort>>,
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    pub protocol: Vec<Spanned<RawProtocol>>,
    pub vmbus: Option<Spanned<RawVmbus>>,
    #[serde(default)]
    pub driver: Vec<Spanned<RawDriver>>,
    #[serde(default)]
    pub block: Vec<Spanned<RawBlock>>,
    #[serde(default)]
    pub net: Vec<Spanned<RawNet>>,
}

/// What the image runs on (`[platform]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    /// "simulated" (the default) or "hyper-v".
    pub hypervisor: Option<Text>,
}

/// A grant of a disk (or one MBR partition of it) that a block driver
/// serves to a client, expanded by `expand::expand_blocks` into the
/// block interface's regions and notifications.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlock {
    /// The component that serves the disk (a `[[driver]]`, or a
    /// `[[component]]` such as a RAM disk).
    pub driver: Text,
    /// The component granted the disk.
    pub client: Text,
    /// The LUN on the driver's controller.
    pub lun: Number,
    /// An MBR primary partition (1-4); absent: the whole disk.
    pub partition: Option<Number>,
    pub read_only: Option<Spanned<bool>>,
    /// Bytes of the client's data region (whole pages).
    pub data: Number,
    /// Entries per queue.
    pub queue: Number,
}

/// A NIC (or a frame server) granted to a client, expanded by
/// `nets::expand_nets` into the net interface's regions and notifications.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNet {
    /// The component that serves frames (a `[[driver]]`, or a
    /// `[[component]]` such as a loopback bridge).
    pub driver: Text,
    /// The component granted the NIC.
    pub client: Text,
    /// Buffers per direction (2048 bytes each).
    pub buffers: Number,
    /// "dhcp" or "a.b.c.d/prefix".
    pub address: Text,
    /// The default gateway (static addresses only).
    pub gateway: Option<Text>,
}

/// The components every VMBus driver is wired to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVmbus {
    /// The bus manager: supervises the drivers and maps their rings.
    pub manager: Text,
    /// Routes the drivers' channel events and signals the host for them.
    pub synic: Text,
    /// Where the drivers' console output goes, if anywhere.
    pub console: Option<Text>,
}

/// One VMBus driver (VSC), expanded by `expand` into its component, ring
/// region, maps, channels and device entries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDriver {
    pub name: Text,
    pub package: Text,
    pub priority: Number,
    pub stack_pages: Option<Number>,
    /// The VMBus class GUIDs it drives.
    pub classes: Spanned<Vec<Text>>,
    /// Bytes of the host-to-guest ring, control page included.
    pub ring_in: Number,
    /// Bytes of the guest-to-host ring, control page included.
    pub ring_out: Number,
    /// Bytes of each host-visible data buffer (whole pages), in buffer
    /// order: the driver has GPADLs made over them through the bus.
    #[serde(default)]
    pub buffers: Vec<Number>,
    /// How many sub-channels (beyond the primary) it may open, each with
    /// rings of the primary's sizes (default 0).
    pub sub_channels: Option<Number>,
    /// How long (ms) the driver waits for the host to complete a request
    /// before it recovers (a driver that has such a timeout; absent: the
    /// driver's own default).
    pub request_timeout_ms: Option<Number>,
    /// The window (ms) in which 3 faults make the bus manager hold the
    /// driver stopped (default 10000; 0: never held).
    pub fault_window_ms: Option<Number>,
    /// The protocol its clients call, if it has clients.
    pub serves: Option<Text>,
    #[serde(default)]
    pub clients: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtocol {
    pub name: Text,
    /// The Rust type implementing `component_api::Protocol`.
    pub rust: Text,
    /// Operation name -> the components that may call it.
    #[serde(default)]
    pub allow: BTreeMap<String, Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub class: Text,
    pub instance: Option<Text>,
    pub driver: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    pub name: Text,
    pub package: Text,
    pub priority: Number,
    pub supervisor: Option<Text>,
    pub stack_pages: Option<Number>,
    pub power_off: Option<Spanned<bool>>,
    pub hypervisor: Option<Spanned<bool>>,
    pub simulated_host: Option<Spanned<bool>>,
    /// The protocols this component's code serves.
    #[serde(default)]
    pub serves: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: Text,
    pub size: Number,
    pub host_visible: Option<Spanned<bool>>,
    /// Device memory: the region is these physical addresses (a device's
    /// memory, e.g. QEMU's VGA framebuffer), not memory the platform allocates.
    pub physical: Option<Number>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    pub component: Text,
    pub region: Text,
    pub rights: Text,
    pub double: Option<Spanned<bool>>,
    pub name: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub notify: Option<Spanned<Vec<Text>>>,
    pub call: Option<Spanned<RawCall>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    pub client: Text,
    pub server: Text,
    pub protocol: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIrq {
    pub component: Text,
    pub name: Text,
    /// An ISA IRQ line (IOAPIC pin); exactly one of `irq` and `vector`.
    pub irq: Option<Number>,
    /// A local-APIC vector with no device behind it.
    pub vector: Option<Number>,
    /// The notify-channel end it signals (`component.end`), if not the
    /// holder's own end `name`.
    pub notify: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIoPort {
    pub component: Text,
    pub name: Text,
    pub base: Number,
    pub size: Number,
}

pub fn parse(source: &Source<'_>) -> Result<RawSystem, Diagnostic> {
    toml::from_str::<RawSystem>(source.text).map_err(|error| {
        let offset = error.span().map(|s| s.start).unwrap_or(0);
        // toml's message is one line; the position is ours to add.
        let message = error.message().trim().replace('\n', " ");
        source.diagnostic(offset, message)
    })
}
