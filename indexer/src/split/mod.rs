//! Splits: the immutable unit of storage. A split is one Parquet file (zstd,
//! rows sorted by stream then time, page index on) and, beside it, a tantivy
//! index with one segment whose doc ids are the Parquet row numbers.
//!
//! Paths are Hive-style so other engines read the data directly:
//! `splits/logs/tenant=<t>/date=<YYYY-MM-DD>/hour=<HH>/<id>.parquet` and the
//! index in `<id>.tantivy/` next to it. Files are written under temporary
//! names and renamed into place; a split exists for readers only once the
//! catalog lists it.

pub mod index;
pub mod metrics;
pub mod numbers;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};
use arrow_select::concat::concat_batches;
use arrow_select::interleave::interleave_record_batch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rustc_hash::FxHashMap;
use weft_model::batch::{col, storage_schema};
use weft_model::LogBatchView;

use crate::catalog::{RowGroupCount, SplitMeta};
use crate::IndexerError;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexerError + '_ {
    move |source| IndexerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A new split id: creation time then randomness, so ids sort by age.
pub fn new_split_id() -> String {
    format!("{:016x}-{:08x}", weft_model::time::now_nanos(), fastrand::u32(..))
}

/// The stream key of a row: the well-known stream label columns and the
/// extra labels, in sort order.
fn stream_key<'a>(view: &'a LogBatchView<'_>, row: usize) -> [&'a str; 8] {
    let opt = |a: &'a arrow_array::StringArray| if a.is_valid(row) { a.value(row) } else { "" };
    [
        view.namespace.value(row),
        view.pod.value(row),
        view.container.value(row),
        view.node.value(row),
        view.stream.value(row),
        opt(view.run),
        opt(view.rank),
        opt(view.labels),
    ]
}

/// Rows sorted by stream then time.
pub struct SortedRows {
    pub rows: RecordBatch,
    /// The canonical label set of each distinct stream, in order.
    pub streams: Vec<String>,
    /// The first row of each stream.
    pub starts: Vec<u32>,
}

/// Sorts the rows of `batches` (storage schema) by stream then time, in
/// one copy. Equal keys keep their order of arrival.
pub fn sort_by_stream_then_time(batches: &[RecordBatch]) -> Result<SortedRows, IndexerError> {
    let views = batches.iter().map(LogBatchView::new).collect::<Result<Vec<_>, _>>()?;
    let total: usize = views.iter().map(LogBatchView::len).sum();
    if u32::try_from(total).is_err() {
        // Doc ids and stream starts are u32.
        return Err(IndexerError::Internal(format!(
            "a split of {total} rows is more than a split can hold"
        )));
    }
    let mut streams: FxHashMap<[&str; 8], u32> = FxHashMap::default();
    let mut first_row: Vec<(usize, usize)> = Vec::new();
    let mut row_stream = Vec::with_capacity(total);
    let mut ts = Vec::with_capacity(total);
    for (b, view) in views.iter().enumerate() {
        // Rows of one file come together in a batch, their stdout and
        // stderr interleaved: the streams of the last two rows that
        // differed first, the map (hashing 8 strings) after.
        let mut recent: [Option<([&str; 8], u32)>; 2] = [None, None];
        for row in 0..view.len() {
            let key = stream_key(view, row);
            let id = match recent {
                [Some((last, id)), _] if last == key => id,
                [_, Some((before, id))] if before == key => {
                    recent.swap(0, 1);
                    id
                }
                _ => {
                    let next = streams.len() as u32;
                    let id = *streams.entry(key).or_insert_with(|| {
                        first_row.push((b, row));
                        next
                    });
                    recent = [Some((key, id)), recent[0]];
                    id
                }
            };
            row_stream.push(id);
        }
        ts.extend_from_slice(view.ts.values());
    }
    let mut keys: Vec<([&str; 8], u32)> = streams.into_iter().collect();
    keys.sort();
    let mut rank = vec![0u32; keys.len()];
    for (position, (_, id)) in keys.iter().enumerate() {
        rank[*id as usize] = position as u32;
    }
    // Rows by stream (a counting sort: each stream's rows in their order of
    // arrival), then each stream's rows by time where they did not arrive
    // in time order (a stable sort: equal times keep their order of
    // arrival). A file's lines arrive in time order, so most streams are
    // left as they came: one pass where a sort of all rows compared each
    // row's stream and time about log2(rows) times.
    let mut starts = vec![0usize; keys.len() + 1];
    for &stream in &row_stream {
        starts[rank[stream as usize] as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; total];
    for (row, &stream) in row_stream.iter().enumerate() {
        let at = &mut next[rank[stream as usize] as usize];
        order[*at] = row as u32;
        *at += 1;
    }
    for bounds in starts.windows(2) {
        let rows = &mut order[bounds[0]..bounds[1]];
        if !rows.windows(2).all(|w| ts[w[0] as usize] <= ts[w[1] as usize]) {
            rows.sort_by_key(|&row| ts[row as usize]);
        }
    }
    drop((row_stream, ts, next));
    let labels = keys
        .iter()
        .map(|(_, id)| {
            let (b, row) = first_row[*id as usize];
            views[b].stream_labels(row).to_string()
        })
        .collect();
    let rows = gather(&storage_schema(), batches, &order).map_err(|e| IndexerError::Internal(e.to_string()))?;
    starts.truncate(keys.len());
    Ok(SortedRows {
        rows,
        streams: labels,
        starts: starts.into_iter().map(|start| start as u32).collect(),
    })
}

/// The rows `order` (numbered across `batches`, in turn) of `batches`, in
/// one copy. Rows mostly come in long runs (a wire batch holds a file's
/// lines in order): runs are sliced and the slices concatenated, a few
/// memcpys per column instead of one gather per row and column; short runs
/// are gathered.
fn gather(schema: &arrow_schema::SchemaRef, batches: &[RecordBatch], order: &[u32]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut starts = Vec::with_capacity(batches.len());
    let mut rows = 0;
    for batch in batches {
        starts.push(rows);
        rows += batch.num_rows();
    }
    // (batch, row) of a row numbered across the batches.
    let locate = |n: usize| {
        let b = starts.partition_point(|start| *start <= n) - 1;
        (b, n - starts[b])
    };
    // Runs of consecutive rows of one batch, as (first row, length); no
    // more are counted once there are too many to slice.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for n in order.iter().map(|n| *n as usize) {
        let too_many = runs.len().saturating_mul(16) > order.len();
        match runs.last_mut() {
            Some((first, len)) if *first + *len == n && starts.binary_search(&n).is_err() => *len += 1,
            _ if too_many => break,
            _ => runs.push((n, 1)),
        }
    }
    if runs.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    if runs.len().saturating_mul(16) > order.len() {
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        let rows: Vec<(usize, usize)> = order.iter().map(|n| locate(*n as usize)).collect();
        return interleave_record_batch(&sources, &rows);
    }
    let slices: Vec<RecordBatch> = runs
        .iter()
        .map(|(first, len)| {
            let (b, row) = locate(*first);
            batches[b].slice(row, *len)
        })
        .collect();
    match slices.as_slice() {
        [whole] if whole.num_rows() == batches[locate(runs[0].0).0].num_rows() => Ok(whole.clone()),
        _ => concat_batches(schema, &slices),
    }
}

/// Target size of a Parquet data page.
const DATA_PAGE_BYTES: usize = 64 * 1024;

fn writer_properties() -> WriterProperties {
    let no_dictionary = [col::LINE, col::FIELDS, col::TS, col::INGEST_TS];
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        // Lines in 64 KiB pages come out no bigger at level 1 than at 3,
        // in two thirds of the time; times and the rest compress better at 3.
        .set_column_compression(
            col::LINE.into(),
            Compression::ZSTD(ZstdLevel::try_new(1).expect("valid zstd level")),
        )
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // A search reads a few rows: it decompresses their whole pages, so
        // pages stay small (1 MiB pages made a rare-term search decompress
        // ~100 MB for 72 hits).
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Nothing prunes on the text's min and max (comparing every line
        // for them was a few percent of a commit).
        .set_column_statistics_enabled(col::LINE.into(), EnabledStatistics::None)
        // Times rise within a stream: deltas take 3.2 bytes a row where
        // plain values under zstd took 3.8.
        .set_column_encoding(col::TS.into(), Encoding::DELTA_BINARY_PACKED)
        .set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: 2,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: 3,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: 4,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: 0,
                descending: false,
                nulls_first: false,
            },
        ]))
        .set_created_by(format!("weft {}", env!("CARGO_PKG_VERSION")));
    for name in no_dictionary {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    builder.build()
}

/// Where a split's files go, relative to the data directory.
pub fn split_paths(tenant: &str, min_ts: i64, id: &str) -> (String, String) {
    let (date, hour) = weft_model::time::date_hour(min_ts);
    let dir = format!("splits/logs/tenant={tenant}/date={date}/hour={hour:02}");
    (format!("{dir}/{id}.parquet"), format!("{dir}/{id}.tantivy"))
}

fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Writes one split from rows of the storage schema (any order) and
/// returns its catalog entry. `merges` is recorded in the entry.
pub fn write_split(data_dir: &Path, tenant: &str, batches: &[RecordBatch], merges: u32) -> Result<SplitMeta, IndexerError> {
    let schema = storage_schema();
    let SortedRows {
        rows: sorted,
        streams,
        starts: stream_starts,
    } = sort_by_stream_then_time(batches)?;
    let view = LogBatchView::new(&sorted)?;
    let groups = row_groups(&view, &stream_starts);
    let id = new_split_id();
    let ts = view.ts.values();
    let ingest = view.ingest_ts.values();
    let min_ts = ts.iter().copied().min().unwrap_or(0);
    let (parquet_rel, index_rel) = split_paths(tenant, min_ts, &id);
    let parquet_path = data_dir.join(&parquet_rel);
    let index_path = data_dir.join(&index_rel);
    let dir = parquet_path.parent().expect("split paths have a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;

    // tantivy and Parquet are written at once, each on its own thread, into
    // temporary names (the Parquet side, a fifth of a commit, no longer
    // adds to its latency); the index is renamed first, and the catalog
    // entry is what makes both visible.
    let tmp_index = dir.join(format!(".{id}.tantivy.tmp"));
    let tmp_parquet = dir.join(format!(".{id}.parquet.tmp"));
    let (index_written, parquet_written) = std::thread::scope(|scope| {
        let index = scope.spawn(|| index::write_index(&tmp_index, &view));
        let parquet = write_parquet(&tmp_parquet, &schema, &sorted);
        let index = index
            .join()
            .unwrap_or_else(|_| Err(IndexerError::Internal("the split index writer panicked".into())));
        (index, parquet)
    });
    if let Err(e) = index_written.and(parquet_written) {
        remove_path(&tmp_index);
        remove_path(&tmp_parquet);
        return Err(e);
    }
    fs::rename(&tmp_index, &index_path).map_err(io(&index_path))?;
    fs::rename(&tmp_parquet, &parquet_path).map_err(io(&parquet_path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;

    Ok(SplitMeta {
        id,
        kind: crate::catalog::SplitKind::Logs,
        tenant: tenant.to_string(),
        parquet_bytes: fs::metadata(&parquet_path).map(|m| m.len()).unwrap_or(0),
        index_bytes: dir_size(&index_path),
        parquet: parquet_rel,
        index: index_rel,
        rows: view.len() as u64,
        line_bytes: view.line.values().len() as u64,
        min_ts,
        max_ts: ts.iter().copied().max().unwrap_or(0),
        min_ingest_ts: ingest.iter().copied().min().unwrap_or(0),
        max_ingest_ts: ingest.iter().copied().max().unwrap_or(0),
        created_at: weft_model::time::now_nanos(),
        merges,
        streams,
        has_fields: view.fields.null_count() < view.len(),
        metrics: Vec::new(),
        series: 0,
        groups,
        number_index: numbers::VERSION,
        stream_starts,
    })
}

/// Writes `sorted` as one Parquet file at `path`, synced.
fn write_parquet(path: &Path, schema: &arrow_schema::SchemaRef, sorted: &RecordBatch) -> Result<(), IndexerError> {
    let file = File::create(path).map_err(io(path))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))
        .map_err(|e| IndexerError::Internal(format!("parquet writer: {e}")))?;
    writer
        .write(sorted)
        .map_err(|e| IndexerError::Internal(format!("parquet write: {e}")))?;
    let file = writer
        .into_inner()
        .map_err(|e| IndexerError::Internal(format!("parquet close: {e}")))?;
    file.sync_all().map_err(io(path))
}

/// Rows and line bytes per (stream, level, ML event) of rows sorted by
/// stream whose streams start at `starts`; stream numbers follow the
/// split's sorted stream list.
fn row_groups(view: &LogBatchView<'_>, starts: &[u32]) -> Vec<RowGroupCount> {
    let mut out = Vec::new();
    let mut current: FxHashMap<(&str, &str), (u64, u64)> = FxHashMap::default();
    for (stream, &start) in starts.iter().enumerate() {
        let end = starts.get(stream + 1).map_or(view.len(), |next| *next as usize);
        for row in start as usize..end {
            let event = if view.ml_event.is_valid(row) {
                view.ml_event.value(row)
            } else {
                ""
            };
            let entry = current.entry((view.level.value(row), event)).or_default();
            entry.0 += 1;
            entry.1 += view.line.value(row).len() as u64;
        }
        let mut groups: Vec<_> = current.drain().collect();
        groups.sort();
        out.extend(groups.into_iter().map(|((level, ml_event), (rows, bytes))| RowGroupCount {
            stream: stream as u32,
            level: level.to_string(),
            ml_event: ml_event.to_string(),
            rows,
            bytes,
        }));
    }
    out
}

/// Reads all rows of a split's Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, IndexerError> {
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| IndexerError::Corrupt(format!("{}: {e}", path.display())))?;
    let target = storage_schema();
    reader
        .map(|batch| {
            let batch = batch.map_err(|e| IndexerError::Corrupt(format!("{}: {e}", path.display())))?;
            Ok(weft_model::batch::conform(&batch, &target)?)
        })
        .collect()
}

/// Paths of a split's files.
pub fn split_files(data_dir: &Path, split: &SplitMeta) -> (PathBuf, PathBuf) {
    (data_dir.join(&split.parquet), data_dir.join(&split.index))
}

/// Deletes a file or directory tree, ignoring what is already gone.
pub fn remove_path(path: &Path) {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not delete split file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow_array::{Int64Array, StringArray};

    /// The lines of `batches` sorted by stream then time, the streams and
    /// where each starts.
    fn sorted_lines(batches: &[RecordBatch]) -> (Vec<String>, Vec<String>, Vec<u32>) {
        let SortedRows { rows, streams, starts } = sort_by_stream_then_time(batches).unwrap();
        let view = LogBatchView::new(&rows).unwrap();
        let lines = (0..view.len()).map(|r| view.line.value(r).to_string()).collect();
        (lines, streams, starts)
    }

    /// Rows of three batches, streams interleaved and times tied across
    /// batches: sorted by stream then time, ties in order of arrival
    /// (batch, then row), whichever way the copy is made.
    #[test]
    fn rows_sort_by_stream_then_time_and_ties_keep_their_arrival_order() {
        let batch = |rows: &[(&str, i64, &str)]| {
            let mut builder = weft_model::LogBatchBuilder::default();
            for (pod, ts, line) in rows {
                let record = weft_model::LogRecord {
                    ts: *ts,
                    namespace: "ml".into(),
                    pod: pod.to_string(),
                    container: "main".into(),
                    stream: "stdout".into(),
                    line: line.to_string(),
                    ..Default::default()
                };
                builder.append(&record.as_ref());
            }
            builder.finish(false)
        };
        // Long runs (sliced) and, repeated row by row, short ones (gathered).
        for repeat in [1usize, 40] {
            let rows = |pod: &'static str, ts: i64, tag: &'static str| vec![(pod, ts, tag); repeat];
            let batches = [
                batch(&[rows("b", 5, "b5-first"), rows("a", 7, "a7-first"), rows("b", 5, "b5-second")].concat()),
                batch(&[rows("a", 7, "a7-second"), rows("a", 3, "a3")].concat()),
                batch(&[rows("b", 5, "b5-third"), rows("a", 7, "a7-third"), rows("b", 1, "b1")].concat()),
            ];
            let (lines, streams, starts) = sorted_lines(&batches);
            let expected: Vec<&str> = ["a3", "a7-first", "a7-second", "a7-third", "b1", "b5-first", "b5-second", "b5-third"]
                .iter()
                .flat_map(|tag| std::iter::repeat_n(*tag, repeat))
                .collect();
            assert_eq!(lines, expected);
            assert_eq!(streams.len(), 2);
            assert_eq!(starts, [0, 4 * repeat as u32]);
            assert!(streams[0].contains("pod=\"a\"") && streams[1].contains("pod=\"b\""), "{streams:?}");
        }
    }

    /// Random rows of interleaved streams (a pod's stdout and stderr take
    /// turns, times mostly rising, sometimes equal or going back), over
    /// several batches: the same order as a stable sort by stream then time.
    #[test]
    fn interleaved_streams_sort_like_a_stable_sort_of_all_rows() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut rows: Vec<(String, String, i64, String)> = Vec::new();
        let mut batches = Vec::new();
        for b in 0..4 {
            let mut builder = weft_model::LogBatchBuilder::default();
            let mut ts = rng.i64(0..100);
            for n in 0..rng.usize(0..300) {
                let pod = ["a", "b", "c"][rng.usize(0..if b == 2 { 1 } else { 3 })];
                let stream = ["stdout", "stderr"][rng.usize(0..2)];
                ts += match rng.u8(0..10) {
                    0 => -rng.i64(0..50),
                    1 | 2 => 0,
                    _ => rng.i64(1..20),
                };
                let line = format!("batch {b} row {n}");
                let record = weft_model::LogRecord {
                    ts,
                    namespace: "ml".into(),
                    pod: pod.into(),
                    container: "main".into(),
                    stream: stream.into(),
                    line: line.clone(),
                    ..Default::default()
                };
                builder.append(&record.as_ref());
                rows.push((pod.into(), stream.into(), ts, line));
            }
            batches.push(builder.finish(false));
        }
        let mut expected = rows.clone();
        expected.sort_by(|x, y| (&x.0, &x.1, x.2).cmp(&(&y.0, &y.1, y.2)));
        let (lines, streams, starts) = sorted_lines(&batches);
        assert_eq!(lines, expected.iter().map(|r| r.3.as_str()).collect::<Vec<_>>());
        let mut distinct: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(streams.len(), distinct.len());
        let expected_starts: Vec<u32> = (0..expected.len())
            .filter(|&i| i == 0 || (&expected[i].0, &expected[i].1) != (&expected[i - 1].0, &expected[i - 1].1))
            .map(|i| i as u32)
            .collect();
        assert_eq!(starts, expected_starts);
    }

    #[test]
    fn gathering_by_runs_equals_a_gather_row_by_row() {
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("n", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("s", arrow_schema::DataType::Utf8, true),
        ]));
        let batch = |from: u32, rows: u32| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values((from..from + rows).map(i64::from))),
                    Arc::new(StringArray::from_iter(
                        (from..from + rows).map(|i| (i % 7 != 0).then(|| format!("line {i}"))),
                    )),
                ],
            )
            .unwrap()
        };
        let batches = [batch(0, 400), batch(400, 100), batch(500, 500)];
        let whole = concat_batches(&schema, &batches).unwrap();
        // Long runs (slices), short runs (a gather), one whole batch, all
        // of them in order, and none.
        let runs: Vec<u32> = (500..1000).chain(0..500).collect();
        let short: Vec<u32> = (0..1000).rev().collect();
        let one: Vec<u32> = (400..500).collect();
        let all: Vec<u32> = (0..1000).collect();
        for order in [runs, short, one, all, Vec::new()] {
            let expected = arrow_select::take::take_record_batch(&whole, &arrow_array::UInt32Array::from(order.clone())).unwrap();
            assert_eq!(gather(&schema, &batches, &order).unwrap(), expected);
        }
    }
}
