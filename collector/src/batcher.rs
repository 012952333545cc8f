//! Turns tailed lines into Arrow batches: detects each line's level, keeps
//! invalid UTF-8 lossily, records each line's source position, derives run
//! and rank from the pod name, pulls training metrics out of the line, and
//! seals a batch by size or age into the compressed Arrow IPC bodies the
//! indexer takes (lines, and the metric samples found in them), with an
//! idempotency key and the checkpoint to store once it is acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_model::batch::{encode_ipc, META_SOURCES};
use weft_model::{LabelSet, LogBatchBuilder, RecordRef};

use crate::checkpoint::TailerCheckpoint;
use crate::enrich::run_and_rank;
use crate::extract::{MetricExtractor, METRIC_PREFIX};
use crate::metrics::CollectorMetrics;
use crate::sources::pod_logs::tailer::{LineSink, LogLine};
use crate::CollectorError;
use std::sync::Arc;
use weft_model::level::detect_level;
use weft_model::metric::{MetricBatchBuilder, METRIC_NAME};

/// When a batch is sealed.
#[derive(Clone, Debug)]
pub struct BatchLimits {
    /// Seal once this many bytes of line text are in the batch.
    pub max_bytes: usize,
    /// Seal once this many lines are in the batch.
    pub max_rows: usize,
    /// Seal a non-empty batch this long after its first line.
    pub max_age: Duration,
    /// Longest line text after UTF-8 repair (repair can lengthen a line).
    pub max_line_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_rows: 32 * 1024,
            max_age: Duration::from_secs(1),
            max_line_bytes: 1024 * 1024,
        }
    }
}

/// A batch ready to ship.
#[derive(Clone, Debug)]
pub struct SealedBatch {
    /// Idempotency key: the same lines always give the same key.
    pub key: String,
    /// Arrow IPC stream (zstd buffers), wire schema.
    pub body: Vec<u8>,
    /// Training metrics found in the lines (Arrow IPC, metric wire schema).
    pub metrics_body: Option<Vec<u8>>,
    pub rows: usize,
    pub line_bytes: usize,
    /// Tailer state just after the batch's last line.
    pub checkpoint: TailerCheckpoint,
}

/// Collects lines into an Arrow batch.
pub struct BatchAssembler {
    limits: BatchLimits,
    collector_id: String,
    node: String,
    builder: LogBatchBuilder,
    sources: Vec<String>,
    source_index: HashMap<String, u32>,
    /// Per source: (first, last) position in this batch.
    ranges: Vec<(u64, u64)>,
    last_source: Option<(String, u32)>,
    opened: Option<Instant>,
    metrics: Arc<CollectorMetrics>,
    empty_labels: LabelSet,
    extractor: Option<MetricExtractor>,
    samples: MetricBatchBuilder,
    found: Vec<(String, f64)>,
    /// Per pod: the run and rank its name suggests.
    runs: HashMap<String, (Option<String>, Option<String>)>,
}

/// 64-bit FNV-1a, a stable hash for idempotency keys.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

impl BatchAssembler {
    /// An assembler; `extractor` finds training metrics in lines (none: off).
    pub fn new(
        limits: BatchLimits,
        collector_id: String,
        node: String,
        metrics: Arc<CollectorMetrics>,
        extractor: Option<MetricExtractor>,
    ) -> Self {
        Self {
            builder: LogBatchBuilder::with_capacity(4096, limits.max_bytes.min(8 << 20)),
            limits,
            collector_id,
            node,
            sources: Vec::new(),
            source_index: HashMap::new(),
            ranges: Vec::new(),
            last_source: None,
            opened: None,
            metrics,
            empty_labels: LabelSet::new(),
            extractor,
            samples: MetricBatchBuilder::new(),
            found: Vec::new(),
            runs: HashMap::new(),
        }
    }

    /// Lines in the open batch.
    pub fn len(&self) -> usize {
        self.builder.len()
    }

    /// True when no line is waiting.
    pub fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }

    /// True when the open batch should be sealed now.
    pub fn is_due(&self) -> bool {
        self.is_full() || self.opened.is_some_and(|t| t.elapsed() >= self.limits.max_age)
    }

    /// Time until the open batch becomes due by age.
    pub fn time_left(&self) -> Option<Duration> {
        self.opened.map(|t| self.limits.max_age.saturating_sub(t.elapsed()))
    }

    fn source_slot(&mut self, key: &str, position: u64) -> u32 {
        let index = match &self.last_source {
            Some((last, index)) if last == key => *index,
            _ => {
                let index = match self.source_index.get(key) {
                    Some(index) => *index,
                    None => {
                        let index = self.sources.len() as u32;
                        self.sources.push(key.to_string());
                        self.source_index.insert(key.to_string(), index);
                        self.ranges.push((position, position));
                        index
                    }
                };
                self.last_source = Some((key.to_string(), index));
                index
            }
        };
        let range = &mut self.ranges[index as usize];
        range.0 = range.0.min(position);
        range.1 = range.1.max(position);
        index
    }

    /// Seals the open batch with the tailer state that follows it.
    pub fn seal(&mut self, checkpoint: TailerCheckpoint) -> Result<SealedBatch, CollectorError> {
        let rows = self.builder.len();
        let line_bytes = self.builder.line_bytes();
        let batch = self.builder.finish(true);
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for (key, (first, last)) in self.sources.iter().zip(&self.ranges) {
            fnv1a(&mut hash, key.as_bytes());
            fnv1a(&mut hash, &first.to_le_bytes());
            fnv1a(&mut hash, &last.to_le_bytes());
        }
        fnv1a(&mut hash, &(rows as u64).to_le_bytes());
        let key = format!("{}-{hash:016x}", self.collector_id);
        let metadata = HashMap::from([(
            META_SOURCES.to_string(),
            serde_json::to_string(&self.sources).expect("strings serialize"),
        )]);
        let body = encode_ipc(&[batch], metadata).map_err(CollectorError::Model)?;
        let metrics_body = if self.samples.is_empty() {
            None
        } else {
            Some(encode_ipc(&[self.samples.finish()], HashMap::new()).map_err(CollectorError::Model)?)
        };
        if self.runs.len() > 4096 {
            self.runs.clear();
        }
        self.sources.clear();
        self.source_index.clear();
        self.ranges.clear();
        self.last_source = None;
        self.opened = None;
        Ok(SealedBatch {
            key,
            body,
            metrics_body,
            rows,
            line_bytes,
            checkpoint,
        })
    }
}

impl LineSink for BatchAssembler {
    fn line(&mut self, line: LogLine<'_>) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        let src = self.source_slot(line.source_key, line.position);
        let mut text = String::from_utf8_lossy(line.text);
        let mut truncated = line.truncated;
        if let std::borrow::Cow::Owned(repaired) = &mut text {
            self.metrics.invalid_utf8.inc();
            // U+FFFD takes 3 bytes: a repaired line may outgrow the cap.
            if repaired.len() > self.limits.max_line_bytes {
                let mut cut = self.limits.max_line_bytes;
                while !repaired.is_char_boundary(cut) {
                    cut -= 1;
                }
                repaired.truncate(cut);
                truncated = true;
            }
        }
        self.metrics.lines.inc();
        let meta = line.meta;
        let (run, rank) = self.runs.entry(meta.pod.clone()).or_insert_with(|| run_and_rank(&meta.pod)).clone();
        if let Some(extractor) = &self.extractor {
            self.found.clear();
            extractor.extract(&text, &mut self.found);
            if !self.found.is_empty() {
                let ts_ms = line.ts.div_euclid(1_000_000);
                for (key, value) in &self.found {
                    let series = LabelSet::from_pairs([
                        (METRIC_NAME, format!("{METRIC_PREFIX}{key}").as_str()),
                        ("namespace", meta.namespace.as_str()),
                        ("pod", meta.pod.as_str()),
                        ("container", meta.container.as_str()),
                        ("run", run.as_deref().unwrap_or("")),
                        ("rank", rank.as_deref().unwrap_or("")),
                    ]);
                    self.samples.append(&series.to_string(), ts_ms, *value);
                }
                self.metrics.samples_extracted.inc_by(self.found.len() as u64);
            }
        }
        self.builder.append(&RecordRef {
            ts: line.ts,
            ingest_ts: 0,
            namespace: &meta.namespace,
            pod: &meta.pod,
            container: &meta.container,
            node: &self.node,
            stream: line.stream.map(|s| s.as_str()).unwrap_or(""),
            labels: &self.empty_labels,
            run: run.as_deref(),
            rank: rank.as_deref(),
            pod_uid: Some(&meta.pod_uid),
            restart: Some(meta.restart),
            level: detect_level(line.text),
            ml_event: None,
            fields: &self.empty_labels,
            truncated,
            parse_error: line.parse_error,
            line: &text,
            source: Some((src, line.position)),
        });
    }

    fn is_full(&self) -> bool {
        self.builder.line_bytes() >= self.limits.max_bytes || self.builder.len() >= self.limits.max_rows
    }
}
