//! Every Firestore query shape the service and the schema issue, declared once as data.
//!
//! The Firestore store builds its queries from these constants, and `tests/index_coverage.rs`
//! checks each one against `firestore.indexes.json`: the emulator does not enforce indexes, so
//! that test is what catches a query whose composite index is missing before production does.
//! A new query goes here first, with its index in `firestore.indexes.json`.

use Direction::{Ascending, Descending};

/// The direction of one `orderBy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// One query: equality filters on `equality`, only documents whose field is above a bound
/// when `above` names one, then ordered by `order`. The values are supplied when it runs: the
/// equality values in this order, then the bound when it is [`Bound::Supplied`]. Field names
/// are the documents' own, as in the schema.
#[derive(Debug, Clone, Copy)]
pub struct QueryShape {
    pub name: &'static str,
    pub collection: &'static str,
    pub equality: &'static [&'static str],
    /// A range filter `field > bound`. Firestore wants a range field ordered before any other,
    /// so it is always `order`'s first field, and the index of the order serves the range too.
    pub above: Option<Above>,
    pub order: &'static [(&'static str, Direction)],
}

impl QueryShape {
    /// How many values the query takes when it runs.
    pub fn value_count(&self) -> usize {
        let bound = self
            .above
            .is_some_and(|above| above.bound == Bound::Supplied);
        self.equality.len() + usize::from(bound)
    }
}

/// A range filter: only documents whose `field` is above `bound`.
#[derive(Debug, Clone, Copy)]
pub struct Above {
    pub field: &'static str,
    pub bound: Bound,
}

impl Above {
    /// `field > 0`: the documents with some usage.
    pub const fn zero(field: &'static str) -> Option<Self> {
        Some(Self {
            field,
            bound: Bound::Zero,
        })
    }

    /// `field > n`, `n` supplied when the query runs.
    pub const fn supplied(field: &'static str) -> Option<Self> {
        Some(Self {
            field,
            bound: Bound::Supplied,
        })
    }
}

/// What a range filter's field must be above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Zero,
    /// The value after the equality values.
    Supplied,
}

pub const DAILY_COLLECTION: &str = "daily_token_usage";
pub const OVERRIDES_COLLECTION: &str = "token_limit_overrides";
pub const AUDIT_COLLECTION: &str = "token_limit_audit";

/// Threshold events waiting for their delivery, by event id.
pub const OUTBOX_COLLECTION: &str = "notification_outbox";

/// Every stored override by user id (`GET /admin/limits`): a single field's order.
pub const OVERRIDES_BY_USER: QueryShape = QueryShape {
    name: "overrides by user",
    collection: OVERRIDES_COLLECTION,
    equality: &[],
    above: None,
    order: &[("userId", Ascending)],
};

/// Pending outbox entries, the longest due first: the delivery workers' sweep.
pub const OUTBOX_DUE: QueryShape = QueryShape {
    name: "outbox entries due",
    collection: OUTBOX_COLLECTION,
    equality: &["status"],
    above: None,
    order: &[("nextAttemptAt", Ascending)],
};

/// Outbox entries of one status, oldest first: the age of the oldest pending one, for its
/// gauge, and the admin's listing (`GET /admin/notifications`).
pub const OUTBOX_BY_STATUS: QueryShape = QueryShape {
    name: "outbox entries of a status, oldest first",
    collection: OUTBOX_COLLECTION,
    equality: &["status"],
    above: None,
    order: &[("createdAt", Ascending)],
};

/// The audit trail, newest first (`GET /admin/audit`); `since` is a range on `at`, the first
/// field of the order, so the order's index serves it.
pub const AUDIT_NEWEST: QueryShape = QueryShape {
    name: "audit, newest first",
    collection: AUDIT_COLLECTION,
    equality: &[],
    above: None,
    order: &[("at", Descending)],
};

/// [`AUDIT_NEWEST`] about one user (`?userId=`).
pub const AUDIT_BY_USER: QueryShape = QueryShape {
    name: "audit of a user",
    collection: AUDIT_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[("at", Descending)],
};

/// [`AUDIT_NEWEST`] by one admin (`?actor=`).
pub const AUDIT_BY_ACTOR: QueryShape = QueryShape {
    name: "audit by an admin",
    collection: AUDIT_COLLECTION,
    equality: &["actor"],
    above: None,
    order: &[("at", Descending)],
};

/// [`AUDIT_NEWEST`] by one admin about one user.
pub const AUDIT_BY_USER_AND_ACTOR: QueryShape = QueryShape {
    name: "audit of a user by an admin",
    collection: AUDIT_COLLECTION,
    equality: &["userId", "actor"],
    above: None,
    order: &[("at", Descending)],
};
pub const HISTORY_COLLECTION: &str = "token_usage_history";

/// A user's months, newest first (`GET /usage/history`, and the schema's user history query).
pub const USER_HISTORY: QueryShape = QueryShape {
    name: "user history",
    collection: HISTORY_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[("year", Descending), ("month", Descending)],
};

/// One day's documents with tokens used, most first, ties by user (`GET /admin/usage/daily`):
/// a day that only held reservations has none and is left out.
pub const DAILY_REPORT: QueryShape = QueryShape {
    name: "daily report",
    collection: DAILY_COLLECTION,
    equality: &["date"],
    above: Above::zero("tokensUsed"),
    order: &[("tokensUsed", Descending), ("userId", Ascending)],
};

/// [`DAILY_REPORT`] for one user type (`GET /admin/usage/daily?userType=`).
pub const DAILY_REPORT_BY_TYPE: QueryShape = QueryShape {
    name: "daily report by user type",
    collection: DAILY_COLLECTION,
    equality: &["date", "userType"],
    above: Above::zero("tokensUsed"),
    order: &[("tokensUsed", Descending), ("userId", Ascending)],
};

/// One month's aggregates with tokens used, most first, ties by user
/// (`GET /admin/usage/monthly`): a month placed with a total of 0 is left out.
pub const MONTHLY_REPORT: QueryShape = QueryShape {
    name: "monthly report",
    collection: HISTORY_COLLECTION,
    equality: &["year", "month"],
    above: Above::zero("totalMonthlyTokens"),
    order: &[("totalMonthlyTokens", Descending), ("userId", Ascending)],
};

/// [`MONTHLY_REPORT`] for one user type (`GET /admin/usage/monthly?userType=`).
pub const MONTHLY_REPORT_BY_TYPE: QueryShape = QueryShape {
    name: "monthly report by user type",
    collection: HISTORY_COLLECTION,
    equality: &["year", "month", "userType"],
    above: Above::zero("totalMonthlyTokens"),
    order: &[("totalMonthlyTokens", Descending), ("userId", Ascending)],
};

/// The documents of one day and user type with tokens used (its active users), counted and
/// their `tokensUsed` summed by an aggregation query (`GET /admin/reports/summary`). Ordered by
/// the summed field so that the index serving it holds that field, which a sum reads from the
/// index.
pub const DAILY_SUMMARY_BY_TYPE: QueryShape = QueryShape {
    name: "daily summary by user type",
    collection: DAILY_COLLECTION,
    equality: &["date", "userType"],
    above: Above::zero("tokensUsed"),
    order: &[("tokensUsed", Descending)],
};

/// The documents of one day and user type with tokens used above a limit (supplied), counted
/// and their `tokensUsed` summed by an aggregation query (`GET /admin/reports/what-if`). The
/// index of [`DAILY_SUMMARY_BY_TYPE`] serves it: the same equalities, and the range on the
/// ordered field.
pub const DAILY_OVER_LIMIT_BY_TYPE: QueryShape = QueryShape {
    name: "daily over a limit by user type",
    collection: DAILY_COLLECTION,
    equality: &["date", "userType"],
    above: Above::supplied("tokensUsed"),
    order: &[("tokensUsed", Descending)],
};

/// The month documents of one month and user type with tokens used (its active users), counted
/// and their `totalMonthlyTokens` summed by an aggregation query (`GET /admin/reports/month`).
/// Ordered by the summed field so that the index serving it holds that field.
pub const MONTHLY_SUMMARY_BY_TYPE: QueryShape = QueryShape {
    name: "monthly summary by user type",
    collection: HISTORY_COLLECTION,
    equality: &["year", "month", "userType"],
    above: Above::zero("totalMonthlyTokens"),
    order: &[("totalMonthlyTokens", Descending)],
};

/// The documents of one day with tokens used, counted and their `tokensUsed` summed by an
/// aggregation query, once per day of a month (`GET /admin/reports/month`). The schema's index
/// on `date` and `tokensUsed` serves it.
pub const DAILY_TOTALS: QueryShape = QueryShape {
    name: "daily totals",
    collection: DAILY_COLLECTION,
    equality: &["date"],
    above: Above::zero("tokensUsed"),
    order: &[("tokensUsed", Descending)],
};

/// The schema's admin query: all users' usage for one date, most tokens first.
pub const SCHEMA_DAILY_BY_TOKENS: QueryShape = QueryShape {
    name: "schema: one date by tokensUsed",
    collection: DAILY_COLLECTION,
    equality: &["date"],
    above: None,
    order: &[("tokensUsed", Descending)],
};

/// The schema's admin query: one month's aggregates for one user type.
pub const SCHEMA_MONTHLY_BY_TYPE: QueryShape = QueryShape {
    name: "schema: one month by user type",
    collection: HISTORY_COLLECTION,
    equality: &["userType", "year", "month"],
    above: None,
    order: &[],
};

/// A user's day documents in name order (`verify`, `export`, `rebuild-history` with `--user`).
pub const USER_DAYS_BY_NAME: QueryShape = QueryShape {
    name: "maintenance: a user's days by name",
    collection: DAILY_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[],
};

/// A user's month documents in name order (`verify`, `export` with `--user`).
pub const USER_MONTHS_BY_NAME: QueryShape = QueryShape {
    name: "maintenance: a user's months by name",
    collection: HISTORY_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[],
};

/// One month's documents in name order (`archive`).
pub const MONTH_BY_NAME: QueryShape = QueryShape {
    name: "maintenance: one month by name",
    collection: HISTORY_COLLECTION,
    equality: &["year", "month"],
    above: None,
    order: &[],
};

/// The day documents dated before a date, oldest first (`cleanup`). The range on `date` needs
/// the same index as an order on it.
pub const DAYS_BEFORE: QueryShape = QueryShape {
    name: "maintenance: days before a date",
    collection: DAILY_COLLECTION,
    equality: &[],
    above: None,
    order: &[("date", Ascending)],
};

/// The outbox's entries in name order, or one user's (`verify`).
pub const OUTBOX_BY_NAME: QueryShape = QueryShape {
    name: "maintenance: outbox entries by name",
    collection: OUTBOX_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[],
};

/// One user's days of one month, a range on `date` (`verify`, `rebuild-history`).
pub const USER_DAYS_OF_MONTH: QueryShape = QueryShape {
    name: "maintenance: a user's days of a month",
    collection: DAILY_COLLECTION,
    equality: &["userId"],
    above: None,
    order: &[("date", Descending)],
};

/// The queries of the lifecycle commands.
pub const MAINTENANCE: &[QueryShape] = &[
    USER_DAYS_BY_NAME,
    USER_MONTHS_BY_NAME,
    MONTH_BY_NAME,
    DAYS_BEFORE,
    USER_DAYS_OF_MONTH,
    OUTBOX_BY_NAME,
];

/// The queries the service itself runs.
pub const SERVICE: &[QueryShape] = &[
    USER_HISTORY,
    DAILY_REPORT,
    DAILY_REPORT_BY_TYPE,
    MONTHLY_REPORT,
    MONTHLY_REPORT_BY_TYPE,
    DAILY_SUMMARY_BY_TYPE,
    DAILY_OVER_LIMIT_BY_TYPE,
    MONTHLY_SUMMARY_BY_TYPE,
    DAILY_TOTALS,
    OVERRIDES_BY_USER,
    AUDIT_NEWEST,
    AUDIT_BY_USER,
    AUDIT_BY_ACTOR,
    AUDIT_BY_USER_AND_ACTOR,
    OUTBOX_DUE,
    OUTBOX_BY_STATUS,
];

/// The schema's "Query Patterns", which apps may run directly against Firestore.
pub const SCHEMA_PATTERNS: &[QueryShape] =
    &[USER_HISTORY, SCHEMA_DAILY_BY_TOKENS, SCHEMA_MONTHLY_BY_TYPE];

/// Every distinct query: the service's, the schema's and the lifecycle's, each once.
pub const ALL: &[QueryShape] = &[
    USER_HISTORY,
    DAILY_REPORT,
    DAILY_REPORT_BY_TYPE,
    MONTHLY_REPORT,
    MONTHLY_REPORT_BY_TYPE,
    DAILY_SUMMARY_BY_TYPE,
    DAILY_OVER_LIMIT_BY_TYPE,
    MONTHLY_SUMMARY_BY_TYPE,
    DAILY_TOTALS,
    OVERRIDES_BY_USER,
    AUDIT_NEWEST,
    AUDIT_BY_USER,
    AUDIT_BY_ACTOR,
    AUDIT_BY_USER_AND_ACTOR,
    SCHEMA_DAILY_BY_TOKENS,
    SCHEMA_MONTHLY_BY_TYPE,
    USER_DAYS_BY_NAME,
    USER_MONTHS_BY_NAME,
    MONTH_BY_NAME,
    DAYS_BEFORE,
    USER_DAYS_OF_MONTH,
    OUTBOX_DUE,
    OUTBOX_BY_STATUS,
    OUTBOX_BY_NAME,
];
