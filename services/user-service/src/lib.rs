//! user-service owns users, roles and the keys that sign access tokens. It
//! logs users in (argon2id), issues 15-minute EdDSA JWTs and publishes the
//! public keys at `/.well-known/jwks.json`, which every other service uses to
//! verify tokens.
//!
//! # Layout
//! - [`domain`]: usernames, the password policy and hashing, agent states
//!   and who may move them, what a call needs of its agent
//! - [`db`]: the repository by aggregate (users, sessions, login throttle,
//!   audit, agents, teams, keys and revocations) and the migrations
//! - [`http`]: login, client credentials, sessions, JWKS, audit, the auth
//!   layer (revocations applied here too); OpenAPI and the router
//! - [`users`]: users (admin CRUD) and team settings
//! - [`agents`]: agent profiles, agent state, reserving an agent for a call
//!   (`POST /v1/agents/reserve`, see [`agents::reserve`]), presence, wrap-up
//!   timeouts and lapsed reservations
//! - [`keyring`]: the signing key in use, rotation and retirement
//! - [`kek`]: the key-encryption key that seals signing seeds at rest
//! - [`hashing`]: the bounded password hashing pool
//! - [`throttle`]: login throttling (pair backoff, address and account caps)
//! - [`extract`]: request extractors shared by the route modules
//!
//! Service-specific settings: `DIALSTACK_ADMIN_PASSWORD` (creates the `admin`
//! user on first start; required while no admin exists),
//! `DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS` (default 30: an agent silent that
//! long goes offline), `DIALSTACK_AGENT_RESERVATION_SECS` (default 15, 1-300:
//! a reserved agent not connected to its call that long is available again;
//! keep it above media-processor's `DIALSTACK_AGENT_ANSWER_MS`, the time an
//! agent's phone may ring, or a slow agent's reservation lapses mid-ring),
//! `DIALSTACK_ACCESS_TOKEN_TTL_SECS` (default 900),
//! `DIALSTACK_KEY_PUBLISH_DELAY_SECS` (default 30),
//! `DIALSTACK_SERVICE_PASSWORD` (creates or updates the `dialstack-service`
//! service account that other services log in with),
//! `DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR` (default 1000: attempts from one
//! client address in an hour, across accounts),
//! `DIALSTACK_LOGIN_ACCOUNT_FAILURES_PER_HOUR` (default 100: attempts on one
//! account in an hour from addresses it has not logged in from recently),
//! `DIALSTACK_LOGIN_FREE_ATTEMPTS` (default 5: attempts of one account and
//! address pair before its exponential backoff starts),
//! `DIALSTACK_LOGIN_BACKOFF_MAX_SECS` (default 900: the longest wait of that
//! backoff), `DIALSTACK_PASSWORD_HASH_WORKERS` (default: the CPUs, at most 4;
//! each hash holds 19 MiB) and `DIALSTACK_PASSWORD_HASH_QUEUE` (default 32:
//! requests waiting per lane before 503). See [`throttle`] and [`hashing`].
//! `DIALSTACK_KEY_ENCRYPTION_KEY` (32 bytes, base64; required when
//! `DIALSTACK_ENVIRONMENT=production`) seals the signing seeds, and
//! `DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS` still opens them during a
//! rotation; see [`kek`].

pub mod agents;
pub mod db;
pub mod domain;
pub mod extract;
pub mod hashing;
pub mod http;
pub mod kek;
pub mod keyring;
pub mod throttle;
pub mod users;

use std::sync::Arc;

use dialstack_common::auth::Role;
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
    /// `DIALSTACK_AGENT_RESERVATION_SECS` (default 15): how long a
    /// reservation holds an agent before it lapses unused.
    pub reservation_hold: std::time::Duration,
    /// `DIALSTACK_ACCESS_TOKEN_TTL_SECS` (default 900).
    pub access_ttl: std::time::Duration,
    /// `DIALSTACK_KEY_PUBLISH_DELAY_SECS` (default 30): a new key is in the
    /// JWKS this long before it signs.
    pub key_publish_delay: std::time::Duration,
    /// `DIALSTACK_LOGIN_*`: login throttling.
    pub limits: throttle::LoginLimits,
    /// `DIALSTACK_PASSWORD_HASH_WORKERS`: hashes at once.
    pub hash_workers: usize,
    /// `DIALSTACK_PASSWORD_HASH_QUEUE`: requests waiting per lane.
    pub hash_queue: usize,
    /// `DIALSTACK_KEY_ENCRYPTION_KEY` and `..._PREVIOUS`: how signing seeds
    /// are stored.
    pub seeds: kek::SeedSealer,
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
        let reservation_secs: u64 = env.parse_or("DIALSTACK_AGENT_RESERVATION_SECS", 15)?;
        if !(1..=300).contains(&reservation_secs) {
            return Err(ConfigError::new(
                "DIALSTACK_AGENT_RESERVATION_SECS",
                "must be 1-300",
            ));
        }
        let ttl_secs: u64 = env.parse_or("DIALSTACK_ACCESS_TOKEN_TTL_SECS", 900)?;
        if !(1..=3600).contains(&ttl_secs) {
            return Err(ConfigError::new(
                "DIALSTACK_ACCESS_TOKEN_TTL_SECS",
                "must be 1-3600",
            ));
        }
        let publish_secs: u64 = env.parse_or("DIALSTACK_KEY_PUBLISH_DELAY_SECS", 30)?;
        if publish_secs > 3600 {
            return Err(ConfigError::new(
                "DIALSTACK_KEY_PUBLISH_DELAY_SECS",
                "must be at most 3600",
            ));
        }
        let defaults = throttle::LoginLimits::default();
        let ranged = |var: &'static str, default: i64, range: std::ops::RangeInclusive<i64>| {
            let v: i64 = env.parse_or(var, default)?;
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    var,
                    format!("must be {}-{}", range.start(), range.end()),
                ))
            }
        };
        let limits = throttle::LoginLimits {
            ip_per_hour: ranged(
                "DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR",
                defaults.ip_per_hour,
                1..=1_000_000,
            )?,
            account_per_hour: ranged(
                "DIALSTACK_LOGIN_ACCOUNT_FAILURES_PER_HOUR",
                defaults.account_per_hour,
                1..=1_000_000,
            )?,
            free_attempts: ranged(
                "DIALSTACK_LOGIN_FREE_ATTEMPTS",
                defaults.free_attempts,
                1..=1000,
            )?,
            backoff_max: std::time::Duration::from_secs(ranged(
                "DIALSTACK_LOGIN_BACKOFF_MAX_SECS",
                defaults.backoff_max.as_secs() as i64,
                1..=86_400,
            )? as u64),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hash_workers = ranged(
            "DIALSTACK_PASSWORD_HASH_WORKERS",
            cpus.clamp(1, 4) as i64,
            1..=64,
        )? as usize;
        let hash_queue = ranged("DIALSTACK_PASSWORD_HASH_QUEUE", 32, 1..=10_000)? as usize;
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
        let seeds = kek::SeedSealer::from_env(&env)?;
        Ok(Self {
            common: CommonConfig::from_env(&env, PORT)?,
            admin_password,
            service_password,
            heartbeat_timeout: std::time::Duration::from_secs(heartbeat_secs),
            reservation_hold: std::time::Duration::from_secs(reservation_secs),
            access_ttl: std::time::Duration::from_secs(ttl_secs),
            key_publish_delay: std::time::Duration::from_secs(publish_secs),
            limits,
            hash_workers,
            hash_queue,
            seeds,
        })
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Users and keys.
    pub repo: db::Repo,
    /// The signing keys.
    pub keyring: Arc<keyring::Keyring>,
    /// Access token lifetime.
    pub access_ttl: std::time::Duration,
    /// How long a new signing key is published before it signs.
    pub key_publish_delay: std::time::Duration,
    /// The outbox relay (woken after agent state changes).
    pub relay: dialstack_common::db::OutboxRelay,
    /// Login throttling limits.
    pub limits: throttle::LoginLimits,
    /// Password hashing for requests (bounded).
    pub hasher: hashing::PasswordPool,
    /// `dialstack_login_refused_total{reason}`: attempts refused unchecked.
    pub refused: prometheus::IntCounterVec,
    /// How long a reservation holds an agent.
    pub reservation_hold: std::time::Duration,
    /// `dialstack_agent_reservations_total{result}`: reservation requests by
    /// result (`reserved`, `none`: no agent fits and is available,
    /// `lost_race`: the ones that fitted went to concurrent reservations).
    pub reservations: prometheus::IntCounterVec,
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
        if config.seeds.current_id().is_none() {
            tracing::warn!(
                var = kek::KEK_VAR,
                "signing keys are stored in plaintext: no key-encryption key is set"
            );
        }
        let repo = db::Repo::new(base.db.clone()).with_seeds(config.seeds.clone());
        // First: a seed that no configured key opens stops the start before
        // anything else is done.
        let keyring = keyring::Keyring::load(repo.clone()).await?;
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
            // The name is reserved for the service account: never turn a
            // person's account (an admin, say) into it.
            if let Some(u) = repo.user_by_name(SERVICE_ACCOUNT).await? {
                if u.role != Role::Service {
                    anyhow::bail!(ConfigError::new(
                        "DIALSTACK_SERVICE_PASSWORD",
                        format!(
                            "user {SERVICE_ACCOUNT} exists with role {}; rename it first",
                            u.role.as_str()
                        )
                    ));
                }
            }
            repo.upsert_user(
                SERVICE_ACCOUNT,
                Role::Service,
                &domain::hash_password(password).await?,
            )
            .await?;
        }
        let keys = keyring.verify_keys();
        base.tasks.spawn(keyring::run_keyring(
            keyring.clone(),
            config.access_ttl,
            base.shutdown.clone(),
        ));
        let gauge = base.metrics.register(&prometheus::IntGaugeVec::new(
            prometheus::Opts::new("dialstack_agents", "agents by state"),
            &["state"],
        )?);
        base.tasks.spawn(agents::run_presence(
            repo.clone(),
            base.relay.clone(),
            gauge,
            config.heartbeat_timeout,
            config.reservation_hold,
            base.shutdown.clone(),
        ));
        let reservations = base.metrics.register(&prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dialstack_agent_reservations_total",
                "agent reservation requests by result",
            ),
            &["result"],
        )?);
        for result in ["reserved", "none", "lost_race"] {
            reservations.with_label_values(&[result]);
        }
        let pool_metrics = hashing::PoolMetrics::new()?;
        base.metrics.register(&pool_metrics.running);
        base.metrics.register(&pool_metrics.peak);
        base.metrics.register(&pool_metrics.queued);
        base.metrics.register(&pool_metrics.rejected);
        let hasher = hashing::PasswordPool::start(
            config.hash_workers,
            config.hash_queue,
            Some(pool_metrics),
        );
        let refused = base.metrics.register(&prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dialstack_login_refused_total",
                "login and token attempts refused before the password was checked",
            ),
            &["reason"],
        )?);
        base.tasks.spawn(throttle::run_pruning(
            repo.clone(),
            config.limits.clone(),
            base.shutdown.clone(),
        ));
        let state = AppState {
            repo,
            keyring,
            access_ttl: config.access_ttl,
            key_publish_delay: config.key_publish_delay,
            relay: base.relay.clone(),
            limits: config.limits,
            hasher,
            refused,
            reservation_hold: config.reservation_hold,
            reservations,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        env.set("DIALSTACK_DATABASE_URL", "sqlite://unused.db");
        env.set("DIALSTACK_EVENTS_URL", "memory://");
        Config::from_env(&env)
    }

    #[test]
    fn known_placeholder_secrets_are_refused_at_start() {
        for var in ["DIALSTACK_ADMIN_PASSWORD", "DIALSTACK_SERVICE_PASSWORD"] {
            let e = config(&[(var, "dev-admin-change-me")]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
            assert!(e.to_string().contains("placeholder"), "{e}");
        }
    }

    #[test]
    fn the_reservation_hold_is_read_and_bounded() {
        assert_eq!(
            config(&[]).unwrap().reservation_hold,
            std::time::Duration::from_secs(15)
        );
        assert_eq!(
            config(&[("DIALSTACK_AGENT_RESERVATION_SECS", "2")])
                .unwrap()
                .reservation_hold,
            std::time::Duration::from_secs(2)
        );
        for bad in ["0", "301", "soon", "-1"] {
            let e = config(&[("DIALSTACK_AGENT_RESERVATION_SECS", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("DIALSTACK_AGENT_RESERVATION_SECS"),
                "{bad}: {e}"
            );
        }
    }
}
