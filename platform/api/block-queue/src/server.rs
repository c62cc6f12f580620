//! The driver's half: takes requests off a client's queue, validates each
//! against the client's grant before the driver sees it, and answers.
//!
//! The client is another component and may be faulty or hostile: a
//! malformed request gets INVALID, a range outside the grant SEEK_ERROR, a
//! write on a read-only grant READ_ONLY, and none of them reaches the disk.
//! The server never hands out more work than the response queue has room
//! to answer, so a client that does not drain its responses only stalls
//! itself.

use crate::info::{self, DeviceInfo};
use crate::{Code, Request, Response, Status, REQUEST_BYTES, REQUEST_SLOT, RESPONSE_SLOT};
use component_api::Region;
use spsc_queue::{Consumer, Producer, QueueError};
use zerocopy::{FromBytes, IntoBytes};

/// The part of a disk a client is granted, in the disk's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The disk block the client's block 0 is (the partition's start).
    pub first_block: u64,
    /// Blocks in the grant.
    pub blocks: u64,
    /// Writes are refused (the description's `read_only`, or the disk is
    /// write protected).
    pub read_only: bool,
}

/// What the driver does for a client: everything already checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRequest {
    /// Move `count` blocks from disk block `disk_block` into the data
    /// region at byte `data_offset` (`bytes` long).
    Read {
        id: u32,
        disk_block: u64,
        count: u32,
        data_offset: u64,
        bytes: u64,
    },
    /// Move `count` blocks from the data region to the disk.
    Write {
        id: u32,
        disk_block: u64,
        count: u32,
        data_offset: u64,
        bytes: u64,
    },
    /// Answer after the disk's cache is on stable storage.
    Flush { id: u32 },
    /// Let the disk forget `count` blocks from `disk_block` (UNMAP); handed
    /// out only when the driver said the disk supports it.
    Discard {
        id: u32,
        disk_block: u64,
        count: u32,
    },
}

impl ServerRequest {
    pub fn id(&self) -> u32 {
        match *self {
            ServerRequest::Read { id, .. }
            | ServerRequest::Write { id, .. }
            | ServerRequest::Flush { id }
            | ServerRequest::Discard { id, .. } => id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerError {
    /// A queue region is too small, or the client corrupted an index.
    Queue(QueueError),
    /// The info page is not a writable page.
    InfoPage,
    /// `complete` without a request handed out (a driver bug).
    NothingInFlight,
}

impl From<QueueError> for ServerError {
    fn from(error: QueueError) -> Self {
        ServerError::Queue(error)
    }
}

/// Counters for the driver's status lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub handed_out: u64,
    pub completed: u64,
    /// Refused before reaching the disk, by status.
    pub invalid: u64,
    pub seek_errors: u64,
    pub read_only_refused: u64,
    pub not_ready: u64,
    /// DISCARDs answered NOT_SUPPORTED (the disk has no UNMAP).
    pub not_supported: u64,
    pub barriers: u64,
}

/// Serves one client's grant.
pub struct BlockServer {
    requests: Consumer,
    responses: Producer,
    info: Region,
    data_len: u64,
    /// `None` while not serving: requests wait in the queue, or are
    /// answered NOT_READY once the driver gave up on the disk.
    serving: Option<Serving>,
    refusing: bool,
    /// Handed out to the driver and not yet completed.
    in_flight: u32,
    /// A barrier taken off the queue while requests before it are in
    /// flight: nothing more is taken until they complete.
    barrier: Option<u32>,
    responded_since_signal: bool,
    stats: ServerStats,
}

#[derive(Clone, Copy)]
struct Serving {
    grant: Grant,
    block_size: u32,
    max_transfer: u32,
    discard: bool,
}

impl BlockServer {
    /// The regions as the description grants them to the driver; the data
    /// region only by its length (the driver holds it by address). Starts
    /// not ready: call [`BlockServer::serve`] once the disk is known.
    pub fn new(
        requests: Region,
        responses: Region,
        info_page: Region,
        data_len: usize,
    ) -> Result<BlockServer, ServerError> {
        if info_page.len() < info::INFO_USED || !info_page.writable() {
            return Err(ServerError::InfoPage);
        }
        info::withdraw(&info_page).ok_or(ServerError::InfoPage)?;
        Ok(BlockServer {
            requests: Consumer::new(requests, REQUEST_SLOT)?,
            responses: Producer::new(responses, RESPONSE_SLOT)?,
            info: info_page,
            data_len: data_len as u64,
            serving: None,
            refusing: false,
            in_flight: 0,
            barrier: None,
            responded_since_signal: false,
            stats: ServerStats::default(),
        })
    }

    /// Start serving `grant` of a disk with `block_size` blocks; publishes
    /// the info page under a new generation (so the client reissues what
    /// it had outstanding) and returns the generation. The driver then
    /// notifies the client.
    /// DISCARDs are answered NOT_SUPPORTED here (see
    /// [`BlockServer::serve_with_discard`]).
    pub fn serve(
        &mut self,
        grant: Grant,
        block_size: u32,
        max_transfer: u32,
        ident: &str,
    ) -> Result<u32, ServerError> {
        self.serve_with_discard(grant, block_size, max_transfer, ident, false)
    }

    /// [`BlockServer::serve`] for a disk that may support discarding: with
    /// `discard`, the info page says so and DISCARDs inside the grant are
    /// handed out; without, they are answered NOT_SUPPORTED.
    pub fn serve_with_discard(
        &mut self,
        grant: Grant,
        block_size: u32,
        max_transfer: u32,
        ident: &str,
        discard: bool,
    ) -> Result<u32, ServerError> {
        let depth = self.queue_depth();
        let mut info = DeviceInfo::new(
            grant.read_only,
            block_size,
            grant.blocks,
            depth,
            max_transfer,
            ident,
        );
        info.discard = discard;
        // What the client queued before this generation is dropped: it
        // reissues everything it has outstanding when it sees the new
        // generation, so serving the old copies too would do requests twice
        // (after the client reused their buffers, or after a newer write).
        self.discard_queued()?;
        self.serving = Some(Serving {
            grant,
            block_size,
            max_transfer,
            discard,
        });
        self.refusing = false;
        info::publish(&self.info, &info).ok_or(ServerError::InfoPage)
    }

    fn discard_queued(&mut self) -> Result<(), ServerError> {
        let mut bytes = [0u8; REQUEST_BYTES];
        for _ in 0..=self.requests_bound() {
            if self.requests.pop(&mut bytes)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Stop serving (the disk went away). With `refuse`, requests are
    /// answered NOT_READY (the disk is not coming back soon); without, they
    /// wait in the queue for the next [`BlockServer::serve`] (a reset).
    pub fn withdraw(&mut self, refuse: bool) {
        self.serving = None;
        self.refusing = refuse;
        let _ = info::withdraw(&self.info);
    }

    /// What the client may have queued at once: both queues hold that many.
    pub fn queue_depth(&self) -> u32 {
        self.responses.capacity()
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The next request for the disk, or `None` when there is none (or a
    /// barrier holds the rest back, or the response queue has no room for
    /// one more answer, or the server is not serving). Requests that fail validation are answered here
    /// and never returned.
    pub fn next_request(&mut self) -> Result<Option<ServerRequest>, ServerError> {
        // Bounded: each round consumes one queue entry or returns.
        for _ in 0..=self.requests_bound() {
            if let Some(id) = self.barrier {
                if self.in_flight > 0 {
                    return Ok(None);
                }
                self.barrier = None;
                self.respond(id, Status::Ok, 0)?;
            }
            if self.serving.is_none() && !self.refusing {
                return Ok(None);
            }
            // Room for every answer owed plus this one's.
            if self.responses.free()? <= self.in_flight {
                return Ok(None);
            }
            let mut bytes = [0u8; REQUEST_BYTES];
            match self.requests.pop(&mut bytes)? {
                None => return Ok(None),
                Some(REQUEST_BYTES) => {}
                Some(_) => return Err(ServerError::Queue(QueueError::PeerCorrupted)),
            }
            let request = Request::read_from_bytes(&bytes).expect("exact size");
            match self.check(&request) {
                Ok(Some(work)) => {
                    self.in_flight += 1;
                    self.stats.handed_out += 1;
                    return Ok(Some(work));
                }
                Ok(None) => {
                    // A barrier.
                    self.stats.barriers += 1;
                    self.barrier = Some(request.id);
                }
                Err(status) => {
                    match status {
                        Status::SeekError => self.stats.seek_errors += 1,
                        Status::ReadOnly => self.stats.read_only_refused += 1,
                        Status::NotReady => self.stats.not_ready += 1,
                        Status::NotSupported => self.stats.not_supported += 1,
                        _ => self.stats.invalid += 1,
                    }
                    self.respond(request.id, status, 0)?;
                }
            }
        }
        Ok(None)
    }

    fn requests_bound(&self) -> u32 {
        self.responses.capacity().saturating_add(1)
    }

    /// `Ok(None)` is a barrier.
    fn check(&self, request: &Request) -> Result<Option<ServerRequest>, Status> {
        let code = Code::from_wire(request.code).ok_or(Status::Invalid)?;
        let serving = self.serving.ok_or(Status::NotReady)?;
        let id = request.id;
        match code {
            Code::Barrier => return Ok(None),
            Code::Flush => return Ok(Some(ServerRequest::Flush { id })),
            Code::Discard => return self.check_discard(request, serving).map(Some),
            Code::Read | Code::Write => {}
        }
        if request.count == 0 || request.count > serving.max_transfer {
            return Err(Status::Invalid);
        }
        let bytes = u64::from(request.count) * u64::from(serving.block_size);
        let data_end = request.offset.checked_add(bytes).ok_or(Status::Invalid)?;
        if data_end > self.data_len || !request.offset.is_multiple_of(u64::from(serving.block_size))
        {
            return Err(Status::Invalid);
        }
        let end = request
            .block
            .checked_add(u64::from(request.count))
            .ok_or(Status::SeekError)?;
        if end > serving.grant.blocks {
            return Err(Status::SeekError);
        }
        let disk_block = serving
            .grant
            .first_block
            .checked_add(request.block)
            .ok_or(Status::SeekError)?;
        let (count, data_offset) = (request.count, request.offset);
        Ok(Some(if code == Code::Write {
            if serving.grant.read_only {
                return Err(Status::ReadOnly);
            }
            ServerRequest::Write {
                id,
                disk_block,
                count,
                data_offset,
                bytes,
            }
        } else {
            ServerRequest::Read {
                id,
                disk_block,
                count,
                data_offset,
                bytes,
            }
        }))
    }

    /// Checked like a write without a data range: inside the grant, not on
    /// a read-only grant, then only if the disk can.
    fn check_discard(&self, request: &Request, serving: Serving) -> Result<ServerRequest, Status> {
        if request.count == 0 {
            return Err(Status::Invalid);
        }
        let end = request
            .block
            .checked_add(u64::from(request.count))
            .ok_or(Status::SeekError)?;
        if end > serving.grant.blocks {
            return Err(Status::SeekError);
        }
        let disk_block = serving
            .grant
            .first_block
            .checked_add(request.block)
            .ok_or(Status::SeekError)?;
        if serving.grant.read_only {
            return Err(Status::ReadOnly);
        }
        if !serving.discard {
            return Err(Status::NotSupported);
        }
        Ok(ServerRequest::Discard {
            id: request.id,
            disk_block,
            count: request.count,
        })
    }

    /// Answer a request [`BlockServer::next_request`] handed out.
    pub fn complete(&mut self, id: u32, status: Status, count: u32) -> Result<(), ServerError> {
        if self.in_flight == 0 {
            return Err(ServerError::NothingInFlight);
        }
        self.in_flight -= 1;
        self.stats.completed += 1;
        self.respond(id, status, count)
    }

    fn respond(&mut self, id: u32, status: Status, count: u32) -> Result<(), ServerError> {
        let response = Response {
            id,
            status: status as u32,
            count,
            reserved: 0,
        };
        // Cannot be full: nothing is handed out without room for its answer.
        self.responses.push(response.as_bytes())?;
        self.responded_since_signal = true;
        Ok(())
    }

    /// After a round: whether to notify the client (it waits for responses,
    /// or for room in the request queue). Clears the requests.
    pub fn client_needs_signal(&mut self) -> bool {
        let responded = core::mem::take(&mut self.responded_since_signal);
        let answers = responded && self.responses.consumer_needs_signal();
        let room = self.requests.producer_needs_signal();
        answers || room
    }

    /// Before the driver sleeps with nothing to hand out: ask the client
    /// for a signal and look once more. `true`: safe to sleep.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, ServerError> {
        Ok(self.requests.prepare_to_sleep()?)
    }
}
