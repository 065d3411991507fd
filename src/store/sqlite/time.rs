//! Timestamps and dates in the text rusqlite's chrono support stores
//! (`2024-01-15 10:00:00.123+00:00`, `2024-01-15`), written and read with chrono's RFC 3339 and
//! ISO 8601 routines instead of its `strftime` interpreter, which parses the pattern on every
//! call: a record converts half a dozen of them.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A timestamp column.
pub(super) struct SqlTime(pub DateTime<Utc>);

impl ToSql for SqlTime {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        // `%F %T%.f%:z`: RFC 3339 with a space, the fraction in 0, 3, 6 or 9 digits.
        let mut text = self.0.to_rfc3339_opts(SecondsFormat::AutoSi, false);
        text.replace_range(10..11, " ");
        Ok(ToSqlOutput::from(text))
    }
}

impl FromSql for SqlTime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        if let ValueRef::Text(bytes) = value
            && let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(at) = DateTime::parse_from_rfc3339(text)
        {
            return Ok(Self(at.with_timezone(&Utc)));
        }
        // Anything else rusqlite accepts (integers, other spellings) still reads.
        DateTime::<Utc>::column_result(value).map(Self)
    }
}

/// A date column.
pub(super) struct SqlDate(pub NaiveDate);

impl ToSql for SqlDate {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_string()))
    }
}

impl FromSql for SqlDate {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        NaiveDate::column_result(value).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn text(value: &impl ToSql) -> String {
        match value.to_sql().unwrap() {
            ToSqlOutput::Owned(rusqlite::types::Value::Text(text)) => text,
            other => panic!("not text: {other:?}"),
        }
    }

    fn instants() -> Vec<DateTime<Utc>> {
        let base = Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap();
        [0, 123_000_000, 123_456_000, 123_456_789, 5_000, 1]
            .into_iter()
            .map(|nanos| base + chrono::Duration::nanoseconds(nanos))
            .chain([Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()])
            .collect()
    }

    #[test]
    fn writes_exactly_what_rusqlite_writes() {
        for at in instants() {
            assert_eq!(text(&SqlTime(at)), text(&at), "{at:?}");
        }
        let date = NaiveDate::from_ymd_opt(2024, 2, 9).unwrap();
        assert_eq!(text(&SqlDate(date)), text(&date));
    }

    #[test]
    fn reads_what_either_wrote_and_what_rusqlite_reads() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        for at in instants() {
            let stored = text(&at);
            let read: SqlTime = connection
                .query_row("SELECT ?1", [&stored], |row| row.get(0))
                .unwrap();
            assert_eq!(read.0, at, "{stored}");
        }
        for stored in ["2024-01-15T10:00:00Z", "2024-01-15 10:00:00", "1705312800"] {
            let ours: SqlTime = connection
                .query_row(&format!("SELECT {}", sql_literal(stored)), [], |row| {
                    row.get(0)
                })
                .unwrap();
            let theirs: DateTime<Utc> = connection
                .query_row(&format!("SELECT {}", sql_literal(stored)), [], |row| {
                    row.get(0)
                })
                .unwrap();
            assert_eq!(ours.0, theirs, "{stored}");
        }
    }

    /// An integer stays an integer; anything else is quoted text.
    fn sql_literal(stored: &str) -> String {
        if stored.bytes().all(|b| b.is_ascii_digit()) {
            stored.to_owned()
        } else {
            format!("'{stored}'")
        }
    }
}
