//! [`TapNet`]: the simulated NIC on a Linux TAP device (`hvsim --net
//! tap:IFNAME`, hosted only). Every frame the guest sends is written to the
//! TAP, every frame Linux sends out of the TAP is offered to the guest: the
//! guest is one more machine on the TAP's Ethernet segment, reached with
//! the ordinary tools (`ping`, `curl`) from the network namespace the TAP
//! is in. The TAP is created if it does not exist; its address and `up`
//! are the operator's (or the test's: `tests/fixtures/netns`).

use crate::net::NetBackend;
use std::fs::File;
use std::io::{self, Read, Write};

/// The shortest Ethernet II frame Linux takes from a TAP (the header).
pub const MIN_FRAME: usize = 14;

/// The longest frame read from or written to the TAP: the largest a TAP
/// hands out with offloads off is MTU + header; 64 KiB covers any MTU.
pub const MAX_FRAME: usize = 65536;

/// Frames read from the TAP per [`NetBackend::receive`] call at most
/// while skipping ones that do not fit the guest's buffer (bounded work
/// per call).
const SKIP_LIMIT: usize = 64;

/// What [`TapNet`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCounters {
    /// Frames (and bytes) the guest sent that went out on the TAP.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Guest frames not sent: shorter than an Ethernet header or longer
    /// than [`MAX_FRAME`].
    pub tx_malformed: u64,
    /// Guest frames the TAP refused (its queue full, the link down, the
    /// interface gone): the error, not the frame, is what matters here.
    pub tx_errors: u64,
    /// Frames (and bytes) from the TAP handed to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the TAP longer than the buffer the guest offered.
    pub rx_too_long: u64,
    pub rx_errors: u64,
}

/// A TAP device as the simulated NIC's wire.
pub struct TapNet {
    name: String,
    device: File,
    frame: Vec<u8>,
    counters: TapCounters,
    /// The last I/O error, for the operator (`net` command).
    last_error: Option<io::ErrorKind>,
}

impl TapNet {
    /// Opens (creating it if need be) the TAP interface `name` in the
    /// network namespace this process runs in.
    pub fn open(name: &str) -> io::Result<TapNet> {
        let device = hosted_runtime::tap::open_tap(name)?;
        Ok(TapNet {
            name: name.to_string(),
            device,
            frame: vec![0; MAX_FRAME],
            counters: TapCounters::default(),
            last_error: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn counters(&self) -> TapCounters {
        self.counters
    }

    pub fn report(&self) -> String {
        format!(
            "tap {}: {:?} last error {:?}",
            self.name, self.counters, self.last_error
        )
    }
}

impl NetBackend for TapNet {
    fn transmit(&mut self, frame: &[u8]) {
        if frame.len() < MIN_FRAME || frame.len() > MAX_FRAME {
            self.counters.tx_malformed += 1;
            return;
        }
        match self.device.write(frame) {
            Ok(written) if written == frame.len() => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
            }
            Ok(_) => self.counters.tx_errors += 1,
            Err(error) => {
                self.counters.tx_errors += 1;
                self.last_error = Some(error.kind());
            }
        }
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        for _ in 0..SKIP_LIMIT {
            match self.device.read(&mut self.frame) {
                Ok(0) => return None,
                Ok(len) if len > buf.len() => self.counters.rx_too_long += 1,
                Ok(len) => {
                    buf[..len].copy_from_slice(&self.frame[..len]);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    return Some(len);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.counters.rx_errors += 1;
                    self.last_error = Some(error.kind());
                    return None;
                }
            }
        }
        None
    }
}
