//! storage-service in full (issue 13): customer profiles with optimistic
//! locking, the merge of `customer.upserted` (idempotent, in any order, and
//! end to end from a lead import over RabbitMQ), CDR filters with a keyset
//! cursor that holds under concurrent inserts, streamed export, retention
//! and erasure, and access by role. Each runs on SQLite and on MariaDB.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dialstack_common::auth::Role;
use dialstack_common::bus::{Channel, OutMessage, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CampaignUpdated, CustomerUpserted, Outcome, RecordingReady};
use dialstack_tests::issuer::TestIssuer;
use dialstack_tests::{
    amqp_url, both_databases, eventually, fresh_recordings_url, in_process, typed, unique,
    CallEventData, InProcess,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use storage_service::db::customers::{FieldValue, Upserted};
use storage_service::db::retention::CampaignRetention;
use storage_service::db::{Applied, Change, Repo, MIGRATIONS};

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

async fn repo(url: &str) -> Repo {
    let db = dialstack_common::db::Db::connect(url).await.unwrap();
    db.migrate(MIGRATIONS).await.unwrap();
    Repo { db }
}

async fn storage(db: &str, issuer: &TestIssuer, extra: &[(&str, &str)]) -> InProcess {
    let events = format!("memory://{}", unique("st"));
    let recordings = fresh_recordings_url();
    let mut vars: Vec<(&str, &str)> = vec![
        ("DIALSTACK_DATABASE_URL", db),
        ("DIALSTACK_EVENTS_URL", &events),
        ("DIALSTACK_COMMANDS_URL", "memory://unused"),
        ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
    ];
    if !extra.iter().any(|(k, _)| *k == "DIALSTACK_RECORDINGS_URL") {
        vars.push(("DIALSTACK_RECORDINGS_URL", &recordings));
    }
    vars.extend_from_slice(extra);
    in_process::<storage_service::Application>(&vars).await
}

/// Sends a request; returns the status, the `ETag` and the JSON body
/// (`Null` if none).
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts a 4xx error body that names `field`.
fn names(status: StatusCode, body: &Value, want: u16, field: &str, what: &str) {
    assert_eq!(status.as_u16(), want, "{what}: {body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains(field),
        "{what}: the error names {field}: {body}"
    );
    assert!(body["request_id"].is_string(), "{what}: {body}");
}

fn q(v: &str) -> String {
    v.replace('+', "%2B")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_profiles_are_created_changed_with_if_match_searched_and_deleted() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let sam = issuer.token("sam", Role::Supervisor, &["sales"]);
    let sue = issuer.token("sue", Role::Supervisor, &["support"]);
    let ann = issuer.token("ann", Role::Agent, &["sales"]);
    for (engine, url) in both_databases() {
        let st = storage(&url, &issuer, &[]).await;
        let base = format!("{}/v1/customers", st.url);
        let ada = json!({
            "name": "Ada Lovelace",
            "external_id": "crm-1",
            "phones": ["+14155550101", "+14155550102"],
            "fields": {"plan": {"string": "gold"}, "balance": {"number": 12.5},
                       "since": {"date": "2024-05-01"}, "vip": {"bool": true}},
            "tags": ["west", "vip"],
        });
        let (status, etag, c) = send(&http, Method::POST, &base, &sam, Some(ada), None).await;
        assert_eq!(status, 201, "{engine}: {c}");
        assert_eq!(etag.as_deref(), Some("\"1\""), "{engine}");
        assert_eq!(c["team"], "sales", "{engine}: a supervisor's one team");
        assert_eq!(
            c["phones"],
            json!(["+14155550101", "+14155550102"]),
            "{engine}"
        );
        assert_eq!(c["tags"], json!(["vip", "west"]), "{engine}");
        assert_eq!(
            c["fields"]["since"],
            json!({"date": "2024-05-01"}),
            "{engine}"
        );
        assert_eq!(c["consent"]["recording_allowed"], true, "{engine}");
        let id = c["id"].as_str().unwrap().to_owned();
        let one = format!("{base}/{id}");

        // Who sees it.
        assert_eq!(
            send(&http, Method::GET, &one, &sam, None, None).await.0,
            200
        );
        assert_eq!(
            send(&http, Method::GET, &one, &admin, None, None).await.0,
            200
        );
        for (who, token) in [("other team", &sue), ("agent without calls", &ann)] {
            let (status, _, b) = send(&http, Method::GET, &one, token, None, None).await;
            assert_eq!(status, 404, "{engine}: {who}: {b}");
        }
        let (status, _, _) = send(&http, Method::POST, &base, &ann, Some(json!({})), None).await;
        assert_eq!(status, 403, "{engine}: agents do not write profiles");

        // Optimistic locking.
        let change = json!({"name": "Ada King", "fields": {"plan": null, "tier": {"number": 2}}});
        let (status, _, b) =
            send(&http, Method::PATCH, &one, &sam, Some(change.clone()), None).await;
        assert_eq!(status, 428, "{engine}: {b}");
        assert_eq!(b["code"], "precondition_required", "{engine}");
        let (status, etag, c) = send(
            &http,
            Method::PATCH,
            &one,
            &sam,
            Some(change.clone()),
            Some("\"1\""),
        )
        .await;
        assert_eq!(status, 200, "{engine}: {c}");
        assert_eq!(etag.as_deref(), Some("\"2\""), "{engine}");
        assert_eq!(c["name"], "Ada King", "{engine}");
        assert!(c["fields"].get("plan").is_none(), "{engine}: null removes");
        assert_eq!(c["fields"]["tier"], json!({"number": 2.0}), "{engine}");
        let (status, _, b) = send(
            &http,
            Method::PATCH,
            &one,
            &sam,
            Some(change),
            Some("\"1\""),
        )
        .await;
        assert_eq!(status, 412, "{engine}: {b}");
        assert_eq!(b["code"], "precondition_failed", "{engine}");
        // Eight editors holding version 2 race: exactly one wins.
        let racers = (0..8).map(|i| {
            let http = http.clone();
            let one = one.clone();
            let sam = sam.clone();
            async move {
                send(
                    &http,
                    Method::PATCH,
                    &one,
                    &sam,
                    Some(json!({"name": format!("racer {i}")})),
                    Some("\"2\""),
                )
                .await
                .0
            }
        });
        let statuses = futures_util::future::join_all(racers).await;
        let won = statuses.iter().filter(|s| **s == 200).count();
        let lost = statuses.iter().filter(|s| **s == 412).count();
        assert_eq!((won, lost), (1, 7), "{engine}: {statuses:?}");
        let (_, etag, _) = send(&http, Method::GET, &one, &sam, None, None).await;
        assert_eq!(etag.as_deref(), Some("\"3\""), "{engine}");

        // Uniqueness per team.
        let (status, _, b) = send(
            &http,
            Method::POST,
            &base,
            &sam,
            Some(json!({"phones": ["+14155550102"]})),
            None,
        )
        .await;
        assert_eq!(status, 409, "{engine}: the number is Ada's in sales: {b}");
        let (status, _, b) = send(
            &http,
            Method::POST,
            &base,
            &sam,
            Some(json!({"phones": ["+14155550199"], "external_id": "crm-1"})),
            None,
        )
        .await;
        assert_eq!(status, 409, "{engine}: {b}");
        let (status, _, b) = send(
            &http,
            Method::POST,
            &base,
            &sue,
            Some(json!({"phones": ["+14155550102"], "external_id": "crm-1", "name": "Other Ada"})),
            None,
        )
        .await;
        assert_eq!(status, 201, "{engine}: another team has its own scope: {b}");

        // Bad bodies name their field.
        let p = json!(["+14155550150"]);
        for (body, want, field) in [
            (json!({"phones": []}), 400, "phones"),
            (json!({"phones": ["12345"]}), 400, "phones[0]"),
            (
                json!({"phones": ["+14155550150", "+14155550150"]}),
                400,
                "phones[1]",
            ),
            (
                json!({"phones": p, "fields": {"d": {"date": "2024-13-01"}}}),
                400,
                "fields.d",
            ),
            (
                json!({"phones": p, "fields": {"bad key": {"string": "x"}}}),
                400,
                "fields",
            ),
            (
                json!({"phones": p, "fields": {"x": {"string": "a".repeat(1001)}}}),
                400,
                "fields.x",
            ),
            (json!({"phones": p, "tags": ["has space"]}), 400, "tags[0]"),
            (json!({"phones": p, "team": "support"}), 400, "team"),
            (json!({"phones": p, "name": "bell\u{7}"}), 400, "name"),
            (json!({"phones": p, "external_id": ""}), 400, "external_id"),
            (json!({"phones": p, "nope": 1}), 400, "nope"),
            (
                json!({"phones": p, "fields": {"x": {"colour": "red"}}}),
                400,
                "colour",
            ),
        ] {
            let (status, _, b) =
                send(&http, Method::POST, &base, &sam, Some(body.clone()), None).await;
            names(status, &b, want, field, &format!("{engine}: {body}"));
        }
        let (status, _, b) = send(
            &http,
            Method::PATCH,
            &one,
            &sam,
            Some(json!({"name": "x"})),
            Some("three"),
        )
        .await;
        names(
            status,
            &b,
            400,
            "If-Match",
            &format!("{engine}: bad If-Match"),
        );

        // Search.
        for (name, phone, tag) in [
            ("Ada Byron", "+14155550103", "east"),
            ("Bob", "+14155550104", "vip"),
            ("adam smith", "+14155550105", "east"),
        ] {
            let (status, _, b) = send(
                &http,
                Method::POST,
                &base,
                &sam,
                Some(json!({"name": name, "phones": [phone], "tags": [tag]})),
                None,
            )
            .await;
            assert_eq!(status, 201, "{engine}: {b}");
        }
        let found = |query: String, token: String| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let (status, _, b) = send(
                    &http,
                    Method::GET,
                    &format!("{base}?{query}"),
                    &token,
                    None,
                    None,
                )
                .await;
                assert_eq!(status, 200, "{query}: {b}");
                let mut names: Vec<String> = b["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect();
                names.sort();
                names
            }
        };
        assert_eq!(
            found("name_prefix=ADA".into(), sam.clone()).await,
            ["Ada Byron", "adam smith"],
            "{engine}: prefix, any case"
        );
        assert_eq!(
            found(format!("phone={}", q("+14155550102")), sam.clone())
                .await
                .len(),
            1,
            "{engine}: sam sees only his team's holder of the number"
        );
        assert_eq!(
            found(format!("phone={}", q("+14155550102")), admin.clone())
                .await
                .len(),
            2,
            "{engine}: the admin sees both teams'"
        );
        assert_eq!(
            found("external_id=crm-1".into(), sue.clone()).await,
            ["Other Ada"]
        );
        assert_eq!(
            found("tag=east".into(), sam.clone()).await,
            ["Ada Byron", "adam smith"]
        );
        assert_eq!(
            found("tag=vip".into(), sam.clone()).await.len(),
            2,
            "{engine}"
        );
        assert!(
            found("tag=vip".into(), ann.clone()).await.is_empty(),
            "{engine}"
        );
        // Paging one by one reaches every customer of the team once.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        for _ in 0..20 {
            let (_, _, b) = send(
                &http,
                Method::GET,
                &format!("{base}?limit=1{cursor}"),
                &sam,
                None,
                None,
            )
            .await;
            seen.extend(
                b["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_str().unwrap().to_owned()),
            );
            match b["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 4, "{engine}: {seen:?}");
        for (query, field) in [
            ("phone=abc", "phone"),
            ("limit=0", "limit"),
            ("nope=1", "nope"),
            ("external_id=", "external_id"),
        ] {
            let (status, _, b) = send(
                &http,
                Method::GET,
                &format!("{base}?{query}"),
                &sam,
                None,
                None,
            )
            .await;
            names(status, &b, 400, field, &format!("{engine}: ?{query}"));
        }

        // Plain delete (a supervisor, in the team): the profile goes.
        let (status, _, b) = send(&http, Method::DELETE, &one, &sue, None, None).await;
        assert_eq!(status, 404, "{engine}: not sue's team: {b}");
        let (status, _, b) = send(
            &http,
            Method::DELETE,
            &format!("{one}?erase=true"),
            &sam,
            None,
            None,
        )
        .await;
        assert_eq!(status, 403, "{engine}: erasure is for admins: {b}");
        let (status, _, b) = send(&http, Method::DELETE, &one, &sam, None, None).await;
        assert_eq!(status, 200, "{engine}: {b}");
        assert_eq!(
            send(&http, Method::GET, &one, &admin, None, None).await.0,
            404
        );
        let audit = repo(&url).await.audit_of(&id).await.unwrap();
        assert_eq!(audit.len(), 1, "{engine}");
        assert_eq!(audit[0].action, "customer.delete", "{engine}");
        assert_eq!(audit[0].actor, "sam", "{engine}");
        drop(st);
    }
}

fn upserted<'a>(
    phone: &'a str,
    ext: Option<&'a str>,
    name: Option<&str>,
    fields: &[(&str, &str)],
    at_ms: i64,
) -> Upserted<'a> {
    Upserted {
        scope: "sales",
        phone,
        external_id: ext,
        name: name.map(str::to_owned),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), FieldValue::String((*v).to_owned())))
            .collect(),
        at_ms,
    }
}

/// What a merge leaves, without ids, times and versions.
async fn profiles(repo: &Repo) -> Vec<Value> {
    let all = repo
        .search_customers(&storage_service::db::customers::CustomerQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out: Vec<Value> = all
        .into_iter()
        .map(|c| {
            let mut phones = c.phones.clone();
            phones.sort();
            json!({"ext": c.external_id, "name": c.name, "phones": phones, "fields": c.fields, "team": c.team})
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_upserted_merges_the_same_whatever_the_order_and_once_per_event() {
    let events = [
        (
            "e1",
            upserted(
                "+14155550111",
                Some("X"),
                Some("Ann A"),
                &[("city", "Paris")],
                1_000,
            ),
        ),
        (
            "e2",
            upserted(
                "+14155550112",
                Some("X"),
                Some("Ann B"),
                &[("zip", "75")],
                2_000,
            ),
        ),
        (
            "e3",
            upserted(
                "+14155550111",
                None,
                None,
                &[("city", "Lyon"), ("pet", "cat")],
                500,
            ),
        ),
        ("e4", upserted("+14155550113", None, Some("Solo"), &[], 700)),
    ];
    let orders: [[usize; 4]; 5] = [
        [0, 1, 2, 3],
        [2, 1, 0, 3],
        [1, 2, 0, 3],
        [2, 0, 1, 3],
        [3, 2, 1, 0],
    ];
    for (engine, _) in both_databases() {
        let mut results = Vec::new();
        for order in orders {
            let url = match engine {
                "sqlite" => dialstack_tests::fresh_sqlite_url(),
                _ => dialstack_tests::fresh_mysql_url(),
            };
            let repo = repo(&url).await;
            // A call to the first number made before any profile existed.
            let early = CallEventData {
                call_id: "call-early".into(),
                attempt_id: "a1".into(),
                campaign_id: "k1".into(),
                phone: "+14155550111".into(),
                at_ms: 100,
                team: Some("sales".into()),
                ..Default::default()
            };
            repo.apply("c-early", &typed(types::CALL_DIALING, &early))
                .await
                .unwrap();
            for i in order {
                let (id, ev) = &events[i];
                let applied = repo
                    .apply_batch(&[Applied {
                        event_id: id,
                        change: Change::Customer(ev.clone()),
                    }])
                    .await
                    .unwrap();
                assert_eq!(applied, [true], "{engine} {order:?}");
            }
            // The same events again (redelivered): nothing changes.
            let before = profiles(&repo).await;
            let again: Vec<Applied<'_>> = events
                .iter()
                .map(|(id, ev)| Applied {
                    event_id: id,
                    change: Change::Customer(ev.clone()),
                })
                .collect();
            assert_eq!(
                repo.apply_batch(&again).await.unwrap(),
                [false; 4],
                "{engine}: once per event id"
            );
            assert_eq!(profiles(&repo).await, before, "{engine}");
            // The early call and a later one link to the number's customer.
            let late = CallEventData {
                call_id: "call-late".into(),
                phone: "+14155550112".into(),
                at_ms: 5_000,
                ..early.clone()
            };
            repo.apply("c-late", &typed(types::CALL_DIALING, &late))
                .await
                .unwrap();
            let x = repo
                .search_customers(&storage_service::db::customers::CustomerQuery {
                    external_id: Some("X".into()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(x.len(), 1, "{engine} {order:?}");
            for call in ["call-early", "call-late"] {
                let cdr = repo.get(call).await.unwrap().unwrap();
                assert_eq!(
                    cdr.customer_id.as_deref(),
                    Some(x[0].id.as_str()),
                    "{engine} {order:?}: {call}"
                );
            }
            results.push(profiles(&repo).await);
        }
        let expected = json!([
            {"ext": null, "name": "Solo", "phones": ["+14155550113"], "fields": {}, "team": "sales"},
            {"ext": "X", "name": "Ann B", "phones": ["+14155550111", "+14155550112"],
             "fields": {"city": {"string": "Paris"}, "pet": {"string": "cat"}, "zip": {"string": "75"}},
             "team": "sales"},
        ]);
        let mut expected: Vec<Value> = expected.as_array().unwrap().clone();
        expected.sort_by_key(|v| v.to_string());
        for (order, got) in orders.iter().zip(&results) {
            assert_eq!(got, &expected, "{engine}: order {order:?}");
        }
    }
}

/// Creates a campaign on the scheduler as `token`; returns its id.
async fn campaign(http: &reqwest::Client, sched: &str, token: &str, team: &str) -> String {
    let (status, _, c) = send(
        http,
        Method::POST,
        &format!("{sched}/v1/campaigns"),
        token,
        Some(json!({
            "name": unique("crm-"),
            "caller_id": "+14155550100",
            "max_concurrent": 1,
            "max_cps": 1.0,
            "team": team,
            "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
            "cdr_retention_days": 30,
        })),
        None,
    )
    .await;
    assert_eq!(status, 201, "{c}");
    c["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_import_reaches_the_profiles_and_a_campaign_its_retention_over_rabbitmq() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    for (engine, url) in both_databases() {
        let events = amqp_url(&unique("crm"));
        let store_db = match engine {
            "sqlite" => dialstack_tests::fresh_sqlite_url(),
            _ => url.clone(),
        };
        let recordings = fresh_recordings_url();
        let st = in_process::<storage_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", &store_db),
            ("DIALSTACK_EVENTS_URL", &events),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
            ("DIALSTACK_RECORDINGS_URL", &recordings),
        ])
        .await;
        let sched_db = match engine {
            "sqlite" => dialstack_tests::fresh_sqlite_url(),
            _ => dialstack_tests::fresh_mysql_url(),
        };
        let commands = format!("memory://{}", unique("cmd"));
        let sched = in_process::<task_scheduler::Application>(&[
            ("DIALSTACK_DATABASE_URL", &sched_db),
            ("DIALSTACK_EVENTS_URL", &events),
            ("DIALSTACK_COMMANDS_URL", &commands),
            ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
        ])
        .await;
        let id = campaign(&http, &sched.url, &admin, "sales").await;
        let csv = "phone,external_id,first_name,last_name,plan\n\
                   +14155550123,crm-9,Grace,Hopper,gold\n\
                   +14155550124,,Alan,,silver\n";
        let r = http
            .post(format!("{}/v1/campaigns/{id}/leads", sched.url))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{engine}: {}",
            r.text().await.unwrap()
        );

        // A forged, malformed profile event is dead-lettered; it stops nothing.
        let channel = Channel::connect(&events, EVENTS).await.unwrap();
        for data in [
            json!({"phone": "not a number", "campaign_id": "k1"}),
            json!({"phone": "+14155550125", "campaign_id": "k1", "first_name": "a\u{0}b"}),
            json!({"campaign_id": "k1"}),
        ] {
            let ev = CloudEvent::new("intruder", types::CUSTOMER_UPSERTED, "x", &data);
            channel
                .publish(&OutMessage {
                    id: ev.id.clone(),
                    routing_key: ev.ty.clone(),
                    key: "x".into(),
                    payload: ev.to_bytes(),
                })
                .await
                .unwrap();
        }
        let base = format!("{}/v1/customers", st.url);
        let grace = eventually(
            &format!("{engine}: the import's profiles in storage"),
            Duration::from_secs(30),
            || async {
                let (_, _, b) = send(
                    &http,
                    Method::GET,
                    &format!("{base}?external_id=crm-9"),
                    &admin,
                    None,
                    None,
                )
                .await;
                let (_, _, alan) = send(
                    &http,
                    Method::GET,
                    &format!("{base}?phone={}", q("+14155550124")),
                    &admin,
                    None,
                    None,
                )
                .await;
                match (b["items"].as_array(), alan["items"].as_array()) {
                    (Some(g), Some(a)) if g.len() == 1 && a.len() == 1 => Ok(g[0].clone()),
                    _ => Err(format!("{b} {alan}")),
                }
            },
        )
        .await;
        assert_eq!(grace["name"], "Grace Hopper", "{engine}");
        assert_eq!(grace["team"], "sales", "{engine}: the campaign's team");
        assert_eq!(grace["phones"], json!(["+14155550123"]), "{engine}");
        assert_eq!(
            grace["fields"]["plan"],
            json!({"string": "gold"}),
            "{engine}"
        );
        let (_, _, none) = send(
            &http,
            Method::GET,
            &format!("{base}?phone={}", q("+14155550125")),
            &admin,
            None,
            None,
        )
        .await;
        assert_eq!(
            none["items"],
            json!([]),
            "{engine}: the forged event left nothing"
        );
        // The campaign's CDR retention came with campaign.updated.
        let store = repo(&store_db).await;
        let retention = eventually(
            &format!("{engine}: campaign retention in storage"),
            Duration::from_secs(20),
            || async {
                let all = store.campaign_retentions().await.unwrap();
                match all.iter().find(|r| r.campaign_id == id) {
                    Some(r) => Ok(r.clone()),
                    None => Err(format!("{all:?}")),
                }
            },
        )
        .await;
        assert_eq!(retention.cdr_retention_days, Some(30), "{engine}");
        drop(sched);
        drop(st);
    }
}

/// The synthetic calls of the listing tests: call `i` starts `i` minutes
/// after [`BASE`].
fn synthetic(i: usize) -> CallEventData {
    CallEventData {
        call_id: format!("call-{i:04}"),
        attempt_id: format!("att-{i:04}"),
        campaign_id: format!("k{}", i % 3),
        phone: format!("+1415555{:04}", 1000 + i % 10),
        at_ms: BASE + i as i64 * MINUTE,
        outcome: Some(if i % 5 == 0 {
            Outcome::Busy
        } else {
            Outcome::AnsweredHuman
        }),
        team: Some(["sales", "support"][i % 2].into()),
        agent_id: Some(format!("a{}", i % 4)),
        ..Default::default()
    }
}

/// Stores calls `range` (dialing then completed, as one batch).
async fn store_calls(repo: &Repo, range: std::ops::Range<usize>) {
    store(repo, range.map(synthetic).collect()).await
}

/// Stores these calls (dialing then completed, in batches).
async fn store(repo: &Repo, calls: Vec<CallEventData>) {
    for chunk in calls.chunks(250) {
        let evs: Vec<(String, dialstack_contract::CallEvent)> = chunk
            .iter()
            .flat_map(|c| {
                [
                    (format!("{}-d", c.call_id), typed(types::CALL_DIALING, c)),
                    (
                        format!("{}-c", c.call_id),
                        typed(
                            types::CALL_COMPLETED,
                            &CallEventData {
                                at_ms: c.at_ms + 30_000,
                                ..c.clone()
                            },
                        ),
                    ),
                ]
            })
            .collect();
        let items: Vec<Applied<'_>> = evs
            .iter()
            .map(|(id, ev)| Applied {
                event_id: id,
                change: Change::Call(ev),
            })
            .collect();
        repo.apply_batch(&items).await.unwrap();
    }
}

fn call_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_records_filter_by_every_field_and_page_stably_while_calls_arrive() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let sam = issuer.token("sam", Role::Supervisor, &["sales"]);
    let a1 = issuer.token("a1", Role::Agent, &["support"]);
    const N: usize = 60;
    for (engine, url) in both_databases() {
        let st = storage(&url, &issuer, &[]).await;
        let repo = repo(&url).await;
        store_calls(&repo, 0..N).await;
        // A customer for one number in sales: its calls link to them.
        let (status, _, cust) = send(
            &http,
            Method::POST,
            &format!("{}/v1/customers", st.url),
            &admin,
            Some(json!({"team": "sales", "phones": ["+14155551002"]})),
            None,
        )
        .await;
        assert_eq!(status, 201, "{engine}: {cust}");
        let cust = cust["id"].as_str().unwrap().to_owned();
        sqlx::query(
            "UPDATE cdrs SET disposition = 'sale' WHERE call_id IN ('call-0003', 'call-0007')",
        )
        .execute(&repo.db.pool)
        .await
        .unwrap();

        let calls = format!("{}/v1/calls", st.url);
        let list = |query: String, token: String| {
            let http = http.clone();
            let calls = calls.clone();
            async move {
                let (status, _, b) = send(
                    &http,
                    Method::GET,
                    &format!("{calls}?limit=500&{query}"),
                    &token,
                    None,
                    None,
                )
                .await;
                assert_eq!(status, 200, "{query}: {b}");
                call_ids(&b)
            }
        };
        let expect = |f: &dyn Fn(usize, &CallEventData) -> bool| -> Vec<String> {
            (0..N)
                .filter(|i| f(*i, &synthetic(*i)))
                .map(|i| synthetic(i).call_id)
                .collect()
        };
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
                .replace('+', "%2B")
        };
        let cases: Vec<(String, Vec<String>)> = vec![
            (String::new(), expect(&|_, _| true)),
            (
                format!("from={}&to={}", BASE + 10 * MINUTE, BASE + 20 * MINUTE),
                expect(&|i, _| (10..20).contains(&i)),
            ),
            (
                format!(
                    "from={}&to={}",
                    iso(BASE + 10 * MINUTE),
                    iso(BASE + 20 * MINUTE)
                ),
                expect(&|i, _| (10..20).contains(&i)),
            ),
            ("campaign_id=k1".into(), expect(&|i, _| i % 3 == 1)),
            (
                format!("phone={}", q("+14155551004")),
                expect(&|i, _| i % 10 == 4),
            ),
            ("agent_id=a2".into(), expect(&|i, _| i % 4 == 2)),
            ("team=support".into(), expect(&|i, _| i % 2 == 1)),
            ("outcome=busy".into(), expect(&|i, _| i % 5 == 0)),
            (
                "disposition=sale".into(),
                vec!["call-0003".into(), "call-0007".into()],
            ),
            (
                format!("customer_id={cust}"),
                expect(&|i, c| i % 10 == 2 && c.team.as_deref() == Some("sales")),
            ),
            (
                format!(
                    "campaign_id=k0&outcome=busy&from={}&to={}",
                    BASE,
                    BASE + 40 * MINUTE
                ),
                expect(&|i, _| i % 3 == 0 && i % 5 == 0 && i < 40),
            ),
        ];
        for (query, want) in &cases {
            assert!(!want.is_empty() || query.contains("nothing"), "{query}");
            assert_eq!(
                &list(query.clone(), admin.clone()).await,
                want,
                "{engine}: ?{query}"
            );
        }
        // Access narrows every filter.
        assert_eq!(
            list("outcome=busy".into(), sam.clone()).await,
            expect(&|i, _| i % 5 == 0 && i % 2 == 0),
            "{engine}: a supervisor sees his teams' calls"
        );
        assert_eq!(
            list(String::new(), a1.clone()).await,
            expect(&|i, _| i % 4 == 1),
            "{engine}: an agent sees the calls bridged to them"
        );
        assert!(
            list("agent_id=a2".into(), a1.clone()).await.is_empty(),
            "{engine}: an agent cannot ask for another's calls"
        );
        // Customer history, with the same access.
        let (status, _, history) = send(
            &http,
            Method::GET,
            &format!("{}/v1/customers/{cust}/calls?limit=500", st.url),
            &sam,
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{engine}: {history}");
        assert_eq!(
            call_ids(&history),
            expect(&|i, c| i % 10 == 2 && c.team.as_deref() == Some("sales")),
            "{engine}"
        );

        // Keyset paging while calls arrive, some earlier than the cursor.
        let writer = {
            let repo = repo.clone();
            tokio::spawn(async move {
                for k in 0..6 {
                    // New calls land all over the order, behind the walk too.
                    let late = (k * 5..k * 5 + 5)
                        .map(|i| CallEventData {
                            call_id: format!("late-{i:04}"),
                            at_ms: BASE + ((i * 7) % N) as i64 * MINUTE + 1,
                            ..synthetic(i)
                        })
                        .collect();
                    store(&repo, late).await;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        };
        let mut seen: Vec<(i64, String)> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..100 {
            let (status, _, b) = send(
                &http,
                Method::GET,
                &format!("{calls}?limit=7{cursor}"),
                &admin,
                None,
                None,
            )
            .await;
            assert_eq!(status, 200, "{engine}: {b}");
            for c in b["items"].as_array().unwrap() {
                seen.push((
                    c["started_at"].as_i64().unwrap(),
                    c["call_id"].as_str().unwrap().to_owned(),
                ));
            }
            match b["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer.await.unwrap();
        let ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
        let distinct: BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "{engine}: no call twice");
        for i in 0..N {
            assert!(
                distinct.contains(&synthetic(i).call_id),
                "{engine}: call {i}, there before the walk, was seen"
            );
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{engine}: pages follow (started_at, call_id)"
        );

        // Bad filters name their parameter.
        for (query, field) in [
            ("from=yesterday", "from"),
            ("from=2000&to=1000", "to"),
            ("phone=123", "phone"),
            ("outcome=sold", "outcome"),
            ("mos_below=9", "mos_below"),
            ("cursor=garbage", "cursor"),
            ("cursor=12.bad%20id", "cursor"),
            ("limit=501", "limit"),
            ("agent=a1", "agent"),
            ("campaign_id=%07", "campaign_id"),
        ] {
            let (status, _, b) = send(
                &http,
                Method::GET,
                &format!("{calls}?{query}"),
                &admin,
                None,
                None,
            )
            .await;
            names(status, &b, 400, field, &format!("{engine}: ?{query}"));
        }
        drop(st);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_the_filtered_calls_as_csv_or_ndjson_for_each_role() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let sam = issuer.token("sam", Role::Supervisor, &["sales"]);
    let a3 = issuer.token("a3", Role::Agent, &["support"]);
    const N: usize = 2_500;
    for (engine, url) in both_databases() {
        let st = storage(&url, &issuer, &[]).await;
        let repo = repo(&url).await;
        store_calls(&repo, 0..N).await;
        let export = format!("{}/v1/calls/export", st.url);
        let get = |query: String, token: String| {
            let http = http.clone();
            let export = export.clone();
            async move {
                let r = http
                    .get(format!("{export}?{query}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let ty = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (status, ty, r.text().await.unwrap())
            }
        };
        // CSV, in start order, across several database chunks.
        let (status, ty, body) = get(format!("from={BASE}"), admin.clone()).await;
        assert_eq!(status, 200, "{engine}: {body}");
        assert!(ty.starts_with("text/csv"), "{engine}: {ty}");
        let mut lines = body.split("\r\n").filter(|l| !l.is_empty());
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            header,
            storage_service::http::export::CSV_COLUMNS,
            "{engine}"
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let want: Vec<String> = (0..N).map(|i| synthetic(i).call_id).collect();
        assert_eq!(
            rows.iter().map(|r| r[0].to_owned()).collect::<Vec<_>>(),
            want,
            "{engine}"
        );
        let (_, _, body) = get("campaign_id=k2".into(), admin.clone()).await;
        assert_eq!(
            body.split("\r\n").filter(|l| !l.is_empty()).count(),
            1 + (0..N).filter(|i| i % 3 == 2).count(),
            "{engine}: filtered"
        );
        assert!(rows.iter().all(|r| r.len() == header.len()), "{engine}");
        let at = header.iter().position(|h| *h == "outcome").unwrap();
        assert!(rows
            .iter()
            .all(|r| r[at] == "busy" || r[at] == "answered_human"));
        // NDJSON, as a supervisor: only his team's.
        let (status, ty, body) = get(
            format!("format=ndjson&outcome=busy&to={}", BASE + 600 * MINUTE),
            sam.clone(),
        )
        .await;
        assert_eq!(status, 200, "{engine}: {body}");
        assert_eq!(ty, "application/x-ndjson", "{engine}");
        let got: Vec<String> = body
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["team"], "sales");
                v["call_id"].as_str().unwrap().to_owned()
            })
            .collect();
        let want: Vec<String> = (0..600)
            .filter(|i| i % 5 == 0 && i % 2 == 0)
            .map(|i| synthetic(i).call_id)
            .collect();
        assert_eq!(got, want, "{engine}");
        // An agent exports only the calls bridged to them.
        let (_, _, body) = get("format=ndjson".into(), a3.clone()).await;
        assert_eq!(
            body.lines().count(),
            (0..N).filter(|i| i % 4 == 3).count(),
            "{engine}"
        );
        // Bad parameters.
        for (query, field) in [
            ("format=xml", "format"),
            ("limit=5", "limit"),
            ("phone=1", "phone"),
        ] {
            let (status, _, body) = get(query.into(), admin.clone()).await;
            let b: Value = serde_json::from_str(&body).unwrap();
            names(status, &b, 400, field, &format!("{engine}: ?{query}"));
        }
        drop(st);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_the_limit_get_503_while_another_client_holds_one() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let url = dialstack_tests::fresh_sqlite_url();
    let st = storage(&url, &issuer, &[("DIALSTACK_EXPORTS", "1")]).await;
    let repo = repo(&url).await;
    // Enough rows that a client who does not read keeps the export open
    // (far more than the socket buffers and the server's channel hold).
    store_calls(&repo, 0..40_000).await;
    let export = format!("{}/v1/calls/export?format=ndjson", st.url);
    let slow = http.get(&export).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http.get(&export).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "unavailable");
    // The slow client leaves: its export stops and frees the slot.
    drop(slow);
    let body = eventually(
        "the export slot is free again",
        Duration::from_secs(20),
        || async {
            let r = http.get(&export).bearer_auth(&admin).send().await.unwrap();
            match r.status().as_u16() {
                200 => Ok(r.text().await.unwrap()),
                s => Err(format!("{s}")),
            }
        },
    )
    .await;
    assert_eq!(body.lines().count(), 40_000);
    drop(st);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_records_that_are_due_in_small_batches() {
    for (engine, url) in both_databases() {
        let repo = repo(&url).await;
        let now = dialstack_common::now_ms();
        // k-own keeps 30 days, k-long 400 (longer than the default), the
        // rest the default of 90.
        for (i, (campaign, days)) in [("k-own", 30u32), ("k-long", 400)].iter().enumerate() {
            let r = CampaignRetention {
                campaign_id: (*campaign).into(),
                cdr_retention_days: Some(*days),
                version: 10,
            };
            repo.apply_batch(&[Applied {
                event_id: &format!("ret-{i}"),
                change: Change::Retention(&r),
            }])
            .await
            .unwrap();
        }
        // An older version arriving late changes nothing.
        let stale = CampaignRetention {
            campaign_id: "k-own".into(),
            cdr_retention_days: Some(1),
            version: 5,
        };
        repo.apply_batch(&[Applied {
            event_id: "ret-stale",
            change: Change::Retention(&stale),
        }])
        .await
        .unwrap();
        let mut due = BTreeSet::new();
        let mut kept = BTreeSet::new();
        let mut n = 0;
        let mut add = |campaign: &str, age_days: i64, count: usize, is_due: bool| {
            let mut out = Vec::new();
            for _ in 0..count {
                n += 1;
                let c = CallEventData {
                    call_id: format!("r-{n:05}"),
                    attempt_id: format!("a-{n}"),
                    campaign_id: campaign.into(),
                    phone: "+14155550177".into(),
                    at_ms: now - age_days * DAY - n as i64,
                    ..Default::default()
                };
                if is_due {
                    due.insert(c.call_id.clone());
                } else {
                    kept.insert(c.call_id.clone());
                }
                out.push(c);
            }
            out
        };
        let mut calls = Vec::new();
        calls.extend(add("k-own", 31, 230, true));
        calls.extend(add("k-own", 29, 5, false));
        calls.extend(add("k-long", 200, 5, false));
        calls.extend(add("k-long", 401, 3, true));
        calls.extend(add("k-other", 91, 7, true));
        calls.extend(add("k-other", 89, 4, false));
        for (i, c) in calls.iter().enumerate() {
            repo.apply(&format!("ev-{i}"), &typed(types::CALL_DIALING, c))
                .await
                .unwrap();
        }
        // A due call whose recording is still kept stays until it goes.
        let with_recording = calls[0].call_id.clone();
        due.remove(&with_recording);
        kept.insert(with_recording.clone());
        let rec = RecordingReady {
            call: dialstack_contract::CallRef {
                call_id: with_recording.clone(),
                attempt_id: "a".into(),
                campaign_id: "k-own".into(),
                phone: "+14155550177".into(),
                at_ms: now,
                team: None,
            },
            url: "file:///recordings/r.wav".into(),
            duration_ms: 1000,
            bytes: 100,
            sha256: "0".repeat(64),
            retention_days: Some(365),
        };
        repo.apply_recording("rec-1", &rec).await.unwrap();

        let store = dialstack_common::recordings::RecordingStore::from_url(
            &fresh_recordings_url(),
            &dialstack_common::config::Env::from_pairs(std::iter::empty::<(&str, &str)>()),
        )
        .unwrap();
        let sweeper = storage_service::retention::Sweeper {
            repo: repo.clone(),
            store,
            deleted: storage_service::retention::Sweeper::counter().unwrap(),
            cdr_retention_days: Some(90),
            recording_retention_days: None,
        };
        let mut passes = Vec::new();
        for _ in 0..10 {
            let n = sweeper.sweep_cdrs_once().await.unwrap();
            passes.push(n);
            if n == 0 {
                break;
            }
        }
        assert!(
            passes
                .iter()
                .all(|n| *n as i64 <= storage_service::retention::BATCH),
            "{engine}: batches of at most BATCH: {passes:?}"
        );
        assert!(passes.len() >= 3, "{engine}: several batches: {passes:?}");
        let left: BTreeSet<String> = sqlx::query("SELECT call_id FROM cdrs")
            .fetch_all(&repo.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::get(r, 0))
            .collect();
        assert_eq!(left, kept, "{engine}: exactly the due records went");
        assert_eq!(
            sweeper.deleted.with_label_values(&["cdr"]).get() as usize,
            due.len(),
            "{engine}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_a_customers_personal_data_and_recordings_and_is_audited() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let sam = issuer.token("sam", Role::Supervisor, &["sales"]);
    let a1 = issuer.token("a1", Role::Agent, &["sales"]);
    let a2 = issuer.token("a2", Role::Agent, &["sales"]);
    for (engine, url) in both_databases() {
        let recordings = fresh_recordings_url();
        let st = storage(&url, &issuer, &[("DIALSTACK_RECORDINGS_URL", &recordings)]).await;
        let repo = repo(&url).await;
        let store = dialstack_common::recordings::RecordingStore::from_url(
            &recordings,
            &dialstack_common::config::Env::from_pairs(std::iter::empty::<(&str, &str)>()),
        )
        .unwrap();
        let base = format!("{}/v1/customers", st.url);
        let (status, _, c) = send(
            &http,
            Method::POST,
            &base,
            &sam,
            Some(json!({"name": "Eve", "phones": ["+14155550188"], "external_id": "crm-e"})),
            None,
        )
        .await;
        assert_eq!(status, 201, "{engine}: {c}");
        let id = c["id"].as_str().unwrap().to_owned();
        // Two calls to her, bridged to a1; one recorded.
        for k in 0..2 {
            let call = CallEventData {
                call_id: format!("eve-{k}"),
                attempt_id: format!("a-{k}"),
                campaign_id: "k1".into(),
                phone: "+14155550188".into(),
                at_ms: BASE + k * MINUTE,
                outcome: Some(Outcome::AnsweredHuman),
                team: Some("sales".into()),
                agent_id: Some("a1".into()),
                talk_ms: Some(30_000),
                ..Default::default()
            };
            repo.apply(&format!("eve-ev-{k}"), &typed(types::CALL_COMPLETED, &call))
                .await
                .unwrap();
        }
        let key = format!("{}/eve-0.wav", unique("rec"));
        store
            .put_bytes(&key, bytes::Bytes::from_static(b"RIFF...."))
            .await
            .unwrap();
        let rec = RecordingReady {
            call: dialstack_contract::CallRef {
                call_id: "eve-0".into(),
                attempt_id: "a-0".into(),
                campaign_id: "k1".into(),
                phone: "+14155550188".into(),
                at_ms: BASE,
                team: Some("sales".into()),
            },
            url: store.url_for(&key),
            duration_ms: 1000,
            bytes: 8,
            sha256: "a".repeat(64),
            retention_days: None,
        };
        repo.apply_recording("eve-rec", &rec).await.unwrap();

        // The agent who talked to her sees her; another agent does not.
        assert_eq!(
            send(&http, Method::GET, &format!("{base}/{id}"), &a1, None, None)
                .await
                .0,
            200,
            "{engine}"
        );
        assert_eq!(
            send(&http, Method::GET, &format!("{base}/{id}"), &a2, None, None)
                .await
                .0,
            404,
            "{engine}"
        );
        let (status, _, found) = send(
            &http,
            Method::GET,
            &format!("{base}?tag=&phone={}", q("+14155550188")),
            &a2,
            None,
            None,
        )
        .await;
        assert_eq!(status, 400, "{engine}: an empty tag is refused: {found}");
        // Her export holds the profile and both calls with the recording.
        let (status, _, export) = send(
            &http,
            Method::GET,
            &format!("{base}/{id}/export"),
            &sam,
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{engine}: {export}");
        assert_eq!(export["customer"]["name"], "Eve", "{engine}");
        assert_eq!(export["calls"].as_array().unwrap().len(), 2, "{engine}");
        assert_eq!(export["calls"][0]["recording"]["bytes"], 8, "{engine}");
        assert_eq!(
            send(
                &http,
                Method::GET,
                &format!("{base}/{id}/export"),
                &a1,
                None,
                None
            )
            .await
            .0,
            403,
            "{engine}: agents do not export"
        );

        let (status, _, b) = send(
            &http,
            Method::DELETE,
            &format!("{base}/{id}?erase=true"),
            &admin,
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{engine}: {b}");
        assert_eq!(b, json!({"calls": 2, "recordings_deleted": 1}), "{engine}");
        assert_eq!(
            send(
                &http,
                Method::GET,
                &format!("{base}/{id}"),
                &admin,
                None,
                None
            )
            .await
            .0,
            404
        );
        assert!(
            matches!(
                store.head(&key).await,
                Err(dialstack_common::recordings::RecordingError::NotFound)
            ),
            "{engine}: the recording's object is gone"
        );
        for k in 0..2 {
            let cdr = repo.get(&format!("eve-{k}")).await.unwrap().unwrap();
            assert_eq!(cdr.phone, "", "{engine}: the number is gone");
            assert_eq!(cdr.customer_id, None, "{engine}");
            assert!(cdr.recording.is_none(), "{engine}");
            assert_eq!(cdr.talk_ms, Some(30_000), "{engine}: statistics stay");
            assert_eq!(cdr.outcome.as_deref(), Some("answered_human"), "{engine}");
        }
        let (_, _, found) = send(
            &http,
            Method::GET,
            &format!("{base}?phone={}", q("+14155550188")),
            &admin,
            None,
            None,
        )
        .await;
        assert_eq!(found["items"], json!([]), "{engine}");
        let (_, _, calls) = send(
            &http,
            Method::GET,
            &format!("{}/v1/calls?phone={}", st.url, q("+14155550188")),
            &admin,
            None,
            None,
        )
        .await;
        assert_eq!(
            calls["items"],
            json!([]),
            "{engine}: no call is found by her number"
        );
        let audit = repo.audit_of(&id).await.unwrap();
        assert_eq!(audit.len(), 1, "{engine}");
        assert_eq!(audit[0].action, "customer.erase", "{engine}");
        assert_eq!(audit[0].actor, "adm", "{engine}");
        assert_eq!(audit[0].detail["recordings_deleted"], 1, "{engine}");
        drop(st);
    }
}

#[test]
fn campaign_updated_and_customer_upserted_are_checked_field_by_field() {
    let good = CustomerUpserted {
        phone: "+14155550101".into(),
        campaign_id: "k1".into(),
        team: Some("sales".into()),
        external_id: Some("x".into()),
        first_name: Some("Ann".into()),
        last_name: None,
        fields: BTreeMap::new(),
    };
    assert_eq!(good.validate(), Ok(()));
    let bad = |f: fn(&mut CustomerUpserted)| {
        let mut c = good.clone();
        f(&mut c);
        c.validate().unwrap_err().field
    };
    assert_eq!(bad(|c| c.phone = "12".into()), "phone");
    assert_eq!(bad(|c| c.team = Some(String::new())), "team");
    assert_eq!(bad(|c| c.external_id = Some("a\nb".into())), "external_id");
    assert_eq!(bad(|c| c.first_name = Some("x".repeat(101))), "first_name");
    assert_eq!(
        bad(|c| {
            c.fields.insert(String::new(), "v".into());
        }),
        "fields"
    );
    let ok = CampaignUpdated {
        campaign_id: "k1".into(),
        team: None,
        cdr_retention_days: Some(30),
        recording_retention_days: None,
        version: 1,
    };
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(
        CampaignUpdated {
            cdr_retention_days: Some(0),
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .field,
        "cdr_retention_days"
    );
}

/// A bridged call's agent leg lands in its CDR; the agent's disposition
/// arrives as `call.disposition` and sets the CDR's disposition, once; a
/// disposition for a call whose record is not in yet fails (it is
/// redelivered) and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_call_keeps_its_agent_leg_and_its_disposition() {
    for (engine, url) in both_databases() {
        let repo = repo(&url).await;
        let call = dialstack_contract::CallRef {
            call_id: "bridged-1".into(),
            attempt_id: "a-1".into(),
            campaign_id: "k1".into(),
            phone: "+14155550177".into(),
            at_ms: BASE,
            team: Some("east".into()),
        };
        let leg = dialstack_contract::AgentLeg {
            agent_id: "agent-7".into(),
            wait_ms: 420,
            ring_ms: 180,
            talk_ms: 61_000,
            tries: 1,
            quality: None,
            transfer: None,
        };
        let done = dialstack_contract::CallEvent::Completed(dialstack_contract::CallCompleted {
            agent_id: Some("agent-7".into()),
            agent: Some(Box::new(leg.clone())),
            ivr: None,
            amd: None,
            talk_ms: 61_500,
            ..dialstack_contract::CallCompleted::unanswered(
                call.clone(),
                Outcome::AnsweredHuman,
                None,
            )
        });
        let disposition = |call_id: &str| dialstack_contract::CallDisposition {
            call_id: call_id.into(),
            attempt_id: "a-1".into(),
            campaign_id: "k1".into(),
            agent_id: "agent-7".into(),
            code: "SALE".into(),
            note: Some("two units".into()),
            callback_at_ms: None,
            at_ms: BASE + MINUTE,
        };
        // Before its call record: refused, nothing written.
        let early = disposition("not-yet");
        let r = repo
            .apply_batch(&[Applied {
                event_id: "disp-early",
                change: Change::Disposition(&early),
            }])
            .await;
        assert!(
            r.is_err(),
            "{engine}: a disposition without its record fails"
        );
        assert!(repo.get("not-yet").await.unwrap().is_none(), "{engine}");
        // Completion and disposition in one batch.
        let d = disposition("bridged-1");
        let applied = repo
            .apply_batch(&[
                Applied {
                    event_id: "done-1",
                    change: Change::Call(&done),
                },
                Applied {
                    event_id: "disp-1",
                    change: Change::Disposition(&d),
                },
            ])
            .await
            .unwrap();
        assert_eq!(applied, vec![true, true], "{engine}");
        let cdr = repo.get("bridged-1").await.unwrap().unwrap();
        assert_eq!(cdr.agent_id.as_deref(), Some("agent-7"), "{engine}");
        assert_eq!(cdr.disposition.as_deref(), Some("SALE"), "{engine}");
        let agent: dialstack_contract::AgentLeg =
            serde_json::from_value(cdr.agent.clone().unwrap()).unwrap();
        assert_eq!(agent, leg, "{engine}");
        // The same event again is a duplicate: nothing changes.
        let again = repo
            .apply_batch(&[Applied {
                event_id: "disp-1",
                change: Change::Disposition(&d),
            }])
            .await
            .unwrap();
        assert_eq!(again, vec![false], "{engine}");
    }
}
