//! Messages from the host: the synic queue, each slot copied out and
//! parsed, offers, rescinds and the responses to what we asked; and posting
//! our own messages.

use super::*;

impl Vmbus {
    pub(crate) fn reject(&mut self, env: &mut dyn Env, why: core::fmt::Arguments<'_>) {
        self.counters.rejected = self.counters.rejected.wrapping_add(1);
        if self.counters.rejected <= REJECTIONS_LOGGED {
            println!(env, "rejected from host: {}", why);
        } else if self.counters.rejected == REJECTIONS_LOGGED + 1 {
            println!(env, "rejected from host: (further rejections only counted)");
        }
    }

    // ---- posting ----

    /// Queue a message for the host and try to send everything queued.
    pub(crate) fn post(&mut self, env: &mut dyn Env, connection_id: u32, bytes: &[u8]) {
        let Some(payload) = to_payload(bytes) else {
            println!(
                env,
                "a message of {} bytes does not fit a post",
                bytes.len()
            );
            return;
        };
        if self.outbox.push_back((connection_id, payload)).is_err() {
            println!(env, "outbox full: message type {} dropped", bytes[0]);
            self.counters.posts_failed = self.counters.posts_failed.wrapping_add(1);
            return;
        }
        self.flush_outbox(env);
    }

    pub(crate) fn post_control(&mut self, env: &mut dyn Env, bytes: &[u8]) {
        let connection = self.message_connection;
        self.post(env, connection, bytes);
    }

    /// Send queued messages in order; stop at InsufficientBuffers (the host
    /// drains its port and answers, and the next event retries).
    pub(crate) fn flush_outbox(&mut self, env: &mut dyn Env) {
        while let Some((connection_id, payload)) = self.outbox.front() {
            let connection_id = *connection_id;
            let payload = payload.clone();
            match post_now(env, connection_id, &payload) {
                Ok(()) => {}
                Err(PostError::Hypercall(HV_STATUS_INSUFFICIENT_BUFFERS))
                | Err(PostError::Call(component_api::CallError::ServerFaulted)) => {
                    // The host's port is full, or synic is being restarted
                    // (its news in the queue is the next event): retry then.
                    self.counters.posts_deferred = self.counters.posts_deferred.wrapping_add(1);
                    return;
                }
                Err(error) => {
                    self.counters.posts_failed = self.counters.posts_failed.wrapping_add(1);
                    println!(
                        env,
                        "posting message type {} to connection {} failed: {:?}",
                        payload.first().copied().unwrap_or(0),
                        connection_id,
                        error
                    );
                }
            }
            self.outbox.pop_front();
        }
        self.flush_gpadl_sends(env);
    }

    /// Post the next messages of data-buffer GPADLs, one GPADL at a time
    /// and after everything in the outbox, until the host's port is full.
    pub(crate) fn flush_gpadl_sends(&mut self, env: &mut dyn Env) {
        let connection_id = self.message_connection;
        // Bounded: each turn posts a message or ends a send or returns.
        for _ in 0..4 * vmbus_protocol::gpadl::MAX_SINGLE_RANGE_PFNS {
            let Some(send) = self.gpadl_sends.front_mut() else {
                return;
            };
            let mut resumed = send.clone();
            let Some(message) = resumed.next() else {
                self.gpadl_sends.pop_front();
                continue;
            };
            match post_now(env, connection_id, message.as_bytes()) {
                Ok(()) => *send = resumed,
                Err(PostError::Hypercall(HV_STATUS_INSUFFICIENT_BUFFERS)) => {
                    self.counters.posts_deferred = self.counters.posts_deferred.wrapping_add(1);
                    return;
                }
                Err(error) => {
                    // The host will never see this GPADL whole: give it up
                    // and tell its VSC.
                    self.counters.posts_failed = self.counters.posts_failed.wrapping_add(1);
                    let gpadl_id = send.gpadl_id();
                    println!(env, "posting GPADL {} failed: {:?}", gpadl_id, error);
                    self.gpadl_sends.pop_front();
                    self.abandon_buffer_gpadl(gpadl_id, STATUS_GUEST_FAILURE);
                }
            }
        }
    }

    /// A data-buffer GPADL the host will not create: retire the id, stop
    /// posting it, and mark its buffer failed.
    pub(crate) fn abandon_buffer_gpadl(&mut self, gpadl_id: u32, status: u32) {
        let _ = self.gpadls.abandon(gpadl_id);
        let mut remaining: Deque<GpadlMessages<'static>, GPADL_SENDS> = Deque::new();
        while let Some(send) = self.gpadl_sends.pop_front() {
            if send.gpadl_id() != gpadl_id {
                let _ = remaining.push_back(send);
            }
        }
        self.gpadl_sends = remaining;
        if let Some((d, b)) = self.buffer_with_gpadl(gpadl_id) {
            if let Some(channel) = self.drivers[d].channel.as_mut() {
                channel.buffers[b].gpadl = None;
                channel.buffers[b].failed = Some(status);
            }
            self.touch(d);
        }
    }

    pub(crate) fn buffer_with_gpadl(&self, gpadl_id: u32) -> Option<(usize, usize)> {
        self.drivers.iter().enumerate().find_map(|(d, driver)| {
            let channel = driver.channel.as_ref()?;
            let b = channel
                .buffers
                .iter()
                .position(|b| b.gpadl == Some(gpadl_id))?;
            Some((d, b))
        })
    }

    // ---- negotiation ----

    pub(crate) fn drain_queue(&mut self, env: &mut dyn Env) {
        let mut slot = [0u8; vmbus_ipc::MESSAGE_QUEUE_SLOT];
        loop {
            let Some(queue) = self.queue.as_mut() else {
                return;
            };
            match queue.pop(&mut slot) {
                Ok(Some(len)) => {
                    let copy = slot;
                    self.on_slot(env, &copy[..len]);
                }
                Ok(None) => match queue.prepare_to_sleep() {
                    Ok(true) | Err(_) => break,
                    Ok(false) => continue,
                },
                Err(error) => {
                    println!(env, "synic message queue corrupt: {:?}", error);
                    break;
                }
            }
        }
        if let Some(queue) = self.queue.as_mut() {
            if queue.producer_needs_signal() {
                env.notify(channels::SYNIC);
            }
        }
        let touched = core::mem::take(&mut self.touched);
        for d in 0..self.drivers.len() {
            if touched & (1 << d) != 0 {
                self.reconcile(env, d);
            }
        }
    }

    /// One synic message slot (256 bytes) as synic copied it.
    pub(crate) fn on_slot(&mut self, env: &mut dyn Env, slot: &[u8]) {
        self.counters.messages = self.counters.messages.wrapping_add(1);
        if slot.len() != vmbus_ipc::MESSAGE_SLOT_BYTES {
            self.reject(env, format_args!("slot of {} bytes", slot.len()));
            return;
        }
        let kind = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
        if kind == vmbus_ipc::SYNIC_RESTARTED_MESSAGE_TYPE {
            // synic's own news (no host message has this type).
            self.on_synic_restarted(env);
            return;
        }
        let size = slot[4] as usize;
        if kind != hyperv_defs::message_type::VMBUS || size > MAX_MESSAGE_SIZE {
            self.reject(env, format_args!("slot type {:#x} size {}", kind, size));
            return;
        }
        let payload = &slot[16..16 + size];
        let parse_version = match self.phase {
            Phase::Negotiating { index } => negotiation_order(OFFER_6_0)[index],
            _ => match self.version {
                Some(version) => version,
                None => {
                    self.reject(env, format_args!("message before negotiation"));
                    return;
                }
            },
        };
        match parse(payload, parse_version) {
            Ok(message) => self.on_message(env, message),
            Err(error) => self.reject(env, format_args!("{}", error)),
        }
    }

    pub(crate) fn on_message(&mut self, env: &mut dyn Env, message: ChannelMessage) {
        if self.recovery.is_some() {
            self.on_message_while_recovering(env, message);
            return;
        }
        match message {
            ChannelMessage::VersionResponse(response) => self.on_version_response(
                env,
                response.version_supported != 0,
                response.msg_conn_id.get(),
            ),
            ChannelMessage::VersionResponse2(response) => self.on_version_response(
                env,
                response.version_supported != 0,
                response.msg_conn_id.get(),
            ),
            ChannelMessage::OfferChannel(offer) => self.on_offer(env, &offer),
            ChannelMessage::ModifyChannelResponse(response) => {
                self.on_modify_response(env, response.child_relid.get(), response.status.get())
            }
            ChannelMessage::AllOffersDelivered(_) => {
                if self.phase == Phase::RequestingOffers {
                    self.phase = Phase::Running;
                    let claimed = self.drivers.iter().filter(|d| d.channel.is_some()).count();
                    println!(
                        env,
                        "all offers delivered: {} with a driver, {} left alone",
                        claimed,
                        self.unclaimed.len()
                    );
                    self.status_dirty = true;
                } else {
                    let phase = self.phase;
                    self.reject(env, format_args!("AllOffersDelivered while {:?}", phase));
                }
            }
            ChannelMessage::RescindChannelOffer(rescind) => {
                self.on_rescind(env, rescind.child_relid.get())
            }
            ChannelMessage::GpadlCreated(created) => self.on_gpadl_created(env, &created),
            ChannelMessage::OpenChannelResult(result) => self.on_open_result(
                env,
                result.child_relid.get(),
                result.open_id.get(),
                result.status.get(),
            ),
            ChannelMessage::GpadlTorndown(torndown) => match self.gpadls.on_torndown(&torndown) {
                Ok(_) => {
                    let id = torndown.gpadl_id.get();
                    if let Some((d, k)) = self.channel_with_gpadl(id) {
                        self.record_mut(d, k).gpadl = None;
                        self.touch(d);
                    } else if let Some((d, b)) = self.buffer_with_gpadl(id) {
                        if let Some(channel) = self.drivers[d].channel.as_mut() {
                            channel.buffers[b].gpadl = None;
                        }
                        self.touch(d);
                    }
                }
                Err(error) => self.reject(env, format_args!("GpadlTorndown: {:?}", error)),
            },
            ChannelMessage::UnloadResponse(_) => {
                if self.phase == (Phase::Unloading { unload_sent: true }) {
                    self.phase = Phase::Unloaded;
                    match self.power_off_code {
                        Some(code) => {
                            println!(env, "VMBus unloaded; powering off with code {}", code);
                            env.power_off(code);
                        }
                        None => println!(env, "VMBus unloaded"),
                    }
                } else {
                    self.reject(env, format_args!("UnloadResponse without Unload"));
                }
            }
            other => self.reject(env, format_args!("unexpected {:?}", MessageName(&other))),
        }
    }

    pub(crate) fn relid_in_use(&self, relid: u32) -> bool {
        self.unclaimed.iter().any(|o| o.relid == relid)
            || self.channel_with_relid(relid).is_some()
            || self
                .drivers
                .iter()
                .any(|d| d.next_offer.as_ref().is_some_and(|o| o.relid == relid))
    }

    pub(crate) fn on_offer(&mut self, env: &mut dyn Env, message: &OfferChannel) {
        if !matches!(
            self.phase,
            Phase::RequestingOffers | Phase::Running | Phase::Unloading { .. }
        ) {
            let phase = self.phase;
            self.reject(env, format_args!("offer while {:?}", phase));
            return;
        }
        let relid = message.child_relid.get();
        // Event flags are numbered by relid: 1..2047.
        if relid == 0 || relid >= hyperv_defs::EVENT_FLAGS_PER_SINT as u32 {
            self.reject(env, format_args!("offer with relid {}", relid));
            return;
        }
        if self.relid_in_use(relid) {
            self.reject(env, format_args!("second offer of relid {}", relid));
            return;
        }
        let monitor_id = message.monitor_allocated().then_some(message.monitor_id);
        if monitor_id.is_some_and(|id| id > hyperv_defs::MONITOR_ID_MAX) {
            self.reject(
                env,
                format_args!(
                    "offer of relid {} with monitor id {}",
                    relid, message.monitor_id
                ),
            );
            return;
        }
        let offer = Offer {
            relid,
            connection_id: message.connection_id.get(),
            class: *message.interface_type.to_uuid().as_bytes(),
            instance: *message.interface_instance.to_uuid().as_bytes(),
            user_defined: Vec::from_slice(&message.user_def).unwrap_or_default(),
            monitor_id,
            dedicated_interrupt: message.is_dedicated_interrupt(),
        };
        let class_name =
            vmbus_protocol::guid::class::name_of(uuid(&offer.class)).unwrap_or("unknown class");
        let sub_channel_index = message.sub_channel_index.get();
        let sub_channel = sub_channel_index != 0;
        if sub_channel {
            self.on_sub_channel_offer(env, offer, sub_channel_index);
            return;
        }
        let candidate = self.drivers.iter().position(|d| {
            d.wiring.classes.iter().any(|(class, instance)| {
                *class == offer.class && instance.is_none_or(|i| i == offer.instance)
            })
        });
        let unloading = matches!(self.phase, Phase::Unloading { .. });
        match candidate {
            Some(d)
                if !sub_channel
                    && !unloading
                    && !self.drivers[d].held
                    && self.drivers[d].next_offer.is_none() =>
            {
                let driver = &mut self.drivers[d];
                println!(
                    env,
                    "offer relid {}: {} {} -> {}",
                    relid,
                    class_name,
                    uuid(&offer.instance),
                    driver.wiring.name
                );
                if driver.channel.is_some() {
                    // The previous channel is still being released (rescinded):
                    // this offer waits for it.
                    if driver.channel.as_ref().is_some_and(|c| c.rescinded) {
                        driver.next_offer = Some(offer);
                    } else {
                        println!(
                            env,
                            "  {} already drives relid {}: offer left alone",
                            driver.wiring.name,
                            driver.channel.as_ref().map_or(0, |c| c.offer.relid)
                        );
                        self.leave_alone(env, offer);
                    }
                    return;
                }
                self.adopt(d, offer);
            }
            _ if self.unclaimed.is_full() => {
                // A host offering without end: no more log lines or memory.
                self.counters.offers_dropped = self.counters.offers_dropped.wrapping_add(1);
            }
            _ => {
                println!(
                    env,
                    "offer relid {}: {} {} (class {}){}: left alone",
                    relid,
                    class_name,
                    uuid(&offer.instance),
                    uuid(&offer.class),
                    if candidate.is_some() {
                        " driver unavailable"
                    } else {
                        " no driver"
                    }
                );
                self.leave_alone(env, offer);
            }
        }
    }

    /// An offer with sub-channel index `index`: it belongs to the primary
    /// of the same class and instance, and goes to that primary's driver if
    /// its description gives it that many sub-channels. Anything else (no
    /// such primary, an index beyond the driver's, a second offer of the
    /// index) is counted and left alone (released when rescinded).
    fn on_sub_channel_offer(&mut self, env: &mut dyn Env, offer: Offer, index: u16) {
        let primary = self.drivers.iter().position(|d| {
            d.channel.as_ref().is_some_and(|c| {
                !c.rescinded && c.offer.class == offer.class && c.offer.instance == offer.instance
            })
        });
        let k = usize::from(index);
        let unloading = matches!(self.phase, Phase::Unloading { .. });
        let refusal = match primary {
            None => Some("no primary"),
            Some(d) if k > self.drivers[d].wiring.sub_rings.len().min(MAX_SUB_CHANNELS) => {
                Some("beyond the driver's sub-channels")
            }
            Some(d) if self.record(d, k).is_some() => Some("index already offered"),
            Some(_) if self.subs.is_full() => Some("no room for more sub-channels"),
            Some(d) if self.drivers[d].held || self.drivers[d].recovering => {
                Some("driver unavailable")
            }
            Some(_) if unloading => Some("unloading"),
            Some(_) => None,
        };
        if let Some(why) = refusal {
            self.counters.sub_channel_offers_refused =
                self.counters.sub_channel_offers_refused.wrapping_add(1);
            if self.unclaimed.is_full() {
                self.counters.offers_dropped = self.counters.offers_dropped.wrapping_add(1);
                return;
            }
            println!(
                env,
                "offer relid {}: sub-channel {} of {} ({}): left alone",
                offer.relid,
                index,
                uuid(&offer.instance),
                why
            );
            self.leave_alone(env, offer);
            return;
        }
        let d = primary.expect("refused above without a primary");
        println!(
            env,
            "offer relid {}: sub-channel {} -> {}", offer.relid, index, self.drivers[d].wiring.name
        );
        let sub = SubChannel {
            driver: d,
            index: k,
            record: ChannelRecord::new(offer),
        };
        if self.subs.push(sub).is_err() {
            return; // checked above
        }
        let generation = &mut self.drivers[d].sub_generations[k - 1];
        *generation = generation.wrapping_add(1);
        self.status_dirty = true;
        self.touch(d);
    }

    pub(crate) fn leave_alone(&mut self, env: &mut dyn Env, offer: Offer) {
        let relid = offer.relid;
        if self.unclaimed.push(offer).is_err() {
            self.counters.offers_dropped = self.counters.offers_dropped.wrapping_add(1);
            println!(
                env,
                "{} offers without a driver: relid {} and later ones forgotten",
                MAX_UNCLAIMED,
                relid
            );
        }
        self.status_dirty = true;
    }

    pub(crate) fn adopt(&mut self, d: usize, offer: Offer) {
        let driver = &mut self.drivers[d];
        driver.channel = Some(ChannelRecord::new(offer));
        driver.last_rescinded = false;
        driver.generation = driver.generation.wrapping_add(1);
        driver.versions = None;
        self.status_dirty = true;
    }

    /// (driver, channel index) of the first channel record that matches.
    pub(crate) fn find_channel(
        &self,
        matches: impl Fn(&ChannelRecord) -> bool,
    ) -> Option<(usize, usize)> {
        (0..self.drivers.len()).find_map(|d| {
            (0..=MAX_SUB_CHANNELS)
                .find(|k| self.record(d, *k).is_some_and(&matches))
                .map(|k| (d, k))
        })
    }

    pub(crate) fn channel_with_relid(&self, relid: u32) -> Option<(usize, usize)> {
        self.find_channel(|c| c.offer.relid == relid)
    }

    /// The channel whose ring GPADL is `gpadl_id`.
    pub(crate) fn channel_with_gpadl(&self, gpadl_id: u32) -> Option<(usize, usize)> {
        self.find_channel(|c| c.gpadl == Some(gpadl_id))
    }

    pub(crate) fn on_rescind(&mut self, env: &mut dyn Env, relid: u32) {
        if let Some(position) = self.unclaimed.iter().position(|o| o.relid == relid) {
            self.unclaimed.swap_remove(position);
            println!(env, "relid {} (no driver) rescinded and released", relid);
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            self.status_dirty = true;
            return;
        }
        if let Some(d) = self
            .drivers
            .iter()
            .position(|d| d.next_offer.as_ref().is_some_and(|o| o.relid == relid))
        {
            // Never adopted: nothing to undo.
            self.drivers[d].next_offer = None;
            println!(
                env,
                "relid {} rescinded before {} took it; released",
                relid,
                self.drivers[d].wiring.name
            );
            let mut released = RelIdReleased::empty();
            released.child_relid = relid.into();
            self.post_control(env, released.as_bytes());
            return;
        }
        let Some((d, k)) = self.channel_with_relid(relid) else {
            self.reject(env, format_args!("rescind of unknown relid {}", relid));
            return;
        };
        let name = self.drivers[d].wiring.name;
        let Some(channel) = Self::record_in(&mut self.drivers, &mut self.subs, d, k) else {
            return;
        };
        if channel.rescinded {
            self.reject(env, format_args!("second rescind of relid {}", relid));
            return;
        }
        channel.rescinded = true;
        // Fail the waiters: the host answers nothing more for this relid
        // except GpadlTorndown for a GPADL it created.
        if channel.open_pending.take().is_some() {
            println!(env, "relid {} ({}) rescinded while opening", relid, name);
            end_opening(env, relid);
        } else {
            println!(env, "relid {} ({}) rescinded", relid, name);
        }
        if let Some(id) = channel.gpadl {
            if self.gpadls.state(id) == Some(GpadlState::Creating) {
                // The host dropped it with the channel: retire the id so a
                // late GpadlCreated is refused as unknown.
                let _ = self.gpadls.abandon(id);
                channel.gpadl = None;
            }
        }
        let creating: Vec<u32, MAX_BUFFERS> = channel
            .buffers
            .iter()
            .filter_map(|b| b.gpadl)
            .filter(|id| self.gpadls.state(*id) == Some(GpadlState::Creating))
            .collect();
        for id in creating {
            self.abandon_buffer_gpadl(id, STATUS_GUEST_FAILURE);
        }
        self.touch(d);
    }

    pub(crate) fn on_gpadl_created(&mut self, env: &mut dyn Env, created: &GpadlCreated) {
        let id = created.gpadl_id.get();
        match self.gpadls.on_created(created) {
            Ok(CreationOutcome::Created) => {
                if let Some((d, _)) = self.channel_with_gpadl(id) {
                    self.touch(d);
                } else if let Some((d, b)) = self.buffer_with_gpadl(id) {
                    println!(
                        env,
                        "{}: buffer {} is GPADL {}", self.drivers[d].wiring.name, b, id
                    );
                    self.touch(d);
                }
            }
            Ok(CreationOutcome::Failed { status }) => {
                if let Some((d, k)) = self.channel_with_gpadl(id) {
                    println!(
                        env,
                        "{}: GPADL refused by the host (status {:#x})",
                        self.drivers[d].wiring.name,
                        status
                    );
                    let channel = self.record_mut(d, k);
                    channel.gpadl = None;
                    if channel.want_open {
                        channel.failed = Some(status);
                    }
                    self.touch(d);
                } else if let Some((d, b)) = self.buffer_with_gpadl(id) {
                    println!(
                        env,
                        "{}: buffer {} GPADL refused by the host (status {:#x})",
                        self.drivers[d].wiring.name,
                        b,
                        status
                    );
                    // Already retired by the table; stop posting its bodies.
                    self.abandon_buffer_gpadl(id, status);
                }
            }
            Err(error) => self.reject(env, format_args!("GpadlCreated: {:?}", error)),
        }
    }

    pub(crate) fn on_modify_response(&mut self, env: &mut dyn Env, relid: u32, status: u32) {
        let d = self.drivers.iter().position(|d| {
            d.channel
                .as_ref()
                .is_some_and(|c| c.offer.relid == relid && c.retargeting.is_some())
        });
        let Some(d) = d else {
            self.reject(
                env,
                format_args!("ModifyChannelResponse for relid {} nobody waits for", relid),
            );
            return;
        };
        let name = self.drivers[d].wiring.name;
        let event = self.drivers[d].wiring.event;
        let channel = self.channel_mut(d);
        let Some(target_vp) = channel.retargeting.take() else {
            return;
        };
        if status == 0 {
            channel.target_vp = target_vp;
            channel.retarget_refused = None;
            println!(
                env,
                "relid {} ({}) now targets VP {}", relid, name, target_vp
            );
        } else {
            channel.retarget_refused = Some(status);
            println!(
                env,
                "relid {} ({}): VP {} refused (status {:#x})", relid, name, target_vp, status
            );
        }
        env.notify(event);
    }

    pub(crate) fn on_open_result(
        &mut self,
        env: &mut dyn Env,
        relid: u32,
        open_id: u32,
        status: u32,
    ) {
        let found =
            self.find_channel(|c| c.offer.relid == relid && c.open_pending == Some(open_id));
        let Some((d, k)) = found else {
            self.reject(
                env,
                format_args!(
                    "OpenChannelResult for relid {} open id {} nobody waits for",
                    relid, open_id
                ),
            );
            return;
        };
        let name = self.drivers[d].wiring.name;
        if let Some(channel) = Self::record_in(&mut self.drivers, &mut self.subs, d, k) {
            channel.open_pending = None;
            if status == 0 {
                channel.open = true;
            } else {
                println!(
                    env,
                    "{}: OpenChannel of relid {} failed (status {:#x})", name, relid, status
                );
                if channel.want_open {
                    channel.failed = Some(status);
                }
                end_opening(env, relid);
            }
        }
        self.touch(d);
    }

    // ---- the channel engine ----
}

/// A channel message's name for the log, without its (host-chosen) contents.
pub(crate) struct MessageName<'a>(&'a ChannelMessage);

pub(crate) fn to_payload(bytes: &[u8]) -> Option<Vec<u8, MAX_POST_PAYLOAD>> {
    Vec::from_slice(bytes).ok()
}

/// Why posting failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostError {
    Hypercall(u16),
    Call(component_api::CallError),
    Unexpected,
}

pub(crate) fn post_now(
    env: &mut dyn Env,
    connection_id: u32,
    bytes: &[u8],
) -> Result<(), PostError> {
    let Some(payload) = to_payload(bytes) else {
        return Err(PostError::Unexpected);
    };
    let request = synic::Request::PostMessage {
        connection_id,
        payload,
    };
    match channels::SYNIC_CALL.call(env, &request) {
        Ok(synic::Reply::Done) => Ok(()),
        Ok(synic::Reply::HypercallFailed { status }) => Err(PostError::Hypercall(status)),
        Ok(_) => Err(PostError::Unexpected),
        Err(error) => Err(PostError::Call(error)),
    }
}

impl core::fmt::Debug for MessageName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self.0 {
            ChannelMessage::RequestOffers(_) => "RequestOffers",
            ChannelMessage::OpenChannel(_) | ChannelMessage::OpenChannel2(_) => "OpenChannel",
            ChannelMessage::CloseChannel(_) => "CloseChannel",
            ChannelMessage::GpadlHeader(_) => "GpadlHeader",
            ChannelMessage::GpadlBody(_) => "GpadlBody",
            ChannelMessage::GpadlTeardown(_) => "GpadlTeardown",
            ChannelMessage::RelIdReleased(_) => "RelIdReleased",
            ChannelMessage::InitiateContact(_) | ChannelMessage::InitiateContact2(_) => {
                "InitiateContact"
            }
            ChannelMessage::Unload(_) => "Unload",
            ChannelMessage::TlConnectRequest(_) | ChannelMessage::TlConnectRequest2(_) => {
                "TlConnectRequest"
            }
            ChannelMessage::TlConnectResult(_) => "TlConnectResult",
            ChannelMessage::ModifyChannel(_) => "ModifyChannel",
            ChannelMessage::ModifyChannelResponse(_) => "ModifyChannelResponse",
            ChannelMessage::ModifyConnection(_) => "ModifyConnection",
            ChannelMessage::ModifyConnectionResponse(_) => "ModifyConnectionResponse",
            ChannelMessage::Pause(_) => "Pause",
            ChannelMessage::PauseResponse(_) => "PauseResponse",
            ChannelMessage::Resume(_) => "Resume",
            _ => "message",
        };
        f.write_str(name)
    }
}
