//! The channel engine: each driver's channel moves towards open or closed
//! one confirmed step at a time (ring GPADL, OpenChannel, bind at synic,
//! the data-buffer GPADLs the VSC asks for; close, teardown of every
//! GPADL).

use super::*;

impl Vmbus {
    /// Move driver `d`'s channels (its primary and its sub-channels) one
    /// confirmed step at a time towards their goals (open, or closed and
    /// released), until each must wait for the host.
    pub(crate) fn reconcile(&mut self, env: &mut dyn Env, d: usize) {
        for _ in 0..32 {
            let mut again = false;
            for k in 0..=MAX_SUB_CHANNELS {
                if self.record(d, k).is_none() && k > 0 {
                    continue;
                }
                if matches!(self.step(env, d, k), Step::Again) {
                    again = true;
                }
            }
            if !again {
                break;
            }
        }
        self.maybe_unload(env);
    }

    /// Channel `k` of driver `d`: 0 its primary, K its sub-channel K.
    pub(crate) fn record(&self, d: usize, k: usize) -> Option<&ChannelRecord> {
        match k {
            0 => self.drivers.get(d)?.channel.as_ref(),
            k => self
                .subs
                .iter()
                .find(|s| s.driver == d && s.index == k)
                .map(|s| &s.record),
        }
    }

    /// Channel `k` of driver `d`, from the two places records live (so
    /// the caller may use the rest of `Vmbus` meanwhile).
    pub(crate) fn record_in<'a>(
        drivers: &'a mut Vec<Driver, MAX_DRIVERS>,
        subs: &'a mut Vec<SubChannel, MAX_SUB_CHANNEL_RECORDS>,
        d: usize,
        k: usize,
    ) -> Option<&'a mut ChannelRecord> {
        match k {
            0 => drivers.get_mut(d)?.channel.as_mut(),
            k => subs
                .iter_mut()
                .find(|s| s.driver == d && s.index == k)
                .map(|s| &mut s.record),
        }
    }

    pub(crate) fn record_mut(&mut self, d: usize, k: usize) -> &mut ChannelRecord {
        Self::record_in(&mut self.drivers, &mut self.subs, d, k)
            .expect("only called while the channel has a record")
    }

    /// Forget sub-channel `k` of driver `d`.
    pub(crate) fn remove_sub(&mut self, d: usize, k: usize) -> Option<ChannelRecord> {
        let position = self
            .subs
            .iter()
            .position(|s| s.driver == d && s.index == k)?;
        Some(self.subs.remove(position).record)
    }

    /// The sub-channel records of driver `d`.
    pub(crate) fn subs_of(&self, d: usize) -> impl Iterator<Item = &ChannelRecord> {
        self.subs
            .iter()
            .filter(move |s| s.driver == d)
            .map(|s| &s.record)
    }

    /// Some sub-channel of driver `d` still has something at the host
    /// (open, opening, bound or its ring GPADL).
    pub(crate) fn subs_busy(&self, d: usize) -> bool {
        self.subs_of(d).any(ChannelRecord::busy)
    }

    pub(crate) fn step(&mut self, env: &mut dyn Env, d: usize, k: usize) -> Step {
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        let recovering = self.drivers[d].recovering;
        // A sub-channel is open only while its primary is: the driver asked
        // the device for it over the primary.
        let primary_open = k == 0 || self.presented(d) == ChannelState::Open;
        let Some(channel) = self.record(d, k) else {
            if recovering && k == 0 && !self.subs_busy(d) {
                self.finish_recovery(env, d);
            }
            return Step::Wait;
        };
        let relid = channel.offer.relid;
        if k > 0 && channel.want_open && !primary_open {
            // Its primary closed (or is closing, rescinded, restarting):
            // the driver opens it again after the primary.
            self.record_mut(d, k).want_open = false;
            return Step::Again;
        }
        let goal_open = channel.want_open
            && channel.failed.is_none()
            && !channel.rescinded
            && !recovering
            && !unloading;
        if goal_open {
            let Some(gpadl_id) = channel.gpadl else {
                return self.create_ring_gpadl(env, d, k);
            };
            match self.gpadls.state(gpadl_id) {
                Some(GpadlState::Created) => {}
                Some(_) => return Step::Wait,
                None => {
                    self.record_mut(d, k).gpadl = None;
                    return Step::Again;
                }
            }
            if !channel.open {
                if channel.open_pending.is_none() {
                    self.send_open(env, d, k, gpadl_id);
                }
                return Step::Wait;
            }
            if !channel.bound {
                return self.bind(env, d, k);
            }
            if k > 0 {
                return Step::Wait;
            }
            return match self.step_buffers(env, d, true) {
                BufferProgress::Acted => Step::Again,
                BufferProgress::Waiting | BufferProgress::Settled => Step::Wait,
            };
        }
        // Closing: undo in reverse order, each step confirmed. The VSC asks
        // for its data-buffer GPADLs again after it reopens.
        if channel.buffers.iter().any(|b| b.wanted) {
            for buffer in self.record_mut(d, k).buffers.iter_mut() {
                buffer.wanted = false;
            }
            return Step::Again;
        }
        if channel.bound {
            let unbind = synic::Request::Unbind { relid };
            if let Err(error) = channels::SYNIC_CALL.call(env, &unbind) {
                println!(env, "unbinding relid {} failed: {:?}", relid, error);
            }
            self.record_mut(d, k).bound = false;
            return Step::Again;
        }
        if channel.open_pending.is_some() {
            // The result decides whether there is anything to close.
            return Step::Wait;
        }
        if channel.open {
            // The primary closes after its sub-channels (as Linux does).
            if k == 0 && self.subs_busy(d) {
                return Step::Wait;
            }
            if !channel.rescinded {
                let mut close = CloseChannel::empty();
                close.child_relid = relid.into();
                self.post_control(env, close.as_bytes());
            }
            self.record_mut(d, k).open = false;
            return Step::Again;
        }
        // The data buffers' teardowns go out alongside the ring's.
        let buffers = if k == 0 {
            self.step_buffers(env, d, false)
        } else {
            BufferProgress::Settled
        };
        if matches!(buffers, BufferProgress::Acted) {
            return Step::Again;
        }
        let channel = self.record(d, k).expect("checked above");
        if let Some(gpadl_id) = channel.gpadl {
            match self.gpadls.state(gpadl_id) {
                Some(GpadlState::Created) => {
                    match self.gpadls.begin_teardown(gpadl_id) {
                        Ok(teardown) => self.post_control(env, teardown.as_bytes()),
                        Err(error) => println!(env, "GPADL {} teardown: {:?}", gpadl_id, error),
                    }
                    return Step::Wait;
                }
                Some(_) => return Step::Wait,
                None => {
                    self.record_mut(d, k).gpadl = None;
                    return Step::Again;
                }
            }
        }
        if matches!(buffers, BufferProgress::Waiting) {
            return Step::Wait;
        }
        // Quiescent: the host holds nothing of this channel any more.
        if k > 0 {
            if self.record(d, k).is_some_and(|c| c.rescinded) {
                let mut released = RelIdReleased::empty();
                released.child_relid = relid.into();
                self.post_control(env, released.as_bytes());
                println!(env, "relid {} (sub-channel {}) released", relid, k);
                self.remove_sub(d, k);
                self.status_dirty = true;
                return Step::Again;
            }
            return Step::Wait;
        }
        if self.record_mut(d, 0).rescinded {
            if self.subs_busy(d) || self.subs_of(d).any(|s| s.rescinded) {
                // Its sub-channels go first (the host rescinds them first).
                return Step::Wait;
            }
            // Sub-channels the host did not rescind with their primary:
            // nobody drives them any more; released when rescinded.
            for k in 1..=MAX_SUB_CHANNELS {
                if let Some(sub) = self.remove_sub(d, k) {
                    println!(
                        env,
                        "relid {} outlived its primary relid {}: left alone",
                        sub.offer.relid,
                        relid
                    );
                    self.leave_alone(env, sub.offer);
                }
            }
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            println!(env, "relid {} released", relid);
            let driver = &mut self.drivers[d];
            driver.channel = None;
            driver.last_rescinded = true;
            if let Some(offer) = driver.next_offer.take() {
                self.adopt(d, offer);
            }
            return Step::Again;
        }
        if recovering && !self.subs_busy(d) {
            self.finish_recovery(env, d);
            return Step::Again;
        }
        Step::Wait
    }

    pub(crate) fn channel_mut(&mut self, d: usize) -> &mut ChannelRecord {
        self.record_mut(d, 0)
    }

    /// The ring regions of channel `k` of driver `d`.
    pub(crate) fn ring_regions(wiring: &Wiring, k: usize) -> Option<[RegionName; 4]> {
        match k {
            0 => Some(wiring.rings),
            k => wiring.sub_rings.get(k - 1).copied(),
        }
    }

    /// The PFNs of the ring GPADL (out control page, out data, in control
    /// page, in data, each region's pages in order) and the downstream
    /// offset (the out ring's pages); `None` if a region is not host
    /// visible or not a whole-page, page-aligned area of a usable size.
    pub(crate) fn ring_pages(
        env: &mut dyn Env,
        rings: &[RegionName; 4],
    ) -> Option<(Vec<u64, MAX_RING_PAGES>, u32)> {
        let mut pfns: Vec<u64, MAX_RING_PAGES> = Vec::new();
        let mut downstream = 0;
        for (part, name) in rings.iter().enumerate() {
            let RegionAddress {
                guest_physical,
                len,
            } = env.region_address(*name)?;
            let control = part % 2 == 0;
            let pages = len / PAGE;
            let usable = if control { pages == 1 } else { pages >= 1 };
            if !guest_physical.is_multiple_of(PAGE as u64) || !len.is_multiple_of(PAGE) || !usable {
                return None;
            }
            for page in 0..pages {
                pfns.push((guest_physical >> 12) + page as u64).ok()?;
            }
            if part == 1 {
                downstream = pfns.len() as u32;
            }
        }
        Some((pfns, downstream))
    }

    pub(crate) fn create_ring_gpadl(&mut self, env: &mut dyn Env, d: usize, k: usize) -> Step {
        let wiring = self.drivers[d].wiring;
        let relid = self.record_mut(d, k).offer.relid;
        let pages = Self::ring_regions(&wiring, k).and_then(|rings| Self::ring_pages(env, &rings));
        let Some((pfns, _)) = pages else {
            println!(
                env,
                "{}: its ring regions are not host visible whole pages (at most {} in all)",
                wiring.name,
                MAX_RING_PAGES
            );
            self.record_mut(d, k).failed = Some(STATUS_GUEST_FAILURE);
            return Step::Again;
        };
        let gpadl_id = match self.gpadls.allocate(relid) {
            Ok(id) => id,
            Err(error) => {
                println!(env, "{}: no GPADL id: {:?}", wiring.name, error);
                self.record_mut(d, k).failed = Some(STATUS_GUEST_FAILURE);
                return Step::Again;
            }
        };
        let messages = match GpadlMessages::for_pages(relid, gpadl_id, &pfns) {
            Ok(messages) => messages,
            Err(error) => {
                println!(env, "{}: GPADL: {:?}", wiring.name, error);
                self.record_mut(d, k).failed = Some(STATUS_GUEST_FAILURE);
                return Step::Again;
            }
        };
        self.record_mut(d, k).gpadl = Some(gpadl_id);
        for message in messages {
            self.post_control(env, message.as_bytes());
        }
        Step::Wait
    }

    /// Move the data-buffer GPADLs one step towards what the VSC asked
    /// (`open`: the channel is open; otherwise every one goes).
    pub(crate) fn step_buffers(
        &mut self,
        env: &mut dyn Env,
        d: usize,
        open: bool,
    ) -> BufferProgress {
        let count = self.drivers[d].wiring.buffers.len().min(MAX_BUFFERS);
        let mut waiting = false;
        for b in 0..count {
            let record = self.channel_mut(d).buffers[b];
            let want = open && record.wanted && record.failed.is_none();
            let Some(gpadl_id) = record.gpadl else {
                if want {
                    self.create_buffer_gpadl(env, d, b);
                    return BufferProgress::Acted;
                }
                continue;
            };
            match self.gpadls.state(gpadl_id) {
                Some(GpadlState::Created) if !want => {
                    match self.gpadls.begin_teardown(gpadl_id) {
                        Ok(teardown) => self.post_control(env, teardown.as_bytes()),
                        Err(error) => println!(env, "GPADL {} teardown: {:?}", gpadl_id, error),
                    }
                    return BufferProgress::Acted;
                }
                Some(GpadlState::Created) => {}
                Some(GpadlState::Creating | GpadlState::TearingDown) => waiting = true,
                None => {
                    self.channel_mut(d).buffers[b].gpadl = None;
                    return BufferProgress::Acted;
                }
            }
        }
        if waiting {
            BufferProgress::Waiting
        } else {
            BufferProgress::Settled
        }
    }

    /// Describe data buffer `b` of driver `d` to the host. Its messages are
    /// produced as the host takes them (`flush_outbox`).
    fn create_buffer_gpadl(&mut self, env: &mut dyn Env, d: usize, b: usize) {
        let name = self.drivers[d].wiring.name;
        let relid = self.channel_mut(d).offer.relid;
        let address = self.drivers[d]
            .wiring
            .buffers
            .get(b)
            .and_then(|region| env.region_address(*region));
        let messages = match address {
            Some(RegionAddress {
                guest_physical,
                len,
            }) if guest_physical.is_multiple_of(PAGE as u64)
                && len.is_multiple_of(PAGE)
                && len > 0 =>
            {
                match self.gpadls.allocate(relid) {
                    Ok(gpadl_id) => GpadlMessages::for_consecutive_pages(
                        relid,
                        gpadl_id,
                        guest_physical >> 12,
                        len / PAGE,
                    )
                    .map_err(|error| (Some(gpadl_id), error)),
                    Err(error) => {
                        println!(env, "{}: no GPADL id for buffer {}: {:?}", name, b, error);
                        Err((None, vmbus_protocol::gpadl::GpadlError::NoPages))
                    }
                }
            }
            _ => {
                println!(
                    env,
                    "{}: buffer {} is not host visible whole pages", name, b
                );
                Err((None, vmbus_protocol::gpadl::GpadlError::NoPages))
            }
        };
        let messages = match messages {
            Ok(messages) if !self.gpadl_sends.is_full() => messages,
            other => {
                let gpadl_id = match other {
                    Ok(messages) => {
                        println!(env, "{}: {} GPADLs already being sent", name, GPADL_SENDS);
                        Some(messages.gpadl_id())
                    }
                    Err((id, error)) => {
                        println!(env, "{}: buffer {} GPADL: {:?}", name, b, error);
                        id
                    }
                };
                if let Some(id) = gpadl_id {
                    let _ = self.gpadls.abandon(id);
                }
                self.channel_mut(d).buffers[b].failed = Some(STATUS_GUEST_FAILURE);
                return;
            }
        };
        self.channel_mut(d).buffers[b].gpadl = Some(messages.gpadl_id());
        let _ = self.gpadl_sends.push_back(messages);
        self.flush_outbox(env);
    }

    pub(crate) fn send_open(&mut self, env: &mut dyn Env, d: usize, k: usize, gpadl_id: u32) {
        let wiring = self.drivers[d].wiring;
        let downstream = Self::ring_regions(&wiring, k)
            .and_then(|rings| Self::ring_pages(env, &rings))
            .map_or(0, |(_, offset)| offset);
        let open_id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1).max(1);
        let channel = self.record_mut(d, k);
        let mut open = OpenChannel::empty();
        open.child_relid = channel.offer.relid.into();
        open.open_id = open_id.into();
        open.ring_gpadl_id = gpadl_id.into();
        open.target_vp = channel.target_vp.into();
        open.downstream_ring_page_offset = downstream.into();
        open.user_data[..channel.user_data.len()].copy_from_slice(&channel.user_data);
        channel.open_pending = Some(open_id);
        let relid = channel.offer.relid;
        // The host may signal the channel before its OpenResult: synic
        // then knows those events are early, not stray.
        let opening = synic::Request::Opening { relid };
        if let Err(error) = channels::SYNIC_CALL.call(env, &opening) {
            println!(
                env,
                "telling synic relid {} opens failed: {:?}", relid, error
            );
        }
        self.post_control(env, open.as_bytes());
    }

    /// How synic signals driver `d`'s channel to the host: the offer's
    /// monitor id, and whether to mark the interrupt page's send half (a
    /// channel without a dedicated interrupt, before 5.0: only then does
    /// InitiateContact name the interrupt page to the host).
    pub(crate) fn signalling(&self, d: usize, k: usize) -> (Option<u8>, bool) {
        let Some(channel) = self.record(d, k) else {
            return (None, false);
        };
        let interrupt_page_known = self.version.is_some_and(|v| !v.uses_message_sint());
        (
            channel.offer.monitor_id,
            !channel.offer.dedicated_interrupt && interrupt_page_known,
        )
    }

    pub(crate) fn bind(&mut self, env: &mut dyn Env, d: usize, k: usize) -> Step {
        let name = self.drivers[d].wiring.name;
        let channel = self.record_mut(d, k);
        let (relid, connection_id) = (channel.offer.relid, channel.offer.connection_id);
        let (monitor_id, interrupt_page_bit) = self.signalling(d, k);
        let request = synic::Request::Bind {
            relid,
            connection_id,
            driver: self.drivers[d].wiring.id,
            channel: k as u8,
            monitor_id,
            interrupt_page_bit,
        };
        match channels::SYNIC_CALL.call(env, &request) {
            Ok(synic::Reply::Done) if k > 0 => {
                self.record_mut(d, k).bound = true;
                let now = env.now_ns();
                println!(
                    env,
                    "relid {} ({} sub-channel {}) open (guest time {} us)",
                    relid,
                    name,
                    k,
                    now / 1_000
                );
                let generation = &mut self.drivers[d].sub_generations[k - 1];
                *generation = generation.wrapping_add(1);
                Step::Wait
            }
            Ok(synic::Reply::Done) => {
                self.record_mut(d, k).bound = true;
                let now = env.now_ns();
                match self.drivers[d].faulted_at_ns.take() {
                    // The bench (`cargo xtask bench-restart`) reads the
                    // microseconds; the milliseconds are for people.
                    Some(at) => println!(
                        env,
                        "relid {} ({}) open again {} ms after its fault ({} us, guest time {} us)",
                        relid,
                        name,
                        now.saturating_sub(at) / 1_000_000,
                        now.saturating_sub(at) / 1_000,
                        now / 1_000
                    ),
                    None => println!(
                        env,
                        "relid {} ({}) open (guest time {} us)",
                        relid,
                        name,
                        now / 1_000
                    ),
                }
                self.drivers[d].generation = self.drivers[d].generation.wrapping_add(1);
                Step::Wait
            }
            other => {
                println!(
                    env,
                    "synic refused to bind relid {} to {}: {:?}", relid, name, other
                );
                self.record_mut(d, k).failed = Some(STATUS_GUEST_FAILURE);
                Step::Again
            }
        }
    }

    // ---- supervision ----
}

pub(crate) enum Step {
    Again,
    Wait,
}

pub(crate) enum BufferProgress {
    /// A message went out or a record changed: look again.
    Acted,
    /// A GPADL is being created or torn down: the host answers.
    Waiting,
    /// Every buffer is where the VSC wants it.
    Settled,
}

/// An open that will not be bound (it failed, or the channel was rescinded
/// first): synic stops treating the relid's events as early.
pub(crate) fn end_opening(env: &mut dyn Env, relid: u32) {
    let unbind = synic::Request::Unbind { relid };
    if let Err(error) = channels::SYNIC_CALL.call(env, &unbind) {
        println!(
            env,
            "ending the opening of relid {} failed: {:?}", relid, error
        );
    }
}
