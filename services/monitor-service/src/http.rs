//! monitor-service routes.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, BearerSecurity, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;

const READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Service];

/// `GET /v1/stats` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsParams {
    /// Window in seconds (10-86400, default 300).
    pub window_s: Option<i64>,
    /// Only this campaign.
    pub campaign_id: Option<String>,
}

/// Call statistics over a window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// The window.
    pub window_seconds: i64,
    /// Calls completed in the window.
    pub total: i64,
    /// By outcome.
    pub by_outcome: BTreeMap<String, i64>,
    /// Busy, rejected and failed calls.
    pub failures: i64,
    /// `failures / total` (0 when no calls).
    pub failure_rate: f64,
    /// Calls in progress now.
    pub active_calls: i64,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack monitor-service", version = "1"),
    paths(stats),
    components(schemas(Stats, ErrorBody)),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[RouteRoles {
    method: "GET",
    path: "/v1/stats",
    roles: READ,
}];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes.
pub fn router(state: AppState, keys: Keys) -> Router {
    Router::new()
        .route("/v1/stats", get(stats).route_layer(roles(READ)))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
        .with_state(state)
}

/// Totals and failure rate over the last `window_s` seconds (default 5 minutes).
#[utoipa::path(get, path = "/v1/stats", params(StatsParams), security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody)))]
async fn stats(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<StatsParams>,
) -> Result<ApiJson<Stats>, ApiError> {
    who.require(READ)?;
    let window = p.window_s.unwrap_or(300);
    if !(10..=86_400).contains(&window) {
        return Err(ApiError::invalid("window_s", "must be 10-86400"));
    }
    if p.campaign_id
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 64)
    {
        return Err(ApiError::invalid("campaign_id", "must be 1-64 characters"));
    }
    let since = dialstack_common::now_ms() - window * 1000;
    // Supervisors see the calls of their teams' campaigns only.
    let teams = (who.role == Role::Supervisor).then_some(who.teams.as_slice());
    let by_outcome = state
        .repo
        .outcomes_since(since, p.campaign_id.as_deref(), teams)
        .await?;
    let (total, failures, failure_rate) = crate::domain::failure_rate(&by_outcome);
    Ok(ApiJson(Stats {
        window_seconds: window,
        total,
        by_outcome,
        failures,
        failure_rate,
        active_calls: state.repo.active_in(teams).await?,
    }))
}
