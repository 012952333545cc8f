//! Loki HTTP API shapes as Grafana's Loki data source reads them, served by
//! the real binary over the bundled sample data: streams and matrix
//! results, instant vectors, label browser endpoints, Grafana's health
//! check, and JSON errors for malformed queries.

mod common;

use std::time::Duration;

use common::*;

const START: &str = "2026-11-25T10:00:00Z";
const END: &str = "2026-11-25T11:00:00Z";

fn sample_weft() -> (tempfile::TempDir, Weft) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let logs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pod-logs");
    let weft = Weft::start(&["standalone", "--logs", logs, "--data", &data, "--listen", "127.0.0.1:0"]);
    // 834 physical lines; the OOM line is 3 CRI segments joined into one,
    // and its 10-line traceback is one record: 823 records.
    wait_for("sample data indexed", Duration::from_secs(60), || {
        let (_, body) = get_json(
            &weft.url("/loki/api/v1/query"),
            &[("query", r#"sum(count_over_time({namespace=~".+"}[2h]))"#), ("time", END)],
        );
        (body["data"]["result"][0]["value"][1].as_str() == Some("823")).then_some(())
    });
    (dir, weft)
}

#[test]
fn loki_api_answers_like_loki() {
    let (_dir, weft) = sample_weft();
    let url = |p: &str| weft.url(p);

    // Grafana's "Save & test": one sample whose value is 2.
    let (status, body) = get_json(
        &url("/loki/api/v1/query"),
        &[("query", "vector(1)+vector(1)"), ("direction", "backward"), ("time", "4000000000")],
    );
    assert_eq!(status, 200);
    assert_eq!(body["data"]["resultType"], "vector");
    assert_eq!(body["data"]["result"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"]["result"][0]["value"][1], "2");
    assert_eq!(body["data"]["result"][0]["metric"], serde_json::json!({}));

    // Label browser.
    let (_, labels) = get_json(&url("/loki/api/v1/labels"), &[("start", START), ("end", END)]);
    assert_eq!(labels["status"], "success");
    for name in ["namespace", "pod", "container", "node", "stream"] {
        assert!(labels["data"].as_array().unwrap().iter().any(|v| v == name), "{name} in {labels}");
    }
    let (_, pods) = get_json(
        &url("/loki/api/v1/label/pod/values"),
        &[("start", START), ("end", END), ("query", r#"{namespace="ml"}"#)],
    );
    assert_eq!(pods["data"], serde_json::json!(["train-llama-0", "train-llama-1"]));
    let (_, series) = get_json(
        &url("/loki/api/v1/series"),
        &[("match[]", r#"{namespace="serving"}"#), ("start", START), ("end", END)],
    );
    assert_eq!(series["data"].as_array().unwrap().len(), 1);
    assert_eq!(series["data"][0]["container"], "server");
    let (status, body) = get_json(&url("/loki/api/v1/series"), &[("start", START)]);
    assert_eq!((status, body["status"].as_str()), (400, Some("error")));

    // A log query: streams, [ns-string, line] pairs, newest first.
    let (status, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{namespace="ml", pod="train-llama-1"} |= "Watchdog""#),
            ("start", START),
            ("end", END),
            ("limit", "10"),
            ("direction", "sideways"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "streams");
    let stream = &body["data"]["result"][0];
    assert_eq!(stream["stream"]["pod"], "train-llama-1");
    assert_eq!(stream["stream"]["detected_level"], "error");
    let values = stream["values"].as_array().unwrap();
    assert_eq!(values.len(), 1, "line filters are case-sensitive");
    assert!(
        values[0][0].as_str().unwrap().parse::<i64>().is_ok(),
        "timestamps are nanosecond strings"
    );
    assert!(values[0][1]
        .as_str()
        .unwrap()
        .contains("Watchdog caught collective operation timeout"));

    // The CUDA OOM line was split by the runtime into P/P/F; it comes back
    // whole, as the last line of its joined traceback, tagged cuda_oom.
    let (_, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{namespace="ml"} | ml_event="cuda_oom""#),
            ("start", START),
            ("end", END),
        ],
    );
    let result = body["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{body}");
    assert_eq!(result[0]["stream"]["pod"], "train-llama-0");
    assert_eq!(result[0]["stream"]["ml_event"], "cuda_oom");
    assert_eq!(result[0]["values"].as_array().unwrap().len(), 1);
    let record = result[0]["values"][0][1].as_str().unwrap();
    assert!(record.starts_with("Traceback (most recent call last):"), "{record}");
    let line = record.lines().last().unwrap();
    assert!(
        line.starts_with("torch.OutOfMemoryError: CUDA out of memory.") && line.ends_with("#environment-variables)"),
        "{line}"
    );
    assert_eq!(record.lines().count(), 10, "{record}");

    // Every tag is a label to filter and group by; the Xid number comes too.
    let (_, body) = get_json(
        &url("/loki/api/v1/query"),
        &[
            (
                "query",
                r#"sum by (ml_event) (count_over_time({namespace=~".+"} | ml_event!="" [2h]))"#,
            ),
            ("time", END),
        ],
    );
    let mut events: Vec<(String, String)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["ml_event"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    events.sort();
    let expected = [
        ("cuda_oom", "1"),
        ("elastic_child_failed", "1"),
        ("gpu_xid", "1"),
        ("nccl_timeout", "3"),
    ];
    assert_eq!(events, expected.map(|(a, b)| (a.to_string(), b.to_string())), "{body}");
    let (_, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[("query", r#"{namespace="kube-system"} | xid="79""#), ("start", START), ("end", END)],
    );
    assert_eq!(body["data"]["result"][0]["stream"]["ml_event"], "gpu_xid", "{body}");

    // JSON access logs parsed, filtered numerically.
    let (_, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{container="server"} | json | status >= 500"#),
            ("start", START),
            ("end", END),
            ("limit", "1000"),
        ],
    );
    let errors: usize = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert!(errors > 0 && errors < 40, "{errors}");
    assert!(body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["stream"]["status"].as_str().unwrap().starts_with('5')));

    // A metric range query: a matrix of [seconds, "value"] points, form POST.
    let form = [
        ("query", r#"sum by (pod) (count_over_time({namespace="ml"}[10m]))"#),
        ("start", "1795601400"),
        ("end", "1795602600"),
        ("step", "600000ms"),
    ];
    let response = client().post(url("/loki/api/v1/query_range")).form(&form).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(body["data"]["resultType"], "matrix");
    let first = &body["data"]["result"][0];
    assert_eq!(first["metric"], serde_json::json!({"pod": "train-llama-0"}));
    assert!(first["values"][0][0].is_number() && first["values"][0][1].is_string());

    // Errors: JSON with the position and the reason.
    let (status, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[("query", r#"{namespace="ml" |= "x""#), ("start", START)],
    );
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("parse error at line 1, col 17"), "{message}");
    let (status, body) = get_json(&url("/loki/api/v1/query"), &[("query", r#"{namespace="ml"}"#)]);
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("instant query"));
    let (status, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[("query", r#"label_replace(rate({namespace="ml"}[1m]), "a", "$1", "pod", "(.*)")"#)],
    );
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("not supported: function label_replace"));
    let (status, _) = get_json(
        &url("/loki/api/v1/query_range"),
        &[("query", r#"{namespace="ml"}"#), ("start", "yesterday")],
    );
    assert_eq!(status, 400);
    let (status, _) = get_json(&url("/loki/api/v1/detected_labels"), &[]);
    assert_eq!(status, 404, "Grafana falls back to the label endpoints");

    // index/stats is a bare object.
    let (_, stats) = get_json(
        &url("/loki/api/v1/index/stats"),
        &[("query", r#"{namespace="ml"}"#), ("start", START), ("end", END)],
    );
    assert_eq!(stats["streams"], 4);
    assert!(stats["entries"].as_u64().unwrap() > 300);

    // Native search with paging.
    let (_, page) = get_json(
        &url("/api/v1/search"),
        &[("query", "watchdog namespace:ml"), ("start", START), ("end", END), ("limit", "1")],
    );
    let hits = page["data"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    let cursor = page["data"]["next_cursor"].as_str().unwrap().to_string();
    let (_, next) = get_json(
        &url("/api/v1/search"),
        &[
            ("query", "watchdog namespace:ml"),
            ("start", START),
            ("limit", "1"),
            ("cursor", &cursor),
        ],
    );
    assert_ne!(next["data"]["hits"][0]["line"], hits[0]["line"]);

    // Training metrics pulled out of the trainer's stdout, on the Prometheus API.
    let at = "2026-11-25T10:30:00Z";
    let (_, body) = get_json(
        &url("/api/v1/query"),
        &[("query", "count by (run) (count_over_time(weft_train_loss[1h]))"), ("time", at)],
    );
    assert_eq!(body["data"]["result"][0]["metric"]["run"], "train-llama", "{body}");
    assert_eq!(body["data"]["result"][0]["value"][1], "2", "one loss series per rank: {body}");
    let (_, body) = get_json(
        &url("/api/v1/query"),
        &[
            ("query", r#"max_over_time(weft_train_step{pod="train-llama-1"}[1h])"#),
            ("time", at),
        ],
    );
    assert_eq!(body["data"]["result"][0]["value"][1], "180", "{body}");
    assert_eq!(body["data"]["result"][0]["metric"]["rank"], "1");
    let (_, body) = get_json(
        &url("/api/v1/query"),
        &[
            ("query", r#"count_over_time(weft_train_loss{pod="train-llama-0"}[1h])"#),
            ("time", at),
        ],
    );
    assert_eq!(
        body["data"]["result"][0]["value"][1], "18",
        "6 dict lines in the rotated file, 12 in the live one: {body}"
    );
    let (_, body) = get_json(
        &url("/api/v1/series"),
        &[("match[]", r#"{__name__=~"weft_train_.+", namespace="serving"}"#)],
    );
    assert_eq!(body["data"], serde_json::json!([]), "access logs are not training output");
    // And the lines themselves are still in the logs, with run and rank.
    let (_, body) = get_json(
        &url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{run="train-llama", rank="0"} |= "'loss'""#),
            ("start", START),
            ("end", END),
            ("limit", "100"),
        ],
    );
    let dict_lines: usize = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert_eq!(dict_lines, 18);

    // Self-observability.
    let metrics = client().get(url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("weft_collector_lines_total 823"), "collector counted every line");
    assert!(metrics.contains("weft_indexer_rows_ingested_total"));
    assert!(metrics.contains("weft_query_duration_seconds_bucket"));
    assert_eq!(client().get(url("/healthz")).send().unwrap().status().as_u16(), 200);
    weft.terminate();
}
