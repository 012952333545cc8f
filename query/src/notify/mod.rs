//! Notifications: the part of Alertmanager that weft carries itself.
//! Alerts from the rule evaluator are routed down a tree of label matchers
//! to receivers, grouped (`group_by`), held for `group_wait`, sent again
//! after `group_interval` when the group changed and after
//! `repeat_interval` when it did not, with resolved notices. Each target of
//! a receiver is delivered on its own task with retries and backoff on 429,
//! 5xx and network errors, so a failing one never holds up the others.
//!
//! What was sent is kept in a notification log (`<data>/rules/
//! notifications.json`), as Alertmanager's nflog: after a restart the same
//! firing alerts are not paged again before their repeat interval.

pub mod config;
pub mod integrations;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use weft_model::LabelSet;

use crate::logql::ast::Matcher;
use crate::QueryError;
pub use config::AlertingConfig;
use config::Secret;
use integrations::{Integration, Notification, NotifyAlert};

/// A route with its matchers compiled and timings inherited.
#[derive(Debug)]
struct Route {
    /// Position in the tree, part of group keys.
    id: String,
    matchers: Vec<Matcher>,
    matchers_text: String,
    receiver: String,
    /// `None`: group by every label (`...`).
    group_by: Option<Vec<String>>,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
    continue_: bool,
    routes: Vec<Route>,
}

struct Defaults {
    receiver: Option<String>,
    group_by: Option<Option<Vec<String>>>,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
}

fn compile_route(config: &config::RouteConfig, id: String, inherited: &Defaults) -> Result<Route, QueryError> {
    let receiver = config
        .receiver
        .clone()
        .or_else(|| inherited.receiver.clone())
        .ok_or_else(|| QueryError::Config("alerting.route: the root route needs a receiver".into()))?;
    let matchers = config
        .matchers
        .iter()
        .map(|m| parse_matcher(m).map_err(|e| QueryError::Config(format!("alerting.route {id}: matcher {m:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let group_by = match &config.group_by {
        Some(labels) if labels.iter().any(|l| l == "...") => Some(None),
        Some(labels) => Some(Some(labels.clone())),
        None => inherited.group_by.clone(),
    };
    let defaults = Defaults {
        receiver: Some(receiver.clone()),
        group_by: group_by.clone(),
        group_wait: config.group_wait.unwrap_or(inherited.group_wait),
        group_interval: config.group_interval.unwrap_or(inherited.group_interval),
        repeat_interval: config.repeat_interval.unwrap_or(inherited.repeat_interval),
    };
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(r, format!("{id}/{i}"), &defaults))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Route {
        id,
        matchers,
        matchers_text: config.matchers.join(","),
        receiver,
        // Alertmanager's default: no grouping labels, one group per route.
        group_by: group_by.unwrap_or(Some(Vec::new())),
        group_wait: defaults.group_wait,
        group_interval: defaults.group_interval,
        repeat_interval: defaults.repeat_interval,
        continue_: config.continue_,
        routes,
    })
}

/// One Alertmanager matcher: `name op value` with `=`, `!=`, `=~`, `!~`
/// and a quoted or bare value (`severity="critical"`, `team=ml`).
fn parse_matcher(text: &str) -> Result<Matcher, String> {
    use crate::logql::ast::MatchOp;
    let text = text.trim();
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .ok_or("expected an operator (=, !=, =~, !~)")?;
    let name = &text[..name_end];
    weft_model::labels::validate_label_name(name).map_err(|e| e.to_string())?;
    let rest = text[name_end..].trim_start();
    let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
        (MatchOp::Re, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (MatchOp::Nre, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (MatchOp::Neq, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (MatchOp::Eq, v)
    } else {
        return Err("expected an operator (=, !=, =~, !~)".into());
    };
    let value = value.trim();
    let value = if value.starts_with('"') {
        serde_json::from_str::<String>(value).map_err(|_| "the quoted value does not parse".to_string())?
    } else {
        value.to_string()
    };
    let regex = match op {
        MatchOp::Re | MatchOp::Nre => Some(regex::Regex::new(&format!("^(?s:{value})$")).map_err(|e| e.to_string())?),
        _ => None,
    };
    Ok(Matcher {
        name: name.to_string(),
        op,
        value,
        regex,
    })
}

impl Route {
    fn by_id(&self, id: &str) -> Option<&Route> {
        if self.id == id {
            return Some(self);
        }
        self.routes.iter().filter(|r| id.starts_with(&r.id)).find_map(|r| r.by_id(id))
    }

    fn matches(&self, labels: &LabelSet) -> bool {
        self.matchers.iter().all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
    }

    /// The routes an alert ends in (Alertmanager's `Match`).
    fn find<'a>(&'a self, labels: &LabelSet, out: &mut Vec<&'a Route>) {
        let before = out.len();
        for child in &self.routes {
            if child.matches(labels) {
                child.find(labels, out);
                if !child.continue_ {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }
}

/// Builds the integration of a chat target from its resolved URL.
type ChatMaker = fn(Secret) -> Integration;
/// The same for a signing chat target, with its secret.
type SignedMaker = fn(Secret, Option<Secret>) -> Integration;

/// A receiver's targets.
struct Target {
    integration: Integration,
    send_resolved: bool,
}

/// One group of alerts waiting for its next flush.
struct AlertGroup {
    route_id: String,
    key: String,
    labels: LabelSet,
    alerts: BTreeMap<String, NotifyAlert>,
    next_flush: i64,
}

/// What was last delivered for one (receiver, target, group).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LogEntry {
    firing: BTreeSet<String>,
    resolved: BTreeSet<String>,
    sent_at: i64,
}

/// Counters of notifications.
struct NotifyMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    suppressed: IntCounterVec,
}

impl NotifyMetrics {
    fn new(registry: &Registry) -> Self {
        let make = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["receiver", "integration"]).expect("valid metric");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        Self {
            sent: make("weft_notifications_total", "Notifications delivered, by receiver and integration"),
            failed: make(
                "weft_notifications_failed_total",
                "Notifications that failed after every attempt, by receiver and integration",
            ),
            suppressed: make(
                "weft_notifications_suppressed_total",
                "Group flushes with nothing new for a target since its last notification (the log said it was sent)",
            ),
        }
    }
}

/// Routes, groups and delivers alerts.
pub struct Notifier {
    root: Box<Route>,
    receivers: HashMap<String, Vec<Target>>,
    groups: Mutex<HashMap<String, AlertGroup>>,
    log: Mutex<HashMap<String, LogEntry>>,
    /// Log keys with a delivery still trying.
    inflight: Mutex<std::collections::HashSet<String>>,
    log_path: PathBuf,
    client: reqwest::Client,
    max_attempts: u32,
    external_url: String,
    grafana: Option<(String, String)>,
    metrics: NotifyMetrics,
}

fn fnv_hex(parts: &[&str]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for b in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= *b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// A stable fingerprint of a label set (the same across restarts).
pub fn fingerprint(labels: &LabelSet) -> String {
    let parts: Vec<&str> = labels.iter().flat_map(|(k, v)| [k, v]).collect();
    fnv_hex(&parts)
}

/// Grafana's Explore view of a pod's logs around `at_ms` (the minute it
/// falls in), with weft's Loki data source.
pub fn explore_url(grafana: &str, datasource_uid: &str, labels: &LabelSet, at_ms: i64) -> Option<String> {
    let mut selector = Vec::new();
    for name in ["namespace", "pod", "container"] {
        if let Some(v) = labels.get(name).filter(|v| !v.is_empty()) {
            selector.push(format!("{name}={}", serde_json::to_string(v).expect("strings serialize")));
        }
    }
    if selector.is_empty() {
        return None;
    }
    let from = at_ms.div_euclid(60_000) * 60_000;
    let panes = serde_json::json!({
        "weft": {
            "datasource": datasource_uid,
            "queries": [{
                "refId": "A",
                "expr": format!("{{{}}}", selector.join(", ")),
                "queryType": "range",
                "datasource": {"type": "loki", "uid": datasource_uid},
            }],
            "range": {"from": from.to_string(), "to": (from + 60_000).to_string()},
        }
    });
    let query =
        serde_urlencoded::to_string([("schemaVersion", "1"), ("orgId", "1"), ("panes", &panes.to_string())]).expect("strings encode");
    Some(format!("{}/explore?{query}", grafana.trim_end_matches('/')))
}

/// One delivery to do.
struct Delivery {
    log_key: String,
    group_interval_ms: i64,
    receiver: String,
    integration: Integration,
    group_key: String,
    group_labels: LabelSet,
    alerts: Vec<NotifyAlert>,
    entry: LogEntry,
    /// Record the entry without sending (nothing the target wants to see).
    silent: bool,
}

impl Notifier {
    /// A notifier for `config`, keeping its log under `state_dir`.
    pub fn new(
        config: &AlertingConfig,
        state_dir: &Path,
        default_external_url: &str,
        registry: &Registry,
    ) -> Result<Arc<Self>, QueryError> {
        let defaults = Defaults {
            receiver: None,
            group_by: None,
            // Shorter than Alertmanager's 30s: weft promises a failure in
            // chat within a minute of its log line.
            group_wait: Duration::from_secs(15),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
        };
        let mut receivers = HashMap::new();
        for r in &config.receivers {
            if receivers.contains_key(&r.name) {
                return Err(QueryError::Config(format!("alerting.receivers: {:?} is defined twice", r.name)));
            }
            let what = |kind: &str, i: usize, field: &str| format!("alerting.receivers {:?} {kind}[{i}].{field}", r.name);
            let mut targets = Vec::new();
            let chats: [(&str, &[config::ChatConfig], ChatMaker); 3] = [
                ("slack", &r.slack, |url| Integration::Slack { url }),
                ("teams", &r.teams, |url| Integration::Teams { url }),
                ("wecom", &r.wecom, |url| Integration::WeCom { url }),
            ];
            for (kind, configs, make) in chats {
                for (i, c) in configs.iter().enumerate() {
                    targets.push(Target {
                        integration: make(c.url.resolve(&what(kind, i, "url"))?),
                        send_resolved: c.send_resolved,
                    });
                }
            }
            let signed: [(&str, &[config::SignedChatConfig], SignedMaker); 2] = [
                ("dingtalk", &r.dingtalk, |url, secret| Integration::DingTalk { url, secret }),
                ("feishu", &r.feishu, |url, secret| Integration::Feishu { url, secret }),
            ];
            for (kind, configs, make) in signed {
                for (i, c) in configs.iter().enumerate() {
                    let secret = c.secret.as_ref().map(|s| s.resolve(&what(kind, i, "secret"))).transpose()?;
                    targets.push(Target {
                        integration: make(c.url.resolve(&what(kind, i, "url"))?, secret),
                        send_resolved: c.send_resolved,
                    });
                }
            }
            for (i, c) in r.webhook.iter().enumerate() {
                targets.push(Target {
                    integration: Integration::Webhook {
                        url: c.url.resolve(&what("webhook", i, "url"))?,
                        max_alerts: c.max_alerts,
                    },
                    send_resolved: c.send_resolved,
                });
            }
            for c in &r.alertmanager {
                targets.push(Target {
                    integration: Integration::Alertmanager { url: c.url.clone() },
                    send_resolved: true,
                });
            }
            receivers.insert(r.name.clone(), targets);
        }
        let root = if config.receivers.is_empty() && config.route.receiver.is_none() {
            // No alerting configured: a root that delivers nowhere.
            receivers.insert("none".into(), Vec::new());
            compile_route(
                &config::RouteConfig {
                    receiver: Some("none".into()),
                    ..config.route.clone()
                },
                "0".into(),
                &defaults,
            )?
        } else {
            compile_route(&config.route, "0".into(), &defaults)?
        };
        fn check(route: &Route, receivers: &HashMap<String, Vec<Target>>) -> Result<(), QueryError> {
            if !receivers.contains_key(&route.receiver) {
                return Err(QueryError::Config(format!(
                    "alerting.route: receiver {:?} is not defined in alerting.receivers",
                    route.receiver
                )));
            }
            route.routes.iter().try_for_each(|r| check(r, receivers))
        }
        check(&root, &receivers)?;
        std::fs::create_dir_all(state_dir).map_err(|e| QueryError::Config(format!("{}: {e}", state_dir.display())))?;
        let log_path = state_dir.join("notifications.json");
        let log = match std::fs::read(&log_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %log_path.display(), error = %e, "notification log unreadable; starting empty");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        weft_model::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| QueryError::Config(format!("HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            root: Box::new(root),
            receivers,
            groups: Mutex::new(HashMap::new()),
            log: Mutex::new(log),
            inflight: Mutex::new(Default::default()),
            log_path,
            client,
            max_attempts: config.max_attempts.max(1),
            external_url: config.external_url.clone().unwrap_or_else(|| default_external_url.to_string()),
            grafana: config.grafana_url.clone().map(|g| (g, config.grafana_loki_uid.clone())),
            metrics: NotifyMetrics::new(registry),
        }))
    }

    /// The base URL alerts link back to.
    pub fn external_url(&self) -> &str {
        &self.external_url
    }

    /// Takes the current firing alerts and newly resolved ones of one rule
    /// group.
    pub fn observe(&self, alerts: Vec<NotifyAlert>, now: i64) {
        let mut groups = self.groups.lock().expect("groups lock");
        for mut alert in alerts {
            if alert.explore_url.is_none() {
                if let Some((grafana, uid)) = &self.grafana {
                    // A per-run alert names its pod in an annotation.
                    let mut place = alert.labels.clone();
                    for name in ["namespace", "pod", "container"] {
                        if place.get(name).is_none_or(str::is_empty) {
                            if let Some(v) = alert.annotations.get(name).filter(|v| !v.is_empty()) {
                                place.insert(name, v.clone());
                            }
                        }
                    }
                    alert.explore_url = explore_url(grafana, uid, &place, alert.starts_at);
                }
            }
            let mut routes = Vec::new();
            self.root.find(&alert.labels, &mut routes);
            for route in routes {
                let group_labels = match &route.group_by {
                    None => alert.labels.clone(),
                    Some(names) => LabelSet::from_pairs(names.iter().filter_map(|n| alert.labels.get(n).map(|v| (n.as_str(), v)))),
                };
                let key = format!("{}:{{{}}}:{group_labels}", route.id, route.matchers_text);
                let group = groups.entry(key.clone()).or_insert_with(|| AlertGroup {
                    route_id: route.id.clone(),
                    key: key.clone(),
                    labels: group_labels,
                    alerts: BTreeMap::new(),
                    next_flush: now + route.group_wait.as_millis() as i64,
                });
                // Resolved alerts are kept even for a group not in memory
                // (after a restart): the log knows whom to tell.
                group.alerts.insert(alert.fingerprint.clone(), alert.clone());
            }
        }
    }

    /// Groups whose time has come, turned into deliveries.
    fn due(&self, now: i64) -> Vec<Delivery> {
        let mut groups = self.groups.lock().expect("groups lock");
        let log = self.log.lock().expect("log lock");
        let mut inflight = self.inflight.lock().expect("in-flight lock");
        let mut out = Vec::new();
        for group in groups.values_mut().filter(|g| g.next_flush <= now) {
            let Some(route) = self.root.by_id(&group.route_id) else {
                continue;
            };
            group.next_flush = now + route.group_interval.as_millis() as i64;
            let alerts: Vec<NotifyAlert> = group.alerts.values().cloned().collect();
            let firing: BTreeSet<String> = alerts.iter().filter(|a| !a.is_resolved()).map(|a| a.fingerprint.clone()).collect();
            let resolved: BTreeSet<String> = alerts.iter().filter(|a| a.is_resolved()).map(|a| a.fingerprint.clone()).collect();
            for (i, target) in self.receivers.get(&route.receiver).into_iter().flatten().enumerate() {
                let log_key = format!("{}/{}/{i}/{}", route.receiver, target.integration.kind(), group.key);
                if inflight.contains(&log_key) {
                    // The last delivery is still trying; it goes first.
                    continue;
                }
                let entry = log.get(&log_key);
                let always = matches!(target.integration, Integration::Alertmanager { .. });
                let needs = always && !alerts.is_empty()
                    || match entry {
                        None => !firing.is_empty(),
                        Some(e) if !firing.is_subset(&e.firing) => true,
                        Some(e) if firing.is_empty() => !e.firing.is_empty(),
                        Some(e) if target.send_resolved && !resolved.is_subset(&e.resolved) => true,
                        Some(e) => e.sent_at + (route.repeat_interval.as_millis() as i64) <= now,
                    };
                if !needs {
                    if entry.is_some() {
                        self.metrics
                            .suppressed
                            .with_label_values(&[route.receiver.as_str(), target.integration.kind()])
                            .inc();
                    }
                    continue;
                }
                let shown: Vec<NotifyAlert> = alerts
                    .iter()
                    .filter(|a| target.send_resolved || !a.is_resolved())
                    .cloned()
                    .collect();
                inflight.insert(log_key.clone());
                out.push(Delivery {
                    group_interval_ms: route.group_interval.as_millis() as i64,
                    log_key,
                    receiver: route.receiver.clone(),
                    integration: target.integration.clone(),
                    group_key: group.key.clone(),
                    group_labels: group.labels.clone(),
                    silent: shown.is_empty(),
                    alerts: shown,
                    entry: LogEntry {
                        firing: firing.clone(),
                        resolved: resolved.clone(),
                        sent_at: now,
                    },
                });
            }
            // A resolved alert leaves once no target still has it as
            // firing in the log (told, or never told it fired).
            let targets = self.receivers.get(&route.receiver).map(Vec::as_slice).unwrap_or(&[]);
            group.alerts.retain(|fp, a| {
                !a.is_resolved()
                    || targets.iter().enumerate().any(|(i, t)| {
                        let key = format!("{}/{}/{i}/{}", route.receiver, t.integration.kind(), group.key);
                        log.get(&key).is_some_and(|e| e.firing.contains(fp))
                    })
            });
        }
        groups.retain(|_, g| !g.alerts.is_empty());
        out
    }

    /// Notes a delivery in the log and saves it (blocking: file I/O). The
    /// file is written under the log lock, so saves never go back in time.
    fn record(&self, delivery: &Delivery) {
        let mut log = self.log.lock().expect("log lock");
        log.insert(delivery.log_key.clone(), delivery.entry.clone());
        // Entries of groups long gone are dropped.
        let horizon = delivery.entry.sent_at - 5 * 86_400_000;
        log.retain(|_, e| e.sent_at >= horizon);
        let snapshot = serde_json::to_vec(&*log).expect("log serializes");
        let tmp = self.log_path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, &snapshot).and_then(|_| std::fs::rename(&tmp, &self.log_path)) {
            tracing::warn!(path = %self.log_path.display(), error = %e, "writing the notification log failed");
        }
    }

    async fn deliver(self: Arc<Self>, delivery: Delivery) {
        let key = delivery.log_key.clone();
        let me = self.clone();
        let delivered = self.send(&delivery).await;
        let _ = tokio::task::spawn_blocking(move || {
            if delivered {
                me.record(&delivery);
            }
            me.inflight.lock().expect("in-flight lock").remove(&key);
        })
        .await;
    }

    /// Sends one delivery with retries; true once it is delivered (or had
    /// nothing to send).
    async fn send(&self, delivery: &Delivery) -> bool {
        if delivery.silent {
            return true;
        }
        let notification = Notification {
            receiver: &delivery.receiver,
            group_key: &delivery.group_key,
            group_labels: &delivery.group_labels,
            alerts: &delivery.alerts,
            external_url: &self.external_url,
            now: weft_model::time::now_nanos() / 1_000_000,
            group_interval_ms: delivery.group_interval_ms,
        };
        let kind = delivery.integration.kind();
        let labels = [delivery.receiver.as_str(), kind];
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=self.max_attempts {
            // Signed targets need a fresh timestamp on every attempt.
            let notification = Notification {
                now: weft_model::time::now_nanos() / 1_000_000,
                ..notification.clone()
            };
            let (url, body) = delivery.integration.request(&notification);
            let result = match self.client.post(&url).json(&body).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    delivery.integration.check_response(status, &text)
                }
                // The error text can hold the URL, and the URL the token.
                Err(e) => Err(integrations::DeliveryError {
                    retry: true,
                    message: if e.is_timeout() {
                        "timed out".into()
                    } else if e.is_connect() {
                        "connection failed".into()
                    } else {
                        "request failed".into()
                    },
                }),
            };
            match result {
                Ok(()) => {
                    self.metrics.sent.with_label_values(&labels).inc();
                    return true;
                }
                Err(e) if e.retry && attempt < self.max_attempts => {
                    tracing::warn!(receiver = %delivery.receiver, integration = kind, attempt, reason = %e.message, "notification failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::error!(receiver = %delivery.receiver, integration = kind, attempt, reason = %e.message, "notification failed");
                    self.metrics.failed.with_label_values(&labels).inc();
                    return false;
                }
            }
        }
        false
    }

    /// Flushes due groups every `tick` until `stop` turns true.
    pub async fn run(self: Arc<Self>, tick: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            for delivery in self.due(weft_model::time::now_nanos() / 1_000_000) {
                tokio::spawn(self.clone().deliver(delivery));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{ReceiverConfig, RouteConfig, SecretSource, WebhookConfig};

    fn alert(name: &str, pod: &str, resolved: Option<i64>) -> NotifyAlert {
        let labels = LabelSet::from_pairs([("alertname", name), ("pod", pod), ("severity", "critical")]);
        NotifyAlert {
            fingerprint: fingerprint(&labels),
            labels,
            annotations: BTreeMap::new(),
            starts_at: 1_000,
            ends_at: resolved,
            value: 1.0,
            generator_url: String::new(),
            explore_url: None,
        }
    }

    fn webhook(name: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: name.into(),
            webhook: vec![WebhookConfig {
                url: SecretSource {
                    value: Some("http://127.0.0.1:9/hook".into()),
                    ..Default::default()
                },
                max_alerts: 0,
                send_resolved: true,
            }],
            ..Default::default()
        }
    }

    impl Notifier {
        /// What `deliver` does after a successful send.
        fn finish(&self, delivery: &Delivery) {
            self.record(delivery);
            self.inflight.lock().unwrap().remove(&delivery.log_key);
        }
    }

    fn notifier(dir: &Path) -> Arc<Notifier> {
        let config = AlertingConfig {
            route: RouteConfig {
                receiver: Some("team".into()),
                group_by: Some(vec!["alertname".into()]),
                group_wait: Some(Duration::from_secs(10)),
                group_interval: Some(Duration::from_secs(60)),
                repeat_interval: Some(Duration::from_secs(3600)),
                routes: vec![RouteConfig {
                    receiver: Some("oncall".into()),
                    matchers: vec![r#"alertname="GpuXid""#.into()],
                    continue_: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            receivers: vec![webhook("team"), webhook("oncall")],
            ..Default::default()
        };
        Notifier::new(&config, dir, "http://weft", &Registry::new()).unwrap()
    }

    #[test]
    fn routing_grouping_timing_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let n = notifier(dir.path());
        n.observe(
            vec![alert("GpuXid", "a", None), alert("GpuXid", "b", None), alert("NanLoss", "a", None)],
            0,
        );
        assert!(n.due(9_999).is_empty(), "group_wait holds the first notification");
        let due = n.due(10_000);
        // GpuXid goes to oncall (matched, continue) and then to the root
        // receiver? No: continue lets siblings match; the root is not a sibling.
        let mut seen: Vec<(String, usize)> = due.iter().map(|d| (d.receiver.clone(), d.alerts.len())).collect();
        seen.sort();
        assert_eq!(seen, vec![("oncall".to_string(), 2), ("team".to_string(), 1)]);
        for d in &due {
            n.finish(d);
        }
        // Nothing new: nothing sent at the next interval.
        assert!(n.due(70_000).is_empty());
        // A new firing alert in the group goes out at the next interval.
        n.observe(vec![alert("GpuXid", "c", None)], 75_000);
        let due = n.due(130_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].alerts.len(), 3);
        n.finish(&due[0]);
        // Resolved: a resolved notice once, then the alert leaves.
        n.observe(vec![alert("GpuXid", "a", Some(140_000))], 140_000);
        let due = n.due(190_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].alerts.iter().filter(|a| a.is_resolved()).count(), 1);
        n.finish(&due[0]);
        // The repeat interval resends unchanged firing alerts.
        assert!(n.due(250_000).is_empty());
        let due = n.due(190_000 + 3_600_000);
        assert!(due.iter().any(|d| d.receiver == "oncall" && d.alerts.len() == 2));
    }

    #[test]
    fn the_log_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = notifier(dir.path());
        first.observe(vec![alert("NanLoss", "a", None)], 0);
        let due = first.due(10_000);
        assert_eq!(due.len(), 1);
        first.finish(&due[0]);
        drop(first);
        let second = notifier(dir.path());
        second.observe(vec![alert("NanLoss", "a", None)], 20_000);
        assert!(second.due(30_000).is_empty(), "already paged before the restart");
        assert_eq!(second.due(10_000 + 3_600_000).len(), 1, "repeat interval still applies");
    }

    #[test]
    fn matchers_in_alertmanager_syntax() {
        let labels = LabelSet::from_pairs([("severity", "critical"), ("team", "ml")]);
        for (text, matches) in [
            (r#"severity="critical""#, true),
            ("team=ml", true),
            (r#"severity!="info""#, true),
            (r#"team=~"m.*""#, true),
            (r#"team!~"ml|infra""#, false),
            ("missing=\"\"", true),
        ] {
            let m = parse_matcher(text).unwrap();
            assert_eq!(m.matches(labels.get(&m.name).unwrap_or("")), matches, "{text}");
        }
        assert!(parse_matcher("severity critical").is_err());
        assert!(parse_matcher(r#"x=~"(""#).is_err());
    }

    #[test]
    fn a_resolved_notice_survives_a_failed_delivery_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let n = notifier(dir.path());
        n.observe(vec![alert("NanLoss", "a", None)], 0);
        let due = n.due(10_000);
        n.finish(&due[0]);
        n.observe(vec![alert("NanLoss", "a", Some(20_000))], 20_000);
        let due = n.due(70_000);
        assert_eq!(due.len(), 1);
        // The delivery failed: nothing recorded, the notice stays.
        n.inflight.lock().unwrap().clear();
        let due = n.due(130_000);
        assert_eq!(due.len(), 1, "resolved notice tried again");
        drop(due);
        drop(n);
        // After a restart the group is gone from memory, but the log says
        // the target still thinks the alert fires: the notice goes out.
        let n = notifier(dir.path());
        n.observe(vec![alert("NanLoss", "a", Some(20_000))], 200_000);
        let due = n.due(210_000);
        assert_eq!(due.len(), 1);
        assert!(due[0].alerts[0].is_resolved());
        n.finish(&due[0]);
        assert!(n.due(400_000).is_empty());
        assert!(n.groups.lock().unwrap().is_empty(), "told, so it left");
    }

    #[test]
    fn explore_links_name_the_pod_and_minute() {
        let labels = LabelSet::from_pairs([("namespace", "ml"), ("pod", "train-0")]);
        let url = explore_url("http://grafana:3000/", "weft-loki", &labels, 1_700_000_010_000).unwrap();
        assert!(
            url.starts_with("http://grafana:3000/explore?schemaVersion=1&orgId=1&panes="),
            "{url}"
        );
        let panes: serde_json::Value =
            serde_json::from_str(&serde_urlencoded::from_str::<Vec<(String, String)>>(url.split_once('?').unwrap().1).unwrap()[2].1)
                .unwrap();
        assert_eq!(panes["weft"]["queries"][0]["expr"], r#"{namespace="ml", pod="train-0"}"#);
        assert_eq!(panes["weft"]["range"]["from"], "1699999980000");
        assert_eq!(panes["weft"]["range"]["to"], "1700000040000");
        assert!(explore_url("http://g", "u", &LabelSet::new(), 0).is_none());
    }
}
