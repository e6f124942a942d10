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

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}
