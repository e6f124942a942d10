//! monitor-service watches calls: it counts them by campaign and outcome on
//! `/metrics` (`dialstack_calls_total`, `dialstack_active_calls`) and serves
//! totals and the failure rate over a window at `GET /v1/stats`. Alert rules
//! and their WeCom/e-mail notifications build on these counts.
//!
//! # Layout
//! - [`domain`]: what counts as a failure
//! - [`db`]: completed calls and calls in progress
//! - [`messaging`]: the call-event consumer, the active-calls gauge
//! - [`http`]: routes, OpenAPI

pub mod db;
pub mod domain;
pub mod http;
pub mod messaging;

use std::sync::Arc;

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
    /// `dialstack_active_calls`.
    pub active: prometheus::IntGauge,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Outcomes.
    pub repo: db::Repo,
}

/// A built monitor-service.
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
        let metrics = CallMetrics {
            calls: base.metrics.register(&prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_calls_total",
                    "completed calls by campaign and outcome",
                ),
                &["campaign", "outcome"],
            )?),
            active: base.metrics.register(&prometheus::IntGauge::new(
                "dialstack_active_calls",
                "calls dialing, ringing or connected",
            )?),
        };
        if let Some(events) = &base.events {
            base.spawn_consumer(
                events,
                Subscription::new(NAME, messaging::BINDINGS).with_concurrency(16),
                Arc::new(messaging::CallEvents {
                    repo: repo.clone(),
                    metrics: metrics.clone(),
                }),
            )
            .await?;
        }
        base.tasks.spawn(messaging::run_gauge(
            repo.clone(),
            metrics,
            base.shutdown.clone(),
        ));
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
