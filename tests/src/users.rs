//! A user-service in the test process and the calls tests make to it:
//! start it on a fresh database, log in, create users and agents, call any
//! route with a token, and call from another loopback address (the whole of
//! 127.0.0.0/8 is local on Linux, so one machine can play several clients).

use std::net::IpAddr;
use std::ops::Deref;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{in_process, InProcess};

/// The bootstrap admin's password in every test user-service.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// The service account's secret in every test user-service.
pub const SERVICE_PASSWORD: &str = "service account secret 42";

/// An answer: status, JSON body (`null` when there is none) and the
/// `Retry-After` header.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
}

impl Reply {
    async fn of(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            status,
            body: resp.json().await.unwrap_or(Value::Null),
            retry_after,
        }
    }
}

/// `method url` with a bearer token and an optional JSON body.
pub async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A client whose connections come from `ip` (a loopback address).
pub fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("an IP address");
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .expect("a client")
}

/// A user-service in this process; stopped when dropped.
pub struct Users(pub InProcess);

impl Deref for Users {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

impl Users {
    /// Starts one on `database_url` and `events_url`, with the bootstrap
    /// admin ([`ADMIN_PASSWORD`]) and service account ([`SERVICE_PASSWORD`]).
    pub async fn start(database_url: &str, events_url: &str) -> Self {
        Self::start_with(database_url, events_url, &[]).await
    }

    /// [`Users::start`] with more variables (later ones win).
    pub async fn start_with(database_url: &str, events_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars = vec![
            ("DIALSTACK_DATABASE_URL", database_url),
            ("DIALSTACK_EVENTS_URL", events_url),
            ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("DIALSTACK_SERVICE_PASSWORD", SERVICE_PASSWORD),
        ];
        vars.extend_from_slice(extra);
        Self(in_process::<user_service::Application>(&vars).await)
    }

    /// `method path` with a token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(
            &self.http,
            method,
            &format!("{}{path}", self.url),
            token,
            body,
        )
        .await
    }

    /// `POST path` without a token (the auth endpoints).
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.post_with(&self.http, path, body).await
    }

    /// `POST path` without a token through `http` (e.g. [`client_from`]).
    pub async fn post_with(&self, http: &reqwest::Client, path: &str, body: Value) -> Reply {
        Reply::of(
            http.post(format!("{}{path}", self.url))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The whole login answer.
    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.login_with(&self.http, username, password).await
    }

    /// The whole login answer, through `http`.
    pub async fn login_with(
        &self,
        http: &reqwest::Client,
        username: &str,
        password: &str,
    ) -> Reply {
        self.post_with(
            http,
            "/v1/auth/login",
            json!({"username": username, "password": password}),
        )
        .await
    }

    /// The client-credentials answer, through `http`.
    pub async fn client_token_with(&self, http: &reqwest::Client, id: &str, secret: &str) -> Reply {
        Self::client_token_at(http, &self.url, id, secret).await
    }

    /// The client-credentials answer of the user-service at `url` (one
    /// started elsewhere, e.g. by `dialstack up`).
    pub async fn client_token_at(
        http: &reqwest::Client,
        url: &str,
        id: &str,
        secret: &str,
    ) -> Reply {
        Reply::of(
            http.post(format!("{url}/v1/auth/token"))
                .json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// An access token of `username`; the login must succeed.
    pub async fn token(&self, username: &str, password: &str) -> String {
        let r = self.login(username, password).await;
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    /// An access token of the bootstrap admin.
    pub async fn admin(&self) -> String {
        self.token("admin", ADMIN_PASSWORD).await
    }

    /// An access token of the service account (client credentials).
    pub async fn service_token(&self) -> String {
        let r = self
            .client_token_with(&self.http, user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD)
            .await;
        assert_eq!(r.status, 200, "client credentials: {}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with the password `"{name} has a long password"`;
    /// returns its id and password.
    pub async fn user(
        &self,
        admin: &str,
        name: &str,
        role: &str,
        teams: &[&str],
    ) -> (String, String) {
        let password = format!("{name} has a long password");
        let (status, user) = self
            .call(
                Method::POST,
                "/v1/users",
                admin,
                Some(json!({"username": name, "password": password, "role": role, "teams": teams})),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        (user["id"].as_str().unwrap().to_owned(), password)
    }

    /// Sets the agent profile of user `id`; returns the profile as served.
    pub async fn profile(&self, admin: &str, id: &str, profile: Value) -> Value {
        let (status, agent) = self
            .call(
                Method::PUT,
                &format!("/v1/agents/{id}"),
                admin,
                Some(profile),
            )
            .await;
        assert_eq!(status, 200, "{agent}");
        agent
    }

    /// Creates an agent in `team` with a profile; returns its id and token.
    pub async fn agent(&self, admin: &str, name: &str, team: &str) -> (String, String) {
        let (id, password) = self.user(admin, name, "agent", &[]).await;
        self.profile(
            admin,
            &id,
            json!({"display_name": name, "sip_uri": format!("sip:{name}@pbx.example"), "teams": [team]}),
        )
        .await;
        (id, self.token(name, &password).await)
    }

    /// `POST /v1/agents/{id}/state` with `body`, as `token`.
    pub async fn set_state(&self, token: &str, id: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/agents/{id}/state"),
            token,
            Some(body),
        )
        .await
    }

    /// `POST /v1/agents/reserve` with `body`, as `token` (a service's).
    pub async fn reserve(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, "/v1/agents/reserve", token, Some(body))
            .await
    }

    /// Brings available agent `id` into `until` (`reserved`, `on_call` or
    /// `wrap_up`) the way the dialer does, with the service token `service`:
    /// reserves exactly this agent for a fresh call, connects it, ends the
    /// call. Returns the call id.
    pub async fn take_call(&self, service: &str, id: &str, until: &str) -> String {
        let call_id = uuid::Uuid::now_v7().to_string();
        let (status, body) = self
            .reserve(service, json!({"call_id": call_id, "agent_id": id}))
            .await;
        assert_eq!(status, 200, "reserve {id}: {body}");
        let steps: &[&str] = match until {
            "reserved" => &[],
            "on_call" => &["on_call"],
            "wrap_up" => &["on_call", "wrap_up"],
            other => panic!("{other} is not a state of a call"),
        };
        for step in steps {
            let (status, body) = self
                .set_state(service, id, json!({"state": step, "call_id": call_id}))
                .await;
            assert_eq!(status, 200, "{id} to {step}: {body}");
        }
        call_id
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a metric on `/metrics`, named with its labels as
    /// rendered (e.g. `dialstack_agents{state="available"}`); 0 when absent.
    pub async fn metric_or_zero(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

/// One `agent.state` event as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    /// The agent.
    pub agent_id: String,
    /// The state it left.
    pub previous: String,
    /// The state it entered.
    pub state: String,
    /// Why.
    pub reason: String,
    /// The call, if the event names one.
    pub call_id: Option<String>,
    /// The agent's teams.
    pub teams: Vec<String>,
}

impl AgentEvent {
    /// `(previous, state, reason, call_id)`, for comparing sequences.
    pub fn step(&self) -> (String, String, String, Option<String>) {
        (
            self.previous.clone(),
            self.state.clone(),
            self.reason.clone(),
            self.call_id.clone(),
        )
    }
}

#[derive(Default)]
struct AgentEventSink(std::sync::Mutex<Vec<AgentEvent>>);

#[async_trait::async_trait]
impl dialstack_common::bus::Handler for AgentEventSink {
    async fn handle(
        &self,
        d: &dialstack_common::bus::Delivery,
    ) -> Result<(), dialstack_common::bus::HandleError> {
        use dialstack_common::bus::HandleError;
        let ev = dialstack_common::events::CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let data: dialstack_contract::AgentStateChanged =
            serde_json::from_value(ev.data).map_err(|e| HandleError::Permanent(e.to_string()))?;
        self.0
            .lock()
            .map_err(|e| HandleError::Permanent(e.to_string()))?
            .push(AgentEvent {
                agent_id: data.agent_id,
                previous: data.previous,
                state: data.state,
                reason: data.reason,
                call_id: data.call_id,
                teams: data.teams,
            });
        Ok(())
    }
}

/// A consumer of `agent.state` on an events channel that keeps every event
/// in arrival order; stopped by [`AgentEventLog::stop`].
pub struct AgentEventLog {
    sink: std::sync::Arc<AgentEventSink>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AgentEventLog {
    /// Binds a queue on `events_url` (before the service publishes, so no
    /// event is missed) and starts consuming it.
    pub async fn start(events_url: &str) -> Self {
        use dialstack_common::bus::{Channel, Subscription, EVENTS};
        let channel = Channel::connect(events_url, EVENTS)
            .await
            .expect("the events broker");
        let sub = Subscription::new(crate::unique("agent-events"), &["agent.state"]);
        channel.prepare(&sub).await.expect("an agent.state queue");
        let sink = std::sync::Arc::new(AgentEventSink::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (sink, stop) = (sink.clone(), stop.clone());
            tokio::spawn(async move {
                channel
                    .consume(sub, sink, stop)
                    .await
                    .expect("consuming agent.state")
            })
        };
        Self { sink, stop, task }
    }

    /// The events of `agent_id` so far, in arrival order.
    pub fn of(&self, agent_id: &str) -> Vec<AgentEvent> {
        self.sink
            .0
            .lock()
            .expect("the event log")
            .iter()
            .filter(|e| e.agent_id == agent_id)
            .cloned()
            .collect()
    }

    /// Waits (up to 30 s) until the steps of `agent_id` are exactly
    /// `expected` ([`AgentEvent::step`]); returns its events.
    pub async fn expect(
        &self,
        what: &str,
        agent_id: &str,
        expected: &[(&str, &str, &str, Option<&str>)],
    ) -> Vec<AgentEvent> {
        let expected: Vec<_> = expected
            .iter()
            .map(|(p, s, r, c)| {
                (
                    p.to_string(),
                    s.to_string(),
                    r.to_string(),
                    c.map(str::to_owned),
                )
            })
            .collect();
        crate::eventually(what, std::time::Duration::from_secs(30), || async {
            let got = self.of(agent_id);
            let steps: Vec<_> = got.iter().map(AgentEvent::step).collect();
            if steps == expected {
                Ok(got)
            } else {
                Err(format!("{steps:?}"))
            }
        })
        .await
    }

    /// Stops consuming.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the consumer ends");
    }
}
