//! "Where is each rank of run R?" — the first question when a distributed
//! training job hangs. For every rank of a run: when it last logged (and
//! what), the last training step it reported and when, and its last
//! tagged event (`ml_event`); plus which rank went quiet first and which
//! is furthest behind in steps.
//!
//! Logs are answered from the tantivy index of each split (newest row of
//! the rank's streams, newest row with an `ml_event`), so the cost is two
//! index lookups per rank and split, not a scan; steps come from the
//! `weft_train_step` series the collector extracts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use promql_parser::label::{MatchOp, Matcher};
use weft_model::LabelSet;

use crate::promql::source::SampleSource;
use crate::storage::{OpenSplit, SplitStore};
use crate::QueryError;

/// The newest log row seen so far for a rank.
#[derive(Clone, Debug, PartialEq)]
pub struct LogMark {
    pub ts: i64,
    pub line: String,
    pub pod: String,
    pub level: Option<String>,
    pub ml_event: Option<String>,
}

/// What is known about one rank.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RankState {
    pub rank: String,
    /// (namespace, pod) that logged as this rank.
    pub pods: BTreeSet<(String, String)>,
    pub last_log: Option<LogMark>,
    pub last_event: Option<LogMark>,
    /// (step, time in ms) of the newest `weft_train_step` sample.
    pub last_step: Option<(f64, i64)>,
}

/// The ranks of a run, in rank order (numeric where they are numbers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRanks {
    pub ranks: Vec<RankState>,
}

/// Candidate rows of one split: per rank, (ts, row) of the newest line and
/// the newest tagged line.
struct SplitMarks {
    split: Arc<OpenSplit>,
    best: HashMap<String, [Option<(i64, u32)>; 2]>,
}

fn rank_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// Most ranks one answer covers.
pub const MAX_RANKS: usize = 4096;
/// Longest line quoted per rank (a joined traceback can be a megabyte).
pub const MAX_QUOTED_BYTES: usize = 4096;
/// Most `weft_train_step` samples read for one answer.
const MAX_STEP_SAMPLES: usize = 10_000_000;

fn quote(line: &str) -> String {
    if line.len() <= MAX_QUOTED_BYTES {
        return line.to_string();
    }
    let mut cut = MAX_QUOTED_BYTES;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

/// The ranks of `run` seen in `[start, end)` (nanoseconds).
pub fn run_ranks(
    store: &SplitStore,
    metrics: &dyn SampleSource,
    tenant: &str,
    run: &str,
    start: i64,
    end: i64,
) -> Result<RunRanks, QueryError> {
    let mut states: BTreeMap<String, RankState> = BTreeMap::new();
    let mut candidates = Vec::new();
    for split in store.splits(tenant, start, end)? {
        // Streams of the run, by rank.
        let mut by_rank: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, labels) in split.streams.iter().enumerate() {
            if labels.get("run") != Some(run) {
                continue;
            }
            let rank = labels.get("rank").unwrap_or("").to_string();
            let state = states.entry(rank.clone()).or_insert_with(|| RankState {
                rank: rank.clone(),
                ..Default::default()
            });
            state.pods.insert((
                labels.get("namespace").unwrap_or("").to_string(),
                labels.get("pod").unwrap_or("").to_string(),
            ));
            by_rank.entry(rank).or_default().push(i);
        }
        if states.len() > MAX_RANKS {
            return Err(QueryError::BadRequest(format!(
                "run {run:?} has more than {MAX_RANKS} ranks in this window; narrow it with start/end"
            )));
        }
        let mut best = HashMap::new();
        for (rank, streams) in by_rank {
            let lines = split.query(&streams, start, end, &[]);
            let newest = split.top_rows(lines.as_ref(), 1, true)?.into_iter().next();
            let tagged = split.with_ml_event(split.query(&streams, start, end, &[]));
            let newest_event = split.top_rows(tagged.as_ref(), 1, true)?.into_iter().next();
            best.insert(rank, [newest, newest_event]);
        }
        if !best.is_empty() {
            candidates.push(SplitMarks { split, best });
        }
    }
    // Per rank and kind, the split holding the newest row.
    let mut winners: HashMap<(String, usize), (i64, usize, u32)> = HashMap::new();
    for (c, marks) in candidates.iter().enumerate() {
        for (rank, found) in &marks.best {
            for (kind, mark) in found.iter().enumerate() {
                if let Some((ts, row)) = mark {
                    let slot = winners.entry((rank.clone(), kind)).or_insert((*ts, c, *row));
                    if *ts > slot.0 {
                        *slot = (*ts, c, *row);
                    }
                }
            }
        }
    }
    let mut wanted: HashMap<usize, Vec<(u32, String, usize)>> = HashMap::new();
    for ((rank, kind), (_, c, row)) in winners {
        wanted.entry(c).or_default().push((row, rank, kind));
    }
    for (c, mut rows) in wanted {
        rows.sort_by_key(|(row, _, _)| *row);
        let mut ids: Vec<u32> = rows.iter().map(|(row, _, _)| *row).collect();
        ids.dedup();
        let stored = candidates[c].split.stored(&ids)?;
        let by_row: HashMap<u32, &crate::storage::StoredRow> = ids.iter().copied().zip(stored.iter()).collect();
        for (row, rank, kind) in rows {
            let Some(stored) = by_row.get(&row) else { continue };
            let mark = LogMark {
                ts: stored.ts,
                line: quote(&stored.line),
                pod: stored.stream.get("pod").unwrap_or("").to_string(),
                level: stored.metadata.get("detected_level").map(str::to_string),
                ml_event: stored.metadata.get("ml_event").filter(|e| !e.is_empty()).map(str::to_string),
            };
            let state = states.get_mut(&rank).expect("rank seen in the streams");
            if kind == 0 {
                state.last_log = Some(mark);
            } else {
                state.last_event = Some(mark);
            }
        }
    }
    // Steps: the newest weft_train_step sample of each rank.
    let matchers = [
        Matcher::new(MatchOp::Equal, "__name__", "weft_train_step"),
        Matcher::new(MatchOp::Equal, "run", run),
    ];
    let (start_ms, end_ms) = (start.div_euclid(1_000_000), (end - 1).div_euclid(1_000_000));
    for series in metrics.select(&matchers, start_ms, end_ms, MAX_STEP_SAMPLES)? {
        let Some(&(ts, step)) = series.samples.iter().rev().find(|(_, v)| !weft_model::metric::is_stale_marker(*v)) else {
            continue;
        };
        let rank = series.labels.get("rank").unwrap_or("").to_string();
        if !states.contains_key(&rank) && states.len() >= MAX_RANKS {
            continue;
        }
        let state = states.entry(rank.clone()).or_insert_with(|| RankState {
            rank,
            ..Default::default()
        });
        add_pod(&mut state.pods, &series.labels);
        if state.last_step.is_none_or(|(_, t)| ts > t) {
            state.last_step = Some((step, ts));
        }
    }
    let mut ranks: Vec<RankState> = states.into_values().collect();
    ranks.sort_by(|a, b| rank_order(&a.rank, &b.rank));
    Ok(RunRanks { ranks })
}

fn add_pod(pods: &mut BTreeSet<(String, String)>, labels: &LabelSet) {
    if let Some(pod) = labels.get("pod").filter(|p| !p.is_empty()) {
        pods.insert((labels.get("namespace").unwrap_or("").to_string(), pod.to_string()));
    }
}

impl RunRanks {
    /// The rank whose last log line is the oldest, when ranks differ: the
    /// one that went quiet first.
    pub fn first_quiet(&self) -> Option<&RankState> {
        let logged: Vec<&RankState> = self.ranks.iter().filter(|r| r.last_log.is_some()).collect();
        if logged.len() < 2 {
            return None;
        }
        logged.into_iter().min_by_key(|r| r.last_log.as_ref().map(|l| l.ts))
    }

    /// The rank with the lowest last step, when steps differ.
    pub fn furthest_behind(&self) -> Option<&RankState> {
        let stepped: Vec<&RankState> = self.ranks.iter().filter(|r| r.last_step.is_some()).collect();
        let lowest = stepped
            .iter()
            .min_by(|a, b| a.last_step.unwrap().0.total_cmp(&b.last_step.unwrap().0))?;
        let highest = stepped.iter().map(|r| r.last_step.unwrap().0).fold(f64::NEG_INFINITY, f64::max);
        (lowest.last_step.unwrap().0 < highest).then_some(*lowest)
    }
}
