//! Agent reservation (`POST /v1/agents/reserve`) on SQLite and on MariaDB,
//! over HTTP with the service account's token: the longest-idle agent that
//! fits team, skill levels, exclusions or the one agent asked for; 409
//! `no_agent_available`; concurrent reservations never giving one agent
//! twice; unused reservations lapsing; late messages about an earlier call
//! refused; only services reserve, and bad bodies name their field.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use dialstack_tests::users::{AgentEventLog, Users};
use dialstack_tests::{amqp_url, both_databases, eventually, unique};
use reqwest::Method;
use serde_json::{json, Value};

async fn start(database_url: &str, events_url: &str, reservation_secs: &str) -> Users {
    Users::start_with(
        database_url,
        events_url,
        &[
            ("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", "3600"),
            ("DIALSTACK_AGENT_RESERVATION_SECS", reservation_secs),
        ],
    )
    .await
}

/// An available agent in `teams` with `skills`; returns (id, token).
async fn available(
    u: &Users,
    admin: &str,
    name: &str,
    teams: &[&str],
    skills: Value,
) -> (String, String) {
    let (id, password) = u.user(admin, name, "agent", &[]).await;
    u.profile(
        admin,
        &id,
        json!({"display_name": name, "sip_uri": format!("sip:{name}@pbx.example"), "teams": teams, "skills": skills}),
    )
    .await;
    let token = u.token(name, &password).await;
    let (status, a) = u
        .set_state(&token, &id, json!({"state": "available"}))
        .await;
    assert_eq!(status, 200, "{a}");
    // Distinct `state_since`, so "longest idle" has one answer.
    tokio::time::sleep(Duration::from_millis(3)).await;
    (id, token)
}

/// The agent as an admin sees it.
async fn agent_view(u: &Users, admin: &str, id: &str) -> Value {
    let (status, a) = u
        .call(Method::GET, &format!("/v1/agents/{id}"), admin, None)
        .await;
    assert_eq!(status, 200, "{a}");
    a
}

/// Asserts a 409 `no_agent_available` in the error envelope.
fn assert_none_free(status: u16, body: &Value, what: &str) {
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("no_agent_available")),
        "{what}: {body}"
    );
    assert!(
        !body["request_id"].as_str().unwrap_or("").is_empty() && body["message"].is_string(),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_picks_the_longest_idle_agent_that_fits() {
    for (engine, url) in both_databases() {
        let u = start(&url, &format!("memory://{}", unique("pick")), "5").await;
        let admin = u.admin().await;
        let service = u.service_token().await;
        // Available in this order: ann longest.
        let (ann, _) = available(&u, &admin, "ann", &["east"], json!({"spanish": 5})).await;
        let (ben, _) = available(&u, &admin, "ben", &["east", "vip"], json!({"spanish": 7})).await;
        let (cat, _) = available(&u, &admin, "cat", &["east"], json!({})).await;
        let (dan, _) = available(&u, &admin, "dan", &["west"], json!({"spanish": 9})).await;
        let before = dialstack_common::now_ms();

        let (status, r) = u
            .reserve(&service, json!({"call_id": "c1", "team": "east"}))
            .await;
        assert_eq!(status, 200, "{engine}: {r}");
        assert_eq!(
            (
                r["id"].as_str(),
                r["display_name"].as_str(),
                r["sip_uri"].as_str(),
                r["teams"].clone(),
                r["call_id"].as_str()
            ),
            (
                Some(ann.as_str()),
                Some("ann"),
                Some("sip:ann@pbx.example"),
                json!(["east"]),
                Some("c1")
            ),
            "{engine}: the longest idle of east"
        );
        let until = r["reserved_until"].as_i64().unwrap();
        assert!(
            (before + 4_000..=dialstack_common::now_ms() + 5_000).contains(&until),
            "{engine}: held for 5 s: {r}"
        );
        let a = agent_view(&u, &admin, &ann).await;
        assert_eq!(
            (
                a["state"].as_str(),
                a["call_id"].as_str(),
                a["reserved_until"].as_i64()
            ),
            (Some("reserved"), Some("c1"), Some(until)),
            "{engine}: {a}"
        );

        // Skill levels are minimums; exclusions are skipped.
        let (status, b) = u
            .reserve(
                &service,
                json!({"call_id": "c2", "team": "east", "skills": {"spanish": 8}}),
            )
            .await;
        assert_none_free(
            status,
            &b,
            &format!("{engine}: nobody in east has spanish 8"),
        );
        let (status, b) = u
            .reserve(
                &service,
                json!({"call_id": "c2", "team": "east", "skills": {"spanish": 6}, "exclude": [ben]}),
            )
            .await;
        assert_none_free(status, &b, &format!("{engine}: ben was tried"));
        let (status, r) = u
            .reserve(
                &service,
                json!({"call_id": "c2", "team": "east", "skills": {"spanish": 6}}),
            )
            .await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(ben.as_str())),
            "{engine}: {r}"
        );
        let (status, r) = u
            .reserve(&service, json!({"call_id": "c3", "team": "east"}))
            .await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(cat.as_str())),
            "{engine}: {r}"
        );
        let (status, b) = u
            .reserve(&service, json!({"call_id": "c4", "team": "east"}))
            .await;
        assert_none_free(status, &b, &format!("{engine}: east is all reserved"));
        let (status, r) = u.reserve(&service, json!({"call_id": "c4"})).await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(dan.as_str())),
            "{engine}: any team: {r}"
        );

        // Released: ann, then ben, are available again (ann longest).
        for (id, call) in [(&ann, "c1"), (&ben, "c2")] {
            let (status, a) = u
                .set_state(&service, id, json!({"state": "available", "call_id": call}))
                .await;
            assert_eq!(
                (status, a["state"].as_str()),
                (200, Some("available")),
                "{engine}: {a}"
            );
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // Preview: exactly the agent asked for, though not the longest idle.
        let (status, r) = u
            .reserve(&service, json!({"call_id": "c5", "agent_id": ben}))
            .await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(ben.as_str())),
            "{engine}: {r}"
        );
        // A retried request for the same call gets the same reservation.
        for body in [
            json!({"call_id": "c5", "agent_id": ben}),
            json!({"call_id": "c5"}),
        ] {
            let (status, again) = u.reserve(&service, body).await;
            assert_eq!(status, 200, "{engine}: {again}");
            assert_eq!(again, r, "{engine}: the same reservation");
        }
        let (status, b) = u
            .reserve(&service, json!({"call_id": "c6", "agent_id": ben}))
            .await;
        assert_none_free(status, &b, &format!("{engine}: ben is reserved"));
        let (status, b) = u
            .reserve(
                &service,
                json!({"call_id": "c6", "agent_id": ann, "team": "west"}),
            )
            .await;
        assert_none_free(status, &b, &format!("{engine}: ann is not in west"));
        let (status, b) = u
            .reserve(
                &service,
                json!({"call_id": "c6", "agent_id": "00000000-0000-7000-8000-000000000000"}),
            )
            .await;
        assert_eq!(
            (status, b["code"].as_str()),
            (404, Some("not_found")),
            "{engine}: {b}"
        );
        let (status, r) = u.reserve(&service, json!({"call_id": "c6"})).await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(ann.as_str())),
            "{engine}: {r}"
        );

        for (result, n) in [("reserved", 6.0), ("none", 6.0), ("lost_race", 0.0)] {
            let series = format!("dialstack_agent_reservations_total{{result=\"{result}\"}}");
            assert_eq!(u.metric_or_zero(&series).await, n, "{engine}: {series}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_give_an_agent_twice() {
    const AGENTS: usize = 5;
    const REQUESTS: usize = 40;
    for (engine, url) in both_databases() {
        let u = start(&url, &format!("memory://{}", unique("race")), "60").await;
        let admin = u.admin().await;
        let service = u.service_token().await;
        let mut agents = HashSet::new();
        for i in 0..AGENTS {
            let (id, _) = available(
                &u,
                &admin,
                &format!("racer{i}"),
                &["east"],
                json!({"spanish": 5}),
            )
            .await;
            agents.insert(id);
        }
        let requests = (0..REQUESTS).map(|i| {
            let (http, url, token) = (u.http.clone(), u.url.clone(), service.clone());
            tokio::spawn(async move {
                let call_id = format!("race-{i}");
                let body = json!({"call_id": call_id, "team": "east", "skills": {"spanish": 3}});
                let (status, r) = dialstack_tests::users::call(
                    &http,
                    Method::POST,
                    &format!("{url}/v1/agents/reserve"),
                    &token,
                    Some(body),
                )
                .await;
                (call_id, status, r)
            })
        });
        let answers = futures_util::future::join_all(requests).await;
        let mut winners: BTreeMap<String, String> = BTreeMap::new();
        let mut refused = 0;
        for answer in answers {
            let (call_id, status, r) = answer.unwrap();
            match status {
                200 => {
                    let id = r["id"].as_str().unwrap().to_owned();
                    assert_eq!(r["call_id"].as_str(), Some(call_id.as_str()), "{engine}");
                    assert!(
                        winners.insert(id.clone(), call_id).is_none(),
                        "{engine}: agent {id} given twice"
                    );
                }
                _ => {
                    assert_none_free(status, &r, engine);
                    refused += 1;
                }
            }
        }
        assert_eq!(winners.len(), AGENTS, "{engine}: every agent reserved once");
        assert_eq!(refused, REQUESTS - AGENTS, "{engine}");
        assert_eq!(
            winners.keys().cloned().collect::<HashSet<_>>(),
            agents,
            "{engine}"
        );
        // What the agents hold is what their winners were told.
        for (id, call_id) in &winners {
            let a = agent_view(&u, &admin, id).await;
            assert_eq!(
                (a["state"].as_str(), a["call_id"].as_str()),
                (Some("reserved"), Some(call_id.as_str())),
                "{engine}: {a}"
            );
        }
        let metric = |r: &str| format!("dialstack_agent_reservations_total{{result=\"{r}\"}}");
        assert_eq!(
            u.metric_or_zero(&metric("reserved")).await,
            AGENTS as f64,
            "{engine}"
        );
        assert_eq!(
            u.metric_or_zero(&metric("none")).await + u.metric_or_zero(&metric("lost_race")).await,
            (REQUESTS - AGENTS) as f64,
            "{engine}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_reservation_lapses_and_late_messages_are_refused() {
    for (engine, url) in both_databases() {
        let events_url = amqp_url(&unique("lapse"));
        let log = AgentEventLog::start(&events_url).await;
        let u = start(&url, &events_url, "1").await;
        let admin = u.admin().await;
        let service = u.service_token().await;
        let (fay, _) = available(&u, &admin, "fay", &["east"], json!({})).await;

        let reserved_at = Instant::now();
        let (status, r) = u.reserve(&service, json!({"call_id": "call-a"})).await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(fay.as_str())),
            "{engine}: {r}"
        );
        eventually(
            &format!("{engine}: fay's reservation lapses"),
            Duration::from_secs(10),
            || async {
                let a = agent_view(&u, &admin, &fay).await;
                if a["state"] == "available" {
                    Ok(())
                } else {
                    Err(a.to_string())
                }
            },
        )
        .await;
        assert!(
            reserved_at.elapsed() >= Duration::from_millis(900),
            "{engine}: not before its second: {:?}",
            reserved_at.elapsed()
        );
        // The dialer connecting the lapsed call is too late.
        let (status, b) = u
            .set_state(
                &service,
                &fay,
                json!({"state": "on_call", "call_id": "call-a"}),
            )
            .await;
        assert_eq!(
            (status, b["current_state"].as_str()),
            (409, Some("available")),
            "{engine}: {b}"
        );

        // Reserved again for another call: the first call's release must
        // not free her.
        let (status, r) = u.reserve(&service, json!({"call_id": "call-b"})).await;
        assert_eq!(
            (status, r["id"].as_str()),
            (200, Some(fay.as_str())),
            "{engine}: {r}"
        );
        let (status, b) = u
            .set_state(
                &service,
                &fay,
                json!({"state": "available", "call_id": "call-a"}),
            )
            .await;
        assert_eq!(
            (status, b["code"].as_str(), b["current_state"].as_str()),
            (409, Some("conflict"), Some("reserved")),
            "{engine}: a stale release: {b}"
        );
        let a = agent_view(&u, &admin, &fay).await;
        assert_eq!(
            (a["state"].as_str(), a["call_id"].as_str()),
            (Some("reserved"), Some("call-b")),
            "{engine}: {a}"
        );
        // Connected in time, the call keeps her past the hold.
        let (status, a) = u
            .set_state(
                &service,
                &fay,
                json!({"state": "on_call", "call_id": "call-b"}),
            )
            .await;
        assert_eq!(
            (status, a["state"].as_str()),
            (200, Some("on_call")),
            "{engine}: {a}"
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let a = agent_view(&u, &admin, &fay).await;
        assert_eq!(
            a["state"], "on_call",
            "{engine}: a connected call does not lapse"
        );
        let (status, _) = u
            .set_state(
                &service,
                &fay,
                json!({"state": "wrap_up", "call_id": "call-b"}),
            )
            .await;
        assert_eq!(status, 200, "{engine}");

        let a = Some("call-a");
        let b = Some("call-b");
        log.expect(
            &format!("{engine}: fay's events"),
            &fay,
            &[
                ("offline", "available", "requested", None),
                ("available", "reserved", "reserved", a),
                ("reserved", "available", "reservation_lapsed", a),
                ("available", "reserved", "reserved", b),
                ("reserved", "on_call", "connected", b),
                ("on_call", "wrap_up", "call_ended", b),
            ],
        )
        .await;
        log.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_services_reserve_and_bad_requests_name_the_field() {
    for (engine, url) in both_databases() {
        let u = start(&url, &format!("memory://{}", unique("rsv")), "60").await;
        let admin = u.admin().await;
        let service = u.service_token().await;
        let (_, sam_password) = u.user(&admin, "sam", "supervisor", &["east"]).await;
        let sam = u.token("sam", &sam_password).await;
        let (gus, gus_token) = available(&u, &admin, "gus", &["east"], json!({})).await;

        let ok = json!({"call_id": "c1", "team": "east"});
        for (who, token) in [
            ("agent", &gus_token),
            ("supervisor", &sam),
            ("admin", &admin),
        ] {
            let (status, b) = u.reserve(token, ok.clone()).await;
            assert_eq!(
                (status, b["code"].as_str()),
                (403, Some("forbidden")),
                "{engine}: {who} reserves: {b}"
            );
        }
        let resp = u
            .http
            .post(format!("{}/v1/agents/reserve", u.url))
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{engine}: no token");

        let too_many: Vec<String> = (0..257).map(|i| format!("a{i}")).collect();
        for (body, code, field) in [
            (json!({"team": "east"}), "invalid_json", "call_id"),
            (json!({"call_id": 5}), "invalid_json", "call_id"),
            (json!({"call_id": ""}), "invalid_request", "call_id"),
            (
                json!({"call_id": "has space"}),
                "invalid_request",
                "call_id",
            ),
            (
                json!({"call_id": "c1", "team": "no spaces"}),
                "invalid_request",
                "team",
            ),
            (
                json!({"call_id": "c1", "skills": {"spanish": 0}}),
                "invalid_request",
                "skills",
            ),
            (
                json!({"call_id": "c1", "skills": {"spanish": 11}}),
                "invalid_request",
                "skills",
            ),
            (
                json!({"call_id": "c1", "skills": {"spanish": 300}}),
                "invalid_json",
                "skills",
            ),
            (
                json!({"call_id": "c1", "skills": {"has space": 3}}),
                "invalid_request",
                "skills",
            ),
            (
                json!({"call_id": "c1", "exclude": ["fine", "not/fine"]}),
                "invalid_request",
                "exclude",
            ),
            (
                json!({"call_id": "c1", "exclude": too_many}),
                "invalid_request",
                "exclude",
            ),
            (
                json!({"call_id": "c1", "exclude": "gus"}),
                "invalid_json",
                "exclude",
            ),
            (
                json!({"call_id": "c1", "agent_id": "../x"}),
                "invalid_request",
                "agent_id",
            ),
            (
                json!({"call_id": "c1", "skill": {"spanish": 1}}),
                "invalid_json",
                "skill",
            ),
        ] {
            let (status, b) = u.reserve(&service, body.clone()).await;
            assert_eq!(
                (status, b["code"].as_str()),
                (400, Some(code)),
                "{engine}: {body}: {b}"
            );
            let message = b["message"].as_str().unwrap();
            if code == "invalid_request" {
                assert!(message.starts_with(field), "{engine}: {body}: {b}");
            } else {
                assert!(message.contains(field), "{engine}: {body}: {b}");
            }
        }
        assert_eq!(
            agent_view(&u, &admin, &gus).await["state"],
            "available",
            "{engine}: nothing reserved"
        );

        // `reserved` comes only from a reservation, whoever asks.
        for (who, token) in [
            ("agent", &gus_token),
            ("admin", &admin),
            ("service", &service),
        ] {
            let (status, b) = u
                .set_state(token, &gus, json!({"state": "reserved", "call_id": "c1"}))
                .await;
            assert_eq!(status, 403, "{engine}: {who} sets reserved: {b}");
            assert!(
                b["message"]
                    .as_str()
                    .unwrap()
                    .contains("/v1/agents/reserve"),
                "{engine}: {b}"
            );
        }
        let (status, _) = u.reserve(&service, ok.clone()).await;
        assert_eq!(status, 200, "{engine}");
        let (status, b) = u
            .set_state(
                &service,
                &gus,
                json!({"state": "on_call", "call_id": "bad id"}),
            )
            .await;
        assert_eq!(status, 400, "{engine}: {b}");
        assert!(
            b["message"].as_str().unwrap().starts_with("call_id"),
            "{engine}: {b}"
        );
        // Admins and supervisors may free an agent held by a lost call, but
        // never connect one.
        let (status, b) = u.set_state(&sam, &gus, json!({"state": "on_call"})).await;
        assert_eq!(status, 403, "{engine}: a supervisor connects: {b}");
        let (status, a) = u.set_state(&sam, &gus, json!({"state": "available"})).await;
        assert_eq!(
            (status, a["state"].as_str()),
            (200, Some("available")),
            "{engine}: a supervisor frees the agent: {a}"
        );
        // The call named in another move must be the agent's (it has none).
        let (status, b) = u
            .set_state(
                &gus_token,
                &gus,
                json!({"state": "paused", "pause_code": "lunch", "call_id": "c1"}),
            )
            .await;
        assert_eq!(
            (status, b["current_state"].as_str()),
            (409, Some("available")),
            "{engine}: {b}"
        );
    }
}
