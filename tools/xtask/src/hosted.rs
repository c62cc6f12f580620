//! `cargo xtask hosted [path/to/system.toml] [--release] [--host PROGRAM |
//! --host-socket PATH] [--host-arg ARG]..`: run a system as Linux
//! processes on the hosted runtime (`platform/hosted/hosted-runtime`).
//!
//! Validates the description (errors with file:line:col), builds each
//! component's host binary with that description's identifiers, starts
//! every component as its own process with its output prefixed by its
//! name (a `simulated_host` component runs as the host process on the
//! hypervisor transport, bridged to its channels), reports faults to
//! supervisors, and exits with the code a component powers the system off
//! with (1 if nothing is left running; 4 if the host is lost).
//!
//! The host is the description's `simulated_host` package (`hvsim`) unless
//! `--host PROGRAM` names another program (started as `PROGRAM --socket
//! PATH ARGS..`, `docs/hypervisor-transport.md` section 7) or
//! `--host-socket PATH` names the socket of a host that is already
//! listening. hvsim gets `--time-interval-ms 5000` (a time sample every
//! 5 s, as Hyper-V sends them) unless `--host-arg`s are given, and each
//! line typed on stdin is an operator command for a host the launcher
//! started (`shutdown`, `heartbeat`, `time`, `kvp-set 0 KEY VALUE`,
//! `rescind RELID`, ...: `docs/hvsim.md`); its answer is printed as
//! `[hvsim] ...`.
//!
//! `--net SPEC` puts hvsim's NIC on a network (`hvsim --net`, docs/network.md
//! "Connecting"). A system with a `network` driver run on hvsim without
//! `--net` gets the user-space network on a free loopback port forwarded
//! to the guest's port 80, and the status page's address is printed.
//!
//! Trusts: the description it is given. Writes: cargo's build output.

use crate::util::{workspace_root, Result};
use hosted_runtime::{build_components, LaunchOptions, System};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask hosted [path/to/system.toml] [--release] [--monolithic] \
[--host PROGRAM | --host-socket PATH] [--host-arg ARG]... \
[--net none | tap:IFNAME | user:127.0.0.1:PORT]";

/// What the simulated host process gets by default.
const DEFAULT_HOST_ARGS: [&str; 2] = ["--time-interval-ms", "5000"];

pub fn run(args: &[String]) -> Result {
    let root = workspace_root();
    let mut release = false;
    let mut monolithic = false;
    let mut description: Option<PathBuf> = None;
    let mut host_args: Vec<String> = Vec::new();
    let mut host_program: Option<PathBuf> = None;
    let mut host_socket: Option<PathBuf> = None;
    let mut net: Option<String> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| match args.next() {
            Some(value) => Ok(value.clone()),
            None => Err(format!("{name} needs a value; {USAGE}")),
        };
        match arg.as_str() {
            "--release" => release = true,
            "--monolithic" => monolithic = true,
            "--host-arg" => host_args.push(value("--host-arg")?),
            "--net" => net = Some(value("--net")?),
            // Used as given: a bare name is looked up on PATH.
            "--host" => host_program = Some(PathBuf::from(value("--host")?)),
            "--host-socket" => host_socket = Some(PathBuf::from(value("--host-socket")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}; {USAGE}")),
            path => description = Some(PathBuf::from(path)),
        }
    }
    if host_program.is_some() && host_socket.is_some() {
        return Err(format!(
            "--host and --host-socket exclude each other; {USAGE}"
        ));
    }
    if host_socket.is_some() && !host_args.is_empty() {
        return Err(
            "--host-arg is for a host the launcher starts, not one on --host-socket".into(),
        );
    }
    // The defaults are hvsim's options; another program gets only what
    // it is given.
    if host_args.is_empty() && host_program.is_none() {
        host_args = DEFAULT_HOST_ARGS.iter().map(|a| a.to_string()).collect();
    }
    let description = match description {
        Some(path) => absolute(path)?,
        None => root.join("system.toml"),
    };
    let layout = sysdesc::compile_file(&description).map_err(|d| d.to_string())?;
    let host = layout.components.iter().find(|c| c.simulated_host);
    let outside_host = host_program.is_some() || host_socket.is_some();
    if outside_host && host.is_none() {
        return Err(format!(
            "{} has no simulated_host component for --host or --host-socket to stand in for",
            description.display()
        ));
    }
    // Every component's package, and the simulated host's unless another
    // host stands in for it (it runs as its own process on the hypervisor
    // transport, bridged to its channels).
    let packages: Vec<String> = layout
        .components
        .iter()
        .filter(|c| !(c.simulated_host && outside_host))
        .map(|c| c.package.clone())
        .collect();
    let host_name = host.map(|c| c.name.clone());
    let has_nic = layout.components.iter().any(|c| c.name == NIC_DRIVER);
    if net.is_some() && host_socket.is_some() {
        return Err("--net is for a host the launcher starts, not one on --host-socket".into());
    }
    if net.is_none() && has_nic && host_program.is_none() && host_socket.is_none() {
        net = Some(format!("user:127.0.0.1:{}", free_loopback_port()?));
    }
    if let Some(spec) = &net {
        host_args.extend(["--net".to_string(), spec.clone()]);
        println!("[xtask] {}", describe_network(spec));
    }
    if monolithic {
        return run_monolithic(
            &description,
            &layout,
            release,
            host_program.or_else(|| host.map(|c| PathBuf::from(&c.package))),
            host_socket,
            host_args,
        );
    }
    println!(
        "[xtask] building {} component(s) for the host",
        packages.len()
    );
    let binaries = build_components(&root, &description, &packages, release)
        .map_err(|e| format!("build failed: {e}"))?;
    let mut options = LaunchOptions::new(&binaries);
    options.simulated_host = host_program.or_else(|| host.map(|c| binaries.join(&c.package)));
    options.simulated_host_args = host_args;
    options.simulated_host_socket = host_socket.clone();
    println!("[xtask] starting {}", description.display());
    let system = Arc::new(
        System::launch(layout, options).map_err(|e| format!("cannot start the system: {e}"))?,
    );
    if let (Some(name), None) = (host_name, &host_socket) {
        println!(
            "[xtask] {name} takes operator commands on stdin (shutdown, heartbeat, time, kvp-set 0 KEY VALUE, stats, ...)"
        );
        forward_operator_commands(Arc::downgrade(&system));
    }
    let code = system.wait();
    // The operator thread holds only a weak reference: this is the last
    // one, and dropping it ends every component.
    drop(system);
    println!("[xtask] the system ended with code {code}");
    if code == 0 {
        Ok(())
    } else {
        std::process::exit(i32::from(code))
    }
}

/// `--monolithic`: every component as a thread of one process
/// (`hosted_runtime::monolith`), the host still its own process. `host`
/// is a program, or the bare package name of the description's
/// `simulated_host` (built here for the host).
fn run_monolithic(
    description: &std::path::Path,
    layout: &system_layout::SystemLayout,
    release: bool,
    host: Option<PathBuf>,
    host_socket: Option<PathBuf>,
    host_args: Vec<String>,
) -> Result {
    let root = workspace_root();
    println!("[xtask] building the monolith of {}", description.display());
    let started = monolith_command(
        &root,
        description,
        layout,
        release,
        host,
        host_socket,
        host_args,
    )?;
    let mut command = started;
    println!("[xtask] starting {} (monolithic)", description.display());
    let status = command
        .status()
        .map_err(|e| format!("cannot start the monolith: {e}"))?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => {
            println!("[xtask] the system ended with code {code}");
            code
        }
        (None, signal) => {
            // No isolation: one component's fault ends them all.
            let signal = signal.unwrap_or(0);
            println!("[xtask] the monolith died of signal {signal}: a component faulted and took every component with it");
            128 + signal
        }
    };
    if code == 0 {
        Ok(())
    } else {
        std::process::exit(code)
    }
}

/// Build the monolith of `description` (and the host package, when the
/// host is the description's own) and return the command that runs it.
pub fn monolith_command(
    root: &std::path::Path,
    description: &std::path::Path,
    layout: &system_layout::SystemLayout,
    release: bool,
    host: Option<PathBuf>,
    host_socket: Option<PathBuf>,
    host_args: Vec<String>,
) -> Result<std::process::Command> {
    let binary = hosted_runtime::monolith::build_monolith(root, description, layout, release)
        .map_err(|e| format!("build failed: {e}"))?;
    let layout_file = binary.with_file_name("monolith-layout.bin");
    let encoded = layout
        .encode()
        .map_err(|e| format!("cannot encode the layout: {e}"))?;
    std::fs::write(&layout_file, encoded)
        .map_err(|e| format!("cannot write {}: {e}", layout_file.display()))?;
    let mut command = std::process::Command::new(&binary);
    command.arg("--layout").arg(&layout_file);
    if let Some(socket) = host_socket {
        command.arg("--host-socket").arg(socket);
    } else if let Some(host) = host {
        let program = if host.components().count() == 1
            && layout
                .components
                .iter()
                .any(|c| c.simulated_host && host.as_os_str() == c.package.as_str())
        {
            let package = host.display().to_string();
            build_components(root, description, std::slice::from_ref(&package), release)
                .map_err(|e| format!("build failed: {e}"))?
                .join(package)
        } else {
            host
        };
        command.arg("--host").arg(program);
        for arg in host_args {
            command.arg("--host-arg").arg(arg);
        }
    }
    Ok(command)
}

/// The driver name of the synthetic NIC in descriptions.
const NIC_DRIVER: &str = "network";

/// A loopback port that is free now (the kernel picks it).
fn free_loopback_port() -> Result<u16> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// How to reach the guest on the network `spec` (`hvsim --net`).
fn describe_network(spec: &str) -> String {
    if let Some(forwards) = spec.strip_prefix("user:") {
        let first = forwards.split(',').next().unwrap_or(forwards);
        let listen = first.split('=').next().unwrap_or(first);
        let port = first.split_once('=').map_or("80", |(_, port)| port);
        return format!(
            "network: hvsim's user-space network; the guest's 10.0.2.15:{port} is http://{listen}/ (e.g. `curl http://{listen}/`)"
        );
    }
    if let Some(name) = spec.strip_prefix("tap:") {
        return format!(
            "network: TAP {name} in hvsim's network namespace; give it 10.0.2.2/24, up, then `curl http://10.0.2.15/`"
        );
    }
    format!("network: {spec}")
}

/// A path from the command line, relative to the current folder.
fn absolute(path: PathBuf) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    Ok(std::env::current_dir()
        .map_err(|e| format!("no current folder: {e}"))?
        .join(path))
}

/// Each stdin line goes to the simulated host as an operator command; the
/// answer shows in the output as the host's line. The thread ends at end
/// of input or with the system (it is not joined: a read on a terminal
/// cannot be interrupted, and the process exits after the run).
fn forward_operator_commands(system: std::sync::Weak<System>) {
    let spawned = std::thread::Builder::new()
        .name("operator".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let Some(system) = system.upgrade() else {
                    break;
                };
                if let Err(error) = system.host_command(&line, Duration::from_secs(5)) {
                    println!("[xtask] {error}");
                }
            }
        });
    if let Err(error) = spawned {
        println!("[xtask] no operator input: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_page_address_is_the_forward() {
        assert_eq!(
            describe_network("user:127.0.0.1:40123"),
            "network: hvsim's user-space network; the guest's 10.0.2.15:80 is http://127.0.0.1:40123/ (e.g. `curl http://127.0.0.1:40123/`)"
        );
        assert!(describe_network("tap:hvtap0").contains("TAP hvtap0"));
        assert_ne!(free_loopback_port().unwrap(), 0);
    }
}
