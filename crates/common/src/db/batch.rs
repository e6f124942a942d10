//! Batched forms of the outbox and inbox writes, for a consumer or producer
//! that applies many messages in one transaction: a handful of statements
//! per batch instead of one per message, with the same guarantees as
//! [`super::outbox_enqueue`] and [`super::inbox_claim`].

use std::collections::HashSet;

use sqlx::Row;

use super::{Dialect, Tx};
use crate::events::CloudEvent;

/// Rows per multi-row `INSERT` (SQLite allows 32,766 bound values).
const ROWS_PER_INSERT: usize = 500;

/// One outbox row to write: the channel (one of [`super::channel`]), the
/// partition key and the event.
#[derive(Debug, Clone, Copy)]
pub struct OutboxItem<'a> {
    /// Outbox channel name.
    pub channel: &'a str,
    /// Partition key (the call or agent id).
    pub key: &'a str,
    /// The event.
    pub event: &'a CloudEvent,
}

/// Writes every item into the outbox inside `tx`, as [`super::outbox_enqueue`]
/// does for one, in as few statements as the batch allows.
pub async fn outbox_enqueue_many(tx: &mut Tx, items: &[OutboxItem<'_>]) -> Result<(), sqlx::Error> {
    let now = crate::now_ms();
    for chunk in items.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO outbox (id, channel, routing_key, msg_key, payload, created_at) VALUES (?, ?, ?, ?, ?, ?){}",
            ", (?, ?, ?, ?, ?, ?)".repeat(chunk.len() - 1)
        );
        let mut q = sqlx::query(&sql);
        for it in chunk {
            q = q
                .bind(&it.event.id)
                .bind(it.channel)
                .bind(&it.event.ty)
                .bind(it.key)
                .bind(serde_json::to_string(it.event).unwrap_or_default())
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records each of `event_ids` as processed by `consumer` inside `tx`, as
/// [`super::inbox_claim`] does for one. Returns, per id and in order, whether
/// it is new: `false` for an id processed before, or repeated earlier in
/// `event_ids`, whose side effects the caller skips.
///
/// Exactly as strong as claiming one at a time: the ids are inserted with
/// their unique key in `tx`, so a concurrent transaction claiming one of
/// them waits for `tx` and then sees it taken. When such a race is lost
/// here (an id committed by another transaction after `tx` looked), the
/// multi-row insert fails on the duplicate alone and the ids are claimed one
/// by one instead.
pub async fn inbox_claim_many(
    tx: &mut Tx,
    dialect: Dialect,
    consumer: &str,
    event_ids: &[&str],
) -> Result<Vec<bool>, sqlx::Error> {
    // First occurrence of each id, in order.
    let mut seen_here = HashSet::with_capacity(event_ids.len());
    let first: Vec<bool> = event_ids.iter().map(|id| seen_here.insert(*id)).collect();
    let candidates: Vec<&str> = event_ids
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(id, _)| *id)
        .collect();
    let mut done_before = HashSet::new();
    for chunk in candidates.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "SELECT event_id FROM inbox WHERE consumer = ?{}",
            super::and_in("event_id", chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(consumer);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            done_before.insert(text(&row)?);
        }
    }
    let fresh: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|id| !done_before.contains(*id))
        .collect();
    let mut taken_now = HashSet::new();
    let now = crate::now_ms();
    for chunk in fresh.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO inbox (consumer, event_id, received_at) VALUES (?, ?, ?){}",
            ", (?, ?, ?)".repeat(chunk.len() - 1)
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(consumer).bind(*id).bind(now);
        }
        match q.execute(&mut **tx).await {
            Ok(_) => {}
            // Only this statement was undone (both engines roll back a
            // duplicate-key failure per statement, the transaction stays).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                for id in chunk {
                    if !super::inbox_claim(tx, dialect, consumer, id).await? {
                        taken_now.insert(*id);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(event_ids
        .iter()
        .zip(first)
        .map(|(id, first)| first && !done_before.contains(*id) && !taken_now.contains(*id))
        .collect())
}

/// Column 0 as text (MySQL reports a binary-collated VARCHAR as bytes).
fn text(row: &sqlx::any::AnyRow) -> Result<String, sqlx::Error> {
    match row.try_get::<String, _>(0) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(0)?;
            String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }
    }
}
