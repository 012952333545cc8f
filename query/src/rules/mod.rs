//! Alerting and recording rules: Prometheus rule files (groups with an
//! interval, `for`, `keep_firing_for`, labels and annotation templates),
//! with groups that may be written in LogQL, a built-in pack of ML rules,
//! and an evaluator that keeps each alert's pending/firing/resolved state
//! in `<data>/rules/state.json` so a restart neither forgets a pending
//! `for` nor pages twice. Its state is served as Prometheus'
//! `/api/v1/rules` and `/api/v1/alerts`.

pub mod file;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_model::metric::{MetricBatchBuilder, METRIC_NAME};
use weft_model::time::serde_duration;
use weft_model::LabelSet;

use crate::logql::ast::{Expr as LogqlExpr, LabelFilter, LogRange, MatchOp, Matcher, Stage};
use crate::notify::integrations::{rfc3339_ms, NotifyAlert};
use crate::notify::{fingerprint, Notifier};
use crate::{QueryError, QueryService};
use file::{Group, Lang, Rule, RuleExpr, RuleKind};
use template::TemplateData;

/// The `by (…)` labels of the outermost aggregation of a LogQL expression.
fn by_labels(expr: &LogqlExpr) -> &[String] {
    match expr {
        LogqlExpr::VectorAgg(agg) if !agg.grouping.without => &agg.grouping.labels,
        LogqlExpr::RangeAgg(agg) => agg
            .grouping
            .as_ref()
            .filter(|g| !g.without)
            .map(|g| g.labels.as_slice())
            .unwrap_or(&[]),
        LogqlExpr::Binary(b) => {
            let lhs = by_labels(&b.lhs);
            if lhs.is_empty() {
                by_labels(&b.rhs)
            } else {
                lhs
            }
        }
        _ => &[],
    }
}

/// The first `{…} | … [range]` of a LogQL metric expression.
fn first_log_range(expr: &LogqlExpr) -> Option<&LogRange> {
    match expr {
        LogqlExpr::RangeAgg(agg) => Some(&agg.range),
        LogqlExpr::VectorAgg(agg) => first_log_range(&agg.inner),
        LogqlExpr::Binary(b) => first_log_range(&b.lhs).or_else(|| first_log_range(&b.rhs)),
        LogqlExpr::Negate(inner) => first_log_range(inner),
        _ => None,
    }
}

/// The built-in ML rule pack.
pub const BUILTIN_RULES: &str = include_str!("builtin.yaml");

/// How long a resolved alert is kept (and reported) after it resolved.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// The `rules:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule files; a `*` in the file name part matches any text.
    pub files: Vec<PathBuf>,
    /// Load the built-in ML rule pack. A file rule with the same alert
    /// name in a group of the same name replaces the built-in one.
    pub builtin: bool,
    /// Alert or record names to leave out (built-in or from files).
    pub disabled: Vec<String>,
    /// Interval of groups that set none.
    #[serde(with = "serde_duration")]
    pub evaluation_interval: Duration,
    /// Tenant whose data the rules read and where records are written.
    pub tenant: String,
    /// Indexer that takes recorded series when the query role runs alone
    /// (standalone writes in process).
    pub indexer: Option<String>,
    /// Bearer token for that indexer.
    pub indexer_bearer_token: Option<String>,
    /// Evaluate rules in this process. With several query replicas, enable
    /// it on one (each evaluating replica pages on its own).
    pub enabled: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            builtin: true,
            disabled: Vec::new(),
            // With group_wait 15s and ~3s from log line to split, a
            // failure reaches chat within about 35s.
            evaluation_interval: Duration::from_secs(15),
            tenant: "default".into(),
            indexer: None,
            indexer_bearer_token: None,
            enabled: true,
        }
    }
}

/// Writes recorded samples (and `ALERTS`) back into the store.
pub trait SampleWriter: Send + Sync {
    /// `body` is a metric batch (Arrow IPC, metric wire schema).
    fn write(&self, tenant: &str, body: Vec<u8>) -> Result<(), String>;
}

/// Writes records to an indexer over HTTP (`/api/v1/ingest/metrics`),
/// for a query role running without an indexer in its process.
pub struct HttpWriter {
    url: String,
    token: Option<String>,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpWriter {
    /// A writer to the indexer at `base` (e.g. `http://weft-indexer:3100`).
    pub fn new(base: &str, token: Option<String>, runtime: tokio::runtime::Handle) -> Self {
        weft_model::tls::install_crypto_provider();
        Self {
            url: format!("{}/api/v1/ingest/metrics", base.trim_end_matches('/')),
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client builds"),
            runtime,
        }
    }
}

impl SampleWriter for HttpWriter {
    fn write(&self, tenant: &str, body: Vec<u8>) -> Result<(), String> {
        let mut request = self
            .client
            .post(&self.url)
            .header("X-Scope-OrgID", tenant)
            .header("content-type", "application/vnd.apache.arrow.stream")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .map_err(|e| format!("indexer unreachable: {}", e.without_url()))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("indexer answered {}", response.status()))
            }
        })
    }
}

/// An alert's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Inactive,
}

impl AlertState {
    fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Inactive => "inactive",
        }
    }
}

/// One alert of a rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// Unix ms the condition was first seen.
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Unix ms of the last evaluation that returned it.
    pub last_seen: i64,
    /// Unix ms of the first evaluation that missed a firing alert (kept
    /// firing by `keep_firing_for` since then).
    #[serde(default)]
    pub keep_firing_since: Option<i64>,
    pub value: f64,
}

impl Alert {
    fn label_set(&self) -> LabelSet {
        LabelSet::from_pairs(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

#[derive(Clone, Debug, Default)]
struct RuleState {
    alerts: BTreeMap<String, Alert>,
    health: &'static str,
    last_error: String,
    last_evaluation: Option<i64>,
    evaluation_seconds: f64,
}

struct GroupState {
    group: Arc<Group>,
    rules: Vec<RuleState>,
    last_evaluation: Option<i64>,
    evaluation_seconds: f64,
}

/// The state file: per group, per rule key, the alerts.
#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    groups: BTreeMap<String, BTreeMap<String, Vec<Alert>>>,
}

/// Locks a mutex, going on with the data if a panic poisoned it (state
/// stays consistent: every update is a whole-value replace).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keys a rule within its group: its name, with `#n` for repeats.
fn rule_keys(group: &Group) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    group
        .rules
        .iter()
        .map(|r| {
            let n = seen.entry(r.name()).or_default();
            *n += 1;
            if *n == 1 {
                r.name().to_string()
            } else {
                format!("{}#{n}", r.name())
            }
        })
        .collect()
}

/// Loads rule files and the built-in pack into groups.
pub fn load_groups(config: &RulesConfig) -> Result<Vec<Group>, QueryError> {
    let mut groups: Vec<Group> = Vec::new();
    if config.builtin {
        groups = file::parse_rule_file(BUILTIN_RULES, "builtin", config.evaluation_interval)?;
    }
    let mut paths = Vec::new();
    for pattern in &config.files {
        paths.extend(expand(pattern)?);
    }
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| QueryError::Config(format!("rule file {}: {e}", path.display())))?;
        for group in file::parse_rule_file(&text, &path.display().to_string(), config.evaluation_interval)? {
            match groups.iter_mut().find(|g| g.name == group.name) {
                // A group of the built-in pack: file rules replace
                // built-in ones of the same name and add the others.
                Some(existing) if existing.file == "builtin" => {
                    for rule in group.rules {
                        match existing.rules.iter_mut().find(|r| r.name() == rule.name()) {
                            Some(slot) => *slot = rule,
                            None => existing.rules.push(rule),
                        }
                    }
                    existing.interval = group.interval;
                }
                Some(existing) => {
                    return Err(QueryError::Config(format!(
                        "rule group {:?} is defined in both {} and {}",
                        group.name, existing.file, group.file
                    )))
                }
                None => groups.push(group),
            }
        }
    }
    for group in &mut groups {
        group.rules.retain(|r| !config.disabled.iter().any(|d| d == r.name()));
    }
    groups.retain(|g| !g.rules.is_empty());
    Ok(groups)
}

/// Files matching a path whose last part may hold `*`.
fn expand(pattern: &Path) -> Result<Vec<PathBuf>, QueryError> {
    let name = pattern.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains('*') {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let dir = pattern.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let regex = regex::Regex::new(&format!("^{}$", regex::escape(&name).replace("\\*", ".*"))).expect("escaped pattern compiles");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| QueryError::Config(format!("rule files {}: {e}", pattern.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| regex.is_match(&n.to_string_lossy())))
        .collect();
    out.sort();
    Ok(out)
}

/// Evaluates rule groups and keeps their alerts.
pub struct RuleManager {
    service: Arc<QueryService>,
    tenant: String,
    groups: Vec<Mutex<GroupState>>,
    state_path: PathBuf,
    state_lock: Mutex<()>,
    writer: Option<Arc<dyn SampleWriter>>,
    notifier: Option<Arc<Notifier>>,
    evaluations: prometheus::IntCounterVec,
    failures: prometheus::IntCounterVec,
}

impl RuleManager {
    /// A manager for `groups`, restoring alert state from `state_dir`.
    pub fn new(
        service: Arc<QueryService>,
        groups: Vec<Group>,
        config: &RulesConfig,
        state_dir: &Path,
        writer: Option<Arc<dyn SampleWriter>>,
        notifier: Option<Arc<Notifier>>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, QueryError> {
        std::fs::create_dir_all(state_dir).map_err(|e| QueryError::Config(format!("{}: {e}", state_dir.display())))?;
        let state_path = state_dir.join("state.json");
        let saved: StateFile = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %state_path.display(), error = %e, "alert state unreadable; starting empty");
                StateFile::default()
            }),
            Err(_) => StateFile::default(),
        };
        let groups = groups
            .into_iter()
            .map(|group| {
                let keys = rule_keys(&group);
                let saved_group = saved.groups.get(&group.name);
                let rules = keys
                    .iter()
                    .map(|key| RuleState {
                        alerts: saved_group
                            .and_then(|g| g.get(key))
                            .into_iter()
                            .flatten()
                            .map(|a| (fingerprint(&a.label_set()), a.clone()))
                            .collect(),
                        health: "unknown",
                        ..Default::default()
                    })
                    .collect();
                Mutex::new(GroupState {
                    group: Arc::new(group),
                    rules,
                    last_evaluation: None,
                    evaluation_seconds: 0.0,
                })
            })
            .collect();
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &["rule_group"]).expect("valid metric");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        Ok(Arc::new(Self {
            service,
            tenant: config.tenant.clone(),
            groups,
            state_path,
            state_lock: Mutex::new(()),
            writer,
            notifier,
            evaluations: counter("weft_rule_group_evaluations_total", "Rule group evaluations"),
            failures: counter("weft_rule_evaluation_failures_total", "Rule evaluations that failed"),
        }))
    }

    /// Number of groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Interval of group `index`.
    pub fn interval(&self, index: usize) -> Duration {
        lock(&self.groups[index]).group.interval
    }

    fn query(&self, lang: Lang, rule: &Rule, at: i64) -> Result<Vec<(LabelSet, f64)>, QueryError> {
        match (&rule.expr, lang) {
            (RuleExpr::Promql(expr), _) => {
                let source = crate::promql::source::MetricStore::new(
                    self.service.engine.store().clone(),
                    &self.service.data_dir,
                    &self.tenant,
                    &self.service.metric_splits,
                );
                let limits = crate::promql::engine::EvalLimits {
                    max_series: self.service.config.max_series.max(1),
                    max_points: self.service.config.max_points,
                    ..Default::default()
                };
                match crate::promql::engine::query_instant(&source, expr, at, limits)? {
                    crate::promql::engine::PromResult::Vector(samples) => Ok(samples.into_iter().map(|(l, _, v)| (l, v)).collect()),
                    crate::promql::engine::PromResult::Scalar(_, v) => Ok(vec![(LabelSet::new(), v)]),
                    _ => Err(QueryError::Execution("rule result is not a vector or scalar".into())),
                }
            }
            (RuleExpr::Logql(expr), _) => match self.service.engine.instant(&self.tenant, expr, at.saturating_mul(1_000_000))? {
                crate::logql::eval::QueryResult::Vector(samples) => Ok(samples.into_iter().map(|s| (s.labels, s.value)).collect()),
                crate::logql::eval::QueryResult::Scalar(_, v) => Ok(vec![(LabelSet::new(), v)]),
                _ => Err(QueryError::Execution("rule result is not a vector or scalar".into())),
            },
        }
    }

    /// The evidence of an alert of a LogQL rule: the first record in the
    /// rule's window that its log query selects, narrowed to the alert's
    /// labels. Returns the record's telling line (the classifier's pick,
    /// e.g. the exception of a traceback) and its labels.
    fn evidence(&self, rule: &Rule, labels: &LabelSet, at: i64) -> (String, LabelSet) {
        let RuleExpr::Logql(expr) = &rule.expr else {
            return Default::default();
        };
        let Some(range) = first_log_range(expr) else {
            return Default::default();
        };
        let mut log = range.log.clone();
        // Grouping labels the sample lacks were empty on its records.
        let mut wanted = labels.clone();
        for name in by_labels(expr) {
            if wanted.get(name).is_none() {
                wanted.insert(name.clone(), "");
            }
        }
        for (name, value) in wanted.iter().filter(|(n, _)| *n != METRIC_NAME) {
            log.pipeline.push(Stage::LabelFilter(LabelFilter::Match(Matcher {
                name: name.to_string(),
                op: MatchOp::Eq,
                value: value.to_string(),
                regex: None,
            })));
        }
        let end = at.saturating_mul(1_000_000) - range.offset + 1;
        let start = end - range.range;
        let streams = match self.service.engine.logs(&self.tenant, &log, start, end, 1, false) {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(rule = rule.name(), error = %e, "evidence query failed");
                return Default::default();
            }
        };
        let Some((labels, record)) = streams
            .into_iter()
            .flat_map(|s| s.entries.into_iter().map(move |(ts, line)| (ts, s.labels.clone(), line)))
            .min_by_key(|(ts, _, _)| *ts)
            .map(|(_, labels, line)| (labels, line))
        else {
            return Default::default();
        };
        let line = match weft_model::events::EventClassifier::default().classify(&record) {
            Some(event) => event.line,
            None => record.lines().next().unwrap_or("").to_string(),
        };
        (line, labels)
    }

    /// Evaluates group `index` at `at` (Unix ms): runs every rule, moves
    /// alert states, writes records, saves the state and hands firing and
    /// resolved alerts to the notifier.
    pub fn evaluate_group(&self, index: usize, at: i64) {
        let started = Instant::now();
        let mut records = MetricBatchBuilder::new();
        let mut notify = Vec::new();
        // Queries run without the lock: the API reads state meanwhile.
        let (group, mut rules) = {
            let state = lock(&self.groups[index]);
            (state.group.clone(), state.rules.clone())
        };
        self.evaluations.with_label_values(&[&group.name]).inc();
        for (rule, rule_state) in group.rules.iter().zip(rules.iter_mut()) {
            let rule_started = Instant::now();
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.evaluate_rule(&group, rule, rule_state, at, &mut records)
            }));
            if step.is_err() {
                self.failures.with_label_values(&[&group.name]).inc();
                tracing::error!(group = %group.name, rule = rule.name(), "rule evaluation panicked");
                rule_state.health = "err";
                rule_state.last_error = "internal error: the evaluation panicked (see the log)".into();
            }
            rule_state.last_evaluation = Some(at);
            rule_state.evaluation_seconds = rule_started.elapsed().as_secs_f64();
            for alert in rule_state.alerts.values() {
                if alert.state == AlertState::Firing || alert.state == AlertState::Inactive && alert.resolved_at == Some(at) {
                    notify.push(self.notify_alert(alert));
                }
                if alert.state != AlertState::Inactive {
                    let mut series = alert.label_set();
                    series.insert(METRIC_NAME, "ALERTS");
                    series.insert("alertstate", alert.state.as_str());
                    records.append(&series.to_string(), at, 1.0);
                }
            }
        }
        {
            let mut state = lock(&self.groups[index]);
            state.rules = rules;
            state.last_evaluation = Some(at);
            state.evaluation_seconds = started.elapsed().as_secs_f64();
        }
        let group_name = group.name.clone();
        self.save();
        if let (Some(writer), false) = (&self.writer, records.is_empty()) {
            let body = weft_model::batch::encode_ipc(&[records.finish()], Default::default());
            match body.map_err(|e| e.to_string()).and_then(|b| writer.write(&self.tenant, b)) {
                Ok(()) => {}
                Err(e) => tracing::warn!(group = %group_name, error = %e, "writing recorded samples failed"),
            }
        }
        if let Some(notifier) = &self.notifier {
            notifier.observe(notify, at);
        }
    }

    /// Runs one rule: its query, then records or the alert state machine.
    fn evaluate_rule(&self, group: &Group, rule: &Rule, rule_state: &mut RuleState, at: i64, records: &mut MetricBatchBuilder) {
        {
            let result = self.query(group.lang, rule, at).and_then(|samples| {
                if group.limit > 0 && samples.len() > group.limit {
                    return Err(QueryError::Execution(format!(
                        "exceeded limit of {} with {} series",
                        group.limit,
                        samples.len()
                    )));
                }
                Ok(samples)
            });
            match result {
                Ok(samples) => {
                    rule_state.health = "ok";
                    rule_state.last_error.clear();
                    match &rule.kind {
                        RuleKind::Record { name } => {
                            for (labels, value) in samples {
                                let mut series = labels.clone();
                                series.remove(METRIC_NAME);
                                for (k, t) in &rule.labels {
                                    let data = TemplateData {
                                        labels: &labels,
                                        value,
                                        line: "",
                                        evidence: &LabelSet::new(),
                                    };
                                    series.insert(k.clone(), t.render(&data));
                                }
                                series.insert(METRIC_NAME, name.clone());
                                records.append(&series.to_string(), at, value);
                            }
                        }
                        RuleKind::Alert { .. } => self.step_alerts(group.lang, rule, rule_state, samples, at),
                    }
                }
                Err(e) => {
                    self.failures.with_label_values(&[&group.name]).inc();
                    tracing::warn!(group = %group.name, rule = rule.name(), error = %e, "rule evaluation failed");
                    rule_state.health = "err";
                    rule_state.last_error = e.to_string();
                }
            }
        }
    }

    fn notify_alert(&self, alert: &Alert) -> NotifyAlert {
        let labels = alert.label_set();
        let generator = self.notifier.as_ref().map(|n| n.external_url().to_string()).unwrap_or_default();
        NotifyAlert {
            fingerprint: fingerprint(&labels),
            labels,
            annotations: alert.annotations.clone(),
            // As Prometheus: an alert starts when it fires, not when pending.
            starts_at: alert.fired_at.unwrap_or(alert.active_at),
            ends_at: if alert.state == AlertState::Inactive {
                alert.resolved_at
            } else {
                None
            },
            value: alert.value,
            generator_url: format!("{}/api/v1/alerts", generator.trim_end_matches('/')),
            explore_url: None,
        }
    }

    /// Prometheus' alert state machine for one evaluation.
    fn step_alerts(&self, lang: Lang, rule: &Rule, state: &mut RuleState, samples: Vec<(LabelSet, f64)>, at: i64) {
        let RuleKind::Alert {
            name,
            for_,
            keep_firing_for,
            annotations,
        } = &rule.kind
        else {
            return;
        };
        let wants_evidence = lang == Lang::Logql
            && (annotations.iter().any(|(_, t)| t.uses_evidence()) || rule.labels.iter().any(|(_, t)| t.uses_evidence()));
        let mut seen = std::collections::HashSet::new();
        for (labels, value) in samples {
            // The evidence is looked up once, when the alert starts (always
            // when rule labels depend on it): probe with the labels that
            // do not need it.
            let labels_need_it = rule.labels.iter().any(|(_, t)| t.uses_evidence());
            let known = !labels_need_it && {
                let plain = TemplateData {
                    labels: &labels,
                    value,
                    line: "",
                    evidence: &LabelSet::new(),
                };
                let mut probe = labels.clone();
                probe.remove(METRIC_NAME);
                for (k, t) in &rule.labels {
                    probe.insert(k.clone(), t.render(&plain));
                }
                probe.insert("alertname", name.clone());
                state
                    .alerts
                    .get(&fingerprint(&probe))
                    .is_some_and(|a| a.state != AlertState::Inactive)
            };
            let (line, evidence) = if wants_evidence && !known {
                self.evidence(rule, &labels, at)
            } else {
                Default::default()
            };
            let data = TemplateData {
                labels: &labels,
                value,
                line: &line,
                evidence: &evidence,
            };
            let mut final_labels = labels.clone();
            final_labels.remove(METRIC_NAME);
            for (k, t) in &rule.labels {
                final_labels.insert(k.clone(), t.render(&data));
            }
            final_labels.insert("alertname", name.clone());
            let rendered: BTreeMap<String, String> = annotations.iter().map(|(k, t)| (k.clone(), t.render(&data))).collect();
            let fp = fingerprint(&final_labels);
            seen.insert(fp.clone());
            match state.alerts.get_mut(&fp) {
                Some(alert) if alert.state != AlertState::Inactive => {
                    alert.value = value;
                    alert.last_seen = at;
                    // Annotations drawn from evidence keep what the start found.
                    for (k, v) in rendered {
                        let from_evidence = annotations.iter().any(|(name, t)| *name == k && t.uses_evidence());
                        if !(wants_evidence && from_evidence) {
                            alert.annotations.insert(k, v);
                        }
                    }
                }
                _ => {
                    state.alerts.insert(
                        fp,
                        Alert {
                            labels: final_labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                            annotations: rendered,
                            state: AlertState::Pending,
                            active_at: at,
                            fired_at: None,
                            resolved_at: None,
                            last_seen: at,
                            keep_firing_since: None,
                            value,
                        },
                    );
                }
            }
        }
        let for_ms = for_.as_millis() as i64;
        let keep_ms = keep_firing_for.as_millis() as i64;
        state.alerts.retain(|fp, alert| {
            if seen.contains(fp) {
                alert.keep_firing_since = None;
                if alert.state == AlertState::Pending && at - alert.active_at >= for_ms {
                    alert.state = AlertState::Firing;
                    alert.fired_at = Some(at);
                }
                return true;
            }
            match alert.state {
                AlertState::Pending => false,
                // As Prometheus: kept from the first evaluation that missed it.
                AlertState::Firing if keep_ms > 0 && at - *alert.keep_firing_since.get_or_insert(at) < keep_ms => true,
                AlertState::Firing => {
                    alert.state = AlertState::Inactive;
                    alert.resolved_at = Some(at);
                    true
                }
                AlertState::Inactive => alert.resolved_at.is_some_and(|r| at - r < RESOLVED_RETENTION_MS),
            }
        });
    }

    fn save(&self) {
        let _guard = lock(&self.state_lock);
        let mut file = StateFile::default();
        for group in &self.groups {
            let group = lock(group);
            let keys = rule_keys(&group.group);
            let rules = keys
                .into_iter()
                .zip(&group.rules)
                .filter(|(_, r)| !r.alerts.is_empty())
                .map(|(k, r)| (k, r.alerts.values().cloned().collect()))
                .collect();
            file.groups.insert(group.group.name.clone(), rules);
        }
        let bytes = serde_json::to_vec(&file).expect("state serializes");
        let tmp = self.state_path.with_extension("json.tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &self.state_path));
        if let Err(e) = written {
            tracing::warn!(path = %self.state_path.display(), error = %e, "saving alert state failed");
        }
    }

    /// Runs every group on its interval until `stop` turns true.
    pub async fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for index in 0..self.groups.len() {
            let me = self.clone();
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.interval(index));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                    let worker = me.clone();
                    let at = weft_model::time::now_nanos() / 1_000_000;
                    if tokio::task::spawn_blocking(move || worker.evaluate_group(index, at)).await.is_err() {
                        tracing::error!(group = index, "rule evaluation panicked");
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn alert_json(alert: &Alert) -> Value {
        json!({
            "labels": alert.labels,
            "annotations": alert.annotations,
            "state": alert.state.as_str(),
            "activeAt": rfc3339_ms(alert.active_at),
            "value": crate::promql::engine::format_float(alert.value),
        })
    }

    /// `data` of `/api/v1/rules`. `kind` filters `alert` or `record`.
    pub fn rules_json(&self, kind: Option<&str>) -> Value {
        let mut groups = Vec::new();
        for group in &self.groups {
            let group = lock(group);
            let mut rules = Vec::new();
            for (rule, state) in group.group.rules.iter().zip(&group.rules) {
                let last = state
                    .last_evaluation
                    .map(rfc3339_ms)
                    .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
                let mut entry = json!({
                    "name": rule.name(),
                    "query": rule.query,
                    "labels": rule.labels_text,
                    "health": state.health,
                    "lastEvaluation": last,
                    "evaluationTime": state.evaluation_seconds,
                });
                if !state.last_error.is_empty() {
                    entry["lastError"] = json!(state.last_error);
                }
                match &rule.kind {
                    RuleKind::Alert { for_, keep_firing_for, .. } => {
                        if kind == Some("record") {
                            continue;
                        }
                        let active: Vec<&Alert> = state.alerts.values().filter(|a| a.state != AlertState::Inactive).collect();
                        let rule_state = if active.iter().any(|a| a.state == AlertState::Firing) {
                            "firing"
                        } else if active.is_empty() {
                            "inactive"
                        } else {
                            "pending"
                        };
                        entry["type"] = json!("alerting");
                        entry["state"] = json!(rule_state);
                        entry["duration"] = json!(for_.as_secs());
                        entry["keepFiringFor"] = json!(keep_firing_for.as_secs());
                        entry["annotations"] = json!(rule.annotations_text);
                        entry["alerts"] = Value::Array(active.into_iter().map(Self::alert_json).collect());
                    }
                    RuleKind::Record { .. } => {
                        if kind == Some("alert") {
                            continue;
                        }
                        entry["type"] = json!("recording");
                    }
                }
                rules.push(entry);
            }
            groups.push(json!({
                "name": group.group.name,
                "file": group.group.file,
                "interval": group.group.interval.as_secs_f64(),
                "limit": group.group.limit,
                "rules": rules,
                "lastEvaluation": group.last_evaluation.map(rfc3339_ms).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "evaluationTime": group.evaluation_seconds,
            }));
        }
        json!({ "groups": groups })
    }

    /// `data` of `/api/v1/alerts`: pending and firing alerts.
    pub fn alerts_json(&self) -> Value {
        let mut alerts = Vec::new();
        for group in &self.groups {
            let group = lock(group);
            for state in &group.rules {
                alerts.extend(
                    state
                        .alerts
                        .values()
                        .filter(|a| a.state != AlertState::Inactive)
                        .map(Self::alert_json),
                );
            }
        }
        json!({ "alerts": alerts })
    }

    /// Active alerts of every group (for tests and tools).
    pub fn active_alerts(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        for group in &self.groups {
            let group = lock(group);
            for state in &group.rules {
                out.extend(state.alerts.values().filter(|a| a.state != AlertState::Inactive).cloned());
            }
        }
        out
    }
}
