//! Shared by the network end-to-end tests and the network benchmark: TCP
//! transfers through the guest's echo port checked byte by byte, with
//! progress a test can watch (the longest stall), round trips, a Linux
//! loopback echo server to compare with, and the statistics.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The guest's TCP ports (docs/network.md).
pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7;

/// The end-to-end tests run one at a time: each starts a whole system
/// whose restarts and TCP timers are measured, and two cores shared by
/// several systems stretch them past any sensible bound.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Byte `index` of every transfer: not periodic at any power of two, so a
/// lost, repeated or reordered block shows.
pub fn pattern(index: u64) -> u8 {
    (index.wrapping_mul(7) ^ (index / 251)) as u8
}

/// A Linux echo server on 127.0.0.1 (a port the system picks), one thread
/// per connection, for the loopback side of the comparison. Ends with
/// the process.
pub fn loopback_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buffer = vec![0; 64 * 1024];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(len) => {
                            if stream.write_all(&buffer[..len]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    address
}

/// A transfer through an echo server: one thread sends the pattern (up to
/// `limit` bytes, or until [`Transfer::stop`]) and then its FIN; another
/// reads the echo to its end and compares every byte; `received` counts
/// the bytes back so far (a test watches it for stalls).
pub struct Transfer {
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
    sender: JoinHandle<Result<u64, String>>,
    receiver: JoinHandle<Result<u64, String>>,
}

impl Transfer {
    /// Connects to `address` and starts. `timeout`: the longest a read or
    /// a write may wait (a stall longer than this fails the transfer).
    pub fn start(address: SocketAddr, limit: u64, timeout: Duration) -> Result<Transfer, String> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
            .map_err(|e| format!("connect {address}: {e}"))?;
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut reader = stream;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut block = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < limit && !stopped.load(Ordering::SeqCst) {
                let len = (limit - sent).min(block.len() as u64) as usize;
                for (offset, byte) in block[..len].iter_mut().enumerate() {
                    *byte = pattern(sent + offset as u64);
                }
                writer
                    .write_all(&block[..len])
                    .map_err(|e| format!("send at byte {sent}: {e}"))?;
                sent += len as u64;
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok(sent)
        });
        let counter = received.clone();
        let receiver = std::thread::spawn(move || {
            let mut block = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                match reader.read(&mut block) {
                    Ok(0) => return Ok(got),
                    Ok(len) => {
                        if let Some(bad) = (0..len).find(|&i| block[i] != pattern(got + i as u64)) {
                            return Err(format!("byte {} differs", got + bad as u64));
                        }
                        got += len as u64;
                        counter.store(got, Ordering::SeqCst);
                    }
                    Err(e) => return Err(format!("receive at byte {got}: {e}")),
                }
            }
        });
        Ok(Transfer {
            received,
            stop,
            started: Instant::now(),
            sender,
            receiver,
        })
    }

    /// The sender sends no more blocks (then its FIN).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn finished(&self) -> bool {
        self.receiver.is_finished()
    }

    /// Waits for both halves: the bytes that went both ways and the time
    /// from the start to the end of the echo. Every byte sent must have
    /// come back, in order, and nothing more.
    pub fn finish(self) -> Result<(u64, Duration), String> {
        let received = self.receiver.join().map_err(|_| "receiver panicked")?;
        let elapsed = self.started.elapsed();
        let sent = self.sender.join().map_err(|_| "sender panicked")??;
        let received = received?;
        if received != sent {
            return Err(format!("sent {sent} bytes, {received} came back"));
        }
        Ok((sent, elapsed))
    }
}

/// Transfers `total` bytes through the echo server at `address`; the time.
pub fn transfer(address: SocketAddr, total: u64) -> Result<Duration, String> {
    let (moved, time) = Transfer::start(address, total, Duration::from_secs(30))?.finish()?;
    if moved != total {
        return Err(format!("{moved} of {total} bytes moved"));
    }
    Ok(time)
}

/// `count` round trips of `size` bytes through the echo server at
/// `address` on one connection; each one's time.
pub fn round_trips(
    address: SocketAddr,
    count: usize,
    size: usize,
) -> Result<Vec<Duration>, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let message: Vec<u8> = (0..size as u64).map(pattern).collect();
    let mut answer = vec![0u8; size];
    let mut times = Vec::with_capacity(count);
    for round in 0..count {
        let started = Instant::now();
        stream
            .write_all(&message)
            .map_err(|e| format!("round {round}: {e}"))?;
        stream
            .read_exact(&mut answer)
            .map_err(|e| format!("round {round}: {e}"))?;
        times.push(started.elapsed());
        if answer != message {
            return Err(format!("round {round}: the echo differs"));
        }
    }
    Ok(times)
}

/// Waits (bounded) until a round trip through `address` works: the guest's
/// stack is up and serving.
pub fn wait_for_echo(address: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match round_trips(address, 1, 16) {
            Ok(_) => return Ok(started.elapsed()),
            Err(error) => last = error,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no echo from {address} within {limit:?}: {last}"))
}

/// An HTTP GET of `path` on a fresh connection; the whole response.
pub fn http_get(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 10.0.2.15\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    Ok(response)
}

/// Median, min, max and 99th percentile of some samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: f64,
}

pub fn summarize(samples: &[f64]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |fraction: f64| sorted[((sorted.len() - 1) as f64 * fraction).round() as usize];
    Summary {
        median: at(0.5),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        p99: at(0.99),
    }
}

use ipc_harness::{built_binary_with, Harness};

/// The test system with the network: synic, vmbus, the NIC driver
/// `network` (vsc-netvsc) and the TCP/IP client `web` (net-client).
pub const SYSTEM: &str = "tests/systems/network.toml";

/// A running network system and where its guest's ports are reached from
/// this process.
pub struct NetSystem {
    pub harness: Harness,
    /// 127.0.0.1 forwards to the guest's ports 80 and 7 (user network).
    pub http: SocketAddr,
    pub echo: SocketAddr,
}

/// Starts `description` with hvsim on the user-space network, forwarding
/// two free loopback ports to the guest's HTTP and echo ports; `host_args`
/// are added for hvsim.
pub fn start_user(description: &str, host_args: &[&str], release: bool) -> NetSystem {
    let net = format!("user:127.0.0.1:0={HTTP_PORT},127.0.0.1:0={ECHO_PORT}");
    // Only the NIC (the system has no IC drivers): `--net` adds it.
    let mut args = vec!["--events", "--devices", "", "--net", &net];
    args.extend_from_slice(host_args);
    let mut builder = Harness::builder(description).host_args(&args);
    if release {
        builder = builder.release();
    }
    let harness = builder.start().expect("the system starts");
    let (_, line) = harness.expect_line("hvsim: net: user ", 0);
    let forwards = parse_forwards(&line);
    let find = |port: u16| {
        forwards
            .iter()
            .find(|(_, guest)| *guest == port)
            .map(|(address, _)| *address)
            .unwrap_or_else(|| harness.fail(&format!("no forward to port {port} in {line:?}")))
    };
    let (http, echo) = (find(HTTP_PORT), find(ECHO_PORT));
    NetSystem {
        harness,
        http,
        echo,
    }
}

/// `... net: user 127.0.0.1:A -> 10.0.2.15:80, 127.0.0.1:B -> 10.0.2.15:7`
/// -> [(127.0.0.1:A, 80), (127.0.0.1:B, 7)].
pub fn parse_forwards(line: &str) -> Vec<(SocketAddr, u16)> {
    let Some((_, list)) = line.split_once("net: user ") else {
        return Vec::new();
    };
    list.split(", ")
        .filter_map(|forward| {
            let (listen, guest) = forward.split_once(" -> ")?;
            let port = guest.rsplit_once(':')?.1.trim().parse().ok()?;
            Some((listen.trim().parse().ok()?, port))
        })
        .collect()
}

/// Starts `description` with hvsim inside `namespace` on its TAP
/// (`netns::TAP`, 10.0.2.2/24): hvsim runs through a wrapper script that
/// enters the namespace, written to `folder`.
pub fn start_tap(
    description: &str,
    namespace: &netns::Namespace,
    folder: &std::path::Path,
    host_args: &[&str],
    release: bool,
) -> Harness {
    let hvsim = built_binary_with(description, "hvsim", release).expect("hvsim builds");
    let wrapper = folder.join("hvsim-in-namespace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            namespace.name(),
            hvsim.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = format!("tap:{}", netns::TAP);
    let mut args = vec!["--events", "--devices", "", "--net", &net];
    args.extend_from_slice(host_args);
    let mut builder = Harness::builder(description)
        .host_program(&wrapper)
        .host_args(&args);
    if release {
        builder = builder.release();
    }
    builder.start().expect("the system starts")
}

/// The network system on a TAP in a namespace of the test's own, or the
/// reason it cannot be (the test prints it and returns).
pub struct TapSystem {
    pub harness: Harness,
    pub namespace: netns::Namespace,
    _folder: linux_tools::Scratch,
}

pub fn start_tap_system(test: &str) -> Result<TapSystem, String> {
    start_tap_system_with(test, false)
}

/// [`start_tap_system`], with optimised builds when `release`.
pub fn start_tap_system_with(test: &str, release: bool) -> Result<TapSystem, String> {
    let namespace = netns::Namespace::create()?;
    namespace.add_tap(netns::TAP)?;
    let folder = linux_tools::Scratch::new(test);
    let harness = start_tap(SYSTEM, &namespace, &folder.0, &[], release);
    harness.expect_output("hvsim: net: tap ", 0);
    harness.expect_output("web: link up", 0);
    Ok(TapSystem {
        harness,
        namespace,
        _folder: folder,
    })
}

/// `ping ARGS.. TARGET` inside the namespace; its standard output.
pub fn ping(namespace: &netns::Namespace, args: &[&str], target: &str) -> String {
    let output = namespace
        .command("ping")
        .args(args)
        .arg(target)
        .output()
        .expect("ping runs (cargo xtask setup installs iputils-ping)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The round-trip times (ms) in ping's output, one per answer.
pub fn ping_times(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|ms| ms.parse().ok())
        .collect()
}

/// Waits (bounded) until the guest answers a ping; how long it took.
pub fn wait_for_ping(namespace: &netns::Namespace, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if !ping_times(&ping(namespace, &["-c", "1", "-W", "1"], netns::GUEST)).is_empty() {
            return Some(started.elapsed());
        }
    }
    None
}

/// A `ping -D` running in the background (bounded by its own deadline),
/// for the gaps between answers while the test breaks things.
pub struct PingWatch {
    child: std::process::Child,
}

impl PingWatch {
    /// One echo request every `interval_ms`, for at most `deadline_s`.
    pub fn start(namespace: &netns::Namespace, interval_ms: u32, deadline_s: u32) -> PingWatch {
        let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
        let deadline = deadline_s.to_string();
        let child = namespace
            .command("ping")
            .args([
                "-D",
                "-n",
                "-i",
                &interval,
                "-W",
                "1",
                "-w",
                &deadline,
                netns::GUEST,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ping runs");
        PingWatch { child }
    }

    /// Stops it (SIGINT would print statistics; the answers are what is
    /// needed) and returns the times (s, ping's -D clock) of the answers.
    pub fn stop(mut self) -> Vec<f64> {
        let _ = self.child.kill();
        let output = self.child.wait_with_output().expect("ping's output");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains("bytes from"))
            .filter_map(|line| line.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }
}

/// The longest time between two consecutive answers (s).
pub fn longest_gap(times: &[f64]) -> f64 {
    times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod parse_tests {
    #[test]
    fn forwards_are_read_from_hvsims_line() {
        let forwards = super::parse_forwards(
            "[hvsim] hvsim: net: user 127.0.0.1:4000 -> 10.0.2.15:80, 127.0.0.1:4001 -> 10.0.2.15:7",
        );
        assert_eq!(forwards.len(), 2);
        assert_eq!(forwards[1].0.port(), 4001);
        assert_eq!(forwards[1].1, 7);
    }
}
