//! The `hvsim` binary: the host end of the hosted hypervisor transport
//! (`docs/hypervisor-transport.md`) with the simulated VMBus host behind
//! it. Listens on a Unix socket, accepts one guest, maps the guest memory
//! file it names and serves it until it leaves. Operator commands are read
//! from stdin, one per line (see `docs/hvsim.md`).

use hvsim::sim::Simulator;
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmbus_protocol::ProtocolVersion;

const USAGE: &str =
    "usage: hvsim --socket PATH [--max-version MAJOR.MINOR] [--min-version MAJOR.MINOR] \
[--msg-conn-id N] [--gpadl-limit BYTES] [--devices heartbeat,shutdown,timesync,kvp]";

fn fail(message: &str) -> ! {
    eprintln!("hvsim: {message}\n{USAGE}");
    std::process::exit(2);
}

fn parse_version(text: &str) -> ProtocolVersion {
    let (major, minor) = text.split_once('.').unwrap_or_else(|| fail("bad version"));
    let major = major.parse().unwrap_or_else(|_| fail("bad version"));
    let minor = minor.parse().unwrap_or_else(|_| fail("bad version"));
    ProtocolVersion::new(major, minor)
}

fn device(name: &str, index: u128) -> DeviceConfig {
    let kind = match name {
        "heartbeat" => DeviceKind::Heartbeat,
        "shutdown" => DeviceKind::Shutdown,
        "timesync" => DeviceKind::TimeSync,
        "kvp" => DeviceKind::Kvp,
        other => fail(&format!("unknown device {other}")),
    };
    // Fixed instance GUIDs so runs are reproducible.
    DeviceConfig::ic(
        kind,
        uuid::Uuid::from_u128(0x4856_5349_4d00_0000_0000_0000_0000_0000 | index),
    )
}

fn parse_args() -> (PathBuf, ServerConfig) {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    let mut config = ServerConfig::default();
    let mut devices = "heartbeat,shutdown,timesync,kvp".to_string();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value())),
            "--max-version" => config.max_version = parse_version(&value()),
            "--min-version" => config.min_version = parse_version(&value()),
            "--msg-conn-id" => {
                config.msg_conn_id = value().parse().unwrap_or_else(|_| fail("bad id"))
            }
            "--gpadl-limit" => {
                config.gpadl_memory_limit = value().parse().unwrap_or_else(|_| fail("bad limit"))
            }
            "--devices" => devices = value(),
            _ => fail(&format!("unknown argument {arg}")),
        }
    }
    config.devices = devices
        .split(',')
        .filter(|name| !name.is_empty())
        .enumerate()
        .map(|(index, name)| device(name, index as u128 + 1))
        .collect();
    (
        socket.unwrap_or_else(|| fail("--socket is required")),
        config,
    )
}

/// Windows file time (100 ns units since 1601) of now.
fn file_time_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    116_444_736_000_000_000 + (unix.as_nanos() / 100) as u64
}

fn operator<M: hv_interface::GuestMemory>(line: &str, sim: &mut Simulator<M>) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["shutdown"] => format!("{}", sim.request_shutdown(0)),
        ["reboot"] => format!("{}", sim.request_shutdown(vmbus_protocol::ic::shutdown_flags::REBOOT)),
        ["shutdown-status"] => format!("{:?}", sim.shutdown_status()),
        ["heartbeat"] => format!("{:?}", sim.last_heartbeat()),
        ["time"] => format!("{}", sim.send_time(file_time_now(), vmbus_protocol::ic::timesync_flags::SYNC)),
        ["kvp-set", pool, key, value] => match pool.parse() {
            Ok(pool) => format!("{}", sim.kvp_set(pool, key, value)),
            Err(_) => "bad pool".into(),
        },
        ["kvp-get", pool, key] => match pool.parse() {
            Ok(pool) => format!("{}", sim.kvp_get(pool, key)),
            Err(_) => "bad pool".into(),
        },
        ["kvp-responses"] => format!("{:?}", sim.kvp_responses()),
        ["rescind", relid] => match relid.parse() {
            Ok(relid) => format!("{}", sim.rescind(relid)),
            Err(_) => "bad relid".into(),
        },
        ["stats"] => format!(
            "version {:?} server {:?} hypercalls {:?} synic {:?} open {:?}",
            sim.vmbus.version(),
            sim.vmbus.stats,
            sim.host.stats,
            sim.host.synic.stats,
            sim.vmbus
                .open_channels()
                .into_iter()
                .map(|relid| (relid, sim.vmbus.endpoint(relid).map(|e| e.stats)))
                .collect::<Vec<_>>()
        ),
        ["rejections"] => format!("{:?}", sim.vmbus.rejections),
        _ => "commands: shutdown | reboot | shutdown-status | heartbeat | time | kvp-set POOL KEY VALUE | kvp-get POOL KEY | kvp-responses | rescind RELID | stats | rejections".into(),
    }
}

fn main() {
    let (socket, config) = parse_args();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap_or_else(|e| {
        eprintln!("hvsim: cannot listen on {}: {e}", socket.display());
        std::process::exit(1);
    });
    let (mut connection, memory) = hvsim::transport::accept(&listener).unwrap_or_else(|e| {
        eprintln!("hvsim: handshake failed: {e}");
        std::process::exit(1);
    });
    eprintln!(
        "hvsim: guest connected, {} bytes of memory in {}",
        connection.hello.memory_size,
        connection.hello.memory_path.display()
    );
    let machine = Arc::new(Mutex::new(Simulator::new(memory, config)));
    let stop = Arc::new(AtomicBool::new(false));
    let operator_machine = machine.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut sim = operator_machine.lock().unwrap_or_else(|e| e.into_inner());
            println!("{}", operator(&line, &mut sim));
        }
    });
    let end = connection.serve(&*machine, &stop, Duration::from_millis(10));
    stop.store(true, Ordering::SeqCst);
    eprintln!("hvsim: session ended: {end:?}");
}
