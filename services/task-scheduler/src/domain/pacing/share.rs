//! Weighted fair share of a dial budget among campaigns, by virtual time.
//!
//! Each campaign has a virtual time that advances by `1 / weight` for every
//! dial it actually starts ([`FairShare::record`]). A round's budget goes,
//! one dial at a time, to the campaign that wants more and would finish its
//! next dial earliest in virtual time. So over many rounds two busy
//! campaigns of weights 3 and 1 get dials 3:1, however small each round's
//! budget, and a campaign that was given dials but could not start them
//! (its batch failed) is first in line afterwards: fairness follows the
//! dials made, not the dials promised. A campaign with nothing to dial does
//! not bank time: it is brought up to the others' pace when it records no
//! dial, and a campaign that joins starts at the slowest running one.

use std::collections::HashMap;

/// The virtual time of each campaign, carried between rounds.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    vt: HashMap<String, f64>,
    /// Campaigns that wanted nothing in the last split.
    idle: std::collections::HashSet<String>,
}

impl FairShare {
    /// A share with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pace of the campaigns in `wants` that have a history: the least
    /// virtual time among them.
    fn floor(&self, wants: &[(&str, u32, u64)]) -> f64 {
        wants
            .iter()
            .filter_map(|(id, _, _)| self.vt.get(*id).copied())
            .fold(f64::INFINITY, f64::min)
    }

    /// Splits `budget` dials among `wants`: `(campaign, weight, demand)`.
    /// Returns what each gets, in the order given; never more than its
    /// demand, and the sum never above `budget`. Campaigns no longer in
    /// `wants` are forgotten.
    pub fn split(&mut self, budget: u64, wants: &[(&str, u32, u64)]) -> Vec<u64> {
        self.vt
            .retain(|id, _| wants.iter().any(|(w, _, _)| w == id));
        let floor = self.floor(wants);
        let floor = if floor.is_finite() { floor } else { 0.0 };
        for (id, _, _) in wants {
            self.vt.entry((*id).to_owned()).or_insert(floor);
        }
        // A campaign that wanted nothing (its own pace or concurrency held
        // it) banks no time: when it wants again it starts at the pace of
        // those that were busy meanwhile.
        let busy = wants
            .iter()
            .filter(|(id, w, d)| *w > 0 && *d > 0 && !self.idle.contains(*id))
            .map(|(id, _, _)| self.vt[*id])
            .fold(f64::INFINITY, f64::min);
        if busy.is_finite() {
            for (id, _, d) in wants {
                if *d == 0 || self.idle.contains(*id) {
                    if let Some(v) = self.vt.get_mut(*id) {
                        *v = v.max(busy);
                    }
                }
            }
        }
        self.idle = wants
            .iter()
            .filter(|(_, _, d)| *d == 0)
            .map(|(id, _, _)| (*id).to_owned())
            .collect();
        let mut given = vec![0u64; wants.len()];
        let mut vt: Vec<f64> = wants.iter().map(|(id, _, _)| self.vt[*id]).collect();
        for _ in 0..budget {
            let next = (0..wants.len())
                .filter(|&i| wants[i].1 > 0 && given[i] < wants[i].2)
                .min_by(|&a, &b| {
                    let fa = vt[a] + 1.0 / f64::from(wants[a].1);
                    let fb = vt[b] + 1.0 / f64::from(wants[b].1);
                    fa.total_cmp(&fb).then(a.cmp(&b))
                });
            let Some(i) = next else { break };
            given[i] += 1;
            vt[i] += 1.0 / f64::from(wants[i].1);
        }
        given
    }

    /// Records the dials a campaign of `weight` actually started of the
    /// `given` it was offered. A campaign that was offered dials and started
    /// none (nothing was due) is brought up to the slowest of the others, so
    /// idle time is not banked.
    pub fn record(&mut self, campaign: &str, weight: u32, given: u64, dialed: u64) {
        if given == 0 {
            return;
        }
        if dialed == 0 {
            let others = self
                .vt
                .iter()
                .filter(|(id, _)| id.as_str() != campaign)
                .map(|(_, v)| *v)
                .fold(f64::INFINITY, f64::min);
            if let Some(v) = self.vt.get_mut(campaign) {
                if others.is_finite() && *v < others {
                    *v = others;
                }
            }
            return;
        }
        if weight == 0 {
            return;
        }
        *self.vt.entry(campaign.to_owned()).or_insert(0.0) += dialed as f64 / f64::from(weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits and records as the dispatcher does when every dial starts.
    fn round(s: &mut FairShare, budget: u64, wants: &[(&str, u32, u64)]) -> Vec<u64> {
        let g = s.split(budget, wants);
        for ((id, w, _), n) in wants.iter().zip(&g) {
            s.record(id, *w, *n, *n);
        }
        g
    }

    #[test]
    fn weights_hold_over_many_small_rounds() {
        let mut s = FairShare::new();
        let mut got = [0u64; 2];
        for r in 0..1_000u64 {
            let budget = 1 + r % 3;
            let g = round(&mut s, budget, &[("a", 3, 1_000), ("b", 1, 1_000)]);
            assert!(g[0] + g[1] <= budget);
            got[0] += g[0];
            got[1] += g[1];
        }
        let ratio = got[0] as f64 / got[1] as f64;
        assert!((ratio - 3.0).abs() < 0.03, "{got:?}");
        assert_eq!(
            got[0] + got[1],
            (0..1_000u64).map(|r| 1 + r % 3).sum::<u64>()
        );
    }

    #[test]
    fn unused_share_goes_to_the_others() {
        let mut s = FairShare::new();
        let g = round(&mut s, 10, &[("a", 1, 2), ("b", 1, 100)]);
        assert_eq!(g, vec![2, 8]);
        let g = round(&mut s, 10, &[("a", 1, 0), ("b", 1, 100)]);
        assert_eq!(g, vec![0, 10]);
        // Idle time is not banked: a returns at b's pace, not ahead of it.
        let g = round(&mut s, 10, &[("a", 1, 100), ("b", 1, 100)]);
        assert_eq!(g, vec![5, 5]);
        assert_eq!(s.split(10, &[("a", 1, 0)]), vec![0]);
        assert_eq!(s.split(0, &[("a", 1, 5)]), vec![0]);
    }

    #[test]
    fn dials_not_started_are_owed() {
        let mut s = FairShare::new();
        let wants = [("a", 1, 100), ("b", 1, 100)];
        let g = s.split(4, &wants);
        assert_eq!(g, vec![2, 2]);
        // a's batch was written, b's failed: b is first in line next.
        s.record("a", 1, 2, 2);
        let g = round(&mut s, 2, &wants);
        assert_eq!(g, vec![0, 2]);
    }

    #[test]
    fn a_weight_of_zero_gets_nothing_and_demand_is_a_ceiling() {
        let mut s = FairShare::new();
        assert_eq!(s.split(5, &[("a", 0, 5), ("b", 2, 3)]), vec![0, 3]);
        for budget in 0..50 {
            let g = round(&mut s, budget, &[("a", 7, 4), ("b", 1, 9), ("c", 2, 1)]);
            assert!(g[0] <= 4 && g[1] <= 9 && g[2] <= 1);
            assert_eq!(g.iter().sum::<u64>(), budget.min(14));
        }
    }

    #[test]
    fn a_newcomer_starts_at_the_pace_of_the_others() {
        let mut s = FairShare::new();
        for _ in 0..100 {
            round(&mut s, 10, &[("a", 1, 100)]);
        }
        let g = round(&mut s, 10, &[("a", 1, 100), ("b", 1, 100)]);
        assert_eq!(
            g,
            vec![5, 5],
            "b does not get a thousand dials of catching up"
        );
    }
}
