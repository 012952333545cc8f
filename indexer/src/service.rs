//! The indexer's write path, wired together: ingest → dedupe → WAL →
//! pending rows → commit into splits → catalog; plus the background merges,
//! retention and graveyard clean-up.
//!
//! Deduplication: a collector batch carries an idempotency key (a repeat of
//! a whole batch is dropped) and, per line, its source and position (a line
//! at or below the source's watermark is dropped). Watermarks move under the
//! same lock as the WAL append, and are published in the catalog with the
//! WAL position the splits cover, so replay after a crash rebuilds exactly
//! the same state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampNanosecondArray};
use arrow_select::filter::filter_record_batch;
use weft_model::batch::{decode_ipc, to_storage, wire_schema, META_SOURCES};
use weft_model::time::now_nanos;
use weft_model::LogBatchView;

use crate::catalog::{Catalog, Grave, SplitMeta, Watermark};
use crate::config::IndexerConfig;
use crate::metrics::IndexerMetrics;
use crate::split;
use crate::wal::WriteAheadLog;
use crate::IndexerError;

/// WAL record formats: a log batch, a metric batch.
const WAL_LOGS: u8 = 1;
const WAL_METRICS: u8 = 2;
const RECENT_KEYS: usize = 100_000;

/// What an ingest request achieved.
/// Most distinct sample hours one metrics request may touch.
pub const MAX_REQUEST_HOURS: usize = 168;

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]

pub struct IngestOutcome {
    /// Rows accepted and made durable.
    pub accepted: usize,
    /// Rows dropped because the indexer already holds them.
    pub duplicates: usize,
    /// The whole batch repeated an earlier idempotency key.
    pub duplicate_batch: bool,
}

#[derive(Default)]
struct RecentKeys {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentKeys {
    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: &str) {
        if key.is_empty() || !self.set.insert(key.to_string()) {
            return;
        }
        self.order.push_back(key.to_string());
        if self.order.len() > RECENT_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Rows waiting for a commit, in WAL order.
#[derive(Default)]
struct Pending {
    /// Log rows (storage schema) with the WAL record they came in and
    /// their line bytes.
    batches: Vec<PendingBatch>,
    /// Metric samples (wire schema) with their WAL record and memory size.
    metric_batches: Vec<PendingBatch>,
    /// Metric type/help/unit received, per tenant.
    metadata: Vec<(String, weft_model::metric::MetadataMap)>,
    /// Line bytes of log rows plus the memory of metric batches (what
    /// `commit_bytes` counts).
    bytes: u64,
    /// Memory the batches hold (what `max_pending_bytes` bounds: a row
    /// holds about twice its line bytes in Arrow columns).
    memory: u64,
}

struct PendingBatch {
    tenant: String,
    batch: RecordBatch,
    seq: u64,
    bytes: u64,
    memory: u64,
    /// The source watermarks its request moved: a commit that leaves later
    /// rows pending publishes only the moves of the rows it wrote, or a
    /// replay would drop the rest as already held.
    moves: Vec<(String, Watermark)>,
}

impl Pending {
    fn add_logs(&mut self, entry: PendingBatch) {
        self.bytes += entry.bytes;
        self.memory += entry.memory;
        self.batches.push(entry);
    }

    fn add_metrics(&mut self, entry: PendingBatch) {
        self.bytes += entry.bytes;
        self.memory += entry.memory;
        self.metric_batches.push(entry);
    }

    /// Takes the oldest rows, about `budget` bytes of them (at least one
    /// batch), with every metric batch and log batch of the WAL records
    /// up to the last one taken, plus all metadata. Returns them and that
    /// last WAL record, or `None` for it when nothing is left behind.
    fn take_oldest(&mut self, budget: u64) -> (Pending, Option<u64>) {
        let (mut logs, mut metrics, mut bytes, mut memory) = (0, 0, 0u64, 0u64);
        while (logs < self.batches.len() || metrics < self.metric_batches.len()) && (bytes < budget || logs + metrics == 0) {
            let log_first = match (self.batches.get(logs), self.metric_batches.get(metrics)) {
                (Some(l), Some(m)) => l.seq <= m.seq,
                (Some(_), None) => true,
                _ => false,
            };
            if log_first {
                bytes += self.batches[logs].bytes;
                memory += self.batches[logs].memory;
                logs += 1;
            } else {
                bytes += self.metric_batches[metrics].bytes;
                memory += self.metric_batches[metrics].memory;
                metrics += 1;
            }
        }
        if logs == self.batches.len() && metrics == self.metric_batches.len() {
            return (std::mem::take(self), None);
        }
        let last = [
            logs.checked_sub(1).map(|i| self.batches[i].seq),
            metrics.checked_sub(1).map(|i| self.metric_batches[i].seq),
        ]
        .into_iter()
        .flatten()
        .max()
        .expect("at least one batch taken");
        // Batches of that same record (a request can hold several).
        while self.batches.get(logs).is_some_and(|b| b.seq <= last) {
            bytes += self.batches[logs].bytes;
            memory += self.batches[logs].memory;
            logs += 1;
        }
        while self.metric_batches.get(metrics).is_some_and(|b| b.seq <= last) {
            bytes += self.metric_batches[metrics].bytes;
            memory += self.metric_batches[metrics].memory;
            metrics += 1;
        }
        let rest = self.batches.split_off(logs);
        let metric_rest = self.metric_batches.split_off(metrics);
        self.bytes -= bytes;
        self.memory -= memory;
        let taken = Pending {
            batches: std::mem::replace(&mut self.batches, rest),
            metric_batches: std::mem::replace(&mut self.metric_batches, metric_rest),
            metadata: std::mem::take(&mut self.metadata),
            bytes,
            memory,
        };
        (taken, Some(last))
    }

    /// Puts rows taken by a failed commit back in front.
    fn restore(&mut self, mut taken: Pending) {
        taken.batches.append(&mut self.batches);
        self.batches = taken.batches;
        taken.metric_batches.append(&mut self.metric_batches);
        self.metric_batches = taken.metric_batches;
        taken.metadata.append(&mut self.metadata);
        self.metadata = taken.metadata;
        self.bytes += taken.bytes;
        self.memory += taken.memory;
    }
}

struct WriteState {
    wal: WriteAheadLog,
    pending: Pending,
    watermarks: HashMap<String, Watermark>,
    recent_keys: RecentKeys,
}

/// A decoded metric request.
struct PreparedMetrics {
    batches: Vec<RecordBatch>,
    metadata: weft_model::metric::MetadataMap,
}

/// Bytes a batch's rows take: the slices its columns use, not whole shared
/// buffers (the columns of an uncompressed IPC body are slices of one
/// message, each of which would otherwise count the whole body).
fn batch_memory(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64)
        .sum()
}

/// Where a request's WAL record comes from: appended now, or replayed.
enum WalSource<'a> {
    Append(&'a [u8]),
    Replayed(u64),
}

/// A decoded request, ready to be admitted.
struct Prepared {
    batches: Vec<RecordBatch>,
    sources: Vec<String>,
}

/// The indexer: owns the WAL, the pending rows and the catalog.
pub struct Indexer {
    data_dir: PathBuf,
    config: IndexerConfig,
    catalog: Arc<Catalog>,
    write: Mutex<WriteState>,
    commit_lock: Mutex<()>,
    /// Splits a merge failed to read: left out of later merges so one bad
    /// split does not stop merging everywhere else.
    merge_quarantine: Mutex<HashSet<String>>,
    pub metrics: IndexerMetrics,
    commit_wanted: tokio::sync::Notify,
    /// One per ingest request read and decoded at once.
    ingest_permits: Arc<tokio::sync::Semaphore>,
    /// The next commit panics while writing (a test's fault injection).
    #[cfg(test)]
    pub(crate) panic_in_next_commit: std::sync::atomic::AtomicBool,
}

fn encode_wal_payload(format: u8, tenant: &str, key: &str, ingest_ts: i64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + tenant.len() + key.len() + 16);
    out.push(format);
    out.extend_from_slice(&ingest_ts.to_le_bytes());
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(body);
    out
}

fn decode_wal_payload(payload: &[u8]) -> Option<(u8, String, String, i64, &[u8])> {
    let format = *payload.first()?;
    if !(format == WAL_LOGS || format == WAL_METRICS) || payload.len() < 13 {
        return None;
    }
    let ingest_ts = i64::from_le_bytes(payload[1..9].try_into().ok()?);
    let tenant_len = u16::from_le_bytes(payload[9..11].try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(payload.get(11..11 + tenant_len)?).ok()?.to_string();
    let at = 11 + tenant_len;
    let key_len = u16::from_le_bytes(payload.get(at..at + 2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(payload.get(at + 2..at + 2 + key_len)?).ok()?.to_string();
    Some((format, tenant, key, ingest_ts, &payload[at + 2 + key_len..]))
}

/// Checks a tenant id: 1–150 of `[A-Za-z0-9_.-]`.
pub fn validate_tenant(tenant: &str) -> Result<(), IndexerError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 150
        && tenant != "."
        && tenant != ".."
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(IndexerError::BadRequest(format!(
            "invalid tenant {tenant:?}: use 1-150 of [A-Za-z0-9_.-]"
        )))
    }
}

/// The limits a body is decoded under.
#[derive(Clone, Copy, Debug)]
enum Decoding {
    /// A request's: `max_request_rows` rows, 16 × `max_request_bytes`
    /// decoded.
    Request,
    /// A WAL record's at start-up: it was acknowledged under the limits
    /// of its day, which may have been lowered since.
    Replay,
}

impl Decoding {
    /// Most rows and most decoded bytes.
    fn bounds(self, config: &IndexerConfig) -> (usize, u64) {
        match self {
            Decoding::Request => (config.max_request_rows, config.max_request_bytes as u64 * 16),
            Decoding::Replay => (usize::MAX, u64::MAX),
        }
    }
}

impl Indexer {
    /// Opens the data directory: loads the catalog, removes files no split
    /// owns (a crash between writing a split and publishing it), and
    /// replays the WAL into pending rows.
    pub fn open(data_dir: &Path, config: IndexerConfig, registry: &prometheus::Registry) -> Result<Arc<Self>, IndexerError> {
        config.validate()?;
        std::fs::create_dir_all(data_dir).map_err(|source| IndexerError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let metrics = IndexerMetrics::new(registry);
        check_catalog_present(data_dir)?;
        let catalog = Arc::new(Catalog::open(data_dir)?);
        if !Catalog::path_in(data_dir).exists() {
            // Written before any split: from now on a missing catalog is a
            // lost one, not a first commit that crashed before writing it.
            catalog.update(|_| ())?;
        }
        let state = catalog.snapshot();
        remove_orphans(data_dir, &state);
        let (wal, report) = WriteAheadLog::open(&data_dir.join("wal"), config.wal_segment_bytes, state.wal_seq, config.wal_fsync)?;
        metrics.wal_corruptions.inc_by(report.corruptions);
        let config_permits = config.max_concurrent_requests;
        let indexer = Arc::new(Self {
            data_dir: data_dir.to_path_buf(),
            config,
            catalog,
            write: Mutex::new(WriteState {
                wal,
                pending: Pending::default(),
                watermarks: state.watermarks.clone(),
                recent_keys: RecentKeys::default(),
            }),
            commit_lock: Mutex::new(()),
            merge_quarantine: Mutex::new(HashSet::new()),
            metrics,
            commit_wanted: tokio::sync::Notify::new(),
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(config_permits)),
            #[cfg(test)]
            panic_in_next_commit: std::sync::atomic::AtomicBool::new(false),
        });
        let replayed = report.records.len();
        for record in report.records {
            // A record the indexer acknowledged is replayed whatever the
            // request limits say now (they may have been lowered since);
            // one it cannot take at all is kept aside, not dropped with
            // the segment at the next commit.
            if let Err(reason) = indexer.replay(&record.payload, record.seq) {
                indexer.keep_unreplayable(record.seq, &record.payload, &reason)?;
            }
        }
        if replayed > 0 || report.corruptions > 0 {
            tracing::info!(
                records = replayed,
                corruptions = report.corruptions,
                bytes_cut = report.bytes_cut,
                "WAL replayed"
            );
        }
        indexer.update_gauges();
        Ok(indexer)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The catalog (shared with the query side in standalone mode).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    pub fn config(&self) -> &IndexerConfig {
        &self.config
    }

    /// The permits ingest requests take (see `max_concurrent_requests`).
    pub fn ingest_permits(&self) -> Arc<tokio::sync::Semaphore> {
        self.ingest_permits.clone()
    }

    /// Admits one WAL record again (at start-up).
    fn replay(&self, payload: &[u8], seq: u64) -> Result<(), String> {
        let (format, tenant, key, ingest_ts, body) = decode_wal_payload(payload).ok_or("an unknown record format")?;
        if format == WAL_METRICS {
            let prepared = self.prepare_metrics(body, Decoding::Replay).map_err(|e| e.to_string())?;
            self.admit_metrics(&mut self.write.lock().expect("write lock"), &tenant, prepared, seq, "replay");
            return Ok(());
        }
        let prepared = self.prepare(body, Decoding::Replay).map_err(|e| e.to_string())?;
        let mut write = self.write.lock().expect("write lock");
        self.admit(&mut write, &tenant, &key, prepared, ingest_ts, WalSource::Replayed(seq), "replay")
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Writes a WAL record that replay could not admit to
    /// `wal-rejected/<seq>.record` (the WAL segment holding it goes at the
    /// next commit), says why and counts it; fails the start where it
    /// cannot be kept (a full disk), rather than lose it.
    fn keep_unreplayable(&self, seq: u64, payload: &[u8], reason: &str) -> Result<(), IndexerError> {
        let dir = self.data_dir.join("wal-rejected");
        let path = dir.join(format!("{seq:020}.record"));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, payload))
            .map_err(|source| IndexerError::Io {
                path: path.clone(),
                source,
            })?;
        self.metrics.wal_unreplayable.inc();
        tracing::error!(seq, reason, path = %path.display(), "WAL record cannot be replayed; kept aside");
        Ok(())
    }

    fn prepare(&self, body: &[u8], decoding: Decoding) -> Result<Prepared, IndexerError> {
        let (rows, bytes) = decoding.bounds(&self.config);
        let (metadata, mut batches) = decode_ipc(body, &wire_schema(), rows, bytes)
            .map_err(|e| IndexerError::BadRequest(format!("body is not a valid weft Arrow IPC batch: {e}")))?;
        let sources: Vec<String> = match metadata.get(META_SOURCES) {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| IndexerError::BadRequest(format!("schema metadata {META_SOURCES} is not a JSON list of strings: {e}")))?,
            None => Vec::new(),
        };
        for batch in &mut batches {
            let view = LogBatchView::new(batch)?;
            if let Some(src) = view.src {
                if let Some(bad) = src.iter().flatten().find(|s| *s as usize >= sources.len()) {
                    return Err(IndexerError::BadRequest(format!(
                        "row refers to source {bad} but the batch lists {}",
                        sources.len()
                    )));
                }
            }
            if (0..view.len()).any(|r| view.line.value(r).len() > self.config.max_line_bytes) {
                // Keep the head of over-long lines, marked truncated, rather
                // than refuse the whole batch.
                let max = self.config.max_line_bytes;
                let mut builder = weft_model::LogBatchBuilder::with_capacity(view.len(), view.line.values().len().min(64 << 20));
                for row in 0..view.len() {
                    let mut record = view.record(row);
                    if record.line.len() > max {
                        let mut cut = max;
                        while !record.line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        record.line.truncate(cut);
                        record.truncated = true;
                        self.metrics.truncated_lines.inc();
                    }
                    builder.append(&record.as_ref());
                }
                *batch = builder.finish(true);
            }
        }
        Ok(Prepared { batches, sources })
    }

    /// Ingests one Arrow IPC body (wire schema). Blocking: call from a
    /// blocking thread.
    pub fn ingest_arrow(&self, tenant: &str, key: &str, body: &[u8], endpoint: &str) -> Result<IngestOutcome, IndexerError> {
        validate_tenant(tenant)?;
        if key.len() > 512 {
            return Err(IndexerError::BadRequest("idempotency key longer than 512 bytes".into()));
        }
        let prepared = self.prepare(body, Decoding::Request)?;
        let ingest_ts = now_nanos();
        let mut write = self.write.lock().expect("write lock");
        if write.pending.memory >= self.config.max_pending_bytes {
            return Err(IndexerError::Unavailable(format!(
                "indexer is behind: {} bytes wait for commit in memory (limit {}); retry later",
                write.pending.memory, self.config.max_pending_bytes
            )));
        }
        let payload = encode_wal_payload(WAL_LOGS, tenant, key, ingest_ts, body);
        let outcome = self.admit(&mut write, tenant, key, prepared, ingest_ts, WalSource::Append(&payload), endpoint)?;
        let pending = write.pending.bytes;
        drop(write);
        self.metrics.bytes_ingested.inc_by(body.len() as u64);
        self.metrics.pending_bytes.set(pending as i64);
        if pending >= self.config.commit_bytes {
            self.commit_wanted.notify_one();
        }
        Ok(outcome)
    }

    /// Drops what is already held, appends to the WAL (when `wal_payload` is
    /// given), then moves watermarks and adds the rows to pending.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        write: &mut WriteState,
        tenant: &str,
        key: &str,
        prepared: Prepared,
        ingest_ts: i64,
        wal: WalSource<'_>,
        endpoint: &str,
    ) -> Result<IngestOutcome, IndexerError> {
        let total_rows: usize = prepared.batches.iter().map(|b| b.num_rows()).sum();
        if !key.is_empty() && write.recent_keys.contains(key) {
            self.metrics
                .duplicate_rows
                .with_label_values(&["idempotency_key"])
                .inc_by(total_rows as u64);
            return Ok(IngestOutcome {
                accepted: 0,
                duplicates: total_rows,
                duplicate_batch: true,
            });
        }
        // Anything at or below the source's watermark is already held.
        // Within a batch positions need not rise: a joined traceback
        // carries its last line's position and may follow lines of the
        // other stream that came after its first line.
        let mut moved: HashMap<usize, u64> = HashMap::new();
        let mut masks = Vec::with_capacity(prepared.batches.len());
        let mut duplicates = 0usize;
        for batch in &prepared.batches {
            let view = LogBatchView::new(batch)?;
            let (Some(src), Some(offset)) = (view.src, view.src_offset) else {
                masks.push(None);
                continue;
            };
            let mut keep = Vec::with_capacity(view.len());
            for row in 0..view.len() {
                if !src.is_valid(row) || !offset.is_valid(row) {
                    keep.push(true);
                    continue;
                }
                let source = src.value(row) as usize;
                let position = offset.value(row);
                let held = write.watermarks.get(&prepared.sources[source]).map(|w| w.position);
                let fresh = held.is_none_or(|c| position > c);
                if fresh {
                    let top = moved.entry(source).or_insert(position);
                    *top = (*top).max(position);
                } else {
                    duplicates += 1;
                }
                keep.push(fresh);
            }
            masks.push(Some(BooleanArray::from(keep)));
        }
        let accepted = total_rows - duplicates;
        if duplicates > 0 {
            self.metrics
                .duplicate_rows
                .with_label_values(&["source_position"])
                .inc_by(duplicates as u64);
        }
        let mut seq = 0;
        if accepted > 0 {
            seq = match wal {
                WalSource::Append(payload) => {
                    let seq = write
                        .wal
                        .append(payload)
                        .map_err(|e| IndexerError::Unavailable(format!("write-ahead log append failed: {e}")))?;
                    self.metrics.wal_appends.inc();
                    seq
                }
                WalSource::Replayed(seq) => seq,
            };
        }
        write.recent_keys.insert(key);
        let now = now_nanos();
        let moves: Vec<(String, Watermark)> = moved
            .into_iter()
            .map(|(source, position)| (prepared.sources[source].clone(), Watermark { position, updated: now }))
            .collect();
        for (source, watermark) in &moves {
            write.watermarks.insert(source.clone(), *watermark);
        }
        for (batch, mask) in prepared.batches.into_iter().zip(masks) {
            let batch = match mask {
                Some(mask) => filter_record_batch(&batch, &mask).map_err(|e| IndexerError::Internal(e.to_string()))?,
                None => batch,
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = with_ingest_ts(to_storage(&batch)?, ingest_ts)?;
            let bytes = LogBatchView::new(&batch)?.line.values().len() as u64;
            write.pending.add_logs(PendingBatch {
                tenant: tenant.to_string(),
                memory: batch_memory(&batch),
                batch,
                seq,
                bytes,
                moves: moves.clone(),
            });
        }
        self.metrics.rows_ingested.with_label_values(&[endpoint]).inc_by(accepted as u64);
        Ok(IngestOutcome {
            accepted,
            duplicates,
            duplicate_batch: false,
        })
    }

    /// Writes the rows pending now into splits and publishes them with the
    /// WAL position and watermarks they cover. Returns the splits written.
    ///
    /// Rows are taken oldest first, about `commit_bytes` of them at a time:
    /// an indexer that fell behind commits its backlog in several splits
    /// rather than holding it all, its sorted copy and the index being
    /// built at once (which had tripled its memory at the worst moment).
    pub fn commit(&self) -> Result<usize, IndexerError> {
        let _serial = self.commit_lock.lock().expect("commit lock");
        // Rows arriving meanwhile wait for the next call, so a steady feed
        // cannot keep one call going.
        let target = self.write.lock().expect("write lock").wal.next_seq() - 1;
        let mut written = 0;
        loop {
            let (count, covered) = self.commit_oldest()?;
            written += count;
            if covered >= target {
                return Ok(written);
            }
        }
    }

    /// Commits the oldest `commit_bytes` of pending rows; returns the
    /// splits written and the WAL record covered up to.
    pub(crate) fn commit_oldest(&self) -> Result<(usize, u64), IndexerError> {
        let started = Instant::now();
        let cutoff = now_nanos() - self.config.retention.as_nanos() as i64;
        let (pending, seq, watermarks) = {
            let mut write = self.write.lock().expect("write lock");
            // Sources silent for a whole retention period are forgotten.
            write.watermarks.retain(|_, w| w.updated >= cutoff);
            let (pending, last) = write.pending.take_oldest(self.config.commit_bytes);
            let (seq, watermarks) = match last {
                Some(last) => {
                    let mut watermarks = self.catalog.with(|c| c.watermarks.clone());
                    for (source, watermark) in pending.batches.iter().flat_map(|b| &b.moves) {
                        watermarks.insert(source.clone(), *watermark);
                    }
                    watermarks.retain(|_, w| w.updated >= cutoff);
                    (last, watermarks)
                }
                None => (write.wal.next_seq() - 1, write.watermarks.clone()),
            };
            (pending, seq, watermarks)
        };
        if pending.batches.is_empty() && pending.metric_batches.is_empty() && self.catalog.with(|c| c.wal_seq >= seq) {
            return Ok((0, seq));
        }
        let mut pending = pending;
        let metadata = std::mem::take(&mut pending.metadata);
        // A panic while writing (a fault in a writer) is an error like any
        // other: the rows go back in front rather than being lost with the
        // task, and the commit lock is not poisoned for every later commit.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            #[cfg(test)]
            if self.panic_in_next_commit.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("a fault injected by a test");
            }
            self.write_splits(&pending.batches)
                .and_then(|mut splits| match self.write_metric_splits(&pending.metric_batches) {
                    Ok(metric_splits) => {
                        splits.extend(metric_splits);
                        Ok(splits)
                    }
                    Err(e) => {
                        for split in &splits {
                            let (parquet, index) = split::split_files(&self.data_dir, split);
                            split::remove_path(&parquet);
                            split::remove_path(&index);
                        }
                        Err(e)
                    }
                })
                .and_then(|splits| {
                    let count = splits.len();
                    let written: Vec<SplitMeta> = splits.clone();
                    let metadata = metadata.clone();
                    self.catalog
                        .update(move |state| {
                            state.splits.extend(splits);
                            state.wal_seq = state.wal_seq.max(seq);
                            state.watermarks = watermarks;
                            for (tenant, map) in metadata {
                                state.metadata.entry(tenant).or_default().extend(map);
                            }
                        })
                        .inspect_err(|_| {
                            for split in &written {
                                let (parquet, index) = split::split_files(&self.data_dir, split);
                                split::remove_path(&parquet);
                                split::remove_path(&index);
                            }
                        })
                        .map(|_| count)
                })
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(IndexerError::Internal(format!("commit panicked: {what}")))
        });
        match result {
            Ok(count) => {
                let mut write = self.write.lock().expect("write lock");
                if let Err(e) = write.wal.remove_committed(seq) {
                    tracing::warn!(error = %e, "removing committed WAL segments failed");
                }
                self.metrics.wal_bytes.set(write.wal.size_bytes() as i64);
                self.metrics.pending_bytes.set(write.pending.bytes as i64);
                drop(write);
                if count > 0 {
                    self.metrics.commits.inc();
                    self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                }
                self.update_gauges();
                Ok((count, seq))
            }
            Err(e) => {
                // Put the rows back in front, in order; they are still in the WAL.
                self.metrics.commit_errors.inc();
                pending.metadata = metadata;
                self.write.lock().expect("write lock").pending.restore(pending);
                Err(e)
            }
        }
    }

    /// One split per (tenant, hour of event time).
    fn write_splits(&self, batches: &[PendingBatch]) -> Result<Vec<SplitMeta>, IndexerError> {
        let mut by_bucket: std::collections::BTreeMap<(String, i64), Vec<RecordBatch>> = Default::default();
        const HOUR: i64 = 3600 * 1_000_000_000;
        for PendingBatch { tenant, batch, .. } in batches {
            let view = LogBatchView::new(batch)?;
            let hours: Vec<i64> = view.ts.values().iter().map(|ts| ts.div_euclid(HOUR)).collect();
            let first = hours[0];
            if hours.iter().all(|h| *h == first) {
                by_bucket.entry((tenant.clone(), first)).or_default().push(batch.clone());
                continue;
            }
            let distinct: std::collections::BTreeSet<i64> = hours.iter().copied().collect();
            for hour in distinct {
                let mask = BooleanArray::from(hours.iter().map(|h| *h == hour).collect::<Vec<_>>());
                let part = filter_record_batch(batch, &mask).map_err(|e| IndexerError::Internal(e.to_string()))?;
                by_bucket.entry((tenant.clone(), hour)).or_default().push(part);
            }
        }
        let mut written = Vec::new();
        for ((tenant, _), parts) in by_bucket {
            match split::write_split(&self.data_dir, &tenant, &parts, 0) {
                Ok(meta) => written.push(meta),
                Err(e) => {
                    for split in &written {
                        let (parquet, index) = split::split_files(&self.data_dir, split);
                        split::remove_path(&parquet);
                        split::remove_path(&index);
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// One metric split per (tenant, hour of sample time).
    fn write_metric_splits(&self, batches: &[PendingBatch]) -> Result<Vec<SplitMeta>, IndexerError> {
        let mut by_bucket: std::collections::BTreeMap<(String, i64), Vec<RecordBatch>> = Default::default();
        const HOUR_MS: i64 = 3_600_000;
        for PendingBatch { tenant, batch, .. } in batches {
            let view = weft_model::metric::MetricBatchView::new(batch)?;
            let hours: Vec<i64> = view.ts.values().iter().map(|ts| ts.div_euclid(HOUR_MS)).collect();
            let distinct: std::collections::BTreeSet<i64> = hours.iter().copied().collect();
            if distinct.len() == 1 {
                by_bucket.entry((tenant.clone(), hours[0])).or_default().push(batch.clone());
                continue;
            }
            for hour in distinct {
                let mask = BooleanArray::from(hours.iter().map(|h| *h == hour).collect::<Vec<_>>());
                let part = filter_record_batch(batch, &mask).map_err(|e| IndexerError::Internal(e.to_string()))?;
                by_bucket.entry((tenant.clone(), hour)).or_default().push(part);
            }
        }
        let mut written = Vec::new();
        for ((tenant, _), parts) in by_bucket {
            match split::metrics::write_metric_split(&self.data_dir, &tenant, &parts, 0) {
                Ok(meta) => written.push(meta),
                Err(e) => {
                    for split in &written {
                        let (parquet, index) = split::split_files(&self.data_dir, split);
                        split::remove_path(&parquet);
                        split::remove_path(&index);
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// Decodes a metric batch (wire schema) and checks every series.
    fn prepare_metrics(&self, body: &[u8], decoding: Decoding) -> Result<PreparedMetrics, IndexerError> {
        let (rows, bytes) = decoding.bounds(&self.config);
        let (metadata, batches) = decode_ipc(body, &weft_model::metric::metric_wire_schema(), rows, bytes)
            .map_err(|e| IndexerError::BadRequest(format!("body is not a valid weft metric batch: {e}")))?;
        let metadata: weft_model::metric::MetadataMap = match metadata.get(weft_model::metric::META_METRIC_METADATA) {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| IndexerError::BadRequest(format!("metric metadata is not valid JSON: {e}")))?
            }
            None => Default::default(),
        };
        let mut checked: HashSet<&str> = HashSet::new();
        // Samples are stored in hourly splits; a request spread over many
        // hours (a client with a broken clock) would write one split each.
        let mut hours: HashSet<i64> = HashSet::new();
        for batch in &batches {
            let view = weft_model::metric::MetricBatchView::new(batch)?;
            for ts in view.ts.values().iter() {
                if hours.insert(ts.div_euclid(3_600_000)) && hours.len() > MAX_REQUEST_HOURS {
                    return Err(IndexerError::BadRequest(format!(
                        "samples span more than {MAX_REQUEST_HOURS} distinct hours in one request; send them in pieces"
                    )));
                }
            }
            for row in 0..view.len() {
                let text = view.series.value(row);
                if checked.contains(text) {
                    continue;
                }
                let labels = weft_model::LabelSet::parse(text).map_err(|e| IndexerError::BadRequest(format!("row {row}: {e}")))?;
                weft_model::metric::validate_series(&labels).map_err(|e| IndexerError::BadRequest(format!("row {row}: {e}")))?;
                if labels.to_string() != text {
                    return Err(IndexerError::BadRequest(format!(
                        "row {row}: series {text:?} is not in canonical form {labels}"
                    )));
                }
                checked.insert(text);
            }
        }
        drop(checked);
        Ok(PreparedMetrics { batches, metadata })
    }

    fn admit_metrics(&self, write: &mut WriteState, tenant: &str, prepared: PreparedMetrics, seq: u64, endpoint: &str) {
        let mut rows = 0;
        for batch in prepared.batches {
            rows += batch.num_rows();
            // Series text included: a sample row is far more than its 16
            // bytes of time and value.
            let bytes = batch_memory(&batch);
            write.pending.add_metrics(PendingBatch {
                tenant: tenant.to_string(),
                batch,
                seq,
                bytes,
                memory: bytes,
                moves: Vec::new(),
            });
        }
        if !prepared.metadata.is_empty() {
            write.pending.metadata.push((tenant.to_string(), prepared.metadata));
        }
        self.metrics.samples_ingested.with_label_values(&[endpoint]).inc_by(rows as u64);
    }

    /// Ingests one metric batch (Arrow IPC, metric wire schema). Blocking.
    pub fn ingest_metrics(&self, tenant: &str, body: &[u8], endpoint: &str) -> Result<usize, IndexerError> {
        validate_tenant(tenant)?;
        let prepared = self.prepare_metrics(body, Decoding::Request)?;
        let rows: usize = prepared.batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 && prepared.metadata.is_empty() {
            return Ok(0);
        }
        let mut write = self.write.lock().expect("write lock");
        if write.pending.memory >= self.config.max_pending_bytes {
            return Err(IndexerError::Unavailable(format!(
                "indexer is behind: {} bytes wait for commit in memory (limit {}); retry later",
                write.pending.memory, self.config.max_pending_bytes
            )));
        }
        let payload = encode_wal_payload(WAL_METRICS, tenant, "", now_nanos(), body);
        let seq = write
            .wal
            .append(&payload)
            .map_err(|e| IndexerError::Unavailable(format!("write-ahead log append failed: {e}")))?;
        self.metrics.wal_appends.inc();
        self.admit_metrics(&mut write, tenant, prepared, seq, endpoint);
        let pending = write.pending.bytes;
        drop(write);
        self.metrics.bytes_ingested.inc_by(body.len() as u64);
        self.metrics.pending_bytes.set(pending as i64);
        if pending >= self.config.commit_bytes {
            self.commit_wanted.notify_one();
        }
        Ok(rows)
    }

    /// Merges one group of small splits of the same tenant and hour, if
    /// there is one. Returns whether a merge happened.
    pub fn merge_once(&self) -> Result<bool, IndexerError> {
        let state = self.catalog.snapshot();
        let small = self.config.merge_max_line_bytes / 2;
        let quarantine = self.merge_quarantine.lock().expect("quarantine lock").clone();
        let mut groups: HashMap<(String, String), Vec<&SplitMeta>> = HashMap::new();
        for split in state.splits.iter().filter(|s| s.line_bytes < small && !quarantine.contains(&s.id)) {
            let dir = Path::new(&split.parquet)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            groups.entry((split.tenant.clone(), dir)).or_default().push(split);
        }
        let Some(((tenant, _), mut group)) = groups
            .into_iter()
            .filter(|(_, g)| g.len() >= self.config.merge_min_splits)
            .max_by_key(|(_, g)| g.len())
        else {
            return Ok(false);
        };
        group.sort_by_key(|s| (s.min_ts, s.id.clone()));
        let mut chosen = Vec::new();
        let mut total = 0;
        for split in group {
            if total + split.line_bytes > self.config.merge_max_line_bytes && chosen.len() >= 2 {
                break;
            }
            total += split.line_bytes;
            chosen.push(split.clone());
        }
        if chosen.len() < 2 {
            return Ok(false);
        }
        let kind = chosen[0].kind;
        let mut batches = Vec::new();
        for split in &chosen {
            let path = self.data_dir.join(&split.parquet);
            let read = match kind {
                crate::catalog::SplitKind::Logs => split::read_parquet(&path),
                crate::catalog::SplitKind::Metrics => split::metrics::read_metric_parquet(&path),
            };
            match read {
                Ok(rows) => batches.extend(rows),
                Err(e) => {
                    tracing::error!(split = %split.id, error = %e, "split unreadable; left out of merges");
                    self.merge_quarantine.lock().expect("quarantine lock").insert(split.id.clone());
                    return Err(e);
                }
            }
        }
        let merges = chosen.iter().map(|s| s.merges).max().unwrap_or(0) + 1;
        let ingest_range = (
            chosen.iter().map(|s| s.min_ingest_ts).min().unwrap_or(0),
            chosen.iter().map(|s| s.max_ingest_ts).max().unwrap_or(0),
        );
        let merged = match kind {
            crate::catalog::SplitKind::Logs => split::write_split(&self.data_dir, &tenant, &batches, merges)?,
            crate::catalog::SplitKind::Metrics => split::metrics::write_metric_split(&self.data_dir, &tenant, &batches, merges)?,
        };
        // Retention counts from when the data arrived, not from the merge.
        let mut merged = merged;
        (merged.min_ingest_ts, merged.max_ingest_ts) = ingest_range;
        let ids: HashSet<String> = chosen.iter().map(|s| s.id.clone()).collect();
        let delete_after = now_nanos() + self.config.grace_period.as_nanos() as i64;
        let output = merged.clone();
        let applied = self.catalog.update(move |state| {
            let present = state.splits.iter().filter(|s| ids.contains(&s.id)).count();
            if present != ids.len() {
                return false;
            }
            let mut paths = Vec::new();
            state.splits.retain(|s| {
                if ids.contains(&s.id) {
                    paths.push(s.parquet.clone());
                    paths.push(s.index.clone());
                    false
                } else {
                    true
                }
            });
            state.splits.push(output);
            state.graveyard.push(Grave { paths, delete_after });
            true
        })?;
        if !applied {
            let (parquet, index) = split::split_files(&self.data_dir, &merged);
            split::remove_path(&parquet);
            split::remove_path(&index);
            return Ok(false);
        }
        self.metrics.merges.inc();
        tracing::debug!(inputs = chosen.len(), rows = merged.rows, split = %merged.id, "merged splits");
        self.update_gauges();
        Ok(true)
    }

    /// Deletes splits past retention (by ingest time) and files whose grace
    /// period is over.
    pub fn enforce_retention(&self) -> Result<(), IndexerError> {
        let now = now_nanos();
        let cutoff = now - self.config.retention.as_nanos() as i64;
        let delete_after = now + self.config.grace_period.as_nanos() as i64;
        let needed = self
            .catalog
            .with(|s| s.splits.iter().any(|s| s.max_ingest_ts < cutoff) || s.graveyard.iter().any(|g| g.delete_after <= now));
        if !needed {
            return Ok(());
        }
        let (expired, due) = self.catalog.update(|state| {
            let mut expired = Vec::new();
            state.splits.retain(|s| {
                if s.max_ingest_ts < cutoff {
                    expired.push(vec![s.parquet.clone(), s.index.clone()]);
                    false
                } else {
                    true
                }
            });
            let count = expired.len();
            for paths in expired {
                state.graveyard.push(Grave { paths, delete_after });
            }
            let mut due = Vec::new();
            state.graveyard.retain(|g| {
                if g.delete_after <= now {
                    due.extend(g.paths.clone());
                    false
                } else {
                    true
                }
            });
            (count, due)
        })?;
        self.metrics.retention_deleted_splits.inc_by(expired as u64);
        for path in due {
            split::remove_path(&self.data_dir.join(path));
        }
        self.update_gauges();
        Ok(())
    }

    fn update_gauges(&self) {
        self.catalog.with(|state| {
            self.metrics.splits.set(state.splits.len() as i64);
            self.metrics
                .split_bytes
                .set(state.splits.iter().map(|s| s.parquet_bytes + s.index_bytes).sum::<u64>() as i64);
        });
    }

    /// Runs commits, merges and retention until `shutdown` turns true, then
    /// commits what is pending.
    pub async fn run_background(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut commit_tick = tokio::time::interval(self.config.commit_interval);
        let mut maintenance_tick = tokio::time::interval(self.config.merge_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        maintenance_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let maintenance_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tokio::select! {
                _ = commit_tick.tick() => self.clone().commit_in_background().await,
                _ = self.commit_wanted.notified() => self.clone().commit_in_background().await,
                _ = maintenance_tick.tick() => {
                    // Merges can take a while: run them beside commits, one at a time.
                    if !maintenance_running.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        let me = self.clone();
                        let running = maintenance_running.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = me.enforce_retention() {
                                tracing::warn!(error = %e, "retention failed");
                            }
                            loop {
                                match me.merge_once() {
                                    Ok(true) => continue,
                                    Ok(false) => break,
                                    Err(e) => {
                                        tracing::warn!(error = %e, "merge failed");
                                        break;
                                    }
                                }
                            }
                            running.store(false, std::sync::atomic::Ordering::Release);
                        });
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.commit_in_background().await;
        tracing::info!("indexer stopped");
    }

    async fn commit_in_background(self: Arc<Self>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.commit()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "commit failed; rows stay pending and in the WAL")
            }
            Err(e) => tracing::error!(error = %e, "commit task panicked"),
        }
    }
}

fn with_ingest_ts(batch: RecordBatch, ingest_ts: i64) -> Result<RecordBatch, IndexerError> {
    let column: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![ingest_ts; batch.num_rows()]).with_timezone("UTC"));
    let mut columns = batch.columns().to_vec();
    columns[1] = column;
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| IndexerError::Internal(e.to_string()))
}

/// The split files (and temporary files) under the data directory's
/// `splits/`.
fn split_files_under(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_split_file =
                name.ends_with(".parquet") || name.ends_with(".tantivy") || name.ends_with(".series.zst") || name.ends_with(".tmp");
            if is_split_file {
                found.push(path);
            } else if path.is_dir() {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&data_dir.join("splits"), &mut found);
    found
}

/// Refuses a data directory whose catalog is gone while splits remain: an
/// empty catalog would own none of them, and the orphan sweep would delete
/// them all. (A data directory gets its catalog when it is first opened,
/// before any split is written; one from before that was so could hold
/// the splits of a first commit that crashed before writing its catalog,
/// and is refused too: moving `splits/` away loses nothing then, the rows
/// being in the WAL.)
fn check_catalog_present(data_dir: &Path) -> Result<(), IndexerError> {
    let catalog = Catalog::path_in(data_dir);
    if catalog.exists() {
        return Ok(());
    }
    let splits: Vec<PathBuf> = split_files_under(data_dir)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "tmp"))
        .collect();
    match splits.first() {
        None => Ok(()),
        Some(first) => Err(IndexerError::Corrupt(format!(
            "{} is missing but {} split files remain (e.g. {}): restore the catalog, or move splits/ away to start empty; \
             nothing was deleted",
            catalog.display(),
            splits.len(),
            first.display()
        ))),
    }
}

/// Deletes split files the catalog does not reference (and temporary
/// files), left by a crash between writing a split and publishing it.
fn remove_orphans(data_dir: &Path, state: &crate::catalog::CatalogState) {
    let mut owned: HashSet<PathBuf> = HashSet::new();
    for split in &state.splits {
        owned.insert(data_dir.join(&split.parquet));
        owned.insert(data_dir.join(&split.index));
    }
    for grave in &state.graveyard {
        for path in &grave.paths {
            owned.insert(data_dir.join(path));
        }
    }
    for path in split_files_under(data_dir) {
        if !owned.contains(&path) {
            tracing::info!(path = %path.display(), "removing split file no catalog entry owns");
            split::remove_path(&path);
        }
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    /// A pending entry of WAL record `seq` with `bytes` and a watermark move.
    fn entry(seq: u64, bytes: u64) -> PendingBatch {
        let batch = RecordBatch::new_empty(weft_model::metric::metric_wire_schema());
        PendingBatch {
            tenant: "t".into(),
            batch,
            seq,
            bytes,
            memory: bytes * 2,
            moves: vec![(format!("src-{seq}"), Watermark { position: seq, updated: 0 })],
        }
    }

    fn pending(logs: &[(u64, u64)], metrics: &[(u64, u64)]) -> Pending {
        let mut p = Pending::default();
        for &(seq, bytes) in logs {
            p.add_logs(entry(seq, bytes));
        }
        for &(seq, bytes) in metrics {
            p.add_metrics(entry(seq, bytes));
        }
        p
    }

    fn seqs(batches: &[PendingBatch]) -> Vec<u64> {
        batches.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn takes_whole_records_in_wal_order_up_to_the_budget() {
        // Record 1 holds two log batches, record 2 is metrics, record 3 logs.
        let mut p = pending(&[(1, 40), (1, 40), (3, 40), (4, 40)], &[(2, 10)]);
        // A budget met inside record 1 still takes all of record 1.
        let (taken, last) = p.take_oldest(50);
        assert_eq!(
            (seqs(&taken.batches), seqs(&taken.metric_batches), last),
            (vec![1, 1], vec![], Some(1))
        );
        assert_eq!((taken.bytes, taken.memory), (80, 160));
        assert_eq!((p.bytes, p.memory), (90, 180));
        // The metric record before a log record is taken with it.
        let (taken, last) = p.take_oldest(45);
        assert_eq!(
            (seqs(&taken.batches), seqs(&taken.metric_batches), last),
            (vec![3], vec![2], Some(3))
        );
        // A failed commit puts the rows back in front, in order.
        p.restore(taken);
        assert_eq!((seqs(&p.batches), seqs(&p.metric_batches), p.bytes), (vec![3, 4], vec![2], 90));
        // Taking everything says so.
        let (taken, last) = p.take_oldest(1 << 30);
        assert_eq!((seqs(&taken.batches), last), (vec![3, 4], None));
        assert!(p.batches.is_empty() && p.metric_batches.is_empty() && p.bytes == 0 && p.memory == 0);
    }

    #[test]
    fn at_least_one_record_is_taken_whatever_the_budget() {
        let mut p = pending(&[(1, 100), (2, 100)], &[]);
        let (taken, last) = p.take_oldest(0);
        assert_eq!((seqs(&taken.batches), last), (vec![1], Some(1)));
    }
}
