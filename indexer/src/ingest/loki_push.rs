//! Loki's push API, `POST /loki/api/v1/push`, so Promtail, Grafana Alloy,
//! Fluent Bit and Vector can ship to weft unchanged: JSON (optionally
//! gzipped) and protobuf `PushRequest` compressed with raw (block) snappy.

use std::io::Read;

use serde::Deserialize;
use weft_model::level::detect_level;
use weft_model::{LabelSet, Level, LogRecord};

use crate::IndexerError;

/// `logproto.PushRequest` from grafana/loki `pkg/push/push.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// One stream: labels in `{a="b"}` form and its entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// One line. The line is read as bytes so invalid UTF-8 is kept lossily
/// instead of failing the whole request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<ProtoTimestamp>,
    #[prost(bytes = "vec", tag = "2")]
    pub line: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ProtoTimestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Deserialize)]
struct PushJson {
    streams: Vec<StreamJson>,
}

#[derive(Deserialize)]
struct StreamJson {
    #[serde(default)]
    stream: std::collections::BTreeMap<String, String>,
    values: Vec<Vec<serde_json::Value>>,
}

/// Limits applied while decoding a push.
#[derive(Clone, Copy, Debug)]
pub struct PushLimits {
    pub max_body_bytes: usize,
    pub max_line_bytes: usize,
    pub max_entries: usize,
}

/// Counts of lines altered while decoding.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    pub truncated: u64,
    pub invalid_utf8: u64,
}

fn bad(message: String) -> IndexerError {
    IndexerError::BadRequest(message)
}

/// Decompresses a gzip body, refusing to grow past `limit`.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, IndexerError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(IndexerError::TooLarge(format!("decompressed body exceeds {limit} bytes")));
    }
    Ok(out)
}

fn record_for(labels: &LabelSet, ts: i64, line: String, fields: LabelSet, limits: &PushLimits, stats: &mut PushStats) -> LogRecord {
    let mut record = LogRecord { ts, ..Default::default() };
    let mut labels = labels.clone();
    // A `level` / `detected_level` label or field wins over detection.
    let given = labels
        .get("detected_level")
        .or_else(|| labels.get("level"))
        .or_else(|| fields.get("detected_level"))
        .or_else(|| fields.get("level"))
        .map(Level::parse);
    labels.remove("detected_level");
    record.set_stream_labels(labels);
    let mut line = line;
    if line.len() > limits.max_line_bytes {
        let mut cut = limits.max_line_bytes;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        record.truncated = true;
        stats.truncated += 1;
    }
    record.level = given
        .filter(|l| *l != Level::Unknown)
        .unwrap_or_else(|| detect_level(line.as_bytes()));
    record.ml_event = fields.get("ml_event").map(str::to_string);
    record.fields = fields;
    record.line = line;
    record
}

/// Decodes a JSON push body.
pub fn decode_json(body: &[u8], limits: &PushLimits, stats: &mut PushStats) -> Result<Vec<LogRecord>, IndexerError> {
    let push: PushJson = serde_json::from_slice(body).map_err(|e| bad(format!("invalid push JSON: {e}")))?;
    let mut records = Vec::new();
    for (s, stream) in push.streams.into_iter().enumerate() {
        for name in stream.stream.keys() {
            weft_model::labels::validate_label_name(name).map_err(|e| bad(format!("streams[{s}]: {e}")))?;
        }
        let labels = LabelSet::from_pairs(stream.stream);
        if labels.is_empty() {
            return Err(bad(format!("streams[{s}]: a stream needs at least one label")));
        }
        for (v, entry) in stream.values.into_iter().enumerate() {
            let at = || format!("streams[{s}].values[{v}]");
            if entry.len() < 2 || entry.len() > 3 {
                return Err(bad(format!(
                    "{}: an entry is [\"<unix ns>\", \"<line>\"] or with a third metadata object",
                    at()
                )));
            }
            let ts = match &entry[0] {
                serde_json::Value::String(text) => text
                    .parse::<i64>()
                    .map_err(|_| bad(format!("{}: timestamp {text:?} is not integer nanoseconds", at())))?,
                _ => return Err(bad(format!("{}: timestamp must be a string of Unix nanoseconds", at()))),
            };
            let line = match &entry[1] {
                serde_json::Value::String(line) => line.clone(),
                _ => return Err(bad(format!("{}: line must be a string", at()))),
            };
            let mut fields = LabelSet::new();
            if let Some(meta) = entry.get(2) {
                let serde_json::Value::Object(map) = meta else {
                    return Err(bad(format!("{}: structured metadata must be an object of strings", at())));
                };
                for (k, v) in map {
                    let serde_json::Value::String(v) = v else {
                        return Err(bad(format!("{}: structured metadata value of {k:?} must be a string", at())));
                    };
                    fields.insert(k.clone(), v.clone());
                }
            }
            records.push(record_for(&labels, ts, line, fields, limits, stats));
            if records.len() > limits.max_entries {
                return Err(IndexerError::TooLarge(format!("push has more than {} entries", limits.max_entries)));
            }
        }
    }
    Ok(records)
}

/// Decodes a snappy-compressed protobuf push body.
pub fn decode_protobuf(body: &[u8], limits: &PushLimits, stats: &mut PushStats) -> Result<Vec<LogRecord>, IndexerError> {
    let len = snap::raw::decompress_len(body).map_err(|e| bad(format!("body is not snappy (block format): {e}")))?;
    if len > limits.max_body_bytes {
        return Err(IndexerError::TooLarge(format!(
            "decompressed body of {len} bytes exceeds {}",
            limits.max_body_bytes
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| bad(format!("body is not snappy (block format): {e}")))?;
    let push = <PushRequest as prost::Message>::decode(raw.as_slice()).map_err(|e| bad(format!("invalid PushRequest protobuf: {e}")))?;
    let mut records = Vec::new();
    for (s, stream) in push.streams.into_iter().enumerate() {
        let labels = LabelSet::parse(&stream.labels).map_err(|e| bad(format!("streams[{s}].labels: {e}")))?;
        if labels.is_empty() {
            return Err(bad(format!("streams[{s}]: a stream needs at least one label")));
        }
        for entry in stream.entries {
            let ts = entry
                .timestamp
                .map(|t| t.seconds.saturating_mul(1_000_000_000).saturating_add(t.nanos as i64))
                .unwrap_or(0);
            let line = match String::from_utf8(entry.line) {
                Ok(line) => line,
                Err(e) => {
                    stats.invalid_utf8 += 1;
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                }
            };
            let fields = LabelSet::from_pairs(entry.structured_metadata.into_iter().map(|p| (p.name, p.value)));
            records.push(record_for(&labels, ts, line, fields, limits, stats));
            if records.len() > limits.max_entries {
                return Err(IndexerError::TooLarge(format!("push has more than {} entries", limits.max_entries)));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const LIMITS: PushLimits = PushLimits {
        max_body_bytes: 1 << 20,
        max_line_bytes: 16,
        max_entries: 100,
    };

    #[test]
    fn json_push_with_metadata() {
        let body = br#"{"streams":[{"stream":{"job":"trainer","namespace":"ml"},"values":[["1570818238000000000","ERROR boom",{"trace_id":"0242ac120002"}],["1570818238000000001","a line longer than sixteen bytes"]]}]}"#;
        let mut stats = PushStats::default();
        let records = decode_json(body, &LIMITS, &mut stats).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].namespace, "ml");
        assert_eq!(records[0].labels.get("job"), Some("trainer"));
        assert_eq!(records[0].fields.get("trace_id"), Some("0242ac120002"));
        assert_eq!(records[0].level, Level::Error);
        assert!(records[1].truncated);
        assert_eq!(stats.truncated, 1);
    }

    #[test]
    fn json_push_errors_name_the_entry() {
        let mut stats = PushStats::default();
        let numeric_ts = br#"{"streams":[{"stream":{"job":"x"},"values":[[1570818238000000000,"x"]]}]}"#;
        let err = decode_json(numeric_ts, &LIMITS, &mut stats).unwrap_err().to_string();
        assert!(err.contains("streams[0].values[0]") && err.contains("string"), "{err}");
        assert!(decode_json(b"{\"streams\":", &LIMITS, &mut stats).is_err());
        let bad_label = br#"{"streams":[{"stream":{"1x":"y"},"values":[]}]}"#;
        assert!(decode_json(bad_label, &LIMITS, &mut stats).is_err());
    }

    #[test]
    fn protobuf_snappy_push() {
        let push = PushRequest {
            streams: vec![StreamAdapter {
                labels: r#"{job="trainer", pod="train-0"}"#.into(),
                entries: vec![EntryAdapter {
                    timestamp: Some(ProtoTimestamp { seconds: 1, nanos: 5 }),
                    line: b"ok \xff".to_vec(),
                    structured_metadata: vec![LabelPairAdapter {
                        name: "ml_event".into(),
                        value: "cuda_oom".into(),
                    }],
                }],
                hash: 0,
            }],
        };
        let body = snap::raw::Encoder::new().compress_vec(&push.encode_to_vec()).unwrap();
        let mut stats = PushStats::default();
        let records = decode_protobuf(&body, &LIMITS, &mut stats).unwrap();
        assert_eq!(records[0].ts, 1_000_000_005);
        assert_eq!(records[0].pod, "train-0");
        assert_eq!(records[0].line, "ok \u{fffd}");
        assert_eq!(records[0].ml_event.as_deref(), Some("cuda_oom"));
        assert_eq!(stats.invalid_utf8, 1);
        assert!(decode_protobuf(b"not snappy", &LIMITS, &mut stats).is_err());
        let framed_garbage = snap::raw::Encoder::new().compress_vec(b"\x0a\x05junk").unwrap();
        assert!(decode_protobuf(&framed_garbage, &LIMITS, &mut stats).is_err());
    }
}
