//! The OTLP/HTTP receiver (default port 4318): `POST /v1/metrics` and
//! `/v1/logs`, protobuf or JSON (by `Content-Type`), optionally gzipped,
//! bodies up to 64 MiB after decompression. Training jobs instrumented with
//! OpenTelemetry send here; resource attributes `k8s.namespace.name`,
//! `k8s.pod.name`, `k8s.container.name` become weft's labels.
//!
//! Data is forwarded to the indexer before the request is answered, so a
//! 200 means it is in the indexer's WAL; when the indexer is unreachable the
//! answer is 503 with `Retry-After` and the OTLP exporter retries (OTLP
//! senders keep their own retry queue). Bad data is a 400 with a
//! `google.rpc.Status`; data that is partly unusable is a 200 with
//! `partial_success` naming how much was rejected and why.

pub mod convert;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use weft_model::batch::encode_ipc;
use weft_model::metric::META_METRIC_METADATA;
use weft_model::LogBatchBuilder;

use crate::metrics::CollectorMetrics;

/// Largest request body after decompression (the OTLP spec's limit).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Most samples forwarded to the indexer in one request (its default
/// request limit is 1,000,000 rows).
pub const MAX_FORWARD_ROWS: usize = 250_000;

/// `google.rpc.Status`, the body of OTLP error replies.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Where received data goes and how.
pub struct OtlpReceiver {
    pub forwarder: crate::forward::Forwarder,
    pub max_line_bytes: usize,
    pub metrics: Arc<CollectorMetrics>,
    /// Run and rank of the pods that send.
    pub pods: Arc<crate::kubernetes::PodDirectory>,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// A failed request: status and message.
struct Failure(StatusCode, String);

fn failure_response(encoding: Encoding, failure: Failure) -> Response {
    // gRPC codes: 3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE.
    let code = match failure.0 {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        _ => 14,
    };
    let status = RpcStatus { code, message: failure.1 };
    let mut response = match encoding {
        Encoding::Protobuf => (failure.0, [("content-type", "application/x-protobuf")], status.encode_to_vec()).into_response(),
        Encoding::Json => (
            failure.0,
            [("content-type", "application/json")],
            serde_json::to_vec(&status).expect("status serializes"),
        )
            .into_response(),
    };
    if failure.0 == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert("retry-after", "1".parse().expect("valid header"));
    }
    response
}

fn read_body(headers: &HeaderMap, body: &Bytes) -> Result<(Encoding, Vec<u8>), (Encoding, Failure)> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoding = if content_type.starts_with("application/x-protobuf") {
        Encoding::Protobuf
    } else if content_type.starts_with("application/json") {
        Encoding::Json
    } else {
        return Err((
            Encoding::Json,
            Failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {content_type:?}: use application/x-protobuf or application/json"),
            ),
        ));
    };
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok((encoding, body.to_vec()));
    }
    let mut out = Vec::new();
    let read = flate2::read::GzDecoder::new(body.as_ref())
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(e) => Err((encoding, Failure(StatusCode::BAD_REQUEST, format!("body is not valid gzip: {e}")))),
        Ok(_) if out.len() > MAX_BODY_BYTES => Err((
            encoding,
            Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("decompressed body exceeds {MAX_BODY_BYTES} bytes"),
            ),
        )),
        Ok(_) => Ok((encoding, out)),
    }
}

impl OtlpReceiver {
    async fn forward(&self, path: &str, key: Option<String>, body: Vec<u8>) -> Result<(), Failure> {
        self.forwarder.post(path, key.as_deref(), body).await.map_err(|e| {
            let status = if e.permanent {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Failure(status, e.message)
        })
    }
}

/// A success reply. In JSON, OTLP writes int64 counts as decimal strings.
fn reply<M: Message>(encoding: Encoding, message: &M, rejected: Option<(&str, i64, &str)>) -> Response {
    match encoding {
        Encoding::Protobuf => (
            StatusCode::OK,
            [("content-type", "application/x-protobuf")],
            message.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            let body = match rejected {
                Some((field, count, reason)) => serde_json::json!({"partialSuccess": {field: count.to_string(), "errorMessage": reason}}),
                None => serde_json::json!({}),
            };
            (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response()
        }
    }
}

async fn receive_metrics(State(receiver): State<Arc<OtlpReceiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let (encoding, raw) = match read_body(&headers, &body) {
        Ok(read) => read,
        Err((encoding, failure)) => return failure_response(encoding, failure),
    };
    let request: Result<ExportMetricsServiceRequest, String> = match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(raw.as_slice()).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(&raw).map_err(|e| e.to_string()),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            receiver.metrics.otlp_rejected.inc();
            return failure_response(
                encoding,
                Failure(StatusCode::BAD_REQUEST, format!("invalid ExportMetricsServiceRequest: {e}")),
            );
        }
    };
    let mut converted = convert::metrics(&request, &receiver.pods);
    if !converted.samples.is_empty() {
        let metadata = HashMap::from([(
            META_METRIC_METADATA.to_string(),
            serde_json::to_string(&converted.metadata).expect("metadata serializes"),
        )]);
        let samples = converted.samples.len();
        let batch = converted.samples.finish();
        // A histogram-heavy request expands to many rows: forward it in
        // pieces the indexer's per-request row limit takes.
        let mut offset = 0;
        while offset < samples {
            let rows = (samples - offset).min(MAX_FORWARD_ROWS);
            let body = match encode_ipc(&[batch.slice(offset, rows)], metadata.clone()) {
                Ok(body) => body,
                Err(e) => return failure_response(encoding, Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            };
            if let Err(failure) = receiver.forward("/api/v1/ingest/metrics", None, body).await {
                return failure_response(encoding, failure);
            }
            receiver.metrics.otlp_samples.inc_by(rows as u64);
            offset += rows;
        }
    }
    let reason = converted.reasons.join("; ");
    let partial_success = (converted.rejected > 0).then(|| ExportMetricsPartialSuccess {
        rejected_data_points: converted.rejected,
        error_message: reason.clone(),
    });
    let rejected = (converted.rejected > 0).then_some(("rejectedDataPoints", converted.rejected, reason.as_str()));
    reply(encoding, &ExportMetricsServiceResponse { partial_success }, rejected)
}

async fn receive_logs(State(receiver): State<Arc<OtlpReceiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let (encoding, raw) = match read_body(&headers, &body) {
        Ok(read) => read,
        Err((encoding, failure)) => return failure_response(encoding, failure),
    };
    let request: Result<ExportLogsServiceRequest, String> = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(raw.as_slice()).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(&raw).map_err(|e| e.to_string()),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            receiver.metrics.otlp_rejected.inc();
            return failure_response(
                encoding,
                Failure(StatusCode::BAD_REQUEST, format!("invalid ExportLogsServiceRequest: {e}")),
            );
        }
    };
    let records = convert::logs(&request, receiver.max_line_bytes, &receiver.pods);
    let mut rejected = 0i64;
    let mut builder = LogBatchBuilder::with_capacity(records.len(), raw.len());
    for record in &records {
        if record.namespace.is_empty() && record.pod.is_empty() && record.labels.is_empty() && record.run.is_none() {
            // Still stored: a log with no resource labels is findable by its text.
        }
        builder.append(&record.as_ref());
    }
    if !records.is_empty() {
        // The same request always gives the same key, so a retry is dropped whole.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for b in &raw {
            hash ^= *b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let body = match encode_ipc(&[builder.finish(true)], HashMap::new()) {
            Ok(body) => body,
            Err(e) => return failure_response(encoding, Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        if let Err(failure) = receiver.forward("/api/v1/ingest", Some(format!("otlp-{hash:016x}")), body).await {
            if failure.0 == StatusCode::BAD_REQUEST {
                rejected = records.len() as i64;
            } else {
                return failure_response(encoding, failure);
            }
        } else {
            receiver.metrics.otlp_log_records.inc_by(records.len() as u64);
        }
    }
    let reason = "the indexer refused these log records";
    let partial_success = (rejected > 0).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejected,
        error_message: reason.into(),
    });
    reply(
        encoding,
        &ExportLogsServiceResponse { partial_success },
        (rejected > 0).then_some(("rejectedLogRecords", rejected, reason)),
    )
}

async fn no_traces() -> Response {
    (
        StatusCode::NOT_FOUND,
        [("content-type", "application/json")],
        r#"{"code":12,"message":"weft does not collect traces"}"#,
    )
        .into_response()
}

/// The OTLP/HTTP routes.
pub fn router(receiver: Arc<OtlpReceiver>) -> Router {
    Router::new()
        .route("/v1/metrics", post(receive_metrics))
        .route("/v1/logs", post(receive_logs))
        .route("/v1/traces", post(no_traces))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receiver)
}
