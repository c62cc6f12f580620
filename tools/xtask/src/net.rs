//! The seL4 image's network in QEMU: an NE2000 (`ne2k_isa`, io 0x300,
//! IRQ 9, which the simulated host drives by PIO and carries the
//! synthetic NIC's frames through) on QEMU's user network (slirp: the
//! guest is 10.0.2.15, the gateway 10.0.2.2), with one host port on
//! 127.0.0.1 forwarded to the guest's port 80 (its status page). Nothing
//! else of the host is reachable from outside: slirp's forwards listen on
//! loopback only.

use crate::util::Result;
use std::net::{Ipv4Addr, TcpListener};

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
