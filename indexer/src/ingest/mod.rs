//! The indexer's HTTP ingest endpoints: the collector's Arrow batches
//! (`POST /api/v1/ingest`) and Loki's push API (`POST /loki/api/v1/push`).
//! Disk and CPU work runs on blocking threads, never on the async runtime.

pub mod loki_push;
pub mod remote_write;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use weft_model::batch::encode_ipc;
use weft_model::LogBatchBuilder;

use crate::service::Indexer;
use crate::IndexerError;

/// Header carrying a batch's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "x-weft-idempotency-key";

/// The tenant of a request: `X-Scope-OrgID`, `default` when absent.
pub fn tenant_of(headers: &HeaderMap) -> String {
    headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Checks the bearer token when one is configured.
pub fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), IndexerError> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token) {
        Ok(())
    } else {
        Err(IndexerError::Unauthorized)
    }
}

impl IntoResponse for IndexerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "ingest request failed");
        }
        (
            status,
            Json(serde_json::json!({"status": "error", "error": self.to_string(), "message": self.to_string()})),
        )
            .into_response()
    }
}

/// The ingest routes, served by the indexer (and by standalone).
pub fn router(indexer: Arc<Indexer>) -> Router {
    let limit = indexer.config().max_request_bytes;
    Router::new()
        .route("/api/v1/ingest", post(ingest_arrow))
        .route("/loki/api/v1/push", post(loki_push))
        .route("/api/v1/write", post(prometheus_remote_write))
        .route("/api/v1/ingest/metrics", post(ingest_metrics))
        .layer(DefaultBodyLimit::max(limit))
        // Outermost: a request waits for its turn before its body is read.
        .layer(axum::middleware::from_fn_with_state(indexer.clone(), one_of_a_few))
        .with_state(indexer)
}

/// Lets a request through once one of the `max_concurrent_requests`
/// permits is free, and holds it until the answer is written.
async fn one_of_a_few(State(indexer): State<Arc<Indexer>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let permits = indexer.ingest_permits();
    let permit = match permits.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            indexer.metrics.requests_waiting.inc();
            let permit = permits.acquire_owned().await;
            indexer.metrics.requests_waiting.dec();
            permit.expect("the permits are never closed")
        }
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

async fn ingest_arrow(State(indexer): State<Arc<Indexer>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        authorize(&headers, indexer.config().auth_token.as_deref())?;
        let tenant = tenant_of(&headers);
        let key = headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let me = indexer.clone();
        tokio::task::spawn_blocking(move || me.ingest_arrow(&tenant, &key, &body, "native"))
            .await
            .map_err(|e| IndexerError::Internal(format!("ingest task: {e}")))?
    }
    .await;
    let code = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    indexer.metrics.requests.with_label_values(&["native", code.as_str()]).inc();
    match result {
        Ok(outcome) => (StatusCode::OK, Json(outcome)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn loki_push(State(indexer): State<Arc<Indexer>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        authorize(&headers, indexer.config().auth_token.as_deref())?;
        let tenant = tenant_of(&headers);
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_ascii_lowercase();
        let gzip = headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let config = indexer.config().clone();
        let me = indexer.clone();
        tokio::task::spawn_blocking(move || {
            let limits = loki_push::PushLimits {
                max_body_bytes: config.max_request_bytes,
                max_line_bytes: config.max_line_bytes,
                max_entries: config.max_request_rows,
            };
            let body = if gzip {
                loki_push::gunzip(&body, config.max_request_bytes)?
            } else {
                body.to_vec()
            };
            let mut stats = loki_push::PushStats::default();
            let records = if content_type.starts_with("application/x-protobuf") {
                loki_push::decode_protobuf(&body, &limits, &mut stats)?
            } else if content_type.starts_with("application/json") || content_type.is_empty() {
                loki_push::decode_json(&body, &limits, &mut stats)?
            } else {
                return Err(IndexerError::UnsupportedMediaType(format!(
                    "content type {content_type:?}: use application/json or application/x-protobuf"
                )));
            };
            me.metrics.truncated_lines.inc_by(stats.truncated);
            me.metrics.invalid_utf8.inc_by(stats.invalid_utf8);
            if records.is_empty() {
                return Ok(());
            }
            let mut builder = LogBatchBuilder::with_capacity(records.len(), body.len());
            for record in &records {
                builder.append(&record.as_ref());
            }
            let ipc = encode_ipc(&[builder.finish(true)], Default::default())?;
            me.ingest_arrow(&tenant, "", &ipc, "loki_push").map(|_| ())
        })
        .await
        .map_err(|e| IndexerError::Internal(format!("push task: {e}")))?
    }
    .await;
    let code = match &result {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(e) => e.status(),
    };
    indexer.metrics.requests.with_label_values(&["loki_push", code.as_str()]).inc();
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn ingest_metrics(State(indexer): State<Arc<Indexer>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        authorize(&headers, indexer.config().auth_token.as_deref())?;
        let tenant = tenant_of(&headers);
        let me = indexer.clone();
        tokio::task::spawn_blocking(move || me.ingest_metrics(&tenant, &body, "native"))
            .await
            .map_err(|e| IndexerError::Internal(format!("ingest task: {e}")))?
    }
    .await;
    let code = result.as_ref().map(|_| StatusCode::OK).unwrap_or_else(|e| e.status());
    indexer.metrics.requests.with_label_values(&["native_metrics", code.as_str()]).inc();
    match result {
        Ok(samples) => (StatusCode::OK, Json(serde_json::json!({"accepted": samples}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn prometheus_remote_write(State(indexer): State<Arc<Indexer>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        authorize(&headers, indexer.config().auth_token.as_deref())?;
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-protobuf");
        if content_type.contains("io.prometheus.write.v2") {
            return Err(IndexerError::UnsupportedMediaType(
                "remote write 2.0 is not supported yet; send prometheus.WriteRequest (1.0)".into(),
            ));
        }
        let tenant = tenant_of(&headers);
        let me = indexer.clone();
        tokio::task::spawn_blocking(move || {
            let mut decoded = remote_write::decode(&body, me.config().max_request_bytes)?;
            if decoded.dropped > 0 {
                me.metrics
                    .duplicate_rows
                    .with_label_values(&["unsupported_histogram_or_exemplar"])
                    .inc_by(decoded.dropped);
            }
            let mut metadata = std::collections::HashMap::new();
            if !decoded.metadata.is_empty() {
                metadata.insert(
                    weft_model::metric::META_METRIC_METADATA.to_string(),
                    serde_json::to_string(&decoded.metadata).expect("metadata serializes"),
                );
            }
            let ipc = encode_ipc(&[decoded.builder.finish()], metadata)?;
            me.ingest_metrics(&tenant, &ipc, "remote_write")
        })
        .await
        .map_err(|e| IndexerError::Internal(format!("remote write task: {e}")))?
    }
    .await;
    let code = result.as_ref().map(|_| StatusCode::NO_CONTENT).unwrap_or_else(|e| e.status());
    indexer.metrics.requests.with_label_values(&["remote_write", code.as_str()]).inc();
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_model::LogRecord;

    use super::*;
    use crate::IndexerConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_requests_wait_for_one_of_a_few_permits() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexerConfig {
            max_concurrent_requests: 1,
            ..Default::default()
        };
        let indexer = Indexer::open(dir.path(), config, &prometheus::Registry::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/ingest", listener.local_addr().unwrap());
        let serve = axum::serve(listener, router(indexer.clone()));
        tokio::spawn(async move { serve.await });
        let mut builder = LogBatchBuilder::default();
        let record = LogRecord {
            ts: 1_764_000_000_000_000_000,
            line: "waited its turn".into(),
            ..Default::default()
        };
        builder.append(&record.as_ref());
        let body = encode_ipc(&[builder.finish(true)], Default::default()).unwrap();

        // The only permit is taken: the request waits, its body unread.
        let held = indexer.ingest_permits().acquire_owned().await.unwrap();
        weft_model::tls::install_crypto_provider();
        let request = tokio::spawn(reqwest::Client::new().post(&url).body(body).send());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while indexer.metrics.requests_waiting.get() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "the request never waited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!request.is_finished());
        drop(held);
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(indexer.metrics.requests_waiting.get(), 0);
    }
}
