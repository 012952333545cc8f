//! Rule evaluation semantics on real splits, as Prometheus defines them:
//! `for` holds an alert pending, `keep_firing_for` keeps it firing through
//! a gap, resolved alerts leave after a while, recording rules and `ALERTS`
//! are written back and can be queried, LogQL groups work, and the rules
//! API has Prometheus' shape.

use std::collections::HashMap;
use std::sync::Arc;

use weft_indexer::{Indexer, IndexerConfig};
use weft_model::batch::encode_ipc;
use weft_model::metric::MetricBatchBuilder;
use weft_model::LabelSet;
use weft_query::rules::file::parse_rule_file;
use weft_query::rules::{AlertState, RuleManager, RulesConfig, SampleWriter};
use weft_query::{QueryConfig, QueryService};

const T: i64 = 1_795_600_800_000;
const S: i64 = 1000;

struct Writer(Arc<Indexer>);

impl SampleWriter for Writer {
    fn write(&self, tenant: &str, body: Vec<u8>) -> Result<(), String> {
        self.0
            .ingest_metrics(tenant, &body, "rules")
            .map(|_| ())
            .map_err(|e| e.to_string())?;
        self.0.commit().map(|_| ()).map_err(|e| e.to_string())
    }
}

const RULES: &str = r#"groups:
  - name: semantics
    interval: 10s
    rules:
      - alert: HighLoss
        expr: weft_train_loss > 5
        for: 20s
        keep_firing_for: 30s
        labels:
          severity: warning
        annotations:
          summary: "loss {{ $value }} in {{ $labels.run }}"
      - record: run:weft_train_loss:max
        expr: max by (run) (weft_train_loss)
"#;

fn setup() -> (tempfile::TempDir, Arc<Indexer>, Arc<QueryService>, Arc<RuleManager>) {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let indexer = Indexer::open(dir.path(), IndexerConfig::default(), &registry).unwrap();
    let service = QueryService::new(dir.path(), QueryConfig::default(), &registry);
    let groups = parse_rule_file(RULES, "semantics.yaml", std::time::Duration::from_secs(30)).unwrap();
    let config = RulesConfig {
        builtin: false,
        ..Default::default()
    };
    let writer: Arc<dyn SampleWriter> = Arc::new(Writer(indexer.clone()));
    let manager = RuleManager::new(
        service.clone(),
        groups,
        &config,
        &dir.path().join("rules"),
        Some(writer),
        None,
        &registry,
    )
    .unwrap();
    (dir, indexer, service, manager)
}

fn loss(indexer: &Indexer, points: &[(i64, f64)]) {
    let series = LabelSet::parse(r#"{__name__="weft_train_loss", run="llama", rank="0"}"#)
        .unwrap()
        .to_string();
    let mut builder = MetricBatchBuilder::new();
    for (t, v) in points {
        builder.append(&series, *t, *v);
    }
    indexer
        .ingest_metrics("default", &encode_ipc(&[builder.finish()], HashMap::new()).unwrap(), "test")
        .unwrap();
    indexer.commit().unwrap();
}

fn state(manager: &RuleManager) -> Option<AlertState> {
    manager.active_alerts().first().map(|a| a.state)
}

#[test]
fn for_and_keep_firing_for_follow_prometheus() {
    let (_dir, indexer, _service, manager) = setup();
    // High loss from T to T+60s, then a gap (no samples), then low loss.
    loss(&indexer, &(0..=6).map(|i| (T + i * 10 * S, 9.0)).collect::<Vec<_>>());
    manager.evaluate_group(0, T);
    assert_eq!(state(&manager), Some(AlertState::Pending));
    manager.evaluate_group(0, T + 10 * S);
    assert_eq!(state(&manager), Some(AlertState::Pending), "20s not yet held");
    manager.evaluate_group(0, T + 20 * S);
    assert_eq!(state(&manager), Some(AlertState::Firing));
    let alert = &manager.active_alerts()[0];
    assert_eq!(alert.annotations["summary"], "loss 9 in llama");
    assert_eq!(alert.labels["severity"], "warning");
    assert_eq!(alert.active_at, T);
    // The last high sample is at T+60s; with the 5m lookback it is seen
    // up to T+350s, then gone.
    manager.evaluate_group(0, T + 350 * S);
    assert_eq!(state(&manager), Some(AlertState::Firing));
    manager.evaluate_group(0, T + 370 * S);
    assert_eq!(
        state(&manager),
        Some(AlertState::Firing),
        "keep_firing_for holds it through the gap"
    );
    manager.evaluate_group(0, T + 390 * S);
    assert_eq!(
        state(&manager),
        Some(AlertState::Firing),
        "30s counted from the first evaluation that missed it"
    );
    manager.evaluate_group(0, T + 410 * S);
    assert_eq!(state(&manager), None, "resolved once keep_firing_for ran out");
    let resolved = manager.rules_json(None)["groups"][0]["rules"][0]["state"].clone();
    assert_eq!(resolved, "inactive");
    // A pending alert that disappears is dropped, not resolved.
    loss(&indexer, &[(T + 1000 * S, 9.0)]);
    manager.evaluate_group(0, T + 1000 * S);
    assert_eq!(state(&manager), Some(AlertState::Pending));
    loss(&indexer, &[(T + 1010 * S, 1.0)]);
    manager.evaluate_group(0, T + 1010 * S);
    assert_eq!(state(&manager), None);
}

#[test]
fn records_and_alerts_are_written_back_and_listed() {
    let (_dir, indexer, service, manager) = setup();
    loss(&indexer, &[(T, 9.0), (T + 10 * S, 7.5)]);
    manager.evaluate_group(0, T);
    manager.evaluate_group(0, T + 10 * S);
    let source =
        weft_query::promql::source::MetricStore::new(service.engine.store().clone(), &service.data_dir, "default", &service.metric_splits);
    let query = |q: &str| {
        let expr = weft_query::promql::engine::parse(q).unwrap();
        match weft_query::promql::engine::query_instant(&source, &expr, T + 10 * S, Default::default()).unwrap() {
            weft_query::promql::engine::PromResult::Vector(v) => v,
            other => panic!("{other:?}"),
        }
    };
    let recorded = query("run:weft_train_loss:max");
    assert_eq!(recorded.len(), 1);
    assert_eq!((recorded[0].0.get("run"), recorded[0].2), (Some("llama"), 7.5));
    let alerts = query(r#"ALERTS{alertname="HighLoss"}"#);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0.get("alertstate"), Some("pending"));

    let rules = manager.rules_json(None);
    let group = &rules["groups"][0];
    assert_eq!(group["name"], "semantics");
    assert_eq!(group["file"], "semantics.yaml");
    assert_eq!(group["interval"], 10.0);
    let alerting = &group["rules"][0];
    assert_eq!(alerting["type"], "alerting");
    assert_eq!(alerting["state"], "pending");
    assert_eq!(alerting["duration"], 20);
    assert_eq!(alerting["keepFiringFor"], 30);
    assert_eq!(alerting["health"], "ok");
    assert_eq!(alerting["alerts"][0]["value"], "7.5");
    assert_eq!(alerting["alerts"][0]["labels"]["alertname"], "HighLoss");
    assert_eq!(group["rules"][1]["type"], "recording");
    assert_eq!(
        manager.rules_json(Some("record"))["groups"][0]["rules"].as_array().unwrap().len(),
        1
    );
    let alerts = manager.alerts_json();
    assert_eq!(alerts["alerts"][0]["state"], "pending");
    assert_eq!(alerts["alerts"][0]["activeAt"], "2026-11-25T10:00:00.000Z");
}

#[test]
fn a_failing_rule_reports_its_error_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let _indexer = Indexer::open(dir.path(), IndexerConfig::default(), &registry).unwrap();
    let service = QueryService::new(dir.path(), QueryConfig::default(), &registry);
    let text = r#"groups:
  - name: g
    rules:
      - alert: Broken
        expr: (vector(1) or label_replace(vector(2), "b", "1", "", "")) + on() vector(3)
      - alert: Works
        expr: vector(1)
"#;
    let groups = parse_rule_file(text, "g.yaml", std::time::Duration::from_secs(30)).unwrap();
    let config = RulesConfig {
        builtin: false,
        ..Default::default()
    };
    let manager = RuleManager::new(service, groups, &config, &dir.path().join("rules"), None, None, &registry).unwrap();
    manager.evaluate_group(0, T);
    let rules = manager.rules_json(None);
    let broken = &rules["groups"][0]["rules"][0];
    assert_eq!(broken["health"], "err");
    assert!(broken["lastError"].as_str().unwrap().contains("duplicate series"), "{broken}");
    let works = &rules["groups"][0]["rules"][1];
    assert_eq!(works["health"], "ok");
    assert_eq!(works["state"], "firing", "no `for`: fires at once");
}
