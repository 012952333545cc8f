//! `weft standalone --import FILE`: samples of a Prometheus text exposition
//! with timestamps land in the indexer once per data directory, even across
//! restarts with the same flag.

mod common;

use std::time::Duration;

use common::{get_json, wait_for, Weft};

#[test]
fn imported_samples_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    let file = dir.path().join("gpu.prom");
    std::fs::write(
        &file,
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",Hostname=\"n1\"} 97 1795600800000\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",Hostname=\"n1\"} 95 1795600830000\n\
         this line is not a sample\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",Hostname=\"n1\"} 12 1795600860000\n",
    )
    .unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(&config, "").unwrap();
    let mut args = common::standalone_args(&logs, &data, &config);
    args.extend(["--import".to_string(), file.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let count = |weft: &Weft| {
        let (status, body) = get_json(
            &weft.url("/api/v1/query"),
            &[("query", "count_over_time(DCGM_FI_DEV_GPU_UTIL[10m])"), ("time", "1795600900")],
        );
        assert_eq!(status, 200, "{body}");
        body["data"]["result"]
            .as_array()
            .and_then(|r| r.first())
            .map(|s| s["value"][1].as_str().unwrap().to_string())
    };
    // Samples the indexer took in from the import (queries would hide
    // duplicates, so count at the door).
    let ingested = |weft: &Weft| {
        let text = common::client().get(weft.url("/metrics")).send().unwrap().text().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("weft_indexer_samples_ingested_total{endpoint=\"import\"} "))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let weft = Weft::start(&args);
    assert_eq!(wait_for("the samples", Duration::from_secs(30), || count(&weft)), "3");
    assert_eq!(ingested(&weft), 3);
    weft.terminate();
    let weft = Weft::start(&args);
    assert_eq!(count(&weft).as_deref(), Some("3"));
    assert_eq!(ingested(&weft), 0, "the second start imports nothing");
}
