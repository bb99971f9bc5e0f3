//! The exact answer cache: an answer is reused for the same question, collection, filter, k and
//! mode as long as the collection has not changed (its last LSN and id are part of the entry),
//! so a write anywhere in the collection invalidates every answer computed from it. Bounded,
//! oldest entries evicted first.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use quiver_proto::v1 as pb;

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
    pub response: pb::AskResponse,
    /// The retrieved chunks, ranked, with their text.
    pub retrieved: Vec<pb::Citation>,
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
            response: pb::AskResponse {
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
}
