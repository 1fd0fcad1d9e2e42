//! Bench-only code: keyreg's state tree side by side with the `jmt` and
//! `akd` crates (`peer-bench`), and the plots of `docs/bench-data`
//! (`bench-plots`). Not part of the workspace; see docs/benchmarks.md.

pub mod csv;
pub mod results;
pub mod run;
pub mod trees;
pub mod workload;
