//! The calls this instance placed: one row per attempt, so a redelivered
//! `dial` never places a second call.
//!
//! The writes of a call's life (its row before the INVITE, then each event
//! with its outbox row) go through [`CallLog`], which group-commits the
//! writes of every call in progress: under load, one transaction carries
//! the writes of many calls instead of one each.

use std::collections::{HashMap, HashSet};

use dialstack_common::db::{
    outbox_enqueue, outbox_enqueue_many, BatchWrite, Db, Dialect, GroupCommit, GroupCommitError,
    GroupCommitOptions, Migration, OutboxItem, Tx,
};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallEvent, RecordingReady};
use sqlx::Row;

/// media-processor's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "prompts",
        sql: "CREATE TABLE prompts (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            name VARCHAR(100) NOT NULL UNIQUE,
            kind VARCHAR(8) NOT NULL,
            text TEXT NULL,
            voice VARCHAR(40) NULL,
            rate BIGINT NULL,
            audio MEDIUMBLOB NULL,
            duration_ms BIGINT NOT NULL,
            sha256 VARCHAR(64) NOT NULL,
            created_by VARCHAR(64) NOT NULL,
            created_at BIGINT NOT NULL
          )",
    },
    Migration {
        version: 3,
        name: "calls_placer",
        // Which delivery of the dial wrote the row: a write that failed
        // after it had committed (the connection dropped at the commit)
        // is then recognised as its own by the same delivery's retry,
        // instead of passing for a call already placed.
        sql: "ALTER TABLE calls ADD COLUMN placer VARCHAR(100) NULL",
    },
];

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

impl Repo {
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

    /// Which of the outbox rows `ids` the broker has not confirmed yet.
    pub async fn unsent(&self, ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
        let mut out = HashSet::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id FROM outbox WHERE sent_at IS NULL{}",
                dialstack_common::db::and_in("id", chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.db.pool).await? {
                out.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(out)
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

    /// Puts `call.transcript` into the outbox.
    pub async fn emit_transcript(
        &self,
        source: &str,
        t: &dialstack_contract::CallTranscript,
    ) -> Result<(), sqlx::Error> {
        let ev = CloudEvent::new(source, types::CALL_TRANSCRIPT, &t.call.call_id, t);
        let mut tx = self.db.begin().await?;
        outbox_enqueue(
            &mut tx,
            dialstack_common::db::channel::EVENTS,
            &t.call.call_id,
            &ev,
        )
        .await?;
        tx.commit().await
    }
}

/// One write of a call's life.
#[derive(Debug, Clone)]
pub enum CallWrite {
    /// A call about to be placed, as [`Repo::record_call`].
    Record {
        /// Call id.
        call_id: String,
        /// Attempt id (unique: a second call for it is refused).
        attempt_id: String,
        /// Campaign id.
        campaign_id: String,
        /// The delivery of the dial that writes it.
        placer: String,
    },
    /// A call event into the outbox with the call row's new state, as
    /// [`Repo::emit`].
    Emit {
        /// The call.
        call_id: String,
        /// The event's type, stored as the call's state.
        state: &'static str,
        /// The outcome, for `call.completed`.
        outcome: Option<&'static str>,
        /// The event.
        event: CloudEvent,
    },
}

impl CallWrite {
    /// The write of `event` from `source`.
    pub fn emit(source: &str, event: &CallEvent) -> Self {
        let call = event.call();
        Self::Emit {
            call_id: call.call_id.clone(),
            state: event.ty(),
            outcome: match event {
                CallEvent::Completed(c) => Some(c.outcome.as_str()),
                _ => None,
            },
            event: CloudEvent::new(source, event.ty(), &call.call_id, &event.to_value()),
        }
    }

    /// The id of the event (and of its outbox row) this write stores, if any.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Self::Emit { event, .. } => Some(&event.id),
            Self::Record { .. } => None,
        }
    }
}

/// Applies a batch of [`CallWrite`]s: one statement per new call, one
/// `UPDATE` for the state of every call with events, one multi-row outbox
/// insert.
#[derive(Debug)]
pub struct CallWriter {
    dialect: Dialect,
}

#[async_trait::async_trait]
impl BatchWrite for CallWriter {
    type Op = CallWrite;
    /// For a record, whether the row is its placer's; `true` for an event.
    type Out = bool;

    async fn write(&self, tx: &mut Tx, ops: &[CallWrite]) -> Result<Vec<bool>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut out = Vec::with_capacity(ops.len());
        // The last state of each call in the batch, in first-seen order.
        let mut states: Vec<(&str, &str, Option<&str>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut outbox = Vec::new();
        for op in ops {
            match op {
                CallWrite::Record {
                    call_id,
                    attempt_id,
                    campaign_id,
                    placer,
                } => {
                    let done = sqlx::query(&format!(
                        "{} INTO calls (call_id, attempt_id, campaign_id, state, placer, created_at, updated_at) VALUES (?, ?, ?, 'placing', ?, ?, ?)",
                        self.dialect.insert_ignore()
                    ))
                    .bind(call_id)
                    .bind(attempt_id)
                    .bind(campaign_id)
                    .bind(placer)
                    .bind(now)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    let ours = if done.rows_affected() == 1 {
                        true
                    } else {
                        // Taken: by this placer's own earlier try, or by
                        // another delivery (rows from before placers were
                        // written have none, and are never ours).
                        // A locking read on MariaDB: the row that blocked
                        // the insert, even if it committed after this
                        // transaction's snapshot was taken.
                        let lock = match self.dialect {
                            Dialect::MySql => " LOCK IN SHARE MODE",
                            Dialect::Sqlite => "",
                        };
                        let rows = sqlx::query(&format!(
                            "SELECT placer, call_id, attempt_id FROM calls WHERE attempt_id = ? OR call_id = ?{lock}"
                        ))
                        .bind(attempt_id)
                        .bind(call_id)
                        .fetch_all(&mut **tx)
                        .await?;
                        rows.len() == 1
                            && rows[0].try_get::<Option<String>, _>(0)?.as_deref()
                                == Some(placer.as_str())
                            && rows[0].try_get::<String, _>(1)? == *call_id
                            && rows[0].try_get::<String, _>(2)? == *attempt_id
                    };
                    out.push(ours);
                }
                CallWrite::Emit {
                    call_id,
                    state,
                    outcome,
                    event,
                } => {
                    let s = (call_id.as_str(), *state, *outcome);
                    match index.get(call_id.as_str()) {
                        Some(&i) => states[i] = s,
                        None => {
                            index.insert(call_id, states.len());
                            states.push(s);
                        }
                    }
                    outbox.push(OutboxItem {
                        channel: dialstack_common::db::channel::EVENTS,
                        key: call_id,
                        event,
                    });
                    out.push(true);
                }
            }
        }
        if !states.is_empty() {
            let cases = " WHEN ? THEN ?".repeat(states.len());
            let sql = format!(
                "UPDATE calls SET state = CASE call_id{cases} END, outcome = CASE call_id{cases} END, updated_at = ? WHERE call_id IN (?{})",
                ", ?".repeat(states.len() - 1)
            );
            let mut q = sqlx::query(&sql);
            for (call_id, state, _) in &states {
                q = q.bind(*call_id).bind(*state);
            }
            for (call_id, _, outcome) in &states {
                q = q.bind(*call_id).bind(*outcome);
            }
            q = q.bind(now);
            for (call_id, _, _) in &states {
                q = q.bind(*call_id);
            }
            q.execute(&mut **tx).await?;
        }
        outbox_enqueue_many(tx, &outbox).await?;
        Ok(out)
    }
}

/// The writes of calls in progress, group-committed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CallLog(GroupCommit<CallWriter>);

impl CallLog {
    /// Starts the writer on the current runtime.
    pub fn start(db: Db) -> Self {
        let writer = CallWriter {
            dialect: db.dialect,
        };
        Self(GroupCommit::start(
            db,
            writer,
            GroupCommitOptions::default(),
        ))
    }

    /// Records a call about to be placed by `placer` (one delivery of its
    /// dial), committed when this returns. `true` when the row is
    /// `placer`'s: new, or written by `placer` in an earlier try whose
    /// answer was lost; `false` when another delivery has it (the `dial`
    /// was redelivered, and that call may have been placed).
    pub async fn record_call(
        &self,
        call_id: &str,
        attempt_id: &str,
        campaign_id: &str,
        placer: &str,
    ) -> Result<bool, GroupCommitError> {
        self.0
            .submit(CallWrite::Record {
                call_id: call_id.to_owned(),
                attempt_id: attempt_id.to_owned(),
                campaign_id: campaign_id.to_owned(),
                placer: placer.to_owned(),
            })
            .await
    }

    /// Writes a call event into the outbox with the call row's new state,
    /// committed when this returns; returns the event's id (its outbox row's).
    pub async fn emit(&self, source: &str, event: &CallEvent) -> Result<String, GroupCommitError> {
        self.emit_write(CallWrite::emit(source, event)).await
    }

    /// Writes an event made by [`CallWrite::emit`]; returns its id. The same
    /// write may be retried after an error: when its outbox row is already
    /// there (an earlier try committed although its answer was lost), that
    /// is its success, not a second event.
    pub async fn emit_write(&self, write: CallWrite) -> Result<String, GroupCommitError> {
        let id = write.event_id().unwrap_or_default().to_owned();
        match self.0.submit(write).await {
            Ok(_) => Ok(id),
            Err(GroupCommitError::Sql(e))
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                tracing::info!(event_id = %id, "call event found already stored by an earlier try");
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }
}
