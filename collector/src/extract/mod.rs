//! Training metrics pulled out of ordinary stdout, with no change to the
//! training job: Hugging Face Trainer dict lines, JSON and logfmt lines
//! that carry training keys, tqdm / PyTorch Lightning progress bars, Keras
//! progress lines, DeepSpeed and Megatron-LM iteration lines, plus user
//! rules (regexes with named captures) from the config. Each number becomes
//! a sample of `weft_train_<key>`; the line itself stays in the log.
//!
//! Every recognizer first looks for a cheap marker, so lines that carry no
//! metrics (most of them) cost a few substring scans.

mod recognizers;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use recognizers::normalize_key;

/// A normalized metric key: the common ones (`loss`, `step`,
/// `learning_rate`, …) borrowed from a table, so extracting a sample
/// allocates nothing (allocating and freeing a string per sample had
/// been about 3 % of the collector's `perf` samples).
pub type MetricKey = std::borrow::Cow<'static, str>;

/// Prefix of extracted series names.
pub const METRIC_PREFIX: &str = "weft_train_";

/// A user rule from the config: every named capture that holds a number
/// becomes `weft_train_<capture name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractRule {
    /// A name for error messages.
    pub name: String,
    /// Regular expression with named captures, e.g.
    /// `step (?P<step>\d+) .* reward (?P<reward>[-0-9.eE]+)`.
    pub regex: String,
}

/// Finds training metrics in log lines.
#[derive(Clone, Debug, Default)]
pub struct MetricExtractor {
    rules: Vec<(String, Regex)>,
}

impl MetricExtractor {
    /// An extractor with the built-in recognizers and `rules`.
    pub fn new(rules: &[ExtractRule]) -> Result<Self, crate::CollectorError> {
        let mut compiled = Vec::new();
        for rule in rules {
            let regex = Regex::new(&rule.regex)
                .map_err(|e| crate::CollectorError::Config(format!("extract rule {:?}: invalid regex: {e}", rule.name)))?;
            if regex.capture_names().flatten().next().is_none() {
                return Err(crate::CollectorError::Config(format!(
                    "extract rule {:?}: needs at least one named capture (?P<name>…)",
                    rule.name
                )));
            }
            compiled.push((rule.name.clone(), regex));
        }
        Ok(Self { rules: compiled })
    }

    /// Appends `(key, value)` for every metric found in `line`; keys are
    /// normalized (`learning_rate`, `step`, `lm_loss`, …) without the prefix.
    pub fn extract(&self, line: &str, out: &mut Vec<(MetricKey, f64)>) {
        let before = out.len();
        recognizers::extract_builtin(line, out);
        for (_, regex) in &self.rules {
            if let Some(captures) = regex.captures(line) {
                for name in regex.capture_names().flatten() {
                    if let Some(value) = captures.name(name).and_then(|m| recognizers::parse_number(m.as_str())) {
                        out.push((normalize_key(name), value));
                    }
                }
            }
        }
        // One value per key and line: the last one found wins.
        if out.len() - before <= 32 {
            // A line holds a handful of keys: a scan, not a hash set per line.
            let mut at = before;
            while at < out.len() {
                if out[at + 1..].iter().any(|(k, _)| *k == out[at].0) {
                    out.remove(at);
                } else {
                    at += 1;
                }
            }
        } else {
            let mut seen = std::collections::HashSet::new();
            let mut kept: Vec<(MetricKey, f64)> = out.drain(before..).rev().filter(|(k, _)| seen.insert(k.clone())).collect();
            kept.reverse();
            out.extend(kept);
        }
    }
}

#[cfg(test)]
mod tests;
