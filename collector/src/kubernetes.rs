//! Pod metadata from the Kubernetes API: the collector lists and watches
//! the pods of its own node (`fieldSelector=spec.nodeName=<node>`, with the
//! in-cluster service account or a kubeconfig) and keeps, per pod uid, the
//! training run and rank the pod belongs to and the labels and annotations
//! the config allows onto records.
//!
//! The run comes from the owner chain and the labels that training
//! operators set (Kubeflow `PyTorchJob` and friends, JobSet, Volcano,
//! KubeRay, LeaderWorkerSet, batch `Job`, StatefulSet), the rank from a
//! `RANK` environment variable in the pod spec, then the replica-index
//! labels, then the pod ordinal; both fall back to the pod name. Deleted
//! pods stay known for a while so their last log lines still get their
//! metadata. Without API access the collector keeps working on what the
//! log path says, and says so once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde::{Deserialize, Serialize};
use weft_model::labels::sanitize_label_name;
use weft_model::time::serde_duration;
use weft_model::LabelSet;

use crate::enrich::run_and_rank;
use crate::metrics::CollectorMetrics;

/// The `collector.kubernetes` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `true`: watch pods, `false`: never; unset: watch when running in a
    /// cluster (or `kubeconfig` is set).
    pub enabled: Option<bool>,
    /// A kubeconfig file, for running outside the cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Pod labels added to records (as labels with `.`, `/`, `-` turned
    /// into `_`), e.g. `team`, `app.kubernetes.io/name`.
    pub pod_labels: Vec<String>,
    /// Pod annotations added to records, the same way.
    pub pod_annotations: Vec<String>,
    /// How long a deleted pod's metadata stays for its last log lines.
    #[serde(with = "serde_duration")]
    pub deleted_pod_retention: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            kubeconfig: None,
            pod_labels: Vec::new(),
            pod_annotations: Vec::new(),
            deleted_pod_retention: Duration::from_secs(600),
        }
    }
}

/// What records of one pod carry besides the path's metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    pub run: Option<String>,
    pub rank: Option<String>,
    /// Allow-listed labels and annotations, as record labels.
    pub labels: LabelSet,
}

/// Labels that name a pod's run, most specific first. (Generic labels such
/// as `app.kubernetes.io/instance` are left out: every Helm release would
/// become a "run".)
const RUN_LABELS: [&str; 8] = [
    "training.kubeflow.org/job-name",
    "jobset.sigs.k8s.io/jobset-name",
    "volcano.sh/job-name",
    "ray.io/originated-from-cr-name",
    "ray.io/cluster",
    "leaderworkerset.sigs.k8s.io/name",
    "batch.kubernetes.io/job-name",
    "job-name",
];

/// Labels or annotations that give a pod's rank, in order.
const RANK_LABELS: [&str; 6] = [
    "training.kubeflow.org/replica-index",
    "batch.kubernetes.io/job-completion-index",
    "volcano.sh/task-index",
    "leaderworkerset.sigs.k8s.io/worker-index",
    "apps.kubernetes.io/pod-index",
    "statefulset.kubernetes.io/pod-index",
];

/// Owner kinds whose name is the run (not StatefulSet: databases are
/// StatefulSets too; the pod-name rule still applies to them).
const RUN_OWNERS: [&str; 6] = ["PyTorchJob", "TFJob", "MPIJob", "JobSet", "Job", "RayJob"];

/// Index labels that repeat across the groups of one run, with the label
/// of the group: the rank is `<group>-<index>` so ranks stay unique.
const GROUPED_RANKS: [(&str, &str); 3] = [
    // JobSet: the completion index counts within one child Job.
    ("batch.kubernetes.io/job-completion-index", "jobset.sigs.k8s.io/job-global-index"),
    (
        "leaderworkerset.sigs.k8s.io/worker-index",
        "leaderworkerset.sigs.k8s.io/group-index",
    ),
    ("volcano.sh/task-index", "volcano.sh/task-spec"),
];

/// Derives run, rank and record labels from a pod object.
pub fn pod_info(pod: &Pod, config: &KubernetesConfig) -> PodInfo {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |key: &str| labels.get(key).or_else(|| annotations.get(key)).filter(|v| !v.is_empty()).cloned();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (name_run, name_rank) = run_and_rank(&name);
    let owner_run = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| RUN_OWNERS.contains(&o.kind.as_str()))
        .map(|o| o.name.clone());
    let run = RUN_LABELS.iter().find_map(|k| get(k)).or(owner_run).or(name_run);
    // torchrun, the Kubeflow operator and most launchers put RANK in the env.
    let env_rank = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .find_map(|e| {
            (e.name == "RANK" || e.name == "NODE_RANK" || e.name == "JOB_COMPLETION_INDEX")
                .then(|| e.value.clone())
                .flatten()
                .filter(|v| v.parse::<u64>().is_ok())
        });
    let label_rank = RANK_LABELS.iter().find_map(|k| {
        let index = get(k)?;
        let group = GROUPED_RANKS.iter().find(|(label, _)| label == k).and_then(|(_, group)| get(group));
        Some(match group {
            Some(group) => format!("{group}-{index}"),
            None => index,
        })
    });
    let rank = env_rank.or(label_rank).or(name_rank);
    let mut extra = LabelSet::new();
    for (keys, source) in [(&config.pod_labels, labels), (&config.pod_annotations, annotations)] {
        for key in keys {
            if let Some(value) = source.get(key) {
                extra.insert(sanitize_label_name(key), value.clone());
            }
        }
    }
    PodInfo { run, rank, labels: extra }
}

struct Entry {
    info: Arc<PodInfo>,
    /// Namespace and name, for lookups by name (GPU holders, OTLP).
    name: (String, String),
    deleted_at: Option<Instant>,
}

#[derive(Default)]
struct Pods {
    by_uid: HashMap<String, Entry>,
    /// (namespace, name) → uid of the newest pod of that name.
    by_name: HashMap<(String, String), String>,
}

/// Pods of this node by uid, shared between the watcher and the sources.
/// Empty (no API access) it answers from pod names alone.
#[derive(Default)]
pub struct PodDirectory {
    pods: RwLock<Pods>,
    /// Bumped on every change, so readers can cache.
    version: AtomicU64,
    /// Set once the first list answered (or failed): the tailer waits
    /// for it so the lines already on disk get their pods' metadata.
    synced: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl std::fmt::Debug for PodDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodDirectory")
            .field("pods", &self.len())
            .field("version", &self.version())
            .finish()
    }
}

impl PodDirectory {
    /// The metadata of pod `uid`, if the API told.
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.read().by_uid.get(uid).map(|e| e.info.clone())
    }

    /// Run and rank of pod `namespace/pod`: from the API when it knows the
    /// pod, else from the name.
    pub fn run_and_rank(&self, namespace: &str, pod: &str) -> (Option<String>, Option<String>) {
        let known = {
            let pods = self.read();
            pods.by_name
                .get(&(namespace.to_string(), pod.to_string()))
                .and_then(|uid| pods.by_uid.get(uid))
                .map(|e| (e.info.run.clone(), e.info.rank.clone()))
        };
        known.unwrap_or_else(|| run_and_rank(pod))
    }

    /// Blocks until the first pod list is in, or `timeout`; true if in.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let (lock, ready) = &self.synced;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = ready
            .wait_timeout_while(guard, timeout, |synced| !*synced)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn mark_synced(&self) {
        let (lock, ready) = &self.synced;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        ready.notify_all();
    }

    /// Changes whenever the directory does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Number of pods known (deleted ones still held included).
    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pods> {
        // The map holds no invariant a panicking writer could break.
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pods> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }

    fn upsert(&self, pod: &Pod, config: &KubernetesConfig) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let info = Arc::new(pod_info(pod, config));
        let name = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let mut pods = self.write();
        let changed = pods.by_uid.get(&uid).is_none_or(|e| *e.info != *info || e.deleted_at.is_some());
        pods.by_name.insert(name.clone(), uid.clone());
        pods.by_uid.insert(
            uid,
            Entry {
                info,
                name,
                deleted_at: None,
            },
        );
        if changed {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn mark_deleted(&self, uid: &str) {
        if let Some(entry) = self.write().by_uid.get_mut(uid) {
            entry.deleted_at.get_or_insert_with(Instant::now);
        }
    }

    /// After a fresh list: pods not in it are deleted.
    fn keep_only(&self, uids: &std::collections::HashSet<String>) {
        let mut pods = self.write();
        for (uid, entry) in pods.by_uid.iter_mut() {
            if !uids.contains(uid) {
                entry.deleted_at.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Forgets pods deleted longer ago than `retention`.
    fn expire(&self, retention: Duration) {
        let mut guard = self.write();
        let pods = &mut *guard;
        let before = pods.by_uid.len();
        let by_name = &mut pods.by_name;
        pods.by_uid.retain(|uid, e| {
            let keep = e.deleted_at.is_none_or(|t| t.elapsed() < retention);
            if !keep && by_name.get(&e.name) == Some(uid) {
                by_name.remove(&e.name);
            }
            keep
        });
        if pods.by_uid.len() != before {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A client for the configured cluster, or why there is none.
async fn client(config: &KubernetesConfig) -> Result<kube::Client, String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| format!("not running in a cluster ({e})"))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// Whether the collector should ask the Kubernetes API for pods: when
/// told to, or when it runs in a cluster or has a kubeconfig.
pub fn api_wanted(config: &KubernetesConfig) -> bool {
    match config.enabled {
        Some(enabled) => enabled,
        None => config.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    }
}

/// Sleeps `backoff` (or until `stop`); false when stopping.
async fn pause(backoff: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff) => true,
        _ = stop.changed() => false,
    }
}

/// Lists and watches the pods of `node` into `directory` until `stop`.
/// Failures (a refused list, a watch that errors or ends at once) back off
/// exponentially up to 30 s, so a misconfigured DaemonSet does not hammer
/// the API server; a watch that lived a minute or delivered events resets
/// the backoff. Lists are served from the API server's cache
/// (`resourceVersion=0`), not a quorum read.
pub async fn watch_pods(
    directory: Arc<PodDirectory>,
    config: KubernetesConfig,
    node: String,
    metrics: Arc<CollectorMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !api_wanted(&config) {
        tracing::info!("Kubernetes API not used (not in a cluster, no kubeconfig): run and rank come from pod names");
        directory.mark_synced();
        return;
    }
    weft_model::tls::install_crypto_provider();
    let client = match client(&config).await {
        Ok(client) => client,
        Err(e) => {
            metrics.kubernetes_errors.inc();
            tracing::warn!(reason = %e, "Kubernetes API unavailable: run and rank come from pod names");
            directory.mark_synced();
            return;
        }
    };
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_BACKOFF;
    let mut announced = false;
    let mut warned = false;
    // Deleted pods are forgotten on this tick (a quarter of the retention,
    // at least every 30 s).
    let expire_every = (config.deleted_pod_retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        let list_params = ListParams::default().fields(&selector).match_any();
        let listed = tokio::select! {
            listed = api.list(&list_params) => listed,
            _ = stop.changed() => return,
        };
        let mut version = match listed {
            Ok(list) => {
                let uids = list.items.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                for pod in &list.items {
                    directory.upsert(pod, &config);
                }
                directory.keep_only(&uids);
                metrics.kubernetes_pods.set(directory.len() as i64);
                if !announced {
                    tracing::info!(pods = list.items.len(), node = %node, "watching this node's pods through the Kubernetes API");
                    if list.items.is_empty() {
                        tracing::warn!(node = %node, "no pods listed on this node: is NODE_NAME set from spec.nodeName?");
                    }
                    announced = true;
                }
                directory.mark_synced();
                list.metadata.resource_version.unwrap_or_default()
            }
            Err(e) => {
                metrics.kubernetes_errors.inc();
                if !warned {
                    // Said once; the retries go on quietly.
                    tracing::warn!(error = %e, "listing pods failed: run and rank come from pod names until it works");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, retry_in = ?backoff, "listing pods failed");
                }
                directory.mark_synced();
                if !pause(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        // Watch until the server ends the stream or the version expires.
        'watch: loop {
            directory.expire(config.deleted_pod_retention);
            let params = WatchParams::default().fields(&selector).timeout(290);
            let opened = Instant::now();
            let mut events = 0u64;
            let stream = tokio::select! {
                stream = api.watch(&params, &version) => stream,
                _ = stop.changed() => return,
            };
            let mut stream = match stream {
                Ok(stream) => stream.boxed(),
                Err(e) => {
                    metrics.kubernetes_errors.inc();
                    tracing::debug!(error = %e, retry_in = ?backoff, "watching pods failed; listing again");
                    break 'watch;
                }
            };
            let mut tick = tokio::time::interval(expire_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ended_cleanly = loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = tick.tick() => {
                        directory.expire(config.deleted_pod_retention);
                        metrics.kubernetes_pods.set(directory.len() as i64);
                        continue;
                    }
                    _ = stop.changed() => return,
                };
                events += 1;
                match event {
                    None => break true,
                    Some(Ok(WatchEvent::Added(pod))) | Some(Ok(WatchEvent::Modified(pod))) => {
                        if let Some(v) = &pod.metadata.resource_version {
                            version = v.clone();
                        }
                        directory.upsert(&pod, &config);
                    }
                    Some(Ok(WatchEvent::Deleted(pod))) => {
                        if let Some(v) = &pod.metadata.resource_version {
                            version = v.clone();
                        }
                        if let Some(uid) = &pod.metadata.uid {
                            directory.mark_deleted(uid);
                        }
                    }
                    Some(Ok(WatchEvent::Bookmark(bookmark))) => version = bookmark.metadata.resource_version,
                    Some(Ok(WatchEvent::Error(status))) => {
                        // 410 Gone: the version is too old; list again.
                        if status.code != 410 {
                            metrics.kubernetes_errors.inc();
                            tracing::warn!(code = status.code, message = %status.message, "pod watch error");
                        }
                        break false;
                    }
                    Some(Err(e)) => {
                        metrics.kubernetes_errors.inc();
                        tracing::debug!(error = %e, "pod watch failed; listing again");
                        break false;
                    }
                }
                metrics.kubernetes_pods.set(directory.len() as i64);
            };
            let healthy = opened.elapsed() >= Duration::from_secs(60) || events > 1;
            if healthy {
                backoff = FIRST_BACKOFF;
            }
            if ended_cleanly && healthy {
                // The server's timeout: watch on from the same version.
                continue 'watch;
            }
            break 'watch;
        }
        // A watch that failed or ended at once: wait before listing again.
        if !pause(backoff, &mut stop).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn runs_and_ranks_from_operators_and_env() {
        let config = KubernetesConfig {
            pod_labels: vec!["team".into(), "app.kubernetes.io/name".into()],
            pod_annotations: vec!["owner".into()],
            ..Default::default()
        };
        let kubeflow = pod(serde_json::json!({
            "metadata": {"name": "llama-7b-worker-2", "uid": "u1",
                "labels": {"training.kubeflow.org/job-name": "llama-7b", "training.kubeflow.org/replica-index": "2",
                           "training.kubeflow.org/replica-type": "worker", "team": "nlp", "app.kubernetes.io/name": "trainer"},
                "annotations": {"owner": "ana"},
                "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "llama-7b", "uid": "j"}]},
            "spec": {"containers": [{"name": "pytorch", "env": [{"name": "RANK", "value": "3"}]}]}
        }));
        let info = pod_info(&kubeflow, &config);
        assert_eq!(info.run.as_deref(), Some("llama-7b"));
        assert_eq!(info.rank.as_deref(), Some("3"), "RANK in the env wins over the replica index");
        assert_eq!(info.labels.get("team"), Some("nlp"));
        assert_eq!(info.labels.get("app_kubernetes_io_name"), Some("trainer"));
        assert_eq!(info.labels.get("owner"), Some("ana"));

        let jobset = pod(serde_json::json!({
            "metadata": {"name": "sft-workers-0-1-x7k2p", "uid": "u2",
                "labels": {"jobset.sigs.k8s.io/jobset-name": "sft", "batch.kubernetes.io/job-completion-index": "1"}},
            "spec": {"containers": [{"name": "main"}]}
        }));
        let info = pod_info(&jobset, &config);
        assert_eq!((info.run.as_deref(), info.rank.as_deref()), (Some("sft"), Some("1")));

        // JobSet with several child Jobs: the completion index repeats.
        let multislice = pod(serde_json::json!({
            "metadata": {"name": "tpu-slice-3-1-abcde", "uid": "u2b",
                "labels": {"jobset.sigs.k8s.io/jobset-name": "tpu", "jobset.sigs.k8s.io/job-global-index": "3",
                           "batch.kubernetes.io/job-completion-index": "1"}},
            "spec": {"containers": [{"name": "main"}]}
        }));
        assert_eq!(pod_info(&multislice, &config).rank.as_deref(), Some("3-1"));
        // A Helm release is not a training run.
        let helm = pod(serde_json::json!({
            "metadata": {"name": "grafana-5d9f7c6b8-x2k4q", "uid": "u2c", "labels": {"app.kubernetes.io/instance": "grafana"}},
            "spec": {"containers": [{"name": "grafana"}]}
        }));
        assert_eq!(
            pod_info(&helm, &config).run.as_deref(),
            Some("grafana"),
            "the name rule, as for any Deployment pod"
        );
        let postgres = pod(serde_json::json!({
            "metadata": {"name": "db", "uid": "u2d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "postgres", "uid": "s"}]},
            "spec": {"containers": [{"name": "db"}]}
        }));
        assert_eq!(pod_info(&postgres, &config).run, None, "a StatefulSet owner alone makes no run");

        let volcano = pod(serde_json::json!({
            "metadata": {"name": "vcjob-task-0", "uid": "u3", "annotations": {"volcano.sh/job-name": "vcjob", "volcano.sh/task-index": "0"}},
            "spec": {"containers": [{"name": "main"}]}
        }));
        assert_eq!(pod_info(&volcano, &config).run.as_deref(), Some("vcjob"));

        let lws = pod(serde_json::json!({
            "metadata": {"name": "vllm-0-2", "uid": "u4",
                "labels": {"leaderworkerset.sigs.k8s.io/name": "vllm", "leaderworkerset.sigs.k8s.io/worker-index": "2"}},
            "spec": {"containers": [{"name": "main"}]}
        }));
        let info = pod_info(&lws, &config);
        assert_eq!((info.run.as_deref(), info.rank.as_deref()), (Some("vllm"), Some("2")));

        let statefulset = pod(serde_json::json!({
            "metadata": {"name": "trainer-4", "uid": "u5", "labels": {"apps.kubernetes.io/pod-index": "4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "trainer", "uid": "s"}]},
            "spec": {"containers": [{"name": "main"}]}
        }));
        let info = pod_info(&statefulset, &config);
        assert_eq!((info.run.as_deref(), info.rank.as_deref()), (Some("trainer"), Some("4")));

        // Nothing but a name: the name rules.
        let bare = pod(serde_json::json!({"metadata": {"name": "bert-ft-worker-3", "uid": "u6"}}));
        let info = pod_info(&bare, &config);
        assert_eq!((info.run.as_deref(), info.rank.as_deref()), (Some("bert-ft"), Some("3")));
    }

    #[test]
    fn deleted_pods_stay_for_their_retention() {
        let directory = PodDirectory::default();
        let config = KubernetesConfig::default();
        let p = pod(serde_json::json!({"metadata": {"name": "a-worker-0", "uid": "u1"}}));
        directory.upsert(&p, &config);
        let v = directory.version();
        directory.upsert(&p, &config);
        assert_eq!(directory.version(), v, "no change, no new version");
        directory.mark_deleted("u1");
        directory.expire(Duration::from_secs(60));
        assert!(directory.get("u1").is_some(), "kept while its last lines are read");
        directory.expire(Duration::ZERO);
        assert!(directory.get("u1").is_none());
    }
}
