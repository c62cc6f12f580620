//! The compiled form of a valid description: ids, peers, addresses.
#![forbid(unsafe_code)]

use system_layout::{ChannelKind, IrqSource, IrqTarget};

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
supervisor = "@platform"

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
    assert!(!worker.platform_supervised);
    // The platform (monitor, launcher) restarts the supervisor itself.
    let boss = &layout.components[2];
    assert_eq!(boss.supervisor, None);
    assert!(boss.platform_supervised);
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
    let description = sysdesc::describe_str("system.toml", DESCRIPTION).unwrap();
    let console = sysdesc::generate_ids(&description, "console").unwrap();
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
    let boss = sysdesc::generate_ids(&description, "boss").unwrap();
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
    assert!(sysdesc::generate_ids(&description, "nobody").is_none());
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
fn a_driver_stanza_expands_into_its_wiring_and_typed_tables() {
    let text = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true
serves = ["synic"]

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200
serves = ["bus"]

[[component]]
name = "app"
package = "app"
priority = 100

[[protocol]]
name = "synic"
rust = "vmbus_ipc::synic::Synic"
allow.signal_host = ["@drivers"]

[[protocol]]
name = "bus"
rust = "vmbus_ipc::bus::Bus"

[[protocol]]
name = "kvp"
rust = "vmbus_ipc::kvp::Kvp"

[vmbus]
manager = "vmbus"
synic = "synic"

[[driver]]
name = "kvp"
package = "vsc-kvp"
priority = 150
classes = ["a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"]
ring_out = 8192
ring_in = 24576
serves = "kvp"
clients = ["app"]
"#;
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let layout = &description.layout;
    assert!(layout.components[0].hypervisor);
    let kvp = layout.component_index("kvp").unwrap();
    assert_eq!(layout.components[kvp].supervisor, Some(1));
    assert_eq!(layout.devices.len(), 1);
    assert_eq!(layout.devices[0].class[0], 0xa9);
    assert_eq!(layout.devices[0].driver as usize, kvp);
    // Per ring a control page and a data region; the driver maps the
    // data regions twice, back to back.
    for (name, size, double) in [
        ("kvp_ring_out_control", 4096, false),
        ("kvp_ring_out", 4096, true),
        ("kvp_ring_in_control", 4096, false),
        ("kvp_ring_in", 20480, true),
    ] {
        let index = layout.regions.iter().position(|r| r.name == name).unwrap();
        let region = &layout.regions[index];
        assert_eq!((region.size, region.host_visible), (size, true), "{name}");
        let map = layout.components[kvp]
            .maps
            .iter()
            .find(|m| m.region as usize == index)
            .unwrap();
        assert_eq!((map.writable, map.double), (true, double), "{name}");
    }
    let ends: Vec<&str> = layout.components[kvp]
        .channels
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        ends,
        [
            "synic",
            "synic_call",
            "vmbus",
            "vmbus_event",
            "app",
            "app_event"
        ]
    );
    let vmbus = sysdesc::generate_ids(&description, "vmbus").unwrap();
    assert!(vmbus.contains("pub const DRIVERS: &[Driver]"), "{vmbus}");
    assert!(
        vmbus.contains("name: \"kvp\", classes: &[([169, 160, 244, 231, 90, 69, 77, 150, 184, 39, 138, 132, 30, 140, 3, 230], None)], child: Child(0), caller: super::Caller::Kvp,"),
        "{vmbus}"
    );
    assert!(
        vmbus.contains("ring_in_bytes: 24576, ring_out_bytes: 8192"),
        "{vmbus}"
    );
    let synic = sysdesc::generate_ids(&description, "synic").unwrap();
    assert!(
        synic.contains("Driver { id: vmbus_ipc::DriverId(0), name: \"kvp\", notify: Channel(0), caller: super::Caller::Kvp }"),
        "{synic}"
    );
    let driver = sysdesc::generate_ids(&description, "kvp").unwrap();
    assert!(
        driver.contains("pub const RING_OUT_BYTES: usize = 8192;"),
        "{driver}"
    );
    assert!(
        driver.contains("pub const CLIENT_EVENTS: &[Channel] = &[Channel(5)];"),
        "{driver}"
    );
    for (i, name) in ["RING_OUT_CONTROL", "RING_OUT", "RING_IN_CONTROL", "RING_IN"]
        .iter()
        .enumerate()
    {
        assert!(
            driver.contains(&format!("pub const {name}: RegionName = RegionName({i});")),
            "{driver}"
        );
    }
    let app = sysdesc::generate_ids(&description, "app").unwrap();
    assert!(
        app.contains("pub const KVP: component_api::Client<vmbus_ipc::kvp::Kvp>"),
        "{app}"
    );
}

#[test]
fn data_buffers_are_the_drivers_read_write_and_the_managers_by_address() {
    let text = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true
serves = ["synic"]

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200
serves = ["bus"]

[[protocol]]
name = "synic"
rust = "vmbus_ipc::synic::Synic"

[[protocol]]
name = "bus"
rust = "vmbus_ipc::bus::Bus"

[vmbus]
manager = "vmbus"
synic = "synic"

[[driver]]
name = "net"
package = "vsc-net"
priority = 150
classes = ["f8615163-df3e-46c5-913f-f2d2f965ed0e"]
ring_out = 8192
ring_in = 8192
buffers = [16777216, 65536]
"#;
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let layout = &description.layout;
    for (n, size) in [(0, 16777216), (1, 65536)] {
        let name = format!("net_buffer{n}");
        let index = layout.regions.iter().position(|r| r.name == name).unwrap();
        let region = &layout.regions[index];
        assert_eq!((region.size, region.host_visible), (size, true));
        let net = &layout.components[layout.component_index("net").unwrap()];
        let own = net
            .maps
            .iter()
            .find(|m| m.region as usize == index)
            .unwrap();
        assert_eq!(own.name, format!("buffer{n}"));
        assert!(own.writable && !own.address_only);
        let vmbus = &layout.components[layout.component_index("vmbus").unwrap()];
        let grant = vmbus
            .maps
            .iter()
            .find(|m| m.region as usize == index)
            .unwrap();
        assert!(grant.address_only, "the manager never maps a data buffer");
    }
    let vmbus = sysdesc::generate_ids(&description, "vmbus").unwrap();
    assert!(
        vmbus.contains(
            "ring_out_bytes: 8192, buffers: &[RegionName(4), RegionName(5)], sub_rings: &[], fault_window_ms: 10000 }"
        ),
        "{vmbus}"
    );
    let driver = sysdesc::generate_ids(&description, "net").unwrap();
    assert!(
        driver.contains("pub const BUFFER_BYTES: &[usize] = &[16777216, 65536];"),
        "{driver}"
    );
    assert!(
        driver.contains("pub const BUFFER1: RegionName = RegionName(5);"),
        "{driver}"
    );
}

#[test]
fn sub_channels_get_rings_of_the_primarys_sizes_for_driver_and_manager() {
    let text = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true
serves = ["synic"]

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200
serves = ["bus"]

[[protocol]]
name = "synic"
rust = "vmbus_ipc::synic::Synic"

[[protocol]]
name = "bus"
rust = "vmbus_ipc::bus::Bus"

[vmbus]
manager = "vmbus"
synic = "synic"

[[driver]]
name = "net"
package = "vsc-net"
priority = 150
classes = ["f8615163-df3e-46c5-913f-f2d2f965ed0e"]
ring_out = 8192
ring_in = 16384
sub_channels = 2
"#;
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let layout = &description.layout;
    let net = &layout.components[layout.component_index("net").unwrap()];
    let vmbus = &layout.components[layout.component_index("vmbus").unwrap()];
    for k in 1..=2 {
        for (part, size, double) in [
            ("ring_out_control", 4096, false),
            ("ring_out", 4096, true),
            ("ring_in_control", 4096, false),
            ("ring_in", 12288, true),
        ] {
            let name = format!("net_{part}{k}");
            let index = layout.regions.iter().position(|r| r.name == name);
            let index = index.unwrap_or_else(|| panic!("no region {name}"));
            let region = &layout.regions[index];
            assert_eq!((region.size, region.host_visible), (size, true), "{name}");
            let own = net
                .maps
                .iter()
                .find(|m| m.region as usize == index)
                .unwrap();
            assert_eq!(own.name, format!("{part}{k}"));
            assert!(own.writable && !own.address_only);
            assert_eq!(own.double, double, "{name}");
            let grant = vmbus.maps.iter().find(|m| m.region as usize == index);
            assert!(grant.unwrap().address_only, "the manager maps no ring");
        }
    }
    assert!(!layout.regions.iter().any(|r| r.name == "net_ring_out3"));
    // The primary's rings stay the driver's regions 0-3.
    assert_eq!(net.maps[0].name, "ring_out_control");
    assert_eq!(net.maps[3].name, "ring_in");
    let manager = sysdesc::generate_ids(&description, "vmbus").unwrap();
    let position = |name: &str| vmbus.maps.iter().position(|m| m.name == name).unwrap();
    let expected = format!(
        "sub_rings: &[[RegionName({}), RegionName({}), RegionName({}), RegionName({})], [RegionName({}), RegionName({}), RegionName({}), RegionName({})]], fault_window_ms: 10000 }}",
        position("net_ring_out_control1"),
        position("net_ring_out1"),
        position("net_ring_in_control1"),
        position("net_ring_in1"),
        position("net_ring_out_control2"),
        position("net_ring_out2"),
        position("net_ring_in_control2"),
        position("net_ring_in2"),
    );
    assert!(manager.contains(&expected), "{expected}\n{manager}");
    let driver = sysdesc::generate_ids(&description, "net").unwrap();
    assert!(
        driver.contains("pub const SUB_CHANNELS: usize = 2;"),
        "{driver}"
    );
    assert!(
        driver.contains("pub const RING_IN2: RegionName"),
        "{driver}"
    );
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
fn the_bus_manager_knows_every_ring_by_address_and_maps_none() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../system.toml");
    let description = sysdesc::describe_file(&path).unwrap();
    let layout = &description.layout;
    let vmbus = &layout.components[layout.component_index("vmbus").unwrap()];
    let drivers = ["heartbeat", "shutdown", "timesync", "kvp"];
    for driver in drivers {
        let parts = ["ring_out_control", "ring_out", "ring_in_control", "ring_in"];
        for (i, part) in parts.iter().enumerate() {
            let ring_name = format!("{driver}_{part}");
            let region = layout
                .regions
                .iter()
                .position(|r| r.name == ring_name)
                .unwrap();
            assert!(layout.regions[region].host_visible);
            let held = vmbus
                .maps
                .iter()
                .find(|m| m.region as usize == region)
                .unwrap_or_else(|| panic!("vmbus is not told where {ring_name} is"));
            assert!(
                held.address_only && !held.writable && !held.double && held.vaddr == 0,
                "{held:?}"
            );
            // The driver itself maps it read-write, as its regions 0-3,
            // the data areas twice.
            let own = &layout.components[layout.component_index(driver).unwrap()];
            assert_eq!(own.maps[i].region as usize, region);
            assert!(own.maps[i].writable && !own.maps[i].address_only);
            assert_eq!(own.maps[i].double, i % 2 == 1);
        }
    }
    // Everything vmbus maps is its own queue from synic and its private
    // session record: no ring of any driver, and not the monitor pages (it
    // only hands their address to the host).
    let mapped: Vec<&str> = vmbus
        .maps
        .iter()
        .filter(|m| !m.address_only)
        .map(|m| layout.regions[m.region as usize].name.as_str())
        .collect();
    assert_eq!(mapped, ["synic_messages", "vmbus_session"]);
    let session = layout
        .regions
        .iter()
        .find(|r| r.name == "vmbus_session")
        .unwrap();
    assert!(!session.host_visible);
    let summary = sysdesc::summary(&description);
    assert!(
        summary.contains("  region   kvp_ring_in      address    12288 bytes, host visible\n"),
        "{summary}"
    );
    let ids = sysdesc::generate_ids(&description, "vmbus").unwrap();
    assert!(
        ids.contains("not mapped: its guest physical address and size only"),
        "{ids}"
    );
}

#[test]
fn a_device_class_is_a_hyphenated_guid_in_standard_byte_order() {
    let description = |class: &str| {
        format!(
            "version = 1\n\n[[component]]\nname = \"synic\"\npackage = \"synic\"\npriority = 230\n\
             hypervisor = true\nserves = [\"synic\"]\n\n\
             [[component]]\nname = \"vmbus\"\npackage = \"vmbus\"\npriority = 200\nserves = [\"bus\"]\n\n\
             [[protocol]]\nname = \"synic\"\nrust = \"vmbus_ipc::synic::Synic\"\n\n\
             [[protocol]]\nname = \"bus\"\nrust = \"vmbus_ipc::bus::Bus\"\n\n\
             [vmbus]\nmanager = \"vmbus\"\nsynic = \"synic\"\n\n\
             [[driver]]\nname = \"kvp\"\npackage = \"vsc-kvp\"\npriority = 150\n\
             classes = [\"{class}\"]\nring_out = 8192\nring_in = 8192\n"
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
    let description = sysdesc::describe_str("system.toml", SIMULATED_HOST).unwrap();
    let layout = &description.layout;
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
    let ids = sysdesc::generate_ids(&description, "hvsim").unwrap();
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

const CONTRACTS: &str = r#"
version = 1

[[component]]
name = "counter"
package = "counter"
priority = 20
serves = ["count"]

[[component]]
name = "reader"
package = "reader"
priority = 10

[[component]]
name = "admin_tool"
package = "admin"
priority = 10

[[protocol]]
name = "count"
rust = "demo::Count"
allow.reset = ["admin_tool"]

[[channel]]
call = { client = "reader.counter", server = "counter.reader", protocol = "count" }

[[channel]]
call = { client = "admin_tool.counter", server = "counter.admin", protocol = "count" }
"#;

#[test]
fn call_channels_get_typed_handles_and_servers_know_their_callers() {
    let description = sysdesc::describe_str("system.toml", CONTRACTS).unwrap();
    let reader = sysdesc::generate_ids(&description, "reader").unwrap();
    assert!(
        reader.contains(
            "pub const COUNTER: component_api::Client<demo::Count> = component_api::Client::new(Channel(0));"
        ),
        "{reader}"
    );
    assert!(reader.contains("assert_protocol_name::<demo::Count>(\"count\")"));
    assert!(!reader.contains("enum Caller"), "{reader}");
    let counter = sysdesc::generate_ids(&description, "counter").unwrap();
    assert!(counter.contains("pub enum Caller {"), "{counter}");
    assert!(counter.contains("    Reader,"), "{counter}");
    assert!(counter.contains("    AdminTool,"), "{counter}");
    assert!(counter.contains("pub fn count("), "{counter}");
    // `reset` is restricted to admin_tool: the reader's mask leaves it out.
    assert!(
        counter.contains(
            "0 => (super::Caller::Reader, { const MASK: u64 = component_api::protocol::caller_mask::<demo::Count>(&[\"reset\"], &[]); MASK }),"
        ),
        "{counter}"
    );
    assert!(
        counter.contains("caller_mask::<demo::Count>(&[\"reset\"], &[\"reset\"])"),
        "{counter}"
    );
    assert_eq!(
        description
            .contracts
            .protocol_of(0, 0)
            .map(|p| p.name.as_str()),
        Some("count")
    );
}

#[test]
fn the_summary_says_what_every_component_holds() {
    let description = sysdesc::describe_str("system.toml", CONTRACTS).unwrap();
    let summary = sysdesc::summary(&description);
    assert!(
        summary.contains(
            "  channel  reader           serves   <-  reader, protocol count except reset\n"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("  channel  admin            serves   <-  admin_tool, protocol count\n"),
        "{summary}"
    );
    assert!(
        summary.contains("  channel  counter          calls     -> counter, protocol count\n"),
        "{summary}"
    );
    assert_eq!(
        summary.matches("  hypervisor: no\n").count(),
        3,
        "{summary}"
    );
}

const BLOCK_SYSTEM: &str = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true
serves = ["synic"]

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200
serves = ["bus"]

[[component]]
name = "files"
package = "fs-client"
priority = 100

[[component]]
name = "logs"
package = "fs-client"
priority = 100

[[protocol]]
name = "synic"
rust = "vmbus_ipc::synic::Synic"

[[protocol]]
name = "bus"
rust = "vmbus_ipc::bus::Bus"

[vmbus]
manager = "vmbus"
synic = "synic"

[[driver]]
name = "storage"
package = "vsc-storvsc"
priority = 150
classes = ["ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"]
ring_out = 16384
ring_in = 16384

[[block]]
driver = "storage"
client = "files"
lun = 0
partition = 1
data = 1048576
queue = 32

[[block]]
driver = "storage"
client = "logs"
lun = 0
partition = 2
data = 65536
queue = 200

[[block]]
driver = "storage"
client = "files"
lun = 1
read_only = true
data = 4096
queue = 8
"#;

#[test]
fn block_grants_expand_into_queues_info_and_a_data_region_the_driver_holds_by_address() {
    let description = sysdesc::describe_str("system.toml", BLOCK_SYSTEM).unwrap();
    let layout = &description.layout;
    let region = |name: &str| {
        let index = layout
            .regions
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name}"));
        (index, &layout.regions[index])
    };
    let component = |name: &str| &layout.components[layout.component_index(name).unwrap()];
    // Sizes from block_queue: 32 requests of 40 bytes + the header fit a page,
    // 200 need 8256 bytes (3 pages); 200 responses of 24 bytes need 2 pages.
    for (name, size, host_visible) in [
        ("files_blk0_requests", 4096, false),
        ("files_blk0_responses", 4096, false),
        ("files_blk0_info", 4096, false),
        ("files_blk0_data", 1048576, true),
        ("logs_blk0_requests", 12288, false),
        ("logs_blk0_responses", 8192, false),
        ("files_blk1_data", 4096, true),
    ] {
        let (_, r) = region(name);
        assert_eq!((r.size, r.host_visible), (size, host_visible), "{name}");
    }
    let (data, _) = region("files_blk0_data");
    let (requests, _) = region("files_blk0_requests");
    let files = component("files");
    let storage = component("storage");
    let own = files
        .maps
        .iter()
        .find(|m| m.region as usize == data)
        .unwrap();
    assert_eq!(own.name, "blk0_data");
    assert!(own.writable && !own.address_only);
    let driver_data = storage
        .maps
        .iter()
        .find(|m| m.region as usize == data)
        .unwrap();
    assert!(
        driver_data.address_only,
        "the driver never maps the client's data"
    );
    let driver_queue = storage
        .maps
        .iter()
        .find(|m| m.region as usize == requests)
        .unwrap();
    assert!(driver_queue.writable && !driver_queue.address_only);
    assert_eq!(storage.maps[0].name, "ring_out_control", "rings stay first");

    let driver = sysdesc::generate_ids(&description, "storage").unwrap();
    let map = |name: &str| storage.maps.iter().position(|m| m.name == name).unwrap();
    let end = |c: &system_layout::ComponentLayout, name: &str| {
        c.channels.iter().find(|e| e.name == name).unwrap().id
    };
    let expected = format!(
        "BlockClient {{ name: \"files\", lun: 0, partition: Some(1), read_only: false, requests: RegionName({}), responses: RegionName({}), info: RegionName({}), data: RegionName({}), data_bytes: 1048576, queue: 32, notify: Channel({}) }},",
        map("files_blk0_requests"),
        map("files_blk0_responses"),
        map("files_blk0_info"),
        map("files_blk0_data"),
        end(storage, "files_blk0"),
    );
    assert!(driver.contains(&expected), "{driver}");
    assert!(
        driver.contains("name: \"files\", lun: 1, partition: None, read_only: true"),
        "{driver}"
    );
    assert!(
        driver.contains("name: \"logs\", lun: 0, partition: Some(2)"),
        "{driver}"
    );

    let client = sysdesc::generate_ids(&description, "files").unwrap();
    let cmap = |name: &str| files.maps.iter().position(|m| m.name == name).unwrap();
    let expected = format!(
        "Grant {{ driver: \"storage\", lun: 1, partition: None, read_only: true, requests: RegionName({}), responses: RegionName({}), info: RegionName({}), data: RegionName({}), data_bytes: 4096, queue: 8, notify: Channel({}) }},",
        cmap("blk1_requests"),
        cmap("blk1_responses"),
        cmap("blk1_info"),
        cmap("blk1_data"),
        end(files, "blk1"),
    );
    assert!(client.contains(&expected), "{client}");
    assert!(
        !client.contains("block_clients"),
        "a client serves no blocks"
    );
    let summary = sysdesc::summary(&description);
    assert!(summary.contains("files_blk0_data"), "{summary}");
}

#[test]
fn a_block_server_that_is_no_vmbus_driver_maps_the_data_itself() {
    let text = r#"
version = 1

[[component]]
name = "ramdisk"
package = "blk-ramdisk"
priority = 150

[[component]]
name = "files"
package = "fs-client"
priority = 100

[[block]]
driver = "ramdisk"
client = "files"
lun = 0
data = 65536
queue = 16
"#;
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let layout = &description.layout;
    let data = layout
        .regions
        .iter()
        .position(|r| r.name == "files_blk0_data")
        .unwrap();
    assert!(!layout.regions[data].host_visible, "no host in this system");
    let ramdisk = &layout.components[layout.component_index("ramdisk").unwrap()];
    let map = ramdisk
        .maps
        .iter()
        .find(|m| m.region as usize == data)
        .unwrap();
    assert!(
        map.writable && !map.address_only,
        "it copies the blocks itself"
    );
    let ids = sysdesc::generate_ids(&description, "ramdisk").unwrap();
    assert!(ids.contains("pub const CLIENTS: &[BlockClient]"), "{ids}");
}

const NET_SYSTEM: &str = r#"
version = 1

[[component]]
name = "synic"
package = "synic"
priority = 230
hypervisor = true
serves = ["synic"]

[[component]]
name = "vmbus"
package = "vmbus"
priority = 200
serves = ["bus"]

[[component]]
name = "web"
package = "net-client"
priority = 100

[[component]]
name = "bridge"
package = "net-loopback"
priority = 150

[[protocol]]
name = "synic"
rust = "vmbus_ipc::synic::Synic"

[[protocol]]
name = "bus"
rust = "vmbus_ipc::bus::Bus"

[vmbus]
manager = "vmbus"
synic = "synic"

[[driver]]
name = "network"
package = "vsc-netvsc"
priority = 150
classes = ["f8615163-df3e-46c5-913f-f2d2f965ed0e"]
ring_out = 16384
ring_in = 16384

[[net]]
driver = "network"
client = "web"
buffers = 512
address = "10.0.2.15/24"
gateway = "10.0.2.2"

[[net]]
driver = "bridge"
client = "web"
buffers = 16
address = "dhcp"
"#;

#[test]
fn net_grants_expand_into_four_queues_an_info_page_and_a_data_region() {
    let description = sysdesc::describe_str("system.toml", NET_SYSTEM).unwrap();
    let layout = &description.layout;
    let region = |name: &str| {
        let index = layout
            .regions
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name}"));
        (index, &layout.regions[index])
    };
    let component = |name: &str| &layout.components[layout.component_index(name).unwrap()];
    // 512 descriptors of 32-byte slots + the 256-byte header: 5 pages; 16: one.
    for (name, size, host_visible) in [
        ("web_net0_rx_free", 20480, false),
        ("web_net0_rx_active", 20480, false),
        ("web_net0_tx_free", 20480, false),
        ("web_net0_tx_active", 20480, false),
        ("web_net0_info", 4096, false),
        ("web_net0_data", 2 * 1024 * 1024, true),
        ("web_net1_rx_free", 4096, false),
        ("web_net1_data", 65536, false),
    ] {
        let (_, r) = region(name);
        assert_eq!((r.size, r.host_visible), (size, host_visible), "{name}");
    }
    let (data, _) = region("web_net0_data");
    let web = component("web");
    let network = component("network");
    let own = web.maps.iter().find(|m| m.region as usize == data).unwrap();
    assert_eq!(own.name, "net0_data");
    assert!(own.writable && !own.address_only);
    let driver_data = network
        .maps
        .iter()
        .find(|m| m.region as usize == data)
        .unwrap();
    assert!(
        driver_data.writable && !driver_data.address_only,
        "the driver copies received frames in"
    );
    assert_eq!(network.maps[0].name, "ring_out_control", "rings stay first");

    let driver = sysdesc::generate_ids(&description, "network").unwrap();
    let map = |name: &str| network.maps.iter().position(|m| m.name == name).unwrap();
    let end = |c: &system_layout::ComponentLayout, name: &str| {
        c.channels.iter().find(|e| e.name == name).unwrap().id
    };
    let expected = format!(
        "NetClient {{ name: \"web\", rx_free: RegionName({}), rx_active: RegionName({}), tx_free: RegionName({}), tx_active: RegionName({}), info: RegionName({}), data: RegionName({}), data_bytes: 2097152, buffers: 512, notify: Channel({}) }},",
        map("web_net0_rx_free"),
        map("web_net0_rx_active"),
        map("web_net0_tx_free"),
        map("web_net0_tx_active"),
        map("web_net0_info"),
        map("web_net0_data"),
        end(network, "web_net0"),
    );
    assert!(driver.contains(&expected), "{driver}");
    assert!(!driver.contains("pub mod net {"), "{driver}");

    let client = sysdesc::generate_ids(&description, "web").unwrap();
    let cmap = |name: &str| web.maps.iter().position(|m| m.name == name).unwrap();
    let expected = format!(
        "Grant {{ driver: \"network\", rx_free: RegionName({}), rx_active: RegionName({}), tx_free: RegionName({}), tx_active: RegionName({}), info: RegionName({}), data: RegionName({}), data_bytes: 2097152, buffers: 512, address: Address::Static {{ address: [10, 0, 2, 15], prefix: 24, gateway: Some([10, 0, 2, 2]) }}, notify: Channel({}) }},",
        cmap("net0_rx_free"),
        cmap("net0_rx_active"),
        cmap("net0_tx_free"),
        cmap("net0_tx_active"),
        cmap("net0_info"),
        cmap("net0_data"),
        end(web, "net0"),
    );
    assert!(client.contains(&expected), "{client}");
    assert!(
        client.contains("Grant { driver: \"bridge\"") && client.contains("address: Address::Dhcp"),
        "{client}"
    );
    assert!(!client.contains("net_clients"), "a client serves no frames");
    let bridge = sysdesc::generate_ids(&description, "bridge").unwrap();
    assert!(
        bridge.contains("pub const CLIENTS: &[NetClient]"),
        "{bridge}"
    );
    assert!(
        bridge.contains("data_bytes: 65536, buffers: 16"),
        "{bridge}"
    );
}

#[test]
fn the_platform_is_simulated_unless_the_description_says_hyper_v() {
    let simulated = sysdesc::compile_str("system.toml", DESCRIPTION).unwrap();
    assert_eq!(simulated.platform, system_layout::Platform::Simulated);
    let hyper_v = DESCRIPTION.replacen(
        "version = 1\n",
        "version = 1\n\n[platform]\nhypervisor = \"hyper-v\"\n",
        1,
    ) + "\n[[component]]\nname = \"gate\"\npackage = \"gate\"\npriority = 250\nhypervisor = true\n";
    let layout = sysdesc::compile_str("system.toml", &hyper_v).unwrap();
    assert_eq!(layout.platform, system_layout::Platform::HyperV);
    let bytes = layout.encode().unwrap();
    assert_eq!(
        system_layout::SystemLayout::decode(&bytes)
            .unwrap()
            .platform,
        system_layout::Platform::HyperV
    );
    let explicit = DESCRIPTION.replacen(
        "version = 1\n",
        "version = 1\n\n[platform]\nhypervisor = \"simulated\"\n",
        1,
    );
    assert_eq!(
        sysdesc::compile_str("system.toml", &explicit)
            .unwrap()
            .platform,
        system_layout::Platform::Simulated
    );
}

#[test]
fn a_vector_irq_signals_the_named_notify_end_and_tells_its_holder_which_channel_it_stands_in_for() {
    let text = r#"
version = 1

[[component]]
name = "host"
package = "host"
priority = 240

[[component]]
name = "guest"
package = "guest"
priority = 230

[[channel]]
notify = ["host.interrupt", "guest.hypervisor_interrupt"]

[[irq]]
component = "host"
name = "timer"
irq = 2

[[irq]]
component = "host"
name = "sint"
vector = 0x50
notify = "guest.hypervisor_interrupt"

[[irq]]
component = "guest"
name = "own"
vector = 0x51
"#;
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let layout = &description.layout;
    let host = &layout.components[0];
    let guest = &layout.components[1];
    assert_eq!(host.irqs[0].source, IrqSource::Line(2));
    assert_eq!(host.irqs[0].notify, None);
    assert_eq!(host.irqs[1].name, "sint");
    assert_eq!(host.irqs[1].channel, 2, "after the end and the timer");
    assert_eq!(host.irqs[1].source, IrqSource::Vector(0x50));
    assert_eq!(
        host.irqs[1].notify,
        Some(IrqTarget {
            component: 1,
            end: guest.channels[0].id
        })
    );
    assert_eq!(guest.irqs[0].source, IrqSource::Vector(0x51));
    assert_eq!(guest.irqs[0].notify, None);

    let ids = sysdesc::generate_ids(&description, "host").unwrap();
    assert!(
        ids.contains("pub const SINT: Channel = Channel(2);"),
        "{ids}"
    );
    assert!(
        ids.contains(
            "component_api::VectorIrq { irq: component_api::Channel(2), vector: 0x50, signals_peer_of: Some(component_api::Channel(0)) }"
        ),
        "{ids}"
    );
    let guest_ids = sysdesc::generate_ids(&description, "guest").unwrap();
    assert!(
        guest_ids.contains(
            "component_api::VectorIrq { irq: component_api::Channel(1), vector: 0x51, signals_peer_of: None }"
        ),
        "{guest_ids}"
    );
    // A description without one gives an empty table: code asks it.
    let plain = sysdesc::describe_str("system.toml", DESCRIPTION).unwrap();
    let console = sysdesc::generate_ids(&plain, "console").unwrap();
    assert!(
        console.contains("pub const VECTOR_IRQS: &[component_api::VectorIrq] = &[];"),
        "{console}"
    );

    let summary = sysdesc::summary(&description);
    assert!(
        summary
            .contains("vector 0x50 (no device; ack and raise), signals guest.hypervisor_interrupt"),
        "{summary}"
    );
}

/// Device memory: the layout carries the physical address, the component
/// that maps it is told it (`DEVICE_REGIONS`), and it is not host visible.
#[test]
fn a_device_region_lowers_with_its_physical_address() {
    let text = r#"
version = 1

[[component]]
name = "host"
package = "hvsim"
priority = 240

[[region]]
name = "private"
size = 4096

[[region]]
name = "vga_lfb"
physical = 0xfd000000
size = 0x300000

[[map]]
component = "host"
region = "private"
rights = "rw"

[[map]]
component = "host"
region = "vga_lfb"
rights = "rw"
"#;
    let layout = sysdesc::compile_str("system.toml", text).unwrap();
    assert_eq!(layout.regions[0].physical, None);
    assert_eq!(layout.regions[1].physical, Some(0xfd00_0000));
    assert!(!layout.regions[1].host_visible);
    let description = sysdesc::describe_str("system.toml", text).unwrap();
    let ids = sysdesc::generate_ids(&description, "host").unwrap();
    assert!(
        ids.contains(
            "pub const DEVICE_REGIONS: &[(component_api::RegionName, u64)] = &[(component_api::RegionName(1), 0xfd000000), ];"
        ),
        "{ids}"
    );
}
