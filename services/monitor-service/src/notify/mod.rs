//! Delivery of notifications from the outbox: a WeCom group robot
//! ([`wecom`]) or e-mail over SMTP ([`email`]), with retries and backoff,
//! a per-robot rate limit, and `dialstack_notifications_total{channel,result}`
//! counting every attempt.

pub mod email;
pub mod wecom;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialstack_common::config::Env;
use serde::{Deserialize, Serialize};

use crate::db::notify::{ChannelRow, Due};
use crate::db::Repo;
use crate::domain::channel::ChannelSpec;

/// What a notification says, stored as JSON in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `firing`, `repeat`, `resolved` or `test`.
    pub kind: String,
    /// The rule (`alertname`).
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// The value measured.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// Whether value and threshold are ratios (shown as percentages).
    #[serde(default)]
    pub ratio: bool,
    /// All labels of the alert.
    pub labels: BTreeMap<String, String>,
    /// When the condition started (ms).
    pub since_ms: i64,
    /// A one-line description.
    #[serde(default)]
    pub summary: String,
    /// Link to the dashboard.
    #[serde(default)]
    pub dashboard_url: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Message {
    fn number(&self, v: f64) -> String {
        if self.ratio {
            format!("{:.1} %", v * 100.0)
        } else {
            format!("{v}")
        }
    }

    /// `[FIRING] CallFailureRateHigh` and the like.
    pub fn title(&self) -> String {
        let tag = match self.kind.as_str() {
            "resolved" => "RESOLVED",
            "test" => "TEST",
            _ => "FIRING",
        };
        let campaign = self
            .labels
            .get("campaign")
            .map(|c| format!(" (campaign {c})"))
            .unwrap_or_default();
        format!("[{tag}] {}{campaign}", self.rule)
    }

    /// The facts as (name, value) lines.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("rule", self.rule.clone()),
            ("severity", self.severity.clone()),
            ("value", self.number(self.value)),
            ("threshold", self.number(self.threshold)),
            (
                "campaign",
                self.labels
                    .get("campaign")
                    .cloned()
                    .unwrap_or_else(|| "all".into()),
            ),
            ("since", rfc3339(self.since_ms)),
        ];
        if let Some(t) = self.labels.get("team") {
            f.push(("team", t.clone()));
        }
        f
    }

    /// Plain text (e-mail text part).
    pub fn text(&self) -> String {
        let mut s = format!("{}\n\n", self.title());
        if !self.summary.is_empty() {
            s.push_str(&self.summary);
            s.push_str("\n\n");
        }
        for (k, v) in self.facts() {
            s.push_str(&format!("{k}: {v}\n"));
        }
        if let Some(u) = &self.dashboard_url {
            s.push_str(&format!("dashboard: {u}\n"));
        }
        s
    }

    /// WeCom markdown (its subset: headings, bold, links, font colours).
    pub fn markdown(&self) -> String {
        let colour = match self.kind.as_str() {
            "resolved" => "info",
            "test" => "comment",
            _ => "warning",
        };
        let mut s = format!(
            "### <font color=\"{colour}\">{}</font>\n",
            md_escape(&self.title())
        );
        if !self.summary.is_empty() {
            s.push_str(&format!("{}\n", md_escape(&self.summary)));
        }
        for (k, v) in self.facts() {
            s.push_str(&format!("> {k}: **{}**\n", md_escape(&v)));
        }
        if let Some(u) = &self.dashboard_url {
            s.push_str(&format!("[dashboard]({u})\n"));
        }
        s
    }

    /// HTML (e-mail HTML part).
    pub fn html(&self) -> String {
        let mut s = format!("<html><body><h3>{}</h3>", html_escape(&self.title()));
        if !self.summary.is_empty() {
            s.push_str(&format!("<p>{}</p>", html_escape(&self.summary)));
        }
        s.push_str("<table>");
        for (k, v) in self.facts() {
            s.push_str(&format!(
                "<tr><th align=\"left\">{k}</th><td>{}</td></tr>",
                html_escape(&v)
            ));
        }
        s.push_str("</table>");
        if let Some(u) = &self.dashboard_url {
            s.push_str(&format!(
                "<p><a href=\"{}\">dashboard</a></p>",
                html_escape(u)
            ));
        }
        s.push_str("</body></html>");
        s
    }
}

fn md_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '*' | '`' => format!("\\{c}"),
            c => c.to_string(),
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Worth retrying with backoff.
    Transient(String),
    /// The receiver asked us to slow down: retry no earlier than `retry_after`.
    RateLimited(String),
    /// Retrying cannot help (bad configuration); given up at once.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(s) | Self::RateLimited(s) | Self::Permanent(s) => f.write_str(s),
        }
    }
}

/// Notifier settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// First retry delay; doubled per attempt up to [`MAX_BACKOFF_MS`].
    pub retry_base_ms: i64,
    /// Attempts before a notification is given up.
    pub max_attempts: i64,
    /// Messages per minute per WeCom robot (the robot's own limit is 20).
    pub wecom_per_minute: usize,
    /// How long to leave a robot alone after its rate-limit error.
    pub wecom_backoff_ms: i64,
    /// Timeout of one delivery.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry_base_ms: 5_000,
            max_attempts: 12,
            wecom_per_minute: 20,
            wecom_backoff_ms: 60_000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Longest wait between two attempts.
pub const MAX_BACKOFF_MS: i64 = 600_000;

/// Per-robot send times in the last minute, and robots told to wait.
#[derive(Default)]
struct RobotLimits {
    /// Send times (ms) in the last 60 s, per webhook URL.
    sent: HashMap<String, VecDeque<i64>>,
    /// Until when (ms) a robot that answered 45009 is left alone.
    blocked: HashMap<String, i64>,
}

/// Delivers due notifications.
#[derive(Clone)]
pub struct Notifier {
    repo: Repo,
    env: Arc<Env>,
    http: reqwest::Client,
    settings: Settings,
    limits: Arc<Mutex<RobotLimits>>,
    counter: prometheus::IntCounterVec,
}

impl Notifier {
    /// A notifier reading secrets from `env`, counting into `counter`
    /// (`dialstack_notifications_total{channel,result}`); its HTTP client
    /// trusts `tls`'s CA bundle besides the system's.
    pub fn new(
        repo: Repo,
        env: Arc<Env>,
        settings: Settings,
        counter: prometheus::IntCounterVec,
        tls: &dialstack_common::tls::TlsConfig,
    ) -> Self {
        let http = tls
            .http_client()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            repo,
            env,
            http,
            settings,
            limits: Arc::new(Mutex::new(RobotLimits::default())),
            counter,
        }
    }

    /// Delivers every notification due now (at most `limit`); returns how
    /// many were sent.
    pub async fn deliver_due(&self, limit: i64) -> Result<usize, crate::db::alerting::RepoError> {
        let now = dialstack_common::now_ms();
        let due = self.repo.due_notifications(now, limit).await?;
        let mut channels: HashMap<String, Option<ChannelRow>> = HashMap::new();
        let mut sent = 0;
        for n in due {
            if !channels.contains_key(&n.channel_id) {
                let c = self.repo.channel(&n.channel_id).await?;
                channels.insert(n.channel_id.clone(), c);
            }
            let Some(channel) = channels.get(&n.channel_id).cloned().flatten() else {
                self.repo
                    .notification_failed(&n.id, "channel deleted", None, false)
                    .await?;
                continue;
            };
            if self.deliver(&channel, &n).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn deliver(
        &self,
        channel: &ChannelRow,
        n: &Due,
    ) -> Result<bool, crate::db::alerting::RepoError> {
        let count = |result: &str| {
            self.counter
                .with_label_values(&[channel.name.as_str(), result])
                .inc()
        };
        let msg: Message = match serde_json::from_str(&n.message) {
            Ok(m) => m,
            Err(e) => {
                count("failed");
                self.repo
                    .notification_failed(&n.id, &format!("unreadable message: {e}"), None, true)
                    .await?;
                return Ok(false);
            }
        };
        let result = match &channel.spec {
            ChannelSpec::Wecom { url_env } => match self.env.get(url_env).filter(|u| !u.is_empty())
            {
                None => Err(SendError::Permanent(format!("{url_env} is not set"))),
                Some(url) => {
                    if let Some(until) = self.robot_wait(url) {
                        count("deferred");
                        self.repo
                            .notification_failed(&n.id, "robot rate limit", Some(until), false)
                            .await?;
                        return Ok(false);
                    }
                    let r = wecom::send(&self.http, url, &msg.markdown()).await;
                    if let Err(SendError::RateLimited(_)) = &r {
                        self.block_robot(url);
                    }
                    r
                }
            },
            ChannelSpec::Email { .. } => {
                email::send(&channel.spec, &self.env, &msg, self.settings.timeout).await
            }
        };
        let now = dialstack_common::now_ms();
        match result {
            Ok(()) => {
                count("sent");
                tracing::info!(channel = %channel.name, kind = %n.kind, rule = %msg.rule, "notification sent");
                self.repo.notification_sent(&n.id).await
            }
            Err(e) => {
                let attempts = n.attempts + 1;
                let (result, next) = match &e {
                    SendError::Permanent(_) => ("failed", None),
                    _ if attempts >= self.settings.max_attempts => ("failed", None),
                    SendError::RateLimited(_) => (
                        "rate_limited",
                        Some(now + self.settings.wecom_backoff_ms.max(self.backoff(attempts))),
                    ),
                    SendError::Transient(_) => ("failed", Some(now + self.backoff(attempts))),
                };
                count(result);
                tracing::warn!(channel = %channel.name, attempts, error = %e,
                    retry = next.is_some(), "notification not delivered");
                self.repo
                    .notification_failed(&n.id, &e.to_string(), next, true)
                    .await?;
                Ok(false)
            }
        }
    }

    fn backoff(&self, attempts: i64) -> i64 {
        let shift = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
        self.settings
            .retry_base_ms
            .saturating_mul(1_i64 << shift)
            .min(MAX_BACKOFF_MS)
    }

    /// `Some(until)` when the robot must not be sent to now; otherwise
    /// records a send.
    fn robot_wait(&self, url: &str) -> Option<i64> {
        let now = dialstack_common::now_ms();
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = l.blocked.get(url).copied() {
            if until > now {
                return Some(until);
            }
            l.blocked.remove(url);
        }
        // Forget robots nobody sent to for a minute (bounded by channels anyway).
        l.sent
            .retain(|_, q| q.back().is_some_and(|t| now - t < 60_000));
        let q = l.sent.entry(url.to_owned()).or_default();
        while q.front().is_some_and(|t| now - t >= 60_000) {
            q.pop_front();
        }
        if q.len() >= self.settings.wecom_per_minute {
            return q.front().map(|t| t + 60_000);
        }
        q.push_back(now);
        None
    }

    fn block_robot(&self, url: &str) {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        l.blocked.insert(
            url.to_owned(),
            dialstack_common::now_ms() + self.settings.wecom_backoff_ms,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            kind: "firing".into(),
            rule: "CallFailureRateHigh".into(),
            severity: "page".into(),
            value: 0.125,
            threshold: 0.05,
            ratio: true,
            labels: BTreeMap::from([("campaign".to_owned(), "k<1>".to_owned())]),
            since_ms: 0,
            summary: String::new(),
            dashboard_url: Some("http://grafana/d/ops".into()),
        }
    }

    #[test]
    fn messages_carry_the_facts_and_escape_labels() {
        let m = msg();
        assert_eq!(m.title(), "[FIRING] CallFailureRateHigh (campaign k<1>)");
        let md = m.markdown();
        assert!(md.contains("value: **12.5 %**"), "{md}");
        assert!(md.contains("threshold: **5.0 %**"));
        assert!(md.contains("k&lt;1&gt;"));
        assert!(md.contains("since: **1970-01-01T00:00:00Z**"));
        assert!(md.contains("[dashboard](http://grafana/d/ops)"));
        let html = m.html();
        assert!(html.contains("k&lt;1&gt;") && !html.contains("k<1>"));
        assert!(m.text().contains("campaign: k<1>"));
        let r = Message {
            kind: "resolved".into(),
            ..m
        };
        assert!(r.title().starts_with("[RESOLVED]"));
    }
}
