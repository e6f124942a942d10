//! storage-service routes.
//!
//! # Layout
//! - [`recording`]: `GET /v1/calls/{id}/recording`, with byte ranges
//!   (`GET /v1/calls/{id}/transcript` is here, beside `GET /v1/calls/{id}`)
//! - [`export`]: `GET /v1/calls/export`, streamed CSV or NDJSON
//! - [`customers`]: customer profiles

use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, BearerSecurity, ErrorBody};
use dialstack_contract::Outcome;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::db::cdrs::AMD_RESULTS;
use crate::db::{Cdr, CdrCursor, CdrQuery, IvrResultFilter, RecordingLink, Transcript};
use crate::AppState;

pub mod customers;
pub mod export;
pub mod recording;

pub(crate) const READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 500;

/// `GET /v1/calls` query: filters combine with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only calls started at or after this: ms since epoch or RFC 3339.
    pub from: Option<String>,
    /// Only calls started before this: ms since epoch or RFC 3339.
    pub to: Option<String>,
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only calls to this number (E.164).
    pub phone: Option<String>,
    /// Only calls to this customer.
    pub customer_id: Option<String>,
    /// Only calls bridged to this agent.
    pub agent_id: Option<String>,
    /// Only calls of this team.
    pub team: Option<String>,
    /// Only calls with this disposition.
    pub disposition: Option<String>,
    /// Only calls whose MOS is below this (1.0-5.0); calls without a
    /// quality measurement never match.
    #[param(value_type = Option<f64>, minimum = 1.0, maximum = 5.0)]
    pub mos_below: Option<String>,
    /// Only calls whose IVR result matches (1-200 characters): with a `&`,
    /// the whole result (`choice=1&ok=yes`); without, one gathered value
    /// (`choice=1` matches `choice=1&ok=yes`, never `choice=10`).
    pub ivr_result: Option<String>,
    /// Only calls machine detection classified so: `human`, `machine` or
    /// `unsure`.
    pub amd: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    /// The query these filters make, for `who`, with the caller's access
    /// applied; errors name the parameter.
    pub fn query(self, who: &Principal, limit: i64) -> Result<CdrQuery, ApiError> {
        if let Some(o) = &self.outcome {
            if Outcome::parse(o).is_none() {
                return Err(ApiError::invalid(
                    "outcome",
                    format!("{o:?} is not an outcome"),
                ));
            }
        }
        let mos_below = self.mos_below.as_deref().map(parse_mos).transpose()?;
        let ivr_result = self
            .ivr_result
            .as_deref()
            .map(parse_ivr_result)
            .transpose()?;
        if let Some(a) = &self.amd {
            if !AMD_RESULTS.contains(&a.as_str()) {
                return Err(ApiError::invalid("amd", "must be human, machine or unsure"));
            }
        }
        for (field, v) in [
            ("campaign_id", &self.campaign_id),
            ("customer_id", &self.customer_id),
            ("agent_id", &self.agent_id),
            ("team", &self.team),
            ("disposition", &self.disposition),
        ] {
            if v.as_ref().is_some_and(|v| !is_token(v)) {
                return Err(ApiError::invalid(
                    field,
                    "must be 1-64 characters without control characters",
                ));
            }
        }
        if let Some(phone) = &self.phone {
            check_phone("phone", phone)?;
        }
        let from = self
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?;
        let to = self
            .to
            .as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                return Err(ApiError::invalid("to", "must be after from"));
            }
        }
        let after = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(
                CdrCursor::parse(c)
                    .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this listing"))?,
            ),
        };
        Ok(CdrQuery {
            from,
            to,
            campaign_id: self.campaign_id,
            outcome: self.outcome,
            phone: self.phone,
            customer_id: self.customer_id,
            agent_id: self.agent_id,
            team: self.team,
            disposition: self.disposition,
            mos_below,
            ivr_result,
            amd_result: self.amd,
            after,
            only_agent: (who.role == Role::Agent).then(|| who.sub.clone()),
            only_teams: (who.role == Role::Supervisor).then(|| who.teams.clone()),
            limit,
        })
    }
}

/// `ivr_result`: 1-200 characters, none a control character.
fn parse_ivr_result(v: &str) -> Result<IvrResultFilter, ApiError> {
    let n = v.chars().count();
    if !(1..=200).contains(&n) || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "ivr_result",
            "must be 1-200 characters without control characters",
        ));
    }
    Ok(IvrResultFilter::parse(v))
}

/// 1-64 characters, none a control character.
pub(crate) fn is_token(v: &str) -> bool {
    !v.is_empty() && v.chars().count() <= 64 && !v.chars().any(char::is_control)
}

/// A number in E.164.
pub(crate) fn check_phone(field: &str, v: &str) -> Result<(), ApiError> {
    if dialstack_contract::is_e164(v) && v.len() <= 16 {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be E.164 (+ and 2-15 digits)",
        ))
    }
}

/// A time given as ms since epoch or RFC 3339, in ms since epoch.
pub(crate) fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<i64>() {
        if (0..=253_402_300_799_999).contains(&ms) {
            return Ok(ms);
        }
    } else if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    Err(ApiError::invalid(
        field,
        "must be ms since epoch or an RFC 3339 time",
    ))
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
    paths(list_calls, get_call, get_transcript, recording::get_recording, export::export_calls,
        customers::create_customer, customers::get_customer, customers::patch_customer,
        customers::search_customers, customers::customer_calls, customers::export_customer,
        customers::delete_customer),
    components(schemas(Cdr, CdrPage, RecordingLink, Transcript, ErrorBody, customers::NewCustomerRequest,
        customers::PatchCustomerRequest, customers::ConsentPatch, customers::CustomerPage,
        customers::CustomerExport, customers::DeleteResult, crate::db::customers::Customer,
        crate::db::customers::Consent, crate::db::customers::FieldValue,
        crate::db::customers::AuditEntry)),
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
    RouteRoles {
        method: "GET",
        path: "/v1/calls/{id}/transcript",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/calls/export",
        roles: READ,
    },
    RouteRoles {
        method: "POST",
        path: "/v1/customers",
        roles: customers::WRITE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/customers",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/customers/{id}",
        roles: READ,
    },
    RouteRoles {
        method: "PATCH",
        path: "/v1/customers/{id}",
        roles: customers::WRITE,
    },
    RouteRoles {
        method: "DELETE",
        path: "/v1/customers/{id}",
        roles: customers::WRITE,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/customers/{id}/calls",
        roles: READ,
    },
    RouteRoles {
        method: "GET",
        path: "/v1/customers/{id}/export",
        roles: customers::WRITE,
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
        .route(
            "/v1/calls/{id}/transcript",
            get(get_transcript).route_layer(roles(READ)),
        )
        .route(
            "/v1/calls/export",
            get(export::export_calls).route_layer(roles(READ)),
        )
        .route(
            "/v1/customers",
            post(customers::create_customer)
                .route_layer(roles(customers::WRITE))
                .merge(get(customers::search_customers).route_layer(roles(READ))),
        )
        .route(
            "/v1/customers/{id}",
            get(customers::get_customer).route_layer(roles(READ)).merge(
                patch(customers::patch_customer)
                    .delete(customers::delete_customer)
                    .route_layer(roles(customers::WRITE)),
            ),
        )
        .route(
            "/v1/customers/{id}/calls",
            get(customers::customer_calls).route_layer(roles(READ)),
        )
        .route(
            "/v1/customers/{id}/export",
            get(customers::export_customer).route_layer(roles(customers::WRITE)),
        )
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
        .with_state(state)
}

/// Call detail records in start order, filtered and paged by a keyset
/// cursor (stable while calls are added).
#[utoipa::path(get, path = "/v1/calls", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = CdrPage), (status = 400, body = ErrorBody)))]
async fn list_calls(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<CdrPage>, ApiError> {
    who.require(READ)?;
    let limit = page_limit(p.limit)?;
    let q = p.query(&who, limit)?;
    Ok(ApiJson(page(&state, &q).await?))
}

/// The page size asked for, checked.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1-{MAX_LIMIT}")));
    }
    Ok(limit)
}

/// One page of `q`.
pub(crate) async fn page(state: &AppState, q: &CdrQuery) -> Result<CdrPage, ApiError> {
    let items = state.repo.list(q).await?;
    let next_cursor = (items.len() as i64 == q.limit)
        .then(|| items.last().map(|c| CdrCursor::after(c).to_string()))
        .flatten();
    Ok(CdrPage { items, next_cursor })
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

/// A call's transcript (campaigns with `transcribe`), under the access of
/// the call's record: agents their own calls, supervisors their teams',
/// admins and services all. 404 when there is none or the call is not the
/// caller's to read.
#[utoipa::path(get, path = "/v1/calls/{id}/transcript", security(("bearer" = [])),
    params(("id" = String, Path, description = "the call id")),
    responses((status = 200, body = Transcript), (status = 404, body = ErrorBody)))]
async fn get_transcript(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Transcript>, ApiError> {
    who.require(READ)?;
    let not_found = || ApiError::not_found("transcript");
    if !is_token(&id) {
        return Err(not_found());
    }
    let sees_all = matches!(who.role, Role::Admin | Role::Service);
    if !sees_all {
        // Without its record, the call's team and agent are unknown.
        let cdr = state.repo.get(&id).await?.ok_or_else(not_found)?;
        if !may_read(&who, &cdr) {
            return Err(not_found());
        }
    }
    state
        .repo
        .transcript(&id)
        .await?
        .map(ApiJson)
        .ok_or_else(not_found)
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
