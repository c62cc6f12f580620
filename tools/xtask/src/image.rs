//! `cargo xtask build`: the bootable seL4 image (kernel + root task).
use crate::util::Result;

pub fn run(_args: &[String]) -> Result {
    let kernel = crate::kernel::build_kernel()?;
    println!("{}", kernel.display());
    Ok(())
}
