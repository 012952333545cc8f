//! LogQL semantics over real splits: data goes through the indexer (WAL,
//! Parquet, tantivy), queries through the engine, and the answers are
//! checked exactly.

use std::sync::Arc;

use weft_indexer::{Indexer, IndexerConfig};
use weft_model::batch::encode_ipc;
use weft_model::{LabelSet, LogBatchBuilder, LogRecord};

use super::eval::{Engine, QueryLimits, QueryResult};
use super::parser::parse;
use crate::storage::SplitStore;
use crate::QueryError;

const BASE: i64 = 1_764_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn record(pod: &str, second: i64, line: &str) -> LogRecord {
    LogRecord {
        ts: BASE + second * SEC,
        namespace: "ml".into(),
        pod: pod.into(),
        container: "main".into(),
        stream: "stdout".into(),
        line: line.into(),
        level: weft_model::level::detect_level(line.as_bytes()),
        ..Default::default()
    }
}

/// Writes each group of records as its own commit (its own split).
fn engine_with(commits: &[Vec<LogRecord>]) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let indexer = Indexer::open(dir.path(), IndexerConfig::default(), &prometheus::Registry::new()).unwrap();
    for records in commits {
        let mut builder = LogBatchBuilder::default();
        for r in records {
            builder.append(&r.as_ref());
        }
        let body = encode_ipc(&[builder.finish(true)], Default::default()).unwrap();
        indexer.ingest_arrow("default", "", &body, "test").unwrap();
        indexer.commit().unwrap();
    }
    let engine = Engine::new(Arc::new(SplitStore::new(dir.path())), QueryLimits::default());
    (dir, engine)
}

fn sample_data() -> Vec<Vec<LogRecord>> {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for s in 0..60 {
        let a = if s % 10 == 0 {
            format!(r#"{{"status":503,"msg":"error step {s}"}}"#)
        } else {
            format!(r#"{{"status":200,"msg":"ok step {s}"}}"#)
        };
        first.push(record("a", s, &a));
        second.push(record("b", s, &format!("level=info step={s} loss=0.{s:02}")));
    }
    // A third split overlapping the others in time.
    let third = vec![record("a", 30, "ERROR CUDA out of memory"), record("b", 61, "not json at all")];
    vec![first, second, third]
}

fn lines(result: &[super::eval::StreamResult]) -> Vec<(i64, String)> {
    let mut all: Vec<(i64, String)> = result.iter().flat_map(|s| s.entries.clone()).collect();
    all.sort();
    all
}

fn log(engine: &Engine, q: &str, limit: usize, backward: bool) -> Vec<super::eval::StreamResult> {
    match parse(q).unwrap() {
        super::ast::Expr::Log(log) => engine.logs("default", &log, BASE, BASE + 3600 * SEC, limit, backward).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn instant(engine: &Engine, q: &str, at: i64) -> Result<QueryResult, QueryError> {
    engine.instant("default", &parse(q).unwrap(), BASE + at * SEC)
}

fn vector(result: QueryResult) -> Vec<(LabelSet, f64)> {
    match result {
        QueryResult::Vector(samples) => samples.into_iter().map(|s| (s.labels, s.value)).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn selectors_filters_and_limits() {
    let (_dir, engine) = engine_with(&sample_data());
    let result = log(&engine, r#"{pod="a"} |= "error""#, 100, true);
    assert_eq!(lines(&result).len(), 6);
    let oom = log(&engine, r#"{namespace="ml"} |= "out of memory""#, 100, true);
    assert_eq!(lines(&oom), vec![(BASE + 30 * SEC, "ERROR CUDA out of memory".to_string())]);
    // Substrings inside tokens still match (the index only narrows rows).
    assert_eq!(lines(&log(&engine, r#"{pod="a"} |= "RROR CUD""#, 100, true)).len(), 1);
    // Newest first, across three overlapping splits, limited.
    let newest = log(&engine, r#"{namespace="ml"}"#, 5, true);
    let mut got: Vec<i64> = newest.iter().flat_map(|s| s.entries.iter().map(|e| e.0)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![BASE + 58 * SEC, BASE + 58 * SEC, BASE + 59 * SEC, BASE + 59 * SEC, BASE + 61 * SEC]
    );
    for stream in &newest {
        assert!(
            stream.entries.windows(2).all(|w| w[0].0 >= w[1].0),
            "backward order within a stream"
        );
    }
    let oldest = log(&engine, r#"{pod=~"a|b"} != "step 0""#, 3, false);
    let got: Vec<i64> = lines(&oldest).iter().map(|e| e.0).collect();
    assert_eq!(got, vec![BASE, BASE + SEC, BASE + SEC]);
    assert!(log(&engine, r#"{pod="nope"}"#, 10, true).is_empty());
}

/// Regression: words of 40+ characters (tantivy's default limit) used to
/// vanish from the index, so `|=` missed substrings inside them.
#[test]
fn substrings_inside_very_long_words_are_found() {
    let word45 = format!("ConnectionErrorWhileFetching{}", "X".repeat(17));
    let word300 = format!("{}Error{}", "a".repeat(150), "b".repeat(145));
    let (_dir, engine) = engine_with(&[vec![
        record("d", 1, &format!("failed: {word45}")),
        record("d", 2, &word300),
        record("d", 3, "fine"),
    ]]);
    assert_eq!(lines(&log(&engine, r#"{pod="d"} |= "Error""#, 10, true)).len(), 2);
    assert_eq!(lines(&log(&engine, &format!(r#"{{pod="d"}} |= "{word45}""#), 10, true)).len(), 1);
    assert_eq!(lines(&log(&engine, &format!(r#"{{pod="d"}} |= " {word45}""#), 10, true)).len(), 1);
}

#[test]
fn paging_through_many_equal_timestamps_loses_nothing() {
    let same: Vec<LogRecord> = (0..300).map(|i| record("c", 5, &format!("same-ts {i}"))).collect();
    let (_dir, engine) = engine_with(&[same[..150].to_vec(), same[150..].to_vec()]);
    let result = log(&engine, r#"{pod="c"}"#, 300, true);
    let mut got: Vec<String> = lines(&result).into_iter().map(|e| e.1).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 300);
}

#[test]
fn parsers_and_label_filters() {
    let (_dir, engine) = engine_with(&sample_data());
    let result = log(&engine, r#"{pod="a"} | json | status >= 500"#, 100, true);
    assert_eq!(lines(&result).len(), 6);
    assert!(result.iter().all(|s| s.labels.get("status") == Some("503")));
    let result = log(&engine, r#"{pod="b"} | logfmt | loss >= 0.5 and step < 55"#, 100, true);
    assert_eq!(lines(&result).len(), 5, "steps 50..54");
    let errors = log(&engine, r#"{pod="b"} | json | __error__="JSONParserErr""#, 100, true);
    assert_eq!(lines(&errors).len(), 61);
    assert!(errors.iter().all(|s| s.labels.get("__error__") == Some("JSONParserErr")));
    let formatted = log(
        &engine,
        r#"{pod="a"} | json | status=503 | line_format "{{.pod}} failed: {{.msg}}""#,
        1,
        true,
    );
    assert_eq!(lines(&formatted)[0].1, "a failed: error step 50");
}

#[test]
fn range_aggregations_count_exactly() {
    let (_dir, engine) = engine_with(&sample_data());
    // (0, 60] window at t=60: pod a has seconds 1..59 + the OOM line = 60, b has 1..59.
    let counts = vector(instant(&engine, r#"sum by (pod) (count_over_time({namespace="ml"}[60s]))"#, 60).unwrap());
    assert_eq!(
        counts,
        vec![
            (LabelSet::from_pairs([("pod", "a")]), 60.0),
            (LabelSet::from_pairs([("pod", "b")]), 59.0)
        ]
    );
    // The pipeline path (Parquet) and the index-only path agree.
    let slow = vector(instant(&engine, r#"sum by (pod) (count_over_time({namespace="ml"} |= "" [60s]))"#, 60).unwrap());
    assert_eq!(slow, counts);
    let rate = vector(instant(&engine, r#"sum(rate({pod="b"}[10s]))"#, 20).unwrap());
    assert_eq!(rate, vec![(LabelSet::new(), 1.0)]);
    let bytes = vector(instant(&engine, r#"sum(bytes_over_time({pod="b"}[1s]))"#, 10).unwrap());
    assert_eq!(bytes[0].1, "level=info step=10 loss=0.10".len() as f64);
    let top = vector(instant(&engine, r#"topk(1, sum by (pod) (count_over_time({namespace="ml"}[60s])))"#, 60).unwrap());
    assert_eq!(top, vec![(LabelSet::from_pairs([("pod", "a")]), 60.0)]);
    let by_level = vector(instant(&engine, r#"sum by (detected_level) (count_over_time({pod="a"}[1h]))"#, 61).unwrap());
    assert_eq!(
        by_level,
        vec![
            (LabelSet::from_pairs([("detected_level", "error")]), 1.0),
            (LabelSet::from_pairs([("detected_level", "unknown")]), 60.0)
        ]
    );
}

#[test]
fn range_queries_step_over_windows() {
    let (_dir, engine) = engine_with(&sample_data());
    let expr = parse(r#"count_over_time({pod="b"} |= "step" [10s])"#).unwrap();
    let QueryResult::Matrix(series) = engine.range("default", &expr, BASE + 10 * SEC, BASE + 70 * SEC, 20 * SEC).unwrap() else {
        panic!()
    };
    assert_eq!(series.len(), 1);
    let points: Vec<(i64, f64)> = series[0].points.iter().map(|(t, v)| ((t - BASE) / SEC, *v)).collect();
    assert_eq!(
        points,
        vec![(10, 10.0), (30, 10.0), (50, 10.0)],
        "windows (0,10], (20,30], (40,50]; none at 70"
    );
}

#[test]
fn unwrap_and_arithmetic() {
    let (_dir, engine) = engine_with(&sample_data());
    let avg = vector(instant(&engine, r#"avg_over_time({pod="b"} | logfmt | unwrap loss [10s]) by (pod)"#, 10).unwrap());
    assert_eq!(avg.len(), 1);
    assert!((avg[0].1 - 0.055).abs() < 1e-9, "{avg:?}");
    let two = vector(instant(&engine, "vector(1)+vector(1)", 4).unwrap());
    assert_eq!(two, vec![(LabelSet::new(), 2.0)]);
    let scaled = vector(instant(&engine, r#"sum(count_over_time({pod="b"}[10s])) * 2 + 1"#, 10).unwrap());
    assert_eq!(scaled[0].1, 21.0);
    assert_eq!(instant(&engine, "2 * 3 ^ 2", 0).unwrap(), QueryResult::Scalar(BASE, 18.0));
    let compared = vector(instant(&engine, r#"sum by (pod) (count_over_time({namespace="ml"}[60s])) > 59"#, 60).unwrap());
    assert_eq!(compared.len(), 1);
    let boolean = vector(instant(&engine, r#"sum by (pod) (count_over_time({namespace="ml"}[60s])) > bool 59"#, 60).unwrap());
    assert_eq!(boolean.iter().map(|s| s.1).collect::<Vec<_>>(), vec![1.0, 0.0]);
}

#[test]
fn pipeline_errors_fail_metric_queries_unless_filtered() {
    let (_dir, engine) = engine_with(&sample_data());
    let err = instant(&engine, r#"sum(count_over_time({pod="b"} | json [1h]))"#, 62).unwrap_err();
    assert!(
        matches!(err, QueryError::Execution(_)) && err.to_string().contains("JSONParserErr"),
        "{err}"
    );
    let ok = vector(instant(&engine, r#"sum(count_over_time({pod="b"} | json | __error__="" [1h]))"#, 62).unwrap());
    assert!(ok.is_empty());
    let dropped = vector(instant(&engine, r#"sum(count_over_time({pod="b"} | json | drop __error__ [1h]))"#, 62).unwrap());
    assert_eq!(dropped[0].1, 61.0);
}

#[test]
fn search_phrases_are_exact_without_positions_in_the_index() {
    // The one real phrase is the oldest line; 300 newer lines have the same
    // words out of order, so the search needs several candidate rounds.
    let mut records = vec![record("a", 0, "CUDA error: out of memory on device 3")];
    for s in 1..=300 {
        records.push(record("a", s, &format!("memory {s} out of reach")));
    }
    let (_dir, engine) = engine_with(&[records]);
    let search = |query: &str, limit: usize| {
        crate::search::search(
            engine.store(),
            "default",
            &crate::search::SearchRequest {
                query: query.into(),
                start: BASE - SEC,
                end: BASE + 400 * SEC,
                limit,
                skip_at_end: 0,
            },
        )
        .unwrap()
    };
    let page = search(r#""out of memory""#, 1);
    assert_eq!(page.hits.len(), 1);
    assert_eq!(page.hits[0].line, "CUDA error: out of memory on device 3");
    assert_eq!(page.next_cursor, None, "no second hit");
    // Plain words still match every line that has them, newest first.
    let page = search("memory reach", 5);
    assert_eq!(page.hits.len(), 5);
    assert_eq!(page.hits[0].line, "memory 300 out of reach");
    assert!(page.next_cursor.is_some());
    // The phrase combined with an exclusion.
    assert!(search(r#""out of memory" -cuda"#, 10).hits.is_empty());
    // A negated phrase excludes only lines with the phrase, not every line
    // holding its words (the index alone cannot tell them apart).
    let page = search(r#"memory -"out of memory""#, 1000);
    assert_eq!(page.hits.len(), 300);
    assert!(page.hits.iter().all(|h| h.line.ends_with("out of reach")));
    let page = search(r#"cuda OR -"out of memory""#, 1000);
    assert_eq!(page.hits.len(), 301, "either branch: the CUDA line and every decoy");
    // Text with no word in it is refused, not matched against everything.
    let no_words = crate::search::search(
        engine.store(),
        "default",
        &crate::search::SearchRequest {
            query: r#""!!""#.into(),
            start: BASE - SEC,
            end: BASE + 400 * SEC,
            limit: 10,
            skip_at_end: 0,
        },
    );
    assert!(
        matches!(&no_words, Err(QueryError::BadRequest(m)) if m.contains("no word")),
        "{no_words:?}"
    );
    let far_cursor = crate::search::search(
        engine.store(),
        "default",
        &crate::search::SearchRequest {
            query: "memory".into(),
            start: BASE - SEC,
            end: BASE + 400 * SEC,
            limit: 10,
            skip_at_end: usize::MAX,
        },
    );
    assert!(matches!(far_cursor, Err(QueryError::BadRequest(_))));
}

#[test]
fn whole_split_windows_count_from_the_catalog_like_the_index_and_parquet() {
    let mut commits = sample_data();
    let mut oom = record("c", 30, "torch.cuda.OutOfMemoryError: CUDA out of memory");
    oom.ml_event = Some("cuda_oom".into());
    commits.push(vec![oom, record("c", 31, "ERROR rank 0 exiting")]);
    let (dir, engine) = engine_with(&commits);
    let catalog = weft_indexer::catalog::Catalog::read(&dir.path().join("catalog.json")).unwrap();
    assert_eq!(catalog.splits.len(), commits.len());
    assert!(
        catalog
            .splits
            .iter()
            .all(|s| s.groups.iter().map(|g| g.rows).sum::<u64>() == s.rows),
        "every logs split records its row groups"
    );
    for q in [
        r#"sum by (pod, detected_level, ml_event) (count_over_time({namespace="ml"}[1h]))"#,
        r#"sum by (pod) (bytes_over_time({namespace="ml"}[1h]))"#,
        r#"count_over_time({pod=~"a|c"}[1h])"#,
    ] {
        // At t=61 the 1h window holds every split (catalog counts); `|= ""`
        // forces the Parquet path; at t=45 the window cuts the splits (index).
        let whole = vector(instant(&engine, q, 61).unwrap());
        let slow = vector(instant(&engine, &q.replace("}[1h]", r#"} |= "" [1h]"#), 61).unwrap());
        assert_eq!(whole, slow, "{q}");
        assert!(!whole.is_empty(), "{q}");
    }
    let counts = vector(instant(&engine, r#"sum by (ml_event) (count_over_time({pod="c"}[1h]))"#, 61).unwrap());
    assert_eq!(
        counts,
        vec![(LabelSet::new(), 1.0), (LabelSet::from_pairs([("ml_event", "cuda_oom")]), 1.0)]
    );
    // A window that cuts the splits still counts only its rows.
    let cut = vector(instant(&engine, r#"sum(count_over_time({pod="b"}[10s]))"#, 45).unwrap());
    assert_eq!(cut, vec![(LabelSet::new(), 10.0)]);
}

#[test]
fn numbers_are_found_through_their_blocks_and_checked_on_the_line() {
    use weft_indexer::split::numbers::{BLOCK_ROWS, FILE_NAME};
    // Three blocks of one stream; 4242 in one line of the second block,
    // 424242 in another line of the same block.
    let rows = 3 * BLOCK_ROWS as i64;
    let hit = BLOCK_ROWS as i64 + 300;
    let records: Vec<LogRecord> = (0..rows)
        .map(|s| match s {
            h if h == hit => record("a", s, "request 4242 failed after 3 retries"),
            h if h == hit + 1 => record("a", s, "request 424242 ok"),
            h if h == hit + 200 => record("a", s, "trace 9F86D081884C7D65 done"),
            _ => record("a", s, &format!("step {} of 9999999", s + 100_000)),
        })
        .collect();
    let (dir, engine) = engine_with(&[records]);
    let split = engine.store().splits("default", BASE - SEC, BASE + rows * SEC).unwrap().remove(0);
    let index_dir = dir.path().join(&split.meta.index);
    assert!(index_dir.join(FILE_NAME).exists(), "the split has a number index");
    // Numbers are not tantivy terms any more; words are.
    let searcher = weft_indexer::split::index::open_index(&index_dir)
        .unwrap()
        .reader()
        .unwrap()
        .searcher();
    let doc_freq = |word: &str| searcher.doc_freq(&tantivy::Term::from_field_text(split.fields.line, word)).unwrap();
    assert_eq!((doc_freq("4242"), doc_freq("9f86d081884c7d65"), doc_freq("request")), (0, 0, 2));
    let search = |query: &str| search_lines(&engine, query, BASE + rows * SEC);
    // Exactly the line, not its block's neighbours.
    assert_eq!(search("4242"), ["request 4242 failed after 3 retries"]);
    assert_eq!(search("request -4242"), ["request 424242 ok"]);
    assert_eq!(search("100501").len(), 1);
    assert!(search("4243").is_empty());
    assert_eq!(search("9f86d081884c7d65"), ["trace 9F86D081884C7D65 done"]);
    // Label filters (their names are gathered only for `name:value` words).
    assert_eq!(search("pod:a 4242"), ["request 4242 failed after 3 retries"]);
    assert!(search("pod:b 4242").is_empty());
    // A digit prefix matches numbers (and mixed tokens) by the check.
    assert_eq!(search(r#""42424"*"#), ["request 424242 ok"]);
    assert_eq!(search(r#""request 42"*"#).len(), 2);
    // LogQL: a whole number uses the blocks; a cut-off one (`424` may be
    // the start of a longer number) is checked on every line.
    let found = |q: &str| lines(&log(&engine, q, 1000, true)).into_iter().map(|(_, l)| l).collect::<Vec<_>>();
    assert_eq!(found(r#"{pod="a"} |= " 4242 ""#), ["request 4242 failed after 3 retries"]);
    // 4242, 424242 and the steps 100424, 101424 and 102424.
    assert_eq!(found(r#"{pod="a"} |= "424""#).len(), 5);
    let steps = vector(instant(&engine, r#"count_over_time({pod="a"} |= "of 9999999" [1h])"#, rows).unwrap());
    assert_eq!(steps.iter().map(|(_, v)| *v).sum::<f64>(), (rows - 3) as f64);
    // A piece of a hex id (no prefilter) and a word (tantivy's term).
    assert_eq!(found(r#"{pod="a"} |= "D081884""#), ["trace 9F86D081884C7D65 done"]);
    assert_eq!(found(r#"{pod="a"} |= "trac""#), ["trace 9F86D081884C7D65 done"]);
    let count = vector(instant(&engine, r#"count_over_time({pod="a"} |= "t 4242 f" [1h])"#, rows).unwrap());
    assert_eq!(count.iter().map(|(_, v)| *v).sum::<f64>(), 1.0);
    // The catalog says the split has a number index: without the file the
    // split is refused, not read as one that keeps numbers in tantivy.
    std::fs::remove_file(index_dir.join(FILE_NAME)).unwrap();
    let err = SplitStore::new(dir.path())
        .splits("default", BASE - SEC, BASE + rows * SEC)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(FILE_NAME), "{err}");
}

#[test]
fn words_in_many_lines_are_found_through_their_blocks_and_checked_on_the_line() {
    use weft_indexer::split::numbers::BLOCK_ROWS;
    // Ten blocks of one stream, four rows a second. `info`, `worker`,
    // `step`, `loss`, `rank`, `ready` and `kelvin` are in many lines
    // (block words); `readyz` and `checkpoint` in few (tantivy's terms).
    let rows = 10 * BLOCK_ROWS as i64;
    let line_of = |s: i64| match s {
        3000 | 9000 => format!("checkpoint saved at step {s}"),
        5000 => "\u{212A}elvin probe at 5000".to_string(),
        s if s % 1000 == 7 => "WARN slow readyz probe".to_string(),
        s => {
            let mut line = format!("INFO worker step {s} loss 0.{:02}", s % 97);
            if s % 4 == 0 {
                line.push_str(" rank ready");
            }
            if s % 16 == 0 {
                line.push_str(" kelvin");
            }
            line
        }
    };
    let all: Vec<String> = (0..rows).map(line_of).collect();
    let records: Vec<LogRecord> = all.iter().enumerate().map(|(s, line)| record("a", s as i64 / 4, line)).collect();
    let (dir, engine) = engine_with(&[records]);
    let end = BASE + rows * SEC;
    let split = engine.store().splits("default", BASE - SEC, end).unwrap().remove(0);
    let searcher = weft_indexer::split::index::open_index(&dir.path().join(&split.meta.index))
        .unwrap()
        .reader()
        .unwrap()
        .searcher();
    let doc_freq = |word: &str| searcher.doc_freq(&tantivy::Term::from_field_text(split.fields.line, word)).unwrap();
    for word in ["info", "worker", "ready", "kelvin"] {
        assert_eq!(doc_freq(word), 0, "{word} is a block word");
        assert!(!split.word_is_exact(word, false), "{word}");
    }
    assert_eq!((doc_freq("readyz"), doc_freq("checkpoint")), (11, 2));
    assert!(split.word_is_exact("checkpoint", false) && !split.word_is_exact("read", true));
    // Searches give exactly the lines whose words match.
    let has = |line: &str, word: &str| weft_indexer::split::index::line_tokens(line).any(|t| t == word);
    let sorted = |mut lines: Vec<String>| {
        lines.sort();
        lines
    };
    let expect = |pred: &dyn Fn(&str) -> bool| sorted(all.iter().filter(|l| pred(l)).cloned().collect());
    let search = |query: &str| sorted(search_lines(&engine, query, end));
    assert_eq!(search("kelvin"), expect(&|l| has(l, "kelvin")));
    assert_eq!(search("kelvin").len(), 641, "the Kelvin sign lowercases to k");
    assert_eq!(search("checkpoint"), expect(&|l| has(l, "checkpoint")));
    assert_eq!(search("readyz"), expect(&|l| has(l, "readyz")));
    assert_eq!(search(r#""rank ready" kelvin"#), expect(&|l| l.contains("rank ready kelvin")));
    assert_eq!(search("kelvin -ready"), ["\u{212A}elvin probe at 5000"]);
    assert_eq!(search("-info").len(), 14);
    assert_eq!(search("-info"), expect(&|l| !has(l, "info")));
    assert_eq!(search(r#"probe "ready"*"#), expect(&|l| l.contains("readyz probe")));
    assert_eq!(search(r#""kelv"* -rank"#), expect(&|l| l.contains("elvin probe")));
    // LogQL line filters: whole words, prefixes, suffixes and inner
    // pieces of block words and terms alike, counted against the lines.
    for filter in [
        "ready", " ready", "eady ", "rank r", "ready ", "readyz", "INFO w", "info", "kelvin", "elvi", "ker st",
    ] {
        let q = format!(r#"count_over_time({{pod="a"}} |= "{filter}" [1h])"#);
        let count = vector(instant(&engine, &q, rows / 4).unwrap()).iter().map(|(_, v)| *v).sum::<f64>();
        let expected = all.iter().filter(|l| l.contains(filter)).count();
        assert_eq!(count, expected as f64, "{filter:?}");
    }
}

#[test]
fn top_rows_are_the_newest_or_oldest_matches_ties_in_row_order() {
    // Streams of rows in time order (the indexer sorts them): with times
    // all distinct, and with many rows at each second.
    for (seed, seconds) in [(1u64, 1_000_000i64), (2, 300)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let records: Vec<LogRecord> = (0..6000)
            .map(|_| {
                let pod = ["a", "b", "c", "d"][rng.usize(0..4)];
                let word = if rng.u8(0..3) == 0 { "hit" } else { "miss" };
                let mut r = record(pod, 0, &format!("{word} {}", rng.u32(..)));
                r.ts = BASE + rng.i64(0..seconds) * 1000;
                r
            })
            .collect();
        let (_dir, engine) = engine_with(&[records]);
        let split = engine.store().splits("default", BASE - SEC, BASE + 3600 * SEC).unwrap().remove(0);
        assert!(!split.meta.stream_starts.is_empty());
        let filter = super::ast::LineFilter {
            op: super::ast::LineFilterOp::Contains,
            values: vec!["hit".into()],
            regexes: Vec::new(),
        };
        let streams: Vec<usize> = (0..split.streams.len()).collect();
        // A time range that ends halfway leaves the ends of the streams
        // without a match (windows widen, then every match is visited).
        let (all_time, first_half) = (BASE + 3600 * SEC, BASE + seconds * 500);
        for (chosen, filters, end) in [
            (vec![0, 2], vec![&filter], all_time),
            (streams.clone(), vec![], all_time),
            (streams.clone(), vec![&filter], all_time),
            (streams, vec![], first_half),
        ] {
            let query = split.query(&chosen, BASE - SEC, end, &filters);
            let rows = split.all_rows(query.as_ref()).unwrap();
            let stored = split.stored(&rows).unwrap();
            let mut all: Vec<(i64, u32)> = stored.iter().zip(&rows).map(|(s, r)| (s.ts, *r)).collect();
            for descending in [true, false] {
                all.sort_by(|a, b| if descending { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) }.then(a.1.cmp(&b.1)));
                for k in [1, 2, 7, 100, 1500, 10_000] {
                    let top = split.top_rows(query.as_ref(), k, descending).unwrap();
                    assert_eq!(top, all[..k.min(all.len())], "seed {seed} k {k} descending {descending}");
                }
            }
        }
    }
}

#[test]
fn checked_searches_page_through_splits_newest_first() {
    // Four splits whose times interleave (row s is in split s % 4, at
    // tenth of a second s / 2: rows s and s + 1 tie across two splits),
    // each with enough rows for block words (`info`, `step`, `phase`).
    let rows = 4 * 9000i64;
    let line_of = |s: i64| match s {
        s if s % 500 == 3 => format!("CUDA out of memory at step {s}"),
        s if s % 777 == 5 => format!("memory of rank {s} out"),
        s => format!("INFO step {s} phase {}", s % 3),
    };
    let commits: Vec<Vec<LogRecord>> = (0..4)
        .map(|split| {
            (0..rows)
                .filter(|s| s % 4 == split)
                .map(|s| {
                    // A tenth of a second apart: one hour, one split per
                    // commit.
                    let mut r = record(if s % 2 == 0 { "a" } else { "b" }, 0, &line_of(s));
                    r.ts = BASE + s / 2 * (SEC / 10);
                    r
                })
                .collect()
        })
        .collect();
    let (_dir, engine) = engine_with(&commits);
    let end = BASE + rows * SEC;
    // Ties go to the split listed first: the place of each commit's split.
    let splits = engine.store().splits("default", BASE - SEC, end).unwrap();
    let mut place = [0usize; 4];
    for (i, split) in splits.iter().enumerate() {
        assert!(
            !split.word_is_exact("info", false) && !split.word_is_exact("step", false),
            "block words"
        );
        assert!(split.word_is_exact("cuda", false));
        let first = &split.stored(&[0]).unwrap()[0].line;
        let s: i64 = first.split(' ').find_map(|w| w.parse().ok()).unwrap();
        place[(s % 4) as usize] = i;
    }
    // Every page of `query`, `limit` hits at a time, following the cursor.
    let pages = |query: &str, limit: usize, most: usize| {
        let mut lines = Vec::new();
        let (mut at, mut skip) = (end, 0);
        loop {
            let request = crate::search::SearchRequest {
                query: query.into(),
                start: BASE - SEC,
                end: at,
                limit,
                skip_at_end: skip,
            };
            let page = crate::search::search(engine.store(), "default", &request).unwrap_or_else(|e| panic!("{query}: {e}"));
            lines.extend(page.hits.into_iter().map(|h| h.line));
            match page.next_cursor {
                Some(cursor) if lines.len() < most => {
                    let (ts, n) = cursor.split_once(':').unwrap();
                    (at, skip) = (ts.parse().unwrap(), n.parse().unwrap());
                }
                _ => return lines,
            }
        }
    };
    for (query, limit, most) in [
        (r#""out of memory""#, 7, usize::MAX),
        ("memory -cuda", 5, usize::MAX),
        ("cuda", 9, usize::MAX),
        ("step", 50, 200),
        (r#"info -"phase 1""#, 40, 120),
        ("phase 2 -info", 10, usize::MAX),
        ("step -cuda", 30, 150),
        // Pages of three through rows that tie in pairs.
        ("phase", 3, 40),
    ] {
        let text = crate::search_text::TextExpr::parse(query).unwrap();
        let mut order: Vec<i64> = (0..rows).filter(|s| text.matches(&line_of(*s))).collect();
        order.sort_by_key(|s| (std::cmp::Reverse(s / 2), place[(s % 4) as usize]));
        let mut expected: Vec<String> = order.into_iter().map(line_of).collect();
        let got = pages(query, limit, most);
        expected.truncate(got.len().max(most.min(expected.len())));
        assert_eq!(got, expected, "{query}");
    }
}

/// A number in a line of every block of many streams (as a latency that
/// recurs in a busy server's access log): its newest hits are in the
/// newest block of each stream, and the search checks those blocks, not
/// every block that holds the number.
#[test]
fn a_number_in_every_block_is_found_in_the_newest_blocks_only() {
    let (pods, per_pod) = (6i64, 32768i64);
    let line_of = |pod: i64, s: i64| {
        if s % 499 == 7 {
            format!("request {s} of pod {pod} took 4774 ms: slow")
        } else {
            format!("request {s} of pod {pod} took {} ms", 100 + s % 900)
        }
    };
    let commits: Vec<Vec<LogRecord>> = (0..2)
        .map(|split| {
            (0..pods)
                .flat_map(|pod| {
                    (0..per_pod).filter(move |s| s % 2 == split).map(move |s| {
                        let mut r = record(&format!("server-{pod}"), 0, &line_of(pod, s));
                        r.ts = BASE + s * SEC + pod;
                        r
                    })
                })
                .collect()
        })
        .collect();
    let (_dir, engine) = engine_with(&commits);
    let end = BASE + per_pod * SEC;
    let all_rows = (pods * per_pod) as usize;
    let search = |query: &str, limit: usize| {
        let request = crate::search::SearchRequest {
            query: query.into(),
            start: BASE - SEC,
            end,
            limit,
            skip_at_end: 0,
        };
        crate::search::search(engine.store(), "default", &request).unwrap()
    };
    for limit in [20, 50] {
        let page = search("4774", limit);
        let mut expected: Vec<(i64, String)> = (0..pods)
            .flat_map(|pod| (0..per_pod).map(move |s| (s, pod)))
            .filter(|(s, _)| s % 499 == 7)
            .map(|(s, pod)| (BASE + s * SEC + pod, line_of(pod, s)))
            .collect();
        expected.sort_by_key(|e| std::cmp::Reverse(e.0));
        expected.truncate(limit);
        let got: Vec<(i64, String)> = page.hits.iter().map(|h| (h.ts, h.line.clone())).collect();
        assert_eq!(got, expected, "limit {limit}");
        assert_eq!(page.stats.splits, engine.store().splits("default", BASE - SEC, end).unwrap().len());
        // Every block holds the number: checking all of them at once had
        // read every line.
        assert!(
            page.stats.lines_checked > 0 && page.stats.lines_checked < all_rows / 3,
            "limit {limit}: {} of {all_rows} lines checked",
            page.stats.lines_checked
        );
    }
    // A word with postings needs no check.
    let slow = search("slow", 5);
    assert_eq!((slow.hits.len(), slow.stats.lines_checked), (5, 0));
}

/// A search whose hits are older than the candidate rows it may check in
/// batches checks the splits with few enough candidates at once instead of
/// refusing: every block holds both numbers (indexed per block), and only
/// the oldest lines lack the second.
#[test]
fn a_search_about_to_pass_the_cap_checks_small_splits_at_once() {
    let rows = 20_000i64;
    let line_of = |s: i64| {
        if s < 2_000 {
            format!("request {s} took 4774 ms")
        } else {
            format!("request {s} took 4774 ms, code 9999")
        }
    };
    let records: Vec<LogRecord> = (0..rows).map(|s| record("server", s, &line_of(s))).collect();
    let (_dir, engine) = engine_with(std::slice::from_ref(&records));
    let request = crate::search::SearchRequest {
        query: "4774 -9999".into(),
        start: BASE - SEC,
        end: BASE + rows * SEC,
        limit: 3,
        skip_at_end: 0,
    };
    let lines = |page: crate::search::SearchPage| page.hits.into_iter().map(|h| h.line).collect::<Vec<_>>();
    let want: Vec<String> = [1_999, 1_998, 1_997].into_iter().map(line_of).collect();
    let full = crate::search::search(engine.store(), "default", &request).unwrap();
    assert_eq!(lines(full), want);
    // Batches of 64, 128, … rows pass 1,000 before they reach row 1,999.
    let capped = crate::search::search_capped(engine.store(), "default", &request, 1_000).unwrap();
    assert!(capped.stats.lines_checked >= 2_000, "{} lines checked", capped.stats.lines_checked);
    assert_eq!(lines(capped), want);
}

#[test]
fn rows_whose_line_fails_the_check_are_dropped_and_the_rest_keep_their_metadata() {
    // Structured metadata on every third row: the kept rows' metadata must
    // be their own, not a dropped neighbour's.
    let records: Vec<LogRecord> = (0..3000i64)
        .map(|s| {
            let mut r = record("a", s, &format!("request {s} {}", if s % 7 == 0 { "failed" } else { "ok" }));
            if s % 3 == 0 {
                r.fields = LabelSet::from_pairs([("trace_id", format!("t{s}").as_str())]);
            }
            r
        })
        .collect();
    let (_dir, engine) = engine_with(std::slice::from_ref(&records));
    let split = engine.store().splits("default", BASE - SEC, BASE + 3000 * SEC).unwrap().remove(0);
    let rows: Vec<u32> = (0..3000).step_by(2).collect();
    // Lines from their pages, then through parquet-rs (lines and metadata
    // in one read there).
    assert!(split.reads_lines_from_pages());
    for through_parquet_rs in [false, true] {
        if through_parquet_rs {
            split.read_lines_through_parquet_rs();
        }
        let kept = split.stored_if(&rows, |line| line.ends_with("failed")).unwrap();
        let expected: Vec<u32> = rows.iter().copied().filter(|r| r % 7 == 0).collect();
        assert_eq!(kept.iter().map(|(r, _)| *r).collect::<Vec<_>>(), expected);
        for (r, row) in &kept {
            let record = &records[*r as usize];
            assert_eq!((row.ts, row.line.as_str()), (record.ts, record.line.as_str()));
            let trace = (r % 3 == 0).then(|| format!("t{r}"));
            assert_eq!(row.metadata.get("trace_id").map(str::to_string), trace, "row {r}");
        }
        // Everything kept: the same rows as `stored`.
        let all = split.stored_if(&rows, |_| true).unwrap();
        let stored = split.stored(&rows).unwrap();
        assert_eq!(all.len(), rows.len());
        assert!(all
            .iter()
            .zip(&stored)
            .all(|((_, a), b)| a.line == b.line && a.metadata == b.metadata));
    }
}

#[test]
fn rows_are_read_from_their_pages_and_ties_keep_row_order() {
    // Lines long enough to fill several 64 KiB pages; every tenth second
    // holds three lines (equal times).
    let mut records = Vec::new();
    for s in 0..3000i64 {
        let copies = if s % 10 == 0 { 3 } else { 1 };
        for c in 0..copies {
            records.push(record(
                "a",
                s,
                &format!("second {s} copy {c} {}", "padding ".repeat((s % 20) as usize)),
            ));
        }
    }
    let (_dir, engine) = engine_with(&[records.clone()]);
    let mut splits = engine.store().splits("default", BASE - SEC, BASE + 5000 * SEC).unwrap();
    assert_eq!((splits.len(), splits[0].meta.rows), (1, records.len() as u64));
    let split = splits.remove(0);
    assert!(split.reads_lines_from_pages(), "the indexer's layout is read without parquet-rs");
    // Rows are in stream-then-time order, which is `records`' order here.
    let rows: Vec<u32> = (0..records.len() as u32).filter(|r| r % 97 == 0 || r % 1013 == 5).collect();
    let stored = split.stored(&rows).unwrap();
    let expected: Vec<(i64, &str)> = rows
        .iter()
        .map(|&r| (records[r as usize].ts, records[r as usize].line.as_str()))
        .collect();
    assert_eq!(stored.iter().map(|s| (s.ts, s.line.as_str())).collect::<Vec<_>>(), expected);
    // Newest and oldest first: equal times in row order, both ways.
    let all = split.query(&[0], BASE - SEC, BASE + 5000 * SEC, &[]);
    let newest = split.top_rows(all.as_ref(), 5, true).unwrap();
    let last = records.len() as u32;
    let at = |s: i64| BASE + s * SEC;
    assert_eq!(
        newest,
        vec![
            (at(2999), last - 1),
            (at(2998), last - 2),
            (at(2997), last - 3),
            (at(2996), last - 4),
            (at(2995), last - 5)
        ]
    );
    let oldest = split.top_rows(all.as_ref(), 4, false).unwrap();
    assert_eq!(oldest, vec![(at(0), 0), (at(0), 1), (at(0), 2), (at(1), 3)]);
    // A cut inside a run of equal times keeps the lower rows.
    let window = split.query(&[0], at(2990), at(2990) + 1, &[]);
    let first_at_2990 = records.iter().position(|r| r.ts == at(2990)).unwrap() as u32;
    assert_eq!(
        split.top_rows(window.as_ref(), 2, true).unwrap(),
        vec![(at(2990), first_at_2990), (at(2990), first_at_2990 + 1)]
    );
}

/// A small seeded generator (no dependency for one test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next(items.len())]
    }
}

#[test]
fn index_answers_equal_a_scan_of_every_line() {
    // Words, hex-letter words (not numbers: no decimal digit), numbers in
    // every form the number index takes, mixed runs and other scripts,
    // over several blocks of rows in two splits.
    const WORDS: &[&str] = &[
        "error", "Error", "ERROR", "timeout", "nccl", "cuda", "step", "loss", "gpu", "rank", "blk", "zq7x", "k9d3w", "cafe", "beef",
        "dead", "abc", "Straße", "café", "日本", "ΣΑΣ", "step12", "x86",
    ];
    const SEPARATORS: &[&str] = &[" ", " ", " ", "=", ":", "/", "-", "_", ".", ", ", ""];
    let mut rng = Lcg(42);
    let number = |rng: &mut Lcg| -> String {
        match rng.next(6) {
            0 => rng.next(100).to_string(),
            1 => (4200 + rng.next(60)).to_string(),
            2 => format!("{:x}", 0x1000_0000u64 + rng.next(1 << 20) as u64 * 7919),
            3 => format!("0x{:X}", rng.next(1 << 16) + 0x10),
            4 => format!("{:016x}", (rng.next(1 << 30) as u64) << 20 | 0x5),
            _ => format!("{}{}", rng.next(10), rng.pick(&["a", "f", "e9", "0"])),
        }
    };
    let mut lines: Vec<String> = Vec::new();
    for _ in 0..1600 {
        let mut line = String::new();
        for t in 0..3 + rng.next(9) {
            if t > 0 {
                line.push_str(rng.pick(SEPARATORS));
            }
            if rng.next(2) == 0 {
                line.push_str(rng.pick(WORDS));
            } else {
                line.push_str(&number(&mut rng));
            }
        }
        lines.push(line);
    }
    let records: Vec<LogRecord> = lines
        .iter()
        .enumerate()
        .map(|(s, l)| record(if s % 2 == 0 { "a" } else { "b" }, s as i64, l))
        .collect();
    let (dir, engine) = engine_with(&[records[..800].to_vec(), records[800..].to_vec()]);
    let end = BASE + 2000 * SEC;
    let search = |query: &str| search_lines(&engine, query, end);
    let tokens_of = |line: &str| -> Vec<String> { weft_indexer::split::index::line_tokens(line).collect() };
    let mut checked = 0;
    for _ in 0..300 {
        let line = &lines[rng.next(lines.len())];
        let tokens = tokens_of(line);
        if tokens.len() < 2 {
            continue;
        }
        let i = rng.next(tokens.len() - 1);
        let (a, b) = (&tokens[i], &tokens[i + 1]);
        let other = tokens_of(&lines[rng.next(lines.len())])
            .into_iter()
            .next()
            .unwrap_or_else(|| "gpu".into());
        let query = match rng.next(7) {
            0 => a.clone(),
            1 => format!("{a} {other}"),
            2 => format!("{a} OR {other}"),
            3 => format!("-{a} {other}"),
            4 => format!("\"{a} {b}\""),
            5 => format!("{}*", a.chars().take(2.max(a.chars().count() / 2)).collect::<String>()),
            _ => format!("\"{a} {}\"*", b.chars().take(1 + b.chars().count() / 2).collect::<String>()),
        };
        let Ok(expr) = crate::search_text::TextExpr::parse(&query) else {
            continue;
        };
        // Newest first, as the search pages them.
        let expected: Vec<String> = lines.iter().rev().filter(|l| expr.matches(l)).take(1000).cloned().collect();
        assert_eq!(search(&query), expected, "search {query:?}");
        checked += 1;
    }
    assert!(checked > 250, "only {checked} searches compared");
    // A label filter in a search selects that stream's rows.
    let cafe = crate::search_text::TextExpr::parse("cafe").unwrap();
    let in_b: Vec<String> = lines
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, l)| i % 2 == 1 && cafe.matches(l))
        .map(|(_, l)| l.clone())
        .collect();
    assert!(!in_b.is_empty());
    assert_eq!(search("pod:b cafe"), in_b);
    // Line filters: substrings cut anywhere (edges inside words and
    // numbers), kept and excluded.
    for _ in 0..200 {
        let line: Vec<char> = lines[rng.next(lines.len())].chars().collect();
        let from = rng.next(line.len());
        let to = (from + 1 + rng.next(10)).min(line.len());
        let needle: String = line[from..to].iter().collect();
        if needle.contains(['"', '\\']) {
            continue;
        }
        for (op, keep) in [("|=", true), ("!=", false)] {
            let q = format!(r#"{{namespace="ml"}} {op} "{needle}""#);
            let got: Vec<String> = lines_of(&engine, &q);
            let expected: Vec<String> = lines.iter().filter(|l| l.contains(needle.as_str()) == keep).cloned().collect();
            assert_eq!(got, expected, "{q}");
        }
        // One stream of each split (pods alternate by line): the
        // selector's rows, exactly.
        let q = format!(r#"{{pod="b"}} |= "{needle}""#);
        let expected: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(i, l)| i % 2 == 1 && l.contains(needle.as_str()))
            .map(|(_, l)| l.clone())
            .collect();
        assert_eq!(lines_of(&engine, &q), expected, "{q}");
    }
    // Each row comes back in its own stream (pods alternate by line).
    let mut parity: std::collections::HashMap<&str, std::collections::HashSet<usize>> = Default::default();
    for (i, l) in lines.iter().enumerate() {
        parity.entry(l.as_str()).or_default().insert(i % 2);
    }
    for stream in log(&engine, r#"{namespace="ml"}"#, 5000, false) {
        let pod = stream.labels.get("pod").unwrap().to_string();
        for (_, line) in &stream.entries {
            assert!(parity[line.as_str()].contains(&usize::from(pod == "b")), "{line} in pod {pod}");
        }
    }
    // A catalog entry whose stream starts do not divide the rows, or that
    // lost them, is refused, not read with rows given to the wrong streams.
    let catalog = weft_indexer::catalog::Catalog::open(dir.path()).unwrap();
    let good = catalog.snapshot().splits[0].stream_starts.clone();
    assert_eq!(good.len(), 2, "two streams: pods a and b");
    let rows = catalog.snapshot().splits[0].rows as u32;
    for (damage, message) in [
        (vec![0, 0], "stream starts"),
        (vec![0], "stream starts"),
        (vec![0, rows], "stream starts"),
        (vec![1, good[1]], "stream starts"),
        (vec![], "no stream starts"),
    ] {
        catalog.update(|state| state.splits[0].stream_starts = damage.clone()).unwrap();
        let err = SplitStore::new(dir.path())
            .splits("default", BASE - SEC, end)
            .err()
            .unwrap_or_else(|| panic!("{damage:?} refused"))
            .to_string();
        assert!(err.contains(message), "{damage:?}: {err}");
    }
}

/// The lines of the first page (up to 1,000) of a native search up to
/// `end`, newest first.
fn search_lines(engine: &Engine, query: &str, end: i64) -> Vec<String> {
    let request = crate::search::SearchRequest {
        query: query.into(),
        start: BASE - SEC,
        end,
        limit: 1000,
        skip_at_end: 0,
    };
    let page = crate::search::search(engine.store(), "default", &request).unwrap_or_else(|e| panic!("{query}: {e}"));
    page.hits.into_iter().map(|h| h.line).collect()
}

/// Every line a log query returns, oldest first.
fn lines_of(engine: &Engine, q: &str) -> Vec<String> {
    lines(&log(engine, q, 5000, false)).into_iter().map(|(_, l)| l).collect()
}

/// Runs `f` on a thread with the 2 MiB stack tokio's workers have: a query
/// that recursed too deep aborts the whole test binary there.
fn on_a_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
}

#[test]
fn queries_nested_or_chained_too_deep_are_refused_not_a_stack_overflow() {
    use crate::nesting::{MAX_BRACKETS, MAX_DEPTH};
    let selector = r#"count_over_time({a="b"}[5m])"#;
    let refused: Vec<(String, String)> = on_a_worker_stack(move || {
        let parens = |n: usize, inner: &str| format!("{}{inner}{}", "(".repeat(n), ")".repeat(n));
        let queries = [
            parens(30_000, selector),
            // A quote in a comment is no string to hide brackets in.
            format!("#\"\n{}", parens(30_000, selector)),
            vec!["1"; 30_000].join("+"),
            format!("{}1", "-".repeat(60_000)),
            format!(r#"{{a="b"}} | logfmt | {}"#, vec![r#"x="1""#; 6_000].join(" or ")),
        ];
        let mut refused = Vec::new();
        for q in &queries {
            let err = parse(q).expect_err("refused").to_string();
            refused.push((q[..20].to_string(), err));
        }
        for q in [
            parens(2040, "a"),
            format!("\\\" {}", parens(2040, "a")),
            format!("{}a", "NOT ".repeat(1000)),
        ] {
            let err = crate::search_text::TextExpr::parse(&q)
                .map(|_| ())
                .expect_err("refused")
                .to_string();
            refused.push((q[..20].to_string(), err));
        }
        for q in [
            parens(30_000, "up"),
            format!("#\"\n{}", parens(30_000, "up")),
            format!("#\r{}", parens(30_000, "up")),
            format!("#\r{}up", "-".repeat(60_000)),
            vec!["up"; 10_000].join(" + "),
            vec!["1"; 30_000].join("+"),
            format!("{}up", "-".repeat(60_000)),
            vec!["up"; 10_000].join(" or "),
        ] {
            let err = crate::promql::engine::parse(&q).expect_err("refused").to_string();
            refused.push((q[..20].to_string(), err));
        }
        refused
    });
    for (query, err) in &refused {
        assert!(err.contains("more than"), "{query}…: {err}");
    }
    // At the limits, parsed and evaluated on the same stack.
    let (_dir, engine) = engine_with(&sample_data());
    let engine = Arc::new(engine);
    let at_the_limit = format!(
        "{}{}{}",
        "(".repeat(MAX_BRACKETS - 3),
        vec![r#"sum(count_over_time({pod="a"}[1m]))"#; MAX_DEPTH / 2].join(" + "),
        ")".repeat(MAX_BRACKETS - 3)
    );
    let (summed, chained) = on_a_worker_stack(move || {
        let summed = vector(instant(&engine, &at_the_limit, 60).unwrap());
        let chained = instant(&engine, &vec!["1"; MAX_DEPTH + 1].join("+"), 0).unwrap();
        (summed, chained)
    });
    assert_eq!(summed.len(), 1);
    assert_eq!(summed[0].1, 60.0 * (MAX_DEPTH / 2) as f64);
    assert!(
        matches!(chained, QueryResult::Scalar(_, sum) if sum == (MAX_DEPTH + 1) as f64),
        "{chained:?}"
    );
}

/// Pieces of LogQL, valid and not, that the fuzz test puts into queries.
const PIECES: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "!=",
    "=~",
    "|=",
    "|~",
    "|",
    ">",
    ">=",
    "==",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "\"x\"",
    "\"",
    "`",
    "5m",
    "0",
    "1",
    "-1",
    "NaN",
    "10KB",
    "pod",
    "json",
    "logfmt",
    "unwrap",
    "bytes",
    "by",
    "without",
    "offset",
    "bool",
    "on",
    "group_left",
    "and",
    "or",
    "unless",
    "__error__",
    "é",
    "\\",
    " ",
    "#",
    "'",
    "\n",
];

fn fuzz_log_query() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let selector = proptest::sample::select(vec![
        r#"{pod="a"}"#,
        r#"{namespace=~"m.*"}"#,
        r#"{pod!="x", namespace="ml"}"#,
        r#"{pod="nope"}"#,
    ]);
    let stage = proptest::sample::select(vec![
        r#" |= "step""#,
        r#" |~ "err.*""#,
        r#" != "x""#,
        r#" |= `ok`"#,
        " | json",
        " | json status",
        " | logfmt",
        r#" | regexp "(?P<n>\\d+)""#,
        r#" | pattern "<a> <_>""#,
        r#" | line_format "{{.pod}} {{.status}}""#,
        " | label_format x=pod",
        " | status >= 500",
        " | loss > 0.1",
        " | loss > 10ms",
        " | size > 1KB",
        r#" | __error__ = """#,
        " | drop level",
        " | keep pod",
        " | decolorize",
        r#" | level="info" or status=200"#,
        " | unwrap loss",
        " | unwrap bytes(size)",
        " | unwrap duration(t)",
    ]);
    (selector, proptest::collection::vec(stage, 0..4)).prop_map(|(selector, stages)| format!("{selector}{}", stages.concat()))
}

fn fuzz_query() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let range = (
        proptest::sample::select(vec![
            "count_over_time",
            "rate",
            "bytes_over_time",
            "bytes_rate",
            "sum_over_time",
            "avg_over_time",
            "max_over_time",
            "min_over_time",
            "first_over_time",
            "last_over_time",
            "stdvar_over_time",
            "stddev_over_time",
            "absent_over_time",
            "quantile_over_time(0.9,",
        ]),
        fuzz_log_query(),
        proptest::sample::select(vec!["[1m]", "[5m]", "[1s]", "[0s]", "[30d]", "[1m] offset 1m"]),
    )
        .prop_map(|(op, log, range)| {
            // Aggregations of values need a value, mostly given.
            let unwrapped =
                ["count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"].contains(&op) || log.contains("unwrap");
            let log = if unwrapped { log } else { format!("{log} | unwrap loss") };
            match op.strip_suffix(',') {
                Some(op) => format!("{op}, {log} {range})"),
                None => format!("{op}({log} {range})"),
            }
        });
    let leaf = prop_oneof![3 => range, 1 => fuzz_log_query(), 1 => Just("1".to_string()), 1 => Just("vector(2)".to_string())];
    leaf.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            (
                proptest::sample::select(vec!["sum", "count", "max", "min", "avg", "stddev", "stdvar"]),
                inner.clone()
            )
                .prop_map(|(op, e)| format!("{op} by (pod) ({e})")),
            (proptest::sample::select(vec!["topk(2,", "bottomk(1,", "topk(100,"]), inner.clone()).prop_map(|(op, e)| format!("{op} {e})")),
            (
                inner.clone(),
                proptest::sample::select(vec![
                    " + ",
                    " / ",
                    " % ",
                    " ^ ",
                    " > ",
                    " == bool ",
                    " and ",
                    " or ",
                    " unless ",
                    " * on(pod) group_left "
                ]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a}{op}{b}")),
            inner.prop_map(|e| format!("-({e})")),
        ]
    })
}

/// A query, then each edit (an index into the text, a piece or none to
/// delete a byte) applied in turn.
fn fuzz_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let edit = (any::<usize>(), proptest::option::of(proptest::sample::select(PIECES)));
    let edits = prop_oneof![Just(Vec::new()), proptest::collection::vec(edit, 1..3)];
    (fuzz_query(), edits).prop_map(|(mut text, edits)| {
        for (at, piece) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match piece {
                Some(piece) => text.insert_str(at, piece),
                None if at < text.len() => {
                    text.remove(at);
                }
                None => {}
            }
        }
        text
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Whatever text comes in as a query, parsing it and evaluating what
    /// parses (as logs, at an instant and over a range) answers or says
    /// why not: no panic.
    #[test]
    fn any_query_text_parses_and_evaluates_or_says_why(text in fuzz_text()) {
        let Ok(expr) = parse(&text) else { return Ok(()) };
        let engine = FUZZ_ENGINE.with(|e| e.clone());
        match &expr {
            super::ast::Expr::Log(log) => {
                let _ = engine.logs("default", log, BASE, BASE + 120 * SEC, 10, true);
            }
            _ => {
                let _ = engine.instant("default", &expr, BASE + 60 * SEC);
                let _ = engine.range("default", &expr, BASE, BASE + 60 * SEC, 15 * SEC);
            }
        }
    }
}

thread_local! {
    /// One engine over the sample data for every fuzz case of a thread.
    static FUZZ_ENGINE: Arc<Engine> = {
        let (dir, engine) = engine_with(&sample_data());
        std::mem::forget(dir);
        Arc::new(engine)
    };
}
