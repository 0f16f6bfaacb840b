//! Authentication and authorization at the API's edge.
//!
//! A tower layer reads each call's method and `authorization` header,
//! authenticates the caller (`crate::auth`), refuses what its role can
//! never do, and hands the services the caller's [`Identity`] in the
//! request's extensions; the services then check the pool a request names
//! ([`authorize`]). Every method of the API is in [`ACCESS`]: one that is
//! not is open to admins only, so a new RPC is never open by mistake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::auth::{AuthError, Authenticator, Identity, Right};

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials: probes and tools (grpc.health, reflection).
    Open,
    /// An identity whose role grants this right (on the pool the request
    /// names, where it names one).
    Needs(Right),
}

/// Every method the server serves, by gRPC service and method name.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("poolplane.v1.Query", "Execute", Access::Needs(Right::Query)),
    (
        "poolplane.v1.Query",
        "ExecuteBatch",
        Access::Needs(Right::Query),
    ),
    (
        "poolplane.v1.Query",
        "ExecuteStream",
        Access::Needs(Right::Query),
    ),
    ("poolplane.v1.Query", "Session", Access::Needs(Right::Query)),
    (
        "poolplane.v1.PoolAdmin",
        "ListPools",
        Access::Needs(Right::Read),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "GetPool",
        Access::Needs(Right::Read),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "GetMetricsHistory",
        Access::Needs(Right::Read),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ListAlerts",
        Access::Needs(Right::Read),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ListSessions",
        Access::Needs(Right::Read),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "KillSession",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "PausePool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ResumePool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ReconnectPool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ReloadConfig",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "CreatePool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "UpdatePool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "DeletePool",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ResetStatistics",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "CheckHealth",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "AcknowledgeAlert",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolAdmin",
        "ClearAlert",
        Access::Needs(Right::Operate),
    ),
    (
        "poolplane.v1.PoolEvents",
        "Watch",
        Access::Needs(Right::Read),
    ),
    ("grpc.health.v1.Health", "Check", Access::Open),
    ("grpc.health.v1.Health", "Watch", Access::Open),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        Access::Open,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        Access::Open,
    ),
];

/// What the method at `path` (`/service/method`) needs; `None` if it is
/// not in [`ACCESS`].
pub fn access(path: &str) -> Option<Access> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    ACCESS
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, access)| *access)
}

/// Checks that the caller of `request` may do `right` on `pool`.
pub(crate) fn authorize<T>(
    request: &tonic::Request<T>,
    right: Right,
    pool: &str,
) -> Result<(), Status> {
    authorize_identity(identity(request)?, right, pool)
}

/// Checks that `identity` may do `right` on `pool`.
pub(crate) fn authorize_identity(
    identity: &Identity,
    right: Right,
    pool: &str,
) -> Result<(), Status> {
    if identity.may(right, Some(pool)) {
        return Ok(());
    }
    Err(Status::new(
        Code::PermissionDenied,
        format!(
            "`{}` ({}) may not {} pool `{pool}`",
            identity.name,
            identity.role,
            match right {
                Right::Query => "query",
                Right::Read => "read",
                Right::Operate => "operate",
            }
        ),
    ))
}

/// The authenticated caller of `request`. The layer puts it there for
/// every call; a request without one is refused (fail closed).
pub(crate) fn identity<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .ok_or_else(|| Status::new(Code::PermissionDenied, "no authenticated caller"))
}

/// How much of a request's pool name (or alert id) an audit line quotes.
const AUDIT_TARGET_BYTES: usize = 128;

/// One audit line per call that changes something: who, what, on which
/// pool (or alert), and how it ended (target `poolplane::audit`).
pub(crate) struct Audit {
    caller: String,
    role: &'static str,
    method: &'static str,
    target: String,
}

/// What a caller sent, fit for a log line: its start only, and nothing
/// that could forge or reorder a line.
fn quoted(text: &str) -> String {
    let mut cut = text.len().min(AUDIT_TARGET_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut shown = crate::display::escaped(&text[..cut]);
    if cut < text.len() {
        shown.push('…');
    }
    shown
}

impl Audit {
    pub(crate) fn of<T>(request: &tonic::Request<T>, method: &'static str, target: &str) -> Audit {
        let (caller, role) = match request.extensions().get::<Identity>() {
            Some(identity) => (quoted(&identity.name), identity.role.as_str()),
            None => ("unknown".to_string(), "none"),
        };
        Audit {
            caller,
            role,
            method,
            target: quoted(target),
        }
    }

    pub(crate) fn record<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        tracing::info!(
            target: "poolplane::audit",
            caller = %self.caller,
            role = self.role,
            method = self.method,
            target = %self.target,
            code = ?code,
            "audit"
        );
        result
    }
}

#[derive(Clone)]
pub(crate) struct AuthLayer {
    authenticator: Arc<Authenticator>,
    in_flight: Arc<InFlight>,
    failed: Arc<FailedLogins>,
}

impl AuthLayer {
    pub(crate) fn new(authenticator: Authenticator, max_calls_per_caller: u32) -> AuthLayer {
        AuthLayer {
            authenticator: Arc::new(authenticator),
            in_flight: Arc::new(InFlight {
                max: max_calls_per_caller as usize,
                by_caller: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
            failed: Arc::new(FailedLogins::default()),
        }
    }
}

/// How often at most a failed login is logged.
const FAILED_LOGIN_LOG_EVERY: Duration = Duration::from_secs(1);

/// Failed logins, logged (target `poolplane::audit`, WARN) at most once a
/// [`FAILED_LOGIN_LOG_EVERY`] with how many failed since the last line: a
/// token-guessing client is seen, and cannot fill the log. (Metrics count
/// every one: `grpc_server_handled_total{grpc_code="Unauthenticated"}`.)
#[derive(Default)]
struct FailedLogins {
    /// When the last line was written, and the failures since.
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl FailedLogins {
    fn record(&self, peer: Option<std::net::SocketAddr>, method: &str, reason: &AuthError) {
        let failures = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.1 += 1;
            if state
                .0
                .is_some_and(|at| at.elapsed() < FAILED_LOGIN_LOG_EVERY)
            {
                return;
            }
            state.0 = Some(Instant::now());
            std::mem::take(&mut state.1)
        };
        let peer = peer.map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
        tracing::warn!(
            target: "poolplane::audit",
            %peer,
            method = %quoted(method),
            %reason,
            failures,
            "authentication failed"
        );
    }
}

/// Callers tracked before idle ones are forgotten.
const MAX_TRACKED_CALLERS: usize = 10_000;

/// Calls in flight per caller, bounded (`server.max_calls_per_caller`), so
/// one caller cannot take every connection and task of the server.
struct InFlight {
    max: usize,
    by_caller: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl InFlight {
    /// A place for one more call of `caller`, held until its response ends.
    fn enter(&self, caller: &str) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let semaphore = {
            let mut by_caller = self
                .by_caller
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Callers come and go (a JWT subject each): forget the idle ones
            // before the map can grow with them.
            if by_caller.len() >= MAX_TRACKED_CALLERS {
                by_caller.retain(|_, calls| calls.available_permits() < self.max);
            }
            Arc::clone(
                by_caller
                    .entry(caller.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.max))),
            )
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Status::new(
                Code::ResourceExhausted,
                format!(
                    "`{caller}` already has {} calls in flight (server.max_calls_per_caller)",
                    self.max
                ),
            )
        })
    }
}

/// A response body that keeps its call's place until it has been sent.
struct Held<B> {
    inner: B,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            in_flight: Arc::clone(&self.in_flight),
            failed: Arc::clone(&self.failed),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    in_flight: Arc<InFlight>,
    failed: Arc<FailedLogins>,
}

type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let identity = match self.admit(&request) {
            Ok(Some(identity)) => identity,
            Ok(None) => return Box::pin(self.inner.call(request)),
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        let place = match self.in_flight.enter(&identity.name) {
            Ok(place) => place,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        request.extensions_mut().insert(identity);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Held {
                    inner: body,
                    _place: place,
                })
            }))
        })
    }
}

impl<S> Authenticate<S> {
    /// The caller's identity (`None` for an open method), or why the call
    /// is refused.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Option<Identity>, Status> {
        let access = access(request.uri().path());
        if access == Some(Access::Open) {
            return Ok(None);
        }
        let mut headers = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter();
        let header = headers.next().map(http::HeaderValue::as_bytes);
        if headers.next().is_some() {
            // Which one counts would be a proxy's guess: neither does.
            return Err(Status::new(
                Code::Unauthenticated,
                "more than one authorization header",
            ));
        }
        let connection = request.extensions().get::<super::tls::ConnInfo>();
        let names = connection
            .map(|info| info.certificate_names.clone())
            .unwrap_or_default();
        let identity = self
            .authenticator
            .authenticate(header, &names)
            .map_err(|err| {
                let peer = connection.and_then(|info| info.peer);
                self.failed.record(peer, request.uri().path(), &err);
                Status::new(Code::Unauthenticated, err.to_string())
            })?;
        let allowed = match access {
            Some(Access::Needs(right)) => identity.may(right, None),
            // Not in the table: admins only.
            _ => identity.role == crate::auth::Role::Admin,
        };
        if !allowed {
            if access == Some(Access::Needs(Right::Operate)) {
                tracing::info!(
                    target: "poolplane::audit",
                    caller = %quoted(&identity.name),
                    role = identity.role.as_str(),
                    method = request.uri().path(),
                    code = ?Code::PermissionDenied,
                    "audit"
                );
            }
            let needs = match access {
                Some(Access::Needs(right)) => right.as_str(),
                _ => "admin",
            };
            return Err(Status::new(
                Code::PermissionDenied,
                format!(
                    "`{}` ({}) may not call {}: it needs the `{needs}` right",
                    identity.name,
                    identity.role,
                    request.uri().path()
                ),
            ));
        }
        Ok(Some(identity))
    }
}
