//! `weft bench-pipeline LOGS DATA`: the collector's and the indexer's
//! work measured apart, each on one thread, for `benches/run`. First the
//! collector's tail + parse + multi-line + tag + extract + batch over a
//! kubelet log tree (batches kept in memory, not shipped), then the
//! indexer's ingest (WAL with fsync) + commit into Parquet + tantivy of
//! those batches. Prints one JSON object: bytes, lines, wall and CPU
//! seconds per stage, and the bytes the splits take.
//!
//! `WEFT_SPACE_USAGE=<split>.tantivy` instead prints tantivy's space usage
//! of one split index per field and component (where the index bytes go).
//! `WEFT_BENCH_STAGES=collect` stops after the collector;
//! `WEFT_BENCH_EXTRACT=off` runs it without metric extraction (what the
//! recognizers and the metric batches cost), which the report says as
//! `extract_metrics`.
//!
//! `WEFT_BENCH_COLLECTOR=<parts>` measures the collector alone with only
//! the parts named on top of tail + CRI parse + batch (the figure):
//! a comma list of `levels`, `events`, `multiline`, `extract`, `zstd`, or
//! `none` for the bare path, `all` for the default. Its batches are
//! dropped once sealed, as a shipper drops acknowledged ones (kept, an
//! uncompressed gigabyte of them cost as much in page faults as the
//! parse). It overrides `WEFT_BENCH_EXTRACT`. The report names the parts
//! that were on in `collector_parts`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weft_collector::batcher::{BatchAssembler, BatchLimits};
use weft_collector::checkpoint::TailerCheckpoint;
use weft_collector::sources::pod_logs::tailer::{PodLogTailer, TailerConfig};

/// CPU seconds (user + system) this process used so far.
fn cpu_seconds() -> f64 {
    // The process's CPU clock: every thread, to the nanosecond (the clock
    // ticks of /proc/self/stat count 10 ms, and the smoke corpus's tail +
    // parse + batch takes less).
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Peak resident memory (VmHWM) in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The collector's parts beyond tail + CRI parse + batch, as
/// `WEFT_BENCH_COLLECTOR` names them.
const COLLECTOR_PARTS: [&str; 5] = ["levels", "events", "multiline", "extract", "zstd"];

/// The parts `spec` turns on: a comma list of [`COLLECTOR_PARTS`],
/// `none` or `all`.
fn collector_parts(spec: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut parts = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "all" => parts.extend(COLLECTOR_PARTS),
            _ => match COLLECTOR_PARTS.iter().find(|p| **p == word) {
                Some(part) => parts.push(*part),
                None => anyhow::bail!(
                    "WEFT_BENCH_COLLECTOR: unknown part {word:?} (known: {}, none, all)",
                    COLLECTOR_PARTS.join(", ")
                ),
            },
        }
    }
    parts.sort_by_key(|p| COLLECTOR_PARTS.iter().position(|q| q == p));
    parts.dedup();
    Ok(parts)
}

pub fn run(logs: &Path, data: &Path) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let mut config = weft_collector::CollectorConfig::default();
    // What the collector costs without `collector.extract_metrics` (the
    // event tags, levels and wire batches stay).
    if std::env::var("WEFT_BENCH_EXTRACT").as_deref() == Ok("off") {
        config.extract_metrics = false;
    }
    let parts = match std::env::var("WEFT_BENCH_COLLECTOR") {
        Ok(spec) => Some(collector_parts(&spec)?),
        Err(_) => None,
    };
    if let Some(parts) = &parts {
        let on = |part: &str| parts.contains(&part);
        config.detect_levels = on("levels");
        config.tag_ml_events = on("events");
        config.multiline.enabled = on("multiline");
        config.extract_metrics = on("extract");
        config.wire_compression = if on("zstd") {
            weft_model::batch::WireCompression::Zstd
        } else {
            weft_model::batch::WireCompression::Uncompressed
        };
    }
    let processing = config.record_processing()?;
    let parts_on: Vec<&str> = [
        config.detect_levels,
        config.tag_ml_events,
        config.multiline.enabled,
        config.extract_metrics,
        config.wire_compression == weft_model::batch::WireCompression::Zstd,
    ]
    .into_iter()
    .zip(COLLECTOR_PARTS)
    .filter_map(|(on, part)| on.then_some(part))
    .collect();
    let metrics = Arc::new(weft_collector::metrics::CollectorMetrics::new(&registry));
    let mut tailer = PodLogTailer::new(
        logs.to_path_buf(),
        "bench".into(),
        TailerConfig::default(),
        TailerCheckpoint::default(),
        metrics.clone(),
    );
    let limits = BatchLimits {
        max_bytes: config.batch_max_bytes,
        max_rows: config.batch_max_rows,
        max_age: std::time::Duration::from_secs(3600),
        max_line_bytes: config.max_line_bytes,
    };
    let mut assembler = BatchAssembler::new(limits, "bench".into(), "bench-node".into(), metrics.clone(), processing);

    // Stage 1: the collector.
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    tailer.scan()?;
    let mut batches = Vec::new();
    let (mut batch_bytes, mut metric_bytes) = (0, 0);
    let mut keep = |batch: weft_collector::batcher::SealedBatch| {
        batch_bytes += batch.body.len();
        metric_bytes += batch.metrics_body.as_ref().map_or(0, |b| b.len());
        if parts.is_none() {
            batches.push(batch);
        }
    };
    loop {
        let read = tailer.poll(&mut assembler);
        if assembler.is_due() {
            keep(assembler.seal(tailer.checkpoint())?);
        }
        if read == 0 {
            break;
        }
    }
    if !assembler.is_empty() {
        keep(assembler.seal(tailer.checkpoint())?);
    }
    let collect_wall = wall0.elapsed().as_secs_f64();
    let collect_cpu = cpu_seconds() - cpu0;
    let read_bytes = metrics.bytes_read.get();
    let lines = metrics.lines.get();
    let line_bytes: usize = batches.iter().map(|b| b.line_bytes).sum();
    // Samples extracted from lines; the bodies also hold the per-batch
    // tallies (lines, restarts, events).
    let metric_samples = metrics.samples_extracted.get();
    let collector_rss = peak_rss();

    if let Ok(dir) = std::env::var("WEFT_SPACE_USAGE") {
        let index = tantivy::Index::open_in_dir(&dir)?;
        let usage = index.reader()?.searcher().space_usage()?;
        println!("{}", serde_json::to_string(&usage)?);
        return Ok(());
    }
    if parts.is_some() || std::env::var("WEFT_BENCH_STAGES").as_deref() == Ok("collect") {
        // Profiling the collector alone.
        println!(
            "{}",
            serde_json::json!({"read_bytes": read_bytes, "lines": lines, "collect_cpu_s": collect_cpu, "collect_wall_s": collect_wall,
                "extract_metrics": config.extract_metrics, "collector_parts": parts_on,
                "extracted_samples": metric_samples, "metric_body_bytes": metric_bytes, "batch_bytes": batch_bytes})
        );
        return Ok(());
    }
    // Stage 2: the indexer, on this thread, committing every 64 MiB of
    // text as its default commit_bytes would.
    let indexer_config = weft_indexer::IndexerConfig::default();
    let commit_bytes = indexer_config.commit_bytes as usize;
    let indexer = weft_indexer::Indexer::open(data, indexer_config, &registry)?;
    let (cpu1, wall1) = (cpu_seconds(), Instant::now());
    let mut since_commit = 0;
    for batch in &batches {
        indexer.ingest_arrow("default", &batch.key, &batch.body.contiguous(), "bench")?;
        since_commit += batch.line_bytes;
        if since_commit >= commit_bytes {
            indexer.commit()?;
            since_commit = 0;
        }
    }
    indexer.commit()?;
    let index_wall = wall1.elapsed().as_secs_f64();
    let index_cpu = cpu_seconds() - cpu1;
    let splits = dir_bytes(&data.join("splits/logs"));
    let report = serde_json::json!({
        "read_bytes": read_bytes,
        "extract_metrics": config.extract_metrics,
        "lines": lines,
        "line_bytes": line_bytes,
        "batches": batches.len(),
        "batch_bytes": batch_bytes,
        "extracted_samples": metric_samples,
        "metric_body_bytes": metric_bytes,
        "collect_wall_s": collect_wall,
        "collect_cpu_s": collect_cpu,
        "collector_peak_rss": collector_rss,
        "index_wall_s": index_wall,
        "index_cpu_s": index_cpu,
        "split_bytes": splits,
        "peak_rss": peak_rss(),
    });
    println!("{report}");
    Ok(())
}
