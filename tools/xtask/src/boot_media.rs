//! `cargo xtask image --hyperv [--system FILE] [--out PATH] [--size-mib N]`:
//! a disk image that Hyper-V generation 1 VMs and Azure boot.
//!
//! The disk (see `docs/hyperv-image.md`):
//!
//! - sector 0: GRUB's `boot.img` (i386-pc) with an MBR partition table;
//! - sectors 1..2047 (the gap before the first partition): GRUB's
//!   `core.img`, made by `grub-mkimage` with the modules it needs to read
//!   the partition (biosdisk, part_msdos, fat) and to run `grub.cfg`
//!   (normal, multiboot, serial, ...) built in, and the prefix
//!   `(,msdos1)/boot/grub` (the boot drive's partition 1). `boot.img` loads
//!   the sector after the MBR and that sector the rest: the default block
//!   lists of `boot.img` and `diskboot.img` already say so, which is what
//!   `grub-bios-setup` writes for an embedded core image;
//! - partition 1 at 1 MiB, FAT (`mkfs.fat`, files by `mcopy`, so no root
//!   and no loop device): `/boot/kernel32.elf` (seL4), `/boot/roottask.elf`
//!   and `/boot/grub/grub.cfg` (`multiboot` + `module`, console on the
//!   serial port 0x3f8 like the seL4 kernel's).
//!
//! The raw disk is converted by `qemu-img` to a fixed VHD whose virtual size
//! is the requested whole number of MiB (`force_size`: Azure refuses any
//! other size), and the footer is checked before the command reports it.
//!
//! `BOOT_TESTS`: QEMU boots the VHD from its disk (SeaBIOS, GRUB, seL4; no
//! `-kernel`) and the test checks the console lines and the power-off code.

use crate::image::{build, ImageSpec};
use crate::kernel::target_dir;
use crate::qemu::{boot_source_once, expectations_from, BootSource, Echo};
use crate::util::{run_checked, workspace_root, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `apt-get install grub-pc-bin` puts GRUB's BIOS images and modules.
pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
/// Partition 1 starts 1 MiB in (sector 2048), as fdisk and Azure's own
/// images lay it out; GRUB's core image goes in the sectors before it.
const PARTITION_START: u64 = crate::disk::PARTITION_START;
const SECTOR: u64 = 512;
/// The default size: room for a debug kernel and root task many times over,
/// and small to upload. Azure wants a whole number of MiB.
const DEFAULT_SIZE_MIB: u64 = 64;
/// FAT16 needs at least about 16 MiB of partition to hold its clusters.
const MIN_SIZE_MIB: u64 = 20;
/// A VHD (fixed or dynamic) cannot be larger than 2040 GiB; we stay far
/// below and keep the FAT16/FAT32 choice simple.
const MAX_SIZE_MIB: u64 = 16 << 10;
/// The GRUB modules built into `core.img`: read the disk and the
/// partition, run `grub.cfg` (normal, configfile, test, echo), talk on the
/// serial port, load a multiboot kernel.
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_msdos",
    "fat",
    "normal",
    "configfile",
    "test",
    "echo",
    "serial",
    "terminal",
    "multiboot",
];
/// The line `grub.cfg` prints before it loads the kernel (the boot test
/// looks for it: the machine booted through GRUB from the disk).
/// (`grub.cfg` prints the device it found the files on, `($root)`:
/// `hd0,msdos1` when the firmware booted this disk first.)
pub const GRUB_LOADING_LINE: &str = "GRUB: loading seL4 from (hd";

/// The console port of the image: COM1, as the seL4 kernel's
/// `console_port`/`debug_port` default and every component's console.
const SERIAL_PORT: &str = "0x3f8";

fn grub_cfg() -> String {
    format!(
        "# Written by `cargo xtask image --hyperv` (docs/hyperv-image.md).\n\
         # The console is COM1 ({SERIAL_PORT}): Hyper-V's COM1 named pipe, Azure's serial console.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         menuentry \"seL4 (Hyper-V guest)\" {{\n\
         \x20   echo \"GRUB: loading seL4 from ($root)/boot\"\n\
         \x20   multiboot /boot/kernel32.elf console_port={SERIAL_PORT} debug_port={SERIAL_PORT}\n\
         \x20   module /boot/roottask.elf roottask\n\
         }}\n"
    )
}

/// What `image --hyperv` was asked for.
struct MediaArgs {
    spec: ImageSpec,
    out: PathBuf,
    size_mib: u64,
}

/// `system-hyperv.toml` (the kernel-path server and the Hyper-V profile)
/// when the tree has it, else `system.toml`.
pub fn default_system() -> &'static str {
    if workspace_root().join("system-hyperv.toml").is_file() {
        "system-hyperv.toml"
    } else {
        "system.toml"
    }
}

fn parse_args(args: &[String]) -> Result<MediaArgs> {
    let mut hyperv = false;
    let mut system = None;
    let mut out = None;
    let mut size_mib = DEFAULT_SIZE_MIB;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--hyperv" => hyperv = true,
            "--system" => system = Some(iter.next().ok_or("--system needs a file")?.clone()),
            "--out" => out = Some(PathBuf::from(iter.next().ok_or("--out needs a path")?)),
            "--size-mib" => {
                size_mib = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(n))
                    .ok_or(format!("--size-mib needs {MIN_SIZE_MIB} to {MAX_SIZE_MIB}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !hyperv {
        return Err(
            "usage: cargo xtask image --hyperv [--system FILE] [--out PATH] [--size-mib N] \
             (the only kind of image so far: a fixed VHD for Hyper-V generation 1 and Azure)"
                .into(),
        );
    }
    let spec = ImageSpec::new(system.as_deref().unwrap_or(default_system()), None);
    let out = match out {
        Some(path) => path,
        None => target_dir().join("hyperv").join(format!(
            "{}.vhd",
            spec.system
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
        )),
    };
    Ok(MediaArgs {
        spec,
        out,
        size_mib,
    })
}

pub fn run(args: &[String]) -> Result {
    let args = parse_args(args)?;
    let image = build(&args.spec)?;
    let disk = write_vhd(&image.kernel, &image.roottask, &args.out, args.size_mib)?;
    print_usage(&args.spec.system, &disk, args.size_mib);
    Ok(())
}

/// What was written.
pub struct WrittenDisk {
    pub vhd: PathBuf,
    pub core_img_bytes: u64,
    pub partition_bytes: u64,
}

/// Write the fixed VHD at `out`: boot sector, GRUB core image, FAT
/// partition with the kernel, the root task and `grub.cfg`.
pub fn write_vhd(kernel: &Path, roottask: &Path, out: &Path, size_mib: u64) -> Result<WrittenDisk> {
    let out = absolute(out)?;
    let folder = out
        .parent()
        .ok_or_else(|| format!("{}: no folder", out.display()))?;
    std::fs::create_dir_all(folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    let work = folder.join(format!(
        ".{}.parts",
        out.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = write_vhd_in(kernel, roottask, &out, size_mib, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .map_err(|e| format!("no current folder: {e}"))
    }
}

fn write_vhd_in(
    kernel: &Path,
    roottask: &Path,
    out: &Path,
    size_mib: u64,
    work: &Path,
) -> Result<WrittenDisk> {
    let boot_img = std::fs::read(Path::new(GRUB_PC_DIR).join("boot.img")).map_err(|e| {
        format!("cannot read GRUB's boot.img in {GRUB_PC_DIR}: {e} (grub-pc-bin: run `cargo xtask setup`)")
    })?;
    let core_path = work.join("core.img");
    run_checked(
        Command::new("grub-mkimage")
            .args(["--format", "i386-pc", "--directory", GRUB_PC_DIR])
            .args(["--prefix", "(,msdos1)/boot/grub", "--output"])
            .arg(&core_path)
            .args(GRUB_MODULES),
    )
    .map_err(|e| format!("{e} (grub-mkimage is in grub-common: run `cargo xtask setup`)"))?;
    let core_img = std::fs::read(&core_path).map_err(|e| format!("cannot read core.img: {e}"))?;

    let disk_bytes = size_mib << 20;
    let partition_bytes = disk_bytes - PARTITION_START * SECTOR;
    let filesystem = work.join("partition.fat");
    let fat_bits = if partition_bytes >= 512 << 20 { 32 } else { 16 };
    run_checked(
        Command::new("mkfs.fat")
            .arg("-C")
            .args(["-F", &fat_bits.to_string(), "-n", "SEL4 HYPERV"])
            // The hidden sectors before the file system: what a boot
            // loader reading the BPB expects of a partition at 1 MiB.
            .args(["-h", &PARTITION_START.to_string()])
            .arg(&filesystem)
            .arg((partition_bytes / 1024).to_string())
            .stdout(std::process::Stdio::null()),
    )
    .map_err(|e| format!("{e} (mkfs.fat is in dosfstools: run `cargo xtask setup`)"))?;
    let cfg = work.join("grub.cfg");
    std::fs::write(&cfg, grub_cfg()).map_err(|e| format!("cannot write grub.cfg: {e}"))?;
    run_checked(
        mtools("mmd")
            .arg("-i")
            .arg(&filesystem)
            .args(["::boot", "::boot/grub"]),
    )
    .map_err(|e| format!("{e} (mmd is in mtools: run `cargo xtask setup`)"))?;
    for (local, name) in [
        (kernel, "::boot/kernel32.elf"),
        (roottask, "::boot/roottask.elf"),
        (cfg.as_path(), "::boot/grub/grub.cfg"),
    ] {
        run_checked(
            mtools("mcopy")
                .arg("-i")
                .arg(&filesystem)
                .arg(local)
                .arg(name),
        )?;
    }
    let fat = std::fs::read(&filesystem)
        .map_err(|e| format!("cannot read {}: {e}", filesystem.display()))?;
    let partition_kind = if fat_bits == 32 { 0x0C } else { 0x0E };
    let raw = assemble_disk(&boot_img, &core_img, &fat, partition_kind)?;
    debug_assert_eq!(raw.len() as u64, disk_bytes);
    let raw_path = work.join("disk.raw");
    std::fs::write(&raw_path, &raw)
        .map_err(|e| format!("cannot write {}: {e}", raw_path.display()))?;
    drop(raw);
    let _ = std::fs::remove_file(out);
    run_checked(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "vpc"])
            .args(["-o", "subformat=fixed,force_size=on"])
            .arg(&raw_path)
            .arg(out),
    )
    .map_err(|e| format!("{e} (qemu-img is in qemu-utils: run `cargo xtask setup`)"))?;
    check_fixed_vhd(out, disk_bytes)?;
    Ok(WrittenDisk {
        vhd: out.to_path_buf(),
        core_img_bytes: core_img.len() as u64,
        partition_bytes,
    })
}

fn mtools(program: &str) -> Command {
    let mut command = Command::new(program);
    // No geometry checks: an image file has none.
    command.env("MTOOLS_SKIP_CHECK", "1");
    command
}

/// The raw disk: GRUB's boot sector with a partition table (partition 1,
/// active, of `kind`, at [`PARTITION_START`], as long as `filesystem`),
/// GRUB's core image from sector 1, the file system at the partition.
pub fn assemble_disk(
    boot_img: &[u8],
    core_img: &[u8],
    filesystem: &[u8],
    kind: u8,
) -> Result<Vec<u8>> {
    if boot_img.len() != SECTOR as usize {
        return Err(format!(
            "GRUB's boot.img is {} bytes, not one sector",
            boot_img.len()
        ));
    }
    let gap = ((PARTITION_START - 1) * SECTOR) as usize;
    if core_img.is_empty() || core_img.len() > gap {
        return Err(format!(
            "GRUB's core.img is {} bytes; the gap before partition 1 holds {gap}",
            core_img.len()
        ));
    }
    if filesystem.is_empty() || !filesystem.len().is_multiple_of(SECTOR as usize) {
        return Err("the file system is not a whole number of sectors".into());
    }
    let blocks = u32::try_from(filesystem.len() as u64 / SECTOR)
        .map_err(|_| "the file system is too large for an MBR partition")?;
    let start = (PARTITION_START * SECTOR) as usize;
    let mut disk = vec![0u8; start + filesystem.len()];
    // Boot code only: bytes 440.. hold the disk signature and the
    // partition table, which boot.img leaves to whoever partitions.
    disk[..MBR_CODE_BYTES].copy_from_slice(&boot_img[..MBR_CODE_BYTES]);
    // A disk signature, so Windows tools (and Hyper-V's disk inspection)
    // see an initialised MBR disk. Fixed, so the image is reproducible.
    disk[440..444].copy_from_slice(&DISK_SIGNATURE.to_le_bytes());
    let entry = &mut disk[446..462];
    entry[0] = 0x80; // active: what a BIOS MBR and Azure's checks expect
    entry[1..4].copy_from_slice(&CHS_UNUSED);
    entry[4] = kind;
    entry[5..8].copy_from_slice(&CHS_UNUSED);
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&blocks.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[SECTOR as usize..SECTOR as usize + core_img.len()].copy_from_slice(core_img);
    disk[start..].copy_from_slice(filesystem);
    Ok(disk)
}

const MBR_CODE_BYTES: usize = 440;
const DISK_SIGNATURE: u32 = 0x5e14_4b56;
/// CHS fields of a partition beyond what CHS can address: LBA only.
const CHS_UNUSED: [u8; 3] = [0xFE, 0xFF, 0xFF];

/// Check the VHD footer (the file's last 512 bytes): cookie `conectix`,
/// disk type 2 (fixed), current size `size`, the file exactly `size` + 512
/// bytes, and the checksum (one's complement of the byte sum without the
/// checksum field). Azure refuses a VHD that is not all of these.
pub fn check_fixed_vhd(path: &Path, size: u64) -> Result {
    let bytes_len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if bytes_len != size + SECTOR {
        return Err(format!(
            "{}: {bytes_len} bytes, a fixed VHD of {size} bytes has {}",
            path.display(),
            size + SECTOR
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut footer = [0u8; 512];
    file.seek(SeekFrom::Start(size))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| format!("cannot read the VHD footer of {}: {e}", path.display()))?;
    check_footer(&footer, size)
}

/// [`check_fixed_vhd`] on the footer itself.
pub fn check_footer(footer: &[u8; 512], size: u64) -> Result {
    if &footer[0..8] != b"conectix" {
        return Err("no VHD footer (cookie `conectix`)".into());
    }
    let field32 = |at: usize| u32::from_be_bytes(footer[at..at + 4].try_into().unwrap());
    let field64 = |at: usize| u64::from_be_bytes(footer[at..at + 8].try_into().unwrap());
    let disk_type = field32(60);
    if disk_type != 2 {
        return Err(format!("VHD disk type {disk_type}, not 2 (fixed)"));
    }
    let current_size = field64(48);
    if current_size != size {
        return Err(format!(
            "VHD current size {current_size}, not {size} (a whole number of MiB)"
        ));
    }
    let checksum = field32(64);
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(at, _)| !(64..68).contains(at))
        .fold(0u32, |sum, (_, byte)| sum.wrapping_add(*byte as u32));
    if checksum != !sum {
        return Err(format!(
            "VHD footer checksum {checksum:#x}, the footer sums to {:#x}",
            !sum
        ));
    }
    Ok(())
}

fn print_usage(system: &Path, disk: &WrittenDisk, size_mib: u64) {
    let vhd = disk.vhd.display();
    let name = disk
        .vhd
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    println!(
        "xtask: wrote {vhd}\n\
         \x20 fixed VHD, {size_mib} MiB (+ 512-byte footer), MBR: GRUB 2 i386-pc \
         (core image {} bytes in the gap), partition 1 FAT ({} MiB): \
         /boot/kernel32.elf, /boot/roottask.elf, /boot/grub/grub.cfg\n\
         \x20 system: {}\n\
         \x20 console: COM1 (0x3f8, 115200 8N1)\n\
         \n\
         Hyper-V Manager: New > Virtual Machine, Generation 1, 512 MB or more,\n\
         \x20 'Use an existing virtual hard disk': {vhd};\n\
         \x20 Settings > COM 1 > Named pipe '{name}-com1', then e.g. PuTTY (Serial) on \\\\.\\pipe\\{name}-com1.\n\
         PowerShell (elevated):\n\
         \x20 New-VM -Name {name} -Generation 1 -MemoryStartupBytes 512MB -VHDPath C:\\VMs\\{name}.vhd\n\
         \x20 Set-VMComPort -VMName {name} -Number 1 -Path \\\\.\\pipe\\{name}-com1\n\
         \x20 Start-VM -Name {name}\n\
         Azure (upload as a page blob, then an image; the VHD is already fixed and MiB-aligned):\n\
         \x20 az storage blob upload --account-name ACCOUNT --container-name vhds --type page \\\n\
         \x20   --file {vhd} --name {name}.vhd\n\
         \x20 az image create -g GROUP -n {name} --os-type Linux --hyper-v-generation V1 \\\n\
         \x20   --source https://ACCOUNT.blob.core.windows.net/vhds/{name}.vhd\n\
         \x20 az vm create -g GROUP -n {name} --image {name} --size Standard_B1s \\\n\
         \x20   --admin-username azureuser --generate-ssh-keys --boot-diagnostics-storage ACCOUNT --no-wait\n\
         \x20 (the image has no Azure agent: provisioning never reports done, the VM runs regardless)\n\
         \x20 (the serial console: az serial-console connect -g GROUP -n {name})\n\
         Generation 2 (UEFI) cannot boot it: docs/hyperv-image.md says why.",
        disk.core_img_bytes,
        disk.partition_bytes >> 20,
        system.display(),
    );
}

/// Which description a disk-image boot test builds.
pub enum MediaSystem {
    /// This description.
    File(&'static str),
    /// What `cargo xtask image --hyperv` builds by default for Hyper-V:
    /// `system-hyperv.toml` (the kernel-path server, `[platform]
    /// hypervisor = "hyper-v"`) when the tree has it, else the smallest
    /// Hyper-V profile, `tests/systems/hyperv-absent.toml`.
    HyperVDefault,
}

impl MediaSystem {
    fn path(&self) -> &'static str {
        match self {
            MediaSystem::File(path) => path,
            MediaSystem::HyperVDefault if workspace_root().join("system-hyperv.toml").is_file() => {
                "system-hyperv.toml"
            }
            MediaSystem::HyperVDefault => "tests/systems/hyperv-absent.toml",
        }
    }
}

/// A boot test of the disk image: the description it is built from, the
/// lines its console must show (an `.expect` file, with
/// [`GRUB_LOADING_LINE`] added), and the code it must power off with.
pub struct MediaBootTest {
    pub system: MediaSystem,
    pub expect: &'static str,
    pub power_off_code: i32,
}

impl MediaBootTest {
    pub fn name(&self) -> String {
        format!("{} booted from its Hyper-V disk image", self.system.path())
    }
}

/// The boot tests of the disk image: the Hyper-V image (QEMU is not
/// Hyper-V: the root task prints the CPUID detection report and powers off
/// with `HYPERV_ABSENT_CODE` before any PD starts), and the VMBus system
/// against the simulated host, which runs to its normal power-off (the
/// whole stack from the disk: GRUB's multiboot information, not QEMU's).
pub const BOOT_TESTS: &[MediaBootTest] = &[
    MediaBootTest {
        system: MediaSystem::HyperVDefault,
        expect: "tests/systems/hyperv-absent.expect",
        power_off_code: crate::qemu::HYPERV_ABSENT_CODE,
    },
    MediaBootTest {
        system: MediaSystem::File("system.toml"),
        expect: "system.expect",
        power_off_code: 0,
    },
];

/// A line that shows the protection domains were started
/// (`crate::qemu`'s `STARTED_LINE`): a refused image must not show it.
const STARTED_LINE: &str = "protection domains (";

/// Build the image for the test's description, write its VHD, boot QEMU
/// from that disk (BIOS, GRUB, multiboot: no `-kernel`) and check the
/// lines and the power-off code.
pub fn boot_test_one(test: &MediaBootTest) -> Result {
    let spec = ImageSpec::new(test.system.path(), None);
    let mut expected = vec![GRUB_LOADING_LINE.to_string()];
    expected.extend(expectations_from(&workspace_root().join(test.expect))?);
    let image = build(&spec)?;
    let vhd = target_dir().join("hyperv").join("boot-test.vhd");
    let disk = write_vhd(&image.kernel, &image.roottask, &vhd, DEFAULT_SIZE_MIB)?;
    eprintln!(
        "xtask: {} ({DEFAULT_SIZE_MIB} MiB fixed VHD, GRUB core image {} bytes); booting it from its disk",
        disk.vhd.display(),
        disk.core_img_bytes
    );
    let boot = boot_source_once(BootSource::Disk(&disk.vhd), None, Echo::Lines)?;
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    if test.power_off_code != 0 {
        if let Some(line) = boot.lines().iter().find(|l| l.contains(STARTED_LINE)) {
            return Err(format!("the system was started anyway: {line:?}"));
        }
    }
    boot.verdict_with_code(&expected, test.power_off_code)?;
    let _ = std::fs::remove_file(&disk.vhd);
    eprintln!(
        "xtask: boot test passed ({} expected lines seen, power-off code {:#x})",
        expected.len(),
        test.power_off_code
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut boot = vec![0xEBu8; 512];
        boot[510] = 0x55;
        boot[511] = 0xAA;
        boot
    }

    #[test]
    fn disk_layout_is_boot_sector_core_image_partition() {
        let core = vec![0xC0u8; 3 * 512 + 17];
        let filesystem = vec![0xFAu8; 64 * 512];
        let disk = assemble_disk(&fake_boot_img(), &core, &filesystem, 0x0E).unwrap();
        assert_eq!(disk.len(), 2048 * 512 + filesystem.len());
        assert!(disk[..440].iter().all(|b| *b == 0xEB), "boot code");
        assert_eq!(&disk[440..444], &DISK_SIGNATURE.to_le_bytes());
        let entry = &disk[446..462];
        assert_eq!(entry[0], 0x80);
        assert_eq!(entry[4], 0x0E);
        assert_eq!(u32::from_le_bytes(entry[8..12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(entry[12..16].try_into().unwrap()), 64);
        assert!(disk[462..510].iter().all(|b| *b == 0), "entries 2-4 empty");
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        assert!(disk[512..512 + core.len()].iter().all(|b| *b == 0xC0));
        assert!(disk[512 + core.len()..2048 * 512].iter().all(|b| *b == 0));
        assert!(disk[2048 * 512..].iter().all(|b| *b == 0xFA));
    }

    #[test]
    fn core_image_must_fit_the_gap() {
        let filesystem = vec![0u8; 512];
        let too_big = vec![1u8; 2047 * 512 + 1];
        assert!(assemble_disk(&fake_boot_img(), &too_big, &filesystem, 0x0E).is_err());
        let fits = vec![1u8; 2047 * 512];
        assert!(assemble_disk(&fake_boot_img(), &fits, &filesystem, 0x0E).is_ok());
        assert!(assemble_disk(&[0u8; 446], &fits, &filesystem, 0x0E).is_err());
    }

    /// A footer as the VHD specification describes it.
    fn footer(size: u64, disk_type: u32) -> [u8; 512] {
        let mut footer = [0u8; 512];
        footer[0..8].copy_from_slice(b"conectix");
        footer[40..48].copy_from_slice(&size.to_be_bytes());
        footer[48..56].copy_from_slice(&size.to_be_bytes());
        footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let sum = footer
            .iter()
            .fold(0u32, |sum, byte| sum.wrapping_add(*byte as u32));
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        footer
    }

    #[test]
    fn footer_check_accepts_only_a_fixed_disk_of_the_size() {
        assert_eq!(check_footer(&footer(64 << 20, 2), 64 << 20), Ok(()));
        assert!(
            check_footer(&footer(64 << 20, 3), 64 << 20).is_err(),
            "dynamic"
        );
        assert!(check_footer(&footer((64 << 20) + 512, 2), 64 << 20).is_err());
        let mut corrupt = footer(64 << 20, 2);
        corrupt[100] ^= 1;
        assert!(check_footer(&corrupt, 64 << 20).is_err(), "checksum");
        let mut no_cookie = footer(64 << 20, 2);
        no_cookie[0] = b'C';
        assert!(check_footer(&no_cookie, 64 << 20).is_err());
    }

    #[test]
    fn grub_cfg_loads_kernel_and_root_task_by_multiboot_on_com1() {
        let cfg = grub_cfg();
        assert!(cfg.contains("multiboot /boot/kernel32.elf console_port=0x3f8"));
        assert!(cfg.contains("module /boot/roottask.elf"));
        assert!(cfg.contains("serial --unit=0"));
        let loading = cfg
            .lines()
            .find(|line| line.trim_start().starts_with("echo"))
            .expect("an echo line");
        // GRUB prints `($root)` as `(hd0,msdos1)`: the line the boot test
        // looks for is the echo's text up to `(` followed by the `hd` of a
        // BIOS hard disk.
        let up_to_device = GRUB_LOADING_LINE.strip_suffix("hd").unwrap();
        assert!(loading.contains(&format!("{up_to_device}$root)/boot")));
    }
}
