//! The indexer stops for a while: the collector keeps tailing into its disk
//! spool (even lines whose file is rotated away and deleted meanwhile), then
//! delivers everything, in order and once, when the indexer returns.

mod common;

use std::time::Duration;

use common::*;

fn spooled_batches(state: &std::path::Path) -> usize {
    std::fs::read_dir(state.join("spool"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".batch")).count())
        .unwrap_or(0)
}

#[test]
fn collector_spools_while_the_indexer_is_down_then_delivers_everything() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("pods");
    let state = root.path().join("state");
    let data = root.path().join("data").to_string_lossy().into_owned();
    let config = root.path().join("weft.yaml");
    std::fs::write(&config, "collector:\n  max_backoff: 300ms\n  request_timeout: 2s\n").unwrap();
    let mut writer = PodLogWriter::new(&logs, "spool", "job-0", "main");

    let indexer = Weft::start(&["indexer", "--data", &data, "--listen", "127.0.0.1:0"]);
    let indexer_addr = indexer.addr.clone();
    let query = Weft::start(&["query", "--data", &data, "--listen", "127.0.0.1:0"]);
    let mut collector = Weft::start_quiet(&[
        "collector",
        "--logs",
        logs.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--indexer",
        &format!("http://{indexer_addr}"),
        "--config",
        config.to_str().unwrap(),
    ]);

    let mut expected = Vec::new();
    let (text, lines) = numbered_lines(0..100);
    writer.append(text.as_bytes());
    expected.extend(lines);
    wait_for("first lines delivered", Duration::from_secs(60), || {
        (all_lines(&query, r#"{namespace="spool"}"#).len() == 100).then_some(())
    });

    indexer.kill9();
    let (text, lines) = numbered_lines(100..300);
    writer.append(text.as_bytes());
    expected.extend(lines);
    wait_for("batches in the spool", Duration::from_secs(60), || {
        (spooled_batches(&state) > 0).then_some(())
    });
    // The file those lines came from is rotated and deleted (the kubelet
    // gzips and removes it) while the indexer is still down.
    let rotated = writer.rotate();
    let (text, lines) = numbered_lines(300..400);
    writer.append(text.as_bytes());
    expected.extend(lines);
    // The collector holds the rotated file open, so what it had not read yet
    // is still drained after the unlink.
    std::fs::remove_file(rotated).unwrap();

    let indexer = Weft::start(&["indexer", "--data", &data, "--listen", &indexer_addr]);
    let got = wait_for("every line after the indexer returned", Duration::from_secs(90), || {
        let got = all_lines(&query, r#"{namespace="spool"}"#);
        (got.len() >= expected.len()).then_some(got)
    });
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected, "each line exactly once");
    wait_for("spool drained", Duration::from_secs(30), || {
        (spooled_batches(&state) == 0).then_some(())
    });
    terminate(&mut collector);
    indexer.terminate();
    query.terminate();
}
