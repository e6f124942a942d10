//! Agents on SQLite and on MariaDB: the state machine over HTTP (invalid
//! transitions are 409 with the current state), object-level access (another
//! agent is a 404), presence (no heartbeat → offline), and `agent.state`
//! events arriving in order at a RabbitMQ consumer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialstack_common::bus::{Channel, Delivery, HandleError, Handler, Subscription, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_tests::{amqp_url, both_databases, eventually, in_process, unique, InProcess};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A user-service in this process.
struct Users(InProcess);

impl std::ops::Deref for Users {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

async fn users(database_url: &str, events_url: &str, heartbeat_secs: u64) -> Users {
    let heartbeat = heartbeat_secs.to_string();
    Users(
        in_process::<user_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", database_url),
            ("DIALSTACK_EVENTS_URL", events_url),
            ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", &heartbeat),
        ])
        .await,
    )
}

impl Users {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, username: &str, password: &str) -> String {
        dialstack_tests::procs::login(&self.url, username, password).await
    }

    /// Creates an agent user with a profile; returns (id, token).
    async fn agent(&self, admin: &str, name: &str, team: &str) -> (String, String) {
        let password = format!("{name} password long enough");
        let (status, user) = self
            .call(
                reqwest::Method::POST,
                "/v1/users",
                admin,
                Some(json!({"username": name, "password": password, "role": "agent"})),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        let id = user["id"].as_str().unwrap().to_owned();
        let (status, agent) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/agents/{id}"),
                admin,
                Some(json!({"display_name": name, "sip_uri": format!("sip:{name}@pbx.example"), "teams": [team], "skills": {"spanish": 7}})),
            )
            .await;
        assert_eq!(
            (status, agent["state"].as_str()),
            (200, Some("offline")),
            "{agent}"
        );
        (id.clone(), self.login(name, &password).await)
    }

    async fn set_state(&self, token: &str, id: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/agents/{id}/state"),
            token,
            Some(body),
        )
        .await
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String, String)>>);

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let s = |k: &str| ev.data[k].as_str().unwrap_or("").to_owned();
        self.0
            .lock()
            .unwrap()
            .push((s("agent_id"), s("previous"), s("state")));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_machine_access_and_events() {
    for (engine, url) in both_databases() {
        let events_url = amqp_url(&unique("ag"));
        let channel = Channel::connect(&events_url, EVENTS).await.unwrap();
        let sub = Subscription::new("agents-test", &["agent.state"]);
        channel.prepare(&sub).await.unwrap();
        let rec = Arc::new(Recorder::default());
        let stop_consumer = CancellationToken::new();
        let consumer = {
            let (channel, rec, stop) = (channel.clone(), rec.clone(), stop_consumer.clone());
            tokio::spawn(async move { channel.consume(sub, rec, stop).await.unwrap() })
        };

        let u = users(&url, &events_url, 3600).await;
        let admin = u.login("admin", ADMIN_PASSWORD).await;
        let (alice, alice_token) = u.agent(&admin, "alice", "sales").await;
        let (bob, _) = u.agent(&admin, "bob", "support").await;

        let (status, a) = u
            .set_state(&alice_token, &alice, json!({"state": "available"}))
            .await;
        assert_eq!(
            (status, a["state"].as_str()),
            (200, Some("available")),
            "{engine}: {a}"
        );
        for bad in ["on_call", "wrap_up", "available"] {
            let (status, body) = u
                .set_state(&alice_token, &alice, json!({"state": bad}))
                .await;
            assert_eq!(status, 409, "{engine}: available -> {bad}");
            assert_eq!(
                (body["code"].as_str(), body["current_state"].as_str()),
                (Some("conflict"), Some("available")),
                "{engine}"
            );
            assert!(!body["request_id"].as_str().unwrap().is_empty());
        }
        let (status, body) = u
            .set_state(&alice_token, &alice, json!({"state": "paused"}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_request")),
            "{engine}: pause needs a code"
        );
        let (status, _) = u
            .set_state(
                &alice_token,
                &alice,
                json!({"state": "paused", "pause_code": "lunch"}),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (status, _) = u
            .set_state(&alice_token, &alice, json!({"state": "available"}))
            .await;
        assert_eq!(status, 200, "{engine}");
        let (status, body) = u
            .set_state(&alice_token, &alice, json!({"state": "napping"}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_json")),
            "{engine}: unknown state"
        );

        // Object level: another agent's record does not exist for alice.
        for (method, path, body) in [
            (reqwest::Method::GET, format!("/v1/agents/{bob}"), None),
            (
                reqwest::Method::POST,
                format!("/v1/agents/{bob}/state"),
                Some(json!({"state": "available"})),
            ),
            (
                reqwest::Method::POST,
                format!("/v1/agents/{bob}/heartbeat"),
                None,
            ),
        ] {
            let (status, body) = u.call(method, &path, &alice_token, body).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (404, Some("not_found")),
                "{engine}: {path}"
            );
        }
        let (status, me) = u
            .call(
                reqwest::Method::GET,
                &format!("/v1/agents/{alice}"),
                &alice_token,
                None,
            )
            .await;
        assert_eq!(
            (status, me["state"].as_str()),
            (200, Some("available")),
            "{engine}"
        );
        let (status, _) = u
            .call(reqwest::Method::GET, "/v1/agents", &alice_token, None)
            .await;
        assert_eq!(status, 403, "{engine}: agents do not list agents");
        let (status, _) = u
            .call(
                reqwest::Method::POST,
                "/v1/users",
                &alice_token,
                Some(json!({"username": "x", "password": "y", "role": "admin"})),
            )
            .await;
        assert_eq!(status, 403, "{engine}: agents create no users");

        // Supervisor view / pacing query.
        let (status, list) = u
            .call(
                reqwest::Method::GET,
                "/v1/agents?state=available&team=sales&skill=spanish",
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![alice.as_str()], "{engine}");
        assert!(list[0]["seconds_in_state"].as_i64().is_some());
        let (status, _) = u
            .call(
                reqwest::Method::GET,
                "/v1/agents?state=dancing",
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 400, "{engine}");
        // A supervisor-side change of bob, allowed.
        let (status, _) = u
            .set_state(&admin, &bob, json!({"state": "available"}))
            .await;
        assert_eq!(status, 200, "{engine}");

        let expected = vec![
            (alice.clone(), "offline".to_owned(), "available".to_owned()),
            (alice.clone(), "available".to_owned(), "paused".to_owned()),
            (alice.clone(), "paused".to_owned(), "available".to_owned()),
        ];
        eventually(
            &format!("{engine}: agent.state events in order"),
            Duration::from_secs(30),
            || async {
                let got: Vec<_> = rec
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(a, _, _)| *a == alice)
                    .cloned()
                    .collect();
                if got == expected {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await;
        let bobs = rec
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _, _)| *a == bob)
            .count();
        assert!(bobs <= 1);
        stop_consumer.cancel();
        consumer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_heartbeats_goes_offline() {
    for (engine, url) in both_databases() {
        let events_url = amqp_url(&unique("hb"));
        let u = users(&url, &events_url, 1).await;
        let admin = u.login("admin", ADMIN_PASSWORD).await;
        let (carol, token) = u.agent(&admin, "carol", "sales").await;
        let (dave, dave_token) = u.agent(&admin, "dave", "sales").await;
        for (id, t) in [(&carol, &token), (&dave, &dave_token)] {
            let (status, _) = u
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/agents/{id}/heartbeat"),
                    t,
                    None,
                )
                .await;
            assert_eq!(status, 204, "{engine}");
            let (status, _) = u.set_state(t, id, json!({"state": "available"})).await;
            assert_eq!(status, 200, "{engine}");
        }
        // Dave keeps sending heartbeats; Carol goes quiet.
        let keepalive = {
            let (http, url, id, t) = (
                u.http.clone(),
                u.url.clone(),
                dave.clone(),
                dave_token.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..40 {
                    let _ = http
                        .post(format!("{url}/v1/agents/{id}/heartbeat"))
                        .bearer_auth(&t)
                        .send()
                        .await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        eventually(
            &format!("{engine}: carol offline"),
            Duration::from_secs(10),
            || async {
                let (_, a) = u
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/agents/{carol}"),
                        &admin,
                        None,
                    )
                    .await;
                if a["state"] == "offline" {
                    Ok(())
                } else {
                    Err(a["state"].to_string())
                }
            },
        )
        .await;
        let (_, d) = u
            .call(
                reqwest::Method::GET,
                &format!("/v1/agents/{dave}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(d["state"], "available", "{engine}: a live agent stays");
        let metrics = u
            .http
            .get(format!("{}/metrics", u.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("dialstack_agents{state=\"available\"} 1"),
            "{engine}: {metrics}"
        );
        keepalive.abort();
    }
}
