//! The HTTP accept loop: hyper's HTTP/1.1 connection driver under our own limits and timers.
//!
//! Every accepted connection gets a watchdog that closes it when
//! - the head of a request is not complete within `header_timeout` of its first byte (the first
//!   request's clock starts at accept, so a client that connects and sends nothing is closed
//!   too; hyper's own header timer would only close it once it polls for a head);
//! - it has been idle between requests (nothing read or written) for `keep_alive_timeout`.
//!
//! A request body must arrive whole within `body_timeout` of its head (else 408 and the
//! connection is closed). A `Content-Length` over the body limit is refused with 413 before a
//! byte of the body is read; a chunked body is cut at the limit by the router's body limit. A
//! head with both `Content-Length` and `Transfer-Encoding` is refused with 400 (hyper would
//! quietly ignore the length; a proxy in front may not, which is how requests are smuggled).
//! More than `max_headers` header lines, or a head over `max_header_bytes`, gets 431 from hyper.
//! Connections beyond `max_connections` are accepted, answered 503 and closed (over TLS they
//! are closed without an answer: a plaintext 503 would be noise to a TLS client, and a
//! handshake is the work the limit is there to refuse).
//!
//! With `[tls]`, every connection first completes a TLS handshake, and the handshake counts
//! against `header_timeout` of the first request (its clock starts at accept either way). A
//! client that does not speak TLS (a plaintext request, say) gets a TLS alert or a closed
//! connection. The watchdog and the head scan see the decrypted bytes.
//!
//! Graceful shutdown stops accepting, lets in-flight requests finish (their responses are
//! written) and closes idle connections; the watchdog keeps running, so a slow client cannot
//! hold shutdown up beyond its timeouts.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sluice_event::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::error_response;

/// The `[listener]` section of the config file: HTTP connection limits and timeouts.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Longest time from the first byte of a request (for the first request of a connection:
    /// from accept) to the end of its head; the connection is then closed. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest time from the end of a request's head to the end of its body; then 408 and the
    /// connection is closed. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest a kept-alive connection may sit idle between requests. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Most open connections; more are answered 503 and closed. Default 1024 (keep it below
    /// the process's open-file limit).
    pub max_connections: usize,
    /// Most header lines in a request; more get 431. Default 100.
    pub max_headers: usize,
    /// Largest request head (request line and headers) in bytes; larger gets 431. Default 32 KiB.
    pub max_header_bytes: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_headers: 100,
            max_header_bytes: 32 << 10,
        }
    }
}

/// hyper refuses a read buffer smaller than this.
const MIN_BUF_BYTES: usize = 8192;

impl ListenerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<ListenerConfig, String> {
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(format!("listener.{name} must be at least 10ms"));
            }
        }
        if self.max_connections == 0 {
            return Err("listener.max_connections must be at least 1".into());
        }
        if self.max_headers < 8 {
            return Err("listener.max_headers must be at least 8".into());
        }
        if self.max_header_bytes < 1024 {
            return Err("listener.max_header_bytes must be at least 1024".into());
        }
        Ok(self.clone())
    }
}

/// What the accept loop needs besides the router.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) listener: ListenerConfig,
    /// Largest request body the router takes (a larger `Content-Length` is refused at once).
    pub(crate) max_body_bytes: usize,
    /// HTTPS only, when set.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The answer to a connection over `max_connections`, written without reading the request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 65\r\n\r\n\
{\"error\":\"too many open connections; retry\",\"kind\":\"unavailable\"}";

/// Binds the HTTP listener with an accept queue sized for `max_connections` (the usual 128
/// would drop the handshakes of a burst of clients while the loop catches up; the kernel caps
/// it at `net.core.somaxconn`).
pub(crate) fn bind(addr: SocketAddr, max_connections: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let backlog = max_connections.clamp(128, 4096) as u32;
    socket.listen(backlog)
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains: returns once every
/// connection has finished.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.listener.max_connections));
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The watchdog times heads; hyper's own header timer would also cut kept-alive idle
        // connections at the header timeout.
        .header_read_timeout(None)
        .max_headers(limits.listener.max_headers)
        .max_header_size(limits.listener.max_header_bytes)
        .max_buf_size(limits.listener.max_header_bytes.max(MIN_BUF_BYTES));
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a similar resource error): back off instead of
                // spinning on a listener that stays readable.
                tracing::warn!(error = %e, "accept failed");
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Best effort: the socket is fresh, so its send buffer has room for this.
            if limits.tls.is_none() {
                let _ = stream.try_write(BUSY);
            }
            crate::metrics::connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, limits, builder, stop) = (
            router.clone(),
            limits.clone(),
            builder.clone(),
            stop.clone(),
        );
        tracker.spawn(async move {
            crate::metrics::connection_opened();
            serve_connection(stream, peer, slot, router, limits, &builder, stop).await;
            crate::metrics::connection_closed();
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    router: Router,
    limits: Arc<Limits>,
    builder: &hyper::server::conn::http1::Builder,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::new());
    let Some(acceptor) = limits.tls.clone() else {
        drive(stream, peer, state, slot, router, limits, builder, stop).await;
        return;
    };
    // The handshake is part of the first request's head: it ends by the header deadline.
    let deadline = state.opened + limits.listener.header_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        _ = stop.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => drive(tls, peer, state, slot, router, limits, builder, stop).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            crate::metrics::tls_handshake_failed();
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not complete within the header timeout");
            crate::metrics::connection_timed_out("handshake");
        }
    }
}

/// Runs hyper's connection driver over `stream` (plain TCP or TLS) under the watchdog.
#[allow(clippy::too_many_arguments)]
async fn drive<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<ConnState>,
    slot: OwnedSemaphorePermit,
    router: Router,
    limits: Arc<Limits>,
    builder: &hyper::server::conn::http1::Builder,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Tracked {
        inner: stream,
        state: state.clone(),
    });
    let service = {
        let state = state.clone();
        let limits = limits.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(req, peer, router.clone(), limits.clone(), state.clone())
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        let check = state.check(&limits.listener, Instant::now());
        let wake = match check {
            Check::Expired(why) => {
                tracing::debug!(%peer, why, "closing connection");
                crate::metrics::connection_timed_out(why);
                // Dropping the connection closes the socket; nothing is in flight.
                break;
            }
            Check::Until(at) => at,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // The slot is free before the socket closes, so a client that sees the close can connect
    // again at once.
    drop(slot);
}

/// One request: the checks hyper does not make, the body timer, then the router.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
) -> Result<Response<axum::body::Body>, Infallible> {
    let smuggling = state.begin_request(hyper::body::Body::is_end_stream(req.body()));
    let _guard = RequestGuard(state.clone());
    if smuggling {
        state.stop_scanning();
        return Ok(closing(error_response(
            ErrorKind::Invalid,
            "a request may not carry both Content-Length and Transfer-Encoding",
        )));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared
        && len > limits.max_body_bytes as u64
    {
        state.stop_scanning();
        return Ok(closing(error_response(
            ErrorKind::TooLarge,
            format!(
                "body of {len} bytes exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        )));
    }
    let flags = Arc::new(BodyFlags::default());
    let (parts, body) = req.into_parts();
    let body = TimedBody {
        inner: body,
        conn: state.clone(),
        timer: Box::pin(tokio::time::sleep(limits.listener.body_timeout)),
        flags: flags.clone(),
    };
    let mut req = Request::from_parts(parts, axum::body::Body::new(body));
    req.extensions_mut().insert(ConnectInfo(peer));
    let mut router = router;
    let resp = match tower::Service::call(&mut router, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if flags.timed_out.load(Ordering::Relaxed) {
        crate::metrics::connection_timed_out("body");
        state.stop_scanning();
        return Ok(closing(timeout_response(limits.listener.body_timeout)));
    }
    if !flags.complete.load(Ordering::Relaxed) && !flags.untouched() {
        // The handler gave up on a body it started reading (over the limit, broken): what is
        // left of it must not be read as the next request.
        state.stop_scanning();
        let plain = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|c| c.starts_with("text/plain"));
        if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && plain {
            // The router's body limit answers in plain text; say it like every other error
            // (a protocol's own 413, such as Kinesis's JSON error, is kept as it is).
            return Ok(closing(error_response(
                ErrorKind::TooLarge,
                format!("body exceeds the limit of {} bytes", limits.max_body_bytes),
            )));
        }
        return Ok(closing(resp));
    }
    Ok(resp)
}

/// 408, in the shape of every other error answer.
fn timeout_response(limit: Duration) -> Response<axum::body::Body> {
    let body = serde_json::json!({
        "error": format!("request body not received within {}s", limit.as_secs_f64()),
        "kind": "timeout",
    });
    (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response()
}

/// Marks a response as the last on its connection.
fn closing(mut resp: Response<axum::body::Body>) -> Response<axum::body::Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// What the watchdog decided.
enum Check {
    Expired(&'static str),
    Until(Instant),
}

/// Per-connection bookkeeping shared by the socket wrapper, the service and the watchdog.
/// Times are milliseconds since `opened`.
struct ConnState {
    opened: Instant,
    /// Requests whose head was read and whose response is not yet produced.
    in_flight: AtomicUsize,
    /// When the current head started arriving; `NONE` between requests. The first request's
    /// head starts at accept.
    head_started: AtomicU64,
    /// Last time a response was produced or a byte was written.
    last_active: AtomicU64,
    /// The current request's body has been read to its end: what arrives now is the next head.
    body_done: AtomicBool,
    /// Bytes of a pipelined head arrived while a request was in flight.
    early_head: AtomicBool,
    /// Looks for `Content-Length` together with `Transfer-Encoding` in heads as they arrive.
    scan: Mutex<HeadScan>,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            body_done: AtomicBool::new(false),
            early_head: AtomicBool::new(false),
            scan: Mutex::new(HeadScan {
                active: true,
                ..HeadScan::default()
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn check(&self, cfg: &ListenerConfig, now: Instant) -> Check {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Requests bound their own bodies; look again later.
            return Check::Until(now + cfg.header_timeout.min(cfg.keep_alive_timeout));
        }
        let (from, limit, why) = match self.head_started.load(Ordering::Acquire) {
            NONE => (
                self.last_active.load(Ordering::Acquire),
                cfg.keep_alive_timeout,
                "idle",
            ),
            started => (started, cfg.header_timeout, "header"),
        };
        let deadline = self.at(from) + limit;
        if now >= deadline {
            Check::Expired(why)
        } else {
            Check::Until(deadline)
        }
    }

    /// A head is complete: its timer stops. Returns whether it carried both framing headers.
    fn begin_request(&self, empty_body: bool) -> bool {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        self.body_done.store(empty_body, Ordering::Release);
        let mut scan = self.scan.lock().unwrap_or_else(|p| p.into_inner());
        let smuggling = scan.content_length && scan.transfer_encoding;
        scan.restart(false);
        smuggling
    }

    fn end_request(&self) {
        let now = self.now_ms();
        self.last_active.store(now, Ordering::Release);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if self.early_head.swap(false, Ordering::AcqRel) {
                // The next head started during this request: its header timer runs from now.
                let _ = self.head_started.compare_exchange(
                    NONE,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            let mut scan = self.scan.lock().unwrap_or_else(|p| p.into_inner());
            if !scan.stopped {
                scan.restart(true);
            }
        }
    }

    /// The connection ends after this response: the bytes that follow are not heads.
    fn stop_scanning(&self) {
        let mut scan = self.scan.lock().unwrap_or_else(|p| p.into_inner());
        scan.stopped = true;
        scan.restart(false);
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if self.body_done.load(Ordering::Acquire) {
                self.early_head.store(true, Ordering::Release);
            }
            return;
        }
        let _ = self.head_started.compare_exchange(
            NONE,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(bytes);
    }

    fn on_write(&self) {
        self.last_active.store(self.now_ms(), Ordering::Release);
    }
}

struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// An incremental scan of a request head for its framing headers. Only the start of each line
/// is kept, so its memory is fixed whatever the client sends.
#[derive(Default)]
struct HeadScan {
    active: bool,
    stopped: bool,
    line: [u8; 20],
    line_len: usize,
    line_bytes: usize,
    seen_request_line: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl HeadScan {
    fn restart(&mut self, active: bool) {
        *self = Self {
            active: active && !self.stopped,
            stopped: self.stopped,
            ..Self::default()
        };
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !self.active {
                return;
            }
            if b == b'\n' {
                let len = self.line_len.min(self.line.len());
                let mut line = &self.line[..len];
                if line.last() == Some(&b'\r') && self.line_bytes == len {
                    line = &line[..len - 1];
                }
                let empty = self.line_bytes == 0 || (self.line_bytes == 1 && line.is_empty());
                if empty {
                    if self.seen_request_line {
                        // End of the head: the rest is body.
                        self.active = false;
                    }
                } else if !self.seen_request_line {
                    self.seen_request_line = true;
                } else if line.starts_with(b"content-length:") {
                    self.content_length = true;
                } else if line.starts_with(b"transfer-encoding:") {
                    self.transfer_encoding = true;
                }
                self.line_len = 0;
                self.line_bytes = 0;
            } else {
                if let Some(slot) = self.line.get_mut(self.line_len) {
                    *slot = b.to_ascii_lowercase();
                    self.line_len += 1;
                }
                self.line_bytes += 1;
            }
        }
    }
}

/// The socket (or the TLS stream over it), reporting reads and writes to the connection's
/// bookkeeping.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && let Some(new) = buf.filled().get(before..)
        {
            this.state.on_read(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.state.on_write();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.state.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a request body ended, seen by the service after the handler answered.
#[derive(Default)]
struct BodyFlags {
    polled: AtomicBool,
    complete: AtomicBool,
    timed_out: AtomicBool,
}

impl BodyFlags {
    /// The handler never read the body (hyper drains or closes it itself).
    fn untouched(&self) -> bool {
        !self.polled.load(Ordering::Relaxed)
    }
}

/// A request body that fails once `body_timeout` has passed since its head.
struct TimedBody {
    inner: Incoming,
    conn: Arc<ConnState>,
    timer: Pin<Box<tokio::time::Sleep>>,
    flags: Arc<BodyFlags>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.flags.polled.store(true, Ordering::Relaxed);
        if this.flags.complete.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.flags.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("request body timed out".into())));
        }
        match hyper::body::Body::poll_frame(Pin::new(&mut this.inner), cx) {
            Poll::Ready(None) => {
                this.flags.complete.store(true, Ordering::Relaxed);
                this.conn.body_done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => {
                if hyper::body::Body::is_end_stream(&this.inner) {
                    this.flags.complete.store(true, Ordering::Relaxed);
                    this.conn.body_done.store(true, Ordering::Release);
                }
                Poll::Ready(Some(r.map_err(Into::into)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.flags.complete.load(Ordering::Relaxed) || hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> (bool, bool) {
        let mut s = HeadScan {
            active: true,
            ..HeadScan::default()
        };
        for p in parts {
            s.feed(p);
        }
        (s.content_length, s.transfer_encoding)
    }

    #[test]
    fn head_scan_finds_both_framing_headers_across_reads() {
        let head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[head]), (true, true));
        // Split at every byte.
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(scan(&bytes), (true, true));
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"]),
            (true, false)
        );
        // The body is not a head.
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n"]),
            (true, false)
        );
        // A header value that mentions the other header is not the header.
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\n\r\n"]),
            (false, false)
        );
    }

    #[test]
    fn watchdog_deadlines() {
        let cfg = ListenerConfig {
            header_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(5),
            ..ListenerConfig::default()
        };
        let s = ConnState::new();
        let t0 = s.opened;
        // A fresh connection has until the header timeout to send a head.
        assert!(matches!(s.check(&cfg, t0), Check::Until(t) if t == t0 + Duration::from_secs(1)));
        assert!(matches!(
            s.check(&cfg, t0 + Duration::from_secs(2)),
            Check::Expired("header")
        ));
        // While a request is in flight nothing expires.
        s.begin_request(false);
        s.on_read(b"body bytes");
        assert!(matches!(
            s.check(&cfg, t0 + Duration::from_secs(100)),
            Check::Until(_)
        ));
        s.end_request();
        // Between requests the keep-alive timer runs.
        let idle = s.check(&cfg, Instant::now());
        assert!(matches!(idle, Check::Until(t) if t >= t0 + Duration::from_secs(5)));
        assert!(matches!(
            s.check(&cfg, Instant::now() + Duration::from_secs(6)),
            Check::Expired("idle")
        ));
        // A pipelined head that started arriving during a request gets the header timer.
        s.begin_request(true);
        s.on_read(b"GET / HTTP/1.1\r\nX-Slow:");
        s.end_request();
        assert!(matches!(
            s.check(&cfg, Instant::now() + Duration::from_secs(2)),
            Check::Expired("header")
        ));
    }

    #[test]
    fn config_defaults_are_valid_and_bad_values_refused() {
        assert!(ListenerConfig::default().validate().is_ok());
        let bad = ListenerConfig {
            max_connections: 0,
            ..ListenerConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "listener.max_connections must be at least 1"
        );
        let bad = ListenerConfig {
            header_timeout: Duration::ZERO,
            ..ListenerConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "listener.header_timeout must be at least 10ms"
        );
    }
}
