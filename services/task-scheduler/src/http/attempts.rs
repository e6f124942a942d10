//! Routes of the media tier and of live calls: claim an attempt, renew
//! leases, hang a call up.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiJson, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{sees_campaign, CLAIM, MANAGE};
use crate::db::{Claim, HangupRequest};
use crate::AppState;

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

/// How many leases a heartbeat extended, and which are still held.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// Leases extended; attempts not counted were resolved or are held by another claimer.
    pub renewed: u64,
    /// The attempts of the request the claimer still holds (claimed or
    /// dialing). An ended call's attempt missing here has been completed,
    /// so its media processor may stop renewing it; one still here has its
    /// `call.completed` not taken in yet (in a broker or a queue), and its
    /// lease must be kept, or the reaper would take the call for lost.
    #[serde(default)]
    pub held: Vec<String>,
}

/// A granted claim.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// The attempt.
    pub attempt_id: String,
    /// Lease end (ms since epoch).
    pub lease_until: i64,
}

/// Claims a queued attempt before dialing it (dial once).
#[utoipa::path(post, path = "/v1/attempts/{id}/claim", request_body = ClaimRequest, security(("bearer" = [])),
    responses((status = 200, body = ClaimResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn claim_attempt(
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
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::not_found("attempt"));
    }
    let claim = state
        .claims
        .submit((id, req.claimer.clone(), until))
        .await
        .map_err(|e| match e {
            dialstack_common::db::GroupCommitError::Sql(e) => ApiError::from(e),
            other => ApiError::internal(other),
        })?;
    match claim {
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
pub(super) async fn hangup_call(
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
pub(super) async fn heartbeat(
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
    let mut held = Vec::new();
    for chunk in req.attempt_ids.chunks(500) {
        renewed += state.repo.renew_leases(&req.claimer, chunk, until).await?;
        held.extend(state.repo.held_leases(&req.claimer, chunk).await?);
    }
    Ok(ApiJson(HeartbeatResponse { renewed, held }))
}
