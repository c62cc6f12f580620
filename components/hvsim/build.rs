//! For the seL4 component: the channel and region ids generated from the
//! system description being built, and the operator script
//! (`$OUT_DIR/script.rs`). The script is `hvsim::script::Script::DEFAULT`
//! unless a file named like the description with the extension `.hvsim`
//! lies beside it (`tests/systems/vmbus-kvp-fault.hvsim` for
//! `tests/systems/vmbus-kvp-fault.toml`): `key = value` lines that override
//! the default (see `docs/hvsim.md`). The hosted transport binary needs
//! neither.
use std::path::{Path, PathBuf};

const KEYS: &[&str] = &[
    "time_sample_period_ms",
    "shutdown_after_heartbeats",
    "kvp_faults",
    "kvp_fault_after_heartbeats",
    "kvp_fault_every",
];
const FAULTS: &[&str] = &[
    "OffsetTooSmall",
    "LengthBeforeOffset",
    "UnknownType",
    "UnknownFlags",
    "LengthBeyondRing",
];

fn script_source(path: &Path) -> String {
    let mut fields = String::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return "pub const SCRIPT: hvsim::script::Script = hvsim::script::Script::DEFAULT;\n"
            .into();
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fail = |why: &str| -> ! { panic!("\n{}:{}: {why}\n", path.display(), number + 1) };
        let Some((key, value)) = line.split_once('=') else {
            fail("expected `key = value`")
        };
        let (key, value) = (key.trim(), value.trim());
        if !KEYS.contains(&key) {
            fail(&format!("unknown key `{key}`; known: {}", KEYS.join(", ")));
        }
        let number_value = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| fail(&format!("`{value}` is not a whole number")))
        };
        let field = match key {
            "time_sample_period_ms" => {
                format!("time_sample_period_ns: {},", number_value() * 1_000_000)
            }
            "shutdown_after_heartbeats" => format!("{key}: Some({}),", number_value()),
            "kvp_fault_after_heartbeats" | "kvp_fault_every" => {
                format!("{key}: {},", number_value())
            }
            _ => {
                let mut faults = String::new();
                for fault in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if !FAULTS.contains(&fault) {
                        fail(&format!(
                            "unknown fault `{fault}`; known: {}",
                            FAULTS.join(", ")
                        ));
                    }
                    faults.push_str(&format!("hvsim::channel::PacketFault::{fault}, "));
                }
                format!("{key}: &[{faults}],")
            }
        };
        fields.push_str("    ");
        fields.push_str(&field);
        fields.push('\n');
    }
    format!(
        "// Generated from {} by hvsim's build.rs.\npub const SCRIPT: hvsim::script::Script = hvsim::script::Script {{\n{fields}    ..hvsim::script::Script::DEFAULT\n}};\n",
        path.display()
    )
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    sysdesc::emit_ids_for_build_script("hvsim");
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = sysdesc::find_workspace_root(&manifest_dir).expect("a system.toml above the crate");
    let description = match std::env::var_os("SYSTEM_DESCRIPTION") {
        Some(path) if Path::new(&path).is_absolute() => PathBuf::from(path),
        Some(path) => root.join(path),
        None => root.join("system.toml"),
    };
    let script = description.with_extension("hvsim");
    println!("cargo:rerun-if-changed={}", script.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("script.rs");
    let source = script_source(&script);
    if std::fs::read_to_string(&out).ok().as_deref() != Some(source.as_str()) {
        std::fs::write(&out, source).expect("write script.rs");
    }
}
