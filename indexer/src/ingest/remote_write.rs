//! Prometheus remote_write 1.0 (`POST /api/v1/write`, protobuf
//! `prometheus.WriteRequest`, snappy block compression), so a Prometheus
//! or Grafana Alloy can send samples to weft. Native histograms and
//! exemplars are not stored yet and are counted as dropped.

use weft_model::metric::{validate_series, MetadataMap, MetricBatchBuilder, MetricMetadata};
use weft_model::LabelSet;

use crate::IndexerError;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<RemoteMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Only counted: exemplars are not stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// Only counted: native histograms are not stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoteMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

fn type_name(code: i32) -> &'static str {
    match code {
        1 => "counter",
        2 => "gauge",
        3 => "histogram",
        4 => "gaugehistogram",
        5 => "summary",
        6 => "info",
        7 => "stateset",
        _ => "unknown",
    }
}

/// What a remote_write body held.
pub struct DecodedWrite {
    pub builder: MetricBatchBuilder,
    pub metadata: MetadataMap,
    /// Native histogram samples and exemplars, which are not stored.
    pub dropped: u64,
}

fn bad(message: String) -> IndexerError {
    IndexerError::BadRequest(message)
}

/// Decodes a snappy-compressed `WriteRequest`.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<DecodedWrite, IndexerError> {
    let len = snap::raw::decompress_len(body).map_err(|e| bad(format!("body is not snappy (block format): {e}")))?;
    if len > max_bytes {
        return Err(IndexerError::TooLarge(format!(
            "decompressed body of {len} bytes exceeds {max_bytes}"
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| bad(format!("body is not snappy (block format): {e}")))?;
    let request =
        <WriteRequest as prost::Message>::decode(raw.as_slice()).map_err(|e| bad(format!("invalid WriteRequest protobuf: {e}")))?;
    let mut builder = MetricBatchBuilder::new();
    let mut dropped = 0u64;
    for (i, series) in request.timeseries.into_iter().enumerate() {
        let labels = LabelSet::from_pairs(series.labels.into_iter().map(|l| (l.name, l.value)));
        validate_series(&labels).map_err(|e| bad(format!("timeseries[{i}]: {e}")))?;
        let text = labels.to_string();
        for sample in series.samples {
            builder.append(&text, sample.timestamp, sample.value);
        }
        dropped += (series.histograms.len() + series.exemplars.len()) as u64;
    }
    let mut metadata = MetadataMap::new();
    for m in request.metadata {
        if m.metric_family_name.is_empty() {
            continue;
        }
        metadata.insert(
            m.metric_family_name,
            MetricMetadata {
                kind: type_name(m.r#type).to_string(),
                help: m.help,
                unit: m.unit,
            },
        );
    }
    Ok(DecodedWrite {
        builder,
        metadata,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn decodes_series_samples_and_metadata() {
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    },
                    Label {
                        name: "job".into(),
                        value: "node".into(),
                    },
                ],
                samples: vec![
                    Sample {
                        value: 1.0,
                        timestamp: 1000,
                    },
                    Sample {
                        value: 0.0,
                        timestamp: 2000,
                    },
                ],
                exemplars: vec![],
                histograms: vec![],
            }],
            metadata: vec![RemoteMetadata {
                r#type: 2,
                metric_family_name: "up".into(),
                help: "Target is up".into(),
                unit: String::new(),
            }],
        };
        let body = snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).unwrap();
        let mut decoded = decode(&body, 1 << 20).unwrap();
        assert_eq!(decoded.builder.len(), 2);
        assert_eq!(decoded.metadata["up"].kind, "gauge");
        let batch = decoded.builder.finish();
        let view = weft_model::metric::MetricBatchView::new(&batch).unwrap();
        assert_eq!(view.series.value(0), r#"{__name__="up", job="node"}"#);
        assert!(decode(b"garbage", 1 << 20).is_err());
        let no_name = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "job".into(),
                    value: "x".into(),
                }],
                samples: vec![],
                exemplars: vec![],
                histograms: vec![],
            }],
            metadata: vec![],
        };
        let body = snap::raw::Encoder::new().compress_vec(&no_name.encode_to_vec()).unwrap();
        assert!(decode(&body, 1 << 20).err().unwrap().to_string().contains("timeseries[0]"));
    }
}
