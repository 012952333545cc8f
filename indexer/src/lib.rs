//! weft's write path. Batches arrive over HTTP (the collector's Arrow IPC,
//! Loki push), are appended to a write-ahead log before they are
//! acknowledged, and are committed every few seconds into splits (Parquet +
//! tantivy) listed in an atomically replaced catalog. Small splits are
//! merged in the background; retention deletes whole old splits.
//!
//! The chain: ingest → WAL → pending rows → split writer → catalog.

pub mod catalog;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod remote;
pub mod service;
pub mod split;
pub mod wal;

use std::path::PathBuf;

pub use config::IndexerConfig;
pub use service::Indexer;

/// Errors of the indexer. Each maps to exactly one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("invalid indexer config: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Model(#[from] weft_model::ModelError),
}

impl IndexerError {
    /// The HTTP status an API answers this error with.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            IndexerError::BadRequest(_) | IndexerError::Model(_) => StatusCode::BAD_REQUEST,
            IndexerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IndexerError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IndexerError::Unauthorized => StatusCode::UNAUTHORIZED,
            IndexerError::Unavailable(_) | IndexerError::Io { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IndexerError::Corrupt(_) | IndexerError::Config(_) | IndexerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests;
