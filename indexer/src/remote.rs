//! Shared object storage for splits (S3 and S3-compatible stores, or a
//! `file://` directory), so query replicas can be stateless readers of what
//! the indexer wrote.
//!
//! The indexer keeps writing its data directory as before (WAL, splits,
//! catalog) and a pusher mirrors it: every new split's files first, then
//! the catalog, so a reader that sees a catalog finds its files; objects of
//! splits the catalog dropped (merged or expired) are deleted after a grace
//! period. A query replica pulls: it fetches the catalog, downloads the
//! splits it lacks into its own data directory, and only then installs the
//! catalog there, where the split store picks it up as it would a local
//! indexer's. An indexer that starts with an empty data directory restores
//! from the store first, so a lost volume does not wipe the bucket.
//!
//! Layout under the prefix: `catalog.json` and the split files at the same
//! relative paths as in a data directory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use weft_model::time::serde_duration;

use crate::catalog::{Catalog, CatalogState, SplitKind};
use crate::IndexerError;

/// The `storage` section: where splits are shared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `s3://bucket/prefix` or `file:///path`; unset keeps everything in
    /// the local data directory.
    pub url: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph RGW, R2, …).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// How often the indexer pushes and query replicas pull.
    #[serde(with = "serde_duration")]
    pub sync_interval: Duration,
    /// Objects of dropped splits stay this long for readers still on the
    /// previous catalog.
    #[serde(with = "serde_duration")]
    pub grace_period: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            allow_http: false,
            sync_interval: Duration::from_secs(5),
            grace_period: Duration::from_secs(300),
        }
    }
}

/// Counters of the mirror, on `/metrics`.
#[derive(Clone)]
pub struct RemoteMetrics {
    pub uploaded_bytes: prometheus::IntCounter,
    pub downloaded_bytes: prometheus::IntCounter,
    pub errors: prometheus::IntCounterVec,
    pub last_sync: prometheus::IntGauge,
    pub lag_splits: prometheus::IntGauge,
}

impl RemoteMetrics {
    pub fn new(registry: &prometheus::Registry) -> Self {
        let uploaded_bytes = prometheus::IntCounter::new(
            "weft_storage_uploaded_bytes_total",
            "Bytes of split files and catalogs put to object storage.",
        )
        .expect("valid metric");
        let downloaded_bytes = prometheus::IntCounter::new(
            "weft_storage_downloaded_bytes_total",
            "Bytes of split files and catalogs read from object storage.",
        )
        .expect("valid metric");
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new("weft_storage_errors_total", "Failed object storage operations, by operation."),
            &["operation"],
        )
        .expect("valid metric");
        let last_sync = prometheus::IntGauge::new(
            "weft_storage_last_sync_timestamp_seconds",
            "When the data directory and object storage last agreed.",
        )
        .expect("valid metric");
        let lag_splits = prometheus::IntGauge::new(
            "weft_storage_lag_splits",
            "Splits in the catalog not yet mirrored (indexer) or not yet downloaded (query).",
        )
        .expect("valid metric");
        for c in [
            Box::new(uploaded_bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(downloaded_bytes.clone()),
            Box::new(errors.clone()),
            Box::new(last_sync.clone()),
            Box::new(lag_splits.clone()),
        ] {
            // Registered once per process; a second registration is harmless.
            let _ = registry.register(c);
        }
        Self {
            uploaded_bytes,
            downloaded_bytes,
            errors,
            last_sync,
            lag_splits,
        }
    }
}

/// A connection to the shared store.
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    pub url: String,
    pub config: StorageConfig,
    metrics: RemoteMetrics,
}

fn store_err(what: &str, e: impl std::fmt::Display) -> IndexerError {
    IndexerError::Unavailable(format!("object storage {what}: {e}"))
}

fn io_err(path: &Path, source: std::io::Error) -> IndexerError {
    IndexerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RemoteStorage {
    /// Opens the configured store; `None` when no `url` is set.
    pub fn open(config: &StorageConfig, metrics: RemoteMetrics) -> Result<Option<Self>, IndexerError> {
        let Some(text) = config.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let url = url::Url::parse(text).map_err(|e| IndexerError::Config(format!("storage.url {text:?}: {e}")))?;
        if !matches!(url.scheme(), "s3" | "s3a" | "file") {
            return Err(IndexerError::Config(format!(
                "storage.url {text:?}: scheme {:?} is not supported (s3:// or file://)",
                url.scheme()
            )));
        }
        // The S3 client's TLS uses the process' rustls provider (ring).
        weft_model::tls::install_crypto_provider();
        if url.scheme() == "file" {
            std::fs::create_dir_all(url.path()).map_err(|e| io_err(Path::new(url.path()), e))?;
        }
        // Credentials the usual way: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        // AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT, …
        let mut options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if let Some(endpoint) = &config.endpoint {
            options.push(("aws_endpoint".into(), endpoint.clone()));
        }
        if let Some(region) = &config.region {
            options.push(("aws_region".into(), region.clone()));
        }
        if config.allow_http {
            options.push(("aws_allow_http".into(), "true".into()));
        }
        let (store, prefix) =
            object_store::parse_url_opts(&url, options).map_err(|e| IndexerError::Config(format!("storage.url {text:?}: {e}")))?;
        Ok(Some(Self {
            store: Arc::from(store),
            prefix,
            url: text.to_string(),
            config: config.clone(),
            metrics,
        }))
    }

    fn object(&self, relative: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    async fn put_file(&self, data_dir: &Path, relative: &str) -> Result<u64, IndexerError> {
        let local = data_dir.join(relative);
        let bytes = tokio::fs::read(&local).await.map_err(|e| io_err(&local, e))?;
        let len = bytes.len() as u64;
        self.store
            .put(&self.object(relative), PutPayload::from(bytes))
            .await
            .map_err(|e| store_err(&format!("put {relative}"), e))?;
        self.metrics.uploaded_bytes.inc_by(len);
        Ok(len)
    }

    async fn get_bytes(&self, relative: &str) -> Result<Option<Vec<u8>>, IndexerError> {
        match self.store.get(&self.object(relative)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|e| store_err(&format!("get {relative}"), e))?;
                self.metrics.downloaded_bytes.inc_by(bytes.len() as u64);
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&format!("get {relative}"), e)),
        }
    }

    /// The objects of a split's index: a tantivy directory's files, or a
    /// metric split's one series index file.
    async fn index_objects(&self, kind: SplitKind, index: &str) -> Result<Vec<String>, IndexerError> {
        match kind {
            SplitKind::Metrics => Ok(vec![index.to_string()]),
            _ => self.remote_files(index).await,
        }
    }

    /// Relative paths of the objects under a directory in the store.
    async fn remote_files(&self, relative_dir: &str) -> Result<Vec<String>, IndexerError> {
        let base = self.object(relative_dir);
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| store_err(&format!("list {relative_dir}"), e))?;
        let prefix_parts = self.prefix.parts().count();
        Ok(listed
            .into_iter()
            .map(|m| {
                m.location
                    .parts()
                    .skip(prefix_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect())
    }
}

/// Files of one split, relative to the data directory (a tantivy index
/// directory is listed file by file), the Parquet file last: a split whose
/// Parquet file is in the store is complete there.
async fn split_files(data_dir: &Path, parquet: &str, index: &str) -> Result<Vec<String>, IndexerError> {
    let (dir, parquet, index) = (data_dir.to_path_buf(), parquet.to_string(), index.to_string());
    tokio::task::spawn_blocking(move || list_split_files(&dir, &parquet, &index))
        .await
        .map_err(|e| IndexerError::Internal(format!("listing split files: {e}")))?
}

fn list_split_files(data_dir: &Path, parquet: &str, index: &str) -> Result<Vec<String>, IndexerError> {
    let mut files = Vec::new();
    let index_path = data_dir.join(index);
    if index_path.is_dir() {
        let entries = std::fs::read_dir(&index_path).map_err(|e| io_err(&index_path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&index_path, e))?;
            if entry.file_type().map_err(|e| io_err(&entry.path(), e))?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // tantivy's lock files are process-local.
                if !name.ends_with(".lock") {
                    files.push(format!("{index}/{name}"));
                }
            }
        }
    } else {
        files.push(index.to_string());
    }
    files.push(parquet.to_string());
    Ok(files)
}

/// Indexer side: mirrors the data directory into the store.
pub struct Pusher {
    remote: Arc<RemoteStorage>,
    data_dir: PathBuf,
    /// Splits whose files are all in the store.
    uploaded: HashSet<String>,
    /// Dropped splits and when they were dropped: (kind, parquet, index).
    dropped: HashMap<String, (Instant, SplitKind, String, String)>,
    /// The catalog bytes last put.
    last_catalog: Vec<u8>,
    /// The store has been listed once (after a restart most splits are
    /// there already).
    listed: bool,
    /// Objects found unnamed at start, and since when.
    orphans: Vec<(Instant, String)>,
}

impl Pusher {
    pub fn new(remote: Arc<RemoteStorage>, data_dir: &Path) -> Self {
        Self {
            remote,
            data_dir: data_dir.to_path_buf(),
            uploaded: HashSet::new(),
            dropped: HashMap::new(),
            last_catalog: Vec::new(),
            listed: false,
            orphans: Vec::new(),
        }
    }

    /// One round: new splits, then the catalog, then expired objects.
    pub async fn push(&mut self) -> Result<(), IndexerError> {
        let catalog_path = Catalog::path_in(&self.data_dir);
        let bytes = match tokio::fs::read(&catalog_path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&catalog_path, e)),
        };
        if bytes == self.last_catalog && self.dropped.is_empty() && self.orphans.is_empty() {
            return Ok(());
        }
        let catalog: CatalogState =
            serde_json::from_slice(&bytes).map_err(|e| IndexerError::Corrupt(format!("catalog {}: {e}", catalog_path.display())))?;
        let live: HashSet<&str> = catalog.splits.iter().map(|s| s.id.as_str()).collect();
        if !self.listed {
            let present: HashSet<String> = self.remote.remote_files("splits").await?.into_iter().collect();
            for split in &catalog.splits {
                if present.contains(&split.parquet) {
                    self.uploaded.insert(split.id.clone());
                }
            }
            // Objects no split of the catalog names (dropped before a
            // restart) go after the grace period like any dropped split.
            let named = |object: &str| {
                catalog
                    .splits
                    .iter()
                    .any(|s| object == s.parquet || object == s.index || object.starts_with(&format!("{}/", s.index)))
            };
            for object in present.iter().filter(|o| !named(o)) {
                self.orphans.push((Instant::now(), object.clone()));
            }
            self.listed = true;
        }
        let pending: Vec<_> = catalog.splits.iter().filter(|s| !self.uploaded.contains(&s.id)).collect();
        self.remote.metrics.lag_splits.set(pending.len() as i64);
        for split in pending {
            for file in split_files(&self.data_dir, &split.parquet, &split.index).await? {
                self.remote.put_file(&self.data_dir, &file).await?;
            }
            self.uploaded.insert(split.id.clone());
        }
        if bytes != self.last_catalog {
            let len = bytes.len() as u64;
            self.remote
                .store
                .put(&self.remote.object("catalog.json"), PutPayload::from(bytes.clone()))
                .await
                .map_err(|e| store_err("put catalog.json", e))?;
            self.remote.metrics.uploaded_bytes.inc_by(len);
            // Splits the previous catalog had and this one lacks.
            if let Ok(previous) = serde_json::from_slice::<CatalogState>(&self.last_catalog) {
                for split in previous.splits.iter().filter(|s| !live.contains(s.id.as_str())) {
                    self.dropped
                        .entry(split.id.clone())
                        .or_insert_with(|| (Instant::now(), split.kind, split.parquet.clone(), split.index.clone()));
                }
            }
            self.last_catalog = bytes;
        }
        self.remote.metrics.lag_splits.set(0);
        let grace = self.remote.config.grace_period;
        let expired: Vec<String> = self
            .dropped
            .iter()
            .filter(|(_, (at, _, _, _))| at.elapsed() >= grace)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let (_, kind, parquet, index) = self.dropped.remove(&id).expect("listed above");
            let mut objects = vec![parquet];
            objects.extend(self.remote.index_objects(kind, &index).await?);
            for object in objects {
                match self.remote.store.delete(&self.remote.object(&object)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(&format!("delete {object}"), e)),
                }
            }
            self.uploaded.remove(&id);
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|(at, _)| at.elapsed() >= grace);
        self.orphans = waiting;
        for (_, object) in due {
            match self.remote.store.delete(&self.remote.object(&object)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(&format!("delete {object}"), e)),
            }
        }
        self.remote.metrics.last_sync.set(weft_model::time::now_nanos() / 1_000_000_000);
        Ok(())
    }
}

/// Query side (and an indexer restoring): makes the data directory hold
/// the store's catalog and every file it names. A split whose objects are
/// missing (a lifecycle rule, a manual delete) is left out of the installed
/// catalog, counted and tried again next round, rather than holding back
/// every newer split. Returns whether the local catalog changed.
pub async fn pull(remote: &RemoteStorage, data_dir: &Path) -> Result<bool, IndexerError> {
    let Some(bytes) = remote.get_bytes("catalog.json").await? else {
        return Ok(false);
    };
    let catalog_path = Catalog::path_in(data_dir);
    let mut catalog: CatalogState =
        serde_json::from_slice(&bytes).map_err(|e| IndexerError::Corrupt(format!("catalog.json in {}: {e}", remote.url)))?;
    let mut missing = Vec::new();
    for split in &catalog.splits {
        let present = tokio::fs::try_exists(data_dir.join(&split.parquet)).await.unwrap_or(false)
            && tokio::fs::try_exists(data_dir.join(&split.index)).await.unwrap_or(false);
        if !present {
            missing.push(split.clone());
        }
    }
    if missing.is_empty() {
        let local = tokio::fs::read(&catalog_path).await.ok();
        if local.as_deref() == Some(bytes.as_slice()) {
            remote.metrics.lag_splits.set(0);
            remote.metrics.last_sync.set(weft_model::time::now_nanos() / 1_000_000_000);
            return Ok(false);
        }
    }
    remote.metrics.lag_splits.set(missing.len() as i64);
    let mut unavailable = HashSet::new();
    for split in missing {
        // The index goes first and the Parquet file last: a split counts
        // as present once its Parquet file is.
        let mut files = remote.index_objects(split.kind, &split.index).await?;
        files.sort();
        files.push(split.parquet.clone());
        for file in files {
            let Some(content) = remote.get_bytes(&file).await? else {
                remote.metrics.errors.with_label_values(&["missing_object"]).inc();
                tracing::warn!(split = %split.id, object = %file, store = %remote.url, "object named by the catalog is missing; split left out");
                unavailable.insert(split.id.clone());
                break;
            };
            let local = data_dir.join(&file);
            if let Some(parent) = local.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| io_err(parent, e))?;
            }
            let tmp = local.with_extension("download.tmp");
            tokio::fs::write(&tmp, &content).await.map_err(|e| io_err(&tmp, e))?;
            tokio::fs::rename(&tmp, &local).await.map_err(|e| io_err(&local, e))?;
        }
    }
    let installed = if unavailable.is_empty() {
        bytes
    } else {
        catalog.splits.retain(|s| !unavailable.contains(&s.id));
        serde_json::to_vec(&catalog).map_err(|e| IndexerError::Internal(format!("catalog: {e}")))?
    };
    if tokio::fs::read(&catalog_path).await.ok().as_deref() == Some(installed.as_slice()) {
        return Ok(false);
    }
    let tmp = catalog_path.with_extension("json.tmp");
    tokio::fs::create_dir_all(data_dir).await.map_err(|e| io_err(data_dir, e))?;
    tokio::fs::write(&tmp, &installed).await.map_err(|e| io_err(&tmp, e))?;
    tokio::fs::rename(&tmp, &catalog_path).await.map_err(|e| io_err(&catalog_path, e))?;
    remote.metrics.lag_splits.set(unavailable.len() as i64);
    remote.metrics.last_sync.set(weft_model::time::now_nanos() / 1_000_000_000);
    Ok(true)
}

/// Local split files the installed catalog no longer names, and since when
/// (the grace period counts from there, not from the download).
#[derive(Default)]
pub struct Unlisted {
    since: HashMap<PathBuf, Instant>,
}

impl Unlisted {
    /// Deletes local split files unnamed for longer than `grace` (queries
    /// may still read the previous catalog's files); also leftovers of
    /// interrupted downloads. Returns how many went.
    pub fn sweep(&mut self, data_dir: &Path, grace: Duration) -> Result<usize, IndexerError> {
        let catalog = Catalog::read(&Catalog::path_in(data_dir))?;
        let mut named: HashSet<PathBuf> = HashSet::new();
        for split in &catalog.splits {
            named.insert(data_dir.join(&split.parquet));
            named.insert(data_dir.join(&split.index));
        }
        let mut unnamed = HashSet::new();
        let mut stack = vec![data_dir.join("splits")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_split_file = name.ends_with(".parquet")
                    || name.ends_with(".tantivy")
                    || name.ends_with(".series.zst")
                    || name.ends_with(".download.tmp");
                if !is_split_file {
                    if path.is_dir() {
                        stack.push(path);
                    }
                    continue;
                }
                if !named.contains(&path) {
                    unnamed.insert(path);
                }
            }
        }
        let now = Instant::now();
        self.since.retain(|path, _| unnamed.contains(path));
        let mut removed = 0;
        for path in unnamed {
            let since = *self.since.entry(path.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                let result = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if result.is_ok() {
                    self.since.remove(&path);
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Runs `round` every `interval` until `stop`, counting failures; once
/// stopped it runs exactly one more round when `last_round` gives it time
/// (the indexer's mirror stops after the last commit, so that round
/// carries it).
pub async fn every(
    remote: Arc<RemoteStorage>,
    operation: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    last_round: Option<Duration>,
    mut round: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), IndexerError>> + Send>>,
) {
    let interval = remote.config.sync_interval;
    let report = |result: Result<(), IndexerError>| {
        if let Err(e) = result {
            remote.metrics.errors.with_label_values(&[operation]).inc();
            tracing::warn!(operation, store = %remote.url, error = %e, "object storage sync failed; retrying");
        }
    };
    loop {
        if *stop.borrow() {
            let Some(last_round) = last_round else { return };
            match tokio::time::timeout(last_round, round()).await {
                Ok(result) => report(result),
                Err(_) => tracing::warn!(operation, store = %remote.url, "last object storage round timed out"),
            }
            return;
        }
        report(round().await);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}
