//! Agents on SQLite and on MariaDB: the state machine over HTTP (invalid
//! transitions are 409 with the current state), object-level access (another
//! agent is a 404), presence (no heartbeat → offline), and `agent.state`
//! events arriving in order at a RabbitMQ consumer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialstack_common::bus::{Channel, Delivery, HandleError, Handler, Subscription, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_tests::users::{Users, ADMIN_PASSWORD};
use dialstack_tests::{amqp_url, both_databases, eventually, unique};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn users(database_url: &str, events_url: &str, heartbeat_secs: u64) -> Users {
    let heartbeat = heartbeat_secs.to_string();
    Users::start_with(
        database_url,
        events_url,
        &[("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", &heartbeat)],
    )
    .await
}

/// An agent user with a profile (team and one skill), offline at first;
/// returns (id, token).
async fn agent(u: &Users, admin: &str, name: &str, team: &str) -> (String, String) {
    let (id, password) = u.user(admin, name, "agent", &[]).await;
    let agent = u
        .profile(
            admin,
            &id,
            json!({"display_name": name, "sip_uri": format!("sip:{name}@pbx.example"), "teams": [team], "skills": {"spanish": 7}}),
        )
        .await;
    assert_eq!(agent["state"], "offline", "{agent}");
    (id, u.token(name, &password).await)
}

/// The state change call, on top of the shared helpers.
trait SetState {
    async fn set_state(&self, token: &str, id: &str, body: Value) -> (u16, Value);
}

impl SetState for Users {
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
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        let (alice, alice_token) = agent(&u, &admin, "alice", "sales").await;
        let (bob, _) = agent(&u, &admin, "bob", "support").await;

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
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        let (carol, token) = agent(&u, &admin, "carol", "sales").await;
        let (dave, dave_token) = agent(&u, &admin, "dave", "sales").await;
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
