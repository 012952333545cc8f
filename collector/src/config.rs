//! The collector's configuration: the `collector:` section of weft's config
//! file. Every field has a default, so an empty section is valid.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::time::serde_duration;

/// The longest line a config may allow.
const MAX_LINE_BYTES: usize = 256 << 20;
/// The largest batch a config may ask for: with a line of
/// [`MAX_LINE_BYTES`] past it, still under the 2 GiB a batch's text column
/// can address.
const MAX_BATCH_BYTES: usize = 1 << 30;

/// Settings of `weft collector` (and the collector inside `weft standalone`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Root of the kubelet pod log tree (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    pub logs: PathBuf,
    /// Directory for checkpoints, the spool and refused batches.
    pub state: PathBuf,
    /// Base URL of the indexer the batches go to.
    pub indexer: String,
    /// Node name put on every record; defaults to `NODE_NAME`, then the hostname.
    pub node: Option<String>,
    /// Identity of this collector in idempotency keys; defaults to the node name.
    pub collector_id: Option<String>,
    /// Tenant the collector ships to (`X-Scope-OrgID`).
    pub tenant: String,
    /// Bearer token sent to the indexer, when it requires one.
    pub bearer_token: Option<String>,
    /// Longest joined line kept; longer lines keep their head, marked
    /// truncated, but a line of carriage-return redraws is split before a
    /// carriage return instead, where the pieces fit.
    pub max_line_bytes: usize,
    /// A partial (`P`) line still unfinished this long after its first piece
    /// is shipped as it stands; the rest follows as another record.
    #[serde(with = "serde_duration")]
    pub partial_timeout: Duration,
    /// Seal a batch at this many bytes of line text.
    pub batch_max_bytes: usize,
    /// Seal a batch at this many lines.
    pub batch_max_rows: usize,
    /// Seal a non-empty batch this long after its first line.
    #[serde(with = "serde_duration")]
    pub batch_max_age: Duration,
    /// How often idle files are checked for new data (filesystem events
    /// wake the tailer sooner).
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// How often the log tree is listed again, the fallback when filesystem
    /// events are lost.
    #[serde(with = "serde_duration")]
    pub rescan_interval: Duration,
    /// Most files followed at once.
    pub max_open_files: usize,
    /// Most bytes the disk spool holds before tailing pauses.
    pub spool_max_bytes: u64,
    /// Timeout of one delivery request.
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// Longest wait between two delivery attempts.
    #[serde(with = "serde_duration")]
    pub max_backoff: Duration,
    /// Address of the OTLP/HTTP receiver (`/v1/metrics`, `/v1/logs`); empty
    /// turns it off. A DaemonSet uses `0.0.0.0:4318` with a hostPort.
    pub otlp_listen: String,
    /// GPU counters (NVML, dcgm-exporter) and their pod attribution.
    pub gpu: crate::sources::gpu::GpuConfig,
    /// How the log and metric bodies shipped to the indexer are
    /// compressed: `zstd` (7–9× fewer bytes on the wire) or `none` (about
    /// a third less collector CPU, for an indexer on the same node or a
    /// link wider than the logs). Uncompressed bodies also fill the spool
    /// (`spool_max_bytes`) and the indexer's WAL 7–9× sooner.
    pub wire_compression: weft_model::batch::WireCompression,
    /// Pull training metrics (`weft_train_<key>`) out of log lines.
    pub extract_metrics: bool,
    /// Give each record a level read from its line's head (`error`, `warn`,
    /// …), `error` for a joined traceback without one. Off, every record's
    /// level is `unknown`.
    pub detect_levels: bool,
    /// Tag records matching the ML failure catalogue or `ml_events` with
    /// `ml_event` and count them in `weft_ml_events_total`. Off, nothing
    /// is tagged: failure panels and alert rules on `ml_event` see none.
    pub tag_ml_events: bool,
    /// Extra extraction rules: regexes whose named captures become metrics.
    pub extract_rules: Vec<crate::extract::ExtractRule>,
    /// Extra ML failure patterns: records matching `regex` get
    /// `ml_event=<name>`. They are tried before the built-in catalogue.
    pub ml_events: Vec<MlEventRule>,
    /// Joining multi-line records (tracebacks, stack dumps).
    pub multiline: MultilineConfig,
    /// Pod metadata (run, rank, labels) from the Kubernetes API.
    pub kubernetes: crate::kubernetes::KubernetesConfig,
    /// Least time between two writes of the checkpoint file. Lines
    /// acknowledged since the last write are read again after a crash and
    /// dropped by the indexer as duplicates.
    #[serde(with = "serde_duration")]
    pub checkpoint_interval: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            logs: PathBuf::from("/var/log/pods"),
            state: PathBuf::from("./weft-state"),
            indexer: "http://127.0.0.1:3100".into(),
            node: None,
            collector_id: None,
            tenant: "default".into(),
            bearer_token: None,
            max_line_bytes: 1024 * 1024,
            partial_timeout: Duration::from_secs(5),
            // 2 MiB (promtail ships 1 MiB): 4 MiB batches held ~9 MiB more
            // resident memory at 50 MB/s in, for no throughput.
            batch_max_bytes: 2 * 1024 * 1024,
            batch_max_rows: 32 * 1024,
            batch_max_age: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(5),
            max_open_files: 4096,
            spool_max_bytes: 512 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(10),
            checkpoint_interval: Duration::from_millis(500),
            otlp_listen: "127.0.0.1:4318".into(),
            gpu: Default::default(),
            wire_compression: Default::default(),
            extract_metrics: true,
            detect_levels: true,
            tag_ml_events: true,
            extract_rules: Vec::new(),
            ml_events: Vec::new(),
            multiline: MultilineConfig::default(),
            kubernetes: Default::default(),
        }
    }
}

/// A user pattern for `ml_event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlEventRule {
    /// The tag, e.g. `dataloader_crash` (letters, digits, `_`).
    pub name: String,
    /// Regular expression matched against the whole record.
    pub regex: String,
}

/// Settings of multi-line joining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// Join tracebacks and stack dumps into one record.
    pub enabled: bool,
    /// Most lines in one record.
    pub max_lines: usize,
    /// Most bytes in one record.
    pub max_bytes: usize,
    /// A record with no new line for this long is closed.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        let limits = crate::multiline::MultilineLimits::default();
        Self {
            enabled: true,
            max_lines: limits.max_lines,
            max_bytes: limits.max_bytes,
            timeout: limits.timeout,
        }
    }
}

impl CollectorConfig {
    /// The record processing this config asks for (extraction, tagging,
    /// joining), with every user pattern compiled.
    pub fn record_processing(&self) -> Result<crate::batcher::RecordProcessing, crate::CollectorError> {
        let extractor = if self.extract_metrics {
            Some(crate::extract::MetricExtractor::new(&self.extract_rules)?)
        } else {
            None
        };
        if !self.tag_ml_events && !self.ml_events.is_empty() {
            return Err(crate::CollectorError::Config(format!(
                "collector.ml_events has {} rule(s) but collector.tag_ml_events is false: they would never tag anything",
                self.ml_events.len()
            )));
        }
        let mut user = Vec::new();
        for rule in &self.ml_events {
            if rule.name.is_empty() || !rule.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(crate::CollectorError::Config(format!(
                    "collector.ml_events: name {:?} must be letters, digits and _",
                    rule.name
                )));
            }
            let regex = regex::Regex::new(&rule.regex)
                .map_err(|e| crate::CollectorError::Config(format!("collector.ml_events {:?}: invalid regex: {e}", rule.name)))?;
            user.push(weft_model::events::UserEvent {
                name: rule.name.clone(),
                regex,
            });
        }
        let multiline = self.multiline.enabled.then_some(crate::multiline::MultilineLimits {
            max_lines: self.multiline.max_lines.max(1),
            max_bytes: self.multiline.max_bytes.clamp(1024, self.max_line_bytes),
            timeout: self.multiline.timeout,
        });
        Ok(crate::batcher::RecordProcessing {
            extractor,
            classifier: weft_model::events::EventClassifier::new(user),
            tagging: crate::batcher::Tagging {
                levels: self.detect_levels,
                events: self.tag_ml_events,
            },
            compression: self.wire_compression,
            multiline,
            pods: None,
        })
    }

    /// Checks values that parse but make no sense (or that the wire batch
    /// cannot hold).
    pub fn validate(&self) -> Result<(), crate::CollectorError> {
        let bad = |what: &str| Err(crate::CollectorError::Config(what.to_string()));
        if !(1024..=MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            return bad("collector.max_line_bytes must be between 1024 and 256 MiB");
        }
        if self.batch_max_bytes == 0 || self.batch_max_rows == 0 {
            return bad("collector.batch_max_bytes and batch_max_rows must be positive");
        }
        // A batch's text (its byte limit plus the line that crosses it) is
        // one Arrow string column: 32-bit offsets.
        if self.batch_max_bytes > MAX_BATCH_BYTES {
            return bad("collector.batch_max_bytes must be at most 1 GiB");
        }
        if self.batch_max_age.is_zero() || self.poll_interval.is_zero() || self.rescan_interval.is_zero() {
            return bad("collector durations must be positive");
        }
        if !(self.indexer.starts_with("http://") || self.indexer.starts_with("https://")) {
            return bad("collector.indexer must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The node name: configured, else `NODE_NAME`, else the hostname.
    pub fn node_name(&self) -> String {
        node_name(self.node.as_deref())
    }
}

/// The node name: `configured`, else `NODE_NAME`, else the hostname.
pub fn node_name(configured: Option<&str>) -> String {
    if let Some(node) = configured.filter(|n| !n.is_empty()) {
        return node.to_string();
    }
    if let Ok(node) = std::env::var("NODE_NAME") {
        if !node.is_empty() {
            return node;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_a_batch_cannot_hold_are_refused() {
        let ok = CollectorConfig::default();
        assert!(ok.validate().is_ok());
        let err = |config: CollectorConfig| config.validate().unwrap_err().to_string();
        assert!(err(CollectorConfig {
            batch_max_bytes: 3 << 30,
            ..ok.clone()
        })
        .contains("batch_max_bytes must be at most 1 GiB"));
        assert!(err(CollectorConfig {
            max_line_bytes: 1 << 30,
            ..ok.clone()
        })
        .contains("max_line_bytes must be between 1024 and 256 MiB"));
        assert!(err(CollectorConfig { max_line_bytes: 100, ..ok }).contains("max_line_bytes"));
    }

    /// `detect_levels` and `tag_ml_events` set the assembler's tagging (on
    /// by default); `ml_events` rules with tagging off are refused.
    #[test]
    fn level_and_event_tagging_follow_the_config() {
        use crate::batcher::Tagging;
        let on = CollectorConfig::default().record_processing().unwrap();
        assert_eq!(
            on.tagging,
            Tagging {
                levels: true,
                events: true
            }
        );
        let off = CollectorConfig {
            detect_levels: false,
            tag_ml_events: false,
            ..Default::default()
        };
        assert_eq!(
            off.record_processing().unwrap().tagging,
            Tagging {
                levels: false,
                events: false
            }
        );
        let rules = CollectorConfig {
            ml_events: vec![MlEventRule {
                name: "dataloader_crash".into(),
                regex: "DataLoader worker".into(),
            }],
            ..off
        };
        let err = rules.record_processing().expect_err("refused").to_string();
        assert!(
            err.contains("collector.ml_events") && err.contains("tag_ml_events is false"),
            "{err}"
        );
    }
}
