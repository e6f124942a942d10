//! Attempts: claims by media processors, call events, hang-ups, lease
//! renewals and the reaper; each attempt that ends settles its lead (retry
//! or done) in the same transaction.

use dialstack_common::db::{outbox_enqueue, outbox_enqueue_routed, Tx};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{
    types, CallCompleted, CallEvent, CallRef, FailReason, HangupCommand, Outcome, TransferCommand,
};
use sqlx::Row;

use super::Repo;
use crate::domain::compliance::{RetryPolicy, RETRIABLE};
use crate::domain::state::{sql_in, AttemptEvent, AttemptState, LeadEvent, LeadState};

/// Result of a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller holds the attempt.
    Granted(DialTarget),
    /// Someone else has it, or it is past the point of dialing.
    Taken(String),
    /// No such attempt.
    Unknown,
}

/// What the claimer needs to dial.
#[derive(Debug, Clone, PartialEq)]
pub struct DialTarget {
    /// The attempt.
    pub attempt_id: String,
    /// Its lease end (ms since epoch).
    pub lease_until: i64,
}

/// What became of a transfer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRequest {
    /// The command is on its way.
    Sent,
    /// The call already ended.
    Over,
    /// The call is not (yet) connected to an agent.
    NoAgent,
    /// No call by that id (or not one the caller may see).
    NoSuchCall,
}

/// What became of a hang-up request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupRequest {
    /// The command is on its way.
    Sent,
    /// The call already ended.
    Over,
    /// No call by that id (or not one the caller may see).
    NoSuchCall,
}

/// Settles the lead of an attempt that just ended with `outcome`: back to
/// `pending` at the time its campaign's retry policy gives, or `done`. A
/// call that may have connected before it was lost (`media_lost`) is never
/// retried: dial once.
pub(crate) async fn settle_lead(
    tx: &mut Tx,
    attempt_id: &str,
    outcome: Outcome,
    reason: Option<FailReason>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT a.lead_id, c.retry_policy, c.state FROM attempts a
         JOIN campaigns c ON c.id = a.campaign_id WHERE a.id = ?",
    )
    .bind(attempt_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    let lead_id: String = r.try_get(0)?;
    let policy: RetryPolicy = super::text(&r, 1)?
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    let campaign_stopped = r.try_get::<String, _>(2)? == "stopped";
    let retriable = RETRIABLE.contains(&outcome)
        && reason != Some(FailReason::MediaLost)
        && !campaign_stopped
        && !policy.0.is_empty();
    let delay = if retriable {
        let before: i64 = sqlx::query(
            "SELECT COUNT(*) FROM attempts WHERE lead_id = ? AND outcome = ? AND id <> ?",
        )
        .bind(&lead_id)
        .bind(outcome.as_str())
        .bind(attempt_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
        policy.next_delay_ms(outcome, before.max(0) as u32)
    } else {
        None
    };
    let (to, event, due) = match delay {
        Some(d) => (LeadState::Pending, LeadEvent::Retry, now + d),
        None => (LeadState::Done, LeadEvent::Finish, now),
    };
    sqlx::query(&format!(
        "UPDATE leads SET state = ?, due_at = ?, last_outcome = ?, updated_at = ? WHERE id = ?{}",
        sql_in("state", &LeadState::sources(event), LeadState::as_str)
    ))
    .bind(to.as_str())
    .bind(due)
    .bind(outcome.as_str())
    .bind(now)
    .bind(&lead_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One call event's updates inside `tx`: the campaign id when it completed
/// its attempt.
async fn apply_one(
    tx: &mut Tx,
    dialect: dialstack_common::db::Dialect,
    ev: &CallEvent,
    now: i64,
) -> Result<Option<String>, sqlx::Error> {
    let data = ev.call();
    let completed = match ev {
        CallEvent::Dialing(_) => {
            sqlx::query(&format!(
                "UPDATE attempts SET state = 'dialing', updated_at = ? WHERE id = ?{}",
                sql_in(
                    "state",
                    &AttemptState::sources(AttemptEvent::Dialing),
                    AttemptState::as_str
                )
            ))
            .bind(now)
            .bind(&data.attempt_id)
            .execute(&mut **tx)
            .await?;
            false
        }
        CallEvent::Completed(done) => {
            let moved = sqlx::query(&format!(
                "UPDATE attempts SET state = 'completed', outcome = ?, reason = ?, sip_status = ?, updated_at = ?
                 WHERE id = ?{}",
                sql_in(
                    "state",
                    &AttemptState::sources(AttemptEvent::Complete),
                    AttemptState::as_str
                )
            ))
            .bind(done.outcome.as_str())
            .bind(done.reason.map(|r| r.as_str()))
            .bind(done.sip_status.map(i64::from))
            .bind(now)
            .bind(&data.attempt_id)
            .execute(&mut **tx)
            .await?;
            if moved.rows_affected() == 1 {
                settle_lead(tx, &data.attempt_id, done.outcome, done.reason, now).await?;
                let agent = done
                    .agent
                    .as_ref()
                    .map(|a| a.agent_id.clone())
                    .or_else(|| done.agent_id.clone());
                if agent.is_some() {
                    sqlx::query("UPDATE attempts SET agent_id = ? WHERE id = ?")
                        .bind(agent)
                        .bind(&data.attempt_id)
                        .execute(&mut **tx)
                        .await?;
                }
                super::ledger::record(tx, dialect, &data.campaign_id, done.outcome, data.at_ms)
                    .await?;
            }
            moved.rows_affected() == 1
        }
        // The live view and the pacer tell ringing, waiting-for-an-agent
        // and talking calls apart by these times; the first one heard wins.
        CallEvent::Answered(_) => {
            sqlx::query("UPDATE attempts SET answered_at = COALESCE(answered_at, ?) WHERE id = ?")
                .bind(data.at_ms)
                .bind(&data.attempt_id)
                .execute(&mut **tx)
                .await?;
            false
        }
        CallEvent::Bridged(b) => {
            sqlx::query(
                "UPDATE attempts SET answered_at = COALESCE(answered_at, ?), bridged_at = COALESCE(bridged_at, ?),
                   agent_id = ? WHERE id = ?",
            )
            .bind(data.at_ms - b.wait_ms.max(0))
            .bind(data.at_ms)
            .bind(&b.agent_id)
            .bind(&data.attempt_id)
            .execute(&mut **tx)
            .await?;
            false
        }
        _ => false,
    };
    Ok(completed.then(|| data.campaign_id.clone()))
}

/// One claim inside `tx` (compare-and-set on `queued`).
async fn claim_in(
    tx: &mut Tx,
    attempt_id: &str,
    claimer: &str,
    lease_until: i64,
) -> Result<Claim, sqlx::Error> {
    let moved = sqlx::query(&format!(
        "UPDATE attempts SET state = 'claimed', claimed_by = ?, lease_until = ?, updated_at = ?
         WHERE id = ?{}",
        sql_in(
            "state",
            &AttemptState::sources(AttemptEvent::Claim),
            AttemptState::as_str
        )
    ))
    .bind(claimer)
    .bind(lease_until)
    .bind(dialstack_common::now_ms())
    .bind(attempt_id)
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() == 1 {
        return Ok(Claim::Granted(DialTarget {
            attempt_id: attempt_id.to_owned(),
            lease_until,
        }));
    }
    let row = sqlx::query("SELECT state, claimed_by, lease_until FROM attempts WHERE id = ?")
        .bind(attempt_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match row {
        None => Claim::Unknown,
        Some(r) => {
            let state: String = r.try_get(0)?;
            let by: Option<String> = r.try_get(1)?;
            if state == "claimed" && by.as_deref() == Some(claimer) {
                Claim::Granted(DialTarget {
                    attempt_id: attempt_id.to_owned(),
                    lease_until: r.try_get::<Option<i64>, _>(2)?.unwrap_or(lease_until),
                })
            } else {
                Claim::Taken(state)
            }
        }
    })
}

/// Claims group-committed: concurrent claims from the media tier share one
/// transaction (one log flush for many), each answered after the commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimWriter;

#[async_trait::async_trait]
impl dialstack_common::db::BatchWrite for ClaimWriter {
    /// (attempt id, claimer, lease end).
    type Op = (String, String, i64);
    type Out = Claim;

    async fn write(&self, tx: &mut Tx, ops: &[Self::Op]) -> Result<Vec<Claim>, sqlx::Error> {
        let mut out = Vec::with_capacity(ops.len());
        for (id, claimer, until) in ops {
            out.push(claim_in(tx, id, claimer, *until).await?);
        }
        Ok(out)
    }
}

/// Cancels a campaign's attempts no media processor has claimed (on stop):
/// each ends `canceled` with its `call.completed`, and its claim will be
/// refused.
pub(crate) async fn cancel_queued(
    tx: &mut Tx,
    campaign_id: &str,
    source: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.id, a.call_id, a.phone, c.team FROM attempts a JOIN campaigns c ON c.id = a.campaign_id
         WHERE a.campaign_id = ? AND a.state = 'queued'",
    )
    .bind(campaign_id)
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        let id: String = r.try_get(0)?;
        let moved = sqlx::query(&format!(
            "UPDATE attempts SET state = 'completed', outcome = 'canceled', updated_at = ? WHERE id = ?{}",
            sql_in("state", &AttemptState::sources(AttemptEvent::Cancel), AttemptState::as_str)
        ))
        .bind(now)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        if moved.rows_affected() != 1 {
            continue;
        }
        settle_lead(tx, &id, Outcome::Canceled, None, now).await?;
        let call_id: Option<String> = r.try_get(1)?;
        let call_id = call_id.unwrap_or_else(|| id.clone());
        let done = CallCompleted::unanswered(
            CallRef {
                call_id: call_id.clone(),
                attempt_id: id,
                campaign_id: campaign_id.to_owned(),
                phone: r.try_get(2)?,
                at_ms: now,
                team: r.try_get(3)?,
            },
            Outcome::Canceled,
            None,
        );
        let ev = CloudEvent::new(source, types::CALL_COMPLETED, &call_id, &done);
        outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, &call_id, &ev).await?;
    }
    Ok(())
}

impl Repo {
    /// Claims a queued attempt for `claimer` until `lease_until`. Claiming an
    /// attempt one already holds is granted again (idempotent).
    pub async fn claim(
        &self,
        attempt_id: &str,
        claimer: &str,
        lease_until: i64,
    ) -> Result<Claim, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let c = claim_in(&mut tx, attempt_id, claimer, lease_until).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Applies a call event to its attempt, once (inbox). Returns the campaign
    /// id when the attempt was completed by it.
    pub async fn apply_call_event(
        &self,
        event_id: &str,
        ev: &CallEvent,
    ) -> Result<Option<String>, sqlx::Error> {
        Ok(self
            .apply_call_events(&[(event_id, ev)])
            .await?
            .pop()
            .flatten())
    }

    /// Applies a batch of call events in one transaction: one inbox
    /// statement, each event's conditional updates, one commit. Per event,
    /// in order: the campaign id when it completed its attempt. An event
    /// seen before (inbox) changes nothing. A deadlock with a concurrent
    /// batch (they share leads, the abandon ledger and the inbox) runs the
    /// transaction again here: redelivered instead, the events would spend
    /// their deliveries and be dead-lettered under load.
    pub async fn apply_call_events(
        &self,
        events: &[(&str, &CallEvent)],
    ) -> Result<Vec<Option<String>>, sqlx::Error> {
        dialstack_common::db::retry_conflicts(5, || self.apply_call_events_once(events)).await
    }

    async fn apply_call_events_once(
        &self,
        events: &[(&str, &CallEvent)],
    ) -> Result<Vec<Option<String>>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = events.iter().map(|(id, _)| *id).collect();
        let fresh =
            dialstack_common::db::inbox_claim_many(&mut tx, self.db.dialect, crate::NAME, &ids)
                .await?;
        let now = dialstack_common::now_ms();
        let mut out = Vec::with_capacity(events.len());
        for ((_, ev), new) in events.iter().zip(fresh) {
            out.push(if new {
                apply_one(&mut tx, self.db.dialect, ev, now).await?
            } else {
                None
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Asks media-processor to end the call `call_id`: a `hangup` command
    /// on the commands channel, addressed to the instance that claimed the
    /// attempt ([`dialstack_contract::instance_route`]), since with several
    /// replicas any other one would not hold the call. `may` decides on the
    /// call's campaign team before anything is written.
    pub async fn request_hangup(
        &self,
        call_id: &str,
        requested_by: &str,
        may: impl Fn(Option<&String>) -> bool,
        source: &str,
    ) -> Result<HangupRequest, sqlx::Error> {
        let row = sqlx::query(
            "SELECT a.state, c.team, a.id, a.campaign_id, a.phone, a.claimed_by FROM attempts a
             JOIN campaigns c ON c.id = a.campaign_id WHERE a.call_id = ?",
        )
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(HangupRequest::NoSuchCall);
        };
        let claimed_by: Option<String> = row.get(5);
        let state: String = row.get(0);
        let team: Option<String> = row.get(1);
        if !may(team.as_ref()) {
            return Ok(HangupRequest::NoSuchCall);
        }
        if state == "completed" {
            return Ok(HangupRequest::Over);
        }
        let mut tx = self.db.begin().await?;
        if state == "queued" {
            // Not claimed yet: ended here, so the claim that may still come
            // is refused and nobody is dialed.
            let now = dialstack_common::now_ms();
            let moved = sqlx::query(
                "UPDATE attempts SET state = 'completed', outcome = 'canceled', updated_at = ?
                 WHERE call_id = ? AND state = 'queued'",
            )
            .bind(now)
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                let attempt_id: String = row.get(2);
                settle_lead(&mut tx, &attempt_id, Outcome::Canceled, None, now).await?;
                let done = CallCompleted::unanswered(
                    CallRef {
                        call_id: call_id.to_owned(),
                        attempt_id: row.get(2),
                        campaign_id: row.get(3),
                        phone: row.get(4),
                        at_ms: now,
                        team,
                    },
                    Outcome::Canceled,
                    None,
                );
                let ev = CloudEvent::new(source, types::CALL_COMPLETED, call_id, &done);
                outbox_enqueue(&mut tx, dialstack_common::db::channel::EVENTS, call_id, &ev)
                    .await?;
                tx.commit().await?;
                return Ok(HangupRequest::Sent);
            }
        }
        let cmd = HangupCommand {
            call_id: call_id.to_owned(),
            requested_by: Some(requested_by.to_owned()),
        };
        let ev = CloudEvent::new(source, types::HANGUP, call_id, &cmd);
        // Claimed between our read and now, or by a claimer unknown: the
        // plain key, which every instance's shared queue takes.
        let route = claimed_by.map_or_else(
            || types::HANGUP.to_owned(),
            |c| dialstack_contract::instance_route(types::HANGUP, &c),
        );
        outbox_enqueue_routed(
            &mut tx,
            dialstack_common::db::channel::COMMANDS,
            call_id,
            &route,
            &ev,
        )
        .await?;
        tx.commit().await?;
        Ok(HangupRequest::Sent)
    }

    /// Asks the media-processor instance holding the call `call_id` to hand
    /// its callee on to `target` (a `transfer` command addressed as
    /// [`Self::request_hangup`]'s). `may` decides on the call's campaign
    /// team and agent before anything is written; only a call that is live
    /// and bridged to an agent can be transferred.
    pub async fn request_transfer(
        &self,
        call_id: &str,
        target: &str,
        requested_by: &str,
        may: impl Fn(Option<&String>, Option<&String>) -> bool,
        source: &str,
    ) -> Result<TransferRequest, sqlx::Error> {
        let row = sqlx::query(
            "SELECT a.state, c.team, a.agent_id, a.claimed_by FROM attempts a
             JOIN campaigns c ON c.id = a.campaign_id WHERE a.call_id = ?",
        )
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TransferRequest::NoSuchCall);
        };
        let state: String = row.get(0);
        let team: Option<String> = row.get(1);
        let agent_id: Option<String> = row.get(2);
        let claimed_by: Option<String> = row.get(3);
        if !may(team.as_ref(), agent_id.as_ref()) {
            return Ok(TransferRequest::NoSuchCall);
        }
        if state == "completed" {
            return Ok(TransferRequest::Over);
        }
        let (Some(_), Some(claimer)) = (agent_id, claimed_by) else {
            return Ok(TransferRequest::NoAgent);
        };
        let cmd = TransferCommand {
            call_id: call_id.to_owned(),
            target: target.to_owned(),
            requested_by: Some(requested_by.to_owned()),
        };
        let ev = CloudEvent::new(source, types::TRANSFER, call_id, &cmd);
        let mut tx = self.db.begin().await?;
        outbox_enqueue_routed(
            &mut tx,
            dialstack_common::db::channel::COMMANDS,
            call_id,
            &dialstack_contract::instance_route(types::TRANSFER, &claimer),
            &ev,
        )
        .await?;
        tx.commit().await?;
        Ok(TransferRequest::Sent)
    }

    /// Extends the lease of the attempts `claimer` holds (claimed or
    /// dialing) among `ids` to `lease_until`; returns how many it extended.
    /// An attempt the reaper already resolved is not revived.
    pub async fn renew_leases(
        &self,
        claimer: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<u64, sqlx::Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE attempts SET lease_until = ? WHERE claimed_by = ? AND state IN ('claimed', 'dialing'){}",
            dialstack_common::db::and_in("id", ids.len())
        );
        let mut q = sqlx::query(&sql).bind(lease_until).bind(claimer);
        for id in ids {
            q = q.bind(id);
        }
        Ok(q.execute(&self.db.pool).await?.rows_affected())
    }

    /// Which of `ids` `claimer` still holds (claimed or dialing): the
    /// others were completed (their `call.completed` was taken in, or the
    /// reaper resolved them) or are another claimer's.
    pub async fn held_leases(
        &self,
        claimer: &str,
        ids: &[String],
    ) -> Result<Vec<String>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id FROM attempts WHERE claimed_by = ? AND state IN ('claimed', 'dialing'){}",
            dialstack_common::db::and_in("id", ids.len())
        );
        let mut q = sqlx::query(&sql).bind(claimer);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect()
    }

    /// Resolves attempts that will never hear from a media processor, each
    /// to `failed` with a typed reason and a `call.completed` event (so the
    /// CDR and the counters see it), never to a redial:
    /// - `claimed` or `dialing` whose lease ran out (the media processor
    ///   died or lost the call: it renews the lease while a call lives):
    ///   `media_lost`;
    /// - `queued` for longer than `queued_timeout_ms` (the dial command was
    ///   dead-lettered or lost): `dial_lost`. A late dial then finds the
    ///   attempt completed and its claim is refused.
    ///
    /// Returns the campaigns touched. At most `limit` attempts per call.
    pub async fn reap_stuck(
        &self,
        queued_timeout_ms: i64,
        limit: i64,
        source: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let rows = sqlx::query(
            "SELECT a.id, a.state, a.call_id, a.campaign_id, a.phone, c.team FROM attempts a
             JOIN campaigns c ON c.id = a.campaign_id
             WHERE (a.state IN ('claimed', 'dialing') AND a.lease_until < ?)
                OR (a.state = 'queued' AND a.updated_at < ?)
             LIMIT ?",
        )
        .bind(now)
        .bind(now - queued_timeout_ms)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        let mut touched = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let state: String = r.get(1);
            let reason = if state == "queued" {
                FailReason::DialLost
            } else {
                FailReason::MediaLost
            };
            let mut tx = self.db.begin().await?;
            // The same conditions again: a heartbeat may have renewed the
            // lease since the SELECT.
            let moved = sqlx::query(
                "UPDATE attempts SET state = 'completed', outcome = 'failed', reason = ?, updated_at = ?
                 WHERE id = ? AND state = ?
                   AND ((state IN ('claimed', 'dialing') AND lease_until < ?)
                     OR (state = 'queued' AND updated_at < ?))",
            )
            .bind(reason.as_str())
            .bind(now)
            .bind(&id)
            .bind(&state)
            .bind(now)
            .bind(now - queued_timeout_ms)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                continue;
            }
            settle_lead(&mut tx, &id, Outcome::Failed, Some(reason), now).await?;
            let call_id: Option<String> = r.get(2);
            let call_id = call_id.unwrap_or_else(|| id.clone());
            let campaign_id: String = r.get(3);
            let done = CallCompleted::unanswered(
                CallRef {
                    call_id: call_id.clone(),
                    attempt_id: id.clone(),
                    campaign_id: campaign_id.clone(),
                    phone: r.get(4),
                    at_ms: now,
                    team: r.get(5),
                },
                Outcome::Failed,
                Some(reason),
            );
            let ev = CloudEvent::new(source, types::CALL_COMPLETED, &call_id, &done);
            outbox_enqueue(
                &mut tx,
                dialstack_common::db::channel::EVENTS,
                &call_id,
                &ev,
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(attempt_id = %id, %call_id, from = %state, reason = reason.as_str(), "attempt resolved by the reaper");
            if !touched.contains(&campaign_id) {
                touched.push(campaign_id);
            }
        }
        Ok(touched)
    }
}
