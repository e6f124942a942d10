//! storage-service and issue 12: call records keep what the IVR and
//! answering-machine detection did and are found by the IVR's result (the
//! whole of it, or one gathered value, never a value that merely contains
//! it) and by the detector's decision; transcripts from `call.transcript`
//! over RabbitMQ are stored once, read under the call's access, refused
//! when malformed without stopping the consumer, and go with their CDR.
//! Each runs on SQLite and on MariaDB.

use std::collections::BTreeMap;
use std::time::Duration;

use dialstack_common::auth::Role;
use dialstack_common::bus::{Channel, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_contract::ivr::Gathered;
use dialstack_contract::{
    types, AmdResult, CallCompleted, CallEvent, CallRef, CallTranscript, IvrResult, Outcome,
};
use dialstack_tests::campaigns::publish;
use dialstack_tests::issuer::TestIssuer;
use dialstack_tests::{
    amqp_url, both_databases, eventually, fresh_recordings_url, in_process, unique, InProcess,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use storage_service::db::{Applied, Change, Repo, MIGRATIONS};

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600_000;

async fn repo(url: &str) -> Repo {
    let db = dialstack_common::db::Db::connect(url).await.unwrap();
    db.migrate(MIGRATIONS).await.unwrap();
    Repo { db }
}

async fn storage(db: &str, events: &str, issuer: &TestIssuer) -> InProcess {
    let recordings = fresh_recordings_url();
    in_process::<storage_service::Application>(&[
        ("DIALSTACK_DATABASE_URL", db),
        ("DIALSTACK_EVENTS_URL", events),
        ("DIALSTACK_COMMANDS_URL", "memory://unused"),
        ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
        ("DIALSTACK_RECORDINGS_URL", &recordings),
    ])
    .await
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value) {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn call(i: usize, team: &str) -> CallRef {
    CallRef {
        call_id: format!("ivr-call-{i:02}"),
        attempt_id: format!("ivr-att-{i:02}"),
        campaign_id: "k-ivr".into(),
        phone: format!("+1415555{:04}", 2000 + i),
        at_ms: BASE + i as i64 * 60_000,
        team: Some(team.into()),
    }
}

/// A completed call with the IVR's gathered `vars` and, if given, the
/// detector's decision; bridged to `agent` if given.
fn done(
    i: usize,
    outcome: Outcome,
    vars: &[(&str, &str)],
    amd: Option<&str>,
    agent: Option<&str>,
) -> CallEvent {
    let ivr = (!vars.is_empty()).then(|| {
        Box::new(IvrResult {
            path: vec!["ask".into(), "bye".into()],
            vars: vars
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Gathered {
                            value: (*v).to_owned(),
                            source: "dtmf".into(),
                            confidence: None,
                        },
                    )
                })
                .collect(),
            ended_at: Some("bye".into()),
            ..Default::default()
        })
    });
    CallEvent::Completed(CallCompleted {
        ring_ms: 2_000,
        talk_ms: 9_000,
        agent_id: agent.map(str::to_owned),
        ivr,
        amd: amd.map(|r| {
            Box::new(AmdResult {
                result: r.into(),
                decision_ms: 2_200,
                reason: "greeting_length".into(),
                features: BTreeMap::from([("greeting_ms".to_owned(), 2_600.0)]),
                message_played: false,
            })
        }),
        ..CallCompleted::unanswered(call(i, "east"), outcome, None)
    })
}

fn ids(page: &Value) -> Vec<String> {
    let mut v: Vec<String> = page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn names_field(status: StatusCode, body: &Value, field: &str, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["code"], "invalid_request", "{what}: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{field}:")),
        "{what}: names {field}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_records_keep_the_ivr_and_amd_and_are_found_by_ivr_result() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    for (engine, url) in both_databases() {
        let repo = repo(&url).await;
        let calls = [
            done(
                1,
                Outcome::AnsweredHuman,
                &[("a", "1"), ("b", "2")],
                Some("human"),
                None,
            ),
            done(
                2,
                Outcome::AnsweredHuman,
                &[("aa", "1")],
                Some("human"),
                None,
            ),
            done(3, Outcome::AnsweredHuman, &[("a", "10")], None, None),
            done(4, Outcome::AmdUnsure, &[("a", "1")], Some("unsure"), None),
            done(5, Outcome::AnsweredHuman, &[("x_y", "1")], None, None),
            done(
                6,
                Outcome::AnsweredHuman,
                &[("xzy", "1"), ("zz", "2")],
                None,
                None,
            ),
            done(
                7,
                Outcome::AnsweredHuman,
                &[("a", "5"), ("b", "2"), ("c", "3")],
                None,
                None,
            ),
            done(8, Outcome::AnsweredMachine, &[], Some("machine"), None),
            done(
                9,
                Outcome::AnsweredHuman,
                &[("pct", "100%"), ("z", "1")],
                None,
                None,
            ),
        ];
        let ev_ids: Vec<String> = (0..calls.len()).map(|i| format!("ivr-ev-{i}")).collect();
        let items: Vec<Applied<'_>> = calls
            .iter()
            .zip(&ev_ids)
            .map(|(c, id)| Applied {
                event_id: id,
                change: Change::Call(c),
            })
            .collect();
        assert!(
            repo.apply_batch(&items).await.unwrap().iter().all(|a| *a),
            "{engine}"
        );

        // The record shows both objects and the searchable summary.
        let cdr = repo.get("ivr-call-01").await.unwrap().unwrap();
        assert_eq!(cdr.ivr_result.as_deref(), Some("a=1&b=2"), "{engine}");
        let ivr = cdr.ivr.clone().unwrap();
        assert_eq!(ivr["vars"]["b"]["value"], "2", "{engine}: {ivr}");
        assert_eq!(ivr["path"], json!(["ask", "bye"]), "{engine}");
        assert_eq!(cdr.amd.clone().unwrap()["result"], "human", "{engine}");
        let machine = repo.get("ivr-call-08").await.unwrap().unwrap();
        assert_eq!((machine.ivr, machine.ivr_result), (None, None), "{engine}");
        assert_eq!(
            machine.amd.unwrap()["features"]["greeting_ms"],
            2_600.0,
            "{engine}"
        );

        let st = storage(&url, &format!("memory://{}", unique("si")), &issuer).await;
        let list = |q: &str| {
            let http = http.clone();
            let url = format!("{}/v1/calls?{q}", st.url);
            let admin = admin.clone();
            async move { get(&http, &url, &admin).await }
        };
        let (s, one) = get(&http, &format!("{}/v1/calls/ivr-call-04", st.url), &admin).await;
        assert_eq!(s, 200, "{engine}: {one}");
        assert_eq!(one["outcome"], "amd_unsure", "{engine}");
        assert_eq!(one["amd"]["result"], "unsure", "{engine}");
        assert_eq!(one["ivr"]["vars"]["a"]["value"], "1", "{engine}");
        for (q, want) in [
            // One value: alone, first, last, in the middle; never inside
            // another name or another value.
            ("ivr_result=a%3D1", vec!["ivr-call-01", "ivr-call-04"]),
            ("ivr_result=b%3D2", vec!["ivr-call-01", "ivr-call-07"]),
            ("ivr_result=c%3D3", vec!["ivr-call-07"]),
            ("ivr_result=a%3D10", vec!["ivr-call-03"]),
            // LIKE's own characters are taken literally.
            ("ivr_result=x_y%3D1", vec!["ivr-call-05"]),
            ("ivr_result=pct%3D100%25", vec!["ivr-call-09"]),
            ("ivr_result=pct%3D1%25", vec![]),
            // With a `&`: the whole result.
            ("ivr_result=a%3D1%26b%3D2", vec!["ivr-call-01"]),
            ("ivr_result=b%3D2%26c%3D3", vec![]),
            ("amd=machine", vec!["ivr-call-08"]),
            ("amd=unsure", vec!["ivr-call-04"]),
            ("outcome=amd_unsure", vec!["ivr-call-04"]),
            ("ivr_result=a%3D1&amd=human", vec!["ivr-call-01"]),
        ] {
            let (s, page) = list(q).await;
            assert_eq!(s, 200, "{engine}: ?{q}: {page}");
            assert_eq!(ids(&page), want, "{engine}: ?{q}");
        }
        let long = "a".repeat(201);
        for (q, field) in [
            ("ivr_result=".to_owned(), "ivr_result"),
            (format!("ivr_result={long}"), "ivr_result"),
            ("ivr_result=a%3D%011".to_owned(), "ivr_result"),
            ("amd=robot".to_owned(), "amd"),
        ] {
            let (s, b) = list(&q).await;
            names_field(s, &b, field, &format!("{engine}: ?{q}"));
        }
        // The export has both columns, and the same filters.
        let r = http
            .get(format!("{}/v1/calls/export?ivr_result=b%3D2", st.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{engine}");
        let body = r.text().await.unwrap();
        let mut lines = body.split("\r\n").filter(|l| !l.is_empty());
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 2, "{engine}: {body}");
        assert_eq!(rows[0][col("ivr_result")], "a=1&b=2", "{engine}");
        assert_eq!(rows[0][col("amd_result")], "human", "{engine}");
        assert_eq!(rows[1][col("amd_result")], "", "{engine}");
        drop(st);
    }
}

/// A `call.transcript` event.
fn transcript(call: &CallRef, text: &str, confidence: Option<f32>) -> CloudEvent {
    let t = CallTranscript {
        call: call.clone(),
        text: text.into(),
        confidence,
        engine: "pocketsphinx en-us".into(),
        audio_seconds: 12.5,
    };
    CloudEvent::new("media-processor", types::CALL_TRANSCRIPT, &call.call_id, &t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_are_stored_once_read_as_their_call_and_go_with_it() {
    let issuer = TestIssuer::start().await;
    let http = reqwest::Client::new();
    let admin = issuer.token("adm", Role::Admin, &[]);
    let service = issuer.token("media", Role::Service, &[]);
    let ann = issuer.token("ann", Role::Agent, &["east"]);
    let bob = issuer.token("bob", Role::Agent, &["east"]);
    let east = issuer.token("sam", Role::Supervisor, &["east"]);
    let west = issuer.token("wes", Role::Supervisor, &["west"]);
    for (engine, url) in both_databases() {
        let events = amqp_url(&unique("tr"));
        let st = storage(&url, &events, &issuer).await;
        let bus = Channel::connect(&events, EVENTS).await.unwrap();
        let repo = repo(&url).await;
        let first = call(1, "east");
        let second = call(2, "east");
        for (i, c) in [(1, &first), (2, &second)] {
            let ev = done(i, Outcome::AnsweredHuman, &[], None, Some("ann"));
            let ce = CloudEvent::new(
                "media-processor",
                types::CALL_COMPLETED,
                &c.call_id,
                &ev.to_value(),
            );
            publish(&bus, &ce).await;
        }
        let words = "yes I would like to hear more about the offer";
        let ev = transcript(&first, words, Some(0.87));
        publish(&bus, &ev).await;
        let url_of = |c: &CallRef| format!("{}/v1/calls/{}/transcript", st.url, c.call_id);
        let t = eventually(
            &format!("{engine}: the transcript"),
            Duration::from_secs(20),
            || async {
                match get(&http, &url_of(&first), &admin).await {
                    (s, b) if s == 200 => Ok(b),
                    (s, b) => Err(format!("{s} {b}")),
                }
            },
        )
        .await;
        assert_eq!(t["call_id"], first.call_id.as_str(), "{engine}");
        assert_eq!(t["text"], words, "{engine}");
        assert_eq!(t["confidence"], 0.87, "{engine}");
        assert_eq!(t["engine"], "pocketsphinx en-us", "{engine}");
        assert_eq!(t["audio_seconds"], 12.5, "{engine}");
        let created_at = t["created_at"].as_i64().unwrap();
        assert!(created_at > 0, "{engine}: {t}");

        // Redelivered: applied once (the inbox), the row as it was.
        publish(&bus, &ev).await;
        // Malformed ones are dead-lettered; the consumer goes on.
        let mut bad = transcript(&second, "x", Some(2.0));
        publish(&bus, &bad).await;
        bad = transcript(
            &second,
            &"w".repeat(dialstack_contract::MAX_TRANSCRIPT_BYTES + 1),
            None,
        );
        publish(&bus, &bad).await;
        let no_engine = CloudEvent::new(
            "media-processor",
            types::CALL_TRANSCRIPT,
            &second.call_id,
            &json!({"call_id": second.call_id, "attempt_id": second.attempt_id,
                    "campaign_id": second.campaign_id, "phone": second.phone, "at_ms": 1,
                    "text": "hi", "engine": "", "audio_seconds": 1.0}),
        );
        publish(&bus, &no_engine).await;
        let later = transcript(&second, "no thank you", None);
        publish(&bus, &later).await;
        let t2 = eventually(
            &format!("{engine}: the transcript after the malformed ones"),
            Duration::from_secs(20),
            || async {
                match get(&http, &url_of(&second), &admin).await {
                    (s, b) if s == 200 => Ok(b),
                    (s, b) => Err(format!("{s} {b}")),
                }
            },
        )
        .await;
        assert_eq!(
            t2["text"], "no thank you",
            "{engine}: not one of the malformed"
        );
        assert_eq!(t2["confidence"], Value::Null, "{engine}");
        let (_, again) = get(&http, &url_of(&first), &admin).await;
        assert_eq!(
            again["created_at"].as_i64(),
            Some(created_at),
            "{engine}: once"
        );
        let count: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) FROM transcripts")
                .fetch_one(&repo.db.pool)
                .await
                .unwrap(),
            0,
        );
        assert_eq!(count, 2, "{engine}");

        // Read as the call is: its agent, its team's supervisor, admins and
        // services; others get 404, as for an absent one.
        for (who, token, want) in [
            ("its agent", &ann, 200),
            ("another agent", &bob, 404),
            ("its team's supervisor", &east, 200),
            ("another team's supervisor", &west, 404),
            ("a service", &service, 200),
        ] {
            let (s, b) = get(&http, &url_of(&first), token).await;
            assert_eq!(s.as_u16(), want, "{engine}: {who}: {b}");
            if want == 404 {
                assert_eq!(b["code"], "not_found", "{engine}: {who}");
            }
        }
        let (s, _) = get(&http, &url_of(&call(3, "east")), &admin).await;
        assert_eq!(s, 404, "{engine}: no transcript");
        let (s, _) = get(&http, &url_of(&call(3, "east")), &ann).await;
        assert_eq!(s, 404, "{engine}: no call");

        // Retention: the transcript goes with its CDR.
        assert_eq!(
            repo.delete_cdrs(std::slice::from_ref(&first.call_id))
                .await
                .unwrap(),
            1,
            "{engine}"
        );
        assert!(
            repo.transcript(&first.call_id).await.unwrap().is_none(),
            "{engine}"
        );
        assert!(
            repo.transcript(&second.call_id).await.unwrap().is_some(),
            "{engine}"
        );
        // The redelivered event's id is in the inbox: applying it again
        // writes nothing.
        let parsed: CallTranscript = serde_json::from_value(later.data.clone()).unwrap();
        let again = repo
            .apply_batch(&[Applied {
                event_id: &later.id,
                change: Change::Transcript(&parsed),
            }])
            .await
            .unwrap();
        assert_eq!(again, vec![false], "{engine}");
        drop(st);
    }
}
