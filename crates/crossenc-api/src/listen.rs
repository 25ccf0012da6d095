//! Listeners that hold at most `max_connections` connections each.
//!
//! A connection past the limit is accepted and closed at once rather than left in the
//! kernel's backlog: a client learns at once. A connection that sends nothing within the
//! first-byte timeout is closed, so that silent connections cannot hold the slots (the
//! HTTP server's header timer starts only once a request begins, and HTTP/2 has none).
//! A connection with no request in flight for the idle timeout is closed too: HTTP/2
//! clients answer keepalive pings, so a connection can be silent of requests and still
//! busy with bytes, and only the requests on it say whether it is in use.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::http;
use tonic::transport::server::Connected;

use crate::rule::RequestRule;
use crate::tls::LiveAcceptor;

/// After an accept error (out of file descriptors, say), the pause before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What a listener allows each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub connections: usize,
    /// How long a new connection may stay silent (and take over its TLS handshake).
    pub first_byte: Duration,
    /// How long a connection may go with no request in flight.
    pub idle: Duration,
}

/// A TCP listener that holds at most a fixed number of connections.
pub struct LimitedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    what: &'static str,
}

/// An accepted connection; its slot is free again when it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the connection is given up.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
    info: ConnectionInfo,
    idle: Duration,
    /// When to look again whether the connection has been idle too long.
    idle_check: Pin<Box<tokio::time::Sleep>>,
}

/// Who a connection is and what it is doing, for the requests on it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub activity: Arc<Activity>,
}

/// The requests in flight on one connection, and since when there have been none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// A request in flight on its connection, until dropped.
pub struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// When the connection becomes idle too long, as far as is known now: `None` while a
    /// request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + idle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The stamp is taken before the count falls, so that a reader seeing none in
        // flight sees this request's end.
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts each request as in flight on its connection (by the request's
/// [`ConnectionInfo`]) until it is answered: what the idle timeout reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequests;

impl<B, Answer> RequestRule<B, Answer> for TrackRequests {
    type Held = Option<InFlight>;

    fn apply(&self, request: http::Request<B>) -> Result<(http::Request<B>, Self::Held), Answer> {
        let in_flight = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.activity.begin());
        Ok((request, in_flight))
    }
}

impl LimitedListener {
    /// A listener holding at most `limits.connections` connections, each closed if it
    /// sends nothing within `limits.first_byte` or has no request for `limits.idle`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, what: &'static str) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.connections)),
            limits,
            what,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the limit; those past it are closed as they come.
    pub async fn next(&self) -> (LimitedStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(listener = self.what, %error, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => {
                    // Answers are small: send them at once rather than wait to coalesce.
                    let _ = stream.set_nodelay(true);
                    let ConnectionLimits {
                        first_byte, idle, ..
                    } = self.limits;
                    let stream = LimitedStream {
                        stream,
                        _slot: slot,
                        silent_until: Some(Box::pin(tokio::time::sleep(first_byte))),
                        info: ConnectionInfo {
                            remote: addr,
                            activity: Activity::new(),
                        },
                        idle,
                        idle_check: Box::pin(tokio::time::sleep(idle)),
                    };
                    return (stream, addr);
                }
                Err(_) => {
                    let limit = self.limits.connections;
                    tracing::warn!(listener = self.what, limit, %addr, "at max_connections; closing a new connection");
                }
            }
        }
    }

    /// The connections as a stream, for tonic: with `tls`, each handshake runs in a task
    /// of its own (a slow client does not hold up the others) and must finish within
    /// the first-byte timeout; a failed one is logged and dropped.
    pub fn into_connections(
        self,
        tls: Option<Arc<LiveAcceptor>>,
    ) -> impl futures_util::Stream<Item = Result<Connection, io::Error>> + Send {
        let (ready, incoming) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    accepted = self.next() => accepted,
                    () = ready.closed() => return,
                };
                let (tls, ready, timeout) = (tls.clone(), ready.clone(), self.limits.first_byte);
                tokio::spawn(async move {
                    let tls = tls.map(|live| live.get());
                    match Connection::accept(stream, tls.as_ref(), timeout).await {
                        Ok(connection) => {
                            let _ = ready.send(Ok(connection)).await;
                        }
                        Err(error) => tracing::debug!(%addr, %error, "TLS handshake failed"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(incoming)
    }
}

/// A connection as the servers read it: plain, or TLS over the limited stream.
pub enum Connection {
    Plain(LimitedStream),
    Tls(Box<tokio_rustls::server::TlsStream<LimitedStream>>),
}

impl Connection {
    /// The connection, after the TLS handshake when `tls` is set (within `timeout`).
    pub async fn accept(
        stream: LimitedStream,
        tls: Option<&TlsAcceptor>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let Some(tls) = tls else {
            return Ok(Connection::Plain(stream));
        };
        match tokio::time::timeout(timeout, tls.accept(stream)).await {
            Ok(done) => Ok(Connection::Tls(Box::new(done?))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no TLS handshake within the first-byte timeout",
            )),
        }
    }
}

impl Connection {
    pub fn info(&self) -> &ConnectionInfo {
        match self {
            Connection::Plain(stream) => &stream.info,
            Connection::Tls(stream) => &stream.get_ref().0.info,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info().clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl LimitedStream {
    /// Whether the connection has gone the idle timeout with no request; if not, the
    /// check is set for the next moment it could have (and polled, to be woken then).
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = match self.info.activity.idle_deadline(self.idle) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => deadline,
                None => now + self.idle,
            };
            self.idle_check.as_mut().reset(next);
        }
        false
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if read.is_pending() && self.idle_too_long(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request on the connection within the idle timeout",
            )));
        }
        let Some(silent_until) = self.silent_until.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
            Poll::Pending if silent_until.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent nothing within the first-byte timeout",
                )));
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, first_byte_ms: u64, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            connections,
            first_byte: Duration::from_millis(first_byte_ms),
            idle: Duration::from_millis(idle_ms),
        }
    }

    #[tokio::test]
    async fn a_connection_is_closed_once_idle_but_never_while_a_request_is_in_flight() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limited = LimitedListener::new(listener, limits(1, 60_000, 300), "test");
        let mut client = TcpStream::connect(limited.local_addr().unwrap())
            .await
            .unwrap();
        let (mut held, _) = limited.next().await;
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(held.read(&mut byte).await.unwrap(), 1);
        // Bytes alone (a client answering pings) do not keep it; a request does.
        let request = held.info.activity.begin();
        let busy = tokio::time::timeout(Duration::from_millis(900), held.read(&mut byte)).await;
        assert!(busy.is_err(), "closed with a request in flight: {busy:?}");
        drop(request);
        let started = Instant::now();
        let idle = held.read(&mut byte).await.unwrap_err();
        assert_eq!(idle.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_slots_come_back() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limited = LimitedListener::new(listener, limits(1, 60_000, 60_000), "test");
        let addr = limited.local_addr().unwrap();
        let first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = limited.next().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        // The second is closed at once.
        let accepting = tokio::spawn(async move { limited.next().await });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // Once the first goes, its slot takes the next connection.
        drop(held);
        drop(first);
        let third = TcpStream::connect(addr).await.unwrap();
        let (_third_held, from) = tokio::time::timeout(Duration::from_secs(5), accepting)
            .await
            .expect("the third connection is accepted once a slot is free")
            .unwrap();
        assert_eq!(from, third.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_given_up_and_one_that_speaks_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limited = LimitedListener::new(listener, limits(2, 200, 60_000), "test");
        let addr = limited.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut silent, _) = limited.next().await;
        let mut speaking = TcpStream::connect(addr).await.unwrap();
        let (mut heard, _) = limited.next().await;
        speaking.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(heard.read(&mut byte).await.unwrap(), 1);
        let given_up = silent.read(&mut byte).await.unwrap_err();
        assert_eq!(given_up.kind(), io::ErrorKind::TimedOut);
        // Past the first byte, silence is the protocol's business, not the listener's.
        let later = tokio::time::timeout(Duration::from_millis(400), heard.read(&mut byte)).await;
        assert!(later.is_err(), "a connection that spoke is not timed out");
    }
}
