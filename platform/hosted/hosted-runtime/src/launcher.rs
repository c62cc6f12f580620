//! The launcher: builds a hosted system from a [`SystemLayout`] and
//! supervises it.
//!
//! It creates every region (a sealed memfd each; host-visible regions are
//! carved from one guest-memory file in which GPA = byte offset), one
//! eventfd per receiving notify end and per IRQ, one SOCK_SEQPACKET pair
//! per protected-call channel and per component incarnation, and a control
//! socket per component. It starts each component as a process (or hands
//! its endpoint to the caller, who plays it as a test double), prefixes
//! each line a process prints with its name, and watches every process
//! through a pidfd. When one ends unexpectedly the fault goes to its
//! supervisor's `fault` entry; `restart` starts a fresh process with the
//! same regions (their contents persist) and new call sockets (the old
//! ones died with the process, which is how a caller mid-call learns that
//! the server faulted).
//!
//! Trusts: the layout (validated by `sysdesc`). Does not trust component
//! processes: their control messages are decoded and checked (a restart
//! request names one of the sender's own children; power-off needs the
//! description's permission).

use crate::endpoint::{Endpoint, OutputMode};
use crate::protocol::{
    self, ChannelHandoff, ChannelRole, Handoff, MapHandoff, ToComponent, ToLauncher, WireFault,
    HANDOFF_VARIABLE, MAX_CONTROL,
};
use crate::simulated_host::{HostSource, HOST_LOST_CODE};
use crate::sys::{self, Received};
use component_api::Fault;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use system_layout::{ChannelKind, SystemLayout, PAGE_SIZE};

/// Where the prefixed output of component processes goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputSink {
    /// Printed on the launcher's stdout as `[name] line`.
    Print,
    /// Kept for [`System::output`] and [`System::wait_for_output`] (tests).
    Capture,
    /// Both.
    PrintAndCapture,
}

/// How to start a system.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Folder holding one executable per component package (named as the
    /// package).
    pub binary_dir: PathBuf,
    /// Components the calling process plays itself (test doubles); their
    /// endpoints are taken with [`System::take_double`].
    pub doubles: Vec<String>,
    /// Components not started (a subset of the system); start one later
    /// with [`System::restart`].
    pub omitted: Vec<String>,
    pub output: OutputSink,
    /// The simulated host's program (`PROGRAM --socket PATH`, the host end
    /// of `docs/hypervisor-transport.md`). When set, a `simulated_host`
    /// component is played by a bridge to that process; when not, it is
    /// not started.
    pub simulated_host: Option<PathBuf>,
    /// Arguments for the simulated host's program after `--socket PATH`
    /// (e.g. `--max-version 4.0`, `--events`; `docs/hvsim.md`).
    pub simulated_host_args: Vec<String>,
    /// Connect to a host already listening on this socket instead of
    /// starting a program (takes precedence over `simulated_host`).
    pub simulated_host_socket: Option<PathBuf>,
    /// Extra environment variables for one component's process (e.g. where
    /// a hosted `synic` finds the simulated host's socket).
    pub component_env: HashMap<String, Vec<(String, String)>>,
}

impl LaunchOptions {
    /// Where a `simulated_host` component's host comes from, if anywhere.
    pub fn host_source(&self) -> Option<HostSource> {
        if let Some(socket) = &self.simulated_host_socket {
            return Some(HostSource::Socket(socket.clone()));
        }
        self.simulated_host
            .as_ref()
            .map(|program| HostSource::Program {
                program: program.clone(),
                args: self.simulated_host_args.clone(),
            })
    }

    pub fn new(binary_dir: impl Into<PathBuf>) -> LaunchOptions {
        LaunchOptions {
            binary_dir: binary_dir.into(),
            doubles: Vec::new(),
            omitted: Vec::new(),
            output: OutputSink::Print,
            simulated_host: None,
            simulated_host_args: Vec::new(),
            simulated_host_socket: None,
            component_env: HashMap::new(),
        }
    }
}

/// The guest-memory file: every host-visible region at its guest
/// physical address (GPA = byte offset in the file).
#[derive(Debug)]
pub struct GuestMemory {
    pub file: OwnedFd,
    /// (region name, GPA, size) per host-visible region.
    pub regions: Vec<(String, u64, u64)>,
}

/// A fault the launcher saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub component: String,
    pub fault: Fault,
    /// Whether a supervisor was told.
    pub reported: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Process,
    Double,
    Omitted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Ended on its own; waiting for its supervisor.
    Faulted,
    /// Stopped by its supervisor or the launcher.
    Stopped,
    /// Played by the test process.
    Double,
}

struct RunningProcess {
    child: Child,
    pidfd: OwnedFd,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    /// The read end of the emulated serial port's output.
    serial: Option<std::fs::File>,
    partial: [Vec<u8>; 3],
    /// What the process said about its own end (panic, memory fault).
    last_words: Option<Fault>,
}

struct Slot {
    role: Role,
    status: Status,
    /// Per map: the descriptor a component maps (read-only when the map is).
    /// No descriptor for a map granted by address only.
    map_fds: Vec<(Option<OwnedFd>, MapHandoff)>,
    /// Per notify end and IRQ: (local id, role, our eventfd, peer eventfd).
    events: Vec<(u8, ChannelRole, OwnedFd, Option<OwnedFd>)>,
    /// Call ends waiting to be handed over at first start, by local id.
    first_call_ends: HashMap<u8, OwnedFd>,
    control: Option<OwnedFd>,
    process: Option<RunningProcess>,
    restarts: u32,
    /// When the platform-supervised component faulted lately (ns since
    /// the system started), for the hold policy.
    platform_faults: Vec<u64>,
}

struct State {
    layout: SystemLayout,
    options: LaunchOptions,
    start_ns: u64,
    slots: Vec<Slot>,
    doubles: HashMap<String, Endpoint>,
    lines: Vec<String>,
    /// When each line came, in ns since the system started.
    line_times: Vec<u64>,
    faults: Vec<FaultRecord>,
    power_off: Option<u8>,
    shutting_down: bool,
    guest_memory: Option<OwnedFd>,
    guest_map: Vec<(String, u64, u64)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    wake: OwnedFd,
}

/// A running hosted system. Dropping it ends every component process.
pub struct System {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    bridges: Vec<JoinHandle<()>>,
    /// The operator's console of the simulated host process, if one runs.
    host_console: Mutex<Option<crate::simulated_host::HostConsole>>,
    /// The host program's process id, if the launcher started one.
    host_pid: Option<u32>,
}

fn other(message: impl Into<String>) -> io::Error {
    io::Error::other(message.into())
}

impl System {
    /// Create every region and channel, start the components (except
    /// doubles and omitted ones) and begin supervising.
    pub fn launch(layout: SystemLayout, options: LaunchOptions) -> io::Result<System> {
        for name in options.doubles.iter().chain(&options.omitted) {
            if layout.component_index(name).is_none() {
                return Err(other(format!("no component `{name}` in the layout")));
            }
        }
        let (guest_memory, guest_map, region_fds) = create_regions(&layout)?;
        let mut slots = Vec::with_capacity(layout.components.len());
        for (index, component) in layout.components.iter().enumerate() {
            let bridged = component.simulated_host && options.host_source().is_some();
            let role = if options.doubles.contains(&component.name) || bridged {
                Role::Double
            } else if options.omitted.contains(&component.name) || component.simulated_host {
                // The simulated host runs as its own process on the
                // hypervisor transport, not as a component.
                Role::Omitted
            } else {
                Role::Process
            };
            let mut map_fds = Vec::new();
            for map in &component.maps {
                // Device memory (a region at a fixed physical address) is
                // the seL4 image's; hosted there is none. The simulated
                // host holds the QEMU framebuffer so, but hosted it runs as
                // its own process and never maps it.
                if let Some(physical) = layout.regions[map.region as usize].physical {
                    if role == Role::Process {
                        return Err(other(format!(
                            "{}: region `{}` is device memory (physical {physical:#x}), which only the seL4 image has; hosted it cannot be mapped",
                            component.name, layout.regions[map.region as usize].name
                        )));
                    }
                }
                let (fd, offset) = region_fds
                    .get(map.region as usize)
                    .ok_or_else(|| other(format!("{}: map of unknown region", component.name)))?;
                // Known by address only: no descriptor, so nothing to map.
                let fd = if map.address_only {
                    None
                } else if map.writable {
                    Some(sys::dup(fd)?)
                } else {
                    Some(sys::reopen_read_only(fd)?)
                };
                let size = layout.regions[map.region as usize].size;
                map_fds.push((
                    fd,
                    MapHandoff {
                        fd: -1,
                        offset: *offset,
                        size,
                        writable: map.writable,
                        double: map.double,
                        address_only: map.address_only,
                        guest_physical: layout.regions[map.region as usize]
                            .host_visible
                            .then_some(*offset),
                    },
                ));
            }
            let _ = index;
            slots.push(Slot {
                role,
                status: if role == Role::Double {
                    Status::Double
                } else {
                    Status::Stopped
                },
                map_fds,
                events: Vec::new(),
                first_call_ends: HashMap::new(),
                control: None,
                process: None,
                restarts: 0,
                platform_faults: Vec::new(),
            });
        }
        // Notify channels: one eventfd per receiving end; the sender holds
        // a duplicate of its peer's.
        let mut receive_fds: HashMap<(usize, u8), OwnedFd> = HashMap::new();
        for (index, component) in layout.components.iter().enumerate() {
            for end in &component.channels {
                if end.kind == ChannelKind::Notify {
                    receive_fds.insert((index, end.id), sys::eventfd()?);
                }
            }
            for irq in &component.irqs {
                receive_fds.insert((index, irq.channel), sys::eventfd()?);
            }
        }
        for (index, component) in layout.components.iter().enumerate() {
            for end in &component.channels {
                match end.kind {
                    ChannelKind::Notify => {
                        let own = sys::dup(&receive_fds[&(index, end.id)])?;
                        let peer = receive_fds
                            .get(&(end.peer as usize, end.peer_id))
                            .ok_or_else(|| other("notify channel without a peer end"))?;
                        slots[index].events.push((
                            end.id,
                            ChannelRole::Notify,
                            own,
                            Some(sys::dup(peer)?),
                        ));
                    }
                    ChannelKind::CallClient => {
                        let (client, server) = sys::seqpacket_pair()?;
                        slots[index].first_call_ends.insert(end.id, client);
                        slots[end.peer as usize]
                            .first_call_ends
                            .insert(end.peer_id, server);
                    }
                    ChannelKind::CallServer => {}
                }
            }
            for irq in &component.irqs {
                let own = sys::dup(&receive_fds[&(index, irq.channel)])?;
                slots[index]
                    .events
                    .push((irq.channel, ChannelRole::Irq, own, None));
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                layout,
                options,
                start_ns: sys::monotonic_ns(),
                slots,
                doubles: HashMap::new(),
                lines: Vec::new(),
                line_times: Vec::new(),
                faults: Vec::new(),
                power_off: None,
                shutting_down: false,
                guest_memory,
                guest_map,
            }),
            changed: Condvar::new(),
            wake: sys::eventfd()?,
        });
        {
            let mut state = shared.state.lock().expect("launcher state");
            let count = state.slots.len();
            for index in 0..count {
                match state.slots[index].role {
                    Role::Process => state.start(index)?,
                    Role::Double => {
                        let endpoint = state.start_double(index)?;
                        let name = state.layout.components[index].name.clone();
                        state.doubles.insert(name, endpoint);
                    }
                    Role::Omitted => {
                        // Nobody will ever use these ends: a caller sees a
                        // dead server until the component is started.
                        state.slots[index].first_call_ends.clear();
                    }
                }
            }
        }
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hosted-launcher".into())
            .spawn(move || supervise(thread_shared))?;
        let mut system = System {
            shared,
            thread: Some(thread),
            bridges: Vec::new(),
            host_console: Mutex::new(None),
            host_pid: None,
        };
        system.start_simulated_hosts()?;
        Ok(system)
    }

    /// Put a bridge to the host in place of each `simulated_host`
    /// component (if a host program or socket was given). When the host is
    /// lost later, the system powers off with [`HOST_LOST_CODE`].
    fn start_simulated_hosts(&mut self) -> io::Result<()> {
        let (source, hosts) = {
            let state = self.lock();
            let Some(source) = state.options.host_source() else {
                return Ok(());
            };
            let hosts: Vec<String> = state
                .layout
                .components
                .iter()
                .filter(|c| c.simulated_host && !state.options.doubles.contains(&c.name))
                .map(|c| c.name.clone())
                .collect();
            (source, hosts)
        };
        for name in hosts {
            let endpoint = self
                .take_double(&name)
                .ok_or_else(|| other("the simulated host's endpoint is missing"))?;
            let memory = self.guest_memory_path().ok_or_else(|| {
                other("a simulated host needs host-visible regions (guest memory)")
            })?;
            let weak = Arc::downgrade(&self.shared);
            let sink: crate::simulated_host::LineSink = Arc::new(move |line: String| {
                if let Some(shared) = weak.upgrade() {
                    if let Ok(mut state) = shared.state.lock() {
                        state.emit_line(line);
                    }
                    shared.changed.notify_all();
                }
            });
            let weak = Arc::downgrade(&self.shared);
            let on_lost: crate::simulated_host::LostSink = Arc::new(move |why: String| {
                if let Some(shared) = weak.upgrade() {
                    if let Ok(mut state) = shared.state.lock() {
                        state.host_lost(why);
                    }
                    shared.changed.notify_all();
                    sys::eventfd_signal(shared.wake.as_raw_fd());
                }
            });
            let started = crate::simulated_host::start(endpoint, &source, memory, sink, on_lost)?;
            self.bridges.push(started.thread);
            self.host_pid = started.pid;
            *self.host_console.lock().unwrap_or_else(|e| e.into_inner()) = started.console;
        }
        Ok(())
    }

    /// The process id of the host program the launcher started (none for
    /// a host reached on a socket).
    pub fn host_pid(&self) -> Option<u32> {
        self.host_pid
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("launcher state")
    }

    fn wake(&self) {
        sys::eventfd_signal(self.shared.wake.as_raw_fd());
    }

    fn index(state: &State, name: &str) -> io::Result<usize> {
        state
            .layout
            .component_index(name)
            .ok_or_else(|| other(format!("no component `{name}`")))
    }

    /// The endpoint of a component this process plays (once per name).
    pub fn take_double(&self, name: &str) -> Option<Endpoint> {
        self.lock().doubles.remove(name)
    }

    /// The process id of a running component.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let state = self.lock();
        let index = state.layout.component_index(name)?;
        state.slots[index].process.as_ref().map(|p| p.child.id())
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        let state = self.lock();
        let index = state.layout.component_index(name)?;
        Some(state.slots[index].status)
    }

    /// Send a signal to a component's process (SIGKILL to crash it from
    /// outside). The fault then takes its normal path.
    pub fn kill(&self, name: &str, signal: i32) -> io::Result<()> {
        let pid = self
            .pid(name)
            .ok_or_else(|| other(format!("`{name}` is not running")))?;
        sys::kill(pid, signal)
    }

    /// Raise IRQ `irq` (its name in `system.toml`) of component `name`,
    /// as the device would: the component is notified on the IRQ's channel.
    pub fn raise_irq(&self, name: &str, irq: &str) -> io::Result<()> {
        let state = self.lock();
        let index = Self::index(&state, name)?;
        let channel = state.layout.components[index]
            .irqs
            .iter()
            .find(|i| i.name == irq)
            .map(|i| i.channel)
            .ok_or_else(|| other(format!("`{name}` has no IRQ `{irq}`")))?;
        let (_, _, eventfd, _) = state.slots[index]
            .events
            .iter()
            .find(|(id, role, _, _)| *id == channel && *role == ChannelRole::Irq)
            .ok_or_else(|| other("the IRQ has no event"))?;
        sys::eventfd_signal(eventfd.as_raw_fd());
        Ok(())
    }

    /// Start a component again from its initial state, as its supervisor
    /// would (or start an omitted one).
    pub fn restart(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        let index = Self::index(&state, name)?;
        state.restart(index)?;
        drop(state);
        self.shared.changed.notify_all();
        self.wake();
        Ok(())
    }

    /// How many times a component has been restarted.
    pub fn restarts(&self, name: &str) -> u32 {
        let state = self.lock();
        state
            .layout
            .component_index(name)
            .map(|i| state.slots[i].restarts)
            .unwrap_or(0)
    }

    /// Every fault seen so far.
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.lock().faults.clone()
    }

    /// Every captured output line so far (`[name] text`).
    pub fn output(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Every captured line with when it came (since the system started):
    /// the timeline tests measure gaps and latencies on.
    pub fn output_timed(&self) -> Vec<(Duration, String)> {
        let state = self.lock();
        state
            .line_times
            .iter()
            .map(|ns| Duration::from_nanos(*ns))
            .zip(state.lines.iter().cloned())
            .collect()
    }

    /// Give the simulated host process an operator command
    /// (`docs/hvsim.md`) and wait at most `timeout` for its answer line.
    pub fn host_command(&self, command: &str, timeout: Duration) -> io::Result<String> {
        let mut console = self.host_console.lock().unwrap_or_else(|e| e.into_inner());
        match console.as_mut() {
            Some(console) => console.command(command, timeout),
            None => Err(other("no simulated host process runs")),
        }
    }

    /// The guest-memory file (host-visible regions, GPA = offset) and, per
    /// host-visible region, its name, GPA and size: what a simulated host
    /// process maps.
    pub fn guest_memory(&self) -> io::Result<Option<GuestMemory>> {
        let state = self.lock();
        match &state.guest_memory {
            None => Ok(None),
            Some(fd) => Ok(Some(GuestMemory {
                file: sys::dup(fd)?,
                regions: state.guest_map.clone(),
            })),
        }
    }

    /// A path another process can open the guest-memory file by (through
    /// this process's descriptor table), and its size.
    pub fn guest_memory_path(&self) -> Option<(PathBuf, u64)> {
        let state = self.lock();
        let fd = state.guest_memory.as_ref()?;
        let size = state.guest_map.last().map(|(_, gpa, size)| gpa + size)?;
        Some((
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                fd.as_raw_fd()
            )),
            size,
        ))
    }

    /// Wait until `ready` holds over the state, or `timeout` passes.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(value) = ready(&state) {
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .expect("launcher state")
                .0;
        }
    }

    /// Wait for the `n`th fault (counting from 1) of `name`.
    pub fn wait_for_fault(&self, name: &str, n: usize, timeout: Duration) -> Option<Fault> {
        self.wait_until(timeout, |state| {
            state
                .faults
                .iter()
                .filter(|f| f.component == name)
                .nth(n.saturating_sub(1))
                .map(|f| f.fault)
        })
    }

    /// Wait until `name` has been restarted at least `count` times.
    pub fn wait_for_restarts(&self, name: &str, count: u32, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| {
            let index = state.layout.component_index(name)?;
            (state.slots[index].restarts >= count).then_some(())
        })
        .is_some()
    }

    /// Wait for a captured line containing `needle`, searching from line
    /// `from` (so a test can wait for the next occurrence). Returns the
    /// line's position.
    pub fn wait_for_output(&self, needle: &str, from: usize, timeout: Duration) -> Option<usize> {
        self.wait_until(timeout, |state| {
            state
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, line)| line.contains(needle))
                .map(|(i, _)| i)
        })
    }

    /// Wait for a component to power the system off; its exit code.
    pub fn wait_for_power_off(&self, timeout: Duration) -> Option<u8> {
        self.wait_until(timeout, |state| state.power_off)
    }

    /// Run until a component powers the system off (its code), or until
    /// nothing is left running that could (code 1).
    pub fn wait(&self) -> u8 {
        loop {
            if let Some(code) = self.wait_a_while() {
                return code;
            }
        }
    }

    fn wait_a_while(&self) -> Option<u8> {
        self.wait_until(Duration::from_secs(3600), |state| {
            if let Some(code) = state.power_off {
                return Some(code);
            }
            // Processes, or components the caller plays (a bridge to the
            // simulated host cannot power off on its own).
            let alive = state
                .slots
                .iter()
                .zip(&state.layout.components)
                .any(|(s, c)| {
                    s.status == Status::Running
                        || (s.status == Status::Double && state.options.doubles.contains(&c.name))
                });
            (!alive).then_some(1)
        })
    }
}

impl Drop for System {
    fn drop(&mut self) {
        {
            let mut state = self.lock();
            state.shutting_down = true;
            state.end_all();
        }
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Each bridge sees its control socket close and ends its host.
        for bridge in self.bridges.drain(..) {
            let _ = bridge.join();
        }
    }
}

/// One memfd per private region; host-visible ones carved from one
/// guest-memory file. Returns it, its (name, GPA, size) table, and per
/// region (descriptor, offset).
#[allow(clippy::type_complexity)]
pub(crate) fn create_regions(
    layout: &SystemLayout,
) -> io::Result<(
    Option<OwnedFd>,
    Vec<(String, u64, u64)>,
    Vec<(OwnedFd, u64)>,
)> {
    let mut guest_size = 0u64;
    let mut guest_map = Vec::new();
    for region in layout.regions.iter().filter(|r| r.host_visible) {
        // GPA 0 is left unused so that a zero GPA is never valid.
        let gpa = guest_size.max(PAGE_SIZE);
        guest_map.push((region.name.clone(), gpa, region.size));
        guest_size = gpa + region.size;
    }
    let guest_memory = if guest_map.is_empty() {
        None
    } else {
        Some(sys::memfd("guest-memory", guest_size)?)
    };
    let mut fds = Vec::with_capacity(layout.regions.len());
    let mut host_visible = guest_map.iter();
    for region in &layout.regions {
        if region.host_visible {
            let (_, gpa, _) = host_visible.next().expect("counted above");
            let memory = guest_memory.as_ref().expect("made above");
            fds.push((sys::dup(memory)?, *gpa));
        } else {
            fds.push((sys::memfd(&region.name, region.size)?, 0));
        }
    }
    Ok((guest_memory, guest_map, fds))
}

/// Descriptors a handoff names, kept alive until the process has them.
struct HandoffFds {
    owned: Vec<OwnedFd>,
}

impl State {
    /// Build the handoff for component `index`: duplicates of its
    /// persistent descriptors, new call sockets (the peers' ends go to
    /// them, or are dropped if the peer is not there) and a new control
    /// socket. `fresh_calls` is false only at first start, when the ends
    /// made at launch are used.
    fn prepare(
        &mut self,
        index: usize,
        fresh_calls: bool,
        serial_write: Option<OwnedFd>,
    ) -> io::Result<(Handoff, HandoffFds)> {
        let mut owned = Vec::new();
        let keep = |fd: OwnedFd, owned: &mut Vec<OwnedFd>| {
            let raw = fd.as_raw_fd();
            owned.push(fd);
            raw
        };
        let component = self.layout.components[index].clone();
        let mut maps = Vec::new();
        for (fd, map) in &self.slots[index].map_fds {
            let mut map = map.clone();
            if let Some(fd) = fd {
                map.fd = keep(sys::dup(fd)?, &mut owned);
            }
            maps.push(map);
        }
        let mut channels = Vec::new();
        for (id, role, receive, send) in &self.slots[index].events {
            channels.push(ChannelHandoff {
                id: *id,
                kind: *role,
                receive_fd: Some(keep(sys::dup(receive)?, &mut owned)),
                send_fd: match send {
                    Some(fd) => Some(keep(sys::dup(fd)?, &mut owned)),
                    None => None,
                },
                call_fd: None,
            });
        }
        for end in &component.channels {
            let kind = match end.kind {
                ChannelKind::Notify => continue,
                ChannelKind::CallClient => ChannelRole::CallClient,
                ChannelKind::CallServer => ChannelRole::CallServer,
            };
            let own = if fresh_calls {
                let (own, theirs) = sys::seqpacket_pair()?;
                self.hand_call_end(end.peer as usize, end.peer_id, theirs);
                Some(own)
            } else {
                self.slots[index].first_call_ends.remove(&end.id)
            };
            channels.push(ChannelHandoff {
                id: end.id,
                kind,
                receive_fd: None,
                send_fd: None,
                call_fd: own.map(|fd| keep(fd, &mut owned)),
            });
        }
        let (launcher_end, component_end) = sys::seqpacket_pair()?;
        self.slots[index].control = Some(launcher_end);
        let control_fd = keep(component_end, &mut owned);
        let serial_fd = serial_write.map(|fd| keep(fd, &mut owned));
        let handoff = Handoff {
            name: component.name.clone(),
            layout: component,
            start_ns: self.start_ns,
            control_fd,
            serial_fd,
            maps,
            channels,
        };
        Ok((handoff, HandoffFds { owned }))
    }

    /// Give a live peer its new end of a call channel.
    fn hand_call_end(&mut self, peer: usize, peer_channel: u8, end: OwnedFd) {
        let slot = &self.slots[peer];
        let alive = slot.status == Status::Running || slot.status == Status::Double;
        if let (true, Some(control)) = (alive, &slot.control) {
            let message = protocol::encode(&ToComponent::CallEnd {
                channel: peer_channel,
            });
            let _ = sys::send_message(control.as_raw_fd(), &message, Some(end.as_raw_fd()));
        }
        // Otherwise the peer is not running: the end is dropped, and the
        // peer's own start makes a new pair.
    }

    fn start_double(&mut self, index: usize) -> io::Result<Endpoint> {
        let (handoff, fds) = self.prepare(index, false, None)?;
        // The endpoint takes ownership of each descriptor the handoff names.
        for fd in fds.owned {
            let _ = fd.into_raw_fd();
        }
        Endpoint::from_handoff(handoff, OutputMode::PrefixedStderr)
    }

    /// Start component `index` as a process.
    fn start(&mut self, index: usize) -> io::Result<()> {
        let fresh = self.slots[index].restarts > 0 || self.slots[index].role == Role::Omitted;
        let (serial_read, serial_write) = sys::pipe()?;
        let (handoff, fds) = self.prepare(index, fresh, Some(serial_write))?;
        let component = &self.layout.components[index];
        let binary = self.options.binary_dir.join(&component.package);
        let inherited: Vec<RawFd> = fds.owned.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut command = Command::new(&binary);
        command
            .env(HANDOFF_VARIABLE, handoff.to_env_value())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(variables) = self.options.component_env.get(&component.name) {
            command.envs(variables.iter().map(|(k, v)| (k, v)));
        }
        // Safety: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for fd in &inherited {
                    sys::inherit(*fd)?;
                }
                // Components never outlive the launcher.
                sys::die_with_parent()
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| other(format!("cannot start {}: {e}", binary.display())))?;
        drop(fds);
        let pidfd = match sys::pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
        };
        let slot = &mut self.slots[index];
        slot.process = Some(RunningProcess {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pidfd,
            serial: Some(serial_read),
            partial: [Vec::new(), Vec::new(), Vec::new()],
            last_words: None,
        });
        slot.status = Status::Running;
        Ok(())
    }

    /// Kill a running process on purpose (no fault is reported) and reap it.
    fn end_process(&mut self, index: usize) {
        if let Some(mut process) = self.slots[index].process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
            self.collect_output(index, &mut process, true);
        }
        self.slots[index].control = None;
    }

    fn restart(&mut self, index: usize) -> io::Result<()> {
        match self.slots[index].role {
            Role::Double => return Err(other("a test double cannot be restarted")),
            Role::Process | Role::Omitted => {}
        }
        self.end_process(index);
        self.slots[index].status = Status::Stopped;
        self.slots[index].restarts += 1;
        self.start(index)
    }

    fn stop(&mut self, index: usize) {
        if self.slots[index].role != Role::Double {
            self.end_process(index);
            self.slots[index].status = Status::Stopped;
        }
    }

    /// The hypervisor host is gone: the guest cannot run on, so the
    /// system powers off (unless it is ending already).
    fn host_lost(&mut self, why: String) {
        if self.power_off.is_some() || self.shutting_down {
            return;
        }
        self.emit_line(format!(
            "[launcher] {why}; powering off with code {HOST_LOST_CODE}"
        ));
        self.power_off = Some(HOST_LOST_CODE);
        self.end_all();
    }

    fn end_all(&mut self) {
        for index in 0..self.slots.len() {
            self.stop(index);
            if self.slots[index].role == Role::Double {
                // Closing the launcher's end tells a double's waits that
                // the system is over (`Endpoint::launcher_gone`).
                self.slots[index].control = None;
            }
        }
    }

    fn emit(&mut self, index: usize, line: &[u8], prefixed: bool) {
        let name = &self.layout.components[index].name;
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        let line = if prefixed {
            format!("[{name}] {text}")
        } else {
            text.to_string()
        };
        self.emit_line(line);
    }

    fn emit_line(&mut self, line: String) {
        match self.options.output {
            OutputSink::Print | OutputSink::PrintAndCapture => println!("{line}"),
            OutputSink::Capture => {}
        }
        if self.options.output != OutputSink::Print {
            self.lines.push(line);
            self.line_times
                .push(sys::monotonic_ns().saturating_sub(self.start_ns));
        }
    }

    /// Read what a process wrote; emit complete lines (all of it at end).
    /// Streams: 0 stdout and 1 stderr (prefixed with the name), 2 the
    /// emulated serial port (the machine's console: printed as it is).
    fn collect_output(&mut self, index: usize, process: &mut RunningProcess, at_end: bool) {
        let mut buffer = [0u8; 4096];
        for stream in 0..3 {
            loop {
                let fd = match stream {
                    0 => process.stdout.as_ref().map(|s| s.as_raw_fd()),
                    1 => process.stderr.as_ref().map(|s| s.as_raw_fd()),
                    _ => process.serial.as_ref().map(|s| s.as_raw_fd()),
                };
                let Some(fd) = fd else { break };
                let mut probe = [sys::pollfd(fd)];
                if sys::poll(&mut probe, Some(Duration::ZERO)).unwrap_or(0) == 0 {
                    break;
                }
                let read = match stream {
                    0 => process.stdout.as_mut().map(|s| s.read(&mut buffer)),
                    1 => process.stderr.as_mut().map(|s| s.read(&mut buffer)),
                    _ => process.serial.as_mut().map(|s| s.read(&mut buffer)),
                };
                match read {
                    Some(Ok(n)) if n > 0 => process.partial[stream].extend_from_slice(&buffer[..n]),
                    _ => {
                        // End of file: stop watching this stream.
                        match stream {
                            0 => process.stdout = None,
                            1 => process.stderr = None,
                            _ => process.serial = None,
                        }
                        break;
                    }
                }
            }
            let prefixed = stream != 2;
            while let Some(end) = process.partial[stream].iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = process.partial[stream].drain(..=end).collect();
                self.emit(index, &line, prefixed);
            }
            if at_end && !process.partial[stream].is_empty() {
                let line = std::mem::take(&mut process.partial[stream]);
                self.emit(index, &line, prefixed);
            }
        }
    }

    /// Handle the control messages a component sent.
    fn handle_control(&mut self, index: usize) {
        let mut buffer = [0u8; MAX_CONTROL];
        loop {
            let Some(control) = &self.slots[index].control else {
                return;
            };
            let fd = control.as_raw_fd();
            match sys::receive_message(fd, &mut buffer, false) {
                Ok(Received::Message(len, _)) => {
                    if let Ok(message) = postcard::from_bytes::<ToLauncher>(&buffer[..len]) {
                        self.obey(index, message);
                    }
                }
                Ok(Received::Empty) => return,
                Ok(Received::Closed) | Err(_) => {
                    // The test dropped a double's endpoint, or a process
                    // closed its end (dying, or misbehaving): stop polling
                    // a socket that would now always be ready.
                    self.slots[index].control = None;
                    return;
                }
            }
        }
    }

    fn obey(&mut self, index: usize, message: ToLauncher) {
        let component = &self.layout.components[index];
        match message {
            ToLauncher::Panicked => {
                if let Some(process) = &mut self.slots[index].process {
                    process.last_words = Some(Fault::Panic);
                }
            }
            ToLauncher::Faulted { fault } => {
                if let Some(process) = &mut self.slots[index].process {
                    // A panic's abort must not turn back into a crash.
                    if process.last_words.is_none() {
                        process.last_words = Some(fault.into());
                    }
                }
            }
            ToLauncher::PowerOff { code } => {
                if component.may_power_off {
                    let line = format!(
                        "[launcher] {} powered the system off ({code})",
                        component.name
                    );
                    self.emit_line(line);
                    self.power_off = Some(code);
                    self.end_all();
                }
            }
            ToLauncher::Restart { child } | ToLauncher::Stop { child } => {
                let restart = matches!(message, ToLauncher::Restart { .. });
                let target = component.children.get(child as usize).map(|c| *c as usize);
                let ok = match target {
                    None => false,
                    Some(target) if restart => match self.restart(target) {
                        Ok(()) => true,
                        Err(error) => {
                            let name = self.layout.components[target].name.clone();
                            self.emit_line(format!("[launcher] cannot restart {name}: {error}"));
                            false
                        }
                    },
                    Some(target) => {
                        self.stop(target);
                        true
                    }
                };
                if let Some(control) = &self.slots[index].control {
                    let reply = protocol::encode(&ToComponent::SupervisorReply { ok });
                    let _ = sys::send_message(control.as_raw_fd(), &reply, None);
                }
            }
        }
    }

    /// A process ended: reap it, work out the fault, tell its supervisor.
    fn reap(&mut self, index: usize) {
        // A panic report may still sit in the control socket.
        self.handle_control(index);
        // The pidfd said it ended; if it has not (the descriptor number
        // was reused by a restart's new process), leave it be.
        let status = match self.slots[index]
            .process
            .as_mut()
            .map(|p| p.child.try_wait())
        {
            Some(Ok(Some(status))) => Ok(status),
            Some(Ok(None)) | None => return,
            Some(Err(error)) => Err(error),
        };
        let Some(mut process) = self.slots[index].process.take() else {
            return;
        };
        self.collect_output(index, &mut process, true);
        self.slots[index].control = None;
        let fault = match status {
            _ if process.last_words.is_some() => process.last_words.expect("checked"),
            Ok(status) => match (status.signal(), status.code()) {
                (Some(signal), _) => Fault::Crashed { signal },
                (None, Some(code)) => Fault::Exited { code },
                (None, None) => Fault::Exited { code: -1 },
            },
            Err(_) => Fault::Exited { code: -1 },
        };
        self.slots[index].status = Status::Faulted;
        let component = &self.layout.components[index];
        let name = component.name.clone();
        let mut reported = false;
        if let Some(supervisor) = component.supervisor.map(usize::from) {
            let child = self.layout.components[supervisor]
                .children
                .iter()
                .position(|c| *c as usize == index);
            if let (Some(child), Some(control)) = (child, &self.slots[supervisor].control) {
                let message = protocol::encode(&ToComponent::Fault {
                    child: child as u8,
                    fault: WireFault::from(fault),
                });
                reported = sys::send_message(control.as_raw_fd(), &message, None).is_ok();
            }
        }
        // `supervisor = "@platform"`: the launcher is the supervisor.
        let platform_restart = component.platform_supervised.then(|| {
            let now = sys::monotonic_ns().saturating_sub(self.start_ns);
            system_layout::platform_should_restart(&mut self.slots[index].platform_faults, now)
        });
        let to = match (reported, platform_restart) {
            (true, _) => "reported to its supervisor",
            (false, Some(true)) => "the launcher restarts it",
            (false, Some(false)) => "held stopped by the launcher (3 faults within 10 s)",
            (false, None) => "no supervisor to report to",
        };
        let what = match fault {
            Fault::Memory { address, ip, write } => format!(
                "{} fault at {address:#x} (ip {ip:#x})",
                if write { "write" } else { "read" }
            ),
            other => format!("{other:?}"),
        };
        self.emit_line(format!("[launcher] {name} faulted: {what}; {to}"));
        self.faults.push(FaultRecord {
            component: name.clone(),
            fault,
            reported: reported || platform_restart.is_some(),
        });
        if platform_restart == Some(true) {
            let started = Instant::now();
            match self.restart(index) {
                Ok(()) => self.emit_line(format!(
                    "[launcher] {name} restarted ({} µs)",
                    started.elapsed().as_micros()
                )),
                Err(error) => self.emit_line(format!("[launcher] cannot restart {name}: {error}")),
            }
        } else if platform_restart == Some(false) {
            self.stop(index);
        }
    }
}

/// What a poll entry belongs to.
#[derive(Clone, Copy)]
enum Watched {
    Wake,
    Exit(usize),
    Output(usize),
    Control(usize),
}

/// The launcher thread: wait for process ends, output and control
/// messages; act on them.
fn supervise(shared: Arc<Shared>) {
    loop {
        let (mut fds, owners) = {
            let state = shared.state.lock().expect("launcher state");
            if state.shutting_down || state.power_off.is_some() {
                return;
            }
            let mut fds = vec![sys::pollfd(shared.wake.as_raw_fd())];
            let mut owners = vec![Watched::Wake];
            for (index, slot) in state.slots.iter().enumerate() {
                if let Some(process) = &slot.process {
                    fds.push(sys::pollfd(process.pidfd.as_raw_fd()));
                    owners.push(Watched::Exit(index));
                    for fd in [
                        process.stdout.as_ref().map(|s| s.as_raw_fd()),
                        process.stderr.as_ref().map(|s| s.as_raw_fd()),
                        process.serial.as_ref().map(|s| s.as_raw_fd()),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        fds.push(sys::pollfd(fd));
                        owners.push(Watched::Output(index));
                    }
                }
                if let Some(control) = &slot.control {
                    fds.push(sys::pollfd(control.as_raw_fd()));
                    owners.push(Watched::Control(index));
                }
            }
            (fds, owners)
        };
        if sys::poll(&mut fds, None).is_err() {
            return;
        }
        let mut state = shared.state.lock().expect("launcher state");
        // Output and control first, so a dying process's last words and
        // its panic report are in before its exit is handled.
        for pass in 0..2 {
            for (pollfd, owner) in fds.iter().zip(&owners) {
                if pollfd.revents == 0 {
                    continue;
                }
                match (pass, *owner) {
                    (0, Watched::Wake) => {
                        sys::eventfd_take(pollfd.fd);
                    }
                    (0, Watched::Output(index)) => {
                        if let Some(mut process) = state.slots[index].process.take() {
                            state.collect_output(index, &mut process, false);
                            state.slots[index].process = Some(process);
                        }
                    }
                    (0, Watched::Control(index)) => state.handle_control(index),
                    (1, Watched::Exit(index))
                        if !state.shutting_down && state.power_off.is_none() =>
                    {
                        state.reap(index);
                    }
                    _ => {}
                }
            }
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// Build the host binaries of `packages` for the system `description`
/// with cargo (debug, or release) and return the folder that holds them.
///
/// Component identifiers are generated from the description being built
/// (`SYSTEM_DESCRIPTION`), so a component shared by two systems (the
/// console) differs between them. Cargo builds every description in one
/// shared folder (`<target>/hosted/.build`): the dependencies are compiled
/// once, and a change of description recompiles only the crates whose
/// build scripts read it (a few seconds). The binaries are then copied
/// into the description's own folder (`<target>/hosted/<description
/// name>/<profile>`), where its systems start them, so a later build for
/// another description never changes a running system's programs. A lock
/// file keeps each build and its copy together across processes.
pub fn build_components(
    workspace: &Path,
    description: &Path,
    packages: &[String],
    release: bool,
) -> io::Result<PathBuf> {
    let description = if description.is_absolute() {
        description.to_path_buf()
    } else {
        workspace.join(description)
    };
    let binaries = hosted_target_dir(workspace, &description).join(profile_folder(release));
    if packages.is_empty() {
        return Ok(binaries);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).arg("build").arg("--quiet");
    let mut unique: Vec<&String> = packages.iter().collect();
    unique.sort();
    unique.dedup();
    for package in &unique {
        command.arg("-p").arg(package);
    }
    let outputs: Vec<&str> = unique.iter().map(|p| p.as_str()).collect();
    build_shared(
        workspace,
        &description,
        command,
        release,
        &outputs,
        &binaries,
    )
    .map_err(|e| other(format!("building the components failed: {e}")))?;
    Ok(binaries)
}

/// `debug` or `release`: cargo's folder for the profile.
pub(crate) fn profile_folder(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

/// Run the cargo build `command` for `description` in the shared hosted
/// build folder, holding its lock, then copy the binaries `outputs` into
/// `into` (each through a temporary name and a rename: a process started
/// from the old file keeps it).
pub(crate) fn build_shared(
    workspace: &Path,
    description: &Path,
    mut command: Command,
    release: bool,
    outputs: &[&str],
    into: &Path,
) -> io::Result<()> {
    let shared = hosted_build_dir(workspace);
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(into)?;
    let lock = std::fs::File::create(shared.join("description.lock"))?;
    lock.lock()?;
    command
        .env("CARGO_TARGET_DIR", &shared)
        .env("SYSTEM_DESCRIPTION", description);
    if release {
        command.arg("--release");
    }
    let status = command.status()?;
    if !status.success() {
        return Err(other(format!("cargo: {status}")));
    }
    let built = shared.join(profile_folder(release));
    for output in outputs {
        let temporary = into.join(format!(".{output}.new"));
        std::fs::copy(built.join(output), &temporary)?;
        std::fs::rename(&temporary, into.join(output))?;
    }
    Ok(())
}

/// The folder that holds the binaries built for one description.
pub fn hosted_target_dir(workspace: &Path, description: &Path) -> PathBuf {
    hosted_base(workspace).join(description_folder(description))
}

/// Cargo's target folder for every description's hosted build (a name
/// no description folder can have: those never start with a dot).
fn hosted_build_dir(workspace: &Path) -> PathBuf {
    hosted_base(workspace).join(".build")
}

fn hosted_base(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("hosted")
}

/// A folder name for a description: its file stem, made safe.
fn description_folder(description: &Path) -> String {
    let stem = description
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "system".into());
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use system_layout::{RegionLayout, LAYOUT_VERSION};

    fn region(name: &str, size: u64, host_visible: bool) -> RegionLayout {
        RegionLayout {
            name: name.into(),
            size,
            host_visible,
            physical: None,
        }
    }

    #[test]
    fn host_visible_regions_are_carved_from_guest_memory_above_gpa_zero() {
        let layout = SystemLayout {
            version: LAYOUT_VERSION,
            components: Vec::new(),
            regions: vec![
                region("private", 8192, false),
                region("synic", 8192, true),
                region("ring", 4096, true),
            ],
            devices: Vec::new(),
            platform: Default::default(),
        };
        let (memory, map, fds) = create_regions(&layout).unwrap();
        assert!(memory.is_some());
        assert_eq!(
            map,
            vec![
                ("synic".to_string(), 4096, 8192),
                ("ring".to_string(), 12288, 4096)
            ]
        );
        assert_eq!(fds.len(), 3);
        assert_eq!((fds[0].1, fds[1].1, fds[2].1), (0, 4096, 12288));
        // Bytes written through a region's descriptor land at its GPA.
        let ring = sys::map_shared(&fds[2].0, fds[2].1, 4096, true, false).unwrap();
        let whole = sys::map_shared(memory.as_ref().unwrap(), 0, 16384, false, false).unwrap();
        // SAFETY: both mappings were just made, 4096 and 16384 bytes long,
        // and live until the process ends.
        unsafe {
            ring.write_volatile(0x42);
            assert_eq!(whole.add(12288).read_volatile(), 0x42);
        }
    }

    #[test]
    fn without_host_visible_regions_there_is_no_guest_memory() {
        let layout = SystemLayout {
            version: LAYOUT_VERSION,
            components: Vec::new(),
            regions: vec![region("private", 4096, false)],
            devices: Vec::new(),
            platform: Default::default(),
        };
        let (memory, map, fds) = create_regions(&layout).unwrap();
        assert!(memory.is_none() && map.is_empty());
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn device_memory_is_refused_to_a_component_it_would_run() {
        let mut framebuffer = region("vga_lfb", 4096, false);
        framebuffer.physical = Some(0xfd00_0000);
        let component = system_layout::ComponentLayout {
            name: "viewer".into(),
            package: "viewer".into(),
            priority: 100,
            supervisor: None,
            platform_supervised: false,
            children: Vec::new(),
            stack_pages: 4,
            may_power_off: false,
            maps: vec![system_layout::MapLayout {
                name: "vga_lfb".into(),
                region: 0,
                writable: true,
                double: false,
                vaddr: 0,
                address_only: false,
            }],
            channels: Vec::new(),
            irqs: Vec::new(),
            ioports: Vec::new(),
            console: None,
            hypervisor: false,
            simulated_host: false,
        };
        let layout = SystemLayout {
            version: LAYOUT_VERSION,
            components: vec![component],
            regions: vec![framebuffer],
            devices: Vec::new(),
            platform: Default::default(),
        };
        let error = match System::launch(layout, LaunchOptions::new("/nonexistent")) {
            Ok(_) => panic!("a device region was mapped hosted"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("region `vga_lfb` is device memory (physical 0xfd000000)"),
            "{error}"
        );
    }

    #[test]
    fn description_folders_are_safe_names() {
        assert_eq!(description_folder(Path::new("/a/b/system.toml")), "system");
        assert_eq!(
            description_folder(Path::new("x/my sys.v2.toml")),
            "my_sys_v2"
        );
    }
}
