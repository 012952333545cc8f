//! What each chat or alerting target receives and how its reply is read:
//! payloads (Slack blocks, a Teams adaptive card, DingTalk and WeCom
//! markdown, Feishu text, Alertmanager's webhook v4 and `/api/v2/alerts`
//! bodies), DingTalk and Feishu signatures, and success checks that read
//! the chat APIs' own `errcode` / `code` fields, not only the HTTP status.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use weft_model::LabelSet;

use super::config::Secret;

/// One alert as notifications show it.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyAlert {
    pub fingerprint: String,
    pub labels: LabelSet,
    pub annotations: BTreeMap<String, String>,
    /// Unix ms.
    pub starts_at: i64,
    /// Unix ms; set once resolved.
    pub ends_at: Option<i64>,
    pub value: f64,
    pub generator_url: String,
    /// Grafana Explore view of the pod's logs at the alert's minute.
    pub explore_url: Option<String>,
}

impl NotifyAlert {
    pub fn is_resolved(&self) -> bool {
        self.ends_at.is_some()
    }
}

/// One notification: a group's alerts for one receiver.
#[derive(Clone, Debug)]
pub struct Notification<'a> {
    pub receiver: &'a str,
    pub group_key: &'a str,
    pub group_labels: &'a LabelSet,
    pub alerts: &'a [NotifyAlert],
    pub external_url: &'a str,
    /// Unix ms of the send.
    pub now: i64,
    /// How often the group is sent again (Alertmanager targets use it to
    /// keep firing alerts from timing out).
    pub group_interval_ms: i64,
}

impl Notification<'_> {
    fn firing(&self) -> usize {
        self.alerts.iter().filter(|a| !a.is_resolved()).count()
    }

    fn status(&self) -> &'static str {
        if self.firing() > 0 {
            "firing"
        } else {
            "resolved"
        }
    }

    /// `[FIRING:2] TrainingJobFailed run=llama-7b`, Alertmanager's default title.
    pub fn title(&self) -> String {
        let mut title = match self.firing() {
            0 => "[RESOLVED]".to_string(),
            n => format!("[FIRING:{n}]"),
        };
        if let Some(name) = self
            .group_labels
            .get("alertname")
            .or_else(|| self.alerts.first().and_then(|a| a.labels.get("alertname")))
        {
            title.push(' ');
            title.push_str(name);
        }
        for (k, v) in self.group_labels.iter().filter(|(k, _)| *k != "alertname") {
            title.push_str(&format!(" {k}={v}"));
        }
        title
    }

    fn common(&self, pick: impl Fn(&NotifyAlert) -> Vec<(String, String)>) -> BTreeMap<String, String> {
        let mut common: Option<BTreeMap<String, String>> = None;
        for alert in self.alerts {
            let pairs: BTreeMap<String, String> = pick(alert).into_iter().collect();
            common = Some(match common {
                None => pairs,
                Some(c) => c.into_iter().filter(|(k, v)| pairs.get(k) == Some(v)).collect(),
            });
        }
        common.unwrap_or_default()
    }
}

/// RFC 3339 with milliseconds, as Alertmanager writes times.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

fn labels_json(labels: &LabelSet) -> Value {
    labels.to_json()
}

/// A human line of one alert: what, where, the value, the evidence, a link.
struct AlertText {
    headline: String,
    facts: Vec<(String, String)>,
    detail: Option<String>,
    link: Option<String>,
}

fn alert_text(alert: &NotifyAlert) -> AlertText {
    let name = alert.labels.get("alertname").unwrap_or("alert");
    let headline = alert.annotations.get("summary").cloned().unwrap_or_else(|| name.to_string());
    let mut facts = Vec::new();
    for key in [
        "run",
        "namespace",
        "pod",
        "ml_event",
        "event",
        "xid",
        "gpu",
        "node",
        "Hostname",
        "severity",
    ] {
        if let Some(v) = alert.labels.get(key).filter(|v| !v.is_empty()) {
            facts.push((key.to_string(), v.to_string()));
        }
    }
    if !alert.is_resolved() {
        facts.push(("value".into(), super::super::rules::template::format_go_value(alert.value)));
    }
    facts.push(("since".into(), rfc3339_ms(alert.starts_at)));
    let detail = alert
        .annotations
        .get("description")
        .or_else(|| alert.annotations.get("line"))
        .filter(|d| !d.is_empty())
        .cloned();
    AlertText {
        headline,
        facts,
        detail,
        link: alert.explore_url.clone(),
    }
}

/// Most alerts spelled out in one chat message.
const MAX_CHAT_ALERTS: usize = 10;

/// Chat markdown flavours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Slack,
    Markdown,
    Plain,
}

/// Makes text from alerts (pod output included) inert in a chat message:
/// no `<!channel>` or `<@user>` mentions, no spoofed links.
fn inert(text: &str, flavour: Flavour) -> String {
    match flavour {
        Flavour::Slack => text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"),
        Flavour::Markdown => text
            .replace("<@", "< @")
            .replace("@all", "@\u{200b}all")
            .replace('[', "\\[")
            .replace("](", "\\]("),
        Flavour::Plain => text.replace("<at", "< at"),
    }
}

fn chat_text(n: &Notification<'_>, flavour: Flavour, max_bytes: usize) -> String {
    let bold = |t: &str| match flavour {
        Flavour::Slack => format!("*{t}*"),
        Flavour::Markdown => format!("**{t}**"),
        Flavour::Plain => t.to_string(),
    };
    let link = |url: &str, text: &str| match flavour {
        Flavour::Slack => format!("<{url}|{text}>"),
        Flavour::Markdown => format!("[{text}]({url})"),
        Flavour::Plain => format!("{text}: {url}"),
    };
    let mut out = String::new();
    for (i, alert) in n.alerts.iter().enumerate() {
        if i == MAX_CHAT_ALERTS {
            out.push_str(&format!("… and {} more\n", n.alerts.len() - MAX_CHAT_ALERTS));
            break;
        }
        let text = alert_text(alert);
        let state = if alert.is_resolved() { "RESOLVED" } else { "FIRING" };
        out.push_str(&format!("{} {}\n", bold(state), inert(&text.headline, flavour)));
        let facts: Vec<String> = text.facts.iter().map(|(k, v)| format!("{k}: {}", inert(v, flavour))).collect();
        out.push_str(&facts.join(" · "));
        out.push('\n');
        if let Some(detail) = &text.detail {
            let detail = inert(detail, flavour);
            let detail: String = detail.lines().take(3).collect::<Vec<_>>().join("\n> ");
            out.push_str(&format!("> {detail}\n"));
        }
        if let Some(url) = &text.link {
            out.push_str(&link(url, "Logs at that minute"));
            out.push('\n');
        }
        out.push('\n');
    }
    truncate(out.trim_end(), max_bytes)
}

fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// DingTalk's signature: `base64(HMAC-SHA256(secret, "<ts_ms>\n<secret>"))`.
pub fn dingtalk_sign(secret: &str, ts_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{ts_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Feishu's signature: `base64(HMAC-SHA256(key = "<ts_s>\n<secret>", message = ""))`.
pub fn feishu_sign(secret: &str, ts_s: i64) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(format!("{ts_s}\n{secret}").as_bytes()).expect("HMAC takes any key");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn url_encode(value: &str) -> String {
    serde_urlencoded::to_string([("v", value)]).expect("strings encode")[2..].to_string()
}

/// A target with its secrets resolved.
#[derive(Clone, Debug)]
pub enum Integration {
    Slack { url: Secret },
    Teams { url: Secret },
    DingTalk { url: Secret, secret: Option<Secret> },
    Feishu { url: Secret, secret: Option<Secret> },
    WeCom { url: Secret },
    Webhook { url: Secret, max_alerts: usize },
    Alertmanager { url: String },
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug)]
pub struct DeliveryError {
    pub retry: bool,
    pub message: String,
}

impl Integration {
    /// The name used in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Integration::Slack { .. } => "slack",
            Integration::Teams { .. } => "teams",
            Integration::DingTalk { .. } => "dingtalk",
            Integration::Feishu { .. } => "feishu",
            Integration::WeCom { .. } => "wecom",
            Integration::Webhook { .. } => "webhook",
            Integration::Alertmanager { .. } => "alertmanager",
        }
    }

    /// The URL and JSON body of a notification.
    pub fn request(&self, n: &Notification<'_>) -> (String, Value) {
        match self {
            Integration::Slack { url } => {
                let text = chat_text(n, Flavour::Slack, 2900);
                let title = n.title();
                (
                    url.0.clone(),
                    json!({
                        "text": format!("{title}\n{text}"),
                        "blocks": [
                            {"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150)}},
                            {"type": "section", "text": {"type": "mrkdwn", "text": text}}
                        ]
                    }),
                )
            }
            Integration::Teams { url } => {
                let mut body = vec![json!({"type": "TextBlock", "text": n.title(), "weight": "Bolder", "size": "Medium", "wrap": true})];
                for block in chat_text(n, Flavour::Markdown, 20_000).split("\n\n") {
                    body.push(json!({"type": "TextBlock", "text": block.replace('\n', "\n\n"), "wrap": true}));
                }
                (
                    url.0.clone(),
                    json!({
                        "type": "message",
                        "attachments": [{
                            "contentType": "application/vnd.microsoft.card.adaptive",
                            "contentUrl": null,
                            "content": {
                                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                                "type": "AdaptiveCard",
                                "version": "1.2",
                                "body": body,
                                "msteams": {"width": "full"}
                            }
                        }]
                    }),
                )
            }
            Integration::DingTalk { url, secret } => {
                let mut target = url.0.clone();
                if let Some(secret) = secret {
                    let sign = dingtalk_sign(&secret.0, n.now);
                    target.push(if target.contains('?') { '&' } else { '?' });
                    target.push_str(&format!("timestamp={}&sign={}", n.now, url_encode(&sign)));
                }
                let title = n.title();
                let text = format!("### {title}\n\n{}", chat_text(n, Flavour::Markdown, 18_000).replace('\n', "\n\n"));
                (
                    target,
                    json!({"msgtype": "markdown", "markdown": {"title": truncate(&title, 64), "text": text}, "at": {"isAtAll": false}}),
                )
            }
            Integration::Feishu { url, secret } => {
                let text = format!("{}\n{}", n.title(), chat_text(n, Flavour::Plain, 18_000));
                let mut body = json!({"msg_type": "text", "content": {"text": text}});
                if let Some(secret) = secret {
                    let ts = n.now.div_euclid(1000);
                    body["timestamp"] = json!(ts.to_string());
                    body["sign"] = json!(feishu_sign(&secret.0, ts));
                }
                (url.0.clone(), body)
            }
            Integration::WeCom { url } => {
                let title = n.title();
                // WeCom markdown is capped at 4096 bytes.
                let text = truncate(&format!("**{title}**\n{}", chat_text(n, Flavour::Markdown, 4096)), 4096);
                (url.0.clone(), json!({"msgtype": "markdown", "markdown": {"content": text}}))
            }
            Integration::Webhook { url, max_alerts } => (url.0.clone(), webhook_v4(n, *max_alerts)),
            Integration::Alertmanager { url } => (
                format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                Value::Array(
                    n.alerts
                        .iter()
                        .map(|a| {
                            json!({
                                "labels": labels_json(&a.labels),
                                "annotations": a.annotations,
                                "startsAt": rfc3339_ms(a.starts_at),
                                // A firing alert not refreshed within this
                                // time resolves on its own, as Prometheus'.
                                "endsAt": rfc3339_ms(a.ends_at.unwrap_or(n.now + (4 * n.group_interval_ms).max(15 * 60 * 1000))),
                                "generatorURL": a.generator_url,
                            })
                        })
                        .collect(),
                ),
            ),
        }
    }

    /// Reads a reply: the HTTP status and, for chat APIs that answer 200
    /// on failure, their own result code.
    pub fn check_response(&self, status: u16, body: &str) -> Result<(), DeliveryError> {
        let snippet = truncate(body.trim(), 200);
        if status == 429 || status >= 500 {
            return Err(DeliveryError {
                retry: true,
                message: format!("HTTP {status}: {snippet}"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(DeliveryError {
                retry: false,
                message: format!("HTTP {status}: {snippet}"),
            });
        }
        let code = |field: &str| -> Result<i64, DeliveryError> {
            let parsed: Value = serde_json::from_str(body).map_err(|_| DeliveryError {
                retry: false,
                message: format!("reply is not JSON: {snippet}"),
            })?;
            Ok(parsed
                .get(field)
                .or_else(|| parsed.get("StatusCode"))
                .and_then(Value::as_i64)
                .unwrap_or(-1))
        };
        let (code, rate_limited): (i64, &[i64]) = match self {
            Integration::DingTalk { .. } => (code("errcode")?, &[130101, 130102]),
            Integration::WeCom { .. } => (code("errcode")?, &[45009, 45033]),
            Integration::Feishu { .. } => (code("code")?, &[11232, 9499]),
            _ => return Ok(()),
        };
        match code {
            0 => Ok(()),
            c => Err(DeliveryError {
                retry: rate_limited.contains(&c),
                message: format!("{} refused the message (code {c}): {snippet}", self.kind()),
            }),
        }
    }
}

/// Alertmanager's webhook payload, version 4.
pub fn webhook_v4(n: &Notification<'_>, max_alerts: usize) -> Value {
    let kept = if max_alerts == 0 {
        n.alerts.len()
    } else {
        max_alerts.min(n.alerts.len())
    };
    let common_labels = n.common(|a| a.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let common_annotations = n.common(|a| a.annotations.clone().into_iter().collect());
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.alerts.len() - kept,
        "status": n.status(),
        "receiver": n.receiver,
        "groupLabels": labels_json(n.group_labels),
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": n.external_url,
        "alerts": n.alerts[..kept].iter().map(|a| json!({
            "status": if a.is_resolved() { "resolved" } else { "firing" },
            "labels": labels_json(&a.labels),
            "annotations": a.annotations,
            "startsAt": rfc3339_ms(a.starts_at),
            "endsAt": a.ends_at.map(rfc3339_ms).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "generatorURL": a.generator_url,
            "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_contract_vectors() {
        assert_eq!(
            dingtalk_sign("SECexample0123456789", 1_700_000_000_000),
            "figG6qqCA/lRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ="
        );
        assert_eq!(
            url_encode("figG6qqCA/lRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ="),
            "figG6qqCA%2FlRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ%3D"
        );
        assert_eq!(
            feishu_sign("feishu-example-secret", 1_700_000_000),
            "DS3k1SxyKR0z861XN3jL2+Qg0s5yv7HuVSIWeN5oTKc="
        );
    }

    fn alert() -> NotifyAlert {
        NotifyAlert {
            fingerprint: "c4a6d1d0e2b3f5a7".into(),
            labels: LabelSet::from_pairs([("alertname", "GpuXid"), ("pod", "train-0"), ("run", "train"), ("xid", "79")]),
            annotations: BTreeMap::from([("summary".to_string(), "Xid 79 on train-0".to_string())]),
            starts_at: 1_700_000_000_000,
            ends_at: None,
            value: 1.0,
            generator_url: "http://weft/x".into(),
            explore_url: Some("http://grafana/explore?x".into()),
        }
    }

    fn notification<'a>(alerts: &'a [NotifyAlert], labels: &'a LabelSet) -> Notification<'a> {
        Notification {
            receiver: "ml",
            group_key: "{}:{alertname=\"GpuXid\"}",
            group_labels: labels,
            alerts,
            external_url: "http://weft:3100",
            now: 1_700_000_000_000,
            group_interval_ms: 300_000,
        }
    }

    #[test]
    fn signed_requests_carry_timestamp_and_sign() {
        let alerts = [alert()];
        let labels = LabelSet::from_pairs([("alertname", "GpuXid")]);
        let n = notification(&alerts, &labels);
        let dingtalk = Integration::DingTalk {
            url: Secret("https://oapi.dingtalk.com/robot/send?access_token=T".into()),
            secret: Some(Secret("SECexample0123456789".into())),
        };
        let (url, body) = dingtalk.request(&n);
        assert_eq!(
            url,
            "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000000&sign=figG6qqCA%2FlRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ%3D"
        );
        assert_eq!(body["msgtype"], "markdown");
        assert!(body["markdown"]["text"].as_str().unwrap().contains("Xid 79 on train-0"));
        let feishu = Integration::Feishu {
            url: Secret("https://open.feishu.cn/open-apis/bot/v2/hook/x".into()),
            secret: Some(Secret("feishu-example-secret".into())),
        };
        let (_, body) = feishu.request(&n);
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], "DS3k1SxyKR0z861XN3jL2+Qg0s5yv7HuVSIWeN5oTKc=");
        assert_eq!(body["msg_type"], "text");
    }

    #[test]
    fn chat_replies_are_read_for_their_own_codes() {
        let dingtalk = Integration::DingTalk {
            url: Secret("u".into()),
            secret: None,
        };
        assert!(dingtalk.check_response(200, r#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        let err = dingtalk
            .check_response(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#)
            .unwrap_err();
        assert!(!err.retry && err.message.contains("310000"));
        assert!(
            dingtalk
                .check_response(200, r#"{"errcode":130101,"errmsg":"send too fast"}"#)
                .unwrap_err()
                .retry
        );
        let feishu = Integration::Feishu {
            url: Secret("u".into()),
            secret: None,
        };
        assert!(feishu.check_response(200, r#"{"code":0,"msg":"success"}"#).is_ok());
        assert!(
            !feishu
                .check_response(200, r#"{"code":19021,"msg":"sign match fail"}"#)
                .unwrap_err()
                .retry
        );
        assert!(
            feishu
                .check_response(200, r#"{"code":11232,"msg":"frequency limited"}"#)
                .unwrap_err()
                .retry
        );
        let wecom = Integration::WeCom { url: Secret("u".into()) };
        assert!(wecom
            .check_response(200, r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#)
            .is_err());
        let slack = Integration::Slack { url: Secret("u".into()) };
        assert!(slack.check_response(200, "ok").is_ok());
        assert!(slack.check_response(503, "").unwrap_err().retry);
        assert!(slack.check_response(429, "").unwrap_err().retry);
        assert!(!slack.check_response(404, "channel_not_found").unwrap_err().retry);
    }

    #[test]
    fn pod_output_cannot_mention_or_link() {
        let mut evil = alert();
        evil.annotations
            .insert("summary".into(), "<!channel> see <https://evil.example|Logs> & @all <@U123>".into());
        let alerts = [evil];
        let labels = LabelSet::new();
        let n = notification(&alerts, &labels);
        let (_, slack) = Integration::Slack { url: Secret("u".into()) }.request(&n);
        let text = slack["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            text.contains("&lt;!channel&gt; see &lt;https://evil.example|Logs&gt; &amp;"),
            "{text}"
        );
        let (_, wecom) = Integration::WeCom { url: Secret("u".into()) }.request(&n);
        let text = wecom["markdown"]["content"].as_str().unwrap();
        assert!(!text.contains("<@U123>") && !text.contains(" @all"), "{text}");
    }

    #[test]
    fn webhook_v4_matches_alertmanager() {
        let mut resolved = alert();
        resolved.fingerprint = "aaaa".into();
        resolved.ends_at = Some(1_700_000_060_000);
        let alerts = [alert(), resolved];
        let labels = LabelSet::from_pairs([("alertname", "GpuXid")]);
        let body = webhook_v4(&notification(&alerts, &labels), 1);
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["truncatedAlerts"], 1);
        assert_eq!(body["groupLabels"], json!({"alertname": "GpuXid"}));
        assert_eq!(body["commonLabels"]["alertname"], "GpuXid");
        assert_eq!(body["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(body["alerts"][0]["fingerprint"], "c4a6d1d0e2b3f5a7");
    }
}
