//! Lead routes: imports (a JSON array, or a CSV body streamed), listings
//! with attempt history, callbacks.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::campaigns::{refused, visible};
use super::{idempotency, page, sees_lead, CALLBACK, MANAGE, READ_LEADS};
use crate::db::leads::CallbackResult;
use crate::db::{Lead, LeadQuery};
use crate::domain::lead::LeadInput;
use crate::domain::state::LeadState;
use crate::workers::importer::{self, ImportError, ImportReport, ImportTarget};
use crate::AppState;

/// Most leads in one JSON import (CSV has no row limit).
pub const MAX_JSON_LEADS: usize = 10_000;

/// `GET /v1/leads` and `GET /v1/campaigns/{id}/leads` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LeadParams {
    /// Only this campaign (`/v1/leads`).
    pub campaign_id: Option<String>,
    /// Only this state.
    pub state: Option<String>,
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

/// `POST /v1/leads/{id}/callback` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    /// When to call back: RFC 3339 (`2026-11-28T15:00:00Z`) or ms since epoch.
    #[schema(value_type = String)]
    pub at: serde_json::Value,
    /// The agent the callback is for.
    #[serde(default)]
    pub agent_id: Option<String>,
}

fn parse_at(v: &serde_json::Value) -> Result<i64, ApiError> {
    let ms = match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid("at", "must be RFC 3339 or ms since the epoch"))?;
    let now = dialstack_common::now_ms();
    if !(now - 60_000..=now + 366 * 86_400_000).contains(&ms) {
        return Err(ApiError::invalid(
            "at",
            "must be between now and a year ahead",
        ));
    }
    Ok(ms.max(now))
}

/// Adds leads to a campaign: `application/json` (an array of leads, at most
/// 10,000) or `text/csv` (streamed, any size; columns `phone` (required),
/// `timezone`, `priority`, `external_id`, `first_name`, `last_name`,
/// `agent_id`; any other column is a custom profile field). Every row is
/// checked (number, time zone, priority, destination guard, DNC); the
/// report lists each rejected row. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/campaigns/{id}/leads", security(("bearer" = [])),
    request_body(content = Vec<LeadInput>, description = "JSON array, or text/csv with a header row"),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response for 24 h")),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn import_leads(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    who.require(MANAGE)?;
    let c = visible(&state, &who, &id).await?;
    if !c.state().accepts_leads() {
        return Err(refused("add leads to", c.state()));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let target = ImportTarget {
        campaign_id: id.clone(),
        default_region: c.default_region.clone(),
        guard: state.guard.clone(),
    };
    let route = format!("POST /v1/campaigns/{id}/leads");
    match content_type.as_str() {
        "text/csv" => {
            // The body is streamed, so it is not hashed: the key alone
            // identifies the upload.
            let fingerprint = format!(
                "csv {}",
                headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            );
            let body = req.into_body();
            idempotency::once(
                &state.repo,
                &who,
                &headers,
                &route,
                fingerprint.as_bytes(),
                || async {
                    let report = importer::import_csv(&state.repo, &target, body, crate::NAME)
                        .await
                        .map_err(import_error)?;
                    finish(&state, &id, &who, report)
                },
            )
            .await
        }
        "application/json" => {
            let bytes = axum::body::to_bytes(req.into_body(), 16 << 20)
                .await
                .map_err(|e| ApiError::invalid("body", format!("cannot read the body: {e}")))?;
            let leads: Vec<LeadInput> = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
            if leads.len() > MAX_JSON_LEADS {
                return Err(ApiError::invalid(
                    "body",
                    format!("at most {MAX_JSON_LEADS} leads per JSON import; send larger lists as text/csv"),
                ));
            }
            idempotency::once(&state.repo, &who, &headers, &route, &bytes, || async {
                let report = importer::import_json(&state.repo, &target, leads, crate::NAME)
                    .await
                    .map_err(import_error)?;
                finish(&state, &id, &who, report)
            })
            .await
        }
        _ => Err(ApiError::invalid(
            "Content-Type",
            "must be text/csv or application/json",
        )),
    }
}

fn import_error(e: ImportError) -> ApiError {
    match e {
        ImportError::Header(h) => ApiError::invalid("header", h),
        ImportError::Db(e) => e.into(),
    }
}

fn finish(
    state: &AppState,
    id: &str,
    who: &Principal,
    report: ImportReport,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    state.relay.notify();
    state.dispatcher_wake.notify_one();
    tracing::info!(campaign_id = %id, by = %who.sub, rows = report.rows, accepted = report.accepted,
        duplicates = report.duplicates, rejected = report.rejected, "leads imported");
    Ok((
        StatusCode::OK,
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

fn lead_state(s: &Option<String>) -> Result<Option<LeadState>, ApiError> {
    s.as_deref()
        .map(|s| {
            LeadState::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "state",
                    "must be pending, dialing, done, canceled, dnc or blocked",
                )
            })
        })
        .transpose()
}

fn page_of(items: Vec<Lead>, limit: i64) -> LeadPage {
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|l| l.id.clone()))
        .flatten();
    LeadPage { items, next_cursor }
}

/// A campaign's leads with their schedules and attempts.
#[utoipa::path(get, path = "/v1/campaigns/{id}/leads", params(LeadParams), security(("bearer" = [])),
    responses((status = 200, body = LeadPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn campaign_leads(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<LeadParams>,
) -> Result<ApiJson<LeadPage>, ApiError> {
    who.require(MANAGE)?;
    visible(&state, &who, &id).await?;
    let limit = page(p.limit, &p.cursor)?;
    let items = state
        .repo
        .leads(&LeadQuery {
            campaign_id: Some(id),
            state: lead_state(&p.state)?,
            after: p.cursor,
            limit,
            ..Default::default()
        })
        .await?;
    Ok(ApiJson(page_of(items, limit)))
}

/// Leads with their attempts: agents get the leads they own, supervisors
/// those of their teams' campaigns, admins and services all.
#[utoipa::path(get, path = "/v1/leads", params(LeadParams), security(("bearer" = [])),
    responses((status = 200, body = LeadPage), (status = 400, body = ErrorBody)))]
pub(super) async fn list_leads(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<LeadParams>,
) -> Result<ApiJson<LeadPage>, ApiError> {
    who.require(READ_LEADS)?;
    let limit = page(p.limit, &p.cursor)?;
    if p.campaign_id
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.len() > 64)
    {
        return Err(ApiError::invalid("campaign_id", "must be 1-64 characters"));
    }
    let items = state
        .repo
        .leads(&LeadQuery {
            campaign_id: p.campaign_id,
            state: lead_state(&p.state)?,
            agent_id: (who.role == Role::Agent).then(|| who.sub.clone()),
            teams: (who.role == Role::Supervisor).then(|| who.teams.clone()),
            after: p.cursor,
            limit,
        })
        .await?;
    Ok(ApiJson(page_of(items, limit)))
}

/// One lead with its schedule and attempt history; another agent's or
/// another team's lead is a 404, so lead ids cannot be probed.
#[utoipa::path(get, path = "/v1/leads/{id}", security(("bearer" = [])),
    responses((status = 200, body = Lead), (status = 404, body = ErrorBody)))]
pub(super) async fn get_lead(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Lead>, ApiError> {
    who.require(READ_LEADS)?;
    visible_lead(&state, &who, &id).await.map(ApiJson)
}

async fn visible_lead(state: &AppState, who: &Principal, id: &str) -> Result<Lead, ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::not_found("lead"));
    }
    state
        .repo
        .lead(id)
        .await?
        .filter(|l| sees_lead(who, l))
        .ok_or_else(|| ApiError::not_found("lead"))
}

/// Books a callback: the lead is dialed at `at`, ahead of other leads,
/// optionally for one agent. A finished lead is reopened; a lead on a call,
/// canceled, on DNC or blocked, or of a campaign that no longer dials, is
/// refused (409). Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/leads/{id}/callback", request_body = CallbackRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response for 24 h")),
    responses((status = 200, body = Lead), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn book_callback(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.require(CALLBACK)?;
    let req: CallbackRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    visible_lead(&state, &who, &id).await?;
    let at = parse_at(&req.at)?;
    let agent = match req.agent_id.as_deref() {
        None => None,
        Some(a) if crate::domain::name_ok(a) => Some(a.to_owned()),
        Some(_) => {
            return Err(ApiError::invalid(
                "agent_id",
                "must be 1-64 of [A-Za-z0-9._-]",
            ))
        }
    };
    // An agent books callbacks for itself only.
    let agent = if who.role == Role::Agent {
        if agent.as_deref().is_some_and(|a| a != who.sub) {
            return Err(ApiError::invalid(
                "agent_id",
                "an agent books callbacks for itself",
            ));
        }
        Some(who.sub.clone())
    } else {
        agent
    };
    let route = format!("POST /v1/leads/{id}/callback");
    idempotency::once(&state.repo, &who, &headers, &route, &body, || async {
        match state.repo.book_callback(&id, at, agent.as_deref()).await? {
            CallbackResult::Done(l) => {
                state.dispatcher_wake.notify_one();
                tracing::info!(lead_id = %id, at, by = %who.sub, "callback booked");
                Ok((
                    StatusCode::OK,
                    serde_json::to_value(*l).map_err(ApiError::internal)?,
                ))
            }
            CallbackResult::Refused(s) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("lead is {s} (or its campaign no longer dials): no callback"),
            )),
            CallbackResult::Missing => Err(ApiError::not_found("lead")),
        }
    })
    .await
}

/// Cancels a booked callback.
#[utoipa::path(delete, path = "/v1/leads/{id}/callback", security(("bearer" = [])),
    responses((status = 200, body = Lead), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn cancel_callback(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Lead>, ApiError> {
    who.require(CALLBACK)?;
    visible_lead(&state, &who, &id).await?;
    match state.repo.cancel_callback(&id).await? {
        CallbackResult::Done(l) => Ok(ApiJson(*l)),
        CallbackResult::Refused(s) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("lead is {s} with no callback booked"),
        )),
        CallbackResult::Missing => Err(ApiError::not_found("lead")),
    }
}
