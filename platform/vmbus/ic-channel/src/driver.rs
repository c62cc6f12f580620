//! The `Component` every IC driver is: one [`IcChannel`] and one service,
//! with the notifications and protected calls routed by the driver's
//! generated ids. A driver crate writes only its service and names the
//! component `pub type NAME = IcDriver<NameService>;`.

use crate::channel::{ChannelIds, IcChannel, IcService, CHANNEL_STALLED};
use component_api::{Channel, ChannelSet, Component, Env, Refusal};

/// A service that can run as a whole driver.
pub trait DriverService: IcService + Default {
    /// The driver's generated ids (see [`driver_ids!`](crate::driver_ids)).
    const IDS: ChannelIds;

    /// Called once when the driver starts (and after every restart),
    /// before the channel is looked at: a service that keeps state in a
    /// region of its own (one that outlives a restart) loads it here.
    fn start(&mut self, _env: &mut dyn Env) {}

    /// Whether this client call needs the channel to be served correctly
    /// (its answer depends on the host reading and writing the rings). Such
    /// calls are refused with [`CHANNEL_STALLED`]
    /// while the host does not read the channel (a host fault) rather than
    /// answered from state the host can no longer update.
    fn needs_channel(&self, _channel: Channel, _message: &[u8]) -> bool {
        false
    }

    /// Serve one protected call on `channel` (from a client: the
    /// generated `serve` function of the driver's protocol tells them
    /// apart and refuses every other channel): write the answer into
    /// `reply` and return its length. Services without clients keep the
    /// default, which refuses.
    fn serve_client(
        &mut self,
        _env: &mut dyn Env,
        _channel: Channel,
        _message: &[u8],
        _reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        Err(Refusal::NOT_SERVED)
    }
}

/// An IC driver: the channel loop and its service.
pub struct IcDriver<S> {
    pub channel: IcChannel,
    pub service: S,
}

impl<S: DriverService> Component for IcDriver<S> {
    fn init(env: &mut dyn Env) -> Self {
        let mut driver = IcDriver {
            channel: IcChannel::new(S::IDS),
            service: S::default(),
        };
        driver.service.start(env);
        // The offer may be there already (we were restarted): ask now.
        driver.channel.on_bus_event(env, &mut driver.service);
        driver
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(S::IDS.vmbus_event) {
            self.channel.on_bus_event(env, &mut self.service);
        }
        if set.contains(S::IDS.synic) {
            self.channel.poll(env, &mut self.service);
        }
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if self.channel.answer_waiting() {
            // The host may have made space without signalling: look now, so
            // a fault is only what is still true.
            self.channel.poll(env, &mut self.service);
        }
        if self.service.needs_channel(channel, message) && self.channel.host_fault(env) {
            return Err(CHANNEL_STALLED);
        }
        self.service.serve_client(env, channel, message, reply)
    }
}

/// The [`ChannelIds`] of an IC driver, from the `regions` and `channels`
/// modules its build script generates (in scope where this is used). Every
/// IC driver's description gives its ends the same names: regions
/// `ring_out_control`, `ring_out`, `ring_in_control`, `ring_in`, channels
/// `synic`, `synic_call`, `vmbus` and `vmbus_event` (the names the
/// `[[driver]]` expansion gives them).
#[macro_export]
macro_rules! driver_ids {
    () => {
        $crate::ChannelIds {
            rings: $crate::RingRegions {
                out_control: regions::RING_OUT_CONTROL,
                out_data: regions::RING_OUT,
                in_control: regions::RING_IN_CONTROL,
                in_data: regions::RING_IN,
            },
            synic_call: channels::SYNIC_CALL,
            vmbus: channels::VMBUS,
            vmbus_event: channels::VMBUS_EVENT,
            synic: channels::SYNIC,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_service::{Echo, CLIENT, IDS};
    use crate::testing::*;
    use env_double::EnvDouble;
    use vmbus_protocol::ic::STATUS_OK;

    #[test]
    fn routes_bus_events_ring_signals_and_client_calls() {
        let mut env = EnvDouble::new();
        let mut host = TestHost::new(&mut env, IDS);
        let mut driver = IcDriver::<Echo>::init(&mut env);
        assert_eq!(host.bus.borrow().open_requests, 1, "asks at init");
        driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
        assert!(driver.channel.is_open());
        host.send(&negotiate_request(&[(3, 0)], &[(3, 0)]));
        host.send(&heartbeat(1));
        // A bus event does not read the ring; synic's notification does.
        driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
        assert!(host.receive().is_none());
        driver.notified(&mut env, ChannelSet(IDS.synic.bit()));
        let (header, _) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_OK);
        assert!(host.receive_ic().is_some());
        let mut reply = [0u8; 4];
        assert_eq!(driver.protected(&mut env, CLIENT, &[], &mut reply), Ok(1));
        assert_eq!(reply[0], 1, "the client is told one heartbeat was served");
        assert_eq!(
            driver.protected(&mut env, IDS.vmbus.channel(), &[], &mut reply),
            Err(Refusal::NOT_SERVED)
        );
    }
}
