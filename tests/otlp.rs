//! The OTLP/HTTP receiver driven by the real OpenTelemetry Python SDK and
//! its OTLP/HTTP exporters (protobuf): a training job's metrics and logs
//! land in weft with their Kubernetes resource attributes as labels. JSON,
//! gzip, partial success and malformed bodies are checked over plain HTTP.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

const SDK_SCRIPT: &str = r#"
import logging, sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

endpoint = sys.argv[1]
resource = Resource.create({
    "service.name": "trainer",
    "k8s.namespace.name": "ml",
    "k8s.pod.name": "gpt-ft-worker-1",
    "k8s.container.name": "pytorch",
})
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint + "/v1/metrics"), export_interval_millis=60000)
provider = MeterProvider(resource=resource, metric_readers=[reader])
meter = provider.get_meter("train")
steps = meter.create_counter("train.steps", description="Optimizer steps")
loss = meter.create_histogram("train.loss", description="Loss per step")
lr = meter.create_gauge("train.learning_rate")
for step in range(1, 11):
    steps.add(1, {"phase": "train"})
    loss.record(2.0 / step, {"phase": "train"})
lr.set(3e-4)
provider.force_flush()
provider.shutdown()

logs = LoggerProvider(resource=resource)
logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint + "/v1/logs")))
handler = LoggingHandler(level=logging.INFO, logger_provider=logs)
log = logging.getLogger("trainer")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.error("CUDA out of memory on rank 1", extra={"step": 10})
log.info("checkpoint saved")
logs.force_flush()
logs.shutdown()
print("sent")
"#;

fn query(weft: &Weft, q: &str) -> serde_json::Value {
    let (status, body) = get_json(&weft.url("/api/v1/query"), &[("query", q)]);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn the_python_sdk_sends_metrics_and_logs() {
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
    let otlp = format!("http://{}", weft.otlp.clone().expect("standalone runs an OTLP receiver"));

    let output = Command::new("python3")
        .args(["-c", SDK_SCRIPT, &otlp])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("sent"),
        "the SDK script failed (run scripts/install-test-deps): {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let steps = wait_for("OTLP metrics queryable", Duration::from_secs(30), || {
        let body = query(&weft, "train_steps_total");
        (!body["data"]["result"].as_array().unwrap().is_empty()).then_some(body)
    });
    let series = &steps["data"]["result"][0];
    assert_eq!(series["value"][1], "10");
    for (label, value) in [
        ("namespace", "ml"),
        ("pod", "gpt-ft-worker-1"),
        ("container", "pytorch"),
        ("job", "trainer"),
        ("run", "gpt-ft"),
        ("rank", "1"),
        ("phase", "train"),
    ] {
        assert_eq!(series["metric"][label], value, "{series}");
    }
    let body = query(&weft, "train_loss_count");
    assert_eq!(body["data"]["result"][0]["value"][1], "10");
    let body = query(&weft, "histogram_quantile(1, train_loss_bucket)");
    assert!(
        body["data"]["result"][0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 1.0,
        "{body}"
    );
    let body = query(&weft, "train_learning_rate");
    assert_eq!(body["data"]["result"][0]["value"][1], "0.0003");
    let (_, metadata) = get_json(&weft.url("/api/v1/metadata"), &[("metric", "train_steps_total")]);
    assert_eq!(metadata["data"]["train_steps_total"][0]["type"], "counter");
    assert_eq!(metadata["data"]["train_steps_total"][0]["help"], "Optimizer steps");

    let lines = wait_for("OTLP logs searchable", Duration::from_secs(30), || {
        let lines = all_lines(&weft, r#"{namespace="ml", pod="gpt-ft-worker-1"}"#);
        (lines.len() == 2).then_some(lines)
    });
    let mut texts: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
    texts.sort();
    assert_eq!(texts, vec!["CUDA out of memory on rank 1", "checkpoint saved"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (_, body) = get_json(
        &weft.url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{pod="gpt-ft-worker-1"} | detected_level="error""#),
            ("start", &(now - 3_600_000_000_000).to_string()),
        ],
    );
    assert_eq!(
        body["data"]["result"][0]["stream"]["step"], "10",
        "log attributes are structured metadata: {body}"
    );
    weft.terminate();
}

#[test]
fn json_gzip_partial_success_and_bad_bodies() {
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
    let otlp = format!("http://{}", weft.otlp.clone().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // OTLP/JSON: int64 as strings, enums as integers; one gauge and one
    // exponential histogram (not stored: partial success).
    let json = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"k8s.pod.name","value":{{"stringValue":"json-pod"}}}}]}},
        "scopeMetrics":[{{"metrics":[
          {{"name":"gpu.util","gauge":{{"dataPoints":[{{"timeUnixNano":"{now}","asInt":"87","attributes":[{{"key":"gpu","value":{{"stringValue":"0"}}}}]}}]}}}},
          {{"name":"latency","exponentialHistogram":{{"dataPoints":[{{"timeUnixNano":"{now}","count":"1"}}],"aggregationTemporality":2}}}}
        ]}}]}}]}}"#
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    let response = client()
        .post(format!("{otlp}/v1/metrics"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(body["partialSuccess"]["rejectedDataPoints"], "1", "{body}");
    assert!(body["partialSuccess"]["errorMessage"].as_str().unwrap().contains("exponential"));
    let value = wait_for("JSON gauge stored", Duration::from_secs(30), || {
        let body = query(&weft, r#"gpu_util{pod="json-pod", gpu="0"}"#);
        body["data"]["result"][0]["value"][1].as_str().map(str::to_string)
    });
    assert_eq!(value, "87");

    // Garbage: 400 with a google.rpc.Status in the request's encoding.
    let response = client()
        .post(format!("{otlp}/v1/metrics"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let status: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(status["code"], 3);
    assert!(status["message"].as_str().unwrap().contains("ExportMetricsServiceRequest"));
    let response = client()
        .post(format!("{otlp}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = client()
        .post(format!("{otlp}/v1/logs"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    // An empty request still succeeds.
    let response = client()
        .post(format!("{otlp}/v1/logs"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    weft.terminate();
}
