//! `[[block]]` grants expanded into the block interface
//! (`platform/api/block-queue`, docs/block-interface.md): for grant N of
//! client C (N counts C's grants in file order) four regions,
//! `C_blkN_requests` and `C_blkN_responses` (the queues, sized for `queue`
//! entries by `block_queue`), `C_blkN_info` (one page) and `C_blkN_data`
//! (`data` bytes), mapped read-write into the client as `blkN_requests`,
//! ..., `blkN_data`, and into the driver under their region names. When the
//! driver is a VMBus `[[driver]]` the data region is host visible (the host
//! moves the blocks in and out of it) and the driver holds it by address
//! only (`rights = "address"`: it names the pages to the host and never
//! touches the bytes); a server that is a plain `[[component]]` (a RAM
//! disk) copies the blocks itself, so it maps the data region read-write
//! and nothing is host visible. And one notify channel,
//! `driver.C_blkN` / `C.blkN`. Every generated value carries the span of
//! the stanza key it came from, so the ordinary checks report problems at
//! the grant's lines.

use crate::raw::{RawBlock, RawChannel, RawMap, RawRegion, RawSystem, Text};
use crate::{Diagnostic, Source};
use toml::Spanned;

/// The regions of a grant, in the order the tables name them.
pub const PARTS: [&str; 4] = ["requests", "responses", "info", "data"];

/// The most entries per queue.
pub const MAX_QUEUE: i64 = 1024;
/// The largest LUN a SCSI controller addresses here (one byte).
pub const MAX_LUN: i64 = 255;

/// The local name (in the client) of grant `index`'s part `part`.
pub fn client_map_name(index: usize, part: &str) -> String {
    format!("blk{index}_{part}")
}

/// The region (and the driver's map) name of grant `index` of `client`.
pub fn region_name(client: &str, index: usize, part: &str) -> String {
    format!("{client}_blk{index}_{part}")
}

/// The driver's notify end to grant `index` of `client`.
pub fn driver_end_name(client: &str, index: usize) -> String {
    format!("{client}_blk{index}")
}

/// The client's notify end of its grant `index`.
pub fn client_end_name(index: usize) -> String {
    format!("blk{index}")
}

/// Grant `position`'s index among its client's grants.
pub fn client_index(blocks: &[Spanned<RawBlock>], position: usize) -> usize {
    let client = blocks[position].get_ref().client.get_ref();
    blocks[..position]
        .iter()
        .filter(|b| b.get_ref().client.get_ref() == client)
        .count()
}

fn text(at: &Text, value: String) -> Text {
    Spanned::new(at.span(), value)
}

/// The area of a disk a grant covers, for the overlap check: the whole
/// disk overlaps every partition.
fn overlaps(a: &RawBlock, b: &RawBlock) -> bool {
    if a.driver.get_ref() != b.driver.get_ref() || a.lun.get_ref() != b.lun.get_ref() {
        return false;
    }
    match (&a.partition, &b.partition) {
        (Some(x), Some(y)) => x.get_ref() == y.get_ref(),
        _ => true,
    }
}

fn writable(block: &RawBlock) -> bool {
    !block.read_only.as_ref().is_some_and(|r| *r.get_ref())
}

/// Add the expansion of every `[[block]]` to `raw` (after the drivers'
/// expansion: a grant's driver may be a `[[driver]]`). Problems with the
/// stanzas themselves are returned; the rest is checked with everything
/// else.
pub fn expand_blocks(source: &Source<'_>, raw: &mut RawSystem) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let known = |name: &Text| {
        raw.component
            .iter()
            .any(|c| c.get_ref().name.get_ref() == name.get_ref())
    };
    let mut regions = Vec::new();
    let mut maps = Vec::new();
    let mut channels = Vec::new();
    for (position, stanza) in raw.block.iter().enumerate() {
        let span = stanza.span();
        let block = stanza.get_ref();
        let mut usable = true;
        for (what, name) in [("driver", &block.driver), ("client", &block.client)] {
            if !known(name) {
                errors.push(source.diagnostic(
                    name.span().start,
                    format!(
                        "no component or driver named `{}` (the grant's {what})",
                        name.get_ref()
                    ),
                ));
                usable = false;
            }
        }
        if usable && block.driver.get_ref() == block.client.get_ref() {
            errors.push(source.diagnostic(
                block.client.span().start,
                "a driver cannot be its own block client",
            ));
            usable = false;
        }
        let lun = *block.lun.get_ref();
        if !(0..=MAX_LUN).contains(&lun) {
            errors.push(source.diagnostic(
                block.lun.span().start,
                format!("LUN {lun}: it must be 0 to {MAX_LUN}"),
            ));
        }
        if let Some(partition) = &block.partition {
            let n = *partition.get_ref();
            if !(1..=4).contains(&n) {
                errors.push(source.diagnostic(
                    partition.span().start,
                    format!("partition {n}: an MBR has primary partitions 1 to 4 (leave it out for the whole disk)"),
                ));
            }
        }
        let data = *block.data.get_ref();
        if data <= 0 || data % 4096 != 0 {
            errors.push(source.diagnostic(
                block.data.span().start,
                format!("a data region of {data} bytes: it must be a non-zero multiple of 4096"),
            ));
            usable = false;
        }
        let queue = *block.queue.get_ref();
        if !(1..=MAX_QUEUE).contains(&queue) {
            errors.push(source.diagnostic(
                block.queue.span().start,
                format!("a queue of {queue} entries: it must hold 1 to {MAX_QUEUE}"),
            ));
            usable = false;
        }
        for (earlier, other) in raw.block[..position].iter().enumerate() {
            let other = other.get_ref();
            if overlaps(block, other) && (writable(block) || writable(other)) {
                let area = |b: &RawBlock| match &b.partition {
                    Some(p) => format!("partition {}", p.get_ref()),
                    None => "the whole disk".to_string(),
                };
                errors.push(source.diagnostic(
                    span.start,
                    format!(
                        "this grant ({} of LUN {lun} of `{}` to `{}`) overlaps grant {} ({} to `{}`) and one of them may write: read_only = true on both, or grant separate partitions",
                        area(block),
                        block.driver.get_ref(),
                        block.client.get_ref(),
                        earlier + 1,
                        area(other),
                        other.client.get_ref()
                    ),
                ));
            }
        }
        if !usable {
            continue;
        }
        let index = client_index(&raw.block, position);
        let vmbus_driver = raw
            .driver
            .iter()
            .any(|d| d.get_ref().name.get_ref() == block.driver.get_ref());
        let client = block.client.get_ref();
        let at = &block.client;
        let sizes = [
            block_queue::request_region_bytes(queue as usize) as i64,
            block_queue::response_region_bytes(queue as usize) as i64,
            block_queue::INFO_BYTES as i64,
            data,
        ];
        for (part, bytes) in PARTS.iter().zip(sizes) {
            let is_data = *part == "data";
            let region = text(at, region_name(client, index, part));
            let size_at = if is_data { &block.data } else { &block.queue };
            regions.push(Spanned::new(
                span.clone(),
                RawRegion {
                    name: region.clone(),
                    size: Spanned::new(size_at.span(), bytes),
                    host_visible: (is_data && vmbus_driver).then(|| Spanned::new(at.span(), true)),
                    physical: None,
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: block.client.clone(),
                    region: region.clone(),
                    rights: text(at, "rw".into()),
                    double: None,
                    name: Some(text(at, client_map_name(index, part))),
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: block.driver.clone(),
                    region,
                    rights: text(
                        &block.driver,
                        if is_data && vmbus_driver {
                            "address"
                        } else {
                            "rw"
                        }
                        .into(),
                    ),
                    double: None,
                    name: None,
                },
            ));
        }
        let driver = block.driver.get_ref();
        channels.push(Spanned::new(
            span.clone(),
            RawChannel {
                notify: Some(Spanned::new(
                    at.span(),
                    vec![
                        text(at, format!("{driver}.{}", driver_end_name(client, index))),
                        text(at, format!("{client}.{}", client_end_name(index))),
                    ],
                )),
                call: None,
            },
        ));
    }
    raw.region.extend(regions);
    raw.map.extend(maps);
    raw.channel.extend(channels);
    errors
}
