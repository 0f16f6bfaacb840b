//! Secrets: where a pool's password comes from and a wrapper that never
//! prints its contents (Debug and Display both show `***`).

use std::fmt;

/// A password. Its Debug and Display never reveal it, so a secret inside a
/// config struct cannot leak through `{:?}` in a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself; call only where it is handed to the database driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a pool's password came from; safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    None,
    Env(String),
    File(String),
    /// Given in a CreatePool request.
    Inline,
    /// From `connection_pool.credentials`, by this name.
    Credential(String),
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::None => f.write_str("none"),
            PasswordSource::Env(name) => write!(f, "env:{name}"),
            PasswordSource::File(path) => write!(f, "file:{path}"),
            PasswordSource::Inline => f.write_str("inline"),
            PasswordSource::Credential(name) => write!(f, "credential:{name}"),
        }
    }
}

/// Reads the password a pool names; errors say which source failed and why
/// but never include any part of a secret.
pub(crate) fn resolve(
    env: Option<&str>,
    file: Option<&str>,
) -> Result<(PasswordSource, Option<Secret>), String> {
    match (env, file) {
        (Some(_), Some(_)) => Err("set either password_env or password_file, not both".into()),
        (Some(name), None) => match std::env::var(name) {
            Ok(value) => Ok((PasswordSource::Env(name.into()), Some(Secret(value)))),
            Err(_) => Err(format!(
                "environment variable `{name}` is not set (or not valid UTF-8)"
            )),
        },
        (None, Some(path)) => match read_secret_file(path) {
            // A trailing newline is an artefact of `echo secret > file`, never part of a password.
            Ok(value) => Ok((
                PasswordSource::File(path.into()),
                Some(Secret(value.trim_end_matches(['\n', '\r']).to_string())),
            )),
            Err(err) => Err(format!("cannot read password file `{path}`: {err}")),
        },
        (None, None) => Ok((PasswordSource::None, None)),
    }
}

/// The largest secret file read: far above any password or token.
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file as UTF-8 text (see `files::read_regular`).
pub(crate) fn read_secret_file(path: &str) -> std::io::Result<String> {
    let bytes = super::files::read_regular(path, MAX_SECRET_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}
