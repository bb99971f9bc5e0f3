//! The `Rag` service's messages ⇄ the pipeline's types (`quiver_rag`). Enum numbers and the
//! filter are checked here, each refusal naming its field; the pipeline checks its own limits.
use quiver_proto::v1 as pb;
use quiver_rag as rag;

use crate::error::{ApiError, ApiResult};

/// An `Ask` request as a question (the consistency stays with the handler).
pub fn question(r: pb::AskRequest) -> ApiResult<rag::Question> {
    let mode = match pb::AskMode::try_from(r.mode) {
        Ok(pb::AskMode::RetrieveOnly) => rag::Mode::RetrieveOnly,
        Ok(pb::AskMode::Extractive | pb::AskMode::Unspecified) => rag::Mode::Extractive,
        Ok(pb::AskMode::Generate) => rag::Mode::Generate,
        Ok(pb::AskMode::Review) => rag::Mode::Review,
        Err(_) => return Err(ApiError::bad("mode", format!("unknown mode {}", r.mode))),
    };
    Ok(rag::Question {
        filter: super::filter(r.filter.as_ref())?,
        collection: r.collection,
        question: r.question,
        k: r.k,
        mode,
        provider: r.provider,
        max_context_tokens: r.max_context_tokens,
        max_answer_tokens: r.max_answer_tokens,
        temperature: r.temperature,
        retrieval: retrieval(&r.retrieval, "retrieval")?,
        rerank: (!r.rerank.is_empty()).then_some(r.rerank),
    })
}

/// A retrieval mode's name (`None` for "").
pub fn retrieval(s: &str, field: &str) -> ApiResult<Option<rag::Retrieval>> {
    if s.is_empty() {
        return Ok(None);
    }
    rag::Retrieval::parse(s).map(Some).ok_or_else(|| {
        ApiError::bad(
            field,
            format!("unknown retrieval {s:?}; use dense, text or hybrid"),
        )
    })
}

/// A policy number.
pub fn policy(p: i32, field: &str) -> ApiResult<rag::Policy> {
    match pb::RagPolicy::try_from(p) {
        Ok(pb::RagPolicy::AllowHosted | pb::RagPolicy::Unspecified) => Ok(rag::Policy::AllowHosted),
        Ok(pb::RagPolicy::LocalOnly) => Ok(rag::Policy::LocalOnly),
        Err(_) => Err(ApiError::bad(field, format!("unknown policy {p}"))),
    }
}

/// A collection's settings as sent.
pub fn rag_config(c: pb::RagConfig) -> ApiResult<rag::RagConfig> {
    Ok(rag::RagConfig {
        policy: policy(c.policy, "config.policy")?,
        embedder: c.embedder,
        generator: c.generator,
        retrieval: retrieval(&c.retrieval, "config.retrieval")?,
        rerank: if c.rerank == "none" {
            String::new()
        } else {
            c.rerank
        },
    })
}

/// A collection's settings as returned.
pub fn to_pb_rag_config(c: rag::RagConfig) -> pb::RagConfig {
    pb::RagConfig {
        embedder: c.embedder,
        policy: match c.policy {
            rag::Policy::AllowHosted => pb::RagPolicy::AllowHosted,
            rag::Policy::LocalOnly => pb::RagPolicy::LocalOnly,
        } as i32,
        generator: c.generator,
        retrieval: c
            .retrieval
            .unwrap_or(rag::Retrieval::Dense)
            .name()
            .to_owned(),
        rerank: c.rerank,
    }
}

/// Documents as sent.
pub fn documents(docs: Vec<pb::Document>) -> Vec<rag::Document> {
    docs.into_iter()
        .map(|d| rag::Document {
            id: d.id,
            text: d.text,
            source: d.source,
            metadata_json: d.metadata_json,
        })
        .collect()
}

/// A citation, both ways.
pub fn to_pb_citation(c: rag::Citation) -> pb::Citation {
    pb::Citation {
        document_id: c.document_id,
        chunk_id: c.chunk_id,
        score: c.score,
        source: c.source,
        text: c.text,
        flagged: c.flagged,
        dense_rank: c.dense_rank,
        text_rank: c.text_rank,
    }
}

fn citation(c: pb::Citation) -> rag::Citation {
    rag::Citation {
        document_id: c.document_id,
        chunk_id: c.chunk_id,
        score: c.score,
        source: c.source,
        text: c.text,
        flagged: c.flagged,
        dense_rank: c.dense_rank,
        text_rank: c.text_rank,
    }
}

fn to_pb_usage(u: rag::Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_prompt_tokens: u.cached_prompt_tokens,
        embedding_tokens: u.embedding_tokens,
        cost_usd: u.cost_usd,
        estimated: u.estimated,
        provider: u.provider,
        model: u.model,
        model_us: u.model_us,
        first_token_us: u.first_token_us,
    }
}

/// An answer as returned.
pub fn to_pb_answer(a: rag::Answer) -> pb::AskResponse {
    pb::AskResponse {
        answer: a.answer,
        citations: a.citations.into_iter().map(to_pb_citation).collect(),
        flags: a.flags,
        took_us: a.took_us,
        cached: a.cached,
        usage: a.usage.map(to_pb_usage),
        invalid_citations: a.invalid_citations,
        request_id: a.request_id,
        review_id: a.review_id,
        cache: a.cache,
    }
}

/// A streamed event as sent.
pub fn to_pb_event(e: rag::Event) -> pb::AskEvent {
    use pb::ask_event::Event as E;
    let event = match e {
        rag::Event::Retrieval(sources) => E::Retrieval(pb::ask_event::Retrieval {
            sources: sources.into_iter().map(to_pb_citation).collect(),
        }),
        rag::Event::Token(t) => E::Token(t),
        rag::Event::Done(a) => E::Done(to_pb_answer(*a)),
    };
    pb::AskEvent { event: Some(event) }
}

fn review_status(s: i32) -> Option<rag::ReviewStatus> {
    match pb::ReviewStatus::try_from(s).ok()? {
        pb::ReviewStatus::Pending => Some(rag::ReviewStatus::Pending),
        pb::ReviewStatus::Approved => Some(rag::ReviewStatus::Approved),
        pb::ReviewStatus::Rejected => Some(rag::ReviewStatus::Rejected),
        pb::ReviewStatus::Unspecified => None,
    }
}

fn to_pb_review_status(s: rag::ReviewStatus) -> pb::ReviewStatus {
    match s {
        rag::ReviewStatus::Pending => pb::ReviewStatus::Pending,
        rag::ReviewStatus::Approved => pb::ReviewStatus::Approved,
        rag::ReviewStatus::Rejected => pb::ReviewStatus::Rejected,
    }
}

/// A `ListReviews` request as a query.
pub fn review_query(r: pb::ListReviewsRequest) -> ApiResult<rag::ReviewQuery> {
    if pb::ReviewStatus::try_from(r.status).is_err() {
        return Err(ApiError::bad(
            "status",
            format!("unknown review status {}", r.status),
        ));
    }
    Ok(rag::ReviewQuery {
        status: review_status(r.status),
        collection: r.collection,
        limit: r.limit,
        after_id: r.after_id,
    })
}

/// A review decision as sent.
pub fn decision(r: pb::DecideReviewRequest) -> ApiResult<rag::Decision> {
    let verdict = match pb::ReviewDecision::try_from(r.decision) {
        Ok(pb::ReviewDecision::Approve) => rag::Verdict::Approve,
        Ok(pb::ReviewDecision::Reject) => rag::Verdict::Reject,
        Ok(pb::ReviewDecision::Edit) => rag::Verdict::Edit,
        Ok(pb::ReviewDecision::Unspecified) => {
            return Err(ApiError::bad("decision", "approve, reject or edit"));
        }
        Err(_) => {
            return Err(ApiError::bad(
                "decision",
                format!("unknown decision {}", r.decision),
            ));
        }
    };
    Ok(rag::Decision {
        id: r.id,
        verdict,
        answer: r.answer,
        reviewer: r.reviewer,
        note: r.note,
    })
}

/// A review item as returned.
pub fn to_pb_review(i: rag::Review) -> pb::ReviewItem {
    pb::ReviewItem {
        id: i.id,
        collection: i.collection,
        question: i.question,
        draft: i.draft,
        answer: i.answer,
        status: to_pb_review_status(i.status) as i32,
        citations: i.citations.into_iter().map(to_pb_citation).collect(),
        flags: i.flags,
        prompt: i
            .prompt
            .into_iter()
            .map(|m| pb::ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        created_ms: i.created_ms,
        decided_ms: i.decided_ms,
        reviewer: i.reviewer,
        note: i.note,
        request_id: i.request_id,
    }
}

/// A review item as an earlier version stored it (a protobuf `ReviewItem`).
pub fn legacy_review(bytes: &[u8]) -> Option<rag::Review> {
    let i = <pb::ReviewItem as prost::Message>::decode(bytes).ok()?;
    Some(rag::Review {
        status: review_status(i.status)?,
        id: i.id,
        collection: i.collection,
        question: i.question,
        draft: i.draft,
        answer: i.answer,
        citations: i.citations.into_iter().map(citation).collect(),
        flags: i.flags,
        prompt: i
            .prompt
            .into_iter()
            .map(|m| rag::ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        created_ms: i.created_ms,
        decided_ms: i.decided_ms,
        reviewer: i.reviewer,
        note: i.note,
        request_id: i.request_id,
    })
}

/// A `ListAudit` request as a query.
pub fn audit_query(r: pb::ListAuditRequest) -> rag::AuditQuery {
    rag::AuditQuery {
        since_ms: r.since_ms,
        until_ms: r.until_ms,
        limit: r.limit,
        after_id: r.after_id,
        collection: r.collection,
        operation: r.operation,
    }
}

/// Generates both directions of the audit record mapping (the fields are the same).
macro_rules! audit_fields {
    ($from:expr, $to:ident) => {{
        let r = $from;
        $to {
            id: r.id,
            request_id: r.request_id,
            time_ms: r.time_ms,
            tenant: r.tenant,
            collection: r.collection,
            operation: r.operation,
            provider: r.provider,
            model: r.model,
            prompt: r.prompt,
            output: r.output,
            latency_us: r.latency_us,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_prompt_tokens: r.cached_prompt_tokens,
            estimated: r.estimated,
            cost_usd: r.cost_usd,
            cache_hit: r.cache_hit,
            error: r.error,
            redactions: r.redactions,
            node_id: r.node_id,
        }
    }};
}

/// An audit record as returned.
pub fn to_pb_audit(r: rag::AuditRecord) -> pb::AuditRecord {
    use pb::AuditRecord as Out;
    audit_fields!(r, Out)
}

/// An audit record as an earlier version stored it (a protobuf `AuditRecord`).
pub fn legacy_audit(bytes: &[u8]) -> Option<rag::AuditRecord> {
    use rag::AuditRecord as Out;
    let r = <pb::AuditRecord as prost::Message>::decode(bytes).ok()?;
    Some(audit_fields!(r, Out))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn an_earlier_versions_review_item_reads_back() {
        let old = pb::ReviewItem {
            id: "00aa".into(),
            draft: "d".into(),
            status: pb::ReviewStatus::Approved as i32,
            prompt: vec![pb::ChatMessage {
                role: "user".into(),
                content: "q".into(),
            }],
            ..Default::default()
        };
        let got = legacy_review(&old.encode_to_vec()).expect("decodes");
        assert_eq!(got.status, rag::ReviewStatus::Approved);
        assert_eq!(got.prompt[0].content, "q");
        assert_eq!(to_pb_review(got), old, "and maps back unchanged");
        let rec = pb::AuditRecord {
            id: "01".into(),
            prompt_tokens: 7,
            node_id: 2,
            ..Default::default()
        };
        let back = to_pb_audit(legacy_audit(&rec.encode_to_vec()).expect("decodes"));
        assert_eq!(back, rec);
    }

    #[test]
    fn unknown_enum_numbers_name_their_field() {
        let e = question(pb::AskRequest {
            mode: 99,
            ..Default::default()
        })
        .expect_err("mode 99");
        assert!(e.to_string().starts_with("mode:"), "{e}");
        let e = rag_config(pb::RagConfig {
            policy: 7,
            ..Default::default()
        })
        .expect_err("policy 7");
        assert!(e.to_string().starts_with("config.policy:"), "{e}");
        let e = decision(pb::DecideReviewRequest::default()).expect_err("unspecified");
        assert!(e.to_string().starts_with("decision:"), "{e}");
    }
}
