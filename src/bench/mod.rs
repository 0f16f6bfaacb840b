//! `poolplane bench internal` (`internal.rs`): measurements that need no
//! server and no database. docs/benchmarks.md has the numbers.

mod internal;

pub use internal::{run, BenchReport};
