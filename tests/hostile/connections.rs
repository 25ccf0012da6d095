//! Slow and silent connections, and bodies that never finish: they give their slots back.

use super::*;

/// Sends a request head a byte every 200 ms, never finishing it; returns how long the
/// server let the connection live (None: still open after `give_up`).
fn slowloris(addr: std::net::SocketAddr, give_up: Duration) -> Option<Duration> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opened = Instant::now();
    let head = b"POST /score HTTP/1.1\r\nHost: crossenc\r\nX-Slow: ";
    stream.write_all(head).unwrap();
    let mut byte = [0u8; 256];
    while opened.elapsed() < give_up {
        if stream.write_all(b"a").is_err() {
            return Some(opened.elapsed());
        }
        match stream.read(&mut byte) {
            // Closed (or answered and closed): the server cut the head off.
            Ok(_) => return Some(opened.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let server =
        TestServer::start_with_env(&[], &[("CROSSENC_SERVER__HTTP_HEADER_READ_TIMEOUT", "2s")]);
    let addr = server.http_addr;
    let slow: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || slowloris(addr, Duration::from_secs(15))))
        .collect();
    // Meanwhile the server serves as usual.
    let (status, body) = tokio::task::block_in_place(|| {
        post_json(
            addr,
            "/score",
            &json!({"pairs": [{"query": "what is this", "document": "a cat"}]}),
        )
    });
    assert_eq!(status, 200, "{body}");
    for client in slow {
        let lived = tokio::task::block_in_place(|| client.join().unwrap())
            .expect("a request head sent a byte at a time is cut off");
        assert!(
            lived >= Duration::from_millis(1500) && lived < Duration::from_secs(8),
            "cut off after {lived:?}, with a 2 s header read timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_say_nothing_are_closed() {
    let _serial = SERIAL.lock().await;
    let server =
        TestServer::start_with_env(&[], &[("CROSSENC_SERVER__HTTP_HEADER_READ_TIMEOUT", "1s")]);
    let lived: Vec<Option<Duration>> = tokio::task::block_in_place(|| {
        [server.http_addr, server.grpc_addr]
            .into_iter()
            .map(|addr| {
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let opened = Instant::now();
                let mut bytes = [0u8; 256];
                // The gRPC server speaks first (its HTTP/2 settings); read until the end:
                // 0 bytes (closed) or a reset, either way the server let go.
                loop {
                    match stream.read(&mut bytes) {
                        Ok(0) => return Some(opened.elapsed()),
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                        Err(_) => return Some(opened.elapsed()),
                    }
                }
            })
            .collect()
    });
    for (port, lived) in ["http", "grpc"].iter().zip(lived) {
        let lived = lived.unwrap_or_else(|| panic!("a silent connection to {port} stays open"));
        assert!(
            lived >= Duration::from_millis(800) && lived < Duration::from_secs(5),
            "a silent {port} connection closed after {lived:?}, with a 1 s timeout"
        );
    }
}

#[test]
fn a_body_that_never_finishes_gives_its_request_slot_back() {
    use std::io::Write;
    let server = TestServer::start(&[
        "--max-concurrent-requests",
        "1",
        "--http-request-timeout",
        "5s",
    ]);
    let addr = server.http_addr;
    let small = json!({"pairs": [{"query": "what is this", "document": "a cat"}]});
    // Promises 1000 bytes of body, sends 10, and waits. Nothing else is sent until the
    // server has surely taken it in (no answer within half a second), so that it holds
    // the one request slot rather than losing it to a probe.
    let mut stalled = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stalled
        .write_all(
            b"POST /score HTTP/1.1\r\nHost: crossenc\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pairs\": ",
        )
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut early = [0u8; 64];
    assert!(
        stalled.read(&mut early).is_err(),
        "the stalled request is not answered before its body arrives"
    );
    let start = Instant::now();
    // Its slot is taken while the body is awaited: the one request allowed is in flight.
    let mut refused = false;
    while start.elapsed() < Duration::from_secs(3) && !refused {
        refused = post_json(addr, "/score", &small).0 == 429;
    }
    assert!(refused, "the stalled request holds the only request slot");
    // Then it is answered (504) and its slot comes back.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    let (status, body) = post_json(addr, "/score", &small);
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_stop_service() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(&[]);
    let idle: Vec<TcpStream> = tokio::task::block_in_place(|| {
        let mut idle = Vec::new();
        for addr in [server.http_addr, server.grpc_addr] {
            for i in 0..250 {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("idle connection {i} to {addr}: {e}"));
                idle.push(stream);
            }
        }
        idle
    });
    let started = Instant::now();
    let grpc = tokio::time::timeout(Duration::from_secs(30), async {
        let mut client = server.client().await;
        client
            .rerank(rerank_request("what is this", &["a cat", "a dog"]))
            .await
    })
    .await
    .expect("a gRPC request is answered within 30 s beside 500 idle connections")
    .expect("a gRPC request is served beside 500 idle connections");
    assert_eq!(grpc.get_ref().results.len(), 2);
    let http_started = Instant::now();
    let (status, body) = tokio::task::block_in_place(|| {
        post_json(
            server.http_addr,
            "/score",
            &json!({"pairs": [{"query": "what is this", "document": "a cat"}]}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert!(
        http_started.elapsed() < Duration::from_secs(30),
        "POST /score took {:?}",
        http_started.elapsed()
    );
    println!(
        "served beside {} idle connections in {:?}",
        idle.len(),
        started.elapsed()
    );
    drop(idle);
    assert_eq!(http_get(server.http_addr, "/health").unwrap().0, 200);
}
