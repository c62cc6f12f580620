//! Thin, checked wrappers over the Linux calls the runtime uses: memfd,
//! mmap, eventfd, SOCK_SEQPACKET socket pairs with fd passing, poll and
//! pidfd. Every wrapper returns `io::Result`; nothing here panics on an
//! error from the OS.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// A sealed shared-memory file of `size` bytes (it can be neither grown
/// nor shrunk, so no process can make another's mapping fault with
/// SIGBUS by truncating it).
pub fn memfd(name: &str, size: u64) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name.replace('\0', "_")).expect("no NUL left");
    let fd = check(unsafe {
        libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
    check(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// A new open file description of the same file, opened read-only. A
/// mapping made from it can never be made writable (mprotect refuses),
/// which is what makes a read-only map read-only.
pub fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("no NUL in a path we formatted");
    let new = check(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

pub fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// The unmapped guard page kept on each side of a region mapping.
pub const GUARD: usize = 4096;

/// Map `size` bytes of `fd` at `offset`, once or twice back to back, with
/// an inaccessible guard page before and after (so running off either end
/// faults, as on seL4, instead of landing in another mapping). Returns the
/// base address. The mapping lives until the process ends.
pub fn map_shared(
    fd: &OwnedFd,
    offset: u64,
    size: usize,
    writable: bool,
    double: bool,
) -> io::Result<*mut u8> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let span = if double { size * 2 } else { size };
    let total = span + 2 * GUARD;
    // Reserve guards and span first so both halves land back to back.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = unsafe { (reserved as *mut u8).add(GUARD) };
    let halves = if double { 2 } else { 1 };
    for half in 0..halves {
        let at = unsafe { base.add(half * size) };
        let mapped = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                size,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            unsafe { libc::munmap(reserved, total) };
            return Err(error);
        }
    }
    Ok(base)
}

/// A non-blocking eventfd (a notification: writers add, the reader takes
/// the count and resets it).
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signal an eventfd. Never blocks: if the counter is saturated the
/// notification is already pending, which is all a notification says.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

/// Take an eventfd's pending count; true if it was signalled.
pub fn eventfd_take(fd: RawFd) -> bool {
    let mut value: u64 = 0;
    let read = unsafe { libc::read(fd, &mut value as *mut u64 as *mut libc::c_void, 8) };
    read == 8 && value > 0
}

/// A connected pair of SOCK_SEQPACKET sockets: message boundaries are kept
/// and a peer's death is seen as end of file.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send one message, with at most one file descriptor attached.
pub fn send_message(socket: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(fd) = fd {
        header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        header.msg_controllen = space as _;
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
    }
    loop {
        let sent = unsafe { libc::sendmsg(socket, &header, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// What one receive produced.
pub enum Received {
    /// A message of this many bytes, possibly with a descriptor.
    Message(usize, Option<OwnedFd>),
    /// The peer is gone.
    Closed,
    /// Nothing to read (non-blocking receive).
    Empty,
}

/// Receive one message into `buffer`. A message longer than the buffer is
/// an error (our protocols bound every message), not a silent truncation.
pub fn receive_message(socket: RawFd, buffer: &mut [u8], blocking: bool) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut libc::c_void,
        iov_len: buffer.len(),
    };
    let space = unsafe { libc::CMSG_SPACE((std::mem::size_of::<RawFd>() * 4) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    header.msg_controllen = space as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if blocking { 0 } else { libc::MSG_DONTWAIT };
    let got = loop {
        let got = unsafe { libc::recvmsg(socket, &mut header, flags) };
        if got >= 0 {
            break got as usize;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Received::Empty),
            io::ErrorKind::ConnectionReset => return Ok(Received::Closed),
            _ => return Err(error),
        }
    };
    // Take every descriptor that arrived so none leaks; keep the first.
    let mut first: Option<OwnedFd> = None;
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    let owned = OwnedFd::from_raw_fd(fd);
                    if first.is_none() {
                        first = Some(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    if got == 0 && header.msg_flags & libc::MSG_TRUNC == 0 && first.is_none() {
        // A zero-length read on a SEQPACKET socket is end of file; our
        // protocols never send empty messages.
        return Ok(Received::Closed);
    }
    if header.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message longer than the receive buffer",
        ));
    }
    Ok(Received::Message(got, first))
}

/// Poll `fds` (events already set) until one is ready or `timeout` passes
/// (`None`: wait indefinitely). Returns the number ready (0 on timeout).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let millis = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up so a short wait does not become a busy loop.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready >= 0 {
            return Ok(ready as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// A pidfd for a child process: readable once the process has ended.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(std::fs::File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Clear close-on-exec so a spawned component inherits `fd`. Called
/// between fork and exec: only async-signal-safe calls.
pub fn inherit(fd: RawFd) -> io::Result<()> {
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    Ok(())
}

pub fn as_raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_map_aliases_and_read_only_reopen_refuses_write_upgrade() {
        let fd = memfd("test", 4096).unwrap();
        let base = map_shared(&fd, 0, 4096, true, true).unwrap();
        unsafe {
            base.write_volatile(0x5a);
            assert_eq!(base.add(4096).read_volatile(), 0x5a);
            base.add(4096 + 7).write_volatile(0x11);
            assert_eq!(base.add(7).read_volatile(), 0x11);
        }
        let read_only = reopen_read_only(&fd).unwrap();
        let ro_base = map_shared(&read_only, 0, 4096, false, false).unwrap();
        assert_eq!(unsafe { ro_base.read_volatile() }, 0x5a);
        let upgraded = unsafe {
            libc::mprotect(
                ro_base as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(upgraded, -1, "a read-only map must not become writable");
        // Sealed: nobody can shrink it under another process's mapping.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, -1);
    }

    #[test]
    fn seqpacket_passes_descriptors_and_reports_close() {
        let (a, b) = seqpacket_pair().unwrap();
        let event = eventfd().unwrap();
        send_message(a.as_raw_fd(), b"hello", Some(event.as_raw_fd())).unwrap();
        let mut buffer = [0u8; 16];
        match receive_message(b.as_raw_fd(), &mut buffer, true).unwrap() {
            Received::Message(5, Some(fd)) => {
                eventfd_signal(fd.as_raw_fd());
                assert!(eventfd_take(event.as_raw_fd()));
                assert!(!eventfd_take(event.as_raw_fd()));
            }
            _ => panic!("expected a message with a descriptor"),
        }
        assert!(matches!(
            receive_message(b.as_raw_fd(), &mut buffer, false).unwrap(),
            Received::Empty
        ));
        drop(a);
        assert!(matches!(
            receive_message(b.as_raw_fd(), &mut buffer, true).unwrap(),
            Received::Closed
        ));
    }
}
