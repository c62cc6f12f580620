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
//! The host is either a program the launcher starts (`hvsim`, or any
//! other implementation of the transport: [`HostSource::Program`]) or a
//! host that is already listening on a socket ([`HostSource::Socket`]).
//! When the host's end breaks (the host exits, closes the connection or
//! breaks the protocol) the bridge reports it through `on_lost` with the
//! reason, and the launcher powers the system off with
//! [`HOST_LOST_CODE`]: a guest whose hypervisor is gone cannot go on.
//!
//! Trusts: the host process only as far as the transport client checks
//! it. Writes: nothing but the transport, the host's output lines and the
//! operator commands it is given.

use crate::endpoint::{Endpoint, Event};
use crate::sys;
use component_api::{decode_request, encode_reply, Env, Refusal, MAX_MESSAGE};
use hv_interface::hosted::HostedHypervisor;
use hv_interface::{HvError, Hypervisor};
use std::io::Write;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use system_layout::ChannelKind;
use vmbus_ipc::hypervisor::{Reply, Request};

/// How long a host may take to start listening (a program the launcher
/// starts, or a socket path it is told to connect to).
pub const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// How long the bridge waits for a lost host's last output and exit.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// The code the system powers off with when its host is lost.
pub const HOST_LOST_CODE: u8 = 4;

/// Where output lines of the host process go (the launcher's sink).
pub type LineSink = Arc<dyn Fn(String) + Send + Sync>;

/// Called once, with the reason, when the host's end of the transport
/// breaks while the system runs.
pub type LostSink = Arc<dyn Fn(String) + Send + Sync>;

/// Where the hypervisor host comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSource {
    /// Start `program --socket PATH ARGS..` (the launcher picks PATH) and
    /// connect to it once it listens.
    Program { program: PathBuf, args: Vec<String> },
    /// Connect to a host already listening on this socket path.
    Socket(PathBuf),
}

static SESSION: AtomicU32 = AtomicU32::new(0);

/// The operator's end of the host process: its stdin, and the lines it
/// writes on stdout (one answer per command, `docs/hvsim.md`). The lines
/// also appear in the system's output as `[name] ...`.
pub struct HostConsole {
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl HostConsole {
    pub(crate) fn new(stdin: ChildStdin, answers: Receiver<String>) -> HostConsole {
        HostConsole { stdin, answers }
    }

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

/// What [`start`] gives back.
pub struct Started {
    pub thread: JoinHandle<()>,
    /// The operator's console (a host program the launcher started).
    pub console: Option<HostConsole>,
    /// The host program's process id (a host the launcher started).
    pub pid: Option<u32>,
}

/// Start or reach the host, connect to it as the guest over
/// `guest_memory`, and serve `endpoint` (the host component's ends) from a
/// thread until the system ends or the host is lost.
pub fn start(
    endpoint: Endpoint,
    source: &HostSource,
    guest_memory: (PathBuf, u64),
    sink: LineSink,
    on_lost: LostSink,
) -> io::Result<Started> {
    let (mut child, socket, folder) = match source {
        HostSource::Program { program, args } => {
            let folder = std::env::temp_dir().join(format!(
                "hosted-{}-{}",
                std::process::id(),
                SESSION.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&folder)?;
            let socket = folder.join("host.sock");
            match spawn_host(program, &socket, args) {
                Ok(child) => (Some(child), socket, Some(folder)),
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&folder);
                    return Err(error);
                }
            }
        }
        HostSource::Socket(path) => (None, path.clone(), None),
    };
    let connected = connect(child.as_mut(), &socket).and_then(|stream| {
        HostedHypervisor::handshake(stream, &guest_memory.0, guest_memory.1)
            .map_err(|e| io::Error::other(format!("hypervisor handshake failed: {e:?}")))
    });
    let hypervisor = match connected {
        Ok(hypervisor) => hypervisor,
        Err(error) => {
            if let Some(child) = child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(folder) = &folder {
                let _ = std::fs::remove_dir_all(folder);
            }
            return Err(error);
        }
    };
    let (answer_sender, answers) = std::sync::mpsc::channel();
    let console = child
        .as_mut()
        .and_then(|c| c.stdin.take())
        .map(|stdin| HostConsole { stdin, answers });
    let pid = child.as_ref().map(|c| c.id());
    let pidfd = match pid {
        Some(pid) => Some(sys::pidfd_open(pid)?),
        None => None,
    };
    let bridge = Bridge {
        endpoint,
        hypervisor,
        child,
        pidfd,
        folder,
        sink,
        on_lost,
        answers: answer_sender,
        partial: [Vec::new(), Vec::new()],
    };
    let thread = std::thread::Builder::new()
        .name("hosted-simulated-host".into())
        .spawn(move || bridge.run())?;
    Ok(Started {
        thread,
        console,
        pid,
    })
}

/// `program --socket PATH ARGS..`, with its stdin, stdout and stderr
/// piped to us; it dies with this process.
pub(crate) fn spawn_host(program: &Path, socket: &Path, args: &[String]) -> io::Result<Child> {
    let mut command = Command::new(program);
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Safety: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(sys::die_with_parent);
    }
    command
        .spawn()
        .map_err(|e| io::Error::other(format!("cannot start {}: {e}", program.display())))
}

/// Connect to the host's socket once it listens. A host binds it after it
/// starts; until then connecting fails, and we wait for a sign of life
/// (the host program's exit) or a few milliseconds before trying again,
/// within [`CONNECT_BOUND`].
pub(crate) fn connect(mut child: Option<&mut Child>, socket: &Path) -> io::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_BOUND;
    let pidfd = match child.as_ref() {
        Some(child) => Some(sys::pidfd_open(child.id())?),
        None => None,
    };
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(error) => {
                return Err(io::Error::other(format!(
                    "cannot connect to the host at {}: {error}",
                    socket.display()
                )))
            }
        }
        if let Some(child) = child.as_mut() {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the host exited before listening: {status}"
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "no host listened at {} within {} s",
                socket.display(),
                CONNECT_BOUND.as_secs()
            )));
        }
        match &pidfd {
            Some(pidfd) => {
                let mut wait = [sys::pollfd(pidfd.as_raw_fd())];
                sys::poll(&mut wait, Some(Duration::from_millis(2)))?;
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

struct Bridge {
    endpoint: Endpoint,
    hypervisor: HostedHypervisor,
    /// The host program, if the launcher started it.
    child: Option<Child>,
    pidfd: Option<OwnedFd>,
    /// The folder of the socket, if the launcher made it.
    folder: Option<PathBuf>,
    sink: LineSink,
    on_lost: LostSink,
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
        let mut stdout = self.child.as_mut().and_then(|c| c.stdout.take());
        let mut stderr = self.child.as_mut().and_then(|c| c.stderr.take());
        let pid_fd = self.pidfd.as_ref().map(|fd| fd.as_raw_fd());
        let mut reply = vec![0u8; MAX_MESSAGE];
        let lost = loop {
            let hv_fd = self.hypervisor.raw_fd();
            let mut extra: Vec<RawFd> = vec![hv_fd];
            extra.extend(stdout.as_ref().map(|s| s.as_raw_fd()));
            extra.extend(stderr.as_ref().map(|s| s.as_raw_fd()));
            extra.extend(pid_fd);
            let event = match self.endpoint.wait_event_with(&extra, None) {
                Ok(Some(event)) => event,
                // The launcher is gone: the system is over.
                Ok(None) | Err(_) => break None,
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
                Event::Readable(fd) if Some(fd) == pid_fd => {
                    // The host program ended; its socket end closed with it
                    // (unless it handed it on): either way it is gone.
                    break Some(String::from("the host process ended"));
                }
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
                    let why = self
                        .hypervisor
                        .failure()
                        .unwrap_or("the transport failed")
                        .to_string();
                    break Some(why);
                }
            }
        };
        if let Some(why) = lost {
            // The host's last words first (a panic, why it stopped), then
            // how it ended, then the power-off.
            self.drain_output(&name, stdout.as_mut(), stderr.as_mut());
            let ended = self.exit_status();
            let what = match ended {
                Some(status) => format!("{why}; host process {status}"),
                None => why,
            };
            (self.on_lost)(format!("the hypervisor host ({name}) is gone: {what}"));
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(folder) = &self.folder {
            let _ = std::fs::remove_dir_all(folder);
        }
    }

    /// How the host program ended, if it has (waiting a moment for it: its
    /// socket closes a little before its exit is visible).
    fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        if let Some(pidfd) = &self.pidfd {
            let mut wait = [sys::pollfd(pidfd.as_raw_fd())];
            let _ = sys::poll(&mut wait, Some(EXIT_GRACE));
        }
        match child.try_wait() {
            Ok(Some(status)) => Some(match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                _ => format!("ended: {status}"),
            }),
            _ => Some(String::from("still running (it is stopped now)")),
        }
    }

    /// Forward what the host program still had to say (bounded: its pipes
    /// are at end of file once it has exited).
    fn drain_output(
        &mut self,
        name: &str,
        mut stdout: Option<&mut ChildStdout>,
        mut stderr: Option<&mut ChildStderr>,
    ) {
        let deadline = Instant::now() + EXIT_GRACE;
        for _ in 0..64 {
            let mut any = false;
            for stream in 0..2 {
                let fd = match stream {
                    0 => stdout.as_ref().map(|s| s.as_raw_fd()),
                    _ => stderr.as_ref().map(|s| s.as_raw_fd()),
                };
                let Some(fd) = fd else { continue };
                let left = deadline.saturating_duration_since(Instant::now());
                let mut probe = [sys::pollfd(fd)];
                if sys::poll(&mut probe, Some(left)).unwrap_or(0) == 0 {
                    continue;
                }
                let open = match stream {
                    0 => stdout.as_mut().map(|s| self.forward(name, 0, *s)),
                    _ => stderr.as_mut().map(|s| self.forward(name, 1, *s)),
                };
                if open == Some(false) {
                    match stream {
                        0 => stdout = None,
                        _ => stderr = None,
                    }
                } else {
                    any = true;
                }
            }
            if !any || Instant::now() >= deadline {
                break;
            }
        }
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
        serve_hypervisor(&mut self.hypervisor, message, reply)
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

/// Serve one `vmbus_ipc::hypervisor` call of synic over the transport
/// (the bridge's, and the monolith's in-process host end).
pub(crate) fn serve_hypervisor(
    hypervisor: &mut HostedHypervisor,
    message: &[u8],
    reply: &mut [u8],
) -> Result<usize, Refusal> {
    let request = decode_request::<vmbus_ipc::hypervisor::Hypervisor>(message)?;
    let outcome = match request {
        Request::MsrRead { msr } => hypervisor.msr_read(msr).map(Reply::Value),
        Request::MsrWrite { msr, value } => hypervisor.msr_write(msr, value).map(|()| Reply::Done),
        Request::Hypercall {
            control,
            input,
            output,
        } => hypervisor
            .hypercall(control, input, output)
            .map(Reply::Value),
        Request::EndOfInterrupt => hypervisor.end_of_interrupt().map(|()| Reply::Done),
    };
    let answer = match outcome {
        Ok(answer) => answer,
        Err(HvError::GeneralProtection) => Reply::GeneralProtection,
        Err(HvError::InvalidOpcode) => Reply::InvalidOpcode,
        // The host is gone: the caller learns it as a refusal; the
        // bridge then powers the system off.
        Err(HvError::Transport) => return Err(Refusal::DENIED),
    };
    encode_reply::<vmbus_ipc::hypervisor::Hypervisor>(reply, &answer)
}
