//! Validation and lowering: names resolved to indices, rules checked, local
//! channel ids and virtual addresses assigned. Every problem found is
//! reported (not only the first), each at the position of the value at fault.

use crate::contracts::{BlockContract, Contracts, DriverContract, NetContract, ProtocolContract};
use crate::raw::{RawSystem, Text};
use crate::{Description, Diagnostic, Source};
use std::collections::HashMap;
use system_layout::*;
use toml::Spanned;

/// Where seL4 mappings of regions start in every component's address space
/// (far above the component's image), each followed by an unmapped guard page.
pub const REGION_VADDR_BASE: u64 = 0x10_0000_0000;
/// The largest region one entry may declare.
pub const MAX_REGION_SIZE: i64 = 1 << 30;
/// Device memory lies below this physical address (x86-64's 52-bit limit).
pub const PHYSICAL_LIMIT: i64 = 1 << 52;
pub const MAX_STACK_PAGES: i64 = 64;
pub const DEFAULT_STACK_PAGES: u16 = 4;
/// IOAPIC pins on the PC platform.
pub const MAX_IRQ_LINE: i64 = 23;
/// In a protocol's `allow` lists: every `[[driver]]`.
pub const DRIVERS_GROUP: &str = "@drivers";
/// The supervisor name that hands a component to the platform (the seL4
/// root task's monitor, the hosted launcher), which restarts it on a fault.
pub const PLATFORM_SUPERVISOR: &str = "@platform";

struct Checker<'a> {
    source: &'a Source<'a>,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push(self.source.diagnostic(offset, message));
    }

    fn check_name(&mut self, name: &Text, what: &str) -> bool {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text.len() <= MAX_NAME
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            self.error(
                name.span().start,
                format!(
                    "{what} name `{text}` must be 1 to {MAX_NAME} characters of a-z, 0-9 and _, starting with a letter"
                ),
            );
        }
        valid
    }
}

/// One end of a channel as written: `component.end`.
struct EndRef {
    component: usize,
    name: String,
    offset: usize,
}

enum LocalEnd {
    Channel { channel: usize, side: usize },
    Irq { irq: usize },
}

pub fn lower(source: &Source<'_>, raw: &RawSystem) -> Result<Description, Vec<Diagnostic>> {
    let mut check = Checker {
        source,
        errors: Vec::new(),
    };

    if *raw.version.get_ref() != 1 {
        check.error(
            raw.version.span().start,
            format!(
                "unsupported description version {}; this tool reads version 1",
                raw.version.get_ref()
            ),
        );
    }

    // Components.
    let mut component_index: HashMap<&str, usize> = HashMap::new();
    if raw.component.len() > MAX_COMPONENTS {
        check.error(
            raw.component[MAX_COMPONENTS].span().start,
            format!("too many components: at most {MAX_COMPONENTS}"),
        );
    }
    for (index, component) in raw.component.iter().enumerate() {
        let component = component.get_ref();
        if check.check_name(&component.name, "component") {
            let name = component.name.get_ref().as_str();
            // The first declaration is the one references find.
            if component_index.contains_key(name) {
                check.error(
                    component.name.span().start,
                    format!("duplicate component name `{name}`"),
                );
            } else {
                component_index.insert(name, index);
            }
        }
        if component.package.get_ref().is_empty() {
            check.error(component.package.span().start, "package must not be empty");
        }
        let priority = *component.priority.get_ref();
        if !(1..=254).contains(&priority) {
            check.error(
                component.priority.span().start,
                format!("priority {priority} is out of range 1..=254"),
            );
        }
        if let Some(pages) = &component.stack_pages {
            if !(1..=MAX_STACK_PAGES).contains(pages.get_ref()) {
                check.error(
                    pages.span().start,
                    format!(
                        "stack_pages {} is out of range 1..={MAX_STACK_PAGES}",
                        pages.get_ref()
                    ),
                );
            }
        }
    }
    let lookup_component = |check: &mut Checker<'_>, name: &Text| -> Option<usize> {
        let found = component_index.get(name.get_ref().as_str()).copied();
        if found.is_none() {
            check.error(
                name.span().start,
                format!("no component named `{}`", name.get_ref()),
            );
        }
        found
    };

    // Protocols.
    let mut protocol_index: HashMap<&str, usize> = HashMap::new();
    for (index, protocol) in raw.protocol.iter().enumerate() {
        let protocol = protocol.get_ref();
        if check.check_name(&protocol.name, "protocol") {
            let name = protocol.name.get_ref().as_str();
            // The first declaration is the one references find.
            if protocol_index.contains_key(name) {
                check.error(
                    protocol.name.span().start,
                    format!("duplicate protocol name `{name}`"),
                );
            } else {
                protocol_index.insert(name, index);
            }
        }
        let rust = protocol.rust.get_ref();
        let is_path = rust.split("::").all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !is_path {
            check.error(
                protocol.rust.span().start,
                format!("`{rust}` is not a Rust type path (like `vmbus_ipc::synic::Synic`)"),
            );
        }
        for operation in protocol.allow.keys() {
            let valid = operation.starts_with(|c: char| c.is_ascii_lowercase())
                && operation
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                check.error(
                    protocol.name.span().start,
                    format!("operation name `{operation}` must be snake case"),
                );
            }
        }
    }
    let lookup_protocol = |check: &mut Checker<'_>, name: &Text| -> Option<usize> {
        let found = protocol_index.get(name.get_ref().as_str()).copied();
        if found.is_none() {
            check.error(
                name.span().start,
                format!("no protocol named `{}`", name.get_ref()),
            );
        }
        found
    };
    let mut serves: Vec<Vec<usize>> = vec![Vec::new(); raw.component.len()];
    for (index, component) in raw.component.iter().enumerate() {
        for name in &component.get_ref().serves {
            if let Some(protocol) = lookup_protocol(&mut check, name) {
                if serves[index].contains(&protocol) {
                    check.error(
                        name.span().start,
                        format!("protocol `{}` is listed twice", name.get_ref()),
                    );
                } else {
                    serves[index].push(protocol);
                }
            }
        }
    }

    // Supervision.
    let mut supervisor_of: Vec<Option<usize>> = vec![None; raw.component.len()];
    // `supervisor = "@platform"`: the root task's monitor (seL4) or the
    // launcher (hosted) restarts it.
    let mut platform_supervised = vec![false; raw.component.len()];
    for (index, component) in raw.component.iter().enumerate() {
        if let Some(supervisor) = &component.get_ref().supervisor {
            if supervisor.get_ref() == PLATFORM_SUPERVISOR {
                platform_supervised[index] = true;
                continue;
            }
            if let Some(found) = lookup_component(&mut check, supervisor) {
                if found == index {
                    check.error(
                        supervisor.span().start,
                        "a component cannot supervise itself",
                    );
                } else {
                    supervisor_of[index] = Some(found);
                }
            }
        }
    }
    for (index, component) in raw.component.iter().enumerate() {
        let mut seen = vec![false; raw.component.len()];
        let mut current = index;
        while let Some(next) = supervisor_of[current] {
            if seen[next] {
                break;
            }
            seen[next] = true;
            if next == index {
                let offset = component
                    .get_ref()
                    .supervisor
                    .as_ref()
                    .map(|s| s.span().start)
                    .unwrap_or(0);
                check.error(
                    offset,
                    format!(
                        "supervision of `{}` forms a cycle",
                        component.get_ref().name.get_ref()
                    ),
                );
                break;
            }
            current = next;
        }
    }

    // Regions.
    let mut region_index: HashMap<&str, usize> = HashMap::new();
    if raw.region.len() > MAX_REGIONS {
        check.error(
            raw.region[MAX_REGIONS].span().start,
            format!("too many regions: at most {MAX_REGIONS}"),
        );
    }
    for (index, region) in raw.region.iter().enumerate() {
        let region = region.get_ref();
        if check.check_name(&region.name, "region") {
            let name = region.name.get_ref().as_str();
            if region_index.insert(name, index).is_some() {
                check.error(
                    region.name.span().start,
                    format!("duplicate region name `{name}`"),
                );
            }
        }
        let size = *region.size.get_ref();
        if size <= 0 || size % PAGE_SIZE as i64 != 0 || size > MAX_REGION_SIZE {
            check.error(
                region.size.span().start,
                format!("region size {size} must be a non-zero multiple of 4096 of at most {MAX_REGION_SIZE}"),
            );
        }
        if let Some(physical) = &region.physical {
            let start = *physical.get_ref();
            if start <= 0 || start % PAGE_SIZE as i64 != 0 || start >= PHYSICAL_LIMIT - size.max(0)
            {
                check.error(
                    physical.span().start,
                    format!(
                        "physical address {start:#x} must be a non-zero multiple of 4096 with the region below {PHYSICAL_LIMIT:#x}"
                    ),
                );
            } else if let Some(host_visible) = region.host_visible.as_ref().filter(|h| *h.get_ref())
            {
                check.error(
                    host_visible.span().start,
                    "a region at a fixed physical address is device memory: it cannot be host visible",
                );
            } else if let Some(other) = raw.region[..index].iter().find(|other| {
                let other = other.get_ref();
                other.physical.as_ref().is_some_and(|p| {
                    let other_start = *p.get_ref();
                    start < other_start + *other.size.get_ref() && other_start < start + size.max(0)
                })
            }) {
                check.error(
                    physical.span().start,
                    format!(
                        "region at physical {start:#x} overlaps region `{}`",
                        other.get_ref().name.get_ref()
                    ),
                );
            }
        }
    }

    // Maps.
    let mut maps: Vec<Vec<MapLayout>> = vec![Vec::new(); raw.component.len()];
    let mut map_names: Vec<HashMap<String, ()>> = vec![HashMap::new(); raw.component.len()];
    let mut region_mapped = vec![false; raw.region.len()];
    for map in &raw.map {
        let map_offset = map.span().start;
        let map = map.get_ref();
        let component = lookup_component(&mut check, &map.component);
        let region = region_index.get(map.region.get_ref().as_str()).copied();
        if region.is_none() {
            check.error(
                map.region.span().start,
                format!("no region named `{}`", map.region.get_ref()),
            );
        }
        let (writable, address_only) = match map.rights.get_ref().as_str() {
            "r" => (false, false),
            "rw" => (true, false),
            "address" => (false, true),
            other => {
                check.error(
                    map.rights.span().start,
                    format!("rights `{other}` must be \"r\", \"rw\" or \"address\""),
                );
                (false, false)
            }
        };
        let double = map.double.as_ref().is_some_and(|d| *d.get_ref());
        if let (Some(region), Some(double_key)) = (region, map.double.as_ref()) {
            if double && raw.region[region].get_ref().physical.is_some() {
                check.error(
                    double_key.span().start,
                    format!(
                        "region `{}` is device memory: it is mapped once",
                        map.region.get_ref()
                    ),
                );
            }
        }
        if address_only {
            // Only the host has a use for a guest physical address.
            if let Some(region) = region {
                let visible = raw.region[region]
                    .get_ref()
                    .host_visible
                    .as_ref()
                    .is_some_and(|h| *h.get_ref());
                if !visible {
                    check.error(
                        map.rights.span().start,
                        format!(
                            "rights \"address\" give a guest physical address: region `{}` is not host visible",
                            map.region.get_ref()
                        ),
                    );
                }
            }
            if double {
                check.error(
                    map.rights.span().start,
                    "rights \"address\" map nothing: it cannot be double mapped",
                );
            }
        }
        let name_text = map.name.as_ref().unwrap_or(&map.region);
        if map.name.is_some() {
            check.check_name(name_text, "map");
        }
        let (Some(component), Some(region)) = (component, region) else {
            continue;
        };
        region_mapped[region] = true;
        if map_names[component]
            .insert(name_text.get_ref().clone(), ())
            .is_some()
        {
            check.error(
                name_text.span().start,
                format!(
                    "component `{}` already maps a region under the name `{}`",
                    map.component.get_ref(),
                    name_text.get_ref()
                ),
            );
        }
        if maps[component].len() == MAX_MAPS_PER_COMPONENT {
            check.error(
                map_offset,
                format!(
                    "component `{}` has more than {MAX_MAPS_PER_COMPONENT} maps",
                    map.component.get_ref()
                ),
            );
            continue;
        }
        maps[component].push(MapLayout {
            name: name_text.get_ref().clone(),
            region: region as u8,
            writable,
            double: double && !address_only,
            vaddr: 0,
            address_only,
        });
    }
    // The simulated host maps every host-visible region it does not map
    // already, read-write, under the region's name: it is the host, and
    // those (and only those, besides its own declared maps) are the pages
    // the host may touch. The root task hands each map's frames' physical
    // address as its guest physical address, so the host can translate GPAs.
    let simulated_host = raw.component.iter().position(|c| {
        c.get_ref()
            .simulated_host
            .as_ref()
            .is_some_and(|h| *h.get_ref())
    });
    if let Some(host) = simulated_host {
        let host_key = raw.component[host]
            .get_ref()
            .simulated_host
            .as_ref()
            .map(|h| h.span().start)
            .unwrap_or(0);
        for (index, region) in raw.region.iter().enumerate() {
            let region = region.get_ref();
            if !region.host_visible.as_ref().is_some_and(|h| *h.get_ref())
                || region_index.get(region.name.get_ref().as_str()) != Some(&index)
                || maps[host].iter().any(|m| m.region as usize == index)
            {
                continue;
            }
            let name = region.name.get_ref();
            if map_names[host].contains_key(name) {
                check.error(
                    region.name.span().start,
                    format!(
                        "the simulated host maps host-visible region `{name}` under its own name, which one of its maps already uses"
                    ),
                );
                continue;
            }
            if maps[host].len() == MAX_MAPS_PER_COMPONENT {
                check.error(
                    host_key,
                    format!(
                        "the simulated host maps every host-visible region: more than {MAX_MAPS_PER_COMPONENT} maps"
                    ),
                );
                break;
            }
            map_names[host].insert(name.clone(), ());
            region_mapped[index] = true;
            maps[host].push(MapLayout {
                name: name.clone(),
                region: index as u8,
                writable: true,
                double: false,
                vaddr: 0,
                address_only: false,
            });
        }
    }
    for (index, region) in raw.region.iter().enumerate() {
        if !region_mapped[index]
            && region_index.get(region.get_ref().name.get_ref().as_str()) == Some(&index)
        {
            check.error(
                region.get_ref().name.span().start,
                format!(
                    "region `{}` is mapped by no component",
                    region.get_ref().name.get_ref()
                ),
            );
        }
    }

    // Channel ends and IRQs share each component's local id space.
    let mut local_ends: Vec<Vec<(String, LocalEnd)>> =
        (0..raw.component.len()).map(|_| Vec::new()).collect();
    let parse_end = |check: &mut Checker<'_>, text: &Text| -> Option<EndRef> {
        let value = text.get_ref();
        let Some((component, end)) = value.split_once('.') else {
            check.error(
                text.span().start,
                format!("channel end `{value}` must be written `component.end_name`"),
            );
            return None;
        };
        let end_text = Spanned::new(text.span(), end.to_string());
        if !check.check_name(&end_text, "channel end") {
            return None;
        }
        let Some(&index) = component_index.get(component) else {
            check.error(
                text.span().start,
                format!("no component named `{component}`"),
            );
            return None;
        };
        Some(EndRef {
            component: index,
            name: end.to_string(),
            offset: text.span().start,
        })
    };
    let add_end = |check: &mut Checker<'_>,
                   local_ends: &mut Vec<Vec<(String, LocalEnd)>>,
                   end: &EndRef,
                   local: LocalEnd| {
        if local_ends[end.component]
            .iter()
            .any(|(name, _)| *name == end.name)
        {
            check.error(
                end.offset,
                format!(
                    "component `{}` already has a channel end or IRQ named `{}`",
                    raw.component[end.component].get_ref().name.get_ref(),
                    end.name
                ),
            );
        } else {
            local_ends[end.component].push((end.name.clone(), local));
        }
    };

    // (kind, [end0, end1]) per channel; for calls end0 is the client.
    let mut channels: Vec<(bool, [EndRef; 2])> = Vec::new();
    // The protocol of each call channel that names one, by channel index.
    let mut channel_protocols: HashMap<usize, usize> = HashMap::new();
    // (server, client) of each call channel, to find a second one.
    let mut call_pairs: Vec<(usize, usize)> = Vec::new();
    for channel in &raw.channel {
        let offset = channel.span().start;
        let channel = channel.get_ref();
        let (is_call, texts): (bool, Vec<&Text>) = match (&channel.notify, &channel.call) {
            (Some(notify), None) => {
                if notify.get_ref().len() != 2 {
                    check.error(notify.span().start, "a notify channel has exactly two ends");
                    continue;
                }
                (false, notify.get_ref().iter().collect())
            }
            (None, Some(call)) => (true, vec![&call.get_ref().client, &call.get_ref().server]),
            _ => {
                check.error(offset, "a channel has exactly one of `notify` or `call`");
                continue;
            }
        };
        let ends: Vec<Option<EndRef>> = texts.iter().map(|t| parse_end(&mut check, t)).collect();
        let [Some(first), Some(second)] = <[Option<EndRef>; 2]>::try_from(ends)
            .ok()
            .unwrap_or([None, None])
        else {
            continue;
        };
        if first.component == second.component {
            check.error(
                second.offset,
                "a channel must join two different components",
            );
            continue;
        }
        if is_call {
            if call_pairs.contains(&(second.component, first.component)) {
                check.error(
                    first.offset,
                    format!(
                        "`{}` already calls `{}`: a server tells its callers apart by component, so one call channel per pair",
                        raw.component[first.component].get_ref().name.get_ref(),
                        raw.component[second.component].get_ref().name.get_ref()
                    ),
                );
            }
            call_pairs.push((second.component, first.component));
            let protocol_text = channel
                .call
                .as_ref()
                .and_then(|c| c.get_ref().protocol.as_ref());
            if let Some(text) = protocol_text {
                if let Some(protocol) = lookup_protocol(&mut check, text) {
                    if !serves[second.component].contains(&protocol) {
                        check.error(
                            text.span().start,
                            format!(
                                "`{}` does not serve protocol `{}` (add it to the component's `serves`)",
                                raw.component[second.component].get_ref().name.get_ref(),
                                text.get_ref()
                            ),
                        );
                    }
                    channel_protocols.insert(channels.len(), protocol);
                }
            }
            let client = raw.component[first.component].get_ref();
            let server = raw.component[second.component].get_ref();
            if server.priority.get_ref() <= client.priority.get_ref() {
                check.error(
                    second.offset,
                    format!(
                        "protected call from `{}` (priority {}) must go to a higher priority, but `{}` has priority {}",
                        client.name.get_ref(),
                        client.priority.get_ref(),
                        server.name.get_ref(),
                        server.priority.get_ref()
                    ),
                );
            }
        } else if first.name == "console" || second.name == "console" {
            let end = if first.name == "console" {
                &first
            } else {
                &second
            };
            check.error(
                end.offset,
                "the end named `console` must be the client end of a call channel",
            );
        }
        let index = channels.len();
        add_end(
            &mut check,
            &mut local_ends,
            &first,
            LocalEnd::Channel {
                channel: index,
                side: 0,
            },
        );
        add_end(
            &mut check,
            &mut local_ends,
            &second,
            LocalEnd::Channel {
                channel: index,
                side: 1,
            },
        );
        channels.push((is_call, [first, second]));
    }
    if let Some((_, [_, server])) = channels
        .iter()
        .find(|(is_call, [_, server])| *is_call && server.name == "console")
    {
        check.error(
            server.offset,
            "the end named `console` must be the client end of a call channel",
        );
    }

    // The VMBus drivers and the components they are wired to.
    let driver_components: Vec<usize> = raw
        .driver
        .iter()
        .filter_map(|d| {
            component_index
                .get(d.get_ref().name.get_ref().as_str())
                .copied()
        })
        .collect();
    let vmbus = raw.vmbus.as_ref().map(|v| {
        let v = v.get_ref();
        (
            lookup_component(&mut check, &v.manager),
            lookup_component(&mut check, &v.synic),
            v.console.as_ref().map(|c| lookup_component(&mut check, c)),
        )
    });
    let vmbus = match vmbus {
        Some((Some(manager), Some(synic), None | Some(Some(_)))) => Some((manager, synic)),
        _ => None,
    };

    // Who may call which operation: each caller named must be a client of
    // a channel that speaks the protocol.
    let mut allow: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new(); raw.protocol.len()];
    for (index, protocol) in raw.protocol.iter().enumerate() {
        for (operation, callers) in &protocol.get_ref().allow {
            let mut granted = Vec::new();
            for caller in callers.get_ref() {
                if caller.get_ref() == DRIVERS_GROUP {
                    for driver in &driver_components {
                        if !granted.contains(driver) {
                            granted.push(*driver);
                        }
                    }
                    continue;
                }
                let Some(component) = lookup_component(&mut check, caller) else {
                    continue;
                };
                let calls_it = channels.iter().enumerate().any(|(c, (is_call, ends))| {
                    *is_call
                        && ends[0].component == component
                        && channel_protocols.get(&c) == Some(&index)
                });
                if !calls_it {
                    check.error(
                        caller.span().start,
                        format!(
                            "`{}` has no call channel of protocol `{}`",
                            caller.get_ref(),
                            protocol.get_ref().name.get_ref()
                        ),
                    );
                }
                granted.push(component);
            }
            allow[index].push((operation.clone(), granted));
        }
    }

    let mut irq_lines: HashMap<i64, usize> = HashMap::new();
    let mut irq_vectors: HashMap<i64, usize> = HashMap::new();
    let mut irqs: Vec<(usize, String, IrqSource, Option<IrqTarget>)> = Vec::new();
    for (index, irq) in raw.irq.iter().enumerate() {
        let irq_offset = irq.span().start;
        let irq = irq.get_ref();
        let component = lookup_component(&mut check, &irq.component);
        let source = match (&irq.irq, &irq.vector) {
            (Some(line_text), None) => {
                let line = *line_text.get_ref();
                if !(0..=MAX_IRQ_LINE).contains(&line) {
                    check.error(
                        line_text.span().start,
                        format!("IRQ line {line} is out of range 0..={MAX_IRQ_LINE}"),
                    );
                } else if irq_lines.insert(line, index).is_some() {
                    check.error(
                        line_text.span().start,
                        format!("IRQ line {line} is already given to a component"),
                    );
                }
                IrqSource::Line(line.clamp(0, MAX_IRQ_LINE) as u8)
            }
            (None, Some(vector_text)) => {
                let vector = *vector_text.get_ref();
                if !(i64::from(MIN_IRQ_VECTOR)..=i64::from(MAX_IRQ_VECTOR)).contains(&vector) {
                    check.error(
                        vector_text.span().start,
                        format!(
                            "IRQ vector {vector:#x} is out of range {MIN_IRQ_VECTOR:#x}..={MAX_IRQ_VECTOR:#x} (above every IOAPIC line's vector, below the kernel's)"
                        ),
                    );
                } else if irq_vectors.insert(vector, index).is_some() {
                    check.error(
                        vector_text.span().start,
                        format!("IRQ vector {vector:#x} is already given to a component"),
                    );
                }
                IrqSource::Vector(
                    vector.clamp(i64::from(MIN_IRQ_VECTOR), i64::from(MAX_IRQ_VECTOR)) as u8,
                )
            }
            (Some(_), Some(vector_text)) => {
                check.error(
                    vector_text.span().start,
                    "an IRQ has either a line (`irq`) or a vector (`vector`), not both",
                );
                IrqSource::Line(0)
            }
            (None, None) => {
                check.error(
                    irq_offset,
                    "an IRQ needs a line (`irq = N`) or a vector (`vector = N`)",
                );
                IrqSource::Line(0)
            }
        };
        // The end it signals, if another component's: a notify-channel end
        // that component already has, so its code sees the IRQ exactly as
        // it saw that channel.
        let mut target = None;
        if let Some(notify) = &irq.notify {
            if let Some(end) = parse_end(&mut check, notify) {
                let found = local_ends[end.component]
                    .iter()
                    .position(|(name, _)| *name == end.name);
                let is_notify = found.is_some_and(|position| {
                    matches!(
                        local_ends[end.component][position].1,
                        LocalEnd::Channel { channel, .. } if !channels[channel].0
                    )
                });
                if Some(end.component) == component {
                    check.error(
                        end.offset,
                        "an IRQ signals its holder on its own end `name` by default: leave `notify` out",
                    );
                } else if found.is_none() {
                    check.error(
                        end.offset,
                        format!(
                            "component `{}` has no channel end named `{}`",
                            raw.component[end.component].get_ref().name.get_ref(),
                            end.name
                        ),
                    );
                } else if !is_notify {
                    check.error(
                        end.offset,
                        format!(
                            "`{}` is not the end of a notify channel: an IRQ signals a notification",
                            notify.get_ref()
                        ),
                    );
                } else {
                    target = found.map(|position| (end.component, position));
                }
            }
        }
        let named = check.check_name(&irq.name, "IRQ");
        let (Some(component), true) = (component, named) else {
            continue;
        };
        let end = EndRef {
            component,
            name: irq.name.get_ref().clone(),
            offset: irq.name.span().start,
        };
        add_end(
            &mut check,
            &mut local_ends,
            &end,
            LocalEnd::Irq { irq: irqs.len() },
        );
        irqs.push((
            component,
            irq.name.get_ref().clone(),
            source,
            target.map(|(component, position)| IrqTarget {
                component: component as u8,
                end: position as u8,
            }),
        ));
    }

    let mut ioports: Vec<Vec<IoPortLayout>> = vec![Vec::new(); raw.component.len()];
    let mut port_ranges: Vec<(i64, i64, usize)> = Vec::new();
    for ioport in &raw.ioport {
        let ioport = ioport.get_ref();
        let component = lookup_component(&mut check, &ioport.component);
        let named = check.check_name(&ioport.name, "IO-port range");
        let base = *ioport.base.get_ref();
        let size = *ioport.size.get_ref();
        let mut valid = true;
        if !(0..=0xffff).contains(&base) {
            check.error(
                ioport.base.span().start,
                format!("IO-port base {base:#x} is out of range 0..=0xffff"),
            );
            valid = false;
        } else if size < 1 || base + size > 0x10000 {
            check.error(
                ioport.size.span().start,
                format!("IO-port range of size {size} at {base:#x} does not fit below 0x10000"),
            );
            valid = false;
        } else if let Some(&(other_base, other_size, _)) = port_ranges
            .iter()
            .find(|(b, s, _)| base < b + s && *b < base + size)
        {
            check.error(
                ioport.base.span().start,
                format!(
                    "IO ports {base:#x}..{:#x} overlap the range {other_base:#x}..{:#x} already declared",
                    base + size,
                    other_base + other_size
                ),
            );
            valid = false;
        }
        let (Some(component), true, true) = (component, named, valid) else {
            continue;
        };
        port_ranges.push((base, size, component));
        if ioports[component]
            .iter()
            .any(|p| p.name == *ioport.name.get_ref())
        {
            check.error(
                ioport.name.span().start,
                format!("duplicate IO-port range name `{}`", ioport.name.get_ref()),
            );
            continue;
        }
        if ioports[component].len() == MAX_IOPORTS_PER_COMPONENT {
            check.error(
                ioport.name.span().start,
                format!("more than {MAX_IOPORTS_PER_COMPONENT} IO-port ranges"),
            );
            continue;
        }
        ioports[component].push(IoPortLayout {
            name: ioport.name.get_ref().clone(),
            base: base as u16,
            size: size as u16,
        });
    }

    // Limits on local ids.
    for (index, ends) in local_ends.iter().enumerate() {
        let component = raw.component[index].get_ref();
        if ends.len() > MAX_CHANNELS_PER_COMPONENT {
            check.error(
                component.name.span().start,
                format!(
                    "component `{}` has {} channel ends and IRQs; at most {MAX_CHANNELS_PER_COMPONENT}",
                    component.name.get_ref(),
                    ends.len()
                ),
            );
        }
        let irq_count = ends
            .iter()
            .filter(|(_, e)| matches!(e, LocalEnd::Irq { .. }))
            .count();
        if irq_count > MAX_IRQS_PER_COMPONENT {
            check.error(
                component.name.span().start,
                format!(
                    "component `{}` has {irq_count} IRQs; at most {MAX_IRQS_PER_COMPONENT}",
                    component.name.get_ref()
                ),
            );
        }
    }

    // Hypervisor access and the simulated host: one component each at most.
    for (key, pick) in [
        (
            "hypervisor",
            (|c: &crate::raw::RawComponent| c.hypervisor.clone())
                as fn(&crate::raw::RawComponent) -> Option<Spanned<bool>>,
        ),
        ("simulated_host", |c: &crate::raw::RawComponent| {
            c.simulated_host.clone()
        }),
    ] {
        let granted: Vec<Spanned<bool>> = raw
            .component
            .iter()
            .filter_map(|c| pick(c.get_ref()))
            .filter(|g| *g.get_ref())
            .collect();
        for extra in granted.iter().skip(1) {
            check.error(
                extra.span().start,
                format!("only one component may have `{key} = true`"),
            );
        }
    }

    let platform = lower_platform(&mut check, raw);

    // Devices: which driver serves which VMBus class (and instance).
    let mut devices = Vec::new();
    let mut seen_devices: Vec<([u8; 16], Option<[u8; 16]>)> = Vec::new();
    for device in &raw.device {
        let device = device.get_ref();
        let class = parse_guid(&mut check, &device.class);
        let instance = device.instance.as_ref().map(|i| parse_guid(&mut check, i));
        let driver = lookup_component(&mut check, &device.driver);
        let (Some(class), Some(driver)) = (class, driver) else {
            continue;
        };
        if !driver_components.contains(&driver) {
            // The bus manager's table has the `[[driver]]`s only.
            check.error(
                device.driver.span().start,
                format!(
                    "`{}` is not a `[[driver]]`: a `[[device]]` adds a class or instance to one",
                    device.driver.get_ref()
                ),
            );
            continue;
        }
        let instance = match instance {
            Some(None) => continue,
            Some(Some(instance)) => Some(instance),
            None => None,
        };
        if seen_devices.contains(&(class, instance)) {
            check.error(
                device.class.span().start,
                format!(
                    "class {} already has a driver{}",
                    device.class.get_ref(),
                    if instance.is_some() {
                        " for this instance"
                    } else {
                        ""
                    }
                ),
            );
            continue;
        }
        seen_devices.push((class, instance));
        devices.push(DeviceLayout {
            class,
            instance,
            driver: driver as u8,
        });
    }

    if !check.errors.is_empty() {
        check.errors.sort_by_key(|d| (d.line, d.column));
        return Err(check.errors);
    }

    // Lowering. Local ids follow declaration order within each component.
    let local_id = |component: usize, channel: usize, side: usize| -> u8 {
        local_ends[component]
            .iter()
            .position(|(_, e)| matches!(e, LocalEnd::Channel { channel: c, side: s } if *c == channel && *s == side))
            .expect("every end was registered") as u8
    };
    let mut components = Vec::new();
    for (index, component) in raw.component.iter().enumerate() {
        let component = component.get_ref();
        let mut channel_ends = Vec::new();
        let mut component_irqs = Vec::new();
        for (id, (name, end)) in local_ends[index].iter().enumerate() {
            match end {
                LocalEnd::Channel { channel, side } => {
                    let (is_call, ends) = &channels[*channel];
                    let peer = &ends[1 - side];
                    let kind = match (is_call, side) {
                        (false, _) => ChannelKind::Notify,
                        (true, 0) => ChannelKind::CallClient,
                        (true, _) => ChannelKind::CallServer,
                    };
                    channel_ends.push(ChannelEnd {
                        id: id as u8,
                        name: name.clone(),
                        kind,
                        peer: peer.component as u8,
                        peer_id: local_id(peer.component, *channel, 1 - side),
                    });
                }
                LocalEnd::Irq { irq } => {
                    component_irqs.push(IrqLayout {
                        name: name.clone(),
                        channel: id as u8,
                        source: irqs[*irq].2,
                        notify: irqs[*irq].3,
                    });
                }
            }
        }
        let console = channel_ends
            .iter()
            .find(|e| e.name == "console" && e.kind == ChannelKind::CallClient)
            .map(|e| e.id);
        let mut vaddr = REGION_VADDR_BASE;
        let mut component_maps = maps[index].clone();
        for map in &mut component_maps {
            if map.address_only {
                continue;
            }
            map.vaddr = vaddr;
            let size = *raw.region[map.region as usize].get_ref().size.get_ref() as u64;
            vaddr += size * if map.double { 2 } else { 1 } + PAGE_SIZE;
        }
        components.push(ComponentLayout {
            name: component.name.get_ref().clone(),
            package: component.package.get_ref().clone(),
            priority: *component.priority.get_ref() as u8,
            supervisor: supervisor_of[index].map(|s| s as u8),
            platform_supervised: platform_supervised[index],
            children: (0..raw.component.len())
                .filter(|c| supervisor_of[*c] == Some(index))
                .map(|c| c as u8)
                .collect(),
            stack_pages: component
                .stack_pages
                .as_ref()
                .map(|p| *p.get_ref() as u16)
                .unwrap_or(DEFAULT_STACK_PAGES),
            may_power_off: component.power_off.as_ref().is_some_and(|p| *p.get_ref()),
            maps: component_maps,
            channels: channel_ends,
            irqs: component_irqs,
            ioports: ioports[index].clone(),
            console,
            hypervisor: component.hypervisor.as_ref().is_some_and(|h| *h.get_ref()),
            simulated_host: component
                .simulated_host
                .as_ref()
                .is_some_and(|h| *h.get_ref()),
        });
    }
    let regions = raw
        .region
        .iter()
        .map(|r| {
            let r = r.get_ref();
            RegionLayout {
                name: r.name.get_ref().clone(),
                size: *r.size.get_ref() as u64,
                host_visible: r.host_visible.as_ref().is_some_and(|h| *h.get_ref()),
                physical: r.physical.as_ref().map(|p| *p.get_ref() as u64),
            }
        })
        .collect();
    // Protocols by local channel id, per component.
    let channel_protocol_ids = components
        .iter()
        .enumerate()
        .map(|(index, component)| {
            component
                .channels
                .iter()
                .filter_map(|end| {
                    let (channel, _) = local_ends[index].iter().find_map(|(name, e)| match e {
                        LocalEnd::Channel { channel, side } if *name == end.name => {
                            Some((*channel, *side))
                        }
                        _ => None,
                    })?;
                    channel_protocols.get(&channel).map(|p| (end.id, *p))
                })
                .collect()
        })
        .collect();
    let contracts = Contracts {
        protocols: raw
            .protocol
            .iter()
            .zip(allow)
            .map(|(p, allow)| ProtocolContract {
                name: p.get_ref().name.get_ref().clone(),
                rust: p.get_ref().rust.get_ref().clone(),
                allow,
            })
            .collect(),
        channel_protocols: channel_protocol_ids,
        serves,
        drivers: raw
            .driver
            .iter()
            .zip(&driver_components)
            .map(|(d, component)| {
                let d = d.get_ref();
                DriverContract {
                    component: *component,
                    ring_in: *d.ring_in.get_ref() as u64,
                    ring_out: *d.ring_out.get_ref() as u64,
                    buffers: d.buffers.iter().map(|b| *b.get_ref() as u64).collect(),
                    sub_channels: crate::expand::sub_channel_count(d),
                    request_timeout_ms: d.request_timeout_ms.as_ref().map(|n| {
                        (*n.get_ref()).clamp(1, crate::expand::MAX_REQUEST_TIMEOUT_MS) as u64
                    }),
                    fault_window_ms: d
                        .fault_window_ms
                        .as_ref()
                        .map_or(crate::expand::DEFAULT_FAULT_WINDOW_MS, |n| {
                            (*n.get_ref()).clamp(0, crate::expand::MAX_FAULT_WINDOW_MS) as u64
                        }),
                    clients: d
                        .clients
                        .iter()
                        .filter_map(|c| component_index.get(c.get_ref().as_str()).copied())
                        .collect(),
                }
            })
            .collect(),
        vmbus,
        blocks: raw
            .block
            .iter()
            .enumerate()
            .filter_map(|(position, b)| {
                let b = b.get_ref();
                Some(BlockContract {
                    driver: *component_index.get(b.driver.get_ref().as_str())?,
                    client: *component_index.get(b.client.get_ref().as_str())?,
                    index: crate::blocks::client_index(&raw.block, position),
                    lun: *b.lun.get_ref() as u8,
                    partition: b.partition.as_ref().map(|p| *p.get_ref() as u8),
                    read_only: b.read_only.as_ref().is_some_and(|r| *r.get_ref()),
                    data: *b.data.get_ref() as u64,
                    queue: *b.queue.get_ref() as u32,
                })
            })
            .collect(),
        nets: raw
            .net
            .iter()
            .enumerate()
            .filter_map(|(position, n)| {
                let n = n.get_ref();
                // Its errors were reported by the expansion.
                let address = crate::nets::address_config(source, n, &mut Vec::new())?;
                Some(NetContract {
                    driver: *component_index.get(n.driver.get_ref().as_str())?,
                    client: *component_index.get(n.client.get_ref().as_str())?,
                    index: crate::nets::client_index(&raw.net, position),
                    buffers: *n.buffers.get_ref() as u32,
                    address,
                })
            })
            .collect(),
    };
    Ok(Description {
        layout: SystemLayout {
            version: LAYOUT_VERSION,
            components,
            regions,
            devices,
            platform,
        },
        contracts,
    })
}

/// `[platform] hypervisor`, checked against what the components provide:
/// on Hyper-V the hypervisor itself is the host, so a simulated host has
/// no place, and a component must hold the kernel's hypervisor
/// capability (`hypervisor = true`) to serve the interface.
fn lower_platform(check: &mut Checker<'_>, raw: &RawSystem) -> Platform {
    let Some(value) = raw
        .platform
        .as_ref()
        .and_then(|p| p.get_ref().hypervisor.as_ref())
    else {
        return Platform::Simulated;
    };
    let platform = match value.get_ref().as_str() {
        "simulated" => Platform::Simulated,
        "hyper-v" => Platform::HyperV,
        other => {
            check.error(
                value.span().start,
                format!("`hypervisor` is \"simulated\" or \"hyper-v\", not \"{other}\""),
            );
            return Platform::Simulated;
        }
    };
    if platform == Platform::HyperV {
        for component in &raw.component {
            if let Some(host) = component
                .get_ref()
                .simulated_host
                .as_ref()
                .filter(|h| *h.get_ref())
            {
                check.error(
                    host.span().start,
                    format!(
                        "`{}` is a simulated host, but the platform is Hyper-V (`hypervisor = \"hyper-v\"`), which is the host itself",
                        component.get_ref().name.get_ref()
                    ),
                );
            }
        }
        let served = raw.component.iter().any(|c| {
            c.get_ref()
                .hypervisor
                .as_ref()
                .is_some_and(|h| *h.get_ref())
        });
        if !served {
            check.error(
                value.span().start,
                "on Hyper-V a component must serve the hypervisor interface through the kernel: give one `hypervisor = true`",
            );
        }
    }
    platform
}

/// A GUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as standard bytes.
fn parse_guid(check: &mut Checker<'_>, text: &Text) -> Option<[u8; 16]> {
    let value = text.get_ref();
    // uuid also reads the simple, braced and URN forms; the description
    // allows only the hyphenated one, the only form 36 characters long.
    match uuid::Uuid::try_parse(value) {
        Ok(guid) if value.len() == 36 => Some(*guid.as_bytes()),
        _ => {
            check.error(
                text.span().start,
                format!("`{value}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
            );
            None
        }
    }
}
