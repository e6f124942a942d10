//! Dispositions: what the agent of a call says came of it, stored on the
//! attempt and its lead with its effect on the lead (a callback, the
//! do-not-call list, the end of the lead) and the `call.disposition`
//! event, all in one transaction. A call takes one disposition.

use dialstack_common::db::{channel, outbox_enqueue};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallDisposition};
use dialstack_dialrules::hours::CallingHours;
use sqlx::Row;

use super::dnc::{insert_dnc, DncScope};
use super::leads::book_callback_in;
use super::Repo;
use crate::domain::disposition::Effect;
use crate::domain::state::{sql_in, AttemptState, LeadEvent, LeadState};

/// A stored disposition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Disposition {
    /// The call.
    pub call_id: String,
    /// Its attempt.
    pub attempt_id: String,
    /// Its campaign.
    pub campaign_id: String,
    /// Its lead.
    pub lead_id: String,
    /// The agent who was on the call.
    pub agent_id: String,
    /// One of the campaign's codes.
    pub code: String,
    /// Free text.
    pub note: Option<String>,
    /// With `CALLBACK`: when the lead is called back (ms since epoch).
    pub callback_at: Option<i64>,
    /// Who set it: the agent, or a supervisor or admin for them.
    pub set_by: String,
    /// When (ms since epoch).
    pub at: i64,
}

/// A call as a disposition needs it: who was on it, its campaign's codes
/// and rules, and the disposition it already has.
#[derive(Debug, Clone, PartialEq)]
pub struct DispositionTarget {
    /// The call.
    pub call_id: String,
    /// Its attempt.
    pub attempt_id: String,
    /// Its campaign.
    pub campaign_id: String,
    /// Its lead.
    pub lead_id: String,
    /// The number.
    pub phone: String,
    /// The agent the call was bridged to, if any.
    pub agent_id: Option<String>,
    /// The attempt's state.
    pub attempt_state: AttemptState,
    /// The campaign's team.
    pub team: Option<String>,
    /// The campaign's codes.
    pub dispositions: Vec<String>,
    /// The campaign's calling window.
    pub calling_hours: CallingHours,
    /// The campaign's cap of attempts per lead.
    pub max_attempts: Option<i64>,
    /// The lead's zones, comma-separated.
    pub zones: String,
    /// The lead's attempts so far.
    pub lead_attempts: i64,
    /// The disposition already set.
    pub existing: Option<Disposition>,
}

/// A disposition to record, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDisposition {
    /// The code (one of the campaign's).
    pub code: String,
    /// Free text.
    pub note: Option<String>,
    /// With `CALLBACK`: when.
    pub callback_at: Option<i64>,
    /// Who sets it.
    pub set_by: String,
}

/// What became of a disposition.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Stored, with its effect.
    Done(Box<Disposition>),
    /// The call already had one (another request won the race).
    Exists(Box<Disposition>),
    /// The call is not over yet.
    InProgress,
    /// The callback could not be booked: the lead is in this state, or its
    /// campaign no longer dials.
    CallbackRefused(String),
}

const TARGET: &str = "SELECT a.call_id, a.id, a.campaign_id, a.lead_id, a.phone, a.agent_id, a.state,
       c.team, c.dispositions, c.calling_hours, c.max_attempts, l.zones, l.attempts,
       a.disposition, a.disposition_note, a.disposition_callback_at, a.disposition_by, a.disposition_at
     FROM attempts a JOIN campaigns c ON c.id = a.campaign_id JOIN leads l ON l.id = a.lead_id
     WHERE a.call_id = ?";

fn target_from(r: &sqlx::any::AnyRow) -> Result<DispositionTarget, sqlx::Error> {
    let state: String = r.try_get(6)?;
    let attempt_state = AttemptState::parse(&state).ok_or_else(|| {
        sqlx::Error::Decode(format!("attempts.state: unknown state {state:?}").into())
    })?;
    let dispositions = match super::text(r, 8)? {
        None => crate::domain::disposition::default_dispositions(),
        Some(s) => serde_json::from_str(&s)
            .map_err(|e| sqlx::Error::Decode(format!("campaigns.dispositions: {e}").into()))?,
    };
    let call_id: String = r.try_get(0)?;
    let attempt_id: String = r.try_get(1)?;
    let campaign_id: String = r.try_get(2)?;
    let lead_id: String = r.try_get(3)?;
    let agent_id: Option<String> = r.try_get(5)?;
    let code: Option<String> = r.try_get(13)?;
    let existing = match code {
        None => None,
        Some(code) => Some(Disposition {
            call_id: call_id.clone(),
            attempt_id: attempt_id.clone(),
            campaign_id: campaign_id.clone(),
            lead_id: lead_id.clone(),
            agent_id: agent_id.clone().unwrap_or_default(),
            code,
            note: super::text(r, 14)?,
            callback_at: r.try_get(15)?,
            set_by: r.try_get::<Option<String>, _>(16)?.unwrap_or_default(),
            at: r.try_get::<Option<i64>, _>(17)?.unwrap_or_default(),
        }),
    };
    Ok(DispositionTarget {
        call_id,
        attempt_id,
        campaign_id,
        lead_id,
        phone: r.try_get(4)?,
        agent_id,
        attempt_state,
        team: r.try_get(7)?,
        dispositions,
        calling_hours: super::text(r, 9)?
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        max_attempts: r.try_get(10)?,
        zones: r.try_get(11)?,
        lead_attempts: r.try_get(12)?,
        existing,
    })
}

impl Repo {
    /// The call `call_id` as a disposition needs it.
    pub async fn disposition_target(
        &self,
        call_id: &str,
    ) -> Result<Option<DispositionTarget>, sqlx::Error> {
        let row = sqlx::query(TARGET)
            .bind(call_id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(target_from).transpose()
    }

    /// Records `d` on the call of `t` (whose agent must be known), once, in
    /// one transaction with its effect on the lead and the
    /// `call.disposition` event:
    /// - `CALLBACK`: the lead is due at `callback_at`, for the call's agent
    ///   (the callback booking of `POST /v1/leads/{id}/callback`);
    /// - `DNC`: the number goes on the global do-not-call list, and a
    ///   pending lead closes as `dnc`;
    /// - `SALE`, `NO_INTEREST`, `WRONG_NUMBER`: a pending lead (a retry or
    ///   a callback was due) closes as `done`; one already done stays so.
    pub async fn record_disposition(
        &self,
        t: &DispositionTarget,
        d: &NewDisposition,
        source: &str,
    ) -> Result<Recorded, sqlx::Error> {
        let agent_id = t.agent_id.clone().unwrap_or_default();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let stored = sqlx::query(&format!(
            "UPDATE attempts SET disposition = ?, disposition_note = ?, disposition_by = ?, disposition_at = ?,
               disposition_callback_at = ? WHERE id = ? AND disposition IS NULL{}",
            sql_in("state", &[AttemptState::Completed], AttemptState::as_str)
        ))
        .bind(&d.code)
        .bind(d.note.clone())
        .bind(&d.set_by)
        .bind(now)
        .bind(d.callback_at)
        .bind(&t.attempt_id)
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(match self.disposition_target(&t.call_id).await? {
                Some(DispositionTarget {
                    existing: Some(e), ..
                }) => Recorded::Exists(Box::new(e)),
                _ => Recorded::InProgress,
            });
        }
        sqlx::query(
            "UPDATE leads SET disposition = ?, disposition_note = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&d.code)
        .bind(d.note.clone())
        .bind(now)
        .bind(&t.lead_id)
        .execute(&mut *tx)
        .await?;
        match Effect::of(&d.code) {
            Effect::Callback => {
                let at = d.callback_at.unwrap_or(now);
                if !book_callback_in(&mut tx, &t.lead_id, at, Some(&agent_id)).await? {
                    tx.rollback().await?;
                    let state = self
                        .lead(&t.lead_id)
                        .await?
                        .map(|l| l.state)
                        .unwrap_or_default();
                    return Ok(Recorded::CallbackRefused(state));
                }
            }
            Effect::DoNotCall => {
                let reason = format!("disposition DNC on call {}", t.call_id);
                insert_dnc(
                    &mut tx,
                    self.db.dialect,
                    std::slice::from_ref(&t.phone),
                    &DncScope::Global,
                    None,
                    Some(&reason),
                    &d.set_by,
                )
                .await?;
                close_pending(&mut tx, &t.lead_id, LeadEvent::DoNotCall, now).await?;
            }
            Effect::End => close_pending(&mut tx, &t.lead_id, LeadEvent::Exhaust, now).await?,
            Effect::Record => {}
        }
        let data = CallDisposition {
            call_id: t.call_id.clone(),
            attempt_id: t.attempt_id.clone(),
            campaign_id: t.campaign_id.clone(),
            agent_id: agent_id.clone(),
            code: d.code.clone(),
            note: d.note.clone(),
            callback_at_ms: d.callback_at,
            at_ms: now,
        };
        let ev = CloudEvent::new(source, types::CALL_DISPOSITION, &t.call_id, &data);
        outbox_enqueue(&mut tx, channel::EVENTS, &t.call_id, &ev).await?;
        tx.commit().await?;
        Ok(Recorded::Done(Box::new(Disposition {
            call_id: t.call_id.clone(),
            attempt_id: t.attempt_id.clone(),
            campaign_id: t.campaign_id.clone(),
            lead_id: t.lead_id.clone(),
            agent_id,
            code: d.code.clone(),
            note: d.note.clone(),
            callback_at: d.callback_at,
            set_by: d.set_by.clone(),
            at: now,
        })))
    }
}

/// Closes a pending lead by `event` (`DoNotCall` → `dnc`, `Exhaust` →
/// `done`), dropping a booked callback; a lead in any other state is left
/// as it is.
async fn close_pending(
    tx: &mut dialstack_common::db::Tx,
    lead_id: &str,
    event: LeadEvent,
    now: i64,
) -> Result<(), sqlx::Error> {
    let Some(to) = LeadState::Pending.apply(event) else {
        return Ok(());
    };
    sqlx::query(&format!(
        "UPDATE leads SET state = ?, lane = 10 - priority, callback_at = NULL, callback_agent_id = NULL,
           reopened = 0, preview_agent_id = NULL, preview_until = NULL, updated_at = ? WHERE id = ?{}",
        sql_in("state", &LeadState::sources(event), LeadState::as_str)
    ))
    .bind(to.as_str())
    .bind(now)
    .bind(lead_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
