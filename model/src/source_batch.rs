//! The collector's wire batch builder: what is the same for every line of a
//! tailed file (namespace, pod, container, node, pod labels, run, rank, pod
//! uid, restart) is written once per source as a dictionary entry, and each
//! row carries only a key into it, its own time, stream, level, event,
//! fields, flags, text and source offset.
//!
//! Per-row copies of those strings had been two thirds of an uncompressed
//! wire batch (≈ 170 bytes per row beside ≈ 180 bytes of text), and copying
//! and compressing them was a third of the collector's time. The dictionary
//! columns share one key buffer. The time and the source offset go in
//! halves (`ts_s` + `ts_ns`, `src_offset_lo` + `src_offset_hi`): each half
//! compresses several times faster than the 64-bit whole, which had been
//! about 8 % of the collector's time (a throwaway build that sent zeros
//! there; BENCHMARKS.md, sixteenth run). [`crate::batch::decode_ipc`] expands
//! dictionary columns back to plain ones and joins the halves, so the
//! indexer, its WAL and everything after see the plain wire schema either
//! way.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{BooleanBuilder, StringBuilder, TimestampNanosecondBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt8Type};
use arrow_array::{
    ArrayRef, DictionaryArray, Int64Array, RecordBatch, RecordBatchOptions, StringArray, TimestampNanosecondArray, UInt32Array, UInt8Array,
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::batch::{col, labels_json, wire_schema};
use crate::labels::LabelSet;
use crate::record::Level;

/// A string column from the bytes of the `&str`s appended to `values`
/// and `offsets` (0, then the end of `values` after each row), without
/// checking the UTF-8 again (checking 2 MiB per batch would cost what
/// recycling the text buffer saves).
fn appended_strings(values: Vec<u8>, offsets: Vec<i32>, nulls: Option<NullBuffer>) -> StringArray {
    debug_assert!(offsets.first() == Some(&0) && offsets.last().is_some_and(|&end| end as usize == values.len()));
    // SAFETY: the offsets start at 0 and rise to the end of `values`, one
    // after each appended `&str` (both callers push exactly that), so every
    // offset is in bounds and every row is whole UTF-8.
    unsafe {
        StringArray::new_unchecked(
            OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets)),
            Buffer::from_vec(values),
            nulls,
        )
    }
}

/// A text column whose rows are mostly null (a line's event, its extra
/// fields): a row without a value costs nothing; the offsets and the
/// validity bitmap are made once, when the batch is finished, from the
/// few rows that hold one (an Arrow builder's `append_null` per row had
/// been 1.3 % of the collector's instructions, an offset per row 2.2 % of
/// tail + parse + batch's).
#[derive(Debug)]
struct SparseText {
    values: Vec<u8>,
    /// Each row that holds a value, rising, with where its value ends in
    /// `values`: a row without one costs nothing until `finish`.
    valid: Vec<(u32, i32)>,
}

impl SparseText {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            valid: Vec::new(),
        }
    }

    /// Sets `row`'s value (rows rising; those never set are null).
    fn set(&mut self, row: usize, value: &str) {
        debug_assert!(self.valid.last().is_none_or(|&(last, _)| (last as usize) < row), "rows rise");
        let at = u32::try_from(row).expect("a batch holds under 2^32 rows");
        self.values.extend_from_slice(value.as_bytes());
        let end = i32::try_from(self.values.len()).expect("a batch holds under 2 GiB of events and fields");
        self.valid.push((at, end));
    }

    /// The column of `rows` rows as an Arrow builder would finish it (no
    /// validity bitmap where every row holds a value), and the builder
    /// emptied.
    fn finish(&mut self, rows: usize) -> StringArray {
        let nulls = (self.valid.len() < rows).then(|| {
            let mut bits = BooleanBufferBuilder::new(rows);
            bits.append_n(rows, false);
            for &(row, _) in &self.valid {
                bits.set_bit(row as usize, true);
            }
            NullBuffer::new(bits.finish())
        });
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let mut end = 0;
        for &(row, value_end) in &self.valid {
            // The rows before `row` since the last value are empty.
            offsets.resize(row as usize + 1, end);
            end = value_end;
            offsets.push(end);
        }
        offsets.resize(rows + 1, end);
        let values = std::mem::take(&mut self.values);
        self.valid.clear();
        appended_strings(values, offsets, nulls)
    }
}

/// The values shared by every row of one source (a tailed file of one
/// container, with the pod metadata known when it was registered).
#[derive(Clone, Copy, Debug)]
pub struct SourceRef<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub node: &'a str,
    pub labels: &'a LabelSet,
    pub run: Option<&'a str>,
    pub rank: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub restart: Option<u32>,
}

/// The values of one row, beside its source.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub ts: i64,
    /// `stdout`, `stderr` or empty: a `'static` text, so the builder knows
    /// it by its address (a freed and reused address could hold another).
    pub stream: &'static str,
    pub level: Level,
    pub ml_event: Option<&'a str>,
    pub fields: &'a LabelSet,
    pub truncated: bool,
    pub parse_error: bool,
    pub line: &'a str,
    /// Index into the batch's source keys, and the byte offset in it.
    pub source: (u32, u64),
}

/// Levels in key order of the `level` dictionary.
const LEVELS: [Level; 7] = [
    Level::Critical,
    Level::Error,
    Level::Warn,
    Level::Info,
    Level::Debug,
    Level::Trace,
    Level::Unknown,
];

fn level_key(level: Level) -> u8 {
    match level {
        Level::Critical => 0,
        Level::Error => 1,
        Level::Warn => 2,
        Level::Info => 3,
        Level::Debug => 4,
        Level::Trace => 5,
        Level::Unknown => 6,
    }
}

/// Columns written per source, in wire schema order.
const PER_SOURCE: [&str; 9] = [
    col::NAMESPACE,
    col::POD,
    col::CONTAINER,
    col::NODE,
    col::LABELS,
    col::RUN,
    col::RANK,
    col::POD_UID,
    col::RESTART,
];

/// Most distinct `stream` values one batch holds (kubelet writes two).
const MAX_STREAMS: usize = 255;

/// The schema of batches this builder finishes: the wire schema with the
/// per-source columns, `level` and `stream` dictionary-encoded.
pub fn source_wire_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = wire_schema()
                .fields()
                .iter()
                .flat_map(|f| match f.name().as_str() {
                    // Sent in halves that compress several times faster
                    // (`crate::batch::conform` joins them).
                    col::TS => vec![
                        Field::new(col::TS_SECONDS, DataType::Int64, false),
                        Field::new(col::TS_NANOS, DataType::UInt32, false),
                    ],
                    col::SRC_OFFSET => vec![
                        Field::new(col::SRC_OFFSET_LO, DataType::UInt32, true),
                        Field::new(col::SRC_OFFSET_HI, DataType::UInt32, true),
                    ],
                    _ => vec![f.as_ref().clone()],
                })
                .map(|f| {
                    let key = if PER_SOURCE.contains(&f.name().as_str()) {
                        Some(DataType::UInt32)
                    } else if f.name() == col::LEVEL || f.name() == col::STREAM {
                        Some(DataType::UInt8)
                    } else {
                        None
                    };
                    match key {
                        Some(key) => Field::new(
                            f.name(),
                            DataType::Dictionary(Box::new(key), Box::new(f.data_type().clone())),
                            f.is_nullable(),
                        ),
                        None => f,
                    }
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Builds wire batches with per-source dictionaries.
pub struct SourceBatchBuilder {
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    node: StringBuilder,
    labels: StringBuilder,
    run: StringBuilder,
    rank: StringBuilder,
    pod_uid: StringBuilder,
    restart: UInt32Builder,
    sources: u32,
    keys: Vec<u32>,
    ts: TimestampNanosecondBuilder,
    streams: Vec<String>,
    /// The address and length of the last row's stream text, and its key.
    last_stream: Option<(usize, usize, u8)>,
    stream: Vec<u8>,
    level: Vec<u8>,
    ml_event: SparseText,
    fields: SparseText,
    truncated: BooleanBuilder,
    parse_error: BooleanBuilder,
    /// The text column's values and offsets, kept apart from an Arrow
    /// builder so [`Self::recycle`] can take the values buffer back.
    line_values: Vec<u8>,
    line_offsets: Vec<i32>,
    src: Vec<u32>,
    src_offset: Vec<u64>,
    line_bytes: usize,
    /// Rows and text bytes the builder was made for: the least a batch
    /// after a finish is sized for.
    capacity: (usize, usize),
}

impl SourceBatchBuilder {
    /// A builder sized for `rows` rows holding about `line_bytes` of text.
    pub fn with_capacity(rows: usize, line_bytes: usize) -> Self {
        Self {
            namespace: StringBuilder::new(),
            pod: StringBuilder::new(),
            container: StringBuilder::new(),
            node: StringBuilder::new(),
            labels: StringBuilder::new(),
            run: StringBuilder::new(),
            rank: StringBuilder::new(),
            pod_uid: StringBuilder::new(),
            restart: UInt32Builder::new(),
            sources: 0,
            keys: Vec::with_capacity(rows),
            ts: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            streams: Vec::new(),
            last_stream: None,
            stream: Vec::with_capacity(rows),
            level: Vec::with_capacity(rows),
            ml_event: SparseText::new(),
            fields: SparseText::new(),
            truncated: BooleanBuilder::with_capacity(rows),
            parse_error: BooleanBuilder::with_capacity(rows),
            line_values: Vec::with_capacity(line_bytes),
            line_offsets: {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                offsets
            },
            src: Vec::with_capacity(rows),
            src_offset: Vec::with_capacity(rows),
            line_bytes: 0,
            capacity: (rows, line_bytes),
        }
    }

    /// Registers a source for the rows that follow; returns its key.
    pub fn source(&mut self, s: &SourceRef<'_>) -> u32 {
        self.namespace.append_value(s.namespace);
        self.pod.append_value(s.pod);
        self.container.append_value(s.container);
        self.node.append_value(s.node);
        self.labels.append_option(labels_json(s.labels));
        self.run.append_option(s.run);
        self.rank.append_option(s.rank);
        self.pod_uid.append_option(s.pod_uid);
        self.restart.append_option(s.restart);
        self.sources += 1;
        self.sources - 1
    }

    /// Appends one row of the source `key` (from [`Self::source`] since the
    /// last finish).
    pub fn append(&mut self, key: u32, r: &RowRef<'_>) {
        debug_assert!(key < self.sources, "source key from this batch");
        self.keys.push(key);
        self.ts.append_value(r.ts);
        // The last row's stream text, known by its address first: the
        // collector's are `&'static str`s, and comparing the texts of
        // every row had been 3 % of tail + parse + batch.
        let stream = match self.last_stream {
            Some((at, len, key)) if at == r.stream.as_ptr() as usize && len == r.stream.len() => key,
            _ => {
                let key = match self.streams.iter().position(|s| s == r.stream) {
                    Some(i) => i as u8,
                    None if self.streams.len() < MAX_STREAMS => {
                        self.streams.push(r.stream.to_string());
                        (self.streams.len() - 1) as u8
                    }
                    // Not reachable from kubelet files; keeps the key in range.
                    None => 0,
                };
                self.last_stream = Some((r.stream.as_ptr() as usize, r.stream.len(), key));
                key
            }
        };
        self.stream.push(stream);
        self.level.push(level_key(r.level));
        let row = self.keys.len() - 1;
        if let Some(event) = r.ml_event {
            self.ml_event.set(row, event);
        }
        if let Some(fields) = labels_json(r.fields) {
            self.fields.set(row, &fields);
        }
        self.truncated.append_value(r.truncated);
        self.parse_error.append_value(r.parse_error);
        self.line_values.extend_from_slice(r.line.as_bytes());
        let end = i32::try_from(self.line_values.len())
            .expect("a batch holds under 2 GiB of text (batch_max_bytes is at most 1 GiB, a line at most 256 MiB)");
        self.line_offsets.push(end);
        self.src.push(r.source.0);
        self.src_offset.push(r.source.1);
        self.line_bytes += r.line.len();
    }

    /// Rows appended since the last finish.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing was appended since the last finish.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes of line text appended since the last finish.
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// The text column of the rows appended so far.
    fn finish_lines(&mut self) -> StringArray {
        let values = std::mem::take(&mut self.line_values);
        let offsets = std::mem::replace(&mut self.line_offsets, vec![0]);
        appended_strings(values, offsets, None)
    }

    /// Takes back the text buffer of a batch from [`Self::finish`] that the
    /// caller is done with (encoded), so the next batch writes into pages
    /// already resident. A fresh buffer of a few MiB is mapped by glibc and
    /// every page of it faulted in as the batch fills: with 2 MiB batches,
    /// about 200 thousand of the collector's 316 thousand page faults per
    /// GB of logs, and 5 % of its time. Does nothing where the buffer is
    /// still shared, or more than twice what the next batch is sized for
    /// (one outsized batch must not stay resident for good).
    pub fn recycle(&mut self, batch: RecordBatch) {
        let Some(index) = batch.schema().index_of(col::LINE).ok() else {
            return;
        };
        let Some(lines) = batch.column(index).as_string_opt::<i32>().cloned() else {
            return;
        };
        drop(batch);
        let (_, values, _) = lines.into_parts();
        if let Ok(values) = values.into_vec::<u8>() {
            self.reuse_text_buffer(values);
        }
    }

    /// Writes the next batch's text into `buffer` (memory already paged
    /// in: a shipped batch's text, see [`Self::recycle`]) unless the builder
    /// holds text or `buffer` is over twice what the next batch is sized
    /// for (a refused one is dropped: kept anywhere, an outsized batch's
    /// buffer would stay resident for good). True where it is taken.
    pub fn reuse_text_buffer(&mut self, mut buffer: Vec<u8>) -> bool {
        if !self.line_values.is_empty() || buffer.capacity() > self.line_values.capacity().saturating_mul(2) {
            return false;
        }
        // Sized as `finish` sized the fresh one, which is dropped untouched
        // (mapped, never resident).
        buffer.clear();
        buffer.reserve(self.line_values.capacity());
        self.line_values = buffer;
        true
    }

    /// Finishes the rows appended so far into a batch of
    /// [`source_wire_schema`] and resets the builder (sources included).
    pub fn finish(&mut self) -> RecordBatch {
        let rows = self.keys.len();
        let keys = UInt32Array::from(std::mem::take(&mut self.keys));
        // Every key came from `source()`: checked here once, where
        // `DictionaryArray::try_new` checked all of them for each of the
        // nine columns (0.8 % of the collector's instructions).
        assert!(keys.values().iter().all(|&key| key < self.sources), "keys come from source()");
        let per_source = |values: ArrayRef| -> ArrayRef {
            assert_eq!(values.len(), self.sources as usize, "one value per source");
            // SAFETY: what `try_new` checks, each key below `values.len()`
            // (asserted above; `UInt32Array::from(Vec)` has no nulls).
            Arc::new(unsafe { DictionaryArray::<UInt32Type>::new_unchecked(keys.clone(), values) })
        };
        let small = |keys: Vec<u8>, values: ArrayRef| -> ArrayRef {
            Arc::new(DictionaryArray::<UInt8Type>::try_new(UInt8Array::from(keys), values).expect("keys index the values"))
        };
        if self.streams.is_empty() {
            self.streams.push(String::new());
        }
        let streams: ArrayRef = Arc::new(StringArray::from_iter_values(self.streams.drain(..)));
        let levels: ArrayRef = Arc::new(StringArray::from_iter_values(LEVELS.iter().map(|l| l.as_str())));
        // The indexer stamps ingest times; the wire carries zeros.
        let ingest_ts = TimestampNanosecondArray::from(vec![0i64; rows]).with_timezone("UTC");
        let ts = self.ts.finish();
        let seconds = Int64Array::from_iter_values(ts.values().iter().map(|t| t.div_euclid(1_000_000_000)));
        let nanos = UInt32Array::from_iter_values(ts.values().iter().map(|t| t.rem_euclid(1_000_000_000) as u32));
        let offsets = std::mem::take(&mut self.src_offset);
        let low = UInt32Array::from_iter_values(offsets.iter().map(|&o| o as u32));
        let high = UInt32Array::from_iter_values(offsets.iter().map(|&o| (o >> 32) as u32));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(seconds),
            Arc::new(nanos),
            Arc::new(ingest_ts),
            per_source(Arc::new(self.namespace.finish())),
            per_source(Arc::new(self.pod.finish())),
            per_source(Arc::new(self.container.finish())),
            per_source(Arc::new(self.node.finish())),
            small(std::mem::take(&mut self.stream), streams),
            per_source(Arc::new(self.labels.finish())),
            per_source(Arc::new(self.run.finish())),
            per_source(Arc::new(self.rank.finish())),
            per_source(Arc::new(self.pod_uid.finish())),
            per_source(Arc::new(self.restart.finish())),
            small(std::mem::take(&mut self.level), levels),
            Arc::new(self.ml_event.finish(rows)),
            Arc::new(self.fields.finish(rows)),
            Arc::new(self.truncated.finish()),
            Arc::new(self.parse_error.finish()),
            Arc::new(self.finish_lines()),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.src))),
            Arc::new(low),
            Arc::new(high),
        ];
        // The next batch is sized like this one, with room to spare, and
        // never below what the builder was made for: growing a buffer by
        // doubling copies it, and a batch cut at a byte limit overshoots it
        // by its last line (a 2 MiB text buffer was copied into a 4 MiB one
        // at the end of every batch: about 1 % of the collector). With
        // glibc, buffers this large are mapped and their untouched pages
        // not resident.
        let (made_rows, made_bytes) = self.capacity;
        let next_rows = (rows + rows / 8 + 16).max(made_rows);
        let next_bytes = (self.line_bytes + self.line_bytes / 8 + 4096).max(made_bytes);
        *self = Self::with_capacity(next_rows, next_bytes);
        self.capacity = (made_rows, made_bytes);
        RecordBatch::try_new_with_options(source_wire_schema(), columns, &RecordBatchOptions::new().with_row_count(Some(rows)))
            .expect("builder columns match the schema by construction")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow_array::cast::AsArray;
    use arrow_array::Array;

    use super::*;
    use crate::batch::{decode_ipc, encode_ipc, LogBatchBuilder, LogBatchView};
    use crate::LogRecord;
    use crate::ModelError;

    fn records() -> Vec<LogRecord> {
        let pod_labels = LabelSet::from_pairs([("team", "nlp")]);
        (0..6u32)
            .map(|i| LogRecord {
                ts: 1_000 + i64::from(i),
                namespace: "ml".into(),
                pod: format!("train-{}", i % 2),
                container: "main".into(),
                node: "gpu-1".into(),
                stream: if i % 3 == 0 { "stderr" } else { "stdout" }.into(),
                labels: if i % 2 == 0 { pod_labels.clone() } else { LabelSet::new() },
                run: (i % 2 == 0).then(|| "run-a".to_string()),
                rank: (i % 2 == 0).then(|| "0".to_string()),
                pod_uid: Some(format!("uid-{}", i % 2)),
                restart: Some(i % 2),
                level: [Level::Info, Level::Error, Level::Unknown][i as usize % 3],
                ml_event: (i == 4).then(|| "cuda_oom".to_string()),
                fields: if i == 4 {
                    LabelSet::from_pairs([("xid", "79")])
                } else {
                    LabelSet::new()
                },
                truncated: i == 5,
                parse_error: i == 3,
                line: format!("line {i} ünïcode"),
                source: Some((i % 2, 100 * u64::from(i))),
                ..Default::default()
            })
            .collect()
    }

    fn source_batch(records: &[LogRecord]) -> RecordBatch {
        fill(&mut SourceBatchBuilder::with_capacity(4, 64), records)
    }

    /// Appends `records` (of two sources) to `builder` and finishes a batch.
    fn fill(builder: &mut SourceBatchBuilder, records: &[LogRecord]) -> RecordBatch {
        let keys: Vec<u32> = records[..2]
            .iter()
            .map(|r| {
                builder.source(&SourceRef {
                    namespace: &r.namespace,
                    pod: &r.pod,
                    container: &r.container,
                    node: &r.node,
                    labels: &r.labels,
                    run: r.run.as_deref(),
                    rank: r.rank.as_deref(),
                    pod_uid: r.pod_uid.as_deref(),
                    restart: r.restart,
                })
            })
            .collect();
        for (i, r) in records.iter().enumerate() {
            builder.append(
                keys[i % 2],
                &RowRef {
                    ts: r.ts,
                    stream: Box::leak(r.stream.clone().into_boxed_str()),
                    level: r.level,
                    ml_event: r.ml_event.as_deref(),
                    fields: &r.fields,
                    truncated: r.truncated,
                    parse_error: r.parse_error,
                    line: &r.line,
                    source: r.source.expect("set"),
                },
            );
        }
        assert_eq!(builder.len(), records.len());
        builder.finish()
    }

    /// The sparse column is the array an Arrow builder makes from the same
    /// rows: all null, all values, mixed, empty, and again after a finish.
    #[test]
    fn sparse_text_finishes_as_a_string_builder_does() {
        let cases: [&[Option<&str>]; 5] = [
            &[],
            &[None, None, None],
            &[Some("cuda_oom"), Some(""), Some("nan_loss")],
            &[
                None,
                Some("gpu_xid"),
                None,
                None,
                Some("{\"a\":\"b\"}"),
                None,
                None,
                None,
                None,
                Some("x"),
            ],
            &[Some("é"), None],
        ];
        let mut sparse = SparseText::new();
        for rows in cases {
            let mut builder = StringBuilder::new();
            for (i, row) in rows.iter().enumerate() {
                if let Some(value) = row {
                    sparse.set(i, value);
                }
                builder.append_option(*row);
            }
            let (got, want) = (sparse.finish(rows.len()), builder.finish());
            assert_eq!(got, want, "{rows:?}");
            assert_eq!(got.nulls(), want.nulls(), "{rows:?}");
        }
    }

    #[test]
    fn decodes_to_the_same_rows_as_plain_columns() {
        let records = records();
        let batch = source_batch(&records);
        assert!(matches!(
            batch.schema().field_with_name(col::POD).unwrap().data_type(),
            DataType::Dictionary(..)
        ));
        // Two entries for six rows: the per-source values are not repeated.
        assert_eq!(batch.column_by_name(col::POD).unwrap().as_any_dictionary().values().len(), 2);
        let body = encode_ipc(&[batch], HashMap::new()).unwrap();
        let (_, decoded) = decode_ipc(&body, &wire_schema(), 100, 1 << 20).unwrap();
        assert_eq!(decoded[0].schema(), wire_schema());
        let view = LogBatchView::new(&decoded[0]).unwrap();
        let back: Vec<LogRecord> = (0..view.len()).map(|i| view.record(i)).collect();
        assert_eq!(back, records);

        let mut plain = LogBatchBuilder::default();
        for r in &records {
            plain.append(&r.as_ref());
        }
        let plain_body = encode_ipc(&[plain.finish(true)], HashMap::new()).unwrap();
        let (_, plain) = decode_ipc(&plain_body, &wire_schema(), 100, 1 << 20).unwrap();
        assert_eq!(plain, decoded);
        // The builder is reusable after finish.
        let again = source_batch(&records);
        assert_eq!(again.num_rows(), records.len());
    }

    /// Bodies with dictionary columns (a source batch, a metric batch)
    /// encode as arrow's stream writer writes them (but for the compressed
    /// bytes), one encoder for all.
    #[test]
    fn dictionary_bodies_encode_as_the_stream_writer_writes_them() {
        let mut encoder = crate::batch::IpcEncoder::default();
        let mut builder = SourceBatchBuilder::with_capacity(4, 64);
        for round in 0..3u32 {
            let records: Vec<LogRecord> = (0..3).flat_map(|_| records()).collect();
            let batch = fill(&mut builder, &records);
            let meta = HashMap::from([("round".to_string(), round.to_string())]);
            let body = encoder.encode(std::slice::from_ref(&batch), meta.clone()).unwrap();
            crate::batch::assert_encodes_as_the_stream_writer(&body.contiguous(), std::slice::from_ref(&batch), meta);
            let mut samples = crate::metric::MetricBatchBuilder::dictionary();
            for i in 0..20 + round {
                samples.append(&format!("{{__name__=\"m\",i=\"{}\"}}", i % 3), i64::from(i), f64::from(i) / 3.0);
            }
            let samples = samples.finish();
            assert!(samples
                .columns()
                .iter()
                .any(|c| matches!(c.data_type(), arrow_schema::DataType::Dictionary(..))));
            let body = encoder.encode(std::slice::from_ref(&samples), HashMap::new()).unwrap();
            crate::batch::assert_encodes_as_the_stream_writer(&body.contiguous(), std::slice::from_ref(&samples), HashMap::new());
        }
    }

    #[test]
    fn a_recycled_text_buffer_holds_the_next_batch() {
        let records = records();
        let lines_of = |batch: &RecordBatch| -> (usize, Vec<String>) {
            let lines = batch.column_by_name(col::LINE).unwrap().as_string::<i32>();
            (
                lines.values().as_ptr() as usize,
                lines.iter().map(|l| l.unwrap().to_string()).collect(),
            )
        };
        let want: Vec<String> = records.iter().map(|r| r.line.clone()).collect();
        let mut builder = SourceBatchBuilder::with_capacity(4, 8192);
        let first = fill(&mut builder, &records);
        let (first_at, _) = lines_of(&first);
        builder.recycle(first);
        let second = fill(&mut builder, &records);
        let (second_at, lines) = lines_of(&second);
        assert_eq!(second_at, first_at, "the second batch's text is in the first one's buffer");
        assert_eq!(lines, want);
        // A buffer the caller still shares is left to it.
        let kept = second.clone();
        builder.recycle(second);
        let third = fill(&mut builder, &records);
        let (third_at, lines) = lines_of(&third);
        assert_ne!(third_at, second_at);
        assert_eq!(lines, want.clone());
        assert_eq!(lines_of(&kept), (second_at, want.clone()));
        // An outsized batch's buffer serves the batch after it (sized like
        // it) and is then dropped, not kept resident for good.
        builder.recycle(third);
        let mut big = records.clone();
        big[0].line = "x".repeat(1 << 20);
        let outsized = fill(&mut builder, &big);
        builder.recycle(outsized);
        let after = fill(&mut builder, &records);
        let (after_at, lines) = lines_of(&after);
        assert_eq!(lines, want);
        builder.recycle(after);
        let (last_at, _) = lines_of(&fill(&mut builder, &records));
        assert_ne!(last_at, after_at, "the outsized buffer was kept");
        // A shipped batch's buffer handed in: taken while the builder holds
        // no text, unless over twice the size it wants.
        let wanted = builder.line_values.capacity();
        assert!(!builder.reuse_text_buffer(Vec::with_capacity(wanted * 2 + 1)));
        let spare: Vec<u8> = Vec::with_capacity(wanted * 2);
        let spare_at = spare.as_ptr() as usize;
        assert!(builder.reuse_text_buffer(spare));
        assert_eq!(lines_of(&fill(&mut builder, &records)), (spare_at, want.clone()));
        let key = plain_source(&mut builder, "ns");
        plain_row(&mut builder, key, "stdout", 0);
        assert!(!builder.reuse_text_buffer(Vec::with_capacity(wanted)), "the row's text stays");
        let lines = builder.finish();
        assert_eq!(lines_of(&lines).1, ["l"]);
    }

    /// A source in `namespace` with nothing else set.
    fn plain_source(builder: &mut SourceBatchBuilder, namespace: &str) -> u32 {
        builder.source(&SourceRef {
            namespace,
            pod: "p",
            container: "c",
            node: "n",
            labels: &LabelSet::new(),
            run: None,
            rank: None,
            pod_uid: None,
            restart: None,
        })
    }

    /// A one-letter row of `stream` at offset `at` of source `key`.
    fn plain_row(builder: &mut SourceBatchBuilder, key: u32, stream: &'static str, at: u64) {
        builder.append(
            key,
            &RowRef {
                ts: 0,
                stream,
                level: Level::Info,
                ml_event: None,
                fields: &LabelSet::new(),
                truncated: false,
                parse_error: false,
                line: "l",
                source: (0, at),
            },
        );
    }

    #[test]
    fn expansion_counts_against_the_decoded_byte_limit() {
        // One 64 KiB value behind 2,000 keys: a small body that expands to 128 MiB.
        let big = "x".repeat(64 << 10);
        let mut builder = SourceBatchBuilder::with_capacity(2_000, 2_000);
        let key = plain_source(&mut builder, &big);
        for i in 0..2_000u64 {
            plain_row(&mut builder, key, "stdout", i);
        }
        let body = encode_ipc(&[builder.finish()], HashMap::new()).unwrap();
        assert!(body.len() < 1 << 20, "{} bytes", body.len());
        let err = decode_ipc(&body, &wire_schema(), 10_000, 64 << 20).unwrap_err();
        assert!(matches!(&err, ModelError::TooLarge(m) if m.contains("\"namespace\"")), "{err}");
        assert!(decode_ipc(&body, &wire_schema(), 10_000, 256 << 20).is_ok());
    }

    /// Each row keeps its own stream across batches: the builder's memo of
    /// the last stream text goes with the batch (the builder starts afresh
    /// at `finish`, its keys too), so `stderr`, key 1 in one batch, is not
    /// given key 1 in the next, which it opens.
    #[test]
    fn each_row_keeps_its_stream_from_batch_to_batch() {
        let mut builder = SourceBatchBuilder::with_capacity(16, 1024);
        let mut batch_of = |streams: &[&'static str]| {
            let key = plain_source(&mut builder, "ml");
            for (i, stream) in streams.iter().enumerate() {
                plain_row(&mut builder, key, stream, i as u64);
            }
            let body = encode_ipc(&[builder.finish()], HashMap::new()).unwrap();
            let (_, batches) = decode_ipc(&body, &wire_schema(), 100, 1 << 20).unwrap();
            let view = crate::LogBatchView::new(&batches[0]).unwrap();
            (0..view.len()).map(|row| view.record(row).stream).collect::<Vec<String>>()
        };
        // One address for each text, as the collector's `Stream::as_str`.
        static OUT: &str = "stdout";
        static ERR: &str = "stderr";
        assert_eq!(batch_of(&[OUT, ERR]), ["stdout", "stderr"]);
        assert_eq!(batch_of(&[ERR, OUT, OUT]), ["stderr", "stdout", "stdout"]);
        assert_eq!(batch_of(&[OUT]), ["stdout"]);
    }

    #[test]
    fn a_key_past_the_values_is_refused() {
        let keys = UInt32Array::from(vec![0, 5]);
        let values: ArrayRef = Arc::new(StringArray::from(vec!["ml"]));
        // SAFETY: deliberately invalid, as a hostile body could be.
        let bad = unsafe { DictionaryArray::<UInt32Type>::new_unchecked(keys, values) };
        let schema = Arc::new(Schema::new(vec![Field::new(
            col::NAMESPACE,
            DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(bad)]).unwrap();
        let target = Arc::new(Schema::new(vec![Field::new(col::NAMESPACE, DataType::Utf8, false)]));
        let err = crate::batch::conform(&batch, &target).unwrap_err().to_string();
        assert!(err.contains("key 5"), "{err}");
        assert_eq!(batch.column(0).null_count(), 0);
    }
}
