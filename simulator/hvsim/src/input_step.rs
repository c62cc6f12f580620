//! The keyboard and mouse steps the operator types and a scenario lists
//! (`input_steps`): `key CODE [e0] [up]`, `type TEXT`, `mouse X Y
//! [BUTTONS]`, `keyboard-fault NAME`, `mouse-fault NAME`. Parsed here
//! without the simulator (hvsim's build script checks scenarios with it),
//! run by `Simulator::input_step` (`channel/keyboard.rs`).

use alloc::format;
use alloc::string::{String, ToString};

/// The keyboard faults (`KeyboardFault::parse` takes the same names).
pub const KEYBOARD_FAULTS: &[&str] = &["unknown-flags", "short", "oversized", "unknown-type"];
/// The mouse faults (`MouseFault::parse` takes the same names).
pub const MOUSE_FAULTS: &[&str] = &[
    "descriptor-length",
    "report-length",
    "big-report",
    "short",
    "oversized",
    "unknown-type",
];

pub const USAGE: &str = "key CODE [e0] [up] | type TEXT | mouse X Y [BUTTONS] (0..=32767) | \
keyboard-fault unknown-flags|short|oversized|unknown-type | \
mouse-fault descriptor-length|report-length|big-report|short|oversized|unknown-type";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputStep {
    /// One key transition: a set-1 make code, E0 prefix, key up.
    Key {
        code: u16,
        e0: bool,
        released: bool,
    },
    /// Make and break per character on a US keyboard (shift around the
    /// characters that need it).
    Type(String),
    /// The pointer to (x, y), 0..=0x7fff, with these buttons.
    Mouse {
        x: u16,
        y: u16,
        buttons: u8,
    },
    KeyboardFault(String),
    MouseFault(String),
}

/// A number in decimal or 0x-hex.
pub fn parse_number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The set-1 make code of `ch` on a US keyboard and whether it needs
/// shift; `None` for characters the layout has no key for.
pub fn us_scan_code(ch: char) -> Option<(u16, bool)> {
    const ROWS: [(&str, &str, u16); 4] = [
        ("1234567890-=", "!@#$%^&*()_+", 0x02),
        ("qwertyuiop[]", "QWERTYUIOP{}", 0x10),
        ("asdfghjkl;'`", "ASDFGHJKL:\"~", 0x1e),
        ("\\zxcvbnm,./", "|ZXCVBNM<>?", 0x2b),
    ];
    match ch {
        ' ' => return Some((0x39, false)),
        '\n' => return Some((0x1c, false)),
        '\t' => return Some((0x0f, false)),
        _ => {}
    }
    for (plain, shifted, first) in ROWS {
        if let Some(index) = plain.chars().position(|c| c == ch) {
            return Some((first + index as u16, false));
        }
        if let Some(index) = shifted.chars().position(|c| c == ch) {
            return Some((first + index as u16, true));
        }
    }
    None
}

/// Whether `line` is an input step at all (its first word names one).
pub fn is_input_step(line: &str) -> bool {
    matches!(
        line.split_whitespace().next(),
        Some("key" | "type" | "mouse" | "keyboard-fault" | "mouse-fault")
    )
}

/// `line` as a step, or why it is none.
pub fn parse_input_step(line: &str) -> Result<InputStep, String> {
    let line = line.trim_start();
    if let Some(text) = line.strip_prefix("type ") {
        if let Some(bad) = text.chars().find(|&ch| us_scan_code(ch).is_none()) {
            return Err(format!("no US key for {bad:?}"));
        }
        return Ok(InputStep::Type(text.to_string()));
    }
    let words: alloc::vec::Vec<&str> = line.split_whitespace().collect();
    let usage = || USAGE.to_string();
    match words.as_slice() {
        ["key", code, flags @ ..] => {
            let code = parse_number(code)
                .and_then(|code| u16::try_from(code).ok())
                .ok_or_else(usage)?;
            let (mut e0, mut released) = (false, false);
            for flag in flags {
                match *flag {
                    "e0" if !e0 => e0 = true,
                    "up" if !released => released = true,
                    _ => return Err(usage()),
                }
            }
            Ok(InputStep::Key { code, e0, released })
        }
        ["mouse", x, y, rest @ ..] => {
            let axis = |text: &str| {
                parse_number(text)
                    .filter(|&v| v <= 0x7fff)
                    .map(|v| v as u16)
            };
            let buttons = match rest {
                [] => Some(0),
                [buttons] => parse_number(buttons).and_then(|b| u8::try_from(b).ok()),
                _ => None,
            };
            match (axis(x), axis(y), buttons) {
                (Some(x), Some(y), Some(buttons)) => Ok(InputStep::Mouse { x, y, buttons }),
                _ => Err(usage()),
            }
        }
        ["keyboard-fault", name] if KEYBOARD_FAULTS.contains(name) => {
            Ok(InputStep::KeyboardFault(name.to_string()))
        }
        ["mouse-fault", name] if MOUSE_FAULTS.contains(name) => {
            Ok(InputStep::MouseFault(name.to_string()))
        }
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_input_step("key 0x48 e0 up"),
            Ok(InputStep::Key {
                code: 0x48,
                e0: true,
                released: true
            })
        );
        assert_eq!(
            parse_input_step("type Hello, world"),
            Ok(InputStep::Type("Hello, world".into()))
        );
        assert_eq!(
            parse_input_step("mouse 16384 100 5"),
            Ok(InputStep::Mouse {
                x: 16384,
                y: 100,
                buttons: 5
            })
        );
        assert_eq!(
            parse_input_step("mouse-fault big-report"),
            Ok(InputStep::MouseFault("big-report".into()))
        );
        for bad in [
            "key",
            "key 0x10000",
            "key 1 up up",
            "mouse 32768 0",
            "mouse 1 2 256",
            "keyboard-fault nope",
            "type é",
            "jump",
        ] {
            assert!(parse_input_step(bad).is_err(), "{bad}");
        }
        assert!(is_input_step("type x") && !is_input_step("shutdown"));
    }
}
