//! The audit store: one record per LLM or embedding call, in the engine's `audit` column family,
//! keyed by time (milliseconds, big-endian) and a sequence number so records list in order and
//! old ones are removed by one range delete. Writes are not fsynced one by one (a process crash
//! keeps them; RocksDB's WAL is flushed by the OS); retention runs at start and hourly.
//! Records are node-local (they are high-volume): each carries the id of the node that made
//! the call, and on a cluster `quiver audit list` gathers them from every node.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quiver_storage::{AuxSpace, AuxStore};

use crate::error::{Error, Result};
use crate::host::Host;
pub use crate::host::now_ms;
use crate::types::{AuditQuery, AuditRecord, Page};

/// Most records one page returns.
pub const MAX_PAGE: u32 = 10_000;

/// Appends and lists audit records.
#[derive(Debug)]
pub struct AuditLog {
    host: Arc<dyn Host>,
    store: AuxStore,
    seq: AtomicU32,
    max_text: usize,
}

fn key(time_ms: u64, seq: u32) -> Vec<u8> {
    let mut k = time_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_of(id: &str) -> Result<Vec<u8>> {
    let bad = || Error::bad("after_id", "is not an audit record id");
    if id.len() != 24 || !id.is_ascii() {
        return Err(bad());
    }
    (0..12)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// Cuts `s` to at most `max` bytes on a char boundary, saying so.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let cut = s.len() - end;
        s.truncate(end);
        s.push_str(&format!("…[{cut} bytes truncated]"));
    }
}

impl AuditLog {
    /// An audit log over the engine's node-local audit keyspace; records carry the host's node
    /// id and time.
    pub fn new(host: Arc<dyn Host>, store: AuxStore, max_text: usize) -> Self {
        AuditLog {
            host,
            store,
            seq: AtomicU32::new(0),
            max_text,
        }
    }

    /// A stored record: JSON, or an earlier version's encoding the host can read.
    fn decode(&self, k: &[u8], v: &[u8]) -> Result<AuditRecord> {
        serde_json::from_slice(v)
            .ok()
            .or_else(|| self.host.legacy_audit(v))
            .ok_or_else(|| Error::Internal(format!("audit record {} is corrupt", id_of(k))))
    }

    /// Stores a record (its id and time are set here) and returns its id.
    pub fn append(&self, mut r: AuditRecord) -> Result<String> {
        r.time_ms = self.host.now_ms();
        r.node_id = self.host.node_id();
        let k = key(r.time_ms, self.seq.fetch_add(1, Ordering::Relaxed));
        r.id = id_of(&k);
        truncate(&mut r.prompt, self.max_text);
        truncate(&mut r.output, self.max_text);
        self.store.put(
            AuxSpace::Audit,
            vec![(
                k,
                serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string()))?,
            )],
            false,
        )?;
        Ok(r.id)
    }

    /// A page of records in time order.
    pub fn list(&self, q: &AuditQuery) -> Result<Page<AuditRecord>> {
        let limit = match q.limit {
            0 => 100,
            n if n > MAX_PAGE => {
                return Err(Error::bad("limit", format!("{n} exceeds {MAX_PAGE}")));
            }
            n => n,
        } as usize;
        let until = if q.until_ms == 0 {
            u64::MAX
        } else {
            q.until_ms
        };
        let mut after = if q.after_id.is_empty() {
            q.since_ms.checked_sub(1).map(|t| key(t, u32::MAX))
        } else {
            Some(key_of(&q.after_id)?)
        };
        let mut out = Page::<AuditRecord>::default();
        // Filters are applied while paging, so a page is full unless the log ends.
        'pages: loop {
            let page = self.store.scan(
                AuxSpace::Audit,
                b"",
                after.as_deref(),
                limit.max(256),
                false,
            )?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let exhausted = page.len() < limit.max(256);
            for (k, v) in page {
                let r = self.decode(&k, &v)?;
                if r.time_ms > until {
                    break 'pages;
                }
                if (!q.collection.is_empty() && r.collection != q.collection)
                    || (!q.operation.is_empty() && r.operation != q.operation)
                {
                    continue;
                }
                out.items.push(r);
                if out.items.len() == limit {
                    out.next_after_id = id_of(&k);
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// Removes records older than `keep`; returns whether anything could have been removed.
    pub fn expire(&self, keep: Duration) -> Result<()> {
        let cutoff = self.host.now_ms().saturating_sub(keep.as_millis() as u64);
        self.store
            .delete_range(AuxSpace::Audit, &key(0, 0), &key(cutoff, 0))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One engine, as cluster node 3.
    #[derive(Debug)]
    struct Node3(crate::host::Direct);

    impl Host for Node3 {
        fn engine(&self) -> Result<Arc<quiver_storage::Engine>> {
            self.0.engine()
        }
        fn write(
            &self,
            m: quiver_storage::Mutation,
        ) -> futures::future::BoxFuture<'_, Result<quiver_storage::Applied>> {
            self.0.write(m)
        }
        fn barrier(&self) -> futures::future::BoxFuture<'_, Result<()>> {
            self.0.barrier()
        }
        fn limits(&self) -> crate::host::Limits {
            self.0.limits()
        }
        fn node_id(&self) -> u64 {
            3
        }
    }

    #[test]
    fn appends_lists_filters_pages_and_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e =
            Arc::new(quiver_storage::Engine::open(dir.path(), Default::default()).expect("open"));
        let host = Arc::new(Node3(crate::host::Direct::new(Arc::clone(&e))));
        let log = AuditLog::new(host, e.aux(), 10);
        for i in 0..5 {
            log.append(AuditRecord {
                operation: if i % 2 == 0 { "chat" } else { "embeddings" }.into(),
                collection: "c".into(),
                prompt: "x".repeat(i * 5),
                ..Default::default()
            })
            .expect("append");
        }
        let all = log.list(&AuditQuery::default()).expect("list");
        assert_eq!(all.items.len(), 5);
        assert!(
            all.items.iter().all(|r| r.node_id == 3),
            "records name their node"
        );
        assert!(all.items.windows(2).all(|w| w[0].id < w[1].id));
        assert!(all.items[4].prompt.starts_with("xxxxxxxxxx…[10 bytes"));
        let chats = log
            .list(&AuditQuery {
                operation: "chat".into(),
                limit: 2,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(chats.items.len(), 2);
        let rest = log
            .list(&AuditQuery {
                operation: "chat".into(),
                after_id: chats.next_after_id.clone(),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(rest.items.len(), 1);
        assert!(
            log.list(&AuditQuery {
                after_id: "zz".into(),
                ..Default::default()
            })
            .is_err()
        );
        log.expire(Duration::ZERO).expect("expire");
        std::thread::sleep(Duration::from_millis(2));
        log.expire(Duration::ZERO).expect("expire");
        assert!(
            log.list(&AuditQuery::default())
                .expect("list")
                .items
                .is_empty()
        );
    }
}
