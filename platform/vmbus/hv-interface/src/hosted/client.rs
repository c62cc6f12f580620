//! The guest end of the hosted transport: implements [`Hypervisor`] by
//! sending MSR and hypercall requests to the host process and waiting for
//! their replies; interrupts that arrive meanwhile are queued.

use super::stream::{Record, RecordStream, RecvError};
use crate::wire::{self, kind, HelloFixed, HelloReply, StatusReply, ValueReply};
use crate::{HvError, Hypervisor, Interrupt};
use std::collections::VecDeque;
use std::format;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::string::String;
use std::time::Duration;
use std::vec::Vec;
use zerocopy::IntoBytes;

/// The MSR through which the guest signals APIC end-of-interrupt
/// (`HV_X64_MSR_EOI`).
pub const APIC_EOI_MSR: u32 = 0x4000_0070;

/// Why the connection could not be set up.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    /// The host refused the HELLO with this status (see `wire::hello_status`).
    Refused(u32),
    /// The host answered with something other than a valid HELLO_REPLY.
    Protocol,
}

impl From<io::Error> for ConnectError {
    fn from(error: io::Error) -> Self {
        ConnectError::Io(error)
    }
}

/// The guest side of the hosted hypervisor transport.
pub struct HostedHypervisor {
    stream: RecordStream,
    interrupts: VecDeque<Interrupt>,
    /// Why the transport broke, once it has (every later call fails).
    broken: Option<String>,
}

impl HostedHypervisor {
    /// Connects to the host listening at `socket`, announcing the guest
    /// memory file `memory_path` of `memory_size` bytes (which the guest has
    /// created), and waits for the host's HELLO_REPLY.
    pub fn connect(
        socket: &Path,
        memory_path: &Path,
        memory_size: u64,
    ) -> Result<Self, ConnectError> {
        let socket = UnixStream::connect(socket)?;
        Self::handshake(socket, memory_path, memory_size)
    }

    /// Performs the handshake on an already connected socket.
    pub fn handshake(
        socket: UnixStream,
        memory_path: &Path,
        memory_size: u64,
    ) -> Result<Self, ConnectError> {
        use std::os::unix::ffi::OsStrExt;
        let path = memory_path.as_os_str().as_bytes();
        if path.is_empty() || path.len() > wire::MAX_PATH || path.contains(&0) {
            return Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "memory path must be 1..=4095 bytes without NUL",
            )));
        }
        let mut stream = RecordStream::new(socket);
        let mut body = Vec::new();
        body.extend_from_slice(
            HelloFixed {
                magic: wire::MAGIC,
                version: wire::VERSION,
                memory_size,
                vp_count: 1,
                path_length: path.len() as u32,
            }
            .as_bytes(),
        );
        body.extend_from_slice(path);
        stream.send_bytes(kind::HELLO, &body)?;
        let record = match stream.recv(None) {
            Ok(Some(record)) => record,
            _ => return Err(ConnectError::Protocol),
        };
        if record.kind != kind::HELLO_REPLY {
            return Err(ConnectError::Protocol);
        }
        let reply: HelloReply = record.parse().ok_or(ConnectError::Protocol)?;
        if reply.magic != wire::MAGIC || reply.version != wire::VERSION || reply.reserved != 0 {
            return Err(ConnectError::Protocol);
        }
        if reply.status != wire::hello_status::OK {
            return Err(ConnectError::Refused(reply.status));
        }
        Ok(HostedHypervisor {
            stream,
            interrupts: VecDeque::new(),
            broken: None,
        })
    }

    /// The socket's descriptor, for callers that poll several sources.
    /// Readable does not imply an interrupt (a partial record may be
    /// waiting); call `wait_interrupt(Some(0))` to find out.
    pub fn raw_fd(&self) -> RawFd {
        self.stream.socket().as_raw_fd()
    }

    /// Interrupts received but not yet returned by `wait_interrupt`.
    pub fn queued_interrupts(&self) -> usize {
        self.interrupts.len()
    }

    /// Why the transport broke (the host closed the connection, sent
    /// PROTOCOL_ERROR, sent a record it should not have), if it has.
    pub fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn fail(&mut self, why: impl Into<String>) -> HvError {
        if self.broken.is_none() {
            self.broken = Some(why.into());
        }
        HvError::Transport
    }

    fn receive_failed(&mut self, error: RecvError) -> HvError {
        match error {
            RecvError::Closed => self.fail("the host closed the connection"),
            RecvError::Truncated => self.fail("the host closed the connection inside a record"),
            RecvError::BadHeader(error) => {
                self.fail(format!("the host sent a bad record header: {error:?}"))
            }
            RecvError::Io(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                self.fail("the host closed the connection (reset)")
            }
            RecvError::Io(error) => {
                self.fail(format!("the connection to the host failed: {error}"))
            }
        }
    }

    /// Handles an asynchronous record; returns it back if it is not one.
    fn absorb(&mut self, record: Record) -> Result<Option<Record>, HvError> {
        match record.kind {
            kind::INTERRUPT => {
                let Some(body) = record.parse::<wire::InterruptRecord>() else {
                    return Err(self.fail("the host sent a malformed INTERRUPT"));
                };
                if body.reserved != 0 || body.vector > 0xFF {
                    return Err(self.fail("the host sent a malformed INTERRUPT"));
                }
                self.interrupts.push_back(Interrupt {
                    vector: body.vector as u8,
                });
                Ok(None)
            }
            kind::PROTOCOL_ERROR => {
                let code = record
                    .parse::<wire::ProtocolError>()
                    .map_or(0, |error| error.code);
                Err(self.fail(format!("the host sent PROTOCOL_ERROR {code}")))
            }
            _ => Ok(Some(record)),
        }
    }

    fn request(&mut self, kind: u32, body: &[u8], reply_kind: u32) -> Result<Record, HvError> {
        if self.broken.is_some() {
            return Err(HvError::Transport);
        }
        if let Err(error) = self.stream.send_bytes(kind, body) {
            return Err(self.fail(format!("sending to the host failed: {error}")));
        }
        loop {
            let record = match self.stream.recv(None) {
                Ok(Some(record)) => record,
                Ok(None) => return Err(self.fail("no reply from the host")),
                Err(error) => return Err(self.receive_failed(error)),
            };
            if let Some(record) = self.absorb(record)? {
                if record.kind != reply_kind {
                    return Err(self.fail(format!(
                        "the host answered with record kind {:#x} where {reply_kind:#x} was due",
                        record.kind
                    )));
                }
                return Ok(record);
            }
        }
    }

    fn exception(&mut self, exception: u32, reserved: u32) -> Result<(), HvError> {
        if reserved != 0 {
            return Err(self.fail("the host set a reserved field of a reply"));
        }
        match exception {
            wire::exception::NONE => Ok(()),
            wire::exception::GENERAL_PROTECTION => Err(HvError::GeneralProtection),
            wire::exception::INVALID_OPCODE => Err(HvError::InvalidOpcode),
            other => Err(self.fail(format!("the host answered with unknown exception {other}"))),
        }
    }
}

impl Hypervisor for HostedHypervisor {
    fn msr_read(&mut self, msr: u32) -> Result<u64, HvError> {
        let body = wire::MsrRead { msr, reserved: 0 };
        let record = self.request(kind::MSR_READ, body.as_bytes(), kind::MSR_READ_REPLY)?;
        let reply: ValueReply = record.parse().ok_or(HvError::Transport)?;
        self.exception(reply.exception, reply.reserved)?;
        Ok(reply.value)
    }

    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), HvError> {
        let body = wire::MsrWrite {
            msr,
            reserved: 0,
            value,
        };
        let record = self.request(kind::MSR_WRITE, body.as_bytes(), kind::MSR_WRITE_REPLY)?;
        let reply: StatusReply = record.parse().ok_or(HvError::Transport)?;
        self.exception(reply.exception, reply.reserved)
    }

    fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, HvError> {
        let body = wire::Hypercall {
            control,
            input,
            output,
        };
        let record = self.request(kind::HYPERCALL, body.as_bytes(), kind::HYPERCALL_REPLY)?;
        let reply: ValueReply = record.parse().ok_or(HvError::Transport)?;
        self.exception(reply.exception, reply.reserved)?;
        Ok(reply.value)
    }

    fn wait_interrupt(&mut self, timeout_ns: Option<u64>) -> Result<Option<Interrupt>, HvError> {
        if let Some(interrupt) = self.interrupts.pop_front() {
            return Ok(Some(interrupt));
        }
        if self.broken.is_some() {
            return Err(HvError::Transport);
        }
        let timeout = timeout_ns.map(Duration::from_nanos);
        loop {
            let record = match self.stream.recv(timeout) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(None),
                Err(error) => return Err(self.receive_failed(error)),
            };
            // Only INTERRUPT or PROTOCOL_ERROR may arrive unasked.
            if let Some(record) = self.absorb(record)? {
                return Err(self.fail(format!(
                    "the host sent record kind {:#x} unasked",
                    record.kind
                )));
            }
            if let Some(interrupt) = self.interrupts.pop_front() {
                return Ok(Some(interrupt));
            }
        }
    }

    fn end_of_interrupt(&mut self) -> Result<(), HvError> {
        self.msr_write(APIC_EOI_MSR, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HelloReply, InterruptRecord, MsrRead, ProtocolError};
    use zerocopy::{FromBytes, Immutable};

    /// A fake host on the other end of a socket pair: answers HELLO, then
    /// runs `script` on its record stream.
    fn with_fake_host(
        script: impl FnOnce(&mut RecordStream) + Send + 'static,
    ) -> (HostedHypervisor, std::thread::JoinHandle<()>) {
        let (guest_end, host_end) = UnixStream::pair().unwrap();
        let host = std::thread::spawn(move || {
            let mut stream = RecordStream::new(host_end);
            let hello = stream.recv(None).unwrap().unwrap();
            assert_eq!(hello.kind, kind::HELLO);
            let fixed: HelloFixed = HelloFixed::read_from_prefix(&hello.body).unwrap().0;
            assert_eq!(fixed.magic, wire::MAGIC);
            assert_eq!(fixed.memory_size, 8192);
            assert_eq!(&hello.body[wire::HELLO_FIXED..], b"/tmp/guest.mem");
            stream
                .send(
                    kind::HELLO_REPLY,
                    &HelloReply {
                        magic: wire::MAGIC,
                        version: wire::VERSION,
                        status: 0,
                        reserved: 0,
                    },
                )
                .unwrap();
            script(&mut stream);
        });
        let guest =
            HostedHypervisor::handshake(guest_end, Path::new("/tmp/guest.mem"), 8192).unwrap();
        (guest, host)
    }

    /// A fake host that answers the first request, whatever it is, with
    /// `reply` (of kind `reply_kind`).
    fn host_answering_once<T: IntoBytes + Immutable + Send + 'static>(
        reply_kind: u32,
        reply: T,
    ) -> (HostedHypervisor, std::thread::JoinHandle<()>) {
        with_fake_host(move |stream| {
            stream.recv(None).unwrap().unwrap();
            stream.send(reply_kind, &reply).unwrap();
        })
    }

    const STATUS_OK: StatusReply = StatusReply {
        exception: 0,
        reserved: 0,
    };

    #[test]
    fn interrupts_between_request_and_reply_are_queued() {
        let (mut guest, host) = with_fake_host(|stream| {
            let request = stream.recv(None).unwrap().unwrap();
            assert_eq!(request.kind, kind::MSR_READ);
            let body: MsrRead = request.parse().unwrap();
            assert_eq!(body.msr, 0x4000_0081);
            for vector in [0x30, 0x31] {
                stream
                    .send(
                        kind::INTERRUPT,
                        &InterruptRecord {
                            vector,
                            reserved: 0,
                        },
                    )
                    .unwrap();
            }
            stream
                .send(
                    kind::MSR_READ_REPLY,
                    &ValueReply {
                        exception: 0,
                        reserved: 0,
                        value: 1,
                    },
                )
                .unwrap();
            // Then a #GP for the next read.
            stream.recv(None).unwrap().unwrap();
            stream
                .send(
                    kind::MSR_READ_REPLY,
                    &ValueReply {
                        exception: wire::exception::GENERAL_PROTECTION,
                        reserved: 0,
                        value: 0,
                    },
                )
                .unwrap();
        });
        assert_eq!(guest.msr_read(0x4000_0081), Ok(1));
        assert_eq!(guest.queued_interrupts(), 2);
        assert_eq!(
            guest.wait_interrupt(Some(0)),
            Ok(Some(Interrupt { vector: 0x30 }))
        );
        assert_eq!(
            guest.wait_interrupt(Some(0)),
            Ok(Some(Interrupt { vector: 0x31 }))
        );
        assert_eq!(guest.msr_read(0x1234), Err(HvError::GeneralProtection));
        host.join().unwrap();
        // The host is gone: waiting reports the broken transport, and why.
        assert_eq!(guest.failure(), None);
        assert_eq!(guest.wait_interrupt(Some(0)), Err(HvError::Transport));
        assert_eq!(guest.failure(), Some("the host closed the connection"));
    }

    #[test]
    fn wrong_reply_kind_or_protocol_error_breaks_the_transport() {
        // An MSR_WRITE_REPLY to an MSR_READ.
        let (mut guest, host) = host_answering_once(kind::MSR_WRITE_REPLY, STATUS_OK);
        assert_eq!(guest.msr_read(0x4000_0081), Err(HvError::Transport));
        assert!(guest.failure().unwrap().contains("where 0x8002 was due"));
        // Once broken, every call fails without touching the socket.
        assert_eq!(guest.msr_write(0x4000_0084, 0), Err(HvError::Transport));
        host.join().unwrap();

        let protocol_error = ProtocolError {
            code: wire::protocol_error::RESERVED_NOT_ZERO,
            reserved: 0,
        };
        let (mut guest, host) = host_answering_once(kind::PROTOCOL_ERROR, protocol_error);
        assert_eq!(guest.hypercall(0x5C, 0, 0), Err(HvError::Transport));
        assert_eq!(guest.failure(), Some("the host sent PROTOCOL_ERROR 3"));
        host.join().unwrap();

        // A reply with a non-zero reserved field is not trusted either.
        let reserved_set = ValueReply {
            exception: 0,
            reserved: 7,
            value: 0,
        };
        let (mut guest, host) = host_answering_once(kind::HYPERCALL_REPLY, reserved_set);
        assert_eq!(guest.hypercall(0x5C, 0, 0), Err(HvError::Transport));
        host.join().unwrap();
    }

    #[test]
    fn eoi_is_a_write_of_the_apic_eoi_msr() {
        let (mut guest, host) = with_fake_host(|stream| {
            let request = stream.recv(None).unwrap().unwrap();
            assert_eq!(request.kind, kind::MSR_WRITE);
            let body: wire::MsrWrite = request.parse().unwrap();
            assert_eq!((body.msr, body.value), (APIC_EOI_MSR, 0));
            stream.send(kind::MSR_WRITE_REPLY, &STATUS_OK).unwrap();
        });
        assert_eq!(guest.end_of_interrupt(), Ok(()));
        host.join().unwrap();
    }
}
