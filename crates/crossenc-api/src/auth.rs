//! API keys: a client sends one as `Authorization: Bearer KEY` (HTTP) or as
//! `authorization: Bearer KEY` metadata (gRPC). Keys are held as SHA-256 digests and a
//! presented key is compared with every one of them in constant time, so that neither
//! the time taken nor the answer says how close a guess came; a refusal says only that a
//! valid key is needed, and is counted by method, never by key.

use std::path::Path;

use crossenc_config::ServerConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why the keys could not be read.
#[derive(Debug, thiserror::Error)]
#[error("server.api_key_file {path}: {reason}")]
pub struct KeyFileError {
    path: String,
    reason: String,
}

/// The keys that open the API; none: the API is open.
#[derive(Debug, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// `server.api_keys`, and those of `server.api_key_file` (one per line; blank lines
    /// and `#` comments skipped).
    pub fn load(server: &ServerConfig) -> Result<Self, KeyFileError> {
        let mut keys: Vec<String> = server
            .api_keys
            .iter()
            .map(|k| k.expose().to_string())
            .collect();
        if !server.api_key_file.as_os_str().is_empty() {
            keys.extend(read_key_file(&server.api_key_file)?);
        }
        Ok(Self {
            digests: keys.iter().map(digest).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` (an `authorization` header's value) names a valid key. Every
    /// key is compared, whatever the first comparisons found.
    pub fn admit(&self, presented: Option<&[u8]>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(key) = presented.and_then(bearer) else {
            return false;
        };
        let presented = digest(key);
        let mut matched = subtle::Choice::from(0);
        for known in &self.digests {
            matched |= known.ct_eq(&presented);
        }
        matched.into()
    }
}

fn digest(key: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(key.as_ref()).into()
}

/// The key of `Bearer KEY` (the scheme in any case, as RFC 9110 says).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, key) = value.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && key.first() == Some(&b' '))
        .then(|| key.trim_ascii())
        .filter(|key| !key.is_empty())
}

fn read_key_file(path: &Path) -> Result<Vec<String>, KeyFileError> {
    let fail = |reason: String| KeyFileError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    // Which line, never what it holds.
    if let Some(short) = keys
        .iter()
        .position(|k| k.chars().count() < crossenc_config::ApiKey::MIN_LEN)
    {
        return Err(fail(format!(
            "key {} of the file is shorter than {} characters",
            short + 1,
            crossenc_config::ApiKey::MIN_LEN
        )));
    }
    if keys.is_empty() {
        return Err(fail("holds no key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use crossenc_config::ApiKey;

    use super::*;

    fn keys(keys: &[&str]) -> ApiKeys {
        let server = ServerConfig {
            api_keys: keys.iter().map(|k| ApiKey::new(*k)).collect(),
            ..ServerConfig::default()
        };
        ApiKeys::load(&server).unwrap()
    }

    #[test]
    fn only_a_bearer_with_a_known_key_is_admitted() {
        let keys = keys(&["first-key-0123456789", "second-key-0123456789"]);
        assert!(keys.admit(Some(b"Bearer second-key-0123456789")));
        assert!(keys.admit(Some(b"bearer first-key-0123456789")));
        assert!(!keys.admit(Some(b"Bearer first-key-012345678")));
        assert!(!keys.admit(Some(b"first-key-0123456789")));
        assert!(!keys.admit(Some(b"Basic first-key-0123456789")));
        assert!(!keys.admit(Some(b"Bearer ")));
        assert!(!keys.admit(None));
    }

    #[test]
    fn without_keys_everything_is_admitted() {
        assert!(keys(&[]).admit(None));
    }
}
