//! monitor-service's alerting as an operator meets it: rules as data, the
//! seed's failure-rate rule firing on call events from the bus (published
//! as media-processor publishes them), notifications received by a WeCom
//! robot and an SMTP server running in the test, silences, restarts, two
//! replicas, retries, and Alertmanager's webhook; agents by state from
//! `agent.state`; the wallboard's stream and its page in headless Chromium.
//! Real RabbitMQ, real MariaDB or SQLite, real user-service for tokens and
//! agent states. The same alert through the real suite and SIPp is in
//! `alerts_e2e.rs`.

use std::time::Duration;

use dialstack_common::bus::{Channel, OutMessage, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, Outcome};
use dialstack_tests::smtp::SmtpSink;
use dialstack_tests::wecom::{Reply, WecomRobot};
use dialstack_tests::{
    amqp_url, eventually, fresh_mysql_url, fresh_sqlite_url, in_process, typed, unique,
    CallEventData, InProcess,
};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "alerts test admin password";
const WECOM_VAR: &str = "DIALSTACK_ALERT_WECOM_OPS";
const SEED: &str = "CallFailureRateHigh";
/// The static bearer Alertmanager presents (its `credentials_file`).
const AM_TOKEN: &str = "alertmanager-test-token-0123456789abcdef";

/// user-service for tokens, the bus, a robot and a mail server.
struct World {
    users: InProcess,
    jwks: String,
    admin: String,
    events: String,
    bus: Channel,
    robot: WecomRobot,
    smtp: SmtpSink,
    http: reqwest::Client,
}

async fn world() -> World {
    let events = amqp_url(&unique("alerts"));
    let users = in_process::<user_service::Application>(&[
        ("DIALSTACK_DATABASE_URL", &fresh_sqlite_url()),
        ("DIALSTACK_EVENTS_URL", &events),
        ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ])
    .await;
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/v1/auth/login", users.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = login["access_token"]
        .as_str()
        .expect("admin token")
        .to_owned();
    World {
        jwks: format!("{}/.well-known/jwks.json", users.url),
        users,
        admin,
        bus: Channel::connect(&events, EVENTS).await.unwrap(),
        events,
        robot: WecomRobot::start().await,
        smtp: SmtpSink::start().await,
        http,
    }
}

impl World {
    /// A monitor-service on `db_url` evaluating five times a second.
    async fn monitor(&self, db_url: &str) -> InProcess {
        in_process::<monitor_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", db_url),
            ("DIALSTACK_EVENTS_URL", &self.events),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &self.jwks),
            ("DIALSTACK_ALERT_EVAL_MS", "200"),
            ("DIALSTACK_ALERT_LEASE_MS", "1500"),
            ("DIALSTACK_NOTIFY_RETRY_MS", "100"),
            ("DIALSTACK_WECOM_BACKOFF_MS", "300"),
            (
                "DIALSTACK_DASHBOARD_URL",
                "http://grafana.example.net/d/dialstack-operations",
            ),
            (WECOM_VAR, &self.robot.url),
            ("DIALSTACK_ALERTMANAGER_TOKEN", AM_TOKEN),
            ("DIALSTACK_WALLBOARD_MS", "200"),
        ])
        .await
    }

    async fn call(
        &self,
        m: &InProcess,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", m.url))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The robot and mail channels; returns their ids.
    async fn channels(&self, m: &InProcess) -> (String, String) {
        let (s, w) = self
            .call(
                m,
                Method::POST,
                "/v1/alert-channels",
                Some(json!({"kind": "wecom", "name": "ops-robot", "url_env": WECOM_VAR})),
            )
            .await;
        assert_eq!(s, 201, "{w}");
        let (s, e) = self
            .call(
                m,
                Method::POST,
                "/v1/alert-channels",
                Some(json!({"kind": "email", "name": "ops-mail", "smtp_host": "127.0.0.1",
                    "smtp_port": self.smtp.addr.port(), "tls": "none",
                    "from": "dialstack@example.net", "to": ["oncall@example.net", "lead@example.net"]})),
            )
            .await;
        assert_eq!(s, 201, "{e}");
        (
            w["id"].as_str().unwrap().to_owned(),
            e["id"].as_str().unwrap().to_owned(),
        )
    }

    /// `n` completed calls of `campaign` on the bus.
    async fn calls(&self, campaign: &str, n: usize, outcome: Outcome, sip_status: Option<u16>) {
        for _ in 0..n {
            let data = CallEventData {
                call_id: uuid::Uuid::now_v7().to_string(),
                attempt_id: uuid::Uuid::now_v7().to_string(),
                campaign_id: campaign.into(),
                phone: "+14155550101".into(),
                at_ms: dialstack_common::now_ms(),
                outcome: Some(outcome),
                sip_status,
                ..Default::default()
            };
            let ev = CloudEvent::new(
                "media-processor",
                types::CALL_COMPLETED,
                &data.call_id,
                &typed(types::CALL_COMPLETED, &data).to_value(),
            );
            self.bus
                .publish(&OutMessage {
                    id: ev.id.clone(),
                    routing_key: ev.ty.clone(),
                    key: data.call_id.clone(),
                    payload: ev.to_bytes(),
                })
                .await
                .unwrap();
        }
    }

    /// One event of type `ty` for call `call_id` of `campaign` on the bus.
    async fn event(&self, ty: &str, campaign: &str, call_id: &str, outcome: Option<Outcome>) {
        let data = CallEventData {
            call_id: call_id.into(),
            attempt_id: call_id.into(),
            campaign_id: campaign.into(),
            phone: "+14155550101".into(),
            at_ms: dialstack_common::now_ms(),
            outcome,
            sip_status: outcome.map(|o| if o == Outcome::Failed { 503 } else { 200 }),
            ..Default::default()
        };
        let ev = CloudEvent::new("media-processor", ty, call_id, &typed(ty, &data).to_value());
        self.bus
            .publish(&OutMessage {
                id: ev.id.clone(),
                routing_key: ev.ty.clone(),
                key: call_id.into(),
                payload: ev.to_bytes(),
            })
            .await
            .unwrap();
    }

    /// Waits until the monitor counted `n` calls in the last 5 minutes.
    async fn counted(&self, m: &InProcess, n: i64) -> Value {
        eventually(
            "monitor counted the calls",
            Duration::from_secs(60),
            || async {
                let (_, s) = self.call(m, Method::GET, "/v1/stats", None).await;
                if s["total"] == n {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            },
        )
        .await
    }

    async fn alerts(&self, m: &InProcess, state: &str) -> Vec<Value> {
        let (s, a) = self
            .call(m, Method::GET, &format!("/v1/alerts?state={state}"), None)
            .await;
        assert_eq!(s, 200, "{a}");
        a.as_array().unwrap().clone()
    }

    /// Waits for `n` robot messages and `n` mails in all.
    async fn delivered(&self, n: usize) {
        eventually(
            &format!("{n} robot messages and {n} mails"),
            Duration::from_secs(30),
            || async {
                let (w, e) = (self.robot.accepted().len(), self.smtp.mails().len());
                if w >= n && e >= n {
                    Ok(())
                } else {
                    Err(format!("robot {w}, mail {e}"))
                }
            },
        )
        .await;
    }

    /// Asserts that exactly `n` of each arrived and no more arrive within
    /// a few evaluation intervals.
    async fn exactly(&self, n: usize) {
        self.delivered(n).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(self.robot.accepted().len(), n, "robot messages");
        assert_eq!(self.smtp.mails().len(), n, "mails");
    }

    /// A user of user-service with `role` and `teams`; its id and token.
    async fn user(&self, name: &str, role: &str, teams: &[&str]) -> (String, String) {
        let id = self.new_user(name, role, teams).await;
        (id, self.login(name).await)
    }

    /// Creates a user of user-service; its id.
    async fn new_user(&self, name: &str, role: &str, teams: &[&str]) -> String {
        let password = format!("{name} has a long password");
        let resp = self
            .http
            .post(format!("{}/v1/users", self.users.url))
            .bearer_auth(&self.admin)
            .json(&json!({"username": name, "password": password, "role": role, "teams": teams}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An access token of user `name` (made by [`World::new_user`]).
    async fn login(&self, name: &str) -> String {
        let login: Value = self
            .http
            .post(format!("{}/v1/auth/login", self.users.url))
            .json(&json!({"username": name, "password": format!("{name} has a long password")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"].as_str().unwrap().to_owned()
    }

    /// An agent of user-service in `teams`; its id and token.
    async fn agent(&self, name: &str, teams: &[&str]) -> (String, String) {
        let id = self.new_user(name, "agent", &[]).await;
        let resp = self
            .http
            .put(format!("{}/v1/agents/{id}", self.users.url))
            .bearer_auth(&self.admin)
            .json(
                &json!({"display_name": name, "sip_uri": format!("sip:{name}@pbx.example"),
                "teams": teams}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Logged in after the profile: a profile change voids earlier tokens.
        (id, self.login(name).await)
    }

    /// The agent moves to `body` (`{"state": ...}`) through user-service,
    /// which publishes the `agent.state` event.
    async fn agent_moves(&self, id: &str, token: &str, body: Value) {
        let resp = self
            .http
            .post(format!("{}/v1/agents/{id}/state", self.users.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{body}");
    }

    /// Publishes an `agent.state` event made by the test.
    async fn agent_event(&self, agent: &str, state: &str, teams: &[&str], at_ms: i64) {
        let ce = dialstack_tests::campaigns::agent_state(agent, state, teams, at_ms, None);
        dialstack_tests::campaigns::publish(&self.bus, &ce).await;
    }

    /// Publishes `data` as an `agent.state` event's data, whatever it is.
    async fn raw_agent_event(&self, data: Value) {
        let ce = CloudEvent::new("user-service", types::AGENT_STATE, "mallory", &data);
        dialstack_tests::campaigns::publish(&self.bus, &ce).await;
    }

    /// An open wallboard stream of `m` as `token`.
    async fn wallboard(&self, m: &InProcess, token: &str) -> reqwest::Response {
        let resp = self
            .http
            .get(format!("{}/v1/wallboard", m.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp
    }
}

/// `dialstack_agents{state,team}` of `m` as (team, state) → agents, for
/// series with a value above zero.
async fn agents_gauge(m: &InProcess) -> std::collections::BTreeMap<(String, String), f64> {
    let text = reqwest::get(format!("{}/metrics", m.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = |l: &str, k: &str| {
        l.split(&format!("{k}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    text.lines()
        .filter(|l| l.starts_with("dialstack_agents{"))
        .filter_map(|l| {
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            (v > 0.0).then(|| ((label(l, "team"), label(l, "state")), v))
        })
        .collect()
}

/// `(team, state, n)` triples as the gauge map.
fn gauge_of(rows: &[(&str, &str, f64)]) -> std::collections::BTreeMap<(String, String), f64> {
    rows.iter()
        .map(|(t, s, n)| (((*t).to_owned(), (*s).to_owned()), *n))
        .collect()
}

/// Waits until `dialstack_agents` of `m` is exactly `want` (non-zero series).
async fn agents_are(m: &InProcess, want: &[(&str, &str, f64)]) {
    let want = gauge_of(want);
    eventually(
        "dialstack_agents as expected",
        Duration::from_secs(30),
        || async {
            let got = agents_gauge(m).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}, want {want:?}"))
            }
        },
    )
    .await;
}

/// The value of the series of `name` whose labels include all of `labels`.
async fn metric(m: &InProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", m.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn bad(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(
        body["code"] == "invalid_request" || body["code"] == "invalid_json",
        "{body}"
    );
    assert!(body["request_id"].is_string(), "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains(field), "{field} not named in {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_channels_and_silences_are_data_and_bad_ones_name_the_field() {
    let w = world().await;
    let m = w.monitor(&fresh_sqlite_url()).await;
    let (s, rules) = w.call(&m, Method::GET, "/v1/alert-rules", None).await;
    assert_eq!(s, 200);
    let seed = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["name"] == SEED)
        .expect("the seed's rule ships")
        .clone();
    assert_eq!(seed["rule"]["metric"], "failure_rate");
    assert_eq!(seed["rule"]["threshold"], 0.05);
    assert_eq!(seed["rule"]["window"], "5m");
    assert_eq!(seed["rule"]["min_calls"], 20);
    // System load on every service (the shared metrics registry).
    let rss = metric(&m, "process_resident_memory_bytes", &[]).await;
    assert!(rss.is_some_and(|b| b > 1e6), "{rss:?}");
    assert!(metric(&m, "process_open_fds", &[])
        .await
        .is_some_and(|n| n > 0.0));

    let rule = json!({"name": "AbandonHigh", "metric": "abandon_ratio", "threshold": 0.03,
        "window": "30m", "for": "1m", "labels": {"team": "sales"}, "severity": "warn"});
    let (s, created) = w
        .call(&m, Method::POST, "/v1/alert-rules", Some(rule.clone()))
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["rule"]["for"], "1m");
    let (s, dup) = w
        .call(&m, Method::POST, "/v1/alert-rules", Some(rule.clone()))
        .await;
    assert_eq!((s, dup["code"].as_str()), (409, Some("conflict")));

    let cases = [
        (
            "metric",
            json!({"name": "x", "metric": "cpu_temperature", "threshold": 1}),
        ),
        ("metric", json!({"name": "x", "threshold": 1})),
        (
            "window",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "window": "five minutes"}),
        ),
        (
            "for",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "for": "-3m"}),
        ),
        (
            "threshold",
            json!({"name": "x", "metric": "failure_rate", "threshold": 7}),
        ),
        (
            "severity",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "severity": "doom"}),
        ),
        (
            "labels",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "labels": {"host": "a"}}),
        ),
        (
            "channels",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "channels": ["nope"]}),
        ),
        (
            "name",
            json!({"name": "", "metric": "failure_rate", "threshold": 0.1}),
        ),
        (
            "body",
            json!({"name": "x", "metric": "failure_rate", "threshold": 0.1, "evil": true}),
        ),
        ("body", json!([1, 2])),
    ];
    for (field, body) in cases {
        let (s, b) = w
            .call(&m, Method::POST, "/v1/alert-rules", Some(body))
            .await;
        bad(s, &b, field);
    }
    let (s, b) = w
        .call(
            &m,
            Method::PATCH,
            &format!("/v1/alert-rules/{id}"),
            Some(json!({"for": "soon"})),
        )
        .await;
    bad(s, &b, "for");
    let raw = w
        .http
        .post(format!("{}/v1/alert-rules", m.url))
        .bearer_auth(&w.admin)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let b: Value = raw.json().await.unwrap();
    assert_eq!(b["code"], "invalid_json");

    let (s, patched) = w
        .call(
            &m,
            Method::PATCH,
            &format!("/v1/alert-rules/{id}"),
            Some(json!({"threshold": 0.05, "enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["rule"]["threshold"], 0.05);
    assert_eq!(patched["rule"]["enabled"], false);
    assert_eq!(patched["rule"]["window"], "30m", "fields not patched stay");
    let (s, _) = w
        .call(&m, Method::DELETE, &format!("/v1/alert-rules/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, gone) = w
        .call(&m, Method::GET, &format!("/v1/alert-rules/{id}"), None)
        .await;
    assert_eq!((s, gone["code"].as_str()), (404, Some("not_found")));
    let (s, _) = w
        .call(
            &m,
            Method::GET,
            &format!("/v1/alert-rules/{}", "x".repeat(500)),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // Channels.
    for (field, body) in [
        ("kind", json!({"kind": "pager", "name": "p"})),
        (
            "url_env",
            json!({"kind": "wecom", "name": "r", "url_env": "DIALSTACK_DATABASE_URL"}),
        ),
        (
            "to",
            json!({"kind": "email", "name": "m", "smtp_host": "h", "from": "a@b.cn",
            "to": ["x@y.cn\r\nBcc: all@y.cn"]}),
        ),
        (
            "smtp_port",
            json!({"kind": "email", "name": "m", "smtp_host": "h", "smtp_port": 0,
            "from": "a@b.cn", "to": ["x@y.cn"]}),
        ),
        ("name", json!({"kind": "wecom", "url_env": WECOM_VAR})),
    ] {
        let (s, b) = w
            .call(&m, Method::POST, "/v1/alert-channels", Some(body))
            .await;
        bad(s, &b, field);
    }
    let (s, b) = w
        .call(&m, Method::POST, "/v1/alert-channels/nope/test", None)
        .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));

    // Silences.
    for (field, body) in [
        ("matchers", json!({"matchers": [], "duration": "1h"})),
        (
            "matchers",
            json!({"matchers": [{"name": "alertname", "value": "x", "negate": true}], "duration": "1h"}),
        ),
        (
            "matchers",
            json!({"matchers": [{"name": "bad name", "value": "x"}], "duration": "1h"}),
        ),
        (
            "duration",
            json!({"matchers": [{"name": "alertname", "value": "x"}], "duration": "a while"}),
        ),
        (
            "duration",
            json!({"matchers": [{"name": "alertname", "value": "x"}], "duration": "90d"}),
        ),
        (
            "ends_at",
            json!({"matchers": [{"name": "alertname", "value": "x"}]}),
        ),
        (
            "ends_at",
            json!({"matchers": [{"name": "alertname", "value": "x"}], "ends_at": "yesterday"}),
        ),
        (
            "unknown field",
            json!({"matchers": [{"name": "alertname", "value": "x"}], "duration": "1h", "x": 1}),
        ),
    ] {
        let (s, b) = w.call(&m, Method::POST, "/v1/silences", Some(body)).await;
        bad(s, &b, field);
    }
    let (s, sil) = w
        .call(
            &m,
            Method::POST,
            "/v1/silences",
            Some(json!({"matchers": [{"name": "alertname", "value": SEED}],
            "duration": "2h", "comment": "trunk maintenance"})),
        )
        .await;
    assert_eq!(s, 201, "{sil}");
    let (_, list) = w.call(&m, Method::GET, "/v1/silences", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let sid = sil["id"].as_str().unwrap();
    assert_eq!(
        w.call(&m, Method::DELETE, &format!("/v1/silences/{sid}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        w.call(&m, Method::DELETE, &format!("/v1/silences/{sid}"), None)
            .await
            .0,
        404
    );

    // Alerts query and the Alertmanager webhook.
    let (s, b) = w
        .call(&m, Method::GET, "/v1/alerts?state=sleeping", None)
        .await;
    bad(s, &b, "state");
    let (s, b) = w.call(&m, Method::GET, "/v1/alerts?limit=0", None).await;
    bad(s, &b, "limit");
    let alert = json!({"status": "firing", "labels": {"alertname": "X"}, "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "abc"});
    for (field, body) in [
        ("version", json!({"version": "3", "alerts": []})),
        (
            "alerts.status",
            json!({"version": "4", "alerts": [{"status": "on fire", "labels": {"alertname": "X"}}]}),
        ),
        (
            "alerts.labels",
            json!({"version": "4", "alerts": [{"status": "firing", "labels": {}}]}),
        ),
        (
            "alerts.startsAt",
            json!({"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "X"}, "startsAt": "noon"}]}),
        ),
        (
            "alerts",
            json!({"version": "4", "alerts": vec![alert.clone(); 1001]}),
        ),
        ("alerts", json!({"version": "4"})),
    ] {
        let (s, b) = w
            .call(&m, Method::POST, "/v1/alerts/webhook", Some(body))
            .await;
        bad(s, &b, field);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_rule_fires_once_per_channel_resolves_and_silences_hold() {
    let w = world().await;
    let m = w.monitor(&fresh_mysql_url()).await;
    w.channels(&m).await;
    let campaign = unique("k");

    // What an outsider could put on the bus: not JSON, a broken envelope, a
    // call event breaking the contract. The consumer dead-letters them and
    // goes on counting.
    for (ty, payload) in [
        (types::CALL_COMPLETED, b"{this is not json".to_vec()),
        (types::CALL_ANSWERED, br#"{"specversion":"1.0"}"#.to_vec()),
        (
            types::CALL_COMPLETED,
            CloudEvent::new(
                "media-processor",
                types::CALL_COMPLETED,
                "x",
                &json!({"call_id": "x".repeat(5000), "outcome": "exploded"}),
            )
            .to_bytes()
            .to_vec(),
        ),
    ] {
        w.bus
            .publish(&OutMessage {
                id: uuid::Uuid::now_v7().to_string(),
                routing_key: ty.into(),
                key: "garbage".into(),
                payload: payload.into(),
            })
            .await
            .unwrap();
    }
    // Busy callees are outcomes, not failures: 30 busy calls page nobody.
    w.calls(&campaign, 30, Outcome::Busy, Some(486)).await;
    w.calls(&campaign, 5, Outcome::Rejected, Some(603)).await;
    let stats = w.counted(&m, 35).await;
    assert_eq!(stats["failures"], 0, "{stats}");
    assert_eq!(stats["failure_rate"], 0.0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(w.alerts(&m, "firing").await.is_empty());
    assert!(w.robot.received().is_empty() && w.smtp.mails().is_empty());

    // 20 network failures out of 55 calls: 36 %.
    w.calls(&campaign, 10, Outcome::Failed, Some(503)).await;
    w.calls(&campaign, 10, Outcome::Rejected, Some(404)).await;
    let stats = w.counted(&m, 55).await;
    assert_eq!(stats["failures"], 20, "{stats}");
    w.exactly(1).await;
    let firing = w.alerts(&m, "firing").await;
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0]["rule"], SEED);
    assert_eq!(firing[0]["labels"]["severity"], "page");
    let md = &w.robot.accepted()[0];
    assert!(md.contains("[FIRING] CallFailureRateHigh"), "{md}");
    // The value when it fired: over 5 %, whatever share of the calls had
    // been counted by then.
    let value: f64 = md
        .split("value: **")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {md}"));
    assert!(value > 5.0 && value <= 100.0, "{md}");
    assert!(md.contains("threshold: **5.0 %**"), "{md}");
    assert!(
        md.contains("http://grafana.example.net/d/dialstack-operations"),
        "{md}"
    );
    assert_eq!(w.robot.received()[0].key, "test-key");
    let mail = &w.smtp.mails()[0];
    assert_eq!(mail.from, "dialstack@example.net");
    assert_eq!(mail.to, vec!["oncall@example.net", "lead@example.net"]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[FIRING] CallFailureRateHigh")
    );
    let body = mail.decoded();
    assert!(body.contains("multipart/alternative"), "{body}");
    assert!(
        body.contains("text/plain") && body.contains("text/html"),
        "{body}"
    );
    assert!(body.contains(&format!("value: {value:.1} %")), "{body}");
    assert!(
        body.contains("<th align=\"left\">threshold</th><td>5.0 %</td>"),
        "{body}"
    );
    assert_eq!(
        metric(
            &m,
            "dialstack_alerts",
            &[("state", "firing"), ("rule", SEED)]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "dialstack_notifications_total",
            &[("channel", "ops-robot"), ("result", "sent")]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "dialstack_call_failures_total",
            &[("campaign", &campaign)]
        )
        .await,
        Some(20.0)
    );

    // Successes until the rate is under 5 %: one resolution per channel.
    w.calls(&campaign, 370, Outcome::AnsweredHuman, Some(200))
        .await;
    w.counted(&m, 425).await;
    w.exactly(2).await;
    assert!(w.robot.accepted()[1].contains("[RESOLVED] CallFailureRateHigh"));
    assert_eq!(
        w.smtp.mails()[1].header("Subject").as_deref(),
        Some("[RESOLVED] CallFailureRateHigh")
    );
    assert!(w.alerts(&m, "firing").await.is_empty());
    let resolved = w.alerts(&m, "resolved").await;
    assert_eq!(resolved.len(), 1);
    assert!(resolved[0]["resolved_at"].as_i64().is_some());

    // Silenced: it fires again, and nobody is told.
    let (s, _) = w
        .call(
            &m,
            Method::POST,
            "/v1/silences",
            Some(json!({"matchers": [{"name": "alertname", "value": SEED}],
            "duration": "1h", "comment": "carrier maintenance"})),
        )
        .await;
    assert_eq!(s, 201);
    w.calls(&campaign, 100, Outcome::Failed, Some(500)).await;
    w.counted(&m, 525).await;
    eventually("the alert fires again", Duration::from_secs(20), || async {
        let n = w.alerts(&m, "firing").await.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} firing"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.robot.accepted().len(), 2, "silenced");
    assert_eq!(w.smtp.mails().len(), 2, "silenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_is_not_notified_again_after_a_restart() {
    let w = world().await;
    let db = fresh_sqlite_url();
    let m = w.monitor(&db).await;
    w.channels(&m).await;
    let campaign = unique("k");
    w.calls(&campaign, 25, Outcome::Failed, Some(408)).await;
    w.counted(&m, 25).await;
    w.exactly(1).await;
    drop(m);
    // The first instance gives its lease up on the way down; the second
    // reads the firing alert from the database.
    let m = w.monitor(&db).await;
    eventually(
        "the restarted monitor holds the alert",
        Duration::from_secs(20),
        || async {
            let v = metric(
                &m,
                "dialstack_alerts",
                &[("state", "firing"), ("rule", SEED)],
            )
            .await;
            if v == Some(1.0) {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        w.robot.accepted().len(),
        1,
        "not re-notified after the restart"
    );
    assert_eq!(w.smtp.mails().len(), 1, "not re-notified after the restart");
    // The restarted instance evaluates: it resolves the alert.
    w.calls(&campaign, 500, Outcome::AnsweredHuman, Some(200))
        .await;
    w.counted(&m, 525).await;
    w.exactly(2).await;
    assert!(w.robot.accepted()[1].contains("RESOLVED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_notify_once() {
    let w = world().await;
    let db = fresh_mysql_url();
    let a = w.monitor(&db).await;
    let b = w.monitor(&db).await;
    w.channels(&a).await;
    let campaign = unique("k");
    w.calls(&campaign, 30, Outcome::Failed, Some(503)).await;
    w.counted(&b, 30).await;
    w.exactly(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.robot.accepted().len(), 1, "one replica notified");
    assert_eq!(w.smtp.mails().len(), 1, "one replica notified");
    for m in [&a, &b] {
        assert_eq!(w.alerts(m, "firing").await.len(), 1);
    }
    // Whichever replica is left takes over and resolves.
    drop(a);
    w.calls(&campaign, 600, Outcome::AnsweredHuman, Some(200))
        .await;
    w.counted(&b, 630).await;
    w.exactly(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_with_backoff() {
    let w = world().await;
    let m = w.monitor(&fresh_sqlite_url()).await;
    let (robot, mail) = w.channels(&m).await;
    w.robot.script(&[
        Reply::Errcode(45009),
        Reply::Status(502),
        Reply::Errcode(-1),
    ]);
    w.smtp.refuse_next(2);
    for id in [&robot, &mail] {
        let (s, b) = w
            .call(
                &m,
                Method::POST,
                &format!("/v1/alert-channels/{id}/test"),
                None,
            )
            .await;
        assert_eq!(s, 202, "{b}");
    }
    w.exactly(1).await;
    let got = w.robot.received();
    assert_eq!(
        got.iter().map(|r| r.reply).collect::<Vec<_>>(),
        vec![
            Reply::Errcode(45009),
            Reply::Status(502),
            Reply::Errcode(-1),
            Reply::Ok
        ]
    );
    assert!(w.robot.accepted()[0].contains("[TEST]"));
    assert_eq!(w.smtp.refused(), 2);
    assert!(w.smtp.mails()[0]
        .header("Subject")
        .unwrap()
        .starts_with("[TEST]"));
    for (channel, result, n) in [
        ("ops-robot", "rate_limited", 1.0),
        ("ops-robot", "failed", 2.0),
        ("ops-robot", "sent", 1.0),
        ("ops-mail", "failed", 2.0),
        ("ops-mail", "sent", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "dialstack_notifications_total",
                &[("channel", channel), ("result", result)]
            )
            .await,
            Some(n),
            "{channel} {result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_webhook_alerts_are_notified_once_and_resolved() {
    let w = world().await;
    let m = w.monitor(&fresh_sqlite_url()).await;
    w.channels(&m).await;
    // What Alertmanager 0.27 posts for the DialstackServiceDown rule.
    let payload = |status: &str| {
        json!({
          "receiver": "monitor-service",
          "status": status,
          "alerts": [{
            "status": status,
            "labels": {"alertname": "DialstackServiceDown", "instance": "storage-service:8082",
                       "job": "dialstack", "severity": "page"},
            "annotations": {"summary": "storage-service:8082 is not answering scrapes",
                            "description": "A dialstack service is down or unreachable."},
            "startsAt": "2026-11-28T02:00:00.123456789Z",
            "endsAt": if status == "resolved" { "2026-11-28T02:10:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up%7Bjob%3D%22dialstack%22%7D+%3D%3D+0",
            "fingerprint": "5d2f4a1b9c8e7f60"
          }],
          "groupLabels": {"alertname": "DialstackServiceDown"},
          "commonLabels": {"alertname": "DialstackServiceDown", "severity": "page"},
          "commonAnnotations": {},
          "externalURL": "http://alertmanager:9093",
          "version": "4",
          "groupKey": "{}:{alertname=\"DialstackServiceDown\"}",
          "truncatedAlerts": 0
        })
    };
    let post = |body: Value, token: &str| {
        w.http
            .post(format!("{}/v1/alerts/webhook", m.url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let refused = post(
        payload("firing"),
        "alertmanager-test-token-0123456789abcdeX",
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 401, "a wrong static token is refused");
    for _ in 0..2 {
        let r = post(payload("firing"), AM_TOKEN).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    w.exactly(1).await;
    let md = &w.robot.accepted()[0];
    assert!(md.contains("[FIRING] DialstackServiceDown"), "{md}");
    assert!(
        md.contains("storage-service:8082 is not answering scrapes"),
        "{md}"
    );
    let firing = w.alerts(&m, "firing").await;
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0]["rule_id"], "alertmanager");

    // While a service is down, campaign alerts fire but are not notified.
    let (s, b) = w
        .call(
            &m,
            Method::POST,
            "/v1/alert-rules",
            Some(
                json!({"name": "CampaignFailing", "metric": "failure_rate", "threshold": 0.05,
                "group_by": ["campaign"], "min_calls": 5}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let campaign = unique("k");
    w.calls(&campaign, 10, Outcome::Failed, Some(503)).await;
    w.counted(&m, 10).await;
    eventually(
        "the campaign alert fires",
        Duration::from_secs(20),
        || async {
            let f = w.alerts(&m, "firing").await;
            if f.iter()
                .any(|a| a["labels"]["campaign"] == campaign.as_str())
            {
                Ok(())
            } else {
                Err(format!("{f:?}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.robot.accepted().len(), 1, "inhibited");
    assert_eq!(w.smtp.mails().len(), 1, "inhibited");
    let r = post(payload("resolved"), AM_TOKEN).await.unwrap();
    assert_eq!(r.status(), 200);
    // The resolution, and the campaign alert, no longer inhibited.
    w.exactly(3).await;
    let robot = w.robot.accepted();
    assert!(robot[1..]
        .iter()
        .any(|m| m.contains("[RESOLVED] DialstackServiceDown")));
    let campaign_firing = format!("[FIRING] CampaignFailing (campaign {campaign})");
    assert!(
        robot[1..].iter().any(|m| m.contains(&campaign_firing)),
        "{robot:?}"
    );
    let subjects: Vec<_> = w
        .smtp
        .mails()
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect();
    assert!(
        subjects.contains(&"[RESOLVED] DialstackServiceDown".to_owned()),
        "{subjects:?}"
    );
    assert!(subjects.contains(&campaign_firing), "{subjects:?}");
}

/// Reads Server-Sent Events from `resp` until a `wallboard` snapshot
/// satisfies `want`.
async fn snapshot_where(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let ty = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim);
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if ty == Some("wallboard") {
                last = serde_json::from_str(&data).unwrap();
                if want(&last) {
                    return last;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no matching snapshot; last: {last}"))
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallboard_streams_calls_rates_and_alerts() {
    let w = world().await;
    let m = w.monitor(&fresh_sqlite_url()).await;
    let page = reqwest::get(format!("{}/wallboard", m.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/v1/wallboard"));
    let anonymous = reqwest::get(format!("{}/v1/wallboard", m.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let campaign = unique("k");
    let mut resp = w
        .http
        .get(format!("{}/v1/wallboard", m.url))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    let first = snapshot_where(&mut resp, &mut buf, |_| true).await;
    assert_eq!(first["ringing"], 0);
    for c in ["c1", "c2", "c3"] {
        let id = format!("{campaign}-{c}");
        w.event(types::CALL_DIALING, &campaign, &id, None).await;
    }
    w.event(
        types::CALL_ANSWERED,
        &campaign,
        &format!("{campaign}-c1"),
        None,
    )
    .await;
    for c in ["c4", "c5"] {
        let id = format!("{campaign}-{c}");
        w.event(types::CALL_COMPLETED, &campaign, &id, Some(Outcome::Failed))
            .await;
    }
    let s = snapshot_where(&mut resp, &mut buf, |s| {
        s["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["ringing"] == 2 && c["talking"] == 1 && c["completed"] == 2)
    })
    .await;
    assert_eq!(
        (s["ringing"].as_i64(), s["talking"].as_i64()),
        (Some(2), Some(1))
    );
    let board = &s["campaigns"][0];
    assert_eq!(board["campaign_id"], campaign.as_str());
    assert_eq!(board["failure_rate"], 1.0);
    // It updates: the talking call ends.
    w.event(
        types::CALL_COMPLETED,
        &campaign,
        &format!("{campaign}-c1"),
        Some(Outcome::AnsweredHuman),
    )
    .await;
    let s = snapshot_where(&mut resp, &mut buf, |s| {
        s["talking"] == 0 && s["campaigns"][0]["completed"] == 3
    })
    .await;
    assert!((s["campaigns"][0]["failure_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!(s["alerts"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn history_is_pruned_and_pending_notifications_are_kept() {
    use monitor_service::db::{Repo, MIGRATIONS};
    use monitor_service::domain::channel::ChannelSpec;
    let db = dialstack_common::db::Db::connect(&fresh_sqlite_url())
        .await
        .unwrap();
    db.migrate(MIGRATIONS).await.unwrap();
    let repo = Repo { db };
    let spec = ChannelSpec::from_json(&json!({"kind": "wecom", "url_env": WECOM_VAR})).unwrap();
    let channel = repo.insert_channel("ops-robot", &spec).await.unwrap();
    repo.enqueue_test(&channel.id, "{}").await.unwrap();
    repo.enqueue_test(&channel.id, "{}").await.unwrap();
    let now = dialstack_common::now_ms();
    let due = repo.due_notifications(now, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(repo.notification_sent(&due[0].id).await.unwrap());
    assert!(
        !repo.notification_sent(&due[0].id).await.unwrap(),
        "sent once only"
    );
    let later = now + monitor_service::engine::HISTORY_MS + 1;
    assert_eq!(
        repo.prune(now, monitor_service::engine::HISTORY_MS)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        repo.prune(later, monitor_service::engine::HISTORY_MS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        repo.pending_notifications().await.unwrap(),
        1,
        "pending kept"
    );
}

/// Headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: NUL-terminated JSON on its fds 3 and 4,
/// here two FIFOs), attached to one page.
struct Browser {
    child: tokio::process::Child,
    to: tokio::net::unix::pipe::Sender,
    from: tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
    session: String,
    next_id: u64,
    /// The FIFOs and the profile, removed on close.
    dir: std::path::PathBuf,
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    async fn open(url: &str) -> Self {
        use tokio::net::unix::pipe;
        let dir = dialstack_tests::procs::log_dir("alerts_wallboard").join(unique("cdp-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (to_path, from_path) = (dir.join("to-chromium"), dir.join("from-chromium"));
        for p in [&to_path, &from_path] {
            let made = std::process::Command::new("mkfifo").arg(p).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", p.display());
        }
        // Opened read-write, neither end waits for the other (Linux).
        let to = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&to_path)
            .unwrap();
        let from = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&from_path)
            .unwrap();
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(
                r#"exec chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
                   --no-first-run --window-size=1280,900 --user-data-dir="$3" \
                   --remote-debugging-pipe about:blank 3<"$1" 4>"$2" 2>"$4""#,
            )
            .arg("sh")
            .arg(&to_path)
            .arg(&from_path)
            .arg(dir.join("profile"))
            .arg(dir.with_extension("log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (scripts/test-env.sh installs it)");
        let mut b = Self {
            child,
            to,
            from: tokio::io::BufReader::new(from),
            session: String::new(),
            next_id: 0,
            dir,
        };
        let target = b
            .send(None, "Target.createTarget", json!({"url": url}))
            .await;
        let attached = b
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// Sends one command (to the page's session when `session` is given)
    /// and returns its result; events in between are skipped.
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut buf = Vec::new();
            tokio::time::timeout_at(deadline, self.from.read_until(0, &mut buf))
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .unwrap();
            buf.pop();
            let reply: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self
            .send(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is `want` in the page.
    async fn until(&mut self, what: &str, expression: &str, want: Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.eval(expression).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {expression} is {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stores a PNG screenshot of the page at `path`.
    async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let session = self.session.clone();
        let r = self
            .send(
                Some(&session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Closes the browser and waits for it to exit.
    async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.send(None, "Browser.close", json!({})),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallboard_page_renders_live_in_chromium() {
    let w = world().await;
    let m = w.monitor(&fresh_sqlite_url()).await;
    let campaign = unique("k");
    for c in ["c1", "c2", "c3"] {
        let id = format!("{campaign}-{c}");
        w.event(types::CALL_DIALING, &campaign, &id, None).await;
    }
    w.event(
        types::CALL_ANSWERED,
        &campaign,
        &format!("{campaign}-c1"),
        None,
    )
    .await;
    w.event(
        types::CALL_COMPLETED,
        &campaign,
        &format!("{campaign}-c2"),
        Some(Outcome::Failed),
    )
    .await;
    let now = dialstack_common::now_ms();
    w.agent_event("ada", "on_call", &["east"], now).await;
    // The page shows what the stream says once the monitor has it.
    let mut resp = w.wallboard(&m, &w.admin).await;
    let mut buf = String::new();
    snapshot_where(&mut resp, &mut buf, |s| {
        s["ringing"] == 1
            && s["talking"] == 1
            && s["campaigns"][0]["completed"] == 1
            && s["agents"]["by_state"]["on_call"] == 1
    })
    .await;
    drop(resp);

    let url = format!("{}/wallboard#token={}", m.url, w.admin);
    let mut page = Browser::open(&url).await;
    let row = format!(
        "Array.from(document.querySelector('tr[data-campaign=\"{campaign}\"]')?.children ?? []).map((td) => td.textContent)"
    );
    page.until(
        "the campaign's row",
        &row,
        json!([campaign, "", "1", "1", "1", "100.0 %", "0.0 %"]),
    )
    .await;
    let text = |id: &str| format!("document.getElementById('{id}').textContent");
    page.until("talking", &text("talking"), json!("1")).await;
    page.until("agents on a call", &text("agents-on_call"), json!("1"))
        .await;
    page.until("agents available", &text("agents-available"), json!("0"))
        .await;
    // A mark that a reload would wipe out.
    page.eval("window.dialstackMark = 'still the same page'")
        .await;
    let updates = "Number(document.body.dataset.updates)";
    let before = page.eval(updates).await.as_i64().unwrap();

    // New events, no reload: the numbers move.
    w.agent_event("bea", "available", &["west"], dialstack_common::now_ms())
        .await;
    w.event(
        types::CALL_COMPLETED,
        &campaign,
        &format!("{campaign}-c1"),
        Some(Outcome::AnsweredHuman),
    )
    .await;
    page.until(
        "an agent became available",
        &text("agents-available"),
        json!("1"),
    )
    .await;
    page.until("the talking call ended", &text("talking"), json!("0"))
        .await;
    page.until(
        "the west team's row",
        "document.querySelector('tr[data-team=\"west\"] td:nth-child(2)')?.textContent ?? null",
        json!("1"),
    )
    .await;
    assert_eq!(
        page.eval("window.dialstackMark").await,
        json!("still the same page"),
        "updated in place, not reloaded"
    );
    let after = page.eval(updates).await.as_i64().unwrap();
    assert!(after > before, "{before} -> {after} snapshots rendered");

    let shot = dialstack_tests::procs::log_dir("alerts_wallboard").join("wallboard.png");
    let _ = std::fs::remove_file(&shot);
    page.screenshot(&shot).await;
    page.close().await;
    let png = std::fs::read(&shot).expect("the screenshot is stored");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_by_state_follow_agent_state_per_team_in_any_order() {
    let w = world().await;
    let db = fresh_mysql_url();
    let m = w.monitor(&db).await;
    agents_are(&m, &[]).await;

    // Real agents: user-service publishes their moves.
    let (alice, alice_token) = w.agent("alice", &["east"]).await;
    let (bob, bob_token) = w.agent("bob", &["east", "west"]).await;
    w.agent_moves(&alice, &alice_token, json!({"state": "available"}))
        .await;
    w.agent_moves(&bob, &bob_token, json!({"state": "available"}))
        .await;
    w.agent_moves(
        &bob,
        &bob_token,
        json!({"state": "paused", "pause_code": "lunch"}),
    )
    .await;
    agents_are(
        &m,
        &[
            ("east", "available", 1.0),
            ("east", "paused", 1.0),
            ("west", "paused", 1.0),
        ],
    )
    .await;

    // Events out of order: carol's older state arrives after the newer
    // one and changes nothing; a redelivered event counts once.
    let now = dialstack_common::now_ms();
    w.agent_event("carol", "on_call", &[], now).await;
    w.agent_event("carol", "available", &[], now - 5_000).await;
    let dup = dialstack_tests::campaigns::agent_state("dave", "wrap_up", &["west"], now, None);
    for _ in 0..2 {
        dialstack_tests::campaigns::publish(&w.bus, &dup).await;
    }
    // Erin joins, then her profile is removed: she is no longer counted.
    w.agent_event("erin", "available", &["west"], now).await;
    let mut gone =
        dialstack_tests::campaigns::agent_state("erin", "offline", &["west"], now + 1, None);
    gone.data["reason"] = json!("user_deleted");
    dialstack_tests::campaigns::publish(&w.bus, &gone).await;
    // Malformed events are dead-lettered, each for its field, and count nothing.
    let good = json!({"agent_id": "mallory", "previous": "offline", "state": "available",
        "reason": "login", "at_ms": now, "teams": ["east"]});
    let mut malformed = Vec::new();
    for (field, value) in [
        ("state", json!("asleep")),
        ("at_ms", json!("yesterday")),
        ("at_ms", Value::Null),
        ("teams", json!("east")),
        ("agent_id", json!("mallory the intruder")),
    ] {
        let mut d = good.clone();
        d[field] = value;
        malformed.push(d);
    }
    malformed.push(json!(["not", "an", "object"]));
    for d in &malformed {
        w.raw_agent_event(d.clone()).await;
    }
    let want = [
        ("east", "available", 1.0),
        ("east", "paused", 1.0),
        ("west", "paused", 1.0),
        ("west", "wrap_up", 1.0),
        ("none", "on_call", 1.0),
    ];
    agents_are(&m, &want).await;
    let dead = eventually(
        "malformed agent.state dead-lettered",
        Duration::from_secs(30),
        || async {
            let d = w
                .bus
                .dead_letters("monitor-service", 20)
                .await
                .map_err(|e| e.to_string())?;
            if d.len() >= malformed.len() {
                Ok(d)
            } else {
                Err(format!("{} dead", d.len()))
            }
        },
    )
    .await;
    assert_eq!(dead.len(), malformed.len());
    for d in &dead {
        let ce = CloudEvent::from_slice(&d.payload).unwrap();
        assert_eq!(
            (ce.ty.as_str(), ce.subject.as_deref()),
            (types::AGENT_STATE, Some("mallory"))
        );
    }

    // The wallboard: every agent once, and per team.
    let mut resp = w.wallboard(&m, &w.admin).await;
    let mut buf = String::new();
    let s = snapshot_where(&mut resp, &mut buf, |s| {
        s["agents"]["by_state"]["wrap_up"] == 1
    })
    .await;
    assert_eq!(
        s["agents"]["by_state"],
        json!({"available": 1, "reserved": 0, "on_call": 1, "wrap_up": 1, "paused": 1, "offline": 0}),
        "{s}"
    );
    let teams: Vec<&str> = s["agents"]["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, vec!["east", "none", "west"]);
    assert_eq!(s["agents"]["teams"][2]["by_state"]["paused"], 1);
    drop(resp);

    // A supervisor of the west team sees its agents only.
    let (_, west_lead) = w.user("wendy", "supervisor", &["west"]).await;
    let mut resp = w.wallboard(&m, &west_lead).await;
    let s = snapshot_where(&mut resp, &mut String::new(), |_| true).await;
    assert_eq!(
        s["agents"]["by_state"],
        json!({"available": 0, "reserved": 0, "on_call": 0, "wrap_up": 1, "paused": 1, "offline": 0}),
        "{s}"
    );
    assert_eq!(s["agents"]["teams"].as_array().unwrap().len(), 1, "{s}");
    drop(resp);

    // A restart keeps the counts (the database has them), and what comes
    // next moves them.
    drop(m);
    let m = w.monitor(&db).await;
    agents_are(&m, &want).await;
    w.agent_moves(&bob, &bob_token, json!({"state": "available"}))
        .await;
    agents_are(
        &m,
        &[
            ("east", "available", 2.0),
            ("west", "available", 1.0),
            ("west", "wrap_up", 1.0),
            ("none", "on_call", 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn agent_states_keep_each_agents_latest_event_on_both_databases() {
    use monitor_service::db::agents::AgentApplied;
    use monitor_service::db::{Repo, MIGRATIONS};
    use monitor_service::domain::agents::{AgentState, AgentUpdate};
    let up = |agent: &str, state: AgentState, at_ms: i64, teams: &[&str]| AgentUpdate {
        agent_id: agent.into(),
        state,
        at_ms,
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        removed: false,
    };
    for (engine, url) in dialstack_tests::both_databases() {
        let db = dialstack_common::db::Db::connect(&url).await.unwrap();
        db.migrate(MIGRATIONS).await.unwrap();
        let repo = Repo { db };
        let apply = |id: &str, u: AgentUpdate| {
            let (repo, id) = (repo.clone(), id.to_owned());
            async move { repo.apply_agent_state(&id, &u).await.unwrap() }
        };
        let a1 = up("a", AgentState::Available, 100, &["east"]);
        assert_eq!(apply("e1", a1.clone()).await, AgentApplied::Applied);
        assert_eq!(apply("e1", a1).await, AgentApplied::Duplicate, "{engine}");
        assert_eq!(
            apply("e2", up("a", AgentState::Offline, 50, &[])).await,
            AgentApplied::Stale,
            "{engine}: older than held"
        );
        assert_eq!(
            apply("e3", up("a", AgentState::OnCall, 200, &["east", "west"])).await,
            AgentApplied::Applied
        );
        apply("e4", up("b", AgentState::Paused, 150, &[])).await;
        let all = repo.agents_by_state(None).await.unwrap();
        assert_eq!(
            (
                all.get(AgentState::OnCall),
                all.get(AgentState::Paused),
                all.total()
            ),
            (1, 1, 2),
            "{engine}"
        );
        let mut by_team = repo.agents_by_team(None).await.unwrap();
        by_team.sort();
        assert_eq!(
            by_team,
            vec![
                ("east".to_owned(), AgentState::OnCall, 1),
                ("none".to_owned(), AgentState::Paused, 1),
                ("west".to_owned(), AgentState::OnCall, 1),
            ],
            "{engine}"
        );
        let both = ["east".to_owned(), "west".to_owned()];
        let scoped = repo.agents_by_state(Some(&both[..])).await.unwrap();
        assert_eq!(scoped.total(), 1, "{engine}: an agent of two teams once");
        assert_eq!(
            repo.agents_by_team(Some(&both[1..])).await.unwrap(),
            vec![("west".to_owned(), AgentState::OnCall, 1)]
        );
        // Teams follow the latest event; a removed profile is not counted.
        apply("e5", up("a", AgentState::Available, 300, &["west"])).await;
        assert_eq!(
            repo.agents_by_team(Some(&both[..])).await.unwrap(),
            vec![("west".to_owned(), AgentState::Available, 1)],
            "{engine}"
        );
        let mut removed = up("a", AgentState::Offline, 400, &["west"]);
        removed.removed = true;
        apply("e6", removed).await;
        assert_eq!(repo.agents_by_state(None).await.unwrap().total(), 1);
        // Events of one agent handled at once, in any order: the newest wins.
        let states = [
            AgentState::Available,
            AgentState::Reserved,
            AgentState::OnCall,
            AgentState::WrapUp,
        ];
        let mut order: Vec<i64> = (1..=24).collect();
        fastrand::shuffle(&mut order);
        let writes = order.iter().map(|&at| {
            let state = states[(at % 4) as usize];
            apply(&format!("c{at}"), up("c", state, 1_000 + at, &["north"]))
        });
        futures_util::future::join_all(writes).await;
        assert_eq!(
            repo.agents_by_team(Some(&["north".to_owned()][..]))
                .await
                .unwrap(),
            vec![("north".to_owned(), states[0], 1)],
            "{engine}: the event at 1024 wins"
        );
    }
}
