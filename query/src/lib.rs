//! weft's read path: reads splits (tantivy to find rows, Parquet to read
//! them), evaluates LogQL, answers native full-text searches, and speaks
//! the HTTP API of Grafana's built-in Loki data source.

pub mod api;
pub mod config;
mod line_pages;
pub mod logql;
pub mod metrics;
pub mod nesting;
pub mod notify;
pub mod promql;
pub mod row_ranges;
pub mod rules;
pub mod runs;
pub mod search;
pub mod search_text;
pub mod storage;

use std::path::Path;
use std::sync::Arc;

pub use config::QueryConfig;

/// Errors of the query side. Each maps to one HTTP status and one
/// Prometheus/Loki `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("parse error at line {line}, col {col}: {message}")]
    Parse { line: usize, col: usize, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Execution(String),
    #[error("{0}")]
    Limit(String),
    #[error("query timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A bad rule file or alerting config: file, line and reason.
    #[error("{0}")]
    Config(String),
}

impl QueryError {
    /// A parse error at byte `pos` of `text`, with 1-based line and column.
    pub fn parse(text: &str, pos: usize, message: impl Into<String>) -> Self {
        let pos = pos.min(text.len());
        let before = &text[..pos];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        QueryError::Parse {
            line,
            col,
            message: message.into(),
        }
    }

    /// HTTP status of the error.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            QueryError::Parse { .. } | QueryError::BadRequest(_) | QueryError::Unsupported(_) | QueryError::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            QueryError::Execution(_) | QueryError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QueryError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Storage(_) | QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `errorType` of Prometheus-style error envelopes.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::Parse { .. } | QueryError::BadRequest(_) | QueryError::Unsupported(_) | QueryError::Config(_) => "bad_data",
            QueryError::Execution(_) | QueryError::Limit(_) => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Storage(_) | QueryError::Internal(_) => "internal",
        }
    }
}

/// Everything the query HTTP handlers share.
pub struct QueryService {
    pub engine: logql::eval::Engine,
    pub data_dir: std::path::PathBuf,
    /// Metric splits opened for PromQL, shared by all queries.
    pub metric_splits: promql::source::MetricSplitCache,
    pub config: QueryConfig,
    pub metrics: metrics::QueryMetrics,
}

impl QueryService {
    /// A query service over the data directory `data_dir`.
    pub fn new(data_dir: &Path, config: QueryConfig, registry: &prometheus::Registry) -> Arc<Self> {
        let store = Arc::new(storage::SplitStore::new(data_dir));
        let engine = logql::eval::Engine::new(store, config.limits());
        Arc::new(Self {
            engine,
            data_dir: data_dir.to_path_buf(),
            metric_splits: Default::default(),
            config,
            metrics: metrics::QueryMetrics::new(registry),
        })
    }
}
