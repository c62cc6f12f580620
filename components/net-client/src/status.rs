//! The HTTP pages: the status view and the counters.

use crate::services::ServiceStats;
use crate::Configured;
use alloc::string::String;
use alloc::vec::Vec;
use component_api::{Channel, Env};
use core::fmt::Write;
use net_queue::{ClientStats, Counters};
use vmbus_ipc::bus::{self, ChannelState, DeviceStatus};

/// Everything a page shows, gathered before the page is made.
pub struct View {
    pub configured: Option<Configured>,
    pub link_up: bool,
    pub mac: [u8; 6],
    pub mtu: usize,
    pub driver: &'static str,
    pub generation: u32,
    pub counters: Counters,
    pub client: ClientStats,
    pub services: ServiceStats,
    /// The bus manager's call channel, if the description gives one.
    pub bus: Option<Channel>,
}

/// Rows of the bus manager's device table asked for at most.
const MAX_DEVICES: u8 = 48;

/// The answer to `GET path`: status code and body.
pub fn page(env: &mut dyn Env, view: &View, path: &str) -> (u16, Vec<u8>) {
    let mut text = String::new();
    match path {
        "/" | "/index.txt" => {
            status(env, view, &mut text);
            (200, text.into_bytes())
        }
        "/counters" => {
            counters(view, &mut text);
            (200, text.into_bytes())
        }
        _ => (404, b"not found: try / or /counters\n".to_vec()),
    }
}

fn state_name(state: ChannelState) -> &'static str {
    match state {
        ChannelState::NotOffered => "absent",
        ChannelState::Offered => "offered",
        ChannelState::Opening => "opening",
        ChannelState::Open => "open",
        ChannelState::Closing => "closing",
        ChannelState::Rescinded => "rescinded",
        ChannelState::Failed { .. } => "failed",
        ChannelState::Held => "held",
    }
}

fn version(v: (u16, u16)) -> heapless::String<12> {
    let mut text = heapless::String::new();
    if v == (0, 0) {
        let _ = text.push('-');
    } else {
        let _ = write!(text, "{}.{}", v.0, v.1);
    }
    text
}

/// One `lsvmbus`-style row, as the bus manager prints its status view.
pub fn device_row(row: &DeviceStatus, out: &mut String) {
    let class = uuid::Uuid::from_bytes(row.class);
    let class_name = vmbus_protocol::guid::class::name_of(class).unwrap_or("unknown");
    let mut driver: heapless::String<32> = heapless::String::new();
    if row.sub_channel == 0 {
        let _ = driver.push_str(row.driver.as_str());
    } else {
        let _ = write!(driver, " sub {}", row.sub_channel);
    }
    let _ = writeln!(
        out,
        "{:>6} {:<10} {}  {:<10} {:<9} {:<9} {:<4} {}",
        row.relid,
        class_name,
        uuid::Uuid::from_bytes(row.instance).hyphenated(),
        driver.as_str(),
        state_name(row.state),
        version(row.framework_version).as_str(),
        version(row.message_version).as_str(),
        row.restarts
    );
}

fn status(env: &mut dyn Env, view: &View, out: &mut String) {
    let _ = writeln!(out, "seL4 Hyper-V guest: net-client (web)\n");
    match view.configured {
        Some(c) => {
            let _ = write!(out, "address   {}", c.address);
            if let Some(gateway) = c.gateway {
                let _ = write!(out, " gateway {gateway}");
            }
            let _ = writeln!(out, " ({})", if c.dhcp { "dhcp" } else { "static" });
        }
        None => {
            let _ = writeln!(out, "address   none yet (dhcp)");
        }
    }
    let m = view.mac;
    let _ = writeln!(
        out,
        "mac       {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}  mtu {}  link {}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        view.mtu,
        if view.link_up { "up" } else { "down" }
    );
    let _ = writeln!(
        out,
        "nic       served by {} (generation {}, {} driver restarts seen)\n",
        view.driver, view.generation, view.client.restarts
    );
    let _ = writeln!(out, "VMBus devices (the bus manager's status view):");
    match view.bus {
        None => {
            let _ = writeln!(out, "  (no bus manager in this system)");
        }
        Some(channel) => {
            let _ = writeln!(
                out,
                " relid class      instance                              driver     state     framework msg  restarts"
            );
            let mut rows = 0;
            for index in 0..MAX_DEVICES {
                let request = bus::Request::Device { index };
                match component_api::protocol::call::<bus::Bus>(env, channel, &request) {
                    Ok(bus::Reply::Device(row)) => {
                        device_row(&row, out);
                        rows += 1;
                    }
                    Ok(_) => break,
                    Err(error) => {
                        let _ = writeln!(out, "  (the bus manager did not answer: {error:?})");
                        break;
                    }
                }
            }
            let _ = writeln!(out, "  {rows} rows");
        }
    }
    let _ = writeln!(out);
    counters(view, out);
}

fn counters(view: &View, out: &mut String) {
    let c = &view.counters;
    let s = &view.client;
    let t = &view.services;
    let rows: [(&str, u64); 25] = [
        ("nic_rx_frames", c.rx_frames),
        ("nic_rx_bytes", c.rx_bytes),
        ("nic_tx_frames", c.tx_frames),
        ("nic_tx_bytes", c.tx_bytes),
        ("nic_rx_no_buffer", c.rx_no_buffer),
        ("nic_tx_errors", c.tx_errors),
        ("nic_bad_descriptors", c.bad_descriptors),
        ("nic_stale_descriptors", c.stale_descriptors),
        ("nic_link_changes", c.link_changes),
        ("nic_host_errors", c.host_errors),
        ("nic_serves", c.serves),
        ("client_received", s.received),
        ("client_sent", s.sent),
        ("client_not_ready", s.not_ready),
        ("client_restarts", s.restarts),
        ("client_reclaimed_at_restart", s.reclaimed_at_restart),
        ("client_bad_descriptors", s.bad_descriptors),
        ("client_stale_descriptors", s.stale_descriptors),
        ("client_peer_corrupted", s.peer_corrupted),
        ("tcp_connections", t.connections),
        ("http_requests", t.http_requests),
        ("echo_bytes", t.echo_bytes),
        ("discard_bytes", t.discard_bytes),
        ("chargen_bytes", t.chargen_bytes),
        ("link_up", u64::from(view.link_up)),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "{name} {value}");
    }
}
