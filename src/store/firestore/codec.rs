//! The schema's documents as Firestore values: integers as integers, `averageDailyUsage` a
//! double, timestamps as timestamps, `dailyUsage` a map keyed `"DD"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{ArrayValue, Document, MapValue, Value};
use firestore::gcloud_sdk::prost_types::Timestamp;

use crate::usage::{
    AuditAction, AuditEntry, DailyUsage, Enforcement, Fingerprint, IdempotencyRecord, InvalidMark,
    LimitOverride, LimitWindow, Marks, MonthStanding, MonthlyUsage, OutboxEntry, OutboxStatus,
    Reservation, ReservationEntry, ReservationId, Reservations, Standing, StoredAnswer, StoredDay,
    StoredEntry, UsageEvent, UserId, UserType,
};

pub type Fields = HashMap<String, Value>;

/// The fields of a day document this service writes; others' fields are left alone.
pub const DAY_FIELDS: &[&str] = &[
    "userId",
    "date",
    "tokensUsed",
    "tokenLimit",
    "userType",
    "lastUpdated",
    "resetAt",
];

/// The day document's map of reservations, by id; absent when it keeps none.
pub const RESERVATIONS_FIELD: &str = "reservations";

/// A day's or month's marks of the events it raised; absent when none.
pub const NOTIFIED_FIELD: &str = "notified";

/// The fields of an outbox entry as a record writes it.
pub const OUTBOX_FIELDS: &[&str] = &[
    "eventType",
    "userId",
    "payload",
    "status",
    "attempts",
    "createdAt",
    "nextAttemptAt",
    "retrySince",
];

/// A day document's marker of the record that last wrote it, unique to each commit, so that a
/// commit whose answer was lost can tell its own write from an identical one by another
/// instance. Only the record path writes it; nothing reads it for usage.
pub const WRITE_ID_FIELD: &str = "writeId";

/// Every field of a day document this service writes, its reservations included.
pub fn stored_day_mask() -> Vec<&'static str> {
    let mut mask = DAY_FIELDS.to_vec();
    mask.push(RESERVATIONS_FIELD);
    mask
}

/// The fields of a month document this service writes.
pub const MONTH_FIELDS: &[&str] = &[
    "userId",
    "year",
    "month",
    "dailyUsage",
    "totalMonthlyTokens",
    "averageDailyUsage",
    "peakUsageDate",
    "peakUsageTokens",
    "userType",
    "createdAt",
    "updatedAt",
];

pub const IDEMPOTENCY_FIELDS: &[&str] = &[
    "userId",
    "key",
    "fingerprint",
    "response",
    "createdAt",
    "expiresAt",
    RESERVATION_ANSWER,
];

/// An idempotency record's answer to a reservation, beside its `response`.
const RESERVATION_ANSWER: &str = "reservation";

#[derive(Debug, thiserror::Error)]
#[error("the stored document {document} cannot be used: field {field} {problem}")]
pub struct DecodeError {
    document: String,
    field: String,
    problem: String,
}

pub fn day_fields(day: &DailyUsage) -> Fields {
    Fields::from([
        ("userId".to_owned(), string(day.user_id.as_str())),
        (
            "date".to_owned(),
            string(&day.date.format("%Y-%m-%d").to_string()),
        ),
        ("tokensUsed".to_owned(), integer(day.tokens_used)),
        ("tokenLimit".to_owned(), integer(day.token_limit)),
        ("userType".to_owned(), string(day.user_type.as_str())),
        ("lastUpdated".to_owned(), timestamp(day.last_updated)),
        ("resetAt".to_owned(), timestamp(day.reset_at)),
    ])
}

pub fn day_from(document: &Document) -> Result<DailyUsage, DecodeError> {
    decode_day(&Reader::new(&document.name, &document.fields))
}

/// A day document with its reservations.
pub fn stored_day_from(document: &Document) -> Result<StoredDay, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let reservations = match doc.fields.get(RESERVATIONS_FIELD) {
        None => Reservations::default(),
        Some(_) => doc
            .map(RESERVATIONS_FIELD)?
            .iter()
            .map(|(id, value)| {
                let field = format!("{RESERVATIONS_FIELD}.{id}");
                let Some(ValueType::MapValue(entry)) = &value.value_type else {
                    return Err(doc.error(&field, "is not a map"));
                };
                let entry = reservation_entry(&Reader::new(&document.name, &entry.fields))
                    .map_err(|problem| doc.error(&field, problem))?;
                Ok((id.clone(), entry))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(StoredDay {
        usage: decode_day(&doc)?,
        reservations,
        notified: marks_from(document)?,
    })
}

/// The last part of a document's name: its id.
pub fn document_id(document: &Document) -> String {
    let name = document.name.rsplit('/').next();
    name.unwrap_or_default().to_owned()
}

/// The marks a day or month keeps in [`NOTIFIED_FIELD`], none when the field is absent.
pub fn marks_from(document: &Document) -> Result<Marks, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let value = document.fields.get(NOTIFIED_FIELD);
    match value.and_then(|value| value.value_type.as_ref()) {
        None => Ok(Marks::default()),
        Some(ValueType::ArrayValue(array)) => array
            .values
            .iter()
            .map(|value| match &value.value_type {
                Some(ValueType::StringValue(raw)) => raw
                    .parse()
                    .map_err(|error: InvalidMark| doc.error(NOTIFIED_FIELD, error.to_string())),
                _ => Err(doc.error(NOTIFIED_FIELD, "holds a value that is not a string")),
            })
            .collect(),
        Some(_) => Err(doc.error(NOTIFIED_FIELD, "is not an array")),
    }
}

/// The value of [`NOTIFIED_FIELD`].
pub fn marks_value(marks: &Marks) -> Value {
    strings(marks.iter().map(|mark| mark.to_string()))
}

/// An outbox entry as stored; its version is its update time.
pub fn outbox_from(document: &Document) -> Result<OutboxEntry, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let status = doc.string("status")?;
    let delivered_to = match document
        .fields
        .get("deliveredTo")
        .and_then(|v| v.value_type.as_ref())
    {
        None => BTreeSet::new(),
        Some(ValueType::ArrayValue(array)) => array
            .values
            .iter()
            .map(|value| match &value.value_type {
                Some(ValueType::StringValue(sink)) => Ok(sink.clone()),
                _ => Err(doc.error("deliveredTo", "holds a value that is not a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(doc.error("deliveredTo", "is not an array")),
    };
    let last_error = match document
        .fields
        .get("lastError")
        .and_then(|v| v.value_type.as_ref())
    {
        Some(ValueType::StringValue(error)) => Some(error.clone()),
        _ => None,
    };
    Ok(OutboxEntry {
        id: document_id(document),
        event_type: doc.string("eventType")?.to_owned(),
        user_id: doc.user_id("userId")?,
        payload: doc.string("payload")?.to_owned(),
        status: OutboxStatus::parse(status)
            .ok_or_else(|| doc.error("status", format!("{status:?} is no outbox status")))?,
        attempts: u32::try_from(doc.integer("attempts")?)
            .map_err(|_| doc.error("attempts", "is out of range"))?,
        created_at: doc.timestamp("createdAt")?,
        retry_since: doc.timestamp("retrySince")?,
        next_attempt_at: doc.timestamp("nextAttemptAt")?,
        delivered_to,
        last_error,
        version: document
            .update_time
            .map(|at| format!("{}.{:09}", at.seconds, at.nanos))
            .unwrap_or_default(),
    })
}

/// A list of strings, as an array value.
pub fn strings(values: impl IntoIterator<Item = impl AsRef<str>>) -> Value {
    Value {
        value_type: Some(ValueType::ArrayValue(ArrayValue {
            values: values
                .into_iter()
                .map(|value| string(value.as_ref()))
                .collect(),
        })),
    }
}

/// An event waiting in the outbox: its payload as the bytes that will be sent and signed.
pub fn outbox_fields(event: &UsageEvent) -> Fields {
    Fields::from([
        ("eventType".to_owned(), string(event.kind.name())),
        ("userId".to_owned(), string(event.user_id.as_str())),
        ("payload".to_owned(), string(&event.payload().to_string())),
        ("status".to_owned(), string("pending")),
        ("attempts".to_owned(), integer(0)),
        ("createdAt".to_owned(), timestamp(event.occurred_at)),
        ("nextAttemptAt".to_owned(), timestamp(event.occurred_at)),
        ("retrySince".to_owned(), timestamp(event.occurred_at)),
    ])
}

/// The fields of a day document with its reservations, for a write masked by
/// [`stored_day_mask`] (so that a day without any loses a stale map).
pub fn stored_day_fields(usage: &DailyUsage, reservations: &Reservations) -> Fields {
    let mut fields = day_fields(usage);
    if !reservations.is_empty() {
        fields.insert(
            RESERVATIONS_FIELD.to_owned(),
            reservations_value(reservations),
        );
    }
    fields
}

/// The value of the `reservations` field.
fn reservations_value(reservations: &Reservations) -> Value {
    map(reservations
        .iter()
        .map(|(id, entry)| (id.to_owned(), map(reservation_entry_fields(*entry))))
        .collect())
}

fn reservation_entry_fields(entry: ReservationEntry) -> Fields {
    let stored = StoredEntry::from(entry);
    let mut fields = Fields::from([
        ("tokens".to_owned(), integer(stored.tokens)),
        ("createdAt".to_owned(), timestamp(stored.created_at)),
        ("expiresAt".to_owned(), timestamp(stored.expires_at)),
        ("status".to_owned(), string(&stored.status)),
    ]);
    if let Some(committed) = stored.committed_tokens {
        fields.insert("committedTokens".to_owned(), integer(committed));
    }
    if let Some(settled_at) = stored.settled_at {
        fields.insert("settledAt".to_owned(), timestamp(settled_at));
    }
    fields
}

/// An entry of `reservations`, or what is wrong with it.
fn reservation_entry(entry: &Reader<'_>) -> Result<ReservationEntry, String> {
    let optional = |field: &str| entry.fields.contains_key(field);
    let stored = StoredEntry {
        tokens: entry.integer("tokens").map_err(|e| e.problem_of_field())?,
        created_at: entry
            .timestamp("createdAt")
            .map_err(|e| e.problem_of_field())?,
        expires_at: entry
            .timestamp("expiresAt")
            .map_err(|e| e.problem_of_field())?,
        status: entry
            .string("status")
            .map_err(|e| e.problem_of_field())?
            .to_owned(),
        committed_tokens: optional("committedTokens")
            .then(|| entry.integer("committedTokens"))
            .transpose()
            .map_err(|e| e.problem_of_field())?,
        settled_at: optional("settledAt")
            .then(|| entry.timestamp("settledAt"))
            .transpose()
            .map_err(|e| e.problem_of_field())?,
    };
    let known = [
        "tokens",
        "createdAt",
        "expiresAt",
        "status",
        "committedTokens",
        "settledAt",
    ];
    if let Some(unknown) = entry
        .fields
        .keys()
        .find(|key| !known.contains(&key.as_str()))
    {
        return Err(format!("has an unknown field {unknown:?}"));
    }
    ReservationEntry::try_from(stored)
}

impl DecodeError {
    /// "field problem", for an error nested in a larger field.
    fn problem_of_field(&self) -> String {
        format!("field {} {}", self.field, self.problem)
    }
}

fn decode_day(doc: &Reader<'_>) -> Result<DailyUsage, DecodeError> {
    Ok(DailyUsage {
        user_id: doc.user_id("userId")?,
        date: doc.date("date")?,
        tokens_used: doc.integer("tokensUsed")?,
        token_limit: doc.integer("tokenLimit")?,
        user_type: doc.user_type("userType")?,
        last_updated: doc.timestamp("lastUpdated")?,
        reset_at: doc.timestamp("resetAt")?,
    })
}

pub fn month_fields(month: &MonthlyUsage) -> Fields {
    let daily_usage = month
        .daily_usage
        .iter()
        .map(|(day, tokens)| (day.clone(), integer(*tokens)))
        .collect();
    Fields::from([
        ("userId".to_owned(), string(month.user_id.as_str())),
        ("year".to_owned(), integer(i64::from(month.year))),
        ("month".to_owned(), integer(i64::from(month.month))),
        ("dailyUsage".to_owned(), map(daily_usage)),
        (
            "totalMonthlyTokens".to_owned(),
            integer(month.total_monthly_tokens),
        ),
        (
            "averageDailyUsage".to_owned(),
            double(month.average_daily_usage),
        ),
        ("peakUsageDate".to_owned(), string(&month.peak_usage_date)),
        (
            "peakUsageTokens".to_owned(),
            integer(month.peak_usage_tokens),
        ),
        ("userType".to_owned(), string(month.user_type.as_str())),
        ("createdAt".to_owned(), timestamp(month.created_at)),
        ("updatedAt".to_owned(), timestamp(month.updated_at)),
    ])
}

pub fn month_from(document: &Document) -> Result<MonthlyUsage, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    Ok(MonthlyUsage {
        user_id: doc.user_id("userId")?,
        year: doc
            .integer("year")?
            .try_into()
            .map_err(|_| doc.error("year", "is out of range"))?,
        month: doc
            .integer("month")?
            .try_into()
            .map_err(|_| doc.error("month", "is out of range"))?,
        daily_usage: doc.counts("dailyUsage")?,
        total_monthly_tokens: doc.integer("totalMonthlyTokens")?,
        average_daily_usage: doc.double("averageDailyUsage")?,
        peak_usage_date: doc.string("peakUsageDate")?.to_owned(),
        peak_usage_tokens: doc.integer("peakUsageTokens")?,
        user_type: doc.user_type("userType")?,
        created_at: doc.timestamp("createdAt")?,
        updated_at: doc.timestamp("updatedAt")?,
    })
}

pub fn idempotency_fields(
    user_id: &UserId,
    key: &str,
    record: &IdempotencyRecord,
    now: DateTime<Utc>,
) -> Fields {
    let mut fields = Fields::from([
        ("userId".to_owned(), string(user_id.as_str())),
        ("key".to_owned(), string(key)),
        (
            "fingerprint".to_owned(),
            string(record.fingerprint.as_str()),
        ),
        ("createdAt".to_owned(), timestamp(now)),
        ("expiresAt".to_owned(), timestamp(record.expires_at)),
    ]);
    let standing = record.response.standing();
    let mut response = day_fields(&standing.day);
    response.insert(
        "reservedTokens".to_owned(),
        integer(standing.reserved_tokens),
    );
    let mut month = Fields::from([
        ("tokensUsed".to_owned(), integer(standing.month.tokens_used)),
        ("resetAt".to_owned(), timestamp(standing.month.reset_at)),
    ]);
    if let Some(limit) = standing.month.limit {
        month.insert("limit".to_owned(), integer(limit));
    }
    response.insert("month".to_owned(), map(month));
    response.insert(
        "enforcement".to_owned(),
        string(standing.enforcement.as_str()),
    );
    if let Some(window) = standing.exceeds {
        response.insert("exceeds".to_owned(), string(window.as_str()));
    }
    fields.insert("response".to_owned(), map(response));
    if let StoredAnswer::Reserved(reservation, _) = &record.response {
        let mut answer = reservation_entry_fields(reservation.entry);
        answer.insert("id".to_owned(), string(reservation.id.as_str()));
        fields.insert(RESERVATION_ANSWER.to_owned(), map(answer));
    }
    fields
}

pub fn idempotency_from(document: &Document) -> Result<IdempotencyRecord, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let response = Reader::new(&document.name, doc.map("response")?);
    let day = decode_day(&response)?;
    let present = |field: &str| response.fields.contains_key(field);
    let standing = Standing {
        // Answers stored before monthly caps show the day as their month.
        month: match present("month") {
            false => MonthStanding::before_months_for(&day),
            true => {
                let month = Reader::new(&document.name, response.map("month")?);
                MonthStanding {
                    tokens_used: month.integer("tokensUsed")?,
                    limit: match month.fields.contains_key("limit") {
                        true => Some(month.integer("limit")?),
                        false => None,
                    },
                    reset_at: month.timestamp("resetAt")?,
                }
            }
        },
        enforcement: match present("enforcement") {
            false => Enforcement::Enforce,
            true => response
                .string("enforcement")?
                .parse()
                .map_err(|_| response.error("enforcement", "is not an enforcement mode"))?,
        },
        exceeds: match present("exceeds") {
            false => None,
            true => Some(
                LimitWindow::parse(response.string("exceeds")?)
                    .ok_or_else(|| response.error("exceeds", "is not a limit window"))?,
            ),
        },
        day,
        // Answers stored before reservations existed held nothing.
        reserved_tokens: match present("reservedTokens") {
            false => 0,
            true => response.integer("reservedTokens")?,
        },
    };
    let answer = match doc.fields.get(RESERVATION_ANSWER) {
        None => StoredAnswer::Recorded(standing),
        Some(_) => {
            let fields = Reader::new(&document.name, doc.map(RESERVATION_ANSWER)?);
            let id = ReservationId::parse(fields.string("id")?)
                .map_err(|_| doc.error("reservation.id", "is not a reservation id"))?;
            let mut entry_fields = fields.fields.clone();
            entry_fields.remove("id");
            let entry = reservation_entry(&Reader::new(&document.name, &entry_fields))
                .map_err(|problem| doc.error(RESERVATION_ANSWER, problem))?;
            StoredAnswer::Reserved(Reservation { id, entry }, standing)
        }
    };
    Ok(IdempotencyRecord {
        fingerprint: Fingerprint::from_stored(doc.string("fingerprint")?.to_owned()),
        response: answer,
        expires_at: doc.timestamp("expiresAt")?,
    })
}

/// `token_limit_overrides/{userId}`.
pub fn override_fields(found: &LimitOverride) -> Fields {
    let mut fields = Fields::from([
        ("userId".to_owned(), string(found.user_id.as_str())),
        ("dailyLimit".to_owned(), integer(found.daily_limit)),
        ("expiresAt".to_owned(), timestamp(found.expires_at)),
        ("reason".to_owned(), string(&found.reason)),
        ("setBy".to_owned(), string(found.set_by.as_str())),
        ("setAt".to_owned(), timestamp(found.set_at)),
    ]);
    if let Some(limit) = found.monthly_limit {
        fields.insert("monthlyLimit".to_owned(), integer(limit));
    }
    if let Some(mode) = found.enforcement {
        fields.insert("enforcement".to_owned(), string(mode.as_str()));
    }
    fields
}

pub fn override_from(document: &Document) -> Result<LimitOverride, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let present = |field: &str| doc.fields.contains_key(field);
    Ok(LimitOverride {
        user_id: doc.user_id("userId")?,
        daily_limit: doc.integer("dailyLimit")?,
        monthly_limit: match present("monthlyLimit") {
            true => Some(doc.integer("monthlyLimit")?),
            false => None,
        },
        enforcement: match present("enforcement") {
            true => Some(
                doc.string("enforcement")?
                    .parse()
                    .map_err(|_| doc.error("enforcement", "is not an enforcement mode"))?,
            ),
            false => None,
        },
        expires_at: doc.timestamp("expiresAt")?,
        reason: doc.string("reason")?.to_owned(),
        set_by: doc.user_id("setBy")?,
        set_at: doc.timestamp("setAt")?,
    })
}

/// `token_limit_audit/{id}`: before and after as JSON text.
pub fn audit_fields(entry: &AuditEntry) -> Fields {
    let mut fields = Fields::from([
        ("at".to_owned(), timestamp(entry.at)),
        ("actor".to_owned(), string(entry.actor.as_str())),
        ("action".to_owned(), string(entry.action.as_str())),
    ]);
    let optional = [
        (
            "userId",
            entry.user_id.as_ref().map(|id| id.as_str().to_owned()),
        ),
        ("before", entry.before.as_ref().map(ToString::to_string)),
        ("after", entry.after.as_ref().map(ToString::to_string)),
        ("idempotencyKey", entry.idempotency_key.clone()),
        ("reason", entry.reason.clone()),
    ];
    for (field, text) in optional {
        if let Some(text) = text {
            fields.insert(field.to_owned(), string(&text));
        }
    }
    fields
}

pub fn audit_from(document: &Document) -> Result<AuditEntry, DecodeError> {
    let doc = Reader::new(&document.name, &document.fields);
    let text = |field: &str| -> Result<Option<String>, DecodeError> {
        match doc.fields.contains_key(field) {
            true => Ok(Some(doc.string(field)?.to_owned())),
            false => Ok(None),
        }
    };
    let json = |field: &str| -> Result<Option<serde_json::Value>, DecodeError> {
        text(field)?
            .map(|text| serde_json::from_str(&text).map_err(|_| doc.error(field, "is not JSON")))
            .transpose()
    };
    let action = doc.string("action")?;
    Ok(AuditEntry {
        id: document_id(document),
        at: doc.timestamp("at")?,
        actor: doc.user_id("actor")?,
        action: AuditAction::parse(action)
            .ok_or_else(|| doc.error("action", "is not an audit action"))?,
        user_id: match doc.fields.contains_key("userId") {
            true => Some(doc.user_id("userId")?),
            false => None,
        },
        before: json("before")?,
        after: json("after")?,
        idempotency_key: text("idempotencyKey")?,
        reason: text("reason")?,
    })
}

fn value(value_type: ValueType) -> Value {
    Value {
        value_type: Some(value_type),
    }
}

pub fn string(text: &str) -> Value {
    value(ValueType::StringValue(text.to_owned()))
}

pub fn integer(number: i64) -> Value {
    value(ValueType::IntegerValue(number))
}

fn double(number: f64) -> Value {
    value(ValueType::DoubleValue(number))
}

fn map(fields: Fields) -> Value {
    value(ValueType::MapValue(MapValue { fields }))
}

pub fn timestamp(at: DateTime<Utc>) -> Value {
    value(ValueType::TimestampValue(to_timestamp(at)))
}

pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Typed access to a document's fields, naming the document and field in every error.
struct Reader<'a> {
    document: &'a str,
    fields: &'a Fields,
}

impl<'a> Reader<'a> {
    fn new(document: &'a str, fields: &'a Fields) -> Self {
        Self { document, fields }
    }

    fn error(&self, field: &str, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            document: self.document.to_owned(),
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    fn get(&self, field: &str) -> Result<&'a ValueType, DecodeError> {
        self.fields
            .get(field)
            .and_then(|value| value.value_type.as_ref())
            .ok_or_else(|| self.error(field, "is missing"))
    }

    fn string(&self, field: &str) -> Result<&'a str, DecodeError> {
        match self.get(field)? {
            ValueType::StringValue(text) => Ok(text),
            _ => Err(self.error(field, "is not a string")),
        }
    }

    fn integer(&self, field: &str) -> Result<i64, DecodeError> {
        match self.get(field)? {
            ValueType::IntegerValue(number) => Ok(*number),
            _ => Err(self.error(field, "is not an integer")),
        }
    }

    /// Another writer (a JavaScript client, say) may store a whole average as an integer.
    fn double(&self, field: &str) -> Result<f64, DecodeError> {
        match self.get(field)? {
            ValueType::DoubleValue(number) => Ok(*number),
            ValueType::IntegerValue(number) => Ok(*number as f64),
            _ => Err(self.error(field, "is not a number")),
        }
    }

    fn timestamp(&self, field: &str) -> Result<DateTime<Utc>, DecodeError> {
        match self.get(field)? {
            ValueType::TimestampValue(at) => {
                let nanos =
                    u32::try_from(at.nanos).map_err(|_| self.error(field, "is out of range"))?;
                DateTime::from_timestamp(at.seconds, nanos)
                    .ok_or_else(|| self.error(field, "is out of range"))
            }
            _ => Err(self.error(field, "is not a timestamp")),
        }
    }

    fn map(&self, field: &str) -> Result<&'a Fields, DecodeError> {
        match self.get(field)? {
            ValueType::MapValue(map) => Ok(&map.fields),
            _ => Err(self.error(field, "is not a map")),
        }
    }

    /// A map of non-negative integers, such as `dailyUsage`.
    fn counts(&self, field: &str) -> Result<BTreeMap<String, i64>, DecodeError> {
        self.map(field)?
            .iter()
            .map(|(key, value)| {
                let entry = || format!("{field}.{key}");
                match value.value_type {
                    Some(ValueType::IntegerValue(count)) if count >= 0 => Ok((key.clone(), count)),
                    _ => Err(self.error(&entry(), "is not a non-negative integer")),
                }
            })
            .collect()
    }

    fn date(&self, field: &str) -> Result<NaiveDate, DecodeError> {
        NaiveDate::parse_from_str(self.string(field)?, "%Y-%m-%d")
            .map_err(|_| self.error(field, "is not a YYYY-MM-DD date"))
    }

    fn user_id(&self, field: &str) -> Result<UserId, DecodeError> {
        UserId::parse(self.string(field)?).map_err(|_| self.error(field, "is not a valid user id"))
    }

    /// Like a token claim, an unknown user type reads as `trial`.
    fn user_type(&self, field: &str) -> Result<UserType, DecodeError> {
        Ok(UserType::from_claim(Some(self.string(field)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn document(fields: Fields) -> Document {
        Document {
            name: "projects/p/databases/(default)/documents/c/d".to_owned(),
            fields,
            ..Default::default()
        }
    }

    fn sample_day() -> DailyUsage {
        DailyUsage {
            user_id: UserId::parse("alice").unwrap(),
            date: NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
            tokens_used: 1250,
            token_limit: 10_000,
            user_type: UserType::Trial,
            last_updated: at("2024-01-15T14:30:00.123Z"),
            reset_at: at("2024-01-16T00:00:00Z"),
        }
    }

    #[test]
    fn a_day_round_trips_with_schema_types() {
        let day = sample_day();
        let fields = day_fields(&day);
        assert!(matches!(
            fields["tokensUsed"].value_type,
            Some(ValueType::IntegerValue(1250))
        ));
        assert!(matches!(
            fields["lastUpdated"].value_type,
            Some(ValueType::TimestampValue(_))
        ));
        assert!(
            matches!(&fields["date"].value_type, Some(ValueType::StringValue(d)) if d == "2024-01-15")
        );
        assert_eq!(day_from(&document(fields)).unwrap(), day);
    }

    #[test]
    fn a_month_round_trips_and_its_average_is_a_double() {
        let month = MonthlyUsage {
            user_id: UserId::parse("alice").unwrap(),
            year: 2024,
            month: 1,
            daily_usage: BTreeMap::from([("01".to_owned(), 850), ("02".to_owned(), 0)]),
            total_monthly_tokens: 850,
            average_daily_usage: 425.0,
            peak_usage_date: "01".to_owned(),
            peak_usage_tokens: 850,
            user_type: UserType::Subscribed,
            created_at: at("2024-01-01T00:00:00Z"),
            updated_at: at("2024-01-02T00:00:00Z"),
        };
        let fields = month_fields(&month);
        assert!(matches!(
            fields["averageDailyUsage"].value_type,
            Some(ValueType::DoubleValue(_))
        ));
        assert!(matches!(
            fields["year"].value_type,
            Some(ValueType::IntegerValue(2024))
        ));
        assert_eq!(month_from(&document(fields)).unwrap(), month);
    }

    /// A one-day month of 10 tokens.
    fn small_month() -> MonthlyUsage {
        MonthlyUsage {
            user_id: UserId::parse("alice").unwrap(),
            year: 2024,
            month: 1,
            daily_usage: BTreeMap::from([("01".to_owned(), 10)]),
            total_monthly_tokens: 10,
            average_daily_usage: 10.0,
            peak_usage_date: "01".to_owned(),
            peak_usage_tokens: 10,
            user_type: UserType::Trial,
            created_at: at("2024-01-01T00:00:00Z"),
            updated_at: at("2024-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_whole_average_written_as_an_integer_is_read() {
        let mut fields = month_fields(&small_month());
        fields.insert("averageDailyUsage".to_owned(), integer(10));
        assert_eq!(
            month_from(&document(fields)).unwrap().average_daily_usage,
            10.0
        );
    }

    #[test]
    fn a_malformed_document_names_its_field() {
        let mut fields = day_fields(&sample_day());
        fields.insert("tokensUsed".to_owned(), string("many"));
        let error = day_from(&document(fields)).unwrap_err().to_string();
        assert!(
            error.contains("tokensUsed") && error.contains("not an integer"),
            "{error}"
        );
        let mut fields = day_fields(&sample_day());
        fields.remove("resetAt");
        assert!(
            day_from(&document(fields))
                .unwrap_err()
                .to_string()
                .contains("resetAt is missing")
        );
    }

    #[test]
    fn a_day_of_a_month_must_be_a_non_negative_integer() {
        for bad in [double(1.5), integer(-1), string("5")] {
            let mut fields = month_fields(&small_month());
            fields.insert(
                "dailyUsage".to_owned(),
                map(Fields::from([("02".to_owned(), bad)])),
            );
            let error = month_from(&document(fields)).unwrap_err().to_string();
            assert!(
                error.contains("documents/c/d") && error.contains("dailyUsage.02"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_idempotency_record_round_trips() {
        let user = UserId::parse("alice").unwrap();
        let record = IdempotencyRecord {
            fingerprint: Fingerprint::of(
                &user,
                crate::usage::Tokens::bounded(1250, 1250).unwrap(),
                None,
            ),
            response: StoredAnswer::Recorded(Standing {
                month: MonthStanding {
                    tokens_used: 9_000,
                    limit: Some(50_000),
                    reset_at: at("2024-02-01T00:00:00Z"),
                },
                enforcement: Enforcement::Shadow,
                exceeds: Some(LimitWindow::Daily),
                day: sample_day(),
                reserved_tokens: 40,
            }),
            expires_at: at("2024-01-16T14:30:00.123Z"),
        };
        let fields = idempotency_fields(&user, "k-1", &record, at("2024-01-15T14:30:00.123Z"));
        assert_eq!(idempotency_from(&document(fields)).unwrap(), record);

        let reserved = IdempotencyRecord {
            response: StoredAnswer::Reserved(
                Reservation {
                    id: ReservationId::new(sample_day().date, at("2024-01-15T14:40:00Z")),
                    entry: held(),
                },
                Standing {
                    month: MonthStanding::before_months_for(&sample_day()),
                    enforcement: Enforcement::Enforce,
                    exceeds: None,
                    day: sample_day(),
                    reserved_tokens: 300,
                },
            ),
            ..record
        };
        let fields = idempotency_fields(&user, "k-2", &reserved, at("2024-01-15T14:30:00.123Z"));
        assert_eq!(idempotency_from(&document(fields)).unwrap(), reserved);
    }

    fn held() -> ReservationEntry {
        ReservationEntry {
            tokens: 300,
            created_at: at("2024-01-15T14:30:00.123Z"),
            expires_at: at("2024-01-15T14:40:00Z"),
            settlement: None,
        }
    }

    #[test]
    fn a_day_with_reservations_round_trips_and_bad_entries_are_named() {
        let committed = ReservationEntry {
            settlement: Some(crate::usage::Settlement::Committed {
                committed_tokens: 320,
                settled_at: at("2024-01-15T14:35:00.5Z"),
            }),
            ..held()
        };
        let id = ReservationId::new(sample_day().date, at("2024-01-15T14:40:00Z"));
        let day = StoredDay {
            usage: sample_day(),
            reservations: [(id.to_string(), held()), ("other".to_owned(), committed)]
                .into_iter()
                .collect(),
            notified: Default::default(),
        };
        let fields = stored_day_fields(&day.usage, &day.reservations);
        assert_eq!(stored_day_from(&document(fields.clone())).unwrap(), day);
        assert_eq!(day_from(&document(fields.clone())).unwrap(), day.usage);

        let mut broken = fields;
        let Some(ValueType::MapValue(reservations)) = broken
            .get_mut(RESERVATIONS_FIELD)
            .and_then(|value| value.value_type.as_mut())
        else {
            panic!("no reservations")
        };
        let Some(ValueType::MapValue(entry)) = reservations
            .fields
            .get_mut("other")
            .and_then(|value| value.value_type.as_mut())
        else {
            panic!("no entry")
        };
        entry.fields.remove("settledAt");
        let error = stored_day_from(&document(broken)).unwrap_err().to_string();
        assert!(error.contains("reservations.other"), "{error}");
        assert!(error.contains("does not fit its fields"), "{error}");
    }
}
