//! Silences: label matchers with an expiry. An alert whose labels match
//! every matcher of a silence in force is not notified (its transitions are
//! still recorded).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rules::RuleError;

/// One matcher: label `name` equals (or, with `is_regex` false and
/// `negate`, differs from) `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Matcher {
    /// Label name (`alertname`, `severity`, `campaign`, `team`, ...).
    pub name: String,
    /// Value to compare with.
    pub value: String,
    /// Match when the label differs instead.
    #[serde(default)]
    pub negate: bool,
}

impl Matcher {
    /// Whether `labels` satisfy this matcher (a missing label is "").
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        (v == self.value) != self.negate
    }
}

/// Most matchers in one silence.
pub const MAX_MATCHERS: usize = 16;

/// Checks the matchers of a new silence.
pub fn validate(matchers: &[Matcher]) -> Result<(), RuleError> {
    let bad = |reason: &str| RuleError {
        field: "matchers",
        reason: reason.to_owned(),
    };
    if matchers.is_empty() || matchers.len() > MAX_MATCHERS {
        return Err(bad("must hold 1-16 matchers"));
    }
    for m in matchers {
        let ok = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
        if m.name.is_empty()
            || !ok(&m.name, 64)
            || !m
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad("name must be 1-64 letters, digits or _"));
        }
        if !ok(&m.value, 256) {
            return Err(bad("value must be at most 256 characters"));
        }
    }
    if matchers.iter().all(|m| m.negate) {
        return Err(bad("at least one matcher must be positive (not negate)"));
    }
    Ok(())
}

/// Whether every matcher matches `labels`.
pub fn silences(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    !matchers.is_empty() && matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, value: &str, negate: bool) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            negate,
        }
    }

    #[test]
    fn all_matchers_must_match() {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "CallFailureRateHigh".to_owned()),
            ("campaign".to_owned(), "k1".to_owned()),
        ]);
        assert!(silences(
            &[m("alertname", "CallFailureRateHigh", false)],
            &labels
        ));
        assert!(silences(
            &[
                m("alertname", "CallFailureRateHigh", false),
                m("campaign", "k2", true)
            ],
            &labels
        ));
        assert!(!silences(&[m("campaign", "k2", false)], &labels));
        assert!(!silences(&[m("team", "", true)], &labels));
        assert!(!silences(&[], &labels));
    }

    #[test]
    fn bad_matchers_are_refused() {
        assert!(validate(&[m("alertname", "x", false)]).is_ok());
        assert!(validate(&[]).is_err());
        assert!(validate(&[m("", "x", false)]).is_err());
        assert!(validate(&[m("a b", "x", false)]).is_err());
        assert!(validate(&[m("a", "x\n", false)]).is_err());
        assert!(
            validate(&[m("a", "x", true)]).is_err(),
            "silences everything"
        );
        assert!(validate(&vec![m("a", "x", false); 17]).is_err());
    }
}
