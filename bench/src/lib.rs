//! Herald's benchmarks and fault-injection checks.
//!
//! `herald-load` drives a running Herald (or the plain cqrs-es app in
//! [`plain`]) over HTTP and reports what it measured as JSON, so that
//! `bench/run.sh` can put Herald, its peer and the machine's own limit side by
//! side in one run, and `bench/faults.sh` can prove afterwards that nothing an
//! answer promised was lost or doubled.

pub mod check;
pub mod driver;
pub mod herald;
pub mod herald_mix;
pub mod herald_single;
pub mod lag;
pub mod plain;
pub mod plain_mix;
pub mod proxy;
pub mod read_load;
pub mod rss;
pub mod seed;
pub mod stats;
