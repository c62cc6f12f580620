//! The benchmark's smoke run: every series in both groups streams real
//! packets (the harness checks every packet's stamp and panics on a loss,
//! a duplicate or a corruption), and the JSON records follow the contract.

use std::process::Command;

#[test]
fn smoke_run_streams_every_series_and_writes_records() {
    let json = std::env::temp_dir().join(format!("ring-bench-smoke-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let output = Command::new(env!("CARGO_BIN_EXE_ring-bench"))
        .args(["--smoke", "--sizes", "64,4096,65536"])
        .env("VMBUS_BENCH_JSON", &json)
        .output()
        .expect("run ring-bench");
    assert!(
        output.status.success(),
        "ring-bench --smoke failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON records");
    let _ = std::fs::remove_file(&json);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    for group in ["ring", "ring-hosted"] {
        for series in ["cross-core copy", "ours", "ours, publish per 16"] {
            for size in [64, 4096, 65536] {
                let record = records
                    .iter()
                    .find(|r| {
                        r["group"] == group
                            && r["series"] == series
                            && r["x"].as_f64() == Some(f64::from(size))
                            && r["metric"] == "throughput"
                    })
                    .unwrap_or_else(|| panic!("no record for {group} {series} {size}"));
                assert_eq!(record["unit"], "Mpkt/s");
                let samples = record["samples"].as_array().expect("samples");
                assert_eq!(samples.len(), 1, "one sample per round");
                assert!(samples[0].as_f64().expect("number") > 0.0);
                let baseline = if series == "cross-core copy" {
                    serde_json::Value::Null
                } else {
                    "cross-core copy".into()
                };
                assert_eq!(record["baseline"], baseline);
            }
        }
    }
    assert!(records
        .iter()
        .any(|r| r["series"] == "memcpy" && r["group"] == "ring"));
    assert!(!records
        .iter()
        .any(|r| r["series"] == "memcpy" && r["group"] == "ring-hosted"));
}
