//! The LogQL syntax tree.

use regex::Regex;

/// A whole query: a log query or a metric expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// `{…} | …`: returns log lines. Only valid at the top.
    Log(LogExpr),
    /// `count_over_time({…}[5m])` and friends.
    RangeAgg(RangeAgg),
    /// `sum by (pod) (…)` and friends.
    VectorAgg(VectorAgg),
    Binary(Box<Binary>),
    /// A number literal (a scalar).
    Number(f64),
    /// `vector(n)`: one sample without labels.
    Vector(f64),
    /// Unary minus.
    Negate(Box<Expr>),
}

impl Expr {
    /// True when the expression yields a scalar, not a vector.
    pub fn is_scalar(&self) -> bool {
        match self {
            Expr::Number(_) => true,
            Expr::Negate(inner) => inner.is_scalar(),
            Expr::Binary(b) => b.lhs.is_scalar() && b.rhs.is_scalar(),
            _ => false,
        }
    }
}

/// A stream selector and the pipeline applied to its lines.
#[derive(Clone, Debug)]
pub struct LogExpr {
    pub matchers: Vec<Matcher>,
    pub pipeline: Vec<Stage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Neq,
    Re,
    Nre,
}

/// `name op "value"` on labels.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// The fully anchored regex for `=~` / `!~`.
    pub regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// Whether a label value (empty when absent) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Neq => value != self.value,
            MatchOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::Nre => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFilterOp {
    Contains,
    NotContains,
    Regex,
    NotRegex,
}

/// `|= "a" or "b"`, `!~ "re"`.
#[derive(Clone, Debug)]
pub struct LineFilter {
    pub op: LineFilterOp,
    pub values: Vec<String>,
    pub regexes: Vec<Regex>,
}

impl LineFilter {
    pub fn matches(&self, line: &str) -> bool {
        match self.op {
            LineFilterOp::Contains => self.values.iter().any(|v| line.contains(v.as_str())),
            LineFilterOp::NotContains => !self.values.iter().any(|v| line.contains(v.as_str())),
            LineFilterOp::Regex => self.regexes.iter().any(|r| r.is_match(line)),
            LineFilterOp::NotRegex => !self.regexes.iter().any(|r| r.is_match(line)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Neq,
}

impl CmpOp {
    pub fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Neq => a != b,
        }
    }
}

/// How a numeric label filter reads the label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberKind {
    Number,
    /// Go durations (`1.5s`, `250ms`), compared in seconds.
    Duration,
    /// Byte sizes (`10KB`, `1MiB`), compared in bytes.
    Bytes,
}

/// Label filter expressions after a parser stage.
#[derive(Clone, Debug)]
pub enum LabelFilter {
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
    Match(Matcher),
    Compare {
        name: String,
        op: CmpOp,
        value: f64,
        kind: NumberKind,
    },
}

/// One piece of a `line_format` / `label_format` template.
#[derive(Clone, Debug)]
pub enum TemplatePart {
    Text(String),
    /// `{{.name}}`
    Label(String),
    /// `{{__line__}}`
    Line,
    /// `{{__timestamp__}}`
    Timestamp,
}

/// A pattern expression piece: literal text or a named capture (`<_>` skips).
#[derive(Clone, Debug)]
pub enum PatternPart {
    Literal(String),
    Capture(Option<String>),
}

/// `label_format dst=src` (rename) or `dst="template"`.
#[derive(Clone, Debug)]
pub enum LabelFormat {
    Rename { dst: String, src: String },
    Template { dst: String, template: Vec<TemplatePart> },
}

/// One stage of a log pipeline.
#[derive(Clone, Debug)]
pub enum Stage {
    LineFilter(LineFilter),
    /// `| json` (all keys, flattened with `_`) or `| json a="x.y", b`.
    Json(Vec<(String, Vec<String>)>),
    Logfmt,
    Regexp(Regex),
    Pattern(Vec<PatternPart>),
    Unpack,
    LabelFilter(LabelFilter),
    LineFormat(Vec<TemplatePart>),
    LabelFormat(Vec<LabelFormat>),
    /// `| drop a, b="x"`: names, or matchers that must hold for the drop.
    Drop(Vec<(String, Option<Matcher>)>),
    Keep(Vec<(String, Option<Matcher>)>),
    Decolorize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    SumOverTime,
    AvgOverTime,
    MaxOverTime,
    MinOverTime,
    FirstOverTime,
    LastOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
    AbsentOverTime,
    RateCounter,
}

impl RangeOp {
    pub fn from_name(name: &str) -> Option<RangeOp> {
        Some(match name {
            "count_over_time" => RangeOp::CountOverTime,
            "rate" => RangeOp::Rate,
            "bytes_over_time" => RangeOp::BytesOverTime,
            "bytes_rate" => RangeOp::BytesRate,
            "sum_over_time" => RangeOp::SumOverTime,
            "avg_over_time" => RangeOp::AvgOverTime,
            "max_over_time" => RangeOp::MaxOverTime,
            "min_over_time" => RangeOp::MinOverTime,
            "first_over_time" => RangeOp::FirstOverTime,
            "last_over_time" => RangeOp::LastOverTime,
            "stddev_over_time" => RangeOp::StddevOverTime,
            "stdvar_over_time" => RangeOp::StdvarOverTime,
            "quantile_over_time" => RangeOp::QuantileOverTime,
            "absent_over_time" => RangeOp::AbsentOverTime,
            "rate_counter" => RangeOp::RateCounter,
            _ => return None,
        })
    }

    /// Operations over the lines themselves (no `unwrap`).
    pub fn counts_lines(self) -> bool {
        matches!(
            self,
            RangeOp::CountOverTime | RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate | RangeOp::AbsentOverTime
        )
    }
}

/// `| unwrap label` or `| unwrap bytes(label)` / `duration(label)`.
#[derive(Clone, Debug)]
pub struct Unwrap {
    pub label: String,
    pub kind: NumberKind,
    /// Label filters after the unwrap (`| unwrap x | __error__=""`).
    pub post_filters: Vec<LabelFilter>,
}

/// `{…} | … [5m] offset 1h`
#[derive(Clone, Debug)]
pub struct LogRange {
    pub log: LogExpr,
    pub range: i64,
    pub offset: i64,
    pub unwrap: Option<Unwrap>,
}

/// `by (a, b)` / `without (a)`.
#[derive(Clone, Debug, Default)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RangeAgg {
    pub op: RangeOp,
    /// φ of `quantile_over_time`.
    pub param: Option<f64>,
    pub range: LogRange,
    pub grouping: Option<Grouping>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Topk,
    Bottomk,
    Stddev,
    Stdvar,
}

impl VectorOp {
    pub fn from_name(name: &str) -> Option<VectorOp> {
        Some(match name {
            "sum" => VectorOp::Sum,
            "avg" => VectorOp::Avg,
            "min" => VectorOp::Min,
            "max" => VectorOp::Max,
            "count" => VectorOp::Count,
            "topk" => VectorOp::Topk,
            "bottomk" => VectorOp::Bottomk,
            "stddev" => VectorOp::Stddev,
            "stdvar" => VectorOp::Stdvar,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct VectorAgg {
    pub op: VectorOp,
    /// k of `topk` / `bottomk`.
    pub param: Option<f64>,
    pub grouping: Grouping,
    pub inner: Box<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Neq,
    Gt,
    Ge,
    Lt,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le)
    }

    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

/// `on (…)` / `ignoring (…)` with optional `group_left/right`.
#[derive(Clone, Debug, Default)]
pub struct VectorMatching {
    pub on: bool,
    pub labels: Vec<String>,
    /// `group_left` (Some(false)) or `group_right` (Some(true)).
    pub group: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Binary {
    pub op: BinOp,
    pub lhs: Expr,
    pub rhs: Expr,
    /// `bool` modifier on comparisons.
    pub return_bool: bool,
    pub matching: Option<VectorMatching>,
}
