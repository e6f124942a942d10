//! The schema, in version order. A migration is never edited once shipped:
//! a change is a new one appended here.

use dialstack_common::db::Migration;

/// Every migration of user-service.
pub const MIGRATIONS: &[Migration] = &[
    MIGRATION_USERS,
    MIGRATION_SESSIONS,
    MIGRATION_AGENTS,
    MIGRATION_KEY_ROTATION,
    MIGRATION_TEAMS,
    MIGRATION_REVOCATIONS,
    MIGRATION_LOGIN_THROTTLE,
    MIGRATION_AGENT_CALLS,
    MIGRATION_SEALED_SEEDS,
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

/// Signing keys that start signing some time after they are published.
pub const MIGRATION_KEY_ROTATION: Migration = Migration {
    version: 4,
    name: "signing key activation",
    sql: "ALTER TABLE signing_keys ADD COLUMN activates_at BIGINT NOT NULL DEFAULT 0",
};

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

/// Users whose earlier access tokens are void.
pub const MIGRATION_REVOCATIONS: Migration = Migration {
    version: 6,
    name: "access token revocations",
    sql: "CREATE TABLE token_revocations (
            user_id VARCHAR(36) NOT NULL PRIMARY KEY,
            not_before_ms BIGINT NOT NULL
          )",
};

/// Login throttling counters replace the log of failures, which was read
/// before concurrent failures were written (see [`super::throttle`]).
pub const MIGRATION_LOGIN_THROTTLE: Migration = Migration {
    version: 7,
    name: "login throttle counters",
    sql: "DROP TABLE login_failures;
          CREATE TABLE login_throttle (
            k VARCHAR(160) NOT NULL PRIMARY KEY,
            window_start BIGINT NOT NULL,
            attempts BIGINT NOT NULL,
            next_at BIGINT NOT NULL,
            trusted_until BIGINT NOT NULL
          );
          CREATE INDEX login_throttle_window ON login_throttle (window_start)",
};

/// The call an agent is reserved for, talking on or wrapping up, and when a
/// reservation lapses (see [`super::reservations`]).
pub const MIGRATION_AGENT_CALLS: Migration = Migration {
    version: 8,
    name: "agent calls and reservations",
    sql: "ALTER TABLE agents ADD COLUMN call_id VARCHAR(64) NULL;
          ALTER TABLE agents ADD COLUMN reserved_until BIGINT NULL;
          CREATE INDEX agents_call ON agents (call_id)",
};

/// Room for sealed signing seeds (`v1:<kek id>:<nonce>:<ciphertext>`, see
/// [`crate::kek`]): `seed` was VARCHAR(64), which MySQL enforces. Neither
/// engine widens a column with the same statement, so the table is copied;
/// the values are sealed by the service at start, not here.
pub const MIGRATION_SEALED_SEEDS: Migration = Migration {
    version: 9,
    name: "signing seeds sealed at rest",
    sql: "CREATE TABLE signing_keys_sealed (
            kid VARCHAR(64) NOT NULL PRIMARY KEY,
            seed VARCHAR(255) NOT NULL,
            created_at BIGINT NOT NULL,
            retired_at BIGINT NULL,
            activates_at BIGINT NOT NULL DEFAULT 0
          );
          INSERT INTO signing_keys_sealed (kid, seed, created_at, retired_at, activates_at)
            SELECT kid, seed, created_at, retired_at, activates_at FROM signing_keys;
          DROP TABLE signing_keys;
          ALTER TABLE signing_keys_sealed RENAME TO signing_keys",
};
