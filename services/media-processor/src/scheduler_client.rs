//! The REST calls media-processor makes: a service-account token from
//! user-service, and attempt claims on task-scheduler.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// Refresh the token this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(120);

/// A claim's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// Ours: dial it.
    Granted,
    /// Not ours (claimed elsewhere, finished, or unknown): do not dial.
    Refused(String),
}

/// Talks to user-service and task-scheduler.
pub struct SchedulerClient {
    http: reqwest::Client,
    scheduler_url: String,
    users_url: String,
    username: String,
    password: String,
    /// The current token and when it must be replaced.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl SchedulerClient {
    /// A client for the given base URLs and service account, trusting
    /// `tls`'s CA bundle for `https://` URLs.
    pub fn new(
        scheduler_url: &str,
        users_url: &str,
        username: &str,
        password: &str,
        tls: &dialstack_common::tls::TlsConfig,
    ) -> Self {
        Self {
            http: tls
                .http_client()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            scheduler_url: scheduler_url.trim_end_matches('/').to_owned(),
            users_url: users_url.trim_end_matches('/').to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            token: tokio::sync::Mutex::new(None),
        }
    }

    async fn token(&self, force: bool) -> anyhow::Result<String> {
        let mut guard = self.token.lock().await;
        if let Some((t, until)) = guard.as_ref() {
            if !force && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let resp = self
            .http
            .post(format!("{}/v1/auth/token", self.users_url))
            .json(&serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": self.username,
                "client_secret": self.password,
            }))
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("service token refused: {}", resp.status());
        }
        let t: TokenResponse = resp.json().await?;
        let until = Instant::now() + Duration::from_secs(t.expires_in).saturating_sub(TOKEN_MARGIN);
        *guard = Some((t.access_token.clone(), until));
        Ok(t.access_token)
    }

    /// POSTs `body` to task-scheduler at `path` with the service token,
    /// fetching a fresh token once if the current one is refused.
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        self.post_to(&self.scheduler_url, path, body).await
    }

    /// [`Self::post`] to `base`.
    async fn post_to(
        &self,
        base: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        let mut force = false;
        loop {
            let token = self.token(force).await?;
            let resp = self
                .http
                .post(format!("{base}{path}"))
                .timeout(Duration::from_secs(3))
                .bearer_auth(&token)
                .json(body)
                .send()
                .await?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !force {
                force = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Claims `attempt_id` for `claimer`. Errors are transient (retry later).
    pub async fn claim(
        &self,
        attempt_id: &str,
        claimer: &str,
        lease_ms: i64,
    ) -> anyhow::Result<ClaimResult> {
        let resp = self
            .post(
                &format!("/v1/attempts/{attempt_id}/claim"),
                &serde_json::json!({"claimer": claimer, "lease_ms": lease_ms}),
            )
            .await?;
        match resp.status().as_u16() {
            200 => Ok(ClaimResult::Granted),
            404 | 409 => {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let msg = body["message"].as_str().unwrap_or("refused").to_owned();
                Ok(ClaimResult::Refused(msg))
            }
            other => anyhow::bail!("claim failed with status {other}"),
        }
    }

    /// Renews the leases of `attempt_ids` held by `claimer`; returns
    /// task-scheduler's answer. An answer that is not one (not JSON, no
    /// `renewed` count, `held` not a list of strings) is an error like a
    /// refused request: the caller then keeps every lease.
    pub async fn heartbeat(
        &self,
        claimer: &str,
        attempt_ids: &[String],
        lease_ms: i64,
    ) -> anyhow::Result<Heartbeat> {
        let resp = self
            .post(
                "/v1/attempts/heartbeat",
                &serde_json::json!({
                    "claimer": claimer,
                    "attempt_ids": attempt_ids,
                    "lease_ms": lease_ms,
                }),
            )
            .await?;
        match resp.status().as_u16() {
            200 => {
                let body = resp.bytes().await?;
                let answer: HeartbeatAnswer = serde_json::from_slice(&body)
                    .map_err(|e| anyhow::anyhow!("heartbeat answer: {e}"))?;
                Ok(Heartbeat {
                    renewed: answer.renewed,
                    held: answer.held,
                })
            }
            other => anyhow::bail!("heartbeat failed with status {other}"),
        }
    }
}

/// task-scheduler's heartbeat answer as it comes. Every version sends
/// `renewed`; `held` came later, and only its absence means "does not
/// say": `null` or anything but a list of strings is malformed, since
/// reading it as absent would let the caller release leases the scheduler
/// may still hold.
#[derive(Deserialize)]
struct HeartbeatAnswer {
    renewed: u64,
    #[serde(default, deserialize_with = "present")]
    held: Option<Vec<String>>,
}

/// A field that, when there, must be a list of strings (not `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Vec::<String>::deserialize(d).map(Some)
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases extended.
    pub renewed: u64,
    /// The attempts still held open (`None`: a scheduler that does not
    /// say).
    pub held: Option<Vec<String>>,
}

#[async_trait::async_trait]
impl crate::call::bridge::AgentDesk for SchedulerClient {
    async fn reserve(
        &self,
        r: &crate::call::bridge::Reservation,
    ) -> anyhow::Result<Option<crate::call::bridge::ReservedAgent>> {
        let mut body = serde_json::json!({
            "call_id": r.call_id,
            "skills": r.skills,
            "exclude": r.exclude,
        });
        if let Some(t) = &r.team {
            body["team"] = serde_json::json!(t);
        }
        if let Some(a) = &r.agent_id {
            body["agent_id"] = serde_json::json!(a);
        }
        let resp = self
            .post_to(&self.users_url, "/v1/agents/reserve", &body)
            .await?;
        match resp.status().as_u16() {
            200 => {
                let v: serde_json::Value = resp.json().await?;
                let id = v["id"].as_str().or_else(|| v["user_id"].as_str());
                let uri = v["sip_uri"].as_str();
                match (id, uri) {
                    (Some(id), Some(uri)) => Ok(Some(crate::call::bridge::ReservedAgent {
                        id: id.to_owned(),
                        sip_uri: uri.to_owned(),
                    })),
                    _ => anyhow::bail!("reservation answer without id or sip_uri"),
                }
            }
            404 | 409 => Ok(None),
            other => anyhow::bail!("reservation failed with status {other}"),
        }
    }

    async fn set_state(
        &self,
        agent_id: &str,
        state: &str,
        call_id: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let resp = self
            .post_to(
                &self.users_url,
                &format!("/v1/agents/{agent_id}/state"),
                &serde_json::json!({"state": state, "call_id": call_id, "reason": reason}),
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            anyhow::bail!(
                "agent state {state} refused: {status} {}",
                body["message"].as_str().unwrap_or("")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{header, StatusCode};
    use axum::routing::post;

    use super::*;

    /// user-service's token endpoint and task-scheduler's heartbeat on one
    /// local port; the heartbeat answers 200 with whatever body `answer`
    /// holds at the time, as JSON.
    async fn stub() -> (SchedulerClient, Arc<Mutex<String>>) {
        let answer = Arc::new(Mutex::new(String::new()));
        let body = answer.clone();
        let app = axum::Router::new()
            .route(
                "/v1/auth/token",
                post(|| async {
                    axum::Json(serde_json::json!({"access_token": "t", "expires_in": 3600}))
                }),
            )
            .route(
                "/v1/attempts/heartbeat",
                post(move || {
                    let body = body.lock().unwrap().clone();
                    async move {
                        (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            body,
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let tls = dialstack_common::tls::TlsConfig::default();
        (
            SchedulerClient::new(&url, &url, "media", "secret", &tls),
            answer,
        )
    }

    /// A malformed answer is an error, never a panic and never "the
    /// scheduler does not say" (`held: None`, after which
    /// `messaging::run_heartbeat` would release the leases of ended calls
    /// whose outcome is in the broker): on an error it keeps every lease
    /// and beats again soon.
    #[tokio::test]
    async fn malformed_heartbeat_answers_are_failed_heartbeats() {
        let (client, answer) = stub().await;
        let ids = vec!["a-1".to_owned(), "a-2".to_owned()];
        let beat = |body: &str| {
            *answer.lock().unwrap() = body.to_owned();
            client.heartbeat("mp-1", &ids, 30_000)
        };

        // Well-formed: the current scheduler, and one from before `held`.
        assert_eq!(
            beat(r#"{"renewed": 2, "held": ["a-1"]}"#).await.unwrap(),
            Heartbeat {
                renewed: 2,
                held: Some(vec!["a-1".into()]),
            }
        );
        assert_eq!(
            beat(r#"{"renewed": 2, "held": []}"#).await.unwrap().held,
            Some(vec![])
        );
        assert_eq!(beat(r#"{"renewed": 2}"#).await.unwrap().held, None);

        for bad in [
            "",
            "not json",
            r#"{"renewed": 2, "held": ["a-1""#,
            "null",
            "[]",
            r#"["a-1"]"#,
            r#""a-1""#,
            "42",
            "{}",
            r#"{"held": ["a-1"]}"#,
            r#"{"renewed": "2", "held": ["a-1"]}"#,
            r#"{"renewed": -1, "held": ["a-1"]}"#,
            r#"{"renewed": 2, "held": null}"#,
            r#"{"renewed": 2, "held": "a-1"}"#,
            r#"{"renewed": 2, "held": {"a-1": true}}"#,
            r#"{"renewed": 2, "held": [1, 2]}"#,
            r#"{"renewed": 2, "held": ["a-1", null]}"#,
            r#"{"renewed": 2, "held": [["a-1"]]}"#,
        ] {
            assert!(beat(bad).await.is_err(), "{bad:?} read as an answer");
        }
    }
}
