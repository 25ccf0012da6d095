//! API keys on every route, keys kept out of outputs, the admin port, the configured
//! model name, and the start-up errors and warnings.

use super::*;

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
    for path in ["/metrics", "/openapi.json", "/v1/models"] {
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
            ..Default::default()
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
        "http_models",
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
