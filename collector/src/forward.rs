//! Posts Arrow bodies straight to the indexer, for sources that have no
//! file to re-read (OTLP, GPU counters, Xid events): the OTLP receiver
//! passes the outcome back to its client, the GPU source retries a few
//! times and then counts what it had to drop.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::CollectorMetrics;
use crate::shipper::{ARROW_STREAM_CONTENT_TYPE, IDEMPOTENCY_HEADER};

/// Why a post failed.
#[derive(Debug)]
pub struct ForwardError {
    /// The indexer refused the data itself (400/413/415/422): do not retry.
    pub permanent: bool,
    pub message: String,
}

/// Sends to one indexer as one tenant.
pub struct Forwarder {
    pub client: reqwest::Client,
    /// Base URL of the indexer.
    pub indexer: String,
    pub tenant: String,
    pub bearer_token: Option<String>,
    pub metrics: Arc<CollectorMetrics>,
}

impl Forwarder {
    /// POSTs an Arrow IPC body to `path` once.
    pub async fn post(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> Result<(), ForwardError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.indexer.trim_end_matches('/')))
            .header("content-type", ARROW_STREAM_CONTENT_TYPE)
            .header("x-scope-orgid", &self.tenant)
            .body(body);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        if let Some(token) = &self.bearer_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.map_err(|e| ForwardError {
            permanent: false,
            message: format!("indexer unreachable: {e}"),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(ForwardError {
            permanent: matches!(status.as_u16(), 400 | 413 | 415 | 422),
            message: format!("indexer answered {status}: {}", text.chars().take(300).collect::<String>()),
        })
    }

    /// POSTs with up to `attempts` tries (backoff 200 ms doubling); on
    /// failure the data is dropped, logged and counted under `what`.
    pub async fn post_with_retries(&self, path: &str, key: Option<&str>, body: Vec<u8>, attempts: u32, what: &str) -> bool {
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=attempts {
            match self.post(path, key, body.clone()).await {
                Ok(()) => return true,
                Err(e) if e.permanent || attempt == attempts => {
                    tracing::warn!(what, error = %e.message, "dropping data the indexer did not take");
                    self.metrics.forward_dropped.with_label_values(&[what]).inc();
                    return false;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        false
    }
}
