//! The synthetic video driver end to end, hosted: the simulated host
//! process offers the video device (`hvsim --devices video`), the driver
//! starts it, the test plays the framebuffer client (system.toml's
//! `terminal`, as a double: it draws a pattern into the VRAM through the
//! terminal's map and flushes), and the host's
//! screenshot (`screenshot PATH`, a PNG) must show the pattern and the
//! driver's pointer. Then the host turns hostile (`video-fault ...`): the
//! driver refuses and counts what it sends, and honours its feature
//! changes.
#![forbid(unsafe_code)]

use component_api::{call, CallError};
use ipc_harness::{Double, Harness, WAIT};
use std::time::Instant;
use vmbus_ipc::framebuffer::{Framebuffer, Mode, Rect, Reply, Request};

const SYSTEM: &str = "system.toml";

fn start() -> Harness {
    Harness::builder(SYSTEM)
        .double("terminal")
        .host_args(&["--events", "--devices", "video"])
        .start()
        .expect("the video system starts")
}

fn framebuffer(screen: &mut Double, request: &Request) -> Result<Reply, CallError> {
    let channel = screen.channel("video");
    call::<Framebuffer>(screen.env(), channel, request)
}

/// The mode once the driver serves one with a generation other than
/// `not` (it notifies the client of each).
fn wait_mode(screen: &mut Double, not: Option<u32>) -> Mode {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Reply::Info(mode) = framebuffer(screen, &Request::Info).expect("Info answered") {
            if Some(mode.generation) != not {
                return mode;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no new mode from the driver");
        screen.wait_notified("video_event", left);
    }
}

fn flush(screen: &mut Double, rects: &[Rect]) -> Reply {
    let request = Request::Flush {
        rects: heapless::Vec::from_slice(rects).unwrap(),
    };
    framebuffer(screen, &request).expect("Flush answered")
}

/// The colour bars the test draws: eight 128-pixel columns.
const BARS: [u32; 8] = [
    0x00ff_ffff,
    0x00ff_ff00,
    0x0000_ffff,
    0x0000_ff00,
    0x00ff_00ff,
    0x00ff_0000,
    0x0000_00ff,
    0x0010_2030,
];

/// Draws the bars into rows `rows` (XRGB8888, the mode's stride).
fn draw_bars(screen: &Double, mode: &Mode, rows: std::ops::Range<u32>) {
    let vram = screen.region("vram");
    let mut row = vec![0u8; mode.width as usize * 4];
    for (x, pixel) in row.chunks_exact_mut(4).enumerate() {
        pixel.copy_from_slice(&BARS[x / 128].to_le_bytes());
    }
    for y in rows {
        vram.write_bulk(y as usize * mode.stride as usize, &row)
            .expect("the VRAM map holds the mode");
    }
}

/// The host's screenshot, decoded: (width, height, 0x00RRGGBB pixels).
fn screenshot(harness: &Harness, name: &str) -> (u32, u32, Vec<u32>) {
    let path = std::env::temp_dir().join(format!("video-{}-{name}.png", std::process::id()));
    let answer = harness.host(&format!("screenshot {}", path.display()));
    assert_eq!(answer, "1024x768", "the host's answer");
    let decoder = png::Decoder::new(std::fs::File::open(&path).expect("the PNG is written"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut bytes = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut bytes).expect("its picture");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let pixels = bytes[..info.buffer_size()]
        .chunks_exact(3)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    let _ = std::fs::remove_file(&path);
    (info.width, info.height, pixels)
}

fn pixel(shot: &(u32, u32, Vec<u32>), x: u32, y: u32) -> u32 {
    shot.2[(y * shot.0 + x) as usize]
}

/// The host's counter `name` in `video-report`.
fn host_counter(harness: &Harness, name: &str) -> u64 {
    let report = harness.host("video-report");
    report
        .split(&format!("{name}: "))
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| harness.fail(&format!("no {name} in {report:?}")))
}

#[test]
fn a_pattern_drawn_into_vram_and_flushed_is_in_the_hosts_screenshot_with_the_pointer() {
    let harness = start();
    let mut screen = harness.double("terminal");
    harness.expect_output("hvsim event: video mode 1024x768", 0);
    harness.expect_output("[video] synthvid 3.5: 1024x768x32, stride 4096", 0);
    let mode = wait_mode(&mut screen, None);
    assert_eq!((mode.width, mode.height, mode.stride), (1024, 768, 4096));
    assert_eq!(mode.version, (3, 5));
    assert!(mode.updates_wanted);
    assert_eq!(mode.resolutions.len(), 6, "the host's list");
    // Before anything is drawn: black, with the driver's arrow at the
    // centre (its tip, the hot spot, is outline black; white inside). The
    // mode is served once the situation is sent; the pointer's shape and
    // position follow it, so the host may not have them yet.
    let deadline = Instant::now() + WAIT;
    let blank = loop {
        let blank = screenshot(&harness, "blank");
        if pixel(&blank, 514, 390) != 0 || Instant::now() > deadline {
            break blank;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(pixel(&blank, 100, 100), 0);
    assert_eq!(pixel(&blank, 514, 390), 0x00ff_ffff, "the arrow's inside");
    // The bars over rows 100..400, and a flush naming them.
    draw_bars(&screen, &mode, 100..400);
    let reply = flush(
        &mut screen,
        &[Rect {
            x: 0,
            y: 100,
            width: 1024,
            height: 300,
        }],
    );
    assert_eq!(
        reply,
        Reply::Flushed {
            rects: 1,
            bytes: 1024 * 300 * 4
        }
    );
    let shot = screenshot(&harness, "bars");
    for (index, colour) in BARS.iter().enumerate() {
        let x = index as u32 * 128 + 64;
        assert_eq!(pixel(&shot, x, 150), *colour, "bar {index}");
        assert_eq!(pixel(&shot, x, 399), *colour, "bar {index}, last row");
        assert_eq!(pixel(&shot, x, 400), 0, "below the bars");
        assert_eq!(pixel(&shot, x, 99), 0, "above the bars");
    }
    // The pointer is drawn over the bars where the client puts it.
    assert_eq!(
        framebuffer(
            &mut screen,
            &Request::Pointer {
                x: 700,
                y: 200,
                visible: true
            }
        ),
        Ok(Reply::Done)
    );
    // Done means the driver sent it; the host may not have read it yet.
    let deadline = Instant::now() + WAIT;
    let shot = loop {
        let shot = screenshot(&harness, "pointer");
        if pixel(&shot, 702, 206) == 0x00ff_ffff || Instant::now() > deadline {
            break shot;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(pixel(&shot, 700, 200), 0, "the arrow's outlined tip");
    assert_eq!(pixel(&shot, 702, 206), 0x00ff_ffff, "the arrow's inside");
    assert_eq!(pixel(&shot, 514, 390), BARS[4], "gone from the centre");
    assert_eq!(host_counter(&harness, "dirt_messages"), 1);
    assert_eq!(host_counter(&harness, "dirt_bytes"), 1024 * 300 * 4);
    assert_eq!(host_counter(&harness, "refused"), 0);
    let damage = harness.host("screen-damage");
    assert!(damage.starts_with("Some("), "{damage}");
}

#[test]
fn a_hostile_host_is_refused_and_counted_and_its_feature_changes_are_honoured() {
    let harness = start();
    let mut screen = harness.double("terminal");
    let mode = wait_mode(&mut screen, None);
    let from = harness.system().output().len();
    for fault in ["garbled", "oversized", "unknown-type"] {
        assert_eq!(harness.host(&format!("video-fault {fault}")), "true");
    }
    harness.expect_output("[video] refused a host message (1 so far): Size", from);
    harness.expect_output("[video] refused a host message (2 so far): Oversized", from);
    harness.expect_output(
        "[video] refused a host message (3 so far): message type 42 unexpected",
        from,
    );
    // Updates off: flushes are accepted and not sent.
    assert_eq!(harness.host("video-fault updates-off"), "true");
    harness.expect_output("[video] the host wants no updates", from);
    let quiet = wait_mode(&mut screen, Some(mode.generation));
    assert!(!quiet.updates_wanted);
    let rect = Rect {
        x: 0,
        y: 0,
        width: 16,
        height: 16,
    };
    assert_eq!(
        flush(&mut screen, &[rect]),
        Reply::Flushed { rects: 0, bytes: 0 }
    );
    assert_eq!(host_counter(&harness, "dirt_messages"), 0);
    // On again: a new generation for the client to redraw, and dirt flows.
    assert_eq!(harness.host("video-fault updates-on"), "true");
    let again = wait_mode(&mut screen, Some(quiet.generation));
    assert!(again.updates_wanted);
    assert_eq!(
        flush(&mut screen, &[rect]),
        Reply::Flushed {
            rects: 1,
            bytes: 16 * 16 * 4
        }
    );
    let deadline = Instant::now() + WAIT;
    while host_counter(&harness, "dirt_messages") != 1 {
        assert!(Instant::now() < deadline, "the host never saw the dirt");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(harness.system().faults().is_empty());
}

#[test]
fn a_resolution_list_too_long_and_an_ack_with_the_wrong_context_are_refused_at_the_start() {
    let harness = start();
    let mut screen = harness.double("terminal");
    let first = wait_mode(&mut screen, None);
    // Armed for the next start; the device is offered again to start it.
    assert_eq!(harness.host("video-fault resolution-too-long"), "true");
    assert_eq!(harness.host("video-fault vram-wrong-context"), "true");
    let relid = harness.host("relid video");
    let relid = relid
        .strip_prefix("Some(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| harness.fail(&format!("no video channel: {relid}")));
    let from = harness.system().output().len();
    assert_eq!(harness.host(&format!("rescind {relid}")), "true");
    harness.expect_output(&format!("hvsim event: closed relid {relid}"), from);
    let added = harness.host("add-device video 1");
    assert!(added.starts_with("relid "), "{added}");
    harness.expect_output(
        "[video] refused a host message (1 so far): resolution response: Oversized",
        from,
    );
    harness.expect_output(
        "[video] refused a host message (2 so far): a VRAM location ack for context",
        from,
    );
    harness.expect_output(
        "[video] synthvid 3.5: 1024x768x32, stride 4096, 0 host resolutions",
        from,
    );
    let mode = wait_mode(&mut screen, Some(first.generation));
    assert!(mode.resolutions.is_empty(), "the refused list is not used");
    assert_eq!(mode.width, 1024);
    assert!(harness.system().faults().is_empty());
}

#[test]
fn a_vram_location_the_host_never_acknowledges_is_sent_again_and_the_start_completes() {
    let harness = start();
    let mut screen = harness.double("terminal");
    let first = wait_mode(&mut screen, None);
    assert_eq!(harness.host("video-fault vram-no-ack"), "true");
    let relid = harness.host("relid video");
    let relid = relid
        .strip_prefix("Some(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| harness.fail(&format!("no video channel: {relid}")));
    let from = harness.system().output().len();
    assert_eq!(harness.host(&format!("rescind {relid}")), "true");
    harness.expect_output(&format!("hvsim event: closed relid {relid}"), from);
    assert!(harness.host("add-device video 1").starts_with("relid "));
    // The driver's wakeup (synic's timer) after 1 s: asked again with a
    // new context, which the host acknowledges.
    harness.expect_output("[video] no answer to Vram", from);
    harness.expect_output("[video] synthvid 3.5: 1024x768x32", from);
    let mode = wait_mode(&mut screen, Some(first.generation));
    assert_eq!(mode.width, 1024);
    assert_eq!(
        host_counter(&harness, "vram_locations"),
        3,
        "two starts, one resend"
    );
    assert!(harness.system().faults().is_empty());
}
