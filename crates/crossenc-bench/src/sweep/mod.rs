//! `crossenc sweep`: run the server over a grid of configurations under load and report
//! throughput and latency for each point, with the best configuration for a p99 target.
//!
//! Each server configuration (model workers x threads x batch budget x batch delay) gets
//! a fresh server, a warm-up, then one run per client concurrency. Results go to
//! `results.csv`, `results.json`, `summary.md`, `throughput_vs_p99.svg` and
//! `latency_vs_concurrency.svg` in the output folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::load::{Bound, LoadFigures, Loop};
use crate::report::{bench_server, Target};
use crate::scrape::ServerFigures;
use crate::server::SpawnedServer;
use crate::workload::{load_workload, Query};
use crate::BenchError;

mod outputs;
use outputs::write_outputs;

/// A sweep file: the grid, how each point runs, where results go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    pub grid: Grid,
    #[serde(default)]
    pub run: RunSettings,
    #[serde(default)]
    pub output: OutputSettings,
}

/// The values to try; every combination is a point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub model_workers: Vec<usize>,
    pub model_threads: Vec<usize>,
    pub max_batch_tokens: Vec<usize>,
    /// Durations such as "2ms".
    pub max_batch_delay: Vec<String>,
    /// Closed-loop clients; one run per value on the same server.
    pub concurrency: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// JSON lines of {"query", "documents"}.
    pub workload: PathBuf,
    /// Model folder every server serves.
    pub model: PathBuf,
    /// Requests per run (each a Rerank of one workload query).
    pub requests: usize,
    /// Requests sent at concurrency 1 after each server starts, not measured.
    pub warmup_requests: usize,
    /// The latency target the summary picks the best configuration for.
    pub p99_target: String,
    /// How long a server may take to become ready.
    pub startup_timeout: String,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            workload: PathBuf::from("bench/workload-public.jsonl"),
            model: PathBuf::from("models/default"),
            requests: 32,
            warmup_requests: 2,
            p99_target: "10s".into(),
            startup_timeout: "120s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSettings {
    pub dir: PathBuf,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("sweep-results"),
        }
    }
}

/// One server configuration of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerPoint {
    pub model_workers: usize,
    pub model_threads: usize,
    pub max_batch_tokens: usize,
    #[serde(with = "humantime_serde")]
    pub max_batch_delay: Duration,
}

impl ServerPoint {
    pub fn label(&self) -> String {
        format!(
            "workers={} threads={} tokens={} delay={}",
            self.model_workers,
            self.model_threads,
            self.max_batch_tokens,
            humantime::format_duration(self.max_batch_delay)
        )
    }

    fn flags(&self, model: &Path) -> Vec<String> {
        vec![
            "--model".into(),
            model.display().to_string(),
            "--model-workers".into(),
            self.model_workers.to_string(),
            "--model-threads".into(),
            self.model_threads.to_string(),
            "--max-batch-tokens".into(),
            self.max_batch_tokens.to_string(),
            "--max-batch-delay".into(),
            humantime::format_duration(self.max_batch_delay).to_string(),
        ]
    }
}

/// What one (server configuration, concurrency) point measured.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub server: ServerPoint,
    pub concurrency: usize,
    pub client: LoadFigures,
    pub metrics: ServerFigures,
}

/// A validated sweep: the points and the settings as values.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub points: Vec<ServerPoint>,
    pub concurrency: Vec<usize>,
    pub run: RunSettings,
    pub p99_target: Duration,
    pub startup_timeout: Duration,
    pub output: PathBuf,
}

impl SweepPlan {
    /// Reads and checks a sweep file; every problem names its key.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        if !path.is_file() {
            return Err(BenchError::SweepConfig(vec![format!(
                "{}: no such file",
                path.display()
            )]));
        }
        let config: SweepConfig = Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|e| {
                BenchError::SweepConfig(e.into_iter().map(|e| describe_error(&e)).collect())
            })?;
        Self::from_config(config)
    }

    pub fn from_config(config: SweepConfig) -> Result<Self, BenchError> {
        let mut problems = Vec::new();
        let grid = &config.grid;
        for (key, values) in [
            ("grid.model_workers", &grid.model_workers),
            ("grid.model_threads", &grid.model_threads),
            ("grid.max_batch_tokens", &grid.max_batch_tokens),
            ("grid.concurrency", &grid.concurrency),
        ] {
            if values.is_empty() {
                problems.push(format!("{key}: empty; give at least one value"));
            }
            if values.contains(&0) {
                problems.push(format!(
                    "{key}: 0 is not allowed; every value must be at least 1"
                ));
            }
        }
        if grid.max_batch_delay.is_empty() {
            problems.push("grid.max_batch_delay: empty; give at least one value".into());
        }
        let mut duration = |key: &str, text: &str| match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!(
                    "{key}: {text:?} is not a duration ({e}); e.g. \"2ms\""
                ));
                None
            }
        };
        let delays: Vec<Duration> = grid
            .max_batch_delay
            .iter()
            .filter_map(|d| duration("grid.max_batch_delay", d))
            .collect();
        let p99_target = duration("run.p99_target", &config.run.p99_target);
        let startup_timeout = duration("run.startup_timeout", &config.run.startup_timeout);
        if config.run.requests == 0 {
            problems.push("run.requests: 0 is not allowed; every run needs requests".into());
        }
        if !problems.is_empty() {
            return Err(BenchError::SweepConfig(problems));
        }
        let mut points = Vec::new();
        for &model_workers in &grid.model_workers {
            for &model_threads in &grid.model_threads {
                for &max_batch_tokens in &grid.max_batch_tokens {
                    for &max_batch_delay in &delays {
                        points.push(ServerPoint {
                            model_workers,
                            model_threads,
                            max_batch_tokens,
                            max_batch_delay,
                        });
                    }
                }
            }
        }
        Ok(Self {
            points,
            concurrency: grid.concurrency.clone(),
            run: config.run.clone(),
            p99_target: p99_target.expect("checked above"),
            startup_timeout: startup_timeout.expect("checked above"),
            output: config.output.dir,
        })
    }
}

fn describe_error(error: &figment::Error) -> String {
    let key = error.path.join(".");
    match &error.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            let key = if error.path.last() == Some(field) {
                key
            } else {
                format!("{key}.{field}").trim_start_matches('.').to_string()
            };
            format!(
                "{key}: unknown key; valid keys here: {}",
                expected.join(", ")
            )
        }
        figment::error::Kind::MissingField(field) => {
            let key = [key.as_str(), field]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            format!("{key}: missing")
        }
        kind => format!("{key}: {kind}"),
    }
}

/// Runs every point of `plan` with servers started from `exe`, writes the outputs and
/// returns the results.
pub async fn run_sweep(
    exe: &Path,
    plan: &SweepPlan,
    progress: bool,
) -> Result<Vec<SweepResult>, BenchError> {
    let workload: Arc<[Query]> = load_workload(&plan.run.workload)?.into();
    let runs = plan.points.len() * plan.concurrency.len();
    let bar = if progress {
        ProgressBar::new(runs as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed}] {msg}") {
        bar.set_style(style);
    }
    let mut results = Vec::new();
    for point in &plan.points {
        bar.set_message(point.label());
        let server = SpawnedServer::start(exe, &point.flags(&plan.run.model), plan.startup_timeout)
            .map_err(|message| BenchError::Server {
                point: point.label(),
                message,
            })?;
        let target = Target::plain(server.grpc_addr, server.http_addr);
        if plan.run.warmup_requests > 0 {
            let warmup = Bound::Requests(plan.run.warmup_requests);
            bench_server(
                &target,
                workload.clone(),
                Loop::Closed { clients: 1 },
                warmup,
                false,
            )
            .await?;
        }
        for &clients in &plan.concurrency {
            let report = bench_server(
                &target,
                workload.clone(),
                Loop::Closed { clients },
                Bound::Requests(plan.run.requests),
                false,
            )
            .await?;
            results.push(SweepResult {
                server: point.clone(),
                concurrency: clients,
                client: report.client,
                metrics: report.server,
            });
            bar.inc(1);
        }
        drop(server);
    }
    bar.finish_and_clear();
    write_outputs(plan, &results)?;
    Ok(results)
}

/// The fastest point (pairs/s) whose p99 meets the target and that had no errors.
pub fn best_within(results: &[SweepResult], p99_target: Duration) -> Option<&SweepResult> {
    results
        .iter()
        .filter(|r| r.client.latency.p99 <= p99_target.as_secs_f64() && r.client.errors.is_empty())
        .max_by(|a, b| {
            a.client
                .pairs_per_second
                .total_cmp(&b.client.pairs_per_second)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_from(text: &str) -> Result<SweepPlan, BenchError> {
        let config: SweepConfig = Figment::from(Toml::string(text)).extract().map_err(|e| {
            BenchError::SweepConfig(e.into_iter().map(|e| describe_error(&e)).collect())
        })?;
        SweepPlan::from_config(config)
    }

    const GRID: &str = "[grid]\nmodel_workers = [1]\nmodel_threads = [1, 2]\nmax_batch_tokens = [2048, 4096]\nmax_batch_delay = [\"2ms\"]\nconcurrency = [1, 4]\n";

    #[test]
    fn the_grid_is_every_combination() {
        let plan = plan_from(GRID).unwrap();
        assert_eq!(plan.points.len(), 4);
        assert_eq!(plan.concurrency, [1, 4]);
        assert_eq!(plan.points[0].max_batch_delay, Duration::from_millis(2));
        assert_eq!(plan.p99_target, Duration::from_secs(10));
    }

    #[test]
    fn unknown_keys_empty_axes_and_bad_values_are_named() {
        let error = plan_from(&format!("{GRID}[run]\nrequets = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("run.requets: unknown key"), "{error}");
        let error = plan_from(&GRID.replace("concurrency = [1, 4]", "concurrency = []"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("grid.concurrency: empty"), "{error}");
        let error = plan_from(&GRID.replace("[\"2ms\"]", "[\"2 fortnights\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("grid.max_batch_delay: \"2 fortnights\" is not a duration"),
            "{error}"
        );
        let error = plan_from(&GRID.replace("model_workers = [1]", "model_workers = [0]"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("grid.model_workers: 0 is not allowed"),
            "{error}"
        );
        let error = plan_from("[grid]\nmodel_workers = [1]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing"), "{error}");
    }

    #[test]
    fn the_best_meets_the_target_without_errors() {
        let result = |pairs: f64, p99: f64, errors: usize| SweepResult {
            server: ServerPoint {
                model_workers: 1,
                model_threads: 1,
                max_batch_tokens: pairs as usize,
                max_batch_delay: Duration::ZERO,
            },
            concurrency: 1,
            client: LoadFigures {
                pairs_per_second: pairs,
                latency: crate::Percentiles {
                    p99,
                    ..Default::default()
                },
                errors: (0..errors).map(|i| (i.to_string(), 1)).collect(),
                ..Default::default()
            },
            metrics: ServerFigures::default(),
        };
        let results = [
            result(10.0, 1.0, 0),
            result(30.0, 9.0, 0),
            result(50.0, 2.0, 1),
            result(20.0, 2.0, 0),
        ];
        let best = best_within(&results, Duration::from_secs(5)).unwrap();
        assert_eq!(best.client.pairs_per_second, 20.0);
        assert!(best_within(&results, Duration::from_millis(10)).is_none());
    }
}
