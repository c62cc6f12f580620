//! `console`: the system console.
//!
//! Owns the COM1 UART (IO ports 0x3f8..0x400, IRQ 4) and nothing else. Every
//! other component reaches it by a protected call on its end named
//! `console`; the message is text, printed after the caller's name (the
//! calling component, the generated `Caller`), one prefix per line.
//!
//! Trusts: nothing in messages: invalid UTF-8 is printed replaced, control
//! characters other than newline and tab are dropped. Writes: the UART.
//!
//! At start it enables the UART's transmitter-empty interrupt once, so the
//! IRQ path (IOAPIC -> notification -> `notified` -> `irq_ack`) is exercised
//! on every boot.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{Channel, ChannelSet, Component, Env, Refusal};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

const THR: u16 = 0;
const IER: u16 = 1;
const IIR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u32 = 0x20;
const IER_THR_EMPTY: u32 = 0x02;
/// OUT2 gates the UART's interrupt line on PC hardware.
const MCR_OUT2: u32 = 0x08;
const MCR_DTR_RTS: u32 = 0x03;

pub struct Console {
    /// Per channel: whether the next byte starts a line (needs the prefix).
    at_line_start: u64,
    irq_seen: bool,
}

fn put_byte(env: &mut dyn Env, byte: u8) {
    // The transmitter is fast; a bounded wait keeps a wedged UART from
    // hanging the console forever.
    for _ in 0..100_000 {
        if env.ioport_read(ioports::COM1, LSR, 1) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    env.ioport_write(ioports::COM1, THR, 1, byte as u32);
}

fn put_str(env: &mut dyn Env, text: &str) {
    for byte in text.bytes() {
        if byte == b'\n' {
            put_byte(env, b'\r');
        }
        put_byte(env, byte);
    }
}

/// The calling component's name (the generated `Caller` of the channel).
fn channel_name(channel: Channel) -> &'static str {
    Caller::on(channel).map_or("?", Caller::name)
}

impl Console {
    fn print_char(&mut self, env: &mut dyn Env, channel: Channel, ch: char) {
        if ch != '\n' && ch != '\t' && ch.is_control() {
            return;
        }
        if self.at_line_start & channel.bit() != 0 {
            put_str(env, "[");
            put_str(env, channel_name(channel));
            put_str(env, "] ");
            self.at_line_start &= !channel.bit();
        }
        let mut encoded = [0u8; 4];
        put_str(env, ch.encode_utf8(&mut encoded));
        if ch == '\n' {
            self.at_line_start |= channel.bit();
        }
    }

    fn print_from(&mut self, env: &mut dyn Env, channel: Channel, text: &[u8]) {
        for chunk in text.utf8_chunks() {
            for ch in chunk.valid().chars() {
                self.print_char(env, channel, ch);
            }
            if !chunk.invalid().is_empty() {
                self.print_char(env, channel, char::REPLACEMENT_CHARACTER);
            }
        }
    }
}

impl Component for Console {
    fn init(env: &mut dyn Env) -> Self {
        // 8 data bits, no parity, one stop bit; DTR, RTS and OUT2 on.
        env.ioport_write(ioports::COM1, LCR, 1, 0x03);
        env.ioport_write(ioports::COM1, MCR, 1, MCR_DTR_RTS | MCR_OUT2);
        put_str(env, "[console] ready\n");
        env.ioport_write(ioports::COM1, IER, 1, IER_THR_EMPTY);
        Console {
            at_line_start: u64::MAX,
            irq_seen: false,
        }
    }

    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        if channels.contains(irqs::SERIAL) {
            // Reading IIR clears a transmitter-empty interrupt; we only
            // wanted to see one, so switch it off again.
            let _ = env.ioport_read(ioports::COM1, IIR, 1);
            env.ioport_write(ioports::COM1, IER, 1, 0);
            env.irq_ack(irqs::SERIAL);
            if !self.irq_seen {
                self.irq_seen = true;
                put_str(
                    env,
                    "[console] serial interrupt received and acknowledged\n",
                );
            }
        }
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::console(channel, message, reply, |caller, text| {
            self.print_from(env, caller.channel(), &text);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use env_double::EnvDouble;
    use std::vec::Vec;

    /// The bytes written to the UART's transmit register.
    fn printed(env: &EnvDouble) -> Vec<u8> {
        env.ioport_writes
            .iter()
            .filter(|(port, offset, _, _)| *port == ioports::COM1 && *offset == THR)
            .map(|(_, _, _, value)| *value as u8)
            .collect()
    }

    #[test]
    fn prints_console_messages_with_the_callers_name_and_refuses_the_rest() {
        let mut env = EnvDouble::new();
        env.set_ioport(ioports::COM1, LSR, LSR_THR_EMPTY);
        let mut console = Console::init(&mut env);
        env.ioport_writes.clear();
        let mut message = [0u8; component_api::MAX_MESSAGE];
        let used = component_api::console::message(&mut message, b"hi\n").unwrap();
        let mut reply = [0u8; 16];
        assert_eq!(
            console.protected(&mut env, channels::CLIENT, &message[..used], &mut reply),
            Ok(component_api::protocol::HEADER_BYTES),
            "an empty reply of the console protocol"
        );
        assert_eq!(printed(&env), b"[client] hi\r\n");
        // Untagged text (or another protocol's message) is refused.
        assert_eq!(
            console.protected(&mut env, channels::CLIENT, b"hi\n", &mut reply),
            Err(Refusal::WRONG_PROTOCOL)
        );
        assert_eq!(printed(&env).len(), b"[client] hi\r\n".len());
    }
}
