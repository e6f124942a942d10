//! user-service routes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use dialstack_common::auth::{
    new_claims, require_auth, roles, Jwks, Keys, Principal, Role, RouteRoles, StaticKeys, ANY_ROLE,
};

use dialstack_common::http::{ApiError, ApiJson, ApiQuery, BearerSecurity, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::db::{AuditEntry, RefreshUse};
use crate::extract::ClientIp;
use crate::hashing::{Busy, HashError, Lane};
use crate::throttle::{Admit, Credential};
use crate::AppState;

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token (each use replaces it).
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A new opaque refresh token and the hash that is stored.
fn new_refresh_token() -> (String, String) {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh(&token);
    (token, hash)
}

fn hash_refresh(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /v1/auth/refresh` and `/v1/auth/logout` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// `GET /v1/audit` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditParams {
    /// At most this many entries (1-1000, default 100).
    pub limit: Option<i64>,
}

fn with_retry_after(mut resp: axum::response::Response, secs: i64) -> axum::response::Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    resp
}

/// 429 with `Retry-After`: a throttling gate is closed.
fn too_many(retry_after_s: i64) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    with_retry_after(
        ApiError::new(ErrorCode::RateLimited, "too many attempts; try again later").into_response(),
        retry_after_s,
    )
}

/// 503 with `Retry-After`: the password hashing queue is full.
fn busy() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    with_retry_after(
        ApiError::new(
            ErrorCode::Unavailable,
            "too many logins at once; try again shortly",
        )
        .into_response(),
        1,
    )
}

impl From<Busy> for ApiError {
    fn from(_: Busy) -> Self {
        ApiError::new(
            ErrorCode::Unavailable,
            "too many password checks at once; try again shortly",
        )
    }
}

impl From<crate::db::KeyError> for ApiError {
    fn from(e: crate::db::KeyError) -> Self {
        ApiError::internal(e)
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy(b) => b.into(),
            failed @ HashError::Failed(_) => ApiError::internal(failed),
        }
    }
}

/// `POST /v1/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A new access token and the refresh token that replaces it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Opaque, single use: present it to `/v1/auth/refresh` for the next pair.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
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
    paths(login, client_token, refresh, logout, jwks, me, change_password, audit, rotate_keys,
        crate::users::create_user, crate::users::list_users, crate::users::get_user,
        crate::users::patch_user, crate::users::delete_user, crate::users::list_teams, crate::users::put_team,
        crate::agents::put_agent, crate::agents::get_agent,
        crate::agents::list_agents, crate::agents::change_state, crate::agents::heartbeat,
        crate::agents::reserve::reserve_agent),
    components(schemas(LoginRequest, ClientCredentials, AccessToken, RefreshRequest, TokenResponse, Me, ErrorBody, Jwks, dialstack_common::auth::Revoked, AuditEntry, Rotation, PasswordChange,
        crate::users::NewUser, crate::users::UserView, crate::users::UserPatch, crate::users::TeamSettings,
        crate::db::Team, crate::agents::AgentProfile,
        crate::agents::AgentView, crate::agents::StateRequest, crate::db::Agent, crate::db::AgentCall, crate::domain::AgentState,
        crate::agents::reserve::ReserveRequest, crate::agents::reserve::ReservedAgent)),
    modifiers(&BearerSecurity)
)]
struct Doc;

const ADMIN: &[Role] = &[Role::Admin];

/// Who may call each route (empty: public). The users', teams' and agents'
/// routes come from [`crate::users::ROUTES`] and [`crate::agents::ROUTES`].
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "POST",
        path: "/v1/auth/login",
        roles: &[],
    },
    RouteRoles {
        method: "POST",
        path: "/v1/auth/token",
        roles: &[],
    },
    RouteRoles {
        method: "POST",
        path: "/v1/auth/refresh",
        roles: &[],
    },
    RouteRoles {
        method: "POST",
        path: "/v1/auth/logout",
        roles: &[],
    },
    RouteRoles {
        method: "GET",
        path: "/.well-known/jwks.json",
        roles: &[],
    },
    RouteRoles {
        method: "GET",
        path: "/v1/users/me",
        roles: ANY_ROLE,
    },
    RouteRoles {
        method: "PUT",
        path: "/v1/users/me/password",
        roles: ANY_ROLE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/audit",
        roles: ADMIN,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/keys/rotate",
        roles: ADMIN,
    },
];

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The routes: login and JWKS are public, the rest need a token.
pub fn router(state: AppState, keys: Arc<StaticKeys>) -> Router {
    let keys: Keys = keys;
    let protected = Router::new()
        .merge(crate::agents::routes())
        .merge(crate::users::routes())
        .route("/v1/users/me", get(me).route_layer(roles(ANY_ROLE)))
        .route(
            "/v1/users/me/password",
            put(change_password).route_layer(roles(ANY_ROLE)),
        )
        .route("/v1/audit", get(audit).route_layer(roles(ADMIN)))
        .route(
            "/v1/keys/rotate",
            post(rotate_keys).route_layer(roles(ADMIN)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            still_current,
        ))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth));
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/token", post(client_token))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(protected)
        .with_state(state)
}

/// Refuses (401) a token whose user is gone, holds another role now, or
/// whose tokens were revoked after this one was issued (password change or
/// reset, teams changed): a demoted admin cannot use the token issued before
/// the change to undo it, nor can a stolen token outlive a password change.
/// The other services learn revocations from the JWKS within their refresh
/// interval; here the database is at hand, so it is immediate.
async fn still_current(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(who) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await;
    };
    let issued_at_ms = req
        .extensions()
        .get::<dialstack_common::auth::Claims>()
        .map(|c| c.issued_at_ms());
    match state.repo.token_standing(&who.sub).await {
        Ok(Some((role, revoked))) if role == who.role => {
            let void = match (revoked, issued_at_ms) {
                (Some(not_before), Some(at)) => at < not_before,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !void {
                return next.run(req).await;
            }
            tracing::info!(user_id = %who.sub, "revoked token refused");
            ApiError::new(
                ErrorCode::Unauthorized,
                "the token was revoked; log in again",
            )
            .into_response()
        }
        Ok(_) => {
            tracing::info!(user_id = %who.sub, "token of a deleted or changed user refused");
            ApiError::new(
                ErrorCode::Unauthorized,
                "the token no longer matches the user; log in again",
            )
            .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Exchanges a username and password for an access token and a refresh
/// token. Attempts are throttled per account and address pair (exponential
/// backoff), per address and, from addresses the account has not used
/// recently, per account (429 with `Retry-After`); a burst beyond what the
/// password hashing pool can queue gets 503 with `Retry-After`. Service
/// accounts cannot log in here: they use client credentials.
#[utoipa::path(post, path = "/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    if req.username.is_empty() || req.username.len() > 64 || req.password.len() > 1024 {
        return Err(ApiError::invalid("username", "must be 1-64 characters"));
    }
    let attempt = match crate::throttle::admit(
        &state.repo,
        &state.limits,
        &req.username,
        &ip,
        Credential::Password,
    )
    .await?
    {
        Admit::Go(a) => a,
        Admit::Refused { by, retry_after_s } => {
            state.refused.with_label_values(&[by.as_str()]).inc();
            tracing::info!(username = %req.username, %ip, gate = by.as_str(), "login throttled");
            return Ok(too_many(retry_after_s));
        }
    };
    let user = state.repo.user_by_name(&req.username).await?;
    let checked = state
        .hasher
        .verify(
            attempt.lane,
            &req.password,
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(Busy) => {
            attempt.unchecked(&state.repo).await?;
            state.refused.with_label_values(&["busy"]).inc();
            return Ok(busy());
        }
    };
    let Some(user) = user.filter(|u| ok && u.role != Role::Service) else {
        attempt.failed();
        tracing::info!(username = %req.username, %ip, "login failed");
        state
            .repo
            .audit("login_failed", &req.username, &ip, "")
            .await?;
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid username or password",
        ));
    };
    attempt.succeeded(&state.repo).await?;
    tracing::info!(user_id = %user.id, role = user.role.as_str(), "login succeeded");
    state
        .repo
        .audit("login_succeeded", &user.id, &ip, user.role.as_str())
        .await?;
    let family = uuid::Uuid::now_v7().to_string();
    let (refresh_token, hash) = new_refresh_token();
    state
        .repo
        .store_refresh(&hash, &family, &user.id, REFRESH_TTL.as_millis() as i64)
        .await?;
    Ok(issue(&state, &user, refresh_token).await?.into_response())
}

/// `POST /v1/auth/token` body: the OAuth 2.0 client-credentials grant of a
/// service account (JSON).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// Always `client_credentials`.
    pub grant_type: String,
    /// The service account's username.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
}

/// An access token without a refresh token (client credentials).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessToken {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
}

/// Issues an access token to a service account (client credentials): no
/// refresh token, since the service simply asks again. Only `service`
/// accounts may use it. Attempts are throttled per client id and address
/// pair and per address, never per account: a stranger's failures on the
/// service account do not refuse the service's own secret.
#[utoipa::path(post, path = "/v1/auth/token", request_body = ClientCredentials,
    responses((status = 200, body = AccessToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn client_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<ClientCredentials>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    if req.grant_type != "client_credentials" {
        return Err(ApiError::invalid(
            "grant_type",
            "must be client_credentials",
        ));
    }
    if req.client_id.is_empty() || req.client_id.len() > 64 || req.client_secret.len() > 1024 {
        return Err(ApiError::invalid("client_id", "must be 1-64 characters"));
    }
    let attempt = match crate::throttle::admit(
        &state.repo,
        &state.limits,
        &req.client_id,
        &ip,
        Credential::ClientSecret,
    )
    .await?
    {
        Admit::Go(a) => a,
        Admit::Refused { by, retry_after_s } => {
            state.refused.with_label_values(&[by.as_str()]).inc();
            tracing::info!(client_id = %req.client_id, %ip, gate = by.as_str(), "client credentials throttled");
            return Ok(too_many(retry_after_s));
        }
    };
    let user = state.repo.user_by_name(&req.client_id).await?;
    let checked = state
        .hasher
        .verify(
            attempt.lane,
            &req.client_secret,
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(Busy) => {
            attempt.unchecked(&state.repo).await?;
            state.refused.with_label_values(&["busy"]).inc();
            return Ok(busy());
        }
    };
    let Some(user) = user.filter(|u| ok && u.role == Role::Service) else {
        attempt.failed();
        tracing::info!(client_id = %req.client_id, %ip, "client credentials refused");
        state
            .repo
            .audit("client_credentials_failed", &req.client_id, &ip, "")
            .await?;
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid client credentials",
        ));
    };
    attempt.succeeded(&state.repo).await?;
    let claims = new_claims(&user.id, user.role, state.access_ttl);
    Ok(ApiJson(AccessToken {
        access_token: state.keyring.signer().sign(&claims),
        token_type: "Bearer".into(),
        expires_in: state.access_ttl.as_secs(),
    })
    .into_response())
}

/// An access token for `user` with `refresh_token` (already stored). The
/// token carries the teams that scope what the user sees in every service:
/// a supervisor's teams, or an agent's from its profile.
async fn issue(
    state: &AppState,
    user: &crate::db::User,
    refresh_token: String,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let mut claims = new_claims(&user.id, user.role, state.access_ttl);
    claims.teams = match user.role {
        Role::Supervisor => user.teams.clone(),
        Role::Agent => state
            .repo
            .agent(&user.id)
            .await?
            .map(|a| a.teams)
            .unwrap_or_default(),
        Role::Admin | Role::Service => Vec::new(),
    };
    Ok(ApiJson(TokenResponse {
        access_token: state.keyring.signer().sign(&claims),
        token_type: "Bearer".into(),
        expires_in: state.access_ttl.as_secs(),
        refresh_token,
        refresh_expires_in: REFRESH_TTL.as_secs(),
    }))
}

/// Trades a refresh token for a new pair. Each refresh token works once:
/// presenting a used one revokes its whole family (the session), since one of
/// the two presenters holds a stolen copy. Of two concurrent presentations
/// one wins and the other gets 401 and revokes the family, the winner's new
/// token included.
#[utoipa::path(post, path = "/v1/auth/refresh", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let refused = || ApiError::new(ErrorCode::Unauthorized, "invalid refresh token");
    if req.refresh_token.is_empty() || req.refresh_token.len() > 256 {
        return Err(refused());
    }
    let (next_token, next_hash) = new_refresh_token();
    match state
        .repo
        .rotate_refresh(
            &hash_refresh(&req.refresh_token),
            &next_hash,
            REFRESH_TTL.as_millis() as i64,
        )
        .await?
    {
        RefreshUse::Rotated { user_id, .. } => {
            let user = state.repo.user_by_id(&user_id).await?.ok_or_else(refused)?;
            issue(&state, &user, next_token).await
        }
        RefreshUse::Reused { family_id } => {
            tracing::warn!(%family_id, %ip, "refresh token reused, session revoked");
            state
                .repo
                .audit(
                    "token_family_revoked",
                    &family_id,
                    &ip,
                    "refresh token reused",
                )
                .await?;
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "refresh token reused; the session is revoked",
            ))
        }
        RefreshUse::Invalid => Err(refused()),
    }
}

/// Ends the session of a refresh token (its whole family).
#[utoipa::path(post, path = "/v1/auth/logout", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    if let Some(family) = state
        .repo
        .refresh_family(&hash_refresh(&req.refresh_token))
        .await?
    {
        state.repo.revoke_family(&family).await?;
        state.repo.audit("logout", &family, &ip, "").await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/users/me/password` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The password in use.
    pub current_password: String,
    /// The new one (policy: at least 12 characters, not a common password).
    pub new_password: String,
}

/// Changes the caller's own password; every session (refresh token) of the
/// caller ends.
#[utoipa::path(put, path = "/v1/users/me/password", request_body = PasswordChange, security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn change_password(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let user = state
        .repo
        .user_by_id(&who.sub)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if req.current_password.len() > 1024 {
        return Err(ApiError::invalid(
            "current_password",
            "is not the password in use",
        ));
    }
    // A stolen access token must not become a way to guess the password.
    let attempt = match crate::throttle::admit(
        &state.repo,
        &state.limits,
        &user.username,
        &ip,
        Credential::Password,
    )
    .await?
    {
        Admit::Go(a) => a,
        Admit::Refused { by, retry_after_s } => {
            state.refused.with_label_values(&[by.as_str()]).inc();
            return Ok(too_many(retry_after_s));
        }
    };
    let ok = match state
        .hasher
        .verify(
            Lane::Trusted,
            &req.current_password,
            Some(user.password_hash),
        )
        .await
    {
        Ok(ok) => ok,
        Err(Busy) => {
            attempt.unchecked(&state.repo).await?;
            return Ok(busy());
        }
    };
    if !ok {
        attempt.failed();
        return Err(ApiError::invalid(
            "current_password",
            "is not the password in use",
        ));
    }
    attempt.succeeded(&state.repo).await?;
    crate::domain::check_password(&req.new_password)
        .map_err(|e| ApiError::invalid("new_password", e))?;
    let hash = state.hasher.hash(Lane::Trusted, &req.new_password).await?;
    state.repo.set_password(&user.id, &hash).await?;
    state
        .repo
        .audit("password_changed", &user.id, &ip, "")
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A signing-key rotation that was scheduled.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rotation {
    /// The new key's id (already in the JWKS).
    pub kid: String,
    /// When it starts signing (ms since epoch).
    pub activates_at: i64,
}

/// Publishes a new signing key now; it signs after the publish delay and the
/// old one is retired once its last token has expired (admins only).
#[utoipa::path(post, path = "/v1/keys/rotate", security(("bearer" = [])),
    responses((status = 202, body = Rotation), (status = 403, body = ErrorBody)))]
async fn rotate_keys(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
) -> Result<(StatusCode, ApiJson<Rotation>), ApiError> {
    who.require(&[Role::Admin])?;
    let (kid, activates_at) = state.keyring.rotate(state.key_publish_delay).await?;
    tracing::info!(%kid, activates_at, "signing key rotation scheduled");
    state.repo.audit("key_rotated", &kid, &ip, &who.sub).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Rotation { kid, activates_at }),
    ))
}

/// Authentication events, newest first (admins only).
#[utoipa::path(get, path = "/v1/audit", params(AuditParams), security(("bearer" = [])),
    responses((status = 200, body = [AuditEntry]), (status = 403, body = ErrorBody)))]
async fn audit(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<ApiJson<Vec<AuditEntry>>, ApiError> {
    who.require(&[Role::Admin])?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1-1000"));
    }
    Ok(ApiJson(state.repo.audit_list(limit).await?))
}

/// The public keys that verify access tokens, and the users whose earlier
/// tokens are void (`dialstack_revoked`).
#[utoipa::path(get, path = "/.well-known/jwks.json", responses((status = 200, body = Jwks)))]
async fn jwks(State(state): State<AppState>) -> Result<ApiJson<Jwks>, ApiError> {
    let mut jwks = state.keyring.jwks();
    // Only as long as a token issued before the revocation could be valid.
    let window_ms =
        (state.access_ttl.as_secs() as i64 + dialstack_common::auth::LEEWAY_SECS) * 1000;
    jwks.revoked = state
        .repo
        .revocations_since(dialstack_common::now_ms() - window_ms)
        .await?;
    Ok(ApiJson(jwks))
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
