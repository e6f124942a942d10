//! media-processor routes.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, BearerSecurity, ErrorBody};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

const VIEW: &[Role] = &[Role::Admin, Role::Supervisor, Role::Service];

/// What the media tier is doing now.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaStatus {
    /// Calls in progress on this instance.
    pub active_calls: usize,
    /// The SIP socket.
    pub sip_addr: String,
    /// The trunk calls go to.
    pub trunk: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack media-processor", version = "1"),
    paths(
        status,
        crate::prompts::create,
        crate::prompts::list,
        crate::prompts::get_one,
        crate::prompts::delete,
        crate::prompts::get_audio
    ),
    components(schemas(
        MediaStatus,
        ErrorBody,
        crate::prompts::Prompt,
        crate::prompts::NewTextPrompt
    )),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "GET",
        path: "/v1/media/status",
        roles: VIEW,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/prompts",
        roles: crate::prompts::WRITE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/prompts",
        roles: crate::prompts::READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/prompts/{id}",
        roles: crate::prompts::READ,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/prompts/{id}",
        roles: crate::prompts::WRITE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/prompts/{id}/audio",
        roles: crate::prompts::READ,
    },
];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes.
pub fn router(state: AppState, keys: Keys) -> Router {
    let prompts = crate::prompts::router(state.prompts.clone());
    Router::new()
        .route("/v1/media/status", get(status).route_layer(roles(VIEW)))
        .with_state(state)
        .merge(prompts)
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
}

/// Calls in progress on this instance and where they go.
#[utoipa::path(get, path = "/v1/media/status", security(("bearer" = [])),
    responses((status = 200, body = MediaStatus), (status = 401, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    who: Principal,
) -> Result<ApiJson<MediaStatus>, ApiError> {
    who.require(VIEW)?;
    Ok(ApiJson(MediaStatus {
        active_calls: state.live.len(),
        sip_addr: state
            .ctx
            .transport
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        trunk: state.ctx.trunk.to_string(),
    }))
}
