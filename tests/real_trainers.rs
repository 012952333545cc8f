//! What real training programs print, read back through `weft standalone`.
//! `tests/data/real-trainers` holds the stdout and stderr of a Hugging Face
//! `Trainer` (transformers 5.17: logs as dicts of quoted values, a tqdm bar
//! redrawn with carriage returns through a pipe, a nested evaluation bar)
//! and a PyTorch Lightning `Trainer` (2.6.6 with rich: rich's bar, printed
//! once as it stops), as `scripts/gpu-check` captured them on an NVIDIA
//! H200 on 2026-11-27 (docs/gpu.md), written as CRI log files.

mod common;

use std::time::Duration;

use common::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/real-trainers");
/// Just after the last captured line.
const AFTER: &str = "2026-11-27T12:41:00Z";

/// Every raw sample of the first series of `selector` in the 10 minutes
/// before [`AFTER`].
fn samples(weft: &Weft, selector: &str) -> Vec<f64> {
    let (_, body) = get_json(
        &weft.url("/api/v1/query"),
        &[("query", &format!("{selector}[10m]")), ("time", AFTER)],
    );
    body["data"]["result"][0]["values"]
        .as_array()
        .map(|values| values.iter().map(|v| v[1].as_str().unwrap().parse().unwrap()).collect())
        .unwrap_or_default()
}

/// The lines of a captured file (the text after the CRI prefix).
fn captured(pod: &str) -> Vec<String> {
    let dir = std::fs::read_dir(DATA)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&format!("ml_{pod}_")))
        .unwrap();
    std::fs::read_to_string(dir.join("trainer/0.log"))
        .unwrap()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap().to_string())
        .collect()
}

#[test]
fn hugging_face_and_lightning_output_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weft = Weft::start(&[
        "standalone",
        "--logs",
        DATA,
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);

    // Hugging Face: each loss it printed, as printed (quoted strings).
    let printed: Vec<f64> = captured("hf-trainer-0")
        .iter()
        .filter_map(|l| l.strip_prefix("{'loss': '"))
        .map(|rest| rest.split('\'').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(printed.len(), 12);
    let losses = wait_for("the trainer's losses", Duration::from_secs(60), || {
        let got = samples(&weft, r#"weft_train_loss{pod="hf-trainer-0"}"#);
        (got.len() >= printed.len()).then_some(got)
    });
    assert_eq!(losses, printed);
    // Its bar: read where each line ends (the last redraw), 60 of 60 at the
    // end, and never the evaluation bar's 16 of 16.
    let steps = samples(&weft, r#"weft_train_step{pod="hf-trainer-0"}"#);
    assert_eq!(steps.last(), Some(&60.0), "{steps:?}");
    assert!(!steps.contains(&16.0), "the evaluation bar's counter: {steps:?}");
    assert_eq!(samples(&weft, r#"weft_train_total_steps{pod="hf-trainer-0"}"#).last(), Some(&60.0));

    // Lightning: rich's bar, printed once as it stops.
    let bar = captured("lightning-0").into_iter().rev().find(|l| l.contains("it/s")).unwrap();
    let loss: f64 = bar.rsplit("train_loss: ").next().unwrap().trim().parse().unwrap();
    let last = |name: &str| {
        wait_for(name, Duration::from_secs(60), || {
            samples(&weft, &format!(r#"weft_train_{name}{{pod="lightning-0"}}"#))
                .last()
                .copied()
        })
    };
    assert_eq!(
        (last("epoch"), last("step"), last("total_steps"), last("train_loss")),
        (1.0, 40.0, 40.0, loss),
        "{bar}"
    );
}
