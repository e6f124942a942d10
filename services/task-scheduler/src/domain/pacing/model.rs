//! What a dial pacer sees and says: the interface between the dispatcher
//! (or the simulator) and the pacing models. No I/O.
//!
//! # Wiring it into the dispatcher
//!
//! Keep one pacer per campaign with agents (`Box<dyn DialPacer>`, made by
//! [`super::Predictive::new`] for `predictive`, [`Progressive::new`] with the
//! campaign's `dial_ratio` for `progressive`) across dispatcher rounds, and
//! drop it when the campaign stops running. Then:
//!
//! 1. Every round (the dispatcher's cycle, ≤ 500 ms), build a
//!    [`PacingSnapshot`] for the campaign and call
//!    [`DialPacer::calls_to_place`]. The answer is the number of *new* calls
//!    the pacer wants started now, already net of the calls in progress and
//!    bounded by [`MAX_CALLS_PER_CYCLE`]; the dispatcher still applies its
//!    own limits on top (rate, `max_concurrent`, leads available, the
//!    deployment's fair share). Starting fewer than asked is fine: the next
//!    snapshot shows what was really started.
//! 2. Report what happened to calls and agents with
//!    [`DialPacer::observe`], as it happens, in any order between rounds:
//!    - `call.answered` (a person) → [`PacingEvent::RingEnded`] with
//!      `answered: true`; `call.completed` of a call never answered (no
//!      answer, busy, rejected, failed, machine) →
//!      [`PacingEvent::RingEnded`] with `answered: false`;
//!    - an answered call bridged to an agent → [`PacingEvent::Connected`];
//!      one that got the recorded message instead → [`PacingEvent::Abandoned`];
//!    - `call.completed` of a bridged call → [`PacingEvent::TalkEnded`];
//!    - the agent leaving wrap-up (`agent.state` from `wrap_up`) →
//!      [`PacingEvent::WrapEnded`].
//!
//!    Missing observations make a pacer less informed (it stays closer to
//!    progressive), never unsafe: the abandon counts in the snapshot are
//!    what keeps it under the cap.
//!
//! Times are milliseconds on one clock of the caller's choosing
//! (`now_ms`, `since_ms`, `at_ms` must agree); the wall clock of the
//! campaign is passed separately as `clock_hhmm` because VICIdial's
//! TAPERED drop rule works on it.

/// The most calls any pacer asks for in one cycle, whatever the inputs.
pub const MAX_CALLS_PER_CYCLE: u32 = 1_000;

/// What a busy agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyState {
    /// On a call.
    Talking,
    /// After-call work: the call has ended, the agent is not ready yet.
    WrapUp,
}

/// One agent on a call or in wrap-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyAgent {
    /// Talking or in wrap-up.
    pub state: BusyState,
    /// When the agent entered `state` (ms).
    pub since_ms: u64,
}

/// The campaign's abandon counts as the dispatcher reads them from its
/// ledger. `live` counts every call answered by a person, the abandoned
/// ones included: the ratio is `abandoned / live`, as regulators count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbandonStats {
    /// Live calls since the campaign's local midnight (Ofcom's day).
    pub live_today: u64,
    /// Abandoned calls since the campaign's local midnight.
    pub abandoned_today: u64,
    /// Live calls over the last 30 days, today included (FTC/FCC window).
    pub live_30d: u64,
    /// Abandoned calls over the last 30 days, today included.
    pub abandoned_30d: u64,
}

impl AbandonStats {
    /// Today's abandon ratio in percent (0 before the first live call).
    pub fn today_pct(&self) -> f64 {
        pct(self.abandoned_today, self.live_today)
    }

    /// The 30-day abandon ratio in percent (0 before the first live call).
    pub fn rolling_pct(&self) -> f64 {
        pct(self.abandoned_30d, self.live_30d)
    }

    /// How many more abandoned calls each window can take before it is
    /// over `cap_pct`: the smaller of the two, possibly negative.
    pub fn headroom(&self, cap_pct: f64) -> f64 {
        let cap = cap_pct / 100.0;
        let day = cap * self.live_today as f64 - self.abandoned_today as f64;
        let month = cap * self.live_30d as f64 - self.abandoned_30d as f64;
        day.min(month)
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The state of one campaign at one dispatcher cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PacingSnapshot {
    /// Now (ms).
    pub now_ms: u64,
    /// The campaign's local wall clock as HHMM (`930` is 09:30); only
    /// VICIdial's TAPERED drop rule reads it.
    pub clock_hhmm: u16,
    /// Agents logged in to the campaign, paused ones included.
    pub agents_logged_in: u32,
    /// Agents ready for a call now.
    pub agents_ready: u32,
    /// One entry per agent talking or in wrap-up (paused agents are in
    /// neither list).
    pub busy: Vec<BusyAgent>,
    /// When each call placed and not yet answered or ended was placed (ms):
    /// one entry per ringing call. A dispatcher that only knows how many
    /// may give `now_ms` for each (the pacers then take them as fresh).
    pub ringing_since_ms: Vec<u64>,
    /// Calls answered by a person and waiting for an agent.
    pub calls_waiting: u32,
    /// Abandon counts.
    pub abandon: AbandonStats,
    /// The campaign's abandon cap in percent (3.0 by default).
    pub cap_pct: f64,
}

impl PacingSnapshot {
    /// Agents on a call.
    pub fn talking(&self) -> u32 {
        count_u32(
            self.busy
                .iter()
                .filter(|a| a.state == BusyState::Talking)
                .count(),
        )
    }

    /// Calls placed and not yet ringing out: ringing or answered and
    /// waiting.
    pub fn unbridged(&self) -> u32 {
        count_u32(self.ringing_since_ms.len()).saturating_add(self.calls_waiting)
    }

    /// Agents ready, talking or in wrap-up (not paused).
    pub fn active_agents(&self) -> u32 {
        self.agents_ready.saturating_add(count_u32(self.busy.len()))
    }
}

pub(crate) fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Something that happened to a call or an agent, when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingObservation {
    /// When it happened (ms).
    pub at_ms: u64,
    /// What happened.
    pub event: PacingEvent,
}

/// What a pacer learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacingEvent {
    /// A call stopped ringing: answered by a person, or not (no answer,
    /// busy, failed, machine).
    RingEnded {
        /// When the call was placed (ms).
        placed_at_ms: u64,
        /// From placing to answer or give-up.
        ring_ms: u64,
        /// Answered by a person.
        answered: bool,
    },
    /// An answered call was bridged to an agent after waiting `wait_ms`.
    Connected {
        /// From answer to bridge.
        wait_ms: u64,
    },
    /// An answered call reached no agent in time and was abandoned.
    Abandoned {
        /// From answer to the recorded message.
        wait_ms: u64,
    },
    /// A bridged call ended after `talk_ms`.
    TalkEnded {
        /// From bridge to hang-up.
        talk_ms: u64,
    },
    /// An agent left wrap-up after `wrap_ms`.
    WrapEnded {
        /// From hang-up to ready.
        wrap_ms: u64,
    },
}

/// A pacing model for one campaign. Implementations are deterministic
/// (same snapshots and observations, same answers) and never panic on any
/// input.
pub trait DialPacer: Send {
    /// A short name for reports (`predictive`, `vicidial`, ...).
    fn name(&self) -> &'static str;

    /// New calls to start now, at most [`MAX_CALLS_PER_CYCLE`].
    fn calls_to_place(&mut self, snap: &PacingSnapshot) -> u32;

    /// Learns from one observation.
    fn observe(&mut self, obs: &PacingObservation);
}

/// Progressive dialing: keeps `ready agents × ratio` calls ringing or
/// waiting; learns nothing.
#[derive(Debug, Clone)]
pub struct Progressive {
    ratio: f64,
}

impl Progressive {
    /// A progressive pacer; `ratio` is clamped to 0..=10 (NaN is 1.0).
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 10.0)
        };
        Self { ratio }
    }

    /// The calls progressive dialing at `ratio` starts for `snap`.
    pub fn calls(ratio: f64, snap: &PacingSnapshot) -> u32 {
        // A hair above the product so that 3 × 0.1 × 10 is 3, not 2.
        let target = (f64::from(snap.agents_ready) * ratio + 1e-9).floor();
        let target = if target.is_finite() && target > 0.0 {
            target.min(f64::from(u32::MAX)) as u32
        } else {
            0
        };
        target
            .saturating_sub(snap.unbridged())
            .min(MAX_CALLS_PER_CYCLE)
    }
}

impl DialPacer for Progressive {
    fn name(&self) -> &'static str {
        "progressive"
    }

    fn calls_to_place(&mut self, snap: &PacingSnapshot) -> u32 {
        Self::calls(self.ratio, snap)
    }

    fn observe(&mut self, _obs: &PacingObservation) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ready: u32, ringing: usize, waiting: u32) -> PacingSnapshot {
        PacingSnapshot {
            agents_logged_in: ready + 3,
            agents_ready: ready,
            ringing_since_ms: vec![0; ringing],
            calls_waiting: waiting,
            cap_pct: 3.0,
            ..PacingSnapshot::default()
        }
    }

    #[test]
    fn progressive_keeps_ready_times_ratio_in_flight() {
        let mut one = Progressive::new(1.0);
        assert_eq!(one.calls_to_place(&snap(5, 0, 0)), 5);
        assert_eq!(one.calls_to_place(&snap(5, 3, 0)), 2);
        assert_eq!(one.calls_to_place(&snap(5, 4, 1)), 0);
        assert_eq!(one.calls_to_place(&snap(5, 9, 0)), 0);
        assert_eq!(one.calls_to_place(&snap(0, 0, 0)), 0);
        let mut two_half = Progressive::new(2.5);
        assert_eq!(two_half.calls_to_place(&snap(3, 0, 0)), 7);
        assert_eq!(two_half.calls_to_place(&snap(4, 2, 0)), 8);
        assert_eq!(Progressive::calls(0.3, &snap(10, 0, 0)), 3);
        // Absurd ratios are clamped, huge counts capped.
        assert_eq!(Progressive::new(f64::NAN).ratio, 1.0);
        assert_eq!(Progressive::new(-2.0).calls_to_place(&snap(5, 0, 0)), 0);
        assert_eq!(
            Progressive::new(1e9).calls_to_place(&snap(u32::MAX - 3, 0, 0)),
            MAX_CALLS_PER_CYCLE
        );
    }

    #[test]
    fn abandon_headroom_is_the_tighter_window() {
        let s = AbandonStats {
            live_today: 200,
            abandoned_today: 5,
            live_30d: 10_000,
            abandoned_30d: 250,
        };
        assert!((s.today_pct() - 2.5).abs() < 1e-12);
        assert!((s.rolling_pct() - 2.5).abs() < 1e-12);
        // Today: 6 − 5 = 1; 30 days: 300 − 250 = 50.
        assert!((s.headroom(3.0) - 1.0).abs() < 1e-9);
        assert_eq!(AbandonStats::default().today_pct(), 0.0);
    }
}
