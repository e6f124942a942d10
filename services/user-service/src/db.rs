//! Users and signing keys.

use base64::Engine as _;
use dialstack_common::auth::{Jwks, Role, SigningKey};
use dialstack_common::db::{Db, Migration};
use sqlx::Row;

/// user-service's schema.
pub const MIGRATIONS: &[Migration] = &[
    MIGRATION_USERS,
    MIGRATION_SESSIONS,
    MIGRATION_AGENTS,
    MIGRATION_KEY_ROTATION,
    MIGRATION_TEAMS,
    MIGRATION_REVOCATIONS,
];

/// Users and signing keys.
pub const MIGRATION_USERS: Migration = Migration {
    version: 1,
    name: "users and signing keys",
    sql: "CREATE TABLE users (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            username VARCHAR(64) NOT NULL UNIQUE,
            role VARCHAR(16) NOT NULL,
            password_hash VARCHAR(255) NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE TABLE signing_keys (
            kid VARCHAR(64) NOT NULL PRIMARY KEY,
            seed VARCHAR(64) NOT NULL,
            created_at BIGINT NOT NULL,
            retired_at BIGINT NULL
          )",
};

/// A stored user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Id (UUIDv7).
    pub id: String,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The teams a supervisor leads (empty for other roles; an agent's
    /// teams are in its profile).
    pub teams: Vec<String>,
}

const USER_COLS: &str = "id, username, role, password_hash, teams";

fn user_from(r: &sqlx::any::AnyRow) -> Option<User> {
    Some(User {
        id: r.get(0),
        username: r.get(1),
        role: Role::parse(&r.get::<String, _>(2))?,
        password_hash: r.get(3),
        teams: split_teams(&r.get::<String, _>(4)),
    })
}

/// `s` cut to at most `max` characters (the audit columns' sizes).
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Teams are stored as `,a,b,` so that `LIKE '%,a,%'` finds members.
fn join_teams(teams: &[String]) -> String {
    if teams.is_empty() {
        String::new()
    } else {
        format!(",{},", teams.join(","))
    }
}

fn split_teams(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    db: Db,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Repo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Whether any user has `role`.
    pub async fn has_role(&self, role: Role) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM users WHERE role = ?")
            .bind(role.as_str())
            .fetch_one(&self.db.pool)
            .await?
            .get(0);
        Ok(n > 0)
    }

    /// Creates the user, or sets the role and password of an existing one.
    pub async fn upsert_user(
        &self,
        username: &str,
        role: Role,
        hash: &str,
    ) -> Result<User, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sql = format!(
            "INSERT INTO users (id, username, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) {}",
            self.db.dialect.upsert(
                "username",
                &[
                    ("role", "new(role)"),
                    ("password_hash", "new(password_hash)"),
                    ("updated_at", "new(updated_at)"),
                ]
            )
        );
        sqlx::query(&sql)
            .bind(&id)
            .bind(username)
            .bind(role.as_str())
            .bind(hash)
            .bind(now)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        self.user_by_name(username)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// A user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE username = ?"))
            .bind(username)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// The newest active signing key, created on first use.
    pub async fn current_signing_key(&self) -> Result<SigningKey, sqlx::Error> {
        let row = sqlx::query(
            "SELECT kid, seed FROM signing_keys WHERE retired_at IS NULL AND activates_at <= ?
             ORDER BY activates_at DESC, created_at DESC, kid DESC LIMIT 1",
        )
        .bind(dialstack_common::now_ms())
        .fetch_optional(&self.db.pool)
        .await?;
        if let Some(r) = row {
            let kid: String = r.get(0);
            let seed = b64()
                .decode(r.get::<String, _>(1))
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            if let Some(k) = SigningKey::from_seed(kid, &seed) {
                return Ok(k);
            }
        }
        let key = self.add_signing_key(0).await?;
        tracing::info!(kid = %key.kid, "signing key created");
        Ok(key)
    }

    /// The public keys of every key not retired.
    pub async fn jwks(&self) -> Result<Jwks, sqlx::Error> {
        let rows = sqlx::query("SELECT kid, seed FROM signing_keys WHERE retired_at IS NULL")
            .fetch_all(&self.db.pool)
            .await?;
        let keys = rows
            .iter()
            .filter_map(|r| {
                let seed = b64().decode(r.get::<String, _>(1)).ok()?;
                SigningKey::from_seed(r.get(0), &seed).map(|k| k.jwk())
            })
            .collect();
        Ok(Jwks {
            keys,
            ..Default::default()
        })
    }
}

/// Refresh tokens, login failures and the audit log.
pub const MIGRATION_SESSIONS: Migration = Migration {
    version: 2,
    name: "refresh tokens, login failures, audit log",
    sql: "CREATE TABLE refresh_tokens (
            token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
            family_id VARCHAR(36) NOT NULL,
            user_id VARCHAR(36) NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT NULL,
            revoked_at BIGINT NULL
          );
          CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
          CREATE TABLE login_failures (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            username VARCHAR(64) NOT NULL,
            ip VARCHAR(64) NOT NULL,
            at BIGINT NOT NULL
          );
          CREATE INDEX login_failures_user ON login_failures (username, at);
          CREATE INDEX login_failures_ip ON login_failures (ip, at);
          CREATE TABLE audit_log (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            at BIGINT NOT NULL,
            kind VARCHAR(64) NOT NULL,
            subject VARCHAR(128) NOT NULL,
            ip VARCHAR(64) NOT NULL,
            detail VARCHAR(255) NOT NULL
          );
          CREATE INDEX audit_log_at ON audit_log (at)",
};

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshUse {
    /// Valid and now used: issue the next token of the family to this user.
    Rotated {
        /// The user.
        user_id: String,
        /// The family.
        family_id: String,
    },
    /// Already used once: the whole family has been revoked.
    Reused {
        /// The revoked family.
        family_id: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (ms since epoch).
    pub at: i64,
    /// `login_succeeded`, `login_failed`, `login_rate_limited`,
    /// `token_family_revoked`, `logout`.
    pub kind: String,
    /// The user or username concerned.
    pub subject: String,
    /// Client address.
    pub ip: String,
    /// Details (never a secret).
    pub detail: String,
}

impl Repo {
    /// Stores a refresh token (its hash) in `family`.
    pub async fn store_refresh(
        &self,
        hash: &str,
        family_id: &str,
        user_id: &str,
        ttl_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let now = dialstack_common::now_ms();
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(family_id)
        .bind(user_id)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Uses a refresh token once. A second use of the same token revokes
    /// every token of its family (someone holds a stolen copy).
    pub async fn use_refresh(&self, hash: &str) -> Result<RefreshUse, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let row = sqlx::query(
            "SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshUse::Invalid);
        };
        let family_id: String = row.try_get(0)?;
        let user_id: String = row.try_get(1)?;
        let expires_at: i64 = row.try_get(2)?;
        let used_at: Option<i64> = row.try_get(3)?;
        let revoked_at: Option<i64> = row.try_get(4)?;
        if revoked_at.is_some() || expires_at < now {
            return Ok(RefreshUse::Invalid);
        }
        if used_at.is_some() {
            self.revoke_family(&family_id).await?;
            return Ok(RefreshUse::Reused { family_id });
        }
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
        )
        .bind(now)
        .bind(hash)
        .execute(&self.db.pool)
        .await?;
        if claimed.rows_affected() != 1 {
            // Two presentations raced: treat as reuse.
            self.revoke_family(&family_id).await?;
            return Ok(RefreshUse::Reused { family_id });
        }
        Ok(RefreshUse::Rotated { user_id, family_id })
    }

    /// Revokes every token of a family; returns how many were still live.
    pub async fn revoke_family(&self, family_id: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        )
        .bind(dialstack_common::now_ms())
        .bind(family_id)
        .execute(&self.db.pool)
        .await?
        .rows_affected())
    }

    /// The family of a refresh token, if it exists.
    pub async fn refresh_family(&self, hash: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = ?")
            .bind(hash)
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// Records a failed login.
    pub async fn record_failure(&self, username: &str, ip: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO login_failures (id, username, ip, at) VALUES (?, ?, ?, ?)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(username)
            .bind(ip)
            .bind(dialstack_common::now_ms())
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Failures since `since_ms` for a username (`by_ip` false) or an IP, and
    /// the time of the oldest of them.
    pub async fn failures_since(
        &self,
        key: &str,
        by_ip: bool,
        since_ms: i64,
    ) -> Result<(i64, Option<i64>), sqlx::Error> {
        let col = if by_ip { "ip" } else { "username" };
        let row = sqlx::query(&format!(
            "SELECT COUNT(*), MIN(at) FROM login_failures WHERE {col} = ? AND at > ?"
        ))
        .bind(key)
        .bind(since_ms)
        .fetch_one(&self.db.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        kind: &str,
        subject: &str,
        ip: &str,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, kind, subject, ip, detail) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(dialstack_common::now_ms())
        .bind(kind)
        .bind(clip(subject, 128))
        .bind(clip(ip, 64))
        .bind(clip(detail, 255))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The newest audit entries first.
    pub async fn audit_list(&self, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT at, kind, subject, ip, detail FROM audit_log ORDER BY at DESC, id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    ip: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// Agent profiles and state.
pub const MIGRATION_AGENTS: Migration = Migration {
    version: 3,
    name: "agents",
    sql: "CREATE TABLE agents (
            user_id VARCHAR(36) NOT NULL PRIMARY KEY,
            display_name VARCHAR(128) NOT NULL,
            sip_uri VARCHAR(255) NOT NULL,
            teams VARCHAR(1024) NOT NULL,
            skills VARCHAR(2048) NOT NULL,
            max_concurrent BIGINT NOT NULL,
            state VARCHAR(16) NOT NULL,
            pause_code VARCHAR(64) NULL,
            state_since BIGINT NOT NULL,
            last_heartbeat BIGINT NOT NULL
          );
          CREATE INDEX agents_state ON agents (state)",
};

/// An agent's profile and state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Agent {
    /// The agent's user id.
    pub id: String,
    /// Name shown to supervisors.
    pub display_name: String,
    /// Where answered calls are bridged.
    pub sip_uri: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Skills with levels 1-10.
    pub skills: std::collections::BTreeMap<String, u8>,
    /// Calls at once (normally 1).
    pub max_concurrent: i64,
    /// Current state.
    pub state: crate::domain::AgentState,
    /// Why paused.
    pub pause_code: Option<String>,
    /// Since when (ms since epoch).
    pub state_since: i64,
    /// Last heartbeat (ms since epoch).
    pub last_heartbeat: i64,
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// Done: the agent as it is now.
    Changed(Agent),
    /// Not allowed from the current state.
    Refused(crate::domain::AgentState),
    /// No such agent.
    Unknown,
}

const AGENT_COLS: &str =
    "user_id, display_name, sip_uri, teams, skills, max_concurrent, state, pause_code, state_since, last_heartbeat";

fn agent_from(r: &sqlx::any::AnyRow) -> Result<Agent, sqlx::Error> {
    let teams: String = r.try_get(3)?;
    let skills: String = r.try_get(4)?;
    let state: String = r.try_get(6)?;
    Ok(Agent {
        id: r.try_get(0)?,
        display_name: r.try_get(1)?,
        sip_uri: r.try_get(2)?,
        teams: split_teams(&teams),
        skills: serde_json::from_str(&skills).unwrap_or_default(),
        max_concurrent: r.try_get(5)?,
        state: crate::domain::AgentState::parse(&state)
            .unwrap_or(crate::domain::AgentState::Offline),
        pause_code: r.try_get(7)?,
        state_since: r.try_get(8)?,
        last_heartbeat: r.try_get(9)?,
    })
}

/// One `agent.state` change, as the event carries it.
struct AgentStateEvent<'a> {
    previous: crate::domain::AgentState,
    state: crate::domain::AgentState,
    pause_code: Option<&'a str>,
    reason: &'a str,
    at_ms: i64,
}

/// Writes the `agent.state` event into the outbox inside `tx`.
async fn enqueue_agent_state(
    tx: &mut dialstack_common::db::Tx,
    id: &str,
    c: &AgentStateEvent<'_>,
) -> Result<(), sqlx::Error> {
    let data = dialstack_contract::AgentStateChanged {
        agent_id: id.to_owned(),
        previous: c.previous.as_str().to_owned(),
        state: c.state.as_str().to_owned(),
        pause_code: c.pause_code.map(str::to_owned),
        reason: c.reason.to_owned(),
        at_ms: c.at_ms,
    };
    let ev = dialstack_common::events::CloudEvent::new(
        crate::NAME,
        dialstack_contract::types::AGENT_STATE,
        id,
        &data,
    );
    dialstack_common::db::outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, id, &ev).await
}

/// Deletes an agent's profile inside `tx`; an agent that was not offline is
/// reported gone (`agent.state` to `offline` with `reason`), so pacing stops
/// counting it.
async fn remove_agent(
    tx: &mut dialstack_common::db::Tx,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let state: Option<String> = sqlx::query("SELECT state FROM agents WHERE user_id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    sqlx::query("DELETE FROM agents WHERE user_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let previous = state.as_deref().and_then(crate::domain::AgentState::parse);
    if let Some(previous) = previous.filter(|s| *s != crate::domain::AgentState::Offline) {
        let change = AgentStateEvent {
            previous,
            state: crate::domain::AgentState::Offline,
            pause_code: None,
            reason,
            at_ms: now,
        };
        enqueue_agent_state(tx, id, &change).await?;
    }
    Ok(())
}

impl Repo {
    /// Creates a user; `None` when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        hash: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let done = sqlx::query(&format!(
            "{} INTO users (id, username, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(username)
        .bind(role.as_str())
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        self.user_by_name(username).await
    }

    /// Creates or updates an agent's profile (the state is kept).
    pub async fn upsert_agent(&self, a: &Agent) -> Result<Agent, sqlx::Error> {
        let teams = join_teams(&a.teams);
        let skills = serde_json::to_string(&a.skills).unwrap_or_else(|_| "{}".into());
        let now = dialstack_common::now_ms();
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, 'offline', NULL, ?, ?) {}",
            self.db.dialect.upsert(
                "user_id",
                &[
                    ("display_name", "new(display_name)"),
                    ("sip_uri", "new(sip_uri)"),
                    ("teams", "new(teams)"),
                    ("skills", "new(skills)"),
                    ("max_concurrent", "new(max_concurrent)"),
                ]
            )
        );
        let mut tx = self.db.begin().await?;
        let before: Option<String> = sqlx::query(&format!(
            "SELECT teams FROM agents WHERE user_id = ?{}",
            self.for_update()
        ))
        .bind(&a.id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        sqlx::query(&sql)
            .bind(&a.id)
            .bind(&a.display_name)
            .bind(&a.sip_uri)
            .bind(&teams)
            .bind(skills)
            .bind(a.max_concurrent)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Tokens carry the teams: other services must not go on trusting
        // the old ones.
        if before.unwrap_or_default() != teams {
            revoke_access_tokens(&mut tx, self.db.dialect, &a.id, now).await?;
        }
        tx.commit().await?;
        self.agent(&a.id).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// One agent.
    pub async fn agent(&self, id: &str) -> Result<Option<Agent>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE user_id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// Agents, filtered by state and team in SQL and by skill here.
    pub async fn agents(
        &self,
        state: Option<&str>,
        team: Option<&str>,
        skill: Option<&str>,
    ) -> Result<Vec<Agent>, sqlx::Error> {
        let mut sql = format!("SELECT {AGENT_COLS} FROM agents WHERE 1 = 1");
        if state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if team.is_some() {
            // `_` is a LIKE wildcard and may be part of a team name.
            sql.push_str(" AND teams LIKE ? ESCAPE '!'");
        }
        sql.push_str(" ORDER BY user_id");
        let mut q = sqlx::query(&sql);
        if let Some(s) = state {
            q = q.bind(s.to_owned());
        }
        if let Some(t) = team {
            let literal = t.replace('!', "!!").replace('_', "!_").replace('%', "!%");
            q = q.bind(format!("%,{literal},%"));
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        let mut out = rows.iter().map(agent_from).collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = skill {
            out.retain(|a| a.skills.contains_key(k));
        }
        Ok(out)
    }

    /// Moves an agent to `to` if the table allows it from its current state
    /// (`system`: a heartbeat timeout, allowed from any state but offline),
    /// writing the `agent.state` event in the same transaction.
    pub async fn set_state(
        &self,
        id: &str,
        to: crate::domain::AgentState,
        pause_code: Option<&str>,
        reason: &str,
        system: bool,
    ) -> Result<StateChange, sqlx::Error> {
        let Some(current) = self.agent(id).await? else {
            return Ok(StateChange::Unknown);
        };
        let allowed = if system {
            current.state.can_time_out()
        } else {
            current.state.can_become(to)
        };
        if !allowed {
            return Ok(StateChange::Refused(current.state));
        }
        self.transition(&current, to, pause_code, reason).await
    }

    /// Moves `current` to `to` only if it is still exactly as read (same
    /// state since the same moment), writing the `agent.state` event in the
    /// same transaction.
    pub async fn transition(
        &self,
        current: &Agent,
        to: crate::domain::AgentState,
        pause_code: Option<&str>,
        reason: &str,
    ) -> Result<StateChange, sqlx::Error> {
        let id = current.id.as_str();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE agents SET state = ?, pause_code = ?, state_since = ? WHERE user_id = ? AND state = ? AND state_since = ?",
        )
        .bind(to.as_str())
        .bind(pause_code)
        .bind(now)
        .bind(id)
        .bind(current.state.as_str())
        .bind(current.state_since)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            // Someone else moved it first: report what it is now.
            tx.rollback().await?;
            let now_state = self
                .agent(id)
                .await?
                .map(|a| a.state)
                .unwrap_or(current.state);
            return Ok(StateChange::Refused(now_state));
        }
        let change = AgentStateEvent {
            previous: current.state,
            state: to,
            pause_code,
            reason,
            at_ms: now,
        };
        enqueue_agent_state(&mut tx, id, &change).await?;
        tx.commit().await?;
        Ok(StateChange::Changed(
            self.agent(id).await?.ok_or(sqlx::Error::RowNotFound)?,
        ))
    }

    /// Records a heartbeat; `false` for an unknown agent.
    pub async fn heartbeat(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("UPDATE agents SET last_heartbeat = ? WHERE user_id = ?")
                .bind(dialstack_common::now_ms())
                .bind(id)
                .execute(&self.db.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Agents not offline whose last heartbeat is older than `cutoff_ms`.
    pub async fn silent_agents(&self, cutoff_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_id FROM agents WHERE state <> 'offline' AND last_heartbeat < ?",
        )
        .bind(cutoff_ms)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// Agents per state.
    pub async fn agent_counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM agents GROUP BY state")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// Signing keys that start signing some time after they are published.
pub const MIGRATION_KEY_ROTATION: Migration = Migration {
    version: 4,
    name: "signing key activation",
    sql: "ALTER TABLE signing_keys ADD COLUMN activates_at BIGINT NOT NULL DEFAULT 0",
};

impl Repo {
    /// Adds a key that is published now and signs from `activates_at`.
    pub async fn add_signing_key(&self, activates_at: i64) -> Result<SigningKey, sqlx::Error> {
        let key = SigningKey::generate();
        sqlx::query(
            "INSERT INTO signing_keys (kid, seed, created_at, activates_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(b64().encode(key.seed()))
        .bind(dialstack_common::now_ms())
        .bind(activates_at)
        .execute(&self.db.pool)
        .await?;
        Ok(key)
    }

    /// Retires every key older than the signing one once the signing one has
    /// been active for `after_ms` (the last token an old key signed has
    /// expired by then). Returns the retired kids.
    pub async fn retire_superseded(&self, after_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let current = sqlx::query(
            "SELECT kid, activates_at FROM signing_keys WHERE retired_at IS NULL AND activates_at <= ?
             ORDER BY activates_at DESC, created_at DESC, kid DESC LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(current) = current else {
            return Ok(Vec::new());
        };
        let (kid, since): (String, i64) = (current.try_get(0)?, current.try_get(1)?);
        if now < since + after_ms {
            return Ok(Vec::new());
        }
        let old: Vec<String> = sqlx::query("SELECT kid FROM signing_keys WHERE retired_at IS NULL AND kid <> ? AND activates_at <= ?")
            .bind(&kid)
            .bind(since)
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for k in &old {
            sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE kid = ?")
                .bind(now)
                .bind(k)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(old)
    }
}

impl Repo {
    /// Replaces a user's password hash and ends every session of that user.
    pub async fn set_password(&self, user_id: &str, hash: &str) -> Result<(), sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        revoke_sessions(&mut tx, self.db.dialect, user_id, now).await?;
        tx.commit().await
    }
}

/// Supervisors' teams, and per-team settings (the wrap-up timeout).
pub const MIGRATION_TEAMS: Migration = Migration {
    version: 5,
    name: "supervisor teams, team settings",
    sql: "ALTER TABLE users ADD COLUMN teams VARCHAR(1024) NOT NULL DEFAULT '';
          CREATE TABLE teams (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            wrap_up_timeout_secs BIGINT NULL,
            updated_at BIGINT NOT NULL
          )",
};

/// A team's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Team {
    /// Name.
    pub name: String,
    /// Seconds after which wrap-up ends by itself (`null`: the agent ends it).
    pub wrap_up_timeout_secs: Option<i64>,
}

/// A change to a user; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// New role.
    pub role: Option<Role>,
    /// New supervisor teams.
    pub teams: Option<Vec<String>>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// What an update or delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    /// Done: the user as it is now (`None` after a delete).
    Done(Option<User>),
    /// No such user.
    Unknown,
    /// Refused: it would leave no admin.
    LastAdmin,
}

impl Repo {
    /// Every user, by username.
    pub async fn users(&self) -> Result<Vec<User>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY username"))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().filter_map(user_from).collect())
    }

    /// Applies `u` to a user in one transaction. A role or password change
    /// ends every session of the user. Demoting the last admin is refused.
    pub async fn update_user(&self, id: &str, u: &UserUpdate) -> Result<UserChange, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        // Admins first, then the user: every role change takes the locks in
        // the same order, so two of them wait for each other, never deadlock.
        let admins = match u.role {
            Some(_) => self.lock_admins(&mut tx).await?,
            None => Vec::new(),
        };
        let Some(before) = self.lock_user(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(UserChange::Unknown);
        };
        let demotes_admin = before.role == Role::Admin && u.role.is_some_and(|r| r != Role::Admin);
        if demotes_admin && !admins.iter().any(|a| a != id) {
            tx.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        // Only the fields given are written, so concurrent changes of other
        // fields are not undone.
        let mut sets = vec!["updated_at = ?"];
        if u.role.is_some() {
            sets.push("role = ?");
        }
        if u.teams.is_some() {
            sets.push("teams = ?");
        }
        if u.password_hash.is_some() {
            sets.push("password_hash = ?");
        }
        let sql = format!("UPDATE users SET {} WHERE id = ?", sets.join(", "));
        let mut q = sqlx::query(&sql).bind(now);
        if let Some(r) = u.role {
            q = q.bind(r.as_str());
        }
        if let Some(t) = &u.teams {
            q = q.bind(join_teams(t));
        }
        if let Some(h) = &u.password_hash {
            q = q.bind(h.clone());
        }
        q.bind(id).execute(&mut *tx).await?;
        let role_changed = u.role.is_some_and(|r| r != before.role);
        if role_changed {
            // Agent profiles only belong to agents.
            remove_agent(&mut tx, id, "role_changed", now).await?;
        }
        if role_changed || u.password_hash.is_some() {
            revoke_sessions(&mut tx, self.db.dialect, id, now).await?;
        } else if u.teams.as_ref().is_some_and(|t| *t != before.teams) {
            // Tokens carry the teams; the session goes on with a new token.
            revoke_access_tokens(&mut tx, self.db.dialect, id, now).await?;
        }
        tx.commit().await?;
        Ok(UserChange::Done(self.user_by_id(id).await?))
    }

    /// Deletes a user, its agent profile and its sessions. Deleting the last
    /// admin is refused.
    pub async fn delete_user(&self, id: &str) -> Result<UserChange, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let admins = self.lock_admins(&mut tx).await?;
        let Some(before) = self.lock_user(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(UserChange::Unknown);
        };
        if before.role == Role::Admin && !admins.iter().any(|a| a != id) {
            tx.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        remove_agent(&mut tx, id, "user_deleted", now).await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        revoke_sessions(&mut tx, self.db.dialect, id, now).await?;
        tx.commit().await?;
        Ok(UserChange::Done(None))
    }

    /// The admins' ids. On MySQL their rows stay locked until `tx` ends, so
    /// two admins demoting each other at once cannot both succeed (SQLite
    /// runs one write transaction at a time).
    async fn lock_admins(
        &self,
        tx: &mut dialstack_common::db::Tx,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM users WHERE role = 'admin' ORDER BY id{}",
            self.for_update()
        ))
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// ` FOR UPDATE` where the engine has row locks (MySQL).
    fn for_update(&self) -> &'static str {
        match self.db.dialect {
            dialstack_common::db::Dialect::MySql => " FOR UPDATE",
            dialstack_common::db::Dialect::Sqlite => "",
        }
    }

    /// The user, read (and on MySQL locked) inside `tx`.
    async fn lock_user(
        &self,
        tx: &mut dialstack_common::db::Tx,
        id: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE id = ?{}",
            self.for_update()
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// Every team with settings.
    pub async fn teams(&self) -> Result<Vec<Team>, sqlx::Error> {
        let rows = sqlx::query("SELECT name, wrap_up_timeout_secs FROM teams ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Team {
                    name: r.try_get(0)?,
                    wrap_up_timeout_secs: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Creates or replaces a team's settings.
    pub async fn put_team(&self, t: &Team) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO teams (name, wrap_up_timeout_secs, updated_at) VALUES (?, ?, ?) {}",
            self.db.dialect.upsert(
                "name",
                &[
                    ("wrap_up_timeout_secs", "new(wrap_up_timeout_secs)"),
                    ("updated_at", "new(updated_at)"),
                ]
            )
        );
        sqlx::query(&sql)
            .bind(&t.name)
            .bind(t.wrap_up_timeout_secs)
            .bind(dialstack_common::now_ms())
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Agents in `wrap_up`.
    pub async fn agents_in_wrap_up(&self) -> Result<Vec<Agent>, sqlx::Error> {
        self.agents(Some(crate::domain::AgentState::WrapUp.as_str()), None, None)
            .await
    }
}

async fn revoke_sessions(
    tx: &mut dialstack_common::db::Tx,
    dialect: dialstack_common::db::Dialect,
    user_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    revoke_access_tokens(tx, dialect, user_id, now).await
}

/// Voids the access tokens issued to `user_id` before `now` (ms) without
/// ending its sessions: published in the JWKS so that every verifier refuses
/// them (user-service itself checks the user directly); a client with a
/// refresh token gets a new access token carrying the user's current role
/// and teams.
async fn revoke_access_tokens(
    tx: &mut dialstack_common::db::Tx,
    dialect: dialstack_common::db::Dialect,
    user_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO token_revocations (user_id, not_before_ms) VALUES (?, ?) {}",
        dialect.upsert("user_id", &[("not_before_ms", "new(not_before_ms)")])
    );
    sqlx::query(&sql)
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Users whose earlier access tokens are void.
pub const MIGRATION_REVOCATIONS: Migration = Migration {
    version: 6,
    name: "access token revocations",
    sql: "CREATE TABLE token_revocations (
            user_id VARCHAR(36) NOT NULL PRIMARY KEY,
            not_before_ms BIGINT NOT NULL
          )",
};

impl Repo {
    /// Revocations newer than `since_ms` (older ones void only tokens that
    /// have expired anyway).
    pub async fn revocations_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<dialstack_common::auth::Revoked>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_id, not_before_ms FROM token_revocations WHERE not_before_ms >= ? ORDER BY user_id",
        )
        .bind(since_ms)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(dialstack_common::auth::Revoked {
                    sub: r.try_get(0)?,
                    not_before_ms: r.try_get(1)?,
                })
            })
            .collect()
    }
}
