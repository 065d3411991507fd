//! Per-user limit overrides: an admin raises or lowers one user's limits, or changes their
//! mode, until a set instant. An override replaces what it names of the user type's policy.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{AuditAction, AuditEntry, Enforcement, Limits, Policy, UserId};

/// The largest limit an override may set: far above any real day, far below an overflow.
pub const MAX_OVERRIDE_LIMIT: i64 = 1_000_000_000_000;

/// The longest reason kept.
pub const MAX_REASON_CHARS: usize = 500;

/// `token_limit_overrides/{userId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOverride {
    pub user_id: UserId,
    pub daily_limit: i64,
    /// `None`: the user type's monthly cap still applies.
    pub monthly_limit: Option<i64>,
    /// `None`: the user type's mode still applies.
    pub enforcement: Option<Enforcement>,
    pub expires_at: DateTime<Utc>,
    pub reason: String,
    /// The admin who set it.
    pub set_by: UserId,
    pub set_at: DateTime<Utc>,
}

impl LimitOverride {
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    /// `base` with what this override names in its place.
    pub fn applied_to(&self, base: Policy) -> Policy {
        Policy {
            daily_limit: self.daily_limit,
            monthly_limit: self.monthly_limit.or(base.monthly_limit),
            enforcement: self.enforcement.unwrap_or(base.enforcement),
        }
    }
}

impl LimitOverride {
    /// As the audit trail shows it.
    pub fn audit_json(&self) -> Value {
        let time = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Millis, true);
        json!({
            "userId": self.user_id.as_str(),
            "dailyLimit": self.daily_limit,
            "monthlyLimit": self.monthly_limit,
            "enforcement": self.enforcement.map(Enforcement::as_str),
            "expiresAt": time(self.expires_at),
            "reason": self.reason,
            "setBy": self.set_by.as_str(),
            "setAt": time(self.set_at),
        })
    }
}

/// An admin setting or removing one user's override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideChange {
    pub user_id: UserId,
    /// `None` removes it.
    pub to: Option<LimitOverride>,
    pub actor: UserId,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
}

impl OverrideChange {
    /// The entry of the audit trail that records this change, made in place of `before`.
    pub fn audit(&self, before: Option<&LimitOverride>) -> AuditEntry {
        AuditEntry {
            id: AuditEntry::new_id(self.at),
            at: self.at,
            actor: self.actor.clone(),
            action: match self.to {
                Some(_) => AuditAction::OverrideSet,
                None => AuditAction::OverrideRemoved,
            },
            user_id: Some(self.user_id.clone()),
            before: before.map(LimitOverride::audit_json),
            after: self.to.as_ref().map(LimitOverride::audit_json),
            idempotency_key: self.idempotency_key.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The limits of every user type for one user: the configured ones, under their override while
/// it is active at `now`.
pub fn limits_for(limits: Limits, found: Option<&LimitOverride>, now: DateTime<Utc>) -> Limits {
    match found.filter(|found| found.active_at(now)) {
        Some(found) => Limits {
            trial: found.applied_to(limits.trial),
            subscribed: found.applied_to(limits.subscribed),
        },
        None => limits,
    }
}

/// What an admin asks for; checked against the rules before it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRequest {
    pub daily_limit: i64,
    pub monthly_limit: Option<i64>,
    pub enforcement: Option<Enforcement>,
    /// `None`: as far ahead as allowed.
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// Why an override cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOverride {
    #[error("{field} must be an integer from 0 to {MAX_OVERRIDE_LIMIT}")]
    Limit { field: &'static str },
    #[error("expiresAt must be in the future and at most {max_days} days ahead")]
    Expiry { max_days: i64 },
    #[error("reason must be 1 to {MAX_REASON_CHARS} characters")]
    Reason,
}

impl OverrideRequest {
    /// The override this request sets for `user_id`, by `admin` at `now`, expiring at most
    /// `horizon` ahead.
    pub fn into_override(
        self,
        user_id: UserId,
        admin: UserId,
        now: DateTime<Utc>,
        horizon: Duration,
    ) -> Result<LimitOverride, InvalidOverride> {
        let in_range = |limit: i64| (0..=MAX_OVERRIDE_LIMIT).contains(&limit);
        if !in_range(self.daily_limit) {
            return Err(InvalidOverride::Limit {
                field: "dailyLimit",
            });
        }
        if self.monthly_limit.is_some_and(|limit| !in_range(limit)) {
            return Err(InvalidOverride::Limit {
                field: "monthlyLimit",
            });
        }
        let latest = now + horizon;
        let expires_at = self.expires_at.unwrap_or(latest);
        if expires_at <= now || expires_at > latest {
            return Err(InvalidOverride::Expiry {
                max_days: horizon.num_days(),
            });
        }
        let reason = self.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(InvalidOverride::Reason);
        }
        Ok(LimitOverride {
            user_id,
            daily_limit: self.daily_limit,
            monthly_limit: self.monthly_limit,
            enforcement: self.enforcement,
            expires_at,
            reason: reason.to_owned(),
            set_by: admin,
            set_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn ask(daily_limit: i64, expires_at: Option<&str>) -> OverrideRequest {
        OverrideRequest {
            daily_limit,
            monthly_limit: None,
            enforcement: None,
            expires_at: expires_at.map(at),
            reason: " support ticket 7 ".to_owned(),
        }
    }

    #[test]
    fn an_override_replaces_what_it_names_until_it_expires() {
        let now = at("2026-01-10T00:00:00Z");
        let found = ask(50_000, Some("2026-01-17T00:00:00Z"))
            .into_override(user("alice"), user("support"), now, Duration::days(90))
            .unwrap();
        assert_eq!(found.reason, "support ticket 7");
        let configured = Limits {
            trial: Policy {
                monthly_limit: Some(200_000),
                ..Policy::daily(10_000)
            },
            subscribed: Policy {
                enforcement: Enforcement::Shadow,
                ..Policy::daily(100_000)
            },
        };
        let applied = limits_for(configured, Some(&found), now);
        assert_eq!(
            applied.trial,
            Policy {
                monthly_limit: Some(200_000),
                ..Policy::daily(50_000)
            }
        );
        assert_eq!(applied.subscribed.enforcement, Enforcement::Shadow);
        assert_eq!(applied.subscribed.daily_limit, 50_000);
        // At the instant it expires the configured limits are back.
        assert_eq!(
            limits_for(configured, Some(&found), at("2026-01-17T00:00:00Z")),
            configured
        );
    }

    #[test]
    fn an_override_must_be_bounded_and_explained() {
        let now = at("2026-01-10T00:00:00Z");
        let set = |request: OverrideRequest| {
            request.into_override(user("alice"), user("support"), now, Duration::days(30))
        };
        assert_eq!(
            set(ask(-1, None)),
            Err(InvalidOverride::Limit {
                field: "dailyLimit"
            })
        );
        let past = set(ask(1, Some("2026-01-10T00:00:00Z")));
        assert_eq!(past, Err(InvalidOverride::Expiry { max_days: 30 }));
        assert!(set(ask(1, Some("2026-02-09T00:00:00Z"))).is_ok());
        assert!(set(ask(1, Some("2026-02-09T00:00:01Z"))).is_err());
        assert_eq!(
            set(ask(1, None)).unwrap().expires_at,
            at("2026-02-09T00:00:00Z")
        );
        let mut unexplained = ask(1, None);
        unexplained.reason = "  ".to_owned();
        assert_eq!(set(unexplained), Err(InvalidOverride::Reason));
        let mut capped = ask(1, None);
        capped.monthly_limit = Some(MAX_OVERRIDE_LIMIT + 1);
        assert!(set(capped).is_err());
    }
}
