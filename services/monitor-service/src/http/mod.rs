//! monitor-service routes: `/v1/stats` here, alerting in [`alerting`].

pub mod alerting;
pub mod wallboard;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, BearerSecurity, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;

/// Readers of statistics and alerts.
pub const READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Service];
/// Who manages rules and channels.
pub const ADMIN: &[Role] = &[Role::Admin];
/// Who reads rules.
pub const STAFF: &[Role] = &[Role::Admin, Role::Supervisor];
/// Who posts Alertmanager's webhook (its service account).
pub const WEBHOOK: &[Role] = &[Role::Admin, Role::Service];

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
    /// Failures: `failed` calls and calls `rejected` by the network (a
    /// 603 decline is not one). Busy, no answer, machine, abandoned and
    /// canceled calls are outcomes, not failures.
    pub failures: i64,
    /// `failures / total` (0 when no calls).
    pub failure_rate: f64,
    /// Calls in progress now.
    pub active_calls: i64,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack monitor-service", version = "1"),
    paths(
        stats,
        alerting::list_rules,
        alerting::create_rule,
        alerting::get_rule,
        alerting::patch_rule,
        alerting::delete_rule,
        alerting::list_alerts,
        alerting::webhook,
        alerting::list_silences,
        alerting::create_silence,
        alerting::delete_silence,
        alerting::list_channels,
        alerting::create_channel,
        alerting::delete_channel,
        alerting::test_channel,
        wallboard::wallboard,
    ),
    components(schemas(Stats, ErrorBody, alerting::RuleView, alerting::NewSilence,
        crate::db::alerting::AlertRow, crate::db::alerting::SilenceRow,
        crate::db::notify::ChannelRow, crate::domain::silence::Matcher,
        wallboard::Snapshot, wallboard::CampaignBoard, wallboard::FiringAlert,
        wallboard::AgentsBoard, wallboard::TeamAgents)),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "GET",
        path: "/v1/stats",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/wallboard",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/alert-rules",
        roles: STAFF,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/alert-rules",
        roles: ADMIN,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/alert-rules/{id}",
        roles: STAFF,
    },
    RouteRoles {
        method: "PATCH",
        path: "/v1/alert-rules/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/alert-rules/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/alerts",
        roles: READ,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/alerts/webhook",
        roles: WEBHOOK,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/silences",
        roles: STAFF,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/silences",
        roles: STAFF,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/silences/{id}",
        roles: STAFF,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/alert-channels",
        roles: ADMIN,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/alert-channels",
        roles: ADMIN,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/alert-channels/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/alert-channels/{id}/test",
        roles: ADMIN,
    },
];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes.
pub fn router(state: AppState, keys: Keys, alertmanager_token: Option<Arc<String>>) -> Router {
    let api = Router::new()
        .route("/v1/stats", get(stats).route_layer(roles(READ)))
        .route(
            "/v1/wallboard",
            get(wallboard::wallboard).route_layer(roles(READ)),
        )
        .route(
            "/v1/alert-rules",
            get(alerting::list_rules)
                .route_layer(roles(STAFF))
                .merge(post(alerting::create_rule).route_layer(roles(ADMIN))),
        )
        .route(
            "/v1/alert-rules/{id}",
            get(alerting::get_rule).route_layer(roles(STAFF)).merge(
                axum::routing::patch(alerting::patch_rule)
                    .delete(alerting::delete_rule)
                    .route_layer(roles(ADMIN)),
            ),
        )
        .route(
            "/v1/alerts",
            get(alerting::list_alerts).route_layer(roles(READ)),
        )
        .route(
            "/v1/silences",
            get(alerting::list_silences)
                .post(alerting::create_silence)
                .route_layer(roles(STAFF)),
        )
        .route(
            "/v1/silences/{id}",
            axum::routing::delete(alerting::delete_silence).route_layer(roles(STAFF)),
        )
        .route(
            "/v1/alert-channels",
            get(alerting::list_channels)
                .post(alerting::create_channel)
                .route_layer(roles(ADMIN)),
        )
        .route(
            "/v1/alert-channels/{id}",
            axum::routing::delete(alerting::delete_channel).route_layer(roles(ADMIN)),
        )
        .route(
            "/v1/alert-channels/{id}/test",
            post(alerting::test_channel).route_layer(roles(ADMIN)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            require_auth,
        ));
    // Alertmanager cannot refresh a 15-minute token: its route also takes
    // the static bearer of DIALSTACK_ALERTMANAGER_TOKEN.
    let webhook = Router::new()
        .route(
            "/v1/alerts/webhook",
            post(alerting::webhook).route_layer(roles(WEBHOOK)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (keys, alertmanager_token),
            webhook_auth,
        ));
    api.merge(webhook)
        .route("/wallboard", get(wallboard::page))
        .with_state(state)
}

/// Equal without an early exit (the token is a secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The webhook's authentication: Alertmanager's static bearer (as a service
/// principal), otherwise a token like any route's.
async fn webhook_auth(
    State((keys, token)): State<(Keys, Option<Arc<String>>)>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(expected), Some(given)) = (&token, bearer) {
        if same_secret(expected.as_bytes(), given.as_bytes()) {
            req.extensions_mut().insert(Principal {
                sub: "alertmanager".into(),
                role: Role::Service,
                teams: Vec::new(),
            });
            return next.run(req).await;
        }
    }
    require_auth(State(keys), req, next).await
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
    let mut counts = crate::domain::Counts::default();
    for c in state
        .repo
        .counts_since(since, p.campaign_id.as_deref(), teams)
        .await?
    {
        counts.add(&c.counts);
    }
    Ok(ApiJson(Stats {
        window_seconds: window,
        total: counts.total(),
        failures: counts.failures,
        failure_rate: counts.failure_rate(),
        by_outcome: counts.by_outcome,
        active_calls: state.repo.active_in(teams).await?,
    }))
}
