//! Ships sealed batches to the indexer, in order, one at a time: POST the
//! Arrow IPC body with its idempotency key, retry with exponential backoff
//! and jitter, and while the indexer is unreachable keep batches in the
//! bounded disk spool. When the spool is full the shipper stops taking
//! batches, the channel from the tailer fills, and tailing pauses
//! (backpressure). File checkpoints move only after an acknowledgement.

pub mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use weft_model::batch::WireBody;

use crate::batcher::SealedBatch;
use crate::checkpoint::{CheckpointStore, TailerCheckpoint};
use crate::metrics::CollectorMetrics;
use crate::CollectorError;
use spool::Spool;

/// Header carrying a batch's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "x-weft-idempotency-key";
/// Content type of collector batches.
pub const ARROW_STREAM_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// How the shipper talks to the indexer.
#[derive(Clone, Debug)]
pub struct ShipperSettings {
    /// Base URL of the indexer (`http://host:port`).
    pub indexer_url: String,
    /// Tenant sent as `X-Scope-OrgID`.
    pub tenant: String,
    pub request_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts for a fresh batch before it goes to the spool.
    pub attempts_before_spool: u32,
    pub spool_max_bytes: u64,
    /// Least time between two checkpoint writes.
    pub checkpoint_interval: Duration,
    /// Most refused batches kept under `state/rejected`.
    pub keep_rejected: usize,
    /// Bearer token for the indexer, when it requires one.
    pub bearer_token: Option<String>,
}

impl Default for ShipperSettings {
    fn default() -> Self {
        Self {
            indexer_url: "http://127.0.0.1:3100".into(),
            tenant: "default".into(),
            request_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            attempts_before_spool: 3,
            spool_max_bytes: 512 * 1024 * 1024,
            checkpoint_interval: Duration::from_millis(500),
            keep_rejected: 64,
            bearer_token: None,
        }
    }
}

/// Why a delivery failed.
#[derive(Debug)]
enum SendError {
    /// Worth retrying: connection errors, 429, 5xx.
    Retryable(String),
    /// The indexer will never take this batch (4xx other than 429).
    Permanent(String),
}

/// Delivers batches and keeps the checkpoint of what was acknowledged.
pub struct Shipper {
    settings: ShipperSettings,
    client: reqwest::Client,
    url: String,
    metrics_url: String,
    spool: Spool,
    checkpoints: CheckpointStore,
    rejected_dir: PathBuf,
    acked: Option<TailerCheckpoint>,
    last_checkpoint_write: Instant,
    metrics: Arc<CollectorMetrics>,
    rejected_seq: u64,
    /// Set when a batch could be neither delivered nor spooled: from then on
    /// the checkpoint must not move past it, so it stays where it is until a
    /// restart reads those lines again.
    checkpoint_frozen: bool,
    /// Set once a batch could not be kept during shutdown: later batches
    /// must not be spooled after it (tailing resumes from the spool).
    spooling_stopped: bool,
}

/// Exponential backoff with full jitter.
fn backoff(settings: &ShipperSettings, attempt: u32) -> Duration {
    let base = settings.initial_backoff.as_millis() as u64;
    let cap = settings.max_backoff.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << attempt.min(20)).min(cap).max(1);
    Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2))
}

impl Shipper {
    /// A shipper with its spool and checkpoints under `state_dir`.
    pub fn new(state_dir: &std::path::Path, settings: ShipperSettings, metrics: Arc<CollectorMetrics>) -> Result<Self, CollectorError> {
        let spool = Spool::open(&state_dir.join("spool"), settings.spool_max_bytes, metrics.clone())?;
        weft_model::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| CollectorError::Config(format!("http client: {e}")))?;
        Ok(Self {
            url: format!("{}/api/v1/ingest", settings.indexer_url.trim_end_matches('/')),
            metrics_url: format!("{}/api/v1/ingest/metrics", settings.indexer_url.trim_end_matches('/')),
            settings,
            client,
            spool,
            checkpoints: CheckpointStore::new(state_dir),
            rejected_dir: state_dir.join("rejected"),
            acked: None,
            last_checkpoint_write: Instant::now(),
            metrics,
            // Above every batch kept so far, even when many were refused
            // within the last milliseconds or the clock stepped back.
            rejected_seq: crate::now_millis().max(spool::last_rejected_seq(&state_dir.join("rejected"))),
            checkpoint_frozen: false,
            spooling_stopped: false,
        })
    }

    /// Where tailing resumes: after the newest spooled batch if any (it is
    /// safe on disk), else at the stored checkpoint.
    pub fn resume_checkpoint(&self) -> Result<TailerCheckpoint, CollectorError> {
        match self.spool.last_checkpoint() {
            Some(checkpoint) => Ok(checkpoint),
            None => {
                let (checkpoint, set_aside) = self.checkpoints.load_or_set_aside()?;
                if set_aside.is_some() {
                    self.metrics.checkpoint_resets.inc();
                }
                Ok(checkpoint)
            }
        }
    }

    /// POSTs one body; maps the answer to success, retry or refusal. The
    /// batch stays for a retry or the spool: the request shares its
    /// buffers, copying nothing. (A body of several parts is a stream to
    /// reqwest, which does not follow redirects with it; the indexer
    /// answers none, and a retry posts the batch afresh.)
    async fn post(&self, url: &str, content_type: &str, key: Option<&str>, body: &WireBody) -> Result<(), SendError> {
        let request_body = match body.single_part() {
            Some(part) => reqwest::Body::from(bytes::Bytes::from_owner(part.clone())),
            None => reqwest::Body::wrap(PartsBody::new(body)),
        };
        let mut request = self
            .client
            .post(url)
            .header("content-type", content_type)
            .header("x-scope-orgid", &self.settings.tenant)
            .body(request_body);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        if let Some(token) = &self.settings.bearer_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.map_err(|e| {
            self.metrics.send_errors.with_label_values(&["connect"]).inc();
            SendError::Retryable(format!("{e}"))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let reason = format!("indexer answered {status}: {}", body.chars().take(300).collect::<String>());
        // Only a refusal of the batch itself is permanent; auth, routing and
        // overload problems get fixed on the other side, so retry those.
        if matches!(status.as_u16(), 400 | 413 | 415 | 422) {
            self.metrics.send_errors.with_label_values(&["rejected"]).inc();
            Err(SendError::Permanent(reason))
        } else {
            self.metrics.send_errors.with_label_values(&["retryable_status"]).inc();
            Err(SendError::Retryable(reason))
        }
    }

    /// Delivers a batch: its training metrics first (samples are idempotent
    /// by series and time, so a retry after a failed log post is harmless),
    /// then its lines.
    async fn send(&self, batch: &SealedBatch) -> Result<(), SendError> {
        if let Some(metrics) = &batch.metrics_body {
            match self.post(&self.metrics_url, ARROW_STREAM_CONTENT_TYPE, None, metrics).await {
                Ok(()) => {}
                Err(SendError::Permanent(reason)) => {
                    // The lines must not be lost with them.
                    tracing::error!(key = %batch.key, reason, "indexer refused the batch's training metrics; shipping its lines");
                }
                Err(retry) => return Err(retry),
            }
        }
        self.post(&self.url, ARROW_STREAM_CONTENT_TYPE, Some(&batch.key), &batch.body).await
    }

    fn acknowledge(&mut self, checkpoint: TailerCheckpoint) {
        self.metrics.batches_sent.inc();
        if self.checkpoint_frozen {
            return;
        }
        self.acked = Some(checkpoint);
        if self.last_checkpoint_write.elapsed() >= self.settings.checkpoint_interval {
            self.write_checkpoint();
        }
    }

    fn write_checkpoint(&mut self) {
        let Some(checkpoint) = self.acked.take() else {
            return;
        };
        match self.checkpoints.store(&checkpoint) {
            Ok(()) => {
                self.metrics.checkpoint_writes.inc();
                self.last_checkpoint_write = Instant::now();
            }
            Err(e) => {
                tracing::error!(error = %e, "writing checkpoint failed; will retry");
                self.acked = Some(checkpoint);
            }
        }
    }

    fn reject(&mut self, batch: &SealedBatch, reason: &str, spooled: bool) {
        tracing::error!(key = %batch.key, rows = batch.rows, reason, dir = %self.rejected_dir.display(), "indexer refused batch; kept under rejected/");
        self.metrics.batches_rejected.inc();
        self.rejected_seq += 1;
        let stored = if spooled {
            self.spool
                .reject_head(&self.rejected_dir, self.rejected_seq, self.settings.keep_rejected)
        } else {
            spool::store_rejected(&self.rejected_dir, self.rejected_seq, batch, self.settings.keep_rejected)
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not keep refused batch");
        }
    }

    /// Spools a batch, retrying a failed write (full disk) until it works or
    /// shutdown begins: the shipper stops taking batches meanwhile, so the
    /// tailer pauses instead of anything being dropped.
    async fn spool_batch(&mut self, batch: &SealedBatch, shutdown: &mut watch::Receiver<bool>) {
        let mut attempt = 0;
        loop {
            match self.spool.push(batch) {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, key = %batch.key, "spooling batch failed; retrying");
                    if *shutdown.borrow() {
                        // Not spooled and not acknowledged: nothing after it is
                        // spooled either, so a restart reads it again.
                        self.checkpoint_frozen = true;
                        self.spooling_stopped = true;
                        return;
                    }
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(&self.settings, attempt)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Runs until the tailer closes the channel. `shutdown` turning true
    /// stops retries: what is not delivered by then stays in the spool.
    pub async fn run(mut self, mut batches: mpsc::Receiver<SealedBatch>, mut shutdown: watch::Receiver<bool>) {
        let mut attempt = 0u32;
        loop {
            let stopping = *shutdown.borrow();
            if self.spool.is_empty() {
                let Some(batch) = batches.recv().await else {
                    break;
                };
                self.deliver_fresh(batch, &mut shutdown).await;
                continue;
            }
            // Keep order: while the spool holds batches, new ones queue behind.
            while self.spool.has_room() && !self.spooling_stopped {
                match batches.try_recv() {
                    Ok(batch) => self.spool_batch(&batch, &mut shutdown).await,
                    Err(_) => break,
                }
            }
            if stopping {
                // Nothing more will be retried; drain what the tailer still sends.
                match batches.recv().await {
                    Some(batch) if self.spool.has_room() && !self.spooling_stopped => {
                        self.spool_batch(&batch, &mut shutdown).await;
                        continue;
                    }
                    Some(_) => {
                        // Dropped from memory, not acknowledged: read again
                        // after the restart. Nothing after it may be spooled.
                        self.checkpoint_frozen = true;
                        self.spooling_stopped = true;
                        continue;
                    }
                    None => break,
                }
            }
            let Some(mut head) = self.spool.head() else {
                continue;
            };
            match self.send(&head).await {
                Ok(()) => {
                    attempt = 0;
                    if let Err(e) = self.spool.pop() {
                        tracing::error!(error = %e, "removing delivered spool file failed");
                    }
                    self.acknowledge(std::mem::take(&mut head.checkpoint));
                    if self.spool.is_empty() {
                        tracing::info!("spool drained; indexer is back");
                    }
                }
                Err(SendError::Permanent(reason)) => {
                    self.reject(&head, &reason, true);
                    self.acknowledge(std::mem::take(&mut head.checkpoint));
                }
                Err(SendError::Retryable(reason)) => {
                    let wait = backoff(&self.settings, attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        reason,
                        spooled = self.spool.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "indexer unreachable"
                    );
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = shutdown.changed() => break,
                            batch = batches.recv(), if self.spool.has_room() => match batch {
                                Some(batch) => self.spool_batch(&batch, &mut shutdown).await,
                                None => break,
                            },
                        }
                    }
                }
            }
        }
        self.write_checkpoint();
    }

    async fn deliver_fresh(&mut self, mut batch: SealedBatch, shutdown: &mut watch::Receiver<bool>) {
        let mut attempt = 0;
        loop {
            match self.send(&batch).await {
                Ok(()) => return self.acknowledge(std::mem::take(&mut batch.checkpoint)),
                Err(SendError::Permanent(reason)) => {
                    self.reject(&batch, &reason, false);
                    return self.acknowledge(std::mem::take(&mut batch.checkpoint));
                }
                Err(SendError::Retryable(reason)) => {
                    attempt += 1;
                    if attempt >= self.settings.attempts_before_spool || *shutdown.borrow() {
                        tracing::warn!(reason, key = %batch.key, "indexer unreachable; spooling batch");
                        if self.spooling_stopped {
                            self.checkpoint_frozen = true;
                            return;
                        }
                        return self.spool_batch(&batch, shutdown).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(&self.settings, attempt)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }
}

/// A request body sent from a batch's own buffers, one frame per part,
/// shared with the batch (kept for a retry or the spool) rather than
/// copied: its exact length goes as the `content-length`.
struct PartsBody {
    parts: std::vec::IntoIter<bytes::Bytes>,
    remaining: u64,
}

impl PartsBody {
    fn new(body: &WireBody) -> Self {
        Self {
            parts: body
                .buffers()
                .map(|part| bytes::Bytes::from_owner(part.clone()))
                .collect::<Vec<_>>()
                .into_iter(),
            remaining: body.len() as u64,
        }
    }
}

impl http_body::Body for PartsBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.parts.next().map(|part| {
            debug_assert!(part.len() as u64 <= this.remaining, "the parts add up to the body's length");
            this.remaining -= part.len() as u64;
            Ok(http_body::Frame::data(part))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests;
