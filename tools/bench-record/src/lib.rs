//! The result records every benchmark writes (docs/performance.md's
//! source). A benchmark builds one [`Record`] per measured cell and calls
//! [`Record::emit`]: if the environment variable [`RESULTS_ENV`] names a
//! file, the record is appended to it as one line of JSON; otherwise
//! nothing happens (the benchmark prints its own table as before).
//! `cargo xtask bench` sets the variable, runs every benchmark and renders
//! the report from the file.
//!
//! ```json
//! {"group":"ring","series":"ours","x":64,"x_label":"packet size (B)",
//!  "metric":"throughput","unit":"Mpkt/s","higher_is_better":true,
//!  "samples":[4.1,4.3,4.2],"baseline":"cross-core copy"}
//! ```
//! `samples` holds one value per interleaved round, or, when
//! `distribution` is true, every single observation (e.g. each round
//! trip). `baseline` names the series (same group, x and metric) this one
//! is compared with.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::io::Write;

/// The environment variable naming the results file.
pub const RESULTS_ENV: &str = "VMBUS_BENCH_JSON";

/// Set (to anything) by `cargo xtask bench --smoke`: the benchmarks build
/// the systems they start with the dev profile instead of release. A smoke
/// run only proves the benchmarks still work, and `cargo xtask test` has
/// already built every hosted system that way, so the smoke costs no second
/// (optimised) build of each.
pub const UNOPTIMISED_ENV: &str = "VMBUS_BENCH_UNOPTIMISED";

/// Whether benchmarks should build what they run optimised (see
/// [`UNOPTIMISED_ENV`]).
pub fn optimised_builds() -> bool {
    std::env::var_os(UNOPTIMISED_ENV).is_none()
}

/// One measured cell: a series at one x for one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub group: String,
    pub series: String,
    #[serde(default)]
    pub x: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_label: Option<String>,
    pub metric: String,
    pub unit: String,
    #[serde(default)]
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distribution: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Record {
    /// A record of per-round values (`samples` still empty).
    pub fn new(
        group: &str,
        series: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
    ) -> Record {
        Record {
            group: group.into(),
            series: series.into(),
            x: None,
            x_label: None,
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better,
            samples: Vec::new(),
            distribution: false,
            baseline: None,
            note: None,
        }
    }

    pub fn x(mut self, x: f64, label: &str) -> Record {
        self.x = Some(x);
        self.x_label = Some(label.into());
        self
    }

    pub fn baseline(mut self, series: &str) -> Record {
        self.baseline = Some(series.into());
        self
    }

    pub fn note(mut self, note: &str) -> Record {
        self.note = Some(note.into());
        self
    }

    /// One value per interleaved round.
    pub fn samples(mut self, samples: &[f64]) -> Record {
        self.samples = samples.to_vec();
        self
    }

    /// Every single observation (the report shows percentiles and a CDF).
    pub fn distribution(mut self, observations: &[f64]) -> Record {
        self.samples = observations.to_vec();
        self.distribution = true;
        self
    }

    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        // Only strings and finite or non-finite floats: serde_json writes
        // NaN and infinities as null, which `from_line` rejects, so a
        // broken measurement shows up at render time instead of silently.
        serde_json::to_string(self).expect("a record always serializes")
    }

    pub fn from_line(line: &str) -> Result<Record, String> {
        serde_json::from_str(line).map_err(|e| format!("not a result record ({e}): {line}"))
    }

    /// Append to the results file if [`RESULTS_ENV`] names one. A record
    /// that cannot be written is an error: a silently missing cell would
    /// read as "not measured".
    pub fn emit(&self) {
        if let Some(path) = std::env::var_os(RESULTS_ENV) {
            append(std::path::Path::new(&path), self).unwrap_or_else(|error| {
                panic!("cannot append to {}: {error}", path.to_string_lossy())
            });
        }
    }
}

/// Append one record to `path` in a single write (O_APPEND), so records of
/// concurrent writers do not interleave within a line.
pub fn append(path: &std::path::Path, record: &Record) -> std::io::Result<()> {
    let mut line = record.to_line();
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// The value after `name` in a benchmark's arguments (`--rounds 7`), if
/// it is there and parses as a `T`.
pub fn arg<T: core::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_is_the_value_after_its_name() {
        let args: Vec<String> = ["--smoke", "--rounds", "7", "--scale", "x"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(arg::<usize>(&args, "--rounds"), Some(7));
        assert_eq!(arg::<u64>(&args, "--scale"), None, "not a number");
        assert_eq!(arg::<u64>(&args, "--keys"), None, "not given");
        assert_eq!(arg::<f64>(&args[..2], "--rounds"), None, "no value");
    }

    #[test]
    fn a_record_survives_a_round_trip_through_its_line() {
        let record = Record::new("ring", "ours", "throughput", "Mpkt/s", true)
            .x(64.0, "packet size (B)")
            .baseline("cross-core copy")
            .samples(&[4.1, 4.3, 4.2]);
        let line = record.to_line();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""group":"ring""#), "{line}");
        assert_eq!(Record::from_line(&line).unwrap(), record);
    }

    #[test]
    fn the_plan_s_example_line_parses() {
        let line = r#"{"group":"ring","series":"ours","x":64,"x_label":"packet size (B)","metric":"throughput","unit":"Mpkt/s","higher_is_better":true,"samples":[4.1,4.3,4.2],"baseline":"cross-core copy","note":"optional text"}"#;
        let record = Record::from_line(line).unwrap();
        assert_eq!(record.x, Some(64.0));
        assert_eq!(record.samples, vec![4.1, 4.3, 4.2]);
        assert!(!record.distribution);
        assert_eq!(record.baseline.as_deref(), Some("cross-core copy"));
    }

    #[test]
    fn a_nan_sample_does_not_read_back() {
        let record = Record::new("ipc", "a", "m", "us", false).samples(&[f64::NAN]);
        assert!(Record::from_line(&record.to_line()).is_err());
    }

    #[test]
    fn emit_appends_one_line_per_record() {
        let dir = std::env::temp_dir().join(format!("bench-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.jsonl");
        let _ = std::fs::remove_file(&path);
        let record =
            Record::new("ipc", "call", "round trip", "us", false).distribution(&[1.0, 2.0]);
        append(&path, &record).unwrap();
        append(&path, &record).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(Record::from_line(lines[1]).unwrap(), record);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
