//! Do-not-call routes. Entries are global or for one campaign, optionally
//! expiring; the dispatcher checks them at dial time, so a number added
//! after its lead was imported is never dialed.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use dialstack_dialrules::phone::parse_phone;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::campaigns::visible;
use super::{idempotency, DNC_ADD, DNC_READ, MANAGE};
use crate::db::{DncEntry, DncScope};
use crate::AppState;

/// Most numbers in one request.
pub const MAX_NUMBERS: usize = 100_000;

/// `POST /v1/dnc` as JSON (for CSV, the same fields go in the query and
/// the body has a `phone` column).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DncRequest {
    /// Numbers, E.164.
    #[serde(default)]
    pub numbers: Vec<String>,
    /// `global` (default) or a campaign id.
    #[serde(default)]
    pub scope: Option<String>,
    /// When the entries lapse (ms since epoch); default never.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Why (e.g. "customer asked on call 0192...").
    #[serde(default)]
    pub reason: Option<String>,
}

/// What was added.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DncAdded {
    /// Entries written (new or renewed).
    pub added: u64,
    /// The scope.
    pub scope: String,
}

/// Whether a number is on a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DncStatus {
    /// The number, E.164.
    pub phone: String,
    /// On a live list (any scope).
    pub listed: bool,
    /// The live entries.
    pub entries: Vec<DncEntry>,
}

/// `DELETE /v1/dnc/{number}` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DncScopeParam {
    /// `global` (default) or a campaign id.
    pub scope: Option<String>,
}

async fn scope_of(
    state: &AppState,
    who: &Principal,
    scope: Option<&str>,
) -> Result<DncScope, ApiError> {
    match scope {
        None | Some("global") => Ok(DncScope::Global),
        Some(id) => {
            visible(state, who, id).await.map_err(|_| {
                ApiError::invalid("scope", "must be global or a campaign you manage")
            })?;
            Ok(DncScope::Campaign(id.to_owned()))
        }
    }
}

fn numbers_csv(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(body);
    let header = r
        .headers()
        .map_err(|e| ApiError::invalid("header", e.to_string()))?
        .clone();
    let col = header
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("phone"))
        .ok_or_else(|| ApiError::invalid("header", "the header has no phone column"))?;
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| ApiError::invalid("body", format!("row {}: {e}", i + 2)))?;
        if let Some(p) = rec.get(col).map(str::trim).filter(|p| !p.is_empty()) {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

/// Adds numbers to a do-not-call list (JSON, or `text/csv` with a `phone`
/// column and the other fields in the query). Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/dnc", request_body = DncRequest, params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response for 24 h")),
    security(("bearer" = [])),
    responses((status = 201, body = DncAdded), (status = 400, body = ErrorBody)))]
pub(super) async fn add_dnc(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DncQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    who.require(DNC_ADD)?;
    let bytes = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::invalid("body", format!("cannot read the body: {e}")))?;
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let req = if csv {
        DncRequest {
            numbers: numbers_csv(&bytes)?,
            scope: query.scope,
            expires_at: query.expires_at,
            reason: query.reason,
        }
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?
    };
    if req.numbers.is_empty() || req.numbers.len() > MAX_NUMBERS {
        return Err(ApiError::invalid(
            "numbers",
            format!("must hold 1-{MAX_NUMBERS} numbers"),
        ));
    }
    let mut phones = Vec::with_capacity(req.numbers.len());
    for (i, n) in req.numbers.iter().enumerate() {
        phones.push(
            parse_phone(n, None).map_err(|e| ApiError::invalid(&format!("numbers[{i}]"), e))?,
        );
    }
    phones.sort();
    phones.dedup();
    if req
        .expires_at
        .is_some_and(|e| e <= dialstack_common::now_ms())
    {
        return Err(ApiError::invalid("expires_at", "must be in the future"));
    }
    let reason = req
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.len() > 200 || r.chars().any(char::is_control)) {
        return Err(ApiError::invalid(
            "reason",
            "must be at most 200 bytes without control characters",
        ));
    }
    let scope = scope_of(&state, &who, req.scope.as_deref()).await?;
    idempotency::once(&state.repo, &who, &headers, "POST /v1/dnc", &bytes, || async {
        let added = state
            .repo
            .add_dnc(&phones, &scope, req.expires_at, reason, &who.sub)
            .await?;
        tracing::info!(numbers = added, scope = scope.as_str(), by = %who.sub, "numbers added to a do-not-call list");
        Ok((
            StatusCode::CREATED,
            serde_json::to_value(DncAdded {
                added,
                scope: scope.as_str().to_owned(),
            })
            .map_err(ApiError::internal)?,
        ))
    })
    .await
}

/// `POST /v1/dnc` query, for CSV bodies.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct DncQuery {
    /// `global` (default) or a campaign id.
    pub scope: Option<String>,
    /// When the entries lapse (ms since epoch).
    pub expires_at: Option<i64>,
    /// Why.
    pub reason: Option<String>,
}

fn path_number(n: &str) -> Result<String, ApiError> {
    parse_phone(n.trim(), None).map_err(|e| ApiError::invalid("number", e))
}

/// Whether a number is on a do-not-call list, with its live entries.
#[utoipa::path(get, path = "/v1/dnc/{number}", security(("bearer" = [])),
    responses((status = 200, body = DncStatus), (status = 400, body = ErrorBody)))]
pub(super) async fn get_dnc(
    State(state): State<AppState>,
    who: Principal,
    Path(number): Path<String>,
) -> Result<ApiJson<DncStatus>, ApiError> {
    who.require(DNC_READ)?;
    let phone = path_number(&number)?;
    let entries = state.repo.dnc_entries(&phone).await?;
    Ok(ApiJson(DncStatus {
        listed: !entries.is_empty(),
        phone,
        entries,
    }))
}

/// Removes a number from a list (`?scope=global` by default).
#[utoipa::path(delete, path = "/v1/dnc/{number}", params(DncScopeParam), security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_dnc(
    State(state): State<AppState>,
    who: Principal,
    Path(number): Path<String>,
    ApiQuery(p): ApiQuery<DncScopeParam>,
) -> Result<StatusCode, ApiError> {
    who.require(MANAGE)?;
    let phone = path_number(&number)?;
    let scope = scope_of(&state, &who, p.scope.as_deref()).await?;
    if state.repo.remove_dnc(&phone, &scope).await? {
        tracing::info!(phone = %phone, scope = scope.as_str(), by = %who.sub, "number removed from a do-not-call list");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("do-not-call entry"))
    }
}
