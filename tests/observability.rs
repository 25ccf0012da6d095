//! The shipped Prometheus configuration, rules and Grafana dashboard against a real
//! Prometheus scraping the real server: promtool accepts them, and every dashboard
//! query, every recording rule and every example query of docs/metrics.md returns data once
//! traffic flows, so a metric name misspelt anywhere fails here.
//!
//! Needs `prometheus` and `promtool` on PATH: scripts/test.sh installs Debian's package
//! (scripts/install-prometheus.sh).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_metrics::CATALOGUE;
use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use serde_json::{json, Value};
use support::{free_addr, http_get, post_json, workspace, TempDir, TestServer};

fn conf(path: &str) -> PathBuf {
    workspace().join("conf").join(path)
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is not on PATH: run scripts/install-prometheus.sh");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() {
    let rules = conf("prometheus/rules");
    let config = conf("prometheus/prometheus.yml");
    promtool(&["check", "config", config.to_str().unwrap()]);
    let mut files: Vec<String> = std::fs::read_dir(&rules)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(files.len() >= 2, "recording and alerting rules: {files:?}");
    files.sort();
    let mut check = vec!["check", "rules"];
    check.extend(files.iter().map(String::as_str));
    promtool(&check);
    let tests = rules.join("tests");
    let mut unit: Vec<String> = std::fs::read_dir(&tests)
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    unit.sort();
    assert!(
        !unit.is_empty(),
        "no rule unit tests in {}",
        tests.display()
    );
    let mut test = vec!["test", "rules"];
    test.extend(unit.iter().map(String::as_str));
    promtool(&test);
}

/// A Prometheus on a free port with the shipped config, pointed at `target`.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = TempDir::new("crossenc-prometheus");
        let shipped = std::fs::read_to_string(conf("prometheus/prometheus.yml")).unwrap();
        assert!(shipped.contains("'localhost:8000'"), "{shipped}");
        let rules = conf("prometheus/rules");
        let config = shipped
            .replace("'localhost:8000'", &format!("'{target}'"))
            .replace("- rules/", &format!("- {}/", rules.display()));
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not on PATH: run scripts/install-prometheus.sh");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// GET an API path, parsed; `None` until Prometheus answers.
    fn api(&self, path: &str) -> Option<Value> {
        let (status, body) = http_get(self.addr, path).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// An instant query's result vector (status must be success).
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self
            .api(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .unwrap_or_else(|| panic!("Prometheus refused the query {expr}"));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of every panel target in the dashboard, with its panel's title, and with
/// the dashboard's template variables filled in as Grafana does when "All" is selected
/// (`$model` and `${model}` become the variable's `allValue`, `.*`), so that Prometheus can
/// run them as they are.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dashboard["title"], "Prometheus Metrics Dashboard");
    assert_eq!(dashboard["refresh"], "5s");
    assert_eq!(dashboard["time"]["from"], "now-15m");
    let mut variables: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|variable| {
            let name = variable["name"].as_str().unwrap().to_string();
            let all = variable["allValue"]
                .as_str()
                .unwrap_or_else(|| panic!("the dashboard variable {name} has no allValue"))
                .to_string();
            (name, all)
        })
        .collect();
    // Longest names first, so that `$model` never eats the start of a `$models`.
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let as_for_all = |expr: &str| {
        let mut expr = expr.to_string();
        for (name, all) in &variables {
            expr = expr
                .replace(&format!("${{{name}}}"), all)
                .replace(&format!("${name}"), all);
        }
        assert!(
            !expr.contains('$'),
            "a variable the dashboard does not declare: {expr}"
        );
        expr
    };
    let mut found = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or_default();
                found.push((title.to_string(), as_for_all(expr)));
            }
        }
    }
    found
}

/// The prometheus-adapter rule's metricsQuery (deploy/kubernetes), with the label
/// matchers and grouping the adapter would fill in, for a single server scraped here.
fn adapter_queries() -> Vec<(String, String)> {
    let path = workspace().join("deploy/kubernetes/prometheus-adapter-rules.yaml");
    let rules = std::fs::read_to_string(path).unwrap();
    let queries: Vec<(String, String)> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("metricsQuery: "))
        .map(|quoted| {
            let query = quoted
                .trim_matches('\'')
                .replace("<<.LabelMatchers>>", "job=\"cross_encoder_server\"")
                .replace("<<.GroupBy>>", "instance");
            ("prometheus-adapter".to_string(), query)
        })
        .collect();
    assert!(
        !queries.is_empty(),
        "no metricsQuery in the adapter's rules"
    );
    queries
}

/// The example queries of docs/metrics.md's ```promql blocks (the README's before they
/// moved there); a line that starts with whitespace continues the query on the line before.
fn documented_queries() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace().join("docs/metrics.md")).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for block in readme.split("```promql").skip(1) {
        let block = block.split("```").next().unwrap();
        // Whether the line before was part of a query (not a comment or blank).
        let mut in_query = false;
        for line in block.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                in_query = false;
                continue;
            }
            match queries.last_mut() {
                Some((_, expr)) if in_query && line.starts_with(' ') => {
                    expr.push(' ');
                    expr.push_str(trimmed);
                }
                _ => queries.push(("docs/metrics.md".into(), trimmed.to_string())),
            }
            in_query = true;
        }
    }
    queries
}

/// Sends a mix of answered and refused requests until stopped, so that every rate has
/// something to count.
fn keep_traffic_flowing(server: &TestServer, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let grpc_addr = server.grpc_addr;
    let http_addr = server.http_addr;
    tokio::spawn(async move {
        let url = format!("http://{grpc_addr}");
        let mut client = crossenc_proto::v1::cross_encoder_client::CrossEncoderClient::connect(url)
            .await
            .unwrap();
        let documents: Vec<String> = ["tides follow the moon", "bread needs yeast", "x"]
            .iter()
            .map(|d| d.to_string())
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let rerank = RerankRequest {
                query: "what causes tides".into(),
                documents: documents.clone(),
                ..Default::default()
            };
            client.rerank(rerank).await.unwrap();
            let bad = InferRequest {
                pairs: vec![Pair::default()],
                raw_scores: false,
                instruction: None,
                ..Default::default()
            };
            assert!(client.infer(bad).await.is_err());
            let body = json!({"query": "tides", "documents": ["the moon pulls the sea"]});
            let (status, _) =
                tokio::task::spawn_blocking(move || post_json(http_addr, "/v1/rerank", &body))
                    .await
                    .unwrap();
            assert_eq!(status, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A result holds a number that is not NaN (histogram_quantile over no rate is NaN).
fn has_a_number(result: &[Value]) -> bool {
    result.iter().any(|sample| {
        sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| !v.is_nan())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_recording_rule_returns_data_from_a_real_prometheus() {
    let server = TestServer::start(&["--collection-interval", "500ms"]);
    let prometheus = Prometheus::start(server.http_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = keep_traffic_flowing(&server, Arc::clone(&stop));

    let panels = dashboard_queries(&conf(
        "grafana/provisioning/dashboards/prometheus_metrics_dashboard.json",
    ));
    for seed_panel in [
        "Requests (5m)",
        "Latency P50",
        "Latency P95",
        "Throughput (RPS)",
        "Latency Percentiles",
        "Stage Latencies",
        "CPU & GPU",
        "GPU Memory",
        "Queue Sizes",
    ] {
        assert!(
            panels.iter().any(|(title, _)| title == seed_panel),
            "the dashboard lacks the seed's panel {seed_panel:?}"
        );
    }
    let mut examples = documented_queries();
    assert!(examples.len() >= 10, "{examples:?}");
    examples.extend(adapter_queries());
    let gpu_names: Vec<&str> = CATALOGUE
        .iter()
        .filter(|s| s.gpu_only)
        .map(|s| s.name)
        .collect();

    // Recording rules as Prometheus loaded them, with their health.
    let started = Instant::now();
    let rules = loop {
        if let Some(answer) = prometheus.api("/api/v1/rules") {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut recording = Vec::new();
    let mut alerting = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_string();
            let query = rule["query"].as_str().unwrap().to_string();
            match rule["type"].as_str() {
                Some("recording") => recording.push((name, query)),
                _ => alerting += 1,
            }
        }
    }
    assert!(recording.len() >= 6 && alerting >= 7, "{rules}");

    // Queries naming a GPU metric have no data without NVIDIA's library; they must
    // still parse and name only metrics that exist where it is.
    let mut pending: Vec<(String, String)> = Vec::new();
    for (title, expr) in panels.iter().chain(&recording).chain(&examples) {
        let gpu: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("gpu_") && !word.ends_with("_"))
            .collect();
        if gpu.is_empty() {
            pending.push((title.clone(), expr.clone()));
            continue;
        }
        for name in gpu {
            assert!(gpu_names.contains(&name), "{title}: {name} is not a metric");
        }
        prometheus.query(expr);
    }

    // Data arrives with the first scrapes and rule evaluations: wait for all of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|(_, expr)| !has_a_number(&prometheus.query(expr)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(
        pending.is_empty(),
        "these queries returned no data from a Prometheus scraping crossenc: {pending:#?}"
    );

    let up = prometheus.query("up{job=\"cross_encoder_server\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let answer = prometheus.api("/api/v1/rules").unwrap();
    for group in answer["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
}
