//! The net interface between processes, without VMBus: the real `web`
//! (components/net-client) against a TCP/IP stack the test runs itself
//! (smoltcp), over `tests/systems/net-loopback.toml`.
//!
//! - Through the real `bridge` fixture (tests/fixtures/net-loopback), the
//!   test playing `peer`: ping, the HTTP status page and counters, echo,
//!   discard and a bounded chargen, every byte checked.
//! - The test playing the NIC driver itself (`bridge`), restarting it (a
//!   new server, a new generation, every frame in flight lost) several
//!   times during a long chargen transfer: the TCP connection survives
//!   with every byte correct, and no buffer leaks.
//!
//! All traffic stays in shared memory between the processes: no socket,
//! no address of the machine's network is used.
#![forbid(unsafe_code)]

use ipc_harness::{Double, Harness};
use net_client::device::NicDevice;
use net_client::services::chargen_byte;
use net_queue::{Device as NicInfo, NetClient, NetRegions, NetServer, BUFFER_SIZE};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};
use std::time::{Duration, Instant};

const SYSTEM: &str = "tests/systems/net-loopback.toml";
const WEB: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

fn regions(double: &Double, prefix: &str) -> NetRegions {
    let region = |part: &str| double.region(&format!("{prefix}_{part}"));
    NetRegions {
        rx_free: region("rx_free"),
        rx_active: region("rx_active"),
        tx_free: region("tx_free"),
        tx_active: region("tx_active"),
        info: region("info"),
        data: region("data"),
    }
}

fn smol_now(double: &mut Double) -> SmolInstant {
    use component_api::Env;
    SmolInstant::from_micros((double.env().now_ns() / 1000) as i64)
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    socket.set_ack_delay(None);
    socket.set_nagle_enabled(false);
    socket
}

/// How the test's stack reaches `web`: as a client of the bridge, or as
/// the NIC driver itself.
trait Link {
    fn double(&mut self) -> &mut Double;
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'static>, now: SmolInstant);
    /// Signal whoever needs it; then wait for a notification at most `wait`.
    fn sleep(&mut self, wait: Duration);
    /// The link's counters, for a failure message.
    fn report(&mut self) -> String;
}

/// The test as `peer`, a client of the real bridge.
struct PeerLink {
    double: Double,
    nic: NetClient,
}

impl Link for PeerLink {
    fn double(&mut self) -> &mut Double {
        &mut self.double
    }
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'static>, now: SmolInstant) {
        let mut device = NicDevice {
            client: &mut self.nic,
            mtu: 1500,
        };
        iface.poll(now, &mut device, sockets);
    }
    fn sleep(&mut self, wait: Duration) {
        if self.nic.driver_needs_signal() {
            self.double.notify("net0");
        }
        if self.nic.prepare_to_sleep() {
            self.double.wait_notified("net0", wait);
        }
    }
    fn report(&mut self) -> String {
        format!(
            "{:?} {:?} {:?} with driver {:?}",
            self.nic.stats(),
            self.nic.counters(),
            self.nic.info(),
            self.nic.with_driver()
        )
    }
}

/// The test as the NIC driver serving `web` directly: frames web sends are
/// the test stack's received frames and the other way round.
struct DriverLink {
    double: Double,
    regions: NetRegions,
    server: NetServer,
    restarts: u32,
    dropped: u64,
}

const WEB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl DriverLink {
    fn serve(regions: NetRegions) -> NetServer {
        let mut server = NetServer::new(regions, 64).unwrap();
        server
            .serve(NicInfo {
                mac: WEB_MAC,
                mtu: 1500,
                features: 0,
                link_up: true,
            })
            .unwrap();
        server
    }

    /// The driver dies and a new one starts: what the old one held (and
    /// what web had queued for it) is lost; web takes its buffers back.
    fn restart(&mut self) {
        self.server = Self::serve(self.regions);
        self.restarts += 1;
        self.double.notify("web_net0");
    }
}

struct ServerDevice<'a> {
    server: &'a mut NetServer,
    dropped: &'a mut u64,
}

struct Frame(Vec<u8>);

struct ToWeb<'a> {
    server: &'a mut NetServer,
    dropped: &'a mut u64,
}

impl phy::RxToken for Frame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for ToWeb<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        match self.server.take_rx().unwrap() {
            Some(slot) => {
                self.server.deliver(slot, &frame, 0).unwrap();
            }
            None => *self.dropped += 1,
        }
        result
    }
}

impl phy::Device for ServerDevice<'_> {
    type RxToken<'b>
        = Frame
    where
        Self: 'b;
    type TxToken<'b>
        = ToWeb<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: SmolInstant) -> Option<(Frame, ToWeb<'_>)> {
        let tx = self.server.next_tx().unwrap()?;
        let mut frame = vec![0u8; BUFFER_SIZE];
        let len = self.server.frame(&tx, &mut frame).unwrap();
        frame.truncate(len);
        self.server.complete_tx(tx, true).unwrap();
        Some((
            Frame(frame),
            ToWeb {
                server: self.server,
                dropped: self.dropped,
            },
        ))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<ToWeb<'_>> {
        Some(ToWeb {
            server: self.server,
            dropped: self.dropped,
        })
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

impl Link for DriverLink {
    fn double(&mut self) -> &mut Double {
        &mut self.double
    }
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'static>, now: SmolInstant) {
        let mut device = ServerDevice {
            server: &mut self.server,
            dropped: &mut self.dropped,
        };
        iface.poll(now, &mut device, sockets);
    }
    fn sleep(&mut self, wait: Duration) {
        use component_api::Env;
        let now = self.double.env().now_ns();
        // The driver's timer: web's wake-up time.
        let wake = self.server.wake_due(now);
        if self.server.client_needs_signal() || wake {
            self.double.notify("web_net0");
        }
        let wait = match self.server.client_wake_deadline() {
            Some(at) if at > now => wait.min(Duration::from_nanos(at - now)),
            Some(_) => Duration::from_millis(1),
            None => wait,
        };
        if self.server.prepare_to_sleep().unwrap() {
            self.double.wait_notified("web_net0", wait);
        }
    }
    fn report(&mut self) -> String {
        use component_api::Env;
        format!(
            "{:?} {:?} held {} {}, web wants a wake-up at {:?}, now {}, {} restarts",
            self.server.stats(),
            self.server.counters(),
            self.server.rx_held(),
            self.server.tx_held(),
            self.server.client_wake_deadline(),
            self.double.env().now_ns(),
            self.restarts
        )
    }
}

/// A device that moves nothing, with the capabilities of the real ones.
struct Capabilities;

impl phy::Device for Capabilities {
    type RxToken<'b> = Frame;
    type TxToken<'b> = Frame;
    fn receive(&mut self, _: SmolInstant) -> Option<(Frame, Frame)> {
        None
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<Frame> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

impl phy::TxToken for Frame {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        self.0.resize(len, 0);
        f(&mut self.0)
    }
}

/// The test's TCP/IP stack at 10.0.2.2.
struct Stack<L: Link> {
    link: L,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl<L: Link> Stack<L> {
    fn new(mut link: L, mac: [u8; 6]) -> Self {
        let now = smol_now(link.double());
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // The interface keeps the device's capabilities (checksums!) from here.
        let mut iface = Interface::new(config, &mut Capabilities, now);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24))
                .unwrap();
        });
        Stack {
            link,
            iface,
            sockets: SocketSet::new(vec![]),
        }
    }

    /// Run the stack until `done` says so (bounded by `timeout`).
    fn run_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            let now = smol_now(self.link.double());
            self.link.poll(&mut self.iface, &mut self.sockets, now);
            if let Some(value) = done(self) {
                return value;
            }
            if started.elapsed() >= timeout {
                panic!("timed out: {what}: {}", self.link.report());
            }
            let now = smol_now(self.link.double());
            let delay = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(20));
            self.link.sleep(delay);
        }
    }

    fn connect(&mut self, port: u16, local: u16, buffer: usize) -> SocketHandle {
        let handle = self.sockets.add(tcp_socket(buffer));
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, (IpAddress::Ipv4(WEB), port), local)
            .unwrap();
        self.run_until(Duration::from_secs(20), "connect", |s| {
            s.sockets
                .get::<tcp::Socket>(handle)
                .may_send()
                .then_some(())
        });
        handle
    }

    /// Send `data`, then half-close if `finish`; collect what arrives
    /// until the peer closes (or `expect` bytes arrived).
    fn exchange(
        &mut self,
        handle: SocketHandle,
        data: &[u8],
        expect: Option<usize>,
        finish: bool,
    ) -> Vec<u8> {
        let mut sent = 0;
        let mut finished = false;
        let mut received = Vec::new();
        self.run_until(Duration::from_secs(120), "exchange", |s| {
            let socket = s.sockets.get_mut::<tcp::Socket>(handle);
            if sent < data.len() && socket.can_send() {
                sent += socket.send_slice(&data[sent..]).unwrap_or(0);
            }
            if finish && sent == data.len() && !finished {
                socket.close();
                finished = true;
            }
            let mut chunk = [0u8; 8192];
            while socket.can_recv() {
                let n = socket.recv_slice(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&chunk[..n]);
            }
            if expect.is_some_and(|n| received.len() >= n) && sent == data.len() {
                socket.close();
                return Some(());
            }
            if !socket.may_recv() && sent == data.len() {
                socket.close();
                return Some(());
            }
            None
        });
        received
    }

    fn http_get(&mut self, path: &str, local: u16) -> String {
        let handle = self.connect(80, local, 16384);
        let request = format!("GET {path} HTTP/1.0\r\nHost: 10.0.2.15\r\n\r\n");
        let response = self.exchange(handle, request.as_bytes(), None, false);
        self.sockets.remove(handle);
        String::from_utf8(response).unwrap()
    }
}

fn ping(stack: &mut Stack<PeerLink>, sequence: u16) -> Duration {
    let handle = stack.sockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    stack
        .sockets
        .get_mut::<icmp::Socket>(handle)
        .bind(icmp::Endpoint::Ident(0x4242))
        .unwrap();
    let payload = b"ping from the hosted test";
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x4242,
        seq_no: sequence,
        data: payload,
    };
    let started = Instant::now();
    {
        let socket = stack.sockets.get_mut::<icmp::Socket>(handle);
        let buffer = socket
            .send(repr.buffer_len(), IpAddress::Ipv4(WEB))
            .unwrap();
        let mut packet = Icmpv4Packet::new_unchecked(buffer);
        repr.emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
    }
    stack.run_until(Duration::from_secs(20), "ping reply", |s| {
        let socket = s.sockets.get_mut::<icmp::Socket>(handle);
        let (bytes, from) = socket.recv().ok()?;
        assert_eq!(from, IpAddress::Ipv4(WEB));
        let packet = Icmpv4Packet::new_checked(bytes).unwrap();
        let reply = Icmpv4Repr::parse(&packet, &Default::default()).unwrap();
        match reply {
            Icmpv4Repr::EchoReply { seq_no, data, .. } if seq_no == sequence => {
                assert_eq!(data, payload);
                Some(())
            }
            _ => None,
        }
    });
    stack.sockets.remove(handle);
    started.elapsed()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn chargen_expected(len: usize) -> Vec<u8> {
    (0..len as u64).map(chargen_byte).collect()
}

#[test]
fn web_answers_ping_http_echo_discard_and_chargen_through_the_bridge() {
    let harness = Harness::builder(SYSTEM)
        .double("peer")
        .start()
        .expect("starts");
    harness.expect_output("[bridge] bridge: serving web (64 buffers", 0);
    let mut double = harness.double("peer");
    let mut nic = NetClient::new(regions(&double, "net0"), 64).unwrap();
    let started = Instant::now();
    let info = loop {
        if let Some(info) = nic.info() {
            break info;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "bridge serves");
        double.wait_notified("net0", Duration::from_millis(100));
    };
    assert_eq!(info.mtu, 1500);
    let mut stack = Stack::new(PeerLink { double, nic }, info.mac);
    let at = harness.expect_output("[web] web: MAC 02:00:00:00:00:01, MTU 1500", 0);
    harness.expect_output(
        "[web] web: address 10.0.2.15/24 gateway 10.0.2.2 (static)",
        at,
    );
    harness.expect_output("[web] web: link up", 0);

    let mut rtts: Vec<Duration> = (0..5).map(|i| ping(&mut stack, i)).collect();
    rtts.sort();
    eprintln!("ping through the bridge: median {:?}", rtts[2]);

    let page = stack.http_get("/", 40001);
    assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    for needle in [
        "address   10.0.2.15/24 gateway 10.0.2.2 (static)",
        "mac       02:00:00:00:00:01  mtu 1500  link up",
        "nic       served by bridge (generation 1",
        "(no bus manager in this system)",
        "nic_rx_frames ",
        // Counters as they were when the request arrived.
        "http_requests 0",
    ] {
        assert!(page.contains(needle), "missing `{needle}` in\n{page}");
    }
    let missing = stack.http_get("/nothing", 40002);
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");

    let data = pattern(300_000, 7);
    let echo = stack.connect(7, 40003, 65535);
    let timer = Instant::now();
    let echoed = stack.exchange(echo, &data, Some(data.len()), false);
    eprintln!(
        "echo: {} bytes there and back in {:?}",
        data.len(),
        timer.elapsed()
    );
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echo returned other bytes");

    let discard = stack.connect(9, 40004, 65535);
    let nothing = stack.exchange(discard, &pattern(200_000, 9), None, true);
    assert!(nothing.is_empty());

    let chargen = stack.connect(19, 40005, 65535);
    let bytes = stack.exchange(chargen, b"1048576\n", None, false);
    assert_eq!(bytes.len(), 1_048_576);
    assert!(bytes == chargen_expected(1_048_576), "chargen's pattern");

    let counters = stack.http_get("/counters", 40006);
    for needle in [
        "http_requests 2",
        "echo_bytes 300000",
        "discard_bytes 200000",
        "chargen_bytes 1048576",
        "client_bad_descriptors 0",
        "nic_bad_descriptors 0",
        "link_up 1",
    ] {
        assert!(
            counters.contains(needle),
            "missing `{needle}` in\n{counters}"
        );
    }
    if harness
        .system()
        .output()
        .iter()
        .any(|line| line.contains("Err") || line.contains("unusable"))
    {
        harness.fail("an error was reported");
    }
}

#[test]
fn a_tcp_transfer_survives_restarts_of_the_nic_driver() {
    let harness = Harness::builder(SYSTEM)
        .double("bridge")
        .double("peer")
        .start()
        .expect("starts");
    let double = harness.double("bridge");
    let regions = regions(&double, "web_net0");
    let server = DriverLink::serve(regions);
    let mut link = DriverLink {
        double,
        regions,
        server,
        restarts: 0,
        dropped: 0,
    };
    link.double.notify("web_net0");
    harness.expect_output("[web] web: address 10.0.2.15/24", 0);
    let mut stack = Stack::new(link, PEER_MAC);

    const TOTAL: usize = 4 * 1024 * 1024;
    const RESTARTS: u32 = 4;
    let handle = stack.connect(19, 41000, 65535);
    {
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        socket.send_slice(format!("{TOTAL}\n").as_bytes()).unwrap();
    }
    let mut received: Vec<u8> = Vec::with_capacity(TOTAL);
    let mut last_progress = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let started = Instant::now();
    stack.run_until(Duration::from_secs(30), "the transfer", |s| {
        let socket = s.sockets.get_mut::<tcp::Socket>(handle);
        let mut chunk = [0u8; 16384];
        let before = received.len();
        while socket.can_recv() {
            let n = socket.recv_slice(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        if received.len() > before {
            longest_stall = longest_stall.max(last_progress.elapsed());
            last_progress = Instant::now();
        }
        // Restart the driver at evenly spread points of the transfer.
        let due = (received.len() * (RESTARTS as usize + 1) / TOTAL) as u32;
        if s.link.restarts < RESTARTS && due > s.link.restarts {
            s.link.restart();
        }
        (!socket.may_recv()).then_some(())
    });
    let elapsed = started.elapsed();
    assert_eq!(stack.link.restarts, RESTARTS);
    assert_eq!(received.len(), TOTAL, "every byte arrived");
    assert!(
        received == chargen_expected(TOTAL),
        "and every byte is right"
    );
    eprintln!(
        "{TOTAL} bytes in {elapsed:?} across {RESTARTS} driver restarts; longest stall {longest_stall:?}; {} frames to web dropped for want of a buffer",
        stack.link.dropped
    );
    harness.expect_output("[web] web: the NIC driver restarted (generation 5)", 0);
    let reported = harness
        .system()
        .output()
        .iter()
        .filter(|line| line.contains("web: the NIC driver restarted"))
        .count();
    assert_eq!(reported, RESTARTS as usize);
    // Nothing leaked: the (last) driver sees every receive buffer of web's
    // posted, once the connection is over and web went quiet.
    let settled = Instant::now();
    let mut slots = Vec::new();
    while settled.elapsed() < Duration::from_secs(10) {
        while let Some(slot) = stack.link.server.take_rx().unwrap() {
            slots.push(slot);
        }
        if stack.link.server.rx_held() >= 64 {
            break;
        }
        // Signals web if a frame still waits for it (it then re-posts).
        stack.link.sleep(Duration::from_millis(50));
    }
    let server = &stack.link.server;
    assert_eq!(
        server.rx_held(),
        64,
        "all 64 receive buffers of web are posted"
    );
    assert_eq!(server.counters().bad_descriptors, 0);
}

/// The test's DHCP server's answer to a DISCOVER (OFFER) or a REQUEST
/// (ACK) from web, as a UDP payload.
fn dhcp_answer(request: &[u8], leased: Ipv4Address) -> Option<Vec<u8>> {
    use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};
    let packet = DhcpPacket::new_checked(request).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    let message_type = match repr.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => DhcpMessageType::Ack,
        _ => return None,
    };
    let server = Ipv4Address::new(10, 0, 2, 2);
    let answer = DhcpRepr {
        message_type,
        transaction_id: repr.transaction_id,
        secs: 0,
        client_hardware_address: repr.client_hardware_address,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: leased,
        server_ip: server,
        router: Some(server),
        subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(server),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(3600),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut bytes = vec![0u8; answer.buffer_len()];
    answer
        .emit(&mut DhcpPacket::new_unchecked(&mut bytes[..]))
        .ok()?;
    Some(bytes)
}

#[test]
fn web_takes_its_address_from_a_dhcp_server() {
    use smoltcp::socket::udp;
    let harness = Harness::builder("tests/systems/net-loopback-dhcp.toml")
        .double("bridge")
        .double("peer")
        .start()
        .expect("starts");
    let double = harness.double("bridge");
    let regions = regions(&double, "web_net0");
    let server = DriverLink::serve(regions);
    let mut link = DriverLink {
        double,
        regions,
        server,
        restarts: 0,
        dropped: 0,
    };
    link.double.notify("web_net0");
    harness.expect_output("[web] web: asking for an address by DHCP", 0);
    let mut stack = Stack::new(link, PEER_MAC);
    let dhcp = stack.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    ));
    stack.sockets.get_mut::<udp::Socket>(dhcp).bind(67).unwrap();
    let mut answered = 0;
    stack.run_until(Duration::from_secs(30), "a lease", |s| {
        let socket = s.sockets.get_mut::<udp::Socket>(dhcp);
        while let Ok((request, _)) = socket.recv() {
            if let Some(answer) = dhcp_answer(request, WEB) {
                let broadcast = (Ipv4Address::BROADCAST, 68);
                socket.send_slice(&answer, broadcast).unwrap();
                answered += 1;
            }
        }
        harness
            .system()
            .output()
            .iter()
            .any(|line| line == "[web] web: address 10.0.2.15/24 gateway 10.0.2.2 (dhcp)")
            .then_some(())
    });
    assert!(answered >= 2, "an OFFER and an ACK");
    let page = stack.http_get("/", 42000);
    assert!(
        page.contains("address   10.0.2.15/24 gateway 10.0.2.2 (dhcp)"),
        "{page}"
    );
}
