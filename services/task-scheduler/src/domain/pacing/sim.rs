//! A seeded discrete-event simulation of one campaign's shift, to compare
//! pacers: N agents, leads with an answer probability and ring, talk and
//! wrap-up times, and the 2 s abandon rule. It drives any [`DialPacer`] the
//! way the dispatcher does (a snapshot every cycle, observations as they
//! happen), so what it measures is the pacer code the dispatcher runs.
//!
//! # The trace
//!
//! Every lead's random draws (one uniform for the answer, one for a quick
//! failure, four normal deviates for ring, quick-failure, talk and wrap
//! times) come from one generator seeded with [`SimConfig::seed`], in lead
//! order, so the n-th call of every pacer dials the same person. The drift
//! (answer rate and talk time moving linearly from `1 − drift` to
//! `1 + drift` of their means over the shift) is applied to those draws at
//! the time the call is placed, so two pacers differ on one call's outcome
//! only when they dial it at different times of the shift.
//!
//! - Answered calls ring a lognormal time (mean `ring_answer_mean_ms`),
//!   kept between 1 s and the ring timeout.
//! - Unanswered calls fail quickly (busy, network; `fast_fail_share` of
//!   them, lognormal around `fast_fail_mean_ms`) or ring out at
//!   `ring_timeout_ms`.
//! - Talk is lognormal (mean `talk_mean_ms` × drift, coefficient of
//!   variation `talk_cv`), wrap-up lognormal (`wrap_mean_ms`, `wrap_cv`).
//! - An answered call goes to the agent ready longest; with none ready it
//!   waits, first come first served, and is abandoned if no agent is free
//!   within `abandon_after_ms`.
//!
//! No I/O, no clock: a shift of 200 agents runs in about a second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::model::{
    AbandonStats, BusyAgent, BusyState, DialPacer, PacingEvent, PacingObservation, PacingSnapshot,
};

/// One simulated shift.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the lead trace.
    pub seed: u64,
    /// Agents logged in for the whole shift, none paused.
    pub agents: u32,
    /// Length of the shift (ms).
    pub duration_ms: u64,
    /// Wall clock at the start, HHMM.
    pub start_hhmm: u16,
    /// The dispatcher's cycle (ms).
    pub tick_ms: u64,
    /// Share of calls answered by a person, at mid-shift.
    pub answer_rate: f64,
    /// Mean ring time of answered calls (ms).
    pub ring_answer_mean_ms: f64,
    /// Coefficient of variation of that ring time.
    pub ring_answer_cv: f64,
    /// Unanswered calls ring out after this (ms).
    pub ring_timeout_ms: u64,
    /// Share of unanswered calls that fail quickly (busy, network).
    pub fast_fail_share: f64,
    /// Mean time to a quick failure (ms).
    pub fast_fail_mean_ms: f64,
    /// Mean talk time at mid-shift (ms).
    pub talk_mean_ms: f64,
    /// Coefficient of variation of talk time.
    pub talk_cv: f64,
    /// Mean wrap-up time (ms).
    pub wrap_mean_ms: f64,
    /// Coefficient of variation of wrap-up time.
    pub wrap_cv: f64,
    /// Answer rate and talk time drift linearly from `1 − drift` to
    /// `1 + drift` of their means over the shift.
    pub drift: f64,
    /// An answered call with no agent within this long is abandoned (ms).
    pub abandon_after_ms: u64,
    /// The campaign's abandon cap (%).
    pub cap_pct: f64,
    /// Live and abandoned calls of the 29 days before (for the 30-day
    /// window).
    pub prior_30d: (u64, u64),
}

impl SimConfig {
    /// A shift of 8 hours from 09:00 with the benchmark's call model:
    /// answered calls ring 8 s on average, ring-outs at 25 s, a quarter of
    /// unanswered calls fail in about 4 s, talk time with a coefficient of
    /// variation of 1, 20 s of wrap-up, ±20 % drift, 3 % cap, 2 s rule.
    pub fn new(agents: u32, answer_rate: f64, talk_mean_s: f64) -> Self {
        Self {
            seed: 1,
            agents,
            duration_ms: 8 * 3_600_000,
            start_hhmm: 900,
            tick_ms: 500,
            answer_rate,
            ring_answer_mean_ms: 8_000.0,
            ring_answer_cv: 0.6,
            ring_timeout_ms: 25_000,
            fast_fail_share: 0.25,
            fast_fail_mean_ms: 4_000.0,
            talk_mean_ms: talk_mean_s * 1_000.0,
            talk_cv: 1.0,
            wrap_mean_ms: 20_000.0,
            wrap_cv: 0.5,
            drift: 0.2,
            abandon_after_ms: 2_000,
            cap_pct: 3.0,
            prior_30d: (0, 0),
        }
    }
}

/// What a shift measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// The pacer's name.
    pub pacer: &'static str,
    /// Calls placed.
    pub placed: u64,
    /// Calls answered by a person (connected or abandoned).
    pub live: u64,
    /// Calls bridged to an agent.
    pub connected: u64,
    /// Calls abandoned.
    pub abandoned: u64,
    /// Talk time / logged-in time.
    pub occupancy_talk: f64,
    /// (Talk + wrap-up) / logged-in time.
    pub occupancy_handle: f64,
    /// Abandoned / live over the shift (%).
    pub abandon_pct: f64,
    /// The worst abandon ratio of any 60-minute window, evaluated at every
    /// live call after the first hour (%).
    pub worst_hour_abandon_pct: f64,
    /// The highest abandon ratio of the day so far, at any time after the
    /// 100th live call (%).
    pub peak_day_abandon_pct: f64,
    /// Mean time an agent waited between calls: ready time / connected
    /// calls (s).
    pub mean_agent_wait_s: f64,
}

/// Per-lead random draws, in a fixed order per lead.
#[derive(Debug, Clone, Copy)]
struct Lead {
    u_answer: f64,
    u_fast: f64,
    z_ring: f64,
    z_fast: f64,
    z_talk: f64,
    z_wrap: f64,
}

fn uniform_open(rng: &mut fastrand::Rng) -> f64 {
    // (0, 1]: safe for ln.
    1.0 - rng.f64()
}

fn normals(rng: &mut fastrand::Rng) -> (f64, f64) {
    let r = (-2.0 * uniform_open(rng).ln()).sqrt();
    let t = std::f64::consts::TAU * rng.f64();
    (r * t.cos(), r * t.sin())
}

impl Lead {
    fn draw(rng: &mut fastrand::Rng) -> Self {
        let u_answer = rng.f64();
        let u_fast = rng.f64();
        let (z_ring, z_fast) = normals(rng);
        let (z_talk, z_wrap) = normals(rng);
        Self {
            u_answer,
            u_fast,
            z_ring,
            z_fast,
            z_talk,
            z_wrap,
        }
    }
}

/// A lognormal value of mean `mean` and coefficient of variation `cv`.
fn lognormal(mean: f64, cv: f64, z: f64) -> f64 {
    let s2 = (1.0 + cv * cv).ln();
    mean * (s2.sqrt() * z - s2 / 2.0).exp()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Ringing,
    Waiting,
    Done,
}

#[derive(Debug, Clone)]
struct Call {
    placed_at: u64,
    ring_ms: u64,
    answered: bool,
    talk_ms: u64,
    wrap_ms: u64,
    state: CallState,
    /// Index in `ringing` while ringing.
    slot: usize,
    answered_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    Ready,
    Talking,
    WrapUp,
}

#[derive(Debug, Clone, Copy)]
struct Agent {
    state: AgentState,
    since: u64,
    talk_ms: u64,
    wrap_ms: u64,
}

const RING_END: u8 = 0;
const GIVE_UP: u8 = 1;
const TALK_END: u8 = 2;
const WRAP_END: u8 = 3;

struct Sim<'a> {
    cfg: &'a SimConfig,
    pacer: &'a mut dyn DialPacer,
    rng: fastrand::Rng,
    /// (time, sequence, kind, index), earliest first.
    events: BinaryHeap<Reverse<(u64, u64, u8, usize)>>,
    seq: u64,
    calls: Vec<Call>,
    ringing: Vec<usize>,
    waiting: VecDeque<usize>,
    waiting_count: u32,
    agents: Vec<Agent>,
    ready: VecDeque<usize>,
    snap: PacingSnapshot,
    // Measures.
    placed: u64,
    connected: u64,
    abandoned: u64,
    talk_total: u64,
    wrap_total: u64,
    idle_total: u64,
    /// Live calls of the last hour: (when resolved, abandoned).
    hour: VecDeque<(u64, bool)>,
    hour_abandoned: u64,
    worst_hour: f64,
    peak_day: f64,
}

impl Sim<'_> {
    fn at(&mut self, t: u64, kind: u8, index: usize) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, kind, index)));
    }

    fn drift(&self, t: u64) -> f64 {
        let f = t as f64 / self.cfg.duration_ms.max(1) as f64;
        1.0 - self.cfg.drift + 2.0 * self.cfg.drift * f
    }

    fn observe(&mut self, at_ms: u64, event: PacingEvent) {
        self.pacer.observe(&PacingObservation { at_ms, event });
    }

    fn place(&mut self, now: u64) {
        let c = self.cfg;
        let lead = Lead::draw(&mut self.rng);
        let d = self.drift(now);
        let answered = lead.u_answer < (c.answer_rate * d).min(1.0);
        let timeout = c.ring_timeout_ms.max(2_000) as f64;
        let ring = if answered {
            lognormal(c.ring_answer_mean_ms, c.ring_answer_cv, lead.z_ring)
                .clamp(1_000.0, timeout - 500.0)
        } else if lead.u_fast < c.fast_fail_share {
            lognormal(c.fast_fail_mean_ms, 0.5, lead.z_fast).clamp(500.0, timeout)
        } else {
            timeout
        };
        let talk = lognormal(c.talk_mean_ms * d, c.talk_cv, lead.z_talk).max(1_000.0);
        let wrap = lognormal(c.wrap_mean_ms, c.wrap_cv, lead.z_wrap).max(0.0);
        let id = self.calls.len();
        self.calls.push(Call {
            placed_at: now,
            ring_ms: ring as u64,
            answered,
            talk_ms: talk as u64,
            wrap_ms: wrap as u64,
            state: CallState::Ringing,
            slot: self.ringing.len(),
            answered_at: 0,
        });
        self.ringing.push(id);
        self.placed += 1;
        self.at(now + ring as u64, RING_END, id);
    }

    fn resolved(&mut self, now: u64, abandoned: bool) {
        if abandoned {
            self.abandoned += 1;
            self.hour_abandoned += 1;
        } else {
            self.connected += 1;
        }
        self.hour.push_back((now, abandoned));
        while self
            .hour
            .front()
            .is_some_and(|&(t, _)| t + 3_600_000 <= now)
        {
            if let Some((_, true)) = self.hour.pop_front() {
                self.hour_abandoned -= 1;
            }
        }
        if now >= 3_600_000 && !self.hour.is_empty() {
            let r = self.hour_abandoned as f64 / self.hour.len() as f64;
            self.worst_hour = self.worst_hour.max(r);
        }
        let live = self.connected + self.abandoned;
        if live >= 100 {
            self.peak_day = self.peak_day.max(self.abandoned as f64 / live as f64);
        }
    }

    fn connect(&mut self, now: u64, call: usize, agent: usize) {
        let wait = now - self.calls[call].answered_at;
        self.calls[call].state = CallState::Done;
        let a = &mut self.agents[agent];
        self.idle_total += now - a.since;
        *a = Agent {
            state: AgentState::Talking,
            since: now,
            talk_ms: self.calls[call].talk_ms,
            wrap_ms: self.calls[call].wrap_ms,
        };
        let talk = a.talk_ms;
        self.observe(now, PacingEvent::Connected { wait_ms: wait });
        self.resolved(now, false);
        self.at(now + talk, TALK_END, agent);
    }

    fn handle(&mut self, now: u64, kind: u8, index: usize) {
        match kind {
            RING_END => {
                let slot = self.calls[index].slot;
                self.ringing.swap_remove(slot);
                if let Some(&moved) = self.ringing.get(slot) {
                    self.calls[moved].slot = slot;
                }
                let call = &mut self.calls[index];
                let (placed_at, ring_ms, answered) = (call.placed_at, call.ring_ms, call.answered);
                self.observe(
                    now,
                    PacingEvent::RingEnded {
                        placed_at_ms: placed_at,
                        ring_ms,
                        answered,
                    },
                );
                let call = &mut self.calls[index];
                if !answered {
                    call.state = CallState::Done;
                    return;
                }
                call.answered_at = now;
                if let Some(agent) = self.ready.pop_front() {
                    self.connect(now, index, agent);
                } else {
                    self.calls[index].state = CallState::Waiting;
                    self.waiting.push_back(index);
                    self.waiting_count += 1;
                    self.at(now + self.cfg.abandon_after_ms, GIVE_UP, index);
                }
            }
            GIVE_UP => {
                if self.calls[index].state == CallState::Waiting {
                    self.calls[index].state = CallState::Done;
                    self.waiting_count -= 1;
                    let wait = now - self.calls[index].answered_at;
                    self.observe(now, PacingEvent::Abandoned { wait_ms: wait });
                    self.resolved(now, true);
                }
            }
            TALK_END => {
                let a = &mut self.agents[index];
                let (talk, wrap) = (a.talk_ms, a.wrap_ms);
                a.state = AgentState::WrapUp;
                a.since = now;
                self.talk_total += talk;
                self.observe(now, PacingEvent::TalkEnded { talk_ms: talk });
                self.at(now + wrap, WRAP_END, index);
            }
            _ => {
                let wrap = self.agents[index].wrap_ms;
                self.wrap_total += wrap;
                self.observe(now, PacingEvent::WrapEnded { wrap_ms: wrap });
                self.agents[index].state = AgentState::Ready;
                self.agents[index].since = now;
                while let Some(call) = self.waiting.pop_front() {
                    if self.calls[call].state == CallState::Waiting {
                        self.waiting_count -= 1;
                        self.connect(now, call, index);
                        return;
                    }
                }
                self.ready.push_back(index);
            }
        }
    }

    fn run_until(&mut self, t: u64) {
        while let Some(&Reverse((at, _, kind, index))) = self.events.peek() {
            if at > t {
                break;
            }
            self.events.pop();
            self.handle(at, kind, index);
        }
    }

    fn snapshot(&mut self, now: u64) {
        let c = self.cfg;
        let minutes =
            u64::from(c.start_hhmm / 100) * 60 + u64::from(c.start_hhmm % 100) + now / 60_000;
        let s = &mut self.snap;
        s.now_ms = now;
        s.clock_hhmm = ((minutes / 60 % 24) * 100 + minutes % 60) as u16;
        s.agents_logged_in = c.agents;
        s.agents_ready = self.ready.len() as u32;
        s.busy.clear();
        for a in &self.agents {
            let state = match a.state {
                AgentState::Ready => continue,
                AgentState::Talking => BusyState::Talking,
                AgentState::WrapUp => BusyState::WrapUp,
            };
            s.busy.push(BusyAgent {
                state,
                since_ms: a.since,
            });
        }
        s.ringing_since_ms.clear();
        s.ringing_since_ms
            .extend(self.ringing.iter().map(|&i| self.calls[i].placed_at));
        s.calls_waiting = self.waiting_count;
        let live = self.connected + self.abandoned;
        s.abandon = AbandonStats {
            live_today: live,
            abandoned_today: self.abandoned,
            live_30d: live + c.prior_30d.0,
            abandoned_30d: self.abandoned + c.prior_30d.1,
        };
        s.cap_pct = c.cap_pct;
    }
}

/// Runs one shift of `cfg` with `pacer`.
pub fn simulate(cfg: &SimConfig, pacer: &mut dyn DialPacer) -> SimReport {
    let name = pacer.name();
    let agents = cfg.agents as usize;
    let mut sim = Sim {
        cfg,
        pacer,
        rng: fastrand::Rng::with_seed(cfg.seed),
        events: BinaryHeap::new(),
        seq: 0,
        calls: Vec::new(),
        ringing: Vec::new(),
        waiting: VecDeque::new(),
        waiting_count: 0,
        agents: vec![
            Agent {
                state: AgentState::Ready,
                since: 0,
                talk_ms: 0,
                wrap_ms: 0,
            };
            agents
        ],
        ready: (0..agents).collect(),
        snap: PacingSnapshot::default(),
        placed: 0,
        connected: 0,
        abandoned: 0,
        talk_total: 0,
        wrap_total: 0,
        idle_total: 0,
        hour: VecDeque::new(),
        hour_abandoned: 0,
        worst_hour: 0.0,
        peak_day: 0.0,
    };
    let tick = cfg.tick_ms.max(1);
    let mut t = 0;
    while t < cfg.duration_ms {
        sim.run_until(t);
        sim.snapshot(t);
        let n = sim.pacer.calls_to_place(&sim.snap);
        for _ in 0..n {
            sim.place(t);
        }
        t += tick;
    }
    let end = cfg.duration_ms;
    sim.run_until(end);
    // Whatever is still under way counts up to the end of the shift.
    for a in &sim.agents {
        let spent = end.saturating_sub(a.since);
        match a.state {
            AgentState::Ready => sim.idle_total += spent,
            AgentState::Talking => sim.talk_total += spent,
            AgentState::WrapUp => sim.wrap_total += spent,
        }
    }
    let logged_in = (cfg.agents as f64 * end as f64).max(1.0);
    let live = sim.connected + sim.abandoned;
    SimReport {
        pacer: name,
        placed: sim.placed,
        live,
        connected: sim.connected,
        abandoned: sim.abandoned,
        occupancy_talk: sim.talk_total as f64 / logged_in,
        occupancy_handle: (sim.talk_total + sim.wrap_total) as f64 / logged_in,
        abandon_pct: if live == 0 {
            0.0
        } else {
            100.0 * sim.abandoned as f64 / live as f64
        },
        worst_hour_abandon_pct: 100.0 * sim.worst_hour,
        peak_day_abandon_pct: 100.0 * sim.peak_day,
        mean_agent_wait_s: sim.idle_total as f64 / 1_000.0 / sim.connected.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pacing::{Predictive, Progressive, Vicidial};

    fn short(agents: u32, answer: f64) -> SimConfig {
        let mut cfg = SimConfig::new(agents, answer, 60.0);
        cfg.duration_ms = 30 * 60_000;
        cfg
    }

    #[test]
    fn same_seed_same_shift() {
        let cfg = short(20, 0.3);
        assert_eq!(
            simulate(&cfg, &mut Vicidial::default()),
            simulate(&cfg, &mut Vicidial::default())
        );
        assert_eq!(
            simulate(&cfg, &mut Predictive::default()),
            simulate(&cfg, &mut Predictive::default())
        );
        let other = SimConfig {
            seed: 2,
            ..cfg.clone()
        };
        assert_ne!(
            simulate(&cfg, &mut Progressive::new(1.0)),
            simulate(&other, &mut Progressive::new(1.0))
        );
    }

    #[test]
    fn leads_are_the_same_for_every_pacer() {
        // Without drift, the n-th call's outcome does not depend on when it
        // is placed: two pacers that place the same number of calls see the
        // same answers.
        let mut cfg = short(5, 0.3);
        cfg.drift = 0.0;
        let mut a = fastrand::Rng::with_seed(cfg.seed);
        let mut b = fastrand::Rng::with_seed(cfg.seed);
        for _ in 0..1_000 {
            let (x, y) = (Lead::draw(&mut a), Lead::draw(&mut b));
            assert_eq!(x.u_answer.to_bits(), y.u_answer.to_bits());
            assert_eq!(x.z_talk.to_bits(), y.z_talk.to_bits());
        }
    }

    #[test]
    fn progressive_one_never_abandons_and_accounts_all_time() {
        let cfg = short(10, 0.3);
        let r = simulate(&cfg, &mut Progressive::new(1.0));
        assert_eq!(r.abandoned, 0);
        assert_eq!(r.live, r.connected);
        assert!(r.placed > r.live && r.live > 50, "{r:?}");
        assert!(r.occupancy_talk > 0.2 && r.occupancy_handle < 1.0, "{r:?}");
        assert!(r.mean_agent_wait_s > 0.0);
    }

    #[test]
    fn no_agents_no_calls() {
        let cfg = short(0, 0.3);
        for r in [
            simulate(&cfg, &mut Predictive::default()),
            simulate(&cfg, &mut Vicidial::default()),
        ] {
            assert_eq!(r.placed, 0);
            assert_eq!(r.abandon_pct, 0.0);
            assert_eq!(r.occupancy_talk, 0.0);
        }
    }
}
