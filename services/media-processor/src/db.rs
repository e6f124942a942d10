//! The calls this instance placed: one row per attempt, so a redelivered
//! `dial` never places a second call.

use dialstack_common::db::{outbox_enqueue, Db, Migration};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallEvent, RecordingReady};

/// media-processor's schema.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "calls",
    sql: "CREATE TABLE calls (
            call_id VARCHAR(36) NOT NULL PRIMARY KEY,
            attempt_id VARCHAR(36) NOT NULL UNIQUE,
            campaign_id VARCHAR(36) NOT NULL,
            state VARCHAR(16) NOT NULL,
            outcome VARCHAR(32) NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
          )",
}];

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

impl Repo {
    /// Records a call about to be placed; `false` when the attempt already
    /// has one (the `dial` was redelivered).
    pub async fn record_call(
        &self,
        call_id: &str,
        attempt_id: &str,
        campaign_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let done = sqlx::query(&format!(
            "{} INTO calls (call_id, attempt_id, campaign_id, state, created_at, updated_at) VALUES (?, ?, ?, 'placing', ?, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(call_id)
        .bind(attempt_id)
        .bind(campaign_id)
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Writes a call event into the outbox, updating the call's row in the
    /// same transaction.
    pub async fn emit(&self, source: &str, event: &CallEvent) -> Result<(), sqlx::Error> {
        let call = event.call();
        let ev = CloudEvent::new(source, event.ty(), &call.call_id, &event.to_value());
        let outcome = match event {
            CallEvent::Completed(c) => Some(c.outcome.as_str()),
            _ => None,
        };
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE calls SET state = ?, outcome = ?, updated_at = ? WHERE call_id = ?")
            .bind(event.ty())
            .bind(outcome)
            .bind(dialstack_common::now_ms())
            .bind(&call.call_id)
            .execute(&mut *tx)
            .await?;
        outbox_enqueue(
            &mut tx,
            dialstack_common::db::channel::EVENTS,
            &call.call_id,
            &ev,
        )
        .await?;
        tx.commit().await
    }

    /// Writes `call.recording.ready` into the outbox.
    pub async fn emit_recording(
        &self,
        source: &str,
        ready: &RecordingReady,
    ) -> Result<(), sqlx::Error> {
        let ev = CloudEvent::new(source, types::RECORDING_READY, &ready.call.call_id, ready);
        let mut tx = self.db.begin().await?;
        outbox_enqueue(
            &mut tx,
            dialstack_common::db::channel::EVENTS,
            &ready.call.call_id,
            &ev,
        )
        .await?;
        tx.commit().await
    }
}
