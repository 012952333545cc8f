//! Rule files in Prometheus' format (`groups:` of alerting and recording
//! rules), with one weft extension: a group may say `lang: logql` to write
//! its expressions in LogQL instead of PromQL. Loading checks everything a
//! rule needs to run (names, durations, expressions, templates) and points
//! at the line of the rule at fault.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::template::Template;
use crate::QueryError;

/// Expression language of a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    Promql,
    Logql,
}

/// A rule file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileText {
    #[serde(default)]
    pub groups: Vec<GroupText>,
}

/// A rule group as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupText {
    pub name: String,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub lang: Lang,
    /// Most alerts (or recorded series) one rule may produce; 0 is no limit.
    #[serde(default)]
    pub limit: usize,
    /// Labels added to every rule of the group.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<RuleText>,
}

/// A rule as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleText {
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub keep_firing_for: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed expression.
#[derive(Clone, Debug)]
pub enum RuleExpr {
    Promql(promql_parser::parser::Expr),
    Logql(crate::logql::ast::Expr),
}

/// What a rule makes.
#[derive(Clone, Debug)]
pub enum RuleKind {
    Alert {
        name: String,
        for_: Duration,
        keep_firing_for: Duration,
        annotations: Vec<(String, Template)>,
    },
    Record {
        name: String,
    },
}

/// A checked rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub kind: RuleKind,
    /// The expression as written.
    pub query: String,
    pub expr: RuleExpr,
    /// Label templates (rendered per alert; plain text for records).
    pub labels: Vec<(String, Template)>,
    /// Labels as written, for the API.
    pub labels_text: BTreeMap<String, String>,
    pub annotations_text: BTreeMap<String, String>,
}

impl Rule {
    pub fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Alert { name, .. } | RuleKind::Record { name } => name,
        }
    }
}

/// A checked group.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    /// Where the group came from (a path, or `builtin`).
    pub file: String,
    pub interval: Duration,
    pub lang: Lang,
    pub limit: usize,
    pub rules: Vec<Rule>,
}

fn duration(text: &Option<String>, what: &str) -> Result<Duration, String> {
    match text {
        None => Ok(Duration::ZERO),
        Some(t) => weft_model::time::parse_duration(t)
            .map(|ns| Duration::from_nanos(ns.max(0) as u64))
            .map_err(|e| format!("{what}: {e}")),
    }
}

fn valid_metric_name(name: &str) -> bool {
    !name.is_empty() && !name.as_bytes()[0].is_ascii_digit() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// 1-based line of the `n`-th (0-based) list item of `text` whose first
/// key is one of `keys` (`- alert: …`); `None` when the file is not laid
/// out in block style.
fn nth_key_line(text: &str, keys: &[&str], n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let Some(item) = l.trim_start().strip_prefix('-') else {
                return false;
            };
            let item = item.trim_start();
            keys.iter().any(|k| item.starts_with(k) && item[k.len()..].starts_with(':'))
        })
        .nth(n)
        .map(|(i, _)| i + 1)
}

/// First keys a rule item may start with.
const RULE_KEYS: [&str; 6] = ["alert", "record", "expr", "for", "keep_firing_for", "annotations"];
/// First keys a group item may start with.
const GROUP_KEYS: [&str; 5] = ["name", "interval", "rules", "lang", "limit"];

fn check_rule(rule: &RuleText, lang: Lang, group_labels: &BTreeMap<String, String>) -> Result<Rule, String> {
    let expr = match lang {
        Lang::Promql => RuleExpr::Promql(crate::promql::engine::parse(&rule.expr).map_err(|e| format!("expr: {e}"))?),
        Lang::Logql => {
            let parsed = crate::logql::parser::parse(&rule.expr).map_err(|e| format!("expr: {e}"))?;
            if matches!(parsed, crate::logql::ast::Expr::Log(_)) {
                return Err("expr: a rule needs a metric query (count_over_time, rate, …), not a log query".into());
            }
            RuleExpr::Logql(parsed)
        }
    };
    let mut labels_text = group_labels.clone();
    labels_text.extend(rule.labels.clone());
    let mut labels = Vec::new();
    for (name, value) in &labels_text {
        weft_model::labels::validate_label_name(name).map_err(|e| format!("labels: {e}"))?;
        labels.push((name.clone(), Template::parse(value).map_err(|e| format!("label {name}: {e}"))?));
    }
    let kind = match (&rule.alert, &rule.record) {
        (Some(_), Some(_)) => return Err("a rule is either `alert` or `record`, not both".into()),
        (None, None) => return Err("a rule needs `alert` or `record`".into()),
        (Some(name), None) => {
            if name.trim().is_empty() {
                return Err("alert: the name is empty".into());
            }
            let mut annotations = Vec::new();
            for (key, value) in &rule.annotations {
                annotations.push((key.clone(), Template::parse(value).map_err(|e| format!("annotation {key}: {e}"))?));
            }
            RuleKind::Alert {
                name: name.clone(),
                for_: duration(&rule.for_, "for")?,
                keep_firing_for: duration(&rule.keep_firing_for, "keep_firing_for")?,
                annotations,
            }
        }
        (None, Some(name)) => {
            if !valid_metric_name(name) {
                return Err(format!("record: {name:?} is not a valid metric name"));
            }
            if rule.for_.is_some() || rule.keep_firing_for.is_some() || !rule.annotations.is_empty() {
                return Err("recording rules take no `for`, `keep_firing_for` or `annotations`".into());
            }
            RuleKind::Record { name: name.clone() }
        }
    };
    Ok(Rule {
        kind,
        query: rule.expr.clone(),
        expr,
        labels,
        labels_text,
        annotations_text: rule.annotations.clone(),
    })
}

/// Parses and checks a rule file. `file` names it in errors and in the
/// API; `default_interval` applies to groups without one.
pub fn parse_rule_file(text: &str, file: &str, default_interval: Duration) -> Result<Vec<Group>, QueryError> {
    let bad = |line: Option<usize>, message: String| {
        QueryError::Config(match line {
            Some(line) => format!("{file}:{line}: {message}"),
            None => format!("{file}: {message}"),
        })
    };
    let parsed: RuleFileText = if text.trim().is_empty() {
        RuleFileText::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            bad(line, e.to_string())
        })?
    };
    let mut names = HashSet::new();
    let mut groups = Vec::new();
    let mut rule_index = 0usize;
    for (g, group) in parsed.groups.iter().enumerate() {
        let group_line = nth_key_line(text, &GROUP_KEYS, g);
        if group.name.trim().is_empty() {
            return Err(bad(group_line, "group name is empty".into()));
        }
        if !names.insert(group.name.clone()) {
            return Err(bad(group_line, format!("group {:?} is defined twice", group.name)));
        }
        let interval = match &group.interval {
            None => default_interval,
            Some(_) => duration(&group.interval, "interval").map_err(|e| bad(group_line, format!("group {:?}: {e}", group.name)))?,
        };
        if interval < Duration::from_secs(1) {
            return Err(bad(group_line, format!("group {:?}: interval must be at least 1s", group.name)));
        }
        for name in group.labels.keys() {
            weft_model::labels::validate_label_name(name).map_err(|e| bad(group_line, format!("group labels: {e}")))?;
        }
        let mut rules = Vec::new();
        for rule in &group.rules {
            let line = nth_key_line(text, &RULE_KEYS, rule_index);
            rule_index += 1;
            let what = rule.alert.as_deref().or(rule.record.as_deref()).unwrap_or("?");
            rules.push(
                check_rule(rule, group.lang, &group.labels)
                    .map_err(|e| bad(line, format!("group {:?}, rule {what:?}: {e}", group.name)))?,
            );
        }
        groups.push(Group {
            name: group.name.clone(),
            file: file.to_string(),
            interval,
            lang: group.lang,
            limit: group.limit,
            rules,
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"groups:
  - name: training
    interval: 15s
    rules:
      - alert: NanLoss
        expr: weft_train_loss != weft_train_loss
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: "NaN loss in {{ $labels.run }}"
      - record: run:weft_train_loss:avg
        expr: avg by (run) (weft_train_loss)
  - name: logs
    lang: logql
    rules:
      - alert: CudaOom
        expr: sum by (namespace, pod) (count_over_time({namespace=~".+"} | ml_event="cuda_oom" [5m])) > 0
"#;

    #[test]
    fn a_good_file_loads() {
        let groups = parse_rule_file(GOOD, "good.yaml", Duration::from_secs(30)).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].interval, Duration::from_secs(15));
        assert_eq!(groups[1].interval, Duration::from_secs(30));
        assert!(matches!(groups[1].rules[0].expr, RuleExpr::Logql(_)));
        match &groups[0].rules[0].kind {
            RuleKind::Alert { for_, .. } => assert_eq!(*for_, Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn label_keys_named_like_rule_keys_do_not_shift_lines() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: vector(1)\n        labels:\n          alert: x\n          name: y\n      - expr: vector(\n        alert: B\n";
        let err = parse_rule_file(text, "r.yaml", Duration::from_secs(30)).unwrap_err().to_string();
        assert!(err.starts_with("r.yaml:9: group \"g\", rule \"B\""), "{err}");
    }

    #[test]
    fn errors_point_at_the_rule() {
        let bad_expr = GOOD.replace("avg by (run) (weft_train_loss)", "avg by (run) (weft_train_loss");
        let err = parse_rule_file(&bad_expr, "r.yaml", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.yaml:12: group \"training\", rule \"run:weft_train_loss:avg\": expr:"),
            "{err}"
        );
        let bad_template = GOOD.replace("{{ $labels.run }}", "{{ if $labels.run }}");
        let err = parse_rule_file(&bad_template, "r.yaml", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.yaml:5:") && err.contains("annotation summary"), "{err}");
        let log_query = GOOD.replace(
            r#"sum by (namespace, pod) (count_over_time({namespace=~".+"} | ml_event="cuda_oom" [5m])) > 0"#,
            r#"'{namespace="ml"}'"#,
        );
        let err = parse_rule_file(&log_query, "r.yaml", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.yaml:17:") && err.contains("metric query"), "{err}");
        let typo = GOOD.replace("    interval: 15s", "    intervall: 15s");
        let err = parse_rule_file(&typo, "r.yaml", Duration::from_secs(30)).unwrap_err().to_string();
        assert!(err.contains("r.yaml:3") && err.contains("intervall"), "{err}");
        let both = GOOD.replace(
            "      - record: run:weft_train_loss:avg",
            "      - record: run:weft_train_loss:avg\n        alert: X",
        );
        let err = parse_rule_file(&both, "r.yaml", Duration::from_secs(30)).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let twice = GOOD.replace("name: logs", "name: training");
        assert!(parse_rule_file(&twice, "r.yaml", Duration::from_secs(30))
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        let bad_for = GOOD.replace("for: 1m", "for: soon");
        assert!(parse_rule_file(&bad_for, "r.yaml", Duration::from_secs(30))
            .unwrap_err()
            .to_string()
            .starts_with("r.yaml:5:"));
    }
}
