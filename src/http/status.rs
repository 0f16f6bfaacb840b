//! The live status page on the HTTP listener: `GET /` (HTML, with
//! `/status.js`, `/status.css` and `/favicon.svg`, all embedded in the
//! binary), `GET /status.json` (one snapshot, `crate::status`) and
//! `GET /events` (Server-Sent Events: a snapshot at once, then one after
//! anything relevant happens on the event bus). Read-only.
//!
//! - **Coalescing.** One task (the hub) follows the event bus and builds a
//!   snapshot at most every [`MIN_UPDATE_INTERVAL`] (at most 4 a second),
//!   once for every client: a burst of events makes one update.
//! - **Bounded per client.** The hub publishes the latest snapshot on a
//!   `tokio::sync::watch` channel: a client that reads slowly, or never,
//!   skips to the newest one when it reads again; nothing queues for it
//!   beyond what the HTTP connection itself buffers (hyper's write buffer,
//!   about 400 KiB, then it stops asking for more).
//! - **Capped.** At most [`MAX_EVENT_CLIENTS`] `/events` streams at once
//!   (503 past it): each is an open connection that gets every update; a
//!   status page is for a handful of operators, and the cap keeps a
//!   runaway of tabs or scripts from multiplying the work.
//! - **Token.** With `server.metrics_token_*` set, every route here but the
//!   static assets needs the token: `Authorization: Bearer` (scripts, or a
//!   proxy adding the header), or the page cookie. A browser cannot send a
//!   header with `EventSource`, so `/?token=<token>` (on `/` only) is
//!   checked once and answered with a redirect to `/` that sets an
//!   HttpOnly, SameSite=Strict cookie holding a random page session (not
//!   the token), valid [`PAGE_SESSION_TTL`]; the token never reaches the
//!   page, and nothing here logs a request's URI.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::{broadcast, watch};

use crate::app::App;
use crate::events::EventKind;
use crate::status::{snapshot, WaitWindow};

/// At most this many `/events` streams at once.
pub const MAX_EVENT_CLIENTS: usize = 32;
/// Snapshots go out at most this often (bursts of events are coalesced).
pub const MIN_UPDATE_INTERVAL: Duration = Duration::from_millis(250);
/// A comment line on an idle stream this often, so proxies and browsers
/// keep it open.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How long a page cookie stays valid.
pub const PAGE_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Page sessions kept at once; past it the oldest goes.
const MAX_PAGE_SESSIONS: usize = 256;
const COOKIE: &str = "poolplane_status";

const INDEX_HTML: &str = include_str!("status_page/index.html");
const STATUS_JS: &str = include_str!("status_page/status.js");
const STATUS_CSS: &str = include_str!("status_page/status.css");
const FAVICON_SVG: &str = include_str!("status_page/favicon.svg");

/// Nothing from elsewhere: scripts, styles, images and connections from
/// this origin only, no inline script or style, no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'none'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the status routes share.
pub(super) struct StatusPage {
    app: Arc<App>,
    window: WaitWindow,
    /// The latest snapshot the hub built, as JSON, for `/events` streams.
    latest: watch::Sender<Arc<str>>,
    event_clients: Arc<AtomicUsize>,
    sessions: PageSessions,
    /// True once the server is shutting down: streams end.
    closing: watch::Receiver<bool>,
}

impl StatusPage {
    /// The page's state, and its hub following `app`'s event bus until
    /// `closing` turns true.
    pub(super) fn start(app: Arc<App>, closing: watch::Receiver<bool>) -> Arc<StatusPage> {
        let (latest, _) = watch::channel(Arc::<str>::from("{}"));
        let page = Arc::new(StatusPage {
            app,
            window: WaitWindow::new(),
            latest,
            event_clients: Arc::new(AtomicUsize::new(0)),
            sessions: PageSessions::default(),
            closing,
        });
        tokio::spawn(hub(Arc::clone(&page)));
        page
    }

    /// A snapshot now, as JSON.
    fn render(&self) -> Arc<str> {
        match serde_json::to_string(&snapshot(&self.app, &self.window)) {
            Ok(json) => Arc::from(json),
            Err(error) => {
                tracing::error!(%error, "the status snapshot could not be encoded");
                Arc::from("{\"pools\":[]}")
            }
        }
    }

    /// Whether a request may read the page's data: any, without a token;
    /// with one, a request presenting it as a bearer token, or a valid
    /// page cookie.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = self.app.server().metrics_token else {
            return true;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .any(|token| token_matches(token, &expected));
        bearer || cookies(headers).any(|value| self.sessions.valid(value, Instant::now()))
    }
}

fn token_matches(token: &str, expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(crate::auth::hash(token.as_bytes()).ct_eq(expected))
}

/// Values of our cookie in the request's `Cookie` headers.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The page sessions the `?token=` exchange issued: only their SHA-256
/// is kept, with an expiry; bounded.
#[derive(Default)]
struct PageSessions {
    expiries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl PageSessions {
    /// A new random session value (256 bits from the system's CSPRNG).
    fn issue(&self, now: Instant) -> Option<String> {
        let mut bytes = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .ok()?;
        let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut expiries = self.lock();
        expiries.retain(|_, expiry| *expiry > now);
        if expiries.len() >= MAX_PAGE_SESSIONS {
            let oldest = expiries
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(hash, _)| *hash);
            if let Some(oldest) = oldest {
                expiries.remove(&oldest);
            }
        }
        expiries.insert(crate::auth::hash(value.as_bytes()), now + PAGE_SESSION_TTL);
        Some(value)
    }

    fn valid(&self, value: &str, now: Instant) -> bool {
        // Looked up by hash: timing can tell about hashes, not values.
        self.lock()
            .get(&crate::auth::hash(value.as_bytes()))
            .is_some_and(|expiry| *expiry > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.expiries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The status routes.
pub(super) fn router(page: Arc<StatusPage>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status.json", get(status_json))
        .route("/events", get(events))
        .route(
            "/status.js",
            get(|| asset(STATUS_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/status.css",
            get(|| asset(STATUS_CSS, "text/css; charset=utf-8")),
        )
        .route("/favicon.svg", get(|| asset(FAVICON_SVG, "image/svg+xml")))
        .with_state(page)
}

/// Headers on every status response: no external loads, no sniffing, no
/// caching, no referrer, no framing.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    secure(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn unauthorized() -> Response {
    secure(
        (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Bearer"),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            ],
            "This status page needs the metrics token: open /?token=<token> once (a cookie then \
             keeps this browser in), or send Authorization: Bearer <token>.\n",
        )
            .into_response(),
    )
}

/// The `token` query parameter, percent-decoded (`None`: absent; an
/// empty string: present but unreadable or repeated, which matches no
/// token).
fn query_token(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let mut found = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(name, _)| *name == "token")
        .map(|(_, value)| percent_decode(value).unwrap_or_default());
    let first = found.next()?;
    Some(if found.next().is_some() {
        String::new()
    } else {
        first
    })
}

/// `%XX` escapes decoded (`+` stays `+`: tokens may hold it); `None` for
/// a malformed escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn index(State(page): State<Arc<StatusPage>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(token) = query_token(&uri) {
        return sign_in(&page, &token);
    }
    if !page.authorized(&headers) {
        return unauthorized();
    }
    secure(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response(),
    )
}

/// `/?token=`: a valid token gets a page cookie and a redirect to `/`,
/// so the token leaves the address bar (and the history) at once.
fn sign_in(page: &StatusPage, token: &str) -> Response {
    let cookie = match page.app.server().metrics_token {
        None => None,
        Some(expected) if token_matches(token, &expected) => {
            match page.sessions.issue(Instant::now()) {
                Some(value) => Some(value),
                None => {
                    tracing::error!("no random bytes for a status page cookie");
                    return secure(StatusCode::INTERNAL_SERVER_ERROR.into_response());
                }
            }
        }
        Some(_) => return unauthorized(),
    };
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Some(value) = cookie {
        let set = format!(
            "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
            PAGE_SESSION_TTL.as_secs()
        );
        if let Ok(set) = HeaderValue::from_str(&set) {
            response.headers_mut().insert(header::SET_COOKIE, set);
        }
    }
    secure(response)
}

async fn status_json(State(page): State<Arc<StatusPage>>, headers: HeaderMap) -> Response {
    if !page.authorized(&headers) {
        return unauthorized();
    }
    let json = page.render();
    secure(
        (
            [(header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response(),
    )
}

/// One `/events` stream's place under the cap, given back when the stream
/// is dropped (the client went away, or the server is stopping).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(clients: &Arc<AtomicUsize>) -> Option<Slot> {
        clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_EVENT_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(clients)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one `/events` stream holds: the first snapshot until sent, its
/// view of the latest one, and its place under the cap.
struct Feed {
    first: Option<Arc<str>>,
    latest: watch::Receiver<Arc<str>>,
    closing: watch::Receiver<bool>,
    _slot: Slot,
}

async fn events(State(page): State<Arc<StatusPage>>, headers: HeaderMap) -> Response {
    if !page.authorized(&headers) {
        return unauthorized();
    }
    let Some(slot) = Slot::take(&page.event_clients) else {
        return secure(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::RETRY_AFTER, "10"),
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                ],
                format!("too many live status clients (at most {MAX_EVENT_CLIENTS}); /status.json answers without a stream\n"),
            )
                .into_response(),
        );
    };
    // Subscribed before the first snapshot is read: a change after it is
    // not missed (at worst sent twice).
    let mut latest = page.latest.subscribe();
    latest.mark_unchanged();
    let feed = Feed {
        first: Some(page.render()),
        latest,
        closing: page.closing.clone(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        if let Some(first) = feed.first.take() {
            let event = Event::default()
                .event("status")
                .retry(Duration::from_secs(3))
                .data(&*first);
            return Some((Ok::<_, Infallible>(event), feed));
        }
        let changed = tokio::select! {
            changed = feed.latest.changed() => changed.is_ok(),
            _ = feed.closing.wait_for(|closing| *closing) => false,
        };
        if !changed {
            return None;
        }
        let data = Arc::clone(&feed.latest.borrow_and_update());
        Some((Ok(Event::default().event("status").data(&*data)), feed))
    });
    let mut response = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(HEARTBEAT_INTERVAL)
                .text("heartbeat"),
        )
        .into_response();
    // Proxies such as nginx would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    secure(response)
}

/// Whether an event may change what the page shows (probe results come
/// every check and change nothing unless the health changes, which is an
/// event of its own).
fn relevant(kind: EventKind) -> bool {
    !matches!(kind, EventKind::CheckCompleted)
}

/// Follows the event bus and publishes a snapshot after relevant events,
/// at most every [`MIN_UPDATE_INTERVAL`], only while someone listens.
async fn hub(page: Arc<StatusPage>) {
    let Ok(subscription) = page.app.events().subscribe(None) else {
        return;
    };
    let mut live = subscription.live;
    let mut closing = page.closing.clone();
    let mut dirty = false;
    let mut next_allowed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => dirty |= relevant(event.detail.kind()),
                // Events were missed: whatever they were, look again.
                Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep_until(next_allowed), if dirty => {
                dirty = false;
                // Nobody listening: a new stream reads its own first snapshot.
                if page.latest.receiver_count() > 0 {
                    page.latest.send_replace(page.render());
                    next_allowed = tokio::time::Instant::now() + MIN_UPDATE_INTERVAL;
                }
            }
            _ = closing.wait_for(|closing| *closing) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_parameter_is_decoded_once_and_only_alone() {
        let uri = |text: &str| text.parse::<Uri>().expect("uri");
        assert_eq!(query_token(&uri("/")), None);
        assert_eq!(query_token(&uri("/?other=1")), None);
        assert_eq!(
            query_token(&uri("/?token=a%2Fb+c")).as_deref(),
            Some("a/b+c")
        );
        assert_eq!(query_token(&uri("/?x=1&token=abc")).as_deref(), Some("abc"));
        assert_eq!(query_token(&uri("/?token=a&token=a")).as_deref(), Some(""));
        assert_eq!(query_token(&uri("/?token=%zz")).as_deref(), Some(""));
        assert_eq!(query_token(&uri("/?token")).as_deref(), Some(""));
    }

    #[test]
    fn page_sessions_expire_and_stay_bounded() {
        let sessions = PageSessions::default();
        let now = Instant::now();
        let first = sessions.issue(now).expect("random bytes");
        assert_eq!(first.len(), 64);
        assert!(sessions.valid(&first, now));
        assert!(!sessions.valid("not-issued", now));
        assert!(!sessions.valid(&first, now + PAGE_SESSION_TTL));
        for i in 0..MAX_PAGE_SESSIONS {
            sessions.issue(now + Duration::from_millis(i as u64 + 1));
        }
        assert_eq!(sessions.lock().len(), MAX_PAGE_SESSIONS);
        assert!(!sessions.valid(&first, now), "the oldest made room");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; poolplane_status=xyz"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("poolplane_status=second"),
        );
        assert_eq!(cookies(&headers).collect::<Vec<_>>(), ["xyz", "second"]);
    }
}
