//! The collector's internal metrics, named once and exported on `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of every collector stage.
pub struct CollectorMetrics {
    pub lines: IntCounter,
    pub samples_extracted: IntCounter,
    pub extract_panics: IntCounter,
    pub otlp_samples: IntCounter,
    pub otlp_log_records: IntCounter,
    pub otlp_rejected: IntCounter,
    pub forward_dropped: IntCounterVec,
    pub gpu_samples: IntCounter,
    pub xid_events: IntCounter,
    pub ml_events: IntCounterVec,
    pub kubernetes_pods: IntGauge,
    pub kubernetes_errors: IntCounter,
    pub multiline_blocks: IntCounter,
    pub bytes_read: IntCounter,
    pub parse_errors: IntCounter,
    pub invalid_utf8: IntCounter,
    pub truncated_lines: IntCounter,
    pub file_truncations: IntCounter,
    pub rotations: IntCounter,
    pub checkpoint_resets: IntCounter,
    pub files_open: IntGauge,
    pub tail_lag_bytes: IntGauge,
    pub batches_sent: IntCounter,
    pub batches_spooled: IntCounter,
    pub batches_rejected: IntCounter,
    pub send_errors: IntCounterVec,
    pub spool_bytes: IntGauge,
    pub spool_batches: IntGauge,
    pub spool_corrupt: IntCounter,
    pub checkpoint_writes: IntCounter,
    pub backpressure_waits: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl CollectorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let send_errors = IntCounterVec::new(
            Opts::new("weft_collector_send_errors_total", "Failed deliveries to the indexer, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(send_errors.clone()));
        Self {
            lines: counter(registry, "weft_collector_lines_total", "Log lines read and shipped"),
            forward_dropped: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "weft_collector_forward_dropped_total",
                        "Batches dropped after the indexer did not take them, by source",
                    ),
                    &["source"],
                )
                .expect("valid metric");
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            gpu_samples: counter(
                registry,
                "weft_collector_gpu_samples_total",
                "GPU counter samples read (NVML or dcgm-exporter)",
            ),
            ml_events: {
                let c = IntCounterVec::new(
                    Opts::new("weft_collector_ml_events_total", "Log records tagged with an ML failure, by event"),
                    &["event"],
                )
                .expect("valid metric");
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            kubernetes_pods: gauge(
                registry,
                "weft_collector_kubernetes_pods",
                "Pods of this node known from the Kubernetes API (recently deleted ones included)",
            ),
            kubernetes_errors: counter(
                registry,
                "weft_collector_kubernetes_errors_total",
                "Failed pod list or watch calls to the Kubernetes API",
            ),
            multiline_blocks: counter(
                registry,
                "weft_collector_multiline_blocks_total",
                "Multi-line records (tracebacks, stack dumps) joined",
            ),
            xid_events: counter(registry, "weft_collector_xid_events_total", "GPU Xid events seen through NVML"),
            otlp_samples: counter(
                registry,
                "weft_collector_otlp_samples_total",
                "Metric samples received over OTLP and delivered",
            ),
            otlp_log_records: counter(
                registry,
                "weft_collector_otlp_log_records_total",
                "Log records received over OTLP and delivered",
            ),
            otlp_rejected: counter(
                registry,
                "weft_collector_otlp_rejected_requests_total",
                "OTLP requests that did not decode",
            ),
            samples_extracted: counter(
                registry,
                "weft_collector_extracted_samples_total",
                "Training metric samples found in log lines",
            ),
            extract_panics: counter(
                registry,
                "weft_collector_extract_panics_total",
                "Lines whose metric extraction failed with an internal error (line kept, metrics skipped)",
            ),
            bytes_read: counter(registry, "weft_collector_read_bytes_total", "Bytes read from log files"),
            parse_errors: counter(
                registry,
                "weft_collector_parse_errors_total",
                "Lines that were not valid CRI or docker json-file, kept raw",
            ),
            invalid_utf8: counter(
                registry,
                "weft_collector_invalid_utf8_total",
                "Lines with invalid UTF-8, kept lossily",
            ),
            truncated_lines: counter(
                registry,
                "weft_collector_truncated_lines_total",
                "Lines longer than the cap, head kept",
            ),
            file_truncations: counter(
                registry,
                "weft_collector_file_truncations_total",
                "Files found shorter than their read offset",
            ),
            rotations: counter(registry, "weft_collector_rotations_total", "Log files seen renamed by rotation"),
            checkpoint_resets: counter(
                registry,
                "weft_collector_checkpoint_resets_total",
                "Unreadable checkpoint files set aside at start (every file read again)",
            ),
            files_open: gauge(registry, "weft_collector_files_open", "Log files being tailed"),
            tail_lag_bytes: gauge(
                registry,
                "weft_collector_tail_lag_bytes",
                "Bytes written to tailed files and not read yet (how far tailing is behind)",
            ),
            batches_sent: counter(registry, "weft_collector_batches_sent_total", "Batches acknowledged by the indexer"),
            batches_spooled: counter(
                registry,
                "weft_collector_batches_spooled_total",
                "Batches written to the disk spool",
            ),
            batches_rejected: counter(
                registry,
                "weft_collector_batches_rejected_total",
                "Batches the indexer refused permanently, kept under state/rejected",
            ),
            send_errors,
            spool_bytes: gauge(registry, "weft_collector_spool_bytes", "Bytes waiting in the disk spool"),
            spool_batches: gauge(registry, "weft_collector_spool_batches", "Batches waiting in the disk spool"),
            spool_corrupt: counter(
                registry,
                "weft_collector_spool_corrupt_total",
                "Spool files that failed their checksum, set aside",
            ),
            checkpoint_writes: counter(registry, "weft_collector_checkpoint_writes_total", "Checkpoint files written"),
            backpressure_waits: counter(
                registry,
                "weft_collector_backpressure_waits_total",
                "Times tailing paused because the shipper was full",
            ),
        }
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }
}
