//! Disk images for the seL4 image in QEMU (the simulated host serves them
//! to the guest's storage driver; hvsim drives QEMU's IDE disk by PIO):
//!
//! - [`make_fat_image`]: a raw image of a given size holding one FAT file
//!   system (no partition table) with the given files, made with
//!   `mkfs.fat` and `mcopy` (`cargo xtask setup` installs dosfstools and
//!   mtools). For tests and benchmarks.
//! - [`demo_disk`]: what `cargo xtask run` gives QEMU without `--disk`:
//!   `target/disks/demo.img`, made once (64 MiB FAT16, label `HVSIM DEMO`,
//!   `HELLO.TXT`) and then kept, so what the system writes to it is still
//!   there on the next run.
//! - `cargo xtask disk IMG ...` ([`run`]): the same for a user's image.
//! - [`BOOT_TESTS`]: the boot tests of the disk path: the VMBus system with
//!   a fresh demo image (hvsim identifies the disk and reads block 0), and
//!   with a scratch image (hvsim writes, flushes and reads back 4 MiB and
//!   prints the PIO throughput; after QEMU powered off, the image file
//!   must hold what was written: writes persist); and the storage system (`tests/systems/storage.toml`: storvsc, fs-client) on
//!   QEMU's disk: the guest's FAT client reads HELLO.TXT and writes
//!   GUEST.TXT through storvsc, hvsim's storage host and the ATA disk;
//!   QEMU is stopped at the client's last line (the system does not power
//!   off) and the image file must hold GUEST.TXT, clean for fsck.fat; the
//!   same with the host offering the IDE class instead of SCSI.
//!
//! QEMU writes the raw file itself (`format=raw`, no snapshot), so every
//! write the guest flushed is in the file after power-off.

use crate::image::{build, ImageSpec};
use crate::kernel::target_dir;
use crate::qemu::{boot_until, expectations_from, Echo};
use crate::util::{run_checked, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file of a FAT image: its name in the root folder and its bytes.
pub struct ImageFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
}

/// A FAT test image.
pub struct FatImage<'a> {
    /// The file system's size.
    pub filesystem_kib: u64,
    pub label: &'a str,
    /// 12, 16 or 32; `None` lets mkfs.fat choose by size.
    pub fat_bits: Option<u8>,
    /// An MBR disk with the file system as partition 1 (type 0x0E, FAT16
    /// LBA; 0x0C for FAT32) at [`PARTITION_START`], as fdisk lays it out;
    /// else the file system alone (a "superfloppy").
    pub partitioned: bool,
    pub files: &'a [ImageFile<'a>],
}

/// Where partition 1 starts (blocks of 512): 1 MiB in, as fdisk puts it.
pub const PARTITION_START: u64 = 2048;

/// The text of `HELLO.TXT` on the demo disk (the storage system's
/// expectations read it: tests/systems/storage.expect).
pub const HELLO_TEXT: &str = "Hello from the host's FAT disk.\nSecond line.\n";
const DEMO_LABEL: &str = "HVSIM DEMO";
const DEMO_FILESYSTEM_KIB: u64 = 64 << 10;

fn mtools(program: &str) -> Command {
    let mut command = Command::new(program);
    // No geometry checks: an image file has none.
    command.env("MTOOLS_SKIP_CHECK", "1");
    command
}

/// Make `path` the raw image `image` describes (replacing the file),
/// with `mkfs.fat` and `mcopy`.
pub fn make_fat_image(path: &Path, image: &FatImage) -> Result {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    }
    let filesystem = path.with_extension("fs");
    let _ = std::fs::remove_file(&filesystem);
    let mut mkfs = Command::new("mkfs.fat");
    mkfs.arg("-C").arg("-n").arg(image.label);
    if let Some(bits) = image.fat_bits {
        mkfs.arg("-F").arg(bits.to_string());
    }
    mkfs.arg(&filesystem)
        .arg(image.filesystem_kib.to_string())
        .stdout(std::process::Stdio::null());
    run_checked(&mut mkfs)
        .map_err(|e| format!("{e} (mkfs.fat is in dosfstools: run `cargo xtask setup`)"))?;
    let staging = path.with_extension("files");
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let copied = image.files.iter().try_for_each(|file| {
        let local = staging.join(file.name);
        std::fs::write(&local, file.contents)
            .map_err(|e| format!("cannot write {}: {e}", local.display()))?;
        run_checked(
            mtools("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(&filesystem)
                .arg(&local)
                .arg(format!("::{}", file.name)),
        )
        .map_err(|e| format!("{e} (mcopy is in mtools: run `cargo xtask setup`)"))
    });
    let _ = std::fs::remove_dir_all(&staging);
    copied?;
    let bytes = std::fs::read(&filesystem)
        .map_err(|e| format!("cannot read {}: {e}", filesystem.display()))?;
    let _ = std::fs::remove_file(&filesystem);
    let disk = if image.partitioned {
        let fat32 = bytes.get(82..87) == Some(b"FAT32");
        with_mbr(&bytes, if fat32 { 0x0C } else { 0x0E })?
    } else {
        bytes
    };
    std::fs::write(path, disk).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// An MBR disk with `filesystem` as partition 1 of `kind`.
fn with_mbr(filesystem: &[u8], kind: u8) -> Result<Vec<u8>> {
    let start = (PARTITION_START * 512) as usize;
    let blocks = u32::try_from(filesystem.len() / 512).map_err(|_| "file system too large")?;
    let mut disk = vec![0u8; start + filesystem.len()];
    let entry = &mut disk[446..462];
    entry[4] = kind;
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&blocks.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[start..].copy_from_slice(filesystem);
    Ok(disk)
}

/// `cargo xtask disk IMG [--size-mib N] [--label LABEL] [--fat 12|16|32]
/// [--superfloppy] [FILE...]`: make a FAT test image for `--disk`: an MBR
/// disk with partition 1 (default) or the file system alone, 64 MiB
/// unless told, holding the files given (by their names, which must be
/// 8.3 names for the guest's FAT client).
pub fn run(args: &[String]) -> Result {
    let mut iter = args.iter();
    let path = PathBuf::from(iter.next().ok_or(
        "usage: cargo xtask disk IMG [--size-mib N] [--label LABEL] [--fat 12|16|32] [--superfloppy] [FILE...]",
    )?);
    let mut size_mib = DEMO_FILESYSTEM_KIB >> 10;
    let mut label = String::from("HVSIM DISK");
    let mut fat_bits = None;
    let mut partitioned = true;
    let mut sources = Vec::new();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--size-mib" => {
                size_mib = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=65536).contains(n))
                    .ok_or("--size-mib needs 1 to 65536")?;
            }
            "--label" => label = iter.next().ok_or("--label needs a label")?.clone(),
            "--fat" => {
                fat_bits = Some(
                    iter.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| [12, 16, 32].contains(n))
                        .ok_or("--fat needs 12, 16 or 32")?,
                );
            }
            "--superfloppy" => partitioned = false,
            file => sources.push(PathBuf::from(file)),
        }
    }
    let contents: Vec<(String, Vec<u8>)> = sources
        .iter()
        .map(|source| {
            let name = source
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{}: no file name", source.display()))?
                .to_ascii_uppercase();
            let bytes = std::fs::read(source)
                .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
            Ok((name, bytes))
        })
        .collect::<Result<_>>()?;
    let files: Vec<ImageFile> = contents
        .iter()
        .map(|(name, bytes)| ImageFile {
            name,
            contents: bytes,
        })
        .collect();
    make_fat_image(
        &path,
        &FatImage {
            filesystem_kib: size_mib << 10,
            label: &label,
            fat_bits,
            partitioned,
            files: &files,
        },
    )?;
    println!(
        "xtask: made {} ({}{} MiB FAT, {} files)",
        path.display(),
        if partitioned {
            "MBR, partition 1: "
        } else {
            ""
        },
        size_mib,
        files.len()
    );
    Ok(())
}

fn disks_dir() -> PathBuf {
    target_dir().join("disks")
}

fn make_demo_image(path: &Path) -> Result {
    make_fat_image(
        path,
        &FatImage {
            filesystem_kib: DEMO_FILESYSTEM_KIB,
            label: DEMO_LABEL,
            fat_bits: Some(16),
            partitioned: true,
            files: &[ImageFile {
                name: "HELLO.TXT",
                contents: HELLO_TEXT.as_bytes(),
            }],
        },
    )
}

/// `target/disks/demo.img`, made if it is not there yet.
pub fn demo_disk() -> Result<PathBuf> {
    let path = disks_dir().join("demo.img");
    if !path.is_file() {
        make_demo_image(&path)?;
        println!(
            "xtask: made the demo disk {} (MBR, partition 1: {} MiB FAT16 with HELLO.TXT)",
            path.display(),
            DEMO_FILESYSTEM_KIB >> 10
        );
    }
    Ok(path)
}

/// `-drive` for QEMU: the image as the primary IDE channel's master disk.
pub fn qemu_drive(image: &Path) -> String {
    // QEMU's -drive splits on commas; a comma in a path is written twice.
    let file = image.display().to_string().replace(',', ",,");
    format!("file={file},format=raw,if=ide,index=0,media=disk")
}

// The scratch test's layout and pattern: `simulator/hvsim/src/ide.rs`
// (written out again here, so a change on one side shows).
const SCRATCH_MARK: &[u8] = b"HVSIM ATA SCRATCH DISK";
const SCRATCH_FIRST_BLOCK: u64 = 2048;
const SCRATCH_BLOCKS: u64 = 8192;
const SCRATCH_SIZE: u64 = 16 << 20;

fn scratch_byte(block: u64, offset: usize) -> u8 {
    (block as u8) ^ (block >> 8) as u8 ^ (offset as u8).wrapping_mul(3) ^ (offset >> 8) as u8
}

fn make_scratch_image(path: &Path) -> Result {
    std::fs::create_dir_all(disks_dir()).map_err(|e| format!("cannot create target/disks: {e}"))?;
    let mut bytes = vec![0u8; SCRATCH_SIZE as usize];
    bytes[..SCRATCH_MARK.len()].copy_from_slice(SCRATCH_MARK);
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Blocks of the scratch area in the image file that differ from what the
/// scratch test writes.
fn scratch_blocks_wrong(path: &Path) -> Result<u64> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(SCRATCH_FIRST_BLOCK * 512))
        .map_err(|e| format!("cannot seek in {}: {e}", path.display()))?;
    let mut wrong = 0;
    let mut block = [0u8; 512];
    for index in 0..SCRATCH_BLOCKS {
        file.read_exact(&mut block)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let lba = SCRATCH_FIRST_BLOCK + index;
        if block
            .iter()
            .enumerate()
            .any(|(offset, byte)| *byte != scratch_byte(lba, offset))
        {
            wrong += 1;
        }
    }
    Ok(wrong)
}

/// The storage system's disk (as its hosted test makes it:
/// tests/harness/tests/storage.rs): an MBR disk, partition 1 a 16 MiB
/// FAT16 volume with HELLO.TXT.
fn make_storage_image(path: &Path) -> Result {
    make_fat_image(
        path,
        &FatImage {
            filesystem_kib: 16 << 10,
            label: "HOSTDISK",
            fat_bits: Some(16),
            partitioned: true,
            files: &[ImageFile {
                name: "HELLO.TXT",
                contents: HELLO_TEXT.as_bytes(),
            }],
        },
    )
}

/// What fs-client writes (`fs_client::WRITE_TEXT`, written out again).
const GUEST_FILE_TEXT: &str =
    "Written by the seL4 guest's fs-client through the block interface.\n";

/// After the storage system ran on QEMU's disk: the image file's
/// partition 1 is a clean FAT volume holding GUEST.TXT as the guest wrote
/// it and HELLO.TXT unchanged (read with mtools and fsck.fat).
fn guest_file_persisted(path: &Path) -> Result {
    let image = format!("{}@@{}", path.display(), PARTITION_START * 512);
    let read = |name: &str| -> Result<String> {
        let out = mtools("mtype")
            .arg("-i")
            .arg(&image)
            .arg(format!("::{name}"))
            .output()
            .map_err(|e| format!("cannot run mtype: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{name} is not in the image file: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let guest = read("GUEST.TXT")?;
    if guest != GUEST_FILE_TEXT {
        return Err(format!("GUEST.TXT in the image file holds {guest:?}"));
    }
    if read("HELLO.TXT")? != HELLO_TEXT {
        return Err("HELLO.TXT changed in the image file".into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let partition = path.with_extension("partition");
    std::fs::write(&partition, &bytes[(PARTITION_START * 512) as usize..])
        .map_err(|e| format!("cannot write {}: {e}", partition.display()))?;
    let fsck = Command::new("fsck.fat").arg("-n").arg(&partition).output();
    let _ = std::fs::remove_file(&partition);
    let fsck = fsck.map_err(|e| format!("cannot run fsck.fat: {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "fsck.fat finds the partition unclean: {}",
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }
    eprintln!("xtask: the image file holds GUEST.TXT as the guest wrote it; fsck.fat: clean");
    Ok(())
}

/// A disk boot test: the disk it makes, its expectations, what it checks
/// in the image afterwards.
pub struct DiskBootTest {
    pub name: &'static str,
    /// The description.
    pub system: &'static str,
    make: fn(&Path) -> Result,
    /// The simulated host's scenario (`None`: the default bring-up run).
    host_script: Option<&'static str>,
    expect: &'static str,
    after: Option<fn(&Path) -> Result>,
    /// The system powers off by itself (else QEMU is stopped once every
    /// expected line appeared).
    powers_off: bool,
}

fn scratch_persisted(path: &Path) -> Result {
    match scratch_blocks_wrong(path)? {
        0 => {
            eprintln!(
                "xtask: the image file holds all {SCRATCH_BLOCKS} blocks the scratch test wrote"
            );
            Ok(())
        }
        wrong => Err(format!(
            "{wrong} of {SCRATCH_BLOCKS} scratch blocks are not in the image file after power-off"
        )),
    }
}

pub const BOOT_TESTS: &[DiskBootTest] = &[
    DiskBootTest {
        name: "demo",
        system: "system.toml",
        make: make_demo_image,
        host_script: None,
        expect: "tests/systems/disk-demo.expect",
        after: None,
        powers_off: true,
    },
    DiskBootTest {
        name: "scratch",
        system: "system.toml",
        make: make_scratch_image,
        host_script: None,
        expect: "tests/systems/disk-scratch.expect",
        after: Some(scratch_persisted),
        powers_off: true,
    },
    DiskBootTest {
        name: "storage system",
        system: "tests/systems/storage.toml",
        make: make_storage_image,
        host_script: Some("tests/systems/storage.hvsim"),
        expect: "tests/systems/storage.expect",
        after: Some(guest_file_persisted),
        powers_off: false,
    },
    DiskBootTest {
        name: "storage system (IDE class)",
        system: "tests/systems/storage.toml",
        make: make_storage_image,
        host_script: Some("tests/systems/storage-ide.hvsim"),
        expect: "tests/systems/storage-ide.expect",
        after: Some(guest_file_persisted),
        powers_off: false,
    },
];

/// Boot the test's system with its disk.
pub fn boot_test_one(test: &DiskBootTest) -> Result {
    let spec = ImageSpec::new(test.system, test.host_script);
    let file_name: String = test
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = disks_dir().join(format!("boot-test-{file_name}.img"));
    (test.make)(&path)?;
    let expected = expectations_from(&crate::util::workspace_root().join(test.expect))?;
    let image = build(&spec)?;
    let until = (!test.powers_off).then_some(&expected[..]);
    let boot = boot_until(&image, Some(&path), Echo::Lines, until)?;
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    boot.verdict(&expected)?;
    if let Some(after) = test.after {
        after(&path)?;
    }
    let _ = std::fs::remove_file(&path);
    eprintln!(
        "xtask: boot test passed ({} expected lines seen)",
        expected.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_image_holds_the_files() {
        if !crate::util::have("mkfs.fat") || !crate::util::have("mtype") {
            eprintln!("skipped: no dosfstools/mtools (cargo xtask setup)");
            return;
        }
        let dir = std::env::temp_dir();
        let files = [
            ImageFile {
                name: "A.TXT",
                contents: b"first\n",
            },
            ImageFile {
                name: "B.BIN",
                contents: &[7u8; 3000],
            },
        ];
        let typed = |image: String| {
            let out = mtools("mtype").arg("-i").arg(image).arg("::A.TXT").output();
            out.unwrap().stdout
        };
        for partitioned in [false, true] {
            let path = dir.join(format!(
                "xtask-fat-{}-{partitioned}.img",
                std::process::id()
            ));
            let image = FatImage {
                filesystem_kib: 16 << 10,
                label: "TESTDISK",
                fat_bits: Some(16),
                partitioned,
                files: &files,
            };
            make_fat_image(&path, &image).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let fs_start = if partitioned {
                let entry = &bytes[446..462];
                assert_eq!(entry[4], 0x0E);
                assert_eq!(entry[8..12], 2048u32.to_le_bytes());
                assert_eq!(entry[12..16], 32768u32.to_le_bytes());
                assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
                (PARTITION_START * 512) as usize
            } else {
                0
            };
            assert_eq!(bytes.len(), fs_start + (16 << 20));
            let boot = &bytes[fs_start..fs_start + 512];
            assert_eq!(&boot[510..512], &[0x55, 0xAA]);
            assert_eq!(&boot[43..51], b"TESTDISK");
            assert_eq!(&boot[54..59], b"FAT16");
            let image = if partitioned {
                format!("{}@@{}", path.display(), fs_start)
            } else {
                path.display().to_string()
            };
            assert_eq!(typed(image), b"first\n");
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn scratch_check_sees_missing_writes() {
        let path = std::env::temp_dir().join(format!("xtask-scratch-{}.img", std::process::id()));
        make_scratch_image(&path).unwrap();
        assert_eq!(scratch_blocks_wrong(&path).unwrap(), SCRATCH_BLOCKS);
        let mut bytes = std::fs::read(&path).unwrap();
        for index in 0..SCRATCH_BLOCKS - 1 {
            let lba = SCRATCH_FIRST_BLOCK + index;
            for offset in 0..512 {
                bytes[(lba * 512) as usize + offset] = scratch_byte(lba, offset);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scratch_blocks_wrong(&path).unwrap(), 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn drive_argument_escapes_commas() {
        assert_eq!(
            qemu_drive(Path::new("/a,b/d.img")),
            "file=/a,,b/d.img,format=raw,if=ide,index=0,media=disk"
        );
    }
}
