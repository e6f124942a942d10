//! Agents by state: each agent's latest `agent.state` (table
//! `agent_states`, one row per agent) and its teams (`agent_teams`, one row
//! per agent and team), so that counts per team are one `GROUP BY` and
//! survive a restart.

use dialstack_common::db::inbox_claim;
use sqlx::Row;

use super::Repo;
use crate::domain::agents::{AgentState, AgentUpdate, ByState, NO_TEAM};

/// What applying one `agent.state` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentApplied {
    /// The event was seen before (redelivered).
    Duplicate,
    /// Older than the state held for the agent: ignored.
    Stale,
    /// The agent's state (and teams) are now the event's.
    Applied,
}

/// A stored state name as the enum; an unknown one is an error, never a default.
fn state_of(name: &str) -> Result<AgentState, sqlx::Error> {
    AgentState::parse(name)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown agent state {name:?}").into()))
}

impl Repo {
    /// Applies one `agent.state`, once (inbox): the agent's row takes it
    /// when it is at least as new (`at_ms`) as the state held, with the
    /// event's teams.
    pub async fn apply_agent_state(
        &self,
        event_id: &str,
        u: &AgentUpdate,
    ) -> Result<AgentApplied, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        if !inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
            return Ok(AgentApplied::Duplicate);
        }
        // One statement that inserts the agent or, when the event is at
        // least as new as the state held, takes it; it locks the row (an
        // exclusive lock on MySQL, the write lock on SQLite) until commit,
        // so two events of one agent never interleave. `at_ms` comes last:
        // MySQL evaluates the assignments in order.
        let newer = "CASE WHEN new(at_ms) >= at_ms THEN new({c}) ELSE {c} END";
        let cols = ["state", "removed", "updated_at", "at_ms"];
        let updates: Vec<(&str, String)> =
            cols.iter().map(|c| (*c, newer.replace("{c}", c))).collect();
        let updates: Vec<(&str, &str)> = updates.iter().map(|(c, e)| (*c, e.as_str())).collect();
        sqlx::query(&format!(
            "INSERT INTO agent_states (agent_id, state, at_ms, removed, updated_at) VALUES (?, ?, ?, ?, ?) {}",
            self.db.dialect.upsert("agent_id", &updates)
        ))
        .bind(&u.agent_id)
        .bind(u.state.as_str())
        .bind(u.at_ms)
        .bind(i16::from(u.removed))
        .bind(dialstack_common::now_ms())
        .execute(&mut *tx)
        .await?;
        let held = sqlx::query("SELECT at_ms FROM agent_states WHERE agent_id = ?")
            .bind(&u.agent_id)
            .fetch_one(&mut *tx)
            .await?;
        if held.try_get::<i64, _>(0)? != u.at_ms {
            tx.commit().await?;
            return Ok(AgentApplied::Stale);
        }
        // Teams rarely change: rows are written only when they do, one key at
        // a time (no range deletes, which would lock gaps on MySQL).
        let held: Vec<String> = sqlx::query("SELECT team FROM agent_teams WHERE agent_id = ?")
            .bind(&u.agent_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for gone in held.iter().filter(|t| !u.teams.contains(t)) {
            sqlx::query("DELETE FROM agent_teams WHERE agent_id = ? AND team = ?")
                .bind(&u.agent_id)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
        }
        for new in u.teams.iter().filter(|t| !held.contains(t)) {
            sqlx::query(&format!(
                "{} INTO agent_teams (agent_id, team) VALUES (?, ?)",
                self.db.dialect.insert_ignore()
            ))
            .bind(&u.agent_id)
            .bind(new)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(AgentApplied::Applied)
    }

    /// Agents by state, each once: all of them (`None`), or those in one of
    /// `teams` (a supervisor's scope).
    pub async fn agents_by_state(&self, teams: Option<&[String]>) -> Result<ByState, sqlx::Error> {
        let rows = match teams {
            None => {
                sqlx::query(
                    "SELECT state, COUNT(*) FROM agent_states WHERE removed = 0 GROUP BY state",
                )
                .fetch_all(&self.db.pool)
                .await?
            }
            Some(t) => {
                let sql = format!(
                    "SELECT s.state, COUNT(DISTINCT s.agent_id) FROM agent_states s
                     JOIN agent_teams t ON t.agent_id = s.agent_id
                     WHERE s.removed = 0{} GROUP BY s.state",
                    dialstack_common::db::and_in("t.team", t.len())
                );
                let mut q = sqlx::query(&sql);
                for team in t {
                    q = q.bind(team);
                }
                q.fetch_all(&self.db.pool).await?
            }
        };
        let mut out = ByState::default();
        for r in rows {
            out.add(state_of(&r.try_get::<String, _>(0)?)?, r.try_get(1)?);
        }
        Ok(out)
    }

    /// Agents per team and state: (team, state, agents). An agent counts in
    /// each of its teams; without `teams` (everyone's scope) agents of no
    /// team count under [`NO_TEAM`].
    pub async fn agents_by_team(
        &self,
        teams: Option<&[String]>,
    ) -> Result<Vec<(String, AgentState, i64)>, sqlx::Error> {
        let mut sql = "SELECT t.team, s.state, COUNT(*) FROM agent_teams t
                       JOIN agent_states s ON s.agent_id = t.agent_id
                       WHERE s.removed = 0"
            .to_owned();
        if let Some(t) = teams {
            sql.push_str(&dialstack_common::db::and_in("t.team", t.len()));
        }
        sql.push_str(" GROUP BY t.team, s.state");
        let mut q = sqlx::query(&sql);
        for team in teams.unwrap_or_default() {
            q = q.bind(team);
        }
        let mut out = Vec::new();
        for r in q.fetch_all(&self.db.pool).await? {
            out.push((
                r.try_get::<String, _>(0)?,
                state_of(&r.try_get::<String, _>(1)?)?,
                r.try_get(2)?,
            ));
        }
        if teams.is_none() {
            let rows = sqlx::query(
                "SELECT s.state, COUNT(*) FROM agent_states s WHERE s.removed = 0
                 AND NOT EXISTS (SELECT 1 FROM agent_teams t WHERE t.agent_id = s.agent_id)
                 GROUP BY s.state",
            )
            .fetch_all(&self.db.pool)
            .await?;
            for r in rows {
                out.push((
                    NO_TEAM.to_owned(),
                    state_of(&r.try_get::<String, _>(0)?)?,
                    r.try_get(1)?,
                ));
            }
        }
        Ok(out)
    }
}
