//! Split sharing through object storage (`storage.url`): an indexer mirrors
//! its splits and catalog to the store, a query process with its own empty
//! data directory answers from what it downloads, and an indexer whose
//! volume was lost restores from the store instead of starting empty.

mod common;

use std::time::Duration;

use common::remote_write::{send, series, WriteRequest};
use common::{client, get_json, role_args, wait_for, Weft};

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn push(indexer: &Weft, lines: &[&str]) {
    let ts = now_ns();
    let values: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!([(ts + i as i64).to_string(), l]))
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"namespace": "ml", "pod": "trainer-0"}, "values": values}]});
    let response = client()
        .post(indexer.url("/loki/api/v1/push"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
}

fn lines(query: &Weft) -> Vec<String> {
    let now = now_ns();
    let (status, body) = get_json(
        &query.url("/loki/api/v1/query_range"),
        &[
            ("query", r#"{namespace="ml"}"#),
            ("start", &(now - 3_600_000_000_000).to_string()),
            ("end", &(now + 60_000_000_000).to_string()),
            ("direction", "forward"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    common::stream_lines(&body).into_iter().map(|(_, line)| line).collect()
}

#[test]
fn query_replicas_read_what_the_indexer_mirrors() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  url: file://{}/weft\n  sync_interval: 200ms\n  grace_period: 1s\nindexer:\n  commit_interval: 200ms\nrules:\n  enabled: false\n",
            bucket.display()
        ),
    )
    .unwrap();
    let (indexer_data, query_data) = (dir.path().join("indexer"), dir.path().join("query"));
    let indexer = Weft::role("indexer", &indexer_data, &config);
    let query = Weft::role("query", &query_data, &config);

    push(&indexer, &["first line", "second line"]);
    let ms = now_ns() / 1_000_000;
    let request = WriteRequest {
        timeseries: vec![series(&[("__name__", "weft_train_loss"), ("run", "r1")], &[(ms, 2.5)])],
        metadata: vec![],
    };
    assert_eq!(send(&indexer.url("/api/v1/write"), &request), 204);

    wait_for("the query process sees both lines", Duration::from_secs(30), || {
        (lines(&query).len() == 2).then_some(())
    });
    assert_eq!(lines(&query), ["first line", "second line"]);
    let loss = wait_for("the sample is readable through the store", Duration::from_secs(30), || {
        let (_, body) = get_json(
            &query.url("/api/v1/query"),
            &[("query", "weft_train_loss"), ("time", &(ms as f64 / 1000.0).to_string())],
        );
        body["data"]["result"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| r[0]["value"][1].clone())
    });
    assert_eq!(loss, "2.5");
    assert!(bucket.join("weft/catalog.json").exists(), "the catalog is in the store");
    let metrics = client().get(query.url("/metrics")).send().unwrap().text().unwrap();
    let downloaded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_storage_downloaded_bytes_total "))
        .expect("download counter")
        .parse()
        .unwrap();
    assert!(downloaded > 0.0, "{metrics}");

    // The indexer's volume is lost: it restores from the store, so the
    // old lines stay and new ones join them.
    indexer.terminate();
    std::fs::remove_dir_all(&indexer_data).unwrap();
    let indexer = Weft::role("indexer", &indexer_data, &config);
    assert!(indexer_data.join("catalog.json").exists(), "restored before serving");
    push(&indexer, &["after the restore"]);
    wait_for("all three lines", Duration::from_secs(30), || {
        (lines(&query).len() == 3).then_some(())
    });
    assert_eq!(lines(&query), ["first line", "second line", "after the restore"]);
}

#[test]
fn a_bad_storage_url_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(&config, "storage:\n  url: ftp://bucket/x\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "indexer",
            "--data",
            dir.path().join("d").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage.url") && stderr.contains("not supported"), "{stderr}");
}

/// moto's S3 server (PyPI `moto[server]`, installed by
/// scripts/install-test-deps) on loopback, with a bucket.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/install-test-deps installs moto[server])");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for("the S3 server answers", Duration::from_secs(30), || {
            client()
                .put(format!("{endpoint}/{bucket}"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
        S3Server { child, endpoint }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn splits_travel_through_an_s3_api() {
    let s3 = S3Server::start("weft-test");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  url: s3://weft-test/cluster-a\n  endpoint: {}\n  region: us-east-1\n  allow_http: true\n  sync_interval: 200ms\nindexer:\n  commit_interval: 200ms\nrules:\n  enabled: false\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let envs = [("AWS_ACCESS_KEY_ID", "weft"), ("AWS_SECRET_ACCESS_KEY", "weft-secret")];
    let start = |name: &str, data: &std::path::Path| {
        let args = role_args(name, data, &config);
        Weft::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), &envs, false)
    };
    let indexer = start("indexer", &dir.path().join("indexer"));
    let query = start("query", &dir.path().join("query"));
    push(&indexer, &["over the S3 API"]);
    wait_for("the line arrives through S3", Duration::from_secs(30), || {
        (lines(&query) == ["over the S3 API"]).then_some(())
    });
    // The objects are where the layout says, under the prefix.
    let listing = client()
        .get(format!("{}/weft-test?list-type=2&prefix=cluster-a/", s3.endpoint))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(listing.contains("<Key>cluster-a/catalog.json</Key>"), "{listing}");
    assert!(
        listing.contains(".parquet</Key>") && listing.contains("cluster-a/splits/logs/tenant=default/"),
        "{listing}"
    );
}

fn bucket_files(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out
}

/// The splits of the catalog in the store (none before the first push).
fn store_splits(bucket: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read(bucket.join("catalog.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["splits"].as_array().cloned())
        .unwrap_or_default()
}

fn catalog_parquets(bucket: &std::path::Path) -> Vec<String> {
    store_splits(bucket)
        .iter()
        .map(|s| s["parquet"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn merged_splits_leave_the_store_and_a_missing_object_costs_one_split() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  url: file://{}\n  sync_interval: 200ms\n  grace_period: 1s\nindexer:\n  commit_interval: 200ms\n  merge_interval: 300ms\n  merge_min_splits: 3\n  grace_period: 1s\nrules:\n  enabled: false\n",
            bucket.display()
        ),
    )
    .unwrap();
    let indexer = Weft::role("indexer", &dir.path().join("indexer"), &config);
    // Three commits, so three splits of one hour: merged in the background
    // into one (a later single split stays alone: fewer than three).
    for n in 0..3 {
        push(&indexer, &[&format!("batch {n}")]);
        let before = catalog_count(&bucket);
        wait_for("a commit reaches the store", Duration::from_secs(30), || {
            (catalog_count(&bucket) > before || n > 0 && merged(&bucket)).then_some(())
        });
    }
    // After the merge and the grace period, the bucket holds exactly the
    // catalog's Parquet files.
    wait_for("dropped splits deleted from the store", Duration::from_secs(60), || {
        let mut listed: Vec<String> = bucket_files(&bucket.join("splits"), ".parquet")
            .iter()
            .map(|p| p.strip_prefix(&bucket).unwrap().to_string_lossy().into_owned())
            .collect();
        let mut named = catalog_parquets(&bucket);
        listed.sort();
        named.sort();
        (merged(&bucket) && listed == named).then_some(())
    });

    // A newer split whose Parquet object vanished: a new query replica
    // still serves everything else.
    push(&indexer, &["the lost line"]);
    wait_for("a split besides the merged one", Duration::from_secs(30), || {
        (catalog_count(&bucket) >= 2).then_some(())
    });
    let named = catalog_parquets(&bucket);
    let lost = named
        .iter()
        .find(|p| !is_merged_split(&bucket, p))
        .expect("an unmerged split")
        .clone();
    std::fs::remove_file(bucket.join(&lost)).unwrap();
    let query = Weft::role("query", &dir.path().join("query"), &config);
    let mut last = Vec::new();
    let served = (0..150).any(|_| {
        last = lines(&query);
        let done = last == ["batch 0", "batch 1", "batch 2"];
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(
        served,
        "served {last:?}; catalog {:?}",
        std::fs::read_to_string(bucket.join("catalog.json")).unwrap()
    );
    let metrics = client().get(query.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics.contains("weft_storage_errors_total{operation=\"missing_object\"}"),
        "{metrics}"
    );
}

fn catalog_count(bucket: &std::path::Path) -> usize {
    store_splits(bucket).len()
}

fn is_merged(split: &serde_json::Value) -> bool {
    split["merges"].as_u64().unwrap_or(0) > 0
}

fn is_merged_split(bucket: &std::path::Path, parquet: &str) -> bool {
    store_splits(bucket).iter().any(|s| s["parquet"] == parquet && is_merged(s))
}

fn merged(bucket: &std::path::Path) -> bool {
    store_splits(bucket).iter().any(is_merged)
}
