//! Building a [`ServeConfig`] from its layers, lowest first: built-in defaults, a TOML
//! file, `CROSSENC_<SECTION>__<KEY>` environment variables, command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::{InvalidSetting, ServeConfig};

/// The prefix of the environment layer's variables.
pub const ENV_PREFIX: &str = "CROSSENC_";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    /// The variable's name.
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag => f.write_str("command line"),
        }
    }
}

/// What to build the configuration from, above the defaults.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The TOML file (`--config`, or `CROSSENC_CONFIG`).
    pub file: Option<PathBuf>,
    /// Read `CROSSENC_<SECTION>__<KEY>` variables from the environment.
    pub env: bool,
    /// Flags given on the command line, by dotted key (`batching.max_batch_tokens`).
    pub flags: BTreeMap<&'static str, Value>,
}

/// One thing wrong with the configuration, with where the value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The dotted key (`batching.max_batch_tokens`), or the file for a file-level error.
    pub key: String,
    /// Where the offending value was set, when known.
    pub source: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{} (from {source}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

impl From<InvalidSetting> for Problem {
    fn from(invalid: InvalidSetting) -> Self {
        Problem {
            key: invalid.key.to_string(),
            source: None,
            message: format!("{} is not allowed: {}", invalid.value, invalid.allowed),
        }
    }
}

/// Why no configuration could be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", list(.0))]
pub struct ConfigError(pub Vec<Problem>);

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A built configuration and where each of its values came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: ServeConfig,
    figment: Figment,
}

impl Loaded {
    /// Where the value of `key` (dotted) came from.
    pub fn source(&self, key: &str) -> Source {
        let Some(metadata) = self.figment.find_metadata(key) else {
            return Source::Default;
        };
        source_of(metadata, key)
    }
}

fn source_of(metadata: &Metadata, key: &str) -> Source {
    if let Some(path) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        return Source::File(path.to_path_buf());
    }
    match metadata.name.as_ref() {
        FLAGS => Source::Flag,
        DEFAULTS => Source::Default,
        _ => Source::Env(env_var(key)),
    }
}

const FLAGS: &str = "command line";
const DEFAULTS: &str = "default";

/// The environment variable that sets `key`: `server.grpc_addr` -> `CROSSENC_SERVER__GRPC_ADDR`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Builds and validates the configuration from `layers`.
pub fn load(layers: &Layers) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Named(
        DEFAULTS,
        Serialized::defaults(ServeConfig::default()),
    ));
    if let Some(path) = &layers.file {
        if !path.is_file() {
            return Err(ConfigError(vec![Problem {
                key: path.display().to_string(),
                source: None,
                message: "the configuration file does not exist".into(),
            }]));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    if layers.env {
        // CROSSENC_LOG and CROSSENC_CONFIG are not settings: only SECTION__KEY names are.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        figment = figment.merge(env);
    }
    figment = figment.merge(Named(FLAGS, FlagLayer(nest(&layers.flags))));
    let config: ServeConfig = figment
        .extract()
        .map_err(|error| ConfigError(error.into_iter().map(problem).collect()))?;
    config
        .validate()
        .map_err(|invalid| ConfigError(invalid.into_iter().map(Problem::from).collect()))?;
    Ok(Loaded { config, figment })
}

/// Dotted keys to nested tables.
fn nest(flags: &BTreeMap<&'static str, Value>) -> Dict {
    let mut root = Dict::new();
    for (key, value) in flags {
        let (section, name) = key.split_once('.').expect("flag keys are section.key");
        let table = root
            .entry(section.to_string())
            .or_insert_with(|| Value::from(Dict::new()));
        if let Value::Dict(_, table) = table {
            table.insert(name.to_string(), value.clone());
        }
    }
    root
}

/// A figment error as a [`Problem`], with the nearest valid key for a typo.
fn problem(error: figment::Error) -> Problem {
    let mut key = error.path.join(".");
    let source = error
        .metadata
        .as_ref()
        .map(|m| source_of(m, &key).to_string());
    let message = match &error.kind {
        Kind::UnknownField(field, expected) => {
            if error.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            unknown_key(field, expected)
        }
        Kind::UnknownVariant(value, expected) => {
            format!("{value:?} is not one of {}", quoted(expected))
        }
        Kind::InvalidType(actual, expected) => format!("found {actual}, expected {expected}"),
        other => other.to_string(),
    };
    Problem {
        key,
        source,
        message,
    }
}

fn unknown_key(field: &str, expected: &[&str]) -> String {
    let nearest = expected
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(field, candidate), candidate))
        .min()
        .filter(|(distance, candidate)| *distance <= candidate.len().max(3) / 2);
    match nearest {
        Some((_, candidate)) => format!("unknown key; did you mean `{candidate}`?"),
        None => format!("unknown key; valid keys here: {}", quoted(expected)),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A provider under a name of ours, so that `config show` can say where values came from.
struct Named<P>(&'static str, P);

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.0)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.1.data()
    }
}

/// The flags' values, already nested by section.
struct FlagLayer(Dict);

impl Provider for FlagLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
// figment's Jail closures return its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

    use std::path::Path;

    use figment::Jail;

    use super::*;

    fn layers(file: Option<&str>) -> Layers {
        Layers {
            file: file.map(PathBuf::from),
            env: true,
            flags: BTreeMap::new(),
        }
    }

    fn problems(layers: &Layers) -> Vec<String> {
        load(layers)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "crossenc.toml",
                r#"
                [batching]
                max_batch_tokens = 2048
                max_batch_delay = "5ms"
                max_batch_size = 32
                [server]
                max_request_bytes = "1MiB"
                "#,
            )?;
            jail.set_env("CROSSENC_BATCHING__MAX_BATCH_DELAY", "7ms");
            jail.set_env("CROSSENC_BATCHING__MAX_BATCH_SIZE", "16");
            jail.set_env("CROSSENC_LOG", "debug");
            let mut layers = layers(Some("crossenc.toml"));
            layers
                .flags
                .insert("batching.max_batch_size", Value::from(8u64));
            let loaded = load(&layers).map_err(|e| e.to_string())?;
            let batching = &loaded.config.batching;
            assert_eq!(batching.max_batch_tokens, 2048);
            assert_eq!(batching.max_batch_delay, Duration::from_millis(7));
            assert_eq!(batching.max_batch_size, 8);
            assert_eq!(loaded.config.server.max_request_bytes.as_u64(), 1 << 20);
            assert_eq!(loaded.source("batching.max_batch_size"), Source::Flag);
            assert_eq!(
                loaded.source("batching.max_batch_delay"),
                Source::Env("CROSSENC_BATCHING__MAX_BATCH_DELAY".into())
            );
            assert!(matches!(
                loaded.source("batching.max_batch_tokens"),
                Source::File(path) if path.ends_with("crossenc.toml")
            ));
            assert_eq!(loaded.source("workers.model"), Source::Default);
            Ok(())
        });
    }

    #[test]
    fn a_typo_names_the_key_and_the_nearest_valid_one() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[batching]\nmax_batch_tokes = 1\n")?;
            let found = problems(&layers(Some("c.toml")));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with("batching.max_batch_tokes (from file ")
                    && found[0].ends_with("unknown key; did you mean `max_batch_tokens`?"),
                "{found:?}"
            );
            jail.create_file("s.toml", "[batchng]\n")?;
            let found = problems(&layers(Some("s.toml")));
            assert!(found[0].contains("did you mean `batching`?"), "{found:?}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_or_unit_names_the_key_and_its_source() {
        Jail::expect_with(|jail| {
            jail.set_env("CROSSENC_WORKERS__MODEL", "two");
            let found = problems(&layers(None));
            assert!(
                found[0].starts_with("workers.model (from env CROSSENC_WORKERS__MODEL)"),
                "{found:?}"
            );
            jail.set_env("CROSSENC_WORKERS__MODEL", "2");
            jail.create_file("d.toml", "[batching]\nmax_batch_delay = \"5 parsecs\"\n")?;
            let found = problems(&layers(Some("d.toml")));
            assert!(
                found[0].starts_with("batching.max_batch_delay (from file "),
                "{found:?}"
            );
            jail.create_file("a.toml", "[server]\ngrpc_addr = \"localhost\"\n")?;
            let found = problems(&layers(Some("a.toml")));
            assert!(found[0].starts_with("server.grpc_addr"), "{found:?}");
            jail.create_file("m.toml", "[model]\ndtype = \"f16\"\n")?;
            let found = problems(&layers(Some("m.toml")));
            assert!(
                found[0].contains("\"f16\" is not one of `f32`, `bf16`"),
                "{found:?}"
            );
            jail.create_file("s.toml", "[model]\nactivation = \"softmax\"\n")?;
            let found = problems(&layers(Some("s.toml")));
            assert!(
                found[0].starts_with("model.activation (from file ")
                    && found[0]
                        .contains("\"softmax\" is not one of `model`, `sigmoid`, `identity`"),
                "{found:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_activation_is_the_models_unless_one_is_named() {
        Jail::expect_with(|jail| {
            let activation =
                |file: &str| load(&layers(Some(file))).unwrap().config.model.activation;
            jail.create_file("model.toml", "[model]\nactivation = \"model\"\n")?;
            assert_eq!(activation("model.toml"), None);
            jail.create_file("identity.toml", "[model]\nactivation = \"identity\"\n")?;
            assert_eq!(
                activation("identity.toml"),
                Some(crate::ScoreActivation::Identity)
            );
            jail.create_file("sigmoid.toml", "[model]\nactivation = \"sigmoid\"\n")?;
            assert_eq!(
                activation("sigmoid.toml"),
                Some(crate::ScoreActivation::Sigmoid)
            );
            Ok(())
        });
    }

    #[test]
    fn values_out_of_range_are_all_reported() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                "[workers]\ntokenizer = 0\n[model]\nmax_length = 512\n[batching]\nmax_batch_tokens = 100\n",
            )?;
            let found = problems(&layers(Some("r.toml")));
            assert_eq!(
                found,
                [
                    "workers.tokenizer: 0 is not allowed: must be at least 1",
                    "batching.max_batch_tokens: 100 is not allowed: must hold at least one pair of model.max_length tokens (512 when it is 0)"
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let found = problems(&layers(Some("/nonexistent/crossenc.toml")));
        assert_eq!(
            found,
            ["/nonexistent/crossenc.toml: the configuration file does not exist"]
        );
    }

    #[test]
    fn the_shipped_file_equals_the_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/crossenc.toml");
        let loaded = load(&Layers {
            file: Some(shipped),
            env: false,
            flags: BTreeMap::new(),
        })
        .unwrap();
        assert_eq!(loaded.config, ServeConfig::default());
        // Every key is in the file: each value's source is the file, not the defaults.
        let rendered = crate::render(&loaded);
        assert!(!rendered.contains("# default"), "{rendered}");
    }
}
