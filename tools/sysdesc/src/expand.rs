//! `[[driver]]` stanzas expanded into what each VMBus driver needs: its
//! component (supervised by the bus manager), its ring region (host
//! visible, `ring_out + ring_in` bytes) mapped read-write into the driver
//! as `ring` and granted to the bus manager as `<driver>_ring` by address
//! only (`rights = "address"`: its guest physical address and size, to
//! build the GPADL; the bus manager, which parses every host message, has
//! no mapping of any ring), its channels to synic
//! (`<driver>` / `synic` notify, `synic_call` -> `<driver>_call`, protocol
//! `synic`), to the bus manager (`vmbus` -> `<driver>`, protocol `bus`;
//! `<driver>_event` / `vmbus_event` notify), to each client (`<driver>`
//! -> `<client>`, the driver's protocol; `<client>_event` / `<driver>_event`
//! notify) and to the console, and its `[[device]]` entries. Each of its
//! `buffers` becomes a host-visible region `<driver>_buffer<N>`, mapped
//! read-write into the driver as `buffer<N>` and granted to the bus
//! manager by address only, like the ring (the manager describes it in a
//! GPADL when the driver asks). Every
//! generated value carries the span of the stanza key it came from, so
//! the ordinary checks report problems at the driver's lines.

use crate::raw::{
    RawCall, RawChannel, RawComponent, RawDevice, RawMap, RawRegion, RawSystem, Text,
};
use crate::{Diagnostic, Source};
use toml::Spanned;

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
    // A driver's own ring map goes first: its ring is its region 0.
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
        let ring_region = text(at, format!("{name}_ring"));
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
        regions.push(Spanned::new(
            span.clone(),
            RawRegion {
                name: ring_region.clone(),
                size: Spanned::new(driver.ring_in.span(), region_bytes),
                host_visible: Some(Spanned::new(at.span(), true)),
            },
        ));
        let rw = text(at, "rw".into());
        driver_maps.push(Spanned::new(
            span.clone(),
            RawMap {
                component: driver.name.clone(),
                region: ring_region.clone(),
                rights: rw,
                double: None,
                name: Some(text(at, "ring".into())),
            },
        ));
        maps.push(Spanned::new(
            span.clone(),
            RawMap {
                component: manager.clone(),
                region: ring_region,
                rights: text(at, "address".into()),
                double: None,
                name: None,
            },
        ));
        for (index, buffer) in driver.buffers.iter().enumerate().take(MAX_BUFFERS) {
            let region = text(at, format!("{name}_buffer{index}"));
            regions.push(Spanned::new(
                span.clone(),
                RawRegion {
                    name: region.clone(),
                    size: buffer.clone(),
                    host_visible: Some(Spanned::new(at.span(), true)),
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
