//! Alert rules as data: a condition over monitor-service's own counters,
//! how long it must hold, who hears about it. Rules arrive as JSON objects
//! (`POST`/`PATCH /v1/alert-rules`) and are read here field by field, so a
//! bad rule is refused with the name of the field at fault.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::CampaignCounts;

/// A rule that breaks the rules; `field` names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RuleError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError {
        field,
        reason: reason.into(),
    }
}

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Failures over completed calls in the window (see
    /// [`super::is_failure`]); needs `min_calls` completed calls.
    FailureRate,
    /// Share of measured calls with MOS below 3.6; needs `min_calls`
    /// measured calls.
    PoorMosRatio,
    /// Abandoned over live-answered calls; needs `min_calls` answered calls.
    AbandonRatio,
    /// Calls completed in the window, judged only while calls are in
    /// progress (campaigns running): "nothing completes any more".
    CompletedCalls,
    /// Events waiting in monitor-service's own queue.
    ConsumerLag,
}

impl Metric {
    const ALL: &'static [(Metric, &'static str)] = &[
        (Metric::FailureRate, "failure_rate"),
        (Metric::PoorMosRatio, "poor_mos_ratio"),
        (Metric::AbandonRatio, "abandon_ratio"),
        (Metric::CompletedCalls, "completed_calls"),
        (Metric::ConsumerLag, "consumer_lag"),
    ];

    /// The name in rules.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("", |(_, s)| s)
    }

    /// Parses the name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(m, _)| *m)
    }

    fn is_ratio(self) -> bool {
        matches!(
            self,
            Metric::FailureRate | Metric::PoorMosRatio | Metric::AbandonRatio
        )
    }
}

/// How the value compares with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Above,
    /// `<`
    Below,
}

impl Op {
    /// `>` or `<`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Above => ">",
            Op::Below => "<",
        }
    }

    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Above => value > threshold,
            Op::Below => value < threshold,
        }
    }
}

/// Label names a rule may filter and label its alerts by.
pub const RULE_LABELS: &[&str] = &["campaign", "team"];
/// Severities, most urgent first.
pub const SEVERITIES: &[&str] = &["page", "warn", "info"];

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name; the `alertname` label of its alerts.
    pub name: String,
    /// What it measures.
    pub metric: Metric,
    /// Comparison.
    pub op: Op,
    /// Threshold (a ratio 0-1 for ratio metrics).
    pub threshold: f64,
    /// Window the counters are read over (ms).
    pub window_ms: i64,
    /// How long the condition must hold before the alert fires (ms).
    pub for_ms: i64,
    /// Smallest sample a ratio is judged on.
    pub min_calls: i64,
    /// `page`, `warn` or `info`.
    pub severity: String,
    /// `campaign` and/or `team`: only those calls, and labels of the alerts.
    pub labels: BTreeMap<String, String>,
    /// One alert per campaign instead of one overall.
    pub group_by_campaign: bool,
    /// Channel ids to notify; empty means every channel.
    pub channels: Vec<String>,
    /// How often a firing alert is notified again (ms).
    pub repeat_ms: i64,
    /// Evaluated at all.
    pub enabled: bool,
    /// While an alert of this rule fires, notifications of alerts with a
    /// `campaign` label are held back (a service-down alert explains them).
    pub inhibits_campaign_alerts: bool,
}

/// Limits that keep one rule small.
const MAX_NAME: usize = 128;
const MAX_CHANNELS: usize = 16;

fn duration(field: &'static str, v: &Value, min_ms: i64, max_ms: i64) -> Result<i64, RuleError> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(field, "must be a duration such as \"5m\""))?;
    let d = humantime::parse_duration(s).map_err(|e| {
        bad(
            field,
            format!("not a duration ({e}); use e.g. \"90s\" or \"5m\""),
        )
    })?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if !(min_ms..=max_ms).contains(&ms) {
        return Err(bad(
            field,
            format!(
                "must be {} to {}",
                humantime::format_duration(std::time::Duration::from_millis(min_ms as u64)),
                humantime::format_duration(std::time::Duration::from_millis(max_ms as u64))
            ),
        ));
    }
    Ok(ms)
}

fn text(field: &'static str, v: &Value, max: usize) -> Result<String, RuleError> {
    let s = v.as_str().ok_or_else(|| bad(field, "must be a string"))?;
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(bad(
            field,
            format!("must be 1-{max} characters without control characters"),
        ));
    }
    Ok(s.to_owned())
}

fn boolean(field: &'static str, v: &Value) -> Result<bool, RuleError> {
    v.as_bool()
        .ok_or_else(|| bad(field, "must be true or false"))
}

const DAY_MS: i64 = 86_400_000;

impl Rule {
    /// Reads a rule from a JSON object. Fields: `name`, `metric`, `op`
    /// (`>` default, or `<`), `threshold`, `window` (default `5m`), `for`
    /// (default `0s`), `min_calls` (default 20), `severity` (default
    /// `warn`), `labels`, `group_by` (`[]` or `["campaign"]`), `channels`,
    /// `repeat_interval` (default `4h`), `enabled` (default true),
    /// `inhibits_campaign_alerts` (default false). Unknown fields are refused.
    pub fn from_json(v: &Value) -> Result<Self, RuleError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        const KNOWN: &[&str] = &[
            "name",
            "metric",
            "op",
            "threshold",
            "window",
            "for",
            "min_calls",
            "severity",
            "labels",
            "group_by",
            "channels",
            "repeat_interval",
            "enabled",
            "inhibits_campaign_alerts",
        ];
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(RuleError {
                field: "body",
                reason: format!("unknown field {k:?}"),
            });
        }
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let name = text(
            "name",
            get("name").ok_or_else(|| bad("name", "is required"))?,
            MAX_NAME,
        )?;
        let metric_name = get("metric")
            .ok_or_else(|| bad("metric", "is required"))?
            .as_str()
            .ok_or_else(|| bad("metric", "must be a string"))?;
        let metric = Metric::parse(metric_name).ok_or_else(|| {
            bad(
                "metric",
                format!(
                    "unknown metric {metric_name:?}; known: {}",
                    Metric::ALL
                        .iter()
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let op = match get("op").map(|v| v.as_str()) {
            None | Some(Some(">")) => Op::Above,
            Some(Some("<")) => Op::Below,
            _ => return Err(bad("op", "must be \">\" or \"<\"")),
        };
        let threshold = get("threshold")
            .ok_or_else(|| bad("threshold", "is required"))?
            .as_f64()
            .filter(|t| t.is_finite())
            .ok_or_else(|| bad("threshold", "must be a number"))?;
        if metric.is_ratio() && !(0.0..=1.0).contains(&threshold) {
            return Err(bad(
                "threshold",
                "must be a ratio from 0 to 1 for this metric",
            ));
        }
        if !metric.is_ratio() && !(0.0..=1e9).contains(&threshold) {
            return Err(bad("threshold", "must be 0 to 1e9"));
        }
        let window_ms = match get("window") {
            Some(v) => duration("window", v, 10_000, DAY_MS)?,
            None => 300_000,
        };
        let for_ms = match get("for") {
            Some(v) => duration("for", v, 0, DAY_MS)?,
            None => 0,
        };
        let min_calls = match get("min_calls") {
            Some(v) => v
                .as_i64()
                .filter(|n| (0..=1_000_000).contains(n))
                .ok_or_else(|| bad("min_calls", "must be an integer 0-1000000"))?,
            None => 20,
        };
        let severity = match get("severity") {
            Some(v) => {
                let s = v.as_str().unwrap_or_default();
                if !SEVERITIES.contains(&s) {
                    return Err(bad("severity", "must be page, warn or info"));
                }
                s.to_owned()
            }
            None => "warn".to_owned(),
        };
        let mut labels = BTreeMap::new();
        if let Some(v) = get("labels") {
            let m = v
                .as_object()
                .ok_or_else(|| bad("labels", "must be an object of strings"))?;
            for (k, v) in m {
                if !RULE_LABELS.contains(&k.as_str()) {
                    return Err(bad(
                        "labels",
                        format!("unknown label {k:?}; known: campaign, team"),
                    ));
                }
                labels.insert(k.clone(), text("labels", v, 64)?);
            }
        }
        let group_by_campaign = match get("group_by") {
            None => false,
            Some(v) => match v.as_array().map(|a| a.as_slice()) {
                Some([]) => false,
                Some([c]) if c.as_str() == Some("campaign") => true,
                _ => return Err(bad("group_by", "must be [] or [\"campaign\"]")),
            },
        };
        if group_by_campaign && !metric.is_ratio() {
            return Err(bad(
                "group_by",
                "only ratio metrics can be grouped by campaign",
            ));
        }
        let mut channels = Vec::new();
        if let Some(v) = get("channels") {
            let a = v
                .as_array()
                .ok_or_else(|| bad("channels", "must be a list of channel ids"))?;
            if a.len() > MAX_CHANNELS {
                return Err(bad("channels", format!("at most {MAX_CHANNELS}")));
            }
            for c in a {
                let id = text("channels", c, 36)?;
                if !channels.contains(&id) {
                    channels.push(id);
                }
            }
        }
        let repeat_ms = match get("repeat_interval") {
            Some(v) => duration("repeat_interval", v, 60_000, 7 * DAY_MS)?,
            None => 4 * 3_600_000,
        };
        let enabled = get("enabled")
            .map(|v| boolean("enabled", v))
            .transpose()?
            .unwrap_or(true);
        let inhibits_campaign_alerts = get("inhibits_campaign_alerts")
            .map(|v| boolean("inhibits_campaign_alerts", v))
            .transpose()?
            .unwrap_or(false);
        Ok(Self {
            name,
            metric,
            op,
            threshold,
            window_ms,
            for_ms,
            min_calls,
            severity,
            labels,
            group_by_campaign,
            channels,
            repeat_ms,
            enabled,
            inhibits_campaign_alerts,
        })
    }

    /// The rule as the JSON object [`Rule::from_json`] reads.
    pub fn to_json(&self) -> Value {
        let d = |ms: i64| {
            humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
                .to_string()
        };
        json!({
            "name": self.name,
            "metric": self.metric.as_str(),
            "op": self.op.as_str(),
            "threshold": self.threshold,
            "window": d(self.window_ms),
            "for": d(self.for_ms),
            "min_calls": self.min_calls,
            "severity": self.severity,
            "labels": self.labels,
            "group_by": if self.group_by_campaign { vec!["campaign"] } else { vec![] },
            "channels": self.channels,
            "repeat_interval": d(self.repeat_ms),
            "enabled": self.enabled,
            "inhibits_campaign_alerts": self.inhibits_campaign_alerts,
        })
    }

    /// `base` with the fields of `patch` replaced (a JSON merge at the top
    /// level), read as a rule.
    pub fn patched(&self, patch: &Value) -> Result<Self, RuleError> {
        let p = patch
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        let mut merged: Map<String, Value> = match self.to_json() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (k, v) in p {
            merged.insert(k.clone(), v.clone());
        }
        Self::from_json(&Value::Object(merged))
    }

    /// The seed's rule: more than 5 % of calls failed over 5 minutes, with
    /// at least 20 calls, to every channel.
    pub fn seed() -> Self {
        Self {
            name: SEED_RULE.to_owned(),
            metric: Metric::FailureRate,
            op: Op::Above,
            threshold: 0.05,
            window_ms: 300_000,
            for_ms: 0,
            min_calls: 20,
            severity: "page".to_owned(),
            labels: BTreeMap::new(),
            group_by_campaign: false,
            channels: Vec::new(),
            repeat_ms: 4 * 3_600_000,
            enabled: true,
            inhibits_campaign_alerts: false,
        }
    }
}

/// Name of the rule every fresh database starts with.
pub const SEED_RULE: &str = "CallFailureRateHigh";

/// What a rule sees when it is evaluated.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// Completed calls in the rule's window, per campaign.
    pub counts: &'a [CampaignCounts],
    /// Calls in progress now.
    pub active_calls: i64,
    /// Events waiting in the service's queue.
    pub consumer_lag: i64,
}

/// One evaluation of a rule for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The group's labels (`campaign` when grouped), empty otherwise.
    pub group: BTreeMap<String, String>,
    /// The measured value.
    pub value: f64,
    /// Whether the condition holds (with enough calls to judge).
    pub holds: bool,
}

impl Rule {
    /// The rule's value and condition, per group, over `inputs`.
    pub fn evaluate(&self, inputs: &Inputs<'_>) -> Vec<Observation> {
        let wanted = |c: &CampaignCounts| {
            self.labels
                .get("campaign")
                .is_none_or(|k| *k == c.campaign_id)
                && self
                    .labels
                    .get("team")
                    .is_none_or(|t| c.team.as_deref() == Some(t.as_str()))
        };
        let mut groups: BTreeMap<BTreeMap<String, String>, super::Counts> = BTreeMap::new();
        if !self.group_by_campaign {
            groups.insert(BTreeMap::new(), super::Counts::default());
        }
        for c in inputs.counts.iter().filter(|c| wanted(c)) {
            let key = if self.group_by_campaign {
                BTreeMap::from([("campaign".to_owned(), c.campaign_id.clone())])
            } else {
                BTreeMap::new()
            };
            groups.entry(key).or_default().add(&c.counts);
        }
        groups
            .into_iter()
            .map(|(group, c)| {
                let (value, judged) = match self.metric {
                    Metric::FailureRate => (c.failure_rate(), c.total() >= self.min_calls),
                    Metric::PoorMosRatio => (c.poor_mos_ratio(), c.measured >= self.min_calls),
                    Metric::AbandonRatio => {
                        let answered = ["answered_human", "abandoned"]
                            .iter()
                            .filter_map(|o| c.by_outcome.get(*o))
                            .sum::<i64>();
                        (c.abandon_ratio(), answered >= self.min_calls.max(1))
                    }
                    Metric::CompletedCalls => (c.total() as f64, inputs.active_calls > 0),
                    Metric::ConsumerLag => (inputs.consumer_lag as f64, true),
                };
                Observation {
                    group,
                    value,
                    holds: judged && self.op.holds(value, self.threshold),
                }
            })
            .collect()
    }

    /// The labels of this rule's alert for `group`: `alertname`,
    /// `severity`, the rule's labels and the group's.
    pub fn alert_labels(&self, group: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.extend(group.iter().map(|(k, v)| (k.clone(), v.clone())));
        l.insert("alertname".into(), self.name.clone());
        l.insert("severity".into(), self.severity.clone());
        l
    }
}

/// The stable key of a group (`campaign=k1`, or empty).
pub fn group_key(group: &BTreeMap<String, String>) -> String {
    group
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Counts;

    fn base() -> Value {
        json!({"name": "r", "metric": "failure_rate", "threshold": 0.05})
    }

    #[test]
    fn defaults_and_round_trip() {
        let r = Rule::from_json(&base()).unwrap();
        assert_eq!((r.window_ms, r.for_ms, r.min_calls), (300_000, 0, 20));
        assert_eq!(r.op, Op::Above);
        assert_eq!(Rule::from_json(&r.to_json()).unwrap(), r);
        let s = Rule::seed();
        assert_eq!(Rule::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases: &[(&str, Value)] = &[
            ("metric", json!({"metric": "cpu_temperature"})),
            ("metric", json!({"metric": 7})),
            ("window", json!({"window": "five minutes"})),
            ("window", json!({"window": "1s"})),
            ("window", json!({"window": 300})),
            ("for", json!({"for": "-1m"})),
            ("for", json!({"for": "400d"})),
            ("threshold", json!({"threshold": 5})),
            ("threshold", json!({"threshold": "high"})),
            ("op", json!({"op": ">="})),
            ("name", json!({"name": ""})),
            ("name", json!({"name": "a\nb"})),
            ("name", json!({"name": "x".repeat(200)})),
            ("min_calls", json!({"min_calls": -1})),
            ("min_calls", json!({"min_calls": 1.5})),
            ("severity", json!({"severity": "apocalypse"})),
            ("labels", json!({"labels": {"instance": "x"}})),
            ("labels", json!({"labels": {"campaign": 1}})),
            ("labels", json!({"labels": []})),
            ("group_by", json!({"group_by": ["team"]})),
            ("channels", json!({"channels": "all"})),
            ("channels", json!({"channels": [1]})),
            ("repeat_interval", json!({"repeat_interval": "1s"})),
            ("enabled", json!({"enabled": "yes"})),
            ("body", json!({"nonsense": 1})),
        ];
        for (field, patch) in cases {
            let mut v = base();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            assert_eq!(Rule::from_json(&v).unwrap_err().field, *field, "{patch}");
        }
        assert_eq!(Rule::from_json(&json!([])).unwrap_err().field, "body");
        let mut missing = base();
        missing.as_object_mut().unwrap().remove("metric");
        assert_eq!(Rule::from_json(&missing).unwrap_err().field, "metric");
        let grouped_lag = json!({"name": "l", "metric": "consumer_lag", "threshold": 10, "group_by": ["campaign"]});
        assert_eq!(Rule::from_json(&grouped_lag).unwrap_err().field, "group_by");
    }

    #[test]
    fn patches_merge_and_revalidate() {
        let r = Rule::from_json(&base()).unwrap();
        let p = r.patched(&json!({"threshold": 0.1, "for": "2m"})).unwrap();
        assert_eq!(
            (p.threshold, p.for_ms, p.name.as_str()),
            (0.1, 120_000, "r")
        );
        assert_eq!(r.patched(&json!({"for": "soon"})).unwrap_err().field, "for");
    }

    fn counts(campaign: &str, team: Option<&str>, ok: i64, failed: i64) -> CampaignCounts {
        CampaignCounts {
            campaign_id: campaign.into(),
            team: team.map(Into::into),
            counts: Counts {
                by_outcome: BTreeMap::from([
                    ("answered_human".to_owned(), ok),
                    ("failed".to_owned(), failed),
                ]),
                failures: failed,
                ..Default::default()
            },
        }
    }

    #[test]
    fn evaluation_needs_enough_calls_and_groups_by_campaign() {
        let seed = Rule::seed();
        let few = [counts("k1", None, 1, 2)];
        let obs = seed.evaluate(&Inputs {
            counts: &few,
            ..Default::default()
        });
        assert_eq!(obs.len(), 1);
        assert!(!obs[0].holds, "three calls do not page anyone");
        let many = [counts("k1", None, 10, 5), counts("k2", Some("east"), 20, 0)];
        let obs = seed.evaluate(&Inputs {
            counts: &many,
            ..Default::default()
        });
        assert!(obs[0].holds && (obs[0].value - 5.0 / 35.0).abs() < 1e-12);
        let grouped = Rule::from_json(&json!({"name": "g", "metric": "failure_rate",
            "threshold": 0.05, "group_by": ["campaign"], "min_calls": 10}))
        .unwrap();
        let obs = grouped.evaluate(&Inputs {
            counts: &many,
            ..Default::default()
        });
        assert_eq!(obs.len(), 2);
        assert!(obs[0].holds && obs[0].group["campaign"] == "k1");
        assert!(!obs[1].holds);
        let east = Rule::from_json(&json!({"name": "e", "metric": "failure_rate",
            "threshold": 0.05, "labels": {"team": "east"}, "min_calls": 1}))
        .unwrap();
        let obs = east.evaluate(&Inputs {
            counts: &many,
            ..Default::default()
        });
        assert_eq!((obs.len(), obs[0].holds, obs[0].value), (1, false, 0.0));
        assert_eq!(east.alert_labels(&BTreeMap::new())["team"], "east");
        assert_eq!(group_key(&obs[0].group), "");
    }

    #[test]
    fn stalled_calls_are_judged_only_while_calls_run() {
        let r = Rule::from_json(&json!({"name": "s", "metric": "completed_calls",
            "op": "<", "threshold": 1, "window": "10m"}))
        .unwrap();
        let idle = r.evaluate(&Inputs::default());
        assert!(!idle[0].holds);
        let stuck = r.evaluate(&Inputs {
            active_calls: 5,
            ..Default::default()
        });
        assert!(stuck[0].holds);
        let lag =
            Rule::from_json(&json!({"name": "l", "metric": "consumer_lag", "threshold": 100}))
                .unwrap();
        assert!(
            lag.evaluate(&Inputs {
                consumer_lag: 101,
                ..Default::default()
            })[0]
                .holds
        );
    }
}
