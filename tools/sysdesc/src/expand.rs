//! `[[driver]]` stanzas expanded into what each VMBus driver needs: its
//! component (supervised by the bus manager), its two rings as four host
//! visible regions (per ring a one-page control region and a data region
//! of `ring_out - 4096` or `ring_in - 4096` bytes), mapped read-write into
//! the driver as `ring_out_control`, `ring_out`, `ring_in_control` and
//! `ring_in`, each data region `double` (mapped twice back to back, so
//! copies never split at the wrap), and granted to the bus manager as
//! `<driver>_ring_out_control`, `<driver>_ring_out`, ... by address only
//! (`rights = "address"`: guest physical address and size, to build the
//! GPADL in the order Hyper-V reads it: out control, out data, in control,
//! in data; the bus manager, which parses every host message, has no
//! mapping of any ring), its channels to synic
//! (`<driver>` / `synic` notify, `synic_call` -> `<driver>_call`, protocol
//! `synic`), to the bus manager (`vmbus` -> `<driver>`, protocol `bus`;
//! `<driver>_event` / `vmbus_event` notify), to each client (`<driver>`
//! -> `<client>`, the driver's protocol; `<client>_event` / `<driver>_event`
//! notify) and to the console, and its `[[device]]` entries. Each of its
//! `buffers` becomes a host-visible region `<driver>_buffer<N>`, mapped
//! read-write into the driver as `buffer<N>` and granted to the bus
//! manager by address only, like the ring (the manager describes it in a
//! GPADL when the driver asks). `sub_channels = N` (at most
//! [`MAX_SUB_CHANNELS`]) gives sub-channel K (1..=N) rings of the primary's
//! sizes: the same four regions with a K suffix (`<driver>_ring_out_control<K>`,
//! mapped into the driver as `ring_out_control<K>`, ...), granted to the
//! bus manager by address only like the primary's. Every
//! generated value carries the span of the stanza key it came from, so
//! the ordinary checks report problems at the driver's lines.

use crate::raw::{
    RawCall, RawChannel, RawComponent, RawDevice, RawMap, RawRegion, RawSystem, Text,
};
use crate::{Diagnostic, Source};
use toml::Spanned;

/// The rings' regions, in the order of the ring GPADL's pages (and of the
/// driver's and the bus manager's maps): (suffix, control page?, in ring?).
pub const RING_PARTS: [(&str, bool, bool); 4] = [
    ("ring_out_control", true, false),
    ("ring_out", false, false),
    ("ring_in_control", true, true),
    ("ring_in", false, true),
];

/// The smallest ring: its control page and one page of data.
pub const MIN_RING_BYTES: i64 = 8192;
/// The largest ring region the bus manager describes in one GPADL
/// (`vmbus::MAX_RING_PAGES` pages).
pub const MAX_RING_REGION_BYTES: i64 = 256 * 4096;
/// The most data buffers one driver has (`vmbus::MAX_BUFFERS`).
pub const MAX_BUFFERS: usize = 4;
/// The largest data buffer: one GPADL range (`range_buflen` is 16 bits:
/// 8190 pages, `vmbus_protocol::gpadl::MAX_SINGLE_RANGE_PFNS`; Linux's
/// netvsc keeps its receive buffer under the same bound).
pub const MAX_BUFFER_BYTES: i64 = 8190 * 4096;

/// The most sub-channels one driver opens (`vmbus::MAX_SUB_CHANNELS`).
pub const MAX_SUB_CHANNELS: i64 = 8;
/// The longest `request_timeout_ms` (an hour).
pub const MAX_REQUEST_TIMEOUT_MS: i64 = 3_600_000;
/// The longest `fault_window_ms` (an hour).
pub const MAX_FAULT_WINDOW_MS: i64 = 3_600_000;
/// The `fault_window_ms` of a driver that does not set it
/// (`vmbus::FAULT_WINDOW_NS`).
pub const DEFAULT_FAULT_WINDOW_MS: u64 = 10_000;

/// The name suffix of ring part `suffix` of channel `channel` (0: the
/// primary, K: sub-channel K).
pub fn ring_part_name(suffix: &str, channel: usize) -> String {
    if channel == 0 {
        suffix.to_string()
    } else {
        format!("{suffix}{channel}")
    }
}

/// A driver's sub-channel count, clamped to what `expand` accepts (it
/// reports a count out of range).
pub fn sub_channel_count(driver: &crate::raw::RawDriver) -> u8 {
    driver
        .sub_channels
        .as_ref()
        .map_or(0, |n| (*n.get_ref()).clamp(0, MAX_SUB_CHANNELS) as u8)
}

fn text(at: &Text, value: String) -> Text {
    Spanned::new(at.span(), value)
}

/// Add the expansion of every `[[driver]]` to `raw`. Problems with the
/// stanzas themselves are returned; the rest is checked with everything else.
pub fn expand(source: &Source<'_>, raw: &mut RawSystem) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    if raw.driver.is_empty() {
        return errors;
    }
    let Some(vmbus) = raw.vmbus.as_ref().map(|v| v.get_ref()) else {
        errors.push(source.diagnostic(
            raw.driver[0].span().start,
            "a `[[driver]]` needs the `[vmbus]` table (its bus manager and synic)",
        ));
        return errors;
    };
    let (manager, synic) = (vmbus.manager.clone(), vmbus.synic.clone());
    // A console that does not exist is reported once, at `[vmbus]`.
    let console = vmbus.console.clone().filter(|console| {
        raw.component
            .iter()
            .any(|c| c.get_ref().name.get_ref() == console.get_ref())
    });
    // The console channels speak the console protocol if there is one.
    let console_protocol = raw
        .protocol
        .iter()
        .any(|p| p.get_ref().name.get_ref() == "console");
    let mut components = Vec::new();
    let mut regions = Vec::new();
    let mut maps = Vec::new();
    // A driver's own ring maps go first: its rings are its regions 0-3.
    let mut driver_maps = Vec::new();
    let mut channels = Vec::new();
    let mut devices = Vec::new();
    let call = |client: Text, server: Text, protocol: Option<Text>| {
        let span = client.span();
        Spanned::new(
            span.clone(),
            RawChannel {
                notify: None,
                call: Some(Spanned::new(
                    span,
                    RawCall {
                        client,
                        server,
                        protocol,
                    },
                )),
            },
        )
    };
    let notify = |a: Text, b: Text| {
        let span = a.span();
        Spanned::new(
            span.clone(),
            RawChannel {
                notify: Some(Spanned::new(span, vec![a, b])),
                call: None,
            },
        )
    };
    for driver in &raw.driver {
        let span = driver.span();
        let driver = driver.get_ref();
        let name = driver.name.get_ref();
        for ring in [&driver.ring_in, &driver.ring_out] {
            let bytes = *ring.get_ref();
            if bytes < MIN_RING_BYTES || bytes % 4096 != 0 {
                errors.push(source.diagnostic(
                    ring.span().start,
                    format!("a ring of {bytes} bytes: it must be a multiple of 4096 of at least {MIN_RING_BYTES} (the control page and data)"),
                ));
            }
        }
        let region_bytes = driver
            .ring_in
            .get_ref()
            .saturating_add(*driver.ring_out.get_ref());
        if region_bytes > MAX_RING_REGION_BYTES {
            errors.push(source.diagnostic(
                driver.ring_in.span().start,
                format!("rings of {region_bytes} bytes in all: the bus manager describes at most {MAX_RING_REGION_BYTES}"),
            ));
        }
        if driver.buffers.len() > MAX_BUFFERS {
            errors.push(source.diagnostic(
                driver.buffers[MAX_BUFFERS].span().start,
                format!(
                    "{} data buffers: a driver has at most {MAX_BUFFERS}",
                    driver.buffers.len()
                ),
            ));
        }
        if let Some(timeout) = &driver.request_timeout_ms {
            let ms = *timeout.get_ref();
            if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&ms) {
                errors.push(source.diagnostic(
                    timeout.span().start,
                    format!("a request timeout of {ms} ms: it is 1 to {MAX_REQUEST_TIMEOUT_MS}"),
                ));
            }
        }
        if let Some(window) = &driver.fault_window_ms {
            let ms = *window.get_ref();
            if !(0..=MAX_FAULT_WINDOW_MS).contains(&ms) {
                errors.push(source.diagnostic(
                    window.span().start,
                    format!(
                        "a fault window of {ms} ms: it is 0 (never held) to {MAX_FAULT_WINDOW_MS}"
                    ),
                ));
            }
        }
        if let Some(count) = &driver.sub_channels {
            let n = *count.get_ref();
            if !(0..=MAX_SUB_CHANNELS).contains(&n) {
                errors.push(source.diagnostic(
                    count.span().start,
                    format!("{n} sub-channels: a driver has 0 to {MAX_SUB_CHANNELS}"),
                ));
            }
        }
        for buffer in &driver.buffers {
            let bytes = *buffer.get_ref();
            if bytes <= 0 || bytes % 4096 != 0 || bytes > MAX_BUFFER_BYTES {
                errors.push(source.diagnostic(
                    buffer.span().start,
                    format!("a data buffer of {bytes} bytes: it must be whole pages, at most {MAX_BUFFER_BYTES} (one GPADL range)"),
                ));
            }
        }
        if driver.classes.get_ref().is_empty() {
            errors.push(source.diagnostic(
                driver.classes.span().start,
                "a driver drives at least one VMBus class",
            ));
        }
        if !driver.clients.is_empty() && driver.serves.is_none() {
            errors.push(source.diagnostic(
                driver.clients[0].span().start,
                format!(
                    "driver `{name}` has clients but no `serves`: which protocol do they call?"
                ),
            ));
        }
        let at = &driver.name;
        components.push(Spanned::new(
            span.clone(),
            RawComponent {
                name: driver.name.clone(),
                package: driver.package.clone(),
                priority: driver.priority.clone(),
                supervisor: Some(manager.clone()),
                stack_pages: driver.stack_pages.clone(),
                power_off: None,
                hypervisor: None,
                simulated_host: None,
                serves: driver.serves.iter().cloned().collect(),
            },
        ));
        let rw = text(at, "rw".into());
        let channel_count = 1 + usize::from(sub_channel_count(driver));
        for (channel, (suffix, control, in_ring)) in (0..channel_count)
            .flat_map(|channel| RING_PARTS.iter().map(move |part| (channel, *part)))
        {
            let suffix = ring_part_name(suffix, channel);
            let ring_bytes = if in_ring {
                &driver.ring_in
            } else {
                &driver.ring_out
            };
            let bytes = if control {
                4096
            } else {
                ring_bytes.get_ref().saturating_sub(4096)
            };
            let region = text(at, format!("{name}_{suffix}"));
            regions.push(Spanned::new(
                span.clone(),
                RawRegion {
                    name: region.clone(),
                    size: Spanned::new(ring_bytes.span(), bytes),
                    host_visible: Some(Spanned::new(at.span(), true)),
                    physical: None,
                },
            ));
            driver_maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: driver.name.clone(),
                    region: region.clone(),
                    rights: rw.clone(),
                    double: (!control).then(|| Spanned::new(at.span(), true)),
                    name: Some(text(at, suffix)),
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: manager.clone(),
                    region,
                    rights: text(at, "address".into()),
                    double: None,
                    name: None,
                },
            ));
        }
        for (index, buffer) in driver.buffers.iter().enumerate().take(MAX_BUFFERS) {
            let region = text(at, format!("{name}_buffer{index}"));
            regions.push(Spanned::new(
                span.clone(),
                RawRegion {
                    name: region.clone(),
                    size: buffer.clone(),
                    host_visible: Some(Spanned::new(at.span(), true)),
                    physical: None,
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: driver.name.clone(),
                    region: region.clone(),
                    rights: text(at, "rw".into()),
                    double: None,
                    name: Some(text(at, format!("buffer{index}"))),
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: manager.clone(),
                    region,
                    rights: text(at, "address".into()),
                    double: None,
                    name: None,
                },
            ));
        }
        let end =
            |component: &Text, end: String| text(at, format!("{}.{end}", component.get_ref()));
        let protocol = |name: &str| Some(text(at, name.into()));
        channels.push(notify(end(&synic, name.clone()), end(at, "synic".into())));
        channels.push(call(
            end(at, "synic_call".into()),
            end(&synic, format!("{name}_call")),
            protocol("synic"),
        ));
        channels.push(call(
            end(at, "vmbus".into()),
            end(&manager, name.clone()),
            protocol("bus"),
        ));
        channels.push(notify(
            end(&manager, format!("{name}_event")),
            end(at, "vmbus_event".into()),
        ));
        for client in &driver.clients {
            let client_name = client.get_ref();
            channels.push(call(
                text(client, format!("{client_name}.{name}")),
                text(client, format!("{name}.{client_name}")),
                driver.serves.clone(),
            ));
            channels.push(notify(
                text(client, format!("{name}.{client_name}_event")),
                text(client, format!("{client_name}.{name}_event")),
            ));
        }
        if let Some(console) = &console {
            channels.push(call(
                end(at, "console".into()),
                end(console, name.clone()),
                if console_protocol {
                    protocol("console")
                } else {
                    None
                },
            ));
        }
        for class in driver.classes.get_ref() {
            devices.push(Spanned::new(
                class.span(),
                RawDevice {
                    class: class.clone(),
                    instance: None,
                    driver: driver.name.clone(),
                },
            ));
        }
    }
    raw.component.extend(components);
    raw.region.extend(regions);
    raw.map.splice(0..0, driver_maps);
    raw.map.extend(maps);
    raw.channel.extend(channels);
    raw.device.extend(devices);
    errors
}
