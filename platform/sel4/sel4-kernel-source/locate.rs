//! Where cargo unpacked the pinned seL4 kernel source: `cargo metadata` on
//! this folder's fetch-only manifest lists `sel4-sys` 0.0.28, whose `seL4`
//! folder is the kernel tree. Included by path (`#[path]`) by the two
//! programs that need it, `sel4-bindings`' build script and `xtask`: this
//! package is never built.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The part of `cargo metadata --format-version 1` we read.
#[derive(serde::Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    version: String,
    manifest_path: PathBuf,
}

/// The manifest of `sel4-sys` 0.0.28 in cargo's metadata, if listed.
pub fn sel4_sys_manifest(metadata: &[u8]) -> serde_json::Result<Option<PathBuf>> {
    let metadata: Metadata = serde_json::from_slice(metadata)?;
    Ok(metadata
        .packages
        .into_iter()
        .find(|package| package.name == "sel4-sys" && package.version == "0.0.28")
        .map(|package| package.manifest_path))
}

/// The seL4 tree for the fetch-only `manifest`: asked offline first, then
/// with the network (a fresh machine downloads the crate).
pub fn kernel_source_dir(manifest: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut last_error = String::new();
    for offline in [true, false] {
        let mut command = Command::new(&cargo);
        command
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--manifest-path",
            ])
            .arg(manifest);
        if offline {
            command.arg("--offline");
        }
        // A build script's own target folder must not be locked by the
        // nested cargo.
        command.env_remove("CARGO_TARGET_DIR");
        match command.output() {
            Ok(output) if output.status.success() => match sel4_sys_manifest(&output.stdout) {
                Ok(Some(path)) => {
                    let root = path
                        .parent()
                        .ok_or("sel4-sys manifest path has no parent")?
                        .join("seL4");
                    if !root.join("Makefile").is_file() {
                        return Err(format!("{} holds no seL4 Makefile", root.display()));
                    }
                    return Ok(root);
                }
                Ok(None) => last_error = "metadata does not list sel4-sys 0.0.28".into(),
                Err(e) => last_error = format!("cannot read cargo's metadata: {e}"),
            },
            Ok(output) => last_error = String::from_utf8_lossy(&output.stderr).into_owned(),
            Err(e) => last_error = format!("cannot run cargo metadata: {e}"),
        }
    }
    Err(format!(
        "cannot locate the seL4 source (run `cargo fetch --manifest-path {}`): {last_error}",
        manifest.display()
    ))
}
