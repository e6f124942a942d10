//! Users and signing keys.

use base64::Engine as _;
use dialstack_common::auth::{Jwks, Role, SigningKey};
use dialstack_common::db::{Db, Migration};
use sqlx::Row;

/// user-service's schema.
pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

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
        let row =
            sqlx::query("SELECT id, username, role, password_hash FROM users WHERE username = ?")
                .bind(username)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.and_then(|r| {
            Some(User {
                id: r.get(0),
                username: r.get(1),
                role: Role::parse(&r.get::<String, _>(2))?,
                password_hash: r.get(3),
            })
        }))
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        let name: Option<String> = sqlx::query("SELECT username FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .map(|r| r.get(0));
        match name {
            Some(n) => self.user_by_name(&n).await,
            None => Ok(None),
        }
    }

    /// The newest active signing key, created on first use.
    pub async fn current_signing_key(&self) -> Result<SigningKey, sqlx::Error> {
        let row = sqlx::query(
            "SELECT kid, seed FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid DESC LIMIT 1",
        )
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
        let key = SigningKey::generate();
        sqlx::query("INSERT INTO signing_keys (kid, seed, created_at) VALUES (?, ?, ?)")
            .bind(&key.kid)
            .bind(b64().encode(key.seed()))
            .bind(dialstack_common::now_ms())
            .execute(&self.db.pool)
            .await?;
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
        Ok(Jwks { keys })
    }
}
