//! The wallboard: `GET /v1/wallboard` streams a snapshot every few seconds
//! as Server-Sent Events (calls ringing and talking, agents by state and
//! team, failure rate and abandon ratio per campaign over five minutes,
//! alerts firing), and
//! `GET /wallboard` serves the static page that renders it (no build step;
//! the page asks for a token and reads the stream with `fetch`).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dialstack_common::auth::{Principal, Role};
use dialstack_common::http::{ApiError, ErrorBody, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::agents::{fold_teams, ByState, MAX_TEAM_LABELS};
use crate::AppState;

/// Window of the per-campaign rates.
pub const WINDOW_MS: i64 = 300_000;
/// Wallboards open at once per replica.
pub const MAX_STREAMS: usize = 64;

/// One campaign on the wallboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignBoard {
    /// The campaign.
    pub campaign_id: String,
    /// Its team.
    pub team: Option<String>,
    /// Calls dialing or ringing.
    pub ringing: i64,
    /// Calls answered and not yet ended.
    pub talking: i64,
    /// Calls completed in the window.
    pub completed: i64,
    /// Failures over completed calls in the window.
    pub failure_rate: f64,
    /// Abandoned over live-answered calls in the window.
    pub abandon_ratio: f64,
}

/// An alert firing.
#[derive(Debug, Serialize, ToSchema)]
pub struct FiringAlert {
    /// The rule.
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Since (ms).
    pub since_ms: i64,
}

/// One team's agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamAgents {
    /// The team (`none`: agents of no team; `other`: the teams beyond the
    /// 200 largest, summed).
    pub team: String,
    /// Its agents by state (`available`, `reserved`, `on_call`,
    /// `wrap_up`, `paused`, `offline`, each present).
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_state: ByState,
}

/// Agents by state, from `agent.state` events (each agent's latest).
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentsBoard {
    /// Every agent in scope once, by state (each state present).
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_state: ByState,
    /// Per team (an agent counts in each of its teams), by team name.
    pub teams: Vec<TeamAgents>,
}

/// One snapshot of the wallboard (the `data` of each `wallboard` event).
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    /// When it was taken (ms).
    pub at_ms: i64,
    /// Window of the rates (s).
    pub window_seconds: i64,
    /// Calls dialing or ringing, all campaigns.
    pub ringing: i64,
    /// Calls talking, all campaigns.
    pub talking: i64,
    /// Agents by state, in all and per team.
    pub agents: AgentsBoard,
    /// Per campaign, with calls in progress or completed in the window.
    pub campaigns: Vec<CampaignBoard>,
    /// Alerts firing.
    pub alerts: Vec<FiringAlert>,
}

async fn snapshot(state: &AppState, teams: Option<&[String]>) -> Result<Snapshot, ApiError> {
    let now = dialstack_common::now_ms();
    let mut boards: BTreeMap<String, CampaignBoard> = BTreeMap::new();
    let board = |boards: &mut BTreeMap<String, CampaignBoard>, id: &str, team: &Option<String>| {
        boards
            .entry(id.to_owned())
            .or_insert_with(|| CampaignBoard {
                campaign_id: id.to_owned(),
                team: team.clone(),
                ringing: 0,
                talking: 0,
                completed: 0,
                failure_rate: 0.0,
                abandon_ratio: 0.0,
            });
    };
    for (id, team, active, answered) in state.repo.active_by_campaign(teams).await? {
        board(&mut boards, &id, &team);
        if let Some(b) = boards.get_mut(&id) {
            b.ringing += active - answered;
            b.talking += answered;
        }
    }
    let mut per: BTreeMap<String, crate::domain::Counts> = BTreeMap::new();
    for c in state
        .repo
        .counts_since(now - WINDOW_MS, None, teams)
        .await?
    {
        board(&mut boards, &c.campaign_id, &c.team);
        per.entry(c.campaign_id.clone()).or_default().add(&c.counts);
    }
    for (id, c) in per {
        if let Some(b) = boards.get_mut(&id) {
            b.completed = c.total();
            b.failure_rate = c.failure_rate();
            b.abandon_ratio = c.abandon_ratio();
        }
    }
    let alerts = state
        .repo
        .open_alerts()
        .await?
        .into_iter()
        .filter(|a| a.state == crate::domain::lifecycle::AlertState::Firing)
        .filter(|a| teams.is_none_or(|t| a.labels.get("team").is_none_or(|team| t.contains(team))))
        .map(|a| FiringAlert {
            rule: a.rule,
            severity: a.severity,
            labels: a.labels,
            since_ms: a.started_at,
        })
        .collect();
    let campaigns: Vec<CampaignBoard> = boards.into_values().collect();
    let agents = AgentsBoard {
        by_state: state.repo.agents_by_state(teams).await?,
        teams: fold_teams(&state.repo.agents_by_team(teams).await?, MAX_TEAM_LABELS)
            .into_iter()
            .map(|(team, by_state)| TeamAgents { team, by_state })
            .collect(),
    };
    Ok(Snapshot {
        at_ms: now,
        window_seconds: WINDOW_MS / 1000,
        ringing: campaigns.iter().map(|c| c.ringing).sum(),
        talking: campaigns.iter().map(|c| c.talking).sum(),
        agents,
        campaigns,
        alerts,
    })
}

/// The live wallboard as Server-Sent Events: a `wallboard` event with a
/// [`Snapshot`] at once and every `DIALSTACK_WALLBOARD_MS` (2 s). Supervisors see their teams'
/// campaigns.
#[utoipa::path(get, path = "/v1/wallboard", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = Snapshot),
        (status = 503, body = ErrorBody)))]
pub async fn wallboard(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Response, ApiError> {
    let permit = state
        .wallboards
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "too many wallboards open"))?;
    let teams = (who.role == Role::Supervisor).then(|| who.teams.clone());
    let stream = futures_util::stream::unfold(
        (state, teams, permit, true),
        |(state, teams, permit, first)| async move {
            if !first {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(state.wallboard_period) => {}
                }
            }
            let event = match snapshot(&state, teams.as_deref()).await {
                Ok(s) => Event::default()
                    .event("wallboard")
                    .json_data(&s)
                    .unwrap_or_else(|_| Event::default().event("error").data("unavailable")),
                Err(e) => {
                    tracing::warn!(error = %e.message, "wallboard snapshot failed");
                    Event::default().event("error").data("unavailable")
                }
            };
            Some((Ok::<_, Infallible>(event), (state, teams, permit, false)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The page.
const PAGE: &str = include_str!("wallboard.html");

/// `GET /wallboard`: the static page (public; the data needs a token).
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}
