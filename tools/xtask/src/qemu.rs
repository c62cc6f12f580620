//! `cargo xtask run` / `boot-test`: boot the image in QEMU.
use crate::util::Result;

pub fn run(_args: &[String]) -> Result {
    Err("not yet".into())
}
pub fn boot_test(_args: &[String]) -> Result {
    Err("not yet".into())
}
