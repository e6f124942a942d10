//! Alerting routes: rules, alerts, Alertmanager's webhook, silences,
//! channels. Bodies are read as JSON and checked field by field by the
//! domain, so a 400 names the field at fault.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiJson, ApiQuery, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::db::alerting::{AlertRow, RepoError, SilenceRow, StoredRule};
use crate::db::notify::ChannelRow;
use crate::domain::channel::ChannelSpec;
use crate::domain::lifecycle::AlertState;
use crate::domain::rules::{Rule, RuleError};
use crate::domain::silence::{self, Matcher};
use crate::engine::External;
use crate::AppState;

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        ApiError::invalid(e.field, e.reason)
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Taken(field) => {
                ApiError::new(ErrorCode::Conflict, format!("{field}: already taken"))
            }
            e => ApiError::internal(e),
        }
    }
}

/// Ids are UUIDs or short names; anything else cannot exist.
fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::not_found(what));
    }
    Ok(())
}

/// A rule as the API shows it: its id and its fields.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// Its id.
    pub id: String,
    /// The rule's fields (`name`, `metric`, `op`, `threshold`, `window`,
    /// `for`, `min_calls`, `severity`, `labels`, `group_by`, `channels`,
    /// `repeat_interval`, `enabled`, `inhibits_campaign_alerts`).
    #[schema(value_type = Object)]
    pub rule: Value,
    /// Created (ms).
    pub created_at: i64,
    /// Last changed (ms).
    pub updated_at: i64,
}

impl From<StoredRule> for RuleView {
    fn from(s: StoredRule) -> Self {
        Self {
            id: s.id,
            rule: s.rule.to_json(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

async fn check_channels(state: &AppState, rule: &Rule) -> Result<(), ApiError> {
    if rule.channels.is_empty() {
        return Ok(());
    }
    let known = state.repo.channels().await?;
    if let Some(c) = rule
        .channels
        .iter()
        .find(|c| !known.iter().any(|k| &k.id == *c))
    {
        return Err(ApiError::invalid("channels", format!("no channel {c:?}")));
    }
    Ok(())
}

/// Every alert rule.
#[utoipa::path(get, path = "/v1/alert-rules", security(("bearer" = [])),
    responses((status = 200, body = [RuleView])))]
pub async fn list_rules(State(state): State<AppState>) -> Result<ApiJson<Vec<RuleView>>, ApiError> {
    Ok(ApiJson(
        state
            .repo
            .rules()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Creates a rule.
#[utoipa::path(post, path = "/v1/alert-rules", security(("bearer" = [])),
    request_body(content = Object, description = "the rule's fields, see RuleView"),
    responses((status = 201, body = RuleView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_rule(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, ApiJson<RuleView>), ApiError> {
    let rule = Rule::from_json(&body)?;
    check_channels(&state, &rule).await?;
    let stored = state.repo.insert_rule(&rule).await?;
    state.engine.wake.notify_one();
    Ok((StatusCode::CREATED, ApiJson(stored.into())))
}

/// One rule.
#[utoipa::path(get, path = "/v1/alert-rules/{id}", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)))]
pub async fn get_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<RuleView>, ApiError> {
    check_id(&id, "rule")?;
    let r = state
        .repo
        .rule(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("rule"))?;
    Ok(ApiJson(r.into()))
}

/// Changes some fields of a rule.
#[utoipa::path(patch, path = "/v1/alert-rules/{id}", security(("bearer" = [])),
    params(("id" = String, Path)), request_body(content = Object, description = "fields to change"),
    responses((status = 200, body = RuleView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<ApiJson<RuleView>, ApiError> {
    check_id(&id, "rule")?;
    let current = state
        .repo
        .rule(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("rule"))?;
    let rule = current.rule.patched(&body)?;
    check_channels(&state, &rule).await?;
    if !state.repo.update_rule(&id, &rule).await? {
        return Err(ApiError::not_found("rule"));
    }
    state.engine.wake.notify_one();
    let r = state
        .repo
        .rule(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("rule"))?;
    Ok(ApiJson(r.into()))
}

/// Deletes a rule (its open alerts close without notification).
#[utoipa::path(delete, path = "/v1/alert-rules/{id}", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id, "rule")?;
    if state.repo.delete_rule(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("rule"))
    }
}

/// `GET /v1/alerts` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AlertsParams {
    /// `pending`, `firing` or `resolved`; all when absent.
    pub state: Option<String>,
    /// At most this many, newest first (1-1000, default 100).
    pub limit: Option<i64>,
}

/// Current alerts and history, newest first.
#[utoipa::path(get, path = "/v1/alerts", security(("bearer" = [])), params(AlertsParams),
    responses((status = 200, body = [AlertRow]), (status = 400, body = ErrorBody)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<AlertsParams>,
) -> Result<ApiJson<Vec<AlertRow>>, ApiError> {
    let st = p
        .state
        .as_deref()
        .map(|s| {
            AlertState::parse(s)
                .ok_or_else(|| ApiError::invalid("state", "must be pending, firing or resolved"))
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1-1000"));
    }
    let mut alerts = state.repo.alerts(st, limit).await?;
    // A supervisor sees alerts of the teams it leads and alerts of no team.
    if who.role == dialstack_common::auth::Role::Supervisor {
        alerts.retain(|a| a.labels.get("team").is_none_or(|t| who.teams.contains(t)));
    }
    Ok(ApiJson(alerts))
}

/// Alertmanager's webhook body (version 4); fields this service does not
/// use are ignored.
#[derive(Debug, Deserialize)]
pub struct AmWebhook {
    /// `4`.
    pub version: String,
    /// The alerts of the group.
    pub alerts: Vec<AmAlert>,
}

/// One alert of Alertmanager's webhook.
#[derive(Debug, Deserialize)]
pub struct AmAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels (`alertname` required).
    pub labels: BTreeMap<String, String>,
    /// Annotations (`summary` is shown).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 start.
    #[serde(default, rename = "startsAt")]
    pub starts_at: Option<String>,
    /// Alertmanager's fingerprint of the labels.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Most alerts in one webhook call, and most labels per alert.
const MAX_WEBHOOK_ALERTS: usize = 1000;
const MAX_LABELS: usize = 64;

fn external(a: &AmAlert) -> Result<External, ApiError> {
    let firing = match a.status.as_str() {
        "firing" => true,
        "resolved" => false,
        _ => {
            return Err(ApiError::invalid(
                "alerts.status",
                "must be firing or resolved",
            ))
        }
    };
    if a.labels.len() > MAX_LABELS
        || a.labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::invalid(
            "alerts.labels",
            "at most 64 labels, names 1-128 and values up to 1024 characters",
        ));
    }
    if a.labels.get("alertname").is_none_or(|n| n.is_empty()) {
        return Err(ApiError::invalid("alerts.labels", "alertname is required"));
    }
    let fingerprint = match &a.fingerprint {
        Some(f) if !f.is_empty() && f.len() <= 64 => f.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "alerts.fingerprint",
                "must be 1-64 characters",
            ))
        }
        None => crate::domain::rules::group_key(&a.labels)
            .chars()
            .take(190)
            .collect(),
    };
    let starts_at = match &a.starts_at {
        None => dialstack_common::now_ms(),
        Some(s) => {
            humantime::parse_rfc3339_weak(s.trim_end_matches('Z').split('.').next().unwrap_or(""))
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
                .ok_or_else(|| ApiError::invalid("alerts.startsAt", "must be an RFC 3339 time"))?
        }
    };
    let summary = a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
        .map(|s| s.chars().take(1000).collect())
        .unwrap_or_default();
    Ok(External {
        firing,
        labels: a.labels.clone(),
        summary,
        fingerprint,
        starts_at,
    })
}

/// What the webhook did.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResult {
    /// Alerts received.
    pub received: usize,
    /// Alerts opened or resolved.
    pub changed: usize,
}

/// Alertmanager's webhook receiver: its alerts are stored, silenced and
/// notified like the engine's own.
#[utoipa::path(post, path = "/v1/alerts/webhook", security(("bearer" = [])),
    request_body(content = Object, description = "Alertmanager webhook payload, version 4"),
    responses((status = 200, body = WebhookResult), (status = 400, body = ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AmWebhook>,
) -> Result<ApiJson<WebhookResult>, ApiError> {
    if body.version != "4" {
        return Err(ApiError::invalid("version", "only version 4 is understood"));
    }
    if body.alerts.len() > MAX_WEBHOOK_ALERTS {
        return Err(ApiError::invalid("alerts", "at most 1000 alerts per call"));
    }
    let alerts = body
        .alerts
        .iter()
        .map(external)
        .collect::<Result<Vec<_>, _>>()?;
    let changed = state.engine.receive_external(&alerts).await?;
    Ok(ApiJson(WebhookResult {
        received: alerts.len(),
        changed,
    }))
}

/// Silences in force and those ended within a day.
#[utoipa::path(get, path = "/v1/silences", security(("bearer" = [])),
    responses((status = 200, body = [SilenceRow])))]
pub async fn list_silences(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<SilenceRow>>, ApiError> {
    Ok(ApiJson(
        state
            .repo
            .silences(dialstack_common::now_ms(), true)
            .await?,
    ))
}

/// A new silence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Labels an alert must match (all of them).
    pub matchers: Vec<Matcher>,
    /// Until when: RFC 3339 (`ends_at`) or a duration from now (`duration`).
    #[serde(default)]
    pub ends_at: Option<String>,
    /// How long from now, e.g. `2h`.
    #[serde(default)]
    pub duration: Option<String>,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Silences in force at once (the engine reads at most this many).
const MAX_SILENCES: usize = 500;

/// Longest silence.
const MAX_SILENCE_MS: i64 = 30 * 86_400_000;

/// Creates a silence.
#[utoipa::path(post, path = "/v1/silences", security(("bearer" = [])), request_body = NewSilence,
    responses((status = 201, body = SilenceRow), (status = 400, body = ErrorBody)))]
pub async fn create_silence(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<NewSilence>,
) -> Result<(StatusCode, ApiJson<SilenceRow>), ApiError> {
    silence::validate(&body.matchers)?;
    let now = dialstack_common::now_ms();
    if state.repo.silences(now, false).await?.len() >= MAX_SILENCES {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{MAX_SILENCES} silences are in force already; end some first"),
        ));
    }
    let ends_at = match (&body.ends_at, &body.duration) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid(
                "ends_at",
                "give ends_at or duration, not both",
            ))
        }
        (None, Some(d)) => {
            let d = humantime::parse_duration(d)
                .map_err(|e| ApiError::invalid("duration", format!("not a duration ({e})")))?;
            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        (Some(t), None) => humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .ok_or_else(|| ApiError::invalid("ends_at", "must be an RFC 3339 time"))?,
    };
    if ends_at <= now || ends_at - now > MAX_SILENCE_MS {
        return Err(ApiError::invalid(
            if body.duration.is_some() {
                "duration"
            } else {
                "ends_at"
            },
            "must end in the future, within 30 days",
        ));
    }
    let comment = body.comment.unwrap_or_default();
    if comment.len() > 500 || comment.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid("comment", "at most 500 characters"));
    }
    let s = SilenceRow {
        id: uuid::Uuid::now_v7().to_string(),
        matchers: body.matchers,
        comment,
        created_by: who.sub.chars().take(64).collect(),
        starts_at: now,
        ends_at,
    };
    state.repo.insert_silence(&s).await?;
    Ok((StatusCode::CREATED, ApiJson(s)))
}

/// Ends a silence now.
#[utoipa::path(delete, path = "/v1/silences/{id}", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_silence(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id, "silence")?;
    if state.repo.expire_silence(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("silence"))
    }
}

/// Every channel.
#[utoipa::path(get, path = "/v1/alert-channels", security(("bearer" = [])),
    responses((status = 200, body = [ChannelRow])))]
pub async fn list_channels(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<ChannelRow>>, ApiError> {
    Ok(ApiJson(state.repo.channels().await?))
}

/// Creates a channel: `{"kind": "wecom", "name", "url_env"}` or
/// `{"kind": "email", "name", "smtp_host", "smtp_port", "tls", "username",
/// "password_env", "from", "to"}`.
#[utoipa::path(post, path = "/v1/alert-channels", security(("bearer" = [])),
    request_body(content = Object, description = "the channel"),
    responses((status = 201, body = ChannelRow), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_channel(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, ApiJson<ChannelRow>), ApiError> {
    let spec = ChannelSpec::from_json(&body)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty() && n.len() <= 64 && !n.chars().any(char::is_control))
        .ok_or_else(|| ApiError::invalid("name", "must be 1-64 characters"))?;
    Ok((
        StatusCode::CREATED,
        ApiJson(state.repo.insert_channel(name, &spec).await?),
    ))
}

/// Deletes a channel (its undelivered notifications are dropped).
#[utoipa::path(delete, path = "/v1/alert-channels/{id}", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id, "channel")?;
    if state.repo.delete_channel(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("channel"))
    }
}

/// Queues a test message to a channel; it is delivered like any
/// notification (watch `dialstack_notifications_total`).
#[utoipa::path(post, path = "/v1/alert-channels/{id}/test", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 202), (status = 404, body = ErrorBody)))]
pub async fn test_channel(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id, "channel")?;
    let channel = state
        .repo
        .channel(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))?;
    let msg = crate::notify::Message {
        kind: "test".into(),
        rule: format!("test of channel {}", channel.name),
        severity: "info".into(),
        value: 0.0,
        threshold: 0.0,
        ratio: false,
        labels: BTreeMap::new(),
        since_ms: dialstack_common::now_ms(),
        summary: format!("a test message requested by {}", who.sub),
        dashboard_url: None,
    };
    state
        .repo
        .enqueue_test(&id, &serde_json::to_string(&msg).unwrap_or_default())
        .await?;
    state.engine.wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}
