//! The command line: flags, and what each subcommand runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use crossenc_config::command::{ConfigArgs, ConfigCommand, TokenizerCheck, EXIT_CONFIG};
use crossenc_config::{LongDocuments, ModelConfig, Problem, ServeConfig, ServedModel};
use crossenc_model::{ModelFolder, PairTokenizer};
use crossenc_server::{BatchCost, ModelPlan, ServeError, WorkerLauncher};

#[derive(Parser)]
#[command(
    name = "crossenc",
    version,
    about = "Serve cross-encoder (reranker) models over gRPC and HTTP",
    long_about = "crossenc scores (query, document) pairs with a transformer cross-encoder. \
                  `crossenc serve` runs a supervisor that spawns tokenizer and model worker \
                  processes and answers gRPC Infer and Rerank calls."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: the supervisor, its worker processes, gRPC and HTTP.
    Serve(Box<ConfigArgs>),
    /// Show the effective configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run one worker process. The supervisor starts these itself; not for use by hand.
    Worker(crossenc_worker::command::WorkerCommand),
    /// Measure a running server (pairs/s, latency, padding) and the model alone on a workload.
    Bench(crate::bench::BenchArgs),
    /// Run the server over a grid of configurations under load; write CSV, JSON, Markdown and plots.
    Sweep(crate::bench::SweepArgs),
    /// List every metric served at /metrics: name, type, labels and meaning.
    Metrics,
}

pub fn serve(args: Box<ConfigArgs>) -> anyhow::Result<ExitCode> {
    let mut config = match args.load(check_model) {
        Ok(loaded) => loaded.config,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // Checked above (downloaded there if need be): found in the cache now.
    for (model, prefix) in models_mut(&mut config) {
        // Named before the id gives way to its folder: served as the id, not the commit.
        model.name = model.served_name();
        model.path = model_folder(model, &prefix).map_err(|p| anyhow::anyhow!("{p}"))?;
    }
    let exe =
        std::env::current_exe().context("cannot find the crossenc binary to start workers")?;
    let plans = config
        .served_models()
        .into_iter()
        .map(|served| model_plan(&config, served, &exe))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crossenc-supervisor")
        .build()
        .context("cannot start the async runtime")?;
    // The span exporter's channel lives on the runtime.
    let model = plans[0].served.name.clone();
    let endpoint = &config.log.otlp_endpoint;
    let otlp = (!endpoint.is_empty()).then_some(crate::logging::Otlp {
        endpoint,
        model: &model,
    });
    let _tracing = {
        let _in_runtime = runtime.enter();
        crate::logging::init(config.log.format, &config.log.effective_filter(), otlp)?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot watch SIGTERM and SIGINT")?;
        anyhow::Ok(crossenc_server::serve(config, plans, shutdown).await)
    })?;
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ ServeError::Config(_)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}

/// How one model's workers start and what its batches cost.
fn model_plan(
    config: &ServeConfig,
    served: ServedModel,
    exe: &std::path::Path,
) -> anyhow::Result<ModelPlan> {
    let model = &served.model;
    let (gpu_exe, cost) = match model.gpus().is_empty() {
        true => (exe.to_path_buf(), packed_cost(model)?),
        false => (gpu_worker_binary(exe)?, BatchCost::Padded),
    };
    let launcher = WorkerLauncher {
        exe: exe.to_path_buf(),
        gpu_exe,
        model: model.path.clone(),
        served_as: served.name.clone(),
        max_length: model.requested_max_length(),
        template: model.requested_template().map(String::from),
        prefix_cache_bytes: model.prefix_cache_bytes.as_u64(),
        devices: model.devices().into_iter().map(String::from).collect(),
        dtype: model.dtype,
        model_threads: served.workers.threads_per_model_worker(),
        startup_timeout: served.workers.startup_timeout,
        log_format: config.log.format,
        log_filter: config.log.effective_filter(),
        warm_up: true,
    };
    Ok(ModelPlan {
        served,
        launcher,
        cost,
    })
}

/// Every model folder exists, holds a supported model, and allows its `max_length`;
/// with [`TokenizerCheck::Here`], its tokenizer fits it too.
pub fn check_model(config: &ServeConfig, tokenizer: TokenizerCheck) -> Result<(), Problem> {
    for served in config.served_models() {
        check_one_model(&served, tokenizer)?;
    }
    Ok(())
}

fn check_one_model(served: &ServedModel, tokenizer: TokenizerCheck) -> Result<(), Problem> {
    let (model, prefix) = (&served.model, &served.prefix);
    let path = &model_folder(model, prefix)?;
    let problem = |message: String| Problem {
        key: format!("{prefix}path"),
        source: None,
        message: format!("{}: {message}", path.display()),
    };
    let folder = ModelFolder::open_with(path, model.requested_template())
        .map_err(|e| problem(e.to_string()))?;
    if folder.config.template.is_some() && model.long_documents == LongDocuments::Chunk {
        return Err(Problem {
            key: format!("{prefix}long_documents"),
            source: None,
            message: "chunk: this model reads its prompt template in one window, cut from its \
                      end; windows are for encoders"
                .into(),
        });
    }
    let max_length = folder
        .max_length(model.requested_max_length())
        .map_err(|e| Problem {
            key: format!("{prefix}max_length"),
            source: None,
            message: e.to_string(),
        })?;
    if tokenizer == TokenizerCheck::Here {
        PairTokenizer::load(&folder, max_length).map_err(|e| problem(e.to_string()))?;
    }
    Ok(())
}

/// A future that resolves on the first SIGTERM or SIGINT; a second one exits at once.
///
/// The handlers are installed here, before the server starts: installed lazily (on the
/// future's first poll), a signal arriving while the server starts would kill it outright.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            eprintln!("second signal: exiting now");
            // Workers follow through their parent-death signal.
            std::process::exit(130);
        });
    })
}

/// Every model's settings, with where its keys live (`model.`, `models[N].`).
fn models_mut(config: &mut ServeConfig) -> Vec<(&mut ModelConfig, String)> {
    if config.models.is_empty() {
        return vec![(&mut config.model, "model.".into())];
    }
    let each = config.models.iter_mut().enumerate();
    each.map(|(i, model)| (model, format!("models[{i}].")))
        .collect()
}

/// The folder a model is loaded from: `path` itself when it is a folder, else the
/// Hugging Face id it spells, found in the hub's cache or downloaded there.
fn model_folder(model: &ModelConfig, prefix: &str) -> Result<PathBuf, Problem> {
    let path = &model.path;
    let text = path.to_string_lossy();
    let problem = |key: &str, message: String| Problem {
        key: format!("{prefix}{key}"),
        source: None,
        message,
    };
    if text.contains("://") {
        return Err(problem(
            "path",
            format!("{text} is a URL: give a model folder, or a Hugging Face id (ORG/NAME)"),
        ));
    }
    if path.is_dir() || !crossenc_hub::ModelId::looks_like_id(&text) {
        if let Some(revision) = model.requested_revision() {
            return Err(problem(
                "revision",
                format!("{revision}: a revision picks a version of a Hugging Face id, and {text} is a folder"),
            ));
        }
        return Ok(path.clone());
    }
    let id = crossenc_hub::ModelId::parse(&text).map_err(|e| problem("path", e.to_string()))?;
    let settings =
        crossenc_hub::HubSettings::from_env().map_err(|e| problem("path", e.to_string()))?;
    let revision = model.requested_revision();
    crossenc_hub::resolve(&id, revision, &settings).map_err(|e| {
        let key = match (&e, revision) {
            (crossenc_hub::HubError::InvalidRevision { .. }, _) => "revision",
            _ => "path",
        };
        problem(key, e.to_string())
    })
}

/// What a batch costs the CPU's packed pass of this model (checked to open above).
fn packed_cost(model: &ModelConfig) -> anyhow::Result<BatchCost> {
    let folder = ModelFolder::open_with(&model.path, model.requested_template())
        .with_context(|| format!("cannot open {}", model.path.display()))?;
    Ok(BatchCost::packed(folder.config.attention_span()))
}

/// The binary GPU model workers run: `crossenc-cuda-worker` beside this one (or where
/// `CROSSENC_CUDA_WORKER` says). Only it links CUDA's libraries, so that `crossenc`
/// starts on any machine.
fn gpu_worker_binary(exe: &std::path::Path) -> anyhow::Result<PathBuf> {
    let beside = exe.with_file_name("crossenc-cuda-worker");
    let binary = std::env::var_os(CUDA_WORKER).map_or(beside, PathBuf::from);
    if !binary.is_file() {
        bail!(
            "model.device asks for GPUs, but the GPU model worker {} does not exist: build \
             it with `scripts/build-cuda.sh` and put it beside crossenc (or set {CUDA_WORKER})",
            binary.display()
        );
    }
    Ok(binary)
}

const CUDA_WORKER: &str = "CROSSENC_CUDA_WORKER";

/// Prints the metric catalogue as a table (the registry itself registers exactly these).
pub fn metrics() -> ExitCode {
    use crossenc_metrics::CATALOGUE;
    println!("{:<40} {:<10} {:<30} help", "name", "type", "labels");
    for spec in CATALOGUE {
        let mut help = spec.help.to_string();
        if spec.gpu_only {
            help.push_str(" [only where NVML is present]");
        }
        println!(
            "{:<40} {:<10} {:<30} {help}",
            spec.sample_name(),
            spec.kind.as_str(),
            spec.labels.join(","),
        );
    }
    ExitCode::SUCCESS
}
