//! `weft inspect`: a dry run, like promtail's. Reads one log file through
//! the collector's own parsing (CRI or docker framing, partial-line joining,
//! multi-line joining, level detection), ML failure tagging and metric
//! extraction, and writes one JSON object per record, so a user sees what
//! weft will make of a job's output before deploying it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::batcher::RecordProcessing;
use crate::checkpoint::TailerCheckpoint;
use crate::extract::METRIC_PREFIX;
use crate::metrics::CollectorMetrics;
use crate::multiline::MultilineJoiner;
use crate::sources::pod_logs::tailer::{ForcedFormat, LineSink, LogLine, PodLogTailer, TailerConfig};
use crate::CollectorError;

struct JsonSink<'a> {
    out: &'a mut dyn Write,
    processing: &'a RecordProcessing,
    plain: bool,
    found: Vec<(crate::extract::MetricKey, f64)>,
    error: Option<std::io::Error>,
    records: usize,
}

fn number(value: f64) -> serde_json::Value {
    serde_json::Number::from_f64(value)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| json!(format!("{value}")))
}

/// The joiner in front of the JSON writer.
struct Joined<'a> {
    joiner: Option<MultilineJoiner>,
    sink: JsonSink<'a>,
}

impl LineSink for Joined<'_> {
    fn line(&mut self, line: LogLine<'_>) {
        match &mut self.joiner {
            Some(joiner) => {
                let sink = &mut self.sink;
                joiner.push(line, &mut |line, block| sink.record(line, block));
            }
            None => self.sink.record(line, false),
        }
    }
}

impl JsonSink<'_> {
    fn record(&mut self, line: LogLine<'_>, block: bool) {
        if self.error.is_some() {
            return;
        }
        let text = String::from_utf8_lossy(line.text);
        self.found.clear();
        if let Some(extractor) = &self.processing.extractor {
            extractor.extract(&text, &mut self.found);
        }
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .found
            .iter()
            .map(|(k, v)| (format!("{METRIC_PREFIX}{k}"), number(*v)))
            .collect();
        let mut level = weft_model::level::detect_level(line.text);
        if block && level == weft_model::Level::Unknown {
            level = weft_model::Level::Error;
        }
        let mut record = json!({
            "ts": if self.plain { serde_json::Value::Null } else { json!(weft_model::time::format_rfc3339_nanos(line.ts)) },
            "stream": line.stream.map(|s| s.as_str()),
            "level": level.as_str(),
            "line": text,
            "metrics": metrics,
        });
        if let Some(event) = self.processing.classifier.classify(&text) {
            record["ml_event"] = json!(event.name);
            if let Some(xid) = event.xid {
                record["xid"] = json!(xid);
            }
            record["event_line"] = json!(event.line);
        }
        if block {
            record["lines"] = json!(text.lines().count());
        }
        if line.truncated {
            record["truncated"] = json!(true);
        }
        if line.parse_error {
            record["parse_error"] = json!(true);
        }
        self.records += 1;
        if let Err(e) = writeln!(self.out, "{record}") {
            self.error = Some(e);
        }
    }
}

/// Reads `file` as the collector would and writes one JSON line per record
/// to `out`. Returns the number of records.
pub fn inspect(
    file: &Path,
    format: Option<ForcedFormat>,
    processing: &RecordProcessing,
    out: &mut dyn Write,
) -> Result<usize, CollectorError> {
    let io = |source| CollectorError::Io {
        path: file.to_path_buf(),
        source,
    };
    let file = std::fs::canonicalize(file).map_err(io)?;
    if !std::fs::metadata(&file).map_err(io)?.is_file() {
        return Err(CollectorError::Config(format!("{} is not a file", file.display())));
    }
    // The tailer follows kubelet's layout: give it one pod directory whose
    // log is a link to the file.
    let root = tempfile::tempdir().map_err(io)?;
    let dir = root.path().join("inspect_inspect_inspect").join("inspect");
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::os::unix::fs::symlink(&file, dir.join("0.log")).map_err(io)?;
    let config = TailerConfig {
        max_bytes_per_pass: usize::MAX,
        partial_timeout: Duration::from_secs(365 * 86_400),
        forced_format: format,
        ..TailerConfig::default()
    };
    let mut tailer = PodLogTailer::new(
        root.path().to_path_buf(),
        "inspect".into(),
        config,
        TailerCheckpoint::default(),
        Arc::new(CollectorMetrics::unregistered()),
    );
    tailer.scan().map_err(io)?;
    let mut joined = Joined {
        joiner: processing.multiline.map(MultilineJoiner::new),
        sink: JsonSink {
            out,
            processing,
            plain: format == Some(ForcedFormat::Plain),
            found: Vec::new(),
            error: None,
            records: 0,
        },
    };
    while tailer.poll(&mut joined) > 0 {}
    tailer.flush_all_partials(&mut joined);
    if let Some(joiner) = &mut joined.joiner {
        let sink = &mut joined.sink;
        joiner.flush_all(&mut |line, block| sink.record(line, block));
    }
    if let Some(e) = joined.sink.error {
        return Err(io(e));
    }
    Ok(joined.sink.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_records_with_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        std::fs::write(
            &path,
            "2026-11-25T10:00:00Z stdout F {'loss': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}\n\
             2026-11-25T10:00:01Z stderr P ERROR half \n\
             2026-11-25T10:00:01Z stderr F and rest\n\
             not a cri line\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let processing = RecordProcessing {
            extractor: Some(Default::default()),
            ..Default::default()
        };
        let count = inspect(&path, None, &processing, &mut out).unwrap();
        assert_eq!(count, 3);
        let records: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records[0]["metrics"]["weft_train_loss"], 0.5);
        assert_eq!(records[0]["ts"], "2026-11-25T10:00:00.000000000Z");
        assert_eq!(records[1]["line"], "ERROR half and rest");
        assert_eq!(records[1]["level"], "error");
        assert_eq!(records[2]["parse_error"], true);
        let mut plain = Vec::new();
        inspect(&path, Some(ForcedFormat::Plain), &processing, &mut plain).unwrap();
        let first: serde_json::Value = serde_json::from_str(String::from_utf8(plain).unwrap().lines().next().unwrap()).unwrap();
        assert!(first["line"].as_str().unwrap().starts_with("2026-11-25T10:00:00Z stdout F"));
        assert!(first["ts"].is_null());
    }

    #[test]
    fn prints_joined_tracebacks_with_their_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        std::fs::write(
            &path,
            "2026-11-25T10:00:00Z stderr F [rank3]: Traceback (most recent call last):\n\
             2026-11-25T10:00:00Z stderr F [rank3]:   File \"train.py\", line 10, in <module>\n\
             2026-11-25T10:00:00Z stderr F [rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB\n\
             2026-11-25T10:00:01Z stdout F NVRM: Xid (PCI:0000:3b:00): 48, pid=77, Double Bit ECC Error\n",
        )
        .unwrap();
        let processing = RecordProcessing {
            multiline: Some(Default::default()),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert_eq!(inspect(&path, None, &processing, &mut out).unwrap(), 2);
        let records: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The stdout line is not held behind the open stderr traceback.
        assert_eq!(records[0]["ml_event"], "gpu_xid");
        assert_eq!(records[0]["xid"], 48);
        assert_eq!(records[1]["ml_event"], "cuda_oom");
        assert_eq!(records[1]["lines"], 3);
        assert_eq!(records[1]["level"], "error");
        assert!(records[1]["event_line"].as_str().unwrap().contains("torch.OutOfMemoryError"));
    }
}
