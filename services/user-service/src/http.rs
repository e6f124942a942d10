//! user-service routes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use dialstack_common::auth::{new_claims, require_auth, Jwks, Keys, Principal, Role, StaticKeys};
use dialstack_common::http::{ApiError, ApiJson, BearerSecurity, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// `POST /v1/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A new access token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
}

/// The caller, as `GET /v1/users/me` shows them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// User id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack user-service", version = "1"),
    paths(login, jwks, me),
    components(schemas(LoginRequest, TokenResponse, Me, ErrorBody, Jwks)),
    modifiers(&BearerSecurity)
)]
struct Doc;

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The routes: login and JWKS are public, the rest need a token.
pub fn router(state: AppState, keys: Arc<StaticKeys>) -> Router {
    let keys: Keys = keys;
    let protected = Router::new()
        .route("/v1/users/me", get(me))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth));
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(protected)
        .with_state(state)
}

/// Exchanges a username and password for an access token.
#[utoipa::path(post, path = "/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    if req.username.is_empty() || req.username.len() > 64 || req.password.len() > 1024 {
        return Err(ApiError::invalid("username", "must be 1-64 characters"));
    }
    let user = state.repo.user_by_name(&req.username).await?;
    let ok = crate::domain::verify_password(
        &req.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(username = %req.username, "login failed");
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid username or password",
        ));
    };
    tracing::info!(user_id = %user.id, role = user.role.as_str(), "login succeeded");
    let token = state
        .signer
        .sign(&new_claims(&user.id, user.role, ACCESS_TTL));
    Ok(ApiJson(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ACCESS_TTL.as_secs(),
    }))
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", responses((status = 200, body = Jwks)))]
async fn jwks(State(state): State<AppState>) -> ApiJson<Jwks> {
    ApiJson(state.jwks.as_ref().clone())
}

/// The caller's own account.
#[utoipa::path(get, path = "/v1/users/me", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, who: Principal) -> Result<ApiJson<Me>, ApiError> {
    let user = state
        .repo
        .user_by_id(&who.sub)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(ApiJson(Me {
        id: user.id,
        username: user.username,
        role: user.role,
    }))
}
