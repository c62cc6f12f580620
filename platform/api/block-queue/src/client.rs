//! The client's half: submit requests, collect their responses.
//!
//! Restart rule: a response is the acknowledgement. The client keeps each
//! request until its response arrives. When the info page shows a new
//! generation (the driver restarted and serves again) every outstanding
//! request is pushed again, in the order it was first submitted; a
//! response whose id is not outstanding (the old driver's answer to a
//! request already completed by a duplicate) is ignored, so nothing is
//! lost and nothing is completed twice.

use crate::info::{self, DeviceInfo};
use crate::{Code, Request, Response, Status, REQUEST_SLOT, RESPONSE_BYTES, RESPONSE_SLOT};
use component_api::Region;
use heapless::Vec;
use spsc_queue::{Consumer, Producer, QueueError};
use zerocopy::{FromBytes, IntoBytes};

/// Names a submitted request until it completes.
pub type RequestId = u32;

/// What to do. Blocks are relative to the grant; offsets are bytes into
/// the data region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read {
        block: u64,
        count: u32,
        offset: u64,
    },
    Write {
        block: u64,
        count: u32,
        offset: u64,
    },
    Flush,
    Barrier,
    /// The disk may forget these blocks (see [`crate::Code::Discard`]);
    /// NOT_SUPPORTED unless the info page's `discard` says it can.
    Discard {
        block: u64,
        count: u32,
    },
}

impl Operation {
    fn to_wire(self, id: u32) -> Request {
        let (code, block, count, offset) = match self {
            Operation::Read {
                block,
                count,
                offset,
            } => (Code::Read, block, count, offset),
            Operation::Write {
                block,
                count,
                offset,
            } => (Code::Write, block, count, offset),
            Operation::Flush => (Code::Flush, 0, 0, 0),
            Operation::Barrier => (Code::Barrier, 0, 0, 0),
            Operation::Discard { block, count } => (Code::Discard, block, count, 0),
        };
        Request {
            code: code as u32,
            id,
            block,
            count,
            reserved: 0,
            offset,
        }
    }

    fn blocks(self) -> u32 {
        match self {
            Operation::Read { count, .. }
            | Operation::Write { count, .. }
            | Operation::Discard { count, .. } => count,
            Operation::Flush | Operation::Barrier => 0,
        }
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub id: RequestId,
    pub operation: Operation,
    pub status: Status,
    /// Blocks transferred (never more than asked for).
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// `N` requests are outstanding already: poll first.
    TooManyOutstanding,
    /// A queue region is too small, or the driver corrupted an index.
    Queue(QueueError),
}

impl From<QueueError> for ClientError {
    fn from(error: QueueError) -> Self {
        ClientError::Queue(error)
    }
}

/// Counters (for status lines and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub submitted: u64,
    pub completed: u64,
    /// Requests pushed again after a generation change.
    pub reissued: u64,
    /// Responses for ids not outstanding (duplicates, strays).
    pub ignored: u64,
    /// Responses with an unknown status (taken as IO_ERROR) or a count
    /// larger than asked (clamped).
    pub malformed: u64,
}

struct Outstanding {
    id: RequestId,
    operation: Operation,
    /// Pushed in the current generation.
    pushed: bool,
}

/// One client of one grant, keeping up to `N` requests outstanding.
pub struct BlockClient<const N: usize> {
    requests: Producer,
    responses: Consumer,
    info: Region,
    data: Region,
    /// In submission order.
    outstanding: Vec<Outstanding, N>,
    /// Outstanding requests pushed in this generation and not answered.
    in_queue: u32,
    next_id: u32,
    generation: Option<u32>,
    device: Option<DeviceInfo>,
    pushed_since_signal: bool,
    /// A new generation was seen; reissue once the old responses are taken.
    reissue_pending: bool,
    stats: ClientStats,
}

impl<const N: usize> BlockClient<N> {
    pub fn new(
        requests: Region,
        responses: Region,
        info_page: Region,
        data: Region,
    ) -> Result<Self, ClientError> {
        Ok(BlockClient {
            requests: Producer::new(requests, REQUEST_SLOT)?,
            responses: Consumer::new(responses, RESPONSE_SLOT)?,
            info: info_page,
            data,
            outstanding: Vec::new(),
            in_queue: 0,
            next_id: 1,
            generation: None,
            device: None,
            pushed_since_signal: false,
            reissue_pending: false,
            stats: ClientStats::default(),
        })
    }

    /// The device as last read from the info page (`None`: not ready).
    pub fn device(&mut self) -> Option<DeviceInfo> {
        self.refresh();
        self.device
    }

    /// The data region requests' offsets point into.
    pub fn data(&self) -> Region {
        self.data
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Queue a request. It is pushed to the driver now if the driver is
    /// serving and there is room, else by a later [`BlockClient::poll`].
    pub fn submit(&mut self, operation: Operation) -> Result<RequestId, ClientError> {
        if self.outstanding.is_full() {
            return Err(ClientError::TooManyOutstanding);
        }
        let id = self.fresh_id();
        self.outstanding
            .push(Outstanding {
                id,
                operation,
                pushed: false,
            })
            .map_err(|_| ClientError::TooManyOutstanding)?;
        self.stats.submitted += 1;
        self.refresh();
        self.pump()?;
        Ok(id)
    }

    /// An id no outstanding request has (ids are never 0).
    fn fresh_id(&mut self) -> RequestId {
        for _ in 0..=N {
            let id = self.next_id;
            self.next_id = match self.next_id.wrapping_add(1) {
                0 => 1,
                n => n,
            };
            if !self.outstanding.iter().any(|entry| entry.id == id) {
                return id;
            }
        }
        unreachable!("N + 1 consecutive ids cannot all be among N outstanding")
    }

    /// Read the info page; on a new generation, mark everything for reissue.
    fn refresh(&mut self) {
        // The whole page is read only when it changed.
        if self.device.is_some() && info::served_generation(&self.info) == self.generation {
            return;
        }
        self.device = info::read(&self.info);
        let Some(device) = self.device else {
            return;
        };
        if self.generation == Some(device.generation) {
            return;
        }
        // Responses the old driver left in the queue are real completions:
        // take them before reissuing, or a request already done would be
        // pushed again and done twice (a second write after a newer one,
        // a read into a buffer the client reuses).
        self.reissue_pending = self.generation.is_some();
        self.generation = Some(device.generation);
        self.in_queue = 0;
    }

    /// Once the responses of the old generation are taken: push again
    /// everything still outstanding.
    fn reissue(&mut self) {
        self.reissue_pending = false;
        for entry in self.outstanding.iter_mut() {
            if entry.pushed {
                self.stats.reissued += 1;
            }
            entry.pushed = false;
        }
        self.in_queue = 0;
    }

    /// Push what is not yet pushed, in order, while there is room.
    fn pump(&mut self) -> Result<(), ClientError> {
        let Some(device) = self.device else {
            return Ok(());
        };
        if self.reissue_pending {
            return Ok(());
        }
        let depth = device.queue_depth.min(self.requests.capacity());
        for entry in self.outstanding.iter_mut().filter(|entry| !entry.pushed) {
            if self.in_queue >= depth {
                break;
            }
            let request = entry.operation.to_wire(entry.id);
            match self.requests.push(request.as_bytes()) {
                Ok(()) => {}
                // The queue asked for a signal when room frees up.
                Err(QueueError::Full) => break,
                Err(other) => return Err(other.into()),
            }
            entry.pushed = true;
            self.in_queue += 1;
            self.pushed_since_signal = true;
        }
        Ok(())
    }

    /// Push what waits, then take the next response for an outstanding
    /// request. `Ok(None)`: nothing (more) arrived.
    pub fn poll(&mut self) -> Result<Option<Completion>, ClientError> {
        self.refresh();
        self.pump()?;
        // Bounded: each round consumes one response.
        for _ in 0..=self.responses_bound() {
            let mut bytes = [0u8; RESPONSE_BYTES];
            match self.responses.pop(&mut bytes)? {
                None if self.reissue_pending => {
                    self.reissue();
                    self.pump()?;
                    return Ok(None);
                }
                None => return Ok(None),
                Some(RESPONSE_BYTES) => {}
                Some(_) => return Err(ClientError::Queue(QueueError::PeerCorrupted)),
            }
            let response = Response::read_from_bytes(&bytes).expect("exact size");
            let Some(index) = self
                .outstanding
                .iter()
                .position(|entry| entry.id == response.id)
            else {
                self.stats.ignored += 1;
                continue;
            };
            let entry = self.outstanding.remove(index);
            if entry.pushed && !self.reissue_pending {
                self.in_queue -= 1;
            }
            let status = Status::from_wire(response.status).unwrap_or_else(|| {
                self.stats.malformed += 1;
                Status::IoError
            });
            let asked = entry.operation.blocks();
            if response.count > asked {
                self.stats.malformed += 1;
            }
            self.stats.completed += 1;
            self.pump()?;
            return Ok(Some(Completion {
                id: entry.id,
                operation: entry.operation,
                status,
                count: response.count.min(asked),
            }));
        }
        Ok(None)
    }

    fn responses_bound(&self) -> usize {
        // More than the queue can hold: stops a driver that keeps refilling.
        4 * N + 64
    }

    /// After submitting and polling: whether to notify the driver (it
    /// waits for requests, or for room in the response queue). Clears the
    /// requests, so call it once per round and notify if it says so.
    pub fn driver_needs_signal(&mut self) -> bool {
        let pushed = core::mem::take(&mut self.pushed_since_signal);
        let requests = pushed && self.requests.consumer_needs_signal();
        let room = self.responses.producer_needs_signal();
        requests || room
    }

    /// Before sleeping: ask the driver for a signal when a response comes
    /// and look once more. `true`: safe to sleep.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, ClientError> {
        Ok(self.responses.prepare_to_sleep()?)
    }
}
