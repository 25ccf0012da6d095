//! Listening beyond loopback safely, against the real binary: TLS (checked by curl and by
//! Python's grpcio, as clients would), mutual TLS, a certificate rotated on disk, API keys
//! on every route and method but the probes, keys kept out of every output, the admin
//! routes on a port of their own, the configured model name, and the start-up errors
//! and warnings an operator needs.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use support::{http_get, model_dir, TestServer, BINARY};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const KEY: &str = "test-key-0123456789abcdef";
const WRONG_KEY: &str = "test-key-0123456789abcdeX";

/// A certificate authority of the test's own.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1 (server), or for a client: (cert, key) PEM.
    fn leaf(&self, client: bool) -> (String, String) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A folder of PEM files for one test.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("crossenc-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to `name` by rename, as a rotation tool would.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path.display().to_string()
    }

    /// Writes `text` to `name` by rename, its modification time set to `stamp` before it
    /// lands (so that a watcher of stamps never sees it change).
    fn write_stamped(&self, name: &str, text: &str, stamp: std::time::SystemTime) {
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, text).unwrap();
        let file = std::fs::File::options().write(true).open(&staged).unwrap();
        file.set_modified(stamp).unwrap();
        drop(file);
        std::fs::rename(&staged, self.0.join(name)).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Server certificate files signed by `ca`, and the flags that serve them (the admin
/// routes apart, in plain HTTP, for the readiness probe).
fn tls_flags(files: &Files, ca: &Authority) -> Vec<String> {
    let (cert, key) = ca.leaf(false);
    files.write("ca.pem", &ca.pem);
    vec![
        "--tls-cert-file".into(),
        files.write("server.pem", &cert),
        "--tls-key-file".into(),
        files.write("server.key", &key),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
    ]
}

fn start(flags: &[String]) -> TestServer {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start(&flags)
}

/// curl's exit code, the HTTP status and the body. `args` come before the URL.
fn curl(url: &str, args: &[&str]) -> (i32, u16, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (scripts/install-test-clients.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let status = status.trim().parse().unwrap_or(0);
    (output.status.code().unwrap_or(-1), status, body.to_string())
}

/// `https://localhost:PORT{path}`, with localhost resolved to the server.
fn https(server_port: u16, path: &str) -> (String, String) {
    let url = format!("https://localhost:{server_port}{path}");
    let resolve = format!("localhost:{server_port}:127.0.0.1");
    (url, resolve)
}

const RERANK: &str =
    r#"{"query":"what is a cat","texts":["a cat is a small feline","stock prices fell"]}"#;

/// Python's grpcio asking the health service over TLS: its exit code and output.
fn python_probe(addr: std::net::SocketAddr, args: &[&str]) -> (i32, String) {
    let python = std::env::var("CROSSENC_TEST_PYTHON").expect(
        "CROSSENC_TEST_PYTHON names a python with grpcio (scripts/test.sh sets it from scripts/install-test-clients.sh)",
    );
    let script = support::workspace().join("tests/support/grpc_health_probe.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("localhost:{}", addr.port()))
        .args(args)
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), said)
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<Identity>,
) -> Result<CrossEncoderClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(CrossEncoderClient::new(channel))
}

fn rerank() -> RerankRequest {
    RerankRequest {
        query: "what is a cat".into(),
        documents: vec!["a cat is a small feline".into(), "stock prices fell".into()],
        ..Default::default()
    }
}

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

/// The key's flags: a key file, and the admin routes on the API port (so that they need
/// the key too).
fn key_flags(files: &Files) -> Vec<String> {
    let file = files.write("keys", &format!("# the API's key\n{KEY}\n"));
    vec!["--api-key-file".into(), file]
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let mut args = vec!["-H", "content-type: application/json", "-d", body];
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    let (_, status, body) = curl(&url, &args);
    (status, body)
}

fn get(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let args: Vec<&str> = match &auth {
        Some(auth) => vec!["-H", auth],
        None => vec![],
    };
    let (_, status, body) = curl(&url, &args);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_route_and_method_but_the_probes() {
    let files = Files::new("keys");
    let server = start(&key_flags(&files));
    let http = server.http_addr;
    let score = r#"{"pairs":[{"query":"what is a cat","document":"a small feline"}]}"#;
    let v1 = r#"{"query":"what is a cat","documents":["a small feline"]}"#;
    let posts = [("/rerank", RERANK), ("/v1/rerank", v1), ("/score", score)];
    for (path, body) in posts {
        for key in [None, Some(WRONG_KEY)] {
            let (status, answer) = post(http, path, body, key);
            assert_eq!(status, 401, "{path} with {key:?}: {answer}");
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["error_type"], "unauthorized");
            assert!(!answer["error"].as_str().unwrap().contains("test-key"));
        }
        let (status, answer) = post(http, path, body, Some(KEY));
        assert_eq!(status, 200, "{path} with the key: {answer}");
    }
    for path in ["/metrics", "/openapi.json"] {
        assert_eq!(get(http, path, None).0, 401, "{path} without a key");
        assert_eq!(get(http, path, Some(WRONG_KEY)).0, 401, "{path}, wrong key");
        assert_eq!(get(http, path, Some(KEY)).0, 200, "{path} with the key");
    }
    for path in ["/health", "/ready"] {
        assert_eq!(get(http, path, None).0, 200, "{path} stays open");
    }

    let channel = Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for key in [None, Some(WRONG_KEY), Some(KEY)] {
        let mut client = CrossEncoderClient::new(channel.clone());
        let reranked = client.rerank(with_key(rerank(), key)).await;
        let infer = InferRequest {
            pairs: vec![Pair {
                query: "what is a cat".into(),
                document: "a small feline".into(),
            }],
            raw_scores: false,
            instruction: None,
        };
        let inferred = client.infer(with_key(infer, key)).await;
        let mut reflection =
            tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
                channel.clone(),
            );
        let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        };
        let listed = reflection
            .server_reflection_info(with_key(tokio_stream::iter([ask]), key))
            .await;
        if key == Some(KEY) {
            assert!(reranked.is_ok() && inferred.is_ok() && listed.is_ok());
        } else {
            for status in [reranked.err(), inferred.err(), listed.err()] {
                let status = status.expect("refused without the key");
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(!status.message().contains("test-key"));
            }
        }
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("gRPC health needs no key");
    assert_eq!(serving.into_inner().status, 1);

    // Refusals are counted by method; the key itself is nowhere.
    let (_, metrics) = get(http, "/metrics", Some(KEY));
    for method in [
        "http_rerank",
        "http_metrics",
        "grpc_rerank",
        "grpc_reflection",
    ] {
        let series = format!("auth_failures_total{{method=\"{method}\"}}");
        assert!(support::metric(&metrics, &series) >= 2.0, "{series}");
    }
    assert!(!metrics.contains(KEY) && !metrics.contains(WRONG_KEY));
    assert!(!server.log().contains(KEY) && !server.log().contains(WRONG_KEY));
}

/// `message` with `authorization: Bearer KEY` metadata when `key` is given.
fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn config_show(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    command
        .envs(env.iter().copied())
        .args(["config", "show", "--model"])
        .arg(model_dir())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("crossenc config show runs")
}

#[test]
fn a_key_never_appears_in_config_show() {
    let keys = format!(r#"["{KEY}"]"#);
    let shown = config_show(&[], &[("CROSSENC_SERVER__API_KEYS", &keys)]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(text.contains(r#"api_keys = ["<redacted>"]"#), "{text}");
    assert!(!text.contains(KEY), "{text}");
    // A key too short is refused without being shown either.
    let short = config_show(&[], &[("CROSSENC_SERVER__API_KEYS", r#"["tiny-secret"]"#)]);
    let said = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2), "{said}");
    assert!(
        said.contains("server.api_keys") && !said.contains("tiny-secret"),
        "{said}"
    );
}

#[test]
fn the_admin_routes_move_to_their_own_port() {
    let server = TestServer::start(&["--admin-addr", "127.0.0.1:0"]);
    assert_ne!(server.admin_addr, server.http_addr);
    for path in ["/metrics", "/openapi.json", "/health", "/ready"] {
        assert_eq!(get(server.admin_addr, path, None).0, 200, "admin {path}");
    }
    for path in ["/metrics", "/openapi.json"] {
        assert_eq!(get(server.http_addr, path, None).0, 404, "API port {path}");
    }
    assert_eq!(get(server.http_addr, "/ready", None).0, 200);
    assert_eq!(post(server.http_addr, "/rerank", RERANK, None).0, 200);
    assert_eq!(post(server.admin_addr, "/rerank", RERANK, None).0, 404);
}

#[test]
fn answers_name_the_model_as_configured() {
    let v1 = r#"{"query":"what is a cat","documents":["a small feline"]}"#;
    let named = TestServer::start(&["--model-name", "cat-reranker"]);
    let (status, body) = post(named.http_addr, "/v1/rerank", v1, None);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["model"], "cat-reranker");
    assert!(named.metrics().contains(r#"model="cat-reranker""#));
    drop(named);
    // By default, the folder's name: never config.json's _name_or_path.
    let default = TestServer::start(&[]);
    let body: serde_json::Value =
        serde_json::from_str(&post(default.http_addr, "/v1/rerank", v1, None).1).unwrap();
    let folder = model_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(body["model"], folder.as_str());
}

#[test]
fn bad_certificate_files_stop_the_start_naming_the_file() {
    let files = Files::new("badcert");
    let ca = Authority::new("crossenc test CA");
    let (cert, _) = ca.leaf(false);
    let (_, other_key) = ca.leaf(false);
    let cert_file = files.write("server.pem", &cert);
    let other_key_file = files.write("other.key", &other_key);
    let missing = files.path("missing.pem");
    let local = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "--tls-cert-file",
                &missing,
                "--tls-key-file",
                &other_key_file,
            ],
            "server.tls_cert_file",
        ),
        (
            &[
                "--tls-cert-file",
                &cert_file,
                "--tls-key-file",
                &other_key_file,
            ],
            "does not fit server.tls_cert_file",
        ),
        (&["--tls-cert-file", &cert_file], "server.tls_key_file"),
    ];
    for (args, expected) in cases {
        let (code, log) = support::serve_until_exit(
            &model_dir(),
            &[&local[..], args].concat(),
            Duration::from_secs(30),
        );
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?}: exit {code:?}\n{log}"
        );
        assert!(
            log.contains(expected),
            "{args:?}: {expected:?} not in\n{log}"
        );
    }
}

#[test]
fn start_up_warns_of_a_listener_beyond_loopback_without_tls_or_keys() {
    let (_, log) = support::serve_until_exit(
        &model_dir(),
        &["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"],
        Duration::from_secs(3),
    );
    assert!(
        log.contains("server.grpc_addr is reachable beyond this machine without TLS"),
        "{log}"
    );
    assert!(log.contains("without API keys"), "{log}");
    assert!(!log.contains("server.http_addr is reachable"), "{log}");
}
