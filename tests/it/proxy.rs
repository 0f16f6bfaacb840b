//! A TCP proxy for fault tests: forwards loopback connections to a target
//! port, and can be switched to hold all traffic (a blackhole: accepted,
//! never answered), to add latency, or to cut every connection it relays,
//! then back to normal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Hold every byte in both directions and every new connection.
    Blackhole,
    /// Delay every chunk by this much.
    Latency(Duration),
    /// Close every relayed connection now, both ways (a network that drops
    /// them), and any new one at once.
    Cut,
    /// Deliver what the target sends one byte at a time, this far apart,
    /// so every message boundary falls between two reads.
    TrickleReplies(Duration),
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Bytes forwarded towards the target so far.
    upstream: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (mode, watcher) = watch::channel(Mode::Forward);
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let upstream = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, watcher.clone(), Arc::clone(&counter)));
            }
        });
        Proxy {
            port,
            mode,
            upstream,
            task,
        }
    }

    /// Bytes forwarded towards the target so far, over all connections.
    pub fn bytes_upstream(&self) -> u64 {
        self.upstream.load(Ordering::Acquire)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    upstream: Arc<AtomicU64>,
) {
    // A blackholed proxy accepts but does not even connect onwards.
    if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() || *mode.borrow() == Mode::Cut {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, mode.clone(), Some(upstream)),
        pump(server_read, client_write, mode, None)
    );
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    counter: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = mode.wait_for(|m| *m == Mode::Cut) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = match mode.wait_for(|m| *m != Mode::Blackhole).await {
            Ok(current) => *current,
            Err(_) => break,
        };
        if let Mode::Latency(delay) = current {
            tokio::time::sleep(delay).await;
        }
        let written = match current {
            Mode::TrickleReplies(delay) if counter.is_none() => {
                trickle(&mut to, &buf[..n], delay).await
            }
            _ => to.write_all(&buf[..n]).await.is_ok(),
        };
        if !written {
            break;
        }
        if let Some(counter) = &counter {
            counter.fetch_add(n as u64, Ordering::AcqRel);
        }
    }
    let _ = to.shutdown().await;
}

/// Writes `bytes` one at a time, `delay` apart.
async fn trickle(to: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], delay: Duration) -> bool {
    for byte in bytes {
        if to.write_all(std::slice::from_ref(byte)).await.is_err() {
            return false;
        }
        tokio::time::sleep(delay).await;
    }
    true
}
