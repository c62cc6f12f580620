//! `cargo xtask build [--system FILE] [--host-script FILE]`: the bootable
//! seL4 image.
//!
//! 1. compile the description (default `system.toml`) with `sysdesc`;
//! 2. build each component package it names for `x86_64-unknown-none`
//!    (release, static relocation model, `sel4-runtime/link.ld`, so the
//!    ELFs have only PT_LOAD segments), with `SYSTEM_DESCRIPTION` set so
//!    their generated ids come from the same description, and
//!    `HVSIM_SCRIPT` naming the simulated host's operator script if one was
//!    given (the isolation test's `tests/systems/kvp-fault.hvsim`);
//! 3. write `layout.bin` and the ELFs to `<target>/sel4/image/embed`;
//! 4. build the root task with `ROOTTASK_IMAGE_DIR` naming that folder;
//! 5. build (or reuse) the kernel, converted to elf32-i386.
//!
//! The flags go through `CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS`, so
//! host builds of the same workspace are untouched.

use crate::kernel::{build_kernel, target_dir};
use crate::util::{workspace_root, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub const SEL4_TARGET: &str = "x86_64-unknown-none";

/// What `build` produces.
pub struct BootImage {
    pub kernel: PathBuf,
    pub roottask: PathBuf,
}

/// What to build: a description, and optionally the simulated host's
/// operator script (a `.hvsim` file, see `docs/hvsim.md`).
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub system: PathBuf,
    pub host_script: Option<PathBuf>,
    /// The capability audit's negative test: the root task grants one
    /// extra cap or frame (`ROOTTASK_AUDIT_TEST_GRANT`, see
    /// `platform/sel4/roottask/build.rs`). `None` for every real image.
    pub audit_test_grant: Option<&'static str>,
    /// A raw disk image QEMU attaches as the primary IDE channel's master
    /// disk (`--disk IMG`); not part of the build.
    pub disk: Option<PathBuf>,
}

impl ImageSpec {
    pub fn new(system: &str, host_script: Option<&str>) -> ImageSpec {
        ImageSpec {
            system: workspace_path(system),
            host_script: host_script.map(workspace_path),
            audit_test_grant: None,
            disk: None,
        }
    }

    /// Does the host's scenario crash guest components
    /// (`crash_after_heartbeats`, `restart_bench_faults`)? Only then is the root task built to
    /// honour the simulated host's fault-injection requests.
    pub fn fault_injection(&self) -> bool {
        self.host_script
            .as_ref()
            .and_then(|script| std::fs::read_to_string(script).ok())
            .is_some_and(|text| {
                text.lines().any(|line| {
                    let line = line.trim_start();
                    line.starts_with("crash_after_heartbeats")
                        || line.starts_with("restart_bench_faults")
                })
            })
    }

    /// The boot test's expectations: beside the script if there is one,
    /// else beside the description (`system.expect` for `system.toml`).
    pub fn expectations_file(&self) -> PathBuf {
        self.host_script
            .as_ref()
            .unwrap_or(&self.system)
            .with_extension("expect")
    }
}

fn workspace_path(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        workspace_root().join(path)
    }
}

/// `--system FILE` (default `system.toml`), `--host-script FILE` and
/// `--disk IMG` from the arguments.
pub fn system_argument(args: &[String]) -> Result<ImageSpec> {
    let mut spec = ImageSpec::new("system.toml", None);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--system" => {
                spec.system = workspace_path(iter.next().ok_or("--system needs a file")?);
            }
            "--host-script" => {
                let path = iter.next().ok_or("--host-script needs a file")?;
                spec.host_script = Some(workspace_path(path));
            }
            "--disk" => {
                // Relative to where the command runs, like any file argument.
                let path = iter.next().ok_or("--disk needs a raw disk image")?;
                let path =
                    std::fs::canonicalize(path).map_err(|e| format!("--disk {path}: {e}"))?;
                if !path.is_file() {
                    return Err(format!("--disk: {} is not a file", path.display()));
                }
                spec.disk = Some(path);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(spec)
}

pub fn run(args: &[String]) -> Result {
    let spec = system_argument(args)?;
    let image = build(&spec)?;
    println!("kernel:    {}", image.kernel.display());
    println!("root task: {}", image.roottask.display());
    Ok(())
}

fn cargo_for_sel4(spec: &ImageSpec) -> Command {
    let link_script = workspace_root().join("platform/sel4/sel4-runtime/link.ld");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
            format!(
                "-C relocation-model=static -C link-arg=-T{}",
                link_script.display()
            ),
        )
        .env("SYSTEM_DESCRIPTION", &spec.system)
        .args(["build", "--quiet", "--release", "--target", SEL4_TARGET]);
    match &spec.host_script {
        Some(script) => command.env("HVSIM_SCRIPT", script),
        None => command.env_remove("HVSIM_SCRIPT"),
    };
    command
}

fn run_cargo(mut command: Command, what: &str) -> Result {
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo for {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {what} for {SEL4_TARGET} failed ({status})"
        ))
    }
}

/// A component without the seL4 entry point fails to link with a cryptic
/// "panic_handler required"; say what is missing instead.
fn check_sel4_entry_points(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            let main = workspace_root()
                .join("components")
                .join(package)
                .join("src/main.rs");
            std::fs::read_to_string(main)
                .is_ok_and(|text| !text.contains("sel4_runtime::component_main!"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "component(s) without an seL4 entry point: {}. Add to src/main.rs \
         `#[cfg(target_os = \"none\")] sel4_runtime::component_main!(crate_name::Type);` and to \
         Cargo.toml `[target.'cfg(target_os = \"none\")'.dependencies] sel4-runtime = {{ path = \"../../platform/sel4/sel4-runtime\" }}`",
        missing.join(", ")
    ))
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Build the whole image for a description.
pub fn build(spec: &ImageSpec) -> Result<BootImage> {
    let system = spec.system.as_path();
    let started = Instant::now();
    let layout = sysdesc::compile_file(system).map_err(|diagnostics| {
        eprint!("{diagnostics}");
        format!("{} has errors", system.display())
    })?;
    let release = target_dir().join(SEL4_TARGET).join("release");
    let embed = target_dir().join("sel4").join("image").join("embed");
    std::fs::create_dir_all(&embed)
        .map_err(|e| format!("cannot create {}: {e}", embed.display()))?;

    let mut packages: Vec<&str> = layout
        .components
        .iter()
        .map(|c| c.package.as_str())
        .collect();
    packages.sort();
    packages.dedup();
    check_sel4_entry_points(&packages)?;
    if !packages.is_empty() {
        let mut command = cargo_for_sel4(spec);
        for package in &packages {
            command.args(["--package", package, "--bin", package]);
        }
        run_cargo(command, "the components")?;
    }
    // Files are rewritten only when they change, so an unchanged system
    // does not relink the root task.
    let mut wanted = vec!["layout.bin".to_string()];
    for package in &packages {
        let elf = release.join(package);
        let bytes =
            std::fs::read(&elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
        write_if_changed(&embed.join(format!("{package}.elf")), &bytes)?;
        wanted.push(format!("{package}.elf"));
    }
    let bytes = layout
        .encode()
        .map_err(|e| format!("cannot encode the layout: {e}"))?;
    write_if_changed(&embed.join("layout.bin"), &bytes)?;
    for entry in
        std::fs::read_dir(&embed).map_err(|e| format!("cannot list {}: {e}", embed.display()))?
    {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !wanted.contains(&name) {
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }

    let mut command = cargo_for_sel4(spec);
    command
        .env("ROOTTASK_IMAGE_DIR", &embed)
        .env(
            "ROOTTASK_AUDIT_TEST_GRANT",
            spec.audit_test_grant.unwrap_or_default(),
        )
        .env(
            "ROOTTASK_FAULT_INJECTION",
            if spec.fault_injection() { "1" } else { "0" },
        )
        .args(["--package", "roottask"]);
    run_cargo(command, "the root task")?;
    let roottask = target_dir().join("sel4").join("image").join("roottask.elf");
    std::fs::copy(release.join("roottask"), &roottask)
        .map_err(|e| format!("cannot copy the root task: {e}"))?;
    let user_done = started.elapsed();

    let kernel = build_kernel()?;
    eprintln!(
        "xtask: image for {} built in {:.1} s (user space {:.1} s)",
        system.display(),
        started.elapsed().as_secs_f64(),
        user_done.as_secs_f64()
    );
    Ok(BootImage { kernel, roottask })
}
