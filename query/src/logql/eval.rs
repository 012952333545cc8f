//! Evaluates LogQL over the splits.
//!
//! Log queries walk every matching split newest-first (or oldest-first)
//! through a per-split cursor over tantivy's top rows by time, merge the
//! cursors in time order, read the chosen rows from Parquet, and run the
//! pipeline until `limit` lines passed.
//!
//! Metric queries evaluate on a grid of steps. Line-counting range
//! aggregations add each row to the steps whose window holds it through a
//! difference array (one pass, no per-window rescans); with no pipeline
//! they read only tantivy's fast fields, never Parquet. `unwrap`
//! aggregations keep the samples of each series and slide over them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use weft_model::LabelSet;

use super::ast::*;
use super::pipeline::{self, LineState, ERROR_DETAILS_LABEL, ERROR_LABEL};
use crate::storage::{OpenSplit, SplitStore, StoredRow};
use crate::QueryError;

/// Limits that keep one query from exhausting the process.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Most series a metric query may produce or hold.
    pub max_series: usize,
    /// Most series × steps a metric query may hold.
    pub max_points: usize,
    /// Largest `limit` for log queries.
    pub max_entries: usize,
    /// Most steps of a range query.
    pub max_steps: usize,
    /// Most rows an `unwrap` aggregation may hold.
    pub max_samples: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_series: 10_000,
            max_points: 20_000_000,
            max_entries: 10_000,
            max_steps: 11_000,
            max_samples: 50_000_000,
        }
    }
}

/// Lines of one stream in a log query result.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamResult {
    pub labels: LabelSet,
    /// (ts ns, line), in the query's direction.
    pub entries: Vec<(i64, String)>,
}

/// One series of a matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesResult {
    pub labels: LabelSet,
    /// (ts ns, value), oldest first.
    pub points: Vec<(i64, f64)>,
}

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleResult {
    pub labels: LabelSet,
    pub ts: i64,
    pub value: f64,
}

/// What a query returns.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    Streams(Vec<StreamResult>),
    Matrix(Vec<SeriesResult>),
    Vector(Vec<SampleResult>),
    Scalar(i64, f64),
}

/// Evaluates queries against a split store.
pub struct Engine {
    store: Arc<SplitStore>,
    pub limits: QueryLimits,
}

/// A series on the step grid.
#[derive(Clone, Debug)]
struct Series {
    labels: LabelSet,
    values: Vec<Option<f64>>,
}

#[derive(Clone, Debug)]
enum Value {
    Scalar(Vec<f64>),
    Vector(Vec<Series>),
}

/// The evaluation steps.
struct Grid {
    steps: Vec<i64>,
    first: i64,
    step: i64,
}

impl Grid {
    /// Indices `i` with `steps[i]` in `[lo, hi]`.
    fn span(&self, lo: i64, hi: i64) -> Option<(usize, usize)> {
        if hi < lo || self.steps.is_empty() {
            return None;
        }
        let n = self.steps.len() as i64;
        let first = if lo <= self.first {
            0
        } else {
            // In i128: `lo` and `hi` come from ranges and offsets too.
            ((lo as i128 - self.first as i128 + self.step as i128 - 1) / self.step as i128).min(n as i128) as i64
        };
        let last = if hi < self.first {
            -1
        } else {
            ((hi as i128 - self.first as i128) / self.step as i128).min(n as i128 - 1) as i64
        };
        (first <= last && first < n).then_some((first as usize, last as usize))
    }
}

#[cfg(test)]
mod grid_tests {
    use super::Grid;

    #[test]
    fn a_span_far_outside_the_grid_does_not_overflow() {
        let first = -4_000_000_000_000_000_000;
        let grid = Grid {
            steps: vec![first, first + 10, first + 20],
            first,
            step: 10,
        };
        assert_eq!(grid.span(i64::MIN, i64::MAX), Some((0, 2)));
        assert_eq!(grid.span(i64::MAX - 1, i64::MAX), None);
        assert_eq!(grid.span(first + 5, first + 15), Some((1, 1)));
        assert_eq!(grid.span(i64::MIN, first - 1), None);
    }
}

/// Line filters that come before anything rewriting the line: their tokens
/// can narrow the rows tantivy returns.
fn prefilters(pipeline: &[Stage]) -> Vec<&LineFilter> {
    let mut out = Vec::new();
    for stage in pipeline {
        match stage {
            Stage::LineFilter(f) => out.push(f),
            Stage::LineFormat(_) | Stage::Unpack | Stage::Decolorize => break,
            _ => {}
        }
    }
    out
}

/// True when `line` passes every filter of `filters` (the leading line
/// filters of a pipeline: they see the line as stored).
fn passes(filters: &[&LineFilter], line: &str) -> bool {
    filters.iter().all(|f| f.matches(line))
}

fn stage_needs_parquet(pipeline: &[Stage]) -> bool {
    !pipeline.is_empty()
}

/// Per-split cursor over matching rows in time order.
struct Cursor {
    split: Arc<OpenSplit>,
    streams: Vec<usize>,
    bound: Option<i64>,
    seen_at_bound: HashSet<u32>,
    exhausted: bool,
    buffer: VecDeque<(i64, u32)>,
}

impl Cursor {
    fn refill(&mut self, k: usize, start: i64, end: i64, backward: bool, filters: &[&LineFilter]) -> Result<(), QueryError> {
        let (lo, hi) = match (self.bound, backward) {
            (Some(b), true) => (start, b.saturating_add(1)),
            (Some(b), false) => (b, end),
            (None, _) => (start, end),
        };
        let query = self.split.query(&self.streams, lo, hi, filters);
        let want = k + self.seen_at_bound.len();
        let hits = self.split.top_rows(query.as_ref(), want, backward)?;
        if hits.len() < want {
            self.exhausted = true;
        }
        let Some(&(last_ts, _)) = hits.last() else {
            self.exhausted = true;
            return Ok(());
        };
        let mut next_seen: HashSet<u32> = if Some(last_ts) == self.bound {
            self.seen_at_bound.clone()
        } else {
            HashSet::new()
        };
        for (ts, row) in hits {
            if Some(ts) == self.bound && self.seen_at_bound.contains(&row) {
                continue;
            }
            if ts == last_ts {
                next_seen.insert(row);
            }
            self.buffer.push_back((ts, row));
        }
        self.bound = Some(last_ts);
        self.seen_at_bound = next_seen;
        Ok(())
    }
}

/// Rows are read from Parquet in groups of this many.
const CHUNK_ROWS: usize = 2048;

impl Engine {
    pub fn new(store: Arc<SplitStore>, limits: QueryLimits) -> Self {
        Self { store, limits }
    }

    pub fn store(&self) -> &Arc<SplitStore> {
        &self.store
    }

    /// Runs a log query over `[start, end)`.
    pub fn logs(
        &self,
        tenant: &str,
        log: &LogExpr,
        start: i64,
        end: i64,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<StreamResult>, QueryError> {
        if limit > self.limits.max_entries {
            return Err(QueryError::BadRequest(format!(
                "max entries limit per query exceeded, limit > max_entries_limit ({limit} > {})",
                self.limits.max_entries
            )));
        }
        let filters = prefilters(&log.pipeline);
        let mut cursors = Vec::new();
        for split in self.store.splits(tenant, start, end)? {
            let streams = split.matching_streams(&log.matchers);
            if !streams.is_empty() {
                cursors.push(Cursor {
                    split,
                    streams,
                    bound: None,
                    seen_at_bound: HashSet::new(),
                    exhausted: false,
                    buffer: VecDeque::new(),
                });
            }
        }
        let k = (limit * 2).clamp(64, 4096);
        let mut streams: HashMap<LabelSet, Vec<(i64, String)>> = HashMap::new();
        let mut emitted = 0usize;
        while emitted < limit {
            for cursor in cursors.iter_mut().filter(|c| c.buffer.is_empty() && !c.exhausted) {
                cursor.refill(k, start, end, backward, &filters)?;
            }
            // Take candidates in global time order while every cursor that
            // may still produce has a head to compare against.
            let mut chunk: Vec<(usize, u32)> = Vec::new();
            while chunk.len() < CHUNK_ROWS {
                let best = cursors
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.buffer.front().map(|(ts, _)| (i, *ts)))
                    .reduce(|a, b| {
                        if (backward && b.1 > a.1) || (!backward && b.1 < a.1) {
                            b
                        } else {
                            a
                        }
                    });
                let Some((i, _)) = best else { break };
                let (_, row) = cursors[i].buffer.pop_front().expect("front exists");
                chunk.push((i, row));
                if cursors[i].buffer.is_empty() && !cursors[i].exhausted {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            let mut by_split: HashMap<usize, Vec<u32>> = HashMap::new();
            for (i, row) in &chunk {
                by_split.entry(*i).or_default().push(*row);
            }
            let mut fetched: HashMap<(usize, u32), StoredRow> = HashMap::new();
            for (i, mut rows) in by_split {
                rows.sort_unstable();
                rows.dedup();
                // Rows the pipeline's leading line filters drop are not
                // read past their lines.
                for (row, stored) in cursors[i].split.stored_if(&rows, |line| passes(&filters, line))? {
                    fetched.insert((i, row), stored);
                }
            }
            for key in chunk {
                let Some(row) = fetched.remove(&key) else {
                    continue;
                };
                let mut labels = (*row.stream).clone();
                for (name, value) in row.metadata.iter() {
                    labels.insert(name, value);
                }
                let mut state = LineState {
                    ts: row.ts,
                    line: row.line,
                    labels,
                };
                if !pipeline::run(&log.pipeline, &row.stream, &mut state) {
                    continue;
                }
                streams.entry(state.labels).or_default().push((state.ts, state.line));
                emitted += 1;
                if emitted >= limit {
                    break;
                }
            }
        }
        let mut out: Vec<StreamResult> = streams
            .into_iter()
            .map(|(labels, entries)| StreamResult { labels, entries })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Evaluates a metric query at every step from `start` to `end`.
    pub fn range(&self, tenant: &str, expr: &Expr, start: i64, end: i64, step: i64) -> Result<QueryResult, QueryError> {
        if step <= 0 {
            return Err(QueryError::BadRequest(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end < start {
            return Err(QueryError::BadRequest("end timestamp must not be before start time".into()));
        }
        let count = ((end - start) / step) as usize + 1;
        if count > self.limits.max_steps {
            return Err(QueryError::BadRequest(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                self.limits.max_steps
            )));
        }
        let grid = Grid {
            steps: (0..count as i64).map(|i| start + i * step).collect(),
            first: start,
            step,
        };
        let value = self.eval(tenant, expr, &grid)?;
        Ok(match value {
            Value::Scalar(values) => QueryResult::Matrix(vec![SeriesResult {
                labels: LabelSet::new(),
                points: grid.steps.iter().copied().zip(values).collect(),
            }]),
            Value::Vector(series) => {
                let mut out: Vec<SeriesResult> = series
                    .into_iter()
                    .map(|s| SeriesResult {
                        labels: s.labels,
                        points: grid.steps.iter().zip(s.values).filter_map(|(t, v)| v.map(|v| (*t, v))).collect(),
                    })
                    .filter(|s| !s.points.is_empty())
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                QueryResult::Matrix(out)
            }
        })
    }

    /// Evaluates a metric query at one instant.
    pub fn instant(&self, tenant: &str, expr: &Expr, time: i64) -> Result<QueryResult, QueryError> {
        let grid = Grid {
            steps: vec![time],
            first: time,
            step: 1,
        };
        Ok(match self.eval(tenant, expr, &grid)? {
            Value::Scalar(values) => QueryResult::Scalar(time, values[0]),
            Value::Vector(series) => {
                let mut out: Vec<SampleResult> = series
                    .into_iter()
                    .filter_map(|s| {
                        s.values[0].map(|value| SampleResult {
                            labels: s.labels,
                            ts: time,
                            value,
                        })
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                QueryResult::Vector(out)
            }
        })
    }

    fn check_series(&self, series: usize, steps: usize) -> Result<(), QueryError> {
        if series > self.limits.max_series {
            return Err(QueryError::Limit(format!(
                "maximum of series ({}) reached for a single query",
                self.limits.max_series
            )));
        }
        if series.saturating_mul(steps) > self.limits.max_points {
            return Err(QueryError::Limit(format!(
                "query would hold more than {} points; narrow the range or raise the step",
                self.limits.max_points
            )));
        }
        Ok(())
    }

    fn eval(&self, tenant: &str, expr: &Expr, grid: &Grid) -> Result<Value, QueryError> {
        let n = grid.steps.len();
        match expr {
            Expr::Number(v) => Ok(Value::Scalar(vec![*v; n])),
            Expr::Vector(v) => Ok(Value::Vector(vec![Series {
                labels: LabelSet::new(),
                values: vec![Some(*v); n],
            }])),
            Expr::Negate(inner) => Ok(match self.eval(tenant, inner, grid)? {
                Value::Scalar(values) => Value::Scalar(values.into_iter().map(|v| -v).collect()),
                Value::Vector(series) => Value::Vector(
                    series
                        .into_iter()
                        .map(|s| Series {
                            labels: s.labels,
                            values: s.values.into_iter().map(|v| v.map(|v| -v)).collect(),
                        })
                        .collect(),
                ),
            }),
            Expr::Log(_) => Err(QueryError::BadRequest(
                "a log query has no metric value; wrap it in a range aggregation such as count_over_time".into(),
            )),
            Expr::RangeAgg(agg) => self.range_agg(tenant, agg, grid),
            Expr::VectorAgg(agg) => {
                let inner = self.eval(tenant, &agg.inner, grid)?;
                let Value::Vector(series) = inner else {
                    return Err(QueryError::BadRequest("aggregations need a vector, not a scalar".into()));
                };
                Ok(Value::Vector(aggregate(agg, series, n)))
            }
            Expr::Binary(binary) => {
                let lhs = self.eval(tenant, &binary.lhs, grid)?;
                let rhs = self.eval(tenant, &binary.rhs, grid)?;
                binary_op(binary, lhs, rhs)
            }
        }
    }

    fn range_agg(&self, tenant: &str, agg: &RangeAgg, grid: &Grid) -> Result<Value, QueryError> {
        let range = &agg.range;
        let n = grid.steps.len();
        // Rows in (first - offset - range, last - offset].
        let lo = grid.steps[0]
            .saturating_sub(range.offset)
            .saturating_sub(range.range)
            .saturating_add(1);
        let hi = grid.steps[n - 1].saturating_sub(range.offset).saturating_add(1);
        let splits = self.store.splits(tenant, lo, hi)?;
        let range_secs = range.range as f64 / 1e9;
        if agg.op.counts_lines() {
            // count and weight difference arrays per series
            let mut slots: HashMap<LabelSet, usize> = HashMap::new();
            let mut arrays: Vec<(Vec<i64>, Vec<f64>)> = Vec::new();
            let slot_of = |labels: LabelSet,
                           slots: &mut HashMap<LabelSet, usize>,
                           arrays: &mut Vec<(Vec<i64>, Vec<f64>)>|
             -> Result<usize, QueryError> {
                if let Some(slot) = slots.get(&labels) {
                    return Ok(*slot);
                }
                self.check_series(slots.len() + 1, n)?;
                arrays.push((vec![0; n + 1], vec![0.0; n + 1]));
                slots.insert(labels, arrays.len() - 1);
                Ok(arrays.len() - 1)
            };
            let add = |entry: &mut (Vec<i64>, Vec<f64>), ts: i64, weight: f64| {
                let Some((first, last)) = grid.span(
                    ts.saturating_add(range.offset),
                    ts.saturating_add(range.offset).saturating_add(range.range - 1),
                ) else {
                    return;
                };
                entry.0[first] += 1;
                entry.0[last + 1] -= 1;
                entry.1[first] += weight;
                entry.1[last + 1] -= weight;
            };
            for split in &splits {
                let streams = split.matching_streams(&range.log.matchers);
                if streams.is_empty() {
                    continue;
                }
                if n == 1
                    && range.log.pipeline.is_empty()
                    && !split.meta.has_fields
                    && !split.meta.groups.is_empty()
                    && split.meta.min_ts >= lo
                    && split.meta.max_ts < hi
                {
                    // The one window holds the whole split: its per-stream
                    // counts in the catalog answer without the index.
                    let mut selected = vec![false; split.streams.len()];
                    for i in &streams {
                        selected[*i] = true;
                    }
                    for group in &split.meta.groups {
                        let Some(labels) = selected
                            .get(group.stream as usize)
                            .filter(|s| **s)
                            .and_then(|_| split.streams.get(group.stream as usize))
                        else {
                            continue;
                        };
                        let mut labels = (**labels).clone();
                        labels.insert("detected_level", group.level.as_str());
                        labels.insert("ml_event", group.ml_event.as_str());
                        let slot = slot_of(labels, &mut slots, &mut arrays)?;
                        let entry = &mut arrays[slot];
                        entry.0[0] += group.rows as i64;
                        entry.0[1] -= group.rows as i64;
                        entry.1[0] += group.bytes as f64;
                        entry.1[1] -= group.bytes as f64;
                    }
                    continue;
                }
                let filters = prefilters(&range.log.pipeline);
                let query = split.query(&streams, lo, hi, &filters);
                if !stage_needs_parquet(&range.log.pipeline) && !split.meta.has_fields {
                    // Rows resolve to series by dictionary ordinals: one
                    // label set per distinct (stream, level, event) per split.
                    let mut slot_by_key: HashMap<(usize, usize, usize), usize, std::hash::BuildHasherDefault<OrdinalHasher>> =
                        HashMap::default();
                    let mut failure = None;
                    // One step: the query's time bounds are the window's.
                    let single = n == 1;
                    split.scan_fast(query.as_ref(), !single, |row| {
                        if failure.is_some() {
                            return;
                        }
                        let slot = match slot_by_key.get(&row.key) {
                            Some(slot) => *slot,
                            None => {
                                let mut labels = LabelSet::parse(row.stream).unwrap_or_default();
                                labels.insert("detected_level", row.level);
                                labels.insert("ml_event", row.ml_event);
                                match slot_of(labels, &mut slots, &mut arrays) {
                                    Ok(slot) => {
                                        slot_by_key.insert(row.key, slot);
                                        slot
                                    }
                                    Err(e) => {
                                        failure = Some(e);
                                        return;
                                    }
                                }
                            }
                        };
                        let entry = &mut arrays[slot];
                        if single {
                            entry.0[0] += 1;
                            entry.0[1] -= 1;
                            entry.1[0] += row.bytes as f64;
                            entry.1[1] -= row.bytes as f64;
                        } else {
                            add(entry, row.ts, row.bytes as f64);
                        }
                    })?;
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    continue;
                }
                let rows = split.all_rows(query.as_ref())?;
                let filters = prefilters(&range.log.pipeline);
                for chunk in rows.chunks(64 * 1024) {
                    for (_, row) in split.stored_if(chunk, |line| passes(&filters, line))? {
                        let Some(state) = run_pipeline(&range.log.pipeline, row)? else {
                            continue;
                        };
                        let bytes = state.line.len() as f64;
                        let slot = slot_of(state.labels, &mut slots, &mut arrays)?;
                        add(&mut arrays[slot], state.ts, bytes);
                    }
                }
            }
            if agg.op == RangeOp::AbsentOverTime {
                let mut present = vec![0i64; n + 1];
                for (counts, _) in &arrays {
                    for (i, c) in counts.iter().enumerate() {
                        present[i] += c;
                    }
                }
                let labels = LabelSet::from_pairs(
                    range
                        .log
                        .matchers
                        .iter()
                        .filter(|m| m.op == MatchOp::Eq)
                        .map(|m| (m.name.clone(), m.value.clone())),
                );
                let mut running = 0;
                let values = (0..n)
                    .map(|i| {
                        running += present[i];
                        (running == 0).then_some(1.0)
                    })
                    .collect();
                return Ok(Value::Vector(vec![Series { labels, values }]));
            }
            let mut by_slot: Vec<(usize, LabelSet)> = slots.into_iter().map(|(labels, slot)| (slot, labels)).collect();
            by_slot.sort_by_key(|(slot, _)| *slot);
            let out = by_slot
                .into_iter()
                .zip(arrays)
                .map(|((_, labels), (counts, weights))| {
                    let mut count = 0i64;
                    let mut weight = 0.0;
                    let values = (0..n)
                        .map(|i| {
                            count += counts[i];
                            weight += weights[i];
                            (count > 0).then(|| match agg.op {
                                RangeOp::CountOverTime => count as f64,
                                RangeOp::Rate => count as f64 / range_secs,
                                RangeOp::BytesOverTime => weight.max(0.0).round(),
                                RangeOp::BytesRate => weight.max(0.0).round() / range_secs,
                                _ => f64::NAN,
                            })
                        })
                        .collect();
                    Series { labels, values }
                })
                .collect();
            return Ok(Value::Vector(out));
        }
        // unwrap: keep samples per series, then slide.
        let unwrap = range.unwrap.as_ref().expect("parser requires unwrap for these operations");
        let mut samples: HashMap<LabelSet, Vec<(i64, f64)>> = HashMap::new();
        let mut total = 0usize;
        for split in &splits {
            let streams = split.matching_streams(&range.log.matchers);
            if streams.is_empty() {
                continue;
            }
            let filters = prefilters(&range.log.pipeline);
            let query = split.query(&streams, lo, hi, &filters);
            let rows = split.all_rows(query.as_ref())?;
            for chunk in rows.chunks(64 * 1024) {
                for (_, row) in split.stored_if(chunk, |line| passes(&filters, line))? {
                    let stream = row.stream.clone();
                    let mut labels = (*row.stream).clone();
                    for (name, value) in row.metadata.iter() {
                        labels.insert(name, value);
                    }
                    let mut state = LineState {
                        ts: row.ts,
                        line: row.line,
                        labels,
                    };
                    if !pipeline::run(&range.log.pipeline, &stream, &mut state) {
                        continue;
                    }
                    let value = pipeline::unwrap_value(unwrap, &mut state);
                    if let Some(error) = state.labels.get(ERROR_LABEL) {
                        return Err(pipeline_error(error, &state.labels));
                    }
                    let Some(value) = value else { continue };
                    let mut labels = state.labels;
                    labels.remove(&unwrap.label);
                    if let Some(grouping) = &agg.grouping {
                        labels = group_labels(&labels, grouping);
                    }
                    if !samples.contains_key(&labels) {
                        self.check_series(samples.len() + 1, n)?;
                    }
                    total += 1;
                    if total > self.limits.max_samples {
                        return Err(QueryError::Limit(format!(
                            "query holds more than {} samples; narrow it",
                            self.limits.max_samples
                        )));
                    }
                    samples.entry(labels).or_default().push((state.ts, value));
                }
            }
        }
        let out = samples
            .into_iter()
            .map(|(labels, mut points)| {
                points.sort_by_key(|p| p.0);
                let values = grid
                    .steps
                    .iter()
                    .map(|t| {
                        let upper = t.saturating_sub(range.offset);
                        let lower = upper.saturating_sub(range.range);
                        let from = points.partition_point(|p| p.0 <= lower);
                        let to = points.partition_point(|p| p.0 <= upper);
                        over_time(agg.op, agg.param, &points[from..to], range_secs)
                    })
                    .collect();
                Series { labels, values }
            })
            .collect();
        Ok(Value::Vector(out))
    }
}

/// Hashes small integer keys (dictionary ordinals) with a multiply-rotate
/// step: SipHash was a third of a log-metric query's time.
#[derive(Default)]
struct OrdinalHasher(u64);

impl std::hash::Hasher for OrdinalHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

fn pipeline_error(error: &str, labels: &LabelSet) -> QueryError {
    let mut shown = labels.clone();
    shown.remove(ERROR_DETAILS_LABEL);
    QueryError::Execution(format!(
        "pipeline error: '{error}' for series: '{shown}'. Use a label filter to intentionally skip this error. (e.g | __error__!=\"{error}\"). To skip all potential errors you can match empty errors.(e.g __error__=\"\")"
    ))
}

/// Runs the pipeline of a line-counting query on a stored row; a line that
/// ends with `__error__` fails the query, as in Loki.
fn run_pipeline(stages: &[Stage], row: StoredRow) -> Result<Option<LineState>, QueryError> {
    let mut labels = (*row.stream).clone();
    for (name, value) in row.metadata.iter() {
        labels.insert(name, value);
    }
    let mut state = LineState {
        ts: row.ts,
        line: row.line,
        labels,
    };
    if !pipeline::run(stages, &row.stream, &mut state) {
        return Ok(None);
    }
    if let Some(error) = state.labels.get(ERROR_LABEL) {
        return Err(pipeline_error(error, &state.labels));
    }
    Ok(Some(state))
}

fn over_time(op: RangeOp, param: Option<f64>, points: &[(i64, f64)], range_secs: f64) -> Option<f64> {
    if points.is_empty() {
        return None;
    }
    let values = points.iter().map(|p| p.1);
    let count = points.len() as f64;
    Some(match op {
        RangeOp::SumOverTime => values.sum(),
        RangeOp::AvgOverTime => values.sum::<f64>() / count,
        RangeOp::MaxOverTime => values.fold(f64::NEG_INFINITY, f64::max),
        RangeOp::MinOverTime => values.fold(f64::INFINITY, f64::min),
        RangeOp::FirstOverTime => points[0].1,
        RangeOp::LastOverTime => points[points.len() - 1].1,
        RangeOp::StddevOverTime | RangeOp::StdvarOverTime => {
            let mean = values.clone().sum::<f64>() / count;
            let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / count;
            if op == RangeOp::StddevOverTime {
                var.sqrt()
            } else {
                var
            }
        }
        RangeOp::QuantileOverTime => {
            let mut sorted: Vec<f64> = values.collect();
            sorted.sort_by(|a, b| a.total_cmp(b));
            quantile(param.unwrap_or(0.5), &sorted)
        }
        RangeOp::RateCounter => {
            // Counter increase over the window, with resets.
            let mut increase = 0.0;
            for pair in points.windows(2) {
                let delta = pair[1].1 - pair[0].1;
                increase += if delta < 0.0 { pair[1].1 } else { delta };
            }
            increase / range_secs
        }
        _ => return None,
    })
}

/// Prometheus' quantile: linear interpolation between closest ranks.
fn quantile(q: f64, sorted: &[f64]) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = rank.ceil() as usize;
    let weight = rank - lower as f64;
    sorted[lower] * (1.0 - weight) + sorted[upper] * weight
}

fn group_labels(labels: &LabelSet, grouping: &Grouping) -> LabelSet {
    let mut out = labels.clone();
    if grouping.without {
        for name in &grouping.labels {
            out.remove(name);
        }
    } else {
        out.retain(|name| grouping.labels.iter().any(|l| l == name));
    }
    out
}

// Steps index several parallel per-series arrays at once.
#[allow(clippy::needless_range_loop)]
fn aggregate(agg: &VectorAgg, series: Vec<Series>, n: usize) -> Vec<Series> {
    if matches!(agg.op, VectorOp::Topk | VectorOp::Bottomk) {
        let k = agg.param.unwrap_or(1.0) as usize;
        let mut groups: HashMap<LabelSet, Vec<usize>> = HashMap::new();
        for (i, s) in series.iter().enumerate() {
            groups.entry(group_labels(&s.labels, &agg.grouping)).or_default().push(i);
        }
        let mut keep: Vec<Vec<bool>> = vec![vec![false; n]; series.len()];
        for members in groups.values() {
            for step in 0..n {
                let mut present: Vec<(f64, usize)> = members.iter().filter_map(|&i| series[i].values[step].map(|v| (v, i))).collect();
                if agg.op == VectorOp::Topk {
                    present.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                } else {
                    present.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                }
                for (_, i) in present.into_iter().take(k) {
                    keep[i][step] = true;
                }
            }
        }
        return series
            .into_iter()
            .zip(keep)
            .map(|(s, keep)| Series {
                labels: s.labels,
                values: s.values.into_iter().zip(keep).map(|(v, k)| v.filter(|_| k)).collect(),
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect();
    }
    #[derive(Clone, Default)]
    struct Acc {
        count: f64,
        sum: f64,
        min: f64,
        max: f64,
        mean: f64,
        m2: f64,
    }
    let mut groups: HashMap<LabelSet, Vec<Option<Acc>>> = HashMap::new();
    for s in series {
        let accs = groups
            .entry(group_labels(&s.labels, &agg.grouping))
            .or_insert_with(|| vec![None; n]);
        for (step, value) in s.values.into_iter().enumerate() {
            let Some(v) = value else { continue };
            let acc = accs[step].get_or_insert(Acc {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                ..Default::default()
            });
            acc.count += 1.0;
            acc.sum += v;
            acc.min = acc.min.min(v);
            acc.max = acc.max.max(v);
            let delta = v - acc.mean;
            acc.mean += delta / acc.count;
            acc.m2 += delta * (v - acc.mean);
        }
    }
    groups
        .into_iter()
        .map(|(labels, accs)| Series {
            labels,
            values: accs
                .into_iter()
                .map(|acc| {
                    acc.map(|a| match agg.op {
                        VectorOp::Sum => a.sum,
                        VectorOp::Avg => a.sum / a.count,
                        VectorOp::Min => a.min,
                        VectorOp::Max => a.max,
                        VectorOp::Count => a.count,
                        VectorOp::Stdvar => a.m2 / a.count,
                        VectorOp::Stddev => (a.m2 / a.count).sqrt(),
                        VectorOp::Topk | VectorOp::Bottomk => unreachable!("handled above"),
                    })
                })
                .collect(),
        })
        .collect()
}

fn arith(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        BinOp::Eq => (a == b) as u8 as f64,
        BinOp::Neq => (a != b) as u8 as f64,
        BinOp::Gt => (a > b) as u8 as f64,
        BinOp::Ge => (a >= b) as u8 as f64,
        BinOp::Lt => (a < b) as u8 as f64,
        BinOp::Le => (a <= b) as u8 as f64,
        BinOp::And | BinOp::Or | BinOp::Unless => f64::NAN,
    }
}

/// Applies a comparison or arithmetic to one pair: `None` drops the sample
/// (a false comparison without `bool`).
fn combine(b: &Binary, keep: f64, a: f64, c: f64) -> Option<f64> {
    let result = arith(b.op, a, c);
    if b.op.is_comparison() && !b.return_bool {
        return (result == 1.0).then_some(keep);
    }
    Some(result)
}

fn signature(labels: &LabelSet, matching: Option<&VectorMatching>) -> LabelSet {
    match matching {
        Some(m) if m.on => {
            let mut out = labels.clone();
            out.retain(|n| m.labels.iter().any(|l| l == n));
            out
        }
        Some(m) => {
            let mut out = labels.clone();
            for name in &m.labels {
                out.remove(name);
            }
            out
        }
        None => labels.clone(),
    }
}

fn binary_op(b: &Binary, lhs: Value, rhs: Value) -> Result<Value, QueryError> {
    if b.op.is_set() {
        let (Value::Vector(lhs), Value::Vector(rhs)) = (lhs, rhs) else {
            return Err(QueryError::BadRequest(format!(
                "set operator {:?} needs vectors on both sides",
                b.op
            )));
        };
        let matching = b.matching.as_ref();
        let mut rhs_by_sig: HashMap<LabelSet, Vec<usize>> = HashMap::new();
        for (i, s) in rhs.iter().enumerate() {
            rhs_by_sig.entry(signature(&s.labels, matching)).or_default().push(i);
        }
        let n = lhs.first().or(rhs.first()).map(|s| s.values.len()).unwrap_or(0);
        let present = |sig: &LabelSet, step: usize| {
            rhs_by_sig
                .get(sig)
                .is_some_and(|idx| idx.iter().any(|&i| rhs[i].values[step].is_some()))
        };
        return Ok(Value::Vector(match b.op {
            BinOp::And => lhs
                .iter()
                .map(|s| {
                    let sig = signature(&s.labels, matching);
                    Series {
                        labels: s.labels.clone(),
                        values: (0..n).map(|i| s.values[i].filter(|_| present(&sig, i))).collect(),
                    }
                })
                .collect(),
            BinOp::Unless => lhs
                .iter()
                .map(|s| {
                    let sig = signature(&s.labels, matching);
                    Series {
                        labels: s.labels.clone(),
                        values: (0..n).map(|i| s.values[i].filter(|_| !present(&sig, i))).collect(),
                    }
                })
                .collect(),
            _ => {
                let lhs_sigs: HashSet<LabelSet> = lhs.iter().map(|s| signature(&s.labels, matching)).collect();
                let mut out = lhs.clone();
                out.extend(rhs.iter().filter(|s| !lhs_sigs.contains(&signature(&s.labels, matching))).cloned());
                out
            }
        }));
    }
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(c)) => {
            if b.op.is_comparison() && !b.return_bool {
                return Err(QueryError::BadRequest(
                    "comparisons between scalars must use the bool modifier".into(),
                ));
            }
            Ok(Value::Scalar(a.iter().zip(&c).map(|(x, y)| arith(b.op, *x, *y)).collect()))
        }
        (Value::Vector(series), Value::Scalar(c)) => Ok(Value::Vector(
            series
                .into_iter()
                .map(|s| Series {
                    labels: s.labels,
                    values: s
                        .values
                        .into_iter()
                        .zip(&c)
                        .map(|(v, y)| v.and_then(|x| combine(b, x, x, *y)))
                        .collect(),
                })
                .collect(),
        )),
        (Value::Scalar(a), Value::Vector(series)) => Ok(Value::Vector(
            series
                .into_iter()
                .map(|s| Series {
                    labels: s.labels,
                    values: s
                        .values
                        .into_iter()
                        .zip(&a)
                        .map(|(v, x)| v.and_then(|y| combine(b, y, *x, y)))
                        .collect(),
                })
                .collect(),
        )),
        (Value::Vector(lhs), Value::Vector(rhs)) => {
            let matching = b.matching.as_ref();
            let group = matching.and_then(|m| m.group);
            let mut rhs_by_sig: HashMap<LabelSet, usize> = HashMap::new();
            for (i, s) in rhs.iter().enumerate() {
                if rhs_by_sig.insert(signature(&s.labels, matching), i).is_some() && group != Some(true) {
                    return Err(QueryError::Execution("found duplicate series for the match group on the right hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side".into()));
                }
            }
            let mut out = Vec::new();
            let mut seen_lhs: HashSet<LabelSet> = HashSet::new();
            for s in &lhs {
                let sig = signature(&s.labels, matching);
                let Some(&j) = rhs_by_sig.get(&sig) else {
                    continue;
                };
                if group.is_none() && !seen_lhs.insert(sig.clone()) {
                    return Err(QueryError::Execution("found duplicate series for the match group on the left hand-side of the operation; many-to-many matching not allowed".into()));
                }
                let labels = match (group, matching) {
                    (Some(true), _) => rhs[j].labels.clone(),
                    (Some(false), _) => s.labels.clone(),
                    (None, Some(m)) if m.on => sig.clone(),
                    (None, _) if b.op.is_comparison() && !b.return_bool => s.labels.clone(),
                    (None, _) => sig.clone(),
                };
                let values = s
                    .values
                    .iter()
                    .zip(&rhs[j].values)
                    .map(|(x, y)| match (x, y) {
                        (Some(x), Some(y)) => combine(b, if group == Some(true) { *y } else { *x }, *x, *y),
                        _ => None,
                    })
                    .collect();
                out.push(Series { labels, values });
            }
            Ok(Value::Vector(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_span_finds_steps_in_a_window() {
        let grid = Grid {
            steps: vec![10, 20, 30, 40],
            first: 10,
            step: 10,
        };
        assert_eq!(grid.span(10, 10), Some((0, 0)));
        assert_eq!(grid.span(11, 29), Some((1, 1)));
        assert_eq!(grid.span(0, 100), Some((0, 3)));
        assert_eq!(grid.span(41, 100), None);
        assert_eq!(grid.span(12, 18), None);
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(0.5, &[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(1.0, &[1.0, 2.0]), 2.0);
    }
}
