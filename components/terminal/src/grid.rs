//! The text grid the console is composed into, and what changed in it.
//!
//! Every write compares with the cell already there: only a cell that
//! really changes marks its row dirty (each row keeps the column span of
//! its changes), so recomposing the whole screen after an event costs
//! dirt only where the picture differs.

use crate::render::{Cell, Style};
use alloc::vec;
use alloc::vec::Vec;

/// The changed columns `[start, end)` of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub row: usize,
    pub start: usize,
    pub end: usize,
}

pub struct Grid {
    cols: usize,
    rows: usize,
    cells: Vec<Cell>,
    dirty: Vec<Option<(usize, usize)>>,
}

impl Grid {
    /// A blank grid, all of it dirty (nothing has been drawn yet).
    pub fn new(cols: usize, rows: usize) -> Grid {
        let mut grid = Grid {
            cols,
            rows,
            cells: vec![Cell::BLANK; cols * rows],
            dirty: vec![None; rows],
        };
        grid.mark_all();
        grid
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cell(&self, row: usize, col: usize) -> Option<Cell> {
        (row < self.rows && col < self.cols).then(|| self.cells[row * self.cols + col])
    }

    /// The cells of one row.
    pub fn row(&self, row: usize) -> &[Cell] {
        &self.cells[row * self.cols..(row + 1) * self.cols]
    }

    /// The text of one row (for tests and logs).
    pub fn row_text(&self, row: usize) -> alloc::string::String {
        self.row(row).iter().map(|c| c.ch).collect()
    }

    fn mark(&mut self, row: usize, start: usize, end: usize) {
        let span = &mut self.dirty[row];
        *span = Some(match *span {
            None => (start, end),
            Some((s, e)) => (s.min(start), e.max(end)),
        });
    }

    /// Everything must be drawn again (a new mode, VRAM lost).
    pub fn mark_all(&mut self) {
        for row in 0..self.rows {
            self.mark(row, 0, self.cols);
        }
    }

    pub fn set(&mut self, row: usize, col: usize, cell: Cell) {
        if row >= self.rows || col >= self.cols {
            return;
        }
        let at = row * self.cols + col;
        if self.cells[at] != cell {
            self.cells[at] = cell;
            self.mark(row, col, col + 1);
        }
    }

    /// Write `text` from column `col` of `row` in `style`, cut at the edge.
    /// Returns the column after the last character written.
    pub fn put(&mut self, row: usize, col: usize, text: &str, style: Style) -> usize {
        let mut at = col;
        for ch in text.chars() {
            if at >= self.cols {
                break;
            }
            self.set(row, at, Cell { ch, style });
            at += 1;
        }
        at
    }

    /// Blank `row` from column `col` on, in `style`.
    pub fn clear_from(&mut self, row: usize, col: usize, style: Style) {
        for at in col..self.cols {
            self.set(row, at, Cell { ch: ' ', style });
        }
    }

    /// The whole of `row`: `text` then blanks, in `style`.
    pub fn line(&mut self, row: usize, text: &str, style: Style) {
        let end = self.put(row, 0, text, style);
        self.clear_from(row, end, style);
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.iter().any(Option::is_some)
    }

    /// The changed spans since the last take, top to bottom; clean after.
    pub fn take_dirty(&mut self) -> Vec<Span> {
        let mut spans = Vec::new();
        for (row, span) in self.dirty.iter_mut().enumerate() {
            if let Some((start, end)) = span.take() {
                spans.push(Span { row, start, end });
            }
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_grid_is_all_dirty_and_then_clean() {
        let mut grid = Grid::new(10, 3);
        let spans = grid.take_dirty();
        assert_eq!(spans.len(), 3);
        assert!(spans.iter().all(|s| s.start == 0 && s.end == 10));
        assert!(!grid.is_dirty());
        assert!(grid.take_dirty().is_empty());
    }

    #[test]
    fn only_cells_that_change_are_dirty() {
        let mut grid = Grid::new(20, 4);
        grid.line(1, "hello", Style::Normal);
        grid.take_dirty();
        // The same text again: nothing to draw.
        grid.line(1, "hello", Style::Normal);
        assert!(!grid.is_dirty());
        // One letter changes: one cell.
        grid.line(1, "hallo", Style::Normal);
        assert_eq!(
            grid.take_dirty(),
            [Span {
                row: 1,
                start: 1,
                end: 2
            }]
        );
        // Two changes on a row: the span covers both.
        grid.put(2, 3, "x", Style::Normal);
        grid.put(2, 9, "y", Style::Event);
        assert_eq!(
            grid.take_dirty(),
            [Span {
                row: 2,
                start: 3,
                end: 10
            }]
        );
        // A style change alone is a change.
        grid.put(1, 0, "h", Style::Warning);
        assert_eq!(grid.take_dirty().len(), 1);
    }

    #[test]
    fn writes_past_the_edges_are_cut() {
        let mut grid = Grid::new(4, 2);
        assert_eq!(grid.put(0, 2, "abcdef", Style::Normal), 4);
        grid.put(5, 0, "x", Style::Normal);
        assert_eq!(grid.row_text(0), "  ab");
        assert_eq!(grid.cell(2, 0), None);
    }
}
