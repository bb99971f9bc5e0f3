//! RAG state kept durably in the engine's `app` column family: each collection's RAG settings
//! (embedder, policy, generator; keyed by collection uid, so a re-created collection starts
//! fresh), the human-review queue, and per-tenant daily token usage for budgets.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message;
use quiver_proto::v1 as pb;
use quiver_storage::{AuxSpace, AuxStore};

use super::audit::now_ms;
use crate::error::{ApiError, ApiResult};

/// Durable RAG state.
#[derive(Debug)]
pub struct RagState {
    store: AuxStore,
    seq: AtomicU32,
    /// Tokens used per (tenant, UTC day), loaded on first use; serialises budget updates.
    usage: Mutex<HashMap<(String, u64), u64>>,
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

fn review_key(id: &str) -> Vec<u8> {
    format!("review/{id}").into_bytes()
}

fn usage_key(tenant: &str, day: u64) -> Vec<u8> {
    format!("usage/{tenant}/{day}").into_bytes()
}

/// Today's UTC day number.
pub fn today() -> u64 {
    now_ms() / 86_400_000
}

impl RagState {
    /// State over the engine's app keyspace.
    pub fn new(store: AuxStore) -> Self {
        RagState {
            store,
            seq: AtomicU32::new(0),
            usage: Mutex::new(HashMap::new()),
        }
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

    /// Queues an item for review; returns its id (time-ordered).
    pub fn queue_review(&self, mut item: pb::ReviewItem) -> ApiResult<String> {
        item.created_ms = now_ms();
        item.id = format!(
            "{:012x}{:06x}",
            item.created_ms,
            self.seq.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
        );
        item.status = pb::ReviewStatus::Pending as i32;
        self.store.put(
            AuxSpace::App,
            vec![(review_key(&item.id), item.encode_to_vec())],
            true,
        )?;
        Ok(item.id)
    }

    /// One review item.
    pub fn review(&self, id: &str) -> ApiResult<pb::ReviewItem> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad("id", "is not a review id"));
        }
        match self.store.get(AuxSpace::App, &review_key(id))? {
            Some(b) => pb::ReviewItem::decode(b.as_slice())
                .map_err(|e| ApiError::Internal(format!("review item {id}: {e}"))),
            None => Err(ApiError::NotFound(format!("no review item {id}"))),
        }
    }

    /// A page of review items, oldest first.
    pub fn reviews(&self, q: &pb::ListReviewsRequest) -> ApiResult<pb::ListReviewsResponse> {
        let limit = match q.limit {
            0 => 100,
            n if n > 10_000 => return Err(ApiError::bad("limit", format!("{n} exceeds 10000"))),
            n => n as usize,
        };
        let mut after = (!q.after_id.is_empty()).then(|| review_key(&q.after_id));
        let mut out = pb::ListReviewsResponse::default();
        loop {
            let page = self
                .store
                .scan(AuxSpace::App, b"review/", after.as_deref(), 512, false)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let done = page.len() < 512;
            for (_, v) in page {
                let item = pb::ReviewItem::decode(v.as_slice())
                    .map_err(|e| ApiError::Internal(format!("review item: {e}")))?;
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

    /// Approves, rejects or edits a pending item.
    pub fn decide(&self, r: &pb::DecideReviewRequest) -> ApiResult<pb::ReviewItem> {
        let mut item = self.review(&r.id)?;
        let decision = pb::ReviewDecision::try_from(r.decision)
            .map_err(|_| ApiError::bad("decision", format!("unknown decision {}", r.decision)))?;
        if item.status != pb::ReviewStatus::Pending as i32 {
            return Err(ApiError::Precondition(format!(
                "review item {} was already decided ({})",
                item.id,
                pb::ReviewStatus::try_from(item.status).map_or("unknown", |s| s.as_str_name())
            )));
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
        self.store.put(
            AuxSpace::App,
            vec![(review_key(&item.id), item.encode_to_vec())],
            true,
        )?;
        Ok(item)
    }

    /// Tokens `tenant` used today.
    pub fn used(&self, tenant: &str) -> ApiResult<u64> {
        let day = today();
        let mut g = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        self.load(&mut g, tenant, day)
    }

    fn load(&self, g: &mut HashMap<(String, u64), u64>, tenant: &str, day: u64) -> ApiResult<u64> {
        if let Some(n) = g.get(&(tenant.to_owned(), day)) {
            return Ok(*n);
        }
        let n = match self.store.get(AuxSpace::App, &usage_key(tenant, day))? {
            Some(b) => u64::from_le_bytes(b.as_slice().try_into().unwrap_or([0; 8])),
            None => 0,
        };
        g.retain(|(_, d), _| *d == day);
        g.insert((tenant.to_owned(), day), n);
        Ok(n)
    }

    /// Adds tokens to `tenant`'s usage today; returns the new total.
    pub fn add_usage(&self, tenant: &str, tokens: u64) -> ApiResult<u64> {
        self.adjust(tenant, today(), i128::from(tokens))
    }

    fn adjust(&self, tenant: &str, day: u64, delta: i128) -> ApiResult<u64> {
        let mut g = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let now = i128::from(self.load(&mut g, tenant, day)?);
        let n = u64::try_from((now + delta).max(0)).unwrap_or(u64::MAX);
        g.insert((tenant.to_owned(), day), n);
        self.store.put(
            AuxSpace::App,
            vec![(usage_key(tenant, day), n.to_le_bytes().to_vec())],
            false,
        )?;
        Ok(n)
    }

    /// Checks `need` tokens against `tenant`'s daily `budget` and takes them, in one step
    /// under the usage lock: concurrent requests cannot all pass the check and overspend.
    /// The reservation is settled with what the call really used, or given back if dropped.
    pub fn reserve(&self, tenant: &str, need: u64, budget: u64) -> ApiResult<Reservation<'_>> {
        let day = today();
        {
            let mut g = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            let used = self.load(&mut g, tenant, day)?;
            if used.saturating_add(need) > budget {
                metrics::counter!("quiver_rag_budget_refusals_total").increment(1);
                return Err(ApiError::TooLarge(format!(
                    "token budget exhausted: tenant {tenant} used {used} of {budget} tokens today (UTC, including requests in flight); this request needs up to {need}"
                )));
            }
            g.insert((tenant.to_owned(), day), used + need);
        }
        Ok(Reservation {
            state: self,
            tenant: tenant.to_owned(),
            day,
            tokens: need,
        })
    }
}

/// Tokens taken from a budget by [`RagState::reserve`].
#[derive(Debug)]
pub struct Reservation<'a> {
    state: &'a RagState,
    tenant: String,
    day: u64,
    tokens: u64,
}

impl Reservation<'_> {
    /// Replaces the reservation with the tokens really used; returns the day's total.
    pub fn settle(mut self, used: u64) -> ApiResult<u64> {
        let held = std::mem::take(&mut self.tokens);
        self.state
            .adjust(&self.tenant, self.day, i128::from(used) - i128::from(held))
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.tokens > 0
            && let Err(e) = self
                .state
                .adjust(&self.tenant, self.day, -i128::from(self.tokens))
        {
            tracing::warn!(error = %e, "cannot return a token reservation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reservations_are_atomic_and_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = quiver_storage::Engine::open(dir.path(), Default::default()).expect("engine");
        let st = RagState::new(engine.aux());
        let a = st.reserve("t", 60, 100).expect("first fits");
        // The second would fit against what was *used*, but not against what is reserved.
        let e = st.reserve("t", 60, 100).expect_err("over budget");
        assert!(e.to_string().contains("in flight"), "{e}");
        assert_eq!(a.settle(30).expect("settle"), 30);
        let b = st.reserve("t", 60, 100).expect("fits after settling");
        drop(b); // an abandoned call gives its reservation back
        assert_eq!(st.used("t").expect("used"), 30);
    }

    #[test]
    fn review_lifecycle_and_usage_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id;
        {
            let e = quiver_storage::Engine::open(dir.path(), Default::default()).expect("open");
            let s = RagState::new(e.aux());
            id = s
                .queue_review(pb::ReviewItem {
                    question: "q".into(),
                    draft: "d".into(),
                    ..Default::default()
                })
                .expect("queue");
            s.add_usage("acme", 10).expect("usage");
            assert_eq!(s.add_usage("acme", 5).expect("usage"), 15);
            e.close().expect("close");
        }
        let e = quiver_storage::Engine::open(dir.path(), Default::default()).expect("open");
        let s = RagState::new(e.aux());
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
            .expect("edit");
        assert_eq!(edited.answer, "better");
        assert_eq!(edited.status, pb::ReviewStatus::Approved as i32);
        let again = s.decide(&pb::DecideReviewRequest {
            id,
            decision: pb::ReviewDecision::Reject as i32,
            ..Default::default()
        });
        assert!(matches!(again, Err(ApiError::Precondition(_))));
        assert!(matches!(s.review("abc"), Err(ApiError::NotFound(_))));
    }
}
