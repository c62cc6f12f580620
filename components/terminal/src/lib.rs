//! `terminal`: the console a person sees on the VM's console.
//!
//! A text console (9x18 cells, embedded-graphics' mono font) drawn into
//! the `vram` region, shown by the synthetic video driver (`video`,
//! protocol `framebuffer`): the title line, the bus manager's device
//! table (`vmbus`, protocol `bus`), the drivers' events as they happen,
//! and a line editor on the synthetic keyboard (`keyboard`) with the
//! commands `help`, `status`, `kvp`, `disks` and `clear`. Mouse events
//! (`mouse`) move the pointer the host draws (`framebuffer::Pointer`).
//! Layout: [`console`]; docs/console.md, "Terminal".
//!
//! Only what changed is drawn and flushed: the grid keeps the changed
//! cells ([`grid`]), they are drawn into VRAM ([`paint`]) and named to
//! the driver as at most `MAX_RECTS` rectangles ([`dirt`]). A new
//! `Mode.generation` (the driver connected or restarted, a new
//! resolution, the host asking for updates again) redraws everything.
//!
//! Driven by notifications only (no timer): `video_event` (the mode
//! changed: ask `Info`), `keyboard_event` and `mouse_event` (events
//! queued: ask `Next`), `kvp_event`. The device table is read again on
//! any notification at most once a second, and by `status`.
//!
//! Trusts: nothing the drivers say beyond its type: a mode that does not
//! fit VRAM or is not 32 bits per pixel is refused, key codes outside set
//! 1 are counted and ignored, pointer positions are clamped. A driver
//! that does not answer (restarting) or answers `NotReady` is marked away
//! and asked again on its next notification.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod console;
pub mod dirt;
pub mod editor;
pub mod grid;
pub mod keys;
pub mod paint;
pub mod render;
pub mod status;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use component_api::{println, ChannelSet, Component, Env};
use console::Console;
use editor::Outcome;
use paint::{Geometry, Painted, Painter};
use render::Style;
use vmbus_ipc::bus::{self, DeviceStatus};
use vmbus_ipc::framebuffer::{self, Mode};
use vmbus_ipc::{keyboard, kvp, mouse};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// Rows of the device table asked for at most.
const MAX_DEVICES: u8 = 48;
/// KVP pairs listed per pool at most.
const MAX_PAIRS: u16 = 32;
/// `Next` calls per notification at most (each returns up to 32 events).
const MAX_DRAINS: usize = 16;
/// The device table is read again on a notification at most this often.
const STATUS_REFRESH_NS: u64 = 1_000_000_000;
/// Before the first mode: the grid of a 1024x768 screen.
const DEFAULT_COLS: usize = 1024 / render::CELL_WIDTH;
const DEFAULT_ROWS: usize = 768 / render::CELL_HEIGHT;

/// What the terminal counted (shown by `help`'s last line and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub flushes: u64,
    pub rects: u64,
    pub dirt_bytes: u64,
    pub full_redraws: u64,
    pub keys: u64,
    pub pointer_moves: u64,
    /// Calls refused or unanswered, and replies of the wrong kind.
    pub refusals: u64,
    /// Modes refused (too big for VRAM, not 32 bpp).
    pub bad_modes: u64,
    pub dropped_keys: u64,
    pub dropped_pointer_events: u64,
}

/// Whether a driver answered its last call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    Unknown,
    Here,
    Away,
}

pub struct Terminal {
    pub console: Console,
    painter: Option<Painter>,
    mode: Option<Mode>,
    vram: Option<component_api::Region>,
    keys: keys::Decoder,
    pointer: Option<(u16, u16)>,
    buttons: u8,
    devices: Vec<DeviceStatus>,
    devices_read_ns: Option<u64>,
    keyboard: Presence,
    mouse: Presence,
    pub stats: Stats,
}

fn event(console: &mut Console, text: &str) {
    console.log(text, Style::Event);
}

fn warning(console: &mut Console, text: &str) {
    console.log(text, Style::Warning);
}

impl Terminal {
    fn new(vram: Option<component_api::Region>) -> Terminal {
        Terminal {
            console: Console::new(DEFAULT_COLS, DEFAULT_ROWS),
            painter: None,
            mode: None,
            vram,
            keys: keys::Decoder::new(),
            pointer: None,
            buttons: 0,
            devices: Vec::new(),
            devices_read_ns: None,
            keyboard: Presence::Unknown,
            mouse: Presence::Unknown,
            stats: Stats::default(),
        }
    }

    pub fn mode(&self) -> Option<&Mode> {
        self.mode.as_ref()
    }

    fn title(&self) -> String {
        let video = match &self.mode {
            Some(m) => format!(
                "{}x{} synthvid {}.{}{}",
                m.width,
                m.height,
                m.version.0,
                m.version.1,
                if m.updates_wanted { "" } else { " (paused)" }
            ),
            None => "away".into(),
        };
        let presence = |p: Presence| match p {
            Presence::Unknown => "-",
            Presence::Here => "ok",
            Presence::Away => "away",
        };
        format!(
            " seL4 Hyper-V guest console    video: {video}    keyboard: {}    mouse: {}",
            presence(self.keyboard),
            presence(self.mouse)
        )
    }

    /// Ask the video driver for the mode; a new generation (or the
    /// driver back after being away) redraws everything.
    fn update_mode(&mut self, env: &mut dyn Env) {
        let reply = channels::VIDEO.call(env, &framebuffer::Request::Info);
        let mode = match reply {
            Ok(framebuffer::Reply::Info(mode)) => mode,
            Ok(framebuffer::Reply::NotReady) => {
                self.video_away("video: not ready (the driver is connecting or restarting)");
                return;
            }
            Ok(_) => {
                self.stats.refusals += 1;
                self.video_away("video: the driver answered Info with something else");
                return;
            }
            Err(error) => {
                self.stats.refusals += 1;
                let text = format!("video: no answer ({error:?})");
                self.video_away(&text);
                return;
            }
        };
        let vram_bytes = self.vram.map(|r| r.len()).unwrap_or(0);
        let Some(geometry) = Geometry::checked(
            mode.width,
            mode.height,
            mode.stride,
            mode.depth_bits,
            vram_bytes,
        ) else {
            self.stats.bad_modes += 1;
            let text = format!(
                "video: mode {}x{} {} bpp stride {} does not fit VRAM ({vram_bytes} bytes): not drawn",
                mode.width, mode.height, mode.depth_bits, mode.stride
            );
            self.video_away(&text);
            return;
        };
        let same = self
            .mode
            .as_ref()
            .is_some_and(|old| old.generation == mode.generation);
        if same {
            if let Some(old) = &self.mode {
                if old.updates_wanted != mode.updates_wanted {
                    let text = if mode.updates_wanted {
                        "video: the host wants updates again"
                    } else {
                        "video: the host wants no updates for now"
                    };
                    event(&mut self.console, text);
                }
            }
            self.mode = Some(mode);
            return;
        }
        event(
            &mut self.console,
            &format!(
                "video: {}x{}, {} bpp, stride {}, synthvid {}.{}, generation {}{}",
                mode.width,
                mode.height,
                mode.depth_bits,
                mode.stride,
                mode.version.0,
                mode.version.1,
                mode.generation,
                if mode.resolutions.is_empty() {
                    String::new()
                } else {
                    format!(", {} resolutions offered", mode.resolutions.len())
                }
            ),
        );
        if geometry.cols() != self.console.grid.cols()
            || geometry.rows() != self.console.grid.rows()
        {
            self.console.resize(geometry.cols(), geometry.rows());
        }
        self.painter = Some(Painter::new(geometry));
        self.mode = Some(mode);
        self.redraw(env);
        // The host forgets the pointer with the mode.
        if let Some((x, y)) = self.pointer {
            self.send_pointer(env, x, y);
        }
    }

    fn video_away(&mut self, text: &str) {
        if self.mode.is_some() || self.painter.is_some() {
            warning(&mut self.console, text);
        } else if !self.console.log_lines().any(|line| line == text) {
            // Said once while away, not at every notification.
            warning(&mut self.console, text);
        }
        self.mode = None;
        self.painter = None;
    }

    /// Draw everything and flush the whole screen.
    fn redraw(&mut self, env: &mut dyn Env) {
        let title = self.title();
        self.console.set_title(&title);
        self.console.compose();
        let (Some(painter), Some(vram)) = (self.painter.as_mut(), self.vram.as_mut()) else {
            return;
        };
        let painted = painter.paint_all(&mut self.console.grid, vram);
        self.stats.full_redraws += 1;
        self.flush(env, painted);
    }

    /// Compose, draw what changed and flush it.
    fn show(&mut self, env: &mut dyn Env) {
        let title = self.title();
        self.console.set_title(&title);
        self.console.compose();
        let (Some(painter), Some(vram)) = (self.painter.as_mut(), self.vram.as_mut()) else {
            // Kept dirty: drawn when video is back (then all of it).
            return;
        };
        if !self.console.grid.is_dirty() {
            return;
        }
        let spans = self.console.grid.take_dirty();
        let painted = painter.paint(&self.console.grid, &spans, vram);
        self.flush(env, painted);
    }

    fn flush(&mut self, env: &mut dyn Env, painted: Painted) {
        if painted.failed_writes > 0 {
            println!(
                env,
                "terminal: {} VRAM writes out of bounds", painted.failed_writes
            );
        }
        if painted.rects.is_empty() {
            return;
        }
        let request = framebuffer::Request::Flush {
            rects: painted.rects.clone(),
        };
        match channels::VIDEO.call(env, &request) {
            Ok(framebuffer::Reply::Flushed { .. }) => {
                self.stats.flushes += 1;
                self.stats.rects += painted.rects.len() as u64;
                self.stats.dirt_bytes += painted.dirt_bytes;
            }
            Ok(framebuffer::Reply::NotReady) => {
                // What was drawn is in VRAM but not on the host's screen:
                // the next mode redraws it all.
                self.video_away("video: not ready for a flush (the driver is restarting?)");
            }
            other => {
                self.stats.refusals += 1;
                let text = format!("video: flush refused ({other:?})");
                self.video_away(&text);
            }
        }
    }

    fn send_pointer(&mut self, env: &mut dyn Env, x: u16, y: u16) {
        if self.mode.is_none() {
            return;
        }
        let request = framebuffer::Request::Pointer {
            x,
            y,
            visible: true,
        };
        match channels::VIDEO.call(env, &request) {
            Ok(framebuffer::Reply::Done) => self.stats.pointer_moves += 1,
            Ok(framebuffer::Reply::NotReady) => {
                self.video_away("video: not ready for the pointer");
            }
            _ => self.stats.refusals += 1,
        }
    }

    fn presence_changed(console: &mut Console, name: &str, was: Presence, now: Presence) {
        match (was, now) {
            (Presence::Here, Presence::Away) => warning(
                console,
                &format!("{name}: no answer (the driver is restarting?)"),
            ),
            (Presence::Away, Presence::Here) => event(console, &format!("{name}: back")),
            (Presence::Unknown, Presence::Here) => event(console, &format!("{name}: connected")),
            (Presence::Unknown, Presence::Away) => {
                warning(console, &format!("{name}: no answer yet"))
            }
            _ => {}
        }
    }

    fn read_keyboard(&mut self, env: &mut dyn Env) {
        for _ in 0..MAX_DRAINS {
            let reply = channels::KEYBOARD.call(env, &keyboard::Request::Next);
            let (strokes, dropped) = match reply {
                Ok(keyboard::Reply::Keys { keys, dropped }) => (keys, dropped),
                Err(_) => {
                    self.stats.refusals += 1;
                    let was = self.keyboard;
                    self.keyboard = Presence::Away;
                    Self::presence_changed(&mut self.console, "keyboard", was, Presence::Away);
                    return;
                }
            };
            let was = self.keyboard;
            self.keyboard = Presence::Here;
            Self::presence_changed(&mut self.console, "keyboard", was, Presence::Here);
            if dropped > 0 {
                self.stats.dropped_keys += u64::from(dropped);
                warning(
                    &mut self.console,
                    &format!("keyboard: {dropped} key events lost (queue full)"),
                );
            }
            for stroke in &strokes {
                if let Some(key) = self.keys.key(stroke) {
                    self.stats.keys += 1;
                    self.on_key(env, key);
                }
            }
            if strokes.len() < keyboard::MAX_KEYS {
                return;
            }
        }
    }

    fn on_key(&mut self, env: &mut dyn Env, key: keys::Key) {
        match self.console.editor.key(key) {
            Outcome::Edited => {}
            Outcome::ClearRequested => self.console.clear_log(),
            Outcome::Submitted(line) => {
                self.console
                    .log(&format!("{}{line}", console::PROMPT), Style::Prompt);
                self.run_command(env, line.trim());
            }
        }
    }

    fn read_mouse(&mut self, env: &mut dyn Env) {
        let mut last = None;
        for _ in 0..MAX_DRAINS {
            let reply = channels::MOUSE.call(env, &mouse::Request::Next);
            let (events, dropped) = match reply {
                Ok(mouse::Reply::Events { events, dropped }) => (events, dropped),
                Err(_) => {
                    self.stats.refusals += 1;
                    let was = self.mouse;
                    self.mouse = Presence::Away;
                    Self::presence_changed(&mut self.console, "mouse", was, Presence::Away);
                    break;
                }
            };
            let was = self.mouse;
            self.mouse = Presence::Here;
            Self::presence_changed(&mut self.console, "mouse", was, Presence::Here);
            self.stats.dropped_pointer_events += u64::from(dropped);
            for pointer in &events {
                let pressed = pointer.buttons & !self.buttons;
                self.buttons = pointer.buttons;
                let at = self.to_screen(pointer.x, pointer.y);
                if pressed & 1 != 0 {
                    let (col, row) = (
                        at.0 as usize / render::CELL_WIDTH,
                        at.1 as usize / render::CELL_HEIGHT,
                    );
                    event(
                        &mut self.console,
                        &format!("mouse: click at {}x{} (cell {col}, row {row})", at.0, at.1),
                    );
                }
                last = Some(at);
            }
            if events.len() < mouse::MAX_EVENTS {
                break;
            }
        }
        // Only where the pointer ended up: the host draws it there.
        if let Some((x, y)) = last {
            if self.pointer != Some((x, y)) {
                self.pointer = Some((x, y));
                self.send_pointer(env, x, y);
            }
        }
    }

    /// 0..=AXIS_MAX on both axes to screen pixels.
    fn to_screen(&self, x: u16, y: u16) -> (u16, u16) {
        let (width, height) = match &self.mode {
            Some(m) => (m.width, m.height),
            None => (1024, 768),
        };
        pointer_pixels(x, y, width, height)
    }

    /// Read the device table; events for what changed since the last read.
    fn refresh_devices(&mut self, env: &mut dyn Env) {
        self.devices_read_ns = Some(env.now_ns());
        let mut rows = Vec::new();
        let mut note = None;
        for index in 0..MAX_DEVICES {
            match channels::VMBUS.call(env, &bus::Request::Device { index }) {
                Ok(bus::Reply::Device(row)) => rows.push(row),
                Ok(bus::Reply::NoSuchDevice) => break,
                Ok(other) => {
                    self.stats.refusals += 1;
                    note = Some(format!("  (the bus manager refused: {other:?})"));
                    break;
                }
                Err(error) => {
                    self.stats.refusals += 1;
                    note = Some(format!("  (the bus manager did not answer: {error:?})"));
                    break;
                }
            }
        }
        if note.is_some() {
            self.console.set_devices(Vec::new(), note);
            return;
        }
        for change in status::changes(&self.devices, &rows) {
            event(&mut self.console, &change);
        }
        self.console
            .set_devices(rows.iter().map(status::device_row).collect(), None);
        self.devices = rows;
    }

    fn run_command(&mut self, env: &mut dyn Env, line: &str) {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            return;
        };
        let out = |console: &mut Console, text: &str| console.log(text, Style::Normal);
        match command {
            "help" => {
                for text in [
                    "help     this list",
                    "status   the VMBus devices (the bus manager's table), read again",
                    "kvp      the KVP pairs of the external (host) and guest pools",
                    "disks    the storage controllers on the bus",
                    "clear    empty this area (also Ctrl+L)",
                ] {
                    out(&mut self.console, text);
                }
                let s = self.stats;
                out(
                    &mut self.console,
                    &format!(
                        "terminal: {} flushes, {} rects, {} dirt bytes, {} full redraws, {} keys",
                        s.flushes, s.rects, s.dirt_bytes, s.full_redraws, s.keys
                    ),
                );
            }
            "status" => {
                self.refresh_devices(env);
                out(&mut self.console, console::STATUS_HEADINGS);
                let rows: Vec<String> = self.devices.iter().map(status::device_row).collect();
                for row in &rows {
                    out(&mut self.console, row);
                }
                out(&mut self.console, &format!("{} rows", rows.len()));
            }
            "kvp" => self.list_kvp(env),
            "disks" => {
                self.refresh_devices(env);
                let disks: Vec<String> = self
                    .devices
                    .iter()
                    .filter(|row| status::is_storage(row))
                    .map(|row| {
                        format!(
                            "{} ({}, relid {}): {}{}",
                            if row.sub_channel == 0 {
                                row.driver.as_str()
                            } else {
                                "  sub-channel"
                            },
                            status::class_name(row),
                            row.relid,
                            status::state_name(row.state),
                            if row.restarts > 0 {
                                format!(", {} restarts", row.restarts)
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                if disks.is_empty() {
                    out(&mut self.console, "no storage controller on the bus");
                }
                for disk in &disks {
                    out(&mut self.console, disk);
                }
            }
            "clear" => self.console.clear_log(),
            other => warning(
                &mut self.console,
                &format!("unknown command `{other}`: type help"),
            ),
        }
    }

    fn list_kvp(&mut self, env: &mut dyn Env) {
        for (pool, name) in [(kvp::POOL_EXTERNAL, "external"), (kvp::POOL_GUEST, "guest")] {
            let mut listed = 0;
            for index in 0..MAX_PAIRS {
                match channels::KVP.call(env, &kvp::Request::Enumerate { pool, index }) {
                    Ok(kvp::Reply::Pair { key, value }) => {
                        self.console
                            .log(&format!("{name}: {key} = {value}"), Style::Normal);
                        listed += 1;
                    }
                    Ok(kvp::Reply::NotFound) => break,
                    other => {
                        self.stats.refusals += 1;
                        warning(&mut self.console, &format!("kvp: {name} pool: {other:?}"));
                        break;
                    }
                }
            }
            if listed == 0 {
                self.console
                    .log(&format!("{name}: no pairs"), Style::Normal);
            }
        }
    }
}

/// A pointer position (0..=AXIS_MAX, clamped) in pixels of a
/// `width` x `height` screen.
pub fn pointer_pixels(x: u16, y: u16, width: u16, height: u16) -> (u16, u16) {
    let scale = |v: u16, size: u16| {
        let v = u32::from(v.min(mouse::AXIS_MAX));
        let top = u32::from(size.saturating_sub(1));
        (v * top / u32::from(mouse::AXIS_MAX)) as u16
    };
    (scale(x, width), scale(y, height))
}

impl Component for Terminal {
    fn init(env: &mut dyn Env) -> Self {
        let vram = component_api::id_named(REGION_NAMES, "vram").map(|name| env.region(name));
        let mut terminal = Terminal::new(vram);
        match vram {
            Some(region) => println!(env, "terminal: VRAM {} KiB", region.len() / 1024),
            None => println!(env, "terminal: no VRAM region: nothing will be drawn"),
        }
        event(&mut terminal.console, "terminal: started; type help");
        terminal.refresh_devices(env);
        // Events may have been queued before we started; reading them
        // first also puts the devices' presence into the first picture.
        terminal.read_keyboard(env);
        terminal.read_mouse(env);
        terminal.update_mode(env);
        terminal.show(env);
        terminal
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(channels::VIDEO_EVENT) {
            self.update_mode(env);
        }
        if set.contains(channels::KEYBOARD_EVENT) {
            self.read_keyboard(env);
        }
        if set.contains(channels::MOUSE_EVENT) {
            self.read_mouse(env);
        }
        if set.contains(channels::KVP_EVENT) {
            event(
                &mut self.console,
                "kvp: the driver notified (pools changed?)",
            );
        }
        let now = env.now_ns();
        let stale = self
            .devices_read_ns
            .is_none_or(|at| now.saturating_sub(at) >= STATUS_REFRESH_NS);
        if stale {
            self.refresh_devices(env);
        }
        self.show(env);
    }
}

#[cfg(test)]
mod tests;
