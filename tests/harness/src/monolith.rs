//! A whole system run as a child process, watched line by line: the
//! monolithic build (`hosted_runtime::monolith`, every component a thread
//! of one process) for tests, and any command that prints a system's
//! lines and takes the host's operator commands on stdin (the isolation
//! benchmark runs `cargo xtask hosted` and the monolith this way, so both
//! lines take the same path to the benchmark).
//!
//! Every wait has a bound and ends on the line itself.

use crate::{ensure_built, workspace_root, WAIT};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Build the monolith of `description` (relative to the workspace root)
/// and the description's simulated host, and return the command that runs
/// it with the host getting `host_args`.
pub fn monolith_command(
    description: &str,
    release: bool,
    host_args: &[&str],
) -> Result<Command, String> {
    let root = workspace_root();
    let description = root.join(description);
    let release = release && bench_record::optimised_builds();
    let layout = sysdesc::compile_file(&description).map_err(|d| d.to_string())?;
    let binary = build(&root, &description, &layout, release)?;
    let layout_file = binary.with_file_name("monolith-layout.bin");
    let encoded = layout.encode().map_err(|e| e.to_string())?;
    std::fs::write(&layout_file, encoded).map_err(|e| e.to_string())?;
    let mut command = Command::new(&binary);
    command.arg("--layout").arg(&layout_file);
    if let Some(host) = layout.components.iter().find(|c| c.simulated_host) {
        let dir = ensure_built(&description, std::slice::from_ref(&host.package), release)?;
        command.arg("--host").arg(dir.join(&host.package));
        for arg in host_args {
            command.arg("--host-arg").arg(arg);
        }
    }
    Ok(command)
}

fn build(
    root: &Path,
    description: &Path,
    layout: &system_layout::SystemLayout,
    release: bool,
) -> Result<PathBuf, String> {
    // One build at a time per test process (parallel tests share it).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    hosted_runtime::monolith::build_monolith(root, description, layout, release)
        .map_err(|e| e.to_string())
}

/// A system running as a child process: its stdout and stderr lines, with
/// when each came, and its stdin.
pub struct LineProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    incoming: Receiver<(Instant, String)>,
    lines: Vec<(Instant, String)>,
}

impl LineProcess {
    /// Start `command` with its output piped to us.
    pub fn start(mut command: Command) -> Result<LineProcess, String> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
        let (to, incoming) = std::sync::mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let to = to.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if to.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(LineProcess {
            stdin: child.stdin.take(),
            child,
            incoming,
            lines: Vec::new(),
        })
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take_waiting(&mut self) {
        while let Ok(line) = self.incoming.try_recv() {
            self.lines.push(line);
        }
    }

    /// Wait at most `timeout` for a line containing `needle` from line
    /// `from` on: its index and when it came.
    pub fn wait_for(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Option<(usize, Instant)> {
        let deadline = Instant::now() + timeout;
        let mut checked = from;
        loop {
            self.take_waiting();
            if let Some(offset) = self.lines[checked.min(self.lines.len())..]
                .iter()
                .position(|(_, l)| l.contains(needle))
            {
                let index = checked + offset;
                return Some((index, self.lines[index].0));
            }
            checked = checked.max(self.lines.len());
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    // The process ended: what it printed is all there is.
                    self.take_waiting();
                    if checked >= self.lines.len() {
                        return None;
                    }
                }
            }
        }
    }

    /// [`LineProcess::wait_for`] within [`WAIT`], panicking with every
    /// line so far if it does not come.
    pub fn expect_output(&mut self, needle: &str, from: usize) -> usize {
        match self.wait_for(needle, from, WAIT) {
            Some((index, _)) => index,
            None => self.fail(&format!("no line with {needle:?} from line {from}")),
        }
    }

    /// Panic with `what` and every line so far.
    pub fn fail(&mut self, what: &str) -> ! {
        self.take_waiting();
        let all = self.lines().join("\n");
        panic!("{what}\n--- output ---\n{all}\n---");
    }

    /// Write one line to its stdin (an operator command for the host);
    /// when it was written.
    pub fn send(&mut self, line: &str) -> Result<Instant, String> {
        let stdin = self.stdin.as_mut().ok_or("stdin is closed")?;
        let at = Instant::now();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| e.to_string())?;
        Ok(at)
    }

    /// Wait at most `timeout` for the process to end: its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.take_waiting();
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Lines keep coming meanwhile; a short bounded poll of the exit.
            match self.incoming.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => self.lines.push(line),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
