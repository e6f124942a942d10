//! Weighted fair share of a dial budget among campaigns.
//!
//! Each round the budget is offered to the campaigns that still want dials,
//! in proportion to their weight. What a campaign is owed but could not be
//! given (a fraction of a dial) is kept as credit and paid in a later round,
//! so over many rounds two campaigns of weights 3 and 1 that both want more
//! than their share get dials 3:1 exactly, however small each round's budget.
//! A campaign that wants less than its share leaves the rest to the others
//! (work conserving) and does not bank credit for it.

use std::collections::HashMap;

/// The share state carried between rounds: credit per campaign.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    credit: HashMap<String, f64>,
}

impl FairShare {
    /// A share with no credit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits `budget` dials among `wants`: `(campaign, weight, demand)`.
    /// Returns what each gets, in the order given; never more than its
    /// demand, and the sum never above `budget`.
    pub fn split(&mut self, budget: u64, wants: &[(&str, u32, u64)]) -> Vec<u64> {
        let mut given = vec![0u64; wants.len()];
        self.credit
            .retain(|id, _| wants.iter().any(|(w, _, d)| w == id && *d > 0));
        let mut left = budget;
        loop {
            let active: Vec<usize> = (0..wants.len())
                .filter(|&i| wants[i].2 > given[i] && wants[i].1 > 0)
                .collect();
            if left == 0 || active.is_empty() {
                break;
            }
            let total: f64 = active.iter().map(|&i| f64::from(wants[i].1)).sum();
            let round = left as f64;
            let mut handed = 0u64;
            // The most owed first, so that a budget too small for everyone
            // pays old debts before new shares.
            let mut owed_by: Vec<(usize, f64)> = active
                .iter()
                .map(|&i| {
                    let (id, weight, _) = wants[i];
                    let o = round * f64::from(weight) / total
                        + self.credit.get(id).copied().unwrap_or(0.0);
                    (i, o)
                })
                .collect();
            owed_by.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (i, owed) in owed_by {
                let (id, _, demand) = wants[i];
                let room = demand - given[i];
                let whole = (owed.floor().max(0.0) as u64).min(room).min(left - handed);
                given[i] += whole;
                handed += whole;
                let rest = owed - whole as f64;
                if given[i] == demand {
                    // Satisfied: nothing is owed for dials it did not want.
                    self.credit.remove(id);
                } else {
                    self.credit.insert(id.to_owned(), rest);
                }
            }
            left -= handed;
            if handed == 0 {
                // Only fractions are owed: the most-owed campaign gets one.
                let best = active
                    .iter()
                    .copied()
                    .max_by(|&a, &b| {
                        let ca = self.credit.get(wants[a].0).copied().unwrap_or(0.0);
                        let cb = self.credit.get(wants[b].0).copied().unwrap_or(0.0);
                        ca.total_cmp(&cb).then(b.cmp(&a))
                    })
                    .unwrap_or(active[0]);
                given[best] += 1;
                left -= 1;
                if let Some(c) = self.credit.get_mut(wants[best].0) {
                    *c -= 1.0;
                }
                if given[best] == wants[best].2 {
                    self.credit.remove(wants[best].0);
                }
            }
        }
        given
    }

    /// Gives back `n` dials a campaign was given but could not start (its
    /// batch failed to write): it is owed them in the next rounds.
    pub fn refund(&mut self, campaign: &str, n: u64) {
        *self.credit.entry(campaign.to_owned()).or_insert(0.0) += n as f64;
    }

    /// Returns dials a campaign was given but did not use (no lead was
    /// eligible): they are not owed again.
    pub fn unused(&mut self, campaign: &str) {
        self.credit.remove(campaign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_hold_over_many_small_rounds() {
        let mut s = FairShare::new();
        let mut got = [0u64; 2];
        for round in 0..1_000u64 {
            let budget = 1 + round % 3;
            let g = s.split(budget, &[("a", 3, 1_000), ("b", 1, 1_000)]);
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
        let g = s.split(10, &[("a", 1, 2), ("b", 1, 100)]);
        assert_eq!(g, vec![2, 8]);
        let g = s.split(10, &[("a", 1, 0), ("b", 1, 100)]);
        assert_eq!(g, vec![0, 10]);
        // Nobody wants anything: nothing is handed out.
        assert_eq!(s.split(10, &[("a", 1, 0)]), vec![0]);
        assert_eq!(s.split(0, &[("a", 1, 5)]), vec![0]);
    }

    #[test]
    fn a_refund_is_paid_back_first() {
        let mut s = FairShare::new();
        let g = s.split(4, &[("a", 1, 100), ("b", 1, 100)]);
        assert_eq!(g, vec![2, 2]);
        s.refund("b", 2);
        // b is owed its two back on top of its half.
        let g = s.split(4, &[("a", 1, 100), ("b", 1, 100)]);
        assert_eq!(g[0] + g[1], 4);
        assert!(g[1] > g[0], "{g:?}");
    }

    #[test]
    fn a_weight_of_zero_gets_nothing_and_demand_is_a_ceiling() {
        let mut s = FairShare::new();
        assert_eq!(s.split(5, &[("a", 0, 5), ("b", 2, 3)]), vec![0, 3]);
        for budget in 0..50 {
            let g = s.split(budget, &[("a", 7, 4), ("b", 1, 9), ("c", 2, 1)]);
            assert!(g[0] <= 4 && g[1] <= 9 && g[2] <= 1);
            assert_eq!(g.iter().sum::<u64>(), budget.min(14));
        }
    }
}
