//! storage-service owns call detail records, recordings and customer
//! profiles. It consumes every `call.*` event and keeps one CDR per call,
//! idempotently, with the call's voice quality and customer; it keeps the
//! metadata of each call's recording from `call.recording.ready` and serves
//! the audio from the recording store; it merges `customer.upserted` from
//! lead imports into the profiles and keeps each campaign's CDR retention
//! from `campaign.updated`. CDRs are searched, paged by keyset and exported
//! as a stream; a retention sweep deletes expired recordings and CDRs in
//! small batches.
//!
//! Service-specific settings: `DIALSTACK_RECORDINGS_URL` (and
//! `DIALSTACK_S3_*`, see `dialstack_common::recordings`; default
//! `file://` + `./data/recordings`), which must be the store media-processor
//! uploads to; `DIALSTACK_RECORDING_SWEEP_SECS` (how often the retention
//! sweep runs, default 3600); `DIALSTACK_CDR_RETENTION_DAYS` and
//! `DIALSTACK_RECORDING_RETENTION_DAYS` (the defaults for campaigns that set
//! none; unset keeps forever); `DIALSTACK_EXPORTS` (exports at once,
//! default 4).
//!
//! # Layout
//! - [`db`]: CDR upsert and queries, recording metadata
//! - [`messaging`]: the call-event consumer
//! - [`http`]: routes, OpenAPI, the recording download with ranges
//! - [`retention`]: the sweep that deletes expired recordings

pub mod db;
pub mod http;
pub mod messaging;
pub mod retention;

use std::sync::Arc;
use std::time::Duration;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::recordings::RecordingStore;
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "storage-service";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 8082;

/// storage-service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings.
    pub common: CommonConfig,
    /// `DIALSTACK_RECORDINGS_URL`: where recordings are.
    pub recordings: RecordingStore,
    /// `DIALSTACK_RECORDING_SWEEP_SECS`: how often the retention sweep runs.
    pub sweep_period: Duration,
    /// `DIALSTACK_CDR_RETENTION_DAYS`: days a CDR is kept when its
    /// campaign sets none; `None` keeps it.
    pub cdr_retention_days: Option<u32>,
    /// `DIALSTACK_RECORDING_RETENTION_DAYS`: days a recording is kept when
    /// its campaign sets none; `None` keeps it.
    pub recording_retention_days: Option<u32>,
    /// `DIALSTACK_EXPORTS`: exports that may run at once.
    pub exports: usize,
}

impl Config {
    /// Reads the settings; errors name the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, PORT)?.require_jwks()?;
        let recordings = RecordingStore::from_env(env)?;
        let sweep: u64 = env.parse_or("DIALSTACK_RECORDING_SWEEP_SECS", 3600)?;
        if sweep == 0 {
            return Err(ConfigError::new(
                "DIALSTACK_RECORDING_SWEEP_SECS",
                "must be at least 1",
            ));
        }
        let days = |name: &'static str| -> Result<Option<u32>, ConfigError> {
            match env.get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=36_500).contains(d))
                    .map(Some)
                    .ok_or_else(|| ConfigError::new(name, "must be a number of days, 1-36500")),
            }
        };
        let exports: usize = env.parse_or("DIALSTACK_EXPORTS", 4)?;
        if !(1..=64).contains(&exports) {
            return Err(ConfigError::new("DIALSTACK_EXPORTS", "must be 1-64"));
        }
        Ok(Self {
            common,
            recordings,
            sweep_period: Duration::from_secs(sweep),
            cdr_retention_days: days("DIALSTACK_CDR_RETENTION_DAYS")?,
            recording_retention_days: days("DIALSTACK_RECORDING_RETENTION_DAYS")?,
            exports,
        })
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// CDRs and recording metadata.
    pub repo: db::Repo,
    /// The recordings' objects.
    pub store: RecordingStore,
    /// Exports allowed to run at once (`DIALSTACK_EXPORTS`).
    pub exports: Arc<tokio::sync::Semaphore>,
}

/// A built storage-service.
pub struct Application(Built);

impl Service for Application {
    type Config = Config;

    fn config(env: &Env) -> Result<Config, ConfigError> {
        Config::from_env(env)
    }

    async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let store = config.recordings.clone();
        store.check().await.map_err(|e| {
            anyhow::anyhow!("DIALSTACK_RECORDINGS_URL: the recording store does not answer: {e}")
        })?;
        let base = ServiceBase::start(
            NAME,
            config.common,
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
        if let Some(events) = &base.events {
            base.spawn_batch_consumer(
                events,
                Subscription::new(NAME, messaging::BINDINGS)
                    .with_concurrency(4)
                    .with_batch(256),
                Arc::new(messaging::CallEvents {
                    repo: repo.clone(),
                    store: store.clone(),
                }),
            )
            .await?;
        }
        let sweeper = retention::Sweeper {
            repo: repo.clone(),
            store: store.clone(),
            deleted: base.metrics.register(&retention::Sweeper::counter()?),
            cdr_retention_days: config.cdr_retention_days,
            recording_retention_days: config.recording_retention_days,
        };
        base.tasks
            .spawn(sweeper.run(config.sweep_period, base.shutdown.clone()));
        let keys = base
            .keys
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no JWKS configured"))?;
        Ok(Self(
            Built::new(
                base,
                http::router(
                    AppState {
                        repo,
                        store,
                        exports: Arc::new(tokio::sync::Semaphore::new(config.exports)),
                    },
                    keys,
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
