//! The reads behind the reports: a user's day and months, report pages in index order, and
//! the day's totals counted by aggregation queries.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};
use firestore::gcloud_sdk::google::firestore::v1::structured_aggregation_query::{
    Aggregation, aggregation,
};
use firestore::gcloud_sdk::google::firestore::v1::structured_query::{
    CollectionSelector, CompositeFilter, Direction as OrderDirection, FieldFilter, FieldReference,
    Filter, Order, composite_filter, field_filter, filter,
};
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    Cursor, Document, RunAggregationQueryRequest, StructuredAggregationQuery, StructuredQuery,
    Value, run_aggregation_query_request, structured_aggregation_query,
};
use firestore::gcloud_sdk::tonic::Status;
use futures_util::{StreamExt, TryStreamExt};

use super::FirestoreStore;
use super::client::{MAX_RPC_TIMEOUT, Snapshot, read_failure};
use super::codec;
use crate::store::queries::{
    self, Bound, DAILY_COLLECTION, Direction, HISTORY_COLLECTION, QueryShape,
};
use crate::usage::{
    DailySummary, DailyUsage, DayAndMonth, MonthlySummary, MonthlyUsage, OverLimit, Page,
    PageCursor, PageRequest, StoreError, UsageTotals, UserId, UserType, days_of_month,
};

/// The days of a month counted at once: a few round trips, not a burst of one per day.
const DAYS_AT_ONCE: usize = 8;

impl FirestoreStore {
    /// Counts the documents of a query and sums their field `summed`, in Firestore, in the
    /// `snapshot`; returns the transaction that holds it.
    pub(super) async fn totals(
        &self,
        shape: &QueryShape,
        summed: &str,
        values: &[Value],
        snapshot: Snapshot,
    ) -> Result<(UsageTotals, Vec<u8>), StoreError> {
        let field = FieldReference {
            field_path: summed.to_owned(),
        };
        let aggregations = vec![
            Aggregation {
                alias: "users".to_owned(),
                operator: Some(aggregation::Operator::Count(aggregation::Count {
                    up_to: None,
                })),
            },
            Aggregation {
                alias: "tokens".to_owned(),
                operator: Some(aggregation::Operator::Sum(aggregation::Sum {
                    field: Some(field),
                })),
            },
        ];
        let request = RunAggregationQueryRequest {
            parent: format!("{}/documents", self.database),
            query_type: Some(
                run_aggregation_query_request::QueryType::StructuredAggregationQuery(
                    StructuredAggregationQuery {
                        aggregations,
                        query_type: Some(structured_aggregation_query::QueryType::StructuredQuery(
                            structured_query(shape, values),
                        )),
                    },
                ),
            ),
            consistency_selector: Some(snapshot.selector(
                run_aggregation_query_request::ConsistencySelector::NewTransaction,
                run_aggregation_query_request::ConsistencySelector::Transaction,
            )),
            ..Default::default()
        };
        self.counters.rpc();
        let read = async {
            let mut stream = self
                .client()
                .run_aggregation_query(Self::request(request, MAX_RPC_TIMEOUT))
                .await?
                .into_inner();
            let mut fields = HashMap::new();
            let mut transaction = None;
            while let Some(response) = stream.message().await? {
                if !response.transaction.is_empty() {
                    transaction = Some(response.transaction);
                }
                fields.extend(
                    response
                        .result
                        .map(|result| result.aggregate_fields)
                        .unwrap_or_default(),
                );
            }
            Ok::<_, Status>((fields, transaction))
        };
        let (fields, begun) = read
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
        let transaction = snapshot.held(begun)?;
        // An aggregation is billed one read per 1,000 index entries it scans, and at least one.
        self.counters.reads(1);
        let number = |alias: &str| match fields
            .get(alias)
            .and_then(|value| value.value_type.as_ref())
        {
            Some(ValueType::IntegerValue(number)) => Ok(*number),
            Some(ValueType::DoubleValue(number)) => Ok(*number as i64),
            _ => Err(StoreError::Internal(format!(
                "aggregation result {alias} is missing"
            ))),
        };
        let totals = UsageTotals {
            active_users: number("users")?,
            total_tokens: number("tokens")?,
        };
        Ok((totals, transaction))
    }

    /// Runs a query of a declared shape with the given equality values, in its order.
    async fn query(
        &self,
        shape: &QueryShape,
        equals: &[Value],
        limit: u32,
        start_after: Option<&PageCursor>,
    ) -> Result<Vec<Document>, StoreError> {
        let mut query = structured_query(shape, equals);
        query.limit = Some(i32::try_from(limit).unwrap_or(i32::MAX));
        // The order is (figure desc, userId asc): resume after the last item's values.
        query.start_at = start_after.map(|after| Cursor {
            values: vec![
                codec::integer(after.figure),
                codec::string(after.user_id.as_str()),
            ],
            before: false,
        });
        self.run_query(query).await
    }

    /// Both documents in one read, at one time.
    pub(super) async fn read_day_and_month(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<DayAndMonth, StoreError> {
        let day = self.document_name(DAILY_COLLECTION, &DailyUsage::document_id(user_id, date));
        let month = self.document_name(
            HISTORY_COLLECTION,
            &MonthlyUsage::document_id(user_id, date.year(), date.month()),
        );
        let found = self
            .batch_get(&[&day, &month], MAX_RPC_TIMEOUT)
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
        Ok(DayAndMonth {
            day: found.get(&day).map(codec::stored_day_from).transpose()?,
            month: found.get(&month).map(codec::month_from).transpose()?,
        })
    }

    pub(super) async fn read_months(
        &self,
        user_id: &UserId,
        limit: u32,
    ) -> Result<Vec<MonthlyUsage>, StoreError> {
        let equals = [codec::string(user_id.as_str())];
        let documents = self
            .query(&queries::USER_HISTORY, &equals, limit, None)
            .await?;
        decode_all(&documents, codec::month_from)
    }

    pub(super) async fn read_daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        let mut equals = vec![codec::string(&date.format("%Y-%m-%d").to_string())];
        let shape = match user_type {
            Some(user_type) => {
                equals.push(codec::string(user_type.as_str()));
                &queries::DAILY_REPORT_BY_TYPE
            }
            None => &queries::DAILY_REPORT,
        };
        let documents = self
            .query(shape, &equals, page.limit + 1, page.after.as_ref())
            .await?;
        let items = decode_all(&documents, codec::day_from)?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    pub(super) async fn read_monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        let mut equals = vec![
            codec::integer(i64::from(year)),
            codec::integer(i64::from(month)),
        ];
        let shape = match user_type {
            Some(user_type) => {
                equals.push(codec::string(user_type.as_str()));
                &queries::MONTHLY_REPORT_BY_TYPE
            }
            None => &queries::MONTHLY_REPORT,
        };
        let documents = self
            .query(shape, &equals, page.limit + 1, page.after.as_ref())
            .await?;
        let items = decode_all(&documents, codec::month_from)?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    /// The totals of `shape` (summing `summed`) for each user type, with the values
    /// `of_type` gives it: one aggregation query per type, the first beginning the read-only
    /// transaction that the others read in, so that every figure is of one instant even while
    /// users upgrade. Returns the transaction, for more figures of that instant.
    async fn totals_by_type(
        &self,
        shape: &QueryShape,
        summed: &str,
        of_type: impl Fn(UserType) -> Vec<Value>,
    ) -> Result<(Vec<(UserType, UsageTotals)>, Vec<u8>), StoreError> {
        let [first, rest @ ..] = UserType::ALL;
        let (first_totals, transaction) = self
            .totals(shape, summed, &of_type(first), Snapshot::Begin)
            .await?;
        let in_snapshot = &transaction;
        let of_type = &of_type;
        let rest = futures_util::future::try_join_all(rest.map(|user_type| async move {
            let (totals, _) = self
                .totals(
                    shape,
                    summed,
                    &of_type(user_type),
                    Snapshot::Of(in_snapshot.clone()),
                )
                .await?;
            Ok::<_, StoreError>((user_type, totals))
        }))
        .await?;
        let by_type = std::iter::once((first, first_totals)).chain(rest).collect();
        Ok((by_type, transaction))
    }

    pub(super) async fn count_daily_summary(
        &self,
        date: NaiveDate,
    ) -> Result<DailySummary, StoreError> {
        let day = codec::string(&date.format("%Y-%m-%d").to_string());
        let (by_type, _) = self
            .totals_by_type(&queries::DAILY_SUMMARY_BY_TYPE, "tokensUsed", |user_type| {
                vec![day.clone(), codec::string(user_type.as_str())]
            })
            .await?;
        Ok(DailySummary::from_counts(by_type))
    }

    /// The month documents' totals per user type, then one aggregation per day of the month
    /// over the day documents, a few days at a time, all in one read-only transaction. Each
    /// aggregation is billed one read per 1,000 index entries it scans, and at least one: a
    /// report costs the number of user types plus the month's days (33 for 31 days) while
    /// fewer than 1,000 users of a type are active in the month and a day, the cost of
    /// reading 33 documents.
    pub(super) async fn count_monthly_summary(
        &self,
        year: i32,
        month: u32,
    ) -> Result<MonthlySummary, StoreError> {
        let days = days_of_month(year, month)?;
        let (by_type, transaction) = self
            .totals_by_type(
                &queries::MONTHLY_SUMMARY_BY_TYPE,
                "totalMonthlyTokens",
                |user_type| {
                    vec![
                        codec::integer(i64::from(year)),
                        codec::integer(i64::from(month)),
                        codec::string(user_type.as_str()),
                    ]
                },
            )
            .await?;
        let transaction = &transaction;
        let by_day: Vec<_> = futures_util::stream::iter(days.clone())
            .map(|date: NaiveDate| async move {
                let day = [codec::string(&date.format("%Y-%m-%d").to_string())];
                let (totals, _) = self
                    .totals(
                        &queries::DAILY_TOTALS,
                        "tokensUsed",
                        &day,
                        Snapshot::Of(transaction.clone()),
                    )
                    .await?;
                Ok::<_, StoreError>((date, totals))
            })
            .buffered(DAYS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(MonthlySummary::from_counts(&days, by_type, by_day))
    }

    /// Two aggregation queries at one read time: the day's active users of the type (the
    /// summary's query), then the number and the summed tokens of those above `limit`.
    pub(super) async fn count_over_limit(
        &self,
        date: NaiveDate,
        user_type: UserType,
        limit: i64,
    ) -> Result<OverLimit, StoreError> {
        let of_type = [
            codec::string(&date.format("%Y-%m-%d").to_string()),
            codec::string(user_type.as_str()),
        ];
        let (active, transaction) = self
            .totals(
                &queries::DAILY_SUMMARY_BY_TYPE,
                "tokensUsed",
                &of_type,
                Snapshot::Begin,
            )
            .await?;
        let mut above_limit = of_type.to_vec();
        above_limit.push(codec::integer(limit));
        let (above, _) = self
            .totals(
                &queries::DAILY_OVER_LIMIT_BY_TYPE,
                "tokensUsed",
                &above_limit,
                Snapshot::Of(transaction),
            )
            .await?;
        let UsageTotals {
            active_users: users_above,
            total_tokens: their_tokens,
        } = above;
        Ok(OverLimit::from_counts(
            active.active_users,
            users_above,
            their_tokens,
            limit,
        ))
    }

    /// Reads a document that never exists: an answer, even "not found", means reachable.
    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        self.get(self.document_name(DAILY_COLLECTION, "readiness-probe"))
            .await
            .map(drop)
    }
}

fn decode_all<T>(
    documents: &[Document],
    decode: impl Fn(&Document) -> Result<T, codec::DecodeError>,
) -> Result<Vec<T>, StoreError> {
    documents
        .iter()
        .map(|document| decode(document).map_err(StoreError::from))
        .collect()
}

/// The query of `shape` with its `values`: the equality values in order, then the range's
/// bound when it is supplied. Equality values left out at the end leave their filters out (a
/// maintenance scan of every user runs its user's shape without one).
pub(super) fn structured_query(shape: &QueryShape, values: &[Value]) -> StructuredQuery {
    debug_assert!(
        values.len() <= shape.value_count(),
        "too many values for {}",
        shape.name
    );
    let (equals, supplied) = values.split_at(shape.equality.len().min(values.len()));
    let range = shape.above.map(|above| {
        let bound = match above.bound {
            Bound::Zero => codec::integer(0),
            // Missing, it is a value of no type, which Firestore refuses: never a query
            // without its range.
            Bound::Supplied => supplied.first().cloned().unwrap_or_default(),
        };
        field_condition(above.field, field_filter::Operator::GreaterThan, bound)
    });
    let filters = shape
        .equality
        .iter()
        .zip(equals)
        .map(|(path, value)| field_condition(path, field_filter::Operator::Equal, value.clone()))
        .chain(range)
        .collect();
    let field = |path: &str| {
        Some(FieldReference {
            field_path: path.to_owned(),
        })
    };
    let order_by = shape
        .order
        .iter()
        .map(|(path, direction)| Order {
            field: field(path),
            direction: match direction {
                Direction::Ascending => OrderDirection::Ascending,
                Direction::Descending => OrderDirection::Descending,
            } as i32,
        })
        .collect();
    StructuredQuery {
        from: vec![CollectionSelector {
            collection_id: shape.collection.to_owned(),
            all_descendants: false,
        }],
        r#where: all_of(filters),
        order_by,
        ..Default::default()
    }
}

/// One condition on a field.
pub(super) fn field_condition(path: &str, op: field_filter::Operator, value: Value) -> Filter {
    Filter {
        filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
            field: Some(FieldReference {
                field_path: path.to_owned(),
            }),
            op: op as i32,
            value: Some(value),
        })),
    }
}

/// All of `filters`, as a query's `where`: none, the one, or their conjunction.
pub(super) fn all_of(mut filters: Vec<Filter>) -> Option<Filter> {
    match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter {
            filter_type: Some(filter::FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters,
            })),
        }),
    }
}
