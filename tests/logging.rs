//! Following one request, against the real binary: its id comes back in the response
//! (the client's when sane, a made-up one otherwise), and in JSON logs it is on the
//! supervisor's access line and on the worker lines of the jobs that served it; every
//! line stays one JSON object under concurrent requests and a worker crash.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use serde_json::Value;
use support::TestServer;

const RERANK: &str = r#"{"query":"what is a cat","texts":["a small feline","stock prices fell"]}"#;

/// POSTs `body` to `path` with `x-request-id: id` when given: the status and the
/// response's `x-request-id`.
fn post_with_id(addr: SocketAddr, path: &str, id: Option<&str>) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let header = id
        .map(|id| format!("x-request-id: {id}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{RERANK}",
        RERANK.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let echoed = response
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(str::to_string);
    (status, echoed)
}

fn is_generated(id: &str) -> bool {
    id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_come_back_and_are_made_up_when_missing_or_malformed() {
    let server = TestServer::start(&[]);
    let http = server.http_addr;
    let (status, echoed) = post_with_id(http, "/rerank", Some("client-id-42"));
    assert_eq!((status, echoed.as_deref()), (200, Some("client-id-42")));
    let (_, made_up) = post_with_id(http, "/rerank", None);
    assert!(made_up.as_deref().is_some_and(is_generated), "{made_up:?}");
    for bad in ["has spaces", &"x".repeat(65)] {
        let (status, echoed) = post_with_id(http, "/rerank", Some(bad));
        assert_eq!(status, 200);
        assert!(
            echoed.as_deref().is_some_and(is_generated),
            "{bad:?} -> {echoed:?}"
        );
    }
    // A refused request carries its id too.
    let (status, echoed) = post_with_id(http, "/score", Some("refused-1"));
    assert_eq!((status, echoed.as_deref()), (400, Some("refused-1")));

    let mut client = server.client().await;
    let mut request = tonic::Request::new(RerankRequest {
        query: "what is a cat".into(),
        documents: vec!["a small feline".into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-id-7".parse().unwrap());
    let answer = client.rerank(request).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "grpc-id-7");
    let refused = client
        .infer(InferRequest::default())
        .await
        .expect_err("no pairs");
    let id = refused
        .metadata()
        .get("x-request-id")
        .expect("an id on a refusal too");
    assert!(is_generated(id.to_str().unwrap()), "{id:?}");
}

/// The server's log lines so far, each parsed: a line that is not one JSON object fails.
fn json_lines(server: &TestServer) -> Vec<Value> {
    server
        .log()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {line:?}"))
        })
        .collect()
}

/// Whether `line` was written about request `id`: a field, or a span's field, names it.
fn names(line: &Value, id: &str) -> bool {
    line.to_string().contains(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_on_supervisor_and_worker_lines() {
    let server = TestServer::start(&[
        "--log-format",
        "json",
        "--log-filter",
        "info,crossenc_worker=debug",
    ]);
    let id = "follow-me-0042";
    assert_eq!(post_with_id(server.http_addr, "/rerank", Some(id)).0, 200);
    let started = Instant::now();
    loop {
        let lines = json_lines(&server);
        let access = lines
            .iter()
            .find(|l| l["target"] == "crossenc::access" && l["fields"]["request_id"] == id);
        let worker_jobs: Vec<&Value> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "job done" && names(l, id))
            .collect();
        let kinds: Vec<String> = worker_jobs
            .iter()
            .filter_map(|l| l["spans"].as_array())
            .flat_map(|spans| spans.iter())
            .filter(|s| s["name"] == "worker")
            .map(|s| s["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        if let Some(access) = access {
            if kinds.iter().any(|k| k == "tokenizer") && kinds.iter().any(|k| k == "model") {
                let fields = &access["fields"];
                assert_eq!(fields["method"], "http_rerank");
                assert_eq!(fields["status"], "200");
                assert_eq!(fields["pairs"], 2);
                assert!(fields["tokens"].as_u64().unwrap() > 0, "{access}");
                assert!(access["timestamp"].is_string() && access["level"] == "INFO");
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no access line and tokenizer and model job lines for {id}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_stay_json_under_concurrency_and_a_worker_crash() {
    let server = TestServer::start_with_env(
        &["--log-format", "json"],
        &[("CROSSENC_FAULT_TOKENIZER_ABORT_ON", "xylophonequartz")],
    );
    let client = server.client().await;
    let requests: Vec<_> = (0..12)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let document = if i == 5 {
                    "a xylophonequartz solo"
                } else {
                    "a piano"
                };
                let pairs = vec![Pair {
                    query: format!("which instrument {i}"),
                    document: document.into(),
                }];
                client
                    .infer(InferRequest {
                        pairs,
                        raw_scores: false,
                        instruction: None,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut answered = 0;
    for request in requests {
        answered += usize::from(request.await.unwrap());
    }
    assert_eq!(answered, 11, "only the poisoned request fails");
    let log = server.wait_for_log(
        |log| log.contains("restarting worker"),
        Duration::from_secs(30),
    );
    assert!(log.contains("restarting worker"), "{log}");
    server.wait_ready();
    let lines = json_lines(&server);
    assert!(lines.len() > 10, "{log}");
    // The crash's plain line on the worker's stderr came through as a JSON line naming
    // the worker.
    let wrapped = lines.iter().find(|l| {
        l["target"] == "crossenc::worker"
            && l["fields"]["message"] == "fault injection: aborting on a marked job"
    });
    let wrapped = wrapped.unwrap_or_else(|| panic!("no wrapped crash line in\n{log}"));
    assert_eq!(wrapped["fields"]["worker_kind"], "tokenizer");
}

#[test]
fn the_access_log_can_be_turned_off() {
    let server = TestServer::start(&["--log-format", "json", "--access-log", "false"]);
    let id = "quiet-request-1";
    assert_eq!(post_with_id(server.http_addr, "/rerank", Some(id)).0, 200);
    // The line would be written as the answer leaves; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let lines = json_lines(&server);
    assert!(
        !lines.iter().any(|l| l["target"] == "crossenc::access"),
        "{}",
        server.log()
    );
    assert!(lines.iter().any(|l| l["fields"]["message"] == "ready"));
}

/// An OTLP/gRPC collector of our own: every span it is sent.
mod collector {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use tokio::sync::mpsc;

    pub struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.0.send(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Starts a collector on a free port: its address and what it receives.
    pub async fn start() -> (
        std::net::SocketAddr,
        mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, received) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(sent)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, received)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_under_the_clients_trace() {
    let (collector, mut received) = collector::start().await;
    let endpoint = format!("http://{collector}");
    let server = TestServer::start_with_env(
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut client = server.client().await;
    let mut request = tonic::Request::new(RerankRequest {
        query: "what is a cat".into(),
        documents: vec!["a small feline".into(), "stock prices fell".into()],
        ..Default::default()
    });
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    client.rerank(request).await.unwrap();

    let mut names = std::collections::BTreeSet::new();
    let mut service = None;
    let mut request_parent = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(1), received.recv()).await
        else {
            if names.contains("model_batch") {
                break;
            }
            continue;
        };
        for resource in export.resource_spans {
            for attribute in resource.resource.iter().flat_map(|r| &r.attributes) {
                if attribute.key == "service.name" {
                    service = Some(format!("{:?}", attribute.value));
                }
            }
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                let hex =
                    |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
                // Probes make request spans of their own, in traces of their own.
                if span.name == "request" && hex(&span.trace_id) == trace_id {
                    request_parent = Some(hex(&span.parent_span_id));
                }
                names.insert(span.name.clone());
            }
        }
    }
    assert_eq!(
        request_parent.as_deref(),
        Some(parent_id),
        "the request's span, in the client's trace under its span: {names:?}"
    );
    for stage in [
        "request",
        "admission",
        "tokenization",
        "scoring",
        "model_batch",
    ] {
        assert!(names.contains(stage), "no {stage} span in {names:?}");
    }
    assert!(service.is_some_and(|s| s.contains("crossenc")));
}
