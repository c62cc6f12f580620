//! One component's view of the hosted system: its mapped regions, its
//! channel ends and its control socket. It implements [`Env`] and yields
//! the component's [`Event`]s; a component process runs its event loop
//! on it, and a test double in a test process uses the very same code.
//!
//! Trusts: the handoff (written by the launcher). Does not trust peers:
//! call replies and requests are length-checked and tag-checked, and a
//! peer that dies mid-call yields `CallError::ServerFaulted`.

use crate::ioport::PortRange;
use crate::protocol::{
    self, ChannelRole, Handoff, ToComponent, ToLauncher, MAX_CONTROL, REPLY_OK, REPLY_REFUSED,
    REQUEST,
};
use crate::sys::{self, write_all, Received};
use component_api::{
    CallError, Channel, ChannelSet, Child, Env, Fault, IoPortName, Refusal, Region, RegionAddress,
    RegionName, SupervisorError, MAX_MESSAGE,
};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use system_layout::ComponentLayout;

/// Something that happened to a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One or more notifications (or IRQs) arrived.
    Notified(ChannelSet),
    /// A protected call arrived; answer it with [`Endpoint::reply`].
    Call { channel: Channel, message: Vec<u8> },
    /// A supervised child stopped.
    Fault { child: Child, fault: Fault },
    /// One of the extra descriptors given to [`Endpoint::wait_event_with`]
    /// is readable (never produced by [`Endpoint::wait_event`]).
    Readable(RawFd),
}

struct ChannelEndState {
    role: ChannelRole,
    receive: Option<OwnedFd>,
    send: Option<OwnedFd>,
    /// `None` once the peer died, until the launcher hands a new socket.
    call: Option<OwnedFd>,
}

/// Where text that does not go through a console channel ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// This process's stdout (the launcher prefixes it with the name).
    Stdout,
    /// This process's stderr, each line prefixed with the name (a test
    /// double, whose process is the test itself).
    PrefixedStderr,
}

pub struct Endpoint {
    name: String,
    layout: ComponentLayout,
    start_ns: u64,
    control: OwnedFd,
    serial: Option<OwnedFd>,
    regions: Vec<Granted>,
    channels: Vec<Option<ChannelEndState>>,
    ports: Vec<PortRange>,
    output: OutputMode,
    events: VecDeque<Event>,
    supervisor_reply: Option<bool>,
    launcher_gone: bool,
    call_buffer: Vec<u8>,
}

/// A region as the description grants it.
enum Granted {
    Mapped(Region),
    /// `rights = "address"`: its guest physical address (if host visible)
    /// and size, nothing mapped.
    AddressOnly(Option<RegionAddress>),
}

fn adopt(fd: i32) -> OwnedFd {
    // SAFETY: the launcher handed us this descriptor for our sole use.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Endpoint {
    /// Take ownership of the descriptors named in `handoff`, map the
    /// regions and close the region descriptors (so the component cannot
    /// map them again with other rights).
    pub fn from_handoff(handoff: Handoff, output: OutputMode) -> io::Result<Endpoint> {
        let mut regions = Vec::with_capacity(handoff.maps.len());
        for map in &handoff.maps {
            let size = usize::try_from(map.size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
            if map.address_only {
                regions.push(Granted::AddressOnly(map.guest_physical.map(|gpa| {
                    RegionAddress {
                        guest_physical: gpa,
                        len: size,
                    }
                })));
                continue;
            }
            let fd = adopt(map.fd);
            let base = sys::map_shared(&fd, map.offset, size, map.writable, map.double)?;
            // SAFETY: just mapped, never unmapped, with these rights, and
            // a guard page after it (`sys::map_shared`).
            let region =
                unsafe { Region::new(base, size, map.writable, map.double).with_guard_page() };
            regions.push(Granted::Mapped(match map.guest_physical {
                Some(gpa) => region.with_guest_physical(gpa),
                None => region,
            }));
        }
        let mut channels: Vec<Option<ChannelEndState>> = (0..64).map(|_| None).collect();
        for channel in &handoff.channels {
            let slot = channels.get_mut(channel.id as usize).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "channel id out of range")
            })?;
            *slot = Some(ChannelEndState {
                role: channel.kind,
                receive: channel.receive_fd.map(adopt),
                send: channel.send_fd.map(adopt),
                call: channel.call_fd.map(adopt),
            });
        }
        let ports = handoff
            .layout
            .ioports
            .iter()
            .map(|p| PortRange::new(p.base, p.size))
            .collect();
        Ok(Endpoint {
            name: handoff.name,
            layout: handoff.layout,
            start_ns: handoff.start_ns,
            control: adopt(handoff.control_fd),
            serial: handoff.serial_fd.map(adopt),
            regions,
            channels,
            ports,
            output,
            events: VecDeque::new(),
            supervisor_reply: None,
            launcher_gone: false,
            call_buffer: vec![0; MAX_MESSAGE + 3],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layout(&self) -> &ComponentLayout {
        &self.layout
    }

    /// The control socket's descriptor (the panic hook writes to it).
    pub fn control_fd(&self) -> RawFd {
        self.control.as_raw_fd()
    }

    /// Whether the launcher has gone away (the system is over).
    pub fn launcher_gone(&self) -> bool {
        self.launcher_gone
    }

    /// The local channel id of the end (or IRQ) called `name`.
    pub fn channel_named(&self, name: &str) -> Option<Channel> {
        self.layout
            .channels
            .iter()
            .find(|c| c.name == name)
            .map(|c| Channel(c.id))
            .or_else(|| {
                self.layout
                    .irqs
                    .iter()
                    .find(|i| i.name == name)
                    .map(|i| Channel(i.channel))
            })
    }

    /// The region index of the map called `name`.
    pub fn region_named(&self, name: &str) -> Option<RegionName> {
        self.layout
            .maps
            .iter()
            .position(|m| m.name == name)
            .map(|i| RegionName(i as u8))
    }

    /// The child index of the supervised component called `name`, given
    /// the whole system's component names.
    pub fn child_position(&self, component_index: u8) -> Option<Child> {
        self.layout
            .children
            .iter()
            .position(|c| *c == component_index)
            .map(|i| Child(i as u8))
    }

    fn end(&self, channel: Channel) -> Option<&ChannelEndState> {
        self.channels.get(channel.index()).and_then(|c| c.as_ref())
    }

    fn handle_control(&mut self, message: &[u8], fd: Option<OwnedFd>) {
        let Ok(message) = postcard::from_bytes::<ToComponent>(message) else {
            return;
        };
        match message {
            ToComponent::CallEnd { channel } => {
                if let Some(Some(end)) = self.channels.get_mut(channel as usize) {
                    if matches!(end.role, ChannelRole::CallClient | ChannelRole::CallServer) {
                        end.call = fd;
                    }
                }
            }
            ToComponent::Fault { child, fault } => self.events.push_back(Event::Fault {
                child: Child(child),
                fault: fault.into(),
            }),
            ToComponent::SupervisorReply { ok } => self.supervisor_reply = Some(ok),
        }
    }

    /// Handle every control message already waiting, without blocking.
    fn drain_control(&mut self, blocking_first: bool) {
        let mut buffer = [0u8; MAX_CONTROL];
        let mut blocking = blocking_first;
        loop {
            match sys::receive_message(self.control.as_raw_fd(), &mut buffer, blocking) {
                Ok(Received::Message(len, fd)) => {
                    let message = buffer[..len].to_vec();
                    self.handle_control(&message, fd);
                }
                Ok(Received::Empty) => return,
                Ok(Received::Closed) | Err(_) => {
                    self.launcher_gone = true;
                    return;
                }
            }
            blocking = false;
        }
    }

    /// Wait for the next event, at most `timeout` (`None`: indefinitely).
    /// `Ok(None)` means the time passed, or the launcher went away
    /// (see [`Endpoint::launcher_gone`]).
    pub fn wait_event(&mut self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        self.wait_event_with(&[], timeout)
    }

    /// [`Endpoint::wait_event`], also watching `extra` descriptors: one
    /// that is readable yields [`Event::Readable`] (for a process that
    /// serves a component's channels and something else, like the bridge
    /// to the simulated host).
    pub fn wait_event_with(
        &mut self,
        extra: &[RawFd],
        timeout: Option<Duration>,
    ) -> io::Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.launcher_gone {
                return Ok(None);
            }
            let mut fds: Vec<libc::pollfd> = extra.iter().map(|fd| sys::pollfd(*fd)).collect();
            let extras = fds.len();
            fds.push(sys::pollfd(self.control.as_raw_fd()));
            let mut owners: Vec<(u8, bool)> = Vec::new(); // (channel, is_call)
            for (id, end) in self.channels.iter().enumerate() {
                let Some(end) = end else { continue };
                match end.role {
                    ChannelRole::Notify | ChannelRole::Irq => {
                        if let Some(fd) = &end.receive {
                            fds.push(sys::pollfd(fd.as_raw_fd()));
                            owners.push((id as u8, false));
                        }
                    }
                    ChannelRole::CallServer => {
                        if let Some(fd) = &end.call {
                            fds.push(sys::pollfd(fd.as_raw_fd()));
                            owners.push((id as u8, true));
                        }
                    }
                    ChannelRole::CallClient => {}
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = sys::poll(&mut fds, left)?;
            if ready == 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                continue;
            }
            for pollfd in &fds[..extras] {
                if pollfd.revents != 0 {
                    self.events.push_back(Event::Readable(pollfd.fd));
                }
            }
            if fds[extras].revents != 0 {
                self.drain_control(false);
            }
            let mut notified = ChannelSet::EMPTY;
            for (pollfd, (id, is_call)) in fds[extras + 1..].iter().zip(owners) {
                if pollfd.revents == 0 {
                    continue;
                }
                if !is_call {
                    if sys::eventfd_take(pollfd.fd) {
                        notified.insert(Channel(id));
                    }
                    continue;
                }
                match sys::receive_message(pollfd.fd, &mut self.call_buffer, false) {
                    Ok(Received::Message(len, _)) if len >= 1 && self.call_buffer[0] == REQUEST => {
                        self.events.push_back(Event::Call {
                            channel: Channel(id),
                            message: self.call_buffer[1..len].to_vec(),
                        });
                    }
                    Ok(Received::Message(..)) | Err(_) => {
                        // A malformed or oversized request: refuse it so the
                        // caller does not wait forever.
                        let _ =
                            sys::send_message(pollfd.fd, &refusal_frame(Refusal::MALFORMED), None);
                    }
                    Ok(Received::Empty) => {}
                    Ok(Received::Closed) => {
                        // The client died; its restart brings a new socket.
                        if let Some(Some(end)) = self.channels.get_mut(id as usize) {
                            end.call = None;
                        }
                    }
                }
            }
            if !notified.is_empty() {
                // Notifications go first, as one set, like a notification word.
                self.events.push_front(Event::Notified(notified));
            }
        }
    }

    /// Answer the protected call that arrived on `channel`.
    pub fn reply(&mut self, channel: Channel, result: Result<&[u8], Refusal>) {
        let Some(fd) = self.end(channel).and_then(|e| e.call.as_ref()) else {
            return;
        };
        let frame = match result {
            Ok(data) => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(REPLY_OK);
                frame.extend_from_slice(&data[..data.len().min(MAX_MESSAGE)]);
                frame
            }
            Err(refusal) => refusal_frame(refusal),
        };
        // The client may have died meanwhile; nothing to tell it then.
        let _ = sys::send_message(fd.as_raw_fd(), &frame, None);
    }

    /// A protected call with an owned reply (for tests and tools).
    pub fn call(&mut self, channel: Channel, message: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut reply = vec![0u8; MAX_MESSAGE];
        let len = self.ppcall(channel, message, &mut reply)?;
        reply.truncate(len);
        Ok(reply)
    }

    fn supervisor_request(&mut self, request: ToLauncher) -> Result<(), SupervisorError> {
        self.supervisor_reply = None;
        if sys::send_message(self.control.as_raw_fd(), &protocol::encode(&request), None).is_err() {
            return Err(SupervisorError::RestartFailed);
        }
        while self.supervisor_reply.is_none() && !self.launcher_gone {
            self.drain_control(true);
        }
        match self.supervisor_reply.take() {
            Some(true) => Ok(()),
            _ => Err(SupervisorError::RestartFailed),
        }
    }

    fn check_child(&self, child: Child) -> Result<u8, SupervisorError> {
        if (child.0 as usize) < self.layout.children.len() {
            Ok(child.0)
        } else {
            Err(SupervisorError::NotMyChild)
        }
    }

    /// Write raw text where this component's direct output goes.
    pub fn write_output(&self, text: &[u8]) {
        match self.output {
            OutputMode::Stdout => write_all(1, text),
            OutputMode::PrefixedStderr => {
                for line in text.split_inclusive(|b| *b == b'\n') {
                    let mut prefixed = format!("[{}] ", self.name).into_bytes();
                    prefixed.extend_from_slice(line);
                    if !prefixed.ends_with(b"\n") {
                        prefixed.push(b'\n');
                    }
                    write_all(2, &prefixed);
                }
            }
        }
    }
}

fn refusal_frame(refusal: Refusal) -> Vec<u8> {
    let code = refusal.0.to_le_bytes();
    vec![REPLY_REFUSED, code[0], code[1]]
}

impl Env for Endpoint {
    fn notify(&mut self, channel: Channel) {
        if let Some(end) = self.end(channel) {
            if end.role == ChannelRole::Notify {
                if let Some(fd) = &end.send {
                    sys::eventfd_signal(fd.as_raw_fd());
                }
            }
        }
    }

    fn ppcall(
        &mut self,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, CallError> {
        match self.end(channel) {
            Some(end) if end.role == ChannelRole::CallClient => {}
            _ => return Err(CallError::NotACallChannel),
        }
        if message.len() > MAX_MESSAGE {
            return Err(CallError::MessageTooLarge);
        }
        // A restarted server's new socket may be waiting in the control queue.
        self.drain_control(false);
        let Some(fd) = self.end(channel).and_then(|e| e.call.as_ref()) else {
            return Err(CallError::ServerFaulted);
        };
        let fd = fd.as_raw_fd();
        let mut frame = Vec::with_capacity(message.len() + 1);
        frame.push(REQUEST);
        frame.extend_from_slice(message);
        let dead = |this: &mut Endpoint| {
            if let Some(Some(end)) = this.channels.get_mut(channel.index()) {
                end.call = None;
            }
            CallError::ServerFaulted
        };
        if sys::send_message(fd, &frame, None).is_err() {
            return Err(dead(self));
        }
        match sys::receive_message(fd, &mut self.call_buffer, true) {
            Ok(Received::Message(len, _)) if len >= 1 => {
                let body = &self.call_buffer[1..len];
                match self.call_buffer[0] {
                    REPLY_OK => {
                        if body.len() > reply.len() {
                            return Err(CallError::MessageTooLarge);
                        }
                        reply[..body.len()].copy_from_slice(body);
                        Ok(body.len())
                    }
                    REPLY_REFUSED if body.len() == 2 => {
                        Err(CallError::Refused(u16::from_le_bytes([body[0], body[1]])))
                    }
                    _ => Err(CallError::Encoding),
                }
            }
            Ok(Received::Message(..)) => Err(CallError::Encoding),
            Ok(Received::Closed) | Ok(Received::Empty) | Err(_) => Err(dead(self)),
        }
    }

    fn irq_ack(&mut self, _channel: Channel) {
        // Hosted IRQs are edge events on an eventfd: taking the count
        // already re-armed it.
    }

    fn region(&self, region: RegionName) -> Region {
        match self.regions.get(region.0 as usize) {
            Some(Granted::Mapped(region)) => *region,
            Some(Granted::AddressOnly(_)) => {
                panic!(
                    "{}: region {} is granted by address only",
                    self.name, region.0
                )
            }
            // Generated ids always name a map; a hand-made one that does
            // not is a programming error in the component.
            None => panic!("{}: no region with index {}", self.name, region.0),
        }
    }

    fn region_address(&self, region: RegionName) -> Option<RegionAddress> {
        match self.regions.get(region.0 as usize)? {
            Granted::Mapped(region) => Some(RegionAddress {
                guest_physical: region.guest_physical()?,
                len: region.len(),
            }),
            Granted::AddressOnly(address) => *address,
        }
    }

    fn ioport_read(&mut self, port: IoPortName, offset: u16, width: u8) -> u32 {
        match self.ports.get_mut(port.0 as usize) {
            Some(range) => range.read(offset, width),
            None => u32::MAX,
        }
    }

    fn ioport_write(&mut self, port: IoPortName, offset: u16, width: u8, value: u32) {
        let Some(range) = self.ports.get_mut(port.0 as usize) else {
            return;
        };
        let effect = range.write(offset, width, value);
        if let Some(line) = effect.output {
            match &self.serial {
                Some(serial) => write_all(serial.as_raw_fd(), &line),
                None => self.write_output(&line),
            }
        }
        if let Some(line) = effect.raise_irq {
            // The device's interrupt reaches us like any IRQ: on the
            // channel the description gives that line, if it gives one.
            let channel = self
                .layout
                .irqs
                .iter()
                .find(|i| i.line() == Some(line))
                .map(|i| i.channel);
            if let Some(fd) = channel
                .and_then(|c| self.channels.get(c as usize))
                .and_then(|e| e.as_ref())
                .and_then(|e| e.receive.as_ref())
            {
                sys::eventfd_signal(fd.as_raw_fd());
            }
        }
    }

    fn console(&mut self, text: &str) {
        let Some(id) = self.layout.console else {
            self.write_output(text.as_bytes());
            return;
        };
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(component_api::console::CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            let mut message = [0u8; MAX_MESSAGE];
            let mut reply = [0u8; 16];
            let sent = component_api::console::message(&mut message, chunk.as_bytes())
                .map_err(|_| CallError::Encoding)
                .and_then(|used| self.ppcall(Channel(id), &message[..used], &mut reply));
            if sent.is_err() {
                // The console is down: keep the text rather than lose it.
                self.write_output(chunk.as_bytes());
            }
            rest = tail;
        }
    }

    fn restart(&mut self, child: Child) -> Result<(), SupervisorError> {
        let child = self.check_child(child)?;
        self.supervisor_request(ToLauncher::Restart { child })
    }

    fn stop(&mut self, child: Child) -> Result<(), SupervisorError> {
        let child = self.check_child(child)?;
        self.supervisor_request(ToLauncher::Stop { child })
    }

    fn power_off(&mut self, code: u8) {
        if self.layout.may_power_off {
            let _ = sys::send_message(
                self.control.as_raw_fd(),
                &protocol::encode(&ToLauncher::PowerOff { code }),
                None,
            );
        }
    }

    fn now_ns(&mut self) -> u64 {
        sys::monotonic_ns().saturating_sub(self.start_ns)
    }

    fn time_stamp_counter(&mut self) -> Option<component_api::TimeStampCounter> {
        sys::time_stamp_counter().map(|ticks| component_api::TimeStampCounter {
            ticks,
            ticks_per_second: 0,
        })
    }
}
