//! Label sets: the sorted name → value pairs that identify a log stream or a
//! metric series, their canonical text form `{a="x", b="y"}`, and its parser
//! (Loki's push protobuf carries stream labels in that form).

use std::fmt;

use crate::ModelError;

/// Longest label name or value weft accepts.
pub const MAX_LABEL_BYTES: usize = 2048;
/// Most labels one stream may carry.
pub const MAX_LABELS: usize = 64;

/// A sorted, duplicate-free set of labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet {
    pairs: Vec<(String, String)>,
}

impl LabelSet {
    /// An empty label set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from pairs; later duplicates replace earlier ones and
    /// empty values are dropped (an empty value means "label absent").
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut set = Self::new();
        for (name, value) in pairs {
            set.insert(name, value);
        }
        set
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.pairs.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(at) if value.is_empty() => {
                self.pairs.remove(at);
            }
            Ok(at) => self.pairs[at].1 = value,
            Err(_) if value.is_empty() => {}
            Err(at) => self.pairs.insert(at, (name, value)),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| self.pairs[at].1.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| self.pairs.remove(at).1)
    }

    /// The pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Keeps only the labels whose names satisfy `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.pairs.retain(|(n, _)| keep(n));
    }

    /// A JSON object of the labels.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.pairs
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    /// Parses the canonical text form `{a="x", b="y"}` (also `{}`), with Go
    /// string escapes in values.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let invalid = |at: usize, reason: &'static str| ModelError::InvalidLabels {
            text: text.chars().take(200).collect(),
            at,
            reason,
        };
        let bytes = text.as_bytes();
        let mut pos = skip_ws(bytes, 0);
        if bytes.get(pos) != Some(&b'{') {
            return Err(invalid(pos, "expected '{'"));
        }
        pos = skip_ws(bytes, pos + 1);
        let mut set = LabelSet::new();
        if bytes.get(pos) == Some(&b'}') {
            return if skip_ws(bytes, pos + 1) == bytes.len() {
                Ok(set)
            } else {
                Err(invalid(pos + 1, "trailing text after '}'"))
            };
        }
        loop {
            let name_start = pos;
            while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'_' || bytes[pos] == b'.') {
                pos += 1;
            }
            if pos == name_start {
                return Err(invalid(pos, "expected a label name"));
            }
            let name = &text[name_start..pos];
            validate_label_name(name).map_err(|_| invalid(name_start, "invalid label name"))?;
            pos = skip_ws(bytes, pos);
            if bytes.get(pos) != Some(&b'=') {
                return Err(invalid(pos, "expected '='"));
            }
            pos = skip_ws(bytes, pos + 1);
            let (value, next) = parse_quoted(text, pos).map_err(|reason| invalid(pos, reason))?;
            if value.len() > MAX_LABEL_BYTES {
                return Err(invalid(pos, "label value too long"));
            }
            set.insert(name, value);
            if set.len() > MAX_LABELS {
                return Err(invalid(pos, "too many labels"));
            }
            pos = skip_ws(bytes, next);
            match bytes.get(pos) {
                Some(b',') => pos = skip_ws(bytes, pos + 1),
                Some(b'}') => {
                    return if skip_ws(bytes, pos + 1) == bytes.len() {
                        Ok(set)
                    } else {
                        Err(invalid(pos + 1, "trailing text after '}'"))
                    };
                }
                _ => return Err(invalid(pos, "expected ',' or '}'")),
            }
        }
    }
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

/// Parses a double-quoted (or back-quoted, raw) string starting at `pos`,
/// returning the unescaped value and the position after the closing quote.
pub fn parse_quoted(text: &str, pos: usize) -> Result<(String, usize), &'static str> {
    let bytes = text.as_bytes();
    let quote = match bytes.get(pos) {
        Some(q @ (b'"' | b'`' | b'\'')) => *q,
        _ => return Err("expected a quoted string"),
    };
    let mut out = String::new();
    let mut chars = text[pos + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let here = pos + 1 + offset;
        if c as u32 == quote as u32 {
            return Ok((out, here + 1));
        }
        if c == '\\' && quote != b'`' {
            let (_, escaped) = chars.next().ok_or("unterminated escape")?;
            match escaped {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                '`' => out.push('`'),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'v' => out.push('\x0b'),
                'x' | 'u' | 'U' => {
                    let digits = match escaped {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let mut value = 0u32;
                    for _ in 0..digits {
                        let (_, h) = chars.next().ok_or("unterminated escape")?;
                        value = value * 16 + h.to_digit(16).ok_or("invalid hex escape")?;
                    }
                    out.push(char::from_u32(value).ok_or("invalid unicode escape")?);
                }
                '.' | '-' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | 'd' | 'w' | 's' | 'D' | 'W' | 'S' => {
                    // Regex escapes inside double-quoted strings are kept
                    // verbatim so `=~ "a\.b"` means what users expect.
                    out.push('\\');
                    out.push(escaped);
                }
                _ => return Err("unknown escape sequence"),
            }
            continue;
        }
        out.push(c);
    }
    Err("unterminated string")
}

/// Checks that a label name is `[a-zA-Z_][a-zA-Z0-9_]*` and not too long.
pub fn validate_label_name(name: &str) -> Result<(), ModelError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_BYTES
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ModelError::InvalidLabelName(name.chars().take(100).collect()))
    }
}

/// Replaces characters that are not valid in a label name with `_`
/// (OTLP `k8s.pod.name` style keys, JSON keys).
pub fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}=")?;
            write_go_quoted(f, value)?;
        }
        f.write_str("}")
    }
}

/// Writes a string double-quoted with Go's escapes.
pub fn write_go_quoted(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\r' => out.write_str("\\r")?,
            c if (c as u32) < 0x20 => write!(out, "\\x{:02x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_round_trip() {
        let set = LabelSet::from_pairs([("pod", "train-0"), ("namespace", "ml"), ("msg", "a \"q\"\n")]);
        let text = set.to_string();
        assert_eq!(text, r#"{msg="a \"q\"\n", namespace="ml", pod="train-0"}"#);
        assert_eq!(LabelSet::parse(&text).unwrap(), set);
        assert_eq!(LabelSet::parse("{}").unwrap(), LabelSet::new());
        assert_eq!(LabelSet::parse(r#"{job="x",a="b"}"#).unwrap().get("job"), Some("x"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "job=\"x\"", "{job=x}", "{job=\"x\"", "{1a=\"x\"}", "{a=\"x\"} junk"] {
            assert!(LabelSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_values_mean_absent() {
        let mut set = LabelSet::from_pairs([("a", "1"), ("b", "")]);
        assert_eq!(set.len(), 1);
        set.insert("a", "");
        assert!(set.is_empty());
    }
}
