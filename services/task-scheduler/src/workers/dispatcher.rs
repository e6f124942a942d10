//! The dispatcher: one per deployment, chosen by a lease in the database.
//!
//! Each round the leader works out how many dials each running campaign
//! may start (its own token bucket and concurrency cap), splits the
//! deployment's bucket (`DIALSTACK_MAX_CPS`) among them by weight, fetches
//! that many leads next in line per campaign, judges each with
//! [`eligibility`], and writes the batch in one transaction that first
//! checks the lease is still held. A replica that loses the lease (it
//! paused past the lease, or the database said so) writes nothing more;
//! one that dies is replaced when its lease runs out.
//!
//! Campaigns with agents add a limit on top of the rate and the fair share
//! ([`AgentPacing`]): `preview` campaigns are never dialed here (agents
//! dial them); `progressive` ones keep calls not yet with an agent at most
//! ready agents × `dial_ratio`; `predictive` ones ask their pacer. Either
//! falls back to one call per ready agent at 80 % of the abandon cap (today
//! or 30 days, from the ledger) and stops at the cap.
//!
//! The cap and the pacers go by the ledger's plain abandon rate (abandoned
//! over live calls, `amd_unsure` counted live): what is known. The
//! estimate of people machine detection took for machines
//! (`DIALSTACK_AMD_FALSE_MACHINE_RATE`) is a figure of the abandon report
//! only; it assumes a rate, and pacing on an assumption would hide it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialstack_common::db::OutboxRelay;
use dialstack_dialrules::guard::DestinationGuard;
use dialstack_dialrules::zones::parse_zone;
use dialstack_dialrules::Zone;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use dialstack_contract::{CallCompleted, Outcome};
use prometheus::{GaugeVec, IntCounterVec, Opts};

use crate::db::dispatch::{CallPhases, DISPATCHER_LEASE};
use crate::db::ledger::Windows;
use crate::db::{Campaign, Candidate, Repo};
use crate::domain::campaign::DialMode;
use crate::domain::compliance::{eligibility, CampaignRules, DeploymentRules, LeadFacts, Verdict};
use crate::domain::dialing::{AgentStatus, Throttle};
use crate::domain::pacing::{
    AbandonStats, BusyAgent, BusyState, DialPacer, PacingEvent, PacingObservation, PacingSnapshot,
    Predictive, Progressive,
};
use crate::domain::state::LeadState;
use crate::domain::{FairShare, Pacer};

/// Most leads one campaign queues in one transaction.
pub const MAX_BATCH: u64 = 500;

/// How the dispatcher runs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Calls per second across all campaigns (`DIALSTACK_MAX_CPS`).
    pub max_cps: f64,
    /// How long the lease lasts without renewal (`DIALSTACK_LEADER_LEASE_MS`).
    pub lease_ttl: Duration,
    /// This replica's name in the lease.
    pub holder: String,
    /// Allowed and denied destinations.
    pub guard: Arc<DestinationGuard>,
    /// Most attempts per number per 24 h across campaigns.
    pub number_daily_cap: Option<u32>,
}

/// The dispatcher's metrics.
#[derive(Clone)]
pub struct DispatchMetrics {
    /// `dialstack_campaign_abandon_ratio{campaign,window}`: running
    /// campaigns only, so the label stays bounded.
    pub abandon_ratio: GaugeVec,
    /// `dialstack_campaign_abandon_throttles_total{level}`: campaigns that
    /// entered `near_cap` (one call per agent) or `at_cap` (no new calls).
    pub throttles: IntCounterVec,
}

impl DispatchMetrics {
    /// Creates the collectors and registers them with `m`.
    pub fn register(m: &dialstack_common::metrics::Metrics) -> Self {
        let abandon_ratio = GaugeVec::new(
            Opts::new(
                "dialstack_campaign_abandon_ratio",
                "abandoned over live-answered calls of a running campaign, today (UTC) and over 30 days",
            ),
            &["campaign", "window"],
        )
        .expect("valid metric");
        let throttles = IntCounterVec::new(
            Opts::new(
                "dialstack_campaign_abandon_throttles_total",
                "times a campaign's dialing was slowed (near_cap) or stopped (at_cap) by its abandon cap",
            ),
            &["level"],
        )
        .expect("valid metric");
        Self {
            abandon_ratio: m.register(&abandon_ratio),
            throttles: m.register(&throttles),
        }
    }

    /// Collectors registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&dialstack_common::metrics::Metrics::new("unregistered"))
    }
}

/// What the event consumer tells the dispatcher's pacers.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A call completed (its ring, answer, agent leg and talk times).
    Completed(Box<CallCompleted>),
    /// An agent of `teams` left wrap-up after `wrap_ms`.
    WrapEnded {
        /// The agent's teams.
        teams: Vec<String>,
        /// When (ms since epoch).
        at_ms: i64,
        /// How long the wrap-up lasted.
        wrap_ms: i64,
    },
}

/// Completed calls and ended wrap-ups the event consumer hands to the
/// dispatcher's pacers (bounded: the oldest are dropped). With several
/// replicas each hears what its consumer took: the leader's pacers learn
/// from a sample, and the abandon ledger (in the database) keeps them
/// under the cap whatever they miss.
#[derive(Clone, Default)]
pub struct Observations(Arc<Mutex<VecDeque<Observed>>>);

/// Most observations waiting for the dispatcher.
const MAX_OBSERVATIONS: usize = 10_000;

impl Observations {
    /// Adds one observation.
    pub fn push(&self, c: Observed) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_OBSERVATIONS {
            q.pop_front();
        }
        q.push_back(c);
    }

    /// Takes every waiting one.
    pub fn drain(&self) -> Vec<Observed> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// What the dispatcher keeps about campaigns with agents between rounds.
#[derive(Default)]
pub struct AgentPacing {
    /// Abandon counts by campaign, read from the ledger every round, after
    /// the calls in flight: a call that completed and left the count of
    /// calls in flight is always in the ledger read after it.
    windows: HashMap<String, Windows>,
    /// The throttle each campaign was in last round (logged and counted on
    /// change).
    throttles: HashMap<String, Throttle>,
    /// Campaigns held back by agents or the cap (not by the rate) in the
    /// last round: the dispatcher waits for an event rather than polling.
    blocked: HashSet<String>,
    /// One pacer per running campaign with agents, kept across rounds so
    /// that the predictive one learns.
    pacers: HashMap<String, CampaignPacer>,
}

/// A campaign's pacer and what it was made for.
struct CampaignPacer {
    mode: DialMode,
    ratio: f64,
    team: Option<String>,
    abandon_after_ms: i64,
    pacer: Box<dyn DialPacer>,
}

impl CampaignPacer {
    fn new(c: &Campaign) -> Self {
        let pacer: Box<dyn DialPacer> = match c.mode {
            DialMode::Predictive => Box::new(Predictive::default()),
            _ => Box::new(Progressive::new(c.dial_ratio)),
        };
        Self {
            mode: c.mode,
            ratio: c.dial_ratio,
            team: c.team.clone(),
            abandon_after_ms: c.abandon_after_ms,
            pacer,
        }
    }

    /// Still the pacer `c` asks for (a predictive one keeps what it learnt
    /// across changes of settings it does not read).
    fn fits(&self, c: &Campaign) -> bool {
        self.mode == c.mode
            && self.team == c.team
            && (c.mode == DialMode::Predictive || self.ratio == c.dial_ratio)
    }
}

fn ms(v: i64) -> u64 {
    v.max(0) as u64
}

/// What a pacer learns from a completed call: its ring (answered by a
/// person or not), and for a person the bridge or the abandon and the
/// agent's talk. Canceled calls (ours) teach nothing.
pub fn call_observations(c: &CallCompleted, abandon_after_ms: i64) -> Vec<PacingObservation> {
    let person = match c.outcome {
        Outcome::Canceled => return Vec::new(),
        // Machine detection could not tell: the call went on as a person's.
        Outcome::AnsweredHuman | Outcome::Abandoned | Outcome::AmdUnsure => true,
        _ => false,
    };
    let end = c.call.at_ms;
    let talk = if person { c.talk_ms.max(0) } else { 0 };
    let answered_at = end - talk;
    let placed_at = answered_at - c.ring_ms.max(0);
    let mut out = vec![PacingObservation {
        at_ms: ms(answered_at),
        event: PacingEvent::RingEnded {
            placed_at_ms: ms(placed_at),
            ring_ms: ms(c.ring_ms),
            answered: person,
        },
    }];
    match (c.outcome, &c.agent) {
        (Outcome::Abandoned, leg) => {
            let wait = leg.as_ref().map_or(abandon_after_ms, |a| a.wait_ms);
            out.push(PacingObservation {
                at_ms: ms(answered_at + wait.max(0)),
                event: PacingEvent::Abandoned { wait_ms: ms(wait) },
            });
        }
        (Outcome::AnsweredHuman | Outcome::AmdUnsure, Some(a)) => {
            out.push(PacingObservation {
                at_ms: ms(answered_at + a.wait_ms.max(0)),
                event: PacingEvent::Connected {
                    wait_ms: ms(a.wait_ms),
                },
            });
            out.push(PacingObservation {
                at_ms: ms(end),
                event: PacingEvent::TalkEnded {
                    talk_ms: ms(a.talk_ms),
                },
            });
        }
        _ => {}
    }
    out
}

impl AgentPacing {
    /// Rereads the ledger (one indexed query for every campaign with
    /// agents).
    async fn refresh(&mut self, repo: &Repo, campaigns: &[Campaign]) -> Result<(), sqlx::Error> {
        let ids: Vec<&str> = campaigns
            .iter()
            .filter(|c| c.mode.uses_agents())
            .map(|c| c.id.as_str())
            .collect();
        self.windows = repo
            .abandon_windows(&ids, dialstack_common::now_ms())
            .await?;
        self.throttles
            .retain(|id, _| campaigns.iter().any(|c| &c.id == id));
        self.pacers.retain(|id, p| {
            campaigns
                .iter()
                .any(|c| &c.id == id && c.mode.uses_agents() && p.fits(c))
        });
        Ok(())
    }

    /// Hands what the event consumer saw to the pacers it concerns.
    fn observe(&mut self, seen: Vec<Observed>) {
        for o in seen {
            match o {
                Observed::Completed(c) => {
                    if let Some(p) = self.pacers.get_mut(&c.call.campaign_id) {
                        for obs in call_observations(&c, p.abandon_after_ms) {
                            p.pacer.observe(&obs);
                        }
                    }
                }
                Observed::WrapEnded {
                    teams,
                    at_ms,
                    wrap_ms,
                } => {
                    let obs = PacingObservation {
                        at_ms: ms(at_ms),
                        event: PacingEvent::WrapEnded {
                            wrap_ms: ms(wrap_ms),
                        },
                    };
                    for p in self.pacers.values_mut() {
                        if p.team.as_ref().is_some_and(|t| teams.contains(t)) {
                            p.pacer.observe(&obs);
                        }
                    }
                }
            }
        }
    }

    /// The campaign as its pacer sees it: the team's agents (ready, busy
    /// since when), its calls ringing (placed when) and waiting, and the
    /// ledger's abandon counts against the cap (the plain rate, without the
    /// report's estimate of people taken for machines).
    async fn snapshot(
        repo: &Repo,
        c: &Campaign,
        team: &str,
        phases: CallPhases,
        w: Windows,
    ) -> Result<PacingSnapshot, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let agents = repo.team_agents(team).await?;
        let mut busy: Vec<BusyAgent> = repo
            .team_busy(team)
            .await?
            .into_iter()
            .map(|(s, since)| BusyAgent {
                state: if s == AgentStatus::WrapUp {
                    BusyState::WrapUp
                } else {
                    BusyState::Talking
                },
                since_ms: ms(since),
            })
            .collect();
        // Agents the attempts show bridged before their own state arrived.
        let takes_calls = agents.by_state.get("available").copied().unwrap_or(0)
            + agents.by_state.get("reserved").copied().unwrap_or(0);
        for _ in 0..(takes_calls - agents.ready).max(0) {
            busy.push(BusyAgent {
                state: BusyState::Talking,
                since_ms: ms(now),
            });
        }
        let ringing_since_ms = if c.mode == DialMode::Predictive {
            repo.ringing_since(&c.id)
                .await?
                .into_iter()
                .map(ms)
                .collect()
        } else {
            vec![ms(now); (phases.queued + phases.ringing).max(0) as usize]
        };
        let minute = now.div_euclid(60_000).rem_euclid(1_440);
        Ok(PacingSnapshot {
            now_ms: ms(now),
            clock_hhmm: u16::try_from(minute / 60 * 100 + minute % 60).unwrap_or(0),
            agents_logged_in: u32::try_from(agents.logged_in.max(0)).unwrap_or(u32::MAX),
            agents_ready: u32::try_from(agents.ready.max(0)).unwrap_or(u32::MAX),
            busy,
            ringing_since_ms,
            calls_waiting: u32::try_from(phases.waiting.max(0)).unwrap_or(u32::MAX),
            abandon: AbandonStats {
                live_today: ms(w.today.live),
                abandoned_today: ms(w.today.abandoned),
                live_30d: ms(w.last_30_days.live),
                abandoned_30d: ms(w.last_30_days.abandoned),
            },
            cap_pct: c.abandon_cap_pct,
        })
    }

    /// How many new calls a campaign with agents may place now, on top of
    /// its rate: `None` for `ivr` (no agent limit).
    async fn limit(
        &mut self,
        repo: &Repo,
        c: &Campaign,
        phases: CallPhases,
        metrics: &DispatchMetrics,
    ) -> Result<Option<u64>, sqlx::Error> {
        match c.mode {
            DialMode::Ivr => return Ok(None),
            DialMode::Preview => return Ok(Some(0)),
            DialMode::Progressive | DialMode::Predictive => {}
        }
        let Some(team) = c.team.as_deref() else {
            tracing::warn!(campaign_id = %c.id, mode = %c.mode, "campaign with agents has no team: not dialed");
            return Ok(Some(0));
        };
        let w = self.windows.get(&c.id).copied().unwrap_or_default();
        let throttle = Throttle::of(c.abandon_cap_pct, w.today.ratio(), w.last_30_days.ratio());
        let before = self.throttles.insert(c.id.clone(), throttle);
        if before != Some(throttle) && (before.is_some() || throttle != Throttle::Open) {
            match throttle {
                Throttle::Open => {
                    tracing::info!(campaign_id = %c.id, "abandon ratio back under 80 % of the cap: pacing resumes")
                }
                _ => {
                    tracing::warn!(
                        campaign_id = %c.id,
                        level = throttle.as_str(),
                        cap_pct = c.abandon_cap_pct,
                        today = w.today.ratio(),
                        last_30_days = w.last_30_days.ratio(),
                        "abandon ratio near or at the cap: dialing throttled"
                    );
                    metrics
                        .throttles
                        .with_label_values(&[throttle.as_str()])
                        .inc();
                }
            }
        }
        if throttle == Throttle::AtCap {
            return Ok(Some(0));
        }
        let snap = Self::snapshot(repo, c, team, phases, w).await?;
        let pacer = self
            .pacers
            .entry(c.id.clone())
            .or_insert_with(|| CampaignPacer::new(c));
        if !pacer.fits(c) {
            *pacer = CampaignPacer::new(c);
        }
        let paced = pacer.pacer.calls_to_place(&snap);
        let allowed = match throttle {
            Throttle::NearCap => paced.min(Progressive::calls(1.0, &snap)),
            _ => paced,
        };
        tracing::trace!(campaign_id = %c.id, pacer = pacer.pacer.name(), ready = snap.agents_ready, unbridged = snap.unbridged(), paced, allowed, "paced");
        Ok(Some(u64::from(allowed)))
    }
}

/// Every few seconds until shutdown, on every replica: sets
/// `dialstack_campaign_abandon_ratio` for the running campaigns (and only
/// them: a campaign that stops running leaves the gauge).
pub async fn run_abandon_gauge(
    repo: Repo,
    metrics: DispatchMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match refresh_abandon_gauge(&repo, &metrics).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "abandon gauge not refreshed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn refresh_abandon_gauge(repo: &Repo, m: &DispatchMetrics) -> Result<(), sqlx::Error> {
    let running = repo.running_campaigns().await?;
    let ids: Vec<&str> = running.iter().map(|c| c.id.as_str()).collect();
    let windows = repo
        .abandon_windows(&ids, dialstack_common::now_ms())
        .await?;
    m.abandon_ratio.reset();
    for id in ids {
        let w = windows.get(id).copied().unwrap_or_default();
        m.abandon_ratio
            .with_label_values(&[id, "today"])
            .set(w.today.ratio());
        m.abandon_ratio
            .with_label_values(&[id, "30d"])
            .set(w.last_30_days.ratio());
    }
    Ok(())
}

/// Zones by their comma-separated names, parsed once.
#[derive(Debug, Default)]
pub struct ZoneCache(HashMap<String, Vec<Zone>>);

impl ZoneCache {
    /// The zones of `names`.
    pub fn get(&mut self, names: &str) -> &[Zone] {
        if self.0.len() > 10_000 {
            self.0.clear();
        }
        self.0.entry(names.to_owned()).or_insert_with(|| {
            names
                .split(',')
                .filter_map(|n| parse_zone(n.trim()).ok())
                .collect()
        })
    }
}

/// Judges every candidate of a campaign at `now_ms`.
pub fn judge(
    c: &Campaign,
    cands: Vec<Candidate>,
    history: &HashMap<String, crate::domain::compliance::History>,
    cfg: &DispatcherConfig,
    zones: &mut ZoneCache,
    now_ms: i64,
) -> Vec<(Candidate, Verdict)> {
    let settings = c.settings();
    let rules = CampaignRules {
        state: c.state(),
        hours: &settings.calling_hours,
        max_attempts: settings.max_attempts,
        max_attempts_per_day: settings.max_attempts_per_day,
    };
    let deployment = DeploymentRules {
        guard: &cfg.guard,
        number_daily_cap: cfg.number_daily_cap,
    };
    cands
        .into_iter()
        .map(|cand| {
            let z = zones.get(&cand.zones).to_vec();
            let facts = LeadFacts {
                state: LeadState::Pending,
                due_at: cand.due_at,
                attempts: cand.attempts.clamp(0, u32::MAX as i64) as u32,
                phone: &cand.phone,
                zones: &z,
            };
            let h = history.get(&cand.id).copied().unwrap_or_default();
            let v = eligibility(now_ms, &facts, &h, &rules, &deployment);
            (cand, v)
        })
        .collect()
}

/// Dispatches up to `n` leads of one campaign now: fetches those next in
/// line, judges them and writes the batch (with the lease check when
/// `lease` names this replica's holder). `None` when the lease was lost.
pub async fn dispatch_campaign(
    repo: &Repo,
    cfg: &DispatcherConfig,
    c: &Campaign,
    n: u64,
    zones: &mut ZoneCache,
    lease: Option<&str>,
) -> Result<Option<crate::db::Queued>, sqlx::Error> {
    let now_ms = dialstack_common::now_ms();
    let cands = repo
        .candidates_with(&c.id, now_ms, n, c.needs_lead_fields())
        .await?;
    if cands.is_empty() {
        tracing::debug!(campaign_id = %c.id, n, now_ms, "no candidates");
        return Ok(Some(crate::db::Queued::default()));
    }
    let history = repo.history(&c.id, &cands, now_ms).await?;
    let verdicts = judge(c, cands, &history, cfg, zones, now_ms);
    let ttl = cfg.lease_ttl.as_millis() as i64;
    repo.queue(c, &verdicts, lease.map(|h| (h, ttl)), crate::NAME)
        .await
}

/// Runs the dispatcher until shutdown; gives the lease up on the way out.
pub async fn run_dispatcher(
    repo: Repo,
    relay: OutboxRelay,
    wake: Arc<Notify>,
    cfg: DispatcherConfig,
    agent_feed: (Observations, DispatchMetrics),
    shutdown: CancellationToken,
) {
    let (observations, metrics) = agent_feed;
    let mut agents = AgentPacing::default();
    let ttl_ms = cfg.lease_ttl.as_millis() as i64;
    let renew_every = cfg.lease_ttl / 3;
    let mut leader = false;
    let mut renewed = Instant::now() - cfg.lease_ttl;
    let mut pacers: HashMap<String, Pacer> = HashMap::new();
    let mut global = Pacer::new(cfg.max_cps, Instant::now());
    let mut share = FairShare::new();
    let mut zones = ZoneCache::default();
    let mut campaigns: Vec<Campaign> = Vec::new();
    let mut loaded = Instant::now() - Duration::from_secs(60);
    let mut completion_checked: HashMap<String, Instant> = HashMap::new();
    // Campaigns that had nothing due: not asked again until then (or woken).
    let mut quiet: HashMap<String, Instant> = HashMap::new();
    loop {
        if !leader || renewed.elapsed() >= renew_every {
            let was = leader;
            leader = match repo
                .acquire_lease(DISPATCHER_LEASE, &cfg.holder, ttl_ms)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take or renew the dispatcher lease");
                    false
                }
            };
            renewed = Instant::now();
            if leader != was {
                if leader {
                    tracing::info!(holder = %cfg.holder, "dispatcher lease taken: this replica dials");
                    global = Pacer::new(cfg.max_cps, Instant::now());
                } else {
                    tracing::warn!(holder = %cfg.holder, "dispatcher lease lost");
                }
                pacers.clear();
                agents = AgentPacing::default();
                loaded = Instant::now() - Duration::from_secs(60);
            }
        }
        if !leader {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(renew_every.min(Duration::from_millis(500))) => {}
            }
            continue;
        }
        if loaded.elapsed() > Duration::from_millis(500) {
            match repo.running_campaigns().await {
                Ok(c) => campaigns = c,
                Err(e) => tracing::warn!(error = %e, "cannot load running campaigns"),
            }
            pacers.retain(|id, _| campaigns.iter().any(|c| &c.id == id));
            loaded = Instant::now();
        }
        let mut again = false;
        agents.observe(observations.drain());
        match round(
            &repo,
            &cfg,
            &campaigns,
            (&mut agents, &metrics),
            &mut pacers,
            &mut global,
            &mut share,
            &mut zones,
            &mut completion_checked,
            &mut quiet,
        )
        .await
        {
            Ok(Round::Lost) => {
                tracing::warn!(holder = %cfg.holder, "dispatcher lease lost mid-round: batch not written");
                leader = false;
                continue;
            }
            Ok(Round::Done {
                queued,
                more,
                reload,
            }) => {
                if queued > 0 || reload {
                    relay.notify();
                }
                again = more;
                if reload {
                    loaded = Instant::now() - Duration::from_secs(60);
                }
            }
            Err(e) => tracing::warn!(error = %e, "dispatch round failed"),
        }
        let mut next = Duration::from_millis(200);
        for (id, p) in &pacers {
            if !agents.blocked.contains(id) {
                next = next.min(p.next_token_in());
            }
        }
        next = next
            .max(global.next_token_in())
            .max(Duration::from_millis(10));
        if again {
            next = Duration::from_millis(1);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Err(e) = repo.release_lease(DISPATCHER_LEASE, &cfg.holder).await {
                    tracing::warn!(error = %e, "cannot release the dispatcher lease");
                }
                return;
            }
            _ = wake.notified() => quiet.clear(),
            _ = tokio::time::sleep(next) => {}
        }
    }
}

enum Round {
    /// The lease was gone when a batch was written.
    Lost,
    /// Dials queued; `more`: leads were put off or closed, look again now;
    /// `reload`: a campaign completed.
    Done {
        queued: u64,
        more: bool,
        reload: bool,
    },
}

#[allow(clippy::too_many_arguments)]
async fn round(
    repo: &Repo,
    cfg: &DispatcherConfig,
    campaigns: &[Campaign],
    (agents, metrics): (&mut AgentPacing, &DispatchMetrics),
    pacers: &mut HashMap<String, Pacer>,
    global: &mut Pacer,
    share: &mut FairShare,
    zones: &mut ZoneCache,
    completion_checked: &mut HashMap<String, Instant>,
    quiet: &mut HashMap<String, Instant>,
) -> Result<Round, sqlx::Error> {
    if campaigns.is_empty() {
        return Ok(Round::Done {
            queued: 0,
            more: false,
            reload: false,
        });
    }
    let phases = repo.call_phases_by_campaign().await?;
    let in_flight: HashMap<String, i64> = phases
        .iter()
        .map(|(id, p)| (id.clone(), p.in_flight()))
        .collect();
    agents.blocked.clear();
    let mut limits: HashMap<&str, u64> = HashMap::new();
    if campaigns.iter().any(|c| c.mode.uses_agents()) {
        agents.refresh(repo, campaigns).await?;
        for c in campaigns {
            let p = phases.get(&c.id).copied().unwrap_or_default();
            if let Some(limit) = agents.limit(repo, c, p, metrics).await? {
                limits.insert(c.id.as_str(), limit);
            }
        }
    }
    let now = Instant::now();
    let budget = global.allowance(now, 0, u64::MAX).min(MAX_BATCH * 4);
    let wants: Vec<(&str, u32, u64)> = campaigns
        .iter()
        .map(|c| {
            let pacer = pacers
                .entry(c.id.clone())
                .or_insert_with(|| Pacer::new(c.max_cps, now));
            let flying = in_flight.get(&c.id).copied().unwrap_or(0).max(0) as u64;
            let resting = quiet.get(&c.id).is_some_and(|until| *until > now);
            let mut want = if resting {
                0
            } else {
                pacer
                    .allowance(now, flying, c.max_concurrent.max(0) as u64)
                    .min(MAX_BATCH)
            };
            if let Some(limit) = limits.get(c.id.as_str()) {
                if *limit < want {
                    want = *limit;
                    agents.blocked.insert(c.id.clone());
                }
            }
            (c.id.as_str(), c.priority.clamp(0, 100) as u32, want)
        })
        .collect();
    let given = share.split(budget, &wants);
    let mut queued = 0;
    let mut more = false;
    let mut completed_any = false;
    for (c, n) in campaigns.iter().zip(given) {
        let q = if n > 0 {
            match dispatch_campaign(repo, cfg, c, n, zones, Some(&cfg.holder)).await {
                Ok(None) => return Ok(Round::Lost),
                Ok(Some(q)) => q,
                Err(e) => {
                    // This campaign's batch is lost, not the round: the
                    // others still get their share, and as it recorded no
                    // dial it is owed its own.
                    tracing::warn!(error = %e, campaign_id = %c.id, "cannot dispatch a batch");
                    continue;
                }
            }
        } else {
            crate::db::Queued::default()
        };
        let weight = c.priority.clamp(0, 100) as u32;
        share.record(&c.id, weight, n, q.dialed);
        if q.dialed + q.waited + q.closed == 0 {
            if n > 0 {
                tracing::debug!(campaign_id = %c.id, given = n, "nothing due");
                quiet.insert(c.id.clone(), Instant::now() + Duration::from_millis(250));
            }
            let flying = in_flight.get(&c.id).copied().unwrap_or(0);
            let due = completion_checked
                .get(&c.id)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
            if flying == 0 && due {
                completion_checked.insert(c.id.clone(), Instant::now());
                if repo.complete_if_done(&c.id, crate::NAME).await? {
                    tracing::info!(campaign_id = %c.id, "campaign completed");
                    completed_any = true;
                }
            }
            continue;
        }
        if let Some(p) = pacers.get_mut(&c.id) {
            p.take(q.dialed);
        }
        global.take(q.dialed);
        queued += q.dialed;
        if q.waited + q.closed > 0 && q.dialed < n {
            more = true;
        }
        if q.dialed > 0 {
            tracing::debug!(campaign_id = %c.id, given = n, dialed = q.dialed, waited = q.waited, closed = q.closed, "leads queued");
        }
    }
    Ok(Round::Done {
        queued,
        more,
        reload: completed_any,
    })
}

#[cfg(test)]
mod tests {
    use dialstack_contract::{AgentLeg, CallRef};

    use super::*;

    fn done(outcome: Outcome, agent: Option<AgentLeg>) -> CallCompleted {
        CallCompleted {
            ring_ms: 4_000,
            talk_ms: 30_000,
            agent: agent.map(Box::new),
            ivr: None,
            amd: None,
            ..CallCompleted::unanswered(
                CallRef {
                    call_id: "c".into(),
                    attempt_id: "a".into(),
                    campaign_id: "k".into(),
                    phone: "+14155550100".into(),
                    at_ms: 100_000,
                    team: Some("east".into()),
                },
                outcome,
                None,
            )
        }
    }

    #[test]
    fn completed_calls_teach_ring_bridge_and_talk() {
        let leg = AgentLeg {
            agent_id: "ann".into(),
            wait_ms: 400,
            ring_ms: 300,
            talk_ms: 29_000,
            tries: 0,
            quality: None,
            transfer: None,
        };
        let obs = call_observations(&done(Outcome::AnsweredHuman, Some(leg)), 2_000);
        let events: Vec<PacingEvent> = obs.iter().map(|o| o.event).collect();
        assert_eq!(
            events,
            [
                PacingEvent::RingEnded {
                    placed_at_ms: 66_000,
                    ring_ms: 4_000,
                    answered: true
                },
                PacingEvent::Connected { wait_ms: 400 },
                PacingEvent::TalkEnded { talk_ms: 29_000 },
            ]
        );
        assert_eq!(obs[0].at_ms, 70_000, "answered when the talk began");
        let obs = call_observations(&done(Outcome::Abandoned, None), 2_000);
        assert_eq!(obs[1].event, PacingEvent::Abandoned { wait_ms: 2_000 });
        let obs = call_observations(&done(Outcome::NoAnswer, None), 2_000);
        assert_eq!(
            obs.iter().map(|o| o.event).collect::<Vec<_>>(),
            [PacingEvent::RingEnded {
                placed_at_ms: 96_000,
                ring_ms: 4_000,
                answered: false
            }]
        );
        assert!(call_observations(&done(Outcome::Canceled, None), 2_000).is_empty());
        // Machine detection unsure: a person, as far as pacing goes.
        let obs = call_observations(&done(Outcome::AmdUnsure, None), 2_000);
        assert_eq!(
            obs[0].event,
            PacingEvent::RingEnded {
                placed_at_ms: 66_000,
                ring_ms: 4_000,
                answered: true
            }
        );
        let obs = call_observations(&done(Outcome::AnsweredMachine, None), 2_000);
        assert!(
            matches!(
                obs[0].event,
                PacingEvent::RingEnded {
                    answered: false,
                    ..
                }
            ),
            "a machine is not a person answering"
        );
    }
}
