//! `POST /v1/agents/reserve`: the dialer (a service account) asks for an
//! agent for one call, and gets one that nobody else gets.
//!
//! Of the available agents that fit (team, skills at or above the levels
//! asked, not excluded, or exactly the one asked for), the one available
//! longest is moved `available → reserved` by a conditional UPDATE, with the
//! call id and the end of the hold recorded on the agent and the
//! `agent.state` event (reason `reserved`) in the same transaction; one that
//! a concurrent reservation took first is skipped for the next
//! ([`crate::db::Repo::reserve`]). A retried request for a call that already
//! holds a reservation gets the same agent back. No agent: 409
//! `no_agent_available`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiJson, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{name_ok, SERVICE};
use crate::db::{AgentRow, Reservation};
use crate::domain::AgentNeeds;
use crate::AppState;

/// The error code of a reservation that found no agent (409).
pub const NO_AGENT_AVAILABLE: &str = "no_agent_available";
/// Most skills a reservation may ask for (as many as a dial command's
/// bridge may carry).
pub const MAX_SKILLS: usize = dialstack_contract::MAX_BRIDGE_SKILLS;
/// Most agents a reservation may exclude.
pub const MAX_EXCLUDE: usize = 256;

/// `POST /v1/agents/reserve` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The call the agent is for (1-64 of `[A-Za-z0-9._-]`).
    pub call_id: String,
    /// Only agents of this team (absent: any team).
    #[serde(default)]
    pub team: Option<String>,
    /// Skills the agent must have, each with the lowest level (1-10; at
    /// most 16).
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// Agents not to reserve: those already tried for this call (at most
    /// 256).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Exactly this agent (preview dialing: the agent asked for the lead);
    /// the other conditions still apply.
    #[serde(default)]
    pub agent_id: Option<String>,
}

impl ReserveRequest {
    /// The edge rules; a 400 names the field.
    pub fn needs(&self) -> Result<AgentNeeds, ApiError> {
        const NAME: &str = "must be 1-64 of [A-Za-z0-9._-]";
        if !name_ok(&self.call_id) {
            return Err(ApiError::invalid("call_id", NAME));
        }
        if self.team.as_deref().is_some_and(|t| !name_ok(t)) {
            return Err(ApiError::invalid("team", NAME));
        }
        if self.skills.len() > MAX_SKILLS {
            return Err(ApiError::invalid("skills", format!("at most {MAX_SKILLS}")));
        }
        if let Some((k, v)) = self
            .skills
            .iter()
            .find(|(k, v)| !name_ok(k) || !(1..=10).contains(*v))
        {
            return Err(ApiError::invalid(
                "skills",
                format!("{k:?}: {v} must be a name with a level 1-10"),
            ));
        }
        if self.exclude.len() > MAX_EXCLUDE {
            return Err(ApiError::invalid(
                "exclude",
                format!("at most {MAX_EXCLUDE} agents"),
            ));
        }
        if let Some(bad) = self.exclude.iter().find(|a| !name_ok(a)) {
            return Err(ApiError::invalid("exclude", format!("{bad:?} {NAME}")));
        }
        if self.agent_id.as_deref().is_some_and(|a| !name_ok(a)) {
            return Err(ApiError::invalid("agent_id", NAME));
        }
        Ok(AgentNeeds {
            team: self.team.clone(),
            skills: self.skills.clone(),
            exclude: self.exclude.clone(),
            agent_id: self.agent_id.clone(),
        })
    }
}

/// The reserved agent: whom to call, and for how long it is held.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservedAgent {
    /// The agent's user id.
    pub id: String,
    /// Name shown to supervisors.
    pub display_name: String,
    /// Where to call the agent (`sip:` or `sips:` URI).
    pub sip_uri: String,
    /// The agent's teams.
    pub teams: Vec<String>,
    /// The agent's skills with levels.
    pub skills: BTreeMap<String, u8>,
    /// The call it is reserved for.
    pub call_id: String,
    /// When the reservation lapses unless the agent is connected
    /// (`reserved → on_call`) first (ms since epoch).
    pub reserved_until: i64,
}

impl From<AgentRow> for ReservedAgent {
    fn from(row: AgentRow) -> Self {
        let a = row.agent;
        Self {
            id: a.id,
            display_name: a.display_name,
            sip_uri: a.sip_uri,
            teams: a.teams,
            skills: a.skills,
            call_id: row.call.call_id.unwrap_or_default(),
            reserved_until: row.call.reserved_until.unwrap_or_default(),
        }
    }
}

/// Reserves one available agent for a call (services only): the one that
/// fits and has been available longest. 409 `no_agent_available` when none
/// is free; 404 when `agent_id` names no agent.
#[utoipa::path(post, path = "/v1/agents/reserve", request_body = ReserveRequest, security(("bearer" = [])),
    responses((status = 200, body = ReservedAgent), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reserve_agent(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(req): ApiJson<ReserveRequest>,
) -> Result<Response, ApiError> {
    who.require(SERVICE)?;
    let needs = req.needs()?;
    let hold_ms = state.reservation_hold.as_millis() as i64;
    let count = |result: &str| state.reservations.with_label_values(&[result]).inc();
    match state.repo.reserve(&needs, &req.call_id, hold_ms).await? {
        Reservation::Reserved(row) => {
            state.relay.notify();
            count("reserved");
            tracing::info!(agent_id = %row.agent.id, call_id = %req.call_id, "agent reserved");
            Ok(ApiJson(ReservedAgent::from(*row)).into_response())
        }
        Reservation::Held(row) => {
            tracing::info!(agent_id = %row.agent.id, call_id = %req.call_id, "reservation asked for again");
            Ok(ApiJson(ReservedAgent::from(*row)).into_response())
        }
        Reservation::NoneFree { lost_race } => {
            count(if lost_race { "lost_race" } else { "none" });
            let body = ErrorBody {
                code: NO_AGENT_AVAILABLE.to_owned(),
                message: "no matching agent is available".to_owned(),
                request_id: dialstack_common::http::current_request_id(),
            };
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Reservation::UnknownAgent => {
            count("none");
            Err(ApiError::not_found("agent"))
        }
    }
}
