//! The indexer's internal metrics, named once and exported on `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of the write path.
pub struct IndexerMetrics {
    pub rows_ingested: IntCounterVec,
    pub samples_ingested: IntCounterVec,
    pub bytes_ingested: IntCounter,
    pub duplicate_rows: IntCounterVec,
    pub requests: IntCounterVec,
    pub wal_appends: IntCounter,
    pub wal_bytes: IntGauge,
    pub wal_corruptions: IntCounter,
    pub wal_unreplayable: IntCounter,
    pub requests_waiting: IntGauge,
    pub pending_bytes: IntGauge,
    pub commits: IntCounter,
    pub commit_seconds: Histogram,
    pub commit_errors: IntCounter,
    pub splits: IntGauge,
    pub split_bytes: IntGauge,
    pub merges: IntCounter,
    pub retention_deleted_splits: IntCounter,
    pub truncated_lines: IntCounter,
    pub invalid_utf8: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl IndexerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help).expect("valid metric"));
        let gauge = |name: &str, help: &str| register(registry, IntGauge::new(name, help).expect("valid metric"));
        let vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        Self {
            rows_ingested: vec("weft_indexer_rows_ingested_total", "Rows accepted, by endpoint", &["endpoint"]),
            samples_ingested: vec(
                "weft_indexer_samples_ingested_total",
                "Metric samples accepted, by endpoint",
                &["endpoint"],
            ),
            bytes_ingested: counter("weft_indexer_request_bytes_total", "Request body bytes accepted"),
            duplicate_rows: vec(
                "weft_indexer_duplicate_rows_total",
                "Rows dropped as already held, by reason",
                &["reason"],
            ),
            requests: vec(
                "weft_indexer_requests_total",
                "Ingest requests, by endpoint and status code",
                &["endpoint", "code"],
            ),
            wal_appends: counter("weft_indexer_wal_appends_total", "Records appended to the WAL"),
            wal_bytes: gauge("weft_indexer_wal_bytes", "Bytes in WAL segments"),
            wal_corruptions: counter("weft_indexer_wal_corruptions_total", "Damaged WAL tails cut off at replay"),
            requests_waiting: gauge(
                "weft_indexer_requests_waiting",
                "Ingest requests waiting for one of max_concurrent_requests",
            ),
            wal_unreplayable: counter(
                "weft_indexer_wal_unreplayable_total",
                "WAL records replay could not admit, kept in wal-rejected/",
            ),
            pending_bytes: gauge("weft_indexer_pending_bytes", "Bytes of lines waiting for the next commit"),
            commits: counter("weft_indexer_commits_total", "Commits that wrote splits"),
            commit_seconds: register(
                registry,
                Histogram::with_opts(HistogramOpts::new("weft_indexer_commit_seconds", "Time to write a commit's splits"))
                    .expect("valid metric"),
            ),
            commit_errors: counter("weft_indexer_commit_errors_total", "Commits that failed and will be retried"),
            splits: gauge("weft_indexer_splits", "Live splits in the catalog"),
            split_bytes: gauge("weft_indexer_split_bytes", "Bytes of live splits (Parquet + index)"),
            merges: counter("weft_indexer_merges_total", "Merges of small splits"),
            retention_deleted_splits: counter("weft_indexer_retention_deleted_splits_total", "Splits deleted by retention"),
            truncated_lines: counter("weft_indexer_truncated_lines_total", "Pushed lines longer than the cap, head kept"),
            invalid_utf8: counter("weft_indexer_invalid_utf8_total", "Pushed lines with invalid UTF-8, kept lossily"),
        }
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }
}
