//! The console's screen: what it shows and where, composed into a [`Grid`].
//!
//! ```text
//! row 0          title: the console devices and their state
//! row 1          status view headings
//! rows 2..2+S    the bus manager's device table (lsvmbus style)
//! row 2+S        "events and output"
//! rows ..R-2     the log: driver events and command output, scrolling
//! row R-2        the command hint
//! row R-1        the prompt, the line being typed and the cursor
//! ```
//! Everything is recomposed after each change; the grid keeps only the
//! cells that differ dirty.

use crate::editor::Editor;
use crate::grid::Grid;
use crate::render::{Cell, Style};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Device rows the status view shows at most.
pub const MAX_STATUS_ROWS: usize = 12;
/// The prompt before the typed line.
pub const PROMPT: &str = "terminal> ";
/// The column headings of the status view (as `status::device_row` pads).
pub const STATUS_HEADINGS: &str =
    " relid class           instance                              driver     state     framework msg  restarts";
const HINT: &str =
    " commands: help status kvp disks clear    keys: Up/Down history, Ctrl+C drop line, Ctrl+L clear log";

pub struct Console {
    pub grid: Grid,
    pub editor: Editor,
    title: String,
    devices: Vec<String>,
    /// Said in the status view instead of rows (no answer from the bus).
    device_note: Option<String>,
    log: VecDeque<(String, Style)>,
}

impl Console {
    /// A console of `cols` x `rows` cells (at least 8 rows to lay out).
    pub fn new(cols: usize, rows: usize) -> Console {
        let mut console = Console {
            grid: Grid::new(cols, rows.max(8)),
            editor: Editor::new(),
            title: String::new(),
            devices: Vec::new(),
            device_note: None,
            log: VecDeque::new(),
        };
        console.compose();
        console
    }

    /// The same contents on a grid of another size (a new resolution).
    pub fn resize(&mut self, cols: usize, rows: usize) {
        self.grid = Grid::new(cols, rows.max(8));
        self.trim_log();
        self.compose();
    }

    fn status_rows(&self) -> usize {
        MAX_STATUS_ROWS.min((self.grid.rows() - 6) / 3).max(1)
    }

    /// The first log row and how many rows the log has.
    fn log_area(&self) -> (usize, usize) {
        let first = 3 + self.status_rows();
        (first, self.grid.rows() - 2 - first)
    }

    fn trim_log(&mut self) {
        let (_, height) = self.log_area();
        while self.log.len() > height {
            self.log.pop_front();
        }
    }

    pub fn set_title(&mut self, title: &str) {
        if self.title != title {
            self.title = title.into();
        }
    }

    /// The status view's rows (already formatted), or a note instead.
    pub fn set_devices(&mut self, rows: Vec<String>, note: Option<String>) {
        self.devices = rows;
        self.device_note = note;
    }

    /// Add a line to the log (wrapped at the screen's width).
    pub fn log(&mut self, text: &str, style: Style) {
        let width = self.grid.cols().max(1);
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            self.log.push_back((String::new(), style));
        }
        for piece in chars.chunks(width) {
            self.log.push_back((piece.iter().collect(), style));
        }
        self.trim_log();
    }

    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// The log's lines, oldest first (for tests).
    pub fn log_lines(&self) -> impl Iterator<Item = &str> {
        self.log.iter().map(|(text, _)| text.as_str())
    }

    /// Write everything into the grid (only differences become dirt).
    pub fn compose(&mut self) {
        let rows = self.grid.rows();
        self.grid.line(0, &self.title, Style::Title);
        self.grid.line(1, STATUS_HEADINGS, Style::Heading);
        let shown = self.status_rows();
        for index in 0..shown {
            let row = 2 + index;
            let text = match (&self.device_note, self.devices.get(index)) {
                (Some(note), _) if index == 0 => note.as_str(),
                (Some(_), _) => "",
                (None, Some(_)) if index + 1 == shown && self.devices.len() > shown => {
                    // The last row says what did not fit.
                    let more = self.devices.len() - shown + 1;
                    let text = alloc::format!("  ... {more} more: type status");
                    self.grid.line(row, &text, Style::Normal);
                    continue;
                }
                (None, Some(device)) => device.as_str(),
                (None, None) => "",
            };
            self.grid.line(row, text, Style::Normal);
        }
        self.grid
            .line(2 + shown, " events and output", Style::Heading);
        let (first, height) = self.log_area();
        for index in 0..height {
            match self.log.get(index) {
                Some((text, style)) => self.grid.line(first + index, text, *style),
                None => self.grid.line(first + index, "", Style::Normal),
            }
        }
        self.grid.line(rows - 2, HINT, Style::Heading);
        self.compose_prompt(rows - 1);
    }

    fn compose_prompt(&mut self, row: usize) {
        let cols = self.grid.cols();
        let text: Vec<char> = self.editor.text().chars().collect();
        let cursor = self.editor.cursor();
        let prompt = PROMPT.chars().count();
        // Keep the cursor on screen: scroll the line left when it is long.
        let room = cols.saturating_sub(prompt + 1).max(1);
        let skip = cursor.saturating_sub(room);
        let mut col = self.grid.put(row, 0, PROMPT, Style::Prompt);
        for (index, ch) in text.iter().enumerate().skip(skip) {
            let style = if index == cursor {
                Style::Cursor
            } else {
                Style::Prompt
            };
            self.grid.set(row, col, Cell { ch: *ch, style });
            col += 1;
        }
        if cursor == text.len() {
            self.grid.set(
                row,
                col,
                Cell {
                    ch: ' ',
                    style: Style::Cursor,
                },
            );
            col += 1;
        }
        self.grid.clear_from(row, col, Style::Prompt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use alloc::format;

    #[test]
    fn the_layout_on_a_1024x768_screen() {
        let mut console = Console::new(113, 42);
        console.set_title("seL4 console");
        console.set_devices((0..3).map(|i| format!("row {i}")).collect::<Vec<_>>(), None);
        console.log("video: connected", Style::Event);
        console.compose();
        let grid = &console.grid;
        assert!(grid.row_text(0).starts_with("seL4 console"));
        assert_eq!(grid.cell(0, 100).unwrap().style, Style::Title);
        assert!(grid.row_text(1).starts_with(" relid class"));
        assert!(grid.row_text(2).starts_with("row 0"));
        assert!(grid.row_text(4).starts_with("row 2"));
        assert!(grid.row_text(14).starts_with(" events and output"));
        assert!(grid.row_text(15).starts_with("video: connected"));
        assert_eq!(grid.cell(15, 0).unwrap().style, Style::Event);
        assert!(grid.row_text(40).starts_with(" commands: help"));
        assert_eq!(grid.row_text(41).trim_end(), PROMPT.trim_end());
        assert_eq!(
            grid.cell(41, PROMPT.len()).unwrap().style,
            Style::Cursor,
            "the cursor waits after the prompt"
        );
    }

    #[test]
    fn typing_dirties_only_the_prompt_row() {
        let mut console = Console::new(113, 42);
        console.compose();
        console.grid.take_dirty();
        console.editor.key(Key::Char('h'));
        console.compose();
        let spans = console.grid.take_dirty();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].row, 41);
        // The typed letter and the cursor moving one cell right.
        assert_eq!(spans[0].end - spans[0].start, 2);
        assert_eq!(console.grid.row_text(41).trim_end(), "terminal> h");
    }

    #[test]
    fn the_log_scrolls_and_wraps() {
        let mut console = Console::new(20, 42);
        for i in 0..40 {
            console.log(&format!("line {i}"), Style::Normal);
        }
        let (first, height) = console.log_area();
        assert_eq!(console.log_lines().count(), height);
        console.compose();
        assert!(console
            .grid
            .row_text(first + height - 1)
            .starts_with("line 39"));
        console.log(&"w".repeat(45), Style::Normal);
        console.compose();
        assert_eq!(
            console.grid.row_text(first + height - 1).trim_end(),
            "wwwww"
        );
        assert_eq!(console.grid.row_text(first + height - 2), "w".repeat(20));
    }

    #[test]
    fn too_many_devices_say_how_many_more() {
        let mut console = Console::new(60, 42);
        console.set_devices((0..20).map(|i| format!("dev {i}")).collect(), None);
        console.compose();
        assert!(console.grid.row_text(12).starts_with("dev 10"));
        assert!(console.grid.row_text(13).contains("9 more"));
        console.set_devices(Vec::new(), Some("(no answer)".into()));
        console.compose();
        assert!(console.grid.row_text(2).starts_with("(no answer)"));
        assert!(console.grid.row_text(3).trim().is_empty());
    }

    #[test]
    fn a_long_line_scrolls_to_keep_the_cursor_visible() {
        let mut console = Console::new(30, 10);
        for _ in 0..50 {
            console.editor.key(Key::Char('x'));
        }
        console.compose();
        let cursor_at = (0..30).find(|&c| console.grid.cell(9, c).unwrap().style == Style::Cursor);
        assert_eq!(cursor_at, Some(29));
    }
}
