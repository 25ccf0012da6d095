//! The server's own figures, from its /metrics before and after a run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::BenchError;

/// The samples of one /metrics page, by series (name with labels, as rendered).
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub fn fetch(addr: SocketAddr) -> Result<Self, BenchError> {
        let failed = |e: std::io::Error| BenchError::Metrics {
            addr,
            message: e.to_string(),
        };
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(failed)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(failed)?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(failed)?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(failed)?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Self(samples)
    }

    /// The sum of every series of `name` (all label sets).
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// What the server did during a run: the difference of two scrapes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    /// Padding over the batches' padded shape.
    pub padding_ratio: f64,
    /// Pairs per batch, mean.
    pub mean_batch_size: f64,
    pub batches: f64,
    /// Mean seconds per observation of each stage.
    pub mean_tokenization: f64,
    pub mean_inference: f64,
    pub mean_queue_wait: f64,
    pub mean_overhead: f64,
}

impl ServerFigures {
    pub fn between(before: &Scrape, after: &Scrape) -> Self {
        let delta = |name: &str| after.total(name) - before.total(name);
        let mean = |name: &str| {
            let count = delta(&format!("{name}_count"));
            if count > 0.0 {
                delta(&format!("{name}_sum")) / count
            } else {
                0.0
            }
        };
        let padded = delta("padded_tokens_total");
        let real = delta("total_tokens_total");
        Self {
            padding_ratio: padded / (padded + real).max(1.0),
            mean_batch_size: mean("batch_size"),
            batches: delta("batch_size_count"),
            mean_tokenization: mean("tokenization_latency_seconds"),
            mean_inference: mean("inference_latency_seconds"),
            mean_queue_wait: mean("queue_wait_latency_seconds"),
            mean_overhead: mean("overhead_latency_seconds"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_the_difference_of_two_pages() {
        let before = Scrape::parse(
            "# TYPE x counter\npadded_tokens_total 10\ntotal_tokens_total 90\nbatch_size_sum 4\nbatch_size_count 2\n",
        );
        let after = Scrape::parse(
            "padded_tokens_total 30\ntotal_tokens_total 270\nbatch_size_sum 24\nbatch_size_count 4\nrequest_count_total{method=\"a\"} 2\nrequest_count_total{method=\"b\"} 3\n",
        );
        let figures = ServerFigures::between(&before, &after);
        assert!((figures.padding_ratio - 0.1).abs() < 1e-12);
        assert_eq!((figures.mean_batch_size, figures.batches), (10.0, 2.0));
        assert_eq!(after.total("request_count_total"), 5.0);
    }
}
