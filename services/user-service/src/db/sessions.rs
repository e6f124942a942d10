//! Sessions: refresh tokens, one family per login, each token used once.

use sqlx::Row;

use super::keys::revoke_access_tokens;
use super::Repo;

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

    /// Trades the refresh token `hash` for `next_hash` in the same family,
    /// atomically: the old token is claimed only while neither used nor
    /// revoked nor expired, and the next one is stored in the same
    /// transaction. Of concurrent presentations exactly one is `Rotated`; a
    /// later one finds the token used and revokes the whole family, which by
    /// then holds the winner's new token too (someone holds a stolen copy, so
    /// no token of the session survives).
    pub async fn rotate_refresh(
        &self,
        hash: &str,
        next_hash: &str,
        ttl_ms: i64,
    ) -> Result<RefreshUse, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        // The write comes first, so that on SQLite the transaction holds the
        // write lock from its first statement and on MySQL the row is locked.
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ?
             WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at >= ?",
        )
        .bind(now)
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 1 {
            let row =
                sqlx::query("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = ?")
                    .bind(hash)
                    .fetch_one(&mut *tx)
                    .await?;
            let family_id: String = row.try_get(0)?;
            let user_id: String = row.try_get(1)?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(next_hash)
            .bind(&family_id)
            .bind(&user_id)
            .bind(now)
            .bind(now + ttl_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RefreshUse::Rotated { user_id, family_id });
        }
        tx.rollback().await?;
        let row = sqlx::query(
            "SELECT family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshUse::Invalid);
        };
        let family_id: String = row.try_get(0)?;
        let expires_at: i64 = row.try_get(1)?;
        let used_at: Option<i64> = row.try_get(2)?;
        let revoked_at: Option<i64> = row.try_get(3)?;
        if used_at.is_some() && revoked_at.is_none() && expires_at >= now {
            self.revoke_family(&family_id).await?;
            return Ok(RefreshUse::Reused { family_id });
        }
        Ok(RefreshUse::Invalid)
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
}

pub(super) async fn revoke_sessions(
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
