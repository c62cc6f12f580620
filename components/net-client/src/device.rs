//! smoltcp's device over the net interface's client half: a received
//! frame is copied out of its buffer and the buffer released at once; a
//! frame to send is built in private memory and copied into a transmit
//! buffer.

use net_queue::{NetClient, BUFFER_SIZE};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub struct NicDevice<'a> {
    pub client: &'a mut NetClient,
    /// The IP MTU the driver published.
    pub mtu: usize,
}

pub struct RxFrame {
    bytes: [u8; BUFFER_SIZE],
    len: usize,
}

pub struct TxFrame<'a> {
    client: &'a mut NetClient,
}

impl phy::Device for NicDevice<'_> {
    type RxToken<'b>
        = RxFrame
    where
        Self: 'b;
    type TxToken<'b>
        = TxFrame<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let rx = self.client.receive()?;
        let mut frame = RxFrame {
            bytes: [0; BUFFER_SIZE],
            len: 0,
        };
        frame.len = self.client.frame(&rx, &mut frame.bytes);
        self.client.release(rx);
        Some((
            frame,
            TxFrame {
                client: self.client,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxFrame<'_>> {
        if self.client.tx_available() == 0 && self.client.reclaim() == 0 {
            return None;
        }
        Some(TxFrame {
            client: self.client,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = (self.mtu + 14).min(BUFFER_SIZE);
        capabilities
    }
}

impl phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.bytes[..self.len])
    }
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; BUFFER_SIZE];
        let len = len.min(BUFFER_SIZE);
        let result = f(&mut frame[..len]);
        // Not sent (no buffer, driver not serving): a lost frame, which
        // TCP retransmits; the client half counts it.
        let _ = self.client.send(&frame[..len], 0);
        result
    }
}
