//! Campaign rules: what a valid campaign is, and the pacer that keeps dialing
//! under the campaign's calls-per-second and concurrency limits. No I/O here.

use std::time::{Duration, Instant};

use serde::Deserialize;

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
/// Most contacts accepted in one create request.
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
    /// Numbers to dial, E.164, each alone or with the agent who owns the
    /// lead (`{"phone": "+1...", "agent_id": "..."}`).
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

/// A validated lead.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLead {
    /// The number.
    pub phone: Phone,
    /// The owning agent, if any.
    pub agent_id: Option<String>,
}

/// Team and agent ids: 1-64 of `[A-Za-z0-9._-]`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A validated campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCampaign {
    /// Display name.
    pub name: String,
    /// Caller id.
    pub caller_id: Phone,
    /// Concurrency cap.
    pub max_concurrent: u32,
    /// Calls per second cap.
    pub max_cps: f64,
    /// Leads in order.
    pub contacts: Vec<NewLead>,
    /// The team that works it.
    pub team: Option<String>,
    /// Talk time (ms).
    pub talk_time_ms: u64,
    /// Ring timeout (ms).
    pub ring_timeout_ms: u64,
    /// Record answered calls.
    pub record: bool,
    /// Recording retention (days).
    pub recording_retention_days: Option<u32>,
}

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, e.g. `contacts[3]`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl NewCampaignRequest {
    /// Validates every field; the first failure names its field.
    pub fn validate(self) -> Result<NewCampaign, Invalid> {
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid("name", "must be 1-200 characters"));
        }
        let caller_id = Phone::parse(&self.caller_id).map_err(|e| invalid("caller_id", e))?;
        if !(1..=10_000).contains(&self.max_concurrent) {
            return Err(invalid("max_concurrent", "must be 1-10000"));
        }
        if !(self.max_cps.is_finite() && self.max_cps > 0.0 && self.max_cps <= 5_000.0) {
            return Err(invalid("max_cps", "must be above 0 and at most 5000"));
        }
        if self.contacts.is_empty() || self.contacts.len() > MAX_CONTACTS {
            return Err(invalid(
                "contacts",
                format!("must hold 1-{MAX_CONTACTS} numbers"),
            ));
        }
        let contacts = self
            .contacts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (phone, agent_id) = match c {
                    ContactInput::Phone(p) => (p, None),
                    ContactInput::Lead { phone, agent_id } => (phone, agent_id.clone()),
                };
                let phone =
                    Phone::parse(phone).map_err(|e| invalid(format!("contacts[{i}]"), e))?;
                if agent_id.as_deref().is_some_and(|a| !name_ok(a)) {
                    return Err(invalid(
                        format!("contacts[{i}].agent_id"),
                        "must be 1-64 of [A-Za-z0-9._-]",
                    ));
                }
                Ok(NewLead { phone, agent_id })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.team.as_deref().is_some_and(|t| !name_ok(t)) {
            return Err(invalid("team", "must be 1-64 of [A-Za-z0-9._-]"));
        }
        let talk_time_ms = self.talk_time_ms.unwrap_or(5_000);
        if talk_time_ms > 3_600_000 {
            return Err(invalid("talk_time_ms", "must be at most 3600000"));
        }
        let ring_timeout_ms = self.ring_timeout_ms.unwrap_or(30_000);
        if !(MIN_RING_TIMEOUT_MS..=300_000).contains(&ring_timeout_ms) {
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
        Ok(NewCampaign {
            record: self.record,
            recording_retention_days: self.recording_retention_days,
            name,
            caller_id,
            max_concurrent: self.max_concurrent,
            max_cps: self.max_cps,
            contacts,
            talk_time_ms,
            ring_timeout_ms,
            team: self.team,
        })
    }
}

/// Token bucket for one campaign's calls per second, with a burst of one
/// second's worth (at least one call).
#[derive(Debug, Clone)]
pub struct Pacer {
    cps: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer starting with a full bucket.
    pub fn new(cps: f64, now: Instant) -> Self {
        Self {
            cps,
            tokens: cps.max(1.0),
            last: now,
        }
    }

    fn burst(&self) -> f64 {
        self.cps.max(1.0)
    }

    /// How many calls may start now with `in_flight` in progress out of
    /// `max_concurrent`; the caller reports what it started with [`Pacer::take`].
    pub fn allowance(&mut self, now: Instant, in_flight: u64, max_concurrent: u64) -> u64 {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.cps).min(self.burst());
        let by_rate = self.tokens.floor().max(0.0) as u64;
        by_rate.min(max_concurrent.saturating_sub(in_flight))
    }

    /// Spends `n` tokens.
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// Time until one more token is available.
    pub fn next_token_in(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.cps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(req().validate().is_ok());
        let mut r = req();
        r.contacts.push("555-1234".into());
        assert_eq!(r.validate().unwrap_err().field, "contacts[1]");
        let mut r = req();
        r.ring_timeout_ms = Some(5_000);
        assert_eq!(r.validate().unwrap_err().field, "ring_timeout_ms");
        let mut r = req();
        r.max_cps = f64::NAN;
        assert_eq!(r.validate().unwrap_err().field, "max_cps");
        let mut r = req();
        r.caller_id = "anonymous".into();
        assert_eq!(r.validate().unwrap_err().field, "caller_id");
        let mut r = req();
        r.contacts.clear();
        assert_eq!(r.validate().unwrap_err().field, "contacts");
        let mut r = req();
        r.team = Some("sales floor".into());
        assert_eq!(r.validate().unwrap_err().field, "team");
        let mut r = req();
        r.contacts.push(ContactInput::Lead {
            phone: "+14155550102".into(),
            agent_id: Some("bad id".into()),
        });
        assert_eq!(r.validate().unwrap_err().field, "contacts[1].agent_id");
    }

    #[test]
    fn contacts_are_numbers_or_numbers_with_an_agent() {
        let r: NewCampaignRequest = serde_json::from_value(serde_json::json!({
            "name": "n", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
            "team": "sales",
            "contacts": ["+14155550101", {"phone": "+14155550102", "agent_id": "ann"}]
        }))
        .unwrap();
        let c = r.validate().unwrap();
        assert_eq!(c.team.as_deref(), Some("sales"));
        assert_eq!(c.contacts[0].agent_id, None);
        assert_eq!(c.contacts[1].agent_id.as_deref(), Some("ann"));
        assert_eq!(c.contacts[1].phone.as_str(), "+14155550102");
        let bad: Result<NewCampaignRequest, _> = serde_json::from_value(serde_json::json!({
            "name": "n", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
            "contacts": [42]
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn pacer_respects_rate_and_concurrency() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, t0);
        assert_eq!(p.allowance(t0, 0, 100), 10);
        p.take(10);
        assert_eq!(p.allowance(t0, 10, 100), 0);
        // 0.5 s later: 5 more tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(p.allowance(t1, 10, 100), 5);
        // Concurrency caps below the rate.
        assert_eq!(p.allowance(t1, 98, 100), 2);
        // The bucket never holds more than one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(p.allowance(t2, 0, 1_000), 10);
        // Fractional rates still make progress.
        let mut slow = Pacer::new(0.5, t0);
        assert_eq!(slow.allowance(t0, 0, 10), 1);
        slow.take(1);
        assert_eq!(slow.allowance(t0 + Duration::from_secs(1), 0, 10), 0);
        assert_eq!(slow.allowance(t0 + Duration::from_secs(2), 0, 10), 1);
    }
}
