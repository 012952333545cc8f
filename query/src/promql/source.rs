//! Where PromQL reads samples from: a trait over "give me the series that
//! match these matchers, with their samples in this time range", with two
//! implementations: the metric splits of a data directory (through their
//! series index) and an in-memory store for `promqltest` files.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow_array::{Array, Float64Array, TimestampMillisecondArray};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::arrow::ProjectionMask;
use promql_parser::label::Matcher;
use weft_indexer::catalog::{SplitKind, SplitMeta};
use weft_indexer::split::metrics::{read_series_index, SeriesEntry};
use weft_model::LabelSet;

use crate::storage::SplitStore;
use crate::QueryError;

/// One series with its samples (milliseconds, oldest first).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: LabelSet,
    pub samples: Vec<(i64, f64)>,
}

/// Reads series for PromQL.
pub trait SampleSource: Send + Sync {
    /// Series matching all `matchers` with their samples in `[start, end]`
    /// (milliseconds, inclusive). Series without samples there may be left
    /// out. Fails as soon as more than `max_samples` samples are read.
    fn select(&self, matchers: &[Matcher], start: i64, end: i64, max_samples: usize) -> Result<Vec<Series>, QueryError>;

    /// Label sets of the series matching any of `selectors` (all series
    /// when empty) with samples overlapping `[start, end]`.
    fn series(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<LabelSet>, QueryError>;

    /// Type/help/unit per metric name.
    fn metadata(&self) -> Result<weft_model::metric::MetadataMap, QueryError> {
        Ok(Default::default())
    }
}

fn matches_all(labels: &LabelSet, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.is_match(labels.get(&m.name).unwrap_or("")))
}

/// Samples held in memory (the `promqltest` runner loads into this).
#[derive(Default)]
pub struct MemorySource {
    series: BTreeMap<LabelSet, Vec<(i64, f64)>>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds samples to a series (kept sorted by time, later ones replace
    /// earlier ones at the same timestamp).
    pub fn add(&mut self, labels: LabelSet, samples: impl IntoIterator<Item = (i64, f64)>) {
        let entry = self.series.entry(labels).or_default();
        for (ts, value) in samples {
            match entry.binary_search_by_key(&ts, |s| s.0) {
                Ok(i) => entry[i].1 = value,
                Err(i) => entry.insert(i, (ts, value)),
            }
        }
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }
}

impl SampleSource for MemorySource {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64, max_samples: usize) -> Result<Vec<Series>, QueryError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for (labels, samples) in self.series.iter().filter(|(labels, _)| matches_all(labels, matchers)) {
            let from = samples.partition_point(|s| s.0 < start);
            let to = samples.partition_point(|s| s.0 <= end);
            if from == to {
                continue;
            }
            total += to - from;
            if total > max_samples {
                return Err(super::engine::too_many_samples(max_samples));
            }
            out.push(Series {
                labels: labels.clone(),
                samples: samples[from..to].to_vec(),
            });
        }
        Ok(out)
    }

    fn series(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<LabelSet>, QueryError> {
        Ok(self
            .series
            .iter()
            .filter(|(labels, _)| selectors.is_empty() || selectors.iter().any(|m| matches_all(labels, m)))
            .filter(|(_, samples)| samples.iter().any(|s| s.0 >= start && s.0 <= end))
            .map(|(labels, _)| labels.clone())
            .collect())
    }
}

/// A metric split opened for reading: its series index and Parquet footer.
struct OpenMetricSplit {
    meta: SplitMeta,
    series: Vec<(Arc<LabelSet>, SeriesEntry)>,
    parquet_path: PathBuf,
    parquet_meta: ArrowReaderMetadata,
}

impl OpenMetricSplit {
    fn open(data_dir: &Path, meta: &SplitMeta) -> Result<Self, QueryError> {
        let err = |e: &dyn std::fmt::Display| QueryError::Storage(format!("metric split {}: {e}", meta.id));
        let index = read_series_index(&data_dir.join(&meta.index)).map_err(|e| err(&e))?;
        let series = index
            .into_iter()
            .map(|entry| (Arc::new(LabelSet::parse(&entry.series).unwrap_or_default()), entry))
            .collect();
        let parquet_path = data_dir.join(&meta.parquet);
        let file = File::open(&parquet_path).map_err(|e| err(&e))?;
        let parquet_meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| err(&e))?;
        Ok(Self {
            meta: meta.clone(),
            series,
            parquet_path,
            parquet_meta,
        })
    }

    /// Samples in `[start, end]` of the chosen series (indices into
    /// `self.series`), in order. Only in-window samples are kept, and
    /// reading stops once `budget` would be exceeded.
    fn read(&self, chosen: &[usize], start: i64, end: i64, budget: usize) -> Result<Vec<Vec<(i64, f64)>>, QueryError> {
        let err = |e: &dyn std::fmt::Display| QueryError::Storage(format!("metric split {}: {e}", self.meta.id));
        let ranges: Vec<std::ops::Range<usize>> = chosen
            .iter()
            .map(|&i| {
                let entry = &self.series[i].1;
                entry.first_row as usize..(entry.first_row + entry.rows) as usize
            })
            .collect();
        let selection = RowSelection::from_consecutive_ranges(ranges.clone().into_iter(), self.meta.rows as usize);
        let file = File::open(&self.parquet_path).map_err(|e| err(&e))?;
        let mask = ProjectionMask::columns(self.parquet_meta.parquet_schema(), ["ts", "value"]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.parquet_meta.clone())
            .with_projection(mask)
            .with_row_selection(selection)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| err(&e))?;
        let mut out: Vec<Vec<(i64, f64)>> = vec![Vec::new(); chosen.len()];
        // Rows arrive in the order of `ranges`: `series` is the one being
        // filled and `left` its rows still to come.
        let mut series = 0usize;
        let mut left = ranges.first().map_or(0, |r| r.len());
        let mut kept = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| err(&e))?;
            let ts = batch
                .column_by_name("ts")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
                .ok_or_else(|| err(&"ts column"))?;
            let value = batch
                .column_by_name("value")
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                .ok_or_else(|| err(&"value column"))?;
            debug_assert_eq!(ts.null_count(), 0);
            for (t, v) in ts.values().iter().copied().zip(value.values().iter().copied()) {
                while left == 0 {
                    series += 1;
                    left = ranges
                        .get(series)
                        .ok_or_else(|| err(&"more rows than the series index says"))?
                        .len();
                }
                left -= 1;
                if t >= start && t <= end {
                    kept += 1;
                    if kept > budget {
                        return Err(super::engine::too_many_samples(budget));
                    }
                    out[series].push((t, v));
                }
            }
        }
        if left != 0 || series + 1 < ranges.len() && ranges[series + 1..].iter().any(|r| !r.is_empty()) {
            return Err(err(&"fewer rows than the series index says"));
        }
        Ok(out)
    }
}

/// The metric splits of a data directory, for one tenant.
pub struct MetricStore {
    store: Arc<SplitStore>,
    data_dir: PathBuf,
    tenant: String,
    open: Arc<RwLock<HashMap<String, Arc<OpenMetricSplit>>>>,
}

/// Opened metric splits shared by every query of a process.
#[derive(Clone, Default)]
pub struct MetricSplitCache(Arc<RwLock<HashMap<String, Arc<OpenMetricSplit>>>>);

impl MetricStore {
    pub fn new(store: Arc<SplitStore>, data_dir: &Path, tenant: &str, cache: &MetricSplitCache) -> Self {
        Self {
            store,
            data_dir: data_dir.to_path_buf(),
            tenant: tenant.to_string(),
            open: cache.0.clone(),
        }
    }

    fn splits(&self, start: i64, end: i64) -> Result<Vec<Arc<OpenMetricSplit>>, QueryError> {
        self.store.refresh()?;
        let catalog = self.store.catalog();
        let (start_ns, end_ns) = (
            start.saturating_mul(1_000_000),
            end.saturating_mul(1_000_000).saturating_add(999_999),
        );
        let live: std::collections::HashSet<&str> = catalog.splits.iter().map(|s| s.id.as_str()).collect();
        self.open.write().expect("cache lock").retain(|id, _| live.contains(id.as_str()));
        let mut out = Vec::new();
        for meta in catalog
            .splits
            .iter()
            .filter(|s| s.kind == SplitKind::Metrics && s.tenant == self.tenant && s.max_ts >= start_ns && s.min_ts <= end_ns)
        {
            if let Some(open) = self.open.read().expect("cache lock").get(&meta.id) {
                out.push(open.clone());
                continue;
            }
            let opened = Arc::new(OpenMetricSplit::open(&self.data_dir, meta)?);
            self.open.write().expect("cache lock").insert(meta.id.clone(), opened.clone());
            out.push(opened);
        }
        Ok(out)
    }
}

impl SampleSource for MetricStore {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64, max_samples: usize) -> Result<Vec<Series>, QueryError> {
        let mut read = 0usize;
        let name = matchers
            .iter()
            .find(|m| m.name == weft_model::metric::METRIC_NAME && matches!(m.op, promql_parser::label::MatchOp::Equal));
        let mut merged: BTreeMap<LabelSet, Vec<(i64, f64)>> = BTreeMap::new();
        for split in self.splits(start, end)? {
            if let Some(name) = name {
                if !split.meta.metrics.contains(&name.value) {
                    continue;
                }
            }
            let chosen: Vec<usize> = split
                .series
                .iter()
                .enumerate()
                .filter(|(_, (labels, entry))| entry.max_ts >= start && entry.min_ts <= end && matches_all(labels, matchers))
                .map(|(i, _)| i)
                .collect();
            if chosen.is_empty() {
                continue;
            }
            for (i, samples) in chosen.iter().zip(split.read(&chosen, start, end, max_samples - read)?) {
                read += samples.len();
                match merged.get_mut(&*split.series[*i].0) {
                    Some(held) => held.extend_from_slice(&samples),
                    None => {
                        merged.insert((*split.series[*i].0).clone(), samples);
                    }
                }
            }
        }
        Ok(merged
            .into_iter()
            .filter(|(_, samples)| !samples.is_empty())
            .map(|(labels, mut samples)| {
                // Overlapping splits: keep one sample per timestamp.
                samples.sort_by_key(|s| s.0);
                samples.dedup_by_key(|s| s.0);
                Series { labels, samples }
            })
            .collect())
    }

    fn series(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<LabelSet>, QueryError> {
        let mut out = std::collections::BTreeSet::new();
        for split in self.splits(start, end)? {
            for (labels, entry) in &split.series {
                if entry.max_ts >= start
                    && entry.min_ts <= end
                    && (selectors.is_empty() || selectors.iter().any(|m| matches_all(labels, m)))
                {
                    out.insert((**labels).clone());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn metadata(&self) -> Result<weft_model::metric::MetadataMap, QueryError> {
        self.store.refresh()?;
        Ok(self.store.catalog().metadata.get(&self.tenant).cloned().unwrap_or_default())
    }
}
