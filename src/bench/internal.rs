//! `poolplane bench internal`: the measurements behind docs/benchmarks.md
//! that need no database and no server: the cost per acquisition of keeping
//! the statistics, and the `/metrics` scrape time and resident memory with
//! many pools configured. Owns nothing else.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::pool::StatsBench;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub stats_iterations: u64,
    /// Per acquisition: outcome, wait histogram, hold histogram, statement histogram.
    pub stats_ns_per_acquisition: f64,
    pub pools: usize,
    pub scrapes: usize,
    pub scrape_mean: Duration,
    pub scrape_max: Duration,
    pub scrape_bytes: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

/// Runs both measurements; `pools` pools point at a closed local port (no
/// database is needed: the series are the same with or without one).
pub async fn run(
    pools: usize,
    scrapes: usize,
    stats_iterations: u64,
) -> anyhow::Result<BenchReport> {
    let stats_ns_per_acquisition = StatsBench::run(stats_iterations);
    let rss_before_kib = resident_kib();
    let config = Config::parse(&many_pools(pools), "bench")?;
    let app = App::start(&config);
    app.collect_now();
    let registry = prometheus::Registry::new();
    let mut times = Vec::with_capacity(scrapes);
    let mut bytes = 0;
    for _ in 0..scrapes {
        let started = Instant::now();
        let text = crate::http::render(&app, &registry)?;
        times.push(started.elapsed());
        bytes = text.len();
    }
    let rss_after_kib = resident_kib();
    app.shutdown(Duration::from_secs(1)).await;
    let total: Duration = times.iter().sum();
    Ok(BenchReport {
        stats_iterations,
        stats_ns_per_acquisition,
        pools,
        scrapes,
        scrape_mean: total / u32::try_from(scrapes.max(1)).unwrap_or(u32::MAX),
        scrape_max: times.iter().max().copied().unwrap_or_default(),
        scrape_bytes: bytes,
        rss_before_kib,
        rss_after_kib,
    })
}

fn many_pools(pools: usize) -> String {
    let mut yaml = String::from(
        "connection_pool:\n  default_pool:\n    host: 127.0.0.1\n    port: 1\n    max_connections: 10\n  health_monitoring:\n    enabled: false\n  monitoring:\n    collection_interval_ms: 3600000\n  pools:\n",
    );
    for i in 0..pools {
        yaml.push_str(&format!(
            "    - name: bench_{i:05}\n      database: db_{i}\n"
        ));
    }
    yaml
}

/// Resident set size of this process, from /proc (Linux).
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
