//! RAG state. Each collection's RAG settings (embedder, policy, generator) are its `rag`
//! label, replicated with it. The human-review queue and per-tenant daily token usage are
//! records written through the host's write path ([`Host::write`]): on a cluster a budget holds
//! for all nodes together (reserve and settle are log entries, checked in log order) and any
//! node shows and decides any review. Data written by earlier versions to the node-local `app`
//! space is moved into the replicated records once, at start.
use std::sync::Arc;

use quiver_storage::{AuxSpace, AuxStore, Mutation};

use crate::error::{Error, Result};
use crate::host::Host;
use crate::types::{
    Decision, Page, Policy, RagConfig, Retrieval, Review, ReviewQuery, ReviewStatus, Verdict,
};

/// Durable RAG state.
#[derive(Debug, Clone)]
pub struct RagState {
    host: Arc<dyn Host>,
    /// The node-local `app` space (settings and state of earlier versions).
    store: AuxStore,
}

/// The collection label holding its RAG settings (replicated and dropped with it).
pub const RAG_LABEL: &str = "rag";

#[derive(serde::Serialize, serde::Deserialize)]
struct RagLabel {
    embedder: String,
    policy: i32,
    #[serde(default)]
    generator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retrieval: Option<Retrieval>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    rerank: String,
}

/// A collection's settings as its `rag` label value (the policy as its protocol number, as
/// earlier versions stored it).
pub fn config_label(c: &RagConfig) -> String {
    serde_json::to_string(&RagLabel {
        embedder: c.embedder.clone(),
        policy: match c.policy {
            Policy::AllowHosted => 1,
            Policy::LocalOnly => 2,
        },
        generator: c.generator.clone(),
        retrieval: c.retrieval,
        rerank: c.rerank.clone(),
    })
    .unwrap_or_default()
}

fn policy_of(n: i32) -> Policy {
    if n == 2 {
        Policy::LocalOnly
    } else {
        Policy::AllowHosted
    }
}

/// An earlier version's settings record in the `app` space (protobuf `RagConfig`: field 1
/// embedder, 2 policy, 3 generator), decoded by hand: the crate knows no protobuf, and this is
/// the only such record it still reads.
fn legacy_config(b: &[u8]) -> Option<RagConfig> {
    let mut out = RagConfig::default();
    let mut i = 0;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while i < b.len() {
        let tag = varint(&mut i)?;
        match (tag >> 3, tag & 7) {
            (2, 0) => out.policy = policy_of(i32::try_from(varint(&mut i)?).ok()?),
            (f @ (1 | 3), 2) => {
                let len = usize::try_from(varint(&mut i)?).ok()?;
                let s = std::str::from_utf8(b.get(i..i.checked_add(len)?)?).ok()?;
                i += len;
                if f == 1 {
                    out.embedder = s.to_owned();
                } else {
                    out.generator = s.to_owned();
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

fn config_key(uid: u64) -> Vec<u8> {
    let mut k = b"coll/".to_vec();
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

const REVIEWS: &str = "rag/review/";

fn review_key(id: &str) -> String {
    format!("{REVIEWS}{id}")
}

fn usage_key(tenant: &str, day: u64) -> String {
    format!("rag/usage/{tenant}/{day}")
}

fn encode(item: &Review) -> Result<Vec<u8>> {
    serde_json::to_vec(item).map_err(|e| Error::Internal(format!("review item {}: {e}", item.id)))
}

impl RagState {
    /// State written through `host`; `store` is the engine's node-local `app` space.
    pub fn new(host: Arc<dyn Host>, store: AuxStore) -> Self {
        RagState { host, store }
    }

    /// Today's UTC day number, by the host's clock.
    fn today(&self) -> u64 {
        self.host.now_ms() / 86_400_000
    }

    /// A stored item: JSON, or an earlier version's encoding the host can read.
    fn decode(&self, id: &str, b: &[u8]) -> Result<Review> {
        serde_json::from_slice(b)
            .ok()
            .or_else(|| self.host.legacy_review(b))
            .ok_or_else(|| Error::Internal(format!("review item {id} is corrupt")))
    }

    /// A collection's settings: its `rag` label, else (data written before settings moved into
    /// the catalog) the `app` keyspace, else defaults.
    pub fn config(&self, c: &quiver_storage::Collection) -> Result<RagConfig> {
        if let Some(label) = c.label(RAG_LABEL) {
            let l: RagLabel = serde_json::from_str(&label).map_err(|e| {
                Error::Internal(format!(
                    "RAG settings of collection {}: {e}",
                    c.config().name
                ))
            })?;
            return Ok(RagConfig {
                embedder: l.embedder,
                policy: policy_of(l.policy),
                generator: l.generator,
                retrieval: l.retrieval,
                rerank: l.rerank,
            });
        }
        let uid = c.uid();
        Ok(match self.store.get(AuxSpace::App, &config_key(uid))? {
            Some(b) => legacy_config(&b).ok_or_else(|| {
                Error::Internal(format!("RAG settings of collection {uid} are corrupt"))
            })?,
            None => RagConfig {
                embedder: "builtin".into(),
                ..RagConfig::default()
            },
        })
    }

    /// Queues an item for review; returns its id (time-ordered, random in its low bits so
    /// ids from different nodes do not collide).
    pub async fn queue_review(&self, mut item: Review) -> Result<String> {
        item.status = ReviewStatus::Pending;
        for _ in 0..4 {
            item.created_ms = self.host.now_ms();
            item.id = format!("{:012x}{:08x}", item.created_ms, rand::random::<u32>());
            let put = Mutation::CasRecord {
                key: review_key(&item.id),
                expect: None,
                value: Some(encode(&item)?),
            };
            match self.host.write(put).await {
                Ok(_) => return Ok(item.id),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal("could not pick a free review id".into()))
    }

    /// One review item. One queued on another node a moment ago is found too (a miss waits
    /// for this node to catch up, then looks again).
    pub async fn review(&self, id: &str) -> Result<Review> {
        self.review_bytes(id)
            .await
            .and_then(|b| self.decode(id, &b))
    }

    async fn review_bytes(&self, id: &str) -> Result<Vec<u8>> {
        check_id("id", id)?;
        let engine = self.host.engine()?;
        if let Some(b) = engine.record(&review_key(id))? {
            return Ok(b);
        }
        self.host.barrier().await?;
        engine
            .record(&review_key(id))?
            .ok_or_else(|| Error::NotFound(format!("no review item {id}")))
    }

    /// A page of review items, oldest first. Blocking.
    pub fn reviews(&self, q: &ReviewQuery) -> Result<Page<Review>> {
        let limit = match q.limit {
            0 => 100,
            n if n > 10_000 => return Err(Error::bad("limit", format!("{n} exceeds 10000"))),
            n => n as usize,
        };
        if !q.after_id.is_empty() {
            check_id("after_id", &q.after_id)?;
        }
        let engine = self.host.engine()?;
        let mut after = (!q.after_id.is_empty()).then(|| review_key(&q.after_id));
        let mut out = Page::default();
        loop {
            let page = engine.records(REVIEWS, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let done = page.len() < 512;
            for (k, v) in page {
                let item = self.decode(&k, &v)?;
                if q.status.is_some_and(|s| s != item.status)
                    || (!q.collection.is_empty() && item.collection != q.collection)
                {
                    continue;
                }
                out.items.push(item);
                if out.items.len() == limit {
                    out.next_after_id = out.items[limit - 1].id.clone();
                    return Ok(out);
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Approves, rejects or edits a pending item, on any node: the decision is a
    /// compare-and-set over the pending item, so of two concurrent decisions one wins and the
    /// other is told the item was already decided.
    pub async fn decide(&self, r: &Decision) -> Result<Review> {
        let before = self.review_bytes(&r.id).await?;
        let mut item = self.decode(&r.id, &before)?;
        if item.status != ReviewStatus::Pending {
            return Err(already_decided(&item));
        }
        match r.verdict {
            Verdict::Approve => {
                item.status = ReviewStatus::Approved;
                item.answer = item.draft.clone();
            }
            Verdict::Edit => {
                if r.answer.trim().is_empty() {
                    return Err(Error::bad("answer", "an edit needs the corrected answer"));
                }
                item.status = ReviewStatus::Approved;
                item.answer = r.answer.clone();
            }
            Verdict::Reject => {
                item.status = ReviewStatus::Rejected;
            }
        }
        item.decided_ms = self.host.now_ms();
        item.reviewer = r.reviewer.clone();
        item.note = r.note.clone();
        let cas = Mutation::CasRecord {
            key: review_key(&item.id),
            expect: Some(before),
            value: Some(encode(&item)?),
        };
        match self.host.write(cas).await {
            Ok(_) => Ok(item),
            Err(e) if e.is_conflict() => {
                let now = self.review(&r.id).await?;
                Err(already_decided(&now))
            }
            Err(e) => Err(e),
        }
    }

    /// Tokens `tenant` used today, cluster-wide (as applied on this node).
    pub fn used(&self, tenant: &str) -> Result<u64> {
        Ok(self
            .host
            .engine()?
            .counter(&usage_key(tenant, self.today()))?)
    }

    /// Adds tokens to `tenant`'s usage today; returns the new total.
    pub async fn add_usage(&self, tenant: &str, n: u64) -> Result<u64> {
        add(
            self.host.as_ref(),
            usage_key(tenant, self.today()),
            tokens(n),
        )
        .await
    }

    /// Checks `need` tokens against `tenant`'s daily `budget` and takes them in one step, a
    /// log entry checked in log order: concurrent requests on any nodes cannot all pass the
    /// check and overspend. The reservation is settled with what the call really used, or
    /// given back if dropped.
    pub async fn reserve(&self, tenant: &str, need: u64, budget: u64) -> Result<Reservation> {
        let key = usage_key(tenant, self.today());
        let take = Mutation::AddCounter {
            key: key.clone(),
            delta: tokens(need),
            ceiling: Some(budget),
        };
        match self.host.write(take).await {
            Ok(_) => Ok(Reservation {
                host: Arc::clone(&self.host),
                key,
                tokens: need,
            }),
            Err(e) if e.is_over_ceiling() => {
                metrics::counter!("quiver_rag_budget_refusals_total").increment(1);
                let used = self.host.engine()?.counter(&key)?;
                Err(Error::TooLarge(format!(
                    "token budget exhausted: tenant {tenant} used {used} of {budget} tokens today (UTC, across the cluster, including requests in flight); this request needs up to {need}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Moves review items and today's token usage that an earlier version kept node-locally
    /// into the replicated records, then removes the local copies.
    pub async fn migrate_local(&self) -> Result<usize> {
        let mut moved = 0;
        // Each page's keys are deleted once moved, so the next page starts at the front again.
        loop {
            let page = self
                .store
                .scan(AuxSpace::App, b"review/", None, 1000, false)?;
            if page.is_empty() {
                break;
            }
            for (k, v) in page {
                let put = Mutation::CasRecord {
                    key: format!("rag/{}", String::from_utf8_lossy(&k)),
                    expect: None,
                    value: Some(v),
                };
                match self.host.write(put).await {
                    Ok(_) => moved += 1,
                    Err(e) if e.is_conflict() => {} // moved before a crash
                    Err(e) => return Err(e),
                }
                self.store.delete(AuxSpace::App, &k)?;
            }
        }
        let today = format!("/{}", self.today());
        loop {
            let page = self
                .store
                .scan(AuxSpace::App, b"usage/", None, 1000, false)?;
            if page.is_empty() {
                break;
            }
            for (k, v) in page {
                let key = String::from_utf8_lossy(&k).into_owned();
                let n = v.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
                if key.ends_with(&today) && n > 0 {
                    add(self.host.as_ref(), format!("rag/{key}"), tokens(n)).await?;
                    moved += 1;
                }
                self.store.delete(AuxSpace::App, &k)?;
            }
        }
        Ok(moved)
    }
}

/// Refuses anything but a review id's shape (hex, at most 64) before it becomes a key.
fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::bad(field, "is not a review id"));
    }
    Ok(())
}

/// Tokens as a counter delta (saturating: token counts never come near `i64::MAX`).
fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn already_decided(item: &Review) -> Error {
    Error::Precondition(format!(
        "review item {} was already decided ({})",
        item.id,
        item.status.name()
    ))
}

async fn add(host: &dyn Host, key: String, delta: i64) -> Result<u64> {
    let m = Mutation::AddCounter {
        key,
        delta,
        ceiling: None,
    };
    Ok(host.write(m).await?.count)
}

/// Tokens taken from a budget by [`RagState::reserve`].
#[derive(Debug)]
pub struct Reservation {
    host: Arc<dyn Host>,
    key: String,
    tokens: u64,
}

impl Reservation {
    /// Replaces the reservation with the tokens really used; returns the day's total.
    pub async fn settle(mut self, used: u64) -> Result<u64> {
        let held = std::mem::take(&mut self.tokens);
        let delta = i128::from(used) - i128::from(held);
        let delta = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
        add(self.host.as_ref(), self.key.clone(), delta).await
    }
}

impl Drop for Reservation {
    /// An abandoned call (an error, a cancelled request) gives its tokens back, in the
    /// background.
    fn drop(&mut self) {
        if self.tokens == 0 {
            return;
        }
        let (host, key) = (Arc::clone(&self.host), std::mem::take(&mut self.key));
        let delta = -tokens(self.tokens);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = add(host.as_ref(), key, delta).await {
                        tracing::warn!(error = %e, "cannot return a token reservation");
                    }
                });
            }
            Err(_) => tracing::warn!("no runtime to return a token reservation on"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use quiver_storage::Engine;

    use crate::host::Direct;

    fn state(dir: &std::path::Path) -> (Arc<Engine>, RagState) {
        let e = Arc::new(Engine::open(dir, Default::default()).expect("engine"));
        let st = RagState::new(Arc::new(Direct::new(Arc::clone(&e))), e.aux());
        (e, st)
    }

    fn decide(id: &str, verdict: Verdict, answer: &str) -> Decision {
        Decision {
            id: id.to_owned(),
            verdict,
            answer: answer.to_owned(),
            reviewer: String::new(),
            note: String::new(),
        }
    }

    #[test]
    fn an_earlier_versions_settings_record_decodes() {
        // protobuf RagConfig { embedder: "local", policy: LOCAL_ONLY, generator: "g" }
        let b = [
            0x0a, 5, b'l', b'o', b'c', b'a', b'l', 0x10, 2, 0x1a, 1, b'g',
        ];
        let c = legacy_config(&b).expect("decodes");
        assert_eq!(c.embedder, "local");
        assert_eq!(c.policy, Policy::LocalOnly);
        assert_eq!(c.generator, "g");
        assert!(
            legacy_config(&[0x0a, 200]).is_none(),
            "a length past the end"
        );
    }

    #[tokio::test]
    async fn budget_reservations_are_atomic_and_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_e, st) = state(dir.path());
        let a = st.reserve("t", 60, 100).await.expect("first fits");
        // The second would fit against what was *used*, but not against what is reserved.
        let e = st.reserve("t", 60, 100).await.expect_err("over budget");
        assert!(e.to_string().contains("used 60 of 100"), "{e}");
        assert_eq!(a.settle(30).await.expect("settle"), 30);
        let b = st.reserve("t", 60, 100).await.expect("fits after settling");
        drop(b); // an abandoned call gives its reservation back, in the background
        for _ in 0..100 {
            if st.used("t").expect("used") == 30 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(st.used("t").expect("used"), 30);
    }

    #[tokio::test]
    async fn review_lifecycle_and_usage_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id;
        {
            let (e, s) = state(dir.path());
            id = s
                .queue_review(Review {
                    question: "q".into(),
                    draft: "d".into(),
                    ..Default::default()
                })
                .await
                .expect("queue");
            s.add_usage("acme", 10).await.expect("usage");
            assert_eq!(s.add_usage("acme", 5).await.expect("usage"), 15);
            drop(s);
            e.close().expect("close");
        }
        let (_e, s) = state(dir.path());
        assert_eq!(s.used("acme").expect("used"), 15);
        assert_eq!(s.used("other").expect("used"), 0);
        let pending = s
            .reviews(&ReviewQuery {
                status: Some(ReviewStatus::Pending),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(pending.items.len(), 1);
        let edited = s
            .decide(&decide(&id, Verdict::Edit, "better"))
            .await
            .expect("edit");
        assert_eq!(edited.answer, "better");
        assert_eq!(edited.status, ReviewStatus::Approved);
        let again = s.decide(&decide(&id, Verdict::Reject, "")).await;
        assert!(matches!(again, Err(Error::Precondition(_))), "{again:?}");
        assert!(matches!(s.review("abc").await, Err(Error::NotFound(_))));
        // Ids and paging cursors become keys: only a review id's shape gets that far.
        assert!(matches!(
            s.review("../x").await,
            Err(Error::BadRequest { .. })
        ));
        let page = s.reviews(&ReviewQuery {
            after_id: "z".repeat(100_000),
            ..Default::default()
        });
        assert!(
            matches!(&page, Err(Error::BadRequest { field, .. }) if field == "after_id"),
            "{page:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_decisions_on_one_item_leave_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_e, s) = state(dir.path());
        let id = s
            .queue_review(Review {
                draft: "d".into(),
                ..Default::default()
            })
            .await
            .expect("queue");
        let spawn = |v: Verdict| {
            let (s, d) = (s.clone(), decide(&id, v, ""));
            tokio::spawn(async move { s.decide(&d).await })
        };
        let (a, b) = (spawn(Verdict::Approve), spawn(Verdict::Reject));
        let (a, b) = (a.await.expect("join"), b.await.expect("join"));
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let winner = a.or(b).expect("one decision");
        assert_eq!(s.review(&id).await.expect("read").status, winner.status);
    }

    #[tokio::test]
    async fn an_earlier_versions_local_state_moves_into_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (e, s) = state(dir.path());
        let item = Review {
            id: "0000000000aa000001".into(),
            draft: "old".into(),
            status: ReviewStatus::Pending,
            ..Default::default()
        };
        let aux = e.aux();
        aux.put(
            AuxSpace::App,
            vec![
                (
                    b"review/0000000000aa000001".to_vec(),
                    serde_json::to_vec(&item).expect("json"),
                ),
                (
                    format!("usage/acme/{}", s.today()).into_bytes(),
                    42u64.to_le_bytes().to_vec(),
                ),
                (b"usage/acme/3".to_vec(), 7u64.to_le_bytes().to_vec()),
            ],
            true,
        )
        .expect("legacy");
        assert_eq!(s.migrate_local().await.expect("migrate"), 2);
        assert_eq!(s.used("acme").expect("used"), 42);
        assert_eq!(s.review(&item.id).await.expect("moved").draft, "old");
        assert!(
            aux.scan(AuxSpace::App, b"usage/", None, 10, false)
                .expect("scan")
                .is_empty()
        );
        assert_eq!(s.migrate_local().await.expect("again"), 0, "moved once");
    }
}
