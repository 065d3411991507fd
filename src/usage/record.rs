//! The record plan: everything a `POST /usage` or a reservation decides, as one pure function
//! of the documents it reads. A store only reads the snapshot and applies the writes, all or
//! nothing, on the condition that the snapshot is still current; the steps themselves live
//! here once.

use chrono::{DateTime, Duration, Utc};

use super::decision::month_after;
use super::reservation::MAX_ENTRIES_PER_DAY;
use super::{
    AuditAction, AuditEntry, DailyUsage, DayWindow, Decision, DecisionError, DecisionInput,
    Enforcement, Fingerprint, IdempotencyCheck, IdempotencyKey, IdempotencyRecord, LimitOverride,
    LimitWindow, Limits, Marks, MonthStanding, MonthlyUsage, Policy, Raised, Reservation,
    ReservationEntry, ReservationId, Reservations, Settlement, Standing, StoredAnswer, StoredDay,
    Thresholds, Tokens, UserId, UserType, decide, limits_for,
};

/// What a request does to the user's day.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /usage`: spend tokens now, if they fit (or whatever the mode lets through).
    Spend { tokens: Tokens, user_type: UserType },
    /// Hold an estimate for a reply, if it fits; `shadow` and `off` never refuse a hold.
    Reserve {
        id: ReservationId,
        tokens: Tokens,
        user_type: UserType,
    },
    /// Record what a reserved reply spent, and end its hold.
    Commit { id: ReservationId, tokens: Tokens },
    /// End a hold without recording anything.
    Release { id: ReservationId },
    /// An admin sets the day's tokens to 0, and its entry in the month, audited.
    Reset { actor: UserId, reason: String },
}

/// One request, its user type resolved, ready for a store to plan and apply.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub user_id: UserId,
    pub action: Action,
    /// The day the request counts on: today, or a reservation's day.
    pub window: DayWindow,
    /// The configured policy of each user type (an active override in the snapshot replaces
    /// it): the spent or reserved type's for a decision, the day's stored type's for the
    /// answer of a settlement.
    pub limits: Limits,
    /// How long after expiry a reservation may still be committed.
    pub commit_grace: Duration,
    pub now: DateTime<Utc>,
    pub idempotency: Option<(IdempotencyKey, Fingerprint)>,
    /// The admin recording for another user, when their records are audited: what a spend or
    /// commit records is then audited in the same write.
    pub audit_actor: Option<UserId>,
    /// Where events are raised; none when no sink is configured.
    pub thresholds: Thresholds,
}

/// Why a commit or release cannot be done; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationRefusal {
    /// No such reservation (it never existed, or is not this user's).
    NotFound,
    /// It expired (past any grace) before it was settled.
    Expired,
    /// Already committed, with this many tokens.
    Committed { committed_tokens: i64 },
    /// Already released.
    Released,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Let through; the day as it now stands. Counted unless the mode is `off`
    /// (`standing.enforcement`); in `shadow`, `standing.exceeds` names the window `enforce`
    /// would have refused on.
    Admitted(Standing),
    /// Over a limit (`standing.exceeds` says which), nothing written; the day as it stands.
    Denied(Standing),
    /// The idempotency key was seen with this body: the first answer, nothing written.
    Replayed(StoredAnswer),
    /// The idempotency key was seen with another body: nothing written.
    KeyReused,
    /// The estimate is held.
    Reserved(Reservation, Standing),
    /// The day keeps as many reservations as it may: nothing held; the day as it stands.
    Crowded(Standing),
    /// Committed or released; `replayed` when it already was, with the same outcome.
    Settled {
        reservation: Reservation,
        standing: Standing,
        replayed: bool,
    },
    /// The reservation cannot be settled so; nothing written.
    Refused(ReservationRefusal),
    /// The day was reset; how it stands now, and the tokens it had.
    Reset {
        standing: Standing,
        tokens_before: i64,
    },
}

/// What a store reports once it has applied a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub outcome: RecordOutcome,
    /// Holds that expired unsettled and that this request's write dropped from the day.
    pub expired_holds: Vec<ReservationEntry>,
    /// Threshold events written to the outbox with the usage.
    pub events_written: usize,
}

impl Recorded {
    /// Whether the record wrote the user's day: refusals, replays and uncounted admissions
    /// write nothing.
    pub fn wrote_day(&self) -> bool {
        match &self.outcome {
            RecordOutcome::Admitted(standing) => standing.enforcement != Enforcement::Off,
            RecordOutcome::Reserved(..) | RecordOutcome::Reset { .. } => true,
            RecordOutcome::Settled { replayed, .. } => !replayed,
            RecordOutcome::Denied(_)
            | RecordOutcome::Replayed(_)
            | RecordOutcome::KeyReused
            | RecordOutcome::Crowded(_)
            | RecordOutcome::Refused(_) => false,
        }
    }
}

/// The documents a record reads, as they stood at one instant; absent when they do not exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub day: Option<StoredDay>,
    /// The month of the request's day: its cap is checked, and every answer shows its total.
    pub month: Option<MonthlyUsage>,
    /// Read only for a request with an idempotency key.
    pub idempotency: Option<IdempotencyRecord>,
    /// The user's override, as the store knows it: it replaces the configured limits while it
    /// is active at the request's instant.
    pub limit_override: Option<LimitOverride>,
    /// The events the month already raised (its `notified` field).
    pub month_notified: Marks,
}

/// What a plan writes, all together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Writes {
    pub day: DailyUsage,
    /// The day's reservations when they change; `None` leaves them as stored.
    pub reservations: Option<Reservations>,
    /// The month, when the day's tokens change.
    pub month: Option<MonthlyUsage>,
    /// The answer remembered under the request's idempotency key.
    pub idempotency: Option<IdempotencyRecord>,
    /// The audit entry of an admin's change, written with it.
    pub audit: Option<AuditEntry>,
    pub expired_holds: Vec<ReservationEntry>,
    /// The events raised, each an outbox entry written with the usage, and the marks the day
    /// and the month keep of them.
    pub raised: Raised,
}

impl Writes {
    /// The day alone, as it stands: what a refusal writes when it raises an event.
    fn day_only(day: DailyUsage) -> Self {
        Self {
            day,
            reservations: None,
            month: None,
            idempotency: None,
            audit: None,
            expired_holds: Vec::new(),
            raised: Raised::default(),
        }
    }
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

    /// What happened, once the writes (if any) are applied.
    pub fn applied(self) -> Recorded {
        let (expired_holds, events_written) = self
            .writes
            .map(|writes| (writes.expired_holds, writes.raised.events.len()))
            .unwrap_or_default();
        Recorded {
            outcome: self.outcome,
            expired_holds,
            events_written,
        }
    }
}

/// The day's reservations after dropping what can be forgotten, and the tokens still held.
struct Holds {
    kept: Reservations,
    expired: Vec<ReservationEntry>,
    held: i64,
    /// Whether anything was dropped (pruning only ever removes entries).
    pruned: bool,
}

impl Holds {
    /// The kept reservations, when pruning changed them: a write that changes nothing else of
    /// them must still store that.
    fn pruned_if_changed(&self) -> Option<Reservations> {
        self.pruned.then(|| self.kept.clone())
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

    /// The idempotency check, then the action's rule, then the writes: the whole rule of a
    /// request. Every write of a day also drops the reservations it no longer needs.
    pub fn plan(&self, snapshot: &Snapshot) -> Result<Plan, DecisionError> {
        let active = (snapshot.limit_override.as_ref()).filter(|found| found.active_at(self.now));
        let plan = match active {
            Some(found) => RecordRequest {
                limits: limits_for(self.limits, Some(found), self.now),
                ..self.clone()
            }
            .plan_under_limits(snapshot)?,
            None => self.plan_under_limits(snapshot)?,
        };
        Ok(self.with_events(plan, snapshot))
    }

    /// The plan with the events its outcome raises, written with it: a record that counted
    /// tokens raises each threshold it newly reached, and the day's first refusal raises one.
    /// Nothing else raises anything, and a plan that raises nothing is left as it was.
    fn with_events(&self, mut plan: Plan, snapshot: &Snapshot) -> Plan {
        if self.thresholds.is_empty() {
            return plan;
        }
        let day_notified = snapshot.day.as_ref().map(|day| &day.notified);
        let day_notified = day_notified.cloned().unwrap_or_default();
        let (raised, standing) = match (&plan.outcome, plan.writes.is_some()) {
            (RecordOutcome::Admitted(standing), true)
            | (RecordOutcome::Settled { standing, .. }, true) => (
                self.thresholds.crossed(
                    standing,
                    &day_notified,
                    &snapshot.month_notified,
                    self.now,
                ),
                standing,
            ),
            (RecordOutcome::Denied(standing), false) => (
                self.thresholds.denied(standing, &day_notified, self.now),
                standing,
            ),
            _ => return plan,
        };
        if raised.events.is_empty() {
            return plan;
        }
        let day = standing.day.clone();
        plan.writes
            .get_or_insert_with(|| Writes::day_only(day))
            .raised = raised;
        plan
    }

    /// The plan under `self.limits`, the override already applied.
    fn plan_under_limits(&self, snapshot: &Snapshot) -> Result<Plan, DecisionError> {
        if let Some((_, fingerprint)) = &self.idempotency {
            match IdempotencyCheck::of(snapshot.idempotency.as_ref(), fingerprint, self.now) {
                IdempotencyCheck::Replay(answer) => {
                    return Ok(Plan::answer(RecordOutcome::Replayed(*answer)));
                }
                IdempotencyCheck::Reused => return Ok(Plan::answer(RecordOutcome::KeyReused)),
                IdempotencyCheck::New => {}
            }
        }
        let stored = snapshot.day.as_ref().map(|day| &day.reservations);
        let (kept, expired) = stored
            .map(|stored| stored.pruned(self.now, self.commit_grace))
            .unwrap_or_default();
        let holds = Holds {
            held: kept.held_at(self.now),
            pruned: stored.map_or(0, Reservations::len) != kept.len(),
            kept,
            expired,
        };
        let day = snapshot.day.as_ref().map(|day| &day.usage);
        let month = snapshot.month.as_ref();
        match &self.action {
            Action::Spend { tokens, user_type } => {
                self.spend(day, month, holds, *tokens, *user_type)
            }
            Action::Reserve {
                id,
                tokens,
                user_type,
            } => self.reserve(day, month, holds, id, *tokens, *user_type),
            Action::Commit { id, tokens } => self.commit(day, month, holds, id, *tokens),
            Action::Release { id } => Ok(self.release(day, month, holds, id)),
            Action::Reset { actor, reason } => self.reset(day, month, holds, actor, reason),
        }
    }

    fn spend(
        &self,
        day: Option<&DailyUsage>,
        month: Option<&MonthlyUsage>,
        holds: Holds,
        tokens: Tokens,
        user_type: UserType,
    ) -> Result<Plan, DecisionError> {
        let policy = self.limits.for_type(user_type);
        let input = DecisionInput {
            user_id: &self.user_id,
            tokens,
            user_type,
            window: &self.window,
            policy,
            held_tokens: holds.held,
            now: self.now,
        };
        let month_used = month_total(month);
        let tokens_before = day.map_or(0, |day| day.tokens_used);
        let standing =
            |day, month_used, exceeds| self.standing(day, holds.held, month_used, policy, exceeds);
        let (day, month, exceeds) = match decide(day, month, input)? {
            // A denial writes nothing, not even its idempotency key: a retry is decided afresh.
            Decision::Denied { day, exceeded } => {
                let standing = standing(day, month_used, Some(exceeded));
                return Ok(Plan::answer(RecordOutcome::Denied(standing)));
            }
            Decision::Uncounted { day, exceeds } => {
                let standing = standing(day, month_used, exceeds);
                return Ok(Plan::answer(RecordOutcome::Admitted(standing)));
            }
            Decision::Admitted {
                day,
                month,
                exceeds,
            } => (day, month, exceeds),
        };
        let standing = standing(day.clone(), month.total_monthly_tokens, exceeds);
        Ok(Plan {
            writes: Some(Writes {
                audit: self.audit_recorded(tokens_before, &day),
                day,
                reservations: holds.pruned_if_changed(),
                month: Some(month),
                idempotency: self.remember(StoredAnswer::Recorded(standing.clone())),
                expired_holds: holds.expired,
                raised: Raised::default(),
            }),
            outcome: RecordOutcome::Admitted(standing),
        })
    }

    fn reserve(
        &self,
        day: Option<&DailyUsage>,
        month: Option<&MonthlyUsage>,
        holds: Holds,
        id: &ReservationId,
        tokens: Tokens,
        user_type: UserType,
    ) -> Result<Plan, DecisionError> {
        let policy = self.limits.for_type(user_type);
        let tokens_used = day.map_or(0, |day| day.tokens_used);
        let month_used = month_total(month);
        let day = DailyUsage {
            user_id: self.user_id.clone(),
            date: self.window.date,
            tokens_used,
            token_limit: policy.daily_limit,
            user_type,
            last_updated: day.map_or(self.now, |day| day.last_updated),
            reset_at: self.window.reset_at,
        };
        let exceeds = policy.exceeded_by(tokens_used, month_used, holds.held, tokens.get());
        let standing =
            |day, reserved_tokens| self.standing(day, reserved_tokens, month_used, policy, exceeds);
        if exceeds.is_some() && policy.enforcement == Enforcement::Enforce {
            return Ok(Plan::answer(RecordOutcome::Denied(standing(
                day, holds.held,
            ))));
        }
        if holds.kept.len() >= MAX_ENTRIES_PER_DAY {
            return Ok(Plan::answer(RecordOutcome::Crowded(standing(
                day, holds.held,
            ))));
        }
        // Admitted beside a negative `tokensUsed`, holds may still not add up.
        let reserved_tokens = holds
            .held
            .checked_add(tokens.get())
            .ok_or_else(|| self.unfit_day())?;
        let reservation = Reservation {
            id: id.clone(),
            entry: ReservationEntry {
                tokens: tokens.get(),
                created_at: self.now,
                expires_at: id.expires_at(),
                settlement: None,
            },
        };
        let mut kept = holds.kept.clone();
        kept.insert(id, reservation.entry);
        let standing = standing(day.clone(), reserved_tokens);
        Ok(Plan {
            writes: Some(Writes {
                day,
                reservations: Some(kept),
                month: None,
                idempotency: self.remember(StoredAnswer::Reserved(
                    reservation.clone(),
                    standing.clone(),
                )),
                audit: None,
                expired_holds: holds.expired,
                raised: Raised::default(),
            }),
            outcome: RecordOutcome::Reserved(reservation, standing),
        })
    }

    fn commit(
        &self,
        day: Option<&DailyUsage>,
        month: Option<&MonthlyUsage>,
        holds: Holds,
        id: &ReservationId,
        tokens: Tokens,
    ) -> Result<Plan, DecisionError> {
        let month_used = month_total(month);
        let (day, entry) = match self.find(day, &holds, id) {
            Found::Open(day, entry) => (day, entry),
            Found::Settled(day, entry) => {
                let outcome = match entry.settlement {
                    Some(Settlement::Committed {
                        committed_tokens, ..
                    }) if committed_tokens == tokens.get() => {
                        self.settled(id, entry, day.clone(), holds.held, month_used, true)
                    }
                    Some(Settlement::Committed {
                        committed_tokens, ..
                    }) => {
                        RecordOutcome::Refused(ReservationRefusal::Committed { committed_tokens })
                    }
                    _ => RecordOutcome::Refused(ReservationRefusal::Released),
                };
                return Ok(Plan::answer(outcome));
            }
            Found::Refused(refusal) => {
                return Ok(Plan::answer(RecordOutcome::Refused(refusal)));
            }
        };
        let tokens_before = day.tokens_used;
        let day = DailyUsage {
            tokens_used: tokens_before
                .checked_add(tokens.get())
                .ok_or_else(|| self.unfit_day())?,
            last_updated: self.now,
            ..day.clone()
        };
        // The day keeps the plan it was reserved under: the month follows it.
        let month = month_after(
            month,
            &DecisionInput {
                user_id: &self.user_id,
                tokens,
                user_type: day.user_type,
                window: &self.window,
                policy: self.limits.for_type(day.user_type),
                held_tokens: holds.held,
                now: self.now,
            },
        )?;
        let entry = ReservationEntry {
            settlement: Some(Settlement::Committed {
                committed_tokens: tokens.get(),
                settled_at: self.now,
            }),
            ..entry
        };
        let mut kept = holds.kept.clone();
        kept.insert(id, entry);
        let outcome = self.settled(
            id,
            entry,
            day.clone(),
            kept.held_at(self.now),
            month.total_monthly_tokens,
            false,
        );
        Ok(Plan {
            outcome,
            writes: Some(Writes {
                audit: self.audit_recorded(tokens_before, &day),
                day,
                reservations: Some(kept),
                month: Some(month),
                idempotency: None,
                expired_holds: holds.expired,
                raised: Raised::default(),
            }),
        })
    }

    fn release(
        &self,
        day: Option<&DailyUsage>,
        month: Option<&MonthlyUsage>,
        holds: Holds,
        id: &ReservationId,
    ) -> Plan {
        let month_used = month_total(month);
        let (day, entry) = match self.find(day, &holds, id) {
            Found::Open(_, entry) if self.now >= entry.expires_at => {
                return Plan::answer(RecordOutcome::Refused(ReservationRefusal::Expired));
            }
            Found::Open(day, entry) => (day, entry),
            Found::Settled(day, entry) => {
                return Plan::answer(match entry.settlement {
                    Some(Settlement::Committed {
                        committed_tokens, ..
                    }) => {
                        RecordOutcome::Refused(ReservationRefusal::Committed { committed_tokens })
                    }
                    _ => self.settled(id, entry, day.clone(), holds.held, month_used, true),
                });
            }
            Found::Refused(refusal) => return Plan::answer(RecordOutcome::Refused(refusal)),
        };
        let entry = ReservationEntry {
            settlement: Some(Settlement::Released {
                settled_at: self.now,
            }),
            ..entry
        };
        let mut kept = holds.kept.clone();
        kept.insert(id, entry);
        let day = day.clone();
        let outcome = self.settled(
            id,
            entry,
            day.clone(),
            kept.held_at(self.now),
            month_used,
            false,
        );
        Plan {
            outcome,
            writes: Some(Writes {
                day,
                reservations: Some(kept),
                month: None,
                idempotency: None,
                audit: None,
                expired_holds: holds.expired,
                raised: Raised::default(),
            }),
        }
    }

    /// Sets the day's tokens to 0 and its month entry to match, keeping its holds, and
    /// audits it. Writes even a day that was never used, so that the reset is on record.
    fn reset(
        &self,
        day: Option<&DailyUsage>,
        month: Option<&MonthlyUsage>,
        holds: Holds,
        actor: &UserId,
        reason: &str,
    ) -> Result<Plan, DecisionError> {
        let tokens_before = day.map_or(0, |day| day.tokens_used);
        let user_type = day.map_or(UserType::DEFAULT, |day| day.user_type);
        let policy = self.limits.for_type(user_type);
        let reset_day = DailyUsage {
            user_id: self.user_id.clone(),
            date: self.window.date,
            tokens_used: 0,
            token_limit: day.map_or(policy.daily_limit, |day| day.token_limit),
            user_type,
            last_updated: self.now,
            reset_at: self.window.reset_at,
        };
        let month = match month {
            Some(month) => {
                let mut daily_usage = month.daily_usage.clone();
                daily_usage.insert(self.window.day_key(), 0);
                Some(
                    super::MonthOf {
                        user_id: month.user_id.clone(),
                        year: month.year,
                        month: month.month,
                        user_type: month.user_type,
                        created_at: month.created_at,
                        updated_at: self.now,
                    }
                    .with_daily_usage(daily_usage)
                    .ok_or_else(|| DecisionError {
                        document: self.month_id(),
                    })?,
                )
            }
            None => None,
        };
        let standing = self.standing(
            reset_day.clone(),
            holds.held,
            month_total(month.as_ref()),
            policy,
            None,
        );
        let audit = AuditEntry {
            reason: Some(reason.to_owned()),
            ..self.day_audit(actor, AuditAction::UsageReset, tokens_before, 0)
        };
        Ok(Plan {
            writes: Some(Writes {
                day: reset_day,
                reservations: holds.pruned_if_changed(),
                month,
                idempotency: self.remember(StoredAnswer::Recorded(standing.clone())),
                audit: Some(audit),
                expired_holds: holds.expired,
                raised: Raised::default(),
            }),
            outcome: RecordOutcome::Reset {
                standing,
                tokens_before,
            },
        })
    }

    /// The reservation `id` in the day, and whether it can still be settled.
    fn find<'a>(
        &self,
        day: Option<&'a DailyUsage>,
        holds: &Holds,
        id: &ReservationId,
    ) -> Found<'a> {
        match (day, holds.kept.get(id)) {
            (Some(day), Some(entry)) if entry.settlement.is_some() => Found::Settled(day, *entry),
            (Some(day), Some(entry)) => Found::Open(day, *entry),
            // Its entry is gone once nothing can settle it any more; its id still says when.
            _ if self.now >= id.settleable_until(self.commit_grace) => {
                Found::Refused(ReservationRefusal::Expired)
            }
            _ => Found::Refused(ReservationRefusal::NotFound),
        }
    }

    /// The request's day document, whose figures do not fit in 64 bits: one to repair.
    fn unfit_day(&self) -> DecisionError {
        DecisionError {
            document: self.day_id(),
        }
    }

    /// The day as an answer shows it, under `policy`, with the month's tokens so far.
    fn standing(
        &self,
        day: DailyUsage,
        reserved_tokens: i64,
        month_used: i64,
        policy: Policy,
        exceeds: Option<LimitWindow>,
    ) -> Standing {
        Standing {
            day,
            reserved_tokens,
            month: MonthStanding {
                tokens_used: month_used,
                limit: policy.monthly_limit,
                reset_at: self.window.month_reset_at,
            },
            enforcement: policy.enforcement,
            exceeds,
        }
    }

    /// The answer for a settled reservation: the day with the tokens still held, under the
    /// policy of the type it was reserved under.
    fn settled(
        &self,
        id: &ReservationId,
        entry: ReservationEntry,
        day: DailyUsage,
        reserved_tokens: i64,
        month_used: i64,
        replayed: bool,
    ) -> RecordOutcome {
        let policy = self.limits.for_type(day.user_type);
        RecordOutcome::Settled {
            reservation: Reservation {
                id: id.clone(),
                entry,
            },
            standing: self.standing(day, reserved_tokens, month_used, policy, None),
            replayed,
        }
    }

    /// The record kept under the request's idempotency key, if it has one.
    /// The audit entry of tokens an admin recorded for another user, when they are audited.
    fn audit_recorded(&self, tokens_before: i64, day: &DailyUsage) -> Option<AuditEntry> {
        let actor = self.audit_actor.as_ref()?;
        Some(self.day_audit(
            actor,
            AuditAction::UsageRecorded,
            tokens_before,
            day.tokens_used,
        ))
    }

    /// An entry for a change of the day's tokens, from `before` to `after`.
    fn day_audit(
        &self,
        actor: &UserId,
        action: AuditAction,
        before: i64,
        after: i64,
    ) -> AuditEntry {
        let figures = |tokens: i64| serde_json::json!({"date": self.window.date.to_string(), "tokensUsed": tokens});
        AuditEntry {
            id: AuditEntry::new_id(self.now),
            at: self.now,
            actor: actor.clone(),
            action,
            user_id: Some(self.user_id.clone()),
            before: Some(figures(before)),
            after: Some(figures(after)),
            idempotency_key: self.idempotency_key().map(|key| key.as_str().to_owned()),
            reason: None,
        }
    }

    fn remember(&self, answer: StoredAnswer) -> Option<IdempotencyRecord> {
        self.idempotency
            .as_ref()
            .map(|(_, fingerprint)| IdempotencyRecord {
                fingerprint: fingerprint.clone(),
                response: answer,
                expires_at: self.now + IdempotencyKey::LIFETIME,
            })
    }
}

/// The month's tokens so far: none before its document exists.
fn month_total(month: Option<&MonthlyUsage>) -> i64 {
    month.map_or(0, |month| month.total_monthly_tokens)
}

enum Found<'a> {
    /// Holding (or expired, within the commit grace).
    Open(&'a DailyUsage, ReservationEntry),
    Settled(&'a DailyUsage, ReservationEntry),
    Refused(ReservationRefusal),
}

#[cfg(test)]
mod tests {
    use chrono_tz::Tz;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn tokens(n: i64) -> Tokens {
        Tokens::bounded(n, i64::MAX).unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn request(action: Action, now: &str, key: Option<&str>) -> RecordRequest {
        let now = at(now);
        let window = match &action {
            Action::Commit { id, .. } | Action::Release { id } => {
                DayWindow::of_date(id.date(), Tz::UTC)
            }
            _ => DayWindow::containing(now, Tz::UTC),
        };
        RecordRequest {
            idempotency: key.map(|key| {
                (
                    IdempotencyKey::parse(key).unwrap(),
                    Fingerprint::of(&alice(), tokens(1), None),
                )
            }),
            user_id: alice(),
            action,
            window,
            limits: Limits::uniform(1_000),
            audit_actor: None,
            thresholds: Default::default(),
            commit_grace: Duration::seconds(30),
            now,
        }
    }

    fn spend(n: i64) -> Action {
        Action::Spend {
            tokens: tokens(n),
            user_type: UserType::Trial,
        }
    }

    fn reserve(n: i64, expires: &str) -> Action {
        let expires = at(expires);
        Action::Reserve {
            id: ReservationId::new(
                chrono::NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
                expires,
            ),
            tokens: tokens(n),
            user_type: UserType::Trial,
        }
    }

    /// The documents, as a store would keep them, applying each plan's writes.
    #[derive(Default)]
    struct Ledger {
        snapshot: Snapshot,
    }

    impl Ledger {
        fn run(&mut self, request: &RecordRequest) -> Plan {
            let plan = request.plan(&self.snapshot).unwrap();
            if let Some(writes) = plan.writes.clone() {
                let reservations = writes.reservations.unwrap_or_else(|| {
                    self.snapshot
                        .day
                        .as_ref()
                        .map(|day| day.reservations.clone())
                        .unwrap_or_default()
                });
                let notified = writes.raised.day_marks.unwrap_or_else(|| {
                    (self.snapshot.day.as_ref())
                        .map(|day| day.notified.clone())
                        .unwrap_or_default()
                });
                self.snapshot.day = Some(StoredDay {
                    usage: writes.day,
                    reservations,
                    notified,
                });
                if let Some(marks) = writes.raised.month_marks {
                    self.snapshot.month_notified = marks;
                }
                if let Some(month) = writes.month {
                    self.snapshot.month = Some(month);
                }
                if let Some(record) = writes.idempotency {
                    self.snapshot.idempotency = Some(record);
                }
            }
            plan
        }

        fn tokens_used(&self) -> i64 {
            self.snapshot.day.as_ref().unwrap().usage.tokens_used
        }
    }

    fn reservation_of(plan: &Plan) -> Reservation {
        match &plan.outcome {
            RecordOutcome::Reserved(reservation, _) => reservation.clone(),
            other => panic!("not reserved: {other:?}"),
        }
    }

    #[test]
    fn an_admitted_record_writes_the_day_the_month_and_its_key() {
        let plan = request(spend(60), "2024-01-15T10:00:00Z", Some("k"))
            .plan(&Snapshot::default())
            .unwrap();
        let writes = plan.writes.unwrap();
        let standing = Standing {
            day: writes.day.clone(),
            reserved_tokens: 0,
            month: MonthStanding {
                tokens_used: 60,
                limit: None,
                reset_at: at("2024-02-01T00:00:00Z"),
            },
            enforcement: Enforcement::Enforce,
            exceeds: None,
        };
        assert_eq!(plan.outcome, RecordOutcome::Admitted(standing.clone()));
        assert_eq!(writes.day.tokens_used, 60);
        assert_eq!(writes.month.unwrap().total_monthly_tokens, 60);
        assert_eq!(writes.reservations, None);
        let remembered = writes.idempotency.unwrap();
        assert_eq!(remembered.response, StoredAnswer::Recorded(standing));
        assert_eq!(
            remembered.expires_at,
            at("2024-01-15T10:00:00Z") + IdempotencyKey::LIFETIME
        );
    }

    #[test]
    fn a_denial_writes_nothing_not_even_its_key() {
        let mut ledger = Ledger::default();
        ledger.run(&request(spend(600), "2024-01-15T10:00:00Z", None));
        let denied = ledger.run(&request(spend(401), "2024-01-15T10:00:01Z", Some("k")));
        assert!(matches!(denied.outcome, RecordOutcome::Denied(_)));
        assert_eq!(denied.writes, None);
    }

    #[test]
    fn a_seen_key_replays_or_refuses_and_writes_nothing() {
        let mut ledger = Ledger::default();
        let first = ledger.run(&request(spend(10), "2024-01-15T10:00:00Z", Some("k")));
        let RecordOutcome::Admitted(standing) = first.outcome else {
            panic!("denied")
        };
        let replay = ledger.run(&request(spend(10), "2024-01-15T10:00:01Z", Some("k")));
        assert_eq!(
            replay.outcome,
            RecordOutcome::Replayed(StoredAnswer::Recorded(standing))
        );
        assert_eq!(replay.writes, None);
        let mut reused = request(spend(11), "2024-01-15T10:00:01Z", None);
        reused.idempotency = Some((
            IdempotencyKey::parse("k").unwrap(),
            Fingerprint::of(&alice(), tokens(11), None),
        ));
        let reused = ledger.run(&reused);
        assert_eq!(reused.outcome, RecordOutcome::KeyReused);
        assert_eq!(reused.writes, None);
    }

    #[test]
    fn holds_count_against_the_limit_until_they_expire() {
        let mut ledger = Ledger::default();
        let held = ledger.run(&request(
            reserve(700, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:00Z",
            None,
        ));
        let RecordOutcome::Reserved(_, standing) = &held.outcome else {
            panic!("not reserved")
        };
        assert_eq!((standing.reserved_tokens, standing.remaining()), (700, 300));
        assert_eq!(held.writes.as_ref().unwrap().month, None);
        // 700 held + 301 > 1,000, for a reservation and for a plain record alike.
        let over = ledger.run(&request(
            reserve(301, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:01:00Z",
            None,
        ));
        assert!(matches!(over.outcome, RecordOutcome::Denied(ref s) if s.reserved_tokens == 700));
        let over = ledger.run(&request(spend(301), "2024-01-15T10:01:00Z", None));
        assert!(matches!(over.outcome, RecordOutcome::Denied(_)));
        assert!(matches!(
            ledger
                .run(&request(spend(300), "2024-01-15T10:01:00Z", None))
                .outcome,
            RecordOutcome::Admitted(_)
        ));
        // At the instant the hold expires its tokens are free again, and the next write
        // drops it (after the commit grace) and reports it expired.
        assert!(matches!(
            ledger
                .run(&request(spend(700), "2024-01-15T10:09:59.999Z", None))
                .outcome,
            RecordOutcome::Denied(_)
        ));
        let freed = ledger.run(&request(spend(1), "2024-01-15T10:10:00Z", None));
        assert!(matches!(freed.outcome, RecordOutcome::Admitted(ref s) if s.reserved_tokens == 0));
        assert_eq!(
            freed.writes.unwrap().reservations,
            None,
            "kept for the grace"
        );
        let dropping = ledger.run(&request(spend(1), "2024-01-15T10:10:30Z", None));
        let writes = dropping.writes.unwrap();
        assert_eq!(writes.reservations, Some(Reservations::default()));
        assert_eq!(writes.expired_holds.len(), 1);
        assert_eq!(writes.expired_holds[0].tokens, 700);
    }

    /// A day no write of the service makes: `tokensUsed` far below zero beside a hold of the
    /// most tokens, so that used + held + asked fits the limit but held + asked does not.
    #[test]
    fn holds_that_do_not_add_up_are_a_corrupt_day_not_an_overflow() {
        let reserve = request(
            reserve(1, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:00Z",
            None,
        );
        let date = reserve.window.date;
        let mut reservations = Reservations::default();
        reservations.insert(
            &ReservationId::new(date, at("2024-01-15T10:09:00Z")),
            ReservationEntry {
                tokens: i64::MAX,
                created_at: at("2024-01-15T09:59:00Z"),
                expires_at: at("2024-01-15T10:09:00Z"),
                settlement: None,
            },
        );
        let snapshot = Snapshot {
            day: Some(StoredDay {
                usage: DailyUsage {
                    user_id: alice(),
                    date,
                    tokens_used: -i64::MAX,
                    token_limit: 1_000,
                    user_type: UserType::Trial,
                    last_updated: at("2024-01-15T09:59:00Z"),
                    reset_at: reserve.window.reset_at,
                },
                reservations,
                notified: Default::default(),
            }),
            ..Snapshot::default()
        };
        assert_eq!(
            reserve.plan(&snapshot),
            Err(DecisionError {
                document: reserve.day_id()
            })
        );
    }

    #[test]
    fn a_commit_records_the_actual_once_on_the_reserved_day() {
        let mut ledger = Ledger::default();
        let reservation = reservation_of(&ledger.run(&request(
            reserve(300, "2024-01-16T00:05:00Z"),
            "2024-01-15T23:59:59Z",
            None,
        )));
        let commit = Action::Commit {
            id: reservation.id.clone(),
            tokens: tokens(450),
        };
        // After midnight, still the 15th: the id names the day.
        let first = ledger.run(&request(commit.clone(), "2024-01-16T00:01:00Z", None));
        let RecordOutcome::Settled {
            reservation: settled,
            standing,
            replayed: false,
        } = &first.outcome
        else {
            panic!("{:?}", first.outcome)
        };
        assert_eq!(settled.overage(), Some(150));
        assert_eq!(
            (standing.day.tokens_used, standing.reserved_tokens),
            (450, 0)
        );
        assert_eq!(standing.day.date.to_string(), "2024-01-15");
        let month = first.writes.as_ref().unwrap().month.clone().unwrap();
        assert_eq!(month.daily_usage.get("15"), Some(&450));

        let again = ledger.run(&request(commit, "2024-01-16T00:01:01Z", None));
        assert!(matches!(
            again.outcome,
            RecordOutcome::Settled { replayed: true, .. }
        ));
        assert_eq!(again.writes, None);
        let other = Action::Commit {
            id: reservation.id.clone(),
            tokens: tokens(451),
        };
        assert_eq!(
            ledger
                .run(&request(other, "2024-01-16T00:01:02Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Committed {
                committed_tokens: 450
            })
        );
        let release = Action::Release {
            id: reservation.id.clone(),
        };
        assert_eq!(
            ledger
                .run(&request(release, "2024-01-16T00:01:03Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Committed {
                committed_tokens: 450
            })
        );
        assert_eq!(ledger.tokens_used(), 450);
    }

    #[test]
    fn expiry_refuses_settling_after_the_grace() {
        let mut ledger = Ledger::default();
        let id = reservation_of(&ledger.run(&request(
            reserve(300, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:00Z",
            None,
        )))
        .id;
        let release = Action::Release { id: id.clone() };
        assert_eq!(
            ledger
                .run(&request(release, "2024-01-15T10:10:00Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Expired)
        );
        let commit = |n| Action::Commit {
            id: id.clone(),
            tokens: tokens(n),
        };
        assert_eq!(
            ledger
                .run(&request(commit(5), "2024-01-15T10:10:30Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Expired)
        );
        // Within the grace, a commit still records what was spent.
        assert!(matches!(
            ledger
                .run(&request(commit(5), "2024-01-15T10:10:29Z", None))
                .outcome,
            RecordOutcome::Settled {
                replayed: false,
                ..
            }
        ));
        assert_eq!(ledger.tokens_used(), 5);
    }

    #[test]
    fn a_release_frees_the_hold_and_replays() {
        let mut ledger = Ledger::default();
        let id = reservation_of(&ledger.run(&request(
            reserve(900, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:00Z",
            None,
        )))
        .id;
        let release = Action::Release { id: id.clone() };
        let first = ledger.run(&request(release.clone(), "2024-01-15T10:01:00Z", None));
        assert!(
            matches!(first.outcome, RecordOutcome::Settled { replayed: false, ref standing, .. } if standing.reserved_tokens == 0)
        );
        assert_eq!(first.writes.unwrap().month, None);
        assert!(matches!(
            ledger
                .run(&request(release, "2024-01-15T10:01:01Z", None))
                .outcome,
            RecordOutcome::Settled { replayed: true, .. }
        ));
        assert_eq!(
            ledger
                .run(&request(
                    Action::Commit {
                        id,
                        tokens: tokens(1)
                    },
                    "2024-01-15T10:01:02Z",
                    None
                ))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Released)
        );
        assert!(matches!(
            ledger
                .run(&request(spend(1_000), "2024-01-15T10:02:00Z", None))
                .outcome,
            RecordOutcome::Admitted(_)
        ));
    }

    #[test]
    fn an_unknown_reservation_is_not_found_until_its_id_says_expired() {
        let mut ledger = Ledger::default();
        ledger.run(&request(spend(1), "2024-01-15T10:00:00Z", None));
        let stranger = ReservationId::new(
            chrono::NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
            at("2024-01-15T10:10:00Z"),
        );
        let release = Action::Release { id: stranger };
        assert_eq!(
            ledger
                .run(&request(release.clone(), "2024-01-15T10:05:00Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::NotFound)
        );
        assert_eq!(
            ledger
                .run(&request(release, "2024-01-15T10:10:30Z", None))
                .outcome,
            RecordOutcome::Refused(ReservationRefusal::Expired)
        );
    }

    #[test]
    fn a_day_keeps_a_bounded_number_of_reservations() {
        let mut ledger = Ledger::default();
        for _ in 0..MAX_ENTRIES_PER_DAY {
            let reserve = request(
                reserve(1, "2024-01-15T10:10:00Z"),
                "2024-01-15T10:00:00Z",
                None,
            );
            let id = reservation_of(&ledger.run(&reserve)).id;
            ledger.run(&request(
                Action::Release { id },
                "2024-01-15T10:00:00Z",
                None,
            ));
        }
        let crowded = ledger.run(&request(
            reserve(1, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:01Z",
            None,
        ));
        assert!(matches!(crowded.outcome, RecordOutcome::Crowded(_)));
        assert_eq!(crowded.writes, None);
    }

    #[test]
    fn a_hold_must_fit_the_month_too_unless_in_shadow() {
        let mut capped = request(
            reserve(300, "2024-01-15T10:10:00Z"),
            "2024-01-15T10:00:00Z",
            None,
        );
        capped.limits.trial.monthly_limit = Some(1_000);
        let month = MonthlyUsage {
            total_monthly_tokens: 800,
            ..month_of(800)
        };
        let snapshot = Snapshot {
            month: Some(month),
            ..Snapshot::default()
        };
        let plan = capped.plan(&snapshot).unwrap();
        let RecordOutcome::Denied(standing) = &plan.outcome else {
            panic!("held over the month: {:?}", plan.outcome)
        };
        assert_eq!(standing.exceeds, Some(LimitWindow::Monthly));
        assert_eq!(
            (standing.month.tokens_used, standing.remaining()),
            (800, 200)
        );

        capped.limits.trial.enforcement = Enforcement::Shadow;
        let plan = capped.plan(&snapshot).unwrap();
        let RecordOutcome::Reserved(_, standing) = &plan.outcome else {
            panic!("refused in shadow: {:?}", plan.outcome)
        };
        assert_eq!(standing.exceeds, Some(LimitWindow::Monthly));
        assert!(plan.writes.is_some());
    }

    #[test]
    fn off_answers_from_the_snapshot_and_writes_nothing() {
        let mut ledger = Ledger::default();
        ledger.run(&request(spend(100), "2024-01-15T10:00:00Z", None));
        let mut off = request(spend(5_000), "2024-01-15T10:01:00Z", Some("k"));
        off.limits.trial.enforcement = Enforcement::Off;
        let plan = ledger.run(&off);
        let RecordOutcome::Admitted(standing) = &plan.outcome else {
            panic!("{:?}", plan.outcome)
        };
        assert_eq!(
            (standing.day.tokens_used, standing.exceeds),
            (100, Some(LimitWindow::Daily))
        );
        assert_eq!(plan.writes, None, "off writes nothing, not even its key");
        assert_eq!(ledger.tokens_used(), 100);
    }

    fn month_of(tokens: i64) -> MonthlyUsage {
        let at = at("2024-01-14T10:00:00Z");
        crate::usage::MonthOf {
            user_id: alice(),
            year: 2024,
            month: 1,
            user_type: UserType::Trial,
            created_at: at,
            updated_at: at,
        }
        .with_daily_usage([("14".to_owned(), tokens)].into_iter().collect())
        .unwrap()
    }

    #[test]
    fn a_reset_zeroes_the_day_and_its_month_entry_and_audits_it() {
        let mut ledger = Ledger::default();
        ledger.run(&request(spend(600), "2024-01-15T10:00:00Z", None));
        let actor = UserId::parse("support").unwrap();
        let reset = Action::Reset {
            actor: actor.clone(),
            reason: "refund".to_owned(),
        };
        let plan = ledger.run(&request(reset, "2024-01-15T11:00:00Z", Some("r")));
        let RecordOutcome::Reset {
            standing,
            tokens_before,
        } = &plan.outcome
        else {
            panic!("{:?}", plan.outcome)
        };
        assert_eq!((standing.day.tokens_used, *tokens_before), (0, 600));
        let writes = plan.writes.unwrap();
        let month = writes.month.unwrap();
        assert_eq!(month.daily_usage.get("15"), Some(&0));
        assert_eq!(month.total_monthly_tokens, 0);
        let audit = writes.audit.unwrap();
        assert_eq!(
            (audit.actor, audit.action),
            (actor, AuditAction::UsageReset)
        );
        assert_eq!(audit.idempotency_key.as_deref(), Some("r"));
        assert_eq!(audit.before.unwrap()["tokensUsed"], 600);
        assert!(writes.idempotency.is_some());
        assert_eq!(ledger.tokens_used(), 0);
    }

    #[test]
    fn what_an_audited_admin_records_is_audited_with_it_and_nothing_else_is() {
        let mut ledger = Ledger::default();
        ledger.run(&request(spend(100), "2024-01-15T09:00:00Z", None));
        let support = UserId::parse("support").unwrap();
        let audited = |action, now, key| RecordRequest {
            audit_actor: Some(support.clone()),
            thresholds: Default::default(),
            ..request(action, now, key)
        };
        let plan = ledger.run(&audited(spend(250), "2024-01-15T10:00:00Z", Some("k")));
        let audit = plan.writes.unwrap().audit.unwrap();
        assert_eq!(
            (&audit.actor, audit.action, &audit.user_id),
            (&support, AuditAction::UsageRecorded, &Some(alice()))
        );
        assert_eq!(audit.before.unwrap()["tokensUsed"], 100);
        assert_eq!(audit.after.unwrap()["tokensUsed"], 350);
        assert_eq!(audit.idempotency_key.as_deref(), Some("k"));

        let replay = ledger.run(&audited(spend(250), "2024-01-15T10:00:01Z", Some("k")));
        assert!(replay.writes.is_none(), "a replay records nothing");
        let denied = ledger.run(&audited(spend(1_000), "2024-01-15T10:00:02Z", None));
        assert!(denied.writes.is_none(), "a refusal records nothing");
        let own = ledger.run(&request(spend(1), "2024-01-15T10:00:03Z", None));
        assert_eq!(own.writes.unwrap().audit, None);
    }

    #[test]
    fn the_snapshots_override_replaces_the_limits_until_it_expires() {
        let mut ledger = Ledger::default();
        ledger.snapshot.limit_override = Some(LimitOverride {
            user_id: alice(),
            daily_limit: 5_000,
            monthly_limit: None,
            enforcement: None,
            expires_at: at("2024-01-15T12:00:00Z"),
            reason: "launch week".to_owned(),
            set_by: UserId::parse("support").unwrap(),
            set_at: at("2024-01-15T09:00:00Z"),
        });
        let raised = ledger.run(&request(spend(3_000), "2024-01-15T11:59:59Z", None));
        let RecordOutcome::Admitted(standing) = &raised.outcome else {
            panic!("{:?}", raised.outcome)
        };
        assert_eq!(standing.limit(LimitWindow::Daily), 5_000);
        let expired = ledger.run(&request(spend(1), "2024-01-15T12:00:00Z", None));
        assert!(
            matches!(expired.outcome, RecordOutcome::Denied(ref s) if s.limit(LimitWindow::Daily) == 1_000),
            "{:?}",
            expired.outcome
        );
    }
}
