//! Pacing: a token bucket per campaign and one for the deployment
//! (`DIALSTACK_MAX_CPS`), the weighted fair share that splits the
//! deployment's dials among running campaigns, and the dial pacers of
//! campaigns with agents. No I/O here.
//!
//! # Layout
//! - this file: [`Pacer`], the token bucket
//! - `share`: [`FairShare`]
//! - [`model`]: what a dial pacer sees ([`PacingSnapshot`]) and learns from
//!   ([`PacingObservation`]), the [`DialPacer`] trait, [`Progressive`]
//! - [`predictive`]: dialstack's [`Predictive`] pacer
//! - [`vicidial`]: VICIdial's adaptive pacer, the simulator's baseline
//! - [`sim`]: the seeded simulator that runs any [`DialPacer`]

use std::time::{Duration, Instant};

mod dist;
pub mod model;
pub mod predictive;
mod share;
pub mod sim;
pub mod vicidial;

pub use model::{
    AbandonStats, BusyAgent, BusyState, DialPacer, PacingEvent, PacingObservation, PacingSnapshot,
    Progressive, MAX_CALLS_PER_CYCLE,
};
pub use predictive::{Predictive, PredictiveConfig};
pub use share::FairShare;
pub use sim::{simulate, SimConfig, SimReport};
pub use vicidial::{DropMethod, Vicidial, VicidialConfig};

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
