//! The validation checks, pure: what a document must satisfy on its own, and how a day must
//! agree with its month. `verify` reports them; `import` refuses a line that fails them.

use chrono::Datelike;

use super::store::{Document, Stored};
use crate::usage::{
    DailyUsage, EVENT_TYPES, MAX_ENTRIES_PER_DAY, MonthFigures, MonthlyUsage, OutboxEntry,
    OutboxStatus, ReservationId, StoredDay, month_dates,
};

/// Everything wrong with one decoded document stored under `id`; empty when it is sound.
pub fn problems(id: &str, document: &Document) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = document.expected_id();
    if id != expected {
        problems.push(format!("the id should be {expected:?} by its fields"));
    }
    match document {
        Document::Day(day) => day_problems(day, &mut problems),
        Document::Month(month) => month_problems(month, &mut problems),
    }
    problems
}

/// Everything wrong with one decoded outbox entry: its body must be the event it names, of a
/// known type and of its user, and its bookkeeping must agree with its status.
pub fn outbox_problems(entry: &OutboxEntry) -> Vec<String> {
    let mut problems = Vec::new();
    if !EVENT_TYPES.contains(&entry.event_type.as_str()) {
        problems.push(format!("eventType {:?} is no event type", entry.event_type));
    }
    if !entry.id.starts_with(&format!("{}_", entry.user_id)) {
        problems.push(format!("the id should start with {}_", entry.user_id));
    }
    match serde_json::from_str::<serde_json::Value>(&entry.payload) {
        Err(error) => problems.push(format!("payload is not JSON: {error}")),
        Ok(event) => {
            for (field, pointer, expected) in [
                ("type", "/type", entry.event_type.as_str()),
                ("data.eventId", "/data/eventId", entry.id.as_str()),
                ("data.userId", "/data/userId", entry.user_id.as_str()),
            ] {
                match event.pointer(pointer).and_then(serde_json::Value::as_str) {
                    Some(found) if found == expected => {}
                    Some(found) => problems.push(format!(
                        "payload's {field} is {found:?}, but the entry's is {expected:?}"
                    )),
                    None => problems.push(format!("payload has no {field}")),
                }
            }
        }
    }
    if entry.status == OutboxStatus::Delivered && entry.delivered_to.is_empty() {
        problems.push("delivered, but deliveredTo names no sink".to_owned());
    }
    if entry.status != OutboxStatus::Pending && entry.attempts == 0 {
        problems.push(format!("{} without any attempt", entry.status.as_str()));
    }
    if entry.retry_since < entry.created_at {
        problems.push("retrySince is before createdAt".to_owned());
    }
    problems
}

fn day_problems(stored: &StoredDay, problems: &mut Vec<String>) {
    let day = &stored.usage;
    if day.tokens_used < 0 {
        problems.push(format!("tokensUsed is negative ({})", day.tokens_used));
    }
    if day.token_limit < 0 {
        problems.push(format!("tokenLimit is negative ({})", day.token_limit));
    }
    reservation_problems(stored, problems);
}

/// Each entry's own form is checked as it decodes; here, how the entries fit their day: an id
/// that names the day and the entry's expiry, and no more entries than a day may keep.
fn reservation_problems(stored: &StoredDay, problems: &mut Vec<String>) {
    let count = stored.reservations.len();
    if count > MAX_ENTRIES_PER_DAY {
        problems.push(format!(
            "reservations has {count} entries, more than the {MAX_ENTRIES_PER_DAY} a day keeps"
        ));
    }
    for (id, entry) in stored.reservations.iter() {
        match ReservationId::parse(id) {
            Err(_) => problems.push(format!(
                "reservations has {id:?}, which is no reservation id"
            )),
            Ok(parsed) if parsed.date() != stored.usage.date => problems.push(format!(
                "reservations.{id} names {} but the day is {}",
                parsed.date(),
                stored.usage.date
            )),
            Ok(parsed) if parsed.expires_at() != entry.expires_at => problems.push(format!(
                "reservations.{id} expires at {} but its id says {}",
                entry.expires_at,
                parsed.expires_at()
            )),
            Ok(_) => {}
        }
    }
}

fn month_problems(month: &MonthlyUsage, problems: &mut Vec<String>) {
    let Some((_, last)) = month_dates(month.year, month.month) else {
        problems.push(format!(
            "year {} month {} is no month",
            month.year, month.month
        ));
        return;
    };
    let days_in_month = last.day();
    let mut days = Vec::new();
    for (key, tokens) in &month.daily_usage {
        match key.parse::<u32>() {
            Ok(day) if key.len() == 2 && (1..=days_in_month).contains(&day) => days.push(day),
            _ => problems.push(format!(
                "dailyUsage has {key:?}, which is no day of the month"
            )),
        }
        if *tokens < 0 {
            problems.push(format!("dailyUsage.{key} is negative ({tokens})"));
        }
    }
    if let (Some(first), Some(last)) = (days.first(), days.last())
        && days.len() as u32 != last - first + 1
    {
        problems.push(format!(
            "dailyUsage skips days between {first:02} and {last:02} (each is 0 if unused)"
        ));
    }
    let Some(figures) = MonthFigures::of(&month.daily_usage) else {
        problems.push("the dailyUsage total does not fit in a 64-bit integer".to_owned());
        return;
    };
    if month.total_monthly_tokens != figures.total {
        problems.push(format!(
            "totalMonthlyTokens is {} but dailyUsage sums to {}",
            month.total_monthly_tokens, figures.total
        ));
    }
    let tolerance = 1e-9 * figures.average.abs().max(1.0);
    if (month.average_daily_usage - figures.average).abs() > tolerance {
        problems.push(format!(
            "averageDailyUsage is {} but dailyUsage averages {}",
            month.average_daily_usage, figures.average
        ));
    }
    if (month.peak_usage_date.as_str(), month.peak_usage_tokens)
        != (figures.peak_date.as_str(), figures.peak_tokens)
    {
        problems.push(format!(
            "the peak is {:?} with {} but dailyUsage peaks on {:?} with {}",
            month.peak_usage_date, month.peak_usage_tokens, figures.peak_date, figures.peak_tokens
        ));
    }
}

/// How a day document disagrees with its month document (`None` when it has none), if it does.
/// A day without tokens (it only held reservations) needs no month entry.
pub fn day_against_month(day: &DailyUsage, month: Option<&MonthlyUsage>) -> Option<String> {
    let month_id = day.month_document_id();
    let key = day.date.format("%d").to_string();
    match month.map(|month| month.daily_usage.get(&key)) {
        None | Some(None) if day.tokens_used == 0 => None,
        None => Some(format!("its month {month_id} does not exist")),
        Some(None) => Some(format!("its month {month_id} has no dailyUsage.{key}")),
        Some(Some(&tokens)) if tokens != day.tokens_used => Some(format!(
            "tokensUsed is {} but its month {month_id} has dailyUsage.{key} = {tokens}",
            day.tokens_used
        )),
        Some(Some(_)) => None,
    }
}

/// A month as found: a month that does not decode is its own finding, not its days'.
pub enum StoredMonth {
    Missing,
    Unreadable,
    Found(MonthlyUsage),
}

impl StoredMonth {
    pub fn of(stored: Option<&Stored>) -> Self {
        match stored.map(|stored| &stored.content) {
            None => Self::Missing,
            Some(Ok(Document::Month(month))) => Self::Found(month.clone()),
            Some(_) => Self::Unreadable,
        }
    }

    /// How `day` disagrees with this month, unless the month cannot be read.
    pub fn disagreement(&self, day: &DailyUsage) -> Option<String> {
        match self {
            Self::Missing => day_against_month(day, None),
            Self::Unreadable => None,
            Self::Found(month) => day_against_month(day, Some(month)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::usage::{UserId, UserType};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn month(entries: &[(&str, i64)]) -> MonthlyUsage {
        let daily_usage: BTreeMap<String, i64> =
            entries.iter().map(|(d, t)| (d.to_string(), *t)).collect();
        let figures = MonthFigures::of(&daily_usage).unwrap();
        MonthlyUsage {
            user_id: UserId::parse("alice").unwrap(),
            year: 2024,
            month: 2,
            daily_usage,
            total_monthly_tokens: figures.total,
            average_daily_usage: figures.average,
            peak_usage_date: figures.peak_date,
            peak_usage_tokens: figures.peak_tokens,
            user_type: UserType::Trial,
            created_at: at("2024-02-01T00:00:00Z"),
            updated_at: at("2024-02-03T00:00:00Z"),
        }
    }

    fn day(date: &str, tokens_used: i64) -> DailyUsage {
        DailyUsage {
            user_id: UserId::parse("alice").unwrap(),
            date: date.parse().unwrap(),
            tokens_used,
            token_limit: 10_000,
            user_type: UserType::Trial,
            last_updated: at("2024-02-02T10:00:00Z"),
            reset_at: at("2024-02-03T00:00:00Z"),
        }
    }

    #[test]
    fn sound_documents_have_no_problems() {
        let sound = month(&[("01", 10), ("02", 30), ("03", 30)]);
        assert!(problems("alice_2024_02", &Document::Month(sound)).is_empty());
        let sound_day = Document::Day(stored(day("2024-02-02", 30)));
        assert!(problems("alice_2024-02-02", &sound_day).is_empty());
    }

    #[test]
    fn each_broken_rule_is_named() {
        let mut broken = month(&[("01", 10), ("02", 30)]);
        broken.total_monthly_tokens = 41;
        broken.average_daily_usage = 1.0;
        broken.peak_usage_date = "01".to_owned();
        broken.daily_usage.insert("30".to_owned(), -1);
        broken.daily_usage.insert("05".to_owned(), 0);
        let found = problems("alice_2024_03", &Document::Month(broken)).join("\n");
        for expected in [
            "the id should be",
            "\"30\", which is no day",
            "dailyUsage.30 is negative",
            "skips days",
            "totalMonthlyTokens is 41 but dailyUsage sums to 39",
            "averageDailyUsage is 1",
            "the peak is \"01\"",
        ] {
            assert!(found.contains(expected), "{expected} missing from {found}");
        }
        let found = problems(
            "alice_2024-02-02",
            &Document::Day(stored(day("2024-02-02", -5))),
        );
        assert_eq!(found, ["tokensUsed is negative (-5)"]);
    }

    fn stored(usage: DailyUsage) -> StoredDay {
        StoredDay {
            usage,
            reservations: Default::default(),
            notified: Default::default(),
        }
    }

    #[test]
    fn reservations_must_name_their_day_and_expiry() {
        let entry = |expires: &str| crate::usage::ReservationEntry {
            tokens: 300,
            created_at: at("2024-02-02T10:00:00Z"),
            expires_at: at(expires),
            settlement: None,
        };
        let date = "2024-02-02".parse().unwrap();
        let sound = ReservationId::new(date, at("2024-02-02T10:10:00Z"));
        let other_day =
            ReservationId::new("2024-02-01".parse().unwrap(), at("2024-02-02T10:10:00Z"));
        let mut day = stored(day("2024-02-02", 30));
        day.reservations = [
            (sound.to_string(), entry("2024-02-02T10:10:00Z")),
            (other_day.to_string(), entry("2024-02-02T10:10:00Z")),
            ("not-an-id".to_owned(), entry("2024-02-02T10:10:00Z")),
            (
                ReservationId::new(date, at("2024-02-02T10:20:00Z")).to_string(),
                entry("2024-02-02T10:10:00Z"),
            ),
        ]
        .into_iter()
        .collect();
        let found = problems("alice_2024-02-02", &Document::Day(day)).join("\n");
        assert!(
            found.contains("names 2024-02-01 but the day is 2024-02-02"),
            "{found}"
        );
        assert!(
            found.contains("\"not-an-id\", which is no reservation id"),
            "{found}"
        );
        assert!(found.contains("but its id says"), "{found}");
        assert_eq!(found.lines().count(), 3, "{found}");
    }

    #[test]
    fn a_day_must_match_its_months_entry() {
        let unused = day("2024-02-02", 0);
        assert_eq!(day_against_month(&unused, None), None);
        assert_eq!(
            day_against_month(&unused, Some(&month(&[("01", 10)]))),
            None
        );
        let m = month(&[("01", 10), ("02", 30)]);
        assert_eq!(day_against_month(&day("2024-02-02", 30), Some(&m)), None);
        let wrong = day_against_month(&day("2024-02-02", 31), Some(&m)).unwrap();
        assert!(wrong.contains("tokensUsed is 31"), "{wrong}");
        let absent = day_against_month(&day("2024-02-05", 1), Some(&m)).unwrap();
        assert!(absent.contains("no dailyUsage.05"), "{absent}");
        let orphan = day_against_month(&day("2024-02-02", 30), None).unwrap();
        assert!(orphan.contains("alice_2024_02 does not exist"), "{orphan}");
    }

    fn entry() -> OutboxEntry {
        let id = "alice_2024-02-02_daily-80";
        OutboxEntry {
            id: id.to_owned(),
            event_type: "usage.threshold_crossed".to_owned(),
            user_id: UserId::parse("alice").unwrap(),
            payload: serde_json::json!({
                "type": "usage.threshold_crossed",
                "data": {"eventId": id, "userId": "alice"},
            })
            .to_string(),
            status: OutboxStatus::Delivered,
            attempts: 1,
            created_at: at("2024-02-02T10:00:00Z"),
            retry_since: at("2024-02-02T10:00:00Z"),
            next_attempt_at: at("2024-02-02T10:00:01Z"),
            delivered_to: ["webhook".to_owned()].into(),
            last_error: None,
            version: String::new(),
        }
    }

    #[test]
    fn an_outbox_entry_must_be_the_event_it_names() {
        assert_eq!(outbox_problems(&entry()), Vec::<String>::new());
        let broken = OutboxEntry {
            id: "bob_2024-02-02_daily-80".to_owned(),
            event_type: "usage.spent".to_owned(),
            delivered_to: Default::default(),
            attempts: 0,
            retry_since: at("2024-02-02T09:00:00Z"),
            ..entry()
        };
        let problems = outbox_problems(&broken);
        for expected in [
            "eventType \"usage.spent\" is no event type",
            "the id should start with alice_",
            "payload's type is \"usage.threshold_crossed\", but the entry's is \"usage.spent\"",
            "payload's data.eventId is \"alice_2024-02-02_daily-80\"",
            "delivered, but deliveredTo names no sink",
            "delivered without any attempt",
            "retrySince is before createdAt",
        ] {
            assert!(
                problems.iter().any(|problem| problem.starts_with(expected)),
                "{expected:?} not in {problems:?}"
            );
        }
        let not_json = OutboxEntry {
            payload: "{".to_owned(),
            ..entry()
        };
        assert!(outbox_problems(&not_json)[0].starts_with("payload is not JSON"));
    }
}
