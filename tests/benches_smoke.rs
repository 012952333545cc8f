//! The benchmark harness runs (CI checks that it works, never a figure):
//! `benches/run --smoke` on a tiny generated corpus with this build's weft.

#[test]
fn bench_harness_runs_in_smoke_mode() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("results.json");
    let output = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/run"))
        .args(["--smoke", "--collector-parts", "--weft", env!("CARGO_BIN_EXE_weft"), "--out"])
        .arg(out.path().join("work"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("benches/run starts (python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let figures: Vec<&str> = results["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["figure"].as_str().unwrap())
        .collect();
    for expected in [
        "collector alone: tail + CRI parse + batch",
        "collector: everything",
        "indexer: into Parquet + tantivy",
        "bytes stored / raw",
        "rare-term search",
        "count_over_time by pod",
        "write -> visible",
    ] {
        assert!(
            figures.iter().any(|f| f.starts_with(expected)),
            "{expected} missing from {figures:?}"
        );
    }
    for row in results["rows"].as_array().unwrap() {
        assert!(
            row["weft"]["median"].as_f64().is_some_and(|v| v > 0.0),
            "no figure for {}",
            row["figure"]
        );
    }
    assert!(results["corpus"]["rare_lines"].as_u64().unwrap() > 0);
    // --collector-parts: the bare path, then each part added in turn.
    for part in [
        "| tail + CRI parse + batch |",
        "| + levels |",
        "| + events |",
        "| + multiline |",
        "| + extract |",
        "| + zstd |",
    ] {
        assert!(stdout.contains(part), "{part} missing from\n{stdout}");
    }
}

/// `weft bench-pipeline` with `WEFT_BENCH_STAGES=collect` reports the
/// collector alone, and `WEFT_BENCH_EXTRACT=off` runs it without metric
/// extraction: no samples, the same log bodies.
#[test]
fn bench_pipeline_switches_stop_after_the_collector_and_turn_extraction_off() {
    let dir = tempfile::tempdir().unwrap();
    let container = dir.path().join("pods/ml_train-0_0a1b2c3d/trainer");
    std::fs::create_dir_all(&container).unwrap();
    let lines: String = (0..50)
        .map(|i| {
            format!(
                "2026-11-27T08:00:{:02}.000000001Z stdout F {{'loss': 0.{i:02}, 'learning_rate': 2e-05, 'epoch': 1.0}}\n\
                 2026-11-27T08:00:{:02}.000000002Z stderr F 2026-11-27 08:00:00,000 - trainer - INFO - step {i} done\n",
                i, i
            )
        })
        .collect();
    std::fs::write(container.join("0.log"), lines).unwrap();
    let run = |env: &[(&str, &str)]| -> serde_json::Value {
        let data = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("bench-pipeline")
            .arg(dir.path().join("pods"))
            .arg(data.path())
            .envs(env.iter().copied())
            .output()
            .expect("weft runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = stdout.lines().last().expect("a report line");
        // The collector alone: nothing indexed.
        assert!(std::fs::read_dir(data.path()).unwrap().next().is_none(), "the indexer ran");
        serde_json::from_str(report).unwrap()
    };
    let on = run(&[("WEFT_BENCH_STAGES", "collect"), ("WEFT_BENCH_EXTRACT", "on")]);
    let off = run(&[("WEFT_BENCH_STAGES", "collect"), ("WEFT_BENCH_EXTRACT", "off")]);
    assert_eq!(on["extract_metrics"], true, "{on}");
    assert_eq!(on["extracted_samples"], 150, "{on}");
    assert_eq!(off["extract_metrics"], false, "{off}");
    assert_eq!(off["extracted_samples"], 0, "{off}");
    assert_eq!(on["batch_bytes"], off["batch_bytes"], "the same log bodies");
    assert!(on["metric_body_bytes"].as_u64() > off["metric_body_bytes"].as_u64(), "{on} {off}");

    // `WEFT_BENCH_COLLECTOR` names the parts on top of tail + parse +
    // batch: the bare path ships the lines uncompressed and extracts
    // nothing; `all` is the default collector.
    let bare = run(&[("WEFT_BENCH_COLLECTOR", "none")]);
    assert_eq!(bare["collector_parts"], serde_json::json!([]), "{bare}");
    assert_eq!(
        (bare["extracted_samples"].as_u64(), bare["lines"].as_u64()),
        (Some(0), Some(100)),
        "{bare}"
    );
    assert!(bare["batch_bytes"].as_u64() > on["batch_bytes"].as_u64(), "{bare} {on}");
    let all = run(&[("WEFT_BENCH_COLLECTOR", "zstd, extract,levels,events,multiline")]);
    assert_eq!(
        all["collector_parts"],
        serde_json::json!(["levels", "events", "multiline", "extract", "zstd"])
    );
    assert_eq!(
        (&all["batch_bytes"], &all["extracted_samples"]),
        (&on["batch_bytes"], &on["extracted_samples"]),
        "{all} {on}"
    );
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "bench-pipeline".as_ref(),
            dir.path().join("pods").as_os_str(),
            data.path().as_os_str(),
        ])
        .env("WEFT_BENCH_COLLECTOR", "levels,gzip")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("unknown part \"gzip\""), "{stderr}");
}
