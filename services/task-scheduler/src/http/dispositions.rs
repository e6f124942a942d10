//! `POST /v1/calls/{call_id}/disposition`: the agent of a call says what
//! came of it, once the call is over; then their wrap-up ends (user-service).
//!
//! Who may set it: the agent the call was bridged to; a supervisor of the
//! campaign's team or an admin for them. Anyone else gets a 404, so call ids
//! cannot be probed. `callback_at` is an RFC 3339 time with its offset
//! (`2026-11-28T15:00:00Z`, `2026-11-28T10:00:00-05:00`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::sees_call;
use crate::db::dispositions::{Disposition, DispositionTarget, NewDisposition, Recorded};
use crate::domain::disposition::{Effect, MAX_NOTE_CHARS};
use crate::domain::state::AttemptState;
use crate::workers::dispatcher::ZoneCache;
use crate::AppState;

/// Who may set a disposition.
pub(super) const DISPOSE: &[Role] = &[Role::Agent, Role::Supervisor, Role::Admin];

/// Furthest ahead a callback may be booked (as `POST /v1/leads/{id}/callback`).
const MAX_CALLBACK_AHEAD_MS: i64 = 366 * 86_400_000;

/// `POST /v1/calls/{call_id}/disposition` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispositionRequest {
    /// One of the campaign's codes (`dispositions`).
    pub code: String,
    /// Free text (at most 1,000 characters).
    #[serde(default)]
    pub note: Option<String>,
    /// Required with `CALLBACK`, refused with any other code: when to call
    /// back, RFC 3339 with an offset (`2026-11-28T15:00:00Z`). In the
    /// future, within a year, inside the campaign's calling hours in the
    /// callee's time, and only if the lead has an attempt left.
    #[serde(default)]
    pub callback_at: Option<String>,
}

/// Whether the agent's wrap-up was ended in user-service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WrapUpEnd {
    /// user-service took the agent to `available`.
    Ended,
    /// `DIALSTACK_USER_SERVICE_URL` is not set: the wrap-up timeout ends it.
    Skipped,
    /// user-service refused or could not be reached (logged); the wrap-up
    /// timeout ends it.
    Failed,
}

/// A disposition as stored, and what became of the agent's wrap-up.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DispositionView {
    /// The disposition.
    #[serde(flatten)]
    pub disposition: Disposition,
    /// The agent's wrap-up.
    pub wrap_up: WrapUpEnd,
}

/// Ends an agent's wrap-up in user-service
/// (`POST {DIALSTACK_USER_SERVICE_URL}/v1/agents/{id}/state`), with the
/// caller's own token and a 2 s timeout.
#[derive(Debug, Clone)]
pub struct WrapUpClient {
    http: reqwest::Client,
    base: String,
}

impl WrapUpClient {
    /// How long one call to user-service may take.
    pub const TIMEOUT: Duration = Duration::from_secs(2);

    /// A client of the user-service at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        Self::with_tls(base, &dialstack_common::tls::TlsConfig::system())
    }

    /// As [`Self::new`], trusting `tls`'s CA bundle for an `https://` base.
    pub fn with_tls(base: &str, tls: &dialstack_common::tls::TlsConfig) -> Self {
        Self {
            http: tls
                .http_client()
                .timeout(Self::TIMEOUT)
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Moves `agent_id` from `wrap_up` (of `call_id`) to `available`.
    pub async fn end(&self, agent_id: &str, call_id: &str, bearer: &str) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("{}/v1/agents/{agent_id}/state", self.base))
            .bearer_auth(bearer)
            .json(&serde_json::json!({
                "state": "available",
                "reason": "disposition",
                "call_id": call_id,
            }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(format!(
            "{status}: {}",
            body.chars().take(300).collect::<String>()
        ))
    }
}

/// The body, field by field, so that a malformed one is a 400 naming its
/// field.
fn parse_body(body: &[u8]) -> Result<(String, Option<String>, Option<String>), ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["code", "note", "callback_at"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let code = match obj.get("code") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::invalid("code", "must be a string")),
        None => return Err(ApiError::invalid("code", "is required")),
    };
    let text = |field: &str| match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    };
    let note = text("note")?;
    if let Some(n) = &note {
        if n.chars().count() > MAX_NOTE_CHARS {
            return Err(ApiError::invalid(
                "note",
                format!("at most {MAX_NOTE_CHARS} characters"),
            ));
        }
    }
    let note = note.filter(|n| !n.trim().is_empty());
    Ok((code, note, text("callback_at")?))
}

/// Checks `callback_at` against the code and the campaign's rules; the
/// time in ms.
fn callback_time(
    t: &DispositionTarget,
    code: &str,
    raw: Option<&str>,
    now: i64,
) -> Result<Option<i64>, ApiError> {
    let wanted = Effect::of(code) == Effect::Callback;
    let Some(raw) = raw else {
        return if wanted {
            Err(ApiError::invalid(
                "callback_at",
                "is required with CALLBACK",
            ))
        } else {
            Ok(None)
        };
    };
    if !wanted {
        return Err(ApiError::invalid("callback_at", "only goes with CALLBACK"));
    }
    let at = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|_| {
            ApiError::invalid(
                "callback_at",
                "must be RFC 3339 with an offset, e.g. 2026-11-28T15:00:00Z",
            )
        })?
        .timestamp_millis();
    if at <= now {
        return Err(ApiError::invalid("callback_at", "must be in the future"));
    }
    if at > now + MAX_CALLBACK_AHEAD_MS {
        return Err(ApiError::invalid("callback_at", "must be within a year"));
    }
    if t.max_attempts.is_some_and(|m| t.lead_attempts >= m) {
        return Err(ApiError::invalid(
            "callback_at",
            "the lead has no attempt left under the campaign's max_attempts",
        ));
    }
    let mut zones = ZoneCache::default();
    let zones = zones.get(&t.zones);
    if !t.calling_hours.open_in_all(zones, at) {
        let next = t
            .calling_hours
            .next_open(zones, at)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|d| format!(" (next opening {})", d.to_rfc3339()))
            .unwrap_or_default();
        return Err(ApiError::invalid(
            "callback_at",
            format!("is outside the campaign's calling hours in the callee's time{next}"),
        ));
    }
    Ok(Some(at))
}

/// A 409 carrying the disposition the call already has.
fn already(existing: &Disposition) -> Response {
    (
        StatusCode::CONFLICT,
        Json(serde_json::json!({
            "code": ErrorCode::Conflict.as_str(),
            "message": format!("call already has disposition {}", existing.code),
            "request_id": dialstack_common::http::current_request_id(),
            "disposition": existing,
        })),
    )
        .into_response()
}

/// Sets the disposition of a call once it is over: by the agent the call
/// was bridged to, or a supervisor of the campaign's team or an admin for
/// them (anyone else: 404). Once per call: a second one is a 409 whose body
/// carries `disposition`, the one stored. In one transaction: stored on the
/// attempt and the lead; `CALLBACK` books a callback for the agent at
/// `callback_at`; `DNC` puts the number on the global do-not-call list;
/// `SALE`, `NO_INTEREST` and `WRONG_NUMBER` end the lead; `call.disposition`
/// is published. Then the agent's wrap-up is ended in user-service with the
/// caller's token (`wrap_up` says how that went; a failure does not undo
/// the disposition: the wrap-up timeout still ends it).
#[utoipa::path(post, path = "/v1/calls/{call_id}/disposition", request_body = DispositionRequest, security(("bearer" = [])),
    responses((status = 201, body = DispositionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "already set (the body's `disposition` is the stored one), the call is not over, or the callback cannot be booked", body = ErrorBody)))]
pub(super) async fn set_disposition(
    State(state): State<AppState>,
    who: Principal,
    Path(call_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.require(DISPOSE)?;
    let (code, note, callback_at) = parse_body(&body)?;
    if !crate::domain::name_ok(&call_id) {
        return Err(ApiError::not_found("call"));
    }
    let t = state
        .repo
        .disposition_target(&call_id)
        .await?
        .filter(|t| sees_call(&who, t.team.as_ref(), t.agent_id.as_deref()))
        .ok_or_else(|| ApiError::not_found("call"))?;
    if let Some(e) = &t.existing {
        return Ok(already(e));
    }
    let Some(agent_id) = t.agent_id.clone() else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "no agent was on this call: nothing to disposition",
        ));
    };
    if t.attempt_state != AttemptState::Completed {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the call is not over yet: set its disposition in wrap-up",
        ));
    }
    if !t.dispositions.contains(&code) {
        return Err(ApiError::invalid(
            "code",
            format!(
                "must be one of the campaign's: {}",
                t.dispositions.join(", ")
            ),
        ));
    }
    let now = dialstack_common::now_ms();
    let callback_at = callback_time(&t, &code, callback_at.as_deref(), now)?;
    let new = NewDisposition {
        code,
        note,
        callback_at,
        set_by: who.sub.clone(),
    };
    let d = match state.repo.record_disposition(&t, &new, crate::NAME).await? {
        Recorded::Done(d) => *d,
        Recorded::Exists(e) => return Ok(already(&e)),
        Recorded::InProgress => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the call is not over yet: set its disposition in wrap-up",
            ))
        }
        Recorded::CallbackRefused(s) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("lead is {s} (or its campaign no longer dials): no callback"),
            ))
        }
    };
    state.relay.notify();
    if callback_at.is_some() {
        state.dispatcher_wake.notify_one();
    }
    tracing::info!(%call_id, code = %d.code, agent_id = %agent_id, by = %who.sub, "disposition set");
    let wrap_up = end_wrap_up(&state, &headers, &agent_id, &call_id).await;
    Ok((
        StatusCode::CREATED,
        Json(DispositionView {
            disposition: d,
            wrap_up,
        }),
    )
        .into_response())
}

/// Ends the agent's wrap-up with the caller's token; never fails the
/// request.
async fn end_wrap_up(
    state: &AppState,
    headers: &HeaderMap,
    agent_id: &str,
    call_id: &str,
) -> WrapUpEnd {
    let Some(client) = &state.wrap_up else {
        tracing::debug!(%call_id, agent_id, "DIALSTACK_USER_SERVICE_URL not set: wrap-up not ended");
        return WrapUpEnd::Skipped;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or_default();
    match client.end(agent_id, call_id, bearer).await {
        Ok(()) => WrapUpEnd::Ended,
        Err(error) => {
            tracing::warn!(%call_id, agent_id, %error, "wrap-up not ended in user-service (its timeout will end it)");
            WrapUpEnd::Failed
        }
    }
}
