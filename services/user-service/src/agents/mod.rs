//! Agents: profiles (admins and supervisors), agent state with its
//! transition table, heartbeats, reserving an agent for a call, and the
//! presence loop.
//!
//! Object level: an agent sees and changes only itself; asking about another
//! agent is a 404, so ids cannot be probed.
//!
//! # Layout
//! - this module: the routes, profiles, the state change and the scope
//! - [`reserve`]: `POST /v1/agents/reserve`, the dialer's atomic choice of
//!   an agent for a call
//! - [`presence`]: the loop that takes silent agents offline, ends overdue
//!   wrap-ups, lapses unused reservations and keeps `dialstack_agents{state}`
//!
//! # A call's agent
//! The dialer (media-processor, a service account) reserves an agent
//! (`available → reserved`, the call id recorded on the agent), connects it
//! (`reserved → on_call`), and ends the call (`on_call → wrap_up`), naming
//! the call each time; or gives the reservation back (`reserved →
//! available`). A reservation not connected within
//! `DIALSTACK_AGENT_RESERVATION_SECS` lapses back to `available`. The agent
//! ends its wrap-up (`wrap_up → available` or `paused`), or the team's
//! wrap-up timeout does. Agents never reserve or connect themselves
//! ([`crate::domain::AgentState::may_request`]).

pub mod presence;
pub mod reserve;

pub use presence::run_presence;

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use dialstack_common::auth::{roles, Principal, Role, RouteRoles, ANY_ROLE};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::db::{Agent, AgentCall, AgentRow, StateChange};
use crate::domain::{AgentState, Requester};
use crate::AppState;

const MANAGE: &[Role] = &[Role::Admin, Role::Supervisor];
const VIEW: &[Role] = &[Role::Admin, Role::Supervisor, Role::Service];
const SERVICE: &[Role] = &[Role::Service];

/// Who may call each route (agents then only reach their own record).
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "GET",
        path: "/v1/agents",
        roles: VIEW,
    },
    RouteRoles {
        method: "PUT",
        path: "/v1/agents/{id}",
        roles: MANAGE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/agents/{id}",
        roles: ANY_ROLE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/agents/{id}/state",
        roles: ANY_ROLE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/agents/{id}/heartbeat",
        roles: ANY_ROLE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/agents/reserve",
        roles: SERVICE,
    },
];

/// `PUT /v1/agents/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentProfile {
    /// Name shown to supervisors.
    pub display_name: String,
    /// Where answered calls are bridged (`sip:` or `sips:` URI).
    pub sip_uri: String,
    /// Teams.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Skills with levels 1-10.
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// Calls at once (1-10, default 1).
    #[serde(default)]
    pub max_concurrent: Option<i64>,
}

/// An agent with the time spent in its state and the call it is busy with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// The agent.
    #[serde(flatten)]
    pub agent: Agent,
    /// The call (`reserved`, `on_call`, `wrap_up`).
    #[serde(flatten)]
    pub call: AgentCall,
    /// Seconds in the current state.
    pub seconds_in_state: i64,
}

impl From<AgentRow> for AgentView {
    fn from(row: AgentRow) -> Self {
        let seconds_in_state = (dialstack_common::now_ms() - row.agent.state_since).max(0) / 1000;
        Self {
            agent: row.agent,
            call: row.call,
            seconds_in_state,
        }
    }
}

/// `POST /v1/agents/{id}/state` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StateRequest {
    /// The new state.
    pub state: AgentState,
    /// Required with `paused`.
    #[serde(default)]
    pub pause_code: Option<String>,
    /// Free text kept in the event (default: `connected`, `call_ended` or
    /// `released` for the call steps, else `requested`).
    #[serde(default)]
    pub reason: Option<String>,
    /// The call the change is about. Required from a service for the call
    /// steps (`reserved → on_call`, `on_call → wrap_up`, `reserved →
    /// available`); whenever given, it must be the agent's call (409).
    #[serde(default)]
    pub call_id: Option<String>,
}

/// `GET /v1/agents` filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AgentFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this team.
    pub team: Option<String>,
    /// Only agents with this skill.
    pub skill: Option<String>,
}

/// The routes (mounted behind the auth layer).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list_agents).route_layer(roles(VIEW)))
        .route(
            "/v1/agents/{id}",
            put(put_agent)
                .route_layer(roles(MANAGE))
                .merge(get(get_agent).route_layer(roles(ANY_ROLE))),
        )
        .route(
            "/v1/agents/{id}/state",
            post(change_state).route_layer(roles(ANY_ROLE)),
        )
        .route(
            "/v1/agents/{id}/heartbeat",
            post(heartbeat).route_layer(roles(ANY_ROLE)),
        )
        .route(
            "/v1/agents/reserve",
            post(reserve::reserve_agent).route_layer(roles(SERVICE)),
        )
}

/// What a caller may see of agents and teams: everything (admins and
/// services), the teams they lead (supervisors, read from the database so a
/// change applies at once) or only themselves (agents).
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every agent and team.
    All,
    /// Agents in any of these teams, and these teams.
    Teams(Vec<String>),
    /// Only this agent.
    Own(String),
}

impl Scope {
    /// The scope of `who`.
    pub async fn of(state: &AppState, who: &Principal) -> Result<Self, ApiError> {
        Ok(match who.role {
            Role::Admin | Role::Service => Self::All,
            Role::Supervisor => Self::Teams(
                state
                    .repo
                    .user_by_id(&who.sub)
                    .await?
                    .map(|u| u.teams)
                    .unwrap_or_default(),
            ),
            Role::Agent => Self::Own(who.sub.clone()),
        })
    }

    /// Whether the scope reaches any of `teams`.
    pub fn covers(&self, teams: &[String]) -> bool {
        match self {
            Self::All => true,
            Self::Teams(mine) => teams.iter().any(|t| mine.contains(t)),
            Self::Own(_) => false,
        }
    }

    /// Whether the scope reaches `agent`.
    pub fn sees(&self, agent: &Agent) -> bool {
        match self {
            Self::Own(id) => &agent.id == id,
            _ => self.covers(&agent.teams),
        }
    }
}

/// Most teams an agent belongs to or a supervisor leads (they are stored in
/// 1,024 characters and travel in every token).
pub const MAX_TEAMS: usize = 12;

/// Team, skill and pause-code names, and ids that cross services (call
/// ids, agent ids): 1-64 of `[A-Za-z0-9._-]`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Creates or updates the profile of an agent user (admins, supervisors).
#[utoipa::path(put, path = "/v1/agents/{id}", request_body = AgentProfile, security(("bearer" = [])),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_agent(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<AgentProfile>,
) -> Result<ApiJson<AgentView>, ApiError> {
    who.require(MANAGE)?;
    let user = state
        .repo
        .user_by_id(&id)
        .await?
        .filter(|u| u.role == Role::Agent)
        .ok_or_else(|| ApiError::not_found("agent user"))?;
    let scope = Scope::of(&state, &who).await?;
    let mut teams = p.teams.clone();
    if let Scope::Teams(mine) = &scope {
        // Supervisors manage the agents already in their teams, and only
        // within those teams; placing an agent first is an admin's job.
        let current = state
            .repo
            .agent(&id)
            .await?
            .filter(|a| scope.sees(a))
            .ok_or_else(|| ApiError::not_found("agent user"))?;
        if let Some(t) = p.teams.iter().find(|t| !mine.contains(t)) {
            return Err(ApiError::invalid(
                "teams",
                format!("{t:?} is not a team you lead"),
            ));
        }
        // Memberships in teams the supervisor does not lead stay as they are.
        let kept = current.teams.into_iter().filter(|t| !mine.contains(t));
        teams = kept.chain(p.teams.iter().cloned()).collect();
    }
    let mut seen = std::collections::HashSet::new();
    teams.retain(|t| seen.insert(t.clone()));
    if teams.len() > MAX_TEAMS {
        return Err(ApiError::invalid("teams", format!("at most {MAX_TEAMS}")));
    }
    if p.display_name.trim().is_empty() || p.display_name.len() > 128 {
        return Err(ApiError::invalid(
            "display_name",
            "must be 1-128 characters",
        ));
    }
    if !(p.sip_uri.starts_with("sip:") || p.sip_uri.starts_with("sips:"))
        || p.sip_uri.len() > 255
        || p.sip_uri.contains(char::is_whitespace)
    {
        return Err(ApiError::invalid("sip_uri", "must be a sip: or sips: URI"));
    }
    if let Some(t) = p.teams.iter().find(|t| !name_ok(t)) {
        return Err(ApiError::invalid(
            "teams",
            format!("{t:?} must be 1-64 of [A-Za-z0-9._-]"),
        ));
    }
    if let Some((k, v)) = p
        .skills
        .iter()
        .find(|(k, v)| !name_ok(k) || !(1..=10).contains(*v))
    {
        return Err(ApiError::invalid(
            "skills",
            format!("{k:?}: {v} must be a name with a level 1-10"),
        ));
    }
    let max_concurrent = p.max_concurrent.unwrap_or(1);
    if !(1..=10).contains(&max_concurrent) {
        return Err(ApiError::invalid("max_concurrent", "must be 1-10"));
    }
    state
        .repo
        .upsert_agent(&Agent {
            id: user.id,
            display_name: p.display_name.trim().to_owned(),
            sip_uri: p.sip_uri,
            teams,
            skills: p.skills,
            max_concurrent,
            state: AgentState::Offline,
            pause_code: None,
            state_since: 0,
            last_heartbeat: 0,
        })
        .await?;
    // Read back with the call, which a profile change keeps.
    let row = state
        .repo
        .agent_row(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent user"))?;
    Ok(ApiJson(row.into()))
}

/// The agent, if the caller may see it: agents see only themselves,
/// supervisors the agents of their teams; anyone else's is a 404.
async fn visible(state: &AppState, who: &Principal, id: &str) -> Result<AgentRow, ApiError> {
    let scope = Scope::of(state, who).await?;
    if matches!(&scope, Scope::Own(me) if me != id) {
        return Err(ApiError::not_found("agent"));
    }
    state
        .repo
        .agent_row(id)
        .await?
        .filter(|a| scope.sees(&a.agent))
        .ok_or_else(|| ApiError::not_found("agent"))
}

/// One agent (agents: only themselves).
#[utoipa::path(get, path = "/v1/agents/{id}", security(("bearer" = [])),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<AgentView>, ApiError> {
    Ok(ApiJson(visible(&state, &who, &id).await?.into()))
}

/// Agents by state, team and skill, with time in state (supervisor view;
/// the scheduler's pacing reads it with a service token).
#[utoipa::path(get, path = "/v1/agents", params(AgentFilter), security(("bearer" = [])),
    responses((status = 200, body = [AgentView]), (status = 400, body = ErrorBody)))]
pub async fn list_agents(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(f): ApiQuery<AgentFilter>,
) -> Result<ApiJson<Vec<AgentView>>, ApiError> {
    who.require(VIEW)?;
    if let Some(s) = &f.state {
        AgentState::parse(s)
            .ok_or_else(|| ApiError::invalid("state", format!("{s:?} is not an agent state")))?;
    }
    for (field, v) in [("team", &f.team), ("skill", &f.skill)] {
        if v.as_deref().is_some_and(|v| !name_ok(v)) {
            return Err(ApiError::invalid(field, "must be 1-64 of [A-Za-z0-9._-]"));
        }
    }
    let scope = Scope::of(&state, &who).await?;
    let mut agents = state
        .repo
        .agent_rows(f.state.as_deref(), f.team.as_deref(), f.skill.as_deref())
        .await?;
    agents.retain(|a| scope.sees(&a.agent));
    Ok(ApiJson(agents.into_iter().map(AgentView::from).collect()))
}

/// Changes an agent's state. Agents change their own; supervisors, admins
/// and services anyone's they see. Only a reservation sets `reserved`; the
/// call steps are the dialer's and name the call (see the module doc): an
/// agent asking for one is a 403, a service omitting `call_id` a 400. An
/// invalid transition, or a `call_id` that is not the agent's call, is a 409
/// whose body carries `current_state`.
#[utoipa::path(post, path = "/v1/agents/{id}/state", request_body = StateRequest, security(("bearer" = [])),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn change_state(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StateRequest>,
) -> Result<Response, ApiError> {
    let current = visible(&state, &who, &id).await?;
    let pause_code = match (req.state, req.pause_code.as_deref()) {
        (AgentState::Paused, Some(code)) if name_ok(code) => Some(code),
        (AgentState::Paused, _) => {
            return Err(ApiError::invalid(
                "pause_code",
                "is required with paused (1-64 of [A-Za-z0-9._-])",
            ))
        }
        (_, _) => None,
    };
    if req.call_id.as_deref().is_some_and(|c| !name_ok(c)) {
        return Err(ApiError::invalid(
            "call_id",
            "must be 1-64 of [A-Za-z0-9._-]",
        ));
    }
    let from = current.agent.state;
    let reason = req.reason.as_deref().unwrap_or(match (from, req.state) {
        (AgentState::Reserved, AgentState::OnCall) => "connected",
        (AgentState::OnCall, AgentState::WrapUp) => "call_ended",
        (AgentState::Reserved, AgentState::Available) => "released",
        _ => "requested",
    });
    if reason.len() > 128 {
        return Err(ApiError::invalid(
            "reason",
            "must be at most 128 characters",
        ));
    }
    let requester = match who.role {
        Role::Agent => Requester::Agent,
        Role::Admin | Role::Supervisor => Requester::Manager,
        Role::Service => Requester::Service,
    };
    let change = state
        .repo
        .request_state(
            &id,
            req.state,
            pause_code,
            reason,
            requester,
            req.call_id.as_deref(),
        )
        .await?;
    let conflict = |current: AgentState, message: String| {
        (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "code": ErrorCode::Conflict.as_str(),
                "message": message,
                "request_id": dialstack_common::http::current_request_id(),
                "current_state": current.as_str(),
            })),
        )
            .into_response()
    };
    let to = req.state.as_str();
    match change {
        StateChange::Changed(row) => {
            state.relay.notify();
            Ok(ApiJson(AgentView::from(*row)).into_response())
        }
        StateChange::Refused(current) => Ok(conflict(
            current,
            format!("an agent cannot go from {} to {to}", current.as_str()),
        )),
        StateChange::WrongCall(current) => Ok(conflict(
            current,
            "call_id is not the agent's call".to_owned(),
        )),
        StateChange::Forbidden(current) if req.state == AgentState::Reserved => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "an agent goes from {} to reserved only by POST /v1/agents/reserve",
                current.as_str()
            ),
        )),
        StateChange::Forbidden(current) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "role {} may not move an agent from {} to {to}: the dialer does",
                who.role.as_str(),
                current.as_str()
            ),
        )),
        StateChange::CallRequired(current) => Err(ApiError::invalid(
            "call_id",
            format!("is required to go from {} to {to}", current.as_str()),
        )),
        StateChange::Unknown => Err(ApiError::not_found("agent")),
    }
}

/// Records that the agent's client is alive.
#[utoipa::path(post, path = "/v1/agents/{id}/heartbeat", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible(&state, &who, &id).await?;
    if state.repo.heartbeat(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("agent"))
    }
}
