//! `poolplane ctl`: the operator's command line over the gRPC API
//! (PoolAdmin, PoolEvents), what PgBouncer's admin console is to PgBouncer.
//! It owns the subcommands and their flags (`args.rs`), the calls
//! (`commands.rs`, `watch.rs`), the two outputs (`render.rs` and `table.rs`
//! for people, `json.rs` for scripts) and the exit codes (`error.rs`, the
//! one place a failure becomes a message and a code). Connecting, TLS and
//! the token are `poolplane::client`'s, shared with `poolplane bench`.
//!
//! Part of the binary, not the library: it reads the environment (the
//! token, `NO_COLOR`) and listens for Ctrl-C, which the library never does.

mod args;
mod commands;
mod error;
mod json;
mod render;
mod table;
mod watch;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use poolplane::client;
use poolplane::proto::pool_admin_client::PoolAdminClient;
use poolplane::proto::pool_events_client::PoolEventsClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

pub(crate) use args::CtlArgs;
use args::Output;
use error::CtlError;

/// Runs one `poolplane ctl` command; the exit code is `error.rs`'s.
pub(crate) fn main(args: CtlArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CtlError::Closed) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error.message());
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(args: CtlArgs) -> Result<(), CtlError> {
    // Everything local is checked before anything connects.
    let target = args.connect.target()?;
    let token = args.connect.token(|name| std::env::var(name).ok())?;
    let authorization = token.as_ref().map(client::authorization).transpose()?;
    commands::check(&args.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Local(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let channel = target.channel().await?;
        let api = Api {
            channel,
            authorization,
            timeout: args.timeout,
            output: args.output,
            color: colour_wanted(),
        };
        commands::run(&api, args.command).await
    })
}

/// Colours only for a person at a terminal who did not say NO_COLOR
/// (no-color.org: set and not empty).
fn colour_wanted() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// One connection to the server and how to call and answer.
pub(crate) struct Api {
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    /// Each unary call's deadline.
    timeout: Duration,
    output: Output,
    color: bool,
}

impl Api {
    fn admin(&self) -> PoolAdminClient<Channel> {
        PoolAdminClient::new(self.channel.clone())
    }

    fn events(&self) -> PoolEventsClient<Channel> {
        PoolEventsClient::new(self.channel.clone())
    }

    /// A unary request: the token and the deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.request_within(message, self.timeout)
    }

    /// A request with its own deadline (a drain may take longer).
    fn request_within<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = client::request(message, self.authorization.as_ref());
        request.set_timeout(timeout);
        request
    }

    /// A stream's request: the token, no deadline.
    fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        client::request(message, self.authorization.as_ref())
    }

    /// Prints an answer: pretty JSON, or the text `table` renders.
    fn answer(
        &self,
        json: serde_json::Value,
        table: impl FnOnce() -> String,
    ) -> Result<(), CtlError> {
        match self.output {
            Output::Json => {
                let text = serde_json::to_string_pretty(&json)
                    .map_err(|e| CtlError::Local(format!("JSON: {e}")))?;
                write_out(&format!("{text}\n"))
            }
            Output::Table => write_out(&table()),
        }
    }
}

/// Writes to stdout now; a closed pipe (`| head`) is [`CtlError::Closed`].
fn write_out(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CtlError::Closed),
        Err(e) => Err(CtlError::Local(format!("cannot write the output: {e}"))),
    }
}
