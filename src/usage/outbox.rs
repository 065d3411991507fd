//! The outbox: threshold events waiting for their delivery, as a store keeps them, and the
//! OUTBOX PORT through which delivery workers on any instance share them. An entry is taken
//! for one attempt by moving its next attempt past a lease, on the condition that nobody moved
//! it first: an instance that dies while delivering leaves the entry due again once the lease
//! ends, and no two instances deliver it at once.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{AdminAct, AuditAction, AuditEntry, StoreError, UserId};

/// How long an entry is kept once delivered or given up: Firestore's TTL policy on
/// `expiresAt` deletes it after, and `cleanup` does on SQLite.
pub const SETTLED_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// To be delivered at `next_attempt_at` (or taken for an attempt until then).
    Pending,
    Delivered,
    /// Given up after the retry period; an admin may deliver it again.
    Failed,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == raw)
    }
}

/// One event in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: String,
    pub event_type: String,
    pub user_id: UserId,
    /// The event's JSON as written with the usage: the bytes every sink is sent.
    pub payload: String,
    pub status: OutboxStatus,
    /// Attempts taken so far.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// Whence the retry period counts: the event, or the admin's latest redelivery.
    pub retry_since: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// The sinks that have it already: a retry skips them.
    pub delivered_to: BTreeSet<String>,
    pub last_error: Option<String>,
    /// The entry's version as read, which a conditional change names.
    pub version: String,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// Every sink has it: `delivered_to`.
    Delivered { delivered_to: BTreeSet<String> },
    /// Some sink failed: try again at `at`; `delivered_to` are those that have it.
    Retry {
        at: DateTime<Utc>,
        delivered_to: BTreeSet<String>,
        error: String,
    },
    /// The retry period is over.
    Failed {
        delivered_to: BTreeSet<String>,
        error: String,
    },
}

/// The entries not yet delivered nor given up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub count: u64,
    /// When the oldest of them was raised.
    pub oldest: Option<DateTime<Utc>>,
}

/// The fields an outcome sets on its entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled<'a> {
    pub status: OutboxStatus,
    pub next_attempt_at: DateTime<Utc>,
    /// `None` leaves them as they are.
    pub delivered_to: Option<&'a BTreeSet<String>>,
    /// `None` leaves it as it is: a delivered entry keeps the failure it was retried after.
    pub last_error: Option<&'a str>,
    /// When a delivered or failed entry may be deleted; `None` while it is pending.
    pub expires_at: Option<DateTime<Utc>>,
}

impl DeliveryOutcome {
    /// The entry's fields once this outcome is recorded at `now`.
    pub fn settled(&self, now: DateTime<Utc>) -> Settled<'_> {
        let kept_until = Some(now + SETTLED_RETENTION);
        match self {
            Self::Delivered { delivered_to } => Settled {
                status: OutboxStatus::Delivered,
                next_attempt_at: now,
                delivered_to: Some(delivered_to),
                last_error: None,
                expires_at: kept_until,
            },
            Self::Retry {
                at,
                delivered_to,
                error,
            } => Settled {
                status: OutboxStatus::Pending,
                next_attempt_at: *at,
                delivered_to: Some(delivered_to),
                last_error: Some(error),
                expires_at: None,
            },
            Self::Failed {
                delivered_to,
                error,
            } => Settled {
                status: OutboxStatus::Failed,
                next_attempt_at: now,
                delivered_to: Some(delivered_to),
                last_error: Some(error),
                expires_at: kept_until,
            },
        }
    }
}

/// Where a listing of one status resumes: after this entry, in the order of `created_at`
/// and then id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

impl OutboxEntry {
    pub fn cursor(&self) -> OutboxCursor {
        OutboxCursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }

    /// The entry as a claim until `until` leaves it: one attempt more, taken until then and
    /// due again after, if its outcome is not recorded.
    pub fn claimed(&self, until: DateTime<Utc>) -> Self {
        Self {
            attempts: self.attempts + 1,
            next_attempt_at: until,
            ..self.clone()
        }
    }

    /// The entry as an admin's redelivery leaves it: pending at once, its retry period
    /// counting from now, the sinks that have it skipped as before.
    pub fn redelivered(&self, now: DateTime<Utc>) -> Self {
        Self {
            status: OutboxStatus::Pending,
            next_attempt_at: now,
            retry_since: now,
            ..self.clone()
        }
    }

    /// The audit entry of an admin's redelivery of this entry, as it was before.
    pub fn redelivery_audit(&self, act: &AdminAct, now: DateTime<Utc>) -> AuditEntry {
        let state = |entry: &Self| {
            serde_json::json!({
                "eventId": entry.id,
                "status": entry.status.as_str(),
                "attempts": entry.attempts,
                "lastError": entry.last_error,
            })
        };
        AuditEntry {
            id: AuditEntry::new_id(now),
            at: now,
            actor: act.actor.clone(),
            action: AuditAction::NotificationRedelivered,
            user_id: Some(self.user_id.clone()),
            before: Some(state(self)),
            after: Some(state(&self.redelivered(now))),
            idempotency_key: act.idempotency_key.clone(),
            reason: act.reason.clone(),
        }
    }
}

/// What an admin's redelivery came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Redelivery {
    /// The entry was delivered or failed, and is pending again: audited.
    Queued(OutboxEntry),
    /// The entry is pending already, on its way: nothing changed.
    AlreadyPending(OutboxEntry),
    NotFound,
}

#[async_trait]
pub trait Outbox: Send + Sync {
    /// How many entries are pending, and the oldest's age.
    async fn pending(&self) -> Result<Pending, StoreError>;

    /// Pending entries whose next attempt is due at `now`, the longest due first, at most
    /// `limit`.
    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Takes `entry` for one attempt until `until`, if it is still as read: the taken entry
    /// (one attempt more, its new version), or `None` when another instance took it first.
    async fn claim(
        &self,
        entry: &OutboxEntry,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError>;

    /// Records what the attempt on a `claimed` entry came to, if it is still as claimed;
    /// `false` when the claim was lost (its lease ended and another instance took it).
    async fn settle(
        &self,
        claimed: &OutboxEntry,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit + 1` entries of `status`, oldest first, after `after`.
    async fn entries(
        &self,
        status: OutboxStatus,
        after: Option<&OutboxCursor>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Makes a delivered or failed entry pending again (see [`OutboxEntry::redelivered`]) and
    /// appends its [`OutboxEntry::redelivery_audit`], in one commit: both or neither.
    async fn redeliver(
        &self,
        id: &str,
        act: &AdminAct,
        now: DateTime<Utc>,
    ) -> Result<Redelivery, StoreError>;
}
