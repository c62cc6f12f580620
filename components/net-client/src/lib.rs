//! `web`: the TCP/IP client of a granted NIC, on smoltcp.
//!
//! It takes grant 0 of `net::GRANTS` (docs/net-interface.md), waits until
//! the driver serves it, configures its address as the description says
//! (static, with the default gateway, or DHCP), and then answers ARP and
//! ICMP echo and serves TCP:
//!
//! - 80: HTTP, `/` the status page (address, link, the NIC driver's
//!   counters, and the bus manager's `lsvmbus`-style device table when the
//!   description gives `web` a `bus` call channel named `vmbus`),
//!   `/counters` the counters alone, as `name value` lines;
//! - 7: echo, 9: discard;
//! - 19: chargen, bounded: the peer sends a byte count and a newline
//!   ("1048576\n"), gets that many bytes of RFC 864's pattern, and the
//!   connection is closed.
//!
//! It prints its address, MAC and link state, and every change of them
//! (link down and up, a driver restart), to the console.
//!
//! Time: a plain component has no timer. After each round the client
//! writes when smoltcp next needs to run (retransmissions, DHCP renewals)
//! into the info page's `client_wake_ns`, and the driver notifies it then
//! (`NetServer::wake_due`). Delayed ACKs and Nagle are off: a segment held
//! back would wait for the next event.
//!
//! Trusts: nothing from the driver (the client half of `net_queue` checks
//! every descriptor and the info page; smoltcp parses every frame) nor
//! from the peers on the network.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
pub mod services;
pub mod status;

use alloc::vec;
use component_api::{println, Channel, ChannelSet, Component, Env};
use device::NicDevice;
use net_queue::{NetClient, NetRegions};
use services::Services;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub use net::Address;

/// Rounds of receive / serve / send per notification (each moves what
/// the queues hold; the bound keeps one notification's work finite).
const MAX_ROUNDS: u32 = 64;

/// The address the interface has, for the status page and the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Configured {
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
    pub dhcp: bool,
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    services: Services,
    dhcp: Option<SocketHandle>,
    mac: [u8; 6],
    mtu: usize,
}

pub struct Web {
    grant: Option<&'static net::Grant>,
    nic: Option<NetClient>,
    stack: Option<Stack>,
    configured: Option<Configured>,
    link_up: Option<bool>,
    bus: Option<Channel>,
    notify: Channel,
    said_waiting: bool,
}

fn now(env: &mut dyn Env) -> Instant {
    Instant::from_micros((env.now_ns() / 1000) as i64)
}

fn mac_text(mac: [u8; 6]) -> heapless::String<17> {
    let mut text = heapless::String::new();
    let _ = core::fmt::write(
        &mut text,
        format_args!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        ),
    );
    text
}

impl Web {
    /// The address configuration of the grant.
    pub fn address(&self) -> Option<Address> {
        self.grant.map(|grant| grant.address)
    }

    pub fn configured(&self) -> Option<Configured> {
        self.configured
    }

    fn build_stack(&mut self, env: &mut dyn Env) {
        let (Some(nic), Some(grant)) = (self.nic.as_mut(), self.grant) else {
            return;
        };
        let Some(info) = nic.info() else {
            if !self.said_waiting {
                println!(env, "web: waiting for the NIC ({})", grant.driver);
                self.said_waiting = true;
            }
            return;
        };
        let timestamp = now(env);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
        config.random_seed = env.now_ns()
            ^ u64::from_le_bytes([
                info.mac[0],
                info.mac[1],
                info.mac[2],
                info.mac[3],
                info.mac[4],
                info.mac[5],
                0,
                0,
            ]);
        let mtu = info.mtu as usize;
        let mut device = NicDevice { client: nic, mtu };
        let mut iface = Interface::new(config, &mut device, timestamp);
        let mut sockets = SocketSet::new(vec![]);
        let services = Services::new(&mut sockets);
        let mut dhcp = None;
        match grant.address {
            Address::Static {
                address,
                prefix,
                gateway,
            } => {
                let cidr = Ipv4Cidr::new(Ipv4Address::from(address), prefix);
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(cidr));
                });
                let gateway = gateway.map(Ipv4Address::from);
                if let Some(gateway) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(gateway);
                }
                self.configured = Some(Configured {
                    address: cidr,
                    gateway,
                    dhcp: false,
                });
            }
            Address::Dhcp => {
                dhcp = Some(sockets.add(dhcpv4::Socket::new()));
                println!(env, "web: asking for an address by DHCP");
            }
        }
        println!(
            env,
            "web: MAC {}, MTU {}, NIC served by {}",
            mac_text(info.mac).as_str(),
            info.mtu,
            grant.driver
        );
        if let Some(configured) = self.configured {
            print_address(env, &configured);
        }
        self.stack = Some(Stack {
            iface,
            sockets,
            services,
            dhcp,
            mac: info.mac,
            mtu,
        });
    }

    fn watch_link(&mut self, env: &mut dyn Env) {
        let Some(nic) = self.nic.as_mut() else {
            return;
        };
        if nic.restart_detected() {
            let generation = nic.info().map(|info| info.generation).unwrap_or(0);
            println!(
                env,
                "web: the NIC driver restarted (generation {generation}): every buffer taken back"
            );
        }
        if let (Some(stack), Some(info)) = (self.stack.as_mut(), nic.info()) {
            if info.mac != stack.mac {
                stack.mac = info.mac;
                stack
                    .iface
                    .set_hardware_addr(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
                println!(env, "web: new MAC {}", mac_text(info.mac).as_str());
            }
            stack.mtu = info.mtu as usize;
        }
        let up = nic.link_up();
        if self.link_up != Some(up) && (self.stack.is_some() || self.link_up.is_some()) {
            println!(env, "web: link {}", if up { "up" } else { "down" });
            self.link_up = Some(up);
        }
    }

    fn dhcp_events(&mut self, env: &mut dyn Env) {
        let Some(stack) = self.stack.as_mut() else {
            return;
        };
        let Some(handle) = stack.dhcp else {
            return;
        };
        let event = stack.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(config)) => {
                let address = config.address;
                let gateway = config.router;
                stack.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(IpCidr::Ipv4(address));
                });
                stack.iface.routes_mut().remove_default_ipv4_route();
                if let Some(gateway) = gateway {
                    let _ = stack.iface.routes_mut().add_default_ipv4_route(gateway);
                }
                let configured = Configured {
                    address,
                    gateway,
                    dhcp: true,
                };
                self.configured = Some(configured);
                print_address(env, &configured);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                stack.iface.update_ip_addrs(|addrs| addrs.clear());
                stack.iface.routes_mut().remove_default_ipv4_route();
                if self.configured.take().is_some() {
                    println!(env, "web: the DHCP lease is gone; asking again");
                }
            }
        }
    }

    /// Receive, serve and send until nothing moves (bounded), then tell the
    /// driver when to wake us.
    fn run(&mut self, env: &mut dyn Env) {
        if self.stack.is_none() {
            self.build_stack(env);
        }
        let mut settled = false;
        for _ in 0..MAX_ROUNDS {
            self.watch_link(env);
            let moved = self.round(env);
            self.dhcp_events(env);
            let Some(nic) = self.nic.as_mut() else {
                return;
            };
            if nic.driver_needs_signal() {
                env.notify(self.notify);
            }
            // Ask for a signal before looking for more work, so nothing
            // that arrives after the last look goes unnoticed.
            if nic.prepare_to_sleep() && !moved {
                settled = true;
                break;
            }
        }
        let timestamp = now(env);
        if let (Some(stack), Some(nic)) = (self.stack.as_mut(), self.nic.as_mut()) {
            let next = stack.iface.poll_at(timestamp, &stack.sockets);
            let next_ns = next.map(|at| at.total_micros().max(0) as u64 * 1000);
            // Work left after the bounded rounds: have the driver wake us
            // as soon as it runs.
            let next_ns = if settled { next_ns } else { Some(env.now_ns()) };
            nic.set_wake_deadline(next_ns);
        }
    }

    /// One poll of the stack and one pass over the services.
    fn round(&mut self, env: &mut dyn Env) -> bool {
        let timestamp = now(env);
        let (Some(stack), Some(nic)) = (self.stack.as_mut(), self.nic.as_mut()) else {
            return false;
        };
        let traffic = |nic: &NetClient| {
            let stats = nic.stats();
            stats.received + stats.sent
        };
        let before = traffic(nic);
        let mut device = NicDevice {
            client: nic,
            mtu: stack.mtu,
        };
        stack.iface.poll(timestamp, &mut device, &mut stack.sockets);
        let view = status::View {
            configured: self.configured,
            link_up: self.link_up.unwrap_or(false),
            mac: stack.mac,
            mtu: stack.mtu,
            driver: self.grant.map(|g| g.driver).unwrap_or("?"),
            generation: nic.info().map(|info| info.generation).unwrap_or(0),
            counters: nic.counters(),
            client: nic.stats(),
            services: stack.services.stats,
            bus: self.bus,
        };
        let mut page = |path: &str| status::page(env, &view, path);
        let served = stack.services.run(&mut stack.sockets, &mut page);
        let mut device = NicDevice {
            client: nic,
            mtu: stack.mtu,
        };
        stack.iface.poll(timestamp, &mut device, &mut stack.sockets);
        served || traffic(nic) != before
    }
}

fn print_address(env: &mut dyn Env, configured: &Configured) {
    let how = if configured.dhcp { "dhcp" } else { "static" };
    match configured.gateway {
        Some(gateway) => println!(
            env,
            "web: address {} gateway {} ({how})", configured.address, gateway
        ),
        None => println!(env, "web: address {} ({how})", configured.address),
    }
}

impl Component for Web {
    fn init(env: &mut dyn Env) -> Self {
        let grant = net::GRANTS.first();
        let mut web = Web {
            grant,
            nic: None,
            stack: None,
            configured: None,
            link_up: None,
            bus: component_api::id_named(CHANNEL_NAMES, "vmbus"),
            notify: grant.map(|g| g.notify).unwrap_or(Channel(0)),
            said_waiting: false,
        };
        let Some(grant) = grant else {
            println!(env, "web: no NIC granted");
            return web;
        };
        let regions = NetRegions {
            rx_free: env.region(grant.rx_free),
            rx_active: env.region(grant.rx_active),
            tx_free: env.region(grant.tx_free),
            tx_active: env.region(grant.tx_active),
            info: env.region(grant.info),
            data: env.region(grant.data),
        };
        match NetClient::new(regions, grant.buffers) {
            Ok(nic) => web.nic = Some(nic),
            Err(error) => {
                println!(env, "web: the grant's regions are unusable: {error:?}");
                return web;
            }
        }
        web.run(env);
        web
    }

    fn notified(&mut self, env: &mut dyn Env, _channels: ChannelSet) {
        self.run(env);
    }
}
