//! The block interface's own cost: requests per second through both
//! halves in one thread (submit a batch, the server takes, checks and
//! answers each, the client collects), without moving data, and the same
//! with a server thread spinning on the other side. `cargo bench -p
//! block-queue`.

use block_queue::server::{BlockServer, Grant};
use block_queue::{
    request_region_bytes, response_region_bytes, BlockClient, Operation, Status, INFO_BYTES,
};
use component_api::Region;
use std::time::Instant;

const QUEUE: usize = 64;
const DATA: usize = 1 << 20;
const TOTAL: u64 = 2_000_000;

fn regions() -> [Region; 4] {
    [
        Region::leaked(request_region_bytes(QUEUE)),
        Region::leaked(response_region_bytes(QUEUE)),
        Region::leaked(INFO_BYTES),
        Region::leaked(DATA),
    ]
}

fn grant() -> Grant {
    Grant {
        first_block: 2048,
        blocks: 1 << 30,
        read_only: false,
    }
}

fn read(i: u64) -> Operation {
    Operation::Read {
        block: (i * 8) % (1 << 20),
        count: 8,
        offset: (i % 32) * 4096,
    }
}

fn one_thread(batch: u64) {
    let r = regions();
    let mut server = BlockServer::new(r[0], r[1], r[2], DATA).unwrap();
    server.serve(grant(), 512, 256, "bench").unwrap();
    let mut client: BlockClient<QUEUE> = BlockClient::new(r[0], r[1], r[2], r[3]).unwrap();
    let start = Instant::now();
    let mut done = 0u64;
    while done < TOTAL {
        for i in 0..batch {
            client.submit(read(done + i)).unwrap();
        }
        while let Some(work) = server.next_request().unwrap() {
            server.complete(work.id(), Status::Ok, 8).unwrap();
        }
        while client.poll().unwrap().is_some() {
            done += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "one thread, batches of {batch:2}: {:.2} M requests/s ({:.0} ns each)",
        done as f64 / seconds / 1e6,
        seconds * 1e9 / done as f64
    );
}

fn two_threads() {
    let r = regions();
    let mut server = BlockServer::new(r[0], r[1], r[2], DATA).unwrap();
    server.serve(grant(), 512, 256, "bench").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while let Some(work) = server.next_request().unwrap() {
                    server.complete(work.id(), Status::Ok, 8).unwrap();
                }
                std::hint::spin_loop();
            }
        });
        let mut client: BlockClient<QUEUE> = BlockClient::new(r[0], r[1], r[2], r[3]).unwrap();
        let start = Instant::now();
        let (mut submitted, mut done) = (0u64, 0u64);
        while done < TOTAL {
            while submitted < TOTAL && client.outstanding() < QUEUE {
                client.submit(read(submitted)).unwrap();
                submitted += 1;
            }
            while client.poll().unwrap().is_some() {
                done += 1;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!(
            "two threads, {QUEUE} in flight: {:.2} M requests/s ({:.0} ns each)",
            done as f64 / seconds / 1e6,
            seconds * 1e9 / done as f64
        );
    });
}

fn main() {
    for batch in [1, 8, 32] {
        one_thread(batch);
    }
    two_threads();
}
