//! The hosted transport's handshake and error rules, driven with raw
//! records: HELLO refusals, unknown kinds, wrong lengths, non-zero reserved
//! fields and records the guest may not send all end the session with the
//! documented reply.
#![forbid(unsafe_code)]

mod common;

use hv_interface::hosted::{HostedHypervisor, MappedGuestMemory, RecordStream};
use hv_interface::wire::{self, hello_status, kind, protocol_error, HelloFixed};
use hvsim::host::Host;
use hvsim::transport::{self, SessionEnd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;
use zerocopy::IntoBytes;

/// Runs a host on a fresh socket; returns the socket path and the server
/// thread, which yields the session end (or the handshake error).
fn spawn_host(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::thread::JoinHandle<Result<SessionEnd, std::io::Error>>,
) {
    let socket = dir.join("hv.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut connection, memory) = transport::accept(&listener)?;
        let machine = Mutex::new(Host::new(memory));
        Ok(connection.serve(&machine, &AtomicBool::new(false), Duration::from_millis(2)))
    });
    (socket, handle)
}

fn hello_body(magic: u32, version: u32, size: u64, vp_count: u32, path: &[u8]) -> Vec<u8> {
    let mut body = HelloFixed {
        magic,
        version,
        memory_size: size,
        vp_count,
        path_length: path.len() as u32,
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(path);
    body
}

fn raw_hello(socket: &Path, body: &[u8]) -> wire::HelloReply {
    let mut stream = RecordStream::new(UnixStream::connect(socket).unwrap());
    stream.send_bytes(kind::HELLO, body).unwrap();
    let record = stream.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(record.kind, kind::HELLO_REPLY);
    record.parse().unwrap()
}

#[test]
fn hello_refusals() {
    let dir = common::temp_dir("hello");
    let memory_path = dir.join("guest.mem");
    let _memory = MappedGuestMemory::create(&memory_path, 0x10000).unwrap();
    let path = memory_path.to_str().unwrap().as_bytes().to_vec();
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (
            hello_body(0x1234, 1, 0x10000, 1, &path),
            hello_status::BAD_MAGIC,
        ),
        (
            hello_body(wire::MAGIC, 2, 0x10000, 1, &path),
            hello_status::UNSUPPORTED_VERSION,
        ),
        (
            hello_body(wire::MAGIC, 1, 0x10001, 1, &path),
            hello_status::BAD_MEMORY_SIZE,
        ),
        (
            hello_body(wire::MAGIC, 1, 0x10000, 2, &path),
            hello_status::BAD_VP_COUNT,
        ),
        // The file is shorter than announced.
        (
            hello_body(wire::MAGIC, 1, 0x20000, 1, &path),
            hello_status::MEMORY_FILE_UNUSABLE,
        ),
        (
            hello_body(wire::MAGIC, 1, 0x10000, 1, b"/nonexistent/guest.mem"),
            hello_status::MEMORY_FILE_UNUSABLE,
        ),
    ];
    for (index, (body, expected)) in cases.into_iter().enumerate() {
        let case_dir = dir.join(format!("case{index}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let (socket, server) = spawn_host(&case_dir);
        let reply = raw_hello(&socket, &body);
        assert_eq!(reply.status, expected, "case {index}");
        assert_eq!(reply.magic, wire::MAGIC);
        assert!(server.join().unwrap().is_err());
    }
    // The client reports a refusal as such.
    let (socket, server) = spawn_host(&dir);
    match HostedHypervisor::connect(&socket, &memory_path, 0x20000) {
        Err(hv_interface::hosted::ConnectError::Refused(status)) => {
            assert_eq!(status, hello_status::MEMORY_FILE_UNUSABLE)
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(server.join().unwrap().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connects properly, then sends `bad` and expects PROTOCOL_ERROR `code`.
fn expect_protocol_error(name: &str, bad: &[u8], code: u32) {
    let dir = common::temp_dir(name);
    let memory_path = dir.join("guest.mem");
    let _memory = MappedGuestMemory::create(&memory_path, 0x10000).unwrap();
    let (socket, server) = spawn_host(&dir);
    let mut stream = RecordStream::new(UnixStream::connect(&socket).unwrap());
    stream
        .send_bytes(
            kind::HELLO,
            &hello_body(
                wire::MAGIC,
                1,
                0x10000,
                1,
                memory_path.to_str().unwrap().as_bytes(),
            ),
        )
        .unwrap();
    let reply = stream.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(reply.kind, kind::HELLO_REPLY);
    stream.send_raw(bad).unwrap();
    let record = stream.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(record.kind, kind::PROTOCOL_ERROR, "{name}");
    let error: wire::ProtocolError = record.parse().unwrap();
    assert_eq!(error.code, code, "{name}");
    match server.join().unwrap() {
        Ok(SessionEnd::ProtocolError(seen)) => assert_eq!(seen, code),
        other => panic!("{name}: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn record(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = kind.to_le_bytes().to_vec();
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn malformed_records_end_the_session() {
    expect_protocol_error(
        "unknown",
        &record(0x42, &[0; 8]),
        protocol_error::UNKNOWN_KIND,
    );
    expect_protocol_error(
        "length",
        &record(kind::MSR_READ, &[0; 12]),
        protocol_error::BAD_LENGTH,
    );
    let mut reserved = 0x4000_0081u32.to_le_bytes().to_vec();
    reserved.extend_from_slice(&1u32.to_le_bytes());
    expect_protocol_error(
        "reserved",
        &record(kind::MSR_READ, &reserved),
        protocol_error::RESERVED_NOT_ZERO,
    );
    expect_protocol_error(
        "host-kind",
        &record(kind::INTERRUPT, &[0; 8]),
        protocol_error::NOT_EXPECTED_NOW,
    );
    expect_protocol_error(
        "second-hello",
        &record(kind::HELLO, &hello_body(wire::MAGIC, 1, 0x10000, 1, b"/x")),
        protocol_error::NOT_EXPECTED_NOW,
    );
}

#[test]
fn guest_leaving_ends_the_session_cleanly() {
    let mut h = common::start("leave", Host::new);
    use hv_interface::Hypervisor;
    assert_eq!(h.guest.msr_read(hyperv_defs::msr::SVERSION), Ok(1));
    let server = h.server.take().unwrap();
    drop(h.guest);
    assert!(matches!(server.join().unwrap(), SessionEnd::GuestClosed));
}

/// The hosted reference TSC page (docs/hypervisor-transport.md 5.10): once
/// the host has measured the TSC, the page gives the same reference time
/// as TIME_REF_COUNT, and the host refines its pair under new sequences.
#[test]
fn the_reference_tsc_page_agrees_with_the_reference_counter() {
    use hv_interface::{GuestMemory, Hypervisor};
    use hyperv_defs::reference_tsc::{read_reference_time, PageUnusable};
    const PAGE_GPA: u64 = 0x5000;
    let mut h = common::start("reference-tsc", Host::new);
    let Some(_) = hosted_runtime::sys::time_stamp_counter() else {
        return; // no TSC here: nothing the host could scale
    };
    // Outside guest memory: #GP.
    assert!(h
        .guest
        .msr_write(hyperv_defs::msr::REFERENCE_TSC, (1 << 40) | 1)
        .is_err());
    h.guest
        .msr_write(hyperv_defs::msr::REFERENCE_TSC, PAGE_GPA | 1)
        .unwrap();
    assert_eq!(
        h.guest.msr_read(hyperv_defs::msr::REFERENCE_TSC),
        Ok(PAGE_GPA | 1)
    );
    let memory = &h.memory;
    let page_time = || {
        read_reference_time(
            |at| memory.load_u32(PAGE_GPA + at as u64).unwrap(),
            |at| {
                let mut bytes = [0u8; 8];
                memory.read(PAGE_GPA + at as u64, &mut bytes).unwrap();
                u64::from_le_bytes(bytes)
            },
            || hosted_runtime::sys::time_stamp_counter().unwrap(),
        )
    };
    // The page becomes valid once the host measured over 20 ms.
    let started = std::time::Instant::now();
    while page_time() == Err(PageUnusable::Invalid) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the page stayed invalid"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut compare = |label: &str| -> (i64, u32) {
        let (before, sequence) = page_time().unwrap();
        let counter = h.guest.msr_read(hyperv_defs::msr::TIME_REF_COUNT).unwrap();
        let (after, _) = page_time().unwrap();
        // The counter was read between the two page readings; how far it
        // lies outside them is the page's error.
        let error = if counter < before {
            counter as i64 - before as i64
        } else if counter > after {
            counter as i64 - after as i64
        } else {
            0
        };
        eprintln!(
            "reference TSC page {label}: sequence {sequence}, page {before}..{after}, \
             TIME_REF_COUNT {counter}: error {error} x 100 ns (round trip {} x 100 ns)",
            after - before
        );
        (error, sequence)
    };
    let (first_error, first_sequence) = compare("at the first pair");
    std::thread::sleep(Duration::from_millis(300));
    let (later_error, later_sequence) = compare("300 ms later");
    // Within 50 us of the counter outside the round trip (a rate error of
    // 0.1% shows as about 140 us here).
    assert!(first_error.abs() <= 500, "{first_error} x 100 ns");
    assert!(later_error.abs() <= 500, "{later_error} x 100 ns");
    assert!(later_sequence > first_sequence, "the host refined its pair");
    h.finish();
}
