//! Idempotency keys: a retried `POST /usage` or reservation answers as the first one did and
//! counts or holds once.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{
    DailyUsage, Reservation, ReservationEntry, ReservationId, Standing, Tokens, UserId, UserType,
};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The first answer to a request with a key: what its retries get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AnswerJson", into = "AnswerJson")]
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

/// The stored JSON of an answer: the day's fields, `reservedTokens` (0 when absent, as in
/// answers stored before reservations existed) and, for a reservation, the reservation.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerJson {
    #[serde(flatten)]
    day: DailyUsage,
    #[serde(default)]
    reserved_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reservation: Option<ReservationJson>,
}

#[derive(Serialize, Deserialize)]
struct ReservationJson {
    id: String,
    #[serde(flatten)]
    entry: ReservationEntry,
}

impl TryFrom<AnswerJson> for StoredAnswer {
    type Error = String;

    fn try_from(json: AnswerJson) -> Result<Self, String> {
        let standing = Standing {
            day: json.day,
            reserved_tokens: json.reserved_tokens,
        };
        Ok(match json.reservation {
            None => Self::Recorded(standing),
            Some(ReservationJson { id, entry }) => {
                let id = ReservationId::parse(&id).map_err(|e| format!("{id:?}: {e}"))?;
                Self::Reserved(Reservation { id, entry }, standing)
            }
        })
    }
}

impl From<StoredAnswer> for AnswerJson {
    fn from(answer: StoredAnswer) -> Self {
        let (standing, reservation) = match answer {
            StoredAnswer::Recorded(standing) => (standing, None),
            StoredAnswer::Reserved(Reservation { id, entry }, standing) => (
                standing,
                Some(ReservationJson {
                    id: id.to_string(),
                    entry,
                }),
            ),
        };
        Self {
            day: standing.day,
            reserved_tokens: standing.reserved_tokens,
            reservation,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyCheck {
    /// Never seen (or expired): decide and record as usual.
    New,
    /// Seen with the same body: answer as before, record nothing.
    Replay(StoredAnswer),
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
                    Self::Replay(record.response.clone())
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
            day: response,
            reserved_tokens: 0,
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
            IdempotencyCheck::Replay(response)
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

    #[test]
    fn stored_answers_round_trip_and_older_ones_still_read() {
        let older = serde_json::json!({
            "userId": "alice", "date": "2024-01-15", "tokensUsed": 10, "tokenLimit": 100,
            "userType": "trial", "lastUpdated": "2024-01-15T12:00:00Z",
            "resetAt": "2024-01-16T00:00:00Z",
        });
        let StoredAnswer::Recorded(standing) = serde_json::from_value(older).unwrap() else {
            panic!("a reservation was read")
        };
        assert_eq!(
            (standing.day.tokens_used, standing.reserved_tokens),
            (10, 0)
        );

        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let id = ReservationId::new(standing.day.date, at("2024-01-15T12:10:00Z"));
        let reserved = StoredAnswer::Reserved(
            Reservation {
                id,
                entry: ReservationEntry {
                    tokens: 300,
                    created_at: at("2024-01-15T12:00:00Z"),
                    expires_at: at("2024-01-15T12:10:00Z"),
                    settlement: None,
                },
            },
            Standing {
                reserved_tokens: 300,
                ..standing
            },
        );
        let json = serde_json::to_string(&reserved).unwrap();
        assert_eq!(
            serde_json::from_str::<StoredAnswer>(&json).unwrap(),
            reserved
        );
    }
}
