//! Every query endpoint against hostile parameters (times at the ends of
//! the range, steps of a nanosecond or of centuries, limits past any
//! memory): each answers or says why not, promptly, without a panic
//! (arithmetic overflow in a debug build, a wrapped window in a release
//! one).

use std::time::{Duration, Instant};

use weft_indexer::{Indexer, IndexerConfig};
use weft_model::batch::encode_ipc;
use weft_model::{LogBatchBuilder, LogRecord};

use super::{loki, native, prometheus, Params};
use crate::QueryService;

const EXTREMES: &[&str] = &[
    "-9223372036854775808",
    "9223372036854775807",
    "-9999999999",
    "1e300",
    "-1e300",
    "1.0e300",
    "-1.0e300",
    "0",
    "2262-04-11T23:47:16.854775807Z",
    "1677-09-21T00:12:43.145224192Z",
];
const STEPS: &[&str] = &["1ns", "0.000001", "1e300", "-1", "0", "100000000h", "15s"];

fn service() -> (tempfile::TempDir, std::sync::Arc<QueryService>) {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), IndexerConfig::default(), &::prometheus::Registry::new()).unwrap();
    let mut builder = LogBatchBuilder::default();
    for s in 0..20 {
        let record = LogRecord {
            ts: 1_764_000_000_000_000_000 + s * 1_000_000_000,
            namespace: "ml".into(),
            pod: "p".into(),
            container: "main".into(),
            stream: "stdout".into(),
            line: format!("step={s} loss=0.{s}"),
            ..Default::default()
        };
        builder.append(&record.as_ref());
    }
    let body = encode_ipc(&[builder.finish(true)], Default::default()).unwrap();
    indexer.ingest_arrow("default", "", &body, "test").unwrap();
    indexer.commit().unwrap();
    let service = QueryService::new(dir.path(), Default::default(), &::prometheus::Registry::new());
    (dir, service)
}

fn params(pairs: &[(&str, &str)]) -> Params {
    Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[test]
fn hostile_parameters_are_answered_or_refused_without_a_panic() {
    let (_dir, service) = service();
    type Endpoint = fn(&QueryService, &str, &Params) -> Result<axum::response::Response, crate::QueryError>;
    let endpoints: &[(&str, Endpoint, &str)] = &[
        (
            "loki query_range (metric)",
            loki::query_range,
            r#"sum(count_over_time({pod="p"}[1m]))"#,
        ),
        ("loki query_range (logs)", loki::query_range, r#"{pod="p"} |= "step""#),
        ("loki query", loki::query, r#"count_over_time({pod="p"}[5m])"#),
        ("loki labels", loki::labels, ""),
        ("loki series", loki::series, r#"{pod="p"}"#),
        ("loki index stats", loki::index_stats, r#"{pod="p"}"#),
        ("search", native::search, "step"),
        ("prometheus query", prometheus::query, "weft_log_lines_total"),
        ("prometheus query_range", prometheus::query_range, "rate(weft_log_lines_total[5m])"),
        ("prometheus series", prometheus::series, "up"),
        ("prometheus labels", prometheus::labels, ""),
        ("loki label values", |s, t, p| loki::label_values(s, t, p, "pod"), ""),
        (
            "prometheus label values",
            |s, t, p| prometheus::label_values(s, t, p, "__name__"),
            "",
        ),
        ("run ranks", |s, t, p| native::run_ranks(s, t, p, "bert-sft"), ""),
    ];
    let mut failures = Vec::new();
    for (name, endpoint, query) in endpoints {
        let mut cases: Vec<Vec<(&str, &str)>> = Vec::new();
        for start in EXTREMES {
            for end in EXTREMES {
                cases.push(vec![("start", start), ("end", end)]);
            }
            cases.push(vec![("time", start)]);
            cases.push(vec![("since", "100000000h"), ("end", start)]);
        }
        for step in STEPS {
            cases.push(vec![("start", "0"), ("end", "9223372036854775807"), ("step", step)]);
            cases.push(vec![("start", "1764000000"), ("end", "1764000060"), ("step", step)]);
        }
        cases.push(vec![("limit", "18446744073709551615")]);
        cases.push(vec![("limit", "0"), ("direction", "sideways")]);
        for mut case in cases {
            let key = if *name == "prometheus series" { "match[]" } else { "query" };
            if !query.is_empty() {
                case.push((key, query));
            }
            let p = params(&case);
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| endpoint(&service, "default", &p)));
            let took = started.elapsed();
            match outcome {
                Err(_) => failures.push(format!("{name} {case:?}: panicked")),
                Ok(_) if took > Duration::from_secs(5) => failures.push(format!("{name} {case:?}: took {took:?}")),
                Ok(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    // Times past the range are refused, saying which parameter.
    for (endpoint, key, value, query) in [
        (loki::query_range as Endpoint, "end", "9223372036854775807", r#"{pod="p"}"#),
        (loki::query_range, "since", "90000d", r#"{pod="p"}"#),
        (loki::labels, "start", "-1.0e300", ""),
        (native::search, "cursor", "9223372036854775807:0", "step"),
    ] {
        let p = params(&[(key, value), ("query", query)]);
        let err = endpoint(&service, "default", &p).map(|_| ()).expect_err("refused").to_string();
        assert!(
            err.contains(&format!("invalid parameter \"{key}\"")) && err.contains("outside the supported time range"),
            "{err}"
        );
    }
}
