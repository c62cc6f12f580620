//! `ipc_harness`: component-level IPC tests on the hosted runtime.
//!
//! A test starts a system description (the whole system, or a part of it)
//! with [`Harness::builder`], plays some of its components itself
//! ([`Double`]: notify, await notifications, make and answer protected
//! calls, read and write its regions, receive fault reports and restart
//! children), kills component processes, and observes faults, restarts and
//! each component's output. Every wait has a timeout and wakes on the
//! event itself (poll on the descriptors, or the launcher's condition
//! variable); nothing sleeps in place of synchronisation.
//!
//! Component binaries are built for the host with cargo on first use (the
//! same target folder as the tests; `CARGO_TARGET_DIR` is respected).
//!
//! Trusts: the description files it is given. Writes: nothing on disk but
//! cargo's build output.
#![forbid(unsafe_code)]

pub mod expect;
pub mod monolith;

use component_api::{
    CallError, Channel, Child, Env, Fault, Refusal, Region, RegionAddress, RegionName,
};
use hosted_runtime::{build_components, LaunchOptions};
pub use hosted_runtime::{Endpoint, Event, FaultRecord, OutputSink, Status, System};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use system_layout::SystemLayout;

/// The default bound on a wait in tests: generous for a loaded machine,
/// never reached when things work (waits end on the event).
pub const WAIT: Duration = Duration::from_secs(20);

/// The workspace root (holding `system.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/harness sits two levels down")
        .to_path_buf()
}

/// (description, package, release) already built by this process, so
/// parallel tests do not run cargo again and again.
type BuiltSet = HashSet<(PathBuf, String, bool)>;
static BUILT: Mutex<Option<BuiltSet>> = Mutex::new(None);

fn ensure_built(description: &Path, packages: &[String], release: bool) -> Result<PathBuf, String> {
    // A benchmark's smoke run uses the builds the tests already made.
    let release = release && bench_record::optimised_builds();
    let root = workspace_root();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let set = built.get_or_insert_with(HashSet::new);
    let key = |p: &String| (description.to_path_buf(), p.clone(), release);
    let missing: Vec<String> = packages
        .iter()
        .filter(|p| !set.contains(&key(p)))
        .cloned()
        .collect();
    let dir = build_components(&root, description, &missing, release).map_err(|e| e.to_string())?;
    for package in &missing {
        set.insert(key(package));
    }
    Ok(dir)
}

/// The host binary of `package` as built for `description` (a path
/// relative to the workspace root), building it if needed: for a test that
/// starts a program itself, or names it as the host.
pub fn built_binary(description: &str, package: &str) -> Result<PathBuf, String> {
    built_binary_with(description, package, false)
}

/// [`built_binary`], optimised when `release` (benchmarks).
pub fn built_binary_with(
    description: &str,
    package: &str,
    release: bool,
) -> Result<PathBuf, String> {
    let description = workspace_root().join(description);
    let dir = ensure_built(&description, &[package.to_string()], release)?;
    Ok(dir.join(package))
}

/// How to start a system under test.
pub struct Builder {
    description: PathBuf,
    doubles: Vec<String>,
    omitted: Vec<String>,
    release: bool,
    print: bool,
    host_args: Vec<String>,
    host_program: Option<PathBuf>,
    host_socket: Option<PathBuf>,
}

impl Builder {
    /// Run this program as the hypervisor host instead of the
    /// description's `simulated_host` package (`PROGRAM --socket PATH
    /// ARGS..`, `docs/hypervisor-transport.md` section 7).
    pub fn host_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.host_program = Some(program.into());
        self
    }

    /// Connect to a hypervisor host already listening on `socket` instead
    /// of starting one.
    pub fn host_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.host_socket = Some(socket.into());
        self
    }

    /// Arguments for the simulated host process (after `--socket PATH`),
    /// e.g. `["--max-version", "4.0"]` or `["--events"]` (`docs/hvsim.md`).
    pub fn host_args(mut self, args: &[&str]) -> Self {
        self.host_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Play component `name` from the test (it is not started).
    pub fn double(mut self, name: &str) -> Self {
        self.doubles.push(name.to_string());
        self
    }

    /// Do not start component `name` (start it later with
    /// [`Harness::restart`]).
    pub fn omit(mut self, name: &str) -> Self {
        self.omitted.push(name.to_string());
        self
    }

    /// Build the component binaries optimised (benchmarks).
    pub fn release(mut self) -> Self {
        self.release = true;
        self
    }

    /// Also print the components' output as it comes (for debugging).
    pub fn print_output(mut self) -> Self {
        self.print = true;
        self
    }

    pub fn start(self) -> Result<Harness, String> {
        let layout = sysdesc::compile_file(&self.description).map_err(|d| d.to_string())?;
        // The simulated host (if any, and not played or omitted) runs as
        // its own process on the hypervisor transport: its package is
        // built too.
        let outside_host = self.host_program.is_some() || self.host_socket.is_some();
        let packages: Vec<String> = layout
            .components
            .iter()
            .filter(|c| !self.doubles.contains(&c.name) && !self.omitted.contains(&c.name))
            .filter(|c| !(c.simulated_host && outside_host))
            .map(|c| c.package.clone())
            .collect();
        let host = layout
            .components
            .iter()
            .find(|c| {
                c.simulated_host
                    && !self.doubles.contains(&c.name)
                    && !self.omitted.contains(&c.name)
            })
            .map(|c| c.package.clone());
        // Omitted components may be started later: build them too.
        let mut to_build = packages;
        for name in &self.omitted {
            if let Some(c) = layout.components.iter().find(|c| &c.name == name) {
                to_build.push(c.package.clone());
            }
        }
        let binary_dir = ensure_built(&self.description, &to_build, self.release)?;
        let mut options = LaunchOptions::new(&binary_dir);
        options.simulated_host = self
            .host_program
            .or_else(|| host.map(|package| binary_dir.join(package)));
        options.simulated_host_args = self.host_args;
        options.simulated_host_socket = self.host_socket;
        options.doubles = self.doubles;
        options.omitted = self.omitted;
        options.output = if self.print {
            OutputSink::PrintAndCapture
        } else {
            OutputSink::Capture
        };
        let system = System::launch(layout.clone(), options).map_err(|e| e.to_string())?;
        Ok(Harness { system, layout })
    }
}

/// A running system under test. Dropping it ends every component.
pub struct Harness {
    system: System,
    layout: SystemLayout,
}

impl Harness {
    /// Start from a description file, relative to the workspace root.
    pub fn builder(description: &str) -> Builder {
        Builder {
            description: workspace_root().join(description),
            doubles: Vec::new(),
            omitted: Vec::new(),
            release: false,
            print: false,
            host_args: Vec::new(),
            host_program: None,
            host_socket: None,
        }
    }

    pub fn system(&self) -> &System {
        &self.system
    }

    pub fn layout(&self) -> &SystemLayout {
        &self.layout
    }

    /// The test's handle on a component it plays (once per name).
    pub fn double(&self, name: &str) -> Double {
        let endpoint = self
            .system
            .take_double(name)
            .unwrap_or_else(|| panic!("`{name}` is not a double of this harness (or was taken)"));
        Double {
            endpoint,
            layout: self.layout.clone(),
            pending: Default::default(),
        }
    }

    /// Kill a component's process with SIGKILL, as a crash from outside.
    pub fn kill(&self, name: &str) {
        self.system
            .kill(name, libc_sigkill())
            .unwrap_or_else(|e| panic!("cannot kill `{name}`: {e}"));
    }

    /// Raise IRQ `irq` of component `name` (as its device would).
    pub fn raise_irq(&self, name: &str, irq: &str) {
        self.system
            .raise_irq(name, irq)
            .unwrap_or_else(|e| panic!("cannot raise {name}.{irq}: {e}"));
    }

    pub fn restart(&self, name: &str) {
        self.system
            .restart(name)
            .unwrap_or_else(|e| panic!("cannot restart `{name}`: {e}"));
    }

    /// The `n`th fault (from 1) of `name`, waiting for it; fails the test
    /// with the output so far if it does not come.
    pub fn expect_fault(&self, name: &str, n: usize) -> Fault {
        self.system
            .wait_for_fault(name, n, WAIT)
            .unwrap_or_else(|| self.fail(&format!("no fault #{n} of `{name}`")))
    }

    /// Wait until `name` was restarted `count` times in all.
    pub fn expect_restarts(&self, name: &str, count: u32) {
        if !self.system.wait_for_restarts(name, count, WAIT) {
            self.fail(&format!("`{name}` was not restarted {count} time(s)"));
        }
    }

    /// Wait for an output line containing `needle` at or after line
    /// `from`; returns the index after it (to continue from).
    pub fn expect_output(&self, needle: &str, from: usize) -> usize {
        match self.system.wait_for_output(needle, from, WAIT) {
            Some(index) => index + 1,
            None => self.fail(&format!("no output line containing {needle:?}")),
        }
    }

    /// Give the simulated host process an operator command and return its
    /// answer line (fails the test if it does not answer within [`WAIT`]).
    pub fn host(&self, command: &str) -> String {
        self.system
            .host_command(command, WAIT)
            .unwrap_or_else(|e| self.fail(&format!("host command {command:?}: {e}")))
    }

    /// Like [`Harness::expect_output`], also returning the line.
    pub fn expect_line(&self, needle: &str, from: usize) -> (usize, String) {
        let next = self.expect_output(needle, from);
        let line = self.system.output()[next - 1].clone();
        (next, line)
    }

    /// Fail the test, showing what the components printed.
    pub fn fail(&self, what: &str) -> ! {
        let output = self.system.output().join("\n");
        panic!("{what}\n--- component output ---\n{output}\n--- end ---");
    }
}

fn libc_sigkill() -> i32 {
    9
}

/// A component played by the test process. It implements [`Env`] through
/// its endpoint ([`Double::env`]) and adds waits with timeouts.
pub struct Double {
    endpoint: Endpoint,
    layout: SystemLayout,
    /// Events seen while waiting for something else, in order.
    pending: std::collections::VecDeque<Event>,
}

impl Double {
    pub fn channel(&self, name: &str) -> Channel {
        self.endpoint
            .channel_named(name)
            .unwrap_or_else(|| panic!("{} has no channel end `{name}`", self.endpoint.name()))
    }

    pub fn region(&self, name: &str) -> Region {
        let index: RegionName = self
            .endpoint
            .region_named(name)
            .unwrap_or_else(|| panic!("{} has no map `{name}`", self.endpoint.name()));
        self.endpoint.region(index)
    }

    /// Where the granted host-visible region `name` lies (mapped or by
    /// address only), as the runtime tells the component.
    pub fn region_address(&self, name: &str) -> Option<RegionAddress> {
        let index: RegionName = self
            .endpoint
            .region_named(name)
            .unwrap_or_else(|| panic!("{} has no map `{name}`", self.endpoint.name()));
        self.endpoint.region_address(index)
    }

    /// The child index of supervised component `name`.
    pub fn child(&self, name: &str) -> Child {
        let index = self
            .layout
            .component_index(name)
            .unwrap_or_else(|| panic!("no component `{name}`"));
        self.endpoint
            .child_position(index as u8)
            .unwrap_or_else(|| panic!("{} does not supervise `{name}`", self.endpoint.name()))
    }

    /// The name `system.toml` gives this double's end `channel`.
    pub fn channel_name(&self, channel: Channel) -> Option<&str> {
        let layout = self.endpoint.layout();
        layout
            .channels
            .iter()
            .find(|c| c.id == channel.0)
            .map(|c| c.name.as_str())
            .or_else(|| {
                layout
                    .irqs
                    .iter()
                    .find(|i| i.channel == channel.0)
                    .map(|i| i.name.as_str())
            })
    }

    /// The [`Env`] this double acts through.
    pub fn env(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    pub fn notify(&mut self, channel: &str) {
        let channel = self.channel(channel);
        self.endpoint.notify(channel);
    }

    pub fn call(&mut self, channel: &str, message: &[u8]) -> Result<Vec<u8>, CallError> {
        let channel = self.channel(channel);
        self.endpoint.call(channel, message)
    }

    /// The next event, from the backlog or waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        self.endpoint.wait_event(Some(timeout)).ok().flatten()
    }

    /// Wait for an event `want` accepts; others are kept for later (a
    /// notification set is split so the rest of its channels stay pending).
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut kept = std::collections::VecDeque::new();
        let mut found = None;
        if let Some(index) = self.pending.iter().position(|e| want(e).is_some()) {
            let event = self.pending.remove(index).expect("found above");
            found = want(&event);
        }
        while found.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.endpoint.wait_event(Some(left)) {
                Ok(Some(event)) => match want(&event) {
                    Some(value) => found = Some(value),
                    None => kept.push_back(event),
                },
                _ => break,
            }
        }
        self.pending.extend(kept);
        found
    }

    /// Wait for a notification on `channel`; true if it came in time.
    pub fn wait_notified(&mut self, channel: &str, timeout: Duration) -> bool {
        let channel = self.channel(channel);
        let deadline = Instant::now() + timeout;
        // Look in the backlog first, taking only this channel out of a set.
        for event in self.pending.iter_mut() {
            if let Event::Notified(set) = event {
                if set.contains(channel) {
                    set.0 &= !channel.bit();
                    self.pending
                        .retain(|e| !matches!(e, Event::Notified(s) if s.is_empty()));
                    return true;
                }
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.endpoint.wait_event(Some(left)) {
                Ok(Some(Event::Notified(mut set))) if set.contains(channel) => {
                    set.0 &= !channel.bit();
                    if !set.is_empty() {
                        self.pending.push_back(Event::Notified(set));
                    }
                    return true;
                }
                Ok(Some(other)) => self.pending.push_back(other),
                _ => return false,
            }
        }
    }

    /// Wait for a protected call on `channel` and answer it with `serve`.
    /// Returns the request, or `None` if none came in time.
    pub fn serve_call(
        &mut self,
        channel: &str,
        timeout: Duration,
        serve: impl FnOnce(&[u8]) -> Result<Vec<u8>, Refusal>,
    ) -> Option<Vec<u8>> {
        let channel = self.channel(channel);
        let message = self.wait_for(timeout, |event| match event {
            Event::Call {
                channel: c,
                message,
            } if *c == channel => Some(message.clone()),
            _ => None,
        })?;
        let reply = serve(&message);
        match &reply {
            Ok(bytes) => self.endpoint.reply(channel, Ok(bytes)),
            Err(refusal) => self.endpoint.reply(channel, Err(*refusal)),
        }
        Some(message)
    }

    /// Wait for a fault report (this double must supervise someone).
    pub fn wait_fault(&mut self, timeout: Duration) -> Option<(Child, Fault)> {
        self.wait_for(timeout, |event| match event {
            Event::Fault { child, fault } => Some((*child, *fault)),
            _ => None,
        })
    }

    /// Restart supervised component `name` (as its supervisor).
    pub fn restart(&mut self, name: &str) -> Result<(), component_api::SupervisorError> {
        let child = self.child(name);
        self.endpoint.restart(child)
    }
}
