//! The record plan: everything a `POST /usage` decides, as one pure function of the documents
//! it reads. A store only reads the snapshot and applies the writes, all or nothing, on the
//! condition that the snapshot is still current; the steps themselves live here once.

use chrono::{DateTime, Utc};

use super::{
    DailyUsage, DayWindow, Decision, DecisionError, DecisionInput, Fingerprint, IdempotencyCheck,
    IdempotencyKey, IdempotencyRecord, Limits, MonthlyUsage, Tokens, UserId, UserType, decide,
};

/// One `POST /usage`, its user type resolved, ready for a store to plan and apply.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub user_id: UserId,
    pub tokens: Tokens,
    pub user_type: UserType,
    pub window: DayWindow,
    pub limits: Limits,
    pub now: DateTime<Utc>,
    pub idempotency: Option<(IdempotencyKey, Fingerprint)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Counted; the day as it now stands.
    Admitted(DailyUsage),
    /// Over the limit, nothing written; the day as it stands.
    Denied(DailyUsage),
    /// The idempotency key was seen with this body: the first answer, nothing written.
    Replayed(DailyUsage),
    /// The idempotency key was seen with another body: nothing written.
    KeyReused,
}

/// The documents a record reads, as they stood at one instant; absent when they do not exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub day: Option<DailyUsage>,
    pub month: Option<MonthlyUsage>,
    /// Read only for a request with an idempotency key.
    pub idempotency: Option<IdempotencyRecord>,
}

/// What an admitted record writes, all together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Writes {
    pub day: DailyUsage,
    pub month: MonthlyUsage,
    /// The answer remembered under the request's idempotency key.
    pub idempotency: Option<IdempotencyRecord>,
}

/// The answer, and the writes that must succeed for it to be true.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub outcome: RecordOutcome,
    pub writes: Option<Writes>,
}

impl Plan {
    fn answer(outcome: RecordOutcome) -> Self {
        Self {
            outcome,
            writes: None,
        }
    }
}

impl RecordRequest {
    /// `daily_token_usage/{id}` of the request's day.
    pub fn day_id(&self) -> String {
        DailyUsage::document_id(&self.user_id, self.window.date)
    }

    /// `token_usage_history/{id}` of the request's month.
    pub fn month_id(&self) -> String {
        MonthlyUsage::document_id(&self.user_id, self.window.year(), self.window.month())
    }

    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency.as_ref().map(|(key, _)| key)
    }

    /// The idempotency check, then the decision, then the writes: the whole rule of a record.
    pub fn plan(&self, snapshot: &Snapshot) -> Result<Plan, DecisionError> {
        if let Some((_, fingerprint)) = &self.idempotency {
            match IdempotencyCheck::of(snapshot.idempotency.as_ref(), fingerprint, self.now) {
                IdempotencyCheck::Replay(day) => {
                    return Ok(Plan::answer(RecordOutcome::Replayed(day)));
                }
                IdempotencyCheck::Reused => return Ok(Plan::answer(RecordOutcome::KeyReused)),
                IdempotencyCheck::New => {}
            }
        }
        let input = DecisionInput {
            user_id: &self.user_id,
            tokens: self.tokens,
            user_type: self.user_type,
            window: &self.window,
            limits: &self.limits,
            now: self.now,
        };
        let (day, month) = match decide(snapshot.day.as_ref(), snapshot.month.as_ref(), input)? {
            // A denial writes nothing, not even its idempotency key: a retry is decided afresh.
            Decision::Denied { day } => return Ok(Plan::answer(RecordOutcome::Denied(day))),
            Decision::Admitted { day, month } => (day, month),
        };
        let idempotency = self
            .idempotency
            .as_ref()
            .map(|(_, fingerprint)| IdempotencyRecord {
                fingerprint: fingerprint.clone(),
                response: day.clone(),
                expires_at: self.now + IdempotencyKey::LIFETIME,
            });
        Ok(Plan {
            outcome: RecordOutcome::Admitted(day.clone()),
            writes: Some(Writes {
                day,
                month,
                idempotency,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::Tz;

    use super::*;

    fn request(tokens: i64, key: Option<&str>) -> RecordRequest {
        let now = DateTime::parse_from_rfc3339("2024-01-15T10:00:00Z")
            .unwrap()
            .to_utc();
        let user_id = UserId::parse("alice").unwrap();
        let tokens = Tokens::bounded(tokens, i64::MAX).unwrap();
        RecordRequest {
            idempotency: key.map(|key| {
                (
                    IdempotencyKey::parse(key).unwrap(),
                    Fingerprint::of(&user_id, tokens, None),
                )
            }),
            user_id,
            tokens,
            user_type: UserType::Trial,
            window: DayWindow::containing(now, Tz::UTC),
            limits: Limits::uniform(100),
            now,
        }
    }

    #[test]
    fn an_admitted_record_writes_the_day_the_month_and_its_key() {
        let plan = request(60, Some("k")).plan(&Snapshot::default()).unwrap();
        let writes = plan.writes.unwrap();
        assert_eq!(plan.outcome, RecordOutcome::Admitted(writes.day.clone()));
        assert_eq!(writes.day.tokens_used, 60);
        assert_eq!(writes.month.total_monthly_tokens, 60);
        let remembered = writes.idempotency.unwrap();
        assert_eq!(remembered.response, writes.day);
        assert_eq!(
            remembered.expires_at,
            request(60, None).now + IdempotencyKey::LIFETIME
        );
        assert!(
            request(60, None)
                .plan(&Snapshot::default())
                .unwrap()
                .writes
                .unwrap()
                .idempotency
                .is_none()
        );
    }

    #[test]
    fn a_denial_writes_nothing_not_even_its_key() {
        let first = request(60, None).plan(&Snapshot::default()).unwrap();
        let written = first.writes.unwrap();
        let snapshot = Snapshot {
            day: Some(written.day),
            month: Some(written.month),
            idempotency: None,
        };
        let denied = request(41, Some("k")).plan(&snapshot).unwrap();
        assert!(matches!(denied.outcome, RecordOutcome::Denied(_)));
        assert_eq!(denied.writes, None);
    }

    #[test]
    fn a_seen_key_replays_or_refuses_and_writes_nothing() {
        let first = request(10, Some("k")).plan(&Snapshot::default()).unwrap();
        let written = first.writes.unwrap();
        let snapshot = Snapshot {
            idempotency: written.idempotency.clone(),
            day: Some(written.day.clone()),
            month: Some(written.month),
        };
        let replay = request(10, Some("k")).plan(&snapshot).unwrap();
        assert_eq!(replay.outcome, RecordOutcome::Replayed(written.day));
        assert_eq!(replay.writes, None);
        let reused = request(11, Some("k")).plan(&snapshot).unwrap();
        assert_eq!(reused.outcome, RecordOutcome::KeyReused);
        assert_eq!(reused.writes, None);
    }
}
