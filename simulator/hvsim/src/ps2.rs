//! The PC's keyboard controller (i8042: data port 0x60, status and
//! command port 0x64; keyboard on ISA IRQ 1, the aux port's mouse on IRQ
//! 12) as the simulated host's own keyboard and mouse in the seL4 image:
//! what is typed and moved in QEMU's window becomes the synthetic
//! keyboard's keystrokes and the synthetic mouse's absolute position.
//!
//! At [`I8042::attach`] both ports are enabled with the controller's
//! translation on (so the keyboard's bytes arrive in scan code set 1, the
//! set Hyper-V's synthetic keyboard carries), the mouse is set to its
//! defaults and told to report, and only then the two interrupts are
//! enabled. [`I8042::poll`] reads what the controller holds, routes each
//! byte by the status register's aux bit, and decodes it:
//! [`KeyboardDecoder`] turns set-1 bytes (with the 0xE0 and 0xE1
//! prefixes) into [`Scancode`]s; [`MouseDecoder`] assembles the standard
//! 3-byte packets and accumulates the relative motion into an absolute
//! position, 0..=[`ABSOLUTE_MAX`] on both axes as the synthetic mouse
//! reports it, over a screen of the given size in pixels.
//!
//! The port access is [`I8042Ports`] (the component implements it over its
//! IO-port capabilities), tested here against a model. Trusts nothing the
//! controller or the devices send: every wait and every read loop is
//! bounded, a packet out of step is dropped until a byte that can start
//! one arrives, overflowing motion is dropped, bytes with a parity or
//! timeout error are discarded, and each of these is counted.

/// Status register bits.
pub mod status {
    pub const OUTPUT_FULL: u8 = 0x01;
    pub const INPUT_FULL: u8 = 0x02;
    /// The byte in the output buffer is from the aux port (the mouse).
    pub const AUX_DATA: u8 = 0x20;
    pub const TIMEOUT: u8 = 0x40;
    pub const PARITY: u8 = 0x80;
}

/// Controller commands (written to the command port).
pub mod command {
    pub const READ_CONFIG: u8 = 0x20;
    pub const WRITE_CONFIG: u8 = 0x60;
    pub const DISABLE_AUX: u8 = 0xa7;
    pub const ENABLE_AUX: u8 = 0xa8;
    pub const DISABLE_KEYBOARD: u8 = 0xad;
    pub const ENABLE_KEYBOARD: u8 = 0xae;
    /// The next data byte goes to the aux device.
    pub const WRITE_AUX: u8 = 0xd4;
}

/// The controller's configuration byte.
pub mod config {
    pub const KEYBOARD_INTERRUPT: u8 = 0x01;
    pub const AUX_INTERRUPT: u8 = 0x02;
    pub const KEYBOARD_CLOCK_OFF: u8 = 0x10;
    pub const AUX_CLOCK_OFF: u8 = 0x20;
    pub const TRANSLATION: u8 = 0x40;
}

/// Device commands and answers.
pub mod device {
    pub const SET_DEFAULTS: u8 = 0xf6;
    pub const ENABLE_REPORTING: u8 = 0xf4;
    pub const ACK: u8 = 0xfa;
    pub const RESEND: u8 = 0xfe;
}

/// The synthetic mouse's absolute range, both axes.
pub const ABSOLUTE_MAX: u16 = 0x7fff;
/// Polls of the status register before a wait gives up (QEMU answers at
/// once; a real controller within microseconds).
pub const WAIT_POLLS: u32 = 100_000;
/// Bytes one [`I8042::poll`] reads at most (the controller holds one at a
/// time; a device that keeps sending cannot hold the host here).
pub const POLL_BYTES: usize = 64;

/// The controller's two ports.
pub trait I8042Ports {
    fn read_data(&mut self) -> u8;
    fn write_data(&mut self, value: u8);
    fn read_status(&mut self) -> u8;
    fn write_command(&mut self, value: u8);
}

/// One key going down or up, in scan code set 1: the code without the
/// break bit, and the prefix it came with (0xE0 extended, 0xE1 the Pause
/// key's). The synthetic keyboard's keystroke carries the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scancode {
    pub code: u16,
    pub e0: bool,
    pub e1: bool,
    pub released: bool,
}

/// What the devices reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ps2Event {
    Key(Scancode),
    /// The mouse's position after a packet (absolute, 0..=[`ABSOLUTE_MAX`])
    /// and its buttons (bit 0 left, bit 1 right, bit 2 middle).
    Pointer {
        x: u16,
        y: u16,
        buttons: u8,
    },
}

/// Counters of what was received and what was dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ps2Stats {
    pub keys: u64,
    pub packets: u64,
    /// Keyboard bytes that are answers, not keys (ACK, resend, errors).
    pub keyboard_other: u64,
    /// Mouse bytes dropped to find the start of a packet again.
    pub mouse_resyncs: u64,
    /// Packets whose motion overflowed (buttons kept, motion dropped).
    pub mouse_overflows: u64,
    /// Bytes the controller flagged with a parity or timeout error.
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Prefix {
    #[default]
    None,
    E0,
    E1,
}

/// Scan code set 1 bytes -> [`Scancode`]s.
#[derive(Debug, Default)]
pub struct KeyboardDecoder {
    prefix: Prefix,
}

impl KeyboardDecoder {
    /// The key a byte completes, if any. `None` for prefixes and for the
    /// keyboard's answers (counted in `stats`).
    pub fn feed(&mut self, byte: u8, stats: &mut Ps2Stats) -> Option<Scancode> {
        match byte {
            0xe0 => {
                self.prefix = Prefix::E0;
                None
            }
            0xe1 => {
                self.prefix = Prefix::E1;
                None
            }
            // Buffer overrun / key detection error, ACK, resend: no key
            // (0xfa and 0xfe would be the release of keys set 1 lacks).
            0x00 | 0xff | device::ACK | device::RESEND => {
                self.prefix = Prefix::None;
                stats.keyboard_other += 1;
                None
            }
            _ => {
                let prefix = core::mem::take(&mut self.prefix);
                stats.keys += 1;
                Some(Scancode {
                    code: u16::from(byte & 0x7f),
                    e0: prefix == Prefix::E0,
                    e1: prefix == Prefix::E1,
                    released: byte & 0x80 != 0,
                })
            }
        }
    }
}

/// Standard 3-byte PS/2 mouse packets -> an absolute position.
#[derive(Debug)]
pub struct MouseDecoder {
    packet: [u8; 3],
    have: usize,
    /// Screen size in pixels the motion moves over.
    width: u32,
    height: u32,
    /// Position in pixels.
    x: u32,
    y: u32,
}

impl MouseDecoder {
    /// A mouse at the centre of a `width`x`height` screen (at least 2x2).
    pub fn new(width: u32, height: u32) -> Self {
        let width = width.max(2);
        let height = height.max(2);
        MouseDecoder {
            packet: [0; 3],
            have: 0,
            width,
            height,
            x: width / 2,
            y: height / 2,
        }
    }

    fn absolute(pixel: u32, extent: u32) -> u16 {
        (u64::from(pixel) * u64::from(ABSOLUTE_MAX) / u64::from(extent - 1)) as u16
    }

    /// The position after the packet a byte completes, if it completes one.
    pub fn feed(&mut self, byte: u8, stats: &mut Ps2Stats) -> Option<Ps2Event> {
        // Bit 3 of a packet's first byte is always set: a byte without it
        // cannot start one (a lost byte, or an ACK), so wait for one that can.
        if self.have == 0 && byte & 0x08 == 0 {
            stats.mouse_resyncs += 1;
            return None;
        }
        self.packet[self.have] = byte;
        self.have += 1;
        if self.have < 3 {
            return None;
        }
        self.have = 0;
        let [flags, dx, dy] = self.packet;
        stats.packets += 1;
        if flags & 0xc0 != 0 {
            stats.mouse_overflows += 1;
        } else {
            let dx = i32::from(dx) - if flags & 0x10 != 0 { 256 } else { 0 };
            let dy = i32::from(dy) - if flags & 0x20 != 0 { 256 } else { 0 };
            // PS/2 counts y upwards; the screen downwards.
            self.x = (self.x as i32 + dx).clamp(0, self.width as i32 - 1) as u32;
            self.y = (self.y as i32 - dy).clamp(0, self.height as i32 - 1) as u32;
        }
        Some(Ps2Event::Pointer {
            x: Self::absolute(self.x, self.width),
            y: Self::absolute(self.y, self.height),
            buttons: flags & 0x07,
        })
    }
}

/// Why the controller is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ps2Error {
    /// The status port reads 0xff: nothing there.
    NoController,
    /// A wait for the controller ran out (what was awaited).
    Timeout(&'static str),
    /// The mouse answered a command with this instead of ACK.
    MouseRefused { command: u8, answer: u8 },
}

impl core::fmt::Display for Ps2Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Ps2Error::NoController => write!(f, "no i8042 (status reads 0xff)"),
            Ps2Error::Timeout(what) => write!(f, "the i8042 did not answer: {what}"),
            Ps2Error::MouseRefused { command, answer } => {
                write!(f, "the mouse answered {answer:#x} to {command:#x}")
            }
        }
    }
}

/// The controller with both devices reporting.
pub struct I8042<P: I8042Ports> {
    ports: P,
    keyboard: KeyboardDecoder,
    mouse: MouseDecoder,
    pub stats: Ps2Stats,
}

impl<P: I8042Ports> I8042<P> {
    /// Set the controller up (see the module comment); the mouse moves
    /// over a `width`x`height` screen.
    pub fn attach(ports: P, width: u32, height: u32) -> Result<Self, Ps2Error> {
        let mut controller = I8042 {
            ports,
            keyboard: KeyboardDecoder::default(),
            mouse: MouseDecoder::new(width, height),
            stats: Ps2Stats::default(),
        };
        if controller.ports.read_status() == 0xff {
            return Err(Ps2Error::NoController);
        }
        controller.command(command::DISABLE_KEYBOARD)?;
        controller.command(command::DISABLE_AUX)?;
        controller.flush();
        controller.command(command::READ_CONFIG)?;
        let old = controller.read(None, "the configuration byte")?;
        // Interrupts off until both devices are set up; clocks on;
        // translation to set 1.
        let quiet = (old
            & !(config::KEYBOARD_INTERRUPT
                | config::AUX_INTERRUPT
                | config::KEYBOARD_CLOCK_OFF
                | config::AUX_CLOCK_OFF))
            | config::TRANSLATION;
        controller.write_config(quiet)?;
        controller.command(command::ENABLE_KEYBOARD)?;
        controller.command(command::ENABLE_AUX)?;
        controller.mouse_command(device::SET_DEFAULTS)?;
        controller.mouse_command(device::ENABLE_REPORTING)?;
        controller.flush();
        controller.write_config(quiet | config::KEYBOARD_INTERRUPT | config::AUX_INTERRUPT)?;
        Ok(controller)
    }

    fn wait_input_empty(&mut self, what: &'static str) -> Result<(), Ps2Error> {
        for _ in 0..WAIT_POLLS {
            if self.ports.read_status() & status::INPUT_FULL == 0 {
                return Ok(());
            }
        }
        Err(Ps2Error::Timeout(what))
    }

    fn command(&mut self, value: u8) -> Result<(), Ps2Error> {
        self.wait_input_empty("a command")?;
        self.ports.write_command(value);
        Ok(())
    }

    fn write_config(&mut self, value: u8) -> Result<(), Ps2Error> {
        self.command(command::WRITE_CONFIG)?;
        self.wait_input_empty("the configuration byte")?;
        self.ports.write_data(value);
        Ok(())
    }

    /// The next byte, from the aux port if `aux` is `Some(true)`, the
    /// keyboard if `Some(false)`, either if `None`; bytes from the other
    /// are dropped (counted as the keyboard's answers or resyncs).
    fn read(&mut self, aux: Option<bool>, what: &'static str) -> Result<u8, Ps2Error> {
        for _ in 0..WAIT_POLLS {
            let state = self.ports.read_status();
            if state & status::OUTPUT_FULL == 0 {
                continue;
            }
            let byte = self.ports.read_data();
            let from_aux = state & status::AUX_DATA != 0;
            match aux {
                Some(wanted) if wanted != from_aux => {
                    if from_aux {
                        self.stats.mouse_resyncs += 1;
                    } else {
                        self.stats.keyboard_other += 1;
                    }
                }
                _ => return Ok(byte),
            }
        }
        Err(Ps2Error::Timeout(what))
    }

    fn mouse_command(&mut self, value: u8) -> Result<(), Ps2Error> {
        self.command(command::WRITE_AUX)?;
        self.wait_input_empty("a mouse command")?;
        self.ports.write_data(value);
        match self.read(Some(true), "the mouse's answer")? {
            device::ACK => Ok(()),
            answer => Err(Ps2Error::MouseRefused {
                command: value,
                answer,
            }),
        }
    }

    /// Drop what the controller holds (bounded).
    fn flush(&mut self) {
        for _ in 0..POLL_BYTES {
            if self.ports.read_status() & status::OUTPUT_FULL == 0 {
                return;
            }
            self.ports.read_data();
        }
    }

    /// Read and decode what the controller holds (at most [`POLL_BYTES`]),
    /// handing each event to `sink`. Returns the bytes read.
    pub fn poll(&mut self, mut sink: impl FnMut(Ps2Event)) -> usize {
        let mut read = 0;
        while read < POLL_BYTES {
            let state = self.ports.read_status();
            if state & status::OUTPUT_FULL == 0 {
                break;
            }
            let byte = self.ports.read_data();
            read += 1;
            if state & (status::TIMEOUT | status::PARITY) != 0 {
                self.stats.errors += 1;
                continue;
            }
            let event = if state & status::AUX_DATA != 0 {
                self.mouse.feed(byte, &mut self.stats)
            } else {
                self.keyboard.feed(byte, &mut self.stats).map(Ps2Event::Key)
            };
            if let Some(event) = event {
                sink(event);
            }
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;

    /// A model of QEMU's i8042: the configuration byte, the output buffer
    /// (byte, from aux) and a mouse that ACKs every command.
    #[derive(Default)]
    struct Model {
        config: u8,
        output: VecDeque<(u8, bool)>,
        pending: Option<u8>,
        commands: Vec<u8>,
        mouse_commands: Vec<u8>,
        mouse_answer: Option<u8>,
        stuck_input: bool,
        absent: bool,
        error_flags: u8,
    }

    impl I8042Ports for Model {
        fn read_data(&mut self) -> u8 {
            self.output.pop_front().map_or(0, |(byte, _)| byte)
        }
        fn write_data(&mut self, value: u8) {
            match self.pending.take() {
                Some(command::WRITE_CONFIG) => self.config = value,
                Some(command::WRITE_AUX) => {
                    self.mouse_commands.push(value);
                    let answer = self.mouse_answer.unwrap_or(device::ACK);
                    self.output.push_back((answer, true));
                }
                _ => self.output.push_back((device::ACK, false)),
            }
        }
        fn read_status(&mut self) -> u8 {
            if self.absent {
                return 0xff;
            }
            let mut value = if self.stuck_input {
                status::INPUT_FULL
            } else {
                0
            };
            if let Some(&(_, aux)) = self.output.front() {
                value |= status::OUTPUT_FULL | self.error_flags;
                if aux {
                    value |= status::AUX_DATA;
                }
            }
            value
        }
        fn write_command(&mut self, value: u8) {
            self.commands.push(value);
            match value {
                command::READ_CONFIG => self.output.push_back((self.config, false)),
                command::WRITE_CONFIG | command::WRITE_AUX => self.pending = Some(value),
                _ => {}
            }
        }
    }

    fn model() -> Model {
        Model {
            // As SeaBIOS leaves it: keyboard interrupt, translation, aux
            // clock off.
            config: 0x61,
            // A key pressed during boot, still in the buffer.
            output: VecDeque::from([(0x1c, false)]),
            ..Model::default()
        }
    }

    fn events(controller: &mut I8042<Model>) -> Vec<Ps2Event> {
        let mut seen = Vec::new();
        controller.poll(|event| seen.push(event));
        seen
    }

    fn key(code: u16, e0: bool, e1: bool, released: bool) -> Ps2Event {
        Ps2Event::Key(Scancode {
            code,
            e0,
            e1,
            released,
        })
    }

    #[test]
    fn attach_enables_both_ports_translation_and_then_interrupts() {
        let controller = I8042::attach(model(), 1024, 768).unwrap();
        let model = &controller.ports;
        assert_eq!(
            model.config,
            config::KEYBOARD_INTERRUPT | config::AUX_INTERRUPT | config::TRANSLATION
        );
        assert_eq!(
            model.mouse_commands,
            [device::SET_DEFAULTS, device::ENABLE_REPORTING]
        );
        assert!(model.commands.contains(&command::ENABLE_AUX));
        assert!(model.commands.contains(&command::ENABLE_KEYBOARD));
        // The last command writes the configuration with the interrupts on.
        assert_eq!(
            model.commands[model.commands.len() - 1],
            command::WRITE_CONFIG
        );
        assert!(model.output.is_empty(), "the stale key was flushed");
    }

    #[test]
    fn attach_fails_cleanly() {
        let absent = Model {
            absent: true,
            ..model()
        };
        assert_eq!(
            I8042::attach(absent, 1024, 768).err(),
            Some(Ps2Error::NoController)
        );
        let stuck = Model {
            stuck_input: true,
            ..model()
        };
        assert!(matches!(
            I8042::attach(stuck, 1024, 768).err(),
            Some(Ps2Error::Timeout(_))
        ));
        let refusing = Model {
            mouse_answer: Some(device::RESEND),
            ..model()
        };
        assert_eq!(
            I8042::attach(refusing, 1024, 768).err(),
            Some(Ps2Error::MouseRefused {
                command: device::SET_DEFAULTS,
                answer: device::RESEND
            })
        );
    }

    #[test]
    fn set_one_bytes_become_keys_with_their_prefixes() {
        let mut controller = I8042::attach(model(), 1024, 768).unwrap();
        // 'a' down and up, right Ctrl (E0 1D) down, Pause (E1 1D 45 E1 9D C5),
        // an ACK between.
        for byte in [
            0x1e, 0x9e, 0xe0, 0x1d, 0xfa, 0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5,
        ] {
            controller.ports.output.push_back((byte, false));
        }
        assert_eq!(
            events(&mut controller),
            [
                key(0x1e, false, false, false),
                key(0x1e, false, false, true),
                key(0x1d, true, false, false),
                key(0x1d, false, true, false),
                key(0x45, false, false, false),
                key(0x1d, false, true, true),
                key(0x45, false, false, true),
            ]
        );
        assert_eq!(controller.stats.keys, 7);
        assert_eq!(controller.stats.keyboard_other, 1);
    }

    #[test]
    fn mouse_packets_move_an_absolute_pointer_within_its_range() {
        let mut controller = I8042::attach(model(), 1024, 768).unwrap();
        let push = |c: &mut I8042<Model>, bytes: [u8; 3]| {
            for byte in bytes {
                c.ports.output.push_back((byte, true));
            }
        };
        // Right 10, up 20 (PS/2 y counts up), left button.
        push(&mut controller, [0x09, 10, 20]);
        // Left 765 in three packets (sign bit): past the left edge, clamped.
        for _ in 0..3 {
            push(&mut controller, [0x18, 0u8.wrapping_sub(255), 0]);
        }
        let seen = events(&mut controller);
        assert_eq!(
            seen[0],
            Ps2Event::Pointer {
                x: (522u32 * 0x7fff / 1023) as u16,
                y: (364u32 * 0x7fff / 767) as u16,
                buttons: 1
            }
        );
        assert_eq!(
            seen[2],
            Ps2Event::Pointer {
                x: (12u32 * 0x7fff / 1023) as u16,
                y: (364u32 * 0x7fff / 767) as u16,
                buttons: 0
            }
        );
        assert_eq!(
            seen[3],
            Ps2Event::Pointer {
                x: 0,
                y: (364u32 * 0x7fff / 767) as u16,
                buttons: 0
            }
        );
        // Down and right past the far edges: 0x7fff exactly.
        for _ in 0..10 {
            push(&mut controller, [0x28, 200, 0u8.wrapping_sub(200)]);
        }
        let last = *events(&mut controller).last().unwrap();
        assert_eq!(
            last,
            Ps2Event::Pointer {
                x: 0x7fff,
                y: 0x7fff,
                buttons: 0
            }
        );
    }

    #[test]
    fn a_mouse_out_of_step_or_overflowing_is_dropped_and_counted() {
        let mut controller = I8042::attach(model(), 1024, 768).unwrap();
        // A stray byte without bit 3, then a packet; then an overflowing one.
        for byte in [0x00, 0x08, 5, 0, 0xc8, 0xff, 0xff] {
            controller.ports.output.push_back((byte, true));
        }
        let seen = events(&mut controller);
        assert_eq!(seen.len(), 2);
        assert_eq!(controller.stats.mouse_resyncs, 1);
        assert_eq!(controller.stats.mouse_overflows, 1);
        // The overflowing packet moved nothing.
        assert_eq!(seen[0], seen[1]);
    }

    #[test]
    fn polling_is_bounded_and_flags_errors() {
        let mut controller = I8042::attach(model(), 1024, 768).unwrap();
        for _ in 0..(POLL_BYTES + 10) {
            controller.ports.output.push_back((0x1e, false));
        }
        assert_eq!(controller.poll(|_| {}), POLL_BYTES);
        controller.ports.error_flags = status::PARITY;
        assert_eq!(events(&mut controller), []);
        assert_eq!(controller.stats.errors, 10);
    }
}
