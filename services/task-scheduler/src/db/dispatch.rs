//! The dispatcher's statements: its lease, the next leads in line, what the
//! database knows of their numbers, and queueing a batch in one transaction.

use std::collections::{BTreeMap, HashMap};

use dialstack_common::db::batch::{outbox_enqueue_many, OutboxItem};
use dialstack_common::db::channel;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, DialCommand, Outcome, MAX_DIAL_FIELDS};
use sqlx::Row;

use super::{marks, Campaign, Repo};
use crate::domain::compliance::{History, Verdict, ABANDON_HOLD_MS, DAY_MS};
use crate::domain::state::{sql_in, LeadEvent, LeadState};

/// The lease that makes one replica the dispatcher.
pub const DISPATCHER_LEASE: &str = "dispatcher";

/// A lead next in line.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Lead id.
    pub id: String,
    /// Number.
    pub phone: String,
    /// Zones, comma-separated.
    pub zones: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Due (ms).
    pub due_at: i64,
    /// 0 = callback, then by priority.
    pub lane: i64,
    /// The lead's prompt fields as stored (a JSON object), when they were
    /// asked for: only campaigns whose flow or machine message can say
    /// them load them ([`crate::domain::Settings::needs_lead_fields`]).
    pub fields: Option<String>,
}

/// A candidate's stored prompt fields, for its dial command (empty when
/// none, or when the column does not parse: a prompt then says nothing
/// for the field, and the call still goes).
fn lead_fields(cand: &Candidate) -> BTreeMap<String, String> {
    let Some(raw) = cand.fields.as_deref().filter(|f| !f.is_empty()) else {
        return BTreeMap::new();
    };
    match serde_json::from_str::<BTreeMap<String, String>>(raw) {
        Ok(mut f) => {
            // As stored at import; kept within the contract all the same.
            f.retain(|k, v| !k.is_empty() && k.len() <= 64 && v.len() <= 1_000);
            while f.len() > MAX_DIAL_FIELDS {
                f.pop_last();
            }
            f
        }
        Err(e) => {
            tracing::warn!(lead_id = %cand.id, error = %e, "lead fields do not parse, dialed without them");
            BTreeMap::new()
        }
    }
}

/// A campaign's calls in flight (attempts queued, claimed or dialing) by
/// phase, from the times `call.answered` and `call.bridged` leave on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallPhases {
    /// The dial command is on its way or claimed: no INVITE yet.
    pub queued: i64,
    /// INVITE out, not answered.
    pub ringing: i64,
    /// Answered, not yet with an agent (or, for `ivr`, with the prompt).
    pub waiting: i64,
    /// With an agent.
    pub talking: i64,
}

impl CallPhases {
    /// Every call in flight (what `max_concurrent` caps).
    pub fn in_flight(self) -> i64 {
        self.queued + self.ringing + self.waiting + self.talking
    }

    /// Calls not yet with an agent: what progressive and predictive
    /// dialing weigh against ready agents.
    pub fn unbridged(self) -> i64 {
        self.queued + self.ringing + self.waiting
    }
}

/// What one queueing transaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queued {
    /// Dial commands written.
    pub dialed: u64,
    /// Leads put off to a later time.
    pub waited: u64,
    /// Leads closed (DNC, blocked, exhausted).
    pub closed: u64,
}

impl Repo {
    /// Takes the lease `name` for `holder` until `now + ttl_ms`, or renews
    /// it; `true` when `holder` holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let inserted = sqlx::query(&format!(
            "{} INTO leases (name, holder, until_ms) VALUES (?, ?, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .execute(&self.db.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(true);
        }
        let taken = sqlx::query(
            "UPDATE leases SET holder = ?, until_ms = ? WHERE name = ? AND (holder = ? OR until_ms < ?)",
        )
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives the lease up (on shutdown) so another replica takes over at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE leases SET until_ms = 0 WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Who holds a lease now, if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT holder FROM leases WHERE name = ? AND until_ms >= ?")
            .bind(name)
            .bind(dialstack_common::now_ms())
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// Attempts in flight per campaign.
    pub async fn in_flight_by_campaign(&self) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT campaign_id, COUNT(*) FROM attempts WHERE state IN ('queued', 'claimed', 'dialing') GROUP BY campaign_id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Calls in flight per campaign by phase (one query for every
    /// campaign): see [`CallPhases`].
    pub async fn call_phases_by_campaign(
        &self,
    ) -> Result<HashMap<String, CallPhases>, sqlx::Error> {
        self.call_phases_where("", None).await
    }

    /// When each of a campaign's calls placed and not yet answered was
    /// placed (ms): the predictive pacer weighs them by age.
    pub async fn ringing_since(&self, campaign_id: &str) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query(
            "SELECT created_at FROM attempts
             WHERE campaign_id = ? AND state IN ('queued', 'claimed', 'dialing') AND answered_at IS NULL",
        )
        .bind(campaign_id)
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
    }

    /// One campaign's calls in flight by phase.
    pub async fn call_phases(&self, campaign_id: &str) -> Result<CallPhases, sqlx::Error> {
        Ok(self
            .call_phases_where(" AND campaign_id = ?", Some(campaign_id))
            .await?
            .remove(campaign_id)
            .unwrap_or_default())
    }

    async fn call_phases_where(
        &self,
        cond: &str,
        campaign_id: Option<&str>,
    ) -> Result<HashMap<String, CallPhases>, sqlx::Error> {
        let sql = format!(
            "SELECT campaign_id,
               CASE WHEN bridged_at IS NOT NULL THEN 'talking' WHEN answered_at IS NOT NULL THEN 'waiting'
                    WHEN state = 'dialing' THEN 'ringing' ELSE 'queued' END AS phase,
               COUNT(*)
             FROM attempts WHERE state IN ('queued', 'claimed', 'dialing'){cond} GROUP BY campaign_id, phase"
        );
        let mut q = sqlx::query(&sql);
        if let Some(id) = campaign_id {
            q = q.bind(id);
        }
        let mut out: HashMap<String, CallPhases> = HashMap::new();
        for r in q.fetch_all(&self.db.pool).await? {
            let id: String = r.try_get(0)?;
            let phase: String = r.try_get(1)?;
            let n: i64 = r.try_get(2)?;
            let p = out.entry(id).or_default();
            match phase.as_str() {
                "talking" => p.talking = n,
                "waiting" => p.waiting = n,
                "ringing" => p.ringing = n,
                _ => p.queued = n,
            }
        }
        Ok(out)
    }

    /// Up to `n` pending leads of a campaign due by `now`: callbacks first,
    /// then by priority, each lane by due time. One round trip: a bounded
    /// index range per lane (`leads_due`), so the cost does not grow with
    /// the number of leads. Without their prompt fields.
    pub async fn candidates(
        &self,
        campaign_id: &str,
        now: i64,
        n: u64,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        self.candidates_with(campaign_id, now, n, false).await
    }

    /// [`Repo::candidates`], with their prompt fields when `with_fields`.
    pub async fn candidates_with(
        &self,
        campaign_id: &str,
        now: i64,
        n: u64,
        with_fields: bool,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let cols = if with_fields {
            "id, phone, zones, attempts, due_at, lane, fields"
        } else {
            "id, phone, zones, attempts, due_at, lane"
        };
        let one = format!(
            "SELECT * FROM (SELECT {cols} FROM leads
                   WHERE campaign_id = ? AND state = 'pending' AND lane = ? AND due_at <= ?
                   ORDER BY due_at, id LIMIT ?) t"
        );
        let sql: Vec<String> = (0..=10)
            .map(|lane| one.replacen(") t", &format!(") t{lane}"), 1))
            .collect();
        let sql = sql.join(" UNION ALL ");
        let mut q = sqlx::query(&sql);
        for lane in 0..=10i64 {
            q = q.bind(campaign_id).bind(lane).bind(now).bind(n as i64);
        }
        let mut out = q
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get(0)?,
                    phone: r.try_get(1)?,
                    zones: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    due_at: r.try_get(4)?,
                    lane: r.try_get(5)?,
                    fields: if with_fields {
                        super::text(r, 6)?
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.sort_by(|a, b| (a.lane, a.due_at, &a.id).cmp(&(b.lane, b.due_at, &b.id)));
        out.truncate(n as usize);
        Ok(out)
    }

    /// What the database knows of each candidate's number: DNC entries,
    /// attempts in the last 24 h (this lead's and the number's across
    /// campaigns) and its latest abandoned call within 72 h.
    pub async fn history(
        &self,
        campaign_id: &str,
        cands: &[Candidate],
        now: i64,
    ) -> Result<HashMap<String, History>, sqlx::Error> {
        let mut out: HashMap<String, History> = cands
            .iter()
            .map(|c| (c.id.clone(), History::default()))
            .collect();
        if cands.is_empty() {
            return Ok(out);
        }
        let phones: Vec<&str> = cands.iter().map(|c| c.phone.as_str()).collect();
        let dnc = self.dnc_hits(&phones, campaign_id).await?;
        let by_phone: HashMap<&str, Vec<&str>> = cands.iter().fold(HashMap::new(), |mut m, c| {
            m.entry(c.phone.as_str()).or_default().push(c.id.as_str());
            m
        });
        let sql = format!(
            "SELECT phone, MAX(updated_at) FROM attempts
             WHERE phone IN ({}) AND created_at > ? AND outcome = ? GROUP BY phone",
            marks(phones.len())
        );
        let mut q = sqlx::query(&sql);
        for p in &phones {
            q = q.bind(p.to_string());
        }
        let rows = q
            .bind(now - ABANDON_HOLD_MS - DAY_MS)
            .bind(Outcome::Abandoned.as_str())
            .fetch_all(&self.db.pool)
            .await?;
        let day_sql = format!(
            "SELECT phone, lead_id, COUNT(*), MIN(created_at) FROM attempts WHERE phone IN ({}) AND created_at > ? GROUP BY phone, lead_id",
            marks(phones.len())
        );
        let mut dq = sqlx::query(&day_sql);
        for p in &phones {
            dq = dq.bind(p.to_string());
        }
        let day_rows = dq.bind(now - DAY_MS).fetch_all(&self.db.pool).await?;
        for r in &day_rows {
            let phone: String = r.try_get(0)?;
            let lead: String = r.try_get(1)?;
            let n: i64 = r.try_get(2)?;
            let oldest: i64 = r.try_get(3)?;
            for id in by_phone.get(phone.as_str()).into_iter().flatten() {
                let h = out.entry((*id).to_owned()).or_default();
                h.number_day += n as u32;
                h.number_day_oldest = Some(h.number_day_oldest.map_or(oldest, |o| o.min(oldest)));
                if lead == *id {
                    h.lead_day += n as u32;
                    h.lead_day_oldest = Some(oldest);
                }
            }
        }
        for r in &rows {
            let phone: String = r.try_get(0)?;
            let abandoned: Option<i64> = r.try_get(1)?;
            if let Some(at) = abandoned {
                for id in by_phone.get(phone.as_str()).into_iter().flatten() {
                    let h = out.entry((*id).to_owned()).or_default();
                    h.abandoned_at = Some(h.abandoned_at.map_or(at, |a| a.max(at)));
                }
            }
        }
        for c in cands {
            if dnc.contains(&c.phone) {
                if let Some(h) = out.get_mut(&c.id) {
                    h.dnc = true;
                }
            }
        }
        Ok(out)
    }

    /// Applies the verdicts on a batch of candidates in one transaction:
    /// dialable leads get an attempt and a `dial` command, the others are
    /// put off or closed. With `lease`, the transaction first checks that
    /// `holder` still holds the dispatcher lease (and extends it), so a
    /// replica that lost its lease while it worked writes nothing: `None`.
    pub async fn queue(
        &self,
        c: &Campaign,
        verdicts: &[(Candidate, Verdict)],
        lease: Option<(&str, i64)>,
        source: &str,
    ) -> Result<Option<Queued>, sqlx::Error> {
        let bridge = c.settings().bridge();
        let done = self.queue_with(c, verdicts, lease, source, bridge).await?;
        Ok(done.map(|(q, _)| q))
    }

    /// [`Repo::queue`] with the bridge its dial commands carry (a preview
    /// dial names its agent); also returns `(lead, attempt, call)` ids of
    /// each dial written.
    pub async fn queue_with(
        &self,
        c: &Campaign,
        verdicts: &[(Candidate, Verdict)],
        lease: Option<(&str, i64)>,
        source: &str,
        bridge: Option<dialstack_contract::BridgeSpec>,
    ) -> Result<Option<(Queued, Vec<(String, String, String)>)>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let settings = c.settings();
        let amd = settings.amd_command();
        let with_fields = settings.needs_lead_fields();
        let ivr = settings.ivr_flow.map(Box::new);
        let mut tx = self.db.begin().await?;
        if let Some((holder, ttl)) = lease {
            let held = sqlx::query(
                "UPDATE leases SET until_ms = ? WHERE name = ? AND holder = ? AND until_ms >= ?",
            )
            .bind(now + ttl)
            .bind(DISPATCHER_LEASE)
            .bind(holder)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if held.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let mut done = Queued::default();
        let pending = sql_in(
            "state",
            &LeadState::sources(LeadEvent::Dispatch),
            LeadState::as_str,
        );
        let mut commands = Vec::new();
        let mut attempts = Vec::new();
        for (cand, verdict) in verdicts {
            match verdict {
                Verdict::Dial => {
                    let moved = sqlx::query(&format!(
                        "UPDATE leads SET state = 'dialing', attempts = attempts + 1, last_attempt_at = ?, updated_at = ?,
                           lane = CASE WHEN lane = 0 THEN 10 - priority ELSE lane END, callback_at = NULL, reopened = 0
                         WHERE id = ? AND campaign_id = ?{pending}"
                    ))
                    .bind(now)
                    .bind(now)
                    .bind(&cand.id)
                    .bind(&c.id)
                    .execute(&mut *tx)
                    .await?;
                    if moved.rows_affected() != 1 {
                        tracing::debug!(lead_id = %cand.id, "lead no longer pending");
                        continue;
                    }
                    let attempt_id = uuid::Uuid::now_v7().to_string();
                    let call_id = uuid::Uuid::now_v7().to_string();
                    let cmd = DialCommand {
                        attempt_id: attempt_id.clone(),
                        call_id: call_id.clone(),
                        campaign_id: c.id.clone(),
                        phone: cand.phone.clone(),
                        caller_id: c.caller_id.clone(),
                        talk_time_ms: c.talk_time_ms.max(0) as u64,
                        ring_timeout_ms: c.ring_timeout_ms.max(0) as u64,
                        team: c.team.clone(),
                        record: c.record,
                        recording_retention_days: c
                            .recording_retention_days
                            .and_then(|d| u32::try_from(d).ok()),
                        bridge: bridge.clone(),
                        ivr: ivr.clone(),
                        amd: amd.clone(),
                        transcribe: c.transcribe && c.record,
                        fields: if with_fields {
                            lead_fields(cand)
                        } else {
                            BTreeMap::new()
                        },
                    };
                    commands.push(CloudEvent::new(source, types::DIAL, &call_id, &cmd));
                    attempts.push((attempt_id, call_id, cand));
                    done.dialed += 1;
                }
                Verdict::Wait { until, .. } => {
                    sqlx::query(&format!(
                        "UPDATE leads SET due_at = ?, updated_at = ? WHERE id = ?{pending}"
                    ))
                    .bind(*until)
                    .bind(now)
                    .bind(&cand.id)
                    .execute(&mut *tx)
                    .await?;
                    done.waited += 1;
                }
                Verdict::Close { state, why } => {
                    sqlx::query(&format!(
                        "UPDATE leads SET state = ?, last_outcome = ?, updated_at = ? WHERE id = ?{pending}"
                    ))
                    .bind(state.as_str())
                    .bind(why.as_str())
                    .bind(now)
                    .bind(&cand.id)
                    .execute(&mut *tx)
                    .await?;
                    done.closed += 1;
                }
                Verdict::Skip(_) => {}
            }
        }
        for chunk in attempts.chunks(500) {
            let sql = format!(
                "INSERT INTO attempts (id, campaign_id, lead_id, seq, phone, call_id, state, created_at, updated_at) VALUES {}",
                vec!["(?, ?, ?, 0, ?, ?, 'queued', ?, ?)"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (attempt_id, call_id, cand) in chunk {
                q = q
                    .bind(attempt_id.clone())
                    .bind(c.id.clone())
                    .bind(cand.id.clone())
                    .bind(cand.phone.clone())
                    .bind(call_id.clone())
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        let items: Vec<OutboxItem<'_>> = commands
            .iter()
            .map(|ev| OutboxItem {
                channel: channel::COMMANDS,
                key: ev.subject.as_deref().unwrap_or(&ev.id),
                event: ev,
            })
            .collect();
        outbox_enqueue_many(&mut tx, &items).await?;
        tx.commit().await?;
        let ids = attempts
            .into_iter()
            .map(|(a, call, cand)| (cand.id.clone(), a, call))
            .collect();
        Ok(Some((done, ids)))
    }
}
