//! The component against test doubles of its five services.

extern crate std;

use super::*;
use crate::render::{Canvas, Cell, CELL_HEIGHT, CELL_WIDTH};
use component_api::{CallError, Channel, RegionName};
use env_double::EnvDouble;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec;
use vmbus_ipc::bus::ChannelState;
use vmbus_ipc::framebuffer::Rect;
use vmbus_ipc::keyboard::{KeyStroke, Prefix};
use vmbus_ipc::mouse::PointerEvent;
use vmbus_protocol::guid::class;

const VRAM_BYTES: usize = 3 * 1024 * 1024;
const WIDTH: usize = 1024;
const HEIGHT: usize = 768;
const STRIDE: usize = 4096;
const PROMPT_ROW: usize = HEIGHT / CELL_HEIGHT - 1;

/// What the doubles serve and what they were asked.
#[derive(Default)]
struct World {
    /// `None`: the video driver answers NotReady.
    mode: Option<Mode>,
    video_faulted: bool,
    flushes: Vec<Vec<Rect>>,
    pointers: Vec<(u16, u16)>,
    keys: VecDeque<KeyStroke>,
    keys_dropped: u32,
    keyboard_faulted: bool,
    pointer_events: VecDeque<PointerEvent>,
    devices: Vec<DeviceStatus>,
    pairs: Vec<(u8, String, String)>,
}

type Shared = Rc<RefCell<World>>;

fn mode(generation: u32) -> Mode {
    Mode {
        generation,
        width: WIDTH as u16,
        height: HEIGHT as u16,
        stride: STRIDE as u32,
        depth_bits: 32,
        version: (3, 5),
        updates_wanted: true,
        resolutions: heapless::Vec::new(),
    }
}

fn device(driver: &str, class: uuid::Uuid, relid: u32) -> DeviceStatus {
    DeviceStatus {
        driver: driver.try_into().unwrap(),
        sub_channel: 0,
        class: *class.as_bytes(),
        instance: [relid as u8; 16],
        relid,
        state: ChannelState::Open,
        vmbus_version: 0x0005_0003,
        framework_version: (0, 0),
        message_version: (0, 0),
        restarts: 0,
    }
}

/// Answer calls of `P` on `channel` from the world; `Err` is what a
/// faulted (restarting) server gives.
fn serve<P: component_api::Protocol>(
    env: &mut EnvDouble,
    channel: impl Into<Channel>,
    world: &Shared,
    mut handler: impl FnMut(&mut World, P::Request) -> Result<P::Reply, CallError> + 'static,
) {
    let world = world.clone();
    env.on_call(channel, move |message, reply| {
        let request = component_api::decode_request::<P>(message)
            .map_err(|refusal| CallError::Refused(refusal.0))?;
        let answer = handler(&mut world.borrow_mut(), request)?;
        component_api::encode_reply::<P>(reply, &answer).map_err(|_| CallError::Encoding)
    });
}

fn world_and_env() -> (Shared, EnvDouble, RegionName) {
    let world: Shared = Rc::default();
    {
        let mut w = world.borrow_mut();
        w.mode = Some(mode(1));
        w.devices = vec![
            device("kvp", class::KVP, 1),
            device("video", class::SYNTHETIC_VIDEO, 2),
            device("storage", class::SCSI, 3),
        ];
        w.pairs = vec![
            (kvp::POOL_EXTERNAL, "HostName".into(), "host1".into()),
            (kvp::POOL_GUEST, "GuestClient".into(), "ready".into()),
        ];
    }
    let mut env = EnvDouble::new();
    let vram = env.add_region(VRAM_BYTES, true);
    assert_eq!(component_api::id_named(REGION_NAMES, "vram"), Some(vram));
    serve::<framebuffer::Framebuffer>(&mut env, channels::VIDEO, &world, |w, request| {
        if w.video_faulted {
            return Err(CallError::ServerFaulted);
        }
        let Some(mode) = w.mode.clone() else {
            return Ok(framebuffer::Reply::NotReady);
        };
        Ok(match request {
            framebuffer::Request::Info => framebuffer::Reply::Info(mode),
            framebuffer::Request::Flush { rects } => {
                let bytes = rects
                    .iter()
                    .map(|r| u32::from(r.width) * u32::from(r.height) * 4)
                    .sum();
                w.flushes.push(rects.to_vec());
                framebuffer::Reply::Flushed {
                    rects: rects.len() as u8,
                    bytes,
                }
            }
            framebuffer::Request::Pointer { x, y, .. } => {
                w.pointers.push((x, y));
                framebuffer::Reply::Done
            }
        })
    });
    serve::<keyboard::Keyboard>(&mut env, channels::KEYBOARD, &world, |w, _| {
        if w.keyboard_faulted {
            return Err(CallError::ServerFaulted);
        }
        let mut keys = heapless::Vec::new();
        while keys.len() < keyboard::MAX_KEYS {
            match w.keys.pop_front() {
                Some(key) => keys.push(key).unwrap(),
                None => break,
            }
        }
        Ok(keyboard::Reply::Keys {
            keys,
            dropped: core::mem::take(&mut w.keys_dropped),
        })
    });
    serve::<mouse::Mouse>(&mut env, channels::MOUSE, &world, |w, _| {
        let mut events = heapless::Vec::new();
        while events.len() < mouse::MAX_EVENTS {
            match w.pointer_events.pop_front() {
                Some(event) => events.push(event).unwrap(),
                None => break,
            }
        }
        Ok(mouse::Reply::Events { events, dropped: 0 })
    });
    serve::<bus::Bus>(&mut env, channels::VMBUS, &world, |w, request| {
        Ok(match request {
            bus::Request::Device { index } => match w.devices.get(index as usize) {
                Some(row) => bus::Reply::Device(row.clone()),
                None => bus::Reply::NoSuchDevice,
            },
            _ => bus::Reply::Refused(bus::Refusal::NotADriver),
        })
    });
    serve::<kvp::Kvp>(&mut env, channels::KVP, &world, |w, request| {
        Ok(match request {
            kvp::Request::Enumerate { pool, index } => w
                .pairs
                .iter()
                .filter(|(p, _, _)| *p == pool)
                .nth(index as usize)
                .map_or(kvp::Reply::NotFound, |(_, k, v)| kvp::Reply::Pair {
                    key: k.as_str().try_into().unwrap(),
                    value: v.as_str().try_into().unwrap(),
                }),
            _ => kvp::Reply::Refused,
        })
    });
    (world, env, vram)
}

fn notify(terminal: &mut Terminal, env: &mut EnvDouble, channel: Channel) {
    let mut set = ChannelSet::default();
    set.insert(channel);
    terminal.notified(env, set);
}

fn press(world: &Shared, code: u16, prefix: Prefix) {
    for released in [false, true] {
        world.borrow_mut().keys.push_back(KeyStroke {
            code,
            prefix,
            released,
            unicode: false,
        });
    }
}

/// Type `text` as the host's keyboard would: scan codes for what the US
/// layout has (shift around capitals), unicode strokes for the rest.
fn type_text(world: &Shared, text: &str) {
    const KEYS: &str = "1234567890-=qwertyuiop[]asdfghjkl;'`\\zxcvbnm,./";
    const CODES: [u16; 47] = [
        0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x10, 0x11, 0x12,
        0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23,
        0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33,
        0x34, 0x35,
    ];
    for ch in text.chars() {
        let lower = ch.to_ascii_lowercase();
        if ch == ' ' {
            press(world, 0x39, Prefix::None);
        } else if ch == '\n' {
            press(world, 0x1c, Prefix::None);
        } else if let Some(at) = KEYS.find(lower) {
            let shifted = ch.is_ascii_uppercase();
            let mut w = world.borrow_mut();
            let stroke = |code, released| KeyStroke {
                code,
                prefix: Prefix::None,
                released,
                unicode: false,
            };
            if shifted {
                w.keys.push_back(stroke(0x2a, false));
            }
            w.keys.push_back(stroke(CODES[at], false));
            w.keys.push_back(stroke(CODES[at], true));
            if shifted {
                w.keys.push_back(stroke(0x2a, true));
            }
        } else {
            world.borrow_mut().keys.push_back(KeyStroke {
                code: ch as u16,
                prefix: Prefix::None,
                released: false,
                unicode: true,
            });
        }
    }
}

fn type_line(terminal: &mut Terminal, env: &mut EnvDouble, world: &Shared, text: &str) {
    type_text(world, text);
    notify(terminal, env, channels::KEYBOARD_EVENT);
}

/// VRAM as the host would read it.
fn screen(env: &EnvDouble, vram: RegionName) -> Vec<u8> {
    let mut bytes = vec![0u8; VRAM_BYTES];
    env.test_view(vram).read(0, &mut bytes).unwrap();
    bytes
}

/// The pixels text row `row` should have if it shows `cells`.
fn expected_row(cells: &[Cell]) -> Vec<u8> {
    let mut bytes = vec![0u8; STRIDE * CELL_HEIGHT];
    let mut canvas = Canvas::new(&mut bytes, WIDTH, CELL_HEIGHT, STRIDE).unwrap();
    render::draw_cells(&mut canvas, 0, 0, cells);
    bytes
}

/// Whether VRAM's text row `row` shows `text` in `style` from column 0.
fn row_shows(screen: &[u8], row: usize, text: &str, style: Style) -> bool {
    let cells: Vec<Cell> = text.chars().map(|ch| Cell { ch, style }).collect();
    let expected = expected_row(&cells);
    let used = cells.len() * CELL_WIDTH * 4;
    (0..CELL_HEIGHT).all(|py| {
        let at = (row * CELL_HEIGHT + py) * STRIDE;
        screen[at..at + used] == expected[py * STRIDE..py * STRIDE + used]
    })
}

fn whole_screen() -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: WIDTH as u16,
        height: HEIGHT as u16,
    }
}

fn log_has(terminal: &Terminal, text: &str) -> bool {
    terminal.console.log_lines().any(|line| line.contains(text))
}

#[test]
fn at_start_it_draws_everything_and_flushes_the_whole_screen() {
    let (world, mut env, vram) = world_and_env();
    let terminal = Terminal::init(&mut env);
    let w = world.borrow();
    assert_eq!(w.flushes, vec![vec![whole_screen()]]);
    assert_eq!(terminal.stats.full_redraws, 1);
    assert!(log_has(&terminal, "video: 1024x768, 32 bpp, stride 4096"));
    assert!(log_has(&terminal, "keyboard: connected"));
    let picture = screen(&env, vram);
    // The title, the status view's rows, the prompt: as rendered.
    assert!(row_shows(
        &picture,
        0,
        " seL4 Hyper-V guest console",
        Style::Title
    ));
    let kvp_row = status::device_row(&w.devices[0]);
    assert!(row_shows(&picture, 2, &kvp_row, Style::Normal));
    assert!(row_shows(
        &picture,
        PROMPT_ROW,
        console::PROMPT,
        Style::Prompt
    ));
    // The margins right and below the cells are background, not left over.
    let bg = render::pixel(Style::Normal.colors().1);
    let last = (HEIGHT - 1) * STRIDE + (WIDTH - 1) * 4;
    assert_eq!(picture[last..last + 4], bg);
}

#[test]
fn typed_keys_appear_and_only_the_prompt_row_is_flushed() {
    let (world, mut env, vram) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    type_line(&mut terminal, &mut env, &world, "Hi é");
    let w = world.borrow();
    let last = w.flushes.last().unwrap();
    assert_eq!(w.flushes.len(), 2);
    assert!(last
        .iter()
        .all(|r| r.y as usize == PROMPT_ROW * CELL_HEIGHT && r.height as usize == CELL_HEIGHT));
    let bytes: usize = last
        .iter()
        .map(|r| r.width as usize * r.height as usize * 4)
        .sum();
    assert_eq!(
        bytes,
        5 * CELL_WIDTH * CELL_HEIGHT * 4,
        "4 letters and the cursor"
    );
    let picture = screen(&env, vram);
    let typed = std::format!("{}Hi é", console::PROMPT);
    assert!(row_shows(&picture, PROMPT_ROW, &typed, Style::Prompt));
    assert_eq!(terminal.stats.keys, 4);
}

#[test]
fn commands_answer_in_the_log() {
    let (world, mut env, _) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    type_line(&mut terminal, &mut env, &world, "help\n");
    assert!(log_has(&terminal, "terminal> help"));
    assert!(log_has(&terminal, "disks    the storage controllers"));
    type_line(&mut terminal, &mut env, &world, "kvp\n");
    assert!(log_has(&terminal, "external: HostName = host1"));
    assert!(log_has(&terminal, "guest: GuestClient = ready"));
    type_line(&mut terminal, &mut env, &world, "disks\n");
    assert!(log_has(&terminal, "storage (scsi, relid 3): open"));
    type_line(&mut terminal, &mut env, &world, "status\n");
    assert!(log_has(&terminal, "3 rows"));
    type_line(&mut terminal, &mut env, &world, "format c:\n");
    assert!(log_has(&terminal, "unknown command `format`: type help"));
    type_line(&mut terminal, &mut env, &world, "clear\n");
    assert_eq!(terminal.console.log_lines().count(), 0);
    // Up brings the last command back.
    press(&world, 0x48, Prefix::E0);
    notify(&mut terminal, &mut env, channels::KEYBOARD_EVENT);
    assert_eq!(terminal.console.editor.text(), "clear");
}

#[test]
fn a_new_generation_redraws_everything_and_the_same_one_does_not() {
    let (world, mut env, _) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(terminal.stats.full_redraws, 1);
    world.borrow_mut().mode = Some(mode(2));
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(terminal.stats.full_redraws, 2);
    assert_eq!(
        world.borrow().flushes.last().unwrap(),
        &vec![whole_screen()]
    );
    // The host pausing updates is said, not redrawn.
    world.borrow_mut().mode.as_mut().unwrap().updates_wanted = false;
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(terminal.stats.full_redraws, 2);
    assert!(log_has(&terminal, "wants no updates"));
}

#[test]
fn the_video_driver_restarting_is_survived_and_the_screen_comes_back_whole() {
    let (world, mut env, vram) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    world.borrow_mut().video_faulted = true;
    type_line(&mut terminal, &mut env, &world, "ab");
    assert!(terminal.mode().is_none());
    assert!(log_has(&terminal, "video: flush refused"));
    // While away: no flushes at all, keys still edit the line.
    world.borrow_mut().video_faulted = false;
    world.borrow_mut().mode = None;
    let flushes = world.borrow().flushes.len();
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    type_line(&mut terminal, &mut env, &world, "c");
    assert_eq!(world.borrow().flushes.len(), flushes);
    assert!(log_has(&terminal, "video: not ready"));
    // Back with a new generation: everything drawn, with what was typed.
    world.borrow_mut().mode = Some(mode(7));
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(
        world.borrow().flushes.last().unwrap(),
        &vec![whole_screen()]
    );
    let typed = std::format!("{}abc", console::PROMPT);
    assert!(row_shows(
        &screen(&env, vram),
        PROMPT_ROW,
        &typed,
        Style::Prompt
    ));
    assert!(log_has(&terminal, "generation 7"));
}

#[test]
fn the_keyboard_driver_away_and_back() {
    let (world, mut env, _) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    world.borrow_mut().keyboard_faulted = true;
    type_text(&world, "x");
    notify(&mut terminal, &mut env, channels::KEYBOARD_EVENT);
    assert!(log_has(&terminal, "keyboard: no answer"));
    world.borrow_mut().keyboard_faulted = false;
    world.borrow_mut().keys_dropped = 3;
    notify(&mut terminal, &mut env, channels::KEYBOARD_EVENT);
    assert!(log_has(&terminal, "keyboard: back"));
    assert!(log_has(&terminal, "keyboard: 3 key events lost"));
    assert_eq!(terminal.console.editor.text(), "x");
}

#[test]
fn mouse_events_move_the_pointer_in_screen_pixels() {
    let (world, mut env, _) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    let at = |x, y, buttons| PointerEvent {
        x,
        y,
        buttons,
        wheel: 0,
    };
    world.borrow_mut().pointer_events.extend([
        at(0, 0, 0),
        at(0x4000, 0x2000, 0),
        at(0x7fff, 0x7fff, 0),
    ]);
    notify(&mut terminal, &mut env, channels::MOUSE_EVENT);
    // Only where it ended up; the far corner is the last pixel.
    assert_eq!(world.borrow().pointers, vec![(1023, 767)]);
    world.borrow_mut().pointer_events.extend([
        at(0x4000, 0x4000, 1),
        at(0x4000, 0x4000, 1),
        at(0x4000, 0x4000, 0),
        at(0xffff, 0, 0),
    ]);
    notify(&mut terminal, &mut env, channels::MOUSE_EVENT);
    assert_eq!(world.borrow().pointers[1], (1023, 0), "clamped");
    assert!(log_has(&terminal, "mouse: click at 511x383"));
    // A button held over two reports is one click.
    let clicks = terminal
        .console
        .log_lines()
        .filter(|line| line.contains("mouse: click"))
        .count();
    assert_eq!(clicks, 1);
    // The same position again sends nothing.
    world
        .borrow_mut()
        .pointer_events
        .push_back(at(0xffff, 0, 0));
    notify(&mut terminal, &mut env, channels::MOUSE_EVENT);
    assert_eq!(world.borrow().pointers.len(), 2);
    // A new mode (the host forgot it): the pointer is sent again.
    world.borrow_mut().mode = Some(mode(2));
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(world.borrow().pointers.len(), 3);
}

#[test]
fn the_status_view_follows_the_bus_table() {
    let (world, mut env, vram) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    {
        let mut w = world.borrow_mut();
        w.devices[0].restarts = 1;
        w.devices[0].state = ChannelState::Opening;
        w.devices.push(device("keyboard", class::KEYBOARD, 4));
    }
    // Within a second of the last read: not read again.
    notify(&mut terminal, &mut env, channels::KVP_EVENT);
    assert!(!log_has(&terminal, "kvp restarted"));
    env.now_ns += 2_000_000_000;
    notify(&mut terminal, &mut env, channels::KVP_EVENT);
    assert!(log_has(&terminal, "bus: kvp restarted (1 restarts)"));
    assert!(log_has(&terminal, "bus: kvp open -> opening"));
    assert!(log_has(&terminal, "bus: keyboard (keyboard) open"));
    let w = world.borrow();
    let picture = screen(&env, vram);
    assert!(row_shows(
        &picture,
        2,
        &status::device_row(&w.devices[0]),
        Style::Normal
    ));
    assert!(row_shows(
        &picture,
        5,
        &status::device_row(&w.devices[3]),
        Style::Normal
    ));
}

#[test]
fn a_mode_that_does_not_fit_vram_is_refused_not_drawn() {
    let (world, mut env, _) = world_and_env();
    world.borrow_mut().mode = Some(Mode {
        stride: 8192,
        ..mode(1)
    });
    let mut terminal = Terminal::init(&mut env);
    assert_eq!(terminal.stats.bad_modes, 1);
    assert!(world.borrow().flushes.is_empty());
    assert!(terminal.mode().is_none());
    world.borrow_mut().mode = Some(Mode {
        depth_bits: 16,
        ..mode(2)
    });
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(terminal.stats.bad_modes, 2);
    world.borrow_mut().mode = Some(mode(3));
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(world.borrow().flushes, vec![vec![whole_screen()]]);
}

#[test]
fn a_smaller_resolution_relays_the_screen() {
    let (world, mut env, vram) = world_and_env();
    let mut terminal = Terminal::init(&mut env);
    world.borrow_mut().mode = Some(Mode {
        width: 800,
        height: 600,
        stride: 3200,
        ..mode(2)
    });
    notify(&mut terminal, &mut env, channels::VIDEO_EVENT);
    assert_eq!(terminal.console.grid.cols(), 800 / CELL_WIDTH);
    assert_eq!(terminal.console.grid.rows(), 600 / CELL_HEIGHT);
    let flush = world.borrow().flushes.last().unwrap().clone();
    assert_eq!(
        flush,
        vec![Rect {
            x: 0,
            y: 0,
            width: 800,
            height: 600
        }]
    );
    // The prompt is on the new last row, at the new stride.
    let row = 600 / CELL_HEIGHT - 1;
    let picture = screen(&env, vram);
    let cells: Vec<Cell> = console::PROMPT
        .chars()
        .map(|ch| Cell {
            ch,
            style: Style::Prompt,
        })
        .collect();
    let mut expected = vec![0u8; 3200 * CELL_HEIGHT];
    let mut canvas = Canvas::new(&mut expected, 800, CELL_HEIGHT, 3200).unwrap();
    render::draw_cells(&mut canvas, 0, 0, &cells);
    let used = cells.len() * CELL_WIDTH * 4;
    for py in 0..CELL_HEIGHT {
        let at = (row * CELL_HEIGHT + py) * 3200;
        assert_eq!(
            picture[at..at + used],
            expected[py * 3200..py * 3200 + used]
        );
    }
    assert!(log_has(&terminal, "800x600"));
}
