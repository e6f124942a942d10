//! What counts as a failed call, and the failure rate.

use std::collections::BTreeMap;

use dialstack_contract::Outcome;

/// Outcomes that count as failures for the failure-rate alert: the network or
/// the callee refused the call or it broke (`busy`, `rejected`, `failed`).
/// Unanswered (`no_answer`), `canceled` and `abandoned` calls are not network
/// failures and are tracked by their own counters.
pub fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::Busy | Outcome::Rejected | Outcome::Failed)
}

/// Failed calls over completed calls; 0 when there were none.
pub fn failure_rate(by_outcome: &BTreeMap<String, i64>) -> (i64, i64, f64) {
    let total: i64 = by_outcome.values().sum();
    let failures: i64 = by_outcome
        .iter()
        .filter(|(o, _)| Outcome::parse(o).is_some_and(is_failure))
        .map(|(_, n)| n)
        .sum();
    let rate = if total > 0 {
        failures as f64 / total as f64
    } else {
        0.0
    };
    (total, failures, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_refusals_and_faults_only() {
        let mut m = BTreeMap::new();
        assert_eq!(failure_rate(&m), (0, 0, 0.0));
        m.insert("answered_human".to_owned(), 6);
        m.insert("busy".to_owned(), 2);
        m.insert("failed".to_owned(), 1);
        m.insert("no_answer".to_owned(), 1);
        assert_eq!(failure_rate(&m), (10, 3, 0.3));
    }
}
