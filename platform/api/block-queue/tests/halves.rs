//! The client and server halves against each other over memory regions.

use block_queue::server::{BlockServer, Grant, ServerRequest};
use block_queue::{
    request_region_bytes, response_region_bytes, BlockClient, Code, Completion, Operation, Request,
    Status, INFO_BYTES,
};
use component_api::Region;
use zerocopy::IntoBytes;

const DATA: usize = 64 * 1024;

struct Regions {
    requests: Region,
    responses: Region,
    info: Region,
    data: Region,
}

fn regions(entries: usize) -> Regions {
    Regions {
        requests: Region::leaked(request_region_bytes(entries)),
        responses: Region::leaked(response_region_bytes(entries)),
        info: Region::leaked(INFO_BYTES),
        data: Region::leaked(DATA),
    }
}

fn server(r: &Regions, grant: Grant) -> BlockServer {
    let mut server = BlockServer::new(r.requests, r.responses, r.info, DATA).unwrap();
    server.serve(grant, 512, 16, "test disk").unwrap();
    server
}

fn client(r: &Regions) -> BlockClient<16> {
    BlockClient::new(r.requests, r.responses, r.info, r.data).unwrap()
}

const GRANT: Grant = Grant {
    first_block: 100,
    blocks: 50,
    read_only: false,
};

fn read(block: u64, count: u32, offset: u64) -> Operation {
    Operation::Read {
        block,
        count,
        offset,
    }
}

fn write(block: u64, count: u32, offset: u64) -> Operation {
    Operation::Write {
        block,
        count,
        offset,
    }
}

fn drain(client: &mut BlockClient<16>) -> Vec<Completion> {
    let mut out = Vec::new();
    while let Some(completion) = client.poll().unwrap() {
        out.push(completion);
    }
    out
}

/// Push a raw request as a hostile client could.
fn push_raw(r: &Regions, request: Request) {
    let mut producer = spsc_queue::Producer::new(r.requests, 40).unwrap();
    producer.push(request.as_bytes()).unwrap();
}

#[test]
fn requests_are_translated_to_the_disk_and_answered() {
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    let device = client.device().unwrap();
    assert_eq!(
        (device.capacity, device.block_size, device.read_only),
        (50, 512, false)
    );
    assert_eq!(device.ident(), "test disk");
    let id = client.submit(write(3, 2, 1024)).unwrap();
    let work = server.next_request().unwrap().unwrap();
    assert_eq!(
        work,
        ServerRequest::Write {
            id,
            disk_block: 103,
            count: 2,
            data_offset: 1024,
            bytes: 1024
        }
    );
    assert_eq!(server.next_request().unwrap(), None);
    server.complete(id, Status::Ok, 2).unwrap();
    let done = drain(&mut client);
    assert_eq!(
        done,
        vec![Completion {
            id,
            operation: write(3, 2, 1024),
            status: Status::Ok,
            count: 2
        }]
    );
    assert_eq!(client.outstanding(), 0);
    assert_eq!(
        server.complete(id, Status::Ok, 2),
        Err(block_queue::ServerError::NothingInFlight)
    );
}

#[test]
fn bad_requests_never_reach_the_disk() {
    let r = regions(32);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    // The last block and the last data bytes are fine.
    let ok = client.submit(read(49, 1, DATA as u64 - 512)).unwrap();
    assert!(matches!(
        server.next_request().unwrap(),
        Some(ServerRequest::Read { id, disk_block: 149, .. }) if id == ok
    ));
    server.complete(ok, Status::Ok, 1).unwrap();
    assert_eq!(drain(&mut client).len(), 1);
    let cases = [
        (write(49, 2, 0), Status::SeekError), // one block past the grant
        (read(u64::MAX, 1, 0), Status::SeekError), // overflow
        (read(0, 0, 0), Status::Invalid),     // nothing
        (read(0, 17, 0), Status::Invalid),    // over max_transfer
        (read(0, 1, 100), Status::Invalid),   // misaligned data
        (read(0, 2, DATA as u64 - 512), Status::Invalid), // data past the region
        (read(0, 1, u64::MAX - 100), Status::Invalid), // data offset overflow
    ];
    let mut expected = Vec::new();
    for (operation, status) in cases {
        expected.push((client.submit(operation).unwrap(), status));
    }
    // A hostile client's unknown code (the legitimate client pushes no
    // more after this: two producers on one queue is not a thing).
    push_raw(
        &r,
        Request {
            code: 9,
            id: 77,
            ..Request::default()
        },
    );
    assert_eq!(server.next_request().unwrap(), None, "nothing valid");
    let done = drain(&mut client);
    let got: Vec<_> = done.iter().map(|c| (c.id, c.status)).collect();
    assert_eq!(got, expected);
    assert_eq!(client.stats().ignored, 1, "the raw request's answer");
    let stats = server.stats();
    assert_eq!(
        (stats.seek_errors, stats.invalid, stats.handed_out),
        (2, 6, 1)
    );
}

#[test]
fn a_read_only_grant_refuses_writes_and_serves_reads() {
    let r = regions(8);
    let mut server = server(
        &r,
        Grant {
            read_only: true,
            ..GRANT
        },
    );
    let mut client = client(&r);
    assert!(client.device().unwrap().read_only);
    let refused = client.submit(write(0, 1, 0)).unwrap();
    let served = client.submit(read(0, 1, 0)).unwrap();
    let flush = client.submit(Operation::Flush).unwrap();
    assert!(
        matches!(server.next_request().unwrap(), Some(ServerRequest::Read { id, .. }) if id == served)
    );
    assert_eq!(
        server.next_request().unwrap(),
        Some(ServerRequest::Flush { id: flush })
    );
    let done = drain(&mut client);
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].id, done[0].status), (refused, Status::ReadOnly));
}

#[test]
fn nothing_after_a_barrier_is_handed_out_before_everything_before_it_completed() {
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    let first = client.submit(write(0, 1, 0)).unwrap();
    let second = client.submit(write(1, 1, 512)).unwrap();
    let barrier = client.submit(Operation::Barrier).unwrap();
    let after = client.submit(read(0, 2, 0)).unwrap();
    assert_eq!(server.next_request().unwrap().unwrap().id(), first);
    assert_eq!(server.next_request().unwrap().unwrap().id(), second);
    assert_eq!(server.next_request().unwrap(), None, "held by the barrier");
    server.complete(second, Status::Ok, 1).unwrap();
    assert_eq!(
        server.next_request().unwrap(),
        None,
        "first still in flight"
    );
    server.complete(first, Status::Ok, 1).unwrap();
    assert_eq!(server.next_request().unwrap().unwrap().id(), after);
    server.complete(after, Status::Ok, 2).unwrap();
    let order: Vec<_> = drain(&mut client).iter().map(|c| c.id).collect();
    assert_eq!(order, vec![second, first, barrier, after]);
    assert_eq!(server.stats().barriers, 1);
}

#[test]
fn after_a_driver_restart_everything_outstanding_is_reissued_in_order_and_completed_once() {
    let r = regions(8);
    let mut old = server(&r, GRANT);
    let mut client = client(&r);
    let ids: Vec<_> = (0..4)
        .map(|i| client.submit(write(i, 1, i * 512)).unwrap())
        .collect();
    // The old driver completes the first, answers the second without the
    // client having read it yet, takes the third and dies; the fourth is
    // still in the queue.
    for _ in 0..3 {
        old.next_request().unwrap().unwrap();
    }
    old.complete(ids[0], Status::Ok, 1).unwrap();
    assert_eq!(client.poll().unwrap().unwrap().id, ids[0]);
    old.complete(ids[1], Status::Ok, 1).unwrap();
    // The old driver is gone: nothing of it is used again.

    let mut new = server(&r, GRANT);
    // The client sees the new generation: it first takes the old answer to
    // id 1 (a real completion), then pushes ids 2 and 3 again, and only
    // they; the new driver dropped the stale copy of the 4th that was still
    // queued, so nothing is done twice.
    let done = client.poll().unwrap().unwrap();
    assert_eq!(done.id, ids[1]);
    assert_eq!(client.poll().unwrap(), None);
    assert_eq!(client.stats().reissued, 2);
    let mut handed = Vec::new();
    while let Some(work) = new.next_request().unwrap() {
        handed.push(work.id());
    }
    assert_eq!(handed, vec![ids[2], ids[3]]);
    for id in &handed {
        new.complete(*id, Status::Ok, 1).unwrap();
    }
    let rest: Vec<_> = drain(&mut client).iter().map(|c| c.id).collect();
    assert_eq!(
        rest,
        vec![ids[2], ids[3]],
        "each once, in the driver's order"
    );
    assert_eq!(client.stats().completed, 4);
    assert_eq!(client.stats().ignored, 0, "no duplicates were made");
    assert_eq!(client.outstanding(), 0);
}

#[test]
fn requests_wait_while_the_driver_is_not_serving_and_are_refused_once_it_gives_up() {
    let r = regions(8);
    let mut server = BlockServer::new(r.requests, r.responses, r.info, DATA).unwrap();
    let mut client = client(&r);
    assert_eq!(client.device(), None);
    let id = client.submit(read(0, 1, 0)).unwrap();
    assert_eq!(
        server.next_request().unwrap(),
        None,
        "nothing pushed while not ready"
    );
    let generation = server.serve(GRANT, 512, 16, "d").unwrap();
    assert_eq!(client.device().unwrap().generation, generation);
    assert_eq!(client.poll().unwrap(), None);
    assert_eq!(server.next_request().unwrap().unwrap().id(), id);
    server.withdraw(false);
    let waiting = client.submit(read(1, 1, 0)).unwrap();
    assert_eq!(server.next_request().unwrap(), None);
    server.withdraw(true);
    // Pushed before the withdrawal? No: the client saw not-ready and kept it.
    assert_eq!(server.next_request().unwrap(), None);
    push_raw(
        &r,
        Request {
            code: Code::Read as u32,
            id: waiting,
            block: 1,
            count: 1,
            ..Request::default()
        },
    );
    assert_eq!(server.next_request().unwrap(), None);
    let done = client.poll().unwrap().unwrap();
    assert_eq!((done.id, done.status), (waiting, Status::NotReady));
}

#[test]
fn a_client_that_never_reads_answers_cannot_overflow_its_response_queue() {
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let capacity = server.queue_depth();
    // Flood: far more requests than the response queue holds.
    let mut producer = spsc_queue::Producer::new(r.requests, 40).unwrap();
    let mut pushed = 0;
    let mut handed = 0;
    for round in 0..10u32 {
        while producer
            .push(
                Request {
                    code: Code::Read as u32,
                    id: round,
                    count: 1,
                    ..Request::default()
                }
                .as_bytes(),
            )
            .is_ok()
        {
            pushed += 1;
        }
        while let Some(work) = server.next_request().unwrap() {
            handed += 1;
            server.complete(work.id(), Status::Ok, 1).unwrap();
        }
    }
    assert!(pushed > capacity);
    assert_eq!(handed, capacity, "exactly as many answers as fit");
}

#[test]
fn signals_are_sent_only_to_a_sleeping_peer() {
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    // The driver sleeps on an empty queue: the client's push must wake it.
    assert!(server.prepare_to_sleep().unwrap());
    client.submit(read(0, 1, 0)).unwrap();
    assert!(client.driver_needs_signal());
    assert!(!client.driver_needs_signal(), "once per sleep");
    // The client is busy (not sleeping): no signal for the response.
    let work = server.next_request().unwrap().unwrap();
    server.complete(work.id(), Status::Ok, 1).unwrap();
    assert!(!server.client_needs_signal());
    assert_eq!(client.poll().unwrap().unwrap().id, work.id());
    // Now it sleeps; the next response must signal it.
    client.submit(read(1, 1, 0)).unwrap();
    assert!(client.prepare_to_sleep().unwrap());
    let work = server.next_request().unwrap().unwrap();
    server.complete(work.id(), Status::Ok, 1).unwrap();
    assert!(server.client_needs_signal());
    // A response already there: not safe to sleep.
    assert!(!client.prepare_to_sleep().unwrap());
}

#[test]
fn the_client_keeps_at_most_n_outstanding_and_queue_depth_pushed() {
    let r = regions(8);
    let mut server = BlockServer::new(r.requests, r.responses, r.info, DATA).unwrap();
    server.serve(GRANT, 512, 16, "").unwrap();
    let depth = server.queue_depth() as usize;
    let mut client: BlockClient<4> =
        BlockClient::new(r.requests, r.responses, r.info, r.data).unwrap();
    for i in 0..4 {
        client.submit(read(i, 1, 0)).unwrap();
    }
    assert_eq!(
        client.submit(read(0, 1, 0)),
        Err(block_queue::ClientError::TooManyOutstanding)
    );
    assert!(depth >= 4);
}

#[test]
fn a_driver_answering_nonsense_cannot_complete_twice_overstate_or_crash_the_client() {
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    let first = client.submit(read(0, 1, 0)).unwrap();
    let second = client.submit(read(1, 1, 512)).unwrap();
    // The driver takes them, then answers with its own bytes.
    while server.next_request().unwrap().is_some() {}
    let mut answers = spsc_queue::Producer::new(r.responses, 24).unwrap();
    let mut answer = |id: u32, status: u32, count: u32| {
        let response = block_queue::Response {
            id,
            status,
            count,
            reserved: 0,
        };
        answers.push(response.as_bytes()).unwrap();
    };
    answer(999, 0, 1); // nobody asked
    answer(first, 77, 1); // no such status
    answer(second, 0, 1000); // more blocks than asked
    answer(first, 0, 1); // again
    let done = drain(&mut client);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].id, done[0].status), (first, Status::IoError));
    assert_eq!((done[1].id, done[1].count), (second, 1));
    let stats = client.stats();
    assert_eq!((stats.ignored, stats.malformed, stats.completed), (2, 2, 2));
    // A response index far beyond the queue: an error, not a panic.
    r.responses.write(0, &u32::MAX.to_ne_bytes()).unwrap();
    assert_eq!(
        client.poll(),
        Err(block_queue::ClientError::Queue(
            spsc_queue::QueueError::PeerCorrupted
        ))
    );
}

fn discard(block: u64, count: u32) -> Operation {
    Operation::Discard { block, count }
}

#[test]
fn discard_is_checked_like_a_write_and_handed_out_only_when_the_disk_can() {
    let r = regions(16);
    let mut server = BlockServer::new(r.requests, r.responses, r.info, DATA).unwrap();
    server
        .serve_with_discard(GRANT, 512, 16, "thin disk", true)
        .unwrap();
    let mut client = client(&r);
    assert!(client.device().unwrap().discard);
    // No data range, and more blocks than max_transfer: a discard moves no data.
    let id = client.submit(discard(10, 40)).unwrap();
    assert_eq!(
        server.next_request().unwrap(),
        Some(ServerRequest::Discard {
            id,
            disk_block: 110,
            count: 40
        })
    );
    server.complete(id, Status::Ok, 40).unwrap();
    let done = drain(&mut client);
    assert_eq!((done[0].status, done[0].count), (Status::Ok, 40));
    let cases = [
        (discard(10, 41), Status::SeekError), // one block past the grant
        (discard(u64::MAX, 1), Status::SeekError),
        (discard(0, 0), Status::Invalid),
    ];
    for (operation, status) in cases {
        client.submit(operation).unwrap();
        assert_eq!(server.next_request().unwrap(), None, "{operation:?}");
        let done = drain(&mut client);
        assert_eq!(done[0].status, status, "{operation:?}");
    }
    assert_eq!(server.stats().seek_errors, 2);

    // A read-only grant refuses it as it refuses a write.
    server
        .serve_with_discard(
            Grant {
                read_only: true,
                ..GRANT
            },
            512,
            16,
            "thin disk",
            true,
        )
        .unwrap();
    assert!(
        drain(&mut client).is_empty(),
        "the client sees the new generation"
    );
    client.submit(discard(0, 1)).unwrap();
    assert_eq!(server.next_request().unwrap(), None);
    assert_eq!(drain(&mut client)[0].status, Status::ReadOnly);

    // A disk without UNMAP: NOT_SUPPORTED, never reaching the driver.
    server.serve(GRANT, 512, 16, "thick disk").unwrap();
    assert!(drain(&mut client).is_empty());
    assert!(!client.device().unwrap().discard);
    client.submit(discard(0, 1)).unwrap();
    assert_eq!(server.next_request().unwrap(), None);
    let done = drain(&mut client);
    assert_eq!((done[0].status, done[0].count), (Status::NotSupported, 0));
    assert_eq!(server.stats().not_supported, 1);
    assert_eq!(server.stats().handed_out, 1);
}

#[test]
fn a_status_the_client_does_not_know_is_an_io_error() {
    // What a client of the first interface sees of NOT_SUPPORTED: a status
    // beyond those it knows reads as IO_ERROR, counted malformed.
    let r = regions(8);
    let mut server = server(&r, GRANT);
    let mut client = client(&r);
    let id = client.submit(read(0, 1, 0)).unwrap();
    server.next_request().unwrap().unwrap();
    // The server's own producer is bypassed: a raw response with a status
    // past those this client knows (as NOT_SUPPORTED is to a client of the
    // first interface).
    let mut responses = spsc_queue::Producer::new(r.responses, 24).unwrap();
    let raw = block_queue::Response {
        id,
        status: 7,
        count: 0,
        reserved: 0,
    };
    responses.push(raw.as_bytes()).unwrap();
    let done = drain(&mut client);
    assert_eq!(done[0].status, Status::IoError);
    assert_eq!(client.stats().malformed, 1);
}
