//! The command line: text, cursor and a short history.

use crate::keys::Key;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Characters one line holds.
pub const MAX_LINE: usize = 100;
/// Lines the history keeps.
pub const MAX_HISTORY: usize = 32;

/// What a key did to the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The line or cursor changed (or nothing did).
    Edited,
    /// Enter: the line as typed; the editor is empty again.
    Submitted(String),
    /// Ctrl+L.
    ClearRequested,
}

#[derive(Default)]
pub struct Editor {
    chars: Vec<char>,
    cursor: usize,
    history: VecDeque<String>,
    /// Where Up/Down is in the history (`None`: the line being typed).
    browsing: Option<usize>,
}

impl Editor {
    pub fn new() -> Editor {
        Editor::default()
    }

    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// The cursor's position in characters.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    fn replace(&mut self, text: &str) {
        self.chars = text.chars().take(MAX_LINE).collect();
        self.cursor = self.chars.len();
    }

    pub fn key(&mut self, key: Key) -> Outcome {
        match key {
            Key::Char(ch) => {
                if self.chars.len() < MAX_LINE {
                    self.chars.insert(self.cursor, ch);
                    self.cursor += 1;
                }
            }
            Key::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.chars.remove(self.cursor);
                }
            }
            Key::Delete => {
                if self.cursor < self.chars.len() {
                    self.chars.remove(self.cursor);
                }
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.chars.len()),
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.chars.len(),
            Key::Up => {
                let next = match self.browsing {
                    None => self.history.len().checked_sub(1),
                    Some(at) => Some(at.saturating_sub(1)),
                };
                if let Some(at) = next {
                    self.browsing = Some(at);
                    let line = self.history[at].clone();
                    self.replace(&line);
                }
            }
            Key::Down => {
                if let Some(at) = self.browsing {
                    if at + 1 < self.history.len() {
                        self.browsing = Some(at + 1);
                        let line = self.history[at + 1].clone();
                        self.replace(&line);
                    } else {
                        self.browsing = None;
                        self.replace("");
                    }
                }
            }
            Key::Cancel => {
                self.browsing = None;
                self.replace("");
            }
            Key::Clear => return Outcome::ClearRequested,
            Key::Enter => {
                let line = self.text();
                self.browsing = None;
                self.replace("");
                let trimmed = line.trim();
                if !trimmed.is_empty() && self.history.back().map(String::as_str) != Some(trimmed) {
                    if self.history.len() == MAX_HISTORY {
                        self.history.pop_front();
                    }
                    self.history.push_back(trimmed.into());
                }
                return Outcome::Submitted(line);
            }
        }
        Outcome::Edited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut Editor, text: &str) {
        for ch in text.chars() {
            editor.key(Key::Char(ch));
        }
    }

    #[test]
    fn typing_editing_and_submitting() {
        let mut editor = Editor::new();
        typed(&mut editor, "sttus");
        editor.key(Key::Home);
        editor.key(Key::Right);
        editor.key(Key::Right);
        typed(&mut editor, "x");
        editor.key(Key::Backspace);
        typed(&mut editor, "a");
        assert_eq!(editor.text(), "status");
        assert_eq!(editor.cursor(), 3);
        editor.key(Key::Home);
        editor.key(Key::Delete);
        assert_eq!(editor.text(), "tatus");
        editor.key(Key::End);
        assert_eq!(editor.cursor(), 5);
        assert_eq!(
            editor.key(Key::Enter),
            Outcome::Submitted(String::from("tatus"))
        );
        assert_eq!(editor.text(), "");
        assert_eq!(editor.cursor(), 0);
    }

    #[test]
    fn history_walks_back_and_forth() {
        let mut editor = Editor::new();
        for line in ["help", "kvp", "kvp", "disks"] {
            typed(&mut editor, line);
            editor.key(Key::Enter);
        }
        editor.key(Key::Up);
        assert_eq!(editor.text(), "disks");
        editor.key(Key::Up);
        // The repeated "kvp" is kept once.
        assert_eq!(editor.text(), "kvp");
        editor.key(Key::Up);
        assert_eq!(editor.text(), "help");
        editor.key(Key::Up);
        assert_eq!(editor.text(), "help");
        editor.key(Key::Down);
        assert_eq!(editor.text(), "kvp");
        editor.key(Key::Down);
        editor.key(Key::Down);
        assert_eq!(editor.text(), "");
    }

    #[test]
    fn the_line_and_the_history_are_bounded() {
        let mut editor = Editor::new();
        typed(&mut editor, &"x".repeat(MAX_LINE + 50));
        assert_eq!(editor.text().len(), MAX_LINE);
        for i in 0..MAX_HISTORY + 10 {
            editor.key(Key::Cancel);
            typed(&mut editor, &alloc::format!("c{i}"));
            editor.key(Key::Enter);
        }
        assert_eq!(editor.history.len(), MAX_HISTORY);
        // Backspace at the start and Delete at the end do nothing.
        editor.key(Key::Backspace);
        editor.key(Key::Delete);
        assert_eq!(editor.text(), "");
    }
}
