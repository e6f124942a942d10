//! Agents and abandons as the dispatcher sees them: the states an agent
//! reports (`agent.state`), the abandon ratio of a window, how close a
//! campaign is to its abandon cap. No I/O here; the pacers are in
//! [`super::pacing`].
//!
//! The abandon ratio follows the regulators' (and VICIdial's) definition:
//! abandoned calls over live-answered calls, where an abandoned call was
//! answered by a person and so counts in the denominator too.

use dialstack_contract::AgentStateChanged;

use super::campaign::{invalid, name_ok, Invalid};

/// An agent's state as user-service publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Not logged in, or gone.
    Offline,
    /// Waiting for a call.
    Available,
    /// A call is being routed to them.
    Reserved,
    /// Talking.
    OnCall,
    /// After-call work.
    WrapUp,
    /// Away.
    Paused,
}

impl AgentStatus {
    /// Every state, in a stable order.
    pub const ALL: [AgentStatus; 6] = [
        Self::Offline,
        Self::Available,
        Self::Reserved,
        Self::OnCall,
        Self::WrapUp,
        Self::Paused,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Available => "available",
            Self::Reserved => "reserved",
            Self::OnCall => "on_call",
            Self::WrapUp => "wrap_up",
            Self::Paused => "paused",
        }
    }

    /// Parses a stored or published name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Counts as capacity for calls not yet with an agent: available, or
    /// reserved for a call that is itself counted as waiting.
    pub fn takes_calls(self) -> bool {
        matches!(self, Self::Available | Self::Reserved)
    }
}

/// Most teams one `agent.state` may name (user-service allows 12).
pub const MAX_AGENT_TEAMS: usize = 32;

/// An `agent.state` payload, checked field by field: `Err` names the field
/// at fault, so a malformed event is logged for what it is.
pub fn parse_agent_state(
    data: &serde_json::Value,
) -> Result<(AgentStateChanged, AgentStatus), Invalid> {
    let obj = data
        .as_object()
        .ok_or_else(|| invalid("data", "must be an object"))?;
    let text = |f: &str| -> Result<Option<&str>, Invalid> {
        match obj.get(f) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid(f, "must be a string")),
        }
    };
    let agent_id = text("agent_id")?.ok_or_else(|| invalid("agent_id", "is required"))?;
    if !name_ok(agent_id) {
        return Err(invalid("agent_id", "must be 1-64 of [A-Za-z0-9._-]"));
    }
    let state = text("state")?.ok_or_else(|| invalid("state", "is required"))?;
    let status = AgentStatus::parse(state).ok_or_else(|| {
        invalid(
            "state",
            "must be offline, available, reserved, on_call, wrap_up or paused",
        )
    })?;
    let at_ms = obj
        .get("at_ms")
        .ok_or_else(|| invalid("at_ms", "is required"))?
        .as_i64()
        .filter(|t| *t > 0)
        .ok_or_else(|| invalid("at_ms", "must be a positive integer (ms since epoch)"))?;
    let teams = match obj.get("teams") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => {
            if a.len() > MAX_AGENT_TEAMS {
                return Err(invalid("teams", format!("at most {MAX_AGENT_TEAMS}")));
            }
            a.iter()
                .map(|t| match t.as_str() {
                    Some(t) if name_ok(t) => Ok(t.to_owned()),
                    _ => Err(invalid("teams", "each must be 1-64 of [A-Za-z0-9._-]")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(invalid("teams", "must be an array of team names")),
    };
    let call_id = text("call_id")?;
    if call_id.is_some_and(|c| !name_ok(c)) {
        return Err(invalid("call_id", "must be 1-64 of [A-Za-z0-9._-]"));
    }
    let previous = text("previous")?.unwrap_or_default();
    let reason = text("reason")?.unwrap_or_default();
    let pause_code = text("pause_code")?;
    Ok((
        AgentStateChanged {
            agent_id: agent_id.to_owned(),
            previous: previous.to_owned(),
            state: state.to_owned(),
            pause_code: pause_code.map(str::to_owned),
            reason: reason.to_owned(),
            at_ms,
            teams,
            call_id: call_id.map(str::to_owned),
        },
        status,
    ))
}

/// Live-answered and abandoned calls of one window.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct AbandonCounts {
    /// Calls answered by a person (abandoned ones included, and those
    /// machine detection could not classify, `amd_unsure`).
    pub live: i64,
    /// Of those, calls no agent took in time.
    pub abandoned: i64,
    /// Calls machine detection classified as machines (`answered_machine`;
    /// not live).
    #[serde(default)]
    pub machine: i64,
    /// Of the live calls, those machine detection could not classify.
    #[serde(default)]
    pub amd_unsure: i64,
}

impl AbandonCounts {
    /// `abandoned / live` (0 without live calls).
    pub fn ratio(self) -> f64 {
        if self.live <= 0 {
            0.0
        } else {
            self.abandoned.max(0) as f64 / self.live as f64
        }
    }

    /// The sum of two windows.
    pub fn plus(self, o: AbandonCounts) -> AbandonCounts {
        AbandonCounts {
            live: self.live + o.live,
            abandoned: self.abandoned + o.abandoned,
            machine: self.machine + o.machine,
            amd_unsure: self.amd_unsure + o.amd_unsure,
        }
    }

    /// The abandon figures with machine detection's likely mistakes: a
    /// person classified as a machine is hung up on (or hears the machine
    /// message), which regulators count as an abandoned call. The ledger
    /// cannot know which machines were people, so it estimates them as
    /// `machine × false_machine_rate` (`DIALSTACK_AMD_FALSE_MACHINE_RATE`,
    /// the detector's measured share of people it calls machines) and
    /// counts them as live and abandoned. A report figure: the pacer keeps
    /// to [`AbandonCounts::ratio`], what the ledger knows.
    pub fn with_amd_estimate(self, false_machine_rate: f64) -> AmdEstimate {
        let estimated = self.machine.max(0) as f64 * false_machine_rate;
        let live = self.live.max(0) as f64 + estimated;
        let abandoned = self.abandoned.max(0) as f64 + estimated;
        AmdEstimate {
            estimated_abandoned_by_amd: estimated,
            abandon_rate_with_amd_pct: if live > 0.0 {
                abandoned / live * 100.0
            } else {
                0.0
            },
        }
    }
}

/// People machine detection likely took for machines, and the abandon
/// rate counting them ([`AbandonCounts::with_amd_estimate`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AmdEstimate {
    /// `machine × false_machine_rate`.
    pub estimated_abandoned_by_amd: f64,
    /// `(abandoned + estimate) / (live + estimate)` in percent (0 without
    /// calls).
    pub abandon_rate_with_amd_pct: f64,
}

/// Share of the cap at which dialing falls back to one call per agent.
pub const NEAR_CAP_SHARE: f64 = 0.8;

/// How close a campaign is to its abandon cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Throttle {
    /// Below 80 % of the cap in both windows: the pacer decides.
    Open,
    /// At 80 % of the cap or more in a window: at most one call per ready
    /// agent.
    NearCap,
    /// At the cap or above in a window: no new calls.
    AtCap,
}

impl Throttle {
    /// The throttle for ratios (fractions) of the calendar day and of 30
    /// days against `cap_pct` (percent).
    pub fn of(cap_pct: f64, today: f64, month: f64) -> Self {
        let cap = cap_pct / 100.0;
        let worst = today.max(month);
        if worst >= cap {
            Self::AtCap
        } else if worst >= cap * NEAR_CAP_SHARE {
            Self::NearCap
        } else {
            Self::Open
        }
    }

    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::NearCap => "near_cap",
            Self::AtCap => "at_cap",
        }
    }
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC calendar day (days since 1970-01-01) of `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian, UTC).
pub fn date_of_day(day: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn agent_states_name_the_field_at_fault() {
        let ok = json!({"agent_id": "ann", "previous": "offline", "state": "available",
            "reason": "login", "at_ms": 5, "teams": ["east"], "call_id": null});
        let (ev, st) = parse_agent_state(&ok).unwrap();
        assert_eq!(
            (ev.agent_id.as_str(), st, ev.teams.len()),
            ("ann", AgentStatus::Available, 1)
        );
        for (bad, field) in [
            (json!({"state": "available", "at_ms": 5}), "agent_id"),
            (
                json!({"agent_id": "a b", "state": "available", "at_ms": 5}),
                "agent_id",
            ),
            (
                json!({"agent_id": "ann", "state": "dancing", "at_ms": 5}),
                "state",
            ),
            (json!({"agent_id": "ann", "state": 3, "at_ms": 5}), "state"),
            (json!({"agent_id": "ann", "state": "available"}), "at_ms"),
            (
                json!({"agent_id": "ann", "state": "available", "at_ms": "x"}),
                "at_ms",
            ),
            (
                json!({"agent_id": "ann", "state": "available", "at_ms": 5, "teams": "east"}),
                "teams",
            ),
            (
                json!({"agent_id": "ann", "state": "available", "at_ms": 5, "teams": ["e st"]}),
                "teams",
            ),
            (
                json!({"agent_id": "ann", "state": "on_call", "at_ms": 5, "call_id": 7}),
                "call_id",
            ),
            (json!([1, 2]), "data"),
        ] {
            assert_eq!(parse_agent_state(&bad).unwrap_err().field, field, "{bad}");
        }
    }

    #[test]
    fn the_throttle_acts_before_the_cap() {
        assert_eq!(Throttle::of(3.0, 0.0, 0.0), Throttle::Open);
        assert_eq!(Throttle::of(3.0, 0.023, 0.0), Throttle::Open);
        assert_eq!(Throttle::of(3.0, 0.024, 0.0), Throttle::NearCap);
        assert_eq!(Throttle::of(3.0, 0.0, 0.025), Throttle::NearCap);
        assert_eq!(Throttle::of(3.0, 0.03, 0.0), Throttle::AtCap);
        assert_eq!(Throttle::of(1.0, 0.0, 0.5), Throttle::AtCap);
        let c = AbandonCounts {
            live: 3,
            abandoned: 1,
            ..Default::default()
        };
        assert!((c.ratio() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(AbandonCounts::default().ratio(), 0.0);
    }

    #[test]
    fn machines_add_an_estimate_of_people_hung_up_on() {
        let c = AbandonCounts {
            live: 98,
            abandoned: 1,
            machine: 100,
            amd_unsure: 4,
        };
        assert!((c.ratio() - 1.0 / 98.0).abs() < 1e-12, "the plain ratio");
        let e = c.with_amd_estimate(0.02);
        assert!((e.estimated_abandoned_by_amd - 2.0).abs() < 1e-9);
        assert!((e.abandon_rate_with_amd_pct - 3.0).abs() < 1e-9, "{e:?}");
        let none = AbandonCounts::default().with_amd_estimate(0.02);
        assert_eq!(none, AmdEstimate::default());
        let only_machines = AbandonCounts {
            machine: 50,
            ..Default::default()
        };
        let e = only_machines.with_amd_estimate(0.02);
        assert!((e.abandon_rate_with_amd_pct - 100.0).abs() < 1e-9);
        assert_eq!(
            only_machines
                .with_amd_estimate(0.0)
                .abandon_rate_with_amd_pct,
            0.0
        );
    }

    #[test]
    fn utc_days() {
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(date_of_day(day_of(951_782_400_000)), "2000-02-29");
        assert_eq!(date_of_day(day_of(1_735_689_599_999)), "2024-12-31");
        assert_eq!(date_of_day(day_of(1_735_689_600_000)), "2025-01-01");
        assert_eq!(day_of(-1), -1);
    }
}
