//! OTLP data → weft's model. Metrics follow Prometheus' OTLP translation in
//! its simple form: names with invalid characters become `_`, monotonic
//! cumulative sums get `_total`, histograms become `_bucket{le}` / `_sum` /
//! `_count`, summaries `{quantile}` / `_sum` / `_count`. Resource attributes
//! `k8s.namespace.name`, `k8s.pod.name`, `k8s.container.name`,
//! `k8s.node.name`, `service.name` and `service.instance.id` map to the
//! labels `namespace`, `pod`, `container`, `node`, `job` and `instance`.
//! Exponential histograms are not stored yet and are reported as rejected.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality};
use weft_model::labels::sanitize_label_name;
use weft_model::metric::{MetadataMap, MetricBatchBuilder, MetricMetadata, METRIC_NAME};
use weft_model::{LabelSet, Level, LogRecord};

use crate::enrich::run_and_rank;

/// Resource attributes that become weft's labels.
const RESOURCE_LABELS: [(&str, &str); 6] = [
    ("k8s.namespace.name", "namespace"),
    ("k8s.pod.name", "pod"),
    ("k8s.container.name", "container"),
    ("k8s.node.name", "node"),
    ("service.name", "job"),
    ("service.instance.id", "instance"),
];

/// An attribute value as text (structured values as JSON).
pub fn any_value_text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => format!("{d}"),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            serde_json::Value::Array(a.values.iter().map(|v| serde_json::Value::String(any_value_text(v))).collect()).to_string()
        }
        Some(any_value::Value::KvlistValue(kv)) => serde_json::Value::Object(
            kv.values
                .iter()
                .map(|p| {
                    (
                        p.key.clone(),
                        serde_json::Value::String(p.value.as_ref().map(any_value_text).unwrap_or_default()),
                    )
                })
                .collect(),
        )
        .to_string(),
        _ => String::new(),
    }
}

/// The labels a resource contributes.
fn resource_labels(attributes: &[KeyValue]) -> LabelSet {
    let mut labels = LabelSet::new();
    for kv in attributes {
        if let Some((_, name)) = RESOURCE_LABELS.iter().find(|(key, _)| *key == kv.key) {
            labels.insert(*name, kv.value.as_ref().map(any_value_text).unwrap_or_default());
        }
    }
    if let Some(pod) = labels.get("pod").map(str::to_string) {
        let (run, rank) = run_and_rank(&pod);
        if labels.get("run").is_none() {
            labels.insert("run", run.unwrap_or_default());
        }
        if labels.get("rank").is_none() {
            labels.insert("rank", rank.unwrap_or_default());
        }
    }
    labels
}

fn with_attributes(base: &LabelSet, attributes: &[KeyValue]) -> LabelSet {
    let mut labels = base.clone();
    for kv in attributes {
        labels.insert(
            sanitize_label_name(&kv.key),
            kv.value.as_ref().map(any_value_text).unwrap_or_default(),
        );
    }
    labels
}

/// Prometheus-compatible metric name.
pub fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

/// Samples and metadata of a metrics request, and what was rejected.
pub struct ConvertedMetrics {
    pub samples: MetricBatchBuilder,
    pub metadata: MetadataMap,
    pub rejected: i64,
    pub reasons: Vec<String>,
}

/// Converts an OTLP metrics request.
pub fn metrics(request: &ExportMetricsServiceRequest) -> ConvertedMetrics {
    let mut out = ConvertedMetrics {
        samples: MetricBatchBuilder::new(),
        metadata: MetadataMap::new(),
        rejected: 0,
        reasons: Vec::new(),
    };
    for resource_metrics in &request.resource_metrics {
        let base = resource_labels(resource_metrics.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]));
        for scope in &resource_metrics.scope_metrics {
            for m in &scope.metrics {
                let name = metric_name(&m.name);
                let mut add = |suffix: &str, extra: &[(&str, String)], attributes: &[KeyValue], ts: u64, value: f64| {
                    let mut labels = with_attributes(&base, attributes);
                    for (k, v) in extra {
                        labels.insert(*k, v.clone());
                    }
                    labels.insert(METRIC_NAME, format!("{name}{suffix}"));
                    out.samples.append(&labels.to_string(), (ts / 1_000_000) as i64, value);
                };
                let mut family = name.clone();
                let kind = match &m.data {
                    Some(metric::Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            if let Some(v) = number(p.value) {
                                add("", &[], &p.attributes, p.time_unix_nano, v);
                            }
                        }
                        "gauge"
                    }
                    Some(metric::Data::Sum(sum)) => {
                        let cumulative_counter =
                            sum.is_monotonic && sum.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                        let suffix = if cumulative_counter && !name.ends_with("_total") {
                            "_total"
                        } else {
                            ""
                        };
                        family = format!("{name}{suffix}");
                        for p in &sum.data_points {
                            if let Some(v) = number(p.value) {
                                add(suffix, &[], &p.attributes, p.time_unix_nano, v);
                            }
                        }
                        if cumulative_counter {
                            "counter"
                        } else {
                            "gauge"
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        for p in &histogram.data_points {
                            let mut cumulative = 0u64;
                            for (i, count) in p.bucket_counts.iter().enumerate() {
                                cumulative += count;
                                let le = p.explicit_bounds.get(i).map(|b| format_bound(*b)).unwrap_or_else(|| "+Inf".into());
                                add("_bucket", &[("le", le)], &p.attributes, p.time_unix_nano, cumulative as f64);
                            }
                            if p.bucket_counts.len() <= p.explicit_bounds.len() {
                                add("_bucket", &[("le", "+Inf".into())], &p.attributes, p.time_unix_nano, p.count as f64);
                            }
                            add("_count", &[], &p.attributes, p.time_unix_nano, p.count as f64);
                            if let Some(sum) = p.sum {
                                add("_sum", &[], &p.attributes, p.time_unix_nano, sum);
                            }
                        }
                        "histogram"
                    }
                    Some(metric::Data::Summary(summary)) => {
                        for p in &summary.data_points {
                            for q in &p.quantile_values {
                                add(
                                    "",
                                    &[("quantile", format_bound(q.quantile))],
                                    &p.attributes,
                                    p.time_unix_nano,
                                    q.value,
                                );
                            }
                            add("_count", &[], &p.attributes, p.time_unix_nano, p.count as f64);
                            add("_sum", &[], &p.attributes, p.time_unix_nano, p.sum);
                        }
                        "summary"
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        out.rejected += h.data_points.len() as i64;
                        out.reasons
                            .push(format!("{}: exponential histograms are not supported yet", m.name));
                        continue;
                    }
                    None => continue,
                };
                out.metadata.insert(
                    family,
                    MetricMetadata {
                        kind: kind.into(),
                        help: m.description.clone(),
                        unit: m.unit.clone(),
                    },
                );
            }
        }
    }
    out
}

fn number(value: Option<number_data_point::Value>) -> Option<f64> {
    match value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

fn format_bound(b: f64) -> String {
    if b.is_infinite() {
        if b > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{b}")
    }
}

/// OTLP severity number → level.
pub fn severity_level(number: i32, text: &str) -> Level {
    match number {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        9..=12 => Level::Info,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Critical,
        _ => Level::parse(text),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts an OTLP logs request into log records.
pub fn logs(request: &ExportLogsServiceRequest, max_line_bytes: usize) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for resource_logs in &request.resource_logs {
        let base = resource_labels(resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]));
        for scope in &resource_logs.scope_logs {
            for log in &scope.log_records {
                let mut record = LogRecord::default();
                record.set_stream_labels(base.clone());
                let ts = if log.time_unix_nano != 0 {
                    log.time_unix_nano
                } else {
                    log.observed_time_unix_nano
                };
                record.ts = ts.min(i64::MAX as u64) as i64;
                let mut line = log.body.as_ref().map(any_value_text).unwrap_or_default();
                if line.len() > max_line_bytes {
                    let mut cut = max_line_bytes;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    record.truncated = true;
                }
                record.level = severity_level(log.severity_number, &log.severity_text);
                if record.level == Level::Unknown {
                    record.level = weft_model::level::detect_level(line.as_bytes());
                }
                let mut fields = LabelSet::new();
                for kv in &log.attributes {
                    fields.insert(
                        sanitize_label_name(&kv.key),
                        kv.value.as_ref().map(any_value_text).unwrap_or_default(),
                    );
                }
                if !log.trace_id.is_empty() {
                    fields.insert("trace_id", hex(&log.trace_id));
                }
                if !log.span_id.is_empty() {
                    fields.insert("span_id", hex(&log.span_id));
                }
                if let Some(scope) = &scope.scope {
                    fields.insert("scope", scope.name.clone());
                }
                record.ml_event = fields.get("ml_event").map(str::to_string);
                record.fields = fields;
                record.line = line;
                out.push(record);
            }
        }
    }
    out
}
