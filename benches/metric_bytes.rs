//! Bytes per sample of metric splits, for regular scrapes: what a node's
//! GPUs and a training job produce over a while, written through the same
//! split writer the indexer uses. Prints weft's figure beside the goal and
//! Prometheus' published TSDB figure (about 1.3 bytes per sample).
//!
//! `cargo bench --bench metric_bytes` (or with `--profile dev` for a quick
//! run; the figure does not depend on the build profile).

use std::time::Instant;

use weft_indexer::split::metrics::write_metric_split;
use weft_model::metric::MetricBatchBuilder;
use weft_model::LabelSet;

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1_000_000) as f64 / 1_000_000.0
    }
}

/// Free memory mirrors used memory; the bench keeps it simple.
fn state_of_prev(zero: &mut f64) -> &mut f64 {
    zero
}

fn main() {
    let nodes = 16;
    let gpus = 8;
    let steps = 360; // one hour of 10 s scrapes
    let start_ms = 1_764_000_000_000i64;
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut builder = MetricBatchBuilder::new();
    let mut samples = 0usize;
    let names = [
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_XID_ERRORS",
    ];
    let mut series: Vec<(String, f64)> = Vec::new();
    for node in 0..nodes {
        for gpu in 0..gpus {
            for name in names {
                let labels = LabelSet::from_pairs([
                    ("__name__", name.to_string()),
                    ("gpu", gpu.to_string()),
                    ("UUID", format!("GPU-{node:04x}{gpu:04x}-1111-2222-3333-444455556666")),
                    ("device", format!("nvidia{gpu}")),
                    ("modelName", "NVIDIA H100 80GB HBM3".to_string()),
                    ("Hostname", format!("gpu-node-{node}")),
                    ("namespace", "ml".to_string()),
                    ("pod", format!("train-{}", node / 2)),
                ]);
                series.push((labels.to_string(), 0.0));
            }
        }
    }
    for step in 0..steps {
        // Scrapes land a few milliseconds off the interval, as real ones do.
        let ts = start_ms + step * 10_000 + (rng.next() * 20.0) as i64;
        for (i, (text, state)) in series.iter_mut().enumerate() {
            // Values shaped like a busy training node: utilization mostly
            // pinned with dips, memory held by the allocator, power in mW
            // precision drifting, temperature and clocks nearly flat, the
            // energy counter rising with power.
            let value = match i % names.len() {
                0 => {
                    if rng.next() < 0.1 {
                        (60.0 + rng.next() * 40.0).round()
                    } else {
                        100.0
                    }
                }
                1 => (35.0 + rng.next() * 10.0).round(),
                2 => {
                    if rng.next() < 0.02 {
                        *state = (rng.next() * 4096.0).round();
                    }
                    72_000.0 + *state
                }
                3 => 81_559.0 - 72_000.0 - *state_of_prev(&mut 0.0),
                4 => {
                    *state = (*state + (rng.next() - 0.5) * 20_000.0).clamp(-100_000.0, 100_000.0).round();
                    (650_000.0 + *state) / 1000.0
                }
                5 => (62.0 + (rng.next() * 3.0).floor()).round(),
                6 => 1980.0,
                7 => {
                    *state += 6_500_000.0 + (rng.next() * 200_000.0).round();
                    *state
                }
                _ => 0.0,
            };
            builder.append(text, ts, value);
            samples += 1;
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    if let Ok(keep) = std::env::var("WEFT_BENCH_KEEP") {
        std::fs::create_dir_all(&keep).ok();
    }
    let started = Instant::now();
    let target = std::env::var("WEFT_BENCH_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    let meta = write_metric_split(&target, "default", &[builder.finish()], 0).expect("split written");
    let elapsed = started.elapsed();
    let bytes = meta.parquet_bytes + meta.index_bytes;
    let per_sample = bytes as f64 / samples as f64;
    println!("metric storage, {} series x {steps} scrapes = {samples} samples", series.len());
    println!("{:<34} {:>10} {:>10} {:>10}", "figure", "weft", "goal", "prometheus");
    println!(
        "{:<34} {:>10.3} {:>10} {:>10}",
        "bytes per sample (parquet+index)", per_sample, "<= 1.0", "~1.3"
    );
    println!("{:<34} {:>10} {:>10} {:>10}", "split bytes", bytes, "-", "-");
    println!(
        "{:<34} {:>10.1} {:>10} {:>10}",
        "write ms",
        elapsed.as_secs_f64() * 1000.0,
        "-",
        "-"
    );
}
