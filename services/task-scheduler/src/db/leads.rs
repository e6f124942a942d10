//! Leads: import batches, listings with attempt history, callbacks.

use std::collections::HashMap;

use dialstack_common::db::batch::{outbox_enqueue_many, OutboxItem};
use dialstack_common::db::{channel, Dialect, Tx};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CustomerUpserted};
use sqlx::Row;

use super::{marks, Repo};
use crate::domain::lead::ValidLead;
use crate::domain::state::{sql_in, LeadEvent, LeadState};

/// Rows per multi-row INSERT.
pub const INSERT_CHUNK: usize = 500;

/// The lane of a lead: 0 for a callback, then 1 (priority 9) to 10
/// (priority 0). The dispatcher serves lanes in order, each by due time.
pub fn lane(priority: u8) -> i64 {
    10 - i64::from(priority.min(9))
}

/// A lead with its schedule and attempts, as its owner or a supervisor
/// reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Lead {
    /// Id.
    pub id: String,
    /// Campaign.
    pub campaign_id: String,
    /// The campaign's team.
    pub team: Option<String>,
    /// The number, E.164.
    pub phone: String,
    /// The owning agent.
    pub agent_id: Option<String>,
    /// `pending`, `dialing`, `done`, `canceled`, `dnc` or `blocked`.
    pub state: String,
    /// 0-9, higher first.
    pub priority: i64,
    /// When it is next due (ms since epoch).
    pub due_at: i64,
    /// Attempts made.
    pub attempt_count: i64,
    /// Outcome of the latest attempt.
    pub last_outcome: Option<String>,
    /// The time zone given at import.
    pub timezone: Option<String>,
    /// Zones the callee may be in (derived from the number when no time
    /// zone was given), comma-separated.
    pub zones: String,
    /// CRM id.
    pub external_id: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// A booked callback (ms since epoch).
    pub callback_at: Option<i64>,
    /// The agent the callback is for.
    pub callback_agent_id: Option<String>,
    /// Attempts, oldest first.
    pub attempts: Vec<LeadAttempt>,
}

/// One attempt at a lead.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LeadAttempt {
    /// Attempt id.
    pub id: String,
    /// State.
    pub state: String,
    /// The call, once queued.
    pub call_id: Option<String>,
    /// Outcome, once completed.
    pub outcome: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// When it was queued (ms since epoch).
    pub created_at: i64,
}

/// Filters of a lead listing; the scope fields come from the caller.
#[derive(Debug, Clone, Default)]
pub struct LeadQuery {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this state.
    pub state: Option<LeadState>,
    /// Only leads owned by this agent.
    pub agent_id: Option<String>,
    /// Only leads of campaigns of these teams; `Some(empty)` matches none.
    pub teams: Option<Vec<String>>,
    /// Leads after this id.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// What one import batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportBatchResult {
    /// New leads.
    pub accepted: u64,
    /// Numbers already in the campaign.
    pub duplicates: u64,
}

const LEAD_COLS: &str = "l.id, l.campaign_id, c.team, l.phone, l.agent_id, l.state, l.priority, l.due_at, l.attempts, l.last_outcome, l.timezone, l.zones, l.external_id, l.first_name, l.last_name, l.callback_at, l.callback_agent_id";

fn lead_from(r: &sqlx::any::AnyRow) -> Result<Lead, sqlx::Error> {
    Ok(Lead {
        id: r.try_get(0)?,
        campaign_id: r.try_get(1)?,
        team: r.try_get(2)?,
        phone: r.try_get(3)?,
        agent_id: r.try_get(4)?,
        state: r.try_get(5)?,
        priority: r.try_get(6)?,
        due_at: r.try_get(7)?,
        attempt_count: r.try_get(8)?,
        last_outcome: r.try_get(9)?,
        timezone: r.try_get(10)?,
        zones: r.try_get(11)?,
        external_id: r.try_get(12)?,
        first_name: r.try_get(13)?,
        last_name: r.try_get(14)?,
        callback_at: r.try_get(15)?,
        callback_agent_id: r.try_get(16)?,
        attempts: Vec::new(),
    })
}

/// Inserts `leads` (at most [`INSERT_CHUNK`]) into a campaign, skipping
/// numbers it already has. Returns how many were new.
pub(crate) async fn insert_leads(
    tx: &mut Tx,
    dialect: Dialect,
    campaign_id: &str,
    leads: &[ValidLead],
    now: i64,
) -> Result<u64, sqlx::Error> {
    if leads.is_empty() {
        return Ok(0);
    }
    let row = "(?, ?, 0, ?, ?, 'pending', ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)";
    let sql = format!(
        "{} INTO leads (id, campaign_id, seq, phone, agent_id, state, lane, priority, due_at, attempts, timezone, zones, external_id, first_name, last_name, fields, created_at, updated_at) VALUES {}",
        dialect.insert_ignore(),
        vec![row; leads.len()].join(", ")
    );
    let mut q = sqlx::query(&sql);
    for l in leads {
        q = q
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(campaign_id)
            .bind(l.phone.clone())
            .bind(l.agent_id.clone())
            .bind(lane(l.priority))
            .bind(i64::from(l.priority))
            .bind(now)
            .bind(l.timezone.clone())
            .bind(l.zones.clone())
            .bind(l.external_id.clone())
            .bind(l.first_name.clone())
            .bind(l.last_name.clone())
            .bind(prompt_fields_json(l))
            .bind(now)
            .bind(now);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

/// The stored prompt fields of a lead (a JSON object; `NULL` for none).
fn prompt_fields_json(l: &ValidLead) -> Option<String> {
    let f = l.prompt_fields();
    (!f.is_empty()).then(|| serde_json::to_string(&f).unwrap_or_default())
}

/// Writes a `customer.upserted` event for every lead that carries profile
/// fields, in `tx`.
pub(crate) async fn profile_events(
    tx: &mut Tx,
    source: &str,
    campaign_id: &str,
    leads: &[ValidLead],
) -> Result<(), sqlx::Error> {
    if !leads.iter().any(ValidLead::has_profile) {
        return Ok(());
    }
    // The campaign's team is the customers' scope in storage-service.
    let team: Option<String> = sqlx::query("SELECT team FROM campaigns WHERE id = ?")
        .bind(campaign_id)
        .fetch_optional(&mut **tx)
        .await?
        .and_then(|r| sqlx::Row::get(&r, 0));
    let team = team.as_deref();
    let events: Vec<CloudEvent> = leads
        .iter()
        .filter(|l| l.has_profile())
        .map(|l| {
            let data = CustomerUpserted {
                phone: l.phone.clone(),
                campaign_id: campaign_id.to_owned(),
                team: team.map(str::to_owned),
                external_id: l.external_id.clone(),
                first_name: l.first_name.clone(),
                last_name: l.last_name.clone(),
                fields: l.fields.clone(),
            };
            CloudEvent::new(source, types::CUSTOMER_UPSERTED, &l.phone, &data)
        })
        .collect();
    let items: Vec<OutboxItem<'_>> = events
        .iter()
        .map(|ev| OutboxItem {
            channel: channel::EVENTS,
            key: ev.subject.as_deref().unwrap_or(&ev.id),
            event: ev,
        })
        .collect();
    outbox_enqueue_many(tx, &items).await
}

/// Books a callback inside `tx` (see [`Repo::book_callback`]): `true` when
/// the lead moved.
pub(crate) async fn book_callback_in(
    tx: &mut Tx,
    lead_id: &str,
    at: i64,
    agent_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let sources = LeadState::sources(LeadEvent::Reschedule);
    let moved = sqlx::query(&format!(
        "UPDATE leads SET lane = 0, due_at = ?, callback_at = ?, callback_agent_id = ?,
           reopened = CASE WHEN state = 'done' THEN 1 ELSE reopened END, state = 'pending', updated_at = ?
         WHERE id = ?{} AND campaign_id IN (SELECT id FROM campaigns WHERE state IN ('draft', 'running', 'paused'))",
        sql_in("state", &sources, LeadState::as_str)
    ))
    .bind(at)
    .bind(at)
    .bind(agent_id.map(str::to_owned))
    .bind(dialstack_common::now_ms())
    .bind(lead_id)
    .execute(&mut **tx)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// What became of a callback request.
#[derive(Debug, Clone, PartialEq)]
pub enum CallbackResult {
    /// Booked (or canceled): the lead as it is now.
    Done(Box<Lead>),
    /// The lead's state does not allow it.
    Refused(String),
    /// No such lead.
    Missing,
}

impl Repo {
    /// Adds a batch of validated leads to a campaign in one transaction,
    /// with `extra` (e.g. profile events) written in the same transaction.
    pub async fn import_batch(
        &self,
        campaign_id: &str,
        leads: &[ValidLead],
        source: &str,
    ) -> Result<ImportBatchResult, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let mut accepted = 0;
        for chunk in leads.chunks(INSERT_CHUNK) {
            accepted += insert_leads(&mut tx, self.db.dialect, campaign_id, chunk, now).await?;
        }
        profile_events(&mut tx, source, campaign_id, leads).await?;
        tx.commit().await?;
        Ok(ImportBatchResult {
            accepted,
            duplicates: leads.len() as u64 - accepted,
        })
    }

    /// Leads in id order, filtered and scoped, with their attempts.
    pub async fn leads(&self, q: &LeadQuery) -> Result<Vec<Lead>, sqlx::Error> {
        let mut sql = format!(
            "SELECT {LEAD_COLS} FROM leads l JOIN campaigns c ON c.id = l.campaign_id WHERE 1 = 1"
        );
        let state = q.state.map(|s| s.as_str().to_owned());
        for (cond, v) in [
            (" AND l.campaign_id = ?", &q.campaign_id),
            (" AND l.state = ?", &state),
            (" AND l.agent_id = ?", &q.agent_id),
            (" AND l.id > ?", &q.after),
        ] {
            if v.is_some() {
                sql.push_str(cond);
            }
        }
        let teams = q.teams.as_deref().unwrap_or_default();
        if q.teams.is_some() {
            sql.push_str(&dialstack_common::db::and_in("c.team", teams.len()));
        }
        sql.push_str(" ORDER BY l.id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for v in [&q.campaign_id, &state, &q.agent_id, &q.after]
            .into_iter()
            .flatten()
            .chain(teams)
        {
            query = query.bind(v);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        let mut leads = rows.iter().map(lead_from).collect::<Result<Vec<_>, _>>()?;
        self.attach_attempts(&mut leads).await?;
        Ok(leads)
    }

    /// One lead with its attempts.
    pub async fn lead(&self, id: &str) -> Result<Option<Lead>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {LEAD_COLS} FROM leads l JOIN campaigns c ON c.id = l.campaign_id WHERE l.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let mut leads = vec![lead_from(&r)?];
        self.attach_attempts(&mut leads).await?;
        Ok(leads.pop())
    }

    async fn attach_attempts(&self, leads: &mut [Lead]) -> Result<(), sqlx::Error> {
        if leads.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT lead_id, id, state, call_id, outcome, reason, created_at FROM attempts WHERE lead_id IN ({}) ORDER BY created_at, id",
            marks(leads.len())
        );
        let mut q = sqlx::query(&sql);
        for l in leads.iter() {
            q = q.bind(l.id.clone());
        }
        let mut by_lead: HashMap<String, Vec<LeadAttempt>> = HashMap::new();
        for r in q.fetch_all(&self.db.pool).await? {
            by_lead.entry(r.try_get(0)?).or_default().push(LeadAttempt {
                id: r.try_get(1)?,
                state: r.try_get(2)?,
                call_id: r.try_get(3)?,
                outcome: r.try_get(4)?,
                reason: r.try_get(5)?,
                created_at: r.try_get(6)?,
            });
        }
        for l in leads {
            l.attempts = by_lead.remove(&l.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Books a callback: the lead is due at `at` ahead of every other lane,
    /// optionally for one agent. A finished lead is reopened for it; a lead
    /// on a call, canceled, on DNC or blocked is refused, and so is a lead
    /// of a campaign that no longer dials.
    pub async fn book_callback(
        &self,
        lead_id: &str,
        at: i64,
        agent_id: Option<&str>,
    ) -> Result<CallbackResult, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let moved = book_callback_in(&mut tx, lead_id, at, agent_id).await?;
        tx.commit().await?;
        self.callback_result(lead_id, moved).await
    }

    /// Cancels a booked callback: the lead returns to its lane (or to
    /// `done` when the callback had reopened it).
    pub async fn cancel_callback(&self, lead_id: &str) -> Result<CallbackResult, sqlx::Error> {
        let moved = sqlx::query(
            "UPDATE leads SET lane = 10 - priority, callback_at = NULL, callback_agent_id = NULL,
               state = CASE WHEN reopened = 1 THEN 'done' ELSE state END, reopened = 0, updated_at = ?
             WHERE id = ? AND state = 'pending' AND callback_at IS NOT NULL",
        )
        .bind(dialstack_common::now_ms())
        .bind(lead_id)
        .execute(&self.db.pool)
        .await?;
        self.callback_result(lead_id, moved.rows_affected() == 1)
            .await
    }

    async fn callback_result(&self, id: &str, moved: bool) -> Result<CallbackResult, sqlx::Error> {
        Ok(match self.lead(id).await? {
            None => CallbackResult::Missing,
            Some(l) if moved => CallbackResult::Done(Box::new(l)),
            Some(l) => CallbackResult::Refused(l.state),
        })
    }
}
