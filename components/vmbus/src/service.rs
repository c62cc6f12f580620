//! What the bus manager serves: the `bus` protocol to the drivers and
//! clients, the status view's rows, and what each driver is told after an
//! event.

use super::*;

impl Vmbus {
    pub(crate) fn presented(&self, d: usize) -> ChannelState {
        self.presented_channel(d, 0)
    }

    /// Channel `k` (0 the primary, K sub-channel K) of driver `d` as the
    /// VSC sees it.
    pub(crate) fn presented_channel(&self, d: usize, k: usize) -> ChannelState {
        let driver = &self.drivers[d];
        if driver.held {
            return ChannelState::Held;
        }
        let Some(channel) = self.record(d, k) else {
            return if driver.last_rescinded && k == 0 {
                ChannelState::Rescinded
            } else {
                ChannelState::NotOffered
            };
        };
        if channel.rescinded {
            return ChannelState::Rescinded;
        }
        let busy = channel.open
            || channel.open_pending.is_some()
            || channel.gpadl.is_some()
            || channel.buffers.iter().any(|b| b.gpadl.is_some());
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        if driver.recovering {
            return ChannelState::Closing;
        }
        if channel.want_open && channel.failed.is_none() && !unloading {
            return if channel.open && channel.bound {
                ChannelState::Open
            } else {
                ChannelState::Opening
            };
        }
        if busy {
            return ChannelState::Closing;
        }
        match channel.failed {
            Some(status) => ChannelState::Failed { status },
            None => ChannelState::Offered,
        }
    }

    /// Data buffer `b` of driver `d` as the VSC sees it.
    pub(crate) fn buffer_state(&self, d: usize, b: usize) -> BufferState {
        let Some(record) = self.drivers[d].channel.as_ref().map(|c| c.buffers[b]) else {
            return BufferState::Absent;
        };
        let open = self.presented(d) == ChannelState::Open;
        match record.gpadl {
            Some(id) => match self.gpadls.state(id) {
                Some(GpadlState::Creating) => BufferState::Creating,
                Some(GpadlState::Created) if record.wanted && open => {
                    BufferState::Created { gpadl_id: id }
                }
                Some(GpadlState::Created | GpadlState::TearingDown) => BufferState::TearingDown,
                None => BufferState::Absent,
            },
            None => match record.failed {
                Some(status) => BufferState::Failed { status },
                None if record.wanted && open => BufferState::Creating,
                None => BufferState::Absent,
            },
        }
    }

    fn buffer_states(&self, d: usize) -> [BufferState; MAX_BUFFERS] {
        let mut states = [BufferState::Absent; MAX_BUFFERS];
        let count = self.drivers[d].wiring.buffers.len().min(MAX_BUFFERS);
        for (b, state) in states.iter_mut().enumerate().take(count) {
            *state = self.buffer_state(d, b);
        }
        states
    }

    pub(crate) fn channel_info(&self, d: usize, k: usize) -> ChannelInfo {
        let driver = &self.drivers[d];
        let channel = self.record(d, k);
        ChannelInfo {
            state: self.presented_channel(d, k),
            class: channel.map_or(
                driver
                    .wiring
                    .classes
                    .first()
                    .map_or([0; 16], |(class, _)| *class),
                |c| c.offer.class,
            ),
            instance: channel.map_or([0; 16], |c| c.offer.instance),
            relid: channel.map_or(0, |c| c.offer.relid),
            connection_id: channel.map_or(0, |c| c.offer.connection_id),
            user_defined: channel
                .map(|c| c.offer.user_defined.clone())
                .unwrap_or_default(),
            vmbus_version: self.version.map_or(0, |v| v.0),
            generation: match k {
                0 => driver.generation,
                k => driver.sub_generations[k - 1],
            },
        }
    }

    /// The status view's rows: each driver's primary, then its
    /// sub-channels, then the offers nobody drives. Row `index` as (driver,
    /// channel index), or the unclaimed offer's position.
    fn row(&self, index: usize) -> Option<Result<(usize, usize), usize>> {
        let mut index = index;
        for d in 0..self.drivers.len() {
            if index == 0 {
                return Some(Ok((d, 0)));
            }
            index -= 1;
            for k in 1..=MAX_SUB_CHANNELS {
                if self.record(d, k).is_some() {
                    if index == 0 {
                        return Some(Ok((d, k)));
                    }
                    index -= 1;
                }
            }
        }
        (index < self.unclaimed.len()).then_some(Err(index))
    }

    pub(crate) fn device_status(&self, index: usize) -> Option<DeviceStatus> {
        let offer = match self.row(index)? {
            Ok((d, k)) => {
                let driver = &self.drivers[d];
                let info = self.channel_info(d, k);
                let (framework, message) = driver.versions.unwrap_or(((0, 0), (0, 0)));
                return Some(DeviceStatus {
                    driver: heapless::String::try_from(driver.wiring.name).unwrap_or_default(),
                    sub_channel: k as u16,
                    class: info.class,
                    instance: info.instance,
                    relid: info.relid,
                    state: info.state,
                    vmbus_version: info.vmbus_version,
                    framework_version: framework,
                    message_version: message,
                    restarts: driver.restarts,
                });
            }
            Err(position) => &self.unclaimed[position],
        };
        Some(DeviceStatus {
            driver: heapless::String::try_from("-").unwrap_or_default(),
            sub_channel: 0,
            class: offer.class,
            instance: offer.instance,
            relid: offer.relid,
            state: ChannelState::Offered,
            vmbus_version: self.version.map_or(0, |v| v.0),
            framework_version: (0, 0),
            message_version: (0, 0),
            restarts: 0,
        })
    }

    pub(crate) fn device_count(&self) -> usize {
        self.drivers.len() + self.subs.len() + self.unclaimed.len()
    }

    fn sub_views(&self, d: usize) -> [(ChannelState, u32); MAX_SUB_CHANNELS] {
        core::array::from_fn(|i| {
            (
                self.presented_channel(d, i + 1),
                self.drivers[d].sub_generations[i],
            )
        })
    }

    /// Tell each VSC whose view changed, then print the status view if it is
    /// worth printing: once every offered device is open, and after that
    /// whenever something changed and no channel is mid-transition.
    pub(crate) fn publish(&mut self, env: &mut dyn Env) {
        for d in 0..self.drivers.len() {
            let view = (
                self.presented(d),
                self.drivers[d].generation,
                self.buffer_states(d),
                self.sub_views(d),
            );
            if self.drivers[d].published != Some(view) {
                self.drivers[d].published = Some(view);
                env.notify(self.drivers[d].wiring.event);
                self.status_dirty = true;
                if self.all_open_once {
                    self.state_changed_after_all_open = true;
                }
            }
        }
        if !self.status_dirty {
            return;
        }
        let states = || (0..self.drivers.len()).map(|d| self.presented(d));
        let settled = states().all(|s| !matches!(s, ChannelState::Opening | ChannelState::Closing));
        let offered = self.drivers.iter().filter(|d| d.channel.is_some()).count();
        let all_open = self.phase == Phase::Running
            && offered > 0
            && (0..self.drivers.len()).all(|d| {
                self.drivers[d].channel.is_none() || self.presented(d) == ChannelState::Open
            });
        if all_open && !self.all_open_once {
            self.all_open_once = true;
            let now = env.now_ns();
            let elapsed = now.saturating_sub(self.started_ns);
            println!(
                env,
                "all {} offered devices open {} ms after vmbus started (guest time {} us)",
                offered,
                elapsed / 1_000_000,
                now / 1_000
            );
        }
        // The first view waits for the IC drivers' version reports (they
        // follow the open within moments) unless a channel changes state
        // first. Data devices (NIC, storage) report none: waiting for them
        // held the view back until some later change, which may never come.
        let reports_versions = |d: usize| {
            self.drivers[d].channel.as_ref().is_some_and(|c| {
                vmbus_protocol::guid::class::is_integration_component(crate::uuid(&c.offer.class))
            })
        };
        let versions_known = (0..self.drivers.len()).all(|d| {
            self.presented(d) != ChannelState::Open
                || self.drivers[d].versions.is_some()
                || !reports_versions(d)
        });
        let worth_printing =
            self.view_printed || versions_known || self.state_changed_after_all_open;
        if settled && self.all_open_once && worth_printing {
            self.view_printed = true;
            self.status_dirty = false;
            self.print_status(env);
        }
    }

    /// Print the status view, unless the rate limit holds it back (then
    /// it is only counted: a host renegotiating at will must not flood the
    /// console).
    pub(crate) fn print_status(&mut self, env: &mut dyn Env) {
        if !self.views.allow(env.now_ns()) {
            return;
        }
        let rows = (0..self.device_count()).filter_map(|i| self.device_status(i));
        status::print(env, self.version, rows);
        if let Ok(synic::Reply::Status(counters)) =
            channels::SYNIC_CALL.call(env, &synic::Request::Status)
        {
            println!(
                env,
                "synic: {} messages in, {} posted, {} channel events ({} before open), {} signals ({} refused, {} after close), {} stray events",
                counters.messages_received,
                counters.messages_posted,
                counters.events_delivered,
                counters.early_events,
                counters.signals_sent,
                counters.signals_refused,
                counters.signals_after_unbind,
                counters.stray_events
            );
        }
        println!(
            env,
            "vmbus: {} host messages, {} rejected; start {}, synic restarts {}; held back: {} status views, {} lines",
            self.counters.messages,
            self.counters.rejected,
            self.session.starts,
            self.counters.synic_restarts,
            self.views.held_back,
            self.console_budget.held_back
        );
    }

    /// ModifyChannel: from 5.3 the host answers; from 4.1 to 5.2 it does
    /// not, and the move is taken as done.
    fn retarget(&mut self, env: &mut dyn Env, d: usize, target_vp: u32) -> bus::Reply {
        let Some(version) = self.version else {
            return bus::Reply::Refused(bus::Refusal::Unavailable);
        };
        if version < ProtocolVersion::V4_1 {
            return bus::Reply::Refused(bus::Refusal::Unsupported);
        }
        if self.presented(d) != ChannelState::Open || self.channel_mut(d).retargeting.is_some() {
            return bus::Reply::Refused(bus::Refusal::WrongState);
        }
        let channel = self.channel_mut(d);
        let mut modify = ModifyChannel::empty();
        modify.child_relid = channel.offer.relid.into();
        modify.target_vp = target_vp.into();
        if version >= ProtocolVersion::V5_3 {
            channel.retargeting = Some(target_vp);
        } else {
            channel.target_vp = target_vp;
            channel.retarget_refused = None;
        }
        self.post_control(env, modify.as_bytes());
        bus::Reply::Accepted
    }

    /// Channel index `channel` of driver `d`, if its description gives it
    /// that channel (0, or a sub-channel up to its `sub_channels`).
    fn channel_index(&self, d: usize, channel: u8) -> Option<usize> {
        let k = usize::from(channel);
        (k <= self.drivers[d].wiring.sub_rings.len().min(MAX_SUB_CHANNELS)).then_some(k)
    }

    fn buffer_index(&self, d: usize, buffer: u8) -> Option<usize> {
        let index = buffer as usize;
        (index < self.drivers[d].wiring.buffers.len().min(MAX_BUFFERS)).then_some(index)
    }

    pub(crate) fn serve(
        &mut self,
        env: &mut dyn Env,
        caller: Caller,
        request: bus::Request,
    ) -> bus::Reply {
        let driver = self
            .drivers
            .iter()
            .position(|d| d.wiring.call == caller.channel());
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        match (request, driver) {
            (bus::Request::Device { index }, _) => match self.device_status(index as usize) {
                Some(row) => bus::Reply::Device(row),
                None => bus::Reply::NoSuchDevice,
            },
            (bus::Request::Unload { power_off_code }, _) => {
                self.start_unload(env, power_off_code);
                bus::Reply::Accepted
            }
            (_, None) => bus::Reply::Refused(bus::Refusal::NotADriver),
            (bus::Request::Query { channel }, Some(d)) => match self.channel_index(d, channel) {
                Some(k) => bus::Reply::Channel(self.channel_info(d, k)),
                None => bus::Reply::Refused(bus::Refusal::NoSuchChannel),
            },
            (bus::Request::ReportVersions { framework, message }, Some(d)) => {
                if self.drivers[d].versions != Some((framework, message)) {
                    self.drivers[d].versions = Some((framework, message));
                    println!(
                        env,
                        "{}: framework {}.{}, message {}.{}",
                        self.drivers[d].wiring.name,
                        framework.0,
                        framework.1,
                        message.0,
                        message.1
                    );
                    self.status_dirty = true;
                }
                bus::Reply::Accepted
            }
            (bus::Request::Buffer { buffer }, Some(d)) => match self.buffer_index(d, buffer) {
                Some(b) => bus::Reply::Buffer(bus::BufferInfo {
                    state: self.buffer_state(d, b),
                    bytes: env
                        .region_address(self.drivers[d].wiring.buffers[b])
                        .map_or(0, |address| address.len as u64),
                }),
                None => bus::Reply::Refused(bus::Refusal::NoSuchBuffer),
            },
            (bus::Request::Interrupt, Some(d)) => {
                let channel = self.drivers[d].channel.as_ref();
                bus::Reply::Interrupt(bus::InterruptInfo {
                    target_vp: channel.map_or(0, |c| c.target_vp),
                    retargeting: channel.and_then(|c| c.retargeting),
                    refused: channel.and_then(|c| c.retarget_refused),
                })
            }
            (_, Some(_)) if unloading => bus::Reply::Refused(bus::Refusal::Unavailable),
            (bus::Request::Retarget { target_vp }, Some(d)) => self.retarget(env, d, target_vp),
            (bus::Request::CreateGpadl { buffer }, Some(d)) => {
                let Some(b) = self.buffer_index(d, buffer) else {
                    return bus::Reply::Refused(bus::Refusal::NoSuchBuffer);
                };
                let ready = self.presented(d) == ChannelState::Open
                    && matches!(
                        self.buffer_state(d, b),
                        BufferState::Absent | BufferState::Failed { .. }
                    );
                if !ready {
                    return bus::Reply::Refused(bus::Refusal::WrongState);
                }
                let record = &mut self.channel_mut(d).buffers[b];
                record.wanted = true;
                record.failed = None;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
            (bus::Request::TeardownGpadl { buffer }, Some(d)) => {
                let Some(b) = self.buffer_index(d, buffer) else {
                    return bus::Reply::Refused(bus::Refusal::NoSuchBuffer);
                };
                if !matches!(
                    self.buffer_state(d, b),
                    BufferState::Creating | BufferState::Created { .. }
                ) {
                    return bus::Reply::Refused(bus::Refusal::WrongState);
                }
                self.channel_mut(d).buffers[b].wanted = false;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
            (bus::Request::Open { channel, user_data }, Some(d)) => {
                let Some(k) = self.channel_index(d, channel) else {
                    return bus::Reply::Refused(bus::Refusal::NoSuchChannel);
                };
                match self.presented_channel(d, k) {
                    ChannelState::Offered | ChannelState::Failed { .. } => {}
                    _ => return bus::Reply::Refused(bus::Refusal::WrongState),
                }
                if k > 0 && self.presented(d) != ChannelState::Open {
                    return bus::Reply::Refused(bus::Refusal::WrongState);
                }
                let channel = self.record_mut(d, k);
                channel.want_open = true;
                channel.failed = None;
                for buffer in channel.buffers.iter_mut() {
                    buffer.failed = None;
                }
                channel.user_data = user_data;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
            (bus::Request::Close { channel }, Some(d)) => {
                let Some(k) = self.channel_index(d, channel) else {
                    return bus::Reply::Refused(bus::Refusal::NoSuchChannel);
                };
                match self.presented_channel(d, k) {
                    ChannelState::Open | ChannelState::Opening => {}
                    _ => return bus::Reply::Refused(bus::Refusal::WrongState),
                }
                // A primary's sub-channels close first (the engine).
                self.record_mut(d, k).want_open = false;
                self.reconcile(env, d);
                bus::Reply::Accepted
            }
        }
    }
}
