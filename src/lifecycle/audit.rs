//! The audit trail of the lifecycle commands that write: each commit of theirs carries one
//! entry naming who ran the command, why, and the documents the commit changed.

use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::store::{Change, Condition, Document, DocumentWrite};
use crate::usage::{AuditAction, AuditEntry, UserId};

/// Who runs a command that writes, and why, as its audit entries say.
#[derive(Debug, Clone, Args)]
pub struct Operator {
    /// The uid (or any name that is one) the audit trail names as the actor.
    #[arg(
        long = "actor",
        env = "AUDIT_ACTOR",
        default_value = "lifecycle",
        value_parser = |raw: &str| UserId::parse(raw).map_err(|e| e.to_string())
    )]
    pub actor: UserId,
    /// Why the command runs, for the audit trail (at most 500 characters).
    #[arg(long, env = "AUDIT_REASON", value_parser = reason)]
    pub reason: Option<String>,
}

const MAX_REASON_CHARS: usize = 500;

fn reason(raw: &str) -> Result<String, String> {
    match raw.chars().count() {
        1..=MAX_REASON_CHARS => Ok(raw.to_owned()),
        _ => Err(format!("a reason has 1 to {MAX_REASON_CHARS} characters")),
    }
}

impl Operator {
    /// The entry of one commit of `writes`: before, the documents it changed as they existed;
    /// after, the ones it wrote. Their contents stay out (an export or archive holds them).
    pub fn entry(&self, action: AuditAction, writes: &[DocumentWrite]) -> AuditEntry {
        let at = Utc::now();
        let path = |write: &DocumentWrite| format!("{}/{}", write.collection.name(), write.id);
        let existed: Vec<_> = writes
            .iter()
            .filter(|write| matches!(write.condition, Condition::Unchanged(_)))
            .map(path)
            .collect();
        let written: Vec<_> = writes
            .iter()
            .filter(|write| matches!(write.change, Change::Put(_)))
            .map(path)
            .collect();
        AuditEntry {
            id: AuditEntry::new_id(at),
            at,
            actor: self.actor.clone(),
            action,
            user_id: only_user(writes),
            before: Some(json!({ "documents": existed })),
            after: Some(json!({ "documents": written })),
            idempotency_key: None,
            reason: self.reason.clone(),
        }
    }
}

/// The one user every write is about, when the writes say so (a deletion names only an id).
fn only_user(writes: &[DocumentWrite]) -> Option<UserId> {
    let mut users = writes.iter().map(|write| match &write.change {
        Change::Put(Document::Day(day)) => Some(&day.usage.user_id),
        Change::Put(Document::Month(month)) => Some(&month.user_id),
        Change::Delete => None,
    });
    let first = users.next()??;
    users.all(|user| user == Some(first)).then(|| first.clone())
}
