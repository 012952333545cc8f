//! End to end through the real binary: numbered CRI lines (with `P`/`F`
//! splits on both streams) written across two kubelet rotations, `kill -9`
//! of weft in the middle, lines written while it is down (including a
//! rotation), restart: every line comes back from the Loki API exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn check_exactly_once(got: &[(String, String)], expected: &[(String, String)]) {
    let mut counts: HashMap<&(String, String), usize> = HashMap::new();
    for line in got {
        *counts.entry(line).or_default() += 1;
    }
    let duplicated: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(l, n)| format!("{}x {}", n, l.1))
        .take(5)
        .collect();
    assert!(duplicated.is_empty(), "duplicated lines: {duplicated:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|l| !counts.contains_key(l))
        .map(|l| l.1.clone())
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing lines (first 5): {missing:?}");
    assert_eq!(got.len(), expected.len());
}

#[test]
fn every_line_exactly_once_across_rotations_and_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("pods");
    let data = root.path().join("data").to_string_lossy().into_owned();
    let logs_arg = logs.to_string_lossy().into_owned();
    let mut writer = PodLogWriter::new(&logs, "e2e", "trainer-0", "main");
    let mut expected = Vec::new();
    // Checkpoints are written rarely, so the crash below certainly leaves
    // acknowledged lines behind the checkpoint: they are read again after
    // the restart and must be recognised as duplicates. The bodies go
    // uncompressed (`wire_compression: none`; every other end-to-end test
    // ships zstd ones).
    let config = root.path().join("weft.yaml");
    std::fs::write(&config, "collector:\n  checkpoint_interval: 1h\n  wire_compression: none\n").unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let args = [
        "standalone",
        "--logs",
        &logs_arg,
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config_arg,
    ];

    let weft = Weft::start(&args);
    let (text, lines) = numbered_lines(0..300);
    writer.append(text.as_bytes());
    expected.extend(lines);
    // A partial line left at the end of the file being rotated: its F
    // segment lands in the new file.
    writer.append(PodLogWriter::cri("stdout", "P", "line-000300 split across ").as_bytes());
    writer.rotate();
    writer.append(PodLogWriter::cri("stdout", "F", "rotation").as_bytes());
    expected.push(("stdout".into(), "line-000300 split across rotation".into()));
    let (text, lines) = numbered_lines(301..600);
    writer.append(text.as_bytes());
    expected.extend(lines);
    // Let part of it arrive, then crash without any chance to flush.
    wait_for("some lines indexed", Duration::from_secs(60), || {
        (all_lines(&weft, r#"{namespace="e2e"}"#).len() >= 100).then_some(())
    });
    weft.kill9();

    // Written while weft is down, across a second rotation.
    let (text, lines) = numbered_lines(600..800);
    writer.append(text.as_bytes());
    expected.extend(lines);
    writer.rotate();
    let (text, lines) = numbered_lines(800..1000);
    writer.append(text.as_bytes());
    expected.extend(lines);

    let weft = Weft::start(&args);
    let got = wait_for("all lines indexed", Duration::from_secs(90), || {
        let got = all_lines(&weft, r#"{namespace="e2e"}"#);
        (got.len() >= expected.len()).then_some(got)
    });
    check_exactly_once(&got, &expected);
    // Nothing more trickles in later (no duplicates after a further commit).
    weft.terminate();
    let weft = Weft::start(&args);
    let got = wait_for("lines after a clean restart", Duration::from_secs(30), || {
        let got = all_lines(&weft, r#"{namespace="e2e"}"#);
        (got.len() >= expected.len()).then_some(got)
    });
    check_exactly_once(&got, &expected);
}
