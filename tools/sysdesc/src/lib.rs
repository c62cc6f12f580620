//! `sysdesc`: the system description tool.
//!
//! Reads `system.toml` (format: `docs/system-description.md`), validates it
//! and lowers it into the compiled [`SystemLayout`] that the seL4 root task
//! and the hosted launcher consume. Every error names the file, line and
//! column it is about. It also generates, for one component, the Rust
//! constants that component's code uses for its channels, regions, IO
//! ports, IRQs and children (`generate_ids`, called from `build.rs`), so no
//! identifier is ever kept by hand.
//!
//! Trusts: nothing in the file. Writes: nothing but what callers ask for.
#![forbid(unsafe_code)]

mod blocks;
mod codegen;
pub mod contracts;
mod expand;
mod nets;
mod raw;
mod summary;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use codegen::{emit_ids_for_build_script, generate_ids, ids_from_descriptions};
pub use contracts::Contracts;
pub use summary::summary;
pub use system_layout::SystemLayout;

/// A compiled description: the layout the runtimes consume and the
/// contracts the generated code and the checks use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    pub layout: SystemLayout,
    pub contracts: Contracts,
}

/// One problem found in a description, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All the problems found in one description, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Maps byte offsets in a source text to 1-based line and column numbers.
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn diagnostic(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: self.name.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Validate and compile a description given as text. `name` is what
/// diagnostics call the file.
pub fn compile_str(name: &str, text: &str) -> Result<SystemLayout, Diagnostics> {
    describe_str(name, text).map(|d| d.layout)
}

/// Validate and compile a description file. Diagnostics name it as given.
pub fn compile_file(path: &Path) -> Result<SystemLayout, Diagnostics> {
    describe_file(path).map(|d| d.layout)
}

/// [`compile_str`] with the contracts.
pub fn describe_str(name: &str, text: &str) -> Result<Description, Diagnostics> {
    let source = Source { name, text };
    let mut raw = raw::parse(&source).map_err(|d| Diagnostics(vec![d]))?;
    let mut errors = expand::expand(&source, &mut raw);
    errors.extend(blocks::expand_blocks(&source, &mut raw));
    errors.extend(nets::expand_nets(&source, &mut raw));
    match validate::lower(&source, &raw) {
        Ok(description) if errors.is_empty() => Ok(description),
        Ok(_) => Err(Diagnostics(errors)),
        Err(more) => {
            errors.extend(more);
            errors.sort_by_key(|d| (d.line, d.column));
            errors.dedup();
            Err(Diagnostics(errors))
        }
    }
}

/// [`compile_file`] with the contracts.
pub fn describe_file(path: &Path) -> Result<Description, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        Diagnostics(vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {error}"),
        }])
    })?;
    describe_str(&name, &text)
}

/// The descriptions a component's identifiers may come from, in priority
/// order: the file named by `SYSTEM_DESCRIPTION` if set (the tools set it
/// when they build a system), the workspace's `system.toml`, then every
/// `tests/systems/*.toml` in name order.
pub fn description_search_list(workspace_root: &Path) -> Vec<PathBuf> {
    let mut list = Vec::new();
    if let Some(path) = std::env::var_os("SYSTEM_DESCRIPTION") {
        let path = PathBuf::from(path);
        list.push(if path.is_absolute() {
            path
        } else {
            workspace_root.join(path)
        });
    }
    list.push(workspace_root.join("system.toml"));
    if let Ok(entries) = std::fs::read_dir(workspace_root.join("tests").join("systems")) {
        let mut extra: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        extra.sort();
        list.extend(extra);
    }
    list
}

/// Find the workspace root from a crate's manifest folder: the nearest
/// ancestor holding `system.toml`.
pub fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join("system.toml").is_file())
        .map(Path::to_path_buf)
}
