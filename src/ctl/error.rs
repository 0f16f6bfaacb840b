//! The one place `poolplane ctl`'s failures become a message on stderr and
//! an exit code a script can rely on (README, "Operate it"):
//!
//! | code | when |
//! | --- | --- |
//! | 0 | done |
//! | 1 | the server answered with an error not listed below (or stdout failed) |
//! | 2 | usage: bad flags (clap's own), or a file they name cannot be read |
//! | 3 | cannot connect: unreachable, TLS handshake failed, connection lost or silent |
//! | 4 | NOT_FOUND: no such pool, session or alert |
//! | 5 | UNAUTHENTICATED or PERMISSION_DENIED: no, a wrong, or a too weak token |

use poolplane::client::ClientError;

use super::table::printable;

pub(crate) const USAGE: u8 = 2;
pub(crate) const UNREACHABLE: u8 = 3;
pub(crate) const NOT_FOUND: u8 = 4;
pub(crate) const DENIED: u8 = 5;
pub(crate) const SERVER_ERROR: u8 = 1;

/// Why a `ctl` command failed.
#[derive(Debug)]
pub(crate) enum CtlError {
    /// Flags that make no sense together, or a file they name.
    Usage(String),
    /// No connection (or the connection broke).
    Unreachable { addr: String, error: String },
    /// The server's answer.
    Status(tonic::Status),
    /// Something on this side failed (the runtime, writing stdout).
    Local(String),
    /// The server did part of what was asked (a reload some pools refused).
    PartlyDone(String),
    /// Stdout was closed (`| head`): stop quietly, exit 0.
    Closed,
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> CtlError {
        CtlError::Status(status)
    }
}

impl From<ClientError> for CtlError {
    fn from(error: ClientError) -> CtlError {
        match error {
            ClientError::Unreachable { addr, error } => CtlError::Unreachable { addr, error },
            other => CtlError::Usage(other.to_string()),
        }
    }
}

/// A status that tonic made itself because the transport failed (it keeps
/// the cause as the source; a status the server sent has none): refused,
/// reset, or no answer to a keepalive ping.
fn transport_failed(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
    ) && std::error::Error::source(status).is_some()
}

/// A status that tonic made itself because `--timeout` passed with no
/// answer (it keeps the cause as the source).
fn timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled && std::error::Error::source(status).is_some()
}

/// The causes of a transport failure, outermost first, each once.
fn causes(status: &tonic::Status) -> String {
    let mut parts: Vec<String> = vec![status.message().to_string()];
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    printable(&parts.join(": "))
}

impl CtlError {
    /// The exit code (see the table above).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => USAGE,
            CtlError::Unreachable { .. } => UNREACHABLE,
            CtlError::Status(status) if transport_failed(status) || timed_out(status) => {
                UNREACHABLE
            }
            CtlError::Status(status) => match status.code() {
                tonic::Code::NotFound => NOT_FOUND,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => DENIED,
                _ => SERVER_ERROR,
            },
            CtlError::Local(_) | CtlError::PartlyDone(_) => SERVER_ERROR,
            CtlError::Closed => 0,
        }
    }

    /// The line for stderr: `poolplane ctl: <code>: <message>` for an
    /// answer; what the server sent is shown without control characters.
    pub(crate) fn message(&self) -> String {
        let what = match self {
            CtlError::Usage(message) => message.clone(),
            CtlError::Unreachable { addr, error } => {
                format!("cannot reach poolplane at {addr}: {error}")
            }
            CtlError::Status(status) if transport_failed(status) => {
                format!("lost the connection to poolplane: {}", causes(status))
            }
            CtlError::Status(status) if timed_out(status) => {
                "no answer within --timeout (the server may still be working on it)".to_string()
            }
            CtlError::Status(status) => {
                format!("{:?}: {}", status.code(), printable(status.message()))
            }
            CtlError::Local(message) => message.clone(),
            CtlError::PartlyDone(message) => printable(message),
            CtlError::Closed => String::new(),
        };
        format!("poolplane ctl: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn every_failure_has_its_documented_code() {
        let code = |e: CtlError| e.exit_code();
        assert_eq!(code(Status::not_found("pool `x`").into()), 4);
        assert_eq!(code(Status::unauthenticated("who?").into()), 5);
        assert_eq!(code(Status::permission_denied("no").into()), 5);
        assert_eq!(code(Status::already_exists("x").into()), 1);
        assert_eq!(code(Status::new(Code::Unavailable, "unhealthy").into()), 1);
        assert_eq!(code(CtlError::Usage("bad".into())), 2);
        assert_eq!(
            code(CtlError::Unreachable {
                addr: "http://x".into(),
                error: "refused".into()
            }),
            3
        );
    }

    #[test]
    fn a_message_names_the_code_and_shows_no_control_characters() {
        let error = CtlError::from(Status::not_found("pool `a\u{1b}[2J` not found"));
        assert_eq!(
            error.message(),
            "poolplane ctl: NotFound: pool `a\\u{1b}[2J` not found"
        );
    }
}
