//! Notification channels and the notification outbox: a row per message
//! and channel, written with the alert change that caused it, delivered and
//! retried with backoff by the notifier until sent or given up.

use dialstack_common::db::Tx;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::alerting::RepoError;
use super::Repo;
use crate::domain::channel::ChannelSpec;

/// A stored channel.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelRow {
    /// Its id.
    pub id: String,
    /// Unique name (the `channel` label of `dialstack_notifications_total`).
    pub name: String,
    /// Its settings (secrets only by variable name).
    #[schema(value_type = Object)]
    pub spec: ChannelSpec,
    /// Created (ms).
    pub created_at: i64,
}

fn channel_row(r: &AnyRow) -> Result<ChannelRow, RepoError> {
    let spec = super::text_column(r, 2)?;
    Ok(ChannelRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        spec: serde_json::from_str(&spec).map_err(|e| RepoError::Corrupt {
            what: "channel",
            why: e.to_string(),
        })?,
        created_at: r.try_get(3)?,
    })
}

/// A notification waiting to be delivered.
#[derive(Debug, Clone)]
pub struct Due {
    /// Its id.
    pub id: String,
    /// The channel.
    pub channel_id: String,
    /// `firing`, `repeat`, `resolved` or `test`.
    pub kind: String,
    /// The message (JSON of [`crate::notify::Message`]).
    pub message: String,
    /// Attempts made so far.
    pub attempts: i64,
}

/// Writes one notification into the outbox inside `tx`.
pub async fn enqueue(
    tx: &mut Tx,
    channel_id: &str,
    alert_id: Option<&str>,
    kind: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let now = dialstack_common::now_ms();
    sqlx::query(
        "INSERT INTO notifications (id, alert_id, channel_id, kind, message, state, attempts, next_attempt_at, created_at)
         VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(alert_id)
    .bind(channel_id)
    .bind(kind)
    .bind(message)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Repo {
    /// Stores a new channel.
    pub async fn insert_channel(
        &self,
        name: &str,
        spec: &ChannelSpec,
    ) -> Result<ChannelRow, RepoError> {
        let row = ChannelRow {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            spec: spec.clone(),
            created_at: dialstack_common::now_ms(),
        };
        let r = sqlx::query(
            "INSERT INTO alert_channels (id, name, kind, spec, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(spec.kind())
        .bind(serde_json::to_string(spec).unwrap_or_default())
        .bind(row.created_at)
        .execute(&self.db.pool)
        .await;
        match r {
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                Err(RepoError::Taken("name"))
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(row),
        }
    }

    /// Every channel, by name.
    pub async fn channels(&self) -> Result<Vec<ChannelRow>, RepoError> {
        sqlx::query("SELECT id, name, spec, created_at FROM alert_channels ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(channel_row)
            .collect()
    }

    /// One channel.
    pub async fn channel(&self, id: &str) -> Result<Option<ChannelRow>, RepoError> {
        sqlx::query("SELECT id, name, spec, created_at FROM alert_channels WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .as_ref()
            .map(channel_row)
            .transpose()
    }

    /// Deletes a channel and drops its undelivered notifications.
    pub async fn delete_channel(&self, id: &str) -> Result<bool, RepoError> {
        let mut tx = self.db.begin().await?;
        let n = sqlx::query("DELETE FROM alert_channels WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM notifications WHERE channel_id = ? AND state = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Queues a test message to one channel.
    pub async fn enqueue_test(&self, channel_id: &str, message: &str) -> Result<(), RepoError> {
        let mut tx = self.db.begin().await?;
        enqueue(&mut tx, channel_id, None, "test", message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notifications due at `now`, oldest first.
    pub async fn due_notifications(&self, now: i64, limit: i64) -> Result<Vec<Due>, RepoError> {
        Ok(sqlx::query(
            "SELECT id, channel_id, kind, message, attempts FROM notifications
             WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Due {
                id: r.try_get(0)?,
                channel_id: r.try_get(1)?,
                kind: r.try_get(2)?,
                message: super::text_column(r, 3)?,
                attempts: r.try_get::<i32, _>(4).map(i64::from)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Marks a notification delivered; `false` when it was not pending
    /// (another deliverer got there first).
    pub async fn notification_sent(&self, id: &str) -> Result<bool, RepoError> {
        Ok(sqlx::query(
            "UPDATE notifications SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL
             WHERE id = ? AND state = 'pending'",
        )
        .bind(dialstack_common::now_ms())
        .bind(id)
        .execute(&self.db.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Records a failed attempt: retried at `next_at`, or given up
    /// (`None`). `counted` is false for deferrals that made no attempt
    /// (rate limit of our own).
    pub async fn notification_failed(
        &self,
        id: &str,
        error: &str,
        next_at: Option<i64>,
        counted: bool,
    ) -> Result<(), RepoError> {
        let error: String = error.chars().take(500).collect();
        sqlx::query(
            "UPDATE notifications SET state = ?, attempts = attempts + ?, next_attempt_at = ?, last_error = ?
             WHERE id = ? AND state = 'pending'",
        )
        .bind(if next_at.is_some() { "pending" } else { "failed" })
        .bind(i32::from(counted))
        .bind(next_at.unwrap_or(0))
        .bind(error)
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Notifications not yet delivered.
    pub async fn pending_notifications(&self) -> Result<i64, RepoError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM notifications WHERE state = 'pending'")
                .fetch_one(&self.db.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Forgets what no one reads any more: delivered or given-up
    /// notifications and resolved alerts older than `history_ms`, expired
    /// silences older than a day, completed calls older than two days (no
    /// window reaches further back than one). Returns the rows deleted.
    pub async fn prune(&self, now: i64, history_ms: i64) -> Result<u64, RepoError> {
        let mut n = 0;
        for (sql, before) in [
            (
                "DELETE FROM notifications WHERE state <> 'pending' AND created_at < ?",
                now - history_ms,
            ),
            (
                "DELETE FROM alerts WHERE state = 'resolved' AND updated_at < ?",
                now - history_ms,
            ),
            ("DELETE FROM silences WHERE ends_at < ?", now - 86_400_000),
            (
                "DELETE FROM call_outcomes WHERE completed_at < ?",
                now - 2 * 86_400_000,
            ),
        ] {
            n += sqlx::query(sql)
                .bind(before)
                .execute(&self.db.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
