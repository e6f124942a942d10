//! user-service owns users, roles and the keys that sign access tokens. It
//! logs users in (argon2id), issues 15-minute EdDSA JWTs and publishes the
//! public keys at `/.well-known/jwks.json`, which every other service uses to
//! verify tokens.
//!
//! # Layout
//! - [`domain`]: usernames and the password policy
//! - [`db`]: the users and signing-key repositories, migrations
//! - [`http`]: login, sessions, JWKS, audit; OpenAPI
//! - [`agents`]: users, agent profiles, agent state and presence
//!
//! Service-specific settings: `DIALSTACK_ADMIN_PASSWORD` (creates the `admin`
//! user on first start; required while no admin exists),
//! `DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS` (default 30: an agent silent that
//! long goes offline),
//! `DIALSTACK_SERVICE_PASSWORD` (creates or updates the `dialstack-service`
//! service account that other services log in with).

pub mod agents;
pub mod db;
pub mod domain;
pub mod http;

use std::sync::Arc;

use dialstack_common::auth::{Jwks, Role, SigningKey, StaticKeys};
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "user-service";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 8081;
/// The service account other services use.
pub const SERVICE_ACCOUNT: &str = "dialstack-service";

/// user-service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings.
    pub common: CommonConfig,
    /// Password for the bootstrap admin.
    pub admin_password: Option<String>,
    /// Password for the service account.
    pub service_password: Option<String>,
    /// Silence after which an agent goes offline.
    pub heartbeat_timeout: std::time::Duration,
}

impl Config {
    /// Reads the settings. The commands URL is optional here: user-service
    /// publishes `agent.state` on the events channel only.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut env = env.clone();
        if env.get("DIALSTACK_COMMANDS_URL").is_none() {
            env.set("DIALSTACK_COMMANDS_URL", "memory://");
        }
        let heartbeat_secs: u64 = env.parse_or("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", 30)?;
        if !(1..=3600).contains(&heartbeat_secs) {
            return Err(ConfigError::new(
                "DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS",
                "must be 1-3600",
            ));
        }
        let admin_password = env.get("DIALSTACK_ADMIN_PASSWORD").map(str::to_owned);
        if let Some(p) = &admin_password {
            domain::check_password(p)
                .map_err(|e| ConfigError::new("DIALSTACK_ADMIN_PASSWORD", e))?;
        }
        let service_password = env.get("DIALSTACK_SERVICE_PASSWORD").map(str::to_owned);
        if let Some(p) = &service_password {
            domain::check_password(p)
                .map_err(|e| ConfigError::new("DIALSTACK_SERVICE_PASSWORD", e))?;
        }
        Ok(Self {
            common: CommonConfig::from_env(&env, PORT)?,
            admin_password,
            service_password,
            heartbeat_timeout: std::time::Duration::from_secs(heartbeat_secs),
        })
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Users and keys.
    pub repo: db::Repo,
    /// The key that signs new tokens.
    pub signer: Arc<SigningKey>,
    /// The published keys.
    pub jwks: Arc<Jwks>,
    /// The outbox relay (woken after agent state changes).
    pub relay: dialstack_common::db::OutboxRelay,
}

/// A built user-service, ready to run.
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
        let repo = db::Repo::new(base.db.clone());
        if !repo.has_role(Role::Admin).await? {
            let Some(password) = &config.admin_password else {
                anyhow::bail!(ConfigError::new(
                    "DIALSTACK_ADMIN_PASSWORD",
                    "is required to create the first admin"
                ));
            };
            repo.upsert_user(
                "admin",
                Role::Admin,
                &domain::hash_password(password).await?,
            )
            .await?;
            tracing::info!(username = "admin", "bootstrap admin created");
        }
        if let Some(password) = &config.service_password {
            repo.upsert_user(
                SERVICE_ACCOUNT,
                Role::Service,
                &domain::hash_password(password).await?,
            )
            .await?;
        }
        let signer = Arc::new(repo.current_signing_key().await?);
        let jwks = Arc::new(repo.jwks().await?);
        let keys = Arc::new(StaticKeys::from_jwks(&jwks));
        let gauge = base.metrics.register(&prometheus::IntGaugeVec::new(
            prometheus::Opts::new("dialstack_agents", "agents by state"),
            &["state"],
        )?);
        base.tasks.spawn(agents::run_presence(
            repo.clone(),
            base.relay.clone(),
            gauge,
            config.heartbeat_timeout,
            base.shutdown.clone(),
        ));
        let state = AppState {
            repo,
            signer,
            jwks,
            relay: base.relay.clone(),
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
