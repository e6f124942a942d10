//! Preview dialing: an agent asks for the next lead of the running
//! `preview` campaigns of their teams, reads it, then dials it (the agent
//! is called first, then the customer) or skips it.
//!
//! A lead is offered only if the dispatcher would dial it now (the same
//! [`judge`]: calling window, DNC, attempt caps, the 72 h hold after an
//! abandoned call), and is held for the agent for
//! [`PREVIEW_HOLD_MS`]: no other agent is offered it meanwhile. Leads the
//! dispatcher would put off or close are put off or closed here too.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::preview::{Hold, PREVIEW_HOLD_MS, SKIP_DELAY_MS};
use crate::db::{Campaign, Candidate, Lead};
use crate::domain::campaign::DialMode;
use crate::domain::compliance::Verdict;
use crate::domain::state::CampaignState;
use crate::workers::dispatcher::{judge, DispatcherConfig, ZoneCache};
use crate::AppState;

/// Who dials preview leads.
pub(super) const AGENT: &[Role] = &[Role::Agent];

/// Leads judged per look at a campaign.
const BATCH: i64 = 20;
/// Looks at one campaign per request (leads put off or closed, or taken by
/// another agent in between, make a look come back empty-handed).
const LOOKS: usize = 3;

/// The campaign of an offered lead, as the agent's screen needs it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewCampaign {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Team.
    pub team: Option<String>,
    /// Always `preview`.
    pub mode: DialMode,
    /// Caller id the customer sees.
    pub caller_id: String,
    /// Disposition codes the agent may set on the call.
    pub dispositions: Vec<String>,
}

/// `POST /v1/agents/me/next-lead` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextLead {
    /// The lead, with its attempts (the customer's profile is in
    /// storage-service, by its number).
    pub lead: Lead,
    /// Its campaign.
    pub campaign: PreviewCampaign,
    /// The lead is the agent's until then (ms since epoch); asking again
    /// returns it and renews the hold.
    pub held_until: i64,
}

/// `POST /v1/leads/{id}/dial` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreviewDial {
    /// The lead.
    pub lead_id: String,
    /// The attempt.
    pub attempt_id: String,
    /// The call (its events and CDR carry this id).
    pub call_id: String,
}

/// `POST /v1/leads/{id}/skip` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct SkipRequest {
    /// Why (1-200 characters), kept on the lead.
    pub reason: String,
}

fn dispatcher_config(state: &AppState) -> DispatcherConfig {
    // Only the guard and the number cap are read by `judge`.
    DispatcherConfig {
        max_cps: 1.0,
        lease_ttl: Duration::ZERO,
        holder: String::new(),
        guard: state.guard.clone(),
        number_daily_cap: state.number_daily_cap,
    }
}

/// The agent's teams: from the token, else from their latest `agent.state`.
async fn teams_of(state: &AppState, who: &Principal) -> Result<Vec<String>, ApiError> {
    if !who.teams.is_empty() {
        return Ok(who.teams.clone());
    }
    Ok(state.repo.presence_teams(&who.sub).await?)
}

/// A campaign an agent of `teams` may take preview leads from now.
fn workable(c: &Campaign, teams: &[String]) -> bool {
    c.state() == CampaignState::Running
        && c.mode == DialMode::Preview
        && c.team.as_ref().is_some_and(|t| teams.contains(t))
}

/// Judges candidates as the dispatcher would, applies the verdicts that put
/// leads off or close them (as the dispatcher would), and returns the
/// dialable ones in order.
async fn dialable(
    state: &AppState,
    c: &Campaign,
    cands: Vec<Candidate>,
    now: i64,
) -> Result<Vec<Candidate>, ApiError> {
    if cands.is_empty() {
        return Ok(Vec::new());
    }
    let history = state.repo.history(&c.id, &cands, now).await?;
    let verdicts = judge(
        c,
        cands,
        &history,
        &dispatcher_config(state),
        &mut ZoneCache::default(),
        now,
    );
    let (dial, other): (Vec<_>, Vec<_>) =
        verdicts.into_iter().partition(|(_, v)| *v == Verdict::Dial);
    let other: Vec<_> = other
        .into_iter()
        .filter(|(_, v)| !matches!(v, Verdict::Skip(_)))
        .collect();
    if !other.is_empty() {
        for (cand, v) in &other {
            tracing::debug!(lead_id = %cand.id, verdict = ?v, "preview lead not dialable now");
        }
        state.repo.queue(c, &other, None, crate::NAME).await?;
    }
    Ok(dial.into_iter().map(|(cand, _)| cand).collect())
}

async fn offer(
    state: &AppState,
    c: &Campaign,
    lead_id: &str,
    held_until: i64,
) -> Result<Response, ApiError> {
    let lead = state
        .repo
        .lead(lead_id)
        .await?
        .ok_or_else(|| ApiError::not_found("lead"))?;
    Ok(Json(NextLead {
        lead,
        campaign: PreviewCampaign {
            id: c.id.clone(),
            name: c.name.clone(),
            team: c.team.clone(),
            mode: c.mode,
            caller_id: c.caller_id.clone(),
            dispositions: c.dispositions.clone(),
        },
        held_until,
    })
    .into_response())
}

/// The agent's hold, if it is still worth offering: a lead they hold of a
/// campaign they may still work, still dialable. Otherwise the hold is
/// dropped.
async fn still_held(
    state: &AppState,
    who: &Principal,
    teams: &[String],
    now: i64,
) -> Result<Option<(Campaign, String)>, ApiError> {
    let Some(h) = state.repo.held_by(&who.sub, now).await? else {
        return Ok(None);
    };
    let c = state
        .repo
        .campaign(&h.campaign_id)
        .await?
        .filter(|c| workable(c, teams));
    if let Some(c) = c {
        if let Some(cand) = state.repo.candidate(&h.lead_id).await? {
            if !dialable(state, &c, vec![cand], now).await?.is_empty() {
                return Ok(Some((c, h.lead_id)));
            }
        }
    }
    state.repo.release_hold(&h.lead_id, &who.sub, None).await?;
    Ok(None)
}

/// Gives the calling agent the next lead of the running `preview`
/// campaigns of their teams (highest priority first; in a campaign,
/// callbacks first, then by priority and due time), held for them for five
/// minutes; a lead owned by, or booked as a callback for, another agent is
/// never offered. Only leads the dispatcher would dial now are offered.
/// Asking while holding a lead returns that lead. 204 when there is none.
#[utoipa::path(post, path = "/v1/agents/me/next-lead", security(("bearer" = [])),
    responses((status = 200, body = NextLead), (status = 204, description = "no lead to offer now"), (status = 403, body = ErrorBody)))]
pub(super) async fn next_lead(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Response, ApiError> {
    who.require(AGENT)?;
    let teams = teams_of(&state, &who).await?;
    let now = dialstack_common::now_ms();
    let until = now + PREVIEW_HOLD_MS;
    if let Some((c, lead_id)) = still_held(&state, &who, &teams, now).await? {
        if state.repo.take_hold(&lead_id, &who.sub, now, until).await? {
            return offer(&state, &c, &lead_id, until).await;
        }
    }
    for c in state.repo.preview_campaigns(&teams).await? {
        for _ in 0..LOOKS {
            let cands = state
                .repo
                .preview_candidates(&c.id, &who.sub, now, BATCH)
                .await?;
            if cands.is_empty() {
                break;
            }
            for cand in dialable(&state, &c, cands, now).await? {
                if state.repo.take_hold(&cand.id, &who.sub, now, until).await? {
                    tracing::info!(lead_id = %cand.id, campaign_id = %c.id, agent_id = %who.sub, "preview lead held");
                    return offer(&state, &c, &cand.id, until).await;
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The lead `who` holds (or held last: a lapsed hold nobody took since
/// still counts), with its campaign; anything else is a 404.
async fn my_hold(
    state: &AppState,
    who: &Principal,
    lead_id: &str,
) -> Result<(Hold, Campaign), ApiError> {
    if !crate::domain::name_ok(lead_id) {
        return Err(ApiError::not_found("lead"));
    }
    let h = state
        .repo
        .hold(lead_id)
        .await?
        .filter(|h| h.agent_id.as_deref() == Some(who.sub.as_str()))
        .ok_or_else(|| ApiError::not_found("lead"))?;
    let c = state
        .repo
        .campaign(&h.campaign_id)
        .await?
        .ok_or_else(|| ApiError::not_found("lead"))?;
    Ok((h, c))
}

/// Dials the lead the calling agent holds: an attempt and a `dial` command
/// written exactly as the dispatcher writes them, with a bridge that names
/// the agent (media-processor calls the agent first, then the customer).
/// The lead is judged once more first: one that is no longer dialable (the
/// window closed, the number went on a DNC list, ...) is put off or closed
/// and refused with 409. A lead the agent does not hold is a 404.
#[utoipa::path(post, path = "/v1/leads/{id}/dial", security(("bearer" = [])),
    responses((status = 202, body = PreviewDial), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn dial_lead(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.require(AGENT)?;
    let (h, c) = my_hold(&state, &who, &id).await?;
    if h.state != "pending" {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("lead is {}: it cannot be dialed", h.state),
        ));
    }
    if c.state() != CampaignState::Running || c.mode != DialMode::Preview {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "campaign is {} in {} mode: its leads are not dialed by agents now",
                c.state, c.mode
            ),
        ));
    }
    let now = dialstack_common::now_ms();
    // Renewed first, so that nobody takes it while it is judged and queued.
    if !state
        .repo
        .take_hold(&id, &who.sub, now, now + PREVIEW_HOLD_MS)
        .await?
    {
        return Err(ApiError::not_found("lead"));
    }
    let cand = state
        .repo
        .candidate(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("lead"))?;
    let history = state
        .repo
        .history(&c.id, std::slice::from_ref(&cand), now)
        .await?;
    let verdicts = judge(
        &c,
        vec![cand],
        &history,
        &dispatcher_config(&state),
        &mut ZoneCache::default(),
        now,
    );
    if let Some((_, v)) = verdicts.first().filter(|(_, v)| *v != Verdict::Dial) {
        let why = match v {
            Verdict::Wait { why, .. } | Verdict::Close { why, .. } | Verdict::Skip(why) => {
                why.as_str()
            }
            Verdict::Dial => "dialable",
        };
        state.repo.queue(&c, &verdicts, None, crate::NAME).await?;
        state.repo.release_hold(&id, &who.sub, None).await?;
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("lead is not dialable now: {why}"),
        ));
    }
    let bridge = c.settings().bridge().map(|mut b| {
        b.agent_id = Some(who.sub.clone());
        b
    });
    if let Some(b) = &bridge {
        b.validate()
            .map_err(|e| ApiError::invalid(e.field, e.reason))?;
    }
    let queued = state
        .repo
        .queue_with(&c, &verdicts, None, crate::NAME, bridge)
        .await?;
    state.repo.release_hold(&id, &who.sub, None).await?;
    let Some((_, attempt_id, call_id)) = queued.and_then(|(_, ids)| ids.into_iter().next()) else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "lead is no longer pending",
        ));
    };
    state.relay.notify();
    tracing::info!(lead_id = %id, %attempt_id, %call_id, agent_id = %who.sub, "preview lead dialed");
    Ok((
        StatusCode::ACCEPTED,
        Json(PreviewDial {
            lead_id: id,
            attempt_id,
            call_id,
        }),
    )
        .into_response())
}

/// Skips the lead the calling agent holds: the hold ends, the reason is
/// kept on the lead, and the lead stays pending but is offered to nobody
/// for ten minutes (no attempt is counted). A lead the agent does not hold
/// is a 404.
#[utoipa::path(post, path = "/v1/leads/{id}/skip", request_body = SkipRequest, security(("bearer" = [])),
    responses((status = 200, body = Lead), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn skip_lead(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.require(AGENT)?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "reason") {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let reason = match obj.get("reason") {
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(ApiError::invalid("reason", "must be a string")),
        None => return Err(ApiError::invalid("reason", "is required")),
    };
    if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "reason",
            "must be 1-200 characters without control characters",
        ));
    }
    let (h, _) = my_hold(&state, &who, &id).await?;
    if h.state != "pending" {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("lead is {}: nothing to skip", h.state),
        ));
    }
    let due = dialstack_common::now_ms() + SKIP_DELAY_MS;
    if !state
        .repo
        .release_hold(&id, &who.sub, Some((due, &reason)))
        .await?
    {
        return Err(ApiError::not_found("lead"));
    }
    tracing::info!(lead_id = %id, agent_id = %who.sub, %reason, "preview lead skipped");
    let lead = state
        .repo
        .lead(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("lead"))?;
    Ok(Json(lead).into_response())
}
