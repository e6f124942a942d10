//! Agents on SQLite and on MariaDB: the state machine over HTTP (invalid
//! transitions are 409 with the current state), object-level access (another
//! agent is a 404), presence (no heartbeat → offline), a call's cycle driven
//! by the dialer, and `agent.state` events (with the agent's teams and the
//! call) arriving in order at a RabbitMQ consumer. Reservation itself is in
//! `reservations.rs`.

use std::time::Duration;

use dialstack_tests::users::{AgentEventLog, Users, ADMIN_PASSWORD};
use dialstack_tests::{amqp_url, both_databases, eventually, unique};
use serde_json::json;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_machine_access_and_events() {
    for (engine, url) in both_databases() {
        let events_url = amqp_url(&unique("ag"));
        let log = AgentEventLog::start(&events_url).await;

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

        let events = log
            .expect(
                &format!("{engine}: agent.state events in order"),
                &alice,
                &[
                    ("offline", "available", "requested", None),
                    ("available", "paused", "requested", None),
                    ("paused", "available", "requested", None),
                ],
            )
            .await;
        for e in events {
            assert_eq!(
                e.teams,
                vec!["sales"],
                "{engine}: every event has the teams"
            );
        }
        assert!(log.of(&bob).len() <= 1);
        log.stop().await;
    }
}

/// A call's cycle as the dialer drives it: reserved, connected, ended, then
/// wrap-up ended by the agent and, on the next call, by the team's timeout.
/// Only the dialer takes the call steps, each naming its call; every event
/// carries the teams and the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycles_its_agent_and_every_step_is_an_event() {
    for (engine, url) in both_databases() {
        let events_url = amqp_url(&unique("cyc"));
        let log = AgentEventLog::start(&events_url).await;
        let u = users(&url, &events_url, 3600).await;
        let admin = u.admin().await;
        let service = u.service_token().await;
        let (eve, eve_token) = agent(&u, &admin, "eve", "east").await;
        let (status, _) = u
            .set_state(&eve_token, &eve, json!({"state": "available"}))
            .await;
        assert_eq!(status, 200, "{engine}");

        let (status, r) = u
            .reserve(&service, json!({"call_id": "call-1", "team": "east"}))
            .await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(eve.as_str())),
            "{engine}: {r}"
        );
        // The agent cannot connect or release itself; the dialer must name
        // the call, and the right one.
        for to in ["on_call", "available"] {
            let (status, b) = u
                .set_state(&eve_token, &eve, json!({"state": to, "call_id": "call-1"}))
                .await;
            assert_eq!(
                (status, b["code"].as_str()),
                (403, Some("forbidden")),
                "{engine}: agent to {to}: {b}"
            );
        }
        let (status, b) = u
            .set_state(&service, &eve, json!({"state": "on_call"}))
            .await;
        assert_eq!(status, 400, "{engine}: {b}");
        assert!(
            b["message"].as_str().unwrap().starts_with("call_id"),
            "{engine}: {b}"
        );
        let (status, b) = u
            .set_state(
                &service,
                &eve,
                json!({"state": "on_call", "call_id": "call-0"}),
            )
            .await;
        assert_eq!(
            (status, b["code"].as_str(), b["current_state"].as_str()),
            (409, Some("conflict"), Some("reserved")),
            "{engine}: another call's connect: {b}"
        );
        let (status, a) = u
            .set_state(
                &service,
                &eve,
                json!({"state": "on_call", "call_id": "call-1"}),
            )
            .await;
        assert_eq!(
            (status, a["state"].as_str(), a["call_id"].as_str()),
            (200, Some("on_call"), Some("call-1")),
            "{engine}: {a}"
        );
        assert!(a.get("reserved_until").is_none(), "{engine}: {a}");
        let (status, a) = u
            .set_state(
                &service,
                &eve,
                json!({"state": "wrap_up", "call_id": "call-1"}),
            )
            .await;
        assert_eq!(
            (status, a["state"].as_str(), a["call_id"].as_str()),
            (200, Some("wrap_up"), Some("call-1")),
            "{engine}: {a}"
        );
        // The agent ends its wrap-up.
        let (status, a) = u
            .set_state(&eve_token, &eve, json!({"state": "available"}))
            .await;
        assert_eq!(
            (status, a["state"].as_str()),
            (200, Some("available")),
            "{engine}: {a}"
        );
        assert!(
            a.get("call_id").is_none(),
            "{engine}: the call is over: {a}"
        );

        // The next call's wrap-up ends by the team's timeout.
        let (status, _) = u
            .call(
                reqwest::Method::PUT,
                "/v1/teams/east",
                &admin,
                Some(json!({"wrap_up_timeout_secs": 1})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let call_2 = u.take_call(&service, &eve, "wrap_up").await;
        eventually(
            &format!("{engine}: eve's wrap-up times out"),
            Duration::from_secs(15),
            || async {
                let (_, a) = u
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/agents/{eve}"),
                        &admin,
                        None,
                    )
                    .await;
                if a["state"] == "available" {
                    Ok(())
                } else {
                    Err(a.to_string())
                }
            },
        )
        .await;

        let c1 = Some("call-1");
        let c2 = Some(call_2.as_str());
        let events = log
            .expect(
                &format!("{engine}: eve's events"),
                &eve,
                &[
                    ("offline", "available", "requested", None),
                    ("available", "reserved", "reserved", c1),
                    ("reserved", "on_call", "connected", c1),
                    ("on_call", "wrap_up", "call_ended", c1),
                    ("wrap_up", "available", "requested", c1),
                    ("available", "reserved", "reserved", c2),
                    ("reserved", "on_call", "connected", c2),
                    ("on_call", "wrap_up", "call_ended", c2),
                    ("wrap_up", "available", "wrap_up_timeout", c2),
                ],
            )
            .await;
        for e in events {
            assert_eq!(e.teams, vec!["east"], "{engine}: {e:?}");
        }
        log.stop().await;
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
