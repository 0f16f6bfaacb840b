//! TLS to PostgreSQL with rustls: the connector a pool's sslmode asks for.
//!
//! libpq's meanings: `require` and `prefer` encrypt and verify the server
//! only when a CA is configured; `verify-ca` checks the chain but not the
//! host name; `verify-full` checks both. Cancel requests go over plain TCP,
//! which PostgreSQL accepts whatever pg_hba.conf says.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PoolConfig, SslMode};

/// How a pool's connections are made.
pub(crate) enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// Builds the connector for a pool; errors are about the certificates.
pub(crate) fn connector(config: &PoolConfig) -> Result<Tls, String> {
    if config.sslmode == SslMode::Disable {
        return Ok(Tls::Plain);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let material = config.tls.0.as_deref();
    let roots = material.map(|m| m.roots.as_slice()).unwrap_or_default();
    let verifier: Arc<dyn ServerCertVerifier> = if roots.is_empty() {
        if config.sslmode.needs_ca() {
            return Err(format!(
                "sslmode {} needs a CA certificate",
                config.sslmode.as_str()
            ));
        }
        Arc::new(AcceptAnyServer(Arc::clone(&provider)))
    } else {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root.clone())
                .map_err(|err| format!("CA certificate rejected: {err}"))?;
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(&provider))
                .build()
                .map_err(|err| format!("cannot build the certificate verifier: {err}"))?;
        match config.sslmode {
            SslMode::VerifyFull => webpki,
            _ => Arc::new(IgnoreHostName(webpki)),
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client_config = match material.and_then(|m| m.client.as_ref()) {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|err| format!("client certificate rejected: {err}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Tls::Rustls(MakeRustlsConnect::new(client_config)))
}

/// tokio-postgres's own mode for a pool's sslmode.
pub(crate) fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

/// `verify-ca`: the chain must lead to the CA; the name may be anything.
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` / `prefer` without a CA: encryption without authentication,
/// as libpq does. The handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
