//! storage-service owns call detail records (and, in later work, customer
//! profiles and recordings). It consumes every `call.*` event and keeps one
//! CDR per call, idempotently, and serves them over REST.
//!
//! # Layout
//! - [`db`]: CDR upsert and queries
//! - [`messaging`]: the call-event consumer
//! - [`http`]: routes, OpenAPI

pub mod db;
pub mod http;
pub mod messaging;

use std::sync::Arc;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "storage-service";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 8082;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// CDRs.
    pub repo: db::Repo,
}

/// A built storage-service.
pub struct Application(Built);

impl Service for Application {
    type Config = CommonConfig;

    fn config(env: &Env) -> Result<CommonConfig, ConfigError> {
        CommonConfig::from_env(env, PORT)?.require_jwks()
    }

    async fn build(config: CommonConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let base = ServiceBase::start(
            NAME,
            config,
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
            base.spawn_consumer(
                events,
                Subscription::new(NAME, messaging::BINDINGS).with_concurrency(16),
                Arc::new(messaging::CallEvents { repo: repo.clone() }),
            )
            .await?;
        }
        let keys = base
            .keys
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no JWKS configured"))?;
        Ok(Self(
            Built::new(base, http::router(AppState { repo }, keys), http::openapi()).await?,
        ))
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}
