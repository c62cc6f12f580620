//! The block interface's own cost: requests per second through both
//! halves in one thread (submit a batch, the server takes, checks and
//! answers each, the client collects), without moving data, and the same
//! with a server thread spinning on the other side. `cargo bench -p
//! block-queue [-- --rounds N --requests K | --smoke]`: the configurations take turns
//! round by round; medians with the min-max over the rounds. With
//! `VMBUS_BENCH_JSON` set it appends its records (group `storage`) for
//! `cargo xtask bench`.

use bench_record::Record;
use block_queue::server::{BlockServer, Grant};
use block_queue::{
    request_region_bytes, response_region_bytes, BlockClient, Operation, Status, INFO_BYTES,
};
use component_api::Region;
use std::time::Instant;

const QUEUE: usize = 64;
const DATA: usize = 1 << 20;

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

/// Requests per second of `total` requests, batches of `batch`, one thread.
fn one_thread(batch: u64, total: u64) -> f64 {
    let r = regions();
    let mut server = BlockServer::new(r[0], r[1], r[2], DATA).unwrap();
    server.serve(grant(), 512, 256, "bench").unwrap();
    let mut client: BlockClient<QUEUE> = BlockClient::new(r[0], r[1], r[2], r[3]).unwrap();
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
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
    done as f64 / start.elapsed().as_secs_f64()
}

/// Requests per second of `total` requests, a server thread spinning.
fn two_threads(total: u64) -> f64 {
    let r = regions();
    let mut server = BlockServer::new(r[0], r[1], r[2], DATA).unwrap();
    server.serve(grant(), 512, 256, "bench").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> f64 {
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
        while done < total {
            while submitted < total && client.outstanding() < QUEUE {
                client.submit(read(submitted)).unwrap();
                submitted += 1;
            }
            while client.poll().unwrap().is_some() {
                done += 1;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        done as f64 / seconds
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(if smoke { 1 } else { 5 })
        .max(1);
    let total: u64 = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 2_000_000 })
        .max(1_000);
    let names = [
        "one thread, batches of 1".to_string(),
        "one thread, batches of 8".to_string(),
        "one thread, batches of 32".to_string(),
        format!("two threads, {QUEUE} in flight"),
    ];
    let mut rates: Vec<Vec<f64>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // Rotate which configuration goes first.
        for step in 0..names.len() {
            let which = (step + round) % names.len();
            let rate = match which {
                0 => one_thread(1, total),
                1 => one_thread(8, total),
                2 => one_thread(32, total),
                _ => two_threads(total),
            };
            rates[which].push(rate / 1e6);
        }
    }
    println!("block interface round trips, {rounds} round(s) of {total} requests: M requests/s, median [min-max]");
    for (name, values) in names.iter().zip(&rates) {
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        println!(
            "  {name:<28} {median:.2} [{:.2}-{:.2}] ({:.0} ns each)",
            sorted[0],
            sorted[sorted.len() - 1],
            1e3 / median
        );
        Record::new(
            "storage",
            name,
            "block interface round trips (no data moved)",
            "M requests/s",
            true,
        )
        .samples(values)
        .emit();
    }
}
