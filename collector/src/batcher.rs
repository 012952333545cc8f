//! Turns tailed lines into Arrow batches: joins multi-line records
//! (tracebacks, stack dumps), detects each record's level, keeps invalid
//! UTF-8 lossily, records each record's source position, derives run and
//! rank from the pod name, tags ML failures (`ml_event`, `xid`), pulls
//! training metrics out of the line, and seals a batch by size or age into
//! the compressed Arrow IPC bodies the indexer takes (lines, and the metric
//! samples found in them), with an idempotency key and the checkpoint to
//! store once it is acknowledged.
//!
//! Besides the extracted training metrics, each batch carries three series
//! the rules and dashboards use without a log scan:
//! `weft_ml_events_total{event,namespace,pod,run}` (tagged records),
//! `weft_log_lines_total{namespace,pod,container,pod_uid}` (records read) and
//! `weft_container_restarts{namespace,pod,container,pod_uid}` (the restart number
//! in the log file name). The two counters count from this collector's
//! start, so they reset when it restarts, like any Prometheus counter.
//!
//! A sealed batch holds every line read before it: open multi-line blocks
//! are closed first, so the checkpoint never covers a line that is not in a
//! batch.

use std::collections::HashMap;

/// The per-line lookups (pod, container, source, series text) hash short
/// local strings: FxHash, not SipHash (which was 2 % of the profile).
type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
use std::time::{Duration, Instant};

use weft_model::batch::{BufferPool, IpcEncoder, WireBody, WireCompression, META_SOURCES};
use weft_model::source_batch::{RowRef, SourceBatchBuilder, SourceRef};
use weft_model::LabelSet;

use crate::checkpoint::TailerCheckpoint;
use crate::enrich::run_and_rank;
use crate::extract::{MetricExtractor, MetricKey, METRIC_PREFIX};
use crate::kubernetes::{PodDirectory, PodInfo};
use crate::metrics::CollectorMetrics;
use crate::multiline::{MultilineJoiner, MultilineLimits};
use crate::sources::pod_logs::path::PodLogPath;
use crate::sources::pod_logs::tailer::{LineSink, LogLine};
use crate::CollectorError;
use std::sync::Arc;
use weft_model::events::{EventClassifier, GatePass};
use weft_model::level::detect_level;
use weft_model::metric::{MetricBatchBuilder, SeriesSlot, METRIC_NAME};
use weft_model::Level;

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
            max_bytes: 2 * 1024 * 1024,
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
    /// Arrow IPC stream (zstd buffers unless `collector.wire_compression`
    /// is `none`, when it holds the batch's own column buffers), wire
    /// schema.
    pub body: WireBody,
    /// Training metrics found in the lines (Arrow IPC, metric wire schema).
    pub metrics_body: Option<WireBody>,
    pub rows: usize,
    pub line_bytes: usize,
    /// Tailer state just after the batch's last line.
    pub checkpoint: TailerCheckpoint,
    /// Where the bodies' large buffers go back when the batch is dropped
    /// (shipped, spooled or refused), for the next batch's text to be
    /// written into.
    pub(crate) pool: Option<BufferPool>,
}

impl Drop for SealedBatch {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            // Only parts of 256 KiB or more go back: in practice the log
            // body's text.
            if let Some(body) = self.metrics_body.take() {
                body.give_back_to(pool);
            }
            std::mem::take(&mut self.body).give_back_to(pool);
        }
    }
}

/// Collects lines into an Arrow batch, joining multi-line records first.
pub struct BatchAssembler {
    /// `None` when multi-line joining is off.
    joiner: Option<MultilineJoiner>,
    inner: Appender,
}

/// A labelled count kept across batches and written as a sample at seal.
#[derive(Debug, Default)]
struct Tally {
    value: u64,
    /// Timestamp (ms) of the latest record that moved it.
    last_ms: i64,
    /// Moved since the last seal.
    dirty: bool,
    /// A starting zero was written (so the first increment counts in `increase`).
    announced: bool,
    /// Timestamp (ms) of the last sample written.
    written_ms: Option<i64>,
}

impl Tally {
    fn bump(&mut self, by: u64, ts_ms: i64, samples: &mut MetricBatchBuilder, series: impl FnOnce() -> String) {
        if !self.announced {
            self.announced = true;
            if by > 0 {
                samples.append(&series(), ts_ms - 1, self.value as f64);
            }
        }
        self.value += by;
        self.last_ms = self.last_ms.max(ts_ms);
        self.dirty = true;
    }

    /// The timestamp of the next sample: never at or before the last one,
    /// so a series never holds two values for one instant.
    fn next_sample_ms(&mut self) -> i64 {
        let at = match self.written_ms {
            Some(written) if written >= self.last_ms => written + 1,
            _ => self.last_ms,
        };
        self.written_ms = Some(at);
        self.dirty = false;
        at
    }
}

/// Most tallied series kept before they are forgotten (a forgotten counter
/// starts again from zero, which `increase` reads as a reset).
const MAX_TALLIES: usize = 65_536;

/// Appends finished records (single lines or joined blocks) to the batch.
struct Appender {
    limits: BatchLimits,
    collector_id: String,
    node: String,
    builder: SourceBatchBuilder,
    /// Encodes the sealed batches, with one zstd context for all of them.
    encoder: IpcEncoder,
    /// Shipped batches' text buffers, for the next batches' text: with an
    /// uncompressed wire only, where a body holds its batch's text until
    /// shipped. With zstd the text buffer comes back once compressed, and
    /// bodies of a few hundred KB kept with room for the next had held
    /// 3.5 MiB more resident at 50 MB/s in for no gain in CPU.
    text_pool: Option<BufferPool>,
    /// The builder's source key per (source, pod metadata) in this batch;
    /// the `Arc` keeps the metadata's address from being reused meanwhile.
    batch_sources: FxMap<(u32, usize), u32>,
    /// Per builder key: the pod metadata and the file's pod uid, container
    /// and restart it was registered with (a file identity reused by
    /// another file within one batch must not inherit them).
    batch_source_infos: Vec<(Arc<PodInfo>, Arc<PodLogPath>)>,
    /// Sealed batches so far: a builder key from an earlier batch is stale.
    batch_generation: u64,
    sources: Vec<String>,
    source_index: FxMap<String, u32>,
    /// Per source: (first, last) position in this batch.
    ranges: Vec<(u64, u64)>,
    last_source: Option<(Arc<str>, u32)>,
    opened: Option<Instant>,
    metrics: Arc<CollectorMetrics>,
    extractor: Option<MetricExtractor>,
    samples: MetricBatchBuilder,
    found: Vec<(crate::extract::MetricKey, f64)>,
    /// Per pod: the run and rank its name suggests.
    runs: FxMap<String, (u64, Arc<PodInfo>)>,
    /// Series texts of extracted metrics (kept per container) built since
    /// they were last dropped (when the pod directory changes, or too many
    /// piled up).
    series_texts: usize,
    /// The pod directory version the series texts were built under.
    series_version: u64,
    /// What the previous record's file shares with this one's, if it is
    /// the same file.
    memo: Option<FileMemo>,
    /// Records and extracted samples not yet added to the counters (an
    /// atomic add per record was a few percent of the collector).
    pending_lines: u64,
    pending_samples: u64,
    /// Pod metadata from the Kubernetes API, when watched.
    pods: Option<Arc<PodDirectory>>,
    classifier: EventClassifier,
    tagging: Tagging,
    fields: LabelSet,
    /// `weft_ml_events_total` by (event, namespace, pod, run).
    events: FxMap<[String; 4], Tally>,
    /// Per container: `weft_log_lines_total`, `weft_container_restarts` and
    /// the series texts of its extracted metrics.
    containers: Vec<ContainerState>,
    /// Where each container (by pod uid, then name) is in `containers`.
    container_slots: FxMap<String, FxMap<String, usize>>,
}

/// What the records of one file share, looked up once for a run of them:
/// a file's lines come in runs, and finding these for every record and
/// extracted sample (maps keyed by pod uid and container name, an `Arc`
/// clone and drop) cost the collector 1 % on mixed logs and 8 % on
/// trainer logs.
struct FileMemo {
    /// The file's path parts (pod uid, container and restart are what the
    /// memo depends on): the tailer's `Arc`, so that the next line from
    /// the same file is known by pointer.
    file: Arc<PodLogPath>,
    /// The pod directory version `pod_info` is from.
    version: u64,
    pod_info: Arc<PodInfo>,
    /// Index in `Appender::containers`.
    slot: usize,
    /// (batch generation, source slot, builder key) of the file's rows in
    /// the open batch.
    batch_key: Option<(u64, u32, u32)>,
}

/// One container's tallies and extracted series texts.
struct ContainerState {
    tally: ContainerTally,
    /// Series text of each extracted metric key, and where it sits in the
    /// open metric batch.
    series: SeriesTexts,
}

/// A container's extracted series: each key's series text and where it
/// sits in the open metric batch. A container prints a handful of keys:
/// the first 16 are found by a scan of a short list that compares lengths
/// first and the keys' static text by address (hashing each sample's key
/// and probing a map had been 1.4 % of the collector's instructions), any
/// more in a hash map.
#[derive(Default)]
struct SeriesTexts {
    few: Vec<(MetricKey, String, SeriesSlot)>,
    more: FxMap<String, (String, SeriesSlot)>,
}

/// The most keys [`SeriesTexts`] keeps in its list.
const FEW_SERIES: usize = 16;

impl SeriesTexts {
    fn get_mut(&mut self, key: &str) -> Option<(&str, &mut SeriesSlot)> {
        for (known, series, slot) in &mut self.few {
            // The same address and length is the same text.
            if known.len() == key.len() && (std::ptr::eq(known.as_ptr(), key.as_ptr()) || known.as_ref() == key) {
                return Some((series.as_str(), slot));
            }
        }
        self.more.get_mut(key).map(|(series, slot)| (series.as_str(), slot))
    }

    fn insert(&mut self, key: &MetricKey, series: String, slot: SeriesSlot) {
        if self.few.len() < FEW_SERIES {
            self.few.push((key.clone(), series, slot));
        } else {
            self.more.insert(key.to_string(), (series, slot));
        }
    }
}

/// The per-container tallies.
#[derive(Debug, Default)]
struct ContainerTally {
    /// namespace, pod, container, pod uid (a pod recreated under the same
    /// name is another series, not a counter reset).
    labels: [String; 4],
    lines: Tally,
    /// Highest restart number seen in a log file name.
    restart: u32,
}

/// 64-bit FNV-1a, a stable hash for idempotency keys.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Which tags an assembler gives records: all by default
/// (`collector.detect_levels`, `collector.tag_ml_events`). The benchmark
/// turns them off to measure the tail + parse + batch path alone, and each
/// on in turn for its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tagging {
    /// A level from the line's head, `error` for a joined block without
    /// one (`Unknown` for every record when off).
    pub levels: bool,
    /// ML failure events (the classifier's catalogue and user rules).
    pub events: bool,
}

impl Default for Tagging {
    fn default() -> Self {
        Self {
            levels: true,
            events: true,
        }
    }
}

/// What an assembler does to records besides batching them, and how it
/// compresses the batches.
#[derive(Clone, Debug, Default)]
pub struct RecordProcessing {
    /// Finds training metrics in lines (none: off).
    pub extractor: Option<MetricExtractor>,
    /// Tags ML failures.
    pub classifier: EventClassifier,
    /// Which tags records get.
    pub tagging: Tagging,
    /// How the sealed bodies' buffers are compressed.
    pub compression: WireCompression,
    /// Joins multi-line records (none: off).
    pub multiline: Option<MultilineLimits>,
    /// Pod metadata from the Kubernetes API (none: names only).
    pub pods: Option<Arc<PodDirectory>>,
}

impl BatchAssembler {
    /// An assembler.
    pub fn new(
        limits: BatchLimits,
        collector_id: String,
        node: String,
        metrics: Arc<CollectorMetrics>,
        processing: RecordProcessing,
    ) -> Self {
        Self {
            joiner: processing.multiline.map(MultilineJoiner::new),
            inner: Appender::new(
                limits,
                collector_id,
                node,
                metrics,
                processing.extractor,
                processing.classifier,
                processing.tagging,
                processing.compression,
                processing.pods,
            ),
        }
    }

    /// Records in the open batch.
    pub fn len(&self) -> usize {
        self.inner.builder.len()
    }

    /// True when no line is waiting (in the batch or in an open block).
    pub fn is_empty(&self) -> bool {
        self.inner.builder.is_empty() && self.joiner.as_ref().is_none_or(|j| j.is_empty())
    }

    /// True when the open batch should be sealed now. A batch waits past its
    /// age for a block that is still growing, at most one more age.
    pub fn is_due(&self) -> bool {
        if self.inner.is_full() {
            return true;
        }
        let Some(opened) = self.inner.opened else {
            return false;
        };
        let age = opened.elapsed();
        let growing = self.joiner.as_ref().is_some_and(|j| j.holds_fresh());
        age >= self.inner.limits.max_age * 2 || (age >= self.inner.limits.max_age && !growing)
    }

    /// Time until the open batch becomes due by age (or a block times out).
    pub fn time_left(&self) -> Option<Duration> {
        let batch = self.inner.opened.map(|t| self.inner.limits.max_age.saturating_sub(t.elapsed()));
        let block = self.joiner.as_ref().and_then(|j| j.time_left());
        match (batch, block) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes blocks that saw no new line for the multi-line timeout.
    pub fn tick(&mut self) {
        if let Some(joiner) = &mut self.joiner {
            let inner = &mut self.inner;
            joiner.flush_expired(&mut |line, block| inner.append(line, block));
        }
    }

    /// Closes every open block (the end of a dry run).
    pub fn flush(&mut self) {
        if let Some(joiner) = &mut self.joiner {
            let inner = &mut self.inner;
            joiner.flush_all(&mut |line, block| inner.append(line, block));
        }
    }

    /// Seals the open batch with the tailer state that follows it.
    pub fn seal(&mut self, checkpoint: TailerCheckpoint) -> Result<SealedBatch, CollectorError> {
        self.flush();
        self.inner.seal(checkpoint)
    }
}

impl LineSink for BatchAssembler {
    fn line(&mut self, line: LogLine<'_>) {
        match &mut self.joiner {
            Some(joiner) => {
                let inner = &mut self.inner;
                joiner.push(line, &mut |line, block| inner.append(line, block));
            }
            None => self.inner.append(line, false),
        }
    }

    fn is_full(&self) -> bool {
        self.inner.is_full()
    }
}

impl Appender {
    #[allow(clippy::too_many_arguments)]
    fn new(
        limits: BatchLimits,
        collector_id: String,
        node: String,
        metrics: Arc<CollectorMetrics>,
        extractor: Option<MetricExtractor>,
        classifier: EventClassifier,
        tagging: Tagging,
        compression: WireCompression,
        pods: Option<Arc<PodDirectory>>,
    ) -> Self {
        Self {
            // A batch is cut once past max_bytes: room for its last line.
            builder: SourceBatchBuilder::with_capacity(4096, limits.max_bytes.min(8 << 20) + (64 << 10)),
            encoder: IpcEncoder::new(compression),
            text_pool: (compression == WireCompression::Uncompressed).then(BufferPool::default),
            batch_sources: FxMap::default(),
            batch_source_infos: Vec::new(),
            batch_generation: 0,
            limits,
            collector_id,
            node,
            sources: Vec::new(),
            source_index: FxMap::default(),
            ranges: Vec::new(),
            last_source: None,
            opened: None,
            metrics,
            extractor,
            samples: MetricBatchBuilder::dictionary(),
            found: Vec::new(),
            runs: FxMap::default(),
            series_texts: 0,
            series_version: 0,
            memo: None,
            pending_lines: 0,
            pending_samples: 0,
            pods,
            classifier,
            tagging,
            fields: LabelSet::new(),
            events: FxMap::default(),
            containers: Vec::new(),
            container_slots: FxMap::default(),
        }
    }

    fn is_full(&self) -> bool {
        self.builder.line_bytes() >= self.limits.max_bytes || self.builder.len() >= self.limits.max_rows
    }

    fn source_slot(&mut self, key: &Arc<str>, position: u64) -> u32 {
        let index = match &self.last_source {
            Some((last, index)) if Arc::ptr_eq(last, key) || **last == **key => *index,
            _ => {
                let index = match self.source_index.get(key.as_ref()) {
                    Some(index) => *index,
                    None => {
                        let index = self.sources.len() as u32;
                        self.sources.push(key.to_string());
                        self.source_index.insert(key.to_string(), index);
                        self.ranges.push((position, position));
                        index
                    }
                };
                self.last_source = Some((key.clone(), index));
                index
            }
        };
        let range = &mut self.ranges[index as usize];
        range.0 = range.0.min(position);
        range.1 = range.1.max(position);
        index
    }

    /// Writes the moved tallies as samples.
    fn write_tallies(&mut self) {
        for (key, tally) in self.events.iter_mut().filter(|(_, t)| t.dirty) {
            let series = LabelSet::from_pairs([
                (METRIC_NAME, "weft_ml_events_total"),
                ("event", key[0].as_str()),
                ("namespace", key[1].as_str()),
                ("pod", key[2].as_str()),
                ("run", key[3].as_str()),
            ]);
            let at = tally.next_sample_ms();
            self.samples.append(&series.to_string(), at, tally.value as f64);
        }
        for tally in self.containers.iter_mut().map(|c| &mut c.tally).filter(|t| t.lines.dirty) {
            let at = tally.lines.next_sample_ms();
            let lines = container_series("weft_log_lines_total", &tally.labels);
            self.samples.append(&lines, at, tally.lines.value as f64);
            let restarts = container_series("weft_container_restarts", &tally.labels);
            self.samples.append(&restarts, at, f64::from(tally.restart));
        }
        if self.containers.len() > MAX_TALLIES {
            self.containers.clear();
            self.container_slots.clear();
            self.memo = None;
        }
        if self.events.len() > MAX_TALLIES {
            self.events.clear();
        }
    }

    /// Seals the open batch with the tailer state that follows it.
    fn seal(&mut self, checkpoint: TailerCheckpoint) -> Result<SealedBatch, CollectorError> {
        self.metrics.lines.inc_by(std::mem::take(&mut self.pending_lines));
        self.metrics.samples_extracted.inc_by(std::mem::take(&mut self.pending_samples));
        self.write_tallies();
        let rows = self.builder.len();
        let line_bytes = self.builder.line_bytes();
        let batch = self.builder.finish();
        self.batch_sources.clear();
        self.batch_source_infos.clear();
        self.batch_generation += 1;
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
        let body = self
            .encoder
            .encode(std::slice::from_ref(&batch), metadata)
            .map_err(CollectorError::Model)?;
        // zstd: the text buffer comes back now. Uncompressed, the body holds
        // it until shipped, and the next batch's first line takes a shipped
        // batch's.
        self.builder.recycle(batch);
        let metrics_body = if self.samples.is_empty() {
            None
        } else {
            Some(
                self.encoder
                    .encode(&[self.samples.finish()], HashMap::new())
                    .map_err(CollectorError::Model)?,
            )
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
            pool: self.text_pool.clone(),
        })
    }
}

impl Appender {
    /// Writes the batch being opened into a shipped batch's text buffer,
    /// where the pool has one (uncompressed bodies only). Taken at the
    /// batch's first line rather than at the last seal, a batch dropped
    /// right after its seal (shipped at once) lends its buffer to the next
    /// batch, one buffer kept warm in the cache instead of two in turn.
    fn reuse_shipped_text_buffer(&mut self) {
        let Some(pool) = &self.text_pool else { return };
        let shipped = pool.take();
        if shipped.capacity() > 0 {
            // One the builder refuses (an outsized batch's) is dropped.
            self.builder.reuse_text_buffer(shipped);
        }
    }

    /// Run, rank and extra labels of a record's pod: from the Kubernetes
    /// API when it knows the pod, else from the pod name. Cached per pod
    /// uid until the directory changes.
    fn pod_info(&mut self, meta: &PodLogPath) -> Arc<PodInfo> {
        let version = self.pods.as_ref().map_or(0, |p| p.version());
        if let Some((seen, info)) = self.runs.get(&meta.pod_uid) {
            if *seen == version {
                return info.clone();
            }
        }
        let info = self.pods.as_ref().and_then(|p| p.get(&meta.pod_uid)).unwrap_or_else(|| {
            let (run, rank) = run_and_rank(&meta.pod);
            Arc::new(PodInfo {
                run,
                rank,
                labels: LabelSet::new(),
            })
        });
        self.runs.insert(meta.pod_uid.clone(), (version, info.clone()));
        info
    }

    /// The memo of `meta`'s file: its pod metadata and its container's
    /// slot, which it registers on first sight.
    fn file_memo(&mut self, meta: &Arc<PodLogPath>, version: u64) -> FileMemo {
        let pod_info = self.pod_info(meta);
        let slots = match self.container_slots.get_mut(&meta.pod_uid) {
            Some(slots) => slots,
            None => self.container_slots.entry(meta.pod_uid.clone()).or_default(),
        };
        let slot = match slots.get(&meta.container) {
            Some(slot) => *slot,
            None => {
                let slot = self.containers.len();
                slots.insert(meta.container.clone(), slot);
                self.containers.push(ContainerState {
                    tally: ContainerTally {
                        labels: [
                            meta.namespace.clone(),
                            meta.pod.clone(),
                            meta.container.clone(),
                            meta.pod_uid.clone(),
                        ],
                        ..Default::default()
                    },
                    series: SeriesTexts::default(),
                });
                slot
            }
        };
        FileMemo {
            file: meta.clone(),
            version,
            pod_info,
            slot,
            batch_key: None,
        }
    }

    /// Appends one finished record; `block` is true for joined lines.
    fn append(&mut self, line: LogLine<'_>, block: bool) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
            self.reuse_shipped_text_buffer();
        }
        let src = self.source_slot(line.source_key, line.position);
        // The tailer's check of the chunk the line came whole from, or the
        // event gate's pass over the line (when events are tagged), says
        // it is UTF-8: a SIMD check of the others; `from_utf8_lossy` only
        // for the lines that check refuses.
        let mut gate = self.tagging.events.then(|| GatePass::of(line.text));
        let mut text = if line.utf8 || gate.as_ref().is_some_and(GatePass::is_ascii) {
            debug_assert!(std::str::from_utf8(line.text).is_ok(), "a line the tailer found UTF-8");
            // SAFETY: the tailer found the bytes UTF-8 (`LogLine::utf8`), or
            // every byte is ASCII (`GatePass::is_ascii`).
            std::borrow::Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(line.text) })
        } else {
            match simdutf8::basic::from_utf8(line.text) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(line.text),
            }
        };
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
            if gate.is_some() {
                gate = Some(GatePass::of(repaired.as_bytes()));
            }
        }
        self.pending_lines += 1;
        let meta = line.meta;
        let version = self.pods.as_ref().map_or(0, |p| p.version());
        // The memo is checked and used in place (moving it out and back
        // copied it twice per line). Another `Arc` with the same pod uid,
        // container and restart (a reopened file) keeps the memo.
        let same_file = match self.memo.as_mut() {
            Some(memo) if memo.version == version => {
                Arc::ptr_eq(&memo.file, meta) || {
                    let same =
                        memo.file.restart == meta.restart && memo.file.pod_uid == meta.pod_uid && memo.file.container == meta.container;
                    if same {
                        memo.file = meta.clone();
                    }
                    same
                }
            }
            _ => false,
        };
        if !same_file {
            self.memo = Some(self.file_memo(meta, version));
        }
        let memo = self.memo.as_mut().expect("set above");
        let pod_meta = &memo.pod_info;
        let (run, rank) = (pod_meta.run.as_deref(), pod_meta.rank.as_deref());
        let ts_ms = line.ts.div_euclid(1_000_000);
        if let Some(extractor) = &self.extractor {
            self.found.clear();
            // A recognizer bug must cost one line's metrics, not the tailer.
            let found = &mut self.found;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| extractor.extract(&text, found))).is_err() {
                found.clear();
                self.metrics.extract_panics.inc();
            }
            if !self.found.is_empty() {
                if version != self.series_version || self.series_texts > MAX_TALLIES {
                    self.series_texts = 0;
                    self.series_version = version;
                    for state in &mut self.containers {
                        state.series = SeriesTexts::default();
                    }
                }
                let state = &mut self.containers[memo.slot];
                for (key, value) in &self.found {
                    // The series text is the same for every line of a
                    // container: built once per key (per sample, it had
                    // cost a tenth of the collector's time).
                    if let Some((series, slot)) = state.series.get_mut(key.as_ref()) {
                        self.samples.append_to_slot(slot, series, ts_ms, *value);
                        continue;
                    }
                    let series = LabelSet::from_pairs([
                        (METRIC_NAME, format!("{METRIC_PREFIX}{key}").as_str()),
                        ("namespace", meta.namespace.as_str()),
                        ("pod", meta.pod.as_str()),
                        ("container", meta.container.as_str()),
                        ("run", run.unwrap_or("")),
                        ("rank", rank.unwrap_or("")),
                    ])
                    .to_string();
                    let mut slot = SeriesSlot::default();
                    self.samples.append_to_slot(&mut slot, &series, ts_ms, *value);
                    state.series.insert(key, series, slot);
                    self.series_texts += 1;
                }
                self.pending_samples += self.found.len() as u64;
            }
        }
        let event = gate.and_then(|gate| self.classifier.classify_with_gate(&text, &gate));
        self.fields = LabelSet::new();
        if let Some(event) = &event {
            self.metrics.ml_events.with_label_values(&[event.name.as_str()]).inc();
            if let Some(xid) = event.xid {
                self.fields.insert("xid", xid.to_string());
            }
            let key = [
                event.name.clone(),
                meta.namespace.clone(),
                meta.pod.clone(),
                run.unwrap_or_default().to_string(),
            ];
            let samples = &mut self.samples;
            self.events.entry(key.clone()).or_default().bump(1, ts_ms, samples, || {
                LabelSet::from_pairs([
                    (METRIC_NAME, "weft_ml_events_total"),
                    ("event", key[0].as_str()),
                    ("namespace", key[1].as_str()),
                    ("pod", key[2].as_str()),
                    ("run", key[3].as_str()),
                ])
                .to_string()
            });
        }
        let tally = &mut self.containers[memo.slot].tally;
        tally.restart = tally.restart.max(meta.restart);
        let labels = &tally.labels;
        tally
            .lines
            .bump(1, ts_ms, &mut self.samples, || container_series("weft_log_lines_total", labels));
        let mut level = if self.tagging.levels {
            detect_level(line.text)
        } else {
            Level::Unknown
        };
        if block {
            self.metrics.multiline_blocks.inc();
        }
        if block && level == Level::Unknown && self.tagging.levels {
            level = Level::Error;
        }
        let key = match memo.batch_key {
            Some((generation, at, key)) if generation == self.batch_generation && at == src => key,
            _ => {
                let slot = (src, Arc::as_ptr(pod_meta) as usize);
                let same_file = |key: u32, infos: &[(Arc<PodInfo>, Arc<PodLogPath>)]| {
                    let registered = &infos[key as usize].1;
                    Arc::ptr_eq(registered, meta)
                        || (registered.pod_uid == meta.pod_uid
                            && registered.container == meta.container
                            && registered.restart == meta.restart)
                };
                let key = match self.batch_sources.get(&slot) {
                    Some(key) if same_file(*key, &self.batch_source_infos) => *key,
                    _ => {
                        let key = self.builder.source(&SourceRef {
                            namespace: &meta.namespace,
                            pod: &meta.pod,
                            container: &meta.container,
                            node: &self.node,
                            labels: &pod_meta.labels,
                            run,
                            rank,
                            pod_uid: Some(&meta.pod_uid),
                            restart: Some(meta.restart),
                        });
                        self.batch_sources.insert(slot, key);
                        self.batch_source_infos.push((pod_meta.clone(), meta.clone()));
                        key
                    }
                };
                memo.batch_key = Some((self.batch_generation, src, key));
                key
            }
        };
        self.builder.append(
            key,
            &RowRef {
                ts: line.ts,
                stream: line.stream.map(|s| s.as_str()).unwrap_or(""),
                level,
                ml_event: event.as_ref().map(|e| e.name.as_str()),
                fields: &self.fields,
                truncated,
                parse_error: line.parse_error,
                line: &text,
                source: (src, line.position),
            },
        );
    }
}

/// The series text of a per-container tally.
fn container_series(name: &str, key: &[String; 4]) -> String {
    LabelSet::from_pairs([
        (METRIC_NAME, name),
        ("namespace", key[0].as_str()),
        ("pod", key[1].as_str()),
        ("container", key[2].as_str()),
        ("pod_uid", key[3].as_str()),
    ])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::pod_logs::format::Stream;
    use crate::sources::pod_logs::path::PodLogPath;
    use weft_model::batch::{decode_ipc, wire_schema};
    use weft_model::metric::{metric_wire_schema, MetricBatchView};
    use weft_model::{LogBatchView, LogRecord};

    fn meta(restart: u32) -> Arc<PodLogPath> {
        Arc::new(PodLogPath {
            namespace: "ml".into(),
            pod: "llama-worker-1".into(),
            pod_uid: "uid-1".into(),
            container: "trainer".into(),
            restart,
            rotated_at: None,
        })
    }

    fn assembler() -> BatchAssembler {
        assembler_with(Tagging::default(), WireCompression::Zstd)
    }

    fn assembler_with(tagging: Tagging, compression: WireCompression) -> BatchAssembler {
        BatchAssembler::new(
            BatchLimits::default(),
            "test".into(),
            "node-a".into(),
            Arc::new(CollectorMetrics::unregistered()),
            RecordProcessing {
                extractor: Some(MetricExtractor::default()),
                classifier: EventClassifier::default(),
                tagging,
                compression,
                multiline: Some(MultilineLimits::default()),
                pods: None,
            },
        )
    }

    /// An uncompressed wire carries the same records and samples in more
    /// bytes; tagging off leaves levels unknown and events out, nothing
    /// else.
    #[test]
    fn wire_compression_and_tagging_change_only_what_they_name() {
        let lines = [
            (Stream::Stdout, "2026-11-25 10:00:01 ERROR step 10 failed"),
            (
                Stream::Stderr,
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            ),
            (Stream::Stdout, "{'loss': 1.25, 'learning_rate': 2e-05, 'epoch': 0.5}"),
            (Stream::Stdout, "température du GPU 0 : 71 °C, ünïcode ✓"),
        ];
        let seal = |tagging, compression| {
            let mut assembler = assembler_with(tagging, compression);
            for round in 0..40 {
                feed(&mut assembler, &meta(0), round * 64, &lines);
            }
            assembler.seal(TailerCheckpoint::default()).unwrap()
        };
        let zstd = seal(Tagging::default(), WireCompression::Zstd);
        let none = seal(Tagging::default(), WireCompression::Uncompressed);
        assert_eq!(records(&none), records(&zstd));
        assert_eq!(samples(&none), samples(&zstd));
        assert!(
            none.body.len() > 2 * zstd.body.len(),
            "{} against {}",
            none.body.len(),
            zstd.body.len()
        );
        let tagged = records(&zstd);
        let (error, oom) = (row_of(&tagged, "ERROR step"), row_of(&tagged, "OutOfMemoryError"));
        assert_eq!(tagged[error].level, Level::Error);
        assert_eq!(tagged[oom].ml_event.as_deref(), Some("cuda_oom"));

        let untagged = records(&seal(
            Tagging {
                levels: false,
                events: false,
            },
            WireCompression::Zstd,
        ));
        assert_eq!(untagged.len(), tagged.len());
        for (bare, full) in untagged.iter().zip(&tagged) {
            assert_eq!((bare.level, bare.ml_event.as_deref()), (Level::Unknown, None));
            assert_eq!((&bare.line, bare.ts, &bare.source), (&full.line, full.ts, &full.source));
        }
        let levels_only = records(&seal(
            Tagging {
                levels: true,
                events: false,
            },
            WireCompression::Zstd,
        ));
        assert_eq!(
            (levels_only[error].level, levels_only[oom].ml_event.as_deref()),
            (Level::Error, None)
        );
    }

    /// Uncompressed, a sealed batch's body holds the batch's text where it
    /// was written (not a copy), and the next batch's text is written where
    /// a dropped (shipped) one's was, not into a fresh allocation; with
    /// zstd, nothing is pooled.
    #[test]
    fn the_next_batch_is_written_where_a_dropped_one_was() {
        assert!(assembler_with(Tagging::default(), WireCompression::Zstd)
            .seal(TailerCheckpoint::default())
            .unwrap()
            .pool
            .is_none());
        // The body's part that is the lines' text, whole.
        let text_of = |batch: &SealedBatch| {
            let (_, decoded) = decode_ipc(&batch.body.contiguous(), &wire_schema(), 1 << 20, 1 << 30).unwrap();
            let text = decoded[0].column_by_name(weft_model::batch::col::LINE).unwrap().to_data().buffers()[1].clone();
            batch
                .body
                .parts()
                .find(|p| *p == text.as_slice())
                .expect("the text is one part")
                .as_ptr()
        };
        let mut assembler = assembler_with(Tagging::default(), WireCompression::Uncompressed);
        let lines: Vec<(Stream, String)> = (0..500)
            .map(|i| (Stream::Stdout, format!("step {i} loss {}.5 tokens/s 1234", i % 7)))
            .collect();
        let lines: Vec<(Stream, &str)> = lines.iter().map(|(s, l)| (*s, l.as_str())).collect();
        feed(&mut assembler, &meta(0), 0, &lines);
        let first = assembler.seal(TailerCheckpoint::default()).unwrap();
        let at = text_of(&first);
        drop(first);
        // Where the allocator would put a fresh buffer of that size: the
        // freed one, had it not been kept.
        let elsewhere: Vec<u8> = Vec::with_capacity(2 << 20);
        assert_ne!(elsewhere.as_ptr(), at);
        // Fewer, other lines: the reused buffer holds them and nothing else.
        let fewer: Vec<(Stream, &str)> = lines.iter().step_by(3).map(|(s, l)| (*s, &l[2..])).collect();
        feed(&mut assembler, &meta(0), 0, &fewer);
        let second = assembler.seal(TailerCheckpoint::default()).unwrap();
        assert_eq!(text_of(&second), at);
        let mut fresh = assembler_with(Tagging::default(), WireCompression::Uncompressed);
        feed(&mut fresh, &meta(0), 0, &fewer);
        let expected = fresh.seal(TailerCheckpoint::default()).unwrap();
        assert_eq!(second.body, expected.body);
        assert_eq!(records(&second), records(&expected));
        assert_eq!(records(&second).len(), fewer.len());
    }

    /// A pooled buffer over twice what the next batch is sized for (an
    /// outsized batch's) is dropped when refused, not kept in the pool.
    #[test]
    fn an_outsized_shipped_buffer_is_dropped() {
        let mut assembler = assembler_with(Tagging::default(), WireCompression::Uncompressed);
        let pool = assembler.inner.text_pool.clone().expect("uncompressed");
        pool.give_back(Vec::with_capacity(7 << 20));
        feed(&mut assembler, &meta(0), 0, &[(Stream::Stdout, "one line")]);
        assert_eq!(pool.kept(), 0);
        let batch = assembler.seal(TailerCheckpoint::default()).unwrap();
        assert_eq!(records(&batch).len(), 1);
    }

    fn row_of(records: &[LogRecord], text: &str) -> usize {
        records.iter().position(|r| r.line.contains(text)).expect("a record with the text")
    }

    /// Feeds `(stream, text)` lines at one-second steps from `t0`.
    fn feed(assembler: &mut BatchAssembler, meta: &Arc<PodLogPath>, first_position: u64, lines: &[(Stream, &str)]) {
        let source_key: Arc<str> = Arc::from("file-1");
        for (i, (stream, text)) in lines.iter().enumerate() {
            assembler.line(LogLine {
                meta,
                source_key: &source_key,
                position: first_position + i as u64 * 4,
                ts: 1_700_000_000_000_000_000 + i as i64 * 1_000_000_000,
                stream: Some(*stream),
                text: text.as_bytes(),
                truncated: false,
                parse_error: false,
                utf8: false,
            });
        }
    }

    fn records(batch: &SealedBatch) -> Vec<LogRecord> {
        let (_, batches) = decode_ipc(&batch.body.contiguous(), &wire_schema(), 1 << 20, 1 << 30).unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let view = LogBatchView::new(b).unwrap();
                (0..view.len()).map(move |row| view.record(row)).collect::<Vec<_>>()
            })
            .collect()
    }

    fn samples(batch: &SealedBatch) -> Vec<(String, i64, f64)> {
        let Some(body) = &batch.metrics_body else {
            return Vec::new();
        };
        // Series texts go once per batch, as a dictionary.
        let body = body.contiguous();
        let sent = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(&body), None).unwrap();
        assert!(
            matches!(sent.schema().field(0).data_type(), arrow_schema::DataType::Dictionary(..)),
            "{:?}",
            sent.schema()
        );
        let (_, batches) = decode_ipc(&body, &metric_wire_schema(), 1 << 20, 1 << 30).unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let view = MetricBatchView::new(b).unwrap();
            for row in 0..view.len() {
                out.push((view.series.value(row).to_string(), view.ts.value(row), view.value.value(row)));
            }
        }
        out
    }

    #[test]
    fn a_traceback_becomes_one_tagged_record_between_other_lines() {
        let mut assembler = assembler();
        let meta = meta(2);
        feed(
            &mut assembler,
            &meta,
            100,
            &[
                (Stream::Stdout, "step 10 loss 2.1"),
                (Stream::Stderr, "Traceback (most recent call last):"),
                (Stream::Stderr, "  File \"train.py\", line 88, in <module>"),
                (Stream::Stdout, "heartbeat"),
                (Stream::Stderr, "    loss.backward()"),
                (
                    Stream::Stderr,
                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                ),
                (Stream::Stdout, "shutting down"),
            ],
        );
        assert!(!assembler.is_empty(), "the traceback is still open");
        let batch = assembler.seal(TailerCheckpoint::default()).unwrap();
        let rows = records(&batch);
        let lines: Vec<&str> = rows.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let traceback = rows.iter().find(|r| r.line.starts_with("Traceback")).unwrap();
        assert_eq!(traceback.line.lines().count(), 4);
        assert!(traceback.line.ends_with("Tried to allocate 2.00 GiB"));
        assert_eq!(traceback.ml_event.as_deref(), Some("cuda_oom"));
        assert_eq!(traceback.level, Level::Error);
        // The block carries its last line's position, past "heartbeat".
        assert_eq!(traceback.source.unwrap().1, 120);
        assert!(rows.iter().filter(|r| r.ml_event.is_none()).count() == 3);
        assert!(assembler.is_empty());
    }

    /// ASCII lines (whose UTF-8 check the event gate's pass makes
    /// needless), other UTF-8 and invalid UTF-8 (kept lossily, counted,
    /// and gated on its repaired text) are all kept and tagged.
    #[test]
    fn ascii_other_utf8_and_invalid_lines_are_kept_and_tagged() {
        for events in [true, false] {
            let tagging = Tagging { levels: true, events };
            ascii_other_utf8_and_invalid_lines_are_kept(assembler_with(tagging, WireCompression::Zstd), events);
        }
    }

    /// With event tagging off, the lines' UTF-8 is checked without the
    /// event gate's pass: the same texts, repaired alike.
    fn ascii_other_utf8_and_invalid_lines_are_kept(mut assembler: BatchAssembler, events: bool) {
        let meta = meta(0);
        let bar = "Epoch 3:  45%|\u{2588}\u{258c}     | 450/1000 [01:23<01:40,  5.40it/s, loss=nan]";
        let lines: [&[u8]; 4] = [
            b"NCCL WARN Net : Connection closed by remote peer",
            bar.as_bytes(),
            b"step 7 loss=inf \xff\xfe lr=3e-4",
            b"INFO all good",
        ];
        let source_key: Arc<str> = Arc::from("file-1");
        for (i, text) in lines.iter().enumerate() {
            assembler.line(LogLine {
                meta: &meta,
                source_key: &source_key,
                position: i as u64 * 100,
                ts: 1_700_000_000_000_000_000 + i as i64,
                stream: Some(Stream::Stdout),
                text,
                truncated: false,
                parse_error: false,
                utf8: false,
            });
        }
        let batch = assembler.seal(TailerCheckpoint::default()).unwrap();
        let rows = records(&batch);
        let got: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.line.as_str(), r.ml_event.as_deref())).collect();
        let tag = |event| if events { Some(event) } else { None };
        assert_eq!(
            got,
            [
                ("NCCL WARN Net : Connection closed by remote peer", tag("nccl_error")),
                (bar, tag("nan_loss")),
                ("step 7 loss=inf \u{fffd}\u{fffd} lr=3e-4", tag("nan_loss")),
                ("INFO all good", None),
            ]
        );
        assert_eq!(assembler.inner.metrics.invalid_utf8.get(), 1);
    }

    /// Every key inserted is found again, by another copy of its text
    /// too, in the list and past it in the map.
    #[test]
    fn series_texts_find_every_key_in_the_list_and_past_it() {
        let mut texts = SeriesTexts::default();
        let keys: Vec<MetricKey> = (0..40)
            .map(|i| match i % 3 {
                0 => MetricKey::Borrowed(["loss", "step", "epoch", "learning_rate"][i % 4]),
                _ => MetricKey::Owned(format!("key_{i}")),
            })
            .collect();
        let mut inserted = Vec::new();
        for key in &keys {
            if texts.get_mut(key).is_none() {
                texts.insert(key, format!("series of {key}"), SeriesSlot::default());
                inserted.push(key.to_string());
            }
        }
        assert!(inserted.len() > FEW_SERIES, "the map is used too");
        for key in &inserted {
            let copy = key.clone();
            let (series, _) = texts.get_mut(&copy).expect("found");
            assert_eq!(series, format!("series of {key}"));
        }
        assert!(texts.get_mut("los").is_none());
        assert!(texts.get_mut("lossy").is_none());
    }

    #[test]
    fn tags_count_into_series_and_containers_report_lines_and_restarts() {
        let mut assembler = assembler();
        let meta = meta(3);
        feed(
            &mut assembler,
            &meta,
            0,
            &[
                (
                    Stream::Stdout,
                    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
                ),
                (Stream::Stdout, "all fine"),
                (
                    Stream::Stdout,
                    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
                ),
            ],
        );
        let batch = assembler.seal(TailerCheckpoint::default()).unwrap();
        let rows = records(&batch);
        assert_eq!(rows[0].ml_event.as_deref(), Some("gpu_xid"));
        assert_eq!(rows[0].fields.get("xid"), Some("79"));
        assert_eq!(rows[1].ml_event, None);
        assert_eq!(rows[1].fields.get("xid"), None);
        let got = samples(&batch);
        let t0 = 1_700_000_000_000i64;
        let events = r#"{__name__="weft_ml_events_total", event="gpu_xid", namespace="ml", pod="llama-worker-1", run="llama"}"#;
        let find = |series: &str| {
            got.iter()
                .filter(|(s, _, _)| s == series)
                .map(|(_, t, v)| (*t, *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(find(events), vec![(t0 - 1, 0.0), (t0 + 2000, 2.0)], "{got:?}");
        let lines = r#"{__name__="weft_log_lines_total", container="trainer", namespace="ml", pod="llama-worker-1", pod_uid="uid-1"}"#;
        assert_eq!(find(lines), vec![(t0 - 1, 0.0), (t0 + 2000, 3.0)]);
        let restarts =
            r#"{__name__="weft_container_restarts", container="trainer", namespace="ml", pod="llama-worker-1", pod_uid="uid-1"}"#;
        assert_eq!(find(restarts), vec![(t0 + 2000, 3.0)]);
        // The next batch continues the counts instead of starting again.
        feed(&mut assembler, &meta, 100, &[(Stream::Stdout, "more")]);
        let next = assembler.seal(TailerCheckpoint::default()).unwrap();
        let got = samples(&next);
        assert!(got.iter().any(|(s, t, v)| s == lines && *t == t0 + 2001 && *v == 4.0), "{got:?}");
        assert!(!got.iter().any(|(s, _, _)| s == events));
    }

    /// Files taking turns under one source key (a file identity reused):
    /// each record keeps its own file's pod, container and restart, each
    /// container its own line count and series texts, across a seal, and
    /// the line counter counts every record once the batch is sealed.
    #[test]
    fn records_of_files_taking_turns_keep_their_own_sources_and_tallies() {
        let metrics = Arc::new(CollectorMetrics::unregistered());
        let mut assembler = BatchAssembler::new(
            BatchLimits::default(),
            "test".into(),
            "node-a".into(),
            metrics.clone(),
            RecordProcessing {
                extractor: Some(MetricExtractor::default()),
                classifier: EventClassifier::default(),
                tagging: Tagging::default(),
                compression: WireCompression::Zstd,
                multiline: None,
                pods: None,
            },
        );
        let trainer = meta(0);
        let sidecar = Arc::new(PodLogPath {
            container: "sidecar".into(),
            ..PodLogPath::clone(&meta(0))
        });
        let restarted = meta(1);
        let other_pod = Arc::new(PodLogPath {
            pod: "llama-worker-2".into(),
            pod_uid: "uid-2".into(),
            ..PodLogPath::clone(&meta(0))
        });
        let turns = [
            (&trainer, "{'loss': 1.0}"),
            (&sidecar, "{'loss': 2.0}"),
            (&trainer, "{'loss': 3.0}"),
            (&restarted, "plain"),
            (&other_pod, "{'loss': 4.0}"),
            (&trainer, "{'loss': 5.0}"),
        ];
        for (i, (meta, text)) in turns.iter().enumerate() {
            feed(&mut assembler, meta, i as u64 * 4, &[(Stream::Stdout, text)]);
        }
        let first = assembler.seal(TailerCheckpoint::default()).unwrap();
        assert_eq!(metrics.lines.get(), 6);
        feed(&mut assembler, &sidecar, 100, &[(Stream::Stdout, "{'loss': 6.0}")]);
        feed(&mut assembler, &trainer, 104, &[(Stream::Stdout, "{'loss': 7.0}")]);
        let second = assembler.seal(TailerCheckpoint::default()).unwrap();
        assert_eq!(metrics.lines.get(), 8);
        assert_eq!(metrics.samples_extracted.get(), 7);

        let files = |batch: &SealedBatch| {
            records(batch)
                .into_iter()
                .map(|r| (r.pod, r.container, r.restart.unwrap(), r.line))
                .collect::<Vec<_>>()
        };
        let file = |meta: &PodLogPath, line: &str| (meta.pod.clone(), meta.container.clone(), meta.restart, line.to_string());
        assert_eq!(files(&first), turns.iter().map(|(meta, line)| file(meta, line)).collect::<Vec<_>>());
        assert_eq!(
            files(&second),
            vec![file(&sidecar, "{'loss': 6.0}"), file(&trainer, "{'loss': 7.0}")]
        );

        let loss = |pod: &str, container: &str| {
            let rank = &pod[pod.len() - 1..];
            let series = format!(
                r#"{{__name__="weft_train_loss", container="{container}", namespace="ml", pod="{pod}", rank="{rank}", run="llama"}}"#
            );
            [&first, &second]
                .iter()
                .flat_map(|batch| samples(batch))
                .filter(|(s, _, _)| *s == series)
                .map(|(_, _, v)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(loss("llama-worker-1", "trainer"), vec![1.0, 3.0, 5.0, 7.0]);
        assert_eq!(loss("llama-worker-1", "sidecar"), vec![2.0, 6.0]);
        assert_eq!(loss("llama-worker-2", "trainer"), vec![4.0]);

        let lines = |pod: &str, uid: &str, container: &str| {
            let series =
                format!(r#"{{__name__="weft_log_lines_total", container="{container}", namespace="ml", pod="{pod}", pod_uid="{uid}"}}"#);
            let got = samples(&second);
            got.iter().filter(|(s, _, _)| *s == series).map(|(_, _, v)| *v).next_back()
        };
        // Four records of the trainer's two files (restarts 0 and 1) in the
        // first batch, one more in the second.
        assert_eq!(lines("llama-worker-1", "uid-1", "trainer"), Some(5.0));
        assert_eq!(lines("llama-worker-1", "uid-1", "sidecar"), Some(2.0));
        // Not moved in the second batch: no sample.
        assert_eq!(lines("llama-worker-2", "uid-2", "trainer"), None);
    }

    #[test]
    fn a_quiet_block_is_closed_by_tick_and_the_batch_waits_for_a_growing_one() {
        let mut assembler = BatchAssembler::new(
            BatchLimits {
                max_age: Duration::from_millis(50),
                ..BatchLimits::default()
            },
            "test".into(),
            "node-a".into(),
            Arc::new(CollectorMetrics::unregistered()),
            RecordProcessing {
                extractor: None,
                classifier: EventClassifier::default(),
                tagging: Tagging::default(),
                compression: WireCompression::Zstd,
                multiline: Some(MultilineLimits {
                    timeout: Duration::from_millis(200),
                    ..MultilineLimits::default()
                }),
                pods: None,
            },
        );
        let meta = meta(0);
        feed(
            &mut assembler,
            &meta,
            0,
            &[(Stream::Stdout, "before"), (Stream::Stderr, "Traceback (most recent call last):")],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        // Due by age only once the open block went quiet or twice the age passed.
        while !assembler.is_due() {
            assert!(Instant::now() < deadline, "never due");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(assembler.len(), 1, "the block is still open");
        while assembler.len() < 2 {
            assert!(Instant::now() < deadline, "block never closed");
            assembler.tick();
            std::thread::sleep(Duration::from_millis(5));
        }
        let rows = records(&assembler.seal(TailerCheckpoint::default()).unwrap());
        assert_eq!(rows[1].line, "Traceback (most recent call last):");
    }
}
