//! weft's native search endpoint:
//! `GET /api/v1/search?query=…&start=…&end=…&limit=…&cursor=…`.

use axum::response::Response;
use weft_model::time::{format_rfc3339_nanos, now_nanos, parse_api_timestamp, NANOS_PER_SEC};

use super::{success, Params};
use crate::search::{search as run_search, SearchRequest};
use crate::{QueryError, QueryService};

fn timestamp(params: &Params, name: &str, default: i64) -> Result<i64, QueryError> {
    match params.get(name) {
        Some(text) => parse_api_timestamp(text).map_err(|e| QueryError::BadRequest(format!("invalid parameter \"{name}\": {e}"))),
        None => Ok(default),
    }
}

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
        end = ts;
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
    Ok(success(serde_json::json!({"hits": hits, "next_cursor": page.next_cursor})))
}
