//! Alert label and annotation templates, in the subset of Go's
//! text/template that Prometheus rule files use: `{{ $labels.pod }}`,
//! `{{ $value }}`, `{{ .Labels.pod }}`, `{{ .Value }}`, pipelines
//! (`{{ $value | humanize }}`) and the functions `humanize`,
//! `humanize1024`, `humanizePercentage`, `humanizeDuration`, `printf`,
//! `toUpper`, `toLower` and `title`. weft adds, for alerts of LogQL rules,
//! the evidence: the first log record in the rule's window that made the
//! alert fire, as `{{ $line }}` (its telling line: the exception of a
//! traceback) and `{{ $evidence.pod }}` (its labels: pod, rank, ml_event,
//! …). Anything else (`if`, `range`, …) is refused when the rule file is
//! loaded, with the action named.

use weft_model::LabelSet;

/// What a template is rendered with.
pub struct TemplateData<'a> {
    pub labels: &'a LabelSet,
    pub value: f64,
    pub line: &'a str,
    pub evidence: &'a LabelSet,
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Label(String),
    Evidence(String),
    Value,
    Line,
    Text(String),
    Number(f64),
}

#[derive(Clone, Debug, PartialEq)]
enum Command {
    Operand(Operand),
    Call(String, Vec<Operand>),
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    /// Commands of a pipeline; each after the first gets the previous
    /// result as its last argument.
    Action(Vec<Command>),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

const FUNCTIONS: [&str; 8] = [
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "printf",
    "toUpper",
    "toLower",
    "title",
];

#[derive(Clone, Debug)]
enum Evaluated {
    Text(String),
    Number(f64),
}

impl Evaluated {
    fn text(&self) -> String {
        match self {
            Evaluated::Text(t) => t.clone(),
            Evaluated::Number(n) => format_go_value(*n),
        }
    }

    fn number(&self) -> Result<f64, String> {
        match self {
            Evaluated::Number(n) => Ok(*n),
            Evaluated::Text(t) => t.trim().parse().map_err(|_| format!("{t:?} is not a number")),
        }
    }
}

fn tokens(action: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = action.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '|' {
            out.push("|".into());
            continue;
        }
        if c == '"' || c == '`' {
            let mut text = String::new();
            let mut closed = false;
            while let Some((_, d)) = chars.next() {
                if d == c {
                    closed = true;
                    break;
                }
                if d == '\\' && c == '"' {
                    match chars.next() {
                        Some((_, 'n')) => text.push('\n'),
                        Some((_, 't')) => text.push('\t'),
                        Some((_, other)) => text.push(other),
                        None => break,
                    }
                } else {
                    text.push(d);
                }
            }
            if !closed {
                return Err("unterminated string".into());
            }
            out.push(format!("\"{text}"));
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, d)) = chars.peek() {
            if d.is_whitespace() || d == '|' {
                break;
            }
            end = i + d.len_utf8();
            chars.next();
        }
        out.push(action[start..end].to_string());
    }
    Ok(out)
}

fn operand(token: &str) -> Result<Operand, String> {
    if let Some(text) = token.strip_prefix('"') {
        return Ok(Operand::Text(text.to_string()));
    }
    if let Some(name) = token.strip_prefix("$labels.").or_else(|| token.strip_prefix(".Labels.")) {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{token:?} is not a label reference"));
        }
        return Ok(Operand::Label(name.to_string()));
    }
    if let Some(name) = token.strip_prefix("$evidence.").or_else(|| token.strip_prefix(".Evidence.")) {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{token:?} is not a label reference"));
        }
        return Ok(Operand::Evidence(name.to_string()));
    }
    match token {
        "$value" | ".Value" => return Ok(Operand::Value),
        "$line" | ".Line" => return Ok(Operand::Line),
        _ => {}
    }
    if let Ok(n) = token.parse::<f64>() {
        return Ok(Operand::Number(n));
    }
    Err(format!(
        "{token:?} is not supported (use $labels.<name>, $value, $line, $evidence.<name>, a string or a number)"
    ))
}

impl Template {
    /// Parses a template; errors name the action that is not supported.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or("unclosed {{")?;
            let mut action = &after[..close];
            // `{{-` and `-}}` trim the surrounding text.
            if let Some(trimmed) = action.strip_prefix('-') {
                action = trimmed;
                if let Some(Part::Text(t)) = parts.last_mut() {
                    *t = t.trim_end().to_string();
                }
            }
            let trim_after = action.ends_with('-');
            action = action.strip_suffix('-').unwrap_or(action);
            let action_text = action.trim();
            if action_text.starts_with("/*") {
                rest = &after[close + 2..];
                continue;
            }
            let tokens = tokens(action_text).map_err(|e| format!("{{{{{action_text}}}}}: {e}"))?;
            if tokens.is_empty() {
                return Err("empty action {{}}".into());
            }
            let mut commands = Vec::new();
            for command in tokens.split(|t| t == "|") {
                let Some((head, args)) = command.split_first() else {
                    return Err(format!("{{{{{action_text}}}}}: empty command in pipeline"));
                };
                if FUNCTIONS.contains(&head.as_str()) {
                    let args = args.iter().map(|a| operand(a)).collect::<Result<Vec<_>, _>>();
                    commands.push(Command::Call(
                        head.clone(),
                        args.map_err(|e| format!("{{{{{action_text}}}}}: {e}"))?,
                    ));
                } else if args.is_empty() {
                    commands.push(Command::Operand(operand(head).map_err(|e| format!("{{{{{action_text}}}}}: {e}"))?));
                } else {
                    return Err(format!(
                        "{{{{{action_text}}}}}: {head:?} is not a supported function ({})",
                        FUNCTIONS.join(", ")
                    ));
                }
            }
            if matches!(commands.first(), Some(Command::Call(name, args)) if args.is_empty() && name != "printf") {
                return Err(format!("{{{{{action_text}}}}}: the function needs an argument"));
            }
            parts.push(Part::Action(commands));
            rest = &after[close + 2..];
            if trim_after {
                rest = rest.trim_start();
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// True when the template refers to `$line` or `$evidence`.
    pub fn uses_evidence(&self) -> bool {
        let wants = |o: &Operand| matches!(o, Operand::Line | Operand::Evidence(_));
        self.parts.iter().any(|p| match p {
            Part::Action(commands) => commands.iter().any(|c| match c {
                Command::Operand(o) => wants(o),
                Command::Call(_, args) => args.iter().any(wants),
            }),
            Part::Text(_) => false,
        })
    }

    /// Renders the template; a function error is rendered in place, as
    /// Prometheus shows template errors in the annotation.
    pub fn render(&self, data: &TemplateData<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(commands) => match run(commands, data) {
                    Ok(v) => out.push_str(&v.text()),
                    Err(e) => {
                        out.push_str("<error: ");
                        out.push_str(&e);
                        out.push('>');
                    }
                },
            }
        }
        out
    }
}

fn value_of(operand: &Operand, data: &TemplateData<'_>) -> Evaluated {
    match operand {
        Operand::Label(name) => Evaluated::Text(data.labels.get(name).unwrap_or("").to_string()),
        Operand::Evidence(name) => Evaluated::Text(data.evidence.get(name).unwrap_or("").to_string()),
        Operand::Value => Evaluated::Number(data.value),
        Operand::Line => Evaluated::Text(data.line.to_string()),
        Operand::Text(t) => Evaluated::Text(t.clone()),
        Operand::Number(n) => Evaluated::Number(*n),
    }
}

fn run(commands: &[Command], data: &TemplateData<'_>) -> Result<Evaluated, String> {
    let mut previous: Option<Evaluated> = None;
    for command in commands {
        previous = Some(match command {
            Command::Operand(o) => {
                if previous.is_some() {
                    return Err("a value cannot follow | in a pipeline".into());
                }
                value_of(o, data)
            }
            Command::Call(name, args) => {
                let mut values: Vec<Evaluated> = args.iter().map(|a| value_of(a, data)).collect();
                if let Some(p) = previous.take() {
                    values.push(p);
                }
                call(name, &values)?
            }
        });
    }
    previous.ok_or_else(|| "empty pipeline".into())
}

fn one(name: &str, values: &[Evaluated]) -> Result<f64, String> {
    match values {
        [v] => v.number(),
        _ => Err(format!("{name} takes one argument")),
    }
}

fn call(name: &str, values: &[Evaluated]) -> Result<Evaluated, String> {
    Ok(Evaluated::Text(match name {
        "humanize" => humanize(one(name, values)?),
        "humanize1024" => humanize1024(one(name, values)?),
        "humanizePercentage" => format!("{}%", format_go_g(one(name, values)? * 100.0, 4)),
        "humanizeDuration" => humanize_duration(one(name, values)?),
        "toUpper" | "toLower" | "title" => {
            let [v] = values else {
                return Err(format!("{name} takes one argument"));
            };
            let text = v.text();
            match name {
                "toUpper" => text.to_uppercase(),
                "toLower" => text.to_lowercase(),
                _ => title(&text),
            }
        }
        "printf" => {
            let Some((format, args)) = values.split_first() else {
                return Err("printf needs a format".into());
            };
            printf(&format.text(), args)?
        }
        other => return Err(format!("unknown function {other}")),
    }))
}

fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = true;
    for c in text.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// Go's `%v` of a float64 (what `{{ $value }}` prints): shortest digits,
/// exponent form below 1e-4 and from 1e6 (`1e+06`).
pub fn format_go_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    if !(-4..6).contains(&exp) {
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    format!("{v}")
}

/// Go's `%.<prec>g`: `prec` significant digits, trailing zeros dropped,
/// exponent form when the exponent is below -4 or at least `prec`.
pub fn format_go_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.*e}", prec.saturating_sub(1), v);
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    if exp < -4 || exp >= prec as i32 {
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let decimals = (prec as i32 - 1 - exp).max(0) as usize;
    let fixed = format!("{v:.decimals$}");
    if fixed.contains('.') {
        fixed.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        fixed
    }
}

fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return format_go_g(v, 4);
    }
    let mut v = v;
    if v.abs() >= 1.0 {
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", format_go_g(v, 4));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}", format_go_g(v, 4))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return format_go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", format_go_g(v, 4))
}

fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return format_go_g(v, 4);
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let total = v as i64;
        let (seconds, minutes, hours, days) = (total % 60, (total / 60) % 60, (total / 3600) % 24, total / 86_400);
        if days != 0 {
            return format!("{sign}{days}d {hours}h {minutes}m {seconds}s");
        }
        if hours != 0 {
            return format!("{sign}{hours}h {minutes}m {seconds}s");
        }
        if minutes != 0 {
            return format!("{sign}{minutes}m {seconds}s");
        }
        return format!("{sign}{}s", format_go_g(v, 4));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 || v == 0.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", format_go_g(v, 4))
}

/// `printf` with the verbs rule files use: `%s %v %d %f %g %e %q %%`,
/// with width and precision.
fn printf(format: &str, args: &[Evaluated]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() || d == '.' || d == '-' || d == '+' {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let (width, precision) = match spec.trim_start_matches(['-', '+']).split_once('.') {
            Some((w, p)) => (w.parse::<usize>().ok(), p.parse::<usize>().ok().or(Some(0))),
            None => (spec.trim_start_matches(['-', '+']).parse::<usize>().ok(), None),
        };
        let text = match verb {
            's' | 'v' => arg.text(),
            'q' => format!("{:?}", arg.text()),
            'd' => format!("{}", arg.number()?.trunc() as i64),
            'f' | 'F' | 'e' | 'g' if !arg.number()?.is_finite() => format_go_value(arg.number()?),
            'f' | 'F' => format!("{:.*}", precision.unwrap_or(6), arg.number()?),
            'e' => {
                let s = format!("{:.*e}", precision.unwrap_or(6), arg.number()?);
                match s.split_once('e').map(|(m, e)| (m, e.parse::<i32>())) {
                    Some((m, Ok(e))) => format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()),
                    _ => s,
                }
            }
            'g' => match precision {
                Some(p) => format_go_g(arg.number()?, p.max(1)),
                None => format_go_value(arg.number()?),
            },
            other => return Err(format!("printf verb %{other} is not supported")),
        };
        let width = width.unwrap_or(0);
        if text.chars().count() < width {
            let pad = " ".repeat(width - text.chars().count());
            if spec.starts_with('-') {
                out.push_str(&text);
                out.push_str(&pad);
            } else {
                out.push_str(&pad);
                out.push_str(&text);
            }
        } else {
            out.push_str(&text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, value: f64) -> String {
        let labels = LabelSet::from_pairs([("pod", "train-llama-0"), ("ml_event", "cuda_oom")]);
        let evidence = LabelSet::from_pairs([("pod", "train-llama-3"), ("rank", "3")]);
        Template::parse(template).unwrap().render(&TemplateData {
            labels: &labels,
            value,
            line: "torch.OutOfMemoryError: CUDA out of memory.",
            evidence: &evidence,
        })
    }

    #[test]
    fn labels_values_and_pipelines() {
        assert_eq!(
            render("{{ $labels.pod }} hit {{$labels.ml_event}}", 1.0),
            "train-llama-0 hit cuda_oom"
        );
        assert_eq!(render("{{ .Labels.pod }}={{ .Value }}", 0.5), "train-llama-0=0.5");
        assert_eq!(render("{{ $value }}", 1e6), "1e+06");
        assert_eq!(render("{{ $value }}", 123456.0), "123456");
        assert_eq!(render("{{ $value }}", 0.00001), "1e-05");
        assert_eq!(render("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(render("{{ humanize $value }}", 0.012), "12m");
        assert_eq!(render("{{ $value | humanizePercentage }}", 0.0432), "4.32%");
        assert_eq!(render("{{ $value | humanizeDuration }}", 90061.0), "1d 1h 1m 1s");
        assert_eq!(render("{{ $value | humanizeDuration }}", 2.5), "2.5s");
        assert_eq!(render("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(render(r#"{{ printf "%.2f" $value }}"#, 1.23456), "1.23");
        assert_eq!(render(r#"{{ printf "%.2e" $value }}"#, 12345.0), "1.23e+04");
        for (v, text) in [(f64::NAN, "NaN"), (f64::INFINITY, "+Inf"), (f64::NEG_INFINITY, "-Inf")] {
            for verb in ["%e", "%.2e", "%f", "%g", "%.3g", "%v"] {
                assert_eq!(render(&format!("{{{{ printf \"{verb}\" $value }}}}"), v), text, "{verb}");
            }
            assert_eq!(render("{{ $value | humanize }}", v), text);
            assert_eq!(render("{{ $value | humanizeDuration }}", v), text);
            assert_eq!(render("{{ $value | humanizePercentage }}", v), format!("{text}%"));
        }
        assert_eq!(render(r#"{{ printf "%s/%d" $labels.pod $value }}"#, 7.9), "train-llama-0/7");
        assert_eq!(render("{{ $labels.pod | toUpper }}", 0.0), "TRAIN-LLAMA-0");
        assert_eq!(render("{{ $line }}", 0.0), "torch.OutOfMemoryError: CUDA out of memory.");
        assert_eq!(render("{{ $evidence.pod }} rank {{ .Evidence.rank }}", 0.0), "train-llama-3 rank 3");
        assert!(Template::parse("{{ $evidence.pod }}").unwrap().uses_evidence());
        assert!(!Template::parse("{{ $labels.pod }}").unwrap().uses_evidence());
        assert_eq!(render("{{ $labels.missing }}|", 0.0), "|");
        assert_eq!(render("a {{- $labels.pod -}} b", 0.0), "atrain-llama-0b");
    }

    #[test]
    fn unsupported_actions_are_refused_by_name() {
        for bad in [
            "{{ if $value }}x{{ end }}",
            "{{ range $labels }}",
            "{{ $labels.pod",
            "{{ query \"up\" }}",
            "{{ $x }}",
        ] {
            let err = Template::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        let err = Template::parse("{{ query \"up\" }}").unwrap_err();
        assert!(err.contains("\"query\" is not a supported function"), "{err}");
    }

    #[test]
    fn go_float_formats() {
        assert_eq!(format_go_g(1234.5678, 4), "1235");
        assert_eq!(format_go_g(12345.678, 4), "1.235e+04");
        assert_eq!(format_go_g(0.5, 4), "0.5");
        assert_eq!(format_go_value(f64::NAN), "NaN");
        assert_eq!(format_go_value(97.0), "97");
    }
}
