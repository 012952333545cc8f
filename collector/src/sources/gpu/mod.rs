//! GPU counters: read through NVML (when the NVIDIA driver is present) or
//! scraped from a dcgm-exporter on the node, or both; attributed to the pod
//! holding each GPU through the kubelet's PodResources API; shipped as
//! metric samples with dcgm-exporter's names. NVML Xid events also become
//! log records with `ml_event="gpu_xid"`.
//!
//! On a node with no NVIDIA driver the NVML reader logs one line and stays
//! off; nothing else is affected.

pub mod exposition;
pub mod nvml;
pub mod podresources;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::batch::encode_ipc;
use weft_model::metric::{MetadataMap, MetricBatchBuilder, MetricMetadata, META_METRIC_METADATA};
use weft_model::time::serde_duration;
use weft_model::{LabelSet, Level, LogBatchBuilder, LogRecord};

use crate::forward::Forwarder;
use crate::kubernetes::PodDirectory;
use crate::metrics::CollectorMetrics;

/// Settings of the GPU source: the `collector.gpu` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Read GPUs through NVML when the NVIDIA driver is present.
    pub nvml: bool,
    /// Watch NVML for Xid errors and record them as log lines.
    pub xid_events: bool,
    /// A dcgm-exporter to scrape (e.g. `http://127.0.0.1:9400/metrics`).
    pub dcgm_exporter: Option<String>,
    /// How often counters are read.
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    /// The kubelet PodResources socket, for GPU → pod attribution.
    pub pod_resources_socket: PathBuf,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            nvml: true,
            xid_events: true,
            dcgm_exporter: None,
            interval: Duration::from_secs(10),
            pod_resources_socket: PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock"),
        }
    }
}

/// A running GPU source.
pub struct GpuSource {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl GpuSource {
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// `# HELP` / `# TYPE` of the series the NVML reader writes.
fn dcgm_metadata() -> MetadataMap {
    let gauge = |help: &str, unit: &str| MetricMetadata {
        kind: "gauge".into(),
        help: help.into(),
        unit: unit.into(),
    };
    let counter = |help: &str, unit: &str| MetricMetadata {
        kind: "counter".into(),
        help: help.into(),
        unit: unit.into(),
    };
    MetadataMap::from([
        ("DCGM_FI_DEV_GPU_UTIL".into(), gauge("GPU utilization (in %).", "percent")),
        ("DCGM_FI_DEV_MEM_COPY_UTIL".into(), gauge("Memory utilization (in %).", "percent")),
        (
            "DCGM_FI_DEV_FB_USED".into(),
            gauge("Framebuffer memory used (in MiB).", "mebibytes"),
        ),
        (
            "DCGM_FI_DEV_FB_FREE".into(),
            gauge("Framebuffer memory free (in MiB).", "mebibytes"),
        ),
        (
            "DCGM_FI_DEV_FB_RESERVED".into(),
            gauge("Framebuffer memory reserved (in MiB).", "mebibytes"),
        ),
        ("DCGM_FI_DEV_POWER_USAGE".into(), gauge("Power draw (in W).", "watts")),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION".into(),
            counter("Total energy consumption since boot (in mJ).", "millijoules"),
        ),
        ("DCGM_FI_DEV_GPU_TEMP".into(), gauge("GPU temperature (in C).", "celsius")),
        ("DCGM_FI_DEV_SM_CLOCK".into(), gauge("SM clock frequency (in MHz).", "megahertz")),
        (
            "DCGM_FI_DEV_MEM_CLOCK".into(),
            gauge("Memory clock frequency (in MHz).", "megahertz"),
        ),
        (
            "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS".into(),
            gauge("Current clock throttle reasons (bitmask).", ""),
        ),
        (
            "DCGM_FI_DEV_XID_ERRORS".into(),
            gauge("Value of the last XID error encountered.", ""),
        ),
        (
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL".into(),
            counter("Total number of single-bit volatile ECC errors.", ""),
        ),
        (
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL".into(),
            counter("Total number of double-bit volatile ECC errors.", ""),
        ),
        (
            "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL".into(),
            counter("Total number of single-bit persistent ECC errors.", ""),
        ),
        (
            "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL".into(),
            counter("Total number of double-bit persistent ECC errors.", ""),
        ),
    ])
}

/// Adds the holder of the series' GPU (by `UUID`) as labels, unless the
/// series already names a pod (dcgm-exporter with its own mapping).
fn attribute(series: &mut LabelSet, owners: &HashMap<String, podresources::DeviceOwner>, pods: &PodDirectory) {
    if series.get("pod").is_some() {
        return;
    }
    let Some(owner) = series.get("UUID").and_then(|uuid| owners.get(uuid)) else {
        return;
    };
    let (run, rank) = pods.run_and_rank(&owner.namespace, &owner.pod);
    series.insert("namespace", owner.namespace.clone());
    series.insert("pod", owner.pod.clone());
    series.insert("container", owner.container.clone());
    series.insert("run", run.unwrap_or_default());
    series.insert("rank", rank.unwrap_or_default());
}

/// One NVML read of every GPU, as the collector makes it, rendered as a
/// Prometheus exposition with dcgm-exporter's names (`weft gpu`). Returns
/// the driver line and the exposition; fails with the reason where NVML
/// cannot be loaded.
pub fn read_exposition(hostname: &str) -> Result<(String, String), String> {
    let reader = nvml::NvmlReader::open().map_err(|e| format!("NVML could not be loaded ({e}): no NVIDIA driver on this machine?"))?;
    let samples = reader.read(hostname, &HashMap::new());
    Ok((reader.describe(), exposition::render(&samples, &dcgm_metadata())))
}

/// Starts the GPU source (a no-op loop when neither NVML nor dcgm-exporter
/// is available).
pub fn start(
    config: GpuConfig,
    node: String,
    forwarder: Arc<Forwarder>,
    metrics: Arc<CollectorMetrics>,
    pods: Arc<PodDirectory>,
) -> GpuSource {
    let stop = Arc::new(AtomicBool::new(false));
    let reader = if config.nvml {
        match nvml::NvmlReader::open() {
            Ok(reader) => {
                tracing::info!(nvml = %reader.describe(), "reading GPU counters through NVML");
                Some(Arc::new(reader))
            }
            Err(e) => {
                tracing::info!(reason = %e, "NVML not available (no NVIDIA driver on this node): GPU counters through NVML are off");
                None
            }
        }
    } else {
        None
    };
    let (xid_tx, xid_rx) = std::sync::mpsc::sync_channel::<nvml::XidEvent>(256);
    if reader.is_some() && config.xid_events {
        if let Err(e) = nvml::watch_xid(stop.clone(), xid_tx) {
            tracing::warn!(error = %e, "Xid watch not started");
        }
    }
    let stop_loop = stop.clone();
    let task = tokio::spawn(async move {
        if reader.is_none() && config.dcgm_exporter.is_none() {
            return;
        }
        weft_model::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client builds");
        let mut owners: HashMap<String, podresources::DeviceOwner> = HashMap::new();
        let mut attribution_warned = false;
        let mut attribution_failures = 0u32;
        // Series written last round: those missing now get a staleness
        // marker, as a Prometheus scrape writes one.
        let mut previous: HashSet<String> = HashSet::new();
        let mut last_xid: HashMap<u32, u64> = HashMap::new();
        let mut xid_counts: HashMap<[String; 3], u64> = HashMap::new();
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop_loop.load(Ordering::Acquire) {
            let due = tokio::select! {
                _ = tick.tick() => true,
                _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            };
            // Xid events are recorded as they come, between reads too.
            let events: Vec<nvml::XidEvent> = xid_rx.try_iter().collect();
            if !events.is_empty() {
                record_xid(
                    events,
                    &mut last_xid,
                    &mut xid_counts,
                    (&owners, &pods),
                    &node,
                    &forwarder,
                    &metrics,
                )
                .await;
            }
            if !due {
                continue;
            }
            match podresources::device_owners(&config.pod_resources_socket, "nvidia.com/").await {
                Ok(found) => {
                    owners = found;
                    attribution_failures = 0;
                }
                Err(e) => {
                    attribution_failures += 1;
                    // Pods move: an attribution unconfirmed for three rounds is dropped.
                    if attribution_failures >= 3 {
                        owners.clear();
                    }
                    if !attribution_warned {
                        tracing::info!(reason = %e, "GPU to pod attribution unavailable (kubelet PodResources)");
                        attribution_warned = true;
                    }
                }
            }
            let now_ms = weft_model::time::now_nanos() / 1_000_000;
            let mut samples: Vec<(LabelSet, f64, i64)> = Vec::new();
            let mut metadata = dcgm_metadata();
            if let Some(reader) = &reader {
                let reader = reader.clone();
                let (node, xids) = (node.clone(), last_xid.clone());
                if let Ok(read) = tokio::task::spawn_blocking(move || reader.read(&node, &xids)).await {
                    samples.extend(read.into_iter().map(|(labels, value)| (labels, value, now_ms)));
                }
            }
            if let Some(url) = &config.dcgm_exporter {
                match client.get(url).send().await.and_then(|r| r.error_for_status()) {
                    Ok(response) => match response.text().await {
                        Ok(text) => {
                            let (scraped, errors) = exposition::parse(&text, &mut metadata);
                            if !errors.is_empty() {
                                tracing::warn!(url, first = %errors[0], count = errors.len(), "dcgm-exporter lines skipped");
                            }
                            samples.extend(scraped.into_iter().map(|s| (s.labels, s.value, s.ts.unwrap_or(now_ms))));
                        }
                        Err(e) => tracing::warn!(url, error = %e, "reading dcgm-exporter failed"),
                    },
                    Err(e) => tracing::warn!(url, error = %e, "scraping dcgm-exporter failed"),
                }
            }
            let mut builder = MetricBatchBuilder::new();
            let mut current = HashSet::with_capacity(samples.len());
            for (mut labels, value, ts) in samples {
                attribute(&mut labels, &owners, &pods);
                let series = labels.to_string();
                builder.append(&series, ts, value);
                current.insert(series);
            }
            metrics.gpu_samples.inc_by(builder.len() as u64);
            for gone in previous.difference(&current) {
                builder.append(gone, now_ms, weft_model::metric::stale_marker());
            }
            previous = current;
            if builder.is_empty() {
                continue;
            }
            let meta = HashMap::from([(
                META_METRIC_METADATA.to_string(),
                serde_json::to_string(&metadata).expect("metadata serializes"),
            )]);
            match encode_ipc(&[builder.finish()], meta) {
                Ok(body) => {
                    forwarder
                        .post_with_retries("/api/v1/ingest/metrics", None, body, 3, "gpu_counters")
                        .await;
                }
                Err(e) => tracing::error!(error = %e, "encoding GPU samples failed"),
            }
        }
    });
    GpuSource { stop, task }
}

/// Records Xid events as log lines (and as the last Xid per GPU), and
/// counts them into `weft_ml_events_total{event="gpu_xid"}` as the log
/// path counts tagged lines.
async fn record_xid(
    events: Vec<nvml::XidEvent>,
    last_xid: &mut HashMap<u32, u64>,
    counts: &mut HashMap<[String; 3], u64>,
    (owners, pods): (&HashMap<String, podresources::DeviceOwner>, &PodDirectory),
    node: &str,
    forwarder: &Forwarder,
    metrics: &CollectorMetrics,
) {
    let mut builder = LogBatchBuilder::default();
    let mut samples = MetricBatchBuilder::new();
    let mut touched = HashSet::new();
    let now_ms = weft_model::time::now_nanos() / 1_000_000;
    for event in events {
        metrics.xid_events.inc();
        last_xid.insert(event.gpu, event.xid);
        let mut record = xid_record(&event, node, weft_model::time::now_nanos());
        if let Some(owner) = owners.get(&event.uuid) {
            let (run, rank) = pods.run_and_rank(&owner.namespace, &owner.pod);
            record.namespace = owner.namespace.clone();
            record.pod = owner.pod.clone();
            record.container = owner.container.clone();
            record.run = run;
            record.rank = rank;
        }
        let key = [record.namespace.clone(), record.pod.clone(), record.run.clone().unwrap_or_default()];
        if !counts.contains_key(&key) {
            // A starting zero, so the first event counts in increase().
            samples.append(&xid_series(&key), now_ms - 1, 0.0);
        }
        *counts.entry(key.clone()).or_default() += 1;
        touched.insert(key);
        builder.append(&record.as_ref());
    }
    for key in touched {
        samples.append(&xid_series(&key), now_ms, counts[&key] as f64);
    }
    if let Ok(body) = encode_ipc(&[samples.finish()], HashMap::new()) {
        forwarder
            .post_with_retries("/api/v1/ingest/metrics", None, body, 5, "xid_events")
            .await;
    }
    let key = format!("xid-{node}-{}", weft_model::time::now_nanos());
    if let Ok(body) = encode_ipc(&[builder.finish(true)], HashMap::new()) {
        forwarder
            .post_with_retries("/api/v1/ingest", Some(&key), body, 5, "xid_events")
            .await;
    }
}

/// The `weft_ml_events_total` series of Xid events of (namespace, pod, run).
fn xid_series(key: &[String; 3]) -> String {
    LabelSet::from_pairs([
        ("__name__", "weft_ml_events_total"),
        ("event", "gpu_xid"),
        ("namespace", key[0].as_str()),
        ("pod", key[1].as_str()),
        ("run", key[2].as_str()),
    ])
    .to_string()
}

/// The log record of an Xid event, shaped like the kernel's NVRM line.
pub fn xid_record(event: &nvml::XidEvent, node: &str, ts: i64) -> LogRecord {
    LogRecord {
        ts,
        node: node.to_string(),
        level: Level::Error,
        ml_event: Some("gpu_xid".into()),
        fields: LabelSet::from_pairs([
            ("xid", event.xid.to_string()),
            ("gpu", event.gpu.to_string()),
            ("UUID", event.uuid.clone()),
        ]),
        line: format!(
            "NVRM: Xid (GPU {} {}): {}, {}",
            event.gpu,
            event.uuid,
            event.xid,
            nvml::xid_meaning(event.xid)
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_adds_the_pod_holding_the_gpu() {
        let owners = HashMap::from([(
            "GPU-aaaa".to_string(),
            podresources::DeviceOwner {
                namespace: "ml".into(),
                pod: "train-llama-0".into(),
                container: "trainer".into(),
            },
        )]);
        let mut series = LabelSet::from_pairs([("__name__", "DCGM_FI_DEV_GPU_UTIL"), ("UUID", "GPU-aaaa"), ("gpu", "0")]);
        attribute(&mut series, &owners, &PodDirectory::default());
        assert_eq!(
            (series.get("pod"), series.get("run"), series.get("rank")),
            (Some("train-llama-0"), Some("train-llama"), Some("0"))
        );
        let mut idle = LabelSet::from_pairs([("__name__", "DCGM_FI_DEV_GPU_UTIL"), ("UUID", "GPU-cccc")]);
        attribute(&mut idle, &owners, &PodDirectory::default());
        assert_eq!(idle.get("pod"), None);
    }

    #[test]
    fn xid_events_become_tagged_error_lines() {
        let record = xid_record(
            &nvml::XidEvent {
                gpu: 3,
                uuid: "GPU-x".into(),
                xid: 79,
            },
            "n1",
            5,
        );
        assert_eq!(record.ml_event.as_deref(), Some("gpu_xid"));
        assert_eq!(record.fields.get("xid"), Some("79"));
        assert!(record.line.contains("79, GPU has fallen off the bus"));
    }

    #[test]
    fn without_a_driver_nvml_reports_why() {
        // This machine has no NVIDIA driver; on a GPU node this opens.
        if let Err(reason) = nvml::NvmlReader::open() {
            assert!(!reason.is_empty());
        }
    }
}
