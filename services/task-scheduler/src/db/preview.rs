//! Preview holds. A `preview` campaign is never dialed by the dispatcher:
//! an agent asks for the next lead, which is held for them
//! (`preview_agent_id`, `preview_until`) while they read it, then dials it
//! or skips it. The lead stays `pending` throughout; a hold is taken by a
//! conditional update, so of two agents asking at once only one gets it,
//! and a hold that lapses is free for anyone.

use sqlx::Row;

use super::{Campaign, Candidate, Repo};
use crate::domain::campaign::DialMode;
use crate::domain::state::{sql_in, LeadEvent, LeadState};

/// How long an agent holds a lead they were given (ms).
pub const PREVIEW_HOLD_MS: i64 = 5 * 60_000;
/// How long a skipped lead waits before anyone is offered it again (ms).
pub const SKIP_DELAY_MS: i64 = 10 * 60_000;

/// Who holds a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// The lead.
    pub lead_id: String,
    /// Its campaign.
    pub campaign_id: String,
    /// Its state.
    pub state: String,
    /// The agent holding it (or who last did).
    pub agent_id: Option<String>,
    /// Until when (ms since epoch).
    pub until: Option<i64>,
}

const CANDIDATE_COLS: &str = "id, phone, zones, attempts, due_at, lane, fields";

fn candidate_from(r: &sqlx::any::AnyRow) -> Result<Candidate, sqlx::Error> {
    Ok(Candidate {
        id: r.try_get(0)?,
        phone: r.try_get(1)?,
        zones: r.try_get(2)?,
        attempts: r.try_get(3)?,
        due_at: r.try_get(4)?,
        lane: r.try_get(5)?,
        // One lead at a time: its fields always come along.
        fields: super::text(r, 6)?,
    })
}

fn pending() -> String {
    sql_in(
        "state",
        &LeadState::sources(LeadEvent::Dispatch),
        LeadState::as_str,
    )
}

impl Repo {
    /// Running `preview` campaigns of any of `teams`, highest priority
    /// first.
    pub async fn preview_campaigns(&self, teams: &[String]) -> Result<Vec<Campaign>, sqlx::Error> {
        if teams.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM campaigns WHERE state = 'running' AND mode = ?{} ORDER BY priority DESC, id",
            super::campaigns::CAMPAIGN_COLS,
            dialstack_common::db::and_in("team", teams.len())
        );
        let mut q = sqlx::query(&sql).bind(DialMode::Preview.as_str());
        for t in teams {
            q = q.bind(t);
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        rows.iter().map(super::campaigns::campaign_from).collect()
    }

    /// The lead `agent_id` holds at `now`, if any.
    pub async fn held_by(&self, agent_id: &str, now: i64) -> Result<Option<Hold>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT id, campaign_id, state, preview_agent_id, preview_until FROM leads
             WHERE preview_agent_id = ? AND preview_until >= ?{} ORDER BY preview_until DESC LIMIT 1",
            pending()
        ))
        .bind(agent_id)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(hold_from).transpose()
    }

    /// The hold of a lead (whoever holds it, if anyone).
    pub async fn hold(&self, lead_id: &str) -> Result<Option<Hold>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, campaign_id, state, preview_agent_id, preview_until FROM leads WHERE id = ?",
        )
        .bind(lead_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(hold_from).transpose()
    }

    /// One lead as the dispatcher judges it.
    pub async fn candidate(&self, lead_id: &str) -> Result<Option<Candidate>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {CANDIDATE_COLS} FROM leads WHERE id = ?"))
            .bind(lead_id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(candidate_from).transpose()
    }

    /// Up to `n` leads of a campaign next in line for `agent_id` at `now`:
    /// pending and due, held by nobody (or by a hold that lapsed), and
    /// neither owned by nor booked as a callback for another agent.
    /// Callbacks first, then by priority, each by due time (as the
    /// dispatcher serves them).
    pub async fn preview_candidates(
        &self,
        campaign_id: &str,
        agent_id: &str,
        now: i64,
        n: i64,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CANDIDATE_COLS} FROM leads
             WHERE campaign_id = ?{} AND due_at <= ?
               AND (preview_until IS NULL OR preview_until < ?)
               AND (agent_id IS NULL OR agent_id = ?)
               AND (callback_agent_id IS NULL OR callback_agent_id = ?)
             ORDER BY lane, due_at, id LIMIT ?",
            pending()
        ))
        .bind(campaign_id)
        .bind(now)
        .bind(now)
        .bind(agent_id)
        .bind(agent_id)
        .bind(n)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(candidate_from).collect()
    }

    /// Holds a pending lead that is due at `now` for `agent_id` until
    /// `until` unless another agent holds it (compare-and-set; renews the
    /// agent's own hold), and drops any other hold of the agent's: an agent
    /// holds one lead at a time. `true` when the agent holds it. Due again:
    /// a lead skipped (put off) since the caller read it is not taken.
    pub async fn take_hold(
        &self,
        lead_id: &str,
        agent_id: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let held = sqlx::query(&format!(
            "UPDATE leads SET preview_agent_id = ?, preview_until = ?, updated_at = ?
             WHERE id = ?{} AND due_at <= ? AND (preview_until IS NULL OR preview_until < ? OR preview_agent_id = ?)",
            pending()
        ))
        .bind(agent_id)
        .bind(until)
        .bind(now)
        .bind(lead_id)
        .bind(now)
        .bind(now)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Released one by one by primary key: a locking range scan of
        // `leads_preview` would take gap locks (MySQL) that two agents
        // taking holds at once could deadlock on.
        let others: Vec<String> =
            sqlx::query("SELECT id FROM leads WHERE preview_agent_id = ? AND id <> ?")
                .bind(agent_id)
                .bind(lead_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        for id in others {
            sqlx::query(
                "UPDATE leads SET preview_agent_id = NULL, preview_until = NULL WHERE id = ? AND preview_agent_id = ?",
            )
            .bind(id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends `agent_id`'s hold on a lead; with `skip`, the lead is also put
    /// off to the given time with the agent's reason. `true` when the agent
    /// held it.
    pub async fn release_hold(
        &self,
        lead_id: &str,
        agent_id: &str,
        skip: Option<(i64, &str)>,
    ) -> Result<bool, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let (due, reason) = match skip {
            Some((due, reason)) => (Some(due), Some(reason.to_owned())),
            None => (None, None),
        };
        let done = sqlx::query(
            "UPDATE leads SET preview_agent_id = NULL, preview_until = NULL,
               due_at = COALESCE(?, due_at), skip_reason = COALESCE(?, skip_reason), updated_at = ?
             WHERE id = ? AND preview_agent_id = ?",
        )
        .bind(due)
        .bind(reason)
        .bind(now)
        .bind(lead_id)
        .bind(agent_id)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn hold_from(r: &sqlx::any::AnyRow) -> Result<Hold, sqlx::Error> {
    Ok(Hold {
        lead_id: r.try_get(0)?,
        campaign_id: r.try_get(1)?,
        state: r.try_get(2)?,
        agent_id: r.try_get(3)?,
        until: r.try_get(4)?,
    })
}
