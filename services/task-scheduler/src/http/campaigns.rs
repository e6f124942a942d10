//! Campaign routes: create, list, read, patch, lifecycle, delete.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{idempotency, page, sees_campaign, MANAGE};
use crate::db::{Campaign, CampaignQuery, Progress, Transition};
use crate::domain::campaign::check_team;
use crate::domain::lead::ImportRules;
use crate::domain::state::{CampaignAction, CampaignState};
use crate::domain::{valid_name, CampaignPatch, NewCampaignRequest};
use crate::AppState;

/// A campaign with its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    /// The campaign.
    #[serde(flatten)]
    pub campaign: Campaign,
    /// Its leads and attempts.
    pub progress: Progress,
}

/// A page of campaigns.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignPage {
    /// The campaigns.
    pub items: Vec<Campaign>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/campaigns` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CampaignParams {
    /// Only this state.
    pub state: Option<String>,
    /// Only this team.
    pub team: Option<String>,
    /// Page size (1-500, default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A campaign `who` may see, or 404.
pub(super) async fn visible(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<Campaign, ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::not_found("campaign"));
    }
    state
        .repo
        .campaign(id)
        .await?
        .filter(|c| sees_campaign(who, c.team.as_ref()))
        .ok_or_else(|| ApiError::not_found("campaign"))
}

async fn view(state: &AppState, campaign: Campaign) -> Result<CampaignView, ApiError> {
    let progress = state.repo.progress(&campaign.id).await?;
    Ok(CampaignView { campaign, progress })
}

/// 409 naming the state a campaign is in.
pub(super) fn refused(what: &str, s: CampaignState) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("campaign is {s}: cannot {what} it"),
    )
}

/// Creates a draft campaign, optionally with inline contacts, an IVR flow
/// (errors name `ivr_flow` and the node at fault), machine detection and
/// transcription. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/campaigns", request_body = NewCampaignRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response for 24 h")),
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_campaign(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.require(MANAGE)?;
    let req: NewCampaignRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    idempotency::once(&state.repo, &who, &headers, "POST /v1/campaigns", &body, || async {
        let rules = ImportRules {
            guard: &state.guard,
            default_region: None,
        };
        let new = req
            .validate(&rules)
            .map_err(|e| ApiError::invalid(&e.field, e.reason))?;
        if who.role == Role::Supervisor && !new.team.as_ref().is_some_and(|t| who.leads_any(&[t]))
        {
            return Err(ApiError::invalid(
                "team",
                "a supervisor's campaign must belong to a team they lead",
            ));
        }
        let campaign = state.repo.create_campaign(&new).await?;
        tracing::info!(campaign_id = %campaign.id, contacts = new.contacts.len(), "campaign created");
        let v = view(&state, campaign).await?;
        Ok((
            StatusCode::CREATED,
            serde_json::to_value(v).map_err(ApiError::internal)?,
        ))
    })
    .await
}

/// Campaigns, filtered by state and team (supervisors: their teams').
#[utoipa::path(get, path = "/v1/campaigns", params(CampaignParams), security(("bearer" = [])),
    responses((status = 200, body = CampaignPage), (status = 400, body = ErrorBody)))]
pub(super) async fn list_campaigns(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<CampaignParams>,
) -> Result<ApiJson<CampaignPage>, ApiError> {
    who.require(MANAGE)?;
    let limit = page(p.limit, &p.cursor)?;
    let st = match p.state.as_deref() {
        None => None,
        Some(s) => Some(CampaignState::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                "must be draft, running, paused, stopped or completed",
            )
        })?),
    };
    if p.team
        .as_deref()
        .is_some_and(|t| !crate::domain::name_ok(t))
    {
        return Err(ApiError::invalid("team", "must be 1-64 of [A-Za-z0-9._-]"));
    }
    let items = state
        .repo
        .campaigns(&CampaignQuery {
            state: st,
            team: p.team,
            teams: (!who.sees_all()).then(|| who.teams.clone()),
            after: p.cursor,
            limit,
        })
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| c.id.clone()))
        .flatten();
    Ok(ApiJson(CampaignPage { items, next_cursor }))
}

/// A campaign and its counts by state and outcome.
#[utoipa::path(get, path = "/v1/campaigns/{id}", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    who.require(MANAGE)?;
    let c = visible(&state, &who, &id).await?;
    Ok(ApiJson(view(&state, c).await?))
}

/// Changes settings: pacing, dialing mode (every mode but `ivr` needs the
/// campaign to have a team), calling hours, retry policy, priority, caps,
/// recording, the IVR flow and machine detection (each replaced whole;
/// `null` removes it), transcription. Not once stopped or completed (409).
#[utoipa::path(patch, path = "/v1/campaigns/{id}", request_body = CampaignPatch, security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn patch_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<CampaignPatch>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    who.require(MANAGE)?;
    let c = visible(&state, &who, &id).await?;
    let name = patch
        .name
        .as_deref()
        .map(valid_name)
        .transpose()
        .map_err(|e| ApiError::invalid(&e.field, e.reason))?;
    let settings = c
        .settings()
        .patched(&patch)
        .map_err(|e| ApiError::invalid(&e.field, e.reason))?;
    check_team(&settings, c.team.as_deref()).map_err(|e| ApiError::invalid(&e.field, e.reason))?;
    match state
        .repo
        .update_settings(&id, name.as_deref(), &settings)
        .await?
    {
        Transition::Moved(c) => {
            state.dispatcher_wake.notify_one();
            tracing::info!(campaign_id = %id, by = %who.sub, "campaign settings changed");
            Ok(ApiJson(view(&state, *c).await?))
        }
        Transition::Refused(s) => Err(refused("change", s)),
        Transition::Missing => Err(ApiError::not_found("campaign")),
    }
}

/// Deletes a campaign with its leads and attempts; refused while it runs
/// or has calls in flight (409).
#[utoipa::path(delete, path = "/v1/campaigns/{id}", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require(MANAGE)?;
    visible(&state, &who, &id).await?;
    match state.repo.delete_campaign(&id).await? {
        Transition::Moved(_) => {
            tracing::info!(campaign_id = %id, by = %who.sub, "campaign deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Transition::Refused(s) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("campaign is {s}: stop it and let its calls end before deleting it"),
        )),
        Transition::Missing => Err(ApiError::not_found("campaign")),
    }
}

async fn lifecycle(
    state: AppState,
    who: Principal,
    id: String,
    action: CampaignAction,
) -> Result<ApiJson<CampaignView>, ApiError> {
    who.require(MANAGE)?;
    visible(&state, &who, &id).await?;
    match state.repo.transition(&id, action, crate::NAME).await? {
        Transition::Moved(c) => {
            state.relay.notify();
            state.dispatcher_wake.notify_one();
            tracing::info!(campaign_id = %id, by = %who.sub, action = action.as_str(), state = %c.state, "campaign moved");
            Ok(ApiJson(view(&state, *c).await?))
        }
        Transition::Refused(s) => Err(refused(action.as_str(), s)),
        Transition::Missing => Err(ApiError::not_found("campaign")),
    }
}

/// Starts a draft campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/start", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn start_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    lifecycle(state, who, id, CampaignAction::Start).await
}

/// Pauses a running campaign; calls in flight finish.
#[utoipa::path(post, path = "/v1/campaigns/{id}/pause", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn pause_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    lifecycle(state, who, id, CampaignAction::Pause).await
}

/// Resumes a paused campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/resume", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn resume_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    lifecycle(state, who, id, CampaignAction::Resume).await
}

/// Stops a campaign for good: pending leads are canceled, dial commands not
/// yet claimed are withdrawn, calls in flight finish.
#[utoipa::path(post, path = "/v1/campaigns/{id}/stop", security(("bearer" = [])),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn stop_campaign(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignView>, ApiError> {
    lifecycle(state, who, id, CampaignAction::Stop).await
}
