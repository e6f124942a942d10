//! task-scheduler routes. Every route needs a token; each declares its roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::ApiQuery;
use dialstack_common::http::{ApiError, ApiJson, BearerSecurity, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::db::{Campaign, Claim, HangupRequest, Lead, LeadAttempt, LeadQuery, Progress};
use crate::domain::{ContactInput, NewCampaignRequest};
use crate::AppState;

const MANAGE: &[Role] = &[Role::Admin, Role::Supervisor];
const CLAIM: &[Role] = &[Role::Service, Role::Admin];
const READ_LEADS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];

/// Largest page of leads.
pub const MAX_LEADS: i64 = 500;

/// `GET /v1/leads` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LeadParams {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Page size (1-500, default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of leads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeadPage {
    /// The leads.
    pub items: Vec<Lead>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Whether `who` may see a campaign of `team`: admins and services all,
/// supervisors those of the teams they lead. Others' are 404s.
fn sees_campaign(who: &Principal, team: Option<&String>) -> bool {
    who.sees_all() || team.is_some_and(|t| who.leads_any(&[t]))
}

/// Whether `who` may read a lead: as for its campaign, and agents the leads
/// they own.
fn sees_lead(who: &Principal, lead: &Lead) -> bool {
    match who.role {
        Role::Agent => lead.agent_id.as_deref() == Some(who.sub.as_str()),
        _ => sees_campaign(who, lead.team.as_ref()),
    }
}

/// A campaign with its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    /// The campaign.
    #[serde(flatten)]
    pub campaign: Campaign,
    /// Its attempts.
    pub progress: Progress,
}

/// `POST /v1/attempts/{id}/claim` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClaimRequest {
    /// Who claims (media-processor instance id).
    pub claimer: String,
    /// Lease length (ms, 1000-300000, default 30000).
    #[serde(default)]
    pub lease_ms: Option<i64>,
}

/// `POST /v1/attempts/heartbeat` body: the attempts whose calls still live.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Who holds them (the claimer of each claim).
    pub claimer: String,
    /// The attempts (at most 2000).
    pub attempt_ids: Vec<String>,
    /// New lease length from now (ms, 1000-300000, default 30000).
    #[serde(default)]
    pub lease_ms: Option<i64>,
}

/// How many leases a heartbeat extended.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// Leases extended; attempts not counted were resolved or are held by another claimer.
    pub renewed: u64,
}

/// A granted claim.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// The attempt.
    pub attempt_id: String,
    /// Lease end (ms since epoch).
    pub lease_until: i64,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack task-scheduler", version = "1"),
    paths(create_campaign, start_campaign, get_campaign, claim_attempt, heartbeat, hangup_call, list_leads, get_lead),
    components(schemas(HangupAccepted, NewCampaignRequest, ContactInput, Campaign, Progress, ClaimRequest, ClaimResponse, HeartbeatRequest, HeartbeatResponse,
        Lead, LeadAttempt, LeadPage, ErrorBody)),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "POST",
        path: "/v1/campaigns",
        roles: MANAGE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/campaigns/{id}",
        roles: MANAGE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/campaigns/{id}/start",
        roles: MANAGE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/attempts/{id}/claim",
        roles: CLAIM,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/calls/{call_id}/hangup",
        roles: MANAGE,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/attempts/heartbeat",
        roles: CLAIM,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/leads",
        roles: READ_LEADS,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/leads/{id}",
        roles: READ_LEADS,
    },
];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes behind the auth layer.
pub fn router(state: AppState, keys: Keys) -> Router {
    Router::new()
        .route(
            "/v1/campaigns",
            post(create_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}",
            get(get_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/start",
            post(start_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/attempts/{id}/claim",
            post(claim_attempt).route_layer(roles(CLAIM)),
        )
        .route(
            "/v1/calls/{call_id}/hangup",
            post(hangup_call).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/attempts/heartbeat",
            post(heartbeat).route_layer(roles(CLAIM)),
        )
        .route("/v1/leads", get(list_leads).route_layer(roles(READ_LEADS)))
        .route(
            "/v1/leads/{id}",
            get(get_lead).route_layer(roles(READ_LEADS)),
        )
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
        .with_state(state)
}

/// Creates a draft campaign from a list of contacts.
#[utoipa::path(post, path = "/v1/campaigns", request_body = NewCampaignRequest, security(("bearer" = [])),
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_campaign(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(req): ApiJson<NewCampaignRequest>,
) -> Result<(StatusCode, ApiJson<CampaignView>), ApiError> {
    who.require(MANAGE)?;
    let new = req
        .validate()
        .map_err(|e| ApiError::invalid(&e.field, e.reason))?;
    if who.role == Role::Supervisor && !new.team.as_ref().is_some_and(|t| who.leads_any(&[t])) {
        return Err(ApiError::invalid(
            "team",
            "a supervisor's campaign must belong to a team they lead",
        ));
    }
    let campaign = state.repo.create_campaign(&new).await?;
    let progress = state.repo.progress(&campaign.id).await?;
    tracing::info!(campaign_id = %campaign.id, contacts = new.contacts.len(), "campaign created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CampaignView { campaign, progress }),
    ))
}

/// A campaign and its counts by state and outcome.
#[utoipa::path(get, path = "/v1/campaigns/{id}", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody)))]
async fn get_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    who.require(MANAGE)?;
    let campaign = state
        .repo
        .campaign(&id)
        .await?
        .filter(|c| sees_campaign(&who, c.team.as_ref()))
        .ok_or_else(|| ApiError::not_found("campaign"))?;
    let progress = state.repo.progress(&id).await?;
    Ok(ApiJson(CampaignView { campaign, progress }))
}

/// Starts a draft campaign: its attempts are created and dialing begins.
#[utoipa::path(post, path = "/v1/campaigns/{id}/start", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    who.require(MANAGE)?;
    let campaign = state
        .repo
        .campaign(&id)
        .await?
        .filter(|c| sees_campaign(&who, c.team.as_ref()))
        .ok_or_else(|| ApiError::not_found("campaign"))?;
    if !state.repo.start_campaign(&id, crate::NAME).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "campaign is {}, only a draft can be started",
                campaign.state
            ),
        ));
    }
    state.relay.notify();
    state.dispatcher_wake.notify_one();
    tracing::info!(campaign_id = %id, "campaign started");
    let campaign = state.repo.campaign(&id).await?.unwrap_or(campaign);
    let progress = state.repo.progress(&id).await?;
    Ok(ApiJson(CampaignView { campaign, progress }))
}

/// Claims a queued attempt before dialing it (dial once).
#[utoipa::path(post, path = "/v1/attempts/{id}/claim", request_body = ClaimRequest, security(("bearer" = [])),
    responses((status = 200, body = ClaimResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn claim_attempt(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<ApiJson<ClaimResponse>, ApiError> {
    who.require(CLAIM)?;
    if req.claimer.is_empty() || req.claimer.len() > 128 {
        return Err(ApiError::invalid("claimer", "must be 1-128 characters"));
    }
    let lease_ms = req.lease_ms.unwrap_or(30_000);
    if !(1_000..=300_000).contains(&lease_ms) {
        return Err(ApiError::invalid("lease_ms", "must be 1000-300000"));
    }
    let until = dialstack_common::now_ms() + lease_ms;
    match state.repo.claim(&id, &req.claimer, until).await? {
        Claim::Granted(t) => Ok(ApiJson(ClaimResponse {
            attempt_id: t.attempt_id,
            lease_until: t.lease_until,
        })),
        Claim::Taken(s) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("attempt is {s}"),
        )),
        Claim::Unknown => Err(ApiError::not_found("attempt")),
    }
}

/// A hang-up on its way to the media tier.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HangupAccepted {
    /// The call.
    pub call_id: String,
    /// `hangup_requested`: the call ends with CANCEL (ringing) or BYE
    /// (answered) and its outcome arrives in `call.completed`.
    pub state: String,
}

/// Ends a live call: CANCEL while it rings, BYE once answered (supervisors:
/// calls of their teams' campaigns).
#[utoipa::path(post, path = "/v1/calls/{call_id}/hangup", security(("bearer" = [])),
    responses((status = 202, body = HangupAccepted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn hangup_call(
    State(state): State<AppState>,
    who: Principal,
    Path(call_id): Path<String>,
) -> Result<(StatusCode, ApiJson<HangupAccepted>), ApiError> {
    who.require(MANAGE)?;
    if call_id.is_empty() || call_id.len() > 36 {
        return Err(ApiError::invalid("call_id", "must be 1-36 characters"));
    }
    match state
        .repo
        .request_hangup(
            &call_id,
            &who.sub,
            |team| sees_campaign(&who, team),
            crate::NAME,
        )
        .await?
    {
        HangupRequest::Sent => {
            state.relay.notify();
            tracing::info!(%call_id, by = %who.sub, "hang-up requested");
            Ok((
                StatusCode::ACCEPTED,
                ApiJson(HangupAccepted {
                    call_id,
                    state: "hangup_requested".into(),
                }),
            ))
        }
        HangupRequest::Over => Err(ApiError::new(ErrorCode::Conflict, "call already ended")),
        HangupRequest::NoSuchCall => Err(ApiError::not_found("call")),
    }
}

/// Extends the leases of attempts whose calls still live (one request per
/// media processor every few seconds). An attempt the reaper already
/// resolved stays resolved.
#[utoipa::path(post, path = "/v1/attempts/heartbeat", request_body = HeartbeatRequest, security(("bearer" = [])),
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody)))]
async fn heartbeat(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<ApiJson<HeartbeatResponse>, ApiError> {
    who.require(CLAIM)?;
    if req.claimer.is_empty() || req.claimer.len() > 128 {
        return Err(ApiError::invalid("claimer", "must be 1-128 characters"));
    }
    if req.attempt_ids.len() > 2_000 {
        return Err(ApiError::invalid(
            "attempt_ids",
            "at most 2000 per heartbeat",
        ));
    }
    if req.attempt_ids.iter().any(|i| i.is_empty() || i.len() > 64) {
        return Err(ApiError::invalid(
            "attempt_ids",
            "ids must be 1-64 characters",
        ));
    }
    let lease_ms = req.lease_ms.unwrap_or(30_000);
    if !(1_000..=300_000).contains(&lease_ms) {
        return Err(ApiError::invalid("lease_ms", "must be 1000-300000"));
    }
    let until = dialstack_common::now_ms() + lease_ms;
    let mut renewed = 0;
    for chunk in req.attempt_ids.chunks(500) {
        renewed += state.repo.renew_leases(&req.claimer, chunk, until).await?;
    }
    Ok(ApiJson(HeartbeatResponse { renewed }))
}

/// Leads with their attempts: agents get the leads they own, supervisors
/// those of their teams' campaigns, admins and services all.
#[utoipa::path(get, path = "/v1/leads", params(LeadParams), security(("bearer" = [])),
    responses((status = 200, body = LeadPage), (status = 400, body = ErrorBody)))]
async fn list_leads(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<LeadParams>,
) -> Result<ApiJson<LeadPage>, ApiError> {
    who.require(READ_LEADS)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_LEADS).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1-{MAX_LEADS}")));
    }
    for (field, v) in [("campaign_id", &p.campaign_id), ("cursor", &p.cursor)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
            return Err(ApiError::invalid(field, "must be 1-64 characters"));
        }
    }
    let items = state
        .repo
        .leads(&LeadQuery {
            campaign_id: p.campaign_id,
            agent_id: (who.role == Role::Agent).then(|| who.sub.clone()),
            teams: (who.role == Role::Supervisor).then(|| who.teams.clone()),
            after: p.cursor,
            limit,
        })
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|l| l.id.clone()))
        .flatten();
    Ok(ApiJson(LeadPage { items, next_cursor }))
}

/// One lead with its attempts; another agent's or another team's lead is a
/// 404, so lead ids cannot be probed.
#[utoipa::path(get, path = "/v1/leads/{id}", security(("bearer" = [])),
    responses((status = 200, body = Lead), (status = 404, body = ErrorBody)))]
async fn get_lead(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Lead>, ApiError> {
    who.require(READ_LEADS)?;
    state
        .repo
        .lead(&id)
        .await?
        .filter(|l| sees_lead(&who, l))
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("lead"))
}
