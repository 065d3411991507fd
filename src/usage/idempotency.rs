//! Idempotency keys: a retried `POST /usage` or reservation answers as the first one did and
//! counts or holds once.

use chrono::{DateTime, Duration, Utc};

use super::{Reservation, Standing, Tokens, UserId, UserType};

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, scoped to one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// How long a key is remembered.
    pub const LIFETIME: Duration = Duration::hours(24);

    pub fn parse(raw: &str) -> Result<Self, InvalidIdempotencyKey> {
        let visible = raw.bytes().all(|b| b.is_ascii_graphic());
        if raw.is_empty() || raw.len() > 255 || !visible {
            return Err(InvalidIdempotencyKey);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What makes two requests "the same body": the user counted, the tokens asked for, and the
/// user type when the caller stated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(user_id: &UserId, tokens: Tokens, stated_type: Option<UserType>) -> Self {
        let tokens = tokens.get();
        Self(match stated_type {
            None => format!("tokens={tokens};userId={user_id}"),
            Some(user_type) => format!("tokens={tokens};userId={user_id};userType={user_type}"),
        })
    }

    /// A reservation's body: a key used for `POST /usage` never matches it.
    pub fn of_reservation(
        user_id: &UserId,
        tokens: Tokens,
        ttl_seconds: i64,
        stated_type: Option<UserType>,
    ) -> Self {
        let Self(usage) = Self::of(user_id, tokens, stated_type);
        Self(format!("reserve;ttlSeconds={ttl_seconds};{usage}"))
    }

    /// An admin's reset of `user_id`'s `date`, for the reason given.
    pub fn of_reset(user_id: &UserId, date: chrono::NaiveDate, reason: &str) -> Self {
        Self(format!(
            "reset;userId={user_id};date={date};reason={reason}"
        ))
    }

    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A remembered admitted request and the answer it got.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub fingerprint: Fingerprint,
    pub response: StoredAnswer,
    pub expires_at: DateTime<Utc>,
}

/// The first answer to a request with a key: what its retries get. Each store keeps it in a
/// format of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredAnswer {
    /// `POST /usage` admitted the tokens.
    Recorded(Standing),
    /// `POST /usage/reservations` held them.
    Reserved(Reservation, Standing),
}

impl StoredAnswer {
    pub fn standing(&self) -> &Standing {
        match self {
            Self::Recorded(standing) | Self::Reserved(_, standing) => standing,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyCheck {
    /// Never seen (or expired): decide and record as usual.
    New,
    /// Seen with the same body: answer as before, record nothing.
    Replay(Box<StoredAnswer>),
    /// Seen with another body: refuse.
    Reused,
}

impl IdempotencyCheck {
    pub fn of(
        stored: Option<&IdempotencyRecord>,
        fingerprint: &Fingerprint,
        now: DateTime<Utc>,
    ) -> Self {
        match stored {
            Some(record) if record.expires_at > now => {
                if record.fingerprint == *fingerprint {
                    Self::Replay(Box::new(record.response.clone()))
                } else {
                    Self::Reused
                }
            }
            _ => Self::New,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::usage::DailyUsage;

    fn tokens(n: i64) -> Tokens {
        Tokens::bounded(n, n).unwrap()
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("req-42:~!").is_ok());
        for bad in ["", " ", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_live_record_replays_or_refuses_and_an_expired_one_is_forgotten() {
        let now = DateTime::parse_from_rfc3339("2024-01-15T12:00:00Z")
            .unwrap()
            .to_utc();
        let alice = UserId::parse("alice").unwrap();
        let response = DailyUsage {
            user_id: alice.clone(),
            date: NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
            tokens_used: 10,
            token_limit: 100,
            user_type: UserType::Trial,
            last_updated: now,
            reset_at: now,
        };
        let response = StoredAnswer::Recorded(Standing {
            month: crate::usage::MonthStanding::before_months_for(&response),
            day: response,
            reserved_tokens: 0,
            enforcement: crate::usage::Enforcement::Enforce,
            exceeds: None,
        });
        let record = IdempotencyRecord {
            fingerprint: Fingerprint::of(&alice, tokens(10), None),
            response: response.clone(),
            expires_at: now + IdempotencyKey::LIFETIME,
        };
        let same = Fingerprint::of(&alice, tokens(10), None);
        let other = Fingerprint::of(&alice, tokens(11), None);
        let stated = Fingerprint::of(&alice, tokens(10), Some(UserType::Subscribed));
        let reservation = Fingerprint::of_reservation(&alice, tokens(10), 600, None);
        assert_eq!(
            IdempotencyCheck::of(Some(&record), &reservation, now),
            IdempotencyCheck::Reused
        );
        assert_eq!(
            IdempotencyCheck::of(None, &same, now),
            IdempotencyCheck::New
        );
        assert_eq!(
            IdempotencyCheck::of(Some(&record), &same, now),
            IdempotencyCheck::Replay(Box::new(response))
        );
        assert_eq!(
            IdempotencyCheck::of(Some(&record), &other, now),
            IdempotencyCheck::Reused
        );
        assert_eq!(
            IdempotencyCheck::of(Some(&record), &stated, now),
            IdempotencyCheck::Reused
        );
        let later = now + IdempotencyKey::LIFETIME;
        assert_eq!(
            IdempotencyCheck::of(Some(&record), &other, later),
            IdempotencyCheck::New
        );
    }
}
