//! The part of a HID report descriptor a pointer needs: where the buttons,
//! X, Y and the wheel are in an input report, and their logical ranges.
//!
//! Written here rather than taken from a crate: the well-kept parsers
//! (`hidreport`, `hidparser`) need `alloc` and bring the whole usage-table
//! crate; this driver is `no_std` without a heap and needs four fields of
//! one report. It reads short items only (the HID 1.11 spec, 6.2.2): the
//! global items (usage page, logical minimum/maximum, report size, count
//! and ID, push/pop), the local usages (single and minimum/maximum) and
//! the main items Input, Collection and End Collection (Output and Feature
//! only clear the local state). Every count is bounded; whatever is not a
//! well-formed descriptor is an error, never a panic.

/// Longest input report the layout may describe, in bits.
pub const MAX_REPORT_BITS: u32 = vmbus_protocol::synthhid::MAX_INPUT_REPORT as u32 * 8;
/// Buttons the layout keeps (the client's button byte).
pub const MAX_BUTTONS: usize = 8;
const MAX_USAGES: usize = 16;
const MAX_DEPTH: usize = 16;
const MAX_PUSH: usize = 4;

const PAGE_GENERIC_DESKTOP: u16 = 0x01;
const PAGE_BUTTON: u16 = 0x09;
const USAGE_X: u16 = 0x30;
const USAGE_Y: u16 = 0x31;
const USAGE_WHEEL: u16 = 0x38;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HidError {
    /// An item's data runs past the descriptor's end.
    Truncated { offset: usize },
    /// A long item (none of the standard devices use them).
    LongItem { offset: usize },
    /// More nested collections, pushes or usages than a pointer needs, an
    /// End Collection or Pop without its opening, or a report past
    /// [`MAX_REPORT_BITS`].
    Limit { offset: usize },
    /// A report size of 0 or more than 32 bits on a data field.
    FieldSize { offset: usize },
    /// No input report has both X and Y.
    NoPointer,
}

/// One value in an input report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// From the start of the report's data (after its ID byte, if any).
    pub bit_offset: u32,
    pub bits: u32,
    pub logical_min: i32,
    pub logical_max: i32,
    pub relative: bool,
}

impl Field {
    /// The field's value in `data` (sign-extended when the logical range
    /// is signed); `None` when the report is too short for it.
    pub fn read(&self, data: &[u8]) -> Option<i32> {
        let mut raw: u64 = 0;
        for bit in 0..self.bits {
            let at = self.bit_offset + bit;
            let byte = *data.get((at / 8) as usize)?;
            raw |= u64::from((byte >> (at % 8)) & 1) << bit;
        }
        if self.logical_min < 0 && self.bits < 64 && raw & (1 << (self.bits - 1)) != 0 {
            raw |= u64::MAX << self.bits;
        }
        Some(raw as i64 as i32)
    }

    /// An absolute value scaled from the logical range to 0..=`top`,
    /// clamped.
    pub fn scale(&self, value: i32, top: u16) -> u16 {
        let min = i64::from(self.logical_min);
        let span = i64::from(self.logical_max) - min;
        if span <= 0 {
            return 0;
        }
        let value = (i64::from(value) - min).clamp(0, span);
        (value * i64::from(top) / span) as u16
    }
}

/// Where the pointer's values are in its input report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerLayout {
    /// The report's ID byte (the report's first byte), if it has one.
    pub report_id: Option<u8>,
    /// The report's data length in bytes (its ID byte not counted).
    pub data_bytes: usize,
    pub x: Field,
    pub y: Field,
    pub wheel: Option<Field>,
    /// Bit offset of buttons 1.. (1 left, 2 right, 3 middle).
    pub buttons: [Option<u32>; MAX_BUTTONS],
}

impl PointerLayout {
    /// The report's whole length as it arrives.
    pub fn report_bytes(&self) -> usize {
        self.data_bytes + usize::from(self.report_id.is_some())
    }
}

#[derive(Clone, Copy, Default)]
struct Globals {
    usage_page: u16,
    logical_min: i32,
    logical_max: i32,
    report_size: u32,
    report_count: u32,
    report_id: Option<u8>,
}

/// A report being laid out (one per report ID, the first 8 IDs).
#[derive(Clone, Copy)]
struct Report {
    id: Option<u8>,
    bits: u32,
    x: Option<Field>,
    y: Option<Field>,
    wheel: Option<Field>,
    buttons: [Option<u32>; MAX_BUTTONS],
}

impl Report {
    fn new(id: Option<u8>) -> Report {
        Report {
            id,
            bits: 0,
            x: None,
            y: None,
            wheel: None,
            buttons: [None; MAX_BUTTONS],
        }
    }
}

#[derive(Default)]
struct Locals {
    /// (page, usage): a 4-byte usage carries its page in the high half.
    usages: heapless::Vec<(u16, u16), MAX_USAGES>,
    minimum: Option<(u16, u16)>,
    maximum: Option<(u16, u16)>,
}

impl Locals {
    /// The usage of the `index`th field of a main item.
    fn usage(&self, index: u32) -> Option<(u16, u16)> {
        if let (Some((page, min)), Some((_, max))) = (self.minimum, self.maximum) {
            let usage = u32::from(min) + index;
            return (usage <= u32::from(max)).then_some((page, usage as u16));
        }
        self.usages
            .get(index as usize)
            .or(self.usages.last())
            .copied()
    }
}

fn unsigned(data: &[u8]) -> u32 {
    data.iter()
        .rev()
        .fold(0u32, |value, &byte| value << 8 | u32::from(byte))
}

fn signed(data: &[u8]) -> i32 {
    match data.len() {
        0 => 0,
        1 => i32::from(data[0] as i8),
        2 => i32::from(i16::from_le_bytes([data[0], data[1]])),
        _ => unsigned(data) as i32,
    }
}

/// The pointer in `descriptor`: the first input report with X and Y.
pub fn parse(descriptor: &[u8]) -> Result<PointerLayout, HidError> {
    let mut globals = Globals::default();
    let mut stack: heapless::Vec<Globals, MAX_PUSH> = heapless::Vec::new();
    let mut locals = Locals::default();
    let mut depth = 0usize;
    let mut reports: heapless::Vec<Report, 8> = heapless::Vec::new();
    let mut offset = 0usize;
    while offset < descriptor.len() {
        let prefix = descriptor[offset];
        if prefix == 0xfe {
            return Err(HidError::LongItem { offset });
        }
        let size = match prefix & 3 {
            3 => 4,
            n => usize::from(n),
        };
        let data = descriptor
            .get(offset + 1..offset + 1 + size)
            .ok_or(HidError::Truncated { offset })?;
        let item_type = (prefix >> 2) & 3;
        let tag = prefix >> 4;
        let limit = HidError::Limit { offset };
        match (item_type, tag) {
            // Main items.
            (0, 0x8) => {
                let flags = unsigned(data);
                let constant = flags & 1 != 0;
                let variable = flags & 2 != 0;
                let relative = flags & 4 != 0;
                let bits = globals.report_size;
                let count = globals.report_count;
                let index = match reports.iter().position(|r| r.id == globals.report_id) {
                    Some(index) => index,
                    None => {
                        reports
                            .push(Report::new(globals.report_id))
                            .map_err(|_| limit)?;
                        reports.len() - 1
                    }
                };
                let report = &mut reports[index];
                let end = bits
                    .checked_mul(count)
                    .and_then(|total| total.checked_add(report.bits))
                    .filter(|&end| end <= MAX_REPORT_BITS)
                    .ok_or(limit)?;
                if !constant && variable {
                    if bits == 0 || bits > 32 {
                        return Err(HidError::FieldSize { offset });
                    }
                    for field_index in 0..count {
                        let field = Field {
                            bit_offset: report.bits + field_index * bits,
                            bits,
                            logical_min: globals.logical_min,
                            logical_max: globals.logical_max,
                            relative,
                        };
                        match locals.usage(field_index) {
                            Some((PAGE_GENERIC_DESKTOP, USAGE_X)) if report.x.is_none() => {
                                report.x = Some(field)
                            }
                            Some((PAGE_GENERIC_DESKTOP, USAGE_Y)) if report.y.is_none() => {
                                report.y = Some(field)
                            }
                            Some((PAGE_GENERIC_DESKTOP, USAGE_WHEEL)) if report.wheel.is_none() => {
                                report.wheel = Some(field)
                            }
                            Some((PAGE_BUTTON, button @ 1..=8)) if bits == 1 => {
                                report.buttons[usize::from(button) - 1] = Some(field.bit_offset)
                            }
                            _ => {}
                        }
                    }
                }
                report.bits = end;
                locals = Locals::default();
            }
            // Output, Feature: not ours; their local state ends.
            (0, 0x9) | (0, 0xb) => locals = Locals::default(),
            (0, 0xa) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(limit);
                }
                locals = Locals::default();
            }
            (0, 0xc) => {
                depth = depth.checked_sub(1).ok_or(limit)?;
                locals = Locals::default();
            }
            // Global items.
            (1, 0x0) => globals.usage_page = unsigned(data) as u16,
            (1, 0x1) => globals.logical_min = signed(data),
            (1, 0x2) => globals.logical_max = signed(data),
            (1, 0x7) => globals.report_size = unsigned(data),
            (1, 0x8) => globals.report_id = Some(unsigned(data) as u8),
            (1, 0x9) => globals.report_count = unsigned(data),
            (1, 0xa) => stack.push(globals).map_err(|_| limit)?,
            (1, 0xb) => globals = stack.pop().ok_or(limit)?,
            // Local items: usages, with the current page unless given.
            (2, 0x0..=0x2) => {
                let value = unsigned(data);
                let usage = if size == 4 {
                    ((value >> 16) as u16, value as u16)
                } else {
                    (globals.usage_page, value as u16)
                };
                match tag {
                    0x0 => locals.usages.push(usage).map_err(|_| limit)?,
                    0x1 => locals.minimum = Some(usage),
                    _ => locals.maximum = Some(usage),
                }
            }
            _ => {}
        }
        offset += 1 + size;
    }
    let report = reports
        .iter()
        .find(|report| report.x.is_some() && report.y.is_some())
        .ok_or(HidError::NoPointer)?;
    let fix = |mut field: Field| {
        // A maximum written in fewer bytes than it needs reads negative
        // (0xFFFF as -1): take it as unsigned, as HID parsers do.
        if field.logical_max < field.logical_min && field.bits < 32 {
            field.logical_max = (field.logical_max as u32 & ((1u32 << field.bits) - 1)) as i32;
        }
        field
    };
    Ok(PointerLayout {
        report_id: report.id,
        data_bytes: report.bits.div_ceil(8) as usize,
        x: report.x.map(fix).ok_or(HidError::NoPointer)?,
        y: report.y.map(fix).ok_or(HidError::NoPointer)?,
        wheel: report.wheel.map(fix),
        buttons: report.buttons,
    })
}

/// Hyper-V's synthetic mouse descriptor (the one hvsim's host sends).
pub use vmbus_protocol::synthhid::HYPERV_MOUSE_REPORT_DESCRIPTOR as HYPERV_MOUSE;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn the_hyperv_mouse_is_laid_out() {
        let layout = parse(HYPERV_MOUSE).unwrap();
        assert_eq!(layout.report_id, None);
        assert_eq!(layout.data_bytes, 6);
        assert_eq!(layout.x.bit_offset, 8);
        assert_eq!(layout.y.bit_offset, 24);
        assert_eq!(layout.x.logical_max, 32767);
        let wheel = layout.wheel.unwrap();
        assert_eq!((wheel.bit_offset, wheel.logical_min), (40, -127));
        assert!(wheel.relative);
        assert_eq!(
            layout.buttons,
            [
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                None,
                None,
                None
            ]
        );
        let report = [0b101, 0xff, 0x7f, 0x00, 0x40, 0xfe];
        assert_eq!(layout.x.read(&report), Some(32767));
        assert_eq!(layout.y.read(&report), Some(0x4000));
        assert_eq!(wheel.read(&report), Some(-2));
        assert_eq!(layout.x.scale(32767, 0x7fff), 0x7fff);
        assert_eq!(layout.x.read(&report[..2]), None);
    }

    #[test]
    fn report_ids_other_ranges_and_short_maximums() {
        // Report 2: 3 buttons, 5 bits padding, X and Y 0..=0xFFFF written
        // in two bytes (reads as -1: taken as unsigned).
        let descriptor = [
            0x05, 0x01, 0x09, 0x02, 0xa1, 0x01, 0x85, 0x02, 0x05, 0x09, 0x19, 0x01, 0x29, 0x03,
            0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81, 0x02, 0x95, 0x05, 0x81, 0x01,
            0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x16, 0x00, 0x00, 0x26, 0xff, 0xff, 0x75, 0x10,
            0x95, 0x02, 0x81, 0x02, 0xc0,
        ];
        let layout = parse(&descriptor).unwrap();
        assert_eq!(layout.report_id, Some(2));
        assert_eq!(layout.report_bytes(), 6);
        assert_eq!(layout.x.logical_max, 0xffff);
        assert_eq!(layout.x.scale(0xffff, 0x7fff), 0x7fff);
        assert_eq!(layout.x.scale(0x8000, 0x7fff), 0x4000 - 1);
    }

    #[test]
    fn malformed_descriptors_are_errors() {
        // Truncated item data.
        assert_eq!(
            parse(&[0x05, 0x01, 0x26, 0xff]),
            Err(HidError::Truncated { offset: 2 })
        );
        assert_eq!(
            parse(&[0xfe, 0x02, 0x00]),
            Err(HidError::LongItem { offset: 0 })
        );
        assert_eq!(parse(&[0xc0]), Err(HidError::Limit { offset: 0 }));
        assert_eq!(parse(&[0xb4]), Err(HidError::Limit { offset: 0 }));
        // A report far past the limit.
        assert_eq!(
            parse(&[0x75, 0x20, 0x96, 0xff, 0x00, 0x81, 0x02]),
            Err(HidError::Limit { offset: 5 })
        );
        // Sizes that overflow 32 bits.
        assert_eq!(
            parse(&[0x77, 0xff, 0xff, 0xff, 0xff, 0x95, 0x01, 0x81, 0x02]),
            Err(HidError::Limit { offset: 7 })
        );
        assert_eq!(
            parse(&[
                0x75, 0x01, 0x95, 0x08, 0x81, 0x01, 0x77, 0xff, 0xff, 0xff, 0xff, 0x95, 0x01, 0x81,
                0x01
            ]),
            Err(HidError::Limit { offset: 13 })
        );
        // A 0-bit data field.
        assert_eq!(
            parse(&[0x09, 0x30, 0x75, 0x00, 0x95, 0x01, 0x81, 0x02]),
            Err(HidError::FieldSize { offset: 6 })
        );
        // Buttons but no X/Y.
        assert_eq!(parse(&HYPERV_MOUSE[..28]), Err(HidError::NoPointer));
        assert_eq!(parse(&[]), Err(HidError::NoPointer));
        // Nesting past the limit.
        let deep = [0xa1u8, 0x00].repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(&deep), Err(HidError::Limit { .. })));
    }
}

#[cfg(test)]
mod properties {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the host calls a report descriptor, parsing ends in a
        /// layout or an error, and a layout's fields lie inside its report.
        #[test]
        fn any_descriptor_parses_or_is_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            report in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            if let Ok(layout) = parse(&bytes) {
                prop_assert!(layout.data_bytes * 8 <= MAX_REPORT_BITS as usize);
                for field in [Some(layout.x), Some(layout.y), layout.wheel].into_iter().flatten() {
                    prop_assert!(field.bit_offset + field.bits <= MAX_REPORT_BITS);
                    if let Some(value) = field.read(&report) {
                        prop_assert!(field.scale(value, 0x7fff) <= 0x7fff);
                    }
                }
            }
        }

        /// The Hyper-V descriptor with random bytes spliced in.
        #[test]
        fn a_damaged_hyperv_descriptor_never_panics(at in 0usize..80, byte in any::<u8>()) {
            let mut bytes = HYPERV_MOUSE.to_vec();
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = parse(&bytes);
        }
    }
}
