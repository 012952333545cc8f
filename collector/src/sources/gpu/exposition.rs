//! The Prometheus text exposition format, as dcgm-exporter serves it:
//! `# HELP` / `# TYPE` comments and `name{label="value",…} value [timestamp]`
//! lines. [`parse`] reads a scrape (a bad line is reported with its number
//! and skipped; the rest of the scrape is kept); [`render`] writes one
//! (`weft gpu`).

use weft_model::metric::{MetadataMap, METRIC_NAME};
use weft_model::LabelSet;

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ExposedSample {
    /// Labels with `__name__`.
    pub labels: LabelSet,
    pub value: f64,
    /// Milliseconds, when the line carries one.
    pub ts: Option<i64>,
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parses an exposition; returns the samples and one message per bad line.
pub fn parse(text: &str, metadata: &mut MetadataMap) -> (Vec<ExposedSample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => metadata.entry(name.to_string()).or_default().kind = kind.trim().to_string(),
                (Some("HELP"), Some(name), help) => metadata.entry(name.to_string()).or_default().help = help.unwrap_or("").to_string(),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        let name = &line[..name_end];
        let (mut labels, rest) = if line[name_end..].starts_with('{') {
            let Some(close) = closing_brace(line, name_end) else {
                errors.push(format!("line {}: unclosed '{{'", n + 1));
                continue;
            };
            match LabelSet::parse(&line[name_end..=close]) {
                Ok(labels) => (labels, &line[close + 1..]),
                Err(e) => {
                    errors.push(format!("line {}: {e}", n + 1));
                    continue;
                }
            }
        } else {
            (LabelSet::new(), &line[name_end..])
        };
        labels.insert(METRIC_NAME, name);
        let mut fields = rest.split_whitespace();
        let Some(value) = fields.next().and_then(parse_value) else {
            errors.push(format!("line {}: missing or invalid value", n + 1));
            continue;
        };
        let ts = fields.next().and_then(|t| t.parse::<i64>().ok());
        if weft_model::metric::validate_series(&labels).is_err() {
            errors.push(format!("line {}: invalid metric or label name", n + 1));
            continue;
        }
        samples.push(ExposedSample { labels, value, ts });
    }
    (samples, errors)
}

/// Renders samples as an exposition (`# HELP`, `# TYPE`, then one line per
/// sample, grouped by metric name in first-seen order): what `weft gpu`
/// prints, readable by Prometheus and by [`parse`].
pub fn render(samples: &[(LabelSet, f64)], metadata: &MetadataMap) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (labels, _) in samples {
        let name = labels.get(METRIC_NAME).unwrap_or("");
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut out = String::new();
    for name in names {
        if let Some(meta) = metadata.get(name) {
            if !meta.help.is_empty() {
                out.push_str(&format!("# HELP {name} {}\n", meta.help.replace('\\', "\\\\").replace('\n', "\\n")));
            }
            if !meta.kind.is_empty() {
                out.push_str(&format!("# TYPE {name} {}\n", meta.kind));
            }
        }
        for (labels, value) in samples.iter().filter(|(l, _)| l.get(METRIC_NAME).unwrap_or("") == name) {
            out.push_str(name);
            let mut first = true;
            for (label, text) in labels.iter().filter(|(label, _)| *label != METRIC_NAME) {
                out.push(if first { '{' } else { ',' });
                first = false;
                out.push_str(label);
                out.push_str("=\"");
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            if !first {
                out.push('}');
            }
            out.push(' ');
            out.push_str(&render_value(*value));
            out.push('\n');
        }
    }
    out
}

fn render_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

fn closing_brace(line: &str, open: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcgm_exporter_output() {
        let text = r#"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",pci_bus_id="00000000:01:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="n1",DCGM_FI_DRIVER_VERSION="580.126.09",container="main",namespace="ml",pod="train-0"} 97
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a"} 71234 1764000000000
broken{ 1
DCGM_FI_DEV_POWER_USAGE{gpu="0"} NaN
"#;
        let mut metadata = MetadataMap::new();
        let (samples, errors) = parse(text, &mut metadata);
        assert_eq!(samples.len(), 3);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("line 5"));
        assert_eq!(samples[0].labels.get("pod"), Some("train-0"));
        assert_eq!(samples[0].value, 97.0);
        assert_eq!(samples[1].ts, Some(1_764_000_000_000));
        assert!(samples[2].value.is_nan());
        assert_eq!(metadata["DCGM_FI_DEV_GPU_UTIL"].kind, "gauge");
        assert_eq!(metadata["DCGM_FI_DEV_GPU_UTIL"].help, "GPU utilization (in %).");
    }

    #[test]
    fn rendered_samples_parse_back() {
        let labels = |name: &str, model: &str| {
            let mut l = LabelSet::from_pairs([("gpu", "0".to_string()), ("modelName", model.to_string())]);
            l.insert(METRIC_NAME, name);
            l
        };
        let samples = vec![
            (labels("DCGM_FI_DEV_FB_USED", "NVIDIA H100 80GB HBM3"), 1234.5),
            (labels("DCGM_FI_DEV_GPU_TEMP", "a \"quoted\" \\ name\nsecond line"), 31.0),
            (labels("DCGM_FI_DEV_FB_USED", "other"), f64::INFINITY),
        ];
        let metadata = MetadataMap::from([(
            "DCGM_FI_DEV_FB_USED".to_string(),
            weft_model::metric::MetricMetadata {
                kind: "gauge".into(),
                help: "Framebuffer memory used (in MiB). C:\\dir\nsecond line".into(),
                unit: "mebibytes".into(),
            },
        )]);
        let text = render(&samples, &metadata);
        assert!(
            text.starts_with(
                "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB). C:\\\\dir\\nsecond line\n# TYPE DCGM_FI_DEV_FB_USED gauge\n"
            ),
            "{text}"
        );
        // Grouped by name: both FB_USED lines come before the temperature.
        assert!(text.find("other").unwrap() < text.find("DCGM_FI_DEV_GPU_TEMP").unwrap(), "{text}");
        let mut read_metadata = MetadataMap::new();
        let (parsed, errors) = parse(&text, &mut read_metadata);
        assert!(errors.is_empty(), "{errors:?}");
        let mut expected = samples.clone();
        expected.swap(1, 2);
        let got: Vec<(LabelSet, f64)> = parsed.into_iter().map(|s| (s.labels, s.value)).collect();
        assert_eq!(got, expected);
        assert_eq!(read_metadata["DCGM_FI_DEV_FB_USED"].kind, "gauge");

        // Prometheus' own parser reads it: promtool (Debian's prometheus
        // package, scripts/install-test-deps) reports only lint advice,
        // which dcgm-exporter's camelCase label names draw too.
        use std::io::Write;
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool not found: run scripts/install-test-deps (Debian package prometheus)");
        promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("written");
        let checked = promtool.wait_with_output().expect("promtool ran");
        let said = String::from_utf8_lossy(&checked.stderr).to_string() + &String::from_utf8_lossy(&checked.stdout);
        assert!(matches!(checked.status.code(), Some(0 | 3)), "{said}\n{text}");
        assert!(!said.contains("error"), "{said}\n{text}");
    }
}
