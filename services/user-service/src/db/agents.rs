//! Agents: profiles, state and heartbeats; every state change writes its
//! `agent.state` event into the outbox in the same transaction. Reserving an
//! agent for a call is in [`super::reservations`].

use sqlx::Row;

use super::keys::revoke_access_tokens;
use super::{join_teams, split_teams, Repo};
use crate::domain::{AgentState, Requester, Verdict};

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
    pub state: AgentState,
    /// Why paused.
    pub pause_code: Option<String>,
    /// Since when (ms since epoch).
    pub state_since: i64,
    /// Last heartbeat (ms since epoch).
    pub last_heartbeat: i64,
}

/// The call an agent is busy with: reserved for, talking on or wrapping up.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct AgentCall {
    /// The call (`reserved`, `on_call`, `wrap_up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// When the reservation lapses unless the agent is connected first (ms
    /// since epoch; `reserved` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_until: Option<i64>,
}

/// An agent as stored: profile, state and call.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    /// Profile and state.
    pub agent: Agent,
    /// The call it is busy with.
    pub call: AgentCall,
}

/// What became of a state change.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// Done: the agent as it is now.
    Changed(Box<AgentRow>),
    /// Not a move of the table from the current state, or the agent moved
    /// meanwhile (409 with the current state).
    Refused(AgentState),
    /// A move the requester may not ask for.
    Forbidden(AgentState),
    /// A call step that does not name the call.
    CallRequired(AgentState),
    /// The call named is not the agent's.
    WrongCall(AgentState),
    /// No such agent.
    Unknown,
}

/// The profile and state columns (what an insert writes).
const AGENT_COLS: &str =
    "user_id, display_name, sip_uri, teams, skills, max_concurrent, state, pause_code, state_since, last_heartbeat";

/// Every column of a row, in [`row_from`]'s order.
pub(super) const ROW_COLS: &str =
    "user_id, display_name, sip_uri, teams, skills, max_concurrent, state, pause_code, state_since, last_heartbeat, call_id, reserved_until";

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
        state: AgentState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown agent state {state:?}").into()))?,
        pause_code: r.try_get(7)?,
        state_since: r.try_get(8)?,
        last_heartbeat: r.try_get(9)?,
    })
}

/// A row selected with [`ROW_COLS`].
pub(super) fn row_from(r: &sqlx::any::AnyRow) -> Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        agent: agent_from(r)?,
        call: AgentCall {
            call_id: r.try_get(10)?,
            reserved_until: r.try_get(11)?,
        },
    })
}

/// One `agent.state` change, as the event carries it.
pub(super) struct AgentStateEvent<'a> {
    pub previous: AgentState,
    pub state: AgentState,
    pub pause_code: Option<&'a str>,
    pub reason: &'a str,
    pub at_ms: i64,
    /// The agent's teams.
    pub teams: &'a [String],
    /// The call the change is about: the one the agent holds before or
    /// after it.
    pub call_id: Option<&'a str>,
}

/// Writes the `agent.state` event into the outbox inside `tx`.
pub(super) async fn enqueue_agent_state(
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
        teams: c.teams.to_vec(),
        call_id: c.call_id.map(str::to_owned),
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
    let row = sqlx::query("SELECT state, teams, call_id FROM agents WHERE user_id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let (state, teams, call_id): (String, String, Option<String>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    sqlx::query("DELETE FROM agents WHERE user_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let previous = AgentState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown agent state {state:?}").into()))?;
    if previous != AgentState::Offline {
        let change = AgentStateEvent {
            previous,
            state: AgentState::Offline,
            pause_code: None,
            reason,
            at_ms: now,
            teams: &split_teams(&teams),
            call_id: call_id.as_deref(),
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
        Ok(self.agent_row(id).await?.map(|r| r.agent))
    }

    /// One agent with its call.
    pub async fn agent_row(&self, id: &str) -> Result<Option<AgentRow>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {ROW_COLS} FROM agents WHERE user_id = ?"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(row_from).transpose()
    }

    /// Agents, filtered by state and team in SQL and by skill here.
    pub async fn agents(
        &self,
        state: Option<&str>,
        team: Option<&str>,
        skill: Option<&str>,
    ) -> Result<Vec<Agent>, sqlx::Error> {
        let rows = self.agent_rows(state, team, skill).await?;
        Ok(rows.into_iter().map(|r| r.agent).collect())
    }

    /// [`Repo::agents`] with their calls.
    pub async fn agent_rows(
        &self,
        state: Option<&str>,
        team: Option<&str>,
        skill: Option<&str>,
    ) -> Result<Vec<AgentRow>, sqlx::Error> {
        let mut out = self.select_rows(state, team, "user_id").await?;
        if let Some(k) = skill {
            out.retain(|a| a.agent.skills.contains_key(k));
        }
        Ok(out)
    }

    /// Rows in `state` and `team` (each if given), ordered by `order_by`.
    pub(super) async fn select_rows(
        &self,
        state: Option<&str>,
        team: Option<&str>,
        order_by: &str,
    ) -> Result<Vec<AgentRow>, sqlx::Error> {
        let mut sql = format!("SELECT {ROW_COLS} FROM agents WHERE 1 = 1");
        if state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if team.is_some() {
            // `_` is a LIKE wildcard and may be part of a team name.
            sql.push_str(" AND teams LIKE ? ESCAPE '!'");
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(order_by);
        let mut q = sqlx::query(&sql);
        if let Some(s) = state {
            q = q.bind(s.to_owned());
        }
        if let Some(t) = team {
            let literal = t.replace('!', "!!").replace('_', "!_").replace('%', "!%");
            q = q.bind(format!("%,{literal},%"));
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        rows.iter().map(row_from).collect()
    }

    /// Moves an agent to `to` on a request by `who`, naming the call
    /// `call_id` (see [`crate::domain::judge`]), writing the `agent.state`
    /// event in the same transaction.
    pub async fn request_state(
        &self,
        id: &str,
        to: AgentState,
        pause_code: Option<&str>,
        reason: &str,
        who: Requester,
        call_id: Option<&str>,
    ) -> Result<StateChange, sqlx::Error> {
        let Some(current) = self.agent_row(id).await? else {
            return Ok(StateChange::Unknown);
        };
        let from = current.agent.state;
        let held = current.call.call_id.as_deref();
        match crate::domain::judge(from, to, who, held, call_id) {
            Verdict::Allowed => self.transition(&current, to, pause_code, reason).await,
            Verdict::NotInTable => Ok(StateChange::Refused(from)),
            Verdict::Forbidden => Ok(StateChange::Forbidden(from)),
            Verdict::CallRequired => Ok(StateChange::CallRequired(from)),
            Verdict::WrongCall => Ok(StateChange::WrongCall(from)),
        }
    }

    /// Takes a silent agent offline (allowed from any state but offline),
    /// writing the `agent.state` event in the same transaction.
    pub async fn time_out(&self, id: &str, reason: &str) -> Result<StateChange, sqlx::Error> {
        let Some(current) = self.agent_row(id).await? else {
            return Ok(StateChange::Unknown);
        };
        if !current.agent.state.can_time_out() {
            return Ok(StateChange::Refused(current.agent.state));
        }
        self.transition(&current, AgentState::Offline, None, reason)
            .await
    }

    /// Moves `current` to `to` only if it is still exactly as read (same
    /// state since the same moment, same call), writing the `agent.state`
    /// event in the same transaction. The agent keeps its call into
    /// `on_call` and `wrap_up` and drops it anywhere else.
    pub async fn transition(
        &self,
        current: &AgentRow,
        to: AgentState,
        pause_code: Option<&str>,
        reason: &str,
    ) -> Result<StateChange, sqlx::Error> {
        let agent = &current.agent;
        let id = agent.id.as_str();
        let held = current.call.call_id.as_deref();
        // Only a reservation gives an agent a call (`super::reservations`).
        let next_call = match to {
            AgentState::OnCall | AgentState::WrapUp => held,
            _ => None,
        };
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE agents SET state = ?, pause_code = ?, state_since = ?, call_id = ?, reserved_until = NULL \
             WHERE user_id = ? AND state = ? AND state_since = ? AND COALESCE(call_id, '') = ?",
        )
        .bind(to.as_str())
        .bind(pause_code)
        .bind(now)
        .bind(next_call)
        .bind(id)
        .bind(agent.state.as_str())
        .bind(agent.state_since)
        .bind(held.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            // Someone else moved it first: report what it is now.
            tx.rollback().await?;
            let now_state = self
                .agent(id)
                .await?
                .map(|a| a.state)
                .unwrap_or(agent.state);
            return Ok(StateChange::Refused(now_state));
        }
        let change = AgentStateEvent {
            previous: agent.state,
            state: to,
            pause_code,
            reason,
            at_ms: now,
            teams: &agent.teams,
            call_id: held,
        };
        enqueue_agent_state(&mut tx, id, &change).await?;
        tx.commit().await?;
        let row = self.agent_row(id).await?.ok_or(sqlx::Error::RowNotFound)?;
        Ok(StateChange::Changed(Box::new(row)))
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
    pub async fn agents_in_wrap_up(&self) -> Result<Vec<AgentRow>, sqlx::Error> {
        self.select_rows(Some(AgentState::WrapUp.as_str()), None, "user_id")
            .await
    }
}
