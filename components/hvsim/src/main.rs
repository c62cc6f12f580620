//! The `hvsim` binary: the host end of the hosted hypervisor transport.
//! Listens on a Unix socket, accepts one guest, maps the guest memory file
//! it names and serves it until it leaves.

use hvsim::host::Host;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut socket: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: hvsim --socket PATH");
                std::process::exit(2);
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: hvsim --socket PATH");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap_or_else(|e| {
        eprintln!("hvsim: cannot listen on {}: {e}", socket.display());
        std::process::exit(1);
    });
    let (mut connection, memory) = hvsim::transport::accept(&listener).unwrap_or_else(|e| {
        eprintln!("hvsim: handshake failed: {e}");
        std::process::exit(1);
    });
    let machine = Mutex::new(Host::new(memory));
    let stop = AtomicBool::new(false);
    let end = connection.serve(&machine, &stop, Duration::from_millis(10));
    eprintln!("hvsim: session ended: {end:?}");
}
