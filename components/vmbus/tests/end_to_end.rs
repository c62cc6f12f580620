//! synic + vmbus against hvsim's simulated host, in one process.
//!
//! Guest memory is one arena in which GPA = offset; the host-visible regions
//! (synic pages, hypercall pages, monitor pages, the four rings) are carved
//! from it and hvsim sees exactly that memory. `synic_messages` is private
//! memory shared by synic and vmbus. synic's `hypervisor` calls go to the
//! simulator; vmbus's `synic_call` goes to synic; notifications are
//! delivered by the pump below. The test plays the VSCs (it opens their
//! channels over vmbus's call ends). Throughout, the simulated host must
//! reject nothing the guest sends.
#![forbid(unsafe_code)]

use component_api::{CallError, Channel, ChannelSet, Component, Fault, Region};
use env_double::EnvDouble;
use hv_interface::{check_atomic_u32, check_range, GuestMemory, OutOfRange};
use hvsim::sim::Simulator;
use hvsim::vmbus::{DeviceConfig, DeviceKind, RescindPoint, ServerConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use synic::Synic;
use vmbus::ids::{self as bus_ids, channels as bus_channels, children};
use vmbus::Vmbus;
use vmbus_ipc::bus::{self, ChannelState};
use vmbus_protocol::ProtocolVersion;

const ARENA: usize = 0x10_0000;
const SYNIC_PAGES: u64 = 0x1000;
const HYPERCALL_PAGES: u64 = 0x4000;
const MONITOR_PAGES: u64 = 0x8000;
const RINGS: u64 = 0x1_0000;
const RING_SIZE: usize = 32768;
/// The guests' clock at boot.
const BOOT_NS: u64 = 1_000_000;

/// Guest memory as the host sees it: the arena through a `Region`.
struct Arena(Region);

impl GuestMemory for Arena {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, buf.len() as u64)?;
        self.0.read(gpa as usize, buf).map_err(|_| OutOfRange {
            gpa,
            len: buf.len() as u64,
        })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, data.len() as u64)?;
        self.0.write(gpa as usize, data).map_err(|_| OutOfRange {
            gpa,
            len: data.len() as u64,
        })
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        Ok(self.word(gpa)?.load(Ordering::SeqCst))
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        self.word(gpa)?.store(value, Ordering::SeqCst);
        Ok(())
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self.word(gpa)?.fetch_or(bits, Ordering::SeqCst))
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self.word(gpa)?.fetch_and(bits, Ordering::SeqCst))
    }
}

impl Arena {
    fn word(&self, gpa: u64) -> Result<&std::sync::atomic::AtomicU32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        self.0
            .atomic_u32(gpa as usize)
            .map_err(|_| OutOfRange { gpa, len: 4 })
    }
}

/// A component's environment over regions carved from the arena.
fn env_over(regions: Vec<Region>) -> EnvDouble {
    let mut env = EnvDouble::new();
    for region in regions {
        env.add_region_over(region);
    }
    env.now_ns = BOOT_NS;
    env
}

type Sim = Simulator<Arena>;

struct Guest {
    /// Guest memory (GPA = offset).
    arena: Region,
    sim: Rc<RefCell<Sim>>,
    synic: Rc<RefCell<(Synic, EnvDouble)>>,
    bus: Vmbus,
    bus_env: EnvDouble,
    /// Channel events synic delivered to each VSC, by synic's channel.
    vsc_events: HashMap<u8, usize>,
    /// vmbus is dead: notifications to it wait.
    bus_dead: bool,
}

/// The four integration components with fixed instances.
fn ic_devices() -> Vec<DeviceConfig> {
    [
        DeviceKind::Heartbeat,
        DeviceKind::Shutdown,
        DeviceKind::TimeSync,
        DeviceKind::Kvp,
    ]
    .iter()
    .enumerate()
    .map(|(i, kind)| DeviceConfig::ic(*kind, uuid::Uuid::from_u128(0x1000 + i as u128)))
    .collect()
}

fn region(memory: &Region, offset: usize, len: usize, gpa: Option<u64>) -> Region {
    let region = memory.subregion(offset, len).expect("inside the arena");
    match gpa {
        Some(gpa) => region.with_guest_physical(gpa),
        None => region,
    }
}

impl Guest {
    fn boot(config: ServerConfig) -> Guest {
        let arena = Region::leaked(ARENA);
        let queue = Region::leaked(8192);
        let whole = region(&arena, 0, ARENA, None);
        let sim = Rc::new(RefCell::new(Simulator::new(Arena(whole), config)));
        let queue_region = region(&queue, 0, 8192, None);

        let mut synic_env = env_over(vec![
            region(&arena, SYNIC_PAGES as usize, 8192, Some(SYNIC_PAGES)),
            region(
                &arena,
                HYPERCALL_PAGES as usize,
                12288,
                Some(HYPERCALL_PAGES),
            ),
            queue_region,
            region(&arena, MONITOR_PAGES as usize, 12288, Some(MONITOR_PAGES)),
        ]);
        let host = sim.clone();
        synic_env.on_call(synic::channels::HYPERVISOR, move |message, reply| {
            use vmbus_ipc::hypervisor::{Hypervisor, Reply, Request};
            let request = component_api::decode_request::<Hypervisor>(message)
                .map_err(|refusal| CallError::Refused(refusal.0))?;
            let mut sim = host.borrow_mut();
            let answer = match request {
                Request::MsrRead { msr } => sim.msr_read(msr).map(Reply::Value),
                Request::MsrWrite { msr, value } => sim.msr_write(msr, value).map(|_| Reply::Done),
                Request::Hypercall {
                    control,
                    input,
                    output,
                } => sim.hypercall(control, input, output).map(Reply::Value),
                Request::EndOfInterrupt => Ok(Reply::Done),
            };
            let answer = answer.unwrap_or_else(|exception| match exception {
                hvsim::synic::Exception::GeneralProtection => Reply::GeneralProtection,
                hvsim::synic::Exception::InvalidOpcode => Reply::InvalidOpcode,
            });
            component_api::encode_reply::<Hypervisor>(reply, &answer)
                .map_err(|_| CallError::Encoding)
        });
        let synic_component = Synic::init(&mut synic_env);
        let synic = Rc::new(RefCell::new((synic_component, synic_env)));

        // Each driver's rings as the expansion gives them: out control
        // page, out data, in control page, in data (back to back here).
        let mut rings = Vec::new();
        for (i, driver) in bus_ids::drivers::DRIVERS.iter().enumerate().take(4) {
            let out = driver.ring_out_bytes;
            let sizes = [4096, out - 4096, 4096, RING_SIZE - out - 4096];
            let mut gpa = RINGS + (i * RING_SIZE) as u64;
            for size in sizes {
                rings.push(region(&arena, gpa as usize, size, Some(gpa)));
                gpa += size as u64;
            }
        }
        // As the description grants them: the queue mapped, the monitor
        // pages and the rings by address only (the bus manager maps none).
        let mut bus_env = env_over(vec![queue_region]);
        bus_env.add_region_address_over(region(
            &arena,
            MONITOR_PAGES as usize,
            12288,
            Some(MONITOR_PAGES),
        ));
        // vmbus's private session record, kept across its restarts.
        bus_env.add_region_over(Region::leaked(4096));
        for ring in rings {
            bus_env.add_region_address_over(ring);
        }
        let served = synic.clone();
        bus_env.on_call(bus_channels::SYNIC_CALL, move |message, reply| {
            let mut guard = served.borrow_mut();
            let (component, env) = &mut *guard;
            component
                .protected(env, synic::channels::VMBUS_CALL, message, reply)
                .map_err(|refusal| CallError::Refused(refusal.0))
        });
        let bus = Vmbus::init(&mut bus_env);
        let mut guest = Guest {
            arena,
            sim,
            synic,
            bus,
            bus_env,
            vsc_events: HashMap::new(),
            bus_dead: false,
        };
        guest.pump();
        guest
    }

    /// Time passes for the host, synic and vmbus alike.
    fn advance_clock(&mut self, ns: u64) {
        self.bus_env.now_ns += ns;
        self.synic.borrow_mut().1.now_ns += ns;
    }

    /// Run host, interrupts and notifications until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let now = self.bus_env.now_ns;
            self.sim.borrow_mut().step(now);
            while self.sim.borrow_mut().take_interrupt().is_some() {
                moved = true;
                let mut set = ChannelSet::EMPTY;
                set.insert(synic::channels::HYPERVISOR_INTERRUPT);
                let mut guard = self.synic.borrow_mut();
                let (component, env) = &mut *guard;
                component.notified(env, set);
            }
            let from_synic: Vec<Channel> = std::mem::take(&mut self.synic.borrow_mut().1.notified);
            for channel in from_synic {
                moved = true;
                if channel == synic::channels::VMBUS && self.bus_dead {
                    continue;
                } else if channel == synic::channels::VMBUS {
                    let mut set = ChannelSet::EMPTY;
                    set.insert(bus_channels::SYNIC);
                    self.bus.notified(&mut self.bus_env, set);
                } else {
                    *self.vsc_events.entry(channel.0).or_default() += 1;
                }
            }
            let from_bus: Vec<Channel> = std::mem::take(&mut self.bus_env.notified);
            for channel in from_bus {
                if channel == bus_channels::SYNIC {
                    moved = true;
                    let mut set = ChannelSet::EMPTY;
                    set.insert(synic::channels::VMBUS);
                    let mut guard = self.synic.borrow_mut();
                    let (component, env) = &mut *guard;
                    component.notified(env, set);
                }
                // `<vsc>_event` notifications: the test's VSCs ask instead.
            }
            let sim = self.sim.borrow();
            assert!(
                sim.vmbus.rejections.is_empty(),
                "the host rejected: {:?}\nguest console:\n{}",
                sim.vmbus.rejections,
                self.bus_env.console
            );
            if !moved && sim.host.synic.pending_interrupts() == 0 {
                return;
            }
        }
        panic!("the system never settled:\n{}", self.bus_env.console);
    }

    fn request(&mut self, channel: Channel, request: bus::Request) -> bus::Reply {
        let message = env_double::encode_request::<bus::Bus>(&request);
        let mut reply = [0u8; 1024];
        let used = self
            .bus
            .protected(&mut self.bus_env, channel, &message, &mut reply)
            .unwrap();
        let answer = env_double::decode_reply::<bus::Bus>(&reply[..used]);
        self.pump();
        answer
    }

    fn vsc_end(d: usize) -> Channel {
        [
            bus_channels::HEARTBEAT,
            bus_channels::SHUTDOWN,
            bus_channels::TIMESYNC,
            bus_channels::KVP,
        ][d]
    }

    fn info(&mut self, d: usize) -> bus::ChannelInfo {
        match self.request(Guest::vsc_end(d), bus::Request::Query { channel: 0 }) {
            bus::Reply::Channel(info) => info,
            other => panic!("{other:?}"),
        }
    }

    fn open(&mut self, d: usize) {
        let reply = self.request(
            Guest::vsc_end(d),
            bus::Request::Open {
                channel: 0,
                user_data: Default::default(),
            },
        );
        assert_eq!(reply, bus::Reply::Accepted, "{}", self.bus_env.console);
    }

    fn open_all(&mut self) {
        for d in 0..4 {
            self.open(d);
        }
        for d in 0..4 {
            assert_eq!(
                self.info(d).state,
                ChannelState::Open,
                "{}",
                self.bus_env.console
            );
        }
    }
}

#[test]
fn boots_negotiates_5_3_and_opens_every_integration_component() {
    let mut config = ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    };
    // A device nobody drives: offered, logged, left alone.
    config.devices.push(DeviceConfig {
        class: vmbus_protocol::guid::class::VSS,
        instance: uuid::Uuid::from_u128(0x2000),
        kind: DeviceKind::Generic,
        monitored: false,
        message_pipe: false,
    });
    let mut guest = Guest::boot(config);
    assert_eq!(
        guest.sim.borrow().vmbus.version(),
        Some(ProtocolVersion::V5_3)
    );
    for d in 0..4 {
        assert_eq!(guest.info(d).state, ChannelState::Offered);
    }
    guest.open_all();
    assert_eq!(guest.sim.borrow().vmbus.open_channels().len(), 4);
    for d in 0..4 {
        let report = bus::Request::ReportVersions {
            framework: (3, 0),
            message: (3, 0),
        };
        assert_eq!(
            guest.request(Guest::vsc_end(d), report),
            bus::Reply::Accepted
        );
    }
    let console = guest.bus_env.console.clone();
    // The four ICs, the VSS device nobody drives, and the keyboard's,
    // mouse's, storage's, network's and video's rows (no device).
    assert!(console.contains("VMBus 5.3, 10 devices"), "{console}");
    assert!(console.contains("no driver"), "{console}");
    let status = guest.synic.borrow().0.status();
    assert_eq!(status.bound_channels, 4);
    assert_eq!(status.signals_refused, 0);
}

#[test]
fn host_events_reach_the_owning_vsc_and_a_vsc_signals_only_its_own_channel() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    guest.vsc_events.clear();
    // The host signals the heartbeat channel (as after writing its in ring).
    let relid = guest.info(0).relid;
    assert!(guest
        .sim
        .borrow_mut()
        .with_channel(relid, |_, _| (), |_| true)
        .is_some());
    guest.pump();
    assert!(
        guest
            .vsc_events
            .get(&synic::channels::HEARTBEAT.0)
            .copied()
            .unwrap_or(0)
            >= 1,
        "{:?}",
        guest.vsc_events
    );
    assert_eq!(guest.vsc_events.get(&synic::channels::KVP.0), None);
    // Heartbeat signals its own connection: the hypercall succeeds.
    let heartbeat = guest.info(0).connection_id;
    let kvp = guest.info(3).connection_id;
    let signal = |guest: &mut Guest, caller: Channel, connection_id: u32| {
        let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(
            &vmbus_ipc::synic::Request::SignalHost { connection_id },
        );
        let mut reply = [0u8; 64];
        let mut guard = guest.synic.borrow_mut();
        let (component, env) = &mut *guard;
        component
            .protected(env, caller, &message, &mut reply)
            .map(|used| env_double::decode_reply::<vmbus_ipc::synic::Synic>(&reply[..used]))
    };
    assert_eq!(
        signal(&mut guest, synic::channels::HEARTBEAT_CALL, heartbeat),
        Ok(vmbus_ipc::synic::Reply::Done)
    );
    assert_eq!(
        signal(&mut guest, synic::channels::HEARTBEAT_CALL, kvp),
        Err(component_api::Refusal::DENIED)
    );
}

#[test]
fn an_older_host_gets_4_0_and_an_oldest_one_2_4() {
    for (max, expected_log) in [
        (ProtocolVersion::V4_0, "older host"),
        (ProtocolVersion::V2_4, "refused"),
    ] {
        let config = ServerConfig {
            max_version: max,
            devices: ic_devices(),
            ..ServerConfig::default()
        };
        let mut guest = Guest::boot(config);
        assert_eq!(
            guest.sim.borrow().vmbus.version(),
            Some(max),
            "{}",
            guest.bus_env.console
        );
        assert!(
            guest.bus_env.console.contains(expected_log),
            "{}",
            guest.bus_env.console
        );
        guest.open_all();
        assert_eq!(guest.info(0).vmbus_version, max.0);
    }
}

#[test]
fn rescind_and_re_offer() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    let old = guest.info(3);
    assert!(guest.sim.borrow_mut().rescind(old.relid));
    guest.pump();
    assert_eq!(guest.info(3).state, ChannelState::Rescinded);
    // The host forgot the relid (RelIdReleased accepted) and its GPADLs.
    assert_eq!(guest.sim.borrow().vmbus.channel_state(old.relid), None);
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 3);
    let device = ic_devices().remove(3);
    let relid = guest.sim.borrow_mut().add_device(device);
    guest.pump();
    let info = guest.info(3);
    assert_eq!((info.state, info.relid), (ChannelState::Offered, relid));
    assert_ne!(info.generation, old.generation);
    guest.open(3);
    assert_eq!(guest.info(3).state, ChannelState::Open);
    assert_eq!(guest.sim.borrow().vmbus.open_channels().len(), 4);
}

#[test]
fn rescind_at_every_step_is_recovered_without_a_host_complaint() {
    for point in [
        RescindPoint::AfterOffer,
        RescindPoint::OnGpadlHeader,
        RescindPoint::AfterGpadlCreated,
        RescindPoint::OnOpen,
        RescindPoint::AfterOpenResult,
        RescindPoint::OnClose,
    ] {
        let devices = ic_devices();
        let kvp_instance = devices[3].instance;
        let mut guest = Guest::boot(ServerConfig {
            devices,
            ..ServerConfig::default()
        });
        guest
            .sim
            .borrow_mut()
            .vmbus
            .faults
            .rescind_at
            .push((kvp_instance, point));
        // AfterOffer needs the fault before the offers go out: re-offer.
        if point == RescindPoint::AfterOffer {
            let relid = guest.info(3).relid;
            guest.sim.borrow_mut().rescind(relid);
            guest.pump();
            let mut device = ic_devices().remove(3);
            device.instance = kvp_instance;
            guest.sim.borrow_mut().add_device(device);
            guest.pump();
        } else {
            guest.open(3);
            if point == RescindPoint::OnClose {
                assert_eq!(guest.info(3).state, ChannelState::Open);
                assert_eq!(
                    guest.request(Guest::vsc_end(3), bus::Request::Close { channel: 0 }),
                    bus::Reply::Accepted
                );
            }
        }
        let info = guest.info(3);
        assert_eq!(
            info.state,
            ChannelState::Rescinded,
            "{point:?}:\n{}",
            guest.bus_env.console
        );
        let sim = guest.sim.borrow();
        assert_eq!(sim.vmbus.relid_of(kvp_instance), None, "{point:?}");
        assert_eq!(sim.vmbus.gpadl_count(), 0, "{point:?}: GPADLs left");
        drop(sim);
        assert!(
            guest.synic.borrow().0.status().bound_channels == 0,
            "{point:?}"
        );
    }
}

#[test]
fn a_faulted_vsc_is_recovered_and_reopens() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    guest
        .bus
        .fault(&mut guest.bus_env, children::KVP, Fault::Panic);
    guest.pump();
    assert_eq!(guest.bus_env.restarted, [children::KVP]);
    assert_eq!(guest.info(3).state, ChannelState::Offered);
    assert_eq!(guest.sim.borrow().vmbus.open_channels().len(), 3);
    assert_eq!(
        guest.sim.borrow().vmbus.gpadl_count(),
        3,
        "kvp's GPADL torn down"
    );
    guest.advance_clock(2_000_000);
    guest.open(3);
    assert_eq!(guest.info(3).state, ChannelState::Open);
    assert_eq!(guest.sim.borrow().vmbus.open_channels().len(), 4);
    assert!(
        guest
            .bus_env
            .console
            .contains("open again 2 ms after its fault"),
        "{}",
        guest.bus_env.console
    );
}

#[test]
fn unload_closes_everything_and_powers_off() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    assert_eq!(
        guest.request(
            bus_channels::CLIENT,
            bus::Request::Unload {
                power_off_code: Some(0)
            }
        ),
        bus::Reply::Accepted
    );
    assert_eq!(
        guest.bus_env.powered_off,
        Some(0),
        "{}",
        guest.bus_env.console
    );
    let sim = guest.sim.borrow();
    assert_eq!(sim.vmbus.version(), None, "the host saw Unload");
    assert_eq!(sim.vmbus.gpadl_count(), 0);
}

impl Guest {
    /// synic dies and the platform starts it again (memory reset: a new
    /// component over the same regions and the same hypervisor).
    fn restart_synic(&mut self) {
        let mut guard = self.synic.borrow_mut();
        let (component, env) = &mut *guard;
        env.notified.clear();
        *component = Synic::init(env);
    }

    /// vmbus dies and the platform starts it again.
    fn restart_vmbus(&mut self) {
        self.bus_env.restarted.clear();
        self.bus_env.console.clear();
        self.bus = Vmbus::init(&mut self.bus_env);
        self.bus_dead = false;
        self.pump();
    }

    fn report_versions(&mut self) {
        for d in 0..4 {
            let report = bus::Request::ReportVersions {
                framework: (3, 0),
                message: (3, 0),
            };
            self.request(Guest::vsc_end(d), report);
        }
    }
}

#[test]
fn a_restarted_vmbus_unloads_the_old_session_then_every_driver_reopens() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    let before: Vec<bus::ChannelInfo> = (0..4).map(|d| guest.info(d)).collect();
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);

    guest.restart_vmbus();
    let console = guest.bus_env.console.clone();
    assert!(
        console.contains("unloading the previous session (VMBus 5.3"),
        "{console}"
    );
    assert!(console.contains("previous session ended"), "{console}");
    // Every driver is restarted (each zeroes its rings before it opens).
    let mut restarted = guest.bus_env.restarted.clone();
    restarted.sort_by_key(|c| c.0);
    assert_eq!(
        restarted,
        [
            children::HEARTBEAT,
            children::SHUTDOWN,
            children::TIMESYNC,
            children::KVP,
            children::KEYBOARD,
            children::MOUSE,
            children::STORAGE,
            children::NETWORK,
            children::VIDEO
        ]
    );
    // The host released everything of the old session: no GPADL leaked,
    // and synic routes nothing of it any more.
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 0);
    assert_eq!(guest.synic.borrow().0.status().bound_channels, 0);
    assert_eq!(
        guest.sim.borrow().vmbus.version(),
        Some(ProtocolVersion::V5_3)
    );
    for (d, old) in before.iter().enumerate() {
        let info = guest.info(d);
        assert_eq!(
            info.state,
            ChannelState::Offered,
            "{}",
            guest.bus_env.console
        );
        assert_ne!(info.generation, old.generation, "a new generation");
    }
    guest.open_all();
    guest.report_versions();
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);
    assert_eq!(guest.sim.borrow().vmbus.open_channels().len(), 4);
    assert_eq!(guest.synic.borrow().0.status().bound_channels, 4);
    assert!(
        guest.bus_env.console.contains("start 2, synic restarts 0"),
        "{}",
        guest.bus_env.console
    );

    // A second restart in a row does the same (the record follows).
    guest.restart_vmbus();
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 0);
    guest.open_all();
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);
}

#[test]
fn a_vmbus_restarted_before_the_hosts_answer_to_its_contact_still_unloads_it() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    // A restarted vmbus sends Unload and dies before it reads the answer;
    // the next one finds the answer queued, contacts the host and dies
    // before it reads that answer; the next one unloads that session.
    for dying in ["Unload", "InitiateContact"] {
        guest.bus = Vmbus::init(&mut guest.bus_env);
        guest.bus_dead = true;
        guest.pump();
        assert!(
            guest.sim.borrow().vmbus.rejections.is_empty(),
            "{dying}: {}",
            guest.bus_env.console
        );
    }
    guest.restart_vmbus();
    assert!(
        guest
            .bus_env
            .console
            .contains("previous incarnation sent InitiateContact 5.3"),
        "{}",
        guest.bus_env.console
    );
    assert!(
        guest.bus_env.console.contains("previous session ended"),
        "{}",
        guest.bus_env.console
    );
    guest.open_all();
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);
}

#[test]
fn a_restarted_synic_loses_no_host_message_or_event_and_vmbus_restores_its_table() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    guest.vsc_events.clear();
    let heartbeat = guest.info(0);
    let kvp = guest.info(3);
    // While synic is down: the host signals heartbeat's channel and
    // rescinds KVP (a message in the slot, an interrupt pending).
    assert!(guest
        .sim
        .borrow_mut()
        .with_channel(heartbeat.relid, |_, _| (), |_| true)
        .is_some());
    assert!(guest.sim.borrow_mut().rescind(kvp.relid));
    guest.restart_synic();
    guest.pump();
    let status = guest.synic.borrow().0.status();
    assert!(status.restarted);
    assert_eq!(status.restores, 1);
    assert!(
        guest
            .bus_env
            .console
            .contains("synic restarted: relid table restored (4 bound, 0 opening)"),
        "{}",
        guest.bus_env.console
    );
    // The event reached heartbeat; the rescind reached vmbus.
    assert!(
        guest
            .vsc_events
            .get(&synic::channels::HEARTBEAT.0)
            .copied()
            .unwrap_or(0)
            >= 1,
        "{:?}",
        guest.vsc_events
    );
    assert_eq!(guest.info(3).state, ChannelState::Rescinded);
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 3);
    assert_eq!(guest.synic.borrow().0.status().bound_channels, 3);
    // The rest keep serving: heartbeat may signal its connection.
    let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(
        &vmbus_ipc::synic::Request::SignalHost {
            connection_id: heartbeat.connection_id,
        },
    );
    let mut reply = [0u8; 64];
    {
        let mut guard = guest.synic.borrow_mut();
        let (component, env) = &mut *guard;
        let used = component
            .protected(env, synic::channels::HEARTBEAT_CALL, &message, &mut reply)
            .unwrap();
        assert_eq!(
            env_double::decode_reply::<vmbus_ipc::synic::Synic>(&reply[..used]),
            vmbus_ipc::synic::Reply::Done
        );
    }
    // And a re-offered KVP opens through the new synic.
    guest.sim.borrow_mut().add_device(ic_devices().remove(3));
    guest.pump();
    guest.open(3);
    assert_eq!(guest.info(3).state, ChannelState::Open);
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);
}

#[test]
fn a_host_renegotiating_thousands_of_times_gets_a_bounded_console() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.open_all();
    guest.report_versions();
    let lines_at_start = guest.bus_env.console.lines().count();
    const ROUNDS: usize = 2000;
    for round in 0..ROUNDS {
        // Rescind KVP, offer it again and let it open: each round used to
        // print the whole status view twice and four lines besides.
        let relid = guest.info(3).relid;
        assert!(guest.sim.borrow_mut().rescind(relid), "round {round}");
        guest.pump();
        guest.sim.borrow_mut().add_device(ic_devices().remove(3));
        guest.pump();
        guest.open(3);
        guest.advance_clock(1_000_000);
    }
    assert_eq!(guest.info(3).state, ChannelState::Open);
    // The host holds exactly the four open channels' GPADLs.
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 4);
    let storm_lines = guest.bus_env.console.lines().count() - lines_at_start;
    // 2 s of storm: the burst (100), 5 lines a second, the full views of
    // at most 13 lines (title, header, a row for each of system.toml's
    // nine drivers, the synic and vmbus counter lines), one notice.
    let full_views = vmbus::status::VIEWS_IN_FULL as usize;
    assert!(
        storm_lines <= 100 + 2 * 5 + full_views * 13 + 1,
        "{storm_lines} lines for {ROUNDS} renegotiations"
    );
    // Later, one change prints the view again with what was held back.
    guest.advance_clock(11_000_000_000);
    let relid = guest.info(3).relid;
    guest.sim.borrow_mut().rescind(relid);
    guest.pump();
    let console = guest.bus_env.console.clone();
    let last = console
        .lines()
        .rev()
        .find(|line| line.contains("held back:"))
        .expect("a status view after the interval");
    let numbers: Vec<u64> = last
        .rsplit("held back: ")
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers[0] > 1000 && numbers[1] > 1000,
        "views and lines held back: {last}"
    );
}

/// KVP's data buffers in the arena: 512 KiB and 128 KiB, after the rings.
const BUFFERS: [(u64, usize); 2] = [(0x4_0000, 0x8_0000), (0xC_0000, 0x2_0000)];

impl Guest {
    /// Give KVP the two data buffers (by address only, as the
    /// description grants them).
    fn with_kvp_buffers(&mut self) {
        let arena = self.sim.borrow().host.memory.0;
        let names: Vec<component_api::RegionName> = BUFFERS
            .iter()
            .map(|(gpa, len)| {
                self.bus_env.add_region_address_over(region(
                    &arena,
                    *gpa as usize,
                    *len,
                    Some(*gpa),
                ))
            })
            .collect();
        self.bus.give_buffers_for_tests(3, Vec::leak(names));
    }

    fn buffer(&mut self, buffer: u8) -> bus::BufferState {
        match self.request(Guest::vsc_end(3), bus::Request::Buffer { buffer }) {
            bus::Reply::Buffer(info) => info.state,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn data_buffers_are_shared_up_to_the_hosts_limit_and_never_leaked() {
    // The rings (4 x 32 KiB) and the first buffer fit; the second does not.
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        gpadl_memory_limit: 4 * RING_SIZE as u64 + BUFFERS[0].1 as u64 + 0x1_0000,
        ..ServerConfig::default()
    });
    guest.with_kvp_buffers();
    guest.open_all();
    let kvp = Guest::vsc_end(3);
    assert_eq!(
        guest.request(kvp, bus::Request::CreateGpadl { buffer: 0 }),
        bus::Reply::Accepted
    );
    let bus::BufferState::Created { gpadl_id } = guest.buffer(0) else {
        panic!("{:?}\n{}", guest.buffer(0), guest.bus_env.console);
    };
    let created = guest.sim.borrow().vmbus.gpadl_bytes();
    assert_eq!(created, 4 * RING_SIZE as u64 + BUFFERS[0].1 as u64);
    assert_eq!(
        guest.request(kvp, bus::Request::CreateGpadl { buffer: 1 }),
        bus::Reply::Accepted
    );
    assert_eq!(
        guest.buffer(1),
        bus::BufferState::Failed {
            status: hvsim::vmbus::STATUS_QUOTA_EXCEEDED
        }
    );
    // The VSC gives the first back and shares the second instead.
    assert_eq!(
        guest.request(kvp, bus::Request::TeardownGpadl { buffer: 0 }),
        bus::Reply::Accepted
    );
    assert_eq!(guest.buffer(0), bus::BufferState::Absent);
    assert_eq!(
        guest.request(kvp, bus::Request::CreateGpadl { buffer: 1 }),
        bus::Reply::Accepted
    );
    assert!(
        matches!(guest.buffer(1), bus::BufferState::Created { gpadl_id: id } if id != gpadl_id)
    );
    // A fault: every GPADL of the channel goes before the restart.
    guest
        .bus
        .fault(&mut guest.bus_env, children::KVP, Fault::Panic);
    guest.pump();
    assert_eq!(guest.bus_env.restarted, [children::KVP]);
    assert_eq!(
        guest.sim.borrow().vmbus.gpadl_bytes(),
        3 * RING_SIZE as u64,
        "only the other rings are still shared"
    );
    guest.open(3);
    assert_eq!(guest.buffer(1), bus::BufferState::Absent);
    assert_eq!(
        guest.request(kvp, bus::Request::CreateGpadl { buffer: 1 }),
        bus::Reply::Accepted
    );
    assert!(matches!(guest.buffer(1), bus::BufferState::Created { .. }));
    // Unload: nothing is left for the host to find.
    assert_eq!(
        guest.request(
            bus_channels::CLIENT,
            bus::Request::Unload {
                power_off_code: Some(0)
            }
        ),
        bus::Reply::Accepted
    );
    assert_eq!(guest.bus_env.powered_off, Some(0));
    let sim = guest.sim.borrow();
    assert_eq!(
        sim.vmbus.stats.rule_violations, 0,
        "{:?}",
        sim.vmbus.violations
    );
    assert_eq!(sim.vmbus.stats.gpadls_over_limit, 1);
    assert_eq!(sim.vmbus.gpadl_count(), 0);
}

#[test]
fn a_retarget_moves_the_channel_at_the_host_and_a_reopen_keeps_it() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        vp_count: 2,
        ..ServerConfig::default()
    });
    guest.open_all();
    let kvp = Guest::vsc_end(3);
    let relid = guest.info(3).relid;
    assert_eq!(
        guest.request(kvp, bus::Request::Retarget { target_vp: 1 }),
        bus::Reply::Accepted
    );
    assert_eq!(
        guest.request(kvp, bus::Request::Interrupt),
        bus::Reply::Interrupt(bus::InterruptInfo {
            target_vp: 1,
            retargeting: None,
            refused: None
        })
    );
    assert_eq!(guest.sim.borrow().vmbus.target_vp(relid), Some(1));
    // VP 2 does not exist: the host says so, nothing moves.
    guest.request(kvp, bus::Request::Retarget { target_vp: 2 });
    assert_eq!(
        guest.request(kvp, bus::Request::Interrupt),
        bus::Reply::Interrupt(bus::InterruptInfo {
            target_vp: 1,
            retargeting: None,
            refused: Some(hvsim::vmbus::STATUS_INVALID_PARAMETER)
        })
    );
    assert_eq!(
        guest.request(kvp, bus::Request::Close { channel: 0 }),
        bus::Reply::Accepted
    );
    guest.open(3);
    assert_eq!(guest.info(3).state, ChannelState::Open);
    assert_eq!(guest.sim.borrow().vmbus.target_vp(relid), Some(1));
    assert_eq!(guest.bus.counters().rejected, 0);
}

#[test]
fn a_monitored_channel_is_signalled_through_the_monitor_page_the_host_scans() {
    let mut devices = ic_devices();
    devices[3].monitored = true;
    let mut guest = Guest::boot(ServerConfig {
        devices,
        ..ServerConfig::default()
    });
    guest.open_all();
    let kvp = guest.info(3).connection_id;
    let heartbeat = guest.info(0).connection_id;
    let signal = |guest: &mut Guest, caller: Channel, connection_id: u32| {
        let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(
            &vmbus_ipc::synic::Request::SignalHost { connection_id },
        );
        let mut reply = [0u8; 64];
        let mut guard = guest.synic.borrow_mut();
        let (component, env) = &mut *guard;
        component
            .protected(env, caller, &message, &mut reply)
            .map(|used| env_double::decode_reply::<vmbus_ipc::synic::Synic>(&reply[..used]))
    };
    assert_eq!(
        signal(&mut guest, synic::channels::KVP_CALL, kvp),
        Ok(vmbus_ipc::synic::Reply::Done)
    );
    assert_eq!(
        signal(&mut guest, synic::channels::HEARTBEAT_CALL, heartbeat),
        Ok(vmbus_ipc::synic::Reply::Done)
    );
    guest.pump();
    let sim = guest.sim.borrow();
    assert_eq!(sim.vmbus.stats.monitor_signals, 1, "kvp's, by the page");
    assert_eq!(sim.vmbus.stats.hypercall_signals_on_monitored, 0);
    assert_eq!(
        sim.vmbus.stats.rule_violations, 0,
        "{:?}",
        sim.vmbus.violations
    );
    let synic_status = guest.synic.borrow().0.status();
    assert_eq!(synic_status.monitor_signals, 1);
    assert_eq!(synic_status.signals_sent, 2, "heartbeat's by hypercall");
}

/// Where KVP's sub-channel rings go in the arena (after the primaries').
const SUB_RINGS: u64 = 0x8_0000;

impl Guest {
    /// Give KVP `count` sub-channels, each with rings of its primary's
    /// sizes from `SUB_RINGS`, granted to vmbus by address only (as a
    /// description with `sub_channels = count` would).
    fn give_kvp_sub_channels(&mut self, count: usize) {
        let kvp = &bus_ids::drivers::DRIVERS[3];
        let out = kvp.ring_out_bytes;
        let sizes = [4096, out - 4096, 4096, RING_SIZE - out - 4096];
        let mut all = Vec::new();
        for k in 0..count {
            let mut gpa = SUB_RINGS + (k * RING_SIZE) as u64;
            let mut names = Vec::new();
            for size in sizes {
                let ring = region(&self.arena, gpa as usize, size, Some(gpa));
                names.push(self.bus_env.add_region_address_over(ring));
                gpa += size as u64;
            }
            all.push([names[0], names[1], names[2], names[3]]);
        }
        self.bus.give_sub_rings_for_tests(3, Vec::leak(all));
    }

    fn kvp_channel(&mut self, channel: u8) -> bus::ChannelInfo {
        match self.request(Guest::vsc_end(3), bus::Request::Query { channel }) {
            bus::Reply::Channel(info) => info,
            other => panic!("{other:?}"),
        }
    }

    /// What KVP reads from synic: which of its channels fired.
    fn kvp_pending(&mut self) -> u16 {
        let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(
            &vmbus_ipc::synic::Request::Pending,
        );
        let mut reply = [0u8; 256];
        let mut guard = self.synic.borrow_mut();
        let (component, env) = &mut *guard;
        let used = component
            .protected(env, synic::channels::KVP_CALL, &message, &mut reply)
            .unwrap();
        match env_double::decode_reply::<vmbus_ipc::synic::Synic>(&reply[..used]) {
            vmbus_ipc::synic::Reply::Pending(bits) => bits,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn sub_channels_open_with_their_own_gpadls_and_go_with_their_primary() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.give_kvp_sub_channels(2);
    guest.open_all();
    let kvp = guest.info(3).relid;
    let gpadls_of_primaries = guest.sim.borrow().vmbus.gpadl_count();
    // The driver asked its device for two sub-channels (in the device's
    // own protocol); the host offers them.
    let subs = guest.sim.borrow_mut().offer_sub_channels(kvp, 2);
    assert_eq!(subs.len(), 2);
    guest.pump();
    for (k, relid) in [(1, subs[0]), (2, subs[1])] {
        let info = guest.kvp_channel(k);
        assert_eq!((info.state, info.relid), (ChannelState::Offered, relid));
        let reply = guest.request(
            Guest::vsc_end(3),
            bus::Request::Open {
                channel: k,
                user_data: Default::default(),
            },
        );
        assert_eq!(reply, bus::Reply::Accepted);
        assert_eq!(
            guest.kvp_channel(k).state,
            ChannelState::Open,
            "{}",
            guest.bus_env.console
        );
    }
    {
        let sim = guest.sim.borrow();
        let open = sim.vmbus.open_channels();
        assert!(open.contains(&subs[0]) && open.contains(&subs[1]) && open.contains(&kvp));
        assert_eq!(
            sim.vmbus.gpadl_count(),
            gpadls_of_primaries + 2,
            "a ring GPADL of its own each"
        );
    }
    // The host signals sub-channel 2: KVP is notified and reads which.
    assert_eq!(guest.kvp_pending(), 0);
    let events_before = guest.vsc_events.get(&synic::channels::KVP.0).copied();
    // (The test's VSC never reads its rings, so the host's packet lands in
    // a non-empty ring: the host signals regardless.)
    let sent = guest.sim.borrow_mut().with_channel(
        subs[1],
        |endpoint, memory| endpoint.send_completion(memory, 7, &[]),
        |_| true,
    );
    assert!(sent.is_some());
    guest.pump();
    assert!(guest.vsc_events.get(&synic::channels::KVP.0).copied() > events_before);
    assert_eq!(guest.kvp_pending(), 0b100, "sub-channel 2 only");
    // A rescind of one sub-channel while its primary runs.
    assert!(guest.sim.borrow_mut().rescind(subs[0]));
    guest.pump();
    assert_eq!(guest.sim.borrow().vmbus.channel_state(subs[0]), None);
    assert_eq!(guest.kvp_channel(1).state, ChannelState::NotOffered);
    assert_eq!(guest.info(3).state, ChannelState::Open);
    assert_eq!(guest.kvp_channel(2).state, ChannelState::Open);
    assert_eq!(
        guest.sim.borrow().vmbus.gpadl_count(),
        gpadls_of_primaries + 1
    );
    // Offers vmbus refuses: for no primary, and beyond KVP's two.
    let orphan = guest.sim.borrow_mut().offer_sub_channel(
        DeviceConfig::ic(DeviceKind::Kvp, uuid::Uuid::from_u128(0x9999)),
        1,
    );
    let kvp_device = guest.sim.borrow().vmbus.device(kvp).cloned().unwrap();
    let beyond = guest.sim.borrow_mut().offer_sub_channel(kvp_device, 3);
    guest.pump();
    assert_eq!(guest.bus.counters().sub_channel_offers_refused, 2);
    // The primary's rescind takes its remaining sub-channel first.
    assert!(guest.sim.borrow_mut().rescind(kvp));
    guest.pump();
    for relid in [subs[1], kvp, beyond] {
        assert_eq!(
            guest.sim.borrow().vmbus.channel_state(relid),
            None,
            "relid {relid}: {}",
            guest.bus_env.console
        );
    }
    assert_eq!(guest.kvp_channel(2).state, ChannelState::NotOffered);
    assert!(guest.sim.borrow_mut().rescind(orphan));
    guest.pump();
    assert_eq!(guest.sim.borrow().vmbus.channel_state(orphan), None);
    assert_eq!(guest.bus.counters().rejected, 0);
    let sim = guest.sim.borrow();
    assert_eq!(sim.vmbus.gpadl_count(), gpadls_of_primaries - 1);
    assert_eq!(
        sim.vmbus.stats.rule_violations, 0,
        "{:?}",
        sim.vmbus.violations
    );
}

#[test]
fn unload_with_sub_channels_open_leaks_no_gpadl() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.give_kvp_sub_channels(2);
    guest.open_all();
    let kvp = guest.info(3).relid;
    let subs = guest.sim.borrow_mut().offer_sub_channels(kvp, 2);
    guest.pump();
    for k in 1..=2 {
        let reply = guest.request(
            Guest::vsc_end(3),
            bus::Request::Open {
                channel: k,
                user_data: Default::default(),
            },
        );
        assert_eq!(reply, bus::Reply::Accepted);
    }
    assert!(guest.sim.borrow().vmbus.open_channels().contains(&subs[1]));
    assert_eq!(
        guest.request(
            bus_channels::CLIENT,
            bus::Request::Unload {
                power_off_code: Some(0)
            }
        ),
        bus::Reply::Accepted
    );
    assert_eq!(
        guest.bus_env.powered_off,
        Some(0),
        "{}",
        guest.bus_env.console
    );
    let sim = guest.sim.borrow();
    assert_eq!(sim.vmbus.version(), None, "the host saw Unload");
    assert_eq!(sim.vmbus.gpadl_count(), 0);
    assert_eq!(
        sim.vmbus.stats.rule_violations, 0,
        "{:?}",
        sim.vmbus.violations
    );
}

impl Guest {
    /// KVP with `count` sub-channels offered by the host and open.
    fn kvp_with_open_sub_channels(&mut self, count: u16) -> Vec<u32> {
        let kvp = self.info(3).relid;
        let subs = self.sim.borrow_mut().offer_sub_channels(kvp, count);
        self.pump();
        for k in 1..=count as u8 {
            let open = bus::Request::Open {
                channel: k,
                user_data: Default::default(),
            };
            assert_eq!(self.request(Guest::vsc_end(3), open), bus::Reply::Accepted);
            assert_eq!(self.kvp_channel(k).state, ChannelState::Open);
        }
        subs
    }
}

#[test]
fn a_restarted_synic_gets_the_sub_channel_bindings_back_with_their_index() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.give_kvp_sub_channels(2);
    guest.open_all();
    let subs = guest.kvp_with_open_sub_channels(2);
    guest.restart_synic();
    guest.pump();
    assert!(
        guest
            .bus_env
            .console
            .contains("synic restarted: relid table restored (6 bound, 0 opening)"),
        "{}",
        guest.bus_env.console
    );
    guest.kvp_pending(); // whatever the restore's looks left
    let sent = guest.sim.borrow_mut().with_channel(
        subs[0],
        |endpoint, memory| endpoint.send_completion(memory, 9, &[]),
        |_| true,
    );
    assert!(sent.is_some());
    guest.pump();
    assert_eq!(guest.kvp_pending(), 0b10, "sub-channel 1 only");
    assert_eq!(guest.sim.borrow().vmbus.stats.rule_violations, 0);
}

#[test]
fn a_restarted_vmbus_releases_the_sub_channels_with_the_old_session() {
    let mut guest = Guest::boot(ServerConfig {
        devices: ic_devices(),
        ..ServerConfig::default()
    });
    guest.give_kvp_sub_channels(2);
    guest.open_all();
    let subs = guest.kvp_with_open_sub_channels(2);
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 6);
    guest.restart_vmbus();
    // Its Unload of the old session released everything on the host, the
    // sub-channels and their GPADLs too (the crashed incarnation could
    // not tear them down: the host counts them held at Unload).
    {
        let sim = guest.sim.borrow();
        assert_eq!(sim.vmbus.gpadl_count(), 0);
        for relid in &subs {
            assert_eq!(sim.vmbus.channel_state(*relid), None);
        }
    }
    assert_eq!(guest.synic.borrow().0.status().bound_channels, 0);
    // The new incarnation's wiring comes from its description again.
    guest.give_kvp_sub_channels(2);
    guest.open_all();
    assert_eq!(guest.kvp_channel(1).state, ChannelState::NotOffered);
    assert_eq!(
        guest.sim.borrow().vmbus.gpadl_count(),
        4,
        "the primaries' rings only"
    );
    // The driver asks its device again; the new sub-channels open.
    guest.kvp_with_open_sub_channels(2);
    assert_eq!(guest.sim.borrow().vmbus.gpadl_count(), 6);
}
