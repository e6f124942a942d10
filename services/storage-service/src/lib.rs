//! storage-service owns call detail records and recordings (customer
//! profiles come in later work). It consumes every `call.*` event and keeps
//! one CDR per call, idempotently, with the call's voice quality; it keeps
//! the metadata of each call's recording from `call.recording.ready` and
//! serves the audio from the recording store; a retention sweep deletes
//! recordings past their campaign's retention.
//!
//! Service-specific settings: `DIALSTACK_RECORDINGS_URL` (and
//! `DIALSTACK_S3_*`, see `dialstack_common::recordings`; default
//! `file://` + `./data/recordings`), which must be the store media-processor
//! uploads to, and `DIALSTACK_RECORDING_SWEEP_SECS` (how often expired
//! recordings are deleted, default 3600).
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
        Ok(Self {
            common,
            recordings,
            sweep_period: Duration::from_secs(sweep),
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
                    .with_batch(64),
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
                http::router(AppState { repo, store }, keys),
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
