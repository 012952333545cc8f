//! The full-text part of a native search (words, "phrases", AND / OR / NOT,
//! `-word`, `+word`, `word*`), parsed with tantivy's query grammar and
//! turned into two things: the tantivy query that finds candidate rows,
//! and the exact test a candidate's line must pass.
//!
//! Split indexes keep no token positions (they were a sixth of the stored
//! bytes), so a phrase becomes the conjunction of its words in the index
//! and is checked on the line itself: the same tokens (alphanumeric runs,
//! lowercased), consecutive, within the phrase's slop. Numbers are indexed
//! per block of rows, so an expression with a number is checked too.

use tantivy::query::{AllQuery, BooleanQuery, Occur, Query};
use tantivy::query_grammar::{UserInputAst, UserInputLeaf};
use weft_indexer::split::index::{line_tokens, LONG_TOKEN_BYTES};
use weft_indexer::split::numbers::{is_number_token, may_be_in_number};

use crate::storage::OpenSplit;

use crate::QueryError;

/// Longest full-text expression accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// Matches every line (an empty literal, `*`).
    All,
    /// Words in order; one word is a plain term. The last word is a prefix
    /// when `prefix`.
    Phrase {
        tokens: Vec<String>,
        slop: u32,
        prefix: bool,
    },
    Clause(Vec<(Occur, Node)>),
}

/// A parsed full-text expression.
#[derive(Clone, Debug)]
pub struct TextExpr {
    root: Node,
    /// True when the index alone over-approximates (a phrase of 2+ words,
    /// a number): candidates must pass [`TextExpr::matches`].
    needs_check: bool,
    /// Digit-only words every matching line holds: a line without one of
    /// them as a substring fails before it is tokenized (most rows of a
    /// number's candidate blocks).
    required: Vec<memchr::memmem::Finder<'static>>,
}

/// Digit-only words a line must hold for `node` to match.
fn required_digits(node: &Node, out: &mut Vec<memchr::memmem::Finder<'static>>) {
    match node {
        Node::Phrase { tokens, .. } => out.extend(
            tokens
                .iter()
                .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                .map(|t| memchr::memmem::Finder::new(t.as_bytes()).into_owned()),
        ),
        Node::Clause(items) => {
            for (_, child) in items.iter().filter(|(occur, _)| *occur == Occur::Must) {
                required_digits(child, out);
            }
        }
        Node::All => {}
    }
}

impl TextExpr {
    pub fn parse(text: &str) -> Result<TextExpr, QueryError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(QueryError::BadRequest(format!(
                "search expression is {} bytes, the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        crate::nesting::check_search(text)?;
        let ast = tantivy::query_grammar::parse_query(text)
            .map_err(|_| QueryError::BadRequest(format!("invalid search expression {text:?}: expected words, \"phrases\", AND / OR / NOT, -word or (groups), with balanced quotes and parentheses")))?;
        let root = node_of(ast)?.ok_or_else(|| {
            QueryError::BadRequest(format!(
                "search text {text:?} has no word to look for (punctuation is not indexed); use a LogQL line filter such as |= for substrings"
            ))
        })?;
        let needs_check = over_approximated(&root);
        let mut required = Vec::new();
        required_digits(&root, &mut required);
        Ok(TextExpr {
            root,
            needs_check,
            required,
        })
    }

    /// True when the expression alone over-approximates in any split (a
    /// phrase, a number); [`TextExpr::needs_check_in`] adds the split's
    /// block words.
    #[cfg(test)]
    pub fn needs_check(&self) -> bool {
        self.needs_check
    }

    /// True when `split`'s index over-approximates the expression: it
    /// [`TextExpr::needs_check`], or one of its words is among the
    /// split's block words (indexed per block of rows, like numbers).
    pub fn needs_check_in(&self, split: &OpenSplit) -> bool {
        self.needs_check || !words_exact(&self.root, split)
    }

    /// The candidate query over a split's words: every line that matches
    /// is a candidate (phrases and numbers under a negation are left to
    /// the check).
    pub fn query(&self, index: &OpenSplit) -> Box<dyn Query> {
        superset(&self.root, index).unwrap_or_else(|| Box::new(AllQuery))
    }

    /// The exact test on a line.
    pub fn matches(&self, line: &str) -> bool {
        if self.required.iter().any(|finder| finder.find(line.as_bytes()).is_none()) {
            return false;
        }
        if !line.is_ascii() {
            let tokens: Vec<String> = line_tokens(line).collect();
            let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
            return eval(&self.root, &tokens);
        }
        // ASCII: tokens borrowed from the line, compared ignoring ASCII
        // case (the check runs on every row of a number's candidate
        // blocks; lowercasing and splitting by chars were most of it).
        let bytes = line.as_bytes();
        let mut tokens: Vec<&str> = Vec::with_capacity(32);
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i - start < LONG_TOKEN_BYTES {
                tokens.push(&line[start..i]);
            }
        }
        eval(&self.root, &tokens)
    }
}

fn node_of(ast: UserInputAst) -> Result<Option<Node>, QueryError> {
    match ast {
        UserInputAst::Clause(items) => {
            let mut children = Vec::new();
            for (occur, child) in items {
                // A literal with no word in it (`::`, `-->`) constrains
                // nothing: left out, as tantivy's query parser did.
                if let Some(node) = node_of(child)? {
                    children.push((occur.unwrap_or(Occur::Must), node));
                }
            }
            Ok((!children.is_empty()).then_some(Node::Clause(children)))
        }
        UserInputAst::Boost(inner, _) => node_of(*inner),
        UserInputAst::Leaf(leaf) => match *leaf {
            UserInputLeaf::All => Ok(Some(Node::All)),
            UserInputLeaf::Literal(literal) => {
                // `name:value` on a name that is not a label (those were
                // taken out before) is text, e.g. `url:http`.
                let text = match &literal.field_name {
                    Some(name) => format!("{name}:{}", literal.phrase),
                    None => literal.phrase.clone(),
                };
                let tokens: Vec<String> = line_tokens(&text).collect();
                if tokens.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Node::Phrase {
                    tokens,
                    slop: literal.slop,
                    prefix: literal.prefix,
                }))
            }
            other => Err(QueryError::BadRequest(format!(
                "search expression {other:?}: ranges, sets, regexes and field-exists tests are not supported here; use LogQL"
            ))),
        },
    }
}

/// True when the index may give more lines than `node` matches: a phrase
/// of several words (no positions) or a number (indexed per block).
fn over_approximated(node: &Node) -> bool {
    match node {
        Node::All => false,
        Node::Phrase { tokens, prefix, .. } => {
            tokens.len() > 1 || tokens.iter().any(|t| is_number_token(t)) || (*prefix && tokens.last().is_some_and(|t| may_be_in_number(t)))
        }
        Node::Clause(items) => items.iter().any(|(_, n)| over_approximated(n)),
    }
}

/// True when every word of `node` is exactly in `split`'s terms.
fn words_exact(node: &Node, split: &OpenSplit) -> bool {
    match node {
        Node::All => true,
        Node::Phrase { tokens, prefix, .. } => tokens
            .iter()
            .enumerate()
            .all(|(i, t)| split.word_is_exact(t, *prefix && i + 1 == tokens.len())),
        Node::Clause(items) => items.iter().all(|(_, child)| words_exact(child, split)),
    }
}

fn boolean(mut clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    if clauses.len() == 1 && clauses[0].0 == Occur::Must {
        return clauses.pop().expect("one clause").1;
    }
    // Only exclusions: everything but them.
    if clauses.iter().all(|(occur, _)| *occur == Occur::MustNot) {
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// A query matching at least the lines `node` matches; `None`: all lines.
/// A phrase is the conjunction of its words (the check narrows it).
fn superset(node: &Node, index: &OpenSplit) -> Option<Box<dyn Query>> {
    match node {
        Node::All => None,
        Node::Phrase { tokens, prefix, .. } => {
            let words: Vec<(Occur, Box<dyn Query>)> = tokens
                .iter()
                .enumerate()
                .filter_map(|(i, t)| index.word(t, *prefix && i + 1 == tokens.len()).0)
                .map(|q| (Occur::Must, q))
                .collect();
            (!words.is_empty()).then(|| boolean(words))
        }
        Node::Clause(items) => {
            let required = items.iter().any(|(occur, _)| *occur == Occur::Must);
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            let mut any_alternative_unbounded = false;
            for (occur, child) in items {
                match occur {
                    Occur::Must => clauses.extend(superset(child, index).map(|q| (Occur::Must, q))),
                    // Excluding only lines surely matching keeps a superset.
                    Occur::MustNot => clauses.extend(subset(child, index).map(|q| (Occur::MustNot, q))),
                    // Optional beside a required clause; else one must hold.
                    Occur::Should if !required => match superset(child, index) {
                        Some(q) => alternatives.push((Occur::Should, q)),
                        None => any_alternative_unbounded = true,
                    },
                    Occur::Should => {}
                }
            }
            if !alternatives.is_empty() && !any_alternative_unbounded {
                clauses.push((Occur::Must, Box::new(BooleanQuery::new(alternatives))));
            }
            (!clauses.is_empty()).then(|| boolean(clauses))
        }
    }
}

/// A query matching only lines `node` matches; `None`: no line is sure
/// (a phrase of several words needs positions the index does not keep).
fn subset(node: &Node, index: &OpenSplit) -> Option<Box<dyn Query>> {
    match node {
        Node::All => Some(Box::new(AllQuery)),
        Node::Phrase { tokens, prefix, .. } if tokens.len() == 1 => match index.word(&tokens[0], *prefix) {
            (Some(query), true) => Some(query),
            _ => None,
        },
        Node::Phrase { .. } => None,
        Node::Clause(items) => {
            let required = items.iter().any(|(occur, _)| *occur == Occur::Must);
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for (occur, child) in items {
                match occur {
                    Occur::Must => clauses.push((Occur::Must, subset(child, index)?)),
                    // Everything a child could match is excluded.
                    Occur::MustNot => clauses.push((Occur::MustNot, superset(child, index)?)),
                    Occur::Should if !required => alternatives.extend(subset(child, index).map(|q| (Occur::Should, q))),
                    Occur::Should => {}
                }
            }
            if !required && items.iter().any(|(occur, _)| *occur == Occur::Should) {
                if alternatives.is_empty() {
                    return None;
                }
                clauses.push((Occur::Must, Box::new(BooleanQuery::new(alternatives))));
            }
            (!clauses.is_empty()).then(|| boolean(clauses))
        }
    }
}

fn phrase_at(tokens: &[&str], words: &[String], slop: u32, prefix: bool, start: usize) -> bool {
    // Words are lowercased; tokens are too, except on ASCII lines, where
    // ignoring ASCII case is the same test.
    let word_matches = |i: usize, token: &str| {
        let word = words[i].as_bytes();
        if prefix && i + 1 == words.len() {
            token.len() >= word.len() && token.as_bytes()[..word.len()].eq_ignore_ascii_case(word)
        } else {
            token.as_bytes().eq_ignore_ascii_case(word)
        }
    };
    if !word_matches(0, tokens[start]) {
        return false;
    }
    // Each next word at its earliest position: the smallest total gap.
    let mut at = start;
    let mut gaps = 0usize;
    for i in 1..words.len() {
        let Some(offset) = tokens[at + 1..].iter().position(|t| word_matches(i, t)) else {
            return false;
        };
        gaps += offset;
        if gaps > slop as usize {
            return false;
        }
        at += offset + 1;
    }
    true
}

fn eval(node: &Node, tokens: &[&str]) -> bool {
    match node {
        Node::All => true,
        Node::Phrase {
            tokens: words,
            slop,
            prefix,
        } => (0..tokens.len()).any(|start| phrase_at(tokens, words, *slop, *prefix, start)),
        Node::Clause(items) => {
            let mut positive = false;
            let mut any_should = false;
            let mut should_matched = false;
            for (occur, child) in items {
                match occur {
                    Occur::Must => {
                        positive = true;
                        if !eval(child, tokens) {
                            return false;
                        }
                    }
                    Occur::MustNot => {
                        if eval(child, tokens) {
                            return false;
                        }
                    }
                    Occur::Should => {
                        any_should = true;
                        should_matched = should_matched || eval(child, tokens);
                    }
                }
            }
            positive || !any_should || should_matched
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expr: &str, line: &str) -> bool {
        TextExpr::parse(expr).unwrap().matches(line)
    }

    #[test]
    fn phrases_are_checked_on_the_line() {
        let expr = TextExpr::parse(r#""out of memory""#).unwrap();
        assert!(expr.needs_check());
        assert!(expr.matches("CUDA error: Out of memory (tried 2 GiB)"));
        assert!(!expr.matches("memory out of reach"), "words present but not a phrase");
        assert!(!expr.matches("out of disk"));
        // Unquoted words joined by punctuation are a phrase too.
        assert!(check("out-of-memory", "torch: out of memory"));
        assert!(!check("out-of-memory", "memory: out of"));
    }

    #[test]
    fn boolean_structure() {
        assert!(check("nccl timeout", "NCCL watchdog: timeout after 600 s"));
        assert!(!check("nccl timeout", "NCCL init ok"));
        assert!(check("nccl -timeout", "NCCL init ok"));
        assert!(!check("nccl -timeout", "NCCL timeout"));
        assert!(check("-warning", "all good"));
        assert!(!check("-warning", "a warning"));
        assert!(check("oom OR xid", "Xid 79 on GPU 3"));
        assert!(!check("oom OR xid", "all good"));
        assert!(check(r#""step 4"~1 loss"#, "step=4 train loss=2.1"));
        assert!(check(r#""step loss"~1"#, "step 4 loss 2.1"));
        assert!(!check(r#""step loss""#, "step 4 loss 2.1"));
        assert!(check(r#""nccl watch"*"#, "NCCL watchdog fired"));
        assert!(!check(r#""nccl watch"*"#, "NCCL: hardware watchdog"));
        assert!(!TextExpr::parse("nccl timeout").unwrap().needs_check());
    }

    #[test]
    fn lowercasing_matches_the_index() {
        // tantivy's LowerCaser maps characters one by one: no final sigma.
        assert!(check("ΟΔΟΣ", "ΟΔΟΣ 5"));
        assert_eq!(line_tokens("ΟΔΟΣ").collect::<Vec<_>>(), vec!["οδοσ".to_string()]);
    }

    #[test]
    fn the_ascii_check_tokenizes_like_the_index() {
        let long = "7".repeat(LONG_TOKEN_BYTES);
        for line in ["GPU 3: Xid 79", "req=9F86D081 took 12ms", "a_b-c.d", &format!("{long} tail 4242")] {
            let tokens: Vec<String> = line_tokens(line).collect();
            for expr in ["xid 79", "9f86d081", "\"b c\"", "tail", "4242 -gpu", "\"req 9f\"*"] {
                let expr = TextExpr::parse(expr).unwrap();
                let slow = eval(&expr.root, &tokens.iter().map(String::as_str).collect::<Vec<_>>());
                assert_eq!(expr.matches(line), slow, "{expr:?} on {line}");
            }
        }
        assert!(check("xid 79", "GPU 3: Xid 79"));
    }

    #[test]
    fn bad_expressions_are_rejected() {
        assert!(TextExpr::parse(&"x ".repeat(MAX_TEXT_BYTES)).is_err());
        assert!(matches!(TextExpr::parse("ts:[1 TO 5]"), Err(QueryError::BadRequest(_))));
    }
}
