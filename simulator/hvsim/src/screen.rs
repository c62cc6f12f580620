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

    /// Draws the image over `row` (screen pixels from `row_x`, on screen
    /// row `row_y`) with its hot spot at (x, y), blending each pixel by
    /// its alpha.
    pub fn draw_row(&self, row: &mut [u32], row_x: u32, row_y: u32, x: i32, y: i32) {
        let left = i64::from(x) - i64::from(self.hot_x);
        let image_row = i64::from(row_y) - (i64::from(y) - i64::from(self.hot_y));
        if image_row < 0 || image_row >= i64::from(self.height) {
            return;
        }
        for column in 0..self.width {
            let Some(index) = (left + i64::from(column))
                .checked_sub(i64::from(row_x))
                .filter(|&i| i >= 0 && (i as usize) < row.len())
            else {
                continue;
            };
            let Some(&argb) = self
                .argb
                .get(image_row as usize * self.width as usize + column as usize)
            else {
                continue;
            };
            row[index as usize] = blend(row[index as usize], argb);
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

    /// The image drawn over the whole picture, row by row, as the video
    /// host draws it.
    fn draw(image: &PointerImage, picture: &mut Picture, x: i32, y: i32) {
        let width = picture.width as usize;
        for (row_y, row) in picture.pixels.chunks_exact_mut(width).enumerate() {
            image.draw_row(row, 0, row_y as u32, x, y);
        }
    }

    #[test]
    fn a_row_from_mid_screen_gets_only_its_part_of_the_pointer() {
        let image = PointerImage {
            width: 3,
            height: 1,
            hot_x: 0,
            hot_y: 0,
            argb: vec![0xff_00_00_01, 0xff_00_00_02, 0xff_00_00_03],
        };
        // Screen pixels 5..7 of row 4; the pointer's hot spot at (4, 4).
        let mut row = vec![0; 2];
        image.draw_row(&mut row, 5, 4, 4, 4);
        assert_eq!(row, [2, 3]);
        let mut other_row = vec![0; 2];
        image.draw_row(&mut other_row, 5, 5, 4, 4);
        assert_eq!(other_row, [0, 0]);
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
        draw(&image, &mut picture, 0, 0);
        // Only the image's bottom-right pixel lands on the screen.
        assert_eq!(picture.pixel(0, 0), Some(0x00_00_00_ff));
        assert_eq!(picture.pixels.iter().filter(|&&p| p != 0).count(), 1);
        assert_eq!(image.area(0, 0, (4, 4)), Some((0, 0, 1, 1)));
        assert_eq!(image.area(-5, 0, (4, 4)), None);
        draw(&image, &mut picture, 2, 2);
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
