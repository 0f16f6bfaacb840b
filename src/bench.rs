//! `poolplane bench`: the measurements behind docs/benchmarks.md, runnable
//! on any machine with no database: the cost per acquisition of keeping
//! the statistics, and the `/metrics` scrape time and resident memory with
//! many pools configured.

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

/// Where `poolplane bench --postgres` measures the query path.
#[derive(Debug, Clone)]
pub struct QueryBenchConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// The environment variable holding the password, if one is needed.
    pub password_env: Option<String>,
    pub clients: usize,
    pub max_connections: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct QueryBenchReport {
    pub direct_p50: Duration,
    pub direct_p99: Duration,
    pub calls: usize,
    pub calls_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: usize,
}

/// `SELECT 1` straight over one tokio-postgres connection (the floor),
/// then through poolplane's gRPC `Execute` from `clients` concurrent
/// callers on a pool of `max_connections`, all on loopback in this process.
pub async fn run_query(config: QueryBenchConfig) -> anyhow::Result<QueryBenchReport> {
    let password = match &config.password_env {
        Some(name) => Some(std::env::var(name)?),
        None => None,
    };
    let (direct_p50, direct_p99) = direct_latency(&config, password.as_deref()).await?;

    let mut yaml = format!(
        "connection_pool:\n  health_monitoring:\n    enabled: false\n  pools:\n    - name: bench\n      host: {}\n      port: {}\n      user: {}\n      database: {}\n      max_connections: {}\n      min_connections: {}\n",
        config.host, config.port, config.user, config.database, config.max_connections, config.max_connections
    );
    if let Some(name) = &config.password_env {
        yaml.push_str(&format!("      password_env: {name}\n"));
    }
    let app = App::start(&Config::parse(&yaml, "bench")?);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(
        std::sync::Arc::clone(&app),
        crate::Listeners { grpc, http },
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let deadline = Instant::now() + config.duration;
    let callers = (0..config.clients).map(|_| {
        let mut client = crate::proto::query_client::QueryClient::new(channel.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let request = crate::proto::ExecuteRequest {
                    pool: "bench".into(),
                    sql: "SELECT 1".into(),
                    ..Default::default()
                };
                let started = Instant::now();
                match client.execute(request).await {
                    Ok(_) => latencies.push(started.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for caller in futures::future::join_all(callers).await {
        let (mut got, failed) = caller?;
        latencies.append(&mut got);
        errors += failed;
    }
    let _ = stop.send(());
    server.await??;
    latencies.sort_unstable();
    Ok(QueryBenchReport {
        direct_p50,
        direct_p99,
        calls: latencies.len(),
        calls_per_second: latencies.len() as f64 / config.duration.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        errors,
    })
}

async fn direct_latency(
    config: &QueryBenchConfig,
    password: Option<&str>,
) -> anyhow::Result<(Duration, Duration)> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .dbname(&config.database);
    if let Some(password) = password {
        pg.password(password);
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let started = Instant::now();
        client.query("SELECT 1", &[]).await?;
        latencies.push(started.elapsed());
    }
    drop(client);
    let _ = driver.await;
    latencies.sort_unstable();
    Ok((percentile(&latencies, 0.50), percentile(&latencies, 0.99)))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
