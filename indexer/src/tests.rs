//! Tests of the write path as a whole: ingest, deduplication, commit into
//! splits, replay after a crash, merges and retention.

use std::collections::HashMap;
use std::time::Duration;

use weft_model::batch::{encode_ipc, META_SOURCES};
use weft_model::{LogBatchBuilder, LogBatchView, LogRecord};

use crate::service::Indexer;
use crate::split;
use crate::IndexerConfig;

fn body(lines: &[(u32, u64, &str)], sources: &[&str]) -> Vec<u8> {
    let mut builder = LogBatchBuilder::default();
    for (src, position, line) in lines {
        let record = LogRecord {
            ts: 1_764_000_000_000_000_000 + *position as i64,
            namespace: "ml".into(),
            pod: format!("train-{src}"),
            container: "main".into(),
            stream: "stdout".into(),
            line: line.to_string(),
            source: Some((*src, *position)),
            ..Default::default()
        };
        builder.append(&record.as_ref());
    }
    let meta = HashMap::from([(META_SOURCES.to_string(), serde_json::to_string(sources).unwrap())]);
    encode_ipc(&[builder.finish(true)], meta).unwrap()
}

fn all_lines(indexer: &Indexer) -> Vec<String> {
    let mut lines = Vec::new();
    for split in indexer.catalog().snapshot().splits {
        if split.kind != crate::catalog::SplitKind::Logs {
            continue;
        }
        for batch in split::read_parquet(&indexer.data_dir().join(&split.parquet)).unwrap() {
            let view = LogBatchView::new(&batch).unwrap();
            lines.extend((0..view.len()).map(|r| view.line.value(r).to_string()));
        }
    }
    lines.sort();
    lines
}

fn config() -> IndexerConfig {
    IndexerConfig {
        merge_min_splits: 2,
        grace_period: Duration::from_secs(0),
        ..Default::default()
    }
}

#[test]
fn duplicates_by_key_and_by_position_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    let first = body(&[(0, 4, "a"), (0, 8, "b"), (1, 4, "x")], &["c/f0", "c/f1"]);
    assert_eq!(indexer.ingest_arrow("default", "k1", &first, "test").unwrap().accepted, 3);
    let repeat = indexer.ingest_arrow("default", "k1", &first, "test").unwrap();
    assert!(repeat.duplicate_batch);
    // After a collector restart the batch boundaries differ: overlap is cut.
    let overlap = body(&[(0, 8, "b"), (0, 12, "c"), (1, 4, "x"), (1, 8, "y")], &["c/f0", "c/f1"]);
    let outcome = indexer.ingest_arrow("default", "k2", &overlap, "test").unwrap();
    assert_eq!((outcome.accepted, outcome.duplicates), (2, 2));
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c", "x", "y"]);
}

#[test]
fn uncommitted_rows_survive_a_crash_and_watermarks_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
        indexer
            .ingest_arrow("default", "k1", &body(&[(0, 4, "a")], &["s"]), "test")
            .unwrap();
        indexer.commit().unwrap();
        indexer
            .ingest_arrow("default", "k2", &body(&[(0, 8, "b")], &["s"]), "test")
            .unwrap();
        // Dropped without commit: a crash.
    }
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    // The replayed watermark still drops a resend of "b".
    let again = indexer
        .ingest_arrow("default", "k3", &body(&[(0, 8, "b"), (0, 12, "c")], &["s"]), "test")
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (1, 1));
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c"]);
}

#[test]
fn acknowledged_rows_are_replayed_under_lowered_limits_and_a_record_replay_cannot_take_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
        let three = body(&[(0, 4, "a"), (0, 8, "b"), (0, 12, "c")], &["s"]);
        assert_eq!(indexer.ingest_arrow("default", "k1", &three, "test").unwrap().accepted, 3);
        // Dropped without commit: a crash.
    }
    // A record whose checksum holds but whose payload no format reads.
    let (mut wal, _) = crate::wal::WriteAheadLog::open(&dir.path().join("wal"), 1 << 20, 0, false).unwrap();
    let garbage = wal.append(b"\x07 not a weft record").unwrap();
    drop(wal);
    // Restarted with a lower request limit than the acknowledged batch had.
    let lowered = IndexerConfig {
        max_request_rows: 2,
        ..config()
    };
    let registry = prometheus::Registry::new();
    let indexer = Indexer::open(dir.path(), lowered, &registry).unwrap();
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c"]);
    let kept = dir.path().join("wal-rejected").join(format!("{garbage:020}.record"));
    assert_eq!(std::fs::read(&kept).unwrap(), b"\x07 not a weft record");
    let exposition = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(exposition.contains("weft_indexer_wal_unreplayable_total 1"), "{exposition}");
}

#[test]
fn a_lost_catalog_stops_the_start_and_deletes_no_split() {
    let dir = tempfile::tempdir().unwrap();
    drop(Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap());
    assert!(
        dir.path().join("catalog.json").exists(),
        "written at the first open, before any split"
    );
    {
        let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
        indexer
            .ingest_arrow("default", "k1", &body(&[(0, 4, "a")], &["s"]), "test")
            .unwrap();
        indexer.commit().unwrap();
    }
    let splits = |dir: &std::path::Path| walk(&dir.join("splits")).len();
    // A split written by a commit that crashed before publishing it is an
    // orphan: swept at the next start (the catalog is there from the first
    // open on).
    let orphan = dir.path().join("splits").join("default").join("orphan.parquet");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"PAR1").unwrap();
    drop(Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap());
    assert!(!orphan.exists(), "swept");
    let before = splits(dir.path());
    assert!(before > 0);
    std::fs::remove_file(dir.path().join("catalog.json")).unwrap();
    let err = Indexer::open(dir.path(), config(), &prometheus::Registry::new())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("catalog.json is missing but"), "{err}");
    assert_eq!(splits(dir.path()), before, "no split file deleted");
}

#[test]
fn a_failed_commit_keeps_its_rows_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let indexer = Indexer::open(dir.path(), config(), &registry).unwrap();
    indexer
        .ingest_arrow("default", "k1", &body(&[(0, 4, "a"), (0, 8, "b")], &["s"]), "test")
        .unwrap();
    // The split directory cannot be made: a file stands in its way.
    let splits = dir.path().join("splits");
    let _ = std::fs::remove_dir_all(&splits);
    std::fs::write(&splits, b"in the way").unwrap();
    let err = indexer.commit().unwrap_err();
    assert!(err.to_string().contains("splits"), "says where: {err}");
    // Rows that came meanwhile join those that wait.
    indexer
        .ingest_arrow("default", "k2", &body(&[(0, 12, "c")], &["s"]), "test")
        .unwrap();
    std::fs::remove_file(&splits).unwrap();
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c"]);
    assert_eq!(indexer.metrics.commit_errors.get(), 1);
    // And they were committed once: a restart replays nothing more.
    drop(indexer);
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c"]);
}

#[test]
fn a_commit_that_panics_keeps_its_rows_and_the_next_commit_works() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    indexer
        .ingest_arrow("default", "k1", &body(&[(0, 4, "a")], &["s"]), "test")
        .unwrap();
    indexer.panic_in_next_commit.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = indexer.commit().unwrap_err();
    assert!(err.to_string().contains("commit panicked: a fault injected by a test"), "{err}");
    // Had the rows gone with the panic, this commit would publish a WAL
    // position past them and delete their segment.
    indexer
        .ingest_arrow("default", "k2", &body(&[(0, 8, "b")], &["s"]), "test")
        .unwrap();
    indexer.commit().unwrap();
    assert_eq!(all_lines(&indexer), vec!["a", "b"]);
    assert_eq!(indexer.metrics.commit_errors.get(), 1);
}

#[test]
fn bad_bodies_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    let err = indexer.ingest_arrow("default", "", b"garbage", "test").unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("Arrow IPC"), "{err}");
    let good = body(&[(0, 4, "a")], &["s"]);
    let truncated = &good[..good.len() / 2];
    assert_eq!(indexer.ingest_arrow("default", "", truncated, "test").unwrap_err().status(), 400);
    let dangling = body(&[(3, 4, "a")], &["only-one"]);
    assert!(indexer
        .ingest_arrow("default", "", &dangling, "test")
        .unwrap_err()
        .to_string()
        .contains("source 3"));
    assert_eq!(indexer.ingest_arrow("../x", "", &good, "test").unwrap_err().status(), 400);
    // Nothing bad reached the WAL: a good batch still goes through.
    assert_eq!(indexer.ingest_arrow("default", "", &good, "test").unwrap().accepted, 1);
}

#[test]
fn over_long_lines_keep_their_head_instead_of_failing_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = IndexerConfig {
        max_line_bytes: 1024,
        ..config()
    };
    let indexer = Indexer::open(dir.path(), config, &prometheus::Registry::new()).unwrap();
    let long = "é".repeat(700);
    let outcome = indexer
        .ingest_arrow("default", "", &body(&[(0, 4, &long), (0, 8, "short")], &["s"]), "test")
        .unwrap();
    assert_eq!(outcome.accepted, 2);
    indexer.commit().unwrap();
    let lines = all_lines(&indexer);
    assert_eq!(lines.iter().map(|l| l.len()).collect::<Vec<_>>(), vec![5, 1024]);
    assert_eq!(indexer.metrics.truncated_lines.get(), 1);
}

#[test]
fn small_splits_merge_and_old_ones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    for (i, line) in ["a", "b", "c"].iter().enumerate() {
        indexer
            .ingest_arrow("default", "", &body(&[(0, 4 * (i as u64 + 1), line)], &["s"]), "test")
            .unwrap();
        indexer.commit().unwrap();
    }
    assert_eq!(indexer.catalog().snapshot().splits.len(), 3);
    assert!(indexer.merge_once().unwrap());
    let state = indexer.catalog().snapshot();
    assert_eq!(state.splits.len(), 1);
    assert_eq!(state.splits[0].merges, 1);
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c"]);
    // The replaced files go after the grace period (zero here).
    indexer.enforce_retention().unwrap();
    let parquet_files = walk(dir.path()).into_iter().filter(|p| p.ends_with(".parquet")).count();
    assert_eq!(parquet_files, 1);

    let short = IndexerConfig {
        retention: Duration::from_secs(60),
        ..config()
    };
    drop(indexer);
    let indexer = Indexer::open(dir.path(), short, &prometheus::Registry::new()).unwrap();
    indexer
        .catalog()
        .update(|s| {
            for split in &mut s.splits {
                split.max_ingest_ts = 0;
            }
        })
        .unwrap();
    indexer.enforce_retention().unwrap();
    assert!(indexer.catalog().snapshot().splits.is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.to_string_lossy().into_owned());
        if path.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

#[test]
fn positions_need_not_rise_within_a_batch() {
    // A joined traceback carries its last line's position (20) and comes
    // after a line of the other stream at 16: both are new.
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    let first = body(
        &[(0, 4, "a"), (0, 16, "other stream"), (0, 20, "traceback"), (0, 12, "late")],
        &["c/f0"],
    );
    assert_eq!(indexer.ingest_arrow("default", "k1", &first, "test").unwrap().accepted, 4);
    // The watermark is the highest position: a resend is dropped whole.
    let again = body(&[(0, 12, "late"), (0, 20, "traceback"), (0, 24, "new")], &["c/f0"]);
    let outcome = indexer.ingest_arrow("default", "k2", &again, "test").unwrap();
    assert_eq!((outcome.accepted, outcome.duplicates), (1, 2));
}

#[test]
fn a_metrics_request_spread_over_too_many_hours_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    let mut builder = weft_model::metric::MetricBatchBuilder::new();
    for hour in 0..200i64 {
        builder.append(r#"{__name__="up"}"#, 1_764_000_000_000 + hour * 3_600_000, 1.0);
    }
    let body = encode_ipc(&[builder.finish()], HashMap::new()).unwrap();
    let err = indexer.ingest_metrics("default", &body, "test").unwrap_err().to_string();
    assert!(err.contains("more than 168 distinct hours"), "{err}");
}

#[test]
fn a_backlog_commits_oldest_first_in_bounded_chunks_and_survives_a_crash_between_them() {
    let dir = tempfile::tempdir().unwrap();
    // One batch per chunk.
    let small = || IndexerConfig {
        commit_bytes: 1,
        ..config()
    };
    {
        let indexer = Indexer::open(dir.path(), small(), &prometheus::Registry::new()).unwrap();
        for (key, position, line) in [("k1", 4, "a"), ("k2", 8, "b"), ("k3", 12, "c")] {
            indexer
                .ingest_arrow("default", key, &body(&[(0, position, line)], &["s"]), "test")
                .unwrap();
        }
        assert_eq!(indexer.commit_oldest().unwrap(), (1, 1), "one split, WAL record 1 covered");
        assert_eq!(all_lines(&indexer), vec!["a"]);
        assert_eq!(indexer.catalog().snapshot().wal_seq, 1, "only the first record is covered");
        // Dropped with "b" and "c" only in the WAL: a crash between chunks.
    }
    let indexer = Indexer::open(dir.path(), small(), &prometheus::Registry::new()).unwrap();
    let mut builder = weft_model::metric::MetricBatchBuilder::new();
    builder.append(r#"{__name__="up"}"#, 1_764_000_000_000, 1.0);
    let metrics = encode_ipc(&[builder.finish()], HashMap::new()).unwrap();
    indexer.ingest_metrics("default", &metrics, "test").unwrap();
    indexer
        .ingest_arrow("default", "k4", &body(&[(0, 16, "d")], &["s"]), "test")
        .unwrap();
    // One call commits everything pending, chunk by chunk: b, c, the
    // samples and d each in their own split.
    assert_eq!(indexer.commit().unwrap(), 4);
    assert_eq!(all_lines(&indexer), vec!["a", "b", "c", "d"]);
    let catalog = indexer.catalog().snapshot();
    assert_eq!(catalog.splits.len(), 5);
    assert_eq!(catalog.wal_seq, 5);
}

#[test]
fn a_split_index_keeps_no_document_store_and_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
    let lines: Vec<String> = (0..20_000)
        // (A word in fewer than one line in 32: a tantivy term, not a
        // block word.)
        .map(|i| format!("step {i} {}", if i % 97 == 0 { "rare" } else { "other" }))
        .collect();
    let rows: Vec<(u32, u64, &str)> = lines.iter().enumerate().map(|(i, l)| (0, 4 * (i as u64 + 1), l.as_str())).collect();
    indexer.ingest_arrow("default", "k", &body(&rows, &["s"]), "test").unwrap();
    indexer.commit().unwrap();
    let splits = indexer.catalog().snapshot().splits;
    assert_eq!(splits.len(), 1);
    let index_dir = indexer.data_dir().join(&splits[0].index);
    let stores: Vec<String> = walk(&index_dir).into_iter().filter(|p| p.ends_with(".store")).collect();
    assert_eq!(stores.len(), 1);
    // tantivy's store held about 2 bytes a row (40 kB here).
    let store_bytes = std::fs::metadata(&stores[0]).unwrap().len();
    assert!(store_bytes < 200, "store of {store_bytes} bytes");

    let index = split::index::open_index(&index_dir).unwrap();
    let searcher = index.reader().unwrap().searcher();
    assert_eq!(searcher.num_docs(), 20_000);
    let fields = split::index::fields_of(&index.schema()).unwrap();
    let rare = tantivy::query::TermQuery::new(
        tantivy::Term::from_field_text(fields.line, "rare"),
        tantivy::schema::IndexRecordOption::Basic,
    );
    assert_eq!(
        searcher.search(&rare, &tantivy::collector::Count).unwrap(),
        20_000_usize.div_ceil(97)
    );
    // The emptied store is still a valid one, and checksums hold.
    let store = searcher.segment_reader(0).get_store_reader(0).unwrap();
    assert_eq!(store.iter::<tantivy::TantivyDocument>(None).count(), 0);
    assert!(index.validate_checksum().unwrap().is_empty());
}

/// One step of the write path's model test.
#[derive(Clone, Debug)]
enum WriteOp {
    /// A batch of (source, step) rows, distinct within the batch, in the
    /// order given (positions need not rise within a batch). The steps are
    /// counted from a base that moves on five steps a batch, so a batch
    /// holds new rows and some an earlier batch had.
    Ingest(Vec<(u32, u64)>),
    /// An earlier ingest (by its index, modulo how many there were) sent
    /// again with its key: a collector retrying.
    Resend(usize),
    Commit,
    CommitOldest,
    Merge,
    /// Dropped without a commit and opened again.
    Crash,
}

fn write_op() -> impl proptest::strategy::Strategy<Value = WriteOp> {
    use proptest::prelude::*;
    let rows = proptest::collection::btree_set((0u32..3, 1u64..24), 1..8)
        .prop_flat_map(|set| Just(set.into_iter().collect::<Vec<_>>()).prop_shuffle());
    prop_oneof![
        6 => rows.prop_map(WriteOp::Ingest),
        2 => any::<usize>().prop_map(WriteOp::Resend),
        2 => Just(WriteOp::Commit),
        1 => Just(WriteOp::CommitOldest),
        1 => Just(WriteOp::Merge),
        2 => Just(WriteOp::Crash),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Whatever the order of ingests, resends, commits (whole or a chunk
    /// at a time), merges and crashes, the splits end up holding each row
    /// that was new when it came (above its source's highest position so
    /// far) exactly once.
    #[test]
    fn every_new_row_is_stored_exactly_once(
        ops in proptest::collection::vec(write_op(), 1..24),
        commit_bytes in proptest::prop_oneof![proptest::strategy::Just(1u64), proptest::strategy::Just(64 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = || IndexerConfig { commit_bytes, ..config() };
        let open = || Indexer::open(dir.path(), config(), &prometheus::Registry::new()).unwrap();
        let sources = ["s0", "s1", "s2"];
        let text = |src: u32, position: u64| format!("s{src}p{position}");
        let mut indexer = open();
        let mut sent: Vec<(String, Vec<u8>)> = Vec::new();
        let mut highest: HashMap<u32, u64> = HashMap::new();
        let mut expected: Vec<String> = Vec::new();
        let mut base = 0;
        // Batches sent since the last crash: their keys are remembered.
        let mut remembered = 0..0;
        for op in &ops {
            match op {
                WriteOp::Ingest(steps) => {
                    let rows: Vec<(u32, u64)> = steps.iter().map(|&(s, step)| (s, (base + step) * 4)).collect();
                    base += 5;
                    let texts: Vec<String> = rows.iter().map(|&(s, p)| text(s, p)).collect();
                    let lines: Vec<(u32, u64, &str)> = rows.iter().zip(&texts).map(|(&(s, p), t)| (s, p, t.as_str())).collect();
                    let key = format!("k{}", sent.len());
                    let body = body(&lines, &sources);
                    indexer.ingest_arrow("default", &key, &body, "test").unwrap();
                    let before = highest.clone();
                    for &(s, p) in &rows {
                        if p > before.get(&s).copied().unwrap_or(0) {
                            expected.push(text(s, p));
                            let top = highest.entry(s).or_insert(0);
                            *top = (*top).max(p);
                        }
                    }
                    sent.push((key, body));
                    remembered.end = sent.len();
                }
                WriteOp::Resend(which) => {
                    if !sent.is_empty() {
                        let which = which % sent.len();
                        let (key, body) = &sent[which];
                        let outcome = indexer.ingest_arrow("default", key, body, "test").unwrap();
                        proptest::prop_assert_eq!(outcome.accepted, 0, "a resend adds nothing");
                        if remembered.contains(&which) {
                            proptest::prop_assert!(outcome.duplicate_batch, "known by its key");
                        }
                    }
                }
                WriteOp::Commit => {
                    indexer.commit().unwrap();
                }
                WriteOp::CommitOldest => {
                    indexer.commit_oldest().unwrap();
                }
                WriteOp::Merge => {
                    indexer.merge_once().unwrap();
                }
                WriteOp::Crash => {
                    drop(indexer);
                    indexer = open();
                    remembered = sent.len()..sent.len();
                }
            }
        }
        indexer.commit().unwrap();
        expected.sort();
        proptest::prop_assert_eq!(all_lines(&indexer), expected.clone());
        // Nothing is replayed twice after the last commit.
        drop(indexer);
        let indexer = open();
        indexer.commit().unwrap();
        proptest::prop_assert_eq!(all_lines(&indexer), expected);
    }
}
