//! The `hvsim` binary, hosted: the host end of the hosted hypervisor transport
//! (`docs/hypervisor-transport.md`) with the simulated VMBus host behind
//! it. Listens on a Unix socket, accepts one guest, maps the guest memory
//! file it names and serves it until it leaves. Operator commands are read
//! from stdin, one per line (see `docs/hvsim.md`). With `--events` the
//! host also reports, on stderr, what the guest did that a test or an
//! operator waits for (heartbeats answered, time samples answered, KVP
//! answers, shutdown answers, channels opening and closing, the version
//! and Unload); `--time-interval-ms` sends a time sample periodically, as
//! Hyper-V does. `--script FILE` runs a scenario (`hvsim::scenario`, the
//! same TOML file the seL4 image's host embeds) and prints what it does,
//! as the seL4 host prints it on the console. `--disk PATH[,ro]`
//! (repeatable) gives the first storage device a file as its next LUN
//! (LUN 0, 1, ...; a storage device is added if none is configured);
//! `--storage-version` and `--storage-sub-channels` set up its protocol.
//! `--net none | tap:IFNAME | user:127.0.0.1:PORT[=GUESTPORT],...` puts the
//! simulated NIC on a network ([`hvsim::hosted_net`], docs/network.md
//! "Connecting").

use hvsim::channel::network::NetFault;
use hvsim::channel::storage::StorageFault;
use hvsim::channel::synthvid::VideoFault;
use hvsim::channel::PacketFault;
use hvsim::file_disk::FileDisk;
use hvsim::hosted_net::NetSpec;
use hvsim::net::{BoxedNetBackend, NetBackend};
use hvsim::scenario::parse_device as device_name;
use hvsim::script::{Script, ScriptDevice, ScriptRunner};
use hvsim::sim::Simulator;
use hvsim::transport::SessionEnd;
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmbus_protocol::ProtocolVersion;

const USAGE: &str =
    "usage: hvsim --socket PATH [--max-version MAJOR.MINOR] [--min-version MAJOR.MINOR] \
[--msg-conn-id N] [--gpadl-limit BYTES] [--devices heartbeat,shutdown,timesync,kvp,CLASS-GUID] \
[--heartbeat-interval-ms N] [--time-interval-ms N] [--events] [--script FILE] [--disk PATH[,ro]]... \
[--storage-version MAJOR.MINOR] [--storage-sub-channels N] [--ring-poll-us N] \
[--net none | tap:IFNAME | user:127.0.0.1:PORT[=GUESTPORT],...]";

fn fail(message: &str) -> ! {
    eprintln!("hvsim: {message}\n{USAGE}");
    std::process::exit(2);
}

fn parse_version(text: &str) -> ProtocolVersion {
    let (major, minor) = text.split_once('.').unwrap_or_else(|| fail("bad version"));
    let major = major.parse().unwrap_or_else(|_| fail("bad version"));
    let minor = minor.parse().unwrap_or_else(|_| fail("bad version"));
    ProtocolVersion::new(major, minor)
}

fn device_kind(name: &str) -> Option<DeviceKind> {
    Some(match name {
        "heartbeat" => DeviceKind::Heartbeat,
        "shutdown" => DeviceKind::Shutdown,
        "timesync" => DeviceKind::TimeSync,
        "kvp" => DeviceKind::Kvp,
        "keyboard" => DeviceKind::Keyboard,
        "mouse" => DeviceKind::Mouse,
        "video" => DeviceKind::Video,
        _ => return None,
    })
}

/// An IC by name, or a device of any other class by its GUID (a generic
/// device: the host only completes its packets; a guest without a driver
/// for the class leaves it alone). `index` numbers the instance GUIDs, which
/// are fixed so runs are reproducible.
fn parse_device(name: &str, index: u128) -> Option<DeviceConfig> {
    device_name(name).map(|name| ScriptDevice::from_name(name).config(index))
}

fn device(name: &str, index: u128) -> DeviceConfig {
    parse_device(name, index).unwrap_or_else(|| fail(&format!("unknown device {name}")))
}

/// What the binary does besides serving the guest.
#[derive(Default)]
struct Options {
    /// Report the guest's IC answers and bus changes on stderr.
    events: bool,
    /// Send a time sample this often (0: only on the `time` command).
    time_interval_ns: u64,
    /// The heartbeat period of newly opened heartbeat channels (0: the
    /// simulator's default, 1 s).
    heartbeat_interval_ns: u64,
    /// The scenario (`--script FILE`).
    script: Option<Script>,
    /// `--disk` files, opened, for LUN 0, 1, ... of the first storage device.
    disks: Vec<(String, FileDisk)>,
    /// `--net`: the network the NIC is on.
    net: Option<NetSpec>,
}

/// The scenario in `path`, or exit naming the file, line and column of
/// what is wrong.
fn read_scenario(path: &str) -> Script {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")));
    let scenario = hvsim::scenario::parse_file(path, &text).unwrap_or_else(|e| fail(&e));
    Script::from_scenario(&scenario).unwrap_or_else(|e| fail(&format!("{path}: {e:?}")))
}

fn parse_args() -> (PathBuf, ServerConfig, Options) {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    let mut config = ServerConfig {
        ring_poll_window_ns: hvsim::vmbus::HOSTED_RING_POLL_WINDOW_NS,
        ..ServerConfig::default()
    };
    let mut options = Options::default();
    let mut devices = "heartbeat,shutdown,timesync,kvp".to_string();
    let millis = |text: String| -> u64 {
        text.parse::<u64>()
            .map(|ms| ms * 1_000_000)
            .unwrap_or_else(|_| fail("bad milliseconds"))
    };
    while let Some(arg) = args.next() {
        if arg == "--events" {
            options.events = true;
            continue;
        }
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value())),
            // 0 turns polling off: the host reads a ring only when signalled.
            "--ring-poll-us" => {
                config.ring_poll_window_ns = value()
                    .parse::<u64>()
                    .map(|us| us.min(1_000_000) * 1_000)
                    .unwrap_or_else(|_| fail("bad microseconds"))
            }
            "--max-version" => config.max_version = parse_version(&value()),
            "--min-version" => config.min_version = parse_version(&value()),
            "--msg-conn-id" => {
                config.msg_conn_id = value().parse().unwrap_or_else(|_| fail("bad id"))
            }
            "--gpadl-limit" => {
                config.gpadl_memory_limit = value().parse().unwrap_or_else(|_| fail("bad limit"))
            }
            "--devices" => devices = value(),
            "--time-interval-ms" => options.time_interval_ns = millis(value()),
            "--heartbeat-interval-ms" => options.heartbeat_interval_ns = millis(value()),
            "--script" => options.script = Some(read_scenario(&value())),
            "--disk" => {
                let spec = value();
                let disk = FileDisk::open_spec(&spec)
                    .unwrap_or_else(|e| fail(&format!("cannot open disk {spec}: {e}")));
                options.disks.push((spec, disk));
            }
            "--storage-version" => {
                config.storage.newest_version = hvsim::scenario::parse_storage_version(&value())
                    .unwrap_or_else(|| {
                        fail(&format!(
                            "storage versions: {}",
                            hvsim::scenario::STORAGE_VERSIONS.join(", ")
                        ))
                    })
            }
            "--net" => options.net = Some(NetSpec::parse(&value()).unwrap_or_else(|e| fail(&e))),
            "--storage-sub-channels" => {
                config.storage.max_sub_channels = value()
                    .parse()
                    .ok()
                    .filter(|&n| n <= 8)
                    .unwrap_or_else(|| fail("sub-channels: 0 to 8"))
            }
            _ => fail(&format!("unknown argument {arg}")),
        }
    }
    // The scenario names its devices and versions (as in the seL4 image).
    if let Some(script) = &options.script {
        let scripted = script.server_config();
        config.devices = scripted.devices;
        config.min_version = scripted.min_version;
        config.max_version = scripted.max_version;
        config.storage = scripted.storage;
        add_storage_for_disks(&mut config, &options);
        return (
            socket.unwrap_or_else(|| fail("--socket is required")),
            config,
            options,
        );
    }
    config.devices = devices
        .split(',')
        .filter(|name| !name.is_empty())
        .enumerate()
        .map(|(index, name)| device(name, index as u128 + 1))
        .collect();
    add_storage_for_disks(&mut config, &options);
    (
        socket.unwrap_or_else(|| fail("--socket is required")),
        config,
        options,
    )
}

/// `--disk` without a storage device among the devices: one is added;
/// so is a NIC for `--net` without one.
fn add_storage_for_disks(config: &mut ServerConfig, options: &Options) {
    if !options.disks.is_empty() {
        hvsim::script::add_storage_for_disk(config);
    }
    if options.net.is_some() {
        hvsim::script::add_network(config);
    }
}

/// Windows file time (100 ns units since 1601) of now.
fn file_time_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    116_444_736_000_000_000 + (unix.as_nanos() / 100) as u64
}

/// The simulator and what the binary watches on it: the last state it
/// reported (`--events`) and the periodic time samples.
struct Machine<M: hv_interface::GuestMemory> {
    sim: Simulator<M>,
    options: Options,
    now_ns: u64,
    last_time_sample_ns: Option<u64>,
    /// Devices added by the operator, for their instance GUIDs.
    added: u128,
    seen_version: Option<ProtocolVersion>,
    seen_open: Vec<u32>,
    /// (relid, sequence) of the last heartbeat answer reported.
    seen_heartbeat: Option<(u32, u64)>,
    /// (relid, count) of time-sample answers reported.
    seen_time_answers: Option<(u32, u64)>,
    seen_shutdown: Option<(u32, u32)>,
    /// Open relids whose IC negotiation was reported.
    seen_negotiated: Vec<u32>,
    /// The video mode last reported (width, height).
    seen_video_mode: Option<(u32, u32)>,
    script: Option<ScriptRunner>,
    /// The `--net` network until the NIC host takes it (its controller
    /// exists once the NIC is offered: [`Machine::attach_network`]); its
    /// I/O runs meanwhile.
    network: Option<BoxedNetBackend>,
}

impl<M: hv_interface::GuestMemory> Machine<M> {
    /// Hands the `--net` network to the first NIC's host once there is
    /// one (it keeps it across rescind and re-offer of the same instance).
    fn attach_network(&mut self) {
        if self.network.is_none() {
            return;
        }
        if self.sim.net_mut().is_none() {
            return;
        }
        if let Some(backend) = self.network.take() {
            if self.sim.net_set_backend(backend) {
                eprintln!("hvsim: net: the NIC host has the network");
            }
        }
    }

    fn ic_relid(&self, kind: DeviceKind) -> Option<u32> {
        self.sim.channel_of(kind)
    }

    /// Negotiated IC channel of `kind` (the host may send requests on it).
    fn negotiated(&self, kind: DeviceKind) -> bool {
        self.ic_relid(kind)
            .and_then(|relid| self.sim.vmbus.endpoint(relid))
            .is_some_and(|e| e.ic.message_version.is_some())
    }

    fn periodic(&mut self) {
        if self.options.heartbeat_interval_ns > 0 {
            let interval = self.options.heartbeat_interval_ns;
            for relid in self.sim.vmbus.open_channels() {
                if let Some(endpoint) = self.sim.vmbus.endpoint_mut(relid) {
                    if endpoint.kind == DeviceKind::Heartbeat {
                        endpoint.ic.heartbeat_interval_ns = interval;
                    }
                }
            }
        }
        let interval = self.options.time_interval_ns;
        if interval > 0
            && self.negotiated(DeviceKind::TimeSync)
            && self
                .last_time_sample_ns
                .is_none_or(|sent| self.now_ns >= sent.saturating_add(interval))
        {
            // The first sample of a session is a SYNC (set the clock), the
            // rest SAMPLEs, as Hyper-V sends them.
            let flags = if self.last_time_sample_ns.is_none() {
                vmbus_protocol::ic::timesync_flags::SYNC
            } else {
                vmbus_protocol::ic::timesync_flags::SAMPLE
            };
            self.last_time_sample_ns = Some(self.now_ns);
            self.sim.send_time(file_time_now(), flags);
        }
    }

    /// Report on stderr what changed since the last step (`--events`).
    fn report(&mut self) {
        let at_us = self.now_ns / 1000;
        let version = self.sim.vmbus.version();
        if version != self.seen_version {
            match version {
                Some(v) => eprintln!(
                    "hvsim event: version {}.{} at {at_us} us",
                    v.major(),
                    v.minor()
                ),
                None => eprintln!("hvsim event: unloaded at {at_us} us"),
            }
            self.seen_version = version;
        }
        let mut open = self.sim.vmbus.open_channels();
        open.sort_unstable();
        for relid in &open {
            if !self.seen_open.contains(relid) {
                let kind = self.sim.vmbus.endpoint(*relid).map(|e| e.kind);
                eprintln!("hvsim event: open relid {relid} {kind:?} at {at_us} us");
            }
        }
        for relid in &self.seen_open {
            if !open.contains(relid) {
                eprintln!("hvsim event: closed relid {relid} at {at_us} us");
            }
        }
        self.seen_negotiated.retain(|relid| open.contains(relid));
        for relid in &open {
            let Some(endpoint) = self.sim.vmbus.endpoint(*relid) else {
                continue;
            };
            if let (Some(framework), Some(message)) =
                (endpoint.ic.framework, endpoint.ic.message_version)
            {
                if !self.seen_negotiated.contains(relid) {
                    self.seen_negotiated.push(*relid);
                    eprintln!(
                        "hvsim event: negotiated {:?} relid {relid} framework {}.{} message {}.{} at {at_us} us",
                        endpoint.kind,
                        framework.major.get(),
                        framework.minor.get(),
                        message.major.get(),
                        message.minor.get()
                    );
                }
            }
            // The keyboard and mouse negotiate their own protocols.
            let input_ready = match endpoint.kind {
                DeviceKind::Keyboard => endpoint.keyboard.ready.then_some("protocol 1.0"),
                DeviceKind::Mouse => endpoint
                    .mouse
                    .ready
                    .then_some("protocol 2.0, device info acknowledged"),
                _ => None,
            };
            if let Some(what) = input_ready {
                if !self.seen_negotiated.contains(relid) {
                    self.seen_negotiated.push(*relid);
                    eprintln!(
                        "hvsim event: negotiated {:?} relid {relid} {what} at {at_us} us",
                        endpoint.kind
                    );
                }
            }
        }
        self.seen_open = open;
        if let Some(relid) = self.ic_relid(DeviceKind::Heartbeat) {
            if let Some(beat) = self.sim.last_heartbeat() {
                if self.seen_heartbeat != Some((relid, beat.sequence)) {
                    self.seen_heartbeat = Some((relid, beat.sequence));
                    eprintln!(
                        "hvsim event: heartbeat sequence {} answered at {} us",
                        beat.sequence,
                        beat.at_ns / 1000
                    );
                }
            }
        }
        if let Some(relid) = self.ic_relid(DeviceKind::TimeSync) {
            let answers = self
                .sim
                .vmbus
                .endpoint(relid)
                .map_or(0, |e| e.ic.timesync_answers);
            if answers > 0 && self.seen_time_answers != Some((relid, answers)) {
                self.seen_time_answers = Some((relid, answers));
                eprintln!("hvsim event: time sample {answers} answered at {at_us} us");
            }
        }
        if let Some(relid) = self.ic_relid(DeviceKind::Shutdown) {
            if let Some(status) = self.sim.shutdown_status() {
                if self.seen_shutdown != Some((relid, status)) {
                    self.seen_shutdown = Some((relid, status));
                    eprintln!("hvsim event: shutdown answered status {status:#x} at {at_us} us");
                }
            }
        }
        let mode = self
            .sim
            .video()
            .and_then(|video| video.situation)
            .map(|mode| (mode.width, mode.height));
        if mode != self.seen_video_mode {
            if let Some((width, height)) = mode {
                eprintln!("hvsim event: video mode {width}x{height} at {at_us} us");
            }
            self.seen_video_mode = mode;
        }
        for answer in self.sim.kvp_responses() {
            eprintln!(
                "hvsim event: kvp answer operation {} pool {} status {:#x} key {:?} value {:?} at {at_us} us",
                answer.operation, answer.pool, answer.status, answer.key, answer.value
            );
        }
    }
}

impl<M: hv_interface::GuestMemory> hvsim::transport::Machine for Machine<M> {
    fn msr_read(&mut self, msr: u32) -> Result<u64, hvsim::synic::Exception> {
        self.sim.msr_read(msr)
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), hvsim::synic::Exception> {
        self.sim.msr_write(msr, value)
    }
    fn hypercall(
        &mut self,
        control: u64,
        input: u64,
        output: u64,
    ) -> Result<u64, hvsim::synic::Exception> {
        self.sim.hypercall(control, input, output)
    }
    fn take_interrupt(&mut self) -> Option<u8> {
        self.sim.take_interrupt()
    }
    fn advance_clock(&mut self, now_ns: u64) {
        self.sim.advance_clock(now_ns);
    }
    fn next_wakeup_ns(&self) -> Option<u64> {
        self.sim.next_wakeup_ns()
    }
    fn set_tsc_clock(&mut self, clock: hyperv_defs::reference_tsc::TscClock) {
        self.sim.set_tsc_clock(Some(clock));
    }
    fn step(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.sim.step(now_ns);
        self.attach_network();
        if let Some(network) = &mut self.network {
            network.poll();
        }
        self.periodic();
        if let Some(runner) = &mut self.script {
            for line in runner.run(&mut self.sim, now_ns) {
                eprintln!("{line}");
            }
            for name in runner.take_due_crashes() {
                // A host process cannot reach the guest's processes; the
                // hosted tests kill components with SIGKILL instead.
                eprintln!("host: fault injection of {name} is for the seL4 image only: not done");
            }
        }
        if self.options.events {
            self.report();
        }
    }
}

fn operator<M: hv_interface::GuestMemory>(line: &str, machine: &mut Machine<M>) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let sim = &mut machine.sim;
    match words.as_slice() {
        ["shutdown"] => format!("{}", sim.request_shutdown(0)),
        ["reboot"] => format!("{}", sim.request_shutdown(vmbus_protocol::ic::shutdown_flags::REBOOT)),
        ["shutdown-status"] => format!("{:?}", sim.shutdown_status()),
        ["heartbeat"] => format!("{:?}", sim.last_heartbeat()),
        ["time"] => format!("{}", sim.send_time(file_time_now(), vmbus_protocol::ic::timesync_flags::SYNC)),
        ["kvp-set", pool, key, value] => match pool.parse() {
            Ok(pool) => format!("{}", sim.kvp_set(pool, key, value)),
            Err(_) => "bad pool".into(),
        },
        ["kvp-get", pool, key] => match pool.parse() {
            Ok(pool) => format!("{}", sim.kvp_get(pool, key)),
            Err(_) => "bad pool".into(),
        },
        ["kvp-responses"] => format!("{:?}", sim.kvp_responses()),
        // The synthetic keyboard and mouse (docs/hvsim.md, "Keyboard and
        // mouse"): the same steps a scenario's `input_steps` lists.
        [first, ..] if hvsim::input_step::is_input_step(first) => {
            match hvsim::input_step::parse_input_step(line) {
                Ok(step) => sim.input_step(&step),
                Err(why) => why,
            }
        }
        ["input-report"] => format!(
            "keyboard: {}; mouse: {}",
            sim.keyboard_report().unwrap_or_else(|| "no channel".into()),
            sim.mouse_report().unwrap_or_else(|| "no channel".into())
        ),
        ["rescind", relid] => match relid.parse() {
            Ok(relid) => format!("{}", sim.rescind(relid)),
            Err(_) => "bad relid".into(),
        },
        // A device offered while the guest runs; INSTANCE (a number) reuses
        // the instance GUID of the device configured at that position (a
        // re-offer of a rescinded device), else a new one.
        ["add-device", name, rest @ ..] => {
            let index = match rest {
                [] => {
                    machine.added += 1;
                    Some(0x100 + machine.added)
                }
                [number] => number.parse().ok(),
                _ => None,
            };
            match index.and_then(|index| parse_device(name, index)) {
                Some(device) => format!("relid {}", sim.add_device(device)),
                None => "bad device".into(),
            }
        }
        ["relid", name] => match device_kind(name) {
            Some(kind) => format!("{:?}", sim.channel_of(kind)),
            None => "bad device".into(),
        },
        ["malformed", relid, fault] => match (relid.parse(), PacketFault::from_name(fault)) {
            (Ok(relid), Some(fault)) => format!("{}", sim.inject_malformed_packet(relid, fault)),
            _ => "bad relid or fault (offset-too-small | length-before-offset | unknown-type | unknown-flags | length-beyond-ring)".into(),
        },
        ["oversized", relid, len] => match (relid.parse(), len.parse()) {
            (Ok(relid), Ok(len)) => format!("{}", sim.inject_oversized_packet(relid, len)),
            _ => "bad relid or length".into(),
        },
        ["transfer-outside", relid] => match relid.parse() {
            Ok(relid) => format!("{}", sim.inject_transfer_outside(relid, 0x7A7A)),
            _ => "bad relid".into(),
        },
        ["unknown-completion", relid] => match relid.parse() {
            Ok(relid) => format!("{}", sim.inject_unknown_completion(relid)),
            _ => "bad relid".into(),
        },
        ["corrupt-index", relid, value] => match (relid.parse(), value.parse()) {
            (Ok(relid), Ok(value)) => format!("{}", sim.corrupt_ring_index(relid, value)),
            _ => "bad relid or value".into(),
        },
        ["stats"] => {
            let mut line = format!(
                "version {:?} server {:?} hypercalls {:?} synic {:?} open {:?}",
                sim.vmbus.version(),
                sim.vmbus.stats,
                sim.host.stats,
                sim.host.synic.stats,
                sim.vmbus
                    .open_channels()
                    .into_iter()
                    .map(|relid| (relid, sim.vmbus.endpoint(relid).map(|e| e.stats)))
                    .collect::<Vec<_>>()
            );
            // The video host's counters (dirt messages, rects, bytes...).
            if let Some(video) = sim.video() {
                line.push_str(&format!(" video {:?}", video.stats));
            }
            line
        }
        ["rejections"] => format!("{:?}", sim.vmbus.rejections),
        // The synthetic video host (the first video device): the host's
        // picture as a PNG, its state and counters, its faults.
        ["screenshot", path] => match sim.screen() {
            Some(picture) => match hvsim::screen::write_png(&picture, std::path::Path::new(path)) {
                Ok(()) => format!("{}x{}", picture.width, picture.height),
                Err(error) => format!("cannot write {path}: {error}"),
            },
            None => "no picture (no video device, or no VRAM and mode yet)".into(),
        },
        ["screen-damage"] => format!("{:?}", sim.take_screen_damage()),
        ["video-report"] => match sim.video() {
            Some(video) => video.report(),
            None => "no video device".into(),
        },
        ["video-fault", fault @ ..] => match VideoFault::parse(fault) {
            Some(fault) => format!("{}", sim.video_inject(fault)),
            None => format!("faults: {}", VideoFault::USAGE),
        },
        // Per open channel: the guest's signals against the packets the
        // host consumed (docs/hvsim.md, "Signal accounting").
        ["signals"] => sim.vmbus.signal_report().join("; "),
        // The storage host (the first storage device).
        ["storage-report"] => {
            let mut lines = Vec::new();
            for (instance, controller) in &sim.vmbus.storage {
                lines.push(format!("storage {instance}: {}", controller.report()));
            }
            if lines.is_empty() {
                "no storage device".into()
            } else {
                lines.join("; ")
            }
        }
        ["storage-luns"] => format!("{:?}", sim.storage_luns()),
        ["storage-add-lun", spec] => {
            let disk: Option<hvsim::channel::scsi_target::BoxedDisk> =
                match spec.strip_prefix("memory:").map(str::parse::<u64>) {
                    Some(Ok(kib)) if kib > 0 && kib <= 64 << 10 => Some(Box::new(
                        hvsim::disk::MemoryDisk::new(512, kib * 2),
                    )),
                    Some(_) => None,
                    None => FileDisk::open_spec(spec)
                        .ok()
                        .map(|disk| Box::new(disk) as hvsim::channel::scsi_target::BoxedDisk),
                };
            match disk.and_then(|disk| sim.storage_hot_add(disk)) {
                Some(lun) => format!("lun {lun}"),
                None => "bad disk (PATH[,ro] | memory:KIB) or no storage device or free LUN".into(),
            }
        }
        ["storage-remove-lun", lun] => match lun.parse() {
            Ok(lun) => format!("{}", sim.storage_hot_remove(lun)),
            Err(_) => "bad lun".into(),
        },
        ["storage-rescind"] => match sim.storage_relid() {
            Some(relid) => format!(
                "{} ({} completions held)",
                sim.rescind(relid),
                sim.storage_pending()
            ),
            None => "no storage device".into(),
        },
        ["storage-enumerate"] => format!(
            "{}",
            sim.storage_notify(vmbus_protocol::storage::operation::ENUMERATE_BUS)
        ),
        ["storage-remove-device"] => format!(
            "{}",
            sim.storage_notify(vmbus_protocol::storage::operation::REMOVE_DEVICE)
        ),
        ["storage-fault", fault @ ..] => match StorageFault::parse(fault) {
            Some(fault) => format!("{}", sim.storage_inject(fault)),
            None => format!("faults: {}", StorageFault::USAGE),
        },
        // The NIC host (the first network device).
        ["net-report"] => {
            let mut lines = Vec::new();
            for (instance, controller) in &sim.vmbus.network {
                lines.push(format!("network {instance}: {}", controller.report()));
            }
            if lines.is_empty() {
                "no network device".into()
            } else {
                lines.join("; ")
            }
        }
        ["net-link", state @ ("up" | "down")] => format!("{}", sim.net_set_link(*state == "up")),
        ["net-fault", fault @ ..] => match NetFault::parse(fault) {
            Some(fault) => format!("{}", sim.net_inject(fault)),
            None => format!("faults: {}", NetFault::USAGE),
        },
        ["net-rescind"] => match sim.net_relid() {
            Some(relid) => format!("{}", sim.rescind(relid)),
            None => "no network device offered".into(),
        },
        ["net-offer-again"] => match sim.net_offer_again() {
            Some(relid) => format!("relid {relid}"),
            None => "no released network device".into(),
        },
        ["gpadls"] => format!(
            "{} gpadls {} bytes",
            sim.vmbus.gpadl_count(),
            sim.vmbus.gpadl_bytes()
        ),
        _ => "commands: shutdown | reboot | shutdown-status | heartbeat | time | kvp-set POOL KEY VALUE | kvp-get POOL KEY | kvp-responses | rescind RELID | add-device NAME|CLASS [INSTANCE] | relid NAME | malformed RELID FAULT | oversized RELID LEN | corrupt-index RELID VALUE | transfer-outside RELID | unknown-completion RELID | stats | rejections | gpadls | storage-report | storage-luns | storage-add-lun PATH[,ro]|memory:KIB | storage-remove-lun LUN | storage-rescind | storage-enumerate | storage-remove-device | storage-fault FAULT | net-report | net-link up|down | net-fault FAULT | net-rescind | net-offer-again".into(),
    }
}

pub fn main() {
    let (socket, config, options) = parse_args();
    // The network first: a TAP that cannot be opened or a port that is
    // taken ends the run before a guest is waited for.
    let network = options.net.as_ref().map(|spec| {
        let (backend, line) = spec.open().unwrap_or_else(|e| fail(&e));
        eprintln!("hvsim: {line}");
        backend
    });
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap_or_else(|e| {
        eprintln!("hvsim: cannot listen on {}: {e}", socket.display());
        std::process::exit(1);
    });
    let (mut connection, memory) = hvsim::transport::accept(&listener).unwrap_or_else(|e| {
        eprintln!("hvsim: handshake failed: {e}");
        std::process::exit(1);
    });
    // One guest per run: later connections are refused, not left waiting.
    drop(listener);
    eprintln!(
        "hvsim: guest connected, {} bytes of memory in {}",
        connection.hello.memory_size,
        connection.hello.memory_path.display()
    );
    let script = options.script.clone().map(ScriptRunner::new);
    let mut sim = Simulator::new(memory, config);
    let network_attached = network.is_some();
    let mut options = options;
    for (spec, disk) in options.disks.drain(..) {
        match sim.storage_attach(Box::new(disk)) {
            Some(lun) => eprintln!("hvsim: storage LUN {lun}: {spec}"),
            None => fail(&format!("no storage LUN for {spec}")),
        }
    }
    if let Some(script) = &options.script {
        for line in script.attach_memory_disks(&mut sim) {
            eprintln!("{line}");
        }
    }
    let machine = Arc::new(Mutex::new(Machine {
        sim,
        script,
        options,
        now_ns: 0,
        last_time_sample_ns: None,
        added: 0,
        seen_version: None,
        seen_open: Vec::new(),
        seen_heartbeat: None,
        seen_time_answers: None,
        seen_shutdown: None,
        seen_negotiated: Vec::new(),
        seen_video_mode: None,
        network,
    }));
    // The network's frames arrive without the guest doing anything: with a
    // network the loop looks at it every millisecond, not every 10.
    let tick = if network_attached {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let operator_machine = machine.clone();
    // What an operator command raised (a keystroke's interrupt, a
    // fault's) leaves at once: the command wakes the serve loop.
    let (wake, woken) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| {
        eprintln!("hvsim: no wake-up socket pair: {e}");
        std::process::exit(1);
    });
    if let Err(e) = wake
        .set_nonblocking(true)
        .and_then(|()| connection.set_wake(woken))
    {
        eprintln!("hvsim: no wake-up socket pair: {e}");
        std::process::exit(1);
    }
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let answer = {
                let mut machine = operator_machine.lock().unwrap_or_else(|e| e.into_inner());
                operator(&line, &mut machine)
            };
            // A full socket already holds a wake-up: nothing is lost.
            let _ = std::io::Write::write(&mut &wake, &[1]);
            println!("{answer}");
        }
    });
    let end = connection.serve(&*machine, &stop, tick);
    stop.store(true, Ordering::SeqCst);
    eprintln!("hvsim: session ended: {end:?}");
    // One session per run: the guest's state (synic, ports, queued
    // messages, the bus) ends with it, and so does the process.
    let _ = std::fs::remove_file(&socket);
    let code = match end {
        SessionEnd::GuestClosed | SessionEnd::Stopped => 0,
        SessionEnd::ProtocolError(_) | SessionEnd::Io(_) => 3,
    };
    std::process::exit(code);
}
