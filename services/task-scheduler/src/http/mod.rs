//! task-scheduler routes. Every route needs a token; each declares its roles.
//!
//! # Layout
//! - [`campaigns`]: create, list, read, patch, lifecycle, delete
//! - [`leads`]: imports (JSON or streamed CSV), listings, callbacks
//! - [`dnc`]: do-not-call entries
//! - [`attempts`]: the media tier's claims and lease renewals, hang-ups
//! - [`live`]: the abandon ledger (JSON, CSV) and the live view (JSON, SSE)
//! - [`dispositions`]: agents' dispositions of calls, ending their wrap-up
//! - [`preview`]: preview dialing: next lead, dial, skip
//! - [`idempotency`]: `Idempotency-Key` on creating POSTs

pub mod attempts;
pub mod campaigns;
pub mod dispositions;
pub mod dnc;
pub mod idempotency;
pub mod leads;
pub mod live;
pub mod preview;

use axum::routing::{get, post};
use axum::Router;
use dialstack_common::auth::{require_auth, roles, Keys, Principal, Role, RouteRoles};
use dialstack_common::http::{BearerSecurity, ErrorBody};
use utoipa::OpenApi;

use crate::db::{Campaign, DncEntry, Lead, LeadAttempt, Progress};
use crate::domain::compliance::{RetryPolicy, RetryRule};
use crate::domain::lead::LeadInput;
use crate::domain::{CampaignPatch, ContactInput, NewCampaignRequest};
use crate::workers::importer::{ImportReport, RowError};
use crate::AppState;

const MANAGE: &[Role] = &[Role::Admin, Role::Supervisor];
const CLAIM: &[Role] = &[Role::Service, Role::Admin];
const READ_LEADS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];
const CALLBACK: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];
const DNC_ADD: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];
const DNC_READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];
use attempts::TRANSFER;
use dispositions::DISPOSE;
use preview::AGENT;

/// Largest page of a listing.
pub const MAX_PAGE: i64 = 500;

/// Whether `who` may see a campaign of `team`: admins and services all,
/// supervisors those of the teams they lead. Others' are 404s.
fn sees_campaign(who: &Principal, team: Option<&String>) -> bool {
    who.sees_all() || team.is_some_and(|t| who.leads_any(&[t]))
}

/// Whether `who` may act on a call: the agent it was bridged to (`agent`),
/// or as for its campaign (`team`).
fn sees_call(who: &Principal, team: Option<&String>, agent: Option<&str>) -> bool {
    match who.role {
        Role::Agent => agent == Some(who.sub.as_str()),
        _ => sees_campaign(who, team),
    }
}

/// Whether `who` may read a lead: as for its campaign, and agents the leads
/// they own.
fn sees_lead(who: &Principal, lead: &Lead) -> bool {
    match who.role {
        Role::Agent => lead.agent_id.as_deref() == Some(who.sub.as_str()),
        _ => sees_campaign(who, lead.team.as_ref()),
    }
}

/// Checks a page size and an id-like cursor.
fn page(
    limit: Option<i64>,
    cursor: &Option<String>,
) -> Result<i64, dialstack_common::http::ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(dialstack_common::http::ApiError::invalid(
            "limit",
            format!("must be 1-{MAX_PAGE}"),
        ));
    }
    if cursor
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.len() > 64)
    {
        return Err(dialstack_common::http::ApiError::invalid(
            "cursor",
            "must be 1-64 characters",
        ));
    }
    Ok(limit)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dialstack task-scheduler", version = "1"),
    paths(
        campaigns::create_campaign, campaigns::list_campaigns, campaigns::get_campaign, campaigns::patch_campaign,
        campaigns::delete_campaign, campaigns::start_campaign, campaigns::pause_campaign, campaigns::resume_campaign,
        campaigns::stop_campaign,
        leads::import_leads, leads::campaign_leads, leads::list_leads, leads::get_lead, leads::book_callback,
        leads::cancel_callback,
        dnc::add_dnc, dnc::get_dnc, dnc::delete_dnc,
        attempts::claim_attempt, attempts::heartbeat, attempts::hangup_call, attempts::transfer_call,
        live::abandon, live::abandon_csv, live::live, live::live_stream,
        dispositions::set_disposition, preview::next_lead, preview::dial_lead, preview::skip_lead
    ),
    components(schemas(
        attempts::HangupAccepted, attempts::TransferRequestBody, attempts::TransferAccepted, NewCampaignRequest, CampaignPatch, ContactInput, Campaign, Progress,
        RetryPolicy, RetryRule, campaigns::CampaignView, campaigns::CampaignPage,
        attempts::ClaimRequest, attempts::ClaimResponse, attempts::HeartbeatRequest, attempts::HeartbeatResponse,
        Lead, LeadAttempt, leads::LeadPage, LeadInput, ImportReport, RowError, leads::CallbackRequest,
        DncEntry, dnc::DncRequest, dnc::DncAdded, dnc::DncStatus, ErrorBody,
        crate::domain::campaign::DialMode, crate::domain::dialing::AgentStatus,
        crate::db::ledger::LedgerDay, crate::db::presence::Presence,
        live::AbandonReport, live::WindowView, live::LiveView, live::LiveAgents, live::LiveCalls,
        dispositions::DispositionRequest, dispositions::DispositionView, dispositions::WrapUpEnd,
        crate::db::dispositions::Disposition, preview::NextLead, preview::PreviewCampaign,
        preview::PreviewDial, preview::SkipRequest
    )),
    modifiers(&BearerSecurity)
)]
struct Doc;

macro_rules! route_roles {
    ($($m:literal $p:literal $r:ident,)*) => {
        /// Who may call each route.
        pub const ROUTES: &[RouteRoles] = &[$(RouteRoles { method: $m, path: $p, roles: $r },)*];
    };
}

route_roles! {
    "POST" "/v1/campaigns" MANAGE,
    "GET" "/v1/campaigns" MANAGE,
    "GET" "/v1/campaigns/{id}" MANAGE,
    "PATCH" "/v1/campaigns/{id}" MANAGE,
    "DELETE" "/v1/campaigns/{id}" MANAGE,
    "POST" "/v1/campaigns/{id}/start" MANAGE,
    "POST" "/v1/campaigns/{id}/pause" MANAGE,
    "POST" "/v1/campaigns/{id}/resume" MANAGE,
    "POST" "/v1/campaigns/{id}/stop" MANAGE,
    "POST" "/v1/campaigns/{id}/leads" MANAGE,
    "GET" "/v1/campaigns/{id}/leads" MANAGE,
    "GET" "/v1/leads" READ_LEADS,
    "GET" "/v1/leads/{id}" READ_LEADS,
    "POST" "/v1/leads/{id}/callback" CALLBACK,
    "DELETE" "/v1/leads/{id}/callback" CALLBACK,
    "POST" "/v1/dnc" DNC_ADD,
    "GET" "/v1/dnc/{number}" DNC_READ,
    "DELETE" "/v1/dnc/{number}" MANAGE,
    "POST" "/v1/attempts/{id}/claim" CLAIM,
    "POST" "/v1/attempts/heartbeat" CLAIM,
    "POST" "/v1/calls/{call_id}/hangup" MANAGE,
    "POST" "/v1/calls/{call_id}/transfer" TRANSFER,
    "GET" "/v1/campaigns/{id}/abandon" MANAGE,
    "GET" "/v1/campaigns/{id}/abandon.csv" MANAGE,
    "GET" "/v1/campaigns/{id}/live" MANAGE,
    "GET" "/v1/campaigns/{id}/live/stream" MANAGE,
    "POST" "/v1/calls/{call_id}/disposition" DISPOSE,
    "POST" "/v1/agents/me/next-lead" AGENT,
    "POST" "/v1/leads/{id}/dial" AGENT,
    "POST" "/v1/leads/{id}/skip" AGENT,
}

/// The OpenAPI document.
pub fn openapi() -> serde_json::Value {
    dialstack_common::http::openapi_json(Doc::openapi())
}

/// The `/v1` routes behind the auth layer.
pub fn router(state: AppState, keys: Keys) -> Router {
    use campaigns as c;
    Router::new()
        .route(
            "/v1/campaigns",
            post(c::create_campaign)
                .get(c::list_campaigns)
                .route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}",
            get(c::get_campaign)
                .patch(c::patch_campaign)
                .delete(c::delete_campaign)
                .route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/start",
            post(c::start_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/pause",
            post(c::pause_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/resume",
            post(c::resume_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/stop",
            post(c::stop_campaign).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/leads",
            post(leads::import_leads)
                .get(leads::campaign_leads)
                .route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/abandon",
            get(live::abandon).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/abandon.csv",
            get(live::abandon_csv).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/live",
            get(live::live).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/campaigns/{id}/live/stream",
            get(live::live_stream).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/leads",
            get(leads::list_leads).route_layer(roles(READ_LEADS)),
        )
        .route(
            "/v1/leads/{id}",
            get(leads::get_lead).route_layer(roles(READ_LEADS)),
        )
        .route(
            "/v1/leads/{id}/callback",
            post(leads::book_callback)
                .delete(leads::cancel_callback)
                .route_layer(roles(CALLBACK)),
        )
        .route("/v1/dnc", post(dnc::add_dnc).route_layer(roles(DNC_ADD)))
        .route(
            "/v1/dnc/{number}",
            get(dnc::get_dnc)
                .route_layer(roles(DNC_READ))
                .merge(axum::routing::delete(dnc::delete_dnc).route_layer(roles(MANAGE))),
        )
        .route(
            "/v1/attempts/{id}/claim",
            post(attempts::claim_attempt).route_layer(roles(CLAIM)),
        )
        .route(
            "/v1/calls/{call_id}/hangup",
            post(attempts::hangup_call).route_layer(roles(MANAGE)),
        )
        .route(
            "/v1/calls/{call_id}/transfer",
            post(attempts::transfer_call).route_layer(roles(TRANSFER)),
        )
        .route(
            "/v1/attempts/heartbeat",
            post(attempts::heartbeat).route_layer(roles(CLAIM)),
        )
        .route(
            "/v1/calls/{call_id}/disposition",
            post(dispositions::set_disposition).route_layer(roles(DISPOSE)),
        )
        .route(
            "/v1/agents/me/next-lead",
            post(preview::next_lead).route_layer(roles(AGENT)),
        )
        .route(
            "/v1/leads/{id}/dial",
            post(preview::dial_lead).route_layer(roles(AGENT)),
        )
        .route(
            "/v1/leads/{id}/skip",
            post(preview::skip_lead).route_layer(roles(AGENT)),
        )
        .route_layer(axum::middleware::from_fn_with_state(keys, require_auth))
        .with_state(state)
}
