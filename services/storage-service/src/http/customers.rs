//! Customer profiles: create, read, change with `If-Match`, search, their
//! calls, export everything held about one, delete or erase.
//!
//! Access: admins and services see every customer; supervisors the
//! customers of their teams; agents the customers of calls bridged to them.
//! A customer the caller may not see is a 404. Admins and supervisors (in
//! their teams) create, change and delete; only admins erase.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{check_phone, is_token, page, page_limit, CdrPage, READ};
use crate::db::customers::{
    AuditEntry, Consent, Customer, CustomerError, CustomerPatch, CustomerQuery, FieldValue,
    NewCustomer, Visibility, MAX_FIELDS, MAX_FIELDS_JSON, MAX_NAME, MAX_PHONES, MAX_TAGS,
};
use crate::db::{Cdr, CdrCursor, CdrQuery};
use crate::AppState;

/// Roles that write profiles.
pub const WRITE: &[Role] = &[Role::Admin, Role::Supervisor];
/// Roles that may erase.
pub const ERASE: &[Role] = &[Role::Admin];
/// Most calls in one customer export.
pub const EXPORT_CALLS: i64 = 10_000;
/// Most recordings deleted by one erasure request (the rest on a retry).
const ERASE_RECORDINGS: i64 = 1_000;

/// `POST /v1/customers` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomerRequest {
    /// The team whose customer this is. Supervisors give one of theirs
    /// (or none if they lead exactly one team); admins may give none.
    pub team: Option<String>,
    /// The operator's id for the customer, unique per team.
    pub external_id: Option<String>,
    /// Full name.
    pub name: Option<String>,
    /// Numbers, E.164, the primary first (1-10).
    pub phones: Vec<String>,
    /// Typed custom fields: `{"plan": {"string": "gold"}, "vip": {"bool": true}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, FieldValue>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Consent (default: recording allowed, no marketing opt-out).
    pub consent: Option<Consent>,
}

/// `PATCH /v1/customers/{id}` body: what is given changes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCustomerRequest {
    /// New external id; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub external_id: Option<Option<String>>,
    /// New name.
    pub name: Option<String>,
    /// New numbers (replace the list), the primary first.
    pub phones: Option<Vec<String>>,
    /// Fields to set; a `null` value removes the field.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Option<FieldValue>>,
    /// New tags (replace the list).
    pub tags: Option<Vec<String>>,
    /// Consent flags to change.
    pub consent: Option<ConsentPatch>,
}

/// Consent flags to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentPatch {
    /// Calls may be recorded.
    pub recording_allowed: Option<bool>,
    /// No marketing.
    pub marketing_opt_out: Option<bool>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `GET /v1/customers` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerParams {
    /// Has this number (E.164).
    pub phone: Option<String>,
    /// Has this external id.
    pub external_id: Option<String>,
    /// Name starts with this (case-insensitive).
    pub name_prefix: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/customers/{id}/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CallsParams {
    /// Page size (1-500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `DELETE /v1/customers/{id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Also remove the number from their calls and delete their
    /// recordings (admins only).
    pub erase: Option<bool>,
}

/// A page of customers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerPage {
    /// The customers.
    pub items: Vec<Customer>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Everything held about one customer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerExport {
    /// The profile.
    pub customer: Customer,
    /// Their calls (with quality and recording metadata), oldest first.
    pub calls: Vec<Cdr>,
    /// Whether `calls` stopped at the export's limit.
    pub calls_truncated: bool,
    /// What was done to the profile that is audited.
    pub audit: Vec<AuditEntry>,
}

/// What a delete did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeleteResult {
    /// Calls unlinked (and, for an erasure, anonymised).
    pub calls: u64,
    /// Recordings deleted.
    pub recordings_deleted: u64,
}

fn visibility(who: &Principal) -> Visibility {
    match who.role {
        Role::Admin | Role::Service => Visibility::All,
        Role::Supervisor => Visibility::Teams(who.teams.clone()),
        Role::Agent => Visibility::Agent(who.sub.clone()),
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

fn check_phones(phones: &[String]) -> Result<(), ApiError> {
    if phones.is_empty() || phones.len() > MAX_PHONES {
        return Err(ApiError::invalid(
            "phones",
            format!("must hold 1-{MAX_PHONES} numbers"),
        ));
    }
    for (i, p) in phones.iter().enumerate() {
        check_phone(&format!("phones[{i}]"), p)?;
        if phones[..i].contains(p) {
            return Err(ApiError::invalid(&format!("phones[{i}]"), "given twice"));
        }
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid("tags", format!("at most {MAX_TAGS}")));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !ok {
            return Err(ApiError::invalid(
                &format!("tags[{i}]"),
                "must be 1-64 of letters, digits, - _ . :",
            ));
        }
    }
    let mut out = tags.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_field(name: &str, v: &FieldValue) -> Result<(), ApiError> {
    let field = format!("fields.{name}");
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok_name {
        return Err(ApiError::invalid(
            "fields",
            format!("{name:?}: names are 1-64 letters, digits or _"),
        ));
    }
    match v {
        FieldValue::String(s) => check_text(&field, s, 1000),
        FieldValue::Number(n) if !n.is_finite() => Err(ApiError::invalid(&field, "must be finite")),
        FieldValue::Number(_) | FieldValue::Bool(_) => Ok(()),
        FieldValue::Date(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map(|_| ())
            .map_err(|_| ApiError::invalid(&field, "must be a date, YYYY-MM-DD")),
    }
}

fn check_external(v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "external_id",
            "must be 1-128 characters without control characters",
        ));
    }
    Ok(())
}

impl From<CustomerError> for ApiError {
    fn from(e: CustomerError) -> Self {
        match e {
            CustomerError::NotFound => ApiError::not_found("customer"),
            CustomerError::Stale { current } => ApiError::new(
                ErrorCode::PreconditionFailed,
                format!("If-Match: the customer has changed (now version {current})"),
            ),
            e @ (CustomerError::PhoneTaken { .. } | CustomerError::ExternalTaken { .. }) => {
                ApiError::new(ErrorCode::Conflict, e.to_string())
            }
            e @ CustomerError::TooLarge => ApiError::invalid("fields", e),
            CustomerError::Db(e) => e.into(),
        }
    }
}

/// The customer with its `ETag` (its version).
fn with_etag(status: StatusCode, c: Customer) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", c.version)).ok();
    let mut resp = (status, ApiJson(c)).into_response();
    if let Some(etag) = etag {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

/// The customer if `who` may see it, else 404.
async fn visible(state: &AppState, who: &Principal, id: &str) -> Result<Customer, ApiError> {
    if !is_token(id) {
        return Err(ApiError::not_found("customer"));
    }
    let c = state
        .repo
        .customer(id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer"))?;
    if !state.repo.customer_visible(id, &visibility(who)).await? {
        return Err(ApiError::not_found("customer"));
    }
    Ok(c)
}

/// Creates a customer profile.
#[utoipa::path(post, path = "/v1/customers", request_body = NewCustomerRequest, security(("bearer" = [])),
    responses((status = 201, body = Customer), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_customer(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<NewCustomerRequest>,
) -> Result<Response, ApiError> {
    who.require(WRITE)?;
    let scope = match (&body.team, who.role) {
        (Some(t), _) if !is_token(t) => {
            return Err(ApiError::invalid("team", "must be 1-64 characters"))
        }
        (Some(t), Role::Supervisor) if !who.teams.contains(t) => {
            return Err(ApiError::invalid("team", "must be one of your teams"))
        }
        (Some(t), _) => t.clone(),
        (None, Role::Supervisor) if who.teams.len() == 1 => who.teams[0].clone(),
        (None, Role::Supervisor) => {
            return Err(ApiError::invalid(
                "team",
                "required: you lead several teams or none",
            ))
        }
        (None, _) => String::new(),
    };
    if let Some(ext) = &body.external_id {
        check_external(ext)?;
    }
    let name = body.name.unwrap_or_default();
    check_text("name", &name, MAX_NAME)?;
    check_phones(&body.phones)?;
    if body.fields.len() > MAX_FIELDS {
        return Err(ApiError::invalid("fields", format!("at most {MAX_FIELDS}")));
    }
    for (k, v) in &body.fields {
        check_field(k, v)?;
    }
    if serde_json::to_string(&body.fields).map_or(0, |s| s.len()) > MAX_FIELDS_JSON {
        return Err(ApiError::invalid(
            "fields",
            format!("at most {MAX_FIELDS_JSON} characters in all"),
        ));
    }
    let tags = check_tags(&body.tags)?;
    let c = state
        .repo
        .create_customer(&NewCustomer {
            scope,
            external_id: body.external_id,
            name: name.trim().to_owned(),
            phones: body.phones,
            fields: body.fields,
            tags,
            consent: body.consent.unwrap_or_default(),
        })
        .await?;
    Ok(with_etag(StatusCode::CREATED, c))
}

/// One customer profile; `ETag` is its version.
#[utoipa::path(get, path = "/v1/customers/{id}", params(("id" = String, Path, description = "Customer id")),
    security(("bearer" = [])),
    responses((status = 200, body = Customer), (status = 404, body = ErrorBody)))]
pub async fn get_customer(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.require(READ)?;
    Ok(with_etag(StatusCode::OK, visible(&state, &who, &id).await?))
}

/// The version an `If-Match` header names.
fn if_match(headers: &HeaderMap) -> Result<i64, ApiError> {
    let raw = headers.get(header::IF_MATCH).ok_or_else(|| {
        ApiError::new(
            ErrorCode::PreconditionRequired,
            "If-Match: required, with the customer's ETag",
        )
    })?;
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| ApiError::invalid("If-Match", "must be the customer's ETag, e.g. \"3\""))
}

/// Changes a customer; `If-Match` must carry its current version (412
/// otherwise).
#[utoipa::path(patch, path = "/v1/customers/{id}", params(("id" = String, Path, description = "Customer id"),
        ("If-Match" = String, Header, description = "The customer's ETag")),
    request_body = PatchCustomerRequest, security(("bearer" = [])),
    responses((status = 200, body = Customer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, body = ErrorBody), (status = 428, body = ErrorBody)))]
pub async fn patch_customer(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PatchCustomerRequest>,
) -> Result<Response, ApiError> {
    who.require(WRITE)?;
    let expected = if_match(&headers)?;
    if let Some(Some(ext)) = &body.external_id {
        check_external(ext)?;
    }
    if let Some(name) = &body.name {
        check_text("name", name, MAX_NAME)?;
    }
    if let Some(phones) = &body.phones {
        check_phones(phones)?;
    }
    if body.fields.len() > MAX_FIELDS {
        return Err(ApiError::invalid("fields", format!("at most {MAX_FIELDS}")));
    }
    for (k, v) in &body.fields {
        match v {
            Some(v) => check_field(k, v)?,
            None => check_field(k, &FieldValue::Bool(false))?,
        }
    }
    let tags = body.tags.as_deref().map(check_tags).transpose()?;
    visible(&state, &who, &id).await?;
    let consent = body.consent.unwrap_or_default();
    let c = state
        .repo
        .patch_customer(
            &id,
            expected,
            &CustomerPatch {
                external_id: body.external_id,
                name: body.name.map(|n| n.trim().to_owned()),
                phones: body.phones,
                fields: body.fields,
                tags,
                recording_allowed: consent.recording_allowed,
                marketing_opt_out: consent.marketing_opt_out,
            },
        )
        .await?;
    Ok(with_etag(StatusCode::OK, c))
}

/// Customers by number, external id, name prefix or tag, in id order.
#[utoipa::path(get, path = "/v1/customers", params(CustomerParams), security(("bearer" = [])),
    responses((status = 200, body = CustomerPage), (status = 400, body = ErrorBody)))]
pub async fn search_customers(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<CustomerParams>,
) -> Result<ApiJson<CustomerPage>, ApiError> {
    who.require(READ)?;
    let limit = page_limit(p.limit)?;
    if let Some(phone) = &p.phone {
        check_phone("phone", phone)?;
    }
    if let Some(ext) = &p.external_id {
        check_external(ext)?;
    }
    for (field, v) in [
        ("name_prefix", &p.name_prefix),
        ("tag", &p.tag),
        ("cursor", &p.cursor),
    ] {
        if v.as_ref().is_some_and(|v| !is_token(v)) {
            return Err(ApiError::invalid(
                field,
                "must be 1-64 characters without control characters",
            ));
        }
    }
    let items = state
        .repo
        .search_customers(&CustomerQuery {
            phone: p.phone,
            external_id: p.external_id,
            name_prefix: p.name_prefix,
            tag: p.tag,
            after: p.cursor,
            visibility: visibility(&who),
            limit,
        })
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| c.id.clone()))
        .flatten();
    Ok(ApiJson(CustomerPage { items, next_cursor }))
}

/// A customer's calls across campaigns, oldest first (an agent sees the
/// ones bridged to them).
#[utoipa::path(get, path = "/v1/customers/{id}/calls", params(("id" = String, Path, description = "Customer id"), CallsParams),
    security(("bearer" = [])),
    responses((status = 200, body = CdrPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn customer_calls(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<CallsParams>,
) -> Result<ApiJson<CdrPage>, ApiError> {
    who.require(READ)?;
    let limit = page_limit(p.limit)?;
    let after = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            CdrCursor::parse(c)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this listing"))?,
        ),
    };
    visible(&state, &who, &id).await?;
    let q = CdrQuery {
        customer_id: Some(id),
        after,
        only_agent: (who.role == Role::Agent).then(|| who.sub.clone()),
        only_teams: (who.role == Role::Supervisor).then(|| who.teams.clone()),
        limit,
        ..Default::default()
    };
    Ok(ApiJson(page(&state, &q).await?))
}

/// Everything held about a customer: the profile, their calls with
/// quality and recording metadata, and the audit of the profile.
#[utoipa::path(get, path = "/v1/customers/{id}/export", params(("id" = String, Path, description = "Customer id")),
    security(("bearer" = [])),
    responses((status = 200, body = CustomerExport), (status = 404, body = ErrorBody)))]
pub async fn export_customer(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<CustomerExport>, ApiError> {
    who.require(WRITE)?;
    let customer = visible(&state, &who, &id).await?;
    let q = CdrQuery {
        customer_id: Some(id.clone()),
        limit: EXPORT_CALLS + 1,
        ..Default::default()
    };
    let mut calls = state.repo.list(&q).await?;
    let calls_truncated = calls.len() as i64 > EXPORT_CALLS;
    calls.truncate(EXPORT_CALLS as usize);
    let audit = state.repo.audit_of(&id).await?;
    Ok(ApiJson(CustomerExport {
        customer,
        calls,
        calls_truncated,
        audit,
    }))
}

/// Deletes a customer's profile; with `erase=true` (admins) also removes
/// their number from their calls and deletes their recordings, keeping the
/// calls' anonymous statistics. Audited.
#[utoipa::path(delete, path = "/v1/customers/{id}", params(("id" = String, Path, description = "Customer id"), DeleteParams),
    security(("bearer" = [])),
    responses((status = 200, body = DeleteResult), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete_customer(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<DeleteParams>,
) -> Result<ApiJson<DeleteResult>, ApiError> {
    who.require(WRITE)?;
    let erase = p.erase.unwrap_or(false);
    if erase {
        who.require(ERASE)?;
    }
    visible(&state, &who, &id).await?;
    let mut recordings_deleted = 0;
    if erase {
        // Objects first: an erasure that fails here leaves the profile, and
        // repeating the request finishes it.
        for _ in 0..100 {
            let batch = state
                .repo
                .customer_recordings(&id, ERASE_RECORDINGS)
                .await?;
            let n = batch.len() as i64;
            for (call_id, url) in batch {
                state.store.delete(&url).await.map_err(|e| {
                    ApiError::new(
                        ErrorCode::Unavailable,
                        format!("the recording store failed; retry the erasure: {e}"),
                    )
                })?;
                state.repo.forget_recording(&call_id, &url).await?;
                recordings_deleted += 1;
            }
            if n < ERASE_RECORDINGS {
                break;
            }
        }
    }
    let calls = state
        .repo
        .delete_customer(&id, erase, &who.sub, recordings_deleted)
        .await?;
    tracing::info!(customer_id = %id, erase, calls, recordings_deleted, actor = %who.sub, "customer deleted");
    Ok(ApiJson(DeleteResult {
        calls,
        recordings_deleted,
    }))
}
