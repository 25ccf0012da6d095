//! Files read again while serving: the API key file, the client CA and the admin port's
//! key file, on SIGHUP and when they change; a bad new file keeps the old one in force
//! and says so in the log; refused keys count as requests with their code.

use super::*;

const NEW_KEY: &str = "rotated-key-0123456789abcdef";

/// Waits until `check` holds (the file watcher looks every two seconds).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_api_key_file_rotated_live_lets_the_new_key_in_and_a_bad_file_changes_nothing() {
    let files = Files::new("key-rotation");
    let server = start(&key_flags(&files));
    let http = server.http_addr;
    assert_eq!(post(http, "/rerank", RERANK, Some(KEY)).0, 200);
    assert_eq!(post(http, "/rerank", RERANK, Some(NEW_KEY)).0, 401);

    // Rotated by rename, as a secret update is: no signal needed.
    files.write("keys", &format!("{NEW_KEY}\n"));
    eventually("the new key is let in", || {
        post(http, "/rerank", RERANK, Some(NEW_KEY)).0 == 200
    });
    assert_eq!(
        post(http, "/rerank", RERANK, Some(KEY)).0,
        401,
        "the old key is out"
    );

    // A bad file (a key too short) is refused, named in the log, and changes nothing.
    files.write("keys", "short\n");
    server.signal(Signal::SIGHUP);
    let log = server.wait_for_log(
        |log| log.contains("keys not reloaded"),
        Duration::from_secs(20),
    );
    assert!(log.contains(&files.path("keys")), "the log names the file");
    assert_eq!(post(http, "/rerank", RERANK, Some(NEW_KEY)).0, 200);

    // Every refusal above is a request with its code, beside auth_failures.
    let refused = support::metric(
        &get(http, "/metrics", Some(NEW_KEY)).1,
        r#"request_errors_total{method="http_rerank",code="unauthenticated"}"#,
    );
    assert!(refused >= 2.0, "{refused} refusals counted as requests");
    assert!(
        support::is_running(server.pid()),
        "SIGHUP never stops the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_rotated_live_admits_the_new_clients_while_open_connections_carry_on() {
    let files = Files::new("ca-rotation");
    let (old_ca, new_ca) = (
        Authority::new("old client CA"),
        Authority::new("new client CA"),
    );
    let server_ca = Authority::new("server CA");
    let mut flags = tls_flags(&files, &server_ca);
    flags.extend([
        "--tls-client-ca-file".into(),
        files.write("clients.pem", &old_ca.pem),
    ]);
    let server = start(&flags);
    let identity = |ca: &Authority| {
        let (cert, key) = ca.leaf(true);
        Identity::from_pem(cert, key)
    };
    let mut open = tls_client(server.grpc_addr, &server_ca.pem, Some(identity(&old_ca)))
        .await
        .expect("a client of the old CA connects");
    open.rerank(rerank()).await.expect("served");

    files.write("clients.pem", &new_ca.pem);
    server.signal(Signal::SIGHUP);
    server.wait_for_log(
        |log| log.contains("client CA reloaded"),
        Duration::from_secs(20),
    );
    let mut new = tls_client(server.grpc_addr, &server_ca.pem, Some(identity(&new_ca)))
        .await
        .expect("a client of the new CA connects");
    new.rerank(rerank()).await.expect("served");
    let refused = match tls_client(server.grpc_addr, &server_ca.pem, Some(identity(&old_ca))).await
    {
        Ok(mut client) => client.rerank(rerank()).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a new connection with the old CA's certificate is refused"
    );
    open.rerank(rerank())
        .await
        .expect("the connection opened before the rotation carries on");

    // A file that is not PEM keeps the new CA in force.
    files.write("clients.pem", "not a certificate");
    server.signal(Signal::SIGHUP);
    let log = server.wait_for_log(
        |log| log.contains("client CA not reloaded"),
        Duration::from_secs(20),
    );
    assert!(
        log.contains(&files.path("clients.pem")),
        "the log names the file"
    );
    let mut again = tls_client(server.grpc_addr, &server_ca.pem, Some(identity(&new_ca)))
        .await
        .expect("the new CA still admits");
    again.rerank(rerank()).await.expect("served");
}

#[test]
fn the_admin_port_takes_a_key_file_of_its_own() {
    let files = Files::new("admin-key");
    let admin_keys = files.write("admin-keys", &format!("{NEW_KEY}\n"));
    let server = TestServer::start_with_env(
        &["--admin-addr", "127.0.0.1:0"],
        &[("CROSSENC_SERVER__ADMIN_API_KEY_FILE", admin_keys.as_str())],
    );
    let admin = server.admin_addr;
    for path in ["/metrics", "/openapi.json"] {
        assert_eq!(get(admin, path, None).0, 401, "{path} without a key");
        assert_eq!(
            get(admin, path, Some(KEY)).0,
            401,
            "{path} with another key"
        );
        assert_eq!(
            get(admin, path, Some(NEW_KEY)).0,
            200,
            "{path} with the admin key"
        );
    }
    for path in ["/health", "/ready"] {
        assert_eq!(
            get(admin, path, None).0,
            200,
            "the probes stay open: {path}"
        );
    }
    // The API itself has no keys here: the admin key file guards the admin port only.
    assert_eq!(post(server.http_addr, "/rerank", RERANK, None).0, 200);
}
