//! weft's node agent. It tails pod logs from the kubelet's `/var/log/pods`
//! tree, parses and enriches each line, batches lines as Arrow, and ships
//! the batches to the indexer with a disk spool and acknowledged checkpoints.
//!
//! The pipeline reads as a chain: tail → parse → join partials → detect
//! level → batch → (spool) → ship → checkpoint.

pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod enrich;
pub mod extract;
pub mod forward;
pub mod inspect;
pub mod kubernetes;
pub mod metrics;
pub mod multiline;
pub mod shipper;
pub mod sources;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use config::CollectorConfig;
use metrics::CollectorMetrics;

/// Errors of the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint file {path} is unreadable: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("invalid collector config: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] weft_model::ModelError),
}

/// A forwarder to the configured indexer.
fn forwarder(config: &CollectorConfig, metrics: &Arc<CollectorMetrics>) -> forward::Forwarder {
    weft_model::tls::install_crypto_provider();
    forward::Forwarder {
        client: reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .expect("http client builds"),
        indexer: config.indexer.clone(),
        tenant: config.tenant.clone(),
        bearer_token: config.bearer_token.clone(),
        metrics: metrics.clone(),
    }
}

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running collector.
pub struct CollectorHandle {
    stop: Arc<AtomicBool>,
    wake: std::sync::mpsc::SyncSender<bool>,
    tailer_thread: std::thread::JoinHandle<()>,
    shipper_shutdown: watch::Sender<bool>,
    shipper: tokio::task::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    pub metrics: Arc<CollectorMetrics>,
    /// Where the OTLP receiver listens, when it runs.
    pub otlp_addr: Option<std::net::SocketAddr>,
    otlp_shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    otlp_server: Option<tokio::task::JoinHandle<()>>,
    gpu: Option<sources::gpu::GpuSource>,
    pod_watch: tokio::task::JoinHandle<()>,
}

/// Starts the pod-log pipeline described by `config`.
pub fn start(config: &CollectorConfig, registry: &prometheus::Registry) -> Result<CollectorHandle, CollectorError> {
    use notify::Watcher;

    config.validate()?;
    let metrics = Arc::new(CollectorMetrics::new(registry));
    std::fs::create_dir_all(&config.state).map_err(|source| CollectorError::Io {
        path: config.state.clone(),
        source,
    })?;
    let node = config.node_name();
    let collector_id = config.collector_id.clone().unwrap_or_else(|| node.clone());
    let settings = shipper::ShipperSettings {
        indexer_url: config.indexer.clone(),
        tenant: config.tenant.clone(),
        request_timeout: config.request_timeout,
        max_backoff: config.max_backoff,
        spool_max_bytes: config.spool_max_bytes,
        bearer_token: config.bearer_token.clone(),
        checkpoint_interval: config.checkpoint_interval,
        ..Default::default()
    };
    let shipper = shipper::Shipper::new(&config.state, settings, metrics.clone())?;
    let checkpoint = shipper.resume_checkpoint()?;
    let tailer_config = sources::pod_logs::tailer::TailerConfig {
        max_line_bytes: config.max_line_bytes,
        partial_timeout: config.partial_timeout,
        max_open_files: config.max_open_files,
        ..Default::default()
    };
    let tailer = sources::pod_logs::tailer::PodLogTailer::new(
        config.logs.clone(),
        collector_id.clone(),
        tailer_config,
        checkpoint,
        metrics.clone(),
    );
    let limits = batcher::BatchLimits {
        max_bytes: config.batch_max_bytes,
        max_rows: config.batch_max_rows,
        max_age: config.batch_max_age,
        max_line_bytes: config.max_line_bytes,
    };
    let pods = Arc::new(kubernetes::PodDirectory::default());
    let mut processing = config.record_processing()?;
    processing.pods = Some(pods.clone());
    let assembler = batcher::BatchAssembler::new(limits, collector_id, node.clone(), metrics.clone(), processing);

    let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<bool>(1024);
    let hint = wake_tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            use notify::event::{EventKind, ModifyKind};
            let structural = matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            );
            // A full channel already holds a wake-up; dropping hints is fine.
            let _ = hint.try_send(structural);
        }
    })
    .and_then(|mut w| w.watch(&config.logs, notify::RecursiveMode::Recursive).map(|_| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(logs = %config.logs.display(), error = %e, "filesystem events unavailable; relying on the periodic rescan");
            None
        }
    };

    let (batch_tx, batch_rx) = mpsc::channel(2);
    let stop = Arc::new(AtomicBool::new(false));
    let tailer_loop = sources::pod_logs::TailerLoop {
        tailer,
        assembler,
        batches: batch_tx,
        stop: stop.clone(),
        wake: wake_rx,
        poll_interval: config.poll_interval,
        rescan_interval: config.rescan_interval,
        metrics: metrics.clone(),
    };
    // Lines already on disk wait (a little) for their pods' metadata.
    let startup_gate = kubernetes::api_wanted(&config.kubernetes).then(|| pods.clone());
    let tailer_thread = std::thread::Builder::new()
        .name("weft-pod-log-tailer".into())
        .spawn(move || {
            if let Some(pods) = startup_gate {
                if !pods.wait_synced(Duration::from_secs(10)) {
                    tracing::warn!("no pod list from the Kubernetes API within 10 s; tailing with path metadata meanwhile");
                }
            }
            tailer_loop.run()
        })
        .map_err(|source| CollectorError::Io {
            path: config.logs.clone(),
            source,
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pod_watch = tokio::spawn(kubernetes::watch_pods(
        pods.clone(),
        config.kubernetes.clone(),
        node.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let shipper = tokio::spawn(shipper.run(batch_rx, shutdown_rx));
    let (mut otlp_addr, mut otlp_shutdown, mut otlp_server) = (None, None, None);
    if !config.otlp_listen.trim().is_empty() {
        let listener = std::net::TcpListener::bind(config.otlp_listen.trim())
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| CollectorError::Config(format!("collector.otlp_listen {:?}: {e}", config.otlp_listen)))?;
        otlp_addr = listener.local_addr().ok();
        let receiver = Arc::new(sources::otlp::OtlpReceiver {
            forwarder: forwarder(config, &metrics),
            max_line_bytes: config.max_line_bytes,
            metrics: metrics.clone(),
            pods: pods.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        otlp_shutdown = Some(stop_tx);
        otlp_server = Some(tokio::spawn(async move {
            let served = axum::serve(listener, sources::otlp::router(receiver))
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "OTLP receiver stopped");
            }
        }));
        tracing::info!(address = ?otlp_addr, "OTLP/HTTP receiver listening");
    }
    let gpu = Some(sources::gpu::start(
        config.gpu.clone(),
        node.clone(),
        Arc::new(forwarder(config, &metrics)),
        metrics.clone(),
        pods,
    ));
    tracing::info!(logs = %config.logs.display(), state = %config.state.display(), indexer = %config.indexer, node, "collector started");
    Ok(CollectorHandle {
        stop,
        wake: wake_tx,
        tailer_thread,
        shipper_shutdown: shutdown_tx,
        shipper,
        _watcher: watcher,
        metrics,
        otlp_addr,
        otlp_shutdown,
        otlp_server,
        gpu,
        pod_watch,
    })
}

impl CollectorHandle {
    /// Stops tailing, seals the open batch, gives the shipper up to `grace`
    /// to deliver, then leaves the rest in the spool and writes the
    /// checkpoint of what was acknowledged.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.otlp_shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.otlp_server.take() {
            let _ = tokio::time::timeout(grace, server).await;
        }
        if let Some(gpu) = self.gpu.take() {
            gpu.shutdown().await;
        }
        self.pod_watch.abort();
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(false);
        let thread = self.tailer_thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        let deadline = tokio::time::Instant::now() + grace;
        let joined = tokio::time::timeout_at(deadline, joined).await;
        let _ = self.shipper_shutdown.send(true);
        if joined.is_err() {
            tracing::warn!("tailer did not stop within the grace period");
        }
        let _ = self.shipper.await;
        tracing::info!("collector stopped");
    }
}
