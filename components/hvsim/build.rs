//! For the seL4 component: the channel and region ids generated from the
//! system description being built, and the operator script
//! (`$OUT_DIR/script.rs`). The script is `hvsim::script::Script::DEFAULT`
//! unless the environment variable `HVSIM_SCRIPT` names a script file (the
//! isolation test's `tests/systems/kvp-fault.hvsim`; `cargo xtask run
//! --host-script FILE` sets it) or a file named like the description with
//! the extension `.hvsim` lies beside it: `key = value` lines that override
//! the default (see `docs/hvsim.md`). The hosted transport binary needs
//! neither.
use std::path::{Path, PathBuf};

#[path = "src/script_file.rs"]
mod script_file;

fn script_source(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return script_file::DEFAULT_SOURCE.into();
    };
    match script_file::script_source(&text) {
        Ok(source) => format!(
            "// Generated from {} by hvsim's build.rs.\n{source}",
            path.display()
        ),
        // A build script's panic message is what the user sees.
        Err((line, why)) => panic!("\n{}:{line}: {why}\n", path.display()),
    }
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
    println!("cargo:rerun-if-env-changed=HVSIM_SCRIPT");
    let script = match std::env::var_os("HVSIM_SCRIPT") {
        Some(path) => {
            let path = if Path::new(&path).is_absolute() {
                PathBuf::from(path)
            } else {
                root.join(path)
            };
            // A script that was asked for must exist: falling back to the
            // default would boot a different scenario than the one named.
            if !path.is_file() {
                panic!(
                    "\nHVSIM_SCRIPT names {}, which is not a file\n",
                    path.display()
                );
            }
            path
        }
        None => description.with_extension("hvsim"),
    };
    // Cargo treats a watched file that does not exist as always changed
    // (a rebuild on every build), so only an existing script is watched; a
    // script added beside the description is seen when the description
    // changes (sysdesc watches it) or on a clean build.
    if script.is_file() {
        println!("cargo:rerun-if-changed={}", script.display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("script.rs");
    let source = script_source(&script);
    if std::fs::read_to_string(&out).ok().as_deref() != Some(source.as_str()) {
        std::fs::write(&out, source).expect("write script.rs");
    }
}
