//! `cargo xtask run [--system FILE] [--host-script FILE] [--vnc]`: build
//! the image and boot it in QEMU with the console on the terminal (Ctrl-A X
//! quits); `--vnc`: QEMU's display on a VNC server on 127.0.0.1 only.
//!
//! `cargo xtask run` gives QEMU a disk: `--disk IMG` (a raw image, the
//! primary IDE channel's master; QEMU writes the file, so writes persist)
//! or else the demo disk `target/disks/demo.img` (`crate::disk`).
//!
//! `cargo xtask boot-test [--system FILE] [--host-script FILE] [--disk IMG]`: for the
//! given image, or by default for every case in [`BOOT_TESTS`] (the VMBus
//! system, its isolation test, its bus scenarios (version fallback,
//! rescind and re-offer, offers at runtime, KVP GET, monitored channels), the platform
//! demonstration and the platform's own bring-up test): build, boot headless with a timeout, and
//! pass if QEMU ends through isa-debug-exit with status 1 (a component
//! called `power_off(0)`; status is `code << 1 | 1`) and every line of the
//! expectation file appears in the output, each component's lines in order
//! (`ipc_harness::expect`). The expectation file is the host script's or
//! else the description's path with `.expect` instead of its extension
//! (`system.expect` for `system.toml`). It reports the time from QEMU's
//! start to the last expected line. By default the capability audit's
//! negative tests follow ([`AUDIT_TESTS`]): a root task that grants one
//! extra cap or frame must be refused by its audit (`--audit-tests`: only
//! those), the disk tests (`crate::disk::BOOT_TESTS`, `--disk-tests`:
//! only those) and the network tests (`crate::net::BOOT_TESTS`,
//! `--net-tests`: only those; the real `curl` against the loopback port
//! QEMU forwards to the guest) and the disk-image tests
//! (`crate::boot_media::BOOT_TESTS`, `--media-tests`: only those; QEMU
//! boots the Hyper-V VHD from its disk through SeaBIOS and GRUB). Every
//! case runs even if one fails.
//!
//! `--console-tests`: only the QEMU console test (`crate::console`: the
//! simulated host's test pattern on QEMU's std VGA, checked in a
//! `screendump`; `sendkey` and `mouse_move` reported from its PS/2 devices).
//!
//! Every QEMU run has the std VGA (`-vga std`: the simulated host's
//! display, docs/console.md) and the NE2000 on QEMU's user network
//! ([`crate::net::QemuNet`]); `cargo xtask run` prints the status page's
//! address.

use crate::image::{build, system_argument, BootImage, ImageSpec};
use crate::net::QemuNet;
use crate::util::Result;
use ipc_harness::expect;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// QEMU for `image`, with `disk` and the network `net`
/// ([`crate::net`]: the NE2000 on QEMU's user network, one loopback port
/// forwarded to the guest's port 80).
fn qemu_command(image: &BootImage, disk: Option<&Path>, net: &QemuNet) -> Command {
    qemu_command_for(BootSource::Multiboot(image), disk, net)
}

/// What QEMU boots.
#[derive(Clone, Copy)]
pub enum BootSource<'a> {
    /// QEMU's own multiboot loader: `-kernel` and `-initrd`.
    Multiboot(&'a BootImage),
    /// The firmware boots a disk image (`crate::boot_media`: a fixed VHD
    /// with GRUB), attached as the secondary IDE channel's master: SeaBIOS
    /// boots it as the first hard disk (GRUB's `hd0`, as on a Hyper-V
    /// generation 1 VM), and the simulated host, which drives the primary
    /// channel's disk as the guest's VMBus storage, leaves it alone, so a
    /// description boots as it does with `-kernel`. `snapshot=on`: writes
    /// go to a temporary overlay; the image stays as it was written.
    Disk(&'a Path),
}

fn qemu_command_for(source: BootSource, disk: Option<&Path>, net: &QemuNet) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            // The simulated host's display (docs/console.md, "In QEMU"):
            // Bochs VBE, its framebuffer at BAR0 = 0xfd000000.
            "-vga",
            "std",
        ])
        .args(["-serial", "mon:stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match source {
        BootSource::Multiboot(image) => {
            command
                .arg("-kernel")
                .arg(&image.kernel)
                .arg("-initrd")
                .arg(&image.roottask);
            if let Some(disk) = disk {
                command.args(["-drive", &crate::disk::qemu_drive(disk)]);
            }
        }
        BootSource::Disk(image) => {
            let file = image.display().to_string().replace(',', ",,");
            command.args([
                "-drive",
                &format!("file={file},format=vpc,if=ide,index=2,media=disk,snapshot=on"),
            ]);
            if let Some(disk) = disk {
                command.args(["-drive", &crate::disk::qemu_drive(disk)]);
            }
        }
    }
    command.args(net.qemu_args());
    command
}

pub fn run(args: &[String]) -> Result {
    let vnc = args.iter().any(|arg| arg == "--vnc");
    let rest: Vec<String> = args.iter().filter(|arg| *arg != "--vnc").cloned().collect();
    let spec = system_argument(&rest)?;
    let image = build(&spec)?;
    let disk = match &spec.disk {
        Some(disk) => disk.clone(),
        None => crate::disk::demo_disk()?,
    };
    println!("xtask: disk 0 (IDE primary master): {}", disk.display());
    let net = QemuNet::new()?;
    println!(
        "xtask: network: NE2000 on QEMU's user network; the guest's status page (10.0.2.15:80) is {} (e.g. `curl {}`)",
        net.status_url(),
        net.status_url()
    );
    let mut command = qemu_command(&image, Some(&disk), &net);
    if vnc {
        let display = crate::console::free_vnc_display()?;
        command.args(crate::console::vnc_args(display));
        println!(
            "xtask: display: VNC on 127.0.0.1:{} (display :{display}; loopback only), e.g. `vncviewer 127.0.0.1:{display}`",
            5900 + display
        );
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot start qemu-system-x86_64 (run `cargo xtask setup`): {e}"))?;
    match status.code() {
        Some(1) => {
            println!("xtask: system powered off with code 0");
            Ok(())
        }
        Some(code) if code & 1 == 1 => Err(format!("system powered off with code {}", code >> 1)),
        _ => Err(format!("QEMU ended with {status}")),
    }
}

/// The lines that must appear (`ipc_harness::expect`).
fn expectations(spec: &ImageSpec) -> Result<Vec<String>> {
    expectations_from(&spec.expectations_file())
}

pub fn expectations_from(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(expect::parse(&text, expect::Backend::Sel4)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// What `cargo xtask boot-test` boots: (description, simulated host's
/// script). The VMBus system against the simulated host; the same system
/// with a host that sends malformed packets on the KVP channel (the
/// isolation test); the platform demonstration; the seL4 platform's own
/// bring-up test; the block interface without VMBus (fs-client on the RAM
/// disk fixture).
pub const BOOT_TESTS: &[(&str, Option<&str>)] = &[
    ("system.toml", None),
    ("system.toml", Some("tests/systems/kvp-fault.hvsim")),
    ("system.toml", Some("tests/systems/vmbus-4.0.hvsim")),
    ("system.toml", Some("tests/systems/vmbus-2.4.hvsim")),
    ("system.toml", Some("tests/systems/kvp-rescind.hvsim")),
    ("system.toml", Some("tests/systems/monitored.hvsim")),
    ("system.toml", Some("tests/systems/runtime-offers.hvsim")),
    ("system.toml", Some("tests/systems/kvp-get.hvsim")),
    ("system.toml", Some("tests/systems/restart.hvsim")),
    ("system.toml", Some("tests/systems/input.hvsim")),
    (
        "tests/systems/datapath.toml",
        Some("tests/systems/datapath.hvsim"),
    ),
    ("tests/systems/demo.toml", None),
    ("tests/systems/sel4test.toml", None),
    ("tests/systems/hypervisor-cap.toml", None),
    ("tests/systems/blk-ramdisk.toml", None),
    ("tests/systems/hyperv-absent.toml", None),
    ("tests/systems/hyperv-tcg.toml", None),
];

/// Systems the root task must refuse before any PD starts, with the code
/// it powers off with: the Hyper-V profile on QEMU, which is not Hyper-V
/// ([`HYPERV_ABSENT_CODE`]).
const REFUSED_SYSTEMS: &[(&str, i32)] = &[("tests/systems/hyperv-absent.toml", HYPERV_ABSENT_CODE)];

/// Systems that never power off by themselves: booted until every
/// expected line appeared (a timeout fails them). The Hyper-V gate under
/// QEMU TCG: the kernel refuses every hypervisor call, so no host answers.
const UNTIL_SYSTEMS: &[&str] = &["tests/systems/hyperv-tcg.toml"];

/// `HYPERV_ABSENT_CODE` in `platform/sel4/roottask/src/boot.rs`.
pub const HYPERV_ABSENT_CODE: i32 = 0x7c;

/// The capability audit's negative tests: the VMBus system with a root
/// task built to grant one thing the description does not
/// (`ROOTTASK_AUDIT_TEST_GRANT`): the root task's cap to every IO port in
/// a free IO-port slot of the last PD (the last driver in system.toml;
/// the expected lines leave its name out, so a driver added to the
/// description does not break them), the first page of the first region
/// mapped writable at 0x3000_0000 in that PD, or the console's COM1 range
/// one port longer, the first notify channel's cap pointed at its own PD's
/// notification, the last PD's monitor cap badged as PD 0, or its fault
/// cap with the read right (it could receive on
/// the monitor's endpoint), or the first vector IRQ (hvsim's synic
/// interrupt) bound to its holder's own notification instead of synic's,
/// or a RAM frame mapped in place of the first page of hvsim's device
/// region (QEMU's VGA framebuffer). The audit must name it, and the
/// root task must power off with [`AUDIT_FAILED_CODE`] before any PD starts.
pub const AUDIT_TESTS: &[(&str, &[&str])] = &[
    (
        "extra-cap",
        &[
            "extra cap in slot 151: IO ports of another range",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "extra-frame",
        &[
            "extra frame at 0x30000000 (rw, physical",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "wider-ioport",
        &[
            "[monitor] capability audit: console: slot 144 holds IO ports of another range, the description grants IO ports 0x3f8-0x3ff",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "wrong-notify",
        &[
            "holds a notification that does not reach the peer with its badge, the description grants notification",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "wrong-badge",
        &[
            "slot 2 holds an endpoint that does not lead where granted, the description grants endpoint",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "readable-monitor",
        &[
            "slot 3 holds an endpoint that does not lead where granted, the description grants endpoint",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "device-in-ram",
        &[
            "[monitor] capability audit: hvsim: frame at 0x1000000000 is physical ",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
    (
        "wrong-irq-end",
        &[
            "[monitor] capability audit: hvsim: slot 83 holds an IRQ handler that, raised, does not signal its end with its badge, the description grants IRQ handler",
            "[monitor] capability audit: 1 difference from the description: the system is not started",
        ],
    ),
];

/// `AUDIT_FAILED_CODE` in `platform/sel4/roottask/src/boot.rs`.
const AUDIT_FAILED_CODE: i32 = 0x7d;

/// A line that shows the PDs were started.
const STARTED_LINE: &str = "protection domains (";

/// Lines after which a boot cannot pass: stop QEMU at once instead of
/// waiting for the timeout.
const FATAL_LINES: &[&str] = &["has no supervisor: it stays stopped", "KERNEL EXCEPTION"];

/// The seL4 kernel's report of an exception it took itself.
const KERNEL_EXCEPTION: &str = "KERNEL EXCEPTION";

/// The idle window of the VMBus system: from every offered device open to
/// the power-off, the guest only waits for the host's heartbeats and time
/// samples.
const IDLE_FROM: &str = "offered devices open";
const IDLE_TO: &str = "powers off";

pub fn boot_test(args: &[String]) -> Result {
    let audit_only = args.iter().any(|arg| arg == "--audit-tests");
    let disk_only = args.iter().any(|arg| arg == "--disk-tests");
    let net_only = args.iter().any(|arg| arg == "--net-tests");
    let media_only = args.iter().any(|arg| arg == "--media-tests");
    let console_only = args.iter().any(|arg| arg == "--console-tests");
    let only = audit_only || disk_only || net_only || media_only || console_only;
    if !args.is_empty() && !only {
        return boot_test_one(&system_argument(args)?);
    }
    let boot_tests = if only { &[][..] } else { BOOT_TESTS };
    let mut failed = Vec::new();
    for (system, host_script) in boot_tests {
        let spec = ImageSpec::new(system, *host_script);
        let name = match host_script {
            Some(script) => format!("{system} with {script}"),
            None => system.to_string(),
        };
        println!("xtask: boot test of {name}");
        if let Err(error) = boot_test_one(&spec) {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name);
        }
    }
    let disk_tests = if only && !disk_only {
        &[][..]
    } else {
        crate::disk::BOOT_TESTS
    };
    for test in disk_tests {
        let name = format!("{} with the {} disk", test.system, test.name);
        println!("xtask: boot test of {name}");
        if let Err(error) = crate::disk::boot_test_one(test) {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name);
        }
    }
    let net_tests = if only && !net_only {
        &[][..]
    } else {
        crate::net::BOOT_TESTS
    };
    for test in net_tests {
        let name = format!("{} ({})", test.system, test.name);
        println!("xtask: boot test of {name}");
        if let Err(error) = crate::net::boot_test_one(test) {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name);
        }
    }
    let console_tests = usize::from(!only || console_only);
    if console_tests == 1 {
        let name = "system.toml with QEMU's display and PS/2 devices (screendump, sendkey)";
        println!("xtask: boot test of {name}");
        if let Err(error) = crate::console::boot_test() {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name.to_string());
        }
        let name = "system.toml's terminal on QEMU's display (screendump, sendkey, mouse_move)";
        println!("xtask: boot test of {name}");
        if let Err(error) = crate::console::boot_test_terminal() {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name.to_string());
        }
    }
    let media_tests = if only && !media_only {
        &[][..]
    } else {
        crate::boot_media::BOOT_TESTS
    };
    for test in media_tests {
        let name = test.name();
        println!("xtask: boot test of {name}");
        if let Err(error) = crate::boot_media::boot_test_one(test) {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name);
        }
    }
    let audit_tests = if only && !audit_only {
        &[][..]
    } else {
        AUDIT_TESTS
    };
    for (grant, expected) in audit_tests {
        let name = format!("the capability audit with one {grant}");
        println!("xtask: boot test of {name}");
        if let Err(error) = audit_test_one(grant, expected) {
            eprintln!("xtask: boot test of {name} FAILED: {error}");
            failed.push(name);
        }
    }
    println!(
        "boot-tests: {} passed, {} failed",
        boot_tests.len()
            + disk_tests.len()
            + net_tests.len()
            + console_tests
            + media_tests.len()
            + audit_tests.len()
            - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("boot tests failed: {}", failed.join(", ")))
    }
}

fn boot_test_one(spec: &ImageSpec) -> Result {
    let expected = expectations(spec)?;
    let image = build(spec)?;
    let until = UNTIL_SYSTEMS
        .iter()
        .any(|system| crate::util::workspace_root().join(system) == spec.system)
        .then_some(expected.as_slice());
    let boot = boot_until(&image, spec.disk.as_deref(), Echo::Lines, until)?;
    let refused_with = REFUSED_SYSTEMS
        .iter()
        .find(|(system, _)| crate::util::workspace_root().join(system) == spec.system)
        .map(|(_, code)| *code);
    if let Some(code) = refused_with {
        if let Some(line) = boot.lines.iter().find(|l| l.contains(STARTED_LINE)) {
            return Err(format!("the system was started anyway: {line:?}"));
        }
        boot.verdict_with_code(&expected, code)?;
        eprintln!(
            "xtask: boot test passed (refused with code {code:#x}, {} expected lines seen)",
            expected.len()
        );
        return Ok(());
    }
    if let Some(at) = boot.last_expected_at(&expected) {
        eprintln!(
            "xtask: boot time to the last expected line: {:.2} s",
            at.as_secs_f64()
        );
    }
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    boot.verdict(&expected)?;
    eprintln!(
        "xtask: boot test passed ({} expected lines seen)",
        expected.len()
    );
    Ok(())
}

/// Boot the VMBus system with a root task that grants one extra item:
/// pass if the audit names it and the system is refused.
fn audit_test_one(grant: &'static str, expected: &[&str]) -> Result {
    let mut spec = ImageSpec::new("system.toml", None);
    spec.audit_test_grant = Some(grant);
    let image = build(&spec)?;
    let boot = boot_once(&image, None, Echo::Lines)?;
    let expected: Vec<String> = expected.iter().map(|line| line.to_string()).collect();
    if let Err(missing) = expect::check(&expected, &boot.lines) {
        return Err(format!("expected output line not seen: {missing:?}"));
    }
    if let Some(line) = boot.lines.iter().find(|l| l.contains(STARTED_LINE)) {
        return Err(format!("the system was started anyway: {line:?}"));
    }
    match boot.status.and_then(|status| status.code()) {
        Some(code) if code == (AUDIT_FAILED_CODE << 1) | 1 => {
            eprintln!("xtask: boot test passed (the audit refused the system)");
            Ok(())
        }
        other => Err(format!(
            "expected power-off code {AUDIT_FAILED_CODE:#x}, QEMU ended with {other:?}"
        )),
    }
}

/// Whether a boot's console lines are printed as they come.
#[derive(Clone, Copy, PartialEq)]
pub enum Echo {
    Lines,
    Quiet,
}

/// What one boot showed.
pub struct Boot {
    lines: Vec<String>,
    times: Vec<Duration>,
    /// QEMU's CPU time when each line arrived.
    cpu: Vec<Option<Duration>>,
    /// `None`: QEMU was stopped (timeout or a fatal line).
    status: Option<ExitStatus>,
    fatal: Option<String>,
    pub elapsed: Duration,
    /// QEMU was stopped because every line of `until` appeared.
    pub until_met: bool,
}

impl Boot {
    /// The console lines, in order.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// When each console line arrived (wall clock since QEMU started).
    pub fn times(&self) -> &[Duration] {
        &self.times
    }

    fn last_expected_at(&self, expected: &[String]) -> Option<Duration> {
        expect::check(expected, &self.lines)
            .ok()
            .flatten()
            .map(|index| self.times[index])
    }

    fn kernel_exceptions(&self) -> usize {
        self.lines
            .iter()
            .filter(|line| line.contains(KERNEL_EXCEPTION))
            .count()
    }

    /// QEMU's CPU seconds per wall-clock second between the first line
    /// containing `from` and the first later line containing `to`.
    fn cpu_share_between(&self, from: &str, to: &str) -> Option<f64> {
        let start = self.lines.iter().position(|line| line.contains(from))?;
        let end = start
            + self.lines[start..]
                .iter()
                .position(|line| line.contains(to))?;
        let cpu = self.cpu[end]?.checked_sub(self.cpu[start]?)?;
        let wall = self.times[end].checked_sub(self.times[start])?;
        (wall > Duration::from_millis(500)).then(|| cpu.as_secs_f64() / wall.as_secs_f64())
    }

    pub fn verdict(&self, expected: &[String]) -> Result {
        self.verdict_with_code(expected, 0)
    }

    /// [`Boot::verdict`] for a system that must power off with `code`.
    pub fn verdict_with_code(&self, expected: &[String], code: i32) -> Result {
        if let Some(line) = &self.fatal {
            return Err(format!("the run cannot complete: {line:?}"));
        }
        if self.until_met {
            return Ok(());
        }
        let Some(status) = self.status else {
            return Err(format!(
                "boot test timed out after {} s",
                BOOT_TIMEOUT.as_secs()
            ));
        };
        if let Err(missing) = expect::check(expected, &self.lines) {
            return Err(format!("expected output line not seen: {missing:?}"));
        }
        match status.code() {
            Some(status) if status == (code << 1) | 1 => Ok(()),
            Some(status) if status & 1 == 1 => Err(format!(
                "system powered off with code {:#x}, expected {code:#x}",
                status >> 1
            )),
            _ => Err(format!(
                "QEMU ended with {status} (not through isa-debug-exit)"
            )),
        }
    }
}

/// CPU time (user and system) the process has used so far, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks).
fn process_cpu_time(pid: u32, ticks_per_second: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second as f64,
    ))
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// Boot `image` headless until QEMU exits, a fatal line appears or
/// [`BOOT_TIMEOUT`] passes.
pub fn boot_once(image: &BootImage, disk: Option<&Path>, echo: Echo) -> Result<Boot> {
    boot_until(image, disk, echo, None)
}

/// [`boot_once`], but with `until`: stop QEMU as soon as every line of
/// `until` appeared (for a system that does not power off by itself);
/// [`Boot::until_met`] says so.
pub fn boot_until(
    image: &BootImage,
    disk: Option<&Path>,
    echo: Echo,
    until: Option<&[String]>,
) -> Result<Boot> {
    boot_with(image, disk, echo, until, None)
}

/// What a boot test does while the system runs (from the host: `curl` to
/// the forwarded port): called with the console lines so far after each
/// new batch; returns true when it is done, and QEMU is stopped then
/// ([`Boot::until_met`]).
pub type DuringBoot<'a> = &'a mut dyn FnMut(&[String], &QemuNet) -> bool;

/// [`boot_until`], with `during` run as the lines come.
pub fn boot_with(
    image: &BootImage,
    disk: Option<&Path>,
    echo: Echo,
    until: Option<&[String]>,
    during: Option<DuringBoot>,
) -> Result<Boot> {
    boot_source_with(
        BootSource::Multiboot(image),
        disk,
        echo,
        until,
        during,
        None,
    )
}

/// [`boot_once`] for any [`BootSource`].
pub fn boot_source_once(source: BootSource, disk: Option<&Path>, echo: Echo) -> Result<Boot> {
    boot_source_with(source, disk, echo, None, None, None)
}

/// [`boot_with`] with QEMU's human monitor (HMP) on the unix socket
/// `monitor` (`crate::console`: screendump, sendkey).
pub fn boot_with_monitor(
    image: &BootImage,
    echo: Echo,
    monitor: &Path,
    during: &mut dyn FnMut(&[String]) -> bool,
) -> Result<Boot> {
    let mut during = |lines: &[String], _: &QemuNet| during(lines);
    boot_source_with(
        BootSource::Multiboot(image),
        None,
        echo,
        None,
        Some(&mut during),
        Some(monitor),
    )
}

fn boot_source_with(
    source: BootSource,
    disk: Option<&Path>,
    echo: Echo,
    until: Option<&[String]>,
    mut during: Option<DuringBoot>,
    monitor: Option<&Path>,
) -> Result<Boot> {
    let ticks_per_second = clock_ticks_per_second();
    let net = QemuNet::new()?;
    let started = Instant::now();
    let mut command = qemu_command_for(source, disk, &net);
    if let Some(monitor) = monitor {
        let path = monitor.display().to_string().replace(',', ",,");
        command.args(["-monitor", &format!("unix:{path},server=on,wait=off")]);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64 (run `cargo xtask setup`): {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let (sender, receiver) = mpsc::channel::<(String, Duration, Option<Duration>)>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        while reader.read_until(b'\n', &mut buffer).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buffer)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let cpu = process_cpu_time(pid, ticks_per_second);
            if sender.send((line, started.elapsed(), cpu)).is_err() {
                break;
            }
            buffer.clear();
        }
    });
    let mut boot = Boot {
        lines: Vec::new(),
        times: Vec::new(),
        cpu: Vec::new(),
        status: None,
        fatal: None,
        elapsed: Duration::ZERO,
        until_met: false,
    };
    let take = |boot: &mut Boot, (line, at, cpu): (String, Duration, Option<Duration>)| {
        if echo == Echo::Lines {
            println!("{line}");
        }
        if boot.fatal.is_none() && FATAL_LINES.iter().any(|f| line.contains(f)) {
            boot.fatal = Some(line.clone());
        }
        boot.lines.push(line);
        boot.times.push(at);
        boot.cpu.push(cpu);
    };
    boot.status = loop {
        let mut new_lines = false;
        while let Ok(entry) = receiver.try_recv() {
            take(&mut boot, entry);
            new_lines = true;
        }
        if new_lines {
            if let Some(during) = during.as_mut() {
                if during(&boot.lines, &net) {
                    let _ = child.kill();
                    let _ = child.wait();
                    boot.until_met = true;
                    break None;
                }
            }
        }
        let _ = std::io::stdout().flush();
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            break Some(status);
        }
        if started.elapsed() > BOOT_TIMEOUT || boot.fatal.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if until.is_some_and(|lines| expect::check(lines, &boot.lines).is_ok()) {
            let _ = child.kill();
            let _ = child.wait();
            boot.until_met = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    while let Ok(entry) = receiver.try_recv() {
        take(&mut boot, entry);
    }
    boot.elapsed = started.elapsed();
    Ok(boot)
}

/// `cargo xtask soak [--boots N] [--system FILE] [--host-script FILE]`:
/// build once, then boot the image N times in a row (default 200) and
/// count what went wrong: kernel exceptions, boots that failed their
/// expectations. For each boot it also measures QEMU's host CPU use while
/// the guest is idle (CPU seconds per second, from every device open to
/// the power-off). Not part of `cargo xtask test`: 200 boots take about
/// 17 minutes.
pub fn soak(args: &[String]) -> Result {
    let mut boots = 200usize;
    let mut rest = Vec::new();
    let mut args_iter = args.iter();
    while let Some(arg) = args_iter.next() {
        if arg == "--boots" {
            boots = args_iter
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .ok_or("--boots needs a positive number")?;
        } else {
            rest.push(arg.clone());
        }
    }
    let spec = system_argument(&rest)?;
    let expected = expectations(&spec)?;
    let image = build(&spec)?;
    let soak_started = Instant::now();
    let mut failures = Vec::new();
    let mut kernel_exceptions = 0;
    let mut idle_shares = Vec::new();
    for index in 1..=boots {
        let boot = boot_once(&image, spec.disk.as_deref(), Echo::Quiet)?;
        kernel_exceptions += boot.kernel_exceptions();
        let share = boot.cpu_share_between(IDLE_FROM, IDLE_TO);
        if let Some(share) = share {
            idle_shares.push(share);
        }
        let verdict = boot.verdict(&expected);
        println!(
            "soak: boot {index}/{boots}: {} in {:.2} s, idle QEMU CPU {}",
            match &verdict {
                Ok(()) => "passed".to_string(),
                Err(error) => format!("FAILED ({error})"),
            },
            boot.elapsed.as_secs_f64(),
            share.map_or("n/a".to_string(), |s| format!("{s:.3} s/s")),
        );
        if let Err(error) = verdict {
            let log = std::env::temp_dir().join(format!("xtask-soak-boot-{index}.log"));
            let _ = std::fs::write(&log, boot.lines.join("\n"));
            failures.push(format!(
                "boot {index}: {error} (console: {})",
                log.display()
            ));
        }
    }
    idle_shares.sort_by(f64::total_cmp);
    println!(
        "soak: {boots} boots in {:.0} s: {} passed, {} failed, {} kernel exceptions",
        soak_started.elapsed().as_secs_f64(),
        boots - failures.len(),
        failures.len(),
        kernel_exceptions
    );
    if let (Some(min), Some(max)) = (idle_shares.first(), idle_shares.last()) {
        println!(
            "soak: idle QEMU host CPU per second: median {:.3} [{:.3}-{:.3}] over {} boots",
            idle_shares[idle_shares.len() / 2],
            min,
            max,
            idle_shares.len()
        );
    }
    for failure in &failures {
        println!("soak: {failure}");
    }
    if failures.is_empty() && kernel_exceptions == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} of {boots} boots failed, {kernel_exceptions} kernel exceptions",
            failures.len()
        ))
    }
}
