//! Contact and version negotiation, and the session's end (Unload).

use super::*;

impl Vmbus {
    /// Offer `order[index]`, falling back past versions whose connection the
    /// host does not have.
    pub(crate) fn negotiate_from(&mut self, env: &mut dyn Env, mut index: usize) {
        let order = negotiation_order(OFFER_6_0);
        // Known by address only: the host and synic write them, we never do.
        let monitor = env.region_address(regions::MONITOR_PAGES);
        let monitor_gpa = monitor.map_or(0, |address| address.guest_physical);
        let interrupt_page_gpa = match monitor {
            Some(address) if address.len >= INTERRUPT_PAGE_OFFSET as usize + PAGE => {
                address.guest_physical + INTERRUPT_PAGE_OFFSET
            }
            _ => 0,
        };
        while let Some(&version) = order.get(index) {
            let mut contact = InitiateContact::empty();
            contact.version_requested = version.0.into();
            contact.target_vcpu = 0.into();
            contact.interrupt_page_or_target_info = if version.uses_message_sint() {
                InitiateContact::target_info(VMBUS_MESSAGE_SINT, 0, 0)
            } else {
                // Before 5.0 the field names the interrupt page, whose send
                // half the guest marks for channels without a dedicated
                // interrupt (as Linux does).
                interrupt_page_gpa
            }
            .into();
            contact.monitor_page1 = monitor_gpa.into();
            contact.monitor_page2 = if monitor_gpa == 0 {
                0
            } else {
                monitor_gpa + PAGE as u64
            }
            .into();
            let connection = version.initiate_contact_connection_id();
            let mut result = post_now(env, connection, contact.as_bytes());
            for _ in 1..CONTACT_TRIES {
                if result != Err(PostError::Hypercall(HV_STATUS_INSUFFICIENT_BUFFERS)) {
                    break;
                }
                result = post_now(env, connection, contact.as_bytes());
            }
            match result {
                Ok(()) => {
                    self.phase = Phase::Negotiating { index };
                    return;
                }
                Err(PostError::Hypercall(HV_STATUS_INVALID_CONNECTION_ID))
                    if version.uses_message_sint() =>
                {
                    println!(
                        env,
                        "VMBus {}: connection {} unknown to the host (older host), trying {}",
                        version,
                        connection,
                        order.get(index + 1).map_or(ProtocolVersion(0), |v| *v)
                    );
                    index += 1;
                }
                Err(error) => {
                    println!(env, "InitiateContact {} failed: {:?}", version, error);
                    self.phase = Phase::Disconnected;
                    return;
                }
            }
        }
        println!(
            env,
            "no VMBus version in common with the host: bus disconnected"
        );
        self.phase = Phase::Disconnected;
    }

    pub(crate) fn on_version_response(
        &mut self,
        env: &mut dyn Env,
        supported: bool,
        msg_conn_id: u32,
    ) {
        let Phase::Negotiating { index } = self.phase else {
            self.reject(env, format_args!("VersionResponse without InitiateContact"));
            return;
        };
        let order = negotiation_order(OFFER_6_0);
        let version = order[index];
        if !supported {
            println!(env, "VMBus {} refused by the host", version);
            self.negotiate_from(env, index + 1);
            return;
        }
        self.version = Some(version);
        self.message_connection = version.message_connection_id(msg_conn_id);
        println!(
            env,
            "VMBus {} negotiated; control messages to connection {}",
            version,
            self.message_connection
        );
        self.phase = Phase::RequestingOffers;
        self.post_control(env, RequestOffers::empty().as_bytes());
        self.status_dirty = true;
    }

    // ---- host messages ----

    pub(crate) fn start_unload(&mut self, env: &mut dyn Env, power_off_code: Option<u8>) {
        self.power_off_code = power_off_code;
        match self.phase {
            Phase::RequestingOffers | Phase::Running => {
                println!(env, "unloading VMBus");
                self.phase = Phase::Unloading { unload_sent: false };
                for d in 0..self.drivers.len() {
                    self.reconcile(env, d);
                }
                self.maybe_unload(env);
            }
            Phase::Negotiating { .. } | Phase::Disconnected => {
                // Nothing to unload from the host.
                self.phase = Phase::Unloaded;
                if let Some(code) = power_off_code {
                    println!(env, "VMBus not connected; powering off with code {}", code);
                    env.power_off(code);
                }
            }
            Phase::Unloading { .. } | Phase::Unloaded => {}
        }
    }

    pub(crate) fn maybe_unload(&mut self, env: &mut dyn Env) {
        if self.phase != (Phase::Unloading { unload_sent: false }) {
            return;
        }
        let busy = self.find_channel(ChannelRecord::busy).is_some();
        if busy || !self.gpadls.is_empty() {
            return;
        }
        self.phase = Phase::Unloading { unload_sent: true };
        self.post_control(env, Unload::empty().as_bytes());
    }

    // ---- what VSCs and clients see ----
}
