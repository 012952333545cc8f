//! Bounds on how deeply a query nests, checked before it is parsed. The
//! parsers (weft's LogQL parser, tantivy's query grammar, promql-parser)
//! and the evaluators recurse once per level, and so does dropping a
//! parsed tree: a query of thousands of `(`, or of `1+1+…` or `- - - 1`,
//! overflowed the thread's stack, which aborts the whole process (in
//! `weft standalone`, the indexer with it). Each check reads the text the
//! way its parser will (LogQL from its own tokens, PromQL with
//! promql-parser's comments and quotes), so nothing hidden in what the
//! check takes for a string or a comment reaches the parser.

use crate::QueryError;

/// Most brackets (`(`, `[`, `{`) open at once in a query.
pub const MAX_BRACKETS: usize = 64;
/// Most operators in a query, or levels of its tree: each is one level of
/// recursion in the parsers and evaluators.
pub const MAX_DEPTH: usize = 256;

/// The error for brackets open more than [`MAX_BRACKETS`] deep.
pub fn too_nested(what: &str, at: usize) -> QueryError {
    QueryError::BadRequest(format!("{what} nests brackets more than {MAX_BRACKETS} deep (at byte {at})"))
}

/// The error for more than [`MAX_DEPTH`] operators or levels.
pub fn too_deep(what: &str) -> QueryError {
    QueryError::BadRequest(format!(
        "{what} chains or nests more than {MAX_DEPTH} operators; split it into smaller queries"
    ))
}

/// Checks a PromQL text as promql-parser reads it: `#` starts a comment to
/// the end of the line; `"…"`, `'…'` and `` `…` `` are strings in which a
/// backslash escapes the next character; label matchers live in `{…}`.
/// Refuses more than [`MAX_BRACKETS`] brackets open at once, and more
/// than [`MAX_DEPTH`] operators outside braces (`+ - * / % ^`, the
/// comparisons, `and`, `or`, `unless`, `atan2`): the parser builds and
/// checks a chain of them recursively, before any tree exists to measure.
pub fn check_promql(text: &str) -> Result<(), QueryError> {
    let bytes = text.as_bytes();
    let (mut depth, mut braces, mut operators) = (0usize, 0usize, 0usize);
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        match byte {
            // To the end of the line, which a `\r` ends too.
            b'#' => {
                while at < bytes.len() && !matches!(bytes[at], b'\n' | b'\r') {
                    at += 1;
                }
            }
            b'"' | b'\'' | b'`' => {
                at += 1;
                while at < bytes.len() && bytes[at] != byte {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                braces += usize::from(byte == b'{');
                if depth > MAX_BRACKETS {
                    return Err(too_nested("query", at));
                }
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if byte == b'}' {
                    braces = braces.saturating_sub(1);
                }
            }
            // An operator outside braces; a two-byte comparison counts once
            // (at its second byte).
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!'
                if braces == 0 && !(matches!(byte, b'<' | b'>' | b'=' | b'!') && bytes.get(at + 1) == Some(&b'=')) =>
            {
                operators += 1;
            }
            b'a' | b'o' | b'u' | b'A' | b'O' | b'U' if braces == 0 && (at == 0 || !is_word_byte(bytes[at - 1])) => {
                let end = bytes[at..].iter().position(|b| !is_word_byte(*b)).map_or(bytes.len(), |n| at + n);
                let word = &text[at..end];
                if ["and", "or", "unless", "atan2"].iter().any(|op| word.eq_ignore_ascii_case(op)) {
                    operators += 1;
                }
                at = end;
                continue;
            }
            _ => {}
        }
        if operators > MAX_DEPTH {
            return Err(too_deep("query"));
        }
        at += 1;
    }
    Ok(())
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':'
}

/// Checks a search text for tantivy's query grammar, which recurses per
/// bracket and per prefix operator: every bracket counts, quoted or not
/// (its grammar escapes quotes outside strings, and punctuation inside a
/// phrase finds nothing anyway), and at most [`MAX_DEPTH`] operators
/// (`NOT`, `AND`, `OR`, a leading `-` or `+`).
pub fn check_search(text: &str) -> Result<(), QueryError> {
    let mut depth = 0usize;
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKETS {
                    return Err(too_nested("search expression", at));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let operators = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|word| matches!(*word, "NOT" | "AND" | "OR" | "&&" | "||") || word.starts_with(['-', '+']))
        .count();
    if operators > MAX_DEPTH {
        return Err(too_deep("search expression"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_strings_and_comments_are_read_as_promql_reads_them() {
        let deep = "(".repeat(MAX_BRACKETS + 1);
        assert!(check_promql(&deep)
            .unwrap_err()
            .to_string()
            .contains("more than 64 deep (at byte 64)"));
        assert!(check_promql(&"(".repeat(MAX_BRACKETS)).is_ok());
        // Brackets in strings do not count.
        for quoted in [format!("{{a=\"{deep}\"}}"), format!("{{a=`{deep}`}}"), format!("{{a='\\'{deep}'}}")] {
            assert!(check_promql(&quoted).is_ok(), "{quoted}");
        }
        // A quote in a comment opens no string; an escaped backtick does
        // not end one.
        assert!(check_promql(&format!("#\"\n{deep}")).is_err());
        assert!(check_promql(&format!("#\r{deep}")).is_err());
        assert!(check_promql(&format!("#\r{}up", "-".repeat(MAX_DEPTH + 1))).is_err());
        assert!(check_promql(&format!("{{a=`\\`{deep}`}}")).is_ok());
        // Operators outside braces count; matchers inside do not.
        assert!(check_promql(&vec!["up"; MAX_DEPTH + 2].join(" and ")).is_err());
        assert!(check_promql(&format!("{}up", "-".repeat(MAX_DEPTH + 1))).is_err());
        assert!(check_promql(&vec!["up"; MAX_DEPTH + 1].join(" >= ")).is_ok());
        let matchers: Vec<String> = (0..300).map(|i| format!("l{i}!=\"x\"")).collect();
        assert!(check_promql(&format!("up{{{}}}", matchers.join(","))).is_ok());
        assert!(check_promql("sum by (android, order, unit) (up)").is_ok());
    }

    #[test]
    fn search_brackets_count_quoted_or_not() {
        assert!(check_search(&format!("\\\" {}a", "(".repeat(MAX_BRACKETS + 1))).is_err());
        assert!(check_search(&format!("{}a", "NOT ".repeat(MAX_DEPTH + 1))).is_err());
        assert!(check_search(&format!("{}a", "-".repeat(MAX_DEPTH + 1))).is_ok(), "one word");
        assert!(check_search("error AND (nccl OR cuda) -warning").is_ok());
    }
}
