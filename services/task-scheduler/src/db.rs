//! Campaigns, leads and attempts.
//!
//! Attempt states: `pending` → `queued` (dial command in the outbox) →
//! `claimed` (a media processor holds the lease) → `dialing` (INVITE sent) →
//! `completed` (with outcome). Every transition is a conditional UPDATE, so
//! two scheduler replicas or a redelivered message never move an attempt twice.

use std::collections::BTreeMap;

use dialstack_common::db::{outbox_enqueue, Db, Migration, Tx};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{
    types, CallCompleted, CallEvent, CallRef, CampaignStateChanged, DialCommand, FailReason,
    HangupCommand, Outcome,
};
use sqlx::Row;

use crate::domain::NewCampaign;

/// task-scheduler's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "campaigns, leads, attempts",
        sql: "CREATE TABLE campaigns (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            caller_id VARCHAR(16) NOT NULL,
            max_concurrent BIGINT NOT NULL,
            max_cps DOUBLE NOT NULL,
            talk_time_ms BIGINT NOT NULL,
            ring_timeout_ms BIGINT NOT NULL,
            state VARCHAR(16) NOT NULL,
            created_at BIGINT NOT NULL,
            started_at BIGINT NULL,
            completed_at BIGINT NULL
          );
          CREATE TABLE leads (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            seq BIGINT NOT NULL,
            phone VARCHAR(16) NOT NULL
          );
          CREATE INDEX leads_campaign ON leads (campaign_id, seq);
          CREATE TABLE attempts (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            lead_id VARCHAR(36) NOT NULL,
            seq BIGINT NOT NULL,
            phone VARCHAR(16) NOT NULL,
            call_id VARCHAR(36) NULL,
            state VARCHAR(16) NOT NULL,
            outcome VARCHAR(32) NULL,
            reason VARCHAR(64) NULL,
            sip_status BIGINT NULL,
            claimed_by VARCHAR(128) NULL,
            lease_until BIGINT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE INDEX attempts_campaign_state ON attempts (campaign_id, state, seq);
          CREATE INDEX attempts_lease ON attempts (state, lease_until)",
    },
    Migration {
        version: 2,
        name: "campaign teams, lead owners",
        sql: "ALTER TABLE campaigns ADD COLUMN team VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN agent_id VARCHAR(64) NULL;
              CREATE INDEX leads_agent ON leads (agent_id, id);
              CREATE INDEX campaigns_team ON campaigns (team)",
    },
    Migration {
        version: 3,
        name: "attempts by call",
        sql: "CREATE INDEX attempts_call ON attempts (call_id)",
    },
    Migration {
        version: 4,
        name: "campaign recording",
        sql: "ALTER TABLE campaigns ADD COLUMN record BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE campaigns ADD COLUMN recording_retention_days BIGINT NULL",
    },
];

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Campaign {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Caller id.
    pub caller_id: String,
    /// Concurrency cap.
    pub max_concurrent: i64,
    /// Calls per second cap.
    pub max_cps: f64,
    /// Talk time (ms).
    pub talk_time_ms: i64,
    /// Ring timeout (ms).
    pub ring_timeout_ms: i64,
    /// `draft`, `running` or `completed`.
    pub state: String,
    /// Created (ms since epoch).
    pub created_at: i64,
    /// The team that works it.
    pub team: Option<String>,
    /// Answered calls are recorded.
    pub record: bool,
    /// Recordings are deleted this many days after the call.
    pub recording_retention_days: Option<i64>,
}

/// Counts of a campaign's attempts.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Progress {
    /// Contacts.
    pub total: i64,
    /// Attempts by state.
    pub states: BTreeMap<String, i64>,
    /// Completed attempts by outcome.
    pub outcomes: BTreeMap<String, i64>,
    /// Completed attempts.
    pub done: i64,
}

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

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

fn campaign_from(r: &sqlx::any::AnyRow) -> Campaign {
    Campaign {
        id: r.get(0),
        name: r.get(1),
        caller_id: r.get(2),
        max_concurrent: r.get(3),
        max_cps: r.get(4),
        talk_time_ms: r.get(5),
        ring_timeout_ms: r.get(6),
        state: r.get(7),
        created_at: r.get(8),
        team: r.get(9),
        record: r.get::<i64, _>(10) != 0,
        recording_retention_days: r.get(11),
    }
}

const CAMPAIGN_COLS: &str =
    "id, name, caller_id, max_concurrent, max_cps, talk_time_ms, ring_timeout_ms, state, created_at, team, record, recording_retention_days";

/// Rows per multi-row INSERT.
const INSERT_CHUNK: usize = 500;

impl Repo {
    /// Stores a new campaign and its leads.
    pub async fn create_campaign(&self, c: &NewCampaign) -> Result<Campaign, sqlx::Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO campaigns ({CAMPAIGN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'draft', ?, ?, ?, ?)"
        ))
        .bind(&id)
        .bind(&c.name)
        .bind(c.caller_id.as_str())
        .bind(c.max_concurrent as i64)
        .bind(c.max_cps)
        .bind(c.talk_time_ms as i64)
        .bind(c.ring_timeout_ms as i64)
        .bind(now)
        .bind(c.team.clone())
        .bind(i64::from(c.record))
        .bind(c.recording_retention_days.map(i64::from))
        .execute(&mut *tx)
        .await?;
        for (chunk_no, chunk) in c.contacts.chunks(INSERT_CHUNK).enumerate() {
            let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO leads (id, campaign_id, seq, phone, agent_id) VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for (i, lead) in chunk.iter().enumerate() {
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&id)
                    .bind((chunk_no * INSERT_CHUNK + i) as i64)
                    .bind(lead.phone.as_str().to_owned())
                    .bind(lead.agent_id.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.campaign(&id).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// A campaign by id.
    pub async fn campaign(&self, id: &str) -> Result<Option<Campaign>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(campaign_from))
    }

    /// Campaigns in state `running`.
    pub async fn running_campaigns(&self) -> Result<Vec<Campaign>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE state = 'running'"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(campaign_from).collect())
    }

    /// Starts a draft campaign: one pending attempt per lead. Returns `false`
    /// when it was not a draft (already started or finished).
    pub async fn start_campaign(&self, id: &str, source: &str) -> Result<bool, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE campaigns SET state = 'running', started_at = ? WHERE id = ? AND state = 'draft'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        let leads =
            sqlx::query("SELECT id, seq, phone FROM leads WHERE campaign_id = ? ORDER BY seq")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        for chunk in leads.chunks(INSERT_CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?, 'pending', ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO attempts (id, campaign_id, lead_id, seq, phone, state, created_at, updated_at) VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for lead in chunk {
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(id)
                    .bind(lead.get::<String, _>(0))
                    .bind(lead.get::<i64, _>(1))
                    .bind(lead.get::<String, _>(2))
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        campaign_event(&mut tx, source, id, "running").await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Attempts in progress (queued, claimed or dialing).
    pub async fn in_flight(&self, campaign_id: &str) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM attempts WHERE campaign_id = ? AND state IN ('queued', 'claimed', 'dialing')",
        )
        .bind(campaign_id)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(row.get(0))
    }

    /// Queues up to `n` pending attempts: each gets a call id and a `dial`
    /// command in the outbox, in one transaction. Returns how many.
    pub async fn queue_attempts(
        &self,
        c: &Campaign,
        n: u64,
        source: &str,
    ) -> Result<u64, sqlx::Error> {
        if n == 0 {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT id, phone FROM attempts WHERE campaign_id = ? AND state = 'pending' ORDER BY seq LIMIT ?",
        )
        .bind(&c.id)
        .bind(n as i64)
        .fetch_all(&self.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let mut queued = 0;
        for r in &rows {
            let attempt_id: String = r.get(0);
            let phone: String = r.get(1);
            let call_id = uuid::Uuid::now_v7().to_string();
            let moved = sqlx::query(
                "UPDATE attempts SET state = 'queued', call_id = ?, updated_at = ? WHERE id = ? AND state = 'pending'",
            )
            .bind(&call_id)
            .bind(now)
            .bind(&attempt_id)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                continue;
            }
            let cmd = DialCommand {
                attempt_id,
                call_id: call_id.clone(),
                campaign_id: c.id.clone(),
                phone,
                caller_id: c.caller_id.clone(),
                talk_time_ms: c.talk_time_ms as u64,
                ring_timeout_ms: c.ring_timeout_ms as u64,
                team: c.team.clone(),
                record: c.record,
                recording_retention_days: c
                    .recording_retention_days
                    .and_then(|d| u32::try_from(d).ok()),
            };
            let ev = CloudEvent::new(source, types::DIAL, &call_id, &cmd);
            outbox_enqueue(
                &mut tx,
                dialstack_common::db::channel::COMMANDS,
                &call_id,
                &ev,
            )
            .await?;
            queued += 1;
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Marks a running campaign completed once no attempt is left open.
    /// Returns `true` when it did.
    pub async fn complete_if_done(
        &self,
        campaign_id: &str,
        source: &str,
    ) -> Result<bool, sqlx::Error> {
        let open: i64 = sqlx::query(
            "SELECT COUNT(*) FROM attempts WHERE campaign_id = ? AND state <> 'completed'",
        )
        .bind(campaign_id)
        .fetch_one(&self.db.pool)
        .await?
        .get(0);
        if open > 0 {
            return Ok(false);
        }
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE campaigns SET state = 'completed', completed_at = ? WHERE id = ? AND state = 'running'",
        )
        .bind(dialstack_common::now_ms())
        .bind(campaign_id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 1 {
            campaign_event(&mut tx, source, campaign_id, "completed").await?;
        }
        tx.commit().await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Claims a queued attempt for `claimer` until `lease_until`. Claiming an
    /// attempt one already holds is granted again (idempotent).
    pub async fn claim(
        &self,
        attempt_id: &str,
        claimer: &str,
        lease_until: i64,
    ) -> Result<Claim, sqlx::Error> {
        let moved = sqlx::query(
            "UPDATE attempts SET state = 'claimed', claimed_by = ?, lease_until = ?, updated_at = ?
             WHERE id = ? AND state = 'queued'",
        )
        .bind(claimer)
        .bind(lease_until)
        .bind(dialstack_common::now_ms())
        .bind(attempt_id)
        .execute(&self.db.pool)
        .await?;
        if moved.rows_affected() == 1 {
            return Ok(Claim::Granted(DialTarget {
                attempt_id: attempt_id.to_owned(),
                lease_until,
            }));
        }
        let row = sqlx::query("SELECT state, claimed_by, lease_until FROM attempts WHERE id = ?")
            .bind(attempt_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            None => Claim::Unknown,
            Some(r) => {
                let state: String = r.get(0);
                let by: Option<String> = r.get(1);
                if state == "claimed" && by.as_deref() == Some(claimer) {
                    Claim::Granted(DialTarget {
                        attempt_id: attempt_id.to_owned(),
                        lease_until: r.get::<Option<i64>, _>(2).unwrap_or(lease_until),
                    })
                } else {
                    Claim::Taken(state)
                }
            }
        })
    }

    /// Applies a call event to its attempt, once (inbox). Returns the campaign
    /// id when the attempt was completed by it.
    pub async fn apply_call_event(
        &self,
        event_id: &str,
        ev: &CallEvent,
    ) -> Result<Option<String>, sqlx::Error> {
        let data = ev.call();
        let mut tx = self.db.begin().await?;
        if !dialstack_common::db::inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id)
            .await?
        {
            return Ok(None);
        }
        let now = dialstack_common::now_ms();
        let completed = match ev {
            CallEvent::Dialing(_) => {
                sqlx::query(
                    "UPDATE attempts SET state = 'dialing', updated_at = ? WHERE id = ? AND state IN ('queued', 'claimed')",
                )
                .bind(now)
                .bind(&data.attempt_id)
                .execute(&mut *tx)
                .await?;
                false
            }
            CallEvent::Completed(done) => {
                let moved = sqlx::query(
                    "UPDATE attempts SET state = 'completed', outcome = ?, reason = ?, sip_status = ?, updated_at = ?
                     WHERE id = ? AND state <> 'completed'",
                )
                .bind(done.outcome.as_str())
                .bind(done.reason.map(|r| r.as_str()))
                .bind(done.sip_status.map(i64::from))
                .bind(now)
                .bind(&data.attempt_id)
                .execute(&mut *tx)
                .await?;
                moved.rows_affected() == 1
            }
            _ => false,
        };
        tx.commit().await?;
        Ok(completed.then(|| data.campaign_id.clone()))
    }

    /// Asks media-processor to end the call `call_id` (a `hangup` command
    /// on the commands channel, keyed by the call so that it reaches the
    /// consumer of the call's dial). `may` decides on the call's campaign
    /// team before anything is written.
    pub async fn request_hangup(
        &self,
        call_id: &str,
        requested_by: &str,
        may: impl Fn(Option<&String>) -> bool,
        source: &str,
    ) -> Result<HangupRequest, sqlx::Error> {
        let row = sqlx::query(
            "SELECT a.state, c.team, a.id, a.campaign_id, a.phone FROM attempts a
             JOIN campaigns c ON c.id = a.campaign_id WHERE a.call_id = ?",
        )
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(HangupRequest::NoSuchCall);
        };
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
        outbox_enqueue(
            &mut tx,
            dialstack_common::db::channel::COMMANDS,
            call_id,
            &ev,
        )
        .await?;
        tx.commit().await?;
        Ok(HangupRequest::Sent)
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

    /// A campaign's progress.
    pub async fn progress(&self, campaign_id: &str) -> Result<Progress, sqlx::Error> {
        let mut p = Progress::default();
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM leads WHERE campaign_id = ?")
            .bind(campaign_id)
            .fetch_one(&self.db.pool)
            .await?
            .get(0);
        p.total = total;
        for r in
            sqlx::query("SELECT state, COUNT(*) FROM attempts WHERE campaign_id = ? GROUP BY state")
                .bind(campaign_id)
                .fetch_all(&self.db.pool)
                .await?
        {
            p.states.insert(r.get(0), r.get(1));
        }
        for r in sqlx::query(
            "SELECT outcome, COUNT(*) FROM attempts WHERE campaign_id = ? AND state = 'completed' GROUP BY outcome",
        )
        .bind(campaign_id)
        .fetch_all(&self.db.pool)
        .await?
        {
            let outcome: Option<String> = r.get(0);
            p.outcomes.insert(outcome.unwrap_or_else(|| "unknown".into()), r.get(1));
        }
        p.done = p.states.get("completed").copied().unwrap_or(0);
        Ok(p)
    }
}

async fn campaign_event(
    tx: &mut Tx,
    source: &str,
    id: &str,
    state: &str,
) -> Result<(), sqlx::Error> {
    let data = CampaignStateChanged {
        campaign_id: id.to_owned(),
        state: state.to_owned(),
    };
    let ev = CloudEvent::new(source, types::CAMPAIGN_STATE, id, &data);
    outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, id, &ev).await
}

/// What became of a hang-up request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HangupRequest {
    /// The command is on its way.
    Sent,
    /// The call already ended.
    Over,
    /// No call by that id (or not one the caller may see).
    NoSuchCall,
}

/// A lead with its attempts, as its owner or a supervisor reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Lead {
    /// Id.
    pub id: String,
    /// Campaign.
    pub campaign_id: String,
    /// The campaign's team.
    pub team: Option<String>,
    /// The number.
    pub phone: String,
    /// The owning agent.
    pub agent_id: Option<String>,
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
}

/// Filters of a lead listing; the scope fields come from the caller.
#[derive(Debug, Clone, Default)]
pub struct LeadQuery {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only leads owned by this agent.
    pub agent_id: Option<String>,
    /// Only leads of campaigns of these teams; `Some(empty)` matches none.
    pub teams: Option<Vec<String>>,
    /// Leads after this id.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
}

impl Repo {
    /// Leads in id order, filtered and scoped, with their attempts.
    pub async fn leads(&self, q: &LeadQuery) -> Result<Vec<Lead>, sqlx::Error> {
        let mut sql = String::from(
            "SELECT l.id, l.campaign_id, c.team, l.phone, l.agent_id FROM leads l
             JOIN campaigns c ON c.id = l.campaign_id WHERE 1 = 1",
        );
        for (cond, v) in [
            (" AND l.campaign_id = ?", &q.campaign_id),
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
        for v in [&q.campaign_id, &q.agent_id, &q.after]
            .into_iter()
            .flatten()
            .chain(teams)
        {
            query = query.bind(v);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        let mut leads = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let attempts = self.lead_attempts(&id).await?;
            leads.push(Lead {
                id,
                campaign_id: r.try_get(1)?,
                team: r.try_get(2)?,
                phone: r.try_get(3)?,
                agent_id: r.try_get(4)?,
                attempts,
            });
        }
        Ok(leads)
    }

    /// One lead with its attempts.
    pub async fn lead(&self, id: &str) -> Result<Option<Lead>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT l.id, l.campaign_id, c.team, l.phone, l.agent_id FROM leads l
             JOIN campaigns c ON c.id = l.campaign_id WHERE l.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Lead {
            id: r.try_get(0)?,
            campaign_id: r.try_get(1)?,
            team: r.try_get(2)?,
            phone: r.try_get(3)?,
            agent_id: r.try_get(4)?,
            attempts: self.lead_attempts(id).await?,
        }))
    }

    async fn lead_attempts(&self, lead_id: &str) -> Result<Vec<LeadAttempt>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, state, call_id, outcome FROM attempts WHERE lead_id = ? ORDER BY created_at, id",
        )
        .bind(lead_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeadAttempt {
                    id: r.try_get(0)?,
                    state: r.try_get(1)?,
                    call_id: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                })
            })
            .collect()
    }
}
