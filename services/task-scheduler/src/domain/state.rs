//! The life of campaigns, leads and attempts, each as one transition table.
//!
//! The repository never writes a state by hand: every conditional `UPDATE`
//! takes its `WHERE state IN (...)` from [`CampaignState::sources`],
//! [`AttemptState::sources`] or [`LeadState::sources`], so the SQL and the
//! table cannot drift apart.

use serde::{Deserialize, Serialize};

macro_rules! states {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every state.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }

            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

states! {
    /// Where a campaign is in its life.
    CampaignState {
        /// Being set up: leads may be imported, nothing is dialed.
        Draft = "draft",
        /// Dialing.
        Running = "running",
        /// Not dialing; calls in flight finish; resumable.
        Paused = "paused",
        /// Ended by a user: pending leads were canceled, calls in flight finish.
        Stopped = "stopped",
        /// Every lead reached its end.
        Completed = "completed",
    }
}

/// What a user or the dispatcher does to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CampaignAction {
    /// `POST /start`.
    Start,
    /// `POST /pause`.
    Pause,
    /// `POST /resume`.
    Resume,
    /// `POST /stop`.
    Stop,
    /// The dispatcher found nothing left to dial.
    Complete,
}

impl CampaignAction {
    /// The verb, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Stop => "stop",
            Self::Complete => "complete",
        }
    }
}

use CampaignAction as CA;
use CampaignState as CS;

/// Every allowed campaign transition; anything else is refused (409).
pub const CAMPAIGN_TRANSITIONS: &[(CampaignState, CampaignAction, CampaignState)] = &[
    (CS::Draft, CA::Start, CS::Running),
    (CS::Running, CA::Pause, CS::Paused),
    (CS::Paused, CA::Resume, CS::Running),
    (CS::Draft, CA::Stop, CS::Stopped),
    (CS::Running, CA::Stop, CS::Stopped),
    (CS::Paused, CA::Stop, CS::Stopped),
    (CS::Running, CA::Complete, CS::Completed),
];

impl CampaignState {
    /// Where `action` leads from `self`, or `None` when it is refused.
    pub fn apply(self, action: CampaignAction) -> Option<CampaignState> {
        CAMPAIGN_TRANSITIONS
            .iter()
            .find(|(from, a, _)| *from == self && *a == action)
            .map(|(_, _, to)| *to)
    }

    /// The states `action` may start from.
    pub fn sources(action: CampaignAction) -> Vec<CampaignState> {
        CAMPAIGN_TRANSITIONS
            .iter()
            .filter(|(_, a, _)| *a == action)
            .map(|(from, _, _)| *from)
            .collect()
    }

    /// Settings may change (not once stopped or completed).
    pub fn editable(self) -> bool {
        matches!(self, CS::Draft | CS::Running | CS::Paused)
    }

    /// Leads may be added.
    pub fn accepts_leads(self) -> bool {
        self.editable()
    }

    /// The campaign may be deleted (never while it runs).
    pub fn deletable(self) -> bool {
        self != CS::Running
    }
}

states! {
    /// Where one attempt (one call) is.
    AttemptState {
        /// Its `dial` command is in the outbox or on the bus.
        Queued = "queued",
        /// A media processor holds the lease.
        Claimed = "claimed",
        /// The INVITE is out.
        Dialing = "dialing",
        /// Over, with an outcome.
        Completed = "completed",
    }
}

/// What happens to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptEvent {
    /// A media processor claims it.
    Claim,
    /// `call.dialing` arrived.
    Dialing,
    /// `call.completed` arrived.
    Complete,
    /// A hang-up or a stop before any media processor took it.
    Cancel,
    /// Its lease ran out (claimed or dialing).
    LeaseExpired,
    /// Its dial command went unclaimed too long.
    QueueTimeout,
}

use AttemptEvent as AE;
use AttemptState as AS;

/// Every allowed attempt transition.
pub const ATTEMPT_TRANSITIONS: &[(AttemptState, AttemptEvent, AttemptState)] = &[
    (AS::Queued, AE::Claim, AS::Claimed),
    (AS::Queued, AE::Dialing, AS::Dialing),
    (AS::Claimed, AE::Dialing, AS::Dialing),
    (AS::Queued, AE::Complete, AS::Completed),
    (AS::Claimed, AE::Complete, AS::Completed),
    (AS::Dialing, AE::Complete, AS::Completed),
    (AS::Queued, AE::Cancel, AS::Completed),
    (AS::Claimed, AE::LeaseExpired, AS::Completed),
    (AS::Dialing, AE::LeaseExpired, AS::Completed),
    (AS::Queued, AE::QueueTimeout, AS::Completed),
];

impl AttemptState {
    /// Where `event` leads from `self`.
    pub fn apply(self, event: AttemptEvent) -> Option<AttemptState> {
        ATTEMPT_TRANSITIONS
            .iter()
            .find(|(from, e, _)| *from == self && *e == event)
            .map(|(_, _, to)| *to)
    }

    /// The states `event` may start from.
    pub fn sources(event: AttemptEvent) -> Vec<AttemptState> {
        ATTEMPT_TRANSITIONS
            .iter()
            .filter(|(_, e, _)| *e == event)
            .map(|(from, _, _)| *from)
            .collect()
    }

    /// Counts against `max_concurrent`.
    pub fn in_flight(self) -> bool {
        matches!(self, AS::Queued | AS::Claimed | AS::Dialing)
    }
}

states! {
    /// Where a lead is.
    LeadState {
        /// Waiting for its `due_at` (first dial, retry or callback).
        Pending = "pending",
        /// An attempt is open.
        Dialing = "dialing",
        /// Reached its end: answered, or no retry left.
        Done = "done",
        /// The campaign was stopped before it was dialed.
        Canceled = "canceled",
        /// On a do-not-call list when it came up for dialing.
        Dnc = "dnc",
        /// Refused by the destination guard when it came up for dialing.
        Blocked = "blocked",
    }
}

/// What happens to a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeadEvent {
    /// The dispatcher opened an attempt.
    Dispatch,
    /// Its attempt ended and the retry policy allows another.
    Retry,
    /// Its attempt ended for good.
    Finish,
    /// The campaign stopped.
    Cancel,
    /// Found on a DNC list at dial time.
    DoNotCall,
    /// Refused by the destination guard at dial time.
    Block,
    /// No attempt left under the caps.
    Exhaust,
    /// A callback was booked (or canceled).
    Reschedule,
}

use LeadEvent as LE;
use LeadState as LS;

/// Every allowed lead transition.
pub const LEAD_TRANSITIONS: &[(LeadState, LeadEvent, LeadState)] = &[
    (LS::Pending, LE::Dispatch, LS::Dialing),
    (LS::Dialing, LE::Retry, LS::Pending),
    (LS::Dialing, LE::Finish, LS::Done),
    (LS::Pending, LE::Cancel, LS::Canceled),
    (LS::Pending, LE::DoNotCall, LS::Dnc),
    (LS::Pending, LE::Block, LS::Blocked),
    (LS::Pending, LE::Exhaust, LS::Done),
    (LS::Pending, LE::Reschedule, LS::Pending),
    (LS::Done, LE::Reschedule, LS::Pending),
];

impl LeadState {
    /// Where `event` leads from `self`.
    pub fn apply(self, event: LeadEvent) -> Option<LeadState> {
        LEAD_TRANSITIONS
            .iter()
            .find(|(from, e, _)| *from == self && *e == event)
            .map(|(_, _, to)| *to)
    }

    /// The states `event` may start from.
    pub fn sources(event: LeadEvent) -> Vec<LeadState> {
        LEAD_TRANSITIONS
            .iter()
            .filter(|(_, e, _)| *e == event)
            .map(|(from, _, _)| *from)
            .collect()
    }

    /// The lead still needs dialing (keeps its campaign from completing).
    pub fn open(self) -> bool {
        matches!(self, LS::Pending | LS::Dialing)
    }
}

/// ` AND col IN ('a', 'b')` for states (their names are fixed literals, so
/// they are inlined rather than bound).
pub fn sql_in<T: Copy>(col: &str, states: &[T], name: impl Fn(T) -> &'static str) -> String {
    let names: Vec<String> = states.iter().map(|s| format!("'{}'", name(*s))).collect();
    if names.is_empty() {
        " AND 1 = 0".to_owned()
    } else {
        format!(" AND {col} IN ({})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_lifecycle_follows_the_table() {
        let mut s = CS::Draft;
        for (a, want) in [
            (CA::Start, CS::Running),
            (CA::Pause, CS::Paused),
            (CA::Resume, CS::Running),
            (CA::Stop, CS::Stopped),
        ] {
            s = s.apply(a).unwrap();
            assert_eq!(s, want);
        }
        // Refusals: every pair not in the table.
        let mut allowed = 0;
        for from in CS::ALL {
            for a in [CA::Start, CA::Pause, CA::Resume, CA::Stop, CA::Complete] {
                let in_table = CAMPAIGN_TRANSITIONS
                    .iter()
                    .any(|(f, x, _)| f == from && *x == a);
                assert_eq!(from.apply(a).is_some(), in_table, "{from} {a:?}");
                allowed += usize::from(in_table);
            }
        }
        assert_eq!(allowed, CAMPAIGN_TRANSITIONS.len());
        assert_eq!(CS::Completed.apply(CA::Start), None);
        assert_eq!(CS::Stopped.apply(CA::Resume), None);
        assert_eq!(CS::Draft.apply(CA::Pause), None);
        assert_eq!(CS::Running.apply(CA::Start), None);
        assert!(!CS::Running.deletable());
        assert!(CS::Stopped.deletable() && CS::Draft.deletable());
        assert!(!CS::Completed.editable() && !CS::Stopped.accepts_leads());
        assert_eq!(
            CS::sources(CA::Stop),
            vec![CS::Draft, CS::Running, CS::Paused]
        );
    }

    #[test]
    fn attempts_only_move_forward() {
        for from in AS::ALL {
            for e in [
                AE::Claim,
                AE::Dialing,
                AE::Complete,
                AE::Cancel,
                AE::LeaseExpired,
                AE::QueueTimeout,
            ] {
                if let Some(to) = from.apply(e) {
                    let rank = |s: AS| AS::ALL.iter().position(|x| *x == s).unwrap();
                    assert!(rank(to) > rank(*from), "{from} -{e:?}-> {to}");
                }
            }
        }
        assert_eq!(
            AS::Completed.apply(AE::Complete),
            None,
            "completed is final"
        );
        assert_eq!(AS::Dialing.apply(AE::Claim), None);
        assert_eq!(
            AS::Claimed.apply(AE::Cancel),
            None,
            "a claimed call is hung up, not canceled"
        );
        assert_eq!(
            AS::sources(AE::Complete),
            vec![AS::Queued, AS::Claimed, AS::Dialing]
        );
        assert!(AS::Queued.in_flight() && !AS::Completed.in_flight());
    }

    #[test]
    fn leads_close_only_from_the_right_states() {
        assert_eq!(LS::Pending.apply(LE::Dispatch), Some(LS::Dialing));
        assert_eq!(LS::Dialing.apply(LE::Retry), Some(LS::Pending));
        assert_eq!(
            LS::Dialing.apply(LE::Cancel),
            None,
            "a call in flight finishes"
        );
        assert_eq!(LS::Dnc.apply(LE::Dispatch), None, "DNC is final");
        assert_eq!(LS::Canceled.apply(LE::Reschedule), None);
        assert_eq!(
            LS::Done.apply(LE::Reschedule),
            Some(LS::Pending),
            "a callback reopens"
        );
        assert!(LS::Pending.open() && !LS::Done.open());
        for s in LS::ALL {
            assert_eq!(LS::parse(s.as_str()), Some(*s));
        }
    }

    #[test]
    fn sql_conditions_come_from_the_table() {
        assert_eq!(
            sql_in("state", &AS::sources(AE::Dialing), AS::as_str),
            " AND state IN ('queued', 'claimed')"
        );
        assert_eq!(sql_in::<AS>("state", &[], AS::as_str), " AND 1 = 0");
    }
}
