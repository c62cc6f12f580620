//! Changed cells to the dirt rectangles of one flush.
//!
//! A flush names at most [`MAX_RECTS`] rectangles: rows changed over the
//! same columns are joined first (a scrolled log is one rectangle), then,
//! while there are too many, the two neighbours whose union adds the
//! fewest pixels that did not change are joined.

use crate::grid::Span;
use crate::render::{CELL_HEIGHT, CELL_WIDTH, PIXEL_BYTES};
use alloc::vec::Vec;
use vmbus_ipc::framebuffer::{Rect, MAX_RECTS};

/// A pixel rectangle while the rectangles are being merged (u32: no
/// overflow while adding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Area {
    fn right(&self) -> u32 {
        self.x + self.width
    }

    fn bottom(&self) -> u32 {
        self.y + self.height
    }

    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn union(&self, other: &Area) -> Area {
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        Area {
            x,
            y,
            width: self.right().max(other.right()) - x,
            height: self.bottom().max(other.bottom()) - y,
        }
    }

    /// Cut to a `width` x `height` screen; `None` when nothing is left.
    fn clipped(&self, width: u32, height: u32) -> Option<Area> {
        let right = self.right().min(width);
        let bottom = self.bottom().min(height);
        (right > self.x && bottom > self.y).then(|| Area {
            x: self.x,
            y: self.y,
            width: right - self.x,
            height: bottom - self.y,
        })
    }
}

/// The pixel area of a changed span.
pub fn area_of(span: &Span) -> Area {
    Area {
        x: (span.start * CELL_WIDTH) as u32,
        y: (span.row * CELL_HEIGHT) as u32,
        width: ((span.end - span.start) * CELL_WIDTH) as u32,
        height: CELL_HEIGHT as u32,
    }
}

/// The rectangles of one flush for `spans` (top to bottom, as
/// `Grid::take_dirty` gives them) on a `width` x `height` screen.
pub fn rects(spans: &[Span], width: u32, height: u32) -> heapless::Vec<Rect, MAX_RECTS> {
    let mut areas: Vec<Area> = Vec::new();
    for span in spans {
        let area = area_of(span);
        match areas.last_mut() {
            // The row below with the same columns: grow downwards.
            Some(last)
                if last.x == area.x && last.width == area.width && last.bottom() == area.y =>
            {
                last.height += area.height;
            }
            _ => areas.push(area),
        }
    }
    while areas.len() > MAX_RECTS {
        let mut best = 0;
        let mut best_waste = u64::MAX;
        for i in 0..areas.len() - 1 {
            let joined = areas[i].union(&areas[i + 1]);
            let waste = joined.pixels() - areas[i].pixels() - areas[i + 1].pixels();
            if waste < best_waste {
                best = i;
                best_waste = waste;
            }
        }
        areas[best] = areas[best].union(&areas[best + 1]);
        areas.remove(best + 1);
    }
    let mut out = heapless::Vec::new();
    for area in areas.iter().filter_map(|a| a.clipped(width, height)) {
        let rect = Rect {
            x: area.x.min(u32::from(u16::MAX)) as u16,
            y: area.y.min(u32::from(u16::MAX)) as u16,
            width: area.width.min(u32::from(u16::MAX)) as u16,
            height: area.height.min(u32::from(u16::MAX)) as u16,
        };
        // At most MAX_RECTS by the loop above.
        let _ = out.push(rect);
    }
    out
}

/// The bytes of VRAM the rectangles name (what a dirt message makes the
/// host copy).
pub fn bytes_of(rects: &[Rect]) -> u64 {
    rects
        .iter()
        .map(|r| u64::from(r.width) * u64::from(r.height) * PIXEL_BYTES as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn span(row: usize, start: usize, end: usize) -> Span {
        Span { row, start, end }
    }

    #[test]
    fn one_changed_cell_is_one_cell_sized_rect() {
        let rects = rects(&[span(2, 5, 6)], 1024, 768);
        assert_eq!(
            rects.as_slice(),
            [Rect {
                x: 45,
                y: 36,
                width: 9,
                height: 18
            }]
        );
        assert_eq!(bytes_of(&rects), 9 * 18 * 4);
    }

    #[test]
    fn rows_over_the_same_columns_join_into_one_rect() {
        let spans: Vec<Span> = (10..30).map(|row| span(row, 0, 113)).collect();
        let rects = rects(&spans, 1024, 768);
        assert_eq!(rects.len(), 1);
        assert_eq!(rects[0].height as usize, 20 * CELL_HEIGHT);
        // 113 cells of 9 pixels is 1017: inside a 1024 screen.
        assert_eq!(rects[0].width, 1017);
    }

    #[test]
    fn more_than_max_rects_merge_to_max_rects_covering_every_change() {
        // Every other row, ragged spans: 20 areas that cannot grow down.
        let spans: Vec<Span> = (0..20)
            .map(|i| span(i * 2, i % 7, i % 7 + 1 + i % 3))
            .collect();
        let rects = rects(&spans, 1024, 768);
        assert_eq!(rects.len(), MAX_RECTS);
        for s in &spans {
            let a = area_of(s);
            assert!(
                rects.iter().any(|r| u32::from(r.x) <= a.x
                    && u32::from(r.y) <= a.y
                    && u32::from(r.x) + u32::from(r.width) >= a.x + a.width
                    && u32::from(r.y) + u32::from(r.height) >= a.y + a.height),
                "{s:?} is covered"
            );
        }
        // Merging prefers near neighbours: far less than the whole screen.
        assert!(bytes_of(&rects) < 1024 * 768 * 4 / 8);
    }

    #[test]
    fn merging_joins_the_cheapest_neighbours() {
        // Nine one-cell changes: eight far apart, two touching at the top.
        let mut spans = vec![span(0, 0, 1), span(1, 1, 2)];
        spans.extend((1..8).map(|i| span(i * 5, 100, 101)));
        let rects = rects(&spans, 1024, 768);
        assert_eq!(rects.len(), MAX_RECTS);
        assert_eq!(
            rects[0],
            Rect {
                x: 0,
                y: 0,
                width: 18,
                height: 36
            }
        );
    }

    #[test]
    fn rects_are_clipped_to_the_screen() {
        let rects = rects(&[span(42, 0, 113), span(50, 0, 3)], 1024, 768);
        // Row 42 starts at 756: 12 pixel rows left; row 50 is off screen.
        assert_eq!(
            rects.as_slice(),
            [Rect {
                x: 0,
                y: 756,
                width: 1017,
                height: 12
            }]
        );
        assert!(super::rects(&[], 1024, 768).is_empty());
    }
}
