//! The one rule of the service: may this user spend these tokens now, and what do the day
//! and month documents become if so. Pure and total: both stores call it inside their
//! transaction, and every input has an answer, an overflow included.

use chrono::{DateTime, Utc};

use super::month::MonthOf;
use super::{
    DailyUsage, DayWindow, Enforcement, LimitWindow, MonthlyUsage, Policy, Tokens, UserId, UserType,
};

/// What a store must decide on, read inside its transaction.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    pub user_id: &'a UserId,
    pub tokens: Tokens,
    /// The user's plan now, resolved before the decision: an upgrade counts at once, and
    /// nothing stored is taken for it.
    pub user_type: UserType,
    pub window: &'a DayWindow,
    /// The limits and mode that apply to the user now.
    pub policy: Policy,
    /// Tokens held by the user's open reservations: they count against the limits too.
    pub held_tokens: i64,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Counted: write both documents. `exceeds` names the window that `enforce` would have
    /// refused on, when the mode is `shadow`.
    Admitted {
        day: DailyUsage,
        month: MonthlyUsage,
        exceeds: Option<LimitWindow>,
    },
    /// Let through without counting (`off`): write nothing; `day` shows the unchanged figures.
    Uncounted {
        day: DailyUsage,
        exceeds: Option<LimitWindow>,
    },
    /// Over a limit: write nothing; `day` shows the unchanged figures.
    Denied {
        day: DailyUsage,
        exceeded: LimitWindow,
    },
}

impl Decision {
    pub fn day(&self) -> &DailyUsage {
        match self {
            Self::Admitted { day, .. } | Self::Uncounted { day, .. } | Self::Denied { day, .. } => {
                day
            }
        }
    }
}

/// A stored document that no request can continue: someone else wrote figures whose sum does
/// not fit. It names the document, so that an operator can repair it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the document {document} cannot be continued: its total does not fit in a 64-bit integer")]
pub struct DecisionError {
    pub document: String,
}

/// Decides one request against the current day and month documents (absent when not yet
/// created). Tokens are admitted while `used + held + tokens` stays within the daily limit
/// and, when there is one, the monthly cap, with the policy in force now, so an upgrade
/// mid-day takes effect at once. `shadow` admits what `enforce` would refuse and says so;
/// `off` lets everything through and counts nothing.
pub fn decide(
    current_day: Option<&DailyUsage>,
    current_month: Option<&MonthlyUsage>,
    input: DecisionInput<'_>,
) -> Result<Decision, DecisionError> {
    let tokens_used = current_day.map_or(0, |day| day.tokens_used);
    let month_used = current_month.map_or(0, |month| month.total_monthly_tokens);
    let exceeds = input.policy.exceeded_by(
        tokens_used,
        month_used,
        input.held_tokens,
        input.tokens.get(),
    );
    let unchanged = || DailyUsage {
        user_id: input.user_id.clone(),
        date: input.window.date,
        tokens_used,
        token_limit: input.policy.daily_limit,
        user_type: input.user_type,
        last_updated: current_day.map_or(input.now, |day| day.last_updated),
        reset_at: input.window.reset_at,
    };
    match (input.policy.enforcement, exceeds) {
        (Enforcement::Enforce, Some(exceeded)) => {
            return Ok(Decision::Denied {
                day: unchanged(),
                exceeded,
            });
        }
        (Enforcement::Off, exceeds) => {
            return Ok(Decision::Uncounted {
                day: unchanged(),
                exceeds,
            });
        }
        _ => {}
    }
    let day = DailyUsage {
        tokens_used: tokens_used
            .checked_add(input.tokens.get())
            .ok_or_else(|| DecisionError {
                document: DailyUsage::document_id(input.user_id, input.window.date),
            })?,
        last_updated: input.now,
        ..unchanged()
    };
    let month = month_after(current_month, &input)?;
    Ok(Decision::Admitted {
        day,
        month,
        exceeds,
    })
}

/// The month document after adding the input's tokens to its day's entry, continuing whatever
/// the stored document holds (a backfill, another writer) rather than replacing it.
pub fn month_after(
    current: Option<&MonthlyUsage>,
    input: &DecisionInput<'_>,
) -> Result<MonthlyUsage, DecisionError> {
    let mut daily_usage = current.map(|m| m.daily_usage.clone()).unwrap_or_default();
    let key = input.window.day_key();
    let day_total = daily_usage.get(&key).copied().unwrap_or(0);
    let month = day_total
        .checked_add(input.tokens.get())
        .and_then(|tokens| {
            daily_usage.insert(key, tokens);
            MonthOf {
                user_id: input.user_id.clone(),
                year: input.window.year(),
                month: input.window.month(),
                user_type: input.user_type,
                created_at: current.map_or(input.now, |m| m.created_at),
                updated_at: input.now,
            }
            .with_daily_usage(daily_usage)
        });
    month.ok_or_else(|| DecisionError {
        document: MonthlyUsage::document_id(
            input.user_id,
            input.window.year(),
            input.window.month(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::NaiveDate;
    use chrono_tz::Tz;

    use super::*;
    use crate::usage::Limits;

    const LIMITS: Limits = Limits::daily(10_000, 100_000);

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    struct Case {
        user: UserId,
        window: DayWindow,
        now: DateTime<Utc>,
    }

    impl Case {
        fn at(now: &str) -> Self {
            let now = at(now);
            Self {
                user: alice(),
                window: DayWindow::containing(now, Tz::UTC),
                now,
            }
        }

        fn input(&self, tokens: i64, user_type: UserType) -> DecisionInput<'_> {
            DecisionInput {
                user_id: &self.user,
                tokens: Tokens::bounded(tokens, i64::MAX).unwrap(),
                user_type,
                window: &self.window,
                policy: LIMITS.for_type(user_type),
                held_tokens: 0,
                now: self.now,
            }
        }
    }

    fn admitted(decision: Result<Decision, DecisionError>) -> (DailyUsage, MonthlyUsage) {
        match decision.unwrap() {
            Decision::Admitted {
                day,
                month,
                exceeds: None,
            } => (day, month),
            other => panic!("not counted: {other:?}"),
        }
    }

    /// Records `tokens` on each (timestamp, tokens) in order, carrying the documents along.
    fn replay(requests: &[(&str, i64)]) -> (Option<DailyUsage>, MonthlyUsage) {
        let mut day: Option<DailyUsage> = None;
        let mut month: Option<MonthlyUsage> = None;
        for &(now, tokens) in requests {
            let case = Case::at(now);
            let current_day = day.filter(|d| d.date == case.window.date);
            let (new_day, new_month) = admitted(decide(
                current_day.as_ref(),
                month.as_ref(),
                case.input(tokens, UserType::Trial),
            ));
            day = Some(new_day);
            month = Some(new_month);
        }
        (day, month.unwrap())
    }

    #[test]
    fn first_use_creates_both_documents() {
        let case = Case::at("2024-01-15T14:30:00Z");
        let (day, month) = admitted(decide(None, None, case.input(1250, UserType::Trial)));
        assert_eq!(
            day,
            DailyUsage {
                user_id: alice(),
                date: NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
                tokens_used: 1250,
                token_limit: 10_000,
                user_type: UserType::Trial,
                last_updated: case.now,
                reset_at: at("2024-01-16T00:00:00Z"),
            }
        );
        assert_eq!(day.remaining(), 8750);
        assert_eq!(month.daily_usage, BTreeMap::from([("15".to_owned(), 1250)]));
        assert_eq!((month.year, month.month), (2024, 1));
        assert_eq!(month.total_monthly_tokens, 1250);
        assert_eq!(month.average_daily_usage, 1250.0);
        assert_eq!(
            (month.peak_usage_date.as_str(), month.peak_usage_tokens),
            ("15", 1250)
        );
        assert_eq!((month.created_at, month.updated_at), (case.now, case.now));
    }

    #[test]
    fn exactly_the_limit_is_admitted_and_one_more_is_denied() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let (day, _) = admitted(decide(None, None, case.input(9_999, UserType::Trial)));
        let (day, month) = admitted(decide(Some(&day), None, case.input(1, UserType::Trial)));
        assert_eq!(day.tokens_used, 10_000);
        assert_eq!(day.remaining(), 0);

        let denied = decide(Some(&day), Some(&month), case.input(1, UserType::Trial));
        assert_eq!(
            denied.unwrap(),
            Decision::Denied {
                day: day.clone(),
                exceeded: LimitWindow::Daily
            }
        );
    }

    #[test]
    fn a_single_request_above_the_limit_is_denied_with_zero_figures() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let decision = decide(None, None, case.input(10_001, UserType::Trial));
        let Ok(Decision::Denied { day, .. }) = decision else {
            panic!("admitted")
        };
        assert_eq!(
            (day.tokens_used, day.token_limit, day.remaining()),
            (0, 10_000, 10_000)
        );
    }

    #[test]
    fn an_upgrade_mid_day_raises_the_limit_at_once() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let (day, month) = admitted(decide(None, None, case.input(10_000, UserType::Trial)));
        assert!(matches!(
            decide(Some(&day), Some(&month), case.input(500, UserType::Trial)),
            Ok(Decision::Denied { .. })
        ));
        let (day, month) = admitted(decide(
            Some(&day),
            Some(&month),
            case.input(500, UserType::Subscribed),
        ));
        assert_eq!((day.tokens_used, day.token_limit), (10_500, 100_000));
        assert_eq!(day.user_type, UserType::Subscribed);
        assert_eq!(month.user_type, UserType::Subscribed);
    }

    #[test]
    fn a_downgrade_mid_day_denies_and_reports_nothing_remaining() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let (day, month) = admitted(decide(None, None, case.input(50_000, UserType::Subscribed)));
        let Ok(Decision::Denied { day, .. }) =
            decide(Some(&day), Some(&month), case.input(1, UserType::Trial))
        else {
            panic!("admitted")
        };
        assert_eq!(
            (day.tokens_used, day.token_limit, day.remaining()),
            (50_000, 10_000, 0)
        );
    }

    #[test]
    fn the_resolved_type_applies_whatever_is_stored() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let (day, month) = admitted(decide(None, None, case.input(20_000, UserType::Subscribed)));
        // A downgrade mid-month: the stored plan is not carried forward.
        let decision = decide(Some(&day), Some(&month), case.input(1, UserType::Trial));
        let Ok(Decision::Denied { day, .. }) = decision else {
            panic!("admitted on the stored plan")
        };
        assert_eq!((day.user_type, day.token_limit), (UserType::Trial, 10_000));
        let (day, month) = admitted(decide(
            Some(&day),
            Some(&month),
            case.input(1, UserType::Subscribed),
        ));
        assert_eq!(
            (day.user_type, day.token_limit, month.user_type),
            (UserType::Subscribed, 100_000, UserType::Subscribed)
        );
    }

    #[test]
    fn overflowing_totals_are_denied_not_wrapped() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let mut input = case.input(i64::MAX, UserType::Trial);
        input.policy = Policy::daily(i64::MAX);
        let (day, month) = admitted(decide(None, None, input));
        input.tokens = Tokens::bounded(1, 1).unwrap();
        assert!(matches!(
            decide(Some(&day), Some(&month), input),
            Ok(Decision::Denied { .. })
        ));
    }

    fn stored_month(daily_usage: &[(&str, i64)]) -> MonthlyUsage {
        let created = at("2024-01-01T00:00:00Z");
        MonthlyUsage {
            user_id: alice(),
            year: 2024,
            month: 1,
            daily_usage: daily_usage
                .iter()
                .map(|(day, tokens)| (day.to_string(), *tokens))
                .collect(),
            total_monthly_tokens: 0,
            average_daily_usage: 0.0,
            peak_usage_date: "01".to_owned(),
            peak_usage_tokens: 0,
            user_type: UserType::Trial,
            created_at: created,
            updated_at: created,
        }
    }

    #[test]
    fn a_month_whose_figures_overflow_is_an_error_naming_it() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let mut input = case.input(10, UserType::Trial);
        input.policy = Policy::daily(i64::MAX);
        for days in [
            vec![("01", i64::MAX - 5), ("02", 10)],
            vec![("15", i64::MAX - 5)],
        ] {
            let error = decide(None, Some(&stored_month(&days)), input).unwrap_err();
            assert_eq!(error.document, "alice_2024_01");
            assert!(error.to_string().contains("alice_2024_01"), "{error}");
        }
    }

    #[test]
    fn month_fills_skipped_days_with_zero_and_averages_over_every_entry() {
        let (_, month) = replay(&[
            ("2024-01-01T09:00:00Z", 850),
            ("2024-01-02T09:00:00Z", 1200),
            ("2024-01-04T09:00:00Z", 2100),
            ("2024-01-05T09:00:00Z", 1000),
            ("2024-01-05T21:00:00Z", 750),
        ]);
        let expected: BTreeMap<String, i64> = [
            ("01", 850),
            ("02", 1200),
            ("03", 0),
            ("04", 2100),
            ("05", 1750),
        ]
        .into_iter()
        .map(|(d, t)| (d.to_owned(), t))
        .collect();
        assert_eq!(month.daily_usage, expected);
        assert_eq!(month.total_monthly_tokens, 5900);
        assert_eq!(month.average_daily_usage, 1180.0);
        assert_eq!(
            (month.peak_usage_date.as_str(), month.peak_usage_tokens),
            ("04", 2100)
        );
        assert_eq!(month.created_at, at("2024-01-01T09:00:00Z"));
        assert_eq!(month.updated_at, at("2024-01-05T21:00:00Z"));
    }

    #[test]
    fn the_average_is_a_fraction_when_it_does_not_divide() {
        let (_, month) = replay(&[("2024-01-01T09:00:00Z", 1), ("2024-01-03T09:00:00Z", 1)]);
        assert_eq!(month.total_monthly_tokens, 2);
        assert!((month.average_daily_usage - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_peak_tie_goes_to_the_earliest_day() {
        let (_, month) = replay(&[
            ("2024-01-10T09:00:00Z", 500),
            ("2024-01-11T09:00:00Z", 700),
            ("2024-01-12T09:00:00Z", 700),
        ]);
        assert_eq!(
            (month.peak_usage_date.as_str(), month.peak_usage_tokens),
            ("11", 700)
        );
    }

    #[test]
    fn a_new_month_starts_a_new_document_and_a_new_day() {
        let (day, month) = replay(&[("2024-01-31T23:00:00Z", 900)]);
        let case = Case::at("2024-02-01T00:00:00Z");
        assert_ne!(day.as_ref().unwrap().date, case.window.date);
        let (day, february) = admitted(decide(None, None, case.input(100, UserType::Trial)));
        assert_eq!(month.month, 1);
        assert_eq!((february.year, february.month), (2024, 2));
        assert_eq!(
            february.daily_usage,
            BTreeMap::from([("01".to_owned(), 100)])
        );
        assert_eq!(day.tokens_used, 100);
    }

    #[test]
    fn leap_day_counts_in_february() {
        let (day, month) = replay(&[("2024-02-28T12:00:00Z", 10), ("2024-02-29T12:00:00Z", 20)]);
        assert_eq!(
            day.unwrap().date,
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
        );
        assert_eq!(month.daily_usage.get("29"), Some(&20));
        assert_eq!(month.daily_usage.len(), 2);
    }

    #[test]
    fn a_pre_existing_month_document_is_continued() {
        let created = at("2023-12-01T00:00:00Z");
        let backfilled = MonthlyUsage {
            user_id: alice(),
            year: 2024,
            month: 1,
            daily_usage: BTreeMap::from([("02".to_owned(), 3000), ("03".to_owned(), 100)]),
            // Totals written by someone else are recomputed from the days, not trusted.
            total_monthly_tokens: 1,
            average_daily_usage: 0.0,
            peak_usage_date: "03".to_owned(),
            peak_usage_tokens: 100,
            user_type: UserType::Trial,
            created_at: created,
            updated_at: created,
        };
        let case = Case::at("2024-01-06T12:00:00Z");
        let (_, month) = admitted(decide(
            None,
            Some(&backfilled),
            case.input(400, UserType::Trial),
        ));
        let days: Vec<(&str, i64)> = month
            .daily_usage
            .iter()
            .map(|(d, t)| (d.as_str(), *t))
            .collect();
        assert_eq!(
            days,
            [("02", 3000), ("03", 100), ("04", 0), ("05", 0), ("06", 400)]
        );
        assert_eq!(month.total_monthly_tokens, 3500);
        assert_eq!(month.average_daily_usage, 700.0);
        assert_eq!(
            (month.peak_usage_date.as_str(), month.peak_usage_tokens),
            ("02", 3000)
        );
        assert_eq!(month.created_at, created);
    }

    #[test]
    fn dates_follow_the_reset_time_zone() {
        let ny = chrono_tz::America::New_York;
        let now = at("2024-03-01T03:00:00Z");
        let window = DayWindow::containing(now, ny);
        let user = alice();
        let input = DecisionInput {
            user_id: &user,
            tokens: Tokens::bounded(5, 5).unwrap(),
            user_type: UserType::Trial,
            window: &window,
            policy: LIMITS.for_type(UserType::Trial),
            held_tokens: 0,
            now,
        };
        let (day, month) = admitted(decide(None, None, input));
        // Still February 29th in New York.
        assert_eq!(day.date, NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
        assert_eq!((month.month, month.daily_usage.get("29")), (2, Some(&5)));
        assert_eq!(day.reset_at, at("2024-03-01T05:00:00Z"));
    }

    #[test]
    fn a_monthly_cap_refuses_while_the_day_has_room() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let mut input = case.input(200, UserType::Trial);
        input.policy.monthly_limit = Some(1_000);
        let month = MonthlyUsage {
            total_monthly_tokens: 900,
            ..stored_month(&[("14", 900)])
        };
        let Ok(Decision::Denied { day, exceeded }) = decide(None, Some(&month), input) else {
            panic!("admitted over the month")
        };
        assert_eq!((day.tokens_used, exceeded), (0, LimitWindow::Monthly));
        input.tokens = Tokens::bounded(100, 100).unwrap();
        let (day, month) = admitted(decide(None, Some(&month), input));
        assert_eq!((day.tokens_used, month.total_monthly_tokens), (100, 1_000));
    }

    #[test]
    fn shadow_counts_and_flags_what_enforce_would_refuse() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let mut input = case.input(10_001, UserType::Trial);
        input.policy.enforcement = Enforcement::Shadow;
        let Ok(Decision::Admitted {
            day,
            month,
            exceeds,
        }) = decide(None, None, input)
        else {
            panic!("refused in shadow")
        };
        assert_eq!(exceeds, Some(LimitWindow::Daily));
        assert_eq!(
            (day.tokens_used, month.total_monthly_tokens),
            (10_001, 10_001)
        );
        input.tokens = Tokens::bounded(1, 1).unwrap();
        assert!(matches!(
            decide(None, None, input),
            Ok(Decision::Admitted { exceeds: None, .. })
        ));
    }

    #[test]
    fn off_lets_through_and_counts_nothing() {
        let case = Case::at("2024-01-15T10:00:00Z");
        let (day, month) = admitted(decide(None, None, case.input(9_000, UserType::Trial)));
        let mut input = case.input(5_000, UserType::Trial);
        input.policy.enforcement = Enforcement::Off;
        let decision = decide(Some(&day), Some(&month), input).unwrap();
        assert_eq!(
            decision,
            Decision::Uncounted {
                day: day.clone(),
                exceeds: Some(LimitWindow::Daily)
            }
        );
    }
}
