//! Prometheus' HTTP API for Grafana's built-in Prometheus data source:
//! `query`, `query_range`, `series`, `labels`, `label/<name>/values`,
//! `metadata`, `status/buildinfo` (without `features`, so Grafana treats
//! weft as Prometheus) and `query_exemplars` (empty). GET and form POST on
//! every one; errors in the `{"status":"error","errorType":…}` envelope
//! with 400 / 422 / 503.

use std::collections::BTreeSet;

use axum::response::Response;
use weft_model::time::{now_nanos, parse_duration, parse_rfc3339_nanos};
use weft_model::LabelSet;

use super::{success, Params};
use crate::promql::engine::{self, EvalLimits, PromResult, MAX_DURATION_MS, MAX_TIME_MS};
use crate::promql::source::{MetricStore, SampleSource};
use crate::{QueryError, QueryService};

/// Parses a Prometheus API time: float Unix seconds or RFC 3339. Returns ms.
pub fn parse_time(text: &str, name: &str) -> Result<i64, QueryError> {
    let text = text.trim();
    let ms = if let Some(seconds) = text.parse::<f64>().ok().filter(|s| s.is_finite()) {
        Some((seconds * 1000.0).round())
    } else {
        parse_rfc3339_nanos(text.as_bytes()).map(|ns| ns.div_euclid(1_000_000) as f64)
    };
    match ms {
        Some(ms) if ms.abs() <= MAX_TIME_MS as f64 => Ok(ms as i64),
        Some(_) => Err(QueryError::BadRequest(format!(
            "invalid parameter \"{name}\": {text:?} is outside the supported time range (±{} seconds)",
            MAX_TIME_MS / 1000
        ))),
        None => Err(QueryError::BadRequest(format!(
            "invalid parameter \"{name}\": cannot parse {text:?} to a valid timestamp"
        ))),
    }
}

/// Parses a step or duration: float seconds or a Prometheus duration. Returns ms.
pub fn parse_step(text: &str, name: &str) -> Result<i64, QueryError> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() {
            return Ok((seconds * 1000.0).round().clamp(-(MAX_DURATION_MS as f64), MAX_DURATION_MS as f64) as i64);
        }
    }
    parse_duration(text)
        .map(|ns| (ns / 1_000_000).min(MAX_DURATION_MS))
        .map_err(|_| QueryError::BadRequest(format!("invalid parameter \"{name}\": cannot parse {text:?} to a valid duration")))
}

fn now_ms() -> i64 {
    now_nanos() / 1_000_000
}

/// Seconds with millisecond precision as a JSON number.
fn seconds(ms: i64) -> serde_json::Value {
    serde_json::Number::from_f64(ms as f64 / 1000.0)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn metric_json(labels: &LabelSet) -> serde_json::Value {
    labels.to_json()
}

/// Writes `[<seconds>,"<value>"]`: the time as a JSON number with
/// millisecond precision (what `serde_json` prints for `ms / 1000.0`),
/// the value as Prometheus formats floats.
fn write_point(out: &mut Vec<u8>, ms: i64, v: f64) {
    use std::io::Write;
    out.push(b'[');
    if ms.unsigned_abs() < 10u64.pow(15) {
        // Up to 15 significant digits: the shortest float text is the
        // decimal itself.
        if ms < 0 {
            out.push(b'-');
        }
        let (whole, frac) = (ms.unsigned_abs() / 1000, ms.unsigned_abs() % 1000);
        out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
        let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
        let kept = if frac == 0 {
            1
        } else {
            3 - digits.iter().rev().take_while(|d| **d == b'0').count()
        };
        out.push(b'.');
        out.extend_from_slice(&digits[..kept]);
    } else {
        let _ = serde_json::to_writer(&mut *out, &seconds(ms));
    }
    out.extend_from_slice(b",\"");
    let _ = if v.is_nan() {
        write!(out, "NaN")
    } else if v.is_infinite() {
        write!(out, "{}", if v > 0.0 { "+Inf" } else { "-Inf" })
    } else if v.fract() == 0.0 && v.abs() < 1e15 && (v != 0.0 || v.is_sign_positive()) {
        // Whole numbers (counters, percentages, bytes) print as integers,
        // which is what `{v}` prints for them, at a fraction of the cost.
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
        Ok(())
    } else {
        write!(out, "{v}")
    };
    out.extend_from_slice(b"\"]");
}

/// The whole success body of a query result, written directly: a range
/// query's answer can hold millions of points, and a `serde_json::Value`
/// per point made allocation and freeing most of its time.
pub fn result_body(result: &PromResult) -> Vec<u8> {
    // ~30 bytes a point, ~100 a series: one allocation for most answers.
    let size = match result {
        PromResult::Matrix(series) => series.iter().map(|s| 100 + 30 * s.samples.len()).sum(),
        PromResult::Vector(samples) => 130 * samples.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(4096 + size);
    out.extend_from_slice(b"{\"status\":\"success\",\"data\":");
    match result {
        PromResult::Scalar(t, v) => {
            out.extend_from_slice(b"{\"resultType\":\"scalar\",\"result\":");
            write_point(&mut out, *t, *v);
        }
        PromResult::String(t, s) => {
            out.extend_from_slice(b"{\"resultType\":\"string\",\"result\":");
            let _ = serde_json::to_writer(&mut out, &serde_json::json!([seconds(*t), s]));
        }
        PromResult::Vector(samples) => {
            out.extend_from_slice(b"{\"resultType\":\"vector\",\"result\":[");
            for (i, (labels, t, v)) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                let _ = serde_json::to_writer(&mut out, &metric_json(labels));
                out.extend_from_slice(b",\"value\":");
                write_point(&mut out, *t, *v);
                out.push(b'}');
            }
            out.push(b']');
        }
        PromResult::Matrix(series) => {
            out.extend_from_slice(b"{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                let _ = serde_json::to_writer(&mut out, &metric_json(&s.labels));
                out.extend_from_slice(b",\"values\":[");
                for (j, (t, v)) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_point(&mut out, *t, *v);
                }
                out.extend_from_slice(b"]}");
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b"}}");
    out
}

fn result_response(result: &PromResult) -> Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], result_body(result)).into_response()
}

pub fn store(service: &QueryService, tenant: &str) -> MetricStore {
    MetricStore::new(service.engine.store().clone(), &service.data_dir, tenant, &service.metric_splits)
}

fn limits(service: &QueryService) -> EvalLimits {
    EvalLimits {
        max_series: service.config.max_series.max(1),
        max_points: service.config.max_points,
        ..EvalLimits::default()
    }
}

fn query_text(params: &Params) -> Result<&str, QueryError> {
    params
        .get("query")
        .ok_or_else(|| QueryError::BadRequest("invalid parameter \"query\": query must not be empty".into()))
}

/// `GET|POST /api/v1/query`
pub fn query(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let expr = engine::parse(query_text(params)?)?;
    let time = match params.get("time") {
        Some(t) => parse_time(t, "time")?,
        None => now_ms(),
    };
    let source = store(service, tenant);
    let result = engine::query_instant(&source, &expr, time, limits(service))?;
    Ok(result_response(&result))
}

/// `GET|POST /api/v1/query_range`
pub fn query_range(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let expr = engine::parse(query_text(params)?)?;
    let start = parse_time(
        params
            .get("start")
            .ok_or_else(|| QueryError::BadRequest("invalid parameter \"start\": missing".into()))?,
        "start",
    )?;
    let end = parse_time(
        params
            .get("end")
            .ok_or_else(|| QueryError::BadRequest("invalid parameter \"end\": missing".into()))?,
        "end",
    )?;
    let step = parse_step(
        params
            .get("step")
            .ok_or_else(|| QueryError::BadRequest("invalid parameter \"step\": missing".into()))?,
        "step",
    )?;
    if end < start {
        return Err(QueryError::BadRequest(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        ));
    }
    let source = store(service, tenant);
    let result = engine::query_range(&source, &expr, start, end, step, limits(service))?;
    Ok(result_response(&result))
}

fn matchers(params: &Params, required: bool) -> Result<Vec<Vec<promql_parser::label::Matcher>>, QueryError> {
    let mut out = Vec::new();
    for text in params.all("match[]") {
        let expr = engine::parse(text)?;
        match expr {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                let mut all = vs.matchers.matchers.clone();
                if let Some(name) = &vs.name {
                    all.push(promql_parser::label::Matcher::new(
                        promql_parser::label::MatchOp::Equal,
                        weft_model::metric::METRIC_NAME,
                        name,
                    ));
                }
                out.push(all);
            }
            _ => {
                return Err(QueryError::BadRequest(format!(
                    "invalid parameter \"match[]\": {text:?} is not a series selector"
                )))
            }
        }
    }
    if required && out.is_empty() {
        return Err(QueryError::BadRequest("no match[] parameter provided".into()));
    }
    Ok(out)
}

fn window(params: &Params) -> Result<(i64, i64), QueryError> {
    let start = match params.get("start") {
        Some(t) => parse_time(t, "start")?,
        None => i64::MIN / 4,
    };
    let end = match params.get("end") {
        Some(t) => parse_time(t, "end")?,
        None => i64::MAX / 4,
    };
    Ok((start, end))
}

fn limit(params: &Params) -> Result<usize, QueryError> {
    match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| QueryError::BadRequest(format!("invalid parameter \"limit\": {text:?}")))
            .map(|l| if l == 0 { usize::MAX } else { l }),
        None => Ok(usize::MAX),
    }
}

/// `GET|POST /api/v1/series`
pub fn series(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let selectors = matchers(params, true)?;
    let (start, end) = window(params)?;
    let found = store(service, tenant).series(&selectors, start, end)?;
    let data: Vec<serde_json::Value> = found.iter().take(limit(params)?).map(metric_json).collect();
    Ok(success(serde_json::Value::Array(data)))
}

/// `GET|POST /api/v1/labels`
pub fn labels(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let selectors = matchers(params, false)?;
    let (start, end) = window(params)?;
    let names: BTreeSet<String> = store(service, tenant)
        .series(&selectors, start, end)?
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
        .collect();
    Ok(success(serde_json::json!(names
        .into_iter()
        .take(limit(params)?)
        .collect::<Vec<_>>())))
}

/// Decodes Prometheus' `U__` escaping of UTF-8 label names in paths.
pub fn unescape_label_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'_') {
            chars.next();
            out.push('_');
            continue;
        }
        let mut hex = String::new();
        for h in chars.by_ref() {
            if h == '_' {
                break;
            }
            hex.push(h);
        }
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(decoded) => out.push(decoded),
            None => return name.to_string(),
        }
    }
    out
}

/// `GET /api/v1/label/<name>/values`
pub fn label_values(service: &QueryService, tenant: &str, params: &Params, name: &str) -> Result<Response, QueryError> {
    let name = unescape_label_name(name);
    let selectors = matchers(params, false)?;
    let (start, end) = window(params)?;
    let values: BTreeSet<String> = store(service, tenant)
        .series(&selectors, start, end)?
        .iter()
        .filter_map(|l| l.get(&name).map(str::to_string))
        .collect();
    Ok(success(serde_json::json!(values
        .into_iter()
        .take(limit(params)?)
        .collect::<Vec<_>>())))
}

/// `GET /api/v1/metadata`
pub fn metadata(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let all = store(service, tenant).metadata()?;
    let metric = params.get("metric");
    let limit = limit(params)?;
    let mut data = serde_json::Map::new();
    for (name, meta) in all.iter().filter(|(n, _)| metric.is_none_or(|m| m == n.as_str())).take(limit) {
        data.insert(
            name.clone(),
            serde_json::json!([{"type": meta.kind, "help": meta.help, "unit": meta.unit}]),
        );
    }
    Ok(success(serde_json::Value::Object(data)))
}

/// `GET|POST /api/v1/status/buildinfo`: no `features`, so Grafana sees a Prometheus.
pub fn buildinfo(_: &QueryService, _: &str, _: &Params) -> Result<Response, QueryError> {
    Ok(success(serde_json::json!({
        "version": "2.53.0",
        "revision": format!("weft-{}", env!("CARGO_PKG_VERSION")),
        "branch": "HEAD",
        "buildUser": "weft",
        "buildDate": "",
        "goVersion": "",
    })))
}

/// `GET|POST /api/v1/query_exemplars`: weft stores no exemplars.
pub fn query_exemplars(_: &QueryService, _: &str, _: &Params) -> Result<Response, QueryError> {
    Ok(success(serde_json::json!([])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps() {
        assert_eq!(parse_time("4", "time").unwrap(), 4000);
        assert_eq!(parse_time("1435781451.781", "time").unwrap(), 1_435_781_451_781);
        assert_eq!(parse_time("1970-01-01T00:00:04Z", "time").unwrap(), 4000);
        assert!(parse_time("soon", "time").is_err());
        assert_eq!(parse_step("15", "step").unwrap(), 15_000);
        assert_eq!(parse_step("0.5", "step").unwrap(), 500);
        assert_eq!(parse_step("1m", "step").unwrap(), 60_000);
    }

    #[test]
    fn utf8_label_names_unescape() {
        assert_eq!(unescape_label_name("job"), "job");
        assert_eq!(unescape_label_name("U__k8s_2e_pod"), "k8s.pod");
        assert_eq!(unescape_label_name("U__a__b"), "a_b");
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_outside_the_supported_range_are_refused() {
        assert_eq!(parse_time("1700000000.5", "time").unwrap(), 1_700_000_000_500);
        assert_eq!(parse_time("2026-11-25T10:00:00Z", "time").unwrap(), 1_795_600_800_000);
        for far in ["1e17", "-1e300", "1e300"] {
            let err = parse_time(far, "time").unwrap_err().to_string();
            assert!(err.contains("outside the supported time range"), "{err}");
        }
        assert_eq!(parse_step("1e300", "step").unwrap(), MAX_DURATION_MS);
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use crate::promql::source::Series as PromSeries;

    #[test]
    fn written_bodies_parse_to_what_serde_json_would_print() {
        let times = [
            0,
            1,
            10,
            100,
            999,
            1500,
            1_795_651_095_123,
            1_795_651_095_000,
            -1,
            -1500,
            1_000_000_000_000_001,
        ];
        let values = [
            0.5,
            13.0,
            -0.0,
            -5.0,
            99_999_999_999_999.0,
            1e15,
            1e300,
            1.0 / 3.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut labels = LabelSet::new();
        labels.insert("gpu", "0\"quoted\"");
        let samples: Vec<(i64, f64)> = times.iter().flat_map(|t| values.iter().map(move |v| (*t, *v))).collect();
        let matrix = PromResult::Matrix(vec![PromSeries {
            labels: labels.clone(),
            samples: samples.clone(),
        }]);
        let body: serde_json::Value = serde_json::from_slice(&result_body(&matrix)).unwrap();
        assert_eq!(body["status"], "success");
        assert_eq!(body["data"]["resultType"], "matrix");
        assert_eq!(body["data"]["result"][0]["metric"]["gpu"], "0\"quoted\"");
        let points = body["data"]["result"][0]["values"].as_array().unwrap();
        assert_eq!(points.len(), samples.len());
        for (point, (t, v)) in points.iter().zip(&samples) {
            assert_eq!(point[0], seconds(*t), "time {t}");
            assert_eq!(point[0].to_string(), seconds(*t).to_string(), "time text {t}");
            assert_eq!(point[1], engine::format_float(*v), "value {v}");
        }
        let vector = PromResult::Vector(vec![(labels, 1500, 2.5)]);
        let body: serde_json::Value = serde_json::from_slice(&result_body(&vector)).unwrap();
        assert_eq!(body["data"]["result"][0]["value"], serde_json::json!([1.5, "2.5"]));
        let scalar: serde_json::Value = serde_json::from_slice(&result_body(&PromResult::Scalar(2000, 1.0))).unwrap();
        assert_eq!(scalar["data"]["result"], serde_json::json!([2.0, "1"]));
        let string: serde_json::Value = serde_json::from_slice(&result_body(&PromResult::String(2000, "x".into()))).unwrap();
        assert_eq!(string["data"]["result"], serde_json::json!([2.0, "x"]));
    }
}
