//! The simulated Hyper-V host, hosted.
//!
//! In the seL4 image the simulated host is a component (`simulated_host =
//! true` in `system.toml`): `synic` calls it for MSR accesses and
//! hypercalls and it notifies `synic` for the synic interrupt. Hosted, the
//! host is its own process on the documented hypervisor transport
//! (`docs/hypervisor-transport.md`), and this bridge stands in the host
//! component's place: it plays that component's channel ends, turning each
//! `vmbus_ipc::hypervisor` call into the transport's request and each
//! INTERRUPT record into a notification. Guest memory is the launcher's
//! guest-memory file (host-visible regions, GPA = offset), named to the
//! host in HELLO by a `/proc/<launcher>/fd/<n>` path. The host's stdin
//! is the operator's ([`HostConsole`]): a test writes a command and reads
//! the one line the host answers on stdout.
//!
//! Trusts: the host process only as far as the transport client checks
//! it; a broken transport ends the bridge (callers then see
//! `ServerFaulted`). Writes: nothing but the transport, the host's
//! output lines and the operator commands it is given.

use crate::endpoint::{Endpoint, Event};
use crate::sys;
use component_api::{decode, encode_reply, Env, Refusal, MAX_MESSAGE};
use hv_interface::hosted::HostedHypervisor;
use hv_interface::{HvError, Hypervisor};
use std::io::Write;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use system_layout::ChannelKind;
use vmbus_ipc::hypervisor::{Reply, Request};

/// How long the host process may take to start listening.
const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// Where output lines of the host process go (the launcher's sink).
pub type LineSink = Arc<dyn Fn(String) + Send + Sync>;

static SESSION: AtomicU32 = AtomicU32::new(0);

/// The operator's end of the host process: its stdin, and the lines it
/// writes on stdout (one answer per command, `docs/hvsim.md`). The lines
/// also appear in the system's output as `[name] ...`.
pub struct HostConsole {
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl HostConsole {
    /// Send one operator command and wait at most `timeout` for its answer
    /// (the next stdout line; older unread lines are dropped first).
    pub fn command(&mut self, line: &str, timeout: Duration) -> io::Result<String> {
        while self.answers.try_recv().is_ok() {}
        self.stdin
            .write_all(format!("{}\n", line.trim_end()).as_bytes())?;
        self.stdin.flush()?;
        match self.answers.recv_timeout(timeout) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the simulated host did not answer {line:?}"),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the simulated host has ended",
            )),
        }
    }
}

/// Start the host `program` (`program --socket PATH ARGS..`), connect to
/// it as the guest over `guest_memory`, and serve `endpoint` (the host
/// component's ends) from a thread until the system ends. Returns the
/// thread and the operator's console.
pub fn start(
    endpoint: Endpoint,
    program: &Path,
    args: &[String],
    guest_memory: (PathBuf, u64),
    sink: LineSink,
) -> io::Result<(JoinHandle<()>, HostConsole)> {
    let folder = std::env::temp_dir().join(format!(
        "hosted-{}-{}",
        std::process::id(),
        SESSION.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&folder)?;
    let socket = folder.join("host.sock");
    let mut command = Command::new(program);
    command
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Safety: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(sys::die_with_parent);
    }
    let mut child = command
        .spawn()
        .map_err(|e| io::Error::other(format!("cannot start {}: {e}", program.display())))?;
    let connected = connect(&mut child, &socket).and_then(|stream| {
        HostedHypervisor::handshake(stream, &guest_memory.0, guest_memory.1)
            .map_err(|e| io::Error::other(format!("hypervisor handshake failed: {e:?}")))
    });
    let hypervisor = match connected {
        Ok(hypervisor) => hypervisor,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&folder);
            return Err(error);
        }
    };
    let (answer_sender, answers) = std::sync::mpsc::channel();
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the simulated host has no stdin"))?;
    let bridge = Bridge {
        endpoint,
        hypervisor,
        child,
        folder,
        sink,
        answers: answer_sender,
        partial: [Vec::new(), Vec::new()],
    };
    let thread = std::thread::Builder::new()
        .name("hosted-simulated-host".into())
        .spawn(move || bridge.run())?;
    Ok((thread, HostConsole { stdin, answers }))
}

/// Connect to the host's socket once it listens. The host binds it after
/// it starts; until then connecting fails, and we wait for a sign of life
/// (output or exit) for a few milliseconds before trying again, within a
/// bound.
fn connect(child: &mut Child, socket: &Path) -> io::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_BOUND;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(error) => return Err(error),
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the simulated host exited before listening: {status}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other("the simulated host never listened"));
        }
        let pid = sys::pidfd_open(child.id())?;
        let mut wait = [sys::pollfd(pid.as_raw_fd())];
        sys::poll(&mut wait, Some(Duration::from_millis(2)))?;
    }
}

struct Bridge {
    endpoint: Endpoint,
    hypervisor: HostedHypervisor,
    child: Child,
    folder: PathBuf,
    sink: LineSink,
    /// stdout lines, for the operator's console.
    answers: Sender<String>,
    partial: [Vec<u8>; 2],
}

impl Bridge {
    fn run(mut self) {
        let name = self.endpoint.name().to_string();
        let interrupt_ends: Vec<component_api::Channel> = self
            .endpoint
            .layout()
            .channels
            .iter()
            .filter(|c| c.kind == ChannelKind::Notify)
            .map(|c| component_api::Channel(c.id))
            .collect();
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let mut reply = vec![0u8; MAX_MESSAGE];
        loop {
            let hv_fd = self.hypervisor.raw_fd();
            let mut extra: Vec<RawFd> = vec![hv_fd];
            extra.extend(stdout.as_ref().map(|s| s.as_raw_fd()));
            extra.extend(stderr.as_ref().map(|s| s.as_raw_fd()));
            let event = match self.endpoint.wait_event_with(&extra, None) {
                Ok(Some(event)) => event,
                // The launcher is gone: the system is over.
                Ok(None) | Err(_) => break,
            };
            match event {
                Event::Call { channel, message } => {
                    let result = self.serve(&message, &mut reply);
                    match result {
                        Ok(len) => self.endpoint.reply(channel, Ok(&reply[..len])),
                        Err(refusal) => self.endpoint.reply(channel, Err(refusal)),
                    }
                }
                Event::Readable(fd) if fd == hv_fd => {}
                Event::Readable(fd) => {
                    let stream = if stdout.as_ref().is_some_and(|s| s.as_raw_fd() == fd) {
                        0
                    } else {
                        1
                    };
                    let open = match stream {
                        0 => stdout.as_mut().map(|s| self.forward(&name, 0, s)),
                        _ => stderr.as_mut().map(|s| self.forward(&name, 1, s)),
                    };
                    if open == Some(false) {
                        if stream == 0 {
                            stdout = None;
                        } else {
                            stderr = None;
                        }
                    }
                    continue;
                }
                Event::Notified(_) | Event::Fault { .. } => {}
            }
            // Interrupts may have arrived with a reply, or on their own.
            match self.take_interrupts() {
                Ok(true) => {
                    for channel in &interrupt_ends {
                        self.endpoint.notify(*channel);
                    }
                }
                Ok(false) => {}
                Err(_) => {
                    (self.sink)(format!(
                        "[{name}] the hypervisor transport broke; host stopped"
                    ));
                    break;
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }

    /// Whether any interrupt came in (they are edge events for synic,
    /// which then scans its pages: one notification covers them all).
    fn take_interrupts(&mut self) -> Result<bool, HvError> {
        let mut any = false;
        while self.hypervisor.wait_interrupt(Some(0))?.is_some() {
            any = true;
        }
        Ok(any)
    }

    fn serve(&mut self, message: &[u8], reply: &mut [u8]) -> Result<usize, Refusal> {
        let request: Request = decode(message)?;
        let outcome = match request {
            Request::MsrRead { msr } => self.hypervisor.msr_read(msr).map(Reply::Value),
            Request::MsrWrite { msr, value } => {
                self.hypervisor.msr_write(msr, value).map(|()| Reply::Done)
            }
            Request::Hypercall {
                control,
                input,
                output,
            } => self
                .hypervisor
                .hypercall(control, input, output)
                .map(Reply::Value),
            Request::EndOfInterrupt => self.hypervisor.end_of_interrupt().map(|()| Reply::Done),
        };
        let answer = match outcome {
            Ok(answer) => answer,
            Err(HvError::GeneralProtection) => Reply::GeneralProtection,
            Err(HvError::InvalidOpcode) => Reply::InvalidOpcode,
            // The host is gone: the caller learns it as a refusal; the
            // next wait notices the broken transport.
            Err(HvError::Transport) => return Err(Refusal::DENIED),
        };
        encode_reply(reply, &answer)
    }

    /// Forward complete lines from the host's output; false at end of file.
    fn forward(&mut self, name: &str, stream: usize, source: &mut impl Read) -> bool {
        let mut buffer = [0u8; 4096];
        let read = match source.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        self.partial[stream].extend_from_slice(&buffer[..read]);
        while let Some(end) = self.partial[stream].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[stream].drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if stream == 0 {
                // Nobody may be listening: that is fine.
                let _ = self.answers.send(text.to_string());
            }
            (self.sink)(format!("[{name}] {text}"));
        }
        true
    }
}
