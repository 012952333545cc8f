//! Metric samples (Prometheus' model: a series is a label set including
//! `__name__`; a sample is a millisecond timestamp and an f64), their Arrow
//! schemas and a builder.
//!
//! On the wire a batch is `series` (canonical label set text), `ts`, `value`;
//! in storage a `metric` column (the name) is added in front so engines
//! reading the Parquet directly can filter by name.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
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
    series: StringBuilder,
    ts: TimestampMillisecondBuilder,
    value: Float64Builder,
    rows: usize,
}

impl MetricBatchBuilder {
    pub fn new() -> Self {
        Self {
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            ..Default::default()
        }
    }

    /// Appends one sample of the series whose canonical text is `series`.
    pub fn append(&mut self, series: &str, ts: i64, value: f64) {
        self.series.append_value(series);
        self.ts.append_value(ts);
        self.value.append_value(value);
        self.rows += 1;
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes a wire-schema batch and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.series.finish()),
            Arc::new(self.ts.finish().with_timezone("UTC")),
            Arc::new(self.value.finish()),
        ];
        RecordBatch::try_new(metric_wire_schema(), columns).expect("builder columns match the schema")
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
