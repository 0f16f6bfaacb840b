//! The gRPC listener's connections: plain TCP, or TLS (rustls).
//!
//! With TLS, the server certificate is read again whenever its files
//! change on disk (cert-manager rotates them in place), with no restart;
//! a certificate that fails to load is logged and the previous one kept.
//! With a client CA, clients must present a certificate it signed. Each
//! handshake runs in a task of its own with a timeout, so a client that
//! connects and says nothing holds up no one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ServerTls;

/// How often the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// One accepted connection, and its place under the listener's limit.
pub(crate) struct Conn {
    io: Io,
    _place: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What the services may learn of a caller's connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The names (DNS and URI subject alternative names) of the client
    /// certificate, which the handshake verified against the client CA.
    pub(crate) certificate_names: Arc<[String]>,
    /// The client's address.
    pub(crate) peer: Option<std::net::SocketAddr>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let names = match &self.io {
            Io::Plain(_) => Vec::new(),
            Io::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(certificate_names)
                .unwrap_or_default(),
        };
        let peer = match &self.io {
            Io::Plain(tcp) => tcp.peer_addr().ok(),
            Io::Tls(tls) => tls.get_ref().0.peer_addr().ok(),
        };
        ConnInfo {
            certificate_names: names.into(),
            peer,
        }
    }
}

/// A certificate's DNS and URI subject alternative names.
fn certificate_names(certificate: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    parsed
        .valid_dns_names()
        .chain(parsed.valid_uri_names())
        .map(str::to_string)
        .collect()
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// How the listener takes connections.
pub(crate) struct Listening<'a> {
    pub(crate) tls: Option<&'a ServerTls>,
    /// Connections open at once, at most.
    pub(crate) max_connections: u32,
    /// How long a client may take to start speaking (plaintext) or finish
    /// its TLS handshake.
    pub(crate) handshake_timeout: Duration,
}

/// The connections `listener` accepts, through TLS if asked.
pub(crate) fn incoming(listener: TcpListener, how: Listening<'_>) -> anyhow::Result<Incoming> {
    let acceptor = match how.tls {
        Some(tls) => Some(acceptor(tls)?),
        None => None,
    };
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        Handshake {
            acceptor,
            timeout: how.handshake_timeout,
        },
        Arc::new(Semaphore::new(how.max_connections as usize)),
        connections,
    ));
    Ok(Box::pin(ReceiverStream::new(incoming)))
}

/// What a new connection must get through before it is served.
#[derive(Clone)]
struct Handshake {
    acceptor: Option<TlsAcceptor>,
    timeout: Duration,
}

impl Handshake {
    /// The connection, once TLS is established (or, in plaintext, once the
    /// client has said something), within the timeout.
    async fn complete(self, tcp: TcpStream) -> Option<Io> {
        let done = async {
            match self.acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => Some(Io::Tls(Box::new(tls))),
                    Err(err) => {
                        tracing::debug!(error = %err, "TLS handshake failed");
                        None
                    }
                },
                None => {
                    let mut first = [0u8; 1];
                    match tcp.peek(&mut first).await {
                        Ok(n) if n > 0 => Some(Io::Plain(tcp)),
                        _ => None,
                    }
                }
            }
        };
        let completed = tokio::time::timeout(self.timeout, done).await;
        if completed.is_err() {
            tracing::debug!("a client said nothing within the handshake timeout");
        }
        completed.ok().flatten()
    }
}

/// Accepts until nobody takes connections any more (the server stopped).
async fn accept_loop(
    listener: TcpListener,
    handshake: Handshake,
    places: Arc<Semaphore>,
    connections: tokio::sync::mpsc::Sender<io::Result<Conn>>,
) {
    let mut refused = Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = connections.closed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(err) => {
                // Out of file descriptors, most likely: say so, and let
                // some close before trying again.
                tracing::warn!(error = %err, "cannot accept a gRPC connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            refused.one_more();
            continue;
        };
        // Small responses must not wait for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (handshake, connections) = (handshake.clone(), connections.clone());
        tokio::spawn(async move {
            if let Some(io) = handshake.complete(tcp).await {
                let _ = connections.send(Ok(Conn { io, _place: place })).await;
            }
        });
    }
}

/// Connections refused at the limit, logged at most every few seconds.
#[derive(Default)]
struct Refusals {
    since_last_log: u64,
    last_log: Option<std::time::Instant>,
}

impl Refusals {
    fn one_more(&mut self) {
        self.since_last_log += 1;
        let due = self
            .last_log
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
        if due {
            tracing::warn!(
                refused = self.since_last_log,
                "refusing gRPC connections: server.max_connections are open"
            );
            self.since_last_log = 0;
            self.last_log = Some(std::time::Instant::now());
        }
    }
}

fn acceptor(tls: &ServerTls) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Reloading::start(tls.clone(), Arc::clone(&provider))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match tls.client_roots().map_err(anyhow::Error::msg)? {
        Some(roots) => {
            let mut store = RootCertStore::empty();
            for root in roots {
                store.add(root)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // gRPC runs over HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The current server certificate, replaced when its files change.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| Arc::clone(&current))
    }
}

impl Reloading {
    /// Loads the certificate now and watches its files while the resolver
    /// is in use.
    fn start(
        tls: ServerTls,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<Arc<Reloading>> {
        let key = certified_key(&tls, &provider).map_err(anyhow::Error::msg)?;
        let reloading = Arc::new(Reloading {
            current: RwLock::new(Arc::new(key)),
        });
        tokio::spawn(watch(tls, provider, Arc::downgrade(&reloading)));
        Ok(reloading)
    }
}

/// Checks the files every `RELOAD_CHECK` and loads a changed certificate,
/// until the resolver is dropped.
async fn watch(
    tls: ServerTls,
    provider: Arc<rustls::crypto::CryptoProvider>,
    reloading: Weak<Reloading>,
) {
    let mut seen = stamps(&tls);
    loop {
        tokio::time::sleep(RELOAD_CHECK).await;
        let Some(reloading) = reloading.upgrade() else {
            return;
        };
        let now = stamps(&tls);
        if now == seen {
            continue;
        }
        seen = now;
        match certified_key(&tls, &provider) {
            Ok(key) => {
                if let Ok(mut current) = reloading.current.write() {
                    *current = Arc::new(key);
                }
                tracing::info!(cert_file = %tls.cert_file, "reloaded the gRPC listener's certificate");
            }
            // Half-written files, a key that does not match yet: keep the
            // old certificate and try again at the next change.
            Err(error) => {
                tracing::warn!(cert_file = %tls.cert_file, %error, "cannot reload the gRPC listener's certificate; keeping the previous one")
            }
        }
    }
}

/// When and how large the certificate and key files are.
fn stamps(tls: &ServerTls) -> [Option<(SystemTime, u64)>; 2] {
    [&tls.cert_file, &tls.key_file].map(|path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    })
}

fn certified_key(
    tls: &ServerTls,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let (chain, key) = tls.identity()?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("`{}`: {err}", tls.key_file))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|err| {
        format!(
            "`{}` does not belong to `{}`: {err}",
            tls.key_file, tls.cert_file
        )
    })?;
    Ok(certified)
}
