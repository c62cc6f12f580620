//! Key strokes from the synthetic keyboard to editing keys.
//!
//! Scan codes (set 1, E0/E1 prefixes, make and break) go through
//! pc-keyboard's decoder with its US 104-key layout, which keeps the
//! modifiers (shift, caps lock, num lock, ctrl: ctrl+letter becomes
//! U+0001..U+001A). A stroke with the unicode flag is a UTF-16 unit the
//! host typed: taken on make, a lone surrogate dropped.

use pc_keyboard::{layouts::Us104Key, DecodedKey, HandleControl, KeyCode, ScancodeSet1};
use vmbus_ipc::keyboard::{KeyStroke, Prefix};

/// What the line editor acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Up,
    Down,
    Home,
    End,
    /// Ctrl+C: drop the line.
    Cancel,
    /// Ctrl+L: clear the log.
    Clear,
}

pub struct Decoder {
    keyboard: pc_keyboard::Keyboard<Us104Key, ScancodeSet1>,
    /// Strokes the decoder did not know (codes past set 1, unknown keys).
    pub unknown: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            keyboard: pc_keyboard::Keyboard::new(
                ScancodeSet1::new(),
                Us104Key,
                HandleControl::MapLettersToUnicode,
            ),
            unknown: 0,
        }
    }

    /// The key a stroke means, if any (modifiers and releases change
    /// state only).
    pub fn key(&mut self, stroke: &KeyStroke) -> Option<Key> {
        if stroke.unicode {
            if stroke.released {
                return None;
            }
            return match char::from_u32(u32::from(stroke.code)) {
                Some(ch) => from_char(ch),
                None => {
                    self.unknown += 1;
                    None
                }
            };
        }
        // A set 1 make code is 7 bits; the break bit travels in `released`.
        let Ok(code) = u8::try_from(stroke.code) else {
            self.unknown += 1;
            return None;
        };
        if code >= 0x80 {
            self.unknown += 1;
            return None;
        }
        let prefix = match stroke.prefix {
            Prefix::None => None,
            Prefix::E0 => Some(0xe0),
            Prefix::E1 => Some(0xe1),
        };
        if let Some(prefix) = prefix {
            // Only moves the decoder into its extended state.
            let _ = self.keyboard.add_byte(prefix);
        }
        let byte = if stroke.released { code | 0x80 } else { code };
        let event = match self.keyboard.add_byte(byte) {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(_) => {
                self.unknown += 1;
                return None;
            }
        };
        match self.keyboard.process_keyevent(event)? {
            DecodedKey::Unicode(ch) => from_char(ch),
            DecodedKey::RawKey(code) => match code {
                KeyCode::ArrowLeft => Some(Key::Left),
                KeyCode::ArrowRight => Some(Key::Right),
                KeyCode::ArrowUp => Some(Key::Up),
                KeyCode::ArrowDown => Some(Key::Down),
                KeyCode::Home => Some(Key::Home),
                KeyCode::End => Some(Key::End),
                _ => None,
            },
        }
    }
}

fn from_char(ch: char) -> Option<Key> {
    match ch {
        '\n' | '\r' => Some(Key::Enter),
        '\u{8}' => Some(Key::Backspace),
        '\u{7f}' => Some(Key::Delete),
        '\u{3}' => Some(Key::Cancel),
        '\u{c}' => Some(Key::Clear),
        '\t' => Some(Key::Char(' ')),
        ch if ch.is_control() => None,
        ch => Some(Key::Char(ch)),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn stroke(code: u16, prefix: Prefix, released: bool) -> KeyStroke {
        KeyStroke {
            code,
            prefix,
            released,
            unicode: false,
        }
    }

    /// Press and release each code (no prefix); the keys that came out.
    fn tap(decoder: &mut Decoder, codes: &[u16]) -> Vec<Key> {
        let mut keys = Vec::new();
        for &code in codes {
            keys.extend(decoder.key(&stroke(code, Prefix::None, false)));
            keys.extend(decoder.key(&stroke(code, Prefix::None, true)));
        }
        keys
    }

    fn text(keys: &[Key]) -> std::string::String {
        keys.iter()
            .filter_map(|k| match k {
                Key::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn letters_digits_and_punctuation_on_a_us_layout() {
        let mut decoder = Decoder::new();
        // h e l p space 1 - / ;
        let keys = tap(
            &mut decoder,
            &[0x23, 0x12, 0x26, 0x19, 0x39, 0x02, 0x0c, 0x35, 0x27],
        );
        assert_eq!(text(&keys), "help 1-/;");
        assert_eq!(tap(&mut decoder, &[0x1c]), [Key::Enter]);
        assert_eq!(tap(&mut decoder, &[0x0e]), [Key::Backspace]);
    }

    #[test]
    fn shift_and_caps_lock() {
        let mut decoder = Decoder::new();
        // Left shift held: a 1 /.
        assert_eq!(decoder.key(&stroke(0x2a, Prefix::None, false)), None);
        let shifted = tap(&mut decoder, &[0x1e, 0x02, 0x35]);
        assert_eq!(decoder.key(&stroke(0x2a, Prefix::None, true)), None);
        assert_eq!(text(&shifted), "A!?");
        assert_eq!(text(&tap(&mut decoder, &[0x1e])), "a");
        // Caps lock toggles letters only.
        tap(&mut decoder, &[0x3a]);
        assert_eq!(text(&tap(&mut decoder, &[0x1e, 0x02])), "A1");
        tap(&mut decoder, &[0x3a]);
        assert_eq!(text(&tap(&mut decoder, &[0x1e])), "a");
    }

    #[test]
    fn e0_prefixed_arrows_and_ctrl_keys() {
        let mut decoder = Decoder::new();
        let e0 = |code, released| stroke(code, Prefix::E0, released);
        assert_eq!(decoder.key(&e0(0x48, false)), Some(Key::Up));
        assert_eq!(decoder.key(&e0(0x48, true)), None);
        assert_eq!(decoder.key(&e0(0x50, false)), Some(Key::Down));
        assert_eq!(decoder.key(&e0(0x4b, false)), Some(Key::Left));
        assert_eq!(decoder.key(&e0(0x4d, false)), Some(Key::Right));
        assert_eq!(decoder.key(&e0(0x53, false)), Some(Key::Delete));
        // Keypad enter.
        assert_eq!(decoder.key(&e0(0x1c, false)), Some(Key::Enter));
        // Right ctrl (E0 1D) + c, + l.
        assert_eq!(decoder.key(&e0(0x1d, false)), None);
        assert_eq!(tap(&mut decoder, &[0x2e]), [Key::Cancel]);
        assert_eq!(tap(&mut decoder, &[0x26]), [Key::Clear]);
        assert_eq!(decoder.key(&e0(0x1d, true)), None);
        assert_eq!(text(&tap(&mut decoder, &[0x2e])), "c");
    }

    #[test]
    fn unicode_strokes_type_their_character_on_make() {
        let mut decoder = Decoder::new();
        let unicode = |code, released| KeyStroke {
            code,
            prefix: Prefix::None,
            released,
            unicode: true,
        };
        assert_eq!(decoder.key(&unicode(0xe9, false)), Some(Key::Char('é')));
        assert_eq!(decoder.key(&unicode(0xe9, true)), None);
        // A lone surrogate is no character.
        assert_eq!(decoder.key(&unicode(0xd800, false)), None);
        assert_eq!(decoder.unknown, 1);
    }

    #[test]
    fn codes_outside_set_1_and_e1_strokes_type_nothing_and_are_counted() {
        let mut decoder = Decoder::new();
        assert_eq!(decoder.key(&stroke(0x1e0, Prefix::None, false)), None);
        assert_eq!(decoder.key(&stroke(0x9e, Prefix::None, false)), None);
        assert_eq!(decoder.unknown, 2);
        // Pause (E1 1D 45): no key, and the decoder is back to normal.
        decoder.key(&stroke(0x1d, Prefix::E1, false));
        decoder.key(&stroke(0x45, Prefix::None, false));
        decoder.key(&stroke(0x1d, Prefix::E1, true));
        decoder.key(&stroke(0x45, Prefix::None, true));
        assert_eq!(text(&tap(&mut decoder, &[0x1e])), "a");
    }
}
