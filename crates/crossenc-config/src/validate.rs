//! [`ServeConfig::validate`]: the values that no type can rule out, every problem
//! reported at once and named by its key.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ApiKey, ServeConfig, ServedModel, ServerConfig, CHUNKS_PER_DOC_LIMIT};

/// The longest `model.max_length` a config may ask for; the model's own position
/// table bounds it further (Qwen3: 40960).
const MAX_LENGTH_LIMIT: usize = 131_072;

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key} = {value}: {allowed}")]
pub struct InvalidSetting {
    pub key: String,
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
        key: impl Into<String>,
        value: impl ToString,
        allowed: &'static str,
    ) {
        if !ok {
            self.0.push(InvalidSetting {
                key: key.into(),
                value: value.to_string(),
                allowed,
            });
        }
    }

    fn at_least_one(&mut self, key: impl Into<String>, value: usize) {
        self.require(value >= 1, key, value, "must be at least 1");
    }

    fn positive(&mut self, key: impl Into<String>, value: Duration) {
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
        check_batching(&mut c, batching, "batching.");
        c.require(
            self.metrics.collection_interval >= Duration::from_millis(10),
            "metrics.collection_interval",
            humantime::format_duration(self.metrics.collection_interval),
            "must be at least 10ms",
        );
        self.check_models(&mut c);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(c.0)
        }
    }

    /// Each model on its own, and the names they are routed by.
    fn check_models(&self, c: &mut Checks) {
        c.require(
            self.models.is_empty() || self.model == crate::ModelConfig::default(),
            "model",
            "set",
            "set either [model] (one model) or [[models]] (several), not both",
        );
        let served = self.served_models();
        let mut names = std::collections::HashSet::new();
        for model in &served {
            c.require(
                is_model_name(&model.name),
                format!("{}name", model.prefix),
                &model.name,
                "must be 1 to 128 of A-Z a-z 0-9 . _ - / : (requests route by it)",
            );
            c.require(
                names.insert(model.name.as_str()),
                format!("{}name", model.prefix),
                &model.name,
                "must differ from every other model's name",
            );
            check_model(c, model);
        }
    }
}

fn check_model(c: &mut Checks, served: &ServedModel) {
    let (model, prefix) = (&served.model, &served.prefix);
    if let Some(batching) = &model.batching {
        check_batching(c, batching, &format!("{prefix}batching."));
    }
    let workers = |key: &str| match prefix.as_str() {
        "model." => format!("workers.{key}"),
        _ => format!("{prefix}{key}_workers"),
    };
    c.at_least_one(workers("tokenizer"), served.workers.tokenizer);
    c.at_least_one(workers("model"), served.workers.model);
    check_devices(c, served, &workers("model"));
    check_lengths(c, served);
    c.require(
        (1..=CHUNKS_PER_DOC_LIMIT).contains(&model.max_chunks_per_doc),
        format!("{prefix}max_chunks_per_doc"),
        model.max_chunks_per_doc,
        "must be between 1 and 64 windows",
    );
}

fn check_batching(c: &mut Checks, batching: &crate::BatchingConfig, prefix: &str) {
    c.at_least_one(format!("{prefix}max_batch_size"), batching.max_batch_size);
    c.at_least_one(
        format!("{prefix}max_client_batch_size"),
        batching.max_client_batch_size,
    );
    c.at_least_one(
        format!("{prefix}batches_per_worker"),
        batching.batches_per_worker,
    );
    c.require(
        batching.max_queued_pairs >= batching.max_client_batch_size,
        format!("{prefix}max_queued_pairs"),
        batching.max_queued_pairs,
        "must hold at least one request of batching.max_client_batch_size pairs",
    );
}

fn check_devices(c: &mut Checks, served: &ServedModel, workers_key: &str) {
    let (model, key) = (&served.model, format!("{}device", served.prefix));
    let devices = model.devices();
    if !devices.iter().all(|d| is_device(d)) {
        let allowed = "must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)";
        return c.require(false, key, &model.device, allowed);
    }
    if devices.len() == 1 {
        return;
    }
    let gpus = model.gpus();
    let distinct = gpus.iter().collect::<std::collections::HashSet<_>>().len();
    c.require(
        gpus.len() == devices.len() && distinct == gpus.len(),
        key,
        &model.device,
        "a list of devices must name distinct GPUs only (`cpu` stands alone)",
    );
    // One worker per GPU at least, or a GPU would sit idle.
    c.require(
        served.workers.model >= devices.len(),
        workers_key,
        served.workers.model,
        "must be at least the number of GPUs in model.device (one worker per GPU)",
    );
}

fn check_lengths(c: &mut Checks, served: &ServedModel) {
    let max_length = served.model.max_length;
    c.require(
        max_length == 0 || (2..=MAX_LENGTH_LIMIT).contains(&max_length),
        format!("{}max_length", served.prefix),
        max_length,
        "must be 0 (the model's limit) or between 2 and 131072 tokens",
    );
    // A pair of the longest length must fit one batch; 512 is the default limit.
    let longest = if max_length == 0 { 512 } else { max_length };
    let key = match (&served.model.batching, served.prefix.as_str()) {
        (Some(_), prefix) => format!("{prefix}batching.max_batch_tokens"),
        (None, _) => "batching.max_batch_tokens".into(),
    };
    c.require(
        served.batching.max_batch_tokens >= longest,
        key,
        served.batching.max_batch_tokens,
        "must hold at least one pair of model.max_length tokens (512 when it is 0)",
    );
}

/// A name requests route by: it shows in URLs, logs and the `model` label.
fn is_model_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
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
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.http_addr",
                "workers.respawn_backoff_max",
                "workers.model",
                "model.device",
                "batching.max_batch_tokens"
            ]
        );
        assert_eq!(
            errors[2].to_string(),
            "workers.model = 0: must be at least 1"
        );
        assert_eq!(
            errors[3].to_string(),
            "model.device = gpu0: must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)"
        );
    }

    fn named(name: &str) -> crate::ModelConfig {
        crate::ModelConfig {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn several_models_are_named_apart_and_each_checked_where_it_is_set() {
        let mut config = ServeConfig {
            models: vec![named("small"), named("large")],
            ..Default::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let served = config.served_models();
        assert_eq!(served[1].name, "large");
        assert_eq!(served[1].prefix, "models[1].");

        config.models[1].name = "small".into();
        config.models[0].max_chunks_per_doc = 65;
        config.models[1].model_workers = Some(0);
        config.models[1].batching = Some(crate::BatchingConfig {
            max_batch_tokens: 100,
            ..Default::default()
        });
        let errors = config.validate().unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "models[0].max_chunks_per_doc",
                "models[1].name",
                "models[1].model_workers",
                "models[1].batching.max_batch_tokens"
            ],
            "{errors:?}"
        );
        assert!(errors[1].to_string().contains("must differ"), "{errors:?}");

        config.models[1] = named("a name with spaces");
        let errors = config.validate().unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == "models[1].name"),
            "{errors:?}"
        );
    }

    #[test]
    fn one_model_or_several_not_both() {
        let config = ServeConfig {
            model: named("alone"),
            models: vec![named("small")],
            ..Default::default()
        };
        let errors = config.validate().unwrap_err();
        assert_eq!(errors[0].key, "model", "{errors:?}");
    }

    #[test]
    fn a_model_without_its_own_workers_and_batching_takes_the_sections() {
        let mut config = ServeConfig::default();
        config.workers.model = 3;
        config.batching.max_batch_size = 7;
        let mut own = named("own");
        own.model_workers = Some(2);
        config.models = vec![named("shared"), own];
        let served = config.served_models();
        assert_eq!((served[0].workers.model, served[1].workers.model), (3, 2));
        assert_eq!(served[1].batching.max_batch_size, 7);
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
