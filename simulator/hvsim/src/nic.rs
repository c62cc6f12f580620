//! The simulated host's network in the seL4 image: QEMU's NE2000
//! (`-device ne2k_isa,netdev=n0,iobase=0x300,irq=9` on QEMU's user
//! network), when the description grants this component its ports
//! (`ne2000`, 0x300-0x31F) and optionally its interrupt (`nic`, ISA IRQ
//! 9). The chip's protocol is [`hvsim::ne2000`]; this is only the port
//! access through the runtime's IO-port capabilities, and the boot-time
//! check that frames move: an ARP request for QEMU's gateway, answered by
//! QEMU's user network (slirp).

use crate::component::IOPORT_NAMES;
use component_api::{id_named, println, Env, IoPortName};
use hvsim::ne2000::{arp, Ne2000, Ne2000Ports, ProbeError, MAX_FRAME};
use sel4_runtime::Sel4Env;

/// The NE2000's 32 ports.
pub struct NicPorts {
    env: Sel4Env,
    ports: IoPortName,
}

impl Ne2000Ports for NicPorts {
    fn read_register(&mut self, offset: u16) -> u8 {
        self.env.ioport_read(self.ports, offset, 1) as u8
    }
    fn write_register(&mut self, offset: u16, value: u8) {
        self.env
            .ioport_write(self.ports, offset, 1, u32::from(value));
    }
    fn read_data(&mut self) -> u16 {
        self.env
            .ioport_read(self.ports, hvsim::ne2000::reg::DATA, 2) as u16
    }
    fn write_data(&mut self, value: u16) {
        self.env
            .ioport_write(self.ports, hvsim::ne2000::reg::DATA, 2, u32::from(value));
    }
    fn now_ns(&mut self) -> u64 {
        self.env.now_ns()
    }
}

pub type Nic = Ne2000<NicPorts>;

/// The sender address of the ARP request: none (0.0.0.0, an ARP probe as
/// RFC 5227 has them). Not the guest's 10.0.2.15: the gateway would
/// remember the NE2000's hardware address for it, and the guest's own NIC
/// (which the NE2000 only bridges) has another.
pub const PROBE_SENDER_IP: [u8; 4] = [0, 0, 0, 0];
/// QEMU user networking's gateway.
pub const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
/// How long the gateway may take to answer the ARP request.
const ARP_WAIT_NS: u64 = 2_000_000_000;

fn mac_text(mac: [u8; 6]) -> alloc::string::String {
    alloc::format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    )
}

/// The NE2000, if the description grants its ports and QEMU has one
/// there; says on the console what it found.
pub fn attach(env: &mut dyn Env) -> Option<Nic> {
    let ports = id_named(IOPORT_NAMES, "ne2000")?;
    let ports = NicPorts {
        env: Sel4Env::current(),
        ports,
    };
    match Ne2000::probe(ports) {
        Ok(nic) => {
            println!(env, "nic 0: NE2000 at 0x300, MAC {}", mac_text(nic.mac()));
            Some(nic)
        }
        Err(error) => {
            let why = match error {
                ProbeError::NoController => "no NIC",
                ProbeError::ResetTimeout => "the chip did not reset",
                ProbeError::PromTimeout => "the address PROM did not read",
                ProbeError::BadAddress => "no usable station address",
            };
            println!(env, "nic 0: NE2000 at 0x300: {why} ({error:?})");
            None
        }
    }
}

/// Ask QEMU's gateway for its hardware address and wait (bounded) for the
/// answer: proof that frames go out through the NIC and come back in.
/// Frames that are not the answer are dropped.
pub fn arp_check(env: &mut dyn Env, nic: &mut Nic) {
    let request = arp::request(nic.mac(), PROBE_SENDER_IP, GATEWAY_IP);
    let started = env.now_ns();
    if !nic.send(&request) {
        println!(env, "nic 0: ARP: sending the request failed");
        return;
    }
    let mut buf = [0u8; MAX_FRAME];
    let mut other = 0u32;
    // Bounded by the clock, and by a count should the clock stand still.
    for _ in 0..10_000_000u32 {
        nic.service();
        while let Some(len) = nic.receive(&mut buf) {
            if let Some(mac) = arp::reply_about(&buf[..len], GATEWAY_IP, PROBE_SENDER_IP) {
                let waited_us = (env.now_ns() - started) / 1000;
                println!(
                    env,
                    "nic 0: ARP: 10.0.2.2 is at {} (answered in {} us, {} other frames)",
                    mac_text(mac),
                    waited_us,
                    other
                );
                return;
            }
            other += 1;
        }
        if env.now_ns().saturating_sub(started) > ARP_WAIT_NS {
            break;
        }
    }
    let counters = nic.counters();
    println!(
        env,
        "nic 0: ARP: no answer from 10.0.2.2 within {} ms ({} frames received, {} sent, {} send errors)",
        ARP_WAIT_NS / 1_000_000,
        counters.frames_received,
        counters.frames_sent,
        counters.send_errors
    );
}
