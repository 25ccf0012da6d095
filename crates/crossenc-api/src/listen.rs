//! Listeners that hold at most `max_connections` connections each.
//!
//! A connection past the limit is accepted and closed at once rather than left in the
//! kernel's backlog: a client learns at once. A connection that sends nothing within the
//! first-byte timeout is closed, so that silent connections cannot hold the slots (the
//! HTTP server's header timer starts only once a request begins, and HTTP/2 has none).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// After an accept error (out of file descriptors, say), the pause before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A TCP listener that holds at most a fixed number of connections.
pub struct LimitedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limit: usize,
    first_byte: Duration,
    what: &'static str,
}

/// An accepted connection; its slot is free again when it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the connection is given up.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LimitedListener {
    /// A listener holding at most `limit` connections, each closed if it sends nothing
    /// within `first_byte`.
    pub fn new(
        listener: TcpListener,
        (limit, first_byte): (usize, Duration),
        what: &'static str,
    ) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            first_byte,
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
                    let silent_until = Box::pin(tokio::time::sleep(self.first_byte));
                    let stream = LimitedStream {
                        stream,
                        _slot: slot,
                        silent_until: Some(silent_until),
                    };
                    return (stream, addr);
                }
                Err(_) => {
                    tracing::warn!(listener = self.what, limit = self.limit, %addr, "at max_connections; closing a new connection");
                }
            }
        }
    }

    /// The connections as a stream, for tonic: with `tls`, each handshake runs in a task
    /// of its own (a slow client does not hold up the others) and must finish within
    /// the first-byte timeout; a failed one is logged and dropped.
    pub fn into_connections(
        self,
        tls: Option<TlsAcceptor>,
    ) -> impl futures_util::Stream<Item = Result<Connection, io::Error>> + Send {
        let (ready, incoming) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    accepted = self.next() => accepted,
                    () = ready.closed() => return,
                };
                let (tls, ready, timeout) = (tls.clone(), ready.clone(), self.first_byte);
                tokio::spawn(async move {
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

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Connection::Plain(stream) => stream.connect_info(),
            Connection::Tls(stream) => stream.get_ref().0.connect_info(),
        }
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

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
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

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_slots_come_back() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limited = LimitedListener::new(listener, (1, Duration::from_secs(60)), "test");
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
        let limited = LimitedListener::new(listener, (2, Duration::from_millis(200)), "test");
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
