//! The client side of the gRPC API, shared by `poolplane bench` and
//! `poolplane ctl`: the connection flags ([`ConnectArgs`]: address, TLS
//! files, bearer token, each also from the environment through clap), their
//! validation into a [`Target`], the connection itself, and the
//! `authorization` header. The token is read here (a file, or the variable a
//! lookup the binary passes in names) and is never printed.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::Secret;

/// The variable a bearer token is read from when no flag names one.
pub const TOKEN_VAR: &str = "POOLPLANE_TOKEN";

/// How long a connection (TCP, TLS, HTTP/2) may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings: one after this long without a frame, and the connection is
/// given up when its answer takes longer. A server that accepts the
/// connection but never answers (hung, stopped, a black hole) fails a call
/// or a watch within twice this, instead of at the call's deadline or never.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The server's gRPC address: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(long, env = "POOLPLANE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// PEM CA certificate that signed the server's certificate (TLS; needs https://).
    #[arg(long, value_name = "FILE", env = "POOLPLANE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --key-file).
    #[arg(
        long,
        value_name = "FILE",
        env = "POOLPLANE_CERT_FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// PEM key of the client certificate (with --cert-file).
    #[arg(
        long,
        value_name = "FILE",
        env = "POOLPLANE_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// The environment variable holding a bearer token [default: POOLPLANE_TOKEN, when set].
    #[arg(long, value_name = "NAME")]
    pub token_env: Option<String>,
    /// A file holding the bearer token (a trailing newline is dropped);
    /// --token-env wins over it, it over POOLPLANE_TOKEN.
    #[arg(long, value_name = "FILE", env = "POOLPLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// PEM files for TLS to the server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// Certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A validated address: `http://` or `https://` with the files TLS needs.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub tls: Option<TlsFiles>,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A flag, a combination of flags, or a file they name, that makes no sense.
    #[error("{0}")]
    Options(String),
    /// The server could not be reached (or the TLS handshake failed).
    #[error("cannot reach poolplane at {addr}: {error}")]
    Unreachable { addr: String, error: String },
}

fn bad(message: impl Into<String>) -> ClientError {
    ClientError::Options(message.into())
}

impl ConnectArgs {
    /// Checks the address against the TLS flags.
    pub fn target(&self) -> Result<Target, ClientError> {
        let addr = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let https = addr.starts_with("https://");
        if !https && !addr.starts_with("http://") {
            return Err(bad(format!(
                "--addr `{}`: use http://HOST:PORT, or https://HOST:PORT for TLS",
                self.addr
            )));
        }
        let tls = match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) if https => return Err(bad(
                "an https:// address needs --ca-file (the CA that signed the server's certificate)",
            )),
            (None, None, None) => None,
            _ if !https => {
                return Err(bad(
                    "--ca-file, --cert-file and --key-file are for TLS: use an https:// --addr",
                ))
            }
            (None, _, _) => return Err(bad("mutual TLS needs --ca-file too")),
            (Some(ca), cert, key) => Some(TlsFiles {
                ca: ca.clone(),
                identity: cert.clone().zip(key.clone()),
            }),
        };
        Ok(Target { addr, tls })
    }

    /// The bearer token, if any: the variable `--token-env` names, else the
    /// `--token-file`, else `POOLPLANE_TOKEN`. `var` reads the environment
    /// (the binary's to pass: the library reads no variable itself).
    pub fn token(
        &self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, ClientError> {
        if let Some(name) = &self.token_env {
            return match var(name) {
                Some(token) => Ok(Some(Secret::new(token))),
                None => Err(bad(format!(
                    "--token-env: the environment variable `{name}` is not set (or not UTF-8)"
                ))),
            };
        }
        if let Some(path) = &self.token_file {
            let shown = path.display();
            let text = path
                .to_str()
                .ok_or_else(|| bad(format!("--token-file {shown}: not a UTF-8 path")))?;
            let token = crate::config::read_token_file(text)
                .map_err(|e| bad(format!("--token-file {shown}: {e}")))?;
            if token.expose().is_empty() {
                return Err(bad(format!("--token-file {shown}: the file is empty")));
            }
            return Ok(Some(token));
        }
        Ok(var(TOKEN_VAR).map(Secret::new))
    }
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| bad(format!("{flag} {}: {e}", path.display())))
}

impl Target {
    /// The endpoint, TLS configured; nothing connects yet.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let mut endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| bad(format!("--addr `{}`: {e}", self.addr)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("--ca-file", &tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(
                    read_pem("--cert-file", cert)?,
                    read_pem("--key-file", key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| bad(format!("TLS: {}", crate::postgres::error_chain(&e))))?;
        }
        Ok(endpoint)
    }

    /// `count` HTTP/2 connections, each opened now (TLS handshake included):
    /// a server that cannot be reached is an error here, not at the first call.
    pub async fn channels(&self, count: usize) -> Result<Vec<Channel>, ClientError> {
        let endpoint = self.endpoint()?;
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            // The endpoint's own timeout covers TCP only: a server that
            // accepts and never answers the TLS handshake is given up here.
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await;
            let channel = match connected {
                Ok(Ok(channel)) => channel,
                Ok(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        addr: self.addr.clone(),
                        error: crate::postgres::error_chain(&e),
                    })
                }
                Err(_) => {
                    return Err(ClientError::Unreachable {
                        addr: self.addr.clone(),
                        error: format!(
                            "no answer within {} s (TCP, TLS and HTTP/2 set-up)",
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    })
                }
            };
            channels.push(channel);
        }
        Ok(channels)
    }

    /// One connection, opened now.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let mut channels = self.channels(1).await?;
        channels.pop().ok_or_else(|| ClientError::Unreachable {
            addr: self.addr.clone(),
            error: "no connection".into(),
        })
    }
}

/// The `authorization` header for `token`, marked sensitive (never logged
/// by tonic or hyper).
pub fn authorization(token: &Secret) -> Result<MetadataValue<Ascii>, ClientError> {
    let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
        .map_err(|_| bad("the bearer token is not a valid header value (printable ASCII only)"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A request carrying `authorization`, if any.
pub fn request<T>(message: T, authorization: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    fn args(argv: &[&str]) -> ConnectArgs {
        let mut all = vec!["client"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).expect("parses").connect
    }

    fn refused(argv: &[&str]) -> String {
        match args(argv).target() {
            Ok(target) => panic!("{argv:?} accepted: {target:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn addresses_and_tls_flags_go_together() {
        let target = args(&["--addr", "127.0.0.1:1"]).target().expect("valid");
        assert_eq!(target.addr, "http://127.0.0.1:1");
        assert!(target.tls.is_none());
        let target = args(&["--addr", "https://db:1", "--ca-file", "ca.pem"])
            .target()
            .expect("valid");
        assert!(target.tls.is_some_and(|tls| tls.identity.is_none()));
        assert!(refused(&["--addr", "https://db:1"]).contains("--ca-file"));
        assert!(refused(&["--ca-file", "ca.pem"]).contains("https://"));
        assert!(refused(&["--addr", "ftp://x"]).contains("--addr"));
        assert!(refused(&[
            "--addr",
            "https://db:1",
            "--cert-file",
            "c",
            "--key-file",
            "k"
        ])
        .contains("--ca-file too"));
    }

    #[test]
    fn the_token_comes_from_the_named_variable_then_the_file_then_poolplane_token() {
        let env = |name: &str| match name {
            "MINE" => Some("from-mine".to_string()),
            TOKEN_VAR => Some("from-default".to_string()),
            _ => None,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let file = file.display().to_string();
        let token = |argv: &[&str]| {
            args(argv)
                .token(env)
                .map(|t| t.map(|t| t.expose().to_string()))
        };
        assert_eq!(token(&[]).expect("ok").as_deref(), Some("from-default"));
        assert_eq!(
            token(&["--token-file", &file]).expect("ok").as_deref(),
            Some("from-file")
        );
        assert_eq!(
            token(&["--token-file", &file, "--token-env", "MINE"])
                .expect("ok")
                .as_deref(),
            Some("from-mine")
        );
        let unset = token(&["--token-env", "UNSET"]).expect_err("refused");
        assert!(unset.to_string().contains("`UNSET` is not set"), "{unset}");
        let missing = token(&["--token-file", "/nonexistent/token"]).expect_err("refused");
        assert!(missing.to_string().contains("--token-file"), "{missing}");
        assert_eq!(args(&[]).token(|_| None).expect("ok"), None);
    }

    #[test]
    fn the_header_is_sensitive_and_refuses_what_a_header_cannot_carry() {
        let value = authorization(&Secret::new("abc".into())).expect("valid");
        assert!(value.is_sensitive());
        assert!(authorization(&Secret::new("a\nb".into())).is_err());
    }
}
