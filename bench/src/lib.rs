//! Code the benchmark commands share (`ota-bench`, `delta-bench`).

pub mod agent;
