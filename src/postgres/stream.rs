//! The TCP stream under every PostgreSQL connection, made to *close
//! observably*: closing sends FIN and then reads until the server closes
//! its side, which PostgreSQL does only as the backend process exits (after
//! it left pg_stat_activity). So a connection's driver task ends only when
//! its backend is gone, which is what lets a server slot be released
//! exactly then.
//!
//! Closing starts either the normal way (the driver shuts the stream down
//! after sending Terminate) or through a [`Closer`], which makes the stream
//! report end-of-file to the driver once the server has closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a close waits for the server to close its side: a peer that
/// never answers must not hold a slot forever.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Asks a stream to close from outside its driver task.
#[derive(Clone, Default)]
pub(crate) struct Closer(Arc<CloserState>);

#[derive(Default)]
struct CloserState {
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    pub(crate) fn requested(&self) -> bool {
        self.0.requested.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.0.requested.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

pub(crate) struct TrackedStream {
    inner: TcpStream,
    closer: Closer,
    closing: Option<Closing>,
}

struct Closing {
    fin_sent: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TrackedStream {
    pub(crate) fn new(inner: TcpStream, closer: Closer) -> TrackedStream {
        TrackedStream {
            inner,
            closer,
            closing: None,
        }
    }

    /// Sends FIN once, then discards input until the server's EOF (or an
    /// error, or the close deadline).
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let closing = self.closing.get_or_insert_with(|| Closing {
            fin_sent: false,
            deadline: Box::pin(tokio::time::sleep(CLOSE_WAIT)),
        });
        if !closing.fin_sent {
            match Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Pending => return Poll::Pending,
                // Either way nothing more will be written.
                Poll::Ready(_) => closing.fin_sent = true,
            }
        }
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match closing.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.closer.0.waker.register(cx.waker());
        if this.closing.is_some() || this.closer.0.requested.load(Ordering::Acquire) {
            // End-of-file for the driver once the backend is gone.
            return this.poll_closed(cx);
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing.is_some() {
            // Our FIN is out: nothing more reaches the server. Swallow what
            // the driver still writes (its Terminate) rather than fail it:
            // an error would end the driver before the server's EOF, and
            // free the slot while the backend is still there.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_closed(cx)
    }
}

/// Connects to `host:port` within `timeout`, with TCP keepalives and a
/// user timeout so a dead peer surfaces as an error instead of a hang.
pub(crate) async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting to {host}:{port} timed out after {} ms",
                    timeout.as_millis()
                ),
            )
        })??;
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(&stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10)),
    )?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}
