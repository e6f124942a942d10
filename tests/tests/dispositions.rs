//! Preview dialing and dispositions (issue 11 §2 preview, §3 dispositions)
//! against a real database of each engine (SQLite and MariaDB), a real
//! RabbitMQ for events and commands, and the real user-service: its tokens,
//! and the agent state that a disposition ends (wrap-up → available). No
//! media processor runs: the test reads the `dial` commands the scheduler
//! sends and publishes the `call.*` events media-processor would.

use std::time::Duration;

use dialstack_common::bus::{Channel, EVENTS};
use dialstack_common::db::Db;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, DialCommand, Outcome};
use dialstack_tests::campaigns::{call_event, publish, DialSink, EventSink};
use dialstack_tests::users::Users;
use dialstack_tests::InProcess;
use dialstack_tests::{amqp_url, both_databases, eventually, fresh_sqlite_url, in_process, unique};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Row;

fn all_day() -> Value {
    json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"})
}

/// The field a 400 names (`"field: why"`).
fn field_of(body: &Value) -> String {
    body["message"]
        .as_str()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An agent of user-service: id and token (whose `teams` claim is the
/// profile's).
#[derive(Clone)]
struct Agent {
    id: String,
    token: String,
}

/// user-service, a scheduler on a fresh database that ends wrap-ups in that
/// user-service (or at `user_service_url`), events and commands on
/// RabbitMQ, and the test's readers of dial commands and dispositions.
struct Stack {
    users: Users,
    sched: InProcess,
    admin: String,
    service: String,
    db: Db,
    events: Channel,
    dials: DialSink,
    dispositions: EventSink,
}

impl Stack {
    async fn start(db_url: &str, user_service_url: Option<&str>) -> Self {
        let ns = unique("dispo");
        let events_url = amqp_url(&ns);
        let commands_url = amqp_url(&format!("{ns}c"));
        let users = Users::start_with(
            &fresh_sqlite_url(),
            &events_url,
            &[("DIALSTACK_AGENT_HEARTBEAT_TIMEOUT_SECS", "3600")],
        )
        .await;
        let dials = DialSink::start(&commands_url).await;
        let dispositions =
            EventSink::start(&events_url, "disposition-sink", &[types::CALL_DISPOSITION]).await;
        let jwks = format!("{}/.well-known/jwks.json", users.url);
        let wrap_up_url = user_service_url.unwrap_or(&users.url).to_owned();
        let sched = in_process::<task_scheduler::Application>(&[
            ("DIALSTACK_DATABASE_URL", db_url),
            ("DIALSTACK_EVENTS_URL", &events_url),
            ("DIALSTACK_COMMANDS_URL", &commands_url),
            ("DIALSTACK_JWKS_URL", &jwks),
            ("DIALSTACK_LEADER_LEASE_MS", "1000"),
            ("DIALSTACK_USER_SERVICE_URL", &wrap_up_url),
        ])
        .await;
        let admin = users.admin().await;
        let service = users.service_token().await;
        Self {
            events: Channel::connect(&events_url, EVENTS).await.unwrap(),
            db: Db::connect(db_url).await.unwrap(),
            users,
            sched,
            admin,
            service,
            dials,
            dispositions,
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

    /// An available agent of team `team`.
    async fn agent(&self, name: &str, team: &str) -> Agent {
        let (id, token) = self.users.agent(&self.admin, name, team).await;
        let (s, a) = self
            .users
            .set_state(&token, &id, json!({"state": "available"}))
            .await;
        assert_eq!(s, 200, "{a}");
        Agent { id, token }
    }

    /// A supervisor leading `team`: their token.
    async fn supervisor(&self, name: &str, team: &str) -> String {
        let (_, password) = self
            .users
            .user(&self.admin, name, "supervisor", &[team])
            .await;
        self.users.token(name, &password).await
    }

    /// Creates and starts a preview campaign of team `east` with `phones`.
    async fn preview_campaign(&self, phones: &[String], extra: Value) -> String {
        let mut body = json!({
            "name": "preview", "caller_id": "+14155550000", "max_concurrent": 10, "max_cps": 10.0,
            "mode": "preview", "team": "east", "calling_hours": all_day(), "contacts": phones,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, c) = self.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_eq!(s, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_owned();
        let (s, c) = self
            .call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
            .await;
        assert_eq!(s, 200, "{c}");
        id
    }

    async fn next_lead(&self, a: &Agent) -> (u16, Value) {
        self.call_as(&a.token, Method::POST, "/v1/agents/me/next-lead", None)
            .await
    }

    async fn send(&self, ce: &CloudEvent) {
        publish(&self.events, ce).await;
    }

    /// A call of agent `a` through preview: the next lead, dialed, the dial
    /// command as media-processor gets it.
    async fn preview_dial(&self, a: &Agent) -> (String, DialCommand) {
        let before = self.dials.len();
        let (s, next) = self.next_lead(a).await;
        assert_eq!(s, 200, "{next}");
        let lead = next["lead"]["id"].as_str().unwrap().to_owned();
        let (s, d) = self
            .call_as(
                &a.token,
                Method::POST,
                &format!("/v1/leads/{lead}/dial"),
                None,
            )
            .await;
        assert_eq!(s, 202, "{d}");
        let cmd = self.dials.wait_for(before + 1).await.pop().unwrap();
        assert_eq!(cmd.call_id, d["call_id"].as_str().unwrap());
        assert_eq!(cmd.attempt_id, d["attempt_id"].as_str().unwrap());
        (lead, cmd)
    }

    /// The call rings, is answered and bridged to `a`; user-service has the
    /// agent on it. Returns once the scheduler knows the agent.
    async fn bridged(&self, cmd: &DialCommand, a: &Agent) {
        for ty in [types::CALL_DIALING, types::CALL_ANSWERED] {
            self.send(&call_event(cmd, ty, None, None)).await;
        }
        self.send(&call_event(cmd, types::CALL_BRIDGED, None, Some(&a.id)))
            .await;
        let (s, r) = self
            .users
            .reserve(
                &self.service,
                json!({"call_id": cmd.call_id, "agent_id": a.id}),
            )
            .await;
        assert_eq!(s, 200, "reserve: {r}");
        let (s, r) = self
            .users
            .set_state(
                &self.service,
                &a.id,
                json!({"state": "on_call", "call_id": cmd.call_id}),
            )
            .await;
        assert_eq!(s, 200, "on_call: {r}");
        eventually("the call's agent", Duration::from_secs(20), || async {
            let agent: Option<String> =
                sqlx::query("SELECT agent_id FROM attempts WHERE call_id = ?")
                    .bind(&cmd.call_id)
                    .fetch_one(&self.db.pool)
                    .await
                    .unwrap()
                    .get(0);
            (agent.as_deref() == Some(a.id.as_str()))
                .then_some(())
                .ok_or(format!("{agent:?}"))
        })
        .await;
    }

    /// The call ends (answered by a person, with `a`); the agent is in
    /// wrap-up. Returns once the attempt is completed.
    async fn hung_up(&self, cmd: &DialCommand, a: &Agent) {
        self.send(&call_event(
            cmd,
            types::CALL_COMPLETED,
            Some(Outcome::AnsweredHuman),
            Some(&a.id),
        ))
        .await;
        let (s, r) = self
            .users
            .set_state(
                &self.service,
                &a.id,
                json!({"state": "wrap_up", "call_id": cmd.call_id}),
            )
            .await;
        assert_eq!(s, 200, "wrap_up: {r}");
        eventually("attempt completed", Duration::from_secs(20), || async {
            let state: String = sqlx::query("SELECT state FROM attempts WHERE id = ?")
                .bind(&cmd.attempt_id)
                .fetch_one(&self.db.pool)
                .await
                .unwrap()
                .get(0);
            (state == "completed").then_some(()).ok_or(state)
        })
        .await;
    }

    async fn dispose(&self, token: &str, call_id: &str, body: Value) -> (u16, Value) {
        self.call_as(
            token,
            Method::POST,
            &format!("/v1/calls/{call_id}/disposition"),
            Some(body),
        )
        .await
    }

    async fn lead(&self, id: &str) -> Value {
        let (s, l) = self
            .call(Method::GET, &format!("/v1/leads/{id}"), None)
            .await;
        assert_eq!(s, 200, "{l}");
        l
    }

    async fn agent_state(&self, id: &str) -> String {
        let (s, a) = self
            .users
            .call(Method::GET, &format!("/v1/agents/{id}"), &self.admin, None)
            .await;
        assert_eq!(s, 200, "{a}");
        a["state"].as_str().unwrap_or_default().to_owned()
    }
}

fn phones(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("+1415555{i:04}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_agents_get_distinct_leads_dial_them_agent_first_and_skip_them() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, None).await;
        let agents = [
            s.agent("ann", "east").await,
            s.agent("bob", "east").await,
            s.agent("cat", "east").await,
            s.agent("dan", "east").await,
        ];
        let west = s.agent("wes", "west").await;
        let campaign = s.preview_campaign(&phones(0, 12), json!({})).await;

        // No lead for an agent of another team; supervisors do not dial.
        assert_eq!(s.next_lead(&west).await.0, 204, "{engine}");
        let sue = s.supervisor("sue", "east").await;
        let (st, _) = s
            .call_as(&sue, Method::POST, "/v1/agents/me/next-lead", None)
            .await;
        assert_eq!(st, 403, "{engine}");

        // Four agents ask at once: four different leads.
        let asks = agents.iter().map(|a| s.next_lead(a));
        let offered: Vec<(u16, Value)> = futures_util::future::join_all(asks).await;
        let mut held = Vec::new();
        for (st, body) in &offered {
            assert_eq!(*st, 200, "{engine}: {body}");
            assert_eq!(body["campaign"]["id"], campaign.as_str(), "{engine}");
            assert_eq!(body["campaign"]["mode"], "preview", "{engine}");
            assert_eq!(
                body["campaign"]["dispositions"],
                json!(["SALE", "NO_INTEREST", "CALLBACK", "DNC", "WRONG_NUMBER"]),
                "{engine}"
            );
            assert!(body["held_until"].as_i64().unwrap() > dialstack_common::now_ms());
            held.push(body["lead"]["id"].as_str().unwrap().to_owned());
        }
        let mut distinct = held.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{engine}: {held:?}");
        // Asking again while holding one: the same lead.
        let (st, again) = s.next_lead(&agents[0]).await;
        assert_eq!(st, 200, "{engine}");
        assert_eq!(again["lead"]["id"], held[0].as_str(), "{engine}");

        // Another agent's lead can be neither dialed nor skipped (404).
        let other = &held[1];
        for (path, body) in [
            (format!("/v1/leads/{other}/dial"), None),
            (
                format!("/v1/leads/{other}/skip"),
                Some(json!({"reason": "not mine"})),
            ),
        ] {
            let (st, b) = s.call_as(&agents[0].token, Method::POST, &path, body).await;
            assert_eq!(st, 404, "{engine} {path}: {b}");
        }
        // Malformed skips name the field.
        let skip = format!("/v1/leads/{}/skip", held[1]);
        for (body, field) in [
            (json!({}), "reason"),
            (json!({"reason": 5}), "reason"),
            (json!({"reason": "  "}), "reason"),
            (json!({"reason": "x".repeat(201)}), "reason"),
            (json!({"reason": "busy", "until": 5}), "until"),
            (json!([]), "body"),
        ] {
            let (st, b) = s
                .call_as(&agents[1].token, Method::POST, &skip, Some(body.clone()))
                .await;
            assert_eq!((st, field_of(&b).as_str()), (400, field), "{engine} {body}");
        }

        // Bob skips his lead: he and the others are offered other ones.
        let (st, skipped) = s
            .call_as(
                &agents[1].token,
                Method::POST,
                &skip,
                Some(json!({"reason": "customer is a colleague"})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {skipped}");
        assert_eq!(skipped["state"], "pending", "{engine}");
        assert!(
            skipped["due_at"].as_i64().unwrap() >= dialstack_common::now_ms() + 9 * 60_000,
            "{engine}: put off for ten minutes"
        );
        let reason: Option<String> = sqlx::query("SELECT skip_reason FROM leads WHERE id = ?")
            .bind(&held[1])
            .fetch_one(&s.db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(reason.as_deref(), Some("customer is a colleague"));
        let (st, next) = s.next_lead(&agents[1]).await;
        assert_eq!(st, 200, "{engine}");
        let bobs = next["lead"]["id"].as_str().unwrap().to_owned();
        assert!(!held.contains(&bobs), "{engine}: {bobs} offered twice");

        // Ann dials hers: an attempt and a dial command whose bridge names
        // her, so media-processor calls her first.
        let (st, dialed) = s
            .call_as(
                &agents[0].token,
                Method::POST,
                &format!("/v1/leads/{}/dial", held[0]),
                None,
            )
            .await;
        assert_eq!(st, 202, "{engine}: {dialed}");
        let cmd = s.dials.wait_for(1).await.pop().unwrap();
        assert_eq!(cmd.call_id, dialed["call_id"].as_str().unwrap());
        assert_eq!(cmd.attempt_id, dialed["attempt_id"].as_str().unwrap());
        assert_eq!(cmd.campaign_id, campaign);
        let bridge = cmd.bridge.as_ref().expect("a preview call is bridged");
        assert_eq!(bridge.agent_id.as_deref(), Some(agents[0].id.as_str()));
        assert_eq!(bridge.abandon_after_ms, 2_000);
        let lead = s.lead(&held[0]).await;
        assert_eq!(lead["state"], "dialing", "{engine}");
        assert_eq!(lead["phone"], cmd.phone.as_str(), "{engine}");
        assert_eq!(lead["attempts"][0]["call_id"], cmd.call_id.as_str());
        // Dialed once: the hold is gone.
        let (st, _) = s
            .call_as(
                &agents[0].token,
                Method::POST,
                &format!("/v1/leads/{}/dial", held[0]),
                None,
            )
            .await;
        assert_eq!(st, 404, "{engine}");
        // The dispatcher never dials a preview campaign by itself.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(s.dials.len(), 1, "{engine}");
        // Ann is offered a fresh lead now.
        let (st, next) = s.next_lead(&agents[0]).await;
        assert_eq!(st, 200, "{engine}");
        let fresh = next["lead"]["id"].as_str().unwrap();
        assert!(
            !held.contains(&fresh.to_owned()) && fresh != bobs,
            "{engine}"
        );

        // Racing until the list runs out: every lead goes to one agent only.
        let mut given = Vec::new();
        for _ in 0..4 {
            let asks = agents.iter().map(|a| async {
                let (st, b) = s.next_lead(a).await;
                if st == 204 {
                    return None;
                }
                assert_eq!(st, 200, "{b}");
                let id = b["lead"]["id"].as_str().unwrap().to_owned();
                let (st, sk) = s
                    .call_as(
                        &a.token,
                        Method::POST,
                        &format!("/v1/leads/{id}/skip"),
                        Some(json!({"reason": "later"})),
                    )
                    .await;
                assert_eq!(st, 200, "{sk}");
                Some(id)
            });
            given.extend(
                futures_util::future::join_all(asks)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
        let n = given.len();
        given.sort();
        given.dedup();
        assert_eq!(given.len(), n, "{engine}: a lead went to two agents");
        // 12 leads: one dialed, every other skipped now and not offered again.
        assert_eq!(n, 12 - 1 - 1, "{engine}");
        for a in &agents {
            assert_eq!(s.next_lead(a).await.0, 204, "{engine}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disposition_is_set_once_by_the_agent_of_the_call_and_ends_wrap_up() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, None).await;
        let ann = s.agent("ann", "east").await;
        let bob = s.agent("bob", "east").await;
        let sue = s.supervisor("sue", "east").await;
        let sam = s.supervisor("sam", "west").await;

        // Codes are validated, defaulted and patched.
        let base =
            json!({"name": "d", "caller_id": "+14155550000", "max_concurrent": 1, "max_cps": 1.0});
        for (codes, field) in [
            (json!([]), "dispositions"),
            (json!(["SALE", "no sale"]), "dispositions[1]"),
            (json!(["SALE", "SALE"]), "dispositions[1]"),
            (json!("SALE"), ""),
        ] {
            let mut body = base.clone();
            body["dispositions"] = codes.clone();
            let (st, b) = s.call(Method::POST, "/v1/campaigns", Some(body)).await;
            assert_eq!(st, 400, "{engine} {codes}: {b}");
            if !field.is_empty() {
                assert_eq!(field_of(&b), field, "{engine} {codes}");
            }
        }
        let campaign = s
            .preview_campaign(
                &phones(100, 6),
                json!({"dispositions": ["SALE", "CALLBACK", "DNC", "VOICEMAIL"]}),
            )
            .await;
        let (st, c) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{campaign}"),
                Some(json!({"dispositions": ["SALE", "NO_INTEREST", "CALLBACK", "DNC", "WRONG_NUMBER", "VOICEMAIL"]})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {c}");
        assert_eq!(c["dispositions"].as_array().unwrap().len(), 6);
        let (st, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{campaign}"),
                Some(json!({"dispositions": ["ok?"]})),
            )
            .await;
        assert_eq!((st, field_of(&b).as_str()), (400, "dispositions[0]"));

        // Call 1: Ann's. While it lasts there is nothing to set yet.
        let (lead1, call1) = s.preview_dial(&ann).await;
        s.bridged(&call1, &ann).await;
        let (st, b) = s
            .dispose(&ann.token, &call1.call_id, json!({"code": "SALE"}))
            .await;
        assert_eq!(st, 409, "{engine}: {b}");
        s.hung_up(&call1, &ann).await;
        assert_eq!(s.agent_state(&ann.id).await, "wrap_up");

        // Nobody but Ann, her team's supervisors and admins: 404.
        for (who, token) in [("bob", &bob.token), ("sam", &sam)] {
            let (st, b) = s
                .dispose(token, &call1.call_id, json!({"code": "SALE"}))
                .await;
            assert_eq!(st, 404, "{engine} {who}: {b}");
        }
        let (st, _) = s
            .dispose(&ann.token, "no-such-call", json!({"code": "SALE"}))
            .await;
        assert_eq!(st, 404, "{engine}");
        // Bad bodies name their field; codes are the campaign's.
        let soon = chrono::Utc::now() + chrono::Duration::hours(2);
        for (body, field) in [
            (json!({}), "code"),
            (json!({"code": 5}), "code"),
            (json!({"code": "BOGUS"}), "code"),
            (json!({"code": "sale"}), "code"),
            (json!({"code": "SALE", "mood": "good"}), "mood"),
            (json!({"code": "SALE", "note": 5}), "note"),
            (json!({"code": "SALE", "note": "x".repeat(1_001)}), "note"),
            (
                json!({"code": "SALE", "callback_at": soon.to_rfc3339()}),
                "callback_at",
            ),
            (json!({"code": "CALLBACK"}), "callback_at"),
            (
                json!({"code": "CALLBACK", "callback_at": "tomorrow"}),
                "callback_at",
            ),
            (
                json!({"code": "CALLBACK", "callback_at": 1_900_000_000_000i64}),
                "callback_at",
            ),
            (
                json!({"code": "CALLBACK", "callback_at": "2001-01-01T00:00:00Z"}),
                "callback_at",
            ),
            (
                json!({"code": "CALLBACK", "callback_at": "2999-01-01T00:00:00Z"}),
                "callback_at",
            ),
            (json!("SALE"), "body"),
        ] {
            let (st, b) = s.dispose(&ann.token, &call1.call_id, body.clone()).await;
            assert_eq!(
                (st, field_of(&b).as_str()),
                (400, field),
                "{engine} {body}: {b}"
            );
        }
        // Ann sets it: stored, the lead ends, her wrap-up ends.
        let (st, d) = s
            .dispose(
                &ann.token,
                &call1.call_id,
                json!({"code": "SALE", "note": "two years, premium plan"}),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {d}");
        assert_eq!(d["code"], "SALE");
        assert_eq!(d["agent_id"], ann.id.as_str());
        assert_eq!(d["set_by"], ann.id.as_str());
        assert_eq!(d["lead_id"], lead1.as_str());
        assert_eq!(d["wrap_up"], "ended", "{engine}");
        assert_eq!(s.agent_state(&ann.id).await, "available", "{engine}");
        let row = sqlx::query(
            "SELECT a.disposition, l.disposition, l.state FROM attempts a JOIN leads l ON l.id = a.lead_id WHERE a.call_id = ?",
        )
        .bind(&call1.call_id)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
        let stored: (Option<String>, Option<String>, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            stored,
            (Some("SALE".into()), Some("SALE".into()), "done".into()),
            "{engine}"
        );
        // Once per call: a second one is a 409 carrying the first.
        for token in [&ann.token, &s.admin] {
            let (st, b) = s
                .dispose(token, &call1.call_id, json!({"code": "DNC"}))
                .await;
            assert_eq!(st, 409, "{engine}: {b}");
            assert_eq!(b["disposition"]["code"], "SALE", "{engine}");
            assert_eq!(b["disposition"]["note"], "two years, premium plan");
        }
        // Published for storage-service and the rest.
        let ev = s
            .dispositions
            .wait_for("call.disposition of call 1", |e| {
                e.subject.as_deref() == Some(call1.call_id.as_str())
            })
            .await;
        let data: dialstack_contract::CallDisposition = serde_json::from_value(ev.data).unwrap();
        assert!(data.validate().is_ok());
        assert_eq!(
            (
                data.code.as_str(),
                data.agent_id.as_str(),
                data.attempt_id.as_str()
            ),
            ("SALE", ann.id.as_str(), call1.attempt_id.as_str())
        );
        assert_eq!(data.note.as_deref(), Some("two years, premium plan"));

        // Call 2: Ann's again, CALLBACK: the lead is due at that time, for her.
        let (lead2, call2) = s.preview_dial(&ann).await;
        s.bridged(&call2, &ann).await;
        s.hung_up(&call2, &ann).await;
        let at = (chrono::Utc::now() + chrono::Duration::hours(3))
            .with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).unwrap());
        let (st, d) = s
            .dispose(
                &ann.token,
                &call2.call_id,
                json!({"code": "CALLBACK", "callback_at": at.to_rfc3339()}),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {d}");
        assert_eq!(d["callback_at"], at.timestamp_millis(), "{engine}");
        let lead = s.lead(&lead2).await;
        assert_eq!(lead["state"], "pending", "{engine}: {lead}");
        assert_eq!(lead["callback_at"], at.timestamp_millis(), "{engine}");
        assert_eq!(lead["due_at"], at.timestamp_millis(), "{engine}");
        assert_eq!(lead["callback_agent_id"], ann.id.as_str(), "{engine}");
        let ev = s
            .dispositions
            .wait_for("call.disposition of call 2", |e| {
                e.subject.as_deref() == Some(call2.call_id.as_str())
            })
            .await;
        assert_eq!(ev.data["callback_at_ms"], at.timestamp_millis());

        // Call 3: Bob's, DNC: the number goes on the list and is never
        // offered again, in this campaign or another.
        let (_lead3, call3) = s.preview_dial(&bob).await;
        s.bridged(&call3, &bob).await;
        s.hung_up(&call3, &bob).await;
        let (st, d) = s
            .dispose(
                &bob.token,
                &call3.call_id,
                json!({"code": "DNC", "note": "asked"}),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {d}");
        assert_eq!(d["wrap_up"], "ended", "{engine}");
        let (st, dnc) = s
            .call(Method::GET, &format!("/v1/dnc/{}", call3.phone), None)
            .await;
        assert_eq!(st, 200, "{engine}: {dnc}");
        assert_eq!(dnc["listed"], true, "{engine}: {dnc}");
        let again = s
            .preview_campaign(std::slice::from_ref(&call3.phone), json!({}))
            .await;
        let (st, c) = s
            .call(
                Method::POST,
                &format!("/v1/campaigns/{campaign}/pause"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{c}");
        assert_eq!(
            s.next_lead(&bob).await.0,
            204,
            "{engine}: a DNC number offered"
        );
        let (st, page) = s
            .call(Method::GET, &format!("/v1/campaigns/{again}/leads"), None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(page["items"][0]["state"], "dnc", "{engine}: {page}");
        assert_eq!(page["items"][0]["attempt_count"], 0, "{engine}");
        let (st, c) = s
            .call(
                Method::POST,
                &format!("/v1/campaigns/{campaign}/resume"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{c}");

        // Call 4: Bob's; his team's supervisor sets it for him.
        let (_, call4) = s.preview_dial(&bob).await;
        s.bridged(&call4, &bob).await;
        s.hung_up(&call4, &bob).await;
        let (st, d) = s
            .dispose(&sue, &call4.call_id, json!({"code": "VOICEMAIL"}))
            .await;
        assert_eq!(st, 201, "{engine}: {d}");
        assert_eq!(d["agent_id"], bob.id.as_str(), "{engine}");
        assert_ne!(d["set_by"], bob.id.as_str(), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_service_failure_does_not_undo_the_disposition() {
    // A port nobody listens on: user-service is down.
    let down = format!("http://127.0.0.1:{}", dialstack_tests::free_tcp_port());
    let s = Stack::start(&fresh_sqlite_url(), Some(&down)).await;
    let ann = s.agent("ann", "east").await;
    s.preview_campaign(&phones(200, 1), json!({})).await;
    let (lead, call) = s.preview_dial(&ann).await;
    s.bridged(&call, &ann).await;
    s.hung_up(&call, &ann).await;
    let (st, d) = s
        .dispose(&ann.token, &call.call_id, json!({"code": "NO_INTEREST"}))
        .await;
    assert_eq!(st, 201, "{d}");
    assert_eq!(d["wrap_up"], "failed");
    assert_eq!(s.lead(&lead).await["state"], "done");
    assert_eq!(s.agent_state(&ann.id).await, "wrap_up");
    let (st, b) = s
        .dispose(&ann.token, &call.call_id, json!({"code": "SALE"}))
        .await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(b["disposition"]["code"], "NO_INTEREST");
}

#[test]
fn the_user_service_url_is_checked_at_start() {
    let config = |url: Option<&str>| {
        let mut vars = vec![
            ("DIALSTACK_DATABASE_URL", "sqlite://unused.db"),
            ("DIALSTACK_EVENTS_URL", "memory://"),
            ("DIALSTACK_COMMANDS_URL", "memory://"),
            ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks"),
        ];
        if let Some(u) = url {
            vars.push(("DIALSTACK_USER_SERVICE_URL", u));
        }
        task_scheduler::Config::from_env(&dialstack_common::config::Env::from_pairs(vars))
    };
    let e = config(Some("ftp://users")).unwrap_err();
    assert!(e.to_string().contains("DIALSTACK_USER_SERVICE_URL"), "{e}");
    let c = config(Some("http://users:8081/")).unwrap();
    assert_eq!(c.user_service_url.as_deref(), Some("http://users:8081"));
    assert_eq!(config(None).unwrap().user_service_url, None);
}
