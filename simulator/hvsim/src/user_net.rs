//! [`UserNet`]: the simulated NIC on a user-space network (`hvsim --net
//! user:127.0.0.1:PORT`, hosted only), for machines where a TAP device
//! cannot be made. Like QEMU's user networking with a host port forward:
//! hvsim listens on a loopback port, and carries each TCP connection
//! accepted there into the simulated LAN as a connection from the gateway
//! 10.0.2.2 to the guest's 10.0.2.15:80 (or the port the forward names).
//! The gateway is a small smoltcp stack on the LAN's side of the wire: it
//! answers ARP and ICMP echo for 10.0.2.2 and speaks TCP to the guest; the
//! loopback sockets carry only the byte streams. Nothing leaves the
//! machine: the listening sockets accept only on 127.0.0.0/8, and the
//! gateway routes nothing.

use crate::net::NetBackend;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as NetDuration, Instant as NetInstant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Instant;

/// The gateway's addresses on the simulated LAN (QEMU slirp's scheme).
pub const GATEWAY_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
/// The guest's default static address, where forwarded connections go.
pub const GUEST_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
/// The guest's port a forward without `=GUESTPORT` goes to: its status page.
pub const DEFAULT_GUEST_PORT: u16 = 80;

/// Connections carried at once; more are accepted and closed at once
/// (counted), so a flood of local connections cannot grow hvsim.
pub const MAX_CONNECTIONS: usize = 32;
/// Each gateway socket's buffers, per direction (with window scaling).
const SOCKET_BUFFER: usize = 256 * 1024;
/// Frames queued each way between the guest and the gateway before drops.
const QUEUE_LIMIT: usize = 1024;
/// The largest frame either side may put on the wire: MTU 1500 + header.
const MAX_FRAME: usize = 1514;
/// A connection whose guest end sends nothing while data waits, or that
/// the guest never answers, is aborted after this (smoltcp's timeout).
const GUEST_TIMEOUT: NetDuration = NetDuration::from_secs(60);
/// Bytes moved per connection and direction per service pass (bounded work).
const CHUNK: usize = 64 * 1024;
/// The first of the gateway's local ports for connections to the guest.
const FIRST_LOCAL_PORT: u16 = 49152;

/// One `127.0.0.1:PORT=GUESTPORT` forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddrV4,
    pub guest_port: u16,
}

impl Forward {
    /// Parses `ADDR:PORT[=GUESTPORT]`; ADDR must be in 127.0.0.0/8 (only
    /// loopback is served). PORT 0: the system picks one (see
    /// [`UserNet::listening`]).
    pub fn parse(text: &str) -> Result<Forward, String> {
        let (listen, guest_port) = match text.split_once('=') {
            Some((listen, guest)) => (
                listen,
                guest
                    .parse::<u16>()
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| format!("bad guest port in {text:?}"))?,
            ),
            None => (text, DEFAULT_GUEST_PORT),
        };
        let listen: SocketAddrV4 = listen
            .parse()
            .map_err(|_| format!("{listen:?} is not ADDRESS:PORT"))?;
        if !listen.ip().is_loopback() {
            return Err(format!(
                "{listen}: the user-space network listens only on loopback (127.0.0.0/8)"
            ));
        }
        Ok(Forward { listen, guest_port })
    }

    /// Parses a comma-separated list of forwards (at least one).
    pub fn parse_list(text: &str) -> Result<Vec<Forward>, String> {
        let forwards = text
            .split(',')
            .map(Forward::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if forwards.is_empty() {
            return Err("no forward".into());
        }
        Ok(forwards)
    }
}

/// What [`UserNet`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserNetCounters {
    /// Frames the guest sent / frames the gateway sent the guest.
    pub frames_from_guest: u64,
    pub frames_to_guest: u64,
    /// Guest frames dropped: malformed length or the gateway's queue full.
    pub frames_dropped: u64,
    /// Frames for the guest longer than the buffer the NIC host offered.
    pub frames_too_long: u64,
    /// Loopback connections accepted, refused (too many), carried to the
    /// end, reset (by either side or the timeout).
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_closed: u64,
    pub connections_reset: u64,
    /// Payload bytes each way.
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
}

/// The wire between the guest and the gateway: the gateway stack's device.
struct Wire {
    to_gateway: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

struct FrameRx(Vec<u8>);
struct FrameTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for FrameRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

impl Device for Wire {
    type RxToken<'a> = FrameRx;
    type TxToken<'a> = FrameTx<'a>;

    fn receive(&mut self, _: NetInstant) -> Option<(FrameRx, FrameTx<'_>)> {
        if self.to_guest.len() >= QUEUE_LIMIT {
            return None;
        }
        let frame = self.to_gateway.pop_front()?;
        Some((FrameRx(frame), FrameTx(&mut self.to_guest)))
    }

    fn transmit(&mut self, _: NetInstant) -> Option<FrameTx<'_>> {
        (self.to_guest.len() < QUEUE_LIMIT).then_some(FrameTx(&mut self.to_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

/// One loopback connection carried to the guest.
struct Connection {
    stream: TcpStream,
    socket: SocketHandle,
    /// Bytes read from the loopback peer the gateway socket has not taken.
    to_guest: Vec<u8>,
    /// Bytes from the guest the loopback peer has not taken.
    to_peer: Vec<u8>,
    peer_done: bool,
    socket_closed: bool,
    peer_write_shut: bool,
}

enum Outcome {
    Open,
    Closed,
    Reset,
}

/// The user-space network: forwards, the gateway stack and its wire.
pub struct UserNet {
    listeners: Vec<(TcpListener, Forward)>,
    wire: Wire,
    interface: Interface,
    sockets: SocketSet<'static>,
    connections: Vec<Connection>,
    /// Sockets of connections that ended, removed after the stack's next
    /// poll (which sends what they still owe the guest: an ACK, a RST).
    finished: Vec<SocketHandle>,
    next_local_port: u16,
    started: Instant,
    counters: UserNetCounters,
}

impl UserNet {
    /// Listens on each forward's loopback address.
    pub fn new(forwards: &[Forward]) -> io::Result<UserNet> {
        let mut listeners = Vec::new();
        for forward in forwards {
            if !forward.listen.ip().is_loopback() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: only loopback (127.0.0.0/8) is served", forward.listen),
                ));
            }
            let listener = TcpListener::bind(forward.listen)?;
            listener.set_nonblocking(true)?;
            let bound = match listener.local_addr()? {
                SocketAddr::V4(address) => address,
                SocketAddr::V6(_) => return Err(io::ErrorKind::InvalidInput.into()),
            };
            listeners.push((
                listener,
                Forward {
                    listen: bound,
                    guest_port: forward.guest_port,
                },
            ));
        }
        let mut wire = Wire {
            to_gateway: VecDeque::new(),
            to_guest: VecDeque::new(),
        };
        let started = Instant::now();
        let config = Config::new(HardwareAddress::Ethernet(GATEWAY_MAC));
        let mut interface = Interface::new(config, &mut wire, NetInstant::ZERO);
        interface.update_ip_addrs(|addresses| {
            // One address into an empty list of capacity > 0 cannot fail.
            let _ = addresses.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), 24));
        });
        Ok(UserNet {
            listeners,
            wire,
            interface,
            sockets: SocketSet::new(Vec::new()),
            connections: Vec::new(),
            finished: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            started,
            counters: UserNetCounters::default(),
        })
    }

    /// The forwards as bound (a PORT 0 replaced by the port given).
    pub fn listening(&self) -> Vec<Forward> {
        self.listeners.iter().map(|(_, forward)| *forward).collect()
    }

    pub fn counters(&self) -> UserNetCounters {
        self.counters
    }

    /// Connections being carried now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    pub fn report(&self) -> String {
        format!(
            "user network: {} connections {:?}",
            self.connections.len(),
            self.counters
        )
    }

    fn now(&self) -> NetInstant {
        NetInstant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    fn accept(&mut self) -> bool {
        let mut moved = false;
        for index in 0..self.listeners.len() {
            // Bounded: a few new connections per pass per listener.
            for _ in 0..8 {
                let (stream, guest_port) = match self.listeners[index].0.accept() {
                    Ok((stream, _)) => (stream, self.listeners[index].1.guest_port),
                    Err(_) => break,
                };
                moved = true;
                if self.connections.len() >= MAX_CONNECTIONS
                    || stream.set_nonblocking(true).is_err()
                {
                    self.counters.connections_refused += 1;
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                );
                socket.set_timeout(Some(GUEST_TIMEOUT));
                socket.set_nagle_enabled(false);
                let local_port = self.local_port();
                if socket
                    .connect(
                        self.interface.context(),
                        (IpAddress::Ipv4(GUEST_IP), guest_port),
                        local_port,
                    )
                    .is_err()
                {
                    self.counters.connections_refused += 1;
                    continue;
                }
                let handle = self.sockets.add(socket);
                self.counters.connections_accepted += 1;
                self.connections.push(Connection {
                    stream,
                    socket: handle,
                    to_guest: Vec::new(),
                    to_peer: Vec::new(),
                    peer_done: false,
                    socket_closed: false,
                    peer_write_shut: false,
                });
            }
        }
        moved
    }

    /// A local port no carried connection uses.
    fn local_port(&mut self) -> u16 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = if port == u16::MAX {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            let in_use = self.connections.iter().any(|connection| {
                self.sockets
                    .get::<tcp::Socket>(connection.socket)
                    .local_endpoint()
                    .is_some_and(|endpoint| endpoint.port == port)
            });
            // At most MAX_CONNECTIONS ports are in use: this ends.
            if !in_use {
                return port;
            }
        }
    }

    /// Moves bytes between each loopback stream and its gateway socket.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        let mut index = 0;
        while index < self.connections.len() {
            let outcome = {
                let connection = &mut self.connections[index];
                let socket = self.sockets.get_mut::<tcp::Socket>(connection.socket);
                pump_one(connection, socket, &mut self.counters, &mut moved)
            };
            match outcome {
                Outcome::Open => index += 1,
                Outcome::Closed | Outcome::Reset => {
                    let connection = self.connections.swap_remove(index);
                    if matches!(outcome, Outcome::Reset) {
                        self.counters.connections_reset += 1;
                        // The RST goes out on the next poll of the stack;
                        // the socket is removed after it.
                        self.sockets
                            .get_mut::<tcp::Socket>(connection.socket)
                            .abort();
                        let _ = connection.stream.shutdown(Shutdown::Both);
                    } else {
                        self.counters.connections_closed += 1;
                    }
                    self.finished.push(connection.socket);
                    moved = true;
                }
            }
        }
        moved
    }

    /// Everything the network does: accept, move bytes, run the gateway
    /// stack (which puts frames on the wire for the guest).
    fn service(&mut self) -> bool {
        let mut moved = self.accept();
        moved |= self.pump();
        let now = self.now();
        let finished = core::mem::take(&mut self.finished);
        let polled = self.interface.poll(now, &mut self.wire, &mut self.sockets);
        moved |= polled != smoltcp::iface::PollResult::None;
        for handle in finished {
            self.sockets.remove(handle);
        }
        moved |= self.pump();
        moved
    }
}

fn pump_one(
    connection: &mut Connection,
    socket: &mut tcp::Socket,
    counters: &mut UserNetCounters,
    moved: &mut bool,
) -> Outcome {
    // Loopback peer -> guest.
    if connection.to_guest.is_empty() && !connection.peer_done && socket.may_send() {
        let room = socket.send_capacity() - socket.send_queue();
        if room > 0 {
            let mut chunk = vec![0; room.min(CHUNK)];
            match connection.stream.read(&mut chunk) {
                Ok(0) => connection.peer_done = true,
                Ok(len) => {
                    chunk.truncate(len);
                    connection.to_guest = chunk;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Reset,
            }
        }
    }
    if !connection.to_guest.is_empty() && socket.may_send() {
        if let Ok(sent) = socket.send_slice(&connection.to_guest) {
            if sent > 0 {
                connection.to_guest.drain(..sent);
                counters.bytes_to_guest += sent as u64;
                *moved = true;
            }
        }
    }
    if connection.peer_done && connection.to_guest.is_empty() && !connection.socket_closed {
        socket.close();
        connection.socket_closed = true;
        *moved = true;
    }
    // Guest -> loopback peer.
    if connection.to_peer.is_empty() && socket.can_recv() {
        if let Ok(data) = socket.recv(|data| {
            let take = data.len().min(CHUNK);
            (take, data[..take].to_vec())
        }) {
            counters.bytes_from_guest += data.len() as u64;
            connection.to_peer = data;
            *moved = true;
        }
    }
    if !connection.to_peer.is_empty() {
        match connection.stream.write(&connection.to_peer) {
            Ok(written) => {
                connection.to_peer.drain(..written);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Reset,
        }
    }
    let guest_finished = !socket.may_recv() && socket.recv_queue() == 0;
    let established_once = !matches!(
        socket.state(),
        tcp::State::SynSent | tcp::State::SynReceived
    );
    if guest_finished
        && established_once
        && connection.to_peer.is_empty()
        && !connection.peer_write_shut
        && socket.state() != tcp::State::Closed
    {
        let _ = connection.stream.shutdown(Shutdown::Write);
        connection.peer_write_shut = true;
    }
    match socket.state() {
        // Closed without both ends finishing: refused by the guest (RST),
        // reset, or timed out.
        tcp::State::Closed => {
            if connection.socket_closed && connection.peer_write_shut {
                Outcome::Closed
            } else {
                Outcome::Reset
            }
        }
        // Both FINs are through, but what the guest sent before its FIN may
        // still wait in the socket or in `to_peer`: done once it is out.
        tcp::State::TimeWait if connection.to_peer.is_empty() && socket.recv_queue() == 0 => {
            if !connection.peer_write_shut {
                let _ = connection.stream.shutdown(Shutdown::Write);
            }
            Outcome::Closed
        }
        _ => Outcome::Open,
    }
}

impl NetBackend for UserNet {
    fn transmit(&mut self, frame: &[u8]) {
        self.counters.frames_from_guest += 1;
        if frame.len() < 14 || frame.len() > MAX_FRAME || self.wire.to_gateway.len() >= QUEUE_LIMIT
        {
            self.counters.frames_dropped += 1;
            return;
        }
        self.wire.to_gateway.push_back(frame.to_vec());
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.wire.to_guest.is_empty() {
            self.service();
        }
        while let Some(frame) = self.wire.to_guest.pop_front() {
            if frame.len() > buf.len() {
                self.counters.frames_too_long += 1;
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            self.counters.frames_to_guest += 1;
            return Some(frame.len());
        }
        None
    }

    fn poll(&mut self) -> bool {
        self.service()
    }
}

/// The address the loopback listeners report for humans (`127.0.0.1:PORT`).
pub fn describe(forward: &Forward) -> String {
    format!(
        "{} -> {}:{}",
        forward.listen,
        Ipv4Addr::from(GUEST_IP.octets()),
        forward.guest_port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_only_loopback_is_accepted() {
        assert_eq!(
            Forward::parse("127.0.0.1:8080").unwrap(),
            Forward {
                listen: "127.0.0.1:8080".parse().unwrap(),
                guest_port: 80
            }
        );
        assert_eq!(Forward::parse("127.0.0.2:0=7").unwrap().guest_port, 7);
        assert_eq!(
            Forward::parse_list("127.0.0.1:1=80,127.0.0.1:2=7")
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "0.0.0.0:80",
            "10.0.2.2:80",
            "127.0.0.1",
            "127.0.0.1:80=0",
            "127.0.0.1:80=x",
            "",
        ] {
            assert!(Forward::parse(bad).is_err(), "{bad}");
        }
    }
}
