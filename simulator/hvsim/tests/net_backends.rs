//! The hosted NIC backends against a stand-in guest: a smoltcp stack at
//! 10.0.2.15 (HTTP on 80, echo on 7) on the guest's side of the backend,
//! where the real guest (netvsc + the net client) sits in the end-to-end
//! tests. What is tested is the backend and the real Linux peer:
//! - `UserNet` (`--net user:127.0.0.1:PORT`): loopback TCP carried to the
//!   guest's ports, a long echo transfer byte-exact, a refused port;
//! - `TapNet` (`--net tap:IF`): in a network namespace of the test's own,
//!   the real `ping` and `curl` reach the stand-in guest through the TAP.
#![cfg(not(target_os = "none"))]

use hvsim::net::NetBackend;
use hvsim::tap_net::TapNet;
use hvsim::user_net::{Forward, UserNet};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as NetInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PAGE: &str = "hvsim test guest\n";

/// The stand-in guest's device: the backend, from the guest's side.
struct GuestSide<'a, B: NetBackend>(&'a mut B);
struct Rx(Vec<u8>);
struct Tx<'a, B: NetBackend>(&'a mut B);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl<B: NetBackend> phy::TxToken for Tx<'_, B> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.transmit(&frame);
        result
    }
}

impl<B: NetBackend> Device for GuestSide<'_, B> {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, B>
    where
        Self: 'a;

    fn receive(&mut self, _: NetInstant) -> Option<(Rx, Tx<'_, B>)> {
        let mut buf = vec![0; 2048];
        let len = self.0.receive(&mut buf)?;
        buf.truncate(len);
        Some((Rx(buf), Tx(self.0)))
    }

    fn transmit(&mut self, _: NetInstant) -> Option<Tx<'_, B>> {
        Some(Tx(self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A minimal guest: HTTP on 80 (one page), echo on 7.
struct Guest {
    interface: Interface,
    sockets: SocketSet<'static>,
    /// Each HTTP socket and the request it has read so far.
    http: Vec<(SocketHandle, Vec<u8>)>,
    echo: SocketHandle,
    started: Instant,
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

impl Guest {
    fn new<B: NetBackend>(backend: &mut B) -> Guest {
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x00, 0x15, 0x5d, 0x00, 0x00, 0x0f,
        ])));
        let mut interface = Interface::new(config, &mut GuestSide(backend), NetInstant::ZERO);
        interface.update_ip_addrs(|addresses| {
            addresses
                .push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        interface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2))
            .unwrap();
        let mut sockets = SocketSet::new(Vec::new());
        // Listening before the first frame arrives, as a real guest's
        // server is before its NIC comes up.
        // Several HTTP sockets: a new connection is served while an old one
        // is still closing.
        let http = (0..4)
            .map(|_| {
                let mut http = tcp_socket();
                http.listen(80).unwrap();
                (sockets.add(http), Vec::new())
            })
            .collect();
        let mut echo = tcp_socket();
        echo.listen(7).unwrap();
        let echo = sockets.add(echo);
        Guest {
            interface,
            sockets,
            http,
            echo,
            started: Instant::now(),
        }
    }

    fn poll<B: NetBackend>(&mut self, backend: &mut B) {
        let now = NetInstant::from_micros(self.started.elapsed().as_micros() as i64);
        self.interface
            .poll(now, &mut GuestSide(backend), &mut self.sockets);
        for (handle, request) in &mut self.http {
            let http = self.sockets.get_mut::<tcp::Socket>(*handle);
            if !http.is_open() {
                http.listen(80).unwrap();
                request.clear();
            }
            if !http.can_recv() {
                continue;
            }
            http.recv(|data| {
                request.extend_from_slice(data);
                (data.len(), ())
            })
            .unwrap();
            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                http.send_slice(response.as_bytes()).unwrap();
                http.close();
            }
        }
        let echo = self.sockets.get_mut::<tcp::Socket>(self.echo);
        if !echo.is_open() {
            echo.listen(7).unwrap();
        }
        while echo.can_recv() && echo.can_send() {
            let room = echo.send_capacity() - echo.send_queue();
            let data = echo
                .recv(|data| {
                    let take = data.len().min(room);
                    (take, data[..take].to_vec())
                })
                .unwrap();
            if data.is_empty() {
                break;
            }
            echo.send_slice(&data).unwrap();
        }
        if !echo.may_recv() && echo.send_queue() == 0 && echo.state() == tcp::State::CloseWait {
            echo.close();
        }
        self.interface
            .poll(now, &mut GuestSide(backend), &mut self.sockets);
    }
}

/// Runs the user network and the guest in a thread until `stop`; returns
/// the network for its counters.
fn run_user_net(
    forwards: &[Forward],
) -> (
    Vec<Forward>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<UserNet>,
) {
    let mut net = UserNet::new(forwards).expect("loopback listeners");
    let listening = net.listening();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut guest = Guest::new(&mut net);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            let moved = net.poll();
            guest.poll(&mut net);
            if !moved {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        net
    });
    (listening, stop, thread)
}

fn http_get(address: std::net::SocketAddrV4) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the forward");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the response");
    response
}

#[test]
fn user_network_carries_loopback_connections_to_the_guest() {
    let forwards = Forward::parse_list("127.0.0.1:0=80,127.0.0.1:0=7,127.0.0.1:0=9").unwrap();
    let (listening, stop, thread) = run_user_net(&forwards);
    let (http, echo, refused) = (
        listening[0].listen,
        listening[1].listen,
        listening[2].listen,
    );

    // The status page, twice (the second on a new connection).
    for _ in 0..2 {
        let response = http_get(http);
        assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
        assert!(response.ends_with(PAGE), "{response}");
    }

    // 8 MiB through the echo port, both ways at once, byte-exact.
    let total = 8usize << 20;
    let mut stream = TcpStream::connect(echo).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let block: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for _ in 0..total / block.len() {
            writer.write_all(&block).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut received = Vec::with_capacity(total);
    stream.read_to_end(&mut received).expect("the echo");
    sender.join().unwrap();
    assert_eq!(received.len(), total);
    let block: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
    for chunk in received.chunks(65536) {
        assert!(chunk == &block[..], "echoed bytes differ");
    }

    // Nothing listens on the guest's port 9: the guest's RST ends the
    // loopback connection at once (no hang).
    let mut stream = TcpStream::connect(refused).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let ended = match stream.read_to_end(&mut rest) {
        Ok(len) => len == 0,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    };
    assert!(ended, "a refused connection ends at once, empty");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let net = thread.join().unwrap();
    let counters = net.counters();
    assert_eq!(counters.connections_accepted, 4, "{counters:?}");
    assert_eq!(counters.connections_reset, 1, "{counters:?}");
    assert_eq!(
        counters.bytes_to_guest,
        total as u64 + 2 * 18,
        "{counters:?}"
    );
    assert_eq!(net.connections(), 0, "{counters:?}");
}

#[test]
fn user_network_listens_only_on_loopback() {
    for address in ["0.0.0.0:0", "10.0.2.2:0"] {
        let forward = Forward {
            listen: address.parse().unwrap(),
            guest_port: 80,
        };
        assert!(UserNet::new(&[forward]).is_err(), "{address}");
    }
    assert!(Forward::parse("0.0.0.0:8080").is_err());
}

/// Set in the copy of this test binary that runs inside the namespace.
const INSIDE: &str = "HVSIM_TAP_GUEST_INSIDE";

#[test]
fn tap_network_answers_the_real_ping_and_curl_in_a_namespace() {
    if std::env::var_os(INSIDE).is_some() {
        // Inside the namespace: the stand-in guest on the TAP, until the
        // outer test kills this process (bounded anyway).
        let mut tap = TapNet::open(netns::TAP).expect("the TAP");
        let mut guest = Guest::new(&mut tap);
        eprintln!("stand-in guest on the TAP");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut reported = Instant::now();
        while Instant::now() < deadline {
            guest.poll(&mut tap);
            std::thread::sleep(Duration::from_micros(500));
            if reported.elapsed() > Duration::from_millis(500) {
                reported = Instant::now();
                eprintln!("{}", tap.report());
            }
        }
        return;
    }
    let namespace = match netns::Namespace::create() {
        Ok(namespace) => namespace,
        Err(reason) => return netns::skip(&reason),
    };
    namespace.add_tap(netns::TAP).expect("a TAP");
    let mut inside = namespace
        .command(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tap_network_answers_the_real_ping_and_curl_in_a_namespace",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the guest inside the namespace");
    // The guest is on the TAP before the first ping.
    wait_for_line(&mut inside, "stand-in guest on the TAP");
    let result = std::panic::catch_unwind(|| {
        let ping = namespace
            .command("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "5", netns::GUEST])
            .output()
            .expect("ping runs (cargo xtask setup installs iputils-ping)");
        let text = String::from_utf8_lossy(&ping.stdout).into_owned();
        assert!(
            ping.status.success() && text.contains("3 received"),
            "{text}"
        );
        let curl = namespace
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://{}/", netns::GUEST),
            ])
            .output()
            .expect("curl runs");
        let page = String::from_utf8_lossy(&curl.stdout).into_owned();
        assert!(
            curl.status.success() && page == PAGE,
            "{page} {}",
            String::from_utf8_lossy(&curl.stderr)
        );
    });
    let _ = inside.kill();
    let output = inside.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let last = log
        .lines()
        .rev()
        .find(|line| line.starts_with("tap "))
        .unwrap_or("");
    eprintln!("{last}");
    if let Err(panic) = result {
        eprintln!("inside the namespace:\n{log}");
        std::panic::resume_unwind(panic);
    }
}

/// The first stderr line of `child` that contains `needle` (bounded: the
/// line must come within 10 s).
fn wait_for_line(child: &mut std::process::Child, needle: &str) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Kept reading after the wait ends: the child never writes
            // into a closed pipe.
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    panic!("no line with {needle:?}: {seen:?}");
}

fn hvsim_command(test: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hvsim"));
    let socket = std::env::temp_dir().join(format!("hvsim-{test}-{}.sock", std::process::id()));
    command
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// `hvsim --net user:127.0.0.1:0=7`: the binary says where it listens, and
/// it does (before any guest connects).
#[test]
fn the_binary_listens_where_it_says() {
    let mut hvsim = hvsim_command("user")
        .args(["--net", "user:127.0.0.1:0=7"])
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut hvsim, "hvsim: net: user ");
    let listen = line
        .split("net: user ")
        .nth(1)
        .and_then(|rest| rest.split(" -> ").next())
        .and_then(|address| address.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(line.ends_with(" -> 10.0.2.15:7"), "{line}");
    let connected = TcpStream::connect_timeout(&listen, Duration::from_secs(5));
    let _ = hvsim.kill();
    let _ = hvsim.wait();
    connected.unwrap_or_else(|e| panic!("{listen}: {e}"));
}

/// `hvsim --net tap:IF` inside a namespace attaches to the TAP there: the
/// kernel reports its carrier once a process holds it.
#[test]
fn the_binary_attaches_to_the_tap_of_its_namespace() {
    let namespace = match netns::Namespace::create() {
        Ok(namespace) => namespace,
        Err(reason) => return netns::skip(&reason),
    };
    namespace.add_tap(netns::TAP).expect("a TAP");
    let before = namespace.link_state(netns::TAP).unwrap();
    assert!(before.contains("NO-CARRIER"), "{before}");
    let hvsim = hvsim_command("tap");
    let mut inside = namespace.command(hvsim.get_program());
    inside
        .args(hvsim.get_args())
        .args(["--net", &format!("tap:{}", netns::TAP)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut hvsim = inside.spawn().unwrap();
    let line = wait_for_line(&mut hvsim, "hvsim: net: tap ");
    let during = namespace.link_state(netns::TAP).unwrap();
    let _ = hvsim.kill();
    let _ = hvsim.wait();
    assert!(line.contains(netns::TAP), "{line}");
    assert!(!during.contains("NO-CARRIER"), "{during}");
}
