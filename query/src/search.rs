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

/// Candidate rows of a split checked in one pass rather than in rounds of
/// the newest.
const ONE_ROUND_ROWS: usize = 1 << 16;

/// Most candidate rows one search checks in one split for a phrase.
pub const MAX_CHECKED_ROWS: usize = 1 << 20;

/// The newest `want` rows of `split` that match `query` and pass the
/// text's exact check, read from Parquet: candidates in growing rounds
/// (each round reads only rows it has not checked yet) until enough pass
/// or none are left.
fn checked_rows(split: &OpenSplit, query: &dyn Query, text: &TextExpr, want: usize) -> Result<Vec<(i64, u32, StoredRow)>, QueryError> {
    let first_round = want.saturating_mul(4).max(64);
    let mut round = first_round;
    let mut checked: HashSet<u32> = HashSet::new();
    let mut passed: Vec<(i64, u32, StoredRow)> = Vec::new();
    let newest = |passed: &mut Vec<(i64, u32, StoredRow)>| {
        passed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        passed.truncate(want);
    };
    let check = |rows: &[u32], checked: &mut HashSet<u32>, passed: &mut Vec<(i64, u32, StoredRow)>| -> Result<(), QueryError> {
        for chunk in rows.chunks(8192) {
            checked.extend(chunk);
            for (n, row) in split.stored_if(chunk, |line| text.matches(line))? {
                passed.push((row.ts, n, row));
            }
            // Only the newest `want` can be returned: no more are kept.
            if passed.len() > want.saturating_mul(2) {
                newest(passed);
            }
        }
        Ok(())
    };
    loop {
        let top = split.top_rows(query, round, true)?;
        let mut fresh: Vec<u32> = top.iter().map(|(_, row)| *row).filter(|row| !checked.contains(row)).collect();
        fresh.sort_unstable();
        check(&fresh, &mut checked, &mut passed)?;
        let mut done = passed.len() >= want || top.len() < round;
        if !done && round == first_round && split.matches_at_most(query, ONE_ROUND_ROWS)? {
            // Few enough to check the rest at once, each page read once
            // (each round reads again the pages it picks rows of: a
            // number's blocks are whole pages of candidates).
            let rest: Vec<u32> = split.all_rows(query)?.into_iter().filter(|row| !checked.contains(row)).collect();
            check(&rest, &mut checked, &mut passed)?;
            done = true;
        }
        if done {
            newest(&mut passed);
            return Ok(passed);
        }
        if checked.len() >= MAX_CHECKED_ROWS {
            return Err(QueryError::BadRequest(format!(
                "the search's words are in more than {MAX_CHECKED_ROWS} lines of one split, and each candidate line is checked (phrases have no positions in the index; numbers, and words in many lines of a split, are indexed per block of rows): add a rarer word, a label filter or a shorter time range"
            )));
        }
        round = round.saturating_mul(4);
    }
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

/// Runs a search over the splits of `tenant`.
pub fn search(store: &Arc<SplitStore>, tenant: &str, request: &SearchRequest) -> Result<SearchPage, QueryError> {
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
    // Per split: its newest `want` rows, with the rows read to check them.
    let per_split = on_all_cores(splits.len(), |i| {
        let split = &splits[i];
        let streams = split.matching_streams(&parsed.matchers);
        if streams.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // The text's words first: a rare term is in few splits, and
        // asking the term dictionaries alone is a fraction of building
        // the whole query for each split.
        let text_query = text.as_ref().map(|text| text.query(split));
        if let Some(q) = &text_query {
            if !split.matches_any(q.as_ref())? {
                return Ok((Vec::new(), Vec::new()));
            }
        }
        let query = split_query(split, &parsed, text_query, &streams, request.start, request.end);
        match &text {
            Some(text) if text.needs_check_in(split) => {
                let rows = checked_rows(split, query.as_ref(), text, want)?;
                let top = rows.iter().map(|(ts, row, _)| (*ts, *row)).collect();
                Ok((top, rows.into_iter().map(|(_, row, stored)| (row, stored)).collect()))
            }
            _ => Ok((split.top_rows(query.as_ref(), want, true)?, Vec::new())),
        }
    });
    // (ts, split index, row), newest first; ties by split then row.
    let mut candidates: Vec<(i64, usize, u32)> = Vec::new();
    // Rows already read to check a phrase.
    let mut fetched = std::collections::HashMap::new();
    for (i, result) in per_split.into_iter().enumerate() {
        let (top, stored) = result?;
        candidates.extend(top.into_iter().map(|(ts, row)| (ts, i, row)));
        fetched.extend(stored.into_iter().map(|(row, stored)| ((i, row), stored)));
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
    Ok(SearchPage { hits, next_cursor })
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
