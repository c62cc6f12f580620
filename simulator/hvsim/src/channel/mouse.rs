//! The host's side of the synthetic HID mouse (`vmbus_protocol::synthhid`),
//! as Hyper-V's synthetic mouse VSP behaves: it completes the guest's
//! protocol request when asked, approves version 2.0 (anything else is
//! answered not approved) and then sends the device info (vendor/product,
//! the HID class descriptor and a report descriptor like Hyper-V's:
//! 5 buttons, absolute X and Y in 0..=32767, a wheel); once the guest
//! acknowledges it, each pointer move
//! ([`ChannelEndpoint::mouse_move`]) is one 6-byte input report. Fault
//! injection sends what the guest must refuse ([`MouseFault`]).

use super::{ChannelEndpoint, ReceivedPacket};
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::packet::PacketType;
use vmbus_protocol::synthhid::{
    self, message_type, HidHeader, ProtocolResponse, HYPERV_MOUSE_REPORT_DESCRIPTOR,
};
use zerocopy::{FromBytes, IntoBytes};

/// Microsoft's vendor ID and the synthetic mouse's product ID.
pub const VENDOR: u16 = 0x045e;
pub const PRODUCT: u16 = 0x0621;

/// What the host sends that the guest must refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MouseFault {
    /// A device info whose class descriptor's `bLength` reaches past the
    /// message.
    DescriptorLength,
    /// A device info whose `wDescriptorLength` says 9 more bytes than
    /// arrived.
    ReportLength,
    /// An input report one byte longer than the descriptor says.
    BigReport,
    /// A pipe header whose size reaches past the packet.
    Short,
    /// A message followed by 16 bytes more than its pipe header says.
    Oversized,
    /// A HID message of type 9.
    UnknownType,
}

impl MouseFault {
    pub const USAGE: &'static str =
        "descriptor-length | report-length | big-report | short | oversized | unknown-type";

    pub fn parse(name: &str) -> Option<MouseFault> {
        Some(match name {
            "descriptor-length" => MouseFault::DescriptorLength,
            "report-length" => MouseFault::ReportLength,
            "big-report" => MouseFault::BigReport,
            "short" => MouseFault::Short,
            "oversized" => MouseFault::Oversized,
            "unknown-type" => MouseFault::UnknownType,
            _ => return None,
        })
    }
}

/// What the mouse host saw and sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MouseHost {
    /// The guest asked for 2.0 and was told yes.
    pub approved: bool,
    /// The guest acknowledged the device info: reports may flow.
    pub ready: bool,
    pub protocol_requests: u64,
    pub requested_version: Option<u32>,
    pub device_infos_sent: u64,
    pub acks: u64,
    pub reports_sent: u64,
    pub faults_sent: u64,
    /// Guest messages the host could not read.
    pub malformed: u64,
}

impl MouseHost {
    pub fn report(&self) -> alloc::string::String {
        alloc::format!(
            "approved {} ready {} protocol requests {} device infos {} acks {} reports sent {} faults sent {} malformed {}",
            self.approved,
            self.ready,
            self.protocol_requests,
            self.device_infos_sent,
            self.acks,
            self.reports_sent,
            self.faults_sent,
            self.malformed
        )
    }
}

/// `message` behind its pipe header.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = alloc::vec![0u8; message.len() + synthhid::PipeHeader::SIZE];
    let len = synthhid::frame(message, &mut out).unwrap_or(0);
    out.truncate(len);
    out
}

/// The device info message (without its pipe header).
fn device_info() -> Vec<u8> {
    let mut out =
        alloc::vec![0u8; synthhid::DeviceInfo::SIZE + HYPERV_MOUSE_REPORT_DESCRIPTOR.len()];
    let len = synthhid::device_info(VENDOR, PRODUCT, HYPERV_MOUSE_REPORT_DESCRIPTOR, &mut out)
        .unwrap_or(0);
    out.truncate(len);
    out
}

/// An input report message (without its pipe header) carrying `report`.
fn input_report(report: &[u8]) -> Vec<u8> {
    let mut message = HidHeader::new(message_type::INPUT_REPORT, report.len())
        .as_bytes()
        .to_vec();
    message.extend_from_slice(report);
    message
}

/// The 6-byte report of the descriptor: buttons, X, Y, wheel.
pub fn pointer_report(x: u16, y: u16, buttons: u8, wheel: i8) -> [u8; 6] {
    let x = x.min(0x7fff).to_le_bytes();
    let y = y.min(0x7fff).to_le_bytes();
    [buttons & 0x1f, x[0], x[1], y[0], y[1], wheel as u8]
}

impl ChannelEndpoint {
    pub(super) fn mouse_packet<M: GuestMemory>(
        &mut self,
        memory: &M,
        packet: ReceivedPacket,
    ) -> bool {
        if packet.packet_type == PacketType::Completion.wire() {
            return false;
        }
        let mut signal = false;
        if packet.completion_requested {
            signal |= self.send_completion(memory, packet.transaction_id, &[]);
        }
        let message = synthhid::PipeHeader::read_from_prefix(&packet.payload)
            .ok()
            .and_then(|(_, rest)| HidHeader::read_from_prefix(rest).ok())
            .map(|(header, body)| (header.message_type.get(), body));
        match message {
            Some((message_type::PROTOCOL_REQUEST, body)) if body.len() >= 4 => {
                let version = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                self.mouse.protocol_requests += 1;
                self.mouse.requested_version = Some(version);
                let approved = version == synthhid::VERSION_2_0;
                self.mouse.approved = approved;
                self.mouse.ready = false;
                let response = ProtocolResponse::new(version, approved);
                signal |= self.send_in_band(memory, 0, false, &framed(response.as_bytes()));
                if approved {
                    self.mouse.device_infos_sent += 1;
                    signal |= self.send_in_band(memory, 0, false, &framed(&device_info()));
                }
            }
            Some((message_type::INITIAL_DEVICE_INFO_ACK, _)) if self.mouse.approved => {
                self.mouse.acks += 1;
                self.mouse.ready = true;
            }
            _ => self.mouse.malformed += 1,
        }
        signal
    }

    /// Sends one input report (absolute, 0..=0x7fff both axes); `None`
    /// before the guest acknowledged the device info, else whether to
    /// signal.
    pub fn mouse_move<M: GuestMemory>(
        &mut self,
        memory: &M,
        x: u16,
        y: u16,
        buttons: u8,
        wheel: i8,
    ) -> Option<bool> {
        if !self.mouse.ready {
            return None;
        }
        self.mouse.reports_sent += 1;
        let message = input_report(&pointer_report(x, y, buttons, wheel));
        Some(self.send_in_band(memory, 0, false, &framed(&message)))
    }

    pub fn mouse_inject<M: GuestMemory>(&mut self, memory: &M, fault: MouseFault) -> Option<bool> {
        if !self.mouse.approved {
            return None;
        }
        let bytes = match fault {
            MouseFault::DescriptorLength => {
                let mut info = device_info();
                // bLength: the first byte of the class descriptor.
                info[synthhid::DeviceInfo::SIZE - synthhid::HidDescriptor::SIZE] = 250;
                framed(&info)
            }
            MouseFault::ReportLength => {
                let mut info = device_info();
                let at = synthhid::DeviceInfo::SIZE - 2;
                let said = u16::from_le_bytes([info[at], info[at + 1]]) + 9;
                info[at..at + 2].copy_from_slice(&said.to_le_bytes());
                framed(&info)
            }
            MouseFault::BigReport => {
                let mut report = pointer_report(1, 1, 0, 0).to_vec();
                report.push(0);
                framed(&input_report(&report))
            }
            MouseFault::Short => {
                let mut bytes = framed(&input_report(&pointer_report(1, 1, 0, 0)));
                bytes[4] = 0xf0;
                bytes
            }
            MouseFault::Oversized => {
                let mut bytes = framed(&input_report(&pointer_report(1, 1, 0, 0)));
                bytes.extend_from_slice(&[0; 16]);
                bytes
            }
            MouseFault::UnknownType => framed(HidHeader::new(9, 0).as_bytes()),
        };
        self.mouse.faults_sent += 1;
        Some(self.send_in_band(memory, 0, false, &bytes))
    }
}

impl<M: GuestMemory> crate::sim::Simulator<M> {
    fn mouse_call(&mut self, f: impl FnOnce(&mut ChannelEndpoint, &M) -> Option<bool>) -> bool {
        let Some(relid) = self.channel_of(crate::vmbus::DeviceKind::Mouse) else {
            return false;
        };
        matches!(
            self.with_channel(relid, f, |sent| *sent == Some(true)),
            Some(Some(_))
        )
    }

    /// Moves the synthetic mouse's pointer (absolute, 0..=0x7fff both
    /// axes; buttons bit 0 left, 1 right, 2 middle): false when its
    /// channel is not open or the guest has not acknowledged the device.
    pub fn move_pointer(&mut self, x: u16, y: u16, buttons: u8) -> bool {
        self.mouse_call(|e, m| e.mouse_move(m, x, y, buttons, 0))
    }

    /// Turns the wheel (with the pointer where it is given).
    pub fn scroll_pointer(&mut self, x: u16, y: u16, buttons: u8, wheel: i8) -> bool {
        self.mouse_call(|e, m| e.mouse_move(m, x, y, buttons, wheel))
    }

    /// Sends what the mouse's guest must refuse.
    pub fn mouse_inject(&mut self, fault: MouseFault) -> bool {
        self.mouse_call(|e, m| e.mouse_inject(m, fault))
    }

    /// The mouse host's counters (None: no mouse channel open).
    pub fn mouse_report(&self) -> Option<alloc::string::String> {
        let relid = self.channel_of(crate::vmbus::DeviceKind::Mouse)?;
        Some(self.vmbus.endpoint(relid)?.mouse.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_info_parses_as_the_guest_reads_it() {
        let mut packet = framed(&device_info());
        packet.resize(packet.len().next_multiple_of(8), 0);
        match synthhid::parse_host_message(&packet) {
            Ok(synthhid::HostMessage::DeviceInfo {
                info,
                report_descriptor,
                ..
            }) => {
                assert_eq!(info.vendor.get(), VENDOR);
                assert_eq!(report_descriptor, HYPERV_MOUSE_REPORT_DESCRIPTOR);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pointer_report(0xffff, 2, 0xff, -1),
            [0x1f, 0xff, 0x7f, 2, 0, 0xff]
        );
    }
}
