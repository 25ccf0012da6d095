//! [`ServeConfig::validate`]: the values that no type can rule out, every problem
//! reported at once and named by its key.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ApiKey, ServeConfig, ServerConfig};

/// The longest `model.max_length` a config may ask for; the model's own position
/// table bounds it further (Qwen3: 40960).
const MAX_LENGTH_LIMIT: usize = 131_072;

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key} = {value}: {allowed}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

/// Collects the problems of one configuration.
#[derive(Default)]
struct Checks(Vec<InvalidSetting>);

impl Checks {
    fn require(
        &mut self,
        ok: bool,
        key: &'static str,
        value: impl ToString,
        allowed: &'static str,
    ) {
        if !ok {
            self.0.push(InvalidSetting {
                key,
                value: value.to_string(),
                allowed,
            });
        }
    }

    fn at_least_one(&mut self, key: &'static str, value: usize) {
        self.require(value >= 1, key, value, "must be at least 1");
    }

    fn positive(&mut self, key: &'static str, value: Duration) {
        let shown = humantime::format_duration(value);
        self.require(!value.is_zero(), key, shown, "must be longer than 0s");
    }
}

impl ServeConfig {
    /// Checks the values that no type can rule out; every problem is reported, not only the first.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut c = Checks::default();
        let (server, workers, batching) = (&self.server, &self.workers, &self.batching);
        c.require(
            server.grpc_addr != server.http_addr || server.grpc_addr.port() == 0,
            "server.http_addr",
            server.http_addr,
            "must differ from server.grpc_addr",
        );
        c.require(
            server.max_request_bytes.as_u64() >= 1024,
            "server.max_request_bytes",
            server.max_request_bytes.as_u64(),
            "must be at least 1KiB",
        );
        c.at_least_one(
            "server.max_concurrent_requests",
            server.max_concurrent_requests,
        );
        c.positive("server.http_request_timeout", server.http_request_timeout);
        c.positive("server.default_deadline", server.default_deadline);
        c.positive(
            "server.http_header_read_timeout",
            server.http_header_read_timeout,
        );
        c.at_least_one("server.max_connections", server.max_connections);
        server.check_connections(&mut c);
        server.check_security(&mut c);
        c.require(
            server.http2_max_concurrent_streams >= 1,
            "server.http2_max_concurrent_streams",
            server.http2_max_concurrent_streams,
            "must be at least 1",
        );
        c.require(
            server.max_text_bytes.as_u64() == 0 || server.max_text_bytes.as_u64() >= 64,
            "server.max_text_bytes",
            server.max_text_bytes.as_u64(),
            "must be 0 (max_length x 32) or at least 64 bytes",
        );
        c.require(
            server.max_text_bytes_in_flight.as_u64() >= server.max_request_bytes.as_u64(),
            "server.max_text_bytes_in_flight",
            server.max_text_bytes_in_flight.as_u64(),
            "must hold at least one request of server.max_request_bytes",
        );
        self.check_devices(&mut c);
        c.at_least_one("workers.tokenizer", workers.tokenizer);
        c.at_least_one("workers.model", workers.model);
        c.positive("workers.startup_timeout", workers.startup_timeout);
        c.positive("workers.batch_timeout", workers.batch_timeout);
        c.positive(
            "workers.respawn_backoff_initial",
            workers.respawn_backoff_initial,
        );
        c.require(
            workers.respawn_backoff_max >= workers.respawn_backoff_initial,
            "workers.respawn_backoff_max",
            humantime::format_duration(workers.respawn_backoff_max),
            "must not be shorter than workers.respawn_backoff_initial",
        );
        c.positive("workers.no_worker_patience", workers.no_worker_patience);
        c.require(
            workers.max_start_failures >= 1,
            "workers.max_start_failures",
            workers.max_start_failures,
            "must be at least 1",
        );
        c.at_least_one("batching.max_batch_size", batching.max_batch_size);
        c.at_least_one(
            "batching.max_client_batch_size",
            batching.max_client_batch_size,
        );
        c.at_least_one("batching.batches_per_worker", batching.batches_per_worker);
        c.require(
            batching.max_queued_pairs >= batching.max_client_batch_size,
            "batching.max_queued_pairs",
            batching.max_queued_pairs,
            "must hold at least one request of batching.max_client_batch_size pairs",
        );
        c.require(
            self.metrics.collection_interval >= Duration::from_millis(10),
            "metrics.collection_interval",
            humantime::format_duration(self.metrics.collection_interval),
            "must be at least 10ms",
        );
        self.check_lengths(&mut c);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(c.0)
        }
    }

    fn check_devices(&self, c: &mut Checks) {
        let model = &self.model;
        let devices = model.devices();
        if !devices.iter().all(|d| is_device(d)) {
            let allowed = "must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)";
            return c.require(false, "model.device", &model.device, allowed);
        }
        if devices.len() == 1 {
            return;
        }
        let gpus = model.gpus();
        let distinct = gpus.iter().collect::<std::collections::HashSet<_>>().len();
        c.require(
            gpus.len() == devices.len() && distinct == gpus.len(),
            "model.device",
            &model.device,
            "a list of devices must name distinct GPUs only (`cpu` stands alone)",
        );
        // One worker per GPU at least, or a GPU would sit idle.
        c.require(
            self.workers.model >= devices.len(),
            "workers.model",
            self.workers.model,
            "must be at least the number of GPUs in model.device (one worker per GPU)",
        );
    }

    fn check_lengths(&self, c: &mut Checks) {
        let max_length = self.model.max_length;
        c.require(
            max_length == 0 || (2..=MAX_LENGTH_LIMIT).contains(&max_length),
            "model.max_length",
            max_length,
            "must be 0 (the model's limit) or between 2 and 131072 tokens",
        );
        // A pair of the longest length must fit one batch; 512 is the default limit.
        let longest = if max_length == 0 { 512 } else { max_length };
        c.require(
            self.batching.max_batch_tokens >= longest,
            "batching.max_batch_tokens",
            self.batching.max_batch_tokens,
            "must hold at least one pair of model.max_length tokens (512 when it is 0)",
        );
    }
}

fn is_device(device: &str) -> bool {
    device == "cpu"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl ServerConfig {
    fn check_connections(&self, c: &mut Checks) {
        c.positive(
            "server.connection_idle_timeout",
            self.connection_idle_timeout,
        );
        c.positive("server.max_connection_age", self.max_connection_age);
        c.positive(
            "server.http2_keepalive_interval",
            self.http2_keepalive_interval,
        );
        c.positive(
            "server.http2_keepalive_timeout",
            self.http2_keepalive_timeout,
        );
        c.require(
            self.max_inflight_request_bytes.as_u64() >= self.max_request_bytes.as_u64(),
            "server.max_inflight_request_bytes",
            self.max_inflight_request_bytes.as_u64(),
            "must hold at least one request of server.max_request_bytes",
        );
    }

    fn check_security(&self, c: &mut Checks) {
        let given = |p: &PathBuf| !p.as_os_str().is_empty();
        c.require(
            given(&self.tls_cert_file) == given(&self.tls_key_file),
            "server.tls_key_file",
            self.tls_key_file.display(),
            "server.tls_cert_file and server.tls_key_file go together: set both or neither",
        );
        c.require(
            !given(&self.tls_client_ca_file) || given(&self.tls_cert_file),
            "server.tls_client_ca_file",
            self.tls_client_ca_file.display(),
            "client certificates need TLS: set server.tls_cert_file and server.tls_key_file",
        );
        for key in &self.api_keys {
            c.require(
                key.expose().chars().count() >= ApiKey::MIN_LEN,
                "server.api_keys",
                "<redacted>",
                "each key must be at least 16 characters",
            );
        }
        c.require(
            !given(&self.admin_api_key_file) || self.admin_addr.is_some(),
            "server.admin_api_key_file",
            self.admin_api_key_file.display(),
            "guards server.admin_addr: set it, or the admin routes share http_addr and its api keys",
        );
        if let Some(admin) = self.admin_addr {
            let clashes = admin == self.grpc_addr || admin == self.http_addr;
            c.require(
                !clashes || admin.port() == 0,
                "server.admin_addr",
                admin,
                "must differ from server.grpc_addr and server.http_addr (leave it empty to serve the admin routes on http_addr)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut config = ServeConfig::default();
        config.workers.model = 0;
        config.model.max_length = 512;
        config.batching.max_batch_tokens = 100;
        config.model.device = "gpu0".into();
        config.server.http_addr = config.server.grpc_addr;
        config.workers.respawn_backoff_max = Duration::from_millis(10);
        let errors = config.validate().unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "server.http_addr",
                "model.device",
                "workers.model",
                "workers.respawn_backoff_max",
                "batching.max_batch_tokens"
            ]
        );
        assert_eq!(
            errors[2].to_string(),
            "workers.model = 0: must be at least 1"
        );
        assert_eq!(
            errors[1].to_string(),
            "model.device = gpu0: must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)"
        );
    }

    #[test]
    fn a_device_list_places_workers_on_distinct_gpus() {
        let mut config = ServeConfig::default();
        config.model.device = "cuda:0, cuda:1".into();
        config.workers.model = 4;
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.model.devices(), ["cuda:0", "cuda:1"]);
        assert_eq!(config.model.gpus(), [0, 1]);

        config.workers.model = 1;
        let errors = config.validate().unwrap_err();
        assert_eq!(errors[0].key, "workers.model", "{errors:?}");

        for device in ["cuda:0,cuda:0", "cpu,cuda:0", "cuda:0,", "cuda:0,gpu1"] {
            config.model.device = device.into();
            config.workers.model = 2;
            let errors = config.validate().unwrap_err();
            assert_eq!(errors[0].key, "model.device", "{device}: {errors:?}");
        }
        config.model.device = "cpu".into();
        assert!(config.model.gpus().is_empty());
    }
}
