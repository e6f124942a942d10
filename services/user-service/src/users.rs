//! Users and teams: admins create, list, change and delete users (a role
//! change or password reset ends the user's sessions and is audited; the last
//! admin cannot be demoted or deleted); admins and supervisors keep the
//! settings of teams (a supervisor only of the teams they lead).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use dialstack_common::auth::{roles, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agents::{name_ok, Scope, MAX_TEAMS};
use crate::db::{Team, User, UserChange, UserUpdate};
use crate::extract::ClientIp;
use crate::AppState;

const ADMIN: &[Role] = &[Role::Admin];
const MANAGE: &[Role] = &[Role::Admin, Role::Supervisor];

/// Longest wrap-up timeout a team may set.
pub const MAX_WRAP_UP_SECS: i64 = 3600;

/// Who may call each route.
pub const ROUTES: &[RouteRoles] = &[
    RouteRoles {
        method: "POST",
        path: "/v1/users",
        roles: ADMIN,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/users",
        roles: ADMIN,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/users/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "PATCH",
        path: "/v1/users/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/users/{id}",
        roles: ADMIN,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/teams",
        roles: MANAGE,
    },
    RouteRoles {
        method: "PUT",
        path: "/v1/teams/{id}",
        roles: MANAGE,
    },
];

/// The routes (mounted behind the auth layer).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/users",
            post(create_user)
                .merge(get(list_users))
                .route_layer(roles(ADMIN)),
        )
        .route(
            "/v1/users/{id}",
            get(get_user)
                .patch(patch_user)
                .delete(delete_user)
                .route_layer(roles(ADMIN)),
        )
        .route("/v1/teams", get(list_teams).route_layer(roles(MANAGE)))
        .route("/v1/teams/{id}", put(put_team).route_layer(roles(MANAGE)))
}

/// `POST /v1/users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Initial password.
    pub password: String,
    /// Role.
    pub role: Role,
    /// Teams a supervisor leads (supervisors only).
    #[serde(default)]
    pub teams: Vec<String>,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Teams a supervisor leads.
    #[serde(default)]
    pub teams: Vec<String>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            role: u.role,
            teams: u.teams,
        }
    }
}

/// `PATCH /v1/users/{id}` body: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New role (ends the user's sessions).
    #[serde(default)]
    pub role: Option<Role>,
    /// New teams (supervisors only).
    #[serde(default)]
    pub teams: Option<Vec<String>>,
    /// New password, set by an admin (ends the user's sessions).
    #[serde(default)]
    pub password: Option<String>,
}

/// `PUT /v1/teams/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamSettings {
    /// Seconds after which an agent's wrap-up ends by itself (1-3600);
    /// `null`: the agent ends it.
    pub wrap_up_timeout_secs: Option<i64>,
}

fn check_teams(role: Role, teams: &[String]) -> Result<(), ApiError> {
    if !teams.is_empty() && role != Role::Supervisor {
        return Err(ApiError::invalid(
            "teams",
            "only supervisors lead teams (an agent's teams are in its profile)",
        ));
    }
    if teams.len() > MAX_TEAMS {
        return Err(ApiError::invalid("teams", format!("at most {MAX_TEAMS}")));
    }
    match teams.iter().find(|t| !name_ok(t)) {
        Some(t) => Err(ApiError::invalid(
            "teams",
            format!("{t:?} must be 1-64 of [A-Za-z0-9._-]"),
        )),
        None => Ok(()),
    }
}

/// Creates a user (admins only).
#[utoipa::path(post, path = "/v1/users", request_body = NewUser, security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, ApiJson<UserView>), ApiError> {
    who.require(ADMIN)?;
    crate::domain::check_username(&req.username).map_err(|e| ApiError::invalid("username", e))?;
    crate::domain::check_password(&req.password).map_err(|e| ApiError::invalid("password", e))?;
    check_teams(req.role, &req.teams)?;
    let hash = state
        .hasher
        .hash(crate::hashing::Lane::Trusted, &req.password)
        .await?;
    let user = state
        .repo
        .create_user(&req.username, req.role, &hash)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "username is taken"))?;
    let user = if req.teams.is_empty() {
        user
    } else {
        let update = UserUpdate {
            teams: Some(req.teams),
            ..UserUpdate::default()
        };
        match state.repo.update_user(&user.id, &update).await? {
            UserChange::Done(Some(u)) => u,
            _ => return Err(ApiError::not_found("user")),
        }
    };
    state
        .repo
        .audit("user_created", &user.id, &ip, req.role.as_str())
        .await?;
    Ok((StatusCode::CREATED, ApiJson(user.into())))
}

/// Every user (admins only).
#[utoipa::path(get, path = "/v1/users", security(("bearer" = [])),
    responses((status = 200, body = [UserView])))]
pub async fn list_users(
    State(state): State<AppState>,
    who: Principal,
) -> Result<ApiJson<Vec<UserView>>, ApiError> {
    who.require(ADMIN)?;
    let users = state.repo.users().await?;
    Ok(ApiJson(users.into_iter().map(UserView::from).collect()))
}

/// One user (admins only).
#[utoipa::path(get, path = "/v1/users/{id}", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<UserView>, ApiError> {
    who.require(ADMIN)?;
    let user = state.repo.user_by_id(&id).await?;
    Ok(ApiJson(
        user.ok_or_else(|| ApiError::not_found("user"))?.into(),
    ))
}

/// Changes a user's role, teams or password (admins only). A role change
/// or a password reset ends the user's sessions (their access tokens lapse
/// within the token lifetime) and goes to the audit log; demoting the last
/// admin is a 409.
#[utoipa::path(patch, path = "/v1/users/{id}", request_body = UserPatch, security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn patch_user(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UserPatch>,
) -> Result<ApiJson<UserView>, ApiError> {
    who.require(ADMIN)?;
    let before = state
        .repo
        .user_by_id(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let role = req.role.unwrap_or(before.role);
    let teams = match (&req.teams, role) {
        (Some(t), _) => Some(t.clone()),
        // A user who stops being a supervisor leads no team any more.
        (None, r) if r != Role::Supervisor && !before.teams.is_empty() => Some(Vec::new()),
        (None, _) => None,
    };
    check_teams(role, teams.as_deref().unwrap_or(&before.teams))?;
    let password_hash = match &req.password {
        Some(p) => {
            crate::domain::check_password(p).map_err(|e| ApiError::invalid("password", e))?;
            Some(state.hasher.hash(crate::hashing::Lane::Trusted, p).await?)
        }
        None => None,
    };
    let update = UserUpdate {
        role: req.role,
        teams,
        password_hash,
    };
    let user = match state.repo.update_user(&id, &update).await? {
        UserChange::Done(Some(u)) => u,
        UserChange::Done(None) | UserChange::Unknown => return Err(ApiError::not_found("user")),
        UserChange::LastAdmin => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the last admin cannot be demoted",
            ))
        }
    };
    if user.role != before.role {
        state.relay.notify();
        tracing::info!(user_id = %id, from = before.role.as_str(), to = user.role.as_str(), "role changed");
        let detail = format!(
            "{} -> {} by {}",
            before.role.as_str(),
            user.role.as_str(),
            who.sub
        );
        state.repo.audit("role_changed", &id, &ip, &detail).await?;
    }
    if user.teams != before.teams {
        let detail = format!("[{}] by {}", user.teams.join(","), who.sub);
        state.repo.audit("teams_changed", &id, &ip, &detail).await?;
    }
    if req.password.is_some() {
        state
            .repo
            .audit("password_reset", &id, &ip, &who.sub)
            .await?;
    }
    Ok(ApiJson(user.into()))
}

/// Deletes a user with their agent profile and sessions (admins only); the
/// last admin cannot be deleted.
#[utoipa::path(delete, path = "/v1/users/{id}", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require(ADMIN)?;
    match state.repo.delete_user(&id).await? {
        UserChange::Done(_) => {
            state.relay.notify();
            state.repo.audit("user_deleted", &id, &ip, &who.sub).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        UserChange::Unknown => Err(ApiError::not_found("user")),
        UserChange::LastAdmin => Err(ApiError::new(
            ErrorCode::Conflict,
            "the last admin cannot be deleted",
        )),
    }
}

/// Teams with settings (supervisors: the teams they lead).
#[utoipa::path(get, path = "/v1/teams", security(("bearer" = [])),
    responses((status = 200, body = [Team])))]
pub async fn list_teams(
    State(state): State<AppState>,
    who: Principal,
) -> Result<ApiJson<Vec<Team>>, ApiError> {
    who.require(MANAGE)?;
    let scope = Scope::of(&state, &who).await?;
    let mut teams = state.repo.teams().await?;
    teams.retain(|t| scope.covers(std::slice::from_ref(&t.name)));
    Ok(ApiJson(teams))
}

/// Sets a team's settings (admins; supervisors for the teams they lead,
/// other teams are a 404).
#[utoipa::path(put, path = "/v1/teams/{id}", request_body = TeamSettings, security(("bearer" = [])),
    responses((status = 200, body = Team), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_team(
    State(state): State<AppState>,
    who: Principal,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<TeamSettings>,
) -> Result<ApiJson<Team>, ApiError> {
    who.require(MANAGE)?;
    if !name_ok(&name) {
        return Err(ApiError::invalid("name", "must be 1-64 of [A-Za-z0-9._-]"));
    }
    if !Scope::of(&state, &who)
        .await?
        .covers(std::slice::from_ref(&name))
    {
        return Err(ApiError::not_found("team"));
    }
    if req
        .wrap_up_timeout_secs
        .is_some_and(|s| !(1..=MAX_WRAP_UP_SECS).contains(&s))
    {
        return Err(ApiError::invalid(
            "wrap_up_timeout_secs",
            format!("must be 1-{MAX_WRAP_UP_SECS} or null"),
        ));
    }
    let team = Team {
        name,
        wrap_up_timeout_secs: req.wrap_up_timeout_secs,
    };
    state.repo.put_team(&team).await?;
    let detail = format!(
        "wrap_up_timeout_secs={:?} by {}",
        team.wrap_up_timeout_secs, who.sub
    );
    state
        .repo
        .audit("team_settings_changed", &team.name, &ip, &detail)
        .await?;
    Ok(ApiJson(team))
}
