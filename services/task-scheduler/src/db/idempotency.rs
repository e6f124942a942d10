//! Stored responses of requests sent with an `Idempotency-Key`.
//!
//! A key is reserved before the request runs (a row with status 0), so two
//! concurrent requests with one key cannot both run; the response is stored
//! when it is final. A reservation whose request died with its process is
//! taken over after [`STALE_MS`].

use sqlx::Row;

use super::Repo;

/// How long a key is remembered.
pub const KEY_TTL_MS: i64 = 24 * 3_600_000;
/// A reservation older than this whose response never came is abandoned.
pub const STALE_MS: i64 = 120_000;

/// What a reservation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key is ours: run the request.
    New,
    /// The key was used for this request: its stored response.
    Replay {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// The same key is running right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

impl Repo {
    /// Reserves `id` (the hashed key with its caller and route) for a
    /// request whose body hashes to `request_hash`.
    pub async fn idem_reserve(
        &self,
        id: &str,
        request_hash: &str,
    ) -> Result<Reservation, sqlx::Error> {
        let now = dialstack_common::now_ms();
        sqlx::query("DELETE FROM idempotency WHERE id = ? AND created_at < ?")
            .bind(id)
            .bind(now - KEY_TTL_MS)
            .execute(&self.db.pool)
            .await?;
        let inserted = sqlx::query(&format!(
            "{} INTO idempotency (id, request_hash, status, body, created_at) VALUES (?, ?, 0, NULL, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(id)
        .bind(request_hash)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Reservation::New);
        }
        let Some(r) = sqlx::query(
            "SELECT request_hash, status, body, created_at FROM idempotency WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        else {
            // Expired and swept between the two statements: try once more.
            return Box::pin(self.idem_reserve(id, request_hash)).await;
        };
        let hash: String = r.try_get(0)?;
        let status: i64 = r.try_get(1)?;
        let created: i64 = r.try_get(3)?;
        if hash != request_hash {
            return Ok(Reservation::Mismatch);
        }
        if status == 0 {
            if created < now - STALE_MS {
                let taken = sqlx::query(
                    "UPDATE idempotency SET created_at = ? WHERE id = ? AND status = 0 AND created_at = ?",
                )
                .bind(now)
                .bind(id)
                .bind(created)
                .execute(&self.db.pool)
                .await?;
                if taken.rows_affected() == 1 {
                    return Ok(Reservation::New);
                }
            }
            return Ok(Reservation::InProgress);
        }
        Ok(Reservation::Replay {
            status: u16::try_from(status).unwrap_or(500),
            body: super::text(&r, 2)?.unwrap_or_default(),
        })
    }

    /// Stores the final response of a reserved key.
    pub async fn idem_store(&self, id: &str, status: u16, body: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE idempotency SET status = ?, body = ? WHERE id = ? AND status = 0")
            .bind(i64::from(status))
            .bind(body)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Frees a reserved key whose request failed in a way worth retrying.
    pub async fn idem_release(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM idempotency WHERE id = ? AND status = 0")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Forgets keys older than a day; returns how many.
    pub async fn idem_sweep(&self) -> Result<u64, sqlx::Error> {
        let gone = sqlx::query("DELETE FROM idempotency WHERE created_at < ?")
            .bind(dialstack_common::now_ms() - KEY_TTL_MS)
            .execute(&self.db.pool)
            .await?;
        Ok(gone.rows_affected())
    }
}
