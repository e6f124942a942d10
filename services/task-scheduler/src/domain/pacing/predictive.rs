//! dialstack's predictive pacer: places more calls than free agents from
//! what it has measured, and keeps abandoned calls under the campaign's cap.
//!
//! # The model
//!
//! Every cycle it asks, call by call: if one more call is placed now and
//! answered, what is the chance that no agent is left for it? It places
//! calls while that chance stays under a learned threshold θ.
//!
//! For a grid of twelve answer times r (up to the 99th percentile of the
//! ring time of answered calls) it forms two counts:
//!
//! - **answers by r** that come before the new call: calls answered and
//!   waiting; for each ringing call of age a, P(answered within r | still
//!   ringing at a) = p·(F₊(a+r) − F₊(a)) / (p·S₊(a) + (1−p)·S₋(a)) with p
//!   the answer rate, F₊/S₊ the ring-time distribution of answered calls
//!   and S₋ that of unanswered ones; the k new calls placed before it in
//!   this cycle, k·p·F₊(r); and the calls later cycles will place and that
//!   will be answered sooner, p · (recent dial rate) · ∫₀^r F₊(u) du
//!   (without this term the model underestimated abandons two- to
//!   fourfold);
//! - **agents free by r + 2 s** (the answer may wait 2 s): agents ready now;
//!   for each agent talking for e, P(talk residual + wrap-up ≤ r + 2 s |
//!   talk > e), wrap-up taken at three of its quantiles; for each agent in
//!   wrap-up for e, P(wrap ≤ e + r + 2 s | wrap > e).
//!
//! Both are sums of independent trials: a normal approximation with
//! continuity correction gives P(answers before ≥ agents free), and the
//! call's abandon chance is its average over r weighted by F₊. A model
//! error of `model_error` × the answers is added to the variance.
//!
//! θ is learned from outcomes, as stochastic approximation: each live call
//! moves ln θ by `−gain · (abandoned − target)`, so it settles where the
//! measured abandon ratio is the target (`target_share_of_cap` × the cap:
//! 2.4 % under 3 %).
//!
//! # Before the cap
//!
//! The abandon counts of the snapshot throttle it, for both windows (the
//! FTC/FCC 30 days and Ofcom's calendar day, whichever is worse):
//! - as the ratio (smoothed by 50 calls at the target) climbs from the
//!   target to the cap, θ and the target shrink linearly to zero;
//! - with H abandoned calls of headroom left (`cap · live − abandoned`),
//!   under a floor of `headroom_floor` + two minutes of abandons at the
//!   target the pacer dials progressively (one call per ready agent, which
//!   cannot abandon), and from there up to `headroom_soft` (or the floor +
//!   `headroom_minutes` of abandons) θ opens linearly. Calls already
//!   ringing can still abandon after the pacer holds back, which is what
//!   the minutes of abandons leave room for.
//!
//! # Learning
//!
//! Everything is learned online with exponential forgetting, so a shift's
//! drift is followed: p from ring outcomes counted by dial cohort (each
//! outcome enters once every call of its cohort could have ended, so the
//! quick answers do not inflate p while the ring-outs still ring), the four
//! duration distributions as histograms (no shape assumed). Until it has
//! seen `min_ring_outcomes` ring outcomes, `max(min_talks,
//! min_talks_per_agent × agents)` talks (the first talks to end are the
//! short ones) and `min_wraps` wrap-ups, it dials progressively at 1.0.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::dist::Histogram;
use super::model::{
    BusyState, DialPacer, PacingEvent, PacingObservation, PacingSnapshot, Progressive,
    MAX_CALLS_PER_CYCLE,
};

/// The predictive pacer's settings; the defaults are what the benchmark
/// ran.
#[derive(Debug, Clone)]
pub struct PredictiveConfig {
    /// The abandon ratio aimed at, as a share of the cap.
    pub target_share_of_cap: f64,
    /// How long an answered call may wait for an agent (2 s, the rule).
    pub patience_ms: u64,
    /// Calls ringing or waiting per agent, at most.
    pub max_lines_per_agent: f64,
    /// Ring outcomes before leaving progressive.
    pub min_ring_outcomes: u64,
    /// Completed talks before leaving progressive.
    pub min_talks: u64,
    /// Completed talks per active agent before leaving progressive: the
    /// first talks to end are the short ones.
    pub min_talks_per_agent: f64,
    /// Completed wrap-ups before leaving progressive.
    pub min_wraps: u64,
    /// The starting threshold: the highest chance that the last call
    /// placed is abandoned if answered.
    pub threshold_init: f64,
    /// Lowest threshold.
    pub threshold_min: f64,
    /// Highest threshold.
    pub threshold_max: f64,
    /// How far one live call moves the threshold's logarithm.
    pub threshold_gain: f64,
    /// Abandoned calls left before the cap (on top of two minutes of
    /// abandons at the target) under which the pacer dials progressively.
    pub headroom_floor: f64,
    /// Abandoned calls left before the cap under which the threshold
    /// narrows, linearly to zero at the floor...
    pub headroom_soft: f64,
    /// ... or, if more, the floor plus this many minutes of abandoned calls
    /// at the target.
    pub headroom_minutes: f64,
    /// Relative error of the expected answers, as a standard deviation.
    pub model_error: f64,
    /// Samples the answer rate remembers.
    pub answer_window: f64,
    /// Samples the ring-time distributions remember.
    pub ring_window: f64,
    /// Samples the talk and wrap-up distributions remember.
    pub handle_window: f64,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        Self {
            target_share_of_cap: 0.8,
            patience_ms: 2_000,
            max_lines_per_agent: 10.0,
            min_ring_outcomes: 100,
            min_talks: 30,
            min_talks_per_agent: 2.0,
            min_wraps: 20,
            threshold_init: 0.05,
            threshold_min: 0.001,
            threshold_max: 0.5,
            threshold_gain: 0.1,
            headroom_floor: 1.0,
            headroom_soft: 8.0,
            headroom_minutes: 2.0,
            model_error: 0.03,
            answer_window: 1_000.0,
            ring_window: 2_000.0,
            handle_window: 1_000.0,
        }
    }
}

/// Horizons evaluated per cycle.
const HORIZONS: usize = 12;

/// The answer rate by dial cohort with exponential forgetting.
#[derive(Debug, Clone)]
struct AnswerRate {
    /// Outcomes not counted yet: (when their cohort has ended, answered).
    pending: BinaryHeap<Reverse<(u64, bool)>>,
    yes: f64,
    all: f64,
    keep: f64,
    counted: u64,
    /// The longest ring seen: a cohort has ended this long after dialing.
    hold_ms: u64,
}

impl AnswerRate {
    fn new(window: f64) -> Self {
        Self {
            pending: BinaryHeap::new(),
            // A prior of 20 % worth five calls; forgotten within a few hundred.
            yes: 1.0,
            all: 5.0,
            keep: 1.0 - 1.0 / window.max(2.0),
            counted: 0,
            hold_ms: 30_000,
        }
    }

    fn observe(&mut self, at_ms: u64, placed_at_ms: u64, ring_ms: u64, answered: bool) {
        self.hold_ms = self.hold_ms.max(ring_ms.min(120_000));
        let release = placed_at_ms.saturating_add(self.hold_ms);
        if release <= at_ms || self.pending.len() > 1_000_000 {
            self.count(answered);
        } else {
            self.pending.push(Reverse((release, answered)));
        }
    }

    fn advance(&mut self, now_ms: u64) {
        while let Some(&Reverse((at, answered))) = self.pending.peek() {
            if at > now_ms {
                break;
            }
            self.pending.pop();
            self.count(answered);
        }
    }

    fn count(&mut self, answered: bool) {
        self.yes = self.yes * self.keep + f64::from(u8::from(answered));
        self.all = self.all * self.keep + 1.0;
        self.counted += 1;
    }

    fn rate(&self) -> f64 {
        (self.yes / self.all).clamp(0.001, 1.0)
    }
}

/// The predictive pacer.
#[derive(Debug, Clone)]
pub struct Predictive {
    cfg: PredictiveConfig,
    answer: AnswerRate,
    ring_yes: Histogram,
    ring_no: Histogram,
    talk: Histogram,
    wrap: Histogram,
    /// ln of the learned threshold.
    log_threshold: f64,
    /// The abandon ratio aimed at as of the last cycle (fraction).
    target: f64,
    /// Calls placed per ms, averaged over about half a minute.
    dial_rate: f64,
    /// The previous snapshot's time.
    last_now: Option<u64>,
    /// Whether the last cycle was predictive (θ learns only then).
    predicting: bool,
    // Per-cycle scratch, kept to avoid allocating every cycle.
    horizon: [f64; HORIZONS],
    answers_mean: [f64; HORIZONS],
    answers_var: [f64; HORIZONS],
    free_mean: [f64; HORIZONS],
    free_var: [f64; HORIZONS],
}

impl Predictive {
    /// A pacer with `cfg`, knowing nothing yet.
    pub fn new(cfg: PredictiveConfig) -> Self {
        let log_threshold = sane(cfg.threshold_init, 0.05).clamp(1e-6, 1.0).ln();
        Self {
            answer: AnswerRate::new(cfg.answer_window),
            ring_yes: Histogram::new(100, 120_000, cfg.ring_window),
            ring_no: Histogram::new(100, 120_000, cfg.ring_window),
            talk: Histogram::new(1_000, 3_600_000, cfg.handle_window),
            wrap: Histogram::new(1_000, 600_000, cfg.handle_window),
            log_threshold,
            target: 0.0,
            predicting: false,
            dial_rate: 0.0,
            last_now: None,
            horizon: [0.0; HORIZONS],
            answers_mean: [0.0; HORIZONS],
            answers_var: [0.0; HORIZONS],
            free_mean: [0.0; HORIZONS],
            free_var: [0.0; HORIZONS],
            cfg,
        }
    }

    /// The learned threshold (for logs and tests).
    pub fn threshold(&self) -> f64 {
        self.log_threshold.exp()
    }

    /// The measured answer rate.
    pub fn answer_rate(&self) -> f64 {
        self.answer.rate()
    }

    fn warm(&self, active: u32) -> bool {
        let talks = (self.cfg.min_talks_per_agent * f64::from(active)).max(0.0) as u64;
        self.answer.counted >= self.cfg.min_ring_outcomes
            && self.ring_yes.count() >= 10
            && self.talk.count() >= self.cfg.min_talks.max(talks)
            && self.wrap.count() >= self.cfg.min_wraps
    }

    /// The largest n whose last call would be abandoned, if answered, with
    /// probability at most `threshold`; at most `hi`.
    fn solve(&mut self, snap: &PacingSnapshot, threshold: f64, hi: u32) -> u32 {
        let now = snap.now_ms;
        let p = self.answer.rate();
        let patience = self.cfg.patience_ms as f64;
        let reach = self.ring_yes.quantile(0.99).clamp(4_000.0, 60_000.0);
        let waiting = f64::from(snap.calls_waiting);
        let ready = f64::from(snap.agents_ready);
        for j in 0..HORIZONS {
            self.horizon[j] = reach * (j + 1) as f64 / HORIZONS as f64;
            self.answers_mean[j] = waiting;
            self.answers_var[j] = 0.0;
            self.free_mean[j] = ready;
            self.free_var[j] = 0.0;
        }
        for &since in &snap.ringing_since_ms {
            let age = now.saturating_sub(since) as f64;
            let yes_left = p * self.ring_yes.survival(age);
            let alive = yes_left + (1.0 - p) * self.ring_no.survival(age);
            if alive < 1e-9 || yes_left < 1e-12 {
                continue;
            }
            let f0 = self.ring_yes.cdf(age);
            for j in 0..HORIZONS {
                let pi =
                    (p * (self.ring_yes.cdf(age + self.horizon[j]) - f0) / alive).clamp(0.0, 1.0);
                self.answers_mean[j] += pi;
                self.answers_var[j] += pi * (1.0 - pi);
            }
        }
        let wraps = [
            self.wrap.quantile(1.0 / 6.0),
            self.wrap.quantile(0.5),
            self.wrap.quantile(5.0 / 6.0),
        ];
        for agent in &snap.busy {
            let e = now.saturating_sub(agent.since_ms) as f64;
            for j in 0..HORIZONS {
                let d = self.horizon[j] + patience;
                let rho = match agent.state {
                    BusyState::Talking => {
                        wraps
                            .iter()
                            .map(|w| self.talk.ends_within(e, d - w))
                            .sum::<f64>()
                            / 3.0
                    }
                    BusyState::WrapUp => self.wrap.ends_within(e, d),
                };
                self.free_mean[j] += rho;
                self.free_var[j] += rho * (1.0 - rho);
            }
        }
        // Calls placed after this cycle and answered quickly take agents
        // ahead of this cycle's slower answers: at the recent dial rate,
        // p · rate · ∫₀^Δ F₊(u) du of them are answered by Δ.
        let mut integral = 0.0;
        let mut prev_cdf = 0.0;
        let step = reach / HORIZONS as f64 / 4.0;
        for j in 0..HORIZONS {
            for i in 1..=4 {
                let u = self.horizon[j] - step * f64::from(4 - i);
                let c = self.ring_yes.cdf(u);
                integral += (prev_cdf + c) / 2.0 * step;
                prev_cdf = c;
            }
            let later = p * self.dial_rate * integral;
            self.answers_mean[j] += later;
            self.answers_var[j] += later;
        }
        // A new call answered at all is answered in horizon j's slice with
        // weight[j]; what rings past the last horizon counts in the last.
        let cdf: [f64; HORIZONS] = std::array::from_fn(|j| self.ring_yes.cdf(self.horizon[j]));
        let weight: [f64; HORIZONS] = std::array::from_fn(|j| match j {
            0 => cdf[0],
            j if j == HORIZONS - 1 => 1.0 - cdf[j - 1],
            j => cdf[j] - cdf[j - 1],
        });
        let kappa = self.cfg.model_error.max(0.0);
        // P(the (k+1)-th new call, answered in slice j, finds every agent
        // free by then + patience taken by the answers before it).
        let abandon_of_next = |k: f64| {
            (0..HORIZONS)
                .map(|j| {
                    if weight[j] <= 0.0 {
                        return 0.0;
                    }
                    let q = p * cdf[j];
                    let before = self.answers_mean[j] + k * q;
                    let var = self.free_var[j]
                        + self.answers_var[j]
                        + k * q * (1.0 - q)
                        + (kappa * before).powi(2);
                    // Continuity correction: no agent left means
                    // before ≥ free, i.e. before − free > −0.5.
                    let x = (before - self.free_mean[j] + 0.5) / var.max(0.05).sqrt();
                    weight[j] * normal_cdf(x)
                })
                .sum::<f64>()
        };
        if hi == 0 || abandon_of_next(0.0) > threshold {
            return 0;
        }
        // n calls fit when the n-th one's chance is under the threshold.
        let (mut lo, mut hi) = (1u32, hi);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if abandon_of_next(f64::from(mid - 1)) <= threshold {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

impl Predictive {
    /// Counts the calls placed since the previous cycle (ringing calls
    /// younger than it) into the dial rate.
    fn track_dial_rate(&mut self, snap: &PacingSnapshot) {
        let now = snap.now_ms;
        if let Some(last) = self.last_now.filter(|&l| l < now) {
            let placed = snap.ringing_since_ms.iter().filter(|&&s| s >= last).count() as f64;
            let dt = (now - last) as f64;
            let keep = (-dt / 30_000.0).exp();
            self.dial_rate = keep * self.dial_rate + (1.0 - keep) * placed / dt;
        }
        self.last_now = Some(now);
    }
}

/// Φ(x), the standard normal distribution function (|error| < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return 0.5;
    }
    // Abramowitz and Stegun 7.1.26 on erfc(|x| / √2).
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let tail = 0.5 * poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

impl Default for Predictive {
    fn default() -> Self {
        Self::new(PredictiveConfig::default())
    }
}

fn sane(x: f64, default: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        default
    }
}

/// A smoothed abandon ratio: 50 live calls at the target in front, so that
/// the first abandoned call of the day does not read as 100 %.
fn smoothed(abandoned: u64, live: u64, target: f64) -> f64 {
    (abandoned as f64 + 50.0 * target) / (live as f64 + 50.0)
}

impl DialPacer for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn calls_to_place(&mut self, snap: &PacingSnapshot) -> u32 {
        self.answer.advance(snap.now_ms);
        self.track_dial_rate(snap);
        self.ring_yes.refresh();
        self.ring_no.refresh();
        self.talk.refresh();
        self.wrap.refresh();
        self.predicting = false;
        let active = snap.active_agents();
        if active == 0 {
            return 0;
        }
        let lines = (f64::from(active) * self.cfg.max_lines_per_agent.clamp(1.0, 100.0))
            .min(f64::from(u32::MAX)) as u32;
        let room = lines
            .saturating_sub(snap.unbridged())
            .min(MAX_CALLS_PER_CYCLE);
        let progressive = Progressive::calls(1.0, snap).min(room);

        let cap_pct = sane(snap.cap_pct, 3.0).clamp(0.0, 100.0);
        let cap = cap_pct / 100.0;
        let tau = cap * sane(self.cfg.target_share_of_cap, 0.8).clamp(0.0, 1.0);
        let a = &snap.abandon;
        let ratio = smoothed(a.abandoned_today, a.live_today, tau).max(smoothed(
            a.abandoned_30d,
            a.live_30d,
            tau,
        ));
        let over = if cap > tau {
            ((ratio - tau) / (cap - tau)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        self.target = tau * (1.0 - over);
        let headroom = a.headroom(cap_pct);
        if cap <= 0.0 || headroom < self.cfg.headroom_floor || !self.warm(active) {
            return progressive;
        }
        // Abandoned calls a minute at the target with every agent busy:
        // calls already ringing can still add about that many after the
        // pacer holds back, so the floor and the soft limit grow with it.
        let handle_ms = (self.talk.mean_ms() + self.wrap.mean_ms()).max(1_000.0);
        let per_minute = tau * f64::from(active) * 60_000.0 / handle_ms;
        let floor = self.cfg.headroom_floor + 2.0 * per_minute;
        if headroom < floor {
            return progressive;
        }
        self.predicting = true;
        let soft = self
            .cfg
            .headroom_soft
            .max(floor + self.cfg.headroom_minutes * per_minute);
        let room_left = if soft > floor {
            ((headroom - floor) / (soft - floor)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        // Nearing the cap, the threshold closes towards zero.
        let threshold = self.threshold() * (1.0 - over) * room_left;
        self.solve(snap, threshold, room)
    }

    fn observe(&mut self, obs: &PacingObservation) {
        match obs.event {
            PacingEvent::RingEnded {
                placed_at_ms,
                ring_ms,
                answered,
            } => {
                self.answer
                    .observe(obs.at_ms, placed_at_ms, ring_ms, answered);
                if answered {
                    self.ring_yes.add(ring_ms);
                } else {
                    self.ring_no.add(ring_ms);
                }
            }
            PacingEvent::Connected { .. } | PacingEvent::Abandoned { .. } => {
                if !self.predicting {
                    return;
                }
                let abandoned = matches!(obs.event, PacingEvent::Abandoned { .. });
                let step = f64::from(u8::from(abandoned)) - self.target;
                let lo = self.cfg.threshold_min.max(1e-6).ln();
                let hi = self.cfg.threshold_max.clamp(1e-6, 1.0).ln().max(lo);
                self.log_threshold =
                    (self.log_threshold - self.cfg.threshold_gain * step).clamp(lo, hi);
            }
            PacingEvent::TalkEnded { talk_ms } => self.talk.add(talk_ms),
            PacingEvent::WrapEnded { wrap_ms } => self.wrap.add(wrap_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pacing::model::{AbandonStats, BusyAgent, Progressive};
    use crate::domain::pacing::sim::{simulate, SimConfig};

    fn obs(at_ms: u64, event: PacingEvent) -> PacingObservation {
        PacingObservation { at_ms, event }
    }

    #[test]
    fn normal_cdf_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-5);
        assert_eq!(normal_cdf(f64::NAN), 0.5);
        assert!(normal_cdf(40.0) <= 1.0 && normal_cdf(-40.0) >= 0.0);
    }

    #[test]
    fn answer_rate_waits_for_the_cohort() {
        let mut a = AnswerRate::new(1e9);
        // Answers come back within 8 s, ring-outs at 25 s: counted as they
        // come, p would read 1.0 for the first 25 s.
        a.observe(25_000, 0, 25_000, false);
        for i in 0..10 {
            a.observe(8_000, i, 8_000, true);
        }
        a.advance(20_000);
        assert_eq!(a.counted, 0, "answers held until their cohort has ended");
        assert!((a.rate() - 0.2).abs() < 1e-9, "still the prior");
        a.advance(45_000);
        assert_eq!(a.counted, 11);
        assert!((a.rate() - 11.0 / 16.0).abs() < 1e-6);
    }

    #[test]
    fn starts_progressive_without_data() {
        let mut p = Predictive::default();
        let snap = PacingSnapshot {
            now_ms: 1_000,
            agents_logged_in: 10,
            agents_ready: 4,
            ringing_since_ms: vec![900],
            cap_pct: 3.0,
            ..PacingSnapshot::default()
        };
        assert_eq!(p.calls_to_place(&snap), Progressive::calls(1.0, &snap));
        assert_eq!(p.calls_to_place(&snap), 3);
    }

    /// A pacer that has seen a few hundred calls of a 30 % campaign.
    fn trained() -> Predictive {
        let mut p = Predictive::default();
        for i in 0..600u64 {
            let at = i * 1_000;
            let answered = i % 10 < 3;
            let ring = if answered {
                6_000 + (i % 7) * 1_000
            } else {
                25_000
            };
            p.observe(&obs(
                at + ring,
                PacingEvent::RingEnded {
                    placed_at_ms: at,
                    ring_ms: ring,
                    answered,
                },
            ));
            p.observe(&obs(
                at,
                PacingEvent::TalkEnded {
                    talk_ms: 30_000 + (i % 13) * 5_000,
                },
            ));
            p.observe(&obs(
                at,
                PacingEvent::WrapEnded {
                    wrap_ms: 10_000 + (i % 5) * 4_000,
                },
            ));
        }
        p
    }

    #[test]
    fn dials_ahead_of_free_agents_once_it_has_learned() {
        let mut p = trained();
        let now = 700_000;
        let snap = PacingSnapshot {
            now_ms: now,
            clock_hhmm: 1000,
            agents_logged_in: 20,
            agents_ready: 4,
            busy: (0..16)
                .map(|i| BusyAgent {
                    state: if i % 4 == 0 {
                        BusyState::WrapUp
                    } else {
                        BusyState::Talking
                    },
                    since_ms: now - 5_000 * i,
                })
                .collect(),
            abandon: AbandonStats {
                live_today: 1_000,
                abandoned_today: 10,
                live_30d: 20_000,
                abandoned_30d: 300,
            },
            cap_pct: 3.0,
            ..PacingSnapshot::default()
        };
        let n = p.calls_to_place(&snap);
        // More than one line per ready agent (p ≈ 0.3, agents about to free).
        assert!(n > 4 && n < 100, "{n}");
        // At the cap the same state gets progressive dialing only.
        let at_cap = PacingSnapshot {
            abandon: AbandonStats {
                live_today: 1_000,
                abandoned_today: 30,
                ..snap.abandon
            },
            ..snap.clone()
        };
        assert_eq!(p.calls_to_place(&at_cap), 4);
        // A 3 % month with a clean day is still at the cap.
        let month_at_cap = PacingSnapshot {
            abandon: AbandonStats {
                live_30d: 20_000,
                abandoned_30d: 600,
                ..snap.abandon
            },
            ..snap.clone()
        };
        assert_eq!(p.calls_to_place(&month_at_cap), 4);
    }

    #[test]
    fn extreme_inputs_neither_panic_nor_run_away() {
        for mut p in [Predictive::default(), trained()] {
            let empty = PacingSnapshot::default();
            assert_eq!(p.calls_to_place(&empty), 0, "no agents, no calls");
            let paused = PacingSnapshot {
                agents_logged_in: 50,
                ..PacingSnapshot::default()
            };
            assert_eq!(p.calls_to_place(&paused), 0);
            let huge = PacingSnapshot {
                now_ms: u64::MAX,
                clock_hhmm: 9999,
                agents_logged_in: u32::MAX,
                agents_ready: u32::MAX,
                busy: vec![
                    BusyAgent {
                        state: BusyState::Talking,
                        since_ms: u64::MAX,
                    };
                    1_000
                ],
                ringing_since_ms: vec![0; 1_000],
                calls_waiting: u32::MAX,
                abandon: AbandonStats {
                    live_today: u64::MAX,
                    abandoned_today: u64::MAX,
                    live_30d: u64::MAX,
                    abandoned_30d: 0,
                },
                cap_pct: f64::NAN,
            };
            assert!(p.calls_to_place(&huge) <= MAX_CALLS_PER_CYCLE);
            let future = PacingSnapshot {
                now_ms: 10,
                agents_logged_in: 100_000,
                agents_ready: 100_000,
                ringing_since_ms: vec![u64::MAX; 3],
                busy: vec![
                    BusyAgent {
                        state: BusyState::WrapUp,
                        since_ms: u64::MAX,
                    };
                    10
                ],
                abandon: AbandonStats {
                    live_today: 1_000_000,
                    abandoned_today: 0,
                    live_30d: 1_000_000,
                    abandoned_30d: 0,
                },
                cap_pct: 1e300,
                ..PacingSnapshot::default()
            };
            assert_eq!(p.calls_to_place(&future), MAX_CALLS_PER_CYCLE);
            // Nonsense observations are absorbed.
            p.observe(&obs(
                0,
                PacingEvent::RingEnded {
                    placed_at_ms: u64::MAX,
                    ring_ms: u64::MAX,
                    answered: true,
                },
            ));
            p.observe(&obs(0, PacingEvent::TalkEnded { talk_ms: u64::MAX }));
            p.observe(&obs(0, PacingEvent::WrapEnded { wrap_ms: 0 }));
            p.observe(&obs(0, PacingEvent::Abandoned { wait_ms: u64::MAX }));
            assert!(p.threshold().is_finite() && p.answer_rate().is_finite());
        }
    }

    #[test]
    fn stays_under_the_cap_and_beats_progressive_on_a_short_shift() {
        let mut cfg = SimConfig::new(30, 0.3, 60.0);
        cfg.duration_ms = 2 * 3_600_000;
        let predictive = simulate(&cfg, &mut Predictive::default());
        let progressive = simulate(&cfg, &mut Progressive::new(1.0));
        assert!(predictive.abandon_pct <= 3.0, "{predictive:?}");
        assert!(predictive.peak_day_abandon_pct <= 3.0, "{predictive:?}");
        assert!(
            predictive.occupancy_talk > progressive.occupancy_talk + 0.1,
            "{predictive:?} {progressive:?}"
        );
    }
}
