//! monitor-service watches calls and tells someone when they go wrong. It
//! counts calls by campaign and outcome on `/metrics`
//! (`dialstack_calls_total`, `dialstack_call_failures_total`,
//! `dialstack_active_calls`) and agents by state and team
//! (`dialstack_agents{state,team}`, from `agent.state`), serves totals and
//! the failure rate over a window at `GET /v1/stats`, evaluates alert rules
//! over those counts, and notifies WeCom group robots and e-mail
//! recipients, with silences, inhibition, retries and a lease so that one
//! replica notifies.
//!
//! # Layout
//! - [`domain`]: the failure definition, rules, alert lifecycle, silences,
//!   channels, agent states
//! - [`db`]: call counts, agents, rules, alerts, silences, channels,
//!   notification outbox, lease
//! - [`messaging`]: the event consumer (calls and agents), their gauges
//! - [`engine`]: rule evaluation under the lease, Alertmanager's alerts
//! - [`notify`]: WeCom and SMTP delivery with backoff and rate limits
//! - [`http`]: routes, OpenAPI, the wallboard (SSE and its page)
//!
//! # Settings
//! Besides the shared ones: `DIALSTACK_ALERT_EVAL_MS` (rule evaluation
//! interval, default 15000), `DIALSTACK_ALERT_LEASE_MS` (the engine lease,
//! default 30000), `DIALSTACK_NOTIFY_RETRY_MS` (first retry delay of a
//! failed delivery, default 5000), `DIALSTACK_WECOM_BACKOFF_MS` (pause after
//! a robot's rate-limit error, default 60000), `DIALSTACK_DASHBOARD_URL`
//! (link in notifications), `DIALSTACK_WALLBOARD_MS` (time between two
//! wallboard snapshots, default 2000), `DIALSTACK_ALERTMANAGER_TOKEN` (a static bearer,
//! at least 32 characters, that Alertmanager presents on
//! `POST /v1/alerts/webhook`), and the `DIALSTACK_ALERT_*` variables that
//! channels name for their secrets.

pub mod db;
pub mod domain;
pub mod engine;
pub mod http;
pub mod messaging;
pub mod notify;

use std::sync::Arc;
use std::time::Duration;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "monitor-service";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 8083;

/// The call metrics of DESIGN §8 that this service owns.
#[derive(Clone)]
pub struct CallMetrics {
    /// `dialstack_calls_total{campaign,outcome}`.
    pub calls: prometheus::IntCounterVec,
    /// `dialstack_call_failures_total{campaign}`: calls that count as
    /// failures ([`domain::is_failure`]); the numerator of every failure rate.
    pub failures: prometheus::IntCounterVec,
    /// `dialstack_active_calls`.
    pub active: prometheus::IntGauge,
    /// Which campaigns have a label of their own.
    pub campaigns: std::sync::Arc<domain::LabelCap>,
}

/// monitor-service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings (`DIALSTACK_JWKS_URL` is required).
    pub common: CommonConfig,
    /// Rule evaluation interval.
    pub eval_interval: Duration,
    /// Engine lease.
    pub lease_ttl: Duration,
    /// First retry delay of a failed delivery.
    pub retry_base: Duration,
    /// Pause after a WeCom rate-limit error.
    pub wecom_backoff: Duration,
    /// Link in notifications.
    pub dashboard_url: Option<String>,
    /// Time between two wallboard snapshots.
    pub wallboard_period: Duration,
    /// This host's name, in the lease.
    pub host: String,
    /// The static bearer Alertmanager presents on the webhook.
    pub alertmanager_token: Option<Arc<String>>,
    /// The environment, for the secrets channels name.
    pub env: Arc<Env>,
}

fn millis(env: &Env, var: &str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    let ms: u64 = env.parse_or(var, default)?;
    if !(min..=max).contains(&ms) {
        return Err(ConfigError::new(var, format!("must be {min}-{max}")));
    }
    Ok(Duration::from_millis(ms))
}

impl Config {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, PORT)?.require_jwks()?;
        let eval_interval = millis(env, "DIALSTACK_ALERT_EVAL_MS", 15_000, 100, 600_000)?;
        let lease_ttl = millis(env, "DIALSTACK_ALERT_LEASE_MS", 30_000, 500, 600_000)?;
        if lease_ttl <= eval_interval {
            return Err(ConfigError::new(
                "DIALSTACK_ALERT_LEASE_MS",
                "must be longer than DIALSTACK_ALERT_EVAL_MS",
            ));
        }
        let dashboard_url = env.get("DIALSTACK_DASHBOARD_URL").map(str::to_owned);
        if let Some(u) = &dashboard_url {
            dialstack_common::config::check_scheme(
                "DIALSTACK_DASHBOARD_URL",
                u,
                &["http://", "https://"],
            )?;
        }
        let alertmanager_token = env.get("DIALSTACK_ALERTMANAGER_TOKEN").map(str::to_owned);
        if alertmanager_token.as_ref().is_some_and(|t| t.len() < 32) {
            return Err(ConfigError::new(
                "DIALSTACK_ALERTMANAGER_TOKEN",
                "must be at least 32 characters",
            ));
        }
        Ok(Self {
            common,
            alertmanager_token: alertmanager_token.map(Arc::new),
            eval_interval,
            lease_ttl,
            retry_base: millis(env, "DIALSTACK_NOTIFY_RETRY_MS", 5_000, 10, 600_000)?,
            wecom_backoff: millis(env, "DIALSTACK_WECOM_BACKOFF_MS", 60_000, 10, 600_000)?,
            dashboard_url,
            wallboard_period: millis(env, "DIALSTACK_WALLBOARD_MS", 2_000, 100, 60_000)?,
            host: env.get("HOSTNAME").unwrap_or("monitor").to_owned(),
            env: Arc::new(env.clone()),
        })
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Outcomes, rules, alerts, channels.
    pub repo: db::Repo,
    /// The alert engine (Alertmanager's alerts, waking it).
    pub engine: engine::Engine,
    /// The root token: wallboard streams end with it.
    pub shutdown: CancellationToken,
    /// Wallboard streams that may still open.
    pub wallboards: Arc<tokio::sync::Semaphore>,
    /// Time between two wallboard snapshots.
    pub wallboard_period: Duration,
}

/// A built monitor-service.
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
                commands: false,
            },
            shutdown,
        )
        .await?;
        let repo = db::Repo {
            db: base.db.clone(),
        };
        let metrics = CallMetrics {
            calls: base.metrics.register(&prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_calls_total",
                    "completed calls by campaign and outcome",
                ),
                &["campaign", "outcome"],
            )?),
            failures: base.metrics.register(&prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_call_failures_total",
                    "completed calls that failed: outcome failed, or rejected by the network (not declined)",
                ),
                &["campaign"],
            )?),
            active: base.metrics.register(&prometheus::IntGauge::new(
                "dialstack_active_calls",
                "calls dialing, ringing or connected",
            )?),
            campaigns: std::sync::Arc::new(domain::LabelCap::new(domain::MAX_CAMPAIGN_LABELS)),
        };
        let alerts_gauge = base.metrics.register(&prometheus::IntGaugeVec::new(
            prometheus::Opts::new("dialstack_alerts", "open alerts by state and rule"),
            &["state", "rule"],
        )?);
        let notifications = base.metrics.register(&prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dialstack_notifications_total",
                "notification delivery attempts by channel and result",
            ),
            &["channel", "result"],
        )?);
        let agents_gauge = base.metrics.register(&prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "dialstack_agents",
                "agents by state and team, from agent.state (an agent counts in each of its teams; \
                 team \"none\": agents of no team, \"other\": teams beyond the 200 largest)",
            ),
            &["state", "team"],
        )?);
        let agents_changed = Arc::new(tokio::sync::Notify::new());
        if let Some(events) = &base.events {
            base.spawn_consumer(
                events,
                Subscription::new(NAME, messaging::BINDINGS).with_concurrency(16),
                Arc::new(messaging::Events {
                    repo: repo.clone(),
                    metrics: metrics.clone(),
                    agents_changed: agents_changed.clone(),
                }),
            )
            .await?;
        }
        base.tasks.spawn(messaging::calls::run_gauge(
            repo.clone(),
            metrics,
            base.shutdown.clone(),
        ));
        base.tasks.spawn(messaging::agents::run_gauge(
            repo.clone(),
            agents_gauge,
            agents_changed,
            base.shutdown.clone(),
        ));
        let notifier = notify::Notifier::new(
            repo.clone(),
            config.env.clone(),
            notify::Settings {
                retry_base_ms: i64::try_from(config.retry_base.as_millis()).unwrap_or(5_000),
                wecom_backoff_ms: i64::try_from(config.wecom_backoff.as_millis()).unwrap_or(60_000),
                ..Default::default()
            },
            notifications,
            &config.common.tls,
        );
        let engine = engine::Engine::new(
            repo.clone(),
            notifier,
            engine::Settings {
                interval: config.eval_interval,
                lease_ttl: config.lease_ttl,
                holder: format!(
                    "{}-{}-{}",
                    config.host,
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                dashboard_url: config.dashboard_url.clone(),
            },
            alerts_gauge,
            base.metrics.registry.clone(),
        );
        base.tasks.spawn(engine.clone().run(base.shutdown.clone()));
        let keys = base
            .keys
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no JWKS configured"))?;
        let shutdown_token = base.shutdown.clone();
        Ok(Self(
            Built::new(
                base,
                http::router(
                    AppState {
                        repo,
                        engine,
                        shutdown: shutdown_token,
                        wallboards: Arc::new(tokio::sync::Semaphore::new(
                            http::wallboard::MAX_STREAMS,
                        )),
                        wallboard_period: config.wallboard_period,
                    },
                    keys,
                    config.alertmanager_token.clone(),
                ),
                http::openapi(),
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
