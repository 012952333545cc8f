//! Loki's HTTP API as Grafana's Loki data source calls it: `query_range`
//! (streams and matrix), `query` (instant), `labels`, `label/<n>/values`,
//! `series` and `index/stats`. Shapes follow grafana/loki
//! `docs/sources/reference/loki-http-api.md`.

use std::collections::BTreeSet;

use axum::response::{IntoResponse, Response};
use axum::Json;
use weft_model::time::{now_nanos, parse_duration, NANOS_PER_SEC};
use weft_model::LabelSet;

use super::{api_timestamp as timestamp, success, within_api_range, Params};
use crate::logql::ast::{Expr, Matcher};
use crate::logql::eval::{QueryResult, StreamResult};
use crate::logql::parser::{parse, parse_selector};
use crate::{QueryError, QueryService};

const DEFAULT_LIMIT: usize = 100;

fn limit(params: &Params) -> Result<usize, QueryError> {
    match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| QueryError::BadRequest(format!("invalid parameter \"limit\": {text:?} is not a non-negative integer"))),
        None => Ok(DEFAULT_LIMIT),
    }
}

/// Loki treats anything but `forward` as `backward`.
fn backward(params: &Params) -> bool {
    !params.get("direction").is_some_and(|d| d.eq_ignore_ascii_case("forward"))
}

/// A sample value as Prometheus writes it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Unix seconds (with a fraction) as a JSON number.
pub fn seconds(ts: i64) -> serde_json::Value {
    let secs = ts as f64 / NANOS_PER_SEC as f64;
    serde_json::Number::from_f64(secs)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn streams_json(streams: Vec<StreamResult>) -> serde_json::Value {
    serde_json::Value::Array(
        streams
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "stream": s.labels.to_json(),
                    "values": s.entries.into_iter().map(|(ts, line)| serde_json::json!([ts.to_string(), line])).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The `data` object of a query result.
pub fn result_json(result: QueryResult) -> serde_json::Value {
    let (kind, result) = match result {
        QueryResult::Streams(streams) => ("streams", streams_json(streams)),
        QueryResult::Matrix(series) => (
            "matrix",
            serde_json::Value::Array(
                series
                    .into_iter()
                    .map(|s| {
                        serde_json::json!({
                            "metric": s.labels.to_json(),
                            "values": s.points.into_iter().map(|(t, v)| serde_json::json!([seconds(t), format_value(v)])).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
        ),
        QueryResult::Vector(samples) => (
            "vector",
            serde_json::Value::Array(
                samples.into_iter().map(|s| serde_json::json!({"metric": s.labels.to_json(), "value": [seconds(s.ts), format_value(s.value)]})).collect(),
            ),
        ),
        QueryResult::Scalar(t, v) => ("scalar", serde_json::json!([seconds(t), format_value(v)])),
    };
    serde_json::json!({"resultType": kind, "result": result, "stats": {}})
}

/// Loki's default step: the range / 250, at least one second.
fn default_step(start: i64, end: i64) -> i64 {
    let secs = ((end - start) as f64 / NANOS_PER_SEC as f64 / 250.0).ceil().max(1.0);
    secs as i64 * NANOS_PER_SEC
}

fn query_param(params: &Params) -> Result<&str, QueryError> {
    params
        .get("query")
        .ok_or_else(|| QueryError::BadRequest("invalid parameter \"query\": the query is empty".into()))
}

/// `GET|POST /loki/api/v1/query_range`
pub fn query_range(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let expr = parse(query_param(params)?)?;
    let now = now_nanos();
    let end = timestamp(params, "end", now)?;
    let start = match params.get("since") {
        Some(since) if params.get("start").is_none() => {
            let since = parse_duration(since).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"since\": {e}")))?;
            within_api_range(end.saturating_sub(since), "since")?
        }
        _ => timestamp(params, "start", end - 3600 * NANOS_PER_SEC)?,
    };
    if end < start {
        return Err(QueryError::BadRequest(
            "invalid parameter \"end\": the end timestamp must not be before the start time".into(),
        ));
    }
    let result = match &expr {
        Expr::Log(log) => QueryResult::Streams(service.engine.logs(tenant, log, start, end, limit(params)?, backward(params))?),
        metric => {
            let step = match params.get("step") {
                Some(text) => parse_duration(text).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"step\": {e}")))?,
                None => default_step(start, end),
            };
            service.engine.range(tenant, metric, start, end, step)?
        }
    };
    Ok(success(result_json(result)))
}

/// `GET|POST /loki/api/v1/query`: instant metric queries.
pub fn query(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let expr = parse(query_param(params)?)?;
    let time = timestamp(params, "time", now_nanos())?;
    let result = match &expr {
        Expr::Log(_) => {
            return Err(QueryError::BadRequest(
                "log queries are not supported as an instant query type, please change your query to a range query type".into(),
            ))
        }
        metric => service.engine.instant(tenant, metric, time)?,
    };
    Ok(success(result_json(result)))
}

/// Stream label sets of splits overlapping `[start, end]`, optionally
/// filtered by selectors (any of them).
fn streams_in(
    service: &QueryService,
    tenant: &str,
    start: i64,
    end: i64,
    selectors: &[Vec<Matcher>],
) -> Result<BTreeSet<LabelSet>, QueryError> {
    let store = service.engine.store();
    store.refresh()?;
    let catalog = store.catalog();
    let mut out = BTreeSet::new();
    for split in catalog
        .splits
        .iter()
        .filter(|s| s.kind == weft_indexer::catalog::SplitKind::Logs && s.tenant == tenant && s.max_ts >= start && s.min_ts <= end)
    {
        for stream in &split.streams {
            let Ok(labels) = LabelSet::parse(stream) else {
                continue;
            };
            let keep = selectors.is_empty()
                || selectors
                    .iter()
                    .any(|matchers| matchers.iter().all(|m| m.matches(labels.get(&m.name).unwrap_or(""))));
            if keep {
                out.insert(labels);
            }
        }
    }
    Ok(out)
}

fn label_window(params: &Params) -> Result<(i64, i64), QueryError> {
    let end = timestamp(params, "end", now_nanos())?;
    let start = timestamp(params, "start", end - 6 * 3600 * NANOS_PER_SEC)?;
    Ok((start, end))
}

fn optional_selector(params: &Params) -> Result<Vec<Vec<Matcher>>, QueryError> {
    Ok(match params.get("query") {
        Some(q) => vec![parse_selector(q)?],
        None => Vec::new(),
    })
}

/// `GET /loki/api/v1/labels`
pub fn labels(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let (start, end) = label_window(params)?;
    let names: BTreeSet<String> = streams_in(service, tenant, start, end, &optional_selector(params)?)?
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
        .collect();
    Ok(success(serde_json::json!(names)))
}

/// `GET /loki/api/v1/label/<name>/values`
pub fn label_values(service: &QueryService, tenant: &str, params: &Params, name: &str) -> Result<Response, QueryError> {
    let (start, end) = label_window(params)?;
    let values: BTreeSet<String> = streams_in(service, tenant, start, end, &optional_selector(params)?)?
        .iter()
        .filter_map(|l| l.get(name).map(str::to_string))
        .collect();
    Ok(success(serde_json::json!(values)))
}

/// `GET|POST /loki/api/v1/series?match[]=…`
pub fn series(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let mut selectors = Vec::new();
    for text in params.all("match[]").into_iter().chain(params.all("match")) {
        selectors.push(parse_selector(text)?);
    }
    if selectors.is_empty() {
        return Err(QueryError::BadRequest(
            "invalid parameter \"match[]\": at least one stream selector is required".into(),
        ));
    }
    let (start, end) = label_window(params)?;
    let found: Vec<serde_json::Value> = streams_in(service, tenant, start, end, &selectors)?
        .iter()
        .map(|l| l.to_json())
        .collect();
    Ok(success(serde_json::Value::Array(found)))
}

/// `GET /loki/api/v1/index/stats`: a bare object, no envelope.
pub fn index_stats(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let selector = parse_selector(query_param(params)?)?;
    let end = timestamp(params, "end", now_nanos())?;
    let start = timestamp(params, "start", end - 3600 * NANOS_PER_SEC)?;
    let mut streams = BTreeSet::new();
    let (mut chunks, mut entries, mut bytes) = (0u64, 0u64, 0u64);
    for split in service.engine.store().splits(tenant, start, end)? {
        let matching = split.matching_streams(&selector);
        if matching.is_empty() {
            continue;
        }
        chunks += 1;
        for i in &matching {
            streams.insert(split.meta.streams[*i].clone());
        }
        let query = split.query(&matching, start, end, &[]);
        let count = split.count(query.as_ref())? as u64;
        entries += count;
        bytes += split.meta.line_bytes * count / split.meta.rows.max(1);
    }
    Ok(Json(serde_json::json!({"streams": streams.len(), "chunks": chunks, "entries": entries, "bytes": bytes})).into_response())
}

/// `GET /loki/api/v1/status/buildinfo`
pub async fn buildinfo() -> Response {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "revision": "", "branch": "", "buildUser": "weft", "buildDate": "", "goVersion": ""})).into_response()
}
