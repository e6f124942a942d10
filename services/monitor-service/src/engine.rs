//! The alert engine: every evaluation interval, the replica that holds the
//! `alert-engine` lease evaluates every enabled rule over the call counts,
//! moves alerts through their life (recorded in the database with the
//! notifications each transition causes), then delivers due notifications.
//! Replicas without the lease only keep `dialstack_alerts` up to date, so
//! two replicas never both notify.
//!
//! Alerts received from Alertmanager ([`Engine::receive_external`]) go
//! through the same store, silences and notifier.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::alerting::{AlertRow, Change, RepoError, SilenceRow, StoredRule};
use crate::db::notify::ChannelRow;
use crate::db::Repo;
use crate::domain::lifecycle::{self, AlertState, Open, Step};
use crate::domain::rules::{group_key, Inputs, Metric};
use crate::domain::silence;
use crate::notify::{Message, Notifier};

/// The lease name.
pub const LEASE: &str = "alert-engine";
/// `rule_id` of alerts received from Alertmanager.
pub const EXTERNAL_RULE: &str = "alertmanager";
/// An Alertmanager alert with this name inhibits campaign alerts, as a rule
/// with `inhibits_campaign_alerts` does.
pub const SERVICE_DOWN_ALERT: &str = "DialstackServiceDown";

/// How long resolved alerts and sent notifications are kept (90 days).
pub const HISTORY_MS: i64 = 90 * 86_400_000;
/// How often the leaseholder prunes history.
const PRUNE_EVERY_MS: i64 = 3_600_000;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often rules are evaluated.
    pub interval: Duration,
    /// How long the lease lasts without renewal.
    pub lease_ttl: Duration,
    /// This replica's name in the lease.
    pub holder: String,
    /// Link in notifications.
    pub dashboard_url: Option<String>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    repo: Repo,
    notifier: Notifier,
    settings: Arc<Settings>,
    /// `dialstack_alerts{state,rule}`.
    gauge: prometheus::IntGaugeVec,
    /// The service's registry (for its own consumer lag).
    registry: prometheus::Registry,
    /// Wakes the loop early (a test message, a webhook).
    pub wake: Arc<Notify>,
}

/// One alert from Alertmanager's webhook, as the engine needs it.
#[derive(Debug, Clone)]
pub struct External {
    /// Firing (else resolved).
    pub firing: bool,
    /// Its labels (`alertname` among them).
    pub labels: BTreeMap<String, String>,
    /// Its `summary` annotation.
    pub summary: String,
    /// Its fingerprint (or another stable identity).
    pub fingerprint: String,
    /// When it started (ms).
    pub starts_at: i64,
}

impl Engine {
    /// An engine over `repo`, delivering with `notifier`.
    pub fn new(
        repo: Repo,
        notifier: Notifier,
        settings: Settings,
        gauge: prometheus::IntGaugeVec,
        registry: prometheus::Registry,
    ) -> Self {
        Self {
            repo,
            notifier,
            settings: Arc::new(settings),
            gauge,
            registry,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Runs until shutdown, then gives the lease up.
    pub async fn run(self, shutdown: CancellationToken) {
        let ttl = i64::try_from(self.settings.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut last_prune = 0;
        loop {
            match self
                .repo
                .acquire_lease(LEASE, &self.settings.holder, ttl)
                .await
            {
                Ok(true) => {
                    if let Err(e) = self.evaluate_once().await {
                        tracing::warn!(error = %e, "alert evaluation failed");
                    }
                    if let Err(e) = self.notifier.deliver_due(200).await {
                        tracing::warn!(error = %e, "notification delivery failed");
                    }
                    let now = dialstack_common::now_ms();
                    if now - last_prune > PRUNE_EVERY_MS {
                        last_prune = now;
                        match self.repo.prune(now, HISTORY_MS).await {
                            Ok(n) if n > 0 => tracing::info!(rows = n, "alert history pruned"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "alert history not pruned"),
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "alert lease not read"),
            }
            if let Err(e) = self.refresh_gauge().await {
                tracing::debug!(error = %e, "alert gauge not refreshed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        if let Err(e) = self.repo.release_lease(LEASE, &self.settings.holder).await {
            tracing::warn!(error = %e, "alert lease not released");
        }
    }

    async fn refresh_gauge(&self) -> Result<(), RepoError> {
        let counts = self.repo.open_alert_counts().await?;
        self.gauge.reset();
        for (rule, state, n) in counts {
            self.gauge.with_label_values(&[&state, &rule]).set(n);
        }
        Ok(())
    }

    fn consumer_lag(&self) -> i64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "dialstack_consumer_lag_messages")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// One evaluation of every enabled rule.
    pub async fn evaluate_once(&self) -> Result<(), RepoError> {
        let now = dialstack_common::now_ms();
        let rules = self.repo.rules().await?;
        let open = self.repo.open_alerts().await?;
        let silences = self.repo.silences(now, false).await?;
        let channels = self.repo.channels().await?;
        let active_calls = self.repo.active().await?;
        let consumer_lag = self.consumer_lag();
        let inhibiting = open.iter().any(|a| {
            a.state == AlertState::Firing
                && (rules
                    .iter()
                    .any(|r| r.id == a.rule_id && r.rule.inhibits_campaign_alerts)
                    || (a.rule_id == EXTERNAL_RULE && a.rule == SERVICE_DOWN_ALERT))
        });
        let mut by_window: HashMap<i64, Vec<crate::domain::CampaignCounts>> = HashMap::new();
        for r in rules.iter().filter(|r| r.rule.enabled) {
            let counts = match by_window.get(&r.rule.window_ms) {
                Some(c) => c,
                None => {
                    let c = self
                        .repo
                        .counts_since(now - r.rule.window_ms, None, None)
                        .await?;
                    by_window.entry(r.rule.window_ms).or_insert(c)
                }
            };
            let inputs = Inputs {
                counts,
                active_calls,
                consumer_lag,
            };
            let mut seen = HashSet::new();
            for o in r.rule.evaluate(&inputs) {
                let gk = group_key(&o.group);
                let current = open.iter().find(|a| a.rule_id == r.id && a.group_key == gk);
                let step = lifecycle::step(
                    current.map(open_of),
                    o.holds,
                    now,
                    r.rule.for_ms,
                    r.rule.repeat_ms,
                );
                let labels = r.rule.alert_labels(&o.group);
                self.apply(
                    r, &gk, &labels, o.value, step, current, &silences, inhibiting, &channels,
                )
                .await?;
                seen.insert(gk);
            }
            // Open alerts of groups that no longer have data stop holding.
            for a in open
                .iter()
                .filter(|a| a.rule_id == r.id && !seen.contains(&a.group_key))
            {
                let step = lifecycle::step(
                    Some(open_of(a)),
                    false,
                    now,
                    r.rule.for_ms,
                    r.rule.repeat_ms,
                );
                self.apply(
                    r,
                    &a.group_key,
                    &a.labels,
                    a.value,
                    step,
                    Some(a),
                    &silences,
                    inhibiting,
                    &channels,
                )
                .await?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        r: &StoredRule,
        gk: &str,
        labels: &BTreeMap<String, String>,
        value: f64,
        step: Step,
        current: Option<&AlertRow>,
        silences: &[SilenceRow],
        inhibiting: bool,
        channels: &[ChannelRow],
    ) -> Result<(), RepoError> {
        if step == Step::Keep && current.is_none_or(|a| a.value == value) {
            return Ok(());
        }
        let since = current.map_or_else(dialstack_common::now_ms, |a| a.started_at);
        let message = Message {
            kind: String::new(),
            rule: r.rule.name.clone(),
            severity: r.rule.severity.clone(),
            value,
            threshold: r.rule.threshold,
            ratio: matches!(
                r.rule.metric,
                Metric::FailureRate | Metric::PoorMosRatio | Metric::AbandonRatio
            ),
            labels: labels.clone(),
            since_ms: since,
            summary: summary(r, value),
            dashboard_url: self.settings.dashboard_url.clone(),
        };
        let notifications = self.notifications(
            step,
            current,
            &message,
            &r.rule.channels,
            silences,
            inhibiting,
            channels,
        );
        let change = Change {
            rule_id: &r.id,
            rule_name: &r.rule.name,
            group_key: gk,
            labels,
            severity: &r.rule.severity,
            value,
            threshold: r.rule.threshold,
            step,
            open: current,
            notifications,
        };
        if self.repo.apply_change(&change).await? {
            if step != Step::Keep {
                tracing::info!(rule = %r.rule.name, group = gk, value, step = ?step, "alert changed");
            }
        } else {
            tracing::debug!(rule = %r.rule.name, group = gk, "alert changed by another writer");
        }
        Ok(())
    }

    /// The notifications a step sends: none when it notifies nothing, when
    /// a silence matches, when a campaign alert is inhibited, or for the
    /// resolution of an alert whose firing was never notified.
    #[allow(clippy::too_many_arguments)]
    fn notifications(
        &self,
        step: Step,
        current: Option<&AlertRow>,
        message: &Message,
        wanted: &[String],
        silences: &[SilenceRow],
        inhibiting: bool,
        channels: &[ChannelRow],
    ) -> Vec<(String, &'static str, String)> {
        let Some(notice) = step.notice() else {
            return Vec::new();
        };
        if notice == lifecycle::Notice::Resolved
            && current.is_none_or(|a| a.last_notified_at.is_none())
        {
            return Vec::new();
        }
        if let Some(s) = silences
            .iter()
            .find(|s| silence::silences(&s.matchers, &message.labels))
        {
            tracing::info!(rule = %message.rule, silence = %s.id, "notification silenced");
            return Vec::new();
        }
        if inhibiting && message.labels.contains_key("campaign") {
            tracing::info!(rule = %message.rule, "notification inhibited by a service-down alert");
            return Vec::new();
        }
        let msg = Message {
            kind: notice.as_str().to_owned(),
            ..message.clone()
        };
        let body = serde_json::to_string(&msg).unwrap_or_default();
        channels
            .iter()
            .filter(|c| wanted.is_empty() || wanted.contains(&c.id))
            .map(|c| (c.id.clone(), notice.as_str(), body.clone()))
            .collect()
    }

    /// Alerts received from Alertmanager: opened, kept or resolved in the
    /// same store, notified through the same silences and channels.
    pub async fn receive_external(&self, alerts: &[External]) -> Result<usize, RepoError> {
        let now = dialstack_common::now_ms();
        let open = self.repo.open_alerts().await?;
        let silences = self.repo.silences(now, false).await?;
        let channels = self.repo.channels().await?;
        let mut changed = 0;
        for a in alerts {
            let name = a.labels.get("alertname").cloned().unwrap_or_default();
            let current = open
                .iter()
                .find(|o| o.rule_id == EXTERNAL_RULE && o.group_key == a.fingerprint);
            let step = match (current, a.firing) {
                (None, true) => Step::OpenFiring,
                (Some(_), false) => Step::Resolve,
                _ => Step::Keep,
            };
            if step == Step::Keep {
                continue;
            }
            let severity = a
                .labels
                .get("severity")
                .cloned()
                .unwrap_or_else(|| "warn".into());
            let message = Message {
                kind: String::new(),
                rule: name.clone(),
                severity: severity.clone(),
                value: 0.0,
                threshold: 0.0,
                ratio: false,
                labels: a.labels.clone(),
                since_ms: a.starts_at,
                summary: a.summary.clone(),
                dashboard_url: self.settings.dashboard_url.clone(),
            };
            let notifications =
                self.notifications(step, current, &message, &[], &silences, false, &channels);
            let change = Change {
                rule_id: EXTERNAL_RULE,
                rule_name: &name,
                group_key: &a.fingerprint,
                labels: &a.labels,
                severity: &severity,
                value: 0.0,
                threshold: 0.0,
                step,
                open: current,
                notifications,
            };
            if self.repo.apply_change(&change).await? {
                changed += 1;
            }
        }
        self.wake.notify_one();
        Ok(changed)
    }
}

fn open_of(a: &AlertRow) -> Open {
    Open {
        state: a.state,
        started_at: a.started_at,
        last_notified_at: a.last_notified_at,
    }
}

fn summary(r: &StoredRule, value: f64) -> String {
    let window = humantime::format_duration(Duration::from_millis(r.rule.window_ms.max(0) as u64));
    let pct = |v: f64| format!("{:.1} %", v * 100.0);
    match r.rule.metric {
        Metric::FailureRate => format!(
            "call failure rate {} over {window} (threshold {}; failures are failed calls and network rejections)",
            pct(value),
            pct(r.rule.threshold)
        ),
        Metric::PoorMosRatio => format!(
            "{} of measured calls had MOS below 3.6 over {window} (threshold {})",
            pct(value),
            pct(r.rule.threshold)
        ),
        Metric::AbandonRatio => format!(
            "abandon ratio {} over {window} (cap {})",
            pct(value),
            pct(r.rule.threshold)
        ),
        Metric::CompletedCalls => format!(
            "{value} calls completed over {window} while calls are in progress"
        ),
        Metric::ConsumerLag => format!("{value} events waiting for monitor-service"),
    }
}
