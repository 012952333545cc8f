//! Metric samples (Prometheus' model: a series is a label set including
//! `__name__`; a sample is a millisecond timestamp and an f64), their Arrow
//! schemas and a builder.
//!
//! On the wire a batch is `series` (canonical label set text), `ts`, `value`;
//! in storage a `metric` column (the name) is added in front so engines
//! reading the Parquet directly can filter by name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::types::UInt32Type;
use arrow_array::{ArrayRef, DictionaryArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::labels::LabelSet;
use crate::ModelError;

/// The label holding a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// Prometheus' staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True for Prometheus' staleness marker (not for other NaNs).
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// The staleness marker value.
pub fn stale_marker() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Schema metadata key holding a JSON map of metric name → [`MetricMetadata`].
pub const META_METRIC_METADATA: &str = "weft.metric_metadata";

/// Column names of metric batches.
pub mod col {
    pub const METRIC: &str = "metric";
    pub const SERIES: &str = "series";
    pub const TS: &str = "ts";
    pub const VALUE: &str = "value";
}

/// Type, help and unit of a metric, as `/api/v1/metadata` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricMetadata {
    #[serde(rename = "type")]
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// Metadata of several metrics.
pub type MetadataMap = BTreeMap<String, MetricMetadata>;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Schema of metric samples on the wire.
pub fn metric_wire_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::SERIES, DataType::Utf8, false),
                Field::new(col::TS, ts_type(), false),
                Field::new(col::VALUE, DataType::Float64, false),
            ]))
        })
        .clone()
}

/// Schema of metric samples in Parquet splits.
pub fn metric_storage_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::METRIC, DataType::Utf8, false),
                Field::new(col::SERIES, DataType::Utf8, false),
                Field::new(col::TS, ts_type(), false),
                Field::new(col::VALUE, DataType::Float64, false),
            ]))
        })
        .clone()
}

/// One sample of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSample {
    /// The full label set, `__name__` included.
    pub series: LabelSet,
    /// Unix milliseconds.
    pub ts: i64,
    pub value: f64,
}

/// Appends samples into wire-schema columns.
#[derive(Default)]
pub struct MetricBatchBuilder {
    /// Each row's series text, or in dictionary mode each distinct one.
    series: StringBuilder,
    dictionary: Option<SeriesDictionary>,
    ts: TimestampMillisecondBuilder,
    value: Float64Builder,
    rows: usize,
}

/// The series of a batch built in dictionary mode: each text once, and a
/// key per row.
#[derive(Default)]
struct SeriesDictionary {
    ids: HashMap<String, u32, rustc_hash::FxBuildHasher>,
    keys: Vec<u32>,
    /// Counts finished batches: a [`SeriesSlot`] of an earlier one is stale.
    batch: u64,
}

/// Where a series sits in the dictionary of the batch being built, kept by
/// a caller that appends the same series text again and again
/// ([`MetricBatchBuilder::append_to_slot`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SeriesSlot {
    /// One more than the dictionary's batch count when found (0: never).
    batch: u64,
    id: u32,
}

impl MetricBatchBuilder {
    pub fn new() -> Self {
        Self {
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            ..Default::default()
        }
    }

    /// A builder whose batches carry each series text once, as an Arrow
    /// dictionary (for IPC bodies: [`crate::batch::decode_ipc`] expands
    /// it). Samples extracted from log lines repeat a few series texts of
    /// ~150 bytes each; written per row they were most of a collector
    /// batch's bytes.
    pub fn dictionary() -> Self {
        Self {
            dictionary: Some(SeriesDictionary::default()),
            ..Self::new()
        }
    }

    /// Appends one sample of the series whose canonical text is `series`.
    pub fn append(&mut self, series: &str, ts: i64, value: f64) {
        match &mut self.dictionary {
            None => self.series.append_value(series),
            Some(dictionary) => {
                let id = match dictionary.ids.get(series) {
                    Some(id) => *id,
                    None => {
                        let id = dictionary.ids.len() as u32;
                        dictionary.ids.insert(series.to_owned(), id);
                        self.series.append_value(series);
                        id
                    }
                };
                dictionary.keys.push(id);
            }
        }
        self.ts.append_value(ts);
        self.value.append_value(value);
        self.rows += 1;
    }

    /// [`Self::append`], where `slot` is where `series` was found last
    /// (default before the first call): within one batch the dictionary
    /// key is taken from the slot, without hashing and comparing the text
    /// (≈ 150 bytes; `perf` put 3 % of the collector's samples in that
    /// lookup, and the collector measured 1–2 % faster without it).
    pub fn append_to_slot(&mut self, slot: &mut SeriesSlot, series: &str, ts: i64, value: f64) {
        match &mut self.dictionary {
            Some(dictionary) if slot.batch == dictionary.batch + 1 => {
                dictionary.keys.push(slot.id);
                self.ts.append_value(ts);
                self.value.append_value(value);
                self.rows += 1;
            }
            Some(dictionary) => {
                let batch = dictionary.batch + 1;
                self.append(series, ts, value);
                if let Some(dictionary) = &self.dictionary {
                    *slot = SeriesSlot {
                        batch,
                        id: *dictionary.keys.last().expect("a key was just pushed"),
                    };
                }
            }
            None => self.append(series, ts, value),
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes a wire-schema batch (in dictionary mode, with the series
    /// column dictionary-encoded) and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        // The next batch's columns sized like this one's, with room to
        // spare: an Arrow builder starts empty after a finish and grew by
        // doubling, copying, every batch.
        let next_rows = self.rows + self.rows / 8;
        self.rows = 0;
        let series: ArrayRef = match &mut self.dictionary {
            None => Arc::new(self.series.finish()),
            Some(dictionary) => {
                dictionary.ids.clear();
                dictionary.batch += 1;
                let keys = UInt32Array::from(std::mem::replace(&mut dictionary.keys, Vec::with_capacity(next_rows)));
                Arc::new(DictionaryArray::<UInt32Type>::try_new(keys, Arc::new(self.series.finish())).expect("keys index the values"))
            }
        };
        let schema = match self.dictionary {
            None => metric_wire_schema(),
            Some(_) => {
                // The wire schema with the series as a dictionary.
                static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
                SCHEMA
                    .get_or_init(|| {
                        let mut fields: Vec<Field> = metric_wire_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                        fields[0] = Field::new(col::SERIES, series.data_type().clone(), false);
                        Arc::new(Schema::new(fields))
                    })
                    .clone()
            }
        };
        let mut ts = std::mem::replace(
            &mut self.ts,
            TimestampMillisecondBuilder::with_capacity(next_rows).with_timezone("UTC"),
        );
        let mut value = std::mem::replace(&mut self.value, Float64Builder::with_capacity(next_rows));
        let columns: Vec<ArrayRef> = vec![series, Arc::new(ts.finish().with_timezone("UTC")), Arc::new(value.finish())];
        RecordBatch::try_new(schema, columns).expect("builder columns match the schema")
    }
}

/// Typed columns of a metric batch (wire or storage schema).
pub struct MetricBatchView<'a> {
    pub series: &'a StringArray,
    pub ts: &'a TimestampMillisecondArray,
    pub value: &'a Float64Array,
}

impl<'a> MetricBatchView<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<Self, ModelError> {
        let get = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ModelError::Schema(format!("missing column {name:?}")))
        };
        let wrong = |name: &str| ModelError::Schema(format!("column {name:?} has the wrong type"));
        Ok(Self {
            series: get(col::SERIES)?.as_any().downcast_ref().ok_or_else(|| wrong(col::SERIES))?,
            ts: get(col::TS)?.as_any().downcast_ref().ok_or_else(|| wrong(col::TS))?,
            value: get(col::VALUE)?.as_any().downcast_ref().ok_or_else(|| wrong(col::VALUE))?,
        })
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
}

/// Checks a series label set: a valid metric name and label names.
pub fn validate_series(series: &LabelSet) -> Result<(), ModelError> {
    let name = series
        .get(METRIC_NAME)
        .ok_or_else(|| ModelError::InvalidLabelName(format!("{series}: missing {METRIC_NAME}")))?;
    let valid_name = !name.is_empty()
        && (name.as_bytes()[0].is_ascii_alphabetic() || name.as_bytes()[0] == b'_' || name.as_bytes()[0] == b':')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if !valid_name {
        return Err(ModelError::InvalidLabelName(format!("metric name {name:?}")));
    }
    for (label, _) in series.iter() {
        if label != METRIC_NAME {
            crate::labels::validate_label_name(label)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{decode_ipc, encode_ipc};

    #[test]
    fn a_dictionary_builder_sends_each_series_once_and_decodes_to_the_same_rows() {
        let series: Vec<String> = (0..5)
            .map(|i| format!(r#"{{__name__="ml_loss", pod="trainer-{i}", rank="{i}"}}"#))
            .collect();
        let (mut plain, mut dictionary) = (MetricBatchBuilder::new(), MetricBatchBuilder::dictionary());
        // Slots kept across batches: the series come in another order in
        // the second batch, so a slot of the first names another series.
        let (mut slotted, mut slots) = (MetricBatchBuilder::dictionary(), [SeriesSlot::default(); 5]);
        for batch in 0..2 {
            for row in 0..1_000 {
                let at = (row * 7 + batch * 3) % 5;
                let (text, ts, value) = (&series[at], 1_000 + row as i64, row as f64 / 3.0);
                plain.append(text, ts, value);
                dictionary.append(text, ts, value);
                slotted.append_to_slot(&mut slots[at], text, ts, value);
            }
            let slotted_body = encode_ipc(&[slotted.finish()], Default::default()).unwrap();
            let plain_body = encode_ipc(&[plain.finish()], Default::default()).unwrap();
            let built = dictionary.finish();
            let sent = built
                .column(0)
                .as_any()
                .downcast_ref::<DictionaryArray<UInt32Type>>()
                .expect("series as a dictionary");
            assert_eq!(sent.values().len(), 5, "each text once per batch");
            let body = encode_ipc(&[built], Default::default()).unwrap();
            assert!(
                body.len() * 2 < plain_body.len(),
                "{} bytes against {}",
                body.len(),
                plain_body.len()
            );
            let decode = |body: &[u8]| decode_ipc(body, &metric_wire_schema(), 10_000, 1 << 24).unwrap().1;
            assert_eq!(decode(&body), decode(&plain_body));
            assert_eq!(decode(&slotted_body), decode(&plain_body));
        }
    }

    #[test]
    fn builder_round_trips_through_ipc() {
        let mut builder = MetricBatchBuilder::new();
        builder.append(r#"{__name__="up", job="a"}"#, 1000, 1.0);
        builder.append(r#"{__name__="up", job="a"}"#, 2000, stale_marker());
        let bytes = encode_ipc(&[builder.finish()], Default::default()).unwrap();
        let (_, batches) = decode_ipc(&bytes, &metric_wire_schema(), 10, 1 << 20).unwrap();
        let view = MetricBatchView::new(&batches[0]).unwrap();
        assert_eq!(view.len(), 2);
        assert!(is_stale_marker(view.value.value(1)));
        assert!(!is_stale_marker(f64::NAN));
    }

    #[test]
    fn series_validation() {
        assert!(validate_series(&LabelSet::from_pairs([("__name__", "gpu:util_5m"), ("gpu", "0")])).is_ok());
        assert!(validate_series(&LabelSet::from_pairs([("gpu", "0")])).is_err());
        assert!(validate_series(&LabelSet::from_pairs([("__name__", "1bad")])).is_err());
        assert!(validate_series(&LabelSet::from_pairs([("__name__", "ok"), ("bad-label", "x")])).is_err());
    }
}
