//! Loss as the listener hears it: one outcome per played 20 ms frame slot
//! (played, or concealed because the packet was lost or came too late), and
//! how bursty that loss is.

/// Outcomes of the frame slots the jitter buffer played out.
///
/// The burst ratio follows ITU-T G.113 Appendix I (Clark): the mean length
/// of the observed loss bursts over the mean burst length random loss at
/// the same rate would give, `1 / (1 - p)`. Equivalently, with a two-state
/// Markov model of loss, `1 / (p_found→lost + p_lost→found)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossPattern {
    /// Slots recorded.
    slots: u64,
    /// Slots concealed.
    lost: u64,
    /// Runs of consecutive concealed slots.
    bursts: u64,
    /// Whether the previous slot was concealed.
    previous_lost: bool,
}

impl LossPattern {
    /// No slots yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One played frame slot: `lost` when it had to be concealed (the
    /// packet never came, or came after its playout time).
    pub fn record(&mut self, lost: bool) {
        self.slots += 1;
        if lost {
            self.lost += 1;
            if !self.previous_lost {
                self.bursts += 1;
            }
        }
        self.previous_lost = lost;
    }

    /// Slots recorded.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Slots concealed.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Concealed slots over recorded slots, 0 to 1 (0 before any slot).
    pub fn loss_ratio(&self) -> f64 {
        if self.slots == 0 {
            return 0.0;
        }
        self.lost as f64 / self.slots as f64
    }

    /// BurstR: 1 for random loss (and when nothing, or everything, was
    /// lost, where burstiness means nothing), above 1 for bursty loss,
    /// below 1 for loss sparser than random (e.g. every other slot).
    pub fn burst_ratio(&self) -> f64 {
        if self.lost == 0 || self.lost == self.slots || self.bursts == 0 {
            return 1.0;
        }
        let p = self.loss_ratio();
        let mean_burst = self.lost as f64 / self.bursts as f64;
        mean_burst * (1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(outcomes: impl IntoIterator<Item = bool>) -> LossPattern {
        let mut p = LossPattern::new();
        for lost in outcomes {
            p.record(lost);
        }
        p
    }

    #[test]
    fn no_slots_and_no_loss_are_neutral() {
        assert_eq!(LossPattern::new().loss_ratio(), 0.0);
        assert_eq!(LossPattern::new().burst_ratio(), 1.0);
        let clean = pattern([false; 500]);
        assert_eq!((clean.loss_ratio(), clean.burst_ratio()), (0.0, 1.0));
        let all = pattern([true; 50]);
        assert_eq!((all.loss_ratio(), all.burst_ratio()), (1.0, 1.0));
    }

    #[test]
    fn hand_computed_burst_ratio() {
        // 100 slots, two bursts of 5: p = 0.1, mean burst 5, random would be 1/0.9.
        let p = pattern((0..100).map(|i| (10..15).contains(&i) || (60..65).contains(&i)));
        assert!((p.loss_ratio() - 0.1).abs() < 1e-12);
        assert!((p.burst_ratio() - 4.5).abs() < 1e-12);
        // Every other slot: sparser than random.
        let alternating = pattern((0..100).map(|i| i % 2 == 0));
        assert!((alternating.burst_ratio() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn random_loss_has_burst_ratio_one() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0002);
        for rate in [0.01, 0.05, 0.2] {
            let p = pattern((0..1_000_000).map(|_| rng.f64() < rate));
            assert!((p.loss_ratio() - rate).abs() < rate * 0.05, "rate {rate}");
            assert!(
                (p.burst_ratio() - 1.0).abs() < 0.05,
                "rate {rate}: {}",
                p.burst_ratio()
            );
        }
    }

    #[test]
    fn gilbert_loss_has_the_model_burst_ratio() {
        // Two-state Markov loss: found→lost 1 %, lost→found 25 %. BurstR = 1/(p+q) = 3.846.
        let (p_fl, q_lf) = (0.01, 0.25);
        let mut rng = fastrand::Rng::with_seed(0x5eed_0003);
        let mut lost = false;
        let mut slots = LossPattern::new();
        for _ in 0..2_000_000 {
            lost = if lost {
                rng.f64() >= q_lf
            } else {
                rng.f64() < p_fl
            };
            slots.record(lost);
        }
        let want = 1.0 / (p_fl + q_lf);
        assert!(
            (slots.burst_ratio() - want).abs() < 0.1,
            "{}",
            slots.burst_ratio()
        );
        assert!((slots.loss_ratio() - p_fl / (p_fl + q_lf)).abs() < 0.003);
    }
}
