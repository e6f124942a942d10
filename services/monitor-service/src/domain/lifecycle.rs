//! An alert's life, as Alertmanager and Prometheus run it: a condition that
//! starts to hold makes a *pending* alert; held for the rule's `for`, it
//! *fires*; when it stops holding, a firing alert is *resolved* (a pending
//! one just goes away). Each transition to firing or resolved is notified
//! once; a firing alert is notified again every repeat interval.

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    /// The condition holds, not yet for the rule's `for`.
    Pending,
    /// The condition has held for `for`; notified.
    Firing,
    /// It fired and stopped holding; notified. Kept as history.
    Resolved,
}

impl AlertState {
    /// Every state.
    pub const ALL: &'static [AlertState] = &[Self::Pending, Self::Firing, Self::Resolved];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    /// The transitions an alert may make. A pending alert whose condition
    /// stops holding is dropped, not resolved: nobody was told about it.
    pub fn can_become(self, next: AlertState) -> bool {
        matches!(
            (self, next),
            (Self::Pending, Self::Firing) | (Self::Firing, Self::Resolved)
        )
    }
}

/// What is known of an open (pending or firing) alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// Pending or firing.
    pub state: AlertState,
    /// When the condition started to hold (ms).
    pub started_at: i64,
    /// When it was last notified (ms), if it was.
    pub last_notified_at: Option<i64>,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// It started firing.
    Fired,
    /// Still firing, repeat interval over.
    Repeat,
    /// It was firing and stopped.
    Resolved,
}

impl Notice {
    /// The name in notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fired => "firing",
            Self::Repeat => "repeat",
            Self::Resolved => "resolved",
        }
    }
}

/// What to do with an alert after one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes (apart from the value shown).
    Keep,
    /// Open a new pending alert.
    OpenPending,
    /// Open a new alert that fires at once (`for` is 0) and notify.
    OpenFiring,
    /// The pending alert fires; notify.
    Fire,
    /// The firing alert is notified again.
    Repeat,
    /// The firing alert is resolved; notify.
    Resolve,
    /// The pending alert goes away unnotified.
    Drop,
}

impl Step {
    /// The notification this step sends, if any.
    pub fn notice(self) -> Option<Notice> {
        match self {
            Self::OpenFiring | Self::Fire => Some(Notice::Fired),
            Self::Repeat => Some(Notice::Repeat),
            Self::Resolve => Some(Notice::Resolved),
            Self::Keep | Self::OpenPending | Self::Drop => None,
        }
    }
}

/// The next step for an alert that is `open` (or not), given whether the
/// condition `holds` at `now`, the rule's `for` and repeat interval (ms).
pub fn step(open: Option<Open>, holds: bool, now: i64, for_ms: i64, repeat_ms: i64) -> Step {
    match (open, holds) {
        (None, false) => Step::Keep,
        (None, true) if for_ms <= 0 => Step::OpenFiring,
        (None, true) => Step::OpenPending,
        (Some(o), true) => match o.state {
            AlertState::Pending if now - o.started_at >= for_ms => Step::Fire,
            AlertState::Firing if o.last_notified_at.is_none_or(|t| now - t >= repeat_ms) => {
                Step::Repeat
            }
            _ => Step::Keep,
        },
        (Some(o), false) => match o.state {
            AlertState::Pending => Step::Drop,
            AlertState::Firing => Step::Resolve,
            AlertState::Resolved => Step::Keep,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_over_every_pair() {
        for a in AlertState::ALL {
            assert_eq!(AlertState::parse(a.as_str()), Some(*a));
            for b in AlertState::ALL {
                let allowed = matches!(
                    (a, b),
                    (AlertState::Pending, AlertState::Firing)
                        | (AlertState::Firing, AlertState::Resolved)
                );
                assert_eq!(a.can_become(*b), allowed, "{a:?} -> {b:?}");
            }
        }
        assert_eq!(AlertState::parse("inactive"), None);
    }

    #[test]
    fn pending_fires_after_for_and_resolves_once() {
        let pending = Open {
            state: AlertState::Pending,
            started_at: 1_000,
            last_notified_at: None,
        };
        assert_eq!(step(None, false, 0, 60_000, 1), Step::Keep);
        assert_eq!(step(None, true, 0, 60_000, 1), Step::OpenPending);
        assert_eq!(step(None, true, 0, 0, 1), Step::OpenFiring);
        assert_eq!(step(Some(pending), true, 60_999, 60_000, 1), Step::Keep);
        assert_eq!(step(Some(pending), true, 61_000, 60_000, 1), Step::Fire);
        assert_eq!(step(Some(pending), false, 61_000, 60_000, 1), Step::Drop);
        let firing = Open {
            state: AlertState::Firing,
            started_at: 1_000,
            last_notified_at: Some(61_000),
        };
        assert_eq!(
            step(Some(firing), true, 100_000, 60_000, 3_600_000),
            Step::Keep
        );
        assert_eq!(
            step(Some(firing), true, 3_661_000, 60_000, 3_600_000),
            Step::Repeat
        );
        assert_eq!(step(Some(firing), false, 100_000, 60_000, 1), Step::Resolve);
        assert_eq!(Step::Resolve.notice(), Some(Notice::Resolved));
        assert_eq!(Step::Drop.notice(), None);
        assert_eq!(Step::OpenFiring.notice(), Some(Notice::Fired));
    }
}
