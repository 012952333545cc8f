//! The query service's configuration: the `query:` section of weft's
//! config file. Every field has a default, so an empty section is valid.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::time::serde_duration;

use crate::logql::eval::QueryLimits;

/// Settings of `weft query` (and the query side of `weft standalone`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A query running longer than this is stopped (503).
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Most series one metric query may produce.
    pub max_series: usize,
    /// Largest `limit` of a log query.
    pub max_entries: usize,
    /// Most steps of a range query.
    pub max_steps: usize,
    /// Most series × steps one query may hold.
    pub max_points: usize,
    /// Bearer token required on query endpoints, when set.
    pub auth_token: Option<String>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        let limits = QueryLimits::default();
        Self {
            timeout: Duration::from_secs(60),
            max_series: limits.max_series,
            max_entries: limits.max_entries,
            max_steps: limits.max_steps,
            max_points: limits.max_points,
            auth_token: None,
        }
    }
}

impl QueryConfig {
    /// The engine limits these settings describe.
    pub fn limits(&self) -> QueryLimits {
        QueryLimits {
            max_series: self.max_series,
            max_entries: self.max_entries,
            max_steps: self.max_steps,
            max_points: self.max_points,
            ..QueryLimits::default()
        }
    }
}
