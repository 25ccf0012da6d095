//! Where log lines go and how they look: text for people, or one JSON object per line
//! (with the spans each line was written in, so a request's id is on every line about
//! it) for log pipelines. Workers log in the supervisor's format, tagged with a span
//! naming the worker.

use std::io::IsTerminal;

use crossenc_config::LogFormat;

/// Installs the process's subscriber: `format`, filtered by `filter` (RUST_LOG syntax).
pub fn init(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// For commands other than `serve` and `worker`: text, CROSSENC_LOG or info.
pub fn init_default() {
    let filter = std::env::var("CROSSENC_LOG").unwrap_or_else(|_| "info".into());
    init(LogFormat::Text, &filter);
}

/// For a worker: the format and filter its supervisor gave it.
pub fn init_worker() {
    let format = match std::env::var("CROSSENC_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let filter = std::env::var("CROSSENC_LOG").unwrap_or_else(|_| "info".into());
    init(format, &filter);
}
