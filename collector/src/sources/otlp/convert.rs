//! OTLP data → weft's model. Metrics follow Prometheus' OTLP translation in
//! its simple form: names with invalid characters become `_`, monotonic
//! cumulative sums get `_total`, histograms become `_bucket{le}` / `_sum` /
//! `_count`, summaries `{quantile}` / `_sum` / `_count`. Resource attributes
//! `k8s.namespace.name`, `k8s.pod.name`, `k8s.container.name`,
//! `k8s.node.name`, `service.name` and `service.instance.id` map to the
//! labels `namespace`, `pod`, `container`, `node`, `job` and `instance`.
//! Exponential histograms are not stored yet and are reported as rejected.
//!
//! Each data point stands alone: one that cannot be stored (too many or too
//! long labels, no timestamp, a delta-temporality counter or histogram,
//! which Prometheus refuses too) is counted in `rejected` with a reason and
//! the rest of the request is kept. A point flagged "no recorded value"
//! becomes a staleness marker, as Prometheus writes it.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality};
use weft_model::labels::sanitize_label_name;
use weft_model::metric::{stale_marker, MetadataMap, MetricBatchBuilder, MetricMetadata, METRIC_NAME};
use weft_model::{LabelSet, Level, LogRecord};

use crate::kubernetes::PodDirectory;

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
fn resource_labels(attributes: &[KeyValue], pods: &PodDirectory) -> LabelSet {
    let mut labels = LabelSet::new();
    for kv in attributes {
        if let Some((_, name)) = RESOURCE_LABELS.iter().find(|(key, _)| *key == kv.key) {
            labels.insert(*name, kv.value.as_ref().map(any_value_text).unwrap_or_default());
        }
    }
    if let Some(pod) = labels.get("pod").map(str::to_string) {
        let (run, rank) = pods.run_and_rank(labels.get("namespace").unwrap_or(""), &pod);
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
    /// Data points not stored.
    pub rejected: i64,
    /// Why, one line per distinct reason (at most [`MAX_REASONS`]).
    pub reasons: Vec<String>,
}

/// Most distinct rejection reasons reported back in one response.
pub const MAX_REASONS: usize = 8;

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const FLAG_NO_RECORDED_VALUE: u32 = 1;

impl ConvertedMetrics {
    fn reject(&mut self, points: usize, reason: String) {
        self.rejected += points as i64;
        if self.reasons.len() < MAX_REASONS && !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }
}

/// Checks one data point's series and time before any of its samples is
/// written (a histogram point's samples stand or fall together).
fn point_problem(metric: &str, labels: &LabelSet, ts: u64) -> Option<String> {
    if ts == 0 {
        return Some(format!("{metric}: data point without time_unix_nano"));
    }
    if labels.len() + 2 > weft_model::labels::MAX_LABELS {
        return Some(format!(
            "{metric}: more than {} labels (resource and point attributes together)",
            weft_model::labels::MAX_LABELS - 2
        ));
    }
    if let Some((name, _)) = labels.iter().find(|(_, v)| v.len() > weft_model::labels::MAX_LABEL_BYTES) {
        return Some(format!(
            "{metric}: attribute {name} is longer than {} bytes",
            weft_model::labels::MAX_LABEL_BYTES
        ));
    }
    if let Some((name, _)) = labels.iter().find(|(n, _)| weft_model::labels::validate_label_name(n).is_err()) {
        return Some(format!(
            "{metric}: attribute name {:?} is not a valid label name",
            truncate_for_message(name)
        ));
    }
    None
}

fn truncate_for_message(text: &str) -> &str {
    let mut cut = text.len().min(64);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// Converts an OTLP metrics request.
pub fn metrics(request: &ExportMetricsServiceRequest, pods: &PodDirectory) -> ConvertedMetrics {
    let mut out = ConvertedMetrics {
        samples: MetricBatchBuilder::new(),
        metadata: MetadataMap::new(),
        rejected: 0,
        reasons: Vec::new(),
    };
    for resource_metrics in &request.resource_metrics {
        let base = resource_labels(
            resource_metrics.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]),
            pods,
        );
        for scope in &resource_metrics.scope_metrics {
            for m in &scope.metrics {
                let name = metric_name(&m.name);
                let samples = &mut out.samples;
                // Writes one sample of a point already checked.
                let add = |samples: &mut MetricBatchBuilder,
                           labels: &LabelSet,
                           series: &str,
                           extra: &[(&str, String)],
                           ts: u64,
                           flags: u32,
                           value: f64| {
                    let mut labels = labels.clone();
                    for (k, v) in extra {
                        labels.insert(*k, v.clone());
                    }
                    labels.insert(METRIC_NAME, series);
                    let value = if flags & FLAG_NO_RECORDED_VALUE != 0 {
                        stale_marker()
                    } else {
                        value
                    };
                    samples.append(&labels.to_string(), (ts / 1_000_000).min(i64::MAX as u64) as i64, value);
                };
                let mut problems: Vec<(usize, String)> = Vec::new();
                let mut family = name.clone();
                let kind = match &m.data {
                    Some(metric::Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            let labels = with_attributes(&base, &p.attributes);
                            if let Some(problem) = point_problem(&m.name, &labels, p.time_unix_nano) {
                                problems.push((1, problem));
                            } else if let Some(v) = number(p.value).or((p.flags & FLAG_NO_RECORDED_VALUE != 0).then_some(0.0)) {
                                add(samples, &labels, &name, &[], p.time_unix_nano, p.flags, v);
                            }
                        }
                        "gauge"
                    }
                    Some(metric::Data::Sum(sum)) => {
                        let cumulative = sum.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                        if sum.is_monotonic && !cumulative {
                            problems.push((
                                sum.data_points.len(),
                                format!(
                                    "{}: monotonic sums with delta temporality are not supported (send cumulative)",
                                    m.name
                                ),
                            ));
                        }
                        let counter = sum.is_monotonic && cumulative;
                        let suffix = if counter && !name.ends_with("_total") { "_total" } else { "" };
                        family = format!("{name}{suffix}");
                        if !sum.is_monotonic || cumulative {
                            for p in &sum.data_points {
                                let labels = with_attributes(&base, &p.attributes);
                                if let Some(problem) = point_problem(&m.name, &labels, p.time_unix_nano) {
                                    problems.push((1, problem));
                                } else if let Some(v) = number(p.value).or((p.flags & FLAG_NO_RECORDED_VALUE != 0).then_some(0.0)) {
                                    add(samples, &labels, &family, &[], p.time_unix_nano, p.flags, v);
                                }
                            }
                        }
                        if counter {
                            "counter"
                        } else {
                            "gauge"
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        if histogram.aggregation_temporality != AggregationTemporality::Cumulative as i32 {
                            problems.push((
                                histogram.data_points.len(),
                                format!("{}: histograms with delta temporality are not supported (send cumulative)", m.name),
                            ));
                        } else {
                            let (bucket, count, sum_name) = (format!("{name}_bucket"), format!("{name}_count"), format!("{name}_sum"));
                            for p in &histogram.data_points {
                                let labels = with_attributes(&base, &p.attributes);
                                if let Some(problem) = point_problem(&m.name, &labels, p.time_unix_nano) {
                                    problems.push((1, problem));
                                    continue;
                                }
                                let (ts, flags) = (p.time_unix_nano, p.flags);
                                let mut cumulative = 0u64;
                                for (i, n) in p.bucket_counts.iter().enumerate() {
                                    cumulative = cumulative.saturating_add(*n);
                                    let le = p.explicit_bounds.get(i).map(|b| format_bound(*b)).unwrap_or_else(|| "+Inf".into());
                                    add(samples, &labels, &bucket, &[("le", le)], ts, flags, cumulative as f64);
                                }
                                if p.bucket_counts.len() <= p.explicit_bounds.len() {
                                    add(samples, &labels, &bucket, &[("le", "+Inf".into())], ts, flags, p.count as f64);
                                }
                                add(samples, &labels, &count, &[], ts, flags, p.count as f64);
                                if let Some(sum) = p.sum {
                                    add(samples, &labels, &sum_name, &[], ts, flags, sum);
                                }
                            }
                        }
                        "histogram"
                    }
                    Some(metric::Data::Summary(summary)) => {
                        let (count, sum_name) = (format!("{name}_count"), format!("{name}_sum"));
                        for p in &summary.data_points {
                            let labels = with_attributes(&base, &p.attributes);
                            if let Some(problem) = point_problem(&m.name, &labels, p.time_unix_nano) {
                                problems.push((1, problem));
                                continue;
                            }
                            let (ts, flags) = (p.time_unix_nano, p.flags);
                            for q in &p.quantile_values {
                                add(
                                    samples,
                                    &labels,
                                    &name,
                                    &[("quantile", format_bound(q.quantile))],
                                    ts,
                                    flags,
                                    q.value,
                                );
                            }
                            add(samples, &labels, &count, &[], ts, flags, p.count as f64);
                            add(samples, &labels, &sum_name, &[], ts, flags, p.sum);
                        }
                        "summary"
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        out.reject(
                            h.data_points.len(),
                            format!("{}: exponential histograms are not supported yet", m.name),
                        );
                        continue;
                    }
                    None => continue,
                };
                for (points, problem) in problems {
                    out.reject(points, problem);
                }
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
pub fn logs(request: &ExportLogsServiceRequest, max_line_bytes: usize, pods: &PodDirectory) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for resource_logs in &request.resource_logs {
        let base = resource_labels(
            resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]),
            pods,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum};
    use weft_model::metric::{is_stale_marker, MetricBatchView};

    fn point(key: &str, value: &str, ts: u64, v: f64, flags: u32) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![KeyValue {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(value.into())),
                }),
                ..Default::default()
            }],
            time_unix_nano: ts,
            value: Some(number_data_point::Value::AsDouble(v)),
            flags,
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn rows(converted: &mut ConvertedMetrics) -> Vec<(String, i64, f64)> {
        let batch = converted.samples.finish();
        let view = MetricBatchView::new(&batch).unwrap();
        (0..view.len())
            .map(|i| (view.series.value(i).to_string(), view.ts.value(i), view.value.value(i)))
            .collect()
    }

    #[test]
    fn a_bad_point_is_rejected_alone() {
        let long = "x".repeat(5000);
        let gauge = Metric {
            name: "gpu.temp".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![
                    point("gpu", "0", 1_000_000_000, 70.0, 0),
                    point("url", &long, 1_000_000_000, 71.0, 0),
                    point("gpu", "1", 0, 72.0, 0),
                    point("gpu", "2", 2_000_000_000, 0.0, FLAG_NO_RECORDED_VALUE),
                ],
            })),
            ..Default::default()
        };
        let delta = Metric {
            name: "tokens".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![point("gpu", "0", 1_000_000_000, 5.0, 0)],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let mut converted = metrics(&request(vec![gauge, delta]), &PodDirectory::default());
        assert_eq!(converted.rejected, 3, "{:?}", converted.reasons);
        let reasons = converted.reasons.join("\n");
        assert!(reasons.contains("attribute url is longer than 2048 bytes"), "{reasons}");
        assert!(reasons.contains("without time_unix_nano"), "{reasons}");
        assert!(reasons.contains("tokens: monotonic sums with delta temporality"), "{reasons}");
        let rows = rows(&mut converted);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0], (r#"{__name__="gpu_temp", gpu="0"}"#.to_string(), 1000, 70.0));
        assert_eq!(rows[1].1, 2000);
        assert!(is_stale_marker(rows[1].2), "no recorded value is a staleness marker");
    }
}
