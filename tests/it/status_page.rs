//! The status page on the HTTP listener, against a real server and
//! PostgreSQL: `/status.json` follows real pools and sessions, `/events`
//! (Server-Sent Events, read here from a raw socket) delivers coalesced
//! updates, the metrics token guards all of it (the `?token=` exchange for
//! a cookie; the token never in a body, a header or the log), the page
//! loads nothing from elsewhere, clients are capped and a stalled one
//! costs nothing, fifty alerts and HTML-looking text stay bounded and
//! inert, and a real browser (headless Chromium) sees the table change
//! without reloading.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use poolplane::proto::{CreatePoolRequest, DeletePoolRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::chromium::Chromium;
use crate::sessions::{open_request, Session};
use crate::support::{cluster, config_yaml_with, eventually, exec, PoolSpec, TestServer};

/// Samples every 100 ms, so `/events` has something to say often.
const FAST_MONITORING: &str = "  monitoring:\n    collection_interval_ms: 100\n";

/// A login pools created over the API may use.
fn credentials() -> String {
    format!(
        "  credentials:\n    - name: main_login\n      user: postgres\n      password_file: {}\n",
        cluster().password_file().display()
    )
}

fn create(name: &str) -> CreatePoolRequest {
    CreatePoolRequest {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: u32::from(cluster().port),
        database: "postgres".into(),
        max_connections: Some(2),
        credential: "main_login".into(),
        ..Default::default()
    }
}

/// An HTTP answer, whole.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Everything the client saw, for "the token is not in it" checks.
    fn everything(&self) -> String {
        let headers: String = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect();
        format!("{headers}\n{}", self.body)
    }
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

async fn send_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    // HTTP/1.0: the body (a stream's too) ends when the connection does.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    stream
}

/// A GET read to the end (not for `/events`, which does not end).
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = send_get(addr, path, headers).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not end"))
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One `/events` stream, read from a raw socket.
struct EventStream {
    stream: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    /// Read but not yet parsed.
    buffer: String,
    /// Comment lines seen (heartbeats).
    comments: usize,
}

impl EventStream {
    /// Opens it and reads the response head only.
    async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> EventStream {
        let mut stream = send_get(addr, "/events", headers).await;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .expect("a response head within 10 s")
                .expect("read head");
            assert!(read == 1, "the connection closed before a response head");
            head.push(byte[0]);
        }
        let (status, headers) = parse_head(&String::from_utf8_lossy(&head));
        EventStream {
            stream,
            status,
            headers,
            buffer: String::new(),
            comments: 0,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The rest of a refused stream's body.
    async fn rest(mut self) -> String {
        let mut body = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut body)).await;
        self.buffer + &String::from_utf8_lossy(&body)
    }

    /// The next `status` event's data, parsed; `None` if none came by
    /// `deadline`.
    async fn next_status(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(value) = line.strip_prefix("event:") {
                        name = if value.trim() == "status" {
                            "status"
                        } else {
                            "other"
                        };
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if name == "status" && !data.is_empty() {
                    return Some(serde_json::from_str(&data).expect("status data is JSON"));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .expect("read events");
            assert!(read > 0, "the event stream ended");
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
    }

    /// Reads updates until one satisfies `check` (bounded); returns it.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snapshot = self
                .next_status(deadline)
                .await
                .unwrap_or_else(|| panic!("no update with {what} within {timeout:?}"));
            if check(&snapshot) {
                return snapshot;
            }
        }
    }
}

/// A pool's row in a snapshot.
fn pool<'a>(snapshot: &'a Value, name: &str) -> Option<&'a Value> {
    snapshot["pools"]
        .as_array()?
        .iter()
        .find(|pool| pool["name"] == name)
}

fn field(snapshot: &Value, name: &str, key: &str) -> Option<u64> {
    pool(snapshot, name).and_then(|pool| pool[key].as_u64())
}

async fn status_json(addr: SocketAddr) -> Value {
    let reply = get(addr, "/status.json", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// The headers every status route answers with.
fn assert_secure_headers(headers: impl Fn(&str) -> Option<String>, route: &str) {
    assert_eq!(
        headers("content-security-policy").as_deref(),
        Some(poolplane::http::CONTENT_SECURITY_POLICY),
        "{route}"
    );
    assert_eq!(
        headers("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{route}"
    );
    assert_eq!(
        headers("cache-control").as_deref(),
        Some("no-store"),
        "{route}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_follows_a_real_pool_its_sessions_and_created_pools() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("shown", 4)],
        &format!("{}{FAST_MONITORING}", credentials()),
    ))
    .await;
    let reply = get(server.http_addr, "/status.json", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_secure_headers(|n| reply.header(n).map(str::to_string), "/status.json");
    let first = reply.json();
    let shown = pool(&first, "shown").expect("the configured pool");
    assert_eq!(shown["max"], 4);
    assert_eq!(shown["active"], 0);
    assert_eq!(shown["utilization"], 0.0);
    assert!(
        ["unknown", "healthy"].contains(&shown["health"].as_str().unwrap_or("")),
        "{shown}"
    );
    assert_eq!(shown["alerts_active"], 0);

    // Two sessions hold a connection each: active 2, utilization 0.5.
    let mut client = server.query().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            Session::open(&mut client, open_request("shown"))
                .await
                .expect("open"),
        );
    }
    let now = status_json(server.http_addr).await;
    let shown = pool(&now, "shown").expect("pool");
    assert_eq!(shown["active"], 2, "{shown}");
    assert_eq!(shown["utilization"], 0.5, "{shown}");
    assert!(shown["open"].as_u64().is_some_and(|open| open >= 2));

    // Acquisitions make a p99 (the pool is younger than the window, so
    // the window reaches back to its start).
    for _ in 0..5 {
        client
            .execute(exec("shown", "SELECT 1", vec![]))
            .await
            .expect("select");
    }
    let now = status_json(server.http_addr).await;
    let shown = pool(&now, "shown").expect("pool");
    assert!(
        shown["acquisitions_in_window"].as_u64() >= Some(7),
        "{shown}"
    );
    assert!(
        shown["acquire_wait_p99_seconds"]
            .as_f64()
            .is_some_and(|p99| (0.0..1.0).contains(&p99)),
        "{shown}"
    );
    // The sparkline comes from the monitoring history (every 100 ms here).
    eventually(
        "the utilization history shows the held sessions",
        Duration::from_secs(5),
        || async {
            let now = status_json(server.http_addr).await;
            pool(&now, "shown")
                .and_then(|p| p["utilization_history"].as_array().cloned())
                .is_some_and(|history| {
                    history.len() <= poolplane::status::SPARKLINE_POINTS
                        && history.iter().any(|u| u.as_f64() == Some(0.5))
                })
        },
    )
    .await;

    for session in held {
        session.close().await;
    }
    assert_eq!(
        field(&status_json(server.http_addr).await, "shown", "active"),
        Some(0)
    );

    // A pool created over the API appears, and goes when deleted.
    let mut admin = server.admin().await;
    admin.create_pool(create("appeared")).await.expect("create");
    let now = status_json(server.http_addr).await;
    assert_eq!(field(&now, "appeared", "max"), Some(2), "{now}");
    let names: Vec<&str> = now["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["appeared", "shown"], "sorted by name");
    admin
        .delete_pool(DeletePoolRequest {
            name: "appeared".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert!(pool(&status_json(server.http_addr).await, "appeared").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_deliver_coalesced_updates_after_changes() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("streamed", 3)],
        &format!("{}{FAST_MONITORING}", credentials()),
    ))
    .await;
    let mut events = EventStream::open(server.http_addr, &[]).await;
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert_secure_headers(|n| events.header(n).map(str::to_string), "/events");
    // A snapshot at once, before anything happens.
    let first = events
        .until("a first snapshot", Duration::from_secs(2), |_| true)
        .await;
    assert_eq!(field(&first, "streamed", "active"), Some(0), "{first}");

    // A session holds a connection: the next metrics sample says so.
    let mut client = server.query().await;
    let session = Session::open(&mut client, open_request("streamed"))
        .await
        .expect("open");
    events
        .until("active 1", Duration::from_secs(5), |s| {
            field(s, "streamed", "active") == Some(1)
        })
        .await;
    // A created pool appears without waiting for a sample.
    server
        .admin()
        .await
        .create_pool(create("arrived"))
        .await
        .expect("create");
    events
        .until("the created pool", Duration::from_secs(5), |s| {
            pool(s, "arrived").is_some()
        })
        .await;
    session.close().await;
    events
        .until("active 0 again", Duration::from_secs(5), |s| {
            field(s, "streamed", "active") == Some(0)
        })
        .await;

    // A burst of 2,000 events (and samples every 100 ms throughout) makes
    // at most one update per 250 ms, the last one after the burst.
    let started = Instant::now();
    let mut last_sequence = 0;
    for _ in 0..2000 {
        last_sequence = server
            .app
            .events()
            .publish("streamed", poolplane::events::EventDetail::PoolUpdated);
    }
    let window = Duration::from_millis(1500);
    let deadline = tokio::time::Instant::now() + window;
    let mut updates = 0;
    let mut newest = 0;
    while let Some(snapshot) = events.next_status(deadline).await {
        updates += 1;
        newest = snapshot["sequence"].as_u64().unwrap_or(0);
    }
    let elapsed = started.elapsed();
    let most = elapsed.as_millis() / poolplane::http::MIN_UPDATE_INTERVAL.as_millis() + 2;
    assert!(
        updates as u128 <= most,
        "{updates} updates in {elapsed:?} (at most {most})"
    );
    assert!(updates >= 1);
    assert!(
        newest >= last_sequence,
        "the last update ({newest}) follows the burst ({last_sequence})"
    );
    server.stop().await;
}

/// SIGTERM, once the binary answers gRPC: the HTTP listener answers a
/// moment before the binary listens for SIGTERM (both start with
/// `serve`, the signal with the gRPC server), and a SIGTERM in between
/// would end it the hard way.
async fn terminate(served: crate::support::ServedBinary) -> std::process::ExitStatus {
    served
        .admin()
        .await
        .list_pools(poolplane::proto::ListPoolsRequest::default())
        .await
        .expect("the binary answers gRPC");
    served.terminate().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_page_its_data_and_its_stream_and_never_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "status-page-token-0123456789";
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let yaml = config_yaml_with(
        &[PoolSpec::new("guarded", 2)],
        &format!(
            "  server:\n    shutdown_timeout_ms: 5000\n    metrics_token_file: {}\n",
            file.display()
        ),
    );
    // The real binary, logging everything at debug, so its log can be read.
    let served = crate::support::ServedBinary::start_with(
        &yaml,
        &[],
        &[("RUST_LOG", "debug,tokio_postgres=info")],
        &[],
    )
    .await;
    let http = served.http;
    eventually(
        "the HTTP listener answers",
        Duration::from_secs(10),
        || async { TcpStream::connect(http).await.is_ok() },
    )
    .await;
    let mut seen = Vec::new();

    // Without the token: 401 everywhere, and nothing of the pools.
    for path in ["/", "/status.json", "/metrics"] {
        let reply = get(http, path, &[]).await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert!(!reply.body.contains("guarded"), "{path}: {}", reply.body);
        seen.push(reply.everything());
    }
    let refused = EventStream::open(http, &[]).await;
    assert_eq!(refused.status, 401);
    let body = refused.rest().await;
    assert!(!body.contains("guarded"), "{body}");
    // A wrong token, and the right one anywhere but `/`'s query.
    for (path, headers) in [
        ("/?token=not-the-token-at-all", vec![]),
        (
            "/status.json",
            vec![("Authorization", "Bearer not-the-token-at-all")],
        ),
        (&*format!("/status.json?token={token}"), vec![]),
        (&*format!("/events?token={token}"), vec![]),
    ] {
        let reply = get(http, path, &headers).await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(reply.header("set-cookie"), None, "{path}");
    }

    // The bearer header (scripts, or a proxy adding it) opens all three.
    let bearer = format!("Bearer {token}");
    let with_bearer = [("Authorization", bearer.as_str())];
    let page = get(http, "/", &with_bearer).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<table"), "{}", page.body);
    let data = get(http, "/status.json", &with_bearer).await;
    assert_eq!(data.status, 200);
    assert!(pool(&data.json(), "guarded").is_some());
    let mut stream = EventStream::open(http, &with_bearer).await;
    assert_eq!(stream.status, 200);
    let first = stream
        .until("a snapshot", Duration::from_secs(5), |_| true)
        .await;
    assert!(pool(&first, "guarded").is_some());
    seen.extend([page.everything(), data.everything(), first.to_string()]);

    // A browser: `/?token=` once, answered with a redirect to `/` and an
    // HttpOnly, SameSite=Strict cookie that is not the token.
    let exchange = get(http, &format!("/?token={token}"), &[]).await;
    assert_eq!(exchange.status, 303);
    assert_eq!(exchange.header("location"), Some("/"));
    let set_cookie = exchange.header("set-cookie").expect("a cookie").to_string();
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&wanted), "{set_cookie}");
    }
    let cookie = attributes[0].to_string();
    let value = cookie
        .strip_prefix("poolplane_status=")
        .expect("our cookie");
    assert_eq!(value.len(), 64, "256 random bits in hex: {value}");
    assert!(!value.contains(token));
    seen.push(exchange.everything());
    let with_cookie = [("Cookie", cookie.as_str())];
    let page = get(http, "/", &with_cookie).await;
    assert_eq!(page.status, 200);
    let data = get(http, "/status.json", &with_cookie).await;
    assert_eq!(data.status, 200);
    assert!(pool(&data.json(), "guarded").is_some());
    let mut stream = EventStream::open(http, &with_cookie).await;
    assert_eq!(stream.status, 200);
    let first = stream
        .until("a snapshot", Duration::from_secs(5), |_| true)
        .await;
    seen.extend([page.everything(), data.everything(), first.to_string()]);
    // The cookie is for the page only; a forged one opens nothing.
    assert_eq!(get(http, "/metrics", &with_cookie).await.status, 401);
    let forged = format!("poolplane_status={}", "0".repeat(64));
    assert_eq!(
        get(http, "/status.json", &[("Cookie", &forged)])
            .await
            .status,
        401
    );
    // The static assets hold no data and need nothing.
    for asset in ["/status.js", "/status.css", "/favicon.svg"] {
        let reply = get(http, asset, &[]).await;
        assert_eq!(reply.status, 200, "{asset}");
        seen.push(reply.everything());
    }

    for text in &seen {
        assert!(!text.contains(token), "the token was sent back: {text}");
    }
    drop(stream);
    let status = terminate(served).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "status-log-token-0123456789";
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let yaml = config_yaml_with(
        &[PoolSpec::new("logged", 1)],
        &format!(
            "  server:\n    shutdown_timeout_ms: 5000\n    metrics_token_file: {}\n",
            file.display()
        ),
    );
    let served = crate::support::ServedBinary::start_with(
        &yaml,
        &[],
        &[("RUST_LOG", "trace,tokio_postgres=info")],
        &[],
    )
    .await;
    let http = served.http;
    eventually(
        "the HTTP listener answers",
        Duration::from_secs(10),
        || async { TcpStream::connect(http).await.is_ok() },
    )
    .await;
    let bearer = format!("Bearer {token}");
    for (path, headers) in [
        (format!("/?token={token}"), vec![]),
        (format!("/?token={token}x"), vec![]),
        (
            "/status.json".to_string(),
            vec![("Authorization", bearer.as_str())],
        ),
        (format!("/status.json?token={token}"), vec![]),
    ] {
        get(http, &path, &headers).await;
    }
    let mut stream = EventStream::open(http, &[("Authorization", bearer.as_str())]).await;
    stream
        .until("a snapshot", Duration::from_secs(5), |_| true)
        .await;
    drop(stream);
    let log = served.log();
    assert!(log.lines().count() > 3, "the log was written: {log}");
    let exit = terminate(served).await;
    assert!(exit.success(), "{exit:?}");
    assert!(!log.contains(token), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_nothing_from_elsewhere_and_builds_no_html_from_data() {
    let server = TestServer::start(&config_yaml_with(&[PoolSpec::new("plain", 1)], "")).await;
    let page = get(server.http_addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe") && !csp.contains("http") && !csp.contains('*'),
        "{csp}"
    );
    let mut texts = vec![("/".to_string(), page.body.clone())];
    for path in ["/status.js", "/status.css", "/favicon.svg", "/status.json"] {
        let reply = get(server.http_addr, path, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_secure_headers(|n| reply.header(n).map(str::to_string), path);
        texts.push((path.to_string(), reply.body));
    }
    assert_secure_headers(|n| page.header(n).map(str::to_string), "/");
    for (path, text) in &texts {
        // The SVG namespace is a name, never fetched; nothing else may
        // point at another host.
        let rest = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !rest.contains("http://") && !rest.contains("https://"),
            "{path} refers to another host"
        );
    }
    assert!(
        !texts[2].1.contains("url("),
        "the style sheet loads nothing"
    );
    let html = &page.body;
    // Every reference is a path on this server; no inline script, style
    // or handler (the CSP would block them anyway).
    for attribute in ["src=\"", "href=\""] {
        for reference in html.split(attribute).skip(1) {
            assert!(
                reference.starts_with('/') && !reference.starts_with("//"),
                "{attribute}{reference}"
            );
        }
    }
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script src=\"/status.js\" defer></script>"));
    assert!(!html.contains("<style") && !html.contains(" style="));
    assert!(!html.to_lowercase().contains(" onload=") && !html.contains(" onclick="));
    let script = &texts[1].1;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(sink), "status.js uses {sink}");
    }
    assert!(script.contains("textContent"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_are_capped_a_stalled_one_gets_only_the_latest_and_shutdown_ends_streams() {
    let mut server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("crowded", 2)],
        &format!("{}{FAST_MONITORING}", credentials()),
    ))
    .await;
    let cap = poolplane::http::MAX_EVENT_CLIENTS;
    // The cap's worth of clients that never read past the response head.
    let mut stalled = Vec::new();
    for _ in 0..cap {
        let stream = EventStream::open(server.http_addr, &[]).await;
        assert_eq!(stream.status, 200);
        stalled.push(stream);
    }
    let stalled_since = Instant::now();
    let refused = EventStream::open(server.http_addr, &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("10"));
    let body = refused.rest().await;
    assert!(body.contains(&cap.to_string()), "{body}");
    // /status.json still answers.
    status_json(server.http_addr).await;

    // One goes away: its place is given back (seen at its next write).
    drop(stalled.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut reader = loop {
        let stream = EventStream::open(server.http_addr, &[]).await;
        if stream.status == 200 {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place freed up for a new client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    reader
        .until("a first snapshot", Duration::from_secs(2), |_| true)
        .await;

    // While the others stall, updates keep flowing to the reader: a burst
    // of events, then a created pool, promptly.
    let mut last_sequence = 0;
    for _ in 0..5000 {
        last_sequence = server
            .app
            .events()
            .publish("crowded", poolplane::events::EventDetail::PoolUpdated);
    }
    let asked = Instant::now();
    server
        .admin()
        .await
        .create_pool(create("noticed"))
        .await
        .expect("create");
    reader
        .until("the created pool", Duration::from_secs(3), |s| {
            pool(s, "noticed").is_some()
        })
        .await;
    assert!(asked.elapsed() < Duration::from_secs(3));

    // A stalled client that reads at last finds only coalesced snapshots
    // (at most one per 250 ms it stalled, not one per event) and, last,
    // the newest state.
    let mut late = stalled.pop().expect("a stalled client");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut updates = 0u128;
    let mut newest = Value::Null;
    while let Some(snapshot) = late.next_status(deadline).await {
        updates += 1;
        newest = snapshot;
    }
    let most =
        stalled_since.elapsed().as_millis() / poolplane::http::MIN_UPDATE_INTERVAL.as_millis() + 2;
    assert!(
        updates <= most,
        "{updates} snapshots for one client (at most {most})"
    );
    assert!(pool(&newest, "noticed").is_some(), "{newest}");
    assert!(newest["sequence"].as_u64() >= Some(last_sequence));

    // Stopping the server ends every stream: it does not wait for them.
    let stopping = Instant::now();
    server.begin_stop();
    for stream in stalled.iter_mut().take(3) {
        let mut rest = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.stream.read_to_end(&mut rest),
        )
        .await
        .expect("the stream ends at shutdown")
        .expect("read to the end");
    }
    server.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_alerts_and_html_looking_text_stay_bounded_and_inert() {
    // Fifty connections open at once: a storm, so it takes its turn.
    let _turn = crate::support::machine_to_myself().await;
    let mut leaky = PoolSpec::new("leaky", 60)
        .with("max_session_connections: 50")
        .with("leak_detection_threshold_ms: 100");
    // Warmed up before the sessions come, so none waits for a connect.
    leaky.min = 50;
    let server = TestServer::start(&config_yaml_with(&[leaky], "")).await;
    eventually(
        "fifty idle connections",
        Duration::from_secs(30),
        || async { field(&status_json(server.http_addr).await, "leaky", "idle") >= Some(50) },
    )
    .await;
    // Pool names are validated: one that looks like HTML is refused.
    let mut admin = server.admin().await;
    let refused = admin
        .create_pool(create("<img src=x onerror=alert(1)>"))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Fifty sessions leak, each after a statement whose text looks like
    // HTML (an identifier, which survives normalization).
    let html = r#""<img src=x onerror=alert(1)>""#;
    let sessions = futures::future::join_all((0..50).map(|_| {
        let server = &server;
        async move {
            let mut client = server.query().await;
            let mut session = Session::open(&mut client, open_request("leaky"))
                .await
                .expect("open");
            session.ok(&format!("SELECT 1 AS {html}")).await;
            session
        }
    }))
    .await;
    let mut events = EventStream::open(server.http_addr, &[]).await;
    let snapshot = events
        .until("fifty alerts", Duration::from_secs(10), |s| {
            field(s, "leaky", "alerts_active") == Some(50)
        })
        .await;
    let leaky = pool(&snapshot, "leaky").expect("pool");
    let alerts = leaky["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), poolplane::status::MAX_ALERTS_PER_POOL);
    for alert in alerts {
        let message = alert["message"].as_str().expect("message");
        assert!(
            message.chars().count() <= poolplane::status::MAX_ALERT_MESSAGE_CHARS,
            "{message}"
        );
        assert!(
            message.contains("<img src=x onerror=alert(1)>"),
            "{message}"
        );
        assert_eq!(alert["rule"], "session_leak");
    }
    // The whole snapshot stays small whatever the pool holds.
    let json = get(server.http_addr, "/status.json", &[]).await;
    assert!(json.body.len() < 16 * 1024, "{} bytes", json.body.len());

    for session in sessions {
        session.close().await;
    }
    events
        .until("the alerts resolved", Duration::from_secs(10), |s| {
            field(s, "leaky", "alerts_active") == Some(0)
        })
        .await;
    server.stop().await;
}

/// Where the browser test saves its screenshot besides its temporary
/// directory (the README's docs/status-page.png was made so).
const SCREENSHOT_TO: &str = "POOLPLANE_STATUS_SCREENSHOT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_table_change_without_reloading() {
    crate::chromium::require();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "browser-token-0123456789abcdef";
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let server = TestServer::start(&config_yaml_with(
        &[
            PoolSpec::new("orders", 4)
                .with("max_session_connections: 3")
                .with("leak_detection_threshold_ms: 200"),
            PoolSpec::new("reporting", 8),
        ],
        &format!(
            "{}{FAST_MONITORING}  server:\n    shutdown_timeout_ms: 5000\n    metrics_token_file: {}\n",
            credentials(),
            file.display()
        ),
    ))
    .await;
    let mut browser = Chromium::launch(1200, 700);
    let page = browser.new_page().await;
    // The token once, in the address: the server answers with a cookie
    // and a redirect to `/`.
    browser
        .call(
            Some(&page),
            "Page.navigate",
            serde_json::json!({"url": format!("http://{}/?token={token}", server.http_addr)}),
        )
        .await;
    let cell = |pool: &str, field: &str| {
        format!(
            "(() => {{ const td = document.querySelector('tr[data-pool=\"{pool}\"] td[data-field=\"{field}\"]'); return td ? td.textContent : null; }})()"
        )
    };
    browser
        .wait_for(
            &page,
            "the first update",
            Duration::from_secs(10),
            &cell("orders", "active"),
            |v| v == "0",
        )
        .await;
    let location = browser
        .eval(&page, "location.pathname + location.search")
        .await;
    assert_eq!(location, "/", "the token left the address bar");
    // Marks this document: a reload would lose it.
    browser.eval(&page, "window.__loadedOnce = true").await;
    let updates_before = browser
        .eval(&page, "Number(document.body.dataset.updates)")
        .await;

    // Load: three sessions hold connections of `orders`; one ran a
    // statement whose text looks like HTML and leaks.
    let mut client = server.query().await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut session = Session::open(&mut client, open_request("orders"))
            .await
            .expect("open");
        if i == 0 {
            session
                .ok(r#"SELECT 1 AS "<img src=x onerror=document.title='pwned'>""#)
                .await;
        }
        held.push(session);
    }
    for _ in 0..20 {
        client
            .execute(exec("reporting", "SELECT 1", vec![]))
            .await
            .expect("select");
    }
    browser
        .wait_for(
            &page,
            "three active connections",
            Duration::from_secs(10),
            &cell("orders", "active"),
            |v| v == "3",
        )
        .await;
    let alert = browser
        .wait_for(
            &page,
            "the leak alert",
            Duration::from_secs(10),
            &cell("orders", "alerts"),
            |v| v.as_str().is_some_and(|text| text.contains("onerror")),
        )
        .await;
    assert!(
        alert
            .as_str()
            .is_some_and(|text| text.contains("<img src=x onerror=document.title='pwned'>")),
        "shown as text: {alert}"
    );
    // A pool created over the API appears.
    server
        .admin()
        .await
        .create_pool(create("arrived"))
        .await
        .expect("create");
    browser
        .wait_for(
            &page,
            "the created pool's row",
            Duration::from_secs(10),
            &cell("arrived", "max"),
            |v| v == "2",
        )
        .await;
    // Let the sparklines gather a few samples under load for the picture.
    browser
        .wait_for(
            &page,
            "a sparkline",
            Duration::from_secs(10),
            "document.querySelectorAll('tr[data-pool=\"orders\"] polyline').length",
            |v| v == 1,
        )
        .await;
    browser
        .wait_for(
            &page,
            "fifteen points of history",
            Duration::from_secs(10),
            "document.querySelector('tr[data-pool=\"orders\"] polyline').getAttribute('points').split(' ').length",
            |v| v.as_u64() >= Some(15),
        )
        .await;

    // The same document all along, updated live.
    assert_eq!(browser.eval(&page, "window.__loadedOnce").await, true);
    let updates_after = browser
        .eval(&page, "Number(document.body.dataset.updates)")
        .await;
    assert!(
        updates_after.as_u64() > updates_before.as_u64(),
        "{updates_before} → {updates_after}"
    );
    assert_eq!(
        browser
            .eval(&page, "document.querySelectorAll('img').length")
            .await,
        0,
        "no element was made from alert text"
    );
    assert_eq!(
        browser.eval(&page, "document.title").await,
        "poolplane status"
    );
    assert_eq!(
        browser.eval(&page, "document.cookie").await,
        "",
        "the cookie is HttpOnly"
    );
    let html = browser
        .eval(&page, "document.documentElement.outerHTML")
        .await;
    assert!(!html.as_str().unwrap_or("").contains(token));
    assert_eq!(
        browser
            .eval(&page, "document.getElementById('connection').textContent")
            .await,
        "live"
    );

    let png = browser.screenshot(&page).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    std::fs::write(dir.path().join("status-page.png"), &png).expect("write screenshot");
    if let Ok(path) = std::env::var(SCREENSHOT_TO) {
        std::fs::write(&path, &png).expect("write the screenshot where asked");
    }
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    browser.close().await;
    for session in held {
        session.close().await;
    }
    server.stop().await;
}
