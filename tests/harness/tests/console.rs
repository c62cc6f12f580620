//! The console end to end, hosted: system.toml as it ships (the real
//! `video`, `keyboard` and `mouse` drivers and the real `terminal`) against
//! the simulated host process offering the three console devices. The
//! test is the person at Hyper-V's console window: it reads the screen as
//! the host's screenshot (`screenshot PATH`, a PNG of the host's picture:
//! the VRAM per the guest's mode, with the pointer the host draws), types
//! with `type`/`key` and moves the pointer with `mouse`. Text is found by
//! comparing the picture's pixels with the terminal's own rendering of the
//! expected text at each text row. Then each console driver is killed,
//! idle and then under a stream of keys and pointer moves: the console
//! must come back, and the other drivers keep serving.
#![forbid(unsafe_code)]

mod vmbus_common;

use ipc_harness::{Harness, WAIT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use terminal::render::{self, Canvas, Cell, Style, CELL_HEIGHT, CELL_WIDTH, PIXEL_BYTES};
use vmbus_common::*;

const DEVICES: &str = "heartbeat,shutdown,timesync,kvp,keyboard,mouse,video";

/// The host's picture, decoded: RGB, row-major.
struct Screen {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Screen {
    fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * 3;
        [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]
    }

    /// Whether text row `row` starts with `text` drawn in `style`: every
    /// pixel of its cells equals the terminal's rendering of it.
    fn row_shows(&self, row: usize, text: &str, style: Style) -> bool {
        let cells: Vec<Cell> = text.chars().map(|ch| Cell { ch, style }).collect();
        let width = cells.len() * CELL_WIDTH;
        if width > self.width || (row + 1) * CELL_HEIGHT > self.height {
            return false;
        }
        let stride = width * PIXEL_BYTES;
        let mut expected = vec![0u8; stride * CELL_HEIGHT];
        let mut canvas = Canvas::new(&mut expected, width, CELL_HEIGHT, stride).unwrap();
        render::draw_cells(&mut canvas, 0, 0, &cells);
        (0..CELL_HEIGHT).all(|py| {
            (0..width).all(|px| {
                let at = py * stride + px * PIXEL_BYTES;
                let (b, g, r) = (expected[at], expected[at + 1], expected[at + 2]);
                self.rgb(px, row * CELL_HEIGHT + py) == [r, g, b]
            })
        })
    }

    fn shows(&self, text: &str, style: Style) -> bool {
        (0..self.height / CELL_HEIGHT).any(|row| self.row_shows(row, text, style))
    }
}

struct Console {
    harness: Harness,
    shots: PathBuf,
    taken: usize,
}

impl Console {
    /// `name`: the test's, so tests running side by side keep their
    /// screenshots apart.
    fn start(name: &str) -> Console {
        let harness = start(&["--devices", DEVICES], &[]);
        wait_all_open(&harness, 7);
        let shots =
            std::env::temp_dir().join(format!("console-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&shots).unwrap();
        Console {
            harness,
            shots,
            taken: 0,
        }
    }

    /// The host's picture now (`None` before the guest named its VRAM and
    /// mode).
    fn screenshot(&mut self) -> Option<Screen> {
        self.taken += 1;
        let path = self.shots.join(format!("shot-{}.png", self.taken));
        let answer = self.harness.host(&format!("screenshot {}", path.display()));
        if !answer.contains('x') || answer.contains("no picture") {
            return None;
        }
        let decoder = png::Decoder::new(std::fs::File::open(&path).ok()?);
        let mut reader = decoder.read_info().ok()?;
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).ok()?;
        assert_eq!(info.color_type, png::ColorType::Rgb, "the host writes RGB");
        std::fs::remove_file(&path).ok();
        Some(Screen {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        })
    }

    /// Screenshots until one shows `text` in `style`, or fail.
    fn until_shown(&mut self, text: &str, style: Style) -> Screen {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(screen) = self.screenshot() {
                if screen.shows(text, style) {
                    return screen;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.harness
            .fail(&format!("the host's screen never showed {text:?}"))
    }

    fn type_line(&self, text: &str) {
        let answer = self.harness.host(&format!("type {text}"));
        assert!(answer.ends_with("key transitions sent"), "{answer}");
        assert_eq!(self.harness.host("key 0x1c"), "true");
        assert_eq!(self.harness.host("key 0x1c up"), "true");
    }

    /// Move the pointer (0..=0x7fff both axes), retrying while the mouse
    /// channel is not ready (after a restart).
    fn point(&self, x: u16, y: u16) {
        let deadline = Instant::now() + WAIT;
        while self.harness.host(&format!("mouse {x} {y}")) != "true" {
            if Instant::now() > deadline {
                self.harness.fail("the host's mouse never became ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.shots).ok();
    }
}

const TITLE: &str = " seL4 Hyper-V guest console";

/// Pixels in the 16x16 square at (x, y) that differ between two pictures.
fn changed_near(a: &Screen, b: &Screen, x: usize, y: usize) -> usize {
    let mut changed = 0;
    for py in y..(y + 16).min(a.height) {
        for px in x..(x + 16).min(a.width) {
            if a.rgb(px, py) != b.rgb(px, py) {
                changed += 1;
            }
        }
    }
    changed
}

#[test]
fn the_console_shows_the_devices_types_runs_commands_and_moves_the_pointer() {
    let mut console = Console::start("shows");
    let first = console.until_shown(TITLE, Style::Title);
    assert_eq!((first.width, first.height), (1024, 768));
    console.until_shown(terminal::console::PROMPT, Style::Prompt);
    // The device table lists the console's own drivers.
    console.until_shown(" relid class", Style::Heading);

    console.type_line("help");
    console.until_shown("terminal> help", Style::Prompt);
    console.harness.host("kvp-set 0 HostName console-test");
    console.type_line("kvp");
    console.until_shown("terminal> kvp", Style::Prompt);
    console.until_shown("external: HostName = console-test", Style::Normal);

    // The pointer: the host draws it where the guest put it, and the
    // guest puts it where the host's mouse moved it (screen centre).
    let before = console.screenshot().unwrap();
    console.point(0x4000, 0x4000);
    let deadline = Instant::now() + WAIT;
    loop {
        let after = console.screenshot().unwrap();
        if changed_near(&before, &after, 512, 384) > 20 {
            break;
        }
        if Instant::now() > deadline {
            console
                .harness
                .fail("the pointer never appeared at the centre of the screen");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = console.harness.host("video-report");
    // 0x4000 of 0..=0x7fff is pixel 511 of 0..=1023.
    assert!(report.contains("pointer visible at (511, 383)"), "{report}");
}

#[test]
fn killed_console_drivers_come_back_and_the_others_keep_serving() {
    let mut console = Console::start("restarts");
    console.until_shown(TITLE, Style::Title);

    // The video driver: the terminal redraws everything on the new mode.
    console.harness.kill("video");
    console.harness.expect_restarts("video", 1);
    console.type_line("status");
    console.until_shown("terminal> status", Style::Prompt);

    // The keyboard: typing works again once it is back.
    console.harness.kill("keyboard");
    console.harness.expect_restarts("keyboard", 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = console.harness.host("type disks");
        if answer.starts_with("10 of 10") {
            break;
        }
        if Instant::now() > deadline {
            console
                .harness
                .fail(&format!("the keyboard never came back: {answer}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(console.harness.host("key 0x1c"), "true");
    assert_eq!(console.harness.host("key 0x1c up"), "true");
    console.until_shown("terminal> disks", Style::Prompt);

    // The mouse: the pointer follows it again.
    console.harness.kill("mouse");
    console.harness.expect_restarts("mouse", 1);
    let before = console.screenshot().unwrap();
    console.point(0x2000, 0x2000);
    let deadline = Instant::now() + WAIT;
    while changed_near(&before, &console.screenshot().unwrap(), 256, 192) <= 20 {
        if Instant::now() > deadline {
            console
                .harness
                .fail("the pointer did not move after the mouse restarted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The others kept serving: KVP takes the host's pair and shows it to
    // the terminal; no other driver was restarted.
    assert_eq!(console.harness.host("kvp-set 0 Survivor yes"), "true");
    console.type_line("kvp");
    console.until_shown("external: Survivor = yes", Style::Normal);
    for driver in ["heartbeat", "kvp", "timesync", "shutdown", "terminal"] {
        assert_eq!(
            console.harness.system().restarts(driver),
            0,
            "{driver} was restarted"
        );
    }
}

/// Keys and pointer moves from the host while the drivers are killed:
/// at most this long, and this many rounds of the load loop.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
const LOAD_ROUNDS: u32 = 20_000;

#[test]
fn console_drivers_killed_under_a_stream_of_keys_and_pointer_moves_come_back() {
    let mut console = Console::start("load");
    console.until_shown(TITLE, Style::Title);
    console.until_shown(terminal::console::PROMPT, Style::Prompt);
    let stop = AtomicBool::new(false);
    let keys_taken = AtomicU32::new(0);
    let moves_taken = AtomicU32::new(0);
    std::thread::scope(|scope| {
        let harness = &console.harness;
        let (stop, keys_taken, moves_taken) = (&stop, &keys_taken, &moves_taken);
        scope.spawn(move || {
            // `x` then Backspace, so the line stays short whatever a
            // restart loses, and the pointer sweeping the screen: every
            // key redraws the prompt row (a flush through video), every
            // move is a pointer update. The host answers `false` while a
            // device's channel is down; the load goes on regardless.
            let started = Instant::now();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed)
                && round < LOAD_ROUNDS
                && started.elapsed() < LOAD_LIMIT
            {
                for key in ["key 0x2d", "key 0x2d up", "key 0x0e", "key 0x0e up"] {
                    if harness.host(key) == "true" {
                        keys_taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let at = (round * 997) % 0x8000;
                if harness.host(&format!("mouse {at} {}", 0x7fff - at)) == "true" {
                    moves_taken.fetch_add(1, Ordering::Relaxed);
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        // Each driver killed twice, each time with the load flowing
        // through it before and after (a third fault within 10 s would
        // have vmbus hold the driver stopped, as a crash loop).
        for restarts in 1..=2 {
            for driver in ["video", "keyboard", "mouse"] {
                let keys = keys_taken.load(Ordering::Relaxed);
                let moves = moves_taken.load(Ordering::Relaxed);
                let deadline = Instant::now() + WAIT;
                while keys_taken.load(Ordering::Relaxed) < keys + 20
                    || moves_taken.load(Ordering::Relaxed) < moves + 5
                {
                    if Instant::now() > deadline {
                        harness.fail(&format!(
                            "the host's keys and moves stopped being taken before {driver} was killed"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                harness.kill(driver);
                harness.expect_restarts(driver, restarts);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let keys = keys_taken.load(Ordering::Relaxed);
    let moves = moves_taken.load(Ordering::Relaxed);
    println!("load: {keys} key transitions and {moves} pointer moves taken by the host");

    // The console is whole again: a command typed now is run and shown.
    assert_eq!(console.harness.host("key 0x1c"), "true");
    assert_eq!(console.harness.host("key 0x1c up"), "true");
    console.type_line("status");
    console.until_shown("terminal> status", Style::Prompt);
    let before = console.screenshot().unwrap();
    console.point(0x6000, 0x2000);
    let deadline = Instant::now() + WAIT;
    while changed_near(&before, &console.screenshot().unwrap(), 768, 192) <= 20 {
        if Instant::now() > deadline {
            console
                .harness
                .fail("the pointer did not follow the mouse after the load");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for driver in ["heartbeat", "kvp", "timesync", "shutdown", "terminal"] {
        assert_eq!(
            console.harness.system().restarts(driver),
            0,
            "{driver} was restarted"
        );
    }
    for (driver, restarts) in [("video", 2), ("keyboard", 2), ("mouse", 2)] {
        assert_eq!(
            console.harness.system().restarts(driver),
            restarts,
            "{driver}"
        );
    }
}
