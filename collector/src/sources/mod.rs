//! Where the collector's data comes from. Each source is a folder with its
//! config, its logic and its tests.

pub mod gpu;
pub mod otlp;
pub mod pod_logs;
