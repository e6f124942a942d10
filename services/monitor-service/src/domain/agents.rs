//! Agents as the wallboard and `dialstack_agents{state,team}` count them:
//! each agent's latest `agent.state` (by the event's `at_ms`, so an event
//! delivered late never takes an agent back), counted per team. user-service
//! owns the state machine; here a state is only a name to count under.

use std::collections::BTreeMap;

use serde::Serialize;

/// An agent's state, as user-service publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentState {
    /// Not logged in, or gone silent.
    Offline,
    /// Waiting for a call.
    Available,
    /// A call is being routed to them.
    Reserved,
    /// Talking.
    OnCall,
    /// After-call work.
    WrapUp,
    /// Away, with a pause code.
    Paused,
}

impl AgentState {
    /// Every state, in the order the wallboard shows them.
    pub const ALL: [AgentState; 6] = [
        Self::Available,
        Self::Reserved,
        Self::OnCall,
        Self::WrapUp,
        Self::Paused,
        Self::Offline,
    ];

    /// The published (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Available => "available",
            Self::Reserved => "reserved",
            Self::OnCall => "on_call",
            Self::WrapUp => "wrap_up",
            Self::Paused => "paused",
        }
    }

    /// Parses a published or stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Reasons user-service gives when an agent's profile is removed (the user
/// was deleted or is no longer an agent): the agent stops being counted.
pub const REMOVED_REASONS: &[&str] = &["user_deleted", "role_changed", "deleted"];

/// Most teams one event may name (user-service allows 12).
pub const MAX_TEAMS_PER_AGENT: usize = 32;

/// Most teams with a label of their own on `dialstack_agents` and on the
/// wallboard; smaller teams beyond are summed into [`OTHER_TEAM`].
pub const MAX_TEAM_LABELS: usize = 200;
/// The team of the agents of teams beyond [`MAX_TEAM_LABELS`].
pub const OTHER_TEAM: &str = "other";
/// The team of agents that belong to none.
pub const NO_TEAM: &str = "none";

/// An `agent.state` payload that breaks the contract; `field` names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AgentEventError {
    /// The offending field (`data` for the whole payload).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> AgentEventError {
    AgentEventError {
        field,
        reason: reason.into(),
    }
}

/// What the monitor keeps of one `agent.state` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpdate {
    /// The agent (user id).
    pub agent_id: String,
    /// The state now.
    pub state: AgentState,
    /// When it changed (ms since epoch): the order of an agent's events.
    pub at_ms: i64,
    /// The agent's teams (sorted, distinct).
    pub teams: Vec<String>,
    /// The profile was removed: the agent is no longer counted.
    pub removed: bool,
}

/// 1-64 of letters, digits and `-_.`: ids and team names as user-service
/// issues them (safe as a label value and in a log line).
fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Reads an `agent.state` payload field by field, so that a malformed event
/// is logged with the field at fault. Fields the monitor does not use
/// (`previous`, `pause_code`, `call_id`) are not judged.
pub fn parse_agent_state(data: &serde_json::Value) -> Result<AgentUpdate, AgentEventError> {
    use serde_json::Value;
    let obj = data
        .as_object()
        .ok_or_else(|| bad("data", "must be an object"))?;
    let text = |f: &'static str| -> Result<Option<&str>, AgentEventError> {
        match obj.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(f, "must be a string")),
        }
    };
    let agent_id = text("agent_id")?.ok_or_else(|| bad("agent_id", "is required"))?;
    if !name_ok(agent_id) {
        return Err(bad("agent_id", "must be 1-64 of [A-Za-z0-9._-]"));
    }
    let state_name = text("state")?.ok_or_else(|| bad("state", "is required"))?;
    let state = AgentState::parse(state_name).ok_or_else(|| {
        bad(
            "state",
            format!(
                "unknown state {:?}; known: {}",
                state_name.chars().take(32).collect::<String>(),
                AgentState::ALL.map(AgentState::as_str).join(", ")
            ),
        )
    })?;
    let at_ms = obj
        .get("at_ms")
        .ok_or_else(|| bad("at_ms", "is required"))?
        .as_i64()
        .filter(|t| *t > 0)
        .ok_or_else(|| bad("at_ms", "must be a positive integer (ms since epoch)"))?;
    let mut teams = match obj.get("teams") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            if a.len() > MAX_TEAMS_PER_AGENT {
                return Err(bad("teams", format!("at most {MAX_TEAMS_PER_AGENT}")));
            }
            a.iter()
                .map(|t| match t.as_str() {
                    Some(t) if name_ok(t) => Ok(t.to_owned()),
                    _ => Err(bad("teams", "each must be 1-64 of [A-Za-z0-9._-]")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(bad("teams", "must be an array of team names")),
    };
    teams.sort_unstable();
    teams.dedup();
    let reason = text("reason")?.unwrap_or_default();
    Ok(AgentUpdate {
        agent_id: agent_id.to_owned(),
        state,
        at_ms,
        teams,
        removed: state == AgentState::Offline && REMOVED_REASONS.contains(&reason),
    })
}

/// Agents per state, every state present (zero or more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ByState(pub BTreeMap<&'static str, i64>);

impl Default for ByState {
    fn default() -> Self {
        Self(AgentState::ALL.iter().map(|s| (s.as_str(), 0)).collect())
    }
}

impl ByState {
    /// Adds `n` agents in `state`.
    pub fn add(&mut self, state: AgentState, n: i64) {
        *self.0.entry(state.as_str()).or_default() += n;
    }

    /// Agents in `state`.
    pub fn get(&self, state: AgentState) -> i64 {
        self.0.get(state.as_str()).copied().unwrap_or(0)
    }

    /// Agents in any state.
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

/// Per-team counts folded to at most [`MAX_TEAM_LABELS`] named teams: the
/// largest teams (by agents, then by name) keep their name, the rest are
/// summed into [`OTHER_TEAM`]. `counts` are (team, state, agents) rows; the
/// result is sorted by team name, `other` last.
pub fn fold_teams(counts: &[(String, AgentState, i64)], cap: usize) -> Vec<(String, ByState)> {
    let mut teams: BTreeMap<&str, ByState> = BTreeMap::new();
    for (team, state, n) in counts {
        teams.entry(team.as_str()).or_default().add(*state, *n);
    }
    let mut by_size: Vec<(&str, i64)> = teams.iter().map(|(t, c)| (*t, c.total())).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: std::collections::BTreeSet<&str> =
        by_size.iter().take(cap).map(|(t, _)| *t).collect();
    let mut out = Vec::new();
    let mut other: Option<ByState> = None;
    for (team, c) in teams {
        if named.contains(team) {
            out.push((team.to_owned(), c));
        } else {
            let o = other.get_or_insert_with(ByState::default);
            for s in AgentState::ALL {
                o.add(s, c.get(s));
            }
        }
    }
    if let Some(o) = other {
        out.push((OTHER_TEAM.to_owned(), o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> serde_json::Value {
        json!({"agent_id": "a-1", "previous": "offline", "state": "available",
            "reason": "login", "at_ms": 1_700_000_000_000i64, "teams": ["west", "east", "west"]})
    }

    #[test]
    fn every_state_round_trips() {
        for s in AgentState::ALL {
            assert_eq!(AgentState::parse(s.as_str()), Some(s));
        }
        assert_eq!(AgentState::parse("on call"), None);
    }

    #[test]
    fn a_good_event_is_read() {
        let u = parse_agent_state(&event()).unwrap();
        assert_eq!(u.agent_id, "a-1");
        assert_eq!(u.state, AgentState::Available);
        assert_eq!(u.teams, vec!["east", "west"]);
        assert!(!u.removed);
        let mut gone = event();
        gone["state"] = json!("offline");
        gone["reason"] = json!("user_deleted");
        assert!(parse_agent_state(&gone).unwrap().removed);
        let mut bare = event();
        bare.as_object_mut().unwrap().remove("teams");
        assert!(parse_agent_state(&bare).unwrap().teams.is_empty());
    }

    #[test]
    fn malformed_events_name_the_field() {
        let cases: &[(&str, serde_json::Value)] = &[
            ("agent_id", json!({"agent_id": null})),
            ("agent_id", json!({"agent_id": "a b"})),
            ("agent_id", json!({"agent_id": 7})),
            ("state", json!({"state": "asleep"})),
            ("state", json!({"state": null})),
            ("at_ms", json!({"at_ms": "yesterday"})),
            ("at_ms", json!({"at_ms": -5})),
            ("at_ms", json!({"at_ms": null})),
            ("teams", json!({"teams": "east"})),
            ("teams", json!({"teams": ["ok", ""]})),
            ("teams", json!({"teams": vec!["t"; 33]})),
            ("reason", json!({"reason": 1})),
        ];
        for (field, patch) in cases {
            let mut v = event();
            for (k, x) in patch.as_object().unwrap() {
                if x.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            assert_eq!(parse_agent_state(&v).unwrap_err().field, *field, "{patch}");
        }
        assert_eq!(parse_agent_state(&json!([1])).unwrap_err().field, "data");
    }

    #[test]
    fn teams_beyond_the_cap_fold_into_other() {
        let rows = vec![
            ("a".to_owned(), AgentState::Available, 1),
            ("b".to_owned(), AgentState::Available, 5),
            ("b".to_owned(), AgentState::OnCall, 2),
            ("c".to_owned(), AgentState::Paused, 3),
            ("d".to_owned(), AgentState::OnCall, 1),
        ];
        let folded = fold_teams(&rows, 2);
        let names: Vec<&str> = folded.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, vec!["b", "c", "other"], "the two largest keep names");
        let other = &folded[2].1;
        assert_eq!(
            (
                other.get(AgentState::Available),
                other.get(AgentState::OnCall)
            ),
            (1, 1)
        );
        assert_eq!(other.total(), 2);
        assert_eq!(folded[0].1 .0.len(), AgentState::ALL.len(), "every state");
        assert_eq!(fold_teams(&rows, 10).len(), 4, "no other under the cap");
        assert!(fold_teams(&[], 2).is_empty());
    }
}
