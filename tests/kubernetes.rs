//! The collector against a fake Kubernetes API server on loopback: it lists
//! and watches its node's pods (`fieldSelector=spec.nodeName=...`), takes
//! run and rank from operator labels and the pod spec rather than the pod
//! name, copies allow-listed labels onto records, learns pods added later
//! from watch events, and keeps a deleted pod's metadata for its last lines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{all_lines, wait_for, PodLogWriter, Weft};

/// Pods, their change events and the requests seen, behind one lock.
#[derive(Default)]
struct ApiState {
    /// Current pods by uid, with the resource version of their last change.
    pods: Vec<serde_json::Value>,
    /// (resource version, event type, pod) in order.
    events: Vec<(u64, &'static str, serde_json::Value)>,
    version: u64,
    requests: Vec<String>,
}

/// A Kubernetes API server that answers `GET /api/v1/pods` lists and
/// watches (chunked JSON events) the way the real one does.
struct FakeApiServer {
    port: u16,
    state: Arc<(Mutex<ApiState>, Condvar)>,
}

impl FakeApiServer {
    fn start(pods: Vec<serde_json::Value>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((Mutex::new(ApiState::default()), Condvar::new()));
        {
            let mut s = state.0.lock().unwrap();
            for mut pod in pods {
                s.version += 1;
                pod["metadata"]["resourceVersion"] = s.version.to_string().into();
                s.pods.push(pod);
            }
        }
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeApiServer { port, state }
    }

    /// Applies a change; tells the watchers unless `unseen`.
    fn apply(&self, kind: &'static str, mut pod: serde_json::Value, unseen: bool) {
        let (lock, changed) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.version += 1;
        pod["metadata"]["resourceVersion"] = s.version.to_string().into();
        let uid = pod["metadata"]["uid"].clone();
        s.pods.retain(|p| p["metadata"]["uid"] != uid);
        if kind != "DELETED" {
            s.pods.push(pod.clone());
        }
        if !unseen {
            let version = s.version;
            s.events.push((version, kind, pod));
        }
        changed.notify_all();
    }

    /// Applies a change and tells the watchers.
    fn change(&self, kind: &'static str, pod: serde_json::Value) {
        self.apply(kind, pod, false);
    }

    /// Changes a pod without telling watchers (as if the event was lost),
    /// then expires the watch with 410 Gone: only a fresh list finds it.
    fn change_unseen_then_expire(&self, pod: serde_json::Value) {
        self.apply("MODIFIED", pod, true);
        let (lock, changed) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.version += 1;
        let version = s.version;
        let gone = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410});
        s.events.push((version, "ERROR", gone));
        changed.notify_all();
    }

    fn lists(&self) -> usize {
        self.requests().iter().filter(|r| !r.contains("watch=true")).count()
    }

    fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: collector\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: collector\n\
             current-context: fake\n",
            self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn serve(stream: TcpStream, state: &(Mutex<ApiState>, Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    state.0.lock().unwrap().requests.push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if path != "/api/v1/pods" {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if param("watch").as_deref() != Some("true") {
        let body = {
            let s = state.0.lock().unwrap();
            serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": s.version.to_string()}, "items": s.pods})
                .to_string()
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // A watch: every event after the asked version, as it happens.
    let mut seen: u64 = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    if write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (lock, changed) = state;
    let mut s = lock.lock().unwrap();
    while std::time::Instant::now() < deadline {
        let fresh: Vec<_> = s.events.iter().filter(|(v, _, _)| *v > seen).cloned().collect();
        for (version, kind, pod) in fresh {
            let line = format!("{}\n", serde_json::json!({"type": kind, "object": pod}));
            if write!(stream, "{:x}\r\n{line}\r\n", line.len())
                .and_then(|_| stream.flush())
                .is_err()
            {
                return;
            }
            seen = version;
        }
        s = changed.wait_timeout(s, Duration::from_millis(500)).unwrap().0;
    }
    drop(s);
    let _ = write!(stream, "0\r\n\r\n");
}

fn pod(name: &str, uid: &str, labels: serde_json::Value, env: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "labels": labels,
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "llama-pretrain", "uid": "job-1", "controller": true}]},
        "spec": {"nodeName": "test-node", "containers": [{"name": "pytorch", "image": "trainer", "env": env}]},
        "status": {"phase": "Running"}
    })
}

/// A pod log directory with a given uid.
fn writer(root: &std::path::Path, pod: &str, uid: &str) -> PodLogWriter {
    PodLogWriter::with_uid(root, "ml", pod, "pytorch", uid)
}

fn lines_with(weft: &Weft, selector: &str, count: usize) -> Vec<(String, String)> {
    wait_for(&format!("{count} lines of {selector}"), Duration::from_secs(30), || {
        let lines = all_lines(weft, selector);
        (lines.len() >= count).then_some(lines)
    })
}

#[test]
fn pod_metadata_from_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    // The name says run "llama-7b", rank 1; the API knows better.
    let worker1 = pod(
        "llama-7b-worker-1",
        "uid-0001",
        serde_json::json!({"training.kubeflow.org/job-name": "llama-pretrain", "training.kubeflow.org/replica-index": "1", "team": "nlp"}),
        serde_json::json!([{"name": "RANK", "value": "5"}]),
    );
    let api = FakeApiServer::start(vec![worker1.clone()]);
    let first = writer(&logs, "llama-7b-worker-1", "uid-0001");
    first.append(PodLogWriter::cri("stdout", "F", "step 1 loss 2.5").as_bytes());
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  kubernetes:\n    kubeconfig: {}\n    pod_labels: [team]\n    deleted_pod_retention: 15s\n",
            api.kubeconfig(dir.path()).display()
        ),
    )
    .unwrap();
    let weft = Weft::standalone(&logs, &data, &config);

    // A line already on disk at start gets the listed pod's metadata.
    let lines = lines_with(&weft, r#"{run="llama-pretrain", rank="5", team="nlp"}"#, 1);
    assert_eq!(lines[0].1, "step 1 loss 2.5");
    assert!(
        all_lines(&weft, r#"{run="llama-7b"}"#).is_empty(),
        "the name's guess must not be used"
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dtest-node") && !r.contains("watch=true")),
        "lists only this node's pods: {requests:?}"
    );

    // A pod added later arrives through the watch.
    let worker2 = pod(
        "llama-7b-worker-2",
        "uid-0002",
        serde_json::json!({"training.kubeflow.org/job-name": "llama-pretrain", "training.kubeflow.org/replica-index": "2", "team": "nlp"}),
        serde_json::json!([]),
    );
    api.change("ADDED", worker2);
    wait_for("the collector knows two pods", Duration::from_secs(30), || {
        let text = common::client().get(weft.url("/metrics")).send().ok()?.text().ok()?;
        text.lines().any(|l| l == "weft_collector_kubernetes_pods 2").then_some(())
    });
    assert!(api.requests().iter().any(|r| r.contains("watch=true")), "watches after listing");
    let second = writer(&logs, "llama-7b-worker-2", "uid-0002");
    second.append(PodLogWriter::cri("stdout", "F", "rank two here").as_bytes());
    let lines = lines_with(&weft, r#"{run="llama-pretrain", rank="2"}"#, 1);
    assert_eq!(lines[0].1, "rank two here");

    // Deleted: its last lines, written after the deletion, keep the metadata.
    api.change("DELETED", worker1);
    // Events arrive in order: once a later relabel of the second pod shows
    // on its records, the deletion has been applied.
    api.change(
        "MODIFIED",
        pod(
            "llama-7b-worker-2",
            "uid-0002",
            serde_json::json!({"training.kubeflow.org/job-name": "llama-pretrain", "training.kubeflow.org/replica-index": "2", "team": "vision"}),
            serde_json::json!([]),
        ),
    );
    wait_for("the relabel is applied", Duration::from_secs(30), || {
        second.append(PodLogWriter::cri("stdout", "F", "probe").as_bytes());
        (!all_lines(&weft, r#"{team="vision"}"#).is_empty()).then_some(())
    });
    first.append(PodLogWriter::cri("stderr", "F", "last words of a deleted pod").as_bytes());
    let lines = lines_with(&weft, r#"{run="llama-pretrain", rank="5"} |= "last words""#, 1);
    assert_eq!(lines[0].1, "last words of a deleted pod");
    // Past deleted_pod_retention the pod is forgotten: only its name speaks.
    wait_for("the deleted pod's metadata expires", Duration::from_secs(60), || {
        first.append(PodLogWriter::cri("stderr", "F", "after expiry").as_bytes());
        (!all_lines(&weft, r#"{run="llama-7b", rank="1"} |= "after expiry""#).is_empty()).then_some(())
    });

    // A change whose event never came, then 410 Gone: the collector lists
    // again and finds it.
    let lists_before = api.lists();
    api.change_unseen_then_expire(pod(
        "llama-7b-worker-2",
        "uid-0002",
        serde_json::json!({"training.kubeflow.org/job-name": "llama-pretrain", "training.kubeflow.org/replica-index": "2", "team": "speech"}),
        serde_json::json!([]),
    ));
    wait_for("a relist after 410 Gone", Duration::from_secs(30), || {
        (api.lists() > lists_before).then_some(())
    });
    wait_for("the relisted labels apply", Duration::from_secs(30), || {
        second.append(PodLogWriter::cri("stdout", "F", "probe").as_bytes());
        (!all_lines(&weft, r#"{team="speech"}"#).is_empty()).then_some(())
    });
}

#[test]
fn without_api_access_path_metadata_is_used_and_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    // An API server that refuses: 403 on every list.
    let refusing = common::Capture::start(&[(
        "/api/v1/pods",
        403,
        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden","reason":"Forbidden","code":403}"#,
    )]);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: u\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\ncurrent-context: fake\n",
            refusing.url("")
        ),
    )
    .unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!("collector:\n  kubernetes:\n    kubeconfig: {}\n", kubeconfig.display()),
    )
    .unwrap();
    let writer = writer(&logs, "bert-ft-worker-3", "uid-0003");
    writer.append(PodLogWriter::cri("stdout", "F", "epoch 1").as_bytes());
    let args = common::standalone_args(&logs, &data, &config);
    let weft = Weft::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[], true);
    let lines = lines_with(&weft, r#"{run="bert-ft", rank="3"}"#, 1);
    assert_eq!(lines[0].1, "epoch 1");
    // It keeps retrying, but says so once.
    wait_for("two refused lists", Duration::from_secs(30), || {
        (refusing.received("/api/v1/pods").len() >= 2).then_some(())
    });
    let log = weft.stderr.as_ref().unwrap().lock().unwrap().clone();
    assert_eq!(log.matches("listing pods failed").count(), 1, "{log}");
}
