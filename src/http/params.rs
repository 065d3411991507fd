//! Request parameters as types: each one parses itself, names itself in its error, and states
//! its own bounds in the OpenAPI document, so that the document cannot drift from the checks.

use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::request::Parts;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Deserializer};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr, Required, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::usage::{IdempotencyKey, InvalidIdempotencyKey, UserId};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The caller: a verified ID token whose uid can name a document.
pub struct Caller {
    pub principal: Principal,
    pub user_id: UserId,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let user_id = UserId::parse(&principal.uid)
            .map_err(|e| ApiError::InvalidUserId(format!("uid: {e}")))?;
        Ok(Self { principal, user_id })
    }
}

/// A caller with the admin claim, and their uid (what the audit trail names); anyone else is
/// 403.
pub struct Admin(pub UserId);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.principal.admin {
            Ok(Self(caller.user_id))
        } else {
            Err(ApiError::Forbidden("this report is for admins only"))
        }
    }
}

/// The optional `Idempotency-Key` header.
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        let raw = value
            .to_str()
            .map_err(|_| ApiError::InvalidRequest(InvalidIdempotencyKey.to_string()))?;
        IdempotencyKey::parse(raw)
            .map(|key| Self(Some(key)))
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))
    }
}

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .pattern(Some("^[!-~]+$"));
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "A retry with the same key and body within 24 hours is answered as the first \
                     request and counted once",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// A whole number parameter with bounds, parsed from the query string's text so that every
/// bad value gets a message naming the parameter.
macro_rules! bounded_integer {
    ($(#[$doc:meta])* $name:ident($inner:ty), $param:literal, $min:literal..=$max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub $inner);

        impl $name {
            pub const MIN: $inner = $min;
            pub const MAX: $inner = $max;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                raw.parse::<$inner>()
                    .ok()
                    .filter(|value| (Self::MIN..=Self::MAX).contains(value))
                    .map(Self)
                    .ok_or_else(|| {
                        serde::de::Error::custom(concat!(
                            $param, " must be a whole number from ", $min, " to ", $max
                        ))
                    })
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                integer_schema(i64::from(Self::MIN), i64::from(Self::MAX))
            }
        }

        impl ToSchema for $name {}
    };
}

fn integer_schema(min: i64, max: i64) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .minimum(Some(min))
        .maximum(Some(max))
        .into()
}

bounded_integer!(
    /// `months`: how many months of history.
    Months(u32), "months", 1..=24
);
bounded_integer!(
    /// `limit`: items per page.
    Limit(u32), "limit", 1..=500
);
bounded_integer!(
    /// `year` of a monthly report.
    Year(i32), "year", 1970..=9999
);
bounded_integer!(
    /// `month` of a monthly report.
    Month(u32), "month", 1..=12
);

bounded_integer!(
    /// `dailyLimit` of a what-if report: tokens a day, up to a trillion.
    DailyLimit(i64), "dailyLimit", 0..=1000000000000
);

/// `?months=`: how many months of history, 3 unless given.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MonthsQuery {
    /// How many months (default 3).
    #[param(inline)]
    pub months: Option<Months>,
}

impl Months {
    pub fn or_default(months: Option<Self>) -> u32 {
        months.map_or(3, |months| months.0)
    }
}

impl Limit {
    pub fn or_default(limit: Option<Self>) -> u32 {
        limit.map_or(50, |limit| limit.0)
    }
}

/// `date`: a calendar day as `YYYY-MM-DD`, from 1970 to 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportDate(pub NaiveDate);

impl<'de> Deserialize<'de> for ReportDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        NaiveDate::parse_from_str(&raw, "%Y-%m-%d")
            .ok()
            .filter(|date| raw.len() == 10 && (1970..=9999).contains(&date.year()))
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("date must be a calendar date as YYYY-MM-DD"))
    }
}

impl PartialSchema for ReportDate {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
            .into()
    }
}

impl ToSchema for ReportDate {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_parameters_name_themselves_and_their_bounds() {
        let parse = |raw: &str| serde_json::from_value::<Months>(raw.into());
        assert_eq!(parse("24").unwrap(), Months(24));
        for bad in ["0", "25", "-1", "3.5", "three", ""] {
            let error = parse(bad).unwrap_err().to_string();
            assert_eq!(error, "months must be a whole number from 1 to 24", "{bad}");
        }
        assert!(serde_json::from_value::<Year>("1969".into()).is_err());
        assert!(serde_json::from_value::<Limit>("500".into()).is_ok());
        let limit = |raw: &str| serde_json::from_value::<DailyLimit>(raw.into());
        assert_eq!(limit("0").unwrap(), DailyLimit(0));
        assert!(limit("1000000000000").is_ok());
        for bad in ["-1", "1000000000001", "1e3"] {
            let error = limit(bad).unwrap_err().to_string();
            assert_eq!(
                error, "dailyLimit must be a whole number from 0 to 1000000000000",
                "{bad}"
            );
        }
    }

    #[test]
    fn report_dates_are_full_calendar_dates() {
        let parse = |raw: &str| serde_json::from_value::<ReportDate>(raw.into());
        assert!(parse("2024-02-29").is_ok());
        for bad in [
            "2023-02-29",
            "2024-1-05",
            "15-01-2024",
            "0999-01-01",
            "yesterday",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
