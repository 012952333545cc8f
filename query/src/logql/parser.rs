//! A hand-written LogQL lexer and recursive-descent parser. Errors carry the
//! position (line and column) and what was expected, as Loki reports them:
//! `parse error at line 1, col 12: syntax error: unexpected …`.

use regex::Regex;
use weft_model::time::parse_duration;

use super::ast::*;
use crate::QueryError;

/// Longest query text accepted.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eq,
    EqEq,
    Neq,
    Re,
    Nre,
    PipeExact,
    PipeMatch,
    Pipe,
    Gt,
    Ge,
    Lt,
    Le,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Str(String),
    Num(f64),
    /// A number with a unit: the text, for durations and byte sizes.
    Unit(String),
    Ident(String),
    Eof,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Unit(u) => u.to_string(),
        Tok::Ident(i) => format!("identifier {i}"),
        Tok::Eof => "end of input".into(),
        other => format!("{:?}", symbol(other)),
    }
}

fn symbol(tok: &Tok) -> &'static str {
    match tok {
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::Comma => ",",
        Tok::Eq => "=",
        Tok::EqEq => "==",
        Tok::Neq => "!=",
        Tok::Re => "=~",
        Tok::Nre => "!~",
        Tok::PipeExact => "|=",
        Tok::PipeMatch => "|~",
        Tok::Pipe => "|",
        Tok::Gt => ">",
        Tok::Ge => ">=",
        Tok::Lt => "<",
        Tok::Le => "<=",
        Tok::Add => "+",
        Tok::Sub => "-",
        Tok::Mul => "*",
        Tok::Div => "/",
        Tok::Mod => "%",
        Tok::Pow => "^",
        _ => "?",
    }
}

struct Lexer<'a> {
    text: &'a str,
    tokens: Vec<(Tok, usize)>,
}

impl<'a> Lexer<'a> {
    fn run(text: &'a str) -> Result<Vec<(Tok, usize)>, QueryError> {
        let mut lexer = Lexer { text, tokens: Vec::new() };
        lexer.lex()?;
        Ok(lexer.tokens)
    }

    fn err(&self, pos: usize, message: impl Into<String>) -> QueryError {
        QueryError::parse(self.text, pos, message)
    }

    fn lex(&mut self) -> Result<(), QueryError> {
        let bytes = self.text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let c = bytes[pos];
            if c.is_ascii_whitespace() {
                pos += 1;
                continue;
            }
            if c == b'#' {
                while pos < bytes.len() && bytes[pos] != b'\n' {
                    pos += 1;
                }
                continue;
            }
            let start = pos;
            let two = if pos + 1 < bytes.len() {
                &bytes[pos..pos + 2]
            } else {
                &bytes[pos..pos + 1]
            };
            let (tok, len) = match two {
                b"|=" => (Tok::PipeExact, 2),
                b"|~" => (Tok::PipeMatch, 2),
                b"!=" => (Tok::Neq, 2),
                b"!~" => (Tok::Nre, 2),
                b"=~" => (Tok::Re, 2),
                b"==" => (Tok::EqEq, 2),
                b">=" => (Tok::Ge, 2),
                b"<=" => (Tok::Le, 2),
                _ => match c {
                    b'{' => (Tok::LBrace, 1),
                    b'}' => (Tok::RBrace, 1),
                    b'(' => (Tok::LParen, 1),
                    b')' => (Tok::RParen, 1),
                    b'[' => (Tok::LBracket, 1),
                    b']' => (Tok::RBracket, 1),
                    b',' => (Tok::Comma, 1),
                    b'=' => (Tok::Eq, 1),
                    b'|' => (Tok::Pipe, 1),
                    b'>' => (Tok::Gt, 1),
                    b'<' => (Tok::Lt, 1),
                    b'+' => (Tok::Add, 1),
                    b'-' => (Tok::Sub, 1),
                    b'*' => (Tok::Mul, 1),
                    b'/' => (Tok::Div, 1),
                    b'%' => (Tok::Mod, 1),
                    b'^' => (Tok::Pow, 1),
                    b'"' | b'`' => {
                        let (value, end) = weft_model::labels::parse_quoted(self.text, pos).map_err(|reason| self.err(pos, reason))?;
                        self.tokens.push((Tok::Str(value), start));
                        pos = end;
                        continue;
                    }
                    b'0'..=b'9' | b'.' => {
                        let mut end = pos;
                        while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
                            end += 1;
                        }
                        // Exponent: 1e-5
                        if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
                            let mut exp = end + 1;
                            if exp < bytes.len() && (bytes[exp] == b'+' || bytes[exp] == b'-') {
                                exp += 1;
                            }
                            if exp < bytes.len() && bytes[exp].is_ascii_digit() {
                                end = exp;
                                while end < bytes.len() && bytes[end].is_ascii_digit() {
                                    end += 1;
                                }
                            }
                        }
                        if end < bytes.len() && bytes[end].is_ascii_alphabetic() {
                            // Duration (5m, 1h30m, 1.5s) or byte size (10KB).
                            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'.') {
                                end += 1;
                            }
                            self.tokens.push((Tok::Unit(self.text[start..end].to_string()), start));
                        } else {
                            let number: f64 = self.text[start..end]
                                .parse()
                                .map_err(|_| self.err(start, format!("invalid number {:?}", &self.text[start..end])))?;
                            self.tokens.push((Tok::Num(number), start));
                        }
                        pos = end;
                        continue;
                    }
                    c if c.is_ascii_alphabetic() || c == b'_' => {
                        let mut end = pos;
                        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b'.') {
                            end += 1;
                        }
                        self.tokens.push((Tok::Ident(self.text[start..end].to_string()), start));
                        pos = end;
                        continue;
                    }
                    _ => {
                        let ch = self.text[pos..].chars().next().unwrap_or('?');
                        return Err(self.err(pos, format!("syntax error: unexpected character {ch:?}")));
                    }
                },
            };
            self.tokens.push((tok, start));
            pos += len;
        }
        self.tokens.push((Tok::Eof, bytes.len()));
        Ok(())
    }
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(Tok, usize)>,
    at: usize,
    /// Operators read so far (binary, unary, label filter `and`/`or`):
    /// they bound how deep the tree is (see [`crate::nesting`]).
    operators: usize,
}

/// Parses a LogQL query.
pub fn parse(text: &str) -> Result<Expr, QueryError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(QueryError::BadRequest(format!(
            "query is {} bytes, over the {MAX_QUERY_BYTES} byte limit",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Err(QueryError::parse(text, 0, "syntax error: empty query"));
    }
    let tokens = Lexer::run(text)?;
    // Brackets counted on the tokens: a quote in a comment hides none.
    let mut depth = 0usize;
    for (tok, at) in &tokens {
        match tok {
            Tok::LParen | Tok::LBrace | Tok::LBracket => depth += 1,
            Tok::RParen | Tok::RBrace | Tok::RBracket => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > crate::nesting::MAX_BRACKETS {
            return Err(crate::nesting::too_nested("query", *at));
        }
    }
    let mut parser = Parser {
        text,
        tokens,
        at: 0,
        operators: 0,
    };
    let expr = parser.expr(0)?;
    parser.expect_eof()?;
    if let Expr::Binary(b) = &expr {
        if matches!(b.lhs, Expr::Log(_)) || matches!(b.rhs, Expr::Log(_)) {
            return Err(QueryError::parse(
                text,
                0,
                "syntax error: a log query cannot be used in a binary operation",
            ));
        }
    }
    Ok(expr)
}

/// Parses a stream selector alone (`{a="b"}`), as `match[]` parameters are.
pub fn parse_selector(text: &str) -> Result<Vec<Matcher>, QueryError> {
    match parse(text)? {
        Expr::Log(LogExpr { matchers, pipeline }) if pipeline.is_empty() => Ok(matchers),
        _ => Err(QueryError::BadRequest(format!(
            "{text:?} is not a stream selector like {{namespace=\"ml\"}}"
        ))),
    }
}

fn anchored(text: &str, pattern: &str, pos: usize) -> Result<Regex, QueryError> {
    Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| QueryError::parse(text, pos, format!("invalid regex {pattern:?}: {e}")))
}

fn unanchored(text: &str, pattern: &str, pos: usize) -> Result<Regex, QueryError> {
    Regex::new(pattern).map_err(|e| QueryError::parse(text, pos, format!("invalid regex {pattern:?}: {e}")))
}

/// Parses a byte size such as `10KB`, `1.5MiB`, `512B`.
pub fn parse_bytes(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        "kib" | "ki" => 1024.0,
        "mib" | "mi" => 1024.0 * 1024.0,
        "gib" | "gi" => 1024.0 * 1024.0 * 1024.0,
        "tib" | "ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some(number * factor)
}

/// Parses a Go duration (`1h2m3.5s`, `250ms`, `1us`) into seconds.
pub fn parse_go_duration_secs(text: &str) -> Option<f64> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_end == 0 {
            return None;
        }
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_end..];
    }
    Some(if negative { -total } else { total })
}

/// Binary operator precedence (higher binds tighter) and right-associativity.
fn binary_op(tok: &Tok) -> Option<(BinOp, u8, bool)> {
    Some(match tok {
        Tok::Ident(i) if i == "or" => (BinOp::Or, 1, false),
        Tok::Ident(i) if i == "and" => (BinOp::And, 2, false),
        Tok::Ident(i) if i == "unless" => (BinOp::Unless, 2, false),
        Tok::EqEq => (BinOp::Eq, 3, false),
        Tok::Neq => (BinOp::Neq, 3, false),
        Tok::Gt => (BinOp::Gt, 3, false),
        Tok::Ge => (BinOp::Ge, 3, false),
        Tok::Lt => (BinOp::Lt, 3, false),
        Tok::Le => (BinOp::Le, 3, false),
        Tok::Add => (BinOp::Add, 4, false),
        Tok::Sub => (BinOp::Sub, 4, false),
        Tok::Mul => (BinOp::Mul, 5, false),
        Tok::Div => (BinOp::Div, 5, false),
        Tok::Mod => (BinOp::Mod, 5, false),
        Tok::Pow => (BinOp::Pow, 6, true),
        _ => return None,
    })
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at].0
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.at + n).min(self.tokens.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.tokens[self.at].1
    }

    fn next(&mut self) -> Tok {
        let tok = self.tokens[self.at].0.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        tok
    }

    /// Counts one more operator; refuses a query with too many.
    fn operator(&mut self) -> Result<(), QueryError> {
        self.operators += 1;
        if self.operators > crate::nesting::MAX_DEPTH {
            return Err(crate::nesting::too_deep("query"));
        }
        Ok(())
    }

    fn err_here(&self, message: impl Into<String>) -> QueryError {
        QueryError::parse(self.text, self.pos(), message)
    }

    fn unexpected(&self, expecting: &str) -> QueryError {
        self.err_here(format!("syntax error: unexpected {}, expecting {expecting}", describe(self.peek())))
    }

    fn expect(&mut self, tok: Tok) -> Result<(), QueryError> {
        if *self.peek() == tok {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(symbol(&tok)))
        }
    }

    fn expect_eof(&self) -> Result<(), QueryError> {
        if *self.peek() == Tok::Eof {
            Ok(())
        } else {
            Err(self.unexpected("end of query"))
        }
    }

    fn ident_is(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(i) if i == word)
    }

    fn ident(&mut self, what: &str) -> Result<String, QueryError> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                self.next();
                Ok(name)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, QueryError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn number(&mut self) -> Result<f64, QueryError> {
        let negative = if *self.peek() == Tok::Sub {
            self.next();
            true
        } else {
            false
        };
        match self.peek().clone() {
            Tok::Num(n) => {
                self.next();
                Ok(if negative { -n } else { n })
            }
            _ => Err(self.unexpected("a number")),
        }
    }

    fn duration(&mut self) -> Result<i64, QueryError> {
        let pos = self.pos();
        match self.next() {
            Tok::Unit(text) => parse_duration(&text).map_err(|e| QueryError::parse(self.text, pos, e.to_string())),
            Tok::Num(n) => Ok((n * 1e9) as i64),
            other => Err(QueryError::parse(
                self.text,
                pos,
                format!("syntax error: unexpected {}, expecting a duration like 5m", describe(&other)),
            )),
        }
    }

    /// Precedence climbing over binary operators.
    fn expr(&mut self, min_prec: u8) -> Result<Expr, QueryError> {
        let mut lhs = self.unary()?;
        while let Some((op, prec, right)) = binary_op(self.peek()) {
            if prec < min_prec {
                break;
            }
            self.operator()?;
            self.next();
            let mut return_bool = false;
            if self.ident_is("bool") {
                if !op.is_comparison() {
                    return Err(self.err_here("syntax error: bool is only allowed on comparison operators"));
                }
                self.next();
                return_bool = true;
            }
            let matching = self.vector_matching()?;
            let next_min = if right { prec } else { prec + 1 };
            let rhs = self.expr(next_min)?;
            lhs = Expr::Binary(Box::new(Binary {
                op,
                lhs,
                rhs,
                return_bool,
                matching,
            }));
        }
        Ok(lhs)
    }

    fn vector_matching(&mut self) -> Result<Option<VectorMatching>, QueryError> {
        if !(self.ident_is("on") || self.ident_is("ignoring")) {
            return Ok(None);
        }
        let on = self.ident_is("on");
        self.next();
        let labels = self.label_list()?;
        let mut matching = VectorMatching { on, labels, group: None };
        if self.ident_is("group_left") || self.ident_is("group_right") {
            matching.group = Some(self.ident_is("group_right"));
            self.next();
            if *self.peek() == Tok::LParen {
                self.label_list()?;
            }
        }
        Ok(Some(matching))
    }

    fn label_list(&mut self) -> Result<Vec<String>, QueryError> {
        self.expect(Tok::LParen)?;
        let mut labels = Vec::new();
        while *self.peek() != Tok::RParen {
            labels.push(self.ident("a label name")?);
            if *self.peek() == Tok::Comma {
                self.next();
            } else if *self.peek() != Tok::RParen {
                return Err(self.unexpected("',' or ')'"));
            }
        }
        self.next();
        Ok(labels)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        match self.peek() {
            Tok::Sub => {
                self.operator()?;
                self.next();
                let inner = self.unary()?;
                Ok(match inner {
                    Expr::Number(n) => Expr::Number(-n),
                    other => Expr::Negate(Box::new(other)),
                })
            }
            Tok::Add => {
                self.operator()?;
                self.next();
                self.unary()
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        match self.peek().clone() {
            Tok::Num(n) => {
                self.next();
                Ok(Expr::Number(n))
            }
            Tok::LParen => {
                self.next();
                let inner = self.expr(0)?;
                self.expect(Tok::RParen)?;
                Ok(inner)
            }
            Tok::LBrace => {
                let log = self.log_expr()?;
                if *self.peek() == Tok::LBracket {
                    return Err(self.err_here("syntax error: a range [..] needs a range aggregation such as count_over_time"));
                }
                Ok(Expr::Log(log))
            }
            Tok::Ident(name) => {
                if name == "vector" {
                    self.next();
                    self.expect(Tok::LParen)?;
                    let value = self.number()?;
                    self.expect(Tok::RParen)?;
                    return Ok(Expr::Vector(value));
                }
                if let Some(op) = RangeOp::from_name(&name) {
                    return self.range_agg(op);
                }
                if let Some(op) = VectorOp::from_name(&name) {
                    return self.vector_agg(op);
                }
                match name.as_str() {
                    "label_replace" | "absent" | "sort" | "sort_desc" | "ceil" | "floor" | "round" | "abs" | "sqrt" | "exp" | "ln"
                    | "clamp" | "sgn" => Err(QueryError::Unsupported(format!("function {name} is not supported yet"))),
                    _ => Err(self.err_here(format!(
                        "syntax error: unexpected identifier {name}, expecting a selector, aggregation or number"
                    ))),
                }
            }
            _ => Err(self.unexpected("a selector, aggregation or number")),
        }
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, QueryError> {
        if self.ident_is("by") || self.ident_is("without") {
            let without = self.ident_is("without");
            self.next();
            let labels = self.label_list()?;
            return Ok(Some(Grouping { without, labels }));
        }
        Ok(None)
    }

    fn vector_agg(&mut self, op: VectorOp) -> Result<Expr, QueryError> {
        self.next();
        let before = self.grouping()?;
        self.expect(Tok::LParen)?;
        let mut param = None;
        if matches!(op, VectorOp::Topk | VectorOp::Bottomk) {
            let k = self.number()?;
            if k < 1.0 || k.fract() != 0.0 {
                return Err(self.err_here("syntax error: topk/bottomk need a positive integer k"));
            }
            param = Some(k);
            self.expect(Tok::Comma)?;
        }
        let inner = self.expr(0)?;
        if matches!(inner, Expr::Log(_)) {
            return Err(self.err_here("syntax error: a vector aggregation needs a metric expression, not a log query"));
        }
        self.expect(Tok::RParen)?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(self.err_here("syntax error: grouping given twice"));
        }
        Ok(Expr::VectorAgg(VectorAgg {
            op,
            param,
            grouping: before.or(after).unwrap_or_default(),
            inner: Box::new(inner),
        }))
    }

    fn range_agg(&mut self, op: RangeOp) -> Result<Expr, QueryError> {
        self.next();
        self.expect(Tok::LParen)?;
        let mut param = None;
        if op == RangeOp::QuantileOverTime {
            param = Some(self.number()?);
            self.expect(Tok::Comma)?;
        }
        let range = self.log_range()?;
        self.expect(Tok::RParen)?;
        let grouping = self.grouping()?;
        if op.counts_lines() && range.unwrap.is_some() {
            return Err(QueryError::parse(
                self.text,
                self.pos(),
                "syntax error: this range aggregation counts lines and takes no unwrap",
            ));
        }
        if !op.counts_lines() && range.unwrap.is_none() {
            return Err(QueryError::parse(
                self.text,
                self.pos(),
                "syntax error: this range aggregation needs | unwrap <label>",
            ));
        }
        if grouping.is_some() && op.counts_lines() {
            return Err(QueryError::parse(
                self.text,
                self.pos(),
                "syntax error: grouping is only allowed on unwrapped range aggregations",
            ));
        }
        Ok(Expr::RangeAgg(RangeAgg {
            op,
            param,
            range,
            grouping,
        }))
    }

    /// `{…} pipeline [5m] offset d` or `({…} pipeline)[5m]`.
    fn log_range(&mut self) -> Result<LogRange, QueryError> {
        let parenthesized = *self.peek() == Tok::LParen;
        if parenthesized {
            self.next();
        }
        let mut log = self.selector_only()?;
        let mut unwrap = None;
        let mut range = None;
        if *self.peek() == Tok::LBracket && !parenthesized {
            range = Some(self.bracket_range()?);
        }
        self.pipeline_into(&mut log.pipeline, &mut unwrap)?;
        if parenthesized {
            self.expect(Tok::RParen)?;
        }
        let range = match range {
            Some(r) => r,
            None => self.bracket_range()?,
        };
        let mut offset = 0;
        if self.ident_is("offset") {
            self.next();
            offset = self.duration()?;
        }
        Ok(LogRange {
            log,
            range,
            offset,
            unwrap,
        })
    }

    fn bracket_range(&mut self) -> Result<i64, QueryError> {
        if *self.peek() != Tok::LBracket {
            return Err(self.unexpected("a range such as [5m]"));
        }
        self.next();
        let range = self.duration()?;
        if range <= 0 {
            return Err(self.err_here("syntax error: the range must be positive"));
        }
        self.expect(Tok::RBracket)?;
        Ok(range)
    }

    fn log_expr(&mut self) -> Result<LogExpr, QueryError> {
        let mut log = self.selector_only()?;
        let mut unwrap = None;
        self.pipeline_into(&mut log.pipeline, &mut unwrap)?;
        if unwrap.is_some() {
            return Err(self.err_here("syntax error: unwrap is only allowed inside a range aggregation"));
        }
        Ok(log)
    }

    fn selector_only(&mut self) -> Result<LogExpr, QueryError> {
        self.expect(Tok::LBrace)?;
        let mut matchers = Vec::new();
        while *self.peek() != Tok::RBrace {
            matchers.push(self.matcher()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RBrace => {}
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
        self.next();
        if matchers.is_empty() {
            return Err(self.err_here("syntax error: a stream selector needs at least one matcher"));
        }
        if matchers.iter().all(|m| m.matches("")) {
            return Err(
                self.err_here("syntax error: queries require at least one regexp or equality matcher that does not match the empty string")
            );
        }
        Ok(LogExpr {
            matchers,
            pipeline: Vec::new(),
        })
    }

    fn matcher(&mut self) -> Result<Matcher, QueryError> {
        let name = self.ident("a label name")?;
        let op = match self.next() {
            Tok::Eq => MatchOp::Eq,
            Tok::Neq => MatchOp::Neq,
            Tok::Re => MatchOp::Re,
            Tok::Nre => MatchOp::Nre,
            other => {
                self.at -= 1;
                let _ = other;
                return Err(self.unexpected("=, !=, =~ or !~"));
            }
        };
        let pos = self.pos();
        let value = self.string("a quoted value")?;
        let regex = match op {
            MatchOp::Re | MatchOp::Nre => Some(anchored(self.text, &value, pos)?),
            _ => None,
        };
        Ok(Matcher { name, op, value, regex })
    }

    fn pipeline_into(&mut self, stages: &mut Vec<Stage>, unwrap: &mut Option<Unwrap>) -> Result<(), QueryError> {
        loop {
            match self.peek().clone() {
                Tok::PipeExact | Tok::Neq | Tok::PipeMatch | Tok::Nre => {
                    if unwrap.is_some() {
                        return Err(self.err_here("syntax error: line filters must come before unwrap"));
                    }
                    let op = match self.next() {
                        Tok::PipeExact => LineFilterOp::Contains,
                        Tok::Neq => LineFilterOp::NotContains,
                        Tok::PipeMatch => LineFilterOp::Regex,
                        _ => LineFilterOp::NotRegex,
                    };
                    let mut values = Vec::new();
                    let mut positions = Vec::new();
                    loop {
                        positions.push(self.pos());
                        values.push(self.string("a quoted line filter")?);
                        if self.ident_is("or") && matches!(self.peek_at(1), Tok::Str(_)) {
                            self.next();
                            continue;
                        }
                        break;
                    }
                    let mut regexes = Vec::new();
                    if matches!(op, LineFilterOp::Regex | LineFilterOp::NotRegex) {
                        for (value, pos) in values.iter().zip(positions) {
                            regexes.push(unanchored(self.text, value, pos)?);
                        }
                    }
                    stages.push(Stage::LineFilter(LineFilter { op, values, regexes }));
                }
                Tok::Pipe => {
                    self.next();
                    self.pipe_stage(stages, unwrap)?;
                }
                _ => return Ok(()),
            }
        }
    }

    fn pipe_stage(&mut self, stages: &mut Vec<Stage>, unwrap: &mut Option<Unwrap>) -> Result<(), QueryError> {
        let pos = self.pos();
        let Tok::Ident(word) = self.peek().clone() else {
            return Err(self.unexpected("a parser, label filter or formatting stage"));
        };
        // A label filter starts with a label name followed by an operator.
        let is_filter_start = matches!(
            self.peek_at(1),
            Tok::Eq | Tok::EqEq | Tok::Neq | Tok::Re | Tok::Nre | Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le
        );
        if is_filter_start || word == "(" {
            let filter = self.label_filter()?;
            match unwrap {
                Some(u) => u.post_filters.push(filter),
                None => stages.push(Stage::LabelFilter(filter)),
            }
            return Ok(());
        }
        if unwrap.is_some() {
            return Err(self.err_here("syntax error: only label filters may follow unwrap"));
        }
        self.next();
        match word.as_str() {
            "json" => {
                let mut params = Vec::new();
                while let Tok::Ident(label) = self.peek().clone() {
                    if matches!(self.peek_at(1), Tok::Eq) {
                        self.next();
                        self.next();
                        let path_pos = self.pos();
                        let path = self.string("a JSON path string")?;
                        params.push((label, parse_json_path(self.text, &path, path_pos)?));
                    } else {
                        self.next();
                        params.push((label.clone(), vec![label]));
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                    } else {
                        break;
                    }
                }
                stages.push(Stage::Json(params));
            }
            "logfmt" => {
                while let Tok::Sub = self.peek() {
                    // --strict / --keep-empty flags are accepted and ignored.
                    self.next();
                    self.next();
                    self.ident("a logfmt flag")?;
                }
                stages.push(Stage::Logfmt);
            }
            "regexp" => {
                let pos = self.pos();
                let pattern = self.string("a quoted regular expression")?;
                let regex = unanchored(self.text, &pattern, pos)?;
                if regex.capture_names().flatten().next().is_none() {
                    return Err(QueryError::parse(self.text, pos, "regexp needs at least one named capture (?P<name>…)"));
                }
                stages.push(Stage::Regexp(regex));
            }
            "pattern" => {
                let pos = self.pos();
                let pattern = self.string("a quoted pattern")?;
                stages.push(Stage::Pattern(parse_pattern(self.text, &pattern, pos)?));
            }
            "unpack" => stages.push(Stage::Unpack),
            "decolorize" => stages.push(Stage::Decolorize),
            "line_format" => {
                let pos = self.pos();
                let template = self.string("a quoted template")?;
                stages.push(Stage::LineFormat(parse_template(self.text, &template, pos)?));
            }
            "label_format" => {
                let mut formats = Vec::new();
                loop {
                    let dst = self.ident("a label name")?;
                    self.expect(Tok::Eq)?;
                    match self.peek().clone() {
                        Tok::Ident(src) => {
                            self.next();
                            formats.push(LabelFormat::Rename { dst, src });
                        }
                        Tok::Str(template) => {
                            let pos = self.pos();
                            self.next();
                            formats.push(LabelFormat::Template { dst, template: parse_template(self.text, &template, pos)? });
                        }
                        _ => return Err(self.unexpected("a label name or a quoted template")),
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                    } else {
                        break;
                    }
                }
                stages.push(Stage::LabelFormat(formats));
            }
            "drop" | "keep" => {
                let mut items = Vec::new();
                loop {
                    let name = self.ident("a label name")?;
                    let matcher = if matches!(self.peek(), Tok::Eq | Tok::Neq | Tok::Re | Tok::Nre) {
                        self.at -= 1;
                        Some(self.matcher()?)
                    } else {
                        None
                    };
                    items.push((name, matcher));
                    if *self.peek() == Tok::Comma {
                        self.next();
                    } else {
                        break;
                    }
                }
                stages.push(if word == "drop" { Stage::Drop(items) } else { Stage::Keep(items) });
            }
            "unwrap" => {
                let (label, kind) = match self.peek_at(1) {
                    Tok::LParen => {
                        let conversion = self.ident("a label name")?;
                        let kind = match conversion.as_str() {
                            "bytes" => NumberKind::Bytes,
                            "duration" | "duration_seconds" => NumberKind::Duration,
                            other => return Err(QueryError::parse(self.text, pos, format!("unknown unwrap conversion {other}: use bytes() or duration()"))),
                        };
                        self.expect(Tok::LParen)?;
                        let label = self.ident("a label name")?;
                        self.expect(Tok::RParen)?;
                        (label, kind)
                    }
                    _ => (self.ident("a label name")?, NumberKind::Number),
                };
                *unwrap = Some(Unwrap { label, kind, post_filters: Vec::new() });
            }
            other => {
                return Err(QueryError::parse(
                    self.text,
                    pos,
                    format!("syntax error: unexpected {other}, expecting json, logfmt, regexp, pattern, unpack, line_format, label_format, drop, keep, unwrap or a label filter"),
                ))
            }
        }
        Ok(())
    }

    /// `a="x" and (b > 5 or c=~"y")`, with `,` and juxtaposition meaning and.
    fn label_filter(&mut self) -> Result<LabelFilter, QueryError> {
        let mut lhs = self.label_filter_and()?;
        while self.ident_is("or") {
            self.operator()?;
            self.next();
            let rhs = self.label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> Result<LabelFilter, QueryError> {
        let mut lhs = self.label_filter_atom()?;
        loop {
            if self.ident_is("and") || *self.peek() == Tok::Comma {
                self.next();
            } else if !(matches!(self.peek(), Tok::Ident(w) if w != "or" && w != "offset")
                && matches!(
                    self.peek_at(1),
                    Tok::Eq | Tok::EqEq | Tok::Neq | Tok::Re | Tok::Nre | Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le
                ))
            {
                break;
            }
            self.operator()?;
            let rhs = self.label_filter_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_atom(&mut self) -> Result<LabelFilter, QueryError> {
        if *self.peek() == Tok::LParen {
            self.next();
            let inner = self.label_filter()?;
            self.expect(Tok::RParen)?;
            return Ok(inner);
        }
        let name = self.ident("a label name")?;
        let op_pos = self.pos();
        let op = self.next();
        let value_pos = self.pos();
        let string_op = match op {
            Tok::Eq => Some(MatchOp::Eq),
            Tok::Neq => Some(MatchOp::Neq),
            Tok::Re => Some(MatchOp::Re),
            Tok::Nre => Some(MatchOp::Nre),
            _ => None,
        };
        if let (Some(match_op), Tok::Str(value)) = (string_op, self.peek().clone()) {
            self.next();
            let regex = match match_op {
                MatchOp::Re | MatchOp::Nre => Some(anchored(self.text, &value, value_pos)?),
                _ => None,
            };
            return Ok(LabelFilter::Match(Matcher {
                name,
                op: match_op,
                value,
                regex,
            }));
        }
        let cmp = match op {
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Eq | Tok::EqEq => CmpOp::Eq,
            Tok::Neq => CmpOp::Neq,
            _ => {
                return Err(QueryError::parse(
                    self.text,
                    op_pos,
                    "syntax error: expecting a comparison operator",
                ))
            }
        };
        let negative = if *self.peek() == Tok::Sub {
            self.next();
            true
        } else {
            false
        };
        let sign = if negative { -1.0 } else { 1.0 };
        let (value, kind) = match self.next() {
            Tok::Num(n) => (n, NumberKind::Number),
            Tok::Unit(text) => {
                if let Some(secs) = parse_go_duration_secs(&text) {
                    (secs, NumberKind::Duration)
                } else if let Some(bytes) = parse_bytes(&text) {
                    (bytes, NumberKind::Bytes)
                } else {
                    return Err(QueryError::parse(
                        self.text,
                        value_pos,
                        format!("invalid duration or byte size {text:?}"),
                    ));
                }
            }
            other => {
                return Err(QueryError::parse(
                    self.text,
                    value_pos,
                    format!(
                        "syntax error: unexpected {}, expecting a number, duration, byte size or string",
                        describe(&other)
                    ),
                ))
            }
        };
        Ok(LabelFilter::Compare {
            name,
            op: cmp,
            value: value * sign,
            kind,
        })
    }
}

fn parse_json_path(text: &str, path: &str, pos: usize) -> Result<Vec<String>, QueryError> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
            }
            '[' => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inner.push(c);
                }
                parts.push(inner.trim_matches(|c| c == '"' || c == '\'').to_string());
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.is_empty() {
        return Err(QueryError::parse(text, pos, "empty JSON path"));
    }
    Ok(parts)
}

/// Parses `line_format` templates: text with `{{.label}}`, `{{ .label }}`,
/// `{{__line__}}` and `{{__timestamp__}}`. Other template functions are not
/// supported and say so.
pub fn parse_template(text: &str, template: &str, pos: usize) -> Result<Vec<TemplatePart>, QueryError> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| QueryError::parse(text, pos, "template: unclosed {{"))?;
        let action = after[..close].trim().trim_start_matches('-').trim_end_matches('-').trim();
        if action == "__line__" {
            parts.push(TemplatePart::Line);
        } else if action == "__timestamp__" {
            parts.push(TemplatePart::Timestamp);
        } else if let Some(label) = action.strip_prefix('.') {
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(QueryError::Unsupported(format!(
                    "template action {{{{{action}}}}} is not supported: only {{{{.label}}}}, {{{{__line__}}}} and {{{{__timestamp__}}}}"
                )));
            }
            parts.push(TemplatePart::Label(label.to_string()));
        } else {
            return Err(QueryError::Unsupported(format!(
                "template action {{{{{action}}}}} is not supported: only {{{{.label}}}}, {{{{__line__}}}} and {{{{__timestamp__}}}}"
            )));
        }
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    Ok(parts)
}

/// Parses a `pattern` expression: literals and `<name>` / `<_>` captures.
pub fn parse_pattern(text: &str, pattern: &str, pos: usize) -> Result<Vec<PatternPart>, QueryError> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    let mut captures = 0;
    while !rest.is_empty() {
        match rest.find('<') {
            Some(open) => {
                let close = rest[open..].find('>').map(|c| c + open);
                let name = close
                    .map(|c| &rest[open + 1..c])
                    .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                match (close, name) {
                    (Some(close), Some(name)) => {
                        if open > 0 {
                            parts.push(PatternPart::Literal(rest[..open].to_string()));
                        }
                        if matches!(parts.last(), Some(PatternPart::Capture(_))) {
                            return Err(QueryError::parse(
                                text,
                                pos,
                                "pattern: two captures must be separated by literal text",
                            ));
                        }
                        parts.push(PatternPart::Capture(if name == "_" { None } else { Some(name.to_string()) }));
                        captures += 1;
                        rest = &rest[close + 1..];
                    }
                    _ => {
                        parts.push(PatternPart::Literal(rest[..open + 1].to_string()));
                        rest = &rest[open + 1..];
                    }
                }
            }
            None => {
                parts.push(PatternPart::Literal(rest.to_string()));
                rest = "";
            }
        }
    }
    if captures == 0 {
        return Err(QueryError::parse(text, pos, "pattern needs at least one <capture>"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Expr {
        parse(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn err(q: &str) -> String {
        parse(q).map(|e| format!("{e:?}")).expect_err(q).to_string()
    }

    #[test]
    fn parses_the_p0_subset() {
        for q in [
            r#"{namespace="ml", pod=~"train-.*", container!="sidecar", node!~"cpu-.*"}"#,
            r#"{app="x"} |= "error" != "timeout" |~ "(?i)cuda" !~ "warn""#,
            r#"{app="x"} | json | status >= 500 and method="GET" or duration > 1.5s"#,
            r#"{app="x"} | logfmt | level="error", size > 10KB | __error__="""#,
            r#"{app="x"} | json | drop __error__"#,
            r#"count_over_time({app="x"}[5m])"#,
            r#"sum by (pod) (rate({app="x"} |= "err" [1m]))"#,
            r#"topk(3, sum without (node) (bytes_rate({app="x"}[30s])))"#,
            r#"sum(count_over_time({app="x"}[5m])) / 2 + vector(1)"#,
            "vector(1)+vector(1)",
            r#"sum(rate({app="x"}[1m])) > bool 0"#,
            r#"avg_over_time({app="x"} | logfmt | unwrap latency [5m]) by (pod)"#,
            r#"quantile_over_time(0.99, {app="x"} | json | unwrap duration(took) | __error__="" [5m])"#,
            r#"{app="x"} | line_format "{{.pod}}: {{ .msg }}" | label_format who=pod"#,
            r#"{app="x"} | pattern "<ip> - <_> [<ts>] <status>" | regexp "(?P<code>\\d+)""#,
            "count_over_time({app=\"x\"}[5m] offset 1h)",
        ] {
            ok(q);
        }
        assert!(matches!(ok("vector(1)+vector(1)"), Expr::Binary(_)));
        match ok(r#"sum by (pod) (rate({app="x"}[1m]))"#) {
            Expr::VectorAgg(agg) => assert_eq!(agg.grouping.labels, vec!["pod"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precedence_follows_prometheus() {
        match ok("1 + 2 * 3 ^ 2 ^ 1") {
            Expr::Binary(b) => {
                assert_eq!(b.op, BinOp::Add);
                match &b.rhs {
                    Expr::Binary(m) => assert_eq!(m.op, BinOp::Mul),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_queries_say_where_and_why() {
        let e = err(r#"{app="x""#);
        assert!(e.contains("col 9") && e.contains("expecting"), "{e}");
        let e = err(r#"{app="x"} |= error"#);
        assert!(e.contains("col 14") && e.contains("identifier error"), "{e}");
        let e = err(r#"count_over_time({app="x"})"#);
        assert!(e.contains("range"), "{e}");
        let e = err(r#"{app=~"("}"#);
        assert!(e.contains("invalid regex"), "{e}");
        let e = err(r#"{app=""}"#);
        assert!(e.contains("does not match the empty string"), "{e}");
        let e = err("sum(");
        assert!(e.contains("end of input"), "{e}");
        let e = err("{app=\"x\"} | unknownstage");
        assert!(e.contains("unknownstage"), "{e}");
        let e = err(r#"rate({app="x"} | unwrap x [1m])"#);
        assert!(e.contains("no unwrap"), "{e}");
        assert!(err("\n  {a=\"x\"} |").contains("line 2"));
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let e = parse(r#"label_replace(rate({a="b"}[1m]), "x", "$1", "a", "(.*)")"#).unwrap_err();
        assert!(matches!(e, QueryError::Unsupported(_)));
        assert!(e.to_string().contains("label_replace"));
        let e = parse(r#"{a="b"} | line_format "{{ .x | upper }}""#).unwrap_err();
        assert!(matches!(e, QueryError::Unsupported(_)), "{e}");
    }

    #[test]
    fn units() {
        assert_eq!(parse_bytes("10KB"), Some(10_000.0));
        assert_eq!(parse_bytes("1MiB"), Some(1_048_576.0));
        assert_eq!(parse_go_duration_secs("1m30.5s"), Some(90.5));
        assert_eq!(parse_go_duration_secs("250ms"), Some(0.25));
        assert_eq!(parse_go_duration_secs("abc"), None);
    }
}
