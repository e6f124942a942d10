//! Routes of the media tier and of live calls: claim an attempt, renew
//! leases, hang a call up, transfer it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ApiJson, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{sees_call, sees_campaign, CLAIM, MANAGE};
use crate::db::{Claim, HangupRequest, TransferRequest};
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

/// Who may transfer a call: the agent on it, supervisors for their teams'
/// campaigns, admins.
pub(super) const TRANSFER: &[Role] = &[Role::Agent, Role::Supervisor, Role::Admin];

/// `POST /v1/calls/{call_id}/transfer` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequestBody {
    /// Where to hand the callee: a `sip:` or `sips:` URI on the agent's own
    /// PBX (the host of the agent's phone) or a host listed in
    /// media-processor's `DIALSTACK_TRANSFER_HOSTS`.
    pub target: String,
}

/// A transfer on its way to the media tier.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferAccepted {
    /// The call.
    pub call_id: String,
    /// The target.
    pub target: String,
    /// `transfer_requested`: the target is called; when it answers the
    /// callee is joined to it and the agent leg ends (the agent goes to
    /// `wrap_up`). The result is in the call's CDR (`agent.transfer`) and
    /// in `dialstack_agent_transfers_total`; a target outside the allowed
    /// hosts is refused there, and the agent stays on the call.
    pub state: String,
}

/// Hands the callee of a live call that is bridged to an agent on to
/// another destination (a blind transfer, as the agent's phone would ask
/// with REFER): by the agent on the call, a supervisor of the campaign's
/// team, or an admin (anyone else: 404, so call ids cannot be probed).
#[utoipa::path(post, path = "/v1/calls/{call_id}/transfer", request_body = TransferRequestBody, security(("bearer" = [])),
    responses((status = 202, body = TransferAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the call is over, or not connected to an agent", body = ErrorBody)))]
pub(super) async fn transfer_call(
    State(state): State<AppState>,
    who: Principal,
    Path(call_id): Path<String>,
    ApiJson(body): ApiJson<TransferRequestBody>,
) -> Result<(StatusCode, ApiJson<TransferAccepted>), ApiError> {
    who.require(TRANSFER)?;
    if !crate::domain::name_ok(&call_id) {
        return Err(ApiError::not_found("call"));
    }
    dialstack_contract::check_transfer_target(&body.target)
        .map_err(|e| ApiError::invalid("target", e.reason))?;
    let may = |team: Option<&String>, agent: Option<&String>| {
        sees_call(&who, team, agent.map(String::as_str))
    };
    match state
        .repo
        .request_transfer(&call_id, &body.target, &who.sub, may, crate::NAME)
        .await?
    {
        TransferRequest::Sent => {
            state.relay.notify();
            tracing::info!(%call_id, by = %who.sub, target = %body.target, "transfer requested");
            Ok((
                StatusCode::ACCEPTED,
                ApiJson(TransferAccepted {
                    call_id,
                    target: body.target,
                    state: "transfer_requested".into(),
                }),
            ))
        }
        TransferRequest::Over => Err(ApiError::new(ErrorCode::Conflict, "call already ended")),
        TransferRequest::NoAgent => Err(ApiError::new(
            ErrorCode::Conflict,
            "the call is not connected to an agent",
        )),
        TransferRequest::NoSuchCall => Err(ApiError::not_found("call")),
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
