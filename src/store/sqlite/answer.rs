//! The JSON of a remembered answer in `idempotency_keys.response`: a stored format of its own,
//! kept as it was first written, so that a change to what the API answers neither changes the
//! answers stored before it nor keeps them from being read and replayed.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::usage::{
    DailyUsage, Enforcement, LimitWindow, MonthStanding, Reservation, ReservationId, Standing,
    StoredAnswer, StoredEntry, UserId, UserType,
};

/// The day's fields, `reservedTokens` (0 when absent, as in answers stored before reservations
/// existed), the month and the mode (absent in answers stored before monthly caps: see
/// [`MonthStanding::before_months_for`]) and, for a reservation, the reservation.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerJson {
    user_id: String,
    date: NaiveDate,
    tokens_used: i64,
    token_limit: i64,
    user_type: String,
    last_updated: DateTime<Utc>,
    reset_at: DateTime<Utc>,
    #[serde(default)]
    reserved_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    month: Option<MonthJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enforcement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exceeds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reservation: Option<ReservationJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MonthJson {
    tokens_used: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<i64>,
    reset_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct ReservationJson {
    id: String,
    #[serde(flatten)]
    entry: StoredEntry,
}

/// The stored JSON of `answer`.
pub(super) fn encode(answer: &StoredAnswer) -> Result<String, serde_json::Error> {
    let (standing, reservation) = match answer {
        StoredAnswer::Recorded(standing) => (standing, None),
        StoredAnswer::Reserved(reservation, standing) => (
            standing,
            Some(ReservationJson {
                id: reservation.id.to_string(),
                entry: reservation.entry.into(),
            }),
        ),
    };
    let day = &standing.day;
    serde_json::to_string(&AnswerJson {
        user_id: day.user_id.to_string(),
        date: day.date,
        tokens_used: day.tokens_used,
        token_limit: day.token_limit,
        user_type: day.user_type.as_str().to_owned(),
        last_updated: day.last_updated,
        reset_at: day.reset_at,
        reserved_tokens: standing.reserved_tokens,
        month: Some(MonthJson {
            tokens_used: standing.month.tokens_used,
            limit: standing.month.limit,
            reset_at: standing.month.reset_at,
        }),
        enforcement: Some(standing.enforcement.as_str().to_owned()),
        exceeds: standing.exceeds.map(|window| window.as_str().to_owned()),
        reservation,
    })
}

/// The answer stored as `json`, or why it cannot be read.
pub(super) fn decode(json: &str) -> Result<StoredAnswer, String> {
    let stored: AnswerJson = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let day = DailyUsage {
        user_id: UserId::parse(&stored.user_id)
            .map_err(|e| format!("userId {:?}: {e}", stored.user_id))?,
        date: stored.date,
        tokens_used: stored.tokens_used,
        token_limit: stored.token_limit,
        user_type: UserType::parse(&stored.user_type)
            .ok_or_else(|| format!("userType {:?} is not a user type", stored.user_type))?,
        last_updated: stored.last_updated,
        reset_at: stored.reset_at,
    };
    let standing = Standing {
        month: match stored.month {
            Some(month) => MonthStanding {
                tokens_used: month.tokens_used,
                limit: month.limit,
                reset_at: month.reset_at,
            },
            None => MonthStanding::before_months_for(&day),
        },
        enforcement: match stored.enforcement {
            Some(mode) => mode
                .parse()
                .map_err(|e: crate::usage::UnknownEnforcement| e.to_string())?,
            None => Enforcement::Enforce,
        },
        exceeds: match stored.exceeds {
            Some(window) => Some(
                LimitWindow::parse(&window)
                    .ok_or_else(|| format!("exceeds {window:?} is not a window"))?,
            ),
            None => None,
        },
        day,
        reserved_tokens: stored.reserved_tokens,
    };
    Ok(match stored.reservation {
        None => StoredAnswer::Recorded(standing),
        Some(ReservationJson { id, entry }) => {
            let id = ReservationId::parse(&id).map_err(|e| format!("reservation {id:?}: {e}"))?;
            StoredAnswer::Reserved(
                Reservation {
                    id,
                    entry: entry.try_into()?,
                },
                standing,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::ReservationEntry;

    /// Answers as this store writes them since monthly caps exist: every one must be read,
    /// and written again, to the byte, whatever the API's answers look like.
    const RECORDED: &str = r#"{"userId":"alice","date":"2024-01-15","tokensUsed":1250,"tokenLimit":10000,"userType":"subscribed","lastUpdated":"2024-01-15T14:30:00.250Z","resetAt":"2024-01-16T00:00:00Z","reservedTokens":300,"month":{"tokensUsed":9000,"limit":50000,"resetAt":"2024-02-01T00:00:00Z"},"enforcement":"shadow","exceeds":"monthly"}"#;
    const RESERVED: &str = r#"{"userId":"alice","date":"2024-01-15","tokensUsed":1250,"tokenLimit":10000,"userType":"subscribed","lastUpdated":"2024-01-15T14:30:00.250Z","resetAt":"2024-01-16T00:00:00Z","reservedTokens":300,"month":{"tokensUsed":9000,"limit":50000,"resetAt":"2024-02-01T00:00:00Z"},"enforcement":"shadow","exceeds":"monthly","reservation":{"id":"20240115-1705329600-0123456789abcdef","tokens":300,"createdAt":"2024-01-15T14:30:00.250Z","expiresAt":"2024-01-15T14:40:00Z","status":"held"}}"#;
    /// Answers as this store wrote them from reservations until monthly caps.
    const BEFORE_MONTHS: &str = r#"{"userId":"alice","date":"2024-01-15","tokensUsed":1250,"tokenLimit":10000,"userType":"subscribed","lastUpdated":"2024-01-15T14:30:00.250Z","resetAt":"2024-01-16T00:00:00Z","reservedTokens":300}"#;
    /// An answer stored before reservations existed.
    const BEFORE_RESERVATIONS: &str = r#"{"userId":"alice","date":"2024-01-15","tokensUsed":1250,"tokenLimit":10000,"userType":"subscribed","lastUpdated":"2024-01-15T14:30:00.250Z","resetAt":"2024-01-16T00:00:00Z"}"#;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    /// The day of the golden answers, as remembered before answers showed the month.
    fn standing(reserved_tokens: i64) -> Standing {
        let day = DailyUsage {
            user_id: UserId::parse("alice").unwrap(),
            date: "2024-01-15".parse().unwrap(),
            tokens_used: 1250,
            token_limit: 10000,
            user_type: UserType::Subscribed,
            last_updated: at("2024-01-15T14:30:00.250Z"),
            reset_at: at("2024-01-16T00:00:00Z"),
        };
        Standing {
            month: MonthStanding::before_months_for(&day),
            day,
            reserved_tokens,
            enforcement: Enforcement::Enforce,
            exceeds: None,
        }
    }

    /// The day of the golden answers, with the month and a mode.
    fn standing_with_month() -> Standing {
        Standing {
            month: MonthStanding {
                tokens_used: 9000,
                limit: Some(50_000),
                reset_at: at("2024-02-01T00:00:00Z"),
            },
            enforcement: Enforcement::Shadow,
            exceeds: Some(LimitWindow::Monthly),
            ..standing(300)
        }
    }

    #[test]
    fn stored_answers_read_back_and_are_written_again_to_the_byte() {
        let recorded = StoredAnswer::Recorded(standing_with_month());
        let reserved = StoredAnswer::Reserved(
            Reservation {
                id: ReservationId::parse("20240115-1705329600-0123456789abcdef").unwrap(),
                entry: ReservationEntry {
                    tokens: 300,
                    created_at: at("2024-01-15T14:30:00.250Z"),
                    expires_at: at("2024-01-15T14:40:00Z"),
                    settlement: None,
                },
            },
            standing_with_month(),
        );
        for (json, answer) in [(RECORDED, recorded), (RESERVED, reserved)] {
            assert_eq!(decode(json).unwrap(), answer);
            assert_eq!(encode(&answer).unwrap(), json);
        }
    }

    #[test]
    fn an_answer_from_before_months_shows_the_day_as_its_month() {
        let answer = decode(BEFORE_MONTHS).unwrap();
        assert_eq!(answer, StoredAnswer::Recorded(standing(300)));
        assert_eq!(answer.standing().month.tokens_used, 1250);
    }

    #[test]
    fn an_answer_from_before_reservations_holds_nothing() {
        assert_eq!(
            decode(BEFORE_RESERVATIONS).unwrap(),
            StoredAnswer::Recorded(standing(0))
        );
    }

    #[test]
    fn an_answer_that_names_no_user_type_is_refused() {
        let unknown = RECORDED.replace("subscribed", "platinum");
        assert!(decode(&unknown).unwrap_err().contains("platinum"));
    }
}
