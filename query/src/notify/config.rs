//! The `alerting:` section: a routing tree and receivers, shaped like
//! Alertmanager's configuration so its users recognise it. Secrets (webhook
//! URLs with tokens, signing keys) are read from environment variables or
//! files and never printed: `Debug` shows `<secret>`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::time::serde_duration;

use crate::QueryError;

/// Where a secret comes from: inline (discouraged), an environment
/// variable, or a file (a mounted Kubernetes Secret).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default, skip_serializing)]
    pub value: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("value", &self.value.as_ref().map(|_| "<secret>"))
            .field("env", &self.env)
            .field("file", &self.file)
            .finish()
    }
}

/// A resolved secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl SecretSource {
    /// Reads the secret; `what` names it in errors (never the value).
    pub fn resolve(&self, what: &str) -> Result<Secret, QueryError> {
        let set = [self.value.is_some(), self.env.is_some(), self.file.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(QueryError::Config(format!("{what}: set exactly one of value, env or file")));
        }
        if let Some(value) = &self.value {
            return Ok(Secret(value.trim().to_string()));
        }
        if let Some(name) = &self.env {
            return std::env::var(name)
                .map(|v| Secret(v.trim().to_string()))
                .map_err(|_| QueryError::Config(format!("{what}: environment variable {name} is not set")));
        }
        let path = self.file.as_ref().expect("one is set");
        std::fs::read_to_string(path)
            .map(|v| Secret(v.trim().to_string()))
            .map_err(|e| QueryError::Config(format!("{what}: reading {}: {e}", path.display())))
    }
}

/// A node of the routing tree.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Receiver of alerts this route takes (inherited when unset).
    #[serde(default)]
    pub receiver: Option<String>,
    /// Label matchers, PromQL style: `severity="critical"`, `run=~"llama.*"`.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Labels that split alerts into notifications (`...` groups by all).
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    #[serde(default, with = "opt_duration")]
    pub group_wait: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub group_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub repeat_interval: Option<Duration>,
    /// Keep matching sibling routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&weft_model::time::format_duration(d.as_nanos() as i64)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| {
            weft_model::time::parse_duration(&t)
                .map(|ns| Duration::from_nanos(ns.max(0) as u64))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// A chat webhook whose URL holds its secret (Slack incoming webhook,
/// Teams Workflows, WeCom group robot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub url: SecretSource,
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// A chat robot that signs requests when `secret` is set (DingTalk:
/// `https://oapi.dingtalk.com/robot/send?access_token=…`; Feishu/Lark:
/// `https://open.feishu.cn/open-apis/bot/v2/hook/…`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedChatConfig {
    pub url: SecretSource,
    #[serde(default)]
    pub secret: Option<SecretSource>,
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// A generic webhook receiving Alertmanager's version 4 payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: SecretSource,
    /// Most alerts in one payload (0: all); the rest are counted in
    /// `truncatedAlerts`.
    #[serde(default)]
    pub max_alerts: usize,
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// An Alertmanager that takes weft's alerts through `POST /api/v2/alerts`
/// and does its own routing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. `http://alertmanager:9093`.
    pub url: String,
}

fn yes() -> bool {
    true
}

/// A named set of targets; every target gets every notification.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(default)]
    pub slack: Vec<ChatConfig>,
    #[serde(default)]
    pub teams: Vec<ChatConfig>,
    #[serde(default)]
    pub dingtalk: Vec<SignedChatConfig>,
    #[serde(default)]
    pub feishu: Vec<SignedChatConfig>,
    #[serde(default)]
    pub wecom: Vec<ChatConfig>,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    #[serde(default)]
    pub alertmanager: Vec<AlertmanagerConfig>,
}

/// The `alerting:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    pub route: RouteConfig,
    pub receivers: Vec<ReceiverConfig>,
    /// Timeout of one delivery attempt.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Attempts per notification on 429, 5xx and network errors.
    pub max_attempts: u32,
    /// Grafana base URL for "logs at that minute" links in messages.
    pub grafana_url: Option<String>,
    /// UID of weft's Loki data source in Grafana.
    pub grafana_loki_uid: String,
    /// Base of `generatorURL` and `externalURL`; defaults to weft's address.
    pub external_url: Option<String>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            route: RouteConfig::default(),
            receivers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            grafana_url: None,
            grafana_loki_uid: "weft-loki".into(),
            external_url: None,
        }
    }
}
