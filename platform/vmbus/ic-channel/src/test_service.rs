//! The service and ids the unit tests of this crate drive the channel loop
//! and the driver with.

use crate::{body_mut, ChannelIds, DriverService, IcService, Rejection};
use component_api::{Channel, Client, Env, Refusal, RegionName};
use vmbus_protocol::ic::{self, HeartbeatMessage, IcVersion, STATUS_OK};

pub const IDS: ChannelIds = ChannelIds {
    rings: crate::RingRegions {
        out_control: RegionName(0),
        out_data: RegionName(1),
        in_control: RegionName(2),
        in_data: RegionName(3),
    },
    synic: Channel(0),
    synic_call: Client::new(Channel(1)),
    vmbus: Client::new(Channel(2)),
    vmbus_event: Channel(3),
};

/// The client's calls: [`Echo`] answers with the number it served.
pub const CLIENT: Channel = Channel(5);

/// A heartbeat-like service: answers sequence + 1 and counts.
#[derive(Default)]
pub struct Echo {
    pub served: u32,
}

impl IcService for Echo {
    const MESSAGE_TYPE: u16 = ic::message_type::HEARTBEAT;
    const MESSAGE_VERSIONS: &'static [(u16, u16)] = &ic::versions::HEARTBEAT;

    fn handle(
        &mut self,
        _env: &mut dyn Env,
        _version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let message: &mut HeartbeatMessage = body_mut(body)?;
        // Wrapping: mutated messages may carry any sequence.
        message.sequence = message.sequence.get().wrapping_add(1).into();
        self.served += 1;
        Ok(STATUS_OK)
    }
}

impl DriverService for Echo {
    const IDS: ChannelIds = IDS;

    /// The answer counts what the channel served.
    fn needs_channel(&self, channel: Channel, _message: &[u8]) -> bool {
        channel == CLIENT
    }

    fn serve_client(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        _message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != CLIENT {
            return Err(Refusal::NOT_SERVED);
        }
        let served = u8::try_from(self.served).unwrap_or(u8::MAX);
        *reply.first_mut().ok_or(Refusal::MALFORMED)? = served;
        Ok(1)
    }
}
