//! The query service's internal metrics, named once and exported on
//! `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Latency and errors of the read path.
pub struct QueryMetrics {
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
}

impl QueryMetrics {
    pub fn new(registry: &Registry) -> Self {
        let duration = HistogramVec::new(
            HistogramOpts::new("weft_query_duration_seconds", "Query latency, by endpoint")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("weft_query_errors_total", "Failed queries, by endpoint and error type"),
            &["endpoint", "type"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(duration.clone()));
        let _ = registry.register(Box::new(errors.clone()));
        Self { duration, errors }
    }
}
