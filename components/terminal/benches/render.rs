//! The terminal's render benchmark (`cargo bench -p terminal --bench
//! render -- [--smoke] [--rounds N] [--scale N]`): frame updates per
//! second and dirt bytes per update on a 1024x768 XRGB8888 screen (113x42
//! cells of 9x18) for
//!
//! - `full redraw`: every cell and the margins drawn, the whole screen
//!   flushed (what a new `Mode.generation` costs);
//! - `one-line change`: one full-width text row rewritten (a status row
//!   changing);
//! - `keystroke`: one character typed at the prompt (the letter and the
//!   cursor).
//!
//! Each update is the terminal's own path: compose the console, take the
//! changed spans, draw them into the band and copy them into VRAM (here a
//! 3 MiB vector), merge the dirt rectangles. The flush's IPC to the video
//! driver and the host's copy are not in it. Interleaved rounds (A B C,
//! then C B A), medians with the min-max over the rounds.
//!
//! With `VMBUS_BENCH_JSON` set it appends its records (group `console`)
//! for `cargo xtask bench`.

use bench_record::Record;
use std::hint::black_box;
use std::time::Instant;
use terminal::console::Console;
use terminal::paint::{Geometry, Painter};
use terminal::render::Style;

const WIDTH: u16 = 1024;
const HEIGHT: u16 = 768;
const STRIDE: u32 = 4096;

struct Args {
    rounds: usize,
    scale: u64,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| bench_record::arg::<u64>(&argv, name);
    let smoke = argv.iter().any(|a| a == "--smoke");
    Args {
        rounds: value("--rounds").unwrap_or(if smoke { 1 } else { 7 }) as usize,
        scale: value("--scale").unwrap_or(if smoke { 1 } else { 10 }),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    FullRedraw,
    OneLine,
    Keystroke,
}

impl Kind {
    fn series(self) -> &'static str {
        match self {
            Kind::FullRedraw => "full redraw",
            Kind::OneLine => "one-line change",
            Kind::Keystroke => "keystroke",
        }
    }

    /// Updates per run at scale 1.
    fn updates(self) -> u64 {
        match self {
            Kind::FullRedraw => 20,
            Kind::OneLine => 400,
            Kind::Keystroke => 2000,
        }
    }
}

/// A console as the terminal shows it after a while: a full device
/// table, a full log, a few typed characters.
fn busy_console() -> Console {
    let geometry = geometry();
    let mut console = Console::new(geometry.cols(), geometry.rows());
    console.set_title(
        " seL4 Hyper-V guest console    video: 1024x768 synthvid 3.5    keyboard: ok    mouse: ok",
    );
    let rows = (0..12)
        .map(|i| {
            format!(
                "{i:>6} synthetic-video da0a7802-e377-4aac-8e77-0558eb1073f{i:x}  video      open      -         -    0"
            )
        })
        .collect();
    console.set_devices(rows, None);
    for i in 0..40 {
        console.log(
            &format!("bus: event {i}: a driver said something worth a line of the log"),
            Style::Event,
        );
    }
    console.compose();
    console
}

fn geometry() -> Geometry {
    Geometry::checked(WIDTH, HEIGHT, STRIDE, 32, 3 * 1024 * 1024).expect("1024x768 fits")
}

/// One run: (updates per second, dirt bytes per update).
fn run(kind: Kind, updates: u64) -> (f64, f64) {
    let mut console = busy_console();
    let mut painter = Painter::new(geometry());
    let mut vram = vec![0u8; 3 * 1024 * 1024];
    painter.paint_all(&mut console.grid, &mut vram);
    let mut dirt_bytes = 0u64;
    let start = Instant::now();
    for i in 0..updates {
        let painted = match kind {
            Kind::FullRedraw => painter.paint_all(&mut console.grid, &mut vram),
            Kind::OneLine => {
                let text = format!(
                    "{:>6} synthetic-video da0a7802-e377-4aac-8e77-0558eb1073f8  video      {:<9} -         -    {i}",
                    i % 7,
                    if i % 2 == 0 { "open" } else { "opening" }
                );
                console.grid.line(5, &text, Style::Normal);
                let spans = console.grid.take_dirty();
                painter.paint(&console.grid, &spans, &mut vram)
            }
            Kind::Keystroke => {
                // Type a letter, then take it back: each is one
                // keystroke changing two cells (the letter, the cursor).
                let key = if i % 2 == 0 {
                    terminal::keys::Key::Char((b'a' + (i / 2 % 26) as u8) as char)
                } else {
                    terminal::keys::Key::Backspace
                };
                console.editor.key(key);
                console.compose();
                let spans = console.grid.take_dirty();
                painter.paint(&console.grid, &spans, &mut vram)
            }
        };
        assert_eq!(painted.failed_writes, 0);
        dirt_bytes += painted.dirt_bytes;
        black_box(&painted.rects);
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(&vram);
    (updates as f64 / seconds, dirt_bytes as f64 / updates as f64)
}

/// (median, min, max)
fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

fn main() {
    let args = args();
    let kinds = [Kind::FullRedraw, Kind::OneLine, Kind::Keystroke];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut dirt: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    // Warm up the caches and the allocator once.
    for kind in kinds {
        run(kind, 2);
    }
    for round in 0..args.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..kinds.len()).collect()
        } else {
            (0..kinds.len()).rev().collect()
        };
        for index in order {
            let kind = kinds[index];
            let (rate, bytes) = run(kind, kind.updates() * args.scale);
            rates[index].push(rate);
            dirt[index].push(bytes);
        }
    }
    println!(
        "terminal render: 1024x768 XRGB8888, 113x42 cells of 9x18; {} interleaved rounds; medians [min-max]",
        args.rounds
    );
    println!(
        "{:<16} {:>28} {:>18}",
        "update", "updates/s", "dirt bytes/update"
    );
    for (index, kind) in kinds.iter().enumerate() {
        let (rate, rate_min, rate_max) = summary(&rates[index]);
        let (bytes, _, _) = summary(&dirt[index]);
        println!(
            "{:<16} {:>10.0} [{:.0}-{:.0}] {:>18.0}",
            kind.series(),
            rate,
            rate_min,
            rate_max,
            bytes
        );
        let note = "render + VRAM copy + dirt rectangles, no IPC (benches/render.rs)";
        Record::new("console", kind.series(), "frame updates", "updates/s", true)
            .samples(&rates[index])
            .note(note)
            .emit();
        Record::new("console", kind.series(), "dirt per update", "bytes", false)
            .samples(&dirt[index])
            .note(note)
            .emit();
    }
}
