//! Campaign rules: what a valid campaign is, and what may change once it
//! exists. No I/O here.

use dialstack_dialrules::hours::CallingHours;
use serde::Deserialize;

use super::compliance::RetryPolicy;
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
}

/// One contact as sent: a bare number, or a number with its agent.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ContactInput {
    /// A number, E.164.
    Phone(String),
    /// A number owned by an agent (a personal callback or a preview lead).
    Lead {
        /// The number, E.164.
        phone: String,
        /// The owning agent's user id.
        #[serde(default)]
        agent_id: Option<String>,
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
}

impl Settings {
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
                    ContactInput::Lead { phone, agent_id } => LeadInput {
                        phone,
                        agent_id,
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
}
