//! weft's native search endpoint:
//! `GET /api/v1/search?query=…&start=…&end=…&limit=…&cursor=…`.

use axum::response::Response;
use weft_model::time::{format_rfc3339_nanos, now_nanos, NANOS_PER_SEC};

use super::{api_timestamp as timestamp, success, Params};
use crate::search::{search as run_search, SearchRequest};
use crate::{QueryError, QueryService};

/// Runs a search; results newest first with their labels.
pub fn search(service: &QueryService, tenant: &str, params: &Params) -> Result<Response, QueryError> {
    let query = params
        .get("query")
        .ok_or_else(|| QueryError::BadRequest("invalid parameter \"query\": the search expression is empty".into()))?;
    let mut end = timestamp(params, "end", now_nanos())?;
    let start = timestamp(params, "start", end - 7 * 86_400 * NANOS_PER_SEC)?;
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| QueryError::BadRequest(format!("invalid parameter \"limit\": {text:?}")))?,
        None => 100,
    };
    let mut skip_at_end = 0;
    if let Some(cursor) = params.get("cursor") {
        let (ts, skip) = cursor
            .split_once(':')
            .and_then(|(t, s)| Some((t.parse::<i64>().ok()?, s.parse::<usize>().ok()?)))
            .ok_or_else(|| {
                QueryError::BadRequest(format!(
                    "invalid parameter \"cursor\": {cursor:?} is not <ts>:<skip> from a previous page"
                ))
            })?;
        end = super::within_api_range(ts, "cursor")?;
        skip_at_end = skip;
    }
    if end < start {
        return Err(QueryError::BadRequest(
            "invalid parameter \"end\": the end must not be before the start".into(),
        ));
    }
    let request = SearchRequest {
        query: query.to_string(),
        start,
        end,
        limit,
        skip_at_end,
    };
    let page = run_search(service.engine.store(), tenant, &request)?;
    let hits: Vec<serde_json::Value> = page
        .hits
        .into_iter()
        .map(|hit| {
            serde_json::json!({
                "ts": hit.ts.to_string(),
                "time": format_rfc3339_nanos(hit.ts),
                "labels": hit.labels.to_json(),
                "level": hit.level,
                "ml_event": hit.ml_event,
                "line": hit.line,
            })
        })
        .collect();
    Ok(success(serde_json::json!({
        "hits": hits,
        "next_cursor": page.next_cursor,
        "stats": {"splits": page.stats.splits, "lines_checked": page.stats.lines_checked},
    })))
}

fn millis_time(ms: i64) -> String {
    format_rfc3339_nanos(ms.saturating_mul(1_000_000))
}

fn mark_json(mark: &crate::runs::LogMark, end: i64) -> serde_json::Value {
    serde_json::json!({
        "ts": mark.ts.to_string(),
        "time": format_rfc3339_nanos(mark.ts),
        "seconds_ago": ((end - mark.ts).max(0) / NANOS_PER_SEC),
        "pod": mark.pod,
        "level": mark.level,
        "ml_event": mark.ml_event,
        "line": mark.line,
    })
}

/// `GET /api/v1/runs/{run}/ranks?since=6h` (or `start`/`end`): per rank of
/// the run, the last log line, last step and last tagged event, with the
/// rank that went quiet first and the one furthest behind.
pub fn run_ranks(service: &QueryService, tenant: &str, params: &Params, run: &str) -> Result<Response, QueryError> {
    if run.is_empty() || run.len() > 253 {
        return Err(QueryError::BadRequest("invalid run: expected 1 to 253 characters".into()));
    }
    let end = timestamp(params, "end", now_nanos())?;
    let since = match params.get("since") {
        Some(text) => {
            weft_model::time::parse_duration(text).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"since\": {e}")))?
        }
        None => 6 * 3600 * NANOS_PER_SEC,
    };
    let start = match params.get("start") {
        Some(_) => timestamp(params, "start", 0)?,
        None => super::within_api_range(end.saturating_sub(since), "since")?,
    };
    if end <= start {
        return Err(QueryError::BadRequest(
            "invalid parameter \"end\": the end must be after the start".into(),
        ));
    }
    let metrics = super::prometheus::store(service, tenant);
    let found = crate::runs::run_ranks(service.engine.store(), &metrics, tenant, run, start, end)?;
    let ranks: Vec<serde_json::Value> = found
        .ranks
        .iter()
        .map(|r| {
            serde_json::json!({
                "rank": r.rank,
                "pods": r.pods.iter().map(|(ns, pod)| serde_json::json!({"namespace": ns, "pod": pod})).collect::<Vec<_>>(),
                "last_log": r.last_log.as_ref().map(|m| mark_json(m, end)),
                "last_step": r.last_step.map(|(step, ms)| serde_json::json!({
                    "step": step,
                    "time": millis_time(ms),
                    "seconds_ago": (end / 1_000_000 - ms).max(0) / 1000,
                })),
                "last_event": r.last_event.as_ref().map(|m| mark_json(m, end)),
            })
        })
        .collect();
    Ok(success(serde_json::json!({
        "run": run,
        "start": format_rfc3339_nanos(start),
        "end": format_rfc3339_nanos(end),
        "ranks": ranks,
        "first_quiet": found.first_quiet().map(|r| serde_json::json!({
            "rank": r.rank,
            "last_log": r.last_log.as_ref().map(|m| format_rfc3339_nanos(m.ts)),
        })),
        "furthest_behind": found.furthest_behind().map(|r| serde_json::json!({
            "rank": r.rank,
            "step": r.last_step.map(|(s, _)| s),
        })),
    })))
}
