//! A cap on what one message from PostgreSQL may cost poolplane's memory.
//!
//! The driver reads every message whole before anyone sees it, and
//! PostgreSQL allows a single value, so a row, an error or a notice, of up
//! to 1 GB. This filter sits between the socket (or the TLS session) and
//! the driver, reads each message's header, and lets nothing larger than
//! the limit through:
//! - a row (DataRow) is dropped and recorded in [`MessageLimit`]; the query
//!   path sees the record, cancels the statement and answers as for a
//!   result over its byte limit;
//! - an error (ErrorResponse) is shortened to its first KiB, so the caller
//!   still gets its SQLSTATE and the start of its message;
//! - a notice (NoticeResponse) is dropped: nobody reads notices.
//!
//! Other messages pass whatever their size: none of them can be large.
//! On the way, the filter notes the transaction status each ReadyForQuery
//! reports (the driver reads it but does not say), which a Session returns
//! after every statement; a fingerprint of each row description (so a
//! remembered statement plan can be checked against what the server now
//! describes, `query/plan.rs`); and how many messages arrived and bytes
//! left, so the query path can tell a request that never reached the
//! server from one that may have run ([`FlightMark`]).
//! The filter itself holds a header and a shortened error at most; a
//! dropped message is read and discarded as it arrives.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The limit of one connection, and where it dropped rows.
#[derive(Debug)]
pub(crate) struct MessageLimit {
    max: usize,
    /// Rows (DataRow messages) seen on this connection, passed or dropped.
    rows_seen: AtomicU64,
    /// Index (in `rows_seen` terms) of the first row dropped since the last
    /// [`MessageLimit::begin_result`]; `NONE` if none was.
    first_dropped: AtomicU64,
    /// The server said it ends the connection on request (SQLSTATE 57P01,
    /// `pg_terminate_backend`): the driver, which hands that report to the
    /// statement running, sees only a closed connection afterwards.
    terminated: AtomicBool,
    /// The status byte of the last ReadyForQuery: `I`, `T` or `E`.
    transaction: AtomicU8,
    /// Messages the server sent on this connection (headers seen).
    replies: AtomicU64,
    /// Bytes the driver wrote towards the server.
    sent: AtomicU64,
    /// ReadyForQuery messages seen: the number of the next one to come.
    readies: AtomicU64,
    /// Rows seen since the last ReadyForQuery.
    rows_since_ready: AtomicU64,
    /// What each of the last [`REPLY_RING`] replies (a request's messages
    /// up to its ReadyForQuery) brought, by its number modulo the ring's
    /// size: for pipelined requests, whose replies the filter may see long
    /// before the driver hands them to their readers.
    replies_by_number: Box<[ReplySlot]>,
    /// Woken at every ReadyForQuery, and when the stream ends.
    ready: tokio::sync::Notify,
    /// The server's side of the stream ended (end of file or an error):
    /// no reply is coming any more.
    stream_ended: AtomicBool,
    /// Fingerprint of the first row description (RowDescription, or
    /// [`NO_COLUMNS`] for NoData) since the last [`MessageLimit::flight_mark`];
    /// `NONE` if none came yet. The first: the driver reads ahead, so later
    /// replies (a pipelined reset's) may already have been seen.
    description: AtomicU64,
}

/// How many replies [`MessageLimit::reply`] remembers: more than a
/// session keeps in flight.
pub(crate) const REPLY_RING: usize = 256;

/// What one reply brought.
#[derive(Debug)]
struct ReplySlot {
    /// The transaction status of its ReadyForQuery (0 until it came).
    status: AtomicU8,
    /// Fingerprint of its first row description, `NONE` if none came.
    description: AtomicU64,
    /// Index of its first row dropped, `NONE` if none was.
    first_dropped: AtomicU64,
}

impl ReplySlot {
    fn new() -> ReplySlot {
        ReplySlot {
            status: AtomicU8::new(0),
            description: AtomicU64::new(NONE),
            first_dropped: AtomicU64::new(NONE),
        }
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.description.store(NONE, Ordering::Release);
        self.first_dropped.store(NONE, Ordering::Release);
    }
}

/// Where a connection's traffic stood just before a request went out:
/// afterwards, [`MessageLimit::unsent_since`] and
/// [`MessageLimit::replies_since`] say how far the request got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlightMark {
    sent: u64,
    replies: u64,
}

/// The description fingerprint of a statement that returns no rows (NoData).
pub(crate) const NO_COLUMNS: u64 = 0;

/// Where a connection's session stands after a request, as PostgreSQL
/// reports it in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: statements are refused until ROLLBACK.
    Failed,
}

const NONE: u64 = u64::MAX;

fn status_from(byte: u8) -> TransactionStatus {
    match byte {
        b'T' => TransactionStatus::InTransaction,
        b'E' => TransactionStatus::Failed,
        _ => TransactionStatus::Idle,
    }
}

impl MessageLimit {
    pub(crate) fn new(max: u64) -> Arc<MessageLimit> {
        Arc::new(MessageLimit {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            rows_seen: AtomicU64::new(0),
            first_dropped: AtomicU64::new(NONE),
            terminated: AtomicBool::new(false),
            transaction: AtomicU8::new(b'I'),
            replies: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            description: AtomicU64::new(NONE),
            readies: AtomicU64::new(0),
            rows_since_ready: AtomicU64::new(0),
            replies_by_number: (0..REPLY_RING).map(|_| ReplySlot::new()).collect(),
            ready: tokio::sync::Notify::new(),
            stream_ended: AtomicBool::new(false),
        })
    }

    /// The number the next reply will have: the replies of requests sent
    /// from now on, one ReadyForQuery each, are numbered from here, once
    /// every reply to the requests sent before has been read.
    pub(crate) fn next_reply(&self) -> u64 {
        self.readies.load(Ordering::Acquire)
    }

    fn slot(&self, number: u64) -> &ReplySlot {
        &self.replies_by_number[(number % REPLY_RING as u64) as usize]
    }

    /// Whether reply `number` is still remembered (or yet to come).
    fn remembered(&self, number: u64) -> bool {
        self.next_reply().saturating_sub(number) < REPLY_RING as u64
    }

    /// The fingerprint of reply `number`'s row description, once it came.
    pub(crate) fn description_of(&self, number: u64) -> Option<u64> {
        if !self.remembered(number) {
            return None;
        }
        match self.slot(number).description.load(Ordering::Acquire) {
            NONE => None,
            fingerprint => Some(fingerprint),
        }
    }

    /// How many rows of reply `number` came before one too large to take,
    /// if one was dropped (or the reply is no longer remembered: then 0).
    pub(crate) fn rows_before_drop_in(&self, number: u64) -> Option<u64> {
        if !self.remembered(number) {
            return Some(0);
        }
        match self.slot(number).first_dropped.load(Ordering::Acquire) {
            NONE => None,
            index => Some(index),
        }
    }

    /// The transaction status reply `number` ended with, waiting for its
    /// ReadyForQuery if need be; `None` if it is no longer remembered or
    /// will never come (the stream ended).
    pub(crate) async fn status_of(&self, number: u64) -> Option<TransactionStatus> {
        loop {
            let woken = self.ready.notified();
            if self.next_reply() > number {
                if !self.remembered(number) {
                    return None;
                }
                return Some(status_from(
                    self.slot(number).status.load(Ordering::Acquire),
                ));
            }
            if self.stream_ended.load(Ordering::Acquire) {
                return None;
            }
            woken.await;
        }
    }

    /// No more bytes will come from the server.
    fn end_of_stream(&self) {
        self.stream_ended.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// Marks where traffic stands before a request is handed to the driver
    /// (every earlier reply on the connection has been read), and starts
    /// watching for the request's row description.
    pub(crate) fn flight_mark(&self) -> FlightMark {
        self.description.store(NONE, Ordering::Release);
        FlightMark {
            sent: self.sent.load(Ordering::Acquire),
            replies: self.replies.load(Ordering::Acquire),
        }
    }

    /// Whether not one byte went towards the server since `mark`.
    pub(crate) fn unsent_since(&self, mark: FlightMark) -> bool {
        self.sent.load(Ordering::Acquire) == mark.sent
    }

    /// How many messages the server sent since `mark`.
    pub(crate) fn replies_since(&self, mark: FlightMark) -> u64 {
        self.replies
            .load(Ordering::Acquire)
            .saturating_sub(mark.replies)
    }

    /// The fingerprint of the first row description (RowDescription or
    /// NoData) the server sent since the last flight mark: equal for equal
    /// descriptions.
    pub(crate) fn description_since_mark(&self) -> Option<u64> {
        match self.description.load(Ordering::Acquire) {
            NONE => None,
            fingerprint => Some(fingerprint),
        }
    }

    /// A reply ended with this transaction status: the next one begins.
    fn ready_for_query(&self, status: u8) {
        self.transaction.store(status, Ordering::Release);
        let number = self.next_reply();
        self.slot(number).status.store(status, Ordering::Release);
        self.slot(number + 1).clear();
        self.rows_since_ready.store(0, Ordering::Release);
        self.readies.store(number + 1, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// Notes a row description's fingerprint, unless one came since the
    /// mark (or in this reply).
    fn described(&self, fingerprint: u64) {
        let _ = self.slot(self.next_reply()).description.compare_exchange(
            NONE,
            fingerprint,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let _ = self.description.compare_exchange(
            NONE,
            fingerprint,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The transaction status of the last ReadyForQuery the server sent.
    /// Once a request's reply has been read to its end, it is that
    /// request's status (no later reply has begun).
    pub(crate) fn transaction_status(&self) -> TransactionStatus {
        status_from(self.transaction.load(Ordering::Acquire))
    }

    /// Whether the server reported ending this connection on request.
    pub(crate) fn terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Called before a statement is sent (the connection's earlier results
    /// have all been read): returns the mark to pass to
    /// [`MessageLimit::rows_before_drop`].
    pub(crate) fn begin_result(&self) -> u64 {
        self.first_dropped.store(NONE, Ordering::Release);
        self.rows_seen.load(Ordering::Acquire)
    }

    /// How many rows of the result begun at `mark` came before the first
    /// one dropped, if one was. Recorded before any later message reaches
    /// the driver, so a reader that got row `n` sees any drop before it.
    pub(crate) fn rows_before_drop(&self, mark: u64) -> Option<u64> {
        match self.first_dropped.load(Ordering::Acquire) {
            NONE => None,
            index => Some(index.saturating_sub(mark)),
        }
    }
}

/// How much of an oversized error is kept.
const ERROR_PREFIX: usize = 1024;

/// How much of a passing error is read for its SQLSTATE (PostgreSQL sends
/// the severity, twice, then the code).
const ERROR_CODE_PREFIX: usize = 64;

/// SQLSTATE 57P01: the server ends the connection on request.
const ADMIN_SHUTDOWN: &[u8] = b"57P01";

/// A message header: its type byte and its length (which counts itself).
const HEADER: usize = 5;

/// Where the filter is in the byte stream.
#[derive(Debug)]
enum Phase {
    /// The one-byte answer to an SSLRequest comes first: `S` means TLS
    /// (this layer then carries ciphertext), anything else plain messages.
    SslAnswer,
    /// Ciphertext: passes untouched (the layer above TLS filters).
    Opaque,
    Header {
        bytes: [u8; HEADER],
        have: usize,
    },
    Pass(usize),
    /// A RowDescription that passes while its fingerprint is taken.
    PassDescription {
        remaining: usize,
        hash: u64,
    },
    /// An authentication request on a plaintext connection: its code is
    /// read first (`header` and the code's bytes are held back meanwhile).
    AuthCode {
        header: [u8; HEADER],
        code: Vec<u8>,
        remaining: usize,
    },
    /// An error that passes, its first bytes kept to read its SQLSTATE.
    PassError {
        remaining: usize,
        seen: Vec<u8>,
    },
    Drop(usize),
    /// The one-byte body of a ReadyForQuery: the transaction status.
    ReadyStatus,
    /// An oversized error: the first bytes of its body are kept, the rest
    /// dropped; a shortened copy follows.
    Clip {
        kept: Vec<u8>,
        remaining: usize,
        size: usize,
    },
}

const fn header() -> Phase {
    Phase::Header {
        bytes: [0; HEADER],
        have: 0,
    }
}

/// The pure part: bytes in, the bytes the driver may see out.
#[derive(Debug)]
pub(crate) struct Filter {
    limit: Arc<MessageLimit>,
    phase: Phase,
    /// Nothing below encrypts these bytes: a password must not cross.
    plaintext: bool,
    /// The server asked for the password in cleartext over plaintext.
    refused_cleartext: bool,
}

/// Why a connection is given up when the server asks for the password in
/// cleartext without TLS.
pub(crate) const CLEARTEXT_REFUSED: &str = "the server asked for the password in cleartext over an unencrypted connection, and poolplane does not send it: use TLS (sslmode require or verify-full) or scram-sha-256 authentication";

/// AuthenticationCleartextPassword's code.
const AUTH_CLEARTEXT: [u8; 4] = [0, 0, 0, 3];

impl Filter {
    /// For a plaintext stream that carries protocol messages from its
    /// first byte.
    pub(crate) fn messages(limit: Arc<MessageLimit>) -> Filter {
        Filter {
            limit,
            phase: header(),
            plaintext: true,
            refused_cleartext: false,
        }
    }

    /// For the messages inside a TLS session.
    pub(crate) fn encrypted_messages(limit: Arc<MessageLimit>) -> Filter {
        Filter {
            plaintext: false,
            ..Filter::messages(limit)
        }
    }

    /// For a raw socket on which the driver will ask for TLS first (if the
    /// server declines, plaintext messages follow).
    pub(crate) fn after_ssl_answer(limit: Arc<MessageLimit>) -> Filter {
        Filter {
            phase: Phase::SslAnswer,
            ..Filter::messages(limit)
        }
    }

    /// Whether the server asked for a cleartext password over plaintext.
    pub(crate) fn refused_cleartext(&self) -> bool {
        self.refused_cleartext
    }

    /// Bytes of a message body that may go to the driver as they are.
    fn passing(&self) -> usize {
        match self.phase {
            Phase::Pass(n) => n,
            _ => 0,
        }
    }

    /// Whether a message body is being dropped or clipped.
    fn dropping(&self) -> bool {
        matches!(self.phase, Phase::Drop(_) | Phase::Clip { .. })
    }

    fn passed(&mut self, n: usize) {
        if let Phase::Pass(remaining) = &mut self.phase {
            *remaining -= n;
            if *remaining == 0 {
                self.phase = header();
            }
        }
    }

    /// Appends to `out` what the driver may see of `input`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let taken = self.step(input, out);
            input = &input[taken..];
        }
    }

    /// Consumes a prefix of `input` (at least one byte unless empty);
    /// returns its length.
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        match &mut self.phase {
            Phase::Opaque => {
                out.extend_from_slice(input);
                input.len()
            }
            Phase::SslAnswer => {
                if input[0] == b'S' {
                    out.push(b'S');
                    self.phase = Phase::Opaque;
                    return 1;
                }
                if input[0] == b'N' {
                    out.push(b'N');
                    self.phase = header();
                    return 1;
                }
                // Not an answer (an old server's error): a message.
                self.phase = header();
                0
            }
            Phase::Header { bytes, have } => {
                let take = (HEADER - *have).min(input.len());
                bytes[*have..*have + take].copy_from_slice(&input[..take]);
                *have += take;
                if *have == HEADER {
                    let bytes = *bytes;
                    self.start_message(bytes, out);
                }
                take
            }
            Phase::Pass(remaining) => {
                let take = (*remaining).min(input.len());
                out.extend_from_slice(&input[..take]);
                self.passed(take);
                take
            }
            Phase::PassDescription { remaining, hash } => {
                let take = (*remaining).min(input.len());
                out.extend_from_slice(&input[..take]);
                *hash = fingerprint(*hash, &input[..take]);
                *remaining -= take;
                if *remaining == 0 {
                    // Never NO_COLUMNS nor NONE.
                    let hash = (*hash).clamp(NO_COLUMNS + 1, NONE - 1);
                    self.limit.described(hash);
                    self.phase = header();
                }
                take
            }
            Phase::Drop(remaining) => {
                let take = (*remaining).min(input.len());
                *remaining -= take;
                if *remaining == 0 {
                    self.phase = header();
                }
                take
            }
            Phase::ReadyStatus => {
                out.push(input[0]);
                self.limit.ready_for_query(input[0]);
                self.phase = header();
                1
            }
            Phase::Clip {
                kept,
                remaining,
                size,
            } => {
                let take = (*remaining).min(input.len());
                let keep = take.min(ERROR_PREFIX - kept.len());
                kept.extend_from_slice(&input[..keep]);
                *remaining -= take;
                if *remaining == 0 {
                    out.extend_from_slice(&shortened_error(kept, *size));
                    let kept = std::mem::take(kept);
                    self.error_seen(&kept);
                    self.phase = header();
                }
                take
            }
            Phase::AuthCode {
                header: held,
                code,
                remaining,
            } => {
                let take = (*remaining).min(input.len()).min(4 - code.len());
                code.extend_from_slice(&input[..take]);
                *remaining -= take;
                if code.len() == 4 || *remaining == 0 {
                    if code.as_slice() == AUTH_CLEARTEXT {
                        // Never handed to the driver, which would answer
                        // it with the password.
                        self.refused_cleartext = true;
                        self.phase = Phase::Drop(*remaining);
                    } else {
                        out.extend_from_slice(held);
                        out.extend_from_slice(code);
                        self.phase = Phase::Pass(*remaining);
                    }
                    if matches!(self.phase, Phase::Pass(0) | Phase::Drop(0)) {
                        self.phase = header();
                    }
                }
                take
            }
            Phase::PassError { remaining, seen } => {
                let take = (*remaining).min(input.len());
                out.extend_from_slice(&input[..take]);
                let keep = take.min(ERROR_CODE_PREFIX.saturating_sub(seen.len()));
                seen.extend_from_slice(&input[..keep]);
                *remaining -= take;
                if *remaining == 0 {
                    let seen = std::mem::take(seen);
                    self.error_seen(&seen);
                    self.phase = header();
                }
                take
            }
        }
    }

    fn start_message(&mut self, header_bytes: [u8; HEADER], out: &mut Vec<u8>) {
        let kind = header_bytes[0];
        let length = u32::from_be_bytes([
            header_bytes[1],
            header_bytes[2],
            header_bytes[3],
            header_bytes[4],
        ]) as usize;
        let body = length.saturating_sub(4);
        let oversized = length > self.limit.max;
        self.limit.replies.fetch_add(1, Ordering::AcqRel);
        if kind == b'n' {
            self.limit.described(NO_COLUMNS);
        }
        if kind == b'D' {
            let index = self.limit.rows_seen.fetch_add(1, Ordering::AcqRel);
            let in_reply = self.limit.rows_since_ready.fetch_add(1, Ordering::AcqRel);
            if oversized {
                self.limit.first_dropped.fetch_min(index, Ordering::AcqRel);
                self.limit
                    .slot(self.limit.next_reply())
                    .first_dropped
                    .fetch_min(in_reply, Ordering::AcqRel);
            }
        }
        self.phase = match kind {
            b'D' if oversized => Phase::Drop(body),
            b'N' if oversized => Phase::Drop(body),
            b'E' if oversized => Phase::Clip {
                kept: Vec::with_capacity(ERROR_PREFIX),
                remaining: body,
                size: length,
            },
            b'R' if self.plaintext && body >= 4 => Phase::AuthCode {
                header: header_bytes,
                code: Vec::with_capacity(4),
                remaining: body,
            },
            b'T' if !oversized && body > 0 => {
                out.extend_from_slice(&header_bytes);
                Phase::PassDescription {
                    remaining: body,
                    hash: FNV_OFFSET,
                }
            }
            b'Z' if body == 1 => {
                out.extend_from_slice(&header_bytes);
                Phase::ReadyStatus
            }
            b'E' => {
                out.extend_from_slice(&header_bytes);
                Phase::PassError {
                    remaining: body,
                    seen: Vec::with_capacity(ERROR_CODE_PREFIX.min(body)),
                }
            }
            _ => {
                out.extend_from_slice(&header_bytes);
                Phase::Pass(body)
            }
        };
        if matches!(
            self.phase,
            Phase::Pass(0) | Phase::Drop(0) | Phase::PassError { remaining: 0, .. }
        ) {
            self.phase = header();
        }
    }

    /// Notes an error report the server sent (its first bytes, where
    /// PostgreSQL puts the severity and the SQLSTATE).
    fn error_seen(&self, start: &[u8]) {
        let code = start
            .split(|&b| b == 0)
            .find_map(|field| field.strip_prefix(b"C"));
        if code == Some(ADMIN_SHUTDOWN) {
            self.limit.terminated.store(true, Ordering::Release);
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, continued over `bytes`: cheap, streaming, and plenty to tell
/// two row descriptions of one statement apart.
fn fingerprint(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// An ErrorResponse built from the kept start of one too large to pass:
/// its complete fields, the cut one shortened (at a character boundary),
/// and the fields the driver requires if they were not among them.
fn shortened_error(kept: &[u8], size: usize) -> Vec<u8> {
    let mut fields: Vec<(u8, String)> = Vec::new();
    let mut rest = kept;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let (value, cut) = match after.iter().position(|&b| b == 0) {
            Some(end) => (&after[..end], false),
            None => (after, true),
        };
        let text = match std::str::from_utf8(value) {
            Ok(text) => text,
            Err(err) => std::str::from_utf8(&value[..err.valid_up_to()]).unwrap_or_default(),
        };
        let mut text = text.to_string();
        if cut {
            text.push_str(&format!(
                "… (cut by poolplane: the whole error was {size} bytes)"
            ));
        }
        fields.push((code, text));
        if cut {
            break;
        }
        rest = &after[value.len() + 1..];
    }
    for (code, default) in [
        (b'S', "ERROR"),
        (b'C', "54000"),
        (b'M', "an error too large to show"),
    ] {
        if !fields.iter().any(|(c, _)| *c == code) {
            fields.push((code, default.to_string()));
        }
    }
    let mut body = Vec::new();
    for (code, text) in fields {
        body.push(code);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = Vec::with_capacity(HEADER + body.len());
    message.push(b'E');
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

/// Bytes read from the inner stream at a time when they must be looked at
/// (headers and small messages); bodies that pass go straight through.
const SCRATCH: usize = 8 * 1024;
/// Bytes read at a time while a body is dropped.
const DISCARD: usize = 256 * 1024;

/// A stream whose reads go through a [`Filter`].
pub(crate) struct Limited<S> {
    inner: S,
    filter: Filter,
    /// Filtered bytes not yet handed to the reader.
    ready: Vec<u8>,
    at: usize,
    scratch: Box<[u8]>,
}

impl<S> Limited<S> {
    pub(crate) fn new(inner: S, filter: Filter) -> Limited<S> {
        Limited {
            inner,
            filter,
            ready: Vec::new(),
            at: 0,
            scratch: Box::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.ready.len() {
                let n = (this.ready.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.ready[this.at..this.at + n]);
                this.at += n;
                if this.at == this.ready.len() {
                    this.ready.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let passing = this.filter.passing();
            if passing > 0 {
                // A body that passes: straight into the reader's buffer.
                let want = passing.min(buf.remaining());
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(want));
                if let Err(err) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct)) {
                    this.filter.limit.end_of_stream();
                    return Poll::Ready(Err(err));
                }
                let got = direct.filled().len();
                if got == 0 {
                    this.filter.limit.end_of_stream();
                }
                buf.advance(got);
                this.filter.passed(got);
                return Poll::Ready(Ok(()));
            }
            // A body being dropped is read in large pieces (it can be 1 GB);
            // anything else in small ones, as it must be looked at.
            let want = if this.filter.dropping() {
                DISCARD
            } else {
                SCRATCH
            };
            if this.scratch.len() != want {
                this.scratch = vec![0; want].into_boxed_slice();
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            if let Err(err) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read)) {
                this.filter.limit.end_of_stream();
                return Poll::Ready(Err(err));
            }
            if read.filled().is_empty() {
                this.filter.limit.end_of_stream();
                return Poll::Ready(Ok(()));
            }
            this.filter.feed(read.filled(), &mut this.ready);
            if this.filter.refused_cleartext() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    CLEARTEXT_REFUSED,
                )));
            }
            if this.ready.capacity() > 4 * SCRATCH && this.ready.is_empty() {
                this.ready.shrink_to(SCRATCH);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.filter
            .limit
            .sent
            .fetch_add(written as u64, Ordering::AcqRel);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Limited<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose sessions are filtered above the decryption.
pub(crate) struct LimitedTls<T> {
    inner: T,
    limit: Arc<MessageLimit>,
}

impl<T> LimitedTls<T> {
    pub(crate) fn new(inner: T, limit: Arc<MessageLimit>) -> LimitedTls<T> {
        LimitedTls { inner, limit }
    }
}

type Connecting<S, E> = Pin<Box<dyn std::future::Future<Output = Result<S, E>> + Send>>;

impl<S, T> TlsConnect<S> for LimitedTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    type Stream = Limited<T::Stream>;
    type Error = T::Error;
    type Future = Connecting<Self::Stream, T::Error>;

    fn connect(self, stream: S) -> Self::Future {
        let limit = self.limit;
        let connecting = self.inner.connect(stream);
        Box::pin(async move {
            let session = connecting.await?;
            Ok(Limited::new(session, Filter::encrypted_messages(limit)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn error_body(message_text: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (code, text) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', "P0001")] {
            body.push(code);
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        body.push(b'M');
        body.extend_from_slice(message_text.as_bytes());
        body.push(0);
        body.push(0);
        body
    }

    /// Feeds `input` in pieces of `piece` bytes.
    fn filtered(filter: &mut Filter, input: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            filter.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn small_messages_pass_unchanged_however_they_are_split() {
        let mut input = message(b'T', b"row description");
        input.extend(message(b'D', &[7; 100]));
        input.extend(message(b'1', b""));
        input.extend(message(b'Z', b"I"));
        for piece in [1, 2, 3, 5, 7, 64, 4096] {
            let limit = MessageLimit::new(200);
            let mark = limit.begin_result();
            let mut filter = Filter::messages(Arc::clone(&limit));
            assert_eq!(filtered(&mut filter, &input, piece), input, "piece {piece}");
            assert_eq!(limit.rows_before_drop(mark), None);
        }
    }

    #[test]
    fn the_first_description_after_a_mark_is_fingerprinted_however_it_is_split() {
        let ours = message(b'T', b"\0\x01a\0 one column");
        let reset = message(b'T', b"\0\x01b\0 the reset's report");
        let input = [
            message(b'1', b""),
            ours.clone(),
            message(b'D', b"row"),
            message(b'Z', b"I"),
            reset,
        ]
        .concat();
        let mut seen = Vec::new();
        for piece in [1, 2, 3, 7, 4096] {
            let limit = MessageLimit::new(200);
            let mark = limit.flight_mark();
            assert_eq!(limit.description_since_mark(), None);
            let mut filter = Filter::messages(Arc::clone(&limit));
            assert_eq!(filtered(&mut filter, &input, piece), input, "piece {piece}");
            seen.push(limit.description_since_mark().expect("described"));
            assert_eq!(limit.replies_since(mark), 5);
        }
        assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "{seen:?}");

        // Another description, another fingerprint; NoData has its own.
        let limit = MessageLimit::new(200);
        let mut filter = Filter::messages(Arc::clone(&limit));
        limit.flight_mark();
        filtered(&mut filter, &message(b'T', b"\0\x01a\0 two column"), 3);
        assert_ne!(limit.description_since_mark(), Some(seen[0]));
        limit.flight_mark();
        filtered(&mut filter, &[message(b'n', b""), ours].concat(), 1);
        assert_eq!(limit.description_since_mark(), Some(NO_COLUMNS));
    }

    #[tokio::test]
    async fn bytes_written_are_counted_for_the_flight_mark() {
        use tokio::io::AsyncWriteExt;
        let limit = MessageLimit::new(200);
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = Limited::new(near, Filter::messages(Arc::clone(&limit)));
        let mark = limit.flight_mark();
        assert!(limit.unsent_since(mark));
        stream.write_all(b"Parse").await.expect("write");
        assert!(!limit.unsent_since(mark));
        assert!(limit.unsent_since(limit.flight_mark()));
    }

    #[test]
    fn the_last_ready_for_query_gives_the_transaction_status() {
        let limit = MessageLimit::new(200);
        let mut filter = Filter::messages(Arc::clone(&limit));
        assert_eq!(limit.transaction_status(), TransactionStatus::Idle);
        for (byte, status) in [
            (b"T", TransactionStatus::InTransaction),
            (b"E", TransactionStatus::Failed),
            (b"I", TransactionStatus::Idle),
        ] {
            let input = [message(b'C', b"BEGIN\0"), message(b'Z', byte)].concat();
            assert_eq!(filtered(&mut filter, &input, 1), input);
            assert_eq!(limit.transaction_status(), status);
        }
    }

    #[test]
    fn an_oversized_row_is_dropped_and_recorded_the_rest_passes() {
        let before = message(b'D', &[1; 50]);
        let huge = message(b'D', &[2; 5000]);
        let after = [message(b'C', b"SELECT 3\0"), message(b'Z', b"I")].concat();
        let input = [before.clone(), huge, after.clone()].concat();
        for piece in [1, 4, 5, 6, 333, 100_000] {
            let limit = MessageLimit::new(1000);
            let mut filter = Filter::messages(Arc::clone(&limit));
            // An earlier result of three rows, then this one.
            filtered(&mut filter, &before.repeat(3), piece);
            let mark = limit.begin_result();
            let out = filtered(&mut filter, &input, piece);
            assert_eq!(
                out,
                [before.clone(), after.clone()].concat(),
                "piece {piece}"
            );
            assert_eq!(limit.rows_before_drop(mark), Some(1), "one row came first");
        }
    }

    #[test]
    fn an_oversized_notice_is_dropped_silently() {
        let input = [message(b'N', &[b'x'; 3000]), message(b'Z', b"I")].concat();
        let limit = MessageLimit::new(1000);
        let mark = limit.begin_result();
        let mut filter = Filter::messages(Arc::clone(&limit));
        assert_eq!(filtered(&mut filter, &input, 17), message(b'Z', b"I"));
        assert_eq!(limit.rows_before_drop(mark), None);
    }

    #[test]
    fn an_oversized_error_keeps_its_code_and_the_start_of_its_message() {
        let text = "é".repeat(5000);
        let input = [message(b'E', &error_body(&text)), message(b'Z', b"I")].concat();
        let limit = MessageLimit::new(1000);
        let mut filter = Filter::messages(limit);
        let out = filtered(&mut filter, &input, 9);
        let (error, ready) = out.split_at(out.len() - 6);
        assert_eq!(ready, message(b'Z', b"I"));
        assert_eq!(error[0], b'E');
        let length = u32::from_be_bytes([error[1], error[2], error[3], error[4]]) as usize;
        assert_eq!(length + 1, error.len());
        assert!(error.len() < ERROR_PREFIX + 200, "{} bytes", error.len());
        // The driver's own parser reads it, field by field.
        use fallible_iterator::FallibleIterator;
        let mut bytes = bytes::BytesMut::from(error);
        let Ok(Some(postgres_protocol::message::backend::Message::ErrorResponse(parsed))) =
            postgres_protocol::message::backend::Message::parse(&mut bytes)
        else {
            panic!("not a valid ErrorResponse");
        };
        let codes: Vec<u8> = parsed
            .fields()
            .map(|field| Ok(field.type_()))
            .collect()
            .expect("valid fields");
        assert_eq!(codes, [b'S', b'V', b'C', b'M']);
        let body = String::from_utf8(error[5..].to_vec()).expect("valid UTF-8 throughout");
        assert!(body.contains("CP0001\0"), "{body}");
        assert!(body.contains("Méé"), "{body}");
        assert!(body.contains("cut by poolplane"), "{body}");
        assert!(body.ends_with("\0\0"));
    }

    #[test]
    fn after_an_ssl_answer_ciphertext_passes_and_a_refusal_is_followed_by_messages() {
        let limit = MessageLimit::new(10);
        let mut tls = Filter::after_ssl_answer(Arc::clone(&limit));
        let ciphertext = [b"S".as_slice(), &[b'D', 0, 0, 1, 0], &[9; 300]].concat();
        assert_eq!(filtered(&mut tls, &ciphertext, 3), ciphertext);

        let mut plain = Filter::after_ssl_answer(Arc::clone(&limit));
        let mark = limit.begin_result();
        let input = [b"N".to_vec(), message(b'D', &[1; 300])].concat();
        assert_eq!(filtered(&mut plain, &input, 3), b"N");
        assert_eq!(limit.rows_before_drop(mark), Some(0));
    }

    #[test]
    fn an_error_saying_the_connection_ends_on_request_is_noted() {
        let terminated = |code: &str| {
            let mut body = Vec::new();
            for (field, text) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code)] {
                body.push(field);
                body.extend_from_slice(text.as_bytes());
                body.push(0);
            }
            body.extend_from_slice(b"Mterminating connection due to administrator command\0\0");
            let input = message(b'E', &body);
            let limit = MessageLimit::new(1000);
            let mut filter = Filter::messages(Arc::clone(&limit));
            assert_eq!(filtered(&mut filter, &input, 3), input, "passes unchanged");
            limit.terminated()
        };
        assert!(terminated("57P01"));
        assert!(!terminated("57P02"));
        assert!(!terminated("57014"));
    }

    #[test]
    fn a_cleartext_password_request_never_reaches_the_driver_without_tls() {
        let cleartext = message(b'R', &[0, 0, 0, 3]);
        let md5 = message(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        for piece in [1, 2, 3, 100] {
            let mut plain = Filter::messages(MessageLimit::new(1000));
            assert_eq!(filtered(&mut plain, &md5, piece), md5, "hashed passes");
            assert!(!plain.refused_cleartext());
            let out = filtered(&mut plain, &cleartext, piece);
            assert!(out.is_empty(), "{out:?}");
            assert!(plain.refused_cleartext());

            let mut tls = Filter::encrypted_messages(MessageLimit::new(1000));
            assert_eq!(
                filtered(&mut tls, &cleartext, piece),
                cleartext,
                "inside TLS"
            );
            assert!(!tls.refused_cleartext());

            let mut declined = Filter::after_ssl_answer(MessageLimit::new(1000));
            let input = [b"N".to_vec(), cleartext.clone()].concat();
            assert_eq!(filtered(&mut declined, &input, piece), b"N");
            assert!(declined.refused_cleartext(), "TLS declined: plaintext");
        }
    }

    /// What the filter should make of whole messages, one at a time.
    fn reference(messages: &[(u8, Vec<u8>)], max: usize) -> (Vec<u8>, Option<u64>) {
        let mut out = Vec::new();
        let mut first_dropped = None;
        let mut row = 0;
        for (kind, body) in messages {
            let oversized = body.len() + 4 > max;
            if *kind == b'D' {
                if oversized {
                    first_dropped.get_or_insert(row);
                }
                row += 1;
            }
            match kind {
                b'D' | b'N' if oversized => {}
                b'E' if oversized => out.extend(shortened_error(
                    &body[..body.len().min(ERROR_PREFIX)],
                    body.len() + 4,
                )),
                _ => out.extend(message(*kind, body)),
            }
        }
        (out, first_dropped)
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_any_messages_filters_like_whole_messages(
            messages in proptest::collection::vec(
                (
                    proptest::sample::select(vec![b'D', b'E', b'N', b'T', b'Z', b'C']),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
                ),
                0..12,
            ),
            cuts in proptest::collection::vec(1usize..4000, 0..40),
        ) {
            let max = 1500;
            let input: Vec<u8> = messages.iter().flat_map(|(k, b)| message(*k, b)).collect();
            let limit = MessageLimit::new(max as u64);
            let mark = limit.begin_result();
            let mut filter = Filter::messages(Arc::clone(&limit));
            let mut out = Vec::new();
            let mut rest = input.as_slice();
            for cut in cuts {
                let (piece, after) = rest.split_at(cut.min(rest.len()));
                filter.feed(piece, &mut out);
                rest = after;
            }
            filter.feed(rest, &mut out);
            let (expected, first_dropped) = reference(&messages, max);
            proptest::prop_assert_eq!(out, expected);
            proptest::prop_assert_eq!(limit.rows_before_drop(mark), first_dropped);
        }
    }
}
