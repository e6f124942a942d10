//! task-scheduler as a campaign manager uses it, over HTTP, against a real
//! database of each engine (SQLite and MariaDB) and a real RabbitMQ for
//! call events: the campaign lifecycle, CSV imports with per-row errors,
//! DNC at dial time, calling hours across time zones, retries and
//! callbacks, weighted shares, idempotency keys and the destination guard.
//! No media processor runs: the test plays its part by answering the
//! attempts the scheduler queues with `call.completed` events on the bus.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use dialstack_common::bus::{Channel, OutMessage, EVENTS};
use dialstack_common::db::Db;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, Outcome};
use dialstack_tests::users::Users;
use dialstack_tests::{
    amqp_url, both_databases, eventually, fresh_mysql_url, fresh_sqlite_url, in_process, typed,
    unique, CallEventData, InProcess,
};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Row;

fn all_day() -> Value {
    json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"})
}

/// user-service (for tokens) and one scheduler on a fresh database.
struct Stack {
    users: Users,
    sched: InProcess,
    admin: String,
    db_url: String,
    events: String,
    db: Db,
}

fn fresh_db(engine_url: &str) -> String {
    if engine_url.starts_with("sqlite:") {
        fresh_sqlite_url()
    } else {
        fresh_mysql_url()
    }
}

async fn users(events: &str) -> Users {
    Users::start(&fresh_sqlite_url(), events).await
}

async fn scheduler(users: &Users, db_url: &str, events: &str, extra: &[(&str, &str)]) -> InProcess {
    let jwks = format!("{}/.well-known/jwks.json", users.url);
    let commands = format!("memory://{}", unique("cmd"));
    let mut vars: Vec<(&str, &str)> = vec![
        ("DIALSTACK_DATABASE_URL", db_url),
        ("DIALSTACK_EVENTS_URL", events),
        ("DIALSTACK_COMMANDS_URL", &commands),
        ("DIALSTACK_JWKS_URL", &jwks),
        ("DIALSTACK_LEADER_LEASE_MS", "1000"),
    ];
    vars.extend_from_slice(extra);
    in_process::<task_scheduler::Application>(&vars).await
}

impl Stack {
    async fn start(engine_url: &str, extra: &[(&str, &str)]) -> Self {
        let events = amqp_url(&unique("sched"));
        let users = users(&events).await;
        let db_url = fresh_db(engine_url);
        let sched = scheduler(&users, &db_url, &events, extra).await;
        let admin = users.admin().await;
        let db = Db::connect(&db_url).await.unwrap();
        Self {
            users,
            sched,
            admin,
            db_url,
            events,
            db,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.sched, method, path, &self.admin, body, &[]).await
    }

    async fn campaign(&self, extra: Value) -> String {
        let mut body = json!({
            "name": "sched", "caller_id": "+14155550000", "max_concurrent": 1000, "max_cps": 100.0,
            "calling_hours": all_day(),
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, c) = self.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_eq!(s, 201, "{c}");
        c["id"].as_str().unwrap().to_owned()
    }

    async fn csv(&self, campaign: &str, body: &str) -> (u16, Value) {
        let r = self
            .sched
            .http
            .post(format!("{}/v1/campaigns/{campaign}/leads", self.sched.url))
            .bearer_auth(&self.admin)
            .header("content-type", "text/csv")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// Open attempts: (attempt id, lead id, call id, phone).
    async fn queued(&self, campaign: &str) -> Vec<(String, String, String, String)> {
        sqlx::query("SELECT id, lead_id, call_id, phone FROM attempts WHERE campaign_id = ? AND state = 'queued' ORDER BY created_at, id")
            .bind(campaign)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Plays the media processor: ends each attempt with `outcome`.
    async fn complete(
        &self,
        campaign: &str,
        attempts: &[(String, String, String, String)],
        outcome: Outcome,
    ) {
        let ch = Channel::connect(&self.events, EVENTS).await.unwrap();
        for (attempt, _, call, phone) in attempts {
            let ev = typed(
                types::CALL_COMPLETED,
                &CallEventData {
                    call_id: call.clone(),
                    attempt_id: attempt.clone(),
                    campaign_id: campaign.to_owned(),
                    phone: phone.clone(),
                    at_ms: dialstack_common::now_ms(),
                    outcome: Some(outcome),
                    ..Default::default()
                },
            );
            let dialstack_contract::CallEvent::Completed(done) = ev else {
                unreachable!("typed() made a call.completed")
            };
            let ce = CloudEvent::new("test", types::CALL_COMPLETED, call, &done);
            ch.publish(&OutMessage {
                id: ce.id.clone(),
                routing_key: ce.ty.clone(),
                key: call.clone(),
                payload: Bytes::from(serde_json::to_vec(&ce).unwrap()),
            })
            .await
            .unwrap();
        }
    }
}

async fn call(
    svc: &InProcess,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = svc
        .http
        .request(method, format!("{}{path}", svc.url))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_transition_and_every_refusal() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        let id = s.campaign(json!({"contacts": ["+14155550101"]})).await;
        let go = |action: &'static str| {
            let s = &s;
            let id = id.clone();
            async move {
                s.call(Method::POST, &format!("/v1/campaigns/{id}/{action}"), None)
                    .await
            }
        };
        // Refused from draft: pause, resume. 409 names the state.
        for a in ["pause", "resume"] {
            let (st, b) = go(a).await;
            assert_eq!(st, 409, "{engine} {a}: {b}");
            assert!(b["message"].as_str().unwrap().contains("draft"), "{b}");
            assert!(b["request_id"].is_string() && b["code"] == "conflict");
        }
        let (st, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"max_cps": 0.5, "priority": 3})),
            )
            .await;
        assert_eq!(
            (st, b["max_cps"].as_f64(), b["priority"].as_i64()),
            (200, Some(0.5), Some(3)),
            "{engine}: {b}"
        );
        let (st, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"calling_hours": {"days": [], "start": "08:00", "end": "21:00"}})),
            )
            .await;
        assert_eq!(st, 400, "{engine}: {b}");
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains("calling_hours.days"),
            "{b}"
        );
        for (action, want) in [
            ("start", "running"),
            ("pause", "paused"),
            ("resume", "running"),
        ] {
            let (st, b) = go(action).await;
            assert_eq!(
                (st, b["state"].as_str()),
                (200, Some(want)),
                "{engine} {action}: {b}"
            );
        }
        for a in ["start", "resume"] {
            let (st, b) = go(a).await;
            assert_eq!(st, 409, "{engine}: {a} while running: {b}");
            assert!(b["message"].as_str().unwrap().contains("running"), "{b}");
        }
        let (st, b) = s
            .call(Method::DELETE, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(st, 409, "{engine}: no delete while running: {b}");
        let (st, b) = go("stop").await;
        assert_eq!(
            (st, b["state"].as_str()),
            (200, Some("stopped")),
            "{engine}: {b}"
        );
        for a in ["start", "pause", "resume", "stop"] {
            let (st, b) = go(a).await;
            assert_eq!(st, 409, "{engine}: {a} after stop: {b}");
            assert!(b["message"].as_str().unwrap().contains("stopped"), "{b}");
        }
        let (st, _) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"max_cps": 2})),
            )
            .await;
        assert_eq!(st, 409, "{engine}: a stopped campaign is not edited");
        // Listing by state, then delete.
        let (st, page) = s
            .call(Method::GET, "/v1/campaigns?state=stopped", None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            1,
            "{engine}: {page}"
        );
        let (st, _) = s.call(Method::GET, "/v1/campaigns?state=bogus", None).await;
        assert_eq!(st, 400);
        let (st, _) = s
            .call(Method::DELETE, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(st, 204, "{engine}");
        let (st, _) = s
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(st, 404, "{engine}");
        // Draft straight to stopped.
        let id2 = s.campaign(json!({})).await;
        let (st, b) = s
            .call(Method::POST, &format!("/v1/campaigns/{id2}/stop"), None)
            .await;
        assert_eq!(
            (st, b["state"].as_str()),
            (200, Some("stopped")),
            "{engine}: {b}"
        );
        // Concurrent starts: exactly one wins.
        let id3 = s.campaign(json!({"contacts": ["+14155550102"]})).await;
        let path = format!("/v1/campaigns/{id3}/start");
        let starts = (0..6).map(|_| s.call(Method::POST, &path, None));
        let results = futures_util::future::join_all(starts).await;
        let won = results.iter().filter(|(st, _)| *st == 200).count();
        assert_eq!(won, 1, "{engine}: {results:?}");
        assert!(results.iter().all(|(st, _)| *st == 200 || *st == 409));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_reports_every_bad_row_and_keeps_the_good_ones() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[("DIALSTACK_ALLOWED_PREFIXES", "+1,+44")]).await;
        let id = s.campaign(json!({"default_region": "US"})).await;
        let (st, _) = s
            .call(
                Method::POST,
                "/v1/dnc",
                Some(json!({"numbers": ["+12125550199"]})),
            )
            .await;
        assert_eq!(st, 201);
        let csv = "phone,timezone,priority,first_name,last_name,plan\n\
                   +12125550100,America/New_York,5,Ann,Lee,gold\n\
                   (212) 555-0101,,,Bob,,\n\
                   not a number,,,,,\n\
                   +12125550102,Mars/Base,,,,\n\
                   +12125550103,,12,,,\n\
                   +12125550199,,,,,\n\
                   +33612345678,,,,,\n\
                   +12125550100,,,,,\n\
                   \n\
                   +19005550100,,,,,\n";
        let (st, r) = s.csv(&id, csv).await;
        assert_eq!(st, 200, "{engine}: {r}");
        assert_eq!(r["rows"], 9, "{engine}: {r}");
        assert_eq!(r["accepted"], 2, "{engine}: {r}");
        assert_eq!(r["duplicates"], 1, "{engine}: {r}");
        assert_eq!(r["rejected"], 6, "{engine}: {r}");
        let errors: Vec<(i64, String, String)> = r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["row"].as_i64().unwrap(),
                    e["column"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let rows: Vec<(i64, &str)> = errors.iter().map(|(r, c, _)| (*r, c.as_str())).collect();
        assert_eq!(
            rows,
            vec![
                (4, "phone"),
                (5, "timezone"),
                (6, "priority"),
                (7, "phone"),
                (8, "phone"),
                (10, "phone")
            ],
            "{engine}: {errors:?}"
        );
        assert!(errors[0].2.contains("bad number"), "{errors:?}");
        assert!(errors[1].2.contains("bad time zone"), "{errors:?}");
        assert!(errors[2].2.contains("bad priority"), "{errors:?}");
        assert!(errors[3].2.contains("DNC"), "{errors:?}");
        assert!(errors[4].2.contains("not allowed"), "{errors:?}");
        assert!(errors[5].2.contains("not allowed"), "premium: {errors:?}");
        // The good rows are leads in E.164 with their schedule.
        let (_, page) = s
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/leads?state=pending"),
                None,
            )
            .await;
        let mut phones: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["phone"].as_str().unwrap())
            .collect();
        phones.sort();
        assert_eq!(
            phones,
            vec!["+12125550100", "+12125550101"],
            "{engine}: {page}"
        );
        let ann = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["phone"] == "+12125550100")
            .unwrap();
        assert_eq!(
            (ann["priority"].as_i64(), ann["first_name"].as_str()),
            (Some(5), Some("Ann")),
            "{ann}"
        );
        // The profile went out as customer.upserted.
        assert_eq!(
            s.count("SELECT COUNT(*) FROM outbox WHERE routing_key = 'customer.upserted'")
                .await,
            2,
            "{engine}"
        );
        // A header without phone is refused whole; nothing is added.
        let (st, b) = s.csv(&id, "name,number\nx,+12125550150\n").await;
        assert_eq!(
            (st, b["code"].as_str()),
            (400, Some("invalid_request")),
            "{engine}: {b}"
        );
        // Malformed bytes: an invalid UTF-8 row is one error, not a failure.
        let r = s
            .sched
            .http
            .post(format!("{}/v1/campaigns/{id}/leads", s.sched.url))
            .bearer_auth(&s.admin)
            .header("content-type", "text/csv")
            .body(b"phone\n\xff\xfe\n+12125550160\n".to_vec())
            .send()
            .await
            .unwrap();
        let b: Value = r.json().await.unwrap();
        assert_eq!(
            (b["accepted"].as_i64(), b["rejected"].as_i64()),
            (Some(1), Some(1)),
            "{engine}: {b}"
        );
        // Wrong content type.
        let r = s
            .sched
            .http
            .post(format!("{}/v1/campaigns/{id}/leads", s.sched.url))
            .bearer_auth(&s.admin)
            .header("content-type", "text/plain")
            .body("phone\n+12125550161\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // JSON import goes through the same rules.
        let (st, b) = s
            .call(
                Method::POST,
                &format!("/v1/campaigns/{id}/leads"),
                Some(json!([{"phone": "+12125550170", "priority": 9}, {"phone": "+12125550171", "timezone": "Nowhere/Zone"}])),
            )
            .await;
        assert_eq!(
            (st, b["accepted"].as_i64(), b["rejected"].as_i64()),
            (200, Some(1), Some(1)),
            "{engine}: {b}"
        );
        assert_eq!(b["errors"][0]["row"], 1, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnc_added_after_import_is_never_dialed_and_retries_and_callbacks_fire() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        let id = s
            .campaign(json!({
                "retry_policy": {"busy": {"max_retries": 1, "delay_secs": 1}},
                "contacts": ["+14155550101", "+14155550102", "+14155550103"],
            }))
            .await;
        // Put one on the list after import, before the start.
        let (st, _) = s
            .call(
                Method::POST,
                "/v1/dnc",
                Some(json!({"numbers": ["+14155550103"], "scope": id})),
            )
            .await;
        assert_eq!(st, 201);
        let (st, b) = s.call(Method::GET, "/v1/dnc/+14155550103", None).await;
        assert_eq!((st, b["listed"].as_bool()), (200, Some(true)), "{b}");
        let (st, _) = s
            .call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
            .await;
        assert_eq!(st, 200);
        let first = eventually("two dials", Duration::from_secs(20), || async {
            let q = s.queued(&id).await;
            if q.len() == 2 {
                Ok(q)
            } else {
                Err(format!("{q:?}"))
            }
        })
        .await;
        assert!(
            first.iter().all(|(_, _, _, p)| p != "+14155550103"),
            "{engine}: DNC number dialed"
        );
        let dnc_lead = s
            .count(&format!(
                "SELECT COUNT(*) FROM leads WHERE campaign_id = '{id}' AND state = 'dnc'"
            ))
            .await;
        assert_eq!(dnc_lead, 1, "{engine}");
        // Busy: retried once, a second later.
        s.complete(&id, &first, Outcome::Busy).await;
        eventually("the busy outcomes applied", Duration::from_secs(20), || async {
            let n = s.count(&format!("SELECT COUNT(*) FROM attempts WHERE campaign_id = '{id}' AND outcome = 'busy'")).await;
            if n == 2 { Ok(()) } else { Err(format!("{n} busy")) }
        })
        .await;
        let second = eventually("retries after 1 s", Duration::from_secs(20), || async {
            let q = s.queued(&id).await;
            if q.len() == 2 {
                Ok(q)
            } else {
                Err(format!("{q:?}"))
            }
        })
        .await;
        let leads_first: Vec<&String> = first.iter().map(|a| &a.1).collect();
        assert!(
            second.iter().all(|a| leads_first.contains(&&a.1)),
            "{engine}: the same leads again"
        );
        // Busy again: no retry left; one lead gets a callback instead. Paused
        // first: with every lead done and nothing in flight the dispatcher
        // completes a running campaign within a second, and a completed
        // campaign takes no callback (409, checked at the end), a race the
        // booking below would lose under load. Paused, the dispatcher also
        // cannot dial the lead before the booking's answer is read.
        let (st, b) = s
            .call(Method::POST, &format!("/v1/campaigns/{id}/pause"), None)
            .await;
        assert_eq!(
            (st, b["state"].as_str()),
            (200, Some("paused")),
            "{engine}: {b}"
        );
        s.complete(&id, &second, Outcome::Busy).await;
        eventually(
            "the second busy outcomes applied",
            Duration::from_secs(20),
            || async {
                let n = s
                    .count(&format!(
                    "SELECT COUNT(*) FROM attempts WHERE campaign_id = '{id}' AND outcome = 'busy'"
                ))
                    .await;
                if n == 4 {
                    Ok(())
                } else {
                    Err(format!("{n} busy"))
                }
            },
        )
        .await;
        let lead = second[0].1.clone();
        eventually("leads done", Duration::from_secs(20), || async {
            let n = s
                .count(&format!(
                    "SELECT COUNT(*) FROM leads WHERE id = '{lead}' AND state = 'done'"
                ))
                .await;
            if n == 1 {
                Ok(())
            } else {
                Err("not done".into())
            }
        })
        .await;
        let at = dialstack_common::now_ms() + 1_500;
        let (st, b) = s
            .call(
                Method::POST,
                &format!("/v1/leads/{lead}/callback"),
                Some(json!({"at": at, "agent_id": "ann"})),
            )
            .await;
        let answered = dialstack_common::now_ms();
        assert_eq!(
            (st, b["state"].as_str()),
            (200, Some("pending")),
            "{engine}: {b}"
        );
        // Booked at `at`; a time already past when the scheduler reads the
        // request (a request slower than 1.5 s) becomes its now.
        let booked = b["callback_at"].as_i64();
        if answered < at {
            assert_eq!(booked, Some(at), "{engine}: {b}");
        } else {
            assert!(
                booked.is_some_and(|t| (at..=answered).contains(&t)),
                "{engine}: booked at {at}, answered at {answered}: {b}"
            );
        }
        let booked = booked.unwrap_or(at);
        let (st, b) = s
            .call(Method::POST, &format!("/v1/campaigns/{id}/resume"), None)
            .await;
        assert_eq!(
            (st, b["state"].as_str()),
            (200, Some("running")),
            "{engine}: {b}"
        );
        let third = eventually("the callback fires", Duration::from_secs(20), || async {
            let q = s.queued(&id).await;
            if q.len() == 1 {
                Ok(q)
            } else {
                Err(format!("{q:?}"))
            }
        })
        .await;
        assert_eq!(third[0].1, lead, "{engine}");
        assert!(
            dialstack_common::now_ms() >= booked,
            "{engine}: not before its time"
        );
        let (_, detail) = s
            .call(Method::GET, &format!("/v1/leads/{lead}"), None)
            .await;
        assert_eq!(
            detail["attempts"].as_array().unwrap().len(),
            3,
            "{engine}: {detail}"
        );
        s.complete(&id, &third, Outcome::AnsweredHuman).await;
        let view = eventually("campaign completed", Duration::from_secs(20), || async {
            let (_, v) = s
                .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
                .await;
            if v["state"] == "completed" {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        })
        .await;
        assert_eq!(view["progress"]["outcomes"]["busy"], 4, "{engine}: {view}");
        assert_eq!(view["progress"]["leads"]["dnc"], 1, "{engine}: {view}");
        // A callback on a finished campaign is refused; a callback can be canceled.
        let (st, _) = s
            .call(
                Method::POST,
                &format!("/v1/leads/{lead}/callback"),
                Some(json!({"at": dialstack_common::now_ms() + 60_000})),
            )
            .await;
        assert_eq!(st, 409, "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_hours_follow_the_callees_zone() {
    // A window that is open now in New York and closed now in Honolulu
    // (5 or 6 hours behind), whatever time the test runs.
    use chrono::{Timelike, Utc};
    use chrono_tz::Tz;
    // Too close to the end of the hour, the window may shut mid-test.
    if Utc::now().minute() >= 58 {
        tokio::time::sleep(Duration::from_secs(125)).await;
    }
    let now = Utc::now();
    let ny: Tz = "America/New_York".parse().unwrap();
    let hour = now.with_timezone(&ny).hour();
    let (start, end) = (format!("{hour:02}:00"), format!("{:02}:00", hour + 1));
    let hours = json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": start, "end": end});
    let s = Stack::start(&both_databases()[1].1, &[]).await;
    let id = s.campaign(json!({"calling_hours": hours})).await;
    let (st, r) = s
        .csv(&id, "phone,timezone\n+12125550100,America/New_York\n+18085550100,\n+12125550101,Pacific/Honolulu\n")
        .await;
    assert_eq!((st, r["accepted"].as_i64()), (200, Some(3)), "{r}");
    s.call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
        .await;
    let q = eventually(
        "the New York lead dialed",
        Duration::from_secs(20),
        || async {
            let q = s.queued(&id).await;
            if q.is_empty() {
                let (_, page) = s
                    .call(Method::GET, &format!("/v1/campaigns/{id}/leads"), None)
                    .await;
                Err(format!("none: {page}"))
            } else {
                Ok(q)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q2 = s.queued(&id).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q2.len(), 1, "only New York is inside the window: {q2:?}");
    assert_eq!(q2[0].3, "+12125550100");
    // The others wait for their window, which opens hours later.
    let (_, page) = s
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/leads?state=pending"),
            None,
        )
        .await;
    for l in page["items"].as_array().unwrap() {
        assert!(
            l["due_at"].as_i64().unwrap() > dialstack_common::now_ms() + 3_600_000,
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_creating_post_is_idempotent() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        let post = |path: String, body: Value, key: &'static str| {
            let s = &s;
            async move {
                call(
                    &s.sched,
                    Method::POST,
                    &path,
                    &s.admin,
                    Some(body),
                    &[("idempotency-key", key)],
                )
                .await
            }
        };
        let body = json!({"name": "idem", "caller_id": "+14155550000", "max_concurrent": 1, "max_cps": 1.0,
                          "calling_hours": all_day(), "contacts": ["+14155550101"]});
        // Retried three times, two of them at once.
        let (a, b, c) = tokio::join!(
            post("/v1/campaigns".into(), body.clone(), "create-1"),
            post("/v1/campaigns".into(), body.clone(), "create-1"),
            post("/v1/campaigns".into(), body.clone(), "create-1"),
        );
        let d = post("/v1/campaigns".into(), body.clone(), "create-1").await;
        assert_eq!(d.0, 201, "{engine}: {d:?}");
        for r in [&a, &b, &c] {
            assert!(r.0 == 201 || r.0 == 409, "{engine}: {r:?}");
            if r.0 == 201 {
                assert_eq!(r.1["id"], d.1["id"], "{engine}: the first response");
            }
        }
        assert_eq!(
            s.count("SELECT COUNT(*) FROM campaigns").await,
            1,
            "{engine}: one campaign"
        );
        // Same key, another body: refused.
        let mut other = body.clone();
        other["name"] = json!("other");
        let (st, _) = post("/v1/campaigns".into(), other, "create-1").await;
        assert_eq!(st, 400, "{engine}");
        let id = d.1["id"].as_str().unwrap().to_owned();
        // Leads (JSON and CSV), DNC, callbacks.
        for _ in 0..2 {
            let (st, r) = post(
                format!("/v1/campaigns/{id}/leads"),
                json!([{"phone": "+14155550102", "first_name": "Z"}]),
                "leads-1",
            )
            .await;
            assert_eq!(
                (st, r["accepted"].as_i64()),
                (200, Some(1)),
                "{engine}: the replay says what the first said: {r}"
            );
        }
        for _ in 0..2 {
            let r = s
                .sched
                .http
                .post(format!("{}/v1/campaigns/{id}/leads", s.sched.url))
                .bearer_auth(&s.admin)
                .header("content-type", "text/csv")
                .header("idempotency-key", "csv-1")
                .body("phone,first_name\n+14155550103,Y\n")
                .send()
                .await
                .unwrap();
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["accepted"], 1, "{engine}: {b}");
        }
        assert_eq!(
            s.count("SELECT COUNT(*) FROM outbox WHERE routing_key = 'customer.upserted'")
                .await,
            2,
            "{engine}: one profile event per import, not per retry"
        );
        for _ in 0..2 {
            let (st, r) = post(
                "/v1/dnc".into(),
                json!({"numbers": ["+14155550109"], "reason": "asked"}),
                "dnc-1",
            )
            .await;
            assert_eq!((st, r["added"].as_i64()), (201, Some(1)), "{engine}: {r}");
        }
        let lead: String = sqlx::query("SELECT id FROM leads WHERE phone = '+14155550101'")
            .fetch_one(&s.db.pool)
            .await
            .unwrap()
            .get(0);
        let at = dialstack_common::now_ms() + 3_600_000;
        for _ in 0..2 {
            let (st, r) = post(
                format!("/v1/leads/{lead}/callback"),
                json!({"at": at}),
                "cb-1",
            )
            .await;
            assert_eq!(
                (st, r["callback_at"].as_i64()),
                (200, Some(at)),
                "{engine}: {r}"
            );
        }
        let (st, _) = call(
            &s.sched,
            Method::POST,
            "/v1/campaigns",
            &s.admin,
            Some(body.clone()),
            &[("idempotency-key", "bad key")],
        )
        .await;
        assert_eq!(st, 400, "{engine}: a malformed key");
        assert_eq!(s.count("SELECT COUNT(*) FROM leads").await, 3, "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_share_the_deployment_rate_by_weight() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[("DIALSTACK_MAX_CPS", "40")]).await;
        let contacts = |base: u32| -> Vec<String> {
            (0..2000).map(|i| format!("+1415{:07}", base + i)).collect()
        };
        let heavy = s
            .campaign(json!({"priority": 3, "contacts": contacts(2_000_000)}))
            .await;
        let light = s
            .campaign(json!({"priority": 1, "contacts": contacts(3_000_000)}))
            .await;
        for id in [&heavy, &light] {
            let (st, _) = s
                .call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
                .await;
            assert_eq!(st, 200);
        }
        // Measured once both run (the dispatcher picks up a newly started
        // campaign within half a second).
        let sql = |id: &str| format!("SELECT COUNT(*) FROM attempts WHERE campaign_id = '{id}'");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (h0, l0) = (s.count(&sql(&heavy)).await, s.count(&sql(&light)).await);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (h1, l1) = (s.count(&sql(&heavy)).await, s.count(&sql(&light)).await);
        let (h, l) = ((h1 - h0) as f64, (l1 - l0) as f64);
        let ratio = h / l;
        assert!(
            (ratio - 3.0).abs() <= 0.15,
            "{engine}: {h} : {l} = {ratio:.3}"
        );
        assert!(
            h + l <= 40.0 * 8.5,
            "{engine}: the deployment cap holds: {}",
            h + l
        );
        assert!(h + l >= 40.0 * 7.0, "{engine}: and is used: {}", h + l);
        for id in [&heavy, &light] {
            s.call(Method::POST, &format!("/v1/campaigns/{id}/stop"), None)
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_guard_refuses_at_import_and_again_at_dial_time() {
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &[]).await;
        let (st, b) = s
            .call(Method::POST, "/v1/campaigns", Some(json!({"name": "x", "caller_id": "+14155550000", "max_concurrent": 1, "max_cps": 1, "contacts": ["+19005550100"]})))
            .await;
        assert_eq!(st, 400, "{engine}: premium number at create: {b}");
        let id = s.campaign(json!({})).await;
        let (st, r) = s
            .csv(
                &id,
                "phone,timezone\n+447700900123,Europe/London\n+14155550101,\n",
            )
            .await;
        assert_eq!(
            (st, r["accepted"].as_i64()),
            (200, Some(2)),
            "{engine}: {r}"
        );
        // The deployment narrows its allowed prefixes; the +44 lead is
        // refused when it comes up, not dialed.
        let Stack {
            users,
            sched,
            db_url,
            events,
            ..
        } = s;
        drop(sched);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sched = scheduler(
            &users,
            &db_url,
            &events,
            &[("DIALSTACK_ALLOWED_PREFIXES", "+1")],
        )
        .await;
        let admin = users.admin().await;
        let (st, _) = call(
            &sched,
            Method::POST,
            &format!("/v1/campaigns/{id}/start"),
            &admin,
            None,
            &[],
        )
        .await;
        assert_eq!(st, 200);
        let db = Db::connect(&db_url).await.unwrap();
        eventually(
            "the +44 lead blocked, the +1 lead dialed",
            Duration::from_secs(20),
            || async {
                let rows: HashMap<String, String> = sqlx::query("SELECT phone, state FROM leads")
                    .fetch_all(&db.pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                if rows.get("+447700900123").map(String::as_str) == Some("blocked")
                    && rows.get("+14155550101").map(String::as_str) == Some("dialing")
                {
                    Ok(())
                } else {
                    Err(format!("{rows:?}"))
                }
            },
        )
        .await;
        let dialed: i64 = sqlx::query("SELECT COUNT(*) FROM attempts WHERE phone LIKE '+44%'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(dialed, 0, "{engine}");
    }
}

/// Creates a user in user-service and logs in; returns (id, token).
async fn user(s: &Stack, name: &str, role: &str, teams: &[&str]) -> (String, String) {
    let (id, password) = s.users.user(&s.admin, name, role, teams).await;
    (id, s.users.token(name, &password).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_and_strangers_get_clear_refusals() {
    let s = Stack::start(&both_databases()[0].1, &[]).await;
    let sales = s
        .campaign(json!({"team": "sales", "contacts": ["+14155550101"]}))
        .await;
    let support = s
        .campaign(json!({"team": "support", "contacts": ["+14155550102"]}))
        .await;
    let lead_of = |id: String| {
        let s = &s;
        async move {
            let (_, page) = s
                .call(Method::GET, &format!("/v1/campaigns/{id}/leads"), None)
                .await;
            page["items"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    let sales_lead = lead_of(sales.clone()).await;
    let support_lead = lead_of(support.clone()).await;
    // Malformed bodies and parameters: 4xx naming the field, nothing stored.
    for (method, path, body, field) in [
        (
            Method::POST,
            "/v1/dnc".to_owned(),
            json!({"numbers": ["+1415555010x"]}),
            "numbers[0]",
        ),
        (
            Method::POST,
            "/v1/dnc".to_owned(),
            json!({"numbers": []}),
            "numbers",
        ),
        (
            Method::POST,
            "/v1/dnc".to_owned(),
            json!({"numbers": ["+14155550101"], "expires_at": 1}),
            "expires_at",
        ),
        (
            Method::POST,
            format!("/v1/leads/{sales_lead}/callback"),
            json!({"at": "tomorrow"}),
            "at",
        ),
        (
            Method::POST,
            format!("/v1/leads/{sales_lead}/callback"),
            json!({"at": 1}),
            "at",
        ),
        (
            Method::PATCH,
            format!("/v1/campaigns/{sales}"),
            json!({"retry_policy": {"busy": {"max_retries": 1, "delay_secs": 0}}}),
            "retry_policy.busy.delay_secs",
        ),
        (
            Method::PATCH,
            format!("/v1/campaigns/{sales}"),
            json!({"name": ""}),
            "name",
        ),
    ] {
        let (st, b) = s.call(method, &path, Some(body)).await;
        assert_eq!(st, 400, "{path}: {b}");
        assert!(
            b["message"].as_str().unwrap().contains(field),
            "{path}: {b}"
        );
        assert!(b["request_id"].is_string(), "{b}");
    }
    let (st, b) = s
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{sales}"),
            Some(json!({"state": "running"})),
        )
        .await;
    assert_eq!(
        (st, b["code"].as_str()),
        (400, Some("invalid_json")),
        "unknown fields are refused: {b}"
    );
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/v1/campaigns/{sales}/leads"),
            Some(json!({"phone": "+14155550103"})),
        )
        .await;
    assert_eq!(st, 400, "a JSON import is an array");
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"phone": format!("+1415{:07}", 4_000_000 + i)}))
        .collect();
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/v1/campaigns/{sales}/leads"),
            Some(Value::Array(many)),
        )
        .await;
    assert_eq!(st, 400, "JSON imports are bounded");
    let (st, _) = s.call(Method::GET, "/v1/leads?state=nope", None).await;
    assert_eq!(st, 400);
    let (st, _) = s.call(Method::GET, "/v1/dnc/not-a-number", None).await;
    assert_eq!(st, 400);
    // A record longer than 1 MiB ends the import; the rows before it stay.
    let mut csv = String::from("phone,note\n+14155550104,ok\n+14155550105,");
    csv.push_str(&"x".repeat(2 << 20));
    csv.push_str("\n+14155550106,after\n");
    let (st, r) = s.csv(&sales, &csv).await;
    assert_eq!(
        (st, r["accepted"].as_i64()),
        (200, Some(1)),
        "{}",
        r.to_string().chars().take(400).collect::<String>()
    );
    assert!(
        r["stopped"].as_str().unwrap().contains("longer than"),
        "{r}"
    );
    // A supervisor of sales: the support campaign and its lead do not exist
    // for them; a DNC scoped to it is refused.
    let (_, sam) = user(&s, "sam.sales", "supervisor", &["sales"]).await;
    let as_sam = |method: Method, path: String, body: Option<Value>| {
        let s = &s;
        let sam = sam.clone();
        async move { call(&s.sched, method, &path, &sam, body, &[]).await }
    };
    assert_eq!(
        as_sam(Method::GET, format!("/v1/campaigns/{support}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        as_sam(Method::GET, format!("/v1/campaigns/{sales}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        as_sam(
            Method::POST,
            format!("/v1/campaigns/{support}/leads"),
            Some(json!([{"phone": "+14155550107"}]))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        as_sam(Method::POST, format!("/v1/campaigns/{support}/stop"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        as_sam(
            Method::POST,
            format!("/v1/leads/{support_lead}/callback"),
            Some(json!({"at": dialstack_common::now_ms() + 60_000}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        as_sam(
            Method::POST,
            "/v1/dnc".into(),
            Some(json!({"numbers": ["+14155550108"], "scope": support}))
        )
        .await
        .0,
        400
    );
    let (st, page) = as_sam(Method::GET, "/v1/campaigns".into(), None).await;
    assert_eq!(st, 200);
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        1,
        "only their team's: {page}"
    );
    // An agent books callbacks only for itself, and only on leads it may see.
    let (_, ann) = user(&s, "ann.agent", "agent", &[]).await;
    let (st, _) = call(
        &s.sched,
        Method::POST,
        &format!("/v1/leads/{sales_lead}/callback"),
        &ann,
        Some(json!({"at": dialstack_common::now_ms() + 60_000})),
        &[],
    )
    .await;
    assert_eq!(st, 404, "not the agent's lead");
    let (st, _) = call(
        &s.sched,
        Method::DELETE,
        "/v1/dnc/+14155550101",
        &ann,
        None,
        &[],
    )
    .await;
    assert_eq!(st, 403, "agents add to DNC but never remove");
    assert_eq!(
        s.count("SELECT COUNT(*) FROM dnc").await,
        0,
        "nothing was stored by refused requests"
    );
}
