//! A bounded map keyed by statement text, least recently used first out:
//! at most a number of entries weighing at most a number of bytes (an
//! entry weighs its text, and what its value holds if that can be large);
//! an entry heavier than its limit is not kept. Used for what poolplane learns
//! once per statement text (a connection's plans, a pool's classified
//! statements), so that memory stays within configured bounds whatever
//! callers send.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;

/// The bounds of one [`TextCache`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextBounds {
    pub(crate) entries: usize,
    /// What all entries weigh together, in bytes.
    pub(crate) bytes: usize,
    /// The heaviest entry kept, in bytes.
    pub(crate) longest: usize,
}

pub(crate) struct TextCache<V> {
    bounds: TextBounds,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    /// Each value with its entry's weight.
    entries: LruCache<Box<str>, (V, usize)>,
    bytes: usize,
}

impl<V: Clone> TextCache<V> {
    pub(crate) fn new(bounds: TextBounds) -> TextCache<V> {
        let capacity = NonZeroUsize::new(bounds.entries).unwrap_or(NonZeroUsize::MIN);
        TextCache {
            bounds,
            inner: Mutex::new(Inner {
                entries: LruCache::new(capacity),
                bytes: 0,
            }),
        }
    }

    /// The value kept for `text`, if any (it becomes the most recent).
    pub(crate) fn get(&self, text: &str) -> Option<V> {
        self.lock()
            .entries
            .get(text)
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` for `text` (weighing the text alone).
    pub(crate) fn insert(&self, text: &str, value: V) {
        self.insert_weighing(text, value, 0);
    }

    /// Keeps `value` for `text`, the entry weighing the text and `extra`
    /// bytes, dropping the least recently used entries beyond the bounds;
    /// an entry over the heaviest kept is not kept.
    pub(crate) fn insert_weighing(&self, text: &str, value: V, extra: usize) {
        let weight = text.len().saturating_add(extra);
        if weight > self.bounds.longest {
            return;
        }
        let mut inner = self.lock();
        if let Some((_, (_, old))) = inner.entries.push(text.into(), (value, weight)) {
            inner.bytes -= old;
        }
        inner.bytes += weight;
        while inner.bytes > self.bounds.bytes {
            match inner.entries.pop_lru() {
                Some((_, (_, old))) => inner.bytes -= old,
                None => break,
            }
        }
    }

    /// Forgets what was kept for `text`.
    pub(crate) fn forget(&self, text: &str) {
        let mut inner = self.lock();
        if let Some((_, (_, old))) = inner.entries.pop_entry(text) {
            inner.bytes -= old;
        }
    }

    /// Entries and bytes of text kept now.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // Every mutation above completes or does nothing: a panic while
        // holding the lock leaves a consistent cache.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TextBounds = TextBounds {
        entries: 4,
        bytes: 64,
        longest: 32,
    };

    #[test]
    fn a_value_is_found_by_its_exact_text_until_forgotten() {
        let cache = TextCache::new(BOUNDS);
        cache.insert("SELECT $1", 7);
        assert_eq!(cache.get("SELECT $1"), Some(7));
        assert_eq!(cache.get("SELECT $1 "), None);
        cache.forget("SELECT $1");
        assert_eq!(cache.get("SELECT $1"), None);
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn replacing_a_value_counts_its_text_once() {
        let cache = TextCache::new(BOUNDS);
        cache.insert("SELECT 1", 1);
        cache.insert("SELECT 1", 2);
        assert_eq!(cache.size(), (1, 8));
        assert_eq!(cache.get("SELECT 1"), Some(2));
    }

    #[test]
    fn the_entry_bound_drops_the_least_recently_used() {
        let cache = TextCache::new(BOUNDS);
        for i in 0..4 {
            cache.insert(&format!("SELECT {i}"), i);
        }
        // Used now: 0 is the most recent, 1 the oldest.
        assert_eq!(cache.get("SELECT 0"), Some(0));
        cache.insert("SELECT 4", 4);
        assert_eq!(cache.size().0, 4);
        assert_eq!(cache.get("SELECT 0"), Some(0));
        assert_eq!(cache.get("SELECT 1"), None);
    }

    #[test]
    fn a_heavy_value_counts_and_one_too_heavy_is_not_kept() {
        let cache = TextCache::new(BOUNDS);
        cache.insert_weighing("a", 1, 20);
        assert_eq!(cache.size(), (1, 21));
        cache.insert_weighing("b", 2, 32);
        assert_eq!(cache.get("b"), None, "33 bytes is over the heaviest kept");
        cache.insert_weighing("c", 3, 29);
        assert_eq!(cache.size(), (2, 51));
        // 51 + 21 > 64: the least recently used goes.
        cache.insert_weighing("d", 4, 20);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.size(), (2, 51));
    }

    #[test]
    fn the_byte_bound_holds_and_long_texts_are_not_kept() {
        let cache = TextCache::new(BOUNDS);
        let long = "x".repeat(33);
        cache.insert(&long, 0);
        assert_eq!(cache.get(&long), None);
        for i in 0..50 {
            cache.insert(&format!("{i:02}{}", "y".repeat(28)), i);
            assert!(cache.size().1 <= BOUNDS.bytes, "{:?}", cache.size());
        }
        assert_eq!(cache.size(), (2, 60));
    }
}
