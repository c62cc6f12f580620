//! The TCP services: HTTP (80), echo (7), discard (9) and a bounded
//! chargen (19), each a few listening smoltcp sockets that listen again
//! once a connection is over.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7;
pub const DISCARD_PORT: u16 = 9;
pub const CHARGEN_PORT: u16 = 19;

/// Connections served at once per service.
const HTTP_SOCKETS: usize = 4;
const STREAM_SOCKETS: usize = 2;
/// Socket buffers: the TCP window (64 KiB without window scaling).
const STREAM_BUFFER: usize = 65535;
const HTTP_RX: usize = 2048;
const HTTP_TX: usize = 16384;
/// The longest request head read; the rest is ignored.
const REQUEST_MAX: usize = 1024;
/// The most bytes chargen sends for one request.
pub const CHARGEN_MAX: u64 = 1 << 32;
/// How often an idle connection asks its peer for an ACK.
const KEEP_ALIVE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(1);
/// Bytes moved per socket per round (bounds a round's work).
const CHUNK: usize = 4096;

/// What a service answered; the status page shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub connections: u64,
    pub http_requests: u64,
    pub echo_bytes: u64,
    pub discard_bytes: u64,
    pub chargen_bytes: u64,
}

#[derive(Default)]
struct Http {
    request: heapless::Vec<u8, REQUEST_MAX>,
    response: Option<(Vec<u8>, usize)>,
    counted: bool,
}

#[derive(Default)]
struct Chargen {
    line: heapless::Vec<u8, 32>,
    /// Bytes still to send (`None`: the count has not arrived yet).
    remaining: Option<u64>,
    sent: u64,
    counted: bool,
}

pub struct Services {
    http: Vec<(SocketHandle, Http)>,
    echo: Vec<(SocketHandle, bool)>,
    discard: Vec<(SocketHandle, bool)>,
    chargen: Vec<(SocketHandle, Chargen)>,
    pub stats: ServiceStats,
}

fn socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    // The client runs only when notified: a delayed ACK or a segment held
    // back by Nagle would wait for the next event.
    socket.set_ack_delay(None);
    socket.set_nagle_enabled(false);
    // smoltcp does not probe a zero window: a window update lost (a NIC
    // driver restart drops what is in flight) would stall a sender for
    // good. A keep-alive makes the peer repeat its window.
    socket.set_keep_alive(Some(KEEP_ALIVE));
    socket
}

/// Listen again on a socket whose connection is over; returns whether a
/// new connection just started (for the counters).
fn relisten(socket: &mut tcp::Socket<'static>, port: u16) -> bool {
    if !socket.is_open() {
        let _ = socket.listen(port);
    }
    socket.is_active()
}

impl Services {
    pub fn new(sockets: &mut SocketSet<'static>) -> Services {
        let mut add = |rx, tx, port| {
            let mut s = socket(rx, tx);
            let _ = s.listen(port);
            sockets.add(s)
        };
        Services {
            http: (0..HTTP_SOCKETS)
                .map(|_| (add(HTTP_RX, HTTP_TX, HTTP_PORT), Http::default()))
                .collect(),
            echo: (0..STREAM_SOCKETS)
                .map(|_| (add(STREAM_BUFFER, STREAM_BUFFER, ECHO_PORT), false))
                .collect(),
            discard: (0..STREAM_SOCKETS)
                .map(|_| (add(STREAM_BUFFER, 256, DISCARD_PORT), false))
                .collect(),
            chargen: (0..STREAM_SOCKETS)
                .map(|_| (add(256, STREAM_BUFFER, CHARGEN_PORT), Chargen::default()))
                .collect(),
            stats: ServiceStats::default(),
        }
    }

    /// Serve every socket once; `page(path)` makes an HTTP answer's
    /// status code, content type and body. Returns whether anything moved.
    pub fn run(
        &mut self,
        sockets: &mut SocketSet<'static>,
        page: &mut dyn FnMut(&str) -> (u16, Vec<u8>),
    ) -> bool {
        let mut moved = false;
        for (handle, state) in self.http.iter_mut() {
            moved |= serve_http(
                sockets.get_mut::<tcp::Socket>(*handle),
                state,
                page,
                &mut self.stats,
            );
        }
        for (handle, counted) in self.echo.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            count_connection(relisten(socket, ECHO_PORT), counted, &mut self.stats);
            let bytes = serve_echo(socket);
            self.stats.echo_bytes += bytes as u64;
            moved |= bytes > 0;
        }
        for (handle, counted) in self.discard.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            count_connection(relisten(socket, DISCARD_PORT), counted, &mut self.stats);
            let bytes = serve_discard(socket);
            self.stats.discard_bytes += bytes as u64;
            moved |= bytes > 0;
        }
        for (handle, state) in self.chargen.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            let active = relisten(socket, CHARGEN_PORT);
            if !active {
                *state = Chargen::default();
            }
            count_connection(active, &mut state.counted, &mut self.stats);
            let bytes = serve_chargen(socket, state);
            self.stats.chargen_bytes += bytes as u64;
            moved |= bytes > 0;
        }
        moved
    }
}

/// Past the handshake: data may flow one way at least. (Before it,
/// `may_recv` is false too, which must not read as "the peer closed".)
fn connected(socket: &tcp::Socket<'static>) -> bool {
    socket.may_send() || socket.may_recv()
}

/// The peer sent its FIN (and the handshake is over).
fn peer_closed(socket: &tcp::Socket<'static>) -> bool {
    connected(socket) && !socket.may_recv()
}

fn count_connection(active: bool, counted: &mut bool, stats: &mut ServiceStats) {
    if active && !*counted {
        stats.connections += 1;
    }
    *counted = active;
}

fn serve_echo(socket: &mut tcp::Socket<'static>) -> usize {
    let mut buffer = [0u8; CHUNK];
    let room = socket.send_capacity() - socket.send_queue();
    let mut moved = 0;
    if socket.can_recv() && room > 0 {
        let want = room.min(CHUNK);
        if let Ok(n) = socket.recv_slice(&mut buffer[..want]) {
            // Fits: no more was taken than there is room for.
            let _ = socket.send_slice(&buffer[..n]);
            moved = n;
        }
    }
    if peer_closed(socket) && socket.send_queue() == 0 {
        socket.close();
    }
    moved
}

fn serve_discard(socket: &mut tcp::Socket<'static>) -> usize {
    let mut buffer = [0u8; CHUNK];
    let mut moved = 0;
    // Bounded: the receive buffer holds at most STREAM_BUFFER bytes.
    for _ in 0..=STREAM_BUFFER / CHUNK {
        match socket.recv_slice(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => moved += n,
        }
    }
    if peer_closed(socket) {
        socket.close();
    }
    moved
}

/// RFC 864's pattern: lines of 72 printable characters, each starting one
/// character further along the 95 printable ASCII characters, then CR LF.
pub fn chargen_byte(offset: u64) -> u8 {
    let line = offset / 74;
    let column = offset % 74;
    match column {
        72 => b'\r',
        73 => b'\n',
        _ => b' ' + ((line + column) % 95) as u8,
    }
}

/// The byte count a chargen peer sends first: digits, optional spaces and
/// CR. `None` for anything else, or more than [`CHARGEN_MAX`].
pub fn parse_count(line: &[u8]) -> Option<u64> {
    let text = core::str::from_utf8(line).ok()?.trim();
    let count: u64 = text.parse().ok()?;
    (count <= CHARGEN_MAX).then_some(count)
}

fn serve_chargen(socket: &mut tcp::Socket<'static>, state: &mut Chargen) -> usize {
    if state.remaining.is_none() {
        let mut byte = [0u8; 1];
        // Bounded: the line holds 32 bytes.
        while state.line.len() < state.line.capacity() {
            match socket.recv_slice(&mut byte) {
                Ok(1) => {}
                _ => break,
            }
            if byte[0] == b'\n' {
                match parse_count(&state.line) {
                    Some(count) => state.remaining = Some(count),
                    None => {
                        let _ = socket
                            .send_slice(b"chargen: send a byte count and a newline first\r\n");
                        socket.close();
                    }
                }
                break;
            }
            let _ = state.line.push(byte[0]);
        }
        if state.line.is_full() && state.remaining.is_none() {
            socket.close();
        }
    }
    // Whatever else the peer sends is ignored.
    let mut sink = [0u8; 256];
    let _ = socket.recv_slice(&mut sink);
    let Some(remaining) = state.remaining else {
        return 0;
    };
    let mut chunk = [0u8; CHUNK];
    let room = socket.send_capacity() - socket.send_queue();
    let n = (remaining.min(room as u64) as usize).min(CHUNK);
    for (i, byte) in chunk[..n].iter_mut().enumerate() {
        *byte = chargen_byte(state.sent + i as u64);
    }
    let sent = socket.send_slice(&chunk[..n]).unwrap_or(0);
    state.sent += sent as u64;
    state.remaining = Some(remaining - sent as u64);
    if remaining == sent as u64 && socket.is_active() && socket.may_send() {
        socket.close();
    }
    sent
}

/// The path of an HTTP request head, once it is complete.
pub fn request_path(head: &[u8]) -> Option<&str> {
    let text = core::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut words = line.split(' ');
    let method = words.next()?;
    let path = words.next()?;
    (method == "GET" || method == "HEAD").then_some(path)
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

fn serve_http(
    socket: &mut tcp::Socket<'static>,
    state: &mut Http,
    page: &mut dyn FnMut(&str) -> (u16, Vec<u8>),
    stats: &mut ServiceStats,
) -> bool {
    let active = relisten(socket, HTTP_PORT);
    if !active {
        *state = Http::default();
        return false;
    }
    if !connected(socket) {
        return false;
    }
    count_connection(active, &mut state.counted, stats);
    let mut moved = false;
    if state.response.is_none() {
        let mut chunk = [0u8; 512];
        if let Ok(n) = socket.recv_slice(&mut chunk) {
            let room = state.request.capacity() - state.request.len();
            let _ = state.request.extend_from_slice(&chunk[..n.min(room)]);
            moved |= n > 0;
        }
        let complete = head_complete(&state.request) || state.request.is_full();
        if complete || (peer_closed(socket) && !state.request.is_empty()) {
            stats.http_requests += 1;
            let (code, body) = match request_path(&state.request) {
                Some(path) => page(path),
                None => (400, b"bad request\n".to_vec()),
            };
            let head_only = state.request.starts_with(b"HEAD ");
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Bad Request",
            };
            let mut response = alloc::format!(
                "HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if !head_only {
                response.extend_from_slice(&body);
            }
            state.response = Some((response, 0));
        } else if peer_closed(socket) {
            socket.close();
        }
    }
    if let Some((response, sent)) = state.response.as_mut() {
        if *sent < response.len() {
            if let Ok(n) = socket.send_slice(&response[*sent..]) {
                *sent += n;
                moved |= n > 0;
            }
        }
        if *sent == response.len() && socket.may_send() {
            socket.close();
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chargen_lines_rotate_through_the_printable_characters() {
        let first: Vec<u8> = (0..74).map(chargen_byte).collect();
        assert_eq!(&first[..3], b" !\"");
        assert_eq!(&first[72..], b"\r\n");
        assert_eq!(chargen_byte(74), b'!', "the next line starts one further");
        assert_eq!(chargen_byte(74 * 95), b' ', "after 95 lines it starts over");
        assert!((0..10_000)
            .map(chargen_byte)
            .all(|b| b == b'\r' || b == b'\n' || (32..127).contains(&b)));
    }

    #[test]
    fn counts_and_request_lines_are_parsed_strictly() {
        assert_eq!(parse_count(b"1048576"), Some(1048576));
        assert_eq!(parse_count(b" 12 \r"), Some(12));
        assert_eq!(parse_count(b"0"), Some(0));
        assert_eq!(parse_count(b"-1"), None);
        assert_eq!(parse_count(b"12x"), None);
        assert_eq!(parse_count(b"99999999999999"), None, "beyond CHARGEN_MAX");
        assert_eq!(parse_count(&[0xff]), None);
        assert_eq!(
            request_path(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/")
        );
        assert_eq!(
            request_path(b"HEAD /counters HTTP/1.0\r\n\r\n"),
            Some("/counters")
        );
        assert_eq!(request_path(b"POST / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"GET"), None);
        assert!(head_complete(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.0\r\n"));
    }
}
