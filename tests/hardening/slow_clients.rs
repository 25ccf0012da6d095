//! 300 slow clients beside a normal one: 150 HTTP/1.1 requests whose body comes a byte a
//! second, and 150 gRPC Rerank streams whose message comes a byte a second, each on a
//! connection of its own from a client that answers the server's pings (h2 does). The
//! server ends every slow request at its timeout and closes every one of those
//! connections (idle timeout, else maximum age); the normal client does not notice.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const SLOW: usize = 150;
const NORMAL_REQUESTS: usize = 1000;

/// Settings that make the test's timeouts short, all as an operator would set them.
const SETTINGS: &[(&str, &str)] = &[
    ("CROSSENC_SERVER__HTTP_REQUEST_TIMEOUT", "25s"),
    ("CROSSENC_SERVER__DEFAULT_DEADLINE", "25s"),
    ("CROSSENC_SERVER__CONNECTION_IDLE_TIMEOUT", "8s"),
    ("CROSSENC_SERVER__MAX_CONNECTION_AGE", "60s"),
    ("CROSSENC_SERVER__MAX_CONNECTION_AGE_GRACE", "10s"),
    ("CROSSENC_SERVER__HTTP2_KEEPALIVE_INTERVAL", "3s"),
    ("CROSSENC_SERVER__HTTP2_KEEPALIVE_TIMEOUT", "5s"),
];

/// What one slow client saw: whether its request was answered, and when the server
/// closed its connection (from the connect).
#[derive(Debug)]
struct SlowOutcome {
    answered: bool,
    closed_after: Duration,
}

/// A JSON Rerank sent a byte a second, with its real length declared.
async fn slow_http(addr: SocketAddr) -> SlowOutcome {
    let body =
        r#"{"query":"what is a cat","texts":["a cat is a small feline","stock prices fell"]}"#;
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /rerank HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    trickle.abort();
    SlowOutcome {
        answered: answer.starts_with(b"HTTP/1.1 "),
        closed_after: started.elapsed(),
    }
}

/// A gRPC Rerank whose message is sent a byte a second, on a connection of its own.
async fn slow_grpc(addr: SocketAddr) -> SlowOutcome {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    // Runs (answering pings) until the server closes the connection.
    let connection = tokio::spawn(connection);
    let (frames, body) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body));
    let request = hyper::Request::post(format!("http://{addr}/crossenc.v1.CrossEncoder/Rerank"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a request");
    let message = grpc_frame(&small_rerank("", 0).encode_to_vec());
    let trickle = tokio::spawn(async move {
        for byte in message.iter() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let frame = Frame::data(Bytes::copy_from_slice(&[*byte]));
            if frames.send(Ok(frame)).await.is_err() {
                return;
            }
        }
        // The message is whole: hold the stream open, as a stalled client would.
        std::future::pending::<()>().await;
    });
    let answered = send.send_request(request).await.is_ok();
    let _ = connection.await;
    trickle.abort();
    SlowOutcome {
        answered,
        closed_after: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_ended_and_disconnected_and_a_normal_clients_p99_holds() {
    let server = TestServer::start_with_env(&[], SETTINGS);
    let pid = server.pid();
    normal_client(&server, 20).await; // warm
    let alone = normal_client(&server, NORMAL_REQUESTS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_fds, idle_rss) = (open_fds(pid), rss_mib(pid));

    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(tokio::spawn(slow_http(server.http_addr)));
        slow.push(tokio::spawn(slow_grpc(server.grpc_addr)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held_fds = open_fds(pid);
    let during = normal_client(&server, NORMAL_REQUESTS).await;

    let outcomes = tokio::time::timeout(
        Duration::from_secs(180),
        futures_util::future::join_all(slow),
    )
    .await
    .expect("every slow connection is closed by the server within three minutes");
    let outcomes: Vec<SlowOutcome> = outcomes
        .into_iter()
        .map(|o| o.expect("a slow client"))
        .collect();
    let slowest = outcomes
        .iter()
        .map(|o| o.closed_after)
        .max()
        .unwrap_or_default();
    let answered = outcomes.iter().filter(|o| o.answered).count();
    let (p99_alone, p99_during) = (p99(&alone), p99(&during));
    println!(
        "normal client p99: {p99_alone:?} alone, {p99_during:?} beside {} slow clients; \
         {answered} slow requests answered; the last slow connection closed after {slowest:?}; \
         supervisor fds {idle_fds} idle, {held_fds} while held",
        2 * SLOW
    );
    assert!(
        held_fds >= idle_fds + SLOW,
        "the slow connections were open: {held_fds} fds"
    );
    // 1.5x, with 5 ms for a timer's granularity on a p99 of a few milliseconds.
    assert!(
        p99_during <= p99_alone.mul_f64(1.5) + Duration::from_millis(5),
        "the normal client's p99 went from {p99_alone:?} to {p99_during:?}"
    );
    assert_eq!(
        answered,
        2 * SLOW,
        "every slow request is ended with an answer: {outcomes:?}"
    );
    assert!(
        settles(Duration::from_secs(30), || open_fds(pid) <= idle_fds + 4).await,
        "the supervisor's file descriptors come back to idle: {} now, {idle_fds} idle",
        open_fds(pid)
    );
    let rss = rss_mib(pid);
    println!("supervisor RSS: {idle_rss:.1} MiB idle, {rss:.1} MiB after");
    assert!(
        rss <= idle_rss + 16.0,
        "the supervisor's memory comes back: {rss:.1} MiB, {idle_rss:.1} MiB idle"
    );
}
