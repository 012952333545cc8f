//! PromQL functions, with Prometheus' semantics: the extrapolating `rate`,
//! `increase` and `delta`, `irate`/`idelta`, `deriv`/`predict_linear` (least
//! squares), `resets`, `changes`, the `*_over_time` family,
//! `histogram_quantile` over classic `_bucket` series, math, clamping,
//! label, time and sort functions.

use chrono::{Datelike, TimeZone, Timelike};
use promql_parser::parser::{Call, Expr};
use regex::Regex;
use weft_model::LabelSet;

use super::engine::{drop_name, merge_same_labels, Evaluator, MatrixValue, StepSeries, Value};
use crate::QueryError;

/// Prometheus' quantile over sorted values (linear interpolation).
pub fn quantile(q: f64, sorted: &[f64]) -> f64 {
    if sorted.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let n = sorted.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (lower + 1).min(sorted.len() - 1);
    let weight = rank - rank.floor();
    sorted[lower] * (1.0 - weight) + sorted[upper] * weight
}

fn arg(call: &Call, i: usize) -> Result<&Expr, QueryError> {
    call.args
        .args
        .get(i)
        .map(|b| b.as_ref())
        .ok_or_else(|| QueryError::BadRequest(format!("{} is missing argument {}", call.func.name, i + 1)))
}

fn vector_arg(ev: &Evaluator<'_>, call: &Call, i: usize, steps: &[i64]) -> Result<Vec<StepSeries>, QueryError> {
    match ev.eval(arg(call, i)?, steps)? {
        Value::Vector(series) => Ok(series),
        _ => Err(QueryError::BadRequest(format!(
            "{} expects an instant vector as argument {}",
            call.func.name,
            i + 1
        ))),
    }
}

fn matrix_arg(ev: &Evaluator<'_>, call: &Call, i: usize, steps: &[i64]) -> Result<MatrixValue, QueryError> {
    match ev.eval(arg(call, i)?, steps)? {
        Value::Matrix(matrix) => Ok(matrix),
        _ => Err(QueryError::BadRequest(format!(
            "{} expects a range vector as argument {}",
            call.func.name,
            i + 1
        ))),
    }
}

fn scalar_arg(ev: &Evaluator<'_>, call: &Call, i: usize, steps: &[i64]) -> Result<Vec<f64>, QueryError> {
    match ev.eval(arg(call, i)?, steps)? {
        Value::Scalar(values) => Ok(values),
        _ => Err(QueryError::BadRequest(format!(
            "{} expects a scalar as argument {}",
            call.func.name,
            i + 1
        ))),
    }
}

fn string_arg(ev: &Evaluator<'_>, call: &Call, i: usize, steps: &[i64]) -> Result<String, QueryError> {
    match ev.eval(arg(call, i)?, steps)? {
        Value::String(s) => Ok(s),
        _ => Err(QueryError::BadRequest(format!(
            "{} expects a string as argument {}",
            call.func.name,
            i + 1
        ))),
    }
}

/// Applies `f` to every value, dropping the metric name.
fn map_values(series: Vec<StepSeries>, f: impl Fn(f64) -> f64) -> Vec<StepSeries> {
    series
        .into_iter()
        .map(|s| StepSeries {
            labels: drop_name(&s.labels),
            values: s.values.into_iter().map(|v| v.map(&f)).collect(),
        })
        .collect()
}

/// Applies `f` to each window of a range vector.
fn over_windows(matrix: &MatrixValue, keep_name: bool, f: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64>) -> Vec<StepSeries> {
    (0..matrix.series.len())
        .map(|i| {
            let labels = if keep_name {
                matrix.series[i].labels.clone()
            } else {
                drop_name(&matrix.series[i].labels)
            };
            let values = (0..matrix.eval_times.len())
                .map(|step| {
                    let window = matrix.window(i, step);
                    if window.is_empty() {
                        None
                    } else {
                        f(window, matrix.eval_times[step], matrix.range)
                    }
                })
                .collect();
            StepSeries { labels, values }
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect()
}

/// Prometheus' `extrapolatedRate` for `rate`, `increase` and `delta`.
fn extrapolated_rate(window: &[(i64, f64)], eval_time: i64, range: i64, is_counter: bool, is_rate: bool) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let range_start = eval_time - range;
    let range_end = eval_time;
    let (first_t, first_v) = window[0];
    let (last_t, last_v) = window[window.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut previous = first_v;
        for &(_, v) in &window[1..] {
            if v < previous {
                result += previous;
            }
            previous = v;
        }
    }
    let mut duration_to_start = (first_t - range_start) as f64 / 1000.0;
    let mut duration_to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (window.len() - 1) as f64;
    let threshold = average * 1.1;
    let mut extrapolate_to = sampled;
    if duration_to_start >= threshold {
        duration_to_start = average / 2.0;
    }
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let duration_to_zero = sampled * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    extrapolate_to += duration_to_start;
    if duration_to_end >= threshold {
        duration_to_end = average / 2.0;
    }
    extrapolate_to += duration_to_end;
    let mut factor = extrapolate_to / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(window: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let (prev_t, prev_v) = window[window.len() - 2];
    let (last_t, last_v) = window[window.len() - 1];
    let mut result = last_v - prev_v;
    if is_rate && last_v < prev_v {
        result = last_v;
    }
    if is_rate {
        let interval = (last_t - prev_t) as f64 / 1000.0;
        if interval == 0.0 {
            return None;
        }
        result /= interval;
    }
    Some(result)
}

/// Least-squares slope and intercept at `intercept_time` (ms).
fn linear_regression(window: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let n = window.len() as f64;
    let (mut sum_x, mut sum_y, mut sum_xy, mut sum_x2) = (0.0, 0.0, 0.0, 0.0);
    let constant_y = window.iter().all(|s| s.1 == window[0].1);
    for &(t, v) in window {
        let x = (t - intercept_time) as f64 / 1000.0;
        sum_x += x;
        sum_y += v;
        sum_xy += x * v;
        sum_x2 += x * x;
    }
    if constant_y {
        return (0.0, window[0].1);
    }
    let cov = sum_xy - sum_x * sum_y / n;
    let var = sum_x2 - sum_x * sum_x / n;
    let slope = cov / var;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// `histogram_quantile` over classic buckets: (upper bound, cumulative count).
pub fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| !b.0.is_infinite()) {
        return f64::NAN;
    }
    // Coalesce equal bounds.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(bound, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    // Make counts monotonic.
    let mut max = f64::NEG_INFINITY;
    for bucket in merged.iter_mut() {
        if bucket.1 > max {
            max = bucket.1;
        } else {
            bucket.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged.partition_point(|bucket| bucket.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut bucket_start, bucket_end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        bucket_start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

fn date_function(
    ev: &Evaluator<'_>,
    call: &Call,
    steps: &[i64],
    f: impl Fn(chrono::DateTime<chrono::Utc>) -> f64,
) -> Result<Value, QueryError> {
    let series = if call.args.args.is_empty() {
        vec![StepSeries {
            labels: LabelSet::new(),
            values: steps.iter().map(|t| Some(*t as f64 / 1000.0)).collect(),
        }]
    } else {
        vector_arg(ev, call, 0, steps)?
    };
    let apply = |secs: f64| -> f64 {
        if !secs.is_finite() {
            return f64::NAN;
        }
        match chrono::Utc.timestamp_opt(secs.floor() as i64, 0) {
            chrono::LocalResult::Single(dt) => f(dt),
            _ => f64::NAN,
        }
    };
    Ok(Value::Vector(map_values(series, apply)))
}

fn days_in_month(dt: chrono::DateTime<chrono::Utc>) -> f64 {
    let (y, m) = (dt.year(), dt.month());
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let first = chrono::NaiveDate::from_ymd_opt(y, m, 1).expect("valid date");
    let next = chrono::NaiveDate::from_ymd_opt(ny, nm, 1).expect("valid date");
    (next - first).num_days() as f64
}

/// Evaluates a function call.
pub fn call(ev: &Evaluator<'_>, call: &Call, steps: &[i64]) -> Result<Value, QueryError> {
    let name = call.func.name;
    let n = steps.len();
    let simple = |f: fn(f64) -> f64| -> Result<Value, QueryError> { Ok(Value::Vector(map_values(vector_arg(ev, call, 0, steps)?, f))) };
    let value = match name {
        "abs" => simple(f64::abs)?,
        "ceil" => simple(f64::ceil)?,
        "floor" => simple(f64::floor)?,
        "exp" => simple(f64::exp)?,
        "sqrt" => simple(f64::sqrt)?,
        "ln" => simple(f64::ln)?,
        "log2" => simple(f64::log2)?,
        "log10" => simple(f64::log10)?,
        "sin" => simple(f64::sin)?,
        "cos" => simple(f64::cos)?,
        "tan" => simple(f64::tan)?,
        "asin" => simple(f64::asin)?,
        "acos" => simple(f64::acos)?,
        "atan" => simple(f64::atan)?,
        "sinh" => simple(f64::sinh)?,
        "cosh" => simple(f64::cosh)?,
        "tanh" => simple(f64::tanh)?,
        "asinh" => simple(f64::asinh)?,
        "acosh" => simple(f64::acosh)?,
        "atanh" => simple(f64::atanh)?,
        "deg" => simple(f64::to_degrees)?,
        "rad" => simple(f64::to_radians)?,
        "sgn" => simple(|v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        })?,
        "pi" => Value::Scalar(vec![std::f64::consts::PI; n]),
        "round" => {
            let series = vector_arg(ev, call, 0, steps)?;
            let to = if call.args.args.len() > 1 {
                scalar_arg(ev, call, 1, steps)?
            } else {
                vec![1.0; n]
            };
            Value::Vector(
                series
                    .into_iter()
                    .map(|s| StepSeries {
                        labels: drop_name(&s.labels),
                        values: s
                            .values
                            .into_iter()
                            .zip(&to)
                            .map(|(v, t)| {
                                // As Prometheus: multiply by the inverse, so round(0.3, 0.1) is 0.3.
                                let inverse = 1.0 / t;
                                v.map(|v| (v * inverse + 0.5).floor() / inverse)
                            })
                            .collect(),
                    })
                    .collect(),
            )
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let series = vector_arg(ev, call, 0, steps)?;
            let (lo, hi) = match name {
                "clamp" => (scalar_arg(ev, call, 1, steps)?, scalar_arg(ev, call, 2, steps)?),
                "clamp_min" => (scalar_arg(ev, call, 1, steps)?, vec![f64::INFINITY; n]),
                _ => (vec![f64::NEG_INFINITY; n], scalar_arg(ev, call, 1, steps)?),
            };
            Value::Vector(
                series
                    .into_iter()
                    .map(|s| StepSeries {
                        labels: drop_name(&s.labels),
                        values: s
                            .values
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| {
                                let v = v?;
                                if name == "clamp" && hi[i] < lo[i] {
                                    return None;
                                }
                                Some(if v.is_nan() || lo[i].is_nan() || hi[i].is_nan() {
                                    f64::NAN
                                } else {
                                    v.max(lo[i]).min(hi[i])
                                })
                            })
                            .collect(),
                    })
                    .filter(|s| s.values.iter().any(Option::is_some))
                    .collect(),
            )
        }
        "time" => Value::Scalar(steps.iter().map(|t| *t as f64 / 1000.0).collect()),
        "vector" => Value::Vector(vec![StepSeries {
            labels: LabelSet::new(),
            values: scalar_arg(ev, call, 0, steps)?.into_iter().map(Some).collect(),
        }]),
        "scalar" => {
            let series = vector_arg(ev, call, 0, steps)?;
            Value::Scalar(
                (0..n)
                    .map(|i| {
                        let present: Vec<f64> = series.iter().filter_map(|s| s.values[i]).collect();
                        if present.len() == 1 {
                            present[0]
                        } else {
                            f64::NAN
                        }
                    })
                    .collect(),
            )
        }
        "timestamp" => match arg(call, 0)? {
            Expr::VectorSelector(vs) => Value::Vector(ev.eval_selector_timestamps(vs, steps)?),
            _ => {
                let series = vector_arg(ev, call, 0, steps)?;
                Value::Vector(
                    series
                        .into_iter()
                        .map(|s| StepSeries {
                            labels: drop_name(&s.labels),
                            values: s
                                .values
                                .into_iter()
                                .zip(steps)
                                .map(|(v, t)| v.map(|_| *t as f64 / 1000.0))
                                .collect(),
                        })
                        .collect(),
                )
            }
        },
        "minute" => date_function(ev, call, steps, |d| d.minute() as f64)?,
        "hour" => date_function(ev, call, steps, |d| d.hour() as f64)?,
        "day_of_week" => date_function(ev, call, steps, |d| d.weekday().num_days_from_sunday() as f64)?,
        "day_of_month" => date_function(ev, call, steps, |d| d.day() as f64)?,
        "day_of_year" => date_function(ev, call, steps, |d| d.ordinal() as f64)?,
        "days_in_month" => date_function(ev, call, steps, days_in_month)?,
        "month" => date_function(ev, call, steps, |d| d.month() as f64)?,
        "year" => date_function(ev, call, steps, |d| d.year() as f64)?,
        "rate" | "increase" | "delta" => {
            let matrix = matrix_arg(ev, call, 0, steps)?;
            let (is_counter, is_rate) = match name {
                "rate" => (true, true),
                "increase" => (true, false),
                _ => (false, false),
            };
            Value::Vector(over_windows(&matrix, false, |w, t, r| {
                extrapolated_rate(w, t, r, is_counter, is_rate)
            }))
        }
        "irate" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            instant_value(w, true)
        })),
        "idelta" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            instant_value(w, false)
        })),
        "deriv" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            (w.len() >= 2).then(|| linear_regression(w, w[0].0).0)
        })),
        "predict_linear" => {
            let matrix = matrix_arg(ev, call, 0, steps)?;
            let by = scalar_arg(ev, call, 1, steps)?;
            let mut series = Vec::new();
            for i in 0..matrix.series.len() {
                let values: Vec<Option<f64>> = (0..n)
                    .map(|step| {
                        let w = matrix.window(i, step);
                        (w.len() >= 2).then(|| {
                            // Predicted from the evaluation time, not the offset one.
                            let (slope, intercept) = linear_regression(w, steps[step]);
                            slope * by[step] + intercept
                        })
                    })
                    .collect();
                if values.iter().any(Option::is_some) {
                    series.push(StepSeries {
                        labels: drop_name(&matrix.series[i].labels),
                        values,
                    });
                }
            }
            Value::Vector(series)
        }
        "resets" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64)
        })),
        "changes" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(
                w.windows(2)
                    .filter(|p| !(p[1].1 == p[0].1 || (p[1].1.is_nan() && p[0].1.is_nan())))
                    .count() as f64,
            )
        })),
        "avg_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            let values: Vec<f64> = w.iter().map(|s| s.1).collect();
            Some(super::engine::kahan_sum(&values) / values.len() as f64)
        })),
        "sum_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(super::engine::kahan_sum(&w.iter().map(|s| s.1).collect::<Vec<_>>()))
        })),
        "count_over_time" => Value::Vector(over_windows(
            &matrix_arg(ev, call, 0, steps)?,
            false,
            |w, _, _| Some(w.len() as f64),
        )),
        "min_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(w.iter().map(|s| s.1).fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }))
        })),
        "max_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(w.iter().map(|s| s.1).fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }))
        })),
        "last_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, true, |w, _, _| {
            w.last().map(|s| s.1)
        })),
        "first_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, true, |w, _, _| {
            w.first().map(|s| s.1)
        })),
        "present_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |_, _, _| Some(1.0))),
        "stddev_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(super::engine::variance(&w.iter().map(|s| s.1).collect::<Vec<_>>()).sqrt())
        })),
        "stdvar_over_time" => Value::Vector(over_windows(&matrix_arg(ev, call, 0, steps)?, false, |w, _, _| {
            Some(super::engine::variance(&w.iter().map(|s| s.1).collect::<Vec<_>>()))
        })),
        "quantile_over_time" => {
            let q = scalar_arg(ev, call, 0, steps)?;
            let matrix = matrix_arg(ev, call, 1, steps)?;
            let mut series = Vec::new();
            for i in 0..matrix.series.len() {
                let values: Vec<Option<f64>> = (0..n)
                    .map(|step| {
                        let w = matrix.window(i, step);
                        (!w.is_empty()).then(|| {
                            let mut sorted: Vec<f64> = w.iter().map(|s| s.1).collect();
                            sort_nan_first(&mut sorted);
                            quantile(q[step], &sorted)
                        })
                    })
                    .collect();
                if values.iter().any(Option::is_some) {
                    series.push(StepSeries {
                        labels: drop_name(&matrix.series[i].labels),
                        values,
                    });
                }
            }
            Value::Vector(series)
        }
        "absent" | "absent_over_time" => {
            let present: Vec<bool> = if name == "absent" {
                let series = vector_arg(ev, call, 0, steps)?;
                (0..n).map(|i| series.iter().any(|s| s.values[i].is_some())).collect()
            } else {
                let matrix = matrix_arg(ev, call, 0, steps)?;
                (0..n)
                    .map(|i| (0..matrix.series.len()).any(|s| !matrix.window(s, i).is_empty()))
                    .collect()
            };
            let labels = absent_labels(arg(call, 0)?);
            Value::Vector(vec![StepSeries {
                labels,
                values: present.into_iter().map(|p| (!p).then_some(1.0)).collect(),
            }])
        }
        "histogram_quantile" => {
            let q = scalar_arg(ev, call, 0, steps)?;
            let series = vector_arg(ev, call, 1, steps)?;
            let mut groups: std::collections::BTreeMap<LabelSet, Vec<(f64, usize)>> = Default::default();
            for (i, s) in series.iter().enumerate() {
                let Some(le) = s.labels.get("le") else { continue };
                let bound = match le.trim() {
                    "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
                    text => match text.parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                };
                let mut key = drop_name(&s.labels);
                key.remove("le");
                groups.entry(key).or_default().push((bound, i));
            }
            Value::Vector(
                groups
                    .into_iter()
                    .map(|(labels, members)| {
                        let values = (0..n)
                            .map(|step| {
                                let mut buckets: Vec<(f64, f64)> = members
                                    .iter()
                                    .filter_map(|(b, i)| series[*i].values[step].map(|v| (*b, v)))
                                    .collect();
                                (!buckets.is_empty()).then(|| bucket_quantile(q[step], &mut buckets))
                            })
                            .collect();
                        StepSeries { labels, values }
                    })
                    .filter(|s| s.values.iter().any(Option::is_some))
                    .collect(),
            )
        }
        "label_replace" => {
            let series = vector_arg(ev, call, 0, steps)?;
            let dst = string_arg(ev, call, 1, steps)?;
            let replacement = string_arg(ev, call, 2, steps)?;
            let src = string_arg(ev, call, 3, steps)?;
            let pattern = string_arg(ev, call, 4, steps)?;
            let regex = Regex::new(&format!("^(?s:{pattern})$"))
                .map_err(|e| QueryError::BadRequest(format!("invalid regular expression in label_replace(): {pattern}: {e}")))?;
            if dst != weft_model::metric::METRIC_NAME {
                weft_model::labels::validate_label_name(&dst)
                    .map_err(|_| QueryError::BadRequest(format!("invalid destination label name in label_replace(): {dst}")))?;
            }
            let replacement = go_template_to_rust(&replacement);
            let out: Vec<StepSeries> = series
                .into_iter()
                .map(|mut s| {
                    let value = s.labels.get(&src).unwrap_or("").to_string();
                    if let Some(captures) = regex.captures(&value) {
                        let mut result = String::new();
                        captures.expand(&replacement, &mut result);
                        s.labels.insert(dst.clone(), result);
                    }
                    s
                })
                .collect();
            Value::Vector(merge_same_labels(out)?)
        }
        "label_join" => {
            let series = vector_arg(ev, call, 0, steps)?;
            let dst = string_arg(ev, call, 1, steps)?;
            let separator = string_arg(ev, call, 2, steps)?;
            let mut sources = Vec::new();
            for i in 3..call.args.args.len() {
                sources.push(string_arg(ev, call, i, steps)?);
            }
            weft_model::labels::validate_label_name(&dst)
                .map_err(|_| QueryError::BadRequest(format!("invalid destination label name in label_join(): {dst}")))?;
            let out: Vec<StepSeries> = series
                .into_iter()
                .map(|mut s| {
                    let joined: Vec<&str> = sources.iter().map(|l| s.labels.get(l).unwrap_or("")).collect();
                    let joined = joined.join(&separator);
                    s.labels.insert(dst.clone(), joined);
                    s
                })
                .collect();
            Value::Vector(merge_same_labels(out)?)
        }
        "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" => Value::Vector(vector_arg(ev, call, 0, steps)?),
        other => return Err(QueryError::Unsupported(format!("function {other}"))),
    };
    Ok(value)
}

/// Labels `absent(…)` reports: the equality matchers of a plain selector.
fn absent_labels(expr: &Expr) -> LabelSet {
    let vs = match expr {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return LabelSet::new(),
    };
    let mut labels = LabelSet::new();
    let mut seen = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == weft_model::metric::METRIC_NAME {
            continue;
        }
        if !seen.insert(m.name.clone()) {
            labels.remove(&m.name);
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) {
            labels.insert(m.name.clone(), m.value.clone());
        }
    }
    labels
}

/// Go's regexp replacement syntax (`$1`, `${1}`, `$name`) mostly matches
/// Rust's; `$1x` in Go means group "1x", in Rust too, so only `$$` differs
/// in neither. Kept as a function for the one place that translates.
fn go_template_to_rust(text: &str) -> String {
    text.to_string()
}

/// Sorts as Go's `sort.Float64s` (which Prometheus uses): NaN first, of
/// either sign.
pub fn sort_nan_first(values: &mut [f64]) {
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.partial_cmp(b).expect("not NaN"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantiles_interpolate_like_prometheus() {
        let mut buckets = vec![(0.1, 10.0), (0.5, 20.0), (1.0, 30.0), (f64::INFINITY, 40.0)];
        assert!((bucket_quantile(0.5, &mut buckets) - 0.5).abs() < 1e-9);
        let mut buckets = vec![(0.1, 10.0), (f64::INFINITY, 40.0)];
        assert_eq!(
            bucket_quantile(0.99, &mut buckets),
            0.1,
            "the +Inf bucket returns the highest finite bound"
        );
        let mut no_inf = vec![(0.1, 10.0)];
        assert!(bucket_quantile(0.5, &mut no_inf).is_nan());
    }

    #[test]
    fn rate_extrapolates_to_the_window() {
        // Samples every 15s, counter +15 per sample, window 60s ending at 60s.
        let window = [(15_000, 15.0), (30_000, 30.0), (45_000, 45.0), (60_000, 60.0)];
        let rate = extrapolated_rate(&window, 60_000, 60_000, true, true).unwrap();
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
        let increase = extrapolated_rate(&window, 60_000, 60_000, true, false).unwrap();
        assert!((increase - 60.0).abs() < 1e-9, "{increase}");
    }
}
