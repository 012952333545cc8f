//! The PromQL evaluator. Every node is evaluated over the whole grid of
//! steps at once (a range query is one pass, an instant query a grid of
//! one step): selectors fetch their samples once for all steps, instant
//! selectors apply the lookback (5 minutes) and staleness markers, range
//! selectors and subqueries become per-step windows `(t - range, t]`
//! (left-open, as Prometheus 3), `offset` and `@` shift the evaluation
//! time. Times are Unix milliseconds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use promql_parser::label::{MatchOp as PMatchOp, Matcher};
use promql_parser::parser::{AtModifier, BinaryExpr, Expr, LabelModifier, Offset, VectorMatchCardinality, VectorSelector};
use weft_model::metric::{is_stale_marker, METRIC_NAME};
use weft_model::LabelSet;

use super::functions;
use super::source::{SampleSource, Series};
use crate::QueryError;

/// Prometheus' default lookback for instant selectors.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Limits of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct EvalLimits {
    pub max_series: usize,
    pub max_points: usize,
    pub max_samples: usize,
}

impl Default for EvalLimits {
    fn default() -> Self {
        Self {
            max_series: 100_000,
            max_points: 50_000_000,
            max_samples: 50_000_000,
        }
    }
}

/// A series on the step grid.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSeries {
    pub labels: LabelSet,
    pub values: Vec<Option<f64>>,
}

/// A range vector: raw samples and, per step, the end of the window.
#[derive(Clone, Debug)]
pub struct MatrixValue {
    pub series: Vec<Series>,
    /// Window length, milliseconds.
    pub range: i64,
    /// Per step: the window is `(eval_times[i] - range, eval_times[i]]`.
    pub eval_times: Vec<i64>,
}

impl MatrixValue {
    /// The samples of `series` in step `step`'s window.
    pub fn window(&self, series: usize, step: usize) -> &[(i64, f64)] {
        let samples = &self.series[series].samples;
        let end = self.eval_times[step];
        let from = samples.partition_point(|s| s.0 <= end - self.range);
        let to = samples.partition_point(|s| s.0 <= end);
        &samples[from..to]
    }
}

/// The value of a node over the grid.
#[derive(Clone, Debug)]
pub enum Value {
    Scalar(Vec<f64>),
    Vector(Vec<StepSeries>),
    Matrix(MatrixValue),
    String(String),
}

/// What a query returns (Prometheus API result types).
#[derive(Clone, Debug, PartialEq)]
pub enum PromResult {
    /// Range query results, and instant queries of range vectors.
    Matrix(Vec<Series>),
    Vector(Vec<(LabelSet, i64, f64)>),
    Scalar(i64, f64),
    String(i64, String),
}

/// Evaluates expressions against a sample source.
pub struct Evaluator<'a> {
    pub source: &'a dyn SampleSource,
    /// Query start and end (for `@ start()` / `@ end()`), milliseconds.
    pub query_start: i64,
    pub query_end: i64,
    pub lookback: i64,
    pub limits: EvalLimits,
}

/// Longest duration or offset the engine works with, ms (about 3,000
/// years): with times bounded by [`MAX_TIME_MS`], sums of times and
/// durations cannot overflow.
pub const MAX_DURATION_MS: i64 = 100_000_000_000_000;

/// Latest (and, negated, earliest) evaluation time accepted, ms (the year
/// 5138).
pub const MAX_TIME_MS: i64 = 100_000_000_000_000;

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    d.as_millis().min(MAX_DURATION_MS as u128) as i64
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
        None => 0,
    }
}

pub(crate) fn system_time_ms(t: &std::time::SystemTime) -> i64 {
    let bound = |d: Duration| d.as_millis().min(MAX_TIME_MS as u128) as i64;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => bound(d),
        Err(e) => -bound(e.duration()),
    }
}

/// The error of a query that loads more than `max` raw samples.
pub fn too_many_samples(max: usize) -> QueryError {
    QueryError::Limit(format!("query loads more than {max} samples; narrow its selectors or time range"))
}

/// Drops `__name__`.
pub fn drop_name(labels: &LabelSet) -> LabelSet {
    let mut out = labels.clone();
    out.remove(METRIC_NAME);
    out
}

impl<'a> Evaluator<'a> {
    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            Some(AtModifier::Start) => Some(self.query_start),
            Some(AtModifier::End) => Some(self.query_end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
            None => None,
        }
    }

    fn eval_times(&self, steps: &[i64], at: &Option<AtModifier>, offset: &Option<Offset>) -> Vec<i64> {
        let at = self.at_ms(at);
        let offset = offset_ms(offset);
        steps.iter().map(|t| at.unwrap_or(*t) - offset).collect()
    }

    fn selector_matchers(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
        let mut base: Vec<Matcher> = vs.matchers.matchers.clone();
        if let Some(name) = &vs.name {
            base.push(Matcher::new(PMatchOp::Equal, METRIC_NAME, name));
        }
        if vs.matchers.or_matchers.is_empty() {
            return vec![base];
        }
        vs.matchers
            .or_matchers
            .iter()
            .map(|group| {
                let mut all = base.clone();
                all.extend(group.iter().cloned());
                all
            })
            .collect()
    }

    fn fetch(&self, vs: &VectorSelector, start: i64, end: i64) -> Result<Vec<Series>, QueryError> {
        let groups = Self::selector_matchers(vs);
        if groups.len() == 1 {
            return self.source.select(&groups[0], start, end, self.limits.max_samples);
        }
        let mut merged: BTreeMap<LabelSet, Vec<(i64, f64)>> = BTreeMap::new();
        for group in groups {
            for series in self.source.select(&group, start, end, self.limits.max_samples)? {
                merged.entry(series.labels).or_insert(series.samples);
            }
        }
        Ok(merged.into_iter().map(|(labels, samples)| Series { labels, samples }).collect())
    }

    /// Sources stop reading past the budget; several `or` groups can still
    /// add up past it.
    fn check_samples(&self, series: &[Series]) -> Result<(), QueryError> {
        let total: usize = series.iter().map(|s| s.samples.len()).sum();
        if total > self.limits.max_samples {
            return Err(too_many_samples(self.limits.max_samples));
        }
        Ok(())
    }

    fn check_points(&self, series: usize, steps: usize) -> Result<(), QueryError> {
        if series > self.limits.max_series {
            return Err(QueryError::Limit(format!(
                "query selects more than {} series",
                self.limits.max_series
            )));
        }
        if series.saturating_mul(steps) > self.limits.max_points {
            return Err(QueryError::Limit(format!(
                "query would hold more than {} points; narrow it or raise the step",
                self.limits.max_points
            )));
        }
        Ok(())
    }

    /// An instant vector selector: per step the newest sample in
    /// `(t - lookback, t]`, unless it is a staleness marker.
    pub fn eval_vector_selector(&self, vs: &VectorSelector, steps: &[i64]) -> Result<Vec<StepSeries>, QueryError> {
        let times = self.eval_times(steps, &vs.at, &vs.offset);
        let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
        let fetched = self.fetch(vs, lo - self.lookback + 1, hi)?;
        self.check_points(fetched.len(), steps.len())?;
        self.check_samples(&fetched)?;
        let mut out = Vec::with_capacity(fetched.len());
        for series in fetched {
            let values: Vec<Option<f64>> = times
                .iter()
                .map(|&t| {
                    let at = series.samples.partition_point(|s| s.0 <= t);
                    if at == 0 {
                        return None;
                    }
                    let (ts, value) = series.samples[at - 1];
                    (ts > t - self.lookback && !is_stale_marker(value)).then_some(value)
                })
                .collect();
            if values.iter().any(Option::is_some) {
                out.push(StepSeries {
                    labels: series.labels,
                    values,
                });
            }
        }
        Ok(out)
    }

    /// Timestamps (seconds) of the samples an instant selector picks.
    pub fn eval_selector_timestamps(&self, vs: &VectorSelector, steps: &[i64]) -> Result<Vec<StepSeries>, QueryError> {
        let times = self.eval_times(steps, &vs.at, &vs.offset);
        let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
        let fetched = self.fetch(vs, lo - self.lookback + 1, hi)?;
        Ok(fetched
            .into_iter()
            .map(|series| {
                let values = times
                    .iter()
                    .map(|&t| {
                        let at = series.samples.partition_point(|s| s.0 <= t);
                        (at > 0)
                            .then(|| series.samples[at - 1])
                            .filter(|(ts, v)| *ts > t - self.lookback && !is_stale_marker(*v))
                            .map(|(ts, _)| ts as f64 / 1000.0)
                    })
                    .collect();
                StepSeries {
                    labels: drop_name(&series.labels),
                    values,
                }
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect())
    }

    fn eval_matrix_selector(&self, vs: &VectorSelector, range: &Duration, steps: &[i64]) -> Result<MatrixValue, QueryError> {
        let range = duration_ms(range);
        let times = self.eval_times(steps, &vs.at, &vs.offset);
        let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
        let mut series = self.fetch(vs, lo - range + 1, hi)?;
        self.check_samples(&series)?;
        for s in &mut series {
            s.samples.retain(|(_, v)| !is_stale_marker(*v));
        }
        series.retain(|s| !s.samples.is_empty());
        Ok(MatrixValue {
            series,
            range,
            eval_times: times,
        })
    }

    fn eval_subquery(&self, sq: &promql_parser::parser::SubqueryExpr, steps: &[i64]) -> Result<MatrixValue, QueryError> {
        let range = duration_ms(&sq.range);
        let step = sq.step.as_ref().map(duration_ms).filter(|s| *s > 0).unwrap_or(60_000);
        let times = self.eval_times(steps, &sq.at, &sq.offset);
        let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
        // Sub-steps are aligned to multiples of the step, as Prometheus does.
        let first = (lo - range).div_euclid(step) * step + step;
        let count = if hi < first { 0 } else { (hi - first) / step + 1 };
        if count > 1_000_000 {
            return Err(QueryError::Limit(format!(
                "subquery would evaluate {count} steps, more than 1000000; raise its step"
            )));
        }
        let sub_steps: Vec<i64> = (0..count).map(|i| first + i * step).collect();
        let inner = self.eval(&sq.expr, &sub_steps)?;
        let series = match inner {
            Value::Vector(series) => series
                .into_iter()
                .map(|s| Series {
                    labels: s.labels,
                    samples: sub_steps.iter().zip(s.values).filter_map(|(t, v)| v.map(|v| (*t, v))).collect(),
                })
                .collect(),
            Value::Scalar(values) => vec![Series {
                labels: LabelSet::new(),
                samples: sub_steps.iter().copied().zip(values).collect(),
            }],
            _ => {
                return Err(QueryError::BadRequest(
                    "subquery is only allowed on instant vector or scalar expressions".into(),
                ))
            }
        };
        Ok(MatrixValue {
            series,
            range,
            eval_times: times,
        })
    }

    /// Evaluates `expr` at every step.
    pub fn eval(&self, expr: &Expr, steps: &[i64]) -> Result<Value, QueryError> {
        let n = steps.len();
        Ok(match expr {
            Expr::NumberLiteral(lit) => Value::Scalar(vec![lit.val; n]),
            Expr::StringLiteral(lit) => Value::String(lit.val.clone()),
            Expr::Paren(paren) => self.eval(&paren.expr, steps)?,
            Expr::Unary(unary) => match self.eval(&unary.expr, steps)? {
                Value::Scalar(values) => Value::Scalar(values.into_iter().map(|v| -v).collect()),
                Value::Vector(series) => Value::Vector(
                    series
                        .into_iter()
                        .map(|s| StepSeries {
                            labels: drop_name(&s.labels),
                            values: s.values.into_iter().map(|v| v.map(|v| -v)).collect(),
                        })
                        .collect(),
                ),
                _ => return Err(QueryError::BadRequest("unary minus needs a scalar or an instant vector".into())),
            },
            Expr::VectorSelector(vs) => Value::Vector(self.eval_vector_selector(vs, steps)?),
            Expr::MatrixSelector(ms) => Value::Matrix(self.eval_matrix_selector(&ms.vs, &ms.range, steps)?),
            Expr::Subquery(sq) => Value::Matrix(self.eval_subquery(sq, steps)?),
            Expr::Call(call) => functions::call(self, call, steps)?,
            Expr::Aggregate(agg) => self.aggregate(agg, steps)?,
            Expr::Binary(binary) => self.binary(binary, steps)?,
            Expr::Extension(_) => return Err(QueryError::Unsupported("extension expressions".into())),
        })
    }

    fn scalar_param(&self, expr: &Expr, steps: &[i64], what: &str) -> Result<Vec<f64>, QueryError> {
        match self.eval(expr, steps)? {
            Value::Scalar(values) => Ok(values),
            _ => Err(QueryError::BadRequest(format!("{what} must be a scalar"))),
        }
    }

    fn aggregate(&self, agg: &promql_parser::parser::AggregateExpr, steps: &[i64]) -> Result<Value, QueryError> {
        let n = steps.len();
        let op = agg.op.to_string().to_ascii_lowercase();
        let Value::Vector(series) = self.eval(&agg.expr, steps)? else {
            return Err(QueryError::BadRequest(format!("expected an instant vector in aggregation {op}")));
        };
        let group_of = |labels: &LabelSet| -> LabelSet {
            match &agg.modifier {
                Some(LabelModifier::Include(keep)) => {
                    let mut out = labels.clone();
                    out.retain(|name| keep.labels.iter().any(|l| l == name));
                    out
                }
                Some(LabelModifier::Exclude(drop)) => {
                    let mut out = drop_name(labels);
                    for name in &drop.labels {
                        out.remove(name);
                    }
                    out
                }
                None => LabelSet::new(),
            }
        };
        match op.as_str() {
            "topk" | "bottomk" | "limitk" => {
                let param = agg
                    .param
                    .as_ref()
                    .ok_or_else(|| QueryError::BadRequest(format!("{op} needs a parameter")))?;
                let ks = self.scalar_param(param, steps, "k")?;
                let mut groups: BTreeMap<LabelSet, Vec<usize>> = BTreeMap::new();
                for (i, s) in series.iter().enumerate() {
                    groups.entry(group_of(&s.labels)).or_default().push(i);
                }
                let mut keep = vec![vec![false; n]; series.len()];
                for members in groups.values() {
                    for step in 0..n {
                        let k = ks[step];
                        if k.is_nan() {
                            return Err(QueryError::BadRequest(format!("parameter value is NaN for {op}")));
                        }
                        let k = if k < 1.0 { 0 } else { k.min(usize::MAX as f64) as usize };
                        let mut present: Vec<(f64, usize)> =
                            members.iter().filter_map(|&i| series[i].values[step].map(|v| (v, i))).collect();
                        match op.as_str() {
                            "topk" => present.sort_by(|a, b| cmp_desc_nan_last(a.0, b.0).then(a.1.cmp(&b.1))),
                            "bottomk" => present.sort_by(|a, b| cmp_asc_nan_last(a.0, b.0).then(a.1.cmp(&b.1))),
                            _ => {}
                        }
                        for (_, i) in present.into_iter().take(k) {
                            keep[i][step] = true;
                        }
                    }
                }
                Ok(Value::Vector(
                    series
                        .into_iter()
                        .zip(keep)
                        .map(|(s, keep)| StepSeries {
                            labels: s.labels,
                            values: s.values.into_iter().zip(keep).map(|(v, k)| v.filter(|_| k)).collect(),
                        })
                        .filter(|s| s.values.iter().any(Option::is_some))
                        .collect(),
                ))
            }
            "count_values" => {
                let param = agg
                    .param
                    .as_ref()
                    .ok_or_else(|| QueryError::BadRequest("count_values needs a label name".into()))?;
                let Value::String(label) = self.eval(param, steps)? else {
                    return Err(QueryError::BadRequest("count_values needs a string label name".into()));
                };
                weft_model::labels::validate_label_name(&label).map_err(|e| QueryError::BadRequest(e.to_string()))?;
                let mut counts: BTreeMap<LabelSet, Vec<Option<f64>>> = BTreeMap::new();
                for s in &series {
                    let group = group_of(&s.labels);
                    for (step, v) in s.values.iter().enumerate() {
                        let Some(v) = v else { continue };
                        let mut key = group.clone();
                        key.insert(label.clone(), format_float(*v));
                        if !counts.contains_key(&key) {
                            // Each output series holds one point per step.
                            self.check_points(counts.len() + 1, n)?;
                        }
                        let slot = &mut counts.entry(key).or_insert_with(|| vec![None; n])[step];
                        *slot = Some(slot.unwrap_or(0.0) + 1.0);
                    }
                }
                Ok(Value::Vector(
                    counts.into_iter().map(|(labels, values)| StepSeries { labels, values }).collect(),
                ))
            }
            _ => {
                let param = match (&agg.param, op.as_str()) {
                    (Some(p), "quantile") => Some(self.scalar_param(p, steps, "quantile")?),
                    _ => None,
                };
                let mut groups: BTreeMap<LabelSet, Vec<Vec<f64>>> = BTreeMap::new();
                for s in &series {
                    let buckets = groups.entry(group_of(&s.labels)).or_insert_with(|| vec![Vec::new(); n]);
                    for (step, v) in s.values.iter().enumerate() {
                        if let Some(v) = v {
                            buckets[step].push(*v);
                        }
                    }
                }
                let mut out = Vec::with_capacity(groups.len());
                for (labels, buckets) in groups {
                    let values = buckets
                        .iter()
                        .enumerate()
                        .map(|(step, values)| {
                            if values.is_empty() {
                                return Ok(None);
                            }
                            Ok(Some(match op.as_str() {
                                "sum" => kahan_sum(values),
                                "avg" => kahan_sum(values) / values.len() as f64,
                                "min" => values
                                    .iter()
                                    .copied()
                                    .fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
                                "max" => values
                                    .iter()
                                    .copied()
                                    .fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
                                "count" => values.len() as f64,
                                "group" => 1.0,
                                "stddev" => variance(values).sqrt(),
                                "stdvar" => variance(values),
                                "quantile" => {
                                    let mut sorted = values.clone();
                                    functions::sort_nan_first(&mut sorted);
                                    functions::quantile(param.as_ref().map(|p| p[step]).unwrap_or(0.5), &sorted)
                                }
                                other => return Err(QueryError::Unsupported(format!("aggregation {other}"))),
                            }))
                        })
                        .collect::<Result<Vec<_>, QueryError>>()?;
                    out.push(StepSeries { labels, values });
                }
                Ok(Value::Vector(out))
            }
        }
    }

    fn binary(&self, b: &BinaryExpr, steps: &[i64]) -> Result<Value, QueryError> {
        let op = b.op.to_string().to_ascii_lowercase();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, steps)?;
        let rhs = self.eval(&b.rhs, steps)?;
        let comparison = matches!(op.as_str(), "==" | "!=" | ">" | "<" | ">=" | "<=");
        match (lhs, rhs) {
            (Value::Scalar(a), Value::Scalar(c)) => {
                if comparison && !return_bool {
                    return Err(QueryError::BadRequest("comparisons between scalars must use BOOL modifier".into()));
                }
                Ok(Value::Scalar(a.iter().zip(&c).map(|(x, y)| arith(&op, *x, *y)).collect()))
            }
            (Value::Vector(series), Value::Scalar(c)) => Ok(Value::Vector(vector_scalar(&op, series, &c, false, return_bool, comparison))),
            (Value::Scalar(a), Value::Vector(series)) => Ok(Value::Vector(vector_scalar(&op, series, &a, true, return_bool, comparison))),
            (Value::Vector(lhs), Value::Vector(rhs)) => {
                if matches!(op.as_str(), "and" | "or" | "unless") {
                    return Ok(Value::Vector(set_op(
                        &op,
                        lhs,
                        rhs,
                        b.modifier.as_ref().and_then(|m| m.matching.as_ref()),
                    )));
                }
                vector_vector(&op, lhs, rhs, b, return_bool, comparison, steps.len()).map(Value::Vector)
            }
            _ => Err(QueryError::BadRequest(format!(
                "binary operator {op} needs scalars or instant vectors"
            ))),
        }
    }
}

fn cmp_desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn cmp_asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Kahan–Babuška summation, as Prometheus sums.
pub fn kahan_sum(values: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for &v in values {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            c += (sum - t) + v;
        } else {
            c += (v - t) + sum;
        }
        sum = t;
    }
    if sum.is_infinite() {
        sum
    } else {
        sum + c
    }
}

/// Population variance (Welford).
pub fn variance(values: &[f64]) -> f64 {
    let (mut mean, mut m2, mut count) = (0.0, 0.0, 0.0);
    for &v in values {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        m2 += delta * (v - mean);
    }
    m2 / count
}

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` does for
/// the values PromQL prints in labels and JSON.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn arith(op: &str, a: f64, b: f64) -> f64 {
    match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        "/" => a / b,
        "%" => a % b,
        "^" => a.powf(b),
        "atan2" => a.atan2(b),
        "==" => (a == b) as u8 as f64,
        "!=" => (a != b) as u8 as f64,
        ">" => (a > b) as u8 as f64,
        "<" => (a < b) as u8 as f64,
        ">=" => (a >= b) as u8 as f64,
        "<=" => (a <= b) as u8 as f64,
        _ => f64::NAN,
    }
}

fn vector_scalar(
    op: &str,
    series: Vec<StepSeries>,
    scalars: &[f64],
    scalar_left: bool,
    return_bool: bool,
    comparison: bool,
) -> Vec<StepSeries> {
    series
        .into_iter()
        .map(|s| {
            let labels = if comparison && !return_bool {
                s.labels
            } else {
                drop_name(&s.labels)
            };
            let values = s
                .values
                .into_iter()
                .zip(scalars)
                .map(|(v, c)| {
                    let v = v?;
                    let (a, b) = if scalar_left { (*c, v) } else { (v, *c) };
                    let result = arith(op, a, b);
                    if comparison && !return_bool {
                        (result == 1.0).then_some(v)
                    } else {
                        Some(result)
                    }
                })
                .collect();
            StepSeries { labels, values }
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect()
}

/// The labels vector matching compares: `on(…)` keeps those, otherwise
/// `ignoring(…)` and `__name__` are dropped.
fn signature(labels: &LabelSet, matching: Option<&LabelModifier>) -> LabelSet {
    match matching {
        Some(LabelModifier::Include(on)) => {
            let mut out = labels.clone();
            out.retain(|n| on.labels.iter().any(|l| l == n));
            out
        }
        Some(LabelModifier::Exclude(ignoring)) => {
            let mut out = drop_name(labels);
            for name in &ignoring.labels {
                out.remove(name);
            }
            out
        }
        None => drop_name(labels),
    }
}

fn set_op(op: &str, lhs: Vec<StepSeries>, rhs: Vec<StepSeries>, matching: Option<&LabelModifier>) -> Vec<StepSeries> {
    let n = lhs.first().or(rhs.first()).map(|s| s.values.len()).unwrap_or(0);
    let mut rhs_present: HashMap<LabelSet, Vec<bool>> = HashMap::new();
    for s in &rhs {
        let present = rhs_present.entry(signature(&s.labels, matching)).or_insert_with(|| vec![false; n]);
        for (i, v) in s.values.iter().enumerate() {
            present[i] |= v.is_some();
        }
    }
    match op {
        "and" | "unless" => lhs
            .into_iter()
            .map(|s| {
                let present = rhs_present.get(&signature(&s.labels, matching));
                let values = s
                    .values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let there = present.is_some_and(|p| p[i]);
                        v.filter(|_| if op == "and" { there } else { !there })
                    })
                    .collect();
                StepSeries { labels: s.labels, values }
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect(),
        _ => {
            let mut lhs_present: HashMap<LabelSet, Vec<bool>> = HashMap::new();
            for s in &lhs {
                let present = lhs_present.entry(signature(&s.labels, matching)).or_insert_with(|| vec![false; n]);
                for (i, v) in s.values.iter().enumerate() {
                    present[i] |= v.is_some();
                }
            }
            let mut out = lhs;
            for s in rhs {
                let present = lhs_present.get(&signature(&s.labels, matching));
                let values: Vec<Option<f64>> = s
                    .values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| v.filter(|_| !present.is_some_and(|p| p[i])))
                    .collect();
                if values.iter().any(Option::is_some) {
                    out.push(StepSeries { labels: s.labels, values });
                }
            }
            out
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    op: &str,
    lhs: Vec<StepSeries>,
    rhs: Vec<StepSeries>,
    b: &BinaryExpr,
    return_bool: bool,
    comparison: bool,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let matching = b.modifier.as_ref().and_then(|m| m.matching.as_ref());
    let card = b
        .modifier
        .as_ref()
        .map(|m| m.card.clone())
        .unwrap_or(VectorMatchCardinality::OneToOne);
    let (many, one, swapped) = match card {
        VectorMatchCardinality::OneToMany(_) => (rhs, lhs, true),
        _ => (lhs, rhs, false),
    };
    let include: Vec<String> = card.labels().map(|l| l.labels.clone()).unwrap_or_default();
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    // The "one" side may hold each signature once per step.
    let mut one_by_sig: HashMap<LabelSet, Vec<usize>> = HashMap::new();
    for (i, s) in one.iter().enumerate() {
        one_by_sig.entry(signature(&s.labels, matching)).or_default().push(i);
    }
    for (sig, members) in &one_by_sig {
        if members.len() > 1 {
            for step in 0..n {
                if members.iter().filter(|&&i| one[i].values[step].is_some()).count() > 1 {
                    let side = if swapped { "left" } else { "right" };
                    return Err(QueryError::Execution(format!(
                        "found duplicate series for the match group {sig} on the {side} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side"
                    )));
                }
            }
        }
    }
    let mut out: BTreeMap<LabelSet, Vec<Option<f64>>> = BTreeMap::new();
    let mut seen_many: HashMap<LabelSet, Vec<bool>> = HashMap::new();
    for s in &many {
        let sig = signature(&s.labels, matching);
        let Some(partners) = one_by_sig.get(&sig) else { continue };
        for step in 0..n {
            let Some(mv) = s.values[step] else { continue };
            let Some(&j) = partners.iter().find(|&&j| one[j].values[step].is_some()) else {
                continue;
            };
            let ov = one[j].values[step].expect("checked above");
            let (a, c) = if swapped { (ov, mv) } else { (mv, ov) };
            let result = arith(op, a, c);
            let value = if comparison && !return_bool {
                if result != 1.0 {
                    continue;
                }
                a
            } else {
                result
            };
            // As Prometheus: only pairs the filter keeps count as matches.
            if one_to_one {
                let seen = seen_many.entry(sig.clone()).or_insert_with(|| vec![false; n]);
                if seen[step] {
                    return Err(QueryError::Execution(format!(
                        "found duplicate series for the match group {sig} on the left hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side"
                    )));
                }
                seen[step] = true;
            }
            // Result labels, as Prometheus' resultMetric.
            let mut labels = s.labels.clone();
            if !comparison || return_bool {
                labels.remove(METRIC_NAME);
            }
            if one_to_one {
                match matching {
                    Some(LabelModifier::Include(on)) => labels.retain(|n| on.labels.iter().any(|l| l == n)),
                    Some(LabelModifier::Exclude(ignoring)) => {
                        for name in &ignoring.labels {
                            labels.remove(name);
                        }
                    }
                    None => {}
                }
            }
            for name in &include {
                match one[j].labels.get(name) {
                    Some(v) => labels.insert(name.clone(), v.to_string()),
                    None => {
                        labels.remove(name);
                    }
                }
            }
            let slot = out.entry(labels).or_insert_with(|| vec![None; n]);
            if slot[step].is_some() {
                return Err(QueryError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches".into(),
                ));
            }
            slot[step] = Some(value);
        }
    }
    Ok(out.into_iter().map(|(labels, values)| StepSeries { labels, values }).collect())
}

/// Checks that no two series share a label set at a step.
pub fn check_unique(series: &[StepSeries]) -> Result<(), QueryError> {
    // Only label sets held by two or more series need a step-by-step look
    // (a set per series of every step was a fifth of a large range query).
    let mut groups: HashMap<&LabelSet, Vec<usize>> = HashMap::new();
    for (i, s) in series.iter().enumerate() {
        groups.entry(&s.labels).or_default().push(i);
    }
    for members in groups.values().filter(|m| m.len() > 1) {
        let mut taken: Vec<bool> = Vec::new();
        for &i in members {
            let values = &series[i].values;
            taken.resize(taken.len().max(values.len()), false);
            for (step, v) in values.iter().enumerate() {
                if v.is_some() && std::mem::replace(&mut taken[step], true) {
                    return Err(QueryError::Execution("vector cannot contain metrics with the same labelset".into()));
                }
            }
        }
    }
    Ok(())
}

/// Merges series that share a label set (after a function dropped names)
/// when they never overlap, else fails as Prometheus does.
pub fn merge_same_labels(series: Vec<StepSeries>) -> Result<Vec<StepSeries>, QueryError> {
    check_unique(&series)?;
    let mut merged: BTreeMap<LabelSet, Vec<Option<f64>>> = BTreeMap::new();
    for s in series {
        match merged.get_mut(&s.labels) {
            Some(values) => {
                for (slot, v) in values.iter_mut().zip(s.values) {
                    if v.is_some() {
                        *slot = v;
                    }
                }
            }
            None => {
                merged.insert(s.labels, s.values);
            }
        }
    }
    Ok(merged.into_iter().map(|(labels, values)| StepSeries { labels, values }).collect())
}

/// Runs a range query: `expr` at every step from `start` to `end`.
pub fn query_range(
    source: &dyn SampleSource,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    limits: EvalLimits,
) -> Result<PromResult, QueryError> {
    if step <= 0 {
        return Err(QueryError::BadRequest(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end < start {
        return Err(QueryError::BadRequest("end timestamp must not be before start time".into()));
    }
    let count = (end - start) / step + 1;
    if count > 11_000 {
        return Err(QueryError::BadRequest(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let steps: Vec<i64> = (0..count).map(|i| start + i * step).collect();
    let evaluator = Evaluator {
        source,
        query_start: start,
        query_end: end,
        lookback: DEFAULT_LOOKBACK_MS,
        limits,
    };
    match evaluator.eval(expr, &steps)? {
        Value::Scalar(values) => Ok(PromResult::Matrix(vec![Series {
            labels: LabelSet::new(),
            samples: steps.iter().copied().zip(values).collect(),
        }])),
        Value::Vector(series) => {
            let series = merge_same_labels(series)?;
            Ok(PromResult::Matrix(
                series
                    .into_iter()
                    .map(|s| Series {
                        labels: s.labels,
                        samples: steps.iter().zip(s.values).filter_map(|(t, v)| v.map(|v| (*t, v))).collect(),
                    })
                    .filter(|s| !s.samples.is_empty())
                    .collect(),
            ))
        }
        Value::Matrix(_) => Err(QueryError::BadRequest(
            "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
        )),
        Value::String(_) => Err(QueryError::BadRequest(
            "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
        )),
    }
}

/// Runs an instant query at `time`.
pub fn query_instant(source: &dyn SampleSource, expr: &Expr, time: i64, limits: EvalLimits) -> Result<PromResult, QueryError> {
    let steps = [time];
    let evaluator = Evaluator {
        source,
        query_start: time,
        query_end: time,
        lookback: DEFAULT_LOOKBACK_MS,
        limits,
    };
    Ok(match evaluator.eval(expr, &steps)? {
        Value::Scalar(values) => PromResult::Scalar(time, values[0]),
        Value::String(text) => PromResult::String(time, text),
        Value::Vector(series) => {
            check_unique(&series)?;
            let mut samples: Vec<(LabelSet, i64, f64)> = series
                .into_iter()
                .filter_map(|s| s.values[0].map(|v| (s.labels, time, v)))
                .collect();
            order_instant(expr, &mut samples);
            PromResult::Vector(samples)
        }
        Value::Matrix(matrix) => PromResult::Matrix(
            (0..matrix.series.len())
                .map(|i| Series {
                    labels: matrix.series[i].labels.clone(),
                    samples: matrix.window(i, 0).to_vec(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect(),
        ),
    })
}

/// Orders an instant vector as Prometheus presents it: `sort*` and
/// `topk`/`bottomk` by value (or label), everything else by labels.
fn order_instant(expr: &Expr, samples: &mut [(LabelSet, i64, f64)]) {
    let mut top = expr;
    while let Expr::Paren(p) = top {
        top = &p.expr;
    }
    let by_value = |samples: &mut [(LabelSet, i64, f64)], desc: bool| {
        samples.sort_by(|a, b| {
            let order = if desc {
                cmp_desc_nan_last(a.2, b.2)
            } else {
                cmp_asc_nan_last(a.2, b.2)
            };
            order.then_with(|| a.0.cmp(&b.0))
        })
    };
    match top {
        Expr::Aggregate(agg) if agg.op.to_string().eq_ignore_ascii_case("topk") => by_value(samples, true),
        Expr::Aggregate(agg) if agg.op.to_string().eq_ignore_ascii_case("bottomk") => by_value(samples, false),
        Expr::Call(call) if call.func.name == "sort" => by_value(samples, false),
        Expr::Call(call) if call.func.name == "sort_desc" => by_value(samples, true),
        Expr::Call(call) if call.func.name == "sort_by_label" || call.func.name == "sort_by_label_desc" => {
            let names: Vec<String> = call
                .args
                .args
                .iter()
                .skip(1)
                .filter_map(|a| match a.as_ref() {
                    Expr::StringLiteral(s) => Some(s.val.clone()),
                    _ => None,
                })
                .collect();
            let desc = call.func.name.ends_with("_desc");
            samples.sort_by(|a, b| {
                let key = |s: &(LabelSet, i64, f64)| names.iter().map(|n| s.0.get(n).unwrap_or("").to_string()).collect::<Vec<_>>();
                let order = key(a).cmp(&key(b)).then_with(|| a.0.cmp(&b.0));
                if desc {
                    order.reverse()
                } else {
                    order
                }
            })
        }
        _ => samples.sort_by(|a, b| a.0.cmp(&b.0)),
    }
}

/// Parses a PromQL expression, mapping parser errors to `bad_data`.
pub fn parse(text: &str) -> Result<Expr, QueryError> {
    if text.len() > 64 * 1024 {
        return Err(QueryError::BadRequest("query longer than 65536 bytes".into()));
    }
    crate::nesting::check_promql(text)?;
    let expr = promql_parser::parser::parse(text).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"query\": {e}")))?;
    check_depth(&expr)?;
    Ok(expr)
}

/// Refuses an expression tree deeper than [`crate::nesting::MAX_DEPTH`]
/// (a chain like `a + a + …`, which the evaluator walks recursively),
/// walking it without recursion.
fn check_depth(expr: &Expr) -> Result<(), QueryError> {
    let mut stack = vec![(expr, 1usize)];
    while let Some((expr, depth)) = stack.pop() {
        if depth > crate::nesting::MAX_DEPTH {
            return Err(crate::nesting::too_deep("query"));
        }
        match expr {
            Expr::Aggregate(a) => {
                stack.push((&a.expr, depth + 1));
                if let Some(param) = &a.param {
                    stack.push((param, depth + 1));
                }
            }
            Expr::Unary(u) => stack.push((&u.expr, depth + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, depth + 1));
                stack.push((&b.rhs, depth + 1));
            }
            Expr::Paren(p) => stack.push((&p.expr, depth + 1)),
            Expr::Subquery(s) => stack.push((&s.expr, depth + 1)),
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), depth + 1))),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::VectorSelector(_) | Expr::MatrixSelector(_) | Expr::Extension(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::source::MemorySource;

    fn source() -> MemorySource {
        let mut source = MemorySource::default();
        for i in 0..10 {
            let labels = LabelSet::from_pairs([(METRIC_NAME, "gauge"), ("i", i.to_string().as_str())]);
            source.add(labels, (0..100).map(|s| (s * 15_000, (s * (i + 1)) as f64)));
        }
        source
    }

    fn instant(source: &MemorySource, query: &str, time: i64, limits: EvalLimits) -> Result<PromResult, QueryError> {
        let expr = promql_parser::parser::parse(query).unwrap();
        query_instant(source, &expr, time, limits)
    }

    fn fuzz_promql() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = proptest::sample::select(vec![
            "gauge",
            r#"gauge{i="1"}"#,
            r#"gauge{i=~"1|2"}"#,
            "missing",
            "1",
            "-0.5",
            "NaN",
            "Inf",
            "vector(1)",
            "time()",
            r#""text""#,
        ])
        .prop_map(str::to_string);
        leaf.prop_recursive(4, 24, 3, |inner| {
            let range = proptest::sample::select(vec!["[1m]", "[5m]", "[1m:15s]", "[5m:1m] offset 1m", "[1h] @ 30", "[0s:1s]"]);
            prop_oneof![
                (
                    proptest::sample::select(vec![
                        "rate",
                        "irate",
                        "increase",
                        "delta",
                        "idelta",
                        "deriv",
                        "changes",
                        "resets",
                        "avg_over_time",
                        "min_over_time",
                        "max_over_time",
                        "sum_over_time",
                        "count_over_time",
                        "last_over_time",
                        "present_over_time",
                        "stddev_over_time",
                        "absent_over_time",
                        "quantile_over_time(0.5,",
                        "predict_linear(",
                        "holt_winters(",
                    ]),
                    inner.clone(),
                    range
                )
                    .prop_map(|(f, e, r)| match f {
                        "quantile_over_time(0.5," => format!("{f} {e}{r})"),
                        "predict_linear(" => format!("{f}{e}{r}, 60)"),
                        "holt_winters(" => format!("{f}{e}{r}, 0.5, 0.5)"),
                        _ => format!("{f}({e}{r})"),
                    }),
                (
                    proptest::sample::select(vec![
                        "abs",
                        "ceil",
                        "floor",
                        "exp",
                        "ln",
                        "log2",
                        "sqrt",
                        "sgn",
                        "sort",
                        "sort_desc",
                        "timestamp",
                        "scalar",
                        "absent",
                        "vector",
                        "round",
                        "clamp_max",
                        "histogram_quantile(0.9,",
                        "label_replace",
                        "label_join",
                    ]),
                    inner.clone()
                )
                    .prop_map(|(f, e)| match f {
                        "round" => format!("round({e}, 0.1)"),
                        "clamp_max" => format!("clamp_max({e}, 1)"),
                        "histogram_quantile(0.9," => format!("{f} {e})"),
                        "label_replace" => format!(r#"label_replace({e}, "x", "$1", "i", "(.*)")"#),
                        "label_join" => format!(r#"label_join({e}, "x", ",", "i", "__name__")"#),
                        _ => format!("{f}({e})"),
                    }),
                (
                    proptest::sample::select(vec![
                        "sum",
                        "avg",
                        "count",
                        "min",
                        "max",
                        "stddev",
                        "group",
                        "topk(2,",
                        "bottomk(1,",
                        "quantile(0.5,",
                        "count_values(\"v\","
                    ]),
                    inner.clone()
                )
                    .prop_map(|(op, e)| match op.strip_suffix(',') {
                        Some(_) => format!("{op} {e}) by (i)"),
                        None => format!("{op} by (i) ({e})"),
                    }),
                (
                    inner.clone(),
                    proptest::sample::select(vec![
                        " + ",
                        " - ",
                        " * ",
                        " / ",
                        " % ",
                        " ^ ",
                        " atan2 ",
                        " > ",
                        " == bool ",
                        " != ",
                        " and ",
                        " or ",
                        " unless ",
                        " / on(i) group_left ",
                        " + ignoring(i) "
                    ]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a}){op}({b})")),
                inner.clone().prop_map(|e| format!("-({e})")),
                inner.prop_map(|e| format!("({e})[10m:1m]")),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Whatever parses, evaluated at an instant and over a range,
        /// answers or says why not: no panic.
        #[test]
        fn any_parsed_query_evaluates_or_says_why(text in fuzz_promql()) {
            let Ok(expr) = parse(&text) else { return Ok(()) };
            let source = source();
            let _ = query_instant(&source, &expr, 600_000, EvalLimits::default());
            let _ = query_range(&source, &expr, 0, 1_500_000, 60_000, EvalLimits::default());
        }
    }

    #[test]
    fn a_query_at_the_depth_limit_evaluates_on_a_worker_stack() {
        use crate::nesting::{MAX_BRACKETS, MAX_DEPTH};
        // Brackets MAX_BRACKETS deep (the parentheses and `sum(`), a tree
        // MAX_DEPTH deep (63 parentheses, the chain's 191 `+`, `sum`, the
        // selector), evaluated on tokio's 2 MiB.
        let terms = MAX_DEPTH - MAX_BRACKETS;
        let parens = MAX_BRACKETS - 1;
        let query = format!(
            "{}{}{}",
            "(".repeat(parens),
            vec!["sum(gauge)"; terms].join(" + "),
            ")".repeat(parens)
        );
        let value = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let expr = parse(&query).unwrap();
                let deeper = format!("1 + {query}");
                assert!(parse(&deeper).unwrap_err().to_string().contains("more than 256 operators"));
                query_instant(&source(), &expr, 15_000, EvalLimits::default()).unwrap()
            })
            .unwrap()
            .join()
            .unwrap();
        // sum(gauge) at 15 s: 1 + 2 + … + 10.
        assert!(
            matches!(&value, PromResult::Vector(v) if v.len() == 1 && v[0].2 == 55.0 * terms as f64),
            "{value:?}"
        );
    }

    #[test]
    fn a_subquery_with_too_many_steps_fails_before_allocating() {
        let source = source();
        let started = std::time::Instant::now();
        let err = instant(&source, "max_over_time(gauge[30d:1ms])", 1_000_000, EvalLimits::default()).unwrap_err();
        assert!(matches!(err, QueryError::Limit(_)), "{err}");
        assert!(err.to_string().contains("2592000000 steps"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Times at the edge of the range do not overflow.
        let far = instant(&source, "max_over_time(gauge[5m:1m])", MAX_TIME_MS, EvalLimits::default()).unwrap();
        assert!(matches!(far, PromResult::Vector(v) if v.is_empty()));
    }

    #[test]
    fn sample_budget_stops_reading() {
        let source = source();
        let limits = EvalLimits {
            max_samples: 500,
            ..EvalLimits::default()
        };
        // 10 series x 100 samples in the window.
        let err = instant(&source, "count_over_time(gauge[1h])", 1_500_000, limits).unwrap_err();
        assert!(matches!(err, QueryError::Limit(_)), "{err}");
        let err = instant(&source, "gauge", 1_500_000, EvalLimits { max_samples: 5, ..limits }).unwrap_err();
        assert!(matches!(err, QueryError::Limit(_)), "{err}");
        assert!(instant(&source, "count_over_time(gauge{i=\"1\"}[1h])", 1_500_000, limits).is_ok());
    }

    #[test]
    fn count_values_output_is_bounded() {
        let source = source();
        let expr = promql_parser::parser::parse(r#"count_values("v", gauge)"#).unwrap();
        let limits = EvalLimits {
            max_points: 1_000,
            ..EvalLimits::default()
        };
        // Up to 10 distinct values per step over 101 steps.
        let err = query_range(&source, &expr, 0, 1_500_000, 15_000, limits).unwrap_err();
        assert!(matches!(err, QueryError::Limit(_)), "{err}");
    }
}

#[cfg(test)]
mod unique_tests {
    use super::*;

    fn series(labels: &[(&str, &str)], values: &[Option<f64>]) -> StepSeries {
        StepSeries {
            labels: LabelSet::from_pairs(labels.iter().copied()),
            values: values.to_vec(),
        }
    }

    #[test]
    fn label_sets_may_repeat_only_at_disjoint_steps() {
        let a = [("job", "a")];
        let disjoint = vec![
            series(&a, &[Some(1.0), None, None]),
            series(&[("job", "b")], &[Some(1.0), Some(2.0), Some(3.0)]),
            series(&a, &[None, Some(2.0), None]),
        ];
        assert!(check_unique(&disjoint).is_ok());
        let merged = merge_same_labels(disjoint).unwrap();
        assert_eq!(merged.len(), 2);
        let clash = vec![
            series(&a, &[Some(1.0), None]),
            series(&[("job", "b")], &[Some(1.0), None]),
            series(&a, &[None, None]),
            series(&a, &[Some(3.0), None]),
        ];
        assert!(matches!(check_unique(&clash), Err(QueryError::Execution(m)) if m.contains("same labelset")));
    }
}
