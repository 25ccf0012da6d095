//! The `[log]` section: how the supervisor and its workers write their logs.

use serde::{Deserialize, Serialize};

/// How the supervisor and its workers write their logs (to the supervisor's stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object per line, for log pipelines).
    pub format: LogFormat,
    /// What is written, as `RUST_LOG` says it (`info`, `info,crossenc_worker=debug`, ...);
    /// the CROSSENC_LOG variable overrides it.
    pub filter: String,
    /// One line per finished request at info (target `crossenc::access`).
    pub access: bool,
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://host:4317`) to export
    /// spans to; empty: none.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            access: true,
            otlp_endpoint: String::new(),
        }
    }
}

impl LogConfig {
    /// The filter in effect: CROSSENC_LOG if set, else `filter`; the access log off
    /// when `access` is false.
    pub fn effective_filter(&self) -> String {
        let base = std::env::var("CROSSENC_LOG").unwrap_or_else(|_| self.filter.clone());
        match self.access {
            true => base,
            false => format!("{base},crossenc::access=off"),
        }
    }
}
