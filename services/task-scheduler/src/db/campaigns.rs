//! Campaigns: create, read, list, patch, lifecycle, delete, progress.

use std::collections::BTreeMap;

use dialstack_common::db::{outbox_enqueue, Tx};
use dialstack_common::events::CloudEvent;
use dialstack_contract::ivr::Say;
use dialstack_contract::{types, AmdSpec, CampaignStateChanged, CampaignUpdated, IvrFlow};
use dialstack_dialrules::hours::CallingHours;
use sqlx::Row;

use super::{leads, Repo};
use crate::domain::campaign::DialMode;
use crate::domain::compliance::RetryPolicy;
use crate::domain::state::{sql_in, CampaignAction, CampaignState, LeadEvent, LeadState};
use crate::domain::{NewCampaign, Settings};

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Campaign {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Caller id.
    pub caller_id: String,
    /// Concurrency cap.
    pub max_concurrent: i64,
    /// Calls per second cap.
    pub max_cps: f64,
    /// Talk time (ms).
    pub talk_time_ms: i64,
    /// Ring timeout (ms).
    pub ring_timeout_ms: i64,
    /// `draft`, `running`, `paused`, `stopped` or `completed`.
    pub state: String,
    /// Created (ms since epoch).
    pub created_at: i64,
    /// The team that works it.
    pub team: Option<String>,
    /// Answered calls are recorded.
    pub record: bool,
    /// Recordings are deleted this many days after the call.
    pub recording_retention_days: Option<i64>,
    /// Call detail records are deleted this many days after the call.
    pub cdr_retention_days: Option<i64>,
    /// Fair-share weight.
    pub priority: i64,
    /// Calling window in the callee's time.
    #[schema(value_type = Object)]
    pub calling_hours: CallingHours,
    /// Retries by outcome.
    pub retry_policy: RetryPolicy,
    /// Most attempts per lead.
    pub max_attempts: Option<i64>,
    /// Most attempts per lead per 24 h.
    pub max_attempts_per_day: Option<i64>,
    /// Region for national numbers.
    pub default_region: Option<String>,
    /// Dialing mode: `ivr`, `preview`, `progressive` or `predictive`.
    pub mode: DialMode,
    /// Progressive: calls not yet with an agent per ready agent.
    pub dial_ratio: f64,
    /// Abandon cap in percent of live-answered calls (today and 30 days).
    pub abandon_cap_pct: f64,
    /// Skills an agent needs (name → lowest level 1-10).
    pub skills: BTreeMap<String, u8>,
    /// Longest wait of an answered callee for an agent (ms).
    pub abandon_after_ms: i64,
    /// Disposition codes agents may set on its calls.
    pub dispositions: Vec<String>,
    /// The IVR flow its answered calls run (`null`: none).
    #[schema(value_type = Option<Object>)]
    pub ivr_flow: Option<IvrFlow>,
    /// Answering-machine detection (`null`: off).
    #[schema(value_type = Option<Object>)]
    pub amd: Option<AmdSpec>,
    /// Recorded calls are transcribed after they end.
    pub transcribe: bool,
    /// The compliance message abandoned callees hear (`null`: the
    /// deployment's).
    #[schema(value_type = Option<Object>)]
    pub abandon_message: Option<Say>,
}

impl Campaign {
    /// Its state, typed.
    pub fn state(&self) -> CampaignState {
        CampaignState::parse(&self.state).unwrap_or(CampaignState::Stopped)
    }

    /// Whether its dial commands carry the lead's fields (see
    /// [`Settings::needs_lead_fields`]).
    pub fn needs_lead_fields(&self) -> bool {
        self.settings().needs_lead_fields()
    }

    /// Its dialing settings.
    pub fn settings(&self) -> Settings {
        Settings {
            max_concurrent: self.max_concurrent.clamp(0, u32::MAX as i64) as u32,
            max_cps: self.max_cps,
            talk_time_ms: self.talk_time_ms.max(0) as u64,
            ring_timeout_ms: self.ring_timeout_ms.max(0) as u64,
            record: self.record,
            recording_retention_days: self
                .recording_retention_days
                .and_then(|d| u32::try_from(d).ok()),
            cdr_retention_days: self.cdr_retention_days.and_then(|d| u32::try_from(d).ok()),
            calling_hours: self.calling_hours.clone(),
            retry_policy: self.retry_policy.clone(),
            priority: self.priority.clamp(0, 100) as u32,
            max_attempts: self.max_attempts.and_then(|d| u32::try_from(d).ok()),
            max_attempts_per_day: self
                .max_attempts_per_day
                .and_then(|d| u32::try_from(d).ok()),
            mode: self.mode,
            dial_ratio: self.dial_ratio,
            abandon_cap_pct: self.abandon_cap_pct,
            skills: self.skills.clone(),
            abandon_after_ms: self.abandon_after_ms.max(0) as u64,
            dispositions: self.dispositions.clone(),
            ivr_flow: self.ivr_flow.clone(),
            amd: self.amd.clone(),
            transcribe: self.transcribe,
            abandon_message: self.abandon_message.clone(),
        }
    }
}

pub(crate) const CAMPAIGN_COLS: &str = "id, name, caller_id, max_concurrent, max_cps, talk_time_ms, ring_timeout_ms, state, created_at, team, record, recording_retention_days, priority, calling_hours, retry_policy, max_attempts, max_attempts_per_day, default_region, cdr_retention_days, mode, dial_ratio, abandon_cap_pct, skills, abandon_after_ms, dispositions, ivr_flow, amd, transcribe, abandon_message";

/// A JSON column: `None` when NULL, a decode error naming the column when
/// it does not parse (never a silent default).
fn json_col<T: serde::de::DeserializeOwned>(
    r: &sqlx::any::AnyRow,
    i: usize,
    col: &str,
) -> Result<Option<T>, sqlx::Error> {
    super::text(r, i)?
        .map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| sqlx::Error::Decode(format!("campaigns.{col}: {e}").into()))
        })
        .transpose()
}

pub(crate) fn campaign_from(r: &sqlx::any::AnyRow) -> Result<Campaign, sqlx::Error> {
    let hours = super::text(r, 13)?;
    let retry = super::text(r, 14)?;
    let mode: String = r.try_get(19)?;
    let skills = super::text(r, 22)?;
    Ok(Campaign {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        caller_id: r.try_get(2)?,
        max_concurrent: r.try_get(3)?,
        max_cps: r.try_get(4)?,
        talk_time_ms: r.try_get(5)?,
        ring_timeout_ms: r.try_get(6)?,
        state: r.try_get(7)?,
        created_at: r.try_get(8)?,
        team: r.try_get(9)?,
        record: r.try_get::<i64, _>(10)? != 0,
        recording_retention_days: r.try_get(11)?,
        cdr_retention_days: r.try_get(18)?,
        priority: r.try_get(12)?,
        calling_hours: hours
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        retry_policy: retry
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        max_attempts: r.try_get(15)?,
        max_attempts_per_day: r.try_get(16)?,
        default_region: r.try_get(17)?,
        mode: DialMode::parse(&mode).ok_or_else(|| {
            sqlx::Error::Decode(format!("campaigns.mode: unknown mode {mode:?}").into())
        })?,
        dial_ratio: r.try_get(20)?,
        abandon_cap_pct: r.try_get(21)?,
        skills: match skills {
            None => BTreeMap::new(),
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| sqlx::Error::Decode(format!("campaigns.skills: {e}").into()))?,
        },
        abandon_after_ms: r.try_get(23)?,
        dispositions: match super::text(r, 24)? {
            None => crate::domain::disposition::default_dispositions(),
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| sqlx::Error::Decode(format!("campaigns.dispositions: {e}").into()))?,
        },
        ivr_flow: json_col(r, 25, "ivr_flow")?,
        amd: json_col(r, 26, "amd")?,
        transcribe: r.try_get::<i64, _>(27)? != 0,
        abandon_message: json_col(r, 28, "abandon_message")?,
    })
}

/// Counts of a campaign's leads and attempts.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Progress {
    /// Leads.
    pub total: i64,
    /// Leads by state.
    pub leads: BTreeMap<String, i64>,
    /// Attempts by state.
    pub states: BTreeMap<String, i64>,
    /// Completed attempts by outcome.
    pub outcomes: BTreeMap<String, i64>,
    /// Completed attempts.
    pub done: i64,
}

/// Filters of a campaign listing; `teams` comes from the caller's scope.
#[derive(Debug, Clone, Default)]
pub struct CampaignQuery {
    /// Only this state.
    pub state: Option<CampaignState>,
    /// Only this team.
    pub team: Option<String>,
    /// Only these teams (a supervisor's); `Some(empty)` matches none.
    pub teams: Option<Vec<String>>,
    /// After this id.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// What became of a lifecycle request.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Done: the campaign as it is now.
    Moved(Box<Campaign>),
    /// Refused from this state.
    Refused(CampaignState),
    /// No such campaign.
    Missing,
}

fn settings_json(s: &Settings) -> (String, String) {
    (
        serde_json::to_string(&s.calling_hours).unwrap_or_default(),
        serde_json::to_string(&s.retry_policy).unwrap_or_default(),
    )
}

/// The stored skills: `NULL` when there are none.
fn skills_json(s: &Settings) -> Option<String> {
    (!s.skills.is_empty()).then(|| serde_json::to_string(&s.skills).unwrap_or_default())
}

/// The stored disposition codes (a JSON array).
fn dispositions_json(s: &Settings) -> String {
    serde_json::to_string(&s.dispositions).unwrap_or_default()
}

/// The stored flow, machine detection and compliance message: `NULL`
/// when there are none.
fn ivr_json(s: &Settings) -> (Option<String>, Option<String>, Option<String>) {
    fn json<T: serde::Serialize>(v: Option<&T>) -> Option<String> {
        v.map(|v| serde_json::to_string(v).unwrap_or_default())
    }
    (
        json(s.ivr_flow.as_ref()),
        json(s.amd.as_ref()),
        json(s.abandon_message.as_ref()),
    )
}

impl Repo {
    /// Stores a new campaign and its inline leads.
    pub async fn create_campaign(&self, c: &NewCampaign) -> Result<Campaign, sqlx::Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = dialstack_common::now_ms();
        let s = &c.settings;
        let (hours, retry) = settings_json(s);
        let (flow, amd, message) = ivr_json(s);
        let mut tx = self.db.begin().await?;
        // Every column but `state` (8th, a literal) is bound, then `updated_at`.
        sqlx::query(&format!(
            "INSERT INTO campaigns ({CAMPAIGN_COLS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'draft', {})",
            super::marks(CAMPAIGN_COLS.split(',').count() - 7)
        ))
        .bind(&id)
        .bind(&c.name)
        .bind(c.caller_id.as_str())
        .bind(i64::from(s.max_concurrent))
        .bind(s.max_cps)
        .bind(s.talk_time_ms as i64)
        .bind(s.ring_timeout_ms as i64)
        .bind(now)
        .bind(c.team.clone())
        .bind(i64::from(s.record))
        .bind(s.recording_retention_days.map(i64::from))
        .bind(i64::from(s.priority))
        .bind(hours)
        .bind(retry)
        .bind(s.max_attempts.map(i64::from))
        .bind(s.max_attempts_per_day.map(i64::from))
        .bind(c.default_region.clone())
        .bind(s.cdr_retention_days.map(i64::from))
        .bind(s.mode.as_str())
        .bind(s.dial_ratio)
        .bind(s.abandon_cap_pct)
        .bind(skills_json(s))
        .bind(s.abandon_after_ms as i64)
        .bind(dispositions_json(s))
        .bind(flow)
        .bind(amd)
        .bind(i64::from(s.transcribe))
        .bind(message)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for chunk in c.contacts.chunks(leads::INSERT_CHUNK) {
            leads::insert_leads(&mut tx, self.db.dialect, &id, chunk, now).await?;
        }
        leads::profile_events(&mut tx, crate::NAME, &id, &c.contacts).await?;
        settings_event(&mut tx, crate::NAME, &id, c.team.as_deref(), s, now).await?;
        tx.commit().await?;
        self.campaign(&id).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// A campaign by id.
    pub async fn campaign(&self, id: &str) -> Result<Option<Campaign>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(campaign_from).transpose()
    }

    /// Campaigns in id order, filtered and scoped.
    pub async fn campaigns(&self, q: &CampaignQuery) -> Result<Vec<Campaign>, sqlx::Error> {
        let mut sql = format!("SELECT {CAMPAIGN_COLS} FROM campaigns WHERE 1 = 1");
        let state = q.state.map(|s| s.as_str().to_owned());
        for (cond, v) in [
            (" AND state = ?", &state),
            (" AND team = ?", &q.team),
            (" AND id > ?", &q.after),
        ] {
            if v.is_some() {
                sql.push_str(cond);
            }
        }
        let teams = q.teams.as_deref().unwrap_or_default();
        if q.teams.is_some() {
            sql.push_str(&dialstack_common::db::and_in("team", teams.len()));
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for v in [&state, &q.team, &q.after]
            .into_iter()
            .flatten()
            .chain(teams)
        {
            query = query.bind(v);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        rows.iter().map(campaign_from).collect()
    }

    /// Campaigns in state `running`.
    pub async fn running_campaigns(&self) -> Result<Vec<Campaign>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE state = 'running'"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(campaign_from).collect()
    }

    /// Applies `patch`ed settings (already validated) while the campaign is
    /// editable; `Refused` names the state otherwise.
    pub async fn update_settings(
        &self,
        id: &str,
        name: Option<&str>,
        s: &Settings,
    ) -> Result<Transition, sqlx::Error> {
        let (hours, retry) = settings_json(s);
        let (flow, amd, message) = ivr_json(s);
        let editable: Vec<CampaignState> = CampaignState::ALL
            .iter()
            .copied()
            .filter(|s| s.editable())
            .collect();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(&format!(
            "UPDATE campaigns SET name = COALESCE(?, name), max_concurrent = ?, max_cps = ?, talk_time_ms = ?, ring_timeout_ms = ?,
               record = ?, recording_retention_days = ?, priority = ?, calling_hours = ?, retry_policy = ?,
               max_attempts = ?, max_attempts_per_day = ?, cdr_retention_days = ?,
               mode = ?, dial_ratio = ?, abandon_cap_pct = ?, skills = ?, abandon_after_ms = ?, dispositions = ?,
               ivr_flow = ?, amd = ?, transcribe = ?, abandon_message = ?, updated_at = ?
             WHERE id = ?{}",
            sql_in("state", &editable, CampaignState::as_str)
        ))
        .bind(name.map(str::to_owned))
        .bind(i64::from(s.max_concurrent))
        .bind(s.max_cps)
        .bind(s.talk_time_ms as i64)
        .bind(s.ring_timeout_ms as i64)
        .bind(i64::from(s.record))
        .bind(s.recording_retention_days.map(i64::from))
        .bind(i64::from(s.priority))
        .bind(hours)
        .bind(retry)
        .bind(s.max_attempts.map(i64::from))
        .bind(s.max_attempts_per_day.map(i64::from))
        .bind(s.cdr_retention_days.map(i64::from))
        .bind(s.mode.as_str())
        .bind(s.dial_ratio)
        .bind(s.abandon_cap_pct)
        .bind(skills_json(s))
        .bind(s.abandon_after_ms as i64)
        .bind(dispositions_json(s))
        .bind(flow)
        .bind(amd)
        .bind(i64::from(s.transcribe))
        .bind(message)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let moved = moved.rows_affected() == 1;
        if moved {
            let team: Option<String> = sqlx::query("SELECT team FROM campaigns WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            settings_event(&mut tx, crate::NAME, id, team.as_deref(), s, now).await?;
        }
        tx.commit().await?;
        self.outcome_of(id, moved).await
    }

    async fn outcome_of(&self, id: &str, moved: bool) -> Result<Transition, sqlx::Error> {
        Ok(match self.campaign(id).await? {
            None => Transition::Missing,
            Some(c) if moved => Transition::Moved(Box::new(c)),
            Some(c) => Transition::Refused(c.state()),
        })
    }

    /// Moves a campaign by `action` if the transition table allows it from
    /// its current state (compare-and-set). `stop` also cancels its pending
    /// leads and its dial commands no media processor has claimed; calls
    /// already claimed finish.
    pub async fn transition(
        &self,
        id: &str,
        action: CampaignAction,
        source: &str,
    ) -> Result<Transition, sqlx::Error> {
        let Some(current) = self.campaign(id).await? else {
            return Ok(Transition::Missing);
        };
        let Some(to) = current.state().apply(action) else {
            return Ok(Transition::Refused(current.state()));
        };
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let stamp = match to {
            CampaignState::Running if action == CampaignAction::Start => ", started_at = ?",
            CampaignState::Stopped | CampaignState::Completed => ", completed_at = ?",
            _ => "",
        };
        let sql = format!(
            "UPDATE campaigns SET state = ?, updated_at = ?{stamp} WHERE id = ?{}",
            sql_in(
                "state",
                &CampaignState::sources(action),
                CampaignState::as_str
            )
        );
        let mut q = sqlx::query(&sql).bind(to.as_str()).bind(now);
        if !stamp.is_empty() {
            q = q.bind(now);
        }
        let moved = q.bind(id).execute(&mut *tx).await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return self.outcome_of(id, false).await;
        }
        if to == CampaignState::Stopped {
            sqlx::query(&format!(
                "UPDATE leads SET state = ?, updated_at = ? WHERE campaign_id = ?{}",
                sql_in(
                    "state",
                    &LeadState::sources(LeadEvent::Cancel),
                    LeadState::as_str
                )
            ))
            .bind(LeadState::Canceled.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            super::attempts::cancel_queued(&mut tx, id, source, now).await?;
        }
        campaign_event(&mut tx, source, id, to.as_str()).await?;
        tx.commit().await?;
        self.outcome_of(id, true).await
    }

    /// Starts a draft campaign. Returns `false` when it was not a draft.
    pub async fn start_campaign(&self, id: &str, source: &str) -> Result<bool, sqlx::Error> {
        Ok(matches!(
            self.transition(id, CampaignAction::Start, source).await?,
            Transition::Moved(_)
        ))
    }

    /// Deletes a campaign that is not running and has no call in flight,
    /// with its leads and attempts.
    pub async fn delete_campaign(&self, id: &str) -> Result<Transition, sqlx::Error> {
        let Some(c) = self.campaign(id).await? else {
            return Ok(Transition::Missing);
        };
        if !c.state().deletable() || self.in_flight(id).await? > 0 {
            return Ok(Transition::Refused(c.state()));
        }
        let deletable: Vec<CampaignState> = CampaignState::ALL
            .iter()
            .copied()
            .filter(|s| s.deletable())
            .collect();
        let mut tx = self.db.begin().await?;
        let gone = sqlx::query(&format!(
            "DELETE FROM campaigns WHERE id = ?{}",
            sql_in("state", &deletable, CampaignState::as_str)
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() != 1 {
            tx.rollback().await?;
            return self.outcome_of(id, false).await;
        }
        for table in ["leads", "attempts"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE campaign_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM dnc WHERE scope = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Transition::Moved(Box::new(c)))
    }

    /// Attempts in progress (queued, claimed or dialing).
    pub async fn in_flight(&self, campaign_id: &str) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM attempts WHERE state IN ('queued', 'claimed', 'dialing') AND campaign_id = ?",
        )
        .bind(campaign_id)
        .fetch_one(&self.db.pool)
        .await?;
        row.try_get(0)
    }

    /// Marks a running campaign completed once no lead is open and no
    /// attempt is in flight. Returns `true` when it did.
    pub async fn complete_if_done(
        &self,
        campaign_id: &str,
        source: &str,
    ) -> Result<bool, sqlx::Error> {
        let open = sqlx::query(
            "SELECT 1 FROM leads WHERE campaign_id = ? AND state IN ('pending', 'dialing') LIMIT 1",
        )
        .bind(campaign_id)
        .fetch_optional(&self.db.pool)
        .await?;
        if open.is_some() || self.in_flight(campaign_id).await? > 0 {
            return Ok(false);
        }
        Ok(matches!(
            self.transition(campaign_id, CampaignAction::Complete, source)
                .await?,
            Transition::Moved(_)
        ))
    }

    /// A campaign's progress.
    pub async fn progress(&self, campaign_id: &str) -> Result<Progress, sqlx::Error> {
        let mut p = Progress::default();
        for r in
            sqlx::query("SELECT state, COUNT(*) FROM leads WHERE campaign_id = ? GROUP BY state")
                .bind(campaign_id)
                .fetch_all(&self.db.pool)
                .await?
        {
            let n: i64 = r.try_get(1)?;
            p.total += n;
            p.leads.insert(r.try_get(0)?, n);
        }
        for r in
            sqlx::query("SELECT state, COUNT(*) FROM attempts WHERE campaign_id = ? GROUP BY state")
                .bind(campaign_id)
                .fetch_all(&self.db.pool)
                .await?
        {
            p.states.insert(r.try_get(0)?, r.try_get(1)?);
        }
        for r in sqlx::query(
            "SELECT outcome, COUNT(*) FROM attempts WHERE campaign_id = ? AND state = 'completed' GROUP BY outcome",
        )
        .bind(campaign_id)
        .fetch_all(&self.db.pool)
        .await?
        {
            let outcome: Option<String> = r.try_get(0)?;
            p.outcomes
                .insert(outcome.unwrap_or_else(|| "unknown".into()), r.try_get(1)?);
        }
        p.done = p.states.get("completed").copied().unwrap_or(0);
        Ok(p)
    }
}

/// Writes `campaign.updated` (the settings other services copy) in `tx`.
async fn settings_event(
    tx: &mut Tx,
    source: &str,
    id: &str,
    team: Option<&str>,
    s: &Settings,
    version: i64,
) -> Result<(), sqlx::Error> {
    let data = CampaignUpdated {
        campaign_id: id.to_owned(),
        team: team.map(str::to_owned),
        cdr_retention_days: s.cdr_retention_days,
        recording_retention_days: s.recording_retention_days,
        version,
    };
    let ev = CloudEvent::new(source, types::CAMPAIGN_UPDATED, id, &data);
    outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, id, &ev).await
}

pub(crate) async fn campaign_event(
    tx: &mut Tx,
    source: &str,
    id: &str,
    state: &str,
) -> Result<(), sqlx::Error> {
    let data = CampaignStateChanged {
        campaign_id: id.to_owned(),
        state: state.to_owned(),
    };
    let ev = CloudEvent::new(source, types::CAMPAIGN_STATE, id, &data);
    outbox_enqueue(tx, dialstack_common::db::channel::EVENTS, id, &ev).await
}
