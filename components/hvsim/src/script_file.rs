//! The `.hvsim` script file (see `docs/hvsim.md`): `key = value` lines
//! that override `script::Script::DEFAULT`, turned into the Rust source of
//! a `SCRIPT` constant. Used by `build.rs` (included by path: a build
//! script cannot depend on its own package) and tested here.

/// The keys a script file may set.
pub const KEYS: &[&str] = &[
    "time_sample_period_ms",
    "shutdown_after_heartbeats",
    "kvp_faults",
    "kvp_fault_after_heartbeats",
    "kvp_fault_every",
];

/// `channel::PacketFault` names.
pub const FAULTS: &[&str] = &[
    "OffsetTooSmall",
    "LengthBeforeOffset",
    "UnknownType",
    "UnknownFlags",
    "LengthBeyondRing",
];

/// The source of `SCRIPT` when there is no script file.
pub const DEFAULT_SOURCE: &str =
    "pub const SCRIPT: hvsim::script::Script = hvsim::script::Script::DEFAULT;\n";

/// The source of `SCRIPT` for `text`, or `(line, why)` for the first bad
/// line (1-based). `#` starts a comment.
pub fn script_source(text: &str) -> Result<String, (usize, String)> {
    let mut fields = String::new();
    for (index, line) in text.lines().enumerate() {
        let fail = |why: String| (index + 1, why);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(fail("expected `key = value`".into()));
        };
        let (key, value) = (key.trim(), value.trim());
        let number = || -> Result<u64, (usize, String)> {
            value
                .parse()
                .map_err(|_| fail(format!("`{value}` is not a whole number")))
        };
        let field = match key {
            "time_sample_period_ms" => {
                let ms = number()?;
                let ns = ms
                    .checked_mul(1_000_000)
                    .ok_or_else(|| fail(format!("{ms} ms is too long")))?;
                format!("time_sample_period_ns: {ns},")
            }
            "shutdown_after_heartbeats" => format!("{key}: Some({}),", number()?),
            "kvp_fault_after_heartbeats" | "kvp_fault_every" => format!("{key}: {},", number()?),
            "kvp_faults" => {
                let mut faults = String::new();
                for fault in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if !FAULTS.contains(&fault) {
                        return Err(fail(format!(
                            "unknown fault `{fault}`; known: {}",
                            FAULTS.join(", ")
                        )));
                    }
                    faults.push_str(&format!("hvsim::channel::PacketFault::{fault}, "));
                }
                format!("{key}: &[{faults}],")
            }
            _ => {
                return Err(fail(format!(
                    "unknown key `{key}`; known: {}",
                    KEYS.join(", ")
                )))
            }
        };
        fields.push_str("    ");
        fields.push_str(&field);
        fields.push('\n');
    }
    Ok(format!(
        "pub const SCRIPT: hvsim::script::Script = hvsim::script::Script {{\n{fields}    ..hvsim::script::Script::DEFAULT\n}};\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_become_fields_of_the_default() {
        let source = script_source(
            "# comment\n\nkvp_faults = UnknownType, LengthBeyondRing # two\n\
             kvp_fault_after_heartbeats = 2\nshutdown_after_heartbeats=9\n\
             time_sample_period_ms = 500\n",
        )
        .unwrap();
        assert!(source.contains(
            "kvp_faults: &[hvsim::channel::PacketFault::UnknownType, hvsim::channel::PacketFault::LengthBeyondRing, ],"
        ), "{source}");
        assert!(source.contains("kvp_fault_after_heartbeats: 2,"));
        assert!(source.contains("shutdown_after_heartbeats: Some(9),"));
        assert!(source.contains("time_sample_period_ns: 500000000,"));
        assert!(source.ends_with("..hvsim::script::Script::DEFAULT\n};\n"));
        assert!(script_source("").unwrap().contains("Script {\n    ..hvsim"));
        assert!(DEFAULT_SOURCE.contains("= hvsim::script::Script::DEFAULT;"));
    }

    #[test]
    fn bad_lines_are_named() {
        let error = |text: &str| script_source(text).unwrap_err();
        assert_eq!(error("\nnonsense").0, 2);
        assert!(error("kvp_fault = UnknownType")
            .1
            .contains("unknown key `kvp_fault`"));
        assert!(error("kvp_faults = Unknown")
            .1
            .contains("unknown fault `Unknown`"));
        assert!(error("kvp_fault_every = -1")
            .1
            .contains("not a whole number"));
        assert!(error("time_sample_period_ms = 18446744073709551615")
            .1
            .contains("too long"));
    }
}
