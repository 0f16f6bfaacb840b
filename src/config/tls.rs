//! TLS material for connections to PostgreSQL: the CA certificates that
//! verify the server and an optional client certificate, read and parsed
//! once at load so a bad file is a config error, not a failed connect.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Parsed certificates. Shared by every pool; compared by identity.
pub struct TlsMaterial {
    /// Trust anchors for verify-ca / verify-full (and require, when given).
    pub roots: Vec<CertificateDer<'static>>,
    /// Client certificate chain and key, for servers that ask for one.
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// What `security.ssl` names, loaded.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles(pub Option<Arc<TlsMaterial>>);

impl PartialEq for TlsFiles {
    fn eq(&self, other: &TlsFiles) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl TlsFiles {
    pub fn has_roots(&self) -> bool {
        self.0.as_ref().is_some_and(|m| !m.roots.is_empty())
    }
}

/// A problem with one of the files: the `security.ssl` key it came from and why.
pub(crate) struct TlsFileError {
    pub(crate) field: &'static str,
    pub(crate) message: String,
}

pub(crate) fn load(
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<TlsMaterial, TlsFileError> {
    let roots = match ca {
        Some(path) => certificates("ca_certificate", path)?,
        None => Vec::new(),
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("client_certificate", cert)?;
            let pem = read_pem("client_key", key)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsFileError {
                field: "client_key",
                message: format!("`{key}` holds no usable PEM private key: {err}"),
            })?;
            Some((chain, key))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(TlsFileError {
                field: "client_key",
                message: "missing: client_certificate needs its client_key".into(),
            })
        }
        (None, Some(_)) => {
            return Err(TlsFileError {
                field: "client_certificate",
                message: "missing: client_key needs its client_certificate".into(),
            })
        }
    };
    Ok(TlsMaterial { roots, client })
}

/// The gRPC listener's TLS files (`server.tls`): the paths, kept so the
/// certificate can be read again when it changes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: String,
    pub key_file: String,
    /// Client certificates signed by this CA are required (mutual TLS).
    pub client_ca_file: Option<String>,
}

/// A server certificate chain and its key, read from `tls`'s files.
pub type ServerIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl ServerTls {
    /// Reads the certificate chain and key (at load, and at each change).
    pub fn identity(&self) -> Result<ServerIdentity, String> {
        let chain = certificates("cert_file", &self.cert_file).map_err(|e| e.message)?;
        let pem = read_pem("key_file", &self.key_file).map_err(|e| e.message)?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|err| format!("`{}` holds no usable PEM private key: {err}", self.key_file))?;
        Ok((chain, key))
    }

    /// Reads the client CA's certificates, if mutual TLS is on.
    pub fn client_roots(&self) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
        self.client_ca_file
            .as_deref()
            .map(|path| certificates("client_ca_file", path).map_err(|e| e.message))
            .transpose()
    }
}

/// The largest certificate or key file read (a long chain is a few KiB).
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

fn read_pem(field: &'static str, path: &str) -> Result<Vec<u8>, TlsFileError> {
    super::files::read_regular(path, MAX_PEM_FILE_BYTES).map_err(|err| TlsFileError {
        field,
        message: format!("cannot read `{path}`: {err}"),
    })
}

fn certificates(
    field: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read_pem(field, path)?;
    let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match parsed {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsFileError {
            field,
            message: format!("`{path}` holds no PEM certificate"),
        }),
        Err(err) => Err(TlsFileError {
            field,
            message: format!("`{path}` is not valid PEM: {err}"),
        }),
    }
}
