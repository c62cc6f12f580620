//! The host's side of the synthetic keyboard (`vmbus_protocol::synthkbd`),
//! as Hyper-V's keyboard VSP behaves: it completes the guest's protocol
//! request when asked, accepts version 1.0 only (anything else is
//! answered not accepted), and then sends a keystroke per key transition
//! the operator (or the scenario, or QEMU's PS/2 keyboard on seL4) types:
//! [`ChannelEndpoint::keyboard_type`]. Fault injection sends what the
//! guest must refuse ([`KeyboardFault`]).

use super::{ChannelEndpoint, ReceivedPacket};
use crate::input_step::InputStep;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::packet::PacketType;
use vmbus_protocol::synthkbd::{self, info, message_type, Keystroke, ProtocolResponse};
use zerocopy::{FromBytes, IntoBytes};

/// One key transition as the host sends it: a set-1 make code (without
/// the break bit) and its prefixes, or a UTF-16 unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostKey {
    pub code: u16,
    pub e0: bool,
    pub e1: bool,
    pub released: bool,
    pub unicode: bool,
}

impl HostKey {
    pub fn make(code: u16) -> HostKey {
        HostKey {
            code,
            ..HostKey::default()
        }
    }

    pub fn release(code: u16) -> HostKey {
        HostKey {
            code,
            released: true,
            ..HostKey::default()
        }
    }

    /// The keystroke's info flags.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.unicode {
            flags |= info::UNICODE;
        }
        if self.released {
            flags |= info::BREAK;
        }
        if self.e0 {
            flags |= info::E0;
        }
        if self.e1 {
            flags |= info::E1;
        }
        flags
    }
}

/// Left shift's set-1 make code.
pub const LEFT_SHIFT: u16 = 0x2a;

pub use crate::input_step::us_scan_code;

/// `text` as key transitions on a US keyboard: make and break per
/// character, shift pressed around the characters that need it. `None`
/// names the first character without a key.
pub fn text_strokes(text: &str) -> Result<Vec<HostKey>, char> {
    let mut strokes = Vec::new();
    for ch in text.chars() {
        let (code, shift) = us_scan_code(ch).ok_or(ch)?;
        if shift {
            strokes.push(HostKey::make(LEFT_SHIFT));
        }
        strokes.push(HostKey::make(code));
        strokes.push(HostKey::release(code));
        if shift {
            strokes.push(HostKey::release(LEFT_SHIFT));
        }
    }
    Ok(strokes)
}

/// What the host sends that the guest must refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyboardFault {
    /// A keystroke with an info flag the protocol does not define.
    UnknownFlags,
    /// A keystroke cut short.
    Short,
    /// A keystroke followed by 16 more bytes.
    Oversized,
    /// A message of type 9.
    UnknownType,
}

impl KeyboardFault {
    pub const USAGE: &'static str = "unknown-flags | short | oversized | unknown-type";

    pub fn parse(name: &str) -> Option<KeyboardFault> {
        Some(match name {
            "unknown-flags" => KeyboardFault::UnknownFlags,
            "short" => KeyboardFault::Short,
            "oversized" => KeyboardFault::Oversized,
            "unknown-type" => KeyboardFault::UnknownType,
            _ => return None,
        })
    }
}

/// What the keyboard host saw and sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyboardHost {
    /// The guest asked for 1.0 and was told yes.
    pub ready: bool,
    pub protocol_requests: u64,
    /// The version of the last request.
    pub requested_version: Option<u32>,
    pub keys_sent: u64,
    pub faults_sent: u64,
    /// Guest messages the host could not read.
    pub malformed: u64,
    /// The last LED state the guest sent.
    pub leds: Option<u16>,
}

impl KeyboardHost {
    pub fn report(&self) -> alloc::string::String {
        alloc::format!(
            "ready {} protocol requests {} keys sent {} faults sent {} malformed {} leds {:?}",
            self.ready,
            self.protocol_requests,
            self.keys_sent,
            self.faults_sent,
            self.malformed,
            self.leds
        )
    }
}

impl ChannelEndpoint {
    pub(super) fn keyboard_packet<M: GuestMemory>(
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
        let Ok((header, _)) = synthkbd::MessageHeader::read_from_prefix(&packet.payload) else {
            self.keyboard.malformed += 1;
            return signal;
        };
        match header.message_type.get() {
            message_type::PROTOCOL_REQUEST => {
                let Ok((request, _)) = synthkbd::ProtocolRequest::read_from_prefix(&packet.payload)
                else {
                    self.keyboard.malformed += 1;
                    return signal;
                };
                let version = request.version.get();
                self.keyboard.protocol_requests += 1;
                self.keyboard.requested_version = Some(version);
                let accepted = version == synthkbd::VERSION_1_0;
                self.keyboard.ready = accepted;
                let response = ProtocolResponse::new(accepted);
                signal |= self.send_in_band(memory, 0, false, response.as_bytes());
            }
            message_type::LED_INDICATORS => {
                match synthkbd::LedIndicators::read_from_prefix(&packet.payload) {
                    Ok((leds, _)) => self.keyboard.leds = Some(leds.leds.get()),
                    Err(_) => self.keyboard.malformed += 1,
                }
            }
            _ => self.keyboard.malformed += 1,
        }
        signal
    }

    /// Sends one key transition; `None` if the guest has not been told
    /// yes to the protocol (the host does not type into a guest that has
    /// not asked), else whether to signal.
    pub fn keyboard_type<M: GuestMemory>(&mut self, memory: &M, key: HostKey) -> Option<bool> {
        if !self.keyboard.ready {
            return None;
        }
        self.keyboard.keys_sent += 1;
        let stroke = Keystroke::new(key.code, key.flags());
        Some(self.send_in_band(memory, 0, false, stroke.as_bytes()))
    }

    pub fn keyboard_inject<M: GuestMemory>(
        &mut self,
        memory: &M,
        fault: KeyboardFault,
    ) -> Option<bool> {
        if !self.keyboard.ready {
            return None;
        }
        let stroke = Keystroke::new(0x1e, 0);
        let bytes: Vec<u8> = match fault {
            KeyboardFault::UnknownFlags => Keystroke::new(0x1e, 0x10).as_bytes().to_vec(),
            KeyboardFault::Short => stroke.as_bytes()[..6].to_vec(),
            KeyboardFault::Oversized => {
                let mut bytes = stroke.as_bytes().to_vec();
                bytes.extend_from_slice(&[0; 16]);
                bytes
            }
            KeyboardFault::UnknownType => {
                let mut bytes = stroke.as_bytes().to_vec();
                bytes[0] = 9;
                bytes
            }
        };
        self.keyboard.faults_sent += 1;
        Some(self.send_in_band(memory, 0, false, &bytes))
    }
}

impl<M: GuestMemory> crate::sim::Simulator<M> {
    fn keyboard_call(&mut self, f: impl FnOnce(&mut ChannelEndpoint, &M) -> Option<bool>) -> bool {
        let Some(relid) = self.channel_of(crate::vmbus::DeviceKind::Keyboard) else {
            return false;
        };
        matches!(
            self.with_channel(relid, f, |sent| *sent == Some(true)),
            Some(Some(_))
        )
    }

    /// Types one key transition on the synthetic keyboard: false when
    /// its channel is not open or the guest has not negotiated.
    pub fn type_key(&mut self, stroke: HostKey) -> bool {
        self.keyboard_call(|e, m| e.keyboard_type(m, stroke))
    }

    /// Sends what the keyboard's guest must refuse.
    pub fn keyboard_inject(&mut self, fault: KeyboardFault) -> bool {
        self.keyboard_call(|e, m| e.keyboard_inject(m, fault))
    }

    /// Whether `step`'s device has negotiated (a step before that waits).
    pub fn input_ready(&self, step: &InputStep) -> bool {
        let (kind, ready): (_, fn(&ChannelEndpoint) -> bool) = match step {
            InputStep::Key { .. } | InputStep::Type(_) | InputStep::KeyboardFault(_) => {
                (crate::vmbus::DeviceKind::Keyboard, |e| e.keyboard.ready)
            }
            InputStep::Mouse { .. } | InputStep::MouseFault(_) => {
                (crate::vmbus::DeviceKind::Mouse, |e| e.mouse.ready)
            }
        };
        self.channel_of(kind)
            .and_then(|relid| self.vmbus.endpoint(relid))
            .is_some_and(ready)
    }

    /// Runs an operator or scenario input step (`hvsim::input_step`):
    /// what it did, as the operator sees it.
    pub fn input_step(&mut self, step: &InputStep) -> alloc::string::String {
        use alloc::format;
        match step {
            InputStep::Key { code, e0, released } => format!(
                "{}",
                self.type_key(HostKey {
                    code: *code,
                    e0: *e0,
                    released: *released,
                    ..HostKey::default()
                })
            ),
            InputStep::Type(text) => match text_strokes(text) {
                Ok(strokes) => {
                    let sent = strokes.iter().filter(|key| self.type_key(**key)).count();
                    format!("{sent} of {} key transitions sent", strokes.len())
                }
                Err(ch) => format!("no US key for {ch:?}"),
            },
            InputStep::Mouse { x, y, buttons } => {
                format!("{}", self.move_pointer(*x, *y, *buttons))
            }
            InputStep::KeyboardFault(name) => match KeyboardFault::parse(name) {
                Some(fault) => format!("{}", self.keyboard_inject(fault)),
                None => format!("faults: {}", KeyboardFault::USAGE),
            },
            InputStep::MouseFault(name) => match crate::channel::mouse::MouseFault::parse(name) {
                Some(fault) => format!("{}", self.mouse_inject(fault)),
                None => format!("faults: {}", crate::channel::mouse::MouseFault::USAGE),
            },
        }
    }

    /// The keyboard host's counters (None: no keyboard channel open).
    pub fn keyboard_report(&self) -> Option<alloc::string::String> {
        let relid = self.channel_of(crate::vmbus::DeviceKind::Keyboard)?;
        Some(self.vmbus.endpoint(relid)?.keyboard.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_typed_as_us_scan_codes_with_shift() {
        let strokes = text_strokes("aA1!").unwrap();
        let codes: Vec<(u16, bool)> = strokes.iter().map(|k| (k.code, k.released)).collect();
        assert_eq!(
            codes,
            [
                (0x1e, false),
                (0x1e, true),
                (LEFT_SHIFT, false),
                (0x1e, false),
                (0x1e, true),
                (LEFT_SHIFT, true),
                (0x02, false),
                (0x02, true),
                (LEFT_SHIFT, false),
                (0x02, false),
                (0x02, true),
                (LEFT_SHIFT, true),
            ]
        );
        assert_eq!(us_scan_code('m'), Some((0x32, false)));
        assert_eq!(us_scan_code('?'), Some((0x35, true)));
        assert_eq!(us_scan_code(' '), Some((0x39, false)));
        assert_eq!(us_scan_code('0'), Some((0x0b, false)));
        assert_eq!(us_scan_code('p'), Some((0x19, false)));
        assert_eq!(us_scan_code('`'), Some((0x29, false)));
        assert_eq!(us_scan_code('\\'), Some((0x2b, false)));
        assert_eq!(text_strokes("é"), Err('é'));
    }

    #[test]
    fn the_fault_names_are_the_steps() {
        for name in crate::input_step::KEYBOARD_FAULTS {
            assert!(KeyboardFault::parse(name).is_some(), "{name}");
        }
        for name in crate::input_step::MOUSE_FAULTS {
            assert!(
                crate::channel::mouse::MouseFault::parse(name).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn flags_are_the_protocols() {
        let key = HostKey {
            code: 0x48,
            e0: true,
            e1: false,
            released: true,
            unicode: false,
        };
        assert_eq!(key.flags(), info::E0 | info::BREAK);
    }
}
