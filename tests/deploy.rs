//! deploy/: the kustomize base and overlays render with `kubectl
//! kustomize`, every rendered object passes `kubernetes-validate --strict`
//! (PyPI; installed by scripts/install-test-deps) for a current Kubernetes,
//! the objects say what the design asks (read-only pod logs, tolerations,
//! NODE_NAME, least-privilege RBAC, probes, non-root where possible), and
//! every weft config they carry is one weft accepts. The Helm chart cannot
//! be rendered here (no helm binary in Debian or PyPI); it is checked for
//! values that its templates name but values.yaml lacks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KUBERNETES: &str = "1.34.0";

fn render(dir: &str) -> (String, Vec<Value>) {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .expect("kubectl on PATH (scripts/install-test-deps installs it)");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    (text, docs)
}

use serde::Deserialize;

fn validate(dir: &str, text: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES])
        .arg(file.path())
        .output()
        .expect("python3 with kubernetes-validate (scripts/install-test-deps installs it)");
    assert!(
        output.status.success(),
        "{dir} fails the Kubernetes {KUBERNETES} schema:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n == name || n.starts_with(&format!("{name}-")))
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn names(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect()
}

/// Every weft config in the `weft-config` ConfigMap passes `weft config check`.
fn configs_are_valid(docs: &[Value], dir: &str) -> Vec<String> {
    let config = find(docs, "ConfigMap", "weft-config");
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in config["data"].as_mapping().unwrap() {
        let key = key.as_str().unwrap().to_string();
        let path = tmp.path().join(&key);
        std::fs::write(&path, value.as_str().unwrap()).unwrap();
        files.push(path);
        keys.push(key);
    }
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("config")
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    assert!(output.status.success(), "{dir}: {}", String::from_utf8_lossy(&output.stdout));
    keys
}

/// Config files the containers are started with exist in the ConfigMap.
fn containers_find_their_config(docs: &[Value], keys: &[String], dir: &str) {
    for doc in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("DaemonSet" | "StatefulSet" | "Deployment")))
    {
        for container in doc["spec"]["template"]["spec"]["containers"].as_sequence().unwrap() {
            let args: Vec<&str> = container["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert!(
                ["collector", "indexer", "query", "standalone"].contains(&args[0]),
                "{dir}: role {}",
                args[0]
            );
            let config = args.iter().position(|a| *a == "--config").map(|i| args[i + 1]).expect("--config");
            let key = config.strip_prefix("/etc/weft/").unwrap();
            assert!(
                keys.iter().any(|k| k == key),
                "{dir}: {:?} starts with {config}, not in weft-config",
                doc["metadata"]["name"]
            );
            assert!(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "{dir}: liveness probe");
            assert!(
                container["readinessProbe"]["httpGet"]["path"] == "/readyz",
                "{dir}: readiness probe"
            );
            assert_eq!(
                container["securityContext"]["readOnlyRootFilesystem"], true,
                "{dir}: read-only root"
            );
            assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
            assert!(container["resources"]["requests"].is_mapping() && container["resources"]["limits"]["memory"].is_string());
        }
    }
}

#[test]
fn base_renders_validates_and_says_what_it_should() {
    let (text, docs) = render("deploy/kustomize/base");
    validate("base", &text);
    let keys = configs_are_valid(&docs, "base");
    containers_find_their_config(&docs, &keys, "base");
    assert!(docs
        .iter()
        .all(|d| d["kind"] == "Namespace" || d["kind"].as_str().unwrap().starts_with("Cluster") || d["metadata"]["namespace"] == "weft"));

    let collector = find(&docs, "DaemonSet", "weft-collector");
    let pod = &collector["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "lands on tainted GPU nodes");
    let container = &pod["containers"][0];
    let node_env = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node_env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let mount = |path: &str| {
        container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("mount {path}"))
    };
    assert_eq!(mount("/var/log/pods")["readOnly"], true);
    mount("/var/lib/kubelet/pod-resources");
    mount("/var/lib/weft");
    let otlp = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 4318)
        .expect("OTLP port");
    assert_eq!(otlp["hostPort"], 4318);
    let volumes = pod["volumes"].as_sequence().unwrap();
    let host = |name: &str| {
        volumes.iter().find(|v| v["name"] == name).unwrap()["hostPath"]["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host("pod-logs"), "/var/log/pods");
    assert_eq!(host("state"), "/var/lib/weft");
    assert_eq!(pod["serviceAccountName"], "weft-collector");

    let role = find(&docs, "ClusterRole", "weft-collector");
    assert_eq!(
        serde_yaml::to_string(&role["rules"]).unwrap(),
        "- apiGroups:\n  - ''\n  resources:\n  - pods\n  verbs:\n  - get\n  - list\n  - watch\n",
        "least privilege: read pods, nothing else"
    );
    let indexer = find(&docs, "StatefulSet", "weft-indexer");
    assert!(indexer["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].is_string());
    assert_eq!(indexer["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    let query = find(&docs, "Deployment", "weft-query");
    assert_eq!(query["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    find(&docs, "Service", "weft-query");
    find(&docs, "Service", "weft-indexer");

    // Grafana: both data sources at the query Service, with the uids the
    // dashboards use, and the dashboards byte for byte.
    let datasources = find(&docs, "ConfigMap", "weft-grafana-datasources");
    let provisioned: Value = serde_yaml::from_str(datasources["data"]["weft-datasources.yaml"].as_str().unwrap()).unwrap();
    let mut seen = BTreeSet::new();
    for ds in provisioned["datasources"].as_sequence().unwrap() {
        assert_eq!(ds["url"], "http://weft-query.weft.svc:3100");
        seen.insert(format!("{}={}", ds["type"].as_str().unwrap(), ds["uid"].as_str().unwrap()));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["loki=weft-loki".to_string(), "prometheus=weft-prometheus".to_string()])
    );
    let dashboards = find(&docs, "ConfigMap", "weft-dashboards");
    assert_eq!(dashboards["metadata"]["labels"]["grafana_dashboard"], "1");
    for file in ["gpu-fleet.json", "training-run.json", "logs-explorer.json"] {
        let on_disk = std::fs::read_to_string(format!("{ROOT}/dashboards/{file}")).unwrap();
        assert_eq!(dashboards["data"][file].as_str(), Some(on_disk.as_str()), "{file}");
    }
}

#[test]
fn overlays_render_and_validate() {
    let (text, docs) = render("deploy/kustomize/overlays/standalone");
    validate("standalone", &text);
    let keys = configs_are_valid(&docs, "standalone");
    containers_find_their_config(&docs, &keys, "standalone");
    let workloads: Vec<String> = names(&docs)
        .into_iter()
        .filter(|n| n.starts_with("StatefulSet/") || n.starts_with("DaemonSet/") || n.starts_with("Deployment/"))
        .collect();
    assert_eq!(workloads, ["StatefulSet/weft"], "one pod runs everything");
    // The query Service (and so Grafana's data sources) reaches it.
    let service = find(&docs, "Service", "weft-query");
    let pod_labels = &find(&docs, "StatefulSet", "weft")["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[key.as_str().unwrap()], value, "selector {key:?}");
    }

    let (text, docs) = render("deploy/kustomize/overlays/object-storage");
    validate("object-storage", &text);
    let keys = configs_are_valid(&docs, "object-storage");
    containers_find_their_config(&docs, &keys, "object-storage");
    let query = find(&docs, "Deployment", "weft-query");
    assert_eq!(query["spec"]["replicas"], 2);
    assert!(query["spec"]["template"]["spec"]["affinity"].is_null(), "replicas go anywhere");
    let config = find(&docs, "ConfigMap", "weft-config");
    for key in ["indexer.yaml", "query.yaml", "ruler.yaml"] {
        let parsed: Value = serde_yaml::from_str(config["data"][key].as_str().unwrap()).unwrap();
        assert!(parsed["storage"]["url"].as_str().unwrap().starts_with("s3://"), "{key}");
    }
    let rules_on: Vec<&str> = ["query.yaml", "ruler.yaml"]
        .into_iter()
        .filter(|k| serde_yaml::from_str::<Value>(config["data"][*k].as_str().unwrap()).unwrap()["rules"]["enabled"] == true)
        .collect();
    assert_eq!(rules_on, ["ruler.yaml"], "one rule evaluator");
    assert_eq!(find(&docs, "Deployment", "weft-ruler")["spec"]["replicas"], 1);
}

/// `.Values.a.b` paths in the chart's templates.
fn value_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(".Values.") {
        let tail = &rest[at + ".Values.".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].trim_end_matches('.').to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn helm_chart_names_only_values_it_defines() {
    let chart = PathBuf::from(ROOT).join("deploy/helm/weft");
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let meta: Value = serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        used.extend(value_paths(&std::fs::read_to_string(entry.unwrap().path()).unwrap()));
    }
    assert!(used.len() > 20, "{used:?}");
    for path in used {
        let mut node = &values;
        for part in path.split('.') {
            node = node
                .get(part)
                .unwrap_or_else(|| panic!("templates use .Values.{path}, values.yaml lacks it"));
        }
    }
    // The chart packs the same dashboards (a link to dashboards/).
    let linked = std::fs::read_dir(chart.join("dashboards"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(linked, 3);
    assert!(Path::new(&chart.join("dashboards/gpu-fleet.json")).exists());
}
