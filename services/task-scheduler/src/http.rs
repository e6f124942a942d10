//! task-scheduler routes. Every route needs a token; each declares its roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, BearerSecurity, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::db::{Campaign, Claim, Progress};
use crate::domain::NewCampaignRequest;
use crate::AppState;

const MANAGE: &[Role] = &[Role::Admin, Role::Supervisor];
const CLAIM: &[Role] = &[Role::Service, Role::Admin];

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
    paths(create_campaign, start_campaign, get_campaign, claim_attempt),
    components(schemas(NewCampaignRequest, Campaign, Progress, ClaimRequest, ClaimResponse, ErrorBody)),
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
