//! task-scheduler owns campaigns, their leads (imported as JSON or streamed
//! CSV), do-not-call lists, attempts and pacing. One replica at a time (by
//! a lease in the database) dispatches: it turns leads that are due and
//! eligible (calling hours in the callee's zone, DNC, attempt caps,
//! destination guard) into `dial` commands through the outbox, within each
//! campaign's `max_cps` and `max_concurrent` and the deployment's
//! `DIALSTACK_MAX_CPS`, shared among campaigns by weight. It grants media
//! processors a claim on each attempt before they dial (dial once), and
//! settles attempts and their leads (retry or done) from `call.completed`.
//! Campaigns with agents (`progressive`, `predictive`) are paced by the
//! team's ready agents from `agent.state` and kept under their abandon cap
//! by a per-day ledger; `preview` ones are dialed by their agents.
//!
//! # Layout
//! - [`domain`]: campaigns, leads, state tables, pacing, compliance
//! - [`db`]: every statement on the scheduler's tables
//! - [`http`]: routes, OpenAPI, idempotency keys
//! - [`workers`]: dispatcher, call-event consumer, reaper, importer
//!
//! Service-specific settings:
//! - `DIALSTACK_QUEUED_TIMEOUT_SECS` (default 600)
//! - `DIALSTACK_REAPER_GRACE_SECS`: after the database comes back, or the
//!   service starts, the reaper leaves lapsed leases alone this long, so
//!   media processors can renew the leases they could not renew meanwhile
//!   (default 20: two of media-processor's renewals at its default 30 s
//!   lease; 0-600)
//! - `DIALSTACK_MAX_CPS`: new calls per second across all campaigns (default 200)
//! - `DIALSTACK_ALLOWED_PREFIXES`: E.164 prefixes that may be dialed, comma-separated (default every one)
//! - `DIALSTACK_DENIED_PREFIXES`: prefixes refused on top of the built-in premium ranges
//! - `DIALSTACK_MAX_DAILY_ATTEMPTS_PER_NUMBER`: attempts per number per 24 h across campaigns (default off)
//! - `DIALSTACK_LEADER_LEASE_MS`: the dispatcher lease (default 5000)
//! - `DIALSTACK_MAX_LIVE_STREAMS`: live-view event streams open at once (default 64)
//! - `DIALSTACK_USER_SERVICE_URL`: user-service (`http://host:port`), where a
//!   disposition ends the agent's wrap-up (default unset: the wrap-up timeout ends it)
//! - `DIALSTACK_AMD_FALSE_MACHINE_RATE`: the share (0-1) of people machine
//!   detection is assumed to take for machines, behind the abandon report's
//!   estimate of them (default 0.02; the pacer does not use it)

pub mod db;
pub mod domain;
pub mod http;
pub mod workers;

use std::sync::Arc;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::db::{GroupCommit, GroupCommitOptions, OutboxRelay};
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use dialstack_dialrules::guard::DestinationGuard;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "task-scheduler";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 8080;

/// task-scheduler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings (`DIALSTACK_JWKS_URL` is required).
    pub common: CommonConfig,
    /// How long an attempt may wait `queued` (its dial command unclaimed)
    /// before the reaper fails it as `dial_lost`
    /// (`DIALSTACK_QUEUED_TIMEOUT_SECS`, default 600).
    pub queued_timeout: std::time::Duration,
    /// How long the reaper waits after the database came back (or the
    /// service started) before it takes lapsed leases for lost calls
    /// (`DIALSTACK_REAPER_GRACE_SECS`, default 20).
    pub reaper_grace: std::time::Duration,
    /// New calls per second across all campaigns.
    pub max_cps: f64,
    /// The destination guard.
    pub guard: Arc<DestinationGuard>,
    /// Attempts per number per 24 h across campaigns.
    pub number_daily_cap: Option<u32>,
    /// The dispatcher lease.
    pub lease_ttl: std::time::Duration,
    /// This host's name (`HOSTNAME`), in the dispatcher lease.
    pub host: String,
    /// Live-view event streams open at once (`DIALSTACK_MAX_LIVE_STREAMS`).
    pub max_live_streams: usize,
    /// user-service's base URL (`DIALSTACK_USER_SERVICE_URL`), where a
    /// disposition ends the agent's wrap-up.
    pub user_service_url: Option<String>,
    /// The share of people machine detection is assumed to take for
    /// machines (`DIALSTACK_AMD_FALSE_MACHINE_RATE`, 0-1, default 0.02).
    pub amd_false_machine_rate: f64,
}

impl Config {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, PORT)?.require_jwks()?;
        let secs: u64 = env.parse_or("DIALSTACK_QUEUED_TIMEOUT_SECS", 600)?;
        if !(5..=86_400).contains(&secs) {
            return Err(ConfigError::new(
                "DIALSTACK_QUEUED_TIMEOUT_SECS",
                "must be 5-86400",
            ));
        }
        let grace: u64 = env.parse_or("DIALSTACK_REAPER_GRACE_SECS", 20)?;
        if grace > 600 {
            return Err(ConfigError::new(
                "DIALSTACK_REAPER_GRACE_SECS",
                "must be 0-600",
            ));
        }
        let max_cps: f64 = env.parse_or("DIALSTACK_MAX_CPS", 200.0)?;
        if !(max_cps.is_finite() && max_cps > 0.0 && max_cps <= 10_000.0) {
            return Err(ConfigError::new(
                "DIALSTACK_MAX_CPS",
                "must be above 0 and at most 10000",
            ));
        }
        let allowed = env.get("DIALSTACK_ALLOWED_PREFIXES").unwrap_or_default();
        let denied = env.get("DIALSTACK_DENIED_PREFIXES").unwrap_or_default();
        let guard = DestinationGuard::from_lists(allowed, denied).map_err(|e| {
            ConfigError::new("DIALSTACK_ALLOWED_PREFIXES / DIALSTACK_DENIED_PREFIXES", &e)
        })?;
        let cap: u32 = env.parse_or("DIALSTACK_MAX_DAILY_ATTEMPTS_PER_NUMBER", 0)?;
        if cap > 100 {
            return Err(ConfigError::new(
                "DIALSTACK_MAX_DAILY_ATTEMPTS_PER_NUMBER",
                "must be 0 (off) to 100",
            ));
        }
        let lease_ms: u64 = env.parse_or("DIALSTACK_LEADER_LEASE_MS", 5_000)?;
        if !(500..=60_000).contains(&lease_ms) {
            return Err(ConfigError::new(
                "DIALSTACK_LEADER_LEASE_MS",
                "must be 500-60000",
            ));
        }
        let max_live_streams: usize = env.parse_or(
            "DIALSTACK_MAX_LIVE_STREAMS",
            http::live::DEFAULT_MAX_STREAMS,
        )?;
        if !(1..=10_000).contains(&max_live_streams) {
            return Err(ConfigError::new(
                "DIALSTACK_MAX_LIVE_STREAMS",
                "must be 1-10000",
            ));
        }
        let user_service_url = match env.get("DIALSTACK_USER_SERVICE_URL") {
            None | Some("") => None,
            Some(u) if u.starts_with("http://") && u.len() > "http://".len() => {
                Some(u.trim_end_matches('/').to_owned())
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "DIALSTACK_USER_SERVICE_URL",
                    "must be an http:// URL",
                ))
            }
        };
        let amd_false_machine_rate: f64 = env.parse_or("DIALSTACK_AMD_FALSE_MACHINE_RATE", 0.02)?;
        if !(amd_false_machine_rate.is_finite() && (0.0..=1.0).contains(&amd_false_machine_rate)) {
            return Err(ConfigError::new(
                "DIALSTACK_AMD_FALSE_MACHINE_RATE",
                "must be a share from 0 to 1",
            ));
        }
        Ok(Self {
            amd_false_machine_rate,
            user_service_url,
            max_live_streams,
            common,
            queued_timeout: std::time::Duration::from_secs(secs),
            reaper_grace: std::time::Duration::from_secs(grace),
            max_cps,
            guard: Arc::new(guard),
            number_daily_cap: (cap > 0).then_some(cap),
            lease_ttl: std::time::Duration::from_millis(lease_ms),
            host: env.get("HOSTNAME").unwrap_or("scheduler").to_owned(),
        })
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Campaigns and attempts.
    pub repo: db::Repo,
    /// The outbox relay.
    pub relay: OutboxRelay,
    /// Wakes the dispatcher.
    pub dispatcher_wake: Arc<Notify>,
    /// The destination guard, for imports.
    pub guard: Arc<DestinationGuard>,
    /// Claims, group-committed.
    pub claims: GroupCommit<db::attempts::ClaimWriter>,
    /// Live-view event streams.
    pub live: http::live::LiveStreams,
    /// Attempts per number per 24 h across campaigns (preview leads are
    /// judged as the dispatcher judges).
    pub number_daily_cap: Option<u32>,
    /// Ends agents' wrap-up in user-service after a disposition (`None`:
    /// `DIALSTACK_USER_SERVICE_URL` unset).
    pub wrap_up: Option<http::dispositions::WrapUpClient>,
    /// `DIALSTACK_AMD_FALSE_MACHINE_RATE`, for the abandon report.
    pub amd_false_machine_rate: f64,
}

/// A built task-scheduler.
pub struct Application(Built);

impl Service for Application {
    type Config = Config;

    fn config(env: &Env) -> Result<Config, ConfigError> {
        Config::from_env(env)
    }

    async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let base = ServiceBase::start(
            NAME,
            config.common.clone(),
            db::MIGRATIONS,
            Channels {
                events: true,
                commands: true,
            },
            shutdown,
        )
        .await?;
        let repo = db::Repo {
            db: base.db.clone(),
        };
        let wake = Arc::new(Notify::new());
        let observations = workers::dispatcher::Observations::default();
        let dispatch_metrics = workers::dispatcher::DispatchMetrics::register(&base.metrics);
        if let Some(events) = &base.events {
            base.spawn_batch_consumer(
                events,
                Subscription::new(NAME, workers::BINDINGS)
                    .with_concurrency(4)
                    .with_batch(64),
                Arc::new(workers::CallEvents {
                    repo: repo.clone(),
                    dispatcher_wake: wake.clone(),
                    observations: observations.clone(),
                }),
            )
            .await?;
        }
        let holder = format!(
            "{}-{}-{}",
            config.host,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        base.tasks.spawn(workers::run_dispatcher(
            repo.clone(),
            base.relay.clone(),
            wake.clone(),
            workers::DispatcherConfig {
                max_cps: config.max_cps,
                lease_ttl: config.lease_ttl,
                holder,
                guard: config.guard.clone(),
                number_daily_cap: config.number_daily_cap,
            },
            (observations, dispatch_metrics.clone()),
            base.shutdown.clone(),
        ));
        base.tasks.spawn(workers::dispatcher::run_abandon_gauge(
            repo.clone(),
            dispatch_metrics,
            std::time::Duration::from_secs(2),
            base.shutdown.clone(),
        ));
        base.tasks.spawn(workers::run_reaper(
            repo.clone(),
            base.relay.clone(),
            wake.clone(),
            config.queued_timeout,
            config.reaper_grace,
            base.shutdown.clone(),
        ));
        let keys = base
            .keys
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no JWKS configured"))?;
        let state = AppState {
            repo,
            relay: base.relay.clone(),
            dispatcher_wake: wake,
            guard: config.guard.clone(),
            claims: GroupCommit::start(
                base.db.clone(),
                db::attempts::ClaimWriter,
                GroupCommitOptions {
                    max_batch: 128,
                    workers: 2,
                },
            ),
            live: http::live::LiveStreams::new(config.max_live_streams, base.shutdown.clone()),
            number_daily_cap: config.number_daily_cap,
            wrap_up: config
                .user_service_url
                .as_deref()
                .map(|url| http::dispositions::WrapUpClient::with_tls(url, &config.common.tls)),
            amd_false_machine_rate: config.amd_false_machine_rate,
        };
        Ok(Self(
            Built::with_long_routes(
                base,
                http::router(state, keys),
                http::openapi(),
                &["/v1/campaigns/{id}/leads"],
            )
            .await?,
        ))
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}
