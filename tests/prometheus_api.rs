//! The Prometheus HTTP API as Grafana and Prometheus' own tools use it:
//! remote_write in, then queries by HTTP, by `promtool` (Debian's
//! prometheus package, a real Prometheus client), and side by side with a
//! real Prometheus that scrapes a fixture exporter and remote_writes the
//! same samples to weft.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::remote_write::{self, Metadata, WriteRequest};
use common::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn standalone() -> (tempfile::TempDir, Weft) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("no-pods");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let weft = Weft::start(&[
        "standalone",
        "--logs",
        logs.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    (dir, weft)
}

fn promtool() -> &'static str {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()),
        "promtool not found: run scripts/install-test-deps (Debian package prometheus)"
    );
    "promtool"
}

#[test]
fn prometheus_api_answers_grafana_and_promtool() {
    let (_dir, weft) = standalone();
    let t0 = now_ms() - 120_000;
    let samples = |per_step: f64| -> Vec<(i64, f64)> { (0..=12).map(|i| (t0 + i * 10_000, per_step * i as f64)).collect() };
    let request = WriteRequest {
        timeseries: vec![
            remote_write::series(
                &[("__name__", "requests_total"), ("job", "trainer"), ("code", "200")],
                &samples(100.0),
            ),
            remote_write::series(
                &[("__name__", "requests_total"), ("job", "trainer"), ("code", "500")],
                &samples(10.0),
            ),
            remote_write::series(
                &[
                    ("__name__", "DCGM_FI_DEV_GPU_UTIL"),
                    ("gpu", "0"),
                    ("UUID", "GPU-a"),
                    ("Hostname", "n1"),
                ],
                &samples(0.0).iter().map(|(t, _)| (*t, 97.0)).collect::<Vec<_>>(),
            ),
        ],
        metadata: vec![Metadata {
            r#type: 1,
            metric_family_name: "requests_total".into(),
            help: "Requests served.".into(),
            unit: String::new(),
        }],
    };
    assert_eq!(remote_write::send(&weft.url("/api/v1/write"), &request), 204);
    let last = (t0 + 120_000) as f64 / 1000.0;
    let at = last.to_string();
    wait_for("remote-written samples queryable", Duration::from_secs(30), || {
        let (_, body) = get_json(&weft.url("/api/v1/query"), &[("query", "count(requests_total)"), ("time", &at)]);
        (body["data"]["result"][0]["value"][1] == "2").then_some(())
    });

    // Grafana's "Save & test": a form POST of 1+1 at time=4.
    let response = client()
        .post(weft.url("/api/v1/query"))
        .form(&[("query", "1+1"), ("time", "4")])
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(body["data"], serde_json::json!({"resultType": "scalar", "result": [4.0, "2"]}));
    // buildinfo without `features` (Grafana then treats weft as Prometheus), GET and POST.
    let (status, info) = get_json(&weft.url("/api/v1/status/buildinfo"), &[]);
    assert_eq!(status, 200);
    assert!(info["data"]["version"].is_string() && info["data"].get("features").is_none());
    assert_eq!(
        client()
            .post(weft.url("/api/v1/status/buildinfo"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    let (_, body) = get_json(
        &weft.url("/api/v1/query"),
        &[("query", "sum by (code) (rate(requests_total[1m]))"), ("time", &at)],
    );
    assert_eq!(body["data"]["resultType"], "vector");
    let rates: Vec<(String, f64)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["code"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rates.len(), 2);
    assert!((rates[0].1 - 10.0).abs() < 1e-9 && (rates[1].1 - 1.0).abs() < 1e-9, "{rates:?}");

    let start = (t0 as f64 / 1000.0 + 30.0).to_string();
    let (_, body) = get_json(
        &weft.url("/api/v1/query_range"),
        &[("query", "DCGM_FI_DEV_GPU_UTIL"), ("start", &start), ("end", &at), ("step", "30")],
    );
    assert_eq!(body["data"]["resultType"], "matrix");
    let values = body["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 4);
    assert!(values[0][0].is_number() && values[0][1] == "97");
    assert_eq!(body["data"]["result"][0]["metric"]["UUID"], "GPU-a");

    // Autocomplete endpoints.
    let (_, series) = get_json(&weft.url("/api/v1/series"), &[("match[]", "requests_total{code=\"500\"}")]);
    assert_eq!(
        series["data"],
        serde_json::json!([{"__name__": "requests_total", "code": "500", "job": "trainer"}])
    );
    let (_, names) = get_json(&weft.url("/api/v1/label/__name__/values"), &[]);
    assert_eq!(names["data"], serde_json::json!(["DCGM_FI_DEV_GPU_UTIL", "requests_total"]));
    let (_, labels) = get_json(&weft.url("/api/v1/labels"), &[("match[]", "DCGM_FI_DEV_GPU_UTIL")]);
    assert_eq!(labels["data"], serde_json::json!(["Hostname", "UUID", "__name__", "gpu"]));
    let (_, metadata) = get_json(&weft.url("/api/v1/metadata"), &[]);
    assert_eq!(metadata["data"]["requests_total"][0]["type"], "counter");
    let (_, exemplars) = get_json(&weft.url("/api/v1/query_exemplars"), &[("query", "requests_total")]);
    assert_eq!(exemplars, serde_json::json!({"status": "success", "data": []}));

    // Errors: envelope, type and status code.
    let (status, body) = get_json(&weft.url("/api/v1/query"), &[("query", "sum(")]);
    assert_eq!((status, body["errorType"].as_str()), (400, Some("bad_data")));
    let (status, body) = get_json(&weft.url("/api/v1/query_range"), &[("query", "up"), ("start", "1"), ("end", "2")]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_json(
        &weft.url("/api/v1/query"),
        &[("query", "requests_total - ignoring(code) requests_total"), ("time", &at)],
    );
    assert_eq!((status, body["errorType"].as_str()), (422, Some("execution")), "{body}");
    let (status, _) = get_json(&weft.url("/api/v1/series"), &[]);
    assert_eq!(status, 400);

    // promtool, a real Prometheus client.
    let output = Command::new(promtool())
        .args([
            "query",
            "instant",
            &format!("--time={at}"),
            &format!("http://{}", weft.addr),
            "sum(requests_total)",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "promtool failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("=> 1320 @["), "{stdout}");
    let output = Command::new(promtool())
        .args([
            "query",
            "range",
            &format!("--start={start}"),
            &format!("--end={at}"),
            "--step=30s",
            &format!("http://{}", weft.addr),
            "requests_total{code=\"500\"}",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("30 @[") && stdout.contains("120 @["),
        "{stdout}"
    );
    weft.terminate();
}

/// Serves changing metrics in the Prometheus text format until dropped.
struct FixtureExporter {
    port: u16,
}

fn start_exporter() -> FixtureExporter {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let t = started.elapsed().as_secs_f64();
            let observations = (t * 20.0).floor();
            let body = format!(
                "# HELP fixture_requests_total Requests.\n# TYPE fixture_requests_total counter\n\
                 fixture_requests_total{{code=\"200\"}} {}\nfixture_requests_total{{code=\"500\"}} {}\n\
                 # TYPE fixture_temperature gauge\nfixture_temperature{{gpu=\"0\"}} {}\nfixture_temperature{{gpu=\"1\"}} {}\n\
                 # TYPE fixture_latency_seconds histogram\n\
                 fixture_latency_seconds_bucket{{le=\"0.1\"}} {}\nfixture_latency_seconds_bucket{{le=\"0.5\"}} {}\n\
                 fixture_latency_seconds_bucket{{le=\"+Inf\"}} {}\nfixture_latency_seconds_sum {}\nfixture_latency_seconds_count {}\n",
                (t * 37.0).floor(),
                (t * 3.0).floor(),
                50.0 + 10.0 * (t / 3.0).sin(),
                60.0 + 5.0 * (t / 2.0).cos(),
                (observations * 0.5).floor(),
                (observations * 0.9).floor(),
                observations,
                observations * 0.2,
                observations
            );
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    FixtureExporter { port }
}

fn range(url: &str, query: &str, start: f64, end: f64) -> Vec<(String, Vec<(f64, f64)>)> {
    let (status, body) = get_json(
        url,
        &[
            ("query", query),
            ("start", &start.to_string()),
            ("end", &end.to_string()),
            ("step", "1"),
        ],
    );
    assert_eq!(status, 200, "{query}: {body}");
    let mut out: Vec<(String, Vec<(f64, f64)>)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut metric: Vec<(String, String)> = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            metric.sort();
            let points = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse::<f64>().unwrap()))
                .collect();
            (format!("{metric:?}"), points)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn same_answers_as_a_real_prometheus_fed_the_same_samples() {
    let (dir, weft) = standalone();
    let exporter = start_exporter();
    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: fixture\n    static_configs:\n      - targets: ['127.0.0.1:{}']\nremote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n",
            exporter.port, weft.addr
        ),
    )
    .unwrap();
    assert!(
        Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "prometheus not found: run scripts/install-test-deps"
    );
    let mut prometheus = Command::new("prometheus")
        .args([
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prom = format!("http://127.0.0.1:{prometheus_port}");
    let started = now_ms() as f64 / 1000.0;
    // Let both hold a comfortable window of data: the compared window runs
    // from 12 s after the start to 4 s before now, so 35 scrapes leave at
    // least 19 s of steps however long Prometheus took to start (20
    // scrapes left as little as 4 s, and a CI run under load compared too
    // few points).
    wait_for("35 s of scrapes in weft", Duration::from_secs(120), || {
        let (_, body) = get_json(
            &weft.url("/api/v1/query"),
            &[("query", "count_over_time(fixture_requests_total{code=\"200\"}[1m])")],
        );
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|n| *n >= 35.0)
            .map(|_| ())
    });
    // Steps fall between scrape timestamps (offset .777), away from window edges.
    let end = (now_ms() as f64 / 1000.0 - 4.0).floor() + 0.777;
    let start = (started + 12.0).floor() + 0.777;
    let queries = [
        "fixture_requests_total",
        "rate(fixture_requests_total[5s])",
        "sum by (code) (increase(fixture_requests_total[10s]))",
        "irate(fixture_requests_total{code=\"200\"}[5s])",
        "avg_over_time(fixture_temperature[5s])",
        "max(fixture_temperature) - min(fixture_temperature)",
        "fixture_temperature > 55",
        "topk(1, fixture_temperature)",
        "histogram_quantile(0.9, sum by (le) (rate(fixture_latency_seconds_bucket[5s])))",
        "rate(fixture_latency_seconds_sum[5s]) / rate(fixture_latency_seconds_count[5s])",
        "sum without (instance) (fixture_temperature) / on(job) group_left count by (job) (fixture_temperature)",
        "count by (job) (up)",
        "deriv(fixture_temperature[10s])",
        "max_over_time(rate(fixture_requests_total[5s])[10s:1s])",
    ];
    let mut compared = 0;
    for query in queries {
        let theirs = range(&format!("{prom}/api/v1/query_range"), query, start, end);
        let ours = range(&weft.url("/api/v1/query_range"), query, start, end);
        assert!(!theirs.is_empty(), "Prometheus has data for {query}");
        assert_eq!(
            ours.iter().map(|s| &s.0).collect::<Vec<_>>(),
            theirs.iter().map(|s| &s.0).collect::<Vec<_>>(),
            "series of {query}"
        );
        for ((labels, a), (_, b)) in ours.iter().zip(&theirs) {
            assert_eq!(a.len(), b.len(), "{query} {labels}: points\n weft {a:?}\n prom {b:?}");
            for (p, q) in a.iter().zip(b) {
                let close = (p.1 - q.1).abs() <= 1e-6 * p.1.abs().max(q.1.abs()).max(1e-9) || (p.1.is_nan() && q.1.is_nan());
                assert!(p.0 == q.0 && close, "{query} {labels}: weft {p:?} vs prometheus {q:?}");
                compared += 1;
            }
        }
    }
    assert!(compared > 200, "{compared} points compared");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    weft.terminate();
}
