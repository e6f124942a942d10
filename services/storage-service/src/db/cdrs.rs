//! Call detail records: one row per call, built from the call's events in
//! whatever order they arrive. A later stage never gives way to an earlier
//! one, timestamps are kept from the first event that knew them, and each
//! event is applied once (inbox). `call.completed` brings the call's
//! quality, its IVR result and machine detection's decision; reads join
//! the call's recording (see [`super::recordings`]).

use dialstack_common::db::{inbox_claim_many, Dialect, Tx};
use dialstack_contract::{types, CallEvent, RecordingReady};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Repo;

/// Longest quality object stored (the column's size); a longer one is
/// dropped with a warning rather than failing the call's record.
const MAX_QUALITY_JSON: usize = 4000;
/// Longest IVR result stored (under the column's 64 KiB); a longer one
/// loses its path first, then is dropped, with a warning.
const MAX_IVR_JSON: usize = 60_000;
/// Longest machine detection result stored (the column's size).
const MAX_AMD_JSON: usize = 4096;
/// Longest `ivr_result` summary kept searchable (characters; the column's
/// size, within an index key).
pub const MAX_IVR_SUMMARY: usize = 512;
/// What machine detection may decide (`amd_result`).
pub const AMD_RESULTS: &[&str] = &["human", "machine", "unsure"];

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
    /// The earliest time known of the call (ms since epoch): the INVITE's
    /// once `call.dialing` is in. Listings are ordered by it and the `from`
    /// and `to` filters apply to it.
    pub started_at: i64,
    /// The customer whose number was called (by the customer's numbers in
    /// the campaign's team at the time of the call).
    pub customer_id: Option<String>,
    /// What the agent recorded about the call.
    pub disposition: Option<String>,
    /// The agent leg of a bridged call (`agent_id`, `wait_ms`, `ring_ms`,
    /// `talk_ms`, `tries`, `quality`).
    #[schema(value_type = Option<Object>)]
    pub agent: Option<serde_json::Value>,
    /// What the campaign's IVR flow did (`path`, the nodes visited; `vars`,
    /// the values gathered with their `source`; `ended_at`; `messages`,
    /// recorded messages; `dtmf_sent`).
    #[schema(value_type = Option<Object>)]
    pub ivr: Option<serde_json::Value>,
    /// The values the IVR gathered as `var=value` joined by `&` in name
    /// order (`choice=1&ok=yes`): what the `ivr_result` filter searches.
    pub ivr_result: Option<String>,
    /// What answering-machine detection decided (`result`: `human`,
    /// `machine` or `unsure`; `decision_ms`; `reason`; `features`;
    /// `message_played`).
    #[schema(value_type = Option<Object>)]
    pub amd: Option<serde_json::Value>,
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

/// Filters of a CDR listing or export; every one is optional and they
/// combine with AND.
#[derive(Debug, Clone, Default)]
pub struct CdrQuery {
    /// Only calls started at or after this (ms since epoch).
    pub from: Option<i64>,
    /// Only calls started before this (ms since epoch).
    pub to: Option<i64>,
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only calls to this number.
    pub phone: Option<String>,
    /// Only calls to this customer.
    pub customer_id: Option<String>,
    /// Only calls bridged to this agent.
    pub agent_id: Option<String>,
    /// Only calls of this team.
    pub team: Option<String>,
    /// Only calls with this disposition.
    pub disposition: Option<String>,
    /// Only calls whose MOS is below this (calls without one never match).
    pub mos_below: Option<f64>,
    /// Only calls whose IVR result matches.
    pub ivr_result: Option<IvrResultFilter>,
    /// Only calls machine detection classified so (`human`, `machine`,
    /// `unsure`).
    pub amd_result: Option<String>,
    /// Calls after this position.
    pub after: Option<CdrCursor>,
    /// Access: only calls bridged to this agent (an agent reading its own).
    pub only_agent: Option<String>,
    /// Access: only calls of these teams (a supervisor); `Some(empty)`
    /// matches none.
    pub only_teams: Option<Vec<String>>,
    /// At most this many.
    pub limit: i64,
}

/// The `ivr_result` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrResultFilter {
    /// The whole summary is this (asked with a `&`: `choice=1&ok=yes`).
    Exact(String),
    /// One `&`-separated part of the summary is this (`choice=1`: matches
    /// `choice=1&ok=yes`, never `choice=10` nor `xchoice=1`).
    Part(String),
}

impl IvrResultFilter {
    /// The filter a sent value asks for: with a `&` the whole summary,
    /// else one part of it.
    pub fn parse(v: &str) -> Self {
        if v.contains('&') {
            Self::Exact(v.to_owned())
        } else {
            Self::Part(v.to_owned())
        }
    }
}

/// `v` for a `LIKE ... ESCAPE '!'` pattern: its `!`, `%` and `_` taken
/// literally. (`!`, because a backslash is itself an escape in MySQL's
/// string literals and not in SQLite's.)
fn like_literal(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// The searchable summary of an IVR result: control characters dropped,
/// and past [`MAX_IVR_SUMMARY`] characters cut after the last whole
/// `var=value` part that fits (so a part stays findable).
pub fn ivr_summary(r: &dialstack_contract::IvrResult) -> Option<String> {
    let full: String = r.summary().chars().filter(|c| !c.is_control()).collect();
    if full.is_empty() {
        return None;
    }
    if full.chars().count() <= MAX_IVR_SUMMARY {
        return Some(full);
    }
    let mut out = String::new();
    for part in full.split('&') {
        let extra = part.chars().count() + usize::from(!out.is_empty());
        if out.chars().count() + extra > MAX_IVR_SUMMARY {
            break;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(part);
    }
    (!out.is_empty()).then_some(out)
}

/// A position in the listing order (`started_at`, then `call_id`). Its text
/// form, `<started_at>.<call_id>`, is the `cursor` of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrCursor {
    /// `started_at` of the last row seen.
    pub started_at: i64,
    /// `call_id` of the last row seen.
    pub call_id: String,
}

impl CdrCursor {
    /// The position just after `cdr`.
    pub fn after(cdr: &Cdr) -> Self {
        Self {
            started_at: cdr.started_at,
            call_id: cdr.call_id.clone(),
        }
    }

    /// Reads the text form; `None` if it is not one.
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.split_once('.')?;
        let started_at = at.parse().ok()?;
        let ok = !id.is_empty()
            && id.len() <= 36
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self {
            started_at,
            call_id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for CdrCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.started_at, self.call_id)
    }
}

/// A value bound to a listing's placeholder.
enum Bind<'a> {
    Text(&'a str),
    Owned(String),
    Int(i64),
    Real(f64),
}

impl CdrQuery {
    /// The `WHERE` conditions (after `WHERE 1 = 1`) and their values.
    fn conditions(&self) -> (String, Vec<Bind<'_>>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        for (col, v) in [
            ("c.campaign_id", &self.campaign_id),
            ("c.outcome", &self.outcome),
            ("c.phone", &self.phone),
            ("c.customer_id", &self.customer_id),
            ("c.agent_id", &self.agent_id),
            ("c.team", &self.team),
            ("c.disposition", &self.disposition),
            ("c.amd_result", &self.amd_result),
            ("c.agent_id", &self.only_agent),
        ] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(Bind::Text(v));
            }
        }
        if let Some(teams) = &self.only_teams {
            sql.push_str(&dialstack_common::db::and_in("c.team", teams.len()));
            binds.extend(teams.iter().map(|t| Bind::Text(t)));
        }
        if let Some(from) = self.from {
            sql.push_str(" AND c.started_at >= ?");
            binds.push(Bind::Int(from));
        }
        if let Some(to) = self.to {
            sql.push_str(" AND c.started_at < ?");
            binds.push(Bind::Int(to));
        }
        if let Some(mos) = self.mos_below {
            sql.push_str(" AND c.mos < ?");
            binds.push(Bind::Real(mos));
        }
        match &self.ivr_result {
            None => {}
            Some(IvrResultFilter::Exact(v)) => {
                sql.push_str(" AND c.ivr_result = ?");
                binds.push(Bind::Text(v));
            }
            Some(IvrResultFilter::Part(v)) => {
                // The part alone, first, last or in the middle: anchored on
                // `&` so `a=1` is not found in `aa=1` or `a=10`.
                sql.push_str(
                    " AND (c.ivr_result = ? OR c.ivr_result LIKE ? ESCAPE '!' \
                     OR c.ivr_result LIKE ? ESCAPE '!' OR c.ivr_result LIKE ? ESCAPE '!')",
                );
                let lit = like_literal(v);
                binds.push(Bind::Text(v));
                binds.push(Bind::Owned(format!("{lit}&%")));
                binds.push(Bind::Owned(format!("%&{lit}")));
                binds.push(Bind::Owned(format!("%&{lit}&%")));
            }
        }
        if let Some(after) = &self.after {
            // The first term bounds the index range; the second is the exact
            // keyset condition.
            sql.push_str(" AND c.started_at >= ? AND (c.started_at > ? OR c.call_id > ?)");
            binds.push(Bind::Int(after.started_at));
            binds.push(Bind::Int(after.started_at));
            binds.push(Bind::Text(&after.call_id));
        }
        (sql, binds)
    }

    /// The listing's statement and values: at most `limit` rows in
    /// (`started_at`, `call_id`) order.
    fn statement(&self) -> (String, Vec<Bind<'_>>) {
        let (cond, mut binds) = self.conditions();
        binds.push(Bind::Int(self.limit));
        (
            format!("{SELECT} WHERE 1 = 1{cond} ORDER BY c.started_at, c.call_id LIMIT ?"),
            binds,
        )
    }
}

impl CdrQuery {
    /// The listing's SQL with its values written in as literals, for
    /// `EXPLAIN` in benchmarks and reports (never executed).
    pub fn explain_sql(&self) -> String {
        let (sql, binds) = self.statement();
        let mut out = String::new();
        let mut values = binds.iter();
        for part in sql.split('?') {
            out.push_str(part);
            match values.next() {
                Some(Bind::Text(v)) => out.push_str(&format!("'{}'", v.replace('\'', "''"))),
                Some(Bind::Owned(v)) => out.push_str(&format!("'{}'", v.replace('\'', "''"))),
                Some(Bind::Int(v)) => out.push_str(&v.to_string()),
                Some(Bind::Real(v)) => out.push_str(&v.to_string()),
                None => {}
            }
        }
        out
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(v) => q.bind(*v),
            Bind::Owned(v) => q.bind(v.as_str()),
            Bind::Int(v) => q.bind(*v),
            Bind::Real(v) => q.bind(*v),
        };
    }
    q
}

/// The columns a call event writes.
const COLS: &str = "call_id, attempt_id, campaign_id, phone, state, outcome, reason, sip_status, dialed_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, rtp_sent, rtp_received, team, agent_id, mos, quality, started_at, agent_leg, ivr, ivr_result, amd, amd_result";

/// What a read returns: the CDR and its recording, if any.
const SELECT: &str = "SELECT c.call_id, c.attempt_id, c.campaign_id, c.phone, c.state, c.outcome, c.reason, c.sip_status, c.dialed_at, c.ringing_at, c.answered_at, c.ended_at, c.ring_ms, c.talk_ms, c.rtp_sent, c.rtp_received, c.team, c.agent_id, c.quality, r.duration_ms, r.bytes, r.sha256, c.started_at, c.customer_id, c.disposition, c.agent_leg, c.ivr, c.ivr_result, c.amd FROM cdrs c LEFT JOIN recordings r ON r.call_id = c.call_id";

/// A nullable TEXT column: MySQL may report TEXT as a BLOB, so bytes are
/// taken too.
pub(crate) fn text(r: &sqlx::any::AnyRow, i: usize) -> Option<String> {
    dialstack_common::db::text_column(r, i).ok().flatten()
}

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
        started_at: r.get(22),
        customer_id: r.get(23),
        disposition: r.get(24),
        agent: r
            .get::<Option<String>, _>(25)
            .and_then(|a| serde_json::from_str(&a).ok()),
        ivr: text(r, 26).and_then(|a| serde_json::from_str(&a).ok()),
        ivr_result: r.get(27),
        amd: r
            .get::<Option<String>, _>(28)
            .and_then(|a| serde_json::from_str(&a).ok()),
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
        let item = Applied {
            event_id,
            change: Change::Call(ev),
        };
        Ok(self.apply_batch(&[item]).await?[0])
    }

    /// Applies call events, recordings, profiles and retentions, each once, in one transaction:
    /// one inbox claim for the batch, then each new event's write. Returns,
    /// per item, whether it was applied (`false`: applied before, repeated in
    /// the batch, or of a type that changes nothing). If it fails, nothing of
    /// the batch is applied. A deadlock with a concurrent batch runs it
    /// again here rather than spending the events' deliveries.
    pub async fn apply_batch(&self, items: &[Applied<'_>]) -> Result<Vec<bool>, sqlx::Error> {
        dialstack_common::db::retry_conflicts(5, || self.apply_batch_once(items)).await
    }

    async fn apply_batch_once(&self, items: &[Applied<'_>]) -> Result<Vec<bool>, sqlx::Error> {
        let ids: Vec<&str> = items.iter().map(|i| i.event_id).collect();
        let mut tx = self.db.begin().await?;
        let fresh = inbox_claim_many(&mut tx, self.db.dialect, crate::NAME, &ids).await?;
        // One row per call: its new events folded in delivery order, as
        // applying them one after the other would leave it.
        let mut applied = vec![false; items.len()];
        let mut rows: std::collections::BTreeMap<&str, CdrRow<'_>> = Default::default();
        let mut recordings = Vec::new();
        // Profiles first, so that this batch's calls link to them.
        for (i, item) in items.iter().enumerate().filter(|(i, _)| fresh[*i]) {
            match &item.change {
                Change::Customer(c) => {
                    super::customers::merge_upserted(&mut tx, c).await?;
                    applied[i] = true;
                }
                Change::Retention(r) => {
                    super::retention::upsert_retention(&mut tx, self.db.dialect, r).await?;
                    applied[i] = true;
                }
                _ => {}
            }
        }
        for (i, item) in items.iter().enumerate().filter(|(i, _)| fresh[*i]) {
            match item.change {
                Change::Customer(_) | Change::Retention(_) | Change::Disposition(_) => {}
                Change::Transcript(t) => {
                    super::transcripts::upsert_transcript(&mut tx, self.db.dialect, t).await?;
                    applied[i] = true;
                }
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
        // Dispositions after the rows: a call's completion and its
        // disposition may arrive in one batch. One for a call whose CDR is
        // not in yet fails the batch (retried one by one, then redelivered).
        for (i, item) in items.iter().enumerate().filter(|(i, _)| fresh[*i]) {
            if let Change::Disposition(d) = item.change {
                let done = sqlx::query(
                    "UPDATE cdrs SET disposition = ?, updated_at = ? WHERE call_id = ?",
                )
                .bind(&d.code)
                .bind(dialstack_common::now_ms())
                .bind(&d.call_id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tracing::info!(call_id = %d.call_id, "disposition before its call record; retried");
                    return Err(sqlx::Error::RowNotFound);
                }
                applied[i] = true;
            }
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

    /// CDRs in (`started_at`, `call_id`) order after the cursor.
    pub async fn list(&self, q: &CdrQuery) -> Result<Vec<Cdr>, sqlx::Error> {
        let (sql, binds) = q.statement();
        let rows = bind_all(sqlx::query(&sql), &binds)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().map(cdr_from).collect())
    }

    /// Streams every CDR `q` matches (its `after` and `limit` are the start
    /// and the chunk size) into `out`, in listing order: one keyset query
    /// per chunk, each read row by row from the database cursor, so memory
    /// stays flat whatever the size and a slow reader holds no connection
    /// between chunks. Stops early, without error, when `out` is closed.
    pub async fn export(
        &self,
        mut q: CdrQuery,
        out: tokio::sync::mpsc::Sender<Cdr>,
    ) -> Result<u64, sqlx::Error> {
        use futures_util::TryStreamExt;
        let mut sent = 0u64;
        loop {
            let (sql, binds) = q.statement();
            let mut rows = bind_all(sqlx::query(&sql), &binds).fetch(&self.db.pool);
            let mut last = None;
            let mut n = 0;
            while let Some(row) = rows.try_next().await? {
                let cdr = cdr_from(&row);
                last = Some(CdrCursor::after(&cdr));
                n += 1;
                if out.send(cdr).await.is_err() {
                    return Ok(sent);
                }
                sent += 1;
            }
            drop(rows);
            if n < q.limit {
                return Ok(sent);
            }
            q.after = last;
        }
    }
}

/// One write of a batch: the event id (for the inbox) and what it changes.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    /// The CloudEvent id.
    pub event_id: &'a str,
    /// The change.
    pub change: Change<'a>,
}

/// What an event changes.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// A customer profile (`customer.upserted`, validated).
    Customer(super::customers::Upserted<'a>),
    /// A campaign's CDR retention (`campaign.updated`, validated).
    Retention(&'a super::retention::CampaignRetention),
    /// A call's CDR.
    Call(&'a CallEvent),
    /// A call's recording (validated by the caller, as for
    /// [`Repo::apply_recording`]).
    Recording(&'a RecordingReady),
    /// The agent's disposition of a call (`call.disposition`, validated).
    Disposition(&'a dialstack_contract::CallDisposition),
    /// A call's transcript (`call.transcript`, validated).
    Transcript(&'a dialstack_contract::CallTranscript),
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
    started_at: i64,
    agent_leg: Option<String>,
    ivr: Option<String>,
    ivr_result: Option<String>,
    amd: Option<String>,
    amd_result: Option<&'a str>,
}

/// The IVR result as stored: within [`MAX_IVR_JSON`], losing its path
/// first; `None` (with a warning) when even that is too long.
fn ivr_json(call_id: &str, r: &dialstack_contract::IvrResult) -> Option<String> {
    let full = serde_json::to_string(r).ok()?;
    if full.len() <= MAX_IVR_JSON {
        return Some(full);
    }
    let pathless = dialstack_contract::IvrResult {
        path: Vec::new(),
        ..r.clone()
    };
    let short = serde_json::to_string(&pathless).ok()?;
    if short.len() <= MAX_IVR_JSON {
        tracing::warn!(
            call_id,
            len = full.len(),
            "ivr result too long, stored without its path"
        );
        Some(short)
    } else {
        tracing::warn!(call_id, len = full.len(), "ivr result too long, not stored");
        None
    }
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
            started_at: d.at_ms,
            agent_leg: done
                .and_then(|c| c.agent.as_ref())
                .and_then(|a| serde_json::to_string(a).ok())
                .filter(|a| a.len() <= 4_096),
            ivr: done
                .and_then(|c| c.ivr.as_deref())
                .and_then(|r| ivr_json(&d.call_id, r)),
            ivr_result: done.and_then(|c| c.ivr.as_deref()).and_then(ivr_summary),
            amd: done
                .and_then(|c| c.amd.as_ref())
                .and_then(|a| serde_json::to_string(a).ok())
                .filter(|a| {
                    let fits = a.len() <= MAX_AMD_JSON;
                    if !fits {
                        tracing::warn!(call_id = %d.call_id, len = a.len(), "amd result too long, not stored");
                    }
                    fits
                }),
            amd_result: done
                .and_then(|c| c.amd.as_ref())
                .and_then(|a| AMD_RESULTS.iter().copied().find(|r| *r == a.result)),
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
        latest(&mut self.agent_leg, later.agent_leg);
        latest(&mut self.ivr, later.ivr);
        latest(&mut self.ivr_result, later.ivr_result);
        latest(&mut self.amd, later.amd);
        latest(&mut self.amd_result, later.amd_result);
        self.started_at = self.started_at.min(later.started_at);
        if later.rank > self.rank {
            self.state = later.state;
            self.rank = later.rank;
        }
    }
}

/// Rows per upsert statement (28 values each).
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
            ("agent_leg", "COALESCE(new(agent_leg), agent_leg)"),
            ("ivr", "COALESCE(new(ivr), ivr)"),
            ("ivr_result", "COALESCE(new(ivr_result), ivr_result)"),
            ("amd", "COALESCE(new(amd), amd)"),
            ("amd_result", "COALESCE(new(amd_result), amd_result)"),
            ("updated_at", "new(updated_at)"),
            (
                "started_at",
                "CASE WHEN new(started_at) < started_at THEN new(started_at) ELSE started_at END",
            ),
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
    const ROW: &str =
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
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
                .bind(r.started_at)
                .bind(r.agent_leg.clone())
                .bind(r.ivr.clone())
                .bind(r.ivr_result.clone())
                .bind(r.amd.clone())
                .bind(r.amd_result)
                .bind(r.rank)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    link_customers(tx, rows.iter().map(|r| r.call_id)).await
}

/// Sets the customer of the CDRs among `call_ids` that have none yet: the
/// customer who has the called number in the campaign's team (or, for a
/// call of no team, among customers of no team). A customer created later
/// links their earlier calls in turn ([`super::customers`]).
async fn link_customers<'a>(
    tx: &mut Tx,
    call_ids: impl Iterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = call_ids.collect();
    for chunk in ids.chunks(ROWS_PER_UPSERT) {
        // `+customer_id` keeps planners off the customer index (most rows
        // of a large table have no customer): the call ids pick the rows.
        let sql = format!(
            "UPDATE cdrs SET customer_id = (SELECT p.customer_id FROM customer_phones p \
             WHERE p.scope = COALESCE(cdrs.team, '') AND p.phone = cdrs.phone) \
             WHERE +customer_id IS NULL{}",
            dialstack_common::db::and_in("call_id", chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dialstack_contract::ivr::Gathered;
    use dialstack_contract::IvrResult;

    use super::*;

    fn result(vars: &[(&str, &str)]) -> IvrResult {
        IvrResult {
            vars: vars
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Gathered {
                            value: (*v).to_owned(),
                            source: "dtmf".into(),
                            confidence: None,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn the_summary_is_searchable_and_cut_on_whole_parts() {
        assert_eq!(
            ivr_summary(&result(&[("ok", "yes"), ("choice", "1")])).as_deref(),
            Some("choice=1&ok=yes")
        );
        assert_eq!(
            ivr_summary(&result(&[])),
            None,
            "no values, nothing to find"
        );
        let long: Vec<(String, String)> = (0..40)
            .map(|i| (format!("v{i:02}"), "1".repeat(20)))
            .collect();
        let long: Vec<(&str, &str)> = long.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let s = ivr_summary(&result(&long)).unwrap();
        assert!(s.chars().count() <= MAX_IVR_SUMMARY, "{}", s.len());
        assert!(s.split('&').all(|p| p.len() == 24), "whole parts only: {s}");
        assert!(s.starts_with("v00=") && s.contains("&v19="), "{s}");
        assert_eq!(
            ivr_summary(&result(&[("a", "x\u{7}y")])).as_deref(),
            Some("a=xy"),
            "control characters are dropped"
        );
    }

    #[test]
    fn ivr_filters_are_exact_with_an_ampersand_and_anchored_parts_without() {
        assert_eq!(
            IvrResultFilter::parse("a=1&b=2"),
            IvrResultFilter::Exact("a=1&b=2".into())
        );
        assert_eq!(
            IvrResultFilter::parse("a=1"),
            IvrResultFilter::Part("a=1".into())
        );
        assert_eq!(like_literal("a_b=100%!"), "a!_b=100!%!!");
        let q = CdrQuery {
            ivr_result: Some(IvrResultFilter::parse("acct_no=5")),
            limit: 10,
            ..Default::default()
        };
        let sql = q.explain_sql();
        for want in [
            "c.ivr_result = 'acct_no=5'",
            "LIKE 'acct!_no=5&%' ESCAPE '!'",
            "LIKE '%&acct!_no=5' ESCAPE '!'",
            "LIKE '%&acct!_no=5&%' ESCAPE '!'",
        ] {
            assert!(sql.contains(want), "{want} in {sql}");
        }
    }
}
