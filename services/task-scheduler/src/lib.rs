//! task-scheduler owns campaigns, their leads and attempts, and pacing. It
//! turns pending attempts into `dial` commands (through the outbox, on the
//! commands channel) no faster than a campaign's `max_cps` and never beyond
//! its `max_concurrent`, grants media processors a claim on each attempt
//! before they dial (dial once), and closes attempts from `call.completed`.
//!
//! # Layout
//! - [`domain`]: campaign validation (E.164), the pacer
//! - [`db`]: campaigns, leads, attempts and their state transitions
//! - [`http`]: routes, OpenAPI
//! - [`messaging`]: call-event consumer, dispatcher, reaper of attempts
//!   stuck `queued`, `claimed` or `dialing`
//!
//! Service-specific settings: `DIALSTACK_QUEUED_TIMEOUT_SECS` (default 600).

pub mod db;
pub mod domain;
pub mod http;
pub mod messaging;

use std::sync::Arc;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::db::OutboxRelay;
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
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
        Ok(Self {
            common,
            queued_timeout: std::time::Duration::from_secs(secs),
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
        if let Some(events) = &base.events {
            base.spawn_consumer(
                events,
                Subscription::new(NAME, messaging::BINDINGS).with_concurrency(8),
                Arc::new(messaging::CallEvents {
                    repo: repo.clone(),
                    dispatcher_wake: wake.clone(),
                }),
            )
            .await?;
        }
        base.tasks.spawn(messaging::run_dispatcher(
            repo.clone(),
            base.relay.clone(),
            wake.clone(),
            base.shutdown.clone(),
        ));
        base.tasks.spawn(messaging::run_reaper(
            repo.clone(),
            base.relay.clone(),
            wake.clone(),
            config.queued_timeout,
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
        };
        Ok(Self(
            Built::new(base, http::router(state, keys), http::openapi()).await?,
        ))
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}
