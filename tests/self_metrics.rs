//! Every role serves its own `/metrics` (Prometheus text), `/healthz` and
//! `/readyz`: the collector (when given `--listen`), the indexer and the
//! query service, each with the families an operator watches.

mod common;

use std::time::Duration;

use common::{client, wait_for, PodLogWriter, Weft};

fn scrape(weft: &Weft) -> String {
    client().get(weft.url("/metrics")).send().unwrap().text().unwrap()
}

fn probes_answer(weft: &Weft) {
    for path in ["/healthz", "/readyz"] {
        let status = client().get(weft.url(path)).send().unwrap().status().as_u16();
        assert_eq!(status, 200, "{path}");
    }
}

#[test]
fn every_role_serves_metrics_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(&config, "rules:\n  enabled: false\nindexer:\n  commit_interval: 200ms\n").unwrap();
    let indexer = Weft::role("indexer", &data, &config);
    let query = Weft::role("query", &data, &config);
    let collector = Weft::start(&[
        "collector",
        "--logs",
        logs.to_str().unwrap(),
        "--state",
        dir.path().join("state").to_str().unwrap(),
        "--indexer",
        &indexer.url(""),
        "--listen",
        "127.0.0.1:0",
        "--otlp-listen",
        "",
    ]);
    let writer = PodLogWriter::new(&logs, "ml", "trainer-0", "main");
    writer.append(PodLogWriter::cri("stdout", "F", "hello from a pod").as_bytes());

    // Lines flow; each role's counters show it.
    wait_for("the collector ships the line", Duration::from_secs(30), || {
        scrape(&collector)
            .lines()
            .any(|l| l.starts_with("weft_collector_batches_sent_total ") && !l.ends_with(" 0"))
            .then_some(())
    });
    let text = scrape(&collector);
    for family in [
        "weft_collector_lines_total",
        "weft_collector_read_bytes_total",
        "weft_collector_tail_lag_bytes",
        "weft_collector_spool_bytes",
    ] {
        assert!(
            text.contains(&format!("\n{family} ")) || text.starts_with(&format!("{family} ")),
            "collector lacks {family}"
        );
    }
    wait_for("the indexer commits a split", Duration::from_secs(30), || {
        scrape(&indexer)
            .lines()
            .any(|l| l.starts_with("weft_indexer_splits") && !l.ends_with(" 0"))
            .then_some(())
    });
    let text = scrape(&indexer);
    for family in [
        "weft_indexer_rows_ingested_total",
        "weft_indexer_wal_bytes",
        "weft_indexer_pending_bytes",
        "weft_indexer_commit_seconds_bucket",
    ] {
        assert!(text.contains(family), "indexer lacks {family}");
    }
    let (status, _) = common::get_json(
        &query.url("/loki/api/v1/query"),
        &[("query", "count_over_time({namespace=\"ml\"}[5m])")],
    );
    assert_eq!(status, 200);
    let (status, _) = common::get_json(&query.url("/loki/api/v1/query"), &[("query", "{namespace=")]);
    assert_eq!(status, 400);
    let text = scrape(&query);
    assert!(
        text.contains("weft_query_duration_seconds_bucket{endpoint=\"loki_query\""),
        "query latency histogram:\n{text}"
    );
    assert!(
        text.contains("weft_query_errors_total{endpoint=\"loki_query\",type=\"bad_data\"} 1"),
        "errors by kind:\n{text}"
    );
    for weft in [&collector, &indexer, &query] {
        probes_answer(weft);
    }
}
