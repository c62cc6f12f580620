//! The simulated host's console in QEMU (docs/console.md, "In QEMU"):
//! QEMU's std VGA (`-vga std`), which the host drives as its display, and
//! QEMU's PS/2 keyboard and mouse, which it reads.
//!
//! `cargo xtask run --vnc` shows the display on a VNC server that listens
//! on 127.0.0.1 only ([`vnc_args`]).
//!
//! The boot test ([`boot_test`]) boots system.toml with the scenario
//! `tests/systems/qemu-console.hvsim` (the host shows a test pattern and
//! logs every PS/2 event) and a human monitor (HMP) on a unix socket; once
//! the host says the pattern is shown it takes QEMU's `screendump` (PPM)
//! and checks the pattern's pixels, then types with `sendkey` and moves
//! and clicks with `mouse_move`/`mouse_button`, and the console must show
//! the host receiving each (`tests/systems/qemu-console.expect`).

use crate::image::{build, ImageSpec};
use crate::qemu::{boot_with_monitor, expectations_from, Echo};
use crate::util::{workspace_root, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QEMU's arguments for a VNC server on 127.0.0.1 (display `display`,
/// TCP port 5900 + display).
pub fn vnc_args(display: u16) -> [String; 2] {
    ["-vnc".into(), format!("127.0.0.1:{display}")]
}

/// A VNC display number whose port (5900 + N) is free on 127.0.0.1 now.
pub fn free_vnc_display() -> Result<u16> {
    (0..100u16)
        .find(|display| TcpListener::bind((Ipv4Addr::LOCALHOST, 5900 + display)).is_ok())
        .ok_or_else(|| "no free VNC port in 5900-5999 on 127.0.0.1".into())
}

/// The display's mode and the test pattern (`hvsim::vga::test_pattern`):
/// eight bars over the top half, a white square centred on the bottom half.
const WIDTH: usize = 1024;
const HEIGHT: usize = 768;
const BARS: [[u8; 3]; 8] = [
    [0xff, 0xff, 0xff],
    [0xff, 0xff, 0x00],
    [0x00, 0xff, 0xff],
    [0x00, 0xff, 0x00],
    [0xff, 0x00, 0xff],
    [0xff, 0x00, 0x00],
    [0x00, 0x00, 0xff],
    [0x00, 0x00, 0x00],
];

/// A binary PPM (P6, maxval 255) as QEMU's `screendump` writes it.
pub struct Ppm {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Ppm {
    pub fn parse(bytes: &[u8]) -> Result<Ppm> {
        // Header: "P6", width, height, maxval, separated by whitespace,
        // then one whitespace byte and the pixels.
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if bytes.get(at) == Some(&b'#') {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if start == at {
                return Err("PPM: header ends early".into());
            }
            fields.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
        }
        at += 1;
        if fields[0] != "P6" || fields[3] != "255" {
            return Err(format!("PPM: not a P6 image of maxval 255: {fields:?}"));
        }
        let number = |text: &str| {
            text.parse::<usize>()
                .map_err(|_| format!("PPM: bad size {text:?}"))
        };
        let (width, height) = (number(&fields[1])?, number(&fields[2])?);
        let rgb = bytes.get(at..).unwrap_or_default().to_vec();
        if rgb.len() != width * height * 3 {
            return Err(format!(
                "PPM: {} bytes of pixels for {width}x{height}",
                rgb.len()
            ));
        }
        Ok(Ppm { width, height, rgb })
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * 3;
        [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]
    }
}

/// The test pattern's pixels the screenshot must show: the middle of each
/// bar (two rows), the square's middle and corners' insides, the ground
/// beside it. Returns what differs.
pub fn check_test_pattern(picture: &Ppm) -> Result {
    if (picture.width, picture.height) != (WIDTH, HEIGHT) {
        return Err(format!(
            "the screen is {}x{}, not the host's {WIDTH}x{HEIGHT}",
            picture.width, picture.height
        ));
    }
    let mut wanted = Vec::new();
    for (bar, colour) in BARS.iter().enumerate() {
        let x = bar * WIDTH / 8 + WIDTH / 16;
        wanted.push((x, 10, *colour));
        wanted.push((x, HEIGHT / 2 - 10, *colour));
    }
    let white = [0xff, 0xff, 0xff];
    let black = [0, 0, 0];
    let (cx, cy) = (WIDTH / 2, HEIGHT * 3 / 4);
    wanted.extend([
        (cx, cy, white),
        (cx - 63, cy - 63, white),
        (cx + 63, cy + 63, white),
        (cx - 70, cy, black),
        (cx, cy + 70, black),
        (10, HEIGHT - 10, black),
    ]);
    let wrong: Vec<String> = wanted
        .iter()
        .filter(|(x, y, colour)| picture.pixel(*x, *y) != *colour)
        .map(|(x, y, colour)| {
            format!(
                "({x},{y}) is {:02x?}, the pattern has {colour:02x?}",
                picture.pixel(*x, *y)
            )
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the screenshot is not the test pattern: {}",
            wrong.join("; ")
        ))
    }
}

/// QEMU's human monitor on a unix socket.
pub struct Monitor {
    stream: UnixStream,
}

const PROMPT: &[u8] = b"(qemu) ";

impl Monitor {
    /// Connect (QEMU creates the socket as it starts: retried for a while).
    pub fn connect(path: &Path) -> Result<Monitor> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => return Err(format!("QEMU monitor {}: {error}", path.display())),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("QEMU monitor: {e}"))?;
        let mut monitor = Monitor { stream };
        monitor.until_prompt()?;
        Ok(monitor)
    }

    fn until_prompt(&mut self) -> Result<String> {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while !answer.ends_with(PROMPT) {
            let read = self
                .stream
                .read(&mut buffer)
                .map_err(|e| format!("QEMU monitor: {e}"))?;
            if read == 0 {
                return Err("QEMU monitor closed".into());
            }
            answer.extend_from_slice(&buffer[..read]);
            if answer.len() > 1 << 20 {
                return Err("QEMU monitor: no prompt in 1 MiB".into());
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// Run one command; its output (with the monitor's echo).
    pub fn command(&mut self, line: &str) -> Result<String> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("QEMU monitor: {e}"))?;
        self.until_prompt()
    }
}

/// What the test does to QEMU once the pattern is shown.
const INPUT_COMMANDS: &[&str] = &[
    "sendkey a",
    "sendkey ctrl_r",
    "mouse_move 40 -30",
    "mouse_button 1",
    "mouse_button 0",
];

/// The console line after which the pattern is on the screen and the
/// PS/2 devices report.
const READY: &[&str] = &[
    "host: display: test pattern shown",
    "host: PS/2: keyboard (scan code set 1) and mouse reporting",
];

fn screenshot_and_type(monitor_path: &Path, screenshot: &Path) -> Result {
    let mut monitor = Monitor::connect(monitor_path)?;
    let _ = std::fs::remove_file(screenshot);
    monitor.command(&format!("screendump {}", screenshot.display()))?;
    let bytes = std::fs::read(screenshot)
        .map_err(|e| format!("screendump wrote no {}: {e}", screenshot.display()))?;
    let picture = Ppm::parse(&bytes)?;
    check_test_pattern(&picture)?;
    eprintln!(
        "xtask: screendump {}x{} ({}): the test pattern is on QEMU's display",
        picture.width,
        picture.height,
        screenshot.display()
    );
    for command in INPUT_COMMANDS {
        let answer = monitor.command(command)?;
        // HMP answers errors in text: nothing but the echo is expected.
        if answer.contains("rror") || answer.contains("unknown") {
            return Err(format!("QEMU monitor refused {command:?}: {answer:?}"));
        }
        // One event at a time: the host reads them on its IRQs and ticks.
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn boot_test() -> Result {
    let spec = ImageSpec::new("system.toml", Some("tests/systems/qemu-console.hvsim"));
    let expected = expectations_from(&workspace_root().join("tests/systems/qemu-console.expect"))?;
    let image = build(&spec)?;
    let folder = crate::kernel::target_dir().join("qemu-console");
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let monitor_path: PathBuf = folder.join(format!("monitor-{}.sock", std::process::id()));
    let screenshot = folder.join("screen.ppm");
    let mut result: Option<Result> = None;
    let mut during = |lines: &[String]| {
        if result.is_none()
            && READY
                .iter()
                .all(|ready| lines.iter().any(|line| line.contains(ready)))
        {
            result = Some(screenshot_and_type(&monitor_path, &screenshot));
        }
        result.as_ref().is_some_and(|r| r.is_err())
            || (result.is_some() && ipc_harness::expect::check(&expected, lines).is_ok())
    };
    let boot = boot_with_monitor(&image, Echo::Lines, &monitor_path, &mut during);
    let _ = std::fs::remove_file(&monitor_path);
    let boot = boot?;
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    match result {
        None => Err(format!("the host never printed {READY:?}")),
        Some(Err(error)) => Err(error),
        Some(Ok(())) => {
            boot.verdict(&expected)?;
            eprintln!(
                "xtask: boot test passed (the screenshot shows the test pattern; {} expected lines seen)",
                expected.len()
            );
            Ok(())
        }
    }
}

/// The terminal's first picture is on QEMU's display once these lines
/// were printed (and a screendump shows its title).
const TERMINAL_READY: &[&str] = &[
    "[terminal] terminal: VRAM",
    "[video] synthvid",
    "[keyboard] protocol",
    "[mouse] protocol",
];
const TITLE: &str = " seL4 Hyper-V guest console";

/// Whether text row `row` of the picture starts with `text` in `style`:
/// every pixel of its cells equals the terminal's rendering of it.
fn row_shows(picture: &Ppm, row: usize, text: &str, style: terminal::render::Style) -> bool {
    use terminal::render::{draw_cells, Canvas, Cell, CELL_HEIGHT, CELL_WIDTH, PIXEL_BYTES};
    let cells: Vec<Cell> = text.chars().map(|ch| Cell { ch, style }).collect();
    let width = cells.len() * CELL_WIDTH;
    if width > picture.width || (row + 1) * CELL_HEIGHT > picture.height {
        return false;
    }
    let stride = width * PIXEL_BYTES;
    let mut expected = vec![0u8; stride * CELL_HEIGHT];
    let Some(mut canvas) = Canvas::new(&mut expected, width, CELL_HEIGHT, stride) else {
        return false;
    };
    draw_cells(&mut canvas, 0, 0, &cells);
    (0..CELL_HEIGHT).all(|py| {
        (0..width).all(|px| {
            let at = py * stride + px * PIXEL_BYTES;
            picture.pixel(px, row * CELL_HEIGHT + py)
                == [expected[at + 2], expected[at + 1], expected[at]]
        })
    })
}

fn shows(picture: &Ppm, text: &str, style: terminal::render::Style) -> bool {
    (0..picture.height / terminal::render::CELL_HEIGHT)
        .any(|row| row_shows(picture, row, text, style))
}

/// Screendumps until one shows `text` (at most 20 s of guest work).
fn until_shown(
    monitor: &mut Monitor,
    path: &Path,
    text: &str,
    style: terminal::render::Style,
) -> Result<Ppm> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = std::fs::remove_file(path);
        monitor.command(&format!("screendump {}", path.display()))?;
        if let Ok(bytes) = std::fs::read(path) {
            let picture = Ppm::parse(&bytes)?;
            if shows(&picture, text, style) {
                return Ok(picture);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "QEMU's display never showed {text:?} (last screendump: {})",
                    path.display()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pixels of the 16x16 square at (x, y) that differ between two pictures.
fn changed_near(a: &Ppm, b: &Ppm, x: usize, y: usize) -> usize {
    (y..y + 16)
        .flat_map(|py| (x..x + 16).map(move |px| (px, py)))
        .filter(|&(px, py)| a.pixel(px, py) != b.pixel(px, py))
        .count()
}

fn read_type_and_point(monitor_path: &Path, screenshot: &Path) -> Result {
    use terminal::render::Style;
    let mut monitor = Monitor::connect(monitor_path)?;
    until_shown(&mut monitor, screenshot, TITLE, Style::Title)?;
    let before = until_shown(&mut monitor, screenshot, "terminal> ", Style::Prompt)?;
    eprintln!("xtask: screendump: the terminal is on QEMU's display");
    for key in ["h", "e", "l", "p", "ret"] {
        monitor.command(&format!("sendkey {key}"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    until_shown(&mut monitor, screenshot, "terminal> help", Style::Prompt)?;
    eprintln!("xtask: screendump: `help` typed with QEMU's PS/2 keyboard is on the screen");
    // The PS/2 mouse starts at the centre; the host draws the synthetic
    // pointer where the terminal put it.
    monitor.command("mouse_move 100 80")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let _ = std::fs::remove_file(screenshot);
        monitor.command(&format!("screendump {}", screenshot.display()))?;
        let after = Ppm::parse(&std::fs::read(screenshot).map_err(|e| e.to_string())?)?;
        if changed_near(&before, &after, 612, 464) > 20 {
            eprintln!("xtask: screendump: the pointer moved to (612, 464)");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("the pointer never appeared where QEMU's mouse moved it".into());
        }
    }
}

/// system.toml in QEMU with the console devices: the terminal on QEMU's
/// display (screendump), typed into with QEMU's PS/2 keyboard, its pointer
/// moved with QEMU's PS/2 mouse.
pub fn boot_test_terminal() -> Result {
    let spec = ImageSpec::new("system.toml", Some("tests/systems/qemu-terminal.hvsim"));
    let expected = expectations_from(&workspace_root().join("tests/systems/qemu-terminal.expect"))?;
    let image = build(&spec)?;
    let folder = crate::kernel::target_dir().join("qemu-console");
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let monitor_path: PathBuf = folder.join(format!("terminal-{}.sock", std::process::id()));
    let screenshot = folder.join("terminal.ppm");
    let mut result: Option<Result> = None;
    let mut during = |lines: &[String]| {
        if result.is_none()
            && TERMINAL_READY
                .iter()
                .all(|ready| lines.iter().any(|line| line.contains(ready)))
        {
            result = Some(read_type_and_point(&monitor_path, &screenshot));
        }
        result.is_some()
    };
    let boot = boot_with_monitor(&image, Echo::Lines, &monitor_path, &mut during);
    let _ = std::fs::remove_file(&monitor_path);
    let boot = boot?;
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    match result {
        None => Err(format!("the guest never printed {TERMINAL_READY:?}")),
        Some(Err(error)) => Err(error),
        Some(Ok(())) => {
            boot.verdict(&expected)?;
            eprintln!("xtask: boot test passed (the terminal read, typed into and pointed at on QEMU's display)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_ppm() -> Vec<u8> {
        let mut bytes = format!("P6\n{WIDTH} {HEIGHT}\n255\n").into_bytes();
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let colour = if y < HEIGHT / 2 {
                    BARS[x / (WIDTH / 8)]
                } else if x.abs_diff(WIDTH / 2) < 64 && y.abs_diff(HEIGHT * 3 / 4) < 64 {
                    [0xff; 3]
                } else {
                    [0; 3]
                };
                bytes.extend(colour);
            }
        }
        bytes
    }

    #[test]
    fn the_pattern_passes_and_a_changed_pixel_fails() {
        let bytes = pattern_ppm();
        check_test_pattern(&Ppm::parse(&bytes).unwrap()).unwrap();
        // The third bar's middle (cyan) turned black.
        let mut wrong = Ppm::parse(&bytes).unwrap();
        let at = (10 * WIDTH + 2 * 128 + 64) * 3;
        wrong.rgb[at..at + 3].copy_from_slice(&[0, 0, 0]);
        let error = check_test_pattern(&wrong).unwrap_err();
        assert!(error.contains("(320,10)"), "{error}");
        // SeaBIOS's text screen is 720x400.
        let text =
            Ppm::parse(&format!("P6 720 400 255\n{}", "\0".repeat(720 * 400 * 3)).into_bytes())
                .unwrap();
        assert!(check_test_pattern(&text).unwrap_err().contains("720x400"));
    }

    #[test]
    fn ppm_headers_are_checked() {
        assert!(Ppm::parse(b"P6\n2 1\n255\n\x01\x02\x03\x04\x05\x06").is_ok());
        assert!(Ppm::parse(b"P6\n# comment\n2 1\n255\n\x01\x02\x03\x04\x05\x06").is_ok());
        assert!(Ppm::parse(b"P6\n2 1\n255\n\x01\x02").is_err());
        assert!(Ppm::parse(b"P5\n2 1\n255\n\x01\x02").is_err());
        assert!(Ppm::parse(b"P6\n2").is_err());
    }

    #[test]
    fn vnc_listens_on_loopback_only() {
        assert_eq!(vnc_args(7), ["-vnc", "127.0.0.1:7"]);
    }
}
