//! TLS: served to clients that trust its CA, mutual TLS, a certificate rotated on disk.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_only_them() {
    let files = Files::new("tls");
    let ca = Authority::new("crossenc test CA");
    let server = start(&tls_flags(&files, &ca));
    let ca_file = files.path("ca.pem");

    // Python's grpcio with the CA: the handshake and the health check succeed.
    let (code, said) = python_probe(server.grpc_addr, &[&ca_file]);
    assert_eq!(code, 0, "grpcio with the CA: {said}");
    // Without it (the system's roots), the handshake fails.
    let (code, said) = python_probe(server.grpc_addr, &[]);
    assert_eq!(code, 2, "grpcio without the CA must fail: {said}");
    assert!(said.contains("UNAVAILABLE"), "{said}");

    // A Rust client with the CA scores over TLS.
    let mut client = tls_client(server.grpc_addr, &ca.pem, None).await.unwrap();
    let ranked = client.rerank(rerank()).await.unwrap().into_inner();
    assert_eq!(ranked.results.len(), 2);

    // curl with --cacert gets the JSON API; without, it refuses the certificate.
    let (url, resolve) = https(server.http_addr.port(), "/rerank");
    let json = ["-H", "content-type: application/json", "-d", RERANK];
    let (code, status, body) = curl(
        &url,
        &[&["--cacert", &ca_file, "--resolve", &resolve], &json[..]].concat(),
    );
    assert_eq!((code, status), (0, 200), "{body}");
    let (code, _, _) = curl(&url, &[&["--resolve", &resolve], &json[..]].concat());
    assert_eq!(code, 60, "curl without the CA cannot verify the server");
    // The API port speaks no plaintext.
    assert!(
        !matches!(http_get(server.http_addr, "/health"), Ok((200, _))),
        "plain HTTP must not be served on a TLS port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let files = Files::new("mtls");
    let ca = Authority::new("crossenc test CA");
    let mut flags = tls_flags(&files, &ca);
    flags.extend(["--tls-client-ca-file".into(), files.path("ca.pem")]);
    let server = start(&flags);
    let (client_cert, client_key) = ca.leaf(true);
    let cert_file = files.write("client.pem", &client_cert);
    let key_file = files.write("client.key", &client_key);
    let ca_file = files.path("ca.pem");

    let (url, resolve) = https(server.http_addr.port(), "/health");
    let (code, status, _) = curl(&url, &["--cacert", &ca_file, "--resolve", &resolve]);
    assert!(
        code != 0 && status != 200,
        "no client certificate: refused ({code}, {status})"
    );
    let with_cert = [
        "--cacert",
        &ca_file,
        "--resolve",
        &resolve,
        "--cert",
        &cert_file,
        "--key",
        &key_file,
    ];
    let (code, status, body) = curl(&url, &with_cert);
    assert_eq!((code, status), (0, 200), "{body}");

    let (code, said) = python_probe(server.grpc_addr, &[&ca_file]);
    assert_eq!(code, 2, "grpcio without a client certificate: {said}");
    let (code, said) = python_probe(server.grpc_addr, &[&ca_file, &cert_file, &key_file]);
    assert_eq!(code, 0, "grpcio with a client certificate: {said}");

    let refused = match tls_client(server.grpc_addr, &ca.pem, None).await {
        Ok(mut client) => client.rerank(rerank()).await.err(),
        Err(error) => Some(tonic::Status::unavailable(error.to_string())),
    };
    assert!(
        refused.is_some(),
        "a Rust client without a certificate is refused"
    );
    let identity = Identity::from_pem(client_cert, client_key);
    let mut client = tls_client(server.grpc_addr, &ca.pem, Some(identity))
        .await
        .unwrap();
    assert_eq!(
        client
            .rerank(rerank())
            .await
            .unwrap()
            .into_inner()
            .results
            .len(),
        2
    );
}

/// Waits (15 s at most) until a new connection verifies with `ca_file`.
async fn served_by(server: &TestServer, port: u16, ca_file: &str) {
    let (url, resolve) = https(port, "/health");
    let asked = Instant::now();
    loop {
        let (code, status, _) = curl(&url, &["--cacert", ca_file, "--resolve", &resolve]);
        if (code, status) == (0, 200) {
            return;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "not served a certificate of {ca_file}: curl {code}, status {status}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a new certificate and key signed by `ca` over the served ones.
fn rotate(files: &Files, ca: &Authority) {
    let (cert, key) = ca.leaf(false);
    files.write("server.key", &key);
    files.write("server.pem", &cert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_on_disk_is_served_to_the_next_connection() {
    let files = Files::new("rotate");
    let first = Authority::new("crossenc first CA");
    let server = start(&tls_flags(&files, &first));
    let port = server.http_addr.port();
    let first_ca = files.path("ca.pem");
    served_by(&server, port, &first_ca).await;
    // A connection opened before the rotations...
    let mut before = tls_client(server.grpc_addr, &first.pem, None)
        .await
        .unwrap();
    before.rerank(rerank()).await.unwrap();

    // A file that does not load keeps the served certificate.
    files.write("server.pem", "not a certificate\n");
    let log = server.wait_for_log(
        |log| log.contains("TLS certificate not reloaded"),
        Duration::from_secs(15),
    );
    assert!(log.contains("TLS certificate not reloaded"), "{log}");
    served_by(&server, port, &first_ca).await;

    // Changed files are noticed without a signal.
    let second = Authority::new("crossenc second CA");
    rotate(&files, &second);
    let second_ca = files.write("second-ca.pem", &second.pem);
    served_by(&server, port, &second_ca).await;
    let (url, resolve) = https(port, "/health");
    let (code, _, _) = curl(&url, &["--cacert", &first_ca, "--resolve", &resolve]);
    assert_eq!(
        code, 60,
        "new connections no longer get the old certificate"
    );

    // SIGHUP re-reads files whose change the check cannot see (same modification time).
    let stamps: Vec<_> = ["server.pem", "server.key"]
        .iter()
        .map(|name| {
            std::fs::metadata(files.path(name))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let third = Authority::new("crossenc third CA");
    let (cert, key) = third.leaf(false);
    files.write_stamped("server.key", &key, stamps[1]);
    files.write_stamped("server.pem", &cert, stamps[0]);
    let third_ca = files.write("third-ca.pem", &third.pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, _, _) = curl(&url, &["--cacert", &third_ca, "--resolve", &resolve]);
    assert_eq!(code, 60, "unchanged stamps: not reloaded before the signal");
    server.signal(Signal::SIGHUP);
    served_by(&server, port, &third_ca).await;

    // ...carries on.
    before
        .rerank(rerank())
        .await
        .expect("an open connection survives the rotations");
}
