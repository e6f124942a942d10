//! Call detail records: one row per call, built from the call's events in
//! whatever order they arrive. A later stage never gives way to an earlier
//! one, timestamps are kept from the first event that knew them, and each
//! event is applied once (inbox). `call.completed` brings the call's
//! quality; reads join the call's recording (see [`super::recordings`]).

use dialstack_common::db::{inbox_claim, inbox_claim_many, Dialect, Tx};
use dialstack_contract::{types, CallEvent, RecordingReady};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Repo;

/// Longest quality object stored (the column's size); a longer one is
/// dropped with a warning rather than failing the call's record.
const MAX_QUALITY_JSON: usize = 4000;

/// One call detail record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cdr {
    /// Call id.
    pub call_id: String,
    /// Attempt id.
    pub attempt_id: String,
    /// Campaign id.
    pub campaign_id: String,
    /// Destination.
    pub phone: String,
    /// Latest stage: `dialing`, `ringing`, `answered`, `completed`.
    pub state: String,
    /// Outcome, once completed.
    pub outcome: Option<String>,
    /// Failure reason.
    pub reason: Option<String>,
    /// Final SIP status.
    pub sip_status: Option<i64>,
    /// INVITE sent (ms since epoch).
    pub dialed_at: Option<i64>,
    /// Ringing (ms since epoch).
    pub ringing_at: Option<i64>,
    /// Answered (ms since epoch).
    pub answered_at: Option<i64>,
    /// Ended (ms since epoch).
    pub ended_at: Option<i64>,
    /// INVITE to answer or final response (ms).
    pub ring_ms: Option<i64>,
    /// Answer to hang-up (ms).
    pub talk_ms: Option<i64>,
    /// RTP packets sent.
    pub rtp_sent: Option<i64>,
    /// RTP packets received.
    pub rtp_received: Option<i64>,
    /// The campaign's team.
    pub team: Option<String>,
    /// The agent the call was bridged to.
    pub agent_id: Option<String>,
    /// Voice quality measured by media-processor (the `quality` object of
    /// `call.completed`: packets, jitter, loss, concealment, R-factor, MOS).
    #[schema(value_type = Option<Object>)]
    pub quality: Option<serde_json::Value>,
    /// The call's recording, once stored.
    pub recording: Option<RecordingLink>,
}

/// What a CDR says about its recording; the audio is at `href`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingLink {
    /// Audio length (ms).
    pub duration_ms: i64,
    /// File size.
    pub bytes: i64,
    /// SHA-256 of the file, lowercase hex (also its `ETag`).
    pub sha256: String,
    /// Where to download it: `/v1/calls/{call_id}/recording`.
    pub href: String,
}

/// Filters of a CDR listing.
#[derive(Debug, Clone, Default)]
pub struct CdrQuery {
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Calls after this id.
    pub after: Option<String>,
    /// Only calls bridged to this agent (an agent reading its own calls).
    pub agent_id: Option<String>,
    /// Only calls of these teams (a supervisor); `Some(empty)` matches none.
    pub teams: Option<Vec<String>>,
    /// Only calls whose MOS is below this (calls without one never match).
    pub mos_below: Option<f64>,
    /// At most this many.
    pub limit: i64,
}

/// The columns a call event writes.
const COLS: &str = "call_id, attempt_id, campaign_id, phone, state, outcome, reason, sip_status, dialed_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, rtp_sent, rtp_received, team, agent_id, mos, quality";

/// What a read returns: the CDR and its recording, if any.
const SELECT: &str = "SELECT c.call_id, c.attempt_id, c.campaign_id, c.phone, c.state, c.outcome, c.reason, c.sip_status, c.dialed_at, c.ringing_at, c.answered_at, c.ended_at, c.ring_ms, c.talk_ms, c.rtp_sent, c.rtp_received, c.team, c.agent_id, c.quality, r.duration_ms, r.bytes, r.sha256 FROM cdrs c LEFT JOIN recordings r ON r.call_id = c.call_id";

fn cdr_from(r: &sqlx::any::AnyRow) -> Cdr {
    let call_id: String = r.get(0);
    let quality = r
        .get::<Option<String>, _>(18)
        .and_then(|q| serde_json::from_str(&q).ok());
    let recording = match (r.get(19), r.get(20), r.get(21)) {
        (Some(duration_ms), Some(bytes), Some(sha256)) => Some(RecordingLink {
            duration_ms,
            bytes,
            sha256,
            href: format!("/v1/calls/{call_id}/recording"),
        }),
        _ => None,
    };
    Cdr {
        quality,
        recording,
        call_id,
        attempt_id: r.get(1),
        campaign_id: r.get(2),
        phone: r.get(3),
        state: r.get(4),
        outcome: r.get(5),
        reason: r.get(6),
        sip_status: r.get(7),
        dialed_at: r.get(8),
        ringing_at: r.get(9),
        answered_at: r.get(10),
        ended_at: r.get(11),
        ring_ms: r.get(12),
        talk_ms: r.get(13),
        rtp_sent: r.get(14),
        rtp_received: r.get(15),
        team: r.get(16),
        agent_id: r.get(17),
    }
}

/// The stage an event type moves a call to, with its rank.
pub fn stage(ty: &str) -> Option<(&'static str, i64)> {
    match ty {
        types::CALL_DIALING => Some(("dialing", 1)),
        types::CALL_RINGING => Some(("ringing", 2)),
        types::CALL_ANSWERED => Some(("answered", 3)),
        types::CALL_COMPLETED => Some(("completed", 4)),
        _ => None,
    }
}

impl Repo {
    /// Applies one call event to its CDR, once. Returns `false` for an event
    /// already applied or of a type that does not change the CDR.
    pub async fn apply(&self, event_id: &str, ev: &CallEvent) -> Result<bool, sqlx::Error> {
        if stage(ev.ty()).is_none() {
            return Ok(false);
        }
        let mut tx = self.db.begin().await?;
        if !inbox_claim(&mut tx, self.db.dialect, crate::NAME, event_id).await? {
            return Ok(false);
        }
        upsert_cdr(&mut tx, self.db.dialect, ev).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Applies call events and recordings, each once, in one transaction:
    /// one inbox claim for the batch, then each new event's write. Returns,
    /// per item, whether it was applied (`false`: applied before, repeated in
    /// the batch, or of a type that changes nothing). If it fails, nothing of
    /// the batch is applied.
    pub async fn apply_batch(&self, items: &[Applied<'_>]) -> Result<Vec<bool>, sqlx::Error> {
        let ids: Vec<&str> = items.iter().map(|i| i.event_id).collect();
        let mut tx = self.db.begin().await?;
        let fresh = inbox_claim_many(&mut tx, self.db.dialect, crate::NAME, &ids).await?;
        // One row per call: its new events folded in delivery order, as
        // applying them one after the other would leave it.
        let mut applied = vec![false; items.len()];
        let mut rows: std::collections::BTreeMap<&str, CdrRow<'_>> = Default::default();
        let mut recordings = Vec::new();
        for (i, item) in items.iter().enumerate().filter(|(i, _)| fresh[*i]) {
            match item.change {
                Change::Call(ev) => {
                    let Some(row) = CdrRow::of(ev) else { continue };
                    applied[i] = true;
                    match rows.entry(row.call_id) {
                        std::collections::btree_map::Entry::Occupied(mut e) => {
                            e.get_mut().then(row)
                        }
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(row);
                        }
                    }
                }
                Change::Recording(r) => {
                    applied[i] = true;
                    recordings.push(r);
                }
            }
        }
        // Rows in key order (the map's): two batches touching the same calls
        // lock them in the same order and cannot deadlock each other.
        let rows: Vec<CdrRow<'_>> = rows.into_values().collect();
        upsert_cdrs(&mut tx, self.db.dialect, &rows).await?;
        recordings.sort_by_key(|r| &r.call.call_id);
        for r in recordings {
            super::recordings::upsert_recording(&mut tx, self.db.dialect, r).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// One CDR.
    pub async fn get(&self, call_id: &str) -> Result<Option<Cdr>, sqlx::Error> {
        let row = sqlx::query(&format!("{SELECT} WHERE c.call_id = ?"))
            .bind(call_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().map(cdr_from))
    }

    /// CDRs in call-id (time) order after the cursor.
    pub async fn list(&self, q: &CdrQuery) -> Result<Vec<Cdr>, sqlx::Error> {
        let mut sql = format!("{SELECT} WHERE 1 = 1");
        if q.campaign_id.is_some() {
            sql.push_str(" AND c.campaign_id = ?");
        }
        if q.outcome.is_some() {
            sql.push_str(" AND c.outcome = ?");
        }
        if q.after.is_some() {
            sql.push_str(" AND c.call_id > ?");
        }
        if q.agent_id.is_some() {
            sql.push_str(" AND c.agent_id = ?");
        }
        let teams = q.teams.as_deref().unwrap_or_default();
        if q.teams.is_some() {
            sql.push_str(&dialstack_common::db::and_in("c.team", teams.len()));
        }
        if q.mos_below.is_some() {
            sql.push_str(" AND c.mos < ?");
        }
        sql.push_str(" ORDER BY c.call_id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for v in [&q.campaign_id, &q.outcome, &q.after, &q.agent_id]
            .into_iter()
            .flatten()
            .chain(teams)
        {
            query = query.bind(v);
        }
        if let Some(mos) = q.mos_below {
            query = query.bind(mos);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        Ok(rows.iter().map(cdr_from).collect())
    }
}

/// One write of a batch: the event id (for the inbox) and what it changes.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    /// The CloudEvent id.
    pub event_id: &'a str,
    /// The change.
    pub change: Change<'a>,
}

/// What an event changes.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A call's CDR.
    Call(&'a CallEvent),
    /// A call's recording (validated by the caller, as for
    /// [`Repo::apply_recording`]).
    Recording(&'a RecordingReady),
}

/// Upserts the CDR of `ev`'s call inside `tx`; `false` for an event type
/// that does not change the CDR.
async fn upsert_cdr(tx: &mut Tx, dialect: Dialect, ev: &CallEvent) -> Result<bool, sqlx::Error> {
    let Some(row) = CdrRow::of(ev) else {
        return Ok(false);
    };
    upsert_cdrs(tx, dialect, std::slice::from_ref(&row)).await?;
    Ok(true)
}

/// What one or more events of a call write into its CDR.
#[derive(Debug, Clone, PartialEq)]
struct CdrRow<'a> {
    call_id: &'a str,
    attempt_id: &'a str,
    campaign_id: &'a str,
    phone: &'a str,
    state: &'static str,
    rank: i64,
    outcome: Option<&'static str>,
    reason: Option<&'static str>,
    sip_status: Option<i64>,
    dialed_at: Option<i64>,
    ringing_at: Option<i64>,
    answered_at: Option<i64>,
    ended_at: Option<i64>,
    ring_ms: Option<i64>,
    talk_ms: Option<i64>,
    rtp_sent: Option<i64>,
    rtp_received: Option<i64>,
    team: Option<&'a str>,
    agent_id: Option<&'a str>,
    mos: Option<f64>,
    quality: Option<String>,
}

impl<'a> CdrRow<'a> {
    /// The row `ev` writes; `None` for an event type the CDR does not follow.
    fn of(ev: &'a CallEvent) -> Option<Self> {
        let (state, rank) = stage(ev.ty())?;
        let d = ev.call();
        let done = match ev {
            CallEvent::Completed(c) => Some(c),
            _ => None,
        };
        let quality = done.and_then(|c| c.quality.as_ref());
        let quality_json = quality
            .and_then(|q| serde_json::to_string(q).ok())
            .filter(|q| {
                let fits = q.len() <= MAX_QUALITY_JSON;
                if !fits {
                    tracing::warn!(call_id = %d.call_id, len = q.len(), "quality object too long, not stored");
                }
                fits
            });
        let at = |s: &str| (s == state).then_some(d.at_ms);
        Some(Self {
            call_id: &d.call_id,
            attempt_id: &d.attempt_id,
            campaign_id: &d.campaign_id,
            phone: &d.phone,
            state,
            rank,
            outcome: done.map(|c| c.outcome.as_str()),
            reason: done.and_then(|c| c.reason).map(|r| r.as_str()),
            sip_status: done.and_then(|c| c.sip_status).map(i64::from),
            dialed_at: at("dialing"),
            ringing_at: at("ringing"),
            answered_at: at("answered"),
            ended_at: at("completed"),
            ring_ms: match ev {
                CallEvent::Answered(a) => Some(a.ring_ms),
                CallEvent::Completed(c) => Some(c.ring_ms),
                _ => None,
            },
            talk_ms: done.map(|c| c.talk_ms),
            rtp_sent: done.map(|c| c.rtp_sent as i64),
            rtp_received: done.map(|c| c.rtp_received as i64),
            team: d.team.as_deref(),
            agent_id: done.and_then(|c| c.agent_id.as_deref()),
            mos: quality.map(|q| q.mos).filter(|m| m.is_finite()),
            quality: quality_json,
        })
    }

    /// Folds a later event of the same call in, with the upsert's rules
    /// (see [`upsert_cdrs`]): the first known time of each stage and the
    /// team are kept, a later known value replaces the rest, the highest
    /// stage wins. Upserting the folded row leaves the CDR as upserting
    /// each event in turn would.
    fn then(&mut self, later: Self) {
        fn latest<T>(old: &mut Option<T>, new: Option<T>) {
            if new.is_some() {
                *old = new;
            }
        }
        fn first<T>(old: &mut Option<T>, new: Option<T>) {
            if old.is_none() {
                *old = new;
            }
        }
        latest(&mut self.outcome, later.outcome);
        latest(&mut self.reason, later.reason);
        latest(&mut self.sip_status, later.sip_status);
        first(&mut self.dialed_at, later.dialed_at);
        first(&mut self.ringing_at, later.ringing_at);
        first(&mut self.answered_at, later.answered_at);
        first(&mut self.ended_at, later.ended_at);
        latest(&mut self.ring_ms, later.ring_ms);
        latest(&mut self.talk_ms, later.talk_ms);
        latest(&mut self.rtp_sent, later.rtp_sent);
        latest(&mut self.rtp_received, later.rtp_received);
        first(&mut self.team, later.team);
        latest(&mut self.agent_id, later.agent_id);
        latest(&mut self.mos, later.mos);
        latest(&mut self.quality, later.quality);
        if later.rank > self.rank {
            self.state = later.state;
            self.rank = later.rank;
        }
    }
}

/// Rows per upsert statement (22 values each).
const ROWS_PER_UPSERT: usize = 200;

/// Upserts CDR rows (distinct calls) inside `tx`, in as few statements as
/// the rows allow.
async fn upsert_cdrs(
    tx: &mut Tx,
    dialect: Dialect,
    rows: &[CdrRow<'_>],
) -> Result<(), sqlx::Error> {
    let upsert = dialect.upsert(
        "call_id",
        &[
            ("outcome", "COALESCE(new(outcome), outcome)"),
            ("reason", "COALESCE(new(reason), reason)"),
            ("sip_status", "COALESCE(new(sip_status), sip_status)"),
            ("dialed_at", "COALESCE(dialed_at, new(dialed_at))"),
            ("ringing_at", "COALESCE(ringing_at, new(ringing_at))"),
            ("answered_at", "COALESCE(answered_at, new(answered_at))"),
            ("ended_at", "COALESCE(ended_at, new(ended_at))"),
            ("ring_ms", "COALESCE(new(ring_ms), ring_ms)"),
            ("talk_ms", "COALESCE(new(talk_ms), talk_ms)"),
            ("rtp_sent", "COALESCE(new(rtp_sent), rtp_sent)"),
            ("rtp_received", "COALESCE(new(rtp_received), rtp_received)"),
            ("team", "COALESCE(team, new(team))"),
            ("agent_id", "COALESCE(new(agent_id), agent_id)"),
            ("mos", "COALESCE(new(mos), mos)"),
            ("quality", "COALESCE(new(quality), quality)"),
            ("updated_at", "new(updated_at)"),
            // MySQL applies these in order, so state is set before its rank changes.
            (
                "state",
                "CASE WHEN new(state_rank) > state_rank THEN new(state) ELSE state END",
            ),
            (
                "state_rank",
                "CASE WHEN new(state_rank) > state_rank THEN new(state_rank) ELSE state_rank END",
            ),
        ],
    );
    let now = dialstack_common::now_ms();
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let sql = format!(
            "INSERT INTO cdrs ({COLS}, state_rank, updated_at) VALUES {ROW}{} {upsert}",
            format!(", {ROW}").repeat(chunk.len() - 1)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.call_id)
                .bind(r.attempt_id)
                .bind(r.campaign_id)
                .bind(r.phone)
                .bind(r.state)
                .bind(r.outcome)
                .bind(r.reason)
                .bind(r.sip_status)
                .bind(r.dialed_at)
                .bind(r.ringing_at)
                .bind(r.answered_at)
                .bind(r.ended_at)
                .bind(r.ring_ms)
                .bind(r.talk_ms)
                .bind(r.rtp_sent)
                .bind(r.rtp_received)
                .bind(r.team)
                .bind(r.agent_id)
                .bind(r.mos)
                .bind(r.quality.clone())
                .bind(r.rank)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
