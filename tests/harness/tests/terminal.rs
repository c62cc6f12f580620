//! The console client (`terminal`) as a real process on the hosted
//! runtime, in the console system `tests/systems/terminal.toml`: the test
//! plays its five services (`video`, `keyboard`, `mouse`, the bus manager
//! `vmbus`, `kvp`) on their real channel ends, one thread each, and reads
//! the pixels the terminal drew through the simulated host's map of the
//! shared `vram` region (the host's view; the video driver maps it by
//! address only). Pictures are compared with the terminal's own rendering
//! of the expected text.
#![forbid(unsafe_code)]

use component_api::{Protocol, Refusal, Region};
use ipc_harness::{Double, Harness, WAIT};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use terminal::render::{self, Canvas, Cell, Style, CELL_HEIGHT, CELL_WIDTH};
use vmbus_ipc::bus::{self, ChannelState, DeviceStatus};
use vmbus_ipc::framebuffer::{self, Mode, Rect};
use vmbus_ipc::keyboard::{self, KeyStroke, Prefix};
use vmbus_ipc::{kvp, mouse};

const SYSTEM: &str = "tests/systems/terminal.toml";
const WIDTH: usize = 1024;
const HEIGHT: usize = 768;
const STRIDE: usize = 4096;
const PROMPT_ROW: usize = HEIGHT / CELL_HEIGHT - 1;

#[derive(Default)]
struct World {
    /// `None`: video answers NotReady.
    mode: Option<Mode>,
    flushes: Vec<Vec<Rect>>,
    pointers: Vec<(u16, u16)>,
    keys: VecDeque<KeyStroke>,
    pointer_events: VecDeque<mouse::PointerEvent>,
    devices: Vec<DeviceStatus>,
    /// Notifications the serving threads are to send ("video", ...).
    to_notify: Vec<&'static str>,
}

type Shared = Arc<Mutex<World>>;

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

/// Serve `P` on the double's `terminal` end from the world until `stop`,
/// sending the world's pending notifications for `name` on
/// `terminal_event` between calls.
fn serve<P: Protocol>(
    mut double: Double,
    name: &'static str,
    world: Shared,
    stop: Arc<AtomicBool>,
    answer: fn(&mut World, P::Request) -> P::Reply,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let notify = {
                let mut w = world.lock().unwrap();
                let before = w.to_notify.len();
                w.to_notify.retain(|n| *n != name);
                w.to_notify.len() != before
            };
            if notify {
                double.notify("terminal_event");
            }
            double.serve_call("terminal", Duration::from_millis(5), |message| {
                let request = component_api::decode_request::<P>(message)?;
                let reply = answer(&mut world.lock().unwrap(), request);
                let mut buffer = vec![0u8; component_api::MAX_MESSAGE];
                let used = component_api::encode_reply::<P>(&mut buffer, &reply)?;
                buffer.truncate(used);
                Ok::<_, Refusal>(buffer)
            });
        }
    })
}

fn video(w: &mut World, request: framebuffer::Request) -> framebuffer::Reply {
    let Some(mode) = w.mode.clone() else {
        return framebuffer::Reply::NotReady;
    };
    match request {
        framebuffer::Request::Info => framebuffer::Reply::Info(mode),
        framebuffer::Request::Flush { rects } => {
            w.flushes.push(rects.to_vec());
            framebuffer::Reply::Flushed {
                rects: rects.len() as u8,
                bytes: 0,
            }
        }
        framebuffer::Request::Pointer { x, y, .. } => {
            w.pointers.push((x, y));
            framebuffer::Reply::Done
        }
    }
}

fn keys(w: &mut World, _: keyboard::Request) -> keyboard::Reply {
    let mut keys = heapless::Vec::new();
    while keys.len() < keyboard::MAX_KEYS {
        match w.keys.pop_front() {
            Some(key) => keys.push(key).unwrap(),
            None => break,
        }
    }
    keyboard::Reply::Keys { keys, dropped: 0 }
}

fn pointer(w: &mut World, _: mouse::Request) -> mouse::Reply {
    let mut events = heapless::Vec::new();
    while events.len() < mouse::MAX_EVENTS {
        match w.pointer_events.pop_front() {
            Some(event) => events.push(event).unwrap(),
            None => break,
        }
    }
    mouse::Reply::Events { events, dropped: 0 }
}

fn table(w: &mut World, request: bus::Request) -> bus::Reply {
    match request {
        bus::Request::Device { index } => match w.devices.get(index as usize) {
            Some(row) => bus::Reply::Device(row.clone()),
            None => bus::Reply::NoSuchDevice,
        },
        _ => bus::Reply::Refused(bus::Refusal::NotADriver),
    }
}

fn pairs(_: &mut World, request: kvp::Request) -> kvp::Reply {
    match request {
        kvp::Request::Enumerate {
            pool: kvp::POOL_EXTERNAL,
            index: 0,
        } => kvp::Reply::Pair {
            key: "HostName".try_into().unwrap(),
            value: "hosted-test".try_into().unwrap(),
        },
        kvp::Request::Enumerate { .. } => kvp::Reply::NotFound,
        _ => kvp::Reply::Refused,
    }
}

struct Console {
    harness: Harness,
    world: Shared,
    vram: Region,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn start() -> Console {
    let harness = Harness::builder(SYSTEM)
        .double("hvsim")
        .double("synic")
        .double("vmbus")
        .double("kvp")
        .double("video")
        .double("keyboard")
        .double("mouse")
        .start()
        .expect("the console system starts");
    let world: Shared = Arc::default();
    {
        let mut w = world.lock().unwrap();
        w.mode = Some(mode(1));
        w.devices = vec![
            device("kvp", vmbus_protocol::guid::class::KVP, 1),
            device("video", vmbus_protocol::guid::class::SYNTHETIC_VIDEO, 2),
            device("keyboard", vmbus_protocol::guid::class::KEYBOARD, 3),
        ];
    }
    let vram = harness.double("hvsim").region("vram");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = vec![
        serve::<framebuffer::Framebuffer>(
            harness.double("video"),
            "video",
            world.clone(),
            stop.clone(),
            video,
        ),
        serve::<keyboard::Keyboard>(
            harness.double("keyboard"),
            "keyboard",
            world.clone(),
            stop.clone(),
            keys,
        ),
        serve::<mouse::Mouse>(
            harness.double("mouse"),
            "mouse",
            world.clone(),
            stop.clone(),
            pointer,
        ),
        serve::<bus::Bus>(
            harness.double("vmbus"),
            "vmbus",
            world.clone(),
            stop.clone(),
            table,
        ),
        serve::<kvp::Kvp>(
            harness.double("kvp"),
            "kvp",
            world.clone(),
            stop.clone(),
            pairs,
        ),
    ];
    Console {
        harness,
        world,
        vram,
        stop,
        threads,
    }
}

impl Console {
    /// Wait until `check` holds for the world (polling), or fail.
    fn until(&self, what: &str, check: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if check(&self.world.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.harness.fail(&format!("timed out waiting for {what}"));
    }

    fn notify(&self, name: &'static str) {
        self.world.lock().unwrap().to_notify.push(name);
    }

    fn type_scan_codes(&self, codes: &[u16]) {
        let mut w = self.world.lock().unwrap();
        for &code in codes {
            for released in [false, true] {
                w.keys.push_back(KeyStroke {
                    code,
                    prefix: Prefix::None,
                    released,
                    unicode: false,
                });
            }
        }
    }

    fn text_row_shows(&self, row: usize, text: &str, style: Style) -> bool {
        let cells: Vec<Cell> = text.chars().map(|ch| Cell { ch, style }).collect();
        let mut expected = vec![0u8; STRIDE * CELL_HEIGHT];
        let mut canvas = Canvas::new(&mut expected, WIDTH, CELL_HEIGHT, STRIDE).unwrap();
        render::draw_cells(&mut canvas, 0, 0, &cells);
        let used = cells.len() * CELL_WIDTH * 4;
        let mut line = vec![0u8; used];
        (0..CELL_HEIGHT).all(|py| {
            let at = (row * CELL_HEIGHT + py) * STRIDE;
            self.vram.read(at, &mut line).unwrap();
            line == expected[py * STRIDE..py * STRIDE + used]
        })
    }

    fn screen_shows(&self, text: &str, style: Style) -> bool {
        (0..=PROMPT_ROW).any(|row| self.text_row_shows(row, text, style))
    }

    /// Wait until some text row of VRAM shows `text`.
    fn until_shown(&self, text: &str, style: Style) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.screen_shows(text, style) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.harness
            .fail(&format!("the screen never showed {text:?}"));
    }
}

fn whole_screen() -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: WIDTH as u16,
        height: HEIGHT as u16,
    }
}

#[test]
fn the_terminal_draws_types_runs_commands_and_survives_a_video_restart() {
    let console = start();
    console
        .harness
        .expect_output("[terminal] terminal: VRAM 3072 KiB", 0);
    // The first picture: the whole screen, flushed as one rectangle.
    console.until("the first flush", |w| !w.flushes.is_empty());
    assert_eq!(
        console.world.lock().unwrap().flushes[0],
        vec![whole_screen()]
    );
    console.until_shown(" seL4 Hyper-V guest console", Style::Title);
    console.until_shown(terminal::console::PROMPT, Style::Prompt);
    let video_row = terminal::status::device_row(&console.world.lock().unwrap().devices[1]);
    console.until_shown(&video_row, Style::Normal);

    // Typed keys appear at the prompt; only the prompt row is flushed.
    let flushes = console.world.lock().unwrap().flushes.len();
    // k v p
    console.type_scan_codes(&[0x25, 0x2f, 0x19]);
    console.notify("keyboard");
    console.until_shown("terminal> kvp", Style::Prompt);
    {
        let w = console.world.lock().unwrap();
        assert!(w.flushes.len() > flushes);
        for rect in w.flushes[flushes..].iter().flatten() {
            assert_eq!(rect.y as usize, PROMPT_ROW * CELL_HEIGHT, "{rect:?}");
            assert_eq!(rect.height as usize, CELL_HEIGHT, "{rect:?}");
        }
    }
    // Enter runs it: the host's pair is listed in the log.
    console.type_scan_codes(&[0x1c]);
    console.notify("keyboard");
    console.until_shown("external: HostName = hosted-test", Style::Normal);

    // The pointer follows the mouse, in pixels.
    console
        .world
        .lock()
        .unwrap()
        .pointer_events
        .push_back(mouse::PointerEvent {
            x: 0x7fff,
            y: 0,
            buttons: 0,
            wheel: 0,
        });
    console.notify("mouse");
    console.until("the pointer", |w| w.pointers.contains(&(1023, 0)));

    // Video goes away (restarting) and comes back with a new generation:
    // the terminal keeps going and draws everything again.
    console.world.lock().unwrap().mode = None;
    console.notify("video");
    console.type_scan_codes(&[0x23]); // h
    console.notify("keyboard");
    std::thread::sleep(Duration::from_millis(200));
    let before = console.world.lock().unwrap().flushes.len();
    console.world.lock().unwrap().mode = Some(mode(2));
    console.notify("video");
    console.until("the full redraw", |w| {
        w.flushes.len() > before && w.flushes.last() == Some(&vec![whole_screen()])
    });
    console.until_shown("terminal> h", Style::Prompt);
    console.until_shown(
        "video: 1024x768, 32 bpp, stride 4096, synthvid 3.5, generation 2",
        Style::Event,
    );
}
