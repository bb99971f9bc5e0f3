//! `quiver review ...`: the human-review queue of answers asked with `--mode review`: list,
//! show, approve, reject, edit, and an export of approved answers for fine-tuning.
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Client, ClientError, pb};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::common::open_out;

/// Which review items.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Waiting for a decision.
    Pending,
    /// Approved (as generated or edited).
    Approved,
    /// Rejected.
    Rejected,
    /// Every item.
    All,
}

/// `quiver review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCmd {
    /// List review items.
    List {
        /// Which items.
        #[arg(long, value_enum, default_value = "pending")]
        status: StatusArg,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one item (with the prompt the model saw).
    Show {
        /// Item id.
        id: String,
    },
    /// Approve the draft answer.
    Approve {
        /// Item id.
        id: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Reject the draft answer.
    Reject {
        /// Item id.
        id: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Approve with a corrected answer.
    Edit {
        /// Item id.
        id: String,
        /// The corrected answer.
        #[arg(long)]
        answer: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Write approved items as chat-format JSONL for fine-tuning:
    /// {"messages": [{"role": "system", ..}, {"role": "user", ..}, {"role": "assistant", ..}]}.
    Export {
        /// Output file (- = stdout).
        #[arg(long, short)]
        output: PathBuf,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
    },
}

/// Who decided, and why.
#[derive(Debug, clap::Args)]
pub struct Reviewer {
    /// Reviewer name (default: $USER).
    #[arg(long, env = "USER", default_value = "")]
    reviewer: String,
    /// A note kept with the decision.
    #[arg(long, default_value = "")]
    note: String,
}

/// A review item as JSON.
fn review_json(i: &pb::ReviewItem) -> Value {
    json!({
        "id": i.id, "collection": i.collection, "question": i.question, "draft": i.draft,
        "answer": i.answer,
        "status": pb::ReviewStatus::try_from(i.status).map_or("unknown", |s| s.as_str_name()),
        "citations": i.citations.iter().map(|c| json!({"document_id": c.document_id, "chunk_id": c.chunk_id, "score": c.score})).collect::<Vec<_>>(),
        "flags": i.flags, "created_ms": i.created_ms, "decided_ms": i.decided_ms,
        "reviewer": i.reviewer, "note": i.note, "request_id": i.request_id,
        "prompt": i.prompt.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
    })
}

/// Every review item matching `status` and `collection`.
async fn all_reviews(
    client: &mut Client,
    status: i32,
    collection: Option<String>,
) -> Result<Vec<pb::ReviewItem>> {
    let mut req = pb::ListReviewsRequest {
        status,
        collection: collection.unwrap_or_default(),
        limit: 1000,
        after_id: String::new(),
    };
    let mut items = Vec::new();
    loop {
        let r = client
            .rag
            .list_reviews(req.clone())
            .await
            .map_err(ClientError::from)?
            .into_inner();
        items.extend(r.items);
        if r.next_after_id.is_empty() {
            return Ok(items);
        }
        req.after_id = r.next_after_id;
    }
}

/// Runs a `quiver review` command.
pub async fn run(client: &mut Client, cmd: ReviewCmd) -> Result<()> {
    match cmd {
        ReviewCmd::List {
            status,
            collection,
            json,
        } => list(client, status, collection, json).await,
        ReviewCmd::Show { id } => {
            let i = client
                .rag
                .get_review(pb::GetReviewRequest { id })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            println!("{}", review_json(&i));
            Ok(())
        }
        ReviewCmd::Export { output, collection } => export(client, &output, collection).await,
        ReviewCmd::Approve { id, by } => {
            decide(client, id, pb::ReviewDecision::Approve, String::new(), by).await
        }
        ReviewCmd::Reject { id, by } => {
            decide(client, id, pb::ReviewDecision::Reject, String::new(), by).await
        }
        ReviewCmd::Edit { id, answer, by } => {
            decide(client, id, pb::ReviewDecision::Edit, answer, by).await
        }
    }
}

/// `quiver review list`: two lines (question, answer) or a JSON object per item.
async fn list(
    client: &mut Client,
    status: StatusArg,
    collection: Option<String>,
    json: bool,
) -> Result<()> {
    let status = match status {
        StatusArg::Pending => pb::ReviewStatus::Pending,
        StatusArg::Approved => pb::ReviewStatus::Approved,
        StatusArg::Rejected => pb::ReviewStatus::Rejected,
        StatusArg::All => pb::ReviewStatus::Unspecified,
    } as i32;
    let mut out = std::io::stdout().lock();
    for i in all_reviews(client, status, collection).await? {
        if json {
            writeln!(out, "{}", review_json(&i))?;
        } else {
            let status = pb::ReviewStatus::try_from(i.status).map_or("?", |s| {
                s.as_str_name().trim_start_matches("REVIEW_STATUS_")
            });
            writeln!(
                out,
                "{} {:<8} {:<16} Q: {}",
                i.id, status, i.collection, i.question
            )?;
            writeln!(
                out,
                "    A: {}",
                if i.answer.is_empty() {
                    &i.draft
                } else {
                    &i.answer
                }
            )?;
        }
    }
    Ok(())
}

/// `quiver review export`: approved items as chat-format JSONL.
async fn export(client: &mut Client, output: &Path, collection: Option<String>) -> Result<()> {
    let items = all_reviews(client, pb::ReviewStatus::Approved as i32, collection).await?;
    let mut out = open_out(output)?;
    for i in &items {
        let mut messages: Vec<Value> = i
            .prompt
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        messages.push(json!({"role": "assistant", "content": i.answer}));
        writeln!(out, "{}", json!({"messages": messages}))?;
    }
    out.flush()?;
    eprintln!("exported {} approved answers", items.len());
    Ok(())
}

/// `quiver review approve|reject|edit`: prints the decided item.
async fn decide(
    client: &mut Client,
    id: String,
    decision: pb::ReviewDecision,
    answer: String,
    by: Reviewer,
) -> Result<()> {
    let i = client
        .rag
        .decide_review(pb::DecideReviewRequest {
            id,
            decision: decision as i32,
            answer,
            reviewer: by.reviewer,
            note: by.note,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    println!("{}", review_json(&i));
    Ok(())
}
