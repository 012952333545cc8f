//! Wires the roles together: one HTTP listener per process serving every
//! API the role has, `/metrics`, `/healthz` and `/readyz`, and an orderly
//! shutdown on Ctrl-C or SIGTERM (the collector seals and ships its last
//! batch while the server still runs, then the indexer commits).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::config::WeftConfig;

/// Which parts run in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Collector,
    Indexer,
    Query,
}

/// How long the collector may take to deliver its last batch on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Logs to stderr: text for people, or one JSON object per event
/// (`log_format: json`) for a cluster's log pipeline.
pub fn init_logging(level: Option<&str>, json: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or(level.map(str::to_string))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

fn metrics_router(registry: prometheus::Registry) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let encoder = prometheus::TextEncoder::new();
                    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut out) {
                        out = format!("# encoding metrics failed: {e}\n");
                    }
                    ([("content-type", "text/plain; version=0.0.4")], out)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/ready", get(|| async { "ready" }))
}

/// The URL a collector in this process uses to reach the listener.
fn loopback_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => "127.0.0.1".to_string(),
            SocketAddr::V6(_) => "[::1]".to_string(),
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{ip}:{}", addr.port())
}

/// Runs `role` until SIGTERM or Ctrl-C; `imports` are exposition files a
/// standalone process loads into its indexer first.
pub async fn run(role: Role, mut cfg: WeftConfig, imports: Vec<PathBuf>) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let data: PathBuf = cfg.data.clone().unwrap_or_else(|| PathBuf::from("./weft-data"));
    let listen = cfg
        .listen
        .unwrap_or_else(|| "127.0.0.1:3100".parse().expect("valid default address"));

    if role == Role::Collector {
        let collector = weft_collector::start(&cfg.collector, &registry)?;
        if let Some(addr) = collector.otlp_addr {
            println!("weft otlp listening on {addr}");
        }
        // The agent's own /metrics and probes, when given an address.
        let server = match cfg.listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                println!("weft listening on {}", listener.local_addr()?);
                let app = metrics_router(registry.clone());
                Some(tokio::spawn(async move { axum::serve(listener, app).await }))
            }
            None => None,
        };
        shutdown_signal().await;
        collector.shutdown(SHUTDOWN_GRACE).await;
        if let Some(server) = server {
            server.abort();
        }
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    let mut app = metrics_router(registry.clone());
    let mut indexer = None;
    let remote =
        weft_indexer::remote::RemoteStorage::open(&cfg.storage, weft_indexer::remote::RemoteMetrics::new(&registry))?.map(Arc::new);
    if let (Some(remote), Role::Indexer | Role::Standalone) = (&remote, role) {
        // A fresh volume starts from what the store holds, not empty.
        if !weft_indexer::catalog::Catalog::path_in(&data).exists() {
            std::fs::create_dir_all(&data)?;
            if weft_indexer::remote::pull(remote, &data).await? {
                tracing::info!(store = %remote.url, "data directory restored from object storage");
            }
        }
    }
    if role == Role::Standalone {
        fresher_in_one_process(&mut cfg);
    }
    if matches!(role, Role::Standalone | Role::Indexer) {
        let opened = weft_indexer::Indexer::open(&data, cfg.indexer.clone(), &registry)?;
        app = app.merge(weft_indexer::ingest::router(opened.clone()));
        if !imports.is_empty() {
            let (target, dir) = (opened.clone(), data.clone());
            let added = tokio::task::spawn_blocking(move || crate::import::import_files(&target, &dir, "default", &imports)).await??;
            tracing::info!(samples = added, "imports loaded");
        }
        indexer = Some(opened);
    }
    let mut rules = None;
    let queries =
        matches!(role, Role::Standalone | Role::Query).then(|| weft_query::QueryService::new(&data, cfg.query.clone(), &registry));
    if let Some(service) = &queries {
        app = app.merge(weft_query::api::router(service.clone()));
        if !cfg.rules.enabled {
            app = app.merge(weft_query::api::rules_router(None));
        }
    }
    if let (Some(service), true) = (queries, cfg.rules.enabled) {
        let groups = weft_query::rules::load_groups(&cfg.rules)?;
        let writer: Option<Arc<dyn weft_query::rules::SampleWriter>> = match (&indexer, &cfg.rules.indexer) {
            (Some(indexer), _) => Some(Arc::new(IndexerWriter(indexer.clone()))),
            (None, Some(url)) => Some(Arc::new(weft_query::rules::HttpWriter::new(
                url,
                cfg.rules.indexer_bearer_token.clone(),
                tokio::runtime::Handle::current(),
            ))),
            (None, None) => None,
        };
        let state_dir = data.join("rules");
        let notifier = weft_query::notify::Notifier::new(&cfg.alerting, &state_dir, &loopback_url(bound), &registry)?;
        let manager =
            weft_query::rules::RuleManager::new(service, groups, &cfg.rules, &state_dir, writer, Some(notifier.clone()), &registry)?;
        tracing::info!(groups = manager.group_count(), "rule evaluator ready");
        app = app.merge(weft_query::api::rules_router(Some(manager.clone())));
        rules = Some((manager, notifier));
    }
    tracing::info!(address = %bound, data = %data.display(), ?role, "weft listening");
    // Tests start weft on port 0 and read the address from this line.
    println!("weft listening on {bound}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = indexer.clone().map(|indexer| tokio::spawn(indexer.run_background(stop_rx.clone())));
    // The indexer's mirror stops after its last commit (below).
    let (mirror_stop_tx, mirror_stop_rx) = watch::channel(false);
    let mirror = remote.clone().map(|remote| {
        let dir = data.clone();
        let stop = if matches!(role, Role::Query) {
            stop_rx.clone()
        } else {
            mirror_stop_rx.clone()
        };
        if matches!(role, Role::Query) {
            tracing::info!(store = %remote.url, "query reads splits from object storage");
            tokio::spawn(async move {
                let round_remote = remote.clone();
                let unlisted = Arc::new(std::sync::Mutex::new(weft_indexer::remote::Unlisted::default()));
                weft_indexer::remote::every(remote, "pull", stop, None, move || {
                    let (remote, dir, unlisted) = (round_remote.clone(), dir.clone(), unlisted.clone());
                    Box::pin(async move {
                        weft_indexer::remote::pull(&remote, &dir).await?;
                        let grace = remote.config.grace_period;
                        tokio::task::spawn_blocking(move || unlisted.lock().unwrap_or_else(|e| e.into_inner()).sweep(&dir, grace))
                            .await
                            .map_err(|e| weft_indexer::IndexerError::Internal(e.to_string()))??;
                        Ok(())
                    })
                })
                .await
            })
        } else {
            tracing::info!(store = %remote.url, "splits are mirrored to object storage");
            let pusher = Arc::new(tokio::sync::Mutex::new(weft_indexer::remote::Pusher::new(remote.clone(), &dir)));
            tokio::spawn(async move {
                weft_indexer::remote::every(remote, "push", stop, Some(Duration::from_secs(30)), move || {
                    let pusher = pusher.clone();
                    Box::pin(async move { pusher.lock().await.push().await })
                })
                .await
            })
        }
    });
    let rule_tasks = rules.map(|(manager, notifier)| {
        (
            tokio::spawn(manager.run(stop_rx.clone())),
            tokio::spawn(notifier.run(Duration::from_secs(1), stop_rx.clone())),
        )
    });

    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = server_stop_rx.await;
            })
            .await
    });

    let collector = if role == Role::Standalone {
        cfg.collector.indexer = loopback_url(bound);
        if cfg.collector.state == weft_collector::CollectorConfig::default().state {
            cfg.collector.state = data.join("collector");
        }
        let collector = weft_collector::start(&cfg.collector, &registry)?;
        if let Some(addr) = collector.otlp_addr {
            println!("weft otlp listening on {addr}");
        }
        Some(collector)
    } else {
        None
    };

    shutdown_signal().await;
    if let Some(collector) = collector {
        collector.shutdown(SHUTDOWN_GRACE).await;
    }
    let _ = server_stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error"),
        Err(_) => tracing::warn!("HTTP connections did not close within 10s"),
        _ => {}
    }
    let _ = stop_tx.send(true);
    if let Some((rules, notifier)) = rule_tasks {
        let _ = rules.await;
        let _ = notifier.await;
    }
    if let Some(background) = background {
        let _ = background.await;
    }
    // One more round after the last commit, then the mirror ends.
    let _ = mirror_stop_tx.send(true);
    if let Some(mirror) = mirror {
        let _ = mirror.await;
    }
    Ok(())
}

/// Standalone ships over loopback to an indexer that only it feeds, so it
/// can afford smaller batches and commits: a line is searchable within
/// about half a second instead of two. Values set to anything but the
/// defaults are kept.
fn fresher_in_one_process(cfg: &mut WeftConfig) {
    if cfg.collector.batch_max_age == weft_collector::CollectorConfig::default().batch_max_age {
        cfg.collector.batch_max_age = Duration::from_millis(200);
    }
    if cfg.indexer.commit_interval == weft_indexer::IndexerConfig::default().commit_interval {
        cfg.indexer.commit_interval = Duration::from_millis(300);
    }
}

/// Recorded series go straight into the indexer of this process.
struct IndexerWriter(Arc<weft_indexer::Indexer>);

impl weft_query::rules::SampleWriter for IndexerWriter {
    fn write(&self, tenant: &str, body: Vec<u8>) -> Result<(), String> {
        self.0.ingest_metrics(tenant, &body, "rules").map(|_| ()).map_err(|e| e.to_string())
    }
}
