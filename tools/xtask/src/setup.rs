//! `cargo xtask setup`: install what the build and the tests need on a fresh
//! machine of this project's kind (Debian bookworm, root, registries only).

use crate::util::{have, run_checked, Result};
use std::path::Path;
use std::process::Command;

const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";

pub fn run_setup() -> Result {
    let mut apt = Apt::default();
    if !have("qemu-system-x86_64") {
        // Debian ships QEMU 10 only in bookworm-backports, and the image's
        // qemu-utils 10 conflicts with bookworm's own qemu-system 7.2.
        if !Path::new(BACKPORTS_SOURCE).exists() && !backports_listed() {
            std::fs::write(
                BACKPORTS_SOURCE,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )
            .map_err(|e| format!("cannot write {BACKPORTS_SOURCE}: {e} (run as root, or install qemu-system-x86 from bookworm-backports by hand)"))?;
        }
        // Without its recommended packages (GUI, audio, GStreamer, VA
        // drivers: 174 packages, 535 MiB installed on a fresh machine) QEMU
        // is 21 packages, 97 MiB, and boots the image headless just the same.
        apt.install(Source::Backports, &["qemu-system-x86"])?;
    }
    if !have("xmllint") {
        apt.install(Source::Bookworm, &["libxml2-utils"])?;
    }
    // The storage tests make FAT disk images and check them with the
    // ordinary Linux tools (mkfs.fat, fsck.fat; mcopy, mdir).
    if !have("mkfs.fat") || !have("fsck.fat") || !have("mcopy") {
        apt.install(Source::Bookworm, &["dosfstools", "mtools"])?;
    }
    // The Hyper-V disk image (`cargo xtask image --hyperv`, its boot test):
    // GRUB's BIOS boot sector, core image and modules (grub-pc-bin; unlike
    // grub-pc it installs nothing on this machine's own disk), grub-mkimage
    // (grub-common, a dependency), and qemu-img for the VHD.
    if !have("grub-mkimage")
        || !Path::new(crate::boot_media::GRUB_PC_DIR)
            .join("boot.img")
            .is_file()
    {
        apt.install(Source::Bookworm, &["grub-pc-bin"])?;
    }
    if !have("qemu-img") {
        // From backports like QEMU itself: the two must be one version.
        apt.install(Source::Backports, &["qemu-utils"])?;
    }
    // The network tests talk to the guest from a network namespace of
    // their own with the ordinary Linux tools: `ip` (namespaces, the TAP),
    // `ping`, `curl`.
    if !have("ip") || !have("ping") || !have("curl") {
        apt.install(Source::Bookworm, &["iproute2", "iputils-ping", "curl"])?;
    }
    let python_ok = Command::new("python3")
        .args(["-c", "import ply, tempita, six"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !python_ok {
        run_checked(
            Command::new("python3").args(["-m", "pip", "install", "-q", "ply", "tempita", "six"]),
        )?;
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&targets.stdout).contains("x86_64-unknown-none") {
        run_checked(Command::new("rustup").args(["target", "add", "x86_64-unknown-none"]))?;
    }
    Ok(())
}

/// Where a package comes from: QEMU and qemu-utils must be one version,
/// both from bookworm-backports.
#[derive(Clone, Copy)]
enum Source {
    Bookworm,
    Backports,
}

/// `apt-get`, with the package lists updated once, before the first install.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, source: Source, packages: &[&str]) -> Result {
        if !self.updated {
            run_checked(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        let mut install = Command::new("apt-get");
        install.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
        ]);
        if let Source::Backports = source {
            install.args(["-t", "bookworm-backports"]);
        }
        run_checked(install.args(packages))
    }
}

fn backports_listed() -> bool {
    Command::new("sh")
        .arg("-c")
        .arg("grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn run(_args: &[String]) -> Result {
    run_setup()
}
