//! Access control on SQLite and on MariaDB, through real services on free
//! ports: admins' user management (role changes audited and ending sessions,
//! the last admin kept), supervisors scoped to their teams, wrap-up ending by
//! a team's timeout, every invalid agent transition refused over HTTP,
//! agents and supervisors reading only their own calls (storage-service, fed
//! through RabbitMQ) and leads (task-scheduler), and token attacks refused
//! with 401 by a service that verifies against user-service's JWKS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use dialstack_common::auth::{new_claims, Claims, Role, SigningKey};
use dialstack_common::bus::{
    Channel, Delivery, HandleError, Handler, OutMessage, Subscription, EVENTS,
};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, Outcome};
use dialstack_tests::users::{call, Users, ADMIN_PASSWORD};
use dialstack_tests::{amqp_url, both_databases, eventually, in_process, unique};
use dialstack_tests::{typed, CallEventData};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

async fn start_users(database_url: &str, events_url: &str) -> Users {
    Users::start_with(
        database_url,
        events_url,
        &[("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", "3600")],
    )
    .await
}

/// Agent moves these tests make, on top of the shared helpers.
trait AgentMoves {
    async fn state_of(&self, token: &str, id: &str) -> String;
    async fn drive(&self, token: &str, id: &str, path: &[&str]);
}

impl AgentMoves for Users {
    async fn state_of(&self, token: &str, id: &str) -> String {
        let (status, a) = self
            .call(Method::GET, &format!("/v1/agents/{id}"), token, None)
            .await;
        assert_eq!(status, 200, "{a}");
        a["state"].as_str().unwrap().to_owned()
    }

    /// Moves the agent along `path`: its own steps with `token`, the call
    /// steps (reserved, on_call, wrap_up) as the dialer takes them, with the
    /// service token and the call's id.
    async fn drive(&self, token: &str, id: &str, path: &[&str]) {
        let service = self.service_token().await;
        let mut call: Option<String> = None;
        for s in path {
            if *s == "reserved" {
                call = Some(self.take_call(&service, id, "reserved").await);
                continue;
            }
            let (who, body) = match *s {
                "paused" => (token, json!({"state": s, "pause_code": "break"})),
                "on_call" | "wrap_up" => (service.as_str(), json!({"state": s, "call_id": call})),
                _ => (token, json!({"state": s})),
            };
            let (status, b) = self
                .call(
                    Method::POST,
                    &format!("/v1/agents/{id}/state"),
                    who,
                    Some(body),
                )
                .await;
            assert_eq!(status, 200, "to {s}: {b}");
        }
    }
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|a| a[key].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_users_and_supervisors_only_their_teams() {
    for (engine, url) in both_databases() {
        let events_url = format!("memory://{}", unique("access"));
        let events = Channel::connect(&events_url, EVENTS).await.unwrap();
        let watch = Subscription::new("watcher", &["agent.state"]);
        events.prepare(&watch).await.unwrap();
        let u = start_users(&url, &events_url).await;
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        let admin_id = u.call(Method::GET, "/v1/users/me", &admin, None).await.1["id"]
            .as_str()
            .unwrap()
            .to_owned();

        // Bad input names the field; nothing is created.
        for (body, field) in [
            (
                json!({"username": "zed", "password": "zed has a long password", "role": "agent", "teams": ["sales"]}),
                "teams",
            ),
            (
                json!({"username": "zed", "password": "zed has a long password", "role": "supervisor", "teams": ["no spaces"]}),
                "teams",
            ),
            (
                json!({"username": "zed", "password": "short", "role": "agent"}),
                "password",
            ),
        ] {
            let (status, b) = u.call(Method::POST, "/v1/users", &admin, Some(body)).await;
            assert_eq!(status, 400, "{engine}: {b}");
            assert!(
                b["message"].as_str().unwrap().starts_with(field),
                "{engine}: {b}"
            );
        }
        let (status, b) = u
            .call(
                Method::POST,
                "/v1/users",
                &admin,
                Some(json!({"username": "zed", "role": "agent"})),
            )
            .await;
        assert_eq!(
            (status, b["code"].as_str()),
            (400, Some("invalid_json")),
            "{engine}"
        );

        let (sam, sam_password) = u.user(&admin, "sam", "supervisor", &["sales"]).await;
        let (alice, alice_token) = u.agent(&admin, "alice", "sales").await;
        let (bob, bob_token) = u.agent(&admin, "bob", "support").await;
        let r = u.login("sam", &sam_password).await;
        assert_eq!(r.status, 200, "{engine}");
        let sam_login = r.body;
        let sam_token = sam_login["access_token"].as_str().unwrap().to_owned();
        let sam_refresh = sam_login["refresh_token"].as_str().unwrap().to_owned();
        // The token carries the teams other services scope by.
        let claims: Value =
            serde_json::from_slice(&B64URL.decode(sam_token.split('.').nth(1).unwrap()).unwrap())
                .unwrap();
        assert_eq!(claims["teams"], json!(["sales"]), "{engine}");

        // A supervisor sees and manages only the agents of their teams.
        let (status, list) = u.call(Method::GET, "/v1/agents", &sam_token, None).await;
        assert_eq!(status, 200, "{engine}");
        assert_eq!(ids(&list, "id"), vec![alice.clone()], "{engine}");
        for (method, path, body) in [
            (Method::GET, format!("/v1/agents/{bob}"), None),
            (
                Method::POST,
                format!("/v1/agents/{bob}/state"),
                Some(json!({"state": "available"})),
            ),
            (
                Method::PUT,
                format!("/v1/agents/{bob}"),
                Some(json!({"display_name": "b", "sip_uri": "sip:b@x", "teams": ["sales"]})),
            ),
            (
                Method::PUT,
                "/v1/teams/support".to_owned(),
                Some(json!({"wrap_up_timeout_secs": 5})),
            ),
        ] {
            let (status, b) = u.call(method, &path, &sam_token, body).await;
            assert_eq!(
                (status, b["code"].as_str()),
                (404, Some("not_found")),
                "{engine}: {path}"
            );
        }
        let (status, b) = u
            .call(
                Method::PUT,
                &format!("/v1/agents/{alice}"),
                &sam_token,
                Some(json!({"display_name": "Alice", "sip_uri": "sip:alice@pbx.example", "teams": ["support"]})),
            )
            .await;
        assert_eq!(
            status, 400,
            "{engine}: a supervisor cannot move an agent out of reach: {b}"
        );
        let (status, b) = u
            .call(
                Method::PUT,
                &format!("/v1/agents/{alice}"),
                &sam_token,
                Some(json!({"display_name": "Alice A.", "sip_uri": "sip:alice@pbx.example", "teams": ["sales"]})),
            )
            .await;
        assert_eq!(
            (status, b["display_name"].as_str()),
            (200, Some("Alice A.")),
            "{engine}"
        );
        // Teams the supervisor does not lead are kept whatever they send.
        let profile = |teams: Value| {
            Some(
                json!({"display_name": "Alice A.", "sip_uri": "sip:alice@pbx.example", "teams": teams}),
            )
        };
        let path = format!("/v1/agents/{alice}");
        let (status, _) = u
            .call(
                Method::PUT,
                &path,
                &admin,
                profile(json!(["sales", "support"])),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (_, b) = u
            .call(Method::PUT, &path, &sam_token, profile(json!(["sales"])))
            .await;
        let mut teams: Vec<String> = serde_json::from_value(b["teams"].clone()).unwrap();
        teams.sort();
        assert_eq!(teams, ["sales", "support"], "{engine}: {b}");
        let (_, b) = u
            .call(Method::PUT, &path, &sam_token, profile(json!([])))
            .await;
        assert_eq!(
            b["teams"],
            json!(["support"]),
            "{engine}: only sales was sam's to remove"
        );
        let (status, _) = u.call(Method::GET, &path, &sam_token, None).await;
        assert_eq!(status, 404, "{engine}: out of sam's reach now");
        let (status, _) = u
            .call(Method::PUT, &path, &admin, profile(json!(["sales"])))
            .await;
        assert_eq!(status, 200, "{engine}");
        let thirteen: Vec<String> = (0..13).map(|i| format!("t{i}")).collect();
        let (status, _) = u
            .call(Method::PUT, &path, &admin, profile(json!(thirteen)))
            .await;
        assert_eq!(status, 400, "{engine}: at most twelve teams");
        // Her token carries the teams she had at login: after the changes it
        // is void here too, and she logs in again.
        let (status, _) = u
            .call(
                Method::GET,
                &format!("/v1/agents/{alice}"),
                &alice_token,
                None,
            )
            .await;
        assert_eq!(status, 401, "{engine}: a token with old teams");
        let alice_token = u.token("alice", "alice has a long password").await;

        // Team settings: wrap-up ends by itself after the team's timeout.
        for bad in [
            json!({"wrap_up_timeout_secs": 0}),
            json!({"wrap_up_timeout_secs": 99999}),
            json!({"wrap_up": 3}),
        ] {
            let (status, _) = u
                .call(Method::PUT, "/v1/teams/sales", &sam_token, Some(bad))
                .await;
            assert_eq!(status, 400, "{engine}");
        }
        let (status, _) = u
            .call(
                Method::PUT,
                "/v1/teams/sales",
                &sam_token,
                Some(json!({"wrap_up_timeout_secs": 1})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (status, _) = u
            .call(
                Method::PUT,
                "/v1/teams/support",
                &admin,
                Some(json!({"wrap_up_timeout_secs": null})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (_, teams) = u.call(Method::GET, "/v1/teams", &sam_token, None).await;
        assert_eq!(ids(&teams, "name"), vec!["sales".to_owned()], "{engine}");
        let path = ["available", "reserved", "on_call", "wrap_up"];
        u.drive(&alice_token, &alice, &path).await;
        u.drive(&bob_token, &bob, &path).await;
        eventually(
            &format!("{engine}: alice's wrap-up times out"),
            Duration::from_secs(15),
            || async {
                match u.state_of(&alice_token, &alice).await.as_str() {
                    "available" => Ok(()),
                    s => Err(s.to_owned()),
                }
            },
        )
        .await;
        assert_eq!(
            u.state_of(&bob_token, &bob).await,
            "wrap_up",
            "{engine}: support has no timeout"
        );

        // Role changes: audited, sessions ended; the last admin stays.
        for bad in [
            json!({"rol": "agent"}),
            json!({"role": "emperor"}),
            json!({"teams": ["sales"], "role": "agent"}),
        ] {
            let (status, b) = u
                .call(
                    Method::PATCH,
                    &format!("/v1/users/{sam}"),
                    &admin,
                    Some(bad),
                )
                .await;
            assert_eq!(status, 400, "{engine}: {b}");
        }
        let (status, b) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{sam}"),
                &admin,
                Some(json!({"role": "agent"})),
            )
            .await;
        assert_eq!(
            (status, b["role"].as_str(), b["teams"].clone()),
            (200, Some("agent"), json!([])),
            "{engine}"
        );
        let r =
            u.0.http
                .post(format!("{}/v1/auth/refresh", u.0.url))
                .json(&json!({"refresh_token": sam_refresh}))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 401, "{engine}: a role change ends the sessions");
        let (status, _) = u.call(Method::GET, "/v1/users/me", &sam_token, None).await;
        assert_eq!(
            status, 401,
            "{engine}: and the access token issued before it"
        );
        // A demoted admin cannot use the old token to restore itself.
        let (ada, ada_password) = u.user(&admin, "ada", "admin", &[]).await;
        let ada_token = u.token("ada", &ada_password).await;
        let (status, _) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{ada}"),
                &admin,
                Some(json!({"role": "supervisor", "teams": ["sales"]})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (status, _) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{ada}"),
                &ada_token,
                Some(json!({"role": "admin"})),
            )
            .await;
        assert_eq!(status, 401, "{engine}: stale admin token");
        let (_, audit) = u
            .call(Method::GET, "/v1/audit?limit=1000", &admin, None)
            .await;
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "role_changed"
                    && e["subject"] == sam.as_str()
                    && e["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with("supervisor -> agent")),
            "{engine}: {audit}"
        );
        for (method, body) in [
            (Method::PATCH, Some(json!({"role": "supervisor"}))),
            (Method::DELETE, None),
        ] {
            let (status, b) = u
                .call(method, &format!("/v1/users/{admin_id}"), &admin, body)
                .await;
            assert_eq!(
                (status, b["code"].as_str()),
                (409, Some("conflict")),
                "{engine}: last admin"
            );
        }

        // Deleting a user ends its login and its agent record.
        let (status, _) = u
            .call(Method::DELETE, &format!("/v1/users/{bob}"), &admin, None)
            .await;
        assert_eq!(status, 204, "{engine}");
        for path in [format!("/v1/users/{bob}"), format!("/v1/agents/{bob}")] {
            assert_eq!(
                u.call(Method::GET, &path, &admin, None).await.0,
                404,
                "{engine}: {path}"
            );
        }
        assert_eq!(
            u.login("bob", "bob has a long password").await.status,
            401,
            "{engine}"
        );
        let (_, users) = u.call(Method::GET, "/v1/users", &admin, None).await;
        let mut names = ids(&users, "username");
        names.sort();
        assert_eq!(
            names,
            ["ada", "admin", "alice", "dialstack-service", "sam"],
            "{engine}"
        );
        assert!(users
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("password_hash").is_none()));
        let (_, audit) = u
            .call(Method::GET, "/v1/audit?limit=1000", &admin, None)
            .await;
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "user_deleted" && e["subject"] == bob.as_str()),
            "{engine}"
        );
        // Pacing hears that bob, deleted in wrap-up, is gone.
        let seen = Arc::new(StateEvents::default());
        let stop = CancellationToken::new();
        let consumer = {
            let (events, seen, stop) = (events.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move { events.consume(watch, seen, stop).await.unwrap() })
        };
        eventually(
            &format!("{engine}: bob's last agent.state"),
            Duration::from_secs(10),
            || async {
                let got = seen.0.lock().unwrap().clone();
                let last = got.iter().rev().find(|(a, _, _, _)| *a == bob);
                match last {
                    Some((_, prev, to, why))
                        if prev == "wrap_up" && to == "offline" && why == "user_deleted" =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        stop.cancel();
        consumer.await.unwrap();
    }
}

/// Records `agent.state` events: (agent, previous, state, reason).
#[derive(Default)]
struct StateEvents(Mutex<Vec<(String, String, String, String)>>);

#[async_trait::async_trait]
impl Handler for StateEvents {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let s = |k: &str| ev.data[k].as_str().unwrap_or("").to_owned();
        self.0
            .lock()
            .unwrap()
            .push((s("agent_id"), s("previous"), s("state"), s("reason")));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_agent_transition_is_refused_over_http() {
    const STATES: [&str; 6] = [
        "offline",
        "available",
        "reserved",
        "on_call",
        "wrap_up",
        "paused",
    ];
    let reach: [(&str, &[&str]); 6] = [
        ("offline", &[]),
        ("available", &["available"]),
        ("reserved", &["available", "reserved"]),
        ("on_call", &["available", "reserved", "on_call"]),
        ("wrap_up", &["available", "reserved", "on_call", "wrap_up"]),
        ("paused", &["available", "paused"]),
    ];
    for (engine, url) in both_databases() {
        let u = start_users(&url, &format!("memory://{}", unique("transitions"))).await;
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        let mut refused = 0;
        for (from, path) in reach {
            let (id, token) = u.agent(&admin, &format!("agent.{from}"), "sales").await;
            u.drive(&token, &id, path).await;
            assert_eq!(u.state_of(&token, &id).await, from, "{engine}");
            for to in STATES {
                let allowed = user_service::domain::AgentState::parse(from)
                    .unwrap()
                    .can_become(user_service::domain::AgentState::parse(to).unwrap());
                if allowed {
                    continue;
                }
                let body = json!({"state": to, "pause_code": "break"});
                let (status, b) = u
                    .call(
                        Method::POST,
                        &format!("/v1/agents/{id}/state"),
                        &token,
                        Some(body),
                    )
                    .await;
                assert_eq!(
                    (status, b["current_state"].as_str()),
                    (409, Some(from)),
                    "{engine}: {from} -> {to}: {b}"
                );
                refused += 1;
            }
            assert_eq!(
                u.state_of(&token, &id).await,
                from,
                "{engine}: nothing moved"
            );
        }
        assert_eq!(refused, 36 - 12, "{engine}: every pair outside the table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_supervisors_read_only_their_own_calls_and_leads() {
    for (engine, url) in both_databases() {
        let database = |svc: &str| {
            if url.starts_with("sqlite:") {
                dialstack_tests::fresh_sqlite_url()
            } else {
                format!(
                    "{}/{}",
                    dialstack_tests::mysql_server(),
                    unique(&format!("dsacc_{svc}_"))
                )
            }
        };
        let events = amqp_url(&unique("acc"));
        let u = start_users(&url, &events).await;
        let jwks = format!("{}/.well-known/jwks.json", u.0.url);
        let storage = in_process::<storage_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", &database("store")),
            ("DIALSTACK_EVENTS_URL", &events),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &jwks),
            (
                "DIALSTACK_RECORDINGS_URL",
                &dialstack_tests::fresh_recordings_url(),
            ),
        ])
        .await;
        let scheduler = in_process::<task_scheduler::Application>(&[
            ("DIALSTACK_DATABASE_URL", &database("sched")),
            ("DIALSTACK_EVENTS_URL", &events),
            (
                "DIALSTACK_COMMANDS_URL",
                &format!("memory://{}", unique("cmd")),
            ),
            ("DIALSTACK_JWKS_URL", &jwks),
        ])
        .await;
        let monitor = in_process::<monitor_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", &database("mon")),
            ("DIALSTACK_EVENTS_URL", &events),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &jwks),
        ])
        .await;
        let http = reqwest::Client::new();
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        let (alice, alice_token) = u.agent(&admin, "alice", "sales").await;
        let (bob, bob_token) = u.agent(&admin, "bob", "support").await;
        let (sam_id, sam_password) = u.user(&admin, "sam", "supervisor", &["sales"]).await;
        let sam = u.token("sam", &sam_password).await;

        // Calls: one bridged to each agent, through the broker into storage.
        let channel = Channel::connect(&events, EVENTS).await.unwrap();
        let mut calls = Vec::new();
        for (agent, team) in [(&alice, "sales"), (&bob, "support")] {
            let data = CallEventData {
                call_id: uuid::Uuid::now_v7().to_string(),
                attempt_id: uuid::Uuid::now_v7().to_string(),
                campaign_id: "k1".into(),
                phone: "+14155550101".into(),
                at_ms: dialstack_common::now_ms(),
                outcome: Some(Outcome::AnsweredHuman),
                team: Some(team.into()),
                agent_id: Some(agent.clone()),
                ..Default::default()
            };
            let ev = CloudEvent::new(
                "media-processor",
                types::CALL_COMPLETED,
                &data.call_id,
                &typed(types::CALL_COMPLETED, &data).to_value(),
            );
            channel
                .publish(&OutMessage {
                    id: ev.id.clone(),
                    routing_key: ev.ty.clone(),
                    key: data.call_id.clone(),
                    payload: ev.to_bytes(),
                })
                .await
                .unwrap();
            calls.push(data.call_id);
        }
        let calls_url = format!("{}/v1/calls", storage.url);
        eventually(
            &format!("{engine}: both CDRs stored"),
            Duration::from_secs(20),
            || async {
                let (_, page) = call(&http, Method::GET, &calls_url, &admin, None).await;
                match page["items"].as_array().map(Vec::len) {
                    Some(2) => Ok(()),
                    n => Err(format!("{n:?}")),
                }
            },
        )
        .await;
        for (token, own, other) in [
            (&alice_token, &calls[0], &calls[1]),
            (&bob_token, &calls[1], &calls[0]),
        ] {
            let (status, page) = call(&http, Method::GET, &calls_url, token, None).await;
            assert_eq!(status, 200, "{engine}");
            assert_eq!(
                ids(&page["items"], "call_id"),
                vec![own.clone()],
                "{engine}"
            );
            let (status, _) = call(
                &http,
                Method::GET,
                &format!("{calls_url}/{own}"),
                token,
                None,
            )
            .await;
            assert_eq!(status, 200, "{engine}");
            let (status, b) = call(
                &http,
                Method::GET,
                &format!("{calls_url}/{other}"),
                token,
                None,
            )
            .await;
            assert_eq!(
                (status, b["code"].as_str()),
                (404, Some("not_found")),
                "{engine}: another agent's call"
            );
        }
        let (_, page) = call(&http, Method::GET, &calls_url, &sam, None).await;
        assert_eq!(
            ids(&page["items"], "call_id"),
            vec![calls[0].clone()],
            "{engine}: sales only"
        );
        let (status, _) = call(
            &http,
            Method::GET,
            &format!("{calls_url}/{}", calls[1]),
            &sam,
            None,
        )
        .await;
        assert_eq!(status, 404, "{engine}");

        // Stats: a supervisor counts their teams' calls only.
        let stats_url = format!("{}/v1/stats?window_s=3600", monitor.url);
        eventually(
            &format!("{engine}: both calls counted"),
            Duration::from_secs(20),
            || async {
                let (_, s) = call(&http, Method::GET, &stats_url, &admin, None).await;
                match s["total"].as_i64() {
                    Some(2) => Ok(()),
                    n => Err(format!("{n:?}")),
                }
            },
        )
        .await;
        let (status, s) = call(&http, Method::GET, &stats_url, &sam, None).await;
        assert_eq!(
            (status, s["total"].as_i64()),
            (200, Some(1)),
            "{engine}: {s}"
        );

        // Leads: each agent owns one; campaigns belong to teams.
        let campaigns_url = format!("{}/v1/campaigns", scheduler.url);
        let new_campaign = |team: &str| {
            json!({"name": "access", "caller_id": "+14155550100", "max_concurrent": 1, "max_cps": 1.0,
                   "team": team, "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
                   "contacts": [{"phone": "+14155550101", "agent_id": alice}, {"phone": "+14155550102", "agent_id": bob}, "+14155550103"]})
        };
        let (status, b) = call(
            &http,
            Method::POST,
            &campaigns_url,
            &sam,
            Some(new_campaign("support")),
        )
        .await;
        assert_eq!(
            status, 400,
            "{engine}: a supervisor creates campaigns for their teams only: {b}"
        );
        let (status, sales) = call(
            &http,
            Method::POST,
            &campaigns_url,
            &sam,
            Some(new_campaign("sales")),
        )
        .await;
        assert_eq!(status, 201, "{engine}: {sales}");
        let (status, support) = call(
            &http,
            Method::POST,
            &campaigns_url,
            &admin,
            Some(new_campaign("support")),
        )
        .await;
        assert_eq!(status, 201, "{engine}: {support}");
        let support_id = support["id"].as_str().unwrap();
        let (status, _) = call(
            &http,
            Method::GET,
            &format!("{campaigns_url}/{support_id}"),
            &sam,
            None,
        )
        .await;
        assert_eq!(status, 404, "{engine}: another team's campaign");
        let (status, _) = call(
            &http,
            Method::POST,
            &format!("{campaigns_url}/{support_id}/start"),
            &sam,
            None,
        )
        .await;
        assert_eq!(status, 404, "{engine}");

        let leads_url = format!("{}/v1/leads", scheduler.url);
        let (status, all) = call(&http, Method::GET, &leads_url, &admin, None).await;
        assert_eq!(
            (status, all["items"].as_array().unwrap().len()),
            (200, 6),
            "{engine}"
        );
        let (_, mine) = call(&http, Method::GET, &leads_url, &alice_token, None).await;
        let mine = mine["items"].as_array().unwrap().clone();
        assert_eq!(mine.len(), 2, "{engine}: one per campaign");
        assert!(
            mine.iter().all(|l| l["agent_id"] == alice.as_str()),
            "{engine}"
        );
        let (_, bobs) = call(&http, Method::GET, &leads_url, &bob_token, None).await;
        let bob_lead = bobs["items"][0]["id"].as_str().unwrap().to_owned();
        let (status, b) = call(
            &http,
            Method::GET,
            &format!("{leads_url}/{bob_lead}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(
            (status, b["code"].as_str()),
            (404, Some("not_found")),
            "{engine}: another agent's lead"
        );
        let alice_lead = mine[0]["id"].as_str().unwrap();
        let (status, b) = call(
            &http,
            Method::GET,
            &format!("{leads_url}/{alice_lead}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(
            (status, b["phone"].as_str()),
            (200, Some("+14155550101")),
            "{engine}"
        );
        let (_, sams) = call(&http, Method::GET, &leads_url, &sam, None).await;
        assert_eq!(
            sams["items"].as_array().unwrap().len(),
            3,
            "{engine}: the sales campaign's leads"
        );
        for bad in ["?limit=0", "?limit=abc", "?cursor="] {
            let (status, b) = call(
                &http,
                Method::GET,
                &format!("{leads_url}{bad}"),
                &admin,
                None,
            )
            .await;
            assert_eq!(status, 400, "{engine}: {bad}: {b}");
        }

        // Bob is made a supervisor: the agent token he still holds is void
        // in the other services too, as soon as they refetch the JWKS.
        let bob_id = bob.clone();
        let (status, _) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{bob_id}"),
                &admin,
                Some(json!({"role": "supervisor", "teams": ["support"]})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        let (_, jwks) = call(&http, Method::GET, &jwks, &admin, None).await;
        assert!(
            jwks["dialstack_revoked"]
                .as_array()
                .is_some_and(|r| r.iter().any(|e| e["sub"] == bob_id.as_str())),
            "{engine}: {jwks}"
        );
        for url in [&calls_url, &leads_url] {
            eventually(
                &format!("{engine}: bob's old token refused at {url}"),
                Duration::from_secs(30),
                || async {
                    match call(&http, Method::GET, url, &bob_token, None).await {
                        (401, b) if b["message"] == "token revoked" => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await;
        }
        let (status, _) = call(&http, Method::GET, &calls_url, &alice_token, None).await;
        assert_eq!(status, 200, "{engine}: others are not affected");

        // Sam now leads support instead of sales: his token's teams are
        // void everywhere, and a new one shows the support call only.
        let (status, _) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{sam_id}"),
                &admin,
                Some(json!({"teams": ["support"]})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        eventually(
            &format!("{engine}: sam's token with the old teams refused"),
            Duration::from_secs(30),
            || async {
                match call(&http, Method::GET, &calls_url, &sam, None).await {
                    (401, _) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let sam = u.token("sam", &sam_password).await;
        let (_, page) = call(&http, Method::GET, &calls_url, &sam, None).await;
        assert_eq!(
            ids(&page["items"], "call_id"),
            vec![calls[1].clone()],
            "{engine}: support now"
        );
    }
}

/// HMAC-SHA256, for the algorithm-confusion token (HS256 keyed with the
/// published public key).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<_>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_are_refused_with_401_by_every_verifier() {
    for (engine, url) in both_databases() {
        let u = start_users(&url, &format!("memory://{}", unique("attacks"))).await;
        let jwks_url = format!("{}/.well-known/jwks.json", u.0.url);
        let storage = in_process::<storage_service::Application>(&[
            (
                "DIALSTACK_DATABASE_URL",
                &dialstack_tests::fresh_sqlite_url(),
            ),
            (
                "DIALSTACK_EVENTS_URL",
                &format!("memory://{}", unique("attacks")),
            ),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &jwks_url),
            (
                "DIALSTACK_RECORDINGS_URL",
                &dialstack_tests::fresh_recordings_url(),
            ),
        ])
        .await;
        let admin = u.token("admin", ADMIN_PASSWORD).await;
        // The key user-service signs with, read from its database as an
        // insider would: every claim check must hold even for its signatures.
        let kid = {
            let h: Value =
                serde_json::from_slice(&B64URL.decode(admin.split('.').next().unwrap()).unwrap())
                    .unwrap();
            h["kid"].as_str().unwrap().to_owned()
        };
        let db = dialstack_common::db::Db::connect(&url).await.unwrap();
        let seed: String = sqlx::Row::get(
            &sqlx::query("SELECT seed FROM signing_keys WHERE kid = ?")
                .bind(&kid)
                .fetch_one(&db.pool)
                .await
                .unwrap(),
            0,
        );
        let key = SigningKey::from_seed(
            kid.clone(),
            &base64::engine::general_purpose::STANDARD
                .decode(seed)
                .unwrap(),
        )
        .unwrap();
        let now = dialstack_common::now_ms() / 1000;
        // The admin's own id: the claims are valid in every respect but the
        // one each attack breaks.
        let admin_id = call(
            &reqwest::Client::new(),
            Method::GET,
            &format!("{}/v1/users/me", u.0.url),
            &admin,
            None,
        )
        .await
        .1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let good = new_claims(&admin_id, Role::Admin, Duration::from_secs(600));
        let with = |f: fn(&mut Claims, i64)| {
            let mut c = good.clone();
            f(&mut c, now);
            key.sign(&c)
        };
        let payload = B64URL.encode(serde_json::to_vec(&good).unwrap());
        let none = format!(
            "{}.{payload}.",
            B64URL.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#))
        );
        let hs_input = format!(
            "{}.{payload}",
            B64URL.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#))
        );
        let public_key = key.jwk().x.clone();
        let hs256 = format!(
            "{hs_input}.{}",
            B64URL.encode(hmac_sha256(public_key.as_bytes(), hs_input.as_bytes()))
        );
        let tampered = {
            let agent = key.sign(&new_claims(
                &admin_id,
                Role::Agent,
                Duration::from_secs(600),
            ));
            let mut parts: Vec<String> = agent.split('.').map(str::to_owned).collect();
            parts[1] = payload.clone();
            parts.join(".")
        };
        let attacks = [
            ("alg none", none),
            ("HS256 keyed with the public key", hs256),
            ("expired", with(|c, now| c.exp = now - 3600)),
            ("not yet valid", with(|c, now| c.nbf = now + 3600)),
            ("wrong aud", with(|c, _| c.aud = "someone-else".into())),
            ("wrong iss", with(|c, _| c.iss = "evil".into())),
            ("tampered payload", tampered),
            ("key not in the JWKS", SigningKey::generate().sign(&good)),
            ("garbage", "not.a.token".to_owned()),
        ];
        let http = reqwest::Client::new();
        let targets = [
            format!("{}/v1/calls", storage.url),
            format!("{}/v1/users/me", u.0.url),
        ];
        for target in &targets {
            let (status, _) = call(&http, Method::GET, target, &key.sign(&good), None).await;
            assert_eq!(status, 200, "{engine}: control");
            for (name, token) in &attacks {
                let (status, b) = call(&http, Method::GET, target, token, None).await;
                assert_eq!(
                    (status, b["code"].as_str()),
                    (401, Some("unauthorized")),
                    "{engine}: {name} at {target}"
                );
                assert!(b["request_id"].as_str().is_some_and(|r| !r.is_empty()));
            }
        }
    }
}
