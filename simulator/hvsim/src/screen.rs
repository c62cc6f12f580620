//! The host's view of the synthetic video device's screen: a [`Picture`]
//! (VRAM per the guest's last situation update, with the pointer drawn on
//! top when visible), the pointer compositing, and (hosted) a PNG of it.
//!
//! Everything here works on what the device host copied out of guest
//! memory; nothing reads the guest's VRAM directly.

use alloc::vec::Vec;

/// A picture of the screen: 0x00RRGGBB pixels, row-major, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Picture {
    /// The pixel at (x, y), if inside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.pixels
            .get(y as usize * self.width as usize + x as usize)
            .copied()
    }
}

/// The pointer image the guest sent: ARGB pixels (alpha in the high byte)
/// and its hot spot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointerImage {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub argb: Vec<u32>,
}

impl PointerImage {
    /// The screen rectangle (x, y, w, h) the image covers with its hot
    /// spot at (x, y), clipped to the screen (`None` if off it).
    pub fn area(&self, x: i32, y: i32, screen: (u32, u32)) -> Option<(u32, u32, u32, u32)> {
        let left = i64::from(x) - i64::from(self.hot_x);
        let top = i64::from(y) - i64::from(self.hot_y);
        clip(
            left,
            top,
            left + i64::from(self.width),
            top + i64::from(self.height),
            screen,
        )
    }

    /// Draws the image over `picture` with its hot spot at (x, y),
    /// blending each pixel by its alpha.
    pub fn draw(&self, picture: &mut Picture, x: i32, y: i32) {
        let left = i64::from(x) - i64::from(self.hot_x);
        let top = i64::from(y) - i64::from(self.hot_y);
        for row in 0..self.height {
            let screen_y = top + i64::from(row);
            if screen_y < 0 || screen_y >= i64::from(picture.height) {
                continue;
            }
            for column in 0..self.width {
                let screen_x = left + i64::from(column);
                if screen_x < 0 || screen_x >= i64::from(picture.width) {
                    continue;
                }
                let Some(&argb) = self
                    .argb
                    .get(row as usize * self.width as usize + column as usize)
                else {
                    continue;
                };
                let index = screen_y as usize * picture.width as usize + screen_x as usize;
                picture.pixels[index] = blend(picture.pixels[index], argb);
            }
        }
    }
}

/// `over` (ARGB) blended onto `under` (XRGB) by `over`'s alpha.
pub fn blend(under: u32, over: u32) -> u32 {
    let alpha = over >> 24;
    let channel = |shift: u32| {
        let top = (over >> shift) & 0xff;
        let bottom = (under >> shift) & 0xff;
        ((top * alpha + bottom * (255 - alpha) + 127) / 255) << shift
    };
    channel(16) | channel(8) | channel(0)
}

/// The part of [x1, x2) x [y1, y2) on a `screen` (width, height), as
/// (x, y, w, h); `None` when nothing of it is.
pub fn clip(
    x1: i64,
    y1: i64,
    x2: i64,
    y2: i64,
    screen: (u32, u32),
) -> Option<(u32, u32, u32, u32)> {
    let left = x1.max(0);
    let top = y1.max(0);
    let right = x2.min(i64::from(screen.0));
    let bottom = y2.min(i64::from(screen.1));
    if right <= left || bottom <= top {
        return None;
    }
    Some((
        left as u32,
        top as u32,
        (right - left) as u32,
        (bottom - top) as u32,
    ))
}

/// The union of two (x, y, w, h) rectangles.
pub fn union(
    a: Option<(u32, u32, u32, u32)>,
    b: Option<(u32, u32, u32, u32)>,
) -> Option<(u32, u32, u32, u32)> {
    match (a, b) {
        (None, other) | (other, None) => other,
        (Some(a), Some(b)) => {
            let left = a.0.min(b.0);
            let top = a.1.min(b.1);
            let right = (a.0 + a.2).max(b.0 + b.2);
            let bottom = (a.1 + a.3).max(b.1 + b.3);
            Some((left, top, right - left, bottom - top))
        }
    }
}

/// The picture as a PNG file (8-bit RGB).
#[cfg(not(target_os = "none"))]
pub fn write_png(picture: &Picture, path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder =
        png::Encoder::new(std::io::BufWriter::new(file), picture.width, picture.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(picture.pixels.len() * 3);
    for pixel in &picture.pixels {
        bytes.extend_from_slice(&[(pixel >> 16) as u8, (pixel >> 8) as u8, *pixel as u8]);
    }
    writer
        .write_image_data(&bytes)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn blending_follows_alpha() {
        assert_eq!(blend(0x00_12_34_56, 0xff_ab_cd_ef), 0x00_ab_cd_ef);
        assert_eq!(blend(0x00_12_34_56, 0x00_ab_cd_ef), 0x00_12_34_56);
        assert_eq!(blend(0x00_00_00_00, 0x80_ff_ff_ff), 0x00_80_80_80);
    }

    #[test]
    fn the_pointer_is_drawn_around_its_hot_spot_and_clipped() {
        let mut picture = Picture {
            width: 4,
            height: 4,
            pixels: vec![0; 16],
        };
        let image = PointerImage {
            width: 2,
            height: 2,
            hot_x: 1,
            hot_y: 1,
            argb: vec![0xff_ff_00_00, 0x00_ff_ff_ff, 0xff_00_ff_00, 0xff_00_00_ff],
        };
        image.draw(&mut picture, 0, 0);
        // Only the image's bottom-right pixel lands on the screen.
        assert_eq!(picture.pixel(0, 0), Some(0x00_00_00_ff));
        assert_eq!(picture.pixels.iter().filter(|&&p| p != 0).count(), 1);
        assert_eq!(image.area(0, 0, (4, 4)), Some((0, 0, 1, 1)));
        assert_eq!(image.area(-5, 0, (4, 4)), None);
        image.draw(&mut picture, 2, 2);
        assert_eq!(picture.pixel(1, 1), Some(0x00_ff_00_00));
        assert_eq!(picture.pixel(2, 1), Some(0), "transparent");
    }

    #[test]
    fn clipping_and_unions() {
        assert_eq!(clip(-2, -2, 3, 3, (10, 10)), Some((0, 0, 3, 3)));
        assert_eq!(clip(5, 5, 5, 9, (10, 10)), None);
        assert_eq!(clip(8, 8, 20, 20, (10, 10)), Some((8, 8, 2, 2)));
        assert_eq!(
            union(Some((0, 0, 2, 2)), Some((5, 5, 1, 1))),
            Some((0, 0, 6, 6))
        );
        assert_eq!(union(None, Some((1, 1, 1, 1))), Some((1, 1, 1, 1)));
    }
}
