//! HTTP APIs of the query service: Loki's (for Grafana's built-in Loki data
//! source) and weft's native search. Every endpoint takes GET parameters
//! and form-encoded POST bodies alike; every error is a JSON envelope with
//! `status`, `errorType`, `error` and `message`.

pub mod loki;
pub mod native;
pub mod prometheus;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::{QueryError, QueryService};

/// Latest (and, negated, earliest) time the Loki and search APIs take, in
/// nanoseconds (the years 1843 to 2096): the difference of two such times,
/// and a window or a step taken from one, stays within an `i64`.
pub const MAX_API_NANOS: i64 = 4_000_000_000_000_000_000;

/// A time parameter of the Loki and search APIs (Unix seconds, a float,
/// nanoseconds or RFC 3339), `default` when absent.
pub fn api_timestamp(params: &Params, name: &str, default: i64) -> Result<i64, QueryError> {
    let ts = match params.get(name) {
        Some(text) => {
            weft_model::time::parse_api_timestamp(text).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"{name}\": {e}")))?
        }
        None => default,
    };
    within_api_range(ts, name)
}

/// `ts` where it is within ±[`MAX_API_NANOS`], else a clear error.
pub fn within_api_range(ts: i64, name: &str) -> Result<i64, QueryError> {
    if ts.unsigned_abs() > MAX_API_NANOS as u64 {
        return Err(QueryError::BadRequest(format!(
            "invalid parameter \"{name}\": {ts} ns is outside the supported time range (years 1843 to 2096)"
        )));
    }
    Ok(ts)
}

/// Request parameters from the query string and a form body.
#[derive(Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Reads the query string and, for form posts, the body.
    pub fn from_request(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Self, QueryError> {
        let mut pairs: Vec<(String, String)> = match uri.query() {
            Some(q) => serde_urlencoded::from_str(q).map_err(|e| QueryError::BadRequest(format!("invalid query string: {e}")))?,
            None => Vec::new(),
        };
        let is_form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form && !body.is_empty() {
            let text = std::str::from_utf8(body).map_err(|_| QueryError::BadRequest("form body is not UTF-8".into()))?;
            let form: Vec<(String, String)> =
                serde_urlencoded::from_str(text).map_err(|e| QueryError::BadRequest(format!("invalid form body: {e}")))?;
            pairs.extend(form);
        }
        Ok(Params(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// The tenant of a request: `X-Scope-OrgID`, `default` when absent.
pub fn tenant_of(headers: &HeaderMap) -> String {
    weft_indexer::ingest::tenant_of(headers)
}

/// The JSON error envelope for an error.
pub fn error_response(error: &QueryError) -> Response {
    let message = error.to_string();
    (
        error.status(),
        Json(serde_json::json!({"status": "error", "errorType": error.error_type(), "error": message, "message": message})),
    )
        .into_response()
}

/// A success envelope around `data`.
pub fn success(data: serde_json::Value) -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "success", "data": data}))).into_response()
}

/// Runs a handler body on a blocking thread with the service's timeout,
/// auth check, error envelope and latency metric.
pub async fn run<F>(service: Arc<QueryService>, endpoint: &'static str, headers: HeaderMap, uri: Uri, body: Bytes, work: F) -> Response
where
    F: FnOnce(&QueryService, &str, &Params) -> Result<Response, QueryError> + Send + 'static,
{
    let started = Instant::now();
    let result = async {
        if let Some(token) = &service.config.auth_token {
            let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(token.as_str()) {
                return Ok((StatusCode::UNAUTHORIZED, Json(serde_json::json!({"status":"error","errorType":"unauthorized","error":"missing or wrong bearer token","message":"missing or wrong bearer token"}))).into_response());
            }
        }
        let params = Params::from_request(&uri, &headers, &body)?;
        let tenant = tenant_of(&headers);
        weft_indexer::service::validate_tenant(&tenant).map_err(|e| QueryError::BadRequest(e.to_string()))?;
        let timeout = service.config.timeout;
        let me = service.clone();
        let task = tokio::task::spawn_blocking(move || work(&me, &tenant, &params));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(QueryError::Internal(format!("query task failed: {e}"))),
            Err(_) => Err(QueryError::Timeout(timeout)),
        }
    }
    .await;
    service
        .metrics
        .duration
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => response,
        Err(error) => {
            service.metrics.errors.with_label_values(&[endpoint, error.error_type()]).inc();
            if error.status().is_server_error() {
                tracing::warn!(endpoint, error = %error, "query failed");
            }
            error_response(&error)
        }
    }
}

macro_rules! endpoint {
    ($name:ident, $label:literal, $work:path) => {
        async fn $name(
            axum::extract::State(service): axum::extract::State<Arc<QueryService>>,
            headers: HeaderMap,
            uri: Uri,
            body: Bytes,
        ) -> Response {
            run(service, $label, headers, uri, body, $work).await
        }
    };
}

/// An endpoint whose path holds one segment the handler takes (a label
/// name, a run).
macro_rules! endpoint_with_path {
    ($name:ident, $label:literal, $work:path) => {
        async fn $name(
            axum::extract::State(service): axum::extract::State<Arc<QueryService>>,
            axum::extract::Path(segment): axum::extract::Path<String>,
            headers: HeaderMap,
            uri: Uri,
            body: Bytes,
        ) -> Response {
            run(service, $label, headers, uri, body, move |s, t, p| $work(s, t, p, &segment)).await
        }
    };
}

endpoint!(loki_query_range, "loki_query_range", loki::query_range);
endpoint!(loki_query, "loki_query", loki::query);
endpoint!(loki_labels, "loki_labels", loki::labels);
endpoint!(loki_series, "loki_series", loki::series);
endpoint!(loki_index_stats, "loki_index_stats", loki::index_stats);
endpoint!(native_search, "search", native::search);
endpoint!(prom_query, "prom_query", prometheus::query);
endpoint!(prom_query_range, "prom_query_range", prometheus::query_range);
endpoint!(prom_series, "prom_series", prometheus::series);
endpoint!(prom_labels, "prom_labels", prometheus::labels);
endpoint!(prom_metadata, "prom_metadata", prometheus::metadata);
endpoint!(prom_buildinfo, "prom_buildinfo", prometheus::buildinfo);
endpoint!(prom_exemplars, "prom_exemplars", prometheus::query_exemplars);

endpoint_with_path!(prom_label_values, "prom_label_values", prometheus::label_values);
endpoint_with_path!(loki_label_values, "loki_label_values", loki::label_values);
endpoint_with_path!(run_ranks, "run_ranks", native::run_ranks);

async fn not_built() -> Response {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({"status":"error","errorType":"not_found","error":"not implemented in weft yet","message":"not implemented in weft yet"}))).into_response()
}

/// `?type=alert|record` of the rules endpoint.
fn rule_type(uri: &Uri) -> Option<String> {
    let pairs: Vec<(String, String)> = uri.query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    pairs.into_iter().find(|(k, _)| k == "type").map(|(_, v)| v)
}

/// Prometheus' `/api/v1/rules` and `/api/v1/alerts` (also under
/// `/prometheus/`, where Grafana looks for a Loki ruler), from the rule
/// evaluator; empty when rules are off.
pub fn rules_router(manager: Option<Arc<crate::rules::RuleManager>>) -> Router {
    let for_rules = manager.clone();
    let rules = move |uri: Uri| {
        let manager = for_rules.clone();
        async move {
            match manager {
                Some(m) => success(m.rules_json(rule_type(&uri).as_deref())),
                None => success(serde_json::json!({"groups": []})),
            }
        }
    };
    let alerts = move || {
        let manager = manager.clone();
        async move {
            match manager {
                Some(m) => success(m.alerts_json()),
                None => success(serde_json::json!({"alerts": []})),
            }
        }
    };
    Router::new()
        .route("/api/v1/rules", get(rules.clone()).post(rules.clone()))
        .route("/prometheus/api/v1/rules", get(rules.clone()).post(rules))
        .route("/api/v1/alerts", get(alerts.clone()).post(alerts.clone()))
        .route("/prometheus/api/v1/alerts", get(alerts.clone()).post(alerts))
}

/// The query routes (Loki API and native search).
pub fn router(service: Arc<QueryService>) -> Router {
    Router::new()
        .route("/loki/api/v1/query_range", get(loki_query_range).post(loki_query_range))
        .route("/loki/api/v1/query", get(loki_query).post(loki_query))
        .route("/loki/api/v1/labels", get(loki_labels).post(loki_labels))
        .route("/loki/api/v1/label/{name}/values", get(loki_label_values).post(loki_label_values))
        .route("/loki/api/v1/series", get(loki_series).post(loki_series))
        .route("/loki/api/v1/index/stats", get(loki_index_stats).post(loki_index_stats))
        .route("/loki/api/v1/detected_labels", get(not_built))
        .route("/loki/api/v1/detected_fields", get(not_built))
        .route("/loki/api/v1/index/volume", get(not_built))
        .route("/loki/api/v1/index/volume_range", get(not_built))
        .route("/loki/api/v1/patterns", get(not_built))
        .route("/loki/api/v1/status/buildinfo", get(loki::buildinfo))
        .route("/api/v1/search", get(native_search).post(native_search))
        .route("/api/v1/runs/{run}/ranks", get(run_ranks))
        .route("/api/v1/query", get(prom_query).post(prom_query))
        .route("/api/v1/query_range", get(prom_query_range).post(prom_query_range))
        .route("/api/v1/series", get(prom_series).post(prom_series))
        .route("/api/v1/labels", get(prom_labels).post(prom_labels))
        .route("/api/v1/label/{name}/values", get(prom_label_values).post(prom_label_values))
        .route("/api/v1/metadata", get(prom_metadata).post(prom_metadata))
        .route("/api/v1/status/buildinfo", get(prom_buildinfo).post(prom_buildinfo))
        .route("/api/v1/query_exemplars", get(prom_exemplars).post(prom_exemplars))
        .with_state(service)
}
