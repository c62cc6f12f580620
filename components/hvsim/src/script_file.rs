//! The `.hvsim` script file (see `docs/hvsim.md`): `key = value` lines
//! that override `script::Script::DEFAULT`, turned into the Rust source of
//! a `SCRIPT` constant. Used by `build.rs` (included by path: a build
//! script cannot depend on its own package) and tested here.

/// The keys a script file may set.
pub const KEYS: &[&str] = &[
    "time_sample_period_ms",
    "shutdown_after_heartbeats",
    "kvp_faults",
    "kvp_fault_after_heartbeats",
    "kvp_fault_every",
    "min_version",
    "max_version",
    "devices",
    "added_devices",
    "add_devices_after_heartbeats",
    "kvp_rescind_after_heartbeats",
    "kvp_get_guest_key",
    "kvp_get_after_heartbeats",
];

/// The VMBus versions the simulator speaks (`vmbus::SUPPORTED_VERSIONS`).
pub const VERSIONS: &[&str] = &["2.4", "3.0", "4.0", "4.1", "5.0", "5.1", "5.2", "5.3"];

/// Integration components by name (`vmbus::DeviceKind` variants).
pub const DEVICES: &[(&str, &str)] = &[
    ("heartbeat", "Heartbeat"),
    ("shutdown", "Shutdown"),
    ("timesync", "TimeSync"),
    ("kvp", "Kvp"),
];

/// `M.m` as the source of a `ProtocolVersion`.
fn version_source(value: &str) -> Result<String, String> {
    if !VERSIONS.contains(&value) {
        return Err(format!(
            "unknown VMBus version `{value}`; known: {}",
            VERSIONS.join(", ")
        ));
    }
    let (major, minor) = value.split_once('.').unwrap_or((value, "0"));
    Ok(format!(
        "vmbus_protocol::ProtocolVersion::new({major}, {minor})"
    ))
}

/// A class GUID `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as the u128 that
/// `Uuid::from_u128` turns back into it.
fn guid_value(text: &str) -> Option<u128> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lengths != [8, 4, 4, 4, 12]
        || !groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    u128::from_str_radix(&groups.concat(), 16).ok()
}

/// A comma-separated device list as the source of a `&[ScriptDevice]`.
fn devices_source(value: &str) -> Result<String, String> {
    let mut devices = String::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if let Some((_, kind)) = DEVICES.iter().find(|(known, _)| *known == name) {
            devices.push_str(&format!(
                "hvsim::script::ScriptDevice::Ic(hvsim::vmbus::DeviceKind::{kind}), "
            ));
        } else if let Some(class) = guid_value(name) {
            devices.push_str(&format!(
                "hvsim::script::ScriptDevice::Generic {{ class: {class:#x} }}, "
            ));
        } else {
            let names: Vec<&str> = DEVICES.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "unknown device `{name}`; known: {} or a class GUID",
                names.join(", ")
            ));
        }
    }
    Ok(format!("&[{devices}]"))
}

/// `channel::PacketFault` names.
pub const FAULTS: &[&str] = &[
    "OffsetTooSmall",
    "LengthBeforeOffset",
    "UnknownType",
    "UnknownFlags",
    "LengthBeyondRing",
];

/// The source of `SCRIPT` when there is no script file.
pub const DEFAULT_SOURCE: &str =
    "pub const SCRIPT: hvsim::script::Script = hvsim::script::Script::DEFAULT;\n";

/// The source of `SCRIPT` for `text`, or `(line, why)` for the first bad
/// line (1-based). `#` starts a comment.
pub fn script_source(text: &str) -> Result<String, (usize, String)> {
    let mut fields = String::new();
    for (index, line) in text.lines().enumerate() {
        let fail = |why: String| (index + 1, why);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(fail("expected `key = value`".into()));
        };
        let (key, value) = (key.trim(), value.trim());
        let number = || -> Result<u64, (usize, String)> {
            value
                .parse()
                .map_err(|_| fail(format!("`{value}` is not a whole number")))
        };
        let field = match key {
            "time_sample_period_ms" => {
                let ms = number()?;
                let ns = ms
                    .checked_mul(1_000_000)
                    .ok_or_else(|| fail(format!("{ms} ms is too long")))?;
                format!("time_sample_period_ns: {ns},")
            }
            "shutdown_after_heartbeats" => format!("{key}: Some({}),", number()?),
            "kvp_fault_after_heartbeats"
            | "kvp_fault_every"
            | "add_devices_after_heartbeats"
            | "kvp_get_after_heartbeats" => format!("{key}: {},", number()?),
            "kvp_rescind_after_heartbeats" => format!("{key}: Some({}),", number()?),
            "min_version" | "max_version" => {
                format!("{key}: {},", version_source(value).map_err(fail)?)
            }
            "devices" | "added_devices" => {
                format!("{key}: {},", devices_source(value).map_err(fail)?)
            }
            "kvp_get_guest_key" => {
                // Written into the source as a string literal: only plain
                // characters, so nothing needs escaping.
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    return Err(fail(format!(
                        "`{value}` is not a key (letters, digits, `_`, `-`, `.`)"
                    )));
                }
                format!("{key}: Some(\"{value}\"),")
            }
            "kvp_faults" => {
                let mut faults = String::new();
                for fault in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if !FAULTS.contains(&fault) {
                        return Err(fail(format!(
                            "unknown fault `{fault}`; known: {}",
                            FAULTS.join(", ")
                        )));
                    }
                    faults.push_str(&format!("hvsim::channel::PacketFault::{fault}, "));
                }
                format!("{key}: &[{faults}],")
            }
            _ => {
                return Err(fail(format!(
                    "unknown key `{key}`; known: {}",
                    KEYS.join(", ")
                )))
            }
        };
        fields.push_str("    ");
        fields.push_str(&field);
        fields.push('\n');
    }
    Ok(format!(
        "pub const SCRIPT: hvsim::script::Script = hvsim::script::Script {{\n{fields}    ..hvsim::script::Script::DEFAULT\n}};\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_become_fields_of_the_default() {
        let source = script_source(
            "# comment\n\nkvp_faults = UnknownType, LengthBeyondRing # two\n\
             kvp_fault_after_heartbeats = 2\nshutdown_after_heartbeats=9\n\
             time_sample_period_ms = 500\n",
        )
        .unwrap();
        assert!(source.contains(
            "kvp_faults: &[hvsim::channel::PacketFault::UnknownType, hvsim::channel::PacketFault::LengthBeyondRing, ],"
        ), "{source}");
        assert!(source.contains("kvp_fault_after_heartbeats: 2,"));
        assert!(source.contains("shutdown_after_heartbeats: Some(9),"));
        assert!(source.contains("time_sample_period_ns: 500000000,"));
        assert!(source.ends_with("..hvsim::script::Script::DEFAULT\n};\n"));
        assert!(script_source("").unwrap().contains("Script {\n    ..hvsim"));
        assert!(DEFAULT_SOURCE.contains("= hvsim::script::Script::DEFAULT;"));
    }

    #[test]
    fn versions_devices_and_scenario_keys_become_fields() {
        let source = script_source(
            "min_version = 4.0\nmax_version = 2.4\n\
             devices = heartbeat, kvp\n\
             added_devices = kvp, ba6163d9-04a1-4d29-b605-72e2ffb1dc7f\n\
             add_devices_after_heartbeats = 2\nkvp_rescind_after_heartbeats = 3\n\
             kvp_get_guest_key = GuestClient\nkvp_get_after_heartbeats = 4\n",
        )
        .unwrap();
        for field in [
            "min_version: vmbus_protocol::ProtocolVersion::new(4, 0),",
            "max_version: vmbus_protocol::ProtocolVersion::new(2, 4),",
            "devices: &[hvsim::script::ScriptDevice::Ic(hvsim::vmbus::DeviceKind::Heartbeat), hvsim::script::ScriptDevice::Ic(hvsim::vmbus::DeviceKind::Kvp), ],",
            "added_devices: &[hvsim::script::ScriptDevice::Ic(hvsim::vmbus::DeviceKind::Kvp), hvsim::script::ScriptDevice::Generic { class: 0xba6163d904a14d29b60572e2ffb1dc7f }, ],",
            "add_devices_after_heartbeats: 2,",
            "kvp_rescind_after_heartbeats: Some(3),",
            "kvp_get_guest_key: Some(\"GuestClient\"),",
            "kvp_get_after_heartbeats: 4,",
        ] {
            assert!(source.contains(field), "{field} not in {source}");
        }
        assert_eq!(
            uuid::Uuid::from_u128(guid_value("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f").unwrap())
                .to_string(),
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let error = |text: &str| script_source(text).unwrap_err();
        assert_eq!(error("\nnonsense").0, 2);
        assert!(error("kvp_fault = UnknownType")
            .1
            .contains("unknown key `kvp_fault`"));
        assert!(error("kvp_faults = Unknown")
            .1
            .contains("unknown fault `Unknown`"));
        assert!(error("kvp_fault_every = -1")
            .1
            .contains("not a whole number"));
        assert!(error("time_sample_period_ms = 18446744073709551615")
            .1
            .contains("too long"));
        assert!(error("max_version = 4.2")
            .1
            .contains("unknown VMBus version `4.2`"));
        assert!(error("devices = heartbeat, disk")
            .1
            .contains("unknown device `disk`"));
        assert!(error("added_devices = ba6163d9-04a1-4d29-b605-72e2ffb1dc7")
            .1
            .contains("unknown device"));
        assert!(error("kvp_get_guest_key = a\"b").1.contains("is not a key"));
        assert!(error("kvp_get_guest_key =").1.contains("is not a key"));
    }
}
