//! Agent presence: each agent's latest state from `agent.state`, kept by
//! event time so that an event delivered late never takes an agent back to
//! an older state. The dispatcher counts an agent team's ready agents here;
//! the live view lists them.
//!
//! Teams are stored as `,east,west,` and matched with `INSTR` (the same on
//! both engines; team names never hold a comma).

use std::collections::BTreeMap;

use dialstack_contract::AgentStateChanged;
use sqlx::Row;

use super::Repo;
use crate::domain::dialing::AgentStatus;

/// An agent as the scheduler last heard of them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Presence {
    /// The agent (user id).
    pub agent_id: String,
    /// Their state.
    pub state: AgentStatus,
    /// Since when (ms since epoch, the event's time).
    pub since_ms: i64,
    /// The call, when reserved, on a call or in wrap-up.
    pub call_id: Option<String>,
}

/// A team's agents by state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamAgents {
    /// Agents per state (every state present, zero or more).
    pub by_state: BTreeMap<&'static str, i64>,
    /// Agents that take calls now: available, or reserved for a call that
    /// is counted as waiting; an agent already bridged to a call (by the
    /// attempts) is not counted even before their state arrives.
    pub ready: i64,
    /// Agents logged in (every state but offline).
    pub logged_in: i64,
}

/// What applying one `agent.state` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentApplied {
    /// The event was new to the inbox.
    pub fresh: bool,
    /// The agent left wrap-up with this event, after this long (ms): what
    /// the pacers learn wrap-up times from.
    pub wrap_ended_ms: Option<i64>,
}

/// `,a,b,`: the stored form of a team list.
fn teams_col(teams: &[String]) -> String {
    let mut t: Vec<&str> = teams.iter().map(String::as_str).collect();
    t.sort_unstable();
    t.dedup();
    format!(",{},", t.join(","))
}

/// The `INSTR` needle for one team.
fn team_needle(team: &str) -> String {
    format!(",{team},")
}

impl Repo {
    /// Applies `agent.state` events in one transaction, each once (inbox):
    /// an agent's row takes an event only when it is at least as new as
    /// the state it holds. Per event: what it did.
    pub async fn apply_agent_states(
        &self,
        events: &[(&str, &AgentStateChanged)],
    ) -> Result<Vec<AgentApplied>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = events.iter().map(|(id, _)| *id).collect();
        let fresh =
            dialstack_common::db::inbox_claim_many(&mut tx, self.db.dialect, crate::NAME, &ids)
                .await?;
        let now = dialstack_common::now_ms();
        let mut out = Vec::with_capacity(events.len());
        for ((_, ev), new) in events.iter().zip(&fresh) {
            let mut applied = AgentApplied {
                fresh: *new,
                wrap_ended_ms: None,
            };
            if !new {
                out.push(applied);
                continue;
            }
            let teams = teams_col(&ev.teams);
            let held = sqlx::query("SELECT state, since_ms FROM agent_presence WHERE agent_id = ?")
                .bind(&ev.agent_id)
                .fetch_optional(&mut *tx)
                .await?;
            let inserted = sqlx::query(&format!(
                "{} INTO agent_presence (agent_id, teams, state, since_ms, call_id, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                self.db.dialect.insert_ignore()
            ))
            .bind(&ev.agent_id)
            .bind(&teams)
            .bind(&ev.state)
            .bind(ev.at_ms)
            .bind(ev.call_id.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                out.push(applied);
                continue;
            }
            // An event without teams (an older user-service) keeps the
            // teams last heard.
            let moved = sqlx::query(
                "UPDATE agent_presence SET state = ?, since_ms = ?, call_id = ?, updated_at = ?,
                   teams = CASE WHEN ? = ',,' THEN teams ELSE ? END
                 WHERE agent_id = ? AND since_ms <= ?",
            )
            .bind(&ev.state)
            .bind(ev.at_ms)
            .bind(ev.call_id.clone())
            .bind(now)
            .bind(&teams)
            .bind(&teams)
            .bind(&ev.agent_id)
            .bind(ev.at_ms)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                tracing::debug!(agent_id = %ev.agent_id, at_ms = ev.at_ms, state = %ev.state, "agent state older than the one held: ignored");
            } else if let Some(r) = held {
                let was: String = r.try_get(0)?;
                let since: i64 = r.try_get(1)?;
                if was == AgentStatus::WrapUp.as_str() && ev.state != was {
                    applied.wrap_ended_ms = Some((ev.at_ms - since).max(0));
                }
            }
            out.push(applied);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A team's agents on a call or in wrap-up: (state, since ms).
    pub async fn team_busy(&self, team: &str) -> Result<Vec<(AgentStatus, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT state, since_ms FROM agent_presence
             WHERE INSTR(teams, ?) > 0 AND state IN ('on_call', 'wrap_up')",
        )
        .bind(team_needle(team))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get(0)?;
                let s = AgentStatus::parse(&state).ok_or_else(|| {
                    sqlx::Error::Decode(format!("agent_presence.state: unknown {state:?}").into())
                })?;
                Ok((s, r.try_get(1)?))
            })
            .collect()
    }

    /// One agent's presence.
    pub async fn presence(&self, agent_id: &str) -> Result<Option<Presence>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT agent_id, state, since_ms, call_id FROM agent_presence WHERE agent_id = ?",
        )
        .bind(agent_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(presence_from).transpose()
    }

    /// The teams stored for an agent (tests and diagnostics).
    pub async fn presence_teams(&self, agent_id: &str) -> Result<Vec<String>, sqlx::Error> {
        let row = sqlx::query("SELECT teams FROM agent_presence WHERE agent_id = ?")
            .bind(agent_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            None => Vec::new(),
            Some(r) => super::text(&r, 0)?
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// A team's agents (not offline), longest in their state first; at
    /// most `limit`.
    pub async fn team_presence(
        &self,
        team: &str,
        limit: i64,
    ) -> Result<Vec<Presence>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT agent_id, state, since_ms, call_id FROM agent_presence
             WHERE INSTR(teams, ?) > 0 AND state <> 'offline' ORDER BY since_ms, agent_id LIMIT ?",
        )
        .bind(team_needle(team))
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(presence_from).collect()
    }

    /// A team's agents by state, and how many take calls now.
    pub async fn team_agents(&self, team: &str) -> Result<TeamAgents, sqlx::Error> {
        let mut out = TeamAgents {
            by_state: AgentStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            ..TeamAgents::default()
        };
        let needle = team_needle(team);
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM agent_presence WHERE INSTR(teams, ?) > 0 GROUP BY state",
        )
        .bind(&needle)
        .fetch_all(&self.db.pool)
        .await?;
        for r in &rows {
            let state: String = r.try_get(0)?;
            let n: i64 = r.try_get(1)?;
            let s = AgentStatus::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("agent_presence.state: unknown {state:?}").into())
            })?;
            out.by_state.insert(s.as_str(), n);
            if s != AgentStatus::Offline {
                out.logged_in += n;
            }
        }
        let ready = sqlx::query(
            "SELECT COUNT(*) FROM agent_presence p
             WHERE INSTR(p.teams, ?) > 0 AND p.state IN ('available', 'reserved')
               AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.agent_id = p.agent_id
                               AND a.state IN ('queued', 'claimed', 'dialing') AND a.bridged_at IS NOT NULL)",
        )
        .bind(&needle)
        .fetch_one(&self.db.pool)
        .await?;
        out.ready = ready.try_get(0)?;
        Ok(out)
    }
}

fn presence_from(r: &sqlx::any::AnyRow) -> Result<Presence, sqlx::Error> {
    let state: String = r.try_get(1)?;
    Ok(Presence {
        agent_id: r.try_get(0)?,
        state: AgentStatus::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("agent_presence.state: unknown {state:?}").into())
        })?,
        since_ms: r.try_get(2)?,
        call_id: r.try_get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_are_stored_between_commas() {
        assert_eq!(
            teams_col(&["west".into(), "east".into(), "east".into()]),
            ",east,west,"
        );
        assert_eq!(teams_col(&[]), ",,");
        assert!(teams_col(&["east-2".into()]).contains(&team_needle("east-2")));
        assert!(!teams_col(&["east-2".into()]).contains(&team_needle("east")));
    }
}
