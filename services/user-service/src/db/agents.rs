//! Agents: profiles, state and heartbeats; every state change writes its
//! `agent.state` event into the outbox in the same transaction.

use sqlx::Row;

use super::keys::revoke_access_tokens;
use super::{join_teams, split_teams, Repo};

/// An agent's profile and state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Agent {
    /// The agent's user id.
    pub id: String,
    /// Name shown to supervisors.
    pub display_name: String,
    /// Where answered calls are bridged.
    pub sip_uri: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Skills with levels 1-10.
    pub skills: std::collections::BTreeMap<String, u8>,
    /// Calls at once (normally 1).
    pub max_concurrent: i64,
    /// Current state.
    pub state: crate::domain::AgentState,
    /// Why paused.
    pub pause_code: Option<String>,
    /// Since when (ms since epoch).
    pub state_since: i64,
    /// Last heartbeat (ms since epoch).
    pub last_heartbeat: i64,
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// Done: the agent as it is now.
    Changed(Agent),
    /// Not allowed from the current state.
    Refused(crate::domain::AgentState),
    /// No such agent.
    Unknown,
}

const AGENT_COLS: &str =
    "user_id, display_name, sip_uri, teams, skills, max_concurrent, state, pause_code, state_since, last_heartbeat";

fn agent_from(r: &sqlx::any::AnyRow) -> Result<Agent, sqlx::Error> {
    let teams: String = r.try_get(3)?;
    let skills: String = r.try_get(4)?;
    let state: String = r.try_get(6)?;
    Ok(Agent {
        id: r.try_get(0)?,
        display_name: r.try_get(1)?,
        sip_uri: r.try_get(2)?,
        teams: split_teams(&teams),
        skills: serde_json::from_str(&skills).unwrap_or_default(),
        max_concurrent: r.try_get(5)?,
        state: crate::domain::AgentState::parse(&state)
            .unwrap_or(crate::domain::AgentState::Offline),
        pause_code: r.try_get(7)?,
        state_since: r.try_get(8)?,
        last_heartbeat: r.try_get(9)?,
    })
}

/// One `agent.state` change, as the event carries it.
struct AgentStateEvent<'a> {
    previous: crate::domain::AgentState,
    state: crate::domain::AgentState,
    pause_code: Option<&'a str>,
    reason: &'a str,
    at_ms: i64,
}

/// Writes the `agent.state` event into the outbox inside `tx`.
async fn enqueue_agent_state(
    tx: &mut dialstack_common::db::Tx,
    id: &str,
    c: &AgentStateEvent<'_>,
) -> Result<(), sqlx::Error> {
    let data = dialstack_contract::AgentStateChanged {
        agent_id: id.to_owned(),
        previous: c.previous.as_str().to_owned(),
        state: c.state.as_str().to_owned(),
        pause_code: c.pause_code.map(str::to_owned),
        reason: c.reason.to_owned(),
        at_ms: c.at_ms,
    };
    let ev = dialstack_common::events::CloudEvent::new(
        crate::NAME,
        dialstack_contract::types::AGENT_STATE,
        id,
        &data,
    );
    dialstack_common::db::outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, id, &ev).await
}

/// Deletes an agent's profile inside `tx`; an agent that was not offline is
/// reported gone (`agent.state` to `offline` with `reason`), so pacing stops
/// counting it.
pub(super) async fn remove_agent(
    tx: &mut dialstack_common::db::Tx,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let state: Option<String> = sqlx::query("SELECT state FROM agents WHERE user_id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    sqlx::query("DELETE FROM agents WHERE user_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let previous = state.as_deref().and_then(crate::domain::AgentState::parse);
    if let Some(previous) = previous.filter(|s| *s != crate::domain::AgentState::Offline) {
        let change = AgentStateEvent {
            previous,
            state: crate::domain::AgentState::Offline,
            pause_code: None,
            reason,
            at_ms: now,
        };
        enqueue_agent_state(tx, id, &change).await?;
    }
    Ok(())
}

impl Repo {
    /// Creates or updates an agent's profile (the state is kept).
    pub async fn upsert_agent(&self, a: &Agent) -> Result<Agent, sqlx::Error> {
        let teams = join_teams(&a.teams);
        let skills = serde_json::to_string(&a.skills).unwrap_or_else(|_| "{}".into());
        let now = dialstack_common::now_ms();
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, 'offline', NULL, ?, ?) {}",
            self.db.dialect.upsert(
                "user_id",
                &[
                    ("display_name", "new(display_name)"),
                    ("sip_uri", "new(sip_uri)"),
                    ("teams", "new(teams)"),
                    ("skills", "new(skills)"),
                    ("max_concurrent", "new(max_concurrent)"),
                ]
            )
        );
        let mut tx = self.db.begin().await?;
        let before: Option<String> = sqlx::query(&format!(
            "SELECT teams FROM agents WHERE user_id = ?{}",
            self.for_update()
        ))
        .bind(&a.id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        sqlx::query(&sql)
            .bind(&a.id)
            .bind(&a.display_name)
            .bind(&a.sip_uri)
            .bind(&teams)
            .bind(skills)
            .bind(a.max_concurrent)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Tokens carry the teams: other services must not go on trusting
        // the old ones.
        if before.unwrap_or_default() != teams {
            revoke_access_tokens(&mut tx, self.db.dialect, &a.id, now).await?;
        }
        tx.commit().await?;
        self.agent(&a.id).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// One agent.
    pub async fn agent(&self, id: &str) -> Result<Option<Agent>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE user_id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// Agents, filtered by state and team in SQL and by skill here.
    pub async fn agents(
        &self,
        state: Option<&str>,
        team: Option<&str>,
        skill: Option<&str>,
    ) -> Result<Vec<Agent>, sqlx::Error> {
        let mut sql = format!("SELECT {AGENT_COLS} FROM agents WHERE 1 = 1");
        if state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if team.is_some() {
            // `_` is a LIKE wildcard and may be part of a team name.
            sql.push_str(" AND teams LIKE ? ESCAPE '!'");
        }
        sql.push_str(" ORDER BY user_id");
        let mut q = sqlx::query(&sql);
        if let Some(s) = state {
            q = q.bind(s.to_owned());
        }
        if let Some(t) = team {
            let literal = t.replace('!', "!!").replace('_', "!_").replace('%', "!%");
            q = q.bind(format!("%,{literal},%"));
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        let mut out = rows.iter().map(agent_from).collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = skill {
            out.retain(|a| a.skills.contains_key(k));
        }
        Ok(out)
    }

    /// Moves an agent to `to` if the table allows it from its current state
    /// (`system`: a heartbeat timeout, allowed from any state but offline),
    /// writing the `agent.state` event in the same transaction.
    pub async fn set_state(
        &self,
        id: &str,
        to: crate::domain::AgentState,
        pause_code: Option<&str>,
        reason: &str,
        system: bool,
    ) -> Result<StateChange, sqlx::Error> {
        let Some(current) = self.agent(id).await? else {
            return Ok(StateChange::Unknown);
        };
        let allowed = if system {
            current.state.can_time_out()
        } else {
            current.state.can_become(to)
        };
        if !allowed {
            return Ok(StateChange::Refused(current.state));
        }
        self.transition(&current, to, pause_code, reason).await
    }

    /// Moves `current` to `to` only if it is still exactly as read (same
    /// state since the same moment), writing the `agent.state` event in the
    /// same transaction.
    pub async fn transition(
        &self,
        current: &Agent,
        to: crate::domain::AgentState,
        pause_code: Option<&str>,
        reason: &str,
    ) -> Result<StateChange, sqlx::Error> {
        let id = current.id.as_str();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE agents SET state = ?, pause_code = ?, state_since = ? WHERE user_id = ? AND state = ? AND state_since = ?",
        )
        .bind(to.as_str())
        .bind(pause_code)
        .bind(now)
        .bind(id)
        .bind(current.state.as_str())
        .bind(current.state_since)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            // Someone else moved it first: report what it is now.
            tx.rollback().await?;
            let now_state = self
                .agent(id)
                .await?
                .map(|a| a.state)
                .unwrap_or(current.state);
            return Ok(StateChange::Refused(now_state));
        }
        let change = AgentStateEvent {
            previous: current.state,
            state: to,
            pause_code,
            reason,
            at_ms: now,
        };
        enqueue_agent_state(&mut tx, id, &change).await?;
        tx.commit().await?;
        Ok(StateChange::Changed(
            self.agent(id).await?.ok_or(sqlx::Error::RowNotFound)?,
        ))
    }

    /// Records a heartbeat; `false` for an unknown agent.
    pub async fn heartbeat(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("UPDATE agents SET last_heartbeat = ? WHERE user_id = ?")
                .bind(dialstack_common::now_ms())
                .bind(id)
                .execute(&self.db.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Agents not offline whose last heartbeat is older than `cutoff_ms`.
    pub async fn silent_agents(&self, cutoff_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_id FROM agents WHERE state <> 'offline' AND last_heartbeat < ?",
        )
        .bind(cutoff_ms)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// Agents per state.
    pub async fn agent_counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM agents GROUP BY state")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Agents in `wrap_up`.
    pub async fn agents_in_wrap_up(&self) -> Result<Vec<Agent>, sqlx::Error> {
        self.agents(Some(crate::domain::AgentState::WrapUp.as_str()), None, None)
            .await
    }
}
