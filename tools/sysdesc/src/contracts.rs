//! What the description says beyond the runtime layout: the IPC contracts
//! (which protocol each call channel speaks, who serves it, who may call
//! which operation). The runtimes never need it; the generated ids and
//! `cargo xtask check` do.

/// One protocol as the description declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolContract {
    pub name: String,
    /// The Rust type implementing `component_api::Protocol`.
    pub rust: String,
    /// Operations only some callers may use: (operation, component indices).
    /// An operation not listed is open to every client of the protocol.
    pub allow: Vec<(String, Vec<usize>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contracts {
    pub protocols: Vec<ProtocolContract>,
    /// Per component: (local channel id, protocol index) of each call end
    /// that speaks a protocol.
    pub channel_protocols: Vec<Vec<(u8, usize)>>,
    /// Per component: the protocols its code serves.
    pub serves: Vec<Vec<usize>>,
    /// The `[[driver]]`s, in driver-id order.
    pub drivers: Vec<DriverContract>,
    /// (bus manager, synic) of the `[vmbus]` table.
    pub vmbus: Option<(usize, usize)>,
    /// The `[[block]]` grants, in file order.
    pub blocks: Vec<BlockContract>,
    /// The `[[net]]` grants, in file order.
    pub nets: Vec<NetContract>,
}

/// One net grant (from its `[[net]]` stanza).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetContract {
    pub driver: usize,
    pub client: usize,
    /// The grant's index among its client's grants (its regions are
    /// `<client>_net<index>_*`).
    pub index: usize,
    /// Buffers per direction.
    pub buffers: u32,
    pub address: AddressConfig,
}

/// How a net client gets its IPv4 address (`address`, `gateway`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressConfig {
    Dhcp,
    Static {
        address: [u8; 4],
        prefix: u8,
        gateway: Option<[u8; 4]>,
    },
}

/// One block grant (from its `[[block]]` stanza).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockContract {
    pub driver: usize,
    pub client: usize,
    /// The grant's index among its client's grants (its regions are
    /// `<client>_blk<index>_*`).
    pub index: usize,
    pub lun: u8,
    pub partition: Option<u8>,
    pub read_only: bool,
    pub data: u64,
    pub queue: u32,
}

/// One VMBus driver (from its `[[driver]]` stanza).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverContract {
    pub component: usize,
    /// Bytes of the host-to-guest ring (the second part of its region).
    pub ring_in: u64,
    /// Bytes of the guest-to-host ring (the first part of its region).
    pub ring_out: u64,
    /// Bytes of each data buffer (region `<driver>_buffer<N>`).
    pub buffers: Vec<u64>,
    /// Sub-channels it may open (regions `<driver>_ring_out_control<K>`,
    /// ... for K in 1..=sub_channels).
    pub sub_channels: u8,
    /// `request_timeout_ms`, if the description sets it.
    pub request_timeout_ms: Option<u64>,
    /// `fault_window_ms`: 3 faults within it hold the driver (0: never).
    pub fault_window_ms: u64,
    pub clients: Vec<usize>,
}

impl Contracts {
    /// The protocol the channel end `id` of `component` speaks, if any.
    pub fn protocol_of(&self, component: usize, id: u8) -> Option<&ProtocolContract> {
        self.channel_protocols
            .get(component)?
            .iter()
            .find(|(end, _)| *end == id)
            .map(|(_, protocol)| &self.protocols[*protocol])
    }
}
