//! The storage benchmark (`cargo bench -p ipc-harness --bench storage [--
//! --reps N]`): the hosted storage system (tests/systems/storage-bench.toml,
//! release build) runs the benchmark client's phases (4 KiB random reads
//! and writes at queue depth 1 and 32, 128 KiB sequential reads and
//! writes at depth 4: `blk_bench::PHASES`) against a scratch disk file
//! served by the simulated host, and then a Linux process does the same
//! operations directly on the same file (pread/pwrite, one thread per
//! outstanding operation), interleaved, `--reps` times (default 3). The
//! table gives medians [min-max]: operations per second, MB/s, the ratio
//! guest/direct, and latency at depth 1 (p50/p99).
#![forbid(unsafe_code)]

use blk_bench::{block_of, Phase, PHASES, RANDOM_SPAN_BLOCKS};
use ipc_harness::Harness;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
struct Result {
    ns: u64,
    errors: u64,
    p50: u64,
    p99: u64,
}

fn number(line: &str, before: &str) -> u64 {
    let end = line
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {line}"));
    let start = line[..end].rfind(' ').map_or(0, |i| i + 1);
    line[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {before:?} in {line}"))
}

fn guest(disk: &Path) -> Vec<Result> {
    let disk_arg = disk.display().to_string();
    let script = ipc_harness::workspace_root()
        .join("tests/systems/storage.hvsim")
        .display()
        .to_string();
    let harness = Harness::builder("tests/systems/storage-bench.toml")
        .release()
        .host_args(&["--script", &script, "--disk", &disk_arg])
        .start()
        .expect("the system starts");
    let mut results = Vec::new();
    let mut from = 0;
    for phase in PHASES {
        let (next, line) = harness.expect_line(&format!("bench: {}:", phase.name), from);
        from = next;
        results.push(Result {
            ns: number(&line, " ns,"),
            errors: number(&line, " errors"),
            p50: number(&line, " ns, p99"),
            p99: line
                .rsplit(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        });
    }
    harness.expect_output("bench: done", from);
    results
}

fn direct(disk: &Path) -> Vec<Result> {
    let file = File::options().read(true).write(true).open(disk).unwrap();
    PHASES
        .iter()
        .map(|phase| direct_phase(&file, phase))
        .collect()
}

fn direct_phase(file: &File, phase: &Phase) -> Result {
    let started = Instant::now();
    let mut latencies: Vec<u64> = Vec::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..phase.depth)
            .map(|worker| {
                scope.spawn(move || {
                    let mut buffer = vec![0x5Au8; phase.bytes as usize];
                    let mut latencies = Vec::new();
                    let mut index = worker as u32;
                    while index < phase.ops {
                        let at = block_of(phase, index) * 512;
                        let one = Instant::now();
                        if phase.write {
                            file.write_all_at(&buffer, at).unwrap();
                        } else {
                            file.read_exact_at(&mut buffer, at).unwrap();
                        }
                        latencies.push(one.elapsed().as_nanos() as u64);
                        index += phase.depth as u32;
                    }
                    latencies
                })
            })
            .collect();
        for worker in workers {
            latencies.extend(worker.join().unwrap());
        }
    });
    let ns = started.elapsed().as_nanos() as u64;
    latencies.sort_unstable();
    let at = |percent: usize| latencies[(latencies.len() * percent / 100).min(latencies.len() - 1)];
    let (p50, p99) = if phase.depth == 1 {
        (at(50), at(99))
    } else {
        (0, 0)
    };
    Result {
        ns,
        errors: 0,
        p50,
        p99,
    }
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3usize);
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs this without `--bench`: a run takes
        // minutes and a release build, so only `cargo bench` measures.
        println!("storage benchmark: run it with `cargo bench -p ipc-harness --bench storage`");
        return;
    }
    let dir = std::env::temp_dir().join(format!("storage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    // Room for the random span and the sequential phases; written once so
    // both sides find allocated blocks.
    let bytes = (RANDOM_SPAN_BLOCKS * 512) as usize;
    std::fs::write(&disk, vec![0xA5u8; bytes]).unwrap();
    let mut guest_runs = Vec::new();
    let mut direct_runs = Vec::new();
    for rep in 0..reps {
        let started = Instant::now();
        guest_runs.push(guest(&disk));
        direct_runs.push(direct(&disk));
        eprintln!("rep {rep}: {:?}", started.elapsed());
    }
    println!("| phase | guest ops/s | direct ops/s | guest/direct | guest MB/s | direct MB/s | guest p50/p99 us | direct p50/p99 us | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (index, phase) in PHASES.iter().enumerate() {
        let rate = |r: &Result| phase.ops as f64 / (r.ns as f64 / 1e9);
        let guest_rates: Vec<f64> = guest_runs.iter().map(|run| rate(&run[index])).collect();
        let direct_rates: Vec<f64> = direct_runs.iter().map(|run| rate(&run[index])).collect();
        let ratios: Vec<f64> = guest_rates
            .iter()
            .zip(&direct_rates)
            .map(|(g, d)| g / d)
            .collect();
        let mb = |ops: f64| ops * phase.bytes as f64 / 1e6;
        let (g, g_lo, g_hi) = median(guest_rates.clone());
        let (d, d_lo, d_hi) = median(direct_rates.clone());
        let (r, r_lo, r_hi) = median(ratios);
        let lat = |runs: &Vec<Vec<Result>>| {
            let (p50, _, _) = median(runs.iter().map(|run| run[index].p50 as f64 / 1e3).collect());
            let (p99, _, _) = median(runs.iter().map(|run| run[index].p99 as f64 / 1e3).collect());
            if phase.depth == 1 {
                format!("{p50:.1}/{p99:.1}")
            } else {
                "-".into()
            }
        };
        let errors: u64 = guest_runs.iter().map(|run| run[index].errors).sum();
        println!(
            "| {} | {g:.0} [{g_lo:.0}-{g_hi:.0}] | {d:.0} [{d_lo:.0}-{d_hi:.0}] | {r:.3} [{r_lo:.3}-{r_hi:.3}] | {:.1} | {:.1} | {} | {} | {errors} |",
            phase.name,
            mb(g),
            mb(d),
            lat(&guest_runs),
            lat(&direct_runs),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Duration::ZERO;
}
