//! Signing keys (published, active, retired) and access-token revocations.
//!
//! Seeds are stored as [`SeedSealer`](crate::kek::SeedSealer) writes them
//! (sealed under the key-encryption key); a seed that does not open is an
//! error, never a reason to generate a new key over it.

use dialstack_common::auth::{Jwks, SigningKey};
use sqlx::Row;

use super::Repo;
use crate::kek::OpenError;

/// A signing key that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A stored seed does not open under the configured keys.
    #[error("signing key {kid} cannot be read")]
    Seed {
        /// The signing key's id.
        kid: String,
        /// Why.
        #[source]
        source: OpenError,
    },
}

impl Repo {
    /// The id of the key-encryption key that seals new seeds (`None`: they
    /// are stored in plaintext).
    pub fn kek_id(&self) -> Option<&str> {
        self.seeds.current_id()
    }

    /// The newest active signing key, created on first use.
    pub async fn current_signing_key(&self) -> Result<SigningKey, KeyError> {
        let row = sqlx::query(
            "SELECT kid, seed FROM signing_keys WHERE retired_at IS NULL AND activates_at <= ?
             ORDER BY activates_at DESC, created_at DESC, kid DESC LIMIT 1",
        )
        .bind(dialstack_common::now_ms())
        .fetch_optional(&self.db.pool)
        .await?;
        if let Some(r) = row {
            return self.open_signing_key(r.try_get(0)?, &r.try_get::<String, _>(1)?);
        }
        let key = self.add_signing_key(0).await?;
        tracing::info!(kid = %key.kid, "signing key created");
        Ok(key)
    }

    /// The public keys of every key not retired.
    pub async fn jwks(&self) -> Result<Jwks, KeyError> {
        let rows = sqlx::query("SELECT kid, seed FROM signing_keys WHERE retired_at IS NULL")
            .fetch_all(&self.db.pool)
            .await?;
        let keys = rows
            .iter()
            .map(|r| {
                let key = self.open_signing_key(r.try_get(0)?, &r.try_get::<String, _>(1)?)?;
                Ok(key.jwk())
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(Jwks {
            keys,
            ..Default::default()
        })
    }

    /// Seals again under the current key-encryption key every stored seed
    /// that is not sealed under it (sealed under the previous key, or in
    /// plaintext from before seeds were sealed), retired keys included.
    /// Returns the kids sealed again. Without a key-encryption key it does
    /// nothing.
    pub async fn reseal_signing_keys(&self) -> Result<Vec<String>, KeyError> {
        let Some(prefix) = self.seeds.current_prefix() else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query("SELECT kid, seed FROM signing_keys WHERE seed NOT LIKE ?")
            .bind(format!("{prefix}%"))
            .fetch_all(&self.db.pool)
            .await?;
        let mut resealed = Vec::new();
        for r in rows {
            let (kid, stored): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let seed = self
                .seeds
                .open(&kid, &stored)
                .map_err(|source| KeyError::Seed {
                    kid: kid.clone(),
                    source,
                })?;
            // Only if the row is still as read: another replica may have
            // sealed it meanwhile.
            let done = sqlx::query("UPDATE signing_keys SET seed = ? WHERE kid = ? AND seed = ?")
                .bind(self.seeds.seal(&kid, &seed))
                .bind(&kid)
                .bind(&stored)
                .execute(&self.db.pool)
                .await?;
            if done.rows_affected() == 1 {
                resealed.push(kid);
            }
        }
        Ok(resealed)
    }

    fn open_signing_key(&self, kid: String, stored: &str) -> Result<SigningKey, KeyError> {
        match self.seeds.open(&kid, stored) {
            Ok(seed) => SigningKey::from_seed(kid.clone(), &seed).ok_or(KeyError::Seed {
                kid,
                source: OpenError::Malformed("not an Ed25519 seed"),
            }),
            Err(source) => Err(KeyError::Seed { kid, source }),
        }
    }

    /// Adds a key that is published now and signs from `activates_at`.
    pub async fn add_signing_key(&self, activates_at: i64) -> Result<SigningKey, sqlx::Error> {
        let key = SigningKey::generate();
        sqlx::query(
            "INSERT INTO signing_keys (kid, seed, created_at, activates_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(self.seeds.seal(&key.kid, &key.seed()))
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

/// Voids the access tokens issued to `user_id` before `now` (ms) without
/// ending its sessions: published in the JWKS so that every verifier refuses
/// them (user-service itself checks the user directly); a client with a
/// refresh token gets a new access token carrying the user's current role
/// and teams.
pub(super) async fn revoke_access_tokens(
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
