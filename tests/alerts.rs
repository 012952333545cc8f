//! Alerts end to end with the real binary: a CUDA OOM traceback in a pod
//! log becomes one TrainingJobFailed notification on every chat receiver
//! (signed where the API signs, secrets from env and files, a broken
//! receiver failing alone); a real Alertmanager lists weft's alerts; and a
//! restart in the middle of a pending `for` keeps the alert's start and
//! pages once.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn hmac_b64(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn metric(weft: &Weft, line_start: &str) -> Option<f64> {
    let text = client().get(weft.url("/metrics")).send().ok()?.text().ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_ml_failure_reaches_every_chat_receiver() {
    let capture = Capture::start(&[
        ("/slack", 200, "ok"),
        ("/teams", 202, ""),
        ("/dingtalk", 200, r#"{"errcode":0,"errmsg":"ok"}"#),
        ("/feishu", 200, r#"{"code":0,"msg":"success","data":{}}"#),
        ("/wecom", 200, r#"{"errcode":0,"errmsg":"ok"}"#),
        ("/hook", 200, ""),
        ("/broken", 500, "rollup_error"),
        ("/refused", 200, r#"{"errcode":310000,"errmsg":"sign not match"}"#),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let dingtalk_secret = "SECtest-dingtalk-7f1c2e";
    let feishu_secret = "feishu-test-secret-93ab";
    let secret_file = dir.path().join("dingtalk.secret");
    std::fs::write(&secret_file, format!("{dingtalk_secret}\n")).unwrap();
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            r#"rules:
  evaluation_interval: 1s
alerting:
  grafana_url: http://grafana.example:3000
  max_attempts: 2
  route:
    receiver: ml-team
    group_by: [alertname, run]
    group_wait: 1s
    group_interval: 5s
    repeat_interval: 1h
  receivers:
    - name: ml-team
      slack:
        - url: {{env: WEFT_TEST_SLACK_URL}}
        - url: {{env: WEFT_TEST_BROKEN_URL}}
      teams:
        - url: {{value: "{teams}"}}
      dingtalk:
        - url: {{value: "{dingtalk}"}}
          secret: {{file: {secret_file}}}
        - url: {{value: "{refused}"}}
      feishu:
        - url: {{value: "{feishu}"}}
          secret: {{env: WEFT_TEST_FEISHU_SECRET}}
      wecom:
        - url: {{value: "{wecom}"}}
      webhook:
        - url: {{value: "{hook}"}}
"#,
            teams = capture.url("/teams/workflows/abc"),
            dingtalk = capture.url("/dingtalk/robot/send?access_token=tok-8f3a"),
            refused = capture.url("/refused/robot/send?access_token=tok-refused"),
            feishu = capture.url("/feishu/open-apis/bot/v2/hook/hook-5e1d"),
            wecom = capture.url("/wecom/cgi-bin/webhook/send?key=wecom-key-42aa"),
            hook = capture.url("/hook"),
            secret_file = secret_file.display(),
        ),
    )
    .unwrap();
    let logs = dir.path().join("pods");
    let writer = PodLogWriter::new(&logs, "ml", "llama-worker-2", "trainer");
    for line in [
        "step 120 loss 1.93",
        "Traceback (most recent call last):",
        "  File \"/workspace/train.py\", line 212, in <module>",
        "    loss.backward()",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB",
    ] {
        writer.append(PodLogWriter::cri("stderr", "F", line).as_bytes());
    }
    let data = dir.path().join("data");
    let slack_url = capture.url("/slack/services/T000/B000/slack-token-77c1");
    let broken_url = capture.url("/broken/services/T000/B000/x");
    let weft = Weft::start_with(
        &standalone_args(&logs, &data, &config)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[
            ("WEFT_TEST_SLACK_URL", slack_url.as_str()),
            ("WEFT_TEST_BROKEN_URL", broken_url.as_str()),
            ("WEFT_TEST_FEISHU_SECRET", feishu_secret),
            ("RUST_LOG", "info"),
        ],
        true,
    );
    let slack = wait_for("the Slack notification", Duration::from_secs(90), || {
        capture.received("/slack").pop()
    });

    // Slack: fallback text and blocks naming run, pod, event, value and the
    // line that explains it, with a link to the pod's logs at that minute.
    let body = slack.json();
    assert!(
        body["text"].as_str().unwrap().starts_with("[FIRING:1] TrainingJobFailed run=llama"),
        "{body}"
    );
    let text = body["blocks"][1]["text"]["text"].as_str().unwrap();
    for expected in [
        "Training run llama failed: cuda_oom in pod llama-worker-2",
        "run: llama",
        "namespace: ml",
        "value: 1",
        "> torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "<http://grafana.example:3000/explore?schemaVersion=1&orgId=1&panes=",
        "|Logs at that minute>",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    let link = text.split("<http").nth(1).unwrap().split('|').next().unwrap();
    let query: Vec<(String, String)> = serde_urlencoded::from_str(link.split_once('?').unwrap().1).unwrap();
    let panes: serde_json::Value = serde_json::from_str(&query.iter().find(|(k, _)| k == "panes").unwrap().1).unwrap();
    assert_eq!(panes["weft"]["queries"][0]["expr"], r#"{namespace="ml", pod="llama-worker-2"}"#);

    // DingTalk: signed URL, checked with the contract's formula.
    let dingtalk = wait_for("DingTalk", Duration::from_secs(30), || capture.received("/dingtalk").pop());
    let query = dingtalk.query();
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("access_token"), "tok-8f3a");
    let ts = get("timestamp");
    assert_eq!(
        get("sign"),
        hmac_b64(dingtalk_secret.as_bytes(), format!("{ts}\n{dingtalk_secret}").as_bytes())
    );
    let body = dingtalk.json();
    assert_eq!(body["msgtype"], "markdown");
    assert!(body["markdown"]["text"].as_str().unwrap().contains("llama-worker-2"));

    // Feishu: signature in the body, key = "<ts>\n<secret>", empty message.
    let feishu = wait_for("Feishu", Duration::from_secs(30), || capture.received("/feishu").pop());
    let body = feishu.json();
    let ts = body["timestamp"].as_str().unwrap();
    assert_eq!(body["sign"], hmac_b64(format!("{ts}\n{feishu_secret}").as_bytes(), b""));
    assert_eq!(body["msg_type"], "text");
    assert!(body["content"]["text"].as_str().unwrap().contains("cuda_oom"));

    let wecom = wait_for("WeCom", Duration::from_secs(30), || capture.received("/wecom").pop());
    assert!(wecom.target.ends_with("key=wecom-key-42aa"));
    assert_eq!(wecom.json()["msgtype"], "markdown");
    assert!(wecom.json()["markdown"]["content"].as_str().unwrap().len() <= 4096);

    let teams = wait_for("Teams", Duration::from_secs(30), || capture.received("/teams").pop());
    let card = teams.json();
    assert_eq!(card["type"], "message");
    assert_eq!(card["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(card["attachments"][0]["content"]["type"], "AdaptiveCard");

    // The generic webhook gets Alertmanager's v4 payload.
    let hook = wait_for("webhook", Duration::from_secs(30), || capture.received("/hook").pop());
    let body = hook.json();
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "ml-team");
    assert_eq!(
        body["groupLabels"],
        serde_json::json!({"alertname": "TrainingJobFailed", "run": "llama"})
    );
    assert_eq!(body["alerts"][0]["labels"]["severity"], "critical");
    assert_eq!(body["alerts"][0]["annotations"]["event"], "cuda_oom");
    assert_eq!(body["alerts"][0]["fingerprint"].as_str().unwrap().len(), 16);

    // The broken receiver was retried and failed alone; the one whose API
    // answered 200 with an error code counts as failed too.
    wait_for("failures counted", Duration::from_secs(30), || {
        let slack = metric(&weft, r#"weft_notifications_failed_total{integration="slack",receiver="ml-team"}"#)?;
        let dingtalk = metric(
            &weft,
            r#"weft_notifications_failed_total{integration="dingtalk",receiver="ml-team"}"#,
        )?;
        (slack == 1.0 && dingtalk == 1.0).then_some(())
    });
    assert_eq!(capture.received("/broken").len(), 2, "max_attempts: 2");
    assert_eq!(capture.received("/refused").len(), 1, "a refusal is not retried");
    assert_eq!(capture.received("/slack").len(), 1, "one page per run");

    let log = weft.stderr.as_ref().unwrap().lock().unwrap().clone();
    for secret in [
        dingtalk_secret,
        feishu_secret,
        "tok-8f3a",
        "tok-refused",
        "wecom-key-42aa",
        "slack-token-77c1",
        "hook-5e1d",
    ] {
        assert!(!log.contains(secret), "secret {secret:?} in the log:\n{log}");
    }
    weft.terminate();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rules_file(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn a_real_alertmanager_lists_weft_alerts() {
    let found = Command::new("prometheus-alertmanager")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "prometheus-alertmanager not found: run scripts/install-test-deps (Debian package prometheus-alertmanager)"
    );
    let dir = tempfile::tempdir().unwrap();
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(&am_config, "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n").unwrap();
    let port = free_port();
    let mut alertmanager = Command::new("prometheus-alertmanager")
        .args([
            &format!("--config.file={}", am_config.display()),
            &format!("--storage.path={}", dir.path().join("am").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am = format!("http://127.0.0.1:{port}");
    wait_for("Alertmanager ready", Duration::from_secs(30), || {
        client()
            .get(format!("{am}/-/ready"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    });
    let rules = rules_file(
        dir.path(),
        r#"groups:
  - name: smoke
    interval: 1s
    rules:
      - alert: GpuXid
        expr: vector(79)
        labels:
          severity: critical
          run: llama
        annotations:
          summary: "Xid {{ $value }} on the node"
"#,
    );
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "rules:\n  builtin: false\n  files: [{}]\nalerting:\n  route:\n    receiver: am\n    group_wait: 0s\n  receivers:\n    - name: am\n      alertmanager:\n        - url: {am}\n",
            rules.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("pods");
    std::fs::create_dir_all(&logs).unwrap();
    let weft = Weft::standalone(&logs, &data, &config);
    let listed = wait_for("Alertmanager lists the alert", Duration::from_secs(60), || {
        let alerts: serde_json::Value = client().get(format!("{am}/api/v2/alerts")).send().ok()?.json().ok()?;
        alerts.as_array()?.iter().find(|a| a["labels"]["alertname"] == "GpuXid").cloned()
    });
    assert_eq!(listed["status"]["state"], "active", "{listed}");
    assert_eq!(listed["labels"]["run"], "llama");
    assert_eq!(listed["annotations"]["summary"], "Xid 79 on the node");
    assert!(
        listed["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}", weft.addr)),
        "{listed}"
    );
    weft.terminate();
    let _ = alertmanager.kill();
    let _ = alertmanager.wait();
}

#[test]
fn a_restart_keeps_a_pending_for_and_pages_once() {
    let capture = Capture::start(&[("/hook", 200, "")]);
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(
        dir.path(),
        r#"groups:
  - name: restart
    interval: 1s
    rules:
      - alert: SlowBurn
        expr: vector(1)
        for: 6s
        labels:
          run: llama
"#,
    );
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "rules:\n  builtin: false\n  files: [{}]\nalerting:\n  route:\n    receiver: hook\n    group_wait: 0s\n    group_interval: 1s\n  receivers:\n    - name: hook\n      webhook:\n        - url: {{value: \"{}\"}}\n",
            rules.display(),
            capture.url("/hook")
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("pods");
    std::fs::create_dir_all(&logs).unwrap();
    let args = standalone_args(&logs, &data, &config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let alert_of = |weft: &Weft| -> Option<serde_json::Value> {
        let (_, body) = get_json(&weft.url("/api/v1/alerts"), &[]);
        body["data"]["alerts"].as_array()?.first().cloned()
    };
    let first = Weft::start(&args);
    let pending = wait_for("the alert pending", Duration::from_secs(30), || {
        alert_of(&first).filter(|a| a["state"] == "pending")
    });
    let active_at = pending["activeAt"].as_str().unwrap().to_string();
    first.kill9();

    let second = Weft::start(&args);
    let firing = wait_for("the alert firing after the restart", Duration::from_secs(30), || {
        alert_of(&second).filter(|a| a["state"] == "firing")
    });
    assert_eq!(
        firing["activeAt"],
        active_at.as_str(),
        "the pending `for` went on from where it was"
    );
    let page = wait_for("the page", Duration::from_secs(30), || capture.received("/hook").pop());
    // As Prometheus: the alert starts when it fires, `for` after it went pending.
    let starts_at = page.json()["alerts"][0]["startsAt"].as_str().unwrap().to_string();
    assert!(starts_at > active_at, "{starts_at} after {active_at}");
    // Let the notifier see the group again and hold it back before the kill.
    wait_for("a held-back flush", Duration::from_secs(30), || {
        metric(&second, "weft_notifications_suppressed_total").filter(|v| *v >= 1.0)
    });
    second.kill9();

    let third = Weft::start(&args);
    wait_for("two held-back flushes after the restart", Duration::from_secs(30), || {
        metric(&third, "weft_notifications_suppressed_total").filter(|v| *v >= 2.0)
    });
    assert_eq!(alert_of(&third).unwrap()["state"], "firing");
    assert_eq!(capture.received("/hook").len(), 1, "no second page after the restarts");
    third.terminate();
}
