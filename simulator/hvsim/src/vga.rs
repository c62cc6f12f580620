//! QEMU's standard VGA (`-vga std`, the Bochs "DISPI" display, PCI device
//! 1234:1111) as the simulated host's own screen in the seL4 image: the
//! host shows the guest's synthetic framebuffer on it.
//!
//! How: find the device on PCI bus 0 through configuration mechanism #1
//! (IO ports 0xcf8/0xcfc), check that its BAR0 (the linear framebuffer,
//! which SeaBIOS places at 0xfd000000 on QEMU's i440fx) is where the
//! description's device region is and that memory decoding is on, set a
//! [`WIDTH`]x[`HEIGHT`]x32 mode through the Bochs VBE registers (index
//! port 0x1ce, data port 0x1cf), read the mode back, then copy rectangles
//! of 0x00RRGGBB pixels into the framebuffer (the same layout: 32 bits per
//! pixel, little endian, blue in the low byte).
//!
//! The port access is [`VgaPorts`] (the component implements it over its
//! IO-port capabilities), so the logic is tested here against a model.
//! Trusts nothing the device says: every value read is checked, the PCI
//! scan is bounded, and copies are clipped to the mode and the region.

use component_api::Region;

/// The mode the host sets: the synthetic video device's largest (and the
/// `vram` region's) 1024x768 at 32 bits per pixel.
pub const WIDTH: u32 = 1024;
pub const HEIGHT: u32 = 768;
pub const BYTES_PER_PIXEL: u32 = 4;
/// Bytes the mode needs (3 MiB).
pub const MODE_BYTES: usize = (WIDTH * HEIGHT * BYTES_PER_PIXEL) as usize;

/// QEMU's std VGA (Bochs display) on PCI.
pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x1111;

/// PCI configuration mechanism #1.
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PCI_CONFIG_DATA: u16 = 0xcfc;
const PCI_ENABLE: u32 = 1 << 31;
const PCI_COMMAND: u8 = 0x04;
const PCI_COMMAND_MEMORY: u32 = 1 << 1;
const PCI_BAR0: u8 = 0x10;
/// BAR bits: I/O space (bit 0), type (bits 1-2: 0b10 64-bit).
const BAR_IO: u32 = 1;
const BAR_TYPE_64: u32 = 0b100;
const BAR_ADDRESS_MASK: u32 = !0xf;

/// The Bochs VBE ("DISPI") registers, by index.
pub mod dispi {
    pub const INDEX_PORT: u16 = 0x1ce;
    pub const DATA_PORT: u16 = 0x1cf;
    pub const ID: u16 = 0;
    pub const XRES: u16 = 1;
    pub const YRES: u16 = 2;
    pub const BPP: u16 = 3;
    pub const ENABLE: u16 = 4;
    pub const BANK: u16 = 5;
    pub const VIRT_WIDTH: u16 = 6;
    pub const VIRT_HEIGHT: u16 = 7;
    pub const X_OFFSET: u16 = 8;
    pub const Y_OFFSET: u16 = 9;
    /// `ID` values: 0xB0C0 up to 0xB0C5 (QEMU reports 0xB0C5).
    pub const ID_FIRST: u16 = 0xb0c0;
    pub const ID_LAST: u16 = 0xb0c5;
    /// `ID` from which 32 bits per pixel and the linear framebuffer exist.
    pub const ID_LFB: u16 = 0xb0c2;
    pub const ENABLED: u16 = 0x01;
    pub const LFB_ENABLED: u16 = 0x40;
}

/// The IO ports the display needs. `pci_config_*` take the full
/// mechanism-#1 address (enable bit, bus, device, function, register).
pub trait VgaPorts {
    fn pci_config_read(&mut self, address: u32) -> u32;
    fn pci_config_write(&mut self, address: u32, value: u32);
    fn dispi_read(&mut self, index: u16) -> u16;
    fn dispi_write(&mut self, index: u16, value: u16);
}

/// A PCI function's configuration address (mechanism #1).
pub const fn pci_address(bus: u8, device: u8, function: u8, register: u8) -> u32 {
    PCI_ENABLE
        | (bus as u32) << 16
        | ((device & 0x1f) as u32) << 11
        | ((function & 0x7) as u32) << 8
        | (register & 0xfc) as u32
}

/// Why the display is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgaError {
    /// No 1234:1111 on bus 0 (QEMU without `-vga std`).
    NotFound,
    /// BAR0 is not a memory BAR below 4 GiB.
    BarNotMemory(u32),
    /// BAR0 is not where the description's device region is.
    BarElsewhere { bar: u64, region: u64 },
    /// The region is smaller than the mode.
    RegionTooSmall(usize),
    /// The DISPI `ID` is not a Bochs display with a linear framebuffer.
    UnknownDispi(u16),
    /// The mode read back is not the one set (xres, yres, bpp).
    ModeRefused(u16, u16, u16),
}

impl core::fmt::Display for VgaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VgaError::NotFound => write!(f, "no std VGA (PCI 1234:1111) on bus 0"),
            VgaError::BarNotMemory(bar) => write!(f, "BAR0 {bar:#x} is not a 32-bit memory BAR"),
            VgaError::BarElsewhere { bar, region } => write!(
                f,
                "BAR0 is at {bar:#x}, the description's region at {region:#x}"
            ),
            VgaError::RegionTooSmall(len) => write!(
                f,
                "the framebuffer region ({len} bytes) is smaller than the mode ({MODE_BYTES})"
            ),
            VgaError::UnknownDispi(id) => write!(f, "DISPI id {id:#x} is not a Bochs display"),
            VgaError::ModeRefused(x, y, bpp) => {
                write!(f, "the display kept mode {x}x{y}x{bpp}")
            }
        }
    }
}

/// Where the display was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciLocation {
    pub device: u8,
    pub bar0: u64,
    pub dispi_id: u16,
}

/// A rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Pixels to show: 0x00RRGGBB, row-major, no padding (the host's
/// `screen::Picture` lends its fields as this).
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    pub width: u32,
    pub height: u32,
    pub pixels: &'a [u32],
}

/// Counters of what the display did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgaStats {
    pub copies: u64,
    pub bytes: u64,
    /// Copies clipped (a rectangle outside the picture or the mode).
    pub clipped: u64,
    /// Pictures whose size disagreed with their pixel count (not shown).
    pub malformed: u64,
}

/// The std VGA in the host's mode, with its framebuffer mapped.
pub struct StdVga<P: VgaPorts> {
    ports: P,
    framebuffer: Region,
    location: PciLocation,
    pub stats: VgaStats,
}

/// Find the display on bus 0 and check its BAR0 against `region_physical`.
pub fn probe<P: VgaPorts>(ports: &mut P, region_physical: u64) -> Result<PciLocation, VgaError> {
    for device in 0..32u8 {
        let id = ports.pci_config_read(pci_address(0, device, 0, 0));
        if id == u32::MAX || id & 0xffff != u32::from(VENDOR_ID) || id >> 16 != u32::from(DEVICE_ID)
        {
            continue;
        }
        let bar = ports.pci_config_read(pci_address(0, device, 0, PCI_BAR0));
        if bar & BAR_IO != 0 || bar & BAR_TYPE_64 != 0 {
            return Err(VgaError::BarNotMemory(bar));
        }
        let bar0 = u64::from(bar & BAR_ADDRESS_MASK);
        if bar0 != region_physical {
            return Err(VgaError::BarElsewhere {
                bar: bar0,
                region: region_physical,
            });
        }
        let command_address = pci_address(0, device, 0, PCI_COMMAND);
        let command = ports.pci_config_read(command_address);
        if command & PCI_COMMAND_MEMORY == 0 {
            // The firmware left memory decoding off; the status half of
            // the dword is write-one-to-clear, so write zeros there.
            ports.pci_config_write(command_address, (command & 0xffff) | PCI_COMMAND_MEMORY);
        }
        let dispi_id = ports.dispi_read(dispi::ID);
        if !(dispi::ID_LFB..=dispi::ID_LAST).contains(&dispi_id) {
            return Err(VgaError::UnknownDispi(dispi_id));
        }
        return Ok(PciLocation {
            device,
            bar0,
            dispi_id,
        });
    }
    Err(VgaError::NotFound)
}

impl<P: VgaPorts> StdVga<P> {
    /// Probe, check the region and set the mode (the screen is cleared).
    pub fn attach(mut ports: P, framebuffer: Region, physical: u64) -> Result<Self, VgaError> {
        if framebuffer.len() < MODE_BYTES {
            return Err(VgaError::RegionTooSmall(framebuffer.len()));
        }
        let location = probe(&mut ports, physical)?;
        ports.dispi_write(dispi::ENABLE, 0);
        ports.dispi_write(dispi::XRES, WIDTH as u16);
        ports.dispi_write(dispi::YRES, HEIGHT as u16);
        ports.dispi_write(dispi::BPP, 32);
        ports.dispi_write(dispi::BANK, 0);
        ports.dispi_write(dispi::VIRT_WIDTH, WIDTH as u16);
        ports.dispi_write(dispi::X_OFFSET, 0);
        ports.dispi_write(dispi::Y_OFFSET, 0);
        ports.dispi_write(dispi::ENABLE, dispi::ENABLED | dispi::LFB_ENABLED);
        let mode = (
            ports.dispi_read(dispi::XRES),
            ports.dispi_read(dispi::YRES),
            ports.dispi_read(dispi::BPP),
        );
        let enabled = ports.dispi_read(dispi::ENABLE);
        if mode != (WIDTH as u16, HEIGHT as u16, 32) || enabled & dispi::ENABLED == 0 {
            return Err(VgaError::ModeRefused(mode.0, mode.1, mode.2));
        }
        Ok(StdVga {
            ports,
            framebuffer,
            location,
            stats: VgaStats::default(),
        })
    }

    pub fn location(&self) -> PciLocation {
        self.location
    }

    /// The ports, for a caller that shares them (tests).
    pub fn ports(&mut self) -> &mut P {
        &mut self.ports
    }

    /// Copy `rect` of `picture` to the same place on the screen, clipped to
    /// both. Returns the bytes written.
    pub fn show(&mut self, picture: Pixels<'_>, rect: Rect) -> usize {
        let expected = (picture.width as usize).checked_mul(picture.height as usize);
        if expected != Some(picture.pixels.len()) {
            self.stats.malformed += 1;
            return 0;
        }
        let right = rect
            .x
            .saturating_add(rect.width)
            .min(picture.width)
            .min(WIDTH);
        let bottom = rect
            .y
            .saturating_add(rect.height)
            .min(picture.height)
            .min(HEIGHT);
        if right != rect.x.saturating_add(rect.width)
            || bottom != rect.y.saturating_add(rect.height)
        {
            self.stats.clipped += 1;
        }
        if rect.x >= right || rect.y >= bottom {
            return 0;
        }
        let mut written = 0;
        for y in rect.y..bottom {
            let from = (y * picture.width + rect.x) as usize;
            let row = &picture.pixels[from..from + (right - rect.x) as usize];
            written += self.write_row(rect.x, y, row);
        }
        self.stats.copies += 1;
        self.stats.bytes += written as u64;
        written
    }

    /// Copy one row of pixels to (x, y) on the screen, clipped to it: how
    /// the simulator's picture arrives, a row at a time. Returns the bytes
    /// written.
    pub fn show_row(&mut self, x: u32, y: u32, row: &[u32]) -> usize {
        if x >= WIDTH || y >= HEIGHT {
            self.stats.clipped += 1;
            return 0;
        }
        let fits = row.len().min((WIDTH - x) as usize);
        if fits < row.len() {
            self.stats.clipped += 1;
        }
        let written = self.write_row(x, y, &row[..fits]);
        self.stats.copies += 1;
        self.stats.bytes += written as u64;
        written
    }

    /// `row` at (x, y); the caller clipped it to the mode.
    fn write_row(&mut self, x: u32, y: u32, row: &[u32]) -> usize {
        let offset = ((y * WIDTH + x) * BYTES_PER_PIXEL) as usize;
        let bytes = zerocopy::IntoBytes::as_bytes(row);
        // Inside the mode, which fits the region (checked at attach).
        if self.framebuffer.write_bulk(offset, bytes).is_ok() {
            bytes.len()
        } else {
            0
        }
    }

    /// Fill the whole screen with `pixel(x, y)`, a row at a time (no
    /// picture in memory: the seL4 image's heap is 1 MiB, the screen 3).
    /// Returns the bytes written.
    pub fn draw(&mut self, pixel: impl Fn(u32, u32) -> u32) -> usize {
        let mut row = alloc::vec![0u32; WIDTH as usize];
        let mut written = 0;
        for y in 0..HEIGHT {
            for (x, value) in row.iter_mut().enumerate() {
                *value = pixel(x as u32, y);
            }
            let offset = (y * WIDTH * BYTES_PER_PIXEL) as usize;
            let bytes = zerocopy::IntoBytes::as_bytes(row.as_slice());
            if self.framebuffer.write_bulk(offset, bytes).is_ok() {
                written += bytes.len();
            }
        }
        self.stats.copies += 1;
        self.stats.bytes += written as u64;
        written
    }

    /// Show a whole picture (its top-left part that fits).
    pub fn show_all(&mut self, picture: Pixels<'_>) -> usize {
        self.show(
            picture,
            Rect {
                x: 0,
                y: 0,
                width: picture.width,
                height: picture.height,
            },
        )
    }
}

/// The boot-time test pattern (`[console] test_pattern` in a scenario):
/// eight vertical bars of [`TEST_PATTERN_COLOURS`] over the top half and,
/// below, a white square of 128 pixels centred on a black ground, so a
/// screenshot shows whether rows, columns and colours all arrived.
pub const TEST_PATTERN_COLOURS: [u32; 8] = [
    0x00ff_ffff,
    0x00ff_ff00,
    0x0000_ffff,
    0x0000_ff00,
    0x00ff_00ff,
    0x00ff_0000,
    0x0000_00ff,
    0x0000_0000,
];

/// The test pattern's colour at (x, y) of a `WIDTH`x`HEIGHT` screen.
pub fn test_pattern_pixel(x: u32, y: u32) -> u32 {
    if y < HEIGHT / 2 {
        TEST_PATTERN_COLOURS[(x / (WIDTH / 8)) as usize % 8]
    } else {
        let centre_x = WIDTH / 2;
        let centre_y = HEIGHT * 3 / 4;
        if x.abs_diff(centre_x) < 64 && y.abs_diff(centre_y) < 64 {
            0x00ff_ffff
        } else {
            0x0000_0000
        }
    }
}

#[cfg(test)]
pub(crate) use tests::Model;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A model of QEMU's i440fx bus 0 with the std VGA at slot 2 and its
    /// DISPI registers (which, like QEMU's, refuse an unsupported bpp).
    pub(crate) struct Model {
        vga_slot: u8,
        bar0: u32,
        command: u32,
        dispi: [u16; 16],
        dispi_id: u16,
        config_writes: Vec<(u32, u32)>,
    }

    impl Model {
        pub(crate) fn new() -> Self {
            Model {
                vga_slot: 2,
                bar0: 0xfd00_0008,
                command: 0x0000_0103,
                dispi: [0; 16],
                dispi_id: 0xb0c5,
                config_writes: Vec::new(),
            }
        }
    }

    impl VgaPorts for Model {
        fn pci_config_read(&mut self, address: u32) -> u32 {
            let device = ((address >> 11) & 0x1f) as u8;
            let register = (address & 0xfc) as u8;
            match (device, register) {
                (0, 0) => 0x1237_8086,
                (1, 0) => 0x7000_8086,
                (d, 0) if d == self.vga_slot => 0x1111_1234,
                (d, 0x10) if d == self.vga_slot => self.bar0,
                (d, 0x04) if d == self.vga_slot => self.command,
                _ => u32::MAX,
            }
        }
        fn pci_config_write(&mut self, address: u32, value: u32) {
            self.config_writes.push((address, value));
            if (address & 0xfc) as u8 == 0x04 {
                self.command = value;
            }
        }
        fn dispi_read(&mut self, index: u16) -> u16 {
            if index == dispi::ID {
                self.dispi_id
            } else {
                self.dispi[index as usize % 16]
            }
        }
        fn dispi_write(&mut self, index: u16, value: u16) {
            if index == dispi::BPP && ![8, 15, 16, 24, 32].contains(&value) {
                return;
            }
            self.dispi[index as usize % 16] = value;
        }
    }

    fn framebuffer() -> Region {
        Region::leaked(MODE_BYTES)
    }

    #[test]
    fn finds_the_display_checks_bar0_and_sets_the_mode() {
        let vga = StdVga::attach(Model::new(), framebuffer(), 0xfd00_0000).unwrap();
        assert_eq!(
            vga.location(),
            PciLocation {
                device: 2,
                bar0: 0xfd00_0000,
                dispi_id: 0xb0c5
            }
        );
        let mut vga = vga;
        let model = vga.ports();
        assert_eq!(model.dispi[dispi::XRES as usize], 1024);
        assert_eq!(model.dispi[dispi::YRES as usize], 768);
        assert_eq!(model.dispi[dispi::BPP as usize], 32);
        assert_eq!(model.dispi[dispi::ENABLE as usize], 0x41);
        assert!(model.config_writes.is_empty(), "memory decoding was on");
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let attach = |model: Model, len: usize, physical: u64| {
            StdVga::attach(model, Region::leaked(len), physical).err()
        };
        let mut elsewhere = Model::new();
        elsewhere.bar0 = 0xe000_0008;
        assert_eq!(
            attach(elsewhere, MODE_BYTES, 0xfd00_0000),
            Some(VgaError::BarElsewhere {
                bar: 0xe000_0000,
                region: 0xfd00_0000
            })
        );
        let mut absent = Model::new();
        absent.vga_slot = 40; // never matched: no display
        assert_eq!(
            attach(absent, MODE_BYTES, 0xfd00_0000),
            Some(VgaError::NotFound)
        );
        let mut io_bar = Model::new();
        io_bar.bar0 = 0xc001;
        assert_eq!(
            attach(io_bar, MODE_BYTES, 0xfd00_0000),
            Some(VgaError::BarNotMemory(0xc001))
        );
        let mut old = Model::new();
        old.dispi_id = 0xb0c1;
        assert_eq!(
            attach(old, MODE_BYTES, 0xfd00_0000),
            Some(VgaError::UnknownDispi(0xb0c1))
        );
        assert_eq!(
            attach(Model::new(), MODE_BYTES - 4096, 0xfd00_0000),
            Some(VgaError::RegionTooSmall(MODE_BYTES - 4096))
        );
    }

    #[test]
    fn turns_memory_decoding_on_without_clearing_status_bits() {
        let mut model = Model::new();
        model.command = 0x0280_0001; // IO only, status bits set
        let mut vga = StdVga::attach(model, framebuffer(), 0xfd00_0000).unwrap();
        assert_eq!(
            vga.ports().config_writes,
            [(pci_address(0, 2, 0, 4), 0x0000_0003)]
        );
    }

    #[test]
    fn copies_the_rectangle_clipped_to_picture_and_mode() {
        let fb = framebuffer();
        let mut vga = StdVga::attach(Model::new(), fb, 0xfd00_0000).unwrap();
        let pixels: Vec<u32> = (0..16u32 * 8).collect();
        let picture = Pixels {
            width: 16,
            height: 8,
            pixels: &pixels,
        };
        let written = vga.show(
            picture,
            Rect {
                x: 2,
                y: 3,
                width: 4,
                height: 2,
            },
        );
        assert_eq!(written, 4 * 2 * 4);
        let pixel = |x: u32, y: u32| {
            let mut word = [0u8; 4];
            fb.read(((y * WIDTH + x) * 4) as usize, &mut word).unwrap();
            u32::from_le_bytes(word)
        };
        assert_eq!(pixel(2, 3), 3 * 16 + 2);
        assert_eq!(pixel(5, 4), 4 * 16 + 5);
        assert_eq!(pixel(6, 4), 0, "right of the rectangle");
        assert_eq!(pixel(2, 5), 0, "below the rectangle");
        // Past the picture: clipped, counted.
        let written = vga.show(
            picture,
            Rect {
                x: 14,
                y: 7,
                width: 100,
                height: 100,
            },
        );
        assert_eq!(written, 2 * 4);
        assert_eq!(vga.stats.clipped, 1);
        assert_eq!(
            vga.show(
                picture,
                Rect {
                    x: u32::MAX,
                    y: 0,
                    width: u32::MAX,
                    height: 1
                }
            ),
            0
        );
        // A picture whose pixels disagree with its size is not shown.
        let short = Pixels {
            width: 16,
            height: 9,
            pixels: &pixels,
        };
        assert_eq!(vga.show_all(short), 0);
        assert_eq!(vga.stats.malformed, 1);
    }

    #[test]
    fn the_test_pattern_fills_the_mode() {
        let fb = framebuffer();
        let mut vga = StdVga::attach(Model::new(), fb, 0xfd00_0000).unwrap();
        let written = vga.draw(test_pattern_pixel);
        assert_eq!(written, MODE_BYTES);
        // The same as a picture shown whole.
        let pattern: Vec<u32> = (0..HEIGHT)
            .flat_map(|y| (0..WIDTH).map(move |x| test_pattern_pixel(x, y)))
            .collect();
        let copy = Region::leaked(MODE_BYTES);
        let mut other = StdVga::attach(Model::new(), copy, 0xfd00_0000).unwrap();
        other.show_all(Pixels {
            width: WIDTH,
            height: HEIGHT,
            pixels: &pattern,
        });
        let (mut a, mut b) = (alloc::vec![0u8; MODE_BYTES], alloc::vec![0u8; MODE_BYTES]);
        fb.read_bulk(0, &mut a).unwrap();
        copy.read_bulk(0, &mut b).unwrap();
        assert!(a == b, "draw and show_all differ");
        let mut word = [0u8; 4];
        fb.read(((10 * WIDTH + 3 * 128 + 5) * 4) as usize, &mut word)
            .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x0000_ff00);
        assert_eq!(test_pattern_pixel(512, 576), 0x00ff_ffff);
        assert_eq!(test_pattern_pixel(100, 576), 0);
    }
}
