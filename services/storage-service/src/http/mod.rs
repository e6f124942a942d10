//! storage-service routes.
//!
//! # Layout
//! - [`recording`]: `GET /v1/calls/{id}/recording`, with byte ranges

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, BearerSecurity, ErrorBody};
use dialstack_contract::Outcome;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::db::{Cdr, CdrQuery, RecordingLink};
use crate::AppState;

pub mod recording;

const READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 500;

/// `GET /v1/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only calls whose MOS is below this (1.0-5.0); calls without a
    /// quality measurement never match.
    #[param(value_type = Option<f64>, minimum = 1.0, maximum = 5.0)]
    pub mos_below: Option<String>,
}

/// A page of CDRs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CdrPage {
    /// The records.
    pub items: Vec<Cdr>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack storage-service", version = "1"),
    paths(list_calls, get_call, recording::get_recording),
    components(schemas(Cdr, CdrPage, RecordingLink, ErrorBody)),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "GET",
        path: "/v1/calls",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/calls/{id}",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/calls/{id}/recording",
        roles: READ,
    },
];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes.
pub fn router(state: AppState, keys: Keys) -> Router {
    Router::new()
        .route("/v1/calls", get(list_calls).route_layer(roles(READ)))
        .route("/v1/calls/{id}", get(get_call).route_layer(roles(READ)))
        .route(
            "/v1/calls/{id}/recording",
            get(recording::get_recording).route_layer(roles(READ)),
        )
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
        .with_state(state)
}

/// Call detail records, oldest first, filtered and paged.
#[utoipa::path(get, path = "/v1/calls", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = CdrPage), (status = 400, body = ErrorBody)))]
async fn list_calls(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<CdrPage>, ApiError> {
    who.require(READ)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1-{MAX_LIMIT}")));
    }
    if let Some(o) = &p.outcome {
        if Outcome::parse(o).is_none() {
            return Err(ApiError::invalid(
                "outcome",
                format!("{o:?} is not an outcome"),
            ));
        }
    }
    let mos_below = p.mos_below.as_deref().map(parse_mos).transpose()?;
    for (field, v) in [("campaign_id", &p.campaign_id), ("cursor", &p.cursor)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
            return Err(ApiError::invalid(field, "must be 1-64 characters"));
        }
    }
    let items = state
        .repo
        .list(&CdrQuery {
            campaign_id: p.campaign_id,
            outcome: p.outcome,
            after: p.cursor,
            limit,
            agent_id: (who.role == Role::Agent).then(|| who.sub.clone()),
            teams: (who.role == Role::Supervisor).then(|| who.teams.clone()),
            mos_below,
        })
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| c.call_id.clone()))
        .flatten();
    Ok(ApiJson(CdrPage { items, next_cursor }))
}

/// One call detail record.
#[utoipa::path(get, path = "/v1/calls/{id}", security(("bearer" = [])),
    responses((status = 200, body = Cdr), (status = 404, body = ErrorBody)))]
async fn get_call(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Cdr>, ApiError> {
    who.require(READ)?;
    state
        .repo
        .get(&id)
        .await?
        .filter(|c| may_read(&who, c))
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("call"))
}

/// `mos_below`: a number from 1.0 to 5.0 (the MOS scale).
fn parse_mos(raw: &str) -> Result<f64, ApiError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|m| (1.0..=5.0).contains(m))
        .ok_or_else(|| ApiError::invalid("mos_below", "must be a number from 1.0 to 5.0"))
}

/// Object level: admins and services read every call, supervisors the calls
/// of their teams, agents the calls bridged to them. Another's call is a 404
/// (not a 403), so call ids cannot be probed.
pub(crate) fn may_read(who: &Principal, cdr: &Cdr) -> bool {
    match who.role {
        Role::Admin | Role::Service => true,
        Role::Supervisor => cdr.team.as_ref().is_some_and(|t| who.leads_any(&[t])),
        Role::Agent => cdr.agent_id.as_deref() == Some(who.sub.as_str()),
    }
}
