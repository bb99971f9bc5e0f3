//! The exact answer cache: an answer is reused for the same question, collection, filter, k and
//! mode as long as the collection has not changed (its last LSN and id are part of the entry),
//! so a write anywhere in the collection invalidates every answer computed from it. Bounded,
//! oldest entries evicted first.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::types::{Answer, Citation};

/// What identifies an answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Collection id (a dropped and re-created collection gets another).
    pub uid: u64,
    /// The request, canonical: question, filter, k and mode.
    pub request: String,
}

/// An answer and every chunk retrieved for it (streamed first by `AskStream`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answered {
    /// The response.
    pub response: Answer,
    /// The retrieved chunks, ranked, with their text.
    pub retrieved: Vec<Citation>,
}

/// Answers with the LSN they were computed at, and the insertion order for eviction.
type Entries = (HashMap<Key, (u64, Answered)>, VecDeque<Key>);

/// A bounded map from requests to answers.
#[derive(Debug)]
pub struct AnswerCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

impl AnswerCache {
    /// A cache of at most `capacity` answers (0 disables it).
    pub fn new(capacity: usize) -> Self {
        AnswerCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The answer stored for `key` if the collection is still at `lsn`.
    pub fn get(&self, key: &Key, lsn: u64) -> Option<Answered> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(key)
            .filter(|(at, _)| *at == lsn)
            .map(|(_, r)| r.clone())
    }

    /// Stores an answer computed at `lsn`.
    pub fn put(&self, key: Key, lsn: u64, answer: Answered) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        if map.insert(key.clone(), (lsn, answer)).is_none() {
            order.push_back(key);
        }
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }
}

/// Answers found by question similarity: a question whose embedding is within the threshold of
/// a cached question's (same collection, unchanged since, same filter/k/mode/provider) reuses
/// its answer. Bounded; scanned linearly (a few thousand entries cost microseconds).
#[derive(Debug)]
pub struct SemanticCache {
    capacity: usize,
    inner: Mutex<VecDeque<SemanticEntry>>,
}

#[derive(Debug)]
struct SemanticEntry {
    uid: u64,
    scope: String,
    lsn: u64,
    vector: Vec<f32>,
    answer: Answered,
}

impl SemanticCache {
    /// A cache of at most `capacity` answers (0 = off).
    pub fn new(capacity: usize) -> Self {
        SemanticCache {
            capacity,
            inner: Mutex::new(VecDeque::new()),
        }
    }

    /// The most similar cached answer with similarity at least `threshold`, and its similarity.
    pub fn get(
        &self,
        uid: u64,
        scope: &str,
        lsn: u64,
        q: &[f32],
        threshold: f32,
    ) -> Option<(Answered, f32)> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|e| e.uid == uid && e.lsn == lsn && e.scope == scope)
            .map(|e| (e, e.vector.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
            .filter(|(_, s)| *s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, s)| (e.answer.clone(), s))
    }

    /// Stores an answer (`q` L2-normalised).
    pub fn put(&self, uid: u64, scope: String, lsn: u64, q: Vec<f32>, answer: Answered) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Entries for an older state of the collection can never hit again.
        g.retain(|e| e.uid != uid || e.lsn == lsn);
        g.push_back(SemanticEntry {
            uid,
            scope,
            lsn,
            vector: q,
            answer,
        });
        while g.len() > self.capacity {
            g.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_until_the_collection_changes_and_stays_bounded() {
        let c = AnswerCache::new(2);
        let k = |q: &str| Key {
            uid: 1,
            request: q.into(),
        };
        let a = Answered {
            response: Answer {
                answer: "x".into(),
                ..Default::default()
            },
            retrieved: Vec::new(),
        };
        c.put(k("q1"), 7, a.clone());
        assert_eq!(c.get(&k("q1"), 7), Some(a.clone()));
        assert_eq!(c.get(&k("q1"), 8), None, "a write invalidates");
        c.put(k("q2"), 7, a.clone());
        c.put(k("q3"), 7, a.clone());
        assert_eq!(c.get(&k("q1"), 7), None, "oldest evicted");
        assert!(c.get(&k("q3"), 7).is_some());
    }

    #[test]
    fn semantic_hits_need_similarity_same_scope_and_state() {
        let c = SemanticCache::new(8);
        let a = Answered::default();
        let n = |v: [f32; 2]| {
            let l = (v[0] * v[0] + v[1] * v[1]).sqrt();
            vec![v[0] / l, v[1] / l]
        };
        c.put(1, "s".into(), 5, n([1.0, 0.0]), a.clone());
        assert!(c.get(1, "s", 5, &n([1.0, 0.1]), 0.99).is_some());
        assert!(
            c.get(1, "s", 5, &n([1.0, 0.5]), 0.99).is_none(),
            "not similar enough"
        );
        assert!(
            c.get(1, "other", 5, &n([1.0, 0.0]), 0.9).is_none(),
            "other scope"
        );
        assert!(
            c.get(1, "s", 6, &n([1.0, 0.0]), 0.9).is_none(),
            "collection changed"
        );
        assert!(
            c.get(2, "s", 5, &n([1.0, 0.0]), 0.9).is_none(),
            "other collection"
        );
    }
}
