//! Call transcripts from `call.transcript`: one per call (a later one for
//! the same call replaces it), read under the access of the call's record
//! and deleted with it ([`super::retention`], and erasure in
//! [`super::customers`]).

use dialstack_common::db::{Dialect, Tx};
use dialstack_contract::CallTranscript;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Repo;

/// A stored transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transcript {
    /// The call.
    pub call_id: String,
    /// The callee's words.
    pub text: String,
    /// The recognizer's confidence (0-1), when it gave one.
    pub confidence: Option<f64>,
    /// The engine and model, e.g. `pocketsphinx en-us`.
    pub engine: String,
    /// Seconds of audio transcribed.
    pub audio_seconds: f64,
    /// When it was stored (ms since epoch).
    pub created_at: i64,
}

/// Stores `t` inside `tx`, replacing an earlier transcript of the call.
pub(super) async fn upsert_transcript(
    tx: &mut Tx,
    dialect: Dialect,
    t: &CallTranscript,
) -> Result<(), sqlx::Error> {
    let upsert = dialect.upsert(
        "call_id",
        &[
            ("text", "new(text)"),
            ("confidence", "new(confidence)"),
            ("engine", "new(engine)"),
            ("audio_seconds", "new(audio_seconds)"),
            ("created_at", "new(created_at)"),
        ],
    );
    sqlx::query(&format!(
        "INSERT INTO transcripts (call_id, text, confidence, engine, audio_seconds, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) {upsert}"
    ))
    .bind(t.call.call_id.as_str())
    .bind(t.text.as_str())
    .bind(t.confidence.map(f64::from))
    .bind(t.engine.as_str())
    .bind(t.audio_seconds)
    .bind(dialstack_common::now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Repo {
    /// A call's transcript.
    pub async fn transcript(&self, call_id: &str) -> Result<Option<Transcript>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT call_id, text, confidence, engine, audio_seconds, created_at FROM transcripts WHERE call_id = ?",
        )
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(|r| Transcript {
            call_id: r.get(0),
            text: super::cdrs::text(&r, 1).unwrap_or_default(),
            // f32 from the event, kept as f64: rounded for display.
            confidence: r.get::<Option<f64>, _>(2).map(|c| (c * 1e6).round() / 1e6),
            engine: r.get(3),
            audio_seconds: r.get(4),
            created_at: r.get(5),
        }))
    }
}
