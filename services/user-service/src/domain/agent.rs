//! Agent states: the transition table, who may ask for which move, what a
//! call needs of the agent it reserves, and the wrap-up timeout.

use std::collections::BTreeMap;

/// Where an agent is, as the dialer sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Not logged in, or gone (no heartbeat).
    Offline,
    /// Waiting for a call.
    Available,
    /// A call is being routed to them.
    Reserved,
    /// Talking.
    OnCall,
    /// After-call work.
    WrapUp,
    /// Away, with a pause code.
    Paused,
}

impl AgentState {
    /// Every state, in a stable order.
    pub const ALL: [AgentState; 6] = [
        Self::Offline,
        Self::Available,
        Self::Reserved,
        Self::OnCall,
        Self::WrapUp,
        Self::Paused,
    ];

    /// The snake_case name.
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

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the state machine has the move `self → to`; who may ask for
    /// it is [`AgentState::may_request`]. Going offline for lack of
    /// heartbeats is the system's doing and is always allowed (see
    /// [`AgentState::can_time_out`]), and so is a lapsed reservation going
    /// back to `available`.
    pub fn can_become(self, to: AgentState) -> bool {
        use AgentState::*;
        matches!(
            (self, to),
            (Offline, Available)
                | (Available, Reserved | Paused | Offline)
                | (Reserved, OnCall | Available)
                | (OnCall, WrapUp)
                | (WrapUp, Available | Paused | Offline)
                | (Paused, Available | Offline)
        )
    }

    /// Whether a missing heartbeat takes the agent offline from here.
    pub fn can_time_out(self) -> bool {
        self != AgentState::Offline
    }

    /// Whether the agent is busy with one call in this state, whose id it
    /// then carries.
    pub fn holds_call(self) -> bool {
        matches!(self, Self::Reserved | Self::OnCall | Self::WrapUp)
    }

    /// Whether `self → to` is a step of a call, taken for that call by the
    /// dialer: the agent answered (`reserved → on_call`), the call ended
    /// (`on_call → wrap_up`), or the reservation is given back unused
    /// (`reserved → available`).
    pub fn is_call_step(self, to: AgentState) -> bool {
        use AgentState::*;
        matches!(
            (self, to),
            (Reserved, OnCall) | (Reserved, Available) | (OnCall, WrapUp)
        )
    }

    /// Whether `who` may ask for `self → to` (a move of the table). Nobody
    /// asks for `reserved`: only a reservation sets it, which picks the agent
    /// and moves it in one conditional update. Call steps are the dialer's;
    /// admins and supervisors may also give back a reservation or end a call
    /// (to free an agent whose dialer was lost), never connect one; agents
    /// take none of them. Every other move is open to all.
    pub fn may_request(self, to: AgentState, who: Requester) -> bool {
        if to == Self::Reserved {
            return false;
        }
        if self.is_call_step(to) {
            return match who {
                Requester::Service => true,
                Requester::Manager => to != Self::OnCall,
                Requester::Agent => false,
            };
        }
        true
    }
}

/// Who asks for an agent's state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// The agent itself.
    Agent,
    /// An admin, or a supervisor of one of the agent's teams.
    Manager,
    /// A service account: the dialer driving the call.
    Service,
}

/// What becomes of a requested state change, in the order it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// Not a move of the state machine (409 with the current state).
    NotInTable,
    /// A move of the table that this requester may not ask for (403).
    Forbidden,
    /// A call step asked for by the dialer without naming the call (400).
    CallRequired,
    /// The call named is not the agent's (409): a late message about an
    /// earlier call, e.g. a release after the reservation lapsed and the
    /// agent was reserved again.
    WrongCall,
}

/// Judges a request by `who` to move an agent from `from`, busy with the
/// call `held`, to `to`, naming the call `named` (optional but for the
/// dialer's call steps; when named, it must be the agent's).
pub fn judge(
    from: AgentState,
    to: AgentState,
    who: Requester,
    held: Option<&str>,
    named: Option<&str>,
) -> Verdict {
    if !from.can_become(to) {
        Verdict::NotInTable
    } else if !from.may_request(to, who) {
        Verdict::Forbidden
    } else {
        match named {
            None if who == Requester::Service && from.is_call_step(to) => Verdict::CallRequired,
            Some(call) if held != Some(call) => Verdict::WrongCall,
            _ => Verdict::Allowed,
        }
    }
}

/// What a call needs of the agent it reserves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentNeeds {
    /// A member of this team (`None`: any team).
    pub team: Option<String>,
    /// These skills, each at this level or above.
    pub skills: BTreeMap<String, u8>,
    /// Not these agents (already tried for the call).
    pub exclude: Vec<String>,
    /// Exactly this agent (preview dialing: the agent asked for the lead).
    pub agent_id: Option<String>,
}

impl AgentNeeds {
    /// Whether agent `id`, in `teams` with `skills`, fits.
    pub fn fits(&self, id: &str, teams: &[String], skills: &BTreeMap<String, u8>) -> bool {
        self.agent_id.as_deref().is_none_or(|a| a == id)
            && !self.exclude.iter().any(|e| e == id)
            && self.team.as_ref().is_none_or(|t| teams.contains(t))
            && self
                .skills
                .iter()
                .all(|(k, min)| skills.get(k).is_some_and(|level| level >= min))
    }
}

/// Whether an agent in `wrap_up` since `since_ms` is due to leave it at
/// `now_ms`: the shortest timeout among its teams that set one applies; with
/// none, only the agent ends its wrap-up.
pub fn wrap_up_due(
    teams: &[String],
    timeouts_secs: &std::collections::HashMap<String, i64>,
    since_ms: i64,
    now_ms: i64,
) -> bool {
    teams
        .iter()
        .filter_map(|t| timeouts_secs.get(t))
        .min()
        .is_some_and(|secs| now_ms - since_ms >= secs * 1000)
}

#[cfg(test)]
mod agent_tests {
    use super::AgentState::{self, *};

    #[test]
    fn the_transition_table() {
        let allowed = [
            (Offline, Available),
            (Available, Reserved),
            (Available, Paused),
            (Available, Offline),
            (Reserved, OnCall),
            (Reserved, Available),
            (OnCall, WrapUp),
            (WrapUp, Available),
            (WrapUp, Paused),
            (WrapUp, Offline),
            (Paused, Available),
            (Paused, Offline),
        ];
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            assert_eq!(AgentState::parse(from.as_str()), Some(from));
        }
        assert!(!Offline.can_time_out() && OnCall.can_time_out());
    }

    #[test]
    fn who_may_ask_for_which_move() {
        use super::{judge, Requester, Verdict};
        let call_steps = [(Reserved, OnCall), (Reserved, Available), (OnCall, WrapUp)];
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                let step = call_steps.contains(&(from, to));
                assert_eq!(from.is_call_step(to), step, "{from:?} -> {to:?}");
                for who in [Requester::Agent, Requester::Manager, Requester::Service] {
                    let expected = to != Reserved
                        && match who {
                            Requester::Agent => !step,
                            Requester::Manager => !step || to != OnCall,
                            Requester::Service => true,
                        };
                    assert_eq!(
                        from.may_request(to, who),
                        expected,
                        "{who:?}: {from:?} -> {to:?}"
                    );
                    let verdict = judge(from, to, who, None, None);
                    let expected = if !from.can_become(to) {
                        Verdict::NotInTable
                    } else if !expected {
                        Verdict::Forbidden
                    } else if step && who == Requester::Service {
                        Verdict::CallRequired
                    } else {
                        Verdict::Allowed
                    };
                    assert_eq!(verdict, expected, "{who:?}: {from:?} -> {to:?}");
                }
            }
            assert_eq!(
                from.holds_call(),
                matches!(from, Reserved | OnCall | WrapUp),
                "{from:?}"
            );
        }
    }

    #[test]
    fn a_named_call_must_be_the_agents() {
        use super::{judge, Requester::*, Verdict};
        let c1 = Some("call-1");
        assert_eq!(judge(Reserved, OnCall, Service, c1, c1), Verdict::Allowed);
        assert_eq!(
            judge(Reserved, OnCall, Service, c1, Some("call-0")),
            Verdict::WrongCall
        );
        assert_eq!(
            judge(Reserved, Available, Service, c1, Some("call-0")),
            Verdict::WrongCall,
            "a stale release"
        );
        assert_eq!(judge(OnCall, WrapUp, Service, c1, c1), Verdict::Allowed);
        // Other moves need no call; one named must still be the agent's.
        assert_eq!(
            judge(WrapUp, Available, Service, c1, None),
            Verdict::Allowed
        );
        assert_eq!(judge(WrapUp, Available, Agent, c1, c1), Verdict::Allowed);
        assert_eq!(
            judge(Available, Paused, Service, None, c1),
            Verdict::WrongCall
        );
        assert_eq!(
            judge(Reserved, Available, Manager, c1, None),
            Verdict::Allowed
        );
        assert_eq!(judge(Reserved, OnCall, Agent, c1, c1), Verdict::Forbidden);
        assert_eq!(
            judge(Available, OnCall, Agent, None, None),
            Verdict::NotInTable
        );
    }

    #[test]
    fn needs_are_team_skill_levels_exclusions_and_the_one_agent() {
        use super::AgentNeeds;
        let teams = vec!["east".to_owned(), "vip".to_owned()];
        let skills: std::collections::BTreeMap<String, u8> =
            [("spanish".to_owned(), 5), ("billing".to_owned(), 2)].into();
        let needs = |team: Option<&str>, want: &[(&str, u8)]| AgentNeeds {
            team: team.map(str::to_owned),
            skills: want.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        };
        assert!(AgentNeeds::default().fits("a", &[], &Default::default()));
        assert!(needs(Some("east"), &[("spanish", 5)]).fits("a", &teams, &skills));
        assert!(needs(None, &[("spanish", 1), ("billing", 2)]).fits("a", &teams, &skills));
        assert!(!needs(Some("west"), &[]).fits("a", &teams, &skills));
        assert!(!needs(None, &[("spanish", 6)]).fits("a", &teams, &skills));
        assert!(!needs(None, &[("french", 1)]).fits("a", &teams, &skills));
        let tried = AgentNeeds {
            exclude: vec!["a".into()],
            ..Default::default()
        };
        assert!(!tried.fits("a", &teams, &skills) && tried.fits("b", &teams, &skills));
        let preview = AgentNeeds {
            agent_id: Some("b".into()),
            ..Default::default()
        };
        assert!(!preview.fits("a", &teams, &skills) && preview.fits("b", &teams, &skills));
    }

    #[test]
    fn wrap_up_ends_at_the_shortest_team_timeout() {
        use super::wrap_up_due;
        let limits: std::collections::HashMap<String, i64> =
            [("sales".to_owned(), 30), ("vip".to_owned(), 10)].into();
        let teams = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!wrap_up_due(&teams(&["sales"]), &limits, 0, 29_999));
        assert!(wrap_up_due(&teams(&["sales"]), &limits, 0, 30_000));
        assert!(wrap_up_due(&teams(&["sales", "vip"]), &limits, 0, 10_000));
        assert!(!wrap_up_due(&teams(&["support"]), &limits, 0, 1_000_000));
        assert!(!wrap_up_due(&[], &limits, 0, 1_000_000));
    }
}
