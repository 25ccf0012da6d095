//! `crossenc bench` and `crossenc sweep` through the real binary against real servers:
//! the tools run, count every request and write every output. How fast anything was
//! is measured by them, never asserted here.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{model_dir, TempDir, TestServer, BINARY};

/// A small workload: three queries of three short documents.
fn tiny_workload(dir: &Path) -> PathBuf {
    let rows = [
        r#"{"query": "what causes tides", "documents": ["the moon pulls the sea", "bread rises", "tides follow the moon"]}"#,
        r#"{"query": "how do bees fly", "documents": ["wings beat fast", "honey is sweet", "bees"], "extra": 1}"#,
        r#"{"query": "rust ownership", "documents": ["each value has one owner", "iron oxide", "borrowing"]}"#,
    ];
    let path = dir.join("workload.jsonl");
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

fn run(args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .args(args)
        .output()
        .expect("run crossenc");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "crossenc {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn bench_reports_closed_and_open_loop_runs_as_a_table_and_json() {
    let server = TestServer::start(&[]);
    let dir = TempDir::new("crossenc-bench");
    let workload = tiny_workload(dir.path());
    let json = dir.join("closed.json");
    let (grpc, http) = (server.grpc_addr.to_string(), server.http_addr.to_string());
    let common = [
        "bench",
        "--workload",
        workload.to_str().unwrap(),
        "--grpc-addr",
        &grpc,
        "--http-addr",
        &http,
    ];
    let mut closed = common.to_vec();
    closed.extend([
        "--concurrency",
        "1,2",
        "--requests",
        "6",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = run(&closed);
    assert!(
        table.contains("pairs/s") && table.contains("closed x2"),
        "{table}"
    );
    let reports: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    for report in reports {
        let client = &report["client"];
        assert_eq!(client["requests"], 6, "{report}");
        assert_eq!(client["answered"], 6, "{report}");
        assert_eq!(client["pairs"], 18, "{report}");
        assert!(client["errors"].as_object().unwrap().is_empty());
        assert!(client["tokens"].as_u64().unwrap() > 18);
        let latency = &client["latency"];
        assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
        assert_eq!(latency["count"], 6);
        let server = &report["server"];
        let padding = server["padding_ratio"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&padding), "{server}");
        assert!(
            server["mean_batch_size"].as_f64().unwrap() >= 1.0,
            "{server}"
        );
    }

    // Open loop: 20 requests/s for 400 ms is 8 requests, due on schedule.
    let json = dir.join("open.json");
    let mut open = common.to_vec();
    open.extend([
        "--rate",
        "20",
        "--duration",
        "400ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = run(&open);
    assert!(table.contains("open 20/s"), "{table}");
    let reports: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let client = &reports[0]["client"];
    assert_eq!(client["requests"], 8, "{client}");
    assert_eq!(client["answered"], 8, "{client}");
}

#[test]
fn a_tiny_sweep_writes_every_output() {
    let dir = TempDir::new("crossenc-sweep");
    let workload = tiny_workload(dir.path());
    let output = dir.join("results");
    let config = dir.join("sweep.toml");
    std::fs::write(
        &config,
        format!(
            "[grid]\nmodel_workers = [1]\nmodel_threads = [1]\nmax_batch_tokens = [2048, 4096]\n\
             max_batch_delay = [\"2ms\"]\nconcurrency = [2]\n\
             [run]\nworkload = {:?}\nmodel = {:?}\nrequests = 4\nwarmup_requests = 1\np99_target = \"60s\"\n\
             [output]\ndir = {:?}\n",
            workload.display().to_string(),
            model_dir().display().to_string(),
            output.display().to_string(),
        ),
    )
    .unwrap();
    let printed = run(&["sweep", "--config", config.to_str().unwrap()]);
    assert!(printed.contains("Best for p99 <= 1m"), "{printed}");

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("results.json")).unwrap())
            .unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2, "two grid points");
    let budgets: Vec<_> = results
        .iter()
        .map(|r| r["server"]["max_batch_tokens"].clone())
        .collect();
    assert_eq!(budgets, [2048, 4096]);
    for result in results {
        assert_eq!(result["client"]["answered"], 4, "{result}");
        assert_eq!(result["concurrency"], 2);
    }
    let csv = std::fs::read_to_string(output.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("model_workers,"));
    let summary = std::fs::read_to_string(output.join("summary.md")).unwrap();
    assert!(summary.contains("**best**"), "{summary}");
    for plot in ["throughput_vs_p99.svg", "latency_vs_concurrency.svg"] {
        let svg = std::fs::read_to_string(output.join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
        assert!(
            svg.contains("pairs/s") || svg.contains("latency (s)"),
            "{plot} lacks its axis titles"
        );
        assert!(
            svg.contains("tokens=2048"),
            "{plot} lacks the configuration's legend"
        );
    }
}

#[test]
fn a_bad_sweep_file_is_refused_naming_the_key() {
    let dir = TempDir::new("crossenc-badsweep");
    let config = dir.join("sweep.toml");
    std::fs::write(
        &config,
        "[grid]\nmodel_workers = [1]\nmodel_threads = []\nmax_batch_tokens = [4096]\nmax_batch_delay = [\"2ms\"]\nconcurrency = [1]\nconcurency = [2]\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["sweep", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grid.concurency: unknown key"), "{stderr}");
}
