//! What travels between the launcher and a component process, and on a
//! protected-call socket.
//!
//! - The handoff: everything a component process needs at start (its own
//!   part of the layout and the numbers of the descriptors it inherited),
//!   postcard-encoded and hex-written into one environment variable.
//! - Control messages on the component's control socket (SOCK_SEQPACKET,
//!   postcard): supervisor requests up, fault reports and replacement call
//!   sockets down.
//! - Call framing: a request is `[REQUEST] ++ message`; a reply is
//!   `[REPLY_OK] ++ reply` or `[REPLY_REFUSED, code_lo, code_hi]`. The tag
//!   byte keeps every message non-empty, since an empty SEQPACKET read
//!   means the peer is gone.

use component_api::Fault;
use serde::{Deserialize, Serialize};
use system_layout::ComponentLayout;

/// The environment variable that carries the handoff.
pub const HANDOFF_VARIABLE: &str = "HOSTED_RUNTIME_HANDOFF";

pub const REQUEST: u8 = 1;
pub const REPLY_OK: u8 = 0;
pub const REPLY_REFUSED: u8 = 1;

/// Everything a component starts with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Handoff {
    pub name: String,
    pub layout: ComponentLayout,
    /// CLOCK_MONOTONIC at system start, so `now_ns` counts from there.
    pub start_ns: u64,
    pub control_fd: i32,
    /// Where emulated serial-port output goes: the machine's console, which
    /// the launcher prints without a prefix (the console component
    /// prefixes each line with its client's name, as on seL4).
    pub serial_fd: Option<i32>,
    /// By map index (the `RegionName` value).
    pub maps: Vec<MapHandoff>,
    pub channels: Vec<ChannelHandoff>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapHandoff {
    /// A descriptor opened read-only when the map is read-only.
    pub fd: i32,
    pub offset: u64,
    pub size: u64,
    pub writable: bool,
    pub double: bool,
    /// Granted by address only: no descriptor (`fd` is -1), nothing to
    /// map; the component learns `guest_physical` and `size`.
    pub address_only: bool,
    /// Host-visible regions: the guest physical address (its offset in
    /// the guest-memory file).
    pub guest_physical: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelHandoff {
    pub id: u8,
    pub kind: ChannelRole,
    /// Notify and IRQ: the eventfd we are signalled on.
    pub receive_fd: Option<i32>,
    /// Notify: the peer's eventfd for this channel.
    pub send_fd: Option<i32>,
    /// Call (either end): our end of the call socket.
    pub call_fd: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelRole {
    Notify,
    Irq,
    CallClient,
    CallServer,
}

impl Handoff {
    pub fn to_env_value(&self) -> String {
        let bytes = postcard::to_allocvec(self).expect("a handoff always encodes");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_env_value(text: &str) -> Result<Handoff, String> {
        if !text.len().is_multiple_of(2) {
            return Err("odd-length handoff".into());
        }
        let bytes: Result<Vec<u8>, _> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect();
        let bytes = bytes.map_err(|e| format!("handoff is not hex: {e}"))?;
        postcard::from_bytes(&bytes).map_err(|e| format!("handoff does not decode: {e}"))
    }
}

/// Component to launcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToLauncher {
    Restart {
        child: u8,
    },
    Stop {
        child: u8,
    },
    PowerOff {
        code: u8,
    },
    /// Sent by the panic hook just before the process aborts, so the fault
    /// is reported as a panic rather than as SIGABRT.
    Panicked,
    /// Sent by the fault signal handler (SIGSEGV, SIGBUS, SIGILL, SIGFPE)
    /// just before the process dies of the signal.
    Faulted {
        fault: WireFault,
    },
}

/// Launcher to component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToComponent {
    /// The peer of call channel `channel` restarted; the new socket end is
    /// attached. The old one is dead.
    CallEnd { channel: u8 },
    /// A supervised child stopped.
    Fault { child: u8, fault: WireFault },
    /// The answer to a `Restart` or `Stop`.
    SupervisorReply { ok: bool },
}

/// [`Fault`] in a form serde can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireFault {
    Memory { address: u64, ip: u64, write: bool },
    Panic,
    Instruction { ip: u64 },
    Crashed { signal: i32 },
    Exited { code: i32 },
}

impl From<Fault> for WireFault {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Memory { address, ip, write } => WireFault::Memory { address, ip, write },
            Fault::Panic => WireFault::Panic,
            Fault::Instruction { ip } => WireFault::Instruction { ip },
            Fault::Crashed { signal } => WireFault::Crashed { signal },
            Fault::Exited { code } => WireFault::Exited { code },
        }
    }
}

impl From<WireFault> for Fault {
    fn from(fault: WireFault) -> Self {
        match fault {
            WireFault::Memory { address, ip, write } => Fault::Memory { address, ip, write },
            WireFault::Panic => Fault::Panic,
            WireFault::Instruction { ip } => Fault::Instruction { ip },
            WireFault::Crashed { signal } => Fault::Crashed { signal },
            WireFault::Exited { code } => Fault::Exited { code },
        }
    }
}

/// The largest control message (a fault report or supervisor request).
pub const MAX_CONTROL: usize = 64;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("control messages always encode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use system_layout::ComponentLayout;

    #[test]
    fn handoff_round_trips_through_the_environment_form() {
        let handoff = Handoff {
            name: "echo".into(),
            layout: ComponentLayout {
                name: "echo".into(),
                package: "p".into(),
                priority: 3,
                supervisor: None,
                platform_supervised: false,
                children: vec![],
                stack_pages: 4,
                may_power_off: false,
                maps: vec![],
                channels: vec![],
                irqs: vec![],
                ioports: vec![],
                console: None,
                hypervisor: false,
                simulated_host: false,
            },
            start_ns: 42,
            control_fd: 7,
            serial_fd: None,
            maps: vec![MapHandoff {
                fd: 9,
                offset: 4096,
                size: 8192,
                writable: false,
                double: true,
                address_only: false,
                guest_physical: None,
            }],
            channels: vec![],
        };
        let text = handoff.to_env_value();
        let back = Handoff::from_env_value(&text).unwrap();
        assert_eq!(back.name, "echo");
        assert_eq!(back.maps[0].offset, 4096);
        assert!(Handoff::from_env_value("zz").is_err());
        assert!(Handoff::from_env_value("abc").is_err());
    }

    #[test]
    fn every_control_message_fits_the_control_buffer() {
        let biggest = ToComponent::Fault {
            child: 255,
            fault: WireFault::Memory {
                address: u64::MAX,
                ip: u64::MAX,
                write: true,
            },
        };
        assert!(encode(&biggest).len() <= MAX_CONTROL);
    }
}
