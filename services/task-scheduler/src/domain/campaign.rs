//! Campaign rules: what a valid campaign is, and what may change once it
//! exists. No I/O here.

use std::collections::BTreeMap;

use dialstack_contract::ivr::Say;
use dialstack_contract::{AmdSpec, BridgeSpec, IvrFlow, MAX_BRIDGE_SKILLS};
use dialstack_dialrules::hours::CallingHours;
use serde::{Deserialize, Deserializer};

use super::compliance::RetryPolicy;
use super::ivr::{parse_abandon_message, parse_amd, parse_ivr_flow};
use super::lead::{LeadInput, ValidLead};

/// A phone number in E.164: `+`, a non-zero digit, 7 to 15 digits in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix('+').ok_or("must start with '+' (E.164)")?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("{s:?} is not an E.164 number"))
        }
    }

    /// The number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a campaign's answered calls reach people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DialMode {
    /// No agents: a prompt (the tone until the IVR exists). Never bridged.
    #[default]
    Ivr,
    /// An agent asks for a lead and dials it; never dialed automatically.
    Preview,
    /// Calls not yet with an agent ≤ ready agents × `dial_ratio`.
    Progressive,
    /// The pacer decides from measured answer rate, handle times and the
    /// abandon ledger.
    Predictive,
}

impl DialMode {
    /// Every mode.
    pub const ALL: [DialMode; 4] = [
        Self::Ivr,
        Self::Preview,
        Self::Progressive,
        Self::Predictive,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ivr => "ivr",
            Self::Preview => "preview",
            Self::Progressive => "progressive",
            Self::Predictive => "predictive",
        }
    }

    /// Parses a stored or sent name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Answered calls are bridged to an agent of the campaign's team.
    pub fn uses_agents(self) -> bool {
        self != Self::Ivr
    }

    /// The dispatcher places its calls (preview calls are placed by agents).
    pub fn auto_dials(self) -> bool {
        self != Self::Preview
    }
}

impl std::fmt::Display for DialMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The legal abandon cap (percent of live-answered calls); a campaign may
/// aim lower, never higher.
pub const MAX_ABANDON_CAP_PCT: f64 = 3.0;
/// The longest an answered callee may wait for an agent (ms).
pub const MAX_ABANDON_AFTER_MS: u64 = 2_000;

/// Ring time the law asks for before a call may be given up as no answer.
pub const MIN_RING_TIMEOUT_MS: u64 = 15_000;
/// Most contacts accepted inline in one create request (larger lists go
/// through `POST /v1/campaigns/{id}/leads`).
pub const MAX_CONTACTS: usize = 100_000;

/// `POST /v1/campaigns` as sent.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewCampaignRequest {
    /// Display name.
    pub name: String,
    /// Caller id presented on every call, E.164.
    pub caller_id: String,
    /// Most calls in progress at once.
    pub max_concurrent: u32,
    /// Most new calls per second.
    pub max_cps: f64,
    /// Numbers to dial, each alone or with the agent who owns the lead
    /// (`{"phone": "+1...", "agent_id": "..."}`); may be empty, leads can be
    /// imported later.
    #[serde(default)]
    pub contacts: Vec<ContactInput>,
    /// The team that works the campaign: its supervisors manage it and read
    /// its calls. Required when a supervisor creates the campaign.
    #[serde(default)]
    pub team: Option<String>,
    /// Talk time for prompt-only calls (ms, default 5000).
    #[serde(default)]
    pub talk_time_ms: Option<u64>,
    /// Ring timeout (ms, default 30000, at least 15000).
    #[serde(default)]
    pub ring_timeout_ms: Option<u64>,
    /// Record answered calls (stereo WAV in the recording store; default off).
    #[serde(default)]
    pub record: bool,
    /// Delete recordings this many days after the call (1-3650; default:
    /// keep until deleted).
    #[serde(default)]
    pub recording_retention_days: Option<u32>,
    /// Delete the campaign's call detail records this many days after the
    /// call (1-36500; default: the deployment's `DIALSTACK_CDR_RETENTION_DAYS`
    /// in storage-service). A record outlives its recording.
    #[serde(default)]
    pub cdr_retention_days: Option<u32>,
    /// Calling window in the callee's local time (default every day
    /// 08:00-21:00).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub calling_hours: Option<CallingHours>,
    /// Retries by outcome (default none: one attempt per lead).
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Weight in the share of the deployment's dial capacity among running
    /// campaigns (1-100, default 1).
    #[serde(default)]
    pub priority: Option<u32>,
    /// Most attempts per lead in all (1-100).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Most attempts per lead in any 24 h (1-100).
    #[serde(default)]
    pub max_attempts_per_day: Option<u32>,
    /// Region (ISO 3166 alpha-2, e.g. `US`) for numbers given without a
    /// country code.
    #[serde(default)]
    pub default_region: Option<String>,
    /// `ivr` (default: no agents), `preview`, `progressive` or `predictive`.
    /// Every mode but `ivr` needs a `team`: its agents take the calls.
    #[serde(default)]
    pub mode: Option<String>,
    /// Progressive: calls not yet with an agent per ready agent (0.5-5.0,
    /// default 1.0).
    #[serde(default)]
    pub dial_ratio: Option<f64>,
    /// Most abandoned calls, in percent of live-answered ones, today and
    /// over 30 days (0.1-3.0, default 3.0); dialing slows at 80 % of it and
    /// stops at it.
    #[serde(default)]
    pub abandon_cap_pct: Option<f64>,
    /// Skills an agent needs, by name, with the lowest level (1-10).
    #[serde(default)]
    pub skills: Option<BTreeMap<String, i64>>,
    /// How long an answered callee may wait for an agent before the
    /// compliance message (100-2000 ms, default 2000).
    #[serde(default)]
    pub abandon_after_ms: Option<u64>,
    /// Disposition codes agents may set on calls: 1-32 of `[A-Z0-9_]{1,32}`
    /// (default `SALE`, `NO_INTEREST`, `CALLBACK`, `DNC`, `WRONG_NUMBER`).
    #[serde(default)]
    pub dispositions: Option<Vec<String>>,
    /// The IVR flow answered calls run: `{"start": "<node>", "nodes":
    /// {"<node>": {"type": "play" | "gather" | "branch" | "record" |
    /// "transfer" | "webhook" | "hangup", ...}}}`, at most 64 KiB of JSON.
    /// Any mode; a `transfer` node needs the campaign's `team` (its agents
    /// take the call). Prompt texts may use the lead's fields
    /// (`{first_name}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub ivr_flow: Option<serde_json::Value>,
    /// Answering-machine detection: `{"mode": "off" | "detect",
    /// "on_machine": "hangup" | "message", "message": {"prompt" | "text",
    /// "voice", "rate"}}` (default off). `message` is required with
    /// `on_machine: message`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub amd: Option<serde_json::Value>,
    /// Transcribe each recorded call after it ends (`call.transcript`, kept
    /// by storage-service); needs `record` (default off).
    #[serde(default)]
    pub transcribe: bool,
    /// The compliance message an answered callee hears when no agent is
    /// free in time, before the hang-up: `{"prompt": "<id>"}` or `{"text":
    /// "This is <seller>, ... call us on <number>, or press ... to opt out",
    /// "voice", "rate"}`; text may use the lead's fields. Default: the
    /// deployment's message. Used by agent modes and by a flow's
    /// `transfer` node.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub abandon_message: Option<serde_json::Value>,
}

/// `PATCH /v1/campaigns/{id}`: only the fields given change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignPatch {
    /// Display name.
    pub name: Option<String>,
    /// Most calls in progress at once.
    pub max_concurrent: Option<u32>,
    /// Most new calls per second.
    pub max_cps: Option<f64>,
    /// Talk time (ms).
    pub talk_time_ms: Option<u64>,
    /// Ring timeout (ms).
    pub ring_timeout_ms: Option<u64>,
    /// Record answered calls.
    pub record: Option<bool>,
    /// Recording retention (days).
    pub recording_retention_days: Option<u32>,
    /// Call record retention (days).
    pub cdr_retention_days: Option<u32>,
    /// Calling window.
    #[schema(value_type = Option<Object>)]
    pub calling_hours: Option<CallingHours>,
    /// Retries by outcome.
    pub retry_policy: Option<RetryPolicy>,
    /// Fair-share weight.
    pub priority: Option<u32>,
    /// Most attempts per lead.
    pub max_attempts: Option<u32>,
    /// Most attempts per lead per 24 h.
    pub max_attempts_per_day: Option<u32>,
    /// Dialing mode (`ivr`, `preview`, `progressive`, `predictive`).
    pub mode: Option<String>,
    /// Progressive dial ratio.
    pub dial_ratio: Option<f64>,
    /// Abandon cap (percent).
    pub abandon_cap_pct: Option<f64>,
    /// Agent skills (name → lowest level); replaces the whole map.
    pub skills: Option<BTreeMap<String, i64>>,
    /// Longest wait for an agent (ms).
    pub abandon_after_ms: Option<u64>,
    /// Disposition codes; replaces the whole list.
    pub dispositions: Option<Vec<String>>,
    /// The IVR flow, replaced whole; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    pub ivr_flow: Option<Option<serde_json::Value>>,
    /// Answering-machine detection, replaced whole; `null` turns it off.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    pub amd: Option<Option<serde_json::Value>>,
    /// Transcribe recorded calls (needs `record`).
    pub transcribe: Option<bool>,
    /// The compliance message for abandoned calls, replaced whole; `null`
    /// goes back to the deployment's message.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    pub abandon_message: Option<Option<serde_json::Value>>,
}

/// A field that is present (`Some`), with JSON `null` as `Some(None)`; an
/// absent one is `None` through `#[serde(default)]`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One contact as sent: a bare number, or a number with its agent.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ContactInput {
    /// A number, E.164.
    Phone(String),
    /// A number with its owning agent (a personal callback or a preview
    /// lead) and profile fields, which prompts may use (`{first_name}`).
    Lead {
        /// The number, E.164.
        phone: String,
        /// The owning agent's user id.
        #[serde(default)]
        agent_id: Option<String>,
        /// First name.
        #[serde(default)]
        first_name: Option<String>,
        /// Last name.
        #[serde(default)]
        last_name: Option<String>,
        /// The customer's id in the operator's CRM.
        #[serde(default)]
        external_id: Option<String>,
        /// Other profile fields.
        #[serde(default)]
        fields: BTreeMap<String, String>,
    },
}

impl From<&str> for ContactInput {
    fn from(s: &str) -> Self {
        Self::Phone(s.to_owned())
    }
}

impl From<String> for ContactInput {
    fn from(s: String) -> Self {
        Self::Phone(s)
    }
}

/// Team and agent ids: 1-64 of `[A-Za-z0-9._-]`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The dialing settings of a campaign, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Concurrency cap.
    pub max_concurrent: u32,
    /// Calls per second cap.
    pub max_cps: f64,
    /// Talk time (ms).
    pub talk_time_ms: u64,
    /// Ring timeout (ms).
    pub ring_timeout_ms: u64,
    /// Record answered calls.
    pub record: bool,
    /// Recording retention (days).
    pub recording_retention_days: Option<u32>,
    /// Call record retention (days).
    pub cdr_retention_days: Option<u32>,
    /// Calling window.
    pub calling_hours: CallingHours,
    /// Retries by outcome.
    pub retry_policy: RetryPolicy,
    /// Fair-share weight.
    pub priority: u32,
    /// Most attempts per lead.
    pub max_attempts: Option<u32>,
    /// Most attempts per lead per 24 h.
    pub max_attempts_per_day: Option<u32>,
    /// Dialing mode.
    pub mode: DialMode,
    /// Progressive dial ratio.
    pub dial_ratio: f64,
    /// Abandon cap (percent).
    pub abandon_cap_pct: f64,
    /// Agent skills (name → lowest level).
    pub skills: BTreeMap<String, u8>,
    /// Longest wait for an agent (ms).
    pub abandon_after_ms: u64,
    /// Disposition codes agents may set.
    pub dispositions: Vec<String>,
    /// The IVR flow answered calls run (`None`: the tone, or the bridge).
    pub ivr_flow: Option<IvrFlow>,
    /// Answering-machine detection (`None`: off).
    pub amd: Option<AmdSpec>,
    /// Transcribe recorded calls.
    pub transcribe: bool,
    /// The campaign's compliance message for abandoned calls (`None`: the
    /// deployment's).
    pub abandon_message: Option<Say>,
}

/// Parses a sent mode.
fn parse_mode(s: &str) -> Result<DialMode, Invalid> {
    DialMode::parse(s)
        .ok_or_else(|| invalid("mode", "must be ivr, preview, progressive or predictive"))
}

/// Validates sent skills: names as ids, levels 1-10, at most
/// [`MAX_BRIDGE_SKILLS`].
fn parse_skills(m: &BTreeMap<String, i64>) -> Result<BTreeMap<String, u8>, Invalid> {
    if m.len() > MAX_BRIDGE_SKILLS {
        return Err(invalid(
            "skills",
            format!("at most {MAX_BRIDGE_SKILLS} skills"),
        ));
    }
    m.iter()
        .map(|(k, v)| {
            if !name_ok(k) {
                return Err(invalid("skills", "names must be 1-64 of [A-Za-z0-9._-]"));
            }
            match u8::try_from(*v) {
                Ok(l) if (1..=10).contains(&l) => Ok((k.clone(), l)),
                _ => Err(invalid(format!("skills.{k}"), "levels are 1-10")),
            }
        })
        .collect()
}

/// Every mode but `ivr` is matched with agents by the campaign's team.
pub fn check_mode_team(mode: DialMode, team: Option<&str>) -> Result<(), Invalid> {
    if mode.uses_agents() && team.is_none() {
        return Err(invalid(
            "team",
            format!("a {mode} campaign needs a team: its agents take the calls"),
        ));
    }
    Ok(())
}

/// A flow's `transfer` node hands the call to an agent of the campaign's
/// team: without a team there is none to hand it to.
pub fn check_flow_team(s: &Settings, team: Option<&str>) -> Result<(), Invalid> {
    let Some(flow) = &s.ivr_flow else {
        return Ok(());
    };
    if team.is_some() {
        return Ok(());
    }
    match super::ivr::transfer_node(flow) {
        Some(name) => Err(invalid(
            "ivr_flow",
            format!("node '{name}': a transfer needs the campaign to have a team (its agents take the call)"),
        )),
        None => Ok(()),
    }
}

/// The team rules of a campaign's settings: the mode's, then the flow's.
pub fn check_team(s: &Settings, team: Option<&str>) -> Result<(), Invalid> {
    check_mode_team(s.mode, team)?;
    check_flow_team(s, team)
}

impl Settings {
    /// What dial commands carry for the agent bridge: `None` for `ivr`.
    pub fn bridge(&self) -> Option<BridgeSpec> {
        // An IVR campaign's flow may hand calls to agents (`transfer`);
        // its commands carry the wait and the message for that.
        let transfers = self.abandon_message.is_some()
            && self
                .ivr_flow
                .as_ref()
                .is_some_and(|f| super::ivr::transfer_node(f).is_some());
        (self.mode.uses_agents() || transfers).then(|| BridgeSpec {
            skills: self.skills.clone(),
            agent_id: None,
            abandon_after_ms: self.abandon_after_ms,
            abandon_message: self.abandon_message.clone().unwrap_or_default(),
        })
    }

    /// What dial commands carry for machine detection: only when it
    /// detects (`off` is the same as none, and keeps commands small).
    pub fn amd_command(&self) -> Option<AmdSpec> {
        self.amd.clone().filter(super::ivr::detects)
    }

    /// Whether dial commands carry the lead's fields: only a flow or a
    /// machine message can say them.
    pub fn needs_lead_fields(&self) -> bool {
        super::ivr::needs_lead_fields(
            self.ivr_flow.as_ref(),
            self.amd.as_ref(),
            self.abandon_message.as_ref(),
        )
    }

    /// Validates every field; the first failure names its field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=10_000).contains(&self.max_concurrent) {
            return Err(invalid("max_concurrent", "must be 1-10000"));
        }
        if !(self.max_cps.is_finite() && self.max_cps > 0.0 && self.max_cps <= 5_000.0) {
            return Err(invalid("max_cps", "must be above 0 and at most 5000"));
        }
        if self.talk_time_ms > 3_600_000 {
            return Err(invalid("talk_time_ms", "must be at most 3600000"));
        }
        if !(MIN_RING_TIMEOUT_MS..=300_000).contains(&self.ring_timeout_ms) {
            return Err(invalid(
                "ring_timeout_ms",
                "must be 15000-300000 (ring at least 15 s)",
            ));
        }
        if self
            .recording_retention_days
            .is_some_and(|d| !(1..=3650).contains(&d))
        {
            return Err(invalid("recording_retention_days", "must be 1-3650"));
        }
        if self
            .cdr_retention_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            return Err(invalid("cdr_retention_days", "must be 1-36500"));
        }
        self.calling_hours
            .validate()
            .map_err(|(f, r)| invalid(format!("calling_hours.{f}"), r))?;
        self.retry_policy
            .validate()
            .map_err(|(f, r)| invalid(f, r))?;
        if !(1..=100).contains(&self.priority) {
            return Err(invalid("priority", "must be 1-100"));
        }
        for (field, v) in [
            ("max_attempts", self.max_attempts),
            ("max_attempts_per_day", self.max_attempts_per_day),
        ] {
            if v.is_some_and(|v| !(1..=100).contains(&v)) {
                return Err(invalid(field, "must be 1-100"));
            }
        }
        if !(self.dial_ratio.is_finite() && (0.5..=5.0).contains(&self.dial_ratio)) {
            return Err(invalid("dial_ratio", "must be 0.5-5.0"));
        }
        if !(self.abandon_cap_pct.is_finite()
            && (0.1..=MAX_ABANDON_CAP_PCT).contains(&self.abandon_cap_pct))
        {
            return Err(invalid(
                "abandon_cap_pct",
                "must be 0.1-3.0 (the legal cap is 3 %)",
            ));
        }
        if !(100..=MAX_ABANDON_AFTER_MS).contains(&self.abandon_after_ms) {
            return Err(invalid(
                "abandon_after_ms",
                "must be 100-2000 (an agent within 2 s)",
            ));
        }
        if self.skills.len() > MAX_BRIDGE_SKILLS
            || self
                .skills
                .iter()
                .any(|(k, v)| !name_ok(k) || !(1..=10).contains(v))
        {
            return Err(invalid("skills", "names are ids, levels 1-10"));
        }
        super::disposition::validate_codes(&self.dispositions)?;
        if let Some(f) = &self.ivr_flow {
            super::ivr::check_flow(f)?;
        }
        if let Some(a) = &self.amd {
            a.validate().map_err(|e| invalid(e.field, e.reason))?;
        }
        if let Some(m) = &self.abandon_message {
            m.check("abandon_message", true)
                .map_err(|e| invalid(e.field, e.reason))?;
        }
        if self.transcribe && !self.record {
            return Err(invalid(
                "transcribe",
                "needs record: true (the transcript is made from the recording)",
            ));
        }
        Ok(())
    }

    /// The settings with `patch` applied and validated.
    pub fn patched(&self, patch: &CampaignPatch) -> Result<Settings, Invalid> {
        let mut s = self.clone();
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = &patch.$f { s.$f = v.clone(); })* };
        }
        set!(
            max_concurrent,
            max_cps,
            talk_time_ms,
            ring_timeout_ms,
            record,
            calling_hours,
            retry_policy,
            priority
        );
        if patch.recording_retention_days.is_some() {
            s.recording_retention_days = patch.recording_retention_days;
        }
        if patch.cdr_retention_days.is_some() {
            s.cdr_retention_days = patch.cdr_retention_days;
        }
        if patch.max_attempts.is_some() {
            s.max_attempts = patch.max_attempts;
        }
        if patch.max_attempts_per_day.is_some() {
            s.max_attempts_per_day = patch.max_attempts_per_day;
        }
        if let Some(m) = &patch.mode {
            s.mode = parse_mode(m)?;
        }
        set!(dial_ratio, abandon_cap_pct, abandon_after_ms);
        if let Some(k) = &patch.skills {
            s.skills = parse_skills(k)?;
        }
        if let Some(d) = &patch.dispositions {
            s.dispositions = d.clone();
        }
        if let Some(f) = &patch.ivr_flow {
            s.ivr_flow = f.as_ref().map(parse_ivr_flow).transpose()?;
        }
        if let Some(a) = &patch.amd {
            s.amd = a.as_ref().map(parse_amd).transpose()?;
        }
        set!(transcribe);
        if let Some(m) = &patch.abandon_message {
            s.abandon_message = m.as_ref().map(parse_abandon_message).transpose()?;
        }
        s.validate()?;
        Ok(s)
    }
}

/// A validated campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCampaign {
    /// Display name.
    pub name: String,
    /// Caller id.
    pub caller_id: Phone,
    /// Leads in order.
    pub contacts: Vec<ValidLead>,
    /// The team that works it.
    pub team: Option<String>,
    /// Region for national numbers.
    pub default_region: Option<String>,
    /// Dialing settings.
    pub settings: Settings,
}

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, e.g. `contacts[3]`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// An [`Invalid`] for `field`.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Validates a display name.
pub fn valid_name(name: &str) -> Result<String, Invalid> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "must be 1-200 characters without control characters",
        ));
    }
    Ok(name)
}

impl NewCampaignRequest {
    /// Validates every field, contacts through the same rules as an import
    /// (`rules`); the first failure names its field.
    pub fn validate(self, rules: &super::lead::ImportRules<'_>) -> Result<NewCampaign, Invalid> {
        let name = valid_name(&self.name)?;
        let caller_id = Phone::parse(&self.caller_id).map_err(|e| invalid("caller_id", e))?;
        if let Some(r) = &self.default_region {
            if !dialstack_dialrules::phone::region_ok(r) {
                return Err(invalid(
                    "default_region",
                    "must be an ISO 3166 alpha-2 region such as US",
                ));
            }
        }
        let settings = Settings {
            max_concurrent: self.max_concurrent,
            max_cps: self.max_cps,
            talk_time_ms: self.talk_time_ms.unwrap_or(5_000),
            ring_timeout_ms: self.ring_timeout_ms.unwrap_or(30_000),
            record: self.record,
            recording_retention_days: self.recording_retention_days,
            cdr_retention_days: self.cdr_retention_days,
            calling_hours: self.calling_hours.unwrap_or_default(),
            retry_policy: self.retry_policy.unwrap_or_default(),
            priority: self.priority.unwrap_or(1),
            max_attempts: self.max_attempts,
            max_attempts_per_day: self.max_attempts_per_day,
            mode: self
                .mode
                .as_deref()
                .map(parse_mode)
                .transpose()?
                .unwrap_or_default(),
            dial_ratio: self.dial_ratio.unwrap_or(1.0),
            abandon_cap_pct: self.abandon_cap_pct.unwrap_or(MAX_ABANDON_CAP_PCT),
            skills: self
                .skills
                .as_ref()
                .map(parse_skills)
                .transpose()?
                .unwrap_or_default(),
            abandon_after_ms: self.abandon_after_ms.unwrap_or(MAX_ABANDON_AFTER_MS),
            dispositions: self
                .dispositions
                .clone()
                .unwrap_or_else(super::disposition::default_dispositions),
            ivr_flow: self.ivr_flow.as_ref().map(parse_ivr_flow).transpose()?,
            amd: self.amd.as_ref().map(parse_amd).transpose()?,
            transcribe: self.transcribe,
            abandon_message: self
                .abandon_message
                .as_ref()
                .map(parse_abandon_message)
                .transpose()?,
        };
        settings.validate()?;
        if self.contacts.len() > MAX_CONTACTS {
            return Err(invalid(
                "contacts",
                format!("at most {MAX_CONTACTS} inline; import larger lists through /leads"),
            ));
        }
        if self.team.as_deref().is_some_and(|t| !name_ok(t)) {
            return Err(invalid("team", "must be 1-64 of [A-Za-z0-9._-]"));
        }
        check_team(&settings, self.team.as_deref())?;
        let rules = super::lead::ImportRules {
            default_region: self.default_region.as_deref(),
            ..*rules
        };
        let contacts = self
            .contacts
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let input = match c {
                    ContactInput::Phone(phone) => LeadInput {
                        phone,
                        ..Default::default()
                    },
                    ContactInput::Lead {
                        phone,
                        agent_id,
                        first_name,
                        last_name,
                        external_id,
                        fields,
                    } => LeadInput {
                        phone,
                        agent_id,
                        first_name,
                        last_name,
                        external_id,
                        fields,
                        ..Default::default()
                    },
                };
                input.validate(&rules).map_err(|(col, why)| {
                    if col == "phone" {
                        invalid(format!("contacts[{i}]"), why)
                    } else {
                        invalid(format!("contacts[{i}].{col}"), why)
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NewCampaign {
            name,
            caller_id,
            contacts,
            team: self.team,
            default_region: self.default_region,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use dialstack_dialrules::guard::DestinationGuard;

    use super::*;
    use crate::domain::lead::ImportRules;

    fn rules() -> ImportRules<'static> {
        static GUARD: std::sync::OnceLock<DestinationGuard> = std::sync::OnceLock::new();
        ImportRules {
            guard: GUARD.get_or_init(|| DestinationGuard::from_lists("", "").unwrap()),
            default_region: None,
        }
    }

    fn req() -> NewCampaignRequest {
        NewCampaignRequest {
            name: "spring".into(),
            caller_id: "+14155550100".into(),
            max_concurrent: 10,
            max_cps: 5.0,
            contacts: vec!["+14155550101".into()],
            talk_time_ms: None,
            ring_timeout_ms: None,
            team: None,
            record: false,
            recording_retention_days: None,
            cdr_retention_days: None,
            calling_hours: None,
            retry_policy: None,
            priority: None,
            max_attempts: None,
            max_attempts_per_day: None,
            default_region: None,
            mode: None,
            dial_ratio: None,
            abandon_cap_pct: None,
            skills: None,
            abandon_after_ms: None,
            dispositions: None,
            ivr_flow: None,
            amd: None,
            transcribe: false,
            abandon_message: None,
        }
    }

    #[test]
    fn e164_numbers() {
        assert!(Phone::parse("+14155550101").is_ok());
        for bad in [
            "14155550101",
            "+0123456789",
            "+1",
            "+1415555010a",
            "+1234567890123456",
            "",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(req().validate(&rules()).is_ok());
        let mut r = req();
        r.contacts.push("555-1234".into());
        assert_eq!(r.validate(&rules()).unwrap_err().field, "contacts[1]");
        let mut r = req();
        r.ring_timeout_ms = Some(5_000);
        assert_eq!(r.validate(&rules()).unwrap_err().field, "ring_timeout_ms");
        let mut r = req();
        r.max_cps = f64::NAN;
        assert_eq!(r.validate(&rules()).unwrap_err().field, "max_cps");
        let mut r = req();
        r.caller_id = "anonymous".into();
        assert_eq!(r.validate(&rules()).unwrap_err().field, "caller_id");
        let mut r = req();
        r.contacts.clear();
        assert!(r.validate(&rules()).is_ok(), "leads may come later");
        let mut r = req();
        r.priority = Some(0);
        assert_eq!(r.validate(&rules()).unwrap_err().field, "priority");
        let mut r = req();
        r.default_region = Some("XX".into());
        assert_eq!(r.validate(&rules()).unwrap_err().field, "default_region");
        let mut r = req();
        r.contacts.push("+19005550100".into());
        assert_eq!(
            r.validate(&rules()).unwrap_err().field,
            "contacts[1]",
            "premium numbers are refused"
        );
        let mut r = req();
        r.team = Some("sales floor".into());
        assert_eq!(r.validate(&rules()).unwrap_err().field, "team");
        let mut r = req();
        r.contacts.push(ContactInput::Lead {
            phone: "+14155550102".into(),
            agent_id: Some("bad id".into()),
            first_name: None,
            last_name: None,
            external_id: None,
            fields: BTreeMap::new(),
        });
        assert_eq!(
            r.validate(&rules()).unwrap_err().field,
            "contacts[1].agent_id"
        );
    }

    #[test]
    fn contacts_are_numbers_or_numbers_with_an_agent() {
        let r: NewCampaignRequest = serde_json::from_value(serde_json::json!({
            "name": "n", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
            "team": "sales",
            "contacts": ["+14155550101", {"phone": "+14155550102", "agent_id": "ann"}]
        }))
        .unwrap();
        let c = r.validate(&rules()).unwrap();
        assert_eq!(c.team.as_deref(), Some("sales"));
        assert_eq!(c.contacts[0].agent_id, None);
        assert_eq!(c.contacts[1].agent_id.as_deref(), Some("ann"));
        assert_eq!(c.contacts[1].phone, "+14155550102");
        let bad: Result<NewCampaignRequest, _> = serde_json::from_value(serde_json::json!({
            "name": "n", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
            "contacts": [42]
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn a_patch_changes_only_what_it_names_and_is_validated() {
        let c = req().validate(&rules()).unwrap();
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"max_cps": 2.5, "priority": 3})).unwrap();
        let s = c.settings.patched(&p).unwrap();
        assert_eq!((s.max_cps, s.priority, s.max_concurrent), (2.5, 3, 10));
        let bad: CampaignPatch = serde_json::from_value(serde_json::json!({"max_cps": 0})).unwrap();
        assert_eq!(c.settings.patched(&bad).unwrap_err().field, "max_cps");
        let unknown: Result<CampaignPatch, _> =
            serde_json::from_value(serde_json::json!({"state": "running"}));
        assert!(
            unknown.is_err(),
            "state changes go through the lifecycle routes"
        );
    }

    #[test]
    fn dialing_modes_are_validated_and_name_their_field() {
        let c = req().validate(&rules()).unwrap();
        assert_eq!(c.settings.mode, DialMode::Ivr, "ivr by default");
        assert_eq!(c.settings.bridge(), None, "ivr calls are never bridged");
        assert_eq!(
            (
                c.settings.dial_ratio,
                c.settings.abandon_cap_pct,
                c.settings.abandon_after_ms
            ),
            (1.0, 3.0, 2_000)
        );
        let field = |f: fn(&mut NewCampaignRequest)| {
            let mut r = req();
            r.team = Some("east".into());
            f(&mut r);
            r.validate(&rules()).map(|_| ()).map_err(|e| e.field)
        };
        assert_eq!(
            field(|r| r.mode = Some("robocall".into())),
            Err("mode".into())
        );
        assert_eq!(
            field(|r| r.dial_ratio = Some(0.4)),
            Err("dial_ratio".into())
        );
        assert_eq!(
            field(|r| r.dial_ratio = Some(f64::NAN)),
            Err("dial_ratio".into())
        );
        assert_eq!(field(|r| r.dial_ratio = Some(5.0)), Ok(()));
        assert_eq!(
            field(|r| r.abandon_cap_pct = Some(3.5)),
            Err("abandon_cap_pct".into()),
            "never above the legal 3 %"
        );
        assert_eq!(
            field(|r| r.abandon_cap_pct = Some(0.05)),
            Err("abandon_cap_pct".into())
        );
        assert_eq!(
            field(|r| r.abandon_after_ms = Some(2_001)),
            Err("abandon_after_ms".into())
        );
        assert_eq!(
            field(|r| r.abandon_after_ms = Some(99)),
            Err("abandon_after_ms".into())
        );
        assert_eq!(
            field(|r| r.skills = Some([("spanish".to_owned(), 11)].into())),
            Err("skills.spanish".into())
        );
        assert_eq!(
            field(|r| r.skills = Some([("bad name".to_owned(), 3)].into())),
            Err("skills".into())
        );
        let mut r = req();
        r.mode = Some("progressive".into());
        assert_eq!(
            r.validate(&rules()).unwrap_err().field,
            "team",
            "agents come from the team"
        );
        let mut r = req();
        r.mode = Some("predictive".into());
        r.team = Some("east".into());
        r.skills = Some([("spanish".to_owned(), 3)].into());
        r.abandon_after_ms = Some(1_500);
        let c = r.validate(&rules()).unwrap();
        let b = c.settings.bridge().unwrap();
        assert_eq!(b.skills.get("spanish"), Some(&3));
        assert_eq!((b.agent_id.as_deref(), b.abandon_after_ms), (None, 1_500));
        assert!(b.validate().is_ok(), "what we send passes the contract");
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"mode": "preview", "dial_ratio": 2.0}))
                .unwrap();
        let s = c.settings.patched(&p).unwrap();
        assert_eq!((s.mode, s.dial_ratio), (DialMode::Preview, 2.0));
        assert!(!s.mode.auto_dials());
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"abandon_cap_pct": 4.0})).unwrap();
        assert_eq!(c.settings.patched(&p).unwrap_err().field, "abandon_cap_pct");
        assert_eq!(
            check_mode_team(DialMode::Progressive, None)
                .unwrap_err()
                .field,
            "team"
        );
        assert!(check_mode_team(DialMode::Ivr, None).is_ok());
        // The campaign's compliance message travels in the bridge; its
        // text's lead fields make commands carry the lead's fields.
        assert!(b.abandon_message.is_empty() && !c.settings.needs_lead_fields());
        let p: CampaignPatch = serde_json::from_value(serde_json::json!({
            "abandon_message": {"text": "This is Acme for {first_name}, call 0800 123 456"}
        }))
        .unwrap();
        let s = c.settings.patched(&p).unwrap();
        let b = s.bridge().unwrap();
        assert!(b.abandon_message.text.as_deref().unwrap().contains("Acme"));
        assert!(b.validate().is_ok());
        assert!(s.needs_lead_fields());
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"abandon_message": null})).unwrap();
        assert_eq!(s.patched(&p).unwrap().abandon_message, None);
        for bad in [
            serde_json::json!({"text": ""}),
            serde_json::json!({"prompt": "a b"}),
            serde_json::json!({"text": "x", "prompt": "p"}),
            serde_json::json!({"voice": "en-us"}),
            serde_json::json!({"text": "{"}),
            serde_json::json!({"text": "x".repeat(10_000)}),
            serde_json::json!([1, 2]),
        ] {
            let p: CampaignPatch =
                serde_json::from_value(serde_json::json!({ "abandon_message": bad })).unwrap();
            assert_eq!(
                c.settings.patched(&p).unwrap_err().field,
                "abandon_message",
                "{bad}"
            );
        }
    }

    #[test]
    fn an_ivr_flow_that_transfers_carries_the_campaigns_message() {
        let mut r = req();
        r.team = Some("east".into());
        r.ivr_flow = Some(flow());
        let c = r.validate(&rules()).unwrap();
        assert_eq!(c.settings.bridge(), None, "no message: nothing to carry");
        let mut r = req();
        r.team = Some("east".into());
        r.ivr_flow = Some(flow());
        r.abandon_message = Some(serde_json::json!({"prompt": "acme-abandon"}));
        let c = r.validate(&rules()).unwrap();
        let b = c.settings.bridge().expect("the flow's transfer needs it");
        assert_eq!(b.abandon_message.prompt.as_deref(), Some("acme-abandon"));
        assert_eq!(b.abandon_after_ms, 2_000);
    }

    fn flow() -> serde_json::Value {
        serde_json::json!({
            "start": "hello",
            "nodes": {
                "hello": {"type": "gather", "var": "choice", "max_digits": 1,
                          "say": {"text": "Hello {first_name}, press 1 to talk to us"},
                          "next": "route"},
                "route": {"type": "branch", "var": "choice", "cases": {"1": "agent"}, "default": "bye"},
                "agent": {"type": "transfer", "no_agent": "bye"},
                "bye": {"type": "play", "text": "Goodbye", "next": "end"},
                "end": {"type": "hangup"}
            }
        })
    }

    /// The field and message of a failed create.
    fn refused(f: impl FnOnce(&mut NewCampaignRequest)) -> (String, String) {
        let mut r = req();
        f(&mut r);
        let e = r.validate(&rules()).unwrap_err();
        (e.field, e.reason)
    }

    #[test]
    fn a_campaign_takes_a_flow_in_any_mode_and_names_the_node_at_fault() {
        let mut r = req();
        r.team = Some("east".into());
        r.ivr_flow = Some(flow());
        let c = r.validate(&rules()).unwrap();
        assert_eq!(c.settings.ivr_flow.as_ref().unwrap().nodes.len(), 5);
        assert!(c.settings.needs_lead_fields(), "a flow can say lead fields");
        let mut r = req();
        r.team = Some("east".into());
        r.mode = Some("predictive".into());
        r.ivr_flow = Some(flow());
        assert!(r.validate(&rules()).is_ok(), "any mode");
        let (field, why) = refused(|r| {
            r.team = Some("east".into());
            let mut f = flow();
            f["nodes"]["bye"]["next"] = "nowhere".into();
            r.ivr_flow = Some(f);
        });
        assert_eq!(field, "ivr_flow");
        assert!(why.contains("node 'bye'"), "{why}");
    }

    #[test]
    fn a_transfer_needs_a_team() {
        let (field, why) = refused(|r| r.ivr_flow = Some(flow()));
        assert_eq!(field, "ivr_flow");
        assert!(
            why.contains("node 'agent'") && why.contains("team"),
            "{why}"
        );
        let mut no_transfer = flow();
        no_transfer["nodes"]["route"]["cases"]["1"] = "bye".into();
        no_transfer["nodes"]
            .as_object_mut()
            .unwrap()
            .remove("agent");
        let mut r = req();
        r.ivr_flow = Some(no_transfer);
        assert!(
            r.validate(&rules()).is_ok(),
            "a flow without transfer needs no team"
        );
        // Agent modes ask for the team first.
        let (field, _) = refused(|r| {
            r.mode = Some("progressive".into());
            r.ivr_flow = Some(flow());
        });
        assert_eq!(field, "team");
    }

    #[test]
    fn transcription_needs_the_recording() {
        let (field, _) = refused(|r| r.transcribe = true);
        assert_eq!(field, "transcribe");
        let mut r = req();
        r.transcribe = true;
        r.record = true;
        let c = r.validate(&rules()).unwrap();
        assert!(c.settings.transcribe);
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"record": false})).unwrap();
        assert_eq!(c.settings.patched(&p).unwrap_err().field, "transcribe");
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"record": false, "transcribe": false}))
                .unwrap();
        assert!(!c.settings.patched(&p).unwrap().transcribe);
    }

    #[test]
    fn machine_detection_is_sent_only_when_it_detects() {
        let mut r = req();
        r.amd = Some(
            serde_json::json!({"mode": "detect", "on_machine": "message",
            "message": {"text": "Hi {first_name}, call us back"}}),
        );
        let c = r.validate(&rules()).unwrap();
        assert!(c.settings.amd_command().is_some());
        assert!(c.settings.needs_lead_fields());
        let (field, _) = refused(|r| {
            r.amd = Some(serde_json::json!({"mode": "detect", "on_machine": "message"}))
        });
        assert_eq!(field, "amd", "a message action needs its message");
        let mut r = req();
        r.amd = Some(serde_json::json!({"mode": "off"}));
        let c = r.validate(&rules()).unwrap();
        assert_eq!(c.settings.amd_command(), None, "off is sent as none");
        assert!(!c.settings.needs_lead_fields());
    }

    #[test]
    fn a_patch_replaces_or_clears_the_flow_and_detection() {
        let mut r = req();
        r.team = Some("east".into());
        r.ivr_flow = Some(flow());
        r.amd = Some(serde_json::json!({"mode": "detect"}));
        let c = r.validate(&rules()).unwrap();
        let p: CampaignPatch = serde_json::from_value(serde_json::json!({"max_cps": 2.0})).unwrap();
        let s = c.settings.patched(&p).unwrap();
        assert!(s.ivr_flow.is_some() && s.amd.is_some(), "absent: unchanged");
        let p: CampaignPatch =
            serde_json::from_value(serde_json::json!({"ivr_flow": null, "amd": null})).unwrap();
        let s = c.settings.patched(&p).unwrap();
        assert_eq!((s.ivr_flow, s.amd), (None, None), "null clears");
        let p: CampaignPatch = serde_json::from_value(serde_json::json!({"ivr_flow": {
            "start": "a", "nodes": {"a": {"type": "play", "text": "hi"}}}}))
        .unwrap();
        let s = c.settings.patched(&p).unwrap();
        assert_eq!(s.ivr_flow.unwrap().nodes.len(), 1, "replaced whole");
        let p: CampaignPatch = serde_json::from_value(serde_json::json!({"ivr_flow": {
            "start": "a", "nodes": {"a": {"type": "play"}}}}))
        .unwrap();
        let e = c.settings.patched(&p).unwrap_err();
        assert_eq!(e.field, "ivr_flow");
        assert!(e.reason.contains("node 'a'"), "{}", e.reason);
    }

    #[test]
    fn inline_contacts_carry_profile_fields() {
        let r: NewCampaignRequest = serde_json::from_value(serde_json::json!({
            "name": "n", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
            "contacts": [{"phone": "+14155550102", "first_name": "Ann", "fields": {"plan": "gold"}}]
        }))
        .unwrap();
        let c = r.validate(&rules()).unwrap();
        assert_eq!(c.contacts[0].first_name.as_deref(), Some("Ann"));
        assert_eq!(
            c.contacts[0].fields.get("plan").map(String::as_str),
            Some("gold")
        );
    }
}
