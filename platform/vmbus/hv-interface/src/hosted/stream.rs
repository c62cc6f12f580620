//! Framed record I/O over a Unix stream socket, shared by the guest client
//! and the host. Reads are buffered so that a timeout never splits a record;
//! a header is validated before its body is waited for.

use crate::wire::{self, Header, HeaderError, HEADER_SIZE};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use std::vec::Vec;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// One received record: its kind and its body (length already checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: u32,
    pub body: Vec<u8>,
}

impl Record {
    /// The body as a fixed-size structure (its length was checked against
    /// the kind, so this fails only if the caller names the wrong type).
    pub fn parse<T: FromBytes>(&self) -> Option<T> {
        T::read_from_bytes(&self.body).ok()
    }
}

/// Why no record could be received.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection (cleanly, between records).
    Closed,
    /// The peer closed in the middle of a record.
    Truncated,
    /// The header was invalid: unknown kind or wrong length.
    BadHeader(HeaderError),
    Io(io::Error),
}

/// A Unix stream carrying transport records.
pub struct RecordStream {
    socket: UnixStream,
    buffer: Vec<u8>,
    eof: bool,
    /// A socket whose readability ends a `recv` wait early (see
    /// [`RecordStream::set_wake`]).
    wake: Option<UnixStream>,
}

impl RecordStream {
    pub fn new(socket: UnixStream) -> Self {
        RecordStream {
            socket,
            buffer: Vec::new(),
            eof: false,
            wake: None,
        }
    }

    /// From now on a byte written to `wake`'s peer ends a `recv` wait
    /// with `Ok(None)`, as a timeout does: another thread that changed
    /// what the receiver must do (the simulated host's operator raising an
    /// interrupt) need not wait for the timeout.
    pub fn set_wake(&mut self, wake: UnixStream) -> io::Result<()> {
        wake.set_nonblocking(true)?;
        self.wake = Some(wake);
        Ok(())
    }

    /// Reads what was written to the wake socket; whether anything was.
    fn drain_wake(&mut self) -> bool {
        let Some(wake) = self.wake.as_mut() else {
            return false;
        };
        let mut woken = false;
        let mut bytes = [0u8; 64];
        while let Ok(n) = wake.read(&mut bytes) {
            if n == 0 {
                break;
            }
            woken = true;
        }
        woken
    }

    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Sends one record with a fixed-size body.
    pub fn send<T: IntoBytes + Immutable>(&mut self, kind: u32, body: &T) -> io::Result<()> {
        self.send_bytes(kind, body.as_bytes())
    }

    /// Sends one record with the given body bytes.
    pub fn send_bytes(&mut self, kind: u32, body: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(HEADER_SIZE + body.len());
        record.extend_from_slice(
            Header {
                kind,
                length: body.len() as u32,
            }
            .as_bytes(),
        );
        record.extend_from_slice(body);
        self.send_raw(&record)
    }

    /// Writes raw bytes (tests use this to send malformed records).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.socket.write_all(bytes)
    }

    /// Takes one complete record out of the buffer, if there is one.
    fn take_buffered(&mut self) -> Result<Option<Record>, RecvError> {
        if self.buffer.len() < HEADER_SIZE {
            return Ok(None);
        }
        let header = Header::read_from_bytes(&self.buffer[..HEADER_SIZE]).expect("8 bytes");
        wire::check_header(header).map_err(RecvError::BadHeader)?;
        let total = HEADER_SIZE + header.length as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let body = self.buffer[HEADER_SIZE..total].to_vec();
        self.buffer.drain(..total);
        Ok(Some(Record {
            kind: header.kind,
            body,
        }))
    }

    /// Receives the next record, waiting at most `timeout` (`None`: forever).
    /// `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Record>, RecvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(record) = self.take_buffered()? {
                return Ok(Some(record));
            }
            if self.eof {
                return Err(if self.buffer.is_empty() {
                    RecvError::Closed
                } else {
                    RecvError::Truncated
                });
            }
            let wait = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let wake = self.wake.as_ref().map(|wake| wake.as_raw_fd());
            let (readable, woken) = wait_readable_or_woken(self.socket.as_raw_fd(), wake, wait)
                .map_err(RecvError::Io)?;
            if woken && self.drain_wake() {
                return Ok(None);
            }
            if !readable {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            match self.socket.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }
}

/// poll(2) for readability of `fd` and of `wake` (if any): whether each
/// is readable (hung up counts); both false on timeout.
fn wait_readable_or_woken(
    fd: RawFd,
    wake: Option<RawFd>,
    timeout: Option<Duration>,
) -> io::Result<(bool, bool)> {
    let timeout_ms: i32 = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as i32,
    };
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [pollfd(fd), pollfd(wake.unwrap_or(-1))];
    let count: libc::nfds_t = if wake.is_some() { 2 } else { 1 };
    loop {
        // SAFETY: `fds` holds `count` (at most 2) valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        return Ok((fds[0].revents != 0, fds[1].revents != 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{kind, MsrRead};

    #[test]
    fn a_wake_ends_the_wait_and_records_still_arrive() {
        let (a, b) = UnixStream::pair().unwrap();
        let (wake_tx, wake_rx) = UnixStream::pair().unwrap();
        let mut sender = RecordStream::new(a);
        let mut receiver = RecordStream::new(b);
        receiver.set_wake(wake_rx).unwrap();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            (&wake_tx).write_all(&[1]).unwrap();
            wake_tx
        });
        let start = Instant::now();
        assert!(receiver
            .recv(Some(Duration::from_secs(10)))
            .unwrap()
            .is_none());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        let _wake_tx = waker.join().unwrap();
        // The wake was taken: the next wait times out, then a record comes.
        assert!(receiver
            .recv(Some(Duration::from_millis(10)))
            .unwrap()
            .is_none());
        sender
            .send(
                kind::MSR_READ,
                &MsrRead {
                    msr: 0x4000_0083,
                    reserved: 0,
                },
            )
            .unwrap();
        let record = receiver.recv(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(record.map(|r| r.kind), Some(kind::MSR_READ));
    }

    #[test]
    fn records_survive_split_writes_and_bad_headers_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut sender = RecordStream::new(a);
        let mut receiver = RecordStream::new(b);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind::MSR_READ.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&0x4000_0083u32.to_le_bytes());
        sender.send_raw(&bytes).unwrap();
        assert!(receiver
            .recv(Some(Duration::from_millis(20)))
            .unwrap()
            .is_none());
        sender.send_raw(&[0, 0, 0, 0]).unwrap();
        let record = receiver.recv(None).unwrap().unwrap();
        assert_eq!(record.kind, kind::MSR_READ);
        assert_eq!(
            record.parse::<MsrRead>().unwrap(),
            MsrRead {
                msr: 0x4000_0083,
                reserved: 0
            }
        );
        sender.send_bytes(kind::MSR_READ, &[0u8; 12]).unwrap();
        assert!(matches!(
            receiver.recv(None),
            Err(RecvError::BadHeader(HeaderError::BadLength { .. }))
        ));
        drop(sender);
    }

    #[test]
    fn closed_and_truncated_are_distinguished() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut sender = RecordStream::new(a);
        let mut receiver = RecordStream::new(b);
        sender.send_raw(&kind::MSR_READ.to_le_bytes()).unwrap();
        drop(sender);
        assert!(matches!(receiver.recv(None), Err(RecvError::Truncated)));
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(
            RecordStream::new(b).recv(None),
            Err(RecvError::Closed)
        ));
    }
}
