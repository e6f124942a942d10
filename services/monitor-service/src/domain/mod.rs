//! Pure rules of monitor-service: what counts as a failed call, what an
//! alert rule says, how an alert moves through its life, which silences
//! hold it back, and how agents are counted by state. No axum, sqlx or
//! broker types here.
//!
//! # Layout
//! - this module: the failure definition and windowed call counts
//! - [`agents`]: agent states from `agent.state`, counted per team
//! - [`rules`]: alert rules as data, validated field by field
//! - [`channel`]: notification channels as data (secrets by variable name)
//! - [`lifecycle`]: pending → firing → resolved, and when to notify
//! - [`silence`]: label matchers of silences and inhibitions

pub mod agents;
pub mod channel;
pub mod lifecycle;
pub mod rules;
pub mod silence;

use std::collections::BTreeMap;

use dialstack_contract::Outcome;

// The one definition of a failure lives in the contract, so media-processor
// (its per-instance counters, for the canary gate) and monitor-service agree.
pub use dialstack_contract::{is_failure, SIP_DECLINE};

/// Most campaigns with a `campaign` label of their own on the call
/// counters per process; calls of later campaigns count under `other`, so
/// a deployment that runs campaigns for years keeps a bounded number of
/// series (the database keeps every campaign's counts for the engine).
pub const MAX_CAMPAIGN_LABELS: usize = 500;

/// A bounded set of label values: the first `max` distinct values keep
/// their own label, later ones share `other`.
#[derive(Debug)]
pub struct LabelCap {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    max: usize,
}

impl LabelCap {
    /// A cap of `max` values.
    pub fn new(max: usize) -> Self {
        Self {
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            max,
        }
    }

    /// The label for `value`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        "other".to_owned()
    }
}

/// MOS below this is a poor call for the voice-quality rule ("good" starts
/// at 3.7; 3.6 is a bucket bound of `dialstack_call_mos`).
pub const POOR_MOS: f64 = 3.6;

/// Completed calls of one campaign in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// By outcome name.
    pub by_outcome: BTreeMap<String, i64>,
    /// Failures ([`is_failure`]).
    pub failures: i64,
    /// Calls with a MOS measurement.
    pub measured: i64,
    /// Measured calls with MOS below [`POOR_MOS`].
    pub poor_mos: i64,
}

impl Counts {
    /// All completed calls.
    pub fn total(&self) -> i64 {
        self.by_outcome.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        for (o, n) in &other.by_outcome {
            *self.by_outcome.entry(o.clone()).or_default() += n;
        }
        self.failures += other.failures;
        self.measured += other.measured;
        self.poor_mos += other.poor_mos;
    }

    /// Failures over completed calls; 0 when there were none.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.total())
    }

    /// Abandoned over live-answered calls (abandoned ones included, as
    /// regulators count them); 0 when none were answered by a person.
    pub fn abandon_ratio(&self) -> f64 {
        let n = |o: Outcome| self.by_outcome.get(o.as_str()).copied().unwrap_or(0);
        let abandoned = n(Outcome::Abandoned);
        ratio(abandoned, n(Outcome::AnsweredHuman) + abandoned)
    }

    /// Share of measured calls with a poor MOS; 0 when none were measured.
    pub fn poor_mos_ratio(&self) -> f64 {
        ratio(self.poor_mos, self.measured)
    }
}

fn ratio(n: i64, d: i64) -> f64 {
    if d > 0 {
        n as f64 / d as f64
    } else {
        0.0
    }
}

/// Counts of one campaign (with its team), as read from the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignCounts {
    /// The campaign.
    pub campaign_id: String,
    /// Its team, when the calls carried one.
    pub team: Option<String>,
    /// The counts.
    pub counts: Counts,
}

#[cfg(test)]
mod tests {

    #[test]
    fn campaign_labels_are_capped_and_later_ones_share_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), "other");
        assert_eq!(cap.label("a"), "a", "an admitted value keeps its label");
        for i in 0..10_000 {
            assert_eq!(cap.label(&format!("k{i}")), "other");
        }
        assert_eq!(cap.seen.lock().unwrap().len(), 2, "memory stays bounded");
    }

    use super::*;

    #[test]
    fn only_the_systems_and_the_networks_faults_are_failures() {
        for o in Outcome::ALL {
            let expected = matches!(o, Outcome::Failed | Outcome::Rejected);
            assert_eq!(is_failure(*o, None), expected, "{o}");
        }
        assert!(is_failure(Outcome::Rejected, Some(403)));
        assert!(is_failure(Outcome::Rejected, Some(404)));
        assert!(is_failure(Outcome::Rejected, Some(604)));
        assert!(!is_failure(Outcome::Rejected, Some(603)), "decline");
        assert!(!is_failure(Outcome::Busy, Some(486)));
        assert!(!is_failure(Outcome::Busy, Some(600)));
        assert!(!is_failure(Outcome::NoAnswer, Some(480)));
        assert!(is_failure(Outcome::Failed, Some(503)));
    }

    #[test]
    fn ratios_over_a_window() {
        let mut c = Counts::default();
        assert_eq!(
            (c.failure_rate(), c.abandon_ratio(), c.poor_mos_ratio()),
            (0.0, 0.0, 0.0)
        );
        c.by_outcome.insert("answered_human".into(), 6);
        c.by_outcome.insert("busy".into(), 2);
        c.by_outcome.insert("failed".into(), 1);
        c.by_outcome.insert("abandoned".into(), 2);
        c.failures = 1;
        c.measured = 4;
        c.poor_mos = 1;
        assert_eq!(c.total(), 11);
        assert!((c.failure_rate() - 1.0 / 11.0).abs() < 1e-12);
        assert!((c.abandon_ratio() - 0.25).abs() < 1e-12);
        assert!((c.poor_mos_ratio() - 0.25).abs() < 1e-12);
        let mut sum = c.clone();
        sum.add(&c);
        assert_eq!(sum.total(), 22);
        assert_eq!(sum.failures, 2);
    }
}
