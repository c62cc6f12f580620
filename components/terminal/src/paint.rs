//! From changed cells to pixels in VRAM.
//!
//! Each changed span is drawn into a private band one text row high (the
//! renderer works on plain bytes), and the span's pixel rows are copied
//! into VRAM: what the host is told changed is exactly what was written.

use crate::dirt;
use crate::grid::{Grid, Span};
use crate::render::{self, Canvas, Style, CELL_HEIGHT, CELL_WIDTH, PIXEL_BYTES};
use alloc::vec;
use alloc::vec::Vec;
use vmbus_ipc::framebuffer::{Rect, MAX_RECTS};

/// Where pixels go: VRAM (a region) or, in tests and the benchmark, a
/// byte vector.
pub trait Vram {
    /// Copy `bytes` to `offset`; false if it does not fit.
    fn write(&mut self, offset: usize, bytes: &[u8]) -> bool;
}

impl Vram for Vec<u8> {
    fn write(&mut self, offset: usize, bytes: &[u8]) -> bool {
        match self.get_mut(offset..offset + bytes.len()) {
            Some(out) => {
                out.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

impl Vram for component_api::Region {
    fn write(&mut self, offset: usize, bytes: &[u8]) -> bool {
        self.write_bulk(offset, bytes).is_ok()
    }
}

/// A screen geometry the terminal can draw: XRGB8888 and inside VRAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    pub stride: usize,
}

impl Geometry {
    /// `None` for a mode the terminal cannot draw into `vram_bytes`.
    pub fn checked(
        width: u16,
        height: u16,
        stride: u32,
        depth_bits: u8,
        vram_bytes: usize,
    ) -> Option<Geometry> {
        let (width, height, stride) = (width as usize, height as usize, stride as usize);
        if depth_bits != 32 || width < CELL_WIDTH * 8 || height < CELL_HEIGHT * 8 {
            return None;
        }
        if stride < width * PIXEL_BYTES || stride.checked_mul(height)? > vram_bytes {
            return None;
        }
        Some(Geometry {
            width,
            height,
            stride,
        })
    }

    pub fn cols(&self) -> usize {
        self.width / CELL_WIDTH
    }

    pub fn rows(&self) -> usize {
        self.height / CELL_HEIGHT
    }

    pub fn whole(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width as u16,
            height: self.height as u16,
        }
    }
}

/// What one paint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Painted {
    pub rects: heapless::Vec<Rect, MAX_RECTS>,
    /// Bytes of VRAM the rectangles cover (what the host copies).
    pub dirt_bytes: u64,
    /// Writes VRAM refused (out of bounds: a geometry bug, never expected).
    pub failed_writes: u32,
}

pub struct Painter {
    geometry: Geometry,
    band: Vec<u8>,
    band_stride: usize,
}

impl Painter {
    pub fn new(geometry: Geometry) -> Painter {
        let band_stride = geometry.width * PIXEL_BYTES;
        Painter {
            geometry,
            band: vec![0; band_stride * CELL_HEIGHT],
            band_stride,
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn copy_rows(
        &self,
        vram: &mut dyn Vram,
        y0: usize,
        rows: usize,
        x0: usize,
        x1: usize,
        failed: &mut u32,
    ) {
        let g = self.geometry;
        for py in 0..rows {
            let y = y0 + py;
            if y >= g.height {
                break;
            }
            let from = py * self.band_stride;
            let bytes = &self.band[from + x0 * PIXEL_BYTES..from + x1 * PIXEL_BYTES];
            if !vram.write(y * g.stride + x0 * PIXEL_BYTES, bytes) {
                *failed += 1;
            }
        }
    }

    /// Draw the changed spans of `grid` into VRAM; the rectangles to flush.
    pub fn paint(&mut self, grid: &Grid, spans: &[Span], vram: &mut dyn Vram) -> Painted {
        let mut failed = 0;
        let g = self.geometry;
        for span in spans {
            if span.row >= grid.rows() || span.start >= span.end {
                continue;
            }
            let end = span.end.min(grid.cols());
            let x0 = span.start * CELL_WIDTH;
            let x1 = (end * CELL_WIDTH).min(g.width);
            if x0 >= x1 {
                continue;
            }
            if let Some(mut canvas) =
                Canvas::new(&mut self.band, g.width, CELL_HEIGHT, self.band_stride)
            {
                render::draw_cells(&mut canvas, x0, 0, &grid.row(span.row)[span.start..end]);
            }
            self.copy_rows(
                vram,
                span.row * CELL_HEIGHT,
                CELL_HEIGHT,
                x0,
                x1,
                &mut failed,
            );
        }
        let rects = dirt::rects(spans, g.width as u32, g.height as u32);
        Painted {
            dirt_bytes: dirt::bytes_of(&rects),
            rects,
            failed_writes: failed,
        }
    }

    /// Paint every cell and the margins the cells do not cover (right of
    /// the last column, below the last row) in the background: after a
    /// new mode nothing of the old picture stays. One rectangle: the
    /// whole screen.
    pub fn paint_all(&mut self, grid: &mut Grid, vram: &mut dyn Vram) -> Painted {
        grid.mark_all();
        let spans = grid.take_dirty();
        let mut painted = self.paint(grid, &spans, vram);
        let g = self.geometry;
        let background = render::pixel(Style::Normal.colors().1);
        for out in self.band.chunks_exact_mut(PIXEL_BYTES) {
            out.copy_from_slice(&background);
        }
        let covered_x = (grid.cols() * CELL_WIDTH).min(g.width);
        let covered_y = (grid.rows() * CELL_HEIGHT).min(g.height);
        let mut failed = 0;
        if covered_x < g.width {
            for y in (0..covered_y).step_by(CELL_HEIGHT) {
                self.copy_rows(vram, y, CELL_HEIGHT, covered_x, g.width, &mut failed);
            }
        }
        let mut y = covered_y;
        while y < g.height {
            self.copy_rows(vram, y, CELL_HEIGHT, 0, g.width, &mut failed);
            y += CELL_HEIGHT;
        }
        painted.failed_writes += failed;
        painted.rects.clear();
        let _ = painted.rects.push(g.whole());
        painted.dirt_bytes = dirt::bytes_of(&painted.rects);
        painted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(g: Geometry) -> Vec<u8> {
        vec![0xab; g.stride * g.height]
    }

    fn rgb(vram: &[u8], g: Geometry, x: usize, y: usize) -> (u8, u8, u8) {
        let at = y * g.stride + x * 4;
        (vram[at + 2], vram[at + 1], vram[at])
    }

    const G: Geometry = Geometry {
        width: 1024,
        height: 768,
        stride: 4096,
    };

    #[test]
    fn modes_the_terminal_cannot_draw_are_refused() {
        let vram = 3 * 1024 * 1024;
        assert_eq!(Geometry::checked(1024, 768, 4096, 32, vram), Some(G));
        assert_eq!(Geometry::checked(1024, 768, 4096, 16, vram), None);
        assert_eq!(Geometry::checked(1024, 768, 4000, 32, vram), None);
        assert_eq!(Geometry::checked(1280, 1024, 5120, 32, vram), None);
        assert_eq!(Geometry::checked(1024, 768, u32::MAX, 32, vram), None);
        assert_eq!(Geometry::checked(40, 768, 4096, 32, vram), None);
        assert_eq!(G.cols(), 113);
        assert_eq!(G.rows(), 42);
    }

    #[test]
    fn a_full_paint_covers_every_pixel_and_flushes_the_screen() {
        let mut vram = screen(G);
        let mut grid = Grid::new(G.cols(), G.rows());
        grid.line(3, "hello", Style::Normal);
        let mut painter = Painter::new(G);
        let painted = painter.paint_all(&mut grid, &mut vram);
        assert_eq!(painted.rects.as_slice(), [G.whole()]);
        assert_eq!(painted.dirt_bytes, 1024 * 768 * 4);
        assert_eq!(painted.failed_writes, 0);
        // No byte of the old picture is left (0xab in the X byte).
        assert!(vram.chunks(4).all(|p| p[3] == 0));
        assert!(!grid.is_dirty());
    }

    #[test]
    fn a_small_change_writes_only_its_cells() {
        let mut vram = screen(G);
        let mut grid = Grid::new(G.cols(), G.rows());
        let mut painter = Painter::new(G);
        painter.paint_all(&mut grid, &mut vram);
        let before = vram.clone();
        grid.put(5, 10, "Z", Style::Normal);
        let spans = grid.take_dirty();
        let painted = painter.paint(&grid, &spans, &mut vram);
        assert_eq!(
            painted.rects.as_slice(),
            [Rect {
                x: 90,
                y: 90,
                width: 9,
                height: 18
            }]
        );
        assert_eq!(painted.dirt_bytes, 9 * 18 * 4);
        let changed: Vec<(usize, usize)> = (0..G.height)
            .flat_map(|y| (0..G.width).map(move |x| (x, y)))
            .filter(|&(x, y)| rgb(&vram, G, x, y) != rgb(&before, G, x, y))
            .collect();
        assert!(!changed.is_empty());
        assert!(changed
            .iter()
            .all(|&(x, y)| (90..99).contains(&x) && (90..108).contains(&y)));
    }

    #[test]
    fn a_short_vram_fails_writes_and_does_not_panic() {
        let mut vram = vec![0u8; 1000];
        let mut grid = Grid::new(G.cols(), G.rows());
        let mut painter = Painter::new(G);
        let painted = painter.paint_all(&mut grid, &mut vram);
        assert!(painted.failed_writes > 0);
    }
}
