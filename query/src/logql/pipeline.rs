//! Runs a LogQL pipeline over one line: line filters, parsers (`json`,
//! `logfmt`, `regexp`, `pattern`, `unpack`), label filters with `__error__`
//! semantics, formatting, `drop` / `keep`, and `unwrap` for range
//! aggregations.

use weft_model::labels::sanitize_label_name;
use weft_model::LabelSet;

use super::ast::*;
use super::parser::{parse_bytes, parse_go_duration_secs};

/// Label set on lines whose parsing or conversion failed.
pub const ERROR_LABEL: &str = "__error__";
pub const ERROR_DETAILS_LABEL: &str = "__error_details__";

/// A line moving through a pipeline.
#[derive(Clone, Debug)]
pub struct LineState {
    pub ts: i64,
    pub line: String,
    /// Stream labels, structured metadata and parsed labels.
    pub labels: LabelSet,
}

fn set_error(labels: &mut LabelSet, error: &str, details: String) {
    if labels.get(ERROR_LABEL).is_none() {
        labels.insert(ERROR_LABEL, error);
        labels.insert(ERROR_DETAILS_LABEL, details);
    }
}

/// Adds a parsed label; a name already taken by the stream gets the
/// `_extracted` suffix, as in Loki.
fn add_parsed(labels: &mut LabelSet, stream: &LabelSet, name: &str, value: String) {
    let name = sanitize_label_name(name);
    if stream.get(&name).is_some() {
        labels.insert(format!("{name}_extracted"), value);
    } else {
        labels.insert(name, value);
    }
}

fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}_{k}") };
                flatten_json(&key, v, out);
            }
        }
        serde_json::Value::Array(_) => {}
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Null => out.push((prefix.to_string(), String::new())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn json_value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parses logfmt `key=value key2="quoted value" flag` pairs.
pub fn parse_logfmt(line: &str) -> Result<Vec<(String, String)>, String> {
    let bytes = line.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        if pos >= bytes.len() {
            break;
        }
        let key_start = pos;
        while pos < bytes.len() && bytes[pos] != b'=' && bytes[pos] != b' ' {
            if bytes[pos] == b'"' {
                return Err(format!("unexpected '\"' at byte {pos}"));
            }
            pos += 1;
        }
        let key = &line[key_start..pos];
        if key.is_empty() {
            return Err(format!("unexpected '=' at byte {pos}"));
        }
        if pos >= bytes.len() || bytes[pos] == b' ' {
            out.push((key.to_string(), String::new()));
            continue;
        }
        pos += 1;
        if pos < bytes.len() && bytes[pos] == b'"' {
            let (value, end) = weft_model::labels::parse_quoted(line, pos).map_err(|e| format!("{e} at byte {pos}"))?;
            out.push((key.to_string(), value));
            pos = end;
        } else {
            let value_start = pos;
            while pos < bytes.len() && bytes[pos] != b' ' {
                pos += 1;
            }
            out.push((key.to_string(), line[value_start..pos].to_string()));
        }
    }
    Ok(out)
}

fn render(template: &[TemplatePart], state: &LineState) -> String {
    let mut out = String::new();
    for part in template {
        match part {
            TemplatePart::Text(t) => out.push_str(t),
            TemplatePart::Label(name) => out.push_str(state.labels.get(name).unwrap_or("")),
            TemplatePart::Line => out.push_str(&state.line),
            TemplatePart::Timestamp => out.push_str(&weft_model::time::format_rfc3339_nanos(state.ts)),
        }
    }
    out
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn match_pattern(parts: &[PatternPart], line: &str) -> Option<Vec<(String, String)>> {
    let mut rest = line;
    let mut out = Vec::new();
    let mut pending: Option<&Option<String>> = None;
    for part in parts {
        match part {
            PatternPart::Literal(text) => {
                let at = rest.find(text.as_str())?;
                if let Some(capture) = pending.take() {
                    if let Some(name) = capture {
                        out.push((name.clone(), rest[..at].to_string()));
                    }
                } else if at != 0 {
                    return None;
                }
                rest = &rest[at + text.len()..];
            }
            PatternPart::Capture(name) => pending = Some(name),
        }
    }
    if let Some(Some(name)) = pending {
        out.push((name.clone(), rest.to_string()));
    }
    Some(out)
}

/// Reads a label value as the number a filter or unwrap compares.
pub fn label_number(value: &str, kind: NumberKind) -> Option<f64> {
    let value = value.trim();
    match kind {
        NumberKind::Number => value.parse::<f64>().ok(),
        NumberKind::Duration => parse_go_duration_secs(value).or_else(|| value.parse::<f64>().ok()),
        NumberKind::Bytes => parse_bytes(value).or_else(|| value.parse::<f64>().ok()),
    }
}

/// Evaluates a label filter; a value that does not convert sets
/// `__error__=LabelFilterErr` and keeps the line, as Loki does.
pub fn eval_label_filter(filter: &LabelFilter, labels: &mut LabelSet) -> bool {
    match filter {
        LabelFilter::And(a, b) => eval_label_filter(a, labels) && eval_label_filter(b, labels),
        LabelFilter::Or(a, b) => eval_label_filter(a, labels) || eval_label_filter(b, labels),
        LabelFilter::Match(m) => m.matches(labels.get(&m.name).unwrap_or("")),
        LabelFilter::Compare { name, op, value, kind } => {
            let Some(raw) = labels.get(name) else {
                return false;
            };
            match label_number(raw, *kind) {
                Some(number) => op.apply(number, *value),
                None => {
                    let details = format!("cannot convert {name}={raw:?} to a number");
                    set_error(labels, "LabelFilterErr", details);
                    true
                }
            }
        }
    }
}

/// Runs `stages` on `state`; false when the line is filtered out.
pub fn run(stages: &[Stage], stream: &LabelSet, state: &mut LineState) -> bool {
    for stage in stages {
        match stage {
            Stage::LineFilter(filter) => {
                if !filter.matches(&state.line) {
                    return false;
                }
            }
            Stage::Json(params) => match serde_json::from_str::<serde_json::Value>(&state.line) {
                Ok(value @ serde_json::Value::Object(_)) => {
                    if params.is_empty() {
                        let mut pairs = Vec::new();
                        flatten_json("", &value, &mut pairs);
                        for (k, v) in pairs {
                            add_parsed(&mut state.labels, stream, &k, v);
                        }
                    } else {
                        for (label, path) in params {
                            let mut at = &value;
                            let mut found = true;
                            for part in path {
                                at = match (at, part.parse::<usize>()) {
                                    (serde_json::Value::Array(items), Ok(i)) => match items.get(i) {
                                        Some(v) => v,
                                        None => {
                                            found = false;
                                            break;
                                        }
                                    },
                                    (serde_json::Value::Object(map), _) => match map.get(part) {
                                        Some(v) => v,
                                        None => {
                                            found = false;
                                            break;
                                        }
                                    },
                                    _ => {
                                        found = false;
                                        break;
                                    }
                                };
                            }
                            add_parsed(
                                &mut state.labels,
                                stream,
                                label,
                                if found { json_value_text(at) } else { String::new() },
                            );
                        }
                    }
                }
                Ok(_) => set_error(&mut state.labels, "JSONParserErr", "line is JSON but not an object".into()),
                Err(e) => set_error(&mut state.labels, "JSONParserErr", e.to_string()),
            },
            Stage::Logfmt => match parse_logfmt(&state.line) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        add_parsed(&mut state.labels, stream, &k, v);
                    }
                }
                Err(e) => set_error(&mut state.labels, "LogfmtParserErr", e),
            },
            Stage::Regexp(regex) => {
                if let Some(captures) = regex.captures(&state.line) {
                    for name in regex.capture_names().flatten() {
                        if let Some(m) = captures.name(name) {
                            let value = m.as_str().to_string();
                            add_parsed(&mut state.labels, stream, name, value);
                        }
                    }
                }
            }
            Stage::Pattern(parts) => {
                if let Some(pairs) = match_pattern(parts, &state.line) {
                    for (k, v) in pairs {
                        add_parsed(&mut state.labels, stream, &k, v);
                    }
                }
            }
            Stage::Unpack => match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&state.line) {
                Ok(map) => {
                    let mut entry = None;
                    for (k, v) in map {
                        if k == "_entry" {
                            entry = Some(json_value_text(&v));
                        } else if let serde_json::Value::String(s) = v {
                            add_parsed(&mut state.labels, stream, &k, s);
                        }
                    }
                    if let Some(entry) = entry {
                        state.line = entry;
                    }
                }
                Err(e) => set_error(&mut state.labels, "JSONParserErr", e.to_string()),
            },
            Stage::LabelFilter(filter) => {
                if !eval_label_filter(filter, &mut state.labels) {
                    return false;
                }
            }
            Stage::LineFormat(template) => state.line = render(template, state),
            Stage::LabelFormat(formats) => {
                for format in formats {
                    match format {
                        LabelFormat::Rename { dst, src } => {
                            let value = state.labels.remove(src).unwrap_or_default();
                            state.labels.insert(dst.clone(), value);
                        }
                        LabelFormat::Template { dst, template } => {
                            let value = render(template, state);
                            state.labels.insert(dst.clone(), value);
                        }
                    }
                }
            }
            Stage::Drop(items) => {
                for (name, matcher) in items {
                    let drop = match matcher {
                        Some(m) => m.matches(state.labels.get(name).unwrap_or("")),
                        None => true,
                    };
                    if drop {
                        state.labels.remove(name);
                        if name == ERROR_LABEL {
                            state.labels.remove(ERROR_DETAILS_LABEL);
                        }
                    }
                }
            }
            Stage::Keep(items) => {
                let keep: Vec<(String, String)> = state
                    .labels
                    .iter()
                    .filter(|(name, value)| items.iter().any(|(n, m)| n == name && m.as_ref().is_none_or(|m| m.matches(value))))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                state.labels = LabelSet::from_pairs(keep);
            }
            Stage::Decolorize => state.line = strip_ansi(&state.line),
        }
    }
    true
}

/// The unwrapped value of a line, or the conversion error.
pub fn unwrap_value(unwrap: &Unwrap, state: &mut LineState) -> Option<f64> {
    let value = match state.labels.get(&unwrap.label) {
        Some(raw) => match label_number(raw, unwrap.kind) {
            Some(v) => Some(v),
            None => {
                let details = format!("cannot unwrap {}={raw:?} as a number", unwrap.label);
                set_error(&mut state.labels, "SampleExtractionErr", details);
                None
            }
        },
        None => {
            set_error(
                &mut state.labels,
                "SampleExtractionErr",
                format!("label {} is absent", unwrap.label),
            );
            None
        }
    };
    for filter in &unwrap.post_filters {
        if !eval_label_filter(filter, &mut state.labels) {
            return None;
        }
    }
    value.filter(|_| state.labels.get(ERROR_LABEL).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logql::parser::parse;

    fn pipeline(q: &str) -> Vec<Stage> {
        match parse(q).unwrap() {
            Expr::Log(l) => l.pipeline,
            other => panic!("{other:?}"),
        }
    }

    fn apply(q: &str, line: &str) -> Option<LineState> {
        let stream = LabelSet::from_pairs([("app", "x")]);
        let mut state = LineState {
            ts: 0,
            line: line.into(),
            labels: stream.clone(),
        };
        run(&pipeline(q), &stream, &mut state).then_some(state)
    }

    #[test]
    fn json_flattens_and_filters() {
        let s = apply(
            r#"{app="x"} | json | status >= 500"#,
            r#"{"status":503,"req":{"method":"GET"},"app":"y","tags":[1]}"#,
        )
        .unwrap();
        assert_eq!(s.labels.get("req_method"), Some("GET"));
        assert_eq!(s.labels.get("app_extracted"), Some("y"));
        assert!(apply(r#"{app="x"} | json | status >= 500"#, r#"{"status":200}"#).is_none());
        let bad = apply(r#"{app="x"} | json"#, "not json").unwrap();
        assert_eq!(bad.labels.get(ERROR_LABEL), Some("JSONParserErr"));
        assert!(apply(r#"{app="x"} | json | __error__="""#, "not json").is_none());
        let dropped = apply(r#"{app="x"} | json | drop __error__"#, "not json").unwrap();
        assert_eq!(dropped.labels.get(ERROR_LABEL), None);
        let picked = apply(
            r#"{app="x"} | json m="req.method", first="list[0]""#,
            r#"{"req":{"method":"PUT"},"list":["a"]}"#,
        )
        .unwrap();
        assert_eq!((picked.labels.get("m"), picked.labels.get("first")), (Some("PUT"), Some("a")));
    }

    #[test]
    fn logfmt_and_numeric_filters() {
        let q = r#"{app="x"} | logfmt | level="error" and latency > 250ms"#;
        assert!(apply(q, r#"level=error latency=300ms msg="slow call""#).is_some());
        assert!(apply(q, "level=error latency=100ms").is_none());
        let s = apply(r#"{app="x"} | logfmt | size > 1KB"#, "size=abc").unwrap();
        assert_eq!(s.labels.get(ERROR_LABEL), Some("LabelFilterErr"));
        assert_eq!(
            apply(r#"{app="x"} | logfmt"#, r#"a="unterminated"#)
                .unwrap()
                .labels
                .get(ERROR_LABEL),
            Some("LogfmtParserErr")
        );
    }

    #[test]
    fn line_filters_and_formatting() {
        assert!(apply(r#"{app="x"} |= "err" != "timeout""#, "an error").is_some());
        assert!(apply(r#"{app="x"} |= "err" != "timeout""#, "error timeout").is_none());
        assert!(apply(r#"{app="x"} |~ "(?i)CUDA""#, "cuda oom").is_some());
        assert!(apply(r#"{app="x"} |= "a" or "b""#, "xbx").is_some());
        let s = apply(r#"{app="x"} | logfmt | line_format "{{.app}}: {{ .msg }}""#, "msg=hi").unwrap();
        assert_eq!(s.line, "x: hi");
        let s = apply(r#"{app="x"} | pattern "<ip> - <_> <code>""#, "1.2.3.4 - frank 200").unwrap();
        assert_eq!((s.labels.get("ip"), s.labels.get("code")), (Some("1.2.3.4"), Some("200")));
        let s = apply(r#"{app="x"} | regexp "took (?P<ms>\\d+)ms""#, "took 42ms").unwrap();
        assert_eq!(s.labels.get("ms"), Some("42"));
        let s = apply(r#"{app="x"} | keep app"#, "x").unwrap();
        assert_eq!(s.labels.len(), 1);
    }
}
