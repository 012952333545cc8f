//! Runs PromQL test files in the format of Prometheus'
//! `promql/promqltest/testdata/*.test`: `load <interval>` blocks of series in
//! expanding notation (`0+10x5`, `_`, `stale`, `1x3`), `clear`,
//! `eval instant at <t> <expr>` and `eval range from <t0> to <t1> step <s>
//! <expr>` followed by the expected series, with `expect fail`,
//! `expect ordered` (and the older `eval_fail` / `eval_ordered` spellings).
//! Values compare with Prometheus' relative tolerance (1e-6).

use std::path::Path;

use weft_model::metric::stale_marker;
use weft_model::time::parse_duration;
use weft_model::LabelSet;

use super::engine::{self, EvalLimits, PromResult};
use super::source::MemorySource;
use crate::QueryError;

/// What one file's run gave.
#[derive(Debug, Default)]
pub struct FileReport {
    pub passed: usize,
    /// `file:line: what went wrong`.
    pub failed: Vec<String>,
    /// `file:line: why it was not run`.
    pub skipped: Vec<String>,
}

/// One expected value: a number, or absent at that step.
type Expected = Option<f64>;

#[derive(Debug)]
struct ExpectedSeries {
    labels: LabelSet,
    values: Vec<Expected>,
}

#[derive(Debug)]
enum Expectation {
    Fail(Option<String>),
    Series { series: Vec<ExpectedSeries>, ordered: bool },
    Scalar(f64),
    String(String),
}

fn parse_number(token: &str) -> Option<f64> {
    match token {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        "stale" => Some(stale_marker()),
        _ => token.parse::<f64>().ok().or_else(|| {
            // Hex and other Go number forms are rare; accept ints with '_'.
            token.replace('_', "").parse::<f64>().ok()
        }),
    }
}

/// Expands the value notation of a series line.
fn expand_values(text: &str) -> Result<Vec<Expected>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        if token == "_" {
            out.push(None);
            continue;
        }
        if let Some(times) = token.strip_prefix("_x") {
            let n: usize = times.parse().map_err(|_| format!("invalid repetition {token:?}"))?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if let Some((head, times)) = token.rsplit_once('x') {
            if let Ok(n) = times.parse::<usize>() {
                // a+bxn, a-bxn, axn
                let (start, delta) = split_start_delta(head).ok_or_else(|| format!("invalid value {token:?}"))?;
                for i in 0..=n {
                    out.push(Some(start + delta * i as f64));
                }
                continue;
            }
        }
        out.push(Some(parse_number(token).ok_or_else(|| format!("invalid value {token:?}"))?));
    }
    Ok(out)
}

fn split_start_delta(head: &str) -> Option<(f64, f64)> {
    // Find a '+' or '-' that is not the leading sign and not part of an exponent.
    let bytes = head.as_bytes();
    for i in (1..bytes.len()).rev() {
        if (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E') {
            let start = parse_number(&head[..i])?;
            let delta = parse_number(&head[i + 1..])?;
            return Some((start, if bytes[i] == b'-' { -delta } else { delta }));
        }
    }
    Some((parse_number(head)?, 0.0))
}

/// Splits `metric{a="b"} values` into the label set and the values text.
fn parse_series_line(line: &str) -> Result<(LabelSet, &str), String> {
    let line = line.trim();
    let (selector_end, labels) = if let Some(open) = line.find('{') {
        let name = line[..open].trim();
        let close = find_closing_brace(line, open).ok_or("unclosed '{'")?;
        let mut labels = LabelSet::parse(&line[open..=close]).map_err(|e| e.to_string())?;
        if !name.is_empty() {
            labels.insert(weft_model::metric::METRIC_NAME, name);
        }
        (close + 1, labels)
    } else {
        let end = line.find(char::is_whitespace).unwrap_or(line.len());
        (end, LabelSet::from_pairs([(weft_model::metric::METRIC_NAME, &line[..end])]))
    };
    Ok((labels, line[selector_end..].trim()))
}

fn find_closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn duration_ms(text: &str) -> Result<i64, String> {
    parse_duration(text).map(|ns| ns / 1_000_000).map_err(|e| e.to_string())
}

/// Prometheus' `almost.Equal` with epsilon 1e-6; NaN equals NaN.
pub fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 1e-6;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

struct Eval {
    line: usize,
    text: String,
    range: Option<(i64, i64, i64)>,
    at: i64,
    expectation: Expectation,
}

fn check(eval: &Eval, source: &MemorySource) -> Result<(), String> {
    let expr = match engine::parse(&eval.text) {
        Ok(expr) => expr,
        Err(e) => {
            return match &eval.expectation {
                Expectation::Fail(_) => Ok(()),
                _ => Err(format!("unexpected parse error: {e}")),
            }
        }
    };
    let limits = EvalLimits::default();
    let result = match eval.range {
        Some((start, end, step)) => engine::query_range(source, &expr, start, end, step, limits),
        None => engine::query_instant(source, &expr, eval.at, limits),
    };
    let result = match (&eval.expectation, result) {
        (Expectation::Fail(message), Err(e)) => {
            return match message {
                Some(m) if !e.to_string().contains(m.as_str()) => Err(format!("expected error containing {m:?}, got {e}")),
                _ => Ok(()),
            };
        }
        (Expectation::Fail(_), Ok(r)) => return Err(format!("expected an error, got {r:?}")),
        (_, Err(e)) => return Err(e.to_string()),
        (_, Ok(r)) => r,
    };
    match (&eval.expectation, result) {
        (Expectation::Scalar(want), PromResult::Scalar(_, got)) => {
            if almost_equal(*want, got) {
                Ok(())
            } else {
                Err(format!("expected scalar {want}, got {got}"))
            }
        }
        (Expectation::String(want), PromResult::String(_, got)) => {
            if *want == got {
                Ok(())
            } else {
                Err(format!("expected string {want:?}, got {got:?}"))
            }
        }
        (Expectation::Series { series: want, ordered }, PromResult::Vector(got)) => {
            if want.len() != got.len() {
                return Err(format!(
                    "expected {} samples, got {}: {:?}",
                    want.len(),
                    got.len(),
                    got.iter().map(|g| format!("{} {}", g.0, g.2)).collect::<Vec<_>>()
                ));
            }
            for (i, w) in want.iter().enumerate() {
                let found = if *ordered {
                    got.get(i).filter(|g| g.0 == w.labels)
                } else {
                    got.iter().find(|g| g.0 == w.labels)
                };
                let Some(g) = found else {
                    return Err(format!(
                        "expected {} not found{}",
                        w.labels,
                        if *ordered { " at its position" } else { "" }
                    ));
                };
                let expected = w.values.first().copied().flatten();
                match expected {
                    Some(e) if almost_equal(e, g.2) => {}
                    _ => return Err(format!("{}: expected {:?}, got {}", w.labels, expected, g.2)),
                }
            }
            Ok(())
        }
        (Expectation::Series { series: want, .. }, PromResult::Matrix(got)) => {
            let (start, step) = eval.range.map(|(s, _, st)| (s, st)).unwrap_or((eval.at, 1));
            if want.len() != got.len() {
                return Err(format!(
                    "expected {} series, got {}: {:?}",
                    want.len(),
                    got.len(),
                    got.iter().map(|g| g.labels.to_string()).collect::<Vec<_>>()
                ));
            }
            for w in want {
                let Some(g) = got.iter().find(|g| g.labels == w.labels) else {
                    return Err(format!("expected series {} not found", w.labels));
                };
                let expected: Vec<(i64, f64)> = w
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (start + i as i64 * step, v)))
                    .collect();
                let same =
                    expected.len() == g.samples.len() && expected.iter().zip(&g.samples).all(|(e, s)| e.0 == s.0 && almost_equal(e.1, s.1));
                if !same {
                    return Err(format!("{}: expected {:?}, got {:?}", w.labels, expected, g.samples));
                }
            }
            Ok(())
        }
        (Expectation::Series { series: want, .. }, PromResult::Scalar(_, got)) if want.is_empty() => {
            Err(format!("expected no samples, got scalar {got}"))
        }
        (want, got) => Err(format!("expected {want:?}, got {got:?}")),
    }
}

/// Runs one test file.
pub fn run_file(path: &Path) -> Result<FileReport, QueryError> {
    let text = std::fs::read_to_string(path).map_err(|e| QueryError::BadRequest(format!("{}: {e}", path.display())))?;
    Ok(run_text(&path.display().to_string(), &text))
}

/// Runs the text of a test file; `name` prefixes every message.
pub fn run_text(name: &str, text: &str) -> FileReport {
    let mut report = FileReport::default();
    let mut source = MemorySource::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let line_no = i + 1;
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let body_start = i;
        // The indented (or non-command) lines that follow belong to this command.
        while i < lines.len() && !lines[i].trim().is_empty() && !is_command(lines[i].trim()) {
            i += 1;
        }
        let body: Vec<(usize, &str)> = (body_start..i)
            .map(|j| (j + 1, lines[j].trim()))
            .filter(|(_, l)| !l.starts_with('#'))
            .collect();
        if line == "clear" {
            source.clear();
            continue;
        }
        if let Some(rest) = line.strip_prefix("load_with_nhcb") {
            report
                .skipped
                .push(format!("{name}:{line_no}: native histograms are not supported ({})", rest.trim()));
            continue;
        }
        if let Some(interval) = line.strip_prefix("load ") {
            let interval = match duration_ms(interval.trim()) {
                Ok(ms) => ms,
                Err(e) => {
                    report.failed.push(format!("{name}:{line_no}: invalid load interval: {e}"));
                    continue;
                }
            };
            for (n, series_line) in body {
                if series_line.contains("{{") {
                    report.skipped.push(format!("{name}:{n}: native histogram series not loaded"));
                    continue;
                }
                match parse_series_line(series_line).and_then(|(labels, values)| Ok((labels, expand_values(values)?))) {
                    Ok((labels, values)) => {
                        let samples = values
                            .into_iter()
                            .enumerate()
                            .filter_map(|(k, v)| v.map(|v| (k as i64 * interval, v)));
                        source.add(labels, samples);
                    }
                    Err(e) => report.failed.push(format!("{name}:{n}: invalid series: {e}")),
                }
            }
            continue;
        }
        if line.starts_with("eval") {
            match parse_eval(line, line_no, &body) {
                Ok(eval) => {
                    if eval.text.contains("{{") || body.iter().any(|(_, l)| l.contains("{{")) {
                        report
                            .skipped
                            .push(format!("{name}:{line_no}: native histograms are not supported"));
                        continue;
                    }
                    match check(&eval, &source) {
                        Ok(()) => report.passed += 1,
                        Err(reason) if reason.starts_with("not supported") => {
                            report.skipped.push(format!("{name}:{}: {}: {reason}", eval.line, eval.text))
                        }
                        Err(reason) => report.failed.push(format!("{name}:{}: {}: {reason}", eval.line, eval.text)),
                    }
                }
                Err(e) => report.failed.push(format!("{name}:{line_no}: {e}")),
            }
            continue;
        }
        report.skipped.push(format!("{name}:{line_no}: unknown command {line:?}"));
    }
    report
}

fn is_command(line: &str) -> bool {
    line.starts_with("load") || line.starts_with("eval") || line == "clear"
}

fn parse_eval(line: &str, line_no: usize, body: &[(usize, &str)]) -> Result<Eval, String> {
    let (command, rest) = line.split_once(' ').ok_or("eval needs arguments")?;
    let mut fail = None;
    let mut ordered = false;
    match command {
        "eval" => {}
        "eval_fail" => fail = Some(None),
        "eval_ordered" => ordered = true,
        "eval_warn" | "eval_info" => {}
        other => return Err(format!("unknown command {other}")),
    }
    let rest = rest.trim();
    let (range, at, text) = if let Some(r) = rest.strip_prefix("instant at ") {
        let (t, expr) = r.split_once(' ').ok_or("eval instant needs a time and an expression")?;
        (None, duration_ms(t)?, expr.trim().to_string())
    } else if let Some(r) = rest.strip_prefix("range from ") {
        let (start, r) = r.split_once(" to ").ok_or("eval range needs 'to'")?;
        let (end, r) = r.split_once(" step ").ok_or("eval range needs 'step'")?;
        let (step, expr) = r.trim().split_once(' ').ok_or("eval range needs an expression")?;
        let start = duration_ms(start.trim())?;
        (
            Some((start, duration_ms(end.trim())?, duration_ms(step)?)),
            start,
            expr.trim().to_string(),
        )
    } else {
        return Err(format!("cannot read eval line {line:?}"));
    };
    let mut series = Vec::new();
    let mut scalar = None;
    let mut string = None;
    for (n, body_line) in body {
        if let Some(expect) = body_line.strip_prefix("expect ") {
            let expect = expect.trim();
            if let Some(message) = expect.strip_prefix("fail") {
                let message = message.trim();
                let message = message.strip_prefix("msg:").map(|m| m.trim().to_string());
                fail = Some(message);
            } else if expect == "ordered" {
                ordered = true;
            } else if let Some(s) = expect.strip_prefix("string") {
                string = Some(s.trim().trim_matches('"').to_string());
            }
            // warn / info / no_warn / no_info / range vector: annotations are not checked.
            continue;
        }
        if let Some(number) = parse_number(body_line) {
            scalar = Some(number);
            continue;
        }
        let (labels, values) = parse_series_line(body_line).map_err(|e| format!("line {n}: {e}"))?;
        series.push(ExpectedSeries {
            labels,
            values: expand_values(values).map_err(|e| format!("line {n}: {e}"))?,
        });
    }
    let expectation = match (fail, scalar, string) {
        (Some(message), _, _) => Expectation::Fail(message),
        (None, Some(v), _) => Expectation::Scalar(v),
        (None, None, Some(s)) => Expectation::String(s),
        (None, None, None) => Expectation::Series { series, ordered },
    };
    Ok(Eval {
        line: line_no,
        text,
        range,
        at,
        expectation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_notation_expands() {
        assert_eq!(
            expand_values("0+10x3").unwrap(),
            vec![Some(0.0), Some(10.0), Some(20.0), Some(30.0)]
        );
        assert_eq!(
            expand_values("1x2 _ 5-1x1").unwrap(),
            vec![Some(1.0), Some(1.0), Some(1.0), None, Some(5.0), Some(4.0)]
        );
        assert_eq!(expand_values("_x2 -2").unwrap(), vec![None, None, Some(-2.0)]);
        assert!(expand_values("1e3+1e2x1").unwrap() == vec![Some(1000.0), Some(1100.0)]);
        assert!(weft_model::metric::is_stale_marker(expand_values("stale").unwrap()[0].unwrap()));
    }

    #[test]
    fn a_small_file_runs() {
        let text = r#"
load 5m
  http_requests{job="api", instance="0"} 0+10x10
  http_requests{job="api", instance="1"} 0+20x10

eval instant at 50m sum by (job) (http_requests)
  {job="api"} 300

eval instant at 50m http_requests{instance="1"}
  http_requests{job="api", instance="1"} 200

eval range from 0 to 10m step 5m sum(http_requests)
  {} 0 30 60

eval instant at 50m nonsense(
  expect fail

eval instant at 50m 1 + 1
  2

eval instant at 50m sum by (job) (http_requests)
  {job="api"} 301
"#;
        let report = run_text("t", text);
        assert_eq!(report.passed, 5, "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].starts_with("t:21:"), "{report:?}");
    }
}
