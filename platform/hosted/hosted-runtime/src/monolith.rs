//! The monolithic hosted build: every component of a description in ONE
//! process, each on its own thread, for measuring what isolation costs
//! (`cargo xtask hosted --monolithic`, `cargo xtask bench-isolation`).
//!
//! The components are the same crates, built with the same description's
//! identifiers, linked as libraries into one generated binary
//! ([`build_monolith`] writes it: its `main` calls [`run`] with one
//! [`Entry`] per component package). What differs from the isolated
//! runtime is only the platform underneath [`Env`]:
//!
//! - a notification sets a bit in the receiver's pending word and wakes
//!   its thread (a mutex and a condition variable: no system call unless
//!   the thread sleeps);
//! - a protected call is a direct call into the server's `protected` on
//!   the caller's thread, with the server's lock held (so it is serialised
//!   with the server's own handlers, as a protection domain's entries are);
//! - regions are the same memfd shared memory mapped once per map, with
//!   the map's rights, double maps mapped twice back to back;
//! - the simulated host stays its own process on the hypervisor transport
//!   (it is the hypervisor, not part of the guest); its end for synic runs
//!   in-process: synic's calls are served on synic's thread over the
//!   transport, and a watcher thread turns INTERRUPT records into
//!   notifications.
//!
//! There is no isolation: a component that panics or faults takes the
//! whole process down (the profile aborts on panic), supervisors are never
//! told of a fault, and a wild write of one component can corrupt another.
//! That is the point of the comparison.
//!
//! Trusts: the layout (validated by `sysdesc`). Does not trust the host:
//! the transport client checks what it sends.

use crate::ioport::PortRange;
use crate::simulated_host::{self, HostSource, HOST_LOST_CODE};
use crate::sys;
use component_api::{
    CallError, Channel, ChannelSet, Child, Component, Env, IoPortName, Refusal, Region,
    RegionAddress, RegionName, SupervisorError, MAX_MESSAGE,
};
use hv_interface::hosted::HostedHypervisor;
use hv_interface::Hypervisor;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use system_layout::{ChannelKind, ComponentLayout, SystemLayout};

/// What the runtime calls on a running component (the object-safe part of
/// [`Component`]).
pub trait Hosted: Send {
    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet);
    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal>;
}

struct Wrapped<C>(C);

impl<C: Component + Send> Hosted for Wrapped<C> {
    fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
        self.0.notified(env, channels)
    }
    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        self.0.protected(env, channel, message, reply)
    }
}

/// One component package of the monolith: its name and how to start it.
pub struct Entry {
    pub package: &'static str,
    start: fn(&mut dyn Env) -> Box<dyn Hosted>,
}

fn start_component<C: Component + Send + 'static>(env: &mut dyn Env) -> Box<dyn Hosted> {
    Box::new(Wrapped(C::init(env)))
}

/// The entry of package `package`, whose component type is `C`.
pub fn entry<C: Component + Send + 'static>(package: &'static str) -> Entry {
    Entry {
        package,
        start: start_component::<C>,
    }
}

/// Notifications waiting for a component, and supervisor requests.
#[derive(Default)]
struct Inbox {
    pending: u64,
    /// Its supervisor asked for a new incarnation.
    restart: bool,
    /// Stopped by its supervisor: notifications are kept, not delivered.
    stopped: bool,
}

struct Running {
    component: Box<dyn Hosted>,
    env: MonoEnv,
}

struct Slot {
    layout: ComponentLayout,
    inbox: Mutex<Inbox>,
    woken: Condvar,
    /// `None` while it starts, or once stopped; callers wait on `ready`.
    running: Mutex<Option<Running>>,
    ready: Condvar,
}

struct World {
    start_ns: u64,
    slots: Vec<Slot>,
    /// Regions per component, by map index (built once, shared by its
    /// incarnations: their contents persist across a restart).
    regions: Vec<Vec<Granted>>,
    power_off: Mutex<Option<u8>>,
    powered_off: Condvar,
    /// Serialises whole lines on stdout.
    output: Mutex<()>,
}

impl World {
    fn print_line(&self, line: &str) {
        let _guard = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        if !line.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }

    fn power_off(&self, code: u8, why: &str) {
        let mut power = self.power_off.lock().unwrap_or_else(|e| e.into_inner());
        if power.is_none() {
            self.print_line(&format!("[monolith] {why}"));
            *power = Some(code);
            self.powered_off.notify_all();
        }
    }

    fn notify(&self, component: usize, end: u8) {
        let Some(slot) = self.slots.get(component) else {
            return;
        };
        lock(&slot.inbox).pending |= 1u64 << end;
        // Woken after the lock is released, so the receiver does not wake
        // only to wait for it.
        slot.woken.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A component that panicked aborted the process: a poisoned lock is
    // never seen, but must not be a second panic either.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy)]
enum Granted {
    Mapped(Region),
    AddressOnly(Option<RegionAddress>),
}

/// One component's [`Env`] in the monolith.
pub struct MonoEnv {
    world: Arc<World>,
    index: usize,
    ports: Vec<PortRange>,
    call_reply: Vec<u8>,
}

impl MonoEnv {
    fn layout(&self) -> &ComponentLayout {
        &self.world.slots[self.index].layout
    }

    fn write_output(&self, text: &str) {
        let name = &self.layout().name;
        for line in text.lines() {
            self.world.print_line(&format!("[{name}] {line}"));
        }
    }
}

impl Env for MonoEnv {
    fn notify(&mut self, channel: Channel) {
        let target = self
            .layout()
            .channels
            .iter()
            .find(|c| c.id == channel.0 && c.kind == ChannelKind::Notify)
            .map(|c| (c.peer as usize, c.peer_id));
        if let Some((peer, end)) = target {
            self.world.notify(peer, end);
        }
    }

    fn ppcall(
        &mut self,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, CallError> {
        let Some((peer, peer_end)) = self
            .layout()
            .channels
            .iter()
            .find(|c| c.id == channel.0 && c.kind == ChannelKind::CallClient)
            .map(|c| (c.peer as usize, c.peer_id))
        else {
            return Err(CallError::NotACallChannel);
        };
        if message.len() > MAX_MESSAGE {
            return Err(CallError::MessageTooLarge);
        }
        let world = Arc::clone(&self.world);
        let server = &world.slots[peer];
        let mut running = lock(&server.running);
        // A server still in its `init`, or being restarted, is waited for
        // (its socket would hold the request in the isolated build); a
        // stopped one fails the call at once.
        loop {
            let (stopped, restarting) = {
                let inbox = lock(&server.inbox);
                (inbox.stopped && !inbox.restart, inbox.restart)
            };
            if stopped {
                return Err(CallError::ServerFaulted);
            }
            if running.is_some() && !restarting {
                break;
            }
            running = server
                .ready
                .wait_timeout(running, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let running = running.as_mut().expect("checked above");
        let buffer = &mut self.call_reply;
        let answer = running.component.protected(
            &mut running.env,
            Channel(peer_end),
            message,
            &mut buffer[..MAX_MESSAGE],
        );
        match answer {
            Ok(len) => {
                let len = len.min(MAX_MESSAGE);
                if len > reply.len() {
                    return Err(CallError::MessageTooLarge);
                }
                reply[..len].copy_from_slice(&buffer[..len]);
                Ok(len)
            }
            Err(refusal) => Err(CallError::Refused(refusal.0)),
        }
    }

    fn irq_ack(&mut self, _channel: Channel) {}

    fn region(&self, region: RegionName) -> Region {
        let name = &self.layout().name;
        match self.world.regions[self.index].get(region.0 as usize) {
            Some(Granted::Mapped(region)) => *region,
            Some(Granted::AddressOnly(_)) => {
                panic!("{name}: region {} is granted by address only", region.0)
            }
            None => panic!("{name}: no region with index {}", region.0),
        }
    }

    fn region_address(&self, region: RegionName) -> Option<RegionAddress> {
        match self.world.regions[self.index].get(region.0 as usize)? {
            Granted::Mapped(region) => Some(RegionAddress {
                guest_physical: region.guest_physical()?,
                len: region.len(),
            }),
            Granted::AddressOnly(address) => *address,
        }
    }

    fn ioport_read(&mut self, port: IoPortName, offset: u16, width: u8) -> u32 {
        match self.ports.get_mut(port.0 as usize) {
            Some(range) => range.read(offset, width),
            None => u32::MAX,
        }
    }

    fn ioport_write(&mut self, port: IoPortName, offset: u16, width: u8, value: u32) {
        let Some(range) = self.ports.get_mut(port.0 as usize) else {
            return;
        };
        let effect = range.write(offset, width, value);
        if let Some(line) = effect.output {
            // The machine's console: printed as it is.
            let text = String::from_utf8_lossy(&line);
            self.world.print_line(text.trim_end_matches(['\n', '\r']));
        }
        if let Some(line) = effect.raise_irq {
            let channel = self
                .layout()
                .irqs
                .iter()
                .find(|i| i.line() == Some(line))
                .map(|i| i.channel);
            if let Some(channel) = channel {
                self.world.notify(self.index, channel);
            }
        }
    }

    fn console(&mut self, text: &str) {
        let Some(id) = self.layout().console else {
            self.write_output(text);
            return;
        };
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(component_api::console::CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            let mut message = [0u8; MAX_MESSAGE];
            let mut reply = [0u8; 16];
            let sent = component_api::console::message(&mut message, chunk.as_bytes())
                .map_err(|_| CallError::Encoding)
                .and_then(|used| self.ppcall(Channel(id), &message[..used], &mut reply));
            if sent.is_err() {
                self.write_output(chunk);
            }
            rest = tail;
        }
    }

    fn restart(&mut self, child: Child) -> Result<(), SupervisorError> {
        let target = self.child_index(child)?;
        let slot = &self.world.slots[target];
        // The child's own thread builds the new incarnation (its `init` may
        // call us, its supervisor, whose handler is running now).
        let mut inbox = lock(&slot.inbox);
        inbox.restart = true;
        inbox.stopped = false;
        slot.woken.notify_one();
        Ok(())
    }

    fn stop(&mut self, child: Child) -> Result<(), SupervisorError> {
        let target = self.child_index(child)?;
        let slot = &self.world.slots[target];
        // The child's own thread drops it (the child may be in a call to
        // us right now, holding its own lock): from now on calls to it
        // fail and notifications wait.
        let mut inbox = lock(&slot.inbox);
        inbox.stopped = true;
        inbox.restart = false;
        drop(inbox);
        slot.woken.notify_one();
        Ok(())
    }

    fn power_off(&mut self, code: u8) {
        if self.layout().may_power_off {
            let why = format!("{} powered the system off ({code})", self.layout().name);
            self.world.power_off(code, &why);
        }
    }

    fn now_ns(&mut self) -> u64 {
        sys::monotonic_ns().saturating_sub(self.world.start_ns)
    }

    fn time_stamp_counter(&mut self) -> Option<component_api::TimeStampCounter> {
        sys::time_stamp_counter().map(|ticks| component_api::TimeStampCounter {
            ticks,
            ticks_per_second: 0,
        })
    }
}

impl MonoEnv {
    fn child_index(&self, child: Child) -> Result<usize, SupervisorError> {
        self.layout()
            .children
            .get(child.0 as usize)
            .map(|c| *c as usize)
            .ok_or(SupervisorError::NotMyChild)
    }
}

/// The host component's end for synic: the transport to the host process.
struct HostEnd {
    hypervisor: Arc<Mutex<HostedHypervisor>>,
    interrupt_ends: Vec<Channel>,
}

impl HostEnd {
    /// Deliver every interrupt record already received (edge events:
    /// synic scans its pages, one notification covers them all).
    fn take_interrupts(hypervisor: &mut HostedHypervisor) -> Result<bool, String> {
        let mut any = false;
        loop {
            match hypervisor.wait_interrupt(Some(0)) {
                Ok(Some(_)) => any = true,
                Ok(None) => return Ok(any),
                Err(_) => {
                    return Err(hypervisor
                        .failure()
                        .unwrap_or("the transport failed")
                        .to_string())
                }
            }
        }
    }
}

impl Hosted for HostEnd {
    fn notified(&mut self, _env: &mut dyn Env, _channels: ChannelSet) {}

    fn protected(
        &mut self,
        env: &mut dyn Env,
        _channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        let mut hypervisor = lock(&self.hypervisor);
        let answer = simulated_host::serve_hypervisor(&mut hypervisor, message, reply);
        // Interrupts may have arrived with the reply.
        if let Ok(true) = HostEnd::take_interrupts(&mut hypervisor) {
            for end in &self.interrupt_ends {
                env.notify(*end);
            }
        }
        answer
    }
}

/// How the monolith binary is started (its command line).
#[derive(Debug, Default)]
struct Options {
    layout: Option<PathBuf>,
    host: Option<PathBuf>,
    host_socket: Option<PathBuf>,
    host_args: Vec<String>,
}

const USAGE: &str =
    "usage: MONOLITH --layout FILE [--host PROGRAM | --host-socket PATH] [--host-arg ARG].. \
(written and started by `cargo xtask hosted --monolithic`)";

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--layout" => options.layout = Some(value("--layout")?.into()),
            "--host" => options.host = Some(value("--host")?.into()),
            "--host-socket" => options.host_socket = Some(value("--host-socket")?.into()),
            "--host-arg" => options.host_args.push(value("--host-arg")?),
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    Ok(options)
}

/// The body of the generated monolith's `main`: run the description's
/// components (`entries`: one per package) as threads of this process.
/// Exits with the code a component powers the system off with (4 when
/// the host is lost).
pub fn run(entries: &[Entry]) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run_system(entries, &args) {
        Ok(code) => std::process::exit(i32::from(code)),
        Err(error) => {
            eprintln!("[monolith] {error}");
            std::process::exit(2);
        }
    }
}

fn run_system(entries: &[Entry], args: &[String]) -> Result<u8, String> {
    let options = parse_options(args)?;
    let layout_path = options.layout.ok_or_else(|| USAGE.to_string())?;
    let bytes = std::fs::read(&layout_path)
        .map_err(|e| format!("cannot read {}: {e}", layout_path.display()))?;
    let layout = SystemLayout::decode(&bytes).map_err(|e| format!("bad layout: {e}"))?;
    let source = match (options.host_socket, options.host) {
        (Some(socket), _) => Some(HostSource::Socket(socket)),
        (None, Some(program)) => Some(HostSource::Program {
            program,
            args: options.host_args,
        }),
        (None, None) => None,
    };
    let (world, host_console) = launch(entries, &layout, source.as_ref())?;
    forward_operator_commands(host_console);
    let mut power = lock(&world.power_off);
    loop {
        if let Some(code) = *power {
            return Ok(code);
        }
        power = world
            .powered_off
            .wait(power)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// The host's operator console, if the monolith started the host.
type Console = Option<simulated_host::HostConsole>;

/// Map the regions, start the host (if any) and each component's thread.
fn launch(
    entries: &[Entry],
    layout: &SystemLayout,
    source: Option<&HostSource>,
) -> Result<(Arc<World>, Console), String> {
    let (guest_memory, guest_map, region_fds) =
        crate::launcher::create_regions(layout).map_err(|e| format!("regions: {e}"))?;
    let mut regions = Vec::new();
    for component in &layout.components {
        let mut granted = Vec::new();
        for map in &component.maps {
            let region = &layout.regions[map.region as usize];
            // Device memory is the seL4 image's (the launcher says why).
            if let (Some(physical), false) = (region.physical, component.simulated_host) {
                return Err(format!(
                    "{}: region `{}` is device memory (physical {physical:#x}), which only the seL4 image has; hosted it cannot be mapped",
                    component.name, region.name
                ));
            }
            let (fd, offset) = &region_fds[map.region as usize];
            let guest_physical = region.host_visible.then_some(*offset);
            let size = region.size as usize;
            if map.address_only {
                granted.push(Granted::AddressOnly(guest_physical.map(|gpa| {
                    RegionAddress {
                        guest_physical: gpa,
                        len: size,
                    }
                })));
                continue;
            }
            let fd = if map.writable {
                sys::dup(fd)
            } else {
                sys::reopen_read_only(fd)
            }
            .map_err(|e| format!("{}: {e}", component.name))?;
            let base = sys::map_shared(&fd, *offset, size, map.writable, map.double)
                .map_err(|e| format!("{}: cannot map {}: {e}", component.name, map.name))?;
            // SAFETY: just mapped, never unmapped, with these rights, and a
            // guard page after it (`sys::map_shared`).
            let mapped =
                unsafe { Region::new(base, size, map.writable, map.double).with_guard_page() };
            granted.push(Granted::Mapped(match guest_physical {
                Some(gpa) => mapped.with_guest_physical(gpa),
                None => mapped,
            }));
        }
        regions.push(granted);
    }
    let world = Arc::new(World {
        start_ns: sys::monotonic_ns(),
        slots: layout
            .components
            .iter()
            .map(|c| Slot {
                layout: c.clone(),
                inbox: Mutex::new(Inbox::default()),
                woken: Condvar::new(),
                running: Mutex::new(None),
                ready: Condvar::new(),
            })
            .collect(),
        regions,
        power_off: Mutex::new(None),
        powered_off: Condvar::new(),
        output: Mutex::new(()),
    });
    let new_env = |index: usize| MonoEnv {
        world: Arc::clone(&world),
        index,
        ports: layout.components[index]
            .ioports
            .iter()
            .map(|p| PortRange::new(p.base, p.size))
            .collect(),
        call_reply: vec![0; MAX_MESSAGE],
    };
    let mut host_console = None;
    for (index, component) in layout.components.iter().enumerate() {
        if component.simulated_host {
            let Some(source) = source else {
                // No host: as the launcher, the component is not started
                // (calls to it fail as to a server that is down).
                lock(&world.slots[index].inbox).stopped = true;
                continue;
            };
            let memory = guest_memory
                .as_ref()
                .ok_or("a simulated host needs host-visible regions (guest memory)")?;
            let size = guest_map
                .last()
                .map(|(_, gpa, size)| gpa + size)
                .unwrap_or(0);
            let path = PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                memory.as_raw_fd()
            ));
            host_console = Some(start_host(
                &world,
                index,
                new_env(index),
                source,
                (path, size),
            )?);
            continue;
        }
        let entry = entries
            .iter()
            .find(|e| e.package == component.package)
            .ok_or_else(|| format!("no entry for package {}", component.package))?;
        let start = entry.start;
        let env = new_env(index);
        let thread_world = Arc::clone(&world);
        std::thread::Builder::new()
            .name(component.name.clone())
            .stack_size(8 << 20)
            .spawn(move || component_thread(thread_world, index, env, start))
            .map_err(|e| format!("cannot start {}: {e}", component.name))?;
    }
    Ok((world, host_console.flatten()))
}

/// A component's thread: `init`, then each batch of notifications, and a
/// new incarnation when its supervisor asks.
fn component_thread(
    world: Arc<World>,
    index: usize,
    env: MonoEnv,
    start: fn(&mut dyn Env) -> Box<dyn Hosted>,
) {
    let slot = &world.slots[index];
    let mut env = Some(env);
    let incarnate = |env: MonoEnv| {
        let mut env = env;
        let component = start(&mut env);
        *lock(&slot.running) = Some(Running { component, env });
        slot.ready.notify_all();
    };
    incarnate(env.take().expect("first start"));
    loop {
        let (channels, restart) = {
            let mut inbox = lock(&slot.inbox);
            loop {
                if inbox.restart {
                    // Cleared only once the old incarnation is gone, so no
                    // call reaches it after the supervisor's restart.
                    break (0, true);
                }
                if inbox.stopped {
                    // Stopped by its supervisor: the incarnation ends here
                    // (a later restart builds a new one). The inbox lock is
                    // never held while taking `running` (a caller waiting
                    // for a starting server holds them the other way).
                    drop(inbox);
                    let ended = lock(&slot.running).take();
                    drop(ended);
                    inbox = lock(&slot.inbox);
                    if inbox.stopped && !inbox.restart {
                        inbox = slot.woken.wait(inbox).unwrap_or_else(|e| e.into_inner());
                    }
                    continue;
                } else if inbox.pending != 0 {
                    break (std::mem::take(&mut inbox.pending), false);
                }
                inbox = slot.woken.wait(inbox).unwrap_or_else(|e| e.into_inner());
            }
        };
        if restart {
            // A fresh environment on the same regions (their contents stay).
            let old = lock(&slot.running).take();
            lock(&slot.inbox).restart = false;
            let env = match old {
                Some(running) => running.env,
                None => MonoEnv {
                    world: Arc::clone(&world),
                    index,
                    ports: slot
                        .layout
                        .ioports
                        .iter()
                        .map(|p| PortRange::new(p.base, p.size))
                        .collect(),
                    call_reply: vec![0; MAX_MESSAGE],
                },
            };
            incarnate(env);
            continue;
        }
        let mut running = lock(&slot.running);
        if let Some(running) = running.as_mut() {
            running
                .component
                .notified(&mut running.env, ChannelSet(channels));
        }
    }
}

/// Start (or reach) the host process, install its in-process end as the
/// `simulated_host` component, and watch the transport for interrupts and
/// the host's end. Returns the operator console of a host we started.
fn start_host(
    world: &Arc<World>,
    index: usize,
    env: MonoEnv,
    source: &HostSource,
    guest_memory: (PathBuf, u64),
) -> Result<Option<simulated_host::HostConsole>, String> {
    let name = world.slots[index].layout.name.clone();
    let (mut child, socket, folder) = match source {
        HostSource::Program { program, args } => {
            let folder = std::env::temp_dir().join(format!("monolith-{}-host", std::process::id()));
            std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
            let socket = folder.join("host.sock");
            let child =
                simulated_host::spawn_host(program, &socket, args).map_err(|e| e.to_string())?;
            (Some(child), socket, Some(folder))
        }
        HostSource::Socket(path) => (None, path.clone(), None),
    };
    let hypervisor = simulated_host::connect(child.as_mut(), &socket)
        .and_then(|stream| {
            HostedHypervisor::handshake(stream, &guest_memory.0, guest_memory.1)
                .map_err(|e| io::Error::other(format!("hypervisor handshake failed: {e:?}")))
        })
        .map_err(|e| format!("the host: {e}"))?;
    if let Some(folder) = folder {
        let _ = std::fs::remove_dir_all(folder);
    }
    let hv_fd = hypervisor.raw_fd();
    let hypervisor = Arc::new(Mutex::new(hypervisor));
    let interrupt_ends: Vec<Channel> = world.slots[index]
        .layout
        .channels
        .iter()
        .filter(|c| c.kind == ChannelKind::Notify)
        .map(|c| Channel(c.id))
        .collect();
    let end = HostEnd {
        hypervisor: Arc::clone(&hypervisor),
        interrupt_ends,
    };
    *lock(&world.slots[index].running) = Some(Running {
        component: Box::new(end),
        env,
    });
    world.slots[index].ready.notify_all();
    let (answers_to, answers) = std::sync::mpsc::channel::<String>();
    let mut console = None;
    if let Some(child) = child.as_mut() {
        for (stream, reader) in [
            (
                0,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
            ),
            (
                1,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
            ),
        ] {
            let Some(reader) = reader else { continue };
            let world = Arc::clone(world);
            let name = name.clone();
            let answers_to = answers_to.clone();
            std::thread::Builder::new()
                .name(format!("{name}-output"))
                .spawn(move || {
                    for line in io::BufReader::new(reader).lines() {
                        let Ok(line) = line else { break };
                        if stream == 0 {
                            let _ = answers_to.send(line.clone());
                        }
                        world.print_line(&format!("[{name}] {line}"));
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        if let Some(stdin) = child.stdin.take() {
            console = Some(simulated_host::HostConsole::new(stdin, answers));
        }
    }
    let pidfd = match &child {
        Some(child) => Some(sys::pidfd_open(child.id()).map_err(|e| e.to_string())?),
        None => None,
    };
    // Where each interrupt end of the host component leads (synic's ends).
    let targets: Vec<(usize, u8)> = world.slots[index]
        .layout
        .channels
        .iter()
        .filter(|c| c.kind == ChannelKind::Notify)
        .map(|c| (c.peer as usize, c.peer_id))
        .collect();
    let watcher_world = Arc::clone(world);
    std::thread::Builder::new()
        .name(format!("{name}-interrupts"))
        .spawn(move || {
            let _child = child;
            let why = loop {
                let mut fds = vec![sys::pollfd(hv_fd)];
                if let Some(pidfd) = &pidfd {
                    fds.push(sys::pollfd(pidfd.as_raw_fd()));
                }
                if sys::poll(&mut fds, None).is_err() {
                    break "polling the transport failed".to_string();
                }
                if fds.get(1).is_some_and(|f| f.revents != 0) {
                    break "the host process ended".to_string();
                }
                if fds[0].revents == 0 {
                    continue;
                }
                let taken = HostEnd::take_interrupts(&mut lock(&hypervisor));
                match taken {
                    Ok(true) => {
                        for (peer, end) in &targets {
                            watcher_world.notify(*peer, *end);
                        }
                    }
                    Ok(false) => {}
                    Err(why) => break why,
                }
            };
            watcher_world.power_off(
                HOST_LOST_CODE,
                &format!(
                    "the hypervisor host ({}) is gone: {why}; powering off with code {HOST_LOST_CODE}",
                    watcher_world.slots[index].layout.name
                ),
            );
        })
        .map_err(|e| e.to_string())?;
    Ok(console)
}

/// Each stdin line of the monolith goes to the host as an operator
/// command (as `cargo xtask hosted` does); its answer shows as a host line.
fn forward_operator_commands(console: Option<simulated_host::HostConsole>) {
    let Some(mut console) = console else { return };
    let _ = std::thread::Builder::new()
        .name("operator".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                if let Err(error) = console.command(&line, Duration::from_secs(5)) {
                    println!("[monolith] {error}");
                }
            }
        });
}

/// Write, build and return the monolith binary of `description`: a crate
/// under `<target>/hosted/<description>/monolith/` that depends on every
/// component package of `layout` as a library and starts each with the
/// type its `src/main.rs` names in `hosted_runtime::component_main!(..)`.
/// Built with the description's identifiers (`SYSTEM_DESCRIPTION`) in the
/// shared hosted build folder, as the isolated components are, and copied
/// beside them.
pub fn build_monolith(
    workspace: &Path,
    description: &Path,
    layout: &SystemLayout,
    release: bool,
) -> io::Result<PathBuf> {
    let description = if description.is_absolute() {
        description.to_path_buf()
    } else {
        workspace.join(description)
    };
    let target_dir = crate::launcher::hosted_target_dir(workspace, &description);
    let crate_dir = target_dir.join("monolith");
    std::fs::create_dir_all(crate_dir.join("src"))?;
    let packages = workspace_packages(workspace)?;
    let mut dependencies = String::new();
    let mut entries = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for component in layout.components.iter().filter(|c| !c.simulated_host) {
        if seen.contains(&component.package.as_str()) {
            continue;
        }
        seen.push(&component.package);
        let folder = packages
            .iter()
            .find(|(name, _)| *name == component.package)
            .map(|(_, folder)| folder)
            .ok_or_else(|| io::Error::other(format!("no package {}", component.package)))?;
        let main = std::fs::read_to_string(folder.join("src/main.rs"))?;
        let type_path = component_type(&main).ok_or_else(|| {
            io::Error::other(format!(
                "{}: src/main.rs has no hosted_runtime::component_main!(..)",
                component.package
            ))
        })?;
        dependencies.push_str(&format!(
            "{} = {{ path = {:?} }}\n",
            component.package,
            folder.display().to_string()
        ));
        entries.push_str(&format!(
            "        hosted_runtime::monolith::entry::<{type_path}>({:?}),\n",
            component.package
        ));
    }
    let root_manifest = std::fs::read_to_string(workspace.join("Cargo.toml"))?;
    let manifest = format!(
        "# Generated by hosted_runtime::monolith::build_monolith for {}. Do not edit.\n\
         [package]\nname = \"monolith\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\nhosted-runtime = {{ path = {:?} }}\n{dependencies}\n\
         # Its own workspace (it lives under target/), with the project's profiles.\n[workspace]\n\n{}",
        description.display(),
        workspace
            .join("platform/hosted/hosted-runtime")
            .display()
            .to_string(),
        profiles(&root_manifest)
    );
    let main = format!(
        "// Generated by hosted_runtime::monolith::build_monolith for {}. Do not edit.\n\
         fn main() {{\n    hosted_runtime::monolith::run(&[\n{entries}    ])\n}}\n",
        description.display()
    );
    write_if_changed(&crate_dir.join("Cargo.toml"), &manifest)?;
    write_if_changed(&crate_dir.join("src/main.rs"), &main)?;
    // The project's lock file, fresh each build: the same versions, no
    // resolution (cargo drops what this crate does not use).
    std::fs::copy(workspace.join("Cargo.lock"), crate_dir.join("Cargo.lock"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&crate_dir)
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"));
    let binaries = target_dir.join(crate::launcher::profile_folder(release));
    crate::launcher::build_shared(
        workspace,
        &description,
        command,
        release,
        &["monolith"],
        &binaries,
    )
    .map_err(|e| io::Error::other(format!("building the monolith failed: {e}")))?;
    Ok(binaries.join("monolith"))
}

fn write_if_changed(path: &Path, text: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// The type in a component binary's `hosted_runtime::component_main!(TYPE)`.
fn component_type(main_rs: &str) -> Option<String> {
    main_rs.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix("hosted_runtime::component_main!(")?;
        let inner = rest.strip_suffix(");")?.trim();
        Some(inner.trim_start_matches("crate::").to_string()).filter(|t| !t.is_empty())
    })
}

/// The `[profile.*]` sections of the workspace manifest, as they are.
fn profiles(manifest: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[profile.");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// (package name, folder) of every workspace member.
fn workspace_packages(workspace: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let manifest = std::fs::read_to_string(workspace.join("Cargo.toml"))?;
    let start = manifest
        .find("members = [")
        .ok_or_else(|| io::Error::other("no workspace members"))?;
    let list = &manifest[start..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    let mut packages = Vec::new();
    for member in list.split('"').skip(1).step_by(2) {
        let folder = workspace.join(member);
        let Ok(text) = std::fs::read_to_string(folder.join("Cargo.toml")) else {
            continue;
        };
        let name = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("name = \"")
                .and_then(|r| r.strip_suffix('"'))
        });
        if let Some(name) = name {
            packages.push((name.to_string(), folder));
        }
    }
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use system_layout::{ChannelEnd, RegionLayout, LAYOUT_VERSION};

    /// Incarnations of the test server so far (each `init` bumps it).
    static SERVER_STARTS: AtomicU32 = AtomicU32::new(0);
    /// What the test client saw, in order.
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn seen(what: String) {
        lock(&SEEN).push(what);
    }

    /// Answers a call with its incarnation number and the message's
    /// length; echoes each notification back.
    struct Server {
        incarnation: u32,
    }

    impl Component for Server {
        fn init(_env: &mut dyn Env) -> Self {
            Server {
                incarnation: SERVER_STARTS.fetch_add(1, Ordering::SeqCst) + 1,
            }
        }
        fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
            if channels.contains(Channel(1)) {
                env.notify(Channel(1));
            }
        }
        fn protected(
            &mut self,
            env: &mut dyn Env,
            _channel: Channel,
            message: &[u8],
            reply: &mut [u8],
        ) -> Result<usize, Refusal> {
            if message.is_empty() {
                return Err(Refusal::MALFORMED);
            }
            // Writes the shared region the client reads back.
            let _ = env.region(RegionName(0)).write(0, &[message.len() as u8]);
            reply[0] = self.incarnation as u8;
            Ok(1)
        }
    }

    /// Supervises the server: calls it, is notified back, stops and
    /// restarts it, and records what happened.
    struct Client;

    impl Client {
        fn call(env: &mut dyn Env, message: &[u8]) -> String {
            let mut reply = [0u8; 8];
            match env.ppcall(Channel(0), message, &mut reply) {
                Ok(len) => format!("reply {:?}", &reply[..len]),
                Err(error) => format!("{error:?}"),
            }
        }
    }

    impl Component for Client {
        fn init(env: &mut dyn Env) -> Self {
            seen(Client::call(env, b"abc"));
            let mut byte = [0u8; 1];
            let _ = env.region(RegionName(0)).read(0, &mut byte);
            seen(format!("region {}", byte[0]));
            seen(Client::call(env, b""));
            env.notify(Channel(1));
            Client
        }
        fn notified(&mut self, env: &mut dyn Env, channels: ChannelSet) {
            if !channels.contains(Channel(1)) {
                return;
            }
            seen("notified".into());
            let _ = env.stop(Child(0));
            seen(Client::call(env, b"x"));
            let _ = env.restart(Child(0));
            seen(Client::call(env, b"x"));
            seen("done".into());
        }
    }

    fn component(name: &str, index_of_peer: u8, server: bool) -> ComponentLayout {
        ComponentLayout {
            name: name.into(),
            package: name.into(),
            priority: if server { 200 } else { 100 },
            supervisor: server.then_some(1),
            platform_supervised: false,
            children: if server { vec![] } else { vec![0] },
            stack_pages: 4,
            may_power_off: false,
            maps: vec![system_layout::MapLayout {
                name: "shared".into(),
                region: 0,
                writable: true,
                double: false,
                vaddr: 0,
                address_only: false,
            }],
            channels: vec![
                ChannelEnd {
                    id: 0,
                    name: "call".into(),
                    kind: if server {
                        ChannelKind::CallServer
                    } else {
                        ChannelKind::CallClient
                    },
                    peer: index_of_peer,
                    peer_id: 0,
                },
                ChannelEnd {
                    id: 1,
                    name: "ping".into(),
                    kind: ChannelKind::Notify,
                    peer: index_of_peer,
                    peer_id: 1,
                },
            ],
            irqs: Vec::new(),
            ioports: Vec::new(),
            console: None,
            hypervisor: false,
            simulated_host: false,
        }
    }

    #[test]
    fn calls_notifications_regions_stop_and_restart_work_in_one_process() {
        let layout = SystemLayout {
            version: LAYOUT_VERSION,
            components: vec![component("server", 1, true), component("client", 0, false)],
            regions: vec![RegionLayout {
                name: "shared".into(),
                size: 4096,
                host_visible: false,
                physical: None,
            }],
            devices: Vec::new(),
            platform: Default::default(),
        };
        let entries = [entry::<Server>("server"), entry::<Client>("client")];
        let (_world, console) = launch(&entries, &layout, None).expect("launches");
        assert!(console.is_none());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !lock(&SEEN).iter().any(|s| s == "done") {
            assert!(std::time::Instant::now() < deadline, "{:?}", lock(&SEEN));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            *lock(&SEEN),
            vec![
                "reply [1]",
                "region 3",
                "Refused(1)",
                "notified",
                "ServerFaulted",
                // A new incarnation (its `init` ran again).
                "reply [2]",
                "done",
            ]
        );
    }

    #[test]
    fn the_component_type_comes_from_the_hosted_main_line() {
        let main = "#[cfg(target_os = \"none\")]\nsel4_runtime::component_main!(console::Console);\n\
                    #[cfg(not(target_os = \"none\"))]\nhosted_runtime::component_main!(console::Console);\n";
        assert_eq!(component_type(main).as_deref(), Some("console::Console"));
        assert_eq!(component_type("fn main() {}\n"), None);
    }

    #[test]
    fn only_profile_sections_are_copied() {
        let manifest = "[workspace]\nmembers = []\n[profile.release]\npanic = \"abort\"\n[workspace.lints.rust]\nx = 1\n[profile.dev]\nopt-level = 1\n";
        assert_eq!(
            profiles(manifest),
            "[profile.release]\npanic = \"abort\"\n[profile.dev]\nopt-level = 1\n"
        );
    }
}
