//! The compiled form of a valid description: ids, peers, addresses.
#![forbid(unsafe_code)]

use system_layout::ChannelKind;

const DESCRIPTION: &str = r#"
version = 1

[[component]]
name = "console"
package = "console"
priority = 200
supervisor = "boss"

[[component]]
name = "worker"
package = "worker"
priority = 100
supervisor = "boss"
stack_pages = 8

[[component]]
name = "boss"
package = "boss"
priority = 150
power_off = true

[[region]]
name = "ring"
size = 8192
host_visible = true

[[map]]
component = "worker"
region = "ring"
rights = "rw"
double = true

[[map]]
component = "boss"
region = "ring"
rights = "r"
name = "worker_ring"

[[channel]]
notify = ["worker.wake", "boss.worker"]

[[channel]]
call = { client = "worker.console", server = "console.worker" }

[[irq]]
component = "console"
name = "serial"
irq = 4

[[ioport]]
component = "console"
name = "com1"
base = 0x3f8
size = 8
"#;

#[test]
fn a_valid_description_lowers_with_ids_peers_and_addresses() {
    let layout = sysdesc::compile_str("system.toml", DESCRIPTION).unwrap();
    let worker = &layout.components[1];
    assert_eq!(worker.name, "worker");
    assert_eq!(worker.stack_pages, 8);
    assert_eq!(worker.supervisor, Some(2));
    assert_eq!(worker.channels.len(), 2);
    assert_eq!(worker.channels[0].kind, ChannelKind::Notify);
    assert_eq!(
        (worker.channels[0].peer, worker.channels[0].peer_id),
        (2, 0)
    );
    assert_eq!(worker.channels[1].kind, ChannelKind::CallClient);
    assert_eq!(worker.console, Some(1));
    assert_eq!(worker.maps[0].vaddr, 0x10_0000_0000);
    assert!(worker.maps[0].double && worker.maps[0].writable);

    let console = &layout.components[0];
    assert_eq!(console.channels[0].kind, ChannelKind::CallServer);
    assert_eq!(
        (console.channels[0].peer, console.channels[0].peer_id),
        (1, 1)
    );
    assert_eq!(
        console.irqs[0].channel, 1,
        "IRQs take local ids after channel ends"
    );
    assert_eq!(console.ioports[0].base, 0x3f8);
    assert_eq!(console.console, None);

    let boss = &layout.components[2];
    assert_eq!(boss.children, vec![0, 1]);
    assert!(boss.may_power_off);
    assert!(!boss.maps[0].writable);
    assert!(layout.regions[0].host_visible);
}

#[test]
fn generated_ids_name_every_end_map_port_and_child() {
    let layout = sysdesc::compile_str("system.toml", DESCRIPTION).unwrap();
    let console = sysdesc::generate_ids(&layout, "console").unwrap();
    assert!(
        console.contains("pub const WORKER: Channel = Channel(0);"),
        "{console}"
    );
    assert!(
        console.contains("pub const SERIAL: Channel = Channel(1);"),
        "{console}"
    );
    assert!(
        console.contains("pub const COM1: IoPortName = IoPortName(0);"),
        "{console}"
    );
    let boss = sysdesc::generate_ids(&layout, "boss").unwrap();
    assert!(
        boss.contains("pub const WORKER_RING: RegionName = RegionName(0);"),
        "{boss}"
    );
    assert!(
        boss.contains("pub const CONSOLE: Child = Child(0);"),
        "{boss}"
    );
    assert!(
        boss.contains("pub const WORKER: Child = Child(1);"),
        "{boss}"
    );
    assert!(sysdesc::generate_ids(&layout, "nobody").is_none());
}

#[test]
fn the_first_description_that_has_the_component_gives_its_ids() {
    let folder = std::env::temp_dir().join(format!("sysdesc-ids-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let first = folder.join("a.toml");
    let second = folder.join("b.toml");
    std::fs::write(&first, DESCRIPTION).unwrap();
    let reordered = DESCRIPTION.replace(
        "[[channel]]\nnotify = [\"worker.wake\", \"boss.worker\"]\n",
        "",
    ) + "\n[[channel]]\nnotify = [\"worker.wake\", \"boss.worker\"]\n";
    std::fs::write(&second, reordered).unwrap();
    let from_first =
        sysdesc::ids_from_descriptions(&[first.clone(), second.clone()], "worker").unwrap();
    let from_second =
        sysdesc::ids_from_descriptions(&[second.clone(), first.clone()], "worker").unwrap();
    assert!(
        from_first.contains("pub const WAKE: Channel = Channel(0);"),
        "{from_first}"
    );
    assert!(
        from_second.contains("pub const WAKE: Channel = Channel(1);"),
        "{from_second}"
    );
    let missing = sysdesc::ids_from_descriptions(&[first], "nobody").unwrap_err();
    assert!(
        missing.contains("in none of the system descriptions"),
        "{missing}"
    );
    let _ = std::fs::remove_dir_all(folder);
}

#[test]
fn the_bus_manager_gets_the_device_table_of_its_children() {
    let text = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200

[[component]]
name = "kvp"
package = "vsc-kvp"
priority = 150
supervisor = "vmbus"

[[device]]
class = "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"
driver = "kvp"
"#;
    let layout = sysdesc::compile_str("system.toml", text).unwrap();
    assert!(layout.components[0].hypervisor);
    assert!(!layout.components[1].hypervisor);
    assert_eq!(layout.devices.len(), 1);
    assert_eq!(layout.devices[0].class[0], 0xa9);
    assert_eq!(layout.devices[0].driver, 2);
    let vmbus = sysdesc::generate_ids(&layout, "vmbus").unwrap();
    assert!(vmbus.contains("pub const DEVICES"), "{vmbus}");
    assert!(
        vmbus.contains("\"kvp\", component_api::Child(0)"),
        "{vmbus}"
    );
    let kvp = sysdesc::generate_ids(&layout, "kvp").unwrap();
    assert!(!kvp.contains("DEVICES"), "{kvp}");
}

const SIMULATED_HOST: &str = r#"
version = 1

[[component]]
name = "hvsim"
package = "hvsim"
priority = 240
simulated_host = true

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true

[[region]]
name = "synic_pages"
size = 8192
host_visible = true

[[region]]
name = "private"
size = 4096

[[region]]
name = "ring"
size = 16384
host_visible = true

[[region]]
name = "host_scratch"
size = 4096

[[map]]
component = "synic"
region = "synic_pages"
rights = "rw"

[[map]]
component = "synic"
region = "private"
rights = "rw"

[[map]]
component = "hvsim"
region = "host_scratch"
rights = "rw"

[[map]]
component = "hvsim"
region = "ring"
rights = "r"
name = "guest_ring"
"#;

#[test]
fn a_device_class_is_a_hyphenated_guid_in_standard_byte_order() {
    let description = |class: &str| {
        format!(
            "version = 1\n\n[[component]]\nname = \"vmbus\"\npackage = \"vmbus\"\npriority = 200\n\n\
             [[component]]\nname = \"kvp\"\npackage = \"vsc-kvp\"\npriority = 150\nsupervisor = \"vmbus\"\n\n\
             [[device]]\nclass = \"{class}\"\ndriver = \"kvp\"\n"
        )
    };
    let layout = sysdesc::compile_str(
        "system.toml",
        &description("A9A0F4E7-5a45-4d96-b827-8a841e8c03e6"),
    )
    .unwrap();
    assert_eq!(
        layout.devices[0].class,
        [
            0xa9, 0xa0, 0xf4, 0xe7, 0x5a, 0x45, 0x4d, 0x96, 0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c,
            0x03, 0xe6
        ]
    );
    for not_a_guid in [
        "a9a0f4e75a454d96b8278a841e8c03e6",
        "{a9a0f4e7-5a45-4d96-b827-8a841e8c03e6}",
        "urn:uuid:a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
        "a9a0f4e7-5a45-4d96-b827-8a841e8c03eg",
        "a9a0f4e75-a45-4d96-b827-8a841e8c03e6",
        "a9a0f4e7-5a45-4d96-b827-8a841e8c03e",
    ] {
        let diagnostics = sysdesc::compile_str("system.toml", &description(not_a_guid))
            .unwrap_err()
            .to_string();
        assert!(
            diagnostics.contains(&format!("`{not_a_guid}` is not a GUID")),
            "{not_a_guid}: {diagnostics}"
        );
    }
}

#[test]
fn the_simulated_host_maps_every_host_visible_region_and_nothing_else() {
    let layout = sysdesc::compile_str("system.toml", SIMULATED_HOST).unwrap();
    let host = &layout.components[0];
    let maps: Vec<(&str, &str, bool)> = host
        .maps
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                layout.regions[m.region as usize].name.as_str(),
                m.writable,
            )
        })
        .collect();
    // Its own maps as declared (the ring once, with its rights), then the
    // host-visible regions it did not map, read-write, under their names.
    assert_eq!(
        maps,
        vec![
            ("host_scratch", "host_scratch", true),
            ("guest_ring", "ring", false),
            ("synic_pages", "synic_pages", true),
        ]
    );
    // Each implicit map has its own address, after the declared ones.
    assert!(host.maps[2].vaddr > host.maps[1].vaddr);
    // The guest side is untouched.
    assert_eq!(layout.components[1].maps.len(), 2);
    let ids = sysdesc::generate_ids(&layout, "hvsim").unwrap();
    assert!(
        ids.contains("pub const SYNIC_PAGES: RegionName = RegionName(2);"),
        "{ids}"
    );
    assert!(
        ids.contains("(component_api::RegionName(2), \"synic_pages\")"),
        "{ids}"
    );

    // Without a simulated host nobody gains a map.
    let plain = SIMULATED_HOST.replace("simulated_host = true", "");
    let layout = sysdesc::compile_str("system.toml", &plain).unwrap();
    assert_eq!(layout.components[0].maps.len(), 2);
}

#[test]
fn the_simulated_host_cannot_reuse_a_host_visible_region_name_for_another_map() {
    let clash = SIMULATED_HOST.replace(
        "region = \"host_scratch\"\nrights = \"rw\"",
        "region = \"host_scratch\"\nrights = \"rw\"\nname = \"synic_pages\"",
    );
    let errors = sysdesc::compile_str("system.toml", &clash).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(
        errors.0[0].message.contains("under its own name"),
        "{errors}"
    );
    assert_eq!(errors.0[0].line, 17, "{errors}");
}
