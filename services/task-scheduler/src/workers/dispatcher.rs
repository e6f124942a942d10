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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::db::OutboxRelay;
use dialstack_dialrules::guard::DestinationGuard;
use dialstack_dialrules::zones::parse_zone;
use dialstack_dialrules::Zone;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::dispatch::DISPATCHER_LEASE;
use crate::db::{Campaign, Candidate, Repo};
use crate::domain::compliance::{eligibility, CampaignRules, DeploymentRules, LeadFacts, Verdict};
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
    let cands = repo.candidates(&c.id, now_ms, n).await?;
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
    shutdown: CancellationToken,
) {
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
        match round(
            &repo,
            &cfg,
            &campaigns,
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
        for p in pacers.values() {
            next = next.min(p.next_token_in());
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
    let in_flight = repo.in_flight_by_campaign().await?;
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
            let want = if resting {
                0
            } else {
                pacer
                    .allowance(now, flying, c.max_concurrent.max(0) as u64)
                    .min(MAX_BATCH)
            };
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
