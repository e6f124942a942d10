//! VICIdial's adaptive pacer, as the comparison baseline of the simulator:
//! implemented literally from `DOMAIN.md` ("VICIdial's adaptive pacer"),
//! quirks included. Not for production campaigns.
//!
//! - Once a second: sample T (logged in, paused included), R (ready), W
//!   (answered, waiting); keep the last 15 samples.
//! - Every 15 s while mean(T) > 0: m = (mean(R) − mean(W) + τ) / mean(T);
//!   g = (1 ± k)·m; L ← round₃(L·(1 + g)), capped at the maximum level,
//!   floored at 1.0; then the drop cuts: last minute > 20 calls with more
//!   than half drops halves L; > 50 calls today over the drop limit applies
//!   the drop method (HARD_LIMIT: 1.0, AVERAGE: half, TAPERED: HHMM
//!   arithmetic); floor at 1.0 again.
//! - Drop statistics are read once a minute, so they lag up to 60 s.
//! - Every 2.5 s: G = round(L·N) lines for N agents not paused; new calls
//!   = G − (ringing + waiting + talking) when positive.
//!
//! A call waiting longer than `drop_after_ms` (VICIdial's 5 s) is a drop.
//! In the simulator the regulatory 2 s rule ends every unanswered wait
//! first, so every drop it sees is an [`PacingEvent::Abandoned`].

use std::collections::VecDeque;

use super::model::{
    DialPacer, PacingEvent, PacingObservation, PacingSnapshot, MAX_CALLS_PER_CYCLE,
};

/// What VICIdial does when today's drop % is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropMethod {
    /// Level to 1.0.
    HardLimit,
    /// Level halved.
    Average,
    /// Level times min(1, (latest HHMM − now HHMM) / 1000), 1.0 past the
    /// latest time.
    Tapered,
}

/// VICIdial's campaign settings for the adaptive pacer.
#[derive(Debug, Clone)]
pub struct VicidialConfig {
    /// Starting dial level.
    pub initial_level: f64,
    /// Maximum dial level (`adaptive_maximum_level`, 3.0).
    pub max_level: f64,
    /// Difference target τ (0; −1 aims at one idle agent).
    pub difference_target: f64,
    /// Intensity, −40..=40 (0).
    pub intensity: i32,
    /// Drop method (TAPERED).
    pub drop_method: DropMethod,
    /// Latest time as HHMM (2100).
    pub latest_hhmm: u16,
    /// Drop limit in percent; `None` takes the snapshot's cap (3 %).
    pub drop_limit_pct: Option<f64>,
    /// A waiting call is a drop after this long (5 s).
    pub drop_after_ms: u64,
}

impl Default for VicidialConfig {
    fn default() -> Self {
        Self {
            initial_level: 1.0,
            max_level: 3.0,
            difference_target: 0.0,
            intensity: 0,
            drop_method: DropMethod::Tapered,
            latest_hhmm: 2100,
            drop_limit_pct: None,
            drop_after_ms: 5_000,
        }
    }
}

const SAMPLE_MS: u64 = 1_000;
const SAMPLES: usize = 15;
const UPDATE_MS: u64 = 15_000;
const DIAL_MS: u64 = 2_500;
const DROP_REFRESH_MS: u64 = 60_000;

/// The drop statistics VICIdial's level update reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DropStats {
    /// Answered calls in the last minute.
    pub minute_calls: u64,
    /// Drops among them.
    pub minute_drops: u64,
    /// Answered calls since midnight, drops included.
    pub today_calls: u64,
    /// Drops since midnight.
    pub today_drops: u64,
}

/// The baseline pacer.
#[derive(Debug, Clone)]
pub struct Vicidial {
    cfg: VicidialConfig,
    level: f64,
    /// (T, R, W), oldest first.
    samples: VecDeque<(u32, u32, u32)>,
    next_sample_ms: Option<u64>,
    next_update_ms: u64,
    next_dial_ms: u64,
    next_drop_refresh_ms: u64,
    /// As read at the last refresh.
    drops: DropStats,
    /// Answered calls of about the last minute: (when, dropped).
    recent: VecDeque<(u64, bool)>,
}

impl Vicidial {
    /// A pacer with `cfg`.
    pub fn new(cfg: VicidialConfig) -> Self {
        let level = if cfg.initial_level.is_finite() {
            cfg.initial_level.max(1.0)
        } else {
            1.0
        };
        Self {
            cfg,
            level,
            samples: VecDeque::with_capacity(SAMPLES),
            next_sample_ms: None,
            next_update_ms: 0,
            next_dial_ms: 0,
            next_drop_refresh_ms: 0,
            drops: DropStats::default(),
            recent: VecDeque::new(),
        }
    }

    /// The current dial level.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// One level update from sample means (T, R, W), drop statistics, the
    /// drop limit (%) and the wall clock: the adapt loop's arithmetic.
    pub fn next_level(
        cfg: &VicidialConfig,
        level: f64,
        means: (f64, f64, f64),
        drops: &DropStats,
        limit_pct: f64,
        clock_hhmm: u16,
    ) -> f64 {
        let (t, r, w) = means;
        if t <= 0.0 || !t.is_finite() {
            return level;
        }
        let m = (r - w + cfg.difference_target) / t;
        let k = f64::from(cfg.intensity.clamp(-40, 40)) / 100.0;
        let g = if m >= 0.0 {
            (1.0 + k) * m
        } else {
            (1.0 - k) * m
        };
        let mut l = (level * (1.0 + g) * 1000.0).round() / 1000.0;
        l = l.min(cfg.max_level).max(1.0);
        if drops.minute_calls > 20 && drops.minute_drops * 2 > drops.minute_calls {
            l /= 2.0;
        }
        let today_pct = if drops.today_calls == 0 {
            0.0
        } else {
            100.0 * drops.today_drops as f64 / drops.today_calls as f64
        };
        if drops.today_calls > 50 && today_pct > limit_pct {
            match cfg.drop_method {
                DropMethod::HardLimit => l = 1.0,
                DropMethod::Average => l /= 2.0,
                DropMethod::Tapered => {
                    let h = i32::from(cfg.latest_hhmm) - i32::from(clock_hhmm);
                    if h < 0 {
                        l = 1.0;
                    } else {
                        l *= (f64::from(h) / 1000.0).min(1.0);
                    }
                }
            }
        }
        if l.is_finite() {
            l.max(1.0)
        } else {
            1.0
        }
    }

    fn sample(&mut self, snap: &PacingSnapshot) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples
            .push_back((snap.agents_logged_in, snap.agents_ready, snap.calls_waiting));
    }

    fn means(&self) -> (f64, f64, f64) {
        let n = self.samples.len().max(1) as f64;
        let (t, r, w) = self
            .samples
            .iter()
            .fold((0.0, 0.0, 0.0), |(t, r, w), &(a, b, c)| {
                (t + f64::from(a), r + f64::from(b), w + f64::from(c))
            });
        (t / n, r / n, w / n)
    }

    fn refresh_drops(&mut self, snap: &PacingSnapshot) {
        let since = snap.now_ms.saturating_sub(DROP_REFRESH_MS);
        while self.recent.front().is_some_and(|&(at, _)| at < since) {
            self.recent.pop_front();
        }
        self.drops = DropStats {
            minute_calls: self.recent.len() as u64,
            minute_drops: self.recent.iter().filter(|(_, d)| *d).count() as u64,
            today_calls: snap.abandon.live_today,
            today_drops: snap.abandon.abandoned_today,
        };
    }
}

impl Default for Vicidial {
    fn default() -> Self {
        Self::new(VicidialConfig::default())
    }
}

impl DialPacer for Vicidial {
    fn name(&self) -> &'static str {
        "vicidial"
    }

    fn calls_to_place(&mut self, snap: &PacingSnapshot) -> u32 {
        let now = snap.now_ms;
        let first = self.next_sample_ms.is_none();
        if first {
            self.next_update_ms = now + UPDATE_MS;
            self.next_dial_ms = now;
            self.next_drop_refresh_ms = now;
        }
        if now >= self.next_drop_refresh_ms {
            self.refresh_drops(snap);
            self.next_drop_refresh_ms = now + DROP_REFRESH_MS;
        }
        let next_sample = self.next_sample_ms.get_or_insert(now);
        if now >= *next_sample {
            // One sample per second of the clock, even if a cycle was late.
            self.next_sample_ms = Some(now + SAMPLE_MS);
            self.sample(snap);
        }
        if now >= self.next_update_ms {
            self.next_update_ms = now + UPDATE_MS;
            let limit = self.cfg.drop_limit_pct.unwrap_or(snap.cap_pct);
            self.level = Self::next_level(
                &self.cfg,
                self.level,
                self.means(),
                &self.drops,
                limit,
                snap.clock_hhmm,
            );
        }
        if now < self.next_dial_ms {
            return 0;
        }
        self.next_dial_ms = now + DIAL_MS;
        let n = f64::from(snap.active_agents());
        let lines = (self.level * n).round().min(f64::from(u32::MAX)) as u32;
        let in_flight = snap.unbridged().saturating_add(snap.talking());
        lines.saturating_sub(in_flight).min(MAX_CALLS_PER_CYCLE)
    }

    fn observe(&mut self, obs: &PacingObservation) {
        let dropped = match obs.event {
            PacingEvent::Abandoned { .. } => true,
            PacingEvent::Connected { wait_ms } => wait_ms > self.cfg.drop_after_ms,
            _ => return,
        };
        self.recent.push_back((obs.at_ms, dropped));
        // Bounded even if nobody asks for calls for a long time.
        if self.recent.len() > 100_000 {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pacing::model::AbandonStats;

    fn cfg() -> VicidialConfig {
        VicidialConfig::default()
    }

    const NO_DROPS: DropStats = DropStats {
        minute_calls: 0,
        minute_drops: 0,
        today_calls: 0,
        today_drops: 0,
    };

    #[test]
    fn level_update_by_hand() {
        // 10 agents, 4 idle on average, 1 waiting: m = 0.3, L 1.5 → 1.95.
        let l = Vicidial::next_level(&cfg(), 1.5, (10.0, 4.0, 1.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 1.95);
        // Rounded to three decimals: 1.234 · (1 + 1/7) = 1.410285… → 1.41.
        let l = Vicidial::next_level(&cfg(), 1.234, (7.0, 1.0, 0.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 1.41);
        // Capped at 3.0.
        let l = Vicidial::next_level(&cfg(), 2.5, (10.0, 5.0, 0.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 3.0);
        // Floored at 1.0: 1.2 · (1 − 0.5) = 0.6.
        let l = Vicidial::next_level(&cfg(), 1.2, (10.0, 0.0, 5.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 1.0);
        // Intensity 20: m = 0.1 grows by 1.2·m, m = −0.1 shrinks by 0.8·m.
        let hot = VicidialConfig {
            intensity: 20,
            ..cfg()
        };
        let up = Vicidial::next_level(&hot, 2.0, (10.0, 1.0, 0.0), &NO_DROPS, 3.0, 900);
        assert_eq!(up, 2.24);
        let down = Vicidial::next_level(&hot, 2.0, (10.0, 0.0, 1.0), &NO_DROPS, 3.0, 900);
        assert_eq!(down, 1.84);
        // Difference target −1 aims at one idle agent: R − W = 1 holds.
        let idle_one = VicidialConfig {
            difference_target: -1.0,
            ..cfg()
        };
        let l = Vicidial::next_level(&idle_one, 2.0, (10.0, 1.0, 0.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 2.0);
        // No agents: unchanged.
        let l = Vicidial::next_level(&cfg(), 2.0, (0.0, 0.0, 3.0), &NO_DROPS, 3.0, 900);
        assert_eq!(l, 2.0);
    }

    #[test]
    fn drop_cuts_by_hand() {
        let minute_bad = DropStats {
            minute_calls: 21,
            minute_drops: 11,
            ..NO_DROPS
        };
        // 2.8 unchanged by the rule (R = W), then halved: 1.4.
        let l = Vicidial::next_level(&cfg(), 2.8, (10.0, 1.0, 1.0), &minute_bad, 3.0, 900);
        assert_eq!(l, 1.4);
        // Exactly half, or 20 calls: no cut.
        let half = DropStats {
            minute_calls: 22,
            minute_drops: 11,
            ..NO_DROPS
        };
        assert_eq!(
            Vicidial::next_level(&cfg(), 2.8, (10.0, 1.0, 1.0), &half, 3.0, 900),
            2.8
        );
        let twenty = DropStats {
            minute_calls: 20,
            minute_drops: 20,
            ..NO_DROPS
        };
        assert_eq!(
            Vicidial::next_level(&cfg(), 2.8, (10.0, 1.0, 1.0), &twenty, 3.0, 900),
            2.8
        );
        // Today 4 % of 100 calls over a 3 % limit.
        let day_bad = DropStats {
            today_calls: 100,
            today_drops: 4,
            ..NO_DROPS
        };
        let means = (10.0, 1.0, 1.0);
        // TAPERED at 09:00: h = 2100 − 900 = 1200 → min(1, 1.2): no cut.
        assert_eq!(
            Vicidial::next_level(&cfg(), 2.8, means, &day_bad, 3.0, 900),
            2.8
        );
        // At 13:30: h = 2100 − 1330 = 770 (not the 7.5 hours left) → × 0.77.
        let l = Vicidial::next_level(&cfg(), 2.8, means, &day_bad, 3.0, 1330);
        assert!((l - 2.156).abs() < 1e-9, "{l}");
        // HHMM as plain integers: 12:59 gives 841, 13:00 gives 800.
        let a = Vicidial::next_level(&cfg(), 2.0, means, &day_bad, 3.0, 1259);
        let b = Vicidial::next_level(&cfg(), 2.0, means, &day_bad, 3.0, 1300);
        assert!(
            (a - 1.682).abs() < 1e-9 && (b - 1.6).abs() < 1e-9,
            "{a} {b}"
        );
        // Past the latest time: 1.0.
        assert_eq!(
            Vicidial::next_level(&cfg(), 2.8, means, &day_bad, 3.0, 2101),
            1.0
        );
        // Small h floors at 1.0: 2.0 × 0.3 = 0.6 → 1.0.
        assert_eq!(
            Vicidial::next_level(&cfg(), 2.0, means, &day_bad, 3.0, 1800),
            1.0
        );
        let avg = VicidialConfig {
            drop_method: DropMethod::Average,
            ..cfg()
        };
        assert_eq!(
            Vicidial::next_level(&avg, 2.8, means, &day_bad, 3.0, 900),
            1.4
        );
        let hard = VicidialConfig {
            drop_method: DropMethod::HardLimit,
            ..cfg()
        };
        assert_eq!(
            Vicidial::next_level(&hard, 2.8, means, &day_bad, 3.0, 900),
            1.0
        );
        // 50 calls is not more than 50: no cut.
        let fifty = DropStats {
            today_calls: 50,
            today_drops: 10,
            ..NO_DROPS
        };
        assert_eq!(
            Vicidial::next_level(&avg, 2.8, means, &fifty, 3.0, 900),
            2.8
        );
        // Both cuts: halved by the minute, halved again by AVERAGE, floored.
        let both = DropStats {
            minute_calls: 30,
            minute_drops: 20,
            today_calls: 100,
            today_drops: 30,
        };
        assert_eq!(Vicidial::next_level(&avg, 3.0, means, &both, 3.0, 900), 1.0);
    }

    fn snap(now_ms: u64, ready: u32, talking: u32) -> PacingSnapshot {
        use crate::domain::pacing::model::{BusyAgent, BusyState};
        PacingSnapshot {
            now_ms,
            clock_hhmm: 900,
            agents_logged_in: ready + talking,
            agents_ready: ready,
            busy: vec![
                BusyAgent {
                    state: BusyState::Talking,
                    since_ms: 0,
                };
                talking as usize
            ],
            abandon: AbandonStats::default(),
            cap_pct: 3.0,
            ..PacingSnapshot::default()
        }
    }

    #[test]
    fn dials_every_two_and_a_half_seconds_and_updates_every_fifteen() {
        let mut v = Vicidial::default();
        // 4 ready, 6 talking at level 1: 10 lines − 6 talking = 4.
        assert_eq!(v.calls_to_place(&snap(0, 4, 6)), 4);
        assert_eq!(v.calls_to_place(&snap(500, 4, 6)), 0);
        assert_eq!(v.calls_to_place(&snap(2_000, 4, 6)), 0);
        assert_eq!(v.calls_to_place(&snap(2_500, 4, 6)), 4);
        // Sampled each second until the first update at 15 s: 40 % idle.
        let mut t = 3_000;
        while t < 15_000 {
            v.calls_to_place(&snap(t, 4, 6));
            t += 500;
        }
        assert_eq!(v.level(), 1.0);
        v.calls_to_place(&snap(15_000, 4, 6));
        assert_eq!(v.level(), 1.4);
    }
}
