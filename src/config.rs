//! weft's config file (YAML): one file for every role, each reading its
//! section. Unknown fields are errors that name the file, line and field.
//! A full example with every field is `weft.example.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_collector::CollectorConfig;
use weft_indexer::IndexerConfig;
use weft_query::QueryConfig;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeftConfig {
    /// Address of the HTTP API (standalone, indexer and query roles).
    pub listen: Option<SocketAddr>,
    /// Data directory: WAL, catalog and splits (indexer and query roles).
    pub data: Option<PathBuf>,
    /// Log filter (`info`, `weft=debug,info`, …); `RUST_LOG` wins.
    pub log_level: Option<String>,
    /// `text` for people, `json` (one object per line) for log pipelines.
    pub log_format: LogFormat,
    pub collector: CollectorConfig,
    pub indexer: IndexerConfig,
    pub query: QueryConfig,
    /// Shared object storage for splits (indexer pushes, query pulls).
    pub storage: weft_indexer::remote::StorageConfig,
    /// Alerting and recording rules (standalone and query roles).
    pub rules: weft_query::rules::RulesConfig,
    /// Where alerts go: routes and receivers.
    pub alerting: weft_query::notify::AlertingConfig,
}

/// How weft writes its own logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl WeftConfig {
    /// Reads a config file; errors say which file, where and why.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Parses config text (YAML).
    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_sets_every_section() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/weft.example.yaml")).unwrap();
        let config = WeftConfig::parse(&text).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:3100".parse().unwrap()));
        assert_eq!(config.collector.logs, PathBuf::from("/var/log/pods"));
        assert_eq!(config.indexer.retention, std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(config.query.max_entries, 10_000);
        // The example spells out every default, so it round-trips to them.
        let defaults = WeftConfig {
            listen: config.listen,
            data: config.data.clone(),
            log_level: config.log_level.clone(),
            ..Default::default()
        };
        assert_eq!(config.indexer, defaults.indexer);
        assert_eq!(config.query, defaults.query);
        assert_eq!(config.rules, defaults.rules);
        assert_eq!(config.alerting, defaults.alerting);
        assert_eq!(config.collector.multiline, defaults.collector.multiline);
        assert_eq!(config.collector.wire_compression, defaults.collector.wire_compression);
        assert_eq!(
            (config.collector.detect_levels, config.collector.tag_ml_events),
            (defaults.collector.detect_levels, defaults.collector.tag_ml_events)
        );
    }

    #[test]
    fn wire_compression_is_zstd_or_none() {
        use weft_model::batch::WireCompression;
        let config = WeftConfig::parse("collector:\n  wire_compression: none\n").unwrap();
        assert_eq!(config.collector.wire_compression, WireCompression::Uncompressed);
        assert_eq!(WeftConfig::default().collector.wire_compression, WireCompression::Zstd);
        let err = WeftConfig::parse("collector:\n  wire_compression: gzip\n").unwrap_err().to_string();
        assert!(
            err.contains("gzip") && err.contains("zstd") && err.contains("none") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn typos_are_errors_with_line_and_field() {
        let err = WeftConfig::parse("collector:\n  logz: /x\n").unwrap_err().to_string();
        assert!(err.contains("logz") && err.contains("line 2"), "{err}");
        let err = WeftConfig::parse("indexer:\n  retention: forever\n").unwrap_err().to_string();
        assert!(err.contains("retention") || err.contains("duration"), "{err}");
    }
}
