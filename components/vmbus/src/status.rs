//! The status view: one line per device, in the spirit of Linux `lsvmbus`.
//!
//! ```text
//! VMBus 5.3, 4 devices
//!  relid class      instance                              driver     state    framework msg  restarts
//!      1 heartbeat  2dd1ce17-079e-403c-b352-a1921ee207ee  heartbeat  open     3.0       3.0  0
//! ```

use component_api::{println, Env};
use vmbus_ipc::bus::{ChannelState, DeviceStatus};
use vmbus_protocol::ProtocolVersion;

/// The state as a short word for the table.
pub fn state_name(state: ChannelState) -> &'static str {
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

/// `3.0`, or `-` when not reported.
struct Version((u16, u16));

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == (0, 0) {
            return f.pad("-");
        }
        let mut text: heapless::String<12> = heapless::String::new();
        let _ = core::fmt::write(&mut text, format_args!("{}.{}", self.0 .0, self.0 .1));
        f.pad(&text)
    }
}

/// One table row (without the trailing newline).
pub fn format_row(row: &DeviceStatus, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    let class = uuid::Uuid::from_bytes(row.class);
    let class_name = vmbus_protocol::guid::class::name_of(class).unwrap_or("unknown");
    let relid = if row.relid == 0 && row.state == ChannelState::NotOffered {
        0
    } else {
        row.relid
    };
    write!(
        out,
        "{:>6} {:<10} {}  {:<10} {:<9} {:<9} {:<4} {}",
        relid,
        class_name,
        uuid::Uuid::from_bytes(row.instance).hyphenated(),
        row.driver.as_str(),
        state_name(row.state),
        Version(row.framework_version),
        Version(row.message_version),
        row.restarts
    )
}

pub fn print(
    env: &mut dyn Env,
    version: Option<ProtocolVersion>,
    rows: impl Iterator<Item = DeviceStatus>,
) {
    let rows: heapless::Vec<DeviceStatus, 48> = rows.take(48).collect();
    match version {
        Some(version) => println!(env, "VMBus {}, {} devices", version, rows.len()),
        None => println!(env, "VMBus not connected, {} devices", rows.len()),
    }
    println!(
        env,
        "{:>6} {:<10} {:<36}  {:<10} {:<9} {:<9} {:<4} {}",
        "relid",
        "class",
        "instance",
        "driver",
        "state",
        "framework",
        "msg",
        "restarts"
    );
    for row in rows.iter() {
        let mut line: heapless::String<160> = heapless::String::new();
        let _ = format_row(row, &mut line);
        println!(env, "{}", line.as_str());
    }
}
