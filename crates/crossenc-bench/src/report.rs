//! One bench run against a running server, and how it is reported.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::load::{run_load, Bound, LoadFigures, Loop};
use crate::scrape::{Scrape, ServerFigures};
use crate::workload::Query;
use crate::BenchError;

/// A run: how it was driven, what the clients saw, what the server says it did.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub mode: Loop,
    pub bound: Bound,
    pub client: LoadFigures,
    pub server: ServerFigures,
}

/// Drives `workload` at the server and reads its /metrics before and after.
/// Where the server listens, and how to reach its gRPC port.
#[derive(Debug, Clone)]
pub struct Target {
    /// The gRPC address; several replicas are balanced over by the client, as over a
    /// headless Service.
    pub grpc_addrs: Vec<SocketAddr>,
    /// Where its /metrics is served (plain HTTP: `server.admin_addr` when TLS is on); of
    /// one replica only when there are several.
    pub http_addr: SocketAddr,
    /// PEM CA certificate of a server with TLS on; it must name `localhost`.
    pub tls_ca: Option<Vec<u8>>,
    /// What each Rerank asks for: its model, and how long documents are read.
    pub asking: Asking,
}

/// What the load's Reranks ask for besides their texts.
#[derive(Debug, Clone, Default)]
pub struct Asking {
    /// The served model's name; empty: the server's first.
    pub model: String,
    /// Score long documents in windows (`long_documents: chunk`) rather than truncate.
    pub chunk: bool,
}

impl Target {
    /// A plaintext server.
    pub fn plain(grpc_addr: SocketAddr, http_addr: SocketAddr) -> Self {
        Self {
            grpc_addrs: vec![grpc_addr],
            http_addr,
            tls_ca: None,
            asking: Asking::default(),
        }
    }

    async fn connect(&self) -> Result<Channel, BenchError> {
        let first = self.grpc_addrs.first().copied();
        let fail = |addr: Option<SocketAddr>| {
            move |e: tonic::transport::Error| BenchError::Connect {
                addr: addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                message: format!("{e:?}"),
            }
        };
        let mut endpoints = Vec::new();
        for &addr in &self.grpc_addrs {
            let endpoint = match &self.tls_ca {
                None => {
                    Endpoint::from_shared(format!("http://{addr}")).map_err(fail(Some(addr)))?
                }
                Some(ca) => {
                    let tls = ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost");
                    Endpoint::from_shared(format!("https://{addr}"))
                        .map_err(fail(Some(addr)))?
                        .tls_config(tls)
                        .map_err(fail(Some(addr)))?
                }
            };
            endpoints.push(endpoint);
        }
        match endpoints.len() {
            1 => endpoints.remove(0).connect().await.map_err(fail(first)),
            _ => Ok(Channel::balance_list(endpoints.into_iter())),
        }
    }
}

pub async fn bench_server(
    target: &Target,
    workload: Arc<[Query]>,
    mode: Loop,
    bound: Bound,
    progress: bool,
) -> Result<BenchReport, BenchError> {
    let http_addr = target.http_addr;
    let client = CrossEncoderClient::new(target.connect().await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let before = Scrape::fetch(http_addr)?;
    let bar = progress_bar(progress, bound);
    let ticking = bar.clone();
    let tick = Arc::new(move || ticking.inc(1));
    let asking = Arc::new(target.asking.clone());
    let client_figures = run_load((client, asking), workload, mode, bound, tick).await;
    bar.finish_and_clear();
    let after = Scrape::fetch(http_addr)?;
    Ok(BenchReport {
        mode,
        bound,
        client: client_figures,
        server: ServerFigures::between(&before, &after),
    })
}

fn progress_bar(shown: bool, bound: Bound) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = match bound {
        Bound::Requests(n) => ProgressBar::new(n as u64),
        Bound::Duration(_) => ProgressBar::no_length(),
    };
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {pos}/{len} requests {per_sec} [{elapsed}]")
    {
        bar.set_style(style);
    }
    bar
}

impl BenchReport {
    /// The table's header line.
    pub fn table_header() -> String {
        format!(
            "{:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}",
            "load",
            "req/s",
            "pairs/s",
            "tokens/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "padding",
            "batch"
        )
    }

    /// One line of the table.
    pub fn table_row(&self) -> String {
        let c = &self.client;
        let ms = |s: f64| s * 1e3;
        let mut row = String::new();
        let _ = write!(
            row,
            "{:<14} {:>8.2} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7} {:>7.1}% {:>7.1}",
            describe(self.mode),
            c.requests_per_second,
            c.pairs_per_second,
            c.tokens_per_second,
            ms(c.latency.p50),
            ms(c.latency.p90),
            ms(c.latency.p99),
            ms(c.latency.max),
            c.requests - c.answered,
            self.server.padding_ratio * 100.0,
            self.server.mean_batch_size,
        );
        for (code, count) in &c.errors {
            let _ = write!(row, "  {code}: {count}");
        }
        row
    }
}

/// `closed x16`, `open 5/s`.
pub fn describe(mode: Loop) -> String {
    match mode {
        Loop::Closed { clients } => format!("closed x{clients}"),
        Loop::Open { rate } => format!("open {rate}/s"),
    }
}
