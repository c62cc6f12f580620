//! `mouse`: the Hyper-V synthetic HID (mouse) driver.
//!
//! The channel (`vsc-link`) opens through `vmbus`; at open the driver asks
//! for protocol 2.0. Once the host approves, it sends the device info: the
//! HID class descriptor and the report descriptor, which the driver parses
//! ([`hid::parse`]: where the buttons, X, Y and the wheel are) and
//! acknowledges. Each input report after that is decoded through that
//! layout into a [`PointerEvent`]: buttons (bit 0 left, 1 right, 2
//! middle, then 4 and 5), X and Y scaled from the descriptor's logical
//! range to 0..=[`mouse::AXIS_MAX`] (relative axes are accumulated into
//! that range), the wheel clamped to an `i8`. Events are queued (up to
//! [`QUEUE`]; beyond that new ones are dropped and counted) and clients
//! notified (`driver::CLIENT_EVENTS`) when the queue becomes non-empty;
//! they take them with `Next`.
//!
//! Trusts: nothing from the host. Refused, counted ([`MouseStats`]) and
//! printed (the first few): a message whose pipe or HID header size
//! disagrees with what arrived, short, oversized or of unknown type; a
//! device info whose `bLength` or `wDescriptorLength` disagrees with what
//! arrived, or whose report descriptor has no pointer (not acknowledged);
//! an input report of another length than the descriptor gives (larger or
//! shorter), of another report ID, or before the device info.
//! Writes: its rings, the console, its clients' notifications.
#![no_std]
#![forbid(unsafe_code)]

pub mod hid;

use component_api::{println, Channel, ChannelSet, Component, Env, Refusal};
use hid::PointerLayout;
use ic_channel::ChannelIds;
use vmbus_ipc::mouse::{self, PointerEvent, Reply, Request};
use vmbus_protocol::synthhid::{self, HostMessage, ParseError};
use vsc_link::{Answer, Device, Link};
use zerocopy::IntoBytes;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// Pointer events held for the clients.
pub const QUEUE: usize = 128;
/// The largest packet: the in ring's data area is no larger (8 KiB rings
/// in the description: 4 KiB of data), so every packet is copied out and
/// judged, none too large to read.
pub const PACKET_BUFFER: usize = 4096;
const LOGGED: u64 = 16;
const LOG_EVERY: u64 = 256;

/// What the driver refused and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MouseStats {
    pub reports: u64,
    /// Messages refused by their framing: short, oversized, headers that
    /// disagree with what arrived, pipe or message types not known.
    pub refused_framing: u64,
    /// Device infos whose class descriptor lengths disagree with what
    /// arrived (`bLength`, `wDescriptorLength`) or are not HID.
    pub refused_descriptor_lengths: u64,
    /// Report descriptors without a pointer, or malformed.
    pub refused_report_descriptors: u64,
    /// Input reports longer or shorter than the descriptor gives, or of
    /// another report ID.
    pub refused_report_size: u64,
    /// Device infos before the protocol, input reports before the device
    /// info.
    pub refused_early: u64,
    pub dropped: u64,
}

impl MouseStats {
    pub fn refused(&self) -> u64 {
        self.refused_framing
            + self.refused_descriptor_lengths
            + self.refused_report_descriptors
            + self.refused_report_size
            + self.refused_early
    }
}

#[derive(Default)]
pub struct MouseDevice {
    pub approved: bool,
    pub layout: Option<PointerLayout>,
    /// The pointer as the clients last got it (relative axes move it).
    position: (u16, u16),
    pub queue: heapless::Deque<PointerEvent, QUEUE>,
    dropped_since_reply: u32,
    pub stats: MouseStats,
}

fn framed(message: &[u8]) -> Answer {
    let mut out = [0u8; vsc_link::MAX_ANSWER];
    let len = synthhid::frame(message, &mut out).unwrap_or(0);
    Answer::from_slice(&out[..len]).unwrap_or_default()
}

impl MouseDevice {
    fn note(&mut self, env: &mut dyn Env, what: &dyn core::fmt::Debug) {
        let count = self.stats.refused();
        if count <= LOGGED || count.is_multiple_of(LOG_EVERY) {
            println!(env, "refused host message {count}: {what:?}");
        }
    }

    /// An input report through the layout.
    pub fn decode(&mut self, layout: &PointerLayout, report: &[u8]) -> Option<PointerEvent> {
        if report.len() != layout.report_bytes() {
            return None;
        }
        let data = match layout.report_id {
            Some(id) if report.first() != Some(&id) => return None,
            Some(_) => &report[1..],
            None => report,
        };
        let axis = |field: &hid::Field, now: u16| -> Option<u16> {
            let value = field.read(data)?;
            Some(if field.relative {
                (i32::from(now) + value).clamp(0, i32::from(mouse::AXIS_MAX)) as u16
            } else {
                field.scale(value, mouse::AXIS_MAX)
            })
        };
        let x = axis(&layout.x, self.position.0)?;
        let y = axis(&layout.y, self.position.1)?;
        let wheel = match &layout.wheel {
            Some(field) => field.read(data)?.clamp(-127, 127) as i8,
            None => 0,
        };
        let mut buttons = 0u8;
        for (index, bit) in layout.buttons.iter().enumerate() {
            if let Some(bit) = bit {
                let byte = data.get((bit / 8) as usize)?;
                if byte >> (bit % 8) & 1 != 0 {
                    buttons |= 1 << index;
                }
            }
        }
        self.position = (x, y);
        Some(PointerEvent {
            x,
            y,
            buttons,
            wheel,
        })
    }

    fn queue_event(&mut self, env: &mut dyn Env, event: PointerEvent) {
        self.stats.reports += 1;
        let was_empty = self.queue.is_empty();
        if self.queue.push_back(event).is_err() {
            self.stats.dropped += 1;
            self.dropped_since_reply = self.dropped_since_reply.saturating_add(1);
            return;
        }
        if was_empty {
            for event in driver::CLIENT_EVENTS {
                env.notify(*event);
            }
        }
    }

    pub fn take_events(&mut self) -> Reply {
        let mut events = heapless::Vec::new();
        while events.len() < mouse::MAX_EVENTS {
            let Some(event) = self.queue.pop_front() else {
                break;
            };
            let _ = events.push(event);
        }
        let dropped = core::mem::take(&mut self.dropped_since_reply);
        Reply::Events { events, dropped }
    }
}

impl Device for MouseDevice {
    fn opened(&mut self, _env: &mut dyn Env) -> Answer {
        self.approved = false;
        self.layout = None;
        framed(synthhid::ProtocolRequest::new(synthhid::VERSION_2_0).as_bytes())
    }

    fn closed(&mut self, _env: &mut dyn Env) {
        self.approved = false;
        self.layout = None;
    }

    fn message(&mut self, env: &mut dyn Env, payload: &[u8]) -> Option<Answer> {
        match synthhid::parse_host_message(payload) {
            Ok(HostMessage::ProtocolResponse(response)) => {
                self.approved = response.approved != 0;
                if self.approved {
                    println!(env, "protocol 2.0 approved");
                } else {
                    println!(env, "the host refused protocol 2.0: no pointer");
                }
                None
            }
            Ok(HostMessage::DeviceInfo { .. }) if !self.approved => {
                self.stats.refused_early += 1;
                self.note(env, &"device info before the protocol");
                None
            }
            Ok(HostMessage::DeviceInfo {
                info,
                report_descriptor,
                ..
            }) => {
                match hid::parse(report_descriptor) {
                    Ok(layout) => {
                        println!(
                        env,
                        "device {:04x}:{:04x}: {}-byte reports, {} buttons, X {}..={}, Y {}..={}{}",
                        info.vendor.get(),
                        info.product.get(),
                        layout.report_bytes(),
                        layout.buttons.iter().flatten().count(),
                        layout.x.logical_min,
                        layout.x.logical_max,
                        layout.y.logical_min,
                        layout.y.logical_max,
                        if layout.wheel.is_some() { ", wheel" } else { "" }
                    );
                        self.layout = Some(layout);
                        Some(framed(synthhid::DeviceInfoAck::new().as_bytes()))
                    }
                    Err(error) => {
                        self.stats.refused_report_descriptors += 1;
                        self.note(env, &error);
                        None
                    }
                }
            }
            Ok(HostMessage::InputReport(report)) => {
                let Some(layout) = self.layout else {
                    self.stats.refused_early += 1;
                    self.note(env, &"input report before the device info");
                    return None;
                };
                match self.decode(&layout, report) {
                    Some(event) => self.queue_event(env, event),
                    None => {
                        self.stats.refused_report_size += 1;
                        let (len, expected) = (report.len(), layout.report_bytes());
                        self.note(
                            env,
                            &format_args!(
                                "input report of {len} bytes, descriptor says {expected}"
                            ),
                        );
                    }
                }
                None
            }
            Err(
                error @ (ParseError::BadDescriptorLength(_)
                | ParseError::BadDescriptor
                | ParseError::ReportLength { .. }),
            ) => {
                self.stats.refused_descriptor_lengths += 1;
                self.note(env, &error);
                None
            }
            Err(error) => {
                self.stats.refused_framing += 1;
                self.note(env, &error);
                None
            }
        }
    }
}

/// The component.
pub struct Mouse {
    pub link: Link<PACKET_BUFFER>,
    pub device: MouseDevice,
}

impl Component for Mouse {
    fn init(env: &mut dyn Env) -> Self {
        let mut driver = Mouse {
            link: Link::new(IDS),
            device: MouseDevice::default(),
        };
        driver.link.on_bus_event(env, &mut driver.device);
        driver
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(IDS.vmbus_event) {
            self.link.on_bus_event(env, &mut self.device);
        }
        if set.contains(IDS.synic) {
            self.link.poll(env, &mut self.device);
        }
    }

    fn protected(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::mouse(channel, message, reply, |_, request| match request {
            Request::Next => Ok(self.device.take_events()),
        })
    }
}

#[cfg(test)]
mod tests;
