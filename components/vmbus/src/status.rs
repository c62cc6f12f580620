//! The status view: one line per device, in the spirit of Linux `lsvmbus`.
//!
//! ```text
//! VMBus 5.3, 4 devices
//!  relid class      instance                              driver     state    framework msg  restarts
//!      1 heartbeat  2dd1ce17-079e-403c-b352-a1921ee207ee  heartbeat  open     3.0       3.0  0
//!      5 network    f8615163-df3e-46c5-913f-f2d2f965ed0e  netvsc     open     -         -    0
//!      6 network    f8615163-df3e-46c5-913f-f2d2f965ed0e   sub 1     open     -         -    0
//! ```
//!
//! A sub-channel's row follows its primary's, its driver column `sub K`.

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
    let mut driver: heapless::String<32> = heapless::String::new();
    if row.sub_channel == 0 {
        let _ = driver.push_str(row.driver.as_str());
    } else {
        let _ = core::fmt::write(&mut driver, format_args!(" sub {}", row.sub_channel));
    }
    write!(
        out,
        "{:>6} {:<10} {}  {:<10} {:<9} {:<9} {:<4} {}",
        relid,
        class_name,
        uuid::Uuid::from_bytes(row.instance).hyphenated(),
        driver.as_str(),
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

// ---- rate limits: what the host can trigger at will is counted, and
// printed only within bounds ----

/// Status views printed in full before the interval applies.
/// (A boot with the NIC's sub-channels and a device offered later already
/// prints 10 or 11: fewer held back the view a test looks for.)
pub const VIEWS_IN_FULL: u32 = 20;
/// After those, at most one view per this interval.
pub const VIEW_INTERVAL_NS: u64 = 10_000_000_000;
/// Lines host messages may cause at once (boot, a device's reopen).
pub const LINE_BURST: u32 = 100;
/// Lines they may cause per second after the burst.
pub const LINES_PER_SECOND: u32 = 5;

/// How often the status view was printed and held back.
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewLimit {
    pub printed: u32,
    pub held_back: u32,
    last_printed_ns: Option<u64>,
}

impl ViewLimit {
    /// May a view be printed at `now_ns`? Counts it either way.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let due = self.printed < VIEWS_IN_FULL
            || self
                .last_printed_ns
                .is_none_or(|last| now_ns.saturating_sub(last) >= VIEW_INTERVAL_NS);
        if due {
            self.printed = self.printed.saturating_add(1);
            self.last_printed_ns = Some(now_ns);
        } else {
            self.held_back = self.held_back.saturating_add(1);
        }
        due
    }
}

/// A token bucket of console lines.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleBudget {
    tokens: u32,
    refilled_ns: u64,
    /// Lines counted, not printed.
    pub held_back: u32,
    /// The line being written (a line may come in several pieces) is
    /// printed.
    line_allowed: Option<bool>,
    /// The "held back" notice was printed for the current dry spell.
    notice_printed: bool,
}

impl Default for ConsoleBudget {
    fn default() -> Self {
        ConsoleBudget::new(0)
    }
}

impl ConsoleBudget {
    pub fn new(now_ns: u64) -> ConsoleBudget {
        ConsoleBudget {
            tokens: LINE_BURST,
            refilled_ns: now_ns,
            held_back: 0,
            line_allowed: None,
            notice_printed: false,
        }
    }

    pub fn refill(&mut self, now_ns: u64) {
        let per_line = 1_000_000_000 / u64::from(LINES_PER_SECOND);
        let earned = now_ns.saturating_sub(self.refilled_ns) / per_line;
        if earned > 0 {
            self.tokens = self
                .tokens
                .saturating_add(earned.min(u64::from(LINE_BURST)) as u32)
                .min(LINE_BURST);
            self.refilled_ns = self.refilled_ns.saturating_add(earned * per_line);
        }
        if self.tokens > 0 {
            self.notice_printed = false;
        }
    }
}

/// The environment with console lines drawn from a [`ConsoleBudget`].
pub struct Budgeted<'a> {
    inner: &'a mut dyn Env,
    budget: &'a mut ConsoleBudget,
}

impl<'a> Budgeted<'a> {
    pub fn new(inner: &'a mut dyn Env, budget: &'a mut ConsoleBudget) -> Budgeted<'a> {
        Budgeted { inner, budget }
    }
}

impl Env for Budgeted<'_> {
    fn notify(&mut self, channel: component_api::Channel) {
        self.inner.notify(channel)
    }
    fn ppcall(
        &mut self,
        channel: component_api::Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, component_api::CallError> {
        self.inner.ppcall(channel, message, reply)
    }
    fn irq_ack(&mut self, channel: component_api::Channel) {
        self.inner.irq_ack(channel)
    }
    fn irq_raise(&mut self, channel: component_api::Channel) -> bool {
        self.inner.irq_raise(channel)
    }
    fn region(&self, region: component_api::RegionName) -> component_api::Region {
        self.inner.region(region)
    }
    fn region_address(
        &self,
        region: component_api::RegionName,
    ) -> Option<component_api::RegionAddress> {
        self.inner.region_address(region)
    }
    fn ioport_read(&mut self, port: component_api::IoPortName, offset: u16, width: u8) -> u32 {
        self.inner.ioport_read(port, offset, width)
    }
    fn ioport_write(
        &mut self,
        port: component_api::IoPortName,
        offset: u16,
        width: u8,
        value: u32,
    ) {
        self.inner.ioport_write(port, offset, width, value)
    }
    fn console(&mut self, text: &str) {
        let allowed = match self.budget.line_allowed {
            Some(allowed) => allowed,
            None => {
                let allowed = self.budget.tokens > 0;
                if allowed {
                    self.budget.tokens -= 1;
                } else {
                    self.budget.held_back = self.budget.held_back.saturating_add(1);
                    if !self.budget.notice_printed {
                        self.budget.notice_printed = true;
                        self.inner.console(
                            "console budget spent: further lines about host messages are counted, not printed\n",
                        );
                    }
                }
                allowed
            }
        };
        self.budget.line_allowed = if text.ends_with('\n') {
            None
        } else {
            Some(allowed)
        };
        if allowed {
            self.inner.console(text);
        }
    }
    fn restart(
        &mut self,
        child: component_api::Child,
    ) -> Result<(), component_api::SupervisorError> {
        self.inner.restart(child)
    }
    fn stop(&mut self, child: component_api::Child) -> Result<(), component_api::SupervisorError> {
        self.inner.stop(child)
    }
    fn power_off(&mut self, code: u8) {
        self.inner.power_off(code)
    }
    fn now_ns(&mut self) -> u64 {
        self.inner.now_ns()
    }
    fn time_stamp_counter(&mut self) -> Option<component_api::TimeStampCounter> {
        self.inner.time_stamp_counter()
    }
}
