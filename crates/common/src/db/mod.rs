//! Database access for `sqlite://` and `mysql://` (MariaDB 10.6+, MySQL 8)
//! through one sqlx `Any` pool, embedded migrations, and the transactional
//! outbox and inbox of DESIGN §2.
//!
//! SQL here and in the services is written once for both engines: `?`
//! placeholders, `VARCHAR` keys, `BIGINT` millisecond timestamps, `DOUBLE`, and
//! the few statements that differ (insert-or-ignore, upsert) come from
//! [`Dialect`]. Aggregates are cast to `SIGNED` where MySQL would return DECIMAL.
//!
//! MySQL over TLS (rustls, the system's CAs) is asked for in the URL:
//! `?ssl-mode=required` (encrypted, certificate not checked), `verify_ca`
//! (chains to a trusted CA) or `verify_identity` (and names the URL's host);
//! `ssl-ca=/path/ca.pem` adds a CA bundle, and [`Db::connect_with`] adds
//! `DIALSTACK_CA_FILE`'s when the URL names none. `disabled` never uses TLS;
//! the default, `preferred`, uses it when the server offers it, unverified.
//!
//! # Layout
//! - this module: the pool, dialects, migrations, [`outbox_enqueue`],
//!   [`inbox_claim`] and the [`OutboxRelay`]
//! - [`batch`]: the outbox and inbox writes for many messages at once
//! - [`group_commit`]: many small writes from concurrent tasks, one commit

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub mod batch;
pub mod group_commit;

pub use batch::{inbox_claim_many, outbox_enqueue_many, OutboxItem};
pub use group_commit::{BatchWrite, GroupCommit, GroupCommitError, GroupCommitOptions};

use crate::bus::{Channel, OutMessage};
use crate::events::CloudEvent;
use crate::metrics::Metrics;

/// A transaction on the service's database.
pub type Tx = Transaction<'static, Any>;

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// MySQL 8 or MariaDB 10.6+.
    MySql,
}

impl Dialect {
    /// `INSERT` that silently skips a duplicate key.
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE",
            Self::MySql => "INSERT IGNORE",
        }
    }

    /// The clause that turns an `INSERT` into an upsert on `key` (the primary
    /// key); `updates` are `col = <expr>` items where `new(col)` is the value
    /// being inserted, e.g. `&[("state", "new(state)")]`.
    pub fn upsert(self, key: &str, updates: &[(&str, &str)]) -> String {
        let new = |expr: &str| match self {
            Self::Sqlite => expr.replace("new(", "excluded."),
            Self::MySql => expr.replace("new(", "VALUES("),
        };
        let items: Vec<String> = updates
            .iter()
            .map(|(col, expr)| format!("{col} = {}", fix_excluded(&new(expr))))
            .collect();
        match self {
            Self::Sqlite => format!("ON CONFLICT({key}) DO UPDATE SET {}", items.join(", ")),
            Self::MySql => format!("ON DUPLICATE KEY UPDATE {}", items.join(", ")),
        }
    }
}

/// A nullable TEXT column by index or name: MySQL may report TEXT as a
/// BLOB through the `Any` driver, so bytes are taken too (as UTF-8, lossy).
pub fn text_column<I>(row: &sqlx::any::AnyRow, i: I) -> Result<Option<String>, sqlx::Error>
where
    I: sqlx::ColumnIndex<sqlx::any::AnyRow> + Copy,
{
    use sqlx::Row;
    match row.try_get::<Option<String>, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => Ok(row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

/// The condition ` AND col IN (?, ...)` for `n` bound values, or one that
/// matches nothing when `n` is 0 (an empty scope sees no rows).
pub fn and_in(col: &str, n: usize) -> String {
    match n {
        0 => " AND 1 = 0".to_owned(),
        n => format!(" AND {col} IN (?{})", ", ?".repeat(n - 1)),
    }
}

/// `excluded.col)` → `excluded.col`: drops the parenthesis `new(col)` left.
fn fix_excluded(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("excluded.") {
        out.push_str(&rest[..pos + "excluded.".len()]);
        rest = &rest[pos + "excluded.".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push_str(&rest[..end]);
        rest = &rest[end..];
        if let Some(stripped) = rest.strip_prefix(')') {
            rest = stripped;
        }
    }
    out.push_str(rest);
    out
}

/// A database failure at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not usable.
    #[error("bad database url: {0}")]
    BadUrl(String),
    /// The server refused or a statement failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// Its version.
        version: i64,
        /// Its name.
        name: &'static str,
        /// The SQL error.
        #[source]
        source: sqlx::Error,
    },
}

/// One schema change, applied once, in version order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing per service.
    pub version: i64,
    /// Short description.
    pub name: &'static str,
    /// Statements separated by `;`, portable between SQLite and MySQL.
    pub sql: &'static str,
}

/// The migrations every service gets: the outbox and the inbox (the
/// inbox is pruned by age, [`prune_inbox`]).
const COMMON_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 0,
        name: "outbox and inbox",
        sql: "CREATE TABLE IF NOT EXISTS outbox (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            channel VARCHAR(32) NOT NULL,
            routing_key VARCHAR(128) NOT NULL,
            msg_key VARCHAR(128) NOT NULL,
            payload MEDIUMTEXT NOT NULL,
            created_at BIGINT NOT NULL,
            sent_at BIGINT NULL
          );
          CREATE INDEX outbox_pending ON outbox (sent_at, id);
          CREATE TABLE IF NOT EXISTS inbox (
            consumer VARCHAR(64) NOT NULL,
            event_id VARCHAR(64) NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, event_id)
          )",
    },
    Migration {
        version: 1,
        name: "inbox pruning by age",
        sql: "CREATE INDEX inbox_received ON inbox (received_at)",
    },
];

/// A pool plus the engine it talks to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// The engine.
    pub dialect: Dialect,
}

static DRIVERS: Once = Once::new();

impl Db {
    /// As [`Self::connect`], trusting the CA bundle of `tls` for a MySQL URL
    /// that verifies certificates (`ssl-mode=verify_ca|verify_identity`)
    /// without an `ssl-ca` of its own.
    pub async fn connect_with(url: &str, tls: &crate::tls::TlsConfig) -> Result<Self, DbError> {
        match tls.ca_file() {
            Some(ca) if url.starts_with("mysql:") => {
                Self::connect(&with_default_ssl_ca(url, ca)).await
            }
            _ => Self::connect(url).await,
        }
    }

    /// Connects, creating the SQLite file (and its folder) or the MySQL
    /// database when missing. The database is created over a connection
    /// with the URL's parameters (TLS included).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let memory = rest.contains(":memory:") || rest.contains("mode=memory");
            let mut url = url.to_owned();
            if !memory {
                let path = rest.trim_start_matches("//");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| DbError::BadUrl(format!("{}: {e}", parent.display())))?;
                    }
                }
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
            }
            let pool = AnyPoolOptions::new()
                .max_connections(if memory { 1 } else { 4 })
                .min_connections(if memory { 1 } else { 0 })
                .idle_timeout(if memory {
                    None
                } else {
                    Some(Duration::from_secs(600))
                })
                .max_lifetime(if memory {
                    None
                } else {
                    Some(Duration::from_secs(1800))
                })
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            if !memory {
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&pool)
                    .await?;
            }
            Ok(Self {
                pool,
                dialect: Dialect::Sqlite,
            })
        } else if url.starts_with("mysql:") {
            let (server, database) = split_mysql_url(url)?;
            let admin = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&server)
                .await?;
            sqlx::query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .execute(&admin)
            .await?;
            admin.close().await;
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(Self {
                pool,
                dialect: Dialect::MySql,
            })
        } else {
            Err(DbError::BadUrl(format!(
                "{url:?} must start with sqlite: or mysql:"
            )))
        }
    }

    /// Applies the common and the service's migrations not yet applied.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<(), DbError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS dialstack_migrations (
               version BIGINT NOT NULL PRIMARY KEY,
               name VARCHAR(255) NOT NULL,
               applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM dialstack_migrations")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect();
        let all = COMMON_MIGRATIONS
            .iter()
            .map(|m| (m.version - 1_000_000, m))
            .chain(migrations.iter().map(|m| (m.version, m)));
        let mut pending: Vec<_> = all.filter(|(v, _)| !applied.contains(v)).collect();
        pending.sort_by_key(|(v, _)| *v);
        // One connection for every statement: SQLite checks names against a
        // connection's cached schema when it prepares DDL, so a table rebuilt
        // under its old name (create, copy, drop, rename) fails on a pooled
        // connection that has not yet seen the drop.
        let mut conn = self.pool.acquire().await?;
        for (version, m) in pending {
            let wrap = |source| DbError::Migration {
                version: m.version,
                name: m.name,
                source,
            };
            for stmt in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *conn).await.map_err(wrap)?;
            }
            sqlx::query(
                "INSERT INTO dialstack_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(version)
            .bind(m.name)
            .bind(crate::now_ms())
            .execute(&mut *conn)
            .await
            .map_err(wrap)?;
            tracing::info!(version = m.version, name = m.name, "migration applied");
        }
        Ok(())
    }

    /// Begins a transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting out the busy timeout): a deferred
    /// transaction that reads and then writes fails at once with "database is
    /// locked" when another writer committed in between, which concurrent
    /// consumers (a read of the inbox, then its insert) hit under load.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::MySql => self.pool.begin().await,
        }
    }
}

/// `url` plus `ssl-ca=<ca>` when its `ssl-mode` verifies certificates and it
/// names no CA of its own.
fn with_default_ssl_ca(url: &str, ca: &std::path::Path) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut verifies = false;
    for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
        match k {
            "ssl-ca" | "sslca" => return url.to_owned(),
            "ssl-mode" | "sslmode" => {
                verifies = matches!(
                    v.to_ascii_lowercase().as_str(),
                    "verify_ca" | "verify_identity"
                );
            }
            _ => {}
        }
    }
    if !verifies {
        return url.to_owned();
    }
    let path: String = ca
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{url}&ssl-ca={path}")
}

fn split_mysql_url(url: &str) -> Result<(String, String), DbError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base
        .strip_prefix("mysql://")
        .ok_or_else(|| DbError::BadUrl("expected mysql://".into()))?;
    let (authority, database) = after_scheme
        .split_once('/')
        .filter(|(_, db)| !db.is_empty())
        .ok_or_else(|| DbError::BadUrl("mysql url must name a database".into()))?;
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(DbError::BadUrl(format!(
            "database name {database:?} is not [A-Za-z0-9_-]+"
        )));
    }
    let server = match query {
        Some(q) => format!("mysql://{authority}?{q}"),
        None => format!("mysql://{authority}"),
    };
    Ok((server, database.to_owned()))
}

/// Readiness check of the database.
pub struct DbReady(pub Db);

#[async_trait::async_trait]
impl crate::http::ReadyCheck for DbReady {
    fn name(&self) -> &str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.0.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Outbox channel names.
pub mod channel {
    /// The events channel.
    pub const EVENTS: &str = "events";
    /// The commands channel.
    pub const COMMANDS: &str = "commands";
}

/// Writes `event` into the outbox inside `tx`, to be published on `channel`
/// (one of [`channel`]) with partition key `key` once `tx` commits.
pub async fn outbox_enqueue(
    tx: &mut Tx,
    channel: &str,
    key: &str,
    event: &CloudEvent,
) -> Result<(), sqlx::Error> {
    outbox_enqueue_routed(tx, channel, key, &event.ty, event).await
}

/// As [`outbox_enqueue`], with a routing key other than the event's type
/// (a command addressed to one instance: `hangup.<instance>`); at most 128
/// bytes.
pub async fn outbox_enqueue_routed(
    tx: &mut Tx,
    channel: &str,
    key: &str,
    routing_key: &str,
    event: &CloudEvent,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(event).unwrap_or_default();
    sqlx::query(
        "INSERT INTO outbox (id, channel, routing_key, msg_key, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&event.id)
    .bind(channel)
    .bind(routing_key)
    .bind(key)
    .bind(payload)
    .bind(crate::now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records `event_id` as processed by `consumer` inside `tx`. Returns `false`
/// when it was already processed: the caller then skips its side effects.
pub async fn inbox_claim(
    tx: &mut Tx,
    dialect: Dialect,
    consumer: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "{} INTO inbox (consumer, event_id, received_at) VALUES (?, ?, ?)",
        dialect.insert_ignore()
    ))
    .bind(consumer)
    .bind(event_id)
    .bind(crate::now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Publishes outbox rows and marks each sent only after the broker confirmed it.
#[derive(Clone)]
pub struct OutboxRelay {
    db: Db,
    channels: Arc<HashMap<String, Channel>>,
    wake: Arc<Notify>,
    metrics: Option<Metrics>,
    health: Arc<RelayHealth>,
}

/// Whether the relay can publish: readiness goes red while it has been
/// failing with rows pending for longer than [`RelayHealth::GRACE_MS`], so
/// that a broker that accepts connections but not messages (a memory
/// alarm, a hung connection) takes the instance out of rotation.
#[derive(Debug, Default)]
pub struct RelayHealth {
    /// When the current run of failed passes began (ms since epoch; 0: the
    /// last pass succeeded).
    failing_since: std::sync::atomic::AtomicI64,
}

impl RelayHealth {
    /// Failures shorter than this (ms) do not turn readiness red.
    pub const GRACE_MS: i64 = 15_000;

    fn record(&self, ok: bool, now: i64) {
        use std::sync::atomic::Ordering;
        if ok {
            self.failing_since.store(0, Ordering::Relaxed);
        } else {
            let _ =
                self.failing_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// `Err` naming how long the relay has been failing, beyond the grace.
    pub fn status(&self, now: i64) -> Result<(), String> {
        let since = self
            .failing_since
            .load(std::sync::atomic::Ordering::Relaxed);
        if since != 0 && now - since > Self::GRACE_MS {
            Err(format!(
                "cannot publish for {} s (rows stay in the outbox)",
                (now - since) / 1_000
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl crate::http::ReadyCheck for RelayHealth {
    fn name(&self) -> &str {
        "outbox relay"
    }

    async fn check(&self) -> Result<(), String> {
        self.status(crate::now_ms())
    }
}

/// How long consumed event ids are kept for de-duplication (a redelivery
/// after this is applied again; brokers redeliver within minutes).
pub const INBOX_HORIZON_MS: i64 = 7 * 86_400_000;

/// Reads one outbox row. Text columns may come back as bytes (MySQL reports
/// TEXT with a binary collation as BLOB), so both are accepted.
fn outbox_message(row: &AnyRow) -> Result<(String, String, OutMessage), sqlx::Error> {
    let id: String = row.try_get(0)?;
    let channel: String = row.try_get(1)?;
    let payload = match row.try_get::<String, _>(4) {
        Ok(s) => bytes::Bytes::from(s),
        Err(_) => bytes::Bytes::from(row.try_get::<Vec<u8>, _>(4)?),
    };
    let msg = OutMessage {
        id: id.clone(),
        routing_key: row.try_get(2)?,
        key: row.try_get(3)?,
        payload,
    };
    Ok((id, channel, msg))
}

/// How many rows one pass publishes at once.
const RELAY_BATCH: i64 = 256;

impl OutboxRelay {
    /// A relay over `channels` (outbox channel name → bus channel).
    pub fn new(db: Db, channels: HashMap<String, Channel>, metrics: Option<Metrics>) -> Self {
        Self {
            db,
            channels: Arc::new(channels),
            wake: Arc::new(Notify::new()),
            metrics,
            health: Arc::new(RelayHealth::default()),
        }
    }

    /// The relay's health, for readiness.
    pub fn health(&self) -> Arc<RelayHealth> {
        self.health.clone()
    }

    /// Wakes the relay now (call after committing an outbox row).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Rows written but not yet confirmed.
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        let row = sqlx::query("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.db.pool)
            .await?;
        Ok(row.get::<i64, _>(0))
    }

    /// One pass: publishes up to a batch of pending rows. Returns how many were
    /// confirmed, or the first broker error (rows not confirmed stay pending).
    pub async fn relay_once(&self) -> Result<usize, anyhow::Error> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT id, channel, routing_key, msg_key, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(RELAY_BATCH)
        .fetch_all(&self.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut sends = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, channel, msg) = match outbox_message(row) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable outbox row left pending");
                    continue;
                }
            };
            let Some(ch) = self.channels.get(&channel).cloned() else {
                tracing::error!(%id, %channel, "outbox row for an unknown channel left pending");
                continue;
            };
            sends.push(async move { (id, ch.publish(&msg).await) });
        }
        let results = futures_util::future::join_all(sends).await;
        let mut confirmed = Vec::new();
        let mut first_err = None;
        for (id, r) in results {
            match r {
                Ok(()) => confirmed.push(id),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if !confirmed.is_empty() {
            let placeholders = vec!["?"; confirmed.len()].join(",");
            let sql = format!("UPDATE outbox SET sent_at = ? WHERE id IN ({placeholders})");
            let mut q = sqlx::query(&sql).bind(crate::now_ms());
            for id in &confirmed {
                q = q.bind(id);
            }
            q.execute(&self.db.pool).await?;
        }
        match first_err {
            Some(e) if confirmed.is_empty() => Err(e.into()),
            Some(e) => {
                tracing::warn!(error = %e, confirmed = confirmed.len(), "some outbox rows not confirmed");
                Ok(confirmed.len())
            }
            None => Ok(confirmed.len()),
        }
    }

    /// Relays until `shutdown`, then makes a last pass so nothing committed
    /// before the signal stays behind.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut last_gauge = std::time::Instant::now() - Duration::from_secs(10);
        let mut last_cleanup = std::time::Instant::now();
        loop {
            // Only a pass that starts after the signal is a last pass: one
            // already running may have read the table before the last rows
            // were committed.
            let last_pass = shutdown.is_cancelled();
            let result = self.relay_once().await;
            self.health.record(result.is_ok(), crate::now_ms());
            let more = match &result {
                Ok(n) => {
                    failures = 0;
                    *n as i64 == RELAY_BATCH
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "outbox relay pass failed");
                    false
                }
            };
            if last_gauge.elapsed() > Duration::from_secs(1) {
                if let (Some(m), Ok(n)) = (&self.metrics, self.pending().await) {
                    m.set_outbox_pending(n);
                }
                last_gauge = std::time::Instant::now();
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                let cutoff = crate::now_ms() - 3_600_000;
                let _ = sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?")
                    .bind(cutoff)
                    .execute(&self.db.pool)
                    .await;
                if let Err(e) = prune_inbox(&self.db, crate::now_ms() - INBOX_HORIZON_MS).await {
                    tracing::warn!(error = %e, "inbox not pruned");
                }
                last_cleanup = std::time::Instant::now();
            }
            if last_pass {
                if result.is_ok() && !more {
                    break;
                }
                if failures > 3 {
                    tracing::warn!(
                        "outbox relay stopping with rows pending; they go out at next start"
                    );
                    break;
                }
            }
            if more {
                continue;
            }
            let wait = if failures > 0 {
                crate::bus::backoff(failures)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        }
    }
}

/// Whether `e` is a conflict between concurrent transactions that the
/// database resolved by rolling this one back (MySQL's deadlock 1213 or
/// lock wait timeout 1205, SQLSTATE 40001, SQLite's busy database): running
/// the whole transaction again is the remedy the server asks for.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1205 | 1213);
    }
    db.code().as_deref() == Some("40001") || db.message().contains("database is locked")
}

/// Runs `op`, one whole transaction, again while it fails with a conflict
/// ([`is_conflict`]), up to `tries` runs in all; any other error, or the
/// last conflict, is returned. Consumers use it so that a deadlock between
/// two of their own batches is settled here instead of spending a
/// message's deliveries (the broker dead-letters a message after a few).
pub async fn retry_conflicts<T, F, Fut>(tries: u32, mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    use std::hash::BuildHasher;
    let mut run = 1;
    loop {
        match op().await {
            Err(e) if run < tries && is_conflict(&e) => {
                tracing::debug!(error = %e, run, "transaction conflict, running it again");
                // A short random pause, so that the parties of a deadlock
                // do not meet again at once.
                let jitter = std::collections::hash_map::RandomState::new().hash_one(run) % 20;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(run) + jitter)).await;
                run += 1;
            }
            result => return result,
        }
    }
}

/// Deletes inbox entries received before `cutoff` (ms), in bounded
/// batches; returns how many went.
pub async fn prune_inbox(db: &Db, cutoff: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for _ in 0..100 {
        let sql = match db.dialect {
            Dialect::MySql => "DELETE FROM inbox WHERE received_at < ? LIMIT 5000",
            Dialect::Sqlite => {
                "DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox WHERE received_at < ? LIMIT 5000)"
            }
        };
        let n = sqlx::query(sql)
            .bind(cutoff)
            .execute(&db.pool)
            .await?
            .rows_affected();
        total += n;
        if n < 5_000 {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_health_turns_red_only_after_the_grace() {
        let h = RelayHealth::default();
        assert!(h.status(1_000).is_ok());
        h.record(false, 1_000);
        assert!(h.status(1_000 + RelayHealth::GRACE_MS).is_ok());
        // A second failure does not move the start of the run.
        h.record(false, 5_000);
        let e = h.status(2_000 + RelayHealth::GRACE_MS).unwrap_err();
        assert!(e.contains("cannot publish for 16 s"), "{e}");
        h.record(true, 20_000);
        assert!(h.status(1_000_000).is_ok());
    }

    #[test]
    fn in_lists() {
        assert_eq!(and_in("team", 0), " AND 1 = 0");
        assert_eq!(and_in("team", 1), " AND team IN (?)");
        assert_eq!(and_in("c.team", 3), " AND c.team IN (?, ?, ?)");
    }

    #[test]
    fn upsert_clauses_per_dialect() {
        let s = Dialect::Sqlite.upsert("id", &[("state", "new(state)"), ("n", "n + 1")]);
        assert_eq!(
            s,
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, n = n + 1"
        );
        let m = Dialect::MySql.upsert("id", &[("state", "COALESCE(new(state), state)")]);
        assert_eq!(
            m,
            "ON DUPLICATE KEY UPDATE state = COALESCE(VALUES(state), state)"
        );
        let s = Dialect::Sqlite.upsert("id", &[("state", "COALESCE(new(state), state)")]);
        assert_eq!(
            s,
            "ON CONFLICT(id) DO UPDATE SET state = COALESCE(excluded.state, state)"
        );
    }

    #[test]
    fn mysql_url_is_split_into_server_and_database() {
        let (server, db) = split_mysql_url("mysql://root@127.0.0.1:3306/dialstack_x").unwrap();
        assert_eq!(server, "mysql://root@127.0.0.1:3306");
        assert_eq!(db, "dialstack_x");
        assert!(split_mysql_url("mysql://root@127.0.0.1:3306/").is_err());
        assert!(split_mysql_url("mysql://h/a;drop").is_err());
        // The connection that creates the database uses TLS as the pool does.
        let (server, _) =
            split_mysql_url("mysql://u@db:3306/x?ssl-mode=verify_ca&ssl-ca=/ca.pem").unwrap();
        assert_eq!(
            server,
            "mysql://u@db:3306?ssl-mode=verify_ca&ssl-ca=/ca.pem"
        );
    }

    #[test]
    fn the_ca_bundle_applies_only_to_verifying_urls_without_a_ca() {
        let ca = std::path::Path::new("/etc/dial stack/ca.pem");
        assert_eq!(
            with_default_ssl_ca("mysql://u@db/x?ssl-mode=VERIFY_CA", ca),
            "mysql://u@db/x?ssl-mode=VERIFY_CA&ssl-ca=/etc/dial%20stack/ca.pem"
        );
        for url in [
            "mysql://u@db/x",
            "mysql://u@db/x?ssl-mode=required",
            "mysql://u@db/x?ssl-mode=verify_identity&ssl-ca=/own.pem",
        ] {
            assert_eq!(with_default_ssl_ca(url, ca), url);
        }
    }
}
