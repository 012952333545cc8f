//! The offline commands: `weft inspect` (dry run of parsing and
//! extraction), `weft promql-test` (PromQL test files) and `weft rules
//! check` (rule files), `weft gpu` (one NVML read).

use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft")).args(args).output().expect("weft runs")
}

#[test]
fn inspect_shows_records_and_extracted_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("0.log");
    std::fs::write(
        &file,
        concat!(
            "2026-11-25T10:00:00.5Z stdout F {'loss': 0.3012, 'learning_rate': 4.9e-05, 'epoch': 0.01}\n",
            "2026-11-25T10:00:01Z stdout P  iteration      100/  500000 | lm loss: 7.01E+00 |\n",
            "2026-11-25T10:00:01Z stdout F  learning rate: 1.5E-04 |\n",
            "2026-11-25T10:00:02Z stderr F E1125 10:00:02.000 1 main.go:1] boom\n",
        ),
    )
    .unwrap();
    let output = weft(&["inspect", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "the P/F line is one record");
    assert_eq!(records[0]["metrics"]["weft_train_loss"], 0.3012);
    assert_eq!(records[0]["ts"], "2026-11-25T10:00:00.500000000Z");
    assert_eq!(records[1]["metrics"]["weft_train_step"], 100.0);
    assert_eq!(records[1]["metrics"]["weft_train_learning_rate"], 0.00015);
    assert_eq!(records[2]["level"], "error");
    assert_eq!(records[2]["stream"], "stderr");

    let plain = weft(&["inspect", "--format", "plain", file.to_str().unwrap()]);
    assert_eq!(String::from_utf8(plain.stdout).unwrap().lines().count(), 4);
    let missing = weft(&["inspect", "/nonexistent/file.log"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/file.log"));
}

#[test]
fn promql_test_reports_passes_and_failures() {
    let files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/query/tests/promql"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = std::iter::once("promql-test").chain(files.iter().map(String::as_str)).collect();
    let output = weft(&args);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed, 0 skipped"), "{last}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.test");
    std::fs::write(&bad, "load 1m\n  up{job=\"a\"} 1 2\n\neval instant at 1m up\n  up{job=\"a\"} 3\n").unwrap();
    let output = weft(&["promql-test", bad.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success());
    assert!(stdout.contains("FAIL ") && stdout.contains("bad.test:4:"), "{stdout}");
    assert_eq!(stdout.lines().last().unwrap(), "0 passed, 1 failed, 0 skipped");
}

#[test]
fn rules_check_validates_files_and_points_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "groups:\n  - name: ml\n    rules:\n      - alert: NanLoss\n        expr: weft_train_loss != weft_train_loss\n        for: 1m\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "groups:\n  - name: ml\n    lang: logql\n    rules:\n      - alert: Oom\n        expr: x\n      - alert: Fine\n        expr: 'sum(count_over_time({namespace=\"ml\"} |= \"OOM\" [5m])) > 0'\n      - alert: Typo\n        expr: 'sum(count_over_time({namespace=\"ml\"} [5m])'\n",
    )
    .unwrap();
    let output = weft(&["rules", "check", good.to_str().unwrap(), "builtin"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("good.yaml: 1 groups, 1 rules"), "{stdout}");
    assert!(stdout.contains("SUCCESS builtin: 3 groups, 9 rules"), "{stdout}");
    let output = weft(&["rules", "check", bad.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success());
    assert!(
        stdout.contains(&format!("FAILED {}:5: group \"ml\", rule \"Oom\": expr:", bad.display())),
        "{stdout}"
    );
}

#[test]
fn gpu_reads_nvml_or_says_why_not() {
    let bad = weft(&["gpu", "--xid-wait", "5x"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--xid-wait") && stderr.contains("unknown unit"), "{stderr}");

    let output = weft(&["gpu", "--node", "n1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // A machine with an NVIDIA driver (scripts/gpu-check compares the
        // figures with nvidia-smi's): every GPU has its memory series.
        assert!(stderr.contains("NVML: driver "), "{stderr}");
        assert!(stdout.contains("# TYPE DCGM_FI_DEV_FB_USED gauge"), "{stdout}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("DCGM_FI_DEV_FB_USED{") && l.contains("gpu=\"0\"") && l.contains("Hostname=\"n1\"")),
            "{stdout}"
        );
    } else {
        // CI's machines: no driver, one line saying so, nothing on stdout.
        assert!(stderr.contains("NVML could not be loaded"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}
