//! Draw a sample console screen (1024x768) the way the terminal draws
//! it and write it as a binary PPM: `cargo run -p terminal --example
//! screen -- OUT.ppm`. For looking at the layout and the font without a
//! VM; the screen in a running system comes from the host (hvsim's
//! `screenshot`, QEMU's `screendump`).

use terminal::console::Console;
use terminal::keys::Key;
use terminal::paint::{Geometry, Painter};
use terminal::render::Style;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "screen.ppm".into());
    let geometry = Geometry::checked(1024, 768, 4096, 32, 3 * 1024 * 1024).expect("fits");
    let mut console = Console::new(geometry.cols(), geometry.rows());
    console.set_title(
        " seL4 Hyper-V guest console    video: 1024x768 synthvid 3.5    keyboard: ok    mouse: ok",
    );
    let rows = [
        "     1 kvp             a9a0f4e7-5a45-4d96-b827-8a841e8c03e6  kvp        open      3.0       4.0  0",
        "     2 synthetic-video da0a7802-e377-4aac-8e77-0558eb1073f8  video      open      -         -    0",
        "     3 keyboard        f912ad6d-2b17-48ea-bd65-f927a61c7684  keyboard   open      -         -    0",
        "     4 mouse           cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a  mouse      open      -         -    1",
        "     5 scsi            ba6163d9-04a1-4d29-b605-72e2ffb1dc7f  storage    open      -         -    0",
    ];
    console.set_devices(rows.iter().map(|r| r.to_string()).collect(), None);
    console.log("terminal: started; type help", Style::Event);
    console.log("keyboard: connected", Style::Event);
    console.log(
        "video: 1024x768, 32 bpp, stride 4096, synthvid 3.5, generation 1",
        Style::Event,
    );
    console.log("bus: mouse restarted (1 restarts)", Style::Event);
    console.log(
        "mouse: no answer (the driver is restarting?)",
        Style::Warning,
    );
    console.log("terminal> kvp", Style::Prompt);
    console.log("external: HostName = build-host", Style::Normal);
    console.log("guest: GuestClient = ready", Style::Normal);
    for ch in "disks".chars() {
        console.editor.key(Key::Char(ch));
    }
    console.compose();
    let mut vram = vec![0u8; 3 * 1024 * 1024];
    Painter::new(geometry).paint_all(&mut console.grid, &mut vram);
    let mut ppm = b"P6\n1024 768\n255\n".to_vec();
    for pixel in vram.chunks_exact(4) {
        ppm.extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
    }
    std::fs::write(&out, ppm).expect("write the picture");
    println!("wrote {out}");
}
