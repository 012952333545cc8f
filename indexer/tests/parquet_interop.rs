//! Splits are plain Parquet that other engines read: pyarrow (installed by
//! `scripts/install-test-deps`, or here if missing) reads a split back and
//! checks its rows, schema and sort order.

use std::collections::HashMap;
use std::process::Command;

use weft_indexer::{Indexer, IndexerConfig};
use weft_model::batch::{encode_ipc, META_SOURCES};
use weft_model::{LabelSet, Level, LogBatchBuilder, LogRecord};

fn python_with_pyarrow() -> &'static str {
    let has = |py: &str| Command::new(py).args(["-c", "import pyarrow"]).status().is_ok_and(|s| s.success());
    if !has("python3") {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "pyarrow>=15"])
            .status()
            .expect("python3 runs");
        assert!(installed.success(), "pyarrow could not be installed; run scripts/install-test-deps");
    }
    "python3"
}

#[test]
fn pyarrow_reads_a_split_back() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), IndexerConfig::default(), &prometheus::Registry::new()).unwrap();
    let mut builder = LogBatchBuilder::default();
    for i in 0..50u64 {
        let record = LogRecord {
            ts: 1_764_000_000_000_000_000 + (50 - i as i64) * 1_000,
            namespace: "ml".into(),
            pod: format!("train-{}", i % 2),
            container: "main".into(),
            node: "gpu-1".into(),
            stream: "stdout".into(),
            labels: LabelSet::from_pairs([("job", "trainer")]),
            restart: Some(0),
            level: if i % 10 == 0 { Level::Error } else { Level::Info },
            line: format!("step {i} loss 0.{i:02} ünïcode"),
            source: Some((0, 4 * (i + 1))),
            ..Default::default()
        };
        builder.append(&record.as_ref());
    }
    let meta = HashMap::from([(META_SOURCES.to_string(), "[\"src\"]".to_string())]);
    let body = encode_ipc(&[builder.finish(true)], meta).unwrap();
    indexer.ingest_arrow("default", "k", &body, "test").unwrap();
    indexer.commit().unwrap();
    let split = indexer.catalog().snapshot().splits.remove(0);
    let path = dir.path().join(&split.parquet);
    assert!(
        split.parquet.starts_with("splits/logs/tenant=default/date="),
        "hive-style path: {}",
        split.parquet
    );

    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert t.num_rows == 50, t.num_rows
names = t.schema.names
for column in ["ts", "ingest_ts", "namespace", "pod", "container", "node", "stream", "labels", "level", "line"]:
    assert column in names, (column, names)
assert "src" not in names and "src_offset" not in names
assert str(t.schema.field("ts").type) == "timestamp[ns, tz=UTC]", t.schema.field("ts").type
ts = t.column("ts").cast(pa.int64()).to_pylist()
rows = t.drop_columns(["ts", "ingest_ts"]).to_pylist()
keys = [(r["pod"], t) for r, t in zip(rows, ts)]
assert keys == sorted(keys), "sorted by stream then time"
assert sum(1 for r in rows if r["level"] == "error") == 5
assert all("ünïcode" in r["line"] for r in rows)
assert rows[0]["labels"] == '{"job":"trainer"}', rows[0]["labels"]
print("ok", t.num_rows)
"#;
    let output = Command::new(python_with_pyarrow())
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "pyarrow check failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 50");
}
