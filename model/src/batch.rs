//! Arrow schema of log records, a builder that appends records straight into
//! Arrow columns, a typed view over a decoded batch, and the Arrow IPC codec
//! (zstd-compressed buffers unless `collector.wire_compression` is `none`)
//! the collector and indexer speak.
//!
//! The storage schema is what Parquet splits hold; the wire schema adds the
//! two source columns (`src`, `src_offset`) the indexer uses to drop lines it
//! already holds after a collector restart, and strips before storing.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{BooleanBuilder, StringBuilder, TimestampNanosecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray, TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::ipc_stream::{buffer_range, messages, Segments, ZstdFramer};
use crate::labels::LabelSet;
use crate::record::{Level, LogRecord};
use crate::ModelError;

/// Column names, in schema order.
pub mod col {
    pub const TS: &str = "ts";
    pub const INGEST_TS: &str = "ingest_ts";
    pub const NAMESPACE: &str = "namespace";
    pub const POD: &str = "pod";
    pub const CONTAINER: &str = "container";
    pub const NODE: &str = "node";
    pub const STREAM: &str = "stream";
    pub const LABELS: &str = "labels";
    pub const RUN: &str = "run";
    pub const RANK: &str = "rank";
    pub const POD_UID: &str = "pod_uid";
    pub const RESTART: &str = "restart";
    pub const LEVEL: &str = "level";
    pub const ML_EVENT: &str = "ml_event";
    pub const FIELDS: &str = "fields";
    pub const TRUNCATED: &str = "truncated";
    pub const PARSE_ERROR: &str = "parse_error";
    pub const LINE: &str = "line";
    pub const SRC: &str = "src";
    pub const SRC_OFFSET: &str = "src_offset";
    /// `ts` split as the collector's batches send it: whole seconds
    /// (`Int64`) and the nanoseconds within the second (`UInt32`).
    pub const TS_SECONDS: &str = "ts_s";
    pub const TS_NANOS: &str = "ts_ns";
    /// `src_offset` split as the collector's batches send it: the low and
    /// high 32 bits (`UInt32` each).
    pub const SRC_OFFSET_LO: &str = "src_offset_lo";
    pub const SRC_OFFSET_HI: &str = "src_offset_hi";
}

/// Schema metadata key holding the JSON array of source keys that `src`
/// indexes into.
pub const META_SOURCES: &str = "weft.sources";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn storage_fields() -> Vec<Field> {
    vec![
        Field::new(col::TS, ts_type(), false),
        Field::new(col::INGEST_TS, ts_type(), false),
        Field::new(col::NAMESPACE, DataType::Utf8, false),
        Field::new(col::POD, DataType::Utf8, false),
        Field::new(col::CONTAINER, DataType::Utf8, false),
        Field::new(col::NODE, DataType::Utf8, false),
        Field::new(col::STREAM, DataType::Utf8, false),
        Field::new(col::LABELS, DataType::Utf8, true),
        Field::new(col::RUN, DataType::Utf8, true),
        Field::new(col::RANK, DataType::Utf8, true),
        Field::new(col::POD_UID, DataType::Utf8, true),
        Field::new(col::RESTART, DataType::UInt32, true),
        Field::new(col::LEVEL, DataType::Utf8, false),
        Field::new(col::ML_EVENT, DataType::Utf8, true),
        Field::new(col::FIELDS, DataType::Utf8, true),
        Field::new(col::TRUNCATED, DataType::Boolean, false),
        Field::new(col::PARSE_ERROR, DataType::Boolean, false),
        Field::new(col::LINE, DataType::Utf8, false),
    ]
}

/// Schema of log rows in Parquet splits.
pub fn storage_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA.get_or_init(|| Arc::new(Schema::new(storage_fields()))).clone()
}

/// Schema of log rows on the collector → indexer wire.
pub fn wire_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = storage_fields();
            fields.push(Field::new(col::SRC, DataType::UInt32, true));
            fields.push(Field::new(col::SRC_OFFSET, DataType::UInt64, true));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// A record borrowed from the producer's buffers, so the collector's hot path
/// appends without allocating per line.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub ts: i64,
    pub ingest_ts: i64,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub node: &'a str,
    pub stream: &'a str,
    pub labels: &'a LabelSet,
    pub run: Option<&'a str>,
    pub rank: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub restart: Option<u32>,
    pub level: Level,
    pub ml_event: Option<&'a str>,
    pub fields: &'a LabelSet,
    pub truncated: bool,
    pub parse_error: bool,
    pub line: &'a str,
    pub source: Option<(u32, u64)>,
}

impl LogRecord {
    /// Borrows this record for appending to a [`LogBatchBuilder`].
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            ts: self.ts,
            ingest_ts: self.ingest_ts,
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
            node: &self.node,
            stream: &self.stream,
            labels: &self.labels,
            run: self.run.as_deref(),
            rank: self.rank.as_deref(),
            pod_uid: self.pod_uid.as_deref(),
            restart: self.restart,
            level: self.level,
            ml_event: self.ml_event.as_deref(),
            fields: &self.fields,
            truncated: self.truncated,
            parse_error: self.parse_error,
            line: &self.line,
            source: self.source,
        }
    }
}

pub(crate) fn labels_json(set: &LabelSet) -> Option<String> {
    if set.is_empty() {
        None
    } else {
        Some(set.to_json().to_string())
    }
}

pub fn labels_from_json(text: Option<&str>) -> LabelSet {
    let Some(text) = text else {
        return LabelSet::new();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => LabelSet::from_pairs(map.into_iter().map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, value)
        })),
        Err(_) => LabelSet::new(),
    }
}

/// Appends records into Arrow column builders.
pub struct LogBatchBuilder {
    ts: TimestampNanosecondBuilder,
    ingest_ts: TimestampNanosecondBuilder,
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    node: StringBuilder,
    stream: StringBuilder,
    labels: StringBuilder,
    run: StringBuilder,
    rank: StringBuilder,
    pod_uid: StringBuilder,
    restart: UInt32Builder,
    level: StringBuilder,
    ml_event: StringBuilder,
    fields: StringBuilder,
    truncated: BooleanBuilder,
    parse_error: BooleanBuilder,
    line: StringBuilder,
    src: UInt32Builder,
    src_offset: UInt64Builder,
    rows: usize,
    line_bytes: usize,
}

impl Default for LogBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024, 256 * 1024)
    }
}

impl LogBatchBuilder {
    /// A builder sized for `rows` rows holding about `line_bytes` of text.
    pub fn with_capacity(rows: usize, line_bytes: usize) -> Self {
        let small = || StringBuilder::with_capacity(rows, rows * 8);
        Self {
            ts: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ingest_ts: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            namespace: small(),
            pod: small(),
            container: small(),
            node: small(),
            stream: small(),
            labels: StringBuilder::new(),
            run: StringBuilder::new(),
            rank: StringBuilder::new(),
            pod_uid: small(),
            restart: UInt32Builder::with_capacity(rows),
            level: small(),
            ml_event: StringBuilder::new(),
            fields: StringBuilder::new(),
            truncated: BooleanBuilder::with_capacity(rows),
            parse_error: BooleanBuilder::with_capacity(rows),
            line: StringBuilder::with_capacity(rows, line_bytes),
            src: UInt32Builder::with_capacity(rows),
            src_offset: UInt64Builder::with_capacity(rows),
            rows: 0,
            line_bytes: 0,
        }
    }

    /// Appends one record.
    pub fn append(&mut self, r: &RecordRef<'_>) {
        self.ts.append_value(r.ts);
        self.ingest_ts.append_value(r.ingest_ts);
        self.namespace.append_value(r.namespace);
        self.pod.append_value(r.pod);
        self.container.append_value(r.container);
        self.node.append_value(r.node);
        self.stream.append_value(r.stream);
        self.labels.append_option(labels_json(r.labels));
        self.run.append_option(r.run);
        self.rank.append_option(r.rank);
        self.pod_uid.append_option(r.pod_uid);
        self.restart.append_option(r.restart);
        self.level.append_value(r.level.as_str());
        self.ml_event.append_option(r.ml_event);
        self.fields.append_option(labels_json(r.fields));
        self.truncated.append_value(r.truncated);
        self.parse_error.append_value(r.parse_error);
        self.line.append_value(r.line);
        self.src.append_option(r.source.map(|s| s.0));
        self.src_offset.append_option(r.source.map(|s| s.1));
        self.rows += 1;
        self.line_bytes += r.line.len();
    }

    /// Rows appended since the last finish.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when nothing was appended since the last finish.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes of line text appended since the last finish.
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// Finishes the rows appended so far into a batch of the wire schema
    /// (`wire = true`) or the storage schema, and resets the builder.
    pub fn finish(&mut self, wire: bool) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.ingest_ts.finish()),
            Arc::new(self.namespace.finish()),
            Arc::new(self.pod.finish()),
            Arc::new(self.container.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.stream.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.run.finish()),
            Arc::new(self.rank.finish()),
            Arc::new(self.pod_uid.finish()),
            Arc::new(self.restart.finish()),
            Arc::new(self.level.finish()),
            Arc::new(self.ml_event.finish()),
            Arc::new(self.fields.finish()),
            Arc::new(self.truncated.finish()),
            Arc::new(self.parse_error.finish()),
            Arc::new(self.line.finish()),
        ];
        let src: ArrayRef = Arc::new(self.src.finish());
        let src_offset: ArrayRef = Arc::new(self.src_offset.finish());
        let rows = self.rows;
        self.rows = 0;
        self.line_bytes = 0;
        let schema = if wire {
            columns.push(src);
            columns.push(src_offset);
            wire_schema()
        } else {
            storage_schema()
        };
        RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows)))
            .expect("builder columns match the schema by construction")
    }
}

/// Typed access to the columns of a log batch (storage or wire schema).
pub struct LogBatchView<'a> {
    pub ts: &'a TimestampNanosecondArray,
    pub ingest_ts: &'a TimestampNanosecondArray,
    pub namespace: &'a StringArray,
    pub pod: &'a StringArray,
    pub container: &'a StringArray,
    pub node: &'a StringArray,
    pub stream: &'a StringArray,
    pub labels: &'a StringArray,
    pub run: &'a StringArray,
    pub rank: &'a StringArray,
    pub pod_uid: &'a StringArray,
    pub restart: &'a UInt32Array,
    pub level: &'a StringArray,
    pub ml_event: &'a StringArray,
    pub fields: &'a StringArray,
    pub truncated: &'a BooleanArray,
    pub parse_error: &'a BooleanArray,
    pub line: &'a StringArray,
    pub src: Option<&'a UInt32Array>,
    pub src_offset: Option<&'a UInt64Array>,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ModelError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ModelError::Schema(format!("missing column {name:?}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ModelError::Schema(format!("column {name:?} has the wrong type")))
}

fn opt<T>(present: bool, value: T) -> Option<T> {
    present.then_some(value)
}

impl<'a> LogBatchView<'a> {
    /// Views a batch that has the storage schema (and possibly the wire
    /// columns).
    pub fn new(batch: &'a RecordBatch) -> Result<Self, ModelError> {
        Ok(Self {
            ts: column(batch, col::TS)?,
            ingest_ts: column(batch, col::INGEST_TS)?,
            namespace: column(batch, col::NAMESPACE)?,
            pod: column(batch, col::POD)?,
            container: column(batch, col::CONTAINER)?,
            node: column(batch, col::NODE)?,
            stream: column(batch, col::STREAM)?,
            labels: column(batch, col::LABELS)?,
            run: column(batch, col::RUN)?,
            rank: column(batch, col::RANK)?,
            pod_uid: column(batch, col::POD_UID)?,
            restart: column(batch, col::RESTART)?,
            level: column(batch, col::LEVEL)?,
            ml_event: column(batch, col::ML_EVENT)?,
            fields: column(batch, col::FIELDS)?,
            truncated: column(batch, col::TRUNCATED)?,
            parse_error: column(batch, col::PARSE_ERROR)?,
            line: column(batch, col::LINE)?,
            src: column(batch, col::SRC).ok(),
            src_offset: column(batch, col::SRC_OFFSET).ok(),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    fn opt_str(array: &StringArray, row: usize) -> Option<String> {
        opt(array.is_valid(row), array.value(row).to_string())
    }

    /// The stream labels of one row (well-known columns plus extra labels).
    pub fn stream_labels(&self, row: usize) -> LabelSet {
        let mut set = labels_from_json(opt(self.labels.is_valid(row), self.labels.value(row)));
        for (name, array) in [
            ("namespace", self.namespace),
            ("pod", self.pod),
            ("container", self.container),
            ("node", self.node),
            ("stream", self.stream),
            ("run", self.run),
            ("rank", self.rank),
        ] {
            if array.is_valid(row) && !array.value(row).is_empty() {
                set.insert(name, array.value(row));
            }
        }
        set
    }

    /// The per-line structured metadata of one row.
    pub fn fields(&self, row: usize) -> LabelSet {
        labels_from_json(opt(self.fields.is_valid(row), self.fields.value(row)))
    }

    /// Copies one row out as an owned record.
    pub fn record(&self, row: usize) -> LogRecord {
        LogRecord {
            ts: self.ts.value(row),
            ingest_ts: self.ingest_ts.value(row),
            namespace: self.namespace.value(row).to_string(),
            pod: self.pod.value(row).to_string(),
            container: self.container.value(row).to_string(),
            node: self.node.value(row).to_string(),
            stream: self.stream.value(row).to_string(),
            labels: labels_from_json(opt(self.labels.is_valid(row), self.labels.value(row))),
            run: Self::opt_str(self.run, row),
            rank: Self::opt_str(self.rank, row),
            pod_uid: Self::opt_str(self.pod_uid, row),
            restart: opt(self.restart.is_valid(row), self.restart.value(row)),
            level: Level::parse(self.level.value(row)),
            ml_event: Self::opt_str(self.ml_event, row),
            fields: self.fields(row),
            truncated: self.truncated.value(row),
            parse_error: self.parse_error.value(row),
            line: self.line.value(row).to_string(),
            source: match (self.src, self.src_offset) {
                (Some(src), Some(off)) if src.is_valid(row) && off.is_valid(row) => Some((src.value(row), off.value(row))),
                _ => None,
            },
        }
    }
}

/// Encodes batches as one Arrow IPC stream with zstd-compressed buffers and
/// the given schema metadata.
pub fn encode_ipc(batches: &[RecordBatch], metadata: HashMap<String, String>) -> Result<Vec<u8>, ModelError> {
    Ok(IpcEncoder::default().encode(batches, metadata)?.into_vec())
}

/// Encodes bodies as [`encode_ipc`] does, keeping the zstd context and a
/// working buffer from one body to the next: a context per body had its
/// fresh workspace paged in and zeroed every time (with one encoder, when
/// arrow still compressed, the collector's page faults per GB of logs went
/// from 111 k to 104 k).
///
/// Arrow encodes each stream uncompressed (its column buffers referenced,
/// not copied) and [`ZstdFramer`] compresses every buffer with the wire
/// parameters (`ipc_stream`'s module documentation says why).
#[derive(Debug)]
pub struct IpcEncoder {
    /// None: the buffers go as they are.
    framer: Option<ZstdFramer>,
}

/// Text buffers handed back once a batch with an uncompressed body is
/// shipped, to write the next batch's text into: memory already paged in
/// rather than a fresh allocation per batch. Over the allocator's 1 MiB
/// mmap threshold (a 2 MiB batch's text) each fresh buffer was mapped,
/// faulted in page by page and unmapped again: 0.5 CPU-s per GB of logs on
/// the benchmark corpus, as much as the parse. Keeps at most
/// [`POOLED_BUFFERS`] of them, each at most [`MAX_POOLED_BUFFER`] bytes of
/// capacity.
#[derive(Clone, Debug, Default)]
pub struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// One Arrow IPC stream as it goes on the wire, held as the parts arrow's
/// encoder handed out. Uncompressed, those are the batch's own column
/// buffers where the builder wrote them, not copied (gathering them into
/// one body had cost 15 % of tail + parse + batch); with zstd, one buffer
/// of frames. A request sends the parts as they lie; a spool file gathers
/// them.
#[derive(Clone, Debug, Default)]
pub struct WireBody {
    parts: Vec<arrow_buffer::Buffer>,
    len: usize,
}

/// The smallest part [`WireBody::give_back_to`] keeps: a batch's text
/// buffer, not its offsets or the messages' headers.
const MIN_POOLED_PART: usize = 256 << 10;

impl WireBody {
    fn from_parts(parts: Vec<arrow_buffer::Buffer>) -> Self {
        let parts: Vec<_> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(|p| p.len()).sum();
        Self { parts, len }
    }

    /// Bytes in the body.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a body of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body's bytes, part after part.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|p| p.as_slice())
    }

    /// The body's parts, to share (their memory is reference-counted).
    pub fn buffers(&self) -> impl Iterator<Item = &arrow_buffer::Buffer> {
        self.parts.iter()
    }

    /// The body's only part, where it has one (shared, not copied).
    pub fn single_part(&self) -> Option<&arrow_buffer::Buffer> {
        match self.parts.as_slice() {
            [part] => Some(part),
            _ => None,
        }
    }

    /// Appends the body's bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        for part in self.parts() {
            out.extend_from_slice(part);
        }
    }

    /// The body's bytes in one slice: borrowed where it is one part (a zstd
    /// body, one read from a spool file), gathered otherwise.
    pub fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.single_part() {
            Some(part) => std::borrow::Cow::Borrowed(part.as_slice()),
            None => {
                let mut out = Vec::new();
                self.write_to(&mut out);
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// The body's bytes as one vector: its only part's own memory where
    /// nothing else holds it, gathered otherwise.
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.parts.len() == 1 {
            match self.parts.pop().expect("one part").into_vec::<u8>() {
                Ok(body) => return body,
                Err(part) => self.parts.push(part),
            }
        }
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Hands `pool` the large byte buffers nothing else holds (a batch's
    /// text, for the next batch to be written into); drops the rest.
    pub fn give_back_to(self, pool: &BufferPool) {
        for part in self.parts {
            if part.capacity() >= MIN_POOLED_PART {
                if let Ok(buffer) = part.into_vec::<u8>() {
                    pool.give_back(buffer);
                }
            }
        }
    }
}

impl From<Vec<u8>> for WireBody {
    fn from(body: Vec<u8>) -> Self {
        Self::from_parts(vec![arrow_buffer::Buffer::from_vec(body)])
    }
}

/// A body of these parts, in order.
impl FromIterator<Vec<u8>> for WireBody {
    fn from_iter<I: IntoIterator<Item = Vec<u8>>>(parts: I) -> Self {
        Self::from_parts(parts.into_iter().map(arrow_buffer::Buffer::from_vec).collect())
    }
}

/// Bodies are equal when their bytes are, however they are split.
impl PartialEq for WireBody {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.parts().flatten().eq(other.parts().flatten())
    }
}

impl Eq for WireBody {}

/// Buffers a pool keeps: those of the batches in flight to the indexer at
/// once, in the usual case.
const POOLED_BUFFERS: usize = 4;
/// The largest capacity a pool keeps: a default 2 MiB batch's text buffer
/// is sized for 2 MiB and 64 KiB, the next one an eighth over the last
/// batch's text (cut past its limit by its last line), and 8 MiB batches
/// are the most the builder is sized for.
const MAX_POOLED_BUFFER: usize = 8 << 20;

impl BufferPool {
    /// An empty buffer, with the capacity of one handed back if any.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// How many buffers the pool holds now.
    pub fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Keeps `buffer`'s memory for a later [`BufferPool::take`] when it is
    /// not too large and the pool has room or holds a smaller one (which it
    /// drops instead); drops it otherwise.
    pub fn give_back(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > MAX_POOLED_BUFFER {
            return;
        }
        buffer.clear();
        let mut kept = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < POOLED_BUFFERS {
            kept.push(buffer);
        } else if let Some(smallest) = kept
            .iter_mut()
            .min_by_key(|b| b.capacity())
            .filter(|b| b.capacity() < buffer.capacity())
        {
            // A full pool keeps the larger buffers.
            *smallest = buffer;
        }
    }
}

/// How the column buffers of a wire body are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireCompression {
    /// zstd with the wire parameters: log bodies 7–9× smaller than their
    /// text, for about a third of the collector's CPU (BENCHMARKS.md).
    #[default]
    Zstd,
    /// Stored as they are (`none` in the config): for an indexer on the
    /// same node or a link wider than the logs, where the CPU matters more
    /// than the bytes.
    #[serde(rename = "none")]
    Uncompressed,
}

/// The most an [`IpcEncoder`] keeps reserved for the next body; after a
/// larger one (a batch of very long lines) it lets its buffers go.
const KEPT_BODY_BYTES: usize = 16 << 20;

impl Default for IpcEncoder {
    fn default() -> Self {
        Self::new(WireCompression::Zstd)
    }
}

impl IpcEncoder {
    /// An encoder writing `compression`'s buffers.
    pub fn new(compression: WireCompression) -> Self {
        let framer = match compression {
            WireCompression::Zstd => Some(ZstdFramer::new()),
            WireCompression::Uncompressed => None,
        };
        Self { framer }
    }

    /// One Arrow IPC stream: the schema (with `metadata`), each batch with
    /// its dictionaries, the end-of-stream marker. Uncompressed, the body
    /// references the batches' buffers.
    pub fn encode(&mut self, batches: &[RecordBatch], metadata: HashMap<String, String>) -> Result<WireBody, ModelError> {
        let ipc = |e: arrow_schema::ArrowError| ModelError::Ipc(e.to_string());
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => wire_schema(),
        };
        let schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
        let mut stream = StreamEncoder::try_new_with_options(&schema, IpcWriteOptions::default()).map_err(ipc)?;
        let mut parts = Vec::new();
        for batch in batches {
            let batch = batch.clone().with_schema(schema.clone()).map_err(ipc)?;
            parts.extend(stream.encode(&batch).map_err(ipc)?);
        }
        parts.extend(stream.finish().map_err(ipc)?);
        let Some(framer) = &mut self.framer else {
            return Ok(WireBody::from_parts(parts));
        };
        let mut body = Vec::new();
        framer.frame(&Segments::new(parts.iter().map(|p| p.as_slice())), &mut body)?;
        body.shrink_to_fit();
        if framer.reserved() > KEPT_BODY_BYTES {
            framer.release();
        }
        Ok(body.into())
    }
}

/// Checks that `body` is what arrow's `StreamWriter` writes for `batches`
/// with zstd buffers, but for the compressed bytes: the same schema and
/// metadata, the same batches read back by arrow's own reader, and every
/// record batch and dictionary message compressed.
#[cfg(test)]
pub(crate) fn assert_encodes_as_the_stream_writer(body: &[u8], batches: &[RecordBatch], metadata: HashMap<String, String>) {
    let schema = batches.first().map_or_else(wire_schema, |b| b.schema());
    let schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::ZSTD))
        .expect("zstd");
    let mut arrows = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new_with_options(&mut arrows, &schema, options).expect("schema encodes");
    for batch in batches {
        writer
            .write(&batch.clone().with_schema(schema.clone()).expect("same fields"))
            .expect("batch encodes");
    }
    writer.finish().expect("stream ends");
    drop(writer);
    let read = |bytes: &[u8]| {
        let reader = StreamReader::try_new(Cursor::new(bytes.to_vec()), None).expect("a stream");
        let schema = reader.schema();
        (schema, reader.collect::<Result<Vec<_>, _>>().expect("batches"))
    };
    assert_eq!(read(body), read(&arrows));
    let stream = Segments::new([body]);
    let kinds = |bytes: &[u8]| -> Vec<_> {
        let stream = Segments::new([bytes]);
        messages(&stream)
            .map(|m| arrow_ipc::root_as_message(&m.unwrap().header).unwrap().header_type())
            .collect()
    };
    assert_eq!(kinds(body), kinds(&arrows), "the same messages in the same order");
    for framed in messages(&stream) {
        let header = framed.unwrap().header;
        let message = arrow_ipc::root_as_message(&header).unwrap();
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(batch) = batch {
            let compression = batch.compression().expect("compressed buffers");
            assert_eq!(compression.codec(), arrow_ipc::CompressionType::ZSTD);
        }
    }
}

/// The decoded size an Arrow IPC stream declares for its record batch
/// buffers (compressed buffers carry their uncompressed length in their
/// first 8 bytes), read from the message headers without inflating
/// anything: a small compressed body cannot claim gigabytes unnoticed.
pub fn declared_decoded_size(bytes: &[u8]) -> Result<u64, ModelError> {
    let bad = |what: &str| ModelError::Ipc(format!("malformed IPC stream: {what}"));
    let stream = Segments::new([bytes]);
    let mut total: u64 = 0;
    for walked in messages(&stream) {
        let framed = walked?;
        let message = arrow_ipc::root_as_message(&framed.header).map_err(|e| bad(&e.to_string()))?;
        let body = &bytes[framed.body_start..framed.body_start + framed.body_len];
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        let Some(batch) = batch else { continue };
        let compressed = batch.compression().is_some();
        for buffer in batch.buffers().into_iter().flatten() {
            let data = &body[buffer_range(buffer, body.len()).ok_or_else(|| bad("buffer outside the body"))?];
            let decoded = if compressed && data.len() >= 8 {
                match i64::from_le_bytes(data[..8].try_into().expect("8 bytes")) {
                    -1 => (data.len() - 8) as u64,
                    n if n >= 0 => n as u64,
                    _ => return Err(bad("negative uncompressed length")),
                }
            } else {
                data.len() as u64
            };
            total = total.saturating_add(decoded);
        }
    }
    Ok(total)
}

/// Decodes an Arrow IPC stream, returning its schema metadata and batches
/// conformed to `target` (columns reordered, missing nullable columns filled
/// with nulls). Refuses streams past `max_rows` rows or declaring more than
/// `max_decoded_bytes` of buffers.
pub fn decode_ipc(
    bytes: &[u8],
    target: &SchemaRef,
    max_rows: usize,
    max_decoded_bytes: u64,
) -> Result<(HashMap<String, String>, Vec<RecordBatch>), ModelError> {
    let declared = declared_decoded_size(bytes)?;
    if declared > max_decoded_bytes {
        return Err(ModelError::TooLarge(format!(
            "batch declares {declared} decoded bytes, over the {max_decoded_bytes} byte limit"
        )));
    }
    let mut expand_budget = max_decoded_bytes - declared;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| ModelError::Ipc(e.to_string()))?;
    let metadata = reader.schema().metadata().clone();
    let mut batches = Vec::new();
    let mut rows = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| ModelError::Ipc(e.to_string()))?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(ModelError::TooLarge(format!("batch has more than {max_rows} rows")));
        }
        batches.push(conform_within(&batch, target, &mut expand_budget)?);
    }
    Ok((metadata.into(), batches))
}

/// Reorders and type-checks a batch's columns to `target`'s; nullable
/// columns missing from `batch` become all-null, and dictionary-encoded
/// columns whose values have the target's type are expanded to plain ones.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ModelError> {
    let mut unlimited = u64::MAX;
    conform_within(batch, target, &mut unlimited)
}

/// Expands a dictionary column to a plain array of its value type, counting
/// the bytes of variable-length values it would write against `budget` first:
/// a small body of a large value and many keys must not inflate unnoticed.
fn expand_dictionary(name: &str, array: &ArrayRef, budget: &mut u64) -> Result<ArrayRef, ModelError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type};
    let bad = |what: String| ModelError::Schema(format!("dictionary column {name:?}: {what}"));
    let dictionary = array.as_any_dictionary();
    let values = dictionary.values();
    // The keys as written (`normalized_keys` would clamp a bad one).
    let raw = dictionary.keys();
    let keys: Vec<Option<i128>> = if let Some(k) = raw.as_primitive_opt::<UInt8Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<UInt16Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<UInt32Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<UInt64Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<Int8Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<Int16Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<Int32Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else if let Some(k) = raw.as_primitive_opt::<Int64Type>() {
        k.iter().map(|k| k.map(i128::from)).collect()
    } else {
        return Err(bad(format!("keys of type {} are not supported", raw.data_type())));
    };
    let strings = values.as_string_opt::<i32>();
    let fixed = values.data_type().primitive_width().unwrap_or(8) as u64;
    let mut bytes: u64 = 0;
    let mut indices = Vec::with_capacity(keys.len());
    for (row, key) in keys.iter().enumerate() {
        let index = match *key {
            Some(key) if key < 0 || key >= values.len() as i128 => {
                return Err(bad(format!("row {row} has key {key}, past the {} values", values.len())));
            }
            Some(key) => key as usize,
            None => {
                indices.push(None);
                continue;
            }
        };
        bytes = bytes.saturating_add(strings.map_or(fixed, |s| s.value_length(index) as u64));
        indices.push(Some(index as u32));
    }
    if bytes > *budget {
        return Err(ModelError::TooLarge(format!(
            "dictionary column {name:?} expands to {bytes} bytes, over what is left of the decoded byte limit"
        )));
    }
    *budget -= bytes;
    arrow_select::take::take(values.as_ref(), &arrow_array::UInt32Array::from(indices), None).map_err(|e| bad(e.to_string()))
}

fn conform_within(batch: &RecordBatch, target: &SchemaRef, expand_budget: &mut u64) -> Result<RecordBatch, ModelError> {
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(array) => match array.data_type() {
                DataType::Dictionary(_, value) if value.as_ref() == field.data_type() => {
                    Some(expand_dictionary(field.name(), array, expand_budget)?)
                }
                _ => Some(array.clone()),
            },
            None => joined_column(batch, field)?,
        };
        match column.as_ref() {
            Some(array) => {
                if array.data_type() != field.data_type() {
                    return Err(ModelError::Schema(format!(
                        "column {:?} is {} but must be {}",
                        field.name(),
                        array.data_type(),
                        field.data_type()
                    )));
                }
                if !field.is_nullable() && array.null_count() > 0 {
                    return Err(ModelError::Schema(format!("column {:?} must not contain nulls", field.name())));
                }
                columns.push(array.clone());
            }
            None if field.is_nullable() => columns.push(arrow_array::new_null_array(field.data_type(), batch.num_rows())),
            None => return Err(ModelError::Schema(format!("missing column {:?}", field.name()))),
        }
    }
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| ModelError::Schema(e.to_string()))
}

/// A column the collector's batches send split in two halves, joined:
/// `ts` from `ts_s` and `ts_ns`, `src_offset` from `src_offset_lo` and
/// `src_offset_hi`. Each half compresses several times faster than the
/// whole (the whole had been about 8 % of the collector's time, for a
/// quarter of its bodies' bytes). `None` where the batch holds neither
/// half; an error where it holds one, or halves that make no value.
fn joined_column(batch: &RecordBatch, field: &Field) -> Result<Option<ArrayRef>, ModelError> {
    use arrow_array::types::{Int64Type, UInt32Type};
    let halves = |first: &str, second: &str| -> Result<Option<(ArrayRef, ArrayRef)>, ModelError> {
        match (batch.column_by_name(first), batch.column_by_name(second)) {
            (Some(a), Some(b)) => Ok(Some((a.clone(), b.clone()))),
            (None, None) => Ok(None),
            _ => Err(ModelError::Schema(format!(
                "column {first:?} comes with {second:?}, and one is missing"
            ))),
        }
    };
    let bad = |name: &str, what: &str| ModelError::Schema(format!("column {name:?}: {what}"));
    match field.name().as_str() {
        col::TS => {
            let Some((seconds, nanos)) = halves(col::TS_SECONDS, col::TS_NANOS)? else {
                return Ok(None);
            };
            let seconds = half::<Int64Type>(&seconds, col::TS_SECONDS)?;
            let nanos = half::<UInt32Type>(&nanos, col::TS_NANOS)?;
            if seconds.null_count() > 0 || nanos.null_count() > 0 {
                return Err(bad(col::TS, "must not contain nulls"));
            }
            let values = seconds
                .values()
                .iter()
                .zip(nanos.values().iter())
                .map(|(&s, &ns)| {
                    // In 128 bits: the earliest instants have whole seconds
                    // whose nanoseconds alone do not fit.
                    let joined = i128::from(s) * 1_000_000_000 + i128::from(ns);
                    (ns < 1_000_000_000)
                        .then(|| i64::try_from(joined).ok())
                        .flatten()
                        .ok_or_else(|| bad(col::TS, &format!("{s} s and {ns} ns is no nanosecond timestamp")))
                })
                .collect::<Result<Vec<i64>, _>>()?;
            let tz = match field.data_type() {
                DataType::Timestamp(TimeUnit::Nanosecond, tz) => tz.clone(),
                other => return Err(bad(col::TS, &format!("joins to nanoseconds, not {other}"))),
            };
            Ok(Some(Arc::new(
                arrow_array::TimestampNanosecondArray::from(values).with_timezone_opt(tz),
            )))
        }
        col::SRC_OFFSET => {
            let Some((low, high)) = halves(col::SRC_OFFSET_LO, col::SRC_OFFSET_HI)? else {
                return Ok(None);
            };
            let low = half::<UInt32Type>(&low, col::SRC_OFFSET_LO)?;
            let high = half::<UInt32Type>(&high, col::SRC_OFFSET_HI)?;
            let values: Vec<u64> = low
                .values()
                .iter()
                .zip(high.values().iter())
                .map(|(&lo, &hi)| u64::from(hi) << 32 | u64::from(lo))
                .collect();
            let nulls = arrow_buffer::NullBuffer::union(low.nulls(), high.nulls());
            Ok(Some(Arc::new(UInt64Array::new(values.into(), nulls))))
        }
        _ => Ok(None),
    }
}

/// One half of a split column, as the primitive array its type must be.
fn half<'a, T: arrow_array::ArrowPrimitiveType>(array: &'a ArrayRef, name: &str) -> Result<&'a arrow_array::PrimitiveArray<T>, ModelError> {
    use arrow_array::cast::AsArray;
    array
        .as_primitive_opt::<T>()
        .ok_or_else(|| ModelError::Schema(format!("column {name:?}: must be {}", T::DATA_TYPE)))
}

/// Drops the wire-only columns.
pub fn to_storage(batch: &RecordBatch) -> Result<RecordBatch, ModelError> {
    conform(batch, &storage_schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> LogRecord {
        LogRecord {
            ts: 1_000 + i as i64,
            namespace: "ml".into(),
            pod: "train-0".into(),
            container: "main".into(),
            node: "gpu-1".into(),
            stream: "stdout".into(),
            labels: LabelSet::from_pairs([("job", "x")]),
            run: Some("run-a".into()),
            restart: Some(2),
            level: Level::Error,
            fields: LabelSet::from_pairs([("trace_id", "abc")]),
            line: format!("line {i} ünïcode"),
            source: Some((0, 100 * i)),
            ..Default::default()
        }
    }

    #[test]
    fn ipc_round_trip_keeps_every_field() {
        let mut builder = LogBatchBuilder::default();
        let records: Vec<_> = (0..5).map(sample).collect();
        for r in &records {
            builder.append(&r.as_ref());
        }
        let batch = builder.finish(true);
        let meta = HashMap::from([(META_SOURCES.to_string(), "[\"a\"]".to_string())]);
        let bytes = encode_ipc(&[batch], meta).unwrap();
        let (metadata, batches) = decode_ipc(&bytes, &wire_schema(), 100, 1 << 20).unwrap();
        assert_eq!(metadata.get(META_SOURCES).unwrap(), "[\"a\"]");
        let view = LogBatchView::new(&batches[0]).unwrap();
        let back: Vec<_> = (0..view.len()).map(|i| view.record(i)).collect();
        assert_eq!(back, records);
        assert!(decode_ipc(&bytes, &wire_schema(), 4, 1 << 20).is_err());
        assert!(declared_decoded_size(&bytes).unwrap() > 100);
        assert!(matches!(decode_ipc(&bytes, &wire_schema(), 100, 100), Err(ModelError::TooLarge(_))));
    }

    /// The encoder writes what arrow's stream writer writes but for the
    /// compressed bytes, body after body with one context: one batch,
    /// several batches in one body, none at all (bodies with dictionaries:
    /// in `source_batch`'s tests).
    #[test]
    fn the_encoder_writes_what_the_stream_writer_writes() {
        let mut encoder = IpcEncoder::default();
        for round in 0..3 {
            let mut builder = LogBatchBuilder::default();
            for i in 0..50 + round * 200 {
                builder.append(&sample(i).as_ref());
            }
            let batch = builder.finish(true);
            let meta = HashMap::from([(META_SOURCES.to_string(), format!("[\"{round}\"]"))]);
            let two = [batch.slice(0, 20), batch.slice(20, batch.num_rows() - 20)];
            for batches in [std::slice::from_ref(&batch), &two[..], &[]] {
                let body = encoder.encode(batches, meta.clone()).unwrap();
                assert_eq!(body.parts().count(), 1, "a zstd body is one buffer");
                assert_encodes_as_the_stream_writer(&body.contiguous(), batches, meta.clone());
            }
        }
    }

    /// Without compression the body is arrow's own uncompressed stream,
    /// byte for byte, reads back as what went in, and holds the batch's
    /// text where the batch does (not a copy).
    #[test]
    fn an_uncompressed_body_is_the_stream_writers_stream() {
        let mut encoder = IpcEncoder::new(WireCompression::Uncompressed);
        let mut builder = LogBatchBuilder::default();
        let records: Vec<_> = (0..300).map(sample).collect();
        for r in &records {
            builder.append(&r.as_ref());
        }
        let batch = builder.finish(true);
        let meta = HashMap::from([(META_SOURCES.to_string(), "[\"a\"]".to_string())]);
        let body = encoder.encode(std::slice::from_ref(&batch), meta.clone()).unwrap();
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
        let mut written = Vec::new();
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut written, &schema).unwrap();
        writer.write(&batch.clone().with_schema(schema.clone()).unwrap()).unwrap();
        writer.finish().unwrap();
        drop(writer);
        assert_eq!(body, WireBody::from(written.clone()));
        assert_eq!(body.contiguous().as_ref(), written.as_slice());
        let text = batch.column_by_name(col::LINE).unwrap().to_data().buffers()[1].as_ptr();
        assert!(body.parts().any(|p| p.as_ptr() == text), "the text referenced, not copied");
        let compressed = IpcEncoder::default().encode(std::slice::from_ref(&batch), HashMap::new()).unwrap();
        assert!(compressed.len() * 2 < body.len(), "{} against {}", compressed.len(), body.len());
        let (_, batches) = decode_ipc(&body.contiguous(), &wire_schema(), 1000, 1 << 24).unwrap();
        let view = LogBatchView::new(&batches[0]).unwrap();
        assert_eq!((0..view.len()).map(|i| view.record(i)).collect::<Vec<_>>(), records);
    }

    /// A pool keeps a few buffers of bounded size, emptied, and hands the
    /// last one back first.
    #[test]
    fn a_buffer_pool_keeps_a_few_bounded_buffers() {
        let pool = BufferPool::default();
        assert_eq!(pool.take().capacity(), 0);
        pool.give_back(Vec::with_capacity(MAX_POOLED_BUFFER + 1));
        assert_eq!(pool.take().capacity(), 0, "too large to keep");
        let body = vec![7u8; 100];
        let at = body.as_ptr();
        pool.give_back(body);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0), "the same memory, emptied");
        for i in 1..=POOLED_BUFFERS {
            pool.give_back(Vec::with_capacity(100 * i));
        }
        // Full: a smaller body is dropped, a larger one takes the smallest's place.
        pool.give_back(Vec::with_capacity(10));
        pool.give_back(Vec::with_capacity(100_000));
        let mut kept: Vec<usize> = (0..POOLED_BUFFERS).map(|_| pool.take().capacity()).collect();
        assert_eq!(pool.take().capacity(), 0, "no more than {POOLED_BUFFERS} kept");
        kept.sort();
        let mut expected: Vec<usize> = (2..=POOLED_BUFFERS).map(|i| 100 * i).collect();
        expected.push(100_000);
        assert_eq!(kept, expected);
    }

    /// A body done with gives the pool its large buffers nothing else
    /// holds (a batch's text), not its small parts, and nothing a batch
    /// still holds.
    #[test]
    fn a_done_body_hands_its_text_buffer_to_the_pool() {
        let values = "x".repeat(MIN_POOLED_PART + 1000).into_bytes();
        let (at, len) = (values.as_ptr(), values.len() as i32);
        let offsets = arrow_buffer::OffsetBuffer::new(vec![0, len].into());
        let text = StringArray::new(offsets, arrow_buffer::Buffer::from_vec(values), None);
        let batch = RecordBatch::try_from_iter([("line", Arc::new(text) as ArrayRef)]).unwrap();
        let mut encoder = IpcEncoder::new(WireCompression::Uncompressed);
        let pool = BufferPool::default();
        let body = encoder.encode(std::slice::from_ref(&batch), HashMap::new()).unwrap();
        assert!(body.parts().count() > 1);
        body.clone().give_back_to(&pool);
        assert_eq!(pool.kept(), 0, "the batch and the body still hold it");
        drop(batch);
        body.give_back_to(&pool);
        assert_eq!(pool.kept(), 1, "the text alone: headers and offsets are small");
        let kept = pool.take();
        assert_eq!(kept.as_ptr(), at);
    }

    /// After a body over [`KEPT_BODY_BYTES`] the encoder lets its working
    /// buffers go (keeping nothing that large reserved), and encodes alike
    /// after it.
    #[test]
    fn the_encoder_keeps_no_outsized_body_buffer() {
        let mut encoder = IpcEncoder::default();
        let batch_of = |line: &str| {
            let mut builder = LogBatchBuilder::default();
            let mut record = sample(1);
            record.line = line.to_string();
            builder.append(&record.as_ref());
            builder.finish(true)
        };
        let small = batch_of("a short line");
        encoder.encode(std::slice::from_ref(&small), HashMap::new()).unwrap();
        let kept = encoder.framer.as_ref().expect("zstd").reserved();
        assert!(kept > 0 && kept < KEPT_BODY_BYTES, "{kept}");
        // Text zstd shrinks little (random printable bytes, about 6.6 of
        // 8 bits each): a body over the limit once compressed.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: String = (0..KEPT_BODY_BYTES * 3 / 2)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .collect();
        let large = batch_of(&noise);
        let body = encoder.encode(std::slice::from_ref(&large), HashMap::new()).unwrap();
        assert!(body.len() > KEPT_BODY_BYTES, "{}", body.len());
        assert_encodes_as_the_stream_writer(&body.contiguous(), std::slice::from_ref(&large), HashMap::new());
        assert_eq!(
            encoder.framer.as_ref().expect("zstd").reserved(),
            0,
            "nothing kept after the large body"
        );
        let body = encoder.encode(std::slice::from_ref(&small), HashMap::new()).unwrap();
        assert_encodes_as_the_stream_writer(&body.contiguous(), std::slice::from_ref(&small), HashMap::new());
    }

    /// `ts` and `src_offset` sent in halves join to the same values, the
    /// extremes included; halves that make no value are refused.
    #[test]
    fn split_columns_join_and_bad_halves_are_refused() {
        use arrow_array::cast::AsArray;
        use arrow_array::{Int64Array, UInt32Array};
        let ts = [i64::MIN, -1_500_000_001, -1, 0, 1, 1_764_000_000_123_456_789, i64::MAX];
        let offsets = [0u64, 1, u64::from(u32::MAX), 1 << 32, (7 << 32) + 5, u64::MAX - 1, u64::MAX];
        let batch = |seconds: Int64Array, nanos: UInt32Array, low: UInt32Array, high: UInt32Array| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new(col::TS_SECONDS, DataType::Int64, true),
                    Field::new(col::TS_NANOS, DataType::UInt32, true),
                    Field::new(col::SRC_OFFSET_LO, DataType::UInt32, true),
                    Field::new(col::SRC_OFFSET_HI, DataType::UInt32, true),
                ])),
                vec![Arc::new(seconds), Arc::new(nanos), Arc::new(low), Arc::new(high)],
            )
            .unwrap()
        };
        let split = batch(
            ts.iter().map(|t| t.div_euclid(1_000_000_000)).collect(),
            ts.iter().map(|t| t.rem_euclid(1_000_000_000) as u32).collect(),
            offsets.iter().map(|&o| o as u32).collect(),
            offsets.iter().map(|&o| (o >> 32) as u32).collect(),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::TS, ts_type(), false),
            Field::new(col::SRC_OFFSET, DataType::UInt64, true),
        ]));
        let joined = conform(&split, &schema).unwrap();
        let view = |c: usize| joined.column(c).clone();
        assert_eq!(
            view(0)
                .as_primitive::<arrow_array::types::TimestampNanosecondType>()
                .values()
                .to_vec(),
            ts
        );
        assert_eq!(view(1).as_primitive::<arrow_array::types::UInt64Type>().values().to_vec(), offsets);
        // Nanoseconds past a second; seconds past the range; a null.
        for (seconds, nanos) in [(0, 1_000_000_000), (i64::MAX / 1_000_000_000 + 1, 0)] {
            let bad = batch(vec![seconds].into(), vec![nanos].into(), vec![0].into(), vec![0].into());
            assert!(conform(&bad, &schema).unwrap_err().to_string().contains("no nanosecond timestamp"));
        }
        let null = batch(vec![None].into(), vec![Some(0)].into(), vec![0].into(), vec![0].into());
        assert!(conform(&null, &schema).unwrap_err().to_string().contains("nulls"));
        // One half alone.
        let half = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(col::TS_SECONDS, DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(conform(&half, &schema).unwrap_err().to_string().contains("one is missing"));
    }

    #[test]
    fn conform_fills_missing_nullable_and_rejects_wrong_types() {
        let mut builder = LogBatchBuilder::default();
        builder.append(&sample(1).as_ref());
        let storage = builder.finish(false);
        let wire = conform(&storage, &wire_schema()).unwrap();
        assert_eq!(wire.num_columns(), wire_schema().fields().len());
        assert!(LogBatchView::new(&wire).unwrap().record(0).source.is_none());
        let bad = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(col::TS, DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec!["x"]))],
        )
        .unwrap();
        let err = conform(&bad, &storage_schema()).unwrap_err().to_string();
        assert!(err.contains("\"ts\""), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_ipc(b"not arrow at all", &wire_schema(), 10, 1 << 20).is_err());
        assert!(decode_ipc(&[], &wire_schema(), 10, 1 << 20).is_err());
    }
}
