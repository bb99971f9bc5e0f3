//! RAG state. Each collection's RAG settings (embedder, policy, generator) are its `rag`
//! label, replicated with it. The human-review queue and per-tenant daily token usage are
//! records written through the replicated log ([`Sink`]): on a cluster a budget holds for all
//! nodes together (reserve and settle are log entries, checked in log order) and any node
//! shows and decides any review. Data written by earlier versions to the node-local `app`
//! space is moved into the replicated records once, at start.
use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use quiver_proto::v1 as pb;
use quiver_storage::{Applied, AuxSpace, AuxStore, Engine, Mutation};
use tonic::Code;

use super::audit::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::grpc::AppState;

/// Where RAG state is written and read: through the replicated log on a cluster (the server's
/// [`AppState`]), directly on one engine ([`Direct`]).
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Applies a mutation, returning once it is applied on this node.
    fn write(&self, m: Mutation) -> BoxFuture<'_, ApiResult<Applied>>;
    /// The engine, for reads.
    fn engine(&self) -> ApiResult<Arc<Engine>>;
    /// Waits until this node has applied everything committed so far (a no-op on one node).
    fn barrier(&self) -> BoxFuture<'_, ApiResult<()>>;
}

impl Sink for AppState {
    fn write(&self, m: Mutation) -> BoxFuture<'_, ApiResult<Applied>> {
        Box::pin(AppState::write(self, m))
    }
    fn engine(&self) -> ApiResult<Arc<Engine>> {
        AppState::engine(self)
    }
    fn barrier(&self) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(self.read_barrier(pb::Consistency::Leader as i32))
    }
}

/// A [`Sink`] applying to one engine directly.
#[derive(Debug, Clone)]
pub struct Direct(pub Arc<Engine>);

impl Sink for Direct {
    fn write(&self, m: Mutation) -> BoxFuture<'_, ApiResult<Applied>> {
        let e = Arc::clone(&self.0);
        Box::pin(crate::grpc::blocking(move || Ok(e.apply(m, 0)?)))
    }
    fn engine(&self) -> ApiResult<Arc<Engine>> {
        Ok(Arc::clone(&self.0))
    }
    fn barrier(&self) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Durable RAG state.
#[derive(Debug, Clone)]
pub struct RagState {
    sink: Arc<dyn Sink>,
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
}

/// A collection's settings as its `rag` label value.
pub fn config_label(c: &pb::RagConfig) -> String {
    serde_json::to_string(&RagLabel {
        embedder: c.embedder.clone(),
        policy: c.policy,
        generator: c.generator.clone(),
    })
    .unwrap_or_default()
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

/// Today's UTC day number.
pub fn today() -> u64 {
    now_ms() / 86_400_000
}

fn decode_item(id: &str, b: &[u8]) -> ApiResult<pb::ReviewItem> {
    pb::ReviewItem::decode(b).map_err(|e| ApiError::Internal(format!("review item {id}: {e}")))
}

impl RagState {
    /// State written through `sink`; `store` is the engine's node-local `app` space.
    pub fn new(sink: Arc<dyn Sink>, store: AuxStore) -> Self {
        RagState { sink, store }
    }

    /// A collection's settings: its `rag` label, else (data written before settings moved into
    /// the catalog) the `app` keyspace, else defaults.
    pub fn config(&self, c: &quiver_storage::Collection) -> ApiResult<pb::RagConfig> {
        if let Some(label) = c.label(RAG_LABEL) {
            let l: RagLabel = serde_json::from_str(&label).map_err(|e| {
                ApiError::Internal(format!(
                    "RAG settings of collection {}: {e}",
                    c.config().name
                ))
            })?;
            return Ok(pb::RagConfig {
                embedder: l.embedder,
                policy: l.policy,
                generator: l.generator,
            });
        }
        let uid = c.uid();
        Ok(match self.store.get(AuxSpace::App, &config_key(uid))? {
            Some(b) => pb::RagConfig::decode(b.as_slice()).map_err(|e| {
                ApiError::Internal(format!("RAG settings of collection {uid}: {e}"))
            })?,
            None => pb::RagConfig {
                embedder: "builtin".into(),
                policy: pb::RagPolicy::AllowHosted as i32,
                generator: String::new(),
            },
        })
    }

    /// Queues an item for review; returns its id (time-ordered, random in its low bits so
    /// ids from different nodes do not collide).
    pub async fn queue_review(&self, mut item: pb::ReviewItem) -> ApiResult<String> {
        item.status = pb::ReviewStatus::Pending as i32;
        for _ in 0..4 {
            item.created_ms = now_ms();
            item.id = format!("{:012x}{:08x}", item.created_ms, rand::random::<u32>());
            let put = Mutation::CasRecord {
                key: review_key(&item.id),
                expect: None,
                value: Some(item.encode_to_vec()),
            };
            match self.sink.write(put).await {
                Ok(_) => return Ok(item.id),
                Err(e) if e.code() == Code::Aborted => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Internal("could not pick a free review id".into()))
    }

    /// One review item. One queued on another node a moment ago is found too (a miss waits
    /// for this node to catch up, then looks again).
    pub async fn review(&self, id: &str) -> ApiResult<pb::ReviewItem> {
        self.review_bytes(id)
            .await
            .and_then(|b| decode_item(id, &b))
    }

    async fn review_bytes(&self, id: &str) -> ApiResult<Vec<u8>> {
        check_id("id", id)?;
        let engine = self.sink.engine()?;
        if let Some(b) = engine.record(&review_key(id))? {
            return Ok(b);
        }
        self.sink.barrier().await?;
        engine
            .record(&review_key(id))?
            .ok_or_else(|| ApiError::NotFound(format!("no review item {id}")))
    }

    /// A page of review items, oldest first. Blocking.
    pub fn reviews(&self, q: &pb::ListReviewsRequest) -> ApiResult<pb::ListReviewsResponse> {
        let limit = match q.limit {
            0 => 100,
            n if n > 10_000 => return Err(ApiError::bad("limit", format!("{n} exceeds 10000"))),
            n => n as usize,
        };
        if !q.after_id.is_empty() {
            check_id("after_id", &q.after_id)?;
        }
        let engine = self.sink.engine()?;
        let mut after = (!q.after_id.is_empty()).then(|| review_key(&q.after_id));
        let mut out = pb::ListReviewsResponse::default();
        loop {
            let page = engine.records(REVIEWS, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let done = page.len() < 512;
            for (k, v) in page {
                let item = decode_item(&k, &v)?;
                if (q.status != 0 && item.status != q.status)
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
    pub async fn decide(&self, r: &pb::DecideReviewRequest) -> ApiResult<pb::ReviewItem> {
        let before = self.review_bytes(&r.id).await?;
        let mut item = decode_item(&r.id, &before)?;
        let decision = pb::ReviewDecision::try_from(r.decision)
            .map_err(|_| ApiError::bad("decision", format!("unknown decision {}", r.decision)))?;
        if item.status != pb::ReviewStatus::Pending as i32 {
            return Err(already_decided(&item));
        }
        match decision {
            pb::ReviewDecision::Approve => {
                item.status = pb::ReviewStatus::Approved as i32;
                item.answer = item.draft.clone();
            }
            pb::ReviewDecision::Edit => {
                if r.answer.trim().is_empty() {
                    return Err(ApiError::bad(
                        "answer",
                        "an edit needs the corrected answer",
                    ));
                }
                item.status = pb::ReviewStatus::Approved as i32;
                item.answer = r.answer.clone();
            }
            pb::ReviewDecision::Reject => {
                item.status = pb::ReviewStatus::Rejected as i32;
            }
            pb::ReviewDecision::Unspecified => {
                return Err(ApiError::bad("decision", "approve, reject or edit"));
            }
        }
        item.decided_ms = now_ms();
        item.reviewer = r.reviewer.clone();
        item.note = r.note.clone();
        let cas = Mutation::CasRecord {
            key: review_key(&item.id),
            expect: Some(before),
            value: Some(item.encode_to_vec()),
        };
        match self.sink.write(cas).await {
            Ok(_) => Ok(item),
            Err(e) if e.code() == Code::Aborted => {
                let now = self.review(&r.id).await?;
                Err(already_decided(&now))
            }
            Err(e) => Err(e),
        }
    }

    /// Tokens `tenant` used today, cluster-wide (as applied on this node).
    pub fn used(&self, tenant: &str) -> ApiResult<u64> {
        Ok(self.sink.engine()?.counter(&usage_key(tenant, today()))?)
    }

    /// Adds tokens to `tenant`'s usage today; returns the new total.
    pub async fn add_usage(&self, tenant: &str, n: u64) -> ApiResult<u64> {
        add(self.sink.as_ref(), usage_key(tenant, today()), tokens(n)).await
    }

    /// Checks `need` tokens against `tenant`'s daily `budget` and takes them in one step, a
    /// log entry checked in log order: concurrent requests on any nodes cannot all pass the
    /// check and overspend. The reservation is settled with what the call really used, or
    /// given back if dropped.
    pub async fn reserve(&self, tenant: &str, need: u64, budget: u64) -> ApiResult<Reservation> {
        let key = usage_key(tenant, today());
        let take = Mutation::AddCounter {
            key: key.clone(),
            delta: tokens(need),
            ceiling: Some(budget),
        };
        match self.sink.write(take).await {
            Ok(_) => Ok(Reservation {
                sink: Arc::clone(&self.sink),
                key,
                tokens: need,
            }),
            Err(e) if e.code() == Code::ResourceExhausted => {
                metrics::counter!("quiver_rag_budget_refusals_total").increment(1);
                let used = self.sink.engine()?.counter(&key)?;
                Err(ApiError::TooLarge(format!(
                    "token budget exhausted: tenant {tenant} used {used} of {budget} tokens today (UTC, across the cluster, including requests in flight); this request needs up to {need}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Moves review items and today's token usage that an earlier version kept node-locally
    /// into the replicated records, then removes the local copies.
    pub async fn migrate_local(&self) -> ApiResult<usize> {
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
                match self.sink.write(put).await {
                    Ok(_) => moved += 1,
                    Err(e) if e.code() == Code::Aborted => {} // moved before a crash
                    Err(e) => return Err(e),
                }
                self.store.delete(AuxSpace::App, &k)?;
            }
        }
        let today = format!("/{}", today());
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
                    add(self.sink.as_ref(), format!("rag/{key}"), tokens(n)).await?;
                    moved += 1;
                }
                self.store.delete(AuxSpace::App, &k)?;
            }
        }
        Ok(moved)
    }
}

/// Refuses anything but a review id's shape (hex, at most 64) before it becomes a key.
fn check_id(field: &str, id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad(field, "is not a review id"));
    }
    Ok(())
}

/// Tokens as a counter delta (saturating: token counts never come near `i64::MAX`).
fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn already_decided(item: &pb::ReviewItem) -> ApiError {
    ApiError::Precondition(format!(
        "review item {} was already decided ({})",
        item.id,
        pb::ReviewStatus::try_from(item.status).map_or("unknown", |s| s.as_str_name())
    ))
}

async fn add(sink: &dyn Sink, key: String, delta: i64) -> ApiResult<u64> {
    let m = Mutation::AddCounter {
        key,
        delta,
        ceiling: None,
    };
    Ok(sink.write(m).await?.count)
}

/// Tokens taken from a budget by [`RagState::reserve`].
#[derive(Debug)]
pub struct Reservation {
    sink: Arc<dyn Sink>,
    key: String,
    tokens: u64,
}

impl Reservation {
    /// Replaces the reservation with the tokens really used; returns the day's total.
    pub async fn settle(mut self, used: u64) -> ApiResult<u64> {
        let held = std::mem::take(&mut self.tokens);
        let delta = i128::from(used) - i128::from(held);
        let delta = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
        add(self.sink.as_ref(), self.key.clone(), delta).await
    }
}

impl Drop for Reservation {
    /// An abandoned call (an error, a cancelled request) gives its tokens back, in the
    /// background.
    fn drop(&mut self) {
        if self.tokens == 0 {
            return;
        }
        let (sink, key) = (Arc::clone(&self.sink), std::mem::take(&mut self.key));
        let delta = -tokens(self.tokens);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = add(sink.as_ref(), key, delta).await {
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

    fn state(dir: &std::path::Path) -> (Arc<Engine>, RagState) {
        let e = Arc::new(Engine::open(dir, Default::default()).expect("engine"));
        let st = RagState::new(Arc::new(Direct(Arc::clone(&e))), e.aux());
        (e, st)
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
                .queue_review(pb::ReviewItem {
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
            .reviews(&pb::ListReviewsRequest {
                status: pb::ReviewStatus::Pending as i32,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(pending.items.len(), 1);
        let edited = s
            .decide(&pb::DecideReviewRequest {
                id: id.clone(),
                decision: pb::ReviewDecision::Edit as i32,
                answer: "better".into(),
                ..Default::default()
            })
            .await
            .expect("edit");
        assert_eq!(edited.answer, "better");
        assert_eq!(edited.status, pb::ReviewStatus::Approved as i32);
        let again = s
            .decide(&pb::DecideReviewRequest {
                id,
                decision: pb::ReviewDecision::Reject as i32,
                ..Default::default()
            })
            .await;
        assert!(matches!(again, Err(ApiError::Precondition(_))), "{again:?}");
        assert!(matches!(s.review("abc").await, Err(ApiError::NotFound(_))));
        // Ids and paging cursors become keys: only a review id's shape gets that far.
        assert!(matches!(
            s.review("../x").await,
            Err(ApiError::BadRequest { .. })
        ));
        let page = s.reviews(&pb::ListReviewsRequest {
            after_id: "z".repeat(100_000),
            ..Default::default()
        });
        assert!(
            matches!(&page, Err(ApiError::BadRequest { field, .. }) if field == "after_id"),
            "{page:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_decisions_on_one_item_leave_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_e, s) = state(dir.path());
        let id = s
            .queue_review(pb::ReviewItem {
                draft: "d".into(),
                ..Default::default()
            })
            .await
            .expect("queue");
        let decide = |d: pb::ReviewDecision| {
            let (s, id) = (s.clone(), id.clone());
            tokio::spawn(async move {
                s.decide(&pb::DecideReviewRequest {
                    id,
                    decision: d as i32,
                    ..Default::default()
                })
                .await
            })
        };
        let (a, b) = (
            decide(pb::ReviewDecision::Approve),
            decide(pb::ReviewDecision::Reject),
        );
        let (a, b) = (a.await.expect("join"), b.await.expect("join"));
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let winner = a.or(b).expect("one decision");
        assert_eq!(s.review(&id).await.expect("read").status, winner.status);
    }

    #[tokio::test]
    async fn an_earlier_versions_local_state_moves_into_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (e, s) = state(dir.path());
        let item = pb::ReviewItem {
            id: "0000000000aa000001".into(),
            draft: "old".into(),
            status: pb::ReviewStatus::Pending as i32,
            ..Default::default()
        };
        let aux = e.aux();
        aux.put(
            AuxSpace::App,
            vec![
                (b"review/0000000000aa000001".to_vec(), item.encode_to_vec()),
                (
                    format!("usage/acme/{}", today()).into_bytes(),
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
