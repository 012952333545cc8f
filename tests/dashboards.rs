//! Every query of every bundled Grafana dashboard, run the way Grafana's
//! built-in Loki and Prometheus data sources would run it, against
//! `weft standalone` on the sample data (pod logs plus the sample GPU
//! counters). A query that errors or comes back empty fails the test.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{get_json, Weft};
use serde_json::Value;

const START: &str = "2026-11-25T10:00:00Z";
/// The sample GPU counters end at 10:25; instant queries look back 5 min.
const END: &str = "2026-11-25T10:28:00Z";
/// Grafana's built-in variables for that range and a 60 s step.
const BUILTINS: [(&str, &str); 4] = [
    ("$__rate_interval", "75s"),
    ("$__interval", "1m"),
    ("$__range", "28m"),
    ("$__auto", "1m"),
];

fn dashboards() -> Vec<(String, Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Replaces `$name`, `${name}` and Grafana's built-ins, longest names first.
fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in BUILTINS {
        out = out.replace(name, value);
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// A query's outcome: Ok(non-empty?) or the error body.
type Outcome = Result<bool, String>;

fn check(status: u16, body: &Value) -> Outcome {
    if status != 200 || body["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    let data = &body["data"];
    let non_empty = match &data["result"] {
        Value::Array(items) => items.iter().any(|item| match &item["values"] {
            Value::Array(values) => !values.is_empty(),
            _ => true,
        }),
        _ => data.as_array().is_some_and(|a| !a.is_empty()),
    };
    Ok(non_empty)
}

fn is_log_query(expr: &str) -> bool {
    let trimmed = expr.trim_start();
    trimmed.starts_with('{')
}

/// Runs one panel target as Grafana would: its data source's API, range
/// or instant.
fn run_target(weft: &Weft, target: &Value, vars: &HashMap<String, String>) -> (String, Outcome) {
    let expr = substitute(target["expr"].as_str().expect("target has expr"), vars);
    let uid = target["datasource"]["uid"].as_str().unwrap_or("");
    let (status, body) = match uid {
        "weft-prometheus" if target["instant"] == true => get_json(&weft.url("/api/v1/query"), &[("query", &expr), ("time", END)]),
        "weft-prometheus" => get_json(
            &weft.url("/api/v1/query_range"),
            &[("query", &expr), ("start", START), ("end", END), ("step", "60")],
        ),
        "weft-loki" if target["queryType"] == "instant" => get_json(&weft.url("/loki/api/v1/query"), &[("query", &expr), ("time", END)]),
        "weft-loki" if is_log_query(&expr) => get_json(
            &weft.url("/loki/api/v1/query_range"),
            &[
                ("query", &expr),
                ("start", START),
                ("end", END),
                ("limit", "1000"),
                ("direction", "backward"),
            ],
        ),
        "weft-loki" => get_json(
            &weft.url("/loki/api/v1/query_range"),
            &[("query", &expr), ("start", START), ("end", END), ("step", "60")],
        ),
        other => panic!("target uses data source {other:?}, not one deploy/ provisions: {target}"),
    };
    (expr, check(status, &body))
}

/// Runs a variable's query; returns its values.
fn run_variable(weft: &Weft, variable: &Value, vars: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let uid = variable["datasource"]["uid"].as_str().unwrap_or("");
    let (status, body) = match uid {
        "weft-prometheus" => {
            let query = substitute(variable["query"]["query"].as_str().expect("query"), vars);
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unsupported variable query {query}"));
            let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
            get_json(
                &weft.url(&format!("/api/v1/label/{}/values", label.trim())),
                &[("match[]", selector.trim()), ("start", START), ("end", END)],
            )
        }
        "weft-loki" => {
            let label = variable["query"]["label"].as_str().expect("label");
            let stream = substitute(variable["query"]["stream"].as_str().unwrap_or(""), vars);
            let mut params = vec![("start", START), ("end", END)];
            if !stream.is_empty() {
                params.push(("query", stream.as_str()));
            }
            get_json(&weft.url(&format!("/loki/api/v1/label/{label}/values")), &params)
        }
        other => panic!("variable uses data source {other:?}: {variable}"),
    };
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect())
}

/// Every target of a dashboard, rows' nested panels included.
fn targets(dashboard: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut target = target.clone();
            if target.get("datasource").is_none() {
                target["datasource"] = panel["datasource"].clone();
            }
            out.push((panel["title"].as_str().unwrap_or("").to_string(), target));
        }
    }
    out
}

#[test]
fn every_dashboard_query_answers_on_the_sample_data() {
    let dir = tempfile::tempdir().unwrap();
    let logs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pod-logs");
    let gpu = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu-metrics.prom");
    let data = dir.path().join("data");
    let weft = Weft::start(&[
        "standalone",
        "--logs",
        logs,
        "--import",
        gpu,
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let boards = dashboards();
    let titles: Vec<&str> = boards.iter().map(|(_, d)| d["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["weft / GPU fleet", "weft / Logs explorer", "weft / Training run"]);

    // The collector ships the sample logs within seconds; wait for every
    // query to have data, failing at once on an error.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let checked = loop {
        let mut empty = Vec::new();
        let mut checked = 0;
        for (file, dashboard) in &boards {
            let mut vars = HashMap::new();
            let mut unresolved = false;
            for variable in dashboard["templating"]["list"].as_array().unwrap() {
                let name = variable["name"].as_str().unwrap().to_string();
                if variable["type"] == "textbox" {
                    vars.insert(name, variable["query"].as_str().unwrap_or("").to_string());
                    continue;
                }
                let values = run_variable(&weft, variable, &vars).unwrap_or_else(|e| panic!("{file}: variable {name}: {e}"));
                checked += 1;
                if values.is_empty() {
                    empty.push(format!("{file}: variable {name} has no values"));
                    unresolved = true;
                }
                let value = if variable["includeAll"] == true {
                    variable["allValue"].as_str().unwrap().to_string()
                } else {
                    values.first().cloned().unwrap_or_default()
                };
                vars.insert(name, value);
            }
            if unresolved {
                // Grafana would query with empty values; wait for data.
                continue;
            }
            for (title, target) in targets(dashboard) {
                let (expr, outcome) = run_target(&weft, &target, &vars);
                checked += 1;
                match outcome {
                    Err(e) => panic!("{file}: panel {title:?}: {expr}: {e}"),
                    Ok(false) => empty.push(format!("{file}: panel {title:?}: {expr} returned nothing")),
                    Ok(true) => {}
                }
            }
        }
        if empty.is_empty() {
            break checked;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queries without data after 90 s:\n{}",
            empty.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(checked >= 30, "only {checked} queries found");
}

#[test]
fn dashboards_are_grafana_models_with_unique_ids() {
    for (file, dashboard) in dashboards() {
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| u.starts_with("weft-") && u.len() <= 40),
            "{file}: uid"
        );
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "{file}: schemaVersion");
        let mut ids = std::collections::HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{file}: panel id {} twice", panel["id"]);
            let pos = &panel["gridPos"];
            assert!(
                pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
                "{file}: {} is wider than the grid",
                panel["title"]
            );
        }
    }
}
