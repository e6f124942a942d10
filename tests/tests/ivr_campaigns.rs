//! Campaigns with an IVR flow, answering-machine detection and
//! transcription (issue 12) in task-scheduler, against a real database of
//! each engine (SQLite and MariaDB) and a real RabbitMQ for events and
//! commands, with storage-service on the same events: flows validated with
//! errors that name the node, the flow, the detection settings and the
//! lead's fields in every `dial` command, `amd_unsure` and
//! `answered_machine` in the abandon ledger with its estimate of people
//! taken for machines, and their CDRs. No media processor runs: the test
//! reads the `dial` commands and publishes the `call.*` events it would.

use std::collections::BTreeMap;
use std::time::Duration;

use dialstack_common::auth::Role;
use dialstack_common::bus::{Channel, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_contract::ivr::Gathered;
use dialstack_contract::{
    types, AmdResult, AmdSpec, CallCompleted, DialCommand, IvrFlow, IvrResult, Outcome,
};
use dialstack_tests::campaigns::{call_event, call_ref, publish, DialSink};
use dialstack_tests::issuer::TestIssuer;
use dialstack_tests::{
    amqp_url, both_databases, eventually, fresh_recordings_url, fresh_sqlite_url, in_process,
    unique, InProcess,
};
use reqwest::Method;
use serde_json::{json, Value};

/// The share of people machine detection is assumed to take for machines
/// in these tests (the deployment default is 0.02).
const FALSE_MACHINE_RATE: f64 = 0.05;

fn all_day() -> Value {
    json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"})
}

/// A survey: greet by name, ask for a key, hand 1 to an agent.
fn flow() -> Value {
    json!({
        "start": "hello",
        "nodes": {
            "hello": {"type": "gather", "var": "choice", "max_digits": 1,
                      "say": {"text": "Hello {first_name}, press 1 to talk to us"},
                      "next": "route", "no_input": "bye"},
            "route": {"type": "branch", "var": "choice", "cases": {"1": "agent"}, "default": "bye"},
            "agent": {"type": "transfer", "no_agent": "bye"},
            "bye": {"type": "play", "text": "Goodbye {first_name}", "next": "end"},
            "end": {"type": "hangup"}
        }
    })
}

fn amd() -> Value {
    json!({"mode": "detect", "on_machine": "message",
           "message": {"text": "Hi {first_name}, please call us back"}})
}

/// A scheduler and a storage-service on fresh databases of one engine,
/// sharing events on RabbitMQ; the scheduler's commands on RabbitMQ too,
/// read by the test.
struct Stack {
    sched: InProcess,
    storage: InProcess,
    admin: String,
    events: Channel,
    dials: DialSink,
}

impl Stack {
    async fn start(engine_url: &str, issuer: &TestIssuer) -> Self {
        let ns = unique("ivr");
        let events_url = amqp_url(&ns);
        let commands_url = amqp_url(&format!("{ns}c"));
        let dials = DialSink::start(&commands_url).await;
        let sched = in_process::<task_scheduler::Application>(&[
            ("DIALSTACK_DATABASE_URL", engine_url),
            ("DIALSTACK_EVENTS_URL", &events_url),
            ("DIALSTACK_COMMANDS_URL", &commands_url),
            ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
            ("DIALSTACK_LEADER_LEASE_MS", "1000"),
            ("DIALSTACK_AMD_FALSE_MACHINE_RATE", "0.05"),
        ])
        .await;
        let store_db = if engine_url.starts_with("sqlite:") {
            fresh_sqlite_url()
        } else {
            dialstack_tests::fresh_mysql_url()
        };
        let recordings = fresh_recordings_url();
        let storage = in_process::<storage_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", &store_db),
            ("DIALSTACK_EVENTS_URL", &events_url),
            ("DIALSTACK_COMMANDS_URL", "memory://unused"),
            ("DIALSTACK_JWKS_URL", &issuer.jwks_url),
            ("DIALSTACK_RECORDINGS_URL", &recordings),
        ])
        .await;
        Self {
            events: Channel::connect(&events_url, EVENTS).await.unwrap(),
            admin: issuer.token("adm", Role::Admin, &[]),
            sched,
            storage,
            dials,
        }
    }

    async fn call_at(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .sched
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_at(&self.sched.url, method, path, body).await
    }

    async fn text(&self, path: &str) -> String {
        let r = self
            .sched
            .http
            .get(format!("{}{path}", self.sched.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    async fn campaign_count(&self) -> usize {
        let (s, page) = self.call(Method::GET, "/v1/campaigns", None).await;
        assert_eq!(s, 200, "{page}");
        page["items"].as_array().unwrap().len()
    }

    async fn send(&self, ce: &CloudEvent) {
        publish(&self.events, ce).await;
    }
}

fn body(extra: Value) -> Value {
    let mut b = json!({
        "name": unique("ivr-"), "caller_id": "+14155550000", "max_concurrent": 10, "max_cps": 50.0,
        "calling_hours": all_day(),
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Asserts a 400 whose code is `invalid_request` and whose message names
/// `field` and holds each of `words`.
fn refused(status: u16, body: &Value, field: &str, words: &[&str], what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["code"], "invalid_request", "{what}: {body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(&format!("{field}:")),
        "{what}: names {field}: {body}"
    );
    for w in words {
        assert!(msg.contains(w), "{what}: {w:?} in {body}");
    }
}

/// `call.completed` for `cmd` with machine detection's decision, and an
/// IVR result for a person.
fn completed(cmd: &DialCommand, outcome: Outcome, amd: &str) -> CloudEvent {
    let person = matches!(outcome, Outcome::AnsweredHuman | Outcome::AmdUnsure);
    let ivr = person.then(|| {
        Box::new(IvrResult {
            path: vec!["hello".into(), "route".into(), "bye".into(), "end".into()],
            vars: BTreeMap::from([(
                "choice".to_owned(),
                Gathered {
                    value: "2".into(),
                    source: "dtmf".into(),
                    confidence: None,
                },
            )]),
            ended_at: Some("end".into()),
            ..Default::default()
        })
    });
    let done = CallCompleted {
        ring_ms: 3_000,
        talk_ms: 12_000,
        ivr,
        amd: Some(Box::new(AmdResult {
            result: amd.into(),
            decision_ms: 2_400,
            reason: "test".into(),
            features: BTreeMap::from([("greeting_ms".to_owned(), 1_800.0)]),
            message_played: amd == "machine",
        })),
        ..CallCompleted::unanswered(call_ref(cmd), outcome, None)
    };
    CloudEvent::new(
        "media-processor",
        types::CALL_COMPLETED,
        &cmd.call_id,
        &done,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ivr_campaigns_send_their_flow_detection_and_lead_fields_and_count_machines() {
    let issuer = TestIssuer::start().await;
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &issuer).await;

        // Refused settings name their field (and the node), and create nothing.
        let mut bad = flow();
        bad["nodes"]["bye"]["next"] = "nowhere".into();
        let cases: Vec<(Value, &str, Vec<&str>, &str)> = vec![
            (
                json!({"team": "east", "ivr_flow": bad}),
                "ivr_flow",
                vec!["node 'bye'", "nowhere"],
                "a goto to nowhere",
            ),
            (
                json!({"team": "east", "ivr_flow": {"start": "a", "nodes": {"a": {"type": "dance"}}}}),
                "ivr_flow",
                vec!["node 'a'", "dance"],
                "an unknown node type",
            ),
            (
                json!({"ivr_flow": flow()}),
                "ivr_flow",
                vec!["node 'agent'", "team"],
                "a transfer without a team",
            ),
            (
                json!({"transcribe": true}),
                "transcribe",
                vec!["record"],
                "transcription without recording",
            ),
            (
                json!({"amd": {"mode": "detect", "on_machine": "message"}}),
                "amd",
                vec!["prompt or a text"],
                "a machine message without a message",
            ),
        ];
        for (extra, field, words, what) in cases {
            let (st, b) = s
                .call(Method::POST, "/v1/campaigns", Some(body(extra)))
                .await;
            refused(st, &b, field, &words, &format!("{engine}: {what}"));
        }
        assert_eq!(s.campaign_count().await, 0, "{engine}: nothing was created");

        // A campaign with all three, inline leads with names, and a CSV import.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(body(json!({
                    "team": "east", "record": true, "transcribe": true,
                    "ivr_flow": flow(), "amd": amd(),
                    "retry_policy": {"answered_machine": {"max_retries": 1, "delay_secs": 3600}},
                    "contacts": [
                        {"phone": "+14155550101", "first_name": "Ada", "fields": {"plan": "gold"}},
                        {"phone": "+14155550102", "first_name": "Bo", "last_name": "Li"},
                    ],
                }))),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        let id = c["id"].as_str().unwrap().to_owned();
        assert_eq!(c["ivr_flow"]["start"], "hello", "{engine}: {c}");
        assert_eq!(
            c["ivr_flow"]["nodes"]["agent"]["type"], "transfer",
            "{engine}"
        );
        assert_eq!(c["amd"]["mode"], "detect", "{engine}: {c}");
        assert_eq!(c["transcribe"], true, "{engine}");
        let r = s
            .sched
            .http
            .post(format!("{}/v1/campaigns/{id}/leads", s.sched.url))
            .bearer_auth(&s.admin)
            .header("content-type", "text/csv")
            .body("phone,first_name,external_id,Plan\n+14155550103,Cy,crm-3,silver\n")
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{engine}: {}",
            r.text().await.unwrap()
        );
        let (st, c) = s
            .call(Method::POST, &format!("/v1/campaigns/{id}/start"), None)
            .await;
        assert_eq!(st, 200, "{engine}: {c}");

        let dials = s.dials.wait_for(3).await;
        let want_flow: IvrFlow = serde_json::from_value(flow()).unwrap();
        let want_amd: AmdSpec = serde_json::from_value(amd()).unwrap();
        let by_phone: BTreeMap<&str, &DialCommand> =
            dials.iter().map(|d| (d.phone.as_str(), d)).collect();
        for d in &dials {
            assert_eq!(d.ivr.as_deref(), Some(&want_flow), "{engine}: the flow");
            assert_eq!(d.amd.as_ref(), Some(&want_amd), "{engine}: the detection");
            assert!(d.transcribe, "{engine}");
            assert!(d.record, "{engine}");
            assert!(d.validate().is_ok(), "{engine}: keeps the contract: {d:?}");
            assert_eq!(d.bridge, None, "{engine}: ivr mode: the flow transfers");
        }
        let fields = |phone: &str| by_phone[phone].fields.clone();
        assert_eq!(
            fields("+14155550101"),
            BTreeMap::from([
                ("first_name".to_owned(), "Ada".to_owned()),
                ("plan".to_owned(), "gold".to_owned()),
            ]),
            "{engine}"
        );
        assert_eq!(fields("+14155550102")["last_name"], "Li", "{engine}");
        let cy = fields("+14155550103");
        assert_eq!(
            (
                cy["first_name"].as_str(),
                cy["external_id"].as_str(),
                cy["plan"].as_str()
            ),
            ("Cy", "crm-3", "silver"),
            "{engine}: from the CSV"
        );

        // One machine, one unsure, one person: each delivered twice.
        let outcomes = [
            ("+14155550101", Outcome::AnsweredMachine, "machine"),
            ("+14155550102", Outcome::AmdUnsure, "unsure"),
            ("+14155550103", Outcome::AnsweredHuman, "human"),
        ];
        for (phone, outcome, amd) in outcomes {
            let cmd = by_phone[phone];
            s.send(&call_event(cmd, types::CALL_DIALING, None, None))
                .await;
            let done = completed(cmd, outcome, amd);
            s.send(&done).await;
            s.send(&done).await;
        }
        let report = eventually(
            &format!("{engine}: the ledger"),
            Duration::from_secs(20),
            || async {
                let (st, r) = s
                    .call(Method::GET, &format!("/v1/campaigns/{id}/abandon"), None)
                    .await;
                if st == 200 && r["today"]["live"] == 2 && r["today"]["machine"] == 1 {
                    Ok(r)
                } else {
                    Err(format!("{st} {r}"))
                }
            },
        )
        .await;
        assert_eq!(
            report["amd_false_machine_rate"], FALSE_MACHINE_RATE,
            "{engine}"
        );
        for w in ["today", "last_30_days"] {
            let v = &report[w];
            assert_eq!(
                (&v["live"], &v["abandoned"], &v["machine"], &v["amd_unsure"]),
                (&json!(2), &json!(0), &json!(1), &json!(1)),
                "{engine}: {w}: unsure counts as a person, the machine beside: {report}"
            );
            assert_eq!(v["ratio"], 0.0, "{engine}: the plain rate: {report}");
            let est = v["estimated_abandoned_by_amd"].as_f64().unwrap();
            assert!(
                (est - FALSE_MACHINE_RATE).abs() < 1e-9,
                "{engine}: {report}"
            );
            let pct = v["abandon_rate_with_amd_pct"].as_f64().unwrap();
            let want = FALSE_MACHINE_RATE / (2.0 + FALSE_MACHINE_RATE) * 100.0;
            assert!((pct - want).abs() < 1e-9, "{engine}: {pct} vs {want}");
        }
        let today = report["days"][0]["date"].as_str().unwrap().to_owned();
        assert_eq!(
            s.text(&format!("/v1/campaigns/{id}/abandon.csv")).await,
            format!("date,live,abandoned,ratio,machine,amd_unsure\r\n{today},2,0,0.000000,1,1\r\n"),
            "{engine}"
        );

        // The unsure call's lead is done, as a person's; the machine's is retried.
        let (_, leads) = s
            .call(Method::GET, &format!("/v1/campaigns/{id}/leads"), None)
            .await;
        let lead = |phone: &str| {
            leads["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["phone"] == phone)
                .cloned()
                .unwrap_or_else(|| panic!("{engine}: {phone} in {leads}"))
        };
        assert_eq!(
            (
                lead("+14155550102")["state"].as_str(),
                lead("+14155550102")["last_outcome"].as_str()
            ),
            (Some("done"), Some("amd_unsure")),
            "{engine}"
        );
        assert_eq!(
            lead("+14155550101")["state"],
            "pending",
            "{engine}: retried by policy"
        );
        assert_eq!(lead("+14155550103")["state"], "done", "{engine}");

        // The CDRs keep what the IVR and the detector did.
        let unsure = by_phone["+14155550102"];
        let cdr = eventually(
            &format!("{engine}: the unsure call's CDR"),
            Duration::from_secs(20),
            || async {
                let (st, cdrs) = s
                    .call_at(
                        &s.storage.url,
                        Method::GET,
                        &format!("/v1/calls?campaign_id={id}&amd=unsure"),
                        None,
                    )
                    .await;
                match cdrs["items"].as_array() {
                    Some(items) if st == 200 && items.len() == 1 => Ok(items[0].clone()),
                    _ => Err(format!("{st} {cdrs}")),
                }
            },
        )
        .await;
        assert_eq!(cdr["call_id"], unsure.call_id.as_str(), "{engine}");
        assert_eq!(cdr["outcome"], "amd_unsure", "{engine}");
        assert_eq!(cdr["amd"]["result"], "unsure", "{engine}: {cdr}");
        assert_eq!(
            cdr["ivr"]["vars"]["choice"]["value"], "2",
            "{engine}: {cdr}"
        );
        assert_eq!(cdr["ivr_result"], "choice=2", "{engine}");

        // PATCH: null removes the flow; its leads then dial without fields.
        let (st, c) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"ivr_flow": null, "amd": null})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {c}");
        assert_eq!(
            (&c["ivr_flow"], &c["amd"]),
            (&Value::Null, &Value::Null),
            "{engine}"
        );
        let (st, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}"),
                Some(json!({"ivr_flow": {"start": "a", "nodes": {"a": {"type": "play"}}}})),
            )
            .await;
        refused(
            st,
            &b,
            "ivr_flow",
            &["node 'a'"],
            &format!("{engine}: a bad patch"),
        );

        // A campaign without a flow sends no lead fields.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(body(
                    json!({"contacts": [{"phone": "+14155550104", "first_name": "Di"}]}),
                )),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        let plain = c["id"].as_str().unwrap().to_owned();
        assert_eq!(c["ivr_flow"], Value::Null, "{engine}");
        s.call(Method::POST, &format!("/v1/campaigns/{plain}/start"), None)
            .await;
        let all = s.dials.wait_for(4).await;
        let d = all.iter().find(|d| d.campaign_id == plain).unwrap();
        assert!(
            d.fields.is_empty() && d.ivr.is_none() && d.amd.is_none() && !d.transcribe,
            "{engine}: {d:?}"
        );
        drop(s);
    }
}

/// A campaign's own compliance message for abandoned calls: refused when
/// malformed (the field named, nothing created), stored and read back on
/// each engine, sent in the bridge of every dial command (an IVR flow's
/// `transfer` needs it too) with the lead's fields it says, replaced and
/// removed by PATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_carry_their_own_compliance_message() {
    let issuer = TestIssuer::start().await;
    let message = json!({"text": "This is Acme calling {first_name}. Call us back on 0800 123 456, or press 9 to opt out.", "voice": "en-us"});
    for (engine, url) in both_databases() {
        let s = Stack::start(&url, &issuer).await;
        let cases: Vec<(Value, Vec<&str>, &str)> = vec![
            (json!({"txt": "typo"}), vec!["txt"], "an unknown key"),
            (json!({"text": "  "}), vec!["text"], "an empty text"),
            (
                json!({"prompt": "p1", "text": "both"}),
                vec!["not both"],
                "a prompt and a text",
            ),
            (json!({}), vec!["prompt or a text"], "neither"),
            (
                json!({"text": "Hello {first name}"}),
                vec!["first name"],
                "a malformed lead field",
            ),
            (
                json!({"text": "Hello", "rate": 5000}),
                vec!["rate"],
                "a rate out of range",
            ),
            (json!("Acme"), vec!["abandon_message"], "not an object"),
        ];
        for (m, words, what) in cases {
            let (st, b) = s
                .call(
                    Method::POST,
                    "/v1/campaigns",
                    Some(body(
                        json!({"team": "east", "mode": "progressive", "abandon_message": m}),
                    )),
                )
                .await;
            refused(
                st,
                &b,
                "abandon_message",
                &words,
                &format!("{engine}: {what}"),
            );
        }
        assert_eq!(s.campaign_count().await, 0, "{engine}: nothing was created");

        // An agent campaign stores it and reads it back.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(body(
                    json!({"team": "east", "mode": "progressive", "abandon_message": message}),
                )),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        let agents = c["id"].as_str().unwrap().to_owned();
        let (st, got) = s
            .call(Method::GET, &format!("/v1/campaigns/{agents}"), None)
            .await;
        assert_eq!(st, 200, "{engine}: {got}");
        assert_eq!(got["abandon_message"], message, "{engine}");

        // An IVR flow whose `transfer` hands calls to agents: every command
        // carries the message in its bridge, and the lead's first name.
        let (st, c) = s
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(body(json!({
                    "team": "east", "ivr_flow": flow(), "abandon_message": message,
                    "contacts": [{"phone": "+14155550201", "first_name": "Ada"}],
                }))),
            )
            .await;
        assert_eq!(st, 201, "{engine}: {c}");
        let ivr = c["id"].as_str().unwrap().to_owned();
        s.call(Method::POST, &format!("/v1/campaigns/{ivr}/start"), None)
            .await;
        let dials = s.dials.wait_for(1).await;
        let d = &dials[0];
        assert!(d.validate().is_ok(), "{engine}: {d:?}");
        let bridge = d.bridge.as_ref().expect("a bridge for the flow's transfer");
        assert_eq!(
            bridge.abandon_message.text.as_deref(),
            message["text"].as_str(),
            "{engine}"
        );
        assert_eq!(bridge.abandon_message.voice.as_deref(), Some("en-us"));
        assert_eq!(bridge.abandon_after_ms, 2_000, "{engine}: the legal wait");
        assert_eq!(d.fields["first_name"], "Ada", "{engine}");

        // PATCH replaces it (a bad one is refused and changes nothing),
        // and null goes back to the deployment's message.
        let (st, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{agents}"),
                Some(json!({"abandon_message": {"prompt": "not an id!"}})),
            )
            .await;
        refused(
            st,
            &b,
            "abandon_message",
            &["prompt"],
            &format!("{engine}: a bad patch"),
        );
        let (_, got) = s
            .call(Method::GET, &format!("/v1/campaigns/{agents}"), None)
            .await;
        assert_eq!(got["abandon_message"], message, "{engine}: unchanged");
        let (st, c) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{agents}"),
                Some(json!({"abandon_message": {"prompt": "acme-abandon"}})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {c}");
        assert_eq!(
            c["abandon_message"],
            json!({"prompt": "acme-abandon"}),
            "{engine}"
        );
        let (st, c) = s
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{agents}"),
                Some(json!({"abandon_message": null})),
            )
            .await;
        assert_eq!(st, 200, "{engine}: {c}");
        assert_eq!(c["abandon_message"], Value::Null, "{engine}");
        drop(s);
    }
}
