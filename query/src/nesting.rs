//! Bounds on how deeply a query nests, checked before it is parsed or
//! evaluated. The parsers (weft's LogQL parser, tantivy's query grammar,
//! promql-parser) and the evaluators recurse once per level: a query of
//! thousands of `(`, or of `1+1+…`, overflowed the thread's stack, which
//! aborts the whole process (in `weft standalone`, the indexer with it).

use crate::QueryError;

/// Most brackets (`(`, `[`, `{`) open at once in a query text.
pub const MAX_BRACKETS: usize = 64;
/// Most levels of an expression tree: operators chained or nested.
pub const MAX_DEPTH: usize = 256;

/// Refuses `text` where more than [`MAX_BRACKETS`] brackets are open at
/// once, outside quoted strings (`"…"` and `'…'` with backslash escapes,
/// `` `…` `` raw). `what` names the query in the message.
pub fn check_brackets(text: &str, what: &str) -> Result<(), QueryError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            quote @ (b'"' | b'\'' | b'`') => {
                at += 1;
                while at < bytes.len() && bytes[at] != quote {
                    if bytes[at] == b'\\' && quote != b'`' {
                        at += 1;
                    }
                    at += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKETS {
                    return Err(QueryError::BadRequest(format!(
                        "{what} nests brackets more than {MAX_BRACKETS} deep (at byte {at})"
                    )));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The error for an expression tree deeper than [`MAX_DEPTH`].
pub fn too_deep(what: &str) -> QueryError {
    QueryError::BadRequest(format!(
        "{what} chains or nests more than {MAX_DEPTH} operators; split it into smaller queries"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_do_not_count() {
        let deep = "(".repeat(MAX_BRACKETS + 1);
        assert!(check_brackets(&deep, "query")
            .unwrap_err()
            .to_string()
            .contains("more than 64 deep (at byte 64)"));
        assert!(check_brackets(&"(".repeat(MAX_BRACKETS), "query").is_ok());
        for quoted in [format!("{{a=\"{deep}\"}}"), format!("{{a=`{deep}`}}"), format!("'\\'{deep}'")] {
            assert!(check_brackets(&quoted, "query").is_ok(), "{quoted}");
        }
    }
}
