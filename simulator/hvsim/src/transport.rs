//! The host end of the hosted hypervisor transport
//! (`docs/hypervisor-transport.md`): accept one guest on a Unix socket,
//! check its HELLO and map the guest memory file it names, then answer its
//! MSR and hypercall records in order and push interrupts as the machine
//! raises them. Any malformed record ends the connection with a
//! PROTOCOL_ERROR record.

use crate::synic::Exception;
use hv_interface::hosted::{MappedGuestMemory, Record, RecordStream, RecvError};
use hv_interface::wire::{
    self, exception, hello_status, kind, protocol_error, HelloFixed, HelloReply, StatusReply,
    ValueReply, HELLO_FIXED,
};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zerocopy::FromBytes;

/// What the transport drives: the simulated machine.
pub trait Machine {
    fn msr_read(&mut self, msr: u32) -> Result<u64, Exception>;
    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), Exception>;
    fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, Exception>;
    /// The next interrupt vector to deliver, if any.
    fn take_interrupt(&mut self) -> Option<u8>;
    /// Background work (server replies, timers); `now_ns` is monotonic.
    fn step(&mut self, now_ns: u64);
    /// The clock moved to `now_ns` (same clock as `step`): the reference
    /// counter reads it and due synthetic timers expire. Called before
    /// each guest request is handled.
    fn advance_clock(&mut self, _now_ns: u64) {}
    /// When (same clock) the machine next has timed work of its own (a
    /// synthetic timer), if any: the serve loop wakes for it.
    fn next_wakeup_ns(&self) -> Option<u64> {
        None
    }
    /// A new (scale, offset) pair for the reference TSC page (5.10).
    fn set_tsc_clock(&mut self, _clock: hyperv_defs::reference_tsc::TscClock) {}
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The guest closed the socket between records.
    GuestClosed,
    /// The guest broke the protocol; a PROTOCOL_ERROR with this code was sent.
    ProtocolError(u32),
    /// `stop` was set.
    Stopped,
    Io(io::Error),
}

/// The guest's announced memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub memory_size: u64,
    pub memory_path: PathBuf,
}

/// A guest connection after a successful handshake.
pub struct Connection {
    stream: RecordStream,
    pub hello: Hello,
    started: Instant,
    /// The TSC's rate against `started`, measured as the session runs
    /// (`crate::tsc_clock`; docs/hypervisor-transport.md 5.10).
    tsc_calibration: crate::tsc_clock::TscCalibration,
}

fn send_protocol_error(stream: &mut RecordStream, code: u32) {
    let _ = stream.send(
        kind::PROTOCOL_ERROR,
        &wire::ProtocolError { code, reserved: 0 },
    );
}

fn hello_reply(stream: &mut RecordStream, status: u32) -> io::Result<()> {
    stream.send(
        kind::HELLO_REPLY,
        &HelloReply {
            magic: wire::MAGIC,
            version: wire::VERSION,
            status,
            reserved: 0,
        },
    )
}

/// Accepts one guest on `listener`, performs the handshake and maps its
/// memory. A refused HELLO is answered (HELLO_REPLY with a non-zero status
/// or PROTOCOL_ERROR) and returned as an error.
pub fn accept(listener: &UnixListener) -> io::Result<(Connection, MappedGuestMemory)> {
    let (socket, _) = listener.accept()?;
    let mut stream = RecordStream::new(socket);
    let refuse = |stream: &mut RecordStream, status: u32, why: &str| {
        let _ = hello_reply(stream, status);
        io::Error::new(io::ErrorKind::InvalidData, why.to_string())
    };
    let record = match stream.recv(Some(Duration::from_secs(10))) {
        Ok(Some(record)) if record.kind == kind::HELLO => record,
        Ok(Some(_)) => {
            send_protocol_error(&mut stream, protocol_error::NOT_EXPECTED_NOW);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "first record is not HELLO",
            ));
        }
        Ok(None) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no HELLO")),
        Err(RecvError::BadHeader(error)) => {
            send_protocol_error(&mut stream, error.protocol_error_code());
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad header"));
        }
        Err(_) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "guest left")),
    };
    let fixed = HelloFixed::read_from_bytes(&record.body[..HELLO_FIXED]).expect("checked length");
    let path_bytes = &record.body[HELLO_FIXED..];
    if fixed.path_length as usize != path_bytes.len() || path_bytes.contains(&0) {
        send_protocol_error(&mut stream, protocol_error::BAD_HELLO);
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad HELLO path"));
    }
    if fixed.magic != wire::MAGIC {
        return Err(refuse(&mut stream, hello_status::BAD_MAGIC, "bad magic"));
    }
    if fixed.version != wire::VERSION {
        return Err(refuse(
            &mut stream,
            hello_status::UNSUPPORTED_VERSION,
            "bad version",
        ));
    }
    if fixed.vp_count != 1 {
        return Err(refuse(
            &mut stream,
            hello_status::BAD_VP_COUNT,
            "vp_count must be 1",
        ));
    }
    if fixed.memory_size == 0 || !fixed.memory_size.is_multiple_of(4096) {
        return Err(refuse(
            &mut stream,
            hello_status::BAD_MEMORY_SIZE,
            "bad memory size",
        ));
    }
    let path = Path::new(OsStr::from_bytes(path_bytes));
    let memory = match MappedGuestMemory::open(path, fixed.memory_size) {
        Ok(memory) => memory,
        Err(_) => {
            return Err(refuse(
                &mut stream,
                hello_status::MEMORY_FILE_UNUSABLE,
                "cannot map the memory file",
            ))
        }
    };
    hello_reply(&mut stream, hello_status::OK)?;
    Ok((
        Connection {
            stream,
            hello: Hello {
                memory_size: fixed.memory_size,
                memory_path: path.to_path_buf(),
            },
            started: Instant::now(),
            tsc_calibration: Default::default(),
        },
        memory,
    ))
}

fn exception_code(result: Result<(), Exception>) -> u32 {
    match result {
        Ok(()) => exception::NONE,
        Err(Exception::GeneralProtection) => exception::GENERAL_PROTECTION,
        Err(Exception::InvalidOpcode) => exception::INVALID_OPCODE,
    }
}

impl Connection {
    /// A byte written to `wake`'s peer makes [`Connection::serve`] run the
    /// machine and send its interrupts now instead of at the next tick:
    /// the operator thread's keystrokes and faults reach the guest at
    /// once, as a real host's do.
    pub fn set_wake(&mut self, wake: std::os::unix::net::UnixStream) -> io::Result<()> {
        self.stream.set_wake(wake)
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Read the TSC with the clock; publish a new pair when the
    /// measurement has one.
    fn update_tsc_clock<S: Machine>(&mut self, machine: &mut S) {
        let Some(before) = hosted_runtime::sys::time_stamp_counter() else {
            return;
        };
        let now = self.now_ns();
        let Some(after) = hosted_runtime::sys::time_stamp_counter() else {
            return;
        };
        if let Some(clock) = self.tsc_calibration.observe_within(before, after, 0, now) {
            machine.set_tsc_clock(clock);
        }
    }

    /// Serves the guest until it leaves, breaks the protocol or `stop` is
    /// set. The machine is locked only while one record is handled, so an
    /// operator thread can drive it meanwhile. `tick` bounds how long
    /// background work waits when the guest is quiet.
    pub fn serve<S: Machine>(
        &mut self,
        machine: &Mutex<S>,
        stop: &AtomicBool,
        tick: Duration,
    ) -> SessionEnd {
        loop {
            if stop.load(Ordering::SeqCst) {
                return SessionEnd::Stopped;
            }
            {
                let mut machine = machine.lock().unwrap_or_else(|e| e.into_inner());
                machine.step(self.now_ns());
                self.update_tsc_clock(&mut *machine);
                if let Err(error) = self.flush_interrupts(&mut *machine) {
                    return SessionEnd::Io(error);
                }
            }
            // Wake for the earliest synthetic timer even when the guest is
            // quiet, not only at the next tick.
            let wait = {
                let machine = machine.lock().unwrap_or_else(|e| e.into_inner());
                match machine.next_wakeup_ns() {
                    Some(due) => {
                        let until = Duration::from_nanos(due.saturating_sub(self.now_ns()));
                        tick.min(until.max(Duration::from_micros(50)))
                    }
                    None => tick,
                }
            };
            let record = match self.stream.recv(Some(wait)) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(RecvError::Closed) => return SessionEnd::GuestClosed,
                Err(RecvError::Truncated) => return SessionEnd::GuestClosed,
                Err(RecvError::BadHeader(error)) => {
                    let code = error.protocol_error_code();
                    send_protocol_error(&mut self.stream, code);
                    return SessionEnd::ProtocolError(code);
                }
                Err(RecvError::Io(error)) => return SessionEnd::Io(error),
            };
            let mut machine = machine.lock().unwrap_or_else(|e| e.into_inner());
            machine.advance_clock(self.now_ns());
            self.update_tsc_clock(&mut *machine);
            if let Err(code) = self.handle(&mut *machine, &record) {
                send_protocol_error(&mut self.stream, code);
                return SessionEnd::ProtocolError(code);
            }
            let now = self.now_ns();
            machine.step(now);
            if let Err(error) = self.flush_interrupts(&mut *machine) {
                return SessionEnd::Io(error);
            }
        }
    }

    fn flush_interrupts<S: Machine>(&mut self, machine: &mut S) -> io::Result<()> {
        while let Some(vector) = machine.take_interrupt() {
            self.stream.send(
                kind::INTERRUPT,
                &wire::InterruptRecord {
                    vector: vector as u32,
                    reserved: 0,
                },
            )?;
        }
        Ok(())
    }

    /// Handles one guest record; `Err(code)` is a protocol violation.
    /// Interrupts the request raised go out before its reply (transport
    /// rule 4), as a real vCPU takes them right after the instruction.
    fn handle<S: Machine>(&mut self, machine: &mut S, record: &Record) -> Result<(), u32> {
        let sent = match record.kind {
            kind::MSR_READ => {
                let body: wire::MsrRead = record.parse().ok_or(protocol_error::BAD_LENGTH)?;
                if body.reserved != 0 {
                    return Err(protocol_error::RESERVED_NOT_ZERO);
                }
                let result = machine.msr_read(body.msr);
                let _ = self.flush_interrupts(machine);
                let reply = ValueReply {
                    exception: exception_code(result.map(|_| ())),
                    reserved: 0,
                    value: result.unwrap_or(0),
                };
                self.stream.send(kind::MSR_READ_REPLY, &reply)
            }
            kind::MSR_WRITE => {
                let body: wire::MsrWrite = record.parse().ok_or(protocol_error::BAD_LENGTH)?;
                if body.reserved != 0 {
                    return Err(protocol_error::RESERVED_NOT_ZERO);
                }
                let result = machine.msr_write(body.msr, body.value);
                let _ = self.flush_interrupts(machine);
                self.stream.send(
                    kind::MSR_WRITE_REPLY,
                    &StatusReply {
                        exception: exception_code(result),
                        reserved: 0,
                    },
                )
            }
            kind::HYPERCALL => {
                let body: wire::Hypercall = record.parse().ok_or(protocol_error::BAD_LENGTH)?;
                let result = machine.hypercall(body.control, body.input, body.output);
                let _ = self.flush_interrupts(machine);
                self.stream.send(
                    kind::HYPERCALL_REPLY,
                    &ValueReply {
                        exception: exception_code(result.map(|_| ())),
                        reserved: 0,
                        value: result.unwrap_or(0),
                    },
                )
            }
            _ => return Err(protocol_error::NOT_EXPECTED_NOW),
        };
        // A failed send means the guest is gone; the next receive sees it.
        let _ = sent;
        Ok(())
    }
}
