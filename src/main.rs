//! The `poolplane` binary: parse flags, load the configuration, bind the
//! listener, and hand over to [`poolplane::run`] with a shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use poolplane::config::{Config, LogFormat};
use poolplane::quickstart::QuickstartOptions;
use poolplane::telemetry::{OtlpSettings, Telemetry, TelemetrySettings};
use tracing_subscriber::EnvFilter;

mod ctl;

#[derive(Parser)]
#[command(
    name = "poolplane",
    version,
    about = "PostgreSQL connection-pool control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once; the bench flags' size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API until SIGINT or SIGTERM.
    Serve {
        /// The YAML configuration file.
        #[arg(long, short, default_value = "config/poolplane.yaml")]
        config: PathBuf,
        /// Override connection_pool.server.grpc_listen.
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Override connection_pool.server.http_listen (/metrics).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Override connection_pool.server.log_format: one line of text per
        /// event, or one JSON object with the fields of its spans.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Start a throwaway PostgreSQL with a demo database and serve
    /// poolplane on it; Ctrl-C stops both and removes the cluster.
    Quickstart {
        /// PostgreSQL's server binaries (initdb, pg_ctl, postgres); searched
        /// for in the distributions' directories and PATH when not given.
        #[arg(long)]
        pg_bin: Option<PathBuf>,
        /// The gRPC listener (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_listen: SocketAddr,
        /// The HTTP listener: /metrics and the status page.
        #[arg(long, default_value = "127.0.0.1:9464")]
        http_listen: SocketAddr,
    },
    /// Validate a configuration file: prints OK or every error.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
    /// Load-test a running poolplane over gRPC (`bench internal`: the
    /// measurements that need no server).
    Bench(BenchCommand),
    /// Operate a running poolplane: pools, sessions, alerts, health, events.
    Ctl(ctl::CtlArgs),
    /// Print a completion script for a shell (e.g. `poolplane completions
    /// bash > /etc/bash_completion.d/poolplane`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCommand {
    #[command(subcommand)]
    internal: Option<BenchInternal>,
    #[command(flatten)]
    load: poolplane::bench::LoadArgs,
}

#[derive(Subcommand)]
enum BenchInternal {
    /// Measure the statistics cost per acquisition and /metrics with many
    /// pools, in this process (no server, no database).
    Internal {
        /// Pools to configure for the scrape measurement.
        #[arg(long, default_value_t = 1000)]
        pools: usize,
        /// Scrapes to time.
        #[arg(long, default_value_t = 50)]
        scrapes: usize,
        /// Acquisitions to time for the statistics cost.
        #[arg(long, default_value_t = 10_000_000)]
        iterations: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Quickstart {
            pg_bin,
            grpc_listen,
            http_listen,
        } => quickstart(QuickstartOptions {
            pg_bin,
            search_path: std::env::var_os("PATH"),
            grpc_listen,
            http_listen,
            temp_dir: std::env::temp_dir(),
            executable: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("poolplane")),
        }),
        Command::Bench(BenchCommand {
            internal:
                Some(BenchInternal::Internal {
                    pools,
                    scrapes,
                    iterations,
                }),
            ..
        }) => bench_exit(bench_internal(pools, scrapes, iterations)),
        Command::Bench(BenchCommand {
            internal: None,
            load,
        }) => bench_load(load),
        Command::Ctl(args) => ctl::main(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "poolplane", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            grpc_listen,
            http_listen,
            log_format,
        } => {
            let flags = ServeFlags {
                grpc_listen,
                http_listen,
                log_format: log_format.as_deref().and_then(LogFormat::parse),
            };
            match serve(&config, flags) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("poolplane: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "OK: {} ({} pool{})",
                file.display(),
                config.pools.len(),
                if config.pools.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

fn bench_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("poolplane bench internal: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_internal(pools: usize, scrapes: usize, iterations: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(poolplane::bench::run(pools, scrapes, iterations))?;
    println!(
        "statistics per acquisition: {:.1} ns ({} iterations)",
        report.stats_ns_per_acquisition, report.stats_iterations
    );
    println!(
        "/metrics with {} pools: mean {:.2} ms, max {:.2} ms over {} scrapes, {} bytes",
        report.pools,
        report.scrape_mean.as_secs_f64() * 1000.0,
        report.scrape_max.as_secs_f64() * 1000.0,
        report.scrapes,
        report.scrape_bytes
    );
    if let (Some(before), Some(after)) = (report.rss_before_kib, report.rss_after_kib) {
        println!(
            "resident memory: {:.1} MiB before the pools, {:.1} MiB with them",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    Ok(())
}

/// `poolplane bench`: exit 0, 1 if any leak was seen, 2 on bad options or
/// an unreachable server (the calls' own errors are counted, not fatal).
fn bench_load(args: poolplane::bench::LoadArgs) -> ExitCode {
    let fail = |err: &dyn std::fmt::Display| {
        eprintln!("poolplane bench: {err}");
        ExitCode::from(2)
    };
    // The token is read here, where the environment is; it is never printed.
    let token = match args.connect.token(|name| std::env::var(name).ok()) {
        Ok(token) => token,
        Err(err) => return fail(&err),
    };
    let json = args.json.clone();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let options = match args.into_options(token, progress) {
        Ok(options) => options,
        Err(err) => return fail(&err),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("starting the async runtime: {err}")),
    };
    let report = match runtime.block_on(poolplane::bench::run_load(options)) {
        Ok(report) => report,
        Err(err) => return fail(&err),
    };
    print!("{}", report.summary());
    if let Some(path) = json {
        if let Err(err) = report.write_json(&path) {
            return fail(&err);
        }
    }
    ExitCode::from(report.exit_code())
}

/// Raises the open-file limit to what the system allows: every client and
/// every PostgreSQL connection is a descriptor, and the usual soft limit of
/// 1,024 let a thousand idle clients starve the listeners.
fn raise_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(open_files = ?limit.maximum, "raised the open-file limit"),
        Err(err) => {
            tracing::warn!(error = %err, open_files = ?limit.current, "cannot raise the open-file limit")
        }
    }
}

/// Runs the quickstart; its logs go to stderr at `warn` (unless
/// `RUST_LOG` says otherwise), so the next steps stand out on stdout.
fn quickstart(options: QuickstartOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("poolplane quickstart: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let telemetry = poolplane::telemetry::init(TelemetrySettings {
        log_format: LogFormat::Text,
        filter,
        ansi: false,
        otlp: None,
        to_stderr: true,
    });
    if let Err(err) = telemetry {
        eprintln!("poolplane quickstart: {err}");
        return ExitCode::FAILURE;
    }
    let shutdown = {
        let _inside = runtime.enter();
        // A closed terminal (SIGHUP) stops it too, cleanly: the cluster
        // must not outlive its session.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let stop = shutdown_signal();
        async move {
            match hangup {
                Ok(mut hangup) => {
                    tokio::select! {
                        () = stop => {},
                        _ = hangup.recv() => {},
                    }
                }
                Err(_) => stop.await,
            }
        }
    };
    let mut stdout = std::io::stdout();
    let run = poolplane::quickstart::run(options, shutdown, &mut stdout);
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("poolplane quickstart: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `serve`'s overrides of the configuration file.
struct ServeFlags {
    grpc_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
}

/// Installs logging (and traces, when `OTEL_*` asks); inside the runtime,
/// where the trace exporter's client lives.
fn init_telemetry(format: LogFormat) -> anyhow::Result<Telemetry> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // tokio-postgres logs every NOTICE a statement raises at info, verbatim:
    // callers' text (RAISE NOTICE) must not reach the log unless asked for
    // by name.
    let asked_for = std::env::var("RUST_LOG").is_ok_and(|spec| spec.contains("tokio_postgres"));
    if !asked_for {
        if let Ok(quiet) = "tokio_postgres=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    // Colours only for a person at a terminal, never in a log file or pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let otlp = otlp_from_environment()?;
    let exporting = otlp
        .as_ref()
        .map(|otlp| poolplane::telemetry::endpoint_for_display(&otlp.endpoint));
    let telemetry = poolplane::telemetry::init(TelemetrySettings {
        log_format: format,
        filter,
        ansi,
        otlp,
        to_stderr: false,
    })?;
    match exporting {
        Some(endpoint) => tracing::info!(%endpoint, "exporting traces over OTLP/gRPC"),
        None => tracing::debug!("traces off (no OTEL_EXPORTER_OTLP_ENDPOINT)"),
    }
    Ok(telemetry)
}

/// An OTLP/gRPC endpoint must be an http(s) URL with a host; the error
/// never repeats it (it may hold a password).
fn check_endpoint(endpoint: &str) -> anyhow::Result<()> {
    let uri: Option<http::Uri> = endpoint.parse().ok();
    let usable = uri.as_ref().is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|host| !host.is_empty())
            && uri
                .authority()
                .is_some_and(|authority| port_is_valid(authority.as_str()))
    });
    if usable {
        Ok(())
    } else {
        anyhow::bail!(
            "OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is not an http:// or https:// URL with a host and port (not repeated here: it may hold a password)"
        )
    }
}

/// Whether an authority's port, if it has one, is a port (`http::Uri`
/// keeps one it cannot read).
fn port_is_valid(authority: &str) -> bool {
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if host_port.ends_with(']') {
        return true;
    }
    match host_port.rsplit_once(':') {
        Some((_, port)) => port.parse::<u16>().is_ok_and(|port| port > 0),
        None => true,
    }
}

/// Traces are exported when the standard OpenTelemetry variables ask for
/// it: an OTLP endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) or `OTEL_TRACES_EXPORTER=otlp`; never
/// with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
fn otlp_from_environment() -> anyhow::Result<Option<OtlpSettings>> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter = var("OTEL_TRACES_EXPORTER");
    match exporter.as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => anyhow::bail!(
            "OTEL_TRACES_EXPORTER={other}: poolplane exports traces with otlp (or none)"
        ),
    }
    let endpoint =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let endpoint = match (endpoint, exporter) {
        (Some(endpoint), _) => endpoint,
        (None, Some(_)) => "http://localhost:4317".to_string(),
        (None, None) => return Ok(None),
    };
    check_endpoint(&endpoint)?;
    let protocol =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol.filter(|protocol| protocol != "grpc") {
        anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: poolplane exports OTLP over grpc only"
        );
    }
    let timeout_ms = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
    {
        None => 10_000,
        Some(ms) => ms
            .parse::<u64>()
            .with_context(|| format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms}: milliseconds expected"))?,
    };
    Ok(Some(OtlpSettings {
        endpoint,
        service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "poolplane".to_string()),
        timeout: std::time::Duration::from_millis(timeout_ms),
    }))
}

fn serve(path: &std::path::Path, flags: ServeFlags) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (telemetry, shutdown) = {
        let _inside = runtime.enter();
        let telemetry = init_telemetry(flags.log_format.unwrap_or(config.server.log_format))?;
        (telemetry, shutdown_signal())
    };
    raise_file_limit();
    let served = runtime.block_on(serve_config(path, config, flags, shutdown));
    // Exports the spans still queued (the exporter needs the runtime).
    runtime
        .block_on(async { tokio::task::spawn_blocking(move || telemetry.shutdown()).await })
        .ok();
    served
}

async fn serve_config(
    path: &std::path::Path,
    config: Config,
    flags: ServeFlags,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ServeFlags {
        grpc_listen,
        http_listen,
        ..
    } = flags;
    let grpc_addr = grpc_listen.unwrap_or(config.server.grpc_listen);
    if let Some(why) = config.server.exposure(grpc_addr) {
        anyhow::bail!("refusing to serve: {why}");
    }
    if !grpc_addr.ip().is_loopback() && config.server.auth.is_on() && config.server.tls.is_none() {
        tracing::warn!(%grpc_addr, "callers' credentials cross the network in cleartext: configure server.tls (or a mesh that encrypts)");
    }
    if config.server.allow_insecure && !grpc_addr.ip().is_loopback() && !config.server.auth.is_on()
    {
        tracing::warn!(%grpc_addr, "serving the API without authentication on a non-loopback address (server.allow_insecure)");
    }
    let http_addr = http_listen.unwrap_or(config.server.http_listen);
    if !http_addr.ip().is_loopback() && config.server.metrics_token.is_none() {
        tracing::warn!(%http_addr, "/metrics is served without a token on a non-loopback address: anyone who reaches it sees every pool's name and numbers (server.metrics_token_env)");
    }
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC listener on {grpc_addr}"))?;
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {http_addr}"))?;
    tracing::info!(%grpc_addr, "gRPC listening");
    tracing::info!(%http_addr, "HTTP listening (/metrics)");
    let app = poolplane::App::start(&config);
    app.set_config_file(path.to_path_buf());
    reload_on_hangup(std::sync::Arc::clone(&app));
    poolplane::serve(app, poolplane::Listeners { grpc, http }, shutdown).await
}

/// SIGHUP reloads the configuration file (and no longer ends the process).
fn reload_on_hangup(app: std::sync::Arc<poolplane::App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: reload with PoolAdmin.ReloadConfig");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged (and published) by the reload itself.
                let _ = app.reload_config().await;
            }
        });
    }
}

/// Listens for SIGINT and SIGTERM from now on (so neither ends the process
/// the default way any more); the future resolves on either. Called inside
/// the runtime, before the listeners exist: a SIGTERM that arrives once
/// they answer always gets a graceful shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {},
                    _ = terminate.recv() => {},
                }
            }
            (Ok(mut only), Err(err)) | (Err(err), Ok(mut only)) => {
                tracing::warn!(error = %err, "cannot listen for one of SIGINT and SIGTERM");
                only.recv().await;
            }
            (Err(err), Err(_)) => {
                tracing::warn!(error = %err, "cannot listen for SIGINT or SIGTERM: stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_runs_a_load_and_bench_internal_the_measurements() {
        let load = Cli::try_parse_from(["poolplane", "bench", "--clients", "3"]).expect("parses");
        assert!(matches!(
            load.command,
            Command::Bench(BenchCommand { internal: None, ref load }) if load.clients == 3
        ));
        let internal = Cli::try_parse_from(["poolplane", "bench", "internal", "--pools", "7"])
            .expect("parses");
        assert!(matches!(
            internal.command,
            Command::Bench(BenchCommand {
                internal: Some(BenchInternal::Internal { pools: 7, .. }),
                ..
            })
        ));
        // The old in-process mode is gone.
        assert!(Cli::try_parse_from(["poolplane", "bench", "--postgres", "h:1"]).is_err());
    }
}
