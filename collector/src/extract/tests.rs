//! Extraction over real-format lines of each framework.

use super::*;

fn extract(line: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    MetricExtractor::default().extract(line, &mut out);
    out.into_iter().map(|(k, v)| (k.into_owned(), v)).collect()
}

fn get(found: &[(String, f64)], key: &str) -> Option<f64> {
    found.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

#[test]
fn hugging_face_trainer_dicts() {
    let found = extract("{'loss': 0.3012, 'grad_norm': 1.2345678, 'learning_rate': 4.985e-05, 'epoch': 0.01}");
    assert_eq!(get(&found, "loss"), Some(0.3012));
    assert_eq!(get(&found, "learning_rate"), Some(4.985e-05));
    assert_eq!(get(&found, "epoch"), Some(0.01));
    assert_eq!(get(&found, "grad_norm"), Some(1.2345678));
    let nan = extract("{'loss': nan, 'learning_rate': 2e-05, 'epoch': 1.0}");
    assert!(get(&nan, "loss").unwrap().is_nan());
    let eval = extract("{'eval_loss': 0.41, 'eval_runtime': 12.5, 'eval_samples_per_second': 80.1, 'epoch': 1.0}");
    assert_eq!(get(&eval, "eval_samples_per_second"), Some(80.1));
}

#[test]
fn json_and_logfmt_with_training_keys_only() {
    let found = extract(r#"{"step": 1200, "loss": 0.31, "lr": 0.0003, "tokens_per_sec": 51234.5, "run": "exp-7"}"#);
    assert_eq!(get(&found, "step"), Some(1200.0));
    assert_eq!(get(&found, "learning_rate"), Some(0.0003));
    assert_eq!(found.len(), 4);
    assert!(
        extract(r#"{"level":"info","status":200,"latency_ms":12.5}"#).is_empty(),
        "an access log is not training output"
    );
    let found = extract("ts=2026-11-25T10:00:00Z level=info step=300 loss=0.287 lr=1.2e-4 throughput=812.5");
    assert_eq!(
        (get(&found, "step"), get(&found, "loss"), get(&found, "throughput")),
        (Some(300.0), Some(0.287), Some(812.5))
    );
    assert!(extract("level=info msg=connected retries=3").is_empty());
}

/// Each training key alone, spelled as loggers do, still marks a JSON line
/// past the cheap check that skips parsing lines without one.
#[test]
fn json_lines_with_any_training_key_spelling_are_parsed() {
    for key in [
        "LR",
        "Learning Rate",
        "GLOBAL_STEP",
        "Iter",
        "tokens/sec",
        "Samples Per Second",
        "Grad-Norm",
        "Perplexity",
        "Epoch",
        "eval_loss",
    ] {
        let found = extract(&format!(r#"{{"{key}": 3.5, "latency_ms": 12}}"#));
        assert_eq!(found.len(), 2, "{key}: {found:?}");
    }
    assert!(extract(r#"{"status": 200, "latency_ms": 12, "prompt_tokens": 3}"#).is_empty());
    // The same for logfmt keys (one token each).
    for key in [
        "LR",
        "Learning_Rate",
        "GLOBAL_STEP",
        "Iter",
        "tokens/sec",
        "Samples-Per-Second",
        "Grad-Norm",
        "Perplexity",
        "Epoch",
        "eval_loss",
    ] {
        let found = extract(&format!("{key}=3.5 latency_ms=12"));
        assert_eq!(found.len(), 2, "{key}: {found:?}");
    }
}

#[test]
fn tqdm_and_lightning_progress_bars() {
    let found = extract(" 45%|████▌     | 450/1000 [01:23<01:40,  5.40it/s]");
    assert_eq!(
        (
            get(&found, "step"),
            get(&found, "total_steps"),
            get(&found, "iterations_per_second")
        ),
        (Some(450.0), Some(1000.0), Some(5.40))
    );
    let found = extract("Epoch 3:  45%|████▌     | 450/1000 [01:23<01:40,  5.40it/s, loss=0.321, v_num=0, train_acc=0.91]");
    assert_eq!(get(&found, "epoch"), Some(3.0));
    assert_eq!(get(&found, "loss"), Some(0.321));
    assert_eq!(get(&found, "train_acc"), Some(0.91));
    assert_eq!(get(&found, "v_num"), None);
    let slow = extract("  2%|▏         | 20/1000 [00:40<32:40,  2.00s/it]");
    assert_eq!(get(&slow, "seconds_per_iteration"), Some(2.0));
}

#[test]
fn lightning_rich_bars() {
    // As a pipe received it from Lightning 2.6 with rich installed (docs/gpu.md).
    let found = extract("Epoch 1/1  ━━━━━━━━━━━━━━━━━ 40/40 0:00:00 •        390.10it/s train_loss: 0.210");
    assert_eq!(
        (
            get(&found, "epoch"),
            get(&found, "step"),
            get(&found, "total_steps"),
            get(&found, "iterations_per_second"),
            get(&found, "train_loss")
        ),
        (Some(1.0), Some(40.0), Some(40.0), Some(390.10), Some(0.210))
    );
    let found = extract("Epoch 0/9  ━━━━━━━╸━━━━━━━━━ 18/-- 0:00:03 • -:--:-- 5.23it/s v_num: 0.000 train/loss: 0.512 val_acc: 0.910");
    assert_eq!(get(&found, "step"), Some(18.0));
    assert_eq!(get(&found, "total_steps"), None, "an unknown total");
    assert_eq!(get(&found, "v_num"), None);
    assert_eq!(get(&found, "val_acc"), Some(0.910));
    assert_eq!(get(&found, "train_loss"), Some(0.512), "{found:?}");
    // Lines with a rate and a slash that are not rich's layout.
    for line in [
        "rank 3/8 throughput 12.5it/s loss: 0.5",
        "2024/05/01 10:00:00 copied 125it/s speed: 3.0",
        "x\u{a0}1.5it/s",
    ] {
        assert_eq!(extract(line), vec![], "{line}");
    }
}

#[test]
fn evaluation_bars_do_not_move_the_training_step() {
    for line in [
        "Validation DataLoader 0:  50%|█████     | 5/10 [00:00<00:00, 100.00it/s]",
        "Sanity Checking DataLoader 0: 100%|██████████| 2/2 [00:00<00:00, 50.00it/s]",
        "Validation DataLoader 0 ━━━━━━━━━━━━━━━━━ 10/10 0:00:00 • 0:00:00 50.00it/s",
        "Testing DataLoader 0: 100%|██████████| 10/10 [00:00<00:00, 80.00it/s]",
        // Hugging Face's evaluation bar through a pipe (transformers 5.17 on
        // an H200, docs/gpu.md): nested, so tqdm moves the cursor back up.
        "\r100%|██████████| 16/16 [00:00<00:00, 270.50it/s]\x1b[A",
        "\r  0%|          | 0/16 [00:00<?, ?it/s]\x1b[A\r                                               \r",
    ] {
        let found = extract(line);
        assert_eq!(
            (get(&found, "step"), get(&found, "iterations_per_second")),
            (None, None),
            "{line}: {found:?}"
        );
    }
}

#[test]
fn a_bar_redrawn_through_a_pipe_is_read_at_its_last_redraw() {
    // tqdm writing to a pipe, as under the kubelet: every redraw on one line.
    let redraws = "\r  0%|          | 0/60 [00:00<?, ?it/s]\r  2%|▏         | 1/60 [00:00<00:30,  1.92it/s]\r 10%|█         | 6/60 [00:01<00:07,  7.10it/s]\r";
    let found = extract(redraws);
    assert_eq!(
        (
            get(&found, "step"),
            get(&found, "total_steps"),
            get(&found, "iterations_per_second")
        ),
        (Some(6.0), Some(60.0), Some(7.10))
    );
    // Minutes of redraws: longer than a line read for metrics, read at its end.
    let mut long = String::new();
    for step in 0..=600 {
        long.push_str(&format!("\r {:>3}%|          | {step}/600 [00:10<00:10,  9.50it/s]", step / 6));
    }
    assert!(long.len() > 16 * 1024);
    let found = extract(&long);
    assert_eq!((get(&found, "step"), get(&found, "total_steps")), (Some(600.0), Some(600.0)));
    // A message written over the bar (`tqdm.write`, Lightning's `print`)
    // is what the line shows last: read as that message.
    let written = extract("\r 10%|█         | 6/60 [00:01<00:07,  7.10it/s]\r                    \rstep=5 loss=0.5");
    assert_eq!(
        (get(&written, "step"), get(&written, "loss"), get(&written, "total_steps")),
        (Some(5.0), Some(0.5), None)
    );
    // Keras redraws its bar the same way.
    let keras = extract("\r 1/100 [>.....] - ETA: 9s - loss: 0.9000\r 37/100 [==>...] - ETA: 3s - loss: 0.4501");
    assert_eq!((get(&keras, "batch"), get(&keras, "loss")), (Some(37.0), Some(0.4501)));
    // A long line without a carriage return is still not read.
    assert!(extract(&format!("loss={} {}", 0.5, "x".repeat(17 * 1024))).is_empty());
}

#[test]
fn keras_progress_lines() {
    let found = extract("100/100 [==============================] - 5s 50ms/step - loss: 0.3012 - accuracy: 0.9123 - val_loss: 0.3521 - val_accuracy: 0.8810");
    assert_eq!(get(&found, "loss"), Some(0.3012));
    assert_eq!(get(&found, "val_accuracy"), Some(0.8810));
    assert_eq!(get(&found, "batch"), Some(100.0));
    let eta = extract(" 37/100 [==========>...................] - ETA: 3s - loss: 0.4501");
    assert_eq!(get(&eta, "loss"), Some(0.4501));
    assert_eq!(get(&eta, "eta"), None);
}

#[test]
fn deepspeed_lines() {
    let found =
        extract("[2026-11-25 10:00:00,000] [INFO] [logging.py:96:log_dist] [Rank 0] step=100, skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]");
    assert_eq!(
        (get(&found, "step"), get(&found, "skipped"), get(&found, "learning_rate")),
        (Some(100.0), Some(0.0), Some(0.0001))
    );
    let found = extract("[Rank 0] steps: 100 loss: 0.3012 iter time (s): 0.512 samples/sec: 62.5");
    assert_eq!(get(&found, "step"), Some(100.0));
    assert_eq!(get(&found, "loss"), Some(0.3012));
    assert_eq!(get(&found, "iter_time_s"), Some(0.512));
    assert_eq!(get(&found, "samples_per_sec"), Some(62.5));
}

#[test]
fn megatron_iteration_lines() {
    let line = " iteration      100/  500000 | consumed samples:        12800 | elapsed time per iteration (ms): 512.3 | learning rate: 1.500E-04 | global batch size:   128 | lm loss: 7.012345E+00 | loss scale: 65536.0 | grad norm: 1.234 | number of skipped iterations:   0 | number of nan iterations:   0 |";
    let found = extract(line);
    assert_eq!(get(&found, "step"), Some(100.0));
    assert_eq!(get(&found, "total_steps"), Some(500000.0));
    assert_eq!(get(&found, "learning_rate"), Some(1.5e-4));
    assert_eq!(get(&found, "lm_loss"), Some(7.012345));
    assert_eq!(get(&found, "elapsed_time_per_iteration_ms"), Some(512.3));
    assert_eq!(get(&found, "number_of_nan_iterations"), Some(0.0));
}

#[test]
fn ordinary_lines_give_nothing() {
    for line in [
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
        "2026-11-25 22:16:18,123 - trainer - WARNING - grad norm is large",
        "NCCL INFO Bootstrap : Using eth0:10.42.1.17<0>",
        "",
    ] {
        assert!(extract(line).is_empty(), "{line}: {:?}", extract(line));
    }
}

#[test]
fn user_rules_add_metrics() {
    let rules = [ExtractRule {
        name: "rl".into(),
        regex: r"episode (?P<episode>\d+) reward (?P<reward>[-0-9.]+)".into(),
    }];
    let extractor = MetricExtractor::new(&rules).unwrap();
    let mut found = Vec::new();
    extractor.extract("episode 12 reward -3.5 (best so far)", &mut found);
    assert_eq!(found, vec![("episode".into(), 12.0), ("reward".into(), -3.5)]);
    assert!(MetricExtractor::new(&[ExtractRule {
        name: "bad".into(),
        regex: "(".into()
    }])
    .is_err());
    assert!(MetricExtractor::new(&[ExtractRule {
        name: "none".into(),
        regex: "x".into()
    }])
    .is_err());
}

#[test]
fn keys_normalize() {
    assert_eq!(normalize_key("Learning Rate"), "learning_rate");
    assert_eq!(normalize_key("elapsed time per iteration (ms)"), "elapsed_time_per_iteration_ms");
    assert_eq!(normalize_key("samples/sec"), "samples_per_sec");
    assert_eq!(normalize_key("tflops/GPU"), "tflops_per_gpu");
    assert_eq!(normalize_key("train/loss"), "train_loss");
    assert_eq!(normalize_key("perf/tokens/s"), "perf_tokens_per_s");
    assert_eq!(normalize_key("global_step"), "step");
    // Keys that are normal already, aliases among them, and keys that
    // look normal but are not (doubled, leading or trailing `_`).
    for (key, normal) in [
        ("loss", "loss"),
        ("grad_norm", "grad_norm"),
        ("top1_acc", "top1_acc"),
        ("lr", "learning_rate"),
        ("steps", "step"),
        ("it_per_s", "iterations_per_second"),
        ("s_per_it", "seconds_per_iteration"),
        ("a__b", "a_b"),
        ("_loss", "loss"),
        ("loss_", "loss"),
        ("_", ""),
        ("Loss", "loss"),
    ] {
        assert_eq!(normalize_key(key), normal, "{key}");
    }
}

#[test]
fn multibyte_text_after_a_colon_does_not_panic() {
    // A `steps:` line steers into the DeepSpeed recognizer; a value token
    // that does not start right after ": " once sliced inside a character.
    let found = extract("[Rank 0] steps: 5 loss:  █ 0.5 note:  损失下降 lr: 0.1");
    assert_eq!(get(&found, "step"), Some(5.0));
    assert_eq!(get(&found, "lr").or(get(&found, "learning_rate")), Some(0.1));
}

proptest::proptest! {
    #[test]
    fn no_line_makes_extraction_panic(line in "(steps: |loss: |step=|iteration |it/s|Epoch | 0:00:01|[ :=|/,\r]|█|━|•|\u{a0}|损|\\PC){0,40}") {
        let _ = extract(&line);
    }
}

#[test]
fn one_value_per_key_and_line_the_last_wins() {
    let found = extract("step=1 loss=0.5 iter=2 lr=0.1 learning_rate=0.2");
    assert_eq!(found.iter().filter(|(k, _)| k == "step").count(), 1, "{found:?}");
    assert_eq!(get(&found, "step"), Some(2.0));
    assert_eq!(get(&found, "learning_rate"), Some(0.2));
    assert_eq!(found.len(), 3, "{found:?}");
    // Past the small-line scan: 40 keys, each twice.
    let many: String = (0..80).map(|i| format!("k{}={i} ", i % 40)).collect::<String>() + "epoch=7";
    let found = extract(&many);
    assert_eq!(found.len(), 41, "{found:?}");
    assert_eq!(get(&found, "k0"), Some(40.0));
}
