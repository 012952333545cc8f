//! The benchmark harness runs (CI checks that it works, never a figure):
//! `benches/run --smoke` on a tiny generated corpus with this build's weft.

#[test]
fn bench_harness_runs_in_smoke_mode() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("results.json");
    let output = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/run"))
        .args(["--smoke", "--weft", env!("CARGO_BIN_EXE_weft"), "--out"])
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
        "collector: CRI tail+parse+batch",
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
}
