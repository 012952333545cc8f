//! PromQL over stored metric series: a sample source trait (metric splits,
//! or memory for tests), the evaluator and its functions, and a runner for
//! test files in the format of Prometheus' `promql/promqltest` suite.

pub mod engine;
pub mod functions;
pub mod source;
pub mod testfile;
