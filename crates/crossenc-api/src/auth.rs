//! API keys: a client sends one as `Authorization: Bearer KEY` (HTTP) or as
//! `authorization: Bearer KEY` metadata (gRPC). Keys are held as SHA-256 digests and a
//! presented key is compared with every one of them in constant time, so that neither
//! the time taken nor the answer says how close a guess came; a refusal says only that a
//! valid key is needed, and is counted by method, never by key.
//!
//! The key file is read again on SIGHUP and when it changes ([`LiveKeys`]): the next
//! request meets the new keys; a file that cannot be read keeps the old ones in force.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crossenc_config::ServerConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why the keys could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct KeyFileError {
    key: &'static str,
    path: String,
    reason: String,
}

/// The keys that open the API; none: the API is open.
#[derive(Debug, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    fn of(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(digest).collect(),
        }
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

/// Keys that follow their file: the configured ones plus the file's latest good reading.
#[derive(Debug)]
pub struct LiveKeys {
    current: RwLock<Arc<ApiKeys>>,
    /// Keys given in the configuration itself, kept across readings of the file.
    inline: Vec<String>,
    /// `None`: no file, nothing to reload.
    file: Option<crate::reload::WatchedFiles>,
}

impl LiveKeys {
    /// The API's keys: `server.api_keys` and `server.api_key_file`.
    pub fn for_api(server: &ServerConfig) -> Result<Arc<Self>, KeyFileError> {
        let inline = server.api_keys.iter().map(|k| k.expose().to_string());
        Self::load(
            inline.collect(),
            &server.api_key_file,
            "server.api_key_file",
        )
    }

    /// The admin port's keys: `server.admin_api_key_file`, if set.
    pub fn for_admin(server: &ServerConfig) -> Result<Arc<Self>, KeyFileError> {
        let file = &server.admin_api_key_file;
        Self::load(Vec::new(), file, "server.admin_api_key_file")
    }

    fn load(
        inline: Vec<String>,
        file: &Path,
        key: &'static str,
    ) -> Result<Arc<Self>, KeyFileError> {
        let file = (!file.as_os_str().is_empty())
            .then(|| crate::reload::WatchedFiles::new(key, vec![file.to_path_buf()]));
        let keys = Self {
            current: RwLock::new(Arc::new(ApiKeys::default())),
            inline,
            file,
        };
        *keys.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys.read()?);
        Ok(Arc::new(keys))
    }

    fn read(&self) -> Result<ApiKeys, KeyFileError> {
        let mut keys = self.inline.clone();
        if let Some(file) = &self.file {
            keys.extend(read_key_file(file.key, file.first())?);
        }
        Ok(ApiKeys::of(&keys))
    }

    fn keys(&self) -> Arc<ApiKeys> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn is_empty(&self) -> bool {
        self.keys().is_empty()
    }

    /// Whether `presented` names a valid key now.
    pub fn admit(&self, presented: Option<&[u8]>) -> bool {
        self.keys().admit(presented)
    }
}

impl crate::reload::Reload for LiveKeys {
    fn refresh(&self, asked: bool) {
        let Some(file) = &self.file else {
            return;
        };
        if !file.changed(asked) {
            return;
        }
        match self.read() {
            Ok(keys) => {
                let count = keys.digests.len();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                tracing::info!(file = %file.first().display(), keys = count, "{} reloaded", file.key);
            }
            Err(error) => {
                tracing::error!(%error, "keys not reloaded; the previous ones stay in force")
            }
        }
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

fn read_key_file(key: &'static str, path: &Path) -> Result<Vec<String>, KeyFileError> {
    let fail = |reason: String| KeyFileError {
        key,
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
    use super::*;

    fn keys(keys: &[&str]) -> ApiKeys {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        ApiKeys::of(&keys)
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
