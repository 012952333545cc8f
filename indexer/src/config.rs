//! The indexer's configuration: the `indexer:` section of weft's config
//! file. Every field has a default, so an empty section is valid.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::time::serde_duration;

/// Settings of `weft indexer` (and the indexer inside `weft standalone`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    /// Longest time between a line's arrival and its split commit (when it
    /// becomes searchable).
    #[serde(with = "serde_duration")]
    pub commit_interval: Duration,
    /// Commit early once this many bytes of lines wait in memory.
    pub commit_bytes: u64,
    /// Refuse ingestion (503, the sender retries) past this many bytes of
    /// pending rows in memory (Arrow columns: about twice their text).
    pub max_pending_bytes: u64,
    /// Splits whose newest line arrived longer ago than this are deleted.
    #[serde(with = "serde_duration")]
    pub retention: Duration,
    /// Size at which a new WAL segment is started.
    pub wal_segment_bytes: u64,
    /// fsync the WAL before acknowledging (turn off only for benchmarks).
    pub wal_fsync: bool,
    /// Largest request body accepted (after decompression).
    pub max_request_bytes: usize,
    /// Longest line kept; longer pushed lines keep their head, marked truncated.
    pub max_line_bytes: usize,
    /// Most rows in one request.
    pub max_request_rows: usize,
    /// Most ingest requests read and decoded at once; the others wait
    /// (their bodies unread) for one to finish. Bounds the memory requests
    /// take: each may hold `max_request_bytes` and decode to 16× that.
    pub max_concurrent_requests: usize,
    /// How often small splits are looked at for merging.
    #[serde(with = "serde_duration")]
    pub merge_interval: Duration,
    /// Merge once a time bucket has at least this many small splits.
    pub merge_min_splits: usize,
    /// Largest merged split, in bytes of line text.
    pub merge_max_line_bytes: u64,
    /// How long files of replaced splits stay for queries still reading them.
    #[serde(with = "serde_duration")]
    pub grace_period: Duration,
    /// Bearer token required on ingest endpoints, when set.
    pub auth_token: Option<String>,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_secs(2),
            commit_bytes: 64 * 1024 * 1024,
            max_pending_bytes: 256 * 1024 * 1024,
            retention: Duration::from_secs(7 * 86_400),
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_fsync: true,
            max_request_bytes: 64 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            max_request_rows: 1_000_000,
            max_concurrent_requests: 4,
            merge_interval: Duration::from_secs(10),
            merge_min_splits: 8,
            merge_max_line_bytes: 256 * 1024 * 1024,
            grace_period: Duration::from_secs(60),
            auth_token: None,
        }
    }
}

impl IndexerConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), crate::IndexerError> {
        let bad = |what: &str| Err(crate::IndexerError::Config(what.to_string()));
        if self.commit_interval.is_zero() || self.merge_interval.is_zero() {
            return bad("indexer.commit_interval and merge_interval must be positive");
        }
        if self.retention < Duration::from_secs(60) {
            return bad("indexer.retention must be at least 1m");
        }
        if self.merge_min_splits < 2 {
            return bad("indexer.merge_min_splits must be at least 2");
        }
        if self.max_line_bytes < 1024 {
            return bad("indexer.max_line_bytes must be at least 1024");
        }
        if self.max_concurrent_requests == 0 {
            return bad("indexer.max_concurrent_requests must be at least 1");
        }
        Ok(())
    }
}
