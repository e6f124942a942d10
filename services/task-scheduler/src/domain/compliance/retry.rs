//! Retry policy: per outcome, how many more tries and how long to wait.

use std::collections::BTreeMap;

use dialstack_contract::Outcome;
use serde::{Deserialize, Serialize};

/// One outcome's rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRule {
    /// Retries after this outcome (0-20).
    pub max_retries: u32,
    /// Wait before the first retry (seconds, 1-604800).
    pub delay_secs: u64,
    /// Each further retry waits this much longer (1.0-10.0, default 1.0: no
    /// backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
}

/// Retry rules by outcome (`no_answer`, `busy`, `failed`, `rejected`,
/// `answered_machine`). An outcome without a rule ends the lead; answered
/// calls (`amd_unsure` too: a person may have answered), abandoned calls
/// and cancellations always end it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct RetryPolicy(pub BTreeMap<String, RetryRule>);

/// Outcomes a policy may retry.
pub const RETRIABLE: &[Outcome] = &[
    Outcome::NoAnswer,
    Outcome::Busy,
    Outcome::Failed,
    Outcome::Rejected,
    Outcome::AnsweredMachine,
];

impl RetryPolicy {
    /// Validates every rule; Err is (field, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (outcome, rule) in &self.0 {
            let field = |f: &str| format!("retry_policy.{outcome}{f}");
            if !Outcome::parse(outcome).is_some_and(|o| RETRIABLE.contains(&o)) {
                return Err((
                    field(""),
                    "only no_answer, busy, failed, rejected and answered_machine can be retried"
                        .into(),
                ));
            }
            if rule.max_retries > 20 {
                return Err((field(".max_retries"), "must be 0-20".into()));
            }
            if !(1..=604_800).contains(&rule.delay_secs) {
                return Err((field(".delay_secs"), "must be 1-604800".into()));
            }
            if rule
                .backoff
                .is_some_and(|b| !(b.is_finite() && (1.0..=10.0).contains(&b)))
            {
                return Err((field(".backoff"), "must be 1.0-10.0".into()));
            }
        }
        Ok(())
    }

    /// The delay before the next try (ms) after `outcome`, given how many
    /// earlier attempts of this lead already ended with that outcome
    /// (`before`, not counting this one); `None` when the lead is done.
    pub fn next_delay_ms(&self, outcome: Outcome, before: u32) -> Option<i64> {
        let rule = self.0.get(outcome.as_str())?;
        if before >= rule.max_retries {
            return None;
        }
        let factor = rule.backoff.unwrap_or(1.0).powi(before as i32);
        let ms = (rule.delay_secs as f64 * 1000.0 * factor).min(30.0 * 86_400_000.0);
        Some(ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        serde_json::from_value(serde_json::json!({
            "no_answer": {"max_retries": 3, "delay_secs": 3600},
            "busy": {"max_retries": 5, "delay_secs": 600},
            "failed": {"max_retries": 2, "delay_secs": 60, "backoff": 2.0}
        }))
        .unwrap()
    }

    #[test]
    fn retries_count_per_outcome_with_backoff() {
        let p = policy();
        assert!(p.validate().is_ok());
        assert_eq!(p.next_delay_ms(Outcome::NoAnswer, 0), Some(3_600_000));
        assert_eq!(p.next_delay_ms(Outcome::NoAnswer, 2), Some(3_600_000));
        assert_eq!(p.next_delay_ms(Outcome::NoAnswer, 3), None);
        assert_eq!(p.next_delay_ms(Outcome::Failed, 0), Some(60_000));
        assert_eq!(p.next_delay_ms(Outcome::Failed, 1), Some(120_000));
        assert_eq!(p.next_delay_ms(Outcome::Failed, 2), None);
        assert_eq!(p.next_delay_ms(Outcome::AnsweredHuman, 0), None);
        assert_eq!(p.next_delay_ms(Outcome::Rejected, 0), None, "no rule");
    }

    #[test]
    fn bad_rules_name_their_field() {
        for (body, field) in [
            (
                serde_json::json!({"answered_human": {"max_retries": 1, "delay_secs": 5}}),
                "retry_policy.answered_human",
            ),
            // A person may have answered: the lead is done, as for
            // answered_human.
            (
                serde_json::json!({"amd_unsure": {"max_retries": 1, "delay_secs": 5}}),
                "retry_policy.amd_unsure",
            ),
            (
                serde_json::json!({"busy": {"max_retries": 21, "delay_secs": 5}}),
                "retry_policy.busy.max_retries",
            ),
            (
                serde_json::json!({"busy": {"max_retries": 1, "delay_secs": 0}}),
                "retry_policy.busy.delay_secs",
            ),
            (
                serde_json::json!({"busy": {"max_retries": 1, "delay_secs": 5, "backoff": 0.5}}),
                "retry_policy.busy.backoff",
            ),
            (
                serde_json::json!({"nope": {"max_retries": 1, "delay_secs": 5}}),
                "retry_policy.nope",
            ),
        ] {
            let p: RetryPolicy = serde_json::from_value(body).unwrap();
            assert_eq!(p.validate().unwrap_err().0, field);
        }
        let unknown: Result<RetryPolicy, _> = serde_json::from_value(
            serde_json::json!({"busy": {"max_retries": 1, "delay_secs": 5, "x": 1}}),
        );
        assert!(unknown.is_err());
    }
}
