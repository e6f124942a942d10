//! A campaign's abandon ledger (JSON and CSV) and its live view (JSON, and
//! Server-Sent Events for wallboards). Scoped like every campaign read:
//! admins, and supervisors of the campaign's team.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::campaigns::visible;
use super::MANAGE;
use crate::db::ledger::{LedgerDay, WINDOW_DAYS};
use crate::db::presence::Presence;
use crate::db::Campaign;
use crate::domain::campaign::DialMode;
use crate::domain::dialing::AbandonCounts;
use crate::AppState;

/// Live streams open at once per process by default
/// (`DIALSTACK_MAX_LIVE_STREAMS`).
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// Time between two live snapshots on a stream.
pub const STREAM_PERIOD: Duration = Duration::from_secs(1);
/// Most agents listed in a live view (the counts cover every agent).
pub const MAX_LISTED_AGENTS: i64 = 500;

/// The live streams of a process: how many more may open, and the token
/// that ends them all at shutdown.
#[derive(Clone)]
pub struct LiveStreams {
    /// Streams that may still open.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Cancelled on shutdown: every stream ends.
    pub shutdown: CancellationToken,
}

impl LiveStreams {
    /// At most `max` streams at once, ended by `shutdown`.
    pub fn new(max: usize, shutdown: CancellationToken) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            shutdown,
        }
    }
}

/// Counts of one window with their ratio, and the same with an estimate
/// of the people machine detection took for machines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    /// Calls answered by a person (abandoned ones included, and those
    /// machine detection could not classify).
    pub live: i64,
    /// Of those, abandoned.
    pub abandoned: i64,
    /// `abandoned / live` as a fraction (0 without live calls): what the
    /// pacer and the cap go by.
    pub ratio: f64,
    /// Calls machine detection classified as machines (not live).
    pub machine: i64,
    /// Of the live calls, those machine detection could not classify
    /// (`amd_unsure`).
    pub amd_unsure: i64,
    /// People likely taken for machines: `machine ×
    /// DIALSTACK_AMD_FALSE_MACHINE_RATE` (an estimate; regulators count a
    /// person hung up on as an abandoned call).
    pub estimated_abandoned_by_amd: f64,
    /// `(abandoned + estimate) / (live + estimate)` in percent (0 without
    /// calls): the abandon rate counting the estimate. A report figure;
    /// dialing is paced by `ratio`.
    pub abandon_rate_with_amd_pct: f64,
}

impl WindowView {
    /// The view of `c`, with machine detection's estimate at
    /// `false_machine_rate`.
    pub fn of(c: AbandonCounts, false_machine_rate: f64) -> Self {
        let e = c.with_amd_estimate(false_machine_rate);
        Self {
            live: c.live,
            abandoned: c.abandoned,
            ratio: c.ratio(),
            machine: c.machine,
            amd_unsure: c.amd_unsure,
            estimated_abandoned_by_amd: e.estimated_abandoned_by_amd,
            abandon_rate_with_amd_pct: e.abandon_rate_with_amd_pct,
        }
    }
}

/// `GET /v1/campaigns/{id}/abandon`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AbandonReport {
    /// The campaign.
    pub campaign_id: String,
    /// Its cap, in percent of live-answered calls.
    pub cap_pct: f64,
    /// The days are UTC calendar days.
    pub timezone: String,
    /// Today (UTC).
    pub today: WindowView,
    /// Today and the 29 days before.
    pub last_30_days: WindowView,
    /// The share of people machine detection is assumed to take for
    /// machines (`DIALSTACK_AMD_FALSE_MACHINE_RATE`), behind
    /// `estimated_abandoned_by_amd`.
    pub amd_false_machine_rate: f64,
    /// Days with answered calls (by a person or a machine) in the asked
    /// range, oldest first.
    pub days: Vec<LedgerDay>,
}

/// `GET /v1/campaigns/{id}/abandon` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AbandonParams {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Days listed, today included (1-366, default 30).
    pub days: Option<i64>,
}

async fn report(state: &AppState, c: &Campaign, days: i64) -> Result<AbandonReport, ApiError> {
    let now = dialstack_common::now_ms();
    let w = state
        .repo
        .abandon_windows(&[c.id.as_str()], now)
        .await?
        .remove(&c.id)
        .unwrap_or_default();
    Ok(AbandonReport {
        campaign_id: c.id.clone(),
        cap_pct: c.abandon_cap_pct,
        timezone: "UTC".into(),
        today: WindowView::of(w.today, state.amd_false_machine_rate),
        last_30_days: WindowView::of(w.last_30_days, state.amd_false_machine_rate),
        amd_false_machine_rate: state.amd_false_machine_rate,
        days: state.repo.ledger_days(&c.id, now, days).await?,
    })
}

/// RFC 4180: a header row, CRLF line ends (the fields never need quotes:
/// dates and numbers). The machine counts come after the original four
/// columns, so readers of those keep working.
fn csv(days: &[LedgerDay]) -> String {
    let mut out = String::from("date,live,abandoned,ratio,machine,amd_unsure\r\n");
    for d in days {
        out.push_str(&format!(
            "{},{},{},{:.6},{},{}\r\n",
            d.date, d.live, d.abandoned, d.ratio, d.machine, d.amd_unsure
        ));
    }
    out
}

fn csv_response(id: &str, days: &[LedgerDay]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"abandon-{id}.csv\""),
            ),
        ],
        csv(days),
    )
        .into_response()
}

fn days_param(days: Option<i64>) -> Result<i64, ApiError> {
    let d = days.unwrap_or(WINDOW_DAYS);
    if !(1..=366).contains(&d) {
        return Err(ApiError::invalid("days", "must be 1-366"));
    }
    Ok(d)
}

/// The campaign's abandon ledger: live-answered and abandoned calls today
/// (UTC calendar day) and over the last 30 days, and per day; calls
/// machine detection classified as machines or could not classify, with
/// an estimate of the people among the machines
/// (`DIALSTACK_AMD_FALSE_MACHINE_RATE`) and the abandon rate counting them;
/// `?format=csv` for one CSV row per day.
#[utoipa::path(get, path = "/v1/campaigns/{id}/abandon", params(AbandonParams), security(("bearer" = [])),
    responses((status = 200, body = AbandonReport, description = "JSON, or text/csv with `format=csv`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn abandon(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<AbandonParams>,
) -> Result<Response, ApiError> {
    who.require(MANAGE)?;
    let days = days_param(p.days)?;
    let as_csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "must be json or csv")),
    };
    let c = visible(&state, &who, &id).await?;
    let r = report(&state, &c, days).await?;
    Ok(if as_csv {
        csv_response(&c.id, &r.days)
    } else {
        ApiJson(r).into_response()
    })
}

/// `GET /v1/campaigns/{id}/abandon.csv` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CsvParams {
    /// Days listed, today included (1-366, default 30).
    pub days: Option<i64>,
}

/// The abandon ledger as CSV: `date,live,abandoned,ratio,machine,amd_unsure`,
/// one row per UTC day with answered calls.
#[utoipa::path(get, path = "/v1/campaigns/{id}/abandon.csv", params(CsvParams), security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn abandon_csv(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<CsvParams>,
) -> Result<Response, ApiError> {
    who.require(MANAGE)?;
    let days = days_param(p.days)?;
    let c = visible(&state, &who, &id).await?;
    let r = report(&state, &c, days).await?;
    Ok(csv_response(&c.id, &r.days))
}

/// The campaign's team's agents.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveAgents {
    /// Agents per state (`offline`, `available`, `reserved`, `on_call`,
    /// `wrap_up`, `paused`).
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// Agents that take calls now (available, or reserved for a waiting
    /// call).
    pub ready: i64,
    /// Agents logged in.
    pub logged_in: i64,
    /// The agents logged in, longest in their state first (at most 500).
    pub agents: Vec<Presence>,
}

/// Calls in flight.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct LiveCalls {
    /// Dial command sent, no INVITE yet.
    pub queued: i64,
    /// Ringing (INVITE out, not answered).
    pub ringing: i64,
    /// Answered, waiting for an agent (always 0 for `ivr`: its answered
    /// calls count as talking, to the prompt).
    pub waiting: i64,
    /// Talking (with an agent, or with the prompt for `ivr`).
    pub talking: i64,
}

/// `GET /v1/campaigns/{id}/live`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveView {
    /// The campaign.
    pub campaign_id: String,
    /// Its state.
    pub state: String,
    /// Its dialing mode.
    pub mode: DialMode,
    /// When this view was taken (ms since epoch).
    pub at_ms: i64,
    /// The team's agents (empty without a team).
    pub agents: LiveAgents,
    /// Calls in flight.
    pub calls: LiveCalls,
    /// The abandon cap (percent).
    pub abandon_cap_pct: f64,
    /// Abandons today (UTC).
    pub abandon_today: WindowView,
    /// Abandons over 30 days.
    pub abandon_30_days: WindowView,
    /// Calls not yet with an agent per ready agent; `null` without ready
    /// agents.
    pub dial_level: Option<f64>,
    /// Leads still to dial (pending, due now or later).
    pub leads_left: i64,
}

async fn live_view(state: &AppState, c: &Campaign) -> Result<LiveView, ApiError> {
    let now = dialstack_common::now_ms();
    let mut phases = state.repo.call_phases(&c.id).await?;
    if c.mode == DialMode::Ivr {
        phases.talking += phases.waiting;
        phases.waiting = 0;
    }
    let agents = match c.team.as_deref() {
        Some(team) => {
            let t = state.repo.team_agents(team).await?;
            LiveAgents {
                by_state: t
                    .by_state
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                ready: t.ready,
                logged_in: t.logged_in,
                agents: state.repo.team_presence(team, MAX_LISTED_AGENTS).await?,
            }
        }
        None => LiveAgents {
            by_state: Default::default(),
            ready: 0,
            logged_in: 0,
            agents: Vec::new(),
        },
    };
    let w = state
        .repo
        .abandon_windows(&[c.id.as_str()], now)
        .await?
        .remove(&c.id)
        .unwrap_or_default();
    let leads_left: i64 =
        sqlx::query("SELECT COUNT(*) FROM leads WHERE campaign_id = ? AND state = 'pending'")
            .bind(&c.id)
            .fetch_one(&state.repo.db.pool)
            .await?
            .try_get(0)?;
    let dial_level = (agents.ready > 0)
        .then(|| (phases.queued + phases.ringing + phases.waiting) as f64 / agents.ready as f64);
    Ok(LiveView {
        campaign_id: c.id.clone(),
        state: c.state.clone(),
        mode: c.mode,
        at_ms: now,
        agents,
        calls: LiveCalls {
            queued: phases.queued,
            ringing: phases.ringing,
            waiting: phases.waiting,
            talking: phases.talking,
        },
        abandon_cap_pct: c.abandon_cap_pct,
        abandon_today: WindowView::of(w.today, state.amd_false_machine_rate),
        abandon_30_days: WindowView::of(w.last_30_days, state.amd_false_machine_rate),
        dial_level,
        leads_left,
    })
}

/// The campaign now: its team's agents by state, calls ringing, waiting
/// for an agent and talking, abandon ratios today and over 30 days, dial
/// level and leads left.
#[utoipa::path(get, path = "/v1/campaigns/{id}/live", security(("bearer" = [])),
    responses((status = 200, body = LiveView), (status = 404, body = ErrorBody)))]
pub(super) async fn live(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<LiveView>, ApiError> {
    who.require(MANAGE)?;
    let c = visible(&state, &who, &id).await?;
    Ok(ApiJson(live_view(&state, &c).await?))
}

/// The live view as Server-Sent Events: a `live` event with a [`LiveView`]
/// at once and every second, until the client leaves or the service stops.
/// At most `DIALSTACK_MAX_LIVE_STREAMS` (64) streams per process: 503
/// beyond.
#[utoipa::path(get, path = "/v1/campaigns/{id}/live/stream", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = LiveView),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn live_stream(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.require(MANAGE)?;
    let c = visible(&state, &who, &id).await?;
    let permit = state
        .live
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "too many live streams open"))?;
    let stream = futures_util::stream::unfold(
        (state, c, permit, true),
        |(state, c, permit, first)| async move {
            if !first {
                tokio::select! {
                    _ = state.live.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(STREAM_PERIOD) => {}
                }
            }
            // The settings may change while the stream is open.
            let c = match state.repo.campaign(&c.id).await {
                Ok(Some(fresh)) => fresh,
                Ok(None) => return None,
                Err(_) => c,
            };
            let event = match live_view(&state, &c).await {
                Ok(v) => Event::default()
                    .event("live")
                    .json_data(&v)
                    .unwrap_or_else(|_| Event::default().event("error").data("unavailable")),
                Err(e) => {
                    tracing::warn!(campaign_id = %c.id, error = %e.message, "live snapshot failed");
                    Event::default().event("error").data("unavailable")
                }
            };
            Some((Ok::<_, Infallible>(event), (state, c, permit, false)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_crlf_rows() {
        let days = vec![LedgerDay {
            date: "2025-01-02".into(),
            live: 3,
            abandoned: 1,
            ratio: 1.0 / 3.0,
            machine: 7,
            amd_unsure: 2,
        }];
        assert_eq!(
            csv(&days),
            "date,live,abandoned,ratio,machine,amd_unsure\r\n2025-01-02,3,1,0.333333,7,2\r\n"
        );
        assert_eq!(csv(&[]), "date,live,abandoned,ratio,machine,amd_unsure\r\n");
    }
}
