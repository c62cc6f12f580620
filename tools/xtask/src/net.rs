//! The seL4 image's network in QEMU: an NE2000 (`ne2k_isa`, io 0x300,
//! IRQ 9, which the simulated host drives by PIO and carries the
//! synthetic NIC's frames through) on QEMU's user network (slirp: the
//! guest is 10.0.2.15, the gateway 10.0.2.2), with one host port on
//! 127.0.0.1 forwarded to the guest's port 80 (its status page). Nothing
//! else of the host is reachable from outside: slirp's forwards listen on
//! loopback only.

use crate::image::{build, ImageSpec};
use crate::qemu::{boot_with, expectations_from, Echo};
use crate::util::Result;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

/// The guest's address on QEMU's user network (the static address the
/// description gives `web`).
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The guest's HTTP port.
pub const GUEST_HTTP_PORT: u16 = 80;

/// One QEMU run's network: the loopback port forwarded to the guest.
#[derive(Clone, Copy, Debug)]
pub struct QemuNet {
    pub host_port: u16,
}

impl QemuNet {
    /// A forward from a loopback port that is free now (the kernel picks
    /// it; QEMU binds it a moment later, so another program could take it
    /// in between: QEMU then fails to start and says so).
    pub fn new() -> Result<QemuNet> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
        let host_port = listener
            .local_addr()
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        Ok(QemuNet { host_port })
    }

    /// QEMU's arguments for the NIC and its network.
    pub fn qemu_args(&self) -> [String; 4] {
        [
            "-netdev".into(),
            format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{}-{GUEST_ADDRESS}:{GUEST_HTTP_PORT}",
                self.host_port
            ),
            "-device".into(),
            "ne2k_isa,netdev=n0,iobase=0x300,irq=9".into(),
        ]
    }

    /// Where the guest's status page is reachable from the host.
    pub fn status_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.host_port)
    }
}

/// The real `curl` against the forwarded loopback port: the response
/// (headers, then the body), or why there is none. No proxy (the
/// environment's proxy settings must not send loopback traffic
/// elsewhere), bounded in time.
pub fn curl(url: &str, max_time: Duration) -> Result<String> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--noproxy", "*", "--include"])
        .arg("--max-time")
        .arg(max_time.as_secs().max(1).to_string())
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl (run `cargo xtask setup`): {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network boot test: boot the system with the NIC, wait for `ready`
/// on the console, then fetch each page through the forwarded port with
/// `curl` and check it holds its texts; QEMU is stopped after the last
/// page. The console must also show every line of `expect`.
pub struct NetBootTest {
    pub name: &'static str,
    pub system: &'static str,
    pub host_script: Option<&'static str>,
    pub expect: &'static str,
    /// The console line after which the guest serves HTTP.
    pub ready: &'static str,
    /// (path, texts the response must hold).
    pub pages: &'static [(&'static str, &'static [&'static str])],
}

pub const BOOT_TESTS: &[NetBootTest] = &[
    NetBootTest {
        name: "status page with curl",
        system: "system.toml",
        host_script: Some("tests/systems/network-qemu.hvsim"),
        expect: "tests/systems/network-qemu.expect",
        ready: "[web] web: link up",
        pages: &[
            (
                "/",
                &[
                    "seL4 Hyper-V guest: net-client (web)",
                    "address   10.0.2.15/24 gateway 10.0.2.2 (static)",
                    "link up",
                    "served by network (generation 1",
                    "48565349-4d00-0000-0000-000000000005  network    open",
                    "     6 nic        48565349-4d00-0000-0000-000000000005   sub 1     open",
                    "     7 nic        48565349-4d00-0000-0000-000000000005   sub 2     open",
                    "link_up 1",
                ],
            ),
            // Then connection after connection: web once stopped
            // answering after a burst of them on seL4 (a stale wake-up
            // deadline kept the driver's timer firing above web's
            // priority; docs/network.md).
            ("/counters", &["nic_rx_frames", "link_up 1"]),
            ("/", &["seL4 Hyper-V guest: net-client (web)"]),
            ("/counters", &["nic_tx_frames"]),
            ("/", &["seL4 Hyper-V guest: net-client (web)"]),
            ("/counters", &["nic_rx_frames"]),
            ("/", &["seL4 Hyper-V guest: net-client (web)"]),
            ("/counters", &["nic_tx_frames"]),
            ("/", &["seL4 Hyper-V guest: net-client (web)"]),
            ("/counters", &["nic_rx_frames"]),
            ("/", &["seL4 Hyper-V guest: net-client (web)"]),
        ],
    },
    NetBootTest {
        name: "status page with curl after the driver was killed",
        system: "system.toml",
        host_script: Some("tests/systems/network-restart-qemu.hvsim"),
        expect: "tests/systems/network-restart-qemu.expect",
        ready: "[web] web: the NIC driver restarted (generation 2)",
        pages: &[(
            "/",
            &[
                "seL4 Hyper-V guest: net-client (web)",
                "address   10.0.2.15/24 gateway 10.0.2.2 (static)",
                "served by network (generation 2, 1 driver restarts seen)",
                "48565349-4d00-0000-0000-000000000005  network    open",
                "client_restarts 1",
                "link_up 1",
            ],
        )],
    },
];

/// How long a page may take, retries included.
const PAGE_TIME: Duration = Duration::from_secs(20);

/// The pages of `test` fetched from `net`, each checked; the first
/// failure ends it.
fn fetch_pages(test: &NetBootTest, net: &QemuNet) -> Result<Vec<String>> {
    let mut fetched = Vec::new();
    for (path, texts) in test.pages {
        let url = format!("http://127.0.0.1:{}{path}", net.host_port);
        let started = Instant::now();
        // The guest's TCP may come up a moment after its ready line:
        // retry a refused or reset connection, within PAGE_TIME.
        let page = loop {
            match curl(&url, PAGE_TIME) {
                Ok(page) => break page,
                Err(error) if started.elapsed() + Duration::from_secs(1) < PAGE_TIME => {
                    eprintln!("xtask: {error}; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        };
        eprintln!(
            "xtask: curl {url}: {} bytes in {} ms",
            page.len(),
            started.elapsed().as_millis()
        );
        if !page.starts_with("HTTP/1.") || !page.lines().next().unwrap_or("").contains(" 200") {
            return Err(format!("{url}: not an HTTP 200 response: {page:?}"));
        }
        if let Some(missing) = texts.iter().find(|text| !page.contains(**text)) {
            return Err(format!("{url}: the page lacks {missing:?}: {page:?}"));
        }
        fetched.push(page);
    }
    Ok(fetched)
}

pub fn boot_test_one(test: &NetBootTest) -> Result {
    let spec = ImageSpec::new(test.system, test.host_script);
    let expected = expectations_from(&crate::util::workspace_root().join(test.expect))?;
    let image = build(&spec)?;
    let mut result: Option<Result<Vec<String>>> = None;
    let mut during = |lines: &[String], net: &QemuNet| {
        if result.is_none() && lines.iter().any(|line| line.contains(test.ready)) {
            eprintln!(
                "xtask: the guest serves HTTP; fetching {}",
                net.status_url()
            );
            result = Some(fetch_pages(test, net));
        }
        // Stop once the pages were fetched and the console showed the rest.
        result.is_some()
            && (result.as_ref().is_some_and(|r| r.is_err())
                || ipc_harness::expect::check(&expected, lines).is_ok())
    };
    let boot = boot_with(&image, None, Echo::Lines, None, Some(&mut during))?;
    eprintln!("xtask: QEMU ran {:.2} s", boot.elapsed.as_secs_f64());
    match result {
        None => Err(format!("the guest never printed {:?}", test.ready)),
        Some(Err(error)) => Err(error),
        Some(Ok(pages)) => {
            boot.verdict(&expected)?;
            for page in &pages {
                eprintln!("xtask: page:\n{page}");
            }
            eprintln!(
                "xtask: boot test passed ({} pages fetched with curl, {} expected lines seen)",
                pages.len(),
                expected.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_listens_on_loopback_only() {
        let net = QemuNet { host_port: 40123 };
        assert_eq!(
            net.qemu_args(),
            [
                "-netdev",
                "user,id=n0,hostfwd=tcp:127.0.0.1:40123-10.0.2.15:80",
                "-device",
                "ne2k_isa,netdev=n0,iobase=0x300,irq=9"
            ]
        );
        assert_eq!(net.status_url(), "http://127.0.0.1:40123/");
    }

    #[test]
    fn a_free_port_is_picked() {
        let net = QemuNet::new().unwrap();
        assert_ne!(net.host_port, 0);
        // Free: it can be bound.
        drop(TcpListener::bind((Ipv4Addr::LOCALHOST, net.host_port)).unwrap());
    }
}
