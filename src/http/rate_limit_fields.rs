//! The IETF RateLimit fields of draft-ietf-httpapi-ratelimit-headers on every usage answer, so
//! that proxies and SDKs that read them work unchanged: `RateLimit-Policy` lists the daily
//! quota and, under a monthly cap, the monthly one (`q` tokens over `w` seconds);
//! `RateLimit` gives the binding one's remaining tokens `r` and the seconds `t` to its reset.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sfv::{Integer, KeyRef, ListSerializer, StringRef};

use crate::usage::{LimitWindow, Standing, seconds_until};

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

const SECONDS_PER_DAY: i64 = 86_400;

/// Adds both fields for `standing`, as of `now`.
pub fn insert(headers: &mut HeaderMap, standing: &Standing, now: DateTime<Utc>) {
    let mut policies = ListSerializer::new();
    let mut windows = vec![LimitWindow::Daily];
    if standing.month.limit.is_some() {
        windows.push(LimitWindow::Monthly);
    }
    for window in windows {
        policies
            .bare_item(name(window))
            .parameter(KeyRef::constant("q"), integer(standing.limit(window)))
            .parameter(
                KeyRef::constant("w"),
                integer(window_seconds(window, standing.day.date)),
            );
    }
    let binding = standing.binding();
    let mut service_limit = ListSerializer::new();
    service_limit
        .bare_item(name(binding))
        .parameter(
            KeyRef::constant("r"),
            integer(standing.window_remaining(binding)),
        )
        .parameter(
            KeyRef::constant("t"),
            integer(seconds_until(standing.reset_at(binding), now)),
        );
    for (field, value) in [
        (RATELIMIT_POLICY, policies.finish()),
        (RATELIMIT, service_limit.finish()),
    ] {
        if let Some(value) = value.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(field, value);
        }
    }
}

fn name(window: LimitWindow) -> &'static StringRef {
    match window {
        LimitWindow::Daily => StringRef::constant("daily"),
        LimitWindow::Monthly => StringRef::constant("monthly"),
    }
}

/// A structured-field integer holds 15 digits: a larger figure (an uncapped month) is shown
/// as the largest it can hold.
fn integer(value: i64) -> Integer {
    let max = i64::from(Integer::MAX);
    Integer::try_from(value.clamp(0, max)).unwrap_or(Integer::MAX)
}

/// The window's nominal length: a day, or the days of the day's month.
fn window_seconds(window: LimitWindow, date: NaiveDate) -> i64 {
    match window {
        LimitWindow::Daily => SECONDS_PER_DAY,
        LimitWindow::Monthly => i64::from(date.num_days_in_month()) * SECONDS_PER_DAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{DailyUsage, Enforcement, MonthStanding, UserId, UserType};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn standing(monthly_limit: Option<i64>, month_used: i64) -> Standing {
        Standing {
            day: DailyUsage {
                user_id: UserId::parse("alice").unwrap(),
                date: "2024-02-10".parse().unwrap(),
                tokens_used: 1_000,
                token_limit: 10_000,
                user_type: UserType::Trial,
                last_updated: at("2024-02-10T10:00:00Z"),
                reset_at: at("2024-02-11T00:00:00Z"),
            },
            reserved_tokens: 250,
            month: MonthStanding {
                tokens_used: month_used,
                limit: monthly_limit,
                reset_at: at("2024-03-01T00:00:00Z"),
            },
            enforcement: Enforcement::Enforce,
            exceeds: None,
        }
    }

    fn fields(standing: &Standing) -> (String, String) {
        let mut headers = HeaderMap::new();
        insert(&mut headers, standing, at("2024-02-10T23:00:00.5Z"));
        let text = |name| headers[&name].to_str().unwrap().to_owned();
        (text(RATELIMIT_POLICY), text(RATELIMIT))
    }

    #[test]
    fn the_day_alone_is_its_own_policy() {
        let (policy, limit) = fields(&standing(None, 5_000));
        assert_eq!(policy, r#""daily";q=10000;w=86400"#);
        assert_eq!(limit, r#""daily";r=8750;t=3600"#);
    }

    #[test]
    fn a_capped_month_is_listed_and_binds_when_it_has_less_left() {
        let (policy, limit) = fields(&standing(Some(60_000), 5_000));
        assert_eq!(
            policy,
            r#""daily";q=10000;w=86400, "monthly";q=60000;w=2505600"#
        );
        assert_eq!(limit, r#""daily";r=8750;t=3600"#);
        let (_, limit) = fields(&standing(Some(60_000), 59_000));
        assert_eq!(limit, r#""monthly";r=750;t=1645200"#);
    }

    #[test]
    fn figures_beyond_fifteen_digits_are_clamped() {
        let mut huge = standing(None, 0);
        huge.day.token_limit = i64::MAX;
        let (policy, _) = fields(&huge);
        assert_eq!(policy, r#""daily";q=999999999999999;w=86400"#);
    }
}
