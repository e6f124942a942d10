//! Call detail records: one row per call, built from the call's events in
//! whatever order they arrive. A later stage never gives way to an earlier
//! one, timestamps are kept from the first event that knew them, and each
//! event is applied once (inbox).

use dialstack_common::db::{inbox_claim, Db, Migration};
use dialstack_contract::{types, CallEvent};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// storage-service's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "cdrs",
        sql: "CREATE TABLE cdrs (
            call_id VARCHAR(36) NOT NULL PRIMARY KEY,
            attempt_id VARCHAR(36) NOT NULL,
            campaign_id VARCHAR(36) NOT NULL,
            phone VARCHAR(16) NOT NULL,
            state VARCHAR(16) NOT NULL,
            state_rank BIGINT NOT NULL,
            outcome VARCHAR(32) NULL,
            reason VARCHAR(64) NULL,
            sip_status BIGINT NULL,
            dialed_at BIGINT NULL,
            ringing_at BIGINT NULL,
            answered_at BIGINT NULL,
            ended_at BIGINT NULL,
            ring_ms BIGINT NULL,
            talk_ms BIGINT NULL,
            rtp_sent BIGINT NULL,
            rtp_received BIGINT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE INDEX cdrs_campaign ON cdrs (campaign_id, call_id);
          CREATE INDEX cdrs_outcome ON cdrs (outcome, call_id)",
    },
    Migration {
        version: 2,
        name: "cdr team and agent",
        sql: "ALTER TABLE cdrs ADD COLUMN team VARCHAR(64) NULL;
              ALTER TABLE cdrs ADD COLUMN agent_id VARCHAR(36) NULL;
              CREATE INDEX cdrs_agent ON cdrs (agent_id, call_id);
              CREATE INDEX cdrs_team ON cdrs (team, call_id)",
    },
];

/// One call detail record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cdr {
    /// Call id.
    pub call_id: String,
    /// Attempt id.
    pub attempt_id: String,
    /// Campaign id.
    pub campaign_id: String,
    /// Destination.
    pub phone: String,
    /// Latest stage: `dialing`, `ringing`, `answered`, `completed`.
    pub state: String,
    /// Outcome, once completed.
    pub outcome: Option<String>,
    /// Failure reason.
    pub reason: Option<String>,
    /// Final SIP status.
    pub sip_status: Option<i64>,
    /// INVITE sent (ms since epoch).
    pub dialed_at: Option<i64>,
    /// Ringing (ms since epoch).
    pub ringing_at: Option<i64>,
    /// Answered (ms since epoch).
    pub answered_at: Option<i64>,
    /// Ended (ms since epoch).
    pub ended_at: Option<i64>,
    /// INVITE to answer or final response (ms).
    pub ring_ms: Option<i64>,
    /// Answer to hang-up (ms).
    pub talk_ms: Option<i64>,
    /// RTP packets sent.
    pub rtp_sent: Option<i64>,
    /// RTP packets received.
    pub rtp_received: Option<i64>,
    /// The campaign's team.
    pub team: Option<String>,
    /// The agent the call was bridged to.
    pub agent_id: Option<String>,
}

/// Filters of a CDR listing.
#[derive(Debug, Clone, Default)]
pub struct CdrQuery {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Calls after this id.
    pub after: Option<String>,
    /// Only calls bridged to this agent (an agent reading its own calls).
    pub agent_id: Option<String>,
    /// Only calls of these teams (a supervisor); `Some(empty)` matches none.
    pub teams: Option<Vec<String>>,
    /// At most this many.
    pub limit: i64,
}

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

const COLS: &str = "call_id, attempt_id, campaign_id, phone, state, outcome, reason, sip_status, dialed_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, rtp_sent, rtp_received, team, agent_id";

fn cdr_from(r: &sqlx::any::AnyRow) -> Cdr {
    Cdr {
        call_id: r.get(0),
        attempt_id: r.get(1),
        campaign_id: r.get(2),
        phone: r.get(3),
        state: r.get(4),
        outcome: r.get(5),
        reason: r.get(6),
        sip_status: r.get(7),
        dialed_at: r.get(8),
        ringing_at: r.get(9),
        answered_at: r.get(10),
        ended_at: r.get(11),
        ring_ms: r.get(12),
        talk_ms: r.get(13),
        rtp_sent: r.get(14),
        rtp_received: r.get(15),
        team: r.get(16),
        agent_id: r.get(17),
    }
}

/// The stage an event type moves a call to, with its rank.
pub fn stage(ty: &str) -> Option<(&'static str, i64)> {
    match ty {
        types::CALL_DIALING => Some(("dialing", 1)),
        types::CALL_RINGING => Some(("ringing", 2)),
        types::CALL_ANSWERED => Some(("answered", 3)),
        types::CALL_COMPLETED => Some(("completed", 4)),
        _ => None,
    }
}

impl Repo {
    /// Applies one call event to its CDR, once. Returns `false` for an event
    /// already applied or of a type that does not change the CDR.
    pub async fn apply(&self, event_id: &str, ev: &CallEvent) -> Result<bool, sqlx::Error> {
        let Some((state, rank)) = stage(ev.ty()) else {
            return Ok(false);
        };
        let d = ev.call();
        let done = match ev {
            CallEvent::Completed(c) => Some(c),
            _ => None,
        };
        let ring_ms = match ev {
            CallEvent::Answered(a) => Some(a.ring_ms),
            CallEvent::Completed(c) => Some(c.ring_ms),
            _ => None,
        };
        let mut tx = self.db.begin().await?;
        if !inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
            return Ok(false);
        }
        let at = |s: &str| (s == state).then_some(d.at_ms);
        let upsert = self.db.dialect.upsert(
            "call_id",
            &[
                ("outcome", "COALESCE(new(outcome), outcome)"),
                ("reason", "COALESCE(new(reason), reason)"),
                ("sip_status", "COALESCE(new(sip_status), sip_status)"),
                ("dialed_at", "COALESCE(dialed_at, new(dialed_at))"),
                ("ringing_at", "COALESCE(ringing_at, new(ringing_at))"),
                ("answered_at", "COALESCE(answered_at, new(answered_at))"),
                ("ended_at", "COALESCE(ended_at, new(ended_at))"),
                ("ring_ms", "COALESCE(new(ring_ms), ring_ms)"),
                ("talk_ms", "COALESCE(new(talk_ms), talk_ms)"),
                ("rtp_sent", "COALESCE(new(rtp_sent), rtp_sent)"),
                ("rtp_received", "COALESCE(new(rtp_received), rtp_received)"),
                ("team", "COALESCE(team, new(team))"),
                ("agent_id", "COALESCE(new(agent_id), agent_id)"),
                ("updated_at", "new(updated_at)"),
                // MySQL applies these in order, so state is set before its rank changes.
                ("state", "CASE WHEN new(state_rank) > state_rank THEN new(state) ELSE state END"),
                ("state_rank", "CASE WHEN new(state_rank) > state_rank THEN new(state_rank) ELSE state_rank END"),
            ],
        );
        let sql = format!(
            "INSERT INTO cdrs ({COLS}, state_rank, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {upsert}"
        );
        sqlx::query(&sql)
            .bind(&d.call_id)
            .bind(&d.attempt_id)
            .bind(&d.campaign_id)
            .bind(&d.phone)
            .bind(state)
            .bind(done.map(|c| c.outcome.as_str()))
            .bind(done.and_then(|c| c.reason).map(|r| r.as_str()))
            .bind(done.and_then(|c| c.sip_status).map(i64::from))
            .bind(at("dialing"))
            .bind(at("ringing"))
            .bind(at("answered"))
            .bind(at("completed"))
            .bind(ring_ms)
            .bind(done.map(|c| c.talk_ms))
            .bind(done.map(|c| c.rtp_sent as i64))
            .bind(done.map(|c| c.rtp_received as i64))
            .bind(d.team.clone())
            .bind(done.and_then(|c| c.agent_id.clone()))
            .bind(rank)
            .bind(dialstack_common::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One CDR.
    pub async fn get(&self, call_id: &str) -> Result<Option<Cdr>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM cdrs WHERE call_id = ?"))
            .bind(call_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().map(cdr_from))
    }

    /// CDRs in call-id (time) order after the cursor.
    pub async fn list(&self, q: &CdrQuery) -> Result<Vec<Cdr>, sqlx::Error> {
        let mut sql = format!("SELECT {COLS} FROM cdrs WHERE 1 = 1");
        if q.campaign_id.is_some() {
            sql.push_str(" AND campaign_id = ?");
        }
        if q.outcome.is_some() {
            sql.push_str(" AND outcome = ?");
        }
        if q.after.is_some() {
            sql.push_str(" AND call_id > ?");
        }
        if q.agent_id.is_some() {
            sql.push_str(" AND agent_id = ?");
        }
        let teams = q.teams.as_deref().unwrap_or_default();
        if q.teams.is_some() {
            sql.push_str(&dialstack_common::db::and_in("team", teams.len()));
        }
        sql.push_str(" ORDER BY call_id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for v in [&q.campaign_id, &q.outcome, &q.after, &q.agent_id]
            .into_iter()
            .flatten()
            .chain(teams)
        {
            query = query.bind(v);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        Ok(rows.iter().map(cdr_from).collect())
    }
}
