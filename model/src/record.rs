//! The log record every stage shares, and its level and stream vocabulary.

use serde::{Deserialize, Serialize};

use crate::labels::LabelSet;

/// Severity of a log line, detected at collection time (Loki calls it
/// `detected_level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Critical,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    #[default]
    Unknown,
}

impl Level {
    /// The lowercase name used in storage and in query results.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Critical => "critical",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
            Level::Unknown => "unknown",
        }
    }

    /// Reads a level word as written by common loggers (`ERROR`, `warning`,
    /// `E`, `fatal`, `informational`, …), case-insensitively.
    pub fn from_word(word: &[u8]) -> Option<Level> {
        if word.is_empty() || word.len() > 13 {
            return None;
        }
        let mut lower = [0u8; 13];
        for (dst, src) in lower.iter_mut().zip(word) {
            *dst = src.to_ascii_lowercase();
        }
        Some(match &lower[..word.len()] {
            b"critical" | b"crit" | b"fatal" | b"panic" | b"emerg" | b"emergency" | b"alert" | b"dpanic" => Level::Critical,
            b"error" | b"err" | b"eror" | b"e" | b"severe" => Level::Error,
            b"warn" | b"warning" | b"w" => Level::Warn,
            b"info" | b"information" | b"informational" | b"notice" | b"i" => Level::Info,
            b"debug" | b"dbug" | b"d" => Level::Debug,
            b"trace" | b"t" => Level::Trace,
            _ => return None,
        })
    }

    /// Parses the stored lowercase name.
    pub fn parse(name: &str) -> Level {
        Level::from_word(name.as_bytes()).unwrap_or(Level::Unknown)
    }
}

/// One log line with its labels, as stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogRecord {
    /// Event time, Unix nanoseconds.
    pub ts: i64,
    /// When the indexer received the line, Unix nanoseconds.
    pub ingest_ts: i64,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: String,
    /// `stdout` or `stderr` for pod logs; empty for pushed lines.
    pub stream: String,
    /// Stream labels beyond the well-known ones (from Loki push, OTLP).
    pub labels: LabelSet,
    /// Training job the pod belongs to.
    pub run: Option<String>,
    /// Rank of the pod within its run.
    pub rank: Option<String>,
    pub pod_uid: Option<String>,
    /// Container restart count, from the log file name.
    pub restart: Option<u32>,
    pub level: Level,
    /// Recognised ML failure (`cuda_oom`, `nccl_timeout`, …).
    pub ml_event: Option<String>,
    /// Per-line structured metadata (Loki's structured metadata, OTLP
    /// attributes), name → value.
    pub fields: LabelSet,
    /// The line was longer than the cap and only its head is kept.
    pub truncated: bool,
    /// The line did not parse as CRI / docker JSON and is kept raw.
    pub parse_error: bool,
    pub line: String,
    /// Where the line came from in the collector: (source index in the
    /// batch's source table, byte offset just past the line). Wire only.
    pub source: Option<(u32, u64)>,
}

impl LogRecord {
    /// The stream labels Loki's API reports for this record: the well-known
    /// labels that are set, plus the extra labels.
    pub fn stream_labels(&self) -> LabelSet {
        let mut set = self.labels.clone();
        for (name, value) in [
            ("namespace", self.namespace.as_str()),
            ("pod", self.pod.as_str()),
            ("container", self.container.as_str()),
            ("node", self.node.as_str()),
            ("stream", self.stream.as_str()),
            ("run", self.run.as_deref().unwrap_or("")),
            ("rank", self.rank.as_deref().unwrap_or("")),
        ] {
            if !value.is_empty() {
                set.insert(name, value);
            }
        }
        set
    }

    /// Splits a pushed label set into the well-known columns and the rest.
    pub fn set_stream_labels(&mut self, mut labels: LabelSet) {
        self.namespace = labels.remove("namespace").unwrap_or_default();
        self.pod = labels.remove("pod").unwrap_or_default();
        self.container = labels.remove("container").unwrap_or_default();
        self.node = labels.remove("node").unwrap_or_default();
        self.stream = labels.remove("stream").unwrap_or_default();
        self.run = labels.remove("run");
        self.rank = labels.remove("rank");
        self.labels = labels;
    }
}

/// Names of the stream labels stored in their own columns.
pub const WELL_KNOWN_STREAM_LABELS: [&str; 7] = ["namespace", "pod", "container", "node", "stream", "run", "rank"];
