//! Reservations: tokens held for a reply still being streamed, then settled by what it spent.
//!
//! The holds live in the day document they count against (its `reservations` map), so that a
//! decision stays one read and one conditional write of that document. A hold stops counting
//! at `expiresAt` without any job; its entry is dropped by the next write of that day.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

/// How long a settled entry is remembered, so that a retried commit or release replays.
pub const SETTLED_MEMORY: Duration = Duration::minutes(10);

/// The most entries a day may keep at once: bounds the document (about 150 bytes each).
pub const MAX_ENTRIES_PER_DAY: usize = 1_000;

/// A reservation's id: `{yyyymmdd}-{expiresAt as Unix seconds}-{random}`. It names the day
/// whose document holds it, so a commit after midnight finds it, and its expiry, so a commit
/// long after the entry is gone still answers "expired". The expiry is a whole second, rounded
/// up from the one asked for, so that a hold lasts at least its ttl.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    text: String,
    date: NaiveDate,
    expires_at: DateTime<Utc>,
}

/// A string that no reservation could have as its id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no reservation has this id")]
pub struct UnknownReservationId;

impl ReservationId {
    const RANDOM_CHARS: usize = 16;

    /// A fresh id for a hold made on `date` that expires at `expires_at`, or at the next whole
    /// second when that is not one.
    pub fn new(date: NaiveDate, expires_at: DateTime<Utc>) -> Self {
        let expires_at = next_whole_second(expires_at);
        let random = uuid::Uuid::new_v4().simple().to_string();
        let text = format!(
            "{}-{}-{}",
            date.format("%Y%m%d"),
            expires_at.timestamp(),
            &random[..Self::RANDOM_CHARS]
        );
        Self {
            text,
            date,
            expires_at,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, UnknownReservationId> {
        let mut parts = raw.splitn(3, '-');
        let (Some(date), Some(expires), Some(random)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(UnknownReservationId);
        };
        let random_ok = random.len() == Self::RANDOM_CHARS
            && random
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let date = (date.len() == 8)
            .then(|| NaiveDate::parse_from_str(date, "%Y%m%d").ok())
            .flatten();
        let expires_at = expires
            .parse::<i64>()
            .ok()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0));
        match (date, expires_at, random_ok) {
            (Some(date), Some(expires_at), true) => Ok(Self {
                text: raw.to_owned(),
                date,
                expires_at,
            }),
            _ => Err(UnknownReservationId),
        }
    }

    /// The day, in `RESET_TIMEZONE`, whose document holds the reservation.
    pub fn date(&self) -> NaiveDate {
        self.date
    }

    /// When the hold stops counting, to the second.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Until when a commit may still settle it: `grace` after its expiry. An id is the
    /// client's text, so its expiry may be the last instant there is, and this then saturates.
    pub fn settleable_until(&self, grace: Duration) -> DateTime<Utc> {
        saturating_after(self.expires_at, grace)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Expiry is kept to the second, as the id carries it: rounded up, never down, so that a hold
/// never ends before it was asked to.
fn next_whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    let truncated = at.trunc_subsecs(0);
    if truncated == at {
        return at;
    }
    truncated
        .checked_add_signed(Duration::seconds(1))
        .unwrap_or(truncated)
}

/// `at + by`, or the last instant there is when that is later still.
fn saturating_after(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    at.checked_add_signed(by)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// How a reservation ended, if it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The reply's tokens were recorded.
    Committed {
        committed_tokens: i64,
        settled_at: DateTime<Utc>,
    },
    /// Given back unspent.
    Released { settled_at: DateTime<Utc> },
}

/// One reservation as its day document keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredEntry", into = "StoredEntry")]
pub struct ReservationEntry {
    /// The estimate held.
    pub tokens: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `None` while it holds (or until it is dropped, once expired).
    pub settlement: Option<Settlement>,
}

/// The stored fields of an entry: `status` always, the settlement's fields when settled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredEntry {
    pub tokens: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<DateTime<Utc>>,
}

impl TryFrom<StoredEntry> for ReservationEntry {
    type Error = String;

    /// Refuses an entry whose fields contradict its status or each other.
    fn try_from(stored: StoredEntry) -> Result<Self, String> {
        if stored.tokens < 1 {
            return Err(format!("tokens is {}, not at least 1", stored.tokens));
        }
        if stored.expires_at <= stored.created_at {
            return Err("expiresAt is not after createdAt".to_owned());
        }
        let settlement = match (
            stored.status.as_str(),
            stored.committed_tokens,
            stored.settled_at,
        ) {
            ("held", None, None) => None,
            ("committed", Some(committed_tokens), Some(settled_at)) if committed_tokens >= 1 => {
                Some(Settlement::Committed {
                    committed_tokens,
                    settled_at,
                })
            }
            ("released", None, Some(settled_at)) => Some(Settlement::Released { settled_at }),
            (status, ..) => {
                return Err(format!(
                    "status {status:?} does not fit its fields (held: neither committedTokens \
                     nor settledAt; committed: both, committedTokens at least 1; released: \
                     settledAt only)"
                ));
            }
        };
        Ok(Self {
            tokens: stored.tokens,
            created_at: stored.created_at,
            expires_at: stored.expires_at,
            settlement,
        })
    }
}

impl From<ReservationEntry> for StoredEntry {
    fn from(entry: ReservationEntry) -> Self {
        let (status, committed_tokens, settled_at) = match entry.settlement {
            None => ("held", None, None),
            Some(Settlement::Committed {
                committed_tokens,
                settled_at,
            }) => ("committed", Some(committed_tokens), Some(settled_at)),
            Some(Settlement::Released { settled_at }) => ("released", None, Some(settled_at)),
        };
        Self {
            tokens: entry.tokens,
            created_at: entry.created_at,
            expires_at: entry.expires_at,
            status: status.to_owned(),
            committed_tokens,
            settled_at,
        }
    }
}

impl ReservationEntry {
    /// Whether its estimate counts against the limit at `now`.
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.settlement.is_none() && now < self.expires_at
    }

    /// From when the entry can be dropped: a hold once no commit can reach it any more, a
    /// settled entry once its retries are no longer expected. Saturates, as stored times may be
    /// as late as a timestamp goes.
    pub fn forgotten_at(&self, grace: Duration) -> DateTime<Utc> {
        let dead = saturating_after(self.expires_at, grace);
        match self.settlement {
            None => dead,
            Some(
                Settlement::Committed { settled_at, .. } | Settlement::Released { settled_at },
            ) => dead.max(saturating_after(settled_at, SETTLED_MEMORY)),
        }
    }
}

/// A day's reservations, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reservations(BTreeMap<String, ReservationEntry>);

impl Reservations {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, id: &ReservationId) -> Option<&ReservationEntry> {
        self.0.get(id.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ReservationEntry)> {
        self.0.iter().map(|(id, entry)| (id.as_str(), entry))
    }

    pub fn insert(&mut self, id: &ReservationId, entry: ReservationEntry) {
        self.0.insert(id.as_str().to_owned(), entry);
    }

    /// Tokens held at `now`: the estimates of reservations neither settled nor expired.
    pub fn held_at(&self, now: DateTime<Utc>) -> i64 {
        self.0
            .values()
            .filter(|entry| entry.holds_at(now))
            .fold(0_i64, |sum, entry| sum.saturating_add(entry.tokens))
    }

    /// Without the entries that can be forgotten at `now`; also returns the holds among them
    /// that expired unsettled.
    pub fn pruned(&self, now: DateTime<Utc>, grace: Duration) -> (Self, Vec<ReservationEntry>) {
        let (kept, dropped): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .0
            .iter()
            .map(|(id, entry)| (id.clone(), *entry))
            .partition(|(_, entry)| now < entry.forgotten_at(grace));
        let expired = dropped
            .into_values()
            .filter(|entry| entry.settlement.is_none())
            .collect();
        (Self(kept), expired)
    }
}

impl FromIterator<(String, ReservationEntry)> for Reservations {
    fn from_iter<I: IntoIterator<Item = (String, ReservationEntry)>>(entries: I) -> Self {
        Self(entries.into_iter().collect())
    }
}

/// A reservation and where it stands, as answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub entry: ReservationEntry,
}

impl Reservation {
    /// Tokens committed above the estimate, when there were any.
    pub fn overage(&self) -> Option<i64> {
        match self.entry.settlement {
            Some(Settlement::Committed {
                committed_tokens, ..
            }) if committed_tokens > self.entry.tokens => {
                Some(committed_tokens - self.entry.tokens)
            }
            _ => None,
        }
    }
}

/// How long reservations last, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationRules {
    /// How long a reservation holds when the client does not say.
    pub default_ttl: Duration,
    /// The longest a client may ask for: also the longest a leaked hold can lock a user out.
    pub max_ttl: Duration,
    /// How long after `expiresAt` a commit is still accepted (the hold no longer counts).
    pub commit_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn hold(tokens: i64, expires: &str) -> ReservationEntry {
        ReservationEntry {
            tokens,
            created_at: at("2024-01-15T10:00:00Z"),
            expires_at: at(expires),
            settlement: None,
        }
    }

    #[test]
    fn an_id_names_its_day_and_expiry_and_parses_back() {
        let date = NaiveDate::from_ymd_opt(2024, 1, 15).unwrap();
        let id = ReservationId::new(date, at("2024-01-15T10:10:00Z"));
        assert!(id.as_str().starts_with("20240115-1705313400-"), "{id}");
        let parsed = ReservationId::parse(id.as_str()).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.date(), date);
        assert_eq!(parsed.expires_at(), at("2024-01-15T10:10:00Z"));
        assert_ne!(ReservationId::new(date, id.expires_at()), id);
    }

    #[test]
    fn a_hold_lasts_at_least_its_ttl() {
        let date = NaiveDate::from_ymd_opt(2024, 1, 15).unwrap();
        let now = at("2024-01-15T10:00:00.999Z");
        let id = ReservationId::new(date, now + Duration::seconds(1));
        assert_eq!(id.expires_at(), at("2024-01-15T10:00:02Z"));
        assert!(id.as_str().starts_with("20240115-1705312802-"), "{id}");
        assert_eq!(ReservationId::parse(id.as_str()).unwrap(), id);
        let to_the_second = ReservationId::new(date, at("2024-01-15T10:00:02Z"));
        assert_eq!(to_the_second.expires_at(), at("2024-01-15T10:00:02Z"));
    }

    #[test]
    fn malformed_ids_are_unknown() {
        for bad in [
            "",
            "20240115",
            "20240115-1705313400",
            "20241315-1705313400-0123456789abcdef",
            "2024115-1705313400-0123456789abcdef",
            "20240115-x-0123456789abcdef",
            "20240115-1705313400-0123456789ABCDEF",
            "20240115-1705313400-0123456789abcde",
            "20240115-1705313400-0123456789abcdef0",
            "20240115-1705313400-0123456789abcdeg",
        ] {
            assert_eq!(
                ReservationId::parse(bad),
                Err(UnknownReservationId),
                "{bad}"
            );
        }
        assert!(ReservationId::parse("20240115-1705313400-0123456789abcdef").is_ok());
    }

    #[test]
    fn a_hold_counts_until_the_instant_it_expires() {
        let reservations: Reservations = [
            ("a".to_owned(), hold(300, "2024-01-15T10:10:00Z")),
            ("b".to_owned(), hold(200, "2024-01-15T10:05:00Z")),
        ]
        .into_iter()
        .collect();
        assert_eq!(reservations.held_at(at("2024-01-15T10:04:59.999Z")), 500);
        assert_eq!(reservations.held_at(at("2024-01-15T10:05:00Z")), 300);
        assert_eq!(reservations.held_at(at("2024-01-15T10:10:00Z")), 0);
    }

    #[test]
    fn settled_entries_hold_nothing_and_are_remembered_for_retries() {
        let mut committed = hold(300, "2024-01-15T10:10:00Z");
        committed.settlement = Some(Settlement::Committed {
            committed_tokens: 250,
            settled_at: at("2024-01-15T10:09:00Z"),
        });
        let expired = hold(100, "2024-01-15T10:01:00Z");
        let reservations: Reservations = [("c".to_owned(), committed), ("e".to_owned(), expired)]
            .into_iter()
            .collect();
        assert_eq!(reservations.held_at(at("2024-01-15T10:00:30Z")), 100);

        let grace = Duration::seconds(30);
        let (kept, dropped) = reservations.pruned(at("2024-01-15T10:01:29Z"), grace);
        assert_eq!((kept.len(), dropped.len()), (2, 0));
        let (kept, dropped) = reservations.pruned(at("2024-01-15T10:01:30Z"), grace);
        assert_eq!((kept.len(), dropped), (1, vec![expired]));
        // Remembered ten minutes after its commit, past its own expiry and grace.
        let (kept, _) = reservations.pruned(at("2024-01-15T10:18:59Z"), grace);
        assert_eq!(kept.len(), 1);
        let (kept, dropped) = reservations.pruned(at("2024-01-15T10:19:00Z"), grace);
        assert!(kept.is_empty());
        assert_eq!(
            dropped,
            vec![expired],
            "a settled entry never counts as expired"
        );
    }

    #[test]
    fn entries_expiring_at_the_end_of_time_are_kept_not_overflowed() {
        let mut last = hold(300, "2024-01-15T10:10:00Z");
        last.expires_at = DateTime::<Utc>::MAX_UTC;
        let mut settled = last;
        settled.settlement = Some(Settlement::Released {
            settled_at: DateTime::<Utc>::MAX_UTC,
        });
        let reservations: Reservations = [("h".to_owned(), last), ("s".to_owned(), settled)]
            .into_iter()
            .collect();
        let (kept, dropped) =
            reservations.pruned(at("2024-01-15T10:11:00Z"), Duration::seconds(30));
        assert_eq!((kept, dropped), (reservations, vec![]));
    }

    #[test]
    fn the_stored_form_names_the_status() {
        let mut entry = hold(300, "2024-01-15T10:10:00Z");
        let held = serde_json::to_value(entry).unwrap();
        assert_eq!(held["status"], "held");
        assert_eq!(held.get("settledAt"), None);
        entry.settlement = Some(Settlement::Released {
            settled_at: at("2024-01-15T10:02:00Z"),
        });
        let released = serde_json::to_value(entry).unwrap();
        assert_eq!(released["status"], "released");
        assert_eq!(released["settledAt"], "2024-01-15T10:02:00Z");
        let back: ReservationEntry = serde_json::from_value(released.clone()).unwrap();
        assert_eq!(back, entry);
        let mut contradictory = released;
        contradictory["committedTokens"] = 5.into();
        assert!(serde_json::from_value::<ReservationEntry>(contradictory).is_err());
    }
}
