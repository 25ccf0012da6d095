//! The Prometheus metrics against the real binary: after a known mix of requests every
//! metric of the seed's list (and ours beyond it) is on /metrics with its type, the
//! counters and histogram counts moved by exactly what was sent, the collection loop
//! fills the interval gauges, and every label value comes from a bounded set.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossenc_metrics::{MetricType, CATALOGUE};
use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use serde_json::json;
use support::{http_post, metric, post_json, TestServer};

/// The seed document's list and the additions: the contract, written out here
/// so that a rename in the code cannot pass unnoticed.
const CONTRACT: &[(&str, &str)] = &[
    ("request_count", "counter"),
    ("padded_tokens", "counter"),
    ("total_tokens", "counter"),
    ("worker_request_count", "counter"),
    ("request_latency_seconds", "histogram"),
    ("tokenization_latency_seconds", "histogram"),
    ("inference_latency_seconds", "histogram"),
    ("queue_wait_latency_seconds", "histogram"),
    ("tokenizer_queue_wait_latency_seconds", "histogram"),
    ("model_queue_wait_latency_seconds", "histogram"),
    ("mp_queue_send_latency_seconds", "histogram"),
    ("mp_queue_receive_latency_seconds", "histogram"),
    ("grpc_serialize_latency_seconds", "histogram"),
    ("grpc_deserialize_latency_seconds", "histogram"),
    ("scheduler_latency_seconds", "histogram"),
    ("overhead_latency_seconds", "histogram"),
    ("pipeline_overhead_latency_seconds", "histogram"),
    ("cpu_percent", "gauge"),
    ("tokenizer_queue_size", "gauge"),
    ("model_queue_size", "gauge"),
    ("batch_queue_size", "gauge"),
    ("padding_ratio", "gauge"),
    ("max_seq_length", "gauge"),
    ("avg_seq_length", "gauge"),
    ("worker_latency_ms", "gauge"),
    ("worker_throughput_qps", "gauge"),
    ("tokenizer_throughput_qps", "gauge"),
    ("inference_throughput_qps", "gauge"),
    ("overall_throughput_qps", "gauge"),
    ("request_errors", "counter"),
    ("worker_restarts", "counter"),
    ("worker_up", "gauge"),
    ("batch_size", "histogram"),
    ("process_resident_memory_bytes", "gauge"),
    ("build_info", "gauge"),
];

const QUERY: &str = "how are tides caused";
const DOCUMENTS: [&str; 6] = [
    "Tides are caused by the gravitational pull of the moon and the sun on the oceans.",
    "A tide table lists the times of high and low water.",
    "Bread rises because yeast makes carbon dioxide.",
    "The moon's gravity pulls hardest on the side of the earth that faces it, raising a bulge of water there and, less obviously, on the far side as well.",
    "Spring tides come at full and new moon.",
    "tides",
];

/// Requests of each method sent, pairs and real tokens scored.
#[derive(Debug, Default)]
struct Sent {
    requests: BTreeMap<&'static str, u64>,
    answered: u64,
    pairs: u64,
    tokens: u64,
}

impl Sent {
    fn answered(&mut self, method: &'static str, pairs: usize, tokens: u64) {
        *self.requests.entry(method).or_default() += 1;
        self.answered += 1;
        self.pairs += pairs as u64;
        self.tokens += tokens;
    }
}

async fn send_the_mix(server: &TestServer) -> Sent {
    let mut sent = Sent::default();
    let mut client = server.client().await;
    let documents: Vec<String> = DOCUMENTS.iter().map(|d| d.to_string()).collect();
    for n in 1..=3 {
        let pairs: Vec<Pair> = documents[..n * 2]
            .iter()
            .map(|d| Pair {
                query: QUERY.into(),
                document: d.clone(),
            })
            .collect();
        let count = pairs.len();
        let request = InferRequest {
            pairs,
            raw_scores: false,
            instruction: None,
            ..Default::default()
        };
        let answer = client.infer(request).await.unwrap().into_inner();
        sent.answered("grpc_infer", count, answer.tokens);
    }
    for top_n in [Some(2), None] {
        let request = RerankRequest {
            query: QUERY.into(),
            documents: documents.clone(),
            top_n,
            ..Default::default()
        };
        let answer = client.rerank(request).await.unwrap().into_inner();
        sent.answered("grpc_rerank", documents.len(), answer.tokens);
    }
    // Enough work for the CPU gauge to see: the model workers warm up at start, and the
    // small requests above can fit between two of its 100 ms samples.
    let long: Vec<String> = (0..32)
        .map(|i| format!("document {i}: {}", "lorem ipsum dolor sit amet ".repeat(12)))
        .collect();
    let request = RerankRequest {
        query: QUERY.into(),
        documents: long.clone(),
        ..Default::default()
    };
    let answer = client.rerank(request).await.unwrap().into_inner();
    sent.answered("grpc_rerank", long.len(), answer.tokens);
    let addr = server.http_addr;
    let (status, scored) = post_json(
        addr,
        "/score",
        &json!({"pairs": [{"query": QUERY, "document": DOCUMENTS[0]}]}),
    );
    assert_eq!(status, 200, "{scored}");
    sent.answered("http_score", 1, scored["tokens"].as_u64().unwrap());
    let (status, ranked) = post_json(
        addr,
        "/v1/rerank",
        &json!({"query": QUERY, "documents": DOCUMENTS}),
    );
    assert_eq!(status, 200, "{ranked}");
    let tokens = ranked["usage"]["total_tokens"].as_u64().unwrap();
    sent.answered("http_v1_rerank", DOCUMENTS.len(), tokens);

    // Two refusals: an empty query over gRPC, a body that is not JSON over HTTP.
    let bad = InferRequest {
        pairs: vec![Pair::default()],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    };
    let status = client.infer(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    *sent.requests.entry("grpc_infer").or_default() += 1;
    let (status, _) = http_post(addr, "/score", "application/json", "{not json").unwrap();
    assert_eq!(status, 400);
    *sent.requests.entry("http_score").or_default() += 1;
    sent
}

/// Every sample of a family, summed over its label sets.
fn sum_of(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| !l.contains("worker_type=\"supervisor\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Label sets of every sample: (sample name, label name, value).
fn labels(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let inside = &rest[..rest.find('}').unwrap()];
        for pair in inside.split(',') {
            let (label, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            found.push((name.to_string(), label.to_string(), value.to_string()));
        }
    }
    found
}

/// Polls /metrics until `done` holds (or 20 s pass) and returns the last text.
fn metrics_when(server: &TestServer, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = server.metrics();
        if done(&text) || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Samples gauges while the load runs, keeping each one's largest value.
fn watch_gauges(
    server: &TestServer,
    names: &'static [&'static str],
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<BTreeMap<&'static str, f64>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.http_addr;
    let stopping = Arc::clone(&stop);
    let peaks = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            if let Ok((200, text)) = support::http_get(addr, "/metrics") {
                let mut peaks = peaks.lock().unwrap();
                for name in names {
                    let peak: &mut f64 = peaks.entry(*name).or_default();
                    *peak = peak.max(sum_of(&text, name));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let peaks = peaks.lock().unwrap().clone();
        peaks
    });
    (stop, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_by_what_was_sent() {
    let server = TestServer::start(&["--model-workers", "2", "--collection-interval", "100ms"]);
    // Interval gauges read 0 again once the server is idle: watch them under load.
    const WATCHED: &[&str] = &[
        "overall_throughput_qps",
        "inference_throughput_qps",
        "tokenizer_throughput_qps",
        "cpu_percent",
        "max_seq_length",
        "avg_seq_length",
        "worker_latency_ms",
    ];
    let (stop, watcher) = watch_gauges(&server, WATCHED);
    let sent = send_the_mix(&server).await;
    // Let one more collection interval see the last requests.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let peaks = watcher.join().unwrap();

    // The stats channel is asynchronous: wait until the workers' reports are all in.
    let pairs = sent.pairs as f64;
    let text = metrics_when(&server, |text| {
        sum_of(text, "worker_request_count_total") >= 2.0 * pairs
    });

    // Every metric of the contract, with its type, and with samples (GPUs aside).
    for (name, kind) in CONTRACT {
        let spec = CATALOGUE
            .iter()
            .find(|s| s.name == *name)
            .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        assert_eq!(spec.kind.as_str(), *kind, "{name}");
    }
    for spec in CATALOGUE.iter().filter(|s| !s.gpu_only) {
        let type_line = format!("# TYPE {} {}", spec.name, spec.kind.as_str());
        assert!(text.contains(&type_line), "no {type_line:?} in\n{text}");
        let sample = match spec.kind {
            MetricType::Histogram => format!("{}_count", spec.name),
            _ => spec.sample_name(),
        };
        assert!(
            text.lines().any(|l| l.starts_with(&sample)),
            "no sample of {sample} in\n{text}"
        );
    }

    // Counters: exactly what was sent.
    for (method, count) in &sent.requests {
        let series = format!("request_count_total{{method=\"{method}\"}}");
        assert_eq!(metric(&text, &series), *count as f64, "{series}");
        let latency = format!("request_latency_seconds_count{{method=\"{method}\"}}");
        assert_eq!(metric(&text, &latency), *count as f64, "{latency}");
    }
    for method in ["grpc_infer", "http_score"] {
        let series =
            format!("request_errors_total{{method=\"{method}\",code=\"invalid_argument\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
    assert_eq!(sum_of(&text, "request_errors_total"), 2.0);
    assert_eq!(metric(&text, "total_tokens_total"), sent.tokens as f64);
    let by_kind = |kind: &str| -> f64 {
        (0..2)
            .map(|id| {
                let series = format!(
                    "worker_request_count_total{{worker_id=\"{id}\",worker_type=\"{kind}\"}}"
                );
                support::metric_sum(&text, &series).unwrap_or(0.0)
            })
            .sum()
    };
    assert_eq!(by_kind("tokenizer"), pairs, "tokenizer pairs");
    assert_eq!(by_kind("model"), pairs, "model pairs");

    // Histogram counts: one observation per request, job, batch, pair or message.
    let count = |name: &str| metric(&text, &format!("{name}_count"));
    let answered = sent.answered as f64;
    // Every request here has fewer than 64 pairs: one tokenizer job each.
    let tokenizer_jobs = answered;
    let batches = count("batch_size");
    assert!(batches >= 1.0 && batches <= pairs, "{batches} batches");
    assert_eq!(metric(&text, "batch_size_sum"), pairs);
    assert_eq!(count("tokenization_latency_seconds"), tokenizer_jobs);
    assert_eq!(
        count("tokenizer_queue_wait_latency_seconds"),
        tokenizer_jobs
    );
    assert_eq!(count("inference_latency_seconds"), batches);
    assert_eq!(count("scheduler_latency_seconds"), batches);
    assert_eq!(count("model_queue_wait_latency_seconds"), pairs);
    for per_request in [
        "queue_wait_latency_seconds",
        "overhead_latency_seconds",
        "pipeline_overhead_latency_seconds",
    ] {
        assert_eq!(count(per_request), answered, "{per_request}");
    }
    // Each job goes out once and its answer comes back once.
    let jobs = tokenizer_jobs + batches;
    assert_eq!(count("mp_queue_send_latency_seconds"), 2.0 * jobs);
    assert_eq!(count("mp_queue_receive_latency_seconds"), jobs);
    // Six gRPC answers were encoded; seven requests (one refused) decoded.
    assert_eq!(count("grpc_serialize_latency_seconds"), 6.0);
    assert_eq!(count("grpc_deserialize_latency_seconds"), 7.0);

    // Gauges of the idle server after the load.
    for idle in [
        "tokenizer_queue_size",
        "model_queue_size",
        "batch_queue_size",
        "queued_pairs",
        "requests_in_flight",
    ] {
        assert_eq!(metric(&text, idle), 0.0, "{idle}");
    }
    assert_eq!(metric(&text, "queued_pairs_limit"), 8192.0);
    assert_eq!(metric(&text, "requests_in_flight_limit"), 512.0);
    let padding = metric(&text, "padding_ratio");
    assert!((0.0..1.0).contains(&padding), "padding_ratio {padding}");
    let (longest, mean) = (peaks["max_seq_length"], peaks["avg_seq_length"]);
    assert!(longest >= mean && mean > 2.0, "max {longest}, avg {mean}");
    for (kind, id) in [
        ("supervisor", 0),
        ("tokenizer", 0),
        ("model", 0),
        ("model", 1),
    ] {
        let series =
            format!("process_resident_memory_bytes{{worker_id=\"{id}\",worker_type=\"{kind}\"}}");
        assert!(metric(&text, &series) > 1e6, "{series}");
        if kind != "supervisor" {
            let up = format!("worker_up{{worker_id=\"{id}\",worker_type=\"{kind}\"}}");
            assert_eq!(metric(&text, &up), 1.0, "{up}");
        }
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info");
    assert!(
        build.contains("device=\"cpu\"")
            && build.contains("dtype=\"f32\"")
            && (build.contains("kernels=\"gemm-f32:gemm\"")
                || build.contains("kernels=\"onednn-f32:"))
            && build.ends_with(" 1"),
        "{build}"
    );
    for name in WATCHED {
        assert!(
            peaks[name] > 0.0,
            "{name} never rose above 0 under load: {peaks:?}"
        );
    }

    // Bounded label values: fixed words and worker slots only (the routes and methods
    // that can refuse a key are listed at 0 from the start).
    let methods = [
        "grpc_infer",
        "grpc_rerank",
        "grpc_reflection",
        "grpc_other",
        "http_rerank",
        "http_v1_rerank",
        "http_score",
        "http_models",
        "http_metrics",
        "http_openapi",
        "http_other",
    ];
    // The model served (named by its folder), or none for what no model owns.
    let folder = support::model_dir();
    let served = folder.file_name().unwrap().to_string_lossy().into_owned();
    let mut seen = BTreeSet::new();
    for (sample, label, value) in labels(&text) {
        let allowed = match label.as_str() {
            "method" => methods.contains(&value.as_str()),
            "code" => value == "invalid_argument",
            "worker_type" => ["tokenizer", "model", "supervisor"].contains(&value.as_str()),
            "worker_id" => ["0", "1"].contains(&value.as_str()),
            "dtype" => ["f32", "bf16"].contains(&value.as_str()),
            // A kernel set and oneDNN's name for its kernels: a few per build.
            "kernels" => ["gemm-f32:", "onednn-f32:", "onednn-bf16:"]
                .iter()
                .any(|k| value.starts_with(k)),
            "architecture" => [
                "bert",
                "xlm-roberta",
                "distilbert",
                "modernbert",
                "deberta-v2",
                "qwen3",
            ]
            .contains(&value.as_str()),
            // An encoder's: no prompt template.
            "template" => value.is_empty(),
            "model" => value == served || value.is_empty(),
            "le" | "version" | "device" => true,
            other => panic!("unexpected label {other} on {sample}"),
        };
        assert!(allowed, "{sample}: {label}={value}");
        seen.insert(label);
    }
    assert!(seen.contains("method") && seen.contains("worker_id"));
}

#[test]
fn gpu_gauges_are_absent_on_a_machine_without_nvml() {
    let nvml = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
    ];
    if nvml.iter().any(|p| std::path::Path::new(p).exists()) {
        eprintln!("NVML is installed here; this test is for machines without it");
        return;
    }
    let server = TestServer::start(&["--collection-interval", "50ms"]);
    std::thread::sleep(Duration::from_millis(200));
    let text = server.metrics();
    assert!(!text.contains("gpu_"), "{text}");
    assert!(text.contains("# TYPE cpu_percent gauge"), "{text}");
}

#[test]
fn the_metrics_command_lists_the_whole_catalogue() {
    let output = std::process::Command::new(support::BINARY)
        .arg("metrics")
        .output()
        .unwrap();
    assert!(output.status.success());
    let listed = String::from_utf8(output.stdout).unwrap();
    for spec in CATALOGUE {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(spec.sample_name().as_str()))
            .unwrap_or_else(|| panic!("{} is not listed:\n{listed}", spec.name));
        assert!(line.contains(spec.kind.as_str()), "{line}");
    }
}
