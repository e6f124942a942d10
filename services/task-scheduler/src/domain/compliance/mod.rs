//! Compliance: whether a lead may be dialed now, as one pure function, and
//! the retry policy that decides when it comes up again.
//!
//! A lead is dialable only if its campaign runs, the lead is due, its
//! number passes the destination guard and is on no do-not-call list, it
//! has attempts left (per lifetime, per 24 h, per number across campaigns
//! per 24 h, none within 72 h of an abandoned call) and the calling window
//! is open in every time zone the callee may be in.

mod retry;

use dialstack_dialrules::guard::DestinationGuard;
use dialstack_dialrules::hours::CallingHours;
use dialstack_dialrules::Zone;

pub use retry::{RetryPolicy, RetryRule, RETRIABLE};

use super::state::{CampaignState, LeadState};

/// One day (ms).
pub const DAY_MS: i64 = 86_400_000;
/// No redial of a number within this long after an abandoned call (Ofcom).
pub const ABANDON_HOLD_MS: i64 = 72 * 3_600_000;

/// A campaign's own rules.
#[derive(Debug, Clone, Copy)]
pub struct CampaignRules<'a> {
    /// Its state.
    pub state: CampaignState,
    /// Its calling window, in the callee's time.
    pub hours: &'a CallingHours,
    /// Most attempts per lead in all.
    pub max_attempts: Option<u32>,
    /// Most attempts per lead in any 24 h.
    pub max_attempts_per_day: Option<u32>,
}

/// The deployment's rules.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentRules<'a> {
    /// Allowed and denied destinations.
    pub guard: &'a DestinationGuard,
    /// Most attempts per number in any 24 h, across campaigns.
    pub number_daily_cap: Option<u32>,
}

/// What the dispatcher knows of a lead.
#[derive(Debug, Clone, Copy)]
pub struct LeadFacts<'a> {
    /// Its state.
    pub state: LeadState,
    /// When it is next due (ms).
    pub due_at: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// The number, E.164.
    pub phone: &'a str,
    /// The zones the callee may be in.
    pub zones: &'a [Zone],
}

/// What the database says about the number's recent past.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct History {
    /// On a live do-not-call entry (global or this campaign's).
    pub dnc: bool,
    /// This lead's attempts in the last 24 h, and the oldest of them (ms).
    pub lead_day: u32,
    /// See `lead_day`.
    pub lead_day_oldest: Option<i64>,
    /// The number's attempts in the last 24 h across campaigns, and the oldest.
    pub number_day: u32,
    /// See `number_day`.
    pub number_day_oldest: Option<i64>,
    /// The number's latest abandoned call (ms), any campaign.
    pub abandoned_at: Option<i64>,
}

/// Why a lead is not dialed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The campaign is not running.
    NotRunning,
    /// The lead is not pending.
    NotPending,
    /// Not due yet.
    NotDue,
    /// Outside the calling window in one of its zones.
    OutsideHours,
    /// The lead's per-24 h cap is reached.
    LeadDailyCap,
    /// The number's per-24 h cap across campaigns is reached.
    NumberDailyCap,
    /// An abandoned call to this number less than 72 h ago.
    RecentlyAbandoned,
    /// On a do-not-call list.
    DoNotCall,
    /// Refused by the destination guard.
    Blocked(String),
    /// No attempt left.
    Exhausted,
}

impl Why {
    /// A short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Why::NotRunning => "not_running",
            Why::NotPending => "not_pending",
            Why::NotDue => "not_due",
            Why::OutsideHours => "outside_hours",
            Why::LeadDailyCap => "lead_daily_cap",
            Why::NumberDailyCap => "number_daily_cap",
            Why::RecentlyAbandoned => "recently_abandoned",
            Why::DoNotCall => "dnc",
            Why::Blocked(_) => "blocked",
            Why::Exhausted => "exhausted",
        }
    }
}

/// The verdict on one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Dial it now.
    Dial,
    /// Not now; it comes up again at `until` (ms).
    Wait {
        /// The earliest time it may be dialable.
        until: i64,
        /// Why not now.
        why: Why,
    },
    /// Never: the lead ends in `state`.
    Close {
        /// Its final state.
        state: LeadState,
        /// Why.
        why: Why,
    },
    /// Nothing to decide (campaign not running, lead not pending).
    Skip(Why),
}

/// Whether `lead` may be dialed at `now` (ms since the epoch).
pub fn eligibility(
    now: i64,
    lead: &LeadFacts<'_>,
    history: &History,
    campaign: &CampaignRules<'_>,
    deployment: &DeploymentRules<'_>,
) -> Verdict {
    if campaign.state != CampaignState::Running {
        return Verdict::Skip(Why::NotRunning);
    }
    if lead.state != LeadState::Pending {
        return Verdict::Skip(Why::NotPending);
    }
    if lead.due_at > now {
        return Verdict::Wait {
            until: lead.due_at,
            why: Why::NotDue,
        };
    }
    if let Err(reason) = deployment.guard.check(lead.phone) {
        return Verdict::Close {
            state: LeadState::Blocked,
            why: Why::Blocked(reason),
        };
    }
    if history.dnc {
        return Verdict::Close {
            state: LeadState::Dnc,
            why: Why::DoNotCall,
        };
    }
    if campaign.max_attempts.is_some_and(|m| lead.attempts >= m) {
        return Verdict::Close {
            state: LeadState::Done,
            why: Why::Exhausted,
        };
    }
    let mut until = now;
    let mut why = None;
    let mut hold = |at: i64, w: Why| {
        if at > until {
            until = at;
            why = Some(w);
        }
    };
    if let Some(at) = history.abandoned_at {
        hold(at + ABANDON_HOLD_MS, Why::RecentlyAbandoned);
    }
    if campaign
        .max_attempts_per_day
        .is_some_and(|m| history.lead_day >= m)
    {
        hold(
            history.lead_day_oldest.unwrap_or(now) + DAY_MS,
            Why::LeadDailyCap,
        );
    }
    if deployment
        .number_daily_cap
        .is_some_and(|m| history.number_day >= m)
    {
        hold(
            history.number_day_oldest.unwrap_or(now) + DAY_MS,
            Why::NumberDailyCap,
        );
    }
    if let Some(why) = why {
        return Verdict::Wait { until, why };
    }
    if !campaign.hours.open_in_all(lead.zones, now) {
        let until = campaign
            .hours
            .next_open(lead.zones, now)
            .unwrap_or(now + DAY_MS);
        return Verdict::Wait {
            until: until.max(now + 1_000),
            why: Why::OutsideHours,
        };
    }
    Verdict::Dial
}

#[cfg(test)]
mod tests;
