//! Recording metadata: one row per call from `call.recording.ready`
//! (applied once, through the inbox), and the expired rows the retention
//! sweep deletes after their object.

use dialstack_common::db::{inbox_claim, Dialect, Tx};
use dialstack_contract::RecordingReady;
use sqlx::Row;

use super::Repo;

const DAY_MS: i64 = 86_400_000;

/// A stored recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The call.
    pub call_id: String,
    /// The object's URL in the recording store.
    pub url: String,
    /// Audio length (ms).
    pub duration_ms: i64,
    /// File size.
    pub bytes: i64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Stored (ms since epoch).
    pub created_at: i64,
    /// Deleted by the retention sweep after this (ms since epoch); `None` keeps it.
    pub delete_after: Option<i64>,
}

fn recording_from(r: &sqlx::any::AnyRow) -> Recording {
    Recording {
        call_id: r.get(0),
        url: r.get(1),
        duration_ms: r.get(2),
        bytes: r.get(3),
        sha256: r.get(4),
        created_at: r.get(5),
        delete_after: r.get(6),
    }
}

const COLS: &str = "call_id, url, duration_ms, bytes, sha256, created_at, delete_after";

impl Repo {
    /// Stores a recording's metadata, once per event id. A second recording
    /// of the same call (an upload retried under a new event) replaces the
    /// first. `delete_after` is `retention_days` after the event's time.
    /// The caller has validated the event and checked that its URL lies in
    /// the recording store.
    pub async fn apply_recording(
        &self,
        event_id: &str,
        r: &RecordingReady,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        if !inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
            return Ok(false);
        }
        upsert_recording(&mut tx, self.db.dialect, r).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The recording of a call.
    pub async fn recording(&self, call_id: &str) -> Result<Option<Recording>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM recordings WHERE call_id = ?"))
            .bind(call_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().map(recording_from))
    }

    /// Up to `limit` recordings whose `delete_after` is at or before `now_ms`,
    /// the longest expired first, then (with `default_cutoff`) those with no
    /// `delete_after` created before the cutoff.
    pub async fn expired_recordings(
        &self,
        now_ms: i64,
        default_cutoff: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Recording>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM recordings WHERE delete_after IS NOT NULL AND delete_after <= ? ORDER BY delete_after, call_id LIMIT ?"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out: Vec<Recording> = rows.iter().map(recording_from).collect();
        let left = limit - out.len() as i64;
        if let (Some(cutoff), true) = (default_cutoff, left > 0) {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM recordings WHERE delete_after IS NULL AND created_at < ? ORDER BY created_at, call_id LIMIT ?"
            ))
            .bind(cutoff)
            .bind(left)
            .fetch_all(&self.db.pool)
            .await?;
            out.extend(rows.iter().map(recording_from));
        }
        Ok(out)
    }

    /// Deletes the row of an expired recording whose object is gone. A row
    /// replaced meanwhile (another URL, or no longer expired) stays.
    pub async fn delete_recording(
        &self,
        call_id: &str,
        url: &str,
        now_ms: i64,
        default_cutoff: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM recordings WHERE call_id = ? AND url = ? AND \
             ((delete_after IS NOT NULL AND delete_after <= ?) OR (delete_after IS NULL AND created_at < ?))",
        )
        .bind(call_id)
        .bind(url)
        .bind(now_ms)
        .bind(default_cutoff.unwrap_or(i64::MIN))
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a recording's deletion to `delete_after` (a row whose object
    /// cannot be deleted now is retried later instead of blocking the sweep).
    pub async fn postpone_recording_delete(
        &self,
        call_id: &str,
        delete_after: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE recordings SET delete_after = ? WHERE call_id = ?")
            .bind(delete_after)
            .bind(call_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}

/// Upserts the recording of `r`'s call inside `tx`.
pub(super) async fn upsert_recording(
    tx: &mut Tx,
    dialect: Dialect,
    r: &RecordingReady,
) -> Result<(), sqlx::Error> {
    let delete_after = r.retention_days.map(|d| {
        r.call
            .at_ms
            .saturating_add(i64::from(d).saturating_mul(DAY_MS))
    });
    let upsert = dialect.upsert(
        "call_id",
        &[
            ("url", "new(url)"),
            ("duration_ms", "new(duration_ms)"),
            ("bytes", "new(bytes)"),
            ("sha256", "new(sha256)"),
            ("created_at", "new(created_at)"),
            ("delete_after", "new(delete_after)"),
        ],
    );
    sqlx::query(&format!(
        "INSERT INTO recordings ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) {upsert}"
    ))
    .bind(&r.call.call_id)
    .bind(&r.url)
    .bind(i64::try_from(r.duration_ms).unwrap_or(i64::MAX))
    .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
    .bind(r.sha256.to_ascii_lowercase())
    .bind(dialstack_common::now_ms())
    .bind(delete_after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
