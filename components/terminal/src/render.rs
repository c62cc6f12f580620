//! Drawing text cells into XRGB8888 pixels held in a plain byte slice.
//!
//! The glyphs and the text drawing are embedded-graphics' (its 9x18 mono
//! font, ISO 8859-1: characters outside it are drawn as `?`). The target
//! is a [`Canvas`] over any `&mut [u8]` with a stride, so the same code
//! draws into the terminal's one-text-row band (then copied to VRAM), a
//! whole test screen or the benchmark's.

use embedded_graphics::mono_font::{iso_8859_1::FONT_9X18, MonoFont, MonoTextStyleBuilder};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use embedded_graphics::text::{Baseline, Text};

/// The font every cell is drawn with.
pub const FONT: &MonoFont<'static> = &FONT_9X18;
/// A cell's size in pixels (the font's character size; the font has no
/// extra spacing).
pub const CELL_WIDTH: usize = 9;
pub const CELL_HEIGHT: usize = 18;
/// Bytes per pixel (XRGB8888).
pub const PIXEL_BYTES: usize = 4;

/// What a cell is drawn as; each style is a foreground and a background.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Style {
    #[default]
    Normal,
    /// The title line.
    Title,
    /// Column headings and area separators.
    Heading,
    /// A driver event in the log.
    Event,
    /// Something went wrong (a refusal, a device gone).
    Warning,
    /// The prompt and the typed command echoed in the log.
    Prompt,
    /// The editor's cursor (an inverted cell).
    Cursor,
}

impl Style {
    /// (foreground, background).
    pub fn colors(self) -> (Rgb888, Rgb888) {
        let dark = Rgb888::new(0x10, 0x18, 0x20);
        match self {
            Style::Normal => (Rgb888::new(0xd0, 0xd0, 0xd0), dark),
            Style::Title => (Rgb888::new(0xff, 0xff, 0xff), Rgb888::new(0x1f, 0x4e, 0x8c)),
            Style::Heading => (Rgb888::new(0x7f, 0xc8, 0xff), dark),
            Style::Event => (Rgb888::new(0x9f, 0xe0, 0x8f), dark),
            Style::Warning => (Rgb888::new(0xff, 0xb0, 0x40), dark),
            Style::Prompt => (Rgb888::new(0xff, 0xff, 0xff), dark),
            Style::Cursor => (dark, Rgb888::new(0xd0, 0xd0, 0xd0)),
        }
    }
}

/// One character cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub ch: char,
    pub style: Style,
}

impl Cell {
    pub const BLANK: Cell = Cell {
        ch: ' ',
        style: Style::Normal,
    };
}

/// The pixel value of a color in VRAM (XRGB8888, little endian).
pub fn pixel(color: Rgb888) -> [u8; 4] {
    [color.b(), color.g(), color.r(), 0]
}

/// XRGB8888 pixels in a byte slice: `height` rows of `width` pixels, row
/// N at byte `N * stride`. Drawing outside is clipped.
pub struct Canvas<'a> {
    bytes: &'a mut [u8],
    stride: usize,
    width: usize,
    height: usize,
}

impl<'a> Canvas<'a> {
    /// `None` when the slice is too small for the geometry.
    pub fn new(bytes: &'a mut [u8], width: usize, height: usize, stride: usize) -> Option<Self> {
        let needed = match height {
            0 => 0,
            rows => (rows - 1)
                .checked_mul(stride)?
                .checked_add(width.checked_mul(PIXEL_BYTES)?)?,
        };
        if stride < width * PIXEL_BYTES || bytes.len() < needed {
            return None;
        }
        Some(Canvas {
            bytes,
            stride,
            width,
            height,
        })
    }

    fn put(&mut self, x: usize, y: usize, value: [u8; 4]) {
        let at = y * self.stride + x * PIXEL_BYTES;
        self.bytes[at..at + PIXEL_BYTES].copy_from_slice(&value);
    }

    /// The pixel at (x, y) as (r, g, b), for tests and checks.
    pub fn rgb_at(&self, x: usize, y: usize) -> Option<(u8, u8, u8)> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = y * self.stride + x * PIXEL_BYTES;
        let p = &self.bytes[at..at + PIXEL_BYTES];
        Some((p[2], p[1], p[0]))
    }
}

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.width as u32, self.height as u32)
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(point, color) in pixels {
            if point.x >= 0
                && point.y >= 0
                && (point.x as usize) < self.width
                && (point.y as usize) < self.height
            {
                self.put(point.x as usize, point.y as usize, pixel(color));
            }
        }
        Ok(())
    }

    // Glyphs with a background arrive as whole cells, row by row: write
    // them straight into the rows instead of pixel by pixel with a bounds
    // check each.
    fn fill_contiguous<I>(&mut self, area: &Rectangle, colors: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Self::Color>,
    {
        let inside = area.intersection(&self.bounding_box());
        if inside != *area {
            return self.draw_iter(
                area.points()
                    .zip(colors)
                    .map(|(point, color)| Pixel(point, color)),
            );
        }
        let (x0, y0) = (area.top_left.x as usize, area.top_left.y as usize);
        let (w, h) = (area.size.width as usize, area.size.height as usize);
        let mut colors = colors.into_iter();
        for row in 0..h {
            let start = (y0 + row) * self.stride + x0 * PIXEL_BYTES;
            let line = &mut self.bytes[start..start + w * PIXEL_BYTES];
            for out in line.chunks_exact_mut(PIXEL_BYTES) {
                let Some(color) = colors.next() else {
                    return Ok(());
                };
                out.copy_from_slice(&pixel(color));
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let area = area.intersection(&self.bounding_box());
        let value = pixel(color);
        let (x0, y0) = (area.top_left.x as usize, area.top_left.y as usize);
        let (w, h) = (area.size.width as usize, area.size.height as usize);
        for row in 0..h {
            let start = (y0 + row) * self.stride + x0 * PIXEL_BYTES;
            for out in self.bytes[start..start + w * PIXEL_BYTES].chunks_exact_mut(PIXEL_BYTES) {
                out.copy_from_slice(&value);
            }
        }
        Ok(())
    }
}

/// Draw `cells` left to right with the top left corner of the first at
/// pixel (x, y). Runs of one style are drawn as one text.
pub fn draw_cells(canvas: &mut Canvas<'_>, x: usize, y: usize, cells: &[Cell]) {
    let mut index = 0;
    while index < cells.len() {
        let style = cells[index].style;
        let mut text: heapless::String<256> = heapless::String::new();
        let start = index;
        while index < cells.len() && cells[index].style == style {
            let ch = cells[index].ch;
            // Control characters would move the text; draw them as '?'.
            let ch = if ch.is_control() { '?' } else { ch };
            if text.push(ch).is_err() {
                break;
            }
            index += 1;
        }
        let (fg, bg) = style.colors();
        let text_style = MonoTextStyleBuilder::new()
            .font(FONT)
            .text_color(fg)
            .background_color(bg)
            .build();
        let at = Point::new((x + start * CELL_WIDTH) as i32, y as i32);
        let _ = Text::with_baseline(&text, at, text_style, Baseline::Top).draw(canvas);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn count_color(canvas: &Canvas<'_>, x0: usize, y0: usize, color: Rgb888) -> usize {
        let want = (color.r(), color.g(), color.b());
        let mut n = 0;
        for y in y0..y0 + CELL_HEIGHT {
            for x in x0..x0 + CELL_WIDTH {
                if canvas.rgb_at(x, y) == Some(want) {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn a_cell_covers_its_whole_box_in_its_colors() {
        let (w, h) = (4 * CELL_WIDTH, CELL_HEIGHT);
        let mut bytes = vec![0xeeu8; w * h * 4];
        let mut canvas = Canvas::new(&mut bytes, w, h, w * 4).unwrap();
        let cells = [
            Cell::BLANK,
            Cell {
                ch: 'M',
                style: Style::Normal,
            },
            Cell {
                ch: ' ',
                style: Style::Cursor,
            },
            Cell::BLANK,
        ];
        draw_cells(&mut canvas, 0, 0, &cells);
        let (fg, bg) = Style::Normal.colors();
        let area = CELL_WIDTH * CELL_HEIGHT;
        // The blank is all background; the M has ink and background only.
        assert_eq!(count_color(&canvas, 0, 0, bg), area);
        let ink = count_color(&canvas, CELL_WIDTH, 0, fg);
        assert!(ink > 10, "an M has ink: {ink}");
        assert_eq!(ink + count_color(&canvas, CELL_WIDTH, 0, bg), area);
        // The cursor cell is the inverted background.
        let (_, cursor_bg) = Style::Cursor.colors();
        assert_eq!(count_color(&canvas, 2 * CELL_WIDTH, 0, cursor_bg), area);
        // Nothing was left undrawn (0xee is no style's color).
        assert!(bytes.chunks(4).all(|p| p[3] == 0));
    }

    #[test]
    fn different_characters_draw_different_glyphs() {
        let (w, h) = (2 * CELL_WIDTH, CELL_HEIGHT);
        let mut bytes = vec![0u8; w * h * 4];
        let mut canvas = Canvas::new(&mut bytes, w, h, w * 4).unwrap();
        let cell = |ch| Cell {
            ch,
            style: Style::Normal,
        };
        draw_cells(&mut canvas, 0, 0, &[cell('I'), cell('W')]);
        let (fg, _) = Style::Normal.colors();
        let i = count_color(&canvas, 0, 0, fg);
        let m = count_color(&canvas, CELL_WIDTH, 0, fg);
        assert!(i > 0 && m > i, "I {i} W {m}");
    }

    #[test]
    fn drawing_honours_the_stride_and_the_offset() {
        // A 3-cell-wide screen in a buffer with 16 bytes of padding per row.
        let (w, h) = (3 * CELL_WIDTH, 2 * CELL_HEIGHT);
        let stride = w * 4 + 16;
        let mut bytes = vec![0u8; stride * h];
        let mut canvas = Canvas::new(&mut bytes, w, h, stride).unwrap();
        let cursor = Cell {
            ch: ' ',
            style: Style::Cursor,
        };
        draw_cells(&mut canvas, CELL_WIDTH, CELL_HEIGHT, &[cursor]);
        let (_, bg) = Style::Cursor.colors();
        assert_eq!(
            count_color(&canvas, CELL_WIDTH, CELL_HEIGHT, bg),
            CELL_WIDTH * CELL_HEIGHT
        );
        assert_eq!(count_color(&canvas, 0, CELL_HEIGHT, bg), 0);
        assert_eq!(count_color(&canvas, CELL_WIDTH, 0, bg), 0);
        // The padding is untouched.
        for row in 0..h {
            assert!(bytes[row * stride + w * 4..(row + 1) * stride]
                .iter()
                .all(|b| *b == 0));
        }
    }

    #[test]
    fn a_canvas_too_small_for_its_geometry_is_refused() {
        let mut bytes = vec![0u8; 100];
        assert!(Canvas::new(&mut bytes, 10, 3, 40).is_none());
        assert!(Canvas::new(&mut bytes, 10, 2, 30).is_none());
        assert!(Canvas::new(&mut bytes, 10, 2, 40).is_some());
    }

    #[test]
    fn text_past_the_edge_is_clipped_not_a_panic() {
        let (w, h) = (CELL_WIDTH + 3, CELL_HEIGHT - 2);
        let mut bytes = vec![0u8; w * h * 4];
        let mut canvas = Canvas::new(&mut bytes, w, h, w * 4).unwrap();
        let cell = Cell {
            ch: 'X',
            style: Style::Title,
        };
        draw_cells(&mut canvas, 0, 0, &[cell, cell, cell]);
        draw_cells(&mut canvas, 5000, 5000, &[cell]);
    }
}
