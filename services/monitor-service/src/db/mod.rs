//! monitor-service's database: completed calls (for windowed rates) and
//! calls in progress here; agents by state in [`agents`]; alert rules,
//! alerts, silences and leases in [`alerting`]; channels and the
//! notification outbox in [`notify`].

pub mod agents;
pub mod alerting;
pub mod notify;

use std::collections::BTreeMap;

use dialstack_common::db::{inbox_claim, Db, Migration};
use dialstack_contract::CallEvent;
use sqlx::Row;

use crate::domain::{CampaignCounts, Counts};

/// monitor-service's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "call outcomes and active calls",
        sql: "CREATE TABLE call_outcomes (
            call_id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            outcome VARCHAR(32) NOT NULL,
            completed_at BIGINT NOT NULL
          );
          CREATE INDEX call_outcomes_time ON call_outcomes (completed_at);
          CREATE TABLE active_calls (
            call_id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            started_at BIGINT NOT NULL
          )",
    },
    Migration {
        version: 2,
        name: "campaign teams",
        sql: "ALTER TABLE call_outcomes ADD COLUMN team VARCHAR(64) NULL;
              ALTER TABLE active_calls ADD COLUMN team VARCHAR(64) NULL",
    },
    Migration {
        version: 3,
        name: "failures by the one definition, SIP status and MOS",
        // Rows from before this migration have no SIP status: `rejected`
        // counts as a failure for them, as it does for any rejection but a
        // decline.
        sql: "ALTER TABLE call_outcomes ADD COLUMN failure SMALLINT NOT NULL DEFAULT 0;
              ALTER TABLE call_outcomes ADD COLUMN sip_status INT NULL;
              ALTER TABLE call_outcomes ADD COLUMN mos DOUBLE NULL;
              UPDATE call_outcomes SET failure = 1 WHERE outcome IN ('failed', 'rejected')",
    },
    Migration {
        version: 4,
        name: "alert rules, alerts, silences, channels, notifications, leases",
        sql: "CREATE TABLE alert_rules (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            name VARCHAR(128) NOT NULL UNIQUE,
            spec TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE TABLE alerts (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            rule_id VARCHAR(36) NOT NULL,
            rule_name VARCHAR(128) NOT NULL,
            group_key VARCHAR(200) NOT NULL,
            open_key VARCHAR(240) NULL UNIQUE,
            state VARCHAR(16) NOT NULL,
            labels TEXT NOT NULL,
            severity VARCHAR(16) NOT NULL,
            value DOUBLE NOT NULL,
            threshold DOUBLE NOT NULL,
            started_at BIGINT NOT NULL,
            fired_at BIGINT NULL,
            resolved_at BIGINT NULL,
            last_notified_at BIGINT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE INDEX alerts_state ON alerts (state, updated_at);
          CREATE TABLE silences (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            matchers TEXT NOT NULL,
            comment VARCHAR(512) NOT NULL,
            created_by VARCHAR(64) NOT NULL,
            starts_at BIGINT NOT NULL,
            ends_at BIGINT NOT NULL
          );
          CREATE TABLE alert_channels (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            name VARCHAR(128) NOT NULL UNIQUE,
            kind VARCHAR(16) NOT NULL,
            spec TEXT NOT NULL,
            created_at BIGINT NOT NULL
          );
          CREATE TABLE notifications (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            alert_id VARCHAR(36) NULL,
            channel_id VARCHAR(36) NOT NULL,
            kind VARCHAR(16) NOT NULL,
            message TEXT NOT NULL,
            state VARCHAR(16) NOT NULL,
            attempts INT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            last_error VARCHAR(512) NULL,
            created_at BIGINT NOT NULL,
            sent_at BIGINT NULL
          );
          CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
          CREATE TABLE leases (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            holder VARCHAR(128) NOT NULL,
            until_ms BIGINT NOT NULL
          )",
    },
    Migration {
        version: 5,
        name: "the seed's alert rule",
        sql: concat!(
            "INSERT INTO alert_rules (id, name, spec, created_at, updated_at) VALUES ('seed-call-failure-rate', 'CallFailureRateHigh', '",
            r#"{"name":"CallFailureRateHigh","metric":"failure_rate","op":">","threshold":0.05,"window":"5m","for":"0s","min_calls":20,"severity":"page","labels":{},"group_by":[],"channels":[],"repeat_interval":"4h","enabled":true,"inhibits_campaign_alerts":false}"#,
            "', 0, 0)"
        ),
    },
    Migration {
        version: 6,
        name: "answered calls in progress (wallboard: ringing or talking)",
        sql: "ALTER TABLE active_calls ADD COLUMN answered SMALLINT NOT NULL DEFAULT 0",
    },
    Migration {
        version: 7,
        name: "agents by state and team (wallboard, dialstack_agents)",
        sql: "CREATE TABLE agent_states (
            agent_id VARCHAR(64) NOT NULL PRIMARY KEY,
            state VARCHAR(16) NOT NULL,
            at_ms BIGINT NOT NULL,
            removed SMALLINT NOT NULL DEFAULT 0,
            updated_at BIGINT NOT NULL
          );
          CREATE TABLE agent_teams (
            agent_id VARCHAR(64) NOT NULL,
            team VARCHAR(64) NOT NULL,
            PRIMARY KEY (agent_id, team)
          );
          CREATE INDEX agent_teams_team ON agent_teams (team)",
    },
];

/// A `TEXT` column as a string: MariaDB reports `TEXT` to the `Any` driver
/// as a blob, SQLite as text.
pub(crate) fn text_column(r: &sqlx::any::AnyRow, i: usize) -> Result<String, sqlx::Error> {
    match r.try_get::<String, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let b: Vec<u8> = r.try_get(i)?;
            String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }
    }
}

/// What applying an event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing (duplicate, or a type that does not count).
    Nothing,
    /// A call started.
    Started,
    /// A call completed with this outcome.
    Completed(String),
}

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

impl Repo {
    /// Applies one call event, once. A deadlock with a concurrent
    /// consumer's transaction runs it again here rather than spending the
    /// event's deliveries.
    pub async fn apply(&self, event_id: &str, ev: &CallEvent) -> Result<Applied, sqlx::Error> {
        dialstack_common::db::retry_conflicts(5, || self.apply_once(event_id, ev)).await
    }

    async fn apply_once(&self, event_id: &str, ev: &CallEvent) -> Result<Applied, sqlx::Error> {
        let (outcome, failure, sip_status, mos) = match ev {
            CallEvent::Answered(a) => {
                let d = &a.call;
                let mut tx = self.db.begin().await?;
                let mut applied = Applied::Nothing;
                if inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
                    let updated =
                        sqlx::query("UPDATE active_calls SET answered = 1 WHERE call_id = ?")
                            .bind(&d.call_id)
                            .execute(&mut *tx)
                            .await?;
                    // Answered seen before dialing (events of one call may be
                    // handled concurrently): the call starts here, answered.
                    if updated.rows_affected() == 0 {
                        let inserted = sqlx::query(&format!(
                            "{} INTO active_calls (call_id, campaign_id, started_at, team, answered)
                             SELECT ?, ?, ?, ?, 1 FROM (SELECT 1 AS one) AS single_row
                             WHERE NOT EXISTS (SELECT 1 FROM call_outcomes WHERE call_id = ?)",
                            self.db.dialect.insert_ignore()
                        ))
                        .bind(&d.call_id)
                        .bind(&d.campaign_id)
                        .bind(d.at_ms)
                        .bind(d.team.clone())
                        .bind(&d.call_id)
                        .execute(&mut *tx)
                        .await?;
                        if inserted.rows_affected() == 1 {
                            applied = Applied::Started;
                        }
                    }
                }
                tx.commit().await?;
                return Ok(applied);
            }
            CallEvent::Dialing(_) => (None, false, None, None),
            CallEvent::Completed(c) => (
                Some(c.outcome.as_str().to_owned()),
                crate::domain::is_failure(c.outcome, c.sip_status),
                c.sip_status.map(i32::from),
                c.quality
                    .as_ref()
                    .map(|q| q.mos)
                    .filter(|m| m.is_finite() && (0.0..=5.0).contains(m)),
            ),
            _ => return Ok(Applied::Nothing),
        };
        let d = ev.call();
        let mut tx = self.db.begin().await?;
        if !inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
            return Ok(Applied::Nothing);
        }
        let applied = if outcome.is_none() {
            // A call whose completion was already seen (events out of order) is not active.
            let done = sqlx::query(&format!(
                "{} INTO active_calls (call_id, campaign_id, started_at, team)
                 SELECT ?, ?, ?, ? FROM (SELECT 1 AS one) AS single_row
                 WHERE NOT EXISTS (SELECT 1 FROM call_outcomes WHERE call_id = ?)",
                self.db.dialect.insert_ignore()
            ))
            .bind(&d.call_id)
            .bind(&d.campaign_id)
            .bind(d.at_ms)
            .bind(d.team.clone())
            .bind(&d.call_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                Applied::Started
            } else {
                Applied::Nothing
            }
        } else {
            let outcome = outcome.unwrap_or_default();
            sqlx::query("DELETE FROM active_calls WHERE call_id = ?")
                .bind(&d.call_id)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query(&format!(
                "{} INTO call_outcomes (call_id, campaign_id, outcome, completed_at, team, failure, sip_status, mos)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self.db.dialect.insert_ignore()
            ))
            .bind(&d.call_id)
            .bind(&d.campaign_id)
            .bind(&outcome)
            .bind(dialstack_common::now_ms())
            .bind(d.team.clone())
            .bind(i16::from(failure))
            .bind(sip_status)
            .bind(mos)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                Applied::Completed(outcome)
            } else {
                Applied::Nothing
            }
        };
        tx.commit().await?;
        Ok(applied)
    }

    /// Calls in progress.
    pub async fn active(&self) -> Result<i64, sqlx::Error> {
        self.active_in(None).await
    }

    /// Calls in progress of campaigns of `teams` (all when `None`).
    pub async fn active_in(&self, teams: Option<&[String]>) -> Result<i64, sqlx::Error> {
        let mut sql = "SELECT COUNT(*) FROM active_calls WHERE 1 = 1".to_owned();
        if let Some(t) = teams {
            sql.push_str(&dialstack_common::db::and_in("team", t.len()));
        }
        let mut q = sqlx::query(&sql);
        for t in teams.unwrap_or_default() {
            q = q.bind(t);
        }
        Ok(q.fetch_one(&self.db.pool).await?.get(0))
    }

    /// Forgets calls in progress for longer than `max_age_ms` (their
    /// completion was lost upstream).
    pub async fn reap_active(&self, max_age_ms: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM active_calls WHERE started_at < ?")
            .bind(dialstack_common::now_ms() - max_age_ms)
            .execute(&self.db.pool)
            .await?
            .rows_affected())
    }

    /// Completed calls by outcome since `since_ms`, optionally for one
    /// campaign and for the campaigns of `teams` (a supervisor's scope).
    pub async fn outcomes_since(
        &self,
        since_ms: i64,
        campaign_id: Option<&str>,
        teams: Option<&[String]>,
    ) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        let mut sql =
            "SELECT outcome, COUNT(*) FROM call_outcomes WHERE completed_at >= ?".to_owned();
        if campaign_id.is_some() {
            sql.push_str(" AND campaign_id = ?");
        }
        if let Some(t) = teams {
            sql.push_str(&dialstack_common::db::and_in("team", t.len()));
        }
        sql.push_str(" GROUP BY outcome");
        let mut q = sqlx::query(&sql).bind(since_ms);
        if let Some(c) = campaign_id {
            q = q.bind(c);
        }
        for t in teams.unwrap_or_default() {
            q = q.bind(t);
        }
        Ok(q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect())
    }

    /// Completed calls since `since_ms` per campaign (and team), optionally
    /// for one campaign and for the campaigns of `teams`.
    pub async fn counts_since(
        &self,
        since_ms: i64,
        campaign_id: Option<&str>,
        teams: Option<&[String]>,
    ) -> Result<Vec<CampaignCounts>, sqlx::Error> {
        let mut sql = format!(
            "SELECT campaign_id, team, outcome, COUNT(*),
                    COUNT(CASE WHEN failure = 1 THEN 1 END),
                    COUNT(mos),
                    COUNT(CASE WHEN mos < {} THEN 1 END)
             FROM call_outcomes WHERE completed_at >= ?",
            crate::domain::POOR_MOS
        );
        if campaign_id.is_some() {
            sql.push_str(" AND campaign_id = ?");
        }
        if let Some(t) = teams {
            sql.push_str(&dialstack_common::db::and_in("team", t.len()));
        }
        sql.push_str(" GROUP BY campaign_id, team, outcome ORDER BY campaign_id, team");
        let mut q = sqlx::query(&sql).bind(since_ms);
        if let Some(c) = campaign_id {
            q = q.bind(c);
        }
        for t in teams.unwrap_or_default() {
            q = q.bind(t);
        }
        let mut out: Vec<CampaignCounts> = Vec::new();
        for r in q.fetch_all(&self.db.pool).await? {
            let campaign: String = r.try_get(0)?;
            let team: Option<String> = r.try_get(1)?;
            let c = match out.last_mut() {
                Some(last) if last.campaign_id == campaign && last.team == team => last,
                _ => {
                    out.push(CampaignCounts {
                        campaign_id: campaign,
                        team,
                        counts: Counts::default(),
                    });
                    let n = out.len() - 1;
                    &mut out[n]
                }
            };
            c.counts
                .by_outcome
                .insert(r.try_get(2)?, r.try_get::<i64, _>(3)?);
            c.counts.failures += r.try_get::<i64, _>(4)?;
            c.counts.measured += r.try_get::<i64, _>(5)?;
            c.counts.poor_mos += r.try_get::<i64, _>(6)?;
        }
        Ok(out)
    }

    /// Calls in progress per campaign (and team), for campaigns of `teams`
    /// (all when `None`): (campaign, team, in progress, answered).
    pub async fn active_by_campaign(
        &self,
        teams: Option<&[String]>,
    ) -> Result<Vec<(String, Option<String>, i64, i64)>, sqlx::Error> {
        let mut sql = "SELECT campaign_id, team, COUNT(*), COUNT(CASE WHEN answered = 1 THEN 1 END)
                       FROM active_calls WHERE 1 = 1"
            .to_owned();
        if let Some(t) = teams {
            sql.push_str(&dialstack_common::db::and_in("team", t.len()));
        }
        sql.push_str(" GROUP BY campaign_id, team ORDER BY campaign_id LIMIT 1000");
        let mut q = sqlx::query(&sql);
        for t in teams.unwrap_or_default() {
            q = q.bind(t);
        }
        q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }
}
