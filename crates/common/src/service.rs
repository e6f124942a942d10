//! The start-up and shutdown sequence every service shares: database and
//! migrations, bus channels, outbox relay, readiness, HTTP, and draining.
//!
//! Shutdown order on the root token: readiness turns 503, HTTP stops taking
//! requests and finishes those in flight, consumers and service tasks drain
//! (within the grace period), then the outbox relay makes a last pass so that
//! every event committed before the signal is published.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwksCache, Keys};
use crate::bus::{BatchHandler, Channel, ChannelReady, Handler, Subscription};
use crate::config::CommonConfig;
use crate::db::{Db, DbReady, Migration, OutboxRelay};
use crate::http::{HttpContext, Readiness};
use crate::metrics::Metrics;

/// Which channels a service uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Channels {
    /// Connect the events channel.
    pub events: bool,
    /// Connect the commands channel.
    pub commands: bool,
}

/// What a running service holds. Cheap to clone.
#[derive(Clone)]
pub struct ServiceBase {
    /// Service name (`source` of its events, `service` label).
    pub name: &'static str,
    /// Shared settings.
    pub config: CommonConfig,
    /// The service's database.
    pub db: Db,
    /// The events channel, if used.
    pub events: Option<Channel>,
    /// The commands channel, if used.
    pub commands: Option<Channel>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Readiness checks.
    pub readiness: Readiness,
    /// The outbox relay (call `notify` after committing outbox rows).
    pub relay: OutboxRelay,
    /// The root token: cancelled on SIGTERM.
    pub shutdown: CancellationToken,
    /// Consumers and other long-running tasks, drained at shutdown.
    pub tasks: TaskTracker,
    /// Token verification keys (JWKS), when `DIALSTACK_JWKS_URL` is set.
    pub keys: Option<Keys>,
}

impl ServiceBase {
    /// Connects the database (running migrations) and the channels.
    pub async fn start(
        name: &'static str,
        config: CommonConfig,
        migrations: &[Migration],
        channels: Channels,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let db = Db::connect_with(&config.database_url, &config.tls).await?;
        db.migrate(migrations).await?;
        let metrics = Metrics::new(name);
        let readiness = Readiness::default();
        readiness.add(Arc::new(DbReady(db.clone())));
        let mut outbox_channels = HashMap::new();
        let events = if channels.events {
            let ch =
                Channel::connect_with(&config.events_url, crate::bus::EVENTS, &config.bus).await?;
            readiness.add(Arc::new(ChannelReady {
                name: "events broker",
                channel: ch.clone(),
            }));
            outbox_channels.insert(crate::db::channel::EVENTS.to_owned(), ch.clone());
            Some(ch)
        } else {
            None
        };
        let commands = if channels.commands {
            let ch = Channel::connect_with(&config.commands_url, crate::bus::COMMANDS, &config.bus)
                .await?;
            readiness.add(Arc::new(ChannelReady {
                name: "commands broker",
                channel: ch.clone(),
            }));
            outbox_channels.insert(crate::db::channel::COMMANDS.to_owned(), ch.clone());
            Some(ch)
        } else {
            None
        };
        let relay = OutboxRelay::new(db.clone(), outbox_channels, Some(metrics.clone()));
        readiness.add(relay.health());
        let tasks = TaskTracker::new();
        let keys = config.jwks_url.as_ref().map(|url| {
            let cache = Arc::new(JwksCache::with_tls(url.clone(), &config.tls));
            tasks.spawn(cache.clone().run(JWKS_REFRESH, shutdown.clone()));
            cache as Keys
        });
        Ok(Self {
            name,
            config,
            db,
            events,
            commands,
            metrics,
            readiness,
            relay,
            shutdown,
            tasks,
            keys,
        })
    }

    /// Keeps `dialstack_consumer_lag_messages` of the channel from the
    /// service's own subscription. An instance's subscription is left out:
    /// its few addressed commands say nothing of the service's backlog, and
    /// on Kafka a group that never committed would count the whole topic.
    fn watch_lag(&self, channel: &Channel, sub: &Subscription) {
        if sub.instance_expires.is_some() {
            return;
        }
        self.tasks.spawn(watch_lag(
            channel.clone(),
            sub.group.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
    }

    /// Declares the consumer's queue, then runs the consumer until shutdown
    /// as a tracked task.
    pub async fn spawn_consumer(
        &self,
        channel: &Channel,
        sub: Subscription,
        handler: Arc<dyn Handler>,
    ) -> Result<(), crate::bus::BusError> {
        channel.prepare(&sub).await?;
        self.watch_lag(channel, &sub);
        let channel = channel.clone();
        let shutdown = self.shutdown.clone();
        let group = sub.group.clone();
        self.tasks.spawn(async move {
            if let Err(e) = channel.consume(sub, handler, shutdown).await {
                tracing::error!(error = %e, %group, "consumer stopped");
            }
        });
        Ok(())
    }

    /// Declares the consumer's queue, then runs a batch consumer (up to
    /// `sub.max_batch` messages per call of the handler) until shutdown as
    /// a tracked task.
    pub async fn spawn_batch_consumer(
        &self,
        channel: &Channel,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
    ) -> Result<(), crate::bus::BusError> {
        channel.prepare(&sub).await?;
        self.watch_lag(channel, &sub);
        let channel = channel.clone();
        let shutdown = self.shutdown.clone();
        let group = sub.group.clone();
        self.tasks.spawn(async move {
            if let Err(e) = channel.consume_batch(sub, handler, shutdown).await {
                tracing::error!(error = %e, %group, "consumer stopped");
            }
        });
        Ok(())
    }

    /// The HTTP context for [`crate::http::finish_router`].
    pub fn http_context(&self, openapi: serde_json::Value) -> HttpContext {
        HttpContext {
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            openapi: Arc::new(openapi),
            request_timeout: std::time::Duration::from_secs(30),
            long_routes: Arc::new(Vec::new()),
        }
    }

    /// Serves `router` on `listener` and runs the relay until shutdown, then
    /// drains in the order described in the module documentation.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        router: axum::Router,
    ) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.clone().run(relay_stop.clone()));
        let readiness = self.readiness.clone();
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            readiness.set_draining();
        });
        let served = crate::http::serve(listener, router, self.shutdown.clone()).await;
        self.tasks.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over with tasks still running");
        }
        relay_stop.cancel();
        let _ = tokio::time::timeout(self.config.shutdown_grace, relay).await;
        tracing::info!(service = self.name, "stopped");
        served.map_err(Into::into)
    }
}

/// A service as its `main` sees it.
pub trait Service: Sized + Send + 'static {
    /// Its settings.
    type Config: Send;
    /// Reads the settings; an error names the variable at fault.
    fn config(env: &crate::config::Env) -> Result<Self::Config, crate::config::ConfigError>;
    /// Connects everything and binds the listener.
    fn build(
        config: Self::Config,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<Self>> + Send;
    /// Where the HTTP API listens.
    fn local_addr(&self) -> std::net::SocketAddr;
    /// Runs until the token is cancelled and the service has drained.
    fn run_until_stopped(self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// The whole `main` of a service binary: config (exit 2 naming the variable
/// on error), telemetry, build, run until SIGTERM, drain.
pub async fn main<S: Service>(name: &str) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config = crate::config::Env::from_process(&args).and_then(|env| {
        crate::telemetry::init(env.get("DIALSTACK_LOG_FORMAT"), env.get("RUST_LOG"));
        S::config(&env)
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = crate::shutdown::on_signals();
    let app = match S::build(config, shutdown).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            eprintln!("{name}: start-up failed: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(service = name, addr = %app.local_addr(), "listening");
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A service whose listener is bound and router built, ready to run.
pub struct Built {
    base: ServiceBase,
    listener: tokio::net::TcpListener,
    router: axum::Router,
}

impl Built {
    /// Binds the HTTP listener on `DIALSTACK_HTTP_ADDR` and wraps `api` with
    /// the shared routes and middleware.
    pub async fn new(
        base: ServiceBase,
        api: axum::Router,
        openapi: serde_json::Value,
    ) -> anyhow::Result<Self> {
        Self::with_long_routes(base, api, openapi, &[]).await
    }

    /// As [`Built::new`], with routes (matched path templates, e.g.
    /// `/v1/campaigns/{id}/leads`) that may run for up to
    /// [`crate::http::LONG_REQUEST_TIMEOUT`] instead of the usual 30 s: bulk
    /// uploads streamed through the handler.
    pub async fn with_long_routes(
        base: ServiceBase,
        api: axum::Router,
        openapi: serde_json::Value,
        long_routes: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        let mut ctx = base.http_context(openapi);
        ctx.long_routes = Arc::new(long_routes.to_vec());
        let router = crate::http::finish_router(api, ctx);
        let listener = tokio::net::TcpListener::bind(base.config.http_addr).await?;
        Ok(Self {
            base,
            listener,
            router,
        })
    }

    /// Where the HTTP API listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Runs until shutdown and drains.
    pub async fn run(self) -> anyhow::Result<()> {
        self.base.run(self.listener, self.router).await
    }
}

/// How often a verifier refetches the JWKS (new keys, revoked users).
const JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the consumer lag gauge is refreshed.
const LAG_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `dialstack_consumer_lag_messages` for one consumer until shutdown.
/// A failed read leaves the last value and is logged at debug level: the
/// broker's own health is reported by readiness.
async fn watch_lag(channel: Channel, group: String, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        // A read against an unreachable broker can take a while; shutdown
        // does not wait for it.
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = channel.backlog(&group) => read,
        };
        match read {
            Ok(n) => {
                metrics.set_consumer_lag(channel.logical(), i64::try_from(n).unwrap_or(i64::MAX))
            }
            Err(e) => tracing::debug!(error = %e, %group, "consumer lag not read"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_PERIOD) => {}
        }
    }
}
