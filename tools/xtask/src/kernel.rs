//! Build the seL4 5.0.0 kernel from the source vendored in crates.io's
//! `sel4-sys` 0.0.28 (see `platform/sel4/sel4-kernel-source/`).
//!
//! The registry copy is never modified: it is copied into
//! `<target>/sel4/kernel-<hash>/src`, `autoconf.h` is written over the
//! source tree's `include/plat/pc99/autoconf.h` (the include path finds that
//! one before the build folder), the patches are applied with `patch -p1`,
//! and `make` runs in `<target>/sel4/kernel-<hash>/build`. `<hash>` covers
//! the pinned crate checksum, the configuration, the patches and the make
//! command, so a second build with the same inputs only checks a stamp.
//! The result is `kernel32.elf` (QEMU's multiboot loader wants elf32-i386).

use crate::util::{run_checked, workspace_root, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../platform/sel4/sel4-kernel-source/locate.rs"]
mod locate;

/// The make variables the 5.0.0 Makefile is driven with.
const MAKE_VARIABLES: [&str; 6] = [
    "ARCH=x86",
    "SEL4_ARCH=x86_64",
    "PLAT=pc99",
    "DEBUG=1",
    "PYTHON=python3",
    "V=0",
];

/// The cargo target folder xtask and the image build share.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// The folder of the fetch-only manifest that pins the kernel source.
pub fn kernel_source_manifest_dir() -> PathBuf {
    workspace_root().join("platform/sel4/sel4-kernel-source")
}

/// Where cargo unpacked `sel4-sys` (fetching it if needed): the seL4 tree
/// is its `seL4` folder.
pub fn registry_kernel_source() -> Result<PathBuf> {
    locate::kernel_source_dir(&kernel_source_manifest_dir().join("Cargo.toml"))
}

/// 64-bit FNV-1a: a stable hash for the cache key (std's hasher is not
/// stable across Rust releases).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The patch files, in the order they apply.
fn patch_files() -> Result<Vec<PathBuf>> {
    let folder = kernel_source_manifest_dir().join("patches");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map_err(|e| format!("cannot list {}: {e}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "patch"))
        .collect();
    patches.sort();
    Ok(patches)
}

fn cache_key() -> Result<u64> {
    let dir = kernel_source_manifest_dir();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    hash = fnv1a(hash, &read(&dir.join("Cargo.lock"))?);
    hash = fnv1a(hash, &read(&dir.join("autoconf.h"))?);
    for patch in patch_files()? {
        hash = fnv1a(
            hash,
            patch.file_name().unwrap_or_default().as_encoded_bytes(),
        );
        hash = fnv1a(hash, &read(&patch)?);
    }
    for variable in MAKE_VARIABLES {
        hash = fnv1a(hash, variable.as_bytes());
    }
    Ok(hash)
}

/// Build (or reuse) the kernel; returns the path of `kernel32.elf`.
pub fn build_kernel() -> Result<PathBuf> {
    let key = cache_key()?;
    let folder = target_dir().join("sel4").join(format!("kernel-{key:016x}"));
    let kernel32 = folder.join("kernel32.elf");
    let stamp = folder.join("stamp");
    if stamp.is_file() && kernel32.is_file() {
        return Ok(kernel32);
    }
    let started = std::time::Instant::now();
    let registry_source = registry_kernel_source()?;
    let source = folder.join("src");
    let build = folder.join("build");
    if folder.exists() {
        std::fs::remove_dir_all(&folder)
            .map_err(|e| format!("cannot clear {}: {e}", folder.display()))?;
    }
    std::fs::create_dir_all(&build)
        .map_err(|e| format!("cannot create {}: {e}", build.display()))?;
    run_checked(
        Command::new("cp")
            .arg("-r")
            .arg(&registry_source)
            .arg(&source),
    )?;
    // The registry copy is read-only for cargo's sake; our copy must not be.
    run_checked(Command::new("chmod").args(["-R", "u+w"]).arg(&source))?;
    std::fs::copy(
        kernel_source_manifest_dir().join("autoconf.h"),
        source.join("include/plat/pc99/autoconf.h"),
    )
    .map_err(|e| format!("cannot write autoconf.h: {e}"))?;
    for patch in patch_files()? {
        let file = std::fs::File::open(&patch)
            .map_err(|e| format!("cannot open {}: {e}", patch.display()))?;
        run_checked(
            Command::new("patch")
                .args(["-p1", "--quiet", "--forward"])
                .current_dir(&source)
                .stdin(file),
        )
        .map_err(|e| format!("applying {}: {e}", patch.display()))?;
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log_path = folder.join("make.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| format!("log: {e}"))?;
    let status = Command::new("make")
        .arg(format!("-j{jobs}"))
        .arg("-f")
        .arg(source.join("Makefile"))
        .arg(format!("SOURCE_ROOT={}", source.display()))
        .args(MAKE_VARIABLES)
        .current_dir(&build)
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "kernel build failed ({status}); log {}:\n{}",
            log_path.display(),
            tail.join("\n")
        ));
    }
    run_checked(
        Command::new("objcopy")
            .args(["-O", "elf32-i386"])
            .arg(build.join("kernel.elf"))
            .arg(&kernel32),
    )?;
    std::fs::write(&stamp, format!("{key:016x}\n")).map_err(|e| format!("stamp: {e}"))?;
    eprintln!(
        "xtask: kernel built in {:.1} s -> {}",
        started.elapsed().as_secs_f64(),
        kernel32.display()
    );
    Ok(kernel32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sel4_sys_in_metadata() {
        let json = br#"{"packages":[
            {"name":"bitflags","version":"0.7.0","manifest_path":"/r/bitflags-0.7.0/Cargo.toml"},
            {"name":"sel4-sys","version":"0.0.27","manifest_path":"/r/sel4-sys-0.0.27/Cargo.toml"},
            {"name":"sel4-sys","version":"0.0.28","manifest_path":"C:\\r\\sel4-sys-0.0.28\\Cargo.toml","id":"x"}
        ],"version":1}"#;
        assert_eq!(
            locate::sel4_sys_manifest(json).unwrap(),
            Some(PathBuf::from("C:\\r\\sel4-sys-0.0.28\\Cargo.toml"))
        );
        let without =
            br#"{"packages":[{"name":"x","version":"1.0.0","manifest_path":"/x/Cargo.toml"}]}"#;
        assert_eq!(locate::sel4_sys_manifest(without).unwrap(), None);
        assert!(locate::sel4_sys_manifest(br#"{"manifest_path":"/x/Cargo.toml"}"#).is_err());
    }

    #[test]
    fn fnv_differs_for_different_inputs() {
        let seed = 0xcbf2_9ce4_8422_2325u64;
        assert_ne!(fnv1a(seed, b"a"), fnv1a(seed, b"b"));
        assert_eq!(fnv1a(seed, b""), seed);
    }
}
