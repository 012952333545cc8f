//! Native full-text search: a free-text expression (words, "phrases",
//! AND / OR / NOT, `-word`) over log lines, plus label filters written
//! `name:value` or `name="value"` (stream labels, `level`, `ml_event`),
//! newest first, paged by a time cursor.

use std::collections::HashSet;
use std::sync::Arc;

use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;
use weft_model::LabelSet;

use crate::logql::ast::{MatchOp, Matcher};
use crate::search_text::TextExpr;
use rustc_hash::{FxHashMap, FxHashSet};
use weft_indexer::split::numbers::BLOCK_ROWS;

use crate::storage::{OpenSplit, SplitStore, StoredRow};
use crate::QueryError;

/// Most hits one page may ask for.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Most hits at one timestamp a cursor may skip (pages of equal times).
pub const MAX_CURSOR_SKIP: usize = 100_000;

/// One search request.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    pub query: String,
    pub start: i64,
    /// Inclusive.
    pub end: i64,
    pub limit: usize,
    /// Hits at exactly `end` to skip (they were on the previous page).
    pub skip_at_end: usize,
}

/// One hit.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    pub ts: i64,
    pub labels: LabelSet,
    pub line: String,
    pub level: String,
    pub ml_event: Option<String>,
}

/// A page of hits and the cursor of the next page.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// `<ts>:<skip>` to pass as `cursor` for older hits; none on the last page.
    pub next_cursor: Option<String>,
    pub stats: SearchStats,
}

/// What a search cost, as Loki's query stats say it: where the time of a
/// slow search went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SearchStats {
    /// Splits whose time range overlapped the search's.
    pub splits: usize,
    /// Candidate lines read back and checked against the search text (a
    /// phrase, a number, a word indexed per block of rows).
    pub lines_checked: usize,
}

/// The text part and the label filters of a search expression.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedSearch {
    pub text: String,
    pub matchers: Vec<Matcher>,
    pub level: Option<String>,
    pub ml_event: Option<String>,
}

/// Splits `expr` into label filters (`name:value`, `name="value"`) on known
/// label names and the remaining full-text expression.
pub fn split_search(expr: &str, label_names: &HashSet<String>) -> ParsedSearch {
    let mut parsed = ParsedSearch::default();
    let mut text_parts = Vec::new();
    let mut rest = expr.trim();
    while !rest.is_empty() {
        // One whitespace-separated word, keeping quoted parts together.
        let mut end = 0;
        let mut quoted = false;
        for (i, c) in rest.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                break;
            }
            end = i + c.len_utf8();
        }
        let word = &rest[..end];
        rest = rest[end..].trim_start();
        let filter = word
            .split_once(':')
            .or_else(|| word.split_once('='))
            .filter(|(name, value)| !value.is_empty() && (label_names.contains(*name) || *name == "level" || *name == "ml_event"));
        match filter {
            Some((name, value)) => {
                let value = value.trim_matches('"').to_string();
                match name {
                    "level" => parsed.level = Some(value.to_ascii_lowercase()),
                    "ml_event" => parsed.ml_event = Some(value),
                    _ => parsed.matchers.push(Matcher {
                        name: name.to_string(),
                        op: MatchOp::Eq,
                        value,
                        regex: None,
                    }),
                }
            }
            None => text_parts.push(word),
        }
    }
    parsed.text = text_parts.join(" ");
    parsed
}

fn split_query(
    split: &OpenSplit,
    parsed: &ParsedSearch,
    text: Option<Box<dyn Query>>,
    streams: &[usize],
    start: i64,
    end: i64,
) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, split.query(streams, start, end.saturating_add(1), &[]))];
    if let Some(text) = text {
        clauses.push((Occur::Must, text));
    }
    if let Some(level) = &parsed.level {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(split.fields.level, level),
                IndexRecordOption::Basic,
            )),
        ));
    }
    if let Some(event) = &parsed.ml_event {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(split.fields.ml_event, event),
                IndexRecordOption::Basic,
            )),
        ));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// Most candidate rows one search checks (phrases, numbers, block words).
pub const MAX_CHECKED_ROWS: usize = 1 << 22;

/// The candidates of a split whose rows must pass the text's exact check
/// (a phrase, a number, a block word): fetched newest first from its
/// index in growing rounds, checked across splits in time order.
struct CheckedSplit {
    split: usize,
    query: Box<dyn Query>,
    /// Candidates fetched (time, row), oldest first: the newest is popped.
    /// Rows already checked (with their block) are skipped.
    queue: Vec<(i64, u32)>,
    /// The fetched candidates of each block, for checking a block's rows
    /// together (they are in one page, which is read whole).
    blocks: FxHashMap<u32, Vec<(i64, u32)>>,
    /// Rows fetched so far.
    fetched: FxHashSet<u32>,
    /// Rows checked so far.
    done: FxHashSet<u32>,
    /// Rows the last fetch asked for (a [`GROWTH`]th of the first
    /// round's before any).
    round: usize,
    /// False once a fetch returned fewer rows than it asked for: every
    /// candidate is then fetched.
    more: bool,
    /// The time of the oldest row fetched: rows not fetched yet are no
    /// newer.
    horizon: i64,
}

impl CheckedSplit {
    fn new(split: usize, query: Box<dyn Query>, round: usize) -> Self {
        CheckedSplit {
            split,
            query,
            queue: Vec::new(),
            blocks: FxHashMap::default(),
            fetched: FxHashSet::default(),
            done: FxHashSet::default(),
            round: round / GROWTH,
            more: true,
            horizon: i64::MAX,
        }
    }

    /// The next round of candidates, newest first: [`GROWTH`] times the
    /// last.
    fn next_round(&self, split: &OpenSplit) -> Result<Vec<(i64, u32)>, QueryError> {
        split.top_rows(self.query.as_ref(), self.round.saturating_mul(GROWTH), true)
    }

    /// Queues the candidates of [`CheckedSplit::next_round`] not fetched
    /// before.
    fn absorb(&mut self, top: Vec<(i64, u32)>) {
        self.round = self.round.saturating_mul(GROWTH);
        self.more = top.len() >= self.round;
        if let Some((ts, _)) = top.last() {
            self.horizon = *ts;
        }
        for (ts, row) in top {
            if self.fetched.insert(row) {
                self.queue.push((ts, row));
                self.blocks.entry(row / BLOCK_ROWS).or_default().push((ts, row));
            }
        }
        self.queue.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.settle();
    }

    /// The time of the newest candidate not yet checked.
    fn next_ts(&self) -> Option<i64> {
        self.queue.last().map(|(ts, _)| *ts)
    }

    /// Drops checked rows off the end of the queue.
    fn settle(&mut self) {
        while self.queue.last().is_some_and(|(_, row)| self.done.contains(row)) {
            self.queue.pop();
        }
    }

    /// Marks every candidate checked.
    fn finish(&mut self) {
        self.queue.clear();
        self.blocks.clear();
        self.more = false;
    }

    /// The newest candidate not yet checked, alone or (`whole_block`) with
    /// the other candidates fetched from its block and not yet checked.
    fn pop(&mut self, whole_block: bool, out: &mut Vec<(i64, u32)>) {
        let Some((ts, row)) = self.queue.pop() else {
            return;
        };
        if whole_block {
            let rows = self.blocks.remove(&(row / BLOCK_ROWS)).unwrap_or_default();
            out.extend(rows.into_iter().filter(|(_, r)| self.done.insert(*r)));
        } else {
            self.done.insert(row);
            out.push((ts, row));
        }
        self.settle();
    }
}

/// A split with at most this many candidates, where few pass, has them
/// checked at once.
const ONE_ROUND_ROWS: usize = 1 << 16;

/// How much each round of a split's candidates grows.
const GROWTH: usize = 4;

/// True when fewer than one in eight rows checked so far passed.
fn few_pass(checked: usize, passed: usize) -> bool {
    checked > 0 && passed.saturating_mul(8) < checked
}

/// The newest `want` rows of the `checked` splits that pass `text`'s
/// exact check, as (time, split, row, row read): candidates are checked
/// newest first across all splits, a batch at a time, until no unchecked
/// candidate can be newer than the `want`th newest row passed (or, with
/// `exact`, the rows of splits that need no check). Checking split by
/// split read the pages of every split's newest rows, most of which come
/// too late to be returned.
fn checked_rows(
    splits: &[Arc<OpenSplit>],
    mut checked: Vec<CheckedSplit>,
    text: &TextExpr,
    exact: &[(i64, usize, u32)],
    want: usize,
    stats: &mut SearchStats,
    cap: usize,
) -> Result<Vec<(i64, usize, u32, StoredRow)>, QueryError> {
    let mut passed: Vec<(i64, usize, u32, StoredRow)> = Vec::new();
    let newest_first = |a: &(i64, usize, u32), b: &(i64, usize, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2));
    // Only the newest `want` can be returned.
    let keep_newest = |passed: &mut Vec<(i64, usize, u32, StoredRow)>| {
        if passed.len() > want.saturating_mul(2) {
            passed.sort_by(|a, b| newest_first(&(a.0, a.1, a.2), &(b.0, b.1, b.2)));
            passed.truncate(want);
        }
    };
    let mut batch_rows = want.saturating_mul(4).max(64);
    let (mut rows_checked, mut rows_passed) = (0usize, 0usize);
    // Rows checked in batches (the checks at once are bounded by their
    // splits' count).
    let mut batched = 0usize;
    let mut all_at_once = false;
    // Candidates of all splits, counted once it matters.
    let mut candidates: Option<usize> = None;
    loop {
        // At the rate rows passed so far, the rows left to check.
        let to_check = want.saturating_sub(rows_passed).saturating_mul(rows_checked) / rows_passed.max(1);
        let many_left = !all_at_once && few_pass(rows_checked, rows_passed) && to_check > batch_rows.saturating_mul(16);
        // Most of the candidates left would be checked anyway. Where the
        // matches crowd at the newest end (a number in recent lines of
        // many streams, each block holding one), the candidates are far
        // more than the rows that rate asks for, and batches stop early:
        // checking every candidate at once had made such a search read
        // every page that holds the number (10 GB: 220 ms).
        let most_left = many_left && {
            let total = match candidates {
                Some(total) => total,
                None => {
                    let counts = on_all_cores(checked.len(), |c| {
                        let state = &checked[c];
                        splits[state.split].count(state.query.as_ref())
                    });
                    let total = counts.into_iter().sum::<Result<usize, QueryError>>()?;
                    *candidates.insert(total)
                }
            };
            to_check.saturating_mul(4) >= total.saturating_sub(rows_checked)
        };
        // The next batch would pass the cap on rows checked in batches: the
        // splits with few enough candidates are checked at once instead
        // (those rows do not count against the cap), as before the rate
        // decided when.
        let at_cap = !all_at_once && batched.saturating_add(batch_rows) > cap;
        if most_left || at_cap {
            // So few candidates pass (a number's blocks in few lines) that
            // rounds would visit the candidates again and again, and most
            // of them are checked in the end. A split with few enough has
            // the rest of them checked at once, each page read once.
            all_at_once = true;
            let done = on_all_cores(checked.len(), |c| {
                let state = &checked[c];
                let split = &splits[state.split];
                if !split.matches_at_most(state.query.as_ref(), ONE_ROUND_ROWS)? {
                    return Ok(None);
                }
                let rest: Vec<u32> = split
                    .all_rows(state.query.as_ref())?
                    .into_iter()
                    .filter(|row| !state.done.contains(row))
                    .collect();
                let count = rest.len();
                Ok(Some((count, split.stored_if(&rest, |line| text.matches(line))?)))
            });
            for (c, result) in done.into_iter().enumerate() {
                if let Some((count, rows)) = result? {
                    rows_checked += count;
                    rows_passed += rows.len();
                    let split = checked[c].split;
                    passed.extend(rows.into_iter().map(|(row, stored)| (stored.ts, split, row, stored)));
                    keep_newest(&mut passed);
                    checked[c].finish();
                }
            }
        }
        // A split's rows not fetched yet may be newer than every queued
        // candidate: fetch more of them first.
        loop {
            let next = checked.iter().filter_map(CheckedSplit::next_ts).max();
            let behind: Vec<usize> = (0..checked.len())
                .filter(|&c| checked[c].more && next.is_none_or(|next| checked[c].horizon >= next))
                .collect();
            if behind.is_empty() {
                break;
            }
            let rounds = on_all_cores(behind.len(), |n| {
                let state = &checked[behind[n]];
                state.next_round(&splits[state.split])
            });
            for (c, top) in behind.into_iter().zip(rounds) {
                checked[c].absorb(top?);
            }
        }
        let Some(next) = checked.iter().filter_map(CheckedSplit::next_ts).max() else {
            break;
        };
        // The `want`th newest row so far: older candidates cannot be
        // returned.
        let mut cutoff = None;
        if passed.len() + exact.len() >= want {
            let mut times: Vec<i64> = passed.iter().map(|p| p.0).chain(exact.iter().map(|e| e.0)).collect();
            times.select_nth_unstable_by(want - 1, |a, b| b.cmp(a));
            if next < times[want - 1] {
                break;
            }
            cutoff = Some(times[want - 1]);
        }
        // The newest `batch_rows` candidates over all splits; where few
        // pass, with the other candidates fetched from their blocks (a
        // block's page is read whole: so it is read once).
        let whole_blocks = few_pass(rows_checked, rows_passed);
        let mut batch: Vec<(i64, usize, u32)> = Vec::new();
        let mut popped = Vec::new();
        let mut heads: std::collections::BinaryHeap<(i64, std::cmp::Reverse<usize>)> = checked
            .iter()
            .enumerate()
            .filter_map(|(c, state)| state.next_ts().map(|ts| (ts, std::cmp::Reverse(c))))
            .collect();
        while batch.len() < batch_rows {
            let Some((ts, std::cmp::Reverse(c))) = heads.pop() else {
                break;
            };
            // The batch stops at the `want`th newest row passed: it would
            // have checked older candidates for nothing (a batch doubles the
            // one before, and the last one had checked half a million
            // lines of a 10 GB phrase search for nothing).
            if cutoff.is_some_and(|cutoff| ts < cutoff) {
                break;
            }
            let state = &mut checked[c];
            state.pop(whole_blocks, &mut popped);
            batch.extend(popped.drain(..).map(|(ts, row)| (ts, c, row)));
            if let Some(ts) = state.next_ts() {
                heads.push((ts, std::cmp::Reverse(c)));
            }
        }
        rows_checked += batch.len();
        batched += batch.len();
        if batched > cap {
            return Err(QueryError::BadRequest(format!(
                "the search checked {rows_checked} candidate lines and more are newer than its last match (phrases have no positions in the index; numbers, and words in many lines of a split, are indexed per block of rows): add a rarer word, a label filter or a shorter time range"
            )));
        }
        // Each split's rows of the batch, read and checked on all cores.
        let mut by_split: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        for (_, c, row) in &batch {
            by_split.entry(*c).or_default().push(*row);
        }
        let by_split: Vec<(usize, Vec<u32>)> = by_split
            .into_iter()
            .map(|(c, mut rows)| {
                rows.sort_unstable();
                (c, rows)
            })
            .collect();
        let read = on_all_cores(by_split.len(), |n| {
            let (c, rows) = &by_split[n];
            let split = &splits[checked[*c].split];
            Ok((*c, split.stored_if(rows, |line| text.matches(line))?))
        });
        for result in read {
            let (c, rows) = result?;
            let split = checked[c].split;
            rows_passed += rows.len();
            passed.extend(rows.into_iter().map(|(row, stored)| (stored.ts, split, row, stored)));
        }
        keep_newest(&mut passed);
        batch_rows = batch_rows.saturating_mul(2);
    }
    stats.lines_checked += rows_checked;
    Ok(passed)
}

/// `work(0..n)` on up to one thread per core (a search is one request
/// waiting on hundreds of independent splits), results in index order.
fn on_all_cores<T: Send>(n: usize, work: impl Fn(usize) -> Result<T, QueryError> + Sync) -> Vec<Result<T, QueryError>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n).max(1);
    if threads == 1 {
        return (0..n).map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= n {
                return out;
            }
            out.push((i, work(i)));
        }
    };
    let mut done: Vec<(usize, Result<T, QueryError>)> = std::thread::scope(|scope| {
        // The calling thread works too; a helper the OS refuses is skipped.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok())
            .collect();
        let mut done = worker();
        for helper in helpers {
            done.extend(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        done
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result).collect()
}

/// What a split gives a search.
enum Found {
    Nothing,
    /// Its newest matching rows (time, row): the index is exact.
    Rows(Vec<(i64, u32)>),
    /// Its candidates must pass the text's check.
    ToCheck(CheckedSplit),
}

/// Runs a search over the splits of `tenant`.
pub fn search(store: &Arc<SplitStore>, tenant: &str, request: &SearchRequest) -> Result<SearchPage, QueryError> {
    search_capped(store, tenant, request, MAX_CHECKED_ROWS)
}

/// [`search`] checking at most `cap` candidate rows in batches (tests
/// reach the cap with a few thousand rows).
pub(crate) fn search_capped(store: &Arc<SplitStore>, tenant: &str, request: &SearchRequest, cap: usize) -> Result<SearchPage, QueryError> {
    if request.limit == 0 || request.limit > MAX_SEARCH_LIMIT {
        return Err(QueryError::BadRequest(format!("limit must be between 1 and {MAX_SEARCH_LIMIT}")));
    }
    if request.skip_at_end > MAX_CURSOR_SKIP {
        return Err(QueryError::BadRequest(format!(
            "the cursor skips {} hits at one timestamp, the limit is {MAX_CURSOR_SKIP}",
            request.skip_at_end
        )));
    }
    let splits = store.splits(tenant, request.start, request.end.saturating_add(1))?;
    // Only `name:value` and `name=value` words can be label filters (the
    // names of hundreds of splits' streams were a tenth of a plain search).
    let label_names: HashSet<String> = if request.query.contains([':', '=']) {
        splits
            .iter()
            .flat_map(|s| {
                s.streams
                    .iter()
                    .flat_map(|l| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
            })
            .collect()
    } else {
        HashSet::new()
    };
    let parsed = split_search(&request.query, &label_names);
    if parsed.text.trim().is_empty() && parsed.matchers.is_empty() && parsed.level.is_none() && parsed.ml_event.is_none() {
        return Err(QueryError::BadRequest("the search expression is empty".into()));
    }
    let text = if parsed.text.trim().is_empty() {
        None
    } else {
        Some(TextExpr::parse(&parsed.text)?)
    };
    let want = request.limit + request.skip_at_end + 1;
    // Per split: its newest `want` rows, or, where its rows must pass the
    // text's check, its query (checked below, across splits).
    let per_split = on_all_cores(splits.len(), |i| {
        let split = &splits[i];
        let streams = split.matching_streams(&parsed.matchers);
        if streams.is_empty() {
            return Ok(Found::Nothing);
        }
        // The text's words first: a rare term is in few splits, and
        // asking the term dictionaries alone is a fraction of building
        // the whole query for each split.
        let text_query = text.as_ref().map(|text| text.query(split));
        if let Some(q) = &text_query {
            if !split.matches_any(q.as_ref())? {
                return Ok(Found::Nothing);
            }
        }
        let query = split_query(split, &parsed, text_query, &streams, request.start, request.end);
        match &text {
            Some(text) if text.needs_check_in(split) => Ok(Found::ToCheck(CheckedSplit::new(i, query, want.saturating_mul(4).max(64)))),
            _ => Ok(Found::Rows(split.top_rows(query.as_ref(), want, true)?)),
        }
    });
    // (ts, split index, row), newest first; ties by split then row.
    let mut candidates: Vec<(i64, usize, u32)> = Vec::new();
    let mut to_check = Vec::new();
    for (i, result) in per_split.into_iter().enumerate() {
        match result? {
            Found::Nothing => {}
            Found::Rows(top) => candidates.extend(top.into_iter().map(|(ts, row)| (ts, i, row))),
            Found::ToCheck(state) => to_check.push(state),
        }
    }
    // Rows already read to check them.
    let mut fetched = std::collections::HashMap::new();
    let mut stats = SearchStats {
        splits: splits.len(),
        lines_checked: 0,
    };
    if let Some(text) = &text {
        if !to_check.is_empty() {
            for (ts, i, row, stored) in checked_rows(&splits, to_check, text, &candidates, want, &mut stats, cap)? {
                candidates.push((ts, i, row));
                fetched.insert((i, row), stored);
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut skipped = 0;
    candidates.retain(|c| {
        if c.0 == request.end && skipped < request.skip_at_end {
            skipped += 1;
            false
        } else {
            true
        }
    });
    let more = candidates.len() > request.limit;
    candidates.truncate(request.limit);
    let mut by_split: std::collections::HashMap<usize, Vec<u32>> = Default::default();
    for (_, i, row) in &candidates {
        if !fetched.contains_key(&(*i, *row)) {
            by_split.entry(*i).or_default().push(*row);
        }
    }
    let by_split: Vec<(usize, Vec<u32>)> = by_split.into_iter().collect();
    let read = on_all_cores(by_split.len(), |n| {
        let (i, rows) = &by_split[n];
        let mut rows = rows.clone();
        rows.sort_unstable();
        let out = splits[*i].stored(&rows)?;
        Ok(rows
            .into_iter()
            .zip(out)
            .map(|(row, stored)| ((*i, row), stored))
            .collect::<Vec<_>>())
    });
    for rows in read {
        fetched.extend(rows?);
    }
    let hits: Vec<SearchHit> = candidates
        .iter()
        .filter_map(|(_, i, row)| fetched.remove(&(*i, *row)))
        .map(|row| SearchHit {
            ts: row.ts,
            labels: (*row.stream).clone(),
            level: row.metadata.get("detected_level").unwrap_or("unknown").to_string(),
            ml_event: row.metadata.get("ml_event").map(str::to_string),
            line: row.line,
        })
        .collect();
    let next_cursor = if more {
        hits.last().map(|last| {
            let at_last = hits.iter().filter(|h| h.ts == last.ts).count();
            let carried = if last.ts == request.end { request.skip_at_end } else { 0 };
            format!("{}:{}", last.ts, at_last + carried)
        })
    } else {
        None
    };
    Ok(SearchPage { hits, next_cursor, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_all_cores_keeps_the_order_and_the_errors() {
        let out = on_all_cores(100, |i| {
            if i == 37 {
                Err(QueryError::BadRequest("37".into()))
            } else {
                Ok(i * 2)
            }
        });
        assert_eq!(out.len(), 100);
        for (i, result) in out.into_iter().enumerate() {
            match result {
                Ok(v) => assert_eq!(v, i * 2),
                Err(e) => assert_eq!((i, e.to_string().contains("37")), (37, true)),
            }
        }
        assert!(on_all_cores(0, Ok).is_empty());
    }

    #[test]
    fn label_filters_are_split_from_text() {
        let names: HashSet<String> = ["namespace".to_string(), "pod".to_string()].into();
        let parsed = split_search(
            r#"namespace:ml "out of memory" pod="train-0" -warning level:ERROR url:http://x"#,
            &names,
        );
        assert_eq!(parsed.text, r#""out of memory" -warning url:http://x"#);
        assert_eq!(parsed.matchers.len(), 2);
        assert_eq!(parsed.matchers[1].value, "train-0");
        assert_eq!(parsed.level.as_deref(), Some("error"));
    }
}
