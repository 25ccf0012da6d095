//! A request's id, as it travels with the jobs that serve the request, so that a worker's
//! log lines about a job name the requests it served.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The id of one client request: the client's `x-request-id` when it sent a sane one,
/// otherwise one the server made up. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(#[serde(with = "crate::texts::shared_str")] Arc<str>);

impl RequestId {
    /// The longest id taken from a client; a longer one is replaced.
    pub const MAX_LEN: usize = 64;

    /// A client's id, if it is sane: 1 to [`Self::MAX_LEN`] characters among ASCII
    /// letters, digits and `-_.:/+=`, so that it cannot forge log lines or headers.
    pub fn from_client(text: &str) -> Option<Self> {
        let sane = |c: char| c.is_ascii_alphanumeric() || "-_.:/+=".contains(c);
        (!text.is_empty() && text.len() <= Self::MAX_LEN && text.chars().all(sane))
            .then(|| Self(Arc::from(text)))
    }

    /// A fresh id: 16 hex digits, unique within this process and unlikely to repeat
    /// across processes (a random per-process key hashes a counter).
    pub fn generate() -> Self {
        use std::hash::BuildHasher;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let key = KEY.get_or_init(std::collections::hash_map::RandomState::new);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(Arc::from(format!("{:016x}", key.hash_one(n))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids joined by commas, for one log field naming the requests of a job.
pub fn joined(ids: &[RequestId]) -> String {
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(id.as_str());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_client_ids_are_taken() {
        assert!(RequestId::from_client("req-42_a.b:c/d+e=").is_some());
        for bad in ["", "has space", "line\nbreak", "quote\"", &"x".repeat(65)] {
            assert!(RequestId::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_differ() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert!(RequestId::from_client(a.as_str()).is_some());
    }
}
