//! Thin, checked wrappers over the Linux calls the runtime uses: memfd,
//! mmap, eventfd, SOCK_SEQPACKET socket pairs with fd passing, poll and
//! pidfd, through rustix. Every wrapper returns `io::Result`; nothing here
//! panics on an error from the OS.

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};
use rustix::io::{Errno, FdFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The descriptor callers name by number, as rustix wants it. Callers pass
/// descriptors of `OwnedFd`s they keep open across the call; a negative
/// number is refused rather than borrowed.
fn borrow<'a>(fd: RawFd) -> io::Result<BorrowedFd<'a>> {
    if fd < 0 {
        return Err(Errno::BADF.into());
    }
    // SAFETY: non-negative, and every caller holds the descriptor open for
    // the duration of the call it is borrowed for (see above).
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Retry a call the kernel interrupted with a signal.
fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// A sealed shared-memory file of `size` bytes (it can be neither grown
/// nor shrunk, so no process can make another's mapping fault with
/// SIGBUS by truncating it).
pub fn memfd(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        name.replace('\0', "_"),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// A new open file description of the same file, opened read-only. A
/// mapping made from it can never be made writable (mprotect refuses),
/// which is what makes a read-only map read-only.
pub fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
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
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let span = if double { size * 2 } else { size };
    let total = span + 2 * GUARD;
    // Reserve guards and span first so both halves land back to back.
    // SAFETY: a fresh private mapping at an address the kernel picks
    // replaces nothing.
    let reserved = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            total,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    // SAFETY: GUARD < total: still inside the reservation.
    let base = unsafe { reserved.cast::<u8>().add(GUARD) };
    let halves = if double { 2 } else { 1 };
    for half in 0..halves {
        // SAFETY: half * size + size <= span: inside the reservation.
        let at = unsafe { base.add(half * size) };
        // SAFETY: MAP_FIXED replaces only pages of the reservation made
        // above, which nothing else uses.
        let mapped = unsafe {
            rustix::mm::mmap(
                at.cast(),
                size,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                offset,
            )
        };
        if let Err(error) = mapped {
            // SAFETY: unmaps exactly the reservation, which nothing uses.
            let _ = unsafe { rustix::mm::munmap(reserved, total) };
            return Err(error.into());
        }
    }
    Ok(base)
}

/// A non-blocking eventfd (a notification: writers add, the reader takes
/// the count and resets it).
pub fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Signal an eventfd. Never blocks: if the counter is saturated the
/// notification is already pending, which is all a notification says.
pub fn eventfd_signal(fd: RawFd) {
    if let Ok(fd) = borrow(fd) {
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }
}

/// Take an eventfd's pending count; true if it was signalled.
pub fn eventfd_take(fd: RawFd) -> bool {
    let mut value = [0u8; 8];
    let Ok(fd) = borrow(fd) else {
        return false;
    };
    matches!(rustix::io::read(fd, &mut value), Ok(8)) && u64::from_ne_bytes(value) > 0
}

/// Write all of `bytes`, past short and interrupted writes; stop quietly
/// at an error (the console is best effort: a gone reader loses text, it
/// does not stop the component).
pub fn write_all(fd: RawFd, mut bytes: &[u8]) {
    let Ok(fd) = borrow(fd) else {
        return;
    };
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return,
            Ok(written) => bytes = &bytes[written..],
            Err(Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// A connected pair of SOCK_SEQPACKET sockets: message boundaries are kept
/// and a peer's death is seen as end of file.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Send one message, with at most one file descriptor attached.
pub fn send_message(socket: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let socket = borrow(socket)?;
    let attached = match fd {
        Some(fd) => Some(borrow(fd)?),
        None => None,
    };
    let attached = attached.as_slice();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !attached.is_empty() && !control.push(SendAncillaryMessage::ScmRights(attached)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    retry(|| {
        rustix::net::sendmsg(
            socket,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
    })?;
    Ok(())
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
    let socket = borrow(socket)?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC
        | if blocking {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
    let received = match retry(|| {
        rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buffer)], &mut control, flags)
    }) {
        Ok(received) => received,
        Err(Errno::AGAIN) => return Ok(Received::Empty),
        Err(Errno::CONNRESET) => return Ok(Received::Closed),
        Err(error) => return Err(error.into()),
    };
    // Take every descriptor that arrived so none leaks; keep the first.
    let mut first: Option<OwnedFd> = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                if first.is_none() {
                    first = Some(fd);
                }
            }
        }
    }
    let truncated = received.flags.contains(ReturnFlags::TRUNC);
    if received.bytes == 0 && !truncated && first.is_none() {
        // A zero-length read on a SEQPACKET socket is end of file; our
        // protocols never send empty messages.
        return Ok(Received::Closed);
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message longer than the receive buffer",
        ));
    }
    Ok(Received::Message(received.bytes, first))
}

/// Poll `fds` (events already set) until one is ready or `timeout` passes
/// (`None`: wait indefinitely). Returns the number ready (0 on timeout).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut polled = Vec::with_capacity(fds.len());
    for fd in fds.iter() {
        polled.push(PollFd::from_borrowed_fd(
            borrow(fd.fd)?,
            PollFlags::from_bits_retain(fd.events as _),
        ));
    }
    let ready = loop {
        let left = deadline.map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up so a short wait does not become a busy loop.
            let millis = left.as_micros().div_ceil(1000) as u64;
            rustix::time::Timespec {
                tv_sec: (millis / 1000) as _,
                tv_nsec: ((millis % 1000) * 1_000_000) as _,
            }
        });
        match rustix::event::poll(&mut polled, left.as_ref()) {
            Ok(ready) => break ready,
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    };
    for (fd, polled) in fds.iter_mut().zip(&polled) {
        fd.revents = polled.revents().bits() as _;
    }
    Ok(ready)
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
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from(Errno::SRCH))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Send `signal` (a named one, e.g. `libc::SIGKILL`) to process `pid`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from(Errno::SRCH))?;
    let signal = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::from(Errno::INVAL))?;
    Ok(rustix::process::kill_process(pid, signal)?)
}

/// Have the kernel SIGKILL this process when its parent dies. Called
/// between fork and exec: a plain system call, async-signal-safe.
pub fn die_with_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        rustix::process::Signal::KILL,
    ))?)
}

/// Nanoseconds on CLOCK_MONOTONIC.
/// The processor's time-stamp counter (RDTSC), the one every process on
/// this machine reads: the hosted transport's reference TSC page scales it
/// (docs/hypervisor-transport.md, 5.10). `None` off x86_64.
pub fn time_stamp_counter() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no memory effects; Linux lets user mode use it.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(std::fs::File, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((std::fs::File::from(read), write))
}

/// Clear close-on-exec so a spawned component inherits `fd`. Called
/// between fork and exec: only async-signal-safe calls (rustix's are
/// plain system calls).
pub fn inherit(fd: RawFd) -> io::Result<()> {
    let fd = borrow(fd)?;
    let flags = rustix::io::fcntl_getfd(fd)?;
    rustix::io::fcntl_setfd(fd, flags - FdFlags::CLOEXEC)?;
    Ok(())
}

pub fn as_raw(fd: &OwnedFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_map_aliases_and_read_only_reopen_refuses_write_upgrade() {
        let fd = memfd("test", 4096).unwrap();
        let base = map_shared(&fd, 0, 4096, true, true).unwrap();
        // SAFETY: a writable double mapping of 4096 bytes: 8192 valid.
        unsafe {
            base.write_volatile(0x5a);
            assert_eq!(base.add(4096).read_volatile(), 0x5a);
            base.add(4096 + 7).write_volatile(0x11);
            assert_eq!(base.add(7).read_volatile(), 0x11);
        }
        let read_only = reopen_read_only(&fd).unwrap();
        let ro_base = map_shared(&read_only, 0, 4096, false, false).unwrap();
        // SAFETY: mapped readable just above.
        assert_eq!(unsafe { ro_base.read_volatile() }, 0x5a);
        // SAFETY: changes only the protection of our own mapping (and must
        // be refused).
        let upgraded = unsafe {
            rustix::mm::mprotect(
                ro_base.cast(),
                4096,
                rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
            )
        };
        assert!(
            upgraded.is_err(),
            "a read-only map must not become writable"
        );
        // Sealed: nobody can shrink it under another process's mapping.
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
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
