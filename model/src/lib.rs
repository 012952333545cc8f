//! What every weft stage shares: the log record and its Arrow schemas, the
//! collector → indexer wire codec, label sets, and time parsing.

pub mod batch;
pub mod events;
pub mod fold;
pub mod labels;
pub mod level;
pub mod metric;
pub mod record;
pub mod scan;
pub mod source_batch;
pub mod time;
pub mod tls;

pub use batch::{LogBatchBuilder, LogBatchView, RecordRef};
pub use labels::LabelSet;
pub use record::{Level, LogRecord};

/// Errors of the shared model: malformed input in one of its formats.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid timestamp {text:?}: {reason}")]
    InvalidTimestamp { text: String, reason: &'static str },
    #[error("invalid duration {text:?}: {reason}")]
    InvalidDuration { text: String, reason: &'static str },
    #[error("invalid label set {text:?} at byte {at}: {reason}")]
    InvalidLabels { text: String, at: usize, reason: &'static str },
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName(String),
    #[error("arrow ipc: {0}")]
    Ipc(String),
    #[error("schema mismatch: {0}")]
    Schema(String),
    #[error("too large: {0}")]
    TooLarge(String),
}
