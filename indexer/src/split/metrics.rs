//! Metric splits: samples in Parquet sorted by series then time (`metric`
//! and `series` dictionary-encoded, `ts` and `value` plain, zstd level 9),
//! beside a zstd-compressed JSON series index (`<id>.series.zst`) that maps
//! each series to its row range and time range, so a selector finds its
//! series without reading samples.
//!
//! Repeated samples of a series at the same timestamp (remote_write
//! retries) keep the last one written.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_select::concat::concat_batches;
use arrow_select::take::take_record_batch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use weft_model::metric::{col, metric_storage_schema, metric_wire_schema, MetricBatchView, METRIC_NAME};
use weft_model::LabelSet;

use crate::catalog::{write_atomic, SplitKind, SplitMeta};
use crate::IndexerError;

/// One series of a metric split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEntry {
    /// Canonical label set, `__name__` included.
    pub series: String,
    pub first_row: u64,
    pub rows: u64,
    /// Milliseconds.
    pub min_ts: i64,
    pub max_ts: i64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexerError + '_ {
    move |source| IndexerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a metric split's files go, relative to the data directory.
pub fn metric_split_paths(tenant: &str, min_ts_ms: i64, id: &str) -> (String, String) {
    let (date, hour) = weft_model::time::date_hour(min_ts_ms.saturating_mul(1_000_000));
    let dir = format!("splits/metrics/tenant={tenant}/date={date}/hour={hour:02}");
    (format!("{dir}/{id}.parquet"), format!("{dir}/{id}.series.zst"))
}

fn writer_properties() -> WriterProperties {
    // Measured (benches/metric_bytes.rs): rows sorted by series then time
    // compress best as PLAIN values under zstd: one scrape's timestamps
    // repeat across the series of a target, and a series' values repeat
    // or drift; byte-stream-split and delta encodings did worse. One page
    // per column chunk and zstd 19 (0.90 bytes/sample; zstd 9 with 1 MiB
    // pages was 1.03): a query reads a whole metric split's columns
    // anyway, and metric splits are small and written rarely.
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(19).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_size_limit(16 << 20)
        .set_data_page_row_count_limit(1 << 20)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_dictionary_enabled(ColumnPath::from(col::TS), false)
        .set_column_encoding(ColumnPath::from(col::TS), Encoding::PLAIN)
        .set_column_dictionary_enabled(ColumnPath::from(col::VALUE), false)
        .set_column_encoding(ColumnPath::from(col::VALUE), Encoding::PLAIN)
        .set_created_by(format!("weft {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sorts samples (wire schema) by metric name, series and time, keeps the
/// last of repeated (series, ts) samples, and adds the `metric` column.
/// Returns the storage batch and its series index.
pub fn sort_samples(batches: &[RecordBatch]) -> Result<(RecordBatch, Vec<SeriesEntry>), IndexerError> {
    let wire = concat_batches(&metric_wire_schema(), batches).map_err(|e| IndexerError::Internal(e.to_string()))?;
    let view = MetricBatchView::new(&wire)?;
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut texts: Vec<&str> = Vec::new();
    let mut row_series = Vec::with_capacity(view.len());
    for row in 0..view.len() {
        let text = view.series.value(row);
        let next = texts.len() as u32;
        let id = *ids.entry(text).or_insert_with(|| {
            texts.push(text);
            next
        });
        row_series.push(id);
    }
    let names: Vec<String> = texts
        .iter()
        .map(|t| {
            LabelSet::parse(t)
                .ok()
                .and_then(|l| l.get(METRIC_NAME).map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let mut order_of_series: Vec<u32> = (0..texts.len() as u32).collect();
    order_of_series.sort_by(|a, b| (&names[*a as usize], texts[*a as usize]).cmp(&(&names[*b as usize], texts[*b as usize])));
    let mut rank = vec![0u32; texts.len()];
    for (position, id) in order_of_series.iter().enumerate() {
        rank[*id as usize] = position as u32;
    }
    let ts = view.ts.values();
    let mut order: Vec<u32> = (0..view.len() as u32).collect();
    // Stable: equal (series, ts) keep input order, so the last written wins below.
    order.sort_by_key(|&row| (rank[row_series[row as usize] as usize], ts[row as usize]));
    let mut kept: Vec<u32> = Vec::with_capacity(order.len());
    for row in order {
        if let Some(&last) = kept.last() {
            let (a, b) = (last as usize, row as usize);
            if row_series[a] == row_series[b] && ts[a] == ts[b] {
                *kept.last_mut().expect("not empty") = row;
                continue;
            }
        }
        kept.push(row);
    }
    let mut index: Vec<SeriesEntry> = Vec::new();
    let mut metric_names = Vec::with_capacity(kept.len());
    for (position, &row) in kept.iter().enumerate() {
        let id = row_series[row as usize] as usize;
        let t = ts[row as usize];
        metric_names.push(names[id].clone());
        match index.last_mut() {
            Some(entry) if entry.series == texts[id] => {
                entry.rows += 1;
                entry.max_ts = entry.max_ts.max(t);
            }
            _ => index.push(SeriesEntry {
                series: texts[id].to_string(),
                first_row: position as u64,
                rows: 1,
                min_ts: t,
                max_ts: t,
            }),
        }
    }
    let sorted = take_record_batch(&wire, &UInt32Array::from(kept)).map_err(|e| IndexerError::Internal(e.to_string()))?;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(metric_names))];
    columns.extend(sorted.columns().iter().cloned());
    let storage = RecordBatch::try_new(metric_storage_schema(), columns).map_err(|e| IndexerError::Internal(e.to_string()))?;
    Ok((storage, index))
}

/// Writes one metric split from wire-schema batches.
pub fn write_metric_split(data_dir: &Path, tenant: &str, batches: &[RecordBatch], merges: u32) -> Result<SplitMeta, IndexerError> {
    let (storage, index) = sort_samples(batches)?;
    let id = super::new_split_id();
    let min_ts = index.iter().map(|e| e.min_ts).min().unwrap_or(0);
    let max_ts = index.iter().map(|e| e.max_ts).max().unwrap_or(0);
    let (parquet_rel, index_rel) = metric_split_paths(tenant, min_ts, &id);
    let parquet_path = data_dir.join(&parquet_rel);
    let index_path = data_dir.join(&index_rel);
    let dir = parquet_path.parent().expect("split paths have a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let json = serde_json::to_vec(&index).expect("index serializes");
    let compressed = zstd::bulk::compress(&json, 9).map_err(io(&index_path))?;
    write_atomic(&index_path, &compressed).map_err(io(&index_path))?;
    let tmp_parquet = dir.join(format!(".{id}.parquet.tmp"));
    {
        let file = File::create(&tmp_parquet).map_err(io(&tmp_parquet))?;
        let mut writer = ArrowWriter::try_new(file, metric_storage_schema(), Some(writer_properties()))
            .map_err(|e| IndexerError::Internal(format!("parquet writer: {e}")))?;
        writer
            .write(&storage)
            .map_err(|e| IndexerError::Internal(format!("parquet write: {e}")))?;
        let file = writer
            .into_inner()
            .map_err(|e| IndexerError::Internal(format!("parquet close: {e}")))?;
        file.sync_all().map_err(io(&tmp_parquet))?;
    }
    fs::rename(&tmp_parquet, &parquet_path).map_err(io(&parquet_path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    let mut metrics: Vec<String> = index
        .iter()
        .filter_map(|e| LabelSet::parse(&e.series).ok().and_then(|l| l.get(METRIC_NAME).map(str::to_string)))
        .collect();
    metrics.dedup();
    Ok(SplitMeta {
        id,
        kind: SplitKind::Metrics,
        tenant: tenant.to_string(),
        parquet_bytes: fs::metadata(&parquet_path).map(|m| m.len()).unwrap_or(0),
        index_bytes: fs::metadata(&index_path).map(|m| m.len()).unwrap_or(0),
        parquet: parquet_rel,
        index: index_rel,
        rows: storage.num_rows() as u64,
        // What the rows take decoded (series text included): merges and
        // memory budgets count this.
        line_bytes: storage.get_array_memory_size() as u64,
        // Catalog times are nanoseconds for every kind.
        min_ts: min_ts.saturating_mul(1_000_000),
        max_ts: max_ts.saturating_mul(1_000_000).saturating_add(999_999),
        min_ingest_ts: weft_model::time::now_nanos(),
        max_ingest_ts: weft_model::time::now_nanos(),
        created_at: weft_model::time::now_nanos(),
        merges,
        streams: Vec::new(),
        has_fields: false,
        number_index: 0,
        series: index.len() as u64,
        metrics,
        groups: Vec::new(),
        stream_starts: Vec::new(),
    })
}

/// Reads the series index of a metric split.
pub fn read_series_index(path: &Path) -> Result<Vec<SeriesEntry>, IndexerError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let mut json = Vec::new();
    zstd::stream::copy_decode(bytes.as_slice(), &mut json)
        .map_err(|e| IndexerError::Corrupt(format!("series index {}: {e}", path.display())))?;
    serde_json::from_slice(&json).map_err(|e| IndexerError::Corrupt(format!("series index {}: {e}", path.display())))
}

/// Reads all samples of a metric split back in wire schema.
pub fn read_metric_parquet(path: &Path) -> Result<Vec<RecordBatch>, IndexerError> {
    let file = File::open(path).map_err(io(path))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(256 * 1024).build())
        .map_err(|e| IndexerError::Corrupt(format!("{}: {e}", path.display())))?;
    let target = metric_wire_schema();
    reader
        .map(|batch| {
            let batch = batch.map_err(|e| IndexerError::Corrupt(format!("{}: {e}", path.display())))?;
            Ok(weft_model::batch::conform(&batch, &target)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::metric::MetricBatchBuilder;

    #[test]
    fn sorted_deduplicated_and_indexed() {
        let mut builder = MetricBatchBuilder::new();
        let b = r#"{UUID="GPU-1", __name__="DCGM_FI_DEV_GPU_UTIL", gpu="0"}"#;
        let a = r#"{__name__="DCGM_FI_DEV_FB_USED", gpu="0"}"#;
        builder.append(b, 2000, 50.0);
        builder.append(a, 1000, 7.0);
        builder.append(b, 1000, 40.0);
        builder.append(b, 2000, 55.0);
        let (storage, index) = sort_samples(&[builder.finish()]).unwrap();
        assert_eq!(storage.num_rows(), 3, "the repeated sample at 2000 is kept once");
        let view = MetricBatchView::new(&storage).unwrap();
        assert_eq!(
            view.value.values().to_vec(),
            vec![7.0, 40.0, 55.0],
            "FB_USED sorts before GPU_UTIL; the last write wins"
        );
        assert_eq!(index.len(), 2);
        assert_eq!(
            (index[1].first_row, index[1].rows, index[1].min_ts, index[1].max_ts),
            (1, 2, 1000, 2000)
        );
    }
}
