//! A Linux TAP device for hvsim's hosted NIC backend (`hvsim --net
//! tap:IFNAME`): `/dev/net/tun` attached to the named interface in Ethernet
//! mode without the packet-information header, so each read is one
//! Ethernet frame and each write sends one. The interface is created if it
//! does not exist (in the network namespace of the calling process) and is
//! left to the operator or the test to configure (address, `up`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Opens (or creates) the TAP interface `name`, non-blocking: reads return
/// `WouldBlock` when no frame is waiting.
pub fn open_tap(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?} (1 to {MAX_NAME_LEN} bytes, no '/')"),
        ));
    }
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data (a byte array and a union of
    // integers and addresses); all zeroes is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `request` is and
    // which outlives the call; the descriptor is the open `/dev/net/tun`.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for name in ["", "a/b", "with\0nul", "sixteen-bytes-xx"] {
            let error = open_tap(name).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
