//! The built-in ML rule pack against real splits: each rule fires on data
//! made to trigger it and stays silent on healthy data beside it. Data is
//! written through the indexer (logs tagged by the same classifier the
//! collector uses), read back by the query service, and the rule groups
//! are evaluated at chosen times.

use std::collections::HashMap;
use std::sync::Arc;

use weft_indexer::{Indexer, IndexerConfig};
use weft_model::batch::encode_ipc;
use weft_model::events::EventClassifier;
use weft_model::metric::MetricBatchBuilder;
use weft_model::{LabelSet, LogBatchBuilder, LogRecord};
use weft_query::rules::{load_groups, Alert, AlertState, RuleManager, RulesConfig};
use weft_query::{QueryConfig, QueryService};

/// 2026-11-25T10:00:00Z in ms.
const T: i64 = 1_795_600_800_000;
const MIN: i64 = 60_000;

struct Fixture {
    _dir: tempfile::TempDir,
    indexer: Arc<Indexer>,
    manager: Arc<RuleManager>,
    keys: usize,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = prometheus::Registry::new();
        let indexer = Indexer::open(dir.path(), IndexerConfig::default(), &registry).unwrap();
        let service = QueryService::new(dir.path(), QueryConfig::default(), &registry);
        let config = RulesConfig::default();
        let groups = load_groups(&config).unwrap();
        let manager = RuleManager::new(service, groups, &config, &dir.path().join("rules"), None, None, &registry).unwrap();
        Self {
            _dir: dir,
            indexer,
            manager,
            keys: 0,
        }
    }

    /// Log records `(ms, namespace, pod, run, text)`, tagged as the
    /// collector tags them.
    fn logs(&mut self, lines: &[(i64, &str, &str, &str, &str)]) {
        let classifier = EventClassifier::default();
        let mut builder = LogBatchBuilder::default();
        for (ms, namespace, pod, run, text) in lines {
            let event = classifier.classify(text);
            let mut record = LogRecord {
                ts: ms * 1_000_000,
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: "trainer".into(),
                node: "gpu-node-7".into(),
                stream: "stderr".into(),
                run: (!run.is_empty()).then(|| run.to_string()),
                line: text.to_string(),
                ml_event: event.as_ref().map(|e| e.name.clone()),
                ..Default::default()
            };
            if let Some(xid) = event.and_then(|e| e.xid) {
                record.fields = LabelSet::from_pairs([("xid", xid.to_string().as_str())]);
            }
            builder.append(&record.as_ref());
        }
        self.keys += 1;
        let body = encode_ipc(&[builder.finish(true)], HashMap::new()).unwrap();
        self.indexer
            .ingest_arrow("default", &format!("k{}", self.keys), &body, "test")
            .unwrap();
        self.indexer.commit().unwrap();
    }

    /// Samples of `series` (`{__name__="…", …}` text) from `from` every `every` ms.
    fn samples(&mut self, series: &str, from: i64, every: i64, values: &[f64]) {
        let labels = LabelSet::parse(series).unwrap();
        let mut builder = MetricBatchBuilder::new();
        for (i, v) in values.iter().enumerate() {
            builder.append(&labels.to_string(), from + i as i64 * every, *v);
        }
        let body = encode_ipc(&[builder.finish()], HashMap::new()).unwrap();
        self.indexer.ingest_metrics("default", &body, "test").unwrap();
        self.indexer.commit().unwrap();
    }

    /// Evaluates every group at `at` and returns the alerts of `name`.
    fn eval(&self, name: &str, at: i64) -> Vec<Alert> {
        for group in 0..self.manager.group_count() {
            self.manager.evaluate_group(group, at);
        }
        let rules = self.manager.rules_json(None);
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                assert_eq!(rule["health"], "ok", "{}: {}", rule["name"], rule["lastError"]);
            }
        }
        self.manager
            .active_alerts()
            .into_iter()
            .filter(|a| a.labels.get("alertname").map(String::as_str) == Some(name))
            .collect()
    }
}

fn label<'a>(alert: &'a Alert, name: &str) -> &'a str {
    alert.labels.get(name).map(String::as_str).unwrap_or("")
}

fn gauge(values: usize, value: f64) -> Vec<f64> {
    vec![value; values]
}

#[test]
fn training_job_failed_names_the_first_failure_once_per_run() {
    let mut f = Fixture::new();
    let traceback = "Traceback (most recent call last):\n  File \"train.py\", line 88, in <module>\n    loss.backward()\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB";
    let timeout = "[rank1]:[E1125 10:02:00.512389 1 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1523, OpType=ALLREDUCE) ran for 600041 milliseconds before timing out.";
    f.logs(&[
        (T, "ml", "llama-worker-2", "llama", "step 100 loss 2.1"),
        (T + MIN, "ml", "llama-worker-2", "llama", traceback),
        (T + 2 * MIN, "ml", "llama-worker-0", "llama", timeout),
        (T + 2 * MIN, "ml", "llama-worker-1", "llama", timeout),
        (T + 2 * MIN, "ml", "llama-worker-3", "llama", timeout),
        // Healthy run beside it: progress and a benign fp16 scaler notice.
        (T + MIN, "ml", "bert-worker-0", "bert", "step 5 loss 0.9"),
        (
            T + MIN,
            "ml",
            "bert-worker-0",
            "bert",
            "Gradient overflow. Skipping step, loss scaler 0 reducing loss scale to 32768.0",
        ),
    ]);
    let alerts = f.eval("TrainingJobFailed", T + 3 * MIN);
    assert_eq!(alerts.len(), 1, "one alert per run: {alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!((label(alert, "run"), label(alert, "namespace")), ("llama", "ml"));
    assert_eq!(
        alert.annotations["pod"], "llama-worker-2",
        "the first failure, not the ranks that timed out after it"
    );
    assert_eq!(alert.annotations["event"], "cuda_oom");
    assert_eq!(
        alert.annotations["description"],
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    );
    assert_eq!(
        alert.annotations["summary"],
        "Training run llama failed: cuda_oom in pod llama-worker-2"
    );
    assert_eq!(alert.value, 4.0);
    // Ten minutes after the last failure the window is empty: resolved.
    assert!(f.eval("TrainingJobFailed", T + 13 * MIN).is_empty());
}

#[test]
fn gpu_xid_fires_per_node_and_number() {
    let mut f = Fixture::new();
    f.logs(&[
        (
            T,
            "kube-system",
            "nvidia-driver-x",
            "",
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=2341, GPU has fallen off the bus.",
        ),
        (
            T,
            "kube-system",
            "nvidia-driver-x",
            "",
            "NVRM: loading NVIDIA UNIX x86_64 Kernel Module 580.126.09",
        ),
    ]);
    let alerts = f.eval("GpuXid", T + MIN);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((label(&alerts[0], "xid"), label(&alerts[0], "node")), ("79", "gpu-node-7"));
    assert!(alerts[0].annotations["description"].contains("GPU has fallen off the bus"));
}

#[test]
fn nan_loss_counts_ranks_per_run() {
    let mut f = Fixture::new();
    for rank in 0..2 {
        let series = format!(r#"{{__name__="weft_train_loss", namespace="ml", pod="gpt-worker-{rank}", run="gpt", rank="{rank}"}}"#);
        f.samples(&series, T, 10_000, &[2.1, 1.9, f64::NAN]);
    }
    f.samples(
        r#"{__name__="weft_train_loss", namespace="ml", pod="vit-worker-0", run="vit", rank="0"}"#,
        T,
        10_000,
        &[2.1, 1.9, 1.7],
    );
    f.samples(
        r#"{__name__="weft_train_loss", namespace="ml", pod="rl-worker-0", run="rl", rank="0"}"#,
        T,
        10_000,
        &[2.1, f64::INFINITY, f64::INFINITY],
    );
    let alerts = f.eval("NanLoss", T + 30_000);
    let mut runs: Vec<(&str, f64)> = alerts.iter().map(|a| (label(a, "run"), a.value)).collect();
    runs.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(runs, vec![("gpt", 2.0), ("rl", 1.0)]);
}

#[test]
fn training_stalled_needs_a_live_pod_without_new_steps() {
    let mut f = Fixture::new();
    let every = 30_000;
    let minutes = |m: i64| (m * MIN / every) as usize;
    // Stalled: steps stop after 5 minutes, the pod keeps logging.
    f.samples(
        r#"{__name__="weft_train_step", namespace="ml", pod="stall-0", run="stall", rank="0"}"#,
        T,
        every,
        &(0..minutes(5)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    f.samples(
        r#"{__name__="weft_log_lines_total", namespace="ml", pod="stall-0", container="trainer"}"#,
        T,
        every,
        &(0..minutes(20)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    // Healthy: steps go on.
    f.samples(
        r#"{__name__="weft_train_step", namespace="ml", pod="steady-0", run="steady", rank="0"}"#,
        T,
        every,
        &(0..minutes(20)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    f.samples(
        r#"{__name__="weft_log_lines_total", namespace="ml", pod="steady-0", container="trainer"}"#,
        T,
        every,
        &(0..minutes(20)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    // Finished: steps and logs both stopped.
    f.samples(
        r#"{__name__="weft_train_step", namespace="ml", pod="done-0", run="done", rank="0"}"#,
        T,
        every,
        &(0..minutes(5)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    f.samples(
        r#"{__name__="weft_log_lines_total", namespace="ml", pod="done-0", container="trainer"}"#,
        T,
        every,
        &(0..minutes(5)).map(|i| i as f64).collect::<Vec<_>>(),
    );
    let alerts = f.eval("TrainingStalled", T + 20 * MIN);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(label(&alerts[0], "pod"), "stall-0");
    // Last step at 4m30s: 15m30s without progress.
    assert_eq!(alerts[0].value, 930.0);
    assert!(
        alerts[0].annotations["summary"].contains("15m 30s"),
        "{}",
        alerts[0].annotations["summary"]
    );
}

#[test]
fn container_restarting_counts_restarts_in_half_an_hour() {
    let mut f = Fixture::new();
    f.samples(
        r#"{__name__="weft_container_restarts", namespace="ml", pod="crashy-0", container="trainer"}"#,
        T,
        5 * MIN,
        &[0.0, 1.0, 2.0, 3.0, 4.0],
    );
    f.samples(
        r#"{__name__="weft_container_restarts", namespace="ml", pod="stable-0", container="trainer"}"#,
        T,
        5 * MIN,
        &gauge(5, 1.0),
    );
    // A pod recreated under the same name starts again at 0: another uid,
    // another series, not three restarts.
    f.samples(
        r#"{__name__="weft_container_restarts", namespace="ml", pod="sts-0", container="trainer", pod_uid="a"}"#,
        T,
        5 * MIN,
        &gauge(2, 3.0),
    );
    f.samples(
        r#"{__name__="weft_container_restarts", namespace="ml", pod="sts-0", container="trainer", pod_uid="b"}"#,
        T + 10 * MIN,
        5 * MIN,
        &gauge(3, 0.0),
    );
    let alerts = f.eval("ContainerRestarting", T + 20 * MIN);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(label(&alerts[0], "pod"), "crashy-0");
    assert_eq!(alerts[0].value, 4.0);
}

#[test]
fn idle_gpu_needs_half_an_hour_under_five_percent() {
    let mut f = Fixture::new();
    let every = 30_000;
    let n = (40 * MIN / every) as usize;
    let dcgm = |gpu: &str, pod: &str| {
        let pod = if pod.is_empty() {
            String::new()
        } else {
            format!(r#", namespace="ml", pod="{pod}""#)
        };
        format!(r#"{{__name__="DCGM_FI_DEV_GPU_UTIL", gpu="{gpu}", UUID="GPU-{gpu}", Hostname="gpu-node-7"{pod}}}"#)
    };
    f.samples(&dcgm("0", "idle-0"), T, every, &(0..n).map(|i| (i % 4) as f64).collect::<Vec<_>>());
    f.samples(&dcgm("1", "busy-0"), T, every, &gauge(n, 97.0));
    f.samples(&dcgm("2", ""), T, every, &gauge(n, 0.0));
    // A pod that got its GPU ten minutes ago, still loading data.
    f.samples(&dcgm("3", "new-0"), T + 30 * MIN, every, &gauge((10 * MIN / every) as usize, 0.0));
    let alerts = f.eval("IdleGpu", T + 40 * MIN - every);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((label(&alerts[0], "pod"), label(&alerts[0], "gpu")), ("idle-0", "0"));
    assert_eq!(alerts[0].value, 3.0);
}

#[test]
fn hot_and_throttled_gpus() {
    let mut f = Fixture::new();
    let every = 30_000;
    let n = (12 * MIN / every) as usize;
    f.samples(
        r#"{__name__="DCGM_FI_DEV_GPU_TEMP", gpu="0", Hostname="gpu-node-7"}"#,
        T,
        every,
        &gauge(n, 91.0),
    );
    f.samples(
        r#"{__name__="DCGM_FI_DEV_GPU_TEMP", gpu="1", Hostname="gpu-node-7"}"#,
        T,
        every,
        &gauge(n, 68.0),
    );
    // 0x20: SW thermal slowdown. 0x04: the application clock setting, not a problem.
    f.samples(
        r#"{__name__="DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", gpu="0", Hostname="gpu-node-7"}"#,
        T,
        every,
        &gauge(n, 32.0),
    );
    f.samples(
        r#"{__name__="DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", gpu="1", Hostname="gpu-node-7"}"#,
        T,
        every,
        &gauge(n, 4.0),
    );
    // Throttling must last 5 minutes (`for: 5m`): pending first, then firing.
    let throttled = f.eval("GpuThrottled", T + 2 * MIN);
    assert_eq!(throttled.len(), 1);
    assert_eq!((label(&throttled[0], "gpu"), throttled[0].state), ("0", AlertState::Pending));
    let throttled = f.eval("GpuThrottled", T + 7 * MIN);
    assert_eq!(throttled[0].state, AlertState::Firing);
    let hot = f.eval("GpuTooHot", T + 10 * MIN);
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert_eq!((label(&hot[0], "gpu"), hot[0].value), ("0", 91.0));
}

#[test]
fn uncorrectable_ecc_errors() {
    let mut f = Fixture::new();
    f.samples(
        r#"{__name__="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu="0", UUID="GPU-0", Hostname="gpu-node-7"}"#,
        T,
        MIN,
        &[0.0, 0.0, 2.0, 2.0],
    );
    f.samples(
        r#"{__name__="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu="1", UUID="GPU-1", Hostname="gpu-node-7"}"#,
        T,
        MIN,
        &gauge(4, 0.0),
    );
    let alerts = f.eval("GpuEccUncorrectable", T + 4 * MIN);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(label(&alerts[0], "gpu"), "0");
}

#[test]
fn healthy_data_fires_nothing() {
    let mut f = Fixture::new();
    f.logs(&[
        (T, "ml", "ok-0", "ok", "step 1 loss 1.0"),
        (T + MIN, "ml", "ok-0", "ok", "step 2 loss 0.9"),
    ]);
    f.samples(
        r#"{__name__="weft_train_loss", namespace="ml", pod="ok-0", run="ok", rank="0"}"#,
        T,
        MIN,
        &[1.0, 0.9],
    );
    f.samples(
        r#"{__name__="weft_train_step", namespace="ml", pod="ok-0", run="ok", rank="0"}"#,
        T,
        MIN,
        &[1.0, 2.0],
    );
    f.samples(
        r#"{__name__="DCGM_FI_DEV_GPU_UTIL", gpu="0", namespace="ml", pod="ok-0"}"#,
        T,
        MIN,
        &[95.0, 96.0],
    );
    for group in 0..f.manager.group_count() {
        f.manager.evaluate_group(group, T + 2 * MIN);
    }
    assert!(f.manager.active_alerts().is_empty(), "{:?}", f.manager.active_alerts());
}
