//! A decoder prompt's prefix (the system text, the instruction, the query: everything
//! before the document), computed once. Causal attention makes a token's keys and
//! values depend only on the tokens before it, so those of a prefix are the same in
//! every pair that starts with it: a batch computes each distinct prefix once, and the
//! [`PrefixCache`] keeps them for later batches (a client paging through candidates
//! with one query pays its prefix once).

use std::sync::Arc;

use lru::LruCache;

/// A prefix's keys (normed and rotated, as attention reads them) and values at every
/// layer: `[tokens, K | V]` rows, each every key head then every value head.
pub(crate) struct PrefixKv {
    pub tokens: usize,
    pub layers: Vec<Vec<f32>>,
}

impl PrefixKv {
    /// What its keys and values take, in bytes.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.len() * 4).sum()
    }

    /// What an entry of it takes in the cache: its keys and values, and its ids.
    fn entry_bytes(&self) -> usize {
        self.bytes() + self.tokens * 4
    }
}

/// What the cache did since the model loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prefixes found in the cache (or computed earlier in the same batch).
    pub hits: u64,
    /// Prefixes computed.
    pub misses: u64,
    /// Bytes the cache holds now.
    pub bytes: u64,
    /// Tokens whose keys and values a batch did not compute because a prefix was shared.
    pub tokens_saved: u64,
}

/// Prefixes' keys and values by their token ids, least recently used out first, held
/// under a bound in bytes. The key is the ids themselves: the model is the worker's
/// one, and the template, the instruction and the query are all in the ids.
pub(crate) struct PrefixCache {
    entries: LruCache<Vec<u32>, Arc<PrefixKv>>,
    limit: usize,
    pub stats: PrefixStats,
}

impl Default for PrefixCache {
    fn default() -> Self {
        Self::new(0)
    }
}

impl PrefixCache {
    /// A cache of at most `limit` bytes; 0 keeps nothing across batches.
    pub fn new(limit: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            limit,
            stats: PrefixStats::default(),
        }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        self.shrink_to(limit);
    }

    pub fn get(&mut self, ids: &[u32]) -> Option<Arc<PrefixKv>> {
        self.entries.get(ids).cloned()
    }

    /// Keeps `kv` if it fits under the bound, evicting the least recently used first.
    pub fn insert(&mut self, ids: Vec<u32>, kv: Arc<PrefixKv>) {
        let bytes = kv.entry_bytes();
        if bytes > self.limit {
            return;
        }
        self.shrink_to(self.limit - bytes);
        self.stats.bytes += bytes as u64;
        if let Some(old) = self.entries.put(ids, kv) {
            self.stats.bytes -= old.entry_bytes() as u64;
        }
    }

    fn shrink_to(&mut self, room: usize) {
        while self.stats.bytes as usize > room {
            let Some((_, old)) = self.entries.pop_lru() else {
                break;
            };
            self.stats.bytes -= old.entry_bytes() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(tokens: usize) -> Arc<PrefixKv> {
        Arc::new(PrefixKv {
            tokens,
            layers: vec![vec![0.0; tokens * 8]; 2],
        })
    }

    #[test]
    fn the_cache_stays_under_its_bound_and_drops_the_least_recently_used() {
        let one = kv(10).bytes() + 40;
        let mut cache = PrefixCache::new(2 * one);
        cache.insert(vec![1; 10], kv(10));
        cache.insert(vec![2; 10], kv(10));
        assert!(cache.get(&[1; 10]).is_some(), "used: now the most recent");
        cache.insert(vec![3; 10], kv(10));
        assert!(
            cache.get(&[2; 10]).is_none(),
            "the least recently used went"
        );
        assert!(cache.get(&[1; 10]).is_some() && cache.get(&[3; 10]).is_some());
        assert_eq!(cache.stats.bytes as usize, 2 * one);
        cache.insert(vec![4; 100], kv(100));
        assert!(
            cache.get(&[4; 100]).is_none(),
            "larger than the whole bound"
        );
        cache.set_limit(0);
        assert_eq!(cache.stats.bytes, 0);
        assert!(cache.get(&[1; 10]).is_none());
    }
}
