//! Completed calls (for windowed rates) and calls in progress.

use std::collections::BTreeMap;

use dialstack_common::db::{inbox_claim, Db, Migration};
use dialstack_contract::CallEvent;
use sqlx::Row;

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
];

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
    /// Applies one call event, once.
    pub async fn apply(&self, event_id: &str, ev: &CallEvent) -> Result<Applied, sqlx::Error> {
        let outcome = match ev {
            CallEvent::Dialing(_) => None,
            CallEvent::Completed(c) => Some(c.outcome.as_str().to_owned()),
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
                "{} INTO call_outcomes (call_id, campaign_id, outcome, completed_at, team) VALUES (?, ?, ?, ?, ?)",
                self.db.dialect.insert_ignore()
            ))
            .bind(&d.call_id)
            .bind(&d.campaign_id)
            .bind(&outcome)
            .bind(dialstack_common::now_ms())
            .bind(d.team.clone())
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
}
