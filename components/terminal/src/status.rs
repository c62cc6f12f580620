//! The bus manager's device table as text, and what changed in it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use vmbus_ipc::bus::{ChannelState, DeviceStatus};
use vmbus_protocol::guid::class;

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

pub fn class_name(row: &DeviceStatus) -> &'static str {
    class::name_of(uuid::Uuid::from_bytes(row.class)).unwrap_or("unknown")
}

fn version(v: (u16, u16)) -> String {
    if v == (0, 0) {
        "-".into()
    } else {
        format!("{}.{}", v.0, v.1)
    }
}

/// One `lsvmbus`-style row, under `console::STATUS_HEADINGS`.
pub fn device_row(row: &DeviceStatus) -> String {
    let mut driver = String::new();
    if row.sub_channel == 0 {
        driver.push_str(row.driver.as_str());
    } else {
        let _ = write!(driver, " sub {}", row.sub_channel);
    }
    format!(
        "{:>6} {:<15} {}  {:<10} {:<9} {:<9} {:<4} {}",
        row.relid,
        class_name(row),
        uuid::Uuid::from_bytes(row.instance).hyphenated(),
        driver,
        state_name(row.state),
        version(row.framework_version),
        version(row.message_version),
        row.restarts
    )
}

/// Whether a row is a disk controller (the `disks` command).
pub fn is_storage(row: &DeviceStatus) -> bool {
    let class = uuid::Uuid::from_bytes(row.class);
    class == class::SCSI || class == class::IDE
}

/// The events between two readings of the table: devices that came,
/// went, changed state or restarted (rows are matched by driver and
/// sub-channel).
pub fn changes(before: &[DeviceStatus], after: &[DeviceStatus]) -> Vec<String> {
    let key = |row: &DeviceStatus| (row.driver.clone(), row.sub_channel);
    let mut events = Vec::new();
    for row in after {
        let name = row.driver.as_str();
        match before.iter().find(|old| key(old) == key(row)) {
            None if row.sub_channel == 0 => events.push(format!(
                "bus: {name} ({}) {}",
                class_name(row),
                state_name(row.state)
            )),
            None => {}
            Some(old) => {
                if row.restarts > old.restarts {
                    events.push(format!("bus: {name} restarted ({} restarts)", row.restarts));
                }
                if state_name(old.state) != state_name(row.state) && row.sub_channel == 0 {
                    events.push(format!(
                        "bus: {name} {} -> {}",
                        state_name(old.state),
                        state_name(row.state)
                    ));
                }
            }
        }
    }
    for old in before {
        if old.sub_channel == 0 && !after.iter().any(|row| key(row) == key(old)) {
            events.push(format!("bus: {} gone from the table", old.driver));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::STATUS_HEADINGS;

    pub(crate) fn row(driver: &str, class: uuid::Uuid, state: ChannelState) -> DeviceStatus {
        DeviceStatus {
            driver: driver.try_into().unwrap(),
            sub_channel: 0,
            class: *class.as_bytes(),
            instance: [0x11; 16],
            relid: 7,
            state,
            vmbus_version: 0x0005_0003,
            framework_version: (3, 0),
            message_version: (0, 0),
            restarts: 0,
        }
    }

    #[test]
    fn rows_line_up_under_the_headings() {
        let text = device_row(&row("fb", class::SYNTHETIC_VIDEO, ChannelState::Open));
        assert!(text.contains("synthetic-video"));
        let column = |heading: &str| STATUS_HEADINGS.find(heading).unwrap();
        assert_eq!(text.find("fb ").unwrap(), column("driver"));
        assert_eq!(text.find("open").unwrap(), column("state"));
        assert_eq!(text.find("11111111-").unwrap(), column("instance"));
        assert_eq!(text.find("3.0").unwrap(), column("framework"));
        assert_eq!(text.find("synthetic").unwrap(), column("class"));
    }

    #[test]
    fn changes_name_new_gone_restarted_and_moved_devices() {
        let kvp = row("kvp", class::KVP, ChannelState::Open);
        let video = row("video", class::SYNTHETIC_VIDEO, ChannelState::Opening);
        assert_eq!(
            changes(&[], core::slice::from_ref(&kvp)),
            ["bus: kvp (kvp) open"]
        );
        let mut restarted = kvp.clone();
        restarted.restarts = 1;
        restarted.state = ChannelState::Opening;
        assert_eq!(
            changes(
                &[kvp.clone(), video.clone()],
                core::slice::from_ref(&restarted)
            ),
            [
                "bus: kvp restarted (1 restarts)",
                "bus: kvp open -> opening",
                "bus: video gone from the table"
            ]
        );
        assert!(changes(core::slice::from_ref(&kvp), core::slice::from_ref(&kvp)).is_empty());
    }

    #[test]
    fn storage_rows_are_disks() {
        assert!(is_storage(&row("storage", class::SCSI, ChannelState::Open)));
        assert!(is_storage(&row("storage", class::IDE, ChannelState::Open)));
        assert!(!is_storage(&row("kvp", class::KVP, ChannelState::Open)));
    }
}
