//! `GET /api/v1/runs/{run}/ranks`: where each rank of a run is — last log
//! line, last step, last tagged event — on a standalone weft tailing a
//! three-rank job whose rank 2 hits the NCCL watchdog and goes quiet.

mod common;

use std::time::Duration;

use common::{get_json, wait_for, PodLogWriter, Weft};

#[test]
fn where_is_each_rank_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(&config, "rules:\n  enabled: false\n").unwrap();
    let ranks: Vec<PodLogWriter> = (0..3)
        .map(|r| PodLogWriter::with_uid(&logs, "ml", &format!("gpt-sft-{r}"), "trainer", &format!("uid-{r}")))
        .collect();
    // Rank 2 stops at step 40 with a watchdog timeout; the others go on.
    let mut text = String::new();
    for step in (10..=40).step_by(10) {
        text.push_str(&PodLogWriter::cri("stdout", "F", &format!(r#"{{"step": {step}, "loss": 2.5}}"#)));
    }
    text.push_str(&PodLogWriter::cri(
        "stderr",
        "F",
        "[rank2]:[E1126 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] [Rank 2] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1523, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600021 milliseconds before timing out.",
    ));
    ranks[2].append(text.as_bytes());
    for writer in &ranks[..2] {
        let mut text = String::new();
        for step in (10..=100).step_by(10) {
            text.push_str(&PodLogWriter::cri("stdout", "F", &format!(r#"{{"step": {step}, "loss": 2.0}}"#)));
        }
        writer.append(text.as_bytes());
    }
    let weft = Weft::standalone(&logs, &data, &config);

    let body = wait_for("all three ranks with steps", Duration::from_secs(60), || {
        let (status, body) = get_json(&weft.url("/api/v1/runs/gpt-sft/ranks"), &[("since", "1h")]);
        assert_eq!(status, 200, "{body}");
        let ranks = body["data"]["ranks"].as_array()?;
        let done = ranks.len() == 3
            && ranks
                .iter()
                .all(|r| r["last_step"]["step"].is_number() && r["last_log"].is_object())
            && ranks[0]["last_step"]["step"] == 100.0
            && ranks[2]["last_event"].is_object();
        done.then_some(body)
    });
    let data = &body["data"];
    let ranks = data["ranks"].as_array().unwrap();
    assert_eq!(
        ranks.iter().map(|r| r["rank"].as_str().unwrap()).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    assert_eq!(ranks[1]["last_step"]["step"], 100.0);
    assert_eq!(ranks[2]["last_step"]["step"], 40.0);
    assert_eq!(ranks[0]["last_log"]["line"], r#"{"step": 100, "loss": 2.0}"#);
    assert_eq!(ranks[0]["pods"], serde_json::json!([{"namespace": "ml", "pod": "gpt-sft-0"}]));
    assert!(ranks[0]["last_event"].is_null(), "rank 0 had no tagged line: {}", ranks[0]);
    let event = &ranks[2]["last_event"];
    assert_eq!(event["ml_event"], "nccl_timeout");
    assert!(event["line"]
        .as_str()
        .unwrap()
        .contains("Watchdog caught collective operation timeout"));
    assert_eq!(ranks[2]["last_log"]["line"], event["line"]);
    assert_eq!(data["first_quiet"]["rank"], "2");
    assert_eq!(data["furthest_behind"], serde_json::json!({"rank": "2", "step": 40.0}));

    // An unknown run has no ranks; bad parameters say what is wrong.
    let (status, body) = get_json(&weft.url("/api/v1/runs/no-such-run/ranks"), &[]);
    assert_eq!((status, body["data"]["ranks"].as_array().map(Vec::len)), (200, Some(0)));
    let (status, body) = get_json(&weft.url("/api/v1/runs/gpt-sft/ranks"), &[("since", "soon")]);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid parameter \"since\""), "{body}");
}
