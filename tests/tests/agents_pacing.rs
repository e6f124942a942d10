//! task-scheduler with agents (issue 11): dialing modes, agent presence from
//! `agent.state`, progressive limits, the abandon ledger and its cap, and
//! the live view, against a real database of each engine (SQLite and
//! MariaDB) and a real RabbitMQ for events and commands. No media
//! processor or user-service agent runs: the test publishes the
//! `agent.state` and `call.*` events they would, and reads the `dial`
//! commands the scheduler sends.

use std::time::Duration;

use dialstack_common::bus::{Channel, EVENTS};
use dialstack_common::db::Db;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, DialCommand, Outcome};
use dialstack_tests::campaigns::{agent_state, call_event, publish, DialSink};
use dialstack_tests::users::Users;
use dialstack_tests::{
    amqp_url, both_databases, eventually, fresh_sqlite_url, in_process, unique, InProcess,
};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Row;

fn all_day() -> Value {
    json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"})
}

/// user-service (for tokens), a scheduler on a fresh database, its events
/// and commands on RabbitMQ, and the test's reader of dial commands.
struct Stack {
    users: Users,
    sched: InProcess,
    admin: String,
    db: Db,
    events: Channel,
    dials: DialSink,
}

impl Stack {
    async fn start(db_url: &str, extra: &[(&str, &str)]) -> Self {
        let ns = unique("agents");
        let events_url = amqp_url(&ns);
        let commands_url = amqp_url(&format!("{ns}c"));
        let users = Users::start(&fresh_sqlite_url(), &events_url).await;
        let dials = DialSink::start(&commands_url).await;
        let jwks = format!("{}/.well-known/jwks.json", users.url);
        let mut vars: Vec<(&str, &str)> = vec![
            ("DIALSTACK_DATABASE_URL", db_url),
            ("DIALSTACK_EVENTS_URL", &events_url),
            ("DIALSTACK_COMMANDS_URL", &commands_url),
            ("DIALSTACK_JWKS_URL", &jwks),
            ("DIALSTACK_LEADER_LEASE_MS", "1000"),
        ];
        vars.extend_from_slice(extra);
        let sched = in_process::<task_scheduler::Application>(&vars).await;
        let admin = users.admin().await;
        Self {
            events: Channel::connect(&events_url, EVENTS).await.unwrap(),
            db: Db::connect(db_url).await.unwrap(),
            users,
            sched,
            admin,
            dials,
        }
    }

    async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .sched
            .http
            .request(method, format!("{}{path}", self.sched.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.admin, method, path, body).await
    }

    fn body(extra: Value, leads: usize) -> Value {
        let mut body = json!({
            "name": "agents", "caller_id": "+14155550000", "max_concurrent": 100, "max_cps": 50.0,
            "calling_hours": all_day(),
            "contacts": (0..leads).map(|i| format!("+1415555{:04}", i)).collect::<Vec<_>>(),
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    /// Creates and starts a campaign of `leads` leads with `extra` settings.
    async fn running(&self, extra: Value, leads: usize) -> String {
        let (s, c) = self
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(Self::body(extra, leads)),
            )
            .await;
        assert_eq!(s, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_owned();
        let (s, c) = self
            .call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
            .await;
        assert_eq!(s, 200, "{c}");
        id
    }

    async fn send(&self, ce: &CloudEvent) {
        publish(&self.events, ce).await;
    }

    async fn agent(&self, id: &str, state: &str, at_ms: i64) {
        self.send(&agent_state(id, state, &["east"], at_ms, None))
            .await;
    }

    async fn call_ev(
        &self,
        cmd: &DialCommand,
        ty: &str,
        outcome: Option<Outcome>,
        agent: Option<&str>,
    ) {
        self.send(&call_event(cmd, ty, outcome, agent)).await;
    }

    /// `(state, since_ms)` of an agent's presence row, if any.
    async fn presence(&self, agent: &str) -> Option<(String, i64)> {
        sqlx::query("SELECT state, since_ms FROM agent_presence WHERE agent_id = ?")
            .bind(agent)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    async fn wait_presence(&self, agent: &str, state: &str, since: i64) {
        eventually(
            &format!("{agent} {state} since {since}"),
            Duration::from_secs(20),
            || async {
                match self.presence(agent).await {
                    Some((s, t)) if s == state && t == since => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    /// Attempts of a campaign ever queued.
    async fn attempts(&self, campaign: &str) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM attempts WHERE campaign_id = ?")
            .bind(campaign)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
            .get(0)
    }

    async fn attempt_state(&self, attempt: &str) -> String {
        sqlx::query("SELECT state FROM attempts WHERE id = ?")
            .bind(attempt)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
            .get(0)
    }

    async fn wait_completed(&self, cmd: &DialCommand) {
        eventually("attempt completed", Duration::from_secs(20), || async {
            match self.attempt_state(&cmd.attempt_id).await.as_str() {
                "completed" => Ok(()),
                s => Err(s.to_owned()),
            }
        })
        .await;
    }

    async fn metrics(&self) -> String {
        self.sched
            .http
            .get(format!("{}/metrics", self.sched.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Three agents of team `east` ready (and their presence stored).
    async fn three_ready(&self) -> i64 {
        let t = dialstack_common::now_ms();
        for a in ["ann", "bob", "cat"] {
            self.agent(a, "available", t).await;
        }
        for a in ["ann", "bob", "cat"] {
            self.wait_presence(a, "available", t).await;
        }
        t
    }

    /// No more dial commands than `n` for a while (the dispatcher runs every
    /// 200 ms at most and on every event: two seconds is ten rounds).
    async fn stays_at(&self, n: usize) {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < until {
            assert_eq!(self.dials.len(), n, "dial commands beyond the limit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn field_of(body: &Value) -> String {
    body["message"]
        .as_str()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_are_validated_stored_and_patched() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        for (extra, field) in [
            (json!({"mode": "robocall", "team": "east"}), "mode"),
            (json!({"mode": "progressive"}), "team"),
            (json!({"mode": "predictive"}), "team"),
            (json!({"mode": "preview"}), "team"),
            (
                json!({"mode": "progressive", "team": "east", "dial_ratio": 0.4}),
                "dial_ratio",
            ),
            (
                json!({"mode": "progressive", "team": "east", "dial_ratio": 5.5}),
                "dial_ratio",
            ),
            (
                json!({"mode": "predictive", "team": "east", "abandon_cap_pct": 3.5}),
                "abandon_cap_pct",
            ),
            (
                json!({"mode": "predictive", "team": "east", "abandon_cap_pct": 0.0}),
                "abandon_cap_pct",
            ),
            (
                json!({"mode": "progressive", "team": "east", "abandon_after_ms": 2500}),
                "abandon_after_ms",
            ),
            (
                json!({"mode": "progressive", "team": "east", "abandon_after_ms": 50}),
                "abandon_after_ms",
            ),
            (
                json!({"mode": "progressive", "team": "east", "skills": {"spanish": 0}}),
                "skills.spanish",
            ),
            (
                json!({"mode": "progressive", "team": "east", "skills": {"no way": 3}}),
                "skills",
            ),
        ] {
            let (st, body) = s
                .call(
                    Method::POST,
                    "/v1/campaigns",
                    Some(Stack::body(extra.clone(), 1)),
                )
                .await;
            assert_eq!(st, 400, "{engine}: {extra} → {body}");
            assert_eq!(field_of(&body), field, "{engine}: {extra} → {body}");
        }
        // Defaults: ivr, which needs no team.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(Stack::body(json!({}), 1)),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        assert_eq!(
            (
                &c["mode"],
                &c["dial_ratio"],
                &c["abandon_cap_pct"],
                &c["abandon_after_ms"]
            ),
            (&json!("ivr"), &json!(1.0), &json!(3.0), &json!(2000)),
            "{engine}: {c}"
        );
        let ivr = c["id"].as_str().unwrap().to_owned();
        let (st, body) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{ivr}"),
                Some(json!({"mode": "progressive"})),
            )
            .await;
        assert_eq!(
            (st, field_of(&body)),
            (400, "team".into()),
            "{engine}: {body}"
        );
        // A progressive campaign, read back and changed.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(Stack::body(
                    json!({"mode": "progressive", "team": "east", "dial_ratio": 1.5,
                           "abandon_cap_pct": 2.0, "skills": {"spanish": 3}, "abandon_after_ms": 1500}),
                    1,
                )),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        let id = c["id"].as_str().unwrap().to_owned();
        let (st, got) = s
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(
            (
                &got["mode"],
                &got["dial_ratio"],
                &got["abandon_cap_pct"],
                &got["skills"],
                &got["abandon_after_ms"]
            ),
            (
                &json!("progressive"),
                &json!(1.5),
                &json!(2.0),
                &json!({"spanish": 3}),
                &json!(1500)
            ),
            "{engine}: {got}"
        );
        let (st, got) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"mode": "predictive", "dial_ratio": 2.0, "skills": {"french": 5}})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {got}");
        assert_eq!(
            (&got["mode"], &got["dial_ratio"], &got["skills"]),
            (&json!("predictive"), &json!(2.0), &json!({"french": 5})),
            "{engine}: {got}"
        );
        let (st, body) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"abandon_cap_pct": 3.01})),
            )
            .await;
        assert_eq!(
            (st, field_of(&body)),
            (400, "abandon_cap_pct".into()),
            "{engine}: {body}"
        );
        let (st, got) = s
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(
            (st, &got["abandon_cap_pct"]),
            (200, &json!(2.0)),
            "a refused patch changes nothing"
        );
        // The document says so.
        let doc: Value = s
            .sched
            .http
            .get(format!("{}/openapi.json", s.sched.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let req = &doc["components"]["schemas"]["NewCampaignRequest"]["properties"];
        for f in [
            "mode",
            "dial_ratio",
            "abandon_cap_pct",
            "skills",
            "abandon_after_ms",
        ] {
            assert!(req.get(f).is_some(), "{f} in the OpenAPI request schema");
        }
        for p in [
            "/v1/campaigns/{id}/abandon",
            "/v1/campaigns/{id}/live",
            "/v1/campaigns/{id}/live/stream",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} in the OpenAPI document");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_states_land_in_presence_newest_first() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        let t = dialstack_common::now_ms();
        s.send(&agent_state("ann", "available", &["east", "west"], t, None))
            .await;
        s.wait_presence("ann", "available", t).await;
        s.send(&agent_state(
            "ann",
            "on_call",
            &["east", "west"],
            t + 300,
            Some("call-1"),
        ))
        .await;
        s.wait_presence("ann", "on_call", t + 300).await;
        // Late: older than what is held, so it changes nothing.
        s.send(&agent_state("ann", "available", &["east"], t + 200, None))
            .await;
        // Malformed ones are dead-lettered; the consumer keeps going.
        let bad_state = CloudEvent::new(
            "user-service",
            types::AGENT_STATE,
            "ann",
            &json!({"agent_id": "ann", "previous": "on_call", "state": "dancing", "reason": "x", "at_ms": t + 400}),
        );
        let bad_teams = CloudEvent::new(
            "user-service",
            types::AGENT_STATE,
            "ann",
            &json!({"agent_id": "ann", "previous": "on_call", "state": "paused", "reason": "x", "at_ms": t + 500, "teams": "east"}),
        );
        s.send(&bad_state).await;
        s.send(&bad_teams).await;
        // A marker after them all: once it is in, the rest were handled.
        s.send(&agent_state("bob", "paused", &["east"], t, None))
            .await;
        s.wait_presence("bob", "paused", t).await;
        let seen = std::sync::Mutex::new(Vec::<String>::new());
        let dead = eventually(
            "malformed agent.state dead-lettered",
            Duration::from_secs(30),
            || async {
                let dead = s
                    .events
                    .dead_letters(task_scheduler::NAME, 10)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut ids = seen.lock().unwrap();
                for id in dead
                    .iter()
                    .filter_map(|d| CloudEvent::from_slice(&d.payload).ok().map(|e| e.id))
                {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                if ids.contains(&bad_state.id) && ids.contains(&bad_teams.id) {
                    Ok(ids.clone())
                } else {
                    Err(format!("{ids:?}"))
                }
            },
        )
        .await;
        assert_eq!(dead.len(), 2, "{engine}: only the malformed ones");
        assert_eq!(
            s.presence("ann").await,
            Some(("on_call".into(), t + 300)),
            "{engine}: neither the late nor the malformed event moved ann"
        );
        let repo = task_scheduler::db::Repo { db: s.db.clone() };
        assert_eq!(
            repo.presence_teams("ann").await.unwrap(),
            ["east", "west"],
            "{engine}"
        );
        // The same event delivered twice (at least once) counts once and
        // does not move the agent back either.
        let again = agent_state("cat", "available", &["east"], t, None);
        s.send(&again).await;
        s.wait_presence("cat", "available", t).await;
        s.send(&agent_state(
            "cat",
            "wrap_up",
            &["east"],
            t + 10,
            Some("c2"),
        ))
        .await;
        s.wait_presence("cat", "wrap_up", t + 10).await;
        s.send(&again).await;
        s.send(&agent_state("dan", "available", &["west"], t, None))
            .await;
        s.wait_presence("dan", "available", t).await;
        assert_eq!(
            s.presence("cat").await,
            Some(("wrap_up".into(), t + 10)),
            "{engine}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_keeps_calls_without_an_agent_at_ready_agents() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        s.three_ready().await;
        // Another team's agent is no capacity for this campaign.
        let t0 = dialstack_common::now_ms();
        s.send(&agent_state("zed", "available", &["west"], t0, None))
            .await;
        s.wait_presence("zed", "available", t0).await;
        let id = s
            .running(
                json!({"mode": "progressive", "team": "east", "dial_ratio": 1.0, "skills": {"spanish": 4}, "abandon_after_ms": 1800}),
                30,
            )
            .await;
        let first = s.dials.wait_for(3).await;
        for cmd in &first {
            let b = cmd.bridge.as_ref().expect("progressive calls are bridged");
            assert_eq!(b.skills.get("spanish"), Some(&4), "{engine}");
            assert_eq!(
                (b.agent_id.as_deref(), b.abandon_after_ms),
                (None, 1800),
                "{engine}"
            );
            assert_eq!(
                (cmd.campaign_id.as_str(), cmd.team.as_deref()),
                (id.as_str(), Some("east"))
            );
        }
        s.stays_at(3).await;
        // Call 0 rings and is answered: still waiting for an agent, still
        // counted.
        s.call_ev(&first[0], types::CALL_DIALING, None, None).await;
        s.call_ev(&first[0], types::CALL_ANSWERED, None, None).await;
        s.stays_at(3).await;
        // Bridged to ann, who is on the call: one call less without an
        // agent, and one agent less.
        s.call_ev(&first[0], types::CALL_BRIDGED, None, Some("ann"))
            .await;
        s.send(&agent_state(
            "ann",
            "on_call",
            &["east"],
            dialstack_common::now_ms(),
            Some(&first[0].call_id),
        ))
        .await;
        s.stays_at(3).await;
        // Call 1 is not answered: a slot frees for bob.
        s.call_ev(&first[1], types::CALL_DIALING, None, None).await;
        s.call_ev(
            &first[1],
            types::CALL_COMPLETED,
            Some(Outcome::NoAnswer),
            None,
        )
        .await;
        let now = s.dials.wait_for(4).await;
        s.stays_at(4).await;
        // ann hangs up and wraps up: not ready yet.
        s.call_ev(
            &first[0],
            types::CALL_COMPLETED,
            Some(Outcome::AnsweredHuman),
            Some("ann"),
        )
        .await;
        s.send(&agent_state(
            "ann",
            "wrap_up",
            &["east"],
            dialstack_common::now_ms(),
            Some(&first[0].call_id),
        ))
        .await;
        s.wait_completed(&first[0]).await;
        s.stays_at(4).await;
        // ann is available again: one more call.
        s.send(&agent_state(
            "ann",
            "available",
            &["east"],
            dialstack_common::now_ms(),
            None,
        ))
        .await;
        s.dials.wait_for(5).await;
        s.stays_at(5).await;
        // A bigger ratio: 3 ready × 2.0 = 6 calls without an agent, 3 of
        // them in flight already.
        let (st, body) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"dial_ratio": 2.0})),
            )
            .await;
        assert_eq!(st, 200, "{body}");
        s.dials.wait_for(8).await;
        s.stays_at(8).await;
        let agent: Option<String> = sqlx::query("SELECT agent_id FROM attempts WHERE id = ?")
            .bind(&now[0].attempt_id)
            .fetch_one(&s.db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            agent.as_deref(),
            Some("ann"),
            "{engine}: the bridge names the agent on the attempt"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictive_asks_its_pacer_and_starts_at_one_call_per_ready_agent() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        s.three_ready().await;
        let id = s
            .running(json!({"mode": "predictive", "team": "east"}), 20)
            .await;
        // A pacer that has measured nothing dials progressively at 1.0.
        let first = s.dials.wait_for(3).await;
        assert!(
            first
                .iter()
                .all(|c| c.campaign_id == id && c.bridge.is_some()),
            "{engine}"
        );
        s.stays_at(3).await;
        // What it hears keeps it within its agents: a ring-out frees one
        // slot, a bridge takes an agent and a call away together.
        s.call_ev(&first[0], types::CALL_DIALING, None, None).await;
        s.call_ev(
            &first[0],
            types::CALL_COMPLETED,
            Some(Outcome::NoAnswer),
            None,
        )
        .await;
        s.dials.wait_for(4).await;
        s.call_ev(&first[1], types::CALL_ANSWERED, None, None).await;
        s.call_ev(&first[1], types::CALL_BRIDGED, None, Some("ann"))
            .await;
        s.send(&agent_state(
            "ann",
            "on_call",
            &["east"],
            dialstack_common::now_ms(),
            Some(&first[1].call_id),
        ))
        .await;
        s.stays_at(4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_campaigns_are_never_auto_dialed() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        s.three_ready().await;
        let preview = s
            .running(json!({"mode": "preview", "team": "east"}), 5)
            .await;
        // An ivr campaign next to it is dialed: the dispatcher is running.
        let ivr = s.running(json!({}), 2).await;
        let dialed = s.dials.wait_for(2).await;
        assert!(
            dialed
                .iter()
                .all(|c| c.campaign_id == ivr && c.bridge.is_none()),
            "{engine}: ivr calls carry no bridge"
        );
        s.stays_at(2).await;
        assert_eq!(s.attempts(&preview).await, 0, "{engine}");
        let (_, c) = s
            .call(Method::GET, &format!("/v1/campaigns/{preview}"), None)
            .await;
        assert_eq!(
            c["state"], "running",
            "{engine}: still waiting for its agents"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_counts_live_and_abandoned_calls_once() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        // ivr: no agents needed to dial; the ledger counts any campaign.
        let id = s
            .running(json!({"team": "east", "max_concurrent": 4}), 6)
            .await;
        let dials = s.dials.wait_for(4).await;
        let outcomes = [
            Outcome::AnsweredHuman,
            Outcome::AnsweredHuman,
            Outcome::Abandoned,
            Outcome::Busy,
        ];
        for (cmd, o) in dials.iter().zip(outcomes) {
            s.call_ev(cmd, types::CALL_DIALING, None, None).await;
            let done = call_event(cmd, types::CALL_COMPLETED, Some(o), None);
            s.send(&done).await;
            // Delivered twice: counted once (inbox).
            s.send(&done).await;
        }
        for cmd in &dials {
            s.wait_completed(cmd).await;
        }
        let report = eventually("ledger", Duration::from_secs(10), || async {
            let (st, r) = s
                .call(Method::GET, &format!("/v1/campaigns/{id}/abandon"), None)
                .await;
            if st == 200 && r["today"]["live"] == 3 {
                Ok(r)
            } else {
                Err(format!("{st} {r}"))
            }
        })
        .await;
        let third = 1.0 / 3.0;
        assert_eq!(report["cap_pct"], 3.0, "{engine}");
        assert_eq!(report["timezone"], "UTC", "{engine}");
        for w in ["today", "last_30_days"] {
            assert_eq!(
                (&report[w]["live"], &report[w]["abandoned"]),
                (&json!(3), &json!(1)),
                "{engine}: {report}"
            );
            assert!(
                (report[w]["ratio"].as_f64().unwrap() - third).abs() < 1e-9,
                "{engine}: {report}"
            );
        }
        let today = report["days"][0]["date"].as_str().unwrap().to_owned();
        assert_eq!(
            report["days"].as_array().unwrap().len(),
            1,
            "{engine}: {report}"
        );
        assert_eq!(today.len(), 10, "{engine}: YYYY-MM-DD");
        // CSV, both ways of asking.
        for path in [
            format!("/v1/campaigns/{id}/abandon?format=csv"),
            format!("/v1/campaigns/{id}/abandon.csv"),
        ] {
            let r = s
                .sched
                .http
                .get(format!("{}{path}", s.sched.url))
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{engine}: {path}");
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv"));
            let body = r.text().await.unwrap();
            assert_eq!(
                body,
                format!(
                    "date,live,abandoned,ratio,machine,amd_unsure\r\n{today},3,1,0.333333,0,0\r\n"
                ),
                "{engine}: {path}"
            );
        }
        let (st, body) = s
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/abandon?format=xml"),
                None,
            )
            .await;
        assert_eq!((st, field_of(&body)), (400, "format".into()), "{engine}");
        // Scoped like every campaign read.
        let (_, west_pw) = s
            .users
            .user(&s.admin, "wendy", "supervisor", &["west"])
            .await;
        let west = s.users.token("wendy", &west_pw).await;
        let (_, east_pw) = s.users.user(&s.admin, "eve", "supervisor", &["east"]).await;
        let east = s.users.token("eve", &east_pw).await;
        let (_, ag_pw) = s.users.user(&s.admin, "arnold", "agent", &[]).await;
        let agent = s.users.token("arnold", &ag_pw).await;
        for path in [
            format!("/v1/campaigns/{id}/abandon"),
            format!("/v1/campaigns/{id}/live"),
        ] {
            assert_eq!(
                s.call_as(&west, Method::GET, &path, None).await.0,
                404,
                "{engine}: {path}"
            );
            assert_eq!(
                s.call_as(&east, Method::GET, &path, None).await.0,
                200,
                "{engine}: {path}"
            );
            assert_eq!(
                s.call_as(&agent, Method::GET, &path, None).await.0,
                403,
                "{engine}: {path}"
            );
        }
        // The gauge, for the running campaign.
        eventually("abandon gauge", Duration::from_secs(10), || async {
            let m = s.metrics().await;
            let line = format!(
                "dialstack_campaign_abandon_ratio{{campaign=\"{id}\",window=\"today\"}} 0.333"
            );
            if m.lines().any(|l| l.starts_with(&line))
                && m.contains(&format!("campaign=\"{id}\",window=\"30d\""))
            {
                Ok(())
            } else {
                Err(m
                    .lines()
                    .filter(|l| l.contains("abandon"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_stops_at_the_abandon_cap() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        s.three_ready().await;
        let id = s
            .running(
                json!({"mode": "progressive", "team": "east", "abandon_cap_pct": 3.0}),
                20,
            )
            .await;
        let first = s.dials.wait_for(3).await;
        // Every answered call was abandoned: 100 % against a 3 % cap.
        for cmd in &first {
            s.call_ev(cmd, types::CALL_DIALING, None, None).await;
            s.call_ev(cmd, types::CALL_ANSWERED, None, None).await;
            s.call_ev(cmd, types::CALL_COMPLETED, Some(Outcome::Abandoned), None)
                .await;
        }
        for cmd in &first {
            s.wait_completed(cmd).await;
        }
        // Three agents ready, nothing in flight, leads due: still no call.
        s.stays_at(3).await;
        let (st, live) = s
            .call(Method::GET, &format!("/v1/campaigns/{id}/live"), None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(live["agents"]["ready"], 3, "{engine}: {live}");
        assert_eq!(live["abandon_today"]["ratio"], 1.0, "{engine}: {live}");
        let m = s.metrics().await;
        assert!(
            m.lines().any(|l| l
                .starts_with("dialstack_campaign_abandon_throttles_total{level=\"at_cap\"}")
                && !l.ends_with(" 0")),
            "{engine}: the stop is counted:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_counts_agents_and_calls_and_streams() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[("DIALSTACK_MAX_LIVE_STREAMS", "1")]).await;
        s.three_ready().await;
        let t = dialstack_common::now_ms();
        s.agent("dan", "paused", t).await;
        s.wait_presence("dan", "paused", t).await;
        let id = s
            .running(json!({"mode": "progressive", "team": "east"}), 10)
            .await;
        let d = s.dials.wait_for(3).await;
        // d[0] rings, d[1] waits for an agent, d[2] talks to ann.
        for cmd in &d {
            s.call_ev(cmd, types::CALL_DIALING, None, None).await;
        }
        s.call_ev(&d[1], types::CALL_ANSWERED, None, None).await;
        s.call_ev(&d[2], types::CALL_ANSWERED, None, None).await;
        s.call_ev(&d[2], types::CALL_BRIDGED, None, Some("ann"))
            .await;
        let on_call = dialstack_common::now_ms();
        s.send(&agent_state(
            "ann",
            "on_call",
            &["east"],
            on_call,
            Some(&d[2].call_id),
        ))
        .await;
        s.wait_presence("ann", "on_call", on_call).await;
        let live = eventually("live view", Duration::from_secs(20), || async {
            let (st, v) = s
                .call(Method::GET, &format!("/v1/campaigns/{id}/live"), None)
                .await;
            let c = &v["calls"];
            if st == 200 && c["ringing"] == 1 && c["waiting"] == 1 && c["talking"] == 1 {
                Ok(v)
            } else {
                Err(format!("{st} {v}"))
            }
        })
        .await;
        let a = &live["agents"];
        assert_eq!(
            (
                &a["by_state"]["available"],
                &a["by_state"]["on_call"],
                &a["by_state"]["paused"]
            ),
            (&json!(2), &json!(1), &json!(1)),
            "{engine}: {live}"
        );
        assert_eq!(
            (&a["ready"], &a["logged_in"]),
            (&json!(2), &json!(4)),
            "{engine}: {live}"
        );
        assert_eq!(a["agents"].as_array().unwrap().len(), 4, "{engine}: {live}");
        assert_eq!(live["calls"]["queued"], 0, "{engine}: {live}");
        assert_eq!(
            live["dial_level"], 1.0,
            "{engine}: 2 calls without an agent for 2 ready agents"
        );
        assert_eq!(live["leads_left"], 7, "{engine}: {live}");
        assert_eq!(live["mode"], "progressive");
        assert_eq!(
            (
                &live["abandon_today"]["live"],
                &live["abandon_30_days"]["ratio"]
            ),
            (&json!(0), &json!(0.0))
        );
        assert_eq!(
            s.dials.len(),
            3,
            "{engine}: two ready agents, two calls without one"
        );

        // The stream: two updates at least, then a second stream is refused
        // while the first is open (one allowed), and allowed once it closed.
        let mut stream = s
            .sched
            .http
            .get(format!("{}/v1/campaigns/{id}/live/stream", s.sched.url))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200, "{engine}");
        assert!(stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut text = String::new();
        let mut updates: Vec<Value> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while updates.len() < 2 {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk())
                .await
                .expect("two updates within 10 s")
                .unwrap()
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                if frame.lines().any(|l| l == "event: live") {
                    let data: String = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    updates.push(serde_json::from_str(&data).unwrap());
                }
            }
        }
        assert!(
            updates
                .iter()
                .all(|u| u["campaign_id"] == id.as_str() && u["calls"]["talking"] == 1),
            "{engine}"
        );
        assert!(
            updates[1]["at_ms"].as_i64() > updates[0]["at_ms"].as_i64(),
            "{engine}: fresh each time"
        );
        let (st, body) = s
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/live/stream"),
                None,
            )
            .await;
        assert_eq!(st, 503, "{engine}: {body}");
        drop(stream);
        eventually("a stream slot again", Duration::from_secs(10), || async {
            let r = s
                .sched
                .http
                .get(format!("{}/v1/campaigns/{id}/live/stream", s.sched.url))
                .bearer_auth(&s.admin)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 200 {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        })
        .await;
    }
}
